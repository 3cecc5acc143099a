// A one-shot, thread-safe wake-up for one waiting coroutine: notify() from any thread, before or
// after the waiter started waiting, is never lost (the timer is touched only by the waiter).
#pragma once
#include <boost/asio/any_io_executor.hpp>
#include <boost/asio/awaitable.hpp>
#include <chrono>
#include <memory>

namespace tokend::async {

class signal {
 public:
  explicit signal(boost::asio::any_io_executor ex);
  ~signal();
  signal(const signal&) = delete;
  signal& operator=(const signal&) = delete;

  // Thread-safe; idempotent.
  void notify();
  // True when notified (before or during the wait), false when `deadline` passed first.
  boost::asio::awaitable<bool> wait_until(std::chrono::steady_clock::time_point deadline);

 private:
  struct impl;
  std::unique_ptr<impl> impl_;
};

}  // namespace tokend::async
