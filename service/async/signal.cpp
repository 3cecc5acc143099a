#include "async/signal.hpp"

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/experimental/awaitable_operators.hpp>
#include <boost/asio/experimental/concurrent_channel.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/this_coro.hpp>
#include <boost/asio/use_awaitable.hpp>

namespace asio = boost::asio;
using namespace asio::experimental::awaitable_operators;

namespace tokend::async {

struct signal::impl {
  // Capacity 1: a notification sent before the waiter arrives is kept for it.
  explicit impl(asio::any_io_executor ex) : channel(ex, 1) {}
  asio::experimental::concurrent_channel<void(boost::system::error_code)> channel;
};

signal::signal(asio::any_io_executor ex) : impl_(std::make_unique<impl>(std::move(ex))) {}
signal::~signal() = default;

void signal::notify() { impl_->channel.try_send(boost::system::error_code{}); }

asio::awaitable<bool> signal::wait_until(std::chrono::steady_clock::time_point deadline) {
  asio::steady_timer timer(co_await asio::this_coro::executor, deadline);
  constexpr auto token = asio::as_tuple(asio::use_awaitable);
  auto result = co_await (impl_->channel.async_receive(token) || timer.async_wait(token));
  co_return result.index() == 0;
}

}  // namespace tokend::async
