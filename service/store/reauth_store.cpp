#include "store/reauth_store.hpp"

#include "store/sql.hpp"

namespace tokend::store {
namespace {

using namespace sql;

const std::string kLinkColumns =
    "tenant_id, id, kind, connection_id, connection_row_id, provider_id, reason, return_url, "
    "status, last_error, request_id, " TS("created_at") ", " TS("expires_at") ", " TS(
        "opened_at") ", " TS("started_at") ", " TS("completed_at") ", " TS("ended_at") ", "
    "expires_at <= now()";

reauth_link_record to_link(const pqxx::row& r) {
  reauth_link_record l;
  l.tenant_id = r[0].as<std::string>();
  l.id = r[1].as<std::string>();
  l.kind = r[2].as<std::string>();
  l.connection_id = r[3].as<std::string>();
  if (!r[4].is_null()) l.connection_row_id = r[4].as<long long>();
  l.provider_id = r[5].as<std::string>();
  l.reason = r[6].as<std::string>();
  l.return_url = opt_str(r[7]);
  l.status = r[8].as<std::string>();
  l.last_error = opt_str(r[9]);
  l.request_id = opt_str(r[10]);
  l.created_at = ts(r[11]);
  l.expires_at = ts(r[12]);
  l.opened_at = opt_ts(r[13]);
  l.started_at = opt_ts(r[14]);
  l.completed_at = opt_ts(r[15]);
  l.ended_at = opt_ts(r[16]);
  l.expired = r[17].as<bool>();
  return l;
}

const std::string kStateColumns =
    "tenant_id, link_id, key_id, verifier_ct, redirect_uri, " TS("created_at") ", " TS(
        "used_at") ", outcome, outcome_page, expires_at <= now(), "
    "coalesce((extract(epoch from now() - used_at) * 1000)::bigint, 0)";

reauth_state_record to_state(const pqxx::row& r) {
  reauth_state_record s;
  s.tenant_id = r[0].as<std::string>();
  s.link_id = r[1].as<std::string>();
  s.key_id = opt_str(r[2]);
  s.verifier_ct = opt_bytes(r[3]);
  s.redirect_uri = r[4].as<std::string>();
  s.created_at = ts(r[5]);
  s.used_at = opt_ts(r[6]);
  s.outcome = opt_str(r[7]);
  s.outcome_page = opt_str(r[8]);
  s.expired = r[9].as<bool>();
  s.used_age_ms = r[10].as<long long>();
  return s;
}

// The statuses of a link that is still usable (if it has not expired).
constexpr const char* kUsable = "status IN ('open', 'opened', 'declined', 'failed')";

}  // namespace

std::vector<std::string> get_return_url_origins(tx_t& tx, const std::string& tenant) {
  auto r = exec(tx,
                "SELECT array_to_json(return_url_origins)::text FROM tenant_settings "
                "WHERE tenant_id = $1",
                tenant);
  if (r.empty()) return {};
  return str_array(r[0][0]);
}

void put_return_url_origins(tx_t& tx, const std::string& tenant,
                            const std::vector<std::string>& origins) {
  exec(tx,
       "INSERT INTO tenant_settings (tenant_id, return_url_origins) VALUES ($1, " +
           array_param(2) +
           ") ON CONFLICT (tenant_id) DO UPDATE SET return_url_origins = "
           "EXCLUDED.return_url_origins, updated_at = now()",
       tenant, json_array(origins));
}

std::string tenant_name(tx_t& tx, const std::string& tenant) {
  auto r = exec(tx, "SELECT name FROM tenants WHERE id = $1", tenant);
  return r.empty() ? tenant : r[0][0].as<std::string>();
}

reauth_link_record insert_link(tx_t& tx, const reauth_link_record& l, const std::string& token_hash,
                               long long expires_in_s) {
  // Links of one connection id are minted one at a time, so the newest always supersedes the
  // others (a connect link has no connection row to lock).
  exec(tx, "SELECT pg_advisory_xact_lock(hashtextextended($1 || '/' || $2, 7))", l.tenant_id,
       l.connection_id);
  exec(tx,
       std::string("UPDATE reauth_links SET status = 'superseded', ended_at = now() "
                   "WHERE tenant_id = $1 AND connection_id = $2 AND expires_at > now() AND ") +
           kUsable,
       l.tenant_id, l.connection_id);
  auto r = exec(tx,
                "INSERT INTO reauth_links (tenant_id, id, token_hash, kind, connection_id, "
                "connection_row_id, provider_id, reason, return_url, request_id, expires_at) "
                "VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, now() + $11 * interval '1 "
                "second') RETURNING " +
                    kLinkColumns,
                l.tenant_id, l.id, pqxx::binarystring(token_hash), l.kind, l.connection_id,
                l.connection_row_id, l.provider_id, l.reason, l.return_url, l.request_id,
                expires_in_s);
  return to_link(r[0]);
}

std::optional<reauth_link_record> find_link_by_token(tx_t& tx, const std::string& token_hash,
                                                     bool for_update) {
  return first_row(exec(tx,
                        "SELECT " + kLinkColumns + " FROM reauth_links WHERE token_hash = $1" +
                            (for_update ? " FOR UPDATE" : ""),
                        pqxx::binarystring(token_hash)),
                   to_link);
}

std::optional<reauth_link_record> get_link(tx_t& tx, const std::string& tenant,
                                           const std::string& id, bool for_update) {
  return first_row(exec(tx,
                        "SELECT " + kLinkColumns +
                            " FROM reauth_links WHERE tenant_id = $1 AND id = $2" +
                            (for_update ? " FOR UPDATE" : ""),
                        tenant, id),
                   to_link);
}

std::vector<reauth_link_record> list_links(tx_t& tx, const std::string& tenant,
                                           const std::string& connection_id, int limit) {
  return all_rows(exec(tx,
                       "SELECT " + kLinkColumns +
                           " FROM reauth_links WHERE tenant_id = $1 AND connection_id = $2 "
                           "ORDER BY created_at DESC, id DESC LIMIT $3",
                       tenant, connection_id, limit),
                  to_link);
}

bool mark_link_opened(tx_t& tx, const std::string& tenant, const std::string& id) {
  return !exec(tx,
               "UPDATE reauth_links SET status = 'opened', opened_at = now() WHERE tenant_id = $1 "
               "AND id = $2 AND status = 'open' AND opened_at IS NULL RETURNING 1",
               tenant, id)
              .empty();
}

void mark_link_started(tx_t& tx, const std::string& tenant, const std::string& id) {
  exec(tx,
       "UPDATE reauth_links SET started_at = now(), opened_at = coalesce(opened_at, now()), "
       "status = CASE WHEN status = 'open' THEN 'opened' ELSE status END "
       "WHERE tenant_id = $1 AND id = $2",
       tenant, id);
}

void end_link_attempt(tx_t& tx, const std::string& tenant, const std::string& id,
                      const std::string& status, const std::string& last_error) {
  exec(tx,
       "UPDATE reauth_links SET status = $3, last_error = $4, ended_at = now() "
       "WHERE tenant_id = $1 AND id = $2 AND status NOT IN ('completed', 'superseded')",
       tenant, id, status, last_error);
}

void complete_link(tx_t& tx, const std::string& tenant, const std::string& id,
                   const std::string& connection_id) {
  exec(tx,
       "UPDATE reauth_links SET status = 'completed', completed_at = now(), last_error = NULL "
       "WHERE tenant_id = $1 AND id = $2",
       tenant, id);
  exec(tx,
       std::string("UPDATE reauth_links SET status = 'superseded', ended_at = now() "
                   "WHERE tenant_id = $1 AND connection_id = $2 AND id <> $3 AND ") +
           kUsable,
       tenant, connection_id, id);
}

void insert_state(tx_t& tx, const std::string& state_hash, const reauth_state_record& s,
                  long long valid_s) {
  exec(tx,
       "INSERT INTO reauth_states (state_hash, tenant_id, link_id, key_id, verifier_ct, "
       "redirect_uri, expires_at) VALUES ($1, $2, $3, $4, NULLIF($5, ''::bytea), $6, "
       "now() + $7 * interval '1 second')",
       pqxx::binarystring(state_hash), s.tenant_id, s.link_id, s.key_id, bytes(s.verifier_ct),
       s.redirect_uri, valid_s);
}

std::optional<reauth_state_record> get_state(tx_t& tx, const std::string& state_hash,
                                             bool for_update) {
  return first_row(exec(tx,
                        "SELECT " + kStateColumns + " FROM reauth_states WHERE state_hash = $1" +
                            (for_update ? " FOR UPDATE" : ""),
                        pqxx::binarystring(state_hash)),
                   to_state);
}

void use_state(tx_t& tx, const std::string& state_hash) {
  exec(tx, "UPDATE reauth_states SET used_at = now() WHERE state_hash = $1",
       pqxx::binarystring(state_hash));
}

void finish_state(tx_t& tx, const std::string& state_hash, const std::string& outcome,
                  const std::string& page) {
  exec(tx,
       "UPDATE reauth_states SET used_at = coalesce(used_at, now()), outcome = $2, "
       "outcome_page = $3 WHERE state_hash = $1",
       pqxx::binarystring(state_hash), outcome, page);
}

}  // namespace tokend::store
