// No plaintext secret at rest or in logs; ciphertexts are bound to their row, field and version.
#include <catch2/catch.hpp>
#include <pqxx/pqxx>

#include "crypto/crypto.hpp"
#include "support/fixtures.hpp"

using namespace tokend::test;
using nlohmann::json;
namespace crypto = tokend::crypto;

namespace {

std::vector<std::string> forms(const std::string& secret) {
  std::string upper_hex = crypto::hex(secret);
  for (auto& c : upper_hex) c = static_cast<char>(std::toupper(c));
  return {secret, crypto::hex(secret), upper_hex, crypto::base64(secret),
          crypto::base64url(secret)};
}

std::string pg_dump(const std::string& url) {
  auto r = run_command({"/usr/lib/postgresql/15/bin/pg_dump", "--data-only", "-d", url});
  REQUIRE(r.exit_code == 0);
  return r.output;
}

}  // namespace

TEST_CASE("pg_dump and logs hold no plaintext tokens, secrets, API keys or master keys",
          "[secrets_at_rest]") {
  scratch_database db;
  tokend_process t(db.url(), {{"TOKEND_LOG_LEVEL", "debug"}});
  auto key = t.tenant_key("acme");
  const std::string client_secret = "client-secret-7f3a9c1e55";
  const std::string access = "access-token-9b8c7d6e5f4a";
  const std::string refresh = "refresh-token-1a2b3c4d5e6f";
  REQUIRE(t.call("PUT", "/v1/providers/idp", key,
                 json{{"type", "oauth2"},
                      {"client_id", "c"},
                      {"client_secret", client_secret},
                      {"token_url", "https://idp.example.com/token"}})
              .status == 201);
  REQUIRE(t.call("PUT", "/v1/connections/c1", key,
                 json{{"provider", "idp"}, {"access_token", access}, {"refresh_token", refresh}})
              .status == 201);
  REQUIRE(t.call("GET", "/v1/tokens/c1", key).status == 200);
  t.stop();

  const auto dump = pg_dump(db.url());
  REQUIRE(dump.find("COPY public.connections") != std::string::npos);  // the dump has the rows
  const auto logs = t.output();
  auto master = *crypto::base64_decode(kTestMasterKeyB64);
  for (const auto& secret : {client_secret, access, refresh, key, kTestAdminToken, master}) {
    for (const auto& f : forms(secret)) {
      INFO("form of a secret: " << f.substr(0, 6) << "...");
      CHECK(dump.find(f) == std::string::npos);
      CHECK(logs.find(f) == std::string::npos);
    }
  }
  CHECK(dump.find(crypto::fingerprint(access)) != std::string::npos);  // fingerprints are stored
}

