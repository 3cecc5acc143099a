// Metrics after a scripted scenario equal what happened: token requests by result, the
// conditional-refresh (401) signal, provider answers by status class, invalid_grant and refresh
// failures per tenant (with the tenant label bounded), connections by status, refresh duration.
#include <catch2/catch.hpp>
#include <future>
#include <nlohmann/json.hpp>

#include "support/fixtures.hpp"

using namespace tokend::test;
using namespace std::chrono_literals;
using nlohmann::json;

namespace {
struct scenario {
  scratch_database db;
  node_peer token{"fake-token-endpoint.mjs"};
  tokend_process t;
  std::string key;
  explicit scenario(std::map<std::string, std::string> env = {})
      : t(db.url(), with_defaults(std::move(env))), key(t.tenant_key("acme")) {
    put_provider(t, key, "fk", token.url("/token"));
  }
  static std::map<std::string, std::string> with_defaults(std::map<std::string, std::string> env) {
    env.emplace("TOKEND_ALLOW_INSECURE_PROVIDER_URLS", "1");
    env.emplace("TOKEND_METRICS_LISTEN", "127.0.0.1:0");
    env.emplace("TOKEND_METRICS_STATUS_INTERVAL", "200ms");
    return env;
  }
  double metric(const std::string& series) const {
    return metric_value(http_call(t.metrics_address(), "GET", "/metrics").body, series);
  }
  int provider_calls() const { return token.control("GET", "/control/requests")["count"]; }
};
}  // namespace

