#include "webhooks/worker.hpp"

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <mutex>
#include <pqxx/pqxx>
#include <random>
#include <vector>

#include <prometheus/gauge.h>

#include "async/signal.hpp"
#include "core/time.hpp"
#include "crypto/token_seal.hpp"
#include "oauth/http_client.hpp"
#include "observability/log.hpp"
#include "observability/metrics.hpp"
#include "store/db_pool.hpp"
#include "store/webhook_store.hpp"
#include "webhooks/policy.hpp"

namespace asio = boost::asio;
using steady = std::chrono::steady_clock;
using std::chrono::milliseconds;

namespace tokend::webhooks {

namespace {
constexpr auto kDbDeadline = std::chrono::seconds(5);

double random_unit() {
  thread_local std::mt19937_64 rng{std::random_device{}()};
  return std::uniform_real_distribution<double>(0.0, 1.0)(rng);
}

// Why an attempt failed, for last_error (no secrets: the URL's query could hold one, so the
// receiver is not named here).
std::string failure_text(const oauth::http_result& r) {
  if (r.refused) return "refused: the webhook URL resolves to an address outside the outbound rule";
  if (r.status == 0) return "no answer: " + (r.error.empty() ? std::string("unknown") : r.error);
  std::string s = "HTTP " + std::to_string(r.status);
  if (r.status >= 300 && r.status < 400) s += " (redirects are not followed)";
  return s;
}
}  // namespace

struct worker::impl : std::enable_shared_from_this<impl> {
  impl(asio::any_io_executor e, worker_options o, store::db_pool& d, const crypto::keyring& k,
       oauth::http_client& c, observability::metrics& m)
      : ex(std::move(e)), opts(std::move(o)), db(d), keys(k), client(c), metrics(m) {}

  asio::any_io_executor ex;
  worker_options opts;
  store::db_pool& db;
  const crypto::keyring& keys;
  oauth::http_client& client;
  observability::metrics& metrics;

  mutable std::mutex mu;  // guards everything below
  std::size_t running = 0;
  bool stopping = false;
  std::shared_ptr<async::signal> wake;          // the loop's current wait
  std::shared_ptr<async::signal> loop_done;     // notified when the loop has exited
  std::shared_ptr<async::signal> backlog_wake;  // the outbox counter's current wait

  // Waits until notified (a slot freed, stop) or `d` passed; false when stopping.
  asio::awaitable<bool> nap(milliseconds d) {
    auto s = std::make_shared<async::signal>(ex);
    {
      std::lock_guard lk(mu);
      if (stopping) co_return false;
      wake = s;
    }
    co_await s->wait_until(steady::now() + d);
    std::lock_guard lk(mu);
    if (wake == s) wake.reset();
    co_return !stopping;
  }

  void notify_loop() {
    std::shared_ptr<async::signal> s;
    {
      std::lock_guard lk(mu);
      s = wake;
    }
    if (s) s->notify();
  }

  template <class F>
  auto in_tx(F f) -> asio::awaitable<std::invoke_result_t<F, pqxx::work&>> {
    co_return co_await db.run(
        steady::now() + kDbDeadline,
        [&](pqxx::connection_base& c) {
          pqxx::work w(c);
          if constexpr (std::is_void_v<std::invoke_result_t<F, pqxx::work&>>) {
            f(w);
            w.commit();
          } else {
            auto r = f(w);
            w.commit();
            return r;
          }
        },
        store::origin::background);
  }

