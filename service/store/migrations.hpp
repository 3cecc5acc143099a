// Schema migrations: migrations/NNNN_name.sql compiled into the binary, applied in order, each
// in its own transaction, under a PostgreSQL advisory lock so concurrent instances apply each
// exactly once. All functions here block: call them from a DB thread or a subcommand.
#pragma once
#include <set>
#include <string>
#include <vector>

namespace pqxx {
class connection_base;
}

namespace tokend::store {

struct migration {
  int version;
  std::string name;
  std::string sql;
};

// Every migration this binary knows, ascending by version (generated at build time).
const std::vector<migration>& known_migrations();

// Versions recorded in schema_migrations (empty when the table does not exist).
std::set<int> applied_versions(pqxx::connection_base& conn);

// Migrations this binary knows that the database has not applied.
std::vector<int> pending_versions(pqxx::connection_base& conn);

struct migrate_result {
  std::vector<int> applied;  // versions applied by this call
  int total_known = 0;
};

// Applies pending migrations under the advisory lock; throws on any SQL failure (the failing
// migration's transaction is rolled back; earlier ones stay applied).
migrate_result migrate(pqxx::connection_base& conn);

}  // namespace tokend::store
