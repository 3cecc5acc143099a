// Providers: create/replace, airtable defaults, secrets never returned, URL rules, bad input.
#include <catch2/catch.hpp>

#include "support/fixtures.hpp"

using namespace tokend::test;
using nlohmann::json;

TEST_CASE("providers: airtable defaults, replace, secret handling", "[api_providers]") {
  scratch_database db;
  tokend_process t(db.url());
  auto key = t.tenant_key("acme");

  auto r = t.call("PUT", "/v1/providers/airtable", key,
                  json{{"type", "airtable"},
                       {"client_id", "cid-1"},
                       {"client_secret", "super-secret-value"},
                       {"scopes", {"data.records:read"}}});
  REQUIRE(r.status == 201);
  auto p = r.json();
  CHECK(p["authorize_url"] == "https://airtable.com/oauth2/v1/authorize");
  CHECK(p["token_url"] == "https://airtable.com/oauth2/v1/token");
  CHECK(p["canary_url"] == "https://api.airtable.com/v0/meta/whoami");
  CHECK(p["token_endpoint_auth_method"] == "client_secret_basic");
  CHECK(p["pkce"] == true);
  CHECK(p["refresh_token_lifetime"] == 60 * 24 * 3600);
  CHECK(p["default_expires_in"] == 3600);
  CHECK(p["refresh_ahead"] == 600);
  CHECK(p["client_secret_set"] == true);
  CHECK(r.body.find("super-secret-value") == std::string::npos);

  // Replace without a secret keeps the stored one (the endpoints and client_id unchanged).
  r = t.call("PUT", "/v1/providers/airtable", key,
             json{{"type", "airtable"}, {"client_id", "cid-1"}, {"display_name", "Airtable"}});
  REQUIRE(r.status == 200);
  CHECK(r.json()["client_id"] == "cid-1");
  CHECK(r.json()["client_secret_set"] == true);
  // A new client_id needs its own secret.
  r = t.call("PUT", "/v1/providers/airtable", key,
             json{{"type", "airtable"}, {"client_id", "cid-2"}, {"display_name", "Airtable"}});
  REQUIRE(r.status == 400);
  CHECK(r.json()["field"] == "/client_secret");
  r = t.call("PUT", "/v1/providers/airtable", key,
             json{{"type", "airtable"},
                  {"client_id", "cid-2"},
                  {"client_secret", "super-secret-value"},
                  {"display_name", "Airtable"}});
  REQUIRE(r.status == 200);
  CHECK(r.json()["client_id"] == "cid-2");
  CHECK(r.json()["client_secret_set"] == true);
  CHECK(r.json()["display_name"] == "Airtable");

  auto g = t.call("GET", "/v1/providers/airtable", key);
  CHECK(g.status == 200);
  CHECK(g.json()["client_id"] == "cid-2");
  CHECK(g.body.find("super-secret-value") == std::string::npos);

  r = t.call("PUT", "/v1/providers/generic", key,
             json{{"type", "oauth2"},
                  {"client_id", "c"},
                  {"token_url", "https://idp.example.com/token"},
                  {"token_endpoint_auth_method", "none"},
                  {"refresh_scope", "a b"},
                  {"default_expires_in", 120},
                  {"refresh_ahead", 30}});
  REQUIRE(r.status == 201);
  CHECK(r.json()["client_secret_set"] == false);
  CHECK(r.json()["refresh_scope"] == "a b");
  CHECK(r.json()["refresh_rate_per_s"].is_null());  // unlimited unless set

  auto list = t.call("GET", "/v1/providers", key);
  REQUIRE(list.status == 200);
  REQUIRE(list.json()["items"].size() == 2);
  CHECK(list.json()["items"][0]["id"] == "airtable");
  CHECK(t.call("GET", "/v1/providers/nope", key).status == 404);
}

TEST_CASE("providers: bad input is 400 naming the field, nothing written", "[api_providers]") {
  scratch_database db;
  tokend_process t(db.url());
  auto key = t.tenant_key("acme");
  const json ok = {{"type", "oauth2"},
                   {"client_id", "c"},
                   {"client_secret", "s"},
                   {"token_url", "https://idp.example.com/token"}};
  auto with = [&](const std::string& k, json v) {
    json b = ok;
    b[k] = std::move(v);
    return t.call("PUT", "/v1/providers/p1", key, b);
  };
  check_invalid_request(with("type", "saml"), "/type");
  check_invalid_request(with("type", 3), "/type");
  check_invalid_request(with("client_id", ""), "/client_id");
  check_invalid_request(with("token_url", "http://idp.example.com/token"), "/token_url");
  check_invalid_request(with("token_url", "not a url"), "/token_url");
  check_invalid_request(with("authorize_url", "ftp://x/y"), "/authorize_url");
  check_invalid_request(with("canary_url", "https://user:pw@x/y"), "/canary_url");
  check_invalid_request(with("token_endpoint_auth_method", "private_key_jwt"),
                        "/token_endpoint_auth_method");
  check_invalid_request(with("pkce", "yes"), "/pkce");
  check_invalid_request(with("refresh_rate_per_s", 0), "/refresh_rate_per_s");
  check_invalid_request(with("refresh_rate_per_s", "50"), "/refresh_rate_per_s");
  check_invalid_request(with("refresh_rate_per_s", 1.5), "/refresh_rate_per_s");
  check_invalid_request(with("scopes", {"a b"}), "/scopes/0");
  check_invalid_request(with("scopes", {1}), "/scopes/0");
  check_invalid_request(with("default_expires_in", 0), "/default_expires_in");
  check_invalid_request(with("default_expires_in", "3600"), "/default_expires_in");
  check_invalid_request(with("refresh_ahead", -1), "/refresh_ahead");
  check_invalid_request(with("client_secret", std::string(5000, 's')), "/client_secret");
  check_invalid_request(with("surprise", true), "/surprise");
  json no_url = ok;
  no_url.erase("token_url");
  check_invalid_request(t.call("PUT", "/v1/providers/p1", key, no_url), "/token_url");
  json no_secret = ok;
  no_secret.erase("client_secret");
  no_secret["token_endpoint_auth_method"] = "client_secret_post";
  check_invalid_request(t.call("PUT", "/v1/providers/p1", key, no_secret), "/client_secret");
  check_invalid_request(t.call("PUT", "/v1/providers/.bad", key, ok), "provider");
  check_invalid_request(
      t.call(
          "PUT", "/v1/providers/airtable", key,
          json{{"type", "airtable"}, {"client_id", "c"}, {"client_secret", "s"}, {"pkce", false}}),
      "/pkce");
  CHECK(t.call("GET", "/v1/providers", key).json()["items"].empty());
}