  asio::awaitable<void> deliver(store::delivery_claim d) {
    auto self = shared_from_this();
    metrics.webhook_in_flight().Increment();
    bool stop_now = false;
    {
      std::lock_guard lk(mu);
      stop_now = stopping;
    }
    if (stop_now) {
      // SIGTERM after the claim: not sent, so free for the other instances at once.
      try {
        co_await in_tx(
            [&](pqxx::work& w) { store::release_deliveries(w, opts.instance_id, {d.seq}); });
      } catch (const std::exception&) {  // the lease expires on its own
      }
    } else {
      try {
        co_await attempt(d);
      } catch (const std::exception& e) {  // the slot is freed whatever happened; the lease
        log::write(log::level::error, "webhook attempt aborted; retried after its lease",
                   {{"tenant", d.tenant_id}, {"delivery", d.id}, {"error", e.what()}});
      }
    }
    metrics.webhook_in_flight().Decrement();
    {
      std::lock_guard lk(mu);
      --running;
    }
    notify_loop();
  }

  asio::awaitable<void> attempt(const store::delivery_claim& d) {
    oauth::http_result res;
    auto secret = crypto::open_webhook_secret(keys, d.tenant_id, d.webhook_row_id, d.secret_version,
                                              d.key_id, "secret", d.secret_ct);
    std::optional<std::string> previous;
    if (secret && d.previous_secret_ct) {
      previous = crypto::open_webhook_secret(keys, d.tenant_id, d.webhook_row_id, d.secret_version,
                                             d.key_id, "previous_secret", *d.previous_secret_ct);
    }
    std::string error;
    const auto started = steady::now();
    if (!secret) {
      error =
          "the webhook secret cannot be opened (its master key " + d.key_id + " is not configured)";
    } else {
      const auto now_s = std::chrono::duration_cast<std::chrono::seconds>(
                             std::chrono::system_clock::now().time_since_epoch())
                             .count();
      std::vector<std::pair<std::string, std::string>> headers = {
          {"Content-Type", "application/json"},
          {"User-Agent", "tokend-webhooks/" TOKEND_VERSION},
          {"Tokend-Signature", signature_header(now_s, d.payload, *secret, previous)},
          {"Tokend-Event-Id", d.event_id},
          {"Tokend-Delivery-Id", d.id},
          {"Tokend-Event-Type", d.type}};
      std::string body = d.payload;
      res =
          co_await client.request("POST", d.url, headers, std::move(body), started + opts.timeout);
      if (res.status < 200 || res.status >= 300) error = failure_text(res);
    }
    const auto took_ms = std::chrono::duration_cast<milliseconds>(steady::now() - started).count();
    std::optional<std::string> outcome;
    try {
      if (error.empty()) {
        const bool ok = co_await in_tx([&](pqxx::work& w) {
          return store::mark_delivered(w, d.seq, opts.instance_id, res.status);
        });
        if (ok) outcome = "delivered";
      } else {
        const auto delay =
            retry_delay(d.window_attempts, opts.retry_base, opts.retry_cap, random_unit());
        outcome = co_await in_tx([&](pqxx::work& w) {
          return store::mark_attempt_failed(w, d.seq, opts.instance_id, res.status, error,
                                            delay.count(), opts.max_age.count());
        });
        if (outcome == "pending") outcome = "retry";
      }
    } catch (const std::exception& e) {
      // The lease expires and the row is attempted again: a 2xx not recorded here may be
      // delivered twice (at least once; receivers dedupe by the event id).
      log::write(log::level::error, "webhook delivery result not recorded; retried after its lease",
                 {{"tenant", d.tenant_id},
                  {"delivery", d.id},
                  {"event", d.event_id},
                  {"error", e.what()}});
      co_return;
    }
    if (!outcome) {
      log::write(log::level::warn, "webhook delivery changed while it was sent (deleted webhook?)",
                 {{"tenant", d.tenant_id}, {"delivery", d.id}, {"event", d.event_id}});
      co_return;
    }
    metrics.webhook_attempt(*outcome);
    if (*outcome == "delivered") {
      metrics.webhook_latency(
          std::chrono::duration<double>(std::chrono::system_clock::now() - d.created_at).count());
    }
    const auto lvl = *outcome == "delivered" ? log::level::info : log::level::warn;
    log::write(lvl, *outcome == "failed" ? "webhook delivery failed for good" : "webhook attempt",
               {{"tenant", d.tenant_id},
                {"connection", d.connection_id},
                {"delivery", d.id},
                {"event", d.event_id},
                {"type", d.type},
                {"attempt", d.attempts},
                {"outcome", *outcome},
                {"status", res.status},
                {"duration_ms", took_ms},
                {"error", error}});
  }

