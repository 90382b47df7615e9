#include "transport/stream.hpp"

#include <openssl/err.h>
#include <sys/uio.h>

#include <algorithm>
#include <array>
#include <charconv>
#include <cstring>
#include <memory>

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
                // (A node at its --max-connections closes an accepted connection at once,
                // which a client cannot tell from a plaintext peer closing on its hello.)
                return "the peer closed the connection or does not speak TLS here: it may be at its connection limit "
                       "(--max-connections), not a ferry node, or one side uses --plaintext and the other does not "
                       "(both must say it)";
            case transport_errc::queue_full: return "outbound queue full";
            case transport_errc::no_certificate: return "the peer sent no certificate (not a ferry node?)";
            case transport_errc::tls_version: return "the peer does not speak TLS 1.3";
            case transport_errc::evicted: return "closed to make room for other connections (this node is full)";
        }
        return "unknown transport error";
    }
};

// TLS alerts a refusing peer sends when it rejects our certificate.
// The same refusals as alert descriptions in a record (RFC 8446 section 6): handshake_failure,
// bad_certificate, certificate_unknown, unknown_ca, access_denied, certificate_required.
bool is_refusal_description(std::uint8_t d) {
    return d == 40 || d == 42 || d == 46 || d == 48 || d == 49 || d == 116;
}

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
    // OpenSSL reads and writes the handshake straight on the socket.
    sock_bio_ = BIO_new_socket(socket_.native_handle(), BIO_NOCLOSE);
    SSL_set_bio(ssl_, sock_bio_, sock_bio_);  // rbio == wbio: the SSL takes the one reference
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

std::string byte_stream::cipher_name() const { return records_ ? records_->cipher_name() : std::string(); }

std::uint64_t byte_stream::wire_sent() const {
    return (ssl_ != nullptr ? BIO_number_written(sock_bio_) : 0) + plain_sent_;
}

std::uint64_t byte_stream::wire_received() const {
    return (ssl_ != nullptr ? BIO_number_read(sock_bio_) : 0) + plain_received_;
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
                ERR_GET_REASON(code) == SSL_R_PACKET_LENGTH_TOO_LONG) {
                r.ec = transport_errc::plaintext_mismatch;
            } else if (ERR_GET_REASON(code) == SSL_R_UNEXPECTED_EOF_WHILE_READING && !SSL_is_init_finished(ssl_)) {
                // A client that meets a plaintext server sees it close; a server whose
                // client leaves mid-handshake (a sender that finished before its extra
                // connections were up) has only been left.
                r.ec = SSL_is_server(ssl_) != 0 ? transport_errc::closed : transport_errc::plaintext_mismatch;
            }
            ERR_clear_error();
            return r;
        }
    }
}

io_result byte_stream::read_now(std::span<std::uint8_t> out) {
    return ssl_ != nullptr ? tls_read(out) : plain_read(out);
}

io_result byte_stream::write_now(std::span<const asio::const_buffer> buffers) {
    return ssl_ != nullptr ? tls_write(buffers) : plain_write(buffers);
}

io_result byte_stream::plain_read(std::span<std::uint8_t> out) {
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
    count_received(n);
    r.n = n;
    return r;
}

io_result byte_stream::plain_write(std::span<const asio::const_buffer> buffers) {
    io_result r;
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
    count_sent(n);
    r.n = n;
    return r;
}

