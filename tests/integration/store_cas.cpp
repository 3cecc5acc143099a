// The store API used by the refresh engine: compare-and-swap writes of a sealed token set.
#include <catch2/catch.hpp>
#include <future>
#include <pqxx/pqxx>

#include "crypto/token_seal.hpp"
#include "store/repository.hpp"
#include "support/fixtures.hpp"

using namespace tokend;
using nlohmann::json;

namespace {
sys_time test_now() { return wall_clock().now(); }
}  // namespace

TEST_CASE("racing cas_write_token_set on one version: exactly one wins, nothing lost",
          "[store_cas]") {
  test::scratch_database db;
  crypto::keyring keys({{"k1", std::string(32, 'a')}});
  {
    test::tokend_process t(db.url());  // applies migrations
    auto key = t.tenant_key("acme");
    test::put_provider(t, key, "idp", "https://x.example/t",
                       json{{"token_endpoint_auth_method", "none"}});
    REQUIRE(t.call("PUT", "/v1/connections/c1", key,
                   json{{"provider", "idp"}, {"access_token", "a0"}, {"refresh_token", "r0"}})
                .status == 201);
  }
  for (int round = 0; round < 20; ++round) {
    long long version = 0, row_id = 0;
    {
      pqxx::connection c(db.url());
      pqxx::read_transaction tx(c);
      auto rec = store::get_connection(tx, "acme", "c1");
      REQUIRE(rec);
      version = rec->token_version;
      row_id = rec->row_id;
    }
    auto writer = [&](std::string tag) {
      pqxx::connection c(db.url());
      pqxx::work tx(c);
      token_set t;
      t.access_token = "access-" + tag;
      t.refresh_token = "refresh-" + tag;
      t.access_expires_at = test_now() + std::chrono::seconds(3600);
      t.access_lifetime = 3600;
      store::token_write w{crypto::seal_tokens(keys, "acme", "c1", row_id, version + 1, t),
                           "Bearer",
                           std::nullopt,
                           t.access_expires_at,
                           3600,
                           std::nullopt,
                           test_now(),
                           std::nullopt,
                           std::nullopt,
                           false,
                           false};
      auto out = store::cas_write_token_set(tx, "acme", "c1", row_id, version, w);
      tx.commit();
      return out.has_value();
    };
    auto a = std::async(std::launch::async, writer, tokend::test::numbered("a", round));
    auto b = std::async(std::launch::async, writer, tokend::test::numbered("b", round));
    const bool wa = a.get(), wb = b.get();
    CHECK(wa != wb);
    pqxx::connection c(db.url());
    pqxx::read_transaction tx(c);
    auto rec = store::get_connection(tx, "acme", "c1");
    CHECK(rec->token_version == version + 1);
    auto opened = crypto::open_tokens(keys, *rec);
    REQUIRE(opened);
    const std::string winner = tokend::test::numbered(wa ? "a" : "b", round);
    CHECK(opened->access_token == "access-" + winner);
    CHECK(opened->refresh_token == "refresh-" + winner);  // the pair is from one cycle
  }
}
