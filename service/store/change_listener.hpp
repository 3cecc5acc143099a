// One LISTEN connection per instance, on its own thread, receiving the change notifications
// that other instances (and this one) send in the same transaction as each change. libpqxx 6.4
// may reconnect silently, so the server process id is compared after every wait: a new one
// means notifications may have been missed, and `on_reset` runs (the caches flush).
#pragma once
#include <atomic>
#include <functional>
#include <memory>
#include <string>
#include <thread>

namespace pqxx {
class transaction_base;
}
namespace tokend::observability {
class metrics;
}

namespace tokend::store {

inline constexpr const char* kChangeChannel = "tokend_changes";

// Queues a notification with `payload` in `tx`; it is delivered if and when `tx` commits.
void notify_change(pqxx::transaction_base& tx, const std::string& payload);

class change_listener {
 public:
  // on_payload: one notification's payload. on_up(bool): listening (true) or lost (false); it
  // is called with false before every (re)connect and true once LISTEN is active again.
  change_listener(std::string conninfo, std::function<void(const std::string&)> on_payload,
                  std::function<void(bool)> on_up, observability::metrics* m);
  ~change_listener();  // stops and joins the thread
  void start();
  void stop();
  // The listening connection's server process id (0 while down); for tests and logs.
  int backend_pid() const { return pid_.load(); }

 private:
  void run();
  std::string conninfo_;
  std::function<void(const std::string&)> on_payload_;
  std::function<void(bool)> on_up_;
  observability::metrics* metrics_;
  std::atomic<bool> stop_{false};
  std::atomic<int> pid_{0};
  std::thread thread_;
};

}  // namespace tokend::store
