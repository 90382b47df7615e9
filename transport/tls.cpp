#include "transport/tls.hpp"

#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/x509.h>

#include <array>
#include <stdexcept>

#include "transport/openssl_util.hpp"

namespace ferry {
namespace {

constexpr const char* tls13_ciphersuites = "TLS_AES_128_GCM_SHA256:TLS_AES_256_GCM_SHA384:TLS_CHACHA20_POLY1305_SHA256";

// ex_data slot of an SSL that holds its tls_peer_check*.
int peer_check_index() {
    static const int index = SSL_get_ex_new_index(0, nullptr, nullptr, nullptr, nullptr);
    return index;
}

// ex_data slot of an SSL that holds its tls_traffic_secrets (owned by the SSL).
void free_secrets(void* /*parent*/, void* ptr, CRYPTO_EX_DATA* /*ad*/, int /*idx*/, long /*argl*/, void* /*argp*/) {
    delete static_cast<tls_traffic_secrets*>(ptr);
}
int secrets_index() {
    static const int index = SSL_get_ex_new_index(0, nullptr, nullptr, nullptr, free_secrets);
    return index;
}

bool from_hex(std::string_view hex, std::vector<std::uint8_t>& out) {
    if (hex.size() % 2 != 0) {
        return false;
    }
    out.resize(hex.size() / 2);
    for (std::size_t i = 0; i < out.size(); ++i) {
        auto nibble = [](char c) -> int {
            if (c >= '0' && c <= '9') return c - '0';
            if (c >= 'a' && c <= 'f') return c - 'a' + 10;
            if (c >= 'A' && c <= 'F') return c - 'A' + 10;
            return -1;
        };
        int hi = nibble(hex[2 * i]);
        int lo = nibble(hex[2 * i + 1]);
        if (hi < 0 || lo < 0) {
            return false;
        }
        out[i] = static_cast<std::uint8_t>(hi << 4 | lo);
    }
    return true;
}

// OpenSSL hands every secret of the handshake to the key log callback as a text line
// "LABEL <client random> <secret>"; ferry keeps the two application traffic secrets
// for its record layer (tls_records.hpp) and writes nothing anywhere.
void capture_secret(const SSL* ssl, const char* line) {
    auto* secrets = static_cast<tls_traffic_secrets*>(SSL_get_ex_data(ssl, secrets_index()));
    if (secrets == nullptr) {
        return;
    }
    std::string_view text(line);
    auto first = text.find(' ');
    auto last = text.rfind(' ');
    if (first == std::string_view::npos || last == first) {
        return;
    }
    std::string_view label = text.substr(0, first);
    std::string_view hex = text.substr(last + 1);
    if (label == "CLIENT_TRAFFIC_SECRET_0") {
        from_hex(hex, secrets->client);
    } else if (label == "SERVER_TRAFFIC_SECRET_0") {
        from_hex(hex, secrets->server);
    }
}

// Every set-up failure reads "TLS setup: <what> (<OpenSSL errors>)".
[[noreturn]] void fail(std::string_view what) { throw_openssl_error("TLS setup", what); }

// Fails the verification (the handshake then ends with an alert) and records why.
int refuse(X509_STORE_CTX* store, tls_peer_check* check, int error, std::string reason) {
    if (check != nullptr && check->reason.empty()) {
        check->reason = std::move(reason);
    }
    X509_STORE_CTX_set_error(store, error);
    return 0;
}

// Replaces OpenSSL's chain verification (SSL_CTX_set_cert_verify_callback), so it runs
// exactly once per handshake and no CA store is consulted. There is nothing to chain to:
// the certificate is self-signed and only carries the key. Its signature and dates are
// not checked because they prove nothing here: the TLS 1.3 CertificateVerify proves the
// peer holds the key, and the ID is a digest of the key.
int verify_peer(X509_STORE_CTX* store, void* /*arg*/) {
    auto* ssl = static_cast<SSL*>(X509_STORE_CTX_get_ex_data(store, SSL_get_ex_data_X509_STORE_CTX_idx()));
    tls_peer_check* check = nullptr;
    if (ssl != nullptr) {
        check = static_cast<tls_peer_check*>(SSL_get_ex_data(ssl, peer_check_index()));
    }

    // The untrusted stack is the chain as the peer sent it, leaf included.
    STACK_OF(X509)* sent = X509_STORE_CTX_get0_untrusted(store);
    int sent_count = sent != nullptr ? sk_X509_num(sent) : 0;
    if (sent_count > 1) {
        return refuse(store, check, X509_V_ERR_CERT_CHAIN_TOO_LONG,
                      "peer sent a chain of " + std::to_string(sent_count) +
                          " certificates; a node presents one self-signed certificate");
    }

    X509* cert = X509_STORE_CTX_get0_cert(store);
    std::string id = node_id_from_cert(cert);
    if (id.empty()) {
        return refuse(store, check, X509_V_ERR_APPLICATION_VERIFICATION, "peer certificate has no usable public key");
    }
    if (check == nullptr) {
        return 1;
    }
    check->peer_id = id;
    if (!check->allow) {
        return 1;
    }
    bool allowed = false;
    try {
        allowed = check->allow(id);
    } catch (const std::exception& e) {
        return refuse(store, check, X509_V_ERR_APPLICATION_VERIFICATION,
                      "peer " + format_node_id(id) + ": check failed: " + e.what());
    } catch (...) {
        return refuse(store, check, X509_V_ERR_APPLICATION_VERIFICATION,
                      "peer " + format_node_id(id) + ": check failed");
    }
    if (!allowed) {
        return refuse(store, check, X509_V_ERR_APPLICATION_VERIFICATION,
                      "peer " + format_node_id(id) + " is not trusted");
    }
    return 1;
}

}  // namespace

tls_context::tls_context(const tls_credentials& creds, tls_role role) : role_(role) {
    ERR_clear_error();
    ctx_.reset(SSL_CTX_new(role == tls_role::server ? TLS_server_method() : TLS_client_method()));
    if (!ctx_) {
        fail("SSL_CTX_new failed");
    }
    SSL_CTX* ctx = ctx_.get();

    if (SSL_CTX_set_min_proto_version(ctx, TLS1_3_VERSION) != 1 ||
        SSL_CTX_set_max_proto_version(ctx, TLS1_3_VERSION) != 1) {
        fail("cannot restrict the protocol to TLS 1.3");
    }
    if (SSL_CTX_set_ciphersuites(ctx, tls13_ciphersuites) != 1) {
        fail("cannot set the TLS 1.3 ciphersuites");
    }
    // No resumption at all: every connection authenticates with its certificate.
    SSL_CTX_set_num_tickets(ctx, 0);
    SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_OFF);
    SSL_CTX_set_options(ctx, SSL_OP_NO_RENEGOTIATION | SSL_OP_NO_TICKET);
    // OpenSSL only runs the handshake; application records are ferry's (tls_records.hpp).
    // Without read-ahead OpenSSL reads exactly the handshake records and nothing beyond,
    // so the first application record is still in the socket when ferry takes over.
    SSL_CTX_set_read_ahead(ctx, 0);
    SSL_CTX_set_keylog_callback(ctx, capture_secret);

