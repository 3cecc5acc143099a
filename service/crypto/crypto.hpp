// Secrets at rest: AES-256-GCM sealing with associated data, a keyring of master keys (the first
// active, the others still open), fingerprints, random tokens and key hashing. OpenSSL 3.
// All functions are thread-safe; a keyring is immutable after construction.
#pragma once
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace tokend::crypto {

// n cryptographically random bytes; throws std::runtime_error if the RNG fails.
std::string random_bytes(std::size_t n);
std::string sha256(std::string_view data);  // 32 raw bytes
std::string hmac_sha256(std::string_view key, std::string_view data);  // 32 raw bytes
std::string hex(std::string_view bytes);
std::string base64url(std::string_view bytes);  // no padding
std::string base64(std::string_view bytes);
// Decodes standard base64 (padded); nullopt when malformed.
std::optional<std::string> base64_decode(std::string_view text);
// Decodes base64url with or without padding; nullopt when malformed.
std::optional<std::string> base64url_decode(std::string_view text);
// Constant-time equality of two equally long strings (false when lengths differ).
bool equal_ct(std::string_view a, std::string_view b);

// "sha256:" + the first 16 hex digits of SHA-256(token): tells token instances apart in views
// and logs without revealing anything usable.
std::string fingerprint(std::string_view token);

struct key_entry {
  std::string kid;
  std::string key;  // 32 bytes
};

class keyring {
 public:
  explicit keyring(std::vector<key_entry> keys);  // throws std::invalid_argument when empty
  const std::string& active_kid() const { return keys_.front().kid; }
  const std::string* find(std::string_view kid) const;

  // Seals under the active key with a fresh 96-bit nonce. Output: nonce | ciphertext | tag.
  std::string seal(std::string_view plaintext, std::string_view aad) const;
  // Opens a blob sealed under `kid`; nullopt when the key is unknown, the blob is malformed,
  // or the tag does not verify (wrong row, field, version or key).
  std::optional<std::string> open(std::string_view kid, std::string_view blob,
                                  std::string_view aad) const;

 private:
  std::vector<key_entry> keys_;
};

// Associated data binding a sealed secret to its place: tenant, owner kind ("connection" or
// "provider"), owner id, internal row id, field name, key id and version. Pure.
std::string make_aad(std::string_view tenant, std::string_view owner_kind,
                     std::string_view owner_id, long long row_id, std::string_view field,
                     std::string_view kid, long long version);

}  // namespace tokend::crypto
