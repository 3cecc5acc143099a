#include "core/provider_defaults.hpp"

#include <boost/url/parse.hpp>

namespace tokend {

std::optional<std::string> check_provider_url(std::string_view url, bool allow_insecure) {
  if (url.size() > 2048) return "must be at most 2048 bytes";
  auto u = boost::urls::parse_absolute_uri(url);
  if (!u) return "must be an absolute URL";
  const auto scheme = u->scheme();
  if (scheme != "https" && !(allow_insecure && scheme == "http")) {
    return allow_insecure ? "must use http or https" : "must use https";
  }
  if (!u->has_authority() || u->host().empty()) return "must name a host";
  if (u->has_userinfo()) return "must not carry credentials";
  if (u->has_fragment()) return "must not have a fragment";
  return std::nullopt;
}

std::string url_origin(std::string_view url) {
  auto u = boost::urls::parse_absolute_uri(url);
  if (!u || !u->has_authority() || u->encoded_host().empty()) return {};
  auto lower = [](std::string s) {
    for (auto& ch : s) {
      if (ch >= 'A' && ch <= 'Z') ch = static_cast<char>(ch - 'A' + 'a');
    }
    return s;
  };
  const std::string scheme = lower(std::string(u->scheme()));
  std::string port = u->has_port() ? std::string(u->port()) : std::string();
  if (port.empty()) {
    if (scheme == "https")
      port = "443";
    else if (scheme == "http")
      port = "80";
    else
      return {};
  }
  // Percent-decoded, so "%41uth.example" and "auth.example" are one origin.
  return scheme + "://" + lower(u->encoded_host().decode()) + ":" + port;
}

}  // namespace tokend
