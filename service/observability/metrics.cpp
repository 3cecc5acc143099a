#include "observability/metrics.hpp"

#include "observability/log.hpp"

#include <prometheus/counter.h>
#include <prometheus/gauge.h>
#include <prometheus/histogram.h>
#include <prometheus/metric_family.h>
#include <prometheus/registry.h>
#include <prometheus/text_serializer.h>

#include <algorithm>
#include <mutex>
#include <unordered_map>
#include <unordered_set>

namespace tokend::observability {
namespace {
const prometheus::Histogram::BucketBoundaries kLagBuckets = {0.1, 0.25, 0.5, 1,   2.5, 5,
                                                             10,  30,   60,  120, 300, 600};
// Webhook latency: retries can stretch it to the 24 h retry window.
const prometheus::Histogram::BucketBoundaries kHookBuckets = {
    0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600, 21600, 86400};
const prometheus::Histogram::BucketBoundaries kRefreshBuckets = {0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
                                                                 1,    2.5,   5,    10,  30,   60};
constexpr const char* kTokenResults[] = {"fresh",    "refreshed",       "joined",
                                         "deferred", "reauth_required", "error"};
constexpr const char* kTriggers[] = {"on_demand", "forced", "conditional", "scheduled"};

const char* type_name(prometheus::MetricType t) {
  switch (t) {
    case prometheus::MetricType::Counter:
      return "counter";
    case prometheus::MetricType::Gauge:
      return "gauge";
    case prometheus::MetricType::Summary:
      return "summary";
    case prometheus::MetricType::Histogram:
      return "histogram";
    case prometheus::MetricType::Untyped:
      break;
  }
  return "untyped";
}

constexpr const char* kFailureOutcomes[] = {"transient",     "in_doubt",       "invalid_grant",
                                            "config_error",  "provider_error", "persist_failed",
                                            "decrypt_failed"};
constexpr const char* kReauthReasons[] = {"grant_revoked", "refresh_token_expired", "lost_rotation",
                                          "scope_changed", "imported_without_refresh_token"};

bool is_failure(std::string_view outcome) {
  return outcome == "transient" || outcome == "in_doubt" || outcome == "invalid_grant" ||
         outcome == "config_error" || outcome == "provider_error" || outcome == "persist_failed" ||
         outcome == "decrypt_failed";
}

const char* status_class(int status) {
  if (status >= 200 && status < 300) return "2xx";
  if (status >= 300 && status < 400) return "3xx";
  if (status >= 400 && status < 500) return "4xx";
  if (status >= 500 && status < 600) return "5xx";
  return "none";
}
}  // namespace

struct metrics::impl {
  // Unique per instance for the life of the process (addresses can be reused; ids are not).
  const std::uint64_t id = [] {
    static std::atomic<std::uint64_t> next{1};
    return next++;
  }();
  std::mutex series_mu;  // guards request_series
  std::unordered_map<std::string, std::pair<prometheus::Counter*, prometheus::Histogram*>>
      request_series;
  std::shared_ptr<prometheus::Registry> registry = std::make_shared<prometheus::Registry>();
  // Families whose labels are known only at run time (a tenant, a provider, a route): they
  // have no series before their first observation, so serialize() announces them itself.
  struct announced_family {
    std::string name, help;
    prometheus::MetricType type;
  };
  std::vector<announced_family> announced;
  prometheus::Family<prometheus::Counter>& dynamic_counter(const char* name, const char* help) {
    announced.push_back({name, help, prometheus::MetricType::Counter});
    return prometheus::BuildCounter().Name(name).Help(help).Register(*registry);
  }
  prometheus::Family<prometheus::Histogram>& dynamic_histogram(const char* name, const char* help) {
    announced.push_back({name, help, prometheus::MetricType::Histogram});
    return prometheus::BuildHistogram().Name(name).Help(help).Register(*registry);
  }
  // Label values chosen by tenants (tenant ids, provider ids): the first `limit` keep their
  // own, the rest are "other". `admitted` runs once for each value given a label of its own.
  struct bounded_labels {
    std::size_t limit = 200;
    std::mutex mu;
    std::unordered_set<std::string> seen;
    template <class F>
    std::string label(std::string_view value, F admitted) {
      std::lock_guard lk(mu);
      std::string v(value);
      if (seen.count(v)) return v;
      if (seen.size() >= limit) return "other";
      seen.insert(v);
      admitted(v);
      return v;
    }
  };
  bounded_labels tenants, providers;
  // A tenant gets its zero series on both per-tenant counters when it is first seen (any
  // refresh outcome), so a later burst is a visible increase (increase() needs a sample
  // before it).
  std::string tenant_label(std::string_view tenant) {
    return tenants.label(tenant, [this](const std::string& t) { zero_tenant_series(t); });
  }
  void zero_tenant_series(const std::string& t) {
    for (const char* o : kFailureOutcomes) refresh_failures.Add({{"tenant", t}, {"outcome", o}});
    for (const char* r : kReauthReasons) invalid_grant.Add({{"tenant", t}, {"reason", r}});
  }
  std::string provider_label(std::string_view provider) {
    return providers.label(provider, [](const std::string&) {});
  }
  prometheus::Counter* token_results[std::size(kTokenResults)] = {};
  prometheus::Family<prometheus::Counter>& token_requests =
      prometheus::BuildCounter()
          .Name("tokend_token_requests_total")
          .Help(
              "GET and POST /v1/tokens requests by result (fresh: served as stored; refreshed: "
              "this request's refresh; joined: a refresh already in flight; deferred: served "
              "with refresh_deferred; reauth_required: 409; error: any other error answer)")
          .Register(*registry);
  prometheus::Family<prometheus::Counter>& conditional =
      prometheus::BuildCounter()
          .Name("tokend_conditional_refreshes_total")
          .Help(
              "POST /v1/tokens/{c}/refresh with if_token_version: a caller got a 401 from the "
              "provider API")
          .Register(*registry);
  prometheus::Family<prometheus::Counter>& provider_responses =
      dynamic_counter("tokend_provider_responses_total",
                      "Token-endpoint answers by provider and status class (none: no answer)");
  prometheus::Family<prometheus::Histogram>& refresh_duration =
      prometheus::BuildHistogram()
          .Name("tokend_refresh_duration_seconds")
          .Help("Refresh flights from start to result (lock, provider call, write), by trigger")
          .Register(*registry);
  prometheus::Family<prometheus::Counter>& invalid_grant =
      dynamic_counter("tokend_invalid_grant_total",
                      "Grants found dead (needs_reauth) by tenant and reason; tenants beyond "
                      "TOKEND_METRICS_TENANT_LIMIT are counted as tenant=\"other\"");
  prometheus::Family<prometheus::Counter>& refresh_failures = dynamic_counter(
      "tokend_refresh_failures_total",
      "Failed refresh outcomes by tenant and outcome (transient, in_doubt, "
      "invalid_grant, config_error, provider_error, persist_failed, decrypt_failed)");
  prometheus::Family<prometheus::Counter>& reauth_links =
      prometheus::BuildCounter()
          .Name("tokend_reauth_links_total")
          .Help("Reauthorization and connect links by event (created, opened, completed)")
          .Register(*registry);
  prometheus::Family<prometheus::Gauge>& expiring =
      prometheus::BuildGauge()
          .Name("tokend_refresh_tokens_expiring")
          .Help(
              "Active connections whose refresh token expires within 7 days and was not "
              "renewed by a keep-alive refresh: they need reauthorization before then")
          .Register(*registry);
  prometheus::Family<prometheus::Gauge>& connections =
      prometheus::BuildGauge()
          .Name("tokend_connections")
          .Help("Connections by status, all tenants and instances (from SQL every 30 s)")
          .Register(*registry);
  // The log writer counts its drops itself; the counter catches up at every scrape.
  prometheus::Counter& log_dropped = prometheus::BuildCounter()
                                         .Name("tokend_log_lines_dropped_total")
                                         .Help(
                                             "Log lines dropped because the writer's queue "
                                             "was full (never warn or above)")
                                         .Register(*registry)
                                         .Add({});
  std::mutex log_dropped_mu;
  std::uint64_t log_dropped_seen = 0;
  prometheus::Family<prometheus::Counter>& requests = dynamic_counter(
      "tokend_http_requests_total", "HTTP requests by method, route template and status");
  prometheus::Family<prometheus::Histogram>& duration = dynamic_histogram(
      "tokend_http_request_duration_seconds", "HTTP request duration by route template");
  prometheus::Family<prometheus::Gauge>& in_use = prometheus::BuildGauge()
                                                      .Name("tokend_db_pool_in_use")
                                                      .Help("Leased database connections")
                                                      .Register(*registry);
  prometheus::Family<prometheus::Gauge>& waiting =
      prometheus::BuildGauge()
          .Name("tokend_db_pool_waiting")
          .Help("Callers waiting for a database connection")
          .Register(*registry);
  prometheus::Family<prometheus::Gauge>& size = prometheus::BuildGauge()
                                                    .Name("tokend_db_pool_size")
                                                    .Help("Configured pool size")
                                                    .Register(*registry);
  prometheus::Family<prometheus::Counter>& statements =
      prometheus::BuildCounter()
          .Name("tokend_sql_statements_total")
          .Help("SQL statements executed by this process, by origin")
          .Register(*registry);
  prometheus::Family<prometheus::Counter>& refreshes =
      prometheus::BuildCounter()
          .Name("tokend_refresh_total")
          .Help("Refresh flights and provider calls by trigger and outcome")
          .Register(*registry);
  prometheus::Family<prometheus::Histogram>& provider_latency = dynamic_histogram(
      "tokend_provider_call_duration_seconds", "Duration of token-endpoint calls");
  prometheus::Family<prometheus::Counter>& joined =
      prometheus::BuildCounter()
          .Name("tokend_refresh_joined_total")
          .Help("Callers that waited for a refresh already in flight")
          .Register(*registry);
  prometheus::Family<prometheus::Counter>& reauth =
      prometheus::BuildCounter()
          .Name("tokend_reauth_required_total")
          .Help("Connections marked needs_reauth, by reason")
          .Register(*registry);
  prometheus::Family<prometheus::Gauge>& in_flight =
      prometheus::BuildGauge()
          .Name("tokend_refresh_in_flight")
          .Help("Refreshes in flight in this process")
          .Register(*registry);
  prometheus::Family<prometheus::Counter>& cache_events =
      prometheus::BuildCounter()
          .Name("tokend_cache_events_total")
          .Help("Cache hits, misses, evictions, invalidations and skipped inserts")
          .Register(*registry);
  prometheus::Family<prometheus::Gauge>& cache_entries = prometheus::BuildGauge()
                                                             .Name("tokend_cache_entries")
                                                             .Help("Entries held by each cache")
                                                             .Register(*registry);
  prometheus::Family<prometheus::Counter>& reconnects =
      prometheus::BuildCounter()
          .Name("tokend_listener_reconnects_total")
          .Help("Times the LISTEN connection was (re)established after a loss")
          .Register(*registry);
  prometheus::Family<prometheus::Gauge>& listener =
      prometheus::BuildGauge()
          .Name("tokend_listener_up")
          .Help(
              "1 while the change listener is connected and its heartbeat is on time (caches "
              "are in use)")
          .Register(*registry);
  prometheus::Family<prometheus::Counter>& heartbeat_late =
      prometheus::BuildCounter()
          .Name("tokend_listener_heartbeat_late_total")
          .Help(
              "Times the listener's heartbeat missed its deadline (caches bypassed until it "
              "arrives or the connection is replaced)")
          .Register(*registry);
  prometheus::Family<prometheus::Counter>& jobs =
      prometheus::BuildCounter()
          .Name("tokend_db_jobs_total")
          .Help("Database jobs (one or more statements on a DB thread) by origin")
          .Register(*registry);
  prometheus::Family<prometheus::Counter>& slot_timeouts =
      prometheus::BuildCounter()
          .Name("tokend_refresh_slot_timeouts_total")
          .Help(
              "Refreshes that waited for a slot until their deadline, by the slot "
              "(tenant_share: the tenant already holds its cap of the refresh pool; "
              "provider_cap: the per-provider cap; pool: the row lock or a refresh-pool "
              "connection; rate: the provider's refresh_rate_per_s)")
          .Register(*registry);
  prometheus::Family<prometheus::Counter>& sched_claims =
      prometheus::BuildCounter()
          .Name("tokend_scheduler_claims_total")
          .Help("Due connections this instance's scheduler claimed")
          .Register(*registry);
  prometheus::Family<prometheus::Gauge>& sched_backlog =
      prometheus::BuildGauge()
          .Name("tokend_scheduler_backlog")
          .Help(
              "Connections due for a proactive refresh that no instance has claimed (counted "
              "every 5 s, up to 100,000)")
          .Register(*registry);
  prometheus::Family<prometheus::Gauge>& sched_in_flight =
      prometheus::BuildGauge()
          .Name("tokend_scheduler_in_flight")
          .Help("Scheduled refreshes running in this instance")
          .Register(*registry);
  prometheus::Family<prometheus::Histogram>& sched_lag =
      prometheus::BuildHistogram()
          .Name("tokend_scheduler_lag_seconds")
          .Help(
              "From a connection's due time (next_refresh_at) to the end of its scheduled "
              "refresh")
          .Register(*registry);
  prometheus::Family<prometheus::Counter>& sched_outcomes =
      dynamic_counter("tokend_scheduler_refreshes_total",
                      "Scheduled refreshes by provider and outcome (refreshed, not_due, transient, "
                      "deferred, or the error code)");
  prometheus::Family<prometheus::Counter>& hook_attempts =
      prometheus::BuildCounter()
          .Name("tokend_webhook_deliveries_total")
          .Help(
              "Webhook delivery attempts by outcome (delivered; retry: failed, tried again "
              "later; failed: failed for good, now in the dead-letter list)")
          .Register(*registry);
  prometheus::Family<prometheus::Histogram>& hook_latency =
      prometheus::BuildHistogram()
          .Name("tokend_webhook_delivery_latency_seconds")
          .Help("From an event's commit to its delivery (2xx), retries included")
          .Register(*registry);
  prometheus::Family<prometheus::Gauge>& hook_backlog =
      prometheus::BuildGauge()
          .Name("tokend_webhook_outbox_backlog")
          .Help("Webhook deliveries pending in the outbox (all instances; counted every 5 s)")
          .Register(*registry);
  prometheus::Family<prometheus::Gauge>& hook_oldest =
      prometheus::BuildGauge()
          .Name("tokend_webhook_oldest_pending_seconds")
          .Help("Age of the oldest pending webhook delivery (0 when none; every 5 s)")
          .Register(*registry);
  prometheus::Family<prometheus::Gauge>& hook_in_flight =
      prometheus::BuildGauge()
          .Name("tokend_webhook_in_flight")
          .Help("Webhook deliveries this instance is sending now")
          .Register(*registry);
  prometheus::Family<prometheus::Gauge>& build = prometheus::BuildGauge()
                                                     .Name("tokend_build_info")
                                                     .Help("Build information")
                                                     .Register(*registry);
};

metrics::metrics(std::size_t tenant_limit) : impl_(std::make_unique<impl>()) {
  impl_->tenants.limit = tenant_limit;
  impl_->providers.limit = tenant_limit;
  impl_->build.Add({{"version", TOKEND_VERSION}}).Set(1);
  for (std::size_t i = 0; i < std::size(kTokenResults); ++i)
    impl_->token_results[i] = &impl_->token_requests.Add({{"result", kTokenResults[i]}});
  impl_->conditional.Add({});
  for (const char* t : kTriggers) {
    impl_->refresh_duration.Add({{"trigger", t}}, kRefreshBuckets);
    // Zero series for every outcome, so rates and ratios over them read 0, not "missing".
    for (const char* o :
         {"refreshed", "deferred", "transient", "in_doubt", "invalid_grant", "config_error",
          "provider_error", "persist_failed", "decrypt_failed", "refresh_token_expiring"}) {
      impl_->refreshes.Add({{"trigger", t}, {"outcome", o}});
    }
  }
  for (const char* e : {"created", "opened", "completed"}) impl_->reauth_links.Add({{"event", e}});
  for (const char* st : {"active", "needs_reauth"}) impl_->connections.Add({{"status", st}}).Set(0);
  impl_->expiring.Add({}).Set(0);
  // Label-less series exist from the start, so a scrape (and an alert) never mistakes "not
  // yet observed" for "missing".
  impl_->reconnects.Add({});
  impl_->listener.Add({}).Set(0);
  impl_->heartbeat_late.Add({});
  impl_->slot_timeouts.Add({{"reason", "tenant_share"}});
  impl_->slot_timeouts.Add({{"reason", "provider_cap"}});
  impl_->slot_timeouts.Add({{"reason", "pool"}});
  impl_->slot_timeouts.Add({{"reason", "rate"}});
  impl_->joined.Add({});
  impl_->in_flight.Add({}).Set(0);
  for (const char* r : kReauthReasons) impl_->reauth.Add({{"reason", r}});
  impl_->zero_tenant_series("other");
  impl_->sched_claims.Add({});
  impl_->sched_backlog.Add({}).Set(0);
  impl_->sched_in_flight.Add({}).Set(0);
  impl_->sched_lag.Add({}, kLagBuckets);
  for (const char* o : {"delivered", "retry", "failed"}) impl_->hook_attempts.Add({{"outcome", o}});
  impl_->hook_latency.Add({}, kHookBuckets);
  impl_->hook_backlog.Add({}).Set(0);
  impl_->hook_oldest.Add({}).Set(0);
  impl_->hook_in_flight.Add({}).Set(0);
}
metrics::~metrics() = default;

void metrics::observe_request(std::string_view method, std::string_view route, int status,
                              double seconds) {
  static const prometheus::Histogram::BucketBoundaries buckets = {
      0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10};
  // Family::Add builds and hashes a label map each time; remember the series per
  // (method, route, status) instead. Few distinct keys exist (route templates, not paths), so
  // each thread also keeps the ones it used in a short list it scans without a lock.
  struct memo {
    std::string method, route;
    int status;
    std::pair<prometheus::Counter*, prometheus::Histogram*> series;
  };
  thread_local std::vector<memo> recent;
  thread_local std::uint64_t recent_owner = 0;  // the instance whose series `recent` holds
  // The method comes from the client: unknown ones share one label value, so neither the label
  // set nor the memo can be grown by made-up methods.
  static constexpr std::string_view known[] = {"GET",   "HEAD",   "POST",   "PUT",
                                               "PATCH", "DELETE", "OPTIONS"};
  if (std::find(std::begin(known), std::end(known), method) == std::end(known)) method = "OTHER";
  if (recent_owner != impl_->id) {  // another instance: its series are not ours
    recent.clear();
    recent_owner = impl_->id;
  }
  for (const auto& m : recent) {
    if (m.status == status && m.route == route && m.method == method) {
      m.series.first->Increment();
      m.series.second->Observe(seconds);
      return;
    }
  }
  std::string key;
  key.reserve(method.size() + route.size() + 8);
  key.append(method).push_back('\0');
  key.append(route).push_back('\0');
  key.append(std::to_string(status));
  std::pair<prometheus::Counter*, prometheus::Histogram*> series;
  {
    std::lock_guard lk(impl_->series_mu);
    auto it = impl_->request_series.find(key);
    if (it == impl_->request_series.end()) {
      auto& counter = impl_->requests.Add({{"method", std::string(method)},
                                           {"route", std::string(route)},
                                           {"status", std::to_string(status)}});
      auto& histogram = impl_->duration.Add({{"route", std::string(route)}}, buckets);
      it = impl_->request_series.emplace(key, std::pair{&counter, &histogram}).first;
    }
    series = it->second;
  }
  if (recent.size() < 256) {
    recent.push_back({std::string(method), std::string(route), status, series});
  }
  series.first->Increment();
  series.second->Observe(seconds);
}

prometheus::Gauge& metrics::pool_in_use(std::string_view pool) {
  return impl_->in_use.Add({{"pool", std::string(pool)}});
}
prometheus::Gauge& metrics::pool_waiting(std::string_view pool) {
  return impl_->waiting.Add({{"pool", std::string(pool)}});
}
prometheus::Gauge& metrics::pool_size(std::string_view pool) {
  return impl_->size.Add({{"pool", std::string(pool)}});
}
prometheus::Counter& metrics::sql_statements(std::string_view origin) {
  return impl_->statements.Add({{"origin", std::string(origin)}});
}

void metrics::refresh_outcome(std::string_view trigger, std::string_view outcome,
                              std::string_view tenant) {
  impl_->refreshes.Add({{"trigger", std::string(trigger)}, {"outcome", std::string(outcome)}})
      .Increment();
  const auto label = impl_->tenant_label(tenant);  // admits the tenant (its zero series) first
  if (is_failure(outcome)) {
    impl_->refresh_failures.Add({{"tenant", label}, {"outcome", std::string(outcome)}}).Increment();
  }
}

void metrics::refresh_duration(std::string_view trigger, double seconds) {
  impl_->refresh_duration.Add({{"trigger", std::string(trigger)}}, kRefreshBuckets)
      .Observe(seconds);
}

void metrics::provider_response(std::string_view provider, int status) {
  impl_->provider_responses
      .Add({{"provider", impl_->provider_label(provider)}, {"status_class", status_class(status)}})
      .Increment();
}

void metrics::token_request(token_result r) {
  impl_->token_results[static_cast<std::size_t>(r)]->Increment();
}

void metrics::conditional_refresh() { impl_->conditional.Add({}).Increment(); }

void metrics::reauth_link(std::string_view event) {
  impl_->reauth_links.Add({{"event", std::string(event)}}).Increment();
}

prometheus::Gauge& metrics::refresh_tokens_expiring() { return impl_->expiring.Add({}); }

prometheus::Gauge& metrics::connections(std::string_view status) {
  return impl_->connections.Add({{"status", std::string(status)}});
}

void metrics::provider_call(double seconds) {
  static const prometheus::Histogram::BucketBoundaries buckets = {
      0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10};
  impl_->provider_latency.Add({{"endpoint", "token"}}, buckets).Observe(seconds);
}

void metrics::refresh_joined() { impl_->joined.Add({}).Increment(); }

void metrics::scheduler_claimed(std::size_t n) {
  impl_->sched_claims.Add({}).Increment(static_cast<double>(n));
}
prometheus::Gauge& metrics::scheduler_backlog() { return impl_->sched_backlog.Add({}); }
prometheus::Gauge& metrics::scheduler_in_flight() { return impl_->sched_in_flight.Add({}); }
void metrics::scheduler_lag(double seconds) {
  impl_->sched_lag.Add({}, kLagBuckets).Observe(seconds);
}
void metrics::scheduler_outcome(std::string_view provider, std::string_view outcome) {
  impl_->sched_outcomes
      .Add({{"provider", impl_->provider_label(provider)}, {"outcome", std::string(outcome)}})
      .Increment();
}

void metrics::slot_wait_timeout(std::string_view reason) {
  impl_->slot_timeouts.Add({{"reason", std::string(reason)}}).Increment();
}

void metrics::reauth_required(std::string_view reason, std::string_view tenant) {
  impl_->reauth.Add({{"reason", std::string(reason)}}).Increment();
  impl_->invalid_grant
      .Add({{"tenant", impl_->tenant_label(tenant)}, {"reason", std::string(reason)}})
      .Increment();
}

prometheus::Gauge& metrics::refresh_in_flight() { return impl_->in_flight.Add({}); }

void metrics::webhook_attempt(std::string_view outcome) {
  impl_->hook_attempts.Add({{"outcome", std::string(outcome)}}).Increment();
}
void metrics::webhook_latency(double seconds) {
  impl_->hook_latency.Add({}, kHookBuckets).Observe(seconds);
}
prometheus::Gauge& metrics::webhook_backlog() { return impl_->hook_backlog.Add({}); }
prometheus::Gauge& metrics::webhook_oldest_pending() { return impl_->hook_oldest.Add({}); }
prometheus::Gauge& metrics::webhook_in_flight() { return impl_->hook_in_flight.Add({}); }

prometheus::Counter& metrics::cache_event(std::string_view kind) {
  return impl_->cache_events.Add({{"kind", std::string(kind)}});
}
prometheus::Gauge& metrics::cache_entries(std::string_view cache) {
  return impl_->cache_entries.Add({{"cache", std::string(cache)}});
}
prometheus::Counter& metrics::listener_reconnects() { return impl_->reconnects.Add({}); }
prometheus::Gauge& metrics::listener_up() { return impl_->listener.Add({}); }
prometheus::Counter& metrics::listener_heartbeat_late() { return impl_->heartbeat_late.Add({}); }
prometheus::Counter& metrics::db_jobs(std::string_view origin) {
  return impl_->jobs.Add({{"origin", std::string(origin)}});
}

std::string metrics::serialize() const {
  {
    std::lock_guard lk(impl_->log_dropped_mu);
    const auto now = log::dropped();
    if (now > impl_->log_dropped_seen) {
      impl_->log_dropped.Increment(static_cast<double>(now - impl_->log_dropped_seen));
      impl_->log_dropped_seen = now;
    }
  }
  const auto families = impl_->registry->Collect();
  auto out = prometheus::TextSerializer().Serialize(families);
  // Families with no series yet are left out by the serializer: announce them (every family
  // exists from the start).
  for (const auto& a : impl_->announced) {
    const bool present = std::any_of(families.begin(), families.end(),
                                     [&](const auto& f) { return f.name == a.name; });
    if (present) continue;
    std::string help;
    for (char ch : a.help) {
      if (ch == '\\') {
        help += "\\\\";
      } else if (ch == '\n') {
        help += "\\n";
      } else {
        help += ch;
      }
    }
    out += "# HELP " + a.name + " " + help + "\n# TYPE " + a.name + " " + type_name(a.type) + "\n";
  }
  return out;
}

}  // namespace tokend::observability
