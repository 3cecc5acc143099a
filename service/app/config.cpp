#include "app/config.hpp"

#include "crypto/crypto.hpp"

#include <unistd.h>

#include <charconv>
#include <regex>
#include <set>
#include <thread>
#include <type_traits>

extern char** environ;

namespace tokend::app {
namespace {

std::optional<long long> parse_int(const std::string& s) {
  long long v = 0;
  auto [p, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
  if (ec != std::errc() || p != s.data() + s.size() || s.empty()) return std::nullopt;
  return v;
}

// A duration: an integer of seconds, or an integer with a unit suffix ms, s, m or h.
std::optional<std::chrono::milliseconds> parse_duration(const std::string& s) {
  static const std::pair<const char*, long long> units[] = {
      {"ms", 1}, {"s", 1000}, {"m", 60000}, {"h", 3600000}};
  for (const auto& [suffix, ms] : units) {
    const std::string_view sv(suffix);
    if (s.size() > sv.size() && s.compare(s.size() - sv.size(), sv.size(), sv) == 0) {
      const auto digits = s.substr(0, s.size() - sv.size());
      if (digits.back() < '0' || digits.back() > '9') continue;  // "ms" is not "m" + "s"
      auto n = parse_int(digits);
      if (!n || *n < 0) return std::nullopt;
      return std::chrono::milliseconds(*n * ms);
    }
  }
  auto n = parse_int(s);
  if (!n || *n < 0) return std::nullopt;
  return std::chrono::milliseconds(*n * 1000);
}

bool parse_host_port(const std::string& s, std::string& host, unsigned short& port) {
  auto colon = s.rfind(':');
  if (colon == std::string::npos || colon == 0) return false;
  host = s.substr(0, colon);
  if (host.size() > 2 && host.front() == '[' && host.back() == ']') {
    host = host.substr(1, host.size() - 2);
  }
  auto p = parse_int(s.substr(colon + 1));
  if (!p || *p < 0 || *p > 65535) return false;
  port = static_cast<unsigned short>(*p);
  return true;
}

}  // namespace

std::map<std::string, std::string> tokend_environment() {
  std::map<std::string, std::string> out;
  for (char** e = environ; e && *e; ++e) {
    std::string kv(*e);
    auto eq = kv.find('=');
    if (eq == std::string::npos || kv.rfind("TOKEND_", 0) != 0) continue;
    out.emplace(kv.substr(0, eq), kv.substr(eq + 1));
  }
  return out;
}

config_result parse_config(const std::map<std::string, std::string>& env, needs what) {
  config c;
  auto get = [&](const char* k) -> std::optional<std::string> {
    auto it = env.find(k);
    if (it == env.end()) return std::nullopt;
    return it->second;
  };
  auto fail = [](std::string var, std::string reason) {
    return config_result{std::nullopt, config_error{std::move(var), std::move(reason)}};
  };
  auto positive = [&](const char* k, long long lo, long long hi,
                      long long& out) -> std::optional<config_error> {
    auto v = get(k);
    if (!v) return std::nullopt;
    auto n = parse_int(*v);
    if (!n || *n < lo || *n > hi) {
      return config_error{k, "must be an integer between " + std::to_string(lo) + " and " +
                                 std::to_string(hi) + ", got '" + *v + "'"};
    }
    out = *n;
    return std::nullopt;
  };

  if (auto v = get("TOKEND_DATABASE_URL"); v && !v->empty()) {
    c.database_url = *v;
  } else if (what != needs::nothing) {
    return fail("TOKEND_DATABASE_URL", "is required (a libpq URI, e.g. postgresql:///tokend)");
  }

  if (auto v = get("TOKEND_LISTENER_DATABASE_URL"); v && !v->empty()) {
    c.listener_database_url = *v;
  }

  if (auto v = get("TOKEND_LISTEN")) {
    if (!parse_host_port(*v, c.listen_host, c.listen_port)) {
      return fail("TOKEND_LISTEN", "must be host:port with a port 0..65535, got '" + *v + "'");
    }
  }
  if (auto v = get("TOKEND_METRICS_LISTEN"); v && !v->empty()) {
    std::string host;
    if (!parse_host_port(*v, host, c.metrics_port)) {
      return fail("TOKEND_METRICS_LISTEN",
                  "must be host:port with a port 0..65535, got '" + *v + "'");
    }
    c.metrics_host = host;
  }
  if (auto v = get("TOKEND_PUBLIC_URL"); v && !v->empty()) {
    if (!std::regex_match(*v, std::regex(R"(^https?://[^/\s?#]+(/[^\s?#]*)?$)"))) {
      return fail("TOKEND_PUBLIC_URL", "must be an absolute http(s) URL, got '" + *v + "'");
    }
    c.public_url = *v;
    while (!c.public_url.empty() && c.public_url.back() == '/') c.public_url.pop_back();
  } else {
    c.public_url = "http://" + c.listen_host + ":" + std::to_string(c.listen_port);
    c.public_url_from_listen = true;  // serve() uses the bound address (port 0 picks one)
  }

  if (auto v = get("TOKEND_MASTER_KEYS"); v && !v->empty()) {
    std::set<std::string> seen;
    std::size_t start = 0;
    while (start <= v->size()) {
      auto end = v->find(',', start);
      if (end == std::string::npos) end = v->size();
      auto item = v->substr(start, end - start);
      auto colon = item.find(':');
      if (colon == std::string::npos || colon == 0) {
        return fail("TOKEND_MASTER_KEYS", "each entry must be kid:base64(32 bytes)");
      }
      auto kid = item.substr(0, colon);
      if (!std::regex_match(kid, std::regex("^[A-Za-z0-9._-]{1,32}$"))) {
        return fail("TOKEND_MASTER_KEYS",
                    "key id '" + kid + "' must be 1-32 characters of A-Z a-z 0-9 . _ -");
      }
      auto key = crypto::base64_decode(item.substr(colon + 1));
      if (!key || key->size() != 32) {
        return fail("TOKEND_MASTER_KEYS", "key '" + kid + "' must be base64 of exactly 32 bytes");
      }
      if (!seen.insert(kid).second) {
        return fail("TOKEND_MASTER_KEYS", "key id '" + kid + "' appears twice");
      }
      c.master_keys.push_back({kid, *key});
      start = end + 1;
    }
  } else if (what == needs::serving) {
    return fail("TOKEND_MASTER_KEYS",
                "is required: kid:base64(32 bytes)[,kid:...], the first is active");
  }

  if (auto v = get("TOKEND_ADMIN_TOKEN"); v && !v->empty()) {
    if (v->size() < 16) return fail("TOKEND_ADMIN_TOKEN", "must be at least 16 characters");
    c.admin_token = *v;
  }
  if (auto v = get("TOKEND_ENVIRONMENT"); v && !v->empty()) c.environment = *v;
  if (auto v = get("TOKEND_INSTANCE_ID"); v && !v->empty()) {
    c.instance_id = *v;
  } else {
    char host[256] = {};
    ::gethostname(host, sizeof host - 1);
    c.instance_id = std::string(host) + "-" + std::to_string(::getpid());
  }
  if (auto v = get("TOKEND_LOG_LEVEL")) {
    auto l = log::parse_level(*v);
    if (!l) return fail("TOKEND_LOG_LEVEL", "must be trace, debug, info, warn, error or off");
    c.log_level = *l;
  }
  if (auto v = get("TOKEND_LOG_FORMAT")) {
    auto f = log::parse_format(*v);
    if (!f) return fail("TOKEND_LOG_FORMAT", "must be json or text");
    c.log_format = *f;
  }

  // An integer setting stored in `field` (a count or a duration), keeping its default when the
  // variable is unset.
  auto integer = [&]<class T>(const char* k, long long lo, long long hi,
                              T& field) -> std::optional<config_error> {
    long long n = 0;
    if constexpr (std::is_arithmetic_v<T>) {
      n = static_cast<long long>(field);
    } else {
      n = field.count();
    }
    if (auto e = positive(k, lo, hi, n)) return e;
    field = T(n);
    return std::nullopt;
  };
  auto on_off = [&](const char* k, bool& field) -> std::optional<config_error> {
    auto v = get(k);
    if (!v) return std::nullopt;
    if (*v != "on" && *v != "off") return config_error{k, "must be on or off"};
    field = *v == "on";
    return std::nullopt;
  };

  c.threads = std::max(1u, std::thread::hardware_concurrency());
  for (auto e :
       {integer("TOKEND_THREADS", 1, 256, c.threads),
        integer("TOKEND_DB_POOL_SIZE", 1, 1000, c.db_pool_size),
        integer("TOKEND_REFRESH_POOL_SIZE", 1, 1000, c.refresh_pool_size),
        integer("TOKEND_TENANT_REFRESH_SHARE", 0, 90, c.tenant_refresh_share),
        integer("TOKEND_REQUEST_TIMEOUT", 1, 600, c.request_timeout),
        integer("TOKEND_PROVIDER_ANSWER_TIMEOUT", 1, 3600, c.provider_answer_timeout),
        integer("TOKEND_FORCE_REFRESH_MIN_INTERVAL", 0, 86400, c.force_refresh_min_interval),
        integer("TOKEND_HTTP_READ_TIMEOUT_MS", 100, 600000, c.http_read_timeout),
        integer("TOKEND_HTTP_IDLE_TIMEOUT_MS", 100, 3600000, c.http_idle_timeout),
        integer("TOKEND_DB_STATEMENT_TIMEOUT_MS", 100, 600000, c.db_statement_timeout),
        integer("TOKEND_SHUTDOWN_GRACE", 0, 3600, c.shutdown_grace),
        on_off("TOKEND_CACHE", c.cache),
        integer("TOKEND_TOKEN_CACHE_SIZE", 0, 100000000, c.token_cache_size),
        integer("TOKEND_PRINCIPAL_CACHE_SIZE", 0, 10000000, c.principal_cache_size),
        integer("TOKEND_TEST_CACHE_INSERT_DELAY_MS", 0, 60000, c.test_cache_insert_delay),
        on_off("TOKEND_TEST_LOSE_COMMIT_ACK", c.test_lose_commit_ack),
        on_off("TOKEND_SCHEDULER", c.scheduler),
        integer("TOKEND_LOG_QUEUE", 1, 16777216, c.log_queue),
        integer("TOKEND_SCHEDULER_INTERVAL", 1, 3600, c.scheduler_interval),
        integer("TOKEND_SCHEDULER_CONCURRENCY", 1, 1000, c.scheduler_concurrency),
        integer("TOKEND_KEEPALIVE_MARGIN", 1, 10LL * 31536000, c.keepalive_margin),
        integer("TOKEND_TEST_SCHEDULER_PAUSE_AFTER_CLAIM_MS", 0, 600000,
                c.test_scheduler_pause_after_claim)}) {
    if (e) return {std::nullopt, *e};
  }
  // A duration setting between `lo` and `hi` (see parse_duration), kept when unset.
  auto duration = [&](const char* k, std::chrono::milliseconds lo, std::chrono::milliseconds hi,
                      std::chrono::milliseconds& field) -> std::optional<config_error> {
    auto v = get(k);
    if (!v) return std::nullopt;
    auto d = parse_duration(*v);
    if (!d) return config_error{k, "must be a duration: seconds, or a number with ms, s, m or h"};
    if (*d < lo || *d > hi) {
      return config_error{k, "must be between " + std::to_string(lo.count()) + " ms and " +
                                 std::to_string(hi.count()) + " ms"};
    }
    field = *d;
    return std::nullopt;
  };
  using std::chrono::hours;
  using std::chrono::milliseconds;
  for (auto e :
       {on_off("TOKEND_WEBHOOKS", c.webhooks),
        duration("TOKEND_WEBHOOK_RETRY_BASE", milliseconds(10), hours(1), c.webhook_retry_base),
        duration("TOKEND_WEBHOOK_MAX_AGE", milliseconds(100), hours(24 * 30), c.webhook_max_age),
        duration("TOKEND_WEBHOOK_TIMEOUT", milliseconds(100), milliseconds(60000),
                 c.webhook_timeout),
        duration("TOKEND_WEBHOOK_POLL_INTERVAL", milliseconds(10), milliseconds(60000),
                 c.webhook_poll_interval),
        integer("TOKEND_WEBHOOK_CONCURRENCY", 1, 1000, c.webhook_concurrency),
        duration("TOKEND_METRICS_STATUS_INTERVAL", milliseconds(100), hours(1),
                 c.metrics_status_interval),
        integer("TOKEND_METRICS_TENANT_LIMIT", 0, 100000, c.metrics_tenant_limit),
        duration("TOKEND_READERS_FLUSH_INTERVAL", milliseconds(100), hours(1),
                 c.readers_flush_interval),
        on_off("TOKEND_READER_AUDIT", c.reader_audit),
        integer("TOKEND_WEBHOOK_TENANT_CONCURRENCY", 1, 1000, c.webhook_tenant_concurrency)}) {
    if (e) return {std::nullopt, *e};
  }

  // A sent refresh is awaited up to the answer timeout and then persisted: shutdown waits for
  // that by default, or the rotation it caused is lost with the process.
  if (c.shutdown_grace.count() == 0) {
    c.shutdown_grace = c.provider_answer_timeout + c.request_timeout + std::chrono::seconds(5);
  }

  if (auto v = get("TOKEND_ALLOW_INSECURE_PROVIDER_URLS"); v && !v->empty()) {
    if (*v != "1" && *v != "0")
      return fail("TOKEND_ALLOW_INSECURE_PROVIDER_URLS", "must be 1 or unset");
    c.allow_insecure_provider_urls = *v == "1";
  }
  return {c, std::nullopt};
}

}  // namespace tokend::app
