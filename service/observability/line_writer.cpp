#include "observability/line_writer.hpp"

#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <condition_variable>
#include <mutex>
#include <string>
#include <thread>

namespace tokend::log {

bool write_all(int fd, std::string_view data) {
  while (!data.empty()) {
    const auto n = ::write(fd, data.data(), data.size());
    if (n < 0) {
      if (errno == EINTR) continue;
      return false;
    }
    data.remove_prefix(static_cast<std::size_t>(n));
  }
  return true;
}

struct line_writer::impl {
  const int fd;
  const std::size_t capacity;
  const std::chrono::milliseconds interval;

  std::mutex mu;  // guards batch, lines, urgent, early, running
  std::condition_variable cv;
  std::string batch;
  std::size_t lines = 0;
  bool urgent = false;  // a warn+ line is queued: write now
  bool early = false;   // the queue is half full: write now rather than at the tick
  bool running = true;

  std::mutex write_mu;  // one write(2) of whole lines at a time: lines never interleave
  std::atomic<std::uint64_t> dropped{0};
  std::thread thread;

  impl(int f, std::size_t c, std::chrono::milliseconds i)
      : fd(f), capacity(c == 0 ? 1 : c), interval(i) {
    batch.reserve(64 * 1024);
    thread = std::thread([this] { run(); });
  }

  void write_now(std::string_view data) {
    std::lock_guard lk(write_mu);
    write_all(fd, data);
  }

  void run() {
    std::string out;
    out.reserve(64 * 1024);
    for (;;) {
      bool last = false;
      {
        std::unique_lock lk(mu);
        cv.wait_for(lk, interval, [&] { return urgent || early || !running; });
        out.swap(batch);  // the batch's buffer comes back next round: no allocation
        lines = 0;
        urgent = false;
        early = false;
        last = !running;
      }
      if (!out.empty()) write_now(out);
      out.clear();
      if (last) return;
    }
  }
};

line_writer::line_writer(int fd, std::size_t capacity, std::chrono::milliseconds flush_interval)
    : impl_(std::make_unique<impl>(fd, capacity, flush_interval)) {}

line_writer::~line_writer() { stop(); }

void line_writer::submit(std::string_view line, bool urgent) {
  auto& i = *impl_;
  {
    std::unique_lock lk(i.mu);
    if (i.running && i.lines < i.capacity) {
      i.batch.append(line);
      i.batch.push_back('\n');
      ++i.lines;
      const bool half = i.lines == i.capacity / 2;  // half full: write early
      const bool wake = urgent || half;
      if (urgent) i.urgent = true;
      if (half) i.early = true;
      lk.unlock();
      if (wake) i.cv.notify_one();
      return;
    }
    if (i.running && !urgent) {
      i.dropped.fetch_add(1, std::memory_order_relaxed);
      return;
    }
  }
  // Stopped, or an urgent line with the queue full: written here and now.
  std::string one;
  one.reserve(line.size() + 1);
  one.append(line);
  one.push_back('\n');
  i.write_now(one);
}

void line_writer::stop() {
  auto& i = *impl_;
  {
    std::lock_guard lk(i.mu);
    if (!i.running) return;
    i.running = false;
  }
  i.cv.notify_one();
  if (i.thread.joinable()) i.thread.join();
}

std::uint64_t line_writer::dropped() const {
  return impl_->dropped.load(std::memory_order_relaxed);
}

}  // namespace tokend::log
