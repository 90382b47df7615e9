// TLS 1.3 mutual authentication by node ID, over a non-blocking socketpair. Both ends are
// driven from this thread by alternating SSL_do_handshake calls (bounded, no sleeping).
#include "transport/tls.hpp"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <memory>
#include <vector>
#include <optional>
#include <stdexcept>
#include <string>

#include "transport/identity.hpp"
#include "transport/openssl_util.hpp"
#include "transport/tls_records.hpp"

namespace ferry {
namespace {

struct ssl_deleter {
    void operator()(SSL* s) const { SSL_free(s); }
};
struct ctx_deleter {
    void operator()(SSL_CTX* c) const { SSL_CTX_free(c); }
};
struct x509_deleter {
    void operator()(X509* x) const { X509_free(x); }
};

std::string id_of(const tls_credentials& creds) {
    BIO* bio = BIO_new_mem_buf(creds.cert_pem.data(), static_cast<int>(creds.cert_pem.size()));
    std::unique_ptr<X509, x509_deleter> cert(PEM_read_bio_X509(bio, nullptr, nullptr, nullptr));
    BIO_free(bio);
    return node_id_from_cert(cert.get());
}

// A connected, non-blocking AF_UNIX stream pair, closed on destruction.
class socket_pair {
  public:
    socket_pair() {
        if (::socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, fds_) != 0) {
            throw std::runtime_error("socketpair failed");
        }
    }
    socket_pair(const socket_pair&) = delete;
    socket_pair& operator=(const socket_pair&) = delete;
    ~socket_pair() {
        ::close(fds_[0]);
        ::close(fds_[1]);
    }
    int first() const { return fds_[0]; }
    int second() const { return fds_[1]; }

  private:
    int fds_[2] = {-1, -1};
};

enum class hs_state { running, done, failed };

// One end of a connection. Not movable: the SSL holds a pointer to `check`.
struct endpoint {
    endpoint() = default;
    endpoint(const endpoint&) = delete;
    endpoint& operator=(const endpoint&) = delete;

    void attach(const tls_context& ctx, int fd) {
        ssl.reset(ctx.new_ssl(&check));
        ASSERT_EQ(SSL_set_fd(ssl.get(), fd), 1);
    }

    void step() {
        if (state != hs_state::running) {
            return;
        }
        ERR_clear_error();
        int rc = SSL_do_handshake(ssl.get());
        if (rc == 1) {
            state = hs_state::done;
            return;
        }
        int err = SSL_get_error(ssl.get(), rc);
        if (err == SSL_ERROR_WANT_READ || err == SSL_ERROR_WANT_WRITE) {
            return;
        }
        state = hs_state::failed;
        error = tls_error_string();
    }

    // True if the connection is unusable: the handshake failed, or (TLS 1.3 client whose
    // certificate the server refused after the client finished) the next read fails.
    bool refused() {
        if (state == hs_state::failed) {
            return true;
        }
        if (state != hs_state::done) {
            return false;
        }
        char byte = 0;
        ERR_clear_error();
        int rc = SSL_read(ssl.get(), &byte, 1);
        int err = SSL_get_error(ssl.get(), rc);
        error = tls_error_string();
        return rc <= 0 && err != SSL_ERROR_WANT_READ && err != SSL_ERROR_WANT_WRITE;
    }

    std::unique_ptr<SSL, ssl_deleter> ssl;
    tls_peer_check check;
    hs_state state = hs_state::running;
    std::string error;
};

// Alternates the two ends until neither makes progress or both are finished. Each round
// trip of the handshake needs a couple of steps; 100 is far more than enough.
void handshake(endpoint& client, endpoint& server) {
    for (int i = 0; i < 100; ++i) {
        if (client.state != hs_state::running && server.state != hs_state::running) {
            return;
        }
        client.step();
        server.step();
    }
}

bool write_all(SSL* ssl, std::string_view data) {
    std::size_t done = 0;
    for (int i = 0; i < 100 && done < data.size(); ++i) {
        int rc = SSL_write(ssl, data.data() + done, static_cast<int>(data.size() - done));
        if (rc > 0) {
            done += static_cast<std::size_t>(rc);
        } else if (SSL_get_error(ssl, rc) != SSL_ERROR_WANT_WRITE) {
            return false;
        }
    }
    return done == data.size();
}

std::string read_some(SSL* ssl, std::size_t want) {
    std::string out;
    char buf[4096];
    for (int i = 0; i < 100 && out.size() < want; ++i) {
        int rc = SSL_read(ssl, buf, sizeof(buf));
        if (rc > 0) {
            out.append(buf, static_cast<std::size_t>(rc));
        } else if (SSL_get_error(ssl, rc) != SSL_ERROR_WANT_READ) {
            break;
        }
    }
    return out;
}

class tls_test : public ::testing::Test {
  protected:
    static void SetUpTestSuite() {
        server_creds_ = new tls_credentials(generate_credentials());
        client_creds_ = new tls_credentials(generate_credentials());
    }
    static void TearDownTestSuite() {
        delete server_creds_;
        delete client_creds_;
    }

