#include "core/schedule_policy.hpp"

#include <algorithm>

namespace tokend::policy {
namespace {

constexpr double kJitterShare = 0.2;

std::chrono::milliseconds jitter(long long row_id, long long window_s) {
  return std::chrono::milliseconds(static_cast<long long>(jitter_fraction(row_id) * kJitterShare *
                                                          1000.0 * static_cast<double>(window_s)));
}

}  // namespace

schedule_facts facts_of(const connection_record& c) {
  schedule_facts f;
  f.row_id = c.row_id;
  f.access_expires_at = c.access_expires_at;
  f.access_lifetime = c.access_lifetime;
  f.has_refresh_token = c.sealed.refresh_token_ct.has_value();
  f.refresh_expires_at = c.refresh_expires_at;
  f.refresh_lifetime = c.refresh_lifetime;
  f.refresh_token_expiring = c.refresh_token_expiring;
  f.next_attempt_at = c.next_attempt_at;
  return f;
}

schedule_settings settings_of(const provider_record& p, std::chrono::seconds keepalive_margin) {
  return schedule_settings{p.refresh_ahead, p.refresh_token_lifetime, keepalive_margin};
}

double jitter_fraction(long long row_id) {
  // splitmix64's finaliser: a fixed bijection, so the value is the same on every instance.
  auto z = static_cast<std::uint64_t>(row_id) + 0x9e3779b97f4a7c15ULL;
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
  z ^= z >> 31;
  return static_cast<double>(z >> 11) / static_cast<double>(1ULL << 53);
}

long long access_window_s(long long access_lifetime, long long refresh_ahead) {
  return std::max<long long>(0, std::min(refresh_ahead, access_lifetime / 2));
}

std::chrono::seconds keepalive_margin(const schedule_facts& f, const schedule_settings& s) {
  const auto life = s.refresh_token_lifetime ? s.refresh_token_lifetime : f.refresh_lifetime;
  if (!life || *life <= 0) return s.keepalive_margin;
  return std::min(s.keepalive_margin, std::chrono::seconds(*life / 2));
}

sys_time access_due_at(const schedule_facts& f, const schedule_settings& s) {
  const auto w = access_window_s(f.access_lifetime, s.refresh_ahead);
  return f.access_expires_at - std::chrono::seconds(w) - jitter(f.row_id, w);
}

std::optional<sys_time> keepalive_due_at(const schedule_facts& f, const schedule_settings& s) {
  if (!f.refresh_expires_at || f.refresh_token_expiring) return std::nullopt;
  const auto m = keepalive_margin(f, s);
  return *f.refresh_expires_at - m - jitter(f.row_id, m.count());
}

std::optional<sys_time> next_refresh_at(const schedule_facts& f, const schedule_settings& s) {
  if (!f.has_refresh_token) return std::nullopt;
  auto due = access_due_at(f, s);
  if (auto k = keepalive_due_at(f, s)) due = std::min(due, *k);
  if (f.next_attempt_at) due = std::max(due, *f.next_attempt_at);
  return due;
}

bool keepalive_renewed(const std::optional<sys_time>& old_expiry,
                       const std::optional<sys_time>& new_expiry, std::chrono::seconds margin,
                       std::chrono::seconds elapsed) {
  if (!new_expiry || !old_expiry) return true;
  const auto needed =
      std::max<std::chrono::seconds>(std::chrono::seconds(2), std::min(margin / 4, elapsed / 2));
  return *new_expiry - *old_expiry >= needed;
}

std::chrono::milliseconds scheduled_backoff(int failures, std::chrono::milliseconds base,
                                            std::chrono::milliseconds cap, std::uint64_t random) {
  cap = std::max(cap, base);
  auto d = base;
  for (int i = 1; i < failures && d < cap; ++i) d *= 2;
  d = std::min(d, cap);
  const double scale =
      0.5 + 0.5 * (static_cast<double>(random >> 11) / static_cast<double>(1ULL << 53));
  return std::chrono::milliseconds(
      std::max<long long>(1, static_cast<long long>(static_cast<double>(d.count()) * scale)));
}

}  // namespace tokend::policy
