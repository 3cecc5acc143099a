#include "reauth/flows.hpp"

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <mutex>
#include <nlohmann/json.hpp>
#include <pqxx/pqxx>

#include "async/signal.hpp"
#include "cache/caches.hpp"
#include "core/errors.hpp"
#include "core/provider_defaults.hpp"
#include "core/refresh_policy.hpp"
#include "core/schedule_policy.hpp"
#include "crypto/crypto.hpp"
#include "crypto/token_seal.hpp"
#include "http/router.hpp"
#include "oauth/answer_log.hpp"
#include "oauth/http_client.hpp"
#include "oauth/token_request.hpp"
#include "observability/log.hpp"
#include "observability/metrics.hpp"
#include "reauth/pages.hpp"
#include "store/change_listener.hpp"
#include "store/db_pool.hpp"
#include "store/reauth_store.hpp"
#include "store/repository.hpp"
#include "store/webhook_store.hpp"

namespace asio = boost::asio;
using json = nlohmann::json;
using steady = std::chrono::steady_clock;
using std::chrono::milliseconds;

namespace tokend::reauth {
namespace {

// A link token or state as minted here: base64url of 32 random bytes.
bool plausible_secret(std::string_view s) {
  if (s.size() != 43) return false;
  for (char c : s) {
    if (!((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-' ||
          c == '_'))
      return false;
  }
  return true;
}

// "2026-12-10 07:43 UTC": a link's expiry as people read it.
std::string human_time(sys_time t) {
  const auto s = format_rfc3339(t);  // 2026-12-10T07:43:34Z
  if (s.size() < 16) return s;
  std::string out(s, 0, 10);
  out.append(" ").append(s, 11, 5).append(" UTC");
  return out;
}

// The `error` of an authorization response as stored and shown: an RFC 6749 error code
// (letters, digits, '_', '.', '-'; at most 64), else "other". It comes from the browser.
std::string oauth_error_code(std::string_view e) {
  if (e.empty() || e.size() > 64) return "other";
  for (char c : e) {
    if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_' ||
          c == '.' || c == '-'))
      return "other";
  }
  return std::string(e);
}

std::string provider_label(const provider_record& p) {
  return p.display_name && !p.display_name->empty() ? *p.display_name : p.id;
}

std::string verifier_aad(const std::string& tenant, const std::string& state_hash,
                         const std::string& kid) {
  return crypto::make_aad(tenant, "reauth_state", crypto::hex(state_hash), 0, "code_verifier", kid,
                          1);
}

// Stored so a reload of the callback URL shows the same final page.
json page_json(const page& p) {
  json j{{"status", p.status}, {"title", p.title}, {"paragraphs", p.paragraphs}};
  if (p.link) j["link"] = {p.link->first, p.link->second};
  return j;
}
page page_from_json(const std::string& text) {
  page p;
  auto j = json::parse(text, nullptr, false);
  if (!j.is_object()) {
    p.status = 500;
    p.title = "Something went wrong";
    return p;
  }
  p.status = j.value("status", 200);
  p.title = j.value("title", std::string());
  p.paragraphs = j.value("paragraphs", std::vector<std::string>{});
  if (j.contains("link") && j["link"].is_array() && j["link"].size() == 2) {
    p.link = std::pair{j["link"][0].get<std::string>(), j["link"][1].get<std::string>()};
  }
  return p;
}

page simple(int status, std::string title, std::vector<std::string> paragraphs) {
  page p;
  p.status = status;
  p.title = std::move(title);
  p.paragraphs = std::move(paragraphs);
  return p;
}

page unknown_link_page() {
  return simple(404, "This link is not valid",
                {"The link is incomplete or unknown. Check that you opened the whole link you "
                 "were sent, or ask for a new one."});
}

// The page for a link that can no longer be used (completed, superseded or expired).
page gone_page(const store::reauth_link_record& l) {
  const auto s = l.shown_status();
  if (s == "completed") {
    return simple(410, "This link was already used",
                  {"The connection was reconnected with this link. Nothing else is needed; if "
                   "it stops working again you will get a new link."});
  }
  if (s == "superseded") {
    return simple(410, "A newer link exists",
                  {"A newer link was created for this connection, so this one no longer works. "
                   "Please use the most recent link you were sent."});
  }
  return simple(410, "This link has expired",
                {"The link expired on " + human_time(l.expires_at) +
                 ". Ask the person who sent it for a new one."});
}

page connection_gone_page() {
  return simple(410, "The connection no longer exists",
                {"The connection this link was for was deleted, so nothing can be reconnected "
                 "with it. Ask the person who sent the link for a new one."});
}

page unavailable_page() {
  auto p = simple(503, "Temporarily unavailable",
                  {"The service could not complete this step right now. Nothing was changed. "
                   "Please reload this page in a moment."});
  return p;
}

void append_link_event(pqxx::transaction_base& tx, const store::reauth_link_record& l,
                       const std::string& outcome, const std::string& description,
                       const std::string& request_id, const flow_options& o,
                       std::optional<int> http_status = std::nullopt) {
  if (!l.connection_row_id) return;  // a connect link: its lifecycle lives on the link
  event_record e;
  e.tenant_id = l.tenant_id;
  e.connection_id = l.connection_id;
  e.connection_row_id = *l.connection_row_id;
  e.trigger = "reauth";
  e.outcome = outcome;
  e.description = description;
  e.http_status = http_status;
  e.request_id = request_id;
  e.instance = o.instance_id;
  e.environment = o.environment;
  store::append_event(tx, e);
}

}  // namespace

