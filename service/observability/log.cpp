#include "observability/log.hpp"

#include <spdlog/sinks/stdout_sinks.h>
#include <spdlog/spdlog.h>

#include <chrono>
#include <mutex>
#include <nlohmann/json.hpp>

namespace tokend::log {
namespace {

struct state {
  format fmt = format::json;
  level min = level::info;
  std::string instance;
  std::string environment = "development";
  std::shared_ptr<spdlog::logger> logger;
};

state& global() {
  // Written once by init() before serving; read-only afterwards.
  static state s;
  return s;
}

std::string_view level_name(level l) {
  switch (l) {
    case level::trace:
      return "trace";
    case level::debug:
      return "debug";
    case level::info:
      return "info";
    case level::warn:
      return "warn";
    case level::error:
      return "error";
    case level::off:
      return "off";
  }
  return "info";
}

std::string utc_now_ms() {
  using namespace std::chrono;
  const auto now = system_clock::now();
  const auto ms = duration_cast<milliseconds>(now.time_since_epoch()).count() % 1000;
  const std::time_t t = system_clock::to_time_t(now);
  std::tm tm{};
  gmtime_r(&t, &tm);
  char buf[64];
  std::snprintf(buf, sizeof buf, "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ", tm.tm_year + 1900,
                tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec, static_cast<int>(ms));
  return buf;
}

}  // namespace

std::optional<level> parse_level(std::string_view s) {
  for (auto l : {level::trace, level::debug, level::info, level::warn, level::error, level::off}) {
    if (s == level_name(l)) return l;
  }
  return std::nullopt;
}

std::optional<format> parse_format(std::string_view s) {
  if (s == "json") return format::json;
  if (s == "text") return format::text;
  return std::nullopt;
}

void init(format f, level min_level, std::string instance, std::string environment) {
  auto& g = global();
  g.fmt = f;
  g.min = min_level;
  g.instance = std::move(instance);
  g.environment = std::move(environment);
  g.logger =
      std::make_shared<spdlog::logger>("tokend", std::make_shared<spdlog::sinks::stderr_sink_mt>());
  g.logger->set_pattern("%v");
  g.logger->set_level(spdlog::level::trace);
  g.logger->flush_on(spdlog::level::trace);
}

bool enabled(level l) { return l != level::off && l >= global().min; }

std::string render(level l, std::string_view msg, const nlohmann::json& fields,
                   std::string_view request_id) {
  const auto& g = global();
  if (g.fmt == format::json) {
    nlohmann::json line = {{"ts", utc_now_ms()},
                           {"level", level_name(l)},
                           {"msg", msg},
                           {"instance", g.instance},
                           {"environment", g.environment}};
    if (!request_id.empty()) line["request_id"] = request_id;
    if (fields.is_object()) {
      for (auto it = fields.begin(); it != fields.end(); ++it) {
        if (!line.contains(it.key())) line[it.key()] = it.value();
      }
    }
    return line.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
  }
  std::string out = utc_now_ms() + " " + std::string(level_name(l)) + " " + std::string(msg);
  if (!request_id.empty()) out += " request_id=" + std::string(request_id);
  if (fields.is_object()) {
    for (auto it = fields.begin(); it != fields.end(); ++it) {
      out += " " + it.key() + "=" +
             (it->is_string() ? it->get<std::string>()
                              : it->dump(-1, ' ', false, nlohmann::json::error_handler_t::replace));
    }
  }
  return out;
}

void write(level l, std::string_view msg, const nlohmann::json& fields,
           std::string_view request_id) {
  if (!enabled(l)) return;
  auto& g = global();
  const auto line = render(l, msg, fields, request_id);
  if (g.logger) {
    g.logger->info(line);
  } else {
    std::fprintf(stderr, "%s\n", line.c_str());
  }
}

void write(level l, std::string_view msg) { write(l, msg, nlohmann::json::object()); }

void announce(std::string_view msg, const nlohmann::json& fields) {
  auto& g = global();
  if (g.min == level::off) return;
  const auto line = render(level::info, msg, fields, {});
  if (g.logger) {
    g.logger->info(line);
  } else {
    std::fprintf(stderr, "%s\n", line.c_str());
  }
}

}  // namespace tokend::log
