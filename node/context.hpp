// node_context: what every part of a node shares. Owned by `node`, used on the loop
// thread (the worker pool and buffer pools are the thread-safe parts).
#pragma once

#include <algorithm>
#include <asio.hpp>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_set>
#include <vector>

#include "node/discovery.hpp"
#include "node/resume.hpp"
#include "node/source_tree.hpp"
#include "node/stats.hpp"
#include "protocol/path.hpp"
#include "protocol/transfer.hpp"
#include "node/trust_store.hpp"
#include "node/worker_pool.hpp"
#include "transport/buffer_pool.hpp"
#include "transport/connection.hpp"
#include "transport/identity.hpp"
#include "transport/socket_tuning.hpp"
#include "transport/tls.hpp"

namespace ferry {

// Exit codes shared by every command (docs/cli.md).
enum class exit_code : int {
    ok = 0,
    usage = 1,
    transfer_failed = 2,
    auth = 3,
    local_io = 4,
    partial = 5,    // done, but some source files could not be read (or changed while read)
    vanished = 6,   // done, but some source files vanished while the transfer ran
};

// What one finished transfer reports (either side).
struct transfer_report {
    bool ok = false;
    exit_code code = exit_code::transfer_failed;
    std::string error;            // one clear line when !ok
    // Not ok, ended by the peer that pulled it (ERROR_CANCELLED: it stopped, or `get --from`
    // had that range from another source): no fault of this node's.
    bool peer_cancelled = false;
    std::string peer_id;          // canonical
    std::string peer_address;
    std::uint64_t files = 0;      // regular files transferred
    std::uint64_t skipped_files = 0;  // already at the receiver (same size and mtime): not sent
    std::uint64_t skipped_bytes = 0;  // skipped files, and chunks of resumed files that were kept
    std::uint64_t resumed_bytes = 0;  // of those, bytes an interrupted attempt had left and that were kept
    std::uint64_t dirs = 0;       // directories created
    std::uint64_t total_files = 0;  // entries (files + dirs) in the transfer
    std::uint64_t total_dirs = 0;   // of those, folders (made or not; the receiving side's report)
    // The files (all but folders) in the transfer, failed ones included, as total_bytes
    // counts them: the last progress's files_total.
    std::uint64_t files_total = 0;
    std::uint64_t payload_bytes = 0;  // receiver-confirmed file bytes
    std::uint64_t total_bytes = 0;
    std::uint64_t wire_sent = 0;
    std::uint64_t wire_received = 0;
    std::uint64_t compression_saved = 0;  // payload bytes zstd kept off the wire
    // Of payload_bytes, what the receiver copied from its older version of the file (sync
    // deltas, CODEC_DELTA): confirmed, not sent.
    std::uint64_t delta_copied = 0;
    // What travelled of the confirmed payload: less what deltas copied.
    std::uint64_t travelled_bytes() const { return payload_bytes - std::min(payload_bytes, delta_copied); }
    // What was at the receiver already: skipped, kept, or copied by a delta.
    std::uint64_t matched_bytes() const { return skipped_bytes + delta_copied; }
    // Source files the sender skipped (vanished, changed while read, unreadable): the
    // transfer still succeeds without them (exit codes partial / vanished).
    std::vector<skipped_file> given_up;
    double elapsed_s = 0;
    std::uint32_t connections = 0;
    double ttfb_s = -1;  // start -> first confirmed (sent) or written (received) byte; -1: none
    // sync: what the receiver reported removing (or, in a dry run, would remove).
    std::uint64_t deleted_files = 0;
    std::uint64_t deleted_dirs = 0;
    std::string session_id;  // raw bytes
    bool connected = false;  // send: the receiver answered this session's Hello
    // send: the failure is the link's or the receiver's going away (connection lost, cannot
    // connect, receiver stopped or busy), which a later attempt may get past.
    bool retryable = false;
};

// A live transfer, as progress bars, `--json` progress events and `ferry status` show it.
// Read from the session's incremental counters: O(connections), never O(history).
struct transfer_progress {
    std::string direction;  // "send" or "receive"
    std::string session_id;
    std::string peer_id;
    std::string peer_address;
    std::uint64_t total_bytes = 0;      // payload of the whole transfer (skipped files included)
    std::uint64_t confirmed_bytes = 0;  // confirmed by the receiver (send) / verified and written (receive)
    std::uint64_t skipped_bytes = 0;    // already at the receiver: not sent
    std::uint64_t inflight_bytes = 0;   // sent, not yet confirmed (send only)
    std::uint64_t wire_sent = 0;
    std::uint64_t wire_received = 0;
    std::uint64_t files_total = 0;      // regular files
    std::uint64_t files_done = 0;       // regular files finished (skipped ones included)
    double rate = 0;                    // confirmed payload bytes/s over the last 5 s
    double elapsed_s = 0;
    std::uint32_t connections = 0;      // open now
    bool offered = false;               // the whole file list is known
};

// One file of a transfer starting or finishing (for `--json` file_start/file_done).
struct file_event {
    bool done = false;
    bool skipped = false;  // already at the receiver (done only)
    // sync: what the receiver does with the file (SYNC_NONE: not a sync, or unchanged).
    wire::SyncAction action = wire::SYNC_NONE;
    // Views into the reporter's and the transfer's own strings: valid during the call.
    std::string_view direction;  // "send" or "receive"
    std::string_view session_id;  // raw bytes
    std::string_view path;
    std::uint64_t size = 0;
    bool symlink = false;  // a sync's symlink (made as a link, no data), not a regular file
    // sync, done: the file was made at the receiver from its own file at this path (a
    // rename at SRC: that path is not in SRC), and no byte of it was sent. Empty otherwise.
    std::string_view renamed_from;
};

// Reports the files of one transfer to a file callback: each file (and a sync's symlink) once as
// started and once as done, in that order (an empty or skipped file gets its start right
// before its done). Costs nothing when nobody listens.
class file_reporter {
public:
    file_reporter(std::string direction, std::string session_id)
        : direction_(std::move(direction)), session_id_(std::move(session_id)) {}

