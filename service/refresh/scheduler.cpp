#include "refresh/scheduler.hpp"

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/this_coro.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <mutex>
#include <pqxx/pqxx>
#include <random>
#include <vector>

#include <prometheus/gauge.h>

#include "async/signal.hpp"
#include "core/errors.hpp"
#include "core/time.hpp"
#include "observability/log.hpp"
#include "observability/metrics.hpp"
#include "refresh/engine.hpp"
#include "store/db_pool.hpp"
#include "store/repository.hpp"

namespace asio = boost::asio;
using steady = std::chrono::steady_clock;
using std::chrono::milliseconds;

namespace tokend::refresh {

namespace {
constexpr auto kClaimDeadline = std::chrono::seconds(5);
constexpr auto kBatchPause = milliseconds(5);  // after a slot frees: let a few more free
constexpr long long kBacklogCap = 100000;

std::uint64_t random_u64() {
  thread_local std::mt19937_64 rng{std::random_device{}()};
  return rng();
}
}  // namespace

struct scheduler::impl : std::enable_shared_from_this<impl> {
  impl(asio::any_io_executor e, scheduler_options o, store::db_pool& d, engine& en,
       observability::metrics& m, const wall_clock& c)
      : ex(std::move(e)), opts(std::move(o)), db(d), eng(en), metrics(m), clock(c) {}

  asio::any_io_executor ex;
  scheduler_options opts;
  store::db_pool& db;
  engine& eng;
  observability::metrics& metrics;
  const wall_clock& clock;

  mutable std::mutex mu;  // guards everything below
  std::size_t running = 0;
  bool stopping = false;
  std::shared_ptr<async::signal> wake;          // the loop's current wait
  std::shared_ptr<async::signal> loop_done;     // notified when the loop has exited
  std::shared_ptr<async::signal> backlog_wake;  // the backlog counter's current wait

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

  // Waits the whole of `d` (slots freeing do not end it); false when stopping.
  asio::awaitable<bool> sleep_for(milliseconds d) {
    const auto until = steady::now() + d;
    while (steady::now() < until) {
      if (!co_await nap(std::chrono::duration_cast<milliseconds>(until - steady::now()) +
                        milliseconds(1))) {
        co_return false;
      }
    }
    co_return true;
  }

  void notify_loop() {
    std::shared_ptr<async::signal> s;
    {
      std::lock_guard lk(mu);
      s = wake;
    }
    if (s) s->notify();
  }

  asio::awaitable<void> release(std::vector<long long> rows, milliseconds delay) {
    if (rows.empty()) co_return;
    try {
      co_await db.run(
          steady::now() + kClaimDeadline,
          [&](pqxx::connection_base& c) {
            pqxx::work w(c);
            store::release_claims(w, opts.instance_id, rows, delay.count());
            w.commit();
          },
          store::origin::background);
    } catch (const std::exception& e) {
      // The lease expires on its own; the rows are claimable again then.
      log::write(log::level::warn, "scheduler claims not released; they expire with their lease",
                 {{"rows", rows.size()}, {"error", e.what()}});
    }
  }

  asio::awaitable<void> run_one(store::due_claim c) {
    auto self = shared_from_this();
    metrics.scheduler_in_flight().Increment();
    bool stop_now = false;
    {
      std::lock_guard lk(mu);
      stop_now = stopping;
    }
    scheduled_report rep;
    milliseconds release_after{0};
    if (stop_now) {
      // SIGTERM came after the claim: not started, so released for the other instances at once.
      rep.outcome = "released";
    } else {
      scheduled_claim claim;
      claim.tenant = c.tenant_id;
      claim.id = c.id;
      claim.provider = c.provider_id;
      claim.row_id = c.row_id;
      claim.token_version = c.token_version;
      try {
        rep = co_await eng.run_scheduled(claim);
      } catch (const std::exception& e) {
        rep.outcome = "internal";
        log::write(log::level::error, "scheduled refresh failed unexpectedly",
                   {{"tenant", c.tenant_id}, {"connection", c.id}, {"error", e.what()}});
      }
      // Nothing this flight wrote cleared the claim: try again later (an undecryptable row much
      // later: only a key coming back can help it).
      release_after =
          opts.release_delay +
          milliseconds(static_cast<long long>(
              random_u64() % static_cast<std::uint64_t>(opts.release_delay.count() + 1)));
      if (rep.outcome == "decrypt_failed") release_after = std::chrono::hours(1);
    }
    if (!rep.settled) {
      std::vector<long long> rows{c.row_id};
      co_await release(std::move(rows), release_after);
    }
    if (rep.outcome == "refreshed") {
      metrics.scheduler_lag(std::chrono::duration<double>(clock.now() - c.due_at).count());
    }
    metrics.scheduler_outcome(c.provider_id, rep.outcome);
    metrics.scheduler_in_flight().Decrement();
    {
      std::lock_guard lk(mu);
      --running;
    }
    notify_loop();
  }

