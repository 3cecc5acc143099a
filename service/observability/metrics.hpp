// Prometheus metrics of one process: one registry, typed families, text exposition.
// Counter/gauge updates are thread-safe (prometheus-cpp uses atomics).
#pragma once
#include <memory>
#include <string>
#include <string_view>

namespace prometheus {
class Registry;
class Counter;
class Gauge;
}  // namespace prometheus

namespace tokend::observability {

class metrics {
 public:
  metrics();
  ~metrics();
  metrics(const metrics&) = delete;
  metrics& operator=(const metrics&) = delete;

  void observe_request(std::string_view method, std::string_view route, int status, double seconds);
  // Per-pool gauges, created on first use.
  prometheus::Gauge& pool_in_use(std::string_view pool);
  prometheus::Gauge& pool_waiting(std::string_view pool);
  prometheus::Gauge& pool_size(std::string_view pool);
  // SQL statements executed by this process, by origin ("request" or "background").
  prometheus::Counter& sql_statements(std::string_view origin);

  // Refresh engine signals.
  void refresh_outcome(std::string_view trigger, std::string_view outcome);
  void provider_call(double seconds);
  void refresh_joined();
  // A refresh that waited for a slot until its deadline (reason: tenant_share, provider_cap,
  // pool, rate).
  void slot_wait_timeout(std::string_view reason);
  void reauth_required(std::string_view reason);

  // Scheduler signals.
  void scheduler_claimed(std::size_t n);
  prometheus::Gauge& scheduler_backlog();
  prometheus::Gauge& scheduler_in_flight();
  void scheduler_lag(double seconds);
  void scheduler_outcome(std::string_view provider, std::string_view outcome);
  prometheus::Gauge& refresh_in_flight();

  // Webhook signals: attempts by outcome (delivered, retry, failed), event-to-delivery latency,
  // the outbox (pending deliveries and the oldest one's age, from SQL every 5 s).
  void webhook_attempt(std::string_view outcome);
  void webhook_latency(double seconds);
  prometheus::Gauge& webhook_backlog();
  prometheus::Gauge& webhook_oldest_pending();
  prometheus::Gauge& webhook_in_flight();

  // Cache signals: events by kind (hit, miss, eviction, invalidation, insert_skipped),
  // entries by cache (token, principal), listener reconnects, DB jobs by origin.
  prometheus::Counter& cache_event(std::string_view kind);
  prometheus::Gauge& cache_entries(std::string_view cache);
  prometheus::Counter& listener_reconnects();
  prometheus::Gauge& listener_up();
  prometheus::Counter& listener_heartbeat_late();
  prometheus::Counter& db_jobs(std::string_view origin);

  std::string serialize() const;

 private:
  struct impl;
  std::unique_ptr<impl> impl_;
};

}  // namespace tokend::observability
