// The log's writer: whole lines are copied into a bounded in-memory batch and written by one
// background thread, in a few large write(2) calls instead of one flushed write per line.
// - The batch is written at least every `flush_interval`, at once when an urgent line (warn and
//   above) arrives, and on stop(), so nothing submitted before stop() is lost.
// - At `capacity` queued lines it is full: an ordinary line is dropped and counted (the event
//   loop never waits for the disk); an urgent line is written synchronously instead.
// - After stop() (or before a writer exists) lines are written synchronously.
// Thread-safe; submit() takes one uncontended mutex and copies the line.
#pragma once
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string_view>

namespace tokend::log {

class line_writer {
 public:
  line_writer(int fd, std::size_t capacity, std::chrono::milliseconds flush_interval);
  ~line_writer();
  line_writer(const line_writer&) = delete;
  line_writer& operator=(const line_writer&) = delete;

  // One line, without its newline.
  void submit(std::string_view line, bool urgent);
  // Writes everything queued and joins the thread; later lines are written synchronously.
  void stop();
  std::uint64_t dropped() const;

 private:
  struct impl;
  std::unique_ptr<impl> impl_;
};

// Writes all of `data` to `fd` (retrying short writes and EINTR); false when the fd refuses.
bool write_all(int fd, std::string_view data);

}  // namespace tokend::log
