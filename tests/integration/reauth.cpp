// Reauthorization: links, the connect page, Reconnect with state and PKCE, the OAuth callback
// with the code exchange and the canary. Failure paths against the fault-injecting fake token
// endpoint (and a second fake as the canary); the happy paths in a real browser against the
// real OAuth server (tests/tools/browser-reauth.mjs drives Debian's Chromium).
#include <catch2/catch.hpp>
#include <filesystem>
#include <regex>
#include <sstream>

#include "crypto/crypto.hpp"
#include "support/fixtures.hpp"

using namespace tokend::test;
using nlohmann::json;
using namespace std::chrono_literals;

namespace {

// The value of query parameter `name` in `url` (undecoded).
std::string query_value(const std::string& url, const std::string& name) {
  std::smatch m;
  if (!std::regex_search(url, m, std::regex("[?&]" + name + "=([^&#\"]*)"))) return "";
  return m[1].str();
}

std::string html_unescape_amp(std::string s) {
  for (std::size_t p; (p = s.find("&amp;")) != std::string::npos;) s.replace(p, 5, "&");
  return s;
}

std::string path_of(const std::string& url) {  // "http://host:port/x?y" -> "/x?y"
  auto p = url.find('/', url.find("//") + 2);
  return p == std::string::npos ? "/" : url.substr(p);
}

struct fake_rig {
  scratch_database db;
  node_peer token{"fake-token-endpoint.mjs"};
  node_peer canary{"fake-token-endpoint.mjs"};
  tokend_process t;
  std::string key = t.tenant_key("acme");

  explicit fake_rig(std::map<std::string, std::string> env = {})
      : t(db.url(), with_insecure(std::move(env))) {
    put_provider(t, key, "fk", token.url("/token"),
                 {{"authorize_url", token.url("/authorize")},
                  {"canary_url", canary.url("/v0/whoami")},
                  {"display_name", "Fake Cloud"},
                  {"scopes", {"data.records:read"}},
                  {"pkce", true}});
  }
  static std::map<std::string, std::string> with_insecure(std::map<std::string, std::string> env) {
    env.emplace("TOKEND_ALLOW_INSECURE_PROVIDER_URLS", "1");
    return env;
  }
  // c1 imported, then needs_reauth through a refresh answered invalid_grant.
  void dead_connection(const std::string& id, const tokend_process* other = nullptr,
                       const std::string* other_key = nullptr) {
    const auto& tp = other ? *other : t;
    const auto& k = other_key ? *other_key : key;
    REQUIRE(import_connection(tp, k, id, "fk", "at-" + id, "rt-" + id) == 201);
    token.control("POST", "/control/script",
                  {{"steps", {{{"status", 400}, {"json", {{"error", "invalid_grant"}}}}}}});
    auto r = tp.call("GET", "/v1/tokens/" + id, k);
    REQUIRE(r.status == 409);
    REQUIRE(r.json()["reauth"]["reason"] == "grant_revoked");
    token.control("POST", "/control/reset");
  }
  json create_link(const std::string& id, const json& body = json::object()) {
    auto r = t.call("POST", "/v1/connections/" + id + "/reauth-links", key, body);
    INFO(r.body);
    REQUIRE(r.status == 201);
    return r.json();
  }
  http_reply open(const std::string& link_url) { return http_call(t.address(), "GET", path_of(link_url)); }
  // Presses Reconnect; returns the authorize URL the continue page sends the browser to.
  std::string press(const std::string& link_url) {
    auto r = http_call(t.address(), "POST", path_of(link_url));
    INFO(r.body);
    REQUIRE(r.status == 200);
    std::smatch m;
    REQUIRE(std::regex_search(r.body, m, std::regex("url=([^\"]+)\"")));
    return html_unescape_amp(m[1].str());
  }
  http_reply callback(const std::string& query) {
    return http_call(t.address(), "GET", "/oauth/callback?" + query, "", {}, 30s);
  }
  json connection(const std::string& id) { return t.call("GET", "/v1/connections/" + id, key).json(); }
  json links(const std::string& id) {
    auto r = t.call("GET", "/v1/connections/" + id + "/reauth-links", key);
    REQUIRE(r.status == 200);
    return r.json()["items"];
  }
  json events(const std::string& id) {
    return t.call("GET", "/v1/connections/" + id + "/events", key).json()["items"];
  }
  long long token_requests() { return token.control("GET", "/control/requests")["count"]; }
};

}  // namespace

