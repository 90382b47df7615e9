// TLS 1.3 contexts with mutual authentication by node ID.
//
// A tls_context owns one SSL_CTX configured for one role (client or server) with this
// node's credentials. new_ssl() makes the SSL object for one connection; the caller
// drives it (SSL_set_fd on a non-blocking socket, SSL_do_handshake, SSL_read/SSL_write)
// and frees it. Peers are identified by their node ID (see transport/identity.hpp), not
// by a CA: node certificates are self-signed, the TLS 1.3 CertificateVerify proves the
// peer holds the key, and the ID is a digest of that key. During the handshake the
// verify callback computes the peer's ID and asks the connection's tls_peer_check.
//
// Threads: a tls_context is immutable after construction; new_ssl() may be called from
// any thread. Each SSL object belongs to the thread driving its connection.
//
// TLS 1.3 ordering to keep in mind: the client finishes its handshake before the server
// has checked the client's certificate. When the server refuses the client, the client
// learns it from the alert on its first SSL_read, not from SSL_do_handshake.
#pragma once

#include <openssl/ssl.h>

#include <functional>
#include <memory>
#include <string>

#include "transport/identity.hpp"
#include "transport/tls_records.hpp"

namespace ferry {

// Per-connection peer check, owned by the connection and outliving its SSL*.
struct tls_peer_check {
    // Decides whether the peer's canonical ID may connect; if empty, any ID is allowed.
    // Called from inside the handshake on the connection's thread; it must not throw
    // (an exception is caught and counts as a refusal). It may fill `reason` itself
    // before returning false to give a more specific message.
    std::function<bool(const std::string& canonical_id)> allow;
    // Filled in during the handshake: the peer's canonical node ID.
    std::string peer_id;
    // Filled in when the check refused the peer, e.g. "peer ABCD-... is not trusted".
    std::string reason;
};

enum class tls_role {
    client,  // connects; verifies the server's certificate
    server,  // accepts; requires and verifies a client certificate
};


class tls_context {
  public:
    // Throws std::runtime_error with a clear message if the credentials do not load or the
    // key does not match the certificate.
    tls_context(const tls_credentials& creds, tls_role role);

    tls_context(tls_context&&) noexcept = default;
    tls_context& operator=(tls_context&&) noexcept = default;
    tls_context(const tls_context&) = delete;
    tls_context& operator=(const tls_context&) = delete;
    ~tls_context() = default;

    // New SSL for one connection, already in connect or accept state for this context's
    // role, with `check` attached (ex_data) so the verify callback can consult and fill
    // it. `check` may be null (any peer allowed, nothing recorded). The caller owns the
    // SSL* (SSL_free) and must keep `check` alive as long as the SSL. Throws
    // std::runtime_error if OpenSSL cannot allocate it.
    SSL* new_ssl(tls_peer_check* check) const;

    SSL_CTX* native() const { return ctx_.get(); }
    tls_role role() const { return role_; }
    // This node's canonical ID (from the certificate).
    const std::string& id() const { return id_; }

  private:
    struct ctx_deleter {
        void operator()(SSL_CTX* ctx) const { SSL_CTX_free(ctx); }
    };

    std::unique_ptr<SSL_CTX, ctx_deleter> ctx_;
    tls_role role_;
    std::string id_;
};

// After the handshake: the negotiated suite, and the application traffic secrets the key
// log callback captured (moved out of the SSL). False if either is missing.
bool tls_take_traffic_secrets(SSL* ssl, tls_suite& suite, tls_traffic_secrets& secrets);

// Drains the calling thread's OpenSSL error queue into one line ("a; b; c"); "" if the
// queue is empty.
std::string tls_error_string();

}  // namespace ferry
