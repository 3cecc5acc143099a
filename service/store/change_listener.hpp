// One LISTEN connection per instance, on its own thread, receiving the change notifications
// that other instances (and this one) send in the same transaction as each change. libpqxx 6.4
// may reconnect silently, so the server process id is compared after every wait: a new one
// means notifications may have been missed, and `on_up(false)`/`on_up(true)` run (the caches
// flush).
//
// A half-open connection (a dead peer or a frozen network path) raises no error: the socket
// just stays silent. So a second thread sends a heartbeat, a NOTIFY on a channel only this
// process listens on, every `heartbeat_interval` through its own connection. PostgreSQL
// delivers notifications in commit order, so receiving the heartbeat sent at time T proves
// every change committed before T has been received too; `on_fresh(T + deadline)` reports it and
// the caches trust themselves only until then. After `reconnect_after` without a heartbeat the
// listening connection is presumed dead and replaced.
#pragma once
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <functional>
#include <memory>
#include <mutex>
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

struct listener_options {
  std::string listen_conninfo;     // the LISTEN session (TOKEND_LISTENER_DATABASE_URL)
  std::string heartbeat_conninfo;  // the session that sends the heartbeat (empty: no heartbeat)
  std::string application_name = "tokend-listener";
  std::string heartbeat_application_name = "tokend-heartbeat";
  std::chrono::milliseconds heartbeat_interval{200};
  std::chrono::milliseconds deadline{500};  // a heartbeat vouches for this long after its send
  std::chrono::milliseconds reconnect_after{1500};
};

class change_listener {
 public:
  using steady = std::chrono::steady_clock;
  // on_payload: one notification's payload. on_up(bool): listening (true) or lost (false); it
  // is called with false before every (re)connect and true once LISTEN is active again.
  // on_fresh(until): every change committed up to `until - deadline` has been received, so
  // caches may be trusted until `until` (called on connect and for every heartbeat; never
  // called without a heartbeat connection).
  change_listener(listener_options o, std::function<void(const std::string&)> on_payload,
                  std::function<void(bool)> on_up,
                  std::function<void(steady::time_point)> on_fresh,
                  observability::metrics* m);
  ~change_listener();  // stops and joins the threads
  void start();
  void stop();
  // The listening connection's server process id (0 while down); for tests and logs.
  int backend_pid() const { return pid_.load(); }
  const std::string& heartbeat_channel() const { return heartbeat_channel_; }

 private:
  void run();
  void run_heartbeat();
  listener_options opts_;
  std::string heartbeat_channel_;
  std::function<void(const std::string&)> on_payload_;
  std::function<void(bool)> on_up_;
  std::function<void(steady::time_point)> on_fresh_;
  observability::metrics* metrics_;
  std::atomic<bool> stop_{false};
  std::atomic<int> pid_{0};
  std::mutex stop_mu_;  // with stop_cv_: wakes the heartbeat thread's sleep on stop()
  std::condition_variable stop_cv_;
  std::thread thread_;
  std::thread heartbeat_thread_;
};

}  // namespace tokend::store
