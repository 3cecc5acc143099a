// Sealing and opening of stored secrets at their exact place (tenant, owner, row, field, key,
// version), so a ciphertext copied elsewhere or put back from an older version fails to open.
#pragma once
#include <optional>

#include "core/model.hpp"
#include "crypto/crypto.hpp"

namespace tokend::crypto {

// Seals both tokens of `t` under the active key for connection (tenant, id, row_id) at
// `version`, and computes the fingerprints. Thread-safe.
sealed_tokens seal_tokens(const keyring& kr, const std::string& tenant, const std::string& id,
                          long long row_id, long long version, const token_set& t);

struct opened_tokens {
  std::string access_token;
  std::optional<std::string> refresh_token;
};
// nullopt when either ciphertext fails to open (unknown key, wrong place or version).
std::optional<opened_tokens> open_tokens(const keyring& kr, const connection_record& c);

std::string seal_client_secret(const keyring& kr, const std::string& tenant,
                               const std::string& provider, long long row_id, long long version,
                               const std::string& secret);
std::optional<std::string> open_client_secret(const keyring& kr, const provider_record& p);

// A webhook's signing secret ("secret", or "previous_secret" during a rotation's overlap),
// bound to the tenant's webhook row and its secret version.
std::string seal_webhook_secret(const keyring& kr, const std::string& tenant, long long row_id,
                                long long version, std::string_view field,
                                const std::string& secret);
std::optional<std::string> open_webhook_secret(const keyring& kr, const std::string& tenant,
                                               long long row_id, long long version,
                                               const std::string& kid, std::string_view field,
                                               const std::string& ct);

}  // namespace tokend::crypto
