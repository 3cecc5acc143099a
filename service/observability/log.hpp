// Structured logging: one JSON object per line (built with nlohmann, so values are escaped) or a
// human text format. Every line carries ts, level, msg, instance, environment and request_id.
// Never pass a secret as a field: use crypto fingerprints. All functions are thread-safe.
#pragma once
#include <nlohmann/json_fwd.hpp>
#include <optional>
#include <string>
#include <string_view>

namespace tokend::log {

enum class level { trace, debug, info, warn, error, off };
enum class format { json, text };

std::optional<level> parse_level(std::string_view s);
std::optional<format> parse_format(std::string_view s);

// Configures the process logger (stderr). Call once at start, before other threads log.
void init(format f, level min_level, std::string instance, std::string environment);

bool enabled(level l);

// Renders one line (without newline) exactly as write() would emit it; exposed for tests.
std::string render(level l, std::string_view msg, const nlohmann::json& fields,
                   std::string_view request_id);

void write(level l, std::string_view msg, const nlohmann::json& fields,
           std::string_view request_id = {});
void write(level l, std::string_view msg);
// Start-up facts operators and scripts rely on (the bound address): written at level info
// whatever TOKEND_LOG_LEVEL says, unless it is `off`.
void announce(std::string_view msg, const nlohmann::json& fields);

}  // namespace tokend::log
