// Refresh hygiene: a refresh token goes only to the token endpoint origin it was issued for.
#include <catch2/catch.hpp>

#include "support/fixtures.hpp"

using namespace tokend::test;
using nlohmann::json;

namespace {

// "http://127.0.0.1:PORT" of a peer, as url_origin writes it.
std::string origin_of(const node_peer& p) { return "http://" + p.address(); }

}  // namespace

TEST_CASE("a connection imported under origin A is never refreshed at origin B",
          "[refresh_hygiene]") {
  node_peer a{"fake-token-endpoint.mjs"};
  node_peer b{"fake-token-endpoint.mjs"};
  scratch_database db;
  tokend_process t(db.url(), {{"TOKEND_ALLOW_INSECURE_PROVIDER_URLS", "1"}});
  const auto key = t.tenant_key("acme");
  json prov{{"type", "oauth2"},
            {"client_id", "cid"},
            {"client_secret", "secret-for-a"},
            {"token_url", a.url("/oauth/token")}};
  REQUIRE(t.call("PUT", "/v1/providers/idp", key, prov).status == 201);
  const auto import = [&](const std::string& id, const std::string& at, const std::string& rt) {
    return import_connection(t, key, id, "idp", at, rt);
  };
  REQUIRE(import("c1", "at-a", "rt-issued-by-a") == 201);
  CHECK(db.query_text("SELECT token_origin FROM connections WHERE id = 'c1'") == origin_of(a));

  // Another path on the same origin (a changed token_url needs the secret again): still
  // origin A, so the refresh goes out.
  prov["token_url"] = a.url("/v2/oauth/token");
  REQUIRE(t.call("PUT", "/v1/providers/idp", key, prov).status == 200);
  auto r = t.call("GET", "/v1/tokens/c1", key);
  REQUIRE(r.status == 200);
  CHECK(r.json()["access_token"] == "fake-at-1");
  CHECK(a.control("GET", "/control/requests")["processed"] == 1);

  // The provider now points at B (with B's secret).
  prov["token_url"] = b.url("/oauth/token");
  prov["client_secret"] = "secret-for-b";
  REQUIRE(t.call("PUT", "/v1/providers/idp", key, prov).status == 200);
  const auto fp_before = db.query_text("SELECT refresh_token_fp FROM connections WHERE id = 'c1'");
  r = t.call("POST", "/v1/tokens/c1/refresh", key);
  REQUIRE(r.status == 502);
  CHECK(r.json()["code"] == "provider_config_error");
  CHECK(r.header("content-type") == "application/problem+json");
  CHECK(r.json()["detail"].get<std::string>().find(origin_of(a)) != std::string::npos);
  CHECK(r.body.find("fake-rt") == std::string::npos);
  // B saw nothing, A saw nothing more.
  CHECK(b.control("GET", "/control/requests")["processed"] == 0);
  CHECK(b.control("GET", "/control/requests")["items"].empty());
  CHECK(a.control("GET", "/control/requests")["processed"] == 1);
  // Stored token set intact, connection active, the provider not on cool-down.
  CHECK(db.query_text("SELECT status || ' ' || token_version FROM connections WHERE id = 'c1'") ==
        "active 2");
  CHECK(db.query_text("SELECT refresh_token_fp FROM connections WHERE id = 'c1'") == fp_before);
  CHECK(db.query_text("SELECT cooldown_until IS NULL FROM providers WHERE id = 'idp'") == "t");
  auto view = t.call("GET", "/v1/connections/c1", key).json();
  CHECK(view["status"] == "active");
  CHECK(view["last_error"]["code"] == "config_error");
  auto events = t.call("GET", "/v1/connections/c1/events", key).json()["items"];
  REQUIRE(!events.empty());
  CHECK(events[0]["outcome"] == "config_error");
  const auto why = events[0]["description"].get<std::string>();
  CHECK(why.find(origin_of(a)) != std::string::npos);
  CHECK(why.find(origin_of(b)) != std::string::npos);

  // A GET of an expired token takes the same path, and again nothing reaches B.
  REQUIRE(import("c2", "at-2", "rt-2") == 201);
  CHECK(db.query_text("SELECT token_origin FROM connections WHERE id = 'c2'") == origin_of(b));
  // c2 was imported under B: no cool-down from c1's mismatch, it refreshes at B.
  r = t.call("GET", "/v1/tokens/c2", key);
  REQUIRE(r.status == 200);
  CHECK(b.control("GET", "/control/requests")["processed"] == 1);
  // c1 (its token still fresh, so a GET serves it) stays refused a refresh until re-imported;
  // the re-import binds B.
  CHECK(t.call("POST", "/v1/tokens/c1/refresh", key).status == 502);
  CHECK(b.control("GET", "/control/requests")["processed"] == 1);
  REQUIRE(import("c1", "at-b", "rt-issued-by-b") == 200);
  CHECK(db.query_text("SELECT token_origin FROM connections WHERE id = 'c1'") == origin_of(b));
  r = t.call("GET", "/v1/tokens/c1", key);
  REQUIRE(r.status == 200);
  const auto seen = b.control("GET", "/control/requests")["items"];
  REQUIRE(seen.size() == 2);
  CHECK(seen[1]["body"].get<std::string>().find("rt-issued-by-b") != std::string::npos);
}

