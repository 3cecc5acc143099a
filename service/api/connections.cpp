// Connections: import/replace (PUT), view, list, delete, and the per-connection event log.
#include <boost/asio/awaitable.hpp>

#include "api/auth.hpp"
#include "api/handlers.hpp"
#include "api/tx.hpp"
#include "api/views.hpp"
#include "cache/caches.hpp"
#include "core/provider_defaults.hpp"
#include "core/schedule_policy.hpp"
#include "core/validate.hpp"
#include "crypto/crypto.hpp"
#include "crypto/token_seal.hpp"
#include "http/router.hpp"
#include "store/change_listener.hpp"
#include "store/repository.hpp"
#include "store/webhook_store.hpp"

namespace asio = boost::asio;

namespace tokend::api {
namespace {

constexpr std::size_t kMaxToken = kMaxTokenBytes;
constexpr std::size_t kMaxMetadata = 16 * 1024;

asio::awaitable<http::response> put_connection(context& ctx, http::request& req) {
  auto who = co_await authenticate(ctx, req);
  require_scope(who, "connections:write");
  const auto id = path_id(req, "connection");

  auto body = body_reader::parse(req.body);
  auto provider_id = *body.string("provider", 128, true);
  require_id(provider_id, "/provider");
  token_set t;
  t.access_token = *body.string("access_token", kMaxToken, true);
  t.refresh_token = body.string("refresh_token", kMaxToken);
  auto expires_in = body.integer("expires_in", 1, 31536000);
  auto expires_at_s = body.string("expires_at", 64);
  auto refresh_expires_in = body.integer("refresh_expires_in", 1, 10LL * 31536000);
  t.scope = body.string("scope", 2048, false, true);
  auto metadata = body.object("metadata", kMaxMetadata);
  auto if_version = body.integer("if_token_version", 1, std::numeric_limits<long long>::max());
  body.finish();
  if (expires_in && expires_at_s)
    bad_request("give expires_in or expires_at, not both", "/expires_at");
  std::optional<sys_time> expires_at;
  if (expires_at_s) {
    expires_at = parse_rfc3339(*expires_at_s);
    if (!expires_at) bad_request("expires_at must be an RFC 3339 timestamp", "/expires_at");
    if (*expires_at > ctx.clock.now() + std::chrono::seconds(10LL * 31536000)) {
      bad_request("expires_at must be within ten years", "/expires_at");
    }
  }
  const auto now = ctx.clock.now();

  auto [stored, created] = co_await in_tx(ctx, req, [&](pqxx::work& tx) {
    auto provider = store::get_provider(tx, who.tenant_id(), provider_id);
    if (!provider) bad_request("unknown provider " + provider_id, "/provider");
    using std::chrono::seconds;
    if (expires_at) {
      t.access_expires_at = *expires_at;
      t.access_lifetime =
          std::max<long long>(0, std::chrono::duration_cast<seconds>(*expires_at - now).count());
    } else {
      t.access_lifetime = expires_in.value_or(provider->default_expires_in);
      t.access_expires_at = now + seconds(t.access_lifetime);
    }
    if (t.refresh_token) {
      if (auto life = refresh_expires_in ? refresh_expires_in : provider->refresh_token_lifetime) {
        t.refresh_expires_at = now + seconds(*life);
        t.refresh_lifetime = *life;
      }
    }
    auto existing = store::get_connection(tx, who.tenant_id(), id, true);
    if (if_version && (!existing || existing->token_version != *if_version)) {
      throw api_error(errc::conflict, existing ? "token_version is " +
                                                     std::to_string(existing->token_version) +
                                                     ", not " + std::to_string(*if_version)
                                               : "the connection does not exist");
    }
    connection_record c;
    c.tenant_id = who.tenant_id();
    c.id = id;
    c.provider_id = provider_id;
    c.row_id = existing ? existing->row_id : store::next_connection_row_id(tx);
    c.token_version = existing ? existing->token_version + 1 : 1;
    c.sealed = crypto::seal_tokens(ctx.keys, c.tenant_id, c.id, c.row_id, c.token_version, t);
    c.token_type = t.token_type;
    c.scope = t.scope;
    c.metadata = metadata ? metadata->dump() : (existing ? existing->metadata : std::string("{}"));
    c.access_expires_at = t.access_expires_at;
    c.access_lifetime = t.access_lifetime;
    c.refresh_expires_at = t.refresh_expires_at;
    c.refresh_lifetime = t.refresh_lifetime;
    c.token_origin = url_origin(provider->token_url);  // a (re-)import binds the current origin
    // needs_reauth, back-off and the keep-alive stop are cleared by a (re-)import.
    c.next_refresh_at = policy::next_refresh_at(
        policy::facts_of(c), policy::settings_of(*provider, ctx.cfg.keepalive_margin));
    connection_record out;
    if (existing) {
      auto replaced = store::replace_connection(tx, c, existing->token_version);
      if (!replaced) throw api_error(errc::conflict, "the connection changed concurrently");
      out = std::move(*replaced);
      // Repairing a dead grant by re-import ends its failure episode like a reconnect does.
      if (existing->status == "needs_reauth") {
        store::enqueue_webhook(tx, out.tenant_id, out.id, "connection.reconnected", "reimported");
      }
    } else {
      out = store::insert_connection(tx, c);
    }
    event_record e;
    e.tenant_id = out.tenant_id;
    e.connection_id = out.id;
    e.connection_row_id = out.row_id;
    e.trigger = "import";
    e.outcome = "imported";
    if (existing) e.token_version_before = existing->token_version;
    e.token_version_after = out.token_version;
    e.request_id = req.request_id;
    e.instance = ctx.cfg.instance_id;
    e.environment = ctx.cfg.environment;
    store::append_event(tx, e);
    store::notify_change(tx, cache::caches::token_key(out.tenant_id, out.id));
    return std::pair{std::move(out), !existing};
  });
  ctx.caches.invalidate(cache::caches::token_key(who.tenant_id(), id));
  co_return json_reply(created ? 201 : 200, connection_view(stored));
}

asio::awaitable<http::response> get_connection(context& ctx, http::request& req) {
  auto who = co_await authenticate(ctx, req);
  require_scope(who, "connections:read");
  const auto id = path_id(req, "connection");
  auto c = co_await in_tx(
      ctx, req, [&](pqxx::work& tx) { return store::get_connection(tx, who.tenant_id(), id); });
  if (!c) throw api_error(errc::not_found, "no such connection");
  co_return json_reply(200, connection_view(*c));
}

asio::awaitable<http::response> list_connections(context& ctx, http::request& req) {
  auto who = co_await authenticate(ctx, req);
  require_scope(who, "connections:read");
  store::connection_filter f;
  f.limit = static_cast<int>(int_param(req.query_param("limit"), "limit", 1, 500, 100));
  if (auto s = req.query_param("status")) {
    if (*s != "active" && *s != "needs_reauth")
      bad_request("status must be active or needs_reauth", "status");
    f.status = *s;
  }
  if (auto p = req.query_param("provider")) {
    require_id(*p, "provider");
    f.provider = *p;
  }
  if (auto cur = req.query_param("cursor")) {
    // The cursor is opaque to clients: base64url of "c1:" + the last id returned.
    auto decoded = crypto::base64url_decode(*cur);
    if (!decoded || decoded->rfind("c1:", 0) != 0 || !valid_id(decoded->substr(3))) {
      bad_request("cursor is not valid", "cursor");
    }
    f.after_id = decoded->substr(3);
  }
  auto rows = co_await in_tx(ctx, req, [&](pqxx::work& tx) {
    auto probe = f;
    probe.limit = f.limit + 1;
    return store::list_connections(tx, who.tenant_id(), probe);
  });
  nlohmann::json items = nlohmann::json::array();
  nlohmann::json next = nullptr;
  for (std::size_t i = 0; i < rows.size() && i < static_cast<std::size_t>(f.limit); ++i) {
    items.push_back(connection_view(rows[i]));
  }
  if (rows.size() > static_cast<std::size_t>(f.limit)) {
    next = crypto::base64url("c1:" + rows[static_cast<std::size_t>(f.limit) - 1].id);
  }
  co_return json_reply(200, {{"items", items}, {"next_cursor", next}});
}

asio::awaitable<http::response> delete_connection(context& ctx, http::request& req) {
  auto who = co_await authenticate(ctx, req);
  require_scope(who, "connections:write");
  const auto id = path_id(req, "connection");
  bool found = co_await in_tx(ctx, req, [&](pqxx::work& tx) {
    bool deleted = store::delete_connection(tx, who.tenant_id(), id);
    if (deleted) store::notify_change(tx, cache::caches::token_key(who.tenant_id(), id));
    return deleted;
  });
  ctx.caches.invalidate(cache::caches::token_key(who.tenant_id(), id));
  if (!found) throw api_error(errc::not_found, "no such connection");
  http::response res;
  res.status = 204;
  co_return res;
}

asio::awaitable<http::response> list_events(context& ctx, http::request& req) {
  auto who = co_await authenticate(ctx, req);
  require_scope(who, "connections:read");
  const auto id = path_id(req, "connection");
  const int limit = static_cast<int>(int_param(req.query_param("limit"), "limit", 1, 500, 50));
  auto events =
      co_await in_tx(ctx, req, [&](pqxx::work& tx) -> std::optional<std::vector<event_record>> {
        auto c = store::get_connection(tx, who.tenant_id(), id);
        if (!c) return std::nullopt;
        return store::list_events(tx, who.tenant_id(), c->row_id, limit);
      });
  if (!events) throw api_error(errc::not_found, "no such connection");
  nlohmann::json items = nlohmann::json::array();
  for (const auto& e : *events) items.push_back(event_view(e));
  co_return json_reply(200, {{"items", items}});
}

}  // namespace

void register_connections(http::router& r, context& ctx) {
  r.add("PUT", "/v1/connections/{connection}", with_context(ctx, put_connection));
  r.add("GET", "/v1/connections/{connection}", with_context(ctx, get_connection));
  r.add("DELETE", "/v1/connections/{connection}", with_context(ctx, delete_connection));
  r.add("GET", "/v1/connections", with_context(ctx, list_connections));
  r.add("GET", "/v1/connections/{connection}/events", with_context(ctx, list_events));
}

}  // namespace tokend::api
