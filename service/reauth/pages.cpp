#include "reauth/pages.hpp"

namespace tokend::reauth {

std::string html_escape(std::string_view s) {
  std::string out;
  out.reserve(s.size());
  for (char c : s) {
    switch (c) {
      case '&': out += "&amp;"; break;
      case '<': out += "&lt;"; break;
      case '>': out += "&gt;"; break;
      case '"': out += "&quot;"; break;
      case '\'': out += "&#39;"; break;
      default: out.push_back(c);
    }
  }
  return out;
}

namespace {

// Appends, not `"literal" + std::string`: g++ 12 at -O2 reports false -Warray-bounds on that
// pattern (GCC bug 105651).
std::string cat(std::initializer_list<std::string_view> parts) {
  std::string out;
  for (auto p : parts) out.append(p.data(), p.size());
  return out;
}

// Out of line for the same false positive on long header-name literals.
[[gnu::noinline]] void add_header(http::response& res, std::string_view name,
                                  std::string_view value) {
  res.headers.emplace_back(std::string(name), std::string(value));
}

// An origin as url_origin() prints it, safe in a CSP source list: scheme "://" host ":" port
// with host characters of a DNS name or a bracketed IPv6 address only.
bool csp_source_ok(std::string_view o) {
  const auto sep = o.find("://");
  if (sep == std::string_view::npos || sep == 0) return false;
  for (char c : o) {
    if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
          c == '.' || c == '-' || c == ':' || c == '/' || c == '[' || c == ']' || c == '+'))
      return false;
  }
  return true;
}

constexpr const char* kStyle =
    "body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;background:#f5f6f8;"
    "color:#1d2330;margin:0;padding:48px 16px}"
    "main{max-width:560px;margin:0 auto;background:#fff;border-radius:10px;padding:32px;"
    "box-shadow:0 1px 4px rgba(0,0,0,.08)}"
    "h1{font-size:1.4rem;margin:0 0 16px}p{line-height:1.5}"
    "button,a.button{display:inline-block;background:#2d5bd7;color:#fff;border:0;"
    "border-radius:6px;padding:10px 22px;font-size:1rem;text-decoration:none;cursor:pointer}"
    "footer{margin-top:24px;font-size:.8rem;color:#6b7280}";

}  // namespace

http::response render(const page& p, const std::vector<std::string>& form_action_origins) {
  std::string html =
      "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
      "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
      "<meta name=\"robots\" content=\"noindex\">";
  if (p.refresh) {
    html += cat({"<meta http-equiv=\"refresh\" content=\"", std::to_string(p.refresh->first)});
    if (!p.refresh->second.empty()) html += cat({";url=", html_escape(p.refresh->second)});
    html += "\">";
  }
  const auto title = html_escape(p.title);
  html += cat({"<title>", title, "</title><style>", kStyle, "</style></head><body><main><h1>",
               title, "</h1>"});
  for (const auto& para : p.paragraphs) html += cat({"<p>", html_escape(para), "</p>"});
  if (p.post_button) {
    html += cat({"<form method=\"post\"><button type=\"submit\">", html_escape(*p.post_button),
                 "</button></form>"});
  }
  if (p.link) {
    html += cat({"<p><a class=\"button\" href=\"", html_escape(p.link->first), "\">",
                 html_escape(p.link->second), "</a></p>"});
  }
  html += "<footer>tokend connection service</footer></main></body></html>\n";

  http::response res;
  res.status = p.status;
  res.content_type = "text/html; charset=utf-8";
  res.body = std::move(html);
  std::string csp = "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'";
  for (const auto& o : form_action_origins) {
    if (csp_source_ok(o)) csp += cat({" ", o});  // never header-breaking bytes
  }
  csp += "; base-uri 'none'; frame-ancestors 'none'";
  add_header(res, "Content-Security-Policy", csp);
  add_header(res, "Cache-Control", "no-store");
  add_header(res, "Referrer-Policy", "no-referrer");
  add_header(res, "X-Frame-Options", "DENY");
  add_header(res, "X-Content-Type-Options", "nosniff");
  return res;
}

std::string reason_explanation(std::string_view reason, std::string_view p,
                               std::string_view t) {
  if (reason == "grant_revoked") {
    return cat({"Access to your ", p, " account was revoked, or the integration was "
                "disconnected in ", p, ". ", t, " can no longer reach your data until you "
                "reconnect."});
  }
  if (reason == "refresh_token_expired") {
    return cat({"The connection to ", p, " expired after a long time without use (", p,
                " ends access that has not been used for a while). Reconnect to keep ", t,
                " working."});
  }
  if (reason == "scope_changed") {
    return cat({t, " now needs permissions in ", p, " that your connection does not have yet. "
                "Reconnect to review and grant them."});
  }
  if (reason == "lost_rotation") {
    return cat({"The previous connection to ", p, " was lost: ", p, " issued a new credential "
                "during a refresh, but its answer never arrived, so the old credential no "
                "longer works. Reconnecting sets it up again; nothing on your side changed."});
  }
  if (reason == "imported_without_refresh_token") {
    return cat({"This connection to ", p, " was set up without a long-lived credential, so it "
                "cannot renew itself. Reconnect once so it keeps working on its own."});
  }
  if (reason == "new_connection") {
    return cat({t, " asks you to connect your ", p, " account. You will sign in at ", p,
                " and choose what to allow."});
  }
  return cat({"The connection to ", p, " needs to be set up again."});
}

}  // namespace tokend::reauth
