#include "fixtures.hpp"

#include <signal.h>
#include <unistd.h>

#include <atomic>
#include <catch2/catch.hpp>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <pqxx/pqxx>
#include <random>
#include <sstream>
#include <thread>
#include "core/provider_defaults.hpp"
#include "crypto/crypto.hpp"
#include "crypto/token_seal.hpp"
#include "store/repository.hpp"

namespace tokend::test {

const std::string kTestMasterKeyB64 = "dGVzdC1tYXN0ZXIta2V5LTAwMDAwMDAwMDAwMDAwMDA=";
const std::string kTestAdminToken = "test-admin-token-0123456789abcdef";

namespace {

std::string random_suffix() {
  static std::mt19937_64 rng{std::random_device{}()};
  static const char* alphabet = "abcdefghijklmnopqrstuvwxyz0123456789";
  std::string s;
  for (int i = 0; i < 10; ++i) s += alphabet[rng() % 36];
  return s;
}

std::string pg_script() { return std::string(TOKEND_SOURCE_DIR) + "/scripts/pg"; }

void run_pg(const std::vector<std::string>& args) {
  std::vector<std::string> argv = {"/bin/bash", pg_script()};
  argv.insert(argv.end(), args.begin(), args.end());
  auto r = run_command(argv);
  if (r.exit_code != 0) {
    FAIL("scripts/pg " << args[0] << " failed (" << r.exit_code << "): " << r.output);
  }
}

}  // namespace

std::string pg_url(const std::string& socket_dir, const std::string& db) {
  return "postgresql://postgres@/" + db + "?host=" + socket_dir;
}

std::string suite_pg_socket_dir() {
  const char* dir = std::getenv("TOKEND_TEST_PGHOST");
  if (!dir || !*dir) {
    FAIL("TOKEND_TEST_PGHOST is not set: run the suite with `scripts/dev test`");
  }
  return dir;
}

pg_cluster::pg_cluster() : dir_(temp_dir("tokend-pgtest")) {
  run_pg({"init", dir_});
  start();
}

pg_cluster::~pg_cluster() {
  std::vector<std::string> argv = {"/bin/bash", pg_script(), "destroy", dir_};
  run_command(argv);
}

void pg_cluster::start() { run_pg({"start", dir_}); }
void pg_cluster::stop() { run_pg({"stop", dir_}); }

scratch_database::scratch_database(std::string socket_dir)
    : socket_dir_(socket_dir.empty() ? suite_pg_socket_dir() : std::move(socket_dir)),
      name_("t_" + random_suffix()),
      url_(pg_url(socket_dir_, name_)) {
  pqxx::connection admin(pg_url(socket_dir_, "postgres"));
  pqxx::nontransaction tx(admin);
  tx.exec("CREATE DATABASE " + name_);
}

scratch_database::~scratch_database() {
  try {
    pqxx::connection admin(pg_url(socket_dir_, "postgres"));
    pqxx::nontransaction tx(admin);
    tx.exec("DROP DATABASE IF EXISTS " + name_ + " WITH (FORCE)");
  } catch (const std::exception&) {
    // The cluster may already be gone (private clusters); nothing to clean then.
  }
}

std::string numbered(std::string_view prefix, long long n) {
  std::string s(prefix);
  s += std::to_string(n);
  return s;
}

int import_connection(const tokend_process& t, const std::string& key, const std::string& id,
                      const std::string& provider, const std::string& at, const std::string& rt,
                      long long expires_in) {
  nlohmann::json body{{"provider", provider}, {"access_token", at}, {"refresh_token", rt}};
  if (expires_in > 0) {
    body["expires_in"] = expires_in;
  } else {
    body["expires_at"] = "2020-01-01T00:00:00Z";
  }
  return t.call("PUT", "/v1/connections/" + id, key, body).status;
}

std::string scratch_database::query_text(const std::string& sql) const {
  pqxx::connection c(url_);
  pqxx::nontransaction tx(c);
  const auto f = tx.exec1(sql)[0];
  return f.is_null() ? std::string("<null>") : f.as<std::string>();
}

long long scratch_database::query_int(const std::string& sql) const {
  pqxx::connection c(url_);
  pqxx::nontransaction tx(c);
  return tx.exec1(sql)[0].as<long long>();
}

void scratch_database::exec(const std::vector<std::string>& statements) const {
  pqxx::connection c(url_);
  pqxx::work tx(c);
  for (const auto& s : statements) tx.exec(s);
  tx.commit();
}

std::string logged_address(const std::string& output, const std::string& msg) {
  std::istringstream in(output);
  std::string line;
  while (std::getline(in, line)) {
    if (line.empty() || line[0] != '{') continue;
    auto j = nlohmann::json::parse(line, nullptr, false);
    if (j.is_discarded() || j.value("msg", "") != msg) continue;
    return j.value("address", "");
  }
  return "";
}

namespace {
// TOKEND_TEST_LOG_DIR (set by CTest): every tokend of the suite logs into that one directory,
// and the files outlive the test, so the last CTest test (log_scan) can check every line.
std::string log_path_for(const std::string& own_dir) {
  const char* dir = std::getenv("TOKEND_TEST_LOG_DIR");
  if (!dir || !*dir) return own_dir + "/tokend.log";
  std::filesystem::create_directories(dir);
  static std::atomic<int> n{0};
  return std::string(dir) + "/tokend-" + std::to_string(::getpid()) + "-" +
         std::to_string(n.fetch_add(1)) + ".log";
}
}  // namespace

tokend_process::tokend_process(const std::string& database_url,
                               std::map<std::string, std::string> env,
                               std::vector<std::string> args)
    : dir_(temp_dir("tokend-proc")) {
  std::map<std::string, std::string> full = {
      {"TOKEND_DATABASE_URL", database_url},
      {"TOKEND_LISTEN", "127.0.0.1:0"},
      {"TOKEND_MASTER_KEYS", "test1:" + kTestMasterKeyB64},
      {"TOKEND_ADMIN_TOKEN", kTestAdminToken},
      // TOKEND_TEST_THREADS: event-loop threads of every tokend a test starts (the tsan check
      // runs with 4).
      {"TOKEND_THREADS",
       std::getenv("TOKEND_TEST_THREADS") ? std::getenv("TOKEND_TEST_THREADS") : "2"},
      {"TOKEND_DB_POOL_SIZE", "4"},
      {"TOKEND_REFRESH_POOL_SIZE", "4"},
      {"TOKEND_LOG_FORMAT", "json"},
      {"TOKEND_ENVIRONMENT", "test"},
      // Tests of on-demand behaviour count provider calls exactly: the scheduler would refresh
      // their expired imports on its own. The scheduler's tests turn it on.
      {"TOKEND_SCHEDULER", "off"},
  };
  for (auto& [k, v] : env) full[k] = v;
  // TOKEND_TEST_BINARY: run another build of tokend (a sanitizer build) under these tests.
  const char* binary = std::getenv("TOKEND_TEST_BINARY");
  std::vector<std::string> argv = {binary && *binary ? binary : TOKEND_BINARY};
  argv.insert(argv.end(), args.begin(), args.end());
  proc_ = std::make_unique<child_process>(argv, full, log_path_for(dir_));
  auto out = proc_->wait_for_output("\"msg\":\"listening\"", std::chrono::seconds(30));
  if (!out) FAIL("tokend did not start listening:\n" << proc_->output());
  address_ = logged_address(*out, "listening");
  if (full.count("TOKEND_METRICS_LISTEN")) {
    auto mout = proc_->wait_for_output("\"msg\":\"metrics listening\"", std::chrono::seconds(10));
    if (mout) metrics_address_ = logged_address(*mout, "metrics listening");
  }
  REQUIRE(!address_.empty());
}

tokend_process::~tokend_process() {
  proc_.reset();
  std::filesystem::remove_all(dir_);
}

std::string tokend_process::output() const {
  if (!proc_->running()) return proc_->output();
  // A barrier: the log writer writes lines in order, so once the access-log line of this
  // request is in the file, every line logged before the call is too (warnings may be written
  // even earlier, never later).
  static std::atomic<int> n{0};
  const std::string id = "log-barrier-" + std::to_string(::getpid()) + "-" + std::to_string(++n);
  http_call(address_, "GET", "/healthz", "", {{"X-Request-Id", id}});
  if (auto out = proc_->wait_for_output(id, std::chrono::seconds(10))) return *out;
  return proc_->output();  // access log off: nothing to wait for
}

int tokend_process::stop(std::chrono::milliseconds timeout) {
  proc_->signal(SIGTERM);
  auto code = proc_->wait(timeout);
  return code ? *code : -1;
}

http_reply tokend_process::get(
    const std::string& target,
    const std::vector<std::pair<std::string, std::string>>& headers) const {
  return http_call(address_, "GET", target, "", headers);
}

}  // namespace tokend::test

