#include "store/change_listener.hpp"

#include <prometheus/counter.h>
#include <prometheus/gauge.h>

#include <chrono>
#include <pqxx/pqxx>

#include "observability/log.hpp"
#include "observability/metrics.hpp"
#include "store/db_pool.hpp"

namespace tokend::store {
namespace {

class receiver : public pqxx::notification_receiver {
 public:
  receiver(pqxx::connection_base& c, std::function<void(const std::string&)>& cb)
      : pqxx::notification_receiver(c, kChangeChannel), cb_(cb) {}
  void operator()(const std::string& payload, int) override { cb_(payload); }

 private:
  std::function<void(const std::string&)>& cb_;
};

}  // namespace

void notify_change(pqxx::transaction_base& tx, const std::string& payload) {
  count_statement();
  tx.exec_params("SELECT pg_notify($1, $2)", std::string(kChangeChannel), payload);
}

change_listener::change_listener(std::string conninfo,
                                 std::function<void(const std::string&)> on_payload,
                                 std::function<void(bool)> on_up, observability::metrics* m)
    : conninfo_(with_connection_params(conninfo, "tokend-listener", std::chrono::seconds(5))),
      on_payload_(std::move(on_payload)),
      on_up_(std::move(on_up)),
      metrics_(m) {}

change_listener::~change_listener() { stop(); }

void change_listener::start() {
  thread_ = std::thread([this] { run(); });
}

void change_listener::stop() {
  stop_ = true;
  if (thread_.joinable()) thread_.join();
}

void change_listener::run() {
  std::unique_ptr<pqxx::connection> conn;
  std::unique_ptr<receiver> listen;
  bool first = true;
  auto down = [&](const std::string& why) {
    pid_ = 0;
    on_up_(false);
    if (metrics_) metrics_->listener_up().Set(0);
    listen.reset();
    conn.reset();
    if (!why.empty()) {
      log::write(log::level::warn, "change listener lost its connection", {{"error", why}});
    }
  };
  while (!stop_) {
    try {
      if (!conn) {
        conn = std::make_unique<pqxx::connection>(conninfo_);
        listen = std::make_unique<receiver>(*conn, on_payload_);
        conn->await_notification(0, 0);  // make sure LISTEN is active before trusting it
        pid_ = conn->backendpid();
        if (!first && metrics_) metrics_->listener_reconnects().Increment();
        first = false;
        on_up_(true);
        if (metrics_) metrics_->listener_up().Set(1);
        log::write(log::level::info, "change listener up", {{"backend_pid", pid_.load()}});
      }
      conn->await_notification(0, 200000);
      if (conn->backendpid() != pid_) {
        // libpqxx reconnected silently: notifications in between are lost. Start over.
        down("the listener's server process changed");
      }
    } catch (const std::exception& e) {
      down(e.what());
      for (int i = 0; i < 10 && !stop_; ++i)
        std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
  }
  if (conn) down("");
}

}  // namespace tokend::store
