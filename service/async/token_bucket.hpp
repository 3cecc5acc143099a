// A token bucket for coroutines: at most `rate` takes per second on average, bursts up to 200 ms
// worth (so no second ever sees more than 1.2 x rate). take() waits (on a timer, never blocking a
// thread) until a token is there or the deadline passes; a priority taker (an on-demand refresh)
// goes before every waiting non-priority one (a scheduled refresh). Thread-safe. The rate is passed
// on every take, so a changed provider setting applies at once.
#pragma once
#include <boost/asio/awaitable.hpp>
#include <chrono>
#include <mutex>
#include <optional>

namespace tokend::async {

class token_bucket {
 public:
  using clock = std::chrono::steady_clock;

  // Takes a token at `now` if one is there (a non-priority taker only while no priority taker
  // waits); otherwise returns how long until one will be (1 ms .. 200 ms).
  std::optional<clock::duration> try_take(clock::time_point now, double rate, bool priority);

  // True when a token was taken before `deadline`.
  boost::asio::awaitable<bool> take(double rate, clock::time_point deadline, bool priority);

  double tokens() const;

 private:
  void refill(clock::time_point now, double rate);
  mutable std::mutex mu_;  // guards everything below
  double tokens_ = 0;
  bool started_ = false;
  clock::time_point last_{};
  int priority_waiting_ = 0;
};

}  // namespace tokend::async
