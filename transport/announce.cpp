#include "transport/announce.hpp"

#include <openssl/err.h>
#include <openssl/evp.h>

#include <stdexcept>

#include "ferry.pb.h"
#include "protocol/types.hpp"
#include "transport/identity.hpp"
#include "transport/openssl_util.hpp"

namespace ferry {

namespace {

constexpr std::string_view domain{"ferry-announce-v1\0", 18};  // signed before the body
constexpr std::size_t ed25519_key_bytes = 32;
constexpr std::size_t ed25519_signature_bytes = 64;
constexpr std::size_t max_node_name_bytes = 64;
constexpr std::size_t max_listen = 8;
constexpr std::size_t max_listen_bytes = 64;

struct md_ctx_deleter {
    void operator()(EVP_MD_CTX* c) const { EVP_MD_CTX_free(c); }
};
using md_ctx_ptr = std::unique_ptr<EVP_MD_CTX, md_ctx_deleter>;

std::string signed_message(const std::string& body) {
    std::string m(domain);
    m += body;
    return m;
}

}  // namespace

announce_signer::announce_signer(const std::string& key_pem) {
    pkey_ptr key = read_pem_private_key(key_pem);
    if (!key || EVP_PKEY_get_id(key.get()) != EVP_PKEY_ED25519) {
        ERR_clear_error();
        throw std::runtime_error("announcements: the node key is not an Ed25519 key");
    }
    public_key_.resize(ed25519_key_bytes);
    std::size_t len = public_key_.size();
    if (EVP_PKEY_get_raw_public_key(key.get(), reinterpret_cast<unsigned char*>(public_key_.data()), &len) != 1 ||
        len != ed25519_key_bytes) {
        ERR_clear_error();
        throw std::runtime_error("announcements: cannot read the node's public key");
    }
    id_ = node_id_from_pubkey(key.get());
    key_ = key.release();
}

announce_signer::~announce_signer() { EVP_PKEY_free(key_); }

std::string announce_signer::sign(announcement a) const {
    wire::AnnounceBody body;
    body.set_node_id(id_);
    body.set_name(a.name.substr(0, max_node_name_bytes));
    body.set_version(a.version);
    body.set_instance(a.instance);
    body.set_seq(a.seq);
    body.set_time_ms(a.time_ms);
    body.set_leaving(a.leaving);
    for (std::size_t i = 0; i < a.listen.size() && i < max_listen; ++i) {
        if (a.listen[i].size() <= max_listen_bytes) {
            body.add_listen(a.listen[i]);
        }
    }
    // Within max_announce_bytes by these bounds: 64 + 8 x 64 bytes of text, and fixed fields.
    std::string bytes = body.SerializeAsString();
    std::string message = signed_message(bytes);
    std::string signature(ed25519_signature_bytes, '\0');
    std::size_t sig_len = signature.size();
    md_ctx_ptr ctx(EVP_MD_CTX_new());
    if (!ctx || EVP_DigestSignInit(ctx.get(), nullptr, nullptr, nullptr, key_) != 1 ||
        EVP_DigestSign(ctx.get(), reinterpret_cast<unsigned char*>(signature.data()), &sig_len,
                       reinterpret_cast<const unsigned char*>(message.data()), message.size()) != 1) {
        ERR_clear_error();
        throw std::runtime_error("announcements: signing failed");
    }
    wire::Announce out;
    out.set_public_key(public_key_);
    out.set_body(std::move(bytes));
    out.set_signature(std::move(signature));
    return out.SerializeAsString();
}

std::optional<announcement> open_announcement(std::span<const std::uint8_t> datagram, std::string& why) {
    if (datagram.size() > max_announce_bytes) {
        why = "over " + std::to_string(max_announce_bytes) + " bytes";
        return std::nullopt;
    }
    wire::Announce a;
    if (!a.ParseFromArray(datagram.data(), static_cast<int>(datagram.size()))) {
        why = "not an announcement";
        return std::nullopt;
    }
    if (a.public_key().size() != ed25519_key_bytes || a.signature().size() != ed25519_signature_bytes) {
        why = "no Ed25519 key or signature";
        return std::nullopt;
    }
    pkey_ptr key(EVP_PKEY_new_raw_public_key(EVP_PKEY_ED25519, nullptr,
                                             reinterpret_cast<const unsigned char*>(a.public_key().data()),
                                             a.public_key().size()));
    if (!key) {
        ERR_clear_error();
        why = "a key that does not parse";
        return std::nullopt;
    }
    std::string message = signed_message(a.body());
    md_ctx_ptr ctx(EVP_MD_CTX_new());
    if (!ctx || EVP_DigestVerifyInit(ctx.get(), nullptr, nullptr, nullptr, key.get()) != 1 ||
        EVP_DigestVerify(ctx.get(), reinterpret_cast<const unsigned char*>(a.signature().data()),
                         a.signature().size(), reinterpret_cast<const unsigned char*>(message.data()),
                         message.size()) != 1) {
        ERR_clear_error();
        why = "a signature that does not verify";
        return std::nullopt;
    }
    wire::AnnounceBody body;
    if (!body.ParseFromString(a.body())) {
        why = "a body that does not parse";
        return std::nullopt;
    }
    std::string id;
    try {
        id = node_id_from_pubkey(key.get());
    } catch (const std::runtime_error&) {
        why = "a key with no node ID";
        return std::nullopt;
    }
    if (body.node_id() != id) {
        why = "an ID that is not its key's";
        return std::nullopt;
    }
    if (body.name().size() > max_node_name_bytes || body.listen_size() > static_cast<int>(max_listen)) {
        why = "fields out of bounds";
        return std::nullopt;
    }
    announcement out;
    out.id = std::move(id);
    out.name = body.name();
    for (const std::string& l : body.listen()) {
        if (l.empty() || l.size() > max_listen_bytes) {
            why = "fields out of bounds";
            return std::nullopt;
        }
        out.listen.push_back(l);
    }
    out.version = body.version();
    out.instance = body.instance();
    out.seq = body.seq();
    out.time_ms = body.time_ms();
    out.leaving = body.leaving();
    return out;
}

}  // namespace ferry
