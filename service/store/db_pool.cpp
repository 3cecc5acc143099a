#include "store/db_pool.hpp"

#include <prometheus/counter.h>
#include <prometheus/gauge.h>

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/thread_pool.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <pqxx/pqxx>
#include <vector>

#include "async/semaphore.hpp"
#include "core/errors.hpp"
#include "observability/log.hpp"
#include "observability/metrics.hpp"

namespace asio = boost::asio;

namespace tokend::store {
namespace {

// Set on DB threads for the duration of one job so count_statement() knows whom to charge.
thread_local prometheus::Counter* current_statement_counter = nullptr;

bool is_connection_loss(const pqxx::sql_error& e) {
  const auto& state = e.sqlstate();
  // 08xxx connection exceptions, 57P0x admin/crash shutdown, cannot connect now.
  return state.rfind("08", 0) == 0 || state.rfind("57P", 0) == 0;
}

}  // namespace

std::string with_connection_params(
    const std::string& conninfo, std::string_view application_name,
    std::chrono::seconds connect_timeout,
    const std::vector<std::pair<std::string, std::string>>& extra) {
  std::vector<std::pair<std::string, std::string>> params = {
      {"connect_timeout", std::to_string(connect_timeout.count())},
      {"keepalives", "1"},
      {"keepalives_idle", "30"},
      {"keepalives_interval", "10"},
      {"keepalives_count", "3"},
      {"application_name", std::string(application_name)},
  };
  params.insert(params.end(), extra.begin(), extra.end());
  const bool uri = conninfo.rfind("postgresql://", 0) == 0 || conninfo.rfind("postgres://", 0) == 0;
  std::string out = conninfo;
  for (const auto& [k, v] : params) {
    if (out.find(k + "=") != std::string::npos) continue;  // the operator's choice wins
    if (uri) {
      out += (out.find('?') == std::string::npos ? "?" : "&") + k + "=" + v;
    } else {
      out += " " + k + "=" + v;
    }
  }
  return out;
}

void count_statement() {
  if (current_statement_counter) current_statement_counter->Increment();
}

struct db_pool::impl {
  struct slot_state {
    std::unique_ptr<pqxx::connection> conn;  // touched only by the holder of the slot's lease
    // The connection was lost. It is replaced when the next lease starts, not at once: the
    // current lease may still hold objects (a pqxx::work) that refer to it.
    bool broken = false;
  };

  explicit impl(std::size_t n) : threads(n), slots(n), units(n) {}

  asio::thread_pool threads;
  std::vector<slot_state> slots;
  async::semaphore units;  // one unit per slot

