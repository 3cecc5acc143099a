// Request metrics: one series per (method, route, status), counted correctly through the
// per-thread memo, with client-chosen methods folded into one label value.
#include <catch2/catch.hpp>
#include <string>

#include "observability/metrics.hpp"

using tokend::observability::metrics;

namespace {

// The value of the sample line that starts with `series` (exact labels), or -1.
double sample(const std::string& text, const std::string& series) {
  auto pos = text.find("\n" + series + " ");
  if (pos == std::string::npos) return -1;
  return std::stod(text.substr(pos + series.size() + 2));
}

}  // namespace

TEST_CASE("request counts survive the memo and stay per instance", "[metrics]") {
  const std::string get_ok =
      R"(tokend_http_requests_total{method="GET",route="/v1/tokens/{connection}",status="200"})";
  {
    metrics m;
    for (int i = 0; i < 5; ++i) m.observe_request("GET", "/v1/tokens/{connection}", 200, 0.001);
    m.observe_request("GET", "/v1/tokens/{connection}", 404, 0.001);
    const auto text = m.serialize();
    CHECK(sample(text, get_ok) == 5);
    CHECK(
        sample(
            text,
            R"(tokend_http_requests_total{method="GET",route="/v1/tokens/{connection}",status="404"})") ==
        1);
  }
  // A second instance on the same thread must not count into the first one's series.
  metrics other;
  other.observe_request("GET", "/v1/tokens/{connection}", 200, 0.001);
  CHECK(sample(other.serialize(), get_ok) == 1);
}

TEST_CASE("unknown request methods share one label value", "[metrics]") {
  metrics m;
  for (int i = 0; i < 300; ++i) {
    m.observe_request("X-METHOD-" + std::to_string(i), "unmatched", 404, 0.001);
  }
  const auto text = m.serialize();
  CHECK(sample(text,
               R"(tokend_http_requests_total{method="OTHER",route="unmatched",status="404"})") ==
        300);
  CHECK(text.find("X-METHOD-") == std::string::npos);
}
