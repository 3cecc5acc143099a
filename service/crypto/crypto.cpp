#include "crypto/crypto.hpp"

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/rand.h>
#include <openssl/sha.h>

#include <memory>
#include <nlohmann/json.hpp>
#include <stdexcept>

namespace tokend::crypto {
namespace {

constexpr std::size_t kNonceLen = 12;
constexpr std::size_t kTagLen = 16;

using ctx_ptr = std::unique_ptr<EVP_CIPHER_CTX, decltype(&EVP_CIPHER_CTX_free)>;

const unsigned char* u(std::string_view s) {
  return reinterpret_cast<const unsigned char*>(s.data());
}

}  // namespace

std::string random_bytes(std::size_t n) {
  std::string out(n, '\0');
  if (RAND_bytes(reinterpret_cast<unsigned char*>(out.data()), static_cast<int>(n)) != 1) {
    throw std::runtime_error("RAND_bytes failed");
  }
  return out;
}

std::string hmac_sha256(std::string_view key, std::string_view data) {
  std::string out(SHA256_DIGEST_LENGTH, '\0');
  unsigned int len = 0;
  if (!HMAC(EVP_sha256(), key.data(), static_cast<int>(key.size()),
            reinterpret_cast<const unsigned char*>(data.data()), data.size(),
            reinterpret_cast<unsigned char*>(out.data()), &len) ||
      len != SHA256_DIGEST_LENGTH) {
    throw std::runtime_error("HMAC-SHA256 failed");
  }
  return out;
}

std::string sha256(std::string_view data) {
  // SHA256() fetches the algorithm and allocates a context on every call; this runs on every
  // authenticated request, so the algorithm is fetched once and each thread keeps a context.
  static const EVP_MD* const md = [] {
    const EVP_MD* fetched = EVP_MD_fetch(nullptr, "SHA256", nullptr);
    return fetched ? fetched : EVP_sha256();
  }();
  thread_local std::unique_ptr<EVP_MD_CTX, decltype(&EVP_MD_CTX_free)> ctx(EVP_MD_CTX_new(),
                                                                           &EVP_MD_CTX_free);
  std::string out(SHA256_DIGEST_LENGTH, '\0');
  unsigned int len = 0;
  if (!md || !ctx || EVP_DigestInit_ex(ctx.get(), md, nullptr) != 1 ||
      EVP_DigestUpdate(ctx.get(), data.data(), data.size()) != 1 ||
      EVP_DigestFinal_ex(ctx.get(), reinterpret_cast<unsigned char*>(out.data()), &len) != 1 ||
      len != SHA256_DIGEST_LENGTH) {
    throw std::runtime_error("SHA-256 failed");
  }
  return out;
}

std::string hex(std::string_view bytes) {
  static constexpr char digits[] = "0123456789abcdef";
  std::string out(bytes.size() * 2, '\0');
  char* p = out.data();
  for (unsigned char c : bytes) {
    *p++ = digits[c >> 4];
    *p++ = digits[c & 0xf];
  }
  return out;
}

std::string base64(std::string_view bytes) {
  std::string out(4 * ((bytes.size() + 2) / 3) + 1, '\0');
  int n = EVP_EncodeBlock(reinterpret_cast<unsigned char*>(out.data()), u(bytes),
                          static_cast<int>(bytes.size()));
  out.resize(static_cast<std::size_t>(n));
  return out;
}

std::string base64url(std::string_view bytes) {
  auto s = base64(bytes);
  while (!s.empty() && s.back() == '=') s.pop_back();
  for (auto& c : s) {
    if (c == '+') c = '-';
    if (c == '/') c = '_';
  }
  return s;
}

std::optional<std::string> base64_decode(std::string_view b64) {
  if (b64.empty() || b64.size() % 4 != 0) return std::nullopt;
  std::string out(b64.size() / 4 * 3, '\0');
  int n = EVP_DecodeBlock(reinterpret_cast<unsigned char*>(out.data()), u(b64),
                          static_cast<int>(b64.size()));
  if (n < 0) return std::nullopt;
  std::size_t pad = 0;
  if (b64.back() == '=') ++pad;
  if (b64[b64.size() - 2] == '=') ++pad;
  out.resize(static_cast<std::size_t>(n) - pad);
  return out;
}

std::optional<std::string> base64url_decode(std::string_view text) {
  std::string b64(text);
  for (auto& c : b64) {
    if (c == '-') {
      c = '+';
    } else if (c == '_') {
      c = '/';
    } else if (c == '+' || c == '/' || c == '=') {
      return std::nullopt;
    }
  }
  if (b64.size() % 4 == 1) return std::nullopt;
  while (b64.size() % 4) b64 += '=';
  return base64_decode(b64);
}

bool equal_ct(std::string_view a, std::string_view b) {
  return a.size() == b.size() && CRYPTO_memcmp(a.data(), b.data(), a.size()) == 0;
}

std::string fingerprint(std::string_view token) {
  return "sha256:" + hex(sha256(token)).substr(0, 16);
}

keyring::keyring(std::vector<key_entry> keys) : keys_(std::move(keys)) {
  if (keys_.empty()) throw std::invalid_argument("keyring needs at least one key");
  for (const auto& k : keys_) {
    if (k.key.size() != 32) throw std::invalid_argument("master keys must be 32 bytes");
  }
}

const std::string* keyring::find(std::string_view kid) const {
  for (const auto& k : keys_) {
    if (k.kid == kid) return &k.key;
  }
  return nullptr;
}

std::string keyring::seal(std::string_view plaintext, std::string_view aad) const {
  const auto& key = keys_.front().key;
  std::string out = random_bytes(kNonceLen);
  out.resize(kNonceLen + plaintext.size() + kTagLen);
  ctx_ptr ctx(EVP_CIPHER_CTX_new(), &EVP_CIPHER_CTX_free);
  int len = 0;
  auto* ct = reinterpret_cast<unsigned char*>(out.data() + kNonceLen);
  if (!ctx || EVP_EncryptInit_ex(ctx.get(), EVP_aes_256_gcm(), nullptr, nullptr, nullptr) != 1 ||
      EVP_CIPHER_CTX_ctrl(ctx.get(), EVP_CTRL_GCM_SET_IVLEN, kNonceLen, nullptr) != 1 ||
      EVP_EncryptInit_ex(ctx.get(), nullptr, nullptr, u(key), u(out)) != 1 ||
      EVP_EncryptUpdate(ctx.get(), nullptr, &len, u(aad), static_cast<int>(aad.size())) != 1 ||
      EVP_EncryptUpdate(ctx.get(), ct, &len, u(plaintext), static_cast<int>(plaintext.size())) !=
          1 ||
      EVP_EncryptFinal_ex(ctx.get(), ct + len, &len) != 1 ||
      EVP_CIPHER_CTX_ctrl(ctx.get(), EVP_CTRL_GCM_GET_TAG, kTagLen,
                          out.data() + kNonceLen + plaintext.size()) != 1) {
    throw std::runtime_error("AES-256-GCM seal failed");
  }
  return out;
}

std::optional<std::string> keyring::open(std::string_view kid, std::string_view blob,
                                         std::string_view aad) const {
  const auto* key = find(kid);
  if (!key || blob.size() < kNonceLen + kTagLen) return std::nullopt;
  const auto ct_len = blob.size() - kNonceLen - kTagLen;
  std::string out(ct_len, '\0');
  std::string tag(blob.substr(kNonceLen + ct_len));
  ctx_ptr ctx(EVP_CIPHER_CTX_new(), &EVP_CIPHER_CTX_free);
  int len = 0;
  auto* pt = reinterpret_cast<unsigned char*>(out.data());
  if (!ctx || EVP_DecryptInit_ex(ctx.get(), EVP_aes_256_gcm(), nullptr, nullptr, nullptr) != 1 ||
      EVP_CIPHER_CTX_ctrl(ctx.get(), EVP_CTRL_GCM_SET_IVLEN, kNonceLen, nullptr) != 1 ||
      EVP_DecryptInit_ex(ctx.get(), nullptr, nullptr, u(*key), u(blob)) != 1 ||
      EVP_DecryptUpdate(ctx.get(), nullptr, &len, u(aad), static_cast<int>(aad.size())) != 1 ||
      EVP_DecryptUpdate(ctx.get(), pt, &len, u(blob.substr(kNonceLen)), static_cast<int>(ct_len)) !=
          1 ||
      EVP_CIPHER_CTX_ctrl(ctx.get(), EVP_CTRL_GCM_SET_TAG, kTagLen, tag.data()) != 1 ||
      EVP_DecryptFinal_ex(ctx.get(), pt + len, &len) != 1) {
    OPENSSL_cleanse(out.data(), out.size());
    return std::nullopt;
  }
  return out;
}

std::string make_aad(std::string_view tenant, std::string_view owner_kind,
                     std::string_view owner_id, long long row_id, std::string_view field,
                     std::string_view kid, long long version) {
  // A JSON array is unambiguous whatever the ids contain.
  return nlohmann::json::array(
             {"tokend.v1", tenant, owner_kind, owner_id, row_id, field, kid, version})
      .dump();
}

}  // namespace tokend::crypto
