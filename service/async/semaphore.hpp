// A counting semaphore for coroutines: acquire() waits (without blocking a thread) until a unit
// is free or a deadline passes; release() hands the unit to the oldest waiter. Thread-safe.
#pragma once
#include <boost/asio/awaitable.hpp>
#include <chrono>
#include <cstddef>
#include <deque>
#include <memory>
#include <mutex>
#include <optional>
#include <vector>

namespace tokend::async {

class semaphore {
 public:
  using clock = std::chrono::steady_clock;
  // Units are numbered 0..count-1 so owners can index per-unit state (a pool's connections).
  explicit semaphore(std::size_t count);
  ~semaphore();
  semaphore(const semaphore&) = delete;
  semaphore& operator=(const semaphore&) = delete;

  // The unit acquired, or nullopt when `deadline` passed first.
  boost::asio::awaitable<std::optional<std::size_t>> acquire(clock::time_point deadline);
  void release(std::size_t unit);

  std::size_t in_use() const;
  std::size_t waiting() const;
  std::size_t capacity() const { return capacity_; }

 private:
  struct waiter;
  std::size_t capacity_;
  mutable std::mutex mu_;  // guards free_ and waiters_
  std::vector<std::size_t> free_;
  std::deque<std::shared_ptr<waiter>> waiters_;
};

}  // namespace tokend::async