io_result byte_stream::tls_read(std::span<std::uint8_t> out) {
    io_result r;
    if (!records_) {
        r.ec = transport_errc::tls_failed;
        return r;
    }
    if (plain_pos_ < plain_end_) {
        std::size_t take = std::min(out.size(), plain_end_ - plain_pos_);
        std::memcpy(out.data(), plain_.data() + plain_pos_, take);
        plain_pos_ += take;
        r.n = take;
        return r;
    }
    if (read_error_) {
        r.ec = read_error_;
        return r;
    }
    std::size_t produced = 0;
    auto fail_read = [&](std::error_code ec) {
        // The stream is over (nothing after close_notify or a bad record is read). What
        // was opened before is delivered first; the error comes on every later call.
        read_error_ = ec;
        if (produced > 0) {
            r.n = produced;
        } else {
            r.ec = ec;
        }
        return r;
    };
    // Bounded: each round opens a record or reads from the socket once. Running out of
    // rounds returns n == 0 with no wait: the caller reads again.
    for (int round = 0; round < 64; ++round) {
        std::size_t avail = in_end_ - in_pos_;
        std::size_t size = tls13_records::record_size(in_.data() + in_pos_, avail);
        if (size == SIZE_MAX) {
            return fail_read(transport_errc::tls_failed);
        }
        if (size != 0 && size <= avail) {
            // Straight into the caller's buffer when the content fits; else via plain_.
            bool direct = out.size() - produced >= tls13_records::content_room(size);
            std::uint8_t* dst = direct ? out.data() + produced : plain_.data();
            std::size_t room = direct ? out.size() - produced : plain_.size();
            record_opened o = records_->open(std::span<const std::uint8_t>(in_.data() + in_pos_, size), dst, room);
            in_pos_ += size;
            switch (o.what) {
                case record_opened::kind::data:
                    if (!direct) {
                        std::size_t take = std::min(out.size() - produced, o.length);
                        std::memcpy(out.data() + produced, plain_.data(), take);
                        plain_pos_ = take;
                        plain_end_ = o.length;
                        r.n = produced + take;
                        return r;
                    }
                    produced += o.length;
                    // A short record ends what the writer had: return at that boundary
                    // so the caller can aim the next read at the right buffer.
                    if ((o.length > 0 && o.length < tls13_records::max_plain) || produced == out.size()) {
                        r.n = produced;
                        return r;
                    }
                    continue;
                case record_opened::kind::control: continue;
                case record_opened::kind::close: return fail_read(transport_errc::closed);
                case record_opened::kind::alert:
                    return fail_read(is_refusal_description(o.alert) ? transport_errc::peer_refused
                                                                     : transport_errc::tls_failed);
                case record_opened::kind::bad_record: return fail_read(transport_errc::tls_failed);
            }
        }
        if (produced > 0) {
            r.n = produced;
            return r;
        }
        // Need more bytes: make room for at least one whole record, then read.
        if (in_pos_ == in_end_) {
            in_pos_ = in_end_ = 0;
        } else if (in_.size() - in_pos_ < tls13_records::max_record) {
            std::memmove(in_.data(), in_.data() + in_pos_, in_end_ - in_pos_);
            in_end_ -= in_pos_;
            in_pos_ = 0;
        }
        std::error_code ec;
        std::size_t n = socket_.read_some(asio::buffer(in_.data() + in_end_, in_.size() - in_end_), ec);
        if (ec == asio::error::would_block || ec == asio::error::try_again) {
            r.wait = io_wait::read;
            return r;
        }
        if (ec == asio::error::eof && in_pos_ < in_end_) {
            return fail_read(transport_errc::tls_failed);  // cut off inside a record
        }
        if (ec) {
            return fail_read(ec == asio::error::eof || ec == asio::error::connection_reset
                                 ? std::error_code(transport_errc::closed)
                                 : ec);
        }
        count_received(n);
        in_end_ += n;
    }
    r.n = produced;
    return r;
}

bool byte_stream::flush_out(io_result& r) {
    while (out_off_ < out_len_) {
        std::error_code ec;
        std::size_t n = socket_.write_some(asio::buffer(out_.data() + out_off_, out_len_ - out_off_), ec);
        if (ec == asio::error::would_block || ec == asio::error::try_again) {
            r.wait = io_wait::write;
            return false;
        }
        if (ec) {
            r.ec = ec == asio::error::broken_pipe || ec == asio::error::connection_reset
                       ? std::error_code(transport_errc::closed)
                       : ec;
            return false;
        }
        count_sent(n);
        out_off_ += n;
    }
    out_len_ = 0;
    out_off_ = 0;
    return true;
}

