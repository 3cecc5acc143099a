// Connections: import/replace with versions and compare-and-swap, views without tokens,
// pagination, delete, events, and bad input that writes nothing.
#include <catch2/catch.hpp>
#include <future>
#include <set>

#include "support/fixtures.hpp"

using namespace tokend::test;
using nlohmann::json;

namespace {

std::string setup(const tokend_process& t) {
  auto key = t.tenant_key("acme");
  put_provider(t, key, "idp", "https://idp.example.com/token",
               json{{"refresh_token_lifetime", 86400}});
  return key;
}

}  // namespace

TEST_CASE("connections: import, view, replace with versions", "[api_connections]") {
  scratch_database db;
  tokend_process t(db.url());
  auto key = setup(t);

  auto r = t.call("PUT", "/v1/connections/cust-1", key,
                  json{{"provider", "idp"},
                       {"access_token", "AT-one-secret"},
                       {"refresh_token", "RT-one-secret"},
                       {"expires_in", 3600},
                       {"scope", "data.records:read"},
                       {"metadata", {{"customer", 42}}}});
  REQUIRE(r.status == 201);
  auto v = r.json();
  CHECK(v["id"] == "cust-1");
  CHECK(v["provider"] == "idp");
  CHECK(v["status"] == "active");
  CHECK(v["token_version"] == 1);
  CHECK(v["scope"] == "data.records:read");
  CHECK(v["metadata"] == json{{"customer", 42}});
  CHECK(v["last_error"].is_null());
  CHECK(v["reauth"].is_null());
  CHECK(v["access_token_fingerprint"].get<std::string>().rfind("sha256:", 0) == 0);
  CHECK(v["refresh_token_fingerprint"] != v["access_token_fingerprint"]);
  CHECK(!v["refresh_expires_at"].is_null());  // from the provider's refresh_token_lifetime
  CHECK(r.body.find("AT-one-secret") == std::string::npos);
  CHECK(r.body.find("RT-one-secret") == std::string::npos);
  for (auto k :
       {"id", "provider", "status", "token_version", "access_expires_at", "refresh_expires_at",
        "scope", "metadata", "last_refreshed_at", "last_error", "reauth",
        "access_token_fingerprint", "refresh_token_fingerprint", "created_at", "updated_at"}) {
    CHECK(v.contains(k));
  }

  auto tok = t.call("GET", "/v1/tokens/cust-1", key);
  REQUIRE(tok.status == 200);
  CHECK(tok.json()["access_token"] == "AT-one-secret");
  CHECK(tok.json()["token_version"] == 1);
  CHECK(tok.header("cache-control") == "no-store");

  r = t.call("PUT", "/v1/connections/cust-1", key,
             json{{"provider", "idp"},
                  {"access_token", "AT-two"},
                  {"expires_at", "2030-01-01T00:00:00Z"},
                  {"if_token_version", 1}});
  REQUIRE(r.status == 200);
  CHECK(r.json()["token_version"] == 2);
  CHECK(r.json()["access_expires_at"] == "2030-01-01T00:00:00Z");
  CHECK(r.json()["refresh_token_fingerprint"].is_null());
  CHECK(r.json()["metadata"] == json{{"customer", 42}});  // kept when omitted

  auto stale =
      t.call("PUT", "/v1/connections/cust-1", key,
             json{{"provider", "idp"}, {"access_token", "AT-lost"}, {"if_token_version", 1}});
  CHECK(stale.status == 409);
  CHECK(stale.json()["code"] == "conflict");
  CHECK(t.call("GET", "/v1/tokens/cust-1", key).json()["access_token"] == "AT-two");
  CHECK(t.call("PUT", "/v1/connections/new-one", key,
               json{{"provider", "idp"}, {"access_token", "x"}, {"if_token_version", 1}})
            .status == 409);

  auto events = t.call("GET", "/v1/connections/cust-1/events", key);
  REQUIRE(events.status == 200);
  auto items = events.json()["items"];
  REQUIRE(items.size() == 2);
  CHECK(items[0]["trigger"] == "import");
  CHECK(items[0]["outcome"] == "imported");
  CHECK(items[0]["token_version_before"] == 1);
  CHECK(items[0]["token_version_after"] == 2);
  CHECK(items[1]["token_version_after"] == 1);
  for (auto k : {"id", "at", "trigger", "outcome", "attempt", "http_status", "oauth_error",
                 "description", "token_version_before", "token_version_after", "duration_ms",
                 "joined_count", "request_id", "instance"}) {
    CHECK(items[0].contains(k));
  }
  CHECK(t.call("GET", "/v1/connections/cust-1/events?limit=1", key).json()["items"].size() == 1);
  check_invalid_request(t.call("GET", "/v1/connections/cust-1/events?limit=0", key), "limit");
  check_invalid_request(t.call("GET", "/v1/connections/cust-1/events?limit=501", key), "limit");

  CHECK(t.call("DELETE", "/v1/connections/cust-1", key).status == 204);
  CHECK(t.call("GET", "/v1/connections/cust-1", key).status == 404);
  CHECK(t.call("GET", "/v1/tokens/cust-1", key).status == 404);
  CHECK(t.call("GET", "/v1/connections/cust-1/events", key).status == 404);
  CHECK(t.call("DELETE", "/v1/connections/cust-1", key).status == 404);
  // Re-created: a fresh version 1 and a fresh history.
  r = t.call("PUT", "/v1/connections/cust-1", key,
             json{{"provider", "idp"}, {"access_token", "AT-3"}});
  CHECK(r.status == 201);
  CHECK(r.json()["token_version"] == 1);
  CHECK(t.call("GET", "/v1/connections/cust-1/events", key).json()["items"].size() == 1);
}