  asio::awaitable<void> loop() {
    auto self = shared_from_this();
    const long long lease_s = opts.lease.count();
    bool backlog_left = false;  // the last claim filled every free slot
    for (;;) {
      std::size_t free = 0;
      {
        std::lock_guard lk(mu);
        if (stopping) break;
        free = opts.concurrency - running;
      }
      if (free == 0) {
        if (!co_await nap(opts.interval)) break;
        continue;
      }
      if (backlog_left && free < opts.concurrency) {
        // A slot just freed with rows still due: wait a moment so one claim takes several.
        asio::steady_timer t(ex, kBatchPause);
        co_await t.async_wait(asio::use_awaitable);
        std::lock_guard lk(mu);
        if (stopping) break;
        free = opts.concurrency - running;
      }
      std::vector<store::due_claim> claims;
      bool claim_failed = false;
      try {
        claims = co_await db.run(
            steady::now() + kClaimDeadline,
            [&](pqxx::connection_base& c) {
              pqxx::work w(c);
              auto r = store::claim_due(w, opts.instance_id, static_cast<int>(free), lease_s);
              w.commit();
              return r;
            },
            store::origin::background);
      } catch (const std::exception& e) {
        log::write(log::level::warn, "scheduler claim failed", {{"error", e.what()}});
        claim_failed = true;
      }
      if (claim_failed) {
        if (!co_await sleep_for(opts.interval)) break;
        continue;
      }
      metrics.scheduler_claimed(claims.size());
      if (!claims.empty() && opts.test_pause_after_claim.count() > 0) {
        log::write(log::level::info, "scheduler claimed; pausing (test hook)",
                   {{"claims", claims.size()}});
        co_await sleep_for(opts.test_pause_after_claim);
      }
      bool stop_now = false;
      {
        std::lock_guard lk(mu);
        stop_now = stopping;
      }
      if (stop_now) {
        // SIGTERM during the claim (or the test pause): nothing started, all released.
        std::vector<long long> rows;
        for (const auto& c : claims) rows.push_back(c.row_id);
        co_await release(std::move(rows), milliseconds(0));
        break;
      }
      {
        std::lock_guard lk(mu);
        running += claims.size();
      }
      for (auto& c : claims) asio::co_spawn(ex, run_one(std::move(c)), asio::detached);
      backlog_left = claims.size() == free;
      if (backlog_left) {
        // Rows may remain due: claim again as soon as a slot frees.
        if (!co_await nap(opts.interval)) break;
      } else if (!co_await sleep_for(opts.interval)) {
        break;  // nothing more was due: the idle poll, whatever frees meanwhile
      }
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
        const auto n = co_await db.run(
            steady::now() + kClaimDeadline,
            [&](pqxx::connection_base& c) {
              pqxx::read_transaction r(c);
              return store::count_due_unclaimed(r, kBacklogCap);
            },
            store::origin::background);
        metrics.scheduler_backlog().Set(static_cast<double>(n));
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

scheduler::scheduler(asio::any_io_executor ex, scheduler_options opts, store::db_pool& db,
                     engine& eng, observability::metrics& metrics, const wall_clock& clock)
    : impl_(std::make_shared<impl>(std::move(ex), std::move(opts), db, eng, metrics, clock)) {
  impl_->loop_done = std::make_shared<async::signal>(impl_->ex);
}

scheduler::~scheduler() = default;

void scheduler::start() {
  log::write(log::level::info, "scheduler started",
             {{"concurrency", impl_->opts.concurrency},
              {"interval_ms", impl_->opts.interval.count()},
              {"lease_s", impl_->opts.lease.count()}});
  asio::co_spawn(impl_->ex, impl_->loop(), asio::detached);
  asio::co_spawn(impl_->ex, impl_->count_backlog(), asio::detached);
}

asio::awaitable<void> scheduler::stop() {
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

std::size_t scheduler::running() const {
  std::lock_guard lk(impl_->mu);
  return impl_->running;
}

}  // namespace tokend::refresh
