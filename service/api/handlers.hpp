// Route registration for the REST resources, one function per handler file.
#pragma once

namespace tokend::http {
class router;
}

namespace tokend::api {

struct context;

void register_admin(http::router& r, context& ctx);        // tenants, api-keys (admin.cpp)
void register_providers(http::router& r, context& ctx);    // providers.cpp
void register_connections(http::router& r, context& ctx);  // connections.cpp (+ events)
void register_tokens(http::router& r, context& ctx);       // tokens.cpp
void register_reauth(http::router& r, context& ctx);       // reauth.cpp (links, settings)
void register_webhooks(http::router& r, context& ctx);     // webhooks.cpp
void register_stats(http::router& r, context& ctx);        // readers.cpp (stats, readers)

}  // namespace tokend::api
