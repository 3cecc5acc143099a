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

  // Replace without a secret keeps the stored one.
  r = t.call("PUT", "/v1/providers/airtable", key,
             json{{"type", "airtable"}, {"client_id", "cid-2"}, {"display_name", "Airtable"}});
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
