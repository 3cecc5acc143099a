// All of tokend's SQL. Blocking functions taking an open transaction; run them on a DB thread
// (db_pool::run / lease::run). Every query is scoped by tenant. Failures throw pqxx exceptions;
// "not found" and "lost the compare-and-swap" are return values.
#pragma once
#include <optional>
#include <string>
#include <vector>

#include "core/flight_policy.hpp"
#include "core/model.hpp"

namespace pqxx {
class transaction_base;
}

namespace tokend::store {

using tx_t = pqxx::transaction_base;

// Tenants.
std::optional<tenant_record> insert_tenant(tx_t& tx, const std::string& id,
                                           const std::string& name);  // nullopt: exists
bool tenant_exists(tx_t& tx, const std::string& id);

// API keys.
api_key_record insert_api_key(tx_t& tx, const api_key_record& k);
std::vector<api_key_record> list_api_keys(tx_t& tx, const std::string& tenant);
// Sets revoked_at (kept when already revoked); returns the key's hash, nullopt when the key
// does not exist.
std::optional<std::string> revoke_api_key(tx_t& tx, const std::string& tenant,
                                          const std::string& id);
std::optional<api_key_record> find_api_key_by_hash(tx_t& tx, const std::string& key_hash);
struct key_use {
  std::string tenant_id, id;
  sys_time at;
};
void record_key_uses(tx_t& tx, const std::vector<key_use>& uses);

// Providers.
std::optional<provider_record> get_provider(tx_t& tx, const std::string& tenant,
                                            const std::string& id, bool for_update = false);
std::vector<provider_record> list_providers(tx_t& tx, const std::string& tenant);
// The provider of connection (tenant, connection_id); nullopt when the connection does not exist.
std::optional<provider_record> get_provider_of_connection(tx_t& tx, const std::string& tenant,
                                                          const std::string& connection_id);
long long next_provider_row_id(tx_t& tx);
// Inserts or replaces (by tenant, id) with all fields of `p`; returns the stored record.
provider_record upsert_provider(tx_t& tx, const provider_record& p);
void set_provider_cooldown(tx_t& tx, const std::string& tenant, const std::string& id,
                           sys_time until);

// Connections.
std::optional<connection_record> get_connection(tx_t& tx, const std::string& tenant,
                                                const std::string& id, bool for_update = false);
struct connection_filter {
  std::optional<std::string> status, provider, after_id;
  int limit = 100;
};
std::vector<connection_record> list_connections(tx_t& tx, const std::string& tenant,
                                                const connection_filter& f);
long long next_connection_row_id(tx_t& tx);
// Inserts a new connection (status active, version 1) exactly as given.
connection_record insert_connection(tx_t& tx, const connection_record& c);
// Replaces an imported connection's token set and metadata: version := c.token_version, status
// active, circuit closed, errors cleared. Only when the stored version is `expected_version`.
std::optional<connection_record> replace_connection(tx_t& tx, const connection_record& c,
                                                    long long expected_version);
bool delete_connection(tx_t& tx, const std::string& tenant, const std::string& id);
// The reauthorization write: c's token set at c.token_version (the stored version + 1), status
// active, circuit closed, counters, errors and reauth cleared, c.token_origin bound. Only while
// the row is still `c.row_id` at `expected_version`.
std::optional<connection_record> reauthorize_connection(tx_t& tx, const connection_record& c,
                                                        long long expected_version);

// The refresh engine's write: stores a new sealed token set at expected_version + 1 only if
// the stored version still equals expected_version (compare-and-swap). Returns the new record,
// or nullopt when another writer got there first.
struct token_write {
  sealed_tokens sealed;
  std::string token_type;
  std::optional<std::string> scope;
  sys_time access_expires_at;
  long long access_lifetime;
  std::optional<sys_time> refresh_expires_at;
  sys_time refreshed_at;
  std::optional<sys_time> next_refresh_at;  // the due rule's stamp for the new token set
  std::optional<long long> refresh_lifetime;
  bool refresh_token_expiring = false;
  // The answer had no usable access token: consecutive_failures goes on counting (for the
  // back-off) instead of being reset.
  bool failed = false;
};
// The swap also requires the row identity (not deleted and re-created) and status `active`.
std::optional<connection_record> cas_write_token_set(tx_t& tx, const std::string& tenant,
                                                     const std::string& id,
                                                     long long expected_row_id,
                                                     long long expected_version,
                                                     const token_write& w);

// Key rotation: re-seal without bumping the version, only while (version, key id) is unchanged.
bool cas_reseal_connection(tx_t& tx, const connection_record& c, const sealed_tokens& s);
bool cas_reseal_provider(tx_t& tx, const provider_record& p, const std::string& new_kid,
                         const std::string& new_ct);
// Rows not sealed under `active_kid`, locked FOR UPDATE SKIP LOCKED, excluding `skip` row ids.
std::vector<connection_record> lock_connections_to_rotate(tx_t& tx, const std::string& active_kid,
                                                          const std::vector<long long>& skip,
                                                          int limit);
std::vector<provider_record> lock_providers_to_rotate(tx_t& tx, const std::string& active_kid,
                                                      const std::vector<long long>& skip,
                                                      int limit);
long long count_connections_to_rotate(tx_t& tx, const std::string& active_kid,
                                      const std::vector<long long>& skip);
struct rotation_counts {
  long long connections = 0, providers = 0;
};
rotation_counts count_not_under(tx_t& tx, const std::string& active_kid);

// Refresh bookkeeping on the connection row.
// Only while the row is still (row_id, version) and active; false when it changed. The change
// writes connection.reauth_required to the webhook outbox (store/webhook_store).
bool mark_needs_reauth(tx_t& tx, const std::string& tenant, const std::string& id,
                       long long expected_row_id, long long expected_version,
                       const std::string& reason, const std::string& last_error_json);
// consecutive_failures + 1, last_error, when the next provider call may be made and when the
// scheduler tries next (ignored unless active with a refresh token); clears a claim. Counts the
// failure into its episode (a successful refresh, a reauthorization or a re-import ends one):
// the first failure after the episode has lasted the provider's refresh_ahead, or after the
// access token expired, writes connection.refresh_failed to the outbox and returns true.
bool record_refresh_failure(tx_t& tx, const std::string& tenant, const std::string& id,
                            const std::string& last_error_json,
                            const std::optional<sys_time>& next_attempt_at,
                            sys_time next_refresh_at);

// The scheduler. Every write of a connection clears its claim; these are the scheduler's own.
// A new next_refresh_at without any other change (a claimed row not due under the current
// provider settings), clearing the claim.
void restamp_connection(tx_t& tx, long long row_id, const std::optional<sys_time>& next_refresh_at);
struct due_claim {
  std::string tenant_id, id;
  long long row_id = 0;
  std::string provider_id;
  long long token_version = 0;
  sys_time due_at;  // next_refresh_at when claimed
};
// Claims up to `limit` due active rows, unclaimed or with an expired lease, whose provider is
// not on cool-down, oldest due first, with FOR UPDATE SKIP LOCKED; commits a lease of
// `lease_s`.
std::vector<due_claim> claim_due(tx_t& tx, const std::string& instance, int limit,
                                 long long lease_s);
// Releases this instance's claims on `row_ids`: due again `delay_ms` from now.
void release_claims(tx_t& tx, const std::string& instance, const std::vector<long long>& row_ids,
                    long long delay_ms);
// Due rows nobody holds a live claim on, counted up to `cap`.
long long count_due_unclaimed(tx_t& tx, long long cap);
void set_last_forced_refresh(tx_t& tx, const std::string& tenant, const std::string& id,
                             sys_time at);

// Attempt markers, the fence (see migrations/0003 and 0004). At most one is open per
// (connection, token_version); its expiry is on the database clock.
// The open marker at (connection, version), if any, with whether it has expired.
std::optional<policy::open_marker> find_open_attempt(tx_t& tx, long long connection_row_id,
                                                     long long token_version);
// Sets an expired open marker at (connection, version) in_doubt and opens a new one (attempt 1)
// expiring `window_s` from now. Throws pqxx::unique_violation when another one is open.
long long open_attempt(tx_t& tx, const std::string& tenant, long long connection_row_id,
                       long long token_version, const std::string& instance,
                       const std::string& request_id, long long window_s);
// attempt + 1 and a fresh expiry, only while the marker is still open; false otherwise.
bool renew_attempt(tx_t& tx, long long attempt_id, int attempt, long long window_s);
void close_attempt(tx_t& tx, long long attempt_id, const std::string& state);
// True when the marker is no longer open, or has expired.
bool attempt_settled(tx_t& tx, long long attempt_id);
// True when an attempt other than `except_id` at this version was left open or in doubt.
bool has_unresolved_attempt(tx_t& tx, long long connection_row_id, long long token_version,
                            long long except_id);

// Events.
event_record append_event(tx_t& tx, const event_record& e);
std::vector<event_record> list_events(tx_t& tx, const std::string& tenant, long long row_id,
                                      int limit);

}  // namespace tokend::store
