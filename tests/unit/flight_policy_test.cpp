// The fence, the marker window, the write-after-answer steps and what each caller of a flight is
// answered, row by row against the contract.
#include <catch2/catch.hpp>

#include "core/flight_policy.hpp"

using namespace tokend::policy;
using namespace std::chrono_literals;

TEST_CASE("fence: no marker opens, an expired one is taken over, another's open one waits",
          "[flight_policy]") {
  CHECK(decide_fence(std::nullopt, std::nullopt) == fence_verdict::open);
  CHECK(decide_fence(open_marker{7, false}, std::nullopt) == fence_verdict::wait);
  CHECK(decide_fence(open_marker{7, true}, std::nullopt) == fence_verdict::take_over);
  // A flight never fences itself: its own marker, expired or not, is its to renew.
  CHECK(decide_fence(open_marker{7, false}, 7) == fence_verdict::proceed);
  CHECK(decide_fence(open_marker{7, true}, 7) == fence_verdict::proceed);
  CHECK(decide_fence(open_marker{8, false}, 7) == fence_verdict::wait);
}

TEST_CASE("a marker fences its version for the whole answer window of its call",
          "[flight_policy]") {
  CHECK(marker_window(60s, 15s) == 75s);
  const auto t0 = std::chrono::steady_clock::time_point{} + 1000s;
  // The owner stops reading an answer one second before the marker can have expired.
  CHECK(answer_cap(t0, 75s) == t0 + 74s);
}

TEST_CASE("a write after the provider answered: landed, retried or given up", "[flight_policy]") {
  CHECK(after_write(write_outcome::committed) == persist_step::done);
  CHECK(after_write(write_outcome::already_landed) == persist_step::done);  // lost COMMIT ack
  CHECK(after_write(write_outcome::retryable_error) == persist_step::retry);
  CHECK(after_write(write_outcome::cas_miss) == persist_step::give_up);
  CHECK(after_write(write_outcome::fatal_error) == persist_step::give_up);
}

namespace {
flight_outcome done_with(long long version) {
  flight_outcome f;
  f.finished = true;
  f.version = version;
  return f;
}
flight_outcome done_transient() {
  flight_outcome f;
  f.finished = true;
  f.transient = true;
  return f;
}
caller_state caller(trigger_kind t, long long seen, bool unexpired = true, bool late = false) {
  caller_state c;
  c.trigger = t;
  c.seen_version = seen;
  c.stored_unexpired = unexpired;
  c.deadline_passed = late;
  return c;
}
}  // namespace

TEST_CASE("who gets what when a flight ends", "[flight_policy]") {
  using enum trigger_kind;
  SECTION("a refreshed or newer token set is served") {
    CHECK(answer_for(done_with(2), caller(on_demand, 1)) == caller_answer::serve);
    CHECK(answer_for(done_with(2), caller(forced, 1)) == caller_answer::serve);
    CHECK(answer_for(done_with(3), caller(conditional, 2)) == caller_answer::serve);
  }
  SECTION("a conditional caller never gets version N back") {
    CHECK(answer_for(done_with(2), caller(conditional, 2)) == caller_answer::rejoin);
    CHECK(answer_for(done_with(1), caller(conditional, 2)) == caller_answer::rejoin);
    CHECK(answer_for(done_with(2), caller(conditional, 2, true, true)) ==
          caller_answer::provider_unavailable);
    // GET and forced callers take what a fallen-back flight served.
    CHECK(answer_for(done_with(2), caller(on_demand, 2)) == caller_answer::serve);
    CHECK(answer_for(done_with(2), caller(forced, 2)) == caller_answer::serve);
  }
  SECTION("transient failures: the still-valid token, except for a conditional caller") {
    CHECK(answer_for(done_transient(), caller(on_demand, 1)) == caller_answer::serve_deferred);
    CHECK(answer_for(done_transient(), caller(forced, 1)) == caller_answer::serve_deferred);
    CHECK(answer_for(done_transient(), caller(on_demand, 1, false)) ==
          caller_answer::provider_unavailable);
    CHECK(answer_for(done_transient(), caller(conditional, 1)) ==
          caller_answer::provider_unavailable);
  }
  SECTION("a flight's error reaches every caller") {
    flight_outcome f;
    f.finished = true;
    f.error = true;
    CHECK(answer_for(f, caller(on_demand, 1)) == caller_answer::error);
    CHECK(answer_for(f, caller(conditional, 1)) == caller_answer::error);
  }
  SECTION("the caller's deadline passes while the flight runs") {
    flight_outcome running;
    CHECK(answer_for(running, caller(on_demand, 1)) == caller_answer::serve_deferred);
    CHECK(answer_for(running, caller(on_demand, 1, false)) == caller_answer::provider_unavailable);
    CHECK(answer_for(running, caller(conditional, 1)) == caller_answer::provider_unavailable);
    // Once the provider answered, the stored token may be void: 503 unavailable, never it.
    running.answered = true;
    CHECK(answer_for(running, caller(on_demand, 1)) == caller_answer::unavailable);
    CHECK(answer_for(running, caller(forced, 1)) == caller_answer::unavailable);
    CHECK(answer_for(running, caller(conditional, 1)) == caller_answer::unavailable);
  }
}

TEST_CASE("the tenant share keeps part of the refresh pool for other tenants", "[flight_policy]") {
  using tokend::policy::tenant_refresh_cap;
  CHECK(tenant_refresh_cap(16, 25) == 12);
  CHECK(tenant_refresh_cap(4, 25) == 3);
  CHECK(tenant_refresh_cap(10, 25) == 7);  // the kept share rounds up
  CHECK(tenant_refresh_cap(16, 0) == 16);
  CHECK(tenant_refresh_cap(1, 25) == 1);   // a tenant can always refresh
  CHECK(tenant_refresh_cap(10, 90) == 1);
}
