// The refresh engine against a fault-injecting token endpoint: every row of the contract's
// outcome table, retries and back-off, conditional and forced refreshes. Nothing is ever lost.
#include <catch2/catch.hpp>
#include <future>
#include <pqxx/pqxx>
#include <set>
#include <thread>

#include "crypto/crypto.hpp"
#include "crypto/token_seal.hpp"
#include "store/repository.hpp"
#include "support/fixtures.hpp"

using namespace tokend::test;
using nlohmann::json;
using namespace std::chrono_literals;

namespace {

const std::string kPast = "2020-01-01T00:00:00Z";

struct rig {
  node_peer fake{"fake-token-endpoint.mjs"};
  scratch_database db;
  tokend_process t;
  std::string key;

  explicit rig(std::map<std::string, std::string> env = {}, json provider_extra = json::object())
      : t(db.url(), with_insecure(std::move(env))) {
    key = t.tenant_key("acme");
    json p = {{"type", "oauth2"},
              {"client_id", "my client:id"},
              {"client_secret", "s:e/c r+t"},
              {"token_url", fake.url("/oauth/token")},
              {"default_expires_in", 3600}};
    for (auto& [k, v] : provider_extra.items()) p[k] = v;
    REQUIRE(t.call("PUT", "/v1/providers/idp", key, p).status == 201);
  }
  static std::map<std::string, std::string> with_insecure(std::map<std::string, std::string> env) {
    env.emplace("TOKEND_ALLOW_INSECURE_PROVIDER_URLS", "1");
    return env;
  }
  void import(const std::string& id, json extra = json::object()) {
    json b = {{"provider", "idp"},
              {"access_token", "old-access-" + id},
              {"refresh_token", "old-refresh-" + id},
              {"expires_at", kPast}};
    for (auto& [k, v] : extra.items()) {
      if (v.is_null()) {
        b.erase(k);
      } else {
        b[k] = v;
      }
    }
    REQUIRE(t.call("PUT", "/v1/connections/" + id, key, b).status == 201);
  }
  void script(json steps) { fake.control("POST", "/control/script", json{{"steps", steps}}); }
  int provider_calls() { return fake.control("GET", "/control/requests")["processed"].get<int>(); }
  json requests() { return fake.control("GET", "/control/requests")["items"]; }
  http_reply get(const std::string& id, const std::string& query = "") {
    return t.call("GET", "/v1/tokens/" + id + query, key);
  }
  http_reply post_refresh(const std::string& id, const std::string& body = "") {
    return t.call("POST", "/v1/tokens/" + id + "/refresh", key, body);
  }
  json view(const std::string& id) { return t.call("GET", "/v1/connections/" + id, key).json(); }
  json events(const std::string& id) {
    return t.call("GET", "/v1/connections/" + id + "/events", key).json()["items"];
  }
  std::optional<std::string> stored_refresh(const std::string& id) {
    return stored_refresh_token(db.url(), "acme", id);
  }
};

}  // namespace

TEST_CASE("refresh request follows RFC 6749 section 6 with form-encoded Basic credentials",
          "[refresh_faults]") {
  rig r;
  r.import("c1");
  auto res = r.get("c1");
  REQUIRE(res.status == 200);
  CHECK(res.json()["access_token"] == "fake-at-1");
  CHECK(res.json()["token_version"] == 2);
  CHECK(res.header("cache-control") == "no-store");
  auto req = r.requests()[0];
  CHECK(req["method"] == "POST");
  CHECK(req["path"] == "/oauth/token");
  CHECK(req["body"] == "grant_type=refresh_token&refresh_token=old-refresh-c1");
  CHECK(req["headers"]["content-type"] == "application/x-www-form-urlencoded");
  // RFC 6749 2.3.1: each credential form-urlencoded, then base64("id:secret").
  CHECK(req["headers"]["authorization"] ==
        "Basic " + tokend::crypto::base64("my+client%3Aid:s%3Ae%2Fc+r%2Bt"));
  CHECK(r.stored_refresh("c1") == std::optional<std::string>("fake-rt-1"));
  auto ev = r.events("c1");
  CHECK(ev[0]["outcome"] == "refreshed");
  CHECK(ev[0]["trigger"] == "on_demand");
  CHECK(ev[0]["token_version_before"] == 1);
  CHECK(ev[0]["token_version_after"] == 2);
  CHECK(ev[0]["attempt"] == 1);
  CHECK(ev[0]["http_status"] == 200);
  // Fresh now: served without a provider call.
  CHECK(r.get("c1").json()["access_token"] == "fake-at-1");
  CHECK(r.provider_calls() == 1);
  // One structured log line per provider call, with fingerprints and no secrets.
  auto out = r.t.output();
  CHECK(out.find("\"msg\":\"token endpoint call\"") != std::string::npos);
  CHECK(out.find("\"refresh_token_fingerprint\":\"sha256:") != std::string::npos);
  CHECK(out.find("old-refresh-c1") == std::string::npos);
  CHECK(out.find("fake-rt-1") == std::string::npos);
}