    // The transfer's ID, once the peer chose it (a pull this node serves).
    void set_session(std::string session_id) { session_id_ = std::move(session_id); }

    void resize(std::size_t files) {
        if (started_.size() < files) {
            started_.resize(files, false);
        }
    }
    // `action`: what the receiver said it does with the file, where known (a sync's Accept).
    void started(const std::function<void(const file_event&)>& sink, file_id f, const entry_info& e,
                 wire::SyncAction action = wire::SYNC_NONE) {
        if (sink && !e.is_dir && !started_[f.value]) {
            started_[f.value] = true;
            emit(sink, e, false, false, action);
        }
    }
    void done(const std::function<void(const file_event&)>& sink, file_id f, const entry_info& e, bool skipped,
              wire::SyncAction action = wire::SYNC_NONE, std::string_view renamed_from = {}) {
        if (sink && !e.is_dir) {
            started(sink, f, e);
            emit(sink, e, true, skipped, action, renamed_from);
        }
    }

private:
    void emit(const std::function<void(const file_event&)>& sink, const entry_info& e, bool done, bool skipped,
              wire::SyncAction action, std::string_view renamed_from = {}) const {
        file_event ev;
        ev.renamed_from = renamed_from;
        ev.done = done;
        ev.skipped = skipped;
        ev.action = action;
        ev.direction = direction_;
        ev.session_id = session_id_;
        ev.path = e.path;
        ev.size = e.size;
        ev.symlink = e.is_link;
        sink(ev);
    }

