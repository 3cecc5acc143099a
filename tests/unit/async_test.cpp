#include <atomic>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/thread_pool.hpp>
#include <boost/asio/use_future.hpp>
#include <catch2/catch.hpp>
#include <thread>

#include "async/semaphore.hpp"
#include "async/signal.hpp"

namespace asio = boost::asio;
using namespace std::chrono_literals;
using steady = std::chrono::steady_clock;

TEST_CASE("a notification sent before the wait is not lost", "[async]") {
  asio::io_context ioc;
  tokend::async::signal s(ioc.get_executor());
  s.notify();
  auto f = asio::co_spawn(ioc, s.wait_until(steady::now() + 10s), asio::use_future);
  const auto start = steady::now();
  ioc.run();
  CHECK(f.get());
  CHECK(steady::now() - start < 1s);
}

TEST_CASE("a wait without notification times out", "[async]") {
  asio::io_context ioc;
  tokend::async::signal s(ioc.get_executor());
  auto f = asio::co_spawn(ioc, s.wait_until(steady::now() + 50ms), asio::use_future);
  ioc.run();
  CHECK(!f.get());
}

TEST_CASE("semaphore hand-offs across threads never stall until the deadline", "[async]") {
  // Many coroutines on a multi-threaded pool contend for 2 units with a long deadline; a lost
  // wake-up would stall one of them for the whole 20 s.
  asio::thread_pool pool(4);
  tokend::async::semaphore sem(2);
  std::atomic<int> done{0}, timed_out{0};
  const auto start = steady::now();
  constexpr int kWorkers = 200;
  for (int i = 0; i < kWorkers; ++i) {
    asio::co_spawn(
        pool,
        [&]() -> asio::awaitable<void> {
          for (int round = 0; round < 300; ++round) {
            auto unit = co_await sem.acquire(steady::now() + 20s);
            if (!unit) {
              ++timed_out;
              continue;
            }
            sem.release(*unit);
          }
          ++done;
        },
        asio::detached);
  }
  pool.join();
  CHECK(done == kWorkers);
  CHECK(timed_out == 0);
  CHECK(steady::now() - start < 10s);
  CHECK(sem.in_use() == 0);
  CHECK(sem.waiting() == 0);
}
