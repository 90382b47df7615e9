#include "transport/identity.hpp"

#include <openssl/bn.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/rand.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include <array>
#include <cctype>
#include <stdexcept>

#include "transport/openssl_util.hpp"
#include "transport/tls.hpp"

namespace ferry {
namespace {

constexpr std::string_view base32_alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
constexpr std::size_t node_id_digest_bytes = 20;
constexpr std::size_t node_id_group = 4;
constexpr long cert_validity_days = 100L * 365 + 25;  // 100 years, leap days included

// Every credential failure reads "cannot create node credentials: <what> (<OpenSSL errors>)".
[[noreturn]] void fail(std::string_view what) { throw_openssl_error("cannot create node credentials", what); }

void add_extension(X509* cert, X509V3_CTX* ctx, int nid, const char* value) {
    ext_ptr ext(X509V3_EXT_conf_nid(nullptr, ctx, nid, value));
    if (!ext || X509_add_ext(cert, ext.get(), -1) != 1) {
        fail("cannot add certificate extension");
    }
}

bool is_base32_char(char c) { return (c >= 'A' && c <= 'Z') || (c >= '2' && c <= '7'); }

}  // namespace

std::string base32_encode(std::span<const std::uint8_t> bytes) {
    std::string out;
    out.reserve((bytes.size() * 8 + 4) / 5);
    std::uint32_t buffer = 0;
    int bits = 0;
    for (std::uint8_t b : bytes) {
        buffer = (buffer << 8) | b;
        bits += 8;
        while (bits >= 5) {
            bits -= 5;
            out.push_back(base32_alphabet[(buffer >> bits) & 0x1f]);
        }
    }
    if (bits > 0) {
        out.push_back(base32_alphabet[(buffer << (5 - bits)) & 0x1f]);
    }
    return out;
}

std::string node_id_from_pubkey(EVP_PKEY* key) {
    if (key == nullptr) {
        throw std::runtime_error("node ID: no public key");
    }
    unsigned char* der = nullptr;
    int der_len = i2d_PUBKEY(key, &der);
    if (der_len <= 0 || der == nullptr) {
        throw std::runtime_error("node ID: cannot encode the public key: " + tls_error_string());
    }
    std::array<std::uint8_t, EVP_MAX_MD_SIZE> digest{};
    unsigned int digest_len = 0;
    int ok = EVP_Digest(der, static_cast<std::size_t>(der_len), digest.data(), &digest_len, EVP_sha256(), nullptr);
    OPENSSL_free(der);
    if (ok != 1 || digest_len < node_id_digest_bytes) {
        throw std::runtime_error("node ID: SHA-256 failed: " + tls_error_string());
    }
    return base32_encode(std::span<const std::uint8_t>(digest.data(), node_id_digest_bytes));
}

std::string node_id_from_cert(X509* cert) {
    if (cert == nullptr) {
        return {};
    }
    EVP_PKEY* key = X509_get0_pubkey(cert);
    if (key == nullptr) {
        ERR_clear_error();
        return {};
    }
    try {
        return node_id_from_pubkey(key);
    } catch (const std::runtime_error&) {
        return {};
    }
}

std::string format_node_id(std::string_view canonical) {
    if (canonical.size() != node_id_chars) {
        return std::string(canonical);
    }
    std::string out;
    out.reserve(node_id_chars + node_id_chars / node_id_group - 1);
    for (std::size_t i = 0; i < canonical.size(); ++i) {
        if (i > 0 && i % node_id_group == 0) {
            out.push_back('-');
        }
        out.push_back(canonical[i]);
    }
    return out;
}

std::optional<std::string> parse_node_id(std::string_view text) {
    auto is_space = [](char c) { return std::isspace(static_cast<unsigned char>(c)) != 0; };
    while (!text.empty() && is_space(text.front())) {
        text.remove_prefix(1);
    }
    while (!text.empty() && is_space(text.back())) {
        text.remove_suffix(1);
    }
    const std::size_t grouped_len = node_id_chars + node_id_chars / node_id_group - 1;
    const bool grouped = text.size() == grouped_len;
    if (!grouped && text.size() != node_id_chars) {
        return std::nullopt;
    }
    std::string out;
    out.reserve(node_id_chars);
    for (std::size_t i = 0; i < text.size(); ++i) {
        char c = text[i];
        if (grouped && i % (node_id_group + 1) == node_id_group) {
            if (c != '-') {
                return std::nullopt;
            }
            continue;
        }
        c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
        if (!is_base32_char(c)) {
            return std::nullopt;
        }
        out.push_back(c);
    }
    return out;
}

tls_credentials credentials_for_key(EVP_PKEY* key) {
    if (key == nullptr) {
        fail("no private key");
    }
    const std::string id = node_id_from_pubkey(key);

    x509_ptr cert(X509_new());
    if (!cert || X509_set_version(cert.get(), X509_VERSION_3) != 1) {
        fail("X509_new");
    }

    // Random positive 127-bit serial, never zero.
    std::array<unsigned char, 16> serial{};
    if (RAND_bytes(serial.data(), static_cast<int>(serial.size())) != 1) {
        fail("RAND_bytes");
    }
    serial[0] = static_cast<unsigned char>((serial[0] & 0x7f) | 0x01);
    bn_ptr serial_bn(BN_bin2bn(serial.data(), static_cast<int>(serial.size()), nullptr));
    if (!serial_bn || BN_to_ASN1_INTEGER(serial_bn.get(), X509_get_serialNumber(cert.get())) == nullptr) {
        fail("cannot set the serial number");
    }

    // Back-dated a day so a peer whose clock lags does not see a not-yet-valid certificate.
    if (X509_gmtime_adj(X509_getm_notBefore(cert.get()), -24L * 3600) == nullptr ||
        X509_time_adj_ex(X509_getm_notAfter(cert.get()), cert_validity_days, 0, nullptr) == nullptr) {
        fail("cannot set the validity period");
    }

    X509_NAME* name = X509_get_subject_name(cert.get());
    if (X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC, reinterpret_cast<const unsigned char*>(id.c_str()), -1, -1,
                                   0) != 1 ||
        X509_set_issuer_name(cert.get(), name) != 1) {
        fail("cannot set the subject name");
    }
    if (X509_set_pubkey(cert.get(), key) != 1) {
        fail("cannot set the public key");
    }

