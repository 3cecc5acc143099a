#include "app/commands.hpp"

#include <cstdio>
#include <iostream>
#include <pqxx/pqxx>
#include <string>
#include <vector>

#include "app/config.hpp"
#include "app/serve.hpp"
#include "observability/log.hpp"
#include "store/db_pool.hpp"
#include "store/migrations.hpp"

namespace tokend::app {
namespace {

constexpr const char* kUsage =
    "usage: tokend <command> [flags]\n"
    "commands:\n"
    "  serve [--migrate]   run the API (with --migrate: apply migrations first)\n"
    "  migrate             apply pending migrations and exit\n"
    "  version             print the version\n"
    "flags: --listen=HOST:PORT overrides TOKEND_LISTEN\n"
    "configuration is read from TOKEND_* environment variables (see README)\n";

int run_migrate(const config& c) {
  try {
    pqxx::connection conn(
        store::with_connection_params(c.database_url, "tokend-migrate", std::chrono::seconds(10)));
    auto r = store::migrate(conn);
    log::write(log::level::info, "migrations applied",
               {{"applied", r.applied}, {"applied_count", r.applied.size()},
                {"known", r.total_known}});
    return 0;
  } catch (const std::exception& e) {
    log::write(log::level::error, "migration failed", {{"error", e.what()}});
    return 1;
  }
}

}  // namespace

int tokend_main(int argc, char** argv) {
  std::vector<std::string> args(argv + 1, argv + argc);
  if (args.empty() || args[0] == "--help" || args[0] == "-h" || args[0] == "help") {
    std::fputs(kUsage, args.empty() ? stderr : stdout);
    return args.empty() ? 2 : 0;
  }
  const std::string command = args[0];
  if (command == "version" || command == "--version") {
    std::printf("tokend %s\n", TOKEND_VERSION);
    return 0;
  }
  if (command != "serve" && command != "migrate") {
    std::fprintf(stderr, "tokend: unknown command '%s'\n%s", command.c_str(), kUsage);
    return 2;
  }

  auto env = tokend_environment();
  bool migrate_first = false;
  for (std::size_t i = 1; i < args.size(); ++i) {
    const auto& a = args[i];
    if (a == "--migrate" && command == "serve") {
      migrate_first = true;
    } else if (a.rfind("--listen=", 0) == 0) {
      env["TOKEND_LISTEN"] = a.substr(9);
    } else {
      std::fprintf(stderr, "tokend: unknown flag '%s' for %s\n", a.c_str(), command.c_str());
      return 2;
    }
  }

  auto parsed = parse_config(env, command == "serve" ? needs::serving : needs::database);
  if (parsed.error) {
    std::fprintf(stderr, "tokend: invalid configuration: %s\n", parsed.error->line().c_str());
    return 2;
  }
  const auto& c = *parsed.cfg;
  log::init(c.log_format, c.log_level, c.instance_id, c.environment);

  if (command == "migrate") return run_migrate(c);
  if (migrate_first) {
    if (int rc = run_migrate(c); rc != 0) return rc;
  }
  return serve(c);
}

}  // namespace tokend::app
