// Node IDs: base32, display form, parsing, and IDs of generated credentials.
#include "transport/identity.hpp"

#include <gtest/gtest.h>
#include <openssl/pem.h>
#include <openssl/x509.h>

#include <memory>
#include <string>

namespace ferry {
namespace {

struct pkey_deleter {
    void operator()(EVP_PKEY* k) const { EVP_PKEY_free(k); }
};
struct x509_deleter {
    void operator()(X509* x) const { X509_free(x); }
};
using pkey_ptr = std::unique_ptr<EVP_PKEY, pkey_deleter>;
using x509_ptr = std::unique_ptr<X509, x509_deleter>;

pkey_ptr read_key(const std::string& pem) {
    BIO* bio = BIO_new_mem_buf(pem.data(), static_cast<int>(pem.size()));
    pkey_ptr key(PEM_read_bio_PrivateKey(bio, nullptr, nullptr, nullptr));
    BIO_free(bio);
    return key;
}

x509_ptr read_cert(const std::string& pem) {
    BIO* bio = BIO_new_mem_buf(pem.data(), static_cast<int>(pem.size()));
    x509_ptr cert(PEM_read_bio_X509(bio, nullptr, nullptr, nullptr));
    BIO_free(bio);
    return cert;
}

std::string encode(std::string_view text) {
    return base32_encode(
        std::span<const std::uint8_t>(reinterpret_cast<const std::uint8_t*>(text.data()), text.size()));
}

constexpr std::string_view sample_id = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
constexpr std::string_view sample_grouped = "ABCD-EFGH-IJKL-MNOP-QRST-UVWX-YZ23-4567";

TEST(base32, rfc4648_vectors_without_padding) {
    EXPECT_EQ(encode(""), "");
    EXPECT_EQ(encode("f"), "MY");
    EXPECT_EQ(encode("fo"), "MZXQ");
    EXPECT_EQ(encode("foo"), "MZXW6");
    EXPECT_EQ(encode("foob"), "MZXW6YQ");
    EXPECT_EQ(encode("fooba"), "MZXW6YTB");
    EXPECT_EQ(encode("foobar"), "MZXW6YTBOI");
}

TEST(base32, twenty_bytes_make_a_full_id) {
    std::array<std::uint8_t, 20> zeros{};
    std::array<std::uint8_t, 20> ones{};
    ones.fill(0xff);
    EXPECT_EQ(base32_encode(zeros), std::string(32, 'A'));
    EXPECT_EQ(base32_encode(ones), std::string(32, '7'));
}

TEST(node_id, format_groups_by_four) {
    EXPECT_EQ(format_node_id(sample_id), sample_grouped);
    EXPECT_EQ(format_node_id("SHORT"), "SHORT");
}

TEST(node_id, parse_round_trips) {
    EXPECT_EQ(parse_node_id(sample_id), std::string(sample_id));
    EXPECT_EQ(parse_node_id(sample_grouped), std::string(sample_id));
    EXPECT_EQ(parse_node_id("abcd-efgh-ijkl-mnop-qrst-uvwx-yz23-4567"), std::string(sample_id));
    EXPECT_EQ(parse_node_id("  \tabcdefghijklmnopqrstuvwxyz234567\n"), std::string(sample_id));
    EXPECT_EQ(parse_node_id(format_node_id(sample_id)), std::string(sample_id));
}

TEST(node_id, parse_rejects_bad_input) {
    EXPECT_FALSE(parse_node_id(""));
    EXPECT_FALSE(parse_node_id("   "));
    EXPECT_FALSE(parse_node_id(sample_id.substr(1)));                        // 31 chars
    EXPECT_FALSE(parse_node_id(std::string(sample_id) + "A"));               // 33 chars
    EXPECT_FALSE(parse_node_id("ABCDEFGHIJKLMNOPQRSTUVWXYZ234561"));         // '1' not base32
    EXPECT_FALSE(parse_node_id("ABCDEFGHIJKLMNOPQRSTUVWXYZ234568"));         // '8'
    EXPECT_FALSE(parse_node_id("0BCDEFGHIJKLMNOPQRSTUVWXYZ234567"));         // '0'
    EXPECT_FALSE(parse_node_id("ABCDEFGHIJKLMNOPQRSTUVWXYZ23456="));         // padding
    EXPECT_FALSE(parse_node_id("ABCDE-FGH-IJKL-MNOP-QRST-UVWX-YZ23-4567"));  // dash misplaced
    EXPECT_FALSE(parse_node_id("ABCD EFGH IJKL MNOP QRST UVWX YZ23 4567"));  // spaces inside
    EXPECT_FALSE(parse_node_id("ABCD-EFGH-IJKL-MNOP-QRST-UVWX-YZ23-456"));   // short group
    EXPECT_FALSE(parse_node_id(std::string_view("ABCDEFGHIJKLMNOP\0RSTUVWXYZ234567", 32)));
}

TEST(node_id, generated_key_id_is_stable_and_in_cert) {
    tls_credentials creds = generate_credentials();
    pkey_ptr key = read_key(creds.key_pem);
    x509_ptr cert = read_cert(creds.cert_pem);
    ASSERT_TRUE(key);
    ASSERT_TRUE(cert);

    std::string id = node_id_from_pubkey(key.get());
    EXPECT_EQ(id.size(), node_id_chars);
    EXPECT_EQ(parse_node_id(id), id);
    EXPECT_EQ(node_id_from_pubkey(key.get()), id);
    EXPECT_EQ(node_id_from_cert(cert.get()), id);
    // The same key read again gives the same ID.
    EXPECT_EQ(node_id_from_pubkey(read_key(creds.key_pem).get()), id);

    // CN carries the canonical ID; the certificate is self-issued and v3.
    std::array<char, 128> cn{};
    ASSERT_GT(X509_NAME_get_text_by_NID(X509_get_subject_name(cert.get()), NID_commonName, cn.data(),
                                        static_cast<int>(cn.size())),
              0);
    EXPECT_EQ(std::string(cn.data()), id);
    EXPECT_EQ(X509_NAME_cmp(X509_get_subject_name(cert.get()), X509_get_issuer_name(cert.get())), 0);
    EXPECT_EQ(X509_get_version(cert.get()), X509_VERSION_3);
    EXPECT_EQ(X509_verify(cert.get(), X509_get0_pubkey(cert.get())), 1);
    EXPECT_EQ(EVP_PKEY_get_id(key.get()), EVP_PKEY_ED25519);

    // Valid for about 100 years.
    int days = 0;
    int secs = 0;
    ASSERT_EQ(ASN1_TIME_diff(&days, &secs, X509_get0_notBefore(cert.get()), X509_get0_notAfter(cert.get())), 1);
    EXPECT_GE(days, 100 * 365);
}

TEST(node_id, differs_between_keys) {
    tls_credentials a = generate_credentials();
    tls_credentials b = generate_credentials();
    std::string id_a = node_id_from_cert(read_cert(a.cert_pem).get());
    std::string id_b = node_id_from_cert(read_cert(b.cert_pem).get());
    EXPECT_EQ(id_a.size(), node_id_chars);
    EXPECT_EQ(id_b.size(), node_id_chars);
    EXPECT_NE(id_a, id_b);
}

TEST(node_id, credentials_for_key_keeps_the_id) {
    tls_credentials a = generate_credentials();
    pkey_ptr key = read_key(a.key_pem);
    tls_credentials b = credentials_for_key(key.get());
    x509_ptr cert_a = read_cert(a.cert_pem);
    x509_ptr cert_b = read_cert(b.cert_pem);
    EXPECT_EQ(node_id_from_cert(cert_a.get()), node_id_from_cert(cert_b.get()));
    EXPECT_NE(ASN1_INTEGER_cmp(X509_get0_serialNumber(cert_a.get()), X509_get0_serialNumber(cert_b.get())), 0);
}

TEST(node_id, cert_without_key_gives_empty_id) {
    EXPECT_EQ(node_id_from_cert(nullptr), "");
    x509_ptr empty(X509_new());
    EXPECT_EQ(node_id_from_cert(empty.get()), "");
}

}  // namespace
}  // namespace ferry
