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

TEST_CASE("SHA-256 matches the FIPS 180-2 vectors, call after call on one thread", "[crypto]") {
  // The context is kept per thread and reused: each digest must start from a clean state.
  for (int round = 0; round < 2; ++round) {
    CHECK(hex(sha256("abc")) == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    CHECK(hex(sha256("")) == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
    CHECK(hex(sha256("abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq")) ==
          "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1");
  }
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
