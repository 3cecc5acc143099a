#include "core/refresh_policy.hpp"

#include <algorithm>
#include <charconv>
#include <nlohmann/json.hpp>

namespace tokend::policy {
namespace {

std::optional<long long> positive_int(const nlohmann::json& j, const char* name) {
  auto it = j.find(name);
  if (it == j.end() || !it->is_number_integer()) return std::nullopt;
  if (it->is_number_unsigned()) {
    auto u = it->get<unsigned long long>();
    if (u == 0 || u > 10ULL * 365 * 24 * 3600) return std::nullopt;
    return static_cast<long long>(u);
  }
  auto v = it->get<long long>();
  if (v <= 0 || v > 10LL * 365 * 24 * 3600) return std::nullopt;
  return v;
}

std::optional<std::string> nonempty_string(const nlohmann::json& j, const char* name) {
  auto it = j.find(name);
  if (it == j.end() || !it->is_string()) return std::nullopt;
  auto s = it->get<std::string>();
  if (s.empty() || s.size() > kMaxTokenBytes) return std::nullopt;
  return s;
}

std::optional<int> parse_retry_after(const std::optional<std::string>& raw) {
  if (!raw) return std::nullopt;
  int v = 0;
  auto [p, ec] = std::from_chars(raw->data(), raw->data() + raw->size(), v);
  if (ec != std::errc() || p != raw->data() + raw->size() || v < 0) return std::nullopt;
  return std::min(v, 3600);
}

}  // namespace

bool is_fresh(sys_time expires_at, long long lifetime_s, long long min_ttl_s, sys_time now) {
  const long long need = std::min(min_ttl_s, lifetime_s / 2);
  return expires_at - now >= std::chrono::seconds(need) && expires_at > now;
}

std::string_view outcome_name(outcome o) {
  switch (o) {
    case outcome::refreshed:
      return "refreshed";
    case outcome::missing_access_token:
      return "provider_error";
    case outcome::invalid_grant:
      return "invalid_grant";
    case outcome::config_error:
      return "config_error";
    case outcome::transient:
      return "transient";
    case outcome::in_doubt:
      return "in_doubt";
    case outcome::provider_error:
      return "provider_error";
  }
  return "provider_error";
}

std::string sanitize(std::string_view raw) {
  std::string out;
  for (char c : raw) {
    if (out.size() >= 200) break;
    out.push_back(c >= 0x20 && c < 0x7f ? c : ' ');
  }
  return out;
}

classification classify(const provider_reply& r, sys_time sent_at, const token_defaults& d) {
  classification c;
  if (!r.sent) {
    c.kind = outcome::transient;
    c.summary = "request not sent";
    return c;
  }
  if (r.status == 0) {
    c.kind = outcome::in_doubt;
    c.summary = "sent, no answer";
    return c;
  }
  c.retry_after_s = parse_retry_after(r.retry_after);
  const auto j = r.body_complete ? nlohmann::json::parse(r.body, nullptr, false)
                                 : nlohmann::json(nlohmann::json::value_t::discarded);

  if (r.status >= 200 && r.status < 300) {
    if (j.is_discarded() || !j.is_object()) {
      c.kind = outcome::in_doubt;  // the provider may have rotated; we cannot tell
      c.summary = r.body_complete ? "2xx with an unparseable body" : "2xx with a truncated body";
      return c;
    }
    auto access = nonempty_string(j, "access_token");
    auto refresh = nonempty_string(j, "refresh_token");
    if (!access && !refresh) {
      c.kind = outcome::provider_error;
      c.summary = "2xx without tokens";
      c.description = "the provider answered success without tokens";
      return c;
    }
    token_set t;
    t.access_token = access.value_or("");
    t.refresh_token = refresh;
    t.token_type = "Bearer";  // odd token types are treated as Bearer
    if (auto it = j.find("scope"); it != j.end() && it->is_string()) {
      t.scope = sanitize(it->get<std::string>()).substr(0, 2048);
    }
    t.access_lifetime = positive_int(j, "expires_in").value_or(d.default_expires_in);
    t.access_expires_at = sent_at + std::chrono::seconds(t.access_lifetime);
    if (refresh) {
      if (auto rl = positive_int(j, "refresh_expires_in")) {
        t.refresh_expires_at = sent_at + std::chrono::seconds(*rl);
        t.refresh_lifetime = *rl;
      } else if (d.refresh_token_lifetime) {
        t.refresh_expires_at = sent_at + std::chrono::seconds(*d.refresh_token_lifetime);
        t.refresh_lifetime = *d.refresh_token_lifetime;
      }
    }
    c.kind = access ? outcome::refreshed : outcome::missing_access_token;
    c.summary = access ? "refreshed" : "2xx with a refresh token but no access token";
    if (!access) c.description = "the provider returned no usable access token";
    c.tokens = std::move(t);
    return c;
  }

  std::optional<std::string> error;
  if (j.is_object()) {
    if (auto it = j.find("error");
        it != j.end() && it->is_string() && !it->get<std::string>().empty()) {
      error = sanitize(it->get<std::string>());
    }
    if (auto it = j.find("error_description"); it != j.end() && it->is_string()) {
      c.description = sanitize(it->get<std::string>());
    }
  }
  c.oauth_error = error;
  if (r.status == 408 || r.status == 429 || r.status >= 500) {
    c.kind = outcome::transient;
    c.summary = "HTTP " + std::to_string(r.status);
    return c;
  }
  if (error == "invalid_grant") {
    c.kind = outcome::invalid_grant;
  } else if (error == "invalid_client" || error == "unauthorized_client" ||
             error == "invalid_request" || error == "unsupported_grant_type" ||
             error == "invalid_scope" || r.status == 401) {
    c.kind = outcome::config_error;
  } else if (error == "temporarily_unavailable") {
    c.kind = outcome::transient;
  } else {
    c.kind = outcome::provider_error;
  }
  c.summary =
      "HTTP " + std::to_string(r.status) + (error ? " " + *error : " without an OAuth error");
  return c;
}

std::chrono::milliseconds backoff(int retry, std::chrono::milliseconds base,
                                  std::chrono::milliseconds cap, std::uint64_t random) {
  const int shift = std::clamp(retry - 1, 0, 20);
  const auto ceiling = std::min<long long>(cap.count(), base.count() << shift);
  if (ceiling <= 0) return std::chrono::milliseconds(0);
  return std::chrono::milliseconds(
      static_cast<long long>(random % static_cast<std::uint64_t>(ceiling + 1)));
}

std::string reauth_reason(bool unresolved_earlier_attempt,
                          const std::optional<sys_time>& refresh_expires_at, sys_time now) {
  if (unresolved_earlier_attempt) return "lost_rotation";
  if (refresh_expires_at && *refresh_expires_at <= now) return "refresh_token_expired";
  return "grant_revoked";
}

}  // namespace tokend::policy
