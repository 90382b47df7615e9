// send_session: one outgoing transfer over a session of N connections.
//
// Loop thread only. Opens connection 0 (TLS, the receiver's ID checked when given),
// exchanges Hello, sends the Offer batches and opens the other connections. Chunks are
// pulled, not pushed: whenever a connection has window room it takes the next chunk
// from the sender_machine, a worker reads and hashes it into a pooled buffer, and the
// result is queued on that connection as one gather write. The window counts chunks
// sent but not yet confirmed by the receiver (ChunkAck), so a fast connection carries
// more. Progress is only what the receiver confirmed.
#pragma once

#include <atomic>
#include <chrono>
#include <deque>
#include <functional>
#include <memory>
#include <set>
#include <span>
#include <mutex>
#include <optional>
#include <string>
#include <unordered_map>
#include <vector>

#include <asio/steady_timer.hpp>

#include "node/chunk_codec.hpp"
#include "node/context.hpp"
#include "node/source_tree.hpp"
#include "protocol/compression.hpp"
#include "protocol/exclude.hpp"
#include "protocol/transfer.hpp"
#include "transport/connection.hpp"
#include "transport/socket_tuning.hpp"

namespace ferry {

struct send_target {
    std::string host;
    std::string port;
    std::string expected_id;  // canonical; empty = any (a warning if not trusted)
};

// Dials `target` (TLS with this node's client identity, the peer's ID checked when
// given, or plaintext) with the node's socket tuning; `fn` runs on the loop thread.
// `first`: a transfer's first connection (or a listing's), bounded by
// node_context::first_dial_timeout; the others by node_config::connect_timeout.
void dial_peer(node_context& ctx, const send_target& target,
               std::function<void(std::error_code, std::unique_ptr<byte_stream>)> fn, bool first);
// Connection 0's dial begun before its send session (`ferry send` dials while it scans
// its sources): what the dial gave, held until the session takes it. A connection not
// taken within `hold` of being made is closed (cleanly, before any Hello: the receiver
// does not count it), so that a long scan does not run into the receiver's handshake
// timeout; the session then dials anew. Loop thread.
class early_dial : public std::enable_shared_from_this<early_dial> {
public:
    using result_fn = std::function<void(std::error_code, std::unique_ptr<byte_stream>)>;
    early_dial(node_context& ctx, send_target target, std::chrono::milliseconds hold);
    static std::shared_ptr<early_dial> start(node_context& ctx, const send_target& target,
                                             std::chrono::milliseconds hold = std::chrono::milliseconds(1000));
    // Runs `fn` with the dial's outcome: now if it is in, when it comes, or with a new
    // dial's once the connection was dropped. Once.
    void take(result_fn fn);

private:
    void on_dialed(std::error_code ec, std::unique_ptr<byte_stream> stream);

