// A bare Beast/Asio HTTP server answering "hello" on every request, built with the same flags as
// tokend: the baseline that the cached GET /v1/tokens path is compared with (bench/run.sh).
// Usage: bench_hello_server PORT THREADS [beast|raw]
//   beast (default): Beast parses the request and serializes the response, as a bare Beast
//                    server does.
//   raw:             Beast parses; the response is written by hand into a reused buffer, as
//                    tokend does; the stricter baseline for tokend's own overhead.
#include <boost/asio.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <cstdio>
#include <string>
#include <thread>
#include <vector>

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = boost::beast::http;
using tcp = asio::ip::tcp;

namespace {

bool raw_mode = false;

asio::awaitable<void> session(beast::tcp_stream stream) {
  beast::flat_buffer buffer;
  std::string wire;
  for (;;) {
    http::request<http::string_body> req;
    boost::system::error_code ec;
    co_await http::async_read(stream, buffer, req, asio::redirect_error(asio::use_awaitable, ec));
    if (ec) co_return;
    if (raw_mode) {
      wire.clear();
      wire.append(req.version() == 10 ? "HTTP/1.0 200 OK\r\n" : "HTTP/1.1 200 OK\r\n");
      wire.append("Content-Type: application/json\r\nContent-Length: 17\r\n");
      if (!req.keep_alive()) wire.append("Connection: close\r\n");
      wire.append("\r\n{\"hello\":\"world\"}");
      co_await asio::async_write(stream, asio::buffer(wire),
                                 asio::redirect_error(asio::use_awaitable, ec));
      if (ec || !req.keep_alive()) co_return;
      continue;
    }
    http::response<http::string_body> res{http::status::ok, req.version()};
    res.set(http::field::content_type, "application/json");
    res.body() = R"({"hello":"world"})";
    res.keep_alive(req.keep_alive());
    res.prepare_payload();
    co_await http::async_write(stream, res, asio::redirect_error(asio::use_awaitable, ec));
    if (ec || !req.keep_alive()) co_return;
  }
}

asio::awaitable<void> listen(tcp::acceptor& acceptor) {
  for (;;) {
    auto socket = co_await acceptor.async_accept(asio::make_strand(acceptor.get_executor()),
                                                 asio::use_awaitable);
    auto ex = socket.get_executor();
    asio::co_spawn(ex, session(beast::tcp_stream(std::move(socket))), asio::detached);
  }
}

}  // namespace

int main(int argc, char** argv) {
  const unsigned short port = argc > 1 ? static_cast<unsigned short>(std::stoi(argv[1])) : 0;
  const int threads = argc > 2 ? std::stoi(argv[2]) : 2;
  raw_mode = argc > 3 && std::string(argv[3]) == "raw";
  asio::io_context ioc(threads);
  tcp::acceptor acceptor(ioc, {asio::ip::make_address("127.0.0.1"), port});
  std::printf("{\"msg\":\"listening\",\"address\":\"127.0.0.1:%d\"}\n",
              acceptor.local_endpoint().port());
  std::fflush(stdout);
  asio::co_spawn(ioc, listen(acceptor), asio::detached);
  std::vector<std::thread> pool;
  for (int i = 1; i < threads; ++i) pool.emplace_back([&] { ioc.run(); });
  ioc.run();
  for (auto& t : pool) t.join();
}