TEST_CASE("POST refresh: no-store, and the provider's authorize scopes are never sent",
          "[refresh_faults]") {
  rig r({}, json{{"scopes", {"data.records:read", "schema.bases:read"}}});
  r.import("c1", json{{"expires_at", nullptr}, {"expires_in", 3600}});  // fresh: forced only
  auto res = r.post_refresh("c1");
  REQUIRE(res.status == 200);
  CHECK(res.header("cache-control") == "no-store");
  CHECK(res.json()["access_token"] == "fake-at-1");
  CHECK(res.json()["token_version"] == 2);
  const auto reqs = r.requests();
  REQUIRE(reqs.size() == 1);
  const auto body = reqs[0]["body"].get<std::string>();
  CHECK(body == "grant_type=refresh_token&refresh_token=old-refresh-c1");
  CHECK(body.find("scope") == std::string::npos);
  CHECK(r.stored_refresh("c1") == std::optional<std::string>("fake-rt-1"));
}

TEST_CASE("client_secret_post, refresh_scope and a provider without rotation", "[refresh_faults]") {
  rig r({}, json{{"token_endpoint_auth_method", "client_secret_post"}, {"refresh_scope", "a b"}});
  r.import("c1", json{{"scope", "orig"}});
  r.script(json::array({{{"json", {{"access_token", "at-no-rotation"}, {"expires_in", 100}}}}}));
  auto res = r.get("c1");
  REQUIRE(res.status == 200);
  CHECK(res.json()["access_token"] == "at-no-rotation");
  CHECK(res.json()["scope"] == "orig");  // kept when the answer has none
  CHECK(r.requests()[0]["body"] ==
        "grant_type=refresh_token&refresh_token=old-refresh-c1&scope=a+b&client_id=my+client%3Aid"
        "&client_secret=s%3Ae%2Fc+r%2Bt");
  CHECK(!r.requests()[0]["headers"].contains("authorization"));
  CHECK(r.stored_refresh("c1") == std::optional<std::string>("old-refresh-c1"));  // kept
}

TEST_CASE("503, 503, then 200: retried with back-off, the caller gets 200", "[refresh_faults]") {
  rig r;
  r.import("c1");
  r.script(
      json::array({{{"status", 503}, {"body", "busy"}}, {{"status", 503}}, {{"default", true}}}));
  auto res = r.get("c1");
  REQUIRE(res.status == 200);
  CHECK(res.json()["access_token"] == "fake-at-1");
  CHECK(r.provider_calls() == 3);
  auto ev = r.events("c1");
  REQUIRE(ev.size() >= 4);
  CHECK(ev[0]["outcome"] == "refreshed");
  CHECK(ev[0]["attempt"] == 3);
  CHECK(ev[1]["outcome"] == "transient");
  CHECK(ev[1]["http_status"] == 503);
  CHECK(ev[2]["outcome"] == "transient");
}

TEST_CASE("429 with Retry-After is respected", "[refresh_faults]") {
  rig r;
  r.import("c1");
  r.script(
      json::array({{{"status", 429}, {"headers", {{"Retry-After", "1"}}}}, {{"default", true}}}));
  REQUIRE(r.get("c1").status == 200);
  auto reqs = r.requests();
  REQUIRE(reqs.size() == 2);
  CHECK(reqs[1]["at"].get<double>() - reqs[0]["at"].get<double>() >= 950.0);
}

