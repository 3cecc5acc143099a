// The tenant share rule: one tenant's refreshes can never hold more than the refresh pool minus
// TOKEND_TENANT_REFRESH_SHARE percent, so a tenant whose provider hangs cannot starve the others.
#include <catch2/catch.hpp>
#include <future>

#include "support/fixtures.hpp"

using namespace tokend::test;
using nlohmann::json;
using namespace std::chrono_literals;

TEST_CASE("a tenant whose provider never answers cannot starve another tenant's refresh",
          "[tenant_share]") {
  scratch_database db;
  node_peer hang{"fake-token-endpoint.mjs"};
  node_peer healthy{"fake-token-endpoint.mjs"};
  tokend_process t(db.url(), {{"TOKEND_ALLOW_INSECURE_PROVIDER_URLS", "1"},
                              {"TOKEND_REFRESH_POOL_SIZE", "16"},
                              {"TOKEND_REQUEST_TIMEOUT", "5"}});
  const auto a = t.tenant_key("tenant-a");
  const auto b = t.tenant_key("tenant-b");
  put_provider(t, a, "p", hang.url("/token"));
  put_provider(t, b, "p", healthy.url("/token"));
  for (int i = 0; i < 40; ++i) REQUIRE(import_connection(t, a, numbered("c", i), "p", "at", "rt") == 201);
  REQUIRE(import_connection(t, b, "c0", "p", "b-at", "b-rt") == 201);
  hang.control("POST", "/control/script", {{"steps", {{{"never_answer", true}, {"repeat", 1000}}}}});

  std::vector<std::future<http_reply>> flood;
  for (int i = 0; i < 40; ++i) {
    flood.push_back(std::async(std::launch::async, [&, i] {
      return http_call(t.address(), "GET", "/v1/tokens/" + numbered("c", i), "",
                       {{"Authorization", "Bearer " + a}}, 20s);
    }));
  }
  // Tenant A holds its cap, 16 - 25 % = 12 of the pool (a lone tenant still gets most of it),
  // and no more.
  auto sent = [&] { return hang.control("GET", "/control/requests")["count"].get<int>(); };
  REQUIRE(eventually([&] { return sent() == 12; }, 4s));
  std::this_thread::sleep_for(300ms);
  REQUIRE(sent() == 12);

  // Meanwhile tenant B's refresh on a healthy provider goes through at once.
  const auto t0 = std::chrono::steady_clock::now();
  auto r = t.call("GET", "/v1/tokens/c0", b);
  const auto took = std::chrono::steady_clock::now() - t0;
  REQUIRE(r.status == 200);
  CHECK(r.json()["access_token"] == "fake-at-1");
  CHECK(r.json()["token_version"] == 2);
  CHECK(took < 2s);
  CHECK(healthy.control("GET", "/control/requests")["count"] == 1);

  // A's callers get the transient fallback at their deadline (their tokens had expired); the 28
  // that never got a tenant slot are counted, and no more of A's requests reached the provider.
  int unavailable = 0;
  for (auto& f : flood) {
    auto reply = f.get();
    unavailable += reply.status == 503 && reply.json()["code"] == "provider_unavailable";
  }
  CHECK(unavailable == 40);
  CHECK(sent() == 12);
  CHECK(metric_value(t.get("/metrics").body,
                     "tokend_refresh_slot_timeouts_total{reason=\"tenant_share\"}") == 28);
}
