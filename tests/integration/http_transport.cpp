// HTTP transport behaviour of a real tokend process: routing errors, request ids, limits,
// slow clients, keep-alive, metrics exposition.
#include <catch2/catch.hpp>

#include "support/fixtures.hpp"

using namespace tokend::test;
using namespace std::chrono_literals;

namespace {

void check_problem(const http_reply& r, int status, const std::string& code) {
  CHECK(r.status == status);
  CHECK(r.header("content-type") == "application/problem+json");
  auto j = r.json();
  for (auto k : {"type", "title", "status", "detail", "code", "request_id"}) {
    INFO(k);
    CHECK(j.contains(k));
  }
  CHECK(j["status"] == status);
  CHECK(j["code"] == code);
  CHECK(j["request_id"] == r.header("x-request-id"));
}

}  // namespace

TEST_CASE("transport: routing, request ids, limits, slow clients", "[http_transport]") {
  scratch_database db;
  tokend_process t(db.url(), {{"TOKEND_HTTP_READ_TIMEOUT_MS", "1000"}});

  SECTION("healthz and readyz answer 200") {
    auto h = t.get("/healthz");
    CHECK(h.status == 200);
    CHECK(h.json()["status"] == "ok");
    CHECK(!h.header("x-request-id").empty());
    auto r = t.get("/readyz");
    CHECK(r.status == 200);
    CHECK(r.json()["status"] == "ready");
  }

  SECTION("unknown path is 404, wrong method 405 with Allow") {
    check_problem(t.get("/v1/nothing-here"), 404, "not_found");
    auto r = http_call(t.address(), "POST", "/healthz", "{}");
    check_problem(r, 405, "method_not_allowed");
    CHECK(r.header("allow") == "GET");
  }

  SECTION("X-Request-Id is echoed when valid and generated otherwise") {
    auto r = t.get("/healthz", {{"X-Request-Id", "abc-123"}});
    CHECK(r.header("x-request-id") == "abc-123");
    auto bad = t.get("/healthz", {{"X-Request-Id", "has spaces and \"quotes\""}});
    CHECK(bad.header("x-request-id").size() == 32);
    auto p = t.get("/nope", {{"X-Request-Id", "req-9"}});
    CHECK(p.json()["request_id"] == "req-9");
    // The access-log line is written right after the response: poll for it.
    CHECK(eventually(
        [&] { return t.output().find("\"request_id\":\"abc-123\"") != std::string::npos; }, 2s));
  }

  SECTION("a 65 KiB body is 413") {
    auto r = http_call(t.address(), "POST", "/healthz", std::string(65 * 1024, 'x'));
    check_problem(r, 413, "payload_too_large");
  }

  SECTION("a 9 KiB header is 431") {
    auto r = t.get("/healthz", {{"X-Padding", std::string(9 * 1024, 'a')}});
    check_problem(r, 431, "headers_too_large");
  }

  SECTION("malformed request line is 400") {
    http_connection c(t.address());
    c.send_raw("NOT A REQUEST\r\n\r\n");
    auto r = c.read_reply(5s);
    check_problem(r, 400, "invalid_request");
  }

  SECTION("a client that never finishes its headers is disconnected") {
    http_connection c(t.address());
    REQUIRE(c.send_raw("GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: "));
    const auto start = std::chrono::steady_clock::now();
    CHECK(c.wait_closed(5s));
    CHECK(std::chrono::steady_clock::now() - start < 4s);
    // The server is still fine.
    CHECK(t.get("/healthz").status == 200);
  }

  SECTION("keep-alive serves several requests on one connection") {
    http_connection c(t.address());
    for (int i = 0; i < 3; ++i) {
      REQUIRE(c.send_raw("GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"));
      CHECK(c.read_reply(5s).status == 200);
    }
  }

  SECTION("metrics expose requests by route template, pools, statements and build info") {
    t.get("/healthz");
    t.get("/readyz");
    t.get("/nope");
    auto m = t.get("/metrics");
    CHECK(m.status == 200);
    CHECK(m.header("content-type").rfind("text/plain", 0) == 0);
    CHECK(m.body.find(
              "tokend_http_requests_total{method=\"GET\",route=\"/healthz\",status=\"200\"}") !=
          std::string::npos);
    // Counted when the response has been written, which can be just after the client read it.
    CHECK(eventually(
        [&] {
          return t.get("/metrics").body.find("route=\"unmatched\",status=\"404\"") !=
                 std::string::npos;
        },
        2s));
    CHECK(m.body.find("tokend_http_request_duration_seconds_bucket") != std::string::npos);
    CHECK(m.body.find("tokend_db_pool_in_use{pool=\"short\"}") != std::string::npos);
    CHECK(m.body.find("tokend_db_pool_waiting{pool=\"refresh\"}") != std::string::npos);
    CHECK(m.body.find("tokend_sql_statements_total{origin=\"request\"}") != std::string::npos);
    CHECK(m.body.find("tokend_build_info{version=") != std::string::npos);
  }

  SECTION("access log has one JSON line per request with route, status and duration") {
    t.get("/healthz", {{"X-Request-Id", "access-1"}});
    REQUIRE(eventually([&] { return t.output().find("access-1") != std::string::npos; }, 2s));
    auto out = t.output();
    auto pos = out.find("\"request_id\":\"access-1\"");
    auto line_start = out.rfind('\n', pos) + 1;
    auto line = nlohmann::json::parse(out.substr(line_start, out.find('\n', pos) - line_start));
    CHECK(line["msg"] == "request");
    CHECK(line["route"] == "/healthz");
    CHECK(line["status"] == 200);
    CHECK(line["method"] == "GET");
    CHECK(line.contains("duration_ms"));
    CHECK(line["environment"] == "test");
    CHECK(line.contains("instance"));
    CHECK(line.contains("ts"));
  }
}

TEST_CASE("metrics on a separate listener when TOKEND_METRICS_LISTEN is set", "[http_transport]") {
  scratch_database db;
  tokend_process t(db.url(), {{"TOKEND_METRICS_LISTEN", "127.0.0.1:0"}});
  REQUIRE(!t.metrics_address().empty());
  CHECK(t.get("/metrics").status == 404);
  auto m = http_call(t.metrics_address(), "GET", "/metrics");
  CHECK(m.status == 200);
  CHECK(m.body.find("tokend_build_info") != std::string::npos);
}
