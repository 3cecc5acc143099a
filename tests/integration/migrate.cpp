// Three `tokend migrate` processes started together apply each migration exactly once.
#include <catch2/catch.hpp>
#include <filesystem>
#include <pqxx/pqxx>
#include <sstream>

#include "store/migrations.hpp"
#include "support/fixtures.hpp"

using namespace tokend::test;
using namespace std::chrono_literals;

namespace {

int applied_count_in(const std::string& output) {
  std::istringstream in(output);
  std::string line;
  while (std::getline(in, line)) {
    auto j = nlohmann::json::parse(line, nullptr, false);
    if (!j.is_discarded() && j.value("msg", "") == "migrations applied") {
      return j["applied_count"].get<int>();
    }
  }
  return -1;
}

}  // namespace

TEST_CASE("concurrent migrate processes apply each migration exactly once", "[migrate]") {
  scratch_database db;
  auto dir = temp_dir("tokend-migrate");
  std::vector<std::unique_ptr<child_process>> procs;
  for (int i = 0; i < 3; ++i) {
    procs.push_back(std::make_unique<child_process>(
        std::vector<std::string>{TOKEND_BINARY, "migrate"},
        std::map<std::string, std::string>{{"TOKEND_DATABASE_URL", db.url()},
                                           {"TOKEND_LOG_FORMAT", "json"}},
        dir + "/m" + std::to_string(i) + ".log"));
  }
  int total_applied = 0;
  for (auto& p : procs) {
    auto code = p->wait(60s);
    INFO(p->output());
    REQUIRE(code.has_value());
    CHECK(*code == 0);
    auto n = applied_count_in(p->output());
    CHECK(n >= 0);
    total_applied += n;
  }
  const auto known = static_cast<int>(tokend::store::known_migrations().size());
  CHECK(total_applied == known);

  pqxx::connection c(db.url());
  pqxx::nontransaction tx(c);
  auto rows = tx.exec("SELECT version, count(*) FROM schema_migrations GROUP BY version");
  CHECK(static_cast<int>(rows.size()) == known);
  for (const auto& row : rows) CHECK(row[1].as<int>() == 1);

  // Re-running is a no-op.
  auto again = run_command({TOKEND_BINARY, "migrate"},
                           {{"TOKEND_DATABASE_URL", db.url()}, {"TOKEND_LOG_FORMAT", "json"}});
  CHECK(again.exit_code == 0);
  CHECK(applied_count_in(again.output) == 0);
  std::filesystem::remove_all(dir);
}

TEST_CASE("migrate against an unreachable database fails with exit 1", "[migrate]") {
  auto r = run_command({TOKEND_BINARY, "migrate"},
                       {{"TOKEND_DATABASE_URL", "postgresql://postgres@/x?host=/nonexistent"}});
  CHECK(r.exit_code == 1);
  CHECK(r.output.find("migration failed") != std::string::npos);
}
