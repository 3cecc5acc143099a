// What every API handler may use: settings, the short-query pool, keyring, clock, key-usage
// tracker, the refresh engine, the caches and the metrics.
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

namespace tokend::refresh {
class engine;
}
namespace tokend::cache {
class caches;
}
namespace tokend::observability {
class metrics;
}

namespace tokend::api {

class key_usage;
class reader_audit;

struct settings {
  std::string admin_token;
  std::string environment;
  std::string instance_id;
  bool allow_insecure_provider_urls = false;
  bool reader_audit = true;  // note which key read which token (GET .../readers)
  std::string public_url;    // base of reauth links (no trailing slash)
  std::chrono::seconds keepalive_margin{604800};  // for the due rule stamped by imports
};

struct context {
  const settings& cfg;
  store::db_pool& db;  // short queries
  const crypto::keyring& keys;
  key_usage& usage;
  const wall_clock& clock;
  refresh::engine& engine;
  cache::caches& caches;
  observability::metrics& metrics;
  reader_audit& readers;
};

}  // namespace tokend::api
