#include "api/ops.hpp"

#include <nlohmann/json.hpp>
#include <pqxx/pqxx>

#include "http/problem.hpp"
#include "http/router.hpp"
#include "observability/metrics.hpp"
#include "store/db_pool.hpp"
#include "store/migrations.hpp"

namespace asio = boost::asio;

namespace tokend::api {
namespace {

constexpr auto kReadinessBudget = std::chrono::seconds(2);

}  // namespace

void register_metrics(http::router& r, observability::metrics& m) {
  r.add("GET", "/metrics", [&m](http::request&) -> asio::awaitable<http::response> {
    http::response res;
    res.content_type = "text/plain; version=0.0.4; charset=utf-8";
    res.body = m.serialize();
    co_return res;
  });
}

void register_ops(http::router& r, store::db_pool& db, observability::metrics& m,
                  bool with_metrics) {
  r.add("GET", "/healthz", [](http::request&) -> asio::awaitable<http::response> {
    co_return http::json_response(200, R"({"status":"ok"})");
  });

  r.add("GET", "/readyz", [&db](http::request& req) -> asio::awaitable<http::response> {
    const auto deadline = std::min(req.deadline, store::clock::now() + kReadinessBudget);
    std::vector<int> pending;
    try {
      pending = co_await db.run(
          deadline, [](pqxx::connection_base& c) { return store::pending_versions(c); });
    } catch (const std::exception&) {  // unreachable, timed out, or pool exhausted
      co_return http::make_problem(errc::unavailable, "database unavailable", req.request_id);
    }
    if (!pending.empty()) {
      std::string list;
      for (int v : pending) list += (list.empty() ? "" : ", ") + std::to_string(v);
      co_return http::make_problem(errc::unavailable, "migrations not applied: " + list,
                                   req.request_id, std::nullopt, 5);
    }
    nlohmann::json body = {{"status", "ready"}, {"migrations", store::known_migrations().size()}};
    co_return http::json_response(200, body.dump());
  });

  if (with_metrics) register_metrics(r, m);
}

}  // namespace tokend::api