TEST_CASE("http provider URLs are allowed only with TOKEND_ALLOW_INSECURE_PROVIDER_URLS=1",
          "[api_providers]") {
  scratch_database db;
  tokend_process t(db.url(), {{"TOKEND_ALLOW_INSECURE_PROVIDER_URLS", "1"}});
  auto key = t.tenant_key("acme");
  auto r = t.call("PUT", "/v1/providers/local", key,
                  json{{"type", "oauth2"},
                       {"client_id", "c"},
                       {"client_secret", "s"},
                       {"token_url", "http://127.0.0.1:9/token"}});
  CHECK(r.status == 201);
}

TEST_CASE("a stored secret follows its endpoint: each of the five fields needs client_secret",
          "[api_providers]") {
  scratch_database db;
  tokend_process t(db.url());
  auto key = t.tenant_key("acme");
  const json base{{"type", "oauth2"},
                  {"client_id", "cid"},
                  {"token_url", "https://idp.example.com/token"},
                  {"authorize_url", "https://idp.example.com/authorize"},
                  {"canary_url", "https://api.example.com/me"},
                  {"token_endpoint_auth_method", "client_secret_basic"}};
  auto with_secret = base;
  with_secret["client_secret"] = "s3cret-one";
  REQUIRE(t.call("PUT", "/v1/providers/idp", key, with_secret).status == 201);
  const auto stored = [&] {
    return db.query_text(
        "SELECT token_url || ' ' || client_id || ' ' || token_endpoint_auth_method || ' ' || "
        "coalesce(authorize_url, '-') || ' ' || coalesce(canary_url, '-') || ' ' || "
        "secret_version FROM providers WHERE tenant_id = 'acme' AND id = 'idp'");
  };
  const auto before = stored();
  REQUIRE(before ==
          "https://idp.example.com/token cid client_secret_basic https://idp.example.com/authorize "
          "https://api.example.com/me 1");

  const std::vector<std::pair<std::string, json>> changes{
      {"token_url", "https://attacker.example.net/token"},
      {"client_id", "other-client"},
      {"token_endpoint_auth_method", "client_secret_post"},
      {"authorize_url", "https://attacker.example.net/authorize"},
      {"canary_url", "https://attacker.example.net/me"}};
  for (const auto& [field, value] : changes) {
    INFO(field);
    auto body = base;
    body[field] = value;
    auto r = t.call("PUT", "/v1/providers/idp", key, body);
    CHECK(r.status == 400);
    CHECK(r.json()["code"] == "invalid_request");
    CHECK(r.json()["field"] == "/client_secret");
    CHECK(r.header("content-type") == "application/problem+json");
    CHECK(stored() == before);  // nothing written
  }
  // Omitting an optional URL is a change too.
  auto no_canary = base;
  no_canary.erase("canary_url");
  CHECK(t.call("PUT", "/v1/providers/idp", key, no_canary).status == 400);
  CHECK(stored() == before);

  // Unchanged endpoints keep the stored secret; a change with a new secret is accepted.
  auto same = base;
  same["display_name"] = "IdP";
  CHECK(t.call("PUT", "/v1/providers/idp", key, same).status == 200);
  CHECK(stored() == before);
  auto moved = base;
  moved["token_url"] = "https://idp2.example.com/token";
  moved["client_secret"] = "s3cret-two";
  auto r = t.call("PUT", "/v1/providers/idp", key, moved);
  REQUIRE(r.status == 200);
  CHECK(r.json()["token_url"] == "https://idp2.example.com/token");
  CHECK(stored() ==
        "https://idp2.example.com/token cid client_secret_basic https://idp.example.com/authorize "
        "https://api.example.com/me 2");

  // A provider without a stored secret has nothing to leak: its endpoints change freely.
  auto pub = json{{"type", "oauth2"},
                  {"client_id", "pub"},
                  {"token_url", "https://idp.example.com/token"},
                  {"token_endpoint_auth_method", "none"}};
  REQUIRE(t.call("PUT", "/v1/providers/public", key, pub).status == 201);
  pub["token_url"] = "https://idp3.example.com/token";
  CHECK(t.call("PUT", "/v1/providers/public", key, pub).status == 200);
}
