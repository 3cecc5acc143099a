// The errors and events of the contract's outcome table, shared by the engine's parts.
#include <nlohmann/json.hpp>
#include <pqxx/pqxx>

#include "core/time.hpp"
#include "crypto/token_seal.hpp"
#include "observability/log.hpp"
#include "observability/metrics.hpp"
#include "refresh/flight.hpp"
#include "store/db_pool.hpp"
#include "store/repository.hpp"

using nlohmann::json;

namespace tokend::refresh::detail {

std::string trigger_name(trigger t) {
  switch (t) {
    case trigger::forced:
      return "forced";
    case trigger::conditional:
      return "conditional";
    case trigger::scheduled:
      return "scheduled";
    case trigger::on_demand:
      break;
  }
  return "on_demand";
}

api_error reauth_error(const connection_record& c) {
  const auto reason = c.reauth_reason.value_or("grant_revoked");
  api_error e(errc::reauth_required,
              "the connection needs reauthorization (" + reason + "); create a reauth link");
  json link_id = nullptr;
  if (c.open_link) link_id = c.open_link->id;
  e.extra_json = json{{"reauth", {{"reason", reason}, {"link_id", link_id}}}}.dump();
  return e;
}

api_error provider_unavailable_error(int retry_after) {
  api_error e(errc::provider_unavailable,
              "the provider could not be reached; the token was not refreshed");
  e.retry_after = std::max(1, retry_after);
  return e;
}

api_error write_pending_error() {
  api_error e(errc::unavailable,
              "the token was refreshed but could not be stored yet; retry shortly");
  e.retry_after = 1;
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

event_record flight_event(const engine_deps& d, flight& f, const connection_record& row) {
  event_record e;
  e.tenant_id = row.tenant_id;
  e.connection_id = row.id;
  e.connection_row_id = row.row_id;
  e.trigger = trigger_name(f.t);
  e.request_id = f.request_id;
  e.instance = d.opts.instance_id;
  e.environment = d.opts.environment;
  e.token_version_before = row.token_version;
  std::lock_guard lk(f.mu);
  e.joined_count = f.joined;
  return e;
}

boost::asio::awaitable<std::string> open_or_fail(const engine_deps& d, const caller& who,
                                                 const connection_record& c,
                                                 std::string_view trigger_name) {
  auto opened = crypto::open_tokens(d.keys, c);
  if (opened) co_return std::move(opened->access_token);
  co_await d.db.run(who.deadline, [&](pqxx::connection_base& conn) {
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
    e.instance = d.opts.instance_id;
    e.environment = d.opts.environment;
    store::append_event(tx, e);
    tx.commit();
  });
  log::write(log::level::error, "decrypt failed",
             {{"tenant", c.tenant_id},
              {"connection", c.id},
              {"key_id", c.sealed.key_id},
              {"token_version", c.token_version}},
             who.request_id);
  d.metrics.refresh_outcome(trigger_name, "decrypt_failed", c.tenant_id);
  throw api_error(errc::decrypt_failed, "the stored token set cannot be decrypted");
}

}  // namespace tokend::refresh::detail
