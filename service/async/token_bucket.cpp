#include "async/token_bucket.hpp"

#include <algorithm>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/this_coro.hpp>
#include <boost/asio/use_awaitable.hpp>

namespace asio = boost::asio;

namespace tokend::async {
namespace {
constexpr auto kMinWait = std::chrono::milliseconds(1);
constexpr auto kMaxWait = std::chrono::milliseconds(200);
constexpr double kBurstSeconds = 0.2;  // the bucket holds 200 ms of the rate
}  // namespace

void token_bucket::refill(clock::time_point now, double rate) {
  const double burst = std::max(1.0, rate * kBurstSeconds);
  if (!started_) {
    started_ = true;
    tokens_ = burst;
  } else if (now > last_) {
    tokens_ = std::min(burst, tokens_ + std::chrono::duration<double>(now - last_).count() * rate);
  }
  last_ = std::max(last_, now);
}

double token_bucket::tokens() const {
  std::lock_guard lk(mu_);
  return tokens_;
}

std::optional<token_bucket::clock::duration> token_bucket::try_take(clock::time_point now,
                                                                    double rate, bool priority) {
  std::lock_guard lk(mu_);
  refill(now, rate);
  if (tokens_ >= 1.0 && (priority || priority_waiting_ == 0)) {
    tokens_ -= 1.0;
    return std::nullopt;
  }
  if (tokens_ >= 1.0) return kMinWait;  // a priority taker is about to take it
  const auto until = std::chrono::duration<double>((1.0 - tokens_) / std::max(rate, 1e-3));
  return std::clamp<clock::duration>(std::chrono::duration_cast<clock::duration>(until), kMinWait,
                                     kMaxWait);
}

asio::awaitable<bool> token_bucket::take(double rate, clock::time_point deadline, bool priority) {
  bool counted = false;
  auto uncount = [&] {
    if (!counted) return;
    std::lock_guard lk(mu_);
    --priority_waiting_;
    counted = false;
  };
  for (;;) {
    const auto now = clock::now();
    auto wait = try_take(now, rate, priority);
    if (!wait) {
      uncount();
      co_return true;
    }
    if (priority && !counted) {
      std::lock_guard lk(mu_);
      ++priority_waiting_;
      counted = true;
    }
    if (now + *wait > deadline) {
      uncount();
      co_return false;
    }
    asio::steady_timer t(co_await asio::this_coro::executor, *wait);
    co_await t.async_wait(asio::use_awaitable);
  }
}

}  // namespace tokend::async