TEST_CASE("a never-answering endpoint is bounded by the request deadline", "[refresh_faults]") {
  rig r(std::map<std::string, std::string>{{"TOKEND_REQUEST_TIMEOUT", "3"},
                                           {"TOKEND_PROVIDER_ANSWER_TIMEOUT", "4"}});
  r.import("expired");
  r.import("valid", json{{"expires_at", nullptr}, {"expires_in", 200}});
  r.script(json::array({{{"never_answer", true}, {"repeat", 10}}}));
  auto start = std::chrono::steady_clock::now();
  auto res = r.get("expired");
  CHECK(std::chrono::steady_clock::now() - start < 6s);
  CHECK(res.status == 503);
  CHECK(res.json()["code"] == "provider_unavailable");
  CHECK(!res.header("retry-after").empty());
  // A forced refresh that fails transiently serves the still-valid token, marked deferred.
  start = std::chrono::steady_clock::now();
  auto valid = r.post_refresh("valid");
  CHECK(std::chrono::steady_clock::now() - start < 6s);
  CHECK(valid.status == 200);
  CHECK(valid.json()["refresh_deferred"] == true);
  CHECK(valid.json()["access_token"] == "old-access-valid");
  CHECK(r.view("expired")["token_version"] == 1);
  CHECK(r.view("expired")["status"] == "active");
  // The request was sent and never answered: once the answer timeout (4 s) has passed, its
  // outcome is in doubt and recorded as such.
  json seen;
  CHECK(eventually(
      [&] {
        seen = r.events("expired");
        for (const auto& e : seen) {
          if (e["outcome"] == "in_doubt") return true;
        }
        return false;
      },
      15s));
  INFO(seen.dump());
  CHECK(r.view("expired")["token_version"] == 1);
  CHECK(r.stored_refresh("expired") == std::optional<std::string>("old-refresh-expired"));
}

