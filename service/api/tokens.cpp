// Tokens: GET /v1/tokens/{connection} (fresh or refreshed first) and
// POST /v1/tokens/{connection}/refresh (conditional or forced). Scope tokens:read.
#include <boost/asio/awaitable.hpp>
#include <charconv>

#include "api/auth.hpp"
#include "api/handlers.hpp"
#include "api/readers.hpp"
#include "api/tx.hpp"
#include "cache/caches.hpp"
#include "core/errors.hpp"
#include "core/validate.hpp"
#include "http/router.hpp"
#include "observability/metrics.hpp"
#include "refresh/engine.hpp"

namespace asio = boost::asio;

namespace tokend::api {
namespace {

// The entry carries its rendered reply; only expires_in (and refresh_deferred) vary per call.
http::response token_reply(const refresh::token_answer& a, sys_time now) {
  const auto& t = *a.token;
  const auto left = std::max<long long>(
      0, std::chrono::duration_cast<std::chrono::seconds>(t.expires_at - now).count());
  char num[24];
  const auto end = std::to_chars(num, num + sizeof num, left).ptr;
  std::string body;
  body.reserve(t.json_head.size() + t.json_tail.size() + 48);
  body.append(t.json_head).append(num, end);
  if (a.deferred) body.append(",\"refresh_deferred\":true");
  body.append(t.json_tail).push_back('}');
  auto res = http::json_response(200, std::move(body));
  res.set_header("Cache-Control", "no-store");
  return res;
}

observability::token_result result_of(const refresh::token_answer& a) {
  using observability::token_result;
  if (a.deferred) return token_result::deferred;
  if (a.joined) return token_result::joined;
  return a.refreshed ? token_result::refreshed : token_result::fresh;
}

// Counts the request's result (tokend_token_requests_total) whatever it ends as, and notes the
// key that read the token (reader audit: in memory, no write on this path).
template <class F>
asio::awaitable<http::response> counted(context& ctx, const principal& who, const std::string& id,
                                        F answer) {
  using observability::token_result;
  try {
    auto a = co_await answer();
    ctx.metrics.token_request(result_of(a));
    const auto now = ctx.clock.now();
    if (ctx.cfg.reader_audit) ctx.readers.note(who.key->key_id, who.tenant_id(), id, now);
    co_return token_reply(a, now);
  } catch (const api_error& e) {
    ctx.metrics.token_request(e.code() == errc::reauth_required ? token_result::reauth_required
                                                                : token_result::error);
    throw;
  } catch (...) {
    ctx.metrics.token_request(token_result::error);
    throw;
  }
}

asio::awaitable<http::response> get_token(context& ctx, http::request& req) {
  auto who = co_await authenticate(ctx, req);
  require_scope(who, "tokens:read");
  const auto& id = path_id(req, "connection");
  const auto min_ttl = int_param(req.query_param("min_ttl"), "min_ttl", 0, 3300, 300);
  // A named caller: g++ 12 mishandles brace-initialized temporaries bound to reference
  // parameters of a coroutine inside co_await (the temporary is destroyed twice).
  const refresh::caller c{who.tenant_id(), req.request_id, req.deadline};
  co_return co_await counted(ctx, who, id, [&] { return ctx.engine.get(c, id, min_ttl); });
}

asio::awaitable<http::response> post_refresh(context& ctx, http::request& req) {
  auto who = co_await authenticate(ctx, req);
  require_scope(who, "tokens:read");
  const auto& id = path_id(req, "connection");
  auto body = body_reader::parse(req.body, true);
  auto if_version = body.integer("if_token_version", 1, std::numeric_limits<long long>::max());
  body.finish();
  if (if_version) ctx.metrics.conditional_refresh();  // the caller got a 401 from the provider
  const refresh::caller c{who.tenant_id(), req.request_id, req.deadline};
  co_return co_await counted(ctx, who, id, [&] { return ctx.engine.refresh(c, id, if_version); });
}

}  // namespace

void register_tokens(http::router& r, context& ctx) {
  r.add("GET", "/v1/tokens/{connection}", with_context(ctx, get_token));
  r.add("POST", "/v1/tokens/{connection}/refresh", with_context(ctx, post_refresh));
}

}  // namespace tokend::api
