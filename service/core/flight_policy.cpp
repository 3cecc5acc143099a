#include "core/flight_policy.hpp"

namespace tokend::policy {

std::size_t tenant_refresh_cap(std::size_t pool, unsigned share_percent) {
  const std::size_t reserved = (pool * share_percent + 99) / 100;
  return reserved >= pool ? 1 : std::max<std::size_t>(1, pool - reserved);
}

fence_verdict decide_fence(const std::optional<open_marker>& marker,
                           std::optional<long long> mine) {
  if (!marker) return fence_verdict::open;
  if (mine && marker->id == *mine) return fence_verdict::proceed;
  if (marker->expired) return fence_verdict::take_over;
  return fence_verdict::wait;
}

std::chrono::seconds marker_window(std::chrono::seconds answer_timeout,
                                   std::chrono::seconds request_timeout) {
  return answer_timeout + request_timeout;
}

std::chrono::steady_clock::time_point answer_cap(
    std::chrono::steady_clock::time_point committed_after, std::chrono::seconds window) {
  return committed_after + window - std::chrono::seconds(1);
}

persist_step after_write(write_outcome o) {
  switch (o) {
    case write_outcome::committed:
    case write_outcome::already_landed:
      return persist_step::done;
    case write_outcome::retryable_error:
      return persist_step::retry;
    case write_outcome::cas_miss:
    case write_outcome::fatal_error:
      return persist_step::give_up;
  }
  return persist_step::give_up;
}

caller_answer answer_for(const flight_outcome& f, const caller_state& c) {
  if (!f.finished) {
    // Still running at the caller's deadline. Once the provider has answered, the stored token
    // may be void (Airtable voids the previous access token on refresh): never hand it out.
    if (f.answered) return caller_answer::unavailable;
  } else {
    if (f.error) return caller_answer::error;
    if (!f.transient && f.version) {
      // A conditional caller knows version N fails at the provider: it must get a newer one,
      // also when it joined a flight that ended without calling the provider.
      if (c.trigger == trigger_kind::conditional && *f.version <= c.seen_version) {
        return c.deadline_passed ? caller_answer::provider_unavailable : caller_answer::rejoin;
      }
      return caller_answer::serve;
    }
  }
  if (c.trigger == trigger_kind::conditional) return caller_answer::provider_unavailable;
  return c.stored_unexpired ? caller_answer::serve_deferred : caller_answer::provider_unavailable;
}

}  // namespace tokend::policy
