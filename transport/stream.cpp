#include "transport/stream.hpp"

#include <openssl/err.h>
#include <sys/uio.h>

#include <algorithm>
#include <cstring>

namespace ferry {

namespace {

class transport_category_impl final : public std::error_category {
public:
    const char* name() const noexcept override { return "ferry.transport"; }
    std::string message(int ev) const override {
        switch (static_cast<transport_errc>(ev)) {
            case transport_errc::ok: return "ok";
            case transport_errc::closed: return "connection closed by peer";
            case transport_errc::tls_failed: return "TLS error";
            case transport_errc::peer_refused: return "the peer refused this node's certificate (not trusted there)";
            case transport_errc::untrusted_peer: return "peer is not trusted";
            case transport_errc::timeout: return "timed out";
            case transport_errc::resolve_failed: return "host name did not resolve";
            case transport_errc::plaintext_mismatch:
                return "the peer does not speak TLS here: one side uses --plaintext and the other does not (both must say it)";
            case transport_errc::queue_full: return "outbound queue full";
            case transport_errc::no_certificate: return "the peer sent no certificate (not a ferry node?)";
            case transport_errc::tls_version: return "the peer does not speak TLS 1.3";
        }
        return "unknown transport error";
    }
};

// TLS alerts a refusing peer sends when it rejects our certificate.
bool is_refusal_alert(unsigned long err) {
    int reason = ERR_GET_REASON(err);
    return reason == SSL_R_SSLV3_ALERT_HANDSHAKE_FAILURE || reason == SSL_R_TLSV13_ALERT_CERTIFICATE_REQUIRED ||
           reason == SSL_R_SSLV3_ALERT_CERTIFICATE_UNKNOWN || reason == SSL_R_TLSV1_ALERT_ACCESS_DENIED ||
           reason == SSL_R_SSLV3_ALERT_BAD_CERTIFICATE || reason == SSL_R_TLSV1_ALERT_UNKNOWN_CA;
}

// Plaintext received where a TLS record was expected, or the other way round.
bool looks_like_tls_record(const std::uint8_t* p, std::size_t n) {
    return n >= 3 && (p[0] == 0x15 || p[0] == 0x16 || p[0] == 0x17) && p[1] == 0x03 && p[2] <= 0x04;
}

}  // namespace

const std::error_category& transport_category() noexcept {
    static const transport_category_impl instance;
    return instance;
}

byte_stream::byte_stream(asio::ip::tcp::socket socket) : socket_(std::move(socket)) {
    std::error_code ec;
    socket_.non_blocking(true, ec);  // synchronous read_some/write_some return would_block
    auto ep = socket_.remote_endpoint(ec);
    remote_ = ec ? std::string("?") : format_endpoint(ep);
}

byte_stream::byte_stream(asio::ip::tcp::socket socket, SSL* ssl, std::unique_ptr<tls_peer_check> check)
    : byte_stream(std::move(socket)) {
    ssl_ = ssl;
    check_ = std::move(check);
    // Reads come straight from the socket (read-ahead fills OpenSSL's buffer in bulk).
    // Writes go through a buffer BIO so that the 16 KiB records of one write_now() leave
    // in one send() instead of one each; write_now() flushes it before returning.
    sock_bio_ = BIO_new_socket(socket_.native_handle(), BIO_NOCLOSE);
    BIO* buffer = BIO_new(BIO_f_buffer());
    BIO_set_write_buffer_size(buffer, write_buffer_bytes);
    BIO_up_ref(sock_bio_);  // owned twice by the SSL: as rbio and inside the wbio chain
    SSL_set_bio(ssl_, sock_bio_, BIO_push(buffer, sock_bio_));
}

byte_stream::~byte_stream() {
    close();
    if (ssl_ != nullptr) {
        SSL_free(ssl_);
    }
}

const std::string& byte_stream::peer_id() const {
    static const std::string none;
    return check_ ? check_->peer_id : none;
}

std::uint64_t byte_stream::wire_sent() const {
    return ssl_ != nullptr ? BIO_number_written(sock_bio_) : plain_sent_;
}

std::uint64_t byte_stream::wire_received() const {
    return ssl_ != nullptr ? BIO_number_read(sock_bio_) : plain_received_;
}

io_result byte_stream::ssl_result(int rc, std::size_t n) {
    io_result r;
    r.n = n;
    if (rc > 0) {
        return r;
    }
    int err = SSL_get_error(ssl_, rc);
    switch (err) {
        case SSL_ERROR_WANT_READ: r.wait = io_wait::read; return r;
        case SSL_ERROR_WANT_WRITE: r.wait = io_wait::write; return r;
        case SSL_ERROR_ZERO_RETURN: r.ec = transport_errc::closed; return r;
        case SSL_ERROR_SYSCALL: {
            int e = errno;
            ERR_clear_error();
            r.ec = e != 0 ? std::error_code(e, std::system_category()) : make_error_code(transport_errc::closed);
            return r;
        }
        default: {
            unsigned long code = ERR_peek_last_error();
            int reason = ERR_GET_REASON(code);
            r.ec = is_refusal_alert(code) ? transport_errc::peer_refused : transport_errc::tls_failed;
            if (reason == SSL_R_PEER_DID_NOT_RETURN_A_CERTIFICATE) {
                r.ec = transport_errc::no_certificate;
            } else if (reason == SSL_R_UNSUPPORTED_PROTOCOL || reason == SSL_R_TLSV1_ALERT_PROTOCOL_VERSION) {
                r.ec = transport_errc::tls_version;
            }
            if (ERR_GET_REASON(code) == SSL_R_WRONG_VERSION_NUMBER || ERR_GET_REASON(code) == SSL_R_HTTP_REQUEST ||
                ERR_GET_REASON(code) == SSL_R_PACKET_LENGTH_TOO_LONG ||
                (ERR_GET_REASON(code) == SSL_R_UNEXPECTED_EOF_WHILE_READING && !SSL_is_init_finished(ssl_))) {
                r.ec = transport_errc::plaintext_mismatch;
            }
            ERR_clear_error();
            return r;
        }
    }
}

io_result byte_stream::read_now(std::span<std::uint8_t> out) {
    if (ssl_ != nullptr) {
        std::size_t n = 0;
        ERR_clear_error();
        int rc = SSL_read_ex(ssl_, out.data(), out.size(), &n);
        return ssl_result(rc, n);
    }
    io_result r;
    std::error_code ec;
    std::size_t n = socket_.read_some(asio::buffer(out.data(), out.size()), ec);
    if (ec == asio::error::would_block || ec == asio::error::try_again) {
        r.wait = io_wait::read;
        return r;
    }
    if (ec == asio::error::eof) {
        r.ec = transport_errc::closed;
        return r;
    }
    if (ec) {
        r.ec = ec;
        return r;
    }
    if (plain_received_ == 0 && looks_like_tls_record(out.data(), n)) {
        r.ec = transport_errc::plaintext_mismatch;
        return r;
    }
    plain_received_ += n;
    r.n = n;
    return r;
}

io_result byte_stream::write_now(std::span<const asio::const_buffer> buffers) {
    io_result r;
    if (ssl_ == nullptr) {
        std::error_code ec;
        std::size_t n = socket_.write_some(buffers, ec);
        if (ec == asio::error::would_block || ec == asio::error::try_again) {
            r.wait = io_wait::write;
            return r;
        }
        if (ec) {
            r.ec = ec == asio::error::broken_pipe || ec == asio::error::connection_reset
                       ? std::error_code(transport_errc::closed)
                       : ec;
            return r;
        }
        plain_sent_ += n;
        r.n = n;
        return r;
    }

    // TLS: records of up to 16 KiB. A small buffer (a frame header) is coalesced with
    // what follows it into one staged record, so a chunk costs no extra tiny record.
    // Records collect in the write BIO and are flushed (one send) before returning.
    if (!flush_wbio(r)) {
        return r;
    }
    r = tls_write(buffers);
    if (!r.ec && r.wait == io_wait::none) {
        flush_wbio(r);
    }
    return r;
}

bool byte_stream::flush_wbio(io_result& r) {
    ERR_clear_error();
    BIO* w = SSL_get_wbio(ssl_);
    if (BIO_flush(w) > 0) {
        return true;
    }
    if (BIO_should_retry(w)) {
        r.wait = io_wait::write;
        return false;
    }
    int e = errno;
    r.ec = e != 0 && e != EPIPE && e != ECONNRESET ? std::error_code(e, std::system_category())
                                                  : make_error_code(transport_errc::closed);
    return false;
}

io_result byte_stream::tls_write(std::span<const asio::const_buffer> buffers) {
    io_result r;
    constexpr std::size_t record = 16 * 1024;
    std::size_t bi = 0;
    std::size_t boff = 0;  // offset into buffers[bi]
    auto advance = [&](std::size_t n) {
        r.n += n;
        while (n > 0 && bi < buffers.size()) {
            std::size_t left = buffers[bi].size() - boff;
            std::size_t take = std::min(left, n);
            boff += take;
            n -= take;
            if (boff == buffers[bi].size()) {
                ++bi;
                boff = 0;
            }
        }
    };
    for (int rounds = 0; rounds < 256; ++rounds) {
        if (stage_.empty()) {
            while (bi < buffers.size() && buffers[bi].size() == boff) {
                ++bi;
                boff = 0;
            }
            if (bi == buffers.size()) {
                return r;
            }
            std::size_t left = buffers[bi].size() - boff;
            if (left >= record) {
                // Large buffer: write whole records straight from it.
                std::size_t n = 0;
                ERR_clear_error();
                int rc = SSL_write_ex(ssl_, static_cast<const std::uint8_t*>(buffers[bi].data()) + boff,
                                      left / record * record, &n);
                io_result w = ssl_result(rc, n);
                advance(n);
                if (w.ec || w.wait != io_wait::none) {
                    r.ec = w.ec;
                    r.wait = w.wait;
                    return r;
                }
                continue;
            }
            // Stage small pieces up to one record.
            std::size_t sbi = bi;
            std::size_t soff = boff;
            while (sbi < buffers.size() && stage_.size() < record) {
                const auto* p = static_cast<const std::uint8_t*>(buffers[sbi].data()) + soff;
                std::size_t take = std::min(buffers[sbi].size() - soff, record - stage_.size());
                stage_.insert(stage_.end(), p, p + take);
                soff += take;
                if (soff == buffers[sbi].size()) {
                    ++sbi;
                    soff = 0;
                }
            }
            stage_src_ = stage_.size();
            stage_off_ = 0;
        }
        std::size_t n = 0;
        ERR_clear_error();
        int rc = SSL_write_ex(ssl_, stage_.data() + stage_off_, stage_.size() - stage_off_, &n);
        io_result w = ssl_result(rc, n);
        stage_off_ += n;
        if (stage_off_ == stage_.size()) {
            std::size_t src = stage_src_;
            stage_.clear();
            stage_src_ = 0;
            stage_off_ = 0;
            advance(src);
        }
        if (w.ec || w.wait != io_wait::none) {
            r.ec = w.ec;
            r.wait = w.wait;
            return r;
        }
    }
    return r;
}

void byte_stream::async_wait(io_wait what, std::function<void(std::error_code)> fn) {
    socket_.async_wait(what == io_wait::write ? asio::socket_base::wait_write : asio::socket_base::wait_read,
                       [fn = std::move(fn)](std::error_code ec) { fn(ec); });
}

void byte_stream::async_handshake(std::function<void(std::error_code)> fn) {
    if (ssl_ == nullptr) {
        asio::post(socket_.get_executor(), [fn = std::move(fn)] { fn({}); });
        return;
    }
    handshake_step(std::make_shared<std::function<void(std::error_code)>>(std::move(fn)));
}

void byte_stream::handshake_step(std::shared_ptr<std::function<void(std::error_code)>> fn) {
    ERR_clear_error();
    int rc = SSL_do_handshake(ssl_);
    if (rc == 1) {
        (*fn)({});
        return;
    }
    io_result r = ssl_result(rc, 0);
    if (r.wait != io_wait::none) {
        async_wait(r.wait, [this, fn](std::error_code ec) {
            if (ec) {
                (*fn)(ec);
                return;
            }
            handshake_step(fn);
        });
        return;
    }
    if (check_ && !check_->reason.empty()) {
        r.ec = transport_errc::untrusted_peer;
    } else if (r.ec == transport_errc::closed) {
        // A plaintext peer closes on our ClientHello.
        r.ec = transport_errc::plaintext_mismatch;
    }
    (*fn)(r.ec ? r.ec : make_error_code(transport_errc::tls_failed));
}

void byte_stream::close() {
    if (!socket_.is_open()) {
        return;
    }
    if (ssl_ != nullptr && !shut_) {
        shut_ = true;
        SSL_shutdown(ssl_);  // best effort close_notify; never waits
        ERR_clear_error();
    }
    std::error_code ec;
    socket_.shutdown(asio::socket_base::shutdown_both, ec);
    socket_.close(ec);
}

bool split_host_port(const std::string& text, std::string& host, std::string& port) {
    if (text.empty()) {
        return false;
    }
    if (text.front() == '[') {
        auto close = text.find(']');
        if (close == std::string::npos || close + 1 >= text.size() || text[close + 1] != ':') {
            return false;
        }
        host = text.substr(1, close - 1);
        port = text.substr(close + 2);
    } else {
        auto colon = text.rfind(':');
        if (colon == std::string::npos || text.find(':') != colon) {
            return false;
        }
        host = text.substr(0, colon);
        port = text.substr(colon + 1);
    }
    if (host.empty() || port.empty() || port.size() > 5 ||
        !std::all_of(port.begin(), port.end(), [](char c) { return c >= '0' && c <= '9'; }) || std::stoi(port) > 65535) {
        return false;
    }
    return true;
}

std::string format_endpoint(const asio::ip::tcp::endpoint& ep) {
    if (ep.address().is_v6()) {
        return "[" + ep.address().to_string() + "]:" + std::to_string(ep.port());
    }
    return ep.address().to_string() + ":" + std::to_string(ep.port());
}

namespace {

// Shared state of one establishment: a timer bounds the whole operation.
struct establish_op {
    establish_op(asio::io_context& io) : resolver(io), socket(io), timer(io) {}
    asio::ip::tcp::resolver resolver;
    asio::ip::tcp::socket socket;
    asio::steady_timer timer;
    std::unique_ptr<byte_stream> stream;
    std::unique_ptr<tls_peer_check> check;
    std::function<void(std::error_code, std::unique_ptr<byte_stream>)> fn;
    bool done = false;
    bool timed_out = false;

