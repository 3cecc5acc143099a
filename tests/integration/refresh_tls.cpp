// HTTPS to token endpoints: peer verification against the configured CA store and host-name
// checking. The test's CA is supplied with SSL_CERT_FILE (OpenSSL's default verify path);
// loopback is allowed by TOKEND_ALLOW_INSECURE_PROVIDER_URLS, which does not switch off TLS checks.
// (The fake's control API is HTTPS here too, so outcomes are read from tokend's events.)
#include <catch2/catch.hpp>
#include <filesystem>

#include "support/fixtures.hpp"

using namespace tokend::test;
using nlohmann::json;

TEST_CASE("token endpoint over TLS: verified certificate and host name", "[refresh_tls]") {
  const auto dir = temp_dir("tokend-tls");
  auto gen = run_command({"/usr/bin/openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes",
                          "-keyout", dir + "/key.pem", "-out", dir + "/cert.pem", "-days", "2",
                          "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost"});
  REQUIRE(gen.exit_code == 0);
  node_peer fake("fake-token-endpoint.mjs",
                 {"--tls-cert", dir + "/cert.pem", "--tls-key", dir + "/key.pem"});
  const auto port = fake.address().substr(fake.address().rfind(':') + 1);
  scratch_database db;

  auto setup = [&](const tokend_process& t, const std::string& host) {
    auto key = t.tenant_key("acme");
    REQUIRE(t.call("PUT", "/v1/providers/idp", key,
                   json{{"type", "oauth2"},
                        {"client_id", "c"},
                        {"client_secret", "s"},
                        {"token_url", "https://" + host + ":" + port + "/token"}})
                .status < 300);
    auto put = t.call("PUT", "/v1/connections/c-" + host, key,
                      json{{"provider", "idp"},
                           {"access_token", "a"},
                           {"refresh_token", "r"},
                           {"expires_at", "2020-01-01T00:00:00Z"}});
    REQUIRE(put.status < 300);
    return key;
  };

  SECTION("a certificate signed by a trusted CA for the host: refreshed") {
    tokend_process t(db.url(), {{"TOKEND_ALLOW_INSECURE_PROVIDER_URLS", "1"},
                                {"SSL_CERT_FILE", dir + "/cert.pem"}});
    auto key = setup(t, "localhost");
    auto r = t.call("GET", "/v1/tokens/c-localhost", key);
    CHECK(r.status == 200);
    CHECK(r.json()["access_token"] == "fake-at-1");
  }
  SECTION("an untrusted certificate: never sent, 503") {
    tokend_process t(db.url(), {{"TOKEND_ALLOW_INSECURE_PROVIDER_URLS", "1"}});
    auto key = setup(t, "localhost");
    auto r = t.call("GET", "/v1/tokens/c-localhost", key);
    CHECK(r.status == 503);
    auto ev = t.call("GET", "/v1/connections/c-localhost/events", key).json()["items"][0];
    CHECK(ev["outcome"] == "transient");
    CHECK(ev["description"] == "request not sent");
    CHECK(t.output().find("tls handshake") != std::string::npos);
  }
  SECTION("a trusted certificate for another host name: never sent, 503") {
    tokend_process t(db.url(), {{"TOKEND_ALLOW_INSECURE_PROVIDER_URLS", "1"},
                                {"SSL_CERT_FILE", dir + "/cert.pem"}});
    auto key = setup(t, "127.0.0.1");
    auto r = t.call("GET", "/v1/tokens/c-127.0.0.1", key);
    CHECK(r.status == 503);
    auto ev = t.call("GET", "/v1/connections/c-127.0.0.1/events", key).json()["items"][0];
    CHECK(ev["description"] == "request not sent");
    CHECK(t.output().find("tls handshake") != std::string::npos);
  }
  std::filesystem::remove_all(dir);
}