    static tls_credentials* server_creds_;
    static tls_credentials* client_creds_;
};

tls_credentials* tls_test::server_creds_ = nullptr;
tls_credentials* tls_test::client_creds_ = nullptr;

TEST_F(tls_test, context_settings) {
    tls_context server(*server_creds_, tls_role::server);
    tls_context client(*client_creds_, tls_role::client);
    EXPECT_EQ(server.id(), id_of(*server_creds_));
    EXPECT_EQ(client.id(), id_of(*client_creds_));
    for (const tls_context* c : {&server, &client}) {
        SSL_CTX* ctx = c->native();
        EXPECT_EQ(SSL_CTX_get_min_proto_version(ctx), TLS1_3_VERSION);
        EXPECT_EQ(SSL_CTX_get_max_proto_version(ctx), TLS1_3_VERSION);
        EXPECT_EQ(SSL_CTX_get_num_tickets(ctx), 0u);
        EXPECT_NE(SSL_CTX_get_options(ctx) & SSL_OP_NO_RENEGOTIATION, 0u);
        // OpenSSL must not read past the handshake (ferry's record layer takes over), and
        // the traffic secrets reach it through the key log callback.
        EXPECT_EQ(SSL_CTX_get_read_ahead(ctx), 0);
        EXPECT_NE(SSL_CTX_get_keylog_callback(ctx), nullptr);
    }
    EXPECT_EQ(SSL_CTX_get_verify_mode(server.native()), SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT);
    EXPECT_EQ(SSL_CTX_get_verify_mode(client.native()), SSL_VERIFY_PEER);
}

TEST_F(tls_test, bad_credentials_throw) {
    EXPECT_THROW(tls_context(tls_credentials{"not a cert", server_creds_->key_pem}, tls_role::server),
                 std::runtime_error);
    EXPECT_THROW(tls_context(tls_credentials{server_creds_->cert_pem, "not a key"}, tls_role::server),
                 std::runtime_error);
    // Key of one node with the certificate of another.
    try {
        tls_context ctx(tls_credentials{server_creds_->cert_pem, client_creds_->key_pem}, tls_role::client);
        FAIL() << "mismatched key and certificate were accepted";
    } catch (const std::runtime_error& e) {
        EXPECT_NE(std::string(e.what()).find("does not match"), std::string::npos) << e.what();
    }
}

TEST_F(tls_test, both_allowed_handshake_and_round_trip) {
    tls_context server_ctx(*server_creds_, tls_role::server);
    tls_context client_ctx(*client_creds_, tls_role::client);
    socket_pair sp;
    endpoint client;
    endpoint server;
    std::string client_saw;
    std::string server_saw;
    client.check.allow = [&](const std::string& id) {
        client_saw = id;
        return true;
    };
    server.check.allow = [&](const std::string& id) {
        server_saw = id;
        return true;
    };
    client.attach(client_ctx, sp.first());
    server.attach(server_ctx, sp.second());

    handshake(client, server);
    ASSERT_EQ(client.state, hs_state::done) << client.error;
    ASSERT_EQ(server.state, hs_state::done) << server.error;

    EXPECT_EQ(client.check.peer_id, server_ctx.id());
    EXPECT_EQ(server.check.peer_id, client_ctx.id());
    EXPECT_EQ(client_saw, server_ctx.id());
    EXPECT_EQ(server_saw, client_ctx.id());
    EXPECT_TRUE(client.check.reason.empty());
    EXPECT_TRUE(server.check.reason.empty());
    EXPECT_EQ(SSL_version(client.ssl.get()), TLS1_3_VERSION);
    EXPECT_STREQ(SSL_get_version(server.ssl.get()), "TLSv1.3");
    EXPECT_STREQ(SSL_get_cipher_name(client.ssl.get()), "TLS_AES_128_GCM_SHA256");
    EXPECT_EQ(SSL_get_verify_result(client.ssl.get()), X509_V_OK);
    EXPECT_EQ(SSL_get_verify_result(server.ssl.get()), X509_V_OK);
    EXPECT_FALSE(SSL_session_reused(client.ssl.get()));

    ASSERT_TRUE(write_all(client.ssl.get(), "hello from the client"));
    EXPECT_EQ(read_some(server.ssl.get(), 21), "hello from the client");
    ASSERT_TRUE(write_all(server.ssl.get(), "pong"));
    EXPECT_EQ(read_some(client.ssl.get(), 4), "pong");
}

TEST_F(tls_test, empty_allow_accepts_any_peer) {
    tls_context server_ctx(*server_creds_, tls_role::server);
    tls_context client_ctx(*client_creds_, tls_role::client);
    socket_pair sp;
    endpoint client;
    endpoint server;
    client.attach(client_ctx, sp.first());
    server.attach(server_ctx, sp.second());
    handshake(client, server);
    ASSERT_EQ(client.state, hs_state::done) << client.error;
    ASSERT_EQ(server.state, hs_state::done) << server.error;
    EXPECT_EQ(client.check.peer_id, server_ctx.id());
    EXPECT_EQ(server.check.peer_id, client_ctx.id());
}

TEST_F(tls_test, server_refuses_untrusted_client) {
    tls_context server_ctx(*server_creds_, tls_role::server);
    tls_context client_ctx(*client_creds_, tls_role::client);
    socket_pair sp;
    endpoint client;
    endpoint server;
    server.check.allow = [](const std::string&) { return false; };
    client.attach(client_ctx, sp.first());
    server.attach(server_ctx, sp.second());

    handshake(client, server);
    EXPECT_EQ(server.state, hs_state::failed);
    EXPECT_EQ(server.check.peer_id, client_ctx.id());
    EXPECT_NE(server.check.reason.find(format_node_id(client_ctx.id())), std::string::npos) << server.check.reason;
    EXPECT_NE(server.check.reason.find("not trusted"), std::string::npos) << server.check.reason;
    EXPECT_EQ(SSL_get_verify_result(server.ssl.get()), X509_V_ERR_APPLICATION_VERIFICATION);
    // TLS 1.3: the client may have finished already; its next read gets the alert.
    EXPECT_TRUE(client.refused()) << client.error;
}

TEST_F(tls_test, client_refuses_unexpected_server_id) {
    tls_context server_ctx(*server_creds_, tls_role::server);
    tls_context client_ctx(*client_creds_, tls_role::client);
    const std::string expected = id_of(generate_credentials());
    ASSERT_NE(expected, server_ctx.id());
    socket_pair sp;
    endpoint client;
    endpoint server;
    client.check.allow = [&](const std::string& id) {
        if (id != expected) {
            client.check.reason = "peer " + format_node_id(id) + " is not " + format_node_id(expected);
            return false;
        }
        return true;
    };
    client.attach(client_ctx, sp.first());
    server.attach(server_ctx, sp.second());

    handshake(client, server);
    EXPECT_EQ(client.state, hs_state::failed);
    EXPECT_EQ(client.check.peer_id, server_ctx.id());
    // A reason set by allow() is kept.
    EXPECT_EQ(client.check.reason, "peer " + format_node_id(server_ctx.id()) + " is not " + format_node_id(expected));
    EXPECT_TRUE(server.refused()) << server.error;
    EXPECT_TRUE(server.check.peer_id.empty());  // the client never got to send its certificate
}

TEST_F(tls_test, server_refuses_client_without_certificate) {
    tls_context server_ctx(*server_creds_, tls_role::server);
    std::unique_ptr<SSL_CTX, ctx_deleter> bare(SSL_CTX_new(TLS_client_method()));
    ASSERT_TRUE(bare);
    SSL_CTX_set_verify(bare.get(), SSL_VERIFY_NONE, nullptr);
    socket_pair sp;
    endpoint client;
    endpoint server;
    bool asked = false;
    server.check.allow = [&](const std::string&) {
        asked = true;
        return true;
    };
    client.ssl.reset(SSL_new(bare.get()));
    SSL_set_connect_state(client.ssl.get());
    ASSERT_EQ(SSL_set_fd(client.ssl.get(), sp.first()), 1);
    server.attach(server_ctx, sp.second());

    handshake(client, server);
    EXPECT_EQ(server.state, hs_state::failed);
    EXPECT_FALSE(asked);
    EXPECT_TRUE(server.check.peer_id.empty());
    EXPECT_NE(server.error.find("certificate"), std::string::npos) << server.error;
    EXPECT_TRUE(client.refused()) << client.error;
}

TEST_F(tls_test, client_refuses_certificate_chain) {
    tls_context server_ctx(*server_creds_, tls_role::server);
    tls_context client_ctx(*client_creds_, tls_role::client);
    // The server also sends another node's certificate as an intermediate.
    BIO* bio = BIO_new_mem_buf(client_creds_->cert_pem.data(), static_cast<int>(client_creds_->cert_pem.size()));
    X509* extra = PEM_read_bio_X509(bio, nullptr, nullptr, nullptr);
    BIO_free(bio);
    ASSERT_NE(extra, nullptr);
    ASSERT_EQ(SSL_CTX_add0_chain_cert(server_ctx.native(), extra), 1);

    socket_pair sp;
    endpoint client;
    endpoint server;
    client.attach(client_ctx, sp.first());
    server.attach(server_ctx, sp.second());
    handshake(client, server);
    EXPECT_EQ(client.state, hs_state::failed);
    EXPECT_NE(client.check.reason.find("chain of 2"), std::string::npos) << client.check.reason;
    EXPECT_TRUE(client.check.peer_id.empty());
    EXPECT_TRUE(server.refused());
}

TEST_F(tls_test, allow_that_throws_refuses) {
    tls_context server_ctx(*server_creds_, tls_role::server);
    tls_context client_ctx(*client_creds_, tls_role::client);
    socket_pair sp;
    endpoint client;
    endpoint server;
    server.check.allow = [](const std::string&) -> bool { throw std::runtime_error("store unavailable"); };
    client.attach(client_ctx, sp.first());
    server.attach(server_ctx, sp.second());
    handshake(client, server);
    EXPECT_EQ(server.state, hs_state::failed);
    EXPECT_NE(server.check.reason.find("store unavailable"), std::string::npos) << server.check.reason;
    EXPECT_TRUE(client.refused());
}

std::string pem_of(EVP_PKEY* key) {
    bio_ptr out(BIO_new(BIO_s_mem()));
    EXPECT_EQ(PEM_write_bio_PrivateKey(out.get(), key, nullptr, nullptr, 0, nullptr, nullptr), 1);
    return bio_to_string(out.get());
}

TEST(read_pem_private_key, takes_a_node_key_directly_and_any_other_the_generic_way) {
    ERR_clear_error();
    tls_credentials creds = generate_credentials();
    pkey_ptr fast = read_pem_private_key(creds.key_pem);
    ASSERT_TRUE(fast);
    EXPECT_EQ(ERR_peek_error(), 0u);  // nothing left on the queue
    bio_ptr in(BIO_new_mem_buf(creds.key_pem.data(), static_cast<int>(creds.key_pem.size())));
    pkey_ptr generic(PEM_read_bio_PrivateKey(in.get(), nullptr, nullptr, nullptr));
    ASSERT_TRUE(generic);
    EXPECT_EQ(EVP_PKEY_get_id(fast.get()), EVP_PKEY_ED25519);
    EXPECT_EQ(EVP_PKEY_eq(fast.get(), generic.get()), 1);
    EXPECT_EQ(pem_of(fast.get()), creds.key_pem);  // the private half too

    // Another kind of key, and one whose PKCS #8 form is not the short one.
    pkey_ptr ec(EVP_PKEY_Q_keygen(nullptr, nullptr, "EC", "P-256"));
    ASSERT_TRUE(ec);
    pkey_ptr back = read_pem_private_key(pem_of(ec.get()));
    ASSERT_TRUE(back);
    EXPECT_EQ(EVP_PKEY_get_id(back.get()), EVP_PKEY_EC);
    EXPECT_EQ(EVP_PKEY_eq(back.get(), ec.get()), 1);

    // Not a key: null, with the reason on the queue.
    ERR_clear_error();
    EXPECT_FALSE(read_pem_private_key("-----BEGIN PRIVATE KEY-----\nMAA=\n-----END PRIVATE KEY-----\n"));
    EXPECT_NE(ERR_peek_error(), 0u);
    ERR_clear_error();
    EXPECT_FALSE(read_pem_private_key("not a key"));
    EXPECT_NE(ERR_peek_error(), 0u);
    ERR_clear_error();
}

TEST(tls_error_string, drains_the_queue) {
    ERR_clear_error();
    EXPECT_EQ(tls_error_string(), "");
    ERR_raise(ERR_LIB_SSL, SSL_R_CERTIFICATE_VERIFY_FAILED);
    ERR_raise(ERR_LIB_SSL, SSL_R_NO_CERTIFICATES_RETURNED);
    std::string text = tls_error_string();
    EXPECT_NE(text.find("certificate verify failed"), std::string::npos) << text;
    EXPECT_NE(text.find("; "), std::string::npos) << text;
    EXPECT_EQ(text.find('\n'), std::string::npos);
    EXPECT_EQ(tls_error_string(), "");
}

// ---- ferry's record layer (tls_records.hpp) against OpenSSL's own ----

std::vector<std::uint8_t> unhex(std::string_view hex) {
    std::vector<std::uint8_t> out;
    for (std::size_t i = 0; i + 1 < hex.size(); i += 2) {
        out.push_back(static_cast<std::uint8_t>(std::stoi(std::string(hex.substr(i, 2)), nullptr, 16)));
    }
    return out;
}

// RFC 8448 section 3 (simple 1-RTT handshake): the server's handshake traffic keys.
TEST(tls_records, hkdf_expand_label_matches_rfc8448) {
    auto secret = unhex("b67b7d690cc16c4e75e54213cb2d37b4e9c912bcded9105d42befd59d391ad38");
    EXPECT_EQ(hkdf_expand_label(tls_suite::aes_128_gcm_sha256, secret, "key", 16),
              unhex("3fce516009c21727d0f2e4e86ee403bc"));
    EXPECT_EQ(hkdf_expand_label(tls_suite::aes_128_gcm_sha256, secret, "iv", 12), unhex("5d313eb2671276ee13000b30"));
}

TEST(tls_records, record_size_checks_the_header) {
    const std::uint8_t ok[5] = {23, 3, 3, 0x40, 0x11};  // 16384 + 1 + 16
    EXPECT_EQ(tls13_records::record_size(ok, 4), 0u);
    EXPECT_EQ(tls13_records::record_size(ok, 5), 5u + 0x4011);
    const std::uint8_t handshake[5] = {22, 3, 3, 0, 40};
    EXPECT_EQ(tls13_records::record_size(handshake, 5), SIZE_MAX);
    const std::uint8_t old_version[5] = {23, 3, 1, 0, 40};
    EXPECT_EQ(tls13_records::record_size(old_version, 5), SIZE_MAX);
    const std::uint8_t too_long[5] = {23, 3, 3, 0x41, 0x01};  // 2^14 + 256 + 1
    EXPECT_EQ(tls13_records::record_size(too_long, 5), SIZE_MAX);
    const std::uint8_t too_short[5] = {23, 3, 3, 0, 16};  // no room for the type byte
    EXPECT_EQ(tls13_records::record_size(too_short, 5), SIZE_MAX);
}

// True when ipsec-mb is built in and usable on this CPU (else its cases would silently
// test OpenSSL against itself).
bool have_ipsec_mb() { return aead_backend_name(tls_suite::aes_128_gcm_sha256, aead_backend::ipsec_mb) == "ipsec-mb"; }

TEST(tls_records, backends_agree) {
    if (!have_ipsec_mb()) {
        GTEST_SKIP() << "ipsec-mb is not built in or this CPU lacks AVX2";
    }
    std::vector<std::uint8_t> key(16, 7);
    auto a = make_record_cipher(tls_suite::aes_128_gcm_sha256, key, aead_backend::openssl);
    auto b = make_record_cipher(tls_suite::aes_128_gcm_sha256, key, aead_backend::ipsec_mb);
    std::uint8_t nonce[12] = {1, 2, 3};
    std::uint8_t aad[5] = {23, 3, 3, 0, 0};
    std::vector<std::uint8_t> msg(5000);
    for (std::size_t i = 0; i < msg.size(); ++i) {
        msg[i] = static_cast<std::uint8_t>(i * 31);
    }
    std::span<const std::uint8_t> parts[2] = {std::span(msg).first(1234), std::span(msg).subspan(1234)};
    std::vector<std::uint8_t> sealed_a(msg.size() + 16);
    std::vector<std::uint8_t> sealed_b(msg.size() + 16);
    a->seal(nonce, aad, parts, sealed_a.data());
    b->seal(nonce, aad, parts, sealed_b.data());
    EXPECT_EQ(sealed_a, sealed_b);
    auto ct = std::span(sealed_a).first(msg.size());
    const std::uint8_t* tag = sealed_a.data() + msg.size();
    for (record_cipher* c : {a.get(), b.get()}) {
        // Whole, and split so that the last byte lands in the tail.
        std::vector<std::uint8_t> opened(msg.size());
        ASSERT_TRUE(c->open(nonce, aad, ct, tag, opened.data(), msg.size(), nullptr));
        EXPECT_EQ(opened, msg);
        std::fill(opened.begin(), opened.end(), 0);
        std::uint8_t tail = 0;
        ASSERT_TRUE(c->open(nonce, aad, ct, tag, opened.data(), msg.size() - 1, &tail));
        EXPECT_TRUE(std::equal(msg.begin(), msg.end() - 1, opened.begin()));
        EXPECT_EQ(tail, msg.back());
    }
    sealed_a[100] ^= 1;
    std::vector<std::uint8_t> opened(msg.size());
    EXPECT_FALSE(a->open(nonce, aad, ct, tag, opened.data(), msg.size(), nullptr));
    EXPECT_FALSE(b->open(nonce, aad, ct, tag, opened.data(), msg.size(), nullptr));
}

bool send_fd(int fd, const std::uint8_t* p, std::size_t n) {
    for (int i = 0; i < 1000 && n > 0; ++i) {
        ssize_t w = ::write(fd, p, n);
        if (w > 0) {
            p += w;
            n -= static_cast<std::size_t>(w);
        } else if (w < 0 && errno != EAGAIN && errno != EINTR) {
            return false;
        }
    }
    return n == 0;
}

// Reads one whole record from a non-blocking fd the peer has already written to.
std::vector<std::uint8_t> read_record(int fd) {
    std::vector<std::uint8_t> rec(tls13_records::max_record);
    std::size_t have = 0;
    std::size_t want = tls13_records::header_len;
    for (int i = 0; i < 1000 && have < want; ++i) {
        ssize_t r = ::read(fd, rec.data() + have, want - have);
        if (r > 0) {
            have += static_cast<std::size_t>(r);
            if (have == tls13_records::header_len) {
                want = tls13_records::record_size(rec.data(), have);
                if (want == SIZE_MAX) {
                    return {};
                }
            }
        } else if (r == 0 || (errno != EAGAIN && errno != EINTR)) {
            return {};
        }
    }
    rec.resize(have);
    return rec;
}

struct records_case {
    const char* ciphersuite;
    aead_backend backend;
};

class tls_records_interop : public tls_test, public ::testing::WithParamInterface<records_case> {
  protected:
    // Handshakes with OpenSSL on both ends; then the client switches to ferry's records.
    void SetUp() override {
        if (GetParam().backend == aead_backend::ipsec_mb && !have_ipsec_mb()) {
            GTEST_SKIP() << "ipsec-mb is not built in or this CPU lacks AVX2";
        }
    }