TEST_CASE("tokens with JSON-special characters come back intact", "[api_connections]") {
  scratch_database db;
  tokend_process t(db.url());
  auto key = setup(t);
  const std::string odd = "a\"b\\c\nd\te\u00e9/\x01";
  REQUIRE(t.call("PUT", "/v1/connections/odd", key,
                 json{{"provider", "idp"}, {"access_token", odd}, {"scope", "s \"q\""}})
              .status == 201);
  for (int i = 0; i < 2; ++i) {  // from the database, then from the cache
    auto r = t.call("GET", "/v1/tokens/odd", key);
    REQUIRE(r.status == 200);
    CHECK(r.json()["access_token"] == odd);
    CHECK(r.json()["scope"] == "s \"q\"");
  }
}

TEST_CASE("connections and events: default page sizes and a matching provider filter",
          "[api_connections]") {
  scratch_database db;
  tokend_process t(db.url());
  auto key = setup(t);
  put_provider(t, key, "other", "https://other.example.com/token");
  seed_connections(db.url(), "acme", "idp", 105, [](int i) { return numbered("a", i); });
  for (const auto* id : {"z1", "z2"}) {
    REQUIRE(t.call("PUT", std::string("/v1/connections/") + id, key,
                   json{{"provider", "other"}, {"access_token", "a"}})
                .status == 201);
  }
  // Connections: 100 per page by default (contract), then the rest.
  auto page = t.call("GET", "/v1/connections", key);
  REQUIRE(page.status == 200);
  CHECK(page.json()["items"].size() == 100);
  REQUIRE(page.json()["next_cursor"].is_string());
  auto rest =
      t.call("GET", "/v1/connections?cursor=" + page.json()["next_cursor"].get<std::string>(), key);
  REQUIRE(rest.status == 200);
  CHECK(rest.json()["items"].size() == 7);
  CHECK(rest.json()["next_cursor"].is_null());
  // provider= returns exactly that provider's connections.
  auto other = t.call("GET", "/v1/connections?provider=other", key).json()["items"];
  REQUIRE(other.size() == 2);
  CHECK(other[0]["id"] == "z1");
  CHECK(other[1]["id"] == "z2");
  for (const auto& c : other) CHECK(c["provider"] == "other");
  CHECK(t.call("GET", "/v1/connections?provider=idp&limit=500", key).json()["items"].size() == 105);
  // Events: 50 per page by default.
  for (int i = 0; i < 54; ++i) {
    REQUIRE(t.call("PUT", "/v1/connections/z1", key,
                   json{{"provider", "other"}, {"access_token", numbered("a", i)}})
                .status == 200);
  }
  CHECK(db.query_int("SELECT count(*) FROM connection_events WHERE connection_id = 'z1'") == 55);
  auto events = t.call("GET", "/v1/connections/z1/events", key);
  REQUIRE(events.status == 200);
  CHECK(events.json()["items"].size() == 50);
  CHECK(t.call("GET", "/v1/connections/z1/events?limit=500", key).json()["items"].size() == 55);
}

TEST_CASE("connections: list with filters and an opaque cursor", "[api_connections]") {
  scratch_database db;
  tokend_process t(db.url());
  auto key = setup(t);
  for (int i = 0; i < 7; ++i) {
    REQUIRE(t.call("PUT", "/v1/connections/c" + std::to_string(i), key,
                   json{{"provider", "idp"}, {"access_token", "a"}})
                .status == 201);
  }
  std::vector<std::string> seen;
  std::string target = "/v1/connections?limit=3";
  for (int page = 0; page < 5; ++page) {
    auto r = t.call("GET", target, key);
    REQUIRE(r.status == 200);
    const auto body = r.json();
    for (const auto& item : body["items"]) seen.push_back(item["id"]);
    const auto next = body["next_cursor"];
    if (next.is_null()) break;
    target = "/v1/connections?limit=3&cursor=" + next.get<std::string>();
  }
  CHECK(seen == std::vector<std::string>{"c0", "c1", "c2", "c3", "c4", "c5", "c6"});
  CHECK(t.call("GET", "/v1/connections?status=active", key).json()["items"].size() == 7);
  CHECK(t.call("GET", "/v1/connections?status=needs_reauth", key).json()["items"].empty());
  CHECK(t.call("GET", "/v1/connections?provider=other", key).json()["items"].empty());
  check_invalid_request(t.call("GET", "/v1/connections?limit=0", key), "limit");
  check_invalid_request(t.call("GET", "/v1/connections?limit=501", key), "limit");
  check_invalid_request(t.call("GET", "/v1/connections?limit=ten", key), "limit");
  check_invalid_request(t.call("GET", "/v1/connections?status=dead", key), "status");
  CHECK(t.call("GET", "/v1/connections?cursor=%%%", key).status == 400);
  check_invalid_request(t.call("GET", "/v1/connections?cursor=***", key), "cursor");
  check_invalid_request(t.call("GET", "/v1/connections?cursor=Zm9v", key), "cursor");
}