namespace tokend::test {

http_reply tokend_process::call(const std::string& method, const std::string& target,
                                const std::string& token, const std::string& body) const {
  std::vector<std::pair<std::string, std::string>> headers;
  if (!token.empty()) headers.emplace_back("Authorization", "Bearer " + token);
  return http_call(address_, method, target, body, headers);
}

std::string tokend_process::tenant_key(const std::string& tenant,
                                       const std::vector<std::string>& scopes) const {
  auto t = call("POST", "/v1/tenants", kTestAdminToken,
                nlohmann::json{{"id", tenant}, {"name", "Tenant " + tenant}});
  REQUIRE((t.status == 201 || t.status == 409));
  auto k = call("POST", "/v1/tenants/" + tenant + "/api-keys", kTestAdminToken,
                nlohmann::json{{"name", "test key"}, {"scopes", scopes}});
  REQUIRE(k.status == 201);
  return k.json()["key"].get<std::string>();
}

}  // namespace tokend::test

namespace tokend::test {

node_peer::node_peer(const std::string& script, std::vector<std::string> args)
    : dir_(temp_dir("tokend-peer")) {
  std::vector<std::string> argv = {"/usr/bin/env", "node",
                                   std::string(TOKEND_SOURCE_DIR) + "/tests/tools/" + script};
  argv.insert(argv.end(), args.begin(), args.end());
  proc_ = std::make_unique<child_process>(argv, std::map<std::string, std::string>{},
                                          dir_ + "/peer.log");
  auto out = proc_->wait_for_output("\"msg\":\"listening\"", std::chrono::seconds(30));
  if (!out) FAIL(script << " did not start:\n" << proc_->output());
  address_ = logged_address(*out, "listening");
  REQUIRE(!address_.empty());
}

node_peer::~node_peer() {
  proc_.reset();
  std::filesystem::remove_all(dir_);
}

nlohmann::json node_peer::control(const std::string& method, const std::string& path,
                                  const nlohmann::json& body) const {
  auto r = http_call(address_, method, path, body.is_null() ? "" : body.dump());
  INFO(method << " " << path << " -> " << r.status << " " << r.body);
  REQUIRE(r.status >= 200);
  REQUIRE(r.status < 300);
  return r.body.empty() ? nlohmann::json::object() : r.json();
}

}  // namespace tokend::test

