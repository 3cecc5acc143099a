#include "api/views.hpp"

namespace tokend::api {
namespace {

template <class T>
nlohmann::json opt(const std::optional<T>& v) {
  return v ? nlohmann::json(*v) : nlohmann::json(nullptr);
}

}  // namespace

nlohmann::json opt_time(const std::optional<sys_time>& t) {
  return t ? nlohmann::json(format_rfc3339(*t)) : nlohmann::json(nullptr);
}

nlohmann::json tenant_view(const tenant_record& t) {
  return {{"id", t.id}, {"name", t.name}, {"created_at", format_rfc3339(t.created_at)}};
}

nlohmann::json api_key_view(const api_key_record& k) {
  return {{"id", k.id},
          {"name", k.name},
          {"scopes", k.scopes},
          {"created_at", format_rfc3339(k.created_at)},
          {"expires_at", opt_time(k.expires_at)},
          {"last_used_at", opt_time(k.last_used_at)},
          {"revoked_at", opt_time(k.revoked_at)}};
}

nlohmann::json provider_view(const provider_record& p) {
  return {{"id", p.id},
          {"type", p.type},
          {"display_name", opt(p.display_name)},
          {"client_id", p.client_id},
          {"client_secret_set", p.client_secret_ct.has_value()},
          {"authorize_url", opt(p.authorize_url)},
          {"token_url", p.token_url},
          {"scopes", p.scopes},
          {"token_endpoint_auth_method", p.auth_method},
          {"pkce", p.pkce},
          {"redirect_uri", opt(p.redirect_uri)},
          {"default_expires_in", p.default_expires_in},
          {"refresh_token_lifetime", opt(p.refresh_token_lifetime)},
          {"refresh_ahead", p.refresh_ahead},
          {"refresh_scope", opt(p.refresh_scope)},
          {"canary_url", opt(p.canary_url)},
          {"refresh_rate_per_s", opt(p.refresh_rate_per_s)},
          {"created_at", format_rfc3339(p.created_at)},
          {"updated_at", format_rfc3339(p.updated_at)}};
}

nlohmann::json reauth_view(const connection_record& c) {
  // An active connection shows `reauth` only while a link asks to widen its scopes.
  if (c.status != "needs_reauth" && !c.open_link) return nullptr;
  nlohmann::json reason = c.status == "needs_reauth" ? opt(c.reauth_reason) : nullptr;
  if (reason.is_null() && c.open_link) reason = c.open_link->reason;
  if (!c.open_link) return {{"reason", reason}, {"link_id", nullptr}, {"link_expires_at", nullptr}};
  return {{"reason", reason},
          {"link_id", c.open_link->id},
          {"link_expires_at", format_rfc3339(c.open_link->expires_at)}};
}

nlohmann::json connection_view(const connection_record& c) {
  nlohmann::json last_error = nullptr;
  if (c.last_error) last_error = nlohmann::json::parse(*c.last_error, nullptr, false);
  if (last_error.is_discarded()) last_error = nullptr;
  return {{"id", c.id},
          {"provider", c.provider_id},
          {"status", c.status},
          {"token_version", c.token_version},
          {"access_expires_at", format_rfc3339(c.access_expires_at)},
          {"refresh_expires_at", opt_time(c.refresh_expires_at)},
          {"scope", opt(c.scope)},
          {"metadata", nlohmann::json::parse(c.metadata, nullptr, false)},
          {"last_refreshed_at", opt_time(c.last_refreshed_at)},
          {"last_error", last_error},
          {"reauth", reauth_view(c)},
          {"access_token_fingerprint", c.sealed.access_token_fp},
          {"refresh_token_fingerprint", opt(c.sealed.refresh_token_fp)},
          {"created_at", format_rfc3339(c.created_at)},
          {"updated_at", format_rfc3339(c.updated_at)}};
}

nlohmann::json event_view(const event_record& e) {
  return {{"id", std::to_string(e.id)},
          {"at", format_rfc3339(e.at)},
          {"trigger", e.trigger},
          {"outcome", e.outcome},
          {"attempt", opt(e.attempt)},
          {"http_status", opt(e.http_status)},
          {"oauth_error", opt(e.oauth_error)},
          {"description", opt(e.description)},
          {"token_version_before", opt(e.token_version_before)},
          {"token_version_after", opt(e.token_version_after)},
          {"duration_ms", opt(e.duration_ms)},
          {"joined_count", e.joined_count},
          {"request_id", opt(e.request_id)},
          {"instance", opt(e.instance)}};
}

}  // namespace tokend::api
