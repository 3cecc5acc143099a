#include <catch2/catch.hpp>

#include "app/config.hpp"

using tokend::app::needs;
using tokend::app::parse_config;

namespace {
const std::string kKey = "dGVzdC1tYXN0ZXIta2V5LTAwMDAwMDAwMDAwMDAwMDA=";
}

TEST_CASE("defaults follow the contract", "[config]") {
  auto r = parse_config(
      {{"TOKEND_DATABASE_URL", "postgresql:///x"}, {"TOKEND_MASTER_KEYS", "k1:" + kKey}},
      needs::serving);
  REQUIRE(r.cfg);
  CHECK(r.cfg->listen_host == "127.0.0.1");
  CHECK(r.cfg->listen_port == 8080);
  CHECK(r.cfg->public_url == "http://127.0.0.1:8080");
  CHECK(r.cfg->db_pool_size == 8);
  CHECK(r.cfg->listener_database_url.empty());  // the listener uses TOKEND_DATABASE_URL
  CHECK(r.cfg->refresh_pool_size == 16);
  CHECK(r.cfg->tenant_refresh_share == 25);
  CHECK(r.cfg->request_timeout.count() == 15);
  CHECK(r.cfg->force_refresh_min_interval.count() == 10);
  CHECK(r.cfg->provider_answer_timeout.count() == 60);
  // A sent refresh is awaited and persisted before exit: answer + request timeout + 5 s.
  CHECK(r.cfg->shutdown_grace.count() == 80);
  CHECK(r.cfg->scheduler);
  CHECK(r.cfg->scheduler_interval.count() == 1);
  CHECK(r.cfg->scheduler_concurrency == 8);
  CHECK(r.cfg->keepalive_margin.count() == 604800);
  CHECK(r.cfg->test_scheduler_pause_after_claim.count() == 0);
  CHECK(r.cfg->environment == "development");
  CHECK(!r.cfg->instance_id.empty());
  REQUIRE(r.cfg->master_keys.size() == 1);
  CHECK(r.cfg->master_keys[0].kid == "k1");
  CHECK(r.cfg->master_keys[0].key.size() == 32);
}

TEST_CASE("several master keys keep their order; the first is active", "[config]") {
  auto r = parse_config(
      {{"TOKEND_DATABASE_URL", "x"}, {"TOKEND_MASTER_KEYS", "new:" + kKey + ",old:" + kKey}},
      needs::serving);
  REQUIRE(r.cfg);
  REQUIRE(r.cfg->master_keys.size() == 2);
  CHECK(r.cfg->master_keys[0].kid == "new");
  auto dup = parse_config(
      {{"TOKEND_DATABASE_URL", "x"}, {"TOKEND_MASTER_KEYS", "a:" + kKey + ",a:" + kKey}},
      needs::serving);
  REQUIRE(dup.error);
  CHECK(dup.error->variable == "TOKEND_MASTER_KEYS");
}

TEST_CASE("public url and listen parse", "[config]") {
  auto r = parse_config(
      {{"TOKEND_LISTEN", "0.0.0.0:9000"}, {"TOKEND_PUBLIC_URL", "https://tokend.example.com/"}},
      needs::nothing);
  REQUIRE(r.cfg);
  CHECK(r.cfg->listen_port == 9000);
  CHECK(r.cfg->public_url == "https://tokend.example.com");
}

TEST_CASE("out of range values name their variable", "[config]") {
  for (auto [k, v] : std::vector<std::pair<std::string, std::string>>{
           {"TOKEND_REQUEST_TIMEOUT", "0"},
           {"TOKEND_REFRESH_POOL_SIZE", "100000"},
           {"TOKEND_TENANT_REFRESH_SHARE", "91"},
           {"TOKEND_TENANT_REFRESH_SHARE", "a quarter"},
           {"TOKEND_FORCE_REFRESH_MIN_INTERVAL", "-3"},
           {"TOKEND_SCHEDULER", "yes"},
           {"TOKEND_SCHEDULER_INTERVAL", "0"},
           {"TOKEND_SCHEDULER_CONCURRENCY", "0"},
           {"TOKEND_SCHEDULER_CONCURRENCY", "eight"},
           {"TOKEND_KEEPALIVE_MARGIN", "0"},
           {"TOKEND_KEEPALIVE_MARGIN", "7d"},
           {"TOKEND_ALLOW_INSECURE_PROVIDER_URLS", "yes"},
           {"TOKEND_ADMIN_TOKEN", "short"}}) {
    auto r = parse_config({{k, v}}, needs::nothing);
    REQUIRE(r.error);
    CHECK(r.error->variable == k);
  }
}