TEST_CASE("each outcome row: answer, event, and nothing lost", "[refresh_faults]") {
  rig r;
  SECTION("500 with an HTML body is transient: retried, then 503 provider_unavailable") {
    // Contract outcome table: 5xx, whatever the body, is transient; an expired token cannot
    // be served, so the GET is 503 provider_unavailable with Retry-After.
    r.import("c1");
    r.script(json::array({{{"status", 500},
                           {"body", "<html>oops</html>"},
                           {"headers", {{"Content-Type", "text/html"}}},
                           {"repeat", 3}}}));
    auto res = r.get("c1");
    CHECK(res.status == 503);
    CHECK(res.json()["code"] == "provider_unavailable");
    CHECK(!res.header("retry-after").empty());
    CHECK(res.body.find("oops") == std::string::npos);
    CHECK(res.body.find("old-access") == std::string::npos);
    const int calls = r.provider_calls();
    CHECK(calls >= 2);  // retried
    const auto ev = r.events("c1");
    int transient = 0;
    for (const auto& e : ev) {
      if (e["outcome"] == "transient") {
        ++transient;
        CHECK(e["http_status"] == 500);
      }
      CHECK(e["outcome"] != "provider_error");
    }
    CHECK(transient == calls);  // one event per provider call
    CHECK(r.view("c1")["token_version"] == 1);
    CHECK(r.view("c1")["status"] == "active");
    CHECK(r.stored_refresh("c1") == std::optional<std::string>("old-refresh-c1"));
  }
  SECTION("400 with a non-JSON body is 502 provider_error") {
    r.import("c1");
    r.script(json::array({{{"status", 400}, {"body", "<html>bad</html>"}}}));
    auto res = r.get("c1");
    CHECK(res.status == 502);
    CHECK(res.json()["code"] == "provider_error");
    CHECK(res.body.find("bad</html>") == std::string::npos);
    CHECK(r.events("c1")[0]["outcome"] == "provider_error");
    CHECK(r.view("c1")["token_version"] == 1);
    CHECK(r.stored_refresh("c1") == std::optional<std::string>("old-refresh-c1"));
  }
  SECTION("200 with truncated JSON is in_doubt and retried") {
    r.import("c1");
    r.script(json::array({{{"truncate", true}}, {{"default", true}}}));
    auto res = r.get("c1");
    CHECK(res.status == 200);
    CHECK(res.json()["access_token"] == "fake-at-1");
    auto ev = r.events("c1");  // newest first
    REQUIRE(ev.size() == 3);
    CHECK(ev[0]["outcome"] == "refreshed");
    CHECK(ev[1]["outcome"] == "in_doubt");
    CHECK(ev[2]["outcome"] == "imported");
    CHECK(r.provider_calls() == 2);
    CHECK(r.stored_refresh("c1") == std::optional<std::string>("fake-rt-1"));
  }
  SECTION("200 with a 1 MiB body is in_doubt and retried") {
    r.import("c1");
    r.script(json::array({{{"body_bytes", 1024 * 1024}}, {{"default", true}}}));
    auto res = r.get("c1");
    CHECK(res.status == 200);
    CHECK(res.json()["access_token"] == "fake-at-1");
    auto ev = r.events("c1");  // newest first
    REQUIRE(ev.size() == 3);
    CHECK(ev[0]["outcome"] == "refreshed");
    CHECK(ev[1]["outcome"] == "in_doubt");
    CHECK(ev[2]["outcome"] == "imported");
    CHECK(r.stored_refresh("c1") == std::optional<std::string>("fake-rt-1"));
  }
  SECTION("200 with a refresh_token but no access_token stores the refresh token, answers 502") {
    r.import("c1");
    r.script(json::array({{{"json", {{"refresh_token", "rotated-rt"}, {"expires_in", 3600}}}}}));
    auto res = r.get("c1");
    CHECK(res.status == 502);
    CHECK(res.json()["code"] == "provider_error");
    auto v = r.view("c1");
    CHECK(v["token_version"] == 2);
    CHECK(v["refresh_token_fingerprint"] == tokend::crypto::fingerprint("rotated-rt"));
    CHECK(r.stored_refresh("c1") == std::optional<std::string>("rotated-rt"));
    CHECK(r.events("c1")[0]["outcome"] == "provider_error");
    // The stored access token is marked expired: the next GET refreshes with the new token.
    auto next = r.get("c1");
    CHECK(next.status == 200);
    CHECK(r.requests()[1]["body"] == "grant_type=refresh_token&refresh_token=rotated-rt");
  }
  SECTION("200 with negative expires_in uses the default lifetime") {
    r.import("c1");
    r.script(json::array({{{"json",
                            {{"access_token", "at"},
                             {"refresh_token", "rt"},
                             {"expires_in", -5},
                             {"token_type", "weird"}}}}}));
    auto res = r.get("c1");
    REQUIRE(res.status == 200);
    CHECK(res.json()["access_token"] == "at");
    CHECK(res.json()["expires_in"].get<int>() > 3500);
    CHECK(res.json()["token_type"] == "Bearer");
    CHECK(res.json()["token_version"] == 2);
    // The odd answer is a success: the rotated refresh token is stored, one version later.
    CHECK(r.stored_refresh("c1") == std::optional<std::string>("rt"));
    CHECK(r.view("c1")["token_version"] == 2);
    const auto ev = r.events("c1");  // newest first
    REQUIRE(ev.size() == 2);
    CHECK(ev[0]["outcome"] == "refreshed");
    CHECK(ev[0]["token_version_before"] == 1);
    CHECK(ev[0]["token_version_after"] == 2);
    CHECK(ev[1]["outcome"] == "imported");
    CHECK(r.provider_calls() == 1);
  }
  SECTION("invalid_client is 502 provider_config_error with a provider cool-down") {
    r.import("c1");
    r.import("c2");
    r.script(json::array({{{"status", 401}, {"json", {{"error", "invalid_client"}}}}}));
    auto res = r.get("c1");
    CHECK(res.status == 502);
    CHECK(res.json()["code"] == "provider_config_error");
    CHECK(r.view("c1")["status"] == "active");
    CHECK(r.view("c1")["last_error"]["code"] == "config_error");
    // Cool-down: the next connection of that provider makes no provider call.
    auto again = r.get("c2");
    CHECK(again.status == 503);
    CHECK(r.provider_calls() == 1);
    CHECK(r.events("c2")[0]["outcome"] == "deferred");
  }
  SECTION(
      "a dropped connection after processing is in_doubt; invalid_grant then means lost_rotation") {
    r.import("c1");
    r.script(
        json::array({{{"drop", true}}, {{"status", 400}, {"json", {{"error", "invalid_grant"}}}}}));
    auto res = r.get("c1");
    CHECK(res.status == 409);
    CHECK(res.json()["code"] == "reauth_required");
    CHECK(res.json()["reauth"]["reason"] == "lost_rotation");
    CHECK(res.json()["reauth"]["link_id"].is_null());
    auto ev = r.events("c1");
    CHECK(ev[0]["outcome"] == "invalid_grant");
    CHECK(ev[1]["outcome"] == "in_doubt");
    CHECK(r.view("c1")["reauth"]["reason"] == "lost_rotation");
  }
  SECTION("an in-doubt attempt in an earlier request also makes invalid_grant a lost_rotation") {
    r.import("c1");
    r.script(json::array({{{"drop", true}, {"repeat", 3}}}));
    CHECK(r.get("c1").status == 503);
    r.script(json::array({{{"status", 400}, {"json", {{"error", "invalid_grant"}}}}}));
    http_reply res;
    CHECK(eventually(
        [&] {
          res = r.get("c1");
          return res.status == 409;
        },
        10s));
    CHECK(res.json()["reauth"]["reason"] == "lost_rotation");
  }
  SECTION("invalid_grant opens the circuit: 409 on every later call, no provider call") {
    r.import("c1");
    r.script(json::array(
        {{{"status", 400},
          {"json",
           {{"error", "invalid_grant"}, {"error_description", "grant request is invalid"}}}}}));
    auto res = r.get("c1");
    CHECK(res.status == 409);
    CHECK(res.json()["reauth"]["reason"] == "grant_revoked");
    for (int i = 0; i < 3; ++i) {
      CHECK(r.get("c1").status == 409);
      CHECK(r.post_refresh("c1").status == 409);
    }
    CHECK(r.provider_calls() == 1);
    auto v = r.view("c1");
    CHECK(v["status"] == "needs_reauth");
    CHECK(v["last_error"]["oauth_error"] == "invalid_grant");
    CHECK(v["last_error"]["http_status"] == 400);
    // Re-import closes the circuit.
    REQUIRE(r.t.call("PUT", "/v1/connections/c1", r.key,
                     json{{"provider", "idp"},
                          {"access_token", "a"},
                          {"refresh_token", "new-rt"},
                          {"expires_at", kPast}})
                .status == 200);
    CHECK(r.get("c1").status == 200);
  }
  SECTION("an expired refresh token makes invalid_grant a refresh_token_expired") {
    r.import("c1", json{{"refresh_expires_in", 1}});
    std::this_thread::sleep_for(1100ms);
    r.script(json::array({{{"status", 400}, {"json", {{"error", "invalid_grant"}}}}}));
    CHECK(r.get("c1").json()["reauth"]["reason"] == "refresh_token_expired");
  }
  SECTION(
      "imported without a refresh token: served until expiry, then 409 without a provider call") {
    r.import("valid",
             json{{"refresh_token", nullptr}, {"expires_at", nullptr}, {"expires_in", 100}});
    CHECK(r.get("valid", "?min_ttl=3000").status == 200);
    r.import("gone", json{{"refresh_token", nullptr}});
    auto res = r.get("gone");
    CHECK(res.status == 409);
    CHECK(res.json()["reauth"]["reason"] == "imported_without_refresh_token");
    CHECK(r.events("gone")[0]["outcome"] == "invalid_grant");
    CHECK(r.provider_calls() == 0);
  }
}