    std::unique_ptr<tls13_records> connect(std::uint64_t key_update_after = tls13_records::default_key_update_after) {
        server_ctx_ = std::make_unique<tls_context>(*server_creds_, tls_role::server);
        client_ctx_ = std::make_unique<tls_context>(*client_creds_, tls_role::client);
        client_.attach(*client_ctx_, sp_.first());
        server_.attach(*server_ctx_, sp_.second());
        EXPECT_EQ(SSL_set_ciphersuites(client_.ssl.get(), GetParam().ciphersuite), 1);
        handshake(client_, server_);
        EXPECT_EQ(client_.state, hs_state::done) << client_.error;
        EXPECT_EQ(server_.state, hs_state::done) << server_.error;
        tls_suite suite{};
        tls_traffic_secrets secrets;
        EXPECT_TRUE(tls_take_traffic_secrets(client_.ssl.get(), suite, secrets));
        return std::make_unique<tls13_records>(suite, secrets, true, GetParam().backend, key_update_after);
    }

    // Seals `data` in records of at most `piece` bytes and sends them to the OpenSSL end,
    // which must read exactly `data` back.
    void send_and_check(tls13_records& rec, const std::vector<std::uint8_t>& data, std::size_t piece) {
        std::vector<std::uint8_t> out(tls13_records::max_plain + tls13_records::seal_room);
        std::string got;
        for (std::size_t off = 0; off < data.size(); off += piece) {
            std::size_t n = std::min(piece, data.size() - off);
            std::span<const std::uint8_t> seg(data.data() + off, n);
            std::size_t len = rec.seal_data(std::span<const std::span<const std::uint8_t>>(&seg, 1), out.data());
            ASSERT_TRUE(send_fd(sp_.first(), out.data(), len));
            got += read_some(server_.ssl.get(), n);
        }
        ASSERT_EQ(got.size(), data.size());
        EXPECT_TRUE(std::equal(got.begin(), got.end(), data.begin(),
                               [](char a, std::uint8_t b) { return static_cast<std::uint8_t>(a) == b; }));
    }