io_result byte_stream::tls_write(std::span<const asio::const_buffer> buffers) {
    io_result r;
    if (!records_) {
        r.ec = transport_errc::tls_failed;
        return r;
    }
    if (!flush_out(r)) {
        return r;
    }
    // Seal records into out_ up to out_target bytes, then send them in one go. A buffer
    // of a full record or more gets records of its own (its last one may be short);
    // smaller buffers share records.
    constexpr std::size_t record = tls13_records::max_plain;
    std::size_t bi = 0;
    std::size_t boff = 0;
    std::span<const std::uint8_t> segs[64];
    while (bi < buffers.size() && out_len_ < out_target) {
        std::size_t nseg = 0;
        std::size_t len = 0;
        const auto* p = static_cast<const std::uint8_t*>(buffers[bi].data());
        std::size_t left = buffers[bi].size() - boff;
        if (left == 0) {
            ++bi;
            boff = 0;
            continue;
        }
        if (buffers[bi].size() >= record) {
            len = std::min(left, record);
            segs[nseg++] = std::span<const std::uint8_t>(p + boff, len);
            boff += len;
            if (boff == buffers[bi].size()) {
                ++bi;
                boff = 0;
            }
        } else {
            // Coalesce small buffers, stopping before a large one.
            while (bi < buffers.size() && nseg < std::size(segs) && buffers[bi].size() < record) {
                const auto* q = static_cast<const std::uint8_t*>(buffers[bi].data());
                std::size_t take = std::min(buffers[bi].size() - boff, record - len);
                segs[nseg++] = std::span<const std::uint8_t>(q + boff, take);
                len += take;
                boff += take;
                if (boff < buffers[bi].size()) {
                    break;  // record full
                }
                ++bi;
                boff = 0;
            }
        }
        try {
            out_len_ += records_->seal_data(std::span<const std::span<const std::uint8_t>>(segs, nseg),
                                            out_.data() + out_len_);
        } catch (const std::exception&) {
            r.ec = transport_errc::tls_failed;  // the AEAD failed (OpenSSL out of memory)
            return r;
        }
        r.n += len;
    }
    flush_out(r);
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
        (*fn)(start_records());
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
    } else if (r.ec == transport_errc::closed && SSL_is_server(ssl_) == 0) {
        // A plaintext peer closes on our ClientHello. (A client that closes on a server
        // has only left: see ssl_result.)
        r.ec = transport_errc::plaintext_mismatch;
    } else if (SSL_is_server(ssl_) != 0 && (r.ec == std::errc::connection_reset || r.ec == std::errc::broken_pipe)) {
        r.ec = transport_errc::closed;  // left with our reply unread: the kernel reset it
    }
    (*fn)(r.ec ? r.ec : make_error_code(transport_errc::tls_failed));
}

std::error_code byte_stream::start_records() {
    if (SSL_has_pending(ssl_) == 1) {
        return transport_errc::tls_failed;  // OpenSSL read past the handshake: cannot happen without read-ahead
    }
    tls_suite suite{};
    tls_traffic_secrets secrets;
    if (!tls_take_traffic_secrets(ssl_, suite, secrets)) {
        return transport_errc::tls_failed;
    }
    try {
        records_ = std::make_unique<tls13_records>(suite, secrets, SSL_is_server(ssl_) == 0, aead_backend::automatic);
    } catch (const std::exception&) {
        return transport_errc::tls_failed;
    }
    out_.allocate(out_capacity);
    in_.allocate(in_capacity);
    plain_.allocate(tls13_records::max_plain + 256);
    return {};
}

