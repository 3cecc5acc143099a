// The scheduler's decisions, free of I/O: when a connection is next due for a proactive
// refresh (the access-token window with a stable per-connection jitter, or the refresh token's
// keep-alive margin), whether a keep-alive refresh renewed the refresh token, and the back-off
// after a failed attempt. Every writer of a connection row stamps next_refresh_at with
// next_refresh_at() so the claim query is one index range scan.
#pragma once
#include <chrono>
#include <cstdint>
#include <optional>

#include "core/model.hpp"
#include "core/time.hpp"

namespace tokend::policy {

// What the due rule reads from a connection.
struct schedule_facts {
  long long row_id = 0;  // seeds the jitter (stable across instances and restarts)
  sys_time access_expires_at;
  long long access_lifetime = 0;  // seconds the access token was issued for
  bool has_refresh_token = false;
  std::optional<sys_time> refresh_expires_at;  // the refresh token's known expiry
  std::optional<long long> refresh_lifetime;   // seconds it was issued for (refresh_expires_in)
  // A refresh inside the keep-alive margin did not move the expiry: keep-alive stops.
  bool refresh_token_expiring = false;
  std::optional<sys_time> next_attempt_at;  // back-off after failures: never due before
};

// What it reads from the provider and the configuration.
struct schedule_settings {
  long long refresh_ahead = 600;                    // provider refresh_ahead, seconds
  std::optional<long long> refresh_token_lifetime;  // provider refresh_token_lifetime
  std::chrono::seconds keepalive_margin{604800};    // TOKEND_KEEPALIVE_MARGIN
};

schedule_facts facts_of(const connection_record& c);
schedule_settings settings_of(const provider_record& p, std::chrono::seconds keepalive_margin);

// A stable value in [0, 1) from the row id (a 64-bit mix, so consecutive ids spread out).
double jitter_fraction(long long row_id);

// The access-token window: min(refresh_ahead, half the issued lifetime), in seconds.
long long access_window_s(long long access_lifetime, long long refresh_ahead);

// The keep-alive margin: min(keepalive_margin, half the refresh token's lifetime (the
// provider's refresh_token_lifetime when set, else the one it came with)); the whole
// keepalive_margin when no lifetime is known.
std::chrono::seconds keepalive_margin(const schedule_facts& f, const schedule_settings& s);

// When the access token enters its window, moved earlier (never later) by up to 20 % of it.
sys_time access_due_at(const schedule_facts& f, const schedule_settings& s);

// When the refresh token enters the keep-alive margin (same jitter); nullopt when its expiry
// is unknown or keep-alive has stopped (refresh_token_expiring).
std::optional<sys_time> keepalive_due_at(const schedule_facts& f, const schedule_settings& s);

// The earlier of the two, never before next_attempt_at; nullopt (never due) without a refresh
// token. The caller stores NULL for needs_reauth rows.
std::optional<sys_time> next_refresh_at(const schedule_facts& f, const schedule_settings& s);

// After a refresh of a connection that was inside the keep-alive margin: did the new expiry
// move forward? A sliding lifetime moves it by about the time since the token set was last
// written (`elapsed`), an absolute one not at all; so it counts as renewed when it moved by
// at least min(margin / 4, elapsed / 2), and never less than 2 s (rounding of
// refresh_expires_in). An unknown expiry, old or new, counts as renewed.
bool keepalive_renewed(const std::optional<sys_time>& old_expiry,
                       const std::optional<sys_time>& new_expiry, std::chrono::seconds margin,
                       std::chrono::seconds elapsed);

// Delay before the next scheduled try after `failures` consecutive failures (>= 1):
// min(cap, base * 2^(failures-1)) scaled into [1/2, 1] by `random` (never zero, so a failing
// connection is never retried in a tight loop). cap is at least base.
std::chrono::milliseconds scheduled_backoff(int failures, std::chrono::milliseconds base,
                                            std::chrono::milliseconds cap, std::uint64_t random);

}  // namespace tokend::policy
