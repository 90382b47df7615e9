// byte_stream: one TCP connection, plaintext or TLS 1.3, in reactor style.
//
// Owned by one connection and used only on the loop thread. The stream never blocks:
// read_now()/write_now() do what the socket allows and say whether to wait for
// readability or writability, and async_wait() waits for that. With TLS, OpenSSL runs the
// handshake on the socket's fd; the application records are then sealed and opened by
// tls13_records (transport/tls_records.hpp) straight between the caller's buffers and
// one record buffer per direction. Record boundaries follow the caller's buffers: a
// buffer of 16 KiB or more starts and ends on a record boundary, smaller ones are
// coalesced, and a read stops after a short record, so a frame's payload is decrypted
// straight into its own buffer. Wire counters are what the kernel accepted/delivered,
// TLS records included.
#pragma once

#include <asio.hpp>
#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <openssl/ssl.h>
#include <span>
#include <string>
#include <system_error>
#include <vector>

#include "transport/socket_tuning.hpp"
#include "transport/tls.hpp"
#include "transport/tls_records.hpp"

namespace ferry {

enum class transport_errc {
    ok = 0,
    closed = 1,             // the peer closed the connection
    tls_failed = 2,         // TLS handshake or record error
    peer_refused = 3,       // our certificate was refused by the peer (we are not trusted)
    untrusted_peer = 4,     // the peer's certificate was refused by our check
    timeout = 5,            // an operation timed out
    resolve_failed = 6,     // the host name did not resolve
    plaintext_mismatch = 7, // one side uses --plaintext and the other does not
    queue_full = 8,         // the outbound queue bound was reached
    no_certificate = 9,     // the peer sent no certificate (ferry requires one on both sides)
    tls_version = 10,       // the peer does not speak TLS 1.3
    evicted = 11,           // closed by this side to make room for other connections
};

const std::error_category& transport_category() noexcept;
inline std::error_code make_error_code(transport_errc e) noexcept { return {static_cast<int>(e), transport_category()}; }

}  // namespace ferry

template <>
struct std::is_error_code_enum<ferry::transport_errc> : std::true_type {};

namespace ferry {

enum class io_wait { none, read, write };

struct io_result {
    std::size_t n = 0;          // bytes read, or source bytes consumed by a write
    // Non-zero n may still come with a wait. n == 0 with no wait and no error: nothing
    // yet, call again (TLS records that carried no data).
    io_wait wait = io_wait::none;
    std::error_code ec;         // set on error or close (then wait is none)
};

class byte_stream {
public:
    // Plaintext stream.
    explicit byte_stream(asio::ip::tcp::socket socket);
    // TLS stream: takes ownership of `ssl` (already bound to the socket's fd by attach).
    byte_stream(asio::ip::tcp::socket socket, SSL* ssl, std::unique_ptr<tls_peer_check> check);
    ~byte_stream();
    byte_stream(const byte_stream&) = delete;
    byte_stream& operator=(const byte_stream&) = delete;

    io_result read_now(std::span<std::uint8_t> out);
    // Writes from the front of `buffers`; io_result::n says how many source bytes were
    // consumed. With TLS, small buffers are coalesced into full records.
    io_result write_now(std::span<const asio::const_buffer> buffers);

    // Waits for the socket to become readable or writable (one wait per direction).
    void async_wait(io_wait what, std::function<void(std::error_code)> fn);

    // Runs the TLS handshake (no-op for plaintext). Completes with the peer's check result.
    void async_handshake(std::function<void(std::error_code)> fn);

    void close();
    // Ends the sending direction: close_notify (TLS) and a TCP FIN, never waiting. Reading
    // goes on, so that what the peer still sends can be drained before close() (closing
    // with unread data would reset the connection and could destroy what was just sent).
    void shutdown_send();
    // Sealed records not yet handed to the kernel.
    bool has_pending_output() const { return out_off_ < out_len_; }
    bool is_open() const { return socket_.is_open(); }
    bool is_tls() const { return ssl_ != nullptr; }
    const std::string& peer_id() const;
    // "TLS_AES_128_GCM_SHA256 (ipsec-mb)" once the handshake is done; "" for plaintext.
    std::string cipher_name() const;
    asio::ip::tcp::socket& socket() { return socket_; }
    std::uint64_t wire_sent() const;
    std::uint64_t wire_received() const;
    // Called with every increment of the wire counters from now on (after the handshake:
    // what the handshake moved is in wire_sent()/wire_received() already).
    void set_wire_observer(std::function<void(std::uint64_t sent, std::uint64_t received)> fn) {
        wire_observer_ = std::move(fn);
    }
    const tuning_report& tuning() const { return tuning_; }
    void set_tuning(tuning_report r) { tuning_ = std::move(r); }
    std::string remote() const { return remote_; }

private:
    io_result ssl_result(int rc, std::size_t n);
    io_result plain_read(std::span<std::uint8_t> out);
    io_result plain_write(std::span<const asio::const_buffer> buffers);
    io_result tls_read(std::span<std::uint8_t> out);
    io_result tls_write(std::span<const asio::const_buffer> buffers);
    // Sends what out_ holds. False (with r.wait or r.ec set) if it could not send it all.
    bool flush_out(io_result& r);
    // Switches from OpenSSL to ferry's record layer once the handshake is done.
    std::error_code start_records();
    void handshake_step(std::shared_ptr<std::function<void(std::error_code)>> fn);

