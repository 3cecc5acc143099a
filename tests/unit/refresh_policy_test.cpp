#include <catch2/catch.hpp>
#include <nlohmann/json.hpp>

#include "core/refresh_policy.hpp"

using namespace tokend;
using namespace tokend::policy;
using namespace std::chrono_literals;

namespace {

const sys_time t0 = from_micros(1'700'000'000'000'000LL);

classification run(int status, std::string body, bool sent = true, bool complete = true,
                   std::optional<std::string> retry_after = std::nullopt) {
  return classify({sent, status, complete, std::move(body), std::move(retry_after)}, t0,
                  {3600, 86400});
}

}  // namespace

TEST_CASE("freshness: min(min_ttl, half the issued lifetime)", "[policy]") {
  CHECK(is_fresh(t0 + 400s, 3600, 300, t0));
  CHECK(!is_fresh(t0 + 200s, 3600, 300, t0));
  CHECK(is_fresh(t0 + 30s, 60, 300, t0));  // min(300, 30) = 30
  CHECK(!is_fresh(t0 + 29s, 60, 300, t0));
  CHECK(is_fresh(t0 + 1s, 3600, 0, t0));
  CHECK(!is_fresh(t0, 3600, 0, t0));  // expired is never fresh
}

TEST_CASE("classification: successes", "[policy]") {
  auto c = run(
      200,
      R"({"access_token":"a","refresh_token":"r","expires_in":120,"token_type":"bearer","scope":"x y","refresh_expires_in":500})");
  REQUIRE(c.kind == outcome::refreshed);
  CHECK(c.tokens->access_token == "a");
  CHECK(c.tokens->refresh_token == std::optional<std::string>("r"));
  CHECK(c.tokens->access_expires_at == t0 + 120s);  // from the moment the request was sent
  CHECK(c.tokens->access_lifetime == 120);
  CHECK(c.tokens->refresh_expires_at == t0 + 500s);
  CHECK(c.tokens->scope == std::optional<std::string>("x y"));

  auto odd = run(
      200, R"({"access_token":"a","refresh_token":"r","expires_in":"3600","token_type":"mac"})");
  REQUIRE(odd.kind == outcome::refreshed);
  CHECK(odd.tokens->access_lifetime == 3600);  // non-integer -> default
  CHECK(odd.tokens->token_type == "Bearer");
  CHECK(odd.tokens->refresh_expires_at == t0 + 86400s);  // provider's refresh_token_lifetime
  CHECK(run(200, R"({"access_token":"a","expires_in":-1})").tokens->access_lifetime == 3600);
  CHECK(run(200, R"({"access_token":"a","expires_in":0})").tokens->access_lifetime == 3600);
  CHECK(run(200, R"({"access_token":"a","expires_in":1.5})").tokens->access_lifetime == 3600);

  auto no_rt = run(200, R"({"access_token":"a"})");
  CHECK(no_rt.kind == outcome::refreshed);
  CHECK(!no_rt.tokens->refresh_token);  // keep the old one
  CHECK(!no_rt.tokens->scope);

  auto missing = run(200, R"({"refresh_token":"r2","access_token":""})");
  CHECK(missing.kind == outcome::missing_access_token);
  CHECK(missing.tokens->refresh_token == std::optional<std::string>("r2"));
  CHECK(run(200, R"({"refresh_token":"r2","access_token":7})").kind ==
        outcome::missing_access_token);
}

TEST_CASE("classification: in doubt, transient, never sent", "[policy]") {
  CHECK(run(0, "", false).kind == outcome::transient);
  CHECK(run(0, "", true).kind == outcome::in_doubt);
  CHECK(run(200, R"({"access_token":"a","refr)", true, false).kind == outcome::in_doubt);
  CHECK(run(200, "not json").kind == outcome::in_doubt);
  CHECK(run(200, "[1,2]").kind == outcome::in_doubt);
  CHECK(run(200, "{}").kind == outcome::provider_error);
  for (int s : {408, 429, 500, 502, 503, 504}) {
    INFO(s);
    CHECK(run(s, "<html>").kind == outcome::transient);
  }
  auto limited = run(429, "", true, true, "7");
  CHECK(limited.retry_after_s == std::optional<int>(7));
  CHECK(run(429, "", true, true, "soon").retry_after_s == std::nullopt);
  CHECK(run(400, R"({"error":"temporarily_unavailable"})").kind == outcome::transient);
}

TEST_CASE("classification: OAuth errors", "[policy]") {
  auto ig =
      run(400, R"({"error":"invalid_grant","error_description":"grant request is invalid\n"})");
  CHECK(ig.kind == outcome::invalid_grant);
  CHECK(ig.oauth_error == std::optional<std::string>("invalid_grant"));
  CHECK(ig.description == std::optional<std::string>("grant request is invalid "));
  for (auto e : {"invalid_client", "unauthorized_client", "invalid_request",
                 "unsupported_grant_type", "invalid_scope"}) {
    INFO(e);
    CHECK(run(400, std::string(R"({"error":")") + e + "\"}").kind == outcome::config_error);
  }
  CHECK(run(401, "").kind == outcome::config_error);
  CHECK(run(401, R"({"error":"whatever"})").kind == outcome::config_error);
  CHECK(run(400, "<html>").kind == outcome::provider_error);
  CHECK(run(400, R"({"error":""})").kind == outcome::provider_error);
  CHECK(run(403, R"({"error":"access_denied"})").kind == outcome::provider_error);
  CHECK(outcome_name(outcome::missing_access_token) == "provider_error");
}

TEST_CASE("sanitize keeps printable ASCII and at most 200 characters", "[policy]") {
  CHECK(sanitize("a\x01"
                 "b\xff") == "a b ");
  CHECK(sanitize(std::string(500, 'x')).size() == 200);
}

TEST_CASE("backoff: full jitter under an exponential ceiling", "[policy]") {
  for (std::uint64_t r : {0ULL, 1ULL, 12345ULL, ~0ULL}) {
    CHECK(backoff(1, 200ms, 2000ms, r) <= 200ms);
    CHECK(backoff(2, 200ms, 2000ms, r) <= 400ms);
    CHECK(backoff(10, 200ms, 2000ms, r) <= 2000ms);
  }
  CHECK(backoff(1, 200ms, 2000ms, 0) == 0ms);
  CHECK(backoff(3, 200ms, 2000ms, 800) == 800ms);
}

TEST_CASE("reauth reasons", "[policy]") {
  CHECK(reauth_reason(true, std::nullopt, t0) == "lost_rotation");
  CHECK(reauth_reason(false, t0 - 1s, t0) == "refresh_token_expired");
  CHECK(reauth_reason(false, t0 + 1s, t0) == "grant_revoked");
  CHECK(reauth_reason(true, t0 - 1s, t0) == "lost_rotation");
}