    int verify_mode = SSL_VERIFY_PEER;
    if (role == tls_role::server) {
        verify_mode |= SSL_VERIFY_FAIL_IF_NO_PEER_CERT;
    }
    SSL_CTX_set_verify(ctx, verify_mode, nullptr);
    SSL_CTX_set_cert_verify_callback(ctx, verify_peer, nullptr);

    x509_ptr cert = read_pem_certificate(creds.cert_pem);
    if (!cert) {
        fail("the node certificate is not a valid PEM certificate");
    }
    pkey_ptr key = read_pem_private_key(creds.key_pem);
    if (!key) {
        fail("the node key is not a valid unencrypted PEM private key");
    }
    if (X509_check_private_key(cert.get(), key.get()) != 1) {
        fail("the node key does not match the node certificate");
    }
    if (SSL_CTX_use_certificate(ctx, cert.get()) != 1) {
        fail("the node certificate is not usable");
    }
    if (SSL_CTX_use_PrivateKey(ctx, key.get()) != 1) {
        fail("the node key is not usable");
    }
    if (SSL_CTX_check_private_key(ctx) != 1) {
        fail("the node key does not match the node certificate");
    }
    id_ = node_id_from_cert(cert.get());
    if (id_.empty()) {
        fail("cannot compute the node ID of the certificate");
    }
}

SSL* tls_context::new_ssl(tls_peer_check* check) const {
    SSL* ssl = SSL_new(ctx_.get());
    if (ssl == nullptr) {
        fail("SSL_new failed");
    }
    if (SSL_set_ex_data(ssl, peer_check_index(), check) != 1) {
        SSL_free(ssl);
        fail("SSL_set_ex_data failed");
    }
    auto* secrets = new tls_traffic_secrets;
    if (SSL_set_ex_data(ssl, secrets_index(), secrets) != 1) {
        delete secrets;
        SSL_free(ssl);
        fail("SSL_set_ex_data failed");
    }
    if (role_ == tls_role::server) {
        SSL_set_accept_state(ssl);
    } else {
        SSL_set_connect_state(ssl);
    }
    return ssl;
}

bool tls_take_traffic_secrets(SSL* ssl, tls_suite& suite, tls_traffic_secrets& secrets) {
    const SSL_CIPHER* cipher = SSL_get_current_cipher(ssl);
    if (cipher == nullptr) {
        return false;
    }
    switch (SSL_CIPHER_get_id(cipher) & 0xffff) {
        case 0x1301: suite = tls_suite::aes_128_gcm_sha256; break;
        case 0x1302: suite = tls_suite::aes_256_gcm_sha384; break;
        case 0x1303: suite = tls_suite::chacha20_poly1305_sha256; break;
        default: return false;
    }
    auto* held = static_cast<tls_traffic_secrets*>(SSL_get_ex_data(ssl, secrets_index()));
    if (held == nullptr || held->client.empty() || held->server.empty()) {
        return false;
    }
    std::swap(secrets.client, held->client);
    std::swap(secrets.server, held->server);
    return true;
}

std::string tls_error_string() {
    // Error texts are loaded lazily by OpenSSL; without this, a process that has not yet
    // made an SSL_CTX would print "reason(134)". Cheap after the first call.
    OPENSSL_init_ssl(OPENSSL_INIT_LOAD_SSL_STRINGS | OPENSSL_INIT_LOAD_CRYPTO_STRINGS, nullptr);
    std::string out;
    const char* data = nullptr;
    int flags = 0;
    while (unsigned long code = ERR_get_error_all(nullptr, nullptr, nullptr, &data, &flags)) {
        std::array<char, 256> buf{};
        ERR_error_string_n(code, buf.data(), buf.size());
        if (!out.empty()) {
            out += "; ";
        }
        out += buf.data();
        if (data != nullptr && (flags & ERR_TXT_STRING) != 0 && *data != '\0') {
            out += " (";
            out += data;
            out += ")";
        }
    }
    return out;
}

}  // namespace ferry
