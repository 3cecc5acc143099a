// The refresh engine: serves fresh tokens and refreshes each connection exactly once per need.
// Single-flight in four layers: one flight per (tenant, connection) in this process that callers
// await (never a blocking future); a PostgreSQL row lock (SELECT ... FOR UPDATE) that queues
// the instances; the fence, a committed attempt marker per (connection, token_version) that
// keeps every other flight from calling the provider while a sent request may still be
// answered, even when the lock holder's session died; and a compare-and-swap on token_version
// (plus row identity and status) for the write. Internals: refresh/flight.hpp.
#pragma once
#include <boost/asio/any_io_executor.hpp>
#include <boost/asio/awaitable.hpp>
#include <chrono>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>

#include "core/model.hpp"

namespace tokend::store {
class db_pool;
}
namespace tokend::crypto {
class keyring;
}
namespace tokend::oauth {
class http_client;
}
namespace tokend::observability {
class metrics;
}
namespace tokend::async {
class semaphore;
}
namespace tokend::cache {
class caches;
struct cached_token;
}  // namespace tokend::cache

namespace tokend::refresh {

struct engine_options {
  std::string instance_id;
  std::string environment = "development";
  std::chrono::seconds request_timeout{15};
  // How long the answer to a sent refresh request is awaited, even after the callers were
  // answered at their deadline (abandoning it would lose the rotation it may have caused).
  std::chrono::seconds answer_timeout{60};
  std::chrono::seconds force_refresh_min_interval{10};
  std::size_t provider_concurrency = 16;  // concurrent refreshes per provider in this process
  // Percent of the refresh pool one tenant can never take from the others
  // (TOKEND_TENANT_REFRESH_SHARE): a tenant's flights hold at most tenant_refresh_cap() slots.
  unsigned tenant_refresh_share = 25;
  std::chrono::seconds config_error_cooldown{30};
  std::chrono::milliseconds backoff_base{200};
  std::chrono::milliseconds backoff_cap{2000};
  std::chrono::seconds failure_backoff{2};  // no provider call for this long after a failed flight
  std::chrono::milliseconds fence_poll{200};  // how often a fenced flight re-reads the marker
  int max_attempts = 3;
  // The due rule stamped by every write (core/schedule_policy).
  std::chrono::seconds keepalive_margin{604800};
  // Scheduled retries after failures: base * 2^(n-1), at most the access-token window.
  std::chrono::milliseconds scheduled_backoff_base{2000};
  // Test hook: the first commit of a refreshed token set reports a failure after it committed
  // (a COMMIT acknowledgement lost on the wire), so the retry must recognise its own write.
  bool test_lose_commit_ack = false;
};

// Who asked, for events and logs.
struct caller {
  std::string tenant;
  std::string request_id;
  std::chrono::steady_clock::time_point deadline;
};

// A connection the scheduler claimed (store::due_claim, without the store's header).
struct scheduled_claim {
  std::string tenant, id, provider;
  long long row_id = 0;
  long long token_version = 0;
};

// How a scheduled refresh ended, for the scheduler's metrics and its claim.
struct scheduled_report {
  std::string outcome;   // refreshed, not_due, transient, deferred, or an error code
  bool settled = false;  // a committed write already cleared the claim
};

struct token_answer {
  std::shared_ptr<const cache::cached_token> token;  // the token and its rendered reply
  bool deferred = false;  // a needed refresh failed transiently; the still-valid token is served
  bool refreshed = false;  // served by a refresh flight (this caller's own unless `joined`)
  bool joined = false;     // the flight was already running when this caller came
};

namespace detail {
struct engine_deps;
struct flight;
}  // namespace detail

class engine {
 public:
  engine(boost::asio::any_io_executor ex, engine_options opts, store::db_pool& db,
         store::db_pool& refresh_db, const crypto::keyring& keys, oauth::http_client& http,
         observability::metrics& metrics, const wall_clock& clock, cache::caches& caches);
  // Logs (error level) every rotated token set whose write is still pending.
  ~engine();

  // GET /v1/tokens/{id}: the stored token when fresh for min_ttl, else refreshed first.
  // Throws api_error per the contract's outcome table. Thread-safe.
  boost::asio::awaitable<token_answer> get(const caller& who, const std::string& id,
                                           long long min_ttl);
  // POST /v1/tokens/{id}/refresh: conditional (if_token_version) or forced. Thread-safe.
  boost::asio::awaitable<token_answer> refresh(const caller& who, const std::string& id,
                                               std::optional<long long> if_token_version);

  // A proactive refresh of a claimed connection: the same flight, fence and compare-and-swap
  // as on-demand calls (it joins a flight already in progress), with the request timeout as its
  // deadline. Re-checks the due rule under the row lock: a connection no longer due is only
  // re-stamped. Completes when the flight has ended (possibly after its deadline). Never throws.
  boost::asio::awaitable<scheduled_report> run_scheduled(const scheduled_claim& claim);

  // Flights in progress, including those past their callers' deadline that still await a
  // provider answer or retry a write (graceful shutdown waits for zero).
  std::size_t in_flight() const;

 private:
  using flight_key = std::pair<std::string, std::string>;  // (tenant, connection)

  boost::asio::awaitable<token_answer> join_or_start(const caller& who,
                                                     const connection_record& seen, int trigger);
  boost::asio::awaitable<void> run_flight(std::shared_ptr<detail::flight> f);
  // The flight of (who.tenant, id): the one in progress (started = false), or a new one with
  // `trig` from `version` under `who`'s request id and deadline, spawned on the engine
  // (started = true). nullptr while a rotated token set of this connection awaits its write.
  std::shared_ptr<detail::flight> flight_for(const caller& who, const std::string& id, int trig,
                                             long long version, bool& started);
  boost::asio::awaitable<connection_record> load(const caller& who, const std::string& id);
  // Throws 503 `unavailable` while a rotated token set of this connection awaits its write here.
  void refuse_while_pending(const std::string& tenant, const std::string& id) const;

  std::unique_ptr<detail::engine_deps> d_;

  mutable std::mutex mu_;  // guards flights_
  std::map<flight_key, std::shared_ptr<detail::flight>> flights_;
};

}  // namespace tokend::refresh
