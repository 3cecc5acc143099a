// Reauthorization for ops: reauth links for connections that need repair, connect links for new
// connections, their lifecycle, and the tenant's allowed return_url origins (settings).
#include <boost/asio/awaitable.hpp>
#include <boost/url/parse.hpp>
#include <set>
#include <sstream>

#include "api/auth.hpp"
#include "api/handlers.hpp"
#include "api/tx.hpp"
#include "api/views.hpp"
#include "core/provider_defaults.hpp"
#include "core/validate.hpp"
#include "crypto/crypto.hpp"
#include "http/router.hpp"
#include "observability/log.hpp"
#include "observability/metrics.hpp"
#include "store/reauth_store.hpp"
#include "store/repository.hpp"

namespace asio = boost::asio;
using json = nlohmann::json;

namespace tokend::api {
namespace {

constexpr long long kDefaultLinkLifetime = 7 * 24 * 3600;
constexpr std::size_t kMaxReturnOrigins = 20;

// An origin: scheme://host[:port] with nothing after it.
void check_origin(const std::string& o, bool insecure, const std::string& field) {
  if (auto why = check_provider_url(o, insecure)) bad_request("origin " + *why, field);
  auto u = boost::urls::parse_absolute_uri(o);
  if (!u->encoded_path().empty() || u->has_query()) {
    bad_request("must be an origin (scheme://host[:port]) without a path or query", field);
  }
}

std::vector<std::string> words(const std::optional<std::string>& s) {
  std::vector<std::string> out;
  if (!s) return out;
  std::istringstream in(*s);
  for (std::string w; in >> w;) out.push_back(w);
  return out;
}

json link_created_view(const store::reauth_link_record& l, const std::string& url) {
  return {{"id", l.id}, {"url", url}, {"expires_at", format_rfc3339(l.expires_at)}};
}

json link_view(const store::reauth_link_record& l) {
  return {{"id", l.id},
          {"status", l.shown_status()},
          {"kind", l.kind},
          {"reason", l.reason},
          {"provider", l.provider_id},
          {"created_at", format_rfc3339(l.created_at)},
          {"expires_at", format_rfc3339(l.expires_at)},
          {"opened_at", opt_time(l.opened_at)},
          {"started_at", opt_time(l.started_at)},
          {"completed_at", opt_time(l.completed_at)},
          {"ended_at", opt_time(l.ended_at)},
          {"last_error", l.last_error ? json(*l.last_error) : json(nullptr)}};
}

// Reads: the read scope, or the section's write scope.
void require_read_or_write(const principal& who) {
  try {
    require_scope(who, "connections:read");
  } catch (const api_error&) {
    require_scope(who, "connections:write");
  }
}

struct link_body {
  long long expires_in = kDefaultLinkLifetime;
  std::optional<std::string> return_url;
};

link_body read_link_fields(body_reader& body, bool insecure) {
  link_body b;
  if (auto e = body.integer("expires_in", 300, 2592000)) b.expires_in = *e;
  b.return_url = body.string("return_url", 2048);
  if (b.return_url) {
    if (auto why = check_provider_url(*b.return_url, insecure))
      bad_request("return_url " + *why, "/return_url");
  }
  return b;
}

// Under the transaction: a return_url must be on one of the tenant's allowed origins.
void require_allowed_return_url(pqxx::work& tx, const std::string& tenant,
                                const std::optional<std::string>& url) {
  if (!url) return;
  const auto origin = url_origin(*url);
  for (const auto& allowed : store::get_return_url_origins(tx, tenant)) {
    if (url_origin(allowed) == origin) return;
  }
  bad_request("return_url is not on an origin allowed by PUT /v1/settings", "/return_url");
}

void require_authorize_url(const provider_record& p) {
  if (!p.authorize_url) {
    throw api_error(errc::conflict,
                    "provider " + p.id + " has no authorize_url; set it before creating links");
  }
}

// Mints the link: 256 random bits, stored only as a hash.
struct minted {
  store::reauth_link_record link;
  std::string url;
};
minted mint_link(context& ctx, pqxx::work& tx, store::reauth_link_record l, long long expires_in) {
  const auto token = crypto::base64url(crypto::random_bytes(32));
  l.id = "rl_" + crypto::base64url(crypto::random_bytes(12));
  auto stored = store::insert_link(tx, l, crypto::sha256(token), expires_in);
  return {std::move(stored), ctx.cfg.public_url + "/connect/" + token};
}

void log_created(context& ctx, const store::reauth_link_record& l, const http::request& req) {
  ctx.metrics.reauth_link("created");
  log::write(log::level::info, "reauth link created",
             {{"tenant", l.tenant_id},
              {"connection", l.connection_id},
              {"link", l.id},
              {"kind", l.kind},
              {"reason", l.reason}},
             req.request_id);
}

asio::awaitable<http::response> create_reauth_link(context& ctx, http::request& req) {
  auto who = co_await authenticate(ctx, req);
  require_scope(who, "connections:write");
  const auto id = path_id(req, "connection");
  auto body = body_reader::parse(req.body, true);
  auto fields = read_link_fields(body, ctx.cfg.allow_insecure_provider_urls);
  body.finish();
  auto out = co_await in_tx(ctx, req, [&](pqxx::work& tx) {
    auto c = store::get_connection(tx, who.tenant_id(), id, true);
    if (!c) throw api_error(errc::not_found, "no such connection");
    require_allowed_return_url(tx, who.tenant_id(), fields.return_url);
    auto provider = store::get_provider(tx, who.tenant_id(), c->provider_id);
    if (!provider) throw api_error(errc::not_found, "no such connection");
    require_authorize_url(*provider);
    std::string reason;
    if (c->status == "needs_reauth") {
      reason = c->reauth_reason.value_or("grant_revoked");
    } else {
      const auto have = words(c->scope);
      const std::set<std::string> held(have.begin(), have.end());
      for (const auto& s : provider->scopes) {
        if (!held.count(s)) reason = "scope_changed";
      }
      if (reason.empty()) {
        throw api_error(errc::conflict,
                        "the connection is active and holds every scope its provider asks for; "
                        "it needs no reauthorization");
      }
    }
    store::reauth_link_record l;
    l.tenant_id = who.tenant_id();
    l.kind = "reauth";
    l.connection_id = id;
    l.connection_row_id = c->row_id;
    l.provider_id = c->provider_id;
    l.reason = reason;
    l.return_url = fields.return_url;
    l.request_id = req.request_id;
    auto m = mint_link(ctx, tx, l, fields.expires_in);
    event_record e;
    e.tenant_id = c->tenant_id;
    e.connection_id = c->id;
    e.connection_row_id = c->row_id;
    e.trigger = "reauth";
    e.outcome = "reauth_link_created";
    e.description = "link " + m.link.id + " created (" + reason + "), expires " +
                    format_rfc3339(m.link.expires_at);
    e.request_id = req.request_id;
    e.instance = ctx.cfg.instance_id;
    e.environment = ctx.cfg.environment;
    store::append_event(tx, e);
    return m;
  });
  log_created(ctx, out.link, req);
  co_return json_reply(201, link_created_view(out.link, out.url));
}

asio::awaitable<http::response> create_connect_link(context& ctx, http::request& req) {
  auto who = co_await authenticate(ctx, req);
  require_scope(who, "connections:write");
  auto body = body_reader::parse(req.body);
  auto id = *body.string("connection", 128, true);
  require_id(id, "/connection");
  auto provider_id = *body.string("provider", 128, true);
  require_id(provider_id, "/provider");
  auto fields = read_link_fields(body, ctx.cfg.allow_insecure_provider_urls);
  body.finish();
  auto out = co_await in_tx(ctx, req, [&](pqxx::work& tx) {
    auto provider = store::get_provider(tx, who.tenant_id(), provider_id);
    if (!provider) bad_request("unknown provider " + provider_id, "/provider");
    require_allowed_return_url(tx, who.tenant_id(), fields.return_url);
    require_authorize_url(*provider);
    if (store::get_connection(tx, who.tenant_id(), id)) {
      throw api_error(errc::conflict, "connection " + id + " already exists");
    }
    store::reauth_link_record l;
    l.tenant_id = who.tenant_id();
    l.kind = "connect";
    l.connection_id = id;
    l.provider_id = provider_id;
    l.reason = "new_connection";
    l.return_url = fields.return_url;
    l.request_id = req.request_id;
    return mint_link(ctx, tx, l, fields.expires_in);
  });
  log_created(ctx, out.link, req);
  co_return json_reply(201, link_created_view(out.link, out.url));
}

asio::awaitable<http::response> list_reauth_links(context& ctx, http::request& req) {
  auto who = co_await authenticate(ctx, req);
  require_read_or_write(who);
  const auto id = path_id(req, "connection");
  const int limit = static_cast<int>(int_param(req.query_param("limit"), "limit", 1, 500, 50));
  auto links = co_await in_tx(
      ctx, req, [&](pqxx::work& tx) -> std::optional<std::vector<store::reauth_link_record>> {
        auto rows = store::list_links(tx, who.tenant_id(), id, limit);
        if (rows.empty() && !store::get_connection(tx, who.tenant_id(), id)) return std::nullopt;
        return rows;
      });
  if (!links) throw api_error(errc::not_found, "no such connection");
  json items = json::array();
  for (const auto& l : *links) items.push_back(link_view(l));
  co_return json_reply(200, {{"items", items}});
}

asio::awaitable<http::response> get_settings(context& ctx, http::request& req) {
  auto who = co_await authenticate(ctx, req);
  require_read_or_write(who);
  auto origins = co_await in_tx(
      ctx, req, [&](pqxx::work& tx) { return store::get_return_url_origins(tx, who.tenant_id()); });
  co_return json_reply(200, {{"return_url_origins", origins}});
}

asio::awaitable<http::response> put_settings(context& ctx, http::request& req) {
  auto who = co_await authenticate(ctx, req);
  require_scope(who, "connections:write");
  auto body = body_reader::parse(req.body);
  auto origins = body.string_array("return_url_origins", kMaxReturnOrigins, 2048);
  body.finish();
  if (!origins) bad_request("return_url_origins is required", "/return_url_origins");
  std::vector<std::string> kept;
  std::set<std::string> seen;
  for (std::size_t i = 0; i < origins->size(); ++i) {
    const auto& o = (*origins)[i];
    check_origin(o, ctx.cfg.allow_insecure_provider_urls,
                 "/return_url_origins/" + std::to_string(i));
    if (seen.insert(url_origin(o)).second) kept.push_back(o);
  }
  co_await in_tx(ctx, req,
                 [&](pqxx::work& tx) { store::put_return_url_origins(tx, who.tenant_id(), kept); });
  co_return json_reply(200, {{"return_url_origins", kept}});
}

}  // namespace

void register_reauth(http::router& r, context& ctx) {
  r.add("POST", "/v1/connections/{connection}/reauth-links", with_context(ctx, create_reauth_link));
  r.add("GET", "/v1/connections/{connection}/reauth-links", with_context(ctx, list_reauth_links));
  r.add("POST", "/v1/connect-links", with_context(ctx, create_connect_link));
  r.add("GET", "/v1/settings", with_context(ctx, get_settings));
  r.add("PUT", "/v1/settings", with_context(ctx, put_settings));
}

}  // namespace tokend::api