    void finish(std::error_code ec) {
        if (done) {
            return;
        }
        done = true;
        timer.cancel();
        if (timed_out) {
            ec = transport_errc::timeout;
        }
        if (ec) {
            if (stream) {
                stream->close();
            }
            fn(ec, nullptr);
        } else {
            fn({}, std::move(stream));
        }
    }
};

void start_stream(const std::shared_ptr<establish_op>& op, const tls_context* tls, const socket_tuning& tuning) {
    tuning_report report = apply_socket_tuning(op->socket.native_handle(), tuning);
    if (tls != nullptr) {
        tls_peer_check* check = op->check.get();
        SSL* ssl = tls->new_ssl(check);
        op->stream = std::make_unique<byte_stream>(std::move(op->socket), ssl, std::move(op->check));
    } else {
        op->stream = std::make_unique<byte_stream>(std::move(op->socket));
    }
    op->stream->set_tuning(std::move(report));
    op->stream->async_handshake([op](std::error_code ec) { op->finish(ec); });
}

void arm_timer(const std::shared_ptr<establish_op>& op, std::chrono::milliseconds timeout) {
    op->timer.expires_after(timeout);
    op->timer.async_wait([op](std::error_code ec) {
        if (ec || op->done) {
            return;
        }
        op->timed_out = true;
        std::error_code ignored;
        op->resolver.cancel();
        op->socket.close(ignored);
        if (op->stream) {
            op->stream->close();
        }
    });
}

}  // namespace

void async_connect_stream(asio::io_context& io, const tls_context* tls, const connect_options& opts,
                          std::unique_ptr<tls_peer_check> check,
                          std::function<void(std::error_code, std::unique_ptr<byte_stream>)> fn) {
    auto op = std::make_shared<establish_op>(io);
    op->check = std::move(check);
    op->fn = std::move(fn);
    arm_timer(op, opts.timeout);
    op->resolver.async_resolve(
        opts.host, opts.port, asio::ip::resolver_base::numeric_service,
        [op, tls, tuning = opts.tuning](std::error_code ec, asio::ip::tcp::resolver::results_type results) {
            if (ec || results.empty()) {
                op->finish(op->timed_out ? ec : make_error_code(transport_errc::resolve_failed));
                return;
            }
            asio::async_connect(op->socket, results,
                                [op, tls, tuning](std::error_code ec, const asio::ip::tcp::endpoint&) {
                                    if (ec) {
                                        op->finish(ec);
                                        return;
                                    }
                                    start_stream(op, tls, tuning);
                                });
        });
}

void async_accept_stream(asio::io_context& io, const tls_context* tls, asio::ip::tcp::socket socket,
                         const socket_tuning& tuning, std::chrono::milliseconds timeout,
                         std::unique_ptr<tls_peer_check> check,
                         std::function<void(std::error_code, std::unique_ptr<byte_stream>)> fn) {
    auto op = std::make_shared<establish_op>(io);
    op->socket = std::move(socket);
    op->check = std::move(check);
    op->fn = std::move(fn);
    arm_timer(op, timeout);
    start_stream(op, tls, tuning);
}

}  // namespace ferry
