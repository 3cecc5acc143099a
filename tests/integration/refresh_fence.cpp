// The fence and the answer window, against the real OAuth server (rotation on, reuse of a
// consumed refresh token revokes the grant) and the fault-injecting fake: at most one provider
// call per token version when the lock holder's sessions die, a sent request is awaited past
// the callers' deadline, no caller gets a token the provider voided, conditional callers never
// get version N back, and long tokens survive.
#include <catch2/catch.hpp>
#include <future>
#include <pqxx/pqxx>

#include "support/fixtures.hpp"

using namespace tokend::test;
using nlohmann::json;
using namespace std::chrono_literals;

namespace {

const std::string kPast = "2020-01-01T00:00:00Z";

std::map<std::string, std::string> env(std::map<std::string, std::string> extra = {}) {
  extra.emplace("TOKEND_ALLOW_INSECURE_PROVIDER_URLS", "1");
  return extra;
}

int query_int(const std::string& url, const std::string& sql) {
  pqxx::connection c(url);
  pqxx::nontransaction tx(c);
  return tx.exec1(sql)[0].as<int>();
}

// Sessions of `instance` waiting for a row lock.
int lock_waiters(const std::string& url, const std::string& instance) {
  return query_int(url,
                   "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND "
                   "application_name = 'tokend-refresh/" +
                       instance + "' AND wait_event_type = 'Lock'");
}

// Terminates the database sessions of `instance` (every tokend session when empty); returns how
// many were terminated.
int terminate_sessions(const std::string& url, const std::string& instance) {
  const std::string who = instance.empty() ? "application_name LIKE 'tokend-%'"
                                           : "application_name LIKE 'tokend-%/" + instance + "'";
  return query_int(url,
                   "SELECT count(*) FROM (SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                   "WHERE datname = current_database() AND pid <> pg_backend_pid() AND " +
                       who + ") t");
}

http_reply get_token(const tokend_process& t, const std::string& key, const std::string& id,
                     std::chrono::milliseconds timeout = 30s) {
  return http_call(t.address(), "GET", "/v1/tokens/" + id, "", {{"Authorization", "Bearer " + key}},
                   timeout);
}

struct oidc_fence_rig {
  node_peer idp{"oidc-server.mjs"};
  scratch_database db;
  json grant;

