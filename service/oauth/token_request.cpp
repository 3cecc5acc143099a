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

form_request refresh_request(const provider_record& p, const std::string& refresh_token,
                             const std::optional<std::string>& client_secret) {
  form_request r;
  r.url = p.token_url;
  r.body = "grant_type=refresh_token&refresh_token=" + form_encode(refresh_token);
  if (p.refresh_scope) r.body += "&scope=" + form_encode(*p.refresh_scope);
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
  return r;
}

}  // namespace tokend::oauth
