#include "refresh/engine.hpp"

#include <prometheus/gauge.h>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/this_coro.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <nlohmann/json.hpp>
#include <pqxx/pqxx>
#include <random>

#include "async/semaphore.hpp"
#include "async/signal.hpp"
#include "cache/caches.hpp"
#include "core/errors.hpp"
#include "core/refresh_policy.hpp"
#include "crypto/token_seal.hpp"
#include "oauth/http_client.hpp"
#include "oauth/token_request.hpp"
#include "observability/log.hpp"
#include "observability/metrics.hpp"
#include "store/change_listener.hpp"
#include "store/db_pool.hpp"
#include "store/repository.hpp"

namespace asio = boost::asio;
using steady = std::chrono::steady_clock;
using nlohmann::json;

namespace tokend::refresh {
namespace {

constexpr auto kPersistRetryPause = std::chrono::milliseconds(200);

std::uint64_t random_u64() {
  thread_local std::mt19937_64 rng{std::random_device{}()};
  return rng();
}

api_error reauth_error(const connection_record& c) {
  const auto reason = c.reauth_reason.value_or("grant_revoked");
  api_error e(errc::reauth_required,
              "the connection needs reauthorization (" + reason + "); create a reauth link");
  e.extra_json = json{{"reauth", {{"reason", reason}, {"link_id", nullptr}}}}.dump();
  return e;
}

api_error unavailable_error(int retry_after) {
  api_error e(errc::provider_unavailable,
              "the provider could not be reached; the token was not refreshed");
  e.retry_after = std::max(1, retry_after);
  return e;
}

std::string last_error_json(std::string_view code, const policy::classification& c, int status,
                            sys_time at) {
  return json{{"code", code},
              {"oauth_error", c.oauth_error ? json(*c.oauth_error) : json(nullptr)},
              {"description", c.description ? json(*c.description) : json(c.summary)},
              {"http_status", status ? json(status) : json(nullptr)},
              {"at", format_rfc3339(at)}}
      .dump();
}

}  // namespace

struct engine::flight_result {
  std::optional<connection_record> conn;    // the state after the flight
  std::optional<std::string> access_token;  // its access token, when it could be opened
  std::optional<api_error> error;           // a failure every waiter gets
  bool transient = false;                   // the refresh failed transiently: callers fall back
  int retry_after = 1;
};

struct engine::flight {
  struct waiter {
    explicit waiter(asio::any_io_executor ex) : done(std::move(ex)) {}
    async::signal done;  // notified when the flight completes
  };
  std::string tenant, id;
  trigger t = trigger::on_demand;
  long long trigger_version = 0;
  std::string request_id;
  steady::time_point deadline;
  steady::time_point started = steady::now();

