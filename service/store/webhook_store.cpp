#include "store/webhook_store.hpp"

#include "store/sql.hpp"

namespace tokend::store {
namespace {

using namespace sql;

const std::string kWebhookColumns =
    "tenant_id, row_id, url, array_to_json(events)::text, key_id, secret_version, secret_ct, "
    "previous_secret_ct, " TS("previous_until") ", " TS("created_at") ", " TS("updated_at");

webhook_record to_webhook(const pqxx::row& r) {
  webhook_record w;
  w.tenant_id = r[0].as<std::string>();
  w.row_id = r[1].as<long long>();
  w.url = r[2].as<std::string>();
  if (!r[3].is_null()) w.events = str_array(r[3]);
  w.key_id = r[4].as<std::string>();
  w.secret_version = r[5].as<long long>();
  w.secret_ct = pqxx::binarystring(r[6]).str();
  w.previous_secret_ct = opt_bytes(r[7]);
  w.previous_until = opt_ts(r[8]);
  w.created_at = ts(r[9]);
  w.updated_at = ts(r[10]);
  return w;
}

// RFC 3339 in UTC, to the second, as every other timestamp tokend shows.
#define RFC3339(col) "to_char((" col ") AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"')"

}  // namespace

std::optional<webhook_record> get_webhook(tx_t& tx, const std::string& tenant, bool for_update) {
  return first_row(exec(tx,
                        "SELECT " + kWebhookColumns + " FROM webhooks WHERE tenant_id = $1" +
                            (for_update ? " FOR UPDATE" : ""),
                        tenant),
                   to_webhook);
}

long long next_webhook_row_id(tx_t& tx) { return next_row_id(tx, "webhooks"); }

webhook_record upsert_webhook(tx_t& tx, const webhook_record& w) {
  std::optional<std::string> events;
  if (w.events) events = json_array(*w.events);
  return to_webhook(
      exec(tx,
           "INSERT INTO webhooks (tenant_id, row_id, url, events, key_id, secret_version, "
           "secret_ct, previous_secret_ct, previous_until) VALUES ($1, $2, $3, CASE WHEN $4::jsonb "
           "IS NULL THEN NULL ELSE " +
               array_param(4) + " END, $5, $6, $7, nullif($8, ''::bytea), " + ts_param(9) +
               ") ON CONFLICT (tenant_id) DO UPDATE SET row_id = EXCLUDED.row_id, url = "
               "EXCLUDED.url, events = EXCLUDED.events, key_id = EXCLUDED.key_id, "
               "secret_version = EXCLUDED.secret_version, secret_ct = EXCLUDED.secret_ct, "
               "previous_secret_ct = EXCLUDED.previous_secret_ct, previous_until = "
               "EXCLUDED.previous_until, updated_at = now() RETURNING " +
               kWebhookColumns,
           w.tenant_id, w.row_id, w.url, events, w.key_id, w.secret_version,
           pqxx::binarystring(w.secret_ct), bytes(w.previous_secret_ct), opt_us(w.previous_until))
          .at(0));
}

void lock_webhook_slot(tx_t& tx, const std::string& tenant) {
  exec(tx, "SELECT pg_advisory_xact_lock(hashtext('tokend.webhook:' || $1))", tenant);
}

bool delete_webhook(tx_t& tx, const std::string& tenant) {
  // The row goes first: an enqueue holds it FOR SHARE, so one that committed before this is
  // cancelled below and one that comes after finds no webhook. The other order could leave a
  // pending row behind that no webhook will ever deliver.
  const bool found =
      !exec(tx, "DELETE FROM webhooks WHERE tenant_id = $1 RETURNING 1", tenant).empty();
  exec(tx,
       "UPDATE webhook_deliveries SET status = 'cancelled', ended_at = now(), claimed_by = NULL, "
       "claim_expires_at = NULL WHERE tenant_id = $1 AND status = 'pending'",
       tenant);
  return found;
}

bool enqueue_webhook(tx_t& tx, const std::string& tenant, const std::string& connection_id,
                     const std::string& type, const std::optional<std::string>& reason) {
  // Ids from gen_random_uuid (122 random bits). The payload is built here, from the row as this
  // transaction sees it, so it is exactly what the state change committed.
  return !exec(
              tx,
              "WITH ids AS (SELECT 'evt_' || replace(gen_random_uuid()::text, '-', '') AS event_id, "
              "'dlv_' || replace(gen_random_uuid()::text, '-', '') AS id) "
              "INSERT INTO webhook_deliveries (id, tenant_id, webhook_row_id, event_id, type, "
              "connection_id, payload) "
              "SELECT ids.id, w.tenant_id, w.row_id, ids.event_id, $3, c.id, "
              "jsonb_build_object('id', ids.event_id, 'type', $3::text, 'created_at', " RFC3339(
                  "now()") ", 'tenant', c.tenant_id, 'connection', c.id, 'data', "
                           "jsonb_build_object('reason', coalesce($4::text, c.reauth_reason), "
                           "'link_id', (SELECT l.id FROM reauth_links l WHERE l.tenant_id = "
                           "c.tenant_id AND l.connection_id = c.id AND l.kind = 'reauth' AND "
                           "l.connection_row_id = c.row_id AND l.status IN ('open', 'opened', "
                           "'declined', 'failed') AND l.expires_at > now() ORDER BY l.created_at "
                           "DESC, l.id DESC LIMIT 1), 'token_version', c.token_version, "
                           "'status', c.status, 'provider', c.provider_id, 'last_error', "
                           "c.last_error, 'refresh_expires_at', CASE WHEN c.refresh_expires_at IS "
                           "NOT NULL THEN " RFC3339("c.refresh_expires_at") " END))::text "
                           "FROM ids, webhooks w JOIN connections c ON c.tenant_id = w.tenant_id "
                           "AND c.id = $2 WHERE w.tenant_id = $1 AND (w.events IS NULL OR $3 = "
                           "ANY(w.events)) FOR SHARE OF w RETURNING 1",
              tenant, connection_id, type, reason)
              .empty();
}

std::vector<delivery_claim> claim_deliveries(tx_t& tx, const std::string& instance, int limit,
                                             int tenant_cap, long long lease_s) {
  // `cand` ranks the due rows per tenant; a tenant gets at most its cap minus the claims it
  // already has live. The locking level repeats the claim filter: after waiting on a row
  // another claim just committed, PostgreSQL re-checks it against the new row version (the
  // CTE's snapshot is older), so a row is never claimed twice.
  auto r = exec(
      tx,
      "WITH live AS (SELECT tenant_id, count(*) AS n FROM webhook_deliveries WHERE status = "
      "'pending' AND claim_expires_at > now() GROUP BY tenant_id), "
      "cand AS (SELECT d.seq, d.tenant_id, row_number() OVER (PARTITION BY d.tenant_id ORDER BY "
      "d.next_attempt_at, d.seq) AS rn FROM webhook_deliveries d JOIN webhooks wh ON "
      "wh.tenant_id = d.tenant_id AND wh.row_id = d.webhook_row_id WHERE d.status = 'pending' AND "
      "d.next_attempt_at <= now() AND (d.claim_expires_at IS NULL OR d.claim_expires_at <= now()) "
      "AND (NOT d.ordered OR NOT EXISTS (SELECT 1 FROM webhook_deliveries e WHERE e.tenant_id = "
      "d.tenant_id AND e.connection_id = d.connection_id AND e.status = 'pending' AND e.ordered "
      "AND e.seq < d.seq))), "
      "pick AS (SELECT d.seq FROM webhook_deliveries d JOIN cand ON cand.seq = d.seq LEFT JOIN "
      "live ON live.tenant_id = cand.tenant_id WHERE cand.rn <= $3 - coalesce(live.n, 0) AND "
      "d.status = 'pending' AND (d.claim_expires_at IS NULL OR d.claim_expires_at <= now()) "
      "ORDER BY d.next_attempt_at, d.seq LIMIT $2 FOR UPDATE OF d SKIP LOCKED) "
      "UPDATE webhook_deliveries d SET claimed_by = $1, claim_expires_at = now() + "
      "make_interval(secs => $4), attempts = d.attempts + 1, window_attempts = d.window_attempts + 1 FROM pick, webhooks w WHERE d.seq = "
      "pick.seq AND w.tenant_id = d.tenant_id AND w.row_id = d.webhook_row_id RETURNING d.seq, "
      "d.id, d.tenant_id, d.event_id, d.type, d.connection_id, d.payload, d.attempts, "
      "d.window_attempts, " TS(
          "d.created_at") ", " TS("d.window_from") ", w.url, w.key_id, w.row_id, "
                                                   "w.secret_version, w.secret_ct, CASE WHEN "
                                                   "w.previous_until > now() THEN "
                                                   "w.previous_secret_ct END",
      instance, limit, tenant_cap, static_cast<double>(lease_s));
  std::vector<delivery_claim> out;
  out.reserve(r.size());
  for (const auto& row : r) {
    delivery_claim c;
    c.seq = row[0].as<long long>();
    c.id = row[1].as<std::string>();
    c.tenant_id = row[2].as<std::string>();
    c.event_id = row[3].as<std::string>();
    c.type = row[4].as<std::string>();
    c.connection_id = row[5].as<std::string>();
    c.payload = row[6].as<std::string>();
    c.attempts = row[7].as<int>();
    c.window_attempts = row[8].as<int>();
    c.created_at = ts(row[9]);
    c.window_from = ts(row[10]);
    c.url = row[11].as<std::string>();
    c.key_id = row[12].as<std::string>();
    c.webhook_row_id = row[13].as<long long>();
    c.secret_version = row[14].as<long long>();
    c.secret_ct = pqxx::binarystring(row[15]).str();
    c.previous_secret_ct = opt_bytes(row[16]);
    out.push_back(std::move(c));
  }
  return out;
}

bool mark_delivered(tx_t& tx, long long seq, const std::string& instance, int status) {
  return !exec(tx,
               "UPDATE webhook_deliveries SET status = 'delivered', delivered_at = now(), "
               "last_status = $3, last_error = NULL, claimed_by = NULL, claim_expires_at = NULL "
               "WHERE seq = $1 AND status = 'pending' AND claimed_by = $2 RETURNING 1",
               seq, instance, status)
              .empty();
}

std::optional<std::string> mark_attempt_failed(tx_t& tx, long long seq, const std::string& instance,
                                               int status, const std::string& error,
                                               long long delay_ms, long long max_age_ms) {
  // The last retry is made when the window ends; a failure then is final.
  auto r = exec(tx,
                "UPDATE webhook_deliveries SET status = CASE WHEN now() >= window_from + $6 * "
                "interval '1 millisecond' THEN 'failed' ELSE 'pending' END, ended_at = CASE WHEN "
                "now() >= window_from + $6 * interval '1 millisecond' THEN now() END, "
                "next_attempt_at = least(now() + $5 * interval '1 millisecond', window_from + $6 "
                "* interval '1 millisecond'), last_status = nullif($3, 0), last_error = $4, "
                "claimed_by = NULL, claim_expires_at = NULL WHERE seq = $1 AND status = "
                "'pending' AND claimed_by = $2 RETURNING status",
                seq, instance, status, error, delay_ms, max_age_ms);
  if (r.empty()) return std::nullopt;
  return r[0][0].as<std::string>();
}

void release_deliveries(tx_t& tx, const std::string& instance, const std::vector<long long>& seqs) {
  std::string list = "{";
  for (std::size_t i = 0; i < seqs.size(); ++i) {
    if (i) list += ',';
    list += std::to_string(seqs[i]);
  }
  list += '}';
  exec(tx,
       "UPDATE webhook_deliveries SET claimed_by = NULL, claim_expires_at = NULL, attempts = "
       "greatest(attempts - 1, 0), window_attempts = greatest(window_attempts - 1, 0) WHERE seq = "
       "ANY($2::bigint[]) AND claimed_by = $1 AND status "
       "= 'pending'",
       instance, list);
}

std::vector<delivery_record> list_deliveries(tx_t& tx, const std::string& tenant,
                                             const std::optional<std::string>& status, int limit) {
  auto r = exec(tx,
                "SELECT id, event_id, type, connection_id, status, attempts, last_status, "
                "last_error, " TS("next_attempt_at") ", " TS("created_at") ", " TS(
                    "delivered_at") " FROM webhook_deliveries WHERE tenant_id = $1 AND ($2::text "
                                    "IS NULL OR status = $2) ORDER BY seq DESC LIMIT $3",
                tenant, status, limit);
  std::vector<delivery_record> out;
  out.reserve(r.size());
  for (const auto& row : r) {
    delivery_record d;
    d.id = row[0].as<std::string>();
    d.event_id = row[1].as<std::string>();
    d.type = row[2].as<std::string>();
    d.connection_id = row[3].as<std::string>();
    d.status = row[4].as<std::string>();
    d.attempts = row[5].as<int>();
    if (!row[6].is_null()) d.last_status = row[6].as<int>();
    d.last_error = opt_str(row[7]);
    if (d.status == "pending") d.next_attempt_at = ts(row[8]);
    d.created_at = ts(row[9]);
    d.delivered_at = opt_ts(row[10]);
    out.push_back(std::move(d));
  }
  return out;
}

retry_result retry_delivery(tx_t& tx, const std::string& tenant, const std::string& id) {
  // Sent to the tenant's webhook as it is now (held FOR SHARE against a concurrent DELETE),
  // which may be a newer one than the delivery was first made for.
  auto r = exec(tx,
                "UPDATE webhook_deliveries d SET status = 'pending', ordered = false, "
                "webhook_row_id = w.row_id, window_from = now(), window_attempts = 0, "
                "next_attempt_at = now(), ended_at = NULL, claimed_by = NULL, claim_expires_at = "
                "NULL FROM (SELECT row_id FROM webhooks WHERE tenant_id = $1 FOR SHARE) w WHERE "
                "d.tenant_id = $1 AND d.id = $2 AND d.status = 'failed' RETURNING 1",
                tenant, id);
  if (!r.empty()) return retry_result::queued;
  auto e = exec(tx, "SELECT status FROM webhook_deliveries WHERE tenant_id = $1 AND id = $2",
                tenant, id);
  if (e.empty()) return retry_result::not_found;
  if (e[0][0].as<std::string>() != "failed") return retry_result::not_failed;
  return retry_result::no_webhook;
}

outbox_stats count_outbox(tx_t& tx) {
  auto r = exec(tx,
                "SELECT count(*), coalesce(extract(epoch from now() - min(created_at)), 0)::float8 "
                "FROM webhook_deliveries WHERE status = 'pending'");
  return {r[0][0].as<long long>(), r[0][1].as<double>()};
}

std::vector<webhook_record> lock_webhooks_to_rotate(tx_t& tx, const std::string& active_kid,
                                                    const std::vector<long long>& skip, int limit) {
  std::string list = "{";
  for (std::size_t i = 0; i < skip.size(); ++i) {
    if (i) list += ',';
    list += std::to_string(skip[i]);
  }
  list += '}';
  return all_rows(exec(tx,
                       "SELECT " + kWebhookColumns +
                           " FROM webhooks WHERE key_id <> $1 AND row_id <> ALL($2::bigint[]) "
                           "ORDER BY row_id LIMIT $3 FOR UPDATE SKIP LOCKED",
                       active_kid, list, limit),
                  to_webhook);
}

long long count_webhooks_not_under(tx_t& tx, const std::string& active_kid) {
  return exec(tx, "SELECT count(*) FROM webhooks WHERE key_id <> $1", active_kid)[0][0]
      .as<long long>();
}

bool cas_reseal_webhook(tx_t& tx, const webhook_record& w, const std::string& new_kid,
                        const std::string& secret_ct,
                        const std::optional<std::string>& previous_ct) {
  return !exec(tx,
               "UPDATE webhooks SET key_id = $4, secret_ct = $5, previous_secret_ct = "
               "nullif($6, ''::bytea) WHERE tenant_id = $1 AND row_id = $2 AND secret_version = "
               "$3 AND key_id = $7 RETURNING 1",
               w.tenant_id, w.row_id, w.secret_version, new_kid, pqxx::binarystring(secret_ct),
               bytes(previous_ct), w.key_id)
              .empty();
}

}  // namespace tokend::store
