// Error codes of the external contract and the one table that maps them to HTTP statuses.
// api_error carries an internal message (logs) apart from the client-facing detail.
#pragma once
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>

namespace tokend {

enum class errc {
  invalid_request,
  unauthorized,
  forbidden,
  not_found,
  method_not_allowed,
  conflict,
  reauth_required,
  payload_too_large,
  headers_too_large,
  rate_limited,
  decrypt_failed,
  internal,
  provider_error,
  provider_config_error,
  provider_unavailable,
  unavailable,
};

struct errc_info {
  int status;
  std::string_view code;   // machine-readable `code` of the problem body
  std::string_view title;  // short human summary, the problem's `title`
};

// Total over errc; thread-safe (pure).
errc_info describe(errc e) noexcept;

// A failure whose answer to the client is known. Thrown by handlers and the layers they call,
// caught once per request by the router and rendered as problem+json.
class api_error : public std::runtime_error {
 public:
  api_error(errc code, std::string detail, std::optional<std::string> field = std::nullopt,
            std::string internal = {})
      : std::runtime_error(internal.empty() ? detail : internal),
        code_(code),
        detail_(std::move(detail)),
        field_(std::move(field)) {}

  errc code() const noexcept { return code_; }
  const std::string& detail() const noexcept { return detail_; }
  const std::optional<std::string>& field() const noexcept { return field_; }
  std::optional<int> retry_after;  // seconds, for 429/503
  std::string extra_json;          // a JSON object whose members are added to the problem body

 private:
  errc code_;
  std::string detail_;
  std::optional<std::string> field_;
};

}  // namespace tokend