  std::string setup(const tokend_process& t) {
    auto key = t.tenant_key("acme");
    REQUIRE(t.call("PUT", "/v1/providers/airtable", key,
                   json{{"type", "airtable"},
                        {"client_id", "tokend-test"},
                        {"client_secret", "tokend-test-secret"},
                        {"token_url", idp.url("/token")}})
                .status == 201);
    grant = idp.control("POST", "/test/grants", json{{"count", 1}})["items"][0];
    REQUIRE(t.call("PUT", "/v1/connections/c1", key,
                   json{{"provider", "airtable"},
                        {"access_token", grant["access_token"]},
                        {"refresh_token", grant["refresh_token"]},
                        {"expires_at", kPast}})
                .status == 201);
    return key;
  }
  json stats() { return idp.control("GET", "/test/stats"); }
  json token_state(const std::string& rt) {
    return idp.control("GET", "/test/refresh-token?value=" + rt);
  }
};

// Two instances; A's refresh is processed by the provider and its answer held 4 s; B waits for
// A's row lock; then `victims` ("a" or every tokend session) are terminated.
void lock_holder_sessions_die(const std::string& victims) {
  oidc_fence_rig rig;
  tokend_process a(rig.db.url(), env({{"TOKEND_INSTANCE_ID", "fence-a"}}));
  tokend_process b(rig.db.url(), env({{"TOKEND_INSTANCE_ID", "fence-b"}}));
  auto key = rig.setup(a);
  rig.idp.control("POST", "/test/answer-delay", json{{"ms", 4000}, {"count", 1}});

  auto at_a = std::async(std::launch::async, [&] { return get_token(a, key, "c1"); });
  // A's call is out: processed (the provider rotated) and its answer held.
  REQUIRE(eventually(
      [&] {
        auto s = rig.stats();
        return s["held_answers"] == 1 && s["refresh_success"] == 1;
      },
      10s));
  auto at_b = std::async(std::launch::async, [&] { return get_token(b, key, "c1"); });
  REQUIRE(eventually([&] { return lock_waiters(rig.db.url(), "fence-b") == 1; }, 10s));

  CHECK(terminate_sessions(rig.db.url(), victims == "a" ? "fence-a" : "") >= 2);
  auto ra = at_a.get();
  auto rb = at_b.get();
  INFO(ra.body);
  INFO(rb.body);
  REQUIRE(ra.status == 200);
  REQUIRE(rb.status == 200);
  CHECK(ra.json()["token_version"] == 2);
  CHECK(rb.json()["token_version"] == 2);
  CHECK(ra.json()["access_token"] == rb.json()["access_token"]);
  CHECK(ra.json()["access_token"] != rig.grant["access_token"]);
  // B saw A's open marker after it got the lock, and made no provider call of its own.
  CHECK(b.output().find("fenced: another flight's attempt at this version is open") !=
        std::string::npos);
  auto s = rig.stats();
  CHECK(s["refresh_success"] == 1);
  CHECK(s["refresh_error"] == 0);
  CHECK(s["invalid_grant"] == 0);
  CHECK(s["token_requests"] == 1);  // the imported refresh token was presented exactly once
  CHECK(query_int(rig.db.url(), "SELECT count(*) FROM refresh_attempts") == 1);
  CHECK(query_int(rig.db.url(), "SELECT count(*) FROM refresh_attempts WHERE state = 'done'") == 1);
  // The stored refresh token is the rotated one, alive at the provider; the imported one spent.
  auto rt = stored_refresh_token(rig.db.url(), "acme", "c1");
  REQUIRE(rt);
  CHECK(*rt != rig.grant["refresh_token"].get<std::string>());
  auto state = rig.token_state(*rt);
  CHECK(state["exists"] == true);
  CHECK(state["consumed"] == false);
  // And it works: the next refresh (through B) rotates again without invalid_grant.
  auto next =
      http_call(b.address(), "POST", "/v1/tokens/c1/refresh", json{{"if_token_version", 2}}.dump(),
                {{"Authorization", "Bearer " + key}}, 30s);
  INFO(next.body);
  CHECK(next.status == 200);
  CHECK(next.json()["token_version"] == 3);
  s = rig.stats();
  CHECK(s["refresh_success"] == 2);
  CHECK(s["invalid_grant"] == 0);
}

}  // namespace

TEST_CASE("the lock holder's sessions die while its call is out: one provider call, grant alive",
          "[refresh_fence]") {
  lock_holder_sessions_die("a");
}

TEST_CASE("every session of the database dies at once (failover-like): one call, grant alive",
          "[refresh_fence]") {
  lock_holder_sessions_die("all");
}

TEST_CASE("a provider that rotates and answers after 11 s: the caller gets the new token",
          "[refresh_fence]") {
  oidc_fence_rig rig;
  tokend_process t(rig.db.url(), env({{"TOKEND_REQUEST_TIMEOUT", "15"}}));
  auto key = rig.setup(t);
  rig.idp.control("POST", "/test/answer-delay", json{{"ms", 11000}, {"count", 1}});
  const auto started = std::chrono::steady_clock::now();
  auto r = get_token(t, key, "c1", 30s);
  INFO(r.body);
  REQUIRE(r.status == 200);
  CHECK(std::chrono::steady_clock::now() - started >= 11s);  // it did wait for the answer
  CHECK(r.json()["token_version"] == 2);
  CHECK(r.json()["access_token"] != rig.grant["access_token"]);
  auto s = rig.stats();
  CHECK(s["token_requests"] == 1);
  CHECK(s["invalid_grant"] == 0);
  auto rt = stored_refresh_token(rig.db.url(), "acme", "c1");
  REQUIRE(rt);
  auto state = rig.token_state(*rt);
  CHECK(state["exists"] == true);
  CHECK(state["consumed"] == false);
}

