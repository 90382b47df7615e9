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
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

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

// Unencrypted PEM private key held in `pem`; null if it does not parse (the reason is
// left on the OpenSSL error queue).
inline pkey_ptr read_pem_private_key(std::string_view pem) {
    bio_ptr bio(BIO_new_mem_buf(pem.data(), static_cast<int>(pem.size())));
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