struct flows::impl {
  asio::any_io_executor ex;
  flow_options o;
  store::db_pool& db;
  const crypto::keyring& keys;
  oauth::http_client& http;
  const wall_clock& clock;
  cache::caches& caches;
  std::atomic<std::size_t> running{0};

  // One committed transaction on the short pool.
  template <class F>
  auto in_tx(steady::time_point deadline, F f)
      -> asio::awaitable<std::invoke_result_t<F, pqxx::work&>> {
    using R = std::invoke_result_t<F, pqxx::work&>;
    co_return co_await db.run(deadline, [&](pqxx::connection_base& c) -> R {
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

  // The callback task's whole budget: a "still finishing" state older than this has died.
  milliseconds finish_budget() const {
    // exchange (send + answer) + canary tries + store retries + failure bookkeeping + slack
    return std::chrono::duration_cast<milliseconds>(
        o.request_timeout + o.answer_timeout + o.canary_timeout * o.canary_tries +
        o.answer_timeout + std::chrono::seconds(10) + std::chrono::seconds(30));
  }

  std::string redirect_uri(const provider_record& p) const {
    return p.redirect_uri ? *p.redirect_uri : o.public_url + "/oauth/callback";
  }

  // Runs `body`, turning failures into pages: a database outage is 503, anything else 500.
  template <class Body>
  asio::awaitable<http::response> guarded(http::request& req, Body body) {
    try {
      co_return co_await body();
    } catch (const api_error& e) {
      if (e.code() == errc::unavailable) co_return render(unavailable_page());
      log::write(log::level::error, "reauth page failed", {{"error", e.what()}}, req.request_id);
    } catch (const std::exception& e) {
      log::write(log::level::error, "reauth page failed", {{"error", e.what()}}, req.request_id);
    }
    co_return render(simple(500, "Something went wrong",
                            {"The service hit an unexpected error. Nothing was changed. Please "
                             "try again in a moment."}));
  }

  asio::awaitable<http::response> connect_page(http::request& req);
  asio::awaitable<http::response> reconnect(http::request& req);
  asio::awaitable<http::response> callback(http::request& req);

  struct exchange_job {
    std::string state_hash;
    store::reauth_link_record link;
    provider_record provider;
    std::optional<std::string> client_secret;
    std::optional<std::string> verifier;
    std::string redirect_uri;
    std::string code;
    std::string request_id;
    steady::time_point callback_deadline;
  };
  asio::awaitable<page> run_exchange(exchange_job job, std::optional<std::string>& redirect);
  // Records a failed reconnect (link failed, state finished, reauth_failed) and returns `p`.
  asio::awaitable<page> fail(const exchange_job& job, page p, std::string ops_reason,
                             std::optional<int> http_status);
};

// ---------------------------------------------------------------------------------------------
// GET /connect/{token}
// ---------------------------------------------------------------------------------------------
asio::awaitable<http::response> flows::impl::connect_page(http::request& req) {
  return guarded(req, [&]() -> asio::awaitable<http::response> {
    const auto& token = req.param("token");
    if (!plausible_secret(token)) co_return render(unknown_link_page());
    const auto hash = crypto::sha256(token);
    struct view {
      page p;
      std::vector<std::string> form_action;
    };
    bool opened = false;  // counted once the transaction committed
    auto v = co_await in_tx(req.deadline, [&](pqxx::work& tx) -> view {
      opened = false;
      auto link = store::find_link_by_token(tx, hash, true);
      if (!link) return {unknown_link_page(), {}};
      if (!link->usable()) return {gone_page(*link), {}};
      auto provider = store::get_provider(tx, link->tenant_id, link->provider_id);
      const auto tenant = store::tenant_name(tx, link->tenant_id);
      std::optional<connection_record> conn;
      if (link->kind == "reauth") {
        conn = store::get_connection(tx, link->tenant_id, link->connection_id);
        if (!conn || conn->row_id != link->connection_row_id) return {connection_gone_page(), {}};
      }
      if (store::mark_link_opened(tx, link->tenant_id, link->id)) {
        append_link_event(tx, *link, "reauth_link_opened", "link " + link->id + " opened",
                          req.request_id, o);
        opened = true;
      }
      if (!provider || !provider->authorize_url) {
        return {simple(500, "Reconnecting is not set up",
                       {"The provider of this connection has no authorization URL configured. "
                        "Please tell the person who sent this link."}),
                {}};
      }
      const auto label = provider_label(*provider);
      page p;
      p.title = link->kind == "connect" ? "Connect your " + label + " account"
                                        : "Reconnect your " + label + " account";
      p.paragraphs.push_back(reason_explanation(link->reason, label, tenant));
      if (conn && conn->last_error) {
        auto le = json::parse(*conn->last_error, nullptr, false);
        if (le.is_object() && le.contains("description") && le["description"].is_string()) {
          p.paragraphs.push_back(label + " said: " + le["description"].get<std::string>());
        }
      }
      p.paragraphs.push_back("Provider: " + label + " (" + provider->id +
                             "). Requested by: " + tenant + " (" + link->tenant_id +
                             "). Connection: " + link->connection_id + ".");
      p.paragraphs.push_back("Press Reconnect to sign in at " + label +
                             " and allow access. This link works until " +
                             human_time(link->expires_at) + ".");
      p.post_button = link->kind == "connect" ? "Connect" : "Reconnect";
      return {std::move(p), {url_origin(*provider->authorize_url)}};
    });
    if (opened && o.metrics) o.metrics->reauth_link("opened");
    co_return render(v.p, v.form_action);
  });
}

// ---------------------------------------------------------------------------------------------
// POST /connect/{token}: mint a state (+ PKCE) and continue to the provider
// ---------------------------------------------------------------------------------------------
asio::awaitable<http::response> flows::impl::reconnect(http::request& req) {
  return guarded(req, [&]() -> asio::awaitable<http::response> {
    const auto& token = req.param("token");
    if (!plausible_secret(token)) co_return render(unknown_link_page());
    const auto hash = crypto::sha256(token);
    const auto state = crypto::base64url(crypto::random_bytes(32));
    const auto state_hash = crypto::sha256(state);
    const auto verifier = crypto::base64url(crypto::random_bytes(32));
    auto p = co_await in_tx(req.deadline, [&](pqxx::work& tx) -> page {
      auto link = store::find_link_by_token(tx, hash, true);
      if (!link) return unknown_link_page();
      if (!link->usable()) return gone_page(*link);
      auto provider = store::get_provider(tx, link->tenant_id, link->provider_id);
      if (!provider || !provider->authorize_url) {
        return simple(500, "Reconnecting is not set up",
                      {"The provider of this connection has no authorization URL configured. "
                       "Please tell the person who sent this link."});
      }
      auto conn = store::get_connection(tx, link->tenant_id, link->connection_id);
      if (link->kind == "reauth" && (!conn || conn->row_id != link->connection_row_id)) {
        return connection_gone_page();
      }
      if (link->kind == "connect" && conn) {
        return simple(409, "This connection already exists",
                      {"A connection with this name was created in the meantime, so this link "
                       "cannot create it. Ask the person who sent it what to do."});
      }
      store::reauth_state_record s;
      s.tenant_id = link->tenant_id;
      s.link_id = link->id;
      s.redirect_uri = redirect_uri(*provider);
      if (provider->pkce) {
        s.key_id = keys.active_kid();
        s.verifier_ct = keys.seal(verifier, verifier_aad(s.tenant_id, state_hash, *s.key_id));
      }
      store::insert_state(tx, state_hash, s, o.state_lifetime.count());
      store::mark_link_started(tx, link->tenant_id, link->id);

      std::string url = *provider->authorize_url;
      url += url.find('?') == std::string::npos ? '?' : '&';
      url += "response_type=code&client_id=" + oauth::form_encode(provider->client_id) +
             "&redirect_uri=" + oauth::form_encode(s.redirect_uri);
      if (!provider->scopes.empty()) {
        std::string scope;
        for (const auto& sc : provider->scopes) scope += (scope.empty() ? "" : " ") + sc;
        url += "&scope=" + oauth::form_encode(scope);
      }
      url += "&state=" + state;
      if (provider->pkce) {
        url += "&code_challenge=" + crypto::base64url(crypto::sha256(verifier)) +
               "&code_challenge_method=S256";
      }
      const auto label = provider_label(*provider);
      log::write(log::level::info, "reauth started",
                 {{"tenant", link->tenant_id},
                  {"connection", link->connection_id},
                  {"link", link->id},
                  {"provider", provider->id}},
                 req.request_id);
      // A 200 page that continues by itself (meta refresh) and by a link, not a redirect: the
      // connect page's CSP form-action would apply to every redirect after its form POST, so a
      // provider that consents at once or signs in through another origin would be blocked.
      page out;
      out.title = "Continuing to " + label;
      out.paragraphs = {"You are being sent to " + label + " to sign in and allow access.",
                        "If nothing happens, use the button below."};
      out.link = std::pair{url, "Continue to " + label};
      out.refresh = std::pair{0, url};
      return out;
    });
    co_return render(p);
  });
}

// ---------------------------------------------------------------------------------------------
// GET /oauth/callback
// ---------------------------------------------------------------------------------------------
asio::awaitable<page> flows::impl::fail(const exchange_job& job, page p, std::string ops_reason,
                                        std::optional<int> http_status) {
  log::write(log::level::warn, "reauth failed",
             {{"tenant", job.link.tenant_id},
              {"connection", job.link.connection_id},
              {"link", job.link.id},
              {"reason", ops_reason}},
             job.request_id);
  const auto deadline = steady::now() + std::chrono::seconds(10);
  try {
    co_await in_tx(deadline, [&](pqxx::work& tx) {
      store::end_link_attempt(tx, job.link.tenant_id, job.link.id, "failed", ops_reason);
      store::finish_state(tx, job.state_hash, "failed", page_json(p).dump());
      append_link_event(tx, job.link, "reauth_failed", ops_reason, job.request_id, o, http_status);
    });
  } catch (const std::exception& e) {
    log::write(log::level::error, "reauth failure not recorded", {{"error", e.what()}},
               job.request_id);
  }
  co_return p;
}

asio::awaitable<page> flows::impl::run_exchange(exchange_job job,
                                                std::optional<std::string>& redirect) {
  const auto label = provider_label(job.provider);
  const auto started = steady::now();
  // 1. The code exchange: a sent request like a refresh, its answer awaited up to the answer
  // timeout even after the browser's request has been answered.
  const auto req = oauth::code_exchange_request(job.provider, job.code, job.redirect_uri,
                                                job.verifier, job.client_secret);
  const auto sent_at = clock.now();
  auto reply = co_await http.request(
      "POST", req.url, req.headers, req.body, steady::now() + o.request_timeout,
      oauth::answer_wait{std::chrono::duration_cast<milliseconds>(o.answer_timeout)});
  policy::provider_reply pr{reply.sent, reply.status, reply.body_complete, std::move(reply.body),
                            reply.retry_after};
  auto cls = reply.refused
                 ? policy::classification{policy::outcome::config_error,           {}, {},
                                          std::string("outbound address refused"), {}, reply.error}
                 : policy::classify(
                       pr, sent_at,
                       {job.provider.default_expires_in, job.provider.refresh_token_lifetime});
  const auto status = reply.status ? std::optional<int>(reply.status) : std::nullopt;
  if (o.metrics) o.metrics->provider_response(job.provider.id, reply.status);
  // Written when `line` goes out of scope: a block of its own, so it is written here, before
  // anything is awaited (a record holds this thread's line buffer).
  {
    log::record line(cls.kind == policy::outcome::refreshed ? log::level::info : log::level::warn,
                     "token endpoint call", job.request_id);
    line.str("tenant", job.link.tenant_id)
        .str("connection", job.link.connection_id)
        .str("provider", job.provider.id)
        .str("endpoint", "token_endpoint")
        .str("grant_type", "authorization_code")
        .str("trigger", "reauth");
    oauth::answer_fields(line, reply, cls)
        .null("token_age_s")  // no stored token: the grant is new
        .null("token_version")
        .num("attempt", 1)
        .str("link_id", job.link.id)
        .num("backoff_ms", 0)
        .flag("reauth_escalated", false)
        .num("queue_latency_ms", 0)
        .num("duration_ms",
             std::chrono::duration_cast<milliseconds>(steady::now() - started).count())
        .str("client_id_hash", crypto::fingerprint(job.provider.client_id))
        .str("redirect_uri_hash", crypto::fingerprint(job.redirect_uri));
  }
  if (cls.kind != policy::outcome::refreshed || !cls.tokens) {
    const std::string why = std::string("code exchange: ") +
                            std::string(policy::outcome_name(cls.kind)) +
                            (cls.oauth_error ? " (" + *cls.oauth_error + ")" : "");
    if (cls.kind == policy::outcome::invalid_grant) {
      {
        page failed = simple(502, "The sign-in could not be completed",
                             {label + " did not accept the sign-in (the authorization expired or "
                                      "was already used). Nothing was changed.",
                              "Open your link again and press Reconnect to retry."});
        co_return co_await fail(job, std::move(failed), why, status);
      }
    }
    if (cls.kind == policy::outcome::transient || cls.kind == policy::outcome::in_doubt) {
      {
        page failed = simple(503, "The sign-in could not be completed",
                             {label + " could not be reached to finish the sign-in. Nothing was "
                                      "changed.",
                              "Open your link again and press Reconnect to retry."});
        co_return co_await fail(job, std::move(failed), why, status);
      }
    }
    {
      page failed = simple(502, "The sign-in could not be completed",
                           {label + " answered the sign-in with an error. Nothing was changed.",
                            "Please tell the person who sent you the link; they can see the "
                            "details."});
      co_return co_await fail(job, std::move(failed), why, status);
    }
  }
  token_set tokens = std::move(*cls.tokens);
  if (!tokens.scope && !job.provider.scopes.empty()) {
    std::string scope;
    for (const auto& sc : job.provider.scopes) scope += (scope.empty() ? "" : " ") + sc;
    tokens.scope = scope;
  }

  // 2. The canary: a real call with the new access token, so a grant without access to the
  // data does not count as repaired. Its tries fit in the callback's time left when they can.
  std::string canary_note;
  if (job.provider.canary_url) {
    const auto canary_end =
        std::max(job.callback_deadline - milliseconds(300), steady::now() + o.canary_timeout);
    bool checked = false;
    std::string last;
    for (int attempt = 1; attempt <= o.canary_tries && steady::now() < canary_end; ++attempt) {
      // Each try gets an equal share of what is left (at most the canary timeout).
      const auto share = (canary_end - steady::now()) / (o.canary_tries - attempt + 1);
      const auto deadline = steady::now() + std::min<steady::duration>(o.canary_timeout, share);
      const std::vector<std::pair<std::string, std::string>> headers = {
          {"Authorization", "Bearer " + tokens.access_token}, {"Accept", "application/json"}};
      auto r = co_await http.request("GET", *job.provider.canary_url, headers, "", deadline);
      if (r.status >= 200 && r.status < 300) {
        checked = true;
        break;
      }
      if (r.status == 401 || r.status == 403) {
        page failed = simple(
            403, "This account lacks access",
            {"You signed in, but the account has no access to the data " + label +
                 " should share, so the connection was not changed.",
             "Sign in with an account that has access (or ask for access), then open your link "
             "again."});
        co_return co_await fail(job, std::move(failed),
                                "canary answered " + std::to_string(r.status), r.status);
      }
      last = r.refused  ? "outbound address refused"
             : r.status ? "HTTP " + std::to_string(r.status)
                        : "no answer (" + r.error + ")";
      const bool retryable =
          !r.refused && (r.status == 0 || r.status == 408 || r.status == 429 || r.status >= 500);
      if (!retryable) break;
      if (attempt < o.canary_tries) {
        asio::steady_timer t(ex);
        t.expires_after(milliseconds(200 * attempt));
        co_await t.async_wait(asio::use_awaitable);
      }
    }
    if (!checked) canary_note = "; canary could not be checked (" + last + ")";
  }

  // 3. Store, in one transaction, retried while the database is away: the grant is real now.
  page ok = simple(200, "Reconnected",
                   {"Your " + label + " account is connected again. You can close this page."});
  struct stored {
    std::optional<page> problem;
    std::optional<long long> version;
    std::optional<std::string> return_url;
    bool already_completed = false;
  };
  const auto store_until = steady::now() + o.answer_timeout;
  for (int attempt = 1;; ++attempt) {
    std::string error;
    try {
      const auto duration_ms = static_cast<int>(
          std::chrono::duration_cast<milliseconds>(steady::now() - started).count());
      auto out = co_await in_tx(steady::now() + std::chrono::seconds(10), [&](pqxx::work& tx) {
        stored s;
        auto link = store::get_link(tx, job.link.tenant_id, job.link.id, true);
        if (!link) throw std::runtime_error("reauth link vanished");
        if (link->status == "completed") {  // another Reconnect of this link finished first
          s.already_completed = true;
          store::finish_state(tx, job.state_hash, "completed", page_json(ok).dump());
          return s;
        }
        auto existing = store::get_connection(tx, link->tenant_id, link->connection_id, true);
        connection_record c;
        std::optional<long long> before;
        if (link->kind == "reauth") {
          if (!existing || existing->row_id != link->connection_row_id) {
            s.problem = connection_gone_page();
            return s;
          }
          if (existing->provider_id != link->provider_id) {  // re-imported under another one
            s.problem = simple(409, "The connection changed",
                               {"The connection was moved to another provider after this link "
                                "was created, so nothing was stored. Ask the person who sent "
                                "the link for a new one."});
            return s;
          }
          c = *existing;
          before = existing->token_version;
          c.token_version = existing->token_version + 1;
        } else {
          if (existing) {
            s.problem = simple(409, "This connection already exists",
                               {"A connection with this name was created in the meantime, so "
                                "this link could not create it. Nothing was changed."});
            return s;
          }
          c.tenant_id = link->tenant_id;
          c.id = link->connection_id;
          c.provider_id = link->provider_id;
          c.row_id = store::next_connection_row_id(tx);
          c.token_version = 1;
          c.metadata = "{}";
        }
        c.sealed = crypto::seal_tokens(keys, c.tenant_id, c.id, c.row_id, c.token_version, tokens);
        c.token_type = tokens.token_type;
        c.scope = tokens.scope;
        c.access_expires_at = tokens.access_expires_at;
        c.access_lifetime = tokens.access_lifetime;
        c.refresh_expires_at = tokens.refresh_expires_at;
        c.refresh_lifetime = tokens.refresh_lifetime;
        c.refresh_token_expiring = false;
        c.next_attempt_at.reset();
        c.token_origin = url_origin(job.provider.token_url);  // reauthorization binds the origin
        c.next_refresh_at = policy::next_refresh_at(
            policy::facts_of(c), policy::settings_of(job.provider, o.keepalive_margin));
        connection_record out;
        if (before) {
          auto w = store::reauthorize_connection(tx, c, *before);
          if (!w) throw std::runtime_error("reauthorization write lost under the row lock");
          out = std::move(*w);
          // Before the link completes, so the payload names it (data.link_id).
          store::enqueue_webhook(tx, out.tenant_id, out.id, "connection.reconnected",
                                 "reauthorized");
        } else {
          out = store::insert_connection(tx, c);
        }
        store::complete_link(tx, link->tenant_id, link->id, link->connection_id);
        event_record e;
        e.tenant_id = out.tenant_id;
        e.connection_id = out.id;
        e.connection_row_id = out.row_id;
        e.trigger = "reauth";
        e.outcome = "reauthorized";
        e.http_status = status;
        e.description = "reconnected through link " + link->id + canary_note;
        e.token_version_before = before;
        e.token_version_after = out.token_version;
        e.duration_ms = duration_ms;
        e.request_id = job.request_id;
        e.instance = o.instance_id;
        e.environment = o.environment;
        store::append_event(tx, e);
        // A return_url is honoured only while its origin is still allowed.
        if (link->return_url) {
          const auto origin = url_origin(*link->return_url);
          for (const auto& allowed : store::get_return_url_origins(tx, link->tenant_id)) {
            if (url_origin(allowed) == origin) s.return_url = link->return_url;
          }
        }
        store::finish_state(tx, job.state_hash, "completed", page_json(ok).dump());
        store::notify_change(tx, cache::caches::token_key(out.tenant_id, out.id));
        s.version = out.token_version;
        return s;
      });
      if (out.already_completed) co_return ok;
      if (out.problem) {
        {
          page failed = simple(out.problem->status, out.problem->title, out.problem->paragraphs);
          co_return co_await fail(job, std::move(failed), out.problem->title, std::nullopt);
        }
      }
      caches.invalidate(cache::caches::token_key(job.link.tenant_id, job.link.connection_id));
      if (o.metrics) o.metrics->reauth_link("completed");
      log::write(log::level::info, "reauthorized",
                 {{"tenant", job.link.tenant_id},
                  {"connection", job.link.connection_id},
                  {"link", job.link.id},
                  {"token_version", *out.version},
                  {"access_token_fingerprint", crypto::fingerprint(tokens.access_token)},
                  {"refresh_token_fingerprint",
                   tokens.refresh_token ? json(crypto::fingerprint(*tokens.refresh_token))
                                        : json(nullptr)},
                  {"canary", canary_note.empty() ? "ok or none" : "unchecked"}},
                 job.request_id);
      if (out.return_url) {
        auto url = *out.return_url;
        url += url.find('?') == std::string::npos ? '?' : '&';
        url += "connection=" + oauth::form_encode(job.link.connection_id) + "&status=reconnected";
        redirect = url;
      }
      co_return ok;
    } catch (const std::exception& e) {
      error = e.what();  // awaited below: no co_await inside a handler
    }
    if (steady::now() >= store_until) {
      log::write(log::level::error, "reauthorized token set could not be stored",
                 {{"tenant", job.link.tenant_id},
                  {"connection", job.link.connection_id},
                  {"link", job.link.id},
                  {"error", error},
                  {"refresh_token_fingerprint",
                   tokens.refresh_token ? json(crypto::fingerprint(*tokens.refresh_token))
                                        : json(nullptr)}},
                 job.request_id);
      page failed = simple(503, "The connection could not be saved",
                           {"You signed in, but the connection could not be saved. Please open "
                            "your link again in a few minutes."});
      co_return co_await fail(job, std::move(failed), "persist failed", std::nullopt);
    }
    log::write(log::level::warn, "reauthorization write failed; retrying",
               {{"connection", job.link.connection_id}, {"attempt", attempt}, {"error", error}},
               job.request_id);
    asio::steady_timer t(ex);
    t.expires_after(milliseconds(std::min(2000, 200 * attempt)));
    co_await t.async_wait(asio::use_awaitable);
  }
}

asio::awaitable<http::response> flows::impl::callback(http::request& req) {
  return guarded(req, [&]() -> asio::awaitable<http::response> {
    std::optional<std::string> state, code, error;
    try {
      state = req.query_param("state");
      code = req.query_param("code");
      error = req.query_param("error");
    } catch (const api_error&) {
      state.reset();
    }
    const page bad_state =
        simple(400, "This sign-in response is not valid",
               {"The response is unknown, was altered, or belongs to another link, so nothing was "
                "changed. Open your link again and press Reconnect."});
    if (!state || !plausible_secret(*state)) co_return render(bad_state);
    const auto state_hash = crypto::sha256(*state);

    struct claim {
      std::optional<page> done;  // answered without an exchange
      std::optional<exchange_job> job;
    };
    auto cl = co_await in_tx(req.deadline, [&](pqxx::work& tx) -> claim {
      auto st = store::get_state(tx, state_hash, true);
      if (!st) return {bad_state, {}};
      if (st->used_at) {  // a reload: the link's final state, or "still finishing"
        if (st->outcome_page) return {page_from_json(*st->outcome_page), {}};
        if (milliseconds(st->used_age_ms) < finish_budget()) {
          page p = simple(202, "Still finishing",
                          {"Your sign-in is still being completed. This page reloads in a "
                           "moment."});
          p.refresh = std::pair{2, std::string("")};
          return {p, {}};
        }
        return {simple(500, "The sign-in did not finish",
                       {"Completing your sign-in was interrupted, so nothing was changed. Open "
                        "your link again and press Reconnect."}),
                {}};
      }
      auto link = store::get_link(tx, st->tenant_id, st->link_id, true);
      auto ended = [&](const page& p, const char* outcome) -> claim {
        store::finish_state(tx, state_hash, outcome, page_json(p).dump());
        return {p, {}};
      };
      if (st->expired) {
        return ended(simple(400, "This sign-in took too long",
                            {"More than 15 minutes passed since you pressed Reconnect, so "
                             "nothing was changed. Open your link again and press Reconnect."}),
                     "failed");
      }
      if (!link || !link->usable()) return ended(link ? gone_page(*link) : bad_state, "failed");
      auto provider = store::get_provider(tx, link->tenant_id, link->provider_id);
      const auto label = provider ? provider_label(*provider) : link->provider_id;
      if (error) {
        const auto err = oauth_error_code(*error);
        if (err == "access_denied") {
          const auto p =
              simple(200, "Reconnect declined",
                     {"You declined to allow access at " + label + ", so nothing was changed.",
                      "If that was a mistake, open your link again and press "
                      "Reconnect."});
          store::end_link_attempt(tx, link->tenant_id, link->id, "declined",
                                  "declined at the provider (access_denied)");
          append_link_event(tx, *link, "reauth_declined",
                            "the user declined at the provider (access_denied)", req.request_id, o);
          return ended(p, "declined");
        }
        const auto p = simple(502, "The sign-in could not be completed",
                              {label + " reported an error (" + err + "), so nothing was changed.",
                               "Open your link again and press Reconnect to retry."});
        store::end_link_attempt(tx, link->tenant_id, link->id, "failed",
                                "authorization error: " + err);
        append_link_event(tx, *link, "reauth_failed", "authorization error: " + err, req.request_id,
                          o);
        return ended(p, "failed");
      }
      if (!code || code->empty() || code->size() > 4096 || !provider) {
        const auto p = simple(400, "This sign-in response is incomplete",
                              {"The response carries no authorization code, so nothing was "
                               "changed. Open your link again and press Reconnect."});
        store::end_link_attempt(tx, link->tenant_id, link->id, "failed",
                                "callback without an authorization code");
        append_link_event(tx, *link, "reauth_failed", "callback without an authorization code",
                          req.request_id, o);
        return ended(p, "failed");
      }
      store::use_state(tx, state_hash);  // single use: claimed before the exchange
      exchange_job job;
      job.state_hash = state_hash;
      job.link = *link;
      job.provider = *provider;
      job.client_secret = crypto::open_client_secret(keys, *provider);
      if (st->verifier_ct && st->key_id) {
        job.verifier = keys.open(*st->key_id, *st->verifier_ct,
                                 verifier_aad(st->tenant_id, state_hash, *st->key_id));
        if (!job.verifier) throw std::runtime_error("PKCE verifier does not open");
      }
      job.redirect_uri = st->redirect_uri;
      job.code = *code;
      job.request_id = req.request_id;
      job.callback_deadline = req.deadline;
      return {std::nullopt, std::move(job)};
    });
    if (cl.done) co_return render(*cl.done);

    // The exchange, canary and store run in a task of their own: the browser (or a proxy) may
    // give up first, and the grant must not be lost with it.
    struct shared {
      explicit shared(asio::any_io_executor e) : done(std::move(e)) {}
      async::signal done;
      std::mutex mu;
      std::optional<page> result;
      std::optional<std::string> redirect;
    };
    auto sh = std::make_shared<shared>(ex);
    running.fetch_add(1);
    asio::co_spawn(
        ex,
        [this, sh, job = std::move(*cl.job)]() mutable -> asio::awaitable<void> {
          std::optional<std::string> redirect;
          std::optional<page> p;
          const auto kept = job;  // for the failure record
          bool threw = false;
          try {
            p = co_await run_exchange(std::move(job), redirect);
          } catch (const std::exception& e) {
            log::write(log::level::error, "reauth task failed", {{"error", e.what()}},
                       kept.request_id);
            threw = true;
          }
          if (threw) {  // no co_await inside a handler
            page failed = simple(500, "Something went wrong",
                                 {"The sign-in could not be completed, so nothing was changed. "
                                  "Open your link again and press Reconnect."});
            p = co_await fail(kept, std::move(failed), "internal error", std::nullopt);
          }
          {
            std::lock_guard lk(sh->mu);
            sh->result = std::move(p);
            sh->redirect = std::move(redirect);
          }
          sh->done.notify();
          running.fetch_sub(1);
        },
        asio::detached);
    const bool finished = co_await sh->done.wait_until(req.deadline - milliseconds(250));
    std::lock_guard lk(sh->mu);
    if (finished && sh->redirect) {
      http::response r = render(simple(303, "Reconnected", {"Continuing..."}));
      r.set_header("Location", *sh->redirect);
      co_return r;
    }
    if (finished && sh->result) co_return render(*sh->result);
    page p = simple(202, "Still finishing",
                    {"Your sign-in is still being completed. This page reloads in a moment."});
    p.refresh = std::pair{2, std::string("")};
    co_return render(p);
  });
}

flows::flows(asio::any_io_executor ex, flow_options opts, store::db_pool& db,
             const crypto::keyring& keys, oauth::http_client& http, const wall_clock& clock,
             cache::caches& caches)
    : impl_(new impl{std::move(ex), std::move(opts), db, keys, http, clock, caches}) {}

flows::~flows() = default;

void flows::set_public_url(std::string url) { impl_->o.public_url = std::move(url); }

std::size_t flows::in_flight() const { return impl_->running.load(); }

void flows::register_routes(http::router& r) {
  auto* i = impl_.get();
  r.add("GET", "/connect/{token}", [i](http::request& req) { return i->connect_page(req); });
  r.add("POST", "/connect/{token}", [i](http::request& req) { return i->reconnect(req); });
  r.add("GET", "/oauth/callback", [i](http::request& req) { return i->callback(req); });
}

}  // namespace tokend::reauth
