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

#include <atomic>
#include <deque>
#include <filesystem>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <string>

#include <sys/types.h>

#include "node/context.hpp"
#include "node/file_io.hpp"
#include "node/receive_session.hpp"
#include "node/send_session.hpp"
#include "transport/connection.hpp"

namespace ferry {

class peer_manager : public connection_handler {
public:
    // The trust list file as stat(2) sees it (all zeros when there is none): what tells a
    // change `ferry trust` (or an editor) made while the node runs.
    struct trust_stamp {
        dev_t dev = 0;
        ino_t ino = 0;
        off_t size = 0;
        std::int64_t mtime_ns = 0;
        std::int64_t ctime_ns = 0;
        bool operator==(const trust_stamp&) const = default;
    };
    static trust_stamp trust_stamp_of(const std::filesystem::path& file);

    // `trust_seen`: the trust list file's stamp taken before ctx.trust was read from it (a
    // change in between is read again at the first connection).
    peer_manager(node_context& ctx, trust_stamp trust_seen) : ctx_(ctx), trust_seen_(trust_seen) {}
    // ctx.trust was just read from its file (a SIGHUP's reload).
    void trust_read_now() { trust_seen_ = trust_stamp_of(ctx_.trust.file()); }

    // A socket the listener accepted.
    void on_accepted(asio::ip::tcp::socket socket);
    void stop(const std::string& why);
    std::size_t session_count() const { return sessions_.size(); }
    // Connections not in a session: in their TLS handshake, before their Hello, closing
    // after an Error frame, or waiting for their pull's scan.
    std::size_t pending_count() const { return waiting_.size() + closing_.size() + scanning_.size(); }
    // The sessions (for `ferry status`).
    const std::map<std::string, std::shared_ptr<receive_session>>& sessions() const { return sessions_; }
    // Pulls peers asked for (Hello.pull), this node sending (for `ferry status`).
    const std::map<std::string, std::shared_ptr<send_session>>& pull_senders() const { return pulls_; }

    // Pending connections (before Hello).
    void on_frame(connection& c, wire::Header& header, pooled_buffer payload) override;
    void on_send_ready(connection& c) override;
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
    // Before a connection is checked: the trust list read again if its file changed since
    // it was last read, with the configuration file's peers merged in as at start. One that
    // cannot be read leaves the list as it was (logged).
    void refresh_trust();
    // Hello.pull on connection 0: the peer asks to receive a folder of a share. Checked,
    // scanned on the worker pool, then sent by a send_session over the peer's connections.
    void start_pull(std::shared_ptr<connection> c, const wire::Hello& hello, const std::string& key);
    // A pull or a listing whose folder is to be scanned: false (turned away) when
    // max_waiting_scans wait already; else it waits in scanning_, and our Hello (with
    // `count` connections, CODEC_ZSTD when `zstd`) goes out now: the peer knows it was
    // taken and waits while the folder is scanned.
    bool take_scan(const std::shared_ptr<connection>& c, const wire::Hello& hello, std::uint32_t count, bool zstd);
    // Hello.list on connection 0 (`ferry ls`): checked as a pull, scanned on the worker
    // pool in its turn, answered with Offer batches, then closed.
    void start_list(std::shared_ptr<connection> c, const wire::Hello& hello);
    // Sends the listing `entries` on `c` (after our Hello) in Offer batches, as the
    // connection's queue drains (a listing of millions of entries is not queued at once),
    // then closes it.
    void send_listing(const std::shared_ptr<connection>& c, std::vector<entry_info> entries);
    // Queues the next batches of `c`'s listing while its queue is short; closes it after
    // the last.
    void pump_listing(connection& c);
    // A listing with ListRequest.checksum: its one file (open) is read and hashed on a
    // worker, outside the scan slot, then the listing goes out with the digest. At most
    // max_digest_reads at once (more are told to come back: ERROR_BUSY); a read stops when
    // its connection closes.
    void list_with_digest(const std::shared_ptr<connection>& c, std::vector<entry_info> entries,
                          std::shared_ptr<unique_fd> file);
    static constexpr std::size_t max_digest_reads = 2;
    std::map<connection*, std::shared_ptr<std::atomic<bool>>> digest_reads_;
    struct listing {
        sender_machine batches;
        std::size_t next = 0;
    };
    std::map<connection*, std::unique_ptr<listing>> listings_;
    // Open connections of the peer with statistics key `key` (or of every peer: "").
    std::size_t peer_connections(const std::string& key) const;
    // Sends an Error frame on `c` and closes it once that is out. `why`: the refusal it
    // counts as (none: logged only, a request this node declines); `quiet`: neither.
    void turn_away(const std::shared_ptr<connection>& c, wire::ErrorCode code, const std::string& msg,
                   std::optional<refusal> why, bool quiet = false);
    void end_session(receive_session& s);
    void remember_ended(const std::string& session_id, const std::string& peer);
    void on_handshake(std::uint64_t seq, std::error_code ec, std::unique_ptr<byte_stream> stream,
                      const tls_peer_check& check);
    std::size_t connection_count() const;
    bool evict_oldest_waiting();
    std::map<std::uint64_t, waiting>::iterator find_waiting(const connection& c);
    // Counts a refusal and logs its line (throttled).
    void refused(refusal why, const std::string& line);

    node_context& ctx_;
    trust_stamp trust_seen_;
    std::map<std::uint64_t, waiting> waiting_;  // by arrival: the first is the oldest
    // Refused after their Hello, closing after the Error frame (at most connection::linger):
    // they still count as connections.
    std::set<std::shared_ptr<connection>> closing_;
    std::uint64_t next_seq_ = 0;
    log_throttle log_throttle_;
    std::map<std::string, std::shared_ptr<receive_session>> sessions_;  // by session id
    // The last sessions that ended (session id, peer ID), newest last: a connection the
    // peer dialed for one while it ended is turned away quietly, not as a refusal.
    std::deque<std::pair<std::string, std::string>> ended_;
    static constexpr std::size_t max_ended = 256;
    std::map<std::string, std::shared_ptr<send_session>> pulls_;         // by session id
    // Pulls (and lists) whose share is being scanned or waits to be: connection 0, until
    // its send_session starts or its listing is sent (at most max_waiting_scans). One scan runs at a time (it holds a
    // worker while it walks a folder; the other worker stays free for transfers).
    std::set<std::shared_ptr<connection>> scanning_;
    std::deque<std::function<void()>> scan_queue_;
    std::size_t scans_running_ = 0;
    static constexpr std::size_t max_waiting_scans = 16;
    static constexpr std::size_t max_running_scans = 1;
    void next_scan();
    // A scan for `c` ended (loop thread): the next one starts. True when `c` still waits
    // for its result (not closed, the node not stopping).
    bool scan_done(const std::shared_ptr<connection>& c);
    bool stopping_ = false;
    bool took_one_ = false;  // a one-shot node (`ferry receive`) began its one transfer
    std::shared_ptr<int> alive_ = std::make_shared<int>(0);  // weak copies: worker results check it
};

}  // namespace ferry