  asio::awaitable<void> loop() {
    auto self = shared_from_this();
    // Longer than an attempt (the timeout) plus recording its result.
    const long long lease_s =
        std::chrono::duration_cast<std::chrono::seconds>(opts.timeout).count() + 10;
    for (;;) {
      std::size_t free = 0;
      {
        std::lock_guard lk(mu);
        if (stopping) break;
        free = opts.concurrency - running;
      }
      if (free > 0) {
        std::vector<store::delivery_claim> claims;
        try {
          claims = co_await in_tx([&](pqxx::work& w) {
            return store::claim_deliveries(w, opts.instance_id, static_cast<int>(free),
                                           static_cast<int>(opts.tenant_cap), lease_s);
          });
        } catch (const std::exception& e) {
          log::write(log::level::warn, "webhook claim failed", {{"error", e.what()}});
        }
        {
          std::lock_guard lk(mu);
          running += claims.size();
        }
        for (auto& c : claims) asio::co_spawn(ex, deliver(std::move(c)), asio::detached);
        // Every free slot taken: rows may remain due, claim again as soon as one frees.
        if (!claims.empty() && claims.size() == free) continue;
      }
      if (!co_await nap(opts.interval)) break;
    }
    std::shared_ptr<async::signal> done;
    {
      std::lock_guard lk(mu);
      done = loop_done;
    }
    if (done) done->notify();
  }

  asio::awaitable<void> count_backlog() {
    auto self = shared_from_this();
    for (;;) {
      try {
        const auto s = co_await db.run(
            steady::now() + kDbDeadline,
            [&](pqxx::connection_base& c) {
              pqxx::read_transaction r(c);
              return store::count_outbox(r);
            },
            store::origin::background);
        metrics.webhook_backlog().Set(static_cast<double>(s.pending));
        metrics.webhook_oldest_pending().Set(s.oldest_pending_s);
      } catch (const std::exception&) {
      }
      auto s = std::make_shared<async::signal>(ex);
      {
        std::lock_guard lk(mu);
        if (stopping) co_return;
        backlog_wake = s;
      }
      co_await s->wait_until(steady::now() + opts.backlog_interval);
    }
  }
};

worker::worker(asio::any_io_executor ex, worker_options opts, store::db_pool& db,
               const crypto::keyring& keys, oauth::http_client& client,
               observability::metrics& metrics)
    : impl_(std::make_shared<impl>(std::move(ex), std::move(opts), db, keys, client, metrics)) {
  impl_->loop_done = std::make_shared<async::signal>(impl_->ex);
}

worker::~worker() = default;

void worker::start() {
  log::write(log::level::info, "webhook worker started",
             {{"concurrency", impl_->opts.concurrency},
              {"tenant_cap", impl_->opts.tenant_cap},
              {"timeout_ms", impl_->opts.timeout.count()}});
  asio::co_spawn(impl_->ex, impl_->loop(), asio::detached);
  asio::co_spawn(impl_->ex, impl_->count_backlog(), asio::detached);
}

asio::awaitable<void> worker::stop() {
  std::shared_ptr<async::signal> backlog;
  {
    std::lock_guard lk(impl_->mu);
    if (impl_->stopping) co_return;
    impl_->stopping = true;
    backlog = impl_->backlog_wake;
  }
  impl_->notify_loop();
  if (backlog) backlog->notify();
  co_await impl_->loop_done->wait_until(steady::now() + std::chrono::seconds(10));
}

std::size_t worker::running() const {
  std::lock_guard lk(impl_->mu);
  return impl_->running;
}

}  // namespace tokend::webhooks
