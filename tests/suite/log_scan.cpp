// The last CTest test (log_scan): every tokend the integration suite started logged into
// TOKEND_TEST_LOG_DIR. Every JSON line must parse, and every token-endpoint line must carry
// every field operations rely on (DOMAIN.md) and no secret.
#include <algorithm>
#include <catch2/catch.hpp>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <regex>
#include <set>
#include <string>
#include <vector>

#include "support/fixtures.hpp"

using nlohmann::json;
using tokend::test::kTestAdminToken;
using tokend::test::kTestMasterKeyB64;

TEST_CASE("every token-endpoint log line of the suite is valid JSON with all the fields",
          "[.log_scan]") {
  const char* dir = std::getenv("TOKEND_TEST_LOG_DIR");
  REQUIRE(dir != nullptr);
  REQUIRE(std::filesystem::is_directory(dir));
  static const char* const kFields[] = {"ts",
                                        "level",
                                        "msg",
                                        "instance",
                                        "environment",
                                        "request_id",
                                        "tenant",
                                        "connection",
                                        "provider",
                                        "endpoint",
                                        "grant_type",
                                        "trigger",
                                        "http_status",
                                        "oauth_error",
                                        "error_description",
                                        "outcome",
                                        "token_age_s",
                                        "token_version",
                                        "attempt",
                                        "backoff_ms",
                                        "reauth_escalated",
                                        "queue_latency_ms",
                                        "duration_ms",
                                        "client_id_hash",
                                        "redirect_uri_hash"};
  const std::regex hash(R"(sha256:[0-9a-f]{16})");
  std::size_t files = 0, json_lines = 0, endpoint_lines = 0;
  std::set<std::string> grant_types, outcomes;
  // Secrets the suite's processes hold: none may appear on any line of any log.
  const std::vector<std::string> secrets = {
      "tokend-test-secret",    // the oidc-provider client's secret
      "fake-at-", "fake-rt-",  // every token the fake token endpoint issues
      kTestMasterKeyB64, kTestAdminToken};
  for (const auto& entry : std::filesystem::directory_iterator(dir)) {
    if (entry.path().extension() != ".log") continue;
    ++files;
    std::ifstream in(entry.path());
    std::vector<std::string> lines;
    for (std::string line; std::getline(in, line);) lines.push_back(std::move(line));
    // A file of JSON logs (the suite's default) holds nothing else: every line parses.
    const bool json_file = std::any_of(lines.begin(), lines.end(), [](const std::string& l) {
      return l.rfind("{\"ts\":", 0) == 0;
    });
    for (std::size_t n = 0; n < lines.size(); ++n) {
      const auto& line = lines[n];
      INFO(entry.path().string() << ":" << n + 1 << ": " << line);
      for (const auto& secret : secrets) CHECK(line.find(secret) == std::string::npos);
      if (!json_file || line.empty()) continue;
      ++json_lines;
      json j;
      try {
        j = json::parse(line);
      } catch (const std::exception& e) {
        FAIL("not valid JSON: " << e.what());
      }
      if (j.value("msg", "") != "token endpoint call") continue;
      ++endpoint_lines;
      for (const char* f : kFields) CHECK(j.contains(f));
      CHECK(j["endpoint"] == "token_endpoint");
      CHECK(std::regex_match(j["client_id_hash"].get<std::string>(), hash));
      CHECK((j["redirect_uri_hash"].is_null() ||
             std::regex_match(j["redirect_uri_hash"].get<std::string>(), hash)));
      CHECK(!j["request_id"].get<std::string>().empty());
      CHECK(!j.contains("refresh_token"));
      CHECK(!j.contains("access_token"));
      CHECK(!j.contains("client_secret"));
      grant_types.insert(j.value("grant_type", ""));
      outcomes.insert(j.value("outcome", ""));
    }
  }
  INFO("files " << files << ", JSON lines " << json_lines << ", token-endpoint lines "
                << endpoint_lines);
  // Preconditions: the suite really ran and logged both kinds of token-endpoint call.
  REQUIRE(files >= 20);
  REQUIRE(endpoint_lines >= 100);
  CHECK(grant_types.count("refresh_token") == 1);
  CHECK(grant_types.count("authorization_code") == 1);
  CHECK(outcomes.count("refreshed") == 1);
  CHECK(outcomes.count("invalid_grant") == 1);
}
