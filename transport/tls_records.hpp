// TLS 1.3 record protection for application data, after OpenSSL has run the handshake.
//
// OpenSSL authenticates the peer and agrees the traffic secrets; from then on ferry seals
// and opens the records itself, the way kTLS does in the kernel and QUIC stacks (ngtcp2)
// do in user space. This saves the copy OpenSSL makes between its record buffer and the
// caller's buffer on each side, and lets the AEAD come from the fastest implementation
// present (Intel ipsec-mb with VAES when built with it, else OpenSSL EVP). The records on
// the wire are ordinary TLS 1.3 records (RFC 8446 section 5): an OpenSSL peer reads and
// writes them unchanged, which tests/transport checks.
//
// Sans-IO: this file never touches a socket. byte_stream moves the bytes.
#pragma once

#include <openssl/ssl.h>

#include <array>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

namespace ferry {

enum class tls_suite {
    aes_128_gcm_sha256,
    aes_256_gcm_sha384,
    chacha20_poly1305_sha256,
};

// Which AEAD implementation seals and opens records.
enum class aead_backend {
    automatic,  // ipsec-mb for AES-GCM when available on this CPU, else OpenSSL
    openssl,    // OpenSSL EVP for every suite
    ipsec_mb,   // Intel ipsec-mb (AES-GCM only); falls back to OpenSSL when not built in
};

// The backend `automatic` resolves to for this suite on this machine ("openssl" or
// "ipsec-mb"). FERRY_AEAD=openssl in the environment forces OpenSSL.
std::string aead_backend_name(tls_suite suite, aead_backend backend = aead_backend::automatic);

// One direction's AEAD under one key.
class record_cipher {
public:
    static constexpr std::size_t tag_len = 16;
    static constexpr std::size_t nonce_len = 12;
    virtual ~record_cipher() = default;
    // Encrypts the concatenation of `in` to `out` and writes the tag right after it.
    virtual void seal(const std::uint8_t* nonce, std::span<const std::uint8_t> aad,
                      std::span<const std::span<const std::uint8_t>> in, std::uint8_t* out) = 0;
    // Decrypts `in` (ciphertext without the tag): its first `split` bytes to `out`, the rest
    // to `tail`. False if the tag does not match (the output is then garbage).
    virtual bool open(const std::uint8_t* nonce, std::span<const std::uint8_t> aad, std::span<const std::uint8_t> in,
                      const std::uint8_t* tag, std::uint8_t* out, std::size_t split, std::uint8_t* tail) = 0;
};

std::unique_ptr<record_cipher> make_record_cipher(tls_suite suite, std::span<const std::uint8_t> key,
                                                  aead_backend backend);

// HKDF-Expand-Label (RFC 8446 section 7.1) with the suite's hash.
std::vector<std::uint8_t> hkdf_expand_label(tls_suite suite, std::span<const std::uint8_t> secret,
                                            const std::string& label, std::size_t length);

// Traffic secrets captured during the handshake (through OpenSSL's key log callback).
struct tls_traffic_secrets {
    std::vector<std::uint8_t> client;  // CLIENT_TRAFFIC_SECRET_0
    std::vector<std::uint8_t> server;  // SERVER_TRAFFIC_SECRET_0
    ~tls_traffic_secrets();
};

// What opening a record gave.
struct record_opened {
    enum class kind {
        data,        // application data: `length` bytes at the start of the output
        control,     // a handshake message handled inside (KeyUpdate): nothing to deliver
        close,       // close_notify
        alert,       // any other alert: `alert` holds its description
        bad_record,  // authentication failure or a malformed record
    };
    kind what = kind::bad_record;
    std::size_t length = 0;
    std::uint8_t alert = 0;
};

class tls13_records {
public:
    static constexpr std::size_t header_len = 5;
    static constexpr std::size_t max_plain = 16 * 1024;
    // Largest record a peer may send: 2^14 + 256 bytes of ciphertext (RFC 8446 5.2).
    static constexpr std::size_t max_record = header_len + max_plain + 256;
    // Bytes a sealed record adds to its content: header, inner content type, tag.
    static constexpr std::size_t overhead = header_len + 1 + record_cipher::tag_len;
    // Records sealed under one key before ferry updates it (RFC 8446 5.5 allows 2^24.5
    // full records for AES-GCM).
    static constexpr std::uint64_t default_key_update_after = std::uint64_t{1} << 24;

    // `is_client` picks which secret is ours to write with.
    tls13_records(tls_suite suite, const tls_traffic_secrets& secrets, bool is_client, aead_backend backend,
                  std::uint64_t key_update_after = default_key_update_after);
    ~tls13_records();
    tls13_records(const tls13_records&) = delete;
    tls13_records& operator=(const tls13_records&) = delete;

    // Seals one application-data record holding the concatenation of `data` (at most
    // max_plain bytes) into `out`, which must have room for the size plus `overhead`.
    // Returns the record's size. Updates the write key first when due (a KeyUpdate record
    // then precedes the data in `out`, so `out` needs room for one more record).
    std::size_t seal_data(std::span<const std::span<const std::uint8_t>> data, std::uint8_t* out);
    // A close_notify alert record (`out` needs room for 2 + overhead bytes).
    std::size_t seal_close_notify(std::uint8_t* out);
    // Room seal_data() may need beyond the data itself.
    static constexpr std::size_t seal_room = 2 * overhead + 5;

    // Length of the record starting at `p` (header included) once its 5-byte header is
    // there; 0 if fewer than 5 bytes; SIZE_MAX if the header is not a valid TLS 1.3
    // application-data record header.
    static std::size_t record_size(const std::uint8_t* p, std::size_t n);
    // Room open() needs in `out` for the record of `size` bytes: its content, without the
    // inner content type byte.
    static std::size_t content_room(std::size_t size) { return size - overhead; }
    // Opens the complete record at `rec` into `out`, which has `room` bytes, at least
    // content_room(rec.size()). Never throws; a crypto failure reads as bad_record.
    record_opened open(std::span<const std::uint8_t> rec, std::uint8_t* out, std::size_t room);

    std::string cipher_name() const;

private:
    struct direction;
    void seal_record(direction& d, std::uint8_t type, std::span<const std::span<const std::uint8_t>> data,
                     std::uint8_t* out, std::size_t len);
    std::size_t seal_key_update(std::uint8_t* out);
    record_opened handle_handshake(const std::uint8_t* msg, std::size_t len);

    tls_suite suite_;
    aead_backend backend_;
    std::uint64_t key_update_after_;
    std::unique_ptr<direction> write_;
    std::unique_ptr<direction> read_;
    bool reply_key_update_ = false;  // the peer asked for our KeyUpdate
};

}  // namespace ferry
