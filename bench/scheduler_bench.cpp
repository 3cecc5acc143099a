// Scheduler benchmarks: sustained scheduled refreshes per second (one and three instances, a
// fast fake endpoint, fsync on), PostgreSQL CPU, statements and commits per refresh, lag; and
// the claim query's time at 10,000 and 100,000 rows. Run through bench/run.sh.
#include <dirent.h>
#include <unistd.h>
#include <algorithm>
#include <catch2/catch.hpp>
#include <fstream>
#include <iostream>
#include <pqxx/pqxx>
#include <sstream>
#include <thread>

#include "store/repository.hpp"
#include "support/fixtures.hpp"

using namespace tokend::test;
using nlohmann::json;
using namespace std::chrono_literals;

namespace {

// CPU seconds (user + system) of every process named "postgres" on the machine.
double postgres_cpu_seconds() {
  double total = 0;
  const double tick = static_cast<double>(::sysconf(_SC_CLK_TCK));
  DIR* d = ::opendir("/proc");
  if (!d) return 0;
  while (auto* e = ::readdir(d)) {
    if (e->d_name[0] < '0' || e->d_name[0] > '9') continue;
    std::ifstream in(std::string("/proc/") + e->d_name + "/stat");
    std::string s;
    std::getline(in, s);
    const auto open = s.find('('), close = s.rfind(')');
    if (open == std::string::npos || close == std::string::npos) continue;
    if (s.substr(open + 1, close - open - 1) != "postgres") continue;
    std::istringstream rest(s.substr(close + 2));
    std::string field;
    long long utime = 0, stime = 0;
    for (int i = 3; i <= 15 && rest >> field; ++i) {
      if (i == 14) utime = std::stoll(field);
      if (i == 15) stime = std::stoll(field);
    }
    total += static_cast<double>(utime + stime) / tick;
  }
  ::closedir(d);
  return total;
}

long long commits(const scratch_database& db) {
  return db.query_int(
      "SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()");
}

double sum_metric(const std::string& text, const std::string& prefix) {
  double total = 0;
  std::istringstream in(text);
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind(prefix, 0) != 0) continue;
    total += std::stod(line.substr(line.rfind(' ') + 1));
  }
  return total;
}

void run_scheduled_throughput(int instances_n, int connections) {
  node_peer fake("fake-token-endpoint.mjs");
  scratch_database db;
  std::vector<std::unique_ptr<tokend_process>> instances;
  for (int i = 0; i < instances_n; ++i) {
    // The product's defaults (the test fixture shrinks the pools): scheduler concurrency 8,
    // refresh pool 16, short pool 8, access log on at info.
    instances.push_back(std::make_unique<tokend_process>(
        db.url(), std::map<std::string, std::string>{{"TOKEND_ALLOW_INSECURE_PROVIDER_URLS", "1"},
                                                     {"TOKEND_SCHEDULER", "on"},
                                                     {"TOKEND_INSTANCE_ID", numbered("i", i)},
                                                     {"TOKEND_THREADS", "2"},
                                                     {"TOKEND_DB_POOL_SIZE", "8"},
                                                     {"TOKEND_REFRESH_POOL_SIZE", "16"}}));
  }
  auto key = instances[0]->tenant_key("acme");
  put_provider(*instances[0], key, "p", fake.url("/token"));
  seed_connections(db.url(), "acme", "p", connections, [](int i) { return numbered("at-", i); });
  double statements_before = 0;
  for (auto& t : instances)
    statements_before += sum_metric(t->get("/metrics").body, "tokend_sql_statements_total");
  const auto commits_before = commits(db);
  const double cpu_before = postgres_cpu_seconds();
  db.exec(
      {"UPDATE connections SET access_expires_at = now() - interval '1 second', "
       "next_refresh_at = now()"});
  const auto t0 = std::chrono::steady_clock::now();
  const auto stamped = db.query_text("SELECT now()::text");
  REQUIRE(eventually(
      [&] {
        return db.query_int("SELECT count(*) FROM connections WHERE token_version = 2") ==
               connections;
      },
      600s));
  const double wall = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  const double cpu = postgres_cpu_seconds() - cpu_before;
  const auto commit_count = commits(db) - commits_before;
  double statements = 0;
  for (auto& t : instances)
    statements += sum_metric(t->get("/metrics").body, "tokend_sql_statements_total");
  statements -= statements_before;
  auto lag = [&](double p) {
    return std::stod(db.query_text(
        "SELECT (percentile_cont(" + std::to_string(p) +
        ") WITHIN GROUP (ORDER BY extract(epoch from at - '" + stamped +
        "'::timestamptz)))::text FROM connection_events WHERE trigger = 'scheduled' AND "
        "outcome = 'refreshed'"));
  };
  const auto processed = fake.control("GET", "/control/requests")["processed"].get<int>();
  std::cout << json{{"bench", "scheduler_throughput"},
                    {"instances", instances_n},
                    {"connections", connections},
                    {"provider_calls", processed},
                    {"wall_s", wall},
                    {"refreshes_per_s", connections / wall},
                    {"pg_cpu_ms_per_refresh", 1000.0 * cpu / connections},
                    {"sql_statements_per_refresh", statements / connections},
                    {"commits_per_refresh", static_cast<double>(commit_count) / connections},
                    {"lag_p50_s", lag(0.5)},
                    {"lag_p99_s", lag(0.99)}}
                   .dump()
            << std::endl;
  CHECK(processed == connections);
}

}  // namespace

