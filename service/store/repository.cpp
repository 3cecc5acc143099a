#include "store/repository.hpp"

#include <nlohmann/json.hpp>
#include <pqxx/pqxx>

#include "store/db_pool.hpp"
#include "store/sql.hpp"
#include "store/webhook_store.hpp"

namespace tokend::store {
namespace {

using namespace sql;

const std::string kKeyColumns = "tenant_id, id, key_hash, name, array_to_json(scopes)::text, " TS(
    "created_at") ", " TS("expires_at") ", " TS("last_used_at") ", " TS("revoked_at");

api_key_record to_key(const pqxx::row& r) {
  api_key_record k;
  k.tenant_id = r[0].as<std::string>();
  k.id = r[1].as<std::string>();
  k.key_hash = pqxx::binarystring(r[2]).str();
  k.name = r[3].as<std::string>();
  k.scopes = str_array(r[4]);
  k.created_at = ts(r[5]);
  k.expires_at = opt_ts(r[6]);
  k.last_used_at = opt_ts(r[7]);
  k.revoked_at = opt_ts(r[8]);
  return k;
}

const std::string kProviderColumns =
    "tenant_id, id, row_id, type, display_name, client_id, client_secret_ct, key_id, "
    "secret_version, authorize_url, token_url, array_to_json(scopes)::text, "
    "token_endpoint_auth_method, pkce, redirect_uri, default_expires_in, refresh_token_lifetime, "
    "refresh_ahead, refresh_scope, canary_url, " TS("cooldown_until") ", " TS("created_at") ", " TS(
        "updated_at") ", refresh_rate_per_s";

provider_record to_provider(const pqxx::row& r) {
  provider_record p;
  p.tenant_id = r[0].as<std::string>();
  p.id = r[1].as<std::string>();
  p.row_id = r[2].as<long long>();
  p.type = r[3].as<std::string>();
  p.display_name = opt_str(r[4]);
  p.client_id = r[5].as<std::string>();
  p.client_secret_ct = opt_bytes(r[6]);
  p.key_id = opt_str(r[7]);
  p.secret_version = r[8].as<long long>();
  p.authorize_url = opt_str(r[9]);
  p.token_url = r[10].as<std::string>();
  p.scopes = str_array(r[11]);
  p.auth_method = r[12].as<std::string>();
  p.pkce = r[13].as<bool>();
  p.redirect_uri = opt_str(r[14]);
  p.default_expires_in = r[15].as<long long>();
  if (!r[16].is_null()) p.refresh_token_lifetime = r[16].as<long long>();
  p.refresh_ahead = r[17].as<long long>();
  p.refresh_scope = opt_str(r[18]);
  p.canary_url = opt_str(r[19]);
  p.cooldown_until = opt_ts(r[20]);
  p.created_at = ts(r[21]);
  p.updated_at = ts(r[22]);
  if (!r[23].is_null()) p.refresh_rate_per_s = r[23].as<long long>();
  return p;
}

const std::string kConnectionColumns =
    "tenant_id, id, row_id, provider_id, status, token_version, key_id, access_token_ct, "
    "refresh_token_ct, access_token_fp, refresh_token_fp, token_type, scope, metadata::text, " TS(
        "access_expires_at") ", access_lifetime, " TS("refresh_expires_at") ", " TS(
        "last_refreshed_at") ", last_error::text, reauth_reason, consecutive_failures, " TS("next_attempt_at") ", " TS("last_forced_refresh_at") ", " TS("created_at") ", " TS("updated_at") ", token_origin, "
    // The open reauth link, if any: the newest unexpired one not completed or superseded.
    "(SELECT concat_ws(' ', l.id, " TS("l.expires_at") ", l.reason) FROM reauth_links l "
    "WHERE l.tenant_id = connections.tenant_id AND l.connection_id = connections.id AND "
    "l.kind = 'reauth' AND l.connection_row_id = connections.row_id AND "
    "l.status IN ('open', 'opened', 'declined', 'failed') AND l.expires_at > now() "
    "ORDER BY l.created_at DESC, l.id DESC LIMIT 1), " TS(
        "next_refresh_at") ", refresh_lifetime, refresh_token_expiring";

connection_record to_connection(const pqxx::row& r) {
  connection_record c;
  c.tenant_id = r[0].as<std::string>();
  c.id = r[1].as<std::string>();
  c.row_id = r[2].as<long long>();
  c.provider_id = r[3].as<std::string>();
  c.status = r[4].as<std::string>();
  c.token_version = r[5].as<long long>();
  c.sealed.key_id = r[6].as<std::string>();
  c.sealed.access_token_ct = pqxx::binarystring(r[7]).str();
  c.sealed.refresh_token_ct = opt_bytes(r[8]);
  c.sealed.access_token_fp = r[9].as<std::string>();
  c.sealed.refresh_token_fp = opt_str(r[10]);
  c.token_type = r[11].as<std::string>();
  c.scope = opt_str(r[12]);
  c.metadata = r[13].as<std::string>();
  c.access_expires_at = ts(r[14]);
  c.access_lifetime = r[15].as<long long>();
  c.refresh_expires_at = opt_ts(r[16]);
  c.last_refreshed_at = opt_ts(r[17]);
  c.last_error = opt_str(r[18]);
  c.reauth_reason = opt_str(r[19]);
  c.consecutive_failures = r[20].as<int>();
  c.next_attempt_at = opt_ts(r[21]);
  c.last_forced_refresh_at = opt_ts(r[22]);
  c.created_at = ts(r[23]);
  c.updated_at = ts(r[24]);
  c.token_origin = r[25].as<std::string>();
  if (!r[26].is_null()) {  // "<id> <expires_at micros> <reason>"; ids and reasons have no space
    const std::string v = r[26].as<std::string>();
    const auto a = v.find(' '), b = v.rfind(' ');
    if (a != std::string::npos && b > a) {
      c.open_link = open_link_ref{
          v.substr(0, a), from_micros(std::stoll(v.substr(a + 1, b - a - 1))), v.substr(b + 1)};
    }
  }
  c.next_refresh_at = opt_ts(r[27]);
  if (!r[28].is_null()) c.refresh_lifetime = r[28].as<long long>();
  c.refresh_token_expiring = r[29].as<bool>();
  return c;
}

const std::string kEventColumns =
    "id, tenant_id, connection_id, connection_row_id, " TS("at") ", trigger, outcome, attempt, "
    "http_status, oauth_error, description, token_version_before, token_version_after, "
    "duration_ms, joined_count, request_id, instance, environment";

event_record to_event(const pqxx::row& r) {
  event_record e;
  e.id = r[0].as<long long>();
  e.tenant_id = r[1].as<std::string>();
  e.connection_id = r[2].as<std::string>();
  e.connection_row_id = r[3].as<long long>();
  e.at = ts(r[4]);
  e.trigger = r[5].as<std::string>();
  e.outcome = r[6].as<std::string>();
  if (!r[7].is_null()) e.attempt = r[7].as<int>();
  if (!r[8].is_null()) e.http_status = r[8].as<int>();
  e.oauth_error = opt_str(r[9]);
  e.description = opt_str(r[10]);
  if (!r[11].is_null()) e.token_version_before = r[11].as<long long>();
  if (!r[12].is_null()) e.token_version_after = r[12].as<long long>();
  if (!r[13].is_null()) e.duration_ms = r[13].as<int>();
  e.joined_count = r[14].as<int>();
  e.request_id = opt_str(r[15]);
  e.instance = opt_str(r[16]);
  e.environment = opt_str(r[17]);
  return e;
}

// Appended, not `"literal" + std::string&&`: g++ 12 at -O3 reports false -Warray-bounds and
// -Wstringop-overflow on that pattern (GCC bug 105651).
std::string in_skip_list(int n) {
  std::string s = "row_id <> ALL($";
  s += std::to_string(n);
  s += "::bigint[])";
  return s;
}
std::string pg_bigint_array(const std::vector<long long>& v) {
  std::string s = "{";
  for (std::size_t i = 0; i < v.size(); ++i) {
    if (i) s += ',';
    s += std::to_string(v[i]);
  }
  return s + "}";
}

}  // namespace

std::optional<tenant_record> insert_tenant(tx_t& tx, const std::string& id,
                                           const std::string& name) {
  auto r = exec(tx,
                "INSERT INTO tenants (id, name) VALUES ($1, $2) ON CONFLICT (id) DO NOTHING "
                "RETURNING id, name, " TS("created_at"),
                id, name);
  if (r.empty()) return std::nullopt;
  return tenant_record{r[0][0].as<std::string>(), r[0][1].as<std::string>(), ts(r[0][2])};
}

bool tenant_exists(tx_t& tx, const std::string& id) {
  return !exec(tx, "SELECT 1 FROM tenants WHERE id = $1", id).empty();
}

api_key_record insert_api_key(tx_t& tx, const api_key_record& k) {
  auto r = exec(tx,
                "INSERT INTO api_keys (tenant_id, id, key_hash, name, scopes, expires_at) "
                "VALUES ($1, $2, $3, $4, " +
                    array_param(5) + ", " + ts_param(6) + ") RETURNING " + kKeyColumns,
                k.tenant_id, k.id, pqxx::binarystring(k.key_hash), k.name, json_array(k.scopes),
                opt_us(k.expires_at));
  return to_key(r[0]);
}

std::vector<api_key_record> list_api_keys(tx_t& tx, const std::string& tenant) {
  return all_rows(
      exec(tx,
           "SELECT " + kKeyColumns + " FROM api_keys WHERE tenant_id = $1 ORDER BY created_at, id",
           tenant),
      to_key);
}

std::optional<std::string> revoke_api_key(tx_t& tx, const std::string& tenant,
                                          const std::string& id) {
  auto r = exec(tx,
                "UPDATE api_keys SET revoked_at = coalesce(revoked_at, now()) "
                "WHERE tenant_id = $1 AND id = $2 RETURNING key_hash",
                tenant, id);
  if (r.empty()) return std::nullopt;
  return pqxx::binarystring(r[0][0]).str();
}

std::optional<api_key_record> find_api_key_by_hash(tx_t& tx, const std::string& key_hash) {
  auto r = exec(tx, "SELECT " + kKeyColumns + " FROM api_keys WHERE key_hash = $1",
                pqxx::binarystring(key_hash));
  return first_row(r, to_key);
}

void record_key_uses(tx_t& tx, const std::vector<key_use>& uses) {
  for (const auto& u : uses) {
    exec(tx,
         "UPDATE api_keys SET last_used_at = greatest(coalesce(last_used_at, " + ts_param(3) +
             "), " + ts_param(3) + ") WHERE tenant_id = $1 AND id = $2",
         u.tenant_id, u.id, to_micros(u.at));
  }
}

std::optional<provider_record> get_provider(tx_t& tx, const std::string& tenant,
                                            const std::string& id, bool for_update) {
  auto r = exec(tx,
                "SELECT " + kProviderColumns + " FROM providers WHERE tenant_id = $1 AND id = $2" +
                    (for_update ? " FOR UPDATE" : ""),
                tenant, id);
  return first_row(r, to_provider);
}

std::optional<provider_record> get_provider_of_connection(tx_t& tx, const std::string& tenant,
                                                          const std::string& connection_id) {
  auto r = exec(tx,
                "SELECT " + kProviderColumns +
                    " FROM providers WHERE tenant_id = $1 AND id = (SELECT provider_id FROM "
                    "connections WHERE tenant_id = $1 AND id = $2)",
                tenant, connection_id);
  return first_row(r, to_provider);
}

std::vector<provider_record> list_providers(tx_t& tx, const std::string& tenant) {
  return all_rows(
      exec(tx, "SELECT " + kProviderColumns + " FROM providers WHERE tenant_id = $1 ORDER BY id",
           tenant),
      to_provider);
}

long long next_provider_row_id(tx_t& tx) { return next_row_id(tx, "providers"); }

provider_record upsert_provider(tx_t& tx, const provider_record& p) {
  auto r = exec(
      tx,
      "INSERT INTO providers (tenant_id, id, row_id, type, display_name, client_id, "
      "client_secret_ct, key_id, secret_version, authorize_url, token_url, scopes, "
      "token_endpoint_auth_method, pkce, redirect_uri, default_expires_in, refresh_token_lifetime, "
      "refresh_ahead, refresh_scope, canary_url, refresh_rate_per_s) VALUES ($1, $2, $3, $4, $5, "
      "$6, NULLIF($7, ''::bytea), $8, $9, $10, $11, " +
          array_param(12) +
          ", $13, $14, $15, $16, $17, $18, $19, $20, $21) "
          "ON CONFLICT (tenant_id, id) DO UPDATE SET type = EXCLUDED.type, "
          "display_name = EXCLUDED.display_name, client_id = EXCLUDED.client_id, "
          "client_secret_ct = EXCLUDED.client_secret_ct, key_id = EXCLUDED.key_id, "
          "secret_version = EXCLUDED.secret_version, authorize_url = EXCLUDED.authorize_url, "
          "token_url = EXCLUDED.token_url, scopes = EXCLUDED.scopes, "
          "token_endpoint_auth_method = EXCLUDED.token_endpoint_auth_method, pkce = EXCLUDED.pkce, "
          "redirect_uri = EXCLUDED.redirect_uri, default_expires_in = EXCLUDED.default_expires_in, "
          "refresh_token_lifetime = EXCLUDED.refresh_token_lifetime, "
          "refresh_ahead = EXCLUDED.refresh_ahead, refresh_scope = EXCLUDED.refresh_scope, "
          "canary_url = EXCLUDED.canary_url, refresh_rate_per_s = EXCLUDED.refresh_rate_per_s, "
          "cooldown_until = NULL, updated_at = now() "
          "RETURNING " +
          kProviderColumns,
      p.tenant_id, p.id, p.row_id, p.type, p.display_name, p.client_id, bytes(p.client_secret_ct),
      p.key_id, p.secret_version, p.authorize_url, p.token_url, json_array(p.scopes), p.auth_method,
      p.pkce, p.redirect_uri, p.default_expires_in, p.refresh_token_lifetime, p.refresh_ahead,
      p.refresh_scope, p.canary_url, p.refresh_rate_per_s);
  return to_provider(r[0]);
}

void set_provider_cooldown(tx_t& tx, const std::string& tenant, const std::string& id,
                           sys_time until) {
  exec(tx,
       "UPDATE providers SET cooldown_until = " + ts_param(3) + " WHERE tenant_id = $1 AND id = $2",
       tenant, id, to_micros(until));
}

std::optional<connection_record> get_connection(tx_t& tx, const std::string& tenant,
                                                const std::string& id, bool for_update) {
  auto r =
      exec(tx,
           "SELECT " + kConnectionColumns + " FROM connections WHERE tenant_id = $1 AND id = $2" +
               (for_update ? " FOR UPDATE" : ""),
           tenant, id);
  return first_row(r, to_connection);
}

std::vector<connection_record> list_connections(tx_t& tx, const std::string& tenant,
                                                const connection_filter& f) {
  return all_rows(
      exec(tx,
           "SELECT " + kConnectionColumns +
               " FROM connections WHERE tenant_id = $1 AND ($2::text IS NULL OR status = $2) "
               "AND ($3::text IS NULL OR provider_id = $3) AND ($4::text IS NULL OR id > $4) "
               "ORDER BY id LIMIT $5",
           tenant, f.status, f.provider, f.after_id, f.limit),
      to_connection);
}

long long next_connection_row_id(tx_t& tx) { return next_row_id(tx, "connections"); }

connection_record insert_connection(tx_t& tx, const connection_record& c) {
  auto r = exec(
      tx,
      "INSERT INTO connections (tenant_id, id, row_id, provider_id, status, token_version, key_id, "
      "access_token_ct, refresh_token_ct, access_token_fp, refresh_token_fp, token_type, scope, "
      "metadata, access_expires_at, access_lifetime, refresh_expires_at, token_origin, "
      "next_refresh_at, refresh_lifetime) VALUES ($1, $2, $3, $4, 'active', $5, $6, $7, "
      "NULLIF($8, ''::bytea), $9, $10, $11, $12, $13::jsonb, " +
          ts_param(14) + ", $15, " + ts_param(16) + ", NULLIF($17, ''), " + ts_param(18) +
          ", $19) RETURNING " + kConnectionColumns,
      c.tenant_id, c.id, c.row_id, c.provider_id, c.token_version, c.sealed.key_id,
      pqxx::binarystring(c.sealed.access_token_ct), bytes(c.sealed.refresh_token_ct),
      c.sealed.access_token_fp, c.sealed.refresh_token_fp, c.token_type, c.scope, c.metadata,
      to_micros(c.access_expires_at), c.access_lifetime, opt_us(c.refresh_expires_at),
      c.token_origin, opt_us(c.next_refresh_at), c.refresh_lifetime);
  return to_connection(r[0]);
}

std::optional<connection_record> replace_connection(tx_t& tx, const connection_record& c,
                                                    long long expected_version) {
  auto r =
      exec(tx,
           "UPDATE connections SET provider_id = $3, status = 'active', token_version = $4, "
           "key_id = $5, access_token_ct = $6, refresh_token_ct = NULLIF($7, ''::bytea), "
           "access_token_fp = $8, refresh_token_fp = $9, token_type = $10, scope = $11, "
           "metadata = $12::jsonb, access_expires_at = " +
               ts_param(13) + ", access_lifetime = $14, refresh_expires_at = " + ts_param(15) +
               ", last_error = NULL, reauth_reason = NULL, consecutive_failures = 0, "
               "next_attempt_at = NULL, token_origin = NULLIF($17, ''), next_refresh_at = " +
               ts_param(18) +
               ", refresh_lifetime = $19, refresh_token_expiring = false, claimed_by = NULL, "
               "claim_expires_at = NULL, failing_since = NULL, failure_notified = false, "
               "updated_at = now() "
               "WHERE tenant_id = $1 AND id = $2 AND token_version = $16 RETURNING " +
               kConnectionColumns,
           c.tenant_id, c.id, c.provider_id, c.token_version, c.sealed.key_id,
           pqxx::binarystring(c.sealed.access_token_ct), bytes(c.sealed.refresh_token_ct),
           c.sealed.access_token_fp, c.sealed.refresh_token_fp, c.token_type, c.scope, c.metadata,
           to_micros(c.access_expires_at), c.access_lifetime, opt_us(c.refresh_expires_at),
           expected_version, c.token_origin, opt_us(c.next_refresh_at), c.refresh_lifetime);
  return first_row(r, to_connection);
}

std::optional<connection_record> reauthorize_connection(tx_t& tx, const connection_record& c,
                                                        long long expected_version) {
  auto r = exec(tx,
                "UPDATE connections SET status = 'active', token_version = $3, key_id = $4, "
                "access_token_ct = $5, refresh_token_ct = NULLIF($6, ''::bytea), "
                "access_token_fp = $7, refresh_token_fp = $8, token_type = $9, scope = $10, "
                "access_expires_at = " +
                    ts_param(11) + ", access_lifetime = $12, refresh_expires_at = " + ts_param(13) +
                    ", last_refreshed_at = now(), last_error = NULL, reauth_reason = NULL, "
                    "consecutive_failures = 0, next_attempt_at = NULL, token_origin = $14, "
                    "next_refresh_at = " +
                    ts_param(17) +
                    ", refresh_lifetime = $18, refresh_token_expiring = false, claimed_by = NULL, "
                    "claim_expires_at = NULL, failing_since = NULL, failure_notified = false, "
                    "updated_at = now() WHERE tenant_id = $1 AND id = $2 AND row_id = $15 "
                    "AND token_version = $16 RETURNING " +
                    kConnectionColumns,
                c.tenant_id, c.id, c.token_version, c.sealed.key_id,
                pqxx::binarystring(c.sealed.access_token_ct), bytes(c.sealed.refresh_token_ct),
                c.sealed.access_token_fp, c.sealed.refresh_token_fp, c.token_type, c.scope,
                to_micros(c.access_expires_at), c.access_lifetime, opt_us(c.refresh_expires_at),
                c.token_origin, c.row_id, expected_version, opt_us(c.next_refresh_at),
                c.refresh_lifetime);
  return first_row(r, to_connection);
}

bool delete_connection(tx_t& tx, const std::string& tenant, const std::string& id) {
  return !exec(tx, "DELETE FROM connections WHERE tenant_id = $1 AND id = $2 RETURNING 1", tenant,
               id)
              .empty();
}

std::optional<connection_record> cas_write_token_set(tx_t& tx, const std::string& tenant,
                                                     const std::string& id,
                                                     long long expected_row_id,
                                                     long long expected_version,
                                                     const token_write& w) {
  auto r = exec(tx,
                "UPDATE connections SET token_version = token_version + 1, key_id = $4, "
                "access_token_ct = $5, refresh_token_ct = NULLIF($6, ''::bytea), "
                "access_token_fp = $7, refresh_token_fp = $8, token_type = $9, scope = $10, "
                "access_expires_at = " +
                    ts_param(11) + ", access_lifetime = $12, refresh_expires_at = " + ts_param(13) +
                    ", last_refreshed_at = " + ts_param(14) +
                    ", consecutive_failures = CASE WHEN $19 THEN consecutive_failures + 1 ELSE "
                    "0 END, next_attempt_at = NULL, last_error = NULL, next_refresh_at = " +
                    ts_param(16) +
                    ", refresh_lifetime = $17, refresh_token_expiring = $18, claimed_by = NULL, "
                    "claim_expires_at = NULL, failing_since = CASE WHEN $19 THEN failing_since "
                    "END, failure_notified = $19 AND failure_notified, "
                    "updated_at = now() WHERE tenant_id = $1 AND id = $2 AND token_version = $3 "
                    "AND row_id = $15 AND status = 'active' RETURNING " +
                    kConnectionColumns,
                tenant, id, expected_version, w.sealed.key_id,
                pqxx::binarystring(w.sealed.access_token_ct), bytes(w.sealed.refresh_token_ct),
                w.sealed.access_token_fp, w.sealed.refresh_token_fp, w.token_type, w.scope,
                to_micros(w.access_expires_at), w.access_lifetime, opt_us(w.refresh_expires_at),
                to_micros(w.refreshed_at), expected_row_id, opt_us(w.next_refresh_at),
                w.refresh_lifetime, w.refresh_token_expiring, w.failed);
  return first_row(r, to_connection);
}

bool cas_reseal_connection(tx_t& tx, const connection_record& c, const sealed_tokens& s) {
  return !exec(tx,
               "UPDATE connections SET key_id = $5, access_token_ct = $6, "
               "refresh_token_ct = NULLIF($7, ''::bytea) WHERE tenant_id = $1 AND id = $2 "
               "AND token_version = $3 AND key_id = $4 RETURNING 1",
               c.tenant_id, c.id, c.token_version, c.sealed.key_id, s.key_id,
               pqxx::binarystring(s.access_token_ct), bytes(s.refresh_token_ct))
              .empty();
}

bool cas_reseal_provider(tx_t& tx, const provider_record& p, const std::string& new_kid,
                         const std::string& new_ct) {
  return !exec(tx,
               "UPDATE providers SET key_id = $5, client_secret_ct = $6 WHERE tenant_id = $1 "
               "AND id = $2 AND secret_version = $3 AND key_id = $4 RETURNING 1",
               p.tenant_id, p.id, p.secret_version, p.key_id, new_kid, pqxx::binarystring(new_ct))
              .empty();
}

std::vector<connection_record> lock_connections_to_rotate(tx_t& tx, const std::string& active_kid,
                                                          const std::vector<long long>& skip,
                                                          int limit) {
  return all_rows(
      exec(tx,
           "SELECT " + kConnectionColumns + " FROM connections WHERE key_id <> $1 AND " +
               in_skip_list(2) + " ORDER BY row_id LIMIT $3 FOR UPDATE SKIP LOCKED",
           active_kid, pg_bigint_array(skip), limit),
      to_connection);
}

std::vector<provider_record> lock_providers_to_rotate(tx_t& tx, const std::string& active_kid,
                                                      const std::vector<long long>& skip,
                                                      int limit) {
  return all_rows(exec(tx,
                       "SELECT " + kProviderColumns + " FROM providers WHERE key_id <> $1 AND " +
                           in_skip_list(2) + " ORDER BY row_id LIMIT $3 FOR UPDATE SKIP LOCKED",
                       active_kid, pg_bigint_array(skip), limit),
                  to_provider);
}

long long count_connections_to_rotate(tx_t& tx, const std::string& active_kid,
                                      const std::vector<long long>& skip) {
  return exec(tx, "SELECT count(*) FROM connections WHERE key_id <> $1 AND " + in_skip_list(2),
              active_kid, pg_bigint_array(skip))[0][0]
      .as<long long>();
}

rotation_counts count_not_under(tx_t& tx, const std::string& active_kid) {
  auto r = exec(tx,
                "SELECT (SELECT count(*) FROM connections WHERE key_id <> $1), "
                "(SELECT count(*) FROM providers WHERE key_id <> $1)",
                active_kid);
  return {r[0][0].as<long long>(), r[0][1].as<long long>()};
}

bool mark_needs_reauth(tx_t& tx, const std::string& tenant, const std::string& id,
                       long long expected_row_id, long long expected_version,
                       const std::string& reason, const std::string& last_error_json) {
  const bool changed =
      !exec(tx,
            "UPDATE connections SET status = 'needs_reauth', reauth_reason = $3, "
            "last_error = $4::jsonb, consecutive_failures = consecutive_failures + 1, "
            "next_refresh_at = NULL, claimed_by = NULL, claim_expires_at = NULL, "
            "updated_at = now() WHERE tenant_id = $1 AND id = $2 AND row_id = $5 "
            "AND token_version = $6 AND status = 'active' RETURNING 1",
            tenant, id, reason, last_error_json, expected_row_id, expected_version)
           .empty();
  // Only the change from active writes the event: one per failure episode.
  if (changed) enqueue_webhook(tx, tenant, id, "connection.reauth_required", std::nullopt);
  return changed;
}

bool record_refresh_failure(tx_t& tx, const std::string& tenant, const std::string& id,
                            const std::string& last_error_json,
                            const std::optional<sys_time>& next_attempt_at,
                            sys_time next_refresh_at) {
  // The episode began at its first failure (failing_since). It is worth telling the tenant once
  // it has lasted the provider's refresh-ahead window (the time tokend gives itself to refresh
  // before expiry) or the access token has expired meanwhile; `prev` is the row before this
  // update, locked so that two failures recorded at once (the fallback persist path) see each
  // other, and exactly one failure of the episode sees failure_notified turn true.
  auto r = exec(
      tx,
      "WITH prev AS (SELECT row_id, failure_notified FROM connections WHERE tenant_id = $1 AND "
      "id = $2 FOR UPDATE) UPDATE connections c SET last_error = $3::jsonb, consecutive_failures = "
      "c.consecutive_failures + 1, next_attempt_at = " +
          ts_param(4) +
          ", next_refresh_at = CASE WHEN c.status = 'active' AND c.refresh_token_ct "
          "IS NOT NULL THEN " +
          ts_param(5) +
          " END, claimed_by = NULL, claim_expires_at = NULL, failing_since = "
          "coalesce(c.failing_since, now()), failure_notified = c.failure_notified OR (c.status = "
          "'active' AND (now() - coalesce(c.failing_since, now()) >= make_interval(secs => "
          "p.refresh_ahead) OR c.access_expires_at <= now())), updated_at = now() FROM prev, "
          "providers p WHERE c.row_id = prev.row_id AND p.tenant_id = c.tenant_id AND p.id = "
          "c.provider_id RETURNING c.failure_notified AND NOT prev.failure_notified",
      tenant, id, last_error_json, opt_us(next_attempt_at), to_micros(next_refresh_at));
  const bool notify = !r.empty() && r[0][0].as<bool>();
  if (notify) enqueue_webhook(tx, tenant, id, "connection.refresh_failed", std::nullopt);
  return notify;
}

void restamp_connection(tx_t& tx, long long row_id,
                        const std::optional<sys_time>& next_refresh_at) {
  exec(tx,
       "UPDATE connections SET next_refresh_at = " + ts_param(2) +
           ", claimed_by = NULL, claim_expires_at = NULL WHERE row_id = $1",
       row_id, opt_us(next_refresh_at));
}

std::vector<due_claim> claim_due(tx_t& tx, const std::string& instance, int limit,
                                 long long lease_s) {
  // The lease is committed and the row locks released with this statement's transaction: the
  // engine then locks the row on its own session. Rows locked by a refresh in progress are
  // skipped, and so are providers on cool-down; a claim whose lease has expired (a dead
  // instance) is claimable again. The claim changes no indexed column, so its update can be
  // HOT; live claims at the head of the index are at most the instances' scheduler slots.
  auto r = exec(tx,
                "WITH due AS (SELECT c.row_id FROM connections c WHERE c.status = 'active' "
                "AND c.next_refresh_at <= now() AND (c.claim_expires_at IS NULL OR "
                "c.claim_expires_at <= now()) AND NOT EXISTS (SELECT 1 FROM providers p WHERE "
                "p.tenant_id = c.tenant_id AND p.id = c.provider_id AND p.cooldown_until > now()) "
                "ORDER BY c.next_refresh_at LIMIT $1 FOR UPDATE OF c SKIP LOCKED) "
                "UPDATE connections c SET claimed_by = $2, claim_expires_at = now() + $3 * "
                "interval '1 second' FROM due WHERE c.row_id = due.row_id RETURNING c.tenant_id, "
                "c.id, c.row_id, c.provider_id, c.token_version, " TS("c.next_refresh_at"),
                limit, instance, lease_s);
  std::vector<due_claim> out;
  out.reserve(r.size());
  for (const auto& row : r) {
    out.push_back(due_claim{row[0].as<std::string>(), row[1].as<std::string>(),
                            row[2].as<long long>(), row[3].as<std::string>(),
                            row[4].as<long long>(), ts(row[5])});
  }
  return out;
}

void release_claims(tx_t& tx, const std::string& instance, const std::vector<long long>& row_ids,
                    long long delay_ms) {
  if (row_ids.empty()) return;
  exec(tx,
       "UPDATE connections SET claimed_by = NULL, claim_expires_at = NULL, next_refresh_at = "
       "now() + $3 * interval '1 millisecond' WHERE row_id = ANY($1::bigint[]) AND "
       "claimed_by = $2 AND status = 'active'",
       pg_bigint_array(row_ids), instance, delay_ms);
}

long long count_due_unclaimed(tx_t& tx, long long cap) {
  return exec(tx,
              "SELECT count(*) FROM (SELECT 1 FROM connections WHERE status = 'active' AND "
              "next_refresh_at <= now() AND (claim_expires_at IS NULL OR claim_expires_at <= "
              "now()) LIMIT $1) d",
              cap)[0][0]
      .as<long long>();
}

void set_last_forced_refresh(tx_t& tx, const std::string& tenant, const std::string& id,
                             sys_time at) {
  exec(tx,
       "UPDATE connections SET last_forced_refresh_at = " + ts_param(3) +
           " WHERE tenant_id = $1 AND id = $2",
       tenant, id, to_micros(at));
}

std::optional<policy::open_marker> find_open_attempt(tx_t& tx, long long connection_row_id,
                                                     long long token_version) {
  auto r = exec(tx,
                "SELECT id, expires_at <= now() FROM refresh_attempts WHERE connection_row_id = $1 "
                "AND token_version = $2 AND state = 'open'",
                connection_row_id, token_version);
  if (r.empty()) return std::nullopt;
  return policy::open_marker{r[0][0].as<long long>(), r[0][1].as<bool>()};
}

long long open_attempt(tx_t& tx, const std::string& tenant, long long connection_row_id,
                       long long token_version, const std::string& instance,
                       const std::string& request_id, long long window_s) {
  // An expired marker's request can no longer be answered: whatever it did is in doubt.
  exec(tx,
       "UPDATE refresh_attempts SET state = 'in_doubt', closed_at = now() "
       "WHERE connection_row_id = $1 AND token_version = $2 AND state = 'open' "
       "AND expires_at <= now()",
       connection_row_id, token_version);
  return exec(tx,
              "INSERT INTO refresh_attempts (tenant_id, connection_row_id, token_version, "
              "instance, request_id, attempt, expires_at) VALUES ($1, $2, $3, $4, $5, 1, "
              "now() + $6 * interval '1 second') RETURNING id",
              tenant, connection_row_id, token_version, instance, request_id, window_s)[0][0]
      .as<long long>();
}

bool renew_attempt(tx_t& tx, long long attempt_id, int attempt, long long window_s) {
  return !exec(tx,
               "UPDATE refresh_attempts SET attempt = $2, expires_at = now() + $3 * interval "
               "'1 second' WHERE id = $1 AND state = 'open' AND expires_at > now() RETURNING 1",
               attempt_id, attempt, window_s)
              .empty();
}

void close_attempt(tx_t& tx, long long attempt_id, const std::string& state) {
  exec(tx, "UPDATE refresh_attempts SET state = $2, closed_at = now() WHERE id = $1", attempt_id,
       state);
}

bool attempt_settled(tx_t& tx, long long attempt_id) {
  auto r =
      exec(tx, "SELECT state <> 'open' OR expires_at <= now() FROM refresh_attempts WHERE id = $1",
           attempt_id);
  return r.empty() || r[0][0].as<bool>();
}

bool has_unresolved_attempt(tx_t& tx, long long connection_row_id, long long token_version,
                            long long except_id) {
  return !exec(tx,
               "SELECT 1 FROM refresh_attempts WHERE connection_row_id = $1 AND token_version = $2 "
               "AND state IN ('open', 'in_doubt') AND id <> $3 LIMIT 1",
               connection_row_id, token_version, except_id)
              .empty();
}

event_record append_event(tx_t& tx, const event_record& e) {
  auto r = exec(tx,
                "INSERT INTO connection_events (tenant_id, connection_id, connection_row_id, "
                "trigger, outcome, attempt, http_status, oauth_error, description, "
                "token_version_before, token_version_after, duration_ms, joined_count, "
                "request_id, instance, environment) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, "
                "$10, $11, $12, $13, $14, $15, $16) RETURNING " +
                    kEventColumns,
                e.tenant_id, e.connection_id, e.connection_row_id, e.trigger, e.outcome, e.attempt,
                e.http_status, e.oauth_error, e.description, e.token_version_before,
                e.token_version_after, e.duration_ms, e.joined_count, e.request_id, e.instance,
                e.environment);
  return to_event(r[0]);
}

std::vector<event_record> list_events(tx_t& tx, const std::string& tenant, long long row_id,
                                      int limit) {
  return all_rows(exec(tx,
                       "SELECT " + kEventColumns +
                           " FROM connection_events WHERE tenant_id = $1 AND "
                           "connection_row_id = $2 ORDER BY id DESC LIMIT $3",
                       tenant, row_id, limit),
                  to_event);
}

}  // namespace tokend::store
