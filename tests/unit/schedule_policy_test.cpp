// The scheduler's due rule, keep-alive stop, back-off and the per-provider token bucket.
#include <catch2/catch.hpp>

#include <algorithm>
#include <vector>

#include "async/token_bucket.hpp"
#include "core/schedule_policy.hpp"

using namespace tokend;
using namespace tokend::policy;
using namespace std::chrono_literals;

namespace {
const sys_time t0 = sys_time{} + std::chrono::hours(24 * 365 * 50);

schedule_facts facts(long long row_id, long long lifetime, sys_time expires) {
  schedule_facts f;
  f.row_id = row_id;
  f.access_lifetime = lifetime;
  f.access_expires_at = expires;
  f.has_refresh_token = true;
  return f;
}
}  // namespace

TEST_CASE("access window: min(refresh_ahead, half the lifetime), moved earlier by <= 20 % jitter",
          "[schedule_policy]") {
  schedule_settings s;  // refresh_ahead 600
  CHECK(access_window_s(3600, 600) == 600);
  CHECK(access_window_s(300, 600) == 150);  // 300 s tokens: refreshed ~ every 150 s
  CHECK(access_window_s(0, 600) == 0);
  for (long long row = 1; row <= 500; ++row) {
    const auto f = facts(row, 3600, t0 + 3600s);
    const auto due = access_due_at(f, s);
    CHECK(due <= t0 + 3000s);           // never later than the window
    CHECK(due >= t0 + 3000s - 120s);    // at most 20 % of 600 s earlier
    CHECK(due == access_due_at(f, s));  // stable
  }
  // 300 s tokens, refresh_ahead 600: due 150..180 s before expiry, not continuously.
  const auto f = facts(42, 300, t0 + 300s);
  const auto due = *next_refresh_at(f, s);
  CHECK(due <= t0 + 150s);
  CHECK(due >= t0 + 120s);
}

TEST_CASE("jitter spreads consecutive row ids over the window", "[schedule_policy]") {
  std::vector<double> v;
  for (long long row = 1000; row < 1200; ++row) v.push_back(jitter_fraction(row));
  std::sort(v.begin(), v.end());
  CHECK(v.front() >= 0.0);
  CHECK(v.back() < 1.0);
  // Each fifth of [0, 1) holds a share of the 200 values (uniform would be 40).
  for (int q = 0; q < 5; ++q) {
    const auto n = std::count_if(v.begin(), v.end(),
                                 [&](double x) { return x >= q * 0.2 && x < (q + 1) * 0.2; });
    CHECK(n >= 20);
    CHECK(n <= 60);
  }
}

TEST_CASE("keep-alive: due within min(margin, half the refresh lifetime) of the known expiry",
          "[schedule_policy]") {
  schedule_settings s;  // margin 7 days
  auto f = facts(7, 3600, t0 + 3600s);
  f.refresh_expires_at = t0 + 24h * 60;  // 60 days
  f.refresh_lifetime = 60LL * 86400;
  // The access token is due first.
  CHECK(*next_refresh_at(f, s) == access_due_at(f, s));
  // An access token valid for 90 days: keep-alive decides, 7 days (+ jitter) before expiry.
  f.access_expires_at = t0 + 24h * 90;
  f.access_lifetime = 90LL * 86400;
  const auto k = *keepalive_due_at(f, s);
  CHECK(k <= t0 + 24h * 53);
  CHECK(k >= t0 + 24h * 53 - 24h * 7 / 5);
  CHECK(*next_refresh_at(f, s) == k);
  // A 1-day sliding lifetime: margin 12 h, not 7 days (not refreshed continuously).
  f.refresh_expires_at = t0 + 24h;
  f.refresh_lifetime = 86400;
  CHECK(keepalive_margin(f, s) == 12h);
  CHECK(*keepalive_due_at(f, s) >= t0 + 12h - 12h / 5);
  CHECK(*keepalive_due_at(f, s) <= t0 + 12h);
  // The provider's refresh_token_lifetime wins over the lifetime the token came with.
  s.refresh_token_lifetime = 4 * 3600;
  CHECK(keepalive_margin(f, s) == 2h);
  // Keep-alive stopped: only the access token counts.
  f.refresh_token_expiring = true;
  CHECK_FALSE(keepalive_due_at(f, s).has_value());
  CHECK(*next_refresh_at(f, s) == access_due_at(f, s));
  // Unknown expiry: no keep-alive.
  f.refresh_token_expiring = false;
  f.refresh_expires_at.reset();
  CHECK_FALSE(keepalive_due_at(f, s).has_value());
}