    // Sends `text` from the OpenSSL end and opens it with ferry's records.
    std::string receive(tls13_records& rec, std::string_view text) {
        EXPECT_TRUE(write_all(server_.ssl.get(), text));
        std::string got;
        std::vector<std::uint8_t> out(tls13_records::max_plain + 256);
        for (int i = 0; i < 100 && got.size() < text.size(); ++i) {
            auto r = read_record(sp_.first());
            if (r.empty()) {
                break;
            }
            record_opened o = rec.open(r, out.data(), out.size());
            if (o.what == record_opened::kind::data) {
                got.append(reinterpret_cast<const char*>(out.data()), o.length);
            } else if (o.what != record_opened::kind::control) {
                break;
            }
        }
        return got;
    }

    socket_pair sp_;
    std::unique_ptr<tls_context> server_ctx_;
    std::unique_ptr<tls_context> client_ctx_;
    endpoint client_;
    endpoint server_;
};

std::vector<std::uint8_t> pattern_bytes(std::size_t n) {
    std::vector<std::uint8_t> v(n);
    for (std::size_t i = 0; i < n; ++i) {
        v[i] = static_cast<std::uint8_t>((i * 131) ^ (i >> 8));
    }
    return v;
}

TEST_P(tls_records_interop, openssl_reads_ferry_records) {
    auto rec = connect();
    send_and_check(*rec, pattern_bytes(1), 1);
    send_and_check(*rec, pattern_bytes(100'000), tls13_records::max_plain);
    send_and_check(*rec, pattern_bytes(40'000), 777);
}

TEST_P(tls_records_interop, ferry_reads_openssl_records) {
    auto rec = connect();
    std::string big(50'000, 'x');
    for (std::size_t i = 0; i < big.size(); ++i) {
        big[i] = static_cast<char>('a' + i % 26);
    }
    EXPECT_EQ(receive(*rec, "hello"), "hello");
    EXPECT_EQ(receive(*rec, big), big);
}

TEST_P(tls_records_interop, key_updates_both_ways) {
    // ferry updates its write key every 3 records; OpenSSL must follow.
    auto rec = connect(3);
    send_and_check(*rec, pattern_bytes(20'000), 1000);
    // OpenSSL updates its key and asks ferry to update too.
    ASSERT_EQ(SSL_key_update(server_.ssl.get(), SSL_KEY_UPDATE_REQUESTED), 1);
    EXPECT_EQ(receive(*rec, "after update"), "after update");
    send_and_check(*rec, pattern_bytes(5'000), 1000);
    EXPECT_EQ(receive(*rec, "still fine"), "still fine");
}

TEST_P(tls_records_interop, answers_a_requested_key_update) {
    auto rec = connect();  // no key updates of its own
    ASSERT_EQ(SSL_key_update(server_.ssl.get(), SSL_KEY_UPDATE_REQUESTED), 1);
    EXPECT_EQ(receive(*rec, "please update"), "please update");
    // The next record ferry seals is preceded by its own KeyUpdate (5-byte message).
    std::vector<std::uint8_t> out(tls13_records::max_plain + tls13_records::seal_room);
    auto data = pattern_bytes(100);
    std::span<const std::uint8_t> seg(data);
    std::size_t len = rec->seal_data(std::span<const std::span<const std::uint8_t>>(&seg, 1), out.data());
    EXPECT_EQ(len, data.size() + tls13_records::overhead + 5 + tls13_records::overhead);
    ASSERT_TRUE(send_fd(sp_.first(), out.data(), len));
    std::string got = read_some(server_.ssl.get(), data.size());
    EXPECT_EQ(got.size(), data.size());
    // Only once: the record after that is plain data again.
    len = rec->seal_data(std::span<const std::span<const std::uint8_t>>(&seg, 1), out.data());
    EXPECT_EQ(len, data.size() + tls13_records::overhead);
    ASSERT_TRUE(send_fd(sp_.first(), out.data(), len));
    EXPECT_EQ(read_some(server_.ssl.get(), data.size()).size(), data.size());
}

TEST_P(tls_records_interop, close_notify_both_ways) {
    auto rec = connect();
    std::vector<std::uint8_t> out(64);
    std::size_t n = rec->seal_close_notify(out.data());
    ASSERT_TRUE(send_fd(sp_.first(), out.data(), n));
    char byte = 0;
    int rc = SSL_read(server_.ssl.get(), &byte, 1);
    EXPECT_EQ(SSL_get_error(server_.ssl.get(), rc), SSL_ERROR_ZERO_RETURN);
    ASSERT_GE(SSL_shutdown(server_.ssl.get()), 0);
    auto r = read_record(sp_.first());
    ASSERT_FALSE(r.empty());
    EXPECT_EQ(rec->open(r, out.data(), out.size()).what, record_opened::kind::close);
}

TEST_P(tls_records_interop, tampered_records_are_refused_by_openssl) {
    auto rec = connect();
    // ferry -> OpenSSL: one flipped ciphertext bit fails OpenSSL's check.
    std::vector<std::uint8_t> out(tls13_records::max_plain + tls13_records::seal_room);
    auto data = pattern_bytes(1000);
    std::span<const std::uint8_t> seg(data);
    std::size_t len = rec->seal_data(std::span<const std::span<const std::uint8_t>>(&seg, 1), out.data());
    out[len / 2] ^= 0x10;
    ASSERT_TRUE(send_fd(sp_.first(), out.data(), len));
    char buf[2000];
    ERR_clear_error();
    int rc = SSL_read(server_.ssl.get(), buf, sizeof buf);
    EXPECT_LE(rc, 0);
    EXPECT_EQ(SSL_get_error(server_.ssl.get(), rc), SSL_ERROR_SSL);
    ERR_clear_error();
}

TEST_P(tls_records_interop, tampered_records_are_refused_by_ferry) {
    auto rec = connect();
    ASSERT_TRUE(write_all(server_.ssl.get(), "secret"));
    auto r = read_record(sp_.first());
    ASSERT_FALSE(r.empty());
    r[r.size() - 3] ^= 0x01;  // inside the tag
    std::vector<std::uint8_t> plain(64);
    EXPECT_EQ(rec->open(r, plain.data(), plain.size()).what, record_opened::kind::bad_record);
}

// Records a peer could craft: sealed correctly with the client's key (so they pass the
// AEAD), with inner plaintexts that TLS 1.3 forbids or that must be tolerated.
class tls_records_inner : public ::testing::Test {
protected:
    tls_records_inner() {
        secrets_.client.assign(32, 0x11);
        secrets_.server.assign(32, 0x22);
        reader_ = std::make_unique<tls13_records>(tls_suite::aes_128_gcm_sha256, secrets_, false, aead_backend::openssl);
        key_ = hkdf_expand_label(tls_suite::aes_128_gcm_sha256, secrets_.client, "key", 16);
        iv_ = hkdf_expand_label(tls_suite::aes_128_gcm_sha256, secrets_.client, "iv", 12);
        sealer_ = make_record_cipher(tls_suite::aes_128_gcm_sha256, key_, aead_backend::openssl);
    }

    // The record for inner plaintext `inner` (content, type, padding) as the client's next.
    std::vector<std::uint8_t> seal(const std::vector<std::uint8_t>& inner) {
        std::vector<std::uint8_t> rec(5 + inner.size() + 16);
        std::size_t len = inner.size() + 16;
        rec[0] = 23;
        rec[1] = 3;
        rec[2] = 3;
        rec[3] = static_cast<std::uint8_t>(len >> 8);
        rec[4] = static_cast<std::uint8_t>(len);
        auto nonce = iv_;
        for (int i = 0; i < 8; ++i) {
            nonce[11 - i] ^= static_cast<std::uint8_t>(seq_ >> (8 * i));
        }
        ++seq_;
        std::span<const std::uint8_t> seg(inner);
        sealer_->seal(nonce.data(), std::span(rec).first(5), std::span<const std::span<const std::uint8_t>>(&seg, 1),
                      rec.data() + 5);
        return rec;
    }

    record_opened open(const std::vector<std::uint8_t>& rec, std::size_t room = 20'000) {
        out_.assign(20'000, 0xee);
        return reader_->open(rec, out_.data(), room);
    }

    tls_traffic_secrets secrets_;
    std::unique_ptr<tls13_records> reader_;
    std::vector<std::uint8_t> key_;
    std::vector<std::uint8_t> iv_;
    std::unique_ptr<record_cipher> sealer_;
    std::uint64_t seq_ = 0;
    std::vector<std::uint8_t> out_;
};

TEST_F(tls_records_inner, padding_and_empty_records_are_accepted) {
    std::vector<std::uint8_t> padded{'h', 'i', 23};
    padded.resize(200, 0);
    record_opened o = open(seal(padded));
    EXPECT_EQ(o.what, record_opened::kind::data);
    EXPECT_EQ(o.length, 2u);
    EXPECT_EQ(std::string(out_.begin(), out_.begin() + 2), "hi");
    o = open(seal({23}));
    EXPECT_EQ(o.what, record_opened::kind::data);
    EXPECT_EQ(o.length, 0u);
    o = open(seal({1, 90, 21}));  // user_canceled warning: tolerated, close_notify follows
    EXPECT_EQ(o.what, record_opened::kind::control);
    o = open(seal({1, 0, 21}));
    EXPECT_EQ(o.what, record_opened::kind::close);
}

TEST_F(tls_records_inner, a_full_record_opens_into_exactly_its_content_size) {
    std::vector<std::uint8_t> inner(tls13_records::max_plain, 'x');
    inner.push_back(23);
    auto rec = seal(inner);
    ASSERT_EQ(tls13_records::content_room(rec.size()), tls13_records::max_plain);
    record_opened o = open(rec, tls13_records::max_plain);
    EXPECT_EQ(o.what, record_opened::kind::data);
    EXPECT_EQ(o.length, tls13_records::max_plain);
    EXPECT_EQ(out_[tls13_records::max_plain], 0xee);  // nothing written past the room
}

TEST_F(tls_records_inner, forbidden_inner_plaintexts_are_refused) {
    EXPECT_EQ(open(seal({0, 0, 0, 0})).what, record_opened::kind::bad_record);  // no content type
    EXPECT_EQ(open(seal({'x', 99})).what, record_opened::kind::bad_record);     // unknown type
    EXPECT_EQ(open(seal({2, 40, 0, 21})).what, record_opened::kind::bad_record);  // alert of 3 bytes
    EXPECT_EQ(open(seal({22})).what, record_opened::kind::bad_record);          // empty handshake
    EXPECT_EQ(open(seal({24, 0, 0, 1, 0, 'x', 22})).what, record_opened::kind::bad_record);  // KeyUpdate not last
    EXPECT_EQ(open(seal({13, 0, 0, 0, 22})).what, record_opened::kind::bad_record);  // CertificateRequest
    // A fatal alert is reported with its description.
    record_opened o = open(seal({2, 46, 21}));
    EXPECT_EQ(o.what, record_opened::kind::alert);
    EXPECT_EQ(o.alert, 46);
    // Last: refused before decryption, so the sequence numbers no longer line up after it.
    std::vector<std::uint8_t> big(tls13_records::max_plain + 1, 'y');
    big.push_back(23);  // 2^14 + 2 bytes of inner plaintext: record_overflow
    EXPECT_EQ(open(seal(big)).what, record_opened::kind::bad_record);
}

TEST_F(tls_records_inner, a_record_out_of_sequence_fails_authentication) {
    auto first = seal({'a', 23});
    auto second = seal({'b', 23});
    EXPECT_EQ(open(second).what, record_opened::kind::bad_record);  // replayed/reordered: wrong nonce
}

INSTANTIATE_TEST_SUITE_P(
    suites, tls_records_interop,
    ::testing::Values(records_case{"TLS_AES_128_GCM_SHA256", aead_backend::openssl},
                      records_case{"TLS_AES_128_GCM_SHA256", aead_backend::ipsec_mb},
                      records_case{"TLS_AES_256_GCM_SHA384", aead_backend::openssl},
                      records_case{"TLS_AES_256_GCM_SHA384", aead_backend::ipsec_mb},
                      records_case{"TLS_CHACHA20_POLY1305_SHA256", aead_backend::openssl}),
    [](const ::testing::TestParamInfo<records_case>& info) {
        std::string name = info.param.ciphersuite;
        name += info.param.backend == aead_backend::openssl ? "_openssl" : "_ipsec_mb";
        return name;
    });

}  // namespace
}  // namespace ferry
