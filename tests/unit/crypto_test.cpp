#include <catch2/catch.hpp>

#include "crypto/crypto.hpp"

using namespace tokend::crypto;

namespace {
keyring two_keys() {
  return keyring({{"new", std::string(32, 'n')}, {"old", std::string(32, 'o')}});
}
}  // namespace

TEST_CASE("seal/open round trip under the active key", "[crypto]") {
  auto kr = two_keys();
  auto aad = make_aad("t", "connection", "c1", 7, "access_token", "new", 3);
  auto blob = kr.seal("secret-token", aad);
  CHECK(blob.find("secret-token") == std::string::npos);
  CHECK(blob.size() == 12 + 12 + 16);
  auto back = kr.open("new", blob, aad);
  REQUIRE(back);
  CHECK(*back == "secret-token");
  CHECK(kr.seal("secret-token", aad) != blob);  // fresh nonce each time
}

TEST_CASE("any change of place, version, key or bytes fails to open", "[crypto]") {
  auto kr = two_keys();
  auto aad = make_aad("t", "connection", "c1", 7, "access_token", "new", 3);
  auto blob = kr.seal("secret-token", aad);
  CHECK(!kr.open("new", blob, make_aad("t2", "connection", "c1", 7, "access_token", "new", 3)));
  CHECK(!kr.open("new", blob, make_aad("t", "connection", "c2", 7, "access_token", "new", 3)));
  CHECK(!kr.open("new", blob, make_aad("t", "connection", "c1", 8, "access_token", "new", 3)));
  CHECK(!kr.open("new", blob, make_aad("t", "connection", "c1", 7, "refresh_token", "new", 3)));
  CHECK(!kr.open("new", blob, make_aad("t", "connection", "c1", 7, "access_token", "new", 2)));
  CHECK(!kr.open("old", blob, aad));
  CHECK(!kr.open("gone", blob, aad));
  auto tampered = blob;
  tampered[14] ^= 1;
  CHECK(!kr.open("new", tampered, aad));
  CHECK(!kr.open("new", blob.substr(0, 20), aad));
}

TEST_CASE("older keys still open what they sealed", "[crypto]") {
  keyring old_only({{"old", std::string(32, 'o')}});
  auto aad = make_aad("t", "provider", "p", 1, "client_secret", "old", 1);
  auto blob = old_only.seal("s", aad);
  CHECK(two_keys().open("old", blob, aad) == std::optional<std::string>("s"));
}

TEST_CASE("fingerprints, encodings and constant-time compare", "[crypto]") {
  CHECK(fingerprint("abc") == "sha256:ba7816bf8f01cfea");
  CHECK(hex("\x01\xff") == "01ff");
  CHECK(base64("hello") == "aGVsbG8=");
  CHECK(base64url("\xfb\xff") == "-_8");
  CHECK(equal_ct("abc", "abc"));
  CHECK(!equal_ct("abc", "abd"));
  CHECK(!equal_ct("abc", "ab"));
  CHECK(random_bytes(32).size() == 32);
  CHECK(random_bytes(32) != random_bytes(32));
}
