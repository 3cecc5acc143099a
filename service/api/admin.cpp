// Admin endpoints: tenants and their API keys. Admin token only.
#include <boost/asio/awaitable.hpp>

#include "api/auth.hpp"
#include "api/handlers.hpp"
#include "api/tx.hpp"
#include "api/views.hpp"
#include "cache/caches.hpp"
#include "core/validate.hpp"
#include "crypto/crypto.hpp"
#include "http/router.hpp"
#include "store/change_listener.hpp"
#include "store/repository.hpp"

namespace asio = boost::asio;

namespace tokend::api {
namespace {

const std::vector<std::string> kScopes = {"tokens:read", "connections:read", "connections:write"};

asio::awaitable<http::response> create_tenant(context& ctx, http::request& req) {
  require_admin(co_await authenticate(ctx, req));
  auto body = body_reader::parse(req.body);
  auto id = *body.string("id", 128, true);
  require_id(id, "/id");
  auto name = *body.string("name", 200, true);
  body.finish();
  auto created =
      co_await in_tx(ctx, req, [&](pqxx::work& tx) { return store::insert_tenant(tx, id, name); });
  if (!created) throw api_error(errc::conflict, "tenant " + id + " already exists");
  co_return json_reply(201, tenant_view(*created));
}

asio::awaitable<http::response> create_key(context& ctx, http::request& req) {
  require_admin(co_await authenticate(ctx, req));
  auto tenant = path_id(req, "tenant");
  auto body = body_reader::parse(req.body);
  api_key_record k;
  k.tenant_id = tenant;
  k.name = *body.string("name", 200, true);
  auto scopes = body.string_array("scopes", 10, 64);
  if (!scopes || scopes->empty()) bad_request("scopes must list at least one scope", "/scopes");
  for (std::size_t i = 0; i < scopes->size(); ++i) {
    if (std::find(kScopes.begin(), kScopes.end(), (*scopes)[i]) == kScopes.end()) {
      bad_request("unknown scope " + (*scopes)[i] +
                      "; use tokens:read, connections:read or connections:write",
                  "/scopes/" + std::to_string(i));
    }
    if (std::find(k.scopes.begin(), k.scopes.end(), (*scopes)[i]) == k.scopes.end()) {
      k.scopes.push_back((*scopes)[i]);
    }
  }
  if (auto exp = body.string("expires_at", 64)) {
    auto t = parse_rfc3339(*exp);
    if (!t) bad_request("expires_at must be an RFC 3339 timestamp", "/expires_at");
    if (*t <= ctx.clock.now()) bad_request("expires_at must be in the future", "/expires_at");
    k.expires_at = *t;
  }
  body.finish();
  const auto secret = new_api_key_secret();
  k.id = "key_" + crypto::hex(crypto::random_bytes(8));
  k.key_hash = crypto::sha256(secret);
  auto stored = co_await in_tx(ctx, req, [&](pqxx::work& tx) -> std::optional<api_key_record> {
    if (!store::tenant_exists(tx, tenant)) return std::nullopt;
    return store::insert_api_key(tx, k);
  });
  if (!stored) throw api_error(errc::not_found, "no such tenant");
  auto view = api_key_view(*stored);
  view.erase("last_used_at");
  view.erase("revoked_at");
  view["key"] = secret;
  co_return json_reply(201, view);
}

asio::awaitable<http::response> list_keys(context& ctx, http::request& req) {
  require_admin(co_await authenticate(ctx, req));
  auto tenant = path_id(req, "tenant");
  auto keys =
      co_await in_tx(ctx, req, [&](pqxx::work& tx) -> std::optional<std::vector<api_key_record>> {
        if (!store::tenant_exists(tx, tenant)) return std::nullopt;
        return store::list_api_keys(tx, tenant);
      });
  if (!keys) throw api_error(errc::not_found, "no such tenant");
  nlohmann::json items = nlohmann::json::array();
  for (const auto& k : *keys) items.push_back(api_key_view(k));
  co_return json_reply(200, {{"items", items}});
}

asio::awaitable<http::response> revoke_key(context& ctx, http::request& req) {
  require_admin(co_await authenticate(ctx, req));
  auto tenant = path_id(req, "tenant");
  const auto& id = path_id(req, "id");
  auto hash = co_await in_tx(ctx, req, [&](pqxx::work& tx) {
    auto h = store::revoke_api_key(tx, tenant, id);
    if (h) store::notify_change(tx, cache::caches::principal_key(crypto::hex(*h)));
    return h;
  });
  if (!hash) throw api_error(errc::not_found, "no such API key");
  ctx.caches.invalidate(cache::caches::principal_key(crypto::hex(*hash)));
  http::response res;
  res.status = 204;
  co_return res;
}

}  // namespace

void register_admin(http::router& r, context& ctx) {
  r.add("POST", "/v1/tenants", with_context(ctx, create_tenant));
  r.add("POST", "/v1/tenants/{tenant}/api-keys", with_context(ctx, create_key));
  r.add("GET", "/v1/tenants/{tenant}/api-keys", with_context(ctx, list_keys));
  r.add("DELETE", "/v1/tenants/{tenant}/api-keys/{id}", with_context(ctx, revoke_key));
}

}  // namespace tokend::api
