// The hand-written HTTP/1.x response serializer: framing must match what clients expect from
// Beast's prepare_payload (lengths, bodiless statuses, HEAD, connection persistence).
#include <catch2/catch.hpp>

#include "http/server.hpp"

using tokend::http::request;
using tokend::http::response;
using tokend::http::serialize_response;

namespace {

request make_request(std::string method) {
  request r;
  r.method = std::move(method);
  r.request_id = "rid-1";
  return r;
}

}  // namespace

TEST_CASE("a JSON answer carries its exact length, the request id and its own headers", "[http]") {
  auto req = make_request("GET");
  response res;
  res.body = R"({"a":1})";
  res.set_header("Cache-Control", "no-store");
  std::string out;
  serialize_response(out, req, res, 11, true);
  CHECK(out ==
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nX-Request-Id: rid-1\r\n"
        "Cache-Control: no-store\r\nContent-Length: 7\r\n\r\n{\"a\":1}");
}

TEST_CASE("the output buffer is reused, not appended to", "[http]") {
  auto req = make_request("GET");
  response res;
  res.body = "x";
  std::string out = "left over from the previous request";
  serialize_response(out, req, res, 11, true);
  CHECK(out.rfind("HTTP/1.1 200 OK\r\n", 0) == 0);
  CHECK(out.find("left over") == std::string::npos);
}

TEST_CASE("HEAD announces the length of the body it omits", "[http]") {
  auto req = make_request("HEAD");
  response res;
  res.body = "0123456789";
  std::string out;
  serialize_response(out, req, res, 11, true);
  CHECK(out.find("Content-Length: 10\r\n") != std::string::npos);
  CHECK(out.size() >= 4);
  CHECK(out.substr(out.size() - 4) == "\r\n\r\n");
}

TEST_CASE("204 and 304 have neither a body nor a Content-Length", "[http]") {
  auto req = make_request("DELETE");
  response res;
  res.status = 204;
  std::string out;
  serialize_response(out, req, res, 11, true);
  CHECK(out == "HTTP/1.1 204 No Content\r\nX-Request-Id: rid-1\r\n\r\n");

  res.status = 304;
  res.body = "must not be sent";
  serialize_response(out, req, res, 11, true);
  CHECK(out.rfind("HTTP/1.1 304 Not Modified\r\n", 0) == 0);
  CHECK(out.find("Content-Length") == std::string::npos);
  CHECK(out.find("must not be sent") == std::string::npos);
}

TEST_CASE("Connection is stated only where it differs from the version's default", "[http]") {
  auto req = make_request("GET");
  response res;
  res.status = 404;
  res.content_type = "application/problem+json";
  res.body = "{}";
  std::string out;

  serialize_response(out, req, res, 11, false);
  CHECK(out.rfind("HTTP/1.1 404 Not Found\r\n", 0) == 0);
  CHECK(out.find("Connection: close\r\n") != std::string::npos);

  serialize_response(out, req, res, 11, true);
  CHECK(out.find("Connection:") == std::string::npos);

  serialize_response(out, req, res, 10, true);
  CHECK(out.rfind("HTTP/1.0 404 Not Found\r\n", 0) == 0);
  CHECK(out.find("Connection: keep-alive\r\n") != std::string::npos);

  serialize_response(out, req, res, 10, false);
  CHECK(out.find("Connection:") == std::string::npos);
}

TEST_CASE("a CR or LF in a header value cannot start a new header", "[http]") {
  auto req = make_request("GET");
  response res;
  res.status = 503;
  res.set_header("Retry-After", "5\r\nSet-Cookie: x=1");
  std::string out;
  serialize_response(out, req, res, 11, true);
  CHECK(out.find("Retry-After: 5  Set-Cookie: x=1\r\n") != std::string::npos);
  CHECK(out.find("\r\nSet-Cookie") == std::string::npos);
  CHECK(out.rfind("HTTP/1.1 503 Service Unavailable\r\n", 0) == 0);
}