TEST_CASE("reauth links: creation, the open link in views and 409s, lifecycle and bad input",
          "[reauth]") {
  fake_rig rig;
  rig.dead_connection("c1");

  SECTION("a link names itself in the view and the 409; a newer one supersedes it") {
    auto before = rig.t.call("GET", "/v1/tokens/c1", rig.key);
    REQUIRE(before.status == 409);
    CHECK(before.json()["reauth"]["link_id"].is_null());
    auto l1 = rig.create_link("c1");
    CHECK(l1["url"].get<std::string>().rfind("http://" + rig.t.address() + "/connect/", 0) == 0);
    const auto token1 = l1["url"].get<std::string>().substr(l1["url"].get<std::string>().rfind('/') + 1);
    CHECK(token1.size() == 43);
    // Stored only as a hash.
    CHECK(rig.db.query_int("SELECT count(*) FROM reauth_links WHERE token_hash = decode('" +
                           tokend::crypto::hex(tokend::crypto::sha256(token1)) + "', 'hex')") == 1);
    CHECK(rig.db.query_int("SELECT count(*) FROM reauth_links WHERE position('" + token1 +
                           "'::bytea IN token_hash) > 0") == 0);
    auto view = rig.connection("c1");
    CHECK(view["reauth"]["reason"] == "grant_revoked");
    CHECK(view["reauth"]["link_id"] == l1["id"]);
    CHECK(view["reauth"]["link_expires_at"] == l1["expires_at"]);
    auto r409 = rig.t.call("GET", "/v1/tokens/c1", rig.key);
    REQUIRE(r409.status == 409);
    CHECK(r409.json()["reauth"]["link_id"] == l1["id"]);
    CHECK(r409.body.find("/connect/") == std::string::npos);

    auto l2 = rig.create_link("c1", {{"expires_in", 300}});
    CHECK(rig.connection("c1")["reauth"]["link_id"] == l2["id"]);
    auto items = rig.links("c1");
    REQUIRE(items.size() == 2);
    CHECK(items[0]["id"] == l2["id"]);
    CHECK(items[0]["status"] == "open");
    CHECK(items[0]["reason"] == "grant_revoked");
    CHECK(items[1]["id"] == l1["id"]);
    CHECK(items[1]["status"] == "superseded");
    auto superseded = rig.open(l1["url"]);
    CHECK(superseded.status == 410);
    CHECK(superseded.body.find("A newer link exists") != std::string::npos);

    auto ev = rig.events("c1");
    CHECK(ev[0]["outcome"] == "reauth_link_created");
    CHECK(ev[0]["trigger"] == "reauth");
    CHECK(ev[1]["outcome"] == "reauth_link_created");
  }

  SECTION("opening records `opened` once; an expired link is 410 and listed as expired") {
    auto l = rig.create_link("c1");
    auto page = rig.open(l["url"]);
    REQUIRE(page.status == 200);
    CHECK(rig.open(l["url"]).status == 200);
    auto items = rig.links("c1");
    CHECK(items[0]["status"] == "opened");
    CHECK(!items[0]["opened_at"].is_null());
    CHECK(items[0]["started_at"].is_null());
    int opened_events = 0;
    for (const auto& e : rig.events("c1")) opened_events += e["outcome"] == "reauth_link_opened";
    CHECK(opened_events == 1);

    rig.db.query_text("UPDATE reauth_links SET expires_at = now() - interval '1 second' "
                      "RETURNING id");
    auto gone = rig.open(l["url"]);
    CHECK(gone.status == 410);
    CHECK(gone.body.find("expired") != std::string::npos);
    CHECK(rig.links("c1")[0]["status"] == "expired");
    CHECK(rig.connection("c1")["reauth"]["link_id"].is_null());
  }

  SECTION("a link of a deleted connection does not carry over to a namesake") {
    auto l = rig.create_link("c1");
    REQUIRE(rig.t.call("DELETE", "/v1/connections/c1", rig.key).status == 204);
    REQUIRE(import_connection(rig.t, rig.key, "c1", "fk", "at2", "rt2", 3600) == 201);
    CHECK(rig.connection("c1")["reauth"].is_null());
    auto page = rig.open(l["url"]);
    CHECK(page.status == 410);
    CHECK(page.body.find("no longer exists") != std::string::npos);
    CHECK(http_call(rig.t.address(), "POST", path_of(l["url"])).status == 410);
    CHECK(rig.db.query_int("SELECT count(*) FROM reauth_states") == 0);
  }

  SECTION("unknown links are 404 pages") {
    auto r = http_call(rig.t.address(), "GET", "/connect/" + std::string(43, 'A'));
    CHECK(r.status == 404);
    CHECK(r.header("content-type").rfind("text/html", 0) == 0);
    CHECK(http_call(rig.t.address(), "GET", "/connect/short").status == 404);
    CHECK(http_call(rig.t.address(), "POST", "/connect/" + std::string(43, 'B')).status == 404);
  }

  SECTION("bad input is a problem, and nothing is created") {
    auto check = [&](const std::string& body, const std::string& field) {
      auto r = rig.t.call("POST", "/v1/connections/c1/reauth-links", rig.key, body);
      INFO(body << " -> " << r.body);
      check_invalid_request(r, field);
    };
    check(R"({"expires_in":299})", "/expires_in");
    check(R"({"expires_in":2592001})", "/expires_in");
    check(R"({"expires_in":"600"})", "/expires_in");
    check(R"({"return_url":"not a url"})", "/return_url");
    check(R"({"return_url":"http://app.example.com/done"})", "/return_url");  // not allowed
    check(R"({"surprise":1})", "/surprise");
    check(R"({"expires_in":)", "");
    CHECK(rig.t.call("POST", "/v1/connections/nope/reauth-links", rig.key, std::string("{}")).status == 404);
    check_invalid_request(rig.t.call("POST", "/v1/connections/bad%20id/reauth-links", rig.key, std::string("{}")),
                          "connection");
    CHECK(rig.db.query_int("SELECT count(*) FROM reauth_links") == 0);

    // An active connection that holds every scope needs no link.
    REQUIRE(import_connection(rig.t, rig.key, "ok1", "fk", "at", "rt", 3600) == 201);
    rig.t.call("PUT", "/v1/connections/ok1", rig.key,
               json{{"provider", "fk"}, {"access_token", "at"}, {"refresh_token", "rt"},
                    {"expires_in", 3600}, {"scope", "data.records:read"}});
    CHECK(rig.t.call("POST", "/v1/connections/ok1/reauth-links", rig.key, std::string("{}")).status == 409);
    // ... but one whose provider now asks for more gets a scope_changed link.
    put_provider(rig.t, rig.key, "fk2", rig.token.url("/token"),
                 {{"authorize_url", rig.token.url("/authorize")},
                  {"scopes", {"data.records:read", "schema.bases:read"}}});
    rig.t.call("PUT", "/v1/connections/ok2", rig.key,
               json{{"provider", "fk2"}, {"access_token", "at"}, {"refresh_token", "rt"},
                    {"expires_in", 3600}, {"scope", "data.records:read"}});
    rig.create_link("ok2");
    auto v = rig.connection("ok2");
    CHECK(v["status"] == "active");
    CHECK(v["reauth"]["reason"] == "scope_changed");
    CHECK(rig.links("ok2")[0]["reason"] == "scope_changed");

    // Connect links.
    auto cl = [&](const json& body) { return rig.t.call("POST", "/v1/connect-links", rig.key, body); };
    CHECK(cl({{"connection", "c1"}, {"provider", "fk"}}).status == 409);  // exists
    check_invalid_request(cl({{"connection", "new"}, {"provider", "nope"}}), "/provider");
    check_invalid_request(cl({{"connection", "bad id"}, {"provider", "fk"}}), "/connection");
    check_invalid_request(cl({{"provider", "fk"}}), "/connection");
    check_invalid_request(cl({{"connection", "new"}, {"provider", "fk"}, {"expires_in", 10}}),
                          "/expires_in");
  }

  SECTION("another tenant's connections and links are not found") {
    auto l = rig.create_link("c1");
    auto other = rig.t.tenant_key("globex");
    CHECK(rig.t.call("POST", "/v1/connections/c1/reauth-links", other, std::string("{}")).status == 404);
    CHECK(rig.t.call("GET", "/v1/connections/c1/reauth-links", other).status == 404);
    auto reader = rig.t.tenant_key("acme", {"tokens:read"});
    CHECK(rig.t.call("POST", "/v1/connections/c1/reauth-links", reader, std::string("{}")).status == 403);
    CHECK(rig.links("c1").size() == 1);
  }
}

TEST_CASE("settings: allowed return_url origins", "[reauth]") {
  fake_rig rig;
  auto put = [&](const std::string& body) { return rig.t.call("PUT", "/v1/settings", rig.key, body); };
  auto r = rig.t.call("GET", "/v1/settings", rig.key);
  REQUIRE(r.status == 200);
  CHECK(r.json()["return_url_origins"] == json::array());
  r = put(R"({"return_url_origins":["https://app.example.com","http://127.0.0.1:9","https://APP.example.com:443"]})");
  REQUIRE(r.status == 200);
  CHECK(r.json()["return_url_origins"] == json({"https://app.example.com", "http://127.0.0.1:9"}));
  CHECK(rig.t.call("GET", "/v1/settings", rig.key).json() == r.json());
  check_invalid_request(put(R"({"return_url_origins":["https://app.example.com/path"]})"),
                        "/return_url_origins/0");
  check_invalid_request(put(R"({"return_url_origins":["https://a.example","https://b.example/?q"]})"),
                        "/return_url_origins/1");
  check_invalid_request(put(R"({"return_url_origins":"https://app.example.com"})"),
                        "/return_url_origins");
  check_invalid_request(put(R"({})"), "/return_url_origins");
  json many = json::array();
  for (int i = 0; i < 21; ++i) many.push_back(numbered("https://o", i) + ".example");
  check_invalid_request(put(json{{"return_url_origins", many}}.dump()), "/return_url_origins");
  // The failed PUTs changed nothing.
  CHECK(rig.t.call("GET", "/v1/settings", rig.key).json()["return_url_origins"].size() == 2);
  // Another tenant has its own (empty) settings.
  CHECK(rig.t.call("GET", "/v1/settings", rig.t.tenant_key("globex")).json()["return_url_origins"] ==
        json::array());

  // Without TOKEND_ALLOW_INSECURE_PROVIDER_URLS an origin must be https.
  scratch_database db2;
  tokend_process strict(db2.url());
  auto k2 = strict.tenant_key("acme");
  check_invalid_request(strict.call("PUT", "/v1/settings", k2,
                                    std::string(R"({"return_url_origins":["http://app.example.com"]})")),
                        "/return_url_origins/0");
}

TEST_CASE("the connect page: explanation, escaping and security headers", "[reauth]") {
  fake_rig rig;
  put_provider(rig.t, rig.key, "evil", rig.token.url("/token"),
               {{"authorize_url", rig.token.url("/authorize")},
                {"display_name", "<script>alert(1)</script>"}});
  REQUIRE(import_connection(rig.t, rig.key, "c1", "evil", "at", "rt") == 201);
  rig.token.control("POST", "/control/script",
                    {{"steps", {{{"status", 400}, {"json", {{"error", "invalid_grant"},
                                                          {"error_description", "<b>revoked</b>"}}}}}}});
  REQUIRE(rig.t.call("GET", "/v1/tokens/c1", rig.key).status == 409);
  auto l = rig.create_link("c1");
  auto page = rig.open(l["url"]);
  REQUIRE(page.status == 200);
  CHECK(page.header("content-type") == "text/html; charset=utf-8");
  CHECK(page.body.find("<script>") == std::string::npos);
  CHECK(page.body.find("&lt;script&gt;alert(1)&lt;/script&gt;") != std::string::npos);
  CHECK(page.body.find("<b>") == std::string::npos);
  CHECK(page.body.find("revoked") != std::string::npos);  // the grant_revoked explanation
  CHECK(page.body.find("acme") != std::string::npos);      // the tenant
  CHECK(page.body.find("(evil)") != std::string::npos);    // the provider id
  CHECK(page.body.find("<form method=\"post\">") != std::string::npos);
  CHECK(page.body.find(l["url"].get<std::string>().substr(l["url"].get<std::string>().rfind('/') + 1)) ==
        std::string::npos);  // the link token is not repeated in the body
  const auto origin = "http://" + rig.token.address();
  CHECK(page.header("content-security-policy") ==
        "default-src 'none'; style-src 'unsafe-inline'; form-action 'self' " + origin +
            "; base-uri 'none'; frame-ancestors 'none'");
  CHECK(page.header("cache-control") == "no-store");
  CHECK(page.header("referrer-policy") == "no-referrer");
  CHECK(page.header("x-frame-options") == "DENY");
  for (const auto& [reason, words] : std::vector<std::pair<std::string, std::string>>{
           {"refresh_token_expired", "without use"},
           {"lost_rotation", "answer never arrived"},
           {"imported_without_refresh_token", "without a long-lived credential"}}) {
    rig.db.query_text("UPDATE connections SET reauth_reason = '" + reason + "' RETURNING id");
    auto lr = rig.create_link("c1");
    auto p = rig.open(lr["url"]);
    INFO(reason);
    CHECK(p.body.find(words) != std::string::npos);
    CHECK(rig.links("c1")[0]["reason"] == reason);
  }
}

TEST_CASE("callback failures: nothing is stored and the link says what happened", "[reauth]") {
  // Debug level, so the log scan below covers every log statement.
  fake_rig rig(std::map<std::string, std::string>{{"TOKEND_LOG_LEVEL", "debug"}});
  rig.dead_connection("c1");
  auto l = rig.create_link("c1");
  const auto before = rig.connection("c1");
  auto unchanged = [&] {
    auto v = rig.connection("c1");
    CHECK(v["status"] == "needs_reauth");
    CHECK(v["token_version"] == before["token_version"]);
    CHECK(v["access_token_fingerprint"] == before["access_token_fingerprint"]);
    CHECK(v["refresh_token_fingerprint"] == before["refresh_token_fingerprint"]);
    auto rt = stored_refresh_token(rig.db.url(), "acme", "c1");
    REQUIRE(rt);
    CHECK(*rt == "rt-c1");
  };

  const auto authorize = rig.press(l["url"]);
  const auto events_before = rig.events("c1").size();
  CHECK(authorize.rfind(rig.token.url("/authorize?"), 0) == 0);
  const auto state = query_value(authorize, "state");
  REQUIRE(state.size() == 43);
  CHECK(query_value(authorize, "response_type") == "code");
  CHECK(query_value(authorize, "client_id") == "c");
  CHECK(query_value(authorize, "code_challenge_method") == "S256");
  CHECK(query_value(authorize, "scope") == "data.records%3Aread");
  std::string host_port = rig.t.address();
  host_port.replace(host_port.find(':'), 1, "%3A");
  CHECK(query_value(authorize, "redirect_uri") ==
        "http%3A%2F%2F" + host_port + "%2Foauth%2Fcallback");
  CHECK(!rig.links("c1")[0]["started_at"].is_null());

  SECTION("tampered, unknown or missing state: 400, nothing stored, the link untouched") {
    std::string tampered = state;
    tampered[5] = tampered[5] == 'A' ? 'B' : 'A';
    for (const auto& q : std::vector<std::string>{"code=x&state=" + tampered,
                                                  "code=x&state=" + std::string(43, 'Q'), "code=x",
                                                  "code=x&state=%ZZ"}) {
      auto r = rig.callback(q);
      INFO(q);
      CHECK(r.status == 400);
      CHECK(r.body.find("not valid") != std::string::npos);
    }
    CHECK(rig.token_requests() == 0);
    CHECK(rig.links("c1")[0]["status"] == "opened");
    CHECK(rig.events("c1").size() == events_before);  // nothing recorded for garbage
    unchanged();
    // The real state still works afterwards.
    auto ok = rig.callback("code=good&state=" + state);
    CHECK(ok.status == 200);
    CHECK(rig.connection("c1")["status"] == "active");
  }

  SECTION("access_denied: declined, connection unchanged, the link still usable") {
    auto r = rig.callback("error=access_denied&state=" + state);
    CHECK(r.status == 200);
    CHECK(r.body.find("declined") != std::string::npos);
    CHECK(rig.links("c1")[0]["status"] == "declined");
    CHECK(rig.events("c1")[0]["outcome"] == "reauth_declined");
    CHECK(rig.events("c1")[0]["trigger"] == "reauth");
    CHECK(rig.token_requests() == 0);
    unchanged();
    CHECK(rig.connection("c1")["reauth"]["link_id"] == l["id"]);  // declined is still open
    // The state was single use.
    auto again = rig.callback("code=x&state=" + state);
    CHECK(again.body.find("declined") != std::string::npos);
    CHECK(rig.token_requests() == 0);
    // A new press on the same link completes.
    auto s2 = query_value(rig.press(l["url"]), "state");
    CHECK(rig.callback("code=x&state=" + s2).status == 200);
    CHECK(rig.links("c1")[0]["status"] == "completed");
  }

  SECTION("the provider rejects the code: 502 page, failed, nothing stored") {
    rig.token.control("POST", "/control/script",
                      {{"steps", {{{"status", 400}, {"json", {{"error", "invalid_grant"}}}}}}});
    auto r = rig.callback("code=the-code&state=" + state);
    CHECK(r.status == 502);
    CHECK(r.body.find("did not accept") != std::string::npos);
    auto reqs = rig.token.control("GET", "/control/requests")["items"];
    REQUIRE(reqs.size() == 1);
    const std::string body = reqs[0]["body"];
    CHECK(body.find("grant_type=authorization_code") != std::string::npos);
    CHECK(body.find("code=the-code") != std::string::npos);
    // PKCE: the verifier sent hashes to the challenge the browser carried.
    const auto verifier = query_value("?" + body, "code_verifier");
    REQUIRE(verifier.size() == 43);
    CHECK(tokend::crypto::base64url(tokend::crypto::sha256(verifier)) ==
          query_value(authorize, "code_challenge"));
    CHECK(rig.links("c1")[0]["status"] == "failed");
    auto ev = rig.events("c1")[0];
    CHECK(ev["outcome"] == "reauth_failed");
    CHECK(ev["http_status"] == 400);
    unchanged();
    // Reloading shows the same final page, without another exchange.
    auto reload = rig.callback("code=the-code&state=" + state);
    CHECK(reload.status == 502);
    CHECK(rig.token_requests() == 1);
  }

  SECTION("the canary answers 401: 403 page, failed, nothing stored") {
    rig.canary.control("POST", "/control/script", {{"steps", {{{"status", 401}}}}});
    auto r = rig.callback("code=x&state=" + state);
    CHECK(r.status == 403);
    CHECK(r.body.find("lacks access") != std::string::npos);
    auto seen = rig.canary.control("GET", "/control/requests")["items"];
    REQUIRE(seen.size() == 1);
    CHECK(seen[0]["headers"]["authorization"] == "Bearer fake-at-1");
    CHECK(rig.links("c1")[0]["status"] == "failed");
    CHECK(rig.events("c1")[0]["outcome"] == "reauth_failed");
    unchanged();
    CHECK(r.body.find("fake-at-1") == std::string::npos);
    // The link is usable again: a new press completes (the canary now answers 200).
    auto s2 = query_value(rig.press(l["url"]), "state");
    CHECK(rig.callback("code=x&state=" + s2).status == 200);
    CHECK(rig.connection("c1")["status"] == "active");
    CHECK(rig.links("c1")[0]["status"] == "completed");
  }

  SECTION("the canary fails 3 times with 5xx: stored anyway, the event says so") {
    rig.canary.control("POST", "/control/script", {{"steps", {{{"status", 503}, {"repeat", 3}}}}});
    auto r = rig.callback("code=x&state=" + state);
    CHECK(r.status == 200);
    CHECK(r.body.find("Reconnected") != std::string::npos);
    CHECK(rig.canary.control("GET", "/control/requests")["count"] == 3);
    auto v = rig.connection("c1");
    CHECK(v["status"] == "active");
    CHECK(v["token_version"] == before["token_version"].get<long long>() + 1);
    CHECK(v["reauth"].is_null());
    CHECK(v["last_error"].is_null());
    auto ev = rig.events("c1")[0];
    CHECK(ev["outcome"] == "reauthorized");
    CHECK(ev["description"].get<std::string>().find("canary could not be checked") !=
          std::string::npos);
    auto tok = rig.t.call("GET", "/v1/tokens/c1", rig.key);
    REQUIRE(tok.status == 200);
    CHECK(tok.json()["access_token"] == "fake-at-1");
    CHECK(*stored_refresh_token(rig.db.url(), "acme", "c1") == "fake-rt-1");
  }

  SECTION("success, then replay and reuse change nothing") {
    auto r = rig.callback("code=x&state=" + state);
    REQUIRE(r.status == 200);
    CHECK(r.header("cache-control") == "no-store");
    auto v = rig.connection("c1");
    CHECK(v["status"] == "active");
    CHECK(v["token_version"] == 2);
    auto ev = rig.events("c1")[0];
    CHECK(ev["outcome"] == "reauthorized");
    CHECK(ev["trigger"] == "reauth");
    CHECK(ev["token_version_before"] == 1);
    CHECK(ev["token_version_after"] == 2);
    auto items = rig.links("c1");
    CHECK(items[0]["status"] == "completed");
    CHECK(!items[0]["completed_at"].is_null());
    CHECK(rig.db.query_text("SELECT token_origin FROM connections WHERE id = 'c1'") ==
          "http://" + rig.token.address());
    const auto exchanges = rig.token_requests();
    for (const auto& q : std::vector<std::string>{"code=x&state=" + state,
                                                  "code=other&state=" + state}) {
      auto replay = rig.callback(q);
      CHECK(replay.status == 200);
      CHECK(replay.body.find("Reconnected") != std::string::npos);
    }
    CHECK(rig.token_requests() == exchanges);
    CHECK(rig.connection("c1")["token_version"] == 2);
    auto used = rig.open(l["url"]);
    CHECK(used.status == 410);
    CHECK(used.body.find("already used") != std::string::npos);
    CHECK(http_call(rig.t.address(), "POST", path_of(l["url"])).status == 410);
    // The new token is refreshed normally (the origin is bound).
    auto f = rig.t.call("POST", "/v1/tokens/c1/refresh", rig.key, std::string("{}"));
    CHECK(f.status == 200);
    CHECK(f.json()["token_version"] == 3);
  }

  SECTION("a state of a superseded link, or one past 15 minutes, stores nothing") {
    rig.create_link("c1");
    const auto n_events = rig.events("c1").size();
    auto r = rig.callback("code=x&state=" + state);
    CHECK(r.status == 410);
    CHECK(r.body.find("newer link") != std::string::npos);
    CHECK(rig.token_requests() == 0);
    CHECK(rig.events("c1").size() == n_events);
    CHECK(rig.links("c1")[1]["status"] == "superseded");
    CHECK(rig.links("c1")[0]["status"] == "open");
    unchanged();

    auto l3 = rig.create_link("c1");
    auto s3 = query_value(rig.press(l3["url"]), "state");
    rig.db.query_text("UPDATE reauth_states SET expires_at = now() - interval '1 second' "
                      "WHERE used_at IS NULL RETURNING 1");
    auto late = rig.callback("code=x&state=" + s3);
    CHECK(late.status == 400);
    CHECK(late.body.find("too long") != std::string::npos);
    CHECK(rig.token_requests() == 0);
    unchanged();
  }

  SECTION("an earlier state of a link another press completed: 410, no exchange") {
    auto later = query_value(rig.press(l["url"]), "state");
    REQUIRE(later != state);
    REQUIRE(rig.callback("code=x&state=" + later).status == 200);
    const auto exchanges = rig.token_requests();
    const auto n_events = rig.events("c1").size();
    auto r = rig.callback("code=x&state=" + state);
    CHECK(r.status == 410);
    CHECK(r.body.find("already used") != std::string::npos);
    CHECK(rig.token_requests() == exchanges);
    CHECK(rig.events("c1").size() == n_events);
    CHECK(rig.connection("c1")["token_version"] == 2);
  }

  SECTION("a link that expired after Reconnect: the callback is 410, nothing stored") {
    rig.db.query_text("UPDATE reauth_links SET expires_at = now() - interval '1 second' "
                      "RETURNING id");
    auto r = rig.callback("code=x&state=" + state);
    CHECK(r.status == 410);
    CHECK(r.body.find("expired") != std::string::npos);
    CHECK(rig.token_requests() == 0);
    CHECK(rig.links("c1")[0]["status"] == "expired");
    CHECK(rig.events("c1").size() == events_before);
    unchanged();
  }

  SECTION("a connection moved to another provider meanwhile: 409, nothing stored") {
    put_provider(rig.t, rig.key, "other", rig.token.url("/token"),
                 {{"authorize_url", rig.token.url("/authorize")}});
    auto moved = rig.t.call("PUT", "/v1/connections/c1", rig.key,
                            json{{"provider", "other"}, {"access_token", "moved-at"},
                                 {"refresh_token", "moved-rt"}, {"expires_at", "2020-01-01T00:00:00Z"}});
    REQUIRE(moved.status == 200);
    auto r = rig.callback("code=x&state=" + state);
    CHECK(r.status == 409);
    CHECK(r.body.find("another provider") != std::string::npos);
    auto v = rig.connection("c1");
    CHECK(v["provider"] == "other");
    CHECK(v["token_version"] == 2);
    CHECK(*stored_refresh_token(rig.db.url(), "acme", "c1") == "moved-rt");
    CHECK(rig.events("c1")[0]["outcome"] == "reauth_failed");
  }

  SECTION("another connection's id in the parameters has no effect on it") {
    rig.dead_connection("c2");
    auto r = rig.callback("code=x&state=" + state + "&connection=c2&tenant=globex");
    CHECK(r.status == 200);
    CHECK(rig.connection("c1")["status"] == "active");
    auto c2 = rig.connection("c2");
    CHECK(c2["status"] == "needs_reauth");
    CHECK(c2["token_version"] == 1);
  }

  SECTION("no link token, code, state or verifier in tokend's logs") {
    rig.token.control("POST", "/control/script", {{"steps", {{{"status", 400}, {"json", {{"error", "invalid_grant"}}}}}}});
    rig.callback("code=secret-code-123&state=" + state);
    auto verifier = query_value("?" + rig.token.control("GET", "/control/requests")["items"][0]["body"].get<std::string>(), "code_verifier");
    REQUIRE(verifier.size() == 43);
    const auto out = rig.t.output();
    const auto link_token = l["url"].get<std::string>().substr(l["url"].get<std::string>().rfind('/') + 1);
    CHECK(out.find("reauth started") != std::string::npos);  // the logs were read
    CHECK(out.find(link_token) == std::string::npos);
    CHECK(out.find(state) == std::string::npos);
    CHECK(out.find("secret-code-123") == std::string::npos);
    CHECK(out.find(verifier) == std::string::npos);
  }
}

TEST_CASE("a slow code exchange outlives the browser's request: still finishing, then done",
          "[reauth]") {
  fake_rig rig(std::map<std::string, std::string>{{"TOKEND_REQUEST_TIMEOUT", "2"}});
  rig.dead_connection("c1");
  auto l = rig.create_link("c1");
  const auto state = query_value(rig.press(l["url"]), "state");
  rig.token.control("POST", "/control/script", {{"steps", {{{"delay_ms", 4000}}}}});

  SECTION("the callback answers within its deadline with a page that reloads itself") {
    const auto t0 = std::chrono::steady_clock::now();
    auto r = rig.callback("code=x&state=" + state);
    CHECK(std::chrono::steady_clock::now() - t0 < 2500ms);
    CHECK(r.status == 202);
    CHECK(r.body.find("Still finishing") != std::string::npos);
    CHECK(r.body.find("http-equiv=\"refresh\" content=\"2\"") != std::string::npos);
    CHECK(rig.connection("c1")["status"] == "needs_reauth");  // not yet
    auto reload = rig.callback("code=x&state=" + state);
    CHECK(reload.status == 202);
    http_reply done;
    CHECK(eventually([&] { done = rig.callback("code=x&state=" + state); return done.status == 200; },
                     10s));
    CHECK(done.body.find("Reconnected") != std::string::npos);
  }
  SECTION("a browser that gives up at once does not lose the grant") {
    auto r = http_call(rig.t.address(), "GET", "/oauth/callback?code=x&state=" + state, "", {}, 300ms);
    CHECK(r.status == 0);  // gave up before any answer
    CHECK(eventually([&] { return rig.connection("c1")["status"] == "active"; }, 10s));
  }
  CHECK(rig.token_requests() == 1);
  auto v = rig.connection("c1");
  CHECK(v["token_version"] == 2);
  CHECK(rig.events("c1")[0]["outcome"] == "reauthorized");
  auto tok = rig.t.call("GET", "/v1/tokens/c1", rig.key);
  REQUIRE(tok.status == 200);
  CHECK(tok.json()["access_token"] == "fake-at-1");
}

TEST_CASE("a canary that never answers: three tries within the time left, then stored",
          "[reauth]") {
  fake_rig rig(std::map<std::string, std::string>{{"TOKEND_REQUEST_TIMEOUT", "2"}});
  rig.dead_connection("c1");
  auto l = rig.create_link("c1");
  const auto state = query_value(rig.press(l["url"]), "state");
  rig.canary.control("POST", "/control/script",
                     {{"steps", {{{"never_answer", true}, {"repeat", 3}}}}});
  const auto t0 = std::chrono::steady_clock::now();
  auto r = rig.callback("code=x&state=" + state);
  CHECK(r.status == 202);  // the canary outlasts the 2 s request
  http_reply done;
  CHECK(eventually([&] { done = rig.callback("code=x&state=" + state); return done.status == 200; },
                   20s));
  const auto took = std::chrono::steady_clock::now() - t0;
  CHECK(took > 9s);    // three tries sharing the canary's 10 s
  CHECK(took < 15s);
  CHECK(rig.canary.control("GET", "/control/requests")["count"] == 3);
  auto v = rig.connection("c1");
  CHECK(v["status"] == "active");
  CHECK(v["token_version"] == 2);
  auto ev = rig.events("c1")[0];
  CHECK(ev["outcome"] == "reauthorized");
  CHECK(ev["description"].get<std::string>().find("canary could not be checked (no answer") !=
        std::string::npos);
}

TEST_CASE("a connect link of tenant A does not touch tenant B's connection of the same id",
          "[reauth]") {
  fake_rig rig;
  auto b_key = rig.t.tenant_key("globex");
  put_provider(rig.t, b_key, "fk", rig.token.url("/token"),
               {{"authorize_url", rig.token.url("/authorize")}});
  REQUIRE(import_connection(rig.t, b_key, "shared", "fk", "b-at", "b-rt", 3600) == 201);
  auto r = rig.t.call("POST", "/v1/connect-links", rig.key,
                      json{{"connection", "shared"}, {"provider", "fk"}});
  REQUIRE(r.status == 201);
  auto listed = rig.links("shared");
  REQUIRE(listed.size() == 1);
  CHECK(listed[0]["reason"] == "new_connection");
  CHECK(rig.t.call("GET", "/v1/connections/shared", rig.key).status == 404);
  auto s = query_value(rig.press(r.json()["url"]), "state");
  auto done = rig.callback("code=x&state=" + s + "&tenant=globex");
  CHECK(done.status == 200);
  auto a = rig.connection("shared");
  CHECK(a["token_version"] == 1);
  CHECK(a["status"] == "active");
  auto ev = rig.events("shared");
  REQUIRE(ev.size() == 1);
  CHECK(ev[0]["outcome"] == "reauthorized");
  CHECK(ev[0]["trigger"] == "reauth");
  auto b = rig.t.call("GET", "/v1/tokens/shared", b_key);
  REQUIRE(b.status == 200);
  CHECK(b.json()["access_token"] == "b-at");
  CHECK(b.json()["token_version"] == 1);
  auto b_links = rig.t.call("GET", "/v1/connections/shared/reauth-links", b_key);
  REQUIRE(b_links.status == 200);  // B's own connection: none of A's links are listed
  CHECK(b_links.json()["items"] == json::array());

  SECTION("a connection created meanwhile makes the callback fail with a page saying so") {
    auto r2 = rig.t.call("POST", "/v1/connect-links", rig.key,
                         json{{"connection", "late"}, {"provider", "fk"}});
    REQUIRE(r2.status == 201);
    auto s2 = query_value(rig.press(r2.json()["url"]), "state");
    REQUIRE(import_connection(rig.t, rig.key, "late", "fk", "own-at", "own-rt", 3600) == 201);
    CHECK(rig.connection("late")["reauth"].is_null());  // a connect link is not its open link
    auto fail = rig.callback("code=x&state=" + s2);
    CHECK(fail.status == 409);
    CHECK(fail.body.find("already exists") != std::string::npos);
    CHECK(rig.t.call("GET", "/v1/tokens/late", rig.key).json()["access_token"] == "own-at");
    CHECK(rig.links("late")[0]["status"] == "failed");
  }
}

// ---------------------------------------------------------------------------------------------
// Real browser, real OAuth server
// ---------------------------------------------------------------------------------------------
namespace {

std::string artifacts_dir() {
  const char* d = std::getenv("TOKEND_TEST_ARTIFACTS");
  std::string dir = d && *d ? d : (std::filesystem::current_path() / "test-artifacts").string();
  std::filesystem::create_directories(dir);
  return dir;
}

json browse(const std::vector<std::string>& args) {
  std::vector<std::string> argv = {"/usr/bin/env", "node",
                                   std::string(TOKEND_SOURCE_DIR) + "/tests/tools/browser-reauth.mjs"};
  argv.insert(argv.end(), args.begin(), args.end());
  auto r = run_command(argv, {}, 90s);
  INFO(r.output);
  REQUIRE(r.exit_code == 0);
  std::string last;  // the driver's JSON line (stderr shares the output)
  std::istringstream lines(r.output);
  for (std::string line; std::getline(lines, line);) {
    if (!line.empty() && line[0] == '{') last = line;
  }
  REQUIRE(!last.empty());
  return json::parse(last);
}

struct idp_rig {
  scratch_database db;
  tokend_process t{db.url(), {{"TOKEND_ALLOW_INSECURE_PROVIDER_URLS", "1"}}};
  node_peer idp;
  std::string key = t.tenant_key("acme");

  explicit idp_rig(std::vector<std::string> extra = {})
      : idp("oidc-server.mjs", with_redirect(t, std::move(extra))) {
    REQUIRE(t.call("PUT", "/v1/providers/idp", key,
                   json{{"type", "oauth2"},
                        {"display_name", "Example Cloud"},
                        {"client_id", "tokend-test"},
                        {"client_secret", "tokend-test-secret"},
                        {"token_url", idp.url("/token")},
                        {"authorize_url", idp.url("/auth")},
                        {"canary_url", idp.url("/me")},
                        {"scopes", {"openid", "offline_access", "data.records:read"}},
                        {"token_endpoint_auth_method", "client_secret_basic"},
                        {"pkce", true}})
                .status == 201);
  }
  static std::vector<std::string> with_redirect(const tokend_process& t,
                                                std::vector<std::string> extra) {
    extra.push_back("--redirect-uri");
    extra.push_back("http://" + t.address() + "/oauth/callback");
    return extra;
  }
};

}  // namespace

TEST_CASE("browser: a revoked grant is repaired through the link, login and consent at the "
          "real OAuth server",
          "[reauth][browser]") {
  idp_rig rig;
  auto grant = rig.idp.control("POST", "/test/grants", json{{"count", 1}})["items"][0];
  REQUIRE(rig.t.call("PUT", "/v1/connections/c1", rig.key,
                     json{{"provider", "idp"},
                          {"access_token", grant["access_token"]},
                          {"refresh_token", grant["refresh_token"]},
                          {"expires_at", "2020-01-01T00:00:00Z"}})
              .status == 201);
  rig.idp.control("POST", "/test/revoke", json{{"grant_id", grant["grant_id"]}});
  auto dead = rig.t.call("GET", "/v1/tokens/c1", rig.key);
  REQUIRE(dead.status == 409);
  REQUIRE(dead.json()["reauth"]["reason"] == "grant_revoked");
  REQUIRE(rig.idp.control("GET", "/test/stats")["invalid_grant"] == 1);

  auto link = rig.t.call("POST", "/v1/connections/c1/reauth-links", rig.key, std::string("{}")).json();
  const std::string url = link["url"];
  const auto shot = artifacts_dir() + "/connect-page.png";
  std::filesystem::remove(shot);
  auto out = browse({"--url", url, "--screenshot", shot});
  INFO(out.dump(2));
  CHECK(out["connect"]["status"] == 200);
  CHECK(out["connect"]["title"] == "Reconnect your Example Cloud account");
  const std::string text = out["connect"]["text"];
  CHECK(text.find("was revoked, or the integration was disconnected") != std::string::npos);
  CHECK(text.find("Example Cloud (idp)") != std::string::npos);
  CHECK(text.find("acme") != std::string::npos);
  CHECK(std::filesystem::file_size(shot) > 1000);
  CHECK(out["final"]["title"] == "Reconnected");
  CHECK(out["csp_violations"].empty());
  bool saw_login = false;
  for (const auto& n : out["navigations"]) saw_login |= n.get<std::string>().find("/interaction/") != std::string::npos;
  CHECK(saw_login);
  CHECK(out["provider_forms_submitted"] == 2);  // login, then consent

  auto tok = rig.t.call("GET", "/v1/tokens/c1", rig.key);
  REQUIRE(tok.status == 200);
  CHECK(tok.json()["token_version"] == 2);
  CHECK(tok.json()["access_token"] != grant["access_token"]);
  auto view = rig.t.call("GET", "/v1/connections/c1", rig.key).json();
  CHECK(view["status"] == "active");
  CHECK(view["reauth"].is_null());
  auto ev = rig.t.call("GET", "/v1/connections/c1/events", rig.key).json()["items"];
  CHECK(ev[0]["outcome"] == "reauthorized");
  CHECK(ev[0]["description"].get<std::string>().find("canary") == std::string::npos);  // checked
  CHECK(ev[1]["outcome"] == "reauth_link_opened");
  CHECK(ev[2]["outcome"] == "reauth_link_created");
  auto items = rig.t.call("GET", "/v1/connections/c1/reauth-links", rig.key).json()["items"];
  CHECK(items[0]["status"] == "completed");
  CHECK(!items[0]["started_at"].is_null());

  // The new grant refreshes at the provider.
  const auto ok_before = rig.idp.control("GET", "/test/stats")["refresh_success"].get<int>();
  auto f = rig.t.call("POST", "/v1/tokens/c1/refresh", rig.key, std::string("{}"));
  REQUIRE(f.status == 200);
  CHECK(f.json()["token_version"] == 3);
  CHECK(rig.idp.control("GET", "/test/stats")["refresh_success"] == ok_before + 1);

  // Reloading the callback shows the final state; no second exchange.
  const auto requests = rig.idp.control("GET", "/test/stats")["token_requests"];
  const std::string cb = out["callback_url"];
  auto reload = http_call(rig.t.address(), "GET", path_of(cb));
  CHECK(reload.status == 200);
  CHECK(reload.body.find("Reconnected") != std::string::npos);
  CHECK(rig.idp.control("GET", "/test/stats")["token_requests"] == requests);
  CHECK(rig.t.call("GET", "/v1/tokens/c1", rig.key).json()["token_version"] == 3);

  // Secrets stay out of the logs: the link token, state and code.
  const auto logs = rig.t.output();
  CHECK(logs.find("reauthorized") != std::string::npos);
  CHECK(logs.find(url.substr(url.rfind('/') + 1)) == std::string::npos);
  CHECK(logs.find(query_value(cb, "state")) == std::string::npos);
  CHECK(logs.find(query_value(cb, "code")) == std::string::npos);
}

TEST_CASE("browser: a connect link with an auto-consenting provider creates the connection and "
          "returns to an allowed return_url",
          "[reauth][browser]") {
  idp_rig rig({"--auto-consent"});
  node_peer landing{"fake-token-endpoint.mjs"};
  const auto origin = "http://" + landing.address();
  REQUIRE(rig.t.call("PUT", "/v1/settings", rig.key, json{{"return_url_origins", {origin}}}).status ==
          200);
  check_invalid_request(rig.t.call("POST", "/v1/connect-links", rig.key,
                                   json{{"connection", "n1"}, {"provider", "idp"},
                                        {"return_url", "http://127.0.0.1:1/elsewhere"}}),
                        "/return_url");
  auto r = rig.t.call("POST", "/v1/connect-links", rig.key,
                      json{{"connection", "n1"}, {"provider", "idp"},
                           {"return_url", origin + "/landing?from=tokend"}});
  REQUIRE(r.status == 201);
  auto out = browse({"--url", r.json()["url"], "--final-prefix", origin + "/landing"});
  INFO(out.dump(2));
  CHECK(out["connect"]["title"] == "Connect your Example Cloud account");
  CHECK(out["final"]["url"] == origin + "/landing?from=tokend&connection=n1&status=reconnected");
  CHECK(out["csp_violations"].empty());
  // Auto-consent: straight through in one redirect chain, no provider page was filled in.
  CHECK(out["provider_forms_submitted"] == 0);
  bool via_interaction = false;
  for (const auto& n : out["navigations"]) {
    via_interaction |= n.get<std::string>().find("/interaction/") != std::string::npos;
  }
  CHECK(via_interaction);

  auto tok = rig.t.call("GET", "/v1/tokens/n1", rig.key);
  REQUIRE(tok.status == 200);
  CHECK(tok.json()["token_version"] == 1);
  auto ev = rig.t.call("GET", "/v1/connections/n1/events", rig.key).json()["items"];
  REQUIRE(ev.size() == 1);
  CHECK(ev[0]["outcome"] == "reauthorized");
  CHECK(ev[0]["trigger"] == "reauth");
  CHECK(rig.t.call("GET", "/v1/connections/n1/reauth-links", rig.key).json()["items"][0]["status"] ==
        "completed");
  // The new connection's refresh token works at the provider.
  auto f = rig.t.call("POST", "/v1/tokens/n1/refresh", rig.key, std::string("{}"));
  REQUIRE(f.status == 200);
  CHECK(f.json()["token_version"] == 2);
  CHECK(rig.t.call("POST", "/v1/connect-links", rig.key,
                   json{{"connection", "n1"}, {"provider", "idp"}})
            .status == 409);
}

TEST_CASE("webhooks: a dead grant sends reauth_required, the reconnect through its link sends "
          "reconnected naming the link",
          "[reauth]") {
  node_peer receiver{"fake-token-endpoint.mjs"};
  fake_rig rig(std::map<std::string, std::string>{{"TOKEND_WEBHOOK_POLL_INTERVAL", "100ms"}});
  auto put = rig.t.call("PUT", "/v1/webhook", rig.key, json{{"url", receiver.url("/hook")}});
  REQUIRE(put.status == 200);
  auto received = [&] { return receiver.control("GET", "/control/requests")["items"]; };
  rig.dead_connection("c1");
  REQUIRE(eventually([&] { return received().size() == 1; }, 10s));
  auto first = json::parse(received()[0]["body"].get<std::string>());
  CHECK(first["type"] == "connection.reauth_required");
  CHECK(first["data"]["reason"] == "grant_revoked");
  CHECK(first["data"]["link_id"].is_null());

  auto l = rig.create_link("c1");
  const auto state = query_value(rig.press(l["url"]), "state");
  auto done = rig.callback("code=good&state=" + state);
  REQUIRE(done.status == 200);
  REQUIRE(rig.connection("c1")["status"] == "active");
  REQUIRE(eventually([&] { return received().size() == 2; }, 10s));
  auto second = json::parse(received()[1]["body"].get<std::string>());
  CHECK(second["type"] == "connection.reconnected");
  CHECK(second["connection"] == "c1");
  CHECK(second["data"]["reason"] == "reauthorized");
  CHECK(second["data"]["link_id"] == l["id"]);
  CHECK(second["data"]["status"] == "active");
  CHECK(second["data"]["token_version"] == 2);
  std::this_thread::sleep_for(500ms);
  CHECK(received().size() == 2);
}

TEST_CASE("metrics count reauth links created, opened and completed", "[reauth]") {
  fake_rig rig(std::map<std::string, std::string>{{"TOKEND_METRICS_LISTEN", "127.0.0.1:0"}});
  auto links_metric = [&](const std::string& event) {
    const auto m = http_call(rig.t.metrics_address(), "GET", "/metrics").body;
    return metric_value(m, "tokend_reauth_links_total{event=\"" + event + "\"}");
  };
  // Exported from the start: a missing series would fail here, not read as 0.
  CHECK(links_metric("created") == 0);
  CHECK(links_metric("opened") == 0);
  CHECK(links_metric("completed") == 0);
  rig.dead_connection("c1");
  auto l = rig.create_link("c1");
  CHECK(links_metric("created") == 1);
  REQUIRE(rig.open(l["url"]).status == 200);
  REQUIRE(rig.open(l["url"]).status == 200);  // a second view is not a second opening
  CHECK(links_metric("opened") == 1);
  const auto state = query_value(rig.press(l["url"]), "state");
  REQUIRE(rig.callback("code=good&state=" + state).status == 200);
  REQUIRE(rig.connection("c1")["status"] == "active");
  CHECK(links_metric("completed") == 1);
  CHECK(links_metric("created") == 1);
}