TEST_CASE("an answer after 30 s: fallback at the deadline, the rotated token stored on arrival",
          "[refresh_fence]") {
  oidc_fence_rig rig;
  tokend_process t(rig.db.url(), env({{"TOKEND_REQUEST_TIMEOUT", "15"}}));
  auto key = rig.setup(t);
  rig.idp.control("POST", "/test/answer-delay", json{{"ms", 30000}, {"count", 1}});
  const auto started = std::chrono::steady_clock::now();
  auto r = get_token(t, key, "c1", 40s);
  const auto took = std::chrono::steady_clock::now() - started;
  INFO(r.body);
  // The imported token has expired, so the transient fallback is 503 provider_unavailable.
  CHECK(r.status == 503);
  CHECK(r.json()["code"] == "provider_unavailable");
  CHECK(took >= 14s);
  CHECK(took < 25s);
  CHECK(rig.stats()["refresh_success"] == 1);  // the provider rotated while we waited
  // The answer arrives at about 30 s and is stored then.
  REQUIRE(eventually(
      [&] { return query_int(rig.db.url(), "SELECT token_version FROM connections") == 2; }, 25s));
  // (min_ttl=1: the provider's 60 s access token is past half its life by now.)
  auto after = get_token(t, key, "c1?min_ttl=1");
  INFO(after.body);
  REQUIRE(after.status == 200);
  CHECK(after.json()["token_version"] == 2);
  CHECK(after.json()["access_token"] != rig.grant["access_token"]);
  auto s = rig.stats();
  CHECK(s["token_requests"] == 1);
  CHECK(s["invalid_grant"] == 0);
  auto rt = stored_refresh_token(rig.db.url(), "acme", "c1");
  REQUIRE(rt);
  CHECK(rig.token_state(*rt)["consumed"] == false);
}

TEST_CASE("the write fails after the provider answered: 503 unavailable, stored when back",
          "[refresh_fence]") {
  node_peer fake("fake-token-endpoint.mjs");
  pg_cluster cluster;
  scratch_database db(cluster.socket_dir());
  tokend_process t(db.url(), env({{"TOKEND_REQUEST_TIMEOUT", "5"}}));
  auto key = t.tenant_key("acme");
  put_provider(t, key, "idp", fake.url("/token"));
  // Valid for an hour: a forced refresh's transient fallback would be this old token with
  // refresh_deferred.
  REQUIRE(import_connection(t, key, "c1", "idp", "old-at", "old-rt", 3600) == 201);
  fake.control("POST", "/control/script",
               json{{"steps", {{{"hold", "db-down"}, {"default", true}}}}});
  auto pending = std::async(std::launch::async, [&] {
    return http_call(t.address(), "POST", "/v1/tokens/c1/refresh", "",
                     {{"Authorization", "Bearer " + key}}, 20s);
  });
  REQUIRE(eventually([&] { return fake.control("GET", "/control/holds")["held"] == 1; }, 10s));
  cluster.stop();
  const auto down_at = std::chrono::steady_clock::now();
  fake.control("POST", "/control/release", json{{"name", "db-down"}});
  auto r = pending.get();
  INFO(r.body);
  CHECK(r.status == 503);
  CHECK(r.json()["code"] == "unavailable");
  CHECK(r.body.find("old-at") == std::string::npos);
  // While the write is pending this instance answers 503 for the connection.
  auto meanwhile = get_token(t, key, "c1", 10s);
  CHECK(meanwhile.status == 503);
  CHECK(meanwhile.body.find("old-at") == std::string::npos);
  std::this_thread::sleep_until(down_at + 8s);
  cluster.start();
  http_reply after;
  REQUIRE(eventually(
      [&] {
        after = get_token(t, key, "c1", 10s);
        return after.status == 200;
      },
      20s));
  CHECK(after.json()["access_token"] == "fake-at-1");
  CHECK(after.json()["token_version"] == 2);
  CHECK(stored_refresh_token(db.url(), "acme", "c1") == std::optional<std::string>("fake-rt-1"));
  CHECK(fake.control("GET", "/control/requests")["processed"] == 1);
  CHECK(t.output().find("PERSIST PENDING") != std::string::npos);
}

