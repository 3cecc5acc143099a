// Records of the token store as the domain sees them. Ciphertexts travel as raw bytes; the
// plaintext token_set exists only in memory, never in a view or a log.
#pragma once
#include <optional>
#include <string>
#include <vector>

#include "core/time.hpp"

namespace tokend {

// The largest access or refresh token accepted, from a provider or on import: any token that
// fits in a request or response body (64 KiB). A cap below that would drop a long rotated
// refresh token and keep the dead one.
inline constexpr std::size_t kMaxTokenBytes = 64 * 1024;

struct tenant_record {
  std::string id;
  std::string name;
  sys_time created_at;
};

struct api_key_record {
  std::string tenant_id;
  std::string id;
  std::string key_hash;  // SHA-256 of the secret (raw bytes)
  std::string name;
  std::vector<std::string> scopes;
  sys_time created_at;
  std::optional<sys_time> expires_at;
  std::optional<sys_time> last_used_at;
  std::optional<sys_time> revoked_at;
};

struct provider_record {
  std::string tenant_id;
  std::string id;
  long long row_id = 0;
  std::string type;  // "airtable" | "oauth2"
  std::optional<std::string> display_name;
  std::string client_id;
  std::optional<std::string> client_secret_ct;  // sealed
  std::optional<std::string> key_id;
  long long secret_version = 1;
  std::optional<std::string> authorize_url;
  std::string token_url;
  std::vector<std::string> scopes;
  std::string auth_method;  // client_secret_basic | client_secret_post | none
  bool pkce = false;
  std::optional<std::string> redirect_uri;
  long long default_expires_in = 3600;
  std::optional<long long> refresh_token_lifetime;
  long long refresh_ahead = 600;
  std::optional<std::string> refresh_scope;
  std::optional<std::string> canary_url;
  // Refreshes per second this instance sends to this provider (scheduled and on-demand alike);
  // nullopt = unlimited.
  std::optional<long long> refresh_rate_per_s;
  std::optional<sys_time> cooldown_until;
  sys_time created_at;
  sys_time updated_at;
};

// A plaintext token set: what a provider returned, or what an import supplied.
struct token_set {
  std::string access_token;
  std::optional<std::string> refresh_token;
  std::string token_type = "Bearer";
  std::optional<std::string> scope;
  sys_time access_expires_at;
  long long access_lifetime = 0;  // seconds it was issued for
  std::optional<sys_time> refresh_expires_at;
  std::optional<long long> refresh_lifetime;  // seconds the refresh token was issued for
};

// The sealed form of a token_set, ready to store.
struct sealed_tokens {
  std::string key_id;
  std::string access_token_ct;
  std::optional<std::string> refresh_token_ct;
  std::string access_token_fp;
  std::optional<std::string> refresh_token_fp;
};

// The reauth link that is open for a connection (its id is shown, never its URL).
struct open_link_ref {
  std::string id;
  sys_time expires_at;
  std::string reason;
};

struct connection_record {
  std::string tenant_id;
  std::string id;
  long long row_id = 0;
  std::string provider_id;
  std::string status = "active";  // "active" | "needs_reauth"
  long long token_version = 1;
  sealed_tokens sealed;
  std::string token_type = "Bearer";
  std::optional<std::string> scope;
  std::string metadata = "{}";  // JSON object text
  sys_time access_expires_at;
  long long access_lifetime = 0;
  std::optional<sys_time> refresh_expires_at;
  std::optional<sys_time> last_refreshed_at;
  std::optional<std::string> last_error;  // JSON object text
  std::optional<std::string> reauth_reason;
  int consecutive_failures = 0;
  std::optional<sys_time> next_attempt_at;
  std::optional<sys_time> last_forced_refresh_at;
  sys_time created_at;
  sys_time updated_at;
  // Origin (url_origin) of the token endpoint the refresh token was imported or obtained for:
  // a refresh is never sent anywhere else.
  std::string token_origin;
  // The scheduler's stamp (core/schedule_policy): when the connection is next due for a
  // proactive refresh; nullopt = never (needs_reauth, no refresh token).
  std::optional<sys_time> next_refresh_at;
  std::optional<long long> refresh_lifetime;  // seconds the refresh token was issued for
  bool refresh_token_expiring = false;        // a keep-alive refresh did not renew it
  // Read-only: the newest unexpired link that is open, opened, declined or failed.
  std::optional<open_link_ref> open_link;
};

struct event_record {
  long long id = 0;
  std::string tenant_id;
  std::string connection_id;
  long long connection_row_id = 0;
  sys_time at;
  std::string trigger;
  std::string outcome;
  std::optional<int> attempt;
  std::optional<int> http_status;
  std::optional<std::string> oauth_error;
  std::optional<std::string> description;
  std::optional<long long> token_version_before;
  std::optional<long long> token_version_after;
  std::optional<int> duration_ms;
  int joined_count = 0;
  std::optional<std::string> request_id;
  std::optional<std::string> instance;
  std::optional<std::string> environment;
};

}  // namespace tokend
