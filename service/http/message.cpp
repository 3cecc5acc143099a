#include "http/message.hpp"

#include "core/errors.hpp"

#include <strings.h>
#include <boost/url/decode_view.hpp>
#include <boost/url/parse_query.hpp>
#include <stdexcept>

namespace tokend::http {

std::optional<std::string_view> request::header(std::string_view name) const {
  for (const auto& [k, v] : headers) {
    if (k.size() == name.size() && ::strncasecmp(k.data(), name.data(), k.size()) == 0) return v;
  }
  return std::nullopt;
}

std::optional<std::string> request::query_param(std::string_view name) const {
  if (query.empty()) return std::nullopt;
  // Boost.URL 1.81's query iteration reads the last value up to a NUL, past the view's end, so
  // it gets a terminated copy (the view points into the request line).
  const std::string terminated(query);
  auto parsed = boost::urls::parse_query(terminated);
  if (!parsed) throw api_error(errc::invalid_request, "the query string is malformed");
  for (auto p : *parsed) {
    std::string key;
    for (char c : *p.key) key.push_back(c);  // *pct_string_view decodes
    if (key != name) continue;
    std::string value;
    if (p.has_value) {
      for (char c : *p.value) value.push_back(c);
    }
    return value;
  }
  return std::nullopt;
}

const std::string& request::param(std::string_view name) const {
  for (const auto& [k, v] : params) {
    if (k == name) return v;
  }
  throw std::logic_error("route has no parameter " + std::string(name));
}

response json_response(int status, std::string body) {
  response r;
  r.status = status;
  r.body = std::move(body);
  return r;
}

}  // namespace tokend::http
