// GET /v1/stats and GET /v1/connections/{connection}/readers (scope connections:read), and the
// in-memory reader audit behind the second.
#include "api/readers.hpp"

#include <atomic>
#include <boost/asio/awaitable.hpp>
#include <functional>
#include <unordered_map>

#include "api/auth.hpp"
#include "api/handlers.hpp"
#include "api/tx.hpp"
#include "http/router.hpp"
#include "observability/log.hpp"
#include "store/stats_store.hpp"

namespace asio = boost::asio;

namespace tokend::api {
namespace {

struct string_hash {
  using is_transparent = void;
  std::size_t operator()(std::string_view s) const { return std::hash<std::string_view>{}(s); }
};

struct reads {
  long long n = 0;
  sys_time first, last;
};

using reads_map = std::unordered_map<std::string, reads, string_hash, std::equal_to<>>;

void merge(reads_map& into, const std::string& k, const reads& r) {
  auto [it, inserted] = into.try_emplace(k, r);
  if (inserted) return;
  it->second.n += r.n;
  it->second.first = std::min(it->second.first, r.first);
  it->second.last = std::max(it->second.last, r.last);
}

// "<key id>\n<tenant>\n<connection>": ids never contain a newline (core/validate).
void make_key(std::string& out, const std::string& key_id, const std::string& tenant,
              const std::string& connection) {
  out.clear();
  out.append(key_id).push_back('\n');
  out.append(tenant).push_back('\n');
  out.append(connection);
}

}  // namespace

struct reader_audit::shard {
  std::mutex mu;  // the owning thread's, except while flush() takes the map
  reads_map map;
  std::string scratch;  // the lookup key, reused: no allocation once a pair is known
  // The entry of the previous note: a caller reading the same token again skips the hash
  // lookup. Node addresses survive rehashing; flush() clears it with the map.
  std::string last_key;
  reads* last = nullptr;
};

reader_audit::reader_audit()
    : id_([] {
        static std::atomic<std::uint64_t> next{1};
        return next++;
      }()) {}
reader_audit::~reader_audit() = default;

reader_audit::shard& reader_audit::local() {
  // Ids, not addresses: another audit may later live at this one's address (tests).
  thread_local std::uint64_t owner = 0;
  thread_local shard* mine = nullptr;
  if (owner != id_) {
    auto s = std::make_unique<shard>();
    mine = s.get();
    owner = id_;
    std::lock_guard lk(shards_mu_);
    shards_.push_back(std::move(s));
  }
  return *mine;
}

void reader_audit::note(const std::string& key_id, const std::string& tenant,
                        const std::string& connection, sys_time at) {
  auto& s = local();
  std::lock_guard lk(s.mu);
  make_key(s.scratch, key_id, tenant, connection);
  reads* r = s.last;
  if (!r || s.scratch != s.last_key) {
    auto it = s.map.find(std::string_view(s.scratch));
    if (it == s.map.end()) it = s.map.emplace(s.scratch, reads{0, at, at}).first;
    r = &it->second;
    s.last = r;
    s.last_key = s.scratch;
  }
  ++r->n;
  if (at > r->last) r->last = at;
}

asio::awaitable<void> reader_audit::flush(context& ctx) {
  if (flushing_.exchange(true)) co_return;
  struct done_t {
    std::atomic<bool>& f;
    ~done_t() { f.store(false); }
  } done{flushing_};
  reads_map all;
  {
    std::lock_guard lk(shards_mu_);
    for (auto& s : shards_) {
      reads_map taken;
      {
        std::lock_guard slk(s->mu);
        taken.swap(s->map);
        s->last = nullptr;
      }
      for (const auto& [k, r] : taken) merge(all, k, r);
    }
  }
  if (all.empty()) co_return;
  std::vector<store::reader_reads> batch;
  batch.reserve(all.size());
  for (const auto& [k, r] : all) {
    const auto a = k.find('\n'), b = k.find('\n', a + 1);
    batch.push_back(
        {k.substr(a + 1, b - a - 1), k.substr(b + 1), k.substr(0, a), r.n, r.first, r.last});
  }
  try {
    co_await ctx.db.run(
        store::clock::now() + std::chrono::seconds(30),
        [&](pqxx::connection_base& c) {
          pqxx::work tx(c);
          store::merge_readers(tx, batch);
          tx.commit();
        },
        store::origin::background);
  } catch (const std::exception& e) {
    log::write(log::level::warn, "could not record token readers; kept for the next flush",
               {{"error", e.what()}, {"pairs", batch.size()}});
    // Back into this thread's shard: counted again at the next flush.
    auto& s = local();
    std::lock_guard lk(s.mu);
    for (const auto& [k, r] : all) merge(s.map, k, r);
  }
}

namespace {

nlohmann::json counts_view(const store::refresh_counts& c) {
  return {{"ok", c.ok},
          {"transient", c.transient},
          {"invalid_grant", c.invalid_grant},
          {"config_error", c.config_error},
          {"provider_error", c.provider_error}};
}

asio::awaitable<http::response> get_stats(context& ctx, http::request& req) {
  auto who = co_await authenticate(ctx, req);
  require_scope(who, "connections:read");
  auto s = co_await ctx.db.run(req.deadline, [&](pqxx::connection_base& c) {
    pqxx::read_transaction tx(c);
    return store::get_tenant_stats(tx, who.tenant_id());
  });
  co_return json_reply(
      200,
      {{"connections", {{"active", s.active}, {"needs_reauth", s.needs_reauth}}},
       {"refreshes",
        {{"last_hour", counts_view(s.last_hour)}, {"last_day", counts_view(s.last_day)}}},
       {"reauth", {{"links_created", s.links_created}, {"links_completed", s.links_completed}}},
       {"refresh_tokens_expiring_within_7d", s.refresh_tokens_expiring_within_7d}});
}

asio::awaitable<http::response> list_readers(context& ctx, http::request& req) {
  auto who = co_await authenticate(ctx, req);
  require_scope(who, "connections:read");
  const auto& id = path_id(req, "connection");
  auto readers = co_await ctx.db.run(req.deadline, [&](pqxx::connection_base& c) {
    pqxx::read_transaction tx(c);
    return store::list_readers(tx, who.tenant_id(), id);
  });
  if (!readers) throw api_error(errc::not_found, "no such connection");
  auto items = nlohmann::json::array();
  for (const auto& r : *readers) {
    items.push_back({{"key_id", r.key_id},
                     {"key_name", r.key_name ? nlohmann::json(*r.key_name) : nullptr},
                     {"reads", r.reads},
                     {"first_read_at", format_rfc3339(r.first_read_at)},
                     {"last_read_at", format_rfc3339(r.last_read_at)}});
  }
  co_return json_reply(200, {{"items", std::move(items)}});
}

}  // namespace

void register_stats(http::router& r, context& ctx) {
  r.add("GET", "/v1/stats", with_context(ctx, get_stats));
  r.add("GET", "/v1/connections/{connection}/readers", with_context(ctx, list_readers));
}

}  // namespace tokend::api
