// HTTP/1.1 server on Beast with C++20 coroutines: keep-alive, header/body limits, read/idle/write
// deadlines, request ids, and graceful shutdown. Handlers run on the connection's strand.
#pragma once
#include <chrono>
#include <functional>
#include <memory>
#include <string>

#include "http/message.hpp"

namespace boost::asio {
class io_context;
}

namespace tokend::http {

class router;

struct server_options {
  std::size_t header_limit = 8 * 1024;            // larger header blocks get 431
  std::size_t body_limit = 64 * 1024;             // larger bodies get 413
  std::chrono::milliseconds read_timeout{10000};  // first byte to last byte of a request
  std::chrono::milliseconds idle_timeout{60000};  // keep-alive wait for the next request
  std::chrono::milliseconds write_timeout{10000};
  std::chrono::seconds request_timeout{15};  // sets request::deadline
};

// Called once per answered request (access log, metrics); must be thread-safe.
using completion_hook =
    std::function<void(const request&, const response&, std::chrono::duration<double>)>;

// Writes `res` as an HTTP/1.x message into `out` (cleared first): status line, Content-Type,
// X-Request-Id, the response's headers, Connection when it differs from the version's default,
// Content-Length (none for 1xx, 204 and 304), then the body unless the request was HEAD.
void serialize_response(std::string& out, const request& req, const response& res, unsigned version,
                        bool keep_alive);

class server {
 public:
  server(boost::asio::io_context& ioc, server_options opts, const router& routes,
         completion_hook on_done);
  ~server();
  server(const server&) = delete;
  server& operator=(const server&) = delete;

  // Binds host:port (port 0 picks one) and starts accepting. Returns the bound "host:port".
  // Throws boost::system::system_error when binding fails.
  std::string listen(const std::string& host, unsigned short port);

  // Graceful shutdown, step 1: stop accepting, close connections that are not handling a
  // request, and make busy ones close after their response. Thread-safe.
  void begin_shutdown();
  // Step 2 (after the grace period): close every connection. Thread-safe.
  void close_all();
  std::size_t active_requests() const;
  std::size_t open_connections() const;

 private:
  struct impl;
  std::shared_ptr<impl> impl_;
};

}  // namespace tokend::http
