#include "oauth/http_client.hpp"

#include <openssl/ssl.h>

#include <boost/asio.hpp>
#include <boost/asio/experimental/awaitable_operators.hpp>
#include <boost/asio/ssl.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <boost/beast/ssl.hpp>
#include <boost/url/parse.hpp>
#include <map>
#include <mutex>

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace bhttp = boost::beast::http;
namespace ssl = boost::asio::ssl;
using tcp = asio::ip::tcp;
using namespace asio::experimental::awaitable_operators;

namespace tokend::oauth {
namespace {

using steady = std::chrono::steady_clock;

std::chrono::milliseconds until(steady::time_point deadline, std::chrono::milliseconds cap) {
  auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - steady::now());
  if (left.count() < 1) left = std::chrono::milliseconds(1);
  return std::min(left, cap);
}

bool in_v4(const asio::ip::address_v4& a, const char* net, int bits) {
  auto n = asio::ip::make_address_v4(net).to_uint();
  auto mask = bits == 0 ? 0u : ~0u << (32 - bits);
  return (a.to_uint() & mask) == (n & mask);
}

}  // namespace

bool is_public_address(const asio::ip::address& a) {
  if (a.is_v6()) {
    auto v6 = a.to_v6();
    if (v6.is_v4_mapped())
      return is_public_address(asio::ip::make_address_v4(asio::ip::v4_mapped, v6));
    if (v6.is_loopback() || v6.is_unspecified() || v6.is_link_local() || v6.is_multicast() ||
        v6.is_site_local()) {
      return false;
    }
    auto b = v6.to_bytes();
    if ((b[0] & 0xfe) == 0xfc) return false;  // fc00::/7 unique local
    if (b[0] == 0x20 && b[1] == 0x01 && b[2] == 0x0d && b[3] == 0xb8)
      return false;  // documentation
    if (b[0] == 0x00 && b[1] == 0x64 && b[2] == 0xff && b[3] == 0x9b) return false;  // NAT64
    return true;
  }
  auto v4 = a.to_v4();
  for (auto [net, bits] : std::initializer_list<std::pair<const char*, int>>{{"0.0.0.0", 8},
                                                                             {"10.0.0.0", 8},
                                                                             {"100.64.0.0", 10},
                                                                             {"127.0.0.0", 8},
                                                                             {"169.254.0.0", 16},
                                                                             {"172.16.0.0", 12},
                                                                             {"192.0.0.0", 24},
                                                                             {"192.0.2.0", 24},
                                                                             {"192.168.0.0", 16},
                                                                             {"198.18.0.0", 15},
                                                                             {"198.51.100.0", 24},
                                                                             {"203.0.113.0", 24},
                                                                             {"224.0.0.0", 4},
                                                                             {"240.0.0.0", 4}}) {
    if (in_v4(v4, net, bits)) return false;
  }
  return true;
}

using tls_stream = beast::ssl_stream<beast::tcp_stream>;

// One open connection to a provider host; exactly one of the two streams is set.
// All of its I/O, and the stream's timer, run on `strand`: on a multi-threaded io_context the
// tcp_stream's timeout handler (which cancels the socket) must not run beside a read.
struct connection {
  explicit connection(asio::any_io_executor s) : strand(std::move(s)) {}
  asio::any_io_executor strand;
  std::unique_ptr<beast::tcp_stream> plain;
  std::unique_ptr<tls_stream> tls;
  steady::time_point idle_since{};
  beast::tcp_stream& lowest() { return plain ? *plain : beast::get_lowest_layer(*tls); }
};

struct http_client::impl {
  ssl::context tls{ssl::context::tls_client};
  std::mutex mu;                                                         // guards idle
  std::map<std::string, std::vector<std::unique_ptr<connection>>> idle;  // by scheme://host:port

