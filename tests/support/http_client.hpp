// A small blocking HTTP/1.1 client over POSIX sockets for tests: no Beast, exact control of
// the bytes sent (oversized headers, half-sent requests), bounded by a timeout.
#pragma once
#include <chrono>
#include <map>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

namespace tokend::test {

struct http_reply {
  int status = 0;                              // 0: no response (connection closed or timed out)
  std::map<std::string, std::string> headers;  // lower-case names
  std::string body;
  nlohmann::json json() const { return nlohmann::json::parse(body); }
  std::string header(const std::string& lower_name) const {
    auto it = headers.find(lower_name);
    return it == headers.end() ? "" : it->second;
  }
};

// One request on a fresh connection ("Connection: close").
http_reply http_call(const std::string& host_port, const std::string& method,
                     const std::string& target, const std::string& body = "",
                     const std::vector<std::pair<std::string, std::string>>& headers = {},
                     std::chrono::milliseconds timeout = std::chrono::seconds(10));

// A persistent connection for sending raw bytes and reading responses.
class http_connection {
 public:
  explicit http_connection(const std::string& host_port);
  ~http_connection();
  http_connection(const http_connection&) = delete;
  http_connection& operator=(const http_connection&) = delete;

  bool send_raw(const std::string& bytes);  // false when the peer has closed
  // Reads one response; status 0 when the connection closed or the timeout passed first.
  http_reply read_reply(std::chrono::milliseconds timeout);
  // True when the server closes the connection within `timeout` (read returns 0 / error).
  bool wait_closed(std::chrono::milliseconds timeout);

 private:
  int fd_ = -1;
  std::string buffered_;
};

}  // namespace tokend::test
