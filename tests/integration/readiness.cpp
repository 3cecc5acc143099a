// /readyz follows the database: 503 while PostgreSQL is down or migrations are missing, 200 again
// after it comes back, without restarting tokend. Uses a private cluster (it stops PostgreSQL).
#include <catch2/catch.hpp>

#include <pqxx/pqxx>

#include "store/migrations.hpp"
#include "support/fixtures.hpp"

using namespace tokend::test;
using namespace std::chrono_literals;

TEST_CASE("readyz goes 503 when PostgreSQL stops and 200 after it restarts", "[readiness]") {
  pg_cluster cluster;
  scratch_database db(cluster.socket_dir());
  tokend_process t(db.url());
  REQUIRE(t.get("/readyz").status == 200);

  cluster.stop();
  http_reply down;
  CHECK(eventually(
      [&] {
        down = t.get("/readyz");
        return down.status == 503;
      },
      15s));
  CHECK(down.json()["code"] == "unavailable");
  CHECK(!down.header("retry-after").empty());
  CHECK(t.get("/healthz").status == 200);  // alive, just not ready

  cluster.start();
  CHECK(eventually([&] { return t.get("/readyz").status == 200; }, 15s));
  CHECK(t.process().running());
}

TEST_CASE("readyz is 503 naming the missing migrations until they are applied", "[readiness]") {
  scratch_database db;
  tokend_process t(db.url(), {}, {"serve"});  // no --migrate
  auto r = t.get("/readyz");
  CHECK(r.status == 503);
  CHECK(r.json()["detail"].get<std::string>().find("migrations not applied: 1") !=
        std::string::npos);

  auto m = run_command({TOKEND_BINARY, "migrate"}, {{"TOKEND_DATABASE_URL", db.url()}});
  REQUIRE(m.exit_code == 0);
  CHECK(t.get("/readyz").status == 200);
}

TEST_CASE("a database ahead of the binary is still ready", "[readiness]") {
  scratch_database db;
  tokend_process t(db.url());
  {
    pqxx::connection c(db.url());
    pqxx::work tx(c);
    tx.exec("INSERT INTO schema_migrations (version, name) VALUES (9999, 'from_the_future')");
    tx.commit();
  }
  CHECK(t.get("/readyz").status == 200);
}