  std::unique_ptr<connection> take(const std::string& key, std::chrono::milliseconds max_idle) {
    std::lock_guard lk(mu);
    auto it = idle.find(key);
    while (it != idle.end() && !it->second.empty()) {
      auto c = std::move(it->second.back());
      it->second.pop_back();
      if (steady::now() - c->idle_since < max_idle) return c;
    }
    return nullptr;
  }
  void put(const std::string& key, std::unique_ptr<connection> c, std::size_t max_per_host) {
    c->idle_since = steady::now();
    std::lock_guard lk(mu);
    auto& v = idle[key];
    if (v.size() < max_per_host) v.push_back(std::move(c));
  }
  impl() {
    tls.set_default_verify_paths();
    tls.set_verify_mode(ssl::verify_peer);
    tls.set_options(ssl::context::default_workarounds | ssl::context::no_sslv2 |
                    ssl::context::no_sslv3 | ssl::context::no_tlsv1 | ssl::context::no_tlsv1_1);
  }
};

http_client::http_client(client_options opts) : opts_(opts), impl_(std::make_unique<impl>()) {}
http_client::~http_client() = default;

namespace {

template <class Stream>
asio::awaitable<void> exchange(Stream& stream, beast::tcp_stream& tcp_layer,
                               bhttp::request<bhttp::string_body>& req, http_result& out,
                               const client_options& o, steady::time_point deadline,
                               const answer_wait& answer) {
  boost::system::error_code ec;
  tcp_layer.expires_after(until(deadline, o.call_timeout));
  co_await bhttp::async_write(stream, req, asio::redirect_error(asio::use_awaitable, ec));
  if (ec) {
    out.error = "write: " + ec.message();
    co_return;
  }
  out.sent = true;
  beast::flat_buffer buffer;
  bhttp::response_parser<bhttp::string_body> parser;
  parser.body_limit(o.body_limit);
  if (answer.timeout.count() > 0) {
    tcp_layer.expires_at(std::min(steady::now() + answer.timeout, answer.cap));
  } else {
    tcp_layer.expires_after(until(deadline, o.call_timeout));
  }
  co_await bhttp::async_read_header(stream, buffer, parser,
                                    asio::redirect_error(asio::use_awaitable, ec));
  if (ec) {
    out.error = "read header: " + ec.message();
    co_return;
  }
  out.status = static_cast<int>(parser.get().result_int());
  out.keep_alive = parser.get().keep_alive();
  if (auto it = parser.get().find(bhttp::field::retry_after); it != parser.get().end()) {
    out.retry_after = std::string(it->value());
  }
  co_await bhttp::async_read(stream, buffer, parser, asio::redirect_error(asio::use_awaitable, ec));
  out.body = parser.get().body();
  if (ec) {
    out.error = "read body: " + ec.message();
    out.body_complete = false;
    co_return;
  }
  out.body_complete = true;
}

}  // namespace

