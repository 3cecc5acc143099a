// Prometheus metrics of one process: one registry, typed families, text exposition.
// Counter/gauge updates are thread-safe (prometheus-cpp uses atomics).
#pragma once
#include <cstddef>
#include <memory>
#include <string>
#include <string_view>

namespace prometheus {
class Registry;
class Counter;
class Gauge;
}  // namespace prometheus

namespace tokend::observability {

// What a GET or POST on /v1/tokens ended as (tokend_token_requests_total{result}).
enum class token_result { fresh, refreshed, joined, deferred, reauth_required, error };

class metrics {
 public:
  // `tenant_limit`: tenants that get a label of their own on the per-tenant counters
  // (invalid_grant, refresh failures); later ones are folded into tenant="other".
  explicit metrics(std::size_t tenant_limit = 200);
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

  // Refresh engine signals. A failed outcome (transient, in_doubt, invalid_grant, config_error,
  // provider_error, persist_failed, decrypt_failed) also counts for its tenant.
  void refresh_outcome(std::string_view trigger, std::string_view outcome, std::string_view tenant);
  // A refresh flight from its start to its result, by trigger.
  void refresh_duration(std::string_view trigger, double seconds);
  void provider_call(double seconds);
  // A token-endpoint answer by provider and status class (2xx, 3xx, 4xx, 5xx, none = no answer).
  void provider_response(std::string_view provider, int status);
  // The token API: every request's result, and conditional refreshes (the provider's 401).
  void token_request(token_result r);
  void conditional_refresh();
  // Reauthorization links: created, opened (the page was shown), completed (reconnected).
  void reauth_link(std::string_view event);
  // Connections by status across all instances (from SQL every 30 s).
  prometheus::Gauge& connections(std::string_view status);
  // Active connections whose refresh token expires within 7 days and was not renewed by a
  // keep-alive refresh (refresh_token_expiring), all tenants (from SQL with the above).
  prometheus::Gauge& refresh_tokens_expiring();
  void refresh_joined();
  // A refresh that waited for a slot until its deadline (reason: tenant_share, provider_cap,
  // pool, rate).
  void slot_wait_timeout(std::string_view reason);
  // needs_reauth by reason; also tokend_invalid_grant_total{tenant,reason}.
  void reauth_required(std::string_view reason, std::string_view tenant);

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
