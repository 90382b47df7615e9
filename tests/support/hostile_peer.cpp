#include "tests/support/hostile_peer.hpp"

#include <arpa/inet.h>
#include <netdb.h>
#include <netinet/in.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <csignal>
#include <cstring>
#include <memory>
#include <random>
#include <stdexcept>

#include "protocol/digest.hpp"
#include "protocol/types.hpp"
#include "transport/openssl_util.hpp"
#include "transport/tls.hpp"

namespace ferry::test {

namespace {

using steady = std::chrono::steady_clock;

[[noreturn]] void fail(const std::string& what) {
    throw std::runtime_error("hostile_peer: " + what + ": " + tls_error_string());
}

// A minimal self-signed certificate for `key` with subject CN `cn` (no extensions: a node
// must not care what the certificate says, only which key it carries).
tls_credentials self_signed(EVP_PKEY* key, const std::string& cn, const EVP_MD* md) {
    x509_ptr cert(X509_new());
    if (!cert || X509_set_version(cert.get(), X509_VERSION_3) != 1 ||
        ASN1_INTEGER_set(X509_get_serialNumber(cert.get()), 1) != 1 ||
        X509_gmtime_adj(X509_getm_notBefore(cert.get()), -3600) == nullptr ||
        X509_gmtime_adj(X509_getm_notAfter(cert.get()), 3600) == nullptr) {
        fail("cannot make a certificate");
    }
    X509_NAME* name = X509_get_subject_name(cert.get());
    if (X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC, reinterpret_cast<const unsigned char*>(cn.c_str()), -1, -1,
                                   0) != 1 ||
        X509_set_issuer_name(cert.get(), name) != 1 || X509_set_pubkey(cert.get(), key) != 1 ||
        X509_sign(cert.get(), key, md) <= 0) {
        fail("cannot sign a certificate");
    }
    std::optional<tls_credentials> pem = encode_pem_credentials(cert.get(), key);
    if (!pem) {
        fail("cannot encode PEM");
    }
    return *pem;
}

void append_varint(std::uint64_t v, std::vector<std::uint8_t>& out) {
    while (v >= 0x80) {
        out.push_back(static_cast<std::uint8_t>(v | 0x80));
        v >>= 7;
    }
    out.push_back(static_cast<std::uint8_t>(v));
}

// Writing to a connection the node has closed must fail the write, not kill the test.
void ignore_sigpipe() {
    static const bool once = [] {
        std::signal(SIGPIPE, SIG_IGN);
        return true;
    }();
    (void)once;
}

std::string endpoint_text(const sockaddr_storage& ss) {
    char host[INET6_ADDRSTRLEN] = {};
    if (ss.ss_family == AF_INET6) {
        const auto* a = reinterpret_cast<const sockaddr_in6*>(&ss);
        ::inet_ntop(AF_INET6, &a->sin6_addr, host, sizeof(host));
        return "[" + std::string(host) + "]:" + std::to_string(ntohs(a->sin6_port));
    }
    const auto* a = reinterpret_cast<const sockaddr_in*>(&ss);
    ::inet_ntop(AF_INET, &a->sin_addr, host, sizeof(host));
    return std::string(host) + ":" + std::to_string(ntohs(a->sin_port));
}

}  // namespace

tls_credentials rsa_credentials(const std::string& cn) {
    pkey_ptr key(EVP_PKEY_Q_keygen(nullptr, nullptr, "RSA", static_cast<std::size_t>(2048)));
    if (!key) {
        fail("RSA key generation failed");
    }
    return self_signed(key.get(), cn, EVP_sha256());
}

tls_credentials ed25519_credentials_claiming(const std::string& cn) {
    pkey_ptr key(EVP_PKEY_Q_keygen(nullptr, nullptr, "ED25519"));
    if (!key) {
        fail("Ed25519 key generation failed");
    }
    return self_signed(key.get(), cn, nullptr);
}

std::string id_of(const tls_credentials& creds) {
    x509_ptr cert = read_pem_certificate(creds.cert_pem);
    return node_id_from_cert(cert.get());
}

