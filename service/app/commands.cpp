#include "app/commands.hpp"

#include <cstdio>
#include <iostream>
#include <pqxx/pqxx>
#include <string>
#include <vector>

#include "app/config.hpp"
#include "app/serve.hpp"
#include "crypto/crypto.hpp"
#include "observability/log.hpp"
#include "store/db_pool.hpp"
#include "store/key_rotation.hpp"
#include "store/migrations.hpp"

namespace tokend::app {
namespace {

constexpr const char* kUsage =
    "usage: tokend <command> [flags]\n"
    "commands:\n"
    "  serve [--migrate]   run the API (with --migrate: apply migrations first)\n"
    "  migrate             apply pending migrations and exit\n"
    "  rotate-keys [--batch=N]  re-seal every secret under the active master key (online,\n"
    "                      resumable; N rows per transaction, default 100)\n"
    "  version             print the version\n"
    "flags: --listen=HOST:PORT overrides TOKEND_LISTEN\n"
    "configuration is read from TOKEND_* environment variables (see README)\n";

int run_migrate(const config& c) {
  try {
    pqxx::connection conn(
        store::with_connection_params(c.database_url, "tokend-migrate", std::chrono::seconds(10)));
    auto r = store::migrate(conn);
    log::write(
        log::level::info, "migrations applied",
        {{"applied", r.applied}, {"applied_count", r.applied.size()}, {"known", r.total_known}});
    return 0;
  } catch (const std::exception& e) {
    log::write(log::level::error, "migration failed", {{"error", e.what()}});
    return 1;
  }
}

int run_rotate_keys(const config& c, int batch) {
  const crypto::keyring keys(c.master_keys);
  try {
    pqxx::connection conn(store::with_connection_params(c.database_url, "tokend-rotate-keys",
                                                        std::chrono::seconds(10)));
    auto p = store::rotate_keys(conn, keys, batch, [](const store::rotation_progress& p) {
      std::printf("rotate-keys: %lld/%lld rows re-sealed (%.0f rows/s)\n", p.done, p.total,
                  p.rate_per_s);
      std::fflush(stdout);
    });
    log::write(log::level::info, "key rotation finished",
               {{"active_key", keys.active_kid()},
                {"done", p.done},
                {"total", p.total},
                {"unreadable", p.unreadable},
                {"lost_races", p.lost_races}});
    if (p.unreadable > 0) {
      std::fprintf(stderr,
                   "rotate-keys: %lld rows are sealed under a key that is not configured or do "
                   "not open; configure that key and run again\n",
                   p.unreadable);
      return 1;
    }
    return 0;
  } catch (const std::exception& e) {
    log::write(log::level::error, "key rotation failed", {{"error", e.what()}});
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
  if (command != "serve" && command != "migrate" && command != "rotate-keys") {
    std::fprintf(stderr, "tokend: unknown command '%s'\n%s", command.c_str(), kUsage);
    return 2;
  }

  auto env = tokend_environment();
  bool migrate_first = false;
  int batch = 100;
  for (std::size_t i = 1; i < args.size(); ++i) {
    const auto& a = args[i];
    if (a == "--migrate" && command == "serve") {
      migrate_first = true;
    } else if (a.rfind("--batch=", 0) == 0 && command == "rotate-keys") {
      batch = std::atoi(a.c_str() + 8);
      if (batch < 1 || batch > 10000) {
        std::fprintf(stderr, "tokend: --batch must be 1..10000\n");
        return 2;
      }
    } else if (a.rfind("--listen=", 0) == 0) {
      env["TOKEND_LISTEN"] = a.substr(9);
    } else {
      std::fprintf(stderr, "tokend: unknown flag '%s' for %s\n", a.c_str(), command.c_str());
      return 2;
    }
  }

  auto parsed = parse_config(env, command == "migrate" ? needs::database : needs::serving);
  if (parsed.error) {
    std::fprintf(stderr, "tokend: invalid configuration: %s\n", parsed.error->line().c_str());
    return 2;
  }
  const auto& c = *parsed.cfg;
  log::init(c.log_format, c.log_level, c.instance_id, c.environment, c.log_queue);

  if (command == "migrate") return run_migrate(c);
  if (command == "rotate-keys") return run_rotate_keys(c, batch);
  if (migrate_first) {
    if (int rc = run_migrate(c); rc != 0) return rc;
  }
  return serve(c);
}

}  // namespace tokend::app
