// Refresh-engine benchmarks. Run through bench/run.sh; each case prints one JSON line.
#include <algorithm>
#include <atomic>
#include <catch2/catch.hpp>
#include <iostream>
#include <random>
#include <sstream>
#include <thread>

#include "support/fixtures.hpp"

using namespace tokend::test;
using nlohmann::json;
using namespace std::chrono_literals;

namespace {

struct load_result {
  std::vector<double> latencies_ms;
  int ok = 0, failed = 0;
  double wall_s = 0;
};

// Runs `targets` (instance index, path) with `workers` threads, one request per connection.
load_result run_load(const std::vector<std::string>& addresses,
                     const std::vector<std::pair<int, std::string>>& targets,
                     const std::string& key, int workers) {
  load_result out;
  std::mutex mu;
  std::atomic<std::size_t> next{0};
  const auto start = std::chrono::steady_clock::now();
  std::vector<std::thread> threads;
  for (int w = 0; w < workers; ++w) {
    threads.emplace_back([&] {
      std::vector<double> local;
      int ok = 0, failed = 0;
      for (;;) {
        auto i = next++;
        if (i >= targets.size()) break;
        const auto t0 = std::chrono::steady_clock::now();
        auto r = http_call(addresses[targets[i].first], "GET", targets[i].second, "",
                           {{"Authorization", "Bearer " + key}}, 30s);
        local.push_back(
            std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0)
                .count());
        (r.status == 200 ? ok : failed)++;
      }
      std::lock_guard lk(mu);
      out.latencies_ms.insert(out.latencies_ms.end(), local.begin(), local.end());
      out.ok += ok;
      out.failed += failed;
    });
  }
  for (auto& t : threads) t.join();
  out.wall_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  std::sort(out.latencies_ms.begin(), out.latencies_ms.end());
  return out;
}

double pct(const std::vector<double>& sorted, double p) {
  if (sorted.empty()) return 0;
  return sorted[std::min(sorted.size() - 1, static_cast<std::size_t>(p * sorted.size()))];
}

std::string provider_for(const tokend_process& t, const std::string& token_url, bool airtable) {
  auto key = t.tenant_key("acme");
  put_provider(t, key, "idp", token_url,
               json{{"type", airtable ? "airtable" : "oauth2"},
                    {"client_id", "tokend-test"},
                    {"client_secret", "tokend-test-secret"}});
  return key;
}

}  // namespace

TEST_CASE("storm: 500 expired connections x 20 callers over 3 instances (oidc-provider)",
          "[.bench][storm]") {
  node_peer idp("oidc-server.mjs");
  scratch_database db;
  constexpr int kConnections = 500, kCallers = 20, kInstances = 3, kWorkers = 48;
  std::vector<std::unique_ptr<tokend_process>> instances;
  std::vector<std::string> addresses;
  for (int i = 0; i < kInstances; ++i) {
    instances.push_back(std::make_unique<tokend_process>(
        db.url(), std::map<std::string, std::string>{{"TOKEND_ALLOW_INSECURE_PROVIDER_URLS", "1"},
                                                     {"TOKEND_THREADS", "2"},
                                                     {"TOKEND_DB_POOL_SIZE", "8"},
                                                     {"TOKEND_REFRESH_POOL_SIZE", "16"}}));
    addresses.push_back(instances.back()->address());
  }
  auto key = provider_for(*instances[0], idp.url("/token"), true);
  auto grants = idp.control("POST", "/test/grants", json{{"count", kConnections}})["items"];
  for (int i = 0; i < kConnections; ++i) {
    REQUIRE(instances[0]
                ->call("PUT", numbered("/v1/connections/c", i), key,
                       json{{"provider", "idp"},
                            {"access_token", grants[i]["access_token"]},
                            {"refresh_token", grants[i]["refresh_token"]},
                            {"expires_at", "2020-01-01T00:00:00Z"}})
                .status == 201);
  }
  idp.control("POST", "/test/reset-stats");
  std::vector<std::pair<int, std::string>> targets;
  for (int c = 0; c < kConnections; ++c) {
    for (int k = 0; k < kCallers; ++k)
      targets.emplace_back(k % kInstances, "/v1/tokens/c" + std::to_string(c));
  }
  std::shuffle(targets.begin(), targets.end(), std::mt19937(7));
  auto r = run_load(addresses, targets, key, kWorkers);
  auto stats = idp.control("GET", "/test/stats");
  std::cout << json{{"bench", "storm_500x20x3"},
                    {"requests", targets.size()},
                    {"ok", r.ok},
                    {"failed", r.failed},
                    {"provider_refreshes", stats["refresh_success"]},
                    {"invalid_grant", stats["invalid_grant"]},
                    {"wall_s", r.wall_s},
                    {"p50_ms", pct(r.latencies_ms, 0.50)},
                    {"p99_ms", pct(r.latencies_ms, 0.99)},
                    {"max_ms", r.latencies_ms.empty() ? 0 : r.latencies_ms.back()},
                    {"client_workers", kWorkers}}
                   .dump()
            << std::endl;
  CHECK(r.failed == 0);
  CHECK(stats["refresh_success"] == kConnections);
}

TEST_CASE("throughput: refreshes per second of one instance against a fast fake endpoint",
          "[.bench][throughput]") {
  node_peer fake("fake-token-endpoint.mjs");
  scratch_database db;
  constexpr int kConnections = 3000, kWorkers = 32;
  tokend_process t(db.url(), {{"TOKEND_ALLOW_INSECURE_PROVIDER_URLS", "1"}});
  auto key = provider_for(t, fake.url("/token"), false);
  for (int i = 0; i < kConnections; ++i) {
    REQUIRE(t.call("PUT", numbered("/v1/connections/c", i), key,
                   json{{"provider", "idp"},
                        {"access_token", "a"},
                        {"refresh_token", numbered("r", i)},
                        {"expires_at", "2020-01-01T00:00:00Z"}})
                .status == 201);
  }
  std::vector<std::pair<int, std::string>> targets;
  for (int c = 0; c < kConnections; ++c)
    targets.emplace_back(0, "/v1/tokens/c" + std::to_string(c));
  auto r = run_load({t.address()}, targets, key, kWorkers);
  auto processed = fake.control("GET", "/control/requests")["processed"].get<int>();
  std::cout << json{{"bench", "refresh_throughput_one_instance"},
                    {"refreshes", processed},
                    {"ok", r.ok},
                    {"failed", r.failed},
                    {"wall_s", r.wall_s},
                    {"refreshes_per_s", processed / r.wall_s},
                    {"p50_ms", pct(r.latencies_ms, 0.50)},
                    {"p99_ms", pct(r.latencies_ms, 0.99)},
                    {"client_workers", kWorkers}}
                   .dump()
            << std::endl;
  if (r.failed != 0 && std::getenv("TOKEND_BENCH_DUMP")) {
    std::istringstream in(t.output());
    std::string line;
    while (std::getline(in, line)) {
      std::cerr << line << "\n";
    }
  }
  CHECK(r.failed == 0);
  CHECK(processed == kConnections);
}
