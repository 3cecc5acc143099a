#include <boost/asio/co_spawn.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/use_future.hpp>
#include <catch2/catch.hpp>
#include <nlohmann/json.hpp>

#include "core/errors.hpp"
#include "http/problem.hpp"
#include "http/router.hpp"

namespace asio = boost::asio;
using tokend::http::request;
using tokend::http::response;
using tokend::http::router;

namespace {

router make_router() {
  router r;
  auto ok = [](std::string tag) {
    return [tag](request& req) -> asio::awaitable<response> {
      nlohmann::json params = nlohmann::json::object();
      for (const auto& [k, v] : req.params) params[std::string(k)] = v;
      nlohmann::json j = {{"tag", tag}, {"params", params}};
      co_return tokend::http::json_response(200, j.dump());
    };
  };
  r.add("GET", "/v1/tenants/{tenant}/api-keys", ok("list-keys"));
  r.add("POST", "/v1/tenants/{tenant}/api-keys", ok("create-key"));
  r.add("DELETE", "/v1/tenants/{tenant}/api-keys/{id}", ok("delete-key"));
  r.add("GET", "/v1/connections/{connection}", ok("get-conn"));
  r.add("GET", "/v1/connections/special", ok("literal"));
  r.add("GET", "/boom", [](request&) -> asio::awaitable<response> {
    throw std::runtime_error("secret internal detail");
    co_return response{};
  });
  r.add("GET", "/bad", [](request&) -> asio::awaitable<response> {
    throw tokend::api_error(tokend::errc::invalid_request, "limit must be 1..500", "limit");
    co_return response{};
  });
  return r;
}

response dispatch(const router& r, std::string method, std::string path) {
  asio::io_context ioc;
  request req;
  req.method = std::move(method);
  req.path = std::move(path);
  req.request_id = "rid-1";
  auto f = asio::co_spawn(ioc, r.dispatch(req), asio::use_future);
  ioc.run();
  return f.get();
}

}  // namespace

TEST_CASE("router matches templates and extracts decoded parameters", "[router]") {
  auto r = make_router();
  auto res = dispatch(r, "DELETE", "/v1/tenants/acme/api-keys/k%3A1");
  REQUIRE(res.status == 200);
  auto j = nlohmann::json::parse(res.body);
  CHECK(j["tag"] == "delete-key");
  CHECK(j["params"]["tenant"] == "acme");
  CHECK(j["params"]["id"] == "k:1");
}

TEST_CASE("literal segments win over parameters", "[router]") {
  auto r = make_router();
  CHECK(nlohmann::json::parse(dispatch(r, "GET", "/v1/connections/special").body)["tag"] ==
        "literal");
  CHECK(nlohmann::json::parse(dispatch(r, "GET", "/v1/connections/other").body)["tag"] ==
        "get-conn");
}

TEST_CASE("unknown path is 404 problem+json", "[router]") {
  auto r = make_router();
  auto res = dispatch(r, "GET", "/v1/nope");
  CHECK(res.status == 404);
  CHECK(res.content_type == "application/problem+json");
  auto j = nlohmann::json::parse(res.body);
  for (auto k : {"type", "title", "status", "detail", "code", "request_id"}) {
    CHECK(j.contains(k));
  }
  CHECK(j["code"] == "not_found");
  CHECK(j["status"] == 404);
  CHECK(j["request_id"] == "rid-1");
}

TEST_CASE("known path with another method is 405 with Allow", "[router]") {
  auto r = make_router();
  auto res = dispatch(r, "PATCH", "/v1/tenants/acme/api-keys");
  CHECK(res.status == 405);
  CHECK(nlohmann::json::parse(res.body)["code"] == "method_not_allowed");
  bool found = false;
  for (auto& [k, v] : res.headers) {
    if (k == "Allow") {
      found = true;
      CHECK(v == "GET, POST");
    }
  }
  CHECK(found);
}

TEST_CASE("handler exceptions become problems without leaking internals", "[router]") {
  auto r = make_router();
  auto res = dispatch(r, "GET", "/boom");
  CHECK(res.status == 500);
  CHECK(res.body.find("secret internal detail") == std::string::npos);
  CHECK(nlohmann::json::parse(res.body)["code"] == "internal");

  auto bad = dispatch(r, "GET", "/bad");
  CHECK(bad.status == 400);
  auto j = nlohmann::json::parse(bad.body);
  CHECK(j["code"] == "invalid_request");
  CHECK(j["field"] == "limit");
  CHECK(j["detail"] == "limit must be 1..500");
}

TEST_CASE("503 and 429 problems always carry Retry-After", "[router]") {
  using tokend::errc;
  auto has_retry = [](const response& r) {
    for (auto& [k, v] : r.headers) {
      if (k == "Retry-After") return v;
    }
    return std::string();
  };
  CHECK(has_retry(tokend::http::make_problem(errc::unavailable, "x", "r")) == "1");
  CHECK(has_retry(tokend::http::make_problem(errc::rate_limited, "x", "r", std::nullopt, 7)) ==
        "7");
  tokend::api_error e(errc::provider_unavailable, "x");
  CHECK(has_retry(tokend::http::make_problem(e, "r")) == "1");
  e.retry_after = 30;
  CHECK(has_retry(tokend::http::make_problem(e, "r")) == "30");
  CHECK(has_retry(tokend::http::make_problem(errc::not_found, "x", "r")).empty());
}

TEST_CASE("request views: headers case-insensitively, query parameters decoded", "[router]") {
  request req;
  CHECK(!req.query_param("min_ttl"));  // no query at all
  req.query = "min_ttl=30&note=a%20b&flag";
  CHECK(req.query_param("min_ttl") == std::optional<std::string>("30"));
  CHECK(req.query_param("note") == std::optional<std::string>("a b"));
  CHECK(req.query_param("flag") == std::optional<std::string>(""));
  CHECK(!req.query_param("other"));
  const std::string line = "limit=3 HTTP/1.1";  // a view into a longer buffer, as on the wire
  req.query = std::string_view(line).substr(0, 7);
  CHECK(req.query_param("limit") == std::optional<std::string>("3"));
  req.query = "a=%zz";
  CHECK_THROWS_AS(req.query_param("a"), tokend::api_error);
  req.headers = {{"authorization", "Bearer x"}, {"Authorization", "second"}};
  CHECK(req.header("AUTHORIZATION") == std::optional<std::string_view>("Bearer x"));
  CHECK(!req.header("X-Request-Id"));
}
