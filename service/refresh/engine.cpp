// The flight table: which caller starts a flight, who joins it, and what each caller is
// answered when it ends (policy::answer_for). The flight itself is in attempt.cpp.
#include "refresh/engine.hpp"

#include <prometheus/gauge.h>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/this_coro.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <pqxx/pqxx>

#include "async/semaphore.hpp"
#include "cache/caches.hpp"
#include "crypto/token_seal.hpp"
#include "observability/log.hpp"
#include "observability/metrics.hpp"
#include "refresh/flight.hpp"
#include "store/db_pool.hpp"
#include "store/repository.hpp"

namespace asio = boost::asio;

namespace tokend::refresh {

using detail::flight;
using detail::flight_result;
using detail::steady;
using detail::trigger;

namespace detail {

engine_deps::~engine_deps() = default;

async::semaphore& engine_deps::provider_slots(const std::string& tenant,
                                              const std::string& provider) const {
  std::lock_guard lk(slots_mu);
  auto& s = slots[{tenant, provider}];
  if (!s) s = std::make_unique<async::semaphore>(opts.provider_concurrency);
  return *s;
}

async::semaphore& engine_deps::tenant_slots(const std::string& tenant) const {
  std::lock_guard lk(slots_mu);
  auto& s = tenant_caps[tenant];
  if (!s) {
    s = std::make_unique<async::semaphore>(
        policy::tenant_refresh_cap(refresh_db.options().size, opts.tenant_refresh_share));
  }
  return *s;
}

async::token_bucket& engine_deps::rate_bucket(const std::string& tenant,
                                              const std::string& provider) const {
  std::lock_guard lk(slots_mu);
  auto& b = buckets[{tenant, provider}];
  if (!b) b = std::make_unique<async::token_bucket>();
  return *b;
}

}  // namespace detail

engine::engine(asio::any_io_executor ex, engine_options opts, store::db_pool& db,
               store::db_pool& refresh_db, const crypto::keyring& keys, oauth::http_client& http,
               observability::metrics& metrics, const wall_clock& clock, cache::caches& caches)
    : d_(std::make_unique<detail::engine_deps>(std::move(ex), std::move(opts), db, refresh_db, keys,
                                               http, metrics, clock, caches)) {}

engine::~engine() {
  // The process is exiting: a rotated token set still unstored is lost with it. Say so loudly,
  // with the fingerprint an operator can match against the provider's records.
  std::lock_guard lk(mu_);
  for (const auto& [key, f] : flights_) {
    if (!f->answered) continue;
    std::string fp;
    {
      std::lock_guard flk(f->mu);
      fp = f->pending_fingerprint;
    }
    log::write(
        log::level::error,
        "PERSIST FAILED at exit: a rotated token set was never stored; the connection "
        "will need reauthorization",
        {{"tenant", key.first}, {"connection", key.second}, {"new_refresh_token_fingerprint", fp}},
        f->request_id);
  }
}

std::size_t engine::in_flight() const {
  std::lock_guard lk(mu_);
  return flights_.size();
}

void engine::refuse_while_pending(const std::string& tenant, const std::string& id) const {
  std::lock_guard lk(mu_);
  auto it = flights_.find({tenant, id});
  if (it != flights_.end() && it->second->persist_pending) throw detail::write_pending_error();
}

asio::awaitable<connection_record> engine::load(const caller& who, const std::string& id) {
  auto c = co_await d_->db.run(who.deadline, [&](pqxx::connection_base& conn) {
    pqxx::read_transaction tx(conn);
    return store::get_connection(tx, who.tenant, id);
  });
  if (!c) throw api_error(errc::not_found, "no such connection");
  if (c->status == "needs_reauth") throw detail::reauth_error(*c);
  co_return std::move(*c);
}

asio::awaitable<token_answer> engine::get(const caller& who, const std::string& id,
                                          long long min_ttl) {
  const auto key = cache::caches::token_key(who.tenant, id);
  if (auto hit = d_->caches.get_token(key)) {
    // The hot path: no SQL, no decryption, no lock. (An entry is dropped before a flight's
    // provider answer can make it void, and none is inserted while a flight has an answer.)
    if (policy::is_fresh(hit->expires_at, hit->lifetime, min_ttl, d_->clock.now())) {
      co_return token_answer{std::move(hit), false};
    }
  }
  refuse_while_pending(who.tenant, id);
  const auto ticket = d_->caches.state().begin(key);
  auto c = co_await load(who, id);
  auto token = co_await detail::open_or_fail(*d_, who, c, "on_demand");
  const auto now = d_->clock.now();
  bool answered = false;
  {
    std::lock_guard lk(mu_);
    auto it = flights_.find({who.tenant, id});
    answered = it != flights_.end() && it->second->answered;
  }
  // A flight of this connection has the provider's answer: the row just read may be void at
  // the provider. Join the flight for the new token set instead.
  if (answered) co_return co_await join_or_start(who, c, static_cast<int>(trigger::on_demand));
  if (policy::is_fresh(c.access_expires_at, c.access_lifetime, min_ttl, now)) {
    if (auto delay = d_->caches.options().test_insert_delay; delay.count() > 0) {
      asio::steady_timer pause(co_await asio::this_coro::executor, delay);
      co_await pause.async_wait(asio::use_awaitable);
    }
    auto view = cache::render_token(c, token);
    d_->caches.put_token(key, ticket, view);
    co_return token_answer{std::move(view), false};
  }
  if (!c.sealed.refresh_token_ct && c.access_expires_at > now) {
    // Imported without a refresh token: served as is until it expires.
    co_return token_answer{cache::render_token(c, token), false};
  }
  co_return co_await join_or_start(who, c, static_cast<int>(trigger::on_demand));
}

asio::awaitable<token_answer> engine::refresh(const caller& who, const std::string& id,
                                              std::optional<long long> if_token_version) {
  refuse_while_pending(who.tenant, id);
  auto c = co_await load(who, id);
  co_await detail::open_or_fail(*d_, who, c, if_token_version ? "conditional" : "forced");
  if (!if_token_version)
    co_return co_await join_or_start(who, c, static_cast<int>(trigger::forced));
  if (c.token_version < *if_token_version) {
    throw api_error(errc::conflict,
                    "token_version " + std::to_string(*if_token_version) +
                        " does not exist yet (stored: " + std::to_string(c.token_version) + ")");
  }
  if (c.token_version > *if_token_version) co_return co_await get(who, id, 300);
  co_return co_await join_or_start(who, c, static_cast<int>(trigger::conditional));
}

asio::awaitable<token_answer> engine::join_or_start(const caller& who,
                                                    const connection_record& seen, int trig) {
  const auto t = static_cast<trigger>(trig);
  constexpr int kMaxRounds = 3;  // a conditional caller rejoins at most this often
  for (int round = 1;; ++round) {
    bool started = false;
    auto f = flight_for(who, seen.id, trig, seen.token_version, started);
    if (!f) throw detail::write_pending_error();
    if (!started) {
      std::lock_guard lk(f->mu);
      ++f->joined;
      d_->metrics.refresh_joined();
    }

    std::optional<flight_result> r;
    {
      std::shared_ptr<flight::waiter> w;
      {
        std::lock_guard lk(f->mu);
        if (f->done) {
          r = f->result;
        } else {
          w = std::make_shared<flight::waiter>(co_await asio::this_coro::executor);
          f->waiters.push_back(w);
        }
      }
      if (!r) {
        co_await w->done.wait_until(who.deadline);
        std::lock_guard lk(f->mu);
        if (f->done) r = f->result;
        std::erase(f->waiters, w);
      }
    }

    // A scheduled flight that found the row not due for the scheduler refreshed nothing; this
    // caller wants a refresh by its own rule (min_ttl, forced, conditional): its own flight.
    if (r && r->not_due && round < kMaxRounds &&
        steady::now() + std::chrono::milliseconds(50) < who.deadline) {
      continue;
    }
    policy::flight_outcome fo;
    fo.finished = r.has_value();
    fo.answered = f->answered;
    if (r) {
      fo.error = r->error.has_value();
      fo.transient = r->transient;
      if (!r->transient && r->conn && r->access_token) fo.version = r->conn->token_version;
    }
    const connection_record& current = r && r->conn ? *r->conn : seen;
    policy::caller_state cs;
    cs.trigger = t;
    cs.seen_version = seen.token_version;
    cs.deadline_passed =
        round >= kMaxRounds || steady::now() + std::chrono::milliseconds(50) >= who.deadline;
    cs.stored_unexpired = current.access_expires_at > d_->clock.now();
    const int retry_after = r ? r->retry_after : 1;
    switch (policy::answer_for(fo, cs)) {
      case policy::caller_answer::serve:
        co_return token_answer{cache::render_token(*r->conn, *r->access_token), false, true,
                               !started};
      case policy::caller_answer::serve_deferred: {
        std::optional<std::string> token = r ? r->access_token : std::nullopt;
        if (!token) {
          if (auto opened = crypto::open_tokens(d_->keys, current)) {
            token = std::move(opened->access_token);
          }
        }
        if (token) co_return token_answer{cache::render_token(current, *token), true};
        throw detail::provider_unavailable_error(retry_after);
      }
      case policy::caller_answer::rejoin:
        continue;
      case policy::caller_answer::unavailable:
        throw detail::write_pending_error();
      case policy::caller_answer::provider_unavailable:
        throw detail::provider_unavailable_error(retry_after);
      case policy::caller_answer::error:
        throw *r->error;
    }
  }
}

std::shared_ptr<flight> engine::flight_for(const caller& who, const std::string& id, int trig,
                                           long long version, bool& started) {
  std::shared_ptr<flight> f;
  started = false;
  {
    std::lock_guard lk(mu_);
    auto& slot = flights_[{who.tenant, id}];
    if (slot && slot->persist_pending) return nullptr;
    if (!slot) {
      slot = std::make_shared<flight>();
      slot->tenant = who.tenant;
      slot->id = id;
      slot->t = static_cast<trigger>(trig);
      slot->trigger_version = version;
      slot->request_id = who.request_id;
      slot->deadline = who.deadline;
      started = true;
    }
    f = slot;
  }
  // The flight belongs to the engine, not to its first caller: a caller that goes away does not
  // cancel it, and graceful shutdown waits for it.
  if (started) asio::co_spawn(d_->ex, run_flight(f), asio::detached);
  return f;
}

asio::awaitable<scheduled_report> engine::run_scheduled(const scheduled_claim& claim) {
  scheduled_report rep;
  const caller who{
      claim.tenant,
      "sched-" + std::to_string(claim.row_id) + "-" + std::to_string(claim.token_version),
      steady::now() + d_->opts.request_timeout};
  // A flight already in progress (an on-demand caller's) is joined: its write clears the claim,
  // or the scheduler releases it.
  bool started = false;
  auto f =
      flight_for(who, claim.id, static_cast<int>(trigger::scheduled), claim.token_version, started);
  if (!f) {
    rep.outcome = "deferred";  // this instance is still writing a rotated token set
    co_return rep;
  }
  std::shared_ptr<flight::waiter> w;
  {
    std::lock_guard lk(f->mu);
    if (!f->done) {
      w = std::make_shared<flight::waiter>(co_await asio::this_coro::executor);
      f->waiters.push_back(w);
    }
  }
  // A flight always ends: its provider call is bounded by the answer timeout and its write
  // retries only while the deadline of the write allows.
  if (w) {
    while (!co_await w->done.wait_until(steady::now() + std::chrono::hours(1))) {
    }
  }
  std::lock_guard lk(f->mu);
  if (w) std::erase(f->waiters, w);
  const auto& r = f->result;
  rep.settled = f->settled;
  if (r.error) {
    rep.outcome = std::string(describe(r.error->code()).code);
  } else if (r.not_due) {
    rep.outcome = "not_due";
  } else if (r.transient) {
    rep.outcome = "transient";
  } else if (r.conn && r.conn->token_version > claim.token_version) {
    rep.outcome = "refreshed";
  } else {
    rep.outcome = "deferred";
  }
  co_return rep;
}

asio::awaitable<void> engine::run_flight(std::shared_ptr<flight> f) {
  d_->metrics.refresh_in_flight().Increment();
  flight_result result;
  try {
    result = co_await detail::fly(*d_, *f);
  } catch (const api_error& e) {
    if (e.code() == errc::provider_unavailable) {
      // Waits that ran out (provider slot) and transient provider failures: callers fall back.
      result.transient = true;
      result.retry_after = e.retry_after.value_or(1);
      log::write(log::level::warn, "refresh deferred",
                 {{"tenant", f->tenant}, {"connection", f->id}, {"error", e.what()}},
                 f->request_id);
    } else {
      result.error = e;
    }
  } catch (const std::exception& e) {
    log::write(log::level::error, "refresh failed unexpectedly",
               {{"tenant", f->tenant}, {"connection", f->id}, {"error", e.what()}}, f->request_id);
    result.error = api_error(errc::internal, "internal error");
  }
  d_->metrics.refresh_duration(detail::trigger_name(f->t),
                               std::chrono::duration<double>(steady::now() - f->started).count());
  // Drop this instance's entry before anyone is answered (the notification sent with the
  // change reaches the other instances).
  d_->caches.invalidate(cache::caches::token_key(f->tenant, f->id));
  {
    std::lock_guard lk(mu_);
    auto it = flights_.find({f->tenant, f->id});
    if (it != flights_.end() && it->second == f) flights_.erase(it);
  }
  {
    std::lock_guard lk(f->mu);
    f->done = true;
    f->result = std::move(result);
    for (auto& w : f->waiters) w->done.notify();
  }
  d_->metrics.refresh_in_flight().Decrement();
}

}  // namespace tokend::refresh
