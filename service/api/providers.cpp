// A tenant's OAuth apps: PUT (create/replace), GET one, GET list.
#include <boost/asio/awaitable.hpp>

#include "api/auth.hpp"
#include "api/handlers.hpp"
#include "api/tx.hpp"
#include "api/views.hpp"
#include "core/provider_defaults.hpp"
#include "core/validate.hpp"
#include "crypto/token_seal.hpp"
#include "http/router.hpp"
#include "store/repository.hpp"

namespace asio = boost::asio;

namespace tokend::api {
namespace {

std::optional<std::string> url_field(body_reader& body, const char* name, bool insecure) {
  auto v = body.string(name, 2048);
  if (v) {
    if (auto why = check_provider_url(*v, insecure)) {
      bad_request(std::string(name) + " " + *why, "/" + std::string(name));
    }
  }
  return v;
}

// The first of the fields a stored secret is bound to that `next` changes, if any.
std::optional<std::string> endpoint_change(const provider_record& prev,
                                           const provider_record& next) {
  if (next.token_url != prev.token_url) return "token_url";
  if (next.client_id != prev.client_id) return "client_id";
  if (next.auth_method != prev.auth_method) return "token_endpoint_auth_method";
  if (next.authorize_url != prev.authorize_url) return "authorize_url";
  if (next.canary_url != prev.canary_url) return "canary_url";
  return std::nullopt;
}

asio::awaitable<http::response> put_provider(context& ctx, http::request& req) {
  auto who = co_await authenticate(ctx, req);
  require_scope(who, "connections:write");
  const auto& id = path_id(req, "provider");
  const bool insecure = ctx.cfg.allow_insecure_provider_urls;

  auto body = body_reader::parse(req.body);
  provider_record p;
  p.tenant_id = who.tenant_id();
  p.id = id;
  p.type = *body.string("type", 32, true);
  if (p.type != "airtable" && p.type != "oauth2") {
    bad_request("type must be airtable or oauth2", "/type");
  }
  const bool airtable = p.type == "airtable";
  p.display_name = body.string("display_name", 200);
  p.client_id = *body.string("client_id", 512, true);
  auto secret = body.string("client_secret", 4096);
  p.authorize_url = url_field(body, "authorize_url", insecure);
  auto token_url = url_field(body, "token_url", insecure);
  if (auto scopes = body.string_array("scopes", 100, 200)) {
    for (std::size_t i = 0; i < scopes->size(); ++i) {
      if ((*scopes)[i].find_first_of(" \t\r\n\"\\") != std::string::npos) {
        bad_request("scopes items must not contain spaces, quotes or backslashes",
                    "/scopes/" + std::to_string(i));
      }
    }
    p.scopes = *scopes;
  }
  auto method = body.string("token_endpoint_auth_method", 32);
  if (method && *method != "client_secret_basic" && *method != "client_secret_post" &&
      *method != "none") {
    bad_request(
        "token_endpoint_auth_method must be client_secret_basic, client_secret_post or none",
        "/token_endpoint_auth_method");
  }
  auto pkce = body.boolean("pkce");
  p.redirect_uri = body.string("redirect_uri", 2048);
  if (p.redirect_uri) {
    if (auto why = check_provider_url(*p.redirect_uri, true))
      bad_request("redirect_uri " + *why, "/redirect_uri");
  }
  p.default_expires_in = body.integer("default_expires_in", 1, 31536000).value_or(3600);
  p.refresh_token_lifetime = body.integer("refresh_token_lifetime", 1, 10LL * 31536000);
  p.refresh_ahead = body.integer("refresh_ahead", 0, 86400).value_or(600);
  p.refresh_scope = body.string("refresh_scope", 2048);
  p.canary_url = url_field(body, "canary_url", insecure);
  p.refresh_rate_per_s = body.integer("refresh_rate_per_s", 1, 100000);
  body.finish();

  if (airtable) {
    if (!p.authorize_url) p.authorize_url = std::string(airtable_defaults::authorize_url);
    if (!token_url) token_url = std::string(airtable_defaults::token_url);
    if (!p.canary_url) p.canary_url = std::string(airtable_defaults::canary_url);
    if (!p.refresh_token_lifetime)
      p.refresh_token_lifetime = airtable_defaults::refresh_token_lifetime;
    p.pkce = pkce.value_or(true);
    if (!p.pkce) bad_request("Airtable requires PKCE", "/pkce");
  } else {
    if (!token_url) bad_request("token_url is required for oauth2 providers", "/token_url");
    p.pkce = pkce.value_or(true);
  }
  p.token_url = *token_url;

  auto [stored, created] = co_await in_tx(ctx, req, [&](pqxx::work& tx) {
    auto existing = store::get_provider(tx, p.tenant_id, p.id, true);
    p.row_id = existing ? existing->row_id : store::next_provider_row_id(tx);
    if (secret) {
      p.secret_version = existing ? existing->secret_version + 1 : 1;
      p.client_secret_ct = crypto::seal_client_secret(ctx.keys, p.tenant_id, p.id, p.row_id,
                                                      p.secret_version, *secret);
      p.key_id = ctx.keys.active_kid();
    } else if (existing) {  // an omitted secret keeps the stored one
      p.secret_version = existing->secret_version;
      p.client_secret_ct = existing->client_secret_ct;
      p.key_id = existing->key_id;
    }
    p.auth_method =
        method.value_or(airtable || p.client_secret_ct ? "client_secret_basic" : "none");
    if (p.auth_method != "none" && !p.client_secret_ct) {
      bad_request("client_secret is required with " + p.auth_method, "/client_secret");
    }
    // A stored secret is never sent to an endpoint it was not given for.
    if (existing && existing->client_secret_ct && !secret) {
      if (auto field = endpoint_change(*existing, p)) {
        bad_request(
            "changing " + *field +
                " of a provider with a stored secret requires client_secret in the same request",
            "/client_secret");
      }
    }
    return std::pair{store::upsert_provider(tx, p), !existing};
  });
  co_return json_reply(created ? 201 : 200, provider_view(stored));
}

asio::awaitable<http::response> get_provider(context& ctx, http::request& req) {
  auto who = co_await authenticate(ctx, req);
  require_scope(who, "connections:read");
  const auto& id = path_id(req, "provider");
  auto p = co_await in_tx(
      ctx, req, [&](pqxx::work& tx) { return store::get_provider(tx, who.tenant_id(), id); });
  if (!p) throw api_error(errc::not_found, "no such provider");
  co_return json_reply(200, provider_view(*p));
}

asio::awaitable<http::response> list_providers(context& ctx, http::request& req) {
  auto who = co_await authenticate(ctx, req);
  require_scope(who, "connections:read");
  auto all = co_await in_tx(
      ctx, req, [&](pqxx::work& tx) { return store::list_providers(tx, who.tenant_id()); });
  nlohmann::json items = nlohmann::json::array();
  for (const auto& p : all) items.push_back(provider_view(p));
  co_return json_reply(200, {{"items", items}});
}

}  // namespace

void register_providers(http::router& r, context& ctx) {
  r.add("PUT", "/v1/providers/{provider}", with_context(ctx, put_provider));
  r.add("GET", "/v1/providers/{provider}", with_context(ctx, get_provider));
  r.add("GET", "/v1/providers", with_context(ctx, list_providers));
}

}  // namespace tokend::api