TEST_CASE("conditional refresh: stale, current, future versions and an outage",
          "[refresh_faults]") {
  rig r;
  r.import("c1", json{{"expires_at", nullptr}, {"expires_in", 3600}});
  SECTION("current version: 50 concurrent callers, one refresh") {
    std::vector<std::future<http_reply>> calls;
    for (int i = 0; i < 50; ++i) {
      calls.push_back(std::async(
          std::launch::async, [&] { return r.post_refresh("c1", R"({"if_token_version":1})"); }));
    }
    std::set<std::string> tokens;
    for (auto& c : calls) {
      auto res = c.get();
      CHECK(res.status == 200);
      tokens.insert(res.json().value("access_token", ""));
    }
    CHECK(tokens.size() == 1);
    CHECK(r.provider_calls() == 1);
    CHECK(r.view("c1")["token_version"] == 2);
  }
  SECTION("stale version: treated as a GET, no provider call when fresh") {
    REQUIRE(r.post_refresh("c1", R"({"if_token_version":1})").status == 200);
    auto res = r.post_refresh("c1", R"({"if_token_version":1})");
    CHECK(res.status == 200);
    CHECK(res.json()["token_version"] == 2);
    CHECK(r.provider_calls() == 1);
  }
  SECTION("future version: 409 conflict") {
    auto res = r.post_refresh("c1", R"({"if_token_version":7})");
    CHECK(res.status == 409);
    CHECK(res.json()["code"] == "conflict");
    CHECK(r.provider_calls() == 0);
  }
  SECTION("an outage at the current version is 503, never the old token") {
    r.script(json::array({{{"status", 502}, {"repeat", 3}}}));
    auto res = r.post_refresh("c1", R"({"if_token_version":1})");
    CHECK(res.status == 503);
    CHECK(res.json()["code"] == "provider_unavailable");
    CHECK(res.body.find("old-access") == std::string::npos);
  }
  SECTION("bad bodies are 400 and change nothing") {
    CHECK(r.post_refresh("c1", R"({"if_token_version":"1"})").json()["field"] ==
          "/if_token_version");
    CHECK(r.post_refresh("c1", R"({"if_token_version":0})").json()["field"] == "/if_token_version");
    CHECK(r.post_refresh("c1", R"({"other":1})").json()["field"] == "/other");
    CHECK(r.post_refresh("c1", "[1]").status == 400);
    CHECK(r.post_refresh("nope", "{}").status == 404);
    CHECK(r.provider_calls() == 0);
  }
}