TEST_CASE("never due without a refresh token; never before the back-off", "[schedule_policy]") {
  schedule_settings s;
  auto f = facts(9, 3600, t0);
  f.has_refresh_token = false;
  CHECK_FALSE(next_refresh_at(f, s).has_value());
  f.has_refresh_token = true;
  f.next_attempt_at = t0 + 10s;
  CHECK(*next_refresh_at(f, s) == t0 + 10s);
}

TEST_CASE("keep-alive renewed when the expiry moved by about the time since the last write",
          "[schedule_policy]") {
  // Refreshed 12 h after the last write with a 12 h margin: a sliding lifetime moves by 12 h.
  CHECK(keepalive_renewed(t0, t0 + 12h, 12h, 12h));
  CHECK(keepalive_renewed(t0, t0 + 3h, 12h, 12h));
  CHECK_FALSE(keepalive_renewed(t0, t0 + 1s, 12h, 12h));  // an absolute lifetime
  CHECK_FALSE(keepalive_renewed(t0, t0, 12h, 12h));
  // A sliding 3-day token under a 7-day margin, refreshed 1 h after its last write: it moved
  // by 1 h, which is all a sliding lifetime can move in that time.
  CHECK(keepalive_renewed(t0, t0 + 1h, 24h * 7, 1h));
  CHECK_FALSE(keepalive_renewed(t0, t0 + 1s, 24h * 7, 1h));
  // Never less than 2 s: rounding of refresh_expires_in is not a renewal.
  CHECK_FALSE(keepalive_renewed(t0, t0 + 1s, 10s, 0s));
  CHECK(keepalive_renewed(std::nullopt, t0, 12h, 12h));
  CHECK(keepalive_renewed(t0, std::nullopt, 12h, 12h));
}

TEST_CASE("scheduled back-off doubles to the cap and is never zero", "[schedule_policy]") {
  for (std::uint64_t r : {0ULL, 1ULL << 62, ~0ULL}) {
    const auto d1 = scheduled_backoff(1, 2000ms, 600000ms, r);
    CHECK(d1 >= 1000ms);
    CHECK(d1 <= 2000ms);
    const auto d3 = scheduled_backoff(3, 2000ms, 600000ms, r);
    CHECK(d3 >= 4000ms);
    CHECK(d3 <= 8000ms);
    const auto d30 = scheduled_backoff(30, 2000ms, 20000ms, r);
    CHECK(d30 >= 10000ms);
    CHECK(d30 <= 20000ms);
    // A window below the base: the base.
    CHECK(scheduled_backoff(5, 2000ms, 0ms, r) <= 2000ms);
    CHECK(scheduled_backoff(5, 2000ms, 0ms, r) >= 1000ms);
  }
}

TEST_CASE("token bucket: a 200 ms burst, then the rate", "[schedule_policy]") {
  async::token_bucket b;
  const auto now = std::chrono::steady_clock::time_point{} + 1000s;
  int taken = 0;
  while (!b.try_take(now, 50, false)) ++taken;
  CHECK(taken == 10);  // the burst: 200 ms worth
  // 100 ms later: 5 more.
  taken = 0;
  while (!b.try_take(now + 100ms, 50, false)) ++taken;
  CHECK(taken == 5);
  // A full second later the bucket holds its burst again, not a second's worth.
  taken = 0;
  while (!b.try_take(now + 1100ms, 50, false)) ++taken;
  CHECK(taken == 10);
  // The wait it reports until the next token: 20 ms at 50/s.
  const auto w = b.try_take(now + 100ms, 50, false);
  REQUIRE(w.has_value());
  CHECK(*w <= 21ms);
  CHECK(*w >= 1ms);
}
