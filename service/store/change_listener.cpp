#include "store/change_listener.hpp"

#include <prometheus/counter.h>
#include <prometheus/gauge.h>

#include <pqxx/pqxx>
#include <random>

#include "observability/log.hpp"
#include "observability/metrics.hpp"
#include "store/db_pool.hpp"

namespace tokend::store {
namespace {

class receiver : public pqxx::notification_receiver {
 public:
  receiver(pqxx::connection_base& c, const std::string& channel,
           std::function<void(const std::string&)> cb)
      : pqxx::notification_receiver(c, channel), cb_(std::move(cb)) {}
  void operator()(const std::string& payload, int) override { cb_(payload); }

 private:
  std::function<void(const std::string&)> cb_;
};

// A channel name no other process uses: 64 random bits in hex.
std::string random_channel() {
  std::random_device rd;
  const auto v = (static_cast<unsigned long long>(rd()) << 32) ^ rd();
  static const char* hex = "0123456789abcdef";
  std::string out = "tokend_hb_";
  for (int i = 60; i >= 0; i -= 4) out += hex[(v >> i) & 0xf];
  return out;
}

long long to_ns(change_listener::steady::time_point t) {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(t.time_since_epoch()).count();
}

}  // namespace

void notify_change(pqxx::transaction_base& tx, const std::string& payload) {
  count_statement();
  tx.exec_params("SELECT pg_notify($1, $2)", std::string(kChangeChannel), payload);
}

change_listener::change_listener(listener_options o,
                                 std::function<void(const std::string&)> on_payload,
                                 std::function<void(bool)> on_up,
                                 std::function<void(steady::time_point)> on_fresh,
                                 observability::metrics* m)
    : opts_(std::move(o)),
      heartbeat_channel_(random_channel()),
      on_payload_(std::move(on_payload)),
      on_up_(std::move(on_up)),
      on_fresh_(std::move(on_fresh)),
      metrics_(m) {
  opts_.listen_conninfo =
      with_connection_params(opts_.listen_conninfo, opts_.application_name, std::chrono::seconds(5));
  if (!opts_.heartbeat_conninfo.empty()) {
    // tcp_user_timeout: a send that is never acknowledged (a half-open path) fails after 2 s
    // instead of blocking the heartbeat thread until TCP gives up.
    opts_.heartbeat_conninfo =
        with_connection_params(opts_.heartbeat_conninfo, opts_.heartbeat_application_name,
                               std::chrono::seconds(5), {{"tcp_user_timeout", "2000"}});
  }
}

change_listener::~change_listener() { stop(); }

void change_listener::start() {
  thread_ = std::thread([this] { run(); });
  if (!opts_.heartbeat_conninfo.empty()) heartbeat_thread_ = std::thread([this] { run_heartbeat(); });
}

void change_listener::stop() {
  {
    std::lock_guard lk(stop_mu_);
    stop_ = true;
  }
  stop_cv_.notify_all();
  if (heartbeat_thread_.joinable()) heartbeat_thread_.join();
  if (thread_.joinable()) thread_.join();
}

void change_listener::run() {
  const bool heartbeat = !opts_.heartbeat_conninfo.empty();
  std::unique_ptr<pqxx::connection> conn;
  std::unique_ptr<receiver> listen, beats;
  bool first = true;
  bool late = false;
  steady::time_point last_sent;  // send time of the newest heartbeat received (or the connect)
  auto down = [&](const std::string& why) {
    pid_ = 0;
    on_up_(false);
    if (metrics_) metrics_->listener_up().Set(0);
    beats.reset();
    listen.reset();
    conn.reset();
    if (!why.empty()) {
      log::write(log::level::warn, "change listener lost its connection", {{"error", why}});
    }
  };
  auto on_beat = [&](const std::string& payload) {
    long long ns = 0;
    try {
      ns = std::stoll(payload);
    } catch (const std::exception&) {
      return;  // not ours (nobody else should use the channel): ignore
    }
    const steady::time_point sent{std::chrono::duration_cast<steady::duration>(
        std::chrono::nanoseconds(ns))};
    if (sent <= last_sent) return;
    last_sent = sent;
    on_fresh_(sent + opts_.deadline);
    if (late) {
      late = false;
      if (metrics_) metrics_->listener_up().Set(1);
      log::write(log::level::info, "change listener heartbeat on time again", {});
    }
  };
  while (!stop_) {
    try {
      if (!conn) {
        conn = std::make_unique<pqxx::connection>(opts_.listen_conninfo);
        listen = std::make_unique<receiver>(*conn, kChangeChannel, on_payload_);
        if (heartbeat) beats = std::make_unique<receiver>(*conn, heartbeat_channel_, on_beat);
        conn->await_notification(0, 0);  // make sure LISTEN is active before trusting it
        pid_ = conn->backendpid();
        if (!first && metrics_) metrics_->listener_reconnects().Increment();
        first = false;
        late = false;
        last_sent = steady::now();
        if (heartbeat) on_fresh_(last_sent + opts_.deadline);
        on_up_(true);
        if (metrics_) metrics_->listener_up().Set(1);
        log::write(log::level::info, "change listener up", {{"backend_pid", pid_.load()}});
      }
      conn->await_notification(0, 100000);
      if (conn->backendpid() != pid_) {
        // libpqxx reconnected silently: notifications in between are lost. Start over.
        down("the listener's server process changed");
        continue;
      }
      if (!heartbeat) continue;
      const auto silent = steady::now() - last_sent;
      if (silent > opts_.reconnect_after) {
        down("no heartbeat for " +
             std::to_string(std::chrono::duration_cast<std::chrono::milliseconds>(silent).count()) +
             " ms (a half-open connection?)");
      } else if (!late && silent > opts_.deadline) {
        late = true;
        if (metrics_) {
          metrics_->listener_heartbeat_late().Increment();
          metrics_->listener_up().Set(0);
        }
        log::write(log::level::warn, "change listener heartbeat late; caches bypassed",
                   {{"silent_ms", std::chrono::duration_cast<std::chrono::milliseconds>(silent)
                                      .count()}});
      }
    } catch (const std::exception& e) {
      down(e.what());
      for (int i = 0; i < 10 && !stop_; ++i)
        std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
  }
  if (conn) down("");
}

void change_listener::run_heartbeat() {
  std::unique_ptr<pqxx::connection> conn;
  bool failing = false;
  std::unique_lock lk(stop_mu_);
  while (!stop_) {
    lk.unlock();
    try {
      if (!conn) conn = std::make_unique<pqxx::connection>(opts_.heartbeat_conninfo);
      const auto sent = steady::now();
      pqxx::nontransaction tx(*conn);
      tx.exec_params("SELECT pg_notify($1, $2)", heartbeat_channel_, std::to_string(to_ns(sent)));
      if (failing) log::write(log::level::info, "listener heartbeat sending again", {});
      failing = false;
    } catch (const std::exception& e) {
      conn.reset();
      if (!failing) {
        log::write(log::level::warn, "listener heartbeat could not be sent; caches bypassed",
                   {{"error", e.what()}});
      }
      failing = true;
    }
    lk.lock();
    stop_cv_.wait_for(lk, opts_.heartbeat_interval, [this] { return stop_.load(); });
  }
}

}  // namespace tokend::store
