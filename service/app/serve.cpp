#include "app/serve.hpp"

#include <prometheus/gauge.h>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/redirect_error.hpp>
#include <boost/asio/signal_set.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <map>
#include <nlohmann/json.hpp>
#include <pqxx/pqxx>
#include <thread>

#include "api/auth.hpp"
#include "api/context.hpp"
#include "api/handlers.hpp"
#include "api/ops.hpp"
#include "api/readers.hpp"
#include "cache/caches.hpp"
#include "crypto/crypto.hpp"
#include "http/router.hpp"
#include "http/server.hpp"
#include "oauth/http_client.hpp"
#include "observability/log.hpp"
#include "observability/metrics.hpp"
#include "reauth/flows.hpp"
#include "refresh/engine.hpp"
#include "refresh/scheduler.hpp"
#include "store/change_listener.hpp"
#include "store/db_pool.hpp"
#include "webhooks/worker.hpp"

namespace asio = boost::asio;

namespace tokend::app {
namespace {

http::completion_hook access_log(observability::metrics& m) {
  return [&m](const http::request& req, const http::response& res,
              std::chrono::duration<double> took) {
    m.observe_request(req.method, req.route, res.status, took.count());
    // Rendered straight into this thread's buffer (no JSON DOM); a no-op below level info.
    log::record(log::level::info, "request", req.request_id)
        .str("method", req.method)
        .str("route", req.route)
        .num("status", res.status)
        .real("duration_ms", std::round(took.count() * 100000.0) / 100.0)
        .str("remote", req.remote);
  };
}

}  // namespace

int serve(const config& c) {
  observability::metrics metrics(c.metrics_tenant_limit);
  // Sessions are named "tokend-<pool>/<instance id>" (PostgreSQL keeps 63 bytes of it).
  const auto app_name = [&](const std::string& pool) {
    return "tokend-" + pool + "/" + c.instance_id;
  };
  store::db_pool db({.name = "short",
                     .conninfo = c.database_url,
                     .size = c.db_pool_size,
                     .statement_timeout = c.db_statement_timeout,
                     .idle_in_transaction_timeout = c.db_statement_timeout * 2,
                     .application_name = app_name("short")},
                    &metrics);
  // Refresh transactions hold their lease across a provider call and set their own timeouts.
  store::db_pool refresh_db({.name = "refresh",
                             .conninfo = c.database_url,
                             .size = c.refresh_pool_size,
                             .application_name = app_name("refresh")},
                            &metrics);

  asio::io_context ioc(static_cast<int>(c.threads));
  http::server_options opts{.read_timeout = c.http_read_timeout,
                            .idle_timeout = c.http_idle_timeout,
                            .request_timeout = c.request_timeout};

  const crypto::keyring keys(c.master_keys);
  api::settings api_settings{.admin_token = c.admin_token,
                             .environment = c.environment,
                             .instance_id = c.instance_id,
                             .allow_insecure_provider_urls = c.allow_insecure_provider_urls,
                             .reader_audit = c.reader_audit,
                             .public_url = c.public_url,
                             .keepalive_margin = c.keepalive_margin};
  api::key_usage usage;
  api::reader_audit readers;
  const wall_clock clock;
  cache::caches caches({.enabled = c.cache,
                        .token_capacity = c.token_cache_size,
                        .principal_capacity = c.principal_cache_size,
                        .test_insert_delay = c.test_cache_insert_delay},
                       &metrics);
  // Caches are used only while the listener is up; a (re)connect flushes them.
  // The heartbeat goes through the main URL and comes back through the listener's: caches are
  // trusted only while it arrives on time (store/change_listener.hpp).
  store::change_listener listener(
      {.listen_conninfo =
           c.listener_database_url.empty() ? c.database_url : c.listener_database_url,
       .heartbeat_conninfo = c.database_url,
       .application_name = app_name("listener"),
       .heartbeat_application_name = app_name("heartbeat")},
      [&](const std::string& payload) { caches.invalidate(payload); },
      [&](bool up) {
        if (!up) caches.state().set_up(false);
        caches.flush();
        if (up) caches.state().set_up(true);
      },
      [&](std::chrono::steady_clock::time_point until) { caches.state().trust_until(until); },
      &metrics);
  if (c.cache) listener.start();
  oauth::http_client outbound({.allow_insecure = c.allow_insecure_provider_urls});
  refresh::engine engine(ioc.get_executor(),
                         {.instance_id = c.instance_id,
                          .environment = c.environment,
                          .request_timeout = c.request_timeout,
                          .answer_timeout = c.provider_answer_timeout,
                          .force_refresh_min_interval = c.force_refresh_min_interval,
                          .tenant_refresh_share = c.tenant_refresh_share,
                          .keepalive_margin = c.keepalive_margin,
                          .test_lose_commit_ack = c.test_lose_commit_ack},
                         db, refresh_db, keys, outbound, metrics, clock, caches);
  api::context ctx{api_settings, db, keys, usage, clock, engine, caches, metrics, readers};
  // Browser-facing reauthorization (connect pages, OAuth callback): no API key.
  reauth::flows reauth_flows(ioc.get_executor(),
                             {.public_url = c.public_url,
                              .instance_id = c.instance_id,
                              .environment = c.environment,
                              .allow_insecure = c.allow_insecure_provider_urls,
                              .request_timeout = c.request_timeout,
                              .answer_timeout = c.provider_answer_timeout,
                              .keepalive_margin = c.keepalive_margin,
                              .metrics = &metrics},
                             db, keys, outbound, clock, caches);

  http::router api_routes;
  api::register_ops(api_routes, db, metrics, !c.metrics_host.has_value());
  api::register_admin(api_routes, ctx);
  api::register_providers(api_routes, ctx);
  api::register_connections(api_routes, ctx);
  api::register_tokens(api_routes, ctx);
  api::register_reauth(api_routes, ctx);
  api::register_webhooks(api_routes, ctx);
  api::register_stats(api_routes, ctx);
  reauth_flows.register_routes(api_routes);
  http::server api_server(ioc, opts, api_routes, access_log(metrics));

  http::router metrics_routes;
  std::unique_ptr<http::server> metrics_server;
  try {
    auto addr = api_server.listen(c.listen_host, c.listen_port);
    if (c.public_url_from_listen) {
      api_settings.public_url = "http://" + addr;
      reauth_flows.set_public_url(api_settings.public_url);
    }
    log::announce("listening", {{"address", addr}, {"version", TOKEND_VERSION}});
    if (c.metrics_host) {
      api::register_metrics(metrics_routes, metrics);
      metrics_server =
          std::make_unique<http::server>(ioc, opts, metrics_routes, access_log(metrics));
      auto maddr = metrics_server->listen(*c.metrics_host, c.metrics_port);
      log::announce("metrics listening", {{"address", maddr}});
    }
  } catch (const std::exception& e) {
    log::write(log::level::error, "cannot listen", {{"error", e.what()}});
    return 1;
  }

  // Proactive refresh (TOKEND_SCHEDULER=off: this instance only answers requests).
  std::unique_ptr<refresh::scheduler> scheduler;
  if (c.scheduler) {
    scheduler = std::make_unique<refresh::scheduler>(
        ioc.get_executor(),
        refresh::scheduler_options{
            .instance_id = c.instance_id,
            .concurrency = c.scheduler_concurrency,
            .interval = c.scheduler_interval,
            .lease = c.request_timeout + c.provider_answer_timeout + std::chrono::seconds(5),
            .test_pause_after_claim = c.test_scheduler_pause_after_claim},
        db, engine, metrics, clock);
    scheduler->start();
  }

  // Webhook delivery (TOKEND_WEBHOOKS=off: this instance only writes the outbox). Its own
  // client: the attempt timeout bounds every phase, and receivers are not token endpoints.
  oauth::http_client hook_client({.call_timeout = c.webhook_timeout,
                                  .idle_per_host = 4,
                                  .allow_insecure = c.allow_insecure_provider_urls});
  std::unique_ptr<webhooks::worker> hook_worker;
  if (c.webhooks) {
    hook_worker = std::make_unique<webhooks::worker>(
        ioc.get_executor(),
        webhooks::worker_options{.instance_id = c.instance_id,
                                 .concurrency = c.webhook_concurrency,
                                 .tenant_cap = c.webhook_tenant_concurrency,
                                 .interval = c.webhook_poll_interval,
                                 .timeout = c.webhook_timeout,
                                 .retry_base = c.webhook_retry_base,
                                 .max_age = c.webhook_max_age},
        db, keys, hook_client, metrics);
    hook_worker->start();
  }

  // Background: API key last-use timestamps, at most once a minute.
  asio::steady_timer usage_timer(ioc);
  asio::co_spawn(
      ioc,
      [&]() -> asio::awaitable<void> {
        for (;;) {
          usage_timer.expires_after(std::chrono::seconds(60));
          boost::system::error_code ec;
          co_await usage_timer.async_wait(asio::redirect_error(asio::use_awaitable, ec));
          co_await usage.flush(ctx);
          if (ec) co_return;  // cancelled at shutdown, after the last flush
        }
      },
      asio::detached);

  // Background: the reader audit, every TOKEND_READERS_FLUSH_INTERVAL (and at shutdown).
  asio::steady_timer readers_timer(ioc);
  asio::co_spawn(
      ioc,
      [&]() -> asio::awaitable<void> {
        for (;;) {
          readers_timer.expires_after(c.readers_flush_interval);
          boost::system::error_code ec;
          co_await readers_timer.async_wait(asio::redirect_error(asio::use_awaitable, ec));
          if (ec) co_return;  // cancelled at shutdown, which flushes last
          co_await readers.flush(ctx);
        }
      },
      asio::detached);

  // Background: connections by status (all tenants, all instances) for the gauge, from SQL.
  asio::steady_timer status_timer(ioc);
  asio::co_spawn(
      ioc,
      [&]() -> asio::awaitable<void> {
        for (;;) {
          try {
            struct counts_t {
              std::map<std::string, double> by_status{{"active", 0}, {"needs_reauth", 0}};
              double expiring = 0;
            };
            auto counts = co_await db.run(
                std::chrono::steady_clock::now() + std::chrono::seconds(10),
                [](pqxx::connection_base& conn) {
                  pqxx::read_transaction tx(conn);
                  counts_t out;
                  for (const auto& row :
                       tx.exec("SELECT status, count(*) FROM connections GROUP BY status")) {
                    out.by_status[row[0].as<std::string>()] = row[1].as<double>();
                  }
                  out.expiring =
                      tx.exec1(
                            "SELECT count(*) FROM connections WHERE status = 'active' AND "
                            "refresh_token_expiring AND refresh_expires_at > now() AND "
                            "refresh_expires_at < now() + interval '7 days'")[0]
                          .as<double>();
                  return out;
                },
                store::origin::background);
            for (const auto& [status, n] : counts.by_status) metrics.connections(status).Set(n);
            metrics.refresh_tokens_expiring().Set(counts.expiring);
          } catch (const std::exception& e) {
            log::write(log::level::warn, "connection status count failed", {{"error", e.what()}});
          }
          status_timer.expires_after(c.metrics_status_interval);
          boost::system::error_code ec;
          co_await status_timer.async_wait(asio::redirect_error(asio::use_awaitable, ec));
          if (ec) co_return;  // cancelled at shutdown
        }
      },
      asio::detached);

  asio::signal_set signals(ioc, SIGINT, SIGTERM);
  signals.async_wait([&](const boost::system::error_code& ec, int sig) {
    if (ec) return;
    log::write(log::level::info, "shutting down",
               {{"signal", sig}, {"grace_seconds", c.shutdown_grace.count()}});
    api_server.begin_shutdown();
    if (metrics_server) metrics_server->begin_shutdown();
    asio::co_spawn(
        ioc,
        [&]() -> asio::awaitable<void> {
          const auto deadline = std::chrono::steady_clock::now() + c.shutdown_grace;
          // No new claims; claims not started yet are released for the other instances.
          if (scheduler) co_await scheduler->stop();
          if (hook_worker) co_await hook_worker->stop();
          asio::steady_timer t(ioc);
          // Requests in flight finish; refreshes in flight run to their commit.
          while ((api_server.active_requests() > 0 || engine.in_flight() > 0 ||
                  reauth_flows.in_flight() > 0 || (scheduler && scheduler->running() > 0) ||
                  (hook_worker && hook_worker->running() > 0)) &&
                 std::chrono::steady_clock::now() < deadline) {
            t.expires_after(std::chrono::milliseconds(20));
            co_await t.async_wait(asio::use_awaitable);
          }
          if (api_server.active_requests() > 0) {
            log::write(log::level::warn, "grace period over; closing busy connections",
                       {{"active_requests", api_server.active_requests()}});
          }
          usage_timer.cancel();
          status_timer.cancel();
          readers_timer.cancel();
          co_await usage.flush(ctx);
          // A periodic flush still writing holds its batch: let it land, then write the rest.
          while (readers.flushing() &&
                 std::chrono::steady_clock::now() < deadline + std::chrono::seconds(30)) {
            t.expires_after(std::chrono::milliseconds(20));
            co_await t.async_wait(asio::use_awaitable);
          }
          co_await readers.flush(ctx);
          api_server.close_all();
          if (metrics_server) metrics_server->close_all();
          ioc.stop();
        },
        asio::detached);
  });

  std::vector<std::thread> threads;
  for (unsigned i = 1; i < c.threads; ++i) threads.emplace_back([&] { ioc.run(); });
  ioc.run();
  for (auto& t : threads) t.join();
  listener.stop();
  db.drain();
  refresh_db.drain();
  log::write(log::level::info, "stopped");
  log::shutdown();  // every line queued so far is written before the process exits
  return 0;
}

}  // namespace tokend::app
