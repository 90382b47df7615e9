// hostile_peer: a ferry peer that misbehaves on purpose, for end-to-end tests of a running
// node (tests/e2e/hostile_peer_test.cpp).
//
// It connects over TCP to a loopback HOST:PORT and runs the TLS handshake with OpenSSL
// directly (not transport/tls.hpp), so that every choice a real node would never make is
// the test's: no TLS at all, a TLS 1.2 ceiling, no certificate, an RSA certificate, a
// certificate that names another node. After the handshake it sends whatever the test
// builds, raw bytes or frames (varint length | Header | payload, with no limit enforced
// on the way out), and reads the node's frames back with protocol/frame.hpp's decoder.
//
// Synchronous and single-threaded: a blocking socket; every read waits with poll()
// against the peer's timeout and every socket call has SO_RCVTIMEO/SO_SNDTIMEO as a
// backstop, so no call blocks longer than the timeout. The object owns the socket and
// the SSL; the destructor closes both.
#pragma once

#include <openssl/ssl.h>

#include <chrono>
#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "ferry.pb.h"
#include "protocol/frame.hpp"
#include "transport/identity.hpp"

namespace ferry::test {

// How the peer does TLS.
struct hostile_tls {
    bool enabled = true;                         // false: plain TCP, no TLS at all
    std::optional<tls_credentials> credentials;  // none: the client sends no certificate
    int max_version = TLS1_3_VERSION;            // TLS1_2_VERSION: a client that stops at TLS 1.2
    std::vector<std::string> extra_chain_pem;    // certificates sent after the leaf
};

// Credentials a ferry node would never make: an RSA key (2048 bits) in a self-signed
// certificate whose CN is `cn`.
tls_credentials rsa_credentials(const std::string& cn);
// A fresh Ed25519 key in a self-signed certificate whose CN claims `cn` (another node's
// ID): the ID a node computes is the key's, whatever the certificate says.
tls_credentials ed25519_credentials_claiming(const std::string& cn);
// Canonical node ID of the key in a PEM certificate ("" if it does not parse).
std::string id_of(const tls_credentials& creds);

// A frame as it would go on the wire: varint32 header length | header | payload. Nothing
// is checked, so a test can build frames a node must refuse.
std::vector<std::uint8_t> encode_frame(const wire::Header& header, std::span<const std::uint8_t> payload = {});

// A Chunk frame's header for `raw` bytes of chunk `index` of file `file`, sent raw
// (CODEC_RAW) with their XXH3-128.
wire::Header chunk_header(std::uint32_t file, std::uint32_t index, std::span<const std::uint8_t> raw);

// What the node sent until it closed, or until the wait ended.
struct node_answer {
    std::vector<wire::Header> frames;  // every frame received, in order
    bool closed = false;               // the node closed the connection (close_notify, alert, FIN, reset)
    bool timed_out = false;            // nothing more within the timeout, and still open
    std::string detail;                // how it ended: "close_notify", "TLS alert: ...", "EOF", ...
    std::size_t raw_bytes = 0;         // plain TCP: bytes received (not decoded)

    // The first Error frame, if any.
    const wire::Error* error() const;
    // Frames of that kind received.
    std::size_t count(wire::Header::BodyCase kind) const;
};

class hostile_peer {
  public:
    explicit hostile_peer(std::string address, hostile_tls tls = {},
                          std::chrono::milliseconds timeout = std::chrono::seconds(10));
    ~hostile_peer();
    hostile_peer(const hostile_peer&) = delete;
    hostile_peer& operator=(const hostile_peer&) = delete;

    // TCP connect, then the TLS handshake (unless plain TCP). False if either failed;
    // error() says why. In TLS 1.3 the client finishes its handshake before the server
    // has judged the client's certificate: a refusal shows on the first read.
    bool connect();
    const std::string& error() const { return error_; }
    // This end of the connection ("127.0.0.1:PORT"), as the node names it in its log.
    const std::string& local_address() const { return local_; }

    // Sends bytes as they are (inside TLS records when TLS is on). False if the node
    // closed the connection or the write timed out.
    bool send_raw(std::span<const std::uint8_t> bytes);
    bool send_raw(std::string_view bytes);
    // Sends one frame; payload_len is set to the payload's size.
    bool send_frame(wire::Header header, std::span<const std::uint8_t> payload = {});

    // Next frame from the node, or nullopt when the node closed the connection or
    // nothing arrived within the timeout (then last_end() says which).
    std::optional<wire::Header> read_frame();
    // Reads frames until the node closes the connection or the timeout passes
    // (at most 100'000 frames). On plain TCP the bytes are not decoded (a TLS node's
    // answer to a plain client is a TLS alert, not frames): raw_bytes counts them.
    node_answer read_until_closed();
    const node_answer& last_end() const { return end_; }

    // The well-behaved opening: a Hello opening a session of `conn_count` connections,
    // and the node's Hello back. False (error() says why) if the node answered otherwise;
    // that answer is then the next frame read.
    bool hello(std::uint32_t conn_count = 1);
    // Sends an Offer and reads the node's answer: the Accept, or nullopt (then
    // last_end() holds what came instead, an Error frame and the close).
    std::optional<wire::Accept> offer(const wire::Offer& offer);

    // Sends the TCP FIN (after a TLS close_notify if TLS is on) but keeps reading.
    void shutdown_write();
    // Closes the connection (what a peer does once it has read the node's close).
    void close();

  private:
    bool write_all(const std::uint8_t* data, std::size_t len);
    // Reads once from the socket into in_ (waiting until `deadline` at most); false when
    // the node closed the connection or nothing came in time (end_ says which).
    bool fill(std::chrono::steady_clock::time_point deadline);

    std::string address_;
    hostile_tls tls_;
    std::chrono::milliseconds timeout_;
    int fd_ = -1;
    SSL_CTX* ctx_ = nullptr;
    SSL* ssl_ = nullptr;
    std::string error_;
    std::string local_;
    frame_decoder decoder_;
    std::vector<std::uint8_t> in_;  // received bytes not yet decoded
    std::size_t in_pos_ = 0;
    std::vector<wire::Header> ready_;  // decoded frames not yet returned
    node_answer end_;
    bool eof_ = false;           // the node closed the connection
    std::string closed_detail_;  // how (end_.detail of every read after it)
};

}  // namespace ferry::test
