// The DB pool bridge in-process: a lease keeps one connection across co_awaits, jobs run off
// the event loop, errors propagate, and the pool recovers after a connection is killed.
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/asio/use_future.hpp>
#include <catch2/catch.hpp>
#include <pqxx/pqxx>
#include <thread>

#include "core/errors.hpp"
#include "store/db_pool.hpp"
#include "support/fixtures.hpp"

namespace asio = boost::asio;
using namespace tokend;
using namespace std::chrono_literals;

namespace {

template <class T>
T run_coro(asio::io_context& ioc, asio::awaitable<T> a) {
  auto f = asio::co_spawn(ioc, std::move(a), asio::use_future);
  ioc.restart();
  ioc.run();
  return f.get();
}

}  // namespace

TEST_CASE("a lease keeps one connection across co_awaits for a transaction", "[db_pool]") {
  test::scratch_database db;
  store::db_pool pool({.name = "t", .conninfo = db.url(), .size = 2}, nullptr);
  asio::io_context ioc;
  auto loop_thread = std::this_thread::get_id();

  auto result = run_coro(ioc, [&]() -> asio::awaitable<std::vector<int>> {
    auto lease = co_await pool.acquire(store::clock::now() + 5s);
    std::vector<int> pids;
    pids.push_back(co_await lease.backend_pid());
    co_await lease.run([&](pqxx::connection_base& c) {
      CHECK(std::this_thread::get_id() != loop_thread);  // never on the event loop
      pqxx::nontransaction tx(c);
      tx.exec("BEGIN");
      tx.exec("CREATE TABLE t (v int)");
      tx.exec("INSERT INTO t VALUES (1)");
    });
    asio::steady_timer timer(co_await asio::this_coro::executor, 50ms);
    co_await timer.async_wait(asio::use_awaitable);
    pids.push_back(co_await lease.backend_pid());
    co_await lease.run([](pqxx::connection_base& c) {
      pqxx::nontransaction tx(c);
      tx.exec("INSERT INTO t VALUES (2)");
      tx.exec("COMMIT");
    });
    pids.push_back(co_await lease.backend_pid());
    co_return pids;
  }());
  CHECK(result[0] == result[1]);
  CHECK(result[1] == result[2]);

  pqxx::connection c(db.url());
  pqxx::nontransaction tx(c);
  CHECK(tx.exec1("SELECT count(*) FROM t")[0].as<int>() == 2);
}

TEST_CASE("a full pool makes callers wait until their deadline, then unavailable", "[db_pool]") {
  test::scratch_database db;
  store::db_pool pool({.name = "t", .conninfo = db.url(), .size = 1}, nullptr);
  asio::io_context ioc;
  auto outcome = run_coro(ioc, [&]() -> asio::awaitable<std::string> {
    auto held = co_await pool.acquire(store::clock::now() + 5s);
    CHECK(pool.in_use() == 1);
    const auto start = store::clock::now();
    try {
      auto second = co_await pool.acquire(store::clock::now() + 300ms);
      co_return "acquired";
    } catch (const api_error& e) {
      CHECK(e.code() == errc::unavailable);
      CHECK(store::clock::now() - start >= 290ms);
      CHECK(store::clock::now() - start < 3s);
    }
    co_return "timed out";
  }());
  CHECK(outcome == "timed out");
  CHECK(pool.in_use() == 0);
  CHECK(pool.waiting() == 0);
}

TEST_CASE("a waiter gets the connection as soon as it is released", "[db_pool]") {
  test::scratch_database db;
  store::db_pool pool({.name = "t", .conninfo = db.url(), .size = 1}, nullptr);
  asio::io_context ioc;
  std::atomic<int> order{0};
  int second_at = 0;
  asio::co_spawn(
      ioc,
      [&]() -> asio::awaitable<void> {
        auto l = co_await pool.acquire(store::clock::now() + 5s);
        asio::steady_timer t(co_await asio::this_coro::executor, 100ms);
        co_await t.async_wait(asio::use_awaitable);
        ++order;
      },
      asio::detached);
  asio::co_spawn(
      ioc,
      [&]() -> asio::awaitable<void> {
        auto l = co_await pool.acquire(store::clock::now() + 5s);
        second_at = ++order;
        co_await l.run([](pqxx::connection_base& c) {
          pqxx::nontransaction tx(c);
          tx.exec("SELECT 1");
        });
      },
      asio::detached);
  ioc.run();
  CHECK(second_at == 2);
  CHECK(pool.in_use() == 0);
}

TEST_CASE("SQL errors propagate and a killed connection is replaced", "[db_pool]") {
  test::scratch_database db;
  store::db_pool pool({.name = "t", .conninfo = db.url(), .size = 1}, nullptr);
  asio::io_context ioc;
  auto pid = run_coro(ioc, [&]() -> asio::awaitable<int> {
    auto l = co_await pool.acquire(store::clock::now() + 5s);
    co_return co_await l.backend_pid();
  }());
  CHECK_THROWS_AS(run_coro(ioc, pool.run(store::clock::now() + 5s,
                                         [](pqxx::connection_base& c) {
                                           pqxx::nontransaction tx(c);
                                           tx.exec("SELECT * FROM no_such_table");
                                         })),
                  pqxx::sql_error);
  {
    pqxx::connection admin(db.url());
    pqxx::nontransaction tx(admin);
    tx.exec("SELECT pg_terminate_backend(" + std::to_string(pid) + ")");
  }
  std::string first_error;
  try {
    run_coro(ioc, pool.run(store::clock::now() + 5s, [](pqxx::connection_base& c) {
      pqxx::nontransaction tx(c);
      tx.exec("SELECT 1");
    }));
  } catch (const api_error& e) {
    first_error = describe(e.code()).code;
  }
  CHECK((first_error.empty() || first_error == "unavailable"));
  auto new_pid = run_coro(ioc, [&]() -> asio::awaitable<int> {
    auto l = co_await pool.acquire(store::clock::now() + 5s);
    co_return co_await l.backend_pid();
  }());
  CHECK(new_pid != pid);
}
