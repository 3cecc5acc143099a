// The tenant's webhook: PUT/GET/DELETE, secret rotation, the delivery list and manual retry of
// a failed (dead-letter) delivery. Deliveries themselves are webhooks/worker's.
#include <boost/asio/awaitable.hpp>
#include <boost/asio/ip/address.hpp>
#include <boost/url/parse.hpp>
#include <set>

#include "api/auth.hpp"
#include "api/handlers.hpp"
#include "api/tx.hpp"
#include "api/views.hpp"
#include "core/provider_defaults.hpp"
#include "core/validate.hpp"
#include "crypto/token_seal.hpp"
#include "http/router.hpp"
#include "oauth/http_client.hpp"
#include "store/webhook_store.hpp"
#include "webhooks/policy.hpp"

namespace asio = boost::asio;
using json = nlohmann::json;

namespace tokend::api {
namespace {

constexpr auto kRotationOverlap = std::chrono::hours(24);

// The outbound address rule at PUT: https, and a literal address must be public. A host name
// is checked when the worker connects (its addresses may change).
void check_webhook_url(const std::string& url, bool insecure) {
  if (auto why = check_provider_url(url, insecure)) bad_request("url " + *why, "/url");
  if (insecure) return;
  auto u = boost::urls::parse_absolute_uri(url);
  std::string host(u->host_address());
  if (!host.empty() && host.front() == '[') host = host.substr(1, host.size() - 2);
  boost::system::error_code ec;
  const auto addr = boost::asio::ip::make_address(host, ec);
  if (!ec && !oauth::is_public_address(addr)) {
    bad_request("url must not point to a private, loopback or reserved address", "/url");
  }
}

json webhook_view(const store::webhook_record& w) {
  json events = w.events ? json(*w.events) : json(webhooks::event_types());
  json v = {{"url", w.url},
            {"events", events},
            {"created_at", format_rfc3339(w.created_at)},
            {"updated_at", format_rfc3339(w.updated_at)},
            {"previous_secret_expires_at", nullptr}};
  if (w.previous_until && w.previous_secret_ct &&
      *w.previous_until > std::chrono::system_clock::now()) {
    v["previous_secret_expires_at"] = format_rfc3339(*w.previous_until);
  }
  return v;
}

json delivery_view(const store::delivery_record& d) {
  return {{"id", d.id},
          {"event_id", d.event_id},
          {"type", d.type},
          {"connection", d.connection_id},
          {"status", d.status},
          {"attempts", d.attempts},
          {"last_status", d.last_status ? json(*d.last_status) : json(nullptr)},
          {"last_error", d.last_error ? json(*d.last_error) : json(nullptr)},
          {"next_attempt_at", opt_time(d.next_attempt_at)},
          {"created_at", format_rfc3339(d.created_at)},
          {"delivered_at", opt_time(d.delivered_at)}};
}

asio::awaitable<http::response> put_webhook(context& ctx, http::request& req) {
  auto who = co_await authenticate(ctx, req);
  require_scope(who, "connections:write");
  auto body = body_reader::parse(req.body);
  const auto url = *body.string("url", 2048, true);
  check_webhook_url(url, ctx.cfg.allow_insecure_provider_urls);
  std::optional<std::vector<std::string>> events;
  if (auto list = body.string_array("events", 16, 64)) {
    if (list->empty())
      bad_request("events must name at least one type (omit it for all)", "/events");
    std::set<std::string> seen;
    std::vector<std::string> ordered;
    for (std::size_t i = 0; i < list->size(); ++i) {
      if (!webhooks::is_event_type((*list)[i])) {
        bad_request(
            "events items must be one of connection.reauth_required, "
            "connection.reconnected, connection.refresh_failed, "
            "connection.refresh_token_expiring",
            "/events/" + std::to_string(i));
      }
      if (seen.insert((*list)[i]).second) ordered.push_back((*list)[i]);
    }
    events = std::move(ordered);
  }
  body.finish();

  std::optional<std::string> new_secret;
  auto stored = co_await in_tx(ctx, req, [&](pqxx::work& tx) {
    store::lock_webhook_slot(tx, who.tenant_id());
    auto existing = store::get_webhook(tx, who.tenant_id(), true);
    store::webhook_record w;
    if (existing) {
      w = *existing;  // the secret (and a rotation's overlap) is kept
    } else {
      w.tenant_id = who.tenant_id();
      w.row_id = store::next_webhook_row_id(tx);
      w.secret_version = 1;
      new_secret = webhooks::new_secret();
      w.key_id = ctx.keys.active_kid();
      w.secret_ct = crypto::seal_webhook_secret(ctx.keys, w.tenant_id, w.row_id, w.secret_version,
                                                "secret", *new_secret);
    }
    w.url = url;
    w.events = events;
    return store::upsert_webhook(tx, w);
  });
  auto v = webhook_view(stored);
  if (new_secret) v["secret"] = *new_secret;
  co_return json_reply(200, v);
}

asio::awaitable<http::response> get_webhook(context& ctx, http::request& req) {
  auto who = co_await authenticate(ctx, req);
  require_scope(who, "connections:read");
  auto w = co_await in_tx(ctx, req,
                          [&](pqxx::work& tx) { return store::get_webhook(tx, who.tenant_id()); });
  if (!w) throw api_error(errc::not_found, "no webhook is configured");
  co_return json_reply(200, webhook_view(*w));
}

asio::awaitable<http::response> delete_webhook(context& ctx, http::request& req) {
  auto who = co_await authenticate(ctx, req);
  require_scope(who, "connections:write");
  const bool found = co_await in_tx(
      ctx, req, [&](pqxx::work& tx) { return store::delete_webhook(tx, who.tenant_id()); });
  if (!found) throw api_error(errc::not_found, "no webhook is configured");
  http::response res;
  res.status = 204;
  co_return res;
}

asio::awaitable<http::response> rotate_secret(context& ctx, http::request& req) {
  auto who = co_await authenticate(ctx, req);
  require_scope(who, "connections:write");
  const auto secret = webhooks::new_secret();
  const bool found = co_await in_tx(ctx, req, [&](pqxx::work& tx) {
    auto w = store::get_webhook(tx, who.tenant_id(), true);
    if (!w) return false;
    // The current secret signs alongside the new one for 24 h; one that cannot be opened (its
    // master key is gone) has signed nothing since, and is dropped.
    auto current = crypto::open_webhook_secret(ctx.keys, w->tenant_id, w->row_id, w->secret_version,
                                               w->key_id, "secret", w->secret_ct);
    ++w->secret_version;
    w->key_id = ctx.keys.active_kid();
    w->secret_ct = crypto::seal_webhook_secret(ctx.keys, w->tenant_id, w->row_id, w->secret_version,
                                               "secret", secret);
    w->previous_secret_ct.reset();
    w->previous_until.reset();
    if (current) {
      w->previous_secret_ct = crypto::seal_webhook_secret(
          ctx.keys, w->tenant_id, w->row_id, w->secret_version, "previous_secret", *current);
      w->previous_until = std::chrono::time_point_cast<std::chrono::microseconds>(ctx.clock.now() +
                                                                                  kRotationOverlap);
    }
    store::upsert_webhook(tx, *w);
    return true;
  });
  if (!found) throw api_error(errc::not_found, "no webhook is configured");
  co_return json_reply(200, {{"secret", secret}});
}

asio::awaitable<http::response> list_deliveries(context& ctx, http::request& req) {
  auto who = co_await authenticate(ctx, req);
  require_scope(who, "connections:read");
  const int limit = static_cast<int>(int_param(req.query_param("limit"), "limit", 1, 500, 50));
  std::optional<std::string> status;
  if (auto s = req.query_param("status")) {
    if (*s != "pending" && *s != "delivered" && *s != "failed" && *s != "cancelled") {
      bad_request("status must be pending, delivered, failed or cancelled", "status");
    }
    status = std::string(*s);
  }
  auto rows = co_await in_tx(ctx, req, [&](pqxx::work& tx) {
    return store::list_deliveries(tx, who.tenant_id(), status, limit);
  });
  json items = json::array();
  for (const auto& d : rows) items.push_back(delivery_view(d));
  co_return json_reply(200, {{"items", items}});
}

asio::awaitable<http::response> retry_delivery(context& ctx, http::request& req) {
  auto who = co_await authenticate(ctx, req);
  require_scope(who, "connections:write");
  const auto& id = path_id(req, "delivery");
  const auto r = co_await in_tx(
      ctx, req, [&](pqxx::work& tx) { return store::retry_delivery(tx, who.tenant_id(), id); });
  if (r == store::retry_result::not_found) throw api_error(errc::not_found, "no such delivery");
  if (r == store::retry_result::not_failed) {
    throw api_error(errc::conflict, "only a failed delivery can be retried");
  }
  if (r == store::retry_result::no_webhook) {
    throw api_error(errc::conflict, "no webhook is configured to retry the delivery to");
  }
  co_return json_reply(202, {{"id", id}, {"status", "pending"}});
}

}  // namespace

void register_webhooks(http::router& r, context& ctx) {
  r.add("PUT", "/v1/webhook", with_context(ctx, put_webhook));
  r.add("GET", "/v1/webhook", with_context(ctx, get_webhook));
  r.add("DELETE", "/v1/webhook", with_context(ctx, delete_webhook));
  r.add("POST", "/v1/webhook/rotate-secret", with_context(ctx, rotate_secret));
  r.add("GET", "/v1/webhook/deliveries", with_context(ctx, list_deliveries));
  r.add("POST", "/v1/webhook/deliveries/{delivery}/retry", with_context(ctx, retry_delivery));
}

}  // namespace tokend::api
