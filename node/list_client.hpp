// list_client: `ferry ls` on the asking side. One connection to the peer: our Hello with
// a ListRequest, then the peer's Hello and Offer batches listing what was asked (see
// ListRequest in proto/ferry.proto), until the batch marked last. Every entry is checked
// as a receiver checks an offer's (a path the wire allows, a known kind) before it is
// handed on, batch by batch, so a listing of any size costs one batch of memory here.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include <asio.hpp>

#include "node/context.hpp"
#include "node/send_session.hpp"
#include "protocol/transfer.hpp"
#include "transport/connection.hpp"

namespace ferry {

struct list_report {
    bool ok = false;
    exit_code code = exit_code::transfer_failed;
    std::string error;
    std::string peer_id;
    std::uint64_t entries = 0;
    std::uint64_t wire_sent = 0;  // the connection's bytes until the answer, handshakes included
    std::uint64_t wire_received = 0;
};

struct list_spec {
    wire::ListRequest request;
    // Each batch of entries, in the peer's order (loop thread).
    std::function<void(std::vector<entry_info>)> entries;
    std::function<void(const list_report&)> done;  // once, on the loop thread
};

class list_client : public connection_handler, public std::enable_shared_from_this<list_client> {
public:
    list_client(node_context& ctx, list_spec spec, send_target target);
    // Dials the peer and asks; spec.done follows (a failure to connect too).
    void start();
    bool finished() const { return finished_; }
    // Finished, and its connection closed (it calls in until then).
    bool done() const { return finished_ && (!conn_ || closed_); }
    // Ends it now (the node stops): spec.done gets `why`.
    void cancel(const std::string& why) { finish(exit_code::transfer_failed, why); }

    void on_frame(connection& c, wire::Header& header, pooled_buffer payload) override;
    void on_send_ready(connection&) override {}
    void on_closed(connection& c, std::error_code ec) override;

private:
    void finish(exit_code code, std::string error);
    void arm_timer(std::chrono::seconds wait);

    node_context& ctx_;
    list_spec spec_;
    send_target target_;
    std::shared_ptr<connection> conn_;
    asio::steady_timer timer_;
    list_report report_;
    bool hello_seen_ = false;
    bool finished_ = false;
    bool closed_ = false;
};

}  // namespace ferry
