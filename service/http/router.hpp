// Route table: path templates with {param} segments -> coroutine handlers, 404/405 decisions,
// and the one place where handler exceptions become problem+json.
#pragma once
#include <boost/asio/awaitable.hpp>
#include <functional>
#include <string>
#include <vector>

#include "http/message.hpp"

namespace tokend::http {

using handler = std::function<boost::asio::awaitable<response>(request&)>;

class router {
 public:
  // Registers `method` on `path_template` ("/v1/tenants/{tenant}"). Not thread-safe: build the
  // table before serving; lookups afterwards are read-only and safe from any thread. Requests
  // keep views of the templates (route, parameter names), so nothing may be added once serving.
  void add(std::string method, std::string path_template, handler h);

  struct match_result {
    const handler* h = nullptr;      // set when path and method match
    std::string_view route;          // template of the matched path (also on 405); router-owned
    std::vector<std::string> allow;  // methods allowed for the path (on 405)
    std::vector<std::pair<std::string_view, std::string>> params;
  };
  // Finds the handler for method+path. h == nullptr && route.empty() means 404;
  // h == nullptr && !route.empty() means 405. Thread-safe.
  match_result match(std::string_view method, std::string_view path) const;

  // Routes and runs the request; never throws: api_error becomes its problem, anything else
  // a generic 500 (the exception is logged with the request id).
  boost::asio::awaitable<response> dispatch(request& req) const;

 private:
  struct route_entry {
    std::string method;
    std::string path_template;
    std::vector<std::string> segments;
    handler h;
  };
  std::vector<route_entry> routes_;
};

}  // namespace tokend::http