void byte_stream::shutdown_send() {
    if (!socket_.is_open() || shut_) {
        return;
    }
    if (records_ && out_off_ == out_len_) {
        // Best effort close_notify; never waits.
        std::uint8_t alert[2 + tls13_records::overhead];
        std::size_t n = records_->seal_close_notify(alert);
        std::error_code ignored;
        count_sent(socket_.write_some(asio::buffer(alert, n), ignored));
    }
    shut_ = true;
    std::error_code ec;
    socket_.shutdown(asio::socket_base::shutdown_send, ec);
}

void byte_stream::close() {
    if (!socket_.is_open()) {
        return;
    }
    shutdown_send();
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
        std::error_code ec;
        asio::ip::make_address_v6(host, ec);
        if (ec) {
            return false;  // "[::g]:P" was dialed as a host name; "[127.0.0.1]:P" as IPv4
        }
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

std::string join_host_port(const std::string& host, const std::string& port) {
    return host.find(':') != std::string::npos ? "[" + host + "]:" + port : host + ":" + port;
}

std::string format_endpoint(const asio::ip::tcp::endpoint& ep) {
    if (ep.address().is_v6()) {
        return "[" + ep.address().to_string() + "]:" + std::to_string(ep.port());
    }
    return ep.address().to_string() + ":" + std::to_string(ep.port());
}

namespace {

// After a failed handshake the peer's last flight (its certificate, Finished, and often its
// first frames) may still be unread. Closing then sends a reset, which can overtake the
// alert that says why. So the sending side is shut (the alert has gone out already), what
// arrives is read and dropped until the peer closes, and the socket closes at the latest
// after `linger` or `budget` bytes, whichever comes first.
struct handshake_drain : std::enable_shared_from_this<handshake_drain> {
    static constexpr std::chrono::seconds linger{2};
    static constexpr std::size_t budget = 256 * 1024;

    explicit handshake_drain(std::unique_ptr<byte_stream> s)
        : stream(std::move(s)), timer(stream->socket().get_executor()) {}

    void start() {
        stream->shutdown_send();
        timer.expires_after(linger);
        timer.async_wait([self = shared_from_this()](std::error_code ec) {
            if (!ec) {
                self->stream->close();
            }
        });
        read();
    }

    void read() {
        stream->socket().async_read_some(asio::buffer(buf), [self = shared_from_this()](std::error_code ec, std::size_t n) {
            self->drained += n;
            if (ec || self->drained >= budget) {
                self->timer.cancel();
                self->stream->close();
                return;
            }
            self->read();
        });
    }

    std::unique_ptr<byte_stream> stream;
    asio::steady_timer timer;
    std::array<std::uint8_t, 16 * 1024> buf{};
    std::size_t drained = 0;
};

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
    bool evicted = false;
    bool accepting = false;  // the server side, which drains a refused client's last flight

    void finish(std::error_code ec) {
        if (done) {
            return;
        }
        done = true;
        timer.cancel();
        if (timed_out) {
            ec = transport_errc::timeout;
        } else if (evicted) {
            ec = transport_errc::evicted;
        }
        if (ec) {
            if (stream && accepting && !timed_out && !evicted && stream->socket().is_open()) {
                std::make_shared<handshake_drain>(std::move(stream))->start();
            } else if (stream) {
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

// Stops the operation's pending steps; they complete with an error and finish() reports
// the reason set before (timed_out or evicted).
void abort_op(establish_op& op) {
    std::error_code ignored;
    op.resolver.cancel();
    op.socket.close(ignored);
    if (op.stream) {
        op.stream->close();
    }
}

void arm_timer(const std::shared_ptr<establish_op>& op, std::chrono::milliseconds timeout) {
    op->timer.expires_after(timeout);
    op->timer.async_wait([op](std::error_code ec) {
        if (ec || op->done) {
            return;
        }
        op->timed_out = true;
        abort_op(*op);
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
    // An address given as one (the usual case: a trusted peer's, or what discovery saw) is
    // dialed at once: the resolver would start a thread of its own for getaddrinfo and
    // hand its answer back through it, on the way to every first connection.
    std::error_code addr_ec;
    asio::ip::address address = asio::ip::make_address(opts.host, addr_ec);
    std::uint16_t port = 0;
    const char* port_end = opts.port.data() + opts.port.size();
    const std::from_chars_result parsed = std::from_chars(opts.port.data(), port_end, port);
    auto connected = [op, tls, tuning = opts.tuning](std::error_code ec) {
        if (ec) {
            op->finish(ec);
            return;
        }
        start_stream(op, tls, tuning);
    };
    if (!addr_ec && !opts.port.empty() && parsed.ec == std::errc{} && parsed.ptr == port_end) {
        op->socket.async_connect(asio::ip::tcp::endpoint(address, port), std::move(connected));
        return;
    }
    op->resolver.async_resolve(
        opts.host, opts.port, asio::ip::resolver_base::numeric_service,
        [op, connected = std::move(connected)](std::error_code ec, asio::ip::tcp::resolver::results_type results) {
            if (ec || results.empty()) {
                op->finish(op->timed_out ? ec : make_error_code(transport_errc::resolve_failed));
                return;
            }
            asio::async_connect(op->socket, results,
                                [connected](std::error_code ec, const asio::ip::tcp::endpoint&) { connected(ec); });
        });
}

std::function<void()> async_accept_stream(asio::io_context& io, const tls_context* tls, asio::ip::tcp::socket socket,
                                          const socket_tuning& tuning, std::chrono::milliseconds timeout,
                                          std::unique_ptr<tls_peer_check> check,
                                          std::function<void(std::error_code, std::unique_ptr<byte_stream>)> fn) {
    auto op = std::make_shared<establish_op>(io);
    op->socket = std::move(socket);
    op->accepting = true;
    op->check = std::move(check);
    op->fn = std::move(fn);
    arm_timer(op, timeout);
    start_stream(op, tls, tuning);
    return [weak = std::weak_ptr<establish_op>(op)] {
        if (auto op = weak.lock(); op && !op->done && !op->timed_out) {
            op->evicted = true;
            abort_op(*op);
        }
    };
}

std::error_code open_listener(asio::ip::tcp::acceptor& acceptor, const std::string& address, std::string& error) {
    std::string host;
    std::string port;
    if (!split_host_port(address, host, port)) {
        error = "bad listen address \"" + address + "\" (expected HOST:PORT or [V6]:PORT)";
        return std::make_error_code(std::errc::invalid_argument);
    }
    std::error_code ec;
    asio::ip::tcp::resolver resolver(acceptor.get_executor());
    auto results = resolver.resolve(host, port, asio::ip::resolver_base::passive | asio::ip::resolver_base::numeric_service, ec);
    if (ec || results.empty()) {
        error = "cannot resolve listen address " + address + ": " + ec.message();
        // No such host (256.1.1.1 too) is a mistake in the address, as a malformed one is
        // (exit 1); a name server that did not answer is not.
        bool bad = !ec || ec == asio::error::host_not_found || ec == asio::error::service_not_found;
        return bad ? std::make_error_code(std::errc::invalid_argument) : ec;
    }
    asio::ip::tcp::endpoint ep = results.begin()->endpoint();
    acceptor.open(ep.protocol(), ec);
    if (!ec) {
        acceptor.set_option(asio::socket_base::reuse_address(true), ec);
    }
    if (!ec && ep.address().is_v6()) {
        // [::]:PORT is IPv6 only, whatever net.ipv6.bindv6only says: a node may listen on
        // 0.0.0.0:PORT beside it.
        acceptor.set_option(asio::ip::v6_only(true), ec);
    }
    if (!ec) {
        acceptor.bind(ep, ec);
    }
    if (!ec) {
        acceptor.listen(asio::socket_base::max_listen_connections, ec);
    }
    if (ec) {
        error = "cannot listen on " + address + ": " + ec.message();
        std::error_code ignored;
        acceptor.close(ignored);
    }
    return ec;
}

}  // namespace ferry
