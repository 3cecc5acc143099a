// Builds the RFC 6749 section 6 refresh request and the section 4.1.3 code exchange for a provider: form-encoded body, client
// authentication (client_secret_basic with form-urlencoded credentials per 2.3.1,
// client_secret_post, or none). Pure; thread-safe.
#pragma once
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "core/model.hpp"

namespace tokend::oauth {

struct form_request {
  std::string url;
  std::vector<std::pair<std::string, std::string>> headers;
  std::string body;
};

// application/x-www-form-urlencoded encoding of one value.
std::string form_encode(std::string_view s);

form_request refresh_request(const provider_record& p, const std::string& refresh_token,
                             const std::optional<std::string>& client_secret);

// RFC 6749 section 4.1.3 (+ RFC 7636 code_verifier when PKCE was used), with the same client
// authentication as a refresh.
form_request code_exchange_request(const provider_record& p, const std::string& code,
                                   const std::string& redirect_uri,
                                   const std::optional<std::string>& code_verifier,
                                   const std::optional<std::string>& client_secret);

}  // namespace tokend::oauth
