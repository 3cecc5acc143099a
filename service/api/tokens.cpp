// GET /v1/tokens/{connection}: a fresh access token for a caller with tokens:read.
#include <boost/asio/awaitable.hpp>

#include "api/auth.hpp"
#include "api/handlers.hpp"
#include "api/tx.hpp"
#include "api/views.hpp"
#include "core/validate.hpp"
#include "crypto/token_seal.hpp"
#include "http/router.hpp"
#include "observability/log.hpp"
#include "store/repository.hpp"

namespace asio = boost::asio;

namespace tokend::api {
namespace {

http::response token_reply(const connection_record& c, const std::string& access_token,
                           sys_time now) {
  const auto left =
      std::chrono::duration_cast<std::chrono::seconds>(c.access_expires_at - now).count();
  nlohmann::json j = {{"connection", c.id},
                      {"access_token", access_token},
                      {"token_type", c.token_type},
                      {"expires_at", format_rfc3339(c.access_expires_at)},
                      {"expires_in", std::max<long long>(0, left)},
                      {"scope", c.scope ? nlohmann::json(*c.scope) : nlohmann::json(nullptr)},
                      {"token_version", c.token_version}};
  auto res = json_reply(200, j);
  res.set_header("Cache-Control", "no-store");
  res.set_header("Pragma", "no-cache");
  return res;
}

asio::awaitable<http::response> get_token(context& ctx, http::request& req) {
  auto who = co_await authenticate(ctx, req);
  require_scope(who, "tokens:read");
  const auto& id = req.param("connection");
  require_id(id, "connection");
  const auto min_ttl = int_param(req.query_param("min_ttl"), "min_ttl", 0, 3300, 300);

  auto c = co_await in_tx(ctx, req, [&](pqxx::work& tx) {
    return store::get_connection(tx, who.tenant_id, id);
  });
  if (!c) throw api_error(errc::not_found, "no such connection");
  if (c->status == "needs_reauth") {
    throw api_error(errc::reauth_required, "the connection needs reauthorization");
  }
  auto opened = crypto::open_tokens(ctx.keys, *c);
  if (!opened) {
    co_await in_tx(ctx, req, [&](pqxx::work& tx) {
      event_record e;
      e.tenant_id = c->tenant_id;
      e.connection_id = c->id;
      e.connection_row_id = c->row_id;
      e.trigger = "on_demand";
      e.outcome = "decrypt_failed";
      e.description = "stored token set cannot be decrypted with key " + c->sealed.key_id;
      e.token_version_before = c->token_version;
      e.request_id = req.request_id;
      e.instance = ctx.cfg.instance_id;
      e.environment = ctx.cfg.environment;
      store::append_event(tx, e);
    });
    log::write(log::level::error, "decrypt failed",
               {{"tenant", c->tenant_id}, {"connection", c->id}, {"key_id", c->sealed.key_id},
                {"token_version", c->token_version}},
               req.request_id);
    throw api_error(errc::decrypt_failed, "the stored token set cannot be decrypted");
  }
  const auto now = ctx.clock.now();
  const auto need = std::min<long long>(min_ttl, c->access_lifetime / 2);
  if (c->access_expires_at - now >= std::chrono::seconds(need)) {
    co_return token_reply(*c, opened->access_token, now);
  }
  api_error e(errc::provider_unavailable, "the token needs a refresh, which is not available yet");
  e.retry_after = 1;
  throw e;
}

}  // namespace

void register_tokens(http::router& r, context& ctx) {
  r.add("GET", "/v1/tokens/{connection}",
        [&ctx](http::request& req) { return get_token(ctx, req); });
}

}  // namespace tokend::api
