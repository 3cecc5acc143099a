// Tenants and API keys: admin-only endpoints, key lifecycle, and bad input.
#include <catch2/catch.hpp>

#include "support/fixtures.hpp"

using namespace tokend::test;
using namespace std::chrono_literals;
using nlohmann::json;

TEST_CASE("tenants: create, conflict, validation, auth", "[api_admin]") {
  scratch_database db;
  tokend_process t(db.url());
  const auto& admin = kTestAdminToken;

  auto r = t.call("POST", "/v1/tenants", admin, json{{"id", "acme"}, {"name", "Acme Inc"}});
  REQUIRE(r.status == 201);
  CHECK(r.json()["id"] == "acme");
  CHECK(r.json()["name"] == "Acme Inc");
  CHECK(r.json()["created_at"].get<std::string>().back() == 'Z');

  r = t.call("POST", "/v1/tenants", admin, json{{"id", "acme"}, {"name", "Again"}});
  CHECK(r.status == 409);
  CHECK(r.json()["code"] == "conflict");

  check_invalid_request(t.call("POST", "/v1/tenants", admin, json{{"id", "-bad"}, {"name", "x"}}),
                        "/id");
  check_invalid_request(
      t.call("POST", "/v1/tenants", admin, json{{"id", std::string(129, 'a')}, {"name", "x"}}),
      "/id");
  check_invalid_request(t.call("POST", "/v1/tenants", admin, json{{"id", 5}, {"name", "x"}}),
                        "/id");
  check_invalid_request(t.call("POST", "/v1/tenants", admin, json{{"id", "ok"}}), "/name");
  check_invalid_request(
      t.call("POST", "/v1/tenants", admin, json{{"id", "ok"}, {"name", std::string(201, 'n')}}),
      "/name");
  check_invalid_request(
      t.call("POST", "/v1/tenants", admin, json{{"id", "ok"}, {"name", "x"}, {"extra", 1}}),
      "/extra");
  check_invalid_request(t.call("POST", "/v1/tenants", admin, std::string("{\"id\": \"ok\",")), "");
  check_invalid_request(t.call("POST", "/v1/tenants", admin, std::string("[1,2]")), "");
  check_invalid_request(t.call("POST", "/v1/tenants", admin, std::string("")), "");

  CHECK(t.call("POST", "/v1/tenants", "", json{{"id", "x"}, {"name", "x"}}).status == 401);
  CHECK(t.call("POST", "/v1/tenants", "wrong-token", json{{"id", "x"}, {"name", "x"}}).status ==
        401);
  auto key = t.tenant_key("acme");
  auto forbidden = t.call("POST", "/v1/tenants", key, json{{"id", "x"}, {"name", "x"}});
  CHECK(forbidden.status == 403);
  CHECK(forbidden.json()["code"] == "forbidden");
  CHECK(t.call("GET", "/v1/tenants/acme/api-keys", key).status == 403);
}

