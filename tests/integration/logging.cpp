// The log pipeline as a user sees it: lines written by a background writer, none lost across a
// SIGTERM, and a full queue drops info lines and counts them instead of slowing requests.
#include <catch2/catch.hpp>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>

#include "support/fixtures.hpp"

using namespace tokend::test;
using namespace std::chrono_literals;
using nlohmann::json;

namespace {
// The access-log lines for `route` in a tokend's output.
std::size_t request_lines(const std::string& output, const std::string& route) {
  std::istringstream in(output);
  std::string line;
  std::size_t n = 0;
  while (std::getline(in, line)) {
    if (line.rfind("{\"ts\":", 0) != 0) continue;
    const auto j = json::parse(line);
    if (j.value("msg", "") == "request" && j.value("route", "") == route) ++n;
  }
  return n;
}

void keepalive_requests(const std::string& address, int count) {
  http_connection c(address);
  for (int i = 0; i < count; ++i) {
    REQUIRE(c.send_raw("GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"));
    REQUIRE(c.read_reply(5s).status == 200);
  }
}
}  // namespace

TEST_CASE("every line logged before SIGTERM is written, the last one included", "[logging]") {
  scratch_database db;
  tokend_process t(db.url());
  keepalive_requests(t.address(), 300);
  // Straight away, well inside the writer's 100 ms batching interval.
  REQUIRE(t.stop() == 0);
  const auto out = t.output();
  CHECK(request_lines(out, "/healthz") == 300);
  // The shutdown's own lines too, "stopped" last of all.
  std::istringstream in(out);
  std::string line, last;
  while (std::getline(in, line)) {
    if (line.rfind("{\"ts\":", 0) == 0) last = line;
  }
  INFO(last);
  CHECK(json::parse(last)["msg"] == "stopped");
}

TEST_CASE("a full log queue drops info lines, counts them, and never drops a warning",
          "[logging]") {
  scratch_database db;
  node_peer token{"fake-token-endpoint.mjs"};
  // A queue of one line: the writer takes it at its 100 ms tick, so a burst of requests finds
  // it full.
  tokend_process t(db.url(), {{"TOKEND_LOG_QUEUE", "1"},
                              {"TOKEND_METRICS_LISTEN", "127.0.0.1:0"},
                              {"TOKEND_ALLOW_INSECURE_PROVIDER_URLS", "1"}});
  const auto key = t.tenant_key("acme");
  put_provider(t, key, "fk", token.url("/token"));
  const int rounds = 20, burst = 30;
  for (int i = 0; i < rounds; ++i) {
    REQUIRE(import_connection(t, key, "c" + std::to_string(i), "fk", "at", "rt") == 201);
  }
  token.control(
      "POST", "/control/script",
      {{"steps", {{{"status", 400}, {"json", {{"error", "invalid_grant"}}}, {"repeat", 1000}}}}});
  // Each round: a burst of access-log lines (info), then one refresh that ends in
  // invalid_grant, whose token-endpoint line is a warning, logged while the queue is full.
  for (int i = 0; i < rounds; ++i) {
    keepalive_requests(t.address(), burst);
    REQUIRE(t.call("GET", "/v1/tokens/c" + std::to_string(i), key).status == 409);
  }
  const auto metrics = http_call(t.metrics_address(), "GET", "/metrics").body;
  const double dropped = metric_value(metrics, "tokend_log_lines_dropped_total");
  REQUIRE(t.stop() == 0);
  const auto out = t.output();
  const auto written = request_lines(out, "/healthz");
  INFO("dropped " << dropped << ", written " << written);
  // Precondition: the queue really was full (info lines were dropped and counted).
  REQUIRE(dropped > 0);
  CHECK(written < static_cast<std::size_t>(rounds * burst));
  // Every access-log line was either written or counted (other info lines may be counted too).
  CHECK(static_cast<double>(written) + dropped >= rounds * burst);
  // Not one warning was lost: one invalid_grant token-endpoint line per connection.
  std::istringstream in(out);
  std::string line;
  std::set<std::string> warned;
  while (std::getline(in, line)) {
    if (line.rfind("{\"ts\":", 0) != 0) continue;
    const auto j = json::parse(line);
    if (j.value("msg", "") == "token endpoint call" && j.value("level", "") == "warn" &&
        j.value("outcome", "") == "invalid_grant")
      warned.insert(j.value("connection", ""));
  }
  CHECK(warned.size() == static_cast<std::size_t>(rounds));
}