TEST_CASE("a redirect from the token endpoint is not followed", "[refresh_hygiene]") {
  node_peer a{"fake-token-endpoint.mjs"};
  node_peer b{"fake-token-endpoint.mjs"};
  scratch_database db;
  tokend_process t(db.url(), {{"TOKEND_ALLOW_INSECURE_PROVIDER_URLS", "1"}});
  const auto key = t.tenant_key("acme");
  put_provider(t, key, "idp", a.url("/oauth/token"));
  REQUIRE(import_connection(t, key, "c1", "idp", "at-1", "rt-1") == 201);
  for (int status : {302, 307, 308}) {
    INFO(status);
    a.control("POST", "/control/script",
              json{{"steps",
                    {{{"status", status}, {"headers", {{"Location", b.url("/oauth/token")}}}}}}});
    auto r = t.call("POST", "/v1/tokens/c1/refresh", key);
    CHECK(r.status == 502);
    CHECK(r.json()["code"] == "provider_error");
    CHECK(b.control("GET", "/control/requests")["count"] == 0);  // the refresh token stayed put
  }
  CHECK(a.control("GET", "/control/requests")["processed"] == 3);
  CHECK(db.query_text("SELECT status || ' ' || token_version FROM connections WHERE id = 'c1'") ==
        "active 1");
  const auto events = t.call("GET", "/v1/connections/c1/events", key).json()["items"];
  REQUIRE(events.size() == 4);  // imported + three provider_error
  CHECK(events[0]["outcome"] == "provider_error");
  CHECK(events[0]["http_status"] == 308);
}

TEST_CASE("a refused connect and a failed DNS lookup are transient, never sent",
          "[refresh_hygiene]") {
  scratch_database db;
  tokend_process t(db.url(),
                   {{"TOKEND_ALLOW_INSECURE_PROVIDER_URLS", "1"}, {"TOKEND_REQUEST_TIMEOUT", "4"}});
  const auto key = t.tenant_key("acme");
  // Port 1 on loopback refuses; `.invalid` never resolves (RFC 6761).
  put_provider(t, key, "refused", "http://127.0.0.1:1/oauth/token");
  put_provider(t, key, "nodns", "http://token.tokend-test.invalid/oauth/token");
  for (const auto* p : {"refused", "nodns"}) {
    INFO(p);
    const std::string id = std::string("c-") + p;
    REQUIRE(import_connection(t, key, id, p, "at", "rt") == 201);
    auto r = t.call("GET", "/v1/tokens/" + id, key);
    CHECK(r.status == 503);
    CHECK(r.json()["code"] == "provider_unavailable");
    CHECK(!r.header("retry-after").empty());
    const auto events = t.call("GET", "/v1/connections/" + id + "/events", key).json()["items"];
    REQUIRE(events.size() >= 2);
    CHECK(events[0]["outcome"] == "transient");  // not in_doubt: nothing was sent
    CHECK(events[0]["http_status"].is_null());
    for (const auto& e : events) CHECK(e["outcome"] != "in_doubt");
    CHECK(db.query_text("SELECT status || ' ' || token_version FROM connections WHERE id = '" + id +
                        "'") == "active 1");
  }
}