TEST_CASE("api keys: shown once, listed without secrets, revoked and expired keys get 401",
          "[api_admin]") {
  scratch_database db;
  tokend_process t(db.url());
  const auto& admin = kTestAdminToken;
  REQUIRE(t.call("POST", "/v1/tenants", admin, json{{"id", "acme"}, {"name", "Acme"}}).status ==
          201);

  auto r = t.call("POST", "/v1/tenants/acme/api-keys", admin,
                  json{{"name", "svc"}, {"scopes", {"connections:read", "connections:read"}}});
  REQUIRE(r.status == 201);
  auto created = r.json();
  const auto key = created["key"].get<std::string>();
  CHECK(key.rfind("tkd_", 0) == 0);
  CHECK(key.size() >= 4 + 43);
  CHECK(created["scopes"] == json({"connections:read"}));
  CHECK(created["expires_at"].is_null());
  CHECK(t.call("GET", "/v1/connections", key).status == 200);

  auto list = t.call("GET", "/v1/tenants/acme/api-keys", admin);
  REQUIRE(list.status == 200);
  CHECK(list.body.find(key) == std::string::npos);
  REQUIRE(list.json()["items"].size() == 1);
  auto item = list.json()["items"][0];
  CHECK(item["id"] == created["id"]);
  for (auto k :
       {"id", "name", "scopes", "created_at", "expires_at", "last_used_at", "revoked_at"}) {
    CHECK(item.contains(k));
  }
  CHECK(!item.contains("key"));

  // A tenant key (even with every tenant scope) cannot manage keys: 403, nothing written.
  const auto full = t.tenant_key("acme");
  const auto keys_before = db.query_int("SELECT count(*) FROM api_keys WHERE revoked_at IS NULL");
  auto denied = t.call("POST", "/v1/tenants/acme/api-keys", full,
                       json{{"name", "escalate"}, {"scopes", {"tokens:read"}}});
  CHECK(denied.status == 403);
  CHECK(denied.json()["code"] == "forbidden");
  CHECK(denied.body.find("tkd_") == std::string::npos);
  const auto key_id = created["id"].get<std::string>();
  denied = t.call("DELETE", "/v1/tenants/acme/api-keys/" + key_id, full);
  CHECK(denied.status == 403);
  CHECK(denied.json()["code"] == "forbidden");
  CHECK(db.query_int("SELECT count(*) FROM api_keys WHERE revoked_at IS NULL") == keys_before);
  CHECK(t.call("GET", "/v1/connections", key).status == 200);  // not revoked

  auto del =
      t.call("DELETE", "/v1/tenants/acme/api-keys/" + created["id"].get<std::string>(), admin);
  CHECK(del.status == 204);
  auto after = t.call("GET", "/v1/connections", key);
  CHECK(after.status == 401);
  CHECK(after.json()["code"] == "unauthorized");
  list = t.call("GET", "/v1/tenants/acme/api-keys", admin);
  CHECK(!list.json()["items"][0]["revoked_at"].is_null());  // revoked keys stay listed

  CHECK(t.call("DELETE", "/v1/tenants/acme/api-keys/key_nope", admin).status == 404);
  CHECK(t.call("GET", "/v1/tenants/nobody/api-keys", admin).status == 404);
  CHECK(t.call("POST", "/v1/tenants/nobody/api-keys", admin,
               json{{"name", "x"}, {"scopes", {"tokens:read"}}})
            .status == 404);

  // Expiry takes effect on the next request.
  auto soon = std::chrono::system_clock::now() + 2s;
  auto secs = std::chrono::duration_cast<std::chrono::seconds>(soon.time_since_epoch()).count();
  std::time_t tt = secs;
  std::tm tm{};
  gmtime_r(&tt, &tm);
  char buf[32];
  std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%SZ", &tm);
  auto exp = t.call("POST", "/v1/tenants/acme/api-keys", admin,
                    json{{"name", "short"}, {"scopes", {"connections:read"}}, {"expires_at", buf}});
  REQUIRE(exp.status == 201);
  const auto short_key = exp.json()["key"].get<std::string>();
  CHECK(t.call("GET", "/v1/connections", short_key).status == 200);
  CHECK(eventually([&] { return t.call("GET", "/v1/connections", short_key).status == 401; }, 5s));

  check_invalid_request(t.call("POST", "/v1/tenants/acme/api-keys", admin,
                               json{{"name", "x"}, {"scopes", {"tokens:write"}}}),
                        "/scopes/0");
  check_invalid_request(t.call("POST", "/v1/tenants/acme/api-keys", admin,
                               json{{"name", "x"}, {"scopes", json::array()}}),
                        "/scopes");
  check_invalid_request(t.call("POST", "/v1/tenants/acme/api-keys", admin,
                               json{{"name", "x"}, {"scopes", "tokens:read"}}),
                        "/scopes");
  check_invalid_request(
      t.call(
          "POST", "/v1/tenants/acme/api-keys", admin,
          json{{"name", "x"}, {"scopes", {"tokens:read"}}, {"expires_at", "2001-01-01T00:00:00Z"}}),
      "/expires_at");
  check_invalid_request(
      t.call("POST", "/v1/tenants/acme/api-keys", admin,
             json{{"name", "x"}, {"scopes", {"tokens:read"}}, {"expires_at", "tomorrow"}}),
      "/expires_at");
  check_invalid_request(t.call("POST", "/v1/tenants/b%20ad/api-keys", admin,
                               json{{"name", "x"}, {"scopes", {"tokens:read"}}}),
                        "tenant");
  // Nothing was written by the failed calls.
  CHECK(t.call("GET", "/v1/tenants/acme/api-keys", admin).json()["items"].size() == 3);
}

TEST_CASE("last_used_at is recorded in the background, not on the request path", "[api_admin]") {
  scratch_database db;
  tokend_process t(db.url());
  auto key = t.tenant_key("acme");
  CHECK(t.call("GET", "/v1/connections", key).status == 200);
  // Flushed at shutdown at the latest.
  REQUIRE(t.stop() == 0);
  tokend_process again(db.url());
  auto items = again.call("GET", "/v1/tenants/acme/api-keys", kTestAdminToken).json()["items"];
  CHECK(!items[0]["last_used_at"].is_null());
}
