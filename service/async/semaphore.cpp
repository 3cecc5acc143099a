#include "async/semaphore.hpp"

#include <boost/asio/this_coro.hpp>

#include "async/signal.hpp"

namespace asio = boost::asio;

namespace tokend::async {

struct semaphore::waiter {
  explicit waiter(asio::any_io_executor ex) : wake(std::move(ex)) {}
  signal wake;           // notified on a grant
  bool granted = false;  // guarded by semaphore::mu_
  std::size_t unit = 0;  // valid when granted
};

semaphore::semaphore(std::size_t count) : capacity_(count) {
  for (std::size_t i = count; i-- > 0;) free_.push_back(i);
}

semaphore::~semaphore() = default;

std::size_t semaphore::in_use() const {
  std::lock_guard lk(mu_);
  return capacity_ - free_.size();
}

std::size_t semaphore::waiting() const {
  std::lock_guard lk(mu_);
  return waiters_.size();
}

asio::awaitable<std::optional<std::size_t>> semaphore::acquire(clock::time_point deadline) {
  std::shared_ptr<waiter> w;
  {
    std::lock_guard lk(mu_);
    if (!free_.empty()) {
      auto unit = free_.back();
      free_.pop_back();
      co_return unit;
    }
    if (clock::now() >= deadline) co_return std::nullopt;
    w = std::make_shared<waiter>(co_await asio::this_coro::executor);
    waiters_.push_back(w);
  }
  co_await w->wake.wait_until(deadline);
  std::lock_guard lk(mu_);
  if (w->granted) co_return w->unit;
  std::erase(waiters_, w);
  co_return std::nullopt;
}

void semaphore::release(std::size_t unit) {
  std::shared_ptr<waiter> w;
  {
    std::lock_guard lk(mu_);
    if (waiters_.empty()) {
      free_.push_back(unit);
      return;
    }
    w = std::move(waiters_.front());
    waiters_.pop_front();
    w->granted = true;
    w->unit = unit;
  }
  w->wake.notify();
}

}  // namespace tokend::async
