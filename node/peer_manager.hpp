// peer_manager: the one owner of incoming peers and their sessions.
//
// Loop thread only. Accepted sockets get their TLS handshake (the peer's ID checked
// against the accept policy in the verify step), then wait for their Hello: the first
// connection of a session (index 0) opens a receive_session, the others join it by
// session id and must present the same node ID. Limits (node/limits.hpp): connections
// in all (when full, the oldest connection not yet in a session is closed to make room),
// connections per peer, sessions, and the handshake timeout for the TLS handshake and
// again for the Hello. Every refusal is counted and logged with the peer's address,
// through a throttle so that a flood cannot flood the log.
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
    // Connections not yet in a session (in their TLS handshake or before their Hello).
    std::size_t pending_count() const { return waiting_.size(); }
    // The sessions (for `ferry status`).
    const std::map<std::string, std::shared_ptr<receive_session>>& sessions() const { return sessions_; }

    // Pending connections (before Hello).
    void on_frame(connection& c, wire::Header& header, pooled_buffer payload) override;
    void on_send_ready(connection& c) override {}
    void on_closed(connection& c, std::error_code ec) override;

private:
    // A connection that has not joined a session yet: first its handshake (cancel stops
    // it), then, with `conn` set, the wait for its Hello (timer).
    struct waiting {
        std::string from;
        std::function<void()> cancel;
        std::shared_ptr<connection> conn;
        std::unique_ptr<asio::steady_timer> timer;
    };

    bool allowed(const std::string& id) const;
    void end_session(receive_session& s);
    void on_handshake(std::uint64_t seq, std::error_code ec, std::unique_ptr<byte_stream> stream,
                      const tls_peer_check& check);
    std::size_t connection_count() const;
    bool evict_oldest_waiting();
    std::map<std::uint64_t, waiting>::iterator find_waiting(const connection& c);
    // Counts a refusal and logs its line (throttled).
    void refused(refusal why, const std::string& line);

    node_context& ctx_;
    std::map<std::uint64_t, waiting> waiting_;  // by arrival: the first is the oldest
    // Refused after their Hello, closing after the Error frame (at most connection::linger):
    // they still count as connections.
    std::set<std::shared_ptr<connection>> closing_;
    std::uint64_t next_seq_ = 0;
    log_throttle log_throttle_;
    std::map<std::string, std::shared_ptr<receive_session>> sessions_;  // by session id
    bool stopping_ = false;
};

}  // namespace ferry