TEST_CASE("scheduled refreshes per second: one instance", "[.bench][scheduler_throughput]") {
  run_scheduled_throughput(
      1, std::getenv("TOKEND_BENCH_N") ? std::atoi(std::getenv("TOKEND_BENCH_N")) : 5000);
}

TEST_CASE("scheduled refreshes per second: three instances", "[.bench][scheduler_throughput]") {
  run_scheduled_throughput(3, 9000);
}

TEST_CASE("claim query time at 10,000 and 100,000 rows", "[.bench][claim_query]") {
  scratch_database db;
  {
    tokend_process t(db.url(), {{"TOKEND_ALLOW_INSECURE_PROVIDER_URLS", "1"}});  // migrates
    auto key = t.tenant_key("acme");
    put_provider(t, key, "p", "http://127.0.0.1:9/token");
  }
  seed_connections(db.url(), "acme", "p", 1000, [](int i) { return numbered("at-", i); });
  pqxx::connection c(db.url());
  auto grow_to = [&](long long rows) {
    pqxx::work w(c);
    const auto have = w.exec("SELECT count(*) FROM connections")[0][0].as<long long>();
    // Copies of the seeded rows under new ids (their ciphertexts are bound to other row ids,
    // which the claim query never reads). Due times spread over the next day.
    w.exec(
        "INSERT INTO connections (tenant_id, id, provider_id, key_id, access_token_ct, "
        "refresh_token_ct, access_token_fp, refresh_token_fp, access_expires_at, "
        "access_lifetime, token_origin, next_refresh_at) SELECT c.tenant_id, 'x' || g, "
        "c.provider_id, c.key_id, c.access_token_ct, c.refresh_token_ct, c.access_token_fp, "
        "c.refresh_token_fp, now() + interval '1 hour', 3600, c.token_origin, now() + "
        "g * interval '1 second' FROM generate_series(" +
        std::to_string(have) + ", " + std::to_string(rows - 1) +
        ") g, (SELECT * FROM connections LIMIT 1) c");
    // 1,000 due now, the rest in the future.
    w.exec(
        "UPDATE connections SET next_refresh_at = now() - interval '1 second' WHERE row_id "
        "IN (SELECT row_id FROM connections ORDER BY row_id LIMIT 1000)");
    w.commit();
    pqxx::nontransaction n(c);
    n.exec("VACUUM ANALYZE connections");
  };
  for (long long rows : {10000LL, 100000LL}) {
    grow_to(rows);
    std::vector<double> ms;
    for (int i = 0; i < 20; ++i) {
      pqxx::work w(c);
      const auto t0 = std::chrono::steady_clock::now();
      auto r = tokend::store::claim_due(w, "bench", 8, 80);
      ms.push_back(
          std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count());
      REQUIRE(r.size() == 8);
      w.abort();  // every round claims from the same state
    }
    std::sort(ms.begin(), ms.end());
    pqxx::work w(c);
    std::string plan;
    for (const auto& row :
         w.exec("EXPLAIN SELECT c.row_id FROM connections c WHERE c.status = 'active' AND "
                "c.next_refresh_at <= now() ORDER BY c.next_refresh_at LIMIT 8")) {
      plan += row[0].as<std::string>() + " | ";
    }
    std::cout
        << json{{"bench", "claim_query"},      {"rows", rows},        {"due", 1000}, {"claim", 8},
                {"p50_ms", ms[ms.size() / 2]}, {"max_ms", ms.back()}, {"plan", plan}}
               .dump()
        << std::endl;
    CHECK(plan.find("connections_next_refresh") != std::string::npos);
  }
}