TEST_CASE("TOKEND_LISTENER_DATABASE_URL gives the listener its own URL", "[config]") {
  auto r = parse_config({{"TOKEND_DATABASE_URL", "postgresql://pooler/x"},
                         {"TOKEND_LISTENER_DATABASE_URL", "postgresql://direct/x"},
                         {"TOKEND_MASTER_KEYS", "k1:" + kKey}},
                        needs::serving);
  REQUIRE(r.cfg);
  CHECK(r.cfg->database_url == "postgresql://pooler/x");
  CHECK(r.cfg->listener_database_url == "postgresql://direct/x");
}

TEST_CASE("scheduler settings parse", "[config]") {
  auto r = parse_config({{"TOKEND_SCHEDULER", "off"},
                         {"TOKEND_SCHEDULER_INTERVAL", "5"},
                         {"TOKEND_SCHEDULER_CONCURRENCY", "32"},
                         {"TOKEND_KEEPALIVE_MARGIN", "86400"}},
                        needs::nothing);
  REQUIRE(r.cfg);
  CHECK_FALSE(r.cfg->scheduler);
  CHECK(r.cfg->scheduler_interval.count() == 5);
  CHECK(r.cfg->scheduler_concurrency == 32);
  CHECK(r.cfg->keepalive_margin.count() == 86400);
}

TEST_CASE("webhook settings: defaults, durations with units, bad values", "[config]") {
  auto d = parse_config({}, needs::nothing);
  REQUIRE(d.cfg);
  CHECK(d.cfg->webhooks);
  CHECK(d.cfg->webhook_retry_base.count() == 10000);
  CHECK(d.cfg->webhook_max_age.count() == 24LL * 3600 * 1000);
  CHECK(d.cfg->webhook_timeout.count() == 10000);
  CHECK(d.cfg->webhook_tenant_concurrency == 4);

  auto r = parse_config({{"TOKEND_WEBHOOKS", "off"},
                         {"TOKEND_WEBHOOK_RETRY_BASE", "250ms"},
                         {"TOKEND_WEBHOOK_MAX_AGE", "2h"},
                         {"TOKEND_WEBHOOK_TIMEOUT", "3"},
                         {"TOKEND_WEBHOOK_POLL_INTERVAL", "1m"},
                         {"TOKEND_WEBHOOK_TENANT_CONCURRENCY", "2"}},
                        needs::nothing);
  REQUIRE(r.cfg);
  CHECK_FALSE(r.cfg->webhooks);
  CHECK(r.cfg->webhook_retry_base.count() == 250);
  CHECK(r.cfg->webhook_max_age.count() == 7200000);
  CHECK(r.cfg->webhook_timeout.count() == 3000);
  CHECK(r.cfg->webhook_poll_interval.count() == 60000);
  CHECK(r.cfg->webhook_tenant_concurrency == 2);

  for (auto [k, v] : std::vector<std::pair<std::string, std::string>>{
           {"TOKEND_WEBHOOKS", "1"},
           {"TOKEND_WEBHOOK_RETRY_BASE", "5ms"},
           {"TOKEND_WEBHOOK_RETRY_BASE", "ten"},
           {"TOKEND_WEBHOOK_RETRY_BASE", "10x"},
           {"TOKEND_WEBHOOK_RETRY_BASE", "ms"},
           {"TOKEND_WEBHOOK_MAX_AGE", "-1s"},
           {"TOKEND_WEBHOOK_TIMEOUT", "2m"},
           {"TOKEND_WEBHOOK_TENANT_CONCURRENCY", "0"}}) {
    INFO(k << "=" << v);
    auto e = parse_config({{k, v}}, needs::nothing);
    REQUIRE(e.error);
    CHECK(e.error->variable == k);
  }
}
