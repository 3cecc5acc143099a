// Provider types: what `airtable` fills in, and the checks every provider URL must pass.
#pragma once
#include <optional>
#include <string>
#include <string_view>

namespace tokend {

struct airtable_defaults {
  static constexpr std::string_view authorize_url = "https://airtable.com/oauth2/v1/authorize";
  static constexpr std::string_view token_url = "https://airtable.com/oauth2/v1/token";
  static constexpr std::string_view canary_url = "https://api.airtable.com/v0/meta/whoami";
  static constexpr std::string_view auth_method = "client_secret_basic";
  static constexpr long long refresh_token_lifetime = 60LL * 24 * 3600;  // 60 days unused
};

// nullopt when `url` is an absolute https URL with a host (http too when allow_insecure);
// otherwise the reason it is refused. Pure.
std::optional<std::string> check_provider_url(std::string_view url, bool allow_insecure);

// The normalised origin of an absolute URL: lower-case scheme and host, explicit port
// ("https://auth.example.com:443"); empty when `url` is not an absolute URL with a host. Two
// URLs on the same origin get the same string. Pure.
std::string url_origin(std::string_view url);

}  // namespace tokend
