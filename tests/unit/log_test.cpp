#include <unistd.h>

#include <catch2/catch.hpp>
#include <cmath>
#include <nlohmann/json.hpp>
#include <thread>

#include "observability/line_writer.hpp"
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

TEST_CASE("JSON strings: every control byte escaped, valid UTF-8 kept, invalid bytes replaced",
          "[log]") {
  std::string all;
  for (int c = 1; c < 0x80; ++c) all.push_back(static_cast<char>(c));
  all += "\xC3\xA9 \xE2\x82\xAC \xF0\x9F\x94\x91";  // é € and a 4-byte emoji
  std::string out;
  log::append_json_string(out, all);
  CHECK(nlohmann::json::parse(out).get<std::string>() == all);
  for (char c : out) CHECK(static_cast<unsigned char>(c) >= 0x20);  // nothing raw below space

  // Invalid UTF-8 (a lone continuation, a truncated sequence, an overlong form, a surrogate,
  // a byte never valid): each bad byte becomes U+FFFD and the line still parses.
  const std::string bad = std::string("a\x80" "b\xE2\x82" "c\xC0\xAF" "d\xED\xA0\x80" "e\xFF", 16);
  out.clear();
  log::append_json_string(out, bad);
  const auto parsed = nlohmann::json::parse(out).get<std::string>();
  CHECK(parsed.rfind("a\xEF\xBF\xBD" "b", 0) == 0);
  CHECK(parsed.find('e') != std::string::npos);
  CHECK(parsed.find("\xFF") == std::string::npos);
}

TEST_CASE("a record renders typed fields without a DOM, as valid JSON", "[log]") {
  log::init(log::format::json, log::level::info, "inst \"2\"", "test");
  auto line = log::record(log::level::info, "request", "rid-1")
                  .str("method", "GET")
                  .str("route", "/v1/tokens/{connection}")
                  .num("status", 200)
                  .num("big", 18446744073709551615ULL)
                  .num("neg", -7)
                  .real("duration_ms", 0.12)
                  .real("nan", std::nan(""))
                  .flag("reused", true)
                  .str("none", std::optional<std::string>())
                  .raw("obj", R"({"a":[1,2]})")
                  .str("odd", "tab\there \"quoted\" \x01")
                  .take();
  INFO(line);
  const auto j = nlohmann::json::parse(line);
  CHECK(j["msg"] == "request");
  CHECK(j["level"] == "info");
  CHECK(j["instance"] == "inst \"2\"");
  CHECK(j["request_id"] == "rid-1");
  CHECK(j["status"] == 200);
  CHECK(j["big"] == 18446744073709551615ULL);
  CHECK(j["neg"] == -7);
  CHECK(j["duration_ms"] == 0.12);
  CHECK(j["nan"].is_null());
  CHECK(j["reused"] == true);
  CHECK(j["none"].is_null());
  CHECK(j["obj"]["a"][1] == 2);
  CHECK(j["odd"] == "tab\there \"quoted\" \x01");
  CHECK(j["ts"].get<std::string>().size() == 24);

  // Below the level the record is inactive and renders nothing.
  log::init(log::format::json, log::level::warn, "i", "e");
  log::record quiet(log::level::info, "nothing");
  CHECK(!quiet);
  CHECK(quiet.str("k", "v").take().empty());
  log::init(log::format::json, log::level::info, "i", "e");
}

namespace {
std::string read_all(int fd) {
  std::string out;
  char buf[65536];
  for (;;) {
    const auto n = ::read(fd, buf, sizeof buf);
    if (n <= 0) break;
    out.append(buf, static_cast<std::size_t>(n));
  }
  return out;
}
}  // namespace

TEST_CASE("the line writer batches, keeps every line through stop(), and writes later lines",
          "[log]") {
  int p[2];
  REQUIRE(::pipe(p) == 0);
  std::string got;
  std::thread reader([&] { got = read_all(p[0]); });
  {
    log::line_writer w(p[1], 1000, std::chrono::milliseconds(60000));  // no timed flush
    for (int i = 0; i < 500; ++i) w.submit("line " + std::to_string(i), false);
    w.stop();  // everything queued is written now, not a minute later
    w.submit("after stop", false);
    CHECK(w.dropped() == 0);
  }
  ::close(p[1]);
  reader.join();
  ::close(p[0]);
  std::string expected;
  for (int i = 0; i < 500; ++i) expected += "line " + std::to_string(i) + "\n";
  expected += "after stop\n";
  CHECK(got == expected);
}

TEST_CASE("a full queue drops info lines and counts them; warn lines are written anyway",
          "[log]") {
  int p[2];
  REQUIRE(::pipe(p) == 0);
  log::line_writer w(p[1], 4, std::chrono::milliseconds(10));
  // A line far larger than the pipe: the writer thread blocks in write(2) with it, so nothing
  // else leaves the queue until the test reads.
  const std::string big(300000, 'x');
  w.submit(big, true);
  char first[1000];
  std::size_t have = 0;
  while (have < sizeof first) {  // proves the writer took the big line and is writing it
    const auto n = ::read(p[0], first + have, sizeof first - have);
    REQUIRE(n > 0);
    have += static_cast<std::size_t>(n);
  }
  for (int i = 0; i < 4; ++i) w.submit("kept " + std::to_string(i), false);
  for (int i = 0; i < 3; ++i) w.submit("dropped " + std::to_string(i), false);
  CHECK(w.dropped() == 3);
  std::string rest;
  std::thread reader([&] { rest = read_all(p[0]); });
  w.submit("WARN with the queue full", true);  // written synchronously, not dropped
  CHECK(w.dropped() == 3);
  w.stop();
  ::close(p[1]);
  reader.join();
  ::close(p[0]);
  const std::string all = std::string(first, have) + rest;
  CHECK(all.find(big + "\n") == 0);
  for (int i = 0; i < 4; ++i) CHECK(all.find("kept " + std::to_string(i) + "\n") != std::string::npos);
  CHECK(all.find("dropped") == std::string::npos);
  CHECK(all.find("WARN with the queue full\n") != std::string::npos);
}