  prometheus::Gauge* in_use_gauge = nullptr;
  prometheus::Gauge* waiting_gauge = nullptr;
  prometheus::Counter* request_statements = nullptr;
  prometheus::Counter* background_statements = nullptr;
  prometheus::Counter* request_jobs = nullptr;
  prometheus::Counter* background_jobs = nullptr;
};

db_pool::db_pool(pool_options opts, observability::metrics* m)
    : opts_(std::move(opts)), impl_(std::make_unique<impl>(opts_.size)) {
  if (m) {
    impl_->in_use_gauge = &m->pool_in_use(opts_.name);
    impl_->waiting_gauge = &m->pool_waiting(opts_.name);
    m->pool_size(opts_.name).Set(static_cast<double>(opts_.size));
    impl_->request_statements = &m->sql_statements("request");
    impl_->background_statements = &m->sql_statements("background");
    impl_->request_jobs = &m->db_jobs("request");
    impl_->background_jobs = &m->db_jobs("background");
  }
}

db_pool::~db_pool() { impl_->threads.join(); }

void db_pool::drain() { impl_->threads.join(); }

std::size_t db_pool::in_use() const { return impl_->units.in_use(); }

std::size_t db_pool::waiting() const { return impl_->units.waiting(); }

asio::awaitable<db_pool::lease> db_pool::acquire(clock::time_point deadline, origin o) {
  if (impl_->waiting_gauge) impl_->waiting_gauge->Increment();
  auto unit = co_await impl_->units.acquire(deadline);
  if (impl_->waiting_gauge) impl_->waiting_gauge->Decrement();
  if (!unit) {
    api_error e(errc::unavailable, "the database is busy; retry shortly", std::nullopt,
                "timed out waiting for a connection of pool " + opts_.name);
    e.retry_after = 1;
    throw e;
  }
  if (impl_->in_use_gauge) impl_->in_use_gauge->Increment();
  co_return lease(this, *unit, o);
}

void db_pool::release(std::size_t slot) {
  if (impl_->in_use_gauge) impl_->in_use_gauge->Decrement();
  impl_->units.release(slot);
}

db_pool::lease::lease(lease&& other) noexcept
    : pool_(std::exchange(other.pool_, nullptr)),
      slot_(other.slot_),
      origin_(other.origin_),
      fresh_(other.fresh_) {}

db_pool::lease::~lease() {
  if (pool_) pool_->release(slot_);
}

asio::awaitable<void> db_pool::lease::run_erased(std::function<void(pqxx::connection_base&)> fn) {
  db_pool* pool = pool_;
  auto& s = pool->impl_->slots[slot_];
  auto* counter = origin_ == origin::request ? pool->impl_->request_statements
                                             : pool->impl_->background_statements;
  const bool fresh = std::exchange(fresh_, false);
  if (auto* jobs =
          origin_ == origin::request ? pool->impl_->request_jobs : pool->impl_->background_jobs) {
    jobs->Increment();
  }
  co_await asio::co_spawn(
      pool->impl_->threads.get_executor(),
      [&]() -> asio::awaitable<void> {
        const auto& o = pool->opts_;
        try {
          if (fresh && s.broken) {
            s.conn.reset();
            s.broken = false;
          }
          if (s.broken) {
            throw pqxx::broken_connection("connection lost earlier in this lease");
          }
          if (!s.conn || !s.conn->is_open()) {
            s.conn.reset();
            s.conn = std::make_unique<pqxx::connection>(with_connection_params(
                o.conninfo, o.application_name.empty() ? "tokend-" + o.name : o.application_name,
                o.connect_timeout));
            std::string setup;
            if (o.statement_timeout.count() > 0) {
              setup +=
                  "SET statement_timeout = " + std::to_string(o.statement_timeout.count()) + ";";
            }
            if (o.idle_in_transaction_timeout.count() > 0) {
              setup += "SET idle_in_transaction_session_timeout = " +
                       std::to_string(o.idle_in_transaction_timeout.count()) + ";";
            }
            if (!setup.empty()) {
              pqxx::nontransaction tx(*s.conn);
              tx.exec(setup);
            }
          }
          current_statement_counter = counter;
          fn(*s.conn);
          current_statement_counter = nullptr;
        } catch (const pqxx::broken_connection& e) {
          current_statement_counter = nullptr;
          s.broken = true;
          throw api_error(errc::unavailable, "the database is unavailable", std::nullopt,
                          std::string("database connection lost: ") + e.what());
        } catch (const pqxx::sql_error& e) {
          current_statement_counter = nullptr;
          if (is_connection_loss(e)) {
            s.broken = true;
            throw api_error(errc::unavailable, "the database is unavailable", std::nullopt,
                            std::string("database connection lost: ") + e.what());
          }
          if (e.sqlstate() == "57014" || e.sqlstate() == "55P03") {  // statement/lock timeout
            api_error timeout(errc::unavailable, "the database did not answer in time",
                              std::nullopt, std::string("database timeout: ") + e.what());
            timeout.retry_after = 1;
            throw timeout;
          }
          throw;
        } catch (...) {
          current_statement_counter = nullptr;
          throw;
        }
        co_return;
      },
      asio::use_awaitable);
}

asio::awaitable<int> db_pool::lease::backend_pid() {
  co_return co_await run([](pqxx::connection_base& c) { return c.backendpid(); });
}

}  // namespace tokend::store