TEST_CASE(
    "a ciphertext moved to another row or rolled back to an older version fails with "
    "decrypt_failed",
    "[secrets_at_rest]") {
  scratch_database db;
  // The test edits ciphertexts behind tokend's back (no change notification), so the cache
  // would keep serving what it decrypted before: read through to the database.
  tokend_process t(db.url(), {{"TOKEND_CACHE", "off"}});
  auto key = t.tenant_key("acme");
  put_provider(t, key, "idp", "https://idp.example.com/token");
  for (auto id : {"c1", "c2", "c3"}) {
    REQUIRE(t.call("PUT", std::string("/v1/connections/") + id, key,
                   json{{"provider", "idp"}, {"access_token", std::string("tok-") + id}})
                .status == 201);
  }
  pqxx::connection conn(db.url());
  {
    pqxx::work tx(conn);
    tx.exec(
        "UPDATE connections SET access_token_ct = (SELECT access_token_ct FROM connections "
        "WHERE id = 'c1') WHERE id = 'c2'");
    tx.commit();
  }
  auto moved = t.call("GET", "/v1/tokens/c2", key);
  CHECK(moved.status == 500);
  CHECK(moved.json()["code"] == "decrypt_failed");
  CHECK(moved.body.find("tok-c1") == std::string::npos);
  auto events = t.call("GET", "/v1/connections/c2/events", key).json()["items"];
  CHECK(events[0]["outcome"] == "decrypt_failed");
  // The view still renders, from the stored fingerprints (never decrypting): c2's own.
  auto c2_view = t.call("GET", "/v1/connections/c2", key);
  REQUIRE(c2_view.status == 200);
  const auto fp = c2_view.json()["access_token_fingerprint"].get<std::string>();
  CHECK(fp.rfind("sha256:", 0) == 0);
  CHECK(fp.size() == 7 + 16);
  CHECK(fp == db.query_text("SELECT access_token_fp FROM connections WHERE id = 'c2'"));
  CHECK(fp != db.query_text("SELECT access_token_fp FROM connections WHERE id = 'c1'"));
  CHECK(c2_view.json()["refresh_token_fingerprint"].is_null());  // imported without one

  // Older version's ciphertext put back after a replace.
  std::string old_ct;
  {
    pqxx::work tx(conn);
    old_ct = tx.exec1("SELECT encode(access_token_ct, 'hex') FROM connections WHERE id = 'c3'")[0]
                 .as<std::string>();
    tx.commit();
  }
  REQUIRE(t.call("PUT", "/v1/connections/c3", key,
                 json{{"provider", "idp"}, {"access_token", "tok-c3-v2"}})
              .status == 200);
  CHECK(t.call("GET", "/v1/tokens/c3", key).json()["access_token"] == "tok-c3-v2");
  {
    pqxx::work tx(conn);
    tx.exec_params("UPDATE connections SET access_token_ct = decode($1, 'hex') WHERE id = 'c3'",
                   old_ct);
    tx.commit();
  }
  auto rolled_back = t.call("GET", "/v1/tokens/c3", key);
  CHECK(rolled_back.status == 500);
  CHECK(rolled_back.json()["code"] == "decrypt_failed");

  // A deleted and re-created connection cannot take the old row's ciphertext.
  std::string c1_ct;
  {
    pqxx::work tx(conn);
    c1_ct = tx.exec1("SELECT encode(access_token_ct, 'hex') FROM connections WHERE id = 'c1'")[0]
                .as<std::string>();
    tx.commit();
  }
  REQUIRE(t.call("DELETE", "/v1/connections/c1", key).status == 204);
  REQUIRE(t.call("PUT", "/v1/connections/c1", key,
                 json{{"provider", "idp"}, {"access_token", "tok-c1-new"}})
              .status == 201);
  {
    pqxx::work tx(conn);
    tx.exec_params("UPDATE connections SET access_token_ct = decode($1, 'hex') WHERE id = 'c1'",
                   c1_ct);
    tx.commit();
  }
  CHECK(t.call("GET", "/v1/tokens/c1", key).json()["code"] == "decrypt_failed");
}

TEST_CASE("rows sealed under a key that is not configured answer decrypt_failed; tokend starts",
          "[secrets_at_rest]") {
  scratch_database db;
  std::string key;
  {
    tokend_process t(db.url());
    key = t.tenant_key("acme");
    put_provider(t, key, "idp", "https://idp.example.com/token");
    REQUIRE(
        t.call("PUT", "/v1/connections/c1", key, json{{"provider", "idp"}, {"access_token", "tok"}})
            .status == 201);
  }
  const std::string other = "other:" + crypto::base64(std::string(32, 'z'));
  tokend_process t(db.url(), {{"TOKEND_MASTER_KEYS", other}});
  auto r = t.call("GET", "/v1/tokens/c1", key);
  CHECK(r.status == 500);
  CHECK(r.json()["code"] == "decrypt_failed");
  CHECK(t.call("GET", "/v1/connections/c1", key).status == 200);
  // Back with the key configured (as a secondary), it opens again.
  tokend_process back(db.url(), {{"TOKEND_MASTER_KEYS", other + ",test1:" + kTestMasterKeyB64}});
  CHECK(back.call("GET", "/v1/tokens/c1", key).json()["access_token"] == "tok");
}
