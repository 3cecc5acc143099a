// Integration fixtures: the suite's shared PostgreSQL cluster (started by `scripts/dev test`),
// private clusters for tests that stop PostgreSQL, throwaway databases, tokend processes.
#pragma once
#include <chrono>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "http_client.hpp"
#include "process.hpp"

namespace tokend::test {

// A libpq URI for database `db` on the cluster whose socket directory is `socket_dir`.
std::string pg_url(const std::string& socket_dir, const std::string& db);

// A private PostgreSQL 15 cluster in a temp directory (scripts/pg), removed on destruction.
class pg_cluster {
 public:
  pg_cluster();
  ~pg_cluster();
  void start();
  void stop();
  const std::string& socket_dir() const { return dir_; }

 private:
  std::string dir_;
};

// A database created for one test and dropped afterwards. Uses the suite's cluster
// (TOKEND_TEST_PGHOST) unless a private cluster's socket dir is given.
class scratch_database {
 public:
  explicit scratch_database(std::string socket_dir = "");
  ~scratch_database();
  const std::string& url() const { return url_; }
  const std::string& socket_dir() const { return socket_dir_; }
  const std::string& name() const { return name_; }
  // One value of a query that must return exactly one row ("<null>" for SQL NULL); throws
  // (failing the test) on zero or several rows.
  std::string query_text(const std::string& sql) const;
  long long query_int(const std::string& sql) const;
  // Runs `statements` in one transaction (test set-up the API does not offer).
  void exec(const std::vector<std::string>& statements) const;

 private:
  std::string socket_dir_, name_, url_;
};

// prefix + n, appended: g++ 12 at -O3 reports false -Wrestrict/-Wstringop-overflow on
// `"literal" + std::to_string(n)` (GCC bug 105651), which breaks -Werror Release builds.
std::string numbered(std::string_view prefix, long long n);

// Socket directory of the suite's cluster; fails the test when the suite was not started by
// `scripts/dev test` (which exports TOKEND_TEST_PGHOST).
std::string suite_pg_socket_dir();

// A test master key ("test1") and admin token, fixed so logs can be searched for them.
extern const std::string kTestMasterKeyB64;
extern const std::string kTestAdminToken;

// A running `tokend serve` bound to 127.0.0.1:0.
class tokend_process {
 public:
  tokend_process(const std::string& database_url, std::map<std::string, std::string> env = {},
                 std::vector<std::string> args = {"serve", "--migrate"});
  ~tokend_process();
  const std::string& address() const { return address_; }
  const std::string& metrics_address() const { return metrics_address_; }
  child_process& process() { return *proc_; }
  // Everything it has logged so far. tokend's log writer batches lines, so while it runs this
  // first sends a request with a unique request id and waits for its access-log line: every
  // line logged before the call is then in the answer (also for checks that a line is absent).
  std::string output() const;
  // SIGTERM and wait (bounded); returns the exit code or -1.
  int stop(std::chrono::milliseconds timeout = std::chrono::seconds(30));

  http_reply get(const std::string& target,
                 const std::vector<std::pair<std::string, std::string>>& headers = {}) const;
  // A request with "Authorization: Bearer <token>" (no header when token is empty).
  http_reply call(const std::string& method, const std::string& target, const std::string& token,
                  const std::string& body = "") const;
  http_reply call(const std::string& method, const std::string& target, const std::string& token,
                  const nlohmann::json& body) const {
    return call(method, target, token, body.dump());
  }
  // Creates tenant `tenant` (if needed) and an API key with `scopes`; returns the key.
  std::string tenant_key(const std::string& tenant,
                         const std::vector<std::string>& scopes = {
                             "tokens:read", "connections:read", "connections:write"}) const;

 private:
  std::string dir_;
  std::unique_ptr<child_process> proc_;
  std::string address_, metrics_address_;
};

// A Node test peer from tests/tools (oidc-server.mjs, fake-token-endpoint.mjs) on 127.0.0.1:0.
class node_peer {
 public:
  explicit node_peer(const std::string& script, std::vector<std::string> args = {});
  ~node_peer();
  const std::string& address() const { return address_; }
  std::string url(const std::string& path) const { return "http://" + address_ + path; }
  // JSON request to the peer's control API; REQUIREs a 2xx answer.
  nlohmann::json control(const std::string& method, const std::string& path,
                         const nlohmann::json& body = nullptr) const;

 private:
  std::string dir_;
  std::unique_ptr<child_process> proc_;
  std::string address_;
};

// PUT /v1/connections/{id} of `provider` with access token `at` and refresh token `rt`, expired
// (expires_at 2020-01-01) when `expires_in` is 0, else valid for `expires_in` seconds; returns
// the status.
int import_connection(const tokend_process& t, const std::string& key, const std::string& id,
                      const std::string& provider, const std::string& at, const std::string& rt,
                      long long expires_in = 0);

// PUTs an oauth2 provider `id` (client "c", secret "s", `token_url`) for the key's tenant, with
// `extra` fields merged in; REQUIREs 201.
void put_provider(const tokend_process& t, const std::string& key, const std::string& id,
                  const std::string& token_url,
                  const nlohmann::json& extra = nlohmann::json::object());

// Asserts a 400 invalid_request problem naming `field` (no `field` member when empty).
void check_invalid_request(const http_reply& r, const std::string& field);

// The refresh token stored for (tenant, connection), decrypted with the test master key.
std::optional<std::string> stored_refresh_token(const std::string& db_url,
                                                const std::string& tenant,
                                                const std::string& connection);

// Inserts `count` connections c0..c{count-1} of `provider` for `tenant` in one transaction,
// sealed with the test master key exactly as tokend seals them; access tokens from `access(i)`,
// valid for an hour.
void seed_connections(const std::string& db_url, const std::string& tenant,
                      const std::string& provider, int count,
                      const std::function<std::string(int)>& access);

// The value of one sample in Prometheus text (`name{labels}` exactly as printed); throws
// (failing the test) when the series is not there: a missing series is never read as 0.
double metric_value(const std::string& metrics_text, const std::string& series);

// Extracts "address":"host:port" from the log line whose msg is `msg`.
std::string logged_address(const std::string& output, const std::string& msg);

// Polls `pred` every 20 ms until it is true or `timeout` passes; returns its last value.
template <class Pred>
bool eventually(Pred pred, std::chrono::milliseconds timeout) {
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  for (;;) {
    if (pred()) return true;
    if (std::chrono::steady_clock::now() >= deadline) return false;
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
}

}  // namespace tokend::test
