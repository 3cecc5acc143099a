#include "refresh/row_lock.hpp"

#include "core/errors.hpp"
#include "observability/log.hpp"
#include "store/repository.hpp"

namespace asio = boost::asio;
using steady = std::chrono::steady_clock;

namespace tokend::refresh::detail {

row_lock::~row_lock() {
  // Normally released by the flight; a transaction left here belongs to a connection that
  // failed or to a coroutine torn down at exit: never talk to the server from a destructor
  // that may run on the event loop.
  if (tx_) (void)tx_.release();
}

asio::awaitable<row_lock::result> row_lock::lock(const std::string& tenant, const std::string& id,
                                                 steady::time_point deadline,
                                                 std::chrono::milliseconds idle_margin) {
  result out;
  try {
    lease_.emplace(co_await pool_.acquire(deadline));
  } catch (const api_error&) {
    out.s = status::timed_out;  // waiting for a refresh-pool lease: the transient fallback
    co_return out;
  }
  const auto left_ms = std::max<long long>(
      100, std::chrono::duration_cast<std::chrono::milliseconds>(deadline - steady::now()).count());
  bool failed = false;
  try {
    out = co_await lease_->run([&](pqxx::connection_base& c) {
      result r;
      tx_ = std::make_unique<pqxx::work>(c);
      tx_->exec("SET LOCAL lock_timeout = " + std::to_string(left_ms) +
                "; SET LOCAL idle_in_transaction_session_timeout = " +
                std::to_string(left_ms + idle_margin.count()));
      try {
        r.row = store::get_connection(*tx_, tenant, id, true);
      } catch (const pqxx::sql_error& e) {
        if (e.sqlstate() != "55P03") throw;
        tx_.reset();  // lock_timeout: another instance holds the row
        r.s = status::timed_out;
        return r;
      }
      if (!r.row) {
        tx_.reset();
        r.s = status::missing;
        return r;
      }
      r.s = status::locked;
      return r;
    });
  } catch (const std::exception& e) {
    log::write(log::level::warn, "row lock failed", {{"connection", id}, {"error", e.what()}});
    failed = true;
  }
  if (failed) {
    co_await abandon();
    out = result{};
    out.s = status::lost;
    co_return out;
  }
  if (out.s != status::locked) lease_.reset();
  co_return out;
}

asio::awaitable<bool> row_lock::commit() {
  if (!tx_) co_return true;
  bool ok = true;
  try {
    co_await lease_->run([&](pqxx::connection_base&) {
      tx_->commit();
      tx_.reset();
    });
  } catch (const std::exception& e) {
    log::write(log::level::warn, "lock transaction commit failed", {{"error", e.what()}});
    ok = false;
  }
  co_await abandon();
  co_return ok;
}

asio::awaitable<void> row_lock::release() { co_await abandon(); }

asio::awaitable<void> row_lock::committed() {
  tx_.reset();  // committed: the destructor sends nothing
  lease_.reset();
  co_return;
}

asio::awaitable<void> row_lock::abandon() {
  if (tx_ && lease_) {
    // Roll back on the DB thread (the destructor talks to the server). On a lost connection the
    // lease refuses to run anything: then the object is dropped and the pool replaces the
    // connection when the slot is leased next.
    try {
      co_await lease_->run([&](pqxx::connection_base&) { tx_.reset(); });
    } catch (const std::exception&) {
    }
  }
  if (tx_) (void)tx_.release();
  lease_.reset();
}

}  // namespace tokend::refresh::detail
