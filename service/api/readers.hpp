// Reader audit: which API keys read which connection's token. Every served token is noted in
// memory, per (key, connection), in a shard owned by the event-loop thread that served it: the
// hot path takes no shared lock and writes nothing (a shard's mutex is contended only by the
// flush, once per interval). flush() merges every shard into connection_readers in one
// transaction (every TOKEND_READERS_FLUSH_INTERVAL and at shutdown). Thread-safe.
#pragma once
#include <atomic>
#include <boost/asio/awaitable.hpp>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "core/time.hpp"

namespace tokend::api {

struct context;

class reader_audit {
 public:
  reader_audit();
  ~reader_audit();
  reader_audit(const reader_audit&) = delete;
  reader_audit& operator=(const reader_audit&) = delete;

  void note(const std::string& key_id, const std::string& tenant, const std::string& connection,
            sys_time at);
  // Writes what was noted so far; on failure it is kept for the next flush. One flush at a
  // time: a call while another runs returns at once (its reads wait for the next one).
  boost::asio::awaitable<void> flush(context& ctx);
  bool flushing() const { return flushing_.load(); }

 private:
  struct shard;
  shard& local();
  const std::uint64_t id_;
  std::atomic<bool> flushing_{false};
  std::mutex shards_mu_;  // guards shards_ (a thread's first note, and flush)
  std::vector<std::unique_ptr<shard>> shards_;
};

}  // namespace tokend::api
