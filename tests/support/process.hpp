// Child processes for integration tests: spawn with extra environment, capture output to a
// file, wait with bounded deadlines, signal.
#pragma once
#include <chrono>
#include <map>
#include <optional>
#include <string>
#include <vector>

namespace tokend::test {

class child_process {
 public:
  // Starts argv[0] (a path) with the current environment plus `env` (empty value: unset).
  // stdout and stderr both go to `log_path`.
  child_process(std::vector<std::string> argv, std::map<std::string, std::string> env,
                std::string log_path);
  ~child_process();  // SIGKILLs a child still running
  child_process(const child_process&) = delete;
  child_process& operator=(const child_process&) = delete;

  int pid() const { return pid_; }
  void signal(int sig);
  // Exit code (128+signal when killed), or nullopt if still running at the deadline.
  std::optional<int> wait(std::chrono::milliseconds timeout);
  bool running();
  std::string output() const;
  // Polls the output until `needle` appears; returns the output, or nullopt at the deadline.
  std::optional<std::string> wait_for_output(const std::string& needle,
                                             std::chrono::milliseconds timeout);

 private:
  int pid_ = -1;
  std::optional<int> exit_code_;
  std::string log_path_;
};

// Runs a command to completion (bounded); returns exit code and combined output.
struct run_result {
  int exit_code;
  std::string output;
};
run_result run_command(const std::vector<std::string>& argv,
                       const std::map<std::string, std::string>& env = {},
                       std::chrono::milliseconds timeout = std::chrono::seconds(120));

std::string read_file(const std::string& path);
std::string temp_dir(const std::string& prefix);

}  // namespace tokend::test
