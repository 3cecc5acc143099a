// The browser side of reauthorization: the connect page behind a one-time link, the Reconnect
// press that sends the browser to the provider with state and PKCE, and the OAuth callback that
// exchanges the code, runs the canary and stores the new token set. No API key: the link token
// and the state are the only credentials, both stored as SHA-256 hashes. The exchange, canary
// and store run in a task of their own that outlives the browser request. Thread-safe.
#pragma once
#include <atomic>
#include <boost/asio/any_io_executor.hpp>
#include <boost/asio/awaitable.hpp>
#include <chrono>
#include <memory>
#include <string>

#include "http/message.hpp"

namespace tokend::store {
class db_pool;
}
namespace tokend::crypto {
class keyring;
}
namespace tokend::oauth {
class http_client;
}
namespace tokend::cache {
class caches;
}
namespace tokend::http {
class router;
}
namespace tokend {
class wall_clock;
}
namespace tokend::observability {
class metrics;
}

namespace tokend::reauth {

struct flow_options {
  std::string public_url;  // base of links and the default redirect_uri
  std::string instance_id;
  std::string environment;
  bool allow_insecure = false;
  std::chrono::seconds request_timeout{15};
  std::chrono::seconds answer_timeout{60};  // a sent code exchange's answer is awaited this long
  std::chrono::seconds state_lifetime{900};
  std::chrono::seconds canary_timeout{10};
  int canary_tries = 3;
  std::chrono::seconds keepalive_margin{604800};  // for the due rule stamped by the callback
  observability::metrics* metrics = nullptr;      // links opened and completed, provider answers
};

class flows {
 public:
  flows(boost::asio::any_io_executor ex, flow_options opts, store::db_pool& db,
        const crypto::keyring& keys, oauth::http_client& http, const wall_clock& clock,
        cache::caches& caches);
  ~flows();

  // GET /connect/{token}, POST /connect/{token}, GET /oauth/callback.
  void register_routes(http::router& r);
  void set_public_url(std::string url);  // before serving, once the listen address is known

  // Callback tasks still running (graceful shutdown waits for zero).
  std::size_t in_flight() const;

  struct impl;

 private:
  std::unique_ptr<impl> impl_;
};

}  // namespace tokend::reauth
