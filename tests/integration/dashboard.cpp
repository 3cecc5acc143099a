// The Grafana dashboard and the alert rules name only metrics tokend really exports: every
// metric in every panel expression and alert expression is checked against a live /metrics.
#include <catch2/catch.hpp>
#include <fstream>
#include <nlohmann/json.hpp>
#include <regex>
#include <set>
#include <sstream>

#include "support/fixtures.hpp"

using namespace tokend::test;
using nlohmann::json;

namespace {
std::string read_source(const std::string& path) {
  std::ifstream in(std::string(TOKEND_SOURCE_DIR) + "/" + path);
  REQUIRE(in.good());
  std::ostringstream s;
  s << in.rdbuf();
  return s.str();
}

// Metric families on a live /metrics, from its "# TYPE" lines.
std::set<std::string> exported_families() {
  scratch_database db;
  tokend_process t(db.url(), {{"TOKEND_METRICS_LISTEN", "127.0.0.1:0"}});
  const auto text = http_call(t.metrics_address(), "GET", "/metrics").body;
  std::set<std::string> out;
  std::istringstream in(text);
  std::string line;
  while (std::getline(in, line)) {
    std::smatch m;
    if (std::regex_match(line, m, std::regex(R"(# TYPE (\S+) (\S+))"))) out.insert(m[1]);
  }
  return out;
}

// The tokend metrics an expression names, as families (histogram series map to theirs).
std::set<std::string> named_metrics(const std::string& expr, const std::set<std::string>& fams) {
  std::set<std::string> out;
  const std::regex name(R"(tokend_[a-z0-9_]+)");
  for (auto it = std::sregex_iterator(expr.begin(), expr.end(), name); it != std::sregex_iterator();
       ++it) {
    std::string n = it->str();
    for (const char* suffix : {"_bucket", "_count", "_sum"}) {
      const std::string s(suffix);
      if (!fams.count(n) && n.size() > s.size() && n.ends_with(s)) {
        n = n.substr(0, n.size() - s.size());
        break;
      }
    }
    out.insert(n);
  }
  return out;
}
}  // namespace

TEST_CASE(
    "every dashboard panel and alert names metrics a live tokend exports; every family is exported "
    "from the start",
    "[dashboard]") {
  const auto families = exported_families();
  REQUIRE(families.count("tokend_token_requests_total") == 1);  // precondition: a real scrape

  const auto dash = json::parse(read_source("deploy/grafana/tokend.json"));
  REQUIRE(dash["panels"].is_array());
  REQUIRE(dash["panels"].size() >= 20);
  std::set<int> ids;
  std::set<std::string> used;
  for (const auto& p : dash["panels"]) {
    INFO(p.dump());
    CHECK(ids.insert(p["id"].get<int>()).second);
    CHECK(!p["title"].get<std::string>().empty());
    REQUIRE(p["targets"].size() >= 1);
    for (const auto& t : p["targets"]) {
      const std::string expr = t["expr"];
      const auto names = named_metrics(expr, families);
      if (expr.find("up{") == std::string::npos) CHECK(!names.empty());
      for (const auto& n : names) {
        INFO(n);
        CHECK(families.count(n) == 1);
        used.insert(n);
      }
    }
  }
  // The dashboard covers the operational signals.
  for (const char* signal :
       {"tokend_refresh_failures_total", "tokend_invalid_grant_total", "tokend_reauth_links_total",
        "tokend_conditional_refreshes_total", "tokend_refresh_duration_seconds",
        "tokend_scheduler_backlog", "tokend_scheduler_lag_seconds", "tokend_connections",
        "tokend_webhook_outbox_backlog", "tokend_log_lines_dropped_total"}) {
    CHECK(used.count(signal) == 1);
  }

  // Every family tokend registers is in /metrics before its first observation: each metric
  // name in metrics.cpp appears in this fresh process's scrape.
  const auto source = read_source("service/observability/metrics.cpp");
  const auto registered = named_metrics(source, families);
  REQUIRE(registered.size() >= 30);
  for (const auto& n : registered) {
    INFO("registered but not exported from the start: " << n);
    CHECK(families.count(n) == 1);
  }

  // The alert rules too (promtool checks their syntax and behaviour; this checks the names).
  const auto rules = read_source("deploy/prometheus/alerts.yml");
  const auto names = named_metrics(rules, families);
  REQUIRE(names.size() >= 10);
  for (const auto& n : names) {
    INFO(n);
    CHECK(families.count(n) == 1);
  }
}
