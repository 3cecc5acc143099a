// The refresh engine against a real OAuth 2.0 server (oidc-provider, configured like Airtable:
// rotating refresh tokens, reuse of a consumed one revokes the whole grant).
#include <atomic>
#include <catch2/catch.hpp>
#include <future>
#include <pqxx/pqxx>
#include <random>
#include <set>
#include <thread>

#include "crypto/crypto.hpp"
#include "crypto/token_seal.hpp"
#include "store/repository.hpp"
#include "support/fixtures.hpp"

using namespace tokend::test;
using nlohmann::json;
using namespace std::chrono_literals;

namespace {

const std::string kPast = "2020-01-01T00:00:00Z";

struct oidc_rig {
  node_peer idp{"oidc-server.mjs"};
  scratch_database db;

  std::map<std::string, std::string> env(std::map<std::string, std::string> extra = {}) const {
    extra.emplace("TOKEND_ALLOW_INSECURE_PROVIDER_URLS", "1");
    return extra;
  }
  static std::string setup_tenant(const tokend_process& t, const std::string& token_url) {
    auto key = t.tenant_key("acme");
    REQUIRE(t.call("PUT", "/v1/providers/airtable", key,
                   json{{"type", "airtable"},
                        {"client_id", "tokend-test"},
                        {"client_secret", "tokend-test-secret"},
                        {"token_url", token_url}})
                .status == 201);
    return key;
  }
  json mint(int n) { return idp.control("POST", "/test/grants", json{{"count", n}})["items"]; }
  json stats() { return idp.control("GET", "/test/stats"); }
  void import(const tokend_process& t, const std::string& key, const std::string& id,
              const json& grant) {
    REQUIRE(t.call("PUT", "/v1/connections/" + id, key,
                   json{{"provider", "airtable"},
                        {"access_token", grant["access_token"]},
                        {"refresh_token", grant["refresh_token"]},
                        {"expires_at", kPast}})
                .status == 201);
  }
  std::string stored_refresh(const std::string& id) {
    auto rt = stored_refresh_token(db.url(), "acme", id);
    REQUIRE(rt);
    return *rt;
  }
  json refresh_token_state(const std::string& value) {
    return idp.control("GET", "/test/refresh-token?value=" + value);
  }
};

}  // namespace

TEST_CASE("200 concurrent GETs on one expired connection: exactly one refresh", "[refresh_oidc]") {
  oidc_rig rig;
  tokend_process t(rig.db.url(), rig.env());
  auto key = oidc_rig::setup_tenant(t, rig.idp.url("/token"));
  rig.import(t, key, "c1", rig.mint(1)[0]);
  // The provider holds its answer 2 s, so every caller arrives while the one flight is out and
  // joins it: the joined count is exact.
  rig.idp.control("POST", "/test/answer-delay", json{{"ms", 2000}, {"count", 1}});

  std::vector<std::future<http_reply>> calls;
  for (int i = 0; i < 200; ++i) {
    calls.push_back(std::async(std::launch::async, [&] {
      return http_call(t.address(), "GET", "/v1/tokens/c1", "",
                       {{"Authorization", "Bearer " + key}}, 30s);
    }));
  }
  std::set<std::string> tokens;
  int ok = 0;
  for (auto& c : calls) {
    auto r = c.get();
    if (r.status == 200) {
      ++ok;
      tokens.insert(r.json()["access_token"].get<std::string>());
    }
  }
  CHECK(ok == 200);
  CHECK(tokens.size() == 1);
  auto s = rig.stats();
  CHECK(s["refresh_success"] == 1);
  CHECK(s["invalid_grant"] == 0);
  auto events = t.call("GET", "/v1/connections/c1/events", key).json()["items"];
  REQUIRE(events.size() == 2);  // import + one refresh, newest first
  CHECK(events[0]["outcome"] == "refreshed");
  CHECK(events[1]["outcome"] == "imported");
  CHECK(events[0]["joined_count"] == 199);  // everyone but the caller that started it
  // The stored refresh token is the newest one, unspent at the provider.
  auto state = rig.refresh_token_state(rig.stored_refresh("c1"));
  CHECK(state["exists"] == true);
  CHECK(state["consumed"] == false);
}

TEST_CASE("100 sequential conditional refreshes: each version +1, newest refresh token stored",
          "[refresh_oidc]") {
  oidc_rig rig;
  tokend_process t(rig.db.url(), rig.env());
  auto key = oidc_rig::setup_tenant(t, rig.idp.url("/token"));
  rig.import(t, key, "c1", rig.mint(1)[0]);
  long long version = 1;
  std::string previous_rt = rig.stored_refresh("c1");
  for (int i = 0; i < 100; ++i) {
    auto r = t.call("POST", "/v1/tokens/c1/refresh", key, json{{"if_token_version", version}});
    REQUIRE(r.status == 200);
    REQUIRE(r.json()["token_version"] == version + 1);
    ++version;
    const auto rt = rig.stored_refresh("c1");
    CHECK(rt != previous_rt);
    auto now_state = rig.refresh_token_state(rt);
    CHECK(now_state["exists"] == true);
    CHECK(now_state["consumed"] == false);
    auto old_state = rig.refresh_token_state(previous_rt);
    CHECK(old_state["consumed"] == true);
    previous_rt = rt;
  }
  auto s = rig.stats();
  CHECK(s["refresh_success"] == 100);
  CHECK(s["invalid_grant"] == 0);
}

