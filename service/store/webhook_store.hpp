// Webhooks and their outbox (migrations/0008). Blocking; run on a DB thread like repository.hpp.
#pragma once
#include <optional>
#include <string>
#include <vector>

#include "core/time.hpp"

namespace pqxx {
class transaction_base;
}

namespace tokend::store {

using tx_t = pqxx::transaction_base;

struct webhook_record {
  std::string tenant_id;
  long long row_id = 0;
  std::string url;
  std::optional<std::vector<std::string>> events;  // nullopt: every type
  std::string key_id;
  long long secret_version = 1;
  std::string secret_ct;
  std::optional<std::string> previous_secret_ct;
  std::optional<sys_time> previous_until;
  sys_time created_at, updated_at;
};

std::optional<webhook_record> get_webhook(tx_t& tx, const std::string& tenant,
                                          bool for_update = false);
long long next_webhook_row_id(tx_t& tx);
// Inserts or replaces the tenant's webhook with every field of `w`.
webhook_record upsert_webhook(tx_t& tx, const webhook_record& w);
// Deletes the webhook and cancels its pending deliveries; false when there was none.
bool delete_webhook(tx_t& tx, const std::string& tenant);
// Serializes the PUTs of one tenant's webhook (the first two would each mint a secret).
void lock_webhook_slot(tx_t& tx, const std::string& tenant);

// The outbox. Writes a delivery of event `type` about connection (tenant, connection_id) when
// the tenant has a webhook subscribed to `type`; nothing otherwise. The payload is built from
// the connection row as it is now in `tx` (so call it after the state change): data carries
// `reason` (when given, else the row's reauth reason), the open link's id, token_version,
// status, last_error and refresh_expires_at. Returns whether a row was written.
bool enqueue_webhook(tx_t& tx, const std::string& tenant, const std::string& connection_id,
                     const std::string& type, const std::optional<std::string>& reason);

struct delivery_claim {
  long long seq = 0;
  std::string id, tenant_id, event_id, type, connection_id, payload;
  int attempts = 0;         // including this one
  int window_attempts = 0;  // of this retry window (the back-off counts these)
  sys_time created_at;
  sys_time window_from;
  // The webhook now (its URL may have changed since the event).
  std::string url, key_id;
  long long webhook_row_id = 0, secret_version = 0;
  std::string secret_ct;
  std::optional<std::string> previous_secret_ct;  // only while the overlap lasts
};
// Claims up to `limit` due pending deliveries (FOR UPDATE SKIP LOCKED, a committed lease of
// `lease_s`), oldest due first, at most `tenant_cap` live claims per tenant, and for each
// connection only its earliest pending ordered delivery (or unordered manual retries).
std::vector<delivery_claim> claim_deliveries(tx_t& tx, const std::string& instance, int limit,
                                             int tenant_cap, long long lease_s);
// A 2xx: delivered. Only while the row is still this instance's pending claim.
bool mark_delivered(tx_t& tx, long long seq, const std::string& instance, int status);
// A failed attempt: retried at `next_attempt_at`, or `failed` (the dead letter) when
// `window_from + max_age_ms` has passed. Returns the new status ("pending" or "failed"), or
// nullopt when the claim was no longer this instance's.
std::optional<std::string> mark_attempt_failed(tx_t& tx, long long seq, const std::string& instance,
                                               int status, const std::string& error,
                                               long long delay_ms, long long max_age_ms);
// Releases this instance's claims on `seqs` without an attempt (shutdown before sending).
void release_deliveries(tx_t& tx, const std::string& instance, const std::vector<long long>& seqs);

struct delivery_record {
  std::string id, event_id, type, connection_id, status;
  int attempts = 0;
  std::optional<int> last_status;
  std::optional<std::string> last_error;
  std::optional<sys_time> next_attempt_at;  // pending only
  sys_time created_at;
  std::optional<sys_time> delivered_at;
};
std::vector<delivery_record> list_deliveries(tx_t& tx, const std::string& tenant,
                                             const std::optional<std::string>& status, int limit);
enum class retry_result { queued, not_found, not_failed, no_webhook };
// Re-queues a failed delivery now, unordered, with a fresh retry window, for the tenant's
// current webhook (no_webhook when it has none).
retry_result retry_delivery(tx_t& tx, const std::string& tenant, const std::string& id);

struct outbox_stats {
  long long pending = 0;
  double oldest_pending_s = 0;
};
outbox_stats count_outbox(tx_t& tx);

// Key rotation of webhook secrets (store/key_rotation).
// Webhooks not sealed under `active_kid`, locked FOR UPDATE SKIP LOCKED, excluding `skip`.
std::vector<webhook_record> lock_webhooks_to_rotate(tx_t& tx, const std::string& active_kid,
                                                    const std::vector<long long>& skip, int limit);
long long count_webhooks_not_under(tx_t& tx, const std::string& active_kid);
bool cas_reseal_webhook(tx_t& tx, const webhook_record& w, const std::string& new_kid,
                        const std::string& secret_ct,
                        const std::optional<std::string>& previous_ct);

}  // namespace tokend::store
