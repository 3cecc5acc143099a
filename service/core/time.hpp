// Wall-clock time in the domain: RFC 3339 formatting/parsing and an injectable clock, so policy
// code is tested on a fake clock.
#pragma once
#include <chrono>
#include <optional>
#include <string>
#include <string_view>

namespace tokend {

using sys_time = std::chrono::time_point<std::chrono::system_clock, std::chrono::microseconds>;

// "2026-11-27T09:06:34Z" (whole seconds, UTC). Thread-safe.
std::string format_rfc3339(sys_time t);
// Accepts YYYY-MM-DDTHH:MM:SS[.frac](Z|+HH:MM|-HH:MM); nullopt when malformed.
std::optional<sys_time> parse_rfc3339(std::string_view s);

long long to_micros(sys_time t);
sys_time from_micros(long long us);

// The source of "now" for domain decisions. The system clock by default; tests inject their own.
class wall_clock {
 public:
  virtual ~wall_clock() = default;
  virtual sys_time now() const;
};

}  // namespace tokend