    X509V3_CTX ctx;
    X509V3_set_ctx_nodb(&ctx);
    X509V3_set_ctx(&ctx, cert.get(), cert.get(), nullptr, nullptr, 0);
    add_extension(cert.get(), &ctx, NID_basic_constraints, "critical,CA:FALSE");
    add_extension(cert.get(), &ctx, NID_key_usage, "critical,digitalSignature");
    add_extension(cert.get(), &ctx, NID_ext_key_usage, "serverAuth,clientAuth");
    add_extension(cert.get(), &ctx, NID_subject_key_identifier, "hash");

    // Ed25519 signs the message itself: no separate digest.
    if (X509_sign(cert.get(), key, nullptr) <= 0) {
        fail("cannot sign the certificate");
    }

    std::optional<tls_credentials> pem = encode_pem_credentials(cert.get(), key);
    if (!pem) {
        fail("cannot encode PEM");
    }
    return *pem;
}

tls_credentials generate_credentials() {
    pkey_ptr key(EVP_PKEY_Q_keygen(nullptr, nullptr, "ED25519"));
    if (!key) {
        fail("Ed25519 key generation failed");
    }
    return credentials_for_key(key.get());
}

std::string hex_encode(std::string_view bytes) {
    static constexpr char digits[] = "0123456789abcdef";
    std::string out;
    out.reserve(bytes.size() * 2);
    for (unsigned char b : bytes) {
        out += digits[b >> 4];
        out += digits[b & 15];
    }
    return out;
}

}  // namespace ferry
