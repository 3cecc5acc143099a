// Transport-neutral HTTP request/response used by handlers, so handler code needs no Beast.
#pragma once
#include <chrono>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace tokend::http {

// The views point into the transport's parsed message, the session or the router's table; they
// stay valid until the response has been written. Copy what must outlive the request.
struct request {
  std::string method;       // upper case, e.g. "GET"
  std::string_view target;  // raw request target
  std::string_view path;    // target without the query
  std::string_view query;   // raw query string without '?'
  std::vector<std::pair<std::string_view, std::string_view>> headers;
  std::string body;
  std::string request_id;
  std::string_view remote;  // peer address, for logs
  std::chrono::steady_clock::time_point received_at{};
  std::chrono::steady_clock::time_point deadline{};  // received_at + request timeout

  // Filled by the router.
  std::string_view route;  // the matched template, e.g. "/v1/tokens/{connection}"
  std::vector<std::pair<std::string_view, std::string>> params;  // name -> decoded value

  // Case-insensitive header lookup; the first occurrence wins.
  std::optional<std::string_view> header(std::string_view name) const;
  // Percent-decoded query parameter; nullopt when absent. A malformed query string throws
  // api_error invalid_request.
  std::optional<std::string> query_param(std::string_view name) const;
  const std::string& param(std::string_view name) const;
};

struct response {
  int status = 200;
  std::string content_type = "application/json";
  std::string body;
  std::vector<std::pair<std::string, std::string>> headers;

  void set_header(std::string name, std::string value) {
    headers.emplace_back(std::move(name), std::move(value));
  }
};

// A JSON 200/201 response with the given body text.
response json_response(int status, std::string body);

}  // namespace tokend::http
