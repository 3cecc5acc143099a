// `tokend rotate-keys` while tokend serves: no read fails, no write is lost, every row ends
// under the new key, and a second run is a no-op.
#include <atomic>
#include <catch2/catch.hpp>
#include <pqxx/pqxx>
#include <thread>

#include "crypto/crypto.hpp"
#include "support/fixtures.hpp"

using namespace tokend::test;
using nlohmann::json;
using namespace std::chrono_literals;

TEST_CASE("rotate-keys races with compare-and-swap writes and reads", "[key_rotation]") {
  scratch_database db;
  const std::string old_keys = "test1:" + kTestMasterKeyB64;
  const std::string new_keys =
      "k2:" + tokend::crypto::base64(std::string(32, 'k')) + "," + old_keys;
  constexpr int kConnections = 400;
  std::string key;
  {
    tokend_process t(db.url(), {{"TOKEND_MASTER_KEYS", old_keys}});
    key = t.tenant_key("acme");
    put_provider(t, key, "idp", "https://idp.example.com/token");
    for (int i = 0; i < kConnections; ++i) {
      REQUIRE(
          t.call("PUT", "/v1/connections/c" + std::to_string(i), key,
                 json{{"provider", "idp"}, {"access_token", "tok-" + std::to_string(i) + "-v1"}})
              .status == 201);
    }
  }
  tokend_process t(db.url(), {{"TOKEND_MASTER_KEYS", new_keys}, {"TOKEND_DB_POOL_SIZE", "8"}});

  std::atomic<bool> stop{false};
  std::atomic<int> read_failures{0}, reads{0}, write_failures{0}, writes{0};
  // Writer: compare-and-swap imports on the first 50 connections, tracking versions.
  std::vector<long long> versions(50, 1);
  std::thread writer([&] {
    for (int round = 0; !stop && round < 40; ++round) {
      for (int i = 0; i < 50 && !stop; ++i) {
        auto r = t.call("PUT", "/v1/connections/c" + std::to_string(i), key,
                        json{{"provider", "idp"},
                             {"access_token",
                              "tok-" + std::to_string(i) + "-v" + std::to_string(versions[i] + 1)},
                             {"if_token_version", versions[i]}});
        if (r.status == 200) {
          ++versions[i];
          ++writes;
        } else {
          ++write_failures;
        }
      }
    }
  });
  std::thread reader([&] {
    for (int n = 0; !stop && n < 20000; ++n) {
      auto r = t.call("GET", "/v1/tokens/c" + std::to_string(n % kConnections), key);
      ++reads;
      if (r.status != 200) ++read_failures;
    }
  });
  std::this_thread::sleep_for(200ms);
  const int writes_before = writes, reads_before = reads;
  auto rotate =
      run_command({TOKEND_BINARY, "rotate-keys", "--batch=5"},
                  {{"TOKEND_DATABASE_URL", db.url()}, {"TOKEND_MASTER_KEYS", new_keys}}, 120s);
  const int writes_during = writes - writes_before, reads_during = reads - reads_before;
  std::this_thread::sleep_for(200ms);
  stop = true;
  writer.join();
  reader.join();
  INFO(rotate.output);
  CHECK(rotate.exit_code == 0);
  CHECK(rotate.output.find("rows re-sealed") != std::string::npos);
  // The race happened: writes and reads went on while rotate-keys ran.
  CHECK(writes_during > 0);
  CHECK(reads_during > 0);
  CHECK(read_failures == 0);
  CHECK(write_failures == 0);

  pqxx::connection conn(db.url());
  {
    pqxx::read_transaction tx(conn);
    CHECK(tx.exec1("SELECT count(*) FROM connections WHERE key_id <> 'k2'")[0].as<int>() == 0);
    CHECK(tx.exec1("SELECT count(*) FROM providers WHERE key_id <> 'k2'")[0].as<int>() == 0);
  }
  auto again = run_command({TOKEND_BINARY, "rotate-keys"},
                           {{"TOKEND_DATABASE_URL", db.url()}, {"TOKEND_MASTER_KEYS", new_keys}});
  CHECK(again.exit_code == 0);
  CHECK(again.output.find("0/0 rows re-sealed") != std::string::npos);

  // Only the new key now, and no cache: every row opens from PostgreSQL with the newest write.
  tokend_process only_new(
      db.url(), {{"TOKEND_MASTER_KEYS", "k2:" + tokend::crypto::base64(std::string(32, 'k'))},
                 {"TOKEND_CACHE", "off"}});
  for (int i = 0; i < kConnections; ++i) {
    auto r = only_new.call("GET", "/v1/tokens/c" + std::to_string(i), key);
    INFO("c" << i << ": " << r.status << " " << r.body);
    REQUIRE(r.status == 200);
    const long long v = i < 50 ? versions[i] : 1;
    CHECK(r.json()["token_version"] == v);
    CHECK(r.json()["access_token"] == "tok-" + std::to_string(i) + "-v" + std::to_string(v));
  }
}