std::vector<std::uint8_t> encode_frame(const wire::Header& header, std::span<const std::uint8_t> payload) {
    std::string bytes = header.SerializeAsString();
    std::vector<std::uint8_t> out;
    out.reserve(5 + bytes.size() + payload.size());
    append_varint(bytes.size(), out);
    out.insert(out.end(), bytes.begin(), bytes.end());
    out.insert(out.end(), payload.begin(), payload.end());
    return out;
}

wire::Header chunk_header(std::uint32_t file, std::uint32_t index, std::span<const std::uint8_t> raw) {
    wire::Header h;
    wire::Chunk* c = h.mutable_chunk();
    c->set_file_id(file);
    c->set_index(index);
    c->set_raw_len(static_cast<std::uint32_t>(raw.size()));
    c->set_codec(wire::CODEC_RAW);
    digest128 d = hash_chunk(raw);
    c->set_hash_lo(d.lo);
    c->set_hash_hi(d.hi);
    h.set_payload_len(static_cast<std::uint32_t>(raw.size()));
    return h;
}

const wire::Error* node_answer::error() const {
    for (const wire::Header& h : frames) {
        if (h.body_case() == wire::Header::kError) {
            return &h.error();
        }
    }
    return nullptr;
}

std::size_t node_answer::count(wire::Header::BodyCase kind) const {
    return static_cast<std::size_t>(
        std::count_if(frames.begin(), frames.end(), [kind](const wire::Header& h) { return h.body_case() == kind; }));
}

hostile_peer::hostile_peer(std::string address, hostile_tls tls, std::chrono::milliseconds timeout)
    : address_(std::move(address)), tls_(std::move(tls)), timeout_(timeout) {
    ignore_sigpipe();
}

hostile_peer::~hostile_peer() {
    if (ssl_ != nullptr) {
        SSL_free(ssl_);
    }
    if (ctx_ != nullptr) {
        SSL_CTX_free(ctx_);
    }
    if (fd_ >= 0) {
        ::close(fd_);
    }
}

