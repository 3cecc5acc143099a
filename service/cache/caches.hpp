// The hot path's in-memory caches and the rules that keep them coherent across instances.
//
// A cache entry may be inserted only if, between the start of the database read that produced
// it and the insert, (1) the change listener was up the whole time, (2) the listener epoch did
// not move (it moves on every listener reconnect, when notifications may have been missed), and
// (3) no invalidation touched the entry's key (tracked per key stripe). Versions alone are not
// enough: a delete, a needs_reauth or a key revocation keeps or restarts the version.
// All members are thread-safe.
#pragma once
#include <array>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <limits>
#include <list>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <unordered_map>
#include <vector>

#include "core/time.hpp"

namespace prometheus {
class Counter;
class Gauge;
}  // namespace prometheus
namespace tokend::observability {
class metrics;
}
namespace tokend {
struct connection_record;
}

namespace tokend::cache {

// Shared state of the change listener as the caches see it.
class coherence {
 public:
  struct ticket {
    std::uint64_t epoch;
    std::uint64_t stripe_generation;
    std::size_t stripe;
    bool valid;  // the listener was up when the read started
  };
  ticket begin(std::string_view key) const;
  // True when an insert based on a read that began with `t` is still allowed.
  bool still_valid(const ticket& t) const;
  // A notification (or a local change) for `key`.
  void touch(std::string_view key);
  // Listener (re)connected or went down: every outstanding ticket becomes invalid.
  void bump_epoch();
  void set_up(bool up) { up_.store(up); }
  // The listener's heartbeat vouches that no change is missed until `t` (steady clock); past
  // it the caches are bypassed until the next heartbeat. Only moves forward. Without a call
  // (no heartbeat) there is no such limit.
  void trust_until(std::chrono::steady_clock::time_point t);
  // Listener up and its heartbeat on time: entries may be served and inserted.
  bool up() const;

 private:
  static constexpr std::size_t kStripes = 4096;
  static std::size_t stripe_of(std::string_view key);
  std::atomic<std::uint64_t> epoch_{0};
  std::atomic<bool> up_{false};
  std::atomic<long long> trusted_until_ns_{std::numeric_limits<long long>::max()};
  std::array<std::atomic<std::uint64_t>, kStripes> stripes_{};
};

// A bounded LRU map from string keys to V.
template <class V>
class lru {
 public:
  explicit lru(std::size_t capacity) : capacity_(capacity) {}
  std::optional<V> get(const std::string& key) {
    std::lock_guard lk(mu_);
    auto it = index_.find(key);
    if (it == index_.end()) return std::nullopt;
    order_.splice(order_.begin(), order_, it->second);
    return it->second->second;
  }
  // Returns how many entries were evicted to make room.
  std::size_t put(const std::string& key, V value) {
    std::lock_guard lk(mu_);
    if (capacity_ == 0) return 0;
    auto it = index_.find(key);
    if (it != index_.end()) {
      it->second->second = std::move(value);
      order_.splice(order_.begin(), order_, it->second);
      return 0;
    }
    order_.emplace_front(key, std::move(value));
    index_.emplace(key, order_.begin());
    std::size_t evicted = 0;
    while (index_.size() > capacity_) {
      index_.erase(order_.back().first);
      order_.pop_back();
      ++evicted;
    }
    return evicted;
  }
  bool erase(const std::string& key) {
    std::lock_guard lk(mu_);
    auto it = index_.find(key);
    if (it == index_.end()) return false;
    order_.erase(it->second);
    index_.erase(it);
    return true;
  }
  void clear() {
    std::lock_guard lk(mu_);
    index_.clear();
    order_.clear();
  }
  std::size_t size() const {
    std::lock_guard lk(mu_);
    return index_.size();
  }

 private:
  std::size_t capacity_;
  mutable std::mutex mu_;  // guards order_ and index_
  std::list<std::pair<std::string, V>> order_;
  std::unordered_map<std::string, typename std::list<std::pair<std::string, V>>::iterator> index_;
};

// A token as GET /v1/tokens answers it; immutable and shared. The reply is rendered once, when
// the entry is built, so a cache hit costs one string build:
//   json_head + expires_in + [,"refresh_deferred":true] + json_tail + "}"
struct cached_token {
  long long token_version = 0;
  sys_time expires_at;
  long long lifetime = 0;
  std::string
      json_head;  // {"connection":..,"access_token":..,"token_type":..,"expires_at":..,"expires_in":
  std::string json_tail;  // ,"scope":..,"token_version":N
};

// Builds the entry for `c` with its opened access token.
std::shared_ptr<const cached_token> render_token(const connection_record& c,
                                                 std::string_view access_token);

struct cached_principal {
  std::string tenant_id;
  std::string key_id;
  std::vector<std::string> scopes;
  std::optional<sys_time> expires_at;
};

struct cache_options {
  bool enabled = true;
  std::size_t token_capacity = 100000;
  std::size_t principal_capacity = 10000;
  std::chrono::milliseconds test_insert_delay{0};  // test hook: widen the read-to-insert window
};

// The two caches plus their coherence state and metrics.
class caches {
 public:
  caches(cache_options opts, observability::metrics* m);

  static std::string token_key(std::string_view tenant, std::string_view connection);
  static std::string principal_key(std::string_view key_hash);

  const cache_options& options() const { return opts_; }
  coherence& state() { return state_; }

  // Entries are immutable and shared, so a hit copies a pointer, not the strings.
  std::shared_ptr<const cached_token> get_token(const std::string& key);
  void put_token(const std::string& key, const coherence::ticket& t,
                 std::shared_ptr<const cached_token> v);
  std::shared_ptr<const cached_principal> get_principal(const std::string& key);
  void put_principal(const std::string& key, const coherence::ticket& t,
                     std::shared_ptr<const cached_principal> v);

  // A change to `key` (local or notified): drop the entry, invalidate outstanding tickets.
  void invalidate(const std::string& key);
  // Listener reset: drop everything.
  void flush();

 private:
  template <class V>
  std::shared_ptr<const V> lookup(lru<std::shared_ptr<const V>>& map, const std::string& key);
  template <class V>
  void insert(lru<std::shared_ptr<const V>>& map, prometheus::Gauge* entries,
              const std::string& key, const coherence::ticket& t, std::shared_ptr<const V> v);

  cache_options opts_;
  coherence state_;
  lru<std::shared_ptr<const cached_token>> tokens_;
  lru<std::shared_ptr<const cached_principal>> principals_;
  prometheus::Counter* hits_ = nullptr;
  prometheus::Counter* misses_ = nullptr;
  prometheus::Counter* evictions_ = nullptr;
  prometheus::Counter* invalidations_ = nullptr;
  prometheus::Counter* skipped_ = nullptr;
  prometheus::Gauge* token_entries_ = nullptr;
  prometheus::Gauge* principal_entries_ = nullptr;
};

}  // namespace tokend::cache