TEST_CASE("forced refresh: at most one provider call per minimum interval", "[refresh_faults]") {
  rig r(std::map<std::string, std::string>{{"TOKEND_FORCE_REFRESH_MIN_INTERVAL", "60"}});
  r.import("c1", json{{"expires_at", nullptr}, {"expires_in", 3600}});
  auto first = r.post_refresh("c1");
  REQUIRE(first.status == 200);
  CHECK(first.json()["token_version"] == 2);
  auto second = r.post_refresh("c1", "{}");
  CHECK(second.status == 200);
  CHECK(second.json()["token_version"] == 2);  // a GET within the interval
  CHECK(r.provider_calls() == 1);
  CHECK(r.events("c1")[0]["trigger"] == "forced");
}

TEST_CASE(
    "forced refresh: allowed again after the interval; on-demand and conditional "
    "refreshes do not start the interval",
    "[refresh_faults]") {
  rig r(std::map<std::string, std::string>{{"TOKEND_FORCE_REFRESH_MIN_INTERVAL", "2"}});
  r.import("c1", json{{"expires_at", nullptr}, {"expires_in", 3600}});
  REQUIRE(r.post_refresh("c1").json()["token_version"] == 2);
  REQUIRE(r.post_refresh("c1").json()["token_version"] == 2);  // within 2 s: no call
  REQUIRE(r.provider_calls() == 1);
  std::this_thread::sleep_for(2500ms);
  auto after = r.post_refresh("c1");
  REQUIRE(after.status == 200);
  CHECK(after.json()["token_version"] == 3);
  CHECK(r.provider_calls() == 2);

  // An on-demand refresh (an expired import) and a conditional one leave no interval behind:
  // a forced refresh right after each still goes to the provider.
  r.import("c2");  // expired
  REQUIRE(r.get("c2").json()["token_version"] == 2);
  REQUIRE(r.provider_calls() == 3);
  auto forced = r.post_refresh("c2");
  CHECK(forced.json()["token_version"] == 3);
  CHECK(r.provider_calls() == 4);
  r.import("c3", json{{"expires_at", nullptr}, {"expires_in", 3600}});
  REQUIRE(r.post_refresh("c3", R"({"if_token_version":1})").json()["token_version"] == 2);
  REQUIRE(r.provider_calls() == 5);
  CHECK(r.events("c3")[0]["trigger"] == "conditional");
  forced = r.post_refresh("c3");
  CHECK(forced.json()["token_version"] == 3);
  CHECK(r.provider_calls() == 6);
  CHECK(r.events("c3")[0]["trigger"] == "forced");
}