namespace tokend::test {

double metric_value(const std::string& text, const std::string& series) {
  std::istringstream in(text);
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind(series + " ", 0) == 0) return std::stod(line.substr(series.size() + 1));
  }
  // A missing series is not 0: a renamed metric or label must fail the test that reads it.
  throw std::runtime_error("metric series not exported: " + series);
}

}  // namespace tokend::test

namespace tokend::test {

void check_invalid_request(const http_reply& r, const std::string& field) {
  INFO(r.body);
  CHECK(r.status == 400);
  CHECK(r.header("content-type") == "application/problem+json");
  CHECK(r.json()["code"] == "invalid_request");
  if (field.empty()) {
    CHECK(!r.json().contains("field"));
  } else {
    CHECK(r.json()["field"] == field);
  }
}

namespace {
crypto::keyring test_keyring() {
  return crypto::keyring({{"test1", *crypto::base64_decode(kTestMasterKeyB64)}});
}
}  // namespace

std::optional<std::string> stored_refresh_token(const std::string& db_url,
                                                const std::string& tenant,
                                                const std::string& connection) {
  pqxx::connection c(db_url);
  pqxx::read_transaction tx(c);
  auto rec = store::get_connection(tx, tenant, connection);
  REQUIRE(rec);
  auto opened = crypto::open_tokens(test_keyring(), *rec);
  REQUIRE(opened);
  return opened->refresh_token;
}

void seed_connections(const std::string& db_url, const std::string& tenant,
                      const std::string& provider, int count,
                      const std::function<std::string(int)>& access) {
  const auto kr = test_keyring();
  pqxx::connection c(db_url);
  pqxx::work tx(c);
  const auto now = wall_clock().now();
  const auto prov = store::get_provider(tx, tenant, provider);
  const std::string origin = prov ? url_origin(prov->token_url) : std::string();
  for (int i = 0; i < count; ++i) {
    connection_record rec;
    rec.tenant_id = tenant;
    rec.id = numbered("c", i);
    rec.provider_id = provider;
    rec.row_id = store::next_connection_row_id(tx);
    token_set ts;
    ts.access_token = access(i);
    ts.refresh_token = "rt-" + std::to_string(i);
    rec.sealed = crypto::seal_tokens(kr, tenant, rec.id, rec.row_id, 1, ts);
    rec.access_expires_at = now + std::chrono::seconds(3600);
    rec.access_lifetime = 3600;
    rec.token_origin = origin;
    store::insert_connection(tx, rec);
  }
  tx.commit();
}

}  // namespace tokend::test

namespace tokend::test {

void put_provider(const tokend_process& t, const std::string& key, const std::string& id,
                  const std::string& token_url, const nlohmann::json& extra) {
  nlohmann::json body = {
      {"type", "oauth2"}, {"client_id", "c"}, {"client_secret", "s"}, {"token_url", token_url}};
  for (const auto& [k, v] : extra.items()) body[k] = v;
  auto r = t.call("PUT", "/v1/providers/" + id, key, body);
  INFO(r.body);
  REQUIRE(r.status == 201);
}

}  // namespace tokend::test
