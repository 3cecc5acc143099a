// Server-rendered HTML of the browser-facing reauthorization pages: no scripts, no external
// assets, every value HTML-escaped, and headers that keep the pages out of caches, frames and
// referrers. Pure; thread-safe.
#pragma once
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "http/message.hpp"

namespace tokend::reauth {

std::string html_escape(std::string_view s);

struct page {
  int status = 200;
  std::string title;
  std::vector<std::string> paragraphs;  // plain text, escaped when rendered
  // A Reconnect form posting to the page's own URL (no action attribute: the link token is not
  // repeated in the body).
  std::optional<std::string> post_button;
  std::optional<std::pair<std::string, std::string>> link;  // href, label
  std::optional<std::pair<int, std::string>> refresh;       // seconds, URL (meta refresh)
};

// The response: text/html, Content-Security-Policy with `form-action 'self'` plus
// `form_action_origins`, Cache-Control no-store, Referrer-Policy no-referrer,
// X-Frame-Options DENY, X-Content-Type-Options nosniff.
http::response render(const page& p, const std::vector<std::string>& form_action_origins = {});

// Why reconnecting is needed, in plain words, for a link reason (reauth reasons and
// `new_connection`); `provider` and `tenant` are display names.
std::string reason_explanation(std::string_view reason, std::string_view provider,
                               std::string_view tenant);

}  // namespace tokend::reauth
