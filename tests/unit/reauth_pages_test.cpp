#include <catch2/catch.hpp>
#include <set>

#include "reauth/pages.hpp"

using namespace tokend::reauth;

TEST_CASE("html_escape escapes every markup character", "[reauth_pages]") {
  CHECK(html_escape("<script>alert('x')</script> & \"q\"") ==
        "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt; &amp; &quot;q&quot;");
  CHECK(html_escape("plain text") == "plain text");
}

TEST_CASE("a rendered page escapes its values and carries the security headers",
          "[reauth_pages]") {
  page p;
  p.status = 410;
  p.title = "<b>t</b>";
  p.paragraphs = {"a<b", "c&d"};
  p.link = std::pair{std::string("https://idp.example/auth?a=1&b=\"2\""), std::string("Go <now>")};
  p.refresh = std::pair{0, std::string("https://idp.example/auth?a=1&b=2")};
  auto r = render(p, {"https://idp.example:443"});
  CHECK(r.status == 410);
  CHECK(r.content_type == "text/html; charset=utf-8");
  CHECK(r.body.find("<b>") == std::string::npos);
  CHECK(r.body.find("<title>&lt;b&gt;t&lt;/b&gt;</title>") != std::string::npos);
  CHECK(r.body.find("<p>a&lt;b</p><p>c&amp;d</p>") != std::string::npos);
  CHECK(r.body.find("href=\"https://idp.example/auth?a=1&amp;b=&quot;2&quot;\"") !=
        std::string::npos);
  CHECK(r.body.find("content=\"0;url=https://idp.example/auth?a=1&amp;b=2\"") != std::string::npos);
  CHECK(r.body.find("<script") == std::string::npos);
  CHECK(r.body.find("<form") == std::string::npos);  // no button asked for
  auto header = [&](const std::string& name) {
    for (const auto& [n, v] : r.headers) {
      if (n == name) return v;
    }
    return std::string("<missing>");
  };
  CHECK(header("Content-Security-Policy") ==
        "default-src 'none'; style-src 'unsafe-inline'; form-action 'self' "
        "https://idp.example:443; base-uri 'none'; frame-ancestors 'none'");
  CHECK(header("Cache-Control") == "no-store");
  CHECK(header("Referrer-Policy") == "no-referrer");
  CHECK(header("X-Frame-Options") == "DENY");
  CHECK(header("X-Content-Type-Options") == "nosniff");

  page form;
  form.post_button = "Reconnect";
  auto f = render(form);
  CHECK(f.body.find("<form method=\"post\"><button type=\"submit\">Reconnect</button></form>") !=
        std::string::npos);
}

TEST_CASE("each reason has its own plain explanation", "[reauth_pages]") {
  const char* reasons[] = {"grant_revoked", "refresh_token_expired", "scope_changed",
                           "lost_rotation", "imported_without_refresh_token", "new_connection"};
  std::set<std::string> seen;
  for (const char* r : reasons) {
    auto text = reason_explanation(r, "Airtable", "Acme");
    INFO(r << ": " << text);
    CHECK(text.find("Airtable") != std::string::npos);
    CHECK(seen.insert(text).second);
  }
  CHECK(reason_explanation("grant_revoked", "P", "T").find("revoked") != std::string::npos);
  CHECK(reason_explanation("refresh_token_expired", "P", "T").find("without use") !=
        std::string::npos);
  CHECK(reason_explanation("scope_changed", "P", "T").find("permissions") != std::string::npos);
  CHECK(reason_explanation("lost_rotation", "P", "T").find("never arrived") != std::string::npos);
  CHECK(reason_explanation("new_connection", "P", "T").find("T asks you to connect") !=
        std::string::npos);
}
