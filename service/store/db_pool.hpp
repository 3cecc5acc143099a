// Bounded pools of libpqxx connections run on dedicated DB threads and bridged into coroutines.
// libpqxx is blocking: every statement runs on the pool's own threads, never on an event loop.
// A lease pins one connection to a coroutine across several co_awaits (multi-statement
// transactions); a full pool makes callers wait until their deadline, then 503 `unavailable`.
#pragma once
#include <boost/asio/awaitable.hpp>
#include <chrono>
#include <functional>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>
#include <type_traits>

namespace pqxx {
class connection_base;
}
namespace tokend::observability {
class metrics;
}

namespace tokend::store {

using clock = std::chrono::steady_clock;

// Who runs a statement: request-path SQL is what the hot path must avoid.
enum class origin { request, background };

struct pool_options {
  std::string name = "short";  // label in metrics and logs
  std::string conninfo;        // libpq URI or key=value string
  std::size_t size = 8;
  std::chrono::milliseconds statement_timeout{0};            // 0: server default
  std::chrono::milliseconds idle_in_transaction_timeout{0};  // 0: server default
  std::chrono::seconds connect_timeout{5};
  // application_name of its sessions (default "tokend-<name>"); serve adds the instance id so
  // an operator can tell instances apart in pg_stat_activity.
  std::string application_name = {};
};

// Adds libpq parameters (connect_timeout, TCP keepalives, application_name, then `extra`) to a
// conninfo given as a URI or as key=value pairs; a parameter the conninfo already sets is kept.
// Pure; thread-safe.
std::string with_connection_params(
    const std::string& conninfo, std::string_view application_name,
    std::chrono::seconds connect_timeout,
    const std::vector<std::pair<std::string, std::string>>& extra = {});

// Counts one SQL statement for the metrics, attributed to the origin of the running job.
void count_statement();

class db_pool {
 public:
  db_pool(pool_options opts, observability::metrics* m);
  ~db_pool();  // waits for running jobs; no job may be started afterwards
  db_pool(const db_pool&) = delete;
  db_pool& operator=(const db_pool&) = delete;

  class lease {
   public:
    lease(lease&& other) noexcept;
    lease& operator=(lease&&) = delete;
    ~lease();  // returns the connection to the pool

    // Runs f(pqxx::connection_base&) on a DB thread with this lease's connection and
    // returns its result. Throws what f throws; a lost connection becomes api_error
    // `unavailable` and the connection is re-established on next use.
    template <class F>
    boost::asio::awaitable<std::invoke_result_t<F, pqxx::connection_base&>> run(F f) {
      using R = std::invoke_result_t<F, pqxx::connection_base&>;
      if constexpr (std::is_void_v<R>) {
        co_await run_erased([&](pqxx::connection_base& c) { f(c); });
      } else {
        std::optional<R> out;
        co_await run_erased([&](pqxx::connection_base& c) { out.emplace(f(c)); });
        co_return std::move(*out);
      }
    }
    // The connection's server process id (for tests and logs).
    boost::asio::awaitable<int> backend_pid();

   private:
    friend class db_pool;
    lease(db_pool* pool, std::size_t slot, origin o) : pool_(pool), slot_(slot), origin_(o) {}
    boost::asio::awaitable<void> run_erased(std::function<void(pqxx::connection_base&)> fn);
    db_pool* pool_;
    std::size_t slot_;
    origin origin_;
    bool fresh_ = true;  // no job has run on this lease yet
  };

  // Waits for a free connection until `deadline`; throws api_error `unavailable` (503) when
  // the deadline passes first. Thread-safe.
  boost::asio::awaitable<lease> acquire(clock::time_point deadline, origin o = origin::request);

  // acquire + run + release, for single-job work.
  template <class F>
  boost::asio::awaitable<std::invoke_result_t<F, pqxx::connection_base&>> run(
      clock::time_point deadline, F f, origin o = origin::request) {
    auto l = co_await acquire(deadline, o);
    co_return co_await l.run(std::move(f));
  }

  // Waits until no job is running or queued on the DB threads; call after the event loop has
  // stopped and before it is destroyed, so no job outlives the coroutine that started it.
  void drain();

  const pool_options& options() const { return opts_; }
  std::size_t in_use() const;
  std::size_t waiting() const;

 private:
  struct impl;
  void release(std::size_t slot);
  pool_options opts_;
  std::unique_ptr<impl> impl_;
};

}  // namespace tokend::store
