// SQL of GET /v1/stats and of the reader audit (GET /v1/connections/{c}/readers).
#pragma once
#include <optional>
#include <pqxx/pqxx>
#include <string>
#include <vector>

#include "core/time.hpp"

namespace tokend::store {

struct refresh_counts {
  long long ok = 0;  // `refreshed` events
  long long transient = 0, invalid_grant = 0, config_error = 0, provider_error = 0;
};

struct tenant_stats {
  long long active = 0, needs_reauth = 0;
  refresh_counts last_hour, last_day;
  long long links_created = 0, links_completed = 0;  // in the last 24 hours
  long long refresh_tokens_expiring_within_7d = 0;
};

// Everything from PostgreSQL, so every instance answers the same.
tenant_stats get_tenant_stats(pqxx::transaction_base& tx, const std::string& tenant);

// One (API key, connection) pair's reads since the last flush.
struct reader_reads {
  std::string tenant_id, connection_id, key_id;
  long long reads = 0;
  sys_time first_read_at, last_read_at;
};
// Adds the batch to connection_readers; reads of a connection deleted meanwhile are dropped.
void merge_readers(pqxx::transaction_base& tx, const std::vector<reader_reads>& batch);

struct reader_record {
  std::string key_id;
  std::optional<std::string> key_name;  // null when the key was deleted
  long long reads = 0;
  sys_time first_read_at, last_read_at;
};
// The connection's readers, most recent first; nullopt when the tenant has no such connection.
std::optional<std::vector<reader_record>> list_readers(pqxx::transaction_base& tx,
                                                       const std::string& tenant,
                                                       const std::string& connection_id);

}  // namespace tokend::store
