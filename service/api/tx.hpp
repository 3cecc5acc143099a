// Helpers shared by handlers: run a function in one committed transaction on the short pool,
// and JSON responses. Header-only templates over db_pool::run.
#pragma once
#include <nlohmann/json.hpp>
#include <pqxx/pqxx>

#include "api/context.hpp"
#include "core/validate.hpp"
#include "http/message.hpp"
#include "store/db_pool.hpp"

namespace tokend::api {

// Runs f(pqxx::work&) on the short pool within the request deadline and commits.
template <class F>
auto in_tx(context& ctx, const http::request& req, F f)
    -> boost::asio::awaitable<std::invoke_result_t<F, pqxx::work&>> {
  using R = std::invoke_result_t<F, pqxx::work&>;
  co_return co_await ctx.db.run(req.deadline, [&](pqxx::connection_base& c) -> R {
    pqxx::work tx(c);
    tx.exec("SET LOCAL lock_timeout = '3s'");
    if constexpr (std::is_void_v<R>) {
      f(tx);
      tx.commit();
    } else {
      R out = f(tx);
      tx.commit();
      return out;
    }
  });
}

// A path parameter that must be a valid id (400 naming the parameter otherwise).
inline const std::string& path_id(const http::request& req, std::string_view name) {
  const auto& id = req.param(name);
  require_id(id, name);
  return id;
}

inline http::response json_reply(int status, const nlohmann::json& j) {
  return http::json_response(status, j.dump());
}

// A router handler that calls `fn(ctx, req)`: how each resource file registers its routes.
template <class Fn>
auto with_context(context& ctx, Fn fn) {
  return [&ctx, fn](http::request& req) { return fn(ctx, req); };
}

}  // namespace tokend::api
