#include "http/server.hpp"

#include <atomic>
#include <boost/asio.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <charconv>
#include <mutex>
#include <random>
#include <set>

#include "http/problem.hpp"
#include "http/router.hpp"
#include "observability/log.hpp"

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace bhttp = boost::beast::http;
using tcp = asio::ip::tcp;

namespace tokend::http {
namespace {

bool valid_request_id(std::string_view id) {
  if (id.empty() || id.size() > 128) return false;
  for (char c : id) {
    if (!(std::isalnum(static_cast<unsigned char>(c)) || c == '-' || c == '_' || c == '.' ||
          c == ':')) {
      return false;
    }
  }
  return true;
}

void append_clean(std::string& out, std::string_view v) {
  // Header values are ours, but never let a stray CR or LF split a header.
  if (v.find_first_of("\r\n") == std::string_view::npos) {
    out.append(v);
    return;
  }
  for (char c : v) out.push_back(c == '\r' || c == '\n' ? ' ' : c);
}

void append_header(std::string& out, std::string_view name, std::string_view value) {
  out.append(name);
  out.append(": ");
  append_clean(out, value);
  out.append("\r\n");
}

}  // namespace

// HTTP/1.x response head and body (RFC 9112 framing): no Content-Length and no body for 1xx,
// 204 and 304; HEAD announces the length of the body it omits.
void serialize_response(std::string& out, const request& req, const response& res, unsigned version,
                        bool keep_alive) {
  out.clear();
  out.append(version == 10 ? "HTTP/1.0 " : "HTTP/1.1 ");
  char num[24];
  auto [end, ec] = std::to_chars(num, num + sizeof num, res.status);
  (void)ec;
  out.append(num, end);
  out.push_back(' ');
  out.append(bhttp::obsolete_reason(static_cast<bhttp::status>(res.status)));
  out.append("\r\n");
  const bool no_body = res.status / 100 == 1 || res.status == 204 || res.status == 304;
  if (!res.body.empty() || res.status != 204) append_header(out, "Content-Type", res.content_type);
  append_header(out, "X-Request-Id", req.request_id);
  for (const auto& [k, v] : res.headers) append_header(out, k, v);
  if (version >= 11 && !keep_alive) out.append("Connection: close\r\n");
  if (version < 11 && keep_alive) out.append("Connection: keep-alive\r\n");
  if (!no_body) {
    out.append("Content-Length: ");
    auto [e2, ec2] = std::to_chars(num, num + sizeof num, res.body.size());
    (void)ec2;
    out.append(num, e2);
    out.append("\r\n");
  }
  out.append("\r\n");
  if (!no_body && req.method != "HEAD") out.append(res.body);
}

namespace {

std::string new_request_id() {
  thread_local std::mt19937_64 rng{std::random_device{}()};
  static constexpr char hex[] = "0123456789abcdef";
  std::string out(32, '0');
  for (int half = 0; half < 2; ++half) {
    auto v = rng();
    for (int i = 0; i < 16; ++i) out[half * 16 + i] = hex[(v >> (i * 4)) & 0xf];
  }
  return out;
}

struct session_state {
  // All fields are touched only on the session's strand.
  beast::tcp_stream* stream = nullptr;
  bool busy = false;
  bool alive = true;
  // One watchdog timer per connection instead of a timer operation per read and write: the
  // session moves `deadline`, and the watchdog, waking at the deadline it last saw, closes the
  // socket only if the current one has passed (per-operation timers cost two timer-queue
  // updates and a cross-thread wake-up per request).
  std::chrono::steady_clock::time_point deadline = std::chrono::steady_clock::time_point::max();
  asio::steady_timer* watchdog = nullptr;
};

// Counts a request as in flight (graceful shutdown waits for zero) for as long as it lives,
// however the scope is left.
class in_flight {
 public:
  explicit in_flight(std::atomic<std::size_t>& n) : n_(n) { ++n_; }
  ~in_flight() { --n_; }
  in_flight(const in_flight&) = delete;
  in_flight& operator=(const in_flight&) = delete;

 private:
  std::atomic<std::size_t>& n_;
};

asio::awaitable<void> watchdog(std::shared_ptr<session_state> st) {
  asio::steady_timer timer(co_await asio::this_coro::executor);
  st->watchdog = &timer;
  while (st->alive) {
    const auto now = std::chrono::steady_clock::now();
    if (st->deadline <= now) {
      boost::system::error_code ignored;
      st->stream->socket().cancel(ignored);
      st->stream->socket().shutdown(tcp::socket::shutdown_both, ignored);
      break;
    }
    timer.expires_at(std::min(st->deadline, now + std::chrono::seconds(1)));
    boost::system::error_code ec;
    co_await timer.async_wait(asio::redirect_error(asio::use_awaitable, ec));
  }
  st->watchdog = nullptr;
}

}  // namespace

struct server::impl : std::enable_shared_from_this<server::impl> {
  impl(asio::io_context& c, server_options o, const router& r, completion_hook h)
      : ioc(c), opts(o), routes(r), on_done(std::move(h)) {}

