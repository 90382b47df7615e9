// Announcements made by hand, for tests of LAN discovery: `body` signed as a node signs
// it (transport/announce.cpp), by any key, whatever the body claims. Header-only, so the
// transport tests use it without the support library (which links node/).
#pragma once

#include <openssl/evp.h>

#include <stdexcept>
#include <string>

#include "ferry.pb.h"
#include "transport/openssl_util.hpp"

namespace ferry::test {

// The Announce datagram of `body` signed by the Ed25519 key `key_pem` (PEM).
inline std::string sign_announce_body(const std::string& key_pem, const wire::AnnounceBody& body) {
    pkey_ptr key = read_pem_private_key(key_pem);
    std::string raw(32, '\0');
    std::size_t raw_len = raw.size();
    std::string message("ferry-announce-v1\0", 18);
    message += body.SerializeAsString();
    std::string sig(64, '\0');
    std::size_t sig_len = sig.size();
    EVP_MD_CTX* ctx = EVP_MD_CTX_new();
    bool ok = key && EVP_PKEY_get_raw_public_key(key.get(), reinterpret_cast<unsigned char*>(raw.data()), &raw_len) == 1 &&
              ctx != nullptr && EVP_DigestSignInit(ctx, nullptr, nullptr, nullptr, key.get()) == 1 &&
              EVP_DigestSign(ctx, reinterpret_cast<unsigned char*>(sig.data()), &sig_len,
                             reinterpret_cast<const unsigned char*>(message.data()), message.size()) == 1;
    EVP_MD_CTX_free(ctx);
    if (!ok) {
        throw std::runtime_error("sign_announce_body: not an Ed25519 key");
    }
    wire::Announce a;
    a.set_body(body.SerializeAsString());
    a.set_public_key(raw);
    a.set_signature(sig);
    return a.SerializeAsString();
}

}  // namespace ferry::test
