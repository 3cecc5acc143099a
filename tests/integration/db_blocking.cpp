// The event loop never blocks on the database: with every DB connection stuck on a lock the
// test holds, /healthz still answers quickly, a caller beyond the pool waits only until its
// deadline (503), and the stuck requests finish once the lock is released.
#include <catch2/catch.hpp>
#include <future>
#include <pqxx/pqxx>

#include "support/fixtures.hpp"

using namespace tokend::test;
using namespace std::chrono_literals;

namespace {

int waiting_backends(const std::string& url) {
  pqxx::connection c(url);
  pqxx::nontransaction tx(c);
  return tx
      .exec1(
          "SELECT count(*) FROM pg_stat_activity WHERE application_name LIKE 'tokend-short%' "
          "AND wait_event_type = 'Lock' AND datname = current_database()")[0]
      .as<int>();
}

}  // namespace

TEST_CASE("healthz answers while every DB connection is blocked", "[db_blocking]") {
  scratch_database db;
  tokend_process t(db.url(), {{"TOKEND_DB_POOL_SIZE", "3"},
                              {"TOKEND_DB_STATEMENT_TIMEOUT_MS", "20000"},
                              {"TOKEND_REQUEST_TIMEOUT", "30"}});
  REQUIRE(t.get("/readyz").status == 200);

  pqxx::connection locker(db.url());
  pqxx::work lock_tx(locker);
  lock_tx.exec("LOCK TABLE schema_migrations IN ACCESS EXCLUSIVE MODE");

  std::vector<std::future<http_reply>> stuck;
  for (int i = 0; i < 3; ++i) {
    stuck.push_back(std::async(
        std::launch::async, [&] { return http_call(t.address(), "GET", "/readyz", "", {}, 40s); }));
  }
  REQUIRE(eventually([&] { return waiting_backends(db.url()) == 3; }, 10s));

  // Pool exhausted: one more caller waits for its bounded budget, then 503 unavailable.
  auto extra = http_call(t.address(), "GET", "/readyz", "", {}, 10s);
  CHECK(extra.status == 503);
  CHECK(extra.json()["code"] == "unavailable");

  const auto start = std::chrono::steady_clock::now();
  int answered = 0;
  while (std::chrono::steady_clock::now() - start < 5500ms) {
    const auto t0 = std::chrono::steady_clock::now();
    auto h = http_call(t.address(), "GET", "/healthz", "", {}, 2s);
    CHECK(h.status == 200);
    CHECK(std::chrono::steady_clock::now() - t0 < 1s);
    ++answered;
    std::this_thread::sleep_for(250ms);
  }
  CHECK(answered >= 10);
  CHECK(waiting_backends(db.url()) == 3);  // still blocked the whole time

  auto metrics = t.get("/metrics").body;
  CHECK(metrics.find("tokend_db_pool_in_use{pool=\"short\"} 3") != std::string::npos);

  lock_tx.abort();
  for (auto& f : stuck) CHECK(f.get().status == 200);
  CHECK(t.get("/readyz").status == 200);
}
