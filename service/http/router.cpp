#include "http/router.hpp"

#include <algorithm>
#include <boost/url/decode_view.hpp>

#include "http/problem.hpp"
#include "observability/log.hpp"

namespace tokend::http {
namespace {

std::vector<std::string> split_path(std::string_view path) {
  std::vector<std::string> out;
  size_t i = 0;
  if (!path.empty() && path[0] == '/') i = 1;
  while (i <= path.size()) {
    auto j = path.find('/', i);
    if (j == std::string_view::npos) j = path.size();
    out.emplace_back(path.substr(i, j - i));
    i = j + 1;
  }
  return out;
}

bool is_param(const std::string& seg) {
  return seg.size() > 2 && seg.front() == '{' && seg.back() == '}';
}

std::optional<std::string> percent_decode(std::string_view s) {
  auto pct = boost::urls::make_pct_string_view(s);
  if (!pct) return std::nullopt;
  std::string out;
  for (char c : **pct) out.push_back(c);  // *pct is the encoded view; ** decodes
  return out;
}

}  // namespace

void router::add(std::string method, std::string path_template, handler h) {
  auto segs = split_path(path_template);
  routes_.push_back({std::move(method), std::move(path_template), std::move(segs), std::move(h)});
}

router::match_result router::match(std::string_view method, std::string_view path) const {
  // Among templates matching the path, the one with the most literal segments wins
  // ("/v1/connect-links" over "/v1/{x}"); its methods make the Allow list.
  match_result result;
  const auto segs = split_path(path);
  int best_literals = -1;
  for (const auto& r : routes_) {
    if (r.segments.size() != segs.size()) continue;
    std::map<std::string, std::string, std::less<>> params;
    int literals = 0;
    bool ok = true;
    for (size_t i = 0; i < segs.size() && ok; ++i) {
      if (!is_param(r.segments[i])) {
        ok = r.segments[i] == segs[i];
        ++literals;
        continue;
      }
      auto decoded = percent_decode(segs[i]);
      ok = decoded && !decoded->empty();
      if (ok) params.emplace(r.segments[i].substr(1, r.segments[i].size() - 2), *decoded);
    }
    if (!ok || literals < best_literals) continue;
    if (literals > best_literals) {
      best_literals = literals;
      result = match_result{};
      result.route = r.path_template;
    }
    if (r.path_template != result.route) continue;
    result.allow.push_back(r.method);
    if (r.method == method) {
      result.h = &r.h;
      result.params = std::move(params);
    }
  }
  std::sort(result.allow.begin(), result.allow.end());
  return result;
}

boost::asio::awaitable<response> router::dispatch(request& req) const {
  auto m = match(req.method, req.path);
  if (!m.h) {
    if (m.route.empty()) {
      req.route = "unmatched";
      co_return make_problem(errc::not_found, "no such resource", req.request_id);
    }
    req.route = m.route;
    auto r =
        make_problem(errc::method_not_allowed,
                     "method " + req.method + " is not allowed on this resource", req.request_id);
    std::string allow;
    for (const auto& a : m.allow) allow += (allow.empty() ? "" : ", ") + a;
    r.set_header("Allow", allow);
    co_return r;
  }
  req.route = m.route;
  req.params = std::move(m.params);
  try {
    co_return co_await (*m.h)(req);
  } catch (const api_error& e) {
    if (describe(e.code()).status >= 500) {
      log::write(log::level::error, "request failed",
                 {{"route", req.route}, {"code", describe(e.code()).code}, {"error", e.what()}},
                 req.request_id);
    }
    co_return make_problem(e, req.request_id);
  } catch (const std::exception& e) {
    log::write(log::level::error, "unhandled exception in handler",
               {{"route", req.route}, {"error", e.what()}}, req.request_id);
    co_return make_problem(errc::internal, "internal error", req.request_id);
  }
}

}  // namespace tokend::http
