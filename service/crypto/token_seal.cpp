#include "crypto/token_seal.hpp"

namespace tokend::crypto {

sealed_tokens seal_tokens(const keyring& kr, const std::string& tenant, const std::string& id,
                          long long row_id, long long version, const token_set& t) {
  sealed_tokens s;
  s.key_id = kr.active_kid();
  s.access_token_ct = kr.seal(t.access_token, make_aad(tenant, "connection", id, row_id,
                                                       "access_token", s.key_id, version));
  s.access_token_fp = fingerprint(t.access_token);
  if (t.refresh_token) {
    s.refresh_token_ct = kr.seal(*t.refresh_token, make_aad(tenant, "connection", id, row_id,
                                                            "refresh_token", s.key_id, version));
    s.refresh_token_fp = fingerprint(*t.refresh_token);
  }
  return s;
}

std::optional<opened_tokens> open_tokens(const keyring& kr, const connection_record& c) {
  const auto& kid = c.sealed.key_id;
  auto access = kr.open(
      kid, c.sealed.access_token_ct,
      make_aad(c.tenant_id, "connection", c.id, c.row_id, "access_token", kid, c.token_version));
  if (!access) return std::nullopt;
  opened_tokens out{std::move(*access), std::nullopt};
  if (c.sealed.refresh_token_ct) {
    auto refresh = kr.open(
        kid, *c.sealed.refresh_token_ct,
        make_aad(c.tenant_id, "connection", c.id, c.row_id, "refresh_token", kid, c.token_version));
    if (!refresh) return std::nullopt;
    out.refresh_token = std::move(*refresh);
  }
  return out;
}

std::string seal_client_secret(const keyring& kr, const std::string& tenant,
                               const std::string& provider, long long row_id, long long version,
                               const std::string& secret) {
  return kr.seal(secret, make_aad(tenant, "provider", provider, row_id, "client_secret",
                                  kr.active_kid(), version));
}

std::optional<std::string> open_client_secret(const keyring& kr, const provider_record& p) {
  if (!p.client_secret_ct || !p.key_id) return std::nullopt;
  return kr.open(*p.key_id, *p.client_secret_ct,
                 make_aad(p.tenant_id, "provider", p.id, p.row_id, "client_secret", *p.key_id,
                          p.secret_version));
}

std::string seal_webhook_secret(const keyring& kr, const std::string& tenant, long long row_id,
                                long long version, std::string_view field,
                                const std::string& secret) {
  return kr.seal(secret,
                 make_aad(tenant, "webhook", "webhook", row_id, field, kr.active_kid(), version));
}

std::optional<std::string> open_webhook_secret(const keyring& kr, const std::string& tenant,
                                               long long row_id, long long version,
                                               const std::string& kid, std::string_view field,
                                               const std::string& ct) {
  return kr.open(kid, ct, make_aad(tenant, "webhook", "webhook", row_id, field, kid, version));
}

}  // namespace tokend::crypto