asio::awaitable<http_result> http_client::request(
    std::string method, const std::string& url,
    const std::vector<std::pair<std::string, std::string>>& headers, std::string body,
    steady::time_point deadline, answer_wait answer) {
  http_result out;
  auto u = boost::urls::parse_absolute_uri(url);
  if (!u || (u->scheme() != "https" && u->scheme() != "http") || u->host().empty()) {
    out.refused = true;
    out.error = "not an absolute http(s) URL";
    co_return out;
  }
  const bool tls = u->scheme() == "https";
  if (!tls && !opts_.allow_insecure) {
    out.refused = true;
    out.error = "http is not allowed for provider URLs";
    co_return out;
  }
  std::string host = u->encoded_host_address().decode();
  if (host.size() > 2 && host.front() == '[') host = host.substr(1, host.size() - 2);
  const std::string port = u->has_port() ? std::string(u->port()) : (tls ? "443" : "80");
  std::string target = std::string(u->encoded_path());
  if (target.empty()) target = "/";
  if (u->has_query()) target += "?" + std::string(u->encoded_query());
  const std::string pool_key = std::string(u->scheme()) + "://" + host + ":" + port;

  bhttp::request<bhttp::string_body> req{bhttp::string_to_verb(method), target, 11};
  req.set(bhttp::field::host, u->encoded_host_and_port());
  req.set(bhttp::field::user_agent, "tokend/" TOKEND_VERSION);
  for (const auto& [k, v] : headers) req.set(k, v);
  req.body() = std::move(body);
  req.keep_alive(true);
  req.prepare_payload();

  auto finish = [&](std::unique_ptr<connection> c) {
    if (out.status != 0 && out.body_complete && out.keep_alive) {
      impl_->put(pool_key, std::move(c), opts_.idle_per_host);
      return;
    }
    boost::system::error_code ignored;
    c->lowest().socket().shutdown(tcp::socket::shutdown_both, ignored);
    c->lowest().socket().close(ignored);
  };
  auto run_exchange = [&](connection& c) -> asio::awaitable<void> {
    if (c.plain) {
      co_await exchange(*c.plain, *c.plain, req, out, opts_, deadline, answer);
    } else {
      co_await exchange(*c.tls, c.lowest(), req, out, opts_, deadline, answer);
    }
  };

  auto connect_and_exchange = [&](asio::any_io_executor strand) -> asio::awaitable<void> {
    auto ex = strand;
    tcp::resolver resolver(ex);
    asio::steady_timer timer(ex);
    timer.expires_after(until(deadline, opts_.resolve_timeout));
    boost::system::error_code ec;
    auto resolved =
        co_await (resolver.async_resolve(host, port, asio::redirect_error(asio::use_awaitable, ec)) ||
                  timer.async_wait(asio::use_awaitable));
    if (resolved.index() == 1) {
      out.error = "resolve: timed out";
      co_return;
    }
    if (ec) {
      out.error = "resolve: " + ec.message();
      co_return;
    }
    std::vector<tcp::endpoint> endpoints;
    for (const auto& entry : std::get<0>(resolved)) {
      if (opts_.allow_insecure || is_public_address(entry.endpoint().address())) {
        endpoints.push_back(entry.endpoint());
      }
    }
    if (endpoints.empty()) {
      out.refused = true;
      out.error = "every resolved address breaks the outbound address rule";
      co_return;
    }

    auto c = std::make_unique<connection>(strand);
    beast::tcp_stream stream(ex);
    stream.expires_after(until(deadline, opts_.connect_timeout));
    co_await stream.async_connect(endpoints, asio::redirect_error(asio::use_awaitable, ec));
    if (ec) {
      out.error = "connect: " + ec.message();
      co_return;
    }
    if (!tls) {
      c->plain = std::make_unique<beast::tcp_stream>(std::move(stream));
    } else {
      c->tls = std::make_unique<tls_stream>(std::move(stream), impl_->tls);
      if (!SSL_set_tlsext_host_name(c->tls->native_handle(), host.c_str())) {
        out.error = "tls: cannot set SNI";
        co_return;
      }
      c->tls->set_verify_callback(ssl::host_name_verification(host));
      c->lowest().expires_after(until(deadline, opts_.tls_timeout));
      co_await c->tls->async_handshake(ssl::stream_base::client,
                                       asio::redirect_error(asio::use_awaitable, ec));
      if (ec) {
        out.error = "tls handshake: " + ec.message();
        co_return;
      }
    }
    co_await run_exchange(*c);
    // No TLS close_notify exchange when closing: a peer that skips it (stream_truncated) must not
    // turn a complete answer into an error.
    finish(std::move(c));
  };

  // An idle connection to the same origin, when there is one. A failure on it is reported as
  // it is (a request that was written counts as sent): the engine treats it as in doubt rather
  // than guess that the server had closed the idle connection first. The exchange runs on the
  // connection's own strand.
  if (auto c = impl_->take(pool_key, opts_.max_idle)) {
    out.reused = true;
    auto strand = c->strand;
    co_await asio::co_spawn(
        strand,
        [&]() -> asio::awaitable<void> {
          co_await run_exchange(*c);
          finish(std::move(c));
        },
        asio::use_awaitable);
    co_return out;
  }

  // A new connection: resolve, connect, handshake and exchange on a strand of its own.
  const asio::any_io_executor strand = asio::make_strand(co_await asio::this_coro::executor);
  co_await asio::co_spawn(strand, connect_and_exchange(strand), asio::use_awaitable);
  co_return out;
}

}  // namespace tokend::oauth
