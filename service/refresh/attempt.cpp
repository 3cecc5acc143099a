// The fenced attempt of one flight: lock the connection row, decide (needs reauth? a newer
// version already? forced-refresh interval? cool-down? another flight's open marker?), open the
// flight's attempt marker, call the provider (awaiting a sent request's answer past the callers'
// deadline), classify the answer and record it. The decisions are pure functions in
// core/refresh_policy and core/flight_policy; this file is the I/O around them.
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/this_coro.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <nlohmann/json.hpp>
#include <pqxx/pqxx>
#include <random>

#include "async/semaphore.hpp"
#include "cache/caches.hpp"
#include "core/provider_defaults.hpp"
#include "core/schedule_policy.hpp"
#include "crypto/crypto.hpp"
#include "crypto/token_seal.hpp"
#include "oauth/answer_log.hpp"
#include "oauth/http_client.hpp"
#include "oauth/token_request.hpp"
#include "observability/log.hpp"
#include "observability/metrics.hpp"
#include "refresh/flight.hpp"
#include "refresh/row_lock.hpp"
#include "store/change_listener.hpp"
#include "store/db_pool.hpp"
#include "store/repository.hpp"
#include "store/webhook_store.hpp"

namespace asio = boost::asio;
using nlohmann::json;
using std::chrono::milliseconds;

