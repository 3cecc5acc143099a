#include "store/migrations.hpp"

#include <pqxx/pqxx>

#include "store/db_pool.hpp"

namespace tokend::store {
namespace {

// Arbitrary constant naming tokend's migration lock ("tokend" in ASCII).
constexpr long long kMigrationLockKey = 0x746f6b656e64;

}  // namespace

std::set<int> applied_versions(pqxx::connection_base& conn) {
  pqxx::nontransaction tx(conn);
  count_statement();
  auto exists = tx.exec1("SELECT to_regclass('public.schema_migrations') IS NOT NULL");
  std::set<int> out;
  if (!exists[0].as<bool>()) return out;
  count_statement();
  for (const auto& row : tx.exec("SELECT version FROM schema_migrations")) {
    out.insert(row[0].as<int>());
  }
  return out;
}

std::vector<int> pending_versions(pqxx::connection_base& conn) {
  const auto applied = applied_versions(conn);
  std::vector<int> out;
  for (const auto& m : known_migrations()) {
    if (!applied.count(m.version)) out.push_back(m.version);
  }
  return out;
}

migrate_result migrate(pqxx::connection_base& conn) {
  migrate_result result;
  result.total_known = static_cast<int>(known_migrations().size());
  {
    pqxx::nontransaction tx(conn);
    tx.exec("SELECT pg_advisory_lock(" + std::to_string(kMigrationLockKey) + ")");
  }
  try {
    {
      pqxx::work tx(conn);
      tx.exec(
          "CREATE TABLE IF NOT EXISTS schema_migrations ("
          " version integer PRIMARY KEY,"
          " name text NOT NULL,"
          " applied_at timestamptz NOT NULL DEFAULT now())");
      tx.commit();
    }
    const auto applied = applied_versions(conn);
    for (const auto& m : known_migrations()) {
      if (applied.count(m.version)) continue;
      pqxx::work tx(conn);
      tx.exec(m.sql);
      tx.exec_params("INSERT INTO schema_migrations (version, name) VALUES ($1, $2)", m.version,
                     m.name);
      tx.commit();
      result.applied.push_back(m.version);
    }
  } catch (...) {
    pqxx::nontransaction tx(conn);
    tx.exec("SELECT pg_advisory_unlock(" + std::to_string(kMigrationLockKey) + ")");
    throw;
  }
  pqxx::nontransaction tx(conn);
  tx.exec("SELECT pg_advisory_unlock(" + std::to_string(kMigrationLockKey) + ")");
  return result;
}

}  // namespace tokend::store
