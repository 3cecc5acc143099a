// What every API handler may use: settings, pools, keyring, metrics, clock, key-usage tracker.
// Owned by serve(); handlers hold references that outlive the router.
#pragma once
#include <chrono>
#include <string>

#include "core/time.hpp"

namespace tokend::store {
class db_pool;
}
namespace tokend::crypto {
class keyring;
}
namespace tokend::observability {
class metrics;
}

namespace tokend::refresh {
class engine;
}
namespace tokend::cache {
class caches;
}

namespace tokend::api {

class key_usage;

struct settings {
  std::string admin_token;
  std::string public_url;
  std::string environment;
  std::string instance_id;
  bool allow_insecure_provider_urls = false;
  std::chrono::seconds request_timeout{15};
  std::chrono::seconds force_refresh_min_interval{10};
};

struct context {
  const settings& cfg;
  store::db_pool& db;          // short queries
  store::db_pool& refresh_db;  // transactions held across a provider call
  const crypto::keyring& keys;
  observability::metrics& metrics;
  key_usage& usage;
  const wall_clock& clock;
  refresh::engine& engine;
  cache::caches& caches;
};

}  // namespace tokend::api