TEST_CASE("503 then invalid_grant: the grant was revoked, not a lost rotation", "[refresh_fence]") {
  node_peer fake("fake-token-endpoint.mjs");
  scratch_database db;
  tokend_process t(db.url(), env());
  auto key = t.tenant_key("acme");
  put_provider(t, key, "idp", fake.url("/token"));
  REQUIRE(import_connection(t, key, "c1", "idp", "old-at", "old-rt") == 201);
  fake.control(
      "POST", "/control/script",
      json{{"steps",
            {{{"status", 503}}, {{"status", 400}, {"json", {{"error", "invalid_grant"}}}}}}});
  auto r = get_token(t, key, "c1");
  INFO(r.body);
  REQUIRE(r.status == 409);
  CHECK(r.json()["code"] == "reauth_required");
  CHECK(r.json()["reauth"]["reason"] == "grant_revoked");
  CHECK(fake.control("GET", "/control/requests")["processed"] == 2);
  auto view = t.call("GET", "/v1/connections/c1", key).json();
  CHECK(view["status"] == "needs_reauth");
  CHECK(view["reauth"]["reason"] == "grant_revoked");
  auto events = t.call("GET", "/v1/connections/c1/events", key).json()["items"];
  REQUIRE(events.size() == 3);  // import, transient, invalid_grant (newest first)
  CHECK(events[0]["outcome"] == "invalid_grant");
  CHECK(events[0]["attempt"] == 2);
  CHECK(events[1]["outcome"] == "transient");
  CHECK(events[1]["http_status"] == 503);
}

TEST_CASE("a conditional refresh joining a forced flight that falls back is not given version N",
          "[refresh_fence]") {
  node_peer fake("fake-token-endpoint.mjs");
  scratch_database db;
  tokend_process t(db.url(), env({{"TOKEND_FORCE_REFRESH_MIN_INTERVAL", "300"}}));
  auto key = t.tenant_key("acme");
  put_provider(t, key, "idp", fake.url("/token"));
  REQUIRE(import_connection(t, key, "c1", "idp", "old-at", "old-rt", 3600) == 201);
  // A forced refresh: version 2, and the forced-refresh interval starts.
  auto forced = t.call("POST", "/v1/tokens/c1/refresh", key);
  REQUIRE(forced.status == 200);
  REQUIRE(forced.json()["token_version"] == 2);

  // Hold the row lock so the next forced flight stays in progress while the conditional caller
  // joins it.
  pqxx::connection holder(db.url());
  pqxx::work hold(holder);
  hold.exec("SELECT 1 FROM connections WHERE id = 'c1' FOR UPDATE");
  // The joined counter's series appears with the first join; absent before it means none yet.
  auto joined = [&]() -> std::optional<double> {
    auto text = t.get("/metrics").body;
    if (text.find("\ntokend_refresh_joined_total ") == std::string::npos) return std::nullopt;
    return metric_value(text, "tokend_refresh_joined_total");
  };
  const double joined0 = joined().value_or(0);
  auto second_forced = std::async(std::launch::async, [&] {
    return http_call(t.address(), "POST", "/v1/tokens/c1/refresh", "",
                     {{"Authorization", "Bearer " + key}}, 30s);
  });
  REQUIRE(eventually(
      [&] {
        return query_int(db.url(),
                         "SELECT count(*) FROM pg_stat_activity WHERE datname = "
                         "current_database() AND application_name LIKE 'tokend-refresh%' AND "
                         "wait_event_type = 'Lock'") == 1;
      },
      10s));
  auto conditional = std::async(std::launch::async, [&] {
    return http_call(t.address(), "POST", "/v1/tokens/c1/refresh",
                     json{{"if_token_version", 2}}.dump(), {{"Authorization", "Bearer " + key}},
                     30s);
  });
  // Precondition: the conditional caller joined the forced flight.
  REQUIRE(eventually([&] { return joined() == std::optional<double>(joined0 + 1); }, 10s));
  hold.commit();

  auto rf = second_forced.get();
  INFO(rf.body);
  CHECK(rf.status == 200);
  CHECK(rf.json()["token_version"] == 2);  // within the interval: served as a GET
  auto rc = conditional.get();
  INFO(rc.body);
  REQUIRE(rc.status == 200);
  CHECK(rc.json()["token_version"] == 3);
  CHECK(rc.json()["access_token"] == "fake-at-2");
  CHECK(fake.control("GET", "/control/requests")["processed"] == 2);
}