TEST_CASE("metrics after a scripted scenario equal what happened", "[observability]") {
  scenario s;
  auto result = [&](const std::string& r) {
    return s.metric("tokend_token_requests_total{result=\"" + r + "\"}");
  };
  // Every family is exported before its first observation.
  for (const char* r : {"fresh", "refreshed", "joined", "deferred", "reauth_required", "error"})
    CHECK(result(r) == 0);
  CHECK(s.metric("tokend_conditional_refreshes_total") == 0);
  CHECK(s.metric("tokend_log_lines_dropped_total") == 0);
  CHECK(s.metric("tokend_refresh_duration_seconds_count{trigger=\"on_demand\"}") == 0);

  // 1. Two expired connections refreshed on demand, then each served fresh twice.
  for (const char* id : {"c1", "c2"}) REQUIRE(import_connection(s.t, s.key, id, "fk", "a", "r") == 201);
  for (const char* id : {"c1", "c2"}) REQUIRE(s.t.call("GET", std::string("/v1/tokens/") + id, s.key).status == 200);
  for (int i = 0; i < 2; ++i)
    for (const char* id : {"c1", "c2"}) REQUIRE(s.t.call("GET", std::string("/v1/tokens/") + id, s.key).status == 200);
  REQUIRE(s.provider_calls() == 2);

  // 2. Five callers at once on an expired connection, the provider slow: one refresh, four join.
  REQUIRE(import_connection(s.t, s.key, "c3", "fk", "a", "r") == 201);
  s.token.control("POST", "/control/script", {{"steps", {{{"delay_ms", 700}}}}});
  std::vector<std::future<int>> callers;
  for (int i = 0; i < 5; ++i) {
    callers.push_back(std::async(std::launch::async, [&] {
      return s.t.call("GET", "/v1/tokens/c3", s.key).status;
    }));
  }
  for (auto& c : callers) REQUIRE(c.get() == 200);
  REQUIRE(s.provider_calls() == 3);  // precondition: the five shared one call

  // 3. One conditional refresh (the caller got a 401 with version 2 of c1).
  auto cond = s.t.call("POST", "/v1/tokens/c1/refresh", s.key, json{{"if_token_version", 2}});
  REQUIRE(cond.status == 200);
  REQUIRE(cond.json()["token_version"] == 3);
  REQUIRE(s.provider_calls() == 4);

  // 4. One deferred: issued for 3600 s with 200 s left (under min(300, 1800)), the provider
  // down: up to 3 attempts, then the still-valid token with refresh_deferred.
  REQUIRE(import_connection(s.t, s.key, "c4", "fk", "a", "r", 3600) == 201);
  s.db.exec({"UPDATE connections SET access_expires_at = now() + interval '200 seconds' "
             "WHERE id = 'c4'"});
  s.token.control("POST", "/control/script", {{"steps", {{{"status", 503}, {"repeat", 3}}}}});
  auto deferred = s.t.call("GET", "/v1/tokens/c4", s.key);
  REQUIRE(deferred.status == 200);
  REQUIRE(deferred.json()["refresh_deferred"] == true);
  const int failed_calls = s.provider_calls() - 4;
  REQUIRE(failed_calls >= 1);

  // 5. One invalid_grant, then the same connection asked again (no provider call).
  REQUIRE(import_connection(s.t, s.key, "c5", "fk", "a", "r") == 201);
  s.token.control("POST", "/control/reset");
  s.token.control("POST", "/control/script",
                  {{"steps", {{{"status", 400}, {"json", {{"error", "invalid_grant"}}}}}}});
  REQUIRE(s.t.call("GET", "/v1/tokens/c5", s.key).status == 409);
  REQUIRE(s.t.call("GET", "/v1/tokens/c5", s.key).status == 409);
  REQUIRE(s.provider_calls() == 1);
  // 6. An unknown connection: an error result.
  REQUIRE(s.t.call("GET", "/v1/tokens/nope", s.key).status == 404);

  CHECK(result("fresh") == 4);
  CHECK(result("refreshed") == 4);  // c1, c2, c3's first caller, the conditional
  CHECK(result("joined") == 4);
  CHECK(result("deferred") == 1);
  CHECK(result("reauth_required") == 2);
  CHECK(result("error") == 1);
  CHECK(s.metric("tokend_conditional_refreshes_total") == 1);
  CHECK(s.metric("tokend_provider_responses_total{provider=\"fk\",status_class=\"2xx\"}") == 4);
  CHECK(s.metric("tokend_provider_responses_total{provider=\"fk\",status_class=\"5xx\"}") ==
        failed_calls);
  CHECK(s.metric("tokend_provider_responses_total{provider=\"fk\",status_class=\"4xx\"}") == 1);
  CHECK(s.metric("tokend_invalid_grant_total{reason=\"grant_revoked\",tenant=\"acme\"}") == 1);
  CHECK(s.metric("tokend_refresh_failures_total{outcome=\"invalid_grant\",tenant=\"acme\"}") == 1);
  CHECK(s.metric("tokend_refresh_failures_total{outcome=\"transient\",tenant=\"acme\"}") ==
        failed_calls);
  // Flights: c1, c2, c3, the conditional, c4, c5.
  CHECK(s.metric("tokend_refresh_duration_seconds_count{trigger=\"on_demand\"}") == 5);
  CHECK(s.metric("tokend_refresh_duration_seconds_count{trigger=\"conditional\"}") == 1);
  REQUIRE(eventually(
      [&] { return s.metric("tokend_connections{status=\"needs_reauth\"}") == 1; }, 5s));
  CHECK(s.metric("tokend_connections{status=\"active\"}") == 4);
}

TEST_CASE("the tenant label is bounded by TOKEND_METRICS_TENANT_LIMIT", "[observability]") {
  scenario s(std::map<std::string, std::string>{{"TOKEND_METRICS_TENANT_LIMIT", "1"}});
  auto globex = s.t.tenant_key("globex");
  put_provider(s.t, globex, "fk", s.token.url("/token"));
  for (const auto& k : {s.key, globex}) {
    REQUIRE(import_connection(s.t, k, "c1", "fk", "a", "r") == 201);
    s.token.control("POST", "/control/script",
                    {{"steps", {{{"status", 400}, {"json", {{"error", "invalid_grant"}}}}}}});
    REQUIRE(s.t.call("GET", "/v1/tokens/c1", k).status == 409);
  }
  CHECK(s.metric("tokend_invalid_grant_total{reason=\"grant_revoked\",tenant=\"acme\"}") == 1);
  CHECK(s.metric("tokend_invalid_grant_total{reason=\"grant_revoked\",tenant=\"other\"}") == 1);
  const auto text = http_call(s.t.metrics_address(), "GET", "/metrics").body;
  CHECK(text.find("tenant=\"globex\"") == std::string::npos);
}
