// Outbound HTTP(S) for token endpoints and canaries: TLS with peer verification, SNI and host-name
// check against the system CA store; the outbound address rule checked on the resolved address
// at connect time; no redirects followed; a deadline per phase; response body capped.
#pragma once
#include <boost/asio/any_io_executor.hpp>
#include <boost/asio/awaitable.hpp>
#include <chrono>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

namespace boost::asio::ip {
class address;
}

namespace tokend::oauth {

struct client_options {
  std::chrono::milliseconds resolve_timeout{5000};
  std::chrono::milliseconds connect_timeout{5000};
  std::chrono::milliseconds tls_timeout{5000};
  std::chrono::milliseconds call_timeout{10000};  // write + read of one request
  std::size_t body_limit = 64 * 1024;
  // Idle connections kept per provider host for reuse, and how long one may idle. Kept short,
  // well under common server keep-alive timeouts, so a reused connection is rarely stale.
  std::size_t idle_per_host = 16;
  std::chrono::milliseconds max_idle{3000};
  bool allow_insecure = false;  // http and any address (TOKEND_ALLOW_INSECURE_PROVIDER_URLS=1)
};

struct http_result {
  bool sent = false;  // the request was written completely
  int status = 0;     // 0: no response head
  bool body_complete = false;
  std::string body;
  std::optional<std::string> retry_after;
  bool refused = false;     // the URL or every resolved address broke the outbound rule
  std::string error;        // transport failure, for logs
  bool keep_alive = false;  // the server allows another request on this connection
  bool reused = false;      // sent on a pooled connection
};

// How long the answer to a request that was written completely is awaited. A sent refresh
// request may have rotated the refresh token: its answer is worth waiting for well past the
// callers' deadline. Zero timeout: the call timeout, bounded by the request's deadline.
struct answer_wait {
  std::chrono::milliseconds timeout{0};
  std::chrono::steady_clock::time_point cap = std::chrono::steady_clock::time_point::max();
};

// Public unicast addresses only: no loopback, private, link-local, unique-local, unspecified,
// multicast or reserved ranges (IPv4-mapped IPv6 checked as IPv4). Pure.
bool is_public_address(const boost::asio::ip::address& a);

class http_client {
 public:
  explicit http_client(client_options opts);
  ~http_client();

  // Sends one request, on an idle pooled connection to the same scheme://host:port when one is
  // available, else on a new one. Never throws for network failures: they are reported in
  // http_result. `deadline` bounds resolve, connect, TLS and send on top of their per-phase
  // timeouts; once sent, the answer is read until `answer` says (by default also `deadline`).
  // Thread-safe.
  boost::asio::awaitable<http_result> request(
      std::string method, const std::string& url,
      const std::vector<std::pair<std::string, std::string>>& headers, std::string body,
      std::chrono::steady_clock::time_point deadline, answer_wait answer = {});

 private:
  struct impl;
  client_options opts_;
  std::unique_ptr<impl> impl_;
};

}  // namespace tokend::oauth
