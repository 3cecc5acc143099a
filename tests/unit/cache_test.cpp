#include <catch2/catch.hpp>

#include <chrono>
#include <nlohmann/json.hpp>
#include <thread>

#include "cache/caches.hpp"
#include "core/model.hpp"

using namespace tokend::cache;

TEST_CASE("lru keeps its bound and evicts the least recently used", "[cache]") {
  lru<int> c(3);
  CHECK(c.put("a", 1) == 0);
  c.put("b", 2);
  c.put("c", 3);
  CHECK(c.get("a") == std::optional<int>(1));  // a is now most recent
  CHECK(c.put("d", 4) == 1);                   // evicts b
  CHECK(!c.get("b"));
  CHECK(c.size() == 3);
  CHECK(c.erase("a"));
  CHECK(!c.erase("a"));
  c.clear();
  CHECK(c.size() == 0);
}

TEST_CASE("an insert is allowed only if nothing happened since the read began", "[cache]") {
  caches c({.enabled = true, .token_capacity = 10, .principal_capacity = 10}, nullptr);
  const auto key = caches::token_key("t", "c1");
  tokend::connection_record rec;
  rec.id = "c1";
  const auto v = render_token(rec, "at");

  auto down = c.state().begin(key);  // listener not up yet
  c.put_token(key, down, v);
  c.state().set_up(true);
  CHECK(!c.get_token(key));  // a read that began while the listener was down never caches

  auto t1 = c.state().begin(key);
  c.invalidate(key);  // a notification for this key arrived during the read
  c.put_token(key, t1, v);
  CHECK(!c.get_token(key));

  auto t2 = c.state().begin(key);
  c.flush();  // the listener reconnected during the read
  c.put_token(key, t2, v);
  CHECK(!c.get_token(key));

  auto t3 = c.state().begin(key);
  c.invalidate(caches::token_key("t", "other-key-in-another-stripe-probably"));
  c.put_token(key, t3, v);
  auto hit = c.get_token(key);
  REQUIRE(hit);
  CHECK(hit == v);

  c.state().set_up(false);  // listener down: caches are bypassed
  CHECK(!c.get_token(key));
}

TEST_CASE("entries are served and inserted only until the heartbeat's deadline", "[cache]") {
  using clock = std::chrono::steady_clock;
  caches c({.enabled = true, .token_capacity = 10, .principal_capacity = 10}, nullptr);
  const auto key = caches::token_key("t", "c1");
  tokend::connection_record rec;
  rec.id = "c1";
  const auto v = render_token(rec, "at");
  c.state().set_up(true);
  c.state().trust_until(clock::now() + std::chrono::milliseconds(50));
  c.put_token(key, c.state().begin(key), v);
  REQUIRE(c.get_token(key) == v);  // precondition: cached and served
  const auto ticket = c.state().begin(key);
  c.state().trust_until(clock::now() - std::chrono::seconds(1));  // an older vouch: no effect
  CHECK(c.get_token(key) == v);

  std::this_thread::sleep_for(std::chrono::milliseconds(80));
  CHECK(!c.state().up());
  CHECK(!c.get_token(key));  // past the deadline: bypassed
  const auto silent = c.state().begin(key);
  CHECK(!silent.valid);
  c.put_token(caches::token_key("t", "c2"), silent, v);  // a read that began in the silence
  c.put_token(caches::token_key("t", "c3"), ticket, v);  // a read whose insert came too late

  c.state().trust_until(clock::now() + std::chrono::hours(1));  // the next heartbeat arrives
  CHECK(c.state().up());
  CHECK(c.get_token(key) == v);  // caught up again: the entry was never contradicted
  CHECK(!c.get_token(caches::token_key("t", "c2")));
  CHECK(!c.get_token(caches::token_key("t", "c3")));
}

TEST_CASE("disabled caches never store", "[cache]") {
  caches c({.enabled = false}, nullptr);
  c.state().set_up(true);
  const auto key = caches::principal_key("abc");
  c.put_principal(key, c.state().begin(key),
                  std::make_shared<const cached_principal>(
                      cached_principal{"t", "k", {"tokens:read"}, std::nullopt}));
  CHECK(!c.get_principal(key));
}

TEST_CASE("the rendered reply is valid JSON with every field escaped", "[cache]") {
  tokend::connection_record rec;
  rec.id = "conn-1";
  rec.token_version = 7;
  rec.token_type = "Bearer";
  rec.scope = "data.records:read \"quoted\"";
  rec.access_expires_at = tokend::sys_time{} + std::chrono::seconds(1'800'000'000);
  rec.access_lifetime = 3600;
  const auto t = render_token(rec, "tok\\en\n\x01");
  CHECK(t->token_version == 7);
  CHECK(t->lifetime == 3600);
  const auto j = nlohmann::json::parse(t->json_head + "42" + t->json_tail + "}");
  CHECK(j == nlohmann::json{{"connection", "conn-1"},
                            {"access_token", "tok\\en\n\x01"},
                            {"token_type", "Bearer"},
                            {"expires_at", "2027-01-15T08:00:00Z"},
                            {"expires_in", 42},
                            {"scope", "data.records:read \"quoted\""},
                            {"token_version", 7}});
  rec.scope.reset();
  const auto j2 = nlohmann::json::parse(render_token(rec, "x")->json_head + "0" +
                                        render_token(rec, "x")->json_tail + "}");
  CHECK(j2["scope"].is_null());
}

TEST_CASE("a token that is not valid UTF-8 still renders to valid JSON", "[cache]") {
  tokend::connection_record rec;
  rec.id = "c1";
  std::shared_ptr<const cached_token> t;
  REQUIRE_NOTHROW(t = render_token(rec, "ab\xff\xfe"));
  const auto j = nlohmann::json::parse(t->json_head + "1" + t->json_tail + "}");
  CHECK(j["access_token"].get<std::string>().rfind("ab", 0) == 0);
}
