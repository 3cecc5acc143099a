// Tenant isolation and scope enforcement: tenant A's keys never see or change tenant B's rows;
// each endpoint requires its scope; the admin token is refused on tenant endpoints.
#include <catch2/catch.hpp>
#include <pqxx/pqxx>

#include "support/fixtures.hpp"

using namespace tokend::test;
using nlohmann::json;

namespace {

std::string snapshot(const std::string& url, const std::string& tenant) {
  pqxx::connection c(url);
  pqxx::read_transaction tx(c);
  std::string out;
  for (const auto& q :
       {"SELECT string_agg(id || ':' || token_version || ':' || access_token_fp || ':' || "
        "encode(access_token_ct, 'hex'), ',' ORDER BY id) FROM connections WHERE tenant_id = $1",
        "SELECT string_agg(id || ':' || client_id || ':' || encode(client_secret_ct, 'hex'), ',' "
        "ORDER BY id) FROM providers WHERE tenant_id = $1",
        "SELECT count(*)::text FROM connection_events WHERE tenant_id = $1"}) {
    auto r = tx.exec_params1(q, tenant);
    out += (r[0].is_null() ? "" : r[0].as<std::string>()) + "|";
  }
  return out;
}

}  // namespace

TEST_CASE("tenant A's keys cannot read or change tenant B's resources", "[isolation]") {
  scratch_database db;
  tokend_process t(db.url());
  auto a = t.tenant_key("tenant-a");
  auto b = t.tenant_key("tenant-b");
  REQUIRE(t.call("PUT", "/v1/providers/b-idp", b,
                 json{{"type", "oauth2"},
                      {"client_id", "b-client"},
                      {"client_secret", "b-secret"},
                      {"token_url", "https://idp.example.com/token"}})
              .status == 201);
  REQUIRE(t.call("PUT", "/v1/connections/b-conn", b,
                 json{{"provider", "b-idp"},
                      {"access_token", "b-access"},
                      {"refresh_token", "b-refresh"}})
              .status == 201);
  const auto before = snapshot(db.url(), "tenant-b");

  struct probe {
    std::string method, target;
    json body;
    int expect;
  };
  const std::vector<probe> probes = {
      {"GET", "/v1/providers/b-idp", nullptr, 404},
      {"GET", "/v1/connections/b-conn", nullptr, 404},
      {"GET", "/v1/connections/b-conn/events", nullptr, 404},
      {"GET", "/v1/tokens/b-conn", nullptr, 404},
      {"POST", "/v1/tokens/b-conn/refresh", nullptr, 404},
      {"DELETE", "/v1/connections/b-conn", nullptr, 404},
      // B's provider id is unknown in A's namespace.
      {"PUT", "/v1/connections/a-conn", json{{"provider", "b-idp"}, {"access_token", "x"}}, 400},
      // Same connection id with a compare-and-swap: A has no such connection.
      {"PUT", "/v1/connections/b-conn",
       json{{"provider", "b-idp"}, {"access_token", "x"}, {"if_token_version", 1}}, 400},
  };
  for (const auto& p : probes) {
    INFO(p.method << " " << p.target);
    auto r =
        p.body.is_null() ? t.call(p.method, p.target, a) : t.call(p.method, p.target, a, p.body);
    CHECK(r.status == p.expect);
    CHECK(r.body.find("b-access") == std::string::npos);
    CHECK(r.body.find("b-client") == std::string::npos);
  }
  // Listings show only A's own rows.
  CHECK(t.call("GET", "/v1/providers", a).json()["items"].empty());
  CHECK(t.call("GET", "/v1/connections", a).json()["items"].empty());
  // A PUT under the same ids creates A's own resources, leaving B's alone.
  CHECK(t.call("PUT", "/v1/providers/b-idp", a,
               json{{"type", "oauth2"},
                    {"client_id", "a-client"},
                    {"client_secret", "a-secret"},
                    {"token_url", "https://idp.example.com/token"}})
            .status == 201);
  CHECK(t.call("PUT", "/v1/connections/b-conn", a,
               json{{"provider", "b-idp"}, {"access_token", "a-access"}})
            .status == 201);
  CHECK(t.call("GET", "/v1/tokens/b-conn", a).json()["access_token"] == "a-access");
  CHECK(t.call("GET", "/v1/tokens/b-conn", b).json()["access_token"] == "b-access");
  CHECK(t.call("GET", "/v1/providers/b-idp", b).json()["client_id"] == "b-client");
  CHECK(snapshot(db.url(), "tenant-b") == before);
}

TEST_CASE("every tenant endpoint enforces its scope; admin token gets 403", "[isolation]") {
  scratch_database db;
  tokend_process t(db.url());
  auto full = t.tenant_key("acme");
  put_provider(t, full, "idp", "https://idp.example.com/token");
  REQUIRE(
      t.call("PUT", "/v1/connections/c1", full, json{{"provider", "idp"}, {"access_token", "a"}})
          .status == 201);
  const json provider_body = {{"type", "oauth2"},
                              {"client_id", "c"},
                              {"client_secret", "s"},
                              {"token_url", "https://idp.example.com/token"}};
  const json conn_body = {{"provider", "idp"}, {"access_token", "a"}};
  struct endpoint {
    std::string method, target;
    json body;
    std::string scope;
  };
  const std::vector<endpoint> endpoints = {
      {"PUT", "/v1/providers/idp", provider_body, "connections:write"},
      {"GET", "/v1/providers/idp", nullptr, "connections:read"},
      {"GET", "/v1/providers", nullptr, "connections:read"},
      {"PUT", "/v1/connections/c1", conn_body, "connections:write"},
      {"GET", "/v1/connections/c1", nullptr, "connections:read"},
      {"GET", "/v1/connections", nullptr, "connections:read"},
      {"GET", "/v1/connections/c1/events", nullptr, "connections:read"},
      {"GET", "/v1/tokens/c1", nullptr, "tokens:read"},
      {"POST", "/v1/tokens/c1/refresh", nullptr, "tokens:read"},
      {"DELETE", "/v1/connections/c1", nullptr, "connections:write"},
  };
  const std::vector<std::string> scopes = {"tokens:read", "connections:read", "connections:write"};
  std::map<std::string, std::string> single;
  for (const auto& s : scopes) single[s] = t.tenant_key("acme", {s});
  for (const auto& e : endpoints) {
    INFO(e.method << " " << e.target);
    auto send = [&](const std::string& key) {
      return e.body.is_null() ? t.call(e.method, e.target, key)
                              : t.call(e.method, e.target, key, e.body);
    };
    for (const auto& s : scopes) {
      if (s == e.scope) continue;
      INFO("with only " << s);
      auto r = send(single[s]);
      CHECK(r.status == 403);
      CHECK(r.json()["code"] == "forbidden");
    }
    CHECK(send(kTestAdminToken).status == 403);
    CHECK(send("").status == 401);
    CHECK(send("tkd_not-a-real-key").status == 401);
    auto ok = send(single[e.scope]);
    CHECK(ok.status < 300);
  }
}
