#include <catch2/catch.hpp>
#include <regex>

#include "webhooks/policy.hpp"

using namespace tokend::webhooks;
using std::chrono::milliseconds;

TEST_CASE("the signature header is t and HMAC-SHA256 of \"<t>.<body>\" in hex", "[webhooks]") {
  // Expected values computed independently (Python's hmac module).
  CHECK(signature_header(1700000000, "{\"a\":1}", "whsec_test") ==
        "t=1700000000,v1=38877139021993b830af32feea6e18a8da83eb2f6e49ee50bd9e4cf4ca4d3789");
  // During a rotation's overlap the old secret signs too, second.
  CHECK(signature_header(1700000000, "{\"a\":1}", "whsec_test", std::string("whsec_old")) ==
        "t=1700000000,v1=38877139021993b830af32feea6e18a8da83eb2f6e49ee50bd9e4cf4ca4d3789,"
        "v1=b9d801502bb535e960ee9aeee7a294b082bda5089d79c7db610b85116ce6faa6");
  CHECK(signature_header(1700000001, "{\"a\":1}", "whsec_test") !=
        signature_header(1700000000, "{\"a\":1}", "whsec_test"));
}

TEST_CASE("secrets are 256 random bits in hex", "[webhooks]") {
  const auto a = new_secret(), b = new_secret();
  CHECK(std::regex_match(a, std::regex("whsec_[0-9a-f]{64}")));
  CHECK(a != b);
}

TEST_CASE(
    "retry delay doubles from the base up to the cap, jitter adds at most a quarter, never past "
    "the cap",
    "[webhooks]") {
  const milliseconds base(10000), cap(3600000);
  CHECK(retry_delay(1, base, cap, 0) == milliseconds(10000));
  CHECK(retry_delay(2, base, cap, 0) == milliseconds(20000));
  CHECK(retry_delay(5, base, cap, 0) == milliseconds(160000));
  CHECK(retry_delay(1, base, cap, 0.999) < milliseconds(12500));
  CHECK(retry_delay(1, base, cap, 0.999) > milliseconds(12400));
  CHECK(retry_delay(9, base, cap, 0) == milliseconds(2560000));
  CHECK(retry_delay(10, base, cap, 0) == cap);  // 5120 s capped at 1 h
  // At the cap the jitter spreads below it (never past it, never in lockstep).
  CHECK(retry_delay(10, base, cap, 0.9) == milliseconds(3528000));
  CHECK(retry_delay(1000, base, cap, 0.5) == milliseconds(3240000));
  CHECK(retry_delay(1000, base, cap, 0.0) == cap);
  CHECK(retry_delay(1000, base, cap, 0.999) <= cap);
  CHECK(retry_delay(1000, base, cap, 0.999) > milliseconds(3590000));
  // Below the cap the plain quarter; where it would pass the cap, spread below it.
  CHECK(retry_delay(9, base, cap, 0.9) == milliseconds(3136000));  // 2560 s x 1.225
  CHECK(retry_delay(9, milliseconds(12000), cap, 0.9) ==
        milliseconds(3528000));  // 3072 s x 1.225 > 1 h: 0.98 x 1 h
}

TEST_CASE("event types", "[webhooks]") {
  CHECK(event_types().size() == 4);
  CHECK(is_event_type("connection.refresh_token_expiring"));
  CHECK_FALSE(is_event_type("connection.refreshed"));
  CHECK_FALSE(is_event_type(""));
}
