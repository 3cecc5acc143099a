#include <boost/asio/ip/address.hpp>
#include <catch2/catch.hpp>

#include "core/provider_defaults.hpp"
#include "crypto/crypto.hpp"
#include "oauth/http_client.hpp"
#include "oauth/token_request.hpp"

using namespace tokend;
namespace ip = boost::asio::ip;

TEST_CASE("outbound address rule", "[oauth]") {
  for (auto a : {"127.0.0.1", "10.1.2.3", "172.16.0.1", "192.168.1.1", "169.254.169.254", "0.0.0.0",
                 "100.64.0.1", "::1", "::", "fe80::1", "fc00::1", "fd12::1", "::ffff:127.0.0.1",
                 "224.0.0.1", "2001:db8::1"}) {
    INFO(a);
    CHECK(!oauth::is_public_address(ip::make_address(a)));
  }
  for (auto a : {"8.8.8.8", "1.1.1.1", "2606:4700::1111", "::ffff:8.8.8.8"}) {
    INFO(a);
    CHECK(oauth::is_public_address(ip::make_address(a)));
  }
}

TEST_CASE("provider URL checks", "[oauth]") {
  CHECK(!check_provider_url("https://airtable.com/oauth2/v1/token", false));
  CHECK(check_provider_url("http://airtable.com/token", false));
  CHECK(!check_provider_url("http://127.0.0.1:9/token", true));
  CHECK(check_provider_url("https://user:pw@x.example/t", false));
  CHECK(check_provider_url("https:///path", false));
  CHECK(check_provider_url("/relative", false));
  CHECK(check_provider_url("https://x.example/t#frag", false));
}

TEST_CASE("token endpoint origins are normalised: scheme, lower-cased host, explicit port",
          "[oauth]") {
  CHECK(url_origin("https://Auth.Example.COM/oauth/token") == "https://auth.example.com:443");
  CHECK(url_origin("HTTPS://auth.example.com:443/other?x=1") == "https://auth.example.com:443");
  CHECK(url_origin("http://127.0.0.1:8080/token") == "http://127.0.0.1:8080");
  CHECK(url_origin("http://idp.example/token") == "http://idp.example:80");
  CHECK(url_origin("https://[::1]:9443/t") == "https://[::1]:9443");
  CHECK(url_origin("https://%41uth.example.com/t") == "https://auth.example.com:443");
  // Different ports, schemes or hosts are different origins.
  CHECK(url_origin("https://auth.example.com:8443/t") != url_origin("https://auth.example.com/t"));
  CHECK(url_origin("http://auth.example.com/t") != url_origin("https://auth.example.com/t"));
  CHECK(url_origin("https://auth.example.com.evil.net/t") !=
        url_origin("https://auth.example.com/t"));
  // Not an absolute URL with a host: no origin.
  CHECK(url_origin("/relative").empty());
  CHECK(url_origin("https:///path").empty());
  CHECK(url_origin("ftp://files.example/t").empty());
}

TEST_CASE("refresh request shapes", "[oauth]") {
  provider_record p;
  p.token_url = "https://idp.example/token";
  p.client_id = "id with:colon";
  p.auth_method = "client_secret_basic";
  auto r = oauth::refresh_request(p, "rt/+=", std::string("pa ss%"));
  CHECK(r.url == "https://idp.example/token");
  CHECK(r.body == "grant_type=refresh_token&refresh_token=rt%2F%2B%3D");
  bool basic = false;
  for (auto& [k, v] : r.headers) {
    if (k == "Authorization") {
      basic = true;
      CHECK(v == "Basic " + crypto::base64("id+with%3Acolon:pa+ss%25"));
    }
  }
  CHECK(basic);

  p.auth_method = "client_secret_post";
  p.refresh_scope = "a b";
  r = oauth::refresh_request(p, "rt", std::string("s"));
  CHECK(r.body ==
        "grant_type=refresh_token&refresh_token=rt&scope=a+b&client_id=id+with%3Acolon&client_"
        "secret=s");

  p.auth_method = "none";
  p.refresh_scope.reset();
  r = oauth::refresh_request(p, "rt", std::nullopt);
  CHECK(r.body == "grant_type=refresh_token&refresh_token=rt&client_id=id+with%3Acolon");
  for (auto& [k, v] : r.headers) CHECK(k != "Authorization");
}
