// node: one ferry node. Owns the loop-side state (peer manager, sessions), the worker
// pool and the buffer pool; the caller owns the io_context and runs it on one thread.
//
// Construction loads (or creates) the identity and the trust list and throws
// std::runtime_error with a clear message when that fails.
#pragma once

#include <asio.hpp>
#include <memory>
#include <optional>
#include <nlohmann/json.hpp>
#include <string>

#include "node/context.hpp"
#include "node/list_client.hpp"
#include "node/peer_manager.hpp"
#include "node/receive_session.hpp"
#include "node/send_session.hpp"
#include "node/source_tree.hpp"

namespace ferry {

// A running transfer's figures as JSON (node/status.cpp; docs/json.md): the fields of a
// `progress` event and of each entry of `ferry status`'s transfers.
nlohmann::ordered_json progress_json(const transfer_progress& p);

// Lifts the soft limit on descriptors to the hard one (many small files in flight each
// hold one for a moment; a receiver holds up to unnamed_file::max_open() new files with no
// name yet) and grows the process's descriptor table to that size at once. Call it first
// in main, while the process has one thread: a table grown later, with threads, waits for
// an RCU grace period at every doubling (expand_fdtable), and a receiver of 10,000 small
// files ran 5-10 % longer for it. node's constructor calls it too (idempotent).
void reserve_descriptors();

class node {
public:
    node(asio::io_context& io, node_config config, node_events events);
    ~node();

    // Binds the listen address and starts accepting. Fires events.listening.
    std::error_code listen(std::string& error);
    // Starts an outgoing transfer; `done` runs on the loop thread.
    void send(source_tree sources, send_target target, send_options options,
              std::function<void(const transfer_report&)> done);
    // Starts a pull (`ferry sync` from a remote SRC): dials `target`, asks for
    // spec.source and receives it into spec.dest. spec.done runs on the loop thread with
    // the report (a connection that fails at once too).
    // Returns the pull's session ID (what cancel_pull takes).
    std::string pull(pull_spec spec, send_target target);
    // Ends that pull (partial files are kept; spec.done follows, not ok). Nothing when it
    // has already reported.
    void cancel_pull(const std::string& session_id, const std::string& why);
    // Asks `target` for a listing (`ferry ls`): spec.entries gets it batch by batch, then
    // spec.done the report (a connection that fails at once too), on the loop thread.
    void list(list_spec spec, send_target target);
    // SIGHUP (`ferry serve`): takes `fresh`'s shares, limits and accept policy, and `trust`
    // (the trust list with the configuration file's peers), between two events of the
    // loop. Transfers that run go on; what changed applies to the next connection,
    // handshake and transfer. Returns the settings `fresh` changes that only a restart
    // applies (listen addresses, state folder, inbox, discovery, ...), by name.
    std::vector<std::string> reload(const node_config& fresh, trust_store trust);
    // Stops accepting and ends every session (partial files are kept).
    void stop(const std::string& why);
    // The longest the next transfers' first dials may take (node_context::
    // first_dial_timeout; at most node_config::connect_timeout): a retry's attempt gets no
    // more than what --retry-for has left.
    void set_first_dial_timeout(std::chrono::milliseconds timeout);
    // Connections not closed yet, both directions: after stop(), each closes once its last
    // frames are out and the peer closed too (or connection::linger passed).
    std::size_t open_connections() const;

    // Transfers running now, both directions (O(transfers x connections)).
    std::vector<transfer_progress> transfers() const;
    // What `ferry status` shows (node/status.cpp; docs/json.md): peers with their live
    // connections (tuning, TCP_INFO sampled now), transfers, totals. Cost: O(peers kept
    // + live connections), never O(past transfers).
    nlohmann::ordered_json status() const;
    // Prometheus text exposition of the same counters (node/status.cpp).
    std::string metrics() const;

    const std::string& id() const { return ctx_->id; }
    node_context& context() { return *ctx_; }
    // The first address it listens on ("" before listen()); listen_addresses(): all of them.
    std::string listen_address() const;
    std::vector<std::string> listen_addresses() const;
    // LAN discovery, while it runs (null: off, or it could not start).
    const discovery* lan() const { return discovery_.get(); }

private:
    // One session as progress, status and metrics see it: the single walk over the
    // node's sessions that all three read.
    struct live_session {
        std::string peer_key;  // node_stats::peers key; empty before a sender's first connection
        std::vector<std::shared_ptr<connection>> connections;  // closed or null entries possible
        std::optional<transfer_progress> running;                // set while the transfer runs
    };
    std::vector<live_session> live_sessions() const;

    // One listening socket (config.listen holds one address per listener).
    struct listener {
        explicit listener(asio::io_context& io) : acceptor(io), retry(io) {}
        asio::ip::tcp::acceptor acceptor;
        asio::steady_timer retry;
    };
    void accept_next(listener& l);
    // Removes abandoned partial files in the inbox (config.partial_max_age), now and then
    // once a day.
    void sweep_partials();

    std::unique_ptr<node_context> ctx_;
    std::unique_ptr<peer_manager> peers_;
    std::vector<std::unique_ptr<listener>> listeners_;
    asio::steady_timer sweep_timer_;
    std::vector<std::shared_ptr<send_session>> sends_;
    std::vector<std::shared_ptr<receive_session>> pulls_;  // this node's own pulls
    std::vector<std::string> cancelled_dials_;  // pulls cancelled while their first connection was dialed
    std::vector<std::shared_ptr<list_client>> lists_;      // and listings it asked for
    std::unique_ptr<discovery> discovery_;
    std::string key_pem_;  // signs the announcements
    bool stopped_ = false;
};

}  // namespace ferry