TEST_CASE("min_ttl: out of range is 400; half the issued lifetime caps it", "[refresh_faults]") {
  rig r;
  r.import("c1", json{{"expires_at", nullptr}, {"expires_in", 100}});
  CHECK(r.get("c1", "?min_ttl=3301").json()["field"] == "min_ttl");
  CHECK(r.get("c1", "?min_ttl=-1").status == 400);
  // 100 s lifetime: min(3000, 50) = 50 s needed, ~100 s left: served as stored.
  auto res = r.get("c1", "?min_ttl=3000");
  CHECK(res.json()["token_version"] == 1);
  CHECK(r.provider_calls() == 0);
}

TEST_CASE(
    "a token not yet expired but below min(min_ttl, half its lifetime) is refreshed; "
    "a transient failure then serves it with refresh_deferred",
    "[refresh_faults]") {
  rig r(std::map<std::string, std::string>{{"TOKEND_CACHE", "off"}});
  r.import("c1", json{{"expires_at", nullptr}, {"expires_in", 3600}});
  r.import("c2", json{{"expires_at", nullptr}, {"expires_in", 3600}});
  // Issued for 3600 s, 200 s left: min(300, 1800) = 300 s wanted, so due; min_ttl=100 is not.
  pqxx::connection c(r.db.url());
  pqxx::nontransaction tx(c);
  tx.exec("UPDATE connections SET access_expires_at = now() + interval '200 seconds'");
  auto res = r.get("c1", "?min_ttl=100");
  REQUIRE(res.status == 200);
  CHECK(res.json()["access_token"] == "old-access-c1");
  CHECK(r.provider_calls() == 0);  // the precondition: 200 s left is fresh for min_ttl=100
  res = r.get("c1", "?min_ttl=300");
  REQUIRE(res.status == 200);
  CHECK(res.json()["access_token"] == "fake-at-1");
  CHECK(res.json()["token_version"] == 2);
  CHECK(!res.json().contains("refresh_deferred"));
  CHECK(r.provider_calls() == 1);
  CHECK(r.events("c1")[0]["trigger"] == "on_demand");

  // The same for c2 while the provider is down: the unexpired token, marked deferred.
  r.script(json::array({{{"status", 503}, {"repeat", 10}}}));
  res = r.get("c2", "?min_ttl=300");
  REQUIRE(res.status == 200);
  CHECK(res.json()["access_token"] == "old-access-c2");
  CHECK(res.json()["refresh_deferred"] == true);
  CHECK(res.json()["token_version"] == 1);
  CHECK(r.events("c2")[0]["outcome"] == "transient");
  CHECK(r.stored_refresh("c2") == std::optional<std::string>("old-refresh-c2"));
}

TEST_CASE("the outbound address rule refuses loopback token endpoints at connect time",
          "[refresh_faults]") {
  scratch_database db;
  tokend_process t(db.url());  // TOKEND_ALLOW_INSECURE_PROVIDER_URLS unset
  auto key = t.tenant_key("acme");
  for (std::string host : {"127.0.0.1", "localhost"}) {
    INFO(host);
    const std::string id = host == "localhost" ? "c-local" : "c-ip";
    REQUIRE(t.call("PUT", "/v1/providers/p-" + id, key,
                   json{{"type", "oauth2"},
                        {"client_id", "c"},
                        {"client_secret", "s"},
                        {"token_url", "https://" + host + ":9/token"}})
                .status == 201);
    REQUIRE(t.call("PUT", "/v1/connections/" + id, key,
                   json{{"provider", "p-" + id},
                        {"access_token", "a"},
                        {"refresh_token", "r"},
                        {"expires_at", kPast}})
                .status == 201);
    auto r = t.call("GET", "/v1/tokens/" + id, key);
    CHECK(r.status == 502);
    CHECK(r.json()["code"] == "provider_config_error");
    auto ev = t.call("GET", "/v1/connections/" + id + "/events", key).json()["items"][0];
    CHECK(ev["outcome"] == "config_error");
    CHECK(ev["description"] == "outbound address refused");
  }
}

TEST_CASE("connections to a provider host are reused", "[refresh_faults]") {
  rig r;
  r.import("c1");
  r.import("c2");
  REQUIRE(r.get("c1").status == 200);
  REQUIRE(r.get("c2").status == 200);
  auto out = r.t.output();
  CHECK(out.find("\"connection_reused\":false") != std::string::npos);
  CHECK(out.find("\"connection_reused\":true") != std::string::npos);
}
