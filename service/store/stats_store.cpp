#include "store/stats_store.hpp"

#include <algorithm>
#include <tuple>

#include "store/sql.hpp"

namespace tokend::store {
using namespace sql;

namespace {
refresh_counts& add(refresh_counts& c, const std::string& outcome, long long n) {
  if (outcome == "refreshed") c.ok += n;
  if (outcome == "transient") c.transient += n;
  if (outcome == "invalid_grant") c.invalid_grant += n;
  if (outcome == "config_error") c.config_error += n;
  if (outcome == "provider_error") c.provider_error += n;
  return c;
}
}  // namespace

tenant_stats get_tenant_stats(tx_t& tx, const std::string& tenant) {
  tenant_stats s;
  auto r = exec(tx,
                "SELECT"
                " count(*) FILTER (WHERE status = 'active'),"
                " count(*) FILTER (WHERE status = 'needs_reauth'),"
                " count(*) FILTER (WHERE status = 'active' AND refresh_token_ct IS NOT NULL"
                "   AND refresh_expires_at > now()"
                "   AND refresh_expires_at < now() + interval '7 days')"
                " FROM connections WHERE tenant_id = $1",
                tenant);
  s.active = r[0][0].as<long long>();
  s.needs_reauth = r[0][1].as<long long>();
  s.refresh_tokens_expiring_within_7d = r[0][2].as<long long>();
  // One range scan of connection_events_stats (tenant_id, at, outcome): index-only.
  r = exec(tx,
           "SELECT outcome, count(*) FILTER (WHERE at >= now() - interval '1 hour'), count(*)"
           " FROM connection_events"
           " WHERE tenant_id = $1 AND at >= now() - interval '1 day'"
           "   AND outcome IN ('refreshed', 'transient', 'invalid_grant', 'config_error',"
           "                   'provider_error')"
           " GROUP BY outcome",
           tenant);
  for (const auto& row : r) {
    const auto outcome = row[0].as<std::string>();
    add(s.last_hour, outcome, row[1].as<long long>());
    add(s.last_day, outcome, row[2].as<long long>());
  }
  r = exec(tx,
           "SELECT count(*) FILTER (WHERE created_at >= now() - interval '1 day'),"
           " count(*) FILTER (WHERE status = 'completed'"
           "   AND completed_at >= now() - interval '1 day')"
           " FROM reauth_links WHERE tenant_id = $1"
           "   AND (created_at >= now() - interval '1 day'"
           "        OR completed_at >= now() - interval '1 day')",
           tenant);
  s.links_created = r[0][0].as<long long>();
  s.links_completed = r[0][1].as<long long>();
  return s;
}

void merge_readers(tx_t& tx, const std::vector<reader_reads>& batch) {
  // Rows in one order everywhere: two instances' flushes cannot deadlock on them.
  std::vector<const reader_reads*> sorted;
  sorted.reserve(batch.size());
  for (const auto& b : batch) sorted.push_back(&b);
  std::sort(sorted.begin(), sorted.end(), [](const reader_reads* a, const reader_reads* b) {
    return std::tie(a->tenant_id, a->connection_id, a->key_id) <
           std::tie(b->tenant_id, b->connection_id, b->key_id);
  });
  for (const auto* p : sorted) {
    const auto& b = *p;
    exec(tx,
         "INSERT INTO connection_readers (connection_row_id, tenant_id, key_id, reads,"
         " first_read_at, last_read_at)"
         " SELECT c.row_id, c.tenant_id, $3, $4, " +
             ts_param(5) + ", " + ts_param(6) +
             " FROM connections c WHERE c.tenant_id = $1 AND c.id = $2"
             " ON CONFLICT (connection_row_id, key_id) DO UPDATE SET"
             " reads = connection_readers.reads + EXCLUDED.reads,"
             " first_read_at = least(connection_readers.first_read_at, EXCLUDED.first_read_at),"
             " last_read_at = greatest(connection_readers.last_read_at, EXCLUDED.last_read_at)",
         b.tenant_id, b.connection_id, b.key_id, b.reads, to_micros(b.first_read_at),
         to_micros(b.last_read_at));
  }
}

std::optional<std::vector<reader_record>> list_readers(tx_t& tx, const std::string& tenant,
                                                       const std::string& connection_id) {
  auto c = exec(tx, "SELECT row_id FROM connections WHERE tenant_id = $1 AND id = $2", tenant,
                connection_id);
  if (c.empty()) return std::nullopt;
  auto r = exec(tx,
                "SELECT r.key_id, k.name, r.reads, " TS("r.first_read_at") ", " TS(
                    "r.last_read_at") " FROM connection_readers r"
                                      " LEFT JOIN api_keys k ON k.tenant_id = r.tenant_id AND "
                                      "k.id = r.key_id"
                                      " WHERE r.connection_row_id = $1"
                                      " ORDER BY r.last_read_at DESC, r.key_id",
                c[0][0].as<long long>());
  return all_rows(r, [](const pqxx::row& row) {
    return reader_record{row[0].as<std::string>(), opt_str(row[1]), row[2].as<long long>(),
                         ts(row[3]), ts(row[4])};
  });
}

}  // namespace tokend::store
