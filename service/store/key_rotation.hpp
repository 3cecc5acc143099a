// Online key rotation: re-seals every secret not under the active key, in small batches that
// lock rows with FOR UPDATE SKIP LOCKED and write with compare-and-swap on (version, key id)
// without bumping the version, so it never overwrites a concurrent refresh. Resumable and
// idempotent. Blocking: run from the `rotate-keys` subcommand or a DB thread.
#pragma once
#include <functional>
#include <string>

namespace pqxx {
class connection_base;
}
namespace tokend::crypto {
class keyring;
}

namespace tokend::store {

struct rotation_progress {
  long long done = 0;        // rows re-sealed so far
  long long total = 0;       // rows not under the active key when the run started
  long long unreadable = 0;  // rows whose key is not configured or that fail to open
  long long lost_races = 0;  // rows a concurrent writer changed first (retried)
  double rate_per_s = 0;
};

// Runs until no row remains to re-seal (except unreadable ones). `on_progress` is called after
// each batch. Throws on database errors.
rotation_progress rotate_keys(pqxx::connection_base& conn, const crypto::keyring& keys,
                              int batch_size,
                              const std::function<void(const rotation_progress&)>& on_progress);

}  // namespace tokend::store