bool hostile_peer::connect() {
    std::size_t colon = address_.rfind(':');
    if (colon == std::string::npos) {
        error_ = "bad address " + address_;
        return false;
    }
    std::string host = address_.substr(0, colon);
    if (host.size() >= 2 && host.front() == '[' && host.back() == ']') {
        host = host.substr(1, host.size() - 2);
    }
    std::string port = address_.substr(colon + 1);
    addrinfo hints{};
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_NUMERICHOST | AI_NUMERICSERV;
    addrinfo* found = nullptr;
    if (::getaddrinfo(host.c_str(), port.c_str(), &hints, &found) != 0 || found == nullptr) {
        error_ = "cannot resolve " + address_;
        return false;
    }
    std::unique_ptr<addrinfo, decltype(&::freeaddrinfo)> res(found, ::freeaddrinfo);
    fd_ = ::socket(res->ai_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd_ < 0) {
        error_ = std::string("socket: ") + std::strerror(errno);
        return false;
    }
    timeval tv{};
    tv.tv_sec = static_cast<time_t>(timeout_.count() / 1000);
    tv.tv_usec = static_cast<suseconds_t>((timeout_.count() % 1000) * 1000);
    ::setsockopt(fd_, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    ::setsockopt(fd_, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
    if (::connect(fd_, res->ai_addr, res->ai_addrlen) != 0) {
        error_ = std::string("connect: ") + std::strerror(errno);
        return false;
    }
    sockaddr_storage local{};
    socklen_t len = sizeof(local);
    if (::getsockname(fd_, reinterpret_cast<sockaddr*>(&local), &len) == 0) {
        local_ = endpoint_text(local);
    }
    if (!tls_.enabled) {
        return true;
    }

    ERR_clear_error();
    ctx_ = SSL_CTX_new(TLS_client_method());
    if (ctx_ == nullptr || SSL_CTX_set_min_proto_version(ctx_, TLS1_2_VERSION) != 1 ||
        SSL_CTX_set_max_proto_version(ctx_, tls_.max_version) != 1) {
        error_ = "SSL_CTX setup: " + tls_error_string();
        return false;
    }
    SSL_CTX_set_verify(ctx_, SSL_VERIFY_NONE, nullptr);  // the node's identity is not what is tested
    if (tls_.credentials) {
        x509_ptr cert = read_pem_certificate(tls_.credentials->cert_pem);
        pkey_ptr key = read_pem_private_key(tls_.credentials->key_pem);
        if (!cert || !key || SSL_CTX_use_certificate(ctx_, cert.get()) != 1 ||
            SSL_CTX_use_PrivateKey(ctx_, key.get()) != 1) {
            error_ = "credentials: " + tls_error_string();
            return false;
        }
        for (const std::string& pem : tls_.extra_chain_pem) {
            x509_ptr extra = read_pem_certificate(pem);
            if (!extra || SSL_CTX_add1_chain_cert(ctx_, extra.get()) != 1) {
                error_ = "chain: " + tls_error_string();
                return false;
            }
        }
    }
    ssl_ = SSL_new(ctx_);
    if (ssl_ == nullptr || SSL_set_fd(ssl_, fd_) != 1) {
        error_ = "SSL_new: " + tls_error_string();
        return false;
    }
    int rc = SSL_connect(ssl_);
    if (rc != 1) {
        int err = SSL_get_error(ssl_, rc);
        error_ = "TLS handshake failed (SSL error " + std::to_string(err) + "): " + tls_error_string();
        return false;
    }
    return true;
}

bool hostile_peer::write_all(const std::uint8_t* data, std::size_t len) {
    if (fd_ < 0) {
        return false;
    }
    std::size_t done = 0;
    // Bounded: every round writes something or fails (blocking socket with SO_SNDTIMEO).
    while (done < len) {
        std::size_t n = std::min<std::size_t>(len - done, 1 << 20);
        if (ssl_ != nullptr) {
            ERR_clear_error();
            int rc = SSL_write(ssl_, data + done, static_cast<int>(n));
            if (rc <= 0) {
                error_ = "write failed: " + tls_error_string();
                return false;
            }
            done += static_cast<std::size_t>(rc);
        } else {
            ssize_t rc = ::send(fd_, data + done, n, MSG_NOSIGNAL);
            if (rc <= 0) {
                error_ = std::string("write failed: ") + std::strerror(errno);
                return false;
            }
            done += static_cast<std::size_t>(rc);
        }
    }
    return true;
}

bool hostile_peer::send_raw(std::span<const std::uint8_t> bytes) { return write_all(bytes.data(), bytes.size()); }

bool hostile_peer::send_raw(std::string_view bytes) {
    return write_all(reinterpret_cast<const std::uint8_t*>(bytes.data()), bytes.size());
}

bool hostile_peer::send_frame(wire::Header header, std::span<const std::uint8_t> payload) {
    header.set_payload_len(static_cast<std::uint32_t>(payload.size()));
    return send_raw(encode_frame(header, payload));
}

bool hostile_peer::fill(steady::time_point deadline) {
    if (fd_ < 0) {
        return false;
    }
    if (eof_) {
        end_.closed = true;  // reported again to every later read
        end_.detail = closed_detail_;
        return false;
    }
    std::array<std::uint8_t, 64 * 1024> buf{};
    if (ssl_ == nullptr || SSL_pending(ssl_) == 0) {
        auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - steady::now());
        pollfd p{fd_, POLLIN, 0};
        if (left.count() <= 0 || ::poll(&p, 1, static_cast<int>(left.count())) <= 0) {
            end_.timed_out = true;
            end_.detail = "nothing within the timeout";
            return false;
        }
    }
    if (ssl_ != nullptr) {
        ERR_clear_error();
        int rc = SSL_read(ssl_, buf.data(), static_cast<int>(buf.size()));
        if (rc > 0) {
            in_.insert(in_.end(), buf.begin(), buf.begin() + rc);
            return true;
        }
        int err = SSL_get_error(ssl_, rc);
        if (err == SSL_ERROR_WANT_READ) {
            return true;  // a record without data (the node's key update, say): read again
        }
        eof_ = true;
        end_.closed = true;
        if (err == SSL_ERROR_ZERO_RETURN) {
            end_.detail = "close_notify";
        } else if (err == SSL_ERROR_SYSCALL) {
            end_.detail = errno == 0 ? "EOF" : std::strerror(errno);
        } else {
            end_.detail = "TLS alert or error: " + tls_error_string();
        }
        closed_detail_ = end_.detail;
        return false;
    }
    ssize_t n = ::recv(fd_, buf.data(), buf.size(), 0);
    if (n > 0) {
        in_.insert(in_.end(), buf.begin(), buf.begin() + n);
        return true;
    }
    eof_ = true;
    end_.closed = true;
    end_.detail = n == 0 ? "EOF" : std::strerror(errno);
    closed_detail_ = end_.detail;
    return false;
}

std::optional<wire::Header> hostile_peer::read_frame() {
    auto deadline = steady::now() + timeout_;
    end_ = {};
    // Bounded: each round decodes what arrived or reads once; fill() fails at the deadline.
    for (int round = 0; round < 100'000; ++round) {
        if (!ready_.empty()) {
            wire::Header h = std::move(ready_.front());
            ready_.erase(ready_.begin());
            return h;
        }
        while (in_pos_ < in_.size()) {
            decode_result d = decoder_.feed(std::span<const std::uint8_t>(in_).subspan(in_pos_));
            in_pos_ += d.consumed;
            if (d.event == decode_event::error) {
                eof_ = true;
                end_.closed = true;
                end_.detail = "the node sent a malformed frame: " + d.ec.message();
                closed_detail_ = end_.detail;
                return std::nullopt;
            }
            if (d.event == decode_event::need_more) {
                break;
            }
            if (d.frame_complete) {
                ready_.push_back(decoder_.header());
            }
        }
        if (in_pos_ == in_.size()) {
            in_.clear();
            in_pos_ = 0;
        }
        if (ready_.empty() && !fill(deadline)) {
            return std::nullopt;
        }
    }
    return std::nullopt;
}

node_answer hostile_peer::read_until_closed() {
    node_answer out;
    auto deadline = steady::now() + timeout_;
    if (ssl_ == nullptr) {
        end_ = {};
        // Bounded: each round reads once; fill() fails at the deadline or the close.
        for (int round = 0; round < 100'000 && fill(deadline); ++round) {
            out.raw_bytes += in_.size();
            in_.clear();
        }
        out.closed = end_.closed;
        out.timed_out = !end_.closed;
        out.detail = end_.detail;
        end_ = out;
        return out;
    }
    for (int i = 0; i < 100'000 && steady::now() < deadline; ++i) {
        std::optional<wire::Header> h = read_frame();
        if (!h) {
            break;
        }
        out.frames.push_back(std::move(*h));
    }
    out.closed = end_.closed;
    out.timed_out = !end_.closed;
    out.detail = end_.detail;
    end_ = out;
    return out;
}

bool hostile_peer::hello(std::uint32_t conn_count) {
    std::string session(16, '\0');
    std::random_device rd;
    for (char& c : session) {
        c = static_cast<char>(rd());
    }
    wire::Header h;
    wire::Hello* hello = h.mutable_hello();
    hello->set_version(protocol_version);
    hello->set_session_id(session);
    hello->set_conn_index(0);
    hello->set_conn_count(conn_count);
    hello->set_plaintext(!tls_.enabled);
    hello->set_agent("hostile-peer/0");
    if (!send_frame(h)) {
        return false;
    }
    std::optional<wire::Header> reply = read_frame();
    if (!reply || reply->body_case() != wire::Header::kHello) {
        error_ = reply ? "expected the node's Hello, got frame " + std::to_string(reply->body_case())
                       : "no Hello from the node: " + end_.detail;
        if (reply) {
            ready_.insert(ready_.begin(), std::move(*reply));  // the next read sees it (an Error, say)
        }
        return false;
    }
    return true;
}

std::optional<wire::Accept> hostile_peer::offer(const wire::Offer& offer) {
    wire::Header h;
    *h.mutable_offer() = offer;
    if (!send_frame(h)) {
        return std::nullopt;
    }
    std::optional<wire::Header> reply = read_frame();
    if (reply && reply->body_case() == wire::Header::kAccept) {
        return reply->accept();
    }
    if (reply) {
        ready_.insert(ready_.begin(), std::move(*reply));  // read_until_closed() sees it first
    }
    read_until_closed();
    return std::nullopt;
}

void hostile_peer::close() {
    if (fd_ >= 0) {
        ::close(fd_);
        fd_ = -1;
    }
}

void hostile_peer::shutdown_write() {
    if (ssl_ != nullptr) {
        SSL_shutdown(ssl_);
    }
    if (fd_ >= 0) {
        ::shutdown(fd_, SHUT_WR);
    }
}

}  // namespace ferry::test
