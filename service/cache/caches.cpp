#include "cache/caches.hpp"

#include <prometheus/counter.h>
#include <prometheus/gauge.h>

#include <functional>
#include <nlohmann/json.hpp>

#include "core/model.hpp"
#include "observability/metrics.hpp"

namespace tokend::cache {

std::size_t coherence::stripe_of(std::string_view key) {
  return std::hash<std::string_view>{}(key) % kStripes;
}

namespace {
long long steady_ns(std::chrono::steady_clock::time_point t) {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(t.time_since_epoch()).count();
}
}  // namespace

void coherence::trust_until(std::chrono::steady_clock::time_point t) {
  const long long ns = steady_ns(t);
  auto cur = trusted_until_ns_.load();
  // The first call replaces the "no limit" default; later ones only move forward.
  while ((cur == std::numeric_limits<long long>::max() || cur < ns) &&
         !trusted_until_ns_.compare_exchange_weak(cur, ns)) {
  }
}

bool coherence::up() const {
  return up_.load() && steady_ns(std::chrono::steady_clock::now()) < trusted_until_ns_.load();
}

coherence::ticket coherence::begin(std::string_view key) const {
  const auto s = stripe_of(key);
  // Order: read `up` and the epoch before the stripe, so a reset racing with us is seen.
  const bool up = this->up();
  const auto epoch = epoch_.load();
  return {epoch, stripes_[s].load(), s, up};
}

bool coherence::still_valid(const ticket& t) const {
  return t.valid && up() && epoch_.load() == t.epoch &&
         stripes_[t.stripe].load() == t.stripe_generation;
}

void coherence::touch(std::string_view key) { stripes_[stripe_of(key)].fetch_add(1); }

void coherence::bump_epoch() { epoch_.fetch_add(1); }

caches::caches(cache_options opts, observability::metrics* m)
    : opts_(opts), tokens_(opts.token_capacity), principals_(opts.principal_capacity) {
  if (m) {
    hits_ = &m->cache_event("hit");
    misses_ = &m->cache_event("miss");
    evictions_ = &m->cache_event("eviction");
    invalidations_ = &m->cache_event("invalidation");
    skipped_ = &m->cache_event("insert_skipped");
    token_entries_ = &m->cache_entries("token");
    principal_entries_ = &m->cache_entries("principal");
  }
}

std::shared_ptr<const cached_token> render_token(const connection_record& c,
                                                 std::string_view access_token) {
  auto t = std::make_shared<cached_token>();
  t->token_version = c.token_version;
  t->expires_at = c.access_expires_at;
  t->lifetime = c.access_lifetime;
  // Invalid UTF-8 (a provider's odd token or scope) is replaced, not thrown on: this runs after
  // the token set was committed, and must not turn every later GET into a 500.
  auto str = [](std::string_view v) {
    return nlohmann::json(v).dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
  };
  t->json_head = "{\"connection\":" + str(c.id) + ",\"access_token\":" + str(access_token) +
                 ",\"token_type\":" + str(c.token_type) + ",\"expires_at\":\"" +
                 format_rfc3339(c.access_expires_at) + "\",\"expires_in\":";
  t->json_tail = ",\"scope\":" + (c.scope ? str(*c.scope) : std::string("null")) +
                 ",\"token_version\":" + std::to_string(c.token_version);
  return t;
}

std::string caches::token_key(std::string_view tenant, std::string_view connection) {
  // Ids cannot contain a space, so the key is unambiguous.
  std::string key;
  key.reserve(3 + tenant.size() + connection.size());
  key.append("t ").append(tenant).append(" ").append(connection);
  return key;
}

std::string caches::principal_key(std::string_view key_hash) {
  std::string key;
  key.reserve(2 + key_hash.size());
  key.append("k ").append(key_hash);
  return key;
}

template <class V>
std::shared_ptr<const V> caches::lookup(lru<std::shared_ptr<const V>>& map,
                                        const std::string& key) {
  if (!opts_.enabled || !state_.up()) return nullptr;
  auto v = map.get(key);
  if (v && hits_) hits_->Increment();
  if (!v && misses_) misses_->Increment();
  return v ? std::move(*v) : nullptr;
}

template <class V>
void caches::insert(lru<std::shared_ptr<const V>>& map, prometheus::Gauge* entries,
                    const std::string& key, const coherence::ticket& t,
                    std::shared_ptr<const V> v) {
  if (!opts_.enabled) return;
  if (!state_.still_valid(t)) {
    if (skipped_) skipped_->Increment();
    return;
  }
  auto evicted = map.put(key, std::move(v));
  // A change may have landed between the check and the put: re-check and undo if so.
  if (!state_.still_valid(t)) map.erase(key);
  if (evictions_ && evicted) evictions_->Increment(static_cast<double>(evicted));
  if (entries) entries->Set(static_cast<double>(map.size()));
}

std::shared_ptr<const cached_token> caches::get_token(const std::string& key) {
  return lookup(tokens_, key);
}

void caches::put_token(const std::string& key, const coherence::ticket& t,
                       std::shared_ptr<const cached_token> v) {
  insert(tokens_, token_entries_, key, t, std::move(v));
}

std::shared_ptr<const cached_principal> caches::get_principal(const std::string& key) {
  return lookup(principals_, key);
}

void caches::put_principal(const std::string& key, const coherence::ticket& t,
                           std::shared_ptr<const cached_principal> v) {
  insert(principals_, principal_entries_, key, t, std::move(v));
}

void caches::invalidate(const std::string& key) {
  state_.touch(key);
  if (key.rfind("t ", 0) == 0) {
    tokens_.erase(key);
  } else {
    principals_.erase(key);
  }
  if (invalidations_) invalidations_->Increment();
  if (token_entries_) token_entries_->Set(static_cast<double>(tokens_.size()));
  if (principal_entries_) principal_entries_->Set(static_cast<double>(principals_.size()));
}

void caches::flush() {
  state_.bump_epoch();
  tokens_.clear();
  principals_.clear();
  if (token_entries_) token_entries_->Set(0);
  if (principal_entries_) principal_entries_->Set(0);
}

}  // namespace tokend::cache
