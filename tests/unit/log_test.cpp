#include <catch2/catch.hpp>
#include <nlohmann/json.hpp>

#include "observability/log.hpp"

using namespace tokend;

TEST_CASE("json log lines are valid JSON with escaped values", "[log]") {
  log::init(log::format::json, log::level::info, "inst-1", "test");
  auto line = log::render(log::level::warn, "hello \"world\"\n", {{"field", "a\"b\\c\n"}, {"n", 3}},
                          "rid-7");
  auto j = nlohmann::json::parse(line);
  CHECK(j["msg"] == "hello \"world\"\n");
  CHECK(j["level"] == "warn");
  CHECK(j["field"] == "a\"b\\c\n");
  CHECK(j["n"] == 3);
  CHECK(j["request_id"] == "rid-7");
  CHECK(j["instance"] == "inst-1");
  CHECK(j["environment"] == "test");
  auto ts = j["ts"].get<std::string>();
  CHECK(ts.size() == 24);
  CHECK(ts.back() == 'Z');
  CHECK(line.find('\n') == std::string::npos);
}

TEST_CASE("fields cannot overwrite the envelope", "[log]") {
  log::init(log::format::json, log::level::info, "inst-1", "test");
  auto j = nlohmann::json::parse(log::render(log::level::info, "m", {{"level", "fake"}}, ""));
  CHECK(j["level"] == "info");
}

TEST_CASE("levels filter", "[log]") {
  log::init(log::format::text, log::level::warn, "i", "e");
  CHECK(!log::enabled(log::level::info));
  CHECK(log::enabled(log::level::error));
  auto text = log::render(log::level::error, "boom", {{"k", "v"}}, "r1");
  CHECK(text.find("error boom request_id=r1 k=v") != std::string::npos);
  CHECK(log::parse_level("verbose") == std::nullopt);
}
