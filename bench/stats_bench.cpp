// GET /v1/stats with 1,000,000 events of the tenant in the last day (about what hourly refreshes
// of 42,000 connections write), plus 1,000,000 of another tenant: the counts come from an
// index-only range scan of connection_events_stats. Run through bench/run.sh "[stats_query]".
#include <algorithm>
#include <catch2/catch.hpp>
#include <iostream>
#include <pqxx/pqxx>

#include "support/fixtures.hpp"

using namespace tokend::test;
using nlohmann::json;

TEST_CASE("stats query time at 1,000,000 events", "[.bench][stats_query]") {
  scratch_database db;
  tokend_process t(db.url(), {{"TOKEND_ALLOW_INSECURE_PROVIDER_URLS", "1"}});
  auto key = t.tenant_key("acme");
  auto other = t.tenant_key("globex");
  put_provider(t, key, "p", "http://127.0.0.1:9/token");
  put_provider(t, other, "p", "http://127.0.0.1:9/token");
  REQUIRE(import_connection(t, key, "c1", "p", "a", "r", 3600) == 201);
  REQUIRE(import_connection(t, other, "c1", "p", "a", "r", 3600) == 201);
  pqxx::connection c(db.url());
  {
    pqxx::work w(c);
    // Spread over the last 24 h; outcomes in a refresh-like mix (mostly refreshed).
    for (const char* tenant : {"acme", "globex"}) {
      w.exec(std::string("INSERT INTO connection_events (tenant_id, connection_id, "
                         "connection_row_id, at, trigger, outcome) SELECT tenant_id, id, row_id, "
                         "now() - (g % 86400) * interval '1 second', 'scheduled', "
                         "(ARRAY['refreshed','refreshed','refreshed','refreshed','refreshed',"
                         "'refreshed','refreshed','transient','invalid_grant','provider_error'])"
                         "[1 + g % 10] FROM generate_series(1, 1000000) g, connections WHERE "
                         "tenant_id = '") +
             tenant + "'");
    }
    w.commit();
    pqxx::nontransaction n(c);
    n.exec("VACUUM ANALYZE connection_events");
  }
  std::vector<double> ms;
  json body;
  for (int i = 0; i < 20; ++i) {
    const auto t0 = std::chrono::steady_clock::now();
    auto r = t.call("GET", "/v1/stats", key);
    ms.push_back(
        std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count());
    REQUIRE(r.status == 200);
    body = r.json();
  }
  std::sort(ms.begin(), ms.end());
  // Precondition: the day really holds the million (and only acme's).
  const auto& day = body["refreshes"]["last_day"];
  CHECK(day["ok"].get<long long>() + day["transient"].get<long long>() +
            day["invalid_grant"].get<long long>() + day["provider_error"].get<long long>() ==
        1000000);
  pqxx::work w(c);
  std::string plan;
  for (const auto& row :
       w.exec("EXPLAIN SELECT outcome, count(*) FILTER (WHERE at >= now() - interval '1 hour'), "
              "count(*) FROM connection_events WHERE tenant_id = 'acme' AND at >= now() - interval "
              "'1 day' AND outcome IN ('refreshed', 'transient', 'invalid_grant', 'config_error', "
              "'provider_error') GROUP BY outcome")) {
    plan += row[0].as<std::string>() + " | ";
  }
  std::cout << json{{"bench", "stats_query"},
                    {"events_of_tenant_last_day", 1000000},
                    {"events_in_table", 2000000},
                    {"requests", ms.size()},
                    {"p50_ms", ms[ms.size() / 2]},
                    {"max_ms", ms.back()},
                    {"plan", plan}}
                   .dump()
            << std::endl;
  CHECK(plan.find("connection_events_stats") != std::string::npos);
}
