#include "http/router.hpp"

#include <algorithm>
#include <array>
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
  // ("/v1/connect-links" over "/v1/{x}"); its methods make the Allow list (built only for 405).
  match_result result;
  // No template has more than a handful of segments; a longer path matches nothing.
  std::array<std::string_view, 16> segs;
  std::size_t nsegs = 0;
  {
    std::size_t i = (!path.empty() && path[0] == '/') ? 1 : 0;
    while (i <= path.size()) {
      if (nsegs == segs.size()) return result;
      auto j = path.find('/', i);
      if (j == std::string_view::npos) j = path.size();
      segs[nsegs++] = path.substr(i, j - i);
      i = j + 1;
    }
  }
  auto literal_match = [&](const route_entry& r, int& literals) {
    literals = 0;
    if (r.segments.size() != nsegs) return false;
    for (std::size_t i = 0; i < nsegs; ++i) {
      if (is_param(r.segments[i])) {
        if (segs[i].empty()) return false;
        continue;
      }
      if (r.segments[i] != segs[i]) return false;
      ++literals;
    }
    return true;
  };
  const route_entry* best = nullptr;
  int best_literals = -1;
  for (const auto& r : routes_) {
    int literals = 0;
    if (literal_match(r, literals) && literals > best_literals) {
      best_literals = literals;
      best = &r;
    }
  }
  if (!best) return result;
  result.route = best->path_template;
  const route_entry* chosen = nullptr;
  for (const auto& r : routes_) {
    if (r.path_template != best->path_template) continue;
    if (r.method == method) chosen = &r;
  }
  if (!chosen) {
    for (const auto& r : routes_) {
      if (r.path_template == best->path_template) result.allow.push_back(r.method);
    }
    std::sort(result.allow.begin(), result.allow.end());
    return result;
  }
  for (std::size_t i = 0; i < nsegs; ++i) {
    if (!is_param(chosen->segments[i])) continue;
    auto decoded = percent_decode(segs[i]);
    if (!decoded || decoded->empty()) {  // undecodable: no such resource
      result = match_result{};
      return result;
    }
    const std::string_view name = chosen->segments[i];
    result.params.emplace_back(name.substr(1, name.size() - 2), std::move(*decoded));
  }
  result.h = &chosen->h;
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
