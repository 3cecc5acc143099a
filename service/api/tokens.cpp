// Tokens: GET /v1/tokens/{connection} (fresh or refreshed first) and
// POST /v1/tokens/{connection}/refresh (conditional or forced). Scope tokens:read.
#include <boost/asio/awaitable.hpp>

#include "api/auth.hpp"
#include "api/handlers.hpp"
#include "api/tx.hpp"
#include "core/validate.hpp"
#include "http/router.hpp"
#include "refresh/engine.hpp"

namespace asio = boost::asio;

namespace tokend::api {
namespace {

// Appends `v` as a JSON string (RFC 8259 escaping).
void append_json_string(std::string& out, std::string_view v) {
  static constexpr char hex[] = "0123456789abcdef";
  out.push_back('"');
  for (unsigned char ch : v) {
    switch (ch) {
      case '"':
        out += "\\\"";
        break;
      case '\\':
        out += "\\\\";
        break;
      case '\n':
        out += "\\n";
        break;
      case '\r':
        out += "\\r";
        break;
      case '\t':
        out += "\\t";
        break;
      default:
        if (ch < 0x20) {
          out += "\\u00";
          out.push_back(hex[ch >> 4]);
          out.push_back(hex[ch & 0xf]);
        } else {
          out.push_back(static_cast<char>(ch));
        }
    }
  }
  out.push_back('"');
}

// Written by hand rather than through nlohmann::json: this is the hot path's only response.
http::response token_reply(const refresh::token_answer& a, sys_time now) {
  const auto& c = a.conn;
  const auto left =
      std::chrono::duration_cast<std::chrono::seconds>(c.access_expires_at - now).count();
  std::string body;
  body.reserve(160 + a.access_token.size());
  body += "{\"connection\":";
  append_json_string(body, c.id);
  body += ",\"access_token\":";
  append_json_string(body, a.access_token);
  body += ",\"token_type\":";
  append_json_string(body, c.token_type);
  body += ",\"expires_at\":\"" + format_rfc3339(c.access_expires_at) + "\"";
  body += ",\"expires_in\":" + std::to_string(std::max<long long>(0, left));
  body += ",\"scope\":";
  if (c.scope) {
    append_json_string(body, *c.scope);
  } else {
    body += "null";
  }
  body += ",\"token_version\":" + std::to_string(c.token_version);
  if (a.deferred) body += ",\"refresh_deferred\":true";
  body += "}";
  auto res = http::json_response(200, std::move(body));
  res.set_header("Cache-Control", "no-store");
  return res;
}

asio::awaitable<http::response> get_token(context& ctx, http::request& req) {
  auto who = co_await authenticate(ctx, req);
  require_scope(who, "tokens:read");
  const auto& id = path_id(req, "connection");
  const auto min_ttl = int_param(req.query_param("min_ttl"), "min_ttl", 0, 3300, 300);
  // A named caller: g++ 12 mishandles brace-initialized temporaries bound to reference
  // parameters of a coroutine inside co_await (the temporary is destroyed twice).
  const refresh::caller c{who.tenant_id, req.request_id, req.deadline};
  auto answer = co_await ctx.engine.get(c, id, min_ttl);
  co_return token_reply(answer, ctx.clock.now());
}

asio::awaitable<http::response> post_refresh(context& ctx, http::request& req) {
  auto who = co_await authenticate(ctx, req);
  require_scope(who, "tokens:read");
  const auto& id = path_id(req, "connection");
  auto body = body_reader::parse(req.body, true);
  auto if_version = body.integer("if_token_version", 1, std::numeric_limits<long long>::max());
  body.finish();
  const refresh::caller c{who.tenant_id, req.request_id, req.deadline};
  auto answer = co_await ctx.engine.refresh(c, id, if_version);
  co_return token_reply(answer, ctx.clock.now());
}

}  // namespace

void register_tokens(http::router& r, context& ctx) {
  r.add("GET", "/v1/tokens/{connection}",
        [&ctx](http::request& req) { return get_token(ctx, req); });
  r.add("POST", "/v1/tokens/{connection}/refresh",
        [&ctx](http::request& req) { return post_refresh(ctx, req); });
}

}  // namespace tokend::api
