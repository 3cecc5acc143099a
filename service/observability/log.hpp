// Structured logging: one JSON object per line, or a human text format. Every line carries ts,
// level, msg, instance, environment and request_id (when there is one).
//
// Lines are rendered without a JSON DOM, into a per-thread buffer (record), and handed to one
// background writer (line_writer) that writes them in batches: at least every 100 ms, at once
// for warn and above, and on shutdown(). Its queue is bounded (TOKEND_LOG_QUEUE lines): when it
// is full an info line is dropped and counted (dropped()); warn and above are then written
// synchronously, never dropped.
//
// Never pass a secret as a field: use crypto fingerprints. All functions are thread-safe.
#pragma once
#include <concepts>
#include <cstddef>
#include <cstdint>
#include <nlohmann/json_fwd.hpp>
#include <optional>
#include <string>
#include <string_view>

namespace tokend::log {

enum class level { trace, debug, info, warn, error, off };
enum class format { json, text };

std::optional<level> parse_level(std::string_view s);
std::optional<format> parse_format(std::string_view s);

// Configures the process logger (stderr) and starts its writer thread. Call once at start,
// before other threads log. `queue_lines` bounds the writer's queue.
void init(format f, level min_level, std::string instance, std::string environment,
          std::size_t queue_lines = 65536);
// Writes everything queued and stops the writer; later lines are written synchronously. Also
// run at exit.
void shutdown();
// Lines dropped because the writer's queue was full.
std::uint64_t dropped();

bool enabled(level l);

// Appends `s` as a JSON string (quotes included), escaping what JSON requires; bytes that are
// not valid UTF-8 become U+FFFD.
void append_json_string(std::string& out, std::string_view s);

// One line under construction; written when it goes out of scope. Inactive (every call a
// no-op) when its level is disabled. It renders into this thread's buffer: never keep one alive
// across a co_await (the coroutine may resume on another thread); a temporary or a block of
// its own ends before the next suspension. Fields are written in call order; the caller keeps keys
// unique and away from the base keys (ts, level, msg, instance, environment, request_id).
class record {
 public:
  record(level l, std::string_view msg, std::string_view request_id = {});
  ~record();
  record(const record&) = delete;
  record& operator=(const record&) = delete;

  explicit operator bool() const { return buf_ != nullptr; }

  record& str(std::string_view key, std::string_view value);
  record& str(std::string_view key, const std::string& value) {
    return str(key, std::string_view(value));
  }
  record& str(std::string_view key, const char* value) { return str(key, std::string_view(value)); }
  record& str(std::string_view key, const std::optional<std::string>& value);  // null if empty
  template <std::integral T>
  record& num(std::string_view key, T value) {
    if constexpr (std::is_same_v<T, bool>) {
      return flag(key, value);
    } else if constexpr (std::is_signed_v<T>) {
      return integer(key, static_cast<long long>(value));
    } else {
      return unsigned_integer(key, static_cast<unsigned long long>(value));
    }
  }
  record& real(std::string_view key, double value);  // shortest round-trip form; NaN -> null
  record& flag(std::string_view key, bool value);
  record& null(std::string_view key);
  // `json_text` must be one valid JSON value (e.g. from nlohmann's dump()).
  record& raw(std::string_view key, std::string_view json_text);
  // Renders the line and returns it instead of writing it (tests).
  std::string take();

 private:
  record& integer(std::string_view key, long long v);
  record& unsigned_integer(std::string_view key, unsigned long long v);
  void key(std::string_view k);
  std::string* buf_ = nullptr;
  std::string own_;  // used when this thread's buffer is taken by an enclosing record
  level level_;
};

// Renders one line (without newline) exactly as write() would emit it; exposed for tests.
std::string render(level l, std::string_view msg, const nlohmann::json& fields,
                   std::string_view request_id);

// The convenient form, off the hot path: the fields as a JSON object.
void write(level l, std::string_view msg, const nlohmann::json& fields,
           std::string_view request_id = {});
void write(level l, std::string_view msg);
// Start-up facts operators and scripts rely on (the bound address): written at level info
// whatever TOKEND_LOG_LEVEL says, unless it is `off`.
void announce(std::string_view msg, const nlohmann::json& fields);

}  // namespace tokend::log
