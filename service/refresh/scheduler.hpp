// Proactive refresh: each instance's loop claims due connections (store::claim_due, FOR UPDATE
// SKIP LOCKED with a committed lease, so instances share the work and a dead instance's claims
// expire) and runs each as a scheduled flight of the engine: the same single-flight, fence and
// compare-and-swap as on-demand calls. It claims at most as many rows as it has free slots, and
// again as soon as slots free while rows remain due; the interval is only the idle poll.
#pragma once
#include <boost/asio/any_io_executor.hpp>
#include <boost/asio/awaitable.hpp>
#include <chrono>
#include <memory>
#include <string>

namespace tokend::store {
class db_pool;
}
namespace tokend::observability {
class metrics;
}
namespace tokend {
class wall_clock;
}

namespace tokend::refresh {

class engine;

struct scheduler_options {
  std::string instance_id;
  unsigned concurrency = 8;                  // TOKEND_SCHEDULER_CONCURRENCY
  std::chrono::milliseconds interval{1000};  // TOKEND_SCHEDULER_INTERVAL: idle poll
  // The claim lease: at least a flight's longest life (request timeout + answer timeout).
  std::chrono::seconds lease{80};
  // A claim released without a write (a flight that could not start, or was fenced) makes the
  // row due again after this, doubled at random.
  std::chrono::milliseconds release_delay{5000};
  std::chrono::milliseconds backlog_interval{5000};
  std::chrono::milliseconds test_pause_after_claim{0};  // test hook (config.hpp)
};

class scheduler {
 public:
  scheduler(boost::asio::any_io_executor ex, scheduler_options opts, store::db_pool& db,
            engine& eng, observability::metrics& metrics, const wall_clock& clock);
  ~scheduler();

  void start();
  // Stops claiming and releases the claims whose flights have not started; flights already
  // running end on their own (running() counts them until their claim is settled). Waits for
  // the loop, bounded.
  boost::asio::awaitable<void> stop();

  std::size_t running() const;

 private:
  struct impl;
  std::shared_ptr<impl> impl_;
};

}  // namespace tokend::refresh