    std::string direction_;
    std::string session_id_;
    std::vector<bool> started_;
};

enum class accept_policy {
    trusted,    // peers in the trust list
    from_id,    // one given ID (and trusted peers)
    any,        // anyone (explicit flag)
};

// A folder `ferry serve --share NAME=DIR[:ro|rw]` offers to trusted peers (docs/cli.md).
struct share_config {
    std::string name;
    std::filesystem::path dir;  // absolute, an existing folder
    bool writable = false;      // rw: peers may sync into it; ro (the default): read only
};

struct node_config {
    std::filesystem::path state_dir;
    std::filesystem::path inbox;
    std::vector<share_config> shares;  // `ferry serve --share`
    std::vector<std::string> listen{"0.0.0.0:7788"};  // HOST:PORT each (`ferry serve --listen`, repeatable)
    // Trusted peers the configuration file declares (tools/config.hpp), besides the state
    // folder's trust list; they are never written to it.
    std::vector<declared_peer> config_peers;
    accept_policy policy = accept_policy::trusted;
    std::string accept_from;  // canonical ID for accept_policy::from_id
    bool overwrite = false;
    bool fsync_each = false;
    bool plaintext = false;
    bool one_shot = false;  // `ferry receive`: stop after the first transfer
    // `ferry serve`: partial files (and resume records) in the inbox not written for this
    // long are removed, at start and then daily; 0 keeps them for ever.
    std::chrono::seconds partial_max_age{7 * 24 * 3600};
    socket_tuning tuning;
    // The longest one dial may take (resolve, TCP connect, TLS handshake) before it fails
    // as timed out: what a peer that drops every packet costs an attempt.
    std::chrono::milliseconds connect_timeout{15'000};
    std::size_t workers = 2;
    node_limits limits;
    // LAN discovery (node/discovery.hpp): off unless asked (`ferry serve` asks by default).
    discovery_config discovery;
};

// How much a log line matters, as syslog's priorities (the journal takes them as such).
enum class log_level : int { error = 3, warn = 4, info = 6 };

struct node_events {
    std::function<void(const std::string& address, const std::string& id)> listening;
    std::function<void(const std::string& peer_id, const std::string& address, std::uint32_t connections)> connected;
    std::function<void(const transfer_report&)> transfer_done;
    std::function<void()> session_ended;  // an incoming session closed its last connection
    // One line for the log, never one per chunk: a transfer's start and end, a refusal,
    // a lost connection. `level`: how much it matters (the CLI's --log-level filters).
    std::function<void(log_level level, const std::string& line)> log;
    // LAN discovery heard a node for the first time (or again after forgetting it), or
    // one said it leaves (`present` false).
    std::function<void(const discovered_peer&, bool present)> discovered;
    std::function<void(const file_event&)> file;  // null: not reported (costs nothing)
    // sync with --delete: a path the receiver removed (or, in a dry run, would remove).
    std::function<void(std::string_view path, wire::EntryKind kind)> deleted;
    // sync: a folder of SRC's, once the receiver took its batch. SYNC_CREATE: DST had no
    // folder at its path (made now, or in a dry run would be); else SYNC_NONE.
    std::function<void(std::string_view path, wire::SyncAction action)> folder;
    // A transfer found what an interrupted attempt left at the receiver: `bytes` of
    // `files` files are there already (each chunk's digest is checked before it is skipped).
    std::function<void(const std::string& direction, const std::string& session_id, std::uint64_t bytes,
                       std::uint64_t files)>
        resumed;
    // The trust list's file changed and was read again (`error` empty; `peers` trusted
    // now, the configuration file's included), or could not be (`error`: why; the list
    // read before stays).
    std::function<void(std::size_t peers, const std::string& error)> trust_read;
    // A pull (sync, get, a range of get --from) this node served ended: the serving side's
    // report, and what was pulled ("SHARE/PATH").
    std::function<void(const transfer_report&, const std::string& what)> pull_served;
};

struct node_context {
    asio::io_context& io;
    node_config config;
    node_events events;
    std::string id;  // this node's canonical ID
    trust_store trust;
    std::unique_ptr<tls_context> tls_client;  // null with --plaintext
    std::unique_ptr<tls_context> tls_server;
    worker_pool workers;
    std::shared_ptr<buffer_pool> buffers;  // chunk buffers for both directions
    node_stats stats;
    known_partials known;  // partial files of unfinished transfers, as this process wrote them
    // The files running transfers write, by destination path (shared: each receiving
    // session holds it too, and may outlive this context at shutdown).
    std::shared_ptr<partial_claims> claims = std::make_shared<partial_claims>();
    // Every connection this node opened or accepted and that still exists (a closing one
    // may outlive its session): what node::open_connections() counts.
    std::vector<std::weak_ptr<connection>> connections;
    // The longest the first dial of a transfer may take (connection 0, or a listing's):
    // config.connect_timeout, or less when a retry has less of its --retry-for left
    // (node::set_first_dial_timeout). The other connections of a transfer that got
    // through always get config.connect_timeout.
    std::chrono::milliseconds first_dial_timeout{0};  // 0: config.connect_timeout
    std::shared_ptr<connection> new_connection(std::unique_ptr<byte_stream> stream, connection_limits limits = {}) {
        auto c = std::make_shared<connection>(std::move(stream), buffers, limits);
        std::erase_if(connections, [](const std::weak_ptr<connection>& w) { return w.expired(); });
        connections.push_back(c);
        return c;
    }
    void log(const std::string& line, log_level level = log_level::info) const {
        if (events.log) {
            events.log(level, line);
        }
    }
};

// Says `f`'s failure as it happens (failed_line, a warning) and marks it said, so that a
// command's list at the end does not say it again.
inline void log_failed(const node_context& ctx, skipped_file& f) {
    ctx.log(failed_line(f), log_level::warn);
    f.logged = true;
}

// A sync's folders whose mode or mtime the receiver set, told of (events.folder,
// SYNC_UPDATE) once it has: each of `updates` (emptied) that `failed` does not name as not
// done at DST.
inline void tell_folder_updates(const node_events& events, std::vector<std::string>& updates,
                                const std::vector<skipped_file>& failed) {
    std::unordered_set<std::string_view> not_set;
    for (const skipped_file& f : failed) {
        if (f.at_dst) {
            not_set.insert(f.path);
        }
    }
    for (const std::string& path : std::exchange(updates, {})) {
        if (!not_set.contains(path)) {
            events.folder(path, wire::SYNC_UPDATE);
        }
    }
}

// A peer's node ID in a log line: written out as everywhere else (a user greps the logs
// for the ID `ferry id` printed), escaped should it not be one.
inline std::string log_id(const std::string& id) { return printable(format_node_id(id)); }

// A peer this node dialed without an ID to expect (`expected_id` empty) that is not on the
// trust list: its ID is taken on faith, so the user is told it (`who`: "peer",
// "receiver"; `pin`: how to pin it, as the command spells a peer).
inline void warn_unverified(const node_context& ctx, bool tls, const std::string& expected_id,
                            const std::string& peer_id, std::string_view who, std::string_view pin) {
    if (tls && expected_id.empty() && !ctx.trust.trusted(peer_id)) {
        ctx.log("warning: " + std::string(who) + " ID " + format_node_id(peer_id) + " is not verified (pin it with " +
                    std::string(pin) + " or `ferry trust`)",
                log_level::warn);
    }
}

// Whether the peer `peer_id` may use this node's share `name` (`write`: sync into it). ""
// with `*out` set to the share when it may; otherwise why not, as a line for the peer.
inline std::string share_access(const node_context& ctx, const std::string& peer_id, const std::string& name,
                                bool write, const share_config** out) {
    auto share = std::find_if(ctx.config.shares.begin(), ctx.config.shares.end(),
                              [&](const share_config& s) { return s.name == name; });
    if (share == ctx.config.shares.end()) {
        return "this node has no share named \"" + name + "\"";
    }
    if (std::optional<trusted_peer> peer = ctx.trust.find_id(peer_id); !peer || !peer->may_use(name)) {
        return "share \"" + name + "\" is not open to " + log_id(peer_id);
    }
    if (write && !share->writable) {
        return "share \"" + name + "\" is read-only";
    }
    *out = &*share;
    return {};
}

// A duration for a log line: seconds, 3 significant digits ("120", "0.5").
inline std::string seconds_text(std::chrono::duration<double> d) {
    char text[32];
    std::snprintf(text, sizeof text, "%.3g", d.count());
    return text;
}

// Time since `start` in seconds.
inline double seconds_since(std::chrono::steady_clock::time_point start) {
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

}  // namespace ferry
