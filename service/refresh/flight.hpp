// Internals of the refresh engine, shared by its three parts: the flight table (engine.cpp),
// the fenced attempt (attempt.cpp: row lock, decisions, fence, provider call) and persistence
// after the provider answered (persist.cpp). Not for use outside refresh/.
#pragma once
#include <atomic>
#include <boost/asio/any_io_executor.hpp>
#include <boost/asio/awaitable.hpp>
#include <chrono>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "async/semaphore.hpp"
#include "async/signal.hpp"
#include "async/token_bucket.hpp"
#include "core/errors.hpp"
#include "core/flight_policy.hpp"
#include "core/model.hpp"
#include "core/refresh_policy.hpp"
#include "refresh/engine.hpp"

namespace pqxx {
class transaction_base;
}

namespace tokend::refresh::detail {

using steady = std::chrono::steady_clock;

// What the engine's parts share. Thread-safe: the references are to thread-safe objects, and the
// provider slots are guarded by slots_mu.
struct engine_deps {
  engine_deps(boost::asio::any_io_executor e, engine_options o, store::db_pool& short_pool,
              store::db_pool& refresh_pool, const crypto::keyring& k, oauth::http_client& h,
              observability::metrics& m, const wall_clock& c, cache::caches& ca)
      : ex(std::move(e)),
        opts(std::move(o)),
        db(short_pool),
        refresh_db(refresh_pool),
        keys(k),
        http(h),
        metrics(m),
        clock(c),
        caches(ca) {}
  ~engine_deps();

  // The per-(tenant, provider) cap on concurrent refreshes in this process.
  async::semaphore& provider_slots(const std::string& tenant, const std::string& provider) const;
  // The per-tenant cap (the tenant share rule), acquired before the provider slot and the pool.
  async::semaphore& tenant_slots(const std::string& tenant) const;
  // The per-(tenant, provider) refresh rate (provider refresh_rate_per_s) of this process.
  async::token_bucket& rate_bucket(const std::string& tenant, const std::string& provider) const;

  boost::asio::any_io_executor ex;
  engine_options opts;
  store::db_pool& db;
  store::db_pool& refresh_db;
  const crypto::keyring& keys;
  oauth::http_client& http;
  observability::metrics& metrics;
  const wall_clock& clock;
  cache::caches& caches;

 private:
  mutable std::mutex slots_mu;
  mutable std::map<std::pair<std::string, std::string>, std::unique_ptr<async::semaphore>> slots;
  mutable std::map<std::string, std::unique_ptr<async::semaphore>> tenant_caps;
  mutable std::map<std::pair<std::string, std::string>, std::unique_ptr<async::token_bucket>>
      buckets;
};

using trigger = policy::trigger_kind;
std::string trigger_name(trigger t);

struct flight_result {
  std::optional<connection_record> conn;    // the state after the flight
  std::optional<std::string> access_token;  // its access token, when it could be opened
  std::optional<api_error> error;           // a failure every waiter gets
  bool transient = false;                   // the refresh failed transiently: callers fall back
  int retry_after = 1;
  bool not_due = false;  // a scheduled flight found the connection not due: only re-stamped
};

// One refresh of one connection in this process. Owned by the engine's flight table (not by
// any caller) from start to end, which may be long after the callers' deadline: a sent request
// is awaited up to the answer timeout and a rotated token set is written until it lands.
struct flight {
  struct waiter {
    explicit waiter(boost::asio::any_io_executor ex) : done(std::move(ex)) {}
    async::signal done;  // notified when the flight completes
  };
  std::string tenant, id;
  trigger t = trigger::on_demand;
  long long trigger_version = 0;
  std::string request_id;
  steady::time_point deadline;  // the callers' deadline (the first caller's request deadline)
  steady::time_point started = steady::now();

  // Set once the provider answered with a new token set: from then on the stored token may be
  // void at the provider, and no caller of this connection is given it.
  std::atomic<bool> answered{false};
  // Set when the callers' deadline passed with that token set not stored yet: the write goes on
  // in the background, and this instance answers 503 for the connection meanwhile.
  std::atomic<bool> persist_pending{false};
  // Set when a committed write of this flight cleared the row's scheduler claim.
  std::atomic<bool> settled{false};

  std::mutex mu;  // guards done, result, waiters, joined, pending_fingerprint
  bool done = false;
  flight_result result;
  std::vector<std::shared_ptr<waiter>> waiters;
  int joined = 0;
  std::string pending_fingerprint;  // the new refresh token's, while persist_pending
};

// Errors of the outcome table.
api_error reauth_error(const connection_record& c);
api_error provider_unavailable_error(int retry_after);  // 503 provider_unavailable (transient)
api_error
write_pending_error();  // 503 unavailable: the provider answered, the write has not landed
std::string last_error_json(std::string_view code, const policy::classification& c, int status,
                            sys_time at);

// An event of this flight about `row`, with the flight's trigger, request and join count.
event_record flight_event(const engine_deps& d, flight& f, const connection_record& row);

// The access token of `c`; on failure records a decrypt_failed event and throws decrypt_failed.
boost::asio::awaitable<std::string> open_or_fail(const engine_deps& d, const caller& who,
                                                 const connection_record& c,
                                                 std::string_view trigger_name);

// Runs the flight to its end (attempt.cpp). Throws api_error for outcomes every waiter gets.
boost::asio::awaitable<flight_result> fly(const engine_deps& d, flight& f);

// A write made necessary by the provider's answer (persist.cpp): `write(tx)` returns true when
// its guarded statements matched, false on a compare-and-swap miss; it does not commit.
struct answer_write {
  std::function<bool(pqxx::transaction_base&)> write;
  // On a miss: true when the stored row already is this write (its COMMIT acknowledgement was
  // lost). Optional.
  std::function<bool(pqxx::transaction_base&)> landed;
  bool lose_first_ack = false;  // test hook (engine_options::test_lose_commit_ack)
  std::string what;             // for logs
};

class row_lock;

// Commits `w`: in the lock transaction while `lock` holds it, else in transactions of their own
// on the short pool, retried on connection and serialization failures until `until` (or, when
// `background` is set, until it lands: `f.persist_pending` is raised once the callers'
// deadline has passed). Returns the final outcome (committed, already_landed, cas_miss,
// fatal_error, or retryable_error when `until` passed first).
boost::asio::awaitable<policy::write_outcome> commit_after_answer(const engine_deps& d, flight& f,
                                                                  row_lock& lock,
                                                                  const answer_write& w,
                                                                  steady::time_point until,
                                                                  bool background);

}  // namespace tokend::refresh::detail
