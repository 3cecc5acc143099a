// `tokend` exits 2 with one line naming the variable when its configuration is invalid.
#include <catch2/catch.hpp>

#include "support/fixtures.hpp"

using namespace tokend::test;

namespace {

run_result run_tokend(std::map<std::string, std::string> env,
                      std::vector<std::string> args = {"serve"}) {
  std::map<std::string, std::string> base = {
      {"TOKEND_DATABASE_URL", "postgresql://postgres@/nonexistent?host=/nonexistent"},
      {"TOKEND_MASTER_KEYS", "k1:" + kTestMasterKeyB64},
      {"TOKEND_LISTEN", "127.0.0.1:0"},
  };
  for (auto& [k, v] : env) base[k] = v;
  std::vector<std::string> argv = {TOKEND_BINARY};
  argv.insert(argv.end(), args.begin(), args.end());
  return run_command(argv, base, std::chrono::seconds(20));
}

}  // namespace

TEST_CASE("invalid configuration exits 2 naming the variable", "[config_errors]") {
  struct bad {
    std::string var, value, says;
  };
  const std::vector<bad> cases = {
      {"TOKEND_LISTEN", "localhost", "TOKEND_LISTEN"},
      {"TOKEND_LISTEN", "127.0.0.1:99999", "TOKEND_LISTEN"},
      {"TOKEND_THREADS", "0", "TOKEND_THREADS"},
      {"TOKEND_THREADS", "two", "TOKEND_THREADS"},
      {"TOKEND_DB_POOL_SIZE", "-1", "TOKEND_DB_POOL_SIZE"},
      {"TOKEND_REQUEST_TIMEOUT", "1.5", "TOKEND_REQUEST_TIMEOUT"},
      {"TOKEND_PROVIDER_ANSWER_TIMEOUT", "0", "TOKEND_PROVIDER_ANSWER_TIMEOUT"},
      {"TOKEND_LOG_LEVEL", "verbose", "TOKEND_LOG_LEVEL"},
      {"TOKEND_LOG_FORMAT", "xml", "TOKEND_LOG_FORMAT"},
      {"TOKEND_MASTER_KEYS", "k1:c2hvcnQ=", "TOKEND_MASTER_KEYS"},
      {"TOKEND_MASTER_KEYS", "nokid", "TOKEND_MASTER_KEYS"},
      {"TOKEND_SCHEDULER", "maybe", "TOKEND_SCHEDULER"},
      {"TOKEND_PUBLIC_URL", "ftp://x", "TOKEND_PUBLIC_URL"},
      {"TOKEND_METRICS_LISTEN", "nohost", "TOKEND_METRICS_LISTEN"},
  };
  for (const auto& c : cases) {
    INFO(c.var << "=" << c.value);
    auto r = run_tokend({{c.var, c.value}});
    CHECK(r.exit_code == 2);
    CHECK(r.output.find(c.says) != std::string::npos);
    // One line.
    CHECK(std::count(r.output.begin(), r.output.end(), '\n') == 1);
  }
}

TEST_CASE("required settings are named when missing", "[config_errors]") {
  auto r = run_tokend({{"TOKEND_DATABASE_URL", ""}});
  CHECK(r.exit_code == 2);
  CHECK(r.output.find("TOKEND_DATABASE_URL") != std::string::npos);

  r = run_tokend({{"TOKEND_MASTER_KEYS", ""}});
  CHECK(r.exit_code == 2);
  CHECK(r.output.find("TOKEND_MASTER_KEYS") != std::string::npos);

  // migrate needs the database but not the keys.
  r = run_tokend({{"TOKEND_DATABASE_URL", ""}, {"TOKEND_MASTER_KEYS", ""}}, {"migrate"});
  CHECK(r.exit_code == 2);
  CHECK(r.output.find("TOKEND_DATABASE_URL") != std::string::npos);
}

TEST_CASE("unknown commands and flags exit 2; version exits 0", "[config_errors]") {
  CHECK(run_tokend({}, {"frobnicate"}).exit_code == 2);
  CHECK(run_tokend({}, {"serve", "--bogus"}).exit_code == 2);
  auto v = run_tokend({}, {"version"});
  CHECK(v.exit_code == 0);
  CHECK(v.output.rfind("tokend ", 0) == 0);
}
