// Webhook delivery: each instance's worker claims due outbox rows (store::claim_deliveries, FOR
// UPDATE SKIP LOCKED with a committed lease longer than an attempt, so instances share the work
// and a dead instance's claims expire), signs each payload and POSTs it once: a 2xx is
// delivered, anything else is retried with back-off until the retry window ends, then failed.
#pragma once
#include <boost/asio/any_io_executor.hpp>
#include <boost/asio/awaitable.hpp>
#include <chrono>
#include <memory>
#include <string>

namespace tokend::store {
class db_pool;
}
namespace tokend::observability {
class metrics;
}
namespace tokend::crypto {
class keyring;
}
namespace tokend::oauth {
class http_client;
}

namespace tokend::webhooks {

struct worker_options {
  std::string instance_id;
  unsigned concurrency = 16;  // deliveries in flight per instance
  unsigned tenant_cap = 4;    // TOKEND_WEBHOOK_TENANT_CONCURRENCY: live claims per tenant
  std::chrono::milliseconds interval{1000};          // TOKEND_WEBHOOK_POLL_INTERVAL
  std::chrono::milliseconds timeout{10000};          // TOKEND_WEBHOOK_TIMEOUT, per attempt
  std::chrono::milliseconds retry_base{10000};       // TOKEND_WEBHOOK_RETRY_BASE
  std::chrono::milliseconds retry_cap{3600000};      // doubling stops here
  std::chrono::milliseconds max_age{86400000};       // TOKEND_WEBHOOK_MAX_AGE: then failed
  std::chrono::milliseconds backlog_interval{5000};  // outbox gauges
};

class worker {
 public:
  // `client` must not follow redirects and applies the outbound address rule (oauth/http_client).
  worker(boost::asio::any_io_executor ex, worker_options opts, store::db_pool& db,
         const crypto::keyring& keys, oauth::http_client& client, observability::metrics& metrics);
  ~worker();

  void start();
  // Stops claiming; deliveries being sent finish on their own (running() counts them, each is
  // bounded by the timeout). Waits for the loop, bounded.
  boost::asio::awaitable<void> stop();
  std::size_t running() const;

 private:
  struct impl;
  std::shared_ptr<impl> impl_;
};

}  // namespace tokend::webhooks
