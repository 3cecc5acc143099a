#include "api/auth.hpp"

#include <algorithm>
#include <pqxx/pqxx>

#include <boost/asio/steady_timer.hpp>
#include <boost/asio/this_coro.hpp>
#include <boost/asio/use_awaitable.hpp>

#include "cache/caches.hpp"
#include "core/errors.hpp"
#include "crypto/crypto.hpp"
#include "observability/log.hpp"
#include "store/db_pool.hpp"
#include "store/repository.hpp"

namespace asio = boost::asio;

namespace tokend::api {
namespace {

api_error unauthorized(std::string detail) {
  return api_error(errc::unauthorized, std::move(detail));
}

}  // namespace

std::string new_api_key_secret() { return "tkd_" + crypto::base64url(crypto::random_bytes(32)); }

asio::awaitable<principal> authenticate(context& ctx, const http::request& req) {
  auto h = req.header("Authorization");
  if (!h) throw unauthorized("missing bearer token");
  std::string_view v = *h;
  if (v.size() < 7 || strncasecmp(v.data(), "Bearer ", 7) != 0) {
    throw unauthorized("the Authorization header must be 'Bearer <key>'");
  }
  std::string_view token = v.substr(7);
  token.remove_prefix(std::min(token.size(), token.find_first_not_of(' ')));
  if (token.empty() || token.size() > 512) throw unauthorized("invalid bearer token");

  if (!ctx.cfg.admin_token.empty() && crypto::equal_ct(token, ctx.cfg.admin_token)) {
    co_return principal{true, nullptr};
  }
  const auto hash = crypto::sha256(token);
  const auto cache_key = cache::caches::principal_key(crypto::hex(hash));
  if (auto p = ctx.caches.get_principal(cache_key)) {
    const auto now = ctx.clock.now();
    if (p->expires_at && *p->expires_at <= now) throw unauthorized("this API key has expired");
    ctx.usage.note(p->tenant_id, p->key_id, now);
    co_return principal{false, std::move(p)};
  }
  const auto ticket = ctx.caches.state().begin(cache_key);
  auto key = co_await ctx.db.run(req.deadline, [&](pqxx::connection_base& c) {
    pqxx::read_transaction tx(c);
    return store::find_api_key_by_hash(tx, hash);
  });
  const auto now = ctx.clock.now();
  if (!key || !crypto::equal_ct(key->key_hash, hash)) throw unauthorized("invalid bearer token");
  if (key->revoked_at) throw unauthorized("this API key has been revoked");
  if (key->expires_at && *key->expires_at <= now) throw unauthorized("this API key has expired");
  if (auto delay = ctx.caches.options().test_insert_delay; delay.count() > 0) {
    asio::steady_timer t(co_await asio::this_coro::executor, delay);
    co_await t.async_wait(asio::use_awaitable);
  }
  auto entry = std::make_shared<const cache::cached_principal>(
      cache::cached_principal{key->tenant_id, key->id, key->scopes, key->expires_at});
  ctx.caches.put_principal(cache_key, ticket, entry);
  ctx.usage.note(key->tenant_id, key->id, now);
  co_return principal{false, std::move(entry)};
}

const std::string& principal::tenant_id() const {
  static const std::string none;
  return key ? key->tenant_id : none;
}

void require_admin(const principal& p) {
  if (!p.admin) throw api_error(errc::forbidden, "this endpoint needs the admin token");
}

void require_scope(const principal& p, std::string_view scope) {
  if (p.admin) {
    throw api_error(errc::forbidden,
                    "the admin token manages tenants and keys only; use a tenant API key");
  }
  const auto& scopes = p.key->scopes;
  if (std::find(scopes.begin(), scopes.end(), scope) == scopes.end()) {
    throw api_error(errc::forbidden, "this API key lacks the scope " + std::string(scope));
  }
}

void key_usage::note(const std::string& tenant, const std::string& key_id, sys_time at) {
  std::lock_guard lk(mu_);
  auto it = pending_.find(std::string_view(key_id));
  if (it == pending_.end()) {
    pending_.emplace(key_id, use{tenant, at});
  } else if (it->second.at < at) {
    it->second.at = at;
  }
}

asio::awaitable<void> key_usage::flush(context& ctx) {
  std::vector<store::key_use> batch;
  {
    std::lock_guard lk(mu_);
    for (auto& [id, u] : pending_) batch.push_back({u.tenant, id, u.at});
    pending_.clear();
  }
  if (batch.empty()) co_return;
  try {
    co_await ctx.db.run(
        store::clock::now() + std::chrono::seconds(30),
        [&](pqxx::connection_base& c) {
          pqxx::work tx(c);
          store::record_key_uses(tx, batch);
          tx.commit();
        },
        store::origin::background);
  } catch (const std::exception& e) {
    log::write(log::level::warn, "could not record API key use", {{"error", e.what()}});
    std::lock_guard lk(mu_);
    for (auto& u : batch) {
      auto [it, inserted] = pending_.emplace(u.id, use{u.tenant_id, u.at});
      if (!inserted && it->second.at < u.at) it->second.at = u.at;
    }
  }
}

}  // namespace tokend::api