TEST_CASE("a grant revoked at the provider: one failing call, then 409 with no provider calls",
          "[refresh_oidc]") {
  oidc_rig rig;
  tokend_process t(rig.db.url(), rig.env());
  auto key = oidc_rig::setup_tenant(t, rig.idp.url("/token"));
  auto grant = rig.mint(1)[0];
  rig.import(t, key, "c1", grant);
  rig.idp.control("POST", "/test/revoke", json{{"grant_id", grant["grant_id"]}});

  auto r = t.call("GET", "/v1/tokens/c1", key);
  CHECK(r.status == 409);
  CHECK(r.json()["code"] == "reauth_required");
  CHECK(r.json()["reauth"]["reason"] == "grant_revoked");
  const auto after_first = rig.stats();
  CHECK(after_first["invalid_grant"] == 1);
  for (int i = 0; i < 5; ++i) {
    auto again = t.call("GET", "/v1/tokens/c1", key);
    CHECK(again.status == 409);
    CHECK(again.json()["reauth"]["reason"] == "grant_revoked");
  }
  CHECK(t.call("POST", "/v1/tokens/c1/refresh", key, json{{"if_token_version", 1}}).status == 409);
  CHECK(rig.stats()["invalid_grant"] == 1);
  CHECK(rig.stats()["refresh_error"] == after_first["refresh_error"]);
  auto view = t.call("GET", "/v1/connections/c1", key).json();
  CHECK(view["status"] == "needs_reauth");
  CHECK(view["reauth"]["reason"] == "grant_revoked");
  // A re-import with a fresh grant closes the circuit.
  auto fresh = rig.mint(1)[0];
  REQUIRE(t.call("PUT", "/v1/connections/c1", key,
                 json{{"provider", "airtable"},
                      {"access_token", fresh["access_token"]},
                      {"refresh_token", fresh["refresh_token"]},
                      {"expires_at", kPast}})
              .status == 200);
  view = t.call("GET", "/v1/connections/c1", key).json();
  CHECK(view["status"] == "active");
  CHECK(view["reauth"].is_null());
  CHECK(view["last_error"].is_null());
  auto served = t.call("GET", "/v1/tokens/c1", key);
  CHECK(served.status == 200);
  CHECK(served.json()["access_token"] != fresh["access_token"]);  // refreshed, expired import
  CHECK(rig.stats()["refresh_success"] == 1);
  CHECK(rig.stats()["invalid_grant"] == 1);
}

TEST_CASE("500 expired connections x 20 callers over 3 instances: exactly 500 refreshes",
          "[refresh_oidc]") {
  oidc_rig rig;
  constexpr int kConnections = 500, kCallers = 20, kInstances = 3, kWorkers = 48;
  std::vector<std::unique_ptr<tokend_process>> instances;
  for (int i = 0; i < kInstances; ++i) {
    instances.push_back(std::make_unique<tokend_process>(
        rig.db.url(), rig.env({{"TOKEND_THREADS", "2"},
                               {"TOKEND_DB_POOL_SIZE", "8"},
                               {"TOKEND_REFRESH_POOL_SIZE", "16"}})));
  }
  auto key = oidc_rig::setup_tenant(*instances[0], rig.idp.url("/token"));
  auto grants = rig.mint(kConnections);
  for (int i = 0; i < kConnections; ++i) {
    rig.import(*instances[i % kInstances], key, numbered("c", i), grants[i]);
  }
  rig.idp.control("POST", "/test/reset-stats");

  std::vector<std::pair<int, int>> work;  // (connection, instance)
  for (int c = 0; c < kConnections; ++c) {
    for (int k = 0; k < kCallers; ++k) work.emplace_back(c, k % kInstances);
  }
  std::shuffle(work.begin(), work.end(), std::mt19937(42));
  std::atomic<std::size_t> next{0};
  std::atomic<int> ok{0}, failed{0};
  std::mutex mu;
  std::map<int, std::set<std::string>> tokens_by_connection;
  std::map<std::string, int> failures;
  const auto start = std::chrono::steady_clock::now();
  std::vector<std::thread> workers;
  for (int w = 0; w < kWorkers; ++w) {
    workers.emplace_back([&] {
      for (;;) {
        auto i = next++;
        if (i >= work.size()) return;
        auto [c, inst] = work[i];
        auto r = http_call(instances[inst]->address(), "GET", "/v1/tokens/c" + std::to_string(c),
                           "", {{"Authorization", "Bearer " + key}}, 30s);
        if (r.status == 200) {
          ++ok;
          std::lock_guard lk(mu);
          tokens_by_connection[c].insert(r.json()["access_token"].get<std::string>());
        } else {
          ++failed;
          std::lock_guard lk(mu);
          failures[std::to_string(r.status) + " " + r.body.substr(0, 120)]++;
        }
      }
    });
  }
  for (auto& w : workers) w.join();
  const auto wall = std::chrono::steady_clock::now() - start;
  INFO("wall time " << std::chrono::duration_cast<std::chrono::milliseconds>(wall).count()
                    << " ms");
  for (auto& [what, n] : failures) UNSCOPED_INFO(n << " x " << what);
  CHECK(ok == kConnections * kCallers);
  CHECK(failed == 0);
  auto s = rig.stats();
  CHECK(s["refresh_success"] == kConnections);
  CHECK(s["invalid_grant"] == 0);
  CHECK(s["refresh_error"] == 0);
  int single = 0;
  for (auto& [c, set] : tokens_by_connection) single += set.size() == 1 ? 1 : 0;
  CHECK(single == kConnections);  // every caller of a connection got the same new token
}