    node_context& ctx_;
    send_target target_;
    std::chrono::milliseconds hold_;
    asio::steady_timer expiry_;
    bool done_ = false;
    std::chrono::steady_clock::time_point done_at_;
    std::error_code ec_;
    std::unique_ptr<byte_stream> stream_;
    result_fn fn_;
};

// What a dial_peer that failed with `ec` means: exit_code::auth when the peer proved
// another ID than `target` expects, else transfer_failed; and the line that says so,
// naming the peer as `role` ("receiver", "peer").
std::pair<exit_code, std::string> dial_failure(std::error_code ec, const send_target& target, const std::string& role);

// Chunk digests of the sources, kept by `ferry send` across its attempts (--retry-for):
// a resumed attempt does not read and hash again the chunks the receiver kept when an
// earlier attempt hashed them already (and the file has not changed since). Loop thread.
struct digest_memo {
    std::vector<chunk_bitmap> known;  // per entry (empty until one of its chunks is hashed)
    std::vector<std::vector<digest128>> digests;
    void put(file_id f, chunk_index i, std::uint64_t chunks, digest128 d);
    bool get(file_id f, chunk_index i, digest128& d) const;
    void forget(file_id f);
};

struct send_options {
    std::uint32_t connections = default_connections;
    // The connections above the first are opened only when the path calls for them
    // (`--connections` not given): a long round trip or losses on connection 0
    // (path_calls_for_more_connections), looked at when the receiver's Hello is in and
    // every half second after. On a short clean path (a LAN, loopback) one connection
    // carries what the ends can process, and each further one costs a TLS handshake and
    // its buffers on both sides (docs/decisions.md, "Extra connections when the path calls
    // for them"). False: all `connections` are opened at once.
    bool adaptive_connections = false;
    std::uint32_t widen_rtt_us = default_widen_rtt_us;  // the round trip that calls for them
    // When the transfer began, for its elapsed time and rates (`ferry send`: when the
    // command started, so that setting up and scanning the sources count too). Default:
    // when the session starts.
    std::optional<std::chrono::steady_clock::time_point> started;
    bool overwrite = false;
    bool fsync_each = false;
    // Per connection: bytes sent or being read and not yet confirmed by the receiver, at
    // first (each connection grows its own while it is the limit, up to window_chunks
    // chunks), and a cap on the number of such chunks so that many small files cannot pin
    // every pooled buffer.
    std::uint64_t window_bytes = 4 * 1024 * 1024;
    std::uint32_t window_chunks = 256;
    // Per connection: chunks being read by the workers (read-ahead).
    std::uint64_t read_ahead_bytes = 1024 * 1024;
    // zstd for chunks (protocol/compression.hpp); only used when the receiver decodes it.
    compress_mode compress = compress_mode::automatic;
    // A connection with chunks in flight that hears nothing from the receiver for this
    // long is taken for dead (a link that stalls without a reset) and closed.
    std::chrono::milliseconds stall_timeout{30'000};
    std::shared_ptr<digest_memo> memo;  // null: none
    // `ferry sync`: mirror into a share of the receiver instead of its inbox.
    std::optional<wire::SyncTarget> sync;
    // A pull's sender (start_accepted): the session fails when nothing comes from the
    // receiver for this long (0: never), so a puller that goes silent frees its slot.
    std::chrono::milliseconds idle_timeout{0};
    // --bwlimit: chunk payload bytes per second on the wire, over all connections (0: no
    // limit). Frame headers, acks and TLS records add a little on top.
    std::uint64_t max_rate = 0;
    // A get of one range of a file (SyncTarget.range_*): the session's one entry is the
    // range, read from `offset` of the file, whose whole size is `file_size` (what the
    // size re-checks compare with).
    struct source_range {
        std::uint64_t offset = 0;
        std::uint64_t file_size = 0;
    };
    std::optional<source_range> range;
    // Connection 0, dialed before the session (null: the session dials it). Taken by the
    // session's first dial only.
    std::shared_ptr<early_dial> dialed;
    // A scan still going (`ferry send`, `ferry sync`): its further entries come through the
    // feed and are offered as they come; the transfer ends only after the scan did. A
    // pull's (start_accepted) is finished: its parts after the first, taken at the start.
    // Null: the sources given are all there is.
    std::shared_ptr<scan_feed> feed;
    // What the feed's parts skipped (symlinks, special files), one note each (loop thread).
    std::function<void(const std::string&)> skipped_note;
};

class send_session : public connection_handler, public std::enable_shared_from_this<send_session> {
public:
    send_session(node_context& ctx, source_tree sources, send_target target, send_options options,
                 std::function<void(const transfer_report&)> done);
    ~send_session() override;

    void start();
    // A pull (Hello.pull): the receiver dialed this node and asked for `sources`.
    // Connection 0 is `c`, whose Hello is the receiver's; the receiver opens the others,
    // which join through add_connection. Lost ones are not reopened from this side.
    void start_accepted(std::shared_ptr<connection> c, const wire::Hello& hello);
    // A pull's connection 1..N-1 (its Hello named this session). Replies with our Hello.
    void add_connection(std::shared_ptr<connection> c, const wire::Hello& hello);
    // Connections open now (O(connections)).
    std::uint32_t open_connections() const;
    const std::string& session_id() const { return session_id_; }
    const std::string& peer_id() const { return peer_id_; }
    void cancel(const std::string& why);
    // The transfer as it stands (O(connections)).
    transfer_progress progress() const;
    bool finished() const { return finished_; }
    // The peer's statistics key (node_stats::peers); empty until the first connection.
    const std::string& peer_key() const { return peer_key_; }
    // Its connections, for `ferry status` (null or closed entries possible).
    std::vector<std::shared_ptr<connection>> connections() const {
        std::vector<std::shared_ptr<connection>> out;
        for (const auto& cs : conns_) {
            out.push_back(cs.conn);
        }
        return out;
    }

