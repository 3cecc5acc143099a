// RFC 9457 problem+json rendering; the only place an errc becomes an HTTP response.
#pragma once
#include <optional>
#include <string>

#include "core/errors.hpp"
#include "http/message.hpp"

namespace tokend::http {

// Builds the problem response; `detail` must already be safe for clients. 429 and 503 always
// carry Retry-After (`retry_after` seconds, default 1). Thread-safe.
response make_problem(errc code, std::string_view detail, std::string_view request_id,
                      const std::optional<std::string>& field = std::nullopt,
                      std::optional<int> retry_after = std::nullopt);
response make_problem(const api_error& e, std::string_view request_id);

}  // namespace tokend::http
