// Metrics after a scripted scenario equal what happened: token requests by result, the
// conditional-refresh (401) signal, provider answers by status class, invalid_grant and refresh
// failures per tenant (with the tenant label bounded), connections by status, refresh duration.
#include <catch2/catch.hpp>
#include <future>
#include <map>
#include <nlohmann/json.hpp>
#include <thread>

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
  for (const char* id : {"c1", "c2"})
    REQUIRE(import_connection(s.t, s.key, id, "fk", "a", "r") == 201);
  for (const char* id : {"c1", "c2"})
    REQUIRE(s.t.call("GET", std::string("/v1/tokens/") + id, s.key).status == 200);
  for (int i = 0; i < 2; ++i)
    for (const char* id : {"c1", "c2"})
      REQUIRE(s.t.call("GET", std::string("/v1/tokens/") + id, s.key).status == 200);
  REQUIRE(s.provider_calls() == 2);

  // 2. Five callers at once on an expired connection: the provider's answer is held until the
  // four others have joined the first one's flight (proved by the joined counter), so none
  // comes late.
  REQUIRE(import_connection(s.t, s.key, "c3", "fk", "a", "r") == 201);
  s.token.control("POST", "/control/script", {{"steps", {{{"hold", "c3"}}}}});
  std::vector<std::future<int>> callers;
  for (int i = 0; i < 5; ++i) {
    callers.push_back(std::async(std::launch::async, [&] {
      return s.t.call("GET", "/v1/tokens/c3", s.key).status;
    }));
  }
  REQUIRE(eventually([&] { return s.metric("tokend_refresh_joined_total") == 4; }, 10s));
  s.token.control("POST", "/control/release", {{"name", "c3"}});
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
  s.db.exec(
      {"UPDATE connections SET access_expires_at = now() + interval '200 seconds' "
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
  REQUIRE(
      eventually([&] { return s.metric("tokend_connections{status=\"needs_reauth\"}") == 1; }, 5s));
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

TEST_CASE("stats match the events table after a scenario, on two instances alike",
          "[observability]") {
  scenario s;
  tokend_process b(s.db.url(), scenario::with_defaults({}));
  auto expired = [&](const std::string& id) {
    REQUIRE(import_connection(s.t, s.key, id, "fk", "a-" + id, "r-" + id) == 201);
  };
  auto answer = [&](const json& steps) {
    s.token.control("POST", "/control/reset");
    s.token.control("POST", "/control/script", {{"steps", steps}});
  };
  expired("c1");
  REQUIRE(s.t.call("GET", "/v1/tokens/c1", s.key).status == 200);  // ok
  expired("c2");
  answer({{{"status", 400}, {"json", {{"error", "invalid_grant"}}}}});
  REQUIRE(s.t.call("GET", "/v1/tokens/c2", s.key).status == 409);  // invalid_grant
  expired("c3");
  answer({{{"status", 503}, {"repeat", 10}}});
  REQUIRE(s.t.call("GET", "/v1/tokens/c3", s.key).status == 503);  // transient, per attempt
  const long long transient_calls = s.provider_calls();
  REQUIRE(transient_calls >= 1);
  expired("c4");
  answer({{{"status", 400}, {"body", "not json"}}});
  REQUIRE(s.t.call("GET", "/v1/tokens/c4", s.key).status == 502);  // provider_error
  expired("c5");
  answer({{{"status", 401}, {"json", {{"error", "invalid_client"}}}}});
  REQUIRE(s.t.call("GET", "/v1/tokens/c5", s.key).status == 502);  // config_error
  // Refresh tokens: one expiring in 3 days, one in 30.
  for (const auto& [id, days] : {std::pair{"c6", 3}, std::pair{"c7", 30}}) {
    REQUIRE(s.t.call("PUT", std::string("/v1/connections/") + id, s.key,
                     json{{"provider", "fk"},
                          {"access_token", "a"},
                          {"refresh_token", "r"},
                          {"expires_in", 3600},
                          {"refresh_expires_in", days * 86400}})
                .status == 201);
  }
  // Events older than the hour and than the day: the windows are real.
  s.db.exec(
      {"INSERT INTO connection_events (tenant_id, connection_id, connection_row_id, at,"
       " trigger, outcome) SELECT tenant_id, id, row_id, now() - interval '2 hours',"
       " 'on_demand', 'refreshed' FROM connections WHERE id = 'c1'",
       "INSERT INTO connection_events (tenant_id, connection_id, connection_row_id, at,"
       " trigger, outcome) SELECT tenant_id, id, row_id, now() - interval '25 hours',"
       " 'on_demand', 'refreshed' FROM connections WHERE id = 'c1'"});
  // Another tenant's activity is not counted.
  auto globex = s.t.tenant_key("globex");
  put_provider(s.t, globex, "fk", s.token.url("/token"));
  REQUIRE(import_connection(s.t, globex, "g1", "fk", "a", "r") == 201);
  s.token.control("POST", "/control/reset");

  const json expected_window = {{"ok", 1},
                                {"transient", transient_calls},
                                {"invalid_grant", 1},
                                {"config_error", 1},
                                {"provider_error", 1}};
  json expected_day = expected_window;
  expected_day["ok"] = 2;
  const json expected = {
      {"connections", {{"active", 6}, {"needs_reauth", 1}}},
      {"refreshes", {{"last_hour", expected_window}, {"last_day", expected_day}}},
      {"reauth", {{"links_created", 0}, {"links_completed", 0}}},
      {"refresh_tokens_expiring_within_7d", 1}};
  for (const auto* inst : {&s.t, &b}) {
    auto r = inst->call("GET", "/v1/stats", s.key);
    INFO(r.body);
    REQUIRE(r.status == 200);
    CHECK(r.json() == expected);
  }
  // The same numbers straight from the events table.
  CHECK(s.db.query_int("SELECT count(*) FROM connection_events WHERE tenant_id = 'acme' AND "
                       "outcome = 'transient' AND at > now() - interval '1 hour'") ==
        transient_calls);
  // The gauge behind the expiring-refresh-token alert: flagged by a keep-alive refresh that
  // did not renew it, and within 7 days (c7, flagged too, has 30 days left).
  CHECK(s.metric("tokend_refresh_tokens_expiring") == 0);
  s.db.exec({"UPDATE connections SET refresh_token_expiring = true WHERE id IN ('c6', 'c7')"});
  CHECK(eventually([&] { return s.metric("tokend_refresh_tokens_expiring") == 1; }, 5s));
  // Scope and authentication.
  auto writer_only = s.t.tenant_key("acme", {"connections:write"});
  CHECK(s.t.call("GET", "/v1/stats", writer_only).status == 403);
  CHECK(s.t.call("GET", "/v1/stats", "").status == 401);
}

TEST_CASE("readers list the keys that fetched a connection's token and only those",
          "[observability]") {
  scenario s(std::map<std::string, std::string>{{"TOKEND_READERS_FLUSH_INTERVAL", "200ms"}});
  auto new_key = [&](const std::string& name) {
    auto k = s.t.call("POST", "/v1/tenants/acme/api-keys", kTestAdminToken,
                      json{{"name", name}, {"scopes", {"tokens:read", "connections:read"}}});
    REQUIRE(k.status == 201);
    return std::pair{k.json()["id"].get<std::string>(), k.json()["key"].get<std::string>()};
  };
  const auto [a_id, a] = new_key("billing-sync");
  const auto [b_id, b] = new_key("reports");
  const auto [c_id, c] = new_key("never-reads");
  for (const char* id : {"c1", "c2"})
    REQUIRE(import_connection(s.t, s.key, id, "fk", "a", "r", 3600) == 201);
  for (int i = 0; i < 3; ++i) REQUIRE(s.t.call("GET", "/v1/tokens/c1", a).status == 200);
  REQUIRE(s.t.call("POST", "/v1/tokens/c1/refresh", b, json::object()).status == 200);
  REQUIRE(s.t.call("GET", "/v1/tokens/c2", b).status == 200);
  // A request that served no token is not a read: an unknown connection, a connection view.
  REQUIRE(s.t.call("GET", "/v1/tokens/nope", c).status == 404);
  REQUIRE(s.t.call("GET", "/v1/connections/c1", c).status == 200);
  // Another tenant's connection of the same name, read by its own key.
  auto globex = s.t.tenant_key("globex");
  put_provider(s.t, globex, "fk", s.token.url("/token"));
  REQUIRE(import_connection(s.t, globex, "c1", "fk", "a", "r", 3600) == 201);
  REQUIRE(s.t.call("GET", "/v1/tokens/c1", globex).status == 200);

  auto readers = [&](const std::string& id) {
    auto r = s.t.call("GET", "/v1/connections/" + id + "/readers", s.key);
    INFO(r.body);
    REQUIRE(r.status == 200);
    return r.json()["items"];
  };
  REQUIRE(eventually([&] { return readers("c1").size() == 2; }, 5s));
  auto items = readers("c1");
  std::map<std::string, json> by_id;
  for (const auto& it : items) by_id[it["key_id"]] = it;
  REQUIRE(by_id.count(a_id) == 1);
  REQUIRE(by_id.count(b_id) == 1);
  CHECK(by_id[a_id]["key_name"] == "billing-sync");
  CHECK(by_id[a_id]["reads"] == 3);
  CHECK(by_id[b_id]["key_name"] == "reports");
  CHECK(by_id[b_id]["reads"] == 1);
  CHECK(by_id[a_id]["first_read_at"] <= by_id[a_id]["last_read_at"]);
  auto c2 = readers("c2");
  REQUIRE(c2.size() == 1);
  CHECK(c2[0]["key_id"] == b_id);
  CHECK(c2[0]["reads"] == 1);
  // Later reads add up across flushes.
  REQUIRE(s.t.call("GET", "/v1/tokens/c2", b).status == 200);
  REQUIRE(eventually([&] { return readers("c2")[0]["reads"] == 2; }, 5s));

  // Tenants see only their own: globex's c1 was read by globex's key alone, acme's by acme's.
  auto theirs = s.t.call("GET", "/v1/connections/c1/readers", globex);
  REQUIRE(theirs.status == 200);
  REQUIRE(theirs.json()["items"].size() == 1);
  CHECK(theirs.json()["items"][0]["key_id"] != a_id);
  CHECK(theirs.json()["items"][0]["key_id"] != b_id);
  CHECK(theirs.json()["items"][0]["reads"] == 1);
  CHECK(readers("c1").size() == 2);
  // Unknown ids, another tenant's connection, missing scope.
  CHECK(s.t.call("GET", "/v1/connections/nope/readers", s.key).status == 404);
  CHECK(s.t.call("GET", "/v1/connections/c2/readers", globex).status == 404);
  auto token_only = s.t.tenant_key("acme", {"tokens:read"});
  CHECK(s.t.call("GET", "/v1/connections/c1/readers", token_only).status == 403);
  // A deleted connection takes its readers with it; the same id re-created starts empty.
  REQUIRE(s.t.call("DELETE", "/v1/connections/c2", s.key).status == 204);
  REQUIRE(import_connection(s.t, s.key, "c2", "fk", "a", "r", 3600) == 201);
  CHECK(readers("c2").empty());
}

TEST_CASE("reads noted before SIGTERM are written at shutdown", "[observability]") {
  // A flush interval far beyond the test: only the shutdown flush can write them.
  scenario s(std::map<std::string, std::string>{{"TOKEND_READERS_FLUSH_INTERVAL", "1h"}});
  REQUIRE(import_connection(s.t, s.key, "c1", "fk", "a", "r", 3600) == 201);
  for (int i = 0; i < 5; ++i) REQUIRE(s.t.call("GET", "/v1/tokens/c1", s.key).status == 200);
  std::this_thread::sleep_for(300ms);
  REQUIRE(s.db.query_int("SELECT count(*) FROM connection_readers") == 0);  // not flushed yet
  REQUIRE(s.t.stop() == 0);
  CHECK(s.db.query_int("SELECT reads FROM connection_readers") == 5);
}
