#include "oauth/token_request.hpp"

#include "crypto/crypto.hpp"

namespace tokend::oauth {

std::string form_encode(std::string_view s) {
  static constexpr char hex[] = "0123456789ABCDEF";
  std::string out;
  for (unsigned char c : s) {
    if ((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-' ||
        c == '.' || c == '_' || c == '~') {
      out.push_back(static_cast<char>(c));
    } else if (c == ' ') {
      out.push_back('+');
    } else {
      out.push_back('%');
      out.push_back(hex[c >> 4]);
      out.push_back(hex[c & 0xf]);
    }
  }
  return out;
}

namespace {

// Client authentication per the provider's token_endpoint_auth_method (RFC 6749 2.3.1).
void authenticate_client(form_request& r, const provider_record& p,
                         const std::optional<std::string>& client_secret) {
  r.headers.emplace_back("Content-Type", "application/x-www-form-urlencoded");
  r.headers.emplace_back("Accept", "application/json");
  if (p.auth_method == "client_secret_basic") {
    r.headers.emplace_back("Authorization",
                           "Basic " + crypto::base64(form_encode(p.client_id) + ":" +
                                                     form_encode(client_secret.value_or(""))));
  } else if (p.auth_method == "client_secret_post") {
    r.body += "&client_id=" + form_encode(p.client_id) +
              "&client_secret=" + form_encode(client_secret.value_or(""));
  } else {
    r.body += "&client_id=" + form_encode(p.client_id);  // public client
  }
}

}  // namespace

form_request refresh_request(const provider_record& p, const std::string& refresh_token,
                             const std::optional<std::string>& client_secret) {
  form_request r;
  r.url = p.token_url;
  r.body = "grant_type=refresh_token&refresh_token=" + form_encode(refresh_token);
  if (p.refresh_scope) r.body += "&scope=" + form_encode(*p.refresh_scope);
  authenticate_client(r, p, client_secret);
  return r;
}

form_request code_exchange_request(const provider_record& p, const std::string& code,
                                   const std::string& redirect_uri,
                                   const std::optional<std::string>& code_verifier,
                                   const std::optional<std::string>& client_secret) {
  form_request r;
  r.url = p.token_url;
  r.body = "grant_type=authorization_code&code=" + form_encode(code) +
           "&redirect_uri=" + form_encode(redirect_uri);
  if (code_verifier) r.body += "&code_verifier=" + form_encode(*code_verifier);
  authenticate_client(r, p, client_secret);
  return r;
}

}  // namespace tokend::oauth
