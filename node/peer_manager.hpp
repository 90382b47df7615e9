// peer_manager: the one owner of incoming peers and their sessions.
//
// Loop thread only. Accepted sockets get their TLS handshake (the peer's ID checked
// against the accept policy in the verify step), then wait for their Hello: the first
// connection of a session (index 0) opens a receive_session, the others join it by
// session id and must present the same node ID. Limits: sessions, and connections per
// session (max_connections).
#pragma once

#include <map>
#include <memory>
#include <set>
#include <string>

#include "node/context.hpp"
#include "node/receive_session.hpp"
#include "transport/connection.hpp"

namespace ferry {

class peer_manager : public connection_handler {
public:
    explicit peer_manager(node_context& ctx) : ctx_(ctx) {}

    // A socket the listener accepted.
    void on_accepted(asio::ip::tcp::socket socket);
    void stop(const std::string& why);
    std::size_t session_count() const { return sessions_.size(); }
    std::size_t pending_count() const { return pending_.size(); }
    // The sessions (for `ferry status`).
    const std::map<std::string, std::shared_ptr<receive_session>>& sessions() const { return sessions_; }

    // Pending connections (before Hello).
    void on_frame(connection& c, wire::Header& header, pooled_buffer payload) override;
    void on_send_ready(connection& c) override {}
    void on_closed(connection& c, std::error_code ec) override;

private:
    bool allowed(const std::string& id) const;
    void end_session(receive_session& s);

    node_context& ctx_;
    // Connections before their Hello, each with its Hello timeout.
    std::map<std::shared_ptr<connection>, std::unique_ptr<asio::steady_timer>> pending_;
    std::map<std::string, std::shared_ptr<receive_session>> sessions_;  // by session id
    bool stopping_ = false;
};

}  // namespace ferry
