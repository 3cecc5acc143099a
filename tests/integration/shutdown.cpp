// SIGTERM: stop accepting, finish the request in flight, exit 0.
#include <catch2/catch.hpp>
#include <csignal>
#include <future>
#include <pqxx/pqxx>

#include "support/fixtures.hpp"

using namespace tokend::test;
using namespace std::chrono_literals;

TEST_CASE("graceful shutdown finishes an in-flight request", "[shutdown]") {
  scratch_database db;
  tokend_process t(db.url(), {{"TOKEND_DB_STATEMENT_TIMEOUT_MS", "20000"}});
  REQUIRE(t.get("/readyz").status == 200);

  pqxx::connection locker(db.url());
  pqxx::work lock_tx(locker);
  lock_tx.exec("LOCK TABLE schema_migrations IN ACCESS EXCLUSIVE MODE");

  // An idle keep-alive connection is closed by the shutdown.
  http_connection idle(t.address());
  REQUIRE(idle.send_raw("GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"));
  REQUIRE(idle.read_reply(5s).status == 200);

  auto in_flight = std::async(
      std::launch::async, [&] { return http_call(t.address(), "GET", "/readyz", "", {}, 30s); });
  REQUIRE(eventually(
      [&] {
        pqxx::connection c(db.url());
        pqxx::nontransaction tx(c);
        return tx.exec1(
                     "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                     "AND application_name LIKE 'tokend-short%' AND datname = current_database()")[0]
                   .as<int>() == 1;
      },
      10s));

  t.process().signal(SIGTERM);
  REQUIRE(t.process().wait_for_output("shutting down", 5s));
  CHECK(idle.wait_closed(5s));
  // New connections are refused once the listener is closed.
  CHECK(eventually(
      [&] {
        try {
          http_connection c(t.address());
          return false;
        } catch (const std::exception&) {
          return true;
        }
      },
      5s));
  CHECK(t.process().running());  // still finishing the request

  std::this_thread::sleep_for(500ms);
  lock_tx.abort();
  auto r = in_flight.get();
  CHECK(r.status == 200);
  CHECK(r.header("connection") == "close");
  auto code = t.process().wait(20s);
  REQUIRE(code.has_value());
  CHECK(*code == 0);
}