TEST_CASE("a 9,000-character refresh token and a 20,000-character access token are kept and used",
          "[refresh_fence]") {
  node_peer fake("fake-token-endpoint.mjs");
  scratch_database db;
  tokend_process t(db.url(), env());
  auto key = t.tenant_key("acme");
  put_provider(t, key, "idp", fake.url("/token"));
  const std::string imported_rt = "i" + std::string(8999, 'R');
  const std::string imported_at = "i" + std::string(19999, 'A');
  REQUIRE(t.call("PUT", "/v1/connections/c1", key,
                 json{{"provider", "idp"},
                      {"access_token", imported_at},
                      {"refresh_token", imported_rt},
                      {"expires_at", kPast}})
              .status == 201);
  CHECK(stored_refresh_token(db.url(), "acme", "c1") == imported_rt);
  const std::string new_rt = "n" + std::string(8999, 'r');
  const std::string new_at = "n" + std::string(19999, 'a');
  fake.control("POST", "/control/script",
               json{{"steps",
                     {{{"json",
                        {{"access_token", new_at},
                         {"refresh_token", new_rt},
                         {"token_type", "Bearer"},
                         {"expires_in", 3600}}}}}}});
  auto r = get_token(t, key, "c1");
  REQUIRE(r.status == 200);
  CHECK(r.json()["access_token"] == new_at);
  CHECK(r.json()["token_version"] == 2);
  CHECK(stored_refresh_token(db.url(), "acme", "c1") == new_rt);
  // The long refresh token is what the next refresh presents.
  REQUIRE(t.call("POST", "/v1/tokens/c1/refresh", key).status == 200);
  auto reqs = fake.control("GET", "/control/requests")["items"];
  REQUIRE(reqs.size() == 2);
  CHECK(reqs[0]["body"].get<std::string>().find("refresh_token=" + imported_rt) !=
        std::string::npos);
  CHECK(reqs[1]["body"].get<std::string>().find("refresh_token=" + new_rt) != std::string::npos);
}

TEST_CASE("a lost COMMIT acknowledgement of a write that landed is recognised, not a conflict",
          "[refresh_fence]") {
  node_peer fake("fake-token-endpoint.mjs");
  scratch_database db;
  tokend_process t(db.url(), env({{"TOKEND_TEST_LOSE_COMMIT_ACK", "on"}}));
  auto key = t.tenant_key("acme");
  put_provider(t, key, "idp", fake.url("/token"));
  REQUIRE(import_connection(t, key, "c1", "idp", "old-at", "old-rt") == 201);
  auto r = get_token(t, key, "c1");
  INFO(r.body);
  REQUIRE(r.status == 200);
  CHECK(r.json()["access_token"] == "fake-at-1");
  CHECK(r.json()["token_version"] == 2);
  // Precondition: the first commit did report a failure, and the retry found its own write.
  CHECK(t.output().find("the COMMIT acknowledgement was lost") != std::string::npos);
  CHECK(t.output().find("\"already_landed\":true") != std::string::npos);
  CHECK(t.output().find("PERSIST FAILED") == std::string::npos);
  auto events = t.call("GET", "/v1/connections/c1/events", key).json()["items"];
  REQUIRE(events.size() == 2);  // import and one refreshed; no persist_failed
  CHECK(events[0]["outcome"] == "refreshed");
  CHECK(stored_refresh_token(db.url(), "acme", "c1") == std::optional<std::string>("fake-rt-1"));
  CHECK(fake.control("GET", "/control/requests")["processed"] == 1);
}
