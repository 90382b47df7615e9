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

#include <memory>
#include <optional>
#include <stdexcept>
#include <string>

#include "transport/identity.hpp"

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
        long mode = SSL_CTX_get_mode(ctx);
        EXPECT_NE(mode & SSL_MODE_ENABLE_PARTIAL_WRITE, 0);
        EXPECT_NE(mode & SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER, 0);
        EXPECT_EQ(mode & SSL_MODE_RELEASE_BUFFERS, 0);
        EXPECT_EQ(SSL_CTX_get_read_ahead(ctx), 1);
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

}  // namespace
}  // namespace ferry
