// Webhook rules without I/O: event types, the signature header, the retry back-off. Pure.
#pragma once
#include <chrono>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace tokend::webhooks {

// Every event type tokend sends, in the order the contract lists them.
const std::vector<std::string>& event_types();
bool is_event_type(std::string_view type);

// "t=<unix>,v1=<hex HMAC-SHA256(secret, "<t>.<body>")>", with a second v1= made with
// `previous` (during the 24 h after a rotation). The key is the secret string's bytes.
std::string signature_header(long long unix_time, std::string_view body, std::string_view secret,
                             const std::optional<std::string>& previous = std::nullopt);

// A new signing secret: "whsec_" + 64 hex digits (256 random bits).
std::string new_secret();

// The wait before retry number `attempts` + 1 after `attempts` failed ones: `base` doubled per
// failed attempt, capped at `cap`, plus up to a quarter more at random (`jitter` in [0, 1)).
// Never past the cap: where the jitter would pass it, the wait is spread over [0.8, 1] x cap.
std::chrono::milliseconds retry_delay(int attempts, std::chrono::milliseconds base,
                                      std::chrono::milliseconds cap, double jitter);

}  // namespace tokend::webhooks