  asio::io_context& ioc;
  server_options opts;
  const router& routes;
  completion_hook on_done;

  std::vector<std::unique_ptr<tcp::acceptor>> acceptors;  // mutated before run and by shutdown
  std::atomic<bool> stopping{false};
  std::atomic<std::size_t> active{0};

  mutable std::mutex mu;  // guards sessions
  std::set<std::shared_ptr<session_state>> sessions;

  void finish(const request& req, const response& res) {
    if (on_done) on_done(req, res, std::chrono::steady_clock::now() - req.received_at);
  }

  asio::awaitable<void> accept_loop(tcp::acceptor& acceptor) {
    auto self = shared_from_this();
    for (;;) {
      boost::system::error_code ec;
      auto socket = co_await acceptor.async_accept(asio::make_strand(ioc),
                                                   asio::redirect_error(asio::use_awaitable, ec));
      if (ec == asio::error::operation_aborted || stopping) co_return;
      if (ec) {
        log::write(log::level::warn, "accept failed", {{"error", ec.message()}});
        // Back off on resource exhaustion (EMFILE) instead of spinning.
        asio::steady_timer t(acceptor.get_executor(), std::chrono::milliseconds(50));
        co_await t.async_wait(asio::redirect_error(asio::use_awaitable, ec));
        continue;
      }
      auto ex = socket.get_executor();
      asio::co_spawn(ex, session(beast::tcp_stream(std::move(socket))), [](std::exception_ptr e) {
        if (!e) return;
        try {
          std::rethrow_exception(e);
        } catch (const std::exception& ex) {
          log::write(log::level::error, "session failed", {{"error", ex.what()}});
        }
      });
    }
  }

  response to_problem_for_parse_error(const boost::system::error_code& ec,
                                      const std::string& request_id) {
    if (ec == bhttp::error::header_limit) {
      return make_problem(errc::headers_too_large, "request header fields exceed 8 KiB",
                          request_id);
    }
    if (ec == bhttp::error::body_limit) {
      return make_problem(errc::payload_too_large, "request body exceeds 64 KiB", request_id);
    }
    return make_problem(errc::invalid_request, "malformed HTTP request", request_id);
  }

  // Serializes the response by hand into the connection's reusable buffer and writes it with
  // one gathered send: Beast's serializer cost more than the whole token lookup (one field
  // allocation per header and a deep buffer-sequence walk per write).
  asio::awaitable<void> write_response(beast::tcp_stream& stream, session_state& st,
                                       std::string& wire, const request& req, const response& res,
                                       unsigned version, bool keep_alive) {
    serialize_response(wire, req, res, version, keep_alive);
    st.deadline = std::chrono::steady_clock::now() + opts.write_timeout;
    co_await asio::async_write(stream, asio::buffer(wire), asio::use_awaitable);
    // Keep the buffer for small replies only: an idle keep-alive connection should not hold the
    // largest page it ever sent.
    if (wire.capacity() > 64 * 1024) std::string().swap(wire);
  }

