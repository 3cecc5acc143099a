// The refresh decisions, free of I/O: freshness, classification of a token-endpoint answer into
// the contract's outcome table, back-off with full jitter, and the reason for a dead grant.
#pragma once
#include <chrono>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

#include "core/model.hpp"

namespace tokend::policy {

// A stored token is served when its remaining lifetime >= min(min_ttl, lifetime / 2).
bool is_fresh(sys_time expires_at, long long lifetime_s, long long min_ttl_s, sys_time now);

// What the outbound call observed.
struct provider_reply {
  bool sent = false;          // the request was written completely
  int status = 0;             // 0: no response head arrived
  bool body_complete = true;  // false: truncated, dropped mid-body or over the size limit
  std::string body;
  std::optional<std::string> retry_after;  // raw Retry-After header
};

enum class outcome {
  refreshed,             // 200 with a usable access token (refresh token optional)
  missing_access_token,  // 200 with a refresh token but no usable access token
  invalid_grant,         // the grant or refresh token is rejected
  config_error,          // client credentials/auth method/request shape wrong
  transient,             // never sent, 408/429/5xx: retry, keep the old token set
  in_doubt,              // sent, answer lost or unreadable: the provider may have rotated
  provider_error,        // non-2xx without a usable OAuth error, or a 2xx without tokens
};
std::string_view outcome_name(outcome o);

struct token_defaults {
  long long default_expires_in = 3600;
  std::optional<long long> refresh_token_lifetime;
};

struct classification {
  outcome kind = outcome::provider_error;
  // For refreshed / missing_access_token: what the provider returned. access_token is empty
  // for missing_access_token; refresh_token empty means "keep the old one"; scope nullopt
  // means "keep the old scope".
  std::optional<token_set> tokens;
  std::optional<std::string> oauth_error;
  std::optional<std::string> description;  // sanitized, safe to store and log
  std::optional<int> retry_after_s;
  std::string summary;  // internal, for logs
};

// Pure and total: any bytes in, a row of the outcome table out. Expiries count from sent_at.
classification classify(const provider_reply& reply, sys_time sent_at, const token_defaults& d);

// Printable ASCII only, at most 200 characters.
std::string sanitize(std::string_view raw);

// Delay before retry number `retry` (1-based): uniform in [0, min(cap, base * 2^(retry-1))],
// using `random` as the source of randomness.
std::chrono::milliseconds backoff(int retry, std::chrono::milliseconds base,
                                  std::chrono::milliseconds cap, std::uint64_t random);

// Why a refresh that got invalid_grant needs reauthorization.
std::string reauth_reason(bool unresolved_earlier_attempt,
                          const std::optional<sys_time>& refresh_expires_at, sys_time now);

}  // namespace tokend::policy
