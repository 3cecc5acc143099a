// Bearer authentication and authorization: the admin token, or a tenant API key (stored only as
// a SHA-256 hash) with scopes. The tenant always comes from the key.
#pragma once
#include <boost/asio/awaitable.hpp>
#include <memory>
#include <mutex>
#include <string>
#include <unordered_map>
#include <vector>

#include "api/context.hpp"
#include "cache/caches.hpp"
#include "http/message.hpp"

namespace tokend::api {

struct principal {
  bool admin = false;
  std::shared_ptr<const cache::cached_principal> key;  // the API key; null for the admin

  const std::string& tenant_id() const;  // empty for the admin
};

// Resolves the Authorization header. Missing, malformed, unknown, revoked or expired -> 401.
boost::asio::awaitable<principal> authenticate(context& ctx, const http::request& req);
// 403 unless the admin token was used.
void require_admin(const principal& p);
// 403 for the admin token, or for a key without `scope`.
void require_scope(const principal& p, std::string_view scope);

// Remembers when each key was last used, in memory; flush() writes the batch (background work,
// at most once a minute, never on the request path). Thread-safe.
class key_usage {
 public:
  void note(const std::string& tenant, const std::string& key_id, sys_time at);
  boost::asio::awaitable<void> flush(context& ctx);

 private:
  struct string_hash {
    using is_transparent = void;
    std::size_t operator()(std::string_view s) const { return std::hash<std::string_view>{}(s); }
  };
  struct use {
    std::string tenant;
    sys_time at;
  };
  std::mutex mu_;  // guards pending_
  // By key id (unique across tenants); looked up without building a string on the hot path.
  std::unordered_map<std::string, use, string_hash, std::equal_to<>> pending_;
};

// "tkd_" + base64url(32 random bytes): 256 bits of entropy.
std::string new_api_key_secret();

}  // namespace tokend::api