  asio::awaitable<void> session(beast::tcp_stream stream) {
    auto self = shared_from_this();
    auto st = std::make_shared<session_state>();
    st->stream = &stream;
    {
      std::lock_guard lk(mu);
      if (stopping) co_return;
      sessions.insert(st);
    }
    asio::co_spawn(stream.get_executor(), watchdog(st), asio::detached);
    std::string remote;
    {
      boost::system::error_code ec;
      auto ep = stream.socket().remote_endpoint(ec);
      if (!ec) remote = ep.address().to_string() + ":" + std::to_string(ep.port());
    }
    beast::flat_buffer buffer;
    std::string wire;  // the serialized response; its capacity is reused across requests
    bool first = true;
    try {
      for (;;) {
        boost::system::error_code ec;
        if (buffer.size() == 0) {
          // Waiting for the next request: idle timeout (read timeout for the first one).
          st->deadline =
              std::chrono::steady_clock::now() + (first ? opts.read_timeout : opts.idle_timeout);
          auto n = co_await stream.async_read_some(buffer.prepare(4096),
                                                   asio::redirect_error(asio::use_awaitable, ec));
          if (ec) break;  // closed, timed out or shut down: nothing half-read to answer
          buffer.commit(n);
        }
        first = false;
        st->busy = true;
        bhttp::request_parser<bhttp::string_body> parser;
        parser.header_limit(static_cast<std::uint32_t>(opts.header_limit));
        parser.body_limit(opts.body_limit);
        st->deadline = std::chrono::steady_clock::now() + opts.read_timeout;
        // Parse what has arrived already; usually that is the whole request, and no further
        // asynchronous read (with its immediate-completion post) is needed.
        parser.eager(true);
        buffer.consume(parser.put(buffer.data(), ec));
        if (ec == bhttp::error::need_more) ec = {};
        if (!ec && !parser.is_done()) {
          co_await bhttp::async_read(stream, buffer, parser,
                                     asio::redirect_error(asio::use_awaitable, ec));
        }
        request req;
        req.received_at = std::chrono::steady_clock::now();
        req.deadline = req.received_at + opts.request_timeout;
        req.remote = remote;
        if (ec) {
          if (ec == beast::error::timeout || ec == asio::error::operation_aborted ||
              ec == bhttp::error::end_of_stream || ec == asio::error::eof ||
              ec == asio::error::connection_reset) {
            break;  // slow, vanished or shut-down client: drop it
          }
          req.method = "-";
          req.route = "unparsed";
          req.request_id = new_request_id();
          if (parser.is_header_done()) {
            const auto& h = parser.get();
            req.method = std::string(h.method_string());
            if (auto it = h.find("X-Request-Id"); it != h.end() && valid_request_id(it->value())) {
              req.request_id = std::string(it->value());
            }
          }
          auto res = to_problem_for_parse_error(ec, req.request_id);
          const in_flight counted(active);
          co_await write_response(stream, *st, wire, req, res, 11, false);
          finish(req, res);
          break;
        }
        const in_flight counted(active);
        auto msg = parser.release();
        req.method = std::string(msg.method_string());
        // Views into `msg`, which outlives `req`'s use: handlers finish before the write.
        req.target = msg.target();
        auto q = req.target.find('?');
        req.path = req.target.substr(0, q);
        if (q != std::string_view::npos) req.query = req.target.substr(q + 1);
        for (const auto& f : msg) req.headers.emplace_back(f.name_string(), f.value());
        req.body = std::move(msg.body());
        auto rid = req.header("X-Request-Id");
        req.request_id = rid && valid_request_id(*rid) ? std::string(*rid) : new_request_id();

        // While the handler runs the watchdog waits for the request's own deadline (a refresh
        // may take all of it), plus the time to write the answer.
        st->deadline = req.deadline + opts.write_timeout;
        response res = co_await routes.dispatch(req);
        const bool keep = msg.keep_alive() && !stopping;
        try {
          co_await write_response(stream, *st, wire, req, res, msg.version(), keep);
        } catch (...) {
          finish(req, res);
          throw;
        }
        finish(req, res);
        st->busy = false;
        if (!keep) break;
      }
    } catch (const boost::system::system_error& e) {
      if (e.code() != asio::error::operation_aborted && e.code() != beast::error::timeout) {
        log::write(log::level::debug, "connection error", {{"error", e.code().message()}});
      }
    }
    st->alive = false;
    if (st->watchdog) st->watchdog->cancel();
    {
      std::lock_guard lk(mu);
      sessions.erase(st);
    }
    boost::system::error_code ignored;
    stream.socket().shutdown(tcp::socket::shutdown_send, ignored);
    stream.socket().close(ignored);
  }

  void close_sessions(bool only_idle) {
    std::vector<std::shared_ptr<session_state>> snapshot;
    {
      std::lock_guard lk(mu);
      snapshot.assign(sessions.begin(), sessions.end());
    }
    for (auto& st : snapshot) {
      // The stream's executor is the session strand; touch the state only there.
      auto ex = st->stream->get_executor();
      asio::post(ex, [st, only_idle] {
        if (!st->alive || (only_idle && st->busy)) return;
        boost::system::error_code ignored;
        st->stream->socket().cancel(ignored);
        st->stream->socket().shutdown(tcp::socket::shutdown_both, ignored);
      });
    }
  }
};

server::server(asio::io_context& ioc, server_options opts, const router& routes,
               completion_hook on_done)
    : impl_(std::make_shared<impl>(ioc, opts, routes, std::move(on_done))) {}

server::~server() = default;

std::string server::listen(const std::string& host, unsigned short port) {
  auto address = asio::ip::make_address(host);
  auto acceptor = std::make_unique<tcp::acceptor>(asio::make_strand(impl_->ioc));
  tcp::endpoint ep{address, port};
  acceptor->open(ep.protocol());
  acceptor->set_option(asio::socket_base::reuse_address(true));
  acceptor->bind(ep);
  acceptor->listen(asio::socket_base::max_listen_connections);
  auto bound = acceptor->local_endpoint();
  auto& ref = *acceptor;
  impl_->acceptors.push_back(std::move(acceptor));
  asio::co_spawn(ref.get_executor(), impl_->accept_loop(ref), asio::detached);
  std::string h = bound.address().to_string();
  if (bound.address().is_v6()) h = "[" + h + "]";
  return h + ":" + std::to_string(bound.port());
}

void server::begin_shutdown() {
  impl_->stopping = true;
  for (auto& a : impl_->acceptors) {
    asio::post(a->get_executor(), [a = a.get()] {
      boost::system::error_code ignored;
      a->close(ignored);
    });
  }
  impl_->close_sessions(true);
}

void server::close_all() { impl_->close_sessions(false); }

std::size_t server::active_requests() const { return impl_->active; }

std::size_t server::open_connections() const {
  std::lock_guard lk(impl_->mu);
  return impl_->sessions.size();
}

}  // namespace tokend::http
