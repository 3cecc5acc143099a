// The row lock of one refresh flight: one refresh-pool lease and the transaction holding
// SELECT ... FOR UPDATE on the connection row. It queues the instances; it is not the fence
// (its session can die mid-call and PostgreSQL then hands the lock to the next waiter).
// Used by one coroutine at a time (the flight's).
#pragma once
#include <boost/asio/awaitable.hpp>
#include <memory>
#include <optional>
#include <pqxx/pqxx>
#include <string>
#include <type_traits>

#include "core/model.hpp"
#include "store/db_pool.hpp"

namespace tokend::refresh::detail {

class row_lock {
 public:
  explicit row_lock(store::db_pool& pool) : pool_(pool) {}
  row_lock(const row_lock&) = delete;
  row_lock& operator=(const row_lock&) = delete;
  ~row_lock();

  enum class status {
    locked,     // held; `row` is the locked row
    missing,    // no such connection (nothing held)
    timed_out,  // no lease, or the lock wait reached the deadline (nothing held)
    lost,       // the database connection failed (nothing held)
  };
  struct result {
    status s = status::lost;
    std::optional<connection_record> row;
  };
  // Leases a refresh-pool connection and locks the row, waiting until `deadline`; the lock
  // transaction's idle_in_transaction_session_timeout is the time to `deadline` plus
  // `idle_margin` (the lock is released at the deadline at the latest). Never throws for
  // database failures: they are `lost`.
  boost::asio::awaitable<result> lock(const std::string& tenant, const std::string& id,
                                      std::chrono::steady_clock::time_point deadline,
                                      std::chrono::milliseconds idle_margin);

  bool held() const { return tx_ != nullptr; }

  // Runs f(pqxx::work&) in the lock transaction on the lease's DB thread. Throws what f or the
  // pool throws; after a throw call abandon().
  template <class F>
  boost::asio::awaitable<std::invoke_result_t<F&, pqxx::work&>> run(F f) {
    using R = std::invoke_result_t<F&, pqxx::work&>;
    pqxx::work* tx = tx_.get();
    if constexpr (std::is_void_v<R>) {
      co_await lease_->run([&](pqxx::connection_base&) { f(*tx); });
    } else {
      co_return co_await lease_->run([&](pqxx::connection_base&) { return f(*tx); });
    }
  }

  // Commits what the lock transaction holds and returns the lease; false when the commit
  // failed (the lock is released either way). No-op when not held.
  boost::asio::awaitable<bool> commit();
  // Rolls back (best effort) and returns the lease. No-op when not held.
  boost::asio::awaitable<void> release();
  // After f committed the transaction itself: forget it and return the lease.
  boost::asio::awaitable<void> committed();
  // After a failure: roll back where the connection still works, drop the transaction where
  // it does not, and return the lease.
  boost::asio::awaitable<void> abandon();

 private:
  store::db_pool& pool_;
  std::optional<store::db_pool::lease> lease_;
  std::unique_ptr<pqxx::work> tx_;
};

}  // namespace tokend::refresh::detail
