#include "store/key_rotation.hpp"

#include <chrono>
#include <pqxx/pqxx>
#include <thread>

#include "crypto/token_seal.hpp"
#include "store/repository.hpp"
#include "store/webhook_store.hpp"

namespace tokend::store {

rotation_progress rotate_keys(pqxx::connection_base& conn, const crypto::keyring& keys,
                              int batch_size,
                              const std::function<void(const rotation_progress&)>& on_progress) {
  rotation_progress p;
  const auto& active = keys.active_kid();
  {
    pqxx::read_transaction tx(conn);
    auto counts = count_not_under(tx, active);
    p.total = counts.connections + counts.providers + count_webhooks_not_under(tx, active);
  }
  const auto start = std::chrono::steady_clock::now();
  std::vector<long long> bad_connections, bad_providers;  // unreadable: not retried this run
  auto report = [&] {
    const double secs =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    p.rate_per_s = secs > 0 ? static_cast<double>(p.done) / secs : 0;
    if (on_progress) on_progress(p);
  };

  for (;;) {
    pqxx::work tx(conn);
    auto rows = lock_connections_to_rotate(tx, active, bad_connections, batch_size);
    for (const auto& c : rows) {
      auto opened = crypto::open_tokens(keys, c);
      if (!opened) {
        bad_connections.push_back(c.row_id);
        ++p.unreadable;
        continue;
      }
      token_set t;
      t.access_token = std::move(opened->access_token);
      t.refresh_token = std::move(opened->refresh_token);
      auto sealed = crypto::seal_tokens(keys, c.tenant_id, c.id, c.row_id, c.token_version, t);
      if (cas_reseal_connection(tx, c, sealed)) {
        ++p.done;
      } else {
        ++p.lost_races;
      }
    }
    tx.commit();
    if (rows.empty()) {
      // Either done, or every remaining row is locked by a writer right now: check which.
      pqxx::read_transaction check(conn);
      const auto left = count_connections_to_rotate(check, active, bad_connections);
      check.commit();
      if (left == 0) break;
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    report();
  }

  for (;;) {
    pqxx::work tx(conn);
    auto rows = lock_providers_to_rotate(tx, active, bad_providers, batch_size);
    for (const auto& pr : rows) {
      auto secret = crypto::open_client_secret(keys, pr);
      if (!secret) {
        bad_providers.push_back(pr.row_id);
        ++p.unreadable;
        continue;
      }
      auto ct = crypto::seal_client_secret(keys, pr.tenant_id, pr.id, pr.row_id, pr.secret_version,
                                           *secret);
      if (cas_reseal_provider(tx, pr, active, ct)) {
        ++p.done;
      } else {
        ++p.lost_races;
      }
    }
    tx.commit();
    if (rows.empty())
      break;  // provider rows are locked only briefly by PUT; a rerun picks up any left
    report();
  }
  // Webhook secrets: the current one and, during a rotation's overlap, the previous one.
  std::vector<long long> bad_webhooks;
  for (;;) {
    pqxx::work tx(conn);
    auto rows = lock_webhooks_to_rotate(tx, active, bad_webhooks, batch_size);
    for (const auto& w : rows) {
      auto secret = crypto::open_webhook_secret(keys, w.tenant_id, w.row_id, w.secret_version,
                                                w.key_id, "secret", w.secret_ct);
      std::optional<std::string> previous;
      if (secret && w.previous_secret_ct) {
        previous = crypto::open_webhook_secret(keys, w.tenant_id, w.row_id, w.secret_version,
                                               w.key_id, "previous_secret", *w.previous_secret_ct);
      }
      if (!secret || (w.previous_secret_ct && !previous)) {
        bad_webhooks.push_back(w.row_id);
        ++p.unreadable;
        continue;
      }
      auto ct = crypto::seal_webhook_secret(keys, w.tenant_id, w.row_id, w.secret_version,
                                            "secret", *secret);
      std::optional<std::string> prev_ct;
      if (previous) {
        prev_ct = crypto::seal_webhook_secret(keys, w.tenant_id, w.row_id, w.secret_version,
                                              "previous_secret", *previous);
      }
      if (cas_reseal_webhook(tx, w, active, ct, prev_ct)) {
        ++p.done;
      } else {
        ++p.lost_races;
      }
    }
    tx.commit();
    if (rows.empty()) break;  // webhook rows are locked only briefly by the API
    report();
  }
  report();
  return p;
}

}  // namespace tokend::store
