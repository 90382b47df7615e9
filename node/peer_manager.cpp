#include "node/peer_manager.hpp"

#include "transport/identity.hpp"

namespace ferry {

bool peer_manager::allowed(const std::string& id) const {
    switch (ctx_.config.policy) {
        case accept_policy::any: return true;
        case accept_policy::from_id: return id == ctx_.config.accept_from || ctx_.trust.trusted(id);
        case accept_policy::trusted: return ctx_.trust.trusted(id);
    }
    return false;
}

void peer_manager::on_accepted(asio::ip::tcp::socket socket) {
    if (stopping_) {
        return;
    }
    std::error_code ignored;
    auto ep = socket.remote_endpoint(ignored);
    std::string from = ignored ? std::string("?") : format_endpoint(ep);
    auto check = std::make_unique<tls_peer_check>();
    auto seen_id = std::make_shared<std::string>();  // for the log line of a refusal
    check->allow = [this, seen_id](const std::string& id) {
        *seen_id = id;
        return allowed(id);
    };
    const tls_context* tls = ctx_.config.plaintext ? nullptr : ctx_.tls_server.get();
    async_accept_stream(ctx_.io, tls, std::move(socket), ctx_.config.tuning, ctx_.config.handshake_timeout,
                        std::move(check),
                        [this, from, seen_id](std::error_code ec, std::unique_ptr<byte_stream> stream) {
                            if (stopping_) {
                                return;
                            }
                            if (ec == transport_errc::untrusted_peer) {
                                ctx_.log("refused connection from " + from + ": node " + format_node_id(*seen_id) +
                                         " is not trusted (ferry trust ID, or --accept-from)");
                                return;
                            }
                            if (ec) {
                                ctx_.log("refused connection from " + from + ": " + ec.message());
                                return;
                            }
                            auto c = std::make_shared<connection>(std::move(stream), ctx_.buffers);
                            // A connection that says nothing after its handshake is closed
                            // once the handshake timeout passes again. The timer lives as
                            // long as the connection is pending: leaving pending_ cancels it.
                            auto timer = std::make_unique<asio::steady_timer>(ctx_.io);
                            timer->expires_after(ctx_.config.handshake_timeout);
                            timer->async_wait([this, weak = std::weak_ptr<connection>(c)](std::error_code ec) {
                                auto conn = weak.lock();
                                if (ec || !conn || stopping_ || pending_.count(conn) == 0) {
                                    return;
                                }
                                ctx_.log("closing connection from " + conn->stream().remote() +
                                         ": no Hello within the handshake timeout");
                                pending_.erase(conn);
                                conn->close(transport_errc::timeout);
                            });
                            pending_.emplace(c, std::move(timer));
                            c->start(this);
                        });
}

void peer_manager::on_frame(connection& c, wire::Header& header, pooled_buffer payload) {
    auto self_c = c.shared_from_this();
    pending_.erase(self_c);
    auto refuse = [&](wire::ErrorCode code, const std::string& msg) {
        ctx_.log("refused connection from " + c.stream().remote() + ": " + msg);
        wire::Header h;
        h.mutable_error()->set_code(code);
        h.mutable_error()->set_message(msg);
        c.send(h);
        // Closing after flush: no more frames reach this handler; on_closed counts its bytes.
        c.close_after_flush(protocol_errc::unexpected_message);
    };
    if (header.body_case() != wire::Header::kHello) {
        refuse(wire::ERROR_PROTOCOL, "expected Hello");
        return;
    }
    const wire::Hello& hello = header.hello();
    if (hello.version() != protocol_version) {
        refuse(wire::ERROR_VERSION, "incompatible protocol version " + std::to_string(hello.version()) +
                                        " (this node speaks " + std::to_string(protocol_version) + ")");
        return;
    }
    if (hello.plaintext() != !c.stream().is_tls()) {
        refuse(wire::ERROR_REFUSED, "one side uses --plaintext and the other does not");
        return;
    }
    if (hello.session_id().size() != 16) {
        refuse(wire::ERROR_PROTOCOL, "bad session id");
        return;
    }
    std::string peer = c.stream().peer_id();
    auto it = sessions_.find(hello.session_id());
    if (hello.conn_index() == 0) {
        if (it != sessions_.end()) {
            refuse(wire::ERROR_PROTOCOL, "session already open");
            return;
        }
        if (sessions_.size() >= ctx_.config.max_sessions) {
            refuse(wire::ERROR_BUSY, "too many sessions");
            return;
        }
        // Statistics key of the peer: its ID, or its address (without the port) in plaintext.
        std::string remote = self_c->stream().remote();
        std::string key = peer.empty() ? remote.substr(0, remote.rfind(':')) : peer;
        auto s = std::make_shared<receive_session>(ctx_, peer, key, hello.session_id(),
                                                   [this](receive_session& s) { end_session(s); });
        sessions_.emplace(hello.session_id(), s);
        s->add_connection(self_c, hello);
        return;
    }
    if (it == sessions_.end() || it->second->peer_id() != peer) {
        refuse(wire::ERROR_PROTOCOL, "unknown session");
        return;
    }
    it->second->add_connection(self_c, hello);
}

void peer_manager::on_closed(connection& c, std::error_code ec) {
    bool was_pending = pending_.erase(c.shared_from_this()) > 0;
    // A connection that never joined a session (timed out, refused, closed before its
    // Hello) still moved bytes on the wire: they count in the node's totals.
    ctx_.stats.traffic->add_wire(c.stream().wire_sent(), c.stream().wire_received());
    if (was_pending && ec && ec != transport_errc::closed && !stopping_) {
        ctx_.log("connection from " + c.stream().remote() + " closed before Hello: " + ec.message());
    }
}

void peer_manager::end_session(receive_session& s) {
    sessions_.erase(s.session_id());
    if (ctx_.events.session_ended) {
        ctx_.events.session_ended();
    }
}

void peer_manager::stop(const std::string& why) {
    stopping_ = true;
    std::vector<std::shared_ptr<connection>> pending;
    for (const auto& [c, timer] : pending_) {
        pending.push_back(c);
    }
    for (auto& c : pending) {
        c->close();
    }
    pending_.clear();
    auto sessions = sessions_;
    for (auto& [id, s] : sessions) {
        s->stop(why);
    }
}

}  // namespace ferry
