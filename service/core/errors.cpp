#include "core/errors.hpp"

namespace tokend {

errc_info describe(errc e) noexcept {
  switch (e) {
    case errc::invalid_request:
      return {400, "invalid_request", "Invalid request"};
    case errc::unauthorized:
      return {401, "unauthorized", "Unauthorized"};
    case errc::forbidden:
      return {403, "forbidden", "Forbidden"};
    case errc::not_found:
      return {404, "not_found", "Not found"};
    case errc::method_not_allowed:
      return {405, "method_not_allowed", "Method not allowed"};
    case errc::conflict:
      return {409, "conflict", "Conflict"};
    case errc::reauth_required:
      return {409, "reauth_required", "Reauthorization required"};
    case errc::payload_too_large:
      return {413, "payload_too_large", "Payload too large"};
    case errc::headers_too_large:
      return {431, "headers_too_large", "Request header fields too large"};
    case errc::rate_limited:
      return {429, "rate_limited", "Too many requests"};
    case errc::decrypt_failed:
      return {500, "decrypt_failed", "Stored secret cannot be decrypted"};
    case errc::internal:
      return {500, "internal", "Internal error"};
    case errc::provider_error:
      return {502, "provider_error", "Provider error"};
    case errc::provider_config_error:
      return {502, "provider_config_error", "Provider configuration error"};
    case errc::provider_unavailable:
      return {503, "provider_unavailable", "Provider unavailable"};
    case errc::unavailable:
      return {503, "unavailable", "Service unavailable"};
  }
  return {500, "internal", "Internal error"};
}

}  // namespace tokend