    // Sealed records gathered per write_now(): one send() of up to this much.
    static constexpr std::size_t out_target = 256 * 1024;
    static constexpr std::size_t out_capacity = out_target + tls13_records::max_plain + tls13_records::seal_room;
    static constexpr std::size_t in_capacity = 256 * 1024 + tls13_records::max_record;

    asio::ip::tcp::socket socket_;
    SSL* ssl_ = nullptr;
    BIO* sock_bio_ = nullptr;  // the socket BIO (owned by ssl_): handshake wire counters
    std::unique_ptr<tls_peer_check> check_;
    std::unique_ptr<tls13_records> records_;
    // A byte buffer left uninitialised: a connection's record buffers are ~550 KiB, and
    // zeroing them (vector::resize) wrote every page of them at each TLS start, which
    // showed in profiles of short transfers (1-2 % of a 10,000-file send's CPU).
    class raw_bytes {
    public:
        void allocate(std::size_t n) {
            bytes_ = std::make_unique_for_overwrite<std::uint8_t[]>(n);
            size_ = n;
        }
        std::uint8_t* data() { return bytes_.get(); }
        std::size_t size() const { return size_; }

    private:
        std::unique_ptr<std::uint8_t[]> bytes_;
        std::size_t size_ = 0;
    };
    raw_bytes out_;                     // sealed records [out_off_, out_len_) not yet sent
    std::size_t out_len_ = 0;
    std::size_t out_off_ = 0;
    raw_bytes in_;                      // received record bytes, [in_pos_, in_end_)
    std::size_t in_pos_ = 0;
    std::size_t in_end_ = 0;
    raw_bytes plain_;                   // an opened record larger than the caller's buffer
    std::size_t plain_pos_ = 0;
    std::size_t plain_end_ = 0;
    std::error_code read_error_;        // held back while data decrypted before it is delivered
    std::function<void(std::uint64_t, std::uint64_t)> wire_observer_;
    void count_sent(std::size_t n) {
        plain_sent_ += n;
        if (wire_observer_) {
            wire_observer_(n, 0);
        }
    }
    void count_received(std::size_t n) {
        plain_received_ += n;
        if (wire_observer_) {
            wire_observer_(0, n);
        }
    }
    std::uint64_t plain_sent_ = 0;      // bytes written to the socket by ferry (not OpenSSL)
    std::uint64_t plain_received_ = 0;  // bytes read from the socket by ferry (not OpenSSL)
    tuning_report tuning_;
    std::string remote_;
    bool shut_ = false;
};

// Establishes outgoing streams: resolve (async), TCP connect, tuning, TLS handshake.
struct connect_options {
    std::string host;
    std::string port;
    bool plaintext = false;
    socket_tuning tuning;
    std::chrono::milliseconds timeout{15'000};
};

void async_connect_stream(asio::io_context& io, const tls_context* tls, const connect_options& opts,
                          std::unique_ptr<tls_peer_check> check,
                          std::function<void(std::error_code, std::unique_ptr<byte_stream>)> fn);

// Completes an accepted socket into a stream: tuning and TLS handshake with a timeout.
// The returned function stops it early (the callback then gets transport_errc::evicted);
// it does nothing once the callback has run.
std::function<void()> async_accept_stream(asio::io_context& io, const tls_context* tls, asio::ip::tcp::socket socket,
                         const socket_tuning& tuning, std::chrono::milliseconds timeout,
                         std::unique_ptr<tls_peer_check> check,
                         std::function<void(std::error_code, std::unique_ptr<byte_stream>)> fn);

// "HOST:PORT", "[v6]:PORT" -> host, port. Returns false on a malformed address (in
// brackets, anything but an IPv6 address).
bool split_host_port(const std::string& text, std::string& host, std::string& port);
// The other way: "HOST:PORT", or "[v6]:PORT" for a host with a colon in it.
std::string join_host_port(const std::string& host, const std::string& port);
std::string format_endpoint(const asio::ip::tcp::endpoint& ep);

// Resolves HOST:PORT (passive, numeric port) and opens, binds and listens `acceptor` on
// the first result. On failure `error` says what went wrong, naming `address`; the
// acceptor is left closed. invalid_argument: a malformed address.
std::error_code open_listener(asio::ip::tcp::acceptor& acceptor, const std::string& address, std::string& error);

}  // namespace ferry