TEST_CASE("connections: bad input is 400 naming the field and writes nothing",
          "[api_connections]") {
  scratch_database db;
  tokend_process t(db.url());
  auto key = setup(t);
  REQUIRE(t.call("PUT", "/v1/connections/c1", key,
                 json{{"provider", "idp"}, {"access_token", "keep-me"}})
              .status == 201);
  const json ok = {{"provider", "idp"}, {"access_token", "new"}};
  auto with = [&](const std::string& k, json v) {
    json b = ok;
    b[k] = std::move(v);
    return t.call("PUT", "/v1/connections/c1", key, b);
  };
  check_invalid_request(with("provider", "unknown"), "/provider");
  check_invalid_request(with("provider", "bad id!"), "/provider");
  check_invalid_request(with("access_token", ""), "/access_token");
  check_invalid_request(with("access_token", 12), "/access_token");
  // Tokens up to the body limit are accepted (test refresh_fence stores a 20,000-character
  // one); past it the body itself is refused.
  CHECK(with("access_token", std::string(66 * 1024, 'a')).status == 413);
  check_invalid_request(with("refresh_token", json::array()), "/refresh_token");
  check_invalid_request(with("expires_in", -5), "/expires_in");
  check_invalid_request(with("expires_in", 1.5), "/expires_in");
  check_invalid_request(with("expires_at", "yesterday"), "/expires_at");
  check_invalid_request(with("expires_at", "2199-01-01T00:00:00Z"), "/expires_at");
  check_invalid_request(with("metadata", "str"), "/metadata");
  check_invalid_request(with("metadata", json{{"big", std::string(17 * 1024, 'x')}}), "/metadata");
  check_invalid_request(with("if_token_version", 0), "/if_token_version");
  check_invalid_request(with("unexpected", 1), "/unexpected");
  json both = ok;
  both["expires_in"] = 10;
  both["expires_at"] = "2030-01-01T00:00:00Z";
  check_invalid_request(t.call("PUT", "/v1/connections/c1", key, both), "/expires_at");
  json missing = ok;
  missing.erase("access_token");
  check_invalid_request(t.call("PUT", "/v1/connections/c1", key, missing), "/access_token");
  check_invalid_request(t.call("PUT", "/v1/connections/c1", key, std::string("{not json")), "");
  check_invalid_request(t.call("PUT", "/v1/connections/bad%20id", key, ok), "connection");
  auto big = t.call("PUT", "/v1/connections/c1", key, std::string(70 * 1024, ' '));
  CHECK(big.status == 413);

  auto view = t.call("GET", "/v1/connections/c1", key).json();
  CHECK(view["token_version"] == 1);
  CHECK(t.call("GET", "/v1/tokens/c1", key).json()["access_token"] == "keep-me");
  CHECK(t.call("GET", "/v1/connections/c1/events", key).json()["items"].size() == 1);
}

TEST_CASE("two writers racing on one token_version: exactly one wins", "[api_connections]") {
  scratch_database db;
  tokend_process t(db.url());
  auto key = setup(t);
  for (int round = 0; round < 10; ++round) {
    const std::string id = "race-" + std::to_string(round);
    REQUIRE(t.call("PUT", "/v1/connections/" + id, key,
                   json{{"provider", "idp"}, {"access_token", "v1"}})
                .status == 201);
    auto put = [&](std::string token) {
      return t.call("PUT", "/v1/connections/" + id, key,
                    json{{"provider", "idp"}, {"access_token", token}, {"if_token_version", 1}});
    };
    auto a = std::async(std::launch::async, put, "writer-a");
    auto b = std::async(std::launch::async, put, "writer-b");
    auto ra = a.get();
    auto rb = b.get();
    std::multiset<int> statuses = {ra.status, rb.status};
    CHECK(statuses == std::multiset<int>{200, 409});
    auto winner = ra.status == 200 ? "writer-a" : "writer-b";
    auto tok = t.call("GET", "/v1/tokens/" + id, key).json();
    CHECK(tok["access_token"] == winner);
    CHECK(tok["token_version"] == 2);
  }
}
