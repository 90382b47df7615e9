// Node IDs and node credentials.
//
// A node ID is the base32 (RFC 4648 alphabet A-Z2-7, no padding) of the first 20 bytes of
// SHA-256 over the DER SubjectPublicKeyInfo of the node's public key: 32 characters. The
// canonical form is uppercase without dashes; the display form is 8 groups of 4 joined by
// '-', for reading aloud. Because the ID is a digest of the key, a peer that completes a
// TLS 1.3 handshake (whose CertificateVerify proves possession of the key) has proven its
// ID; the certificate around the key is only a carrier.
//
// Pure functions, callable from any thread. Functions taking OpenSSL objects borrow them.
#pragma once

#include <openssl/types.h>

#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <string_view>

namespace ferry {

// Length of a canonical node ID in characters (20 bytes of digest, 5 bits per character).
inline constexpr std::size_t node_id_chars = 32;

// A node's TLS credentials: a PEM private key and its PEM self-signed certificate.
struct tls_credentials {
    std::string cert_pem;
    std::string key_pem;
};

// RFC 4648 base32 (A-Z2-7) without padding.
std::string base32_encode(std::span<const std::uint8_t> bytes);

// Lower-case hex of raw bytes (session ids in status and --json output).
std::string hex_encode(std::string_view bytes);

// Canonical node ID of a public key. Throws std::runtime_error if the key cannot be
// encoded (not a public key OpenSSL knows).
std::string node_id_from_pubkey(EVP_PKEY* key);

// Canonical node ID of the key in a certificate, "" if the certificate has no usable key.
std::string node_id_from_cert(X509* cert);

// Grouped display form ("ABCD-EFGH-...") of a canonical ID. Anything that is not 32
// characters long is returned unchanged.
std::string format_node_id(std::string_view canonical);

// Accepts a canonical or grouped ID in any case, with surrounding whitespace. Returns the
// canonical form, or nullopt if `text` is not a 32-character base32 ID (dashes, if any,
// must be exactly those of the grouped form).
std::optional<std::string> parse_node_id(std::string_view text);

// New Ed25519 key and a self-signed X509v3 certificate for it (CN = the canonical node ID,
// valid 100 years, random serial). Throws std::runtime_error if OpenSSL fails.
tls_credentials generate_credentials();

// A fresh self-signed certificate (as above) for an existing private key, returned with
// the key in PEM. Used to rebuild a lost certificate without changing the node ID.
tls_credentials credentials_for_key(EVP_PKEY* key);

}  // namespace ferry
