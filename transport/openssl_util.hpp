// Small OpenSSL helpers shared by transport/, node/ and the tests' support code.
//
// Owning pointers for the OpenSSL objects ferry creates (bio_ptr, pkey_ptr, x509_ptr,
// bn_ptr, ext_ptr), PEM parsing from and encoding to memory, and the start-up exception
// that carries the calling thread's OpenSSL error queue. Header-only; callable from any thread (the error
// queue is per thread).
//
// Not included by transport/tls.hpp or transport/identity.hpp on purpose: only the .cpp
// files that use these helpers pull the names into namespace ferry.
#pragma once

#include <openssl/bio.h>
#include <openssl/bn.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include <cstring>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>

#include "transport/tls.hpp"

namespace ferry {

struct bio_deleter {
    void operator()(BIO* b) const { BIO_free(b); }
};
struct pkey_deleter {
    void operator()(EVP_PKEY* k) const { EVP_PKEY_free(k); }
};
struct x509_deleter {
    void operator()(X509* x) const { X509_free(x); }
};
struct bn_deleter {
    void operator()(BIGNUM* b) const { BN_free(b); }
};
struct ext_deleter {
    void operator()(X509_EXTENSION* e) const { X509_EXTENSION_free(e); }
};

using bio_ptr = std::unique_ptr<BIO, bio_deleter>;
using pkey_ptr = std::unique_ptr<EVP_PKEY, pkey_deleter>;
using x509_ptr = std::unique_ptr<X509, x509_deleter>;
using bn_ptr = std::unique_ptr<BIGNUM, bn_deleter>;
using ext_ptr = std::unique_ptr<X509_EXTENSION, ext_deleter>;

// The Ed25519 key of `der` when it is one in the unencrypted PKCS #8 form OpenSSL
// writes (RFC 8410: version 0, the algorithm, the 32-byte key, nothing else); else null.
inline pkey_ptr ed25519_pkcs8_key(const unsigned char* der, long len) {
    static constexpr unsigned char prefix[] = {0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06,
                                               0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20};
    if (len != static_cast<long>(sizeof prefix) + 32 || std::memcmp(der, prefix, sizeof prefix) != 0) {
        return {};
    }
    return pkey_ptr(EVP_PKEY_new_raw_private_key(EVP_PKEY_ED25519, nullptr, der + sizeof prefix, 32));
}

// Unencrypted PEM private key held in `pem`; null if it does not parse (the reason is
// left on the OpenSSL error queue). A node's own key (Ed25519, PKCS #8) is taken
// directly: OpenSSL 3's generic decoding tries every format it knows, 0.7 ms a key here
// (4.7 ms the first), against 0.05 ms, and each command reads the key three times.
inline pkey_ptr read_pem_private_key(std::string_view pem) {
    bio_ptr bio(BIO_new_mem_buf(pem.data(), static_cast<int>(pem.size())));
    if (!bio) {
        return {};
    }
    char* name = nullptr;
    char* header = nullptr;
    unsigned char* der = nullptr;
    long len = 0;
    ERR_set_mark();
    if (PEM_read_bio(bio.get(), &name, &header, &der, &len) == 1) {
        pkey_ptr key;
        if (std::strcmp(name, PEM_STRING_PKCS8INF) == 0 && header[0] == '\0') {
            key = ed25519_pkcs8_key(der, len);
        }
        OPENSSL_free(name);
        OPENSSL_free(header);
        OPENSSL_clear_free(der, static_cast<std::size_t>(len));  // the private key's bytes
        if (key) {
            ERR_pop_to_mark();
            return key;
        }
    }
    ERR_pop_to_mark();  // the generic way below says why it does not parse
    bio.reset(BIO_new_mem_buf(pem.data(), static_cast<int>(pem.size())));
    pkey_ptr key;
    if (bio) {
        key.reset(PEM_read_bio_PrivateKey(bio.get(), nullptr, nullptr, nullptr));
    }
    return key;
}

// PEM certificate held in `pem`; null if it does not parse (the reason is left on the
// OpenSSL error queue).
inline x509_ptr read_pem_certificate(std::string_view pem) {
    bio_ptr bio(BIO_new_mem_buf(pem.data(), static_cast<int>(pem.size())));
    x509_ptr cert;
    if (bio) {
        cert.reset(PEM_read_bio_X509(bio.get(), nullptr, nullptr, nullptr));
    }
    return cert;
}

// The bytes written so far to a memory BIO.
inline std::string bio_to_string(BIO* bio) {
    char* data = nullptr;
    long len = BIO_get_mem_data(bio, &data);
    if (len <= 0 || data == nullptr) {
        return {};
    }
    return std::string(data, static_cast<std::size_t>(len));
}

// `cert` and `key` as PEM text (the key unencrypted); nullopt if encoding fails (the
// reason is left on the OpenSSL error queue).
inline std::optional<tls_credentials> encode_pem_credentials(X509* cert, EVP_PKEY* key) {
    bio_ptr cert_bio(BIO_new(BIO_s_mem()));
    bio_ptr key_bio(BIO_new(BIO_s_mem()));
    if (!cert_bio || !key_bio || PEM_write_bio_X509(cert_bio.get(), cert) != 1 ||
        PEM_write_bio_PrivateKey(key_bio.get(), key, nullptr, nullptr, 0, nullptr, nullptr) != 1) {
        return std::nullopt;
    }
    return tls_credentials{bio_to_string(cert_bio.get()), bio_to_string(key_bio.get())};
}

// Throws std::runtime_error("<prefix>: <what> (<OpenSSL errors>)"), draining the calling
// thread's OpenSSL error queue; the parenthesised part is left out when the queue is empty.
[[noreturn]] inline void throw_openssl_error(std::string_view prefix, std::string_view what) {
    std::string msg(prefix);
    msg += ": ";
    msg += what;
    std::string detail = tls_error_string();
    if (!detail.empty()) {
        msg += " (";
        msg += detail;
        msg += ")";
    }
    throw std::runtime_error(msg);
}

}  // namespace ferry
