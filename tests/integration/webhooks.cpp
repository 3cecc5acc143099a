// Webhooks: the API, the outbox written with the state change, signed at-least-once delivery
// with retries, the dead-letter list, secret rotation, one refresh_failed per failure episode,
// crashes, two instances and the per-tenant cap. The receiver is the fault-injecting fake
// (tests/tools/fake-token-endpoint.mjs, path /hook), which can answer 200, 500, hang or be down.
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <signal.h>

#include <catch2/catch.hpp>
#include <pqxx/pqxx>
#include <regex>
#include <set>

#include "crypto/crypto.hpp"
#include "store/repository.hpp"
#include "support/fixtures.hpp"

using namespace tokend::test;
using nlohmann::json;
using namespace std::chrono_literals;

namespace {

// The test's own HMAC-SHA256 (OpenSSL directly, not tokend's code), hex.
std::string hmac_hex(const std::string& key, const std::string& msg) {
  unsigned char out[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  HMAC(EVP_sha256(), key.data(), static_cast<int>(key.size()),
       reinterpret_cast<const unsigned char*>(msg.data()), msg.size(), out, &len);
  static const char* digits = "0123456789abcdef";
  std::string s;
  for (unsigned i = 0; i < len; ++i) {
    s += digits[out[i] >> 4];
    s += digits[out[i] & 15];
  }
  return s;
}

struct signature {
  long long t = 0;
  std::vector<std::string> v1;
};
signature parse_signature(const std::string& header) {
  signature s;
  std::size_t start = 0;
  while (start < header.size()) {
    auto end = header.find(',', start);
    if (end == std::string::npos) end = header.size();
    const auto item = header.substr(start, end - start);
    if (item.rfind("t=", 0) == 0) s.t = std::stoll(item.substr(2));
    if (item.rfind("v1=", 0) == 0) s.v1.push_back(item.substr(3));
    start = end + 1;
  }
  return s;
}
// Whether one of the header's v1 values is HMAC(secret, "<t>.<body>"), with t within 5 minutes.
bool verifies(const std::string& header, const std::string& body, const std::string& secret) {
  const auto s = parse_signature(header);
  const auto now = std::chrono::duration_cast<std::chrono::seconds>(
                       std::chrono::system_clock::now().time_since_epoch())
                       .count();
  if (s.t < now - 300 || s.t > now + 300) return false;
  const auto expected = hmac_hex(secret, std::to_string(s.t) + "." + body);
  for (const auto& v : s.v1) {
    if (v == expected) return true;
  }
  return false;
}

std::map<std::string, std::string> hook_env(std::map<std::string, std::string> env = {}) {
  env.emplace("TOKEND_ALLOW_INSECURE_PROVIDER_URLS", "1");
  env.emplace("TOKEND_WEBHOOK_POLL_INTERVAL", "100ms");
  env.emplace("TOKEND_WEBHOOK_RETRY_BASE", "200ms");
  env.emplace("TOKEND_WEBHOOK_TIMEOUT", "2s");
  return env;
}

std::string port_of(const std::string& address) { return address.substr(address.rfind(':') + 1); }

using env_map = std::map<std::string, std::string>;

struct hook_rig {
  scratch_database db;
  node_peer token{"fake-token-endpoint.mjs"};
  std::unique_ptr<node_peer> receiver = std::make_unique<node_peer>("fake-token-endpoint.mjs");
  std::unique_ptr<tokend_process> t;
  std::string key, secret;

  explicit hook_rig(std::map<std::string, std::string> env = {},
                    const json& provider_extra = json::object()) {
    t = std::make_unique<tokend_process>(db.url(), hook_env(std::move(env)));
    key = t->tenant_key("acme");
    put_provider(*t, key, "fk", token.url("/token"), provider_extra);
    secret = subscribe();
  }
  std::string subscribe(const json& events = nullptr) {
    json body = {{"url", receiver->url("/hook")}};
    if (!events.is_null()) body["events"] = events;
    auto r = t->call("PUT", "/v1/webhook", key, body);
    INFO(r.body);
    REQUIRE(r.status == 200);
    return r.json().value("secret", "");
  }
  // c<id> imported with an expired access token, then needs_reauth through invalid_grant.
  void dead(const std::string& id, const tokend_process* other = nullptr) {
    const auto& tp = other ? *other : *t;
    REQUIRE(import_connection(tp, key, id, "fk", "at-" + id, "rt-" + id) == 201);
    token.control("POST", "/control/script",
                  {{"steps", {{{"status", 400}, {"json", {{"error", "invalid_grant"}}}}}}});
    auto r = tp.call("GET", "/v1/tokens/" + id, key);
    INFO(r.body);
    REQUIRE(r.status == 409);
    token.control("POST", "/control/reset");
  }
  json received() const { return receiver->control("GET", "/control/requests")["items"]; }
  bool wait_received(std::size_t n, std::chrono::milliseconds timeout = 10s) const {
    return eventually([&] { return received().size() >= n; }, timeout);
  }
  json deliveries(const std::string& query = "") const {
    auto r = t->call("GET", "/v1/webhook/deliveries" + query, key);
    INFO(r.body);
    REQUIRE(r.status == 200);
    return r.json()["items"];
  }
  long long outbox_rows(const std::string& where = "true") const {
    return db.query_int("SELECT count(*) FROM webhook_deliveries WHERE " + where);
  }
};

json body_of(const json& request) { return json::parse(request["body"].get<std::string>()); }

}  // namespace

TEST_CASE("webhook API: create, read, replace, rotate, delete and bad input", "[webhooks]") {
  scratch_database db;
  // Without the insecure flag: the outbound address rule applies at PUT.
  tokend_process t(db.url());
  auto key = t.tenant_key("acme");
  auto other = t.tenant_key("globex");

  SECTION("URLs that break the outbound rule are refused at PUT") {
    for (const std::string url :
         {"https://10.1.2.3/hook", "https://127.0.0.1:8443/hook", "https://[::1]/hook",
          "https://169.254.169.254/latest", "https://192.168.0.10/x", "http://hooks.example.com/x",
          "ftp://hooks.example.com/x", "https://user:pw@hooks.example.com/x", "not a url"}) {
      INFO(url);
      check_invalid_request(t.call("PUT", "/v1/webhook", key, json{{"url", url}}), "/url");
    }
    CHECK(t.call("GET", "/v1/webhook", key).status == 404);
    CHECK(db.query_int("SELECT count(*) FROM webhooks") == 0);
  }

  SECTION("create shows the secret once; GET and a replacing PUT keep it hidden and unchanged") {
    auto r = t.call("PUT", "/v1/webhook", key, json{{"url", "https://hooks.example.com/tokend"}});
    INFO(r.body);
    REQUIRE(r.status == 200);
    auto created = r.json();
    const std::string secret = created["secret"];
    CHECK(std::regex_match(secret, std::regex("whsec_[0-9a-f]{64}")));
    CHECK(created["url"] == "https://hooks.example.com/tokend");
    CHECK(created["events"] ==
          json({"connection.reauth_required", "connection.reconnected", "connection.refresh_failed",
                "connection.refresh_token_expiring"}));
    // Sealed at rest: the stored ciphertext does not contain the secret.
    const auto ct = db.query_text("SELECT encode(secret_ct, 'escape') FROM webhooks");
    CHECK(ct.find(secret.substr(6)) == std::string::npos);
    const auto ct_hex = db.query_text("SELECT encode(secret_ct, 'hex') FROM webhooks");

    auto got = t.call("GET", "/v1/webhook", key);
    REQUIRE(got.status == 200);
    CHECK(!got.json().contains("secret"));
    CHECK(got.json()["url"] == "https://hooks.example.com/tokend");
    CHECK(got.body.find(secret) == std::string::npos);

    auto replaced = t.call("PUT", "/v1/webhook", key,
                           json{{"url", "https://hooks.example.com/v2"},
                                {"events", {"connection.reconnected", "connection.reconnected"}}});
    REQUIRE(replaced.status == 200);
    CHECK(!replaced.json().contains("secret"));
    CHECK(replaced.json()["events"] == json({"connection.reconnected"}));
    CHECK(db.query_text("SELECT encode(secret_ct, 'hex') FROM webhooks") == ct_hex);
    CHECK(db.query_text("SELECT url FROM webhooks") == "https://hooks.example.com/v2");

    // Another tenant sees none of it.
    CHECK(t.call("GET", "/v1/webhook", other).status == 404);

    auto rotated = t.call("POST", "/v1/webhook/rotate-secret", key);
    REQUIRE(rotated.status == 200);
    const std::string next = rotated.json()["secret"];
    CHECK(std::regex_match(next, std::regex("whsec_[0-9a-f]{64}")));
    CHECK(next != secret);
    CHECK(db.query_text("SELECT encode(secret_ct, 'hex') FROM webhooks") != ct_hex);
    auto after = t.call("GET", "/v1/webhook", key).json();
    REQUIRE(after["previous_secret_expires_at"].is_string());

    auto del = t.call("DELETE", "/v1/webhook", key);
    CHECK(del.status == 204);
    CHECK(t.call("GET", "/v1/webhook", key).status == 404);
    CHECK(t.call("DELETE", "/v1/webhook", key).status == 404);
    CHECK(t.call("POST", "/v1/webhook/rotate-secret", key).status == 404);
  }

  SECTION("bad bodies, unknown event types, scopes and unknown deliveries") {
    check_invalid_request(t.call("PUT", "/v1/webhook", key, std::string("{\"url\":")), "");
    check_invalid_request(t.call("PUT", "/v1/webhook", key, json{{"url", 5}}), "/url");
    check_invalid_request(t.call("PUT", "/v1/webhook", key, json::object()), "/url");
    check_invalid_request(
        t.call("PUT", "/v1/webhook", key,
               json{{"url", "https://hooks.example.com/x"}, {"events", {"connection.nope"}}}),
        "/events/0");
    check_invalid_request(
        t.call("PUT", "/v1/webhook", key,
               json{{"url", "https://hooks.example.com/x"}, {"events", json::array()}}),
        "/events");
    check_invalid_request(t.call("PUT", "/v1/webhook", key,
                                 json{{"url", "https://hooks.example.com/x"}, {"evnts", {}}}),
                          "/evnts");
    check_invalid_request(
        t.call("PUT", "/v1/webhook", key,
               json{{"url", "https://hooks.example.com/" + std::string(2100, 'a')}}),
        "/url");
    CHECK(db.query_int("SELECT count(*) FROM webhooks") == 0);

    auto reader = t.tenant_key("acme", {"tokens:read"});
    CHECK(
        t.call("PUT", "/v1/webhook", reader, json{{"url", "https://hooks.example.com/x"}}).status ==
        403);
    CHECK(t.call("PUT", "/v1/webhook", "", json{{"url", "https://hooks.example.com/x"}}).status ==
          401);

    check_invalid_request(t.call("GET", "/v1/webhook/deliveries?limit=0", key), "limit");
    check_invalid_request(t.call("GET", "/v1/webhook/deliveries?limit=501", key), "limit");
    check_invalid_request(t.call("GET", "/v1/webhook/deliveries?status=lost", key), "status");
    auto empty = t.call("GET", "/v1/webhook/deliveries", key);
    REQUIRE(empty.status == 200);
    CHECK(empty.json()["items"].empty());
    auto missing = t.call("POST", "/v1/webhook/deliveries/dlv_nope/retry", key);
    CHECK(missing.status == 404);
    CHECK(missing.json()["code"] == "not_found");
  }
}

TEST_CASE(
    "a revocation at the real OAuth server: one signed reauth_required; re-import sends "
    "reconnected",
    "[webhooks]") {
  scratch_database db;
  node_peer idp{"oidc-server.mjs"};
  node_peer receiver{"fake-token-endpoint.mjs"};
  tokend_process t(db.url(), hook_env());
  auto key = t.tenant_key("acme");
  REQUIRE(t.call("PUT", "/v1/providers/airtable", key,
                 json{{"type", "airtable"},
                      {"client_id", "tokend-test"},
                      {"client_secret", "tokend-test-secret"},
                      {"token_url", idp.url("/token")}})
              .status == 201);
  auto put = t.call("PUT", "/v1/webhook", key, json{{"url", receiver.url("/hook")}});
  REQUIRE(put.status == 200);
  const std::string secret = put.json()["secret"];
  auto grant = idp.control("POST", "/test/grants", json{{"count", 1}})["items"][0];
  REQUIRE(t.call("PUT", "/v1/connections/c1", key,
                 json{{"provider", "airtable"},
                      {"access_token", grant["access_token"]},
                      {"refresh_token", grant["refresh_token"]},
                      {"expires_at", "2020-01-01T00:00:00Z"}})
              .status == 201);
  idp.control("POST", "/test/revoke", json{{"grant_id", grant["grant_id"]}});
  for (int i = 0; i < 4; ++i) REQUIRE(t.call("GET", "/v1/tokens/c1", key).status == 409);

  auto received = [&] { return receiver.control("GET", "/control/requests")["items"]; };
  REQUIRE(eventually([&] { return received().size() >= 1; }, 10s));
  std::this_thread::sleep_for(1500ms);  // 15 polls: a second delivery would be here by now
  auto items = received();
  REQUIRE(items.size() == 1);
  const std::string raw = items[0]["body"];
  CHECK(items[0]["method"] == "POST");
  CHECK(items[0]["headers"]["content-type"] == "application/json");
  const std::string header = items[0]["headers"]["tokend-signature"];
  CHECK(verifies(header, raw, secret));
  CHECK(!verifies(header, raw + " ", secret));
  CHECK(!verifies(header, raw, "whsec_wrong"));
  CHECK(parse_signature(header).v1.size() == 1);
  auto payload = json::parse(raw);
  CHECK(payload["type"] == "connection.reauth_required");
  CHECK(payload["tenant"] == "acme");
  CHECK(payload["connection"] == "c1");
  CHECK(std::regex_match(payload["id"].get<std::string>(), std::regex("evt_[0-9a-f]{32}")));
  CHECK(std::regex_match(payload["created_at"].get<std::string>(),
                         std::regex(R"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ)")));
  CHECK(payload["data"]["reason"] == "grant_revoked");
  CHECK(payload["data"]["token_version"] == 1);
  CHECK(payload["data"]["status"] == "needs_reauth");
  CHECK(payload["data"]["link_id"].is_null());
  CHECK(payload["data"]["last_error"]["code"] == "invalid_grant");
  CHECK(items[0]["headers"]["tokend-event-id"] == payload["id"]);
  // No token or secret in the payload.
  CHECK(raw.find(grant["refresh_token"].get<std::string>()) == std::string::npos);
  CHECK(raw.find(grant["access_token"].get<std::string>()) == std::string::npos);
  CHECK(raw.find("tokend-test-secret") == std::string::npos);

  auto list = t.call("GET", "/v1/webhook/deliveries", key).json()["items"];
  REQUIRE(list.size() == 1);
  CHECK(list[0]["event_id"] == payload["id"]);
  CHECK(list[0]["status"] == "delivered");
  CHECK(list[0]["attempts"] == 1);
  CHECK(list[0]["last_status"] == 200);
  CHECK(list[0]["connection"] == "c1");
  CHECK(list[0]["delivered_at"].is_string());

  auto fresh = idp.control("POST", "/test/grants", json{{"count", 1}})["items"][0];
  REQUIRE(t.call("PUT", "/v1/connections/c1", key,
                 json{{"provider", "airtable"},
                      {"access_token", fresh["access_token"]},
                      {"refresh_token", fresh["refresh_token"]},
                      {"expires_in", 3600}})
              .status == 200);
  REQUIRE(eventually([&] { return received().size() >= 2; }, 10s));
  auto second = json::parse(received()[1]["body"].get<std::string>());
  CHECK(second["type"] == "connection.reconnected");
  CHECK(second["data"]["reason"] == "reimported");
  CHECK(second["data"]["status"] == "active");
  CHECK(second["data"]["token_version"] == 2);
  CHECK(second["id"] != payload["id"]);
  // A re-import of an active connection is not a reconnect.
  REQUIRE(t.call("PUT", "/v1/connections/c1", key,
                 json{{"provider", "airtable"}, {"access_token", "x"}, {"expires_in", 3600}})
              .status == 200);
  std::this_thread::sleep_for(800ms);
  CHECK(received().size() == 2);
}

TEST_CASE("delivery survives a down receiver, 500s and a hanging receiver", "[webhooks]") {
  SECTION("receiver down for a while: delivered after it comes back, same event id") {
    hook_rig rig;
    const auto port = port_of(rig.receiver->address());
    rig.receiver.reset();
    rig.dead("c1");
    REQUIRE(eventually(
        [&] {
          auto d = rig.deliveries();
          return d.size() == 1 && d[0]["attempts"].get<int>() >= 3;
        },
        15s));
    auto pending = rig.deliveries("?status=pending");
    REQUIRE(pending.size() == 1);
    CHECK(pending[0]["last_status"].is_null());
    CHECK(pending[0]["last_error"].get<std::string>().rfind("no answer", 0) == 0);
    CHECK(pending[0]["next_attempt_at"].is_string());
    const std::string event_id = pending[0]["event_id"];
    rig.receiver = std::make_unique<node_peer>("fake-token-endpoint.mjs",
                                               std::vector<std::string>{"--port", port});
    REQUIRE(rig.wait_received(1, 20s));
    std::this_thread::sleep_for(500ms);
    auto items = rig.received();
    REQUIRE(items.size() == 1);
    CHECK(body_of(items[0])["id"] == event_id);
    CHECK(verifies(items[0]["headers"]["tokend-signature"], items[0]["body"], rig.secret));
    REQUIRE(eventually([&] { return rig.deliveries()[0]["status"] == "delivered"; }, 5s));
  }

  SECTION("a receiver answering 500 five times: delivered on the sixth try") {
    hook_rig rig(env_map{{"TOKEND_METRICS_LISTEN", "127.0.0.1:0"}});
    rig.receiver->control("POST", "/control/script",
                          {{"steps", {{{"status", 500}, {"repeat", 5}}}}});
    rig.dead("c1");
    REQUIRE(rig.wait_received(6, 20s));
    REQUIRE(eventually([&] { return rig.deliveries()[0]["status"] == "delivered"; }, 5s));
    std::this_thread::sleep_for(500ms);
    auto items = rig.received();
    REQUIRE(items.size() == 6);
    std::set<std::string> ids;
    for (const auto& it : items) ids.insert(body_of(it)["id"].get<std::string>());
    CHECK(ids.size() == 1);  // one event, the same id on every try
    // Exponential back-off: each wait at least the one before (base 200 ms, doubling).
    for (std::size_t i = 2; i < items.size(); ++i) {
      const double gap = items[i]["at"].get<double>() - items[i - 1]["at"].get<double>();
      const double before = items[i - 1]["at"].get<double>() - items[i - 2]["at"].get<double>();
      INFO("try " << i << " gap " << gap << " ms, previous " << before << " ms");
      CHECK(gap >= 200.0 * (1 << (i - 1)) - 50);
    }
    auto d = rig.deliveries()[0];
    CHECK(d["attempts"] == 6);
    CHECK(d["last_status"] == 200);
    const auto m = http_call(rig.t->metrics_address(), "GET", "/metrics").body;
    CHECK(metric_value(m, "tokend_webhook_deliveries_total{outcome=\"retry\"}") == 5);
    CHECK(metric_value(m, "tokend_webhook_deliveries_total{outcome=\"delivered\"}") == 1);
    CHECK(metric_value(m, "tokend_webhook_deliveries_total{outcome=\"failed\"}") == 0);
    CHECK(metric_value(m, "tokend_webhook_delivery_latency_seconds_count") == 1);
  }

  SECTION("a receiver that hangs is cut off at the attempt timeout, then retried") {
    hook_rig rig(env_map{{"TOKEND_WEBHOOK_TIMEOUT", "1s"}});
    rig.receiver->control("POST", "/control/script", {{"steps", {{{"never_answer", true}}}}});
    rig.dead("c1");
    REQUIRE(rig.wait_received(2, 10s));
    auto items = rig.received();
    const double gap = items[1]["at"].get<double>() - items[0]["at"].get<double>();
    INFO("gap " << gap << " ms");
    CHECK(gap >= 1000);
    CHECK(gap < 3500);  // timeout 1 s + back-off 200-250 ms + polling
    REQUIRE(eventually([&] { return rig.deliveries()[0]["status"] == "delivered"; }, 5s));
    CHECK(rig.deliveries()[0]["attempts"] == 2);
    CHECK(body_of(items[0])["id"] == body_of(items[1])["id"]);
  }

  SECTION("ordered per connection: a later event waits until the earlier one is delivered") {
    hook_rig rig;
    // The first attempt is held open at the receiver (then answers 500), two more get 500.
    rig.receiver->control(
        "POST", "/control/script",
        {{"steps", {{{"status", 500}, {"hold", "h"}}, {{"status", 500}, {"repeat", 2}}}}});
    rig.dead("c1");
    REQUIRE(rig.wait_received(1, 10s));
    // c1 is reconnected by re-import while its reauth_required is in flight, so surely pending.
    REQUIRE(import_connection(*rig.t, rig.key, "c1", "fk", "at-new", "rt-new", 3600) == 200);
    REQUIRE(rig.outbox_rows("status = 'pending'") == 2);
    rig.receiver->control("POST", "/control/release", {{"name", "h"}});
    REQUIRE(rig.wait_received(5, 15s));
    std::this_thread::sleep_for(500ms);
    auto items = rig.received();
    REQUIRE(items.size() == 5);
    for (int i = 0; i < 4; ++i) CHECK(body_of(items[i])["type"] == "connection.reauth_required");
    CHECK(body_of(items[4])["type"] == "connection.reconnected");
  }
}

TEST_CASE("tokend killed after the change committed, before delivery: delivered after restart",
          "[webhooks]") {
  hook_rig rig(env_map{{"TOKEND_WEBHOOK_POLL_INTERVAL", "60s"}});
  // A's worker polled once at start and now sleeps a minute: the event waits in the outbox.
  REQUIRE(eventually(
      [&] { return rig.t->output().find("webhook worker started") != std::string::npos; }, 5s));
  std::this_thread::sleep_for(500ms);
  rig.dead("c1");
  REQUIRE(rig.outbox_rows("status = 'pending'") == 1);
  const auto event_id = rig.db.query_text("SELECT event_id FROM webhook_deliveries");
  rig.t->process().signal(SIGKILL);
  REQUIRE(rig.t->process().wait(5s));
  CHECK(rig.received().empty());
  tokend_process b(rig.db.url(), hook_env());
  REQUIRE(rig.wait_received(1, 10s));
  std::this_thread::sleep_for(1000ms);
  auto items = rig.received();
  REQUIRE(items.size() == 1);  // never twice in the normal path
  CHECK(body_of(items[0])["id"] == event_id);
  CHECK(rig.db.query_text("SELECT status FROM webhook_deliveries") == "delivered");
}

TEST_CASE("tokend killed while a delivery is in flight: re-sent after the lease, same event id",
          "[webhooks]") {
  // The lease is the attempt timeout + 10 s; a 1 s timeout makes it 11 s.
  hook_rig rig(env_map{{"TOKEND_WEBHOOK_TIMEOUT", "1s"}});
  rig.receiver->control("POST", "/control/script", {{"steps", {{{"hold", "h"}}}}});
  rig.dead("c1");
  REQUIRE(rig.wait_received(1, 10s));
  rig.t->process().signal(SIGKILL);
  REQUIRE(rig.t->process().wait(5s));
  rig.receiver->control("POST", "/control/release", {{"name", "h"}});
  REQUIRE(rig.db.query_text("SELECT claim_expires_at > now() FROM webhook_deliveries") == "t");
  tokend_process b(rig.db.url(), hook_env({{"TOKEND_WEBHOOK_TIMEOUT", "1s"}}));
  std::this_thread::sleep_for(2s);
  CHECK(rig.received().size() == 1);  // the live lease keeps B off the row
  REQUIRE(rig.wait_received(2, 20s));
  auto items = rig.received();
  CHECK(body_of(items[0])["id"] == body_of(items[1])["id"]);
  REQUIRE(eventually(
      [&] { return rig.db.query_text("SELECT status FROM webhook_deliveries") == "delivered"; },
      5s));
}

TEST_CASE("a flapping provider sends one refresh_failed per failure episode", "[webhooks]") {
  // refresh_ahead 4 s: a failure episode is reported once it has lasted 4 s. Every forced
  // refresh is a provider call (no minimum interval); each flight gives up after 2 s.
  hook_rig rig(env_map{{"TOKEND_FORCE_REFRESH_MIN_INTERVAL", "0"}, {"TOKEND_REQUEST_TIMEOUT", "2"}},
               {{"refresh_ahead", 4}});
  REQUIRE(import_connection(*rig.t, rig.key, "c1", "fk", "at-1", "rt-1", 3600) == 201);
  auto failed_events = [&] {
    int n = 0;
    for (const auto& it : rig.received()) {
      if (body_of(it)["type"] == "connection.refresh_failed") ++n;
    }
    return n;
  };
  auto provider_calls = [&] {
    return rig.token.control("GET", "/control/requests")["count"].get<int>();
  };
  long long version = 1;
  for (int flap = 1; flap <= 2; ++flap) {
    INFO("flap " << flap);
    rig.token.control("POST", "/control/script",
                      {{"steps", {{{"status", 503}, {"repeat", 10000}}}}});
    const int calls_before = provider_calls();
    // Fail until the episode is reported, then two more recorded failures (flights that
    // called the provider and failed, not requests deferred by the back-off): still one event.
    auto failures = [&] {
      return rig.db.query_int("SELECT consecutive_failures FROM connections");
    };
    long long failures_at_notice = -1;
    const auto until = std::chrono::steady_clock::now() + 40s;
    while (std::chrono::steady_clock::now() < until) {
      rig.t->call("POST", "/v1/tokens/c1/refresh", rig.key, json::object());
      std::this_thread::sleep_for(600ms);
      if (failures_at_notice < 0 && failed_events() >= flap) failures_at_notice = failures();
      if (failures_at_notice >= 0 && failures() >= failures_at_notice + 2) break;
    }
    REQUIRE(failures_at_notice >= 2);  // the episode needed several failures to be reported
    REQUIRE(failures() >= failures_at_notice + 2);
    std::this_thread::sleep_for(600ms);  // a second event would have been delivered by now
    CHECK(failed_events() == flap);
    CHECK(provider_calls() - calls_before >= 3);  // several failed attempts in this flap
    CHECK(rig.db.query_text("SELECT failure_notified FROM connections") == "t");
    // Recovery between flaps: one forced refresh answered 200, version + 1, ends the episode.
    rig.token.control("POST", "/control/reset");
    std::this_thread::sleep_for(2100ms);  // past the failed flight's 2 s back-off
    auto ok = rig.t->call("POST", "/v1/tokens/c1/refresh", rig.key, json::object());
    INFO(ok.body);
    REQUIRE(ok.status == 200);
    CHECK(ok.json()["token_version"] == ++version);
    CHECK(rig.db.query_text("SELECT failure_notified FROM connections") == "f");
    CHECK(rig.db.query_text("SELECT coalesce(failing_since::text, 'none') FROM connections") ==
          "none");
  }
  std::this_thread::sleep_for(600ms);
  auto items = rig.received();
  std::vector<json> failed;
  for (const auto& it : items) {
    auto b = body_of(it);
    if (b["type"] == "connection.refresh_failed") failed.push_back(b);
  }
  REQUIRE(failed.size() == 2);
  CHECK(failed[0]["data"]["token_version"] == 1);
  CHECK(failed[1]["data"]["token_version"] == 2);
  CHECK(failed[0]["data"]["last_error"]["code"] == "transient");
  CHECK(failed[0]["data"]["status"] == "active");
  CHECK(failed[0]["id"] != failed[1]["id"]);
  CHECK(items.size() == 2);  // nothing else was sent
}

TEST_CASE("dead letters: a failed delivery is listed and retried; a rotated secret signs twice",
          "[webhooks]") {
  hook_rig rig(env_map{{"TOKEND_WEBHOOK_MAX_AGE", "2s"}});
  rig.receiver->control("POST", "/control/script",
                        {{"steps", {{{"status", 500}, {"repeat", 10000}}}}});
  rig.dead("c1");
  REQUIRE(eventually([&] { return rig.deliveries("?status=failed").size() == 1; }, 15s));
  auto failed = rig.deliveries("?status=failed")[0];
  CHECK(failed["attempts"].get<int>() >= 2);
  CHECK(failed["last_status"] == 500);
  CHECK(failed["last_error"] == "HTTP 500");
  CHECK(failed["next_attempt_at"].is_null());
  CHECK(rig.deliveries("?status=pending").empty());
  const auto tries = rig.received().size();
  std::this_thread::sleep_for(700ms);
  CHECK(rig.received().size() == tries);  // failed for good: no more attempts

  rig.receiver->control("POST", "/control/reset");
  const std::string id = failed["id"];
  auto r = rig.t->call("POST", "/v1/webhook/deliveries/" + id + "/retry", rig.key);
  INFO(r.body);
  REQUIRE(r.status == 202);
  REQUIRE(rig.wait_received(1, 10s));
  auto items = rig.received();
  CHECK(body_of(items[0])["id"] == failed["event_id"]);
  REQUIRE(eventually([&] { return rig.deliveries("?status=delivered").size() == 1; }, 5s));
  // Only a failed delivery can be retried; another tenant's id is unknown.
  auto again = rig.t->call("POST", "/v1/webhook/deliveries/" + id + "/retry", rig.key);
  CHECK(again.status == 409);
  CHECK(again.json()["code"] == "conflict");
  auto globex = rig.t->tenant_key("globex");
  CHECK(rig.t->call("POST", "/v1/webhook/deliveries/" + id + "/retry", globex).status == 404);
  CHECK(rig.t->call("GET", "/v1/webhook/deliveries", globex).json()["items"].empty());

  // Rotation: for the overlap both the new and the old secret verify.
  auto rot = rig.t->call("POST", "/v1/webhook/rotate-secret", rig.key);
  REQUIRE(rot.status == 200);
  const std::string next = rot.json()["secret"];
  rig.dead("c2");
  REQUIRE(rig.wait_received(2, 10s));
  auto last = rig.received()[1];
  const std::string header = last["headers"]["tokend-signature"];
  CHECK(parse_signature(header).v1.size() == 2);
  CHECK(verifies(header, last["body"], next));
  CHECK(verifies(header, last["body"], rig.secret));
  // Once the overlap is over only the new secret signs.
  rig.db.exec({"UPDATE webhooks SET previous_until = now() - interval '1 second'"});
  rig.dead("c3");
  REQUIRE(rig.wait_received(3, 10s));
  auto third = rig.received()[2];
  const std::string h3 = third["headers"]["tokend-signature"];
  CHECK(parse_signature(h3).v1.size() == 1);
  CHECK(verifies(h3, third["body"], next));
  CHECK(!verifies(h3, third["body"], rig.secret));
}

TEST_CASE("a manual retry starts the back-off again and goes to the tenant's webhook as it is now",
          "[webhooks]") {
  hook_rig rig(env_map{{"TOKEND_WEBHOOK_MAX_AGE", "3s"}});
  rig.receiver->control("POST", "/control/script",
                        {{"steps", {{{"status", 500}, {"repeat", 10000}}}}});
  rig.dead("c1");
  REQUIRE(eventually([&] { return rig.deliveries("?status=failed").size() == 1; }, 15s));
  const auto failed = rig.deliveries("?status=failed")[0];
  const std::string id = failed["id"];
  // 200 ms doubling over a 3 s window: the window's attempts reached a delay of 1.6 s or more.
  REQUIRE(failed["attempts"].get<int>() >= 4);
  const auto before = rig.received().size();

  // Back-off counted from the retry (0.2, 0.4, 0.8 s ...), not from the attempts before it:
  // counting on would wait 3.2 s or more (cut to the window's end at 3 s) after the first try.
  REQUIRE(rig.t->call("POST", "/v1/webhook/deliveries/" + id + "/retry", rig.key).status == 202);
  CHECK(eventually([&] { return rig.received().size() >= before + 3; }, 2800ms));
  REQUIRE(eventually([&] { return rig.deliveries("?status=failed").size() == 1; }, 15s));
  CHECK(rig.db.query_int("SELECT window_attempts FROM webhook_deliveries") <
        rig.db.query_int("SELECT attempts FROM webhook_deliveries"));

  // No webhook: nothing to retry to, and the row stays a dead letter.
  REQUIRE(rig.t->call("DELETE", "/v1/webhook", rig.key).status == 204);
  auto none = rig.t->call("POST", "/v1/webhook/deliveries/" + id + "/retry", rig.key);
  CHECK(none.status == 409);
  CHECK(none.json()["detail"].get<std::string>().find("no webhook") != std::string::npos);
  CHECK(rig.db.query_text("SELECT status FROM webhook_deliveries") == "failed");

  // A new webhook (another URL, another secret): the retry is sent there, signed with its secret.
  rig.receiver->control("POST", "/control/reset");
  auto put = rig.t->call("PUT", "/v1/webhook", rig.key, {{"url", rig.receiver->url("/v2/hook")}});
  REQUIRE(put.status == 200);
  const std::string fresh = put.json()["secret"];
  REQUIRE(fresh != rig.secret);
  REQUIRE(rig.t->call("POST", "/v1/webhook/deliveries/" + id + "/retry", rig.key).status == 202);
  REQUIRE(rig.wait_received(1, 10s));
  const auto got = rig.received()[0];
  CHECK(got["path"] == "/v2/hook");
  CHECK(body_of(got)["id"] == failed["event_id"]);
  CHECK(verifies(got["headers"]["tokend-signature"], got["body"], fresh));
  CHECK(eventually([&] { return rig.deliveries("?status=delivered").size() == 1; }, 5s));
}

TEST_CASE(
    "the outbox row commits and rolls back with the state change; subscriptions and "
    "deletion",
    "[webhooks]") {
  hook_rig rig(env_map{{"TOKEND_WEBHOOKS", "off"}});  // rows stay in the outbox to be inspected
  REQUIRE(import_connection(*rig.t, rig.key, "c1", "fk", "at-1", "rt-1", 3600) == 201);
  const auto row_id = rig.db.query_int("SELECT row_id FROM connections WHERE id = 'c1'");

  SECTION("rolled back: neither the change nor the event; committed: both") {
    pqxx::connection conn(rig.db.url());
    {
      pqxx::work tx(conn);
      REQUIRE(tokend::store::mark_needs_reauth(tx, "acme", "c1", row_id, 1, "grant_revoked",
                                               "{\"code\":\"invalid_grant\"}"));
      CHECK(tx.exec1("SELECT count(*) FROM webhook_deliveries")[0].as<int>() == 1);
      tx.abort();
    }
    CHECK(rig.outbox_rows() == 0);
    CHECK(rig.db.query_text("SELECT status FROM connections") == "active");
    {
      pqxx::work tx(conn);
      REQUIRE(tokend::store::mark_needs_reauth(tx, "acme", "c1", row_id, 1, "grant_revoked",
                                               "{\"code\":\"invalid_grant\"}"));
      tx.commit();
    }
    CHECK(rig.outbox_rows("type = 'connection.reauth_required'") == 1);
    CHECK(rig.db.query_text("SELECT status FROM connections") == "needs_reauth");
    // The change happens once: marking it again writes nothing more.
    {
      pqxx::work tx(conn);
      CHECK(!tokend::store::mark_needs_reauth(tx, "acme", "c1", row_id, 1, "grant_revoked", "{}"));
      tx.commit();
    }
    CHECK(rig.outbox_rows() == 1);
  }

  SECTION("unsubscribed types and tenants without a webhook write nothing") {
    rig.subscribe(json::array({"connection.reconnected"}));
    rig.dead("c2");
    CHECK(rig.outbox_rows() == 0);
    REQUIRE(import_connection(*rig.t, rig.key, "c2", "fk", "at-2", "rt-2", 3600) == 200);
    CHECK(rig.outbox_rows("type = 'connection.reconnected'") == 1);
    auto globex = rig.t->tenant_key("globex");
    put_provider(*rig.t, globex, "fk", rig.token.url("/token"));
    REQUIRE(import_connection(*rig.t, globex, "g1", "fk", "at-g", "rt-g") == 201);
    rig.token.control("POST", "/control/script",
                      {{"steps", {{{"status", 400}, {"json", {{"error", "invalid_grant"}}}}}}});
    REQUIRE(rig.t->call("GET", "/v1/tokens/g1", globex).status == 409);
    CHECK(rig.outbox_rows("tenant_id = 'globex'") == 0);
  }

  SECTION("deleting the webhook cancels its pending deliveries") {
    rig.dead("c2");
    REQUIRE(rig.outbox_rows("status = 'pending'") == 1);
    REQUIRE(rig.t->call("DELETE", "/v1/webhook", rig.key).status == 204);
    CHECK(rig.outbox_rows("status = 'cancelled'") == 1);
    CHECK(rig.outbox_rows("status = 'pending'") == 0);
    // A new webhook does not inherit them.
    tokend_process worker(rig.db.url(), hook_env());
    rig.subscribe();
    std::this_thread::sleep_for(800ms);
    CHECK(rig.received().empty());
    auto list = rig.deliveries("?status=cancelled");
    REQUIRE(list.size() == 1);
    CHECK(list[0]["type"] == "connection.reauth_required");
  }
}

TEST_CASE(
    "two instances share the outbox without delivering a row twice; one tenant's slow "
    "receiver does not hold up another",
    "[webhooks]") {
  SECTION("20 events, two workers, each delivered exactly once") {
    hook_rig rig(env_map{{"TOKEND_WEBHOOKS", "off"}});
    // All 20 wait in the outbox before either worker starts. Each instance sends at most 2 at
    // a time (TOKEND_WEBHOOK_CONCURRENCY) of the tenant's 4 live claims, and each answer takes
    // 1 s: one worker alone would need 10 s, and it can never hold the tenant's whole cap, so
    // the second instance always finds claimable rows and the claims really compete. (With
    // the default concurrency the first worker to start could take all 4 slots and re-claim
    // each freed one before the other's next poll.)
    rig.receiver->control("POST", "/control/script",
                          {{"steps", {{{"delay_ms", 1000}, {"repeat", 100}}}}});
    for (int i = 0; i < 20; ++i) rig.dead(numbered("c", i));
    REQUIRE(rig.outbox_rows("status = 'pending'") == 20);
    const auto env = hook_env(
        {{"TOKEND_METRICS_LISTEN", "127.0.0.1:0"}, {"TOKEND_WEBHOOK_CONCURRENCY", "2"}});
    tokend_process a(rig.db.url(), env);
    tokend_process b(rig.db.url(), env);
    REQUIRE(rig.wait_received(20, 30s));
    REQUIRE(eventually([&] { return rig.outbox_rows("status = 'delivered'") == 20; }, 10s));
    std::this_thread::sleep_for(800ms);
    auto items = rig.received();
    CHECK(items.size() == 20);
    std::set<std::string> ids;
    for (const auto& it : items) ids.insert(body_of(it)["id"].get<std::string>());
    CHECK(ids.size() == 20);
    double delivered = 0;
    for (const auto* p : {&a, &b}) {
      const auto m = http_call(p->metrics_address(), "GET", "/metrics").body;
      const double mine = metric_value(m, "tokend_webhook_deliveries_total{outcome=\"delivered\"}");
      CHECK(mine > 0);  // both workers took part: the claims really competed
      delivered += mine;
    }
    CHECK(delivered == 20);
  }

  SECTION("a tenant whose receiver hangs holds at most 4 deliveries; another tenant's go on") {
    // The hanging attempts outlast the test (a 20 s timeout), so acme's claims stay live.
    hook_rig rig(env_map{{"TOKEND_WEBHOOK_TIMEOUT", "20s"}});
    node_peer fast{"fake-token-endpoint.mjs"};
    rig.receiver->control("POST", "/control/script",
                          {{"steps", {{{"never_answer", true}, {"repeat", 100}}}}});
    for (int i = 0; i < 8; ++i) rig.dead(numbered("c", i));
    REQUIRE(rig.wait_received(4, 10s));
    auto globex = rig.t->tenant_key("globex");
    put_provider(*rig.t, globex, "fk", rig.token.url("/token"));
    REQUIRE(rig.t->call("PUT", "/v1/webhook", globex, json{{"url", fast.url("/hook")}}).status ==
            200);
    REQUIRE(import_connection(*rig.t, globex, "g1", "fk", "at-g", "rt-g") == 201);
    rig.token.control("POST", "/control/script",
                      {{"steps", {{{"status", 400}, {"json", {{"error", "invalid_grant"}}}}}}});
    REQUIRE(rig.t->call("GET", "/v1/tokens/g1", globex).status == 409);
    const auto start = std::chrono::steady_clock::now();
    REQUIRE(eventually(
        [&] { return fast.control("GET", "/control/requests")["items"].size() == 1; }, 10s));
    CHECK(std::chrono::steady_clock::now() - start < 5s);  // the next polls, not a timeout
    // acme's hanging receiver holds exactly its cap of 4, not all 8: four live claims.
    CHECK(rig.received().size() == 4);
    CHECK(rig.outbox_rows("tenant_id = 'acme' AND status = 'pending' AND claim_expires_at > "
                          "now()") == 4);
    CHECK(rig.outbox_rows("tenant_id = 'acme' AND status = 'pending'") == 8);
  }
}

TEST_CASE("rotate-keys re-seals webhook secrets; deliveries sign with both under the new key alone",
          "[webhooks]") {
  scratch_database db;
  node_peer token{"fake-token-endpoint.mjs"};
  node_peer receiver{"fake-token-endpoint.mjs"};
  const std::string old_keys = "test1:" + kTestMasterKeyB64;
  const std::string new_only = "k2:" + tokend::crypto::base64(std::string(32, 'k'));
  std::string key, first, second;
  {
    tokend_process t(db.url(), hook_env({{"TOKEND_MASTER_KEYS", old_keys}}));
    key = t.tenant_key("acme");
    put_provider(t, key, "fk", token.url("/token"));
    first =
        t.call("PUT", "/v1/webhook", key, json{{"url", receiver.url("/hook")}}).json()["secret"];
    auto rot = t.call("POST", "/v1/webhook/rotate-secret", key);
    REQUIRE(rot.status == 200);
    second = rot.json()["secret"];
  }
  auto rotate = run_command(
      {TOKEND_BINARY, "rotate-keys"},
      {{"TOKEND_DATABASE_URL", db.url()}, {"TOKEND_MASTER_KEYS", new_only + "," + old_keys}}, 60s);
  INFO(rotate.output);
  REQUIRE(rotate.exit_code == 0);
  CHECK(db.query_text("SELECT key_id FROM webhooks") == "k2");
  tokend_process t(db.url(), hook_env({{"TOKEND_MASTER_KEYS", new_only}}));
  REQUIRE(import_connection(t, key, "c1", "fk", "at-1", "rt-1") == 201);
  token.control("POST", "/control/script",
                {{"steps", {{{"status", 400}, {"json", {{"error", "invalid_grant"}}}}}}});
  REQUIRE(t.call("GET", "/v1/tokens/c1", key).status == 409);
  REQUIRE(eventually(
      [&] { return receiver.control("GET", "/control/requests")["items"].size() == 1; }, 10s));
  auto item = receiver.control("GET", "/control/requests")["items"][0];
  const std::string header = item["headers"]["tokend-signature"];
  CHECK(parse_signature(header).v1.size() == 2);
  CHECK(verifies(header, item["body"], second));
  CHECK(verifies(header, item["body"], first));
}
