// Signed announcements: what one node signs, another opens; a forged or altered one is
// refused with the reason.
#include "transport/announce.hpp"

#include <gtest/gtest.h>

#include "ferry.pb.h"
#include "transport/identity.hpp"
#include "tests/support/announce_forge.hpp"
#include "transport/openssl_util.hpp"

namespace ferry {
namespace {

std::span<const std::uint8_t> bytes(const std::string& s) {
    return {reinterpret_cast<const std::uint8_t*>(s.data()), s.size()};
}

announcement sample() {
    announcement a;
    a.name = "desk";
    a.listen = {"0.0.0.0:7788", "[::]:7788"};
    a.version = 9;
    a.instance = 0x1234567890abcdefull;
    a.seq = 3;
    a.time_ms = 1'800'000'000'000;
    return a;
}

TEST(Announce, WhatANodeSignsOpensWithItsIdAndFields) {
    tls_credentials creds = generate_credentials();
    announce_signer signer(creds.key_pem);
    std::string datagram = signer.sign(sample());
    EXPECT_LE(datagram.size(), max_announce_bytes);
    std::string why;
    std::optional<announcement> a = open_announcement(bytes(datagram), why);
    ASSERT_TRUE(a) << why;
    EXPECT_EQ(a->id, signer.id());
    EXPECT_EQ(a->id, node_id_from_cert(read_pem_certificate(creds.cert_pem).get()));
    EXPECT_EQ(a->name, "desk");
    EXPECT_EQ(a->listen, (std::vector<std::string>{"0.0.0.0:7788", "[::]:7788"}));
    EXPECT_EQ(a->version, 9u);
    EXPECT_EQ(a->instance, 0x1234567890abcdefull);
    EXPECT_EQ(a->seq, 3u);
    EXPECT_EQ(a->time_ms, 1'800'000'000'000);
    EXPECT_FALSE(a->leaving);
}

TEST(Announce, AForgedIdAnAlteredBodyAndAnotherKeysSignatureAreRefused) {
    announce_signer trusted(generate_credentials().key_pem);
    announce_signer forger(generate_credentials().key_pem);
    wire::Announce real;
    ASSERT_TRUE(real.ParseFromString(trusted.sign(sample())));
    std::string why;

    // The forger's own key and signature, over a body that claims the trusted node's ID.
    wire::Announce forged;
    ASSERT_TRUE(forged.ParseFromString(forger.sign(sample())));
    wire::AnnounceBody body;
    ASSERT_TRUE(body.ParseFromString(forged.body()));
    body.set_node_id(trusted.id());
    wire::Announce claim = forged;
    claim.set_body(body.SerializeAsString());
    EXPECT_FALSE(open_announcement(bytes(claim.SerializeAsString()), why));
    EXPECT_EQ(why, "a signature that does not verify");  // the body changed under the signature

    // The trusted node's key with the forger's signature and body: the signature fails.
    wire::Announce swapped = forged;
    swapped.set_public_key(real.public_key());
    EXPECT_FALSE(open_announcement(bytes(swapped.SerializeAsString()), why));
    EXPECT_EQ(why, "a signature that does not verify");

    // A real announcement with one address changed.
    ASSERT_TRUE(body.ParseFromString(real.body()));
    body.set_listen(0, "192.0.2.66:7788");
    wire::Announce altered = real;
    altered.set_body(body.SerializeAsString());
    EXPECT_FALSE(open_announcement(bytes(altered.SerializeAsString()), why));

    // A forger that signs, with its own key, a body naming the trusted node's ID: the
    // signature holds, but the ID is not its key's.
    tls_credentials forger_creds = generate_credentials();
    ASSERT_TRUE(body.ParseFromString(real.body()));
    ASSERT_TRUE(open_announcement(bytes(test::sign_announce_body(forger_creds.key_pem, body)), why) == std::nullopt);
    EXPECT_EQ(why, "an ID that is not its key's");
    EXPECT_TRUE(open_announcement(bytes(real.SerializeAsString()), why)) << why;
}

TEST(Announce, MalformedDatagramsAreRefused) {
    std::string why;
    EXPECT_FALSE(open_announcement(bytes(std::string("\xff\xff\xff", 3)), why));
    EXPECT_FALSE(open_announcement(bytes(std::string(max_announce_bytes + 1, 'a')), why));
    EXPECT_EQ(why, "over 1200 bytes");
    wire::Announce empty;
    EXPECT_FALSE(open_announcement(bytes(empty.SerializeAsString()), why));
    EXPECT_EQ(why, "no Ed25519 key or signature");
}

}  // namespace
}  // namespace ferry
