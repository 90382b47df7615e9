// Signed LAN discovery announcements (proto Announce): made with this node's key, opened
// and checked on the way in. The ID in an announcement is only believed when it is the
// signing key's, so a forged announcement for a trusted ID fails here.
//
// Pure functions over bytes (no socket, no clock); callable from any thread.
#pragma once

#include <openssl/types.h>

#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <vector>

namespace ferry {

// Bytes an announcement datagram may take (one Ethernet frame's payload, less headers).
inline constexpr std::size_t max_announce_bytes = 1200;

struct announcement {
    std::string id;                   // canonical node ID (the key's)
    std::string name;                 // the node's name for itself (may be empty)
    std::vector<std::string> listen;  // HOST:PORT; 0.0.0.0 / [::] = the sender's own address
    std::uint32_t version = 0;        // protocol version
    std::uint64_t instance = 0;       // random per start
    std::uint64_t seq = 0;            // counts up within an instance
    std::int64_t time_ms = 0;         // the sender's wall clock
    bool leaving = false;             // the node stops
};

class announce_signer {
public:
    // The node's private key (PEM, Ed25519). Throws std::runtime_error if it is not one.
    explicit announce_signer(const std::string& key_pem);
    ~announce_signer();
    announce_signer(const announce_signer&) = delete;
    announce_signer& operator=(const announce_signer&) = delete;

    // The key's node ID.
    const std::string& id() const { return id_; }
    // The datagram for `a` (a.id is replaced by the key's ID), within max_announce_bytes:
    // a name is cut to 64 bytes, and at most 8 listen addresses of up to 64 bytes go.
    std::string sign(announcement a) const;

private:
    EVP_PKEY* key_ = nullptr;
    std::string public_key_;  // raw 32 bytes
    std::string id_;
};

// The announcement in `datagram`, or nullopt with `why` set: not an Announce, over
// max_announce_bytes, a key that is not Ed25519, a signature that does not verify, an
// ID that is not the key's, or fields out of bounds.
std::optional<announcement> open_announcement(std::span<const std::uint8_t> datagram, std::string& why);

}  // namespace ferry
