// Persistence after the provider answered. The answer may have rotated the refresh token: from
// then on the stored one may be void, so the write is never given up on a transient failure.
// It goes in the lock transaction while the flight holds it, else on new sessions of the short
// pool, retried on connection and serialization failures; a lost COMMIT acknowledgement is
// recognised on the retry instead of being reported as a conflict.
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/this_coro.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <pqxx/pqxx>

#include "observability/log.hpp"
#include "refresh/flight.hpp"
#include "refresh/row_lock.hpp"
#include "store/db_pool.hpp"

namespace asio = boost::asio;

namespace tokend::refresh::detail {
namespace {

constexpr auto kFirstPause = std::chrono::milliseconds(200);
constexpr auto kMaxPause = std::chrono::milliseconds(1000);
constexpr auto kJobDeadline = std::chrono::seconds(5);  // one try's wait for a pool connection

// One try on a session of its own.
asio::awaitable<policy::write_outcome> try_on_new_session(const engine_deps& d,
                                                          const answer_write& w,
                                                          steady::time_point job_deadline) {
  using policy::write_outcome;
  try {
    co_return co_await d.db.run(job_deadline, [&](pqxx::connection_base& c) {
      pqxx::work tx(c);
      if (w.write(tx)) {
        tx.commit();
        return write_outcome::committed;
      }
      if (w.landed && w.landed(tx)) return write_outcome::already_landed;
      return write_outcome::cas_miss;
    });
  } catch (const api_error& e) {
    // The pool's failures: connection lost, statement timeout, no free connection.
    if (e.code() == errc::unavailable) co_return write_outcome::retryable_error;
    co_return write_outcome::fatal_error;
  } catch (const pqxx::in_doubt_error&) {
    co_return write_outcome::retryable_error;  // the retry's `landed` check tells
  } catch (const pqxx::serialization_failure&) {
    co_return write_outcome::retryable_error;
  } catch (const pqxx::deadlock_detected&) {
    co_return write_outcome::retryable_error;
  } catch (const pqxx::broken_connection&) {
    co_return write_outcome::retryable_error;
  } catch (const std::exception& e) {
    log::write(log::level::error, "write after the provider answered failed",
               {{"what", w.what}, {"error", e.what()}});
    co_return write_outcome::fatal_error;
  }
}

}  // namespace

asio::awaitable<policy::write_outcome> commit_after_answer(const engine_deps& d, flight& f,
                                                           row_lock& lock, const answer_write& w,
                                                           steady::time_point until,
                                                           bool background) {
  using policy::write_outcome;
  if (lock.held()) {
    bool failed = false;
    try {
      const bool ok = co_await lock.run([&](pqxx::work& tx) {
        if (!w.write(tx)) return false;
        tx.commit();
        return true;
      });
      if (ok && w.lose_first_ack) {
        co_await lock.committed();
        throw std::runtime_error("test hook: the COMMIT acknowledgement was lost");
      }
      if (ok) {
        co_await lock.committed();
        co_return write_outcome::committed;
      }
      // A miss under our own row lock: the row changed before we locked it. Never overwrite.
      co_await lock.release();
      co_return write_outcome::cas_miss;
    } catch (const std::exception& e) {
      log::write(
          log::level::warn, "write on the lock session failed; retrying on a new session",
          {{"tenant", f.tenant}, {"connection", f.id}, {"what", w.what}, {"error", e.what()}},
          f.request_id);
      failed = true;
    }
    if (failed) co_await lock.abandon();
  }
  auto pause = kFirstPause;
  for (int tries = 1;; ++tries) {
    const auto job_deadline = background ? steady::now() + kJobDeadline : until;
    const auto o = co_await try_on_new_session(d, w, job_deadline);
    if (policy::after_write(o) != policy::persist_step::retry) {
      if ((tries > 1 || o == write_outcome::already_landed) && o != write_outcome::fatal_error) {
        log::write(log::level::warn, "write after the provider answered landed on a retry",
                   {{"tenant", f.tenant},
                    {"connection", f.id},
                    {"what", w.what},
                    {"tries", tries},
                    {"already_landed", o == write_outcome::already_landed}},
                   f.request_id);
      }
      co_return o;
    }
    log::write(log::level::warn, "persist retry failed",
               {{"tenant", f.tenant}, {"connection", f.id}, {"what", w.what}, {"tries", tries}},
               f.request_id);
    if (!background && steady::now() + pause >= until) co_return o;
    if (background && steady::now() >= f.deadline && !f.persist_pending.exchange(true)) {
      std::string fp;
      {
        std::lock_guard lk(f.mu);
        fp = f.pending_fingerprint;
      }
      log::write(
          log::level::error,
          "PERSIST PENDING: a rotated token set is not stored yet; retrying in the "
          "background, this instance answers 503 for the connection meanwhile",
          {{"tenant", f.tenant}, {"connection", f.id}, {"new_refresh_token_fingerprint", fp}},
          f.request_id);
    }
    asio::steady_timer t(co_await asio::this_coro::executor, pause);
    co_await t.async_wait(asio::use_awaitable);
    pause = std::min(pause * 2, std::chrono::duration_cast<std::chrono::milliseconds>(kMaxPause));
  }
}

}  // namespace tokend::refresh::detail