namespace tokend::refresh::detail {
namespace {

constexpr auto kLockIdleMargin = milliseconds(5000);
constexpr auto kRelockPause = milliseconds(250);
constexpr auto kBookkeepingTime = std::chrono::seconds(5);
constexpr auto kMinRetryCap = std::chrono::seconds(60);
// A claimed row found not due is re-stamped at least this far ahead, so a clock difference
// between this host and PostgreSQL (which decides "due" in the claim) cannot make a hot loop.
constexpr auto kRestampAtLeast = std::chrono::seconds(5);

std::uint64_t random_u64() {
  thread_local std::mt19937_64 rng{std::random_device{}()};
  return rng();
}

long long ms_since(steady::time_point t) {
  return std::chrono::duration_cast<milliseconds>(steady::now() - t).count();
}

asio::awaitable<void> pause_for(milliseconds d) {
  asio::steady_timer t(co_await asio::this_coro::executor, d);
  co_await t.async_wait(asio::use_awaitable);
}

// Sends the refresh request in a coroutine of its own and awaits its answer. If the call is
// still out at the callers' deadline, the row lock and the refresh-pool lease are released
// (committing what the lock transaction recorded) and only the call and its marker remain; the
// answer is awaited up to the answer timeout, never past `cap` (the marker's expiry).
asio::awaitable<oauth::http_result> call_provider(const engine_deps& d, flight& f, row_lock& lock,
                                                  const oauth::form_request& request,
                                                  steady::time_point cap) {
  struct pending {
    explicit pending(asio::any_io_executor ex) : done(std::move(ex)) {}
    oauth::http_result reply;
    async::signal done;
  };
  auto ex = co_await asio::this_coro::executor;
  auto p = std::make_shared<pending>(ex);
  const oauth::answer_wait wait{std::chrono::duration_cast<milliseconds>(d.opts.answer_timeout),
                                cap};
  asio::co_spawn(
      ex,
      [p, &http = d.http, request, send_deadline = f.deadline, wait]() -> asio::awaitable<void> {
        try {
          p->reply = co_await http.request("POST", request.url, request.headers, request.body,
                                           send_deadline, wait);
        } catch (const std::exception& e) {
          p->reply = {};
          p->reply.sent = true;  // unknown whether it went out: in doubt, never "not sent"
          p->reply.error = std::string("client failure: ") + e.what();
        }
        p->done.notify();
      },
      asio::detached);
  if (!co_await p->done.wait_until(f.deadline)) {
    if (lock.held()) {
      log::write(log::level::info,
                 "callers' deadline passed with the provider call out; "
                 "releasing the row lock, awaiting the answer",
                 {{"tenant", f.tenant}, {"connection", f.id}}, f.request_id);
      co_await lock.commit();
    }
    if (!co_await p->done.wait_until(cap + std::chrono::seconds(5))) {
      oauth::http_result lost;  // cannot happen: the client's own deadlines end the call first
      lost.sent = true;
      lost.error = "no answer within the answer timeout";
      co_return lost;
    }
  }
  co_return std::move(p->reply);
}

// Polls another flight's marker until it is closed or has expired (true) or `deadline` comes
// first (false). A database outage meanwhile only delays the answer.
asio::awaitable<bool> wait_out_marker(const engine_deps& d, long long marker_id,
                                      steady::time_point deadline) {
  for (;;) {
    try {
      const bool settled = co_await d.db.run(deadline, [&](pqxx::connection_base& c) {
        pqxx::read_transaction rt(c);
        return store::attempt_settled(rt, marker_id);
      });
      if (settled) co_return true;
    } catch (const api_error&) {
    }
    if (steady::now() + d.opts.fence_poll >= deadline) co_return false;
    co_await pause_for(d.opts.fence_poll);
  }
}

// Appends `e` in a transaction of its own, best effort (the event log must not turn a fallback
// into an error).
asio::awaitable<void> append_event_now(const engine_deps& d, const event_record& e) {
  try {
    co_await d.db.run(steady::now() + kBookkeepingTime, [&](pqxx::connection_base& c) {
      pqxx::work w(c);
      store::append_event(w, e);
      w.commit();
    });
  } catch (const std::exception& ex) {
    log::write(log::level::warn, "event not recorded",
               {{"connection", e.connection_id}, {"outcome", e.outcome}, {"error", ex.what()}},
               e.request_id.value_or(""));
  }
}

// A failed close of a marker is retried in the background until the marker would have expired
// anyway; until then the marker keeps fencing its version, which is safe, only slower.
void close_marker_later(const engine_deps& d, long long marker_id, std::string state,
                        steady::time_point until) {
  asio::co_spawn(
      d.ex,
      [&d, marker_id, state = std::move(state), until]() -> asio::awaitable<void> {
        while (steady::now() < until) {
          co_await pause_for(milliseconds(1000));
          try {
            co_await d.db.run(steady::now() + kBookkeepingTime, [&](pqxx::connection_base& c) {
              pqxx::work w(c);
              store::close_attempt(w, marker_id, state);
              w.commit();
            });
            co_return;
          } catch (const std::exception&) {
          }
        }
      },
      asio::detached);
}

// When the scheduler tries a connection again after this failure: exponential with jitter,
// capped at the access-token window, never before `not_before`.
sys_time retry_at(const engine_deps& d, const connection_record& row, const provider_record& p,
                  sys_time now, std::optional<sys_time> not_before = std::nullopt) {
  // The cap is the access-token window, but never below kMinRetryCap (a window of 0, from
  // refresh_ahead 0 or a tiny lifetime, must not mean a retry every 2 s forever).
  const auto window = std::max<std::chrono::seconds>(
      kMinRetryCap,
      std::chrono::seconds(policy::access_window_s(row.access_lifetime, p.refresh_ahead)));
  auto at = now + policy::scheduled_backoff(
                      row.consecutive_failures + 1, d.opts.scheduled_backoff_base,
                      std::chrono::duration_cast<milliseconds>(window), random_u64());
  if (not_before) at = std::max(at, *not_before);
  return at;
}

flight_result transient_result(const connection_record& row, int retry_after,
                               std::optional<std::string> access_token) {
  flight_result r;
  r.transient = true;
  r.retry_after = retry_after;
  r.conn = row;
  r.access_token = std::move(access_token);
  return r;
}

// Everything under (and after) the row lock.
asio::awaitable<flight_result> run_locked(const engine_deps& d, flight& f, row_lock& lock,
                                          const provider_record& provider) {
  const auto tname = trigger_name(f.t);
  const caller who{f.tenant, f.request_id, f.deadline};
  const std::string change_key = cache::caches::token_key(f.tenant, f.id);
  const auto window = policy::marker_window(d.opts.answer_timeout, d.opts.request_timeout);
  const auto sched = policy::settings_of(provider, d.opts.keepalive_margin);

  auto serve = [&](connection_record c) -> asio::awaitable<flight_result> {
    co_await lock.commit();
    flight_result fr;
    fr.access_token = co_await open_or_fail(d, who, c, tname);
    fr.conn = std::move(c);
    co_return fr;
  };

  connection_record row;
  // An outcome decided under the lock without a provider call: its event, committed with the
  // lock transaction, and its count.
  auto record_under_lock = [&](const char* outcome, const char* why) -> asio::awaitable<void> {
    event_record e = flight_event(d, f, row);
    e.outcome = outcome;
    e.description = why;
    co_await lock.run([&](pqxx::work& tx) { store::append_event(tx, e); });
    co_await lock.commit();
    d.metrics.refresh_outcome(tname, outcome, f.tenant);
  };
  std::optional<crypto::opened_tokens> opened;
  std::optional<std::string> secret;
  long long marker_id = 0;
  steady::time_point committed_after;
  // Lock, decide, pass the fence. Repeats after another flight's marker settled.
  for (;;) {
    auto locked = co_await lock.lock(f.tenant, f.id, f.deadline, kLockIdleMargin);
    if (locked.s == row_lock::status::missing)
      throw api_error(errc::not_found, "no such connection");
    if (locked.s == row_lock::status::lost) {
      if (steady::now() + kRelockPause < f.deadline) {
        co_await pause_for(kRelockPause);
        continue;
      }
      throw api_error(errc::unavailable, "the database is unavailable");
    }
    if (locked.s == row_lock::status::timed_out) {
      // Another instance's refresh holds the row until our deadline, or no refresh-pool lease
      // was free: the transient fallback, with what the callers saw.
      d.metrics.slot_wait_timeout("pool");
      d.metrics.refresh_outcome(tname, "deferred", f.tenant);
      flight_result r;
      r.transient = true;
      co_return r;
    }
    row = std::move(*locked.row);
    const auto now = d.clock.now();
    if (row.status == "needs_reauth") throw reauth_error(row);
    if (f.t == trigger::scheduled) {
      // Claimed as due: still due under the current provider settings and stored version?
      // (Provider changes never re-stamp rows in bulk; a claim finds out here.)
      auto due = policy::next_refresh_at(policy::facts_of(row), sched);
      const bool cooling = provider.cooldown_until && *provider.cooldown_until > now;
      if (!due || *due > now || cooling) {
        if (due && cooling) due = std::max(*due, *provider.cooldown_until);
        if (due) due = std::max(*due, now + kRestampAtLeast);
        co_await lock.run([&](pqxx::work& tx) { store::restamp_connection(tx, row.row_id, due); });
        f.settled = co_await lock.commit();
        flight_result fr;
        fr.not_due = true;
        fr.conn = std::move(row);
        co_return fr;
      }
    }
    // Another instance (or an earlier flight) already stored a newer, unexpired version.
    if (row.token_version > f.trigger_version && row.access_expires_at > now) {
      co_return co_await serve(std::move(row));
    }
    bool stamp_forced = false;
    if (f.t == trigger::forced) {
      if (row.last_forced_refresh_at &&
          now - *row.last_forced_refresh_at < d.opts.force_refresh_min_interval) {
        // Within the interval a forced refresh is a GET with the default min_ttl.
        if (policy::is_fresh(row.access_expires_at, row.access_lifetime, 300, now)) {
          co_return co_await serve(std::move(row));
        }
      } else {
        stamp_forced = true;
      }
    }
    if (!row.sealed.refresh_token_ct) {
      // Served as is until it expires; a conditional caller says it fails already.
      if (f.t != trigger::conditional && row.access_expires_at > now) {
        co_return co_await serve(std::move(row));
      }
      event_record e = flight_event(d, f, row);
      e.outcome = "invalid_grant";
      e.description = f.t == trigger::conditional
                          ? "imported without a refresh token; the caller reports the access "
                            "token fails"
                          : "imported without a refresh token; the access token has expired";
      policy::classification why;
      why.description = e.description;
      const auto err = last_error_json("reauth_required", why, 0, now);
      co_await lock.run([&](pqxx::work& tx) {
        if (store::mark_needs_reauth(tx, row.tenant_id, row.id, row.row_id, row.token_version,
                                     "imported_without_refresh_token", err)) {
          store::append_event(tx, e);
          store::notify_change(tx, change_key);
        }
      });
      co_await lock.commit();
      row.status = "needs_reauth";
      row.reauth_reason = "imported_without_refresh_token";
      d.metrics.reauth_required("imported_without_refresh_token", f.tenant);
      d.metrics.refresh_outcome(tname, "invalid_grant", f.tenant);
      throw reauth_error(row);
    }
    // Origin binding: the refresh token goes only to the origin it was issued for. One
    // connection's mismatch is not the provider's fault: no cool-down, the connection stays
    // active, and a re-import or reauthorization binds the new origin.
    if (const auto origin = url_origin(provider.token_url); origin != row.token_origin) {
      event_record e = flight_event(d, f, row);
      e.outcome = "config_error";
      e.description = "the provider's token endpoint moved from " + row.token_origin + " to " +
                      (origin.empty() ? std::string("an unusable URL") : origin) +
                      "; the refresh token was issued for " + row.token_origin +
                      " and is not sent elsewhere: re-import the connection or reauthorize it";
      policy::classification why;
      why.summary = "token endpoint origin changed";
      why.description = e.description;
      const auto err = last_error_json("config_error", why, 0, now);
      co_await lock.run([&](pqxx::work& tx) {
        store::record_refresh_failure(tx, row.tenant_id, row.id, err, std::nullopt,
                                      retry_at(d, row, provider, now));
        store::append_event(tx, e);
      });
      f.settled = co_await lock.commit();
      d.metrics.refresh_outcome(tname, "config_error", f.tenant);
      throw api_error(errc::provider_config_error,
                      "the connection's refresh token was issued for " + row.token_origin +
                          ", but the provider's token endpoint is now on " +
                          (origin.empty() ? std::string("an unusable URL") : origin) +
                          ": re-import or reauthorize the connection");
    }
    const bool cooling = provider.cooldown_until && *provider.cooldown_until > now;
    const bool backing_off = row.next_attempt_at && *row.next_attempt_at > now;
    if (cooling || backing_off) {
      co_await record_under_lock("deferred",
                                 cooling ? "provider on cool-down after a configuration error"
                                         : "backing off after recent transient failures");
      co_return transient_result(row, 1, std::nullopt);
    }
    opened = crypto::open_tokens(d.keys, row);
    secret.reset();
    if (provider.client_secret_ct) secret = crypto::open_client_secret(d.keys, provider);
    if (!opened || (provider.client_secret_ct && !secret)) {
      co_await record_under_lock("decrypt_failed",
                                 opened ? "the provider's client secret cannot be decrypted"
                                        : "the stored token set cannot be decrypted");
      throw api_error(errc::decrypt_failed, "a stored secret cannot be decrypted");
    }

    // The fence: no provider call while another flight's marker at this version is open.
    const auto marker = co_await lock.run([&](pqxx::work& tx) {
      return store::find_open_attempt(tx, row.row_id, row.token_version);
    });
    const auto verdict = policy::decide_fence(marker, std::nullopt);
    std::optional<long long> fence_id;
    if (verdict == policy::fence_verdict::wait) fence_id = marker->id;
    if (!fence_id) {
      if (verdict == policy::fence_verdict::take_over) {
        log::write(log::level::warn, "expired attempt marker: its outcome is in doubt",
                   {{"tenant", row.tenant_id},
                    {"connection", row.id},
                    {"attempt_id", marker->id},
                    {"token_version", row.token_version}},
                   f.request_id);
      }
      // Our marker, committed on the short pool before the call (never a second refresh-pool
      // lease); a unique violation means another flight opened one after all.
      committed_after = steady::now();
      const auto opened_id =
          co_await d.db.run(f.deadline, [&](pqxx::connection_base& c) -> std::optional<long long> {
            pqxx::work w(c);
            try {
              auto id = store::open_attempt(w, row.tenant_id, row.row_id, row.token_version,
                                            d.opts.instance_id, f.request_id, window.count());
              w.commit();
              return id;
            } catch (const pqxx::unique_violation&) {
              return std::nullopt;
            }
          });
      if (opened_id) {
        marker_id = *opened_id;
        if (stamp_forced) {
          co_await lock.run([&](pqxx::work& tx) {
            store::set_last_forced_refresh(tx, row.tenant_id, row.id, now);
          });
        }
        break;
      }
    }
    // Fenced: release the lock (the owner may need it to persist) and the lease, wait.
    co_await lock.release();
    log::write(log::level::info, "fenced: another flight's attempt at this version is open",
               {{"tenant", row.tenant_id},
                {"connection", row.id},
                {"attempt_id", fence_id ? json(*fence_id) : json(nullptr)},
                {"token_version", row.token_version}},
               f.request_id);
    bool settled = false;
    if (fence_id) {
      settled = co_await wait_out_marker(d, *fence_id, f.deadline);
    } else if (steady::now() + d.opts.fence_poll < f.deadline) {
      co_await pause_for(d.opts.fence_poll);
      settled = true;
    }
    if (settled) continue;
    event_record e = flight_event(d, f, row);
    e.outcome = "deferred";
    e.description = "another refresh of this connection is still in flight (attempt marker open)";
    co_await append_event_now(d, e);
    d.metrics.refresh_outcome(tname, "deferred", f.tenant);
    co_return transient_result(row, 1, opened->access_token);
  }

  const auto request = oauth::refresh_request(provider, *opened->refresh_token, secret);
  const auto token_age_s = std::chrono::duration_cast<std::chrono::seconds>(
                               d.clock.now() - row.last_refreshed_at.value_or(row.created_at))
                               .count();
  bool in_doubt_seen = false;
  bool marker_ours = true;
  int retry_after = 1;
  std::string last_error;
  for (int attempt = 1; attempt <= d.opts.max_attempts; ++attempt) {
    // The provider's rate, taken right before each call so the calls themselves keep to it
    // (a flight that never calls takes none). On-demand callers go first when tokens are short,
    // also when they joined a scheduled flight.
    if (provider.refresh_rate_per_s) {
      bool priority = f.t != trigger::scheduled;
      {
        std::lock_guard lk(f.mu);
        priority = priority || f.joined > 0;
      }
      auto& bucket = d.rate_bucket(f.tenant, provider.id);
      if (!co_await bucket.take(static_cast<double>(*provider.refresh_rate_per_s), f.deadline,
                                priority)) {
        d.metrics.slot_wait_timeout("rate");
        d.metrics.refresh_outcome(tname, "deferred", f.tenant);
        break;  // the transient fallback; the marker is closed as failed (nothing was sent)
      }
    }
    if (attempt > 1) {
      // A fresh expiry for this call's whole answer window, committed before it is sent.
      committed_after = steady::now();
      bool renewed = false;
      try {
        renewed = co_await d.db.run(f.deadline, [&](pqxx::connection_base& c) {
          pqxx::work w(c);
          const bool ok = store::renew_attempt(w, marker_id, attempt, window.count());
          w.commit();
          return ok;
        });
      } catch (const api_error&) {
      }
      if (!renewed) {
        log::write(log::level::warn, "attempt marker not renewed; no further provider call",
                   {{"tenant", row.tenant_id}, {"connection", row.id}, {"attempt_id", marker_id}},
                   f.request_id);
        marker_ours = false;
        break;
      }
    }
    const auto queue_ms = ms_since(f.started);
    const auto sent_at = d.clock.now();
    const auto call_started = steady::now();
    auto reply =
        co_await call_provider(d, f, lock, request, policy::answer_cap(committed_after, window));
    const auto call_ms = ms_since(call_started);
    d.metrics.provider_call(static_cast<double>(call_ms) / 1000.0);
    d.metrics.provider_response(provider.id, reply.status);
    policy::provider_reply pr{reply.sent, reply.status, reply.body_complete, std::move(reply.body),
                              reply.retry_after};
    auto cls =
        reply.refused
            ? policy::classification{policy::outcome::config_error,           {}, {},
                                     std::string("outbound address refused"), {}, reply.error}
            : policy::classify(pr, sent_at,
                               {provider.default_expires_in, provider.refresh_token_lifetime});
    const bool last_try = attempt == d.opts.max_attempts;
    const bool retryable =
        cls.kind == policy::outcome::transient || cls.kind == policy::outcome::in_doubt;
    milliseconds delay{0};
    if (retryable && !last_try) {
      delay = policy::backoff(attempt, d.opts.backoff_base, d.opts.backoff_cap, random_u64());
      if (cls.retry_after_s)
        delay = std::max<milliseconds>(delay, std::chrono::seconds(*cls.retry_after_s));
    }
    const bool will_retry = retryable && !last_try && lock.held() &&
                            steady::now() + delay + milliseconds(50) < f.deadline;
    const bool escalated = cls.kind == policy::outcome::invalid_grant;
    const auto now = d.clock.now();
    // The token-endpoint line: every field operations need (DOMAIN.md), rendered without a DOM.
    // Written when `line` goes out of scope: a block of its own, so it is written here, before
    // anything is awaited (a record holds this thread's line buffer).
    {
      log::record line(retryable || escalated || cls.kind == policy::outcome::config_error
                           ? log::level::warn
                           : log::level::info,
                       "token endpoint call", f.request_id);
      line.str("tenant", row.tenant_id)
          .str("connection", row.id)
          .str("provider", provider.id)
          .str("endpoint", "token_endpoint")
          .str("grant_type", "refresh_token")
          .str("trigger", tname);
      oauth::answer_fields(line, reply, cls)
          .num("token_age_s", token_age_s)
          .num("token_version", row.token_version)
          .num("attempt", attempt)
          .num("attempt_id", marker_id)
          .num("backoff_ms", will_retry ? static_cast<long long>(delay.count()) : 0LL)
          .flag("reauth_escalated", escalated)
          .num("queue_latency_ms", static_cast<long long>(queue_ms))
          .num("duration_ms", static_cast<long long>(call_ms))
          .str("client_id_hash", crypto::fingerprint(provider.client_id))
          .str("redirect_uri_hash",
               provider.redirect_uri
                   ? std::optional<std::string>(crypto::fingerprint(*provider.redirect_uri))
                   : std::nullopt)
          .str("refresh_token_fingerprint", row.sealed.refresh_token_fp.value_or(""));
    }

    event_record e = flight_event(d, f, row);
    e.attempt = attempt;
    e.http_status = reply.status ? std::optional<int>(reply.status) : std::nullopt;
    e.oauth_error = cls.oauth_error;
    e.duration_ms = static_cast<int>(call_ms);

    if (cls.kind == policy::outcome::refreshed ||
        cls.kind == policy::outcome::missing_access_token) {
      // The provider has rotated: from now on the stored token set may be void. Persist the
      // whole new one, whatever else happens.
      f.answered = true;
      d.caches.invalidate(change_key);
      auto t = std::move(*cls.tokens);
      const bool usable = cls.kind == policy::outcome::refreshed;
      if (!usable) {
        t.access_token = opened->access_token;  // kept, but marked expired
        t.access_expires_at = sent_at;
        t.access_lifetime = row.access_lifetime;
      }
      const bool rotated = t.refresh_token.has_value();
      if (!t.refresh_token) {
        t.refresh_token = opened->refresh_token;  // no rotation: keep the old one
        t.refresh_expires_at = row.refresh_expires_at;
      }
      if (!t.scope) t.scope = row.scope;
      const long long new_version = row.token_version + 1;
      // The due rule for the new token set. A refresh inside the keep-alive margin that did not
      // move the refresh token's expiry (an absolute lifetime) stops keep-alive for it.
      connection_record next = row;
      next.access_expires_at = t.access_expires_at;
      next.access_lifetime = t.access_lifetime;
      next.refresh_expires_at = t.refresh_expires_at;
      if (rotated) next.refresh_lifetime = t.refresh_lifetime;
      next.next_attempt_at.reset();
      const auto keepalive_due = policy::keepalive_due_at(policy::facts_of(row), sched);
      const bool keepalive_needed = keepalive_due && *keepalive_due <= sent_at;
      next.refresh_token_expiring =
          (keepalive_needed || row.refresh_token_expiring) &&
          !policy::keepalive_renewed(
              row.refresh_expires_at, t.refresh_expires_at,
              policy::keepalive_margin(policy::facts_of(row), sched),
              std::chrono::duration_cast<std::chrono::seconds>(
                  sent_at -
                  std::max(row.updated_at, row.last_refreshed_at.value_or(row.created_at))));
      const bool newly_expiring = next.refresh_token_expiring && !row.refresh_token_expiring;
      auto next_refresh = policy::next_refresh_at(policy::facts_of(next), sched);
      // No usable access token: a failure for the back-off (counted on, not reset).
      if (!usable) next_refresh = retry_at(d, row, provider, sent_at);
      const store::token_write w{
          crypto::seal_tokens(d.keys, row.tenant_id, row.id, row.row_id, new_version, t),
          t.token_type,
          t.scope,
          t.access_expires_at,
          t.access_lifetime,
          t.refresh_expires_at,
          sent_at,
          next_refresh,
          next.refresh_lifetime,
          next.refresh_token_expiring,
          !usable};
      event_record expiring_event;
      if (newly_expiring) {
        expiring_event = flight_event(d, f, row);
        expiring_event.outcome = "refresh_token_expiring";
        expiring_event.token_version_before = new_version;
        expiring_event.description =
            "the refresh token expires at " + format_rfc3339(*t.refresh_expires_at) +
            " and refreshing did not renew it (the provider's refresh-token lifetime is "
            "absolute): keep-alive stopped; reauthorize the connection before then";
      }
      e.outcome = usable ? "refreshed" : "provider_error";
      e.description = cls.description;
      e.token_version_after = new_version;
      {
        std::lock_guard lk(f.mu);
        f.pending_fingerprint = w.sealed.refresh_token_fp.value_or("");
      }
      std::optional<connection_record> stored;
      answer_write aw;
      aw.what = "token set";
      aw.lose_first_ack = d.opts.test_lose_commit_ack;
      aw.write = [&](pqxx::transaction_base& tx) {
        stored =
            store::cas_write_token_set(tx, row.tenant_id, row.id, row.row_id, row.token_version, w);
        if (!stored) return false;
        store::notify_change(tx, change_key);
        store::append_event(tx, e);
        if (newly_expiring) {
          store::append_event(tx, expiring_event);
          store::enqueue_webhook(tx, row.tenant_id, row.id, "connection.refresh_token_expiring",
                                 "refresh_token_not_renewed");
        }
        store::close_attempt(tx, marker_id, "done");
        return true;
      };
      aw.landed = [&](pqxx::transaction_base& tx) {
        auto cur = store::get_connection(tx, row.tenant_id, row.id);
        if (!cur || cur->row_id != row.row_id || cur->token_version != new_version ||
            cur->sealed.access_token_fp != w.sealed.access_token_fp) {
          return false;
        }
        stored = std::move(cur);
        return true;
      };
      const auto o = co_await commit_after_answer(d, f, lock, aw, f.deadline, true);
      if (o != policy::write_outcome::committed && o != policy::write_outcome::already_landed) {
        log::write(log::level::error, "PERSIST FAILED: a rotated token set could not be stored",
                   {{"tenant", row.tenant_id},
                    {"connection", row.id},
                    {"token_version", row.token_version},
                    {"reason", o == policy::write_outcome::cas_miss ? "the connection changed"
                                                                    : "database error"},
                    {"new_refresh_token_fingerprint", w.sealed.refresh_token_fp.value_or("")}},
                   f.request_id);
        event_record pe = e;
        pe.outcome = "persist_failed";
        pe.token_version_after.reset();
        co_await append_event_now(d, pe);
        close_marker_later(d, marker_id, "in_doubt", steady::now() + window);
        d.metrics.refresh_outcome(tname, "persist_failed", f.tenant);
        f.persist_pending = false;
        throw write_pending_error();
      }
      f.settled = true;
      if (newly_expiring) d.metrics.refresh_outcome(tname, "refresh_token_expiring", f.tenant);
      if (f.persist_pending.exchange(false)) {
        log::write(log::level::warn, "pending token set stored",
                   {{"tenant", row.tenant_id},
                    {"connection", row.id},
                    {"token_version", new_version},
                    {"new_refresh_token_fingerprint", w.sealed.refresh_token_fp.value_or("")}},
                   f.request_id);
      }
      d.metrics.refresh_outcome(tname, usable ? "refreshed" : "provider_error", f.tenant);
      if (!usable) {
        throw api_error(errc::provider_error,
                        "the provider returned no usable access token; its new refresh token was "
                        "stored");
      }
      flight_result fr;
      fr.conn = std::move(*stored);
      fr.access_token = std::move(t.access_token);
      co_return fr;
    }

    if (cls.kind == policy::outcome::invalid_grant) {
      // The bookkeeping gets its own deadline: it must not be lost to an expired request.
      const auto until = steady::now() + d.opts.request_timeout;
      bool earlier = in_doubt_seen;
      if (!earlier) {
        try {
          earlier = co_await d.db.run(until, [&](pqxx::connection_base& c) {
            pqxx::read_transaction rt(c);
            return store::has_unresolved_attempt(rt, row.row_id, row.token_version, marker_id);
          });
        } catch (const api_error&) {
        }
      }
      const auto reason = policy::reauth_reason(earlier, row.refresh_expires_at, now);
      e.outcome = "invalid_grant";
      e.description = "reauthorization needed (" + reason + "); token age " +
                      std::to_string(token_age_s) + " s" +
                      (cls.description ? "; provider said: " + *cls.description : "");
      const auto err = last_error_json("invalid_grant", cls, reply.status, now);
      answer_write aw;
      aw.what = "needs_reauth";
      aw.write = [&](pqxx::transaction_base& tx) {
        store::close_attempt(tx, marker_id, "failed");
        if (store::mark_needs_reauth(tx, row.tenant_id, row.id, row.row_id, row.token_version,
                                     reason, err)) {
          store::notify_change(tx, change_key);
          store::append_event(tx, e);
        }
        return true;
      };
      const auto o = co_await commit_after_answer(d, f, lock, aw, until, false);
      if (o != policy::write_outcome::committed) {
        log::write(log::level::error, "needs_reauth could not be recorded",
                   {{"tenant", row.tenant_id}, {"connection", row.id}, {"reason", reason}},
                   f.request_id);
      }
      d.metrics.reauth_required(reason, f.tenant);
      d.metrics.refresh_outcome(tname, "invalid_grant", f.tenant);
      row.status = "needs_reauth";
      row.reauth_reason = reason;
      throw reauth_error(row);
    }

    if (cls.kind == policy::outcome::config_error || cls.kind == policy::outcome::provider_error) {
      const bool config = cls.kind == policy::outcome::config_error;
      e.outcome = config ? "config_error" : "provider_error";
      e.description = cls.description ? *cls.description : cls.summary;
      const auto err = last_error_json(e.outcome, cls, reply.status, now);
      answer_write aw;
      aw.what = e.outcome;
      aw.write = [&](pqxx::transaction_base& tx) {
        if (config) {
          store::set_provider_cooldown(tx, row.tenant_id, provider.id,
                                       now + d.opts.config_error_cooldown);
        }
        store::record_refresh_failure(
            tx, row.tenant_id, row.id, err, std::nullopt,
            retry_at(d, row, provider, now,
                     config ? std::optional<sys_time>(now + d.opts.config_error_cooldown)
                            : std::nullopt));
        store::append_event(tx, e);
        store::close_attempt(tx, marker_id, "failed");
        return true;
      };
      const auto o =
          co_await commit_after_answer(d, f, lock, aw, steady::now() + kBookkeepingTime, false);
      if (o != policy::write_outcome::committed) {
        close_marker_later(d, marker_id, "failed", steady::now() + window);
      } else {
        f.settled = true;
      }
      d.metrics.refresh_outcome(tname, e.outcome, f.tenant);
      throw api_error(config ? errc::provider_config_error : errc::provider_error,
                      config ? "the provider rejected tokend's client configuration"
                             : "the provider answered with an error tokend cannot use");
    }

    // Transient or in doubt: record it (durably, now), back off holding the lock and the
    // marker, try again.
    const bool doubt = cls.kind == policy::outcome::in_doubt;
    in_doubt_seen = in_doubt_seen || doubt;
    if (cls.retry_after_s) retry_after = *cls.retry_after_s;
    e.outcome = doubt ? "in_doubt" : "transient";
    e.description = cls.description ? *cls.description : cls.summary;
    last_error = last_error_json(e.outcome, cls, reply.status, now);
    co_await append_event_now(d, e);
    d.metrics.refresh_outcome(tname, e.outcome, f.tenant);
    if (!will_retry) break;
    co_await pause_for(delay);
  }

  // The transient fallback. Close the marker (in doubt when an answer may have been lost) and
  // set the back-off, in the lock transaction while it is held.
  if (marker_ours) {
    const std::string state = in_doubt_seen ? "in_doubt" : "failed";
    const auto next_attempt = d.clock.now() + d.opts.failure_backoff;
    answer_write aw;
    aw.what = "attempt close";
    aw.write = [&](pqxx::transaction_base& tx) {
      store::close_attempt(tx, marker_id, state);
      if (!last_error.empty()) {
        store::record_refresh_failure(tx, row.tenant_id, row.id, last_error, next_attempt,
                                      retry_at(d, row, provider, d.clock.now(), next_attempt));
      }
      return true;
    };
    const auto o =
        co_await commit_after_answer(d, f, lock, aw, steady::now() + kBookkeepingTime, false);
    if (o != policy::write_outcome::committed) {
      close_marker_later(d, marker_id, state, steady::now() + window);
    } else if (!last_error.empty()) {
      f.settled = true;
    }
  }
  co_return transient_result(row, retry_after, opened->access_token);
}

}  // namespace

asio::awaitable<flight_result> fly(const engine_deps& d, flight& f) {
  // Provider configuration first, outside any lock; the short pool failing here is 503
  // `unavailable` (before any provider call).
  // One statement, no transaction block (the row lock re-reads the connection anyway).
  auto seen = co_await d.db.run(f.deadline, [&](pqxx::connection_base& c) {
    pqxx::nontransaction tx(c);
    return store::get_provider_of_connection(tx, f.tenant, f.id);
  });
  if (!seen) throw api_error(errc::not_found, "no such connection");
  const provider_record provider = std::move(*seen);

  // Slots in the order tenant -> provider -> pool, each wait bounded by the deadline and ending
  // in the transient fallback. The tenant cap keeps the tenant share of the refresh pool free
  // for the other tenants, so one tenant's hanging provider cannot starve them.
  struct slot_guard {
    async::semaphore& s;
    std::size_t unit;
    ~slot_guard() { s.release(unit); }
  };
  auto& tenant_cap = d.tenant_slots(f.tenant);
  auto tenant_slot = co_await tenant_cap.acquire(f.deadline);
  if (!tenant_slot) {
    d.metrics.slot_wait_timeout("tenant_share");
    throw provider_unavailable_error(1);
  }
  slot_guard tenant_guard{tenant_cap, *tenant_slot};
  auto& slots = d.provider_slots(f.tenant, provider.id);
  auto slot = co_await slots.acquire(f.deadline);
  if (!slot) {
    d.metrics.slot_wait_timeout("provider_cap");
    throw provider_unavailable_error(1);
  }
  slot_guard guard{slots, *slot};

  row_lock lock(d.refresh_db);
  std::exception_ptr failure;
  flight_result out;
  try {
    out = co_await run_locked(d, f, lock, provider);
  } catch (...) {
    failure = std::current_exception();
  }
  co_await lock.release();
  if (failure) std::rethrow_exception(failure);
  co_return out;
}

}  // namespace tokend::refresh::detail
