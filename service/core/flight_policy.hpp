// The refresh flight's decisions, free of I/O: may this flight call the provider under the fence,
// how long an attempt marker fences its connection, what a failed write after the provider
// answered leads to, and what each caller of a flight is answered.
#pragma once
#include <chrono>
#include <optional>

namespace tokend::policy {

// The open attempt marker at a connection's stored token_version, as read under the row lock
// (expiry compared on the database clock).
struct open_marker {
  long long id = 0;
  bool expired = false;
};

enum class fence_verdict {
  open,       // no open marker: open ours and call
  take_over,  // an expired marker: set it in_doubt and open ours in the same transaction
  proceed,    // the open marker is this flight's own (a retry renews it)
  wait,       // another flight's unexpired marker: no provider call; release the lock and wait
};
// `mine`: the id of this flight's marker, when it has one.
// How many of the refresh pool's `pool` slots one tenant may hold: the pool minus the share
// (percent, rounded up) kept free for the other tenants, and at least 1.
std::size_t tenant_refresh_cap(std::size_t pool, unsigned share_percent);

fence_verdict decide_fence(const std::optional<open_marker>& marker, std::optional<long long> mine);

// How long a marker fences its connection after it was committed: the whole answer window of
// the request sent under it (the send phases fit in the request timeout, the answer may take
// the answer timeout), so a retry sent late is fenced until its answer cannot come any more.
std::chrono::seconds marker_window(std::chrono::seconds answer_timeout,
                                   std::chrono::seconds request_timeout);

// The latest moment the owner may still read an answer, on its own steady clock: the marker
// was committed no earlier than `committed_after`, so it expires on the database clock no
// earlier than committed_after + window; one second is kept in hand.
std::chrono::steady_clock::time_point answer_cap(
    std::chrono::steady_clock::time_point committed_after, std::chrono::seconds window);

// A write after the provider answered (the new token set, or the needs_reauth bookkeeping).
enum class write_outcome {
  committed,        // the compare-and-swap matched and the commit was acknowledged
  already_landed,   // CAS missed, but the stored row is exactly our write: a lost COMMIT ack
  cas_miss,         // CAS missed: the row changed (version, identity or status)
  retryable_error,  // connection loss, timeout, serialization failure, pool exhausted
  fatal_error,      // any other SQL error
};
enum class persist_step { done, retry, give_up };
persist_step after_write(write_outcome o);

// What a caller of a flight is answered.
enum class trigger_kind { on_demand, forced, conditional, scheduled };
struct flight_outcome {
  bool finished = false;  // the flight completed before the caller's deadline
  bool answered = false;  // the provider answered with a new token set (may not be stored yet)
  bool error = false;     // a definitive error every waiter gets
  bool transient = false;
  std::optional<long long> version;  // the token set the flight ended with, when usable
};
struct caller_state {
  trigger_kind trigger = trigger_kind::on_demand;
  long long seen_version = 0;     // the version the caller saw (for conditional: if_token_version)
  bool deadline_passed = false;   // no time left to start or join another flight
  bool stored_unexpired = false;  // the stored access token has not expired yet
};
enum class caller_answer {
  serve,                 // the flight's token set
  serve_deferred,        // the stored token with "refresh_deferred": true
  rejoin,                // start or join another flight (a conditional caller got version N)
  unavailable,           // 503 `unavailable`: the provider answered but the write did not land
  provider_unavailable,  // 503 `provider_unavailable`: the transient fallback had nothing to give
  error,                 // the flight's error
};
caller_answer answer_for(const flight_outcome& f, const caller_state& c);

}  // namespace tokend::policy