  std::mutex mu;  // guards done, result, waiters, joined
  bool done = false;
  flight_result result;
  std::vector<std::shared_ptr<waiter>> waiters;
  int joined = 0;
};

engine::engine(asio::any_io_executor ex, engine_options opts, store::db_pool& db,
               store::db_pool& refresh_db, const crypto::keyring& keys, oauth::http_client& http,
               observability::metrics& metrics, const wall_clock& clock, cache::caches& caches)
    : ex_(std::move(ex)),
      opts_(std::move(opts)),
      db_(db),
      refresh_db_(refresh_db),
      keys_(keys),
      http_(http),
      metrics_(metrics),
      clock_(clock),
      caches_(caches) {}

engine::~engine() = default;

std::size_t engine::in_flight() const {
  std::lock_guard lk(mu_);
  return flights_.size();
}

async::semaphore& engine::provider_slots(const std::string& tenant, const std::string& provider) {
  std::lock_guard lk(mu_);
  auto& s = slots_[{tenant, provider}];
  if (!s) s = std::make_unique<async::semaphore>(opts_.provider_concurrency);
  return *s;
}

asio::awaitable<connection_record> engine::load(const caller& who, const std::string& id) {
  auto c = co_await db_.run(who.deadline, [&](pqxx::connection_base& conn) {
    pqxx::read_transaction tx(conn);
    return store::get_connection(tx, who.tenant, id);
  });
  if (!c) throw api_error(errc::not_found, "no such connection");
  if (c->status == "needs_reauth") throw reauth_error(*c);
  co_return std::move(*c);
}

asio::awaitable<std::string> engine::open_or_fail(const caller& who, const connection_record& c,
                                                  std::string_view trigger_name) {
  auto opened = crypto::open_tokens(keys_, c);
  if (opened) co_return std::move(opened->access_token);
  co_await db_.run(who.deadline, [&](pqxx::connection_base& conn) {
    pqxx::work tx(conn);
    event_record e;
    e.tenant_id = c.tenant_id;
    e.connection_id = c.id;
    e.connection_row_id = c.row_id;
    e.trigger = std::string(trigger_name);
    e.outcome = "decrypt_failed";
    e.description = "the stored token set cannot be decrypted with key " + c.sealed.key_id;
    e.token_version_before = c.token_version;
    e.request_id = who.request_id;
    e.instance = opts_.instance_id;
    e.environment = opts_.environment;
    store::append_event(tx, e);
    tx.commit();
  });
  log::write(log::level::error, "decrypt failed",
             {{"tenant", c.tenant_id},
              {"connection", c.id},
              {"key_id", c.sealed.key_id},
              {"token_version", c.token_version}},
             who.request_id);
  metrics_.refresh_outcome(trigger_name, "decrypt_failed");
  throw api_error(errc::decrypt_failed, "the stored token set cannot be decrypted");
}

asio::awaitable<token_answer> engine::get(const caller& who, const std::string& id,
                                          long long min_ttl) {
  const auto key = cache::caches::token_key(who.tenant, id);
  if (auto hit = caches_.get_token(key)) {
    // The hot path: no SQL, no decryption, no lock.
    if (policy::is_fresh(hit->expires_at, hit->lifetime, min_ttl, clock_.now())) {
      co_return token_answer{std::move(hit), false};
    }
  }
  const auto ticket = caches_.state().begin(key);
  auto c = co_await load(who, id);
  auto token = co_await open_or_fail(who, c, "on_demand");
  const auto now = clock_.now();
  if (policy::is_fresh(c.access_expires_at, c.access_lifetime, min_ttl, now)) {
    if (auto delay = caches_.options().test_insert_delay; delay.count() > 0) {
      asio::steady_timer pause(co_await asio::this_coro::executor, delay);
      co_await pause.async_wait(asio::use_awaitable);
    }
    auto view = cache::render_token(c, token);
    caches_.put_token(key, ticket, view);
    co_return token_answer{std::move(view), false};
  }
  if (!c.sealed.refresh_token_ct && c.access_expires_at > now) {
    // Imported without a refresh token: served as is until it expires.
    co_return token_answer{cache::render_token(c, token), false};
  }
  co_return co_await join_or_start(who, c, trigger::on_demand);
}

asio::awaitable<token_answer> engine::refresh(const caller& who, const std::string& id,
                                              std::optional<long long> if_token_version) {
  auto c = co_await load(who, id);
  co_await open_or_fail(who, c, if_token_version ? "conditional" : "forced");
  if (!if_token_version) co_return co_await join_or_start(who, c, trigger::forced);
  if (c.token_version < *if_token_version) {
    throw api_error(errc::conflict,
                    "token_version " + std::to_string(*if_token_version) +
                        " does not exist yet (stored: " + std::to_string(c.token_version) + ")");
  }
  if (c.token_version > *if_token_version) co_return co_await get(who, id, 300);
  co_return co_await join_or_start(who, c, trigger::conditional);
}

asio::awaitable<token_answer> engine::join_or_start(const caller& who,
                                                    const connection_record& seen, trigger t) {
  std::shared_ptr<flight> f;
  bool started = false;
  {
    std::lock_guard lk(mu_);
    auto& slot = flights_[{who.tenant, seen.id}];
    if (!slot) {
      slot = std::make_shared<flight>();
      slot->tenant = who.tenant;
      slot->id = seen.id;
      slot->t = t;
      slot->trigger_version = seen.token_version;
      slot->request_id = who.request_id;
      slot->deadline = who.deadline;
      started = true;
    }
    f = slot;
  }
  if (started) {
    // The flight belongs to the engine, not to this caller: a caller that goes away does not
    // cancel it, and graceful shutdown waits for it.
    asio::co_spawn(ex_, run_flight(f), asio::detached);
  } else {
    std::lock_guard lk(f->mu);
    ++f->joined;
    metrics_.refresh_joined();
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
  if (!r) {  // our deadline passed while the flight is still running
    r.emplace();
    r->transient = true;
  }
  if (r->error) throw *r->error;
  if (!r->transient && r->conn && r->access_token) {
    co_return token_answer{cache::render_token(*r->conn, *r->access_token), false};
  }
  // Transient failure: a conditional caller knows its token fails, so never gets it back;
  // others get the stored token while it has not expired.
  const auto& current = r->conn ? *r->conn : seen;
  if (t != trigger::conditional && current.access_expires_at > clock_.now()) {
    std::optional<std::string> token = r->access_token;
    if (!token) {
      auto opened = crypto::open_tokens(keys_, current);
      if (opened) token = std::move(opened->access_token);
    }
    if (token) co_return token_answer{cache::render_token(current, *token), true};
  }
  throw unavailable_error(r->retry_after);
}

asio::awaitable<void> engine::run_flight(std::shared_ptr<flight> f) {
  metrics_.refresh_in_flight().Increment();
  flight_result result;
  try {
    result = co_await fly(*f);
  } catch (const api_error& e) {
    if (e.code() == errc::unavailable || e.code() == errc::provider_unavailable) {
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
  // Drop this instance's entry before anyone is answered (the notification sent with the
  // change reaches the other instances).
  caches_.invalidate(cache::caches::token_key(f->tenant, f->id));
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
  metrics_.refresh_in_flight().Decrement();
}

asio::awaitable<engine::flight_result> engine::fly(flight& f) {
  const auto trigger_name = [&]() -> std::string {
    switch (f.t) {
      case trigger::forced:
        return "forced";
      case trigger::conditional:
        return "conditional";
      default:
        return "on_demand";
    }
  }();
  const caller who{f.tenant, f.request_id, f.deadline};
  const std::string change_key = cache::caches::token_key(f.tenant, f.id);

  // Provider configuration first, outside any lock.
  auto seen = co_await db_.run(f.deadline, [&](pqxx::connection_base& c) {
    pqxx::read_transaction tx(c);
    auto conn = store::get_connection(tx, f.tenant, f.id);
    std::optional<provider_record> p;
    if (conn) p = store::get_provider(tx, f.tenant, conn->provider_id);
    return std::pair{conn, p};
  });
  if (!seen.first) throw api_error(errc::not_found, "no such connection");
  if (!seen.second) throw api_error(errc::internal, "the connection's provider is missing");
  const provider_record provider = std::move(*seen.second);

  // A slot under the per-provider cap, queueing within the deadline.
  auto& slots = provider_slots(f.tenant, provider.id);
  auto slot = co_await slots.acquire(f.deadline);
  if (!slot) throw unavailable_error(1);
  struct slot_guard {
    async::semaphore& s;
    std::size_t unit;
    ~slot_guard() { s.release(unit); }
  } guard{slots, *slot};

  auto lease = co_await refresh_db_.acquire(f.deadline);
  std::unique_ptr<pqxx::work> tx;
  std::exception_ptr failure;
  flight_result out;
  try {
    out = co_await [&]() -> asio::awaitable<flight_result> {
      const auto left_ms = std::max<long long>(
          100, std::chrono::duration_cast<std::chrono::milliseconds>(f.deadline - steady::now())
                   .count());
      auto locked = co_await lease.run([&](pqxx::connection_base& c) {
        tx = std::make_unique<pqxx::work>(c);
        tx->exec("SET LOCAL lock_timeout = " + std::to_string(left_ms) +
                 "; SET LOCAL idle_in_transaction_session_timeout = " +
                 std::to_string(left_ms + opts_.request_timeout.count() * 1000 + 10000));
        return store::get_connection(*tx, f.tenant, f.id, true);
      });
      flight_result r;
      if (!locked) throw api_error(errc::not_found, "no such connection");
      auto row = std::move(*locked);
      const auto now = clock_.now();
      auto commit_and_serve = [&](connection_record c) -> asio::awaitable<flight_result> {
        co_await lease.run([&](pqxx::connection_base&) {
          tx->commit();
          tx.reset();
        });
        flight_result fr;
        fr.access_token = co_await open_or_fail(who, c, trigger_name);
        fr.conn = std::move(c);
        co_return fr;
      };
      auto append = [&](event_record e) {
        e.tenant_id = row.tenant_id;
        e.connection_id = row.id;
        e.connection_row_id = row.row_id;
        e.trigger = trigger_name;
        e.request_id = f.request_id;
        e.instance = opts_.instance_id;
        e.environment = opts_.environment;
        e.token_version_before = row.token_version;
        {
          std::lock_guard lk(f.mu);
          e.joined_count = f.joined;
        }
        return e;
      };

      if (row.status == "needs_reauth") throw reauth_error(row);
      // Another instance (or an earlier flight) already stored a newer, unexpired version.
      if (row.token_version > f.trigger_version && row.access_expires_at > now) {
        co_return co_await commit_and_serve(std::move(row));
      }
      if (f.t == trigger::forced) {
        if (row.last_forced_refresh_at &&
            now - *row.last_forced_refresh_at < opts_.force_refresh_min_interval) {
          // Within the interval a forced refresh is a GET with the default min_ttl.
          if (policy::is_fresh(row.access_expires_at, row.access_lifetime, 300, now)) {
            co_return co_await commit_and_serve(std::move(row));
          }
        } else {
          co_await lease.run([&](pqxx::connection_base&) {
            store::set_last_forced_refresh(*tx, row.tenant_id, row.id, now);
          });
        }
      }
      if (!row.sealed.refresh_token_ct) {
        if (row.access_expires_at > now) co_return co_await commit_and_serve(std::move(row));
        co_await lease.run([&](pqxx::connection_base&) {
          event_record e = append({});
          e.outcome = "invalid_grant";
          e.description = "imported without a refresh token; the access token has expired";
          policy::classification why;
          why.description = e.description;
          store::mark_needs_reauth(*tx, row.tenant_id, row.id, "imported_without_refresh_token",
                                   last_error_json("reauth_required", why, 0, now));
          store::append_event(*tx, e);
          store::notify_change(*tx, change_key);
          tx->commit();
          tx.reset();
        });
        row.status = "needs_reauth";
        row.reauth_reason = "imported_without_refresh_token";
        metrics_.reauth_required("imported_without_refresh_token");
        metrics_.refresh_outcome(trigger_name, "invalid_grant");
        throw reauth_error(row);
      }
      const bool cooling = provider.cooldown_until && *provider.cooldown_until > now;
      const bool backing_off = row.next_attempt_at && *row.next_attempt_at > now;
      if (cooling || backing_off) {
        co_await lease.run([&](pqxx::connection_base&) {
          event_record e = append({});
          e.outcome = "deferred";
          e.description = cooling ? "provider on cool-down after a configuration error"
                                  : "backing off after recent transient failures";
          store::append_event(*tx, e);
          tx->commit();
          tx.reset();
        });
        metrics_.refresh_outcome(trigger_name, "deferred");
        r.transient = true;
        r.conn = row;
        r.retry_after = 1;
        co_return r;
      }

      auto opened = crypto::open_tokens(keys_, row);
      std::optional<std::string> secret;
      if (provider.client_secret_ct) secret = crypto::open_client_secret(keys_, provider);
      if (!opened || (provider.client_secret_ct && !secret)) {
        co_await lease.run([&](pqxx::connection_base&) {
          event_record e = append({});
          e.outcome = "decrypt_failed";
          e.description = opened ? "the provider's client secret cannot be decrypted"
                                 : "the stored token set cannot be decrypted";
          store::append_event(*tx, e);
          tx->commit();
          tx.reset();
        });
        metrics_.refresh_outcome(trigger_name, "decrypt_failed");
        throw api_error(errc::decrypt_failed, "a stored secret cannot be decrypted");
      }
      const auto request = oauth::refresh_request(provider, *opened->refresh_token, secret);
      const auto token_age_s = std::chrono::duration_cast<std::chrono::seconds>(
                                   now - row.last_refreshed_at.value_or(row.created_at))
                                   .count();
      bool in_doubt_seen = false;
      int retry_after = 1;
      for (int attempt = 1; attempt <= opts_.max_attempts; ++attempt) {
        // A durable marker, committed on its own before the call (short pool, never a
        // second refresh-pool lease).
        const auto attempt_id = co_await db_.run(f.deadline, [&](pqxx::connection_base& c) {
          pqxx::work w(c);
          auto id = store::open_attempt(w, row.tenant_id, row.row_id, row.token_version,
                                        opts_.instance_id, f.request_id);
          w.commit();
          return id;
        });
        const auto queue_ms =
            std::chrono::duration_cast<std::chrono::milliseconds>(steady::now() - f.started)
                .count();
        const auto sent_at = clock_.now();
        const auto call_started = steady::now();
        auto reply =
            co_await http_.request("POST", request.url, request.headers, request.body, f.deadline);
        const auto call_ms =
            std::chrono::duration_cast<std::chrono::milliseconds>(steady::now() - call_started)
                .count();
        metrics_.provider_call(static_cast<double>(call_ms) / 1000.0);
        policy::provider_reply pr{reply.sent, reply.status, reply.body_complete,
                                  std::move(reply.body), reply.retry_after};
        auto cls =
            reply.refused
                ? policy::classification{policy::outcome::config_error,           {}, {},
                                         std::string("outbound address refused"), {}, reply.error}
                : policy::classify(pr, sent_at,
                                   {provider.default_expires_in, provider.refresh_token_lifetime});
        const bool last_try = attempt == opts_.max_attempts;
        const bool retryable =
            cls.kind == policy::outcome::transient || cls.kind == policy::outcome::in_doubt;
        std::chrono::milliseconds delay{0};
        if (retryable && !last_try) {
          delay = policy::backoff(attempt, opts_.backoff_base, opts_.backoff_cap, random_u64());
          if (cls.retry_after_s)
            delay = std::max<std::chrono::milliseconds>(delay,
                                                        std::chrono::seconds(*cls.retry_after_s));
        }
        const bool will_retry = retryable && !last_try &&
                                steady::now() + delay + std::chrono::milliseconds(50) < f.deadline;
        const bool escalated = cls.kind == policy::outcome::invalid_grant;
        log::write(retryable || escalated || cls.kind == policy::outcome::config_error
                       ? log::level::warn
                       : log::level::info,
                   "token endpoint call",
                   {{"tenant", row.tenant_id},
                    {"connection", row.id},
                    {"provider", provider.id},
                    {"endpoint", "token_endpoint"},
                    {"trigger", trigger_name},
                    {"http_status", reply.status},
                    {"oauth_error", cls.oauth_error ? json(*cls.oauth_error) : json(nullptr)},
                    {"error_description", cls.description ? json(*cls.description) : json(nullptr)},
                    {"transport_error", reply.error},
                    {"connection_reused", reply.reused},
                    {"outcome", policy::outcome_name(cls.kind)},
                    {"token_age_s", token_age_s},
                    {"token_version", row.token_version},
                    {"attempt", attempt},
                    {"backoff_ms", will_retry ? delay.count() : 0},
                    {"reauth_escalated", escalated},
                    {"queue_latency_ms", queue_ms},
                    {"duration_ms", call_ms},
                    {"refresh_token_fingerprint", row.sealed.refresh_token_fp.value_or("")}},
                   f.request_id);

        if (cls.kind == policy::outcome::refreshed ||
            cls.kind == policy::outcome::missing_access_token) {
          // The provider has rotated: persist the whole new token set now, whatever else.
          auto t = std::move(*cls.tokens);
          const bool usable = cls.kind == policy::outcome::refreshed;
          if (!usable) {
            t.access_token = opened->access_token;  // kept, but marked expired
            t.access_expires_at = sent_at;
            t.access_lifetime = row.access_lifetime;
          }
          if (!t.refresh_token) {
            t.refresh_token = opened->refresh_token;  // no rotation: keep the old one
            t.refresh_expires_at = row.refresh_expires_at;
          }
          if (!t.scope) t.scope = row.scope;
          const long long new_version = row.token_version + 1;
          store::token_write w{
              crypto::seal_tokens(keys_, row.tenant_id, row.id, row.row_id, new_version, t),
              t.token_type,
              t.scope,
              t.access_expires_at,
              t.access_lifetime,
              t.refresh_expires_at,
              sent_at};
          event_record e = append({});
          e.outcome = usable ? "refreshed" : "provider_error";
          e.attempt = attempt;
          e.http_status = reply.status;
          e.description = cls.description;
          e.token_version_after = new_version;
          e.duration_ms = static_cast<int>(call_ms);
          // The compare-and-swap write with its notification, event and attempt closing, in the
          // transaction `t`: committed when the swap happened.
          auto write = [&](pqxx::transaction_base& t) {
            auto s = store::cas_write_token_set(t, row.tenant_id, row.id, row.token_version, w);
            if (s) {
              store::notify_change(t, change_key);
              store::append_event(t, e);
              store::close_attempt(t, attempt_id, "done");
              t.commit();
            }
            return s;
          };
          std::optional<connection_record> stored;
          std::exception_ptr write_error;
          try {
            stored = co_await lease.run([&](pqxx::connection_base&) {
              auto s = write(*tx);
              tx.reset();
              return s;
            });
          } catch (...) {
            write_error = std::current_exception();
          }
          if (write_error) {
            // The commit failed after the provider answered: keep the token set in memory and
            // retry the write on a fresh connection until the deadline (extended: the new
            // refresh token is the only one that works now).
            try {
              co_await lease.run([&](pqxx::connection_base&) { tx.reset(); });
            } catch (const std::exception&) {
              tx.release();  // unreachable in practice: the lease's connection object lives on
            }
            const auto persist_deadline =
                std::max(f.deadline, steady::now() + opts_.request_timeout);
            bool lost_cas = false;
            while (!stored && steady::now() < persist_deadline) {
              try {
                stored = co_await db_.run(persist_deadline, [&](pqxx::connection_base& c) {
                  pqxx::work pw(c);
                  return write(pw);
                });
                if (!stored) {
                  lost_cas = true;  // someone else wrote a newer version: theirs stands
                  break;
                }
                continue;
              } catch (const std::exception& ex) {
                log::write(
                    log::level::warn, "persist retry failed",
                    {{"tenant", row.tenant_id}, {"connection", row.id}, {"error", ex.what()}},
                    f.request_id);
              }
              if (!stored) {
                asio::steady_timer pause(co_await asio::this_coro::executor, kPersistRetryPause);
                co_await pause.async_wait(asio::use_awaitable);
              }
            }
            if (!stored && !lost_cas) {
              log::write(
                  log::level::error, "PERSIST FAILED: a rotated token set could not be stored",
                  {{"tenant", row.tenant_id},
                   {"connection", row.id},
                   {"token_version", row.token_version},
                   {"new_refresh_token_fingerprint", w.sealed.refresh_token_fp.value_or("")}},
                  f.request_id);
              try {
                co_await db_.run(steady::now() + std::chrono::seconds(5),
                                 [&](pqxx::connection_base& c) {
                                   pqxx::work pw(c);
                                   event_record pe = e;
                                   pe.outcome = "persist_failed";
                                   pe.token_version_after.reset();
                                   store::append_event(pw, pe);
                                   pw.commit();
                                 });
              } catch (const std::exception&) {
              }
              metrics_.refresh_outcome(trigger_name, "persist_failed");
              api_error err(errc::unavailable, "the refreshed token set could not be stored");
              err.retry_after = 1;
              throw err;
            }
          }
          if (!stored) {
            // Lost the compare-and-swap (cannot happen under the row lock, but never overwrite).
            throw api_error(errc::conflict, "the connection changed concurrently");
          }
          metrics_.refresh_outcome(trigger_name, usable ? "refreshed" : "provider_error");
          if (!usable) {
            throw api_error(errc::provider_error,
                            "the provider returned no usable access token; its new refresh "
                            "token was stored");
          }
          flight_result fr;
          fr.conn = std::move(*stored);
          fr.access_token = std::move(t.access_token);
          co_return fr;
        }

        if (cls.kind == policy::outcome::invalid_grant) {
          const bool earlier =
              in_doubt_seen || co_await db_.run(f.deadline, [&](pqxx::connection_base& c) {
                pqxx::read_transaction rt(c);
                return store::has_unresolved_attempt(rt, row.row_id, row.token_version, attempt_id);
              });
          const auto reason = policy::reauth_reason(earlier, row.refresh_expires_at, now);
          co_await lease.run([&](pqxx::connection_base&) {
            event_record e = append({});
            e.outcome = "invalid_grant";
            e.attempt = attempt;
            e.http_status = reply.status;
            e.oauth_error = cls.oauth_error;
            e.description = "reauthorization needed (" + reason + "); token age " +
                            std::to_string(token_age_s) + " s" +
                            (cls.description ? "; provider said: " + *cls.description : "");
            e.duration_ms = static_cast<int>(call_ms);
            store::mark_needs_reauth(*tx, row.tenant_id, row.id, reason,
                                     last_error_json("invalid_grant", cls, reply.status, now));
            store::notify_change(*tx, change_key);
            store::append_event(*tx, e);
            store::close_attempt(*tx, attempt_id, "failed");
            tx->commit();
            tx.reset();
          });
          metrics_.reauth_required(reason);
          metrics_.refresh_outcome(trigger_name, "invalid_grant");
          row.status = "needs_reauth";
          row.reauth_reason = reason;
          throw reauth_error(row);
        }

        if (cls.kind == policy::outcome::config_error ||
            cls.kind == policy::outcome::provider_error) {
          const bool config = cls.kind == policy::outcome::config_error;
          co_await lease.run([&](pqxx::connection_base&) {
            event_record e = append({});
            e.outcome = config ? "config_error" : "provider_error";
            e.attempt = attempt;
            e.http_status = reply.status ? std::optional<int>(reply.status) : std::nullopt;
            e.oauth_error = cls.oauth_error;
            e.description = cls.description ? *cls.description : cls.summary;
            e.duration_ms = static_cast<int>(call_ms);
            if (config) {
              store::set_provider_cooldown(*tx, row.tenant_id, provider.id,
                                           now + opts_.config_error_cooldown);
            }
            store::record_refresh_failure(*tx, row.tenant_id, row.id,
                                          last_error_json(e.outcome, cls, reply.status, now),
                                          std::nullopt);
            store::append_event(*tx, e);
            store::close_attempt(*tx, attempt_id, "failed");
            tx->commit();
            tx.reset();
          });
          metrics_.refresh_outcome(trigger_name, config ? "config_error" : "provider_error");
          throw api_error(config ? errc::provider_config_error : errc::provider_error,
                          config ? "the provider rejected tokend's client configuration"
                                 : "the provider answered with an error tokend cannot use");
        }

        // Transient or in doubt: record it, back off (holding the lock), try again.
        const bool doubt = cls.kind == policy::outcome::in_doubt;
        in_doubt_seen = in_doubt_seen || doubt;
        if (cls.retry_after_s) retry_after = *cls.retry_after_s;
        co_await lease.run([&](pqxx::connection_base&) {
          event_record e = append({});
          e.outcome = doubt ? "in_doubt" : "transient";
          e.attempt = attempt;
          e.http_status = reply.status ? std::optional<int>(reply.status) : std::nullopt;
          e.oauth_error = cls.oauth_error;
          e.description = cls.description ? *cls.description : cls.summary;
          e.duration_ms = static_cast<int>(call_ms);
          store::append_event(*tx, e);
          store::close_attempt(*tx, attempt_id, doubt ? "in_doubt" : "failed");
          if (!will_retry) {
            store::record_refresh_failure(*tx, row.tenant_id, row.id,
                                          last_error_json(e.outcome, cls, reply.status, now),
                                          now + opts_.failure_backoff);
          }
        });
        metrics_.refresh_outcome(trigger_name, doubt ? "in_doubt" : "transient");
        if (!will_retry) break;
        asio::steady_timer pause(co_await asio::this_coro::executor, delay);
        co_await pause.async_wait(asio::use_awaitable);
      }
      co_await lease.run([&](pqxx::connection_base&) {
        tx->commit();
        tx.reset();
      });
      r.transient = true;
      r.retry_after = retry_after;
      r.conn = row;
      r.access_token = opened->access_token;
      co_return r;
    }();
  } catch (...) {
    failure = std::current_exception();
  }
  if (tx) {
    // Roll back on the DB thread (the destructor talks to the server).
    try {
      co_await lease.run([&](pqxx::connection_base&) { tx.reset(); });
    } catch (const std::exception&) {
      tx.release();  // the connection is gone; the pool replaces it
    }
  }
  if (failure) std::rethrow_exception(failure);
  co_return out;
}

}  // namespace tokend::refresh