    void on_frame(connection& c, wire::Header& header, pooled_buffer payload) override;
    void on_send_ready(connection& c) override;
    void on_closed(connection& c, std::error_code ec) override;

private:
    struct source_file {
        std::mutex mutex;
        int fd = -1;
        std::uint64_t reads_left = 0;  // guarded by mutex; closes the fd at 0
        // The receiver's small sums, indexed by the first read that needs them (guarded by
        // mutex): only the files being read hold an index.
        std::shared_ptr<const small_index> small;
        // One read fewer to come (done, or not needed): the fd closes after the last.
        void read_done();
        // One more to come: a chunk requeued, or to be sent after all.
        void read_again();
        ~source_file();
    };
    struct inflight_chunk {
        stats_clock::time_point sent_at;  // handed to the connection
        std::uint32_t wire_len;           // payload bytes on the wire (compressed or raw)
        std::uint32_t copied = 0;         // CODEC_DELTA: bytes the receiver copies from its older version
        std::uint32_t raw_len = 0;        // the chunk's length (its file's entry may have gone: trim_entries)
    };
    struct conn_state {
        std::shared_ptr<connection> conn;
        // Chunks sent, not yet confirmed.
        std::unordered_map<std::uint64_t, inflight_chunk> inflight;
        std::uint64_t inflight_bytes = 0;
        // This connection's window: options.window_bytes, grown by adjust_window while it
        // is what holds the connection back, shrunk toward what is outstanding otherwise.
        std::uint64_t window_bytes = 0;
        bool window_bound = false;  // pump() stopped at the window with the socket taking more
        std::uint32_t reading = 0;
        std::uint64_t reading_bytes = 0;
        bool ready = false;  // Hello sent and the session accepted
        bool refused = false;  // the receiver turned it away (its limits): not a loss
        // Replacement of a lost connection: attempts since it last carried data, and the
        // backoff timer.
        unsigned failures = 0;
        std::shared_ptr<asio::steady_timer> reopen;
        stats_clock::time_point lost_at{};  // when it was lost, until a replacement carries data
        stats_clock::time_point heard{};    // its last frame from the receiver (or when it opened)
        // When its chunks in flight last went from none to some: a stall is silence since
        // then or since `heard`, whichever is later (not the quiet before, as --bwlimit
        // makes between chunks).
        stats_clock::time_point busy_since{};
        // Time the socket pushed back (pump() stopped with two chunks queued on it): since
        // when, if it does now, and how long before that since the last wire-rate sample.
        stats_clock::time_point pushed_back_since{};
        stats_clock::duration pushed_back{};
        // The socket takes no more for now: two chunks wait on it (pump() stops).
        bool socket_full() const { return conn && conn->queued_bytes() >= 2 * std::size_t{chunk_size}; }
    };
    // Closes connections that hold chunks and hear nothing for options_.stall_timeout.
    void check_stalls();
    // A lost data connection is reopened after 100 ms doubling up to 5 s (with jitter), and
    // given up after this many attempts in a row that carry nothing.
    static constexpr unsigned max_reopen_attempts = 8;
    // While a streamed scan goes on, an Offer goes out at least this often.
    static constexpr std::chrono::milliseconds scan_keepalive{1'000};
    void schedule_reopen(std::uint32_t index);

    void open_connection(std::uint32_t index);
    void on_connected(std::uint32_t index, std::unique_ptr<byte_stream> stream);
    // Takes `c` as connection `index` (replacing a lost one) and sends our Hello on it.
    // `reading`: its read loop runs already (an accepted connection): only the handler changes.
    void adopt(std::uint32_t index, std::shared_ptr<connection> c, bool reading = false);
    void on_hello(connection& c, const wire::Hello& hello);
    // The Offer batches not sent yet, one per turn of the loop (the receiver starts
    // checking the first while the rest are built), once the receiver's Hello is in.
    void send_offers();
    void flush_offers();  // sends offers_out_ up to the first still being compressed
    // Offer batches smaller than this go as they are (Packed saves too little on them).
    static constexpr std::size_t min_packed_offer_bytes = 1024;
    // Takes what the scan feed has: entries appended and offered, or the scan's failure.
    void take_scan();
    // The per-entry arrays grown to the machine's entries, and entries `from..` counted.
    void took_entries(std::uint32_t from);
    // What the scan could not read (`unread`, emptied): into the report, and the next Offer.
    void took_unread(std::vector<skipped_file>& unread);
    // Sync --delete: what a part of a streamed scan skipped (special files, what it could
    // not read) goes to DST as paths to keep (keep_, for the next Offers), checked as
    // keep_skipped checks the first part's. False: too many of them, the sync failed.
    bool took_skipped(const source_tree& part);
    // The first Offer batch goes out and the other connections open (or, with
    // adaptive_connections, once the path calls for them: widen()).
    void begin_offers();
    // Whether connection 0's path calls for more connections (adaptive_connections):
    // path_calls_for_more_connections on its socket; false while it is lost.
    bool path_calls_for_more() const;
    // Opens connections 1.. once path_calls_for_more(), looking every widen_every.
    void widen();
    static constexpr std::chrono::milliseconds widen_every{500};
    // Sync --checksum: every file is read and hashed on the workers first, its digest
    // offered with it (Entry.digest) and its chunk digests kept in options_.memo (so no
    // chunk is hashed twice); then `then` (a push: connect; a pull: begin_offers). A file
    // that cannot be read goes without a digest (its read reports it).
    void checksum_pass(std::function<void()> then);
    std::function<void()> checksum_then_;
    void next_checksum_batch();
    std::deque<std::vector<std::uint32_t>> checksum_batches_;  // file ids, not posted yet
    std::size_t checksums_left_ = 0;  // checksum_pass() batches not done yet
    // Set when the session finishes: long worker jobs (checksum_pass) stop early.
    std::shared_ptr<std::atomic<bool>> cancelled_ = std::make_shared<std::atomic<bool>>(false);
    void pump(std::uint32_t index);
    void pump_all();
    // --bwlimit as a token bucket: each chunk is charged its length when its read starts
    // (what compression or a delta saves is refunded once it is known), the bucket may go
    // into debt, and pump() starts no read while in debt; a timer pumps again once the
    // debt is paid. The burst is a tenth of a second's
    // worth, and at least one chunk. False when pump() must wait.
    bool rate_allows();
    struct {
        double tokens = 0;
        stats_clock::time_point at{};
        std::unique_ptr<asio::steady_timer> timer;
        bool armed = false;
        stats_clock::duration held{};  // waits for tokens since the last wire-rate sample
    } rate_;
    // One chunk to read, hash (and compress) on the worker pool, and what came of it.
    struct read_job {
        chunk_ref ref;
        std::shared_ptr<source_file> file;
        const std::string* local = nullptr;
        int root_fd = -1;  // sources_.root_fd, or -1
        std::uint64_t expect_size = 0;  // the whole file's, as scanned
        std::uint64_t base = 0;         // where the entry's bytes start in the file (a range)
        int level = 0;  // zstd level, 0: none
        pooled_buffer buf;
        digest128 digest{};
        std::optional<digest128> same_as;  // the receiver's (receiver_same_as): no bytes go if `digest` is it
        std::shared_ptr<const small_sums> small;  // the receiver's (receiver_small_sums): a delta of them may go
        std::error_code ec;
        std::string what;
        compressed_chunk packed;
        std::vector<delta_op> ops;  // a sync's changed file: the chunk as copies and literals (if any copy)
        bool delta = false;         // packed holds the CODEC_DELTA payload
        // Every byte of the chunk is a copy: nothing to read, its digest (`digest`) is the
        // delta pass's.
        bool copies_only = false;
        // The chunk's digest as the delta pass read it, when `ops` are the pass's: the
        // bytes read now must be those (else the file changed since, and the ops, which
        // copy where the pass found the older version's blocks, would rebuild other bytes).
        std::optional<digest128> scanned;
        bool changed = false;  // they were not
        // A whole small file read by read_whole() beforehand: its bytes, or < 0 (not read
        // there: read_source reads it).
        long prefetched = -1;
        // Read whole in one go (its size plus one byte, to see it grew), not in parts.
        bool whole() const {
            return !copies_only && base == 0 && ref.offset == 0 && ref.length == expect_size &&
                   ref.length < buf.capacity();
        }
    };
    // Small files are read this many to a pool task at most (a batch also ends at one
    // chunk's worth of bytes).
    static constexpr std::size_t max_batch_reads = 32;
    read_job make_read_job(const chunk_ref& ref, pooled_buffer buf);
    static void read_source(read_job& job);  // on a worker
    // A changed chunk's ops whose first or last literal is part of a block of the
    // receiver's older version that straddles the chunk's edge (protocol/delta.hpp's
    // take_edges): the bytes past the edge read from `fd`, on a worker.
    static void take_edges(read_job& job, int fd, const small_index& index);
    // The batch's whole small files not open yet, read in one io_uring submission (on a
    // worker; node/batch_reads.hpp).
    static void prefetch_whole(std::span<read_job> jobs);
    // Opens a source file for reading (on a worker): `path` as file_io's open_read takes
    // it with `root_fd`. With `check_size`, a size other than the scan's is an error (`ec`,
    // `what`); the fd is returned all the same (or -1).
    static int open_source(int root_fd, const std::string& path, std::uint64_t expect_size, bool check_size,
                           std::error_code& ec, std::string& what);
    // A pull's share folder (sources_.root_fd; its locals are relative to it), or -1.
    int root_fd() const { return sources_.root_fd ? *sources_.root_fd : -1; }
    // The size of the file entry `e` is read from (its range's file, for a range get), and
    // where its bytes start there.
    std::uint64_t file_size(const entry_info& e) const { return options_.range ? options_.range->file_size : e.size; }
    std::uint64_t file_base() const { return options_.range ? options_.range->offset : 0; }
    // Where file `f` is read from (relative to root_fd() when that is set). Stable: the
    // session's sources and machine_'s entries never change.
    const std::string& local_path(file_id f) const { return sources_.local(f.value, machine_.entry(f).path); }
    void post_reads(std::uint32_t index, std::vector<read_job> jobs);
    void on_read(std::uint32_t index, read_job& job);
    // A chunk the receiver has, whose digest options_.memo knows: no read. False when the
    // memo does not know it (or the file changed since the scan).
    bool hashed_from_memo(const chunk_ref& ref);

    // A file the receiver sent weak sums for (a sync's changed file): one pass over it on
    // a worker finds the receiver's blocks at any offset (protocol/delta.hpp) and hashes
    // every chunk. Its chunks wait (parked) until the pass is done; then the digests come
    // from it, and the chunks to send carry their copy/literal ops.
    struct delta_scan {
        bool done = false;
        std::vector<chunk_ref> parked;
        std::vector<digest128> digests;  // per chunk of the file
        std::vector<block_match> matches;
        std::error_code ec;
        std::string what;
    };
    // At most this many passes run (or wait for a worker) at once: chunks of further such
    // files wait in the machine's queue.
    // (One pass at a time: it splits itself over the workers, run_parts, between their other tasks.)
    static constexpr std::size_t max_delta_scans = 1;
    // Takes `ref` if it is a chunk of such a file (parked, or hashed from the pass); false
    // when it is read as usual. Sets `stop` when pump() must stop here for now.
    bool delta_ref(const chunk_ref& ref, bool& stop);
    void on_scanned(file_id f, const std::shared_ptr<delta_scan>& scan);
    // Consecutive chunks of one file that the pass found made of copies alone go to the
    // receiver in one ChunkRun frame (protocol 20), not in a Chunk frame each: pump()
    // gathers them here, with no read, and sends the run before it returns.
    struct pending_run {
        file_id file;
        std::uint32_t first = 0;  // the run's chunks: first .. first + chunks.size() - 1
        struct chunk {
            chunk_ref ref;
            digest128 digest;
            std::vector<std::uint8_t> entry;  // its ChunkRun entry (encode_run_entry)
        };
        std::vector<chunk> chunks;  // as they came: in index order, or the reverse
        pooled_buffer buf;          // max_run_payload bytes
    };
    // Takes `ref` into `run` (the run sent first when `ref` does not continue it at either
    // end: the chunks on_scanned puts back come last first) if it is such a chunk; false when it is read
    // as usual.
    bool add_to_run(conn_state& cs, const chunk_ref& ref, pending_run& run);
    // Sends the run's chunks: a ChunkRun frame, or one chunk's own CODEC_DELTA frame.
    void send_run(conn_state& cs, pending_run& run);

    // Sends a file's FileDone, unless the file changed or vanished since the scan (a size
    // or mtime that moved): then it is given up on instead.
    void send_file_done(file_id f, wire::FileDone done);
    // The file's delta pass is no longer needed (done, or given up on).
    void forget_scan(file_id f);
    // Skips one file that vanished, changed or cannot be read: FileAbort to the receiver,
    // its chunks in flight out of the windows, and a line in the report. `again`: one
    // more attempt may send it (FileAbort.again).
    void give_up(file_id f, bool vanished, const std::string& reason, bool again);
    // A file that could not be read (`ec`, `what`): given up on, as vanished when it is gone.
    void give_up_unread(file_id f, std::error_code ec, const std::string& what);
    // What give_up() does here for a file the machine gave up on (by this side's choice,
    // or `at_dst` the receiver's): its chunks in flight out of the windows, a line in the
    // log and the report.
    void let_go(file_id f, const std::string& reason, bool vanished, bool again, bool at_dst = false);
    // A chunk hashed (read, or from the memo): the machine learns its digest; a FileDone
    // that releases goes out, and a chunk the receiver has with other bytes is read again.
    void on_hashed(const chunk_ref& ref, digest128 digest);
    void requeue_inflight(conn_state& cs);
    void adjust_window(conn_state& cs, std::uint64_t acked);
    // Every quarter second or so, tells compression_ what the sockets accepted since.
    void sample_wire_rate();
    // The largest share of the period since `from` in which one connection's socket
    // pushed back, or --bwlimit held reads back (for compression_policy: the network or
    // the limit, not file work, was what held the transfer).
    double link_busy(stats_clock::time_point from, stats_clock::time_point now);
    // `retryable`: see transfer_report::retryable.
    void fail(exit_code code, const std::string& message, bool tell_peer = true, bool retryable = false);
    void finish(bool ok, exit_code code, const std::string& error);
    // Whether DST keeps `path` after this sync: SRC offered it, or excluded it (a file made
    // from DST's copy there is a copy, not a rename).
    bool still_at_dst(std::string_view path);
    // Files whose entry (and local path) a task on the pool, or its completion, still
    // reads: a read job (until on_read) or a delta scan (until on_scanned); once per task.
    std::multiset<std::uint32_t> pinned_;
    // The machine's entries of files done with go, but those pinned_ (and every one after),
    // with their local paths; a scan waiting for room (scan_feed::let_go: the entries done
    // with so far) goes on.
    void trim_entries();
    // A sync's exclude patterns and the paths to keep so far (made on first use).
    exclude_set& dst_keeps();
    // Files made from DST's copy whose result came while the scan still went: whether
    // each was a rename is known once it ends.
    struct maybe_renamed {
        file_id id;
        entry_info entry;  // a copy: the machine's may go before the scan ends (trim_entries)
        wire::SyncAction action;
        std::string from;
    };
    std::vector<maybe_renamed> maybe_renamed_;
    void report_maybe_renamed();  // each as a rename or not, as far as the scan went

    node_context& ctx_;
    source_tree sources_;  // its entries are moved into machine_: locals and totals stay here
    send_target target_;
    send_options options_;
    std::function<void(const transfer_report&)> done_;
    sender_machine machine_;
    std::string session_id_;
    std::vector<conn_state> conns_;
    // Made by file() when first needed, gone with the file's result: the files in flight.
    std::unordered_map<std::uint32_t, std::shared_ptr<source_file>> files_;
    const std::shared_ptr<source_file>& file(file_id f);
    std::string peer_id_;
    std::string peer_address_;
    std::string peer_key_;
    std::shared_ptr<stats_scope> scope_;  // this transfer; parent: the peer's scope
    file_reporter file_events_{"send", session_id_};
    std::optional<exclude_set> excludes_;  // dst_keeps()
    // delta_ref(): by file id; null for a resumed file with no weak sums.
    std::unordered_map<std::uint32_t, std::shared_ptr<delta_scan>> scans_;
    std::size_t scans_running_ = 0;
    std::uint64_t delta_copied_ = 0;  // confirmed bytes receivers rebuilt from their older versions
    // Of those, ones whose ack came after their file's result: counted once the transfer
    // succeeds (a failed one's payload is what was acked: they are in neither).
    std::uint64_t copied_after_result_ = 0;
    std::vector<skipped_file> given_up_;
    std::vector<skipped_file> not_sent_;  // what the scan could not read, for the next Offer
    std::vector<std::string> folder_updates_;  // a sync's folders SYNC_UPDATE: told of with the TransferResult
    std::vector<std::string> skipped_notes_;
    std::uint64_t skipped_unlisted_ = 0;  // notes too long for a batch: only counted (Offer.skipped_more)  // what it left out with a note, for a puller (Offer.skipped)
    std::vector<std::string> keep_;       // sync --delete: paths to keep, for the next Offers (Offer.keep)
    std::size_t keep_bytes_ = 0;          // of those and the sync target's, in all
    std::uint64_t deleted_files_ = 0;  // sync: as the receiver reported them (Deleted)
    std::uint64_t deleted_dirs_ = 0;
    std::uint64_t regular_files_ = 0;
    double ttfb_s_ = -1;
    bool offers_sent_ = false;  // the receiver's Hello is in: Offers go out
    stats_clock::time_point offer_sent_at_{};  // the last Offer's (a streamed scan's keep-alive)
    bool offer_posted_ = false;   // send_offers() is due on the loop
    // Offer batches made and not yet handed to connection 0, in order: a Packed one waits
    // for its worker (ready), and the batches after it wait behind it.
    struct outgoing_offer {
        wire::Header h;
        pooled_buffer packed;        // h serialized, then compressed in place by a worker
        std::size_t raw_len = 0;     // of h serialized
        std::size_t packed_len = 0;  // 0: send h as it is
        std::uint64_t seq = 0;
        bool ready = true;
    };
    std::deque<outgoing_offer> offers_out_;
    std::uint64_t offers_made_ = 0;
    bool redial_first_ = false;  // connection 0 came from an early_dial: dialed again once if it dies before Hello
    bool accepted_ = false;  // a pull: the receiver dialed in (start_accepted)
    bool peer_cancelled_ = false;  // the puller ended it (transfer_report::peer_cancelled)
    bool retryable_ = false;  // the failure may pass (transfer_report::retryable)
    std::unique_ptr<asio::steady_timer> stall_timer_;
    std::unique_ptr<asio::steady_timer> widen_timer_;  // adaptive_connections: the next look
    bool widened_ = false;                              // connections 1.. opened
    std::vector<std::int8_t> memo_ok_;  // per entry: 0 unknown, 1 the memo may be used, -1 not
    bool waiting_buffer_ = false;
    bool finished_ = false;
    std::chrono::steady_clock::time_point start_;
    compression_policy compression_;
    struct {
        stats_clock::time_point at{};
        std::uint64_t wire_sent = 0;
    } wire_sample_;
};

}  // namespace ferry
