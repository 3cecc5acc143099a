#include "webhooks/policy.hpp"

#include <algorithm>

#include "crypto/crypto.hpp"

namespace tokend::webhooks {

const std::vector<std::string>& event_types() {
  static const std::vector<std::string> types = {
      "connection.reauth_required", "connection.reconnected", "connection.refresh_failed",
      "connection.refresh_token_expiring"};
  return types;
}

bool is_event_type(std::string_view type) {
  const auto& all = event_types();
  return std::find(all.begin(), all.end(), type) != all.end();
}

std::string signature_header(long long unix_time, std::string_view body, std::string_view secret,
                             const std::optional<std::string>& previous) {
  std::string signed_text = std::to_string(unix_time);
  signed_text += '.';
  signed_text.append(body);
  std::string out = "t=";
  out += std::to_string(unix_time);
  out += ",v1=";
  out += crypto::hex(crypto::hmac_sha256(secret, signed_text));
  if (previous) {
    out += ",v1=";
    out += crypto::hex(crypto::hmac_sha256(*previous, signed_text));
  }
  return out;
}

std::string new_secret() {
  std::string s = "whsec_";
  s += crypto::hex(crypto::random_bytes(32));
  return s;
}

std::chrono::milliseconds retry_delay(int attempts, std::chrono::milliseconds base,
                                      std::chrono::milliseconds cap, double jitter) {
  const double capped = static_cast<double>(cap.count());
  double d = static_cast<double>(std::max<long long>(base.count(), 1));
  for (int i = 1; i < attempts && d < capped; ++i) d *= 2;
  d = std::min(d, capped);
  const double j = std::clamp(jitter, 0.0, 1.0);
  // Up to 25 % later; where that would pass the cap, spread over the cap's last 20 % instead,
  // so deliveries that reached the cap together do not retry in lockstep.
  d = d * (1 + 0.25 * j) <= capped ? d * (1 + 0.25 * j) : capped * (0.8 + 0.2 * j);
  return std::chrono::milliseconds(static_cast<long long>(d));
}

}  // namespace tokend::webhooks
