// The refresh engine: serves fresh tokens and refreshes each connection exactly once per need.
// Single-flight in three layers: one flight per (tenant, connection) in this process that
// callers await (never a blocking future); a PostgreSQL row lock (SELECT ... FOR UPDATE) held
// across the provider call, so no instance calls the provider without it; and a
// compare-and-swap on token_version for the write, committed right after the provider answers.
#pragma once
#include <boost/asio/any_io_executor.hpp>
#include <boost/asio/awaitable.hpp>
#include <chrono>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>

#include "core/model.hpp"

namespace tokend::store {
class db_pool;
}
namespace tokend::crypto {
class keyring;
}
namespace tokend::oauth {
class http_client;
}
namespace tokend::observability {
class metrics;
}
namespace tokend::async {
class semaphore;
}
namespace tokend::cache {
class caches;
struct cached_token;
}  // namespace tokend::cache

namespace tokend::refresh {

struct engine_options {
  std::string instance_id;
  std::string environment = "development";
  std::chrono::seconds request_timeout{15};
  std::chrono::seconds force_refresh_min_interval{10};
  std::size_t provider_concurrency = 16;  // concurrent refreshes per provider in this process
  std::chrono::seconds config_error_cooldown{30};
  std::chrono::milliseconds backoff_base{200};
  std::chrono::milliseconds backoff_cap{2000};
  std::chrono::seconds failure_backoff{2};  // no provider call for this long after a failed flight
  int max_attempts = 3;
};

// Who asked, for events and logs.
struct caller {
  std::string tenant;
  std::string request_id;
  std::chrono::steady_clock::time_point deadline;
};

struct token_answer {
  std::shared_ptr<const cache::cached_token> token;  // the token and its rendered reply
  bool deferred = false;  // a needed refresh failed transiently; the still-valid token is served
};

class engine {
 public:
  engine(boost::asio::any_io_executor ex, engine_options opts, store::db_pool& db,
         store::db_pool& refresh_db, const crypto::keyring& keys, oauth::http_client& http,
         observability::metrics& metrics, const wall_clock& clock, cache::caches& caches);
  ~engine();

  // GET /v1/tokens/{id}: the stored token when fresh for min_ttl, else refreshed first.
  // Throws api_error per the contract's outcome table. Thread-safe.
  boost::asio::awaitable<token_answer> get(const caller& who, const std::string& id,
                                           long long min_ttl);
  // POST /v1/tokens/{id}/refresh: conditional (if_token_version) or forced. Thread-safe.
  boost::asio::awaitable<token_answer> refresh(const caller& who, const std::string& id,
                                               std::optional<long long> if_token_version);

  // Flights in progress (graceful shutdown waits for zero).
  std::size_t in_flight() const;

 private:
  struct flight;
  struct flight_result;
  enum class trigger { on_demand, forced, conditional };

  boost::asio::awaitable<token_answer> join_or_start(const caller& who,
                                                     const connection_record& seen, trigger t);
  boost::asio::awaitable<void> run_flight(std::shared_ptr<flight> f);
  boost::asio::awaitable<flight_result> fly(flight& f);
  boost::asio::awaitable<connection_record> load(const caller& who, const std::string& id);
  boost::asio::awaitable<std::string> open_or_fail(const caller& who, const connection_record& c,
                                                   std::string_view trigger_name);
  async::semaphore& provider_slots(const std::string& tenant, const std::string& provider);

  boost::asio::any_io_executor ex_;
  engine_options opts_;
  store::db_pool& db_;
  store::db_pool& refresh_db_;
  const crypto::keyring& keys_;
  oauth::http_client& http_;
  observability::metrics& metrics_;
  const wall_clock& clock_;
  cache::caches& caches_;

  mutable std::mutex mu_;  // guards flights_ and slots_
  std::map<std::pair<std::string, std::string>, std::shared_ptr<flight>> flights_;
  std::map<std::pair<std::string, std::string>, std::unique_ptr<async::semaphore>> slots_;
};

}  // namespace tokend::refresh
