// Process configuration from the environment (flags may override), validated once at start.
// A bad value is reported as {variable, reason}; the caller exits 2 with one line.
#pragma once
#include <chrono>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "crypto/crypto.hpp"
#include "observability/log.hpp"

namespace tokend::app {

using master_key = crypto::key_entry;  // kid + 32 raw bytes

struct config {
  std::string database_url;
  std::string listener_database_url;  // the LISTEN session's; empty: database_url
  std::string listen_host = "127.0.0.1";
  unsigned short listen_port = 8080;
  std::optional<std::string> metrics_host;
  unsigned short metrics_port = 0;
  std::string public_url;               // defaults to http://{listen}
  bool public_url_from_listen = false;  // TOKEND_PUBLIC_URL unset
  std::vector<master_key> master_keys;
  std::string admin_token;
  std::string environment = "development";
  std::string instance_id;
  log::level log_level = log::level::info;
  log::format log_format = log::format::json;
  std::size_t log_queue = 65536;  // lines the log writer holds before it drops info lines
  // How often tokend_connections{status} is counted in SQL; tenants with their own label on the
  // per-tenant counters (the rest are "other").
  std::chrono::milliseconds metrics_status_interval{30000};
  std::size_t metrics_tenant_limit = 200;
  std::chrono::milliseconds readers_flush_interval{60000};  // reader audit -> PostgreSQL
  bool reader_audit = true;  // off: GET /v1/connections/{c}/readers stays empty (cost measurement)
  unsigned threads = 1;
  unsigned db_pool_size = 8;
  unsigned refresh_pool_size = 16;
  unsigned tenant_refresh_share = 25;  // percent of the refresh pool kept for other tenants
  std::chrono::seconds request_timeout{15};
  std::chrono::seconds provider_answer_timeout{60};  // a sent refresh request's answer is awaited
  std::chrono::seconds force_refresh_min_interval{10};
  bool scheduler = true;                          // TOKEND_SCHEDULER: proactive refresh here
  std::chrono::seconds scheduler_interval{1};     // idle poll when nothing is due
  unsigned scheduler_concurrency = 8;             // scheduled flights in flight per instance
  std::chrono::seconds keepalive_margin{604800};  // TOKEND_KEEPALIVE_MARGIN
  bool allow_insecure_provider_urls = false;
  // Webhook delivery (webhooks/worker.hpp). Durations accept ms, s, m, h suffixes.
  bool webhooks = true;                                           // TOKEND_WEBHOOKS: deliver here
  std::chrono::milliseconds webhook_retry_base{10000};            // first retry; doubles to 1 h
  std::chrono::milliseconds webhook_max_age{24LL * 3600 * 1000};  // retried until, then failed
  std::chrono::milliseconds webhook_timeout{10000};               // per attempt
  std::chrono::milliseconds webhook_poll_interval{1000};          // idle poll of the outbox
  unsigned webhook_concurrency = 16;                              // deliveries in flight here
  unsigned webhook_tenant_concurrency = 4;                        // live claims per tenant
  // HTTP transport limits; not in the contract's table but settable for operations and tests.
  std::chrono::milliseconds http_read_timeout{10000};  // whole header+body read of a request
  std::chrono::milliseconds http_idle_timeout{60000};  // keep-alive wait for the next request
  std::chrono::milliseconds db_statement_timeout{5000};
  std::chrono::seconds shutdown_grace{0};  // 0: answer timeout + request timeout + 5 s
  bool cache = true;
  unsigned token_cache_size = 100000;
  unsigned principal_cache_size = 10000;
  std::chrono::milliseconds test_cache_insert_delay{0};  // test hook, see caches.hpp
  bool test_lose_commit_ack = false;                     // test hook, see refresh/engine.hpp
  // Test hook: the scheduler pauses this long after committing its claims, before it starts
  // their flights (so a test can kill the instance in between).
  std::chrono::milliseconds test_scheduler_pause_after_claim{0};
};

struct config_error {
  std::string variable;
  std::string reason;
  std::string line() const { return variable + ": " + reason; }
};

enum class needs { nothing, database, serving };

// Parses `env` (variable -> value) with `flags` ("--listen=...", "--migrate" are handled by the
// caller) applied on top. `what` says which required settings must be present. Pure.
struct config_result {
  std::optional<config> cfg;
  std::optional<config_error> error;
};
config_result parse_config(const std::map<std::string, std::string>& env, needs what);

// The process environment as a map of TOKEND_* variables.
std::map<std::string, std::string> tokend_environment();

}  // namespace tokend::app
