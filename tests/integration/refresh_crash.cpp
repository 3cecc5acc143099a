// Crashes and outages around a refresh: the lock holder is SIGKILLed, the database restarts
// between the provider's answer and the commit, and SIGTERM arrives mid-refresh.
#include <catch2/catch.hpp>
#include <csignal>
#include <future>
#include <pqxx/pqxx>

#include "crypto/crypto.hpp"
#include "crypto/token_seal.hpp"
#include "store/repository.hpp"
#include "support/fixtures.hpp"

using namespace tokend::test;
using nlohmann::json;
using namespace std::chrono_literals;

namespace {

std::map<std::string, std::string> env(std::map<std::string, std::string> extra = {}) {
  extra.emplace("TOKEND_ALLOW_INSECURE_PROVIDER_URLS", "1");
  return extra;
}

std::string setup(const tokend_process& t, const node_peer& fake) {
  auto key = t.tenant_key("acme");
  put_provider(t, key, "idp", fake.url("/token"));
  REQUIRE(import_connection(t, key, "c1", "idp", "old-at", "old-rt") == 201);
  return key;
}

std::optional<std::string> stored_refresh(const std::string& url) {
  return stored_refresh_token(url, "acme", "c1");
}

int locked_waiters(const std::string& url) {
  pqxx::connection c(url);
  pqxx::read_transaction tx(c);
  return tx
      .exec1(
          "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
          "AND application_name LIKE 'tokend-refresh%' AND wait_event_type = 'Lock'")[0]
      .as<int>();
}

}  // namespace

TEST_CASE(
    "SIGKILL of the lock holder while its request is out: fenced until the answer window "
    "ends, then one refresh",
    "[refresh_crash]") {
  node_peer fake("fake-token-endpoint.mjs");
  scratch_database db;
  // The marker fences its version for answer timeout + request timeout = 3 + 6 s.
  const auto timeouts =
      env({{"TOKEND_REQUEST_TIMEOUT", "6"}, {"TOKEND_PROVIDER_ANSWER_TIMEOUT", "3"}});
  tokend_process a(db.url(), timeouts);
  tokend_process b(db.url(), timeouts);
  auto key = setup(a, fake);
  // The first token request stalls before the endpoint reads it; later ones succeed.
  fake.control("POST", "/control/script", json{{"steps", {{{"stall_before_read_ms", 8000}}}}});

  auto at_a = std::async(std::launch::async, [&] {
    return http_call(a.address(), "GET", "/v1/tokens/c1", "", {{"Authorization", "Bearer " + key}},
                     25s);
  });
  REQUIRE(eventually([&] { return fake.control("GET", "/control/requests")["count"] == 1; }, 10s));
  auto at_b = std::async(std::launch::async, [&] {
    return http_call(b.address(), "GET", "/v1/tokens/c1", "", {{"Authorization", "Bearer " + key}},
                     25s);
  });
  REQUIRE(eventually([&] { return locked_waiters(db.url()) == 1; }, 10s));  // B waits for A's lock

  a.process().signal(SIGKILL);
  // B gets the lock, but A's sent request might still be answered: B makes no provider call and
  // takes the fallback at its deadline (the imported token has expired: 503).
  auto rb = at_b.get();
  CHECK(rb.status == 503);
  CHECK(rb.json()["code"] == "provider_unavailable");
  CHECK(at_a.get().status == 0);  // A died without answering
  CHECK(fake.control("GET", "/control/requests")["processed"] == 0);
  // Once A's marker has expired, B takes over: exactly one refresh is processed.
  REQUIRE(eventually(
      [&] {
        pqxx::connection c(db.url());
        pqxx::nontransaction tx(c);
        return tx.exec1(
                     "SELECT count(*) FROM refresh_attempts WHERE state = 'open' AND "
                     "expires_at <= now()")[0]
                   .as<int>() == 1;
      },
      15s));
  auto again =
      http_call(b.address(), "GET", "/v1/tokens/c1", "", {{"Authorization", "Bearer " + key}}, 25s);
  INFO(again.body);
  CHECK(again.status == 200);
  CHECK(again.json()["access_token"] == "fake-at-1");
  CHECK(again.json()["token_version"] == 2);
  auto reqs = fake.control("GET", "/control/requests");
  CHECK(reqs["processed"] == 1);  // the provider processed exactly one refresh
  CHECK(stored_refresh(db.url()) == std::optional<std::string>("fake-rt-1"));
  // A's expired marker was set in doubt when B opened its own (a later invalid_grant at that
  // version would read as a lost rotation); B's attempt is closed.
  pqxx::connection c(db.url());
  pqxx::read_transaction tx(c);
  CHECK(tx.exec1("SELECT count(*) FROM refresh_attempts WHERE state = 'in_doubt'")[0].as<int>() ==
        1);
  CHECK(tx.exec1("SELECT count(*) FROM refresh_attempts WHERE state = 'done'")[0].as<int>() == 1);
  CHECK(tx.exec1("SELECT count(*) FROM refresh_attempts WHERE state = 'open'")[0].as<int>() == 0);
}

TEST_CASE("the database restarts between the provider's answer and the commit: nothing lost",
          "[refresh_crash]") {
  node_peer fake("fake-token-endpoint.mjs");
  pg_cluster cluster;
  scratch_database db(cluster.socket_dir());
  tokend_process t(db.url(), env({{"TOKEND_REQUEST_TIMEOUT", "30"}}));
  auto key = setup(t, fake);
  fake.control("POST", "/control/script",
               json{{"steps", {{{"delay_ms", 3000}, {"default", true}}}}});

  auto pending = std::async(std::launch::async, [&] {
    return http_call(t.address(), "GET", "/v1/tokens/c1", "", {{"Authorization", "Bearer " + key}},
                     60s);
  });
  REQUIRE(eventually([&] { return fake.control("GET", "/control/requests")["count"] == 1; }, 10s));
  cluster.stop();  // the locking transaction's connection dies while the provider answers
  std::this_thread::sleep_for(3500ms);  // the answer arrives while the database is down
  cluster.start();
  auto r = pending.get();
  INFO(r.body);
  CHECK(r.status == 200);
  CHECK(r.json()["access_token"] == "fake-at-1");
  CHECK(r.json()["token_version"] == 2);
  CHECK(stored_refresh(db.url()) == std::optional<std::string>("fake-rt-1"));
  CHECK(t.output().find("persist retry failed") != std::string::npos);
  CHECK(fake.control("GET", "/control/requests")["processed"] == 1);
}

TEST_CASE("SIGTERM waits for a refresh in flight to commit", "[refresh_crash]") {
  node_peer fake("fake-token-endpoint.mjs");
  scratch_database db;
  tokend_process t(db.url(), env());
  auto key = setup(t, fake);
  fake.control("POST", "/control/script",
               json{{"steps", {{{"delay_ms", 1500}, {"default", true}}}}});
  auto pending = std::async(std::launch::async, [&] {
    return http_call(t.address(), "GET", "/v1/tokens/c1", "", {{"Authorization", "Bearer " + key}},
                     30s);
  });
  REQUIRE(eventually([&] { return fake.control("GET", "/control/requests")["count"] == 1; }, 10s));
  t.process().signal(SIGTERM);
  auto r = pending.get();
  CHECK(r.status == 200);
  auto code = t.process().wait(20s);
  REQUIRE(code);
  CHECK(*code == 0);
  CHECK(stored_refresh(db.url()) == std::optional<std::string>("fake-rt-1"));
}
