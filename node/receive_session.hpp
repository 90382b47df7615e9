// receive_session: one incoming peer session (N connections) and the transfer it carries.
//
// Loop thread only. Drives the sans-IO receiver_machine: Offer batches are checked
// against the destination on the worker pool (in order), chunks are verified (XXH3-128)
// and written there, and every result is posted back here, where acks are batched per
// connection and files are finalized (renamed into place) once their digest matches.
// Files that rely on the final syncfs for durability are renamed in batches, each batch
// first recorded in the session's unsynced_journal (see there).
// The session ends when every connection has closed; then on_end is called.
#pragma once

#include <chrono>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <unordered_map>
#include <unordered_set>
#include <vector>

#include "node/context.hpp"
#include "node/dest_tree.hpp"
#include "node/unsynced_journal.hpp"
#include "protocol/exclude.hpp"
#include "transport/socket_tuning.hpp"
#include "protocol/transfer.hpp"
#include "transport/connection.hpp"

namespace ferry {

// `ferry sync` from a remote SRC (a pull): this node dialed the peer (node::pull) and
// receives a folder of the peer's share into a local one.
struct pull_spec {
    // The peer's share and path, and this side's own delete, dry_run and exclude (the
    // peer's Offer must echo delete and dry_run, and keep these patterns first).
    wire::SyncTarget source;
    std::filesystem::path dest;  // the local folder, absolute; its parent must exist
    std::uint32_t connections = default_connections;
    // As send_options::adaptive_connections: connections 1.. are dialed only once
    // connection 0's path calls for them (round trip widen_rtt_us or more, or losses).
    bool adaptive_connections = false;
    std::uint32_t widen_rtt_us = default_widen_rtt_us;
    bool zstd = true;  // offer to decode zstd chunks (`--compress never`: no)
    bool compress_always = false;  // ask the peer to compress every chunk (`--compress always`)
    std::uint64_t max_rate = 0;  // --bwlimit: bytes per second the peer may send (0: no limit)
    // Dials connection `index` (1..connections-1) once the peer took the pull.
    std::function<void(std::uint32_t index)> open;
    std::function<void(const transfer_report&)> done;  // the report (not events.transfer_done)
    // Files are made durable (fsync, syncfs) before success is reported. Off for the
    // ranges of a multi-source get: only the file they make is (node/multi_get.hpp).
    bool durable = true;
    // A range get (source.range_length): the file's mtime as listed. The range offered must
    // have it, and be exactly range_length long: else the file changed at the peer.
    std::optional<std::int64_t> range_mtime_ns;
    // Held by the session while it lives: released once it is gone, when no task of it is
    // left on the worker pool (so nothing more is written in `dest`).
    std::shared_ptr<void> lifetime;
};

class receive_session : public connection_handler, public std::enable_shared_from_this<receive_session> {
public:
    // `peer_key`: the peer's statistics key (node_stats::peers): its ID, or its address.
    receive_session(node_context& ctx, std::string peer_id, const std::string& peer_key, std::string session_id,
                    std::function<void(receive_session&)> on_end);
    ~receive_session() override;

    // A connection whose Hello named this session. Replies with our Hello.
    void add_connection(std::shared_ptr<connection> c, const wire::Hello& hello);
    // Makes this session a pull (before its first connection): add_connection then takes
    // connections this node dialed, `hello` giving their index and count, and its Hello on
    // connection 0 asks for the pull.
    void set_pull(pull_spec spec) { pull_.emplace(std::move(spec)); }
    // A pull's data connection `index` could not be opened or was lost: it is dialed again
    // after a backoff (100 ms doubling to 5 s), up to 8 times in a row without data.
    void data_connection_lost(std::uint32_t index);
    // Stops the session (node shutdown): partial files are kept.
    void stop(const std::string& why);

    const std::string& session_id() const { return session_id_; }
    // The transfer as it stands (O(1)).
    transfer_progress progress() const;
    // Its report is out, or held until its work comes back (a failure).
    bool reported() const { return reported_ || held_report_.has_value(); }
    std::uint32_t open_connections() const { return open_conns_; }
    // Open connections of the session (null entries: not joined yet or closed).
    const std::vector<std::shared_ptr<connection>>& connections() const { return conns_; }
    const std::string& peer_id() const { return peer_id_; }
    const std::string& peer_key() const { return peer_key_; }

    void on_frame(connection& c, wire::Header& header, pooled_buffer payload) override;
    void on_send_ready(connection& c) override {}
    void on_closed(connection& c, std::error_code ec) override;

private:
    // Per-file write state shared with worker tasks.
    struct sink_file {
        std::mutex mutex;
        int fd = -1;
        // Why its partial file could not be opened (under `mutex`): the file's later writes
        // fail at once with it, and never open the name again (another process's partial
        // file, once that one is renamed, would be made anew and written to).
        std::error_code open_error;
        // Its partial file's descriptor, opened on first use (`mutex` held; `create`: made if
        // missing, else a resumed file's, which must be there); -1 with `ec` as the opening
        // failed, then and every time after.
        int partial_fd(dest_tree& tree, const std::string& path, bool create, std::error_code& ec);
        // One chunk write at a time per file: the file's lock in the kernel (i_rwsem) makes
        // a second writer spin on the CPU; waiting here it sleeps.
        std::mutex write_mutex;
        bool finalized = false;  // taken for its rename: no more resume records
        // Delta: the older version's final name, opened on the first CODEC_DELTA chunk to
        // copy from (basis_fd, under `mutex`; closed when the file is finalized).
        std::string basis;
        int basis_fd = -1;
        std::uint64_t basis_size = 0;
        // Loop thread only:
        bool resumed = false;        // accepted ACCEPT_PARTIAL: its partial file must exist
        std::uint32_t writes = 0;    // chunk writes in flight
        std::uint32_t whole = 0;     // whole-file writes in flight (write_whole_file)
        bool finalize_waits = false; // ready while writes were in flight: finalize after them
        bool drop = false;           // the sender gave up on it: its partial file goes after those writes
        bool pinned = false;         // basis_fd was handed over open (counted in pinned_bases_)
        bool checkpointing = false;  // a resume record is being written
        bool got_bytes = false;      // a chunk of it arrived
        wire::SyncAction action = wire::SYNC_NONE;
        std::string from;            // sync: the file of ours it started from (FileAccept.basis)
        ~sink_file();
    };
    // How often the resume records of files being written are brought up to date.
    static constexpr std::chrono::seconds checkpoint_interval{2};

    // Offer batches wait in queued_offers_ and are checked one per loop turn (at most
    // max_queued_offers wait: beyond that they are checked as they come).
    static constexpr std::size_t max_queued_offers = 8;
    // No batch is decided while this many accepted files are still to come: their sinks
    // and chunk state are what a tree of 200,000 files would otherwise hold all at once
    // (the sender has that many files' chunks to send meanwhile).
    static constexpr std::uint64_t max_files_in_progress = 8192;
    void queue_offer(wire::Offer offer);
    // A Packed frame: its Offer takes its place in queued_offers_ now, and is checked once
    // a worker has decompressed it (the batches behind it wait).
    void on_packed(const wire::Packed& packed, pooled_buffer payload);
    void post_offer_turn();
    bool take_offer();  // checks the first of queued_offers_ when it is there yet
    void on_offer(const wire::Offer& offer);
    void next_offer();
    void on_chunk(connection& c, const wire::Chunk& chunk, pooled_buffer payload);
    // Protocol 20: a run of chunks made of copies alone, each taken as its own Chunk frame.
    void on_chunk_run(connection& c, const wire::ChunkRun& run, pooled_buffer payload);
    // A chunk's checks before its write (payload_len: its payload's bytes): false when it is
    // not to be written (the transfer failed, or it is dropped or confirmed again here).
    bool admit_chunk(connection& c, const wire::Chunk& chunk, std::size_t payload_len);
    // The chunks of one ChunkRun being written, and those written so far (their acks wait
    // for the last).
    struct run_acks {
        std::size_t count = 0;
        std::vector<std::uint64_t> keys;
    };
    // Rebuilds (or decompresses), checks and writes a chunk of a file of several chunks on
    // the worker pool; `bytes` is its payload, which `owner` holds. With `acks`, its ack
    // waits for the rest of its run.
    void write_chunk(std::uint32_t conn, const wire::Chunk& chunk, std::shared_ptr<pooled_buffer> owner,
                     std::span<const std::uint8_t> bytes, std::shared_ptr<run_acks> acks = nullptr);
    // The sender gave up on a file: its partial file goes (drop_partial), the destination
    // keeps what it had, and the transfer goes on without it.
    void on_file_abort(const wire::FileAbort& abort);
    // This side could not write or name a file, for a reason of its own (file_level()):
    // the sender hears (FileResult not ok) and sends no more of it, its partial file goes,
    // DST keeps what it had there, and the transfer goes on without it (partial, exit 5).
    void give_up_here(file_id f, const std::string& path, std::error_code ec);
    // `drop`: its partial file goes (false: nothing of it was written by this transfer).
    void give_up_here(file_id f, const std::string& path, const std::string& why, bool drop = true);
    void drop_partial(file_id f);
    // The file's older version is about to be closed: one fewer held open.
    void unpin(sink_file& sink);
    void write_whole_file(std::uint32_t conn, const wire::Chunk& chunk, pooled_buffer payload);
    // Files of one chunk wait in whole_writes_ until the loop's current turn ends (or a
    // batch is full), then go to the pool together: one round trip for many small files.
    // While every worker has a batch, the next one grows until a batch comes back (or it
    // is full): busy workers take bigger batches, so fewer wake-ups and acks per file.
    struct whole_write;
    static void write_whole_batch(dest_tree& tree, std::span<whole_write> batch, bool fsync_now, bool overwrite);
    static constexpr std::size_t max_batch_writes = 64;
    std::size_t whole_batches_out_ = 0;
    void post_whole_writes();
    void on_whole_written(whole_write& w, bool fsync_now);
    void on_file_done(const wire::FileDone& done);
    void on_file_finalized(file_id f, std::error_code ec, const std::string& path);
    void try_finalize(file_id f);
    // A verified file (not fsynced) waiting in its partial file, or with no name in
    // `unnamed`: journal it, then rename or link it.
    // `partial`: the partial file's descriptor, closed (its lock let go) once it is named.
    void queue_rename(file_id f, digest128 digest, const dest_tree::stored_file& stored, unnamed_file unnamed = {},
                      unique_fd partial = {});
    void start_renames();
    // HaveDigests frames for the ACCEPT_PARTIAL decisions, sent before their Accept.
    // The write of chunk `key` is over: the other connections waiting for its ack.
    std::vector<std::uint32_t> written(std::uint64_t key);
    void send_have_digests(const std::vector<receiver_machine::decision>& decisions);
    // A chunk of a file large enough to resume was written: its record is due.
    void mark_dirty(file_id f);
    // Brings the resume records of the files written since the last one up to date (one
    // record in flight per file; a file whose record is being written waits its turn).
    void checkpoint();
    void arm_checkpoint();
    void on_payload_written(std::uint64_t bytes, std::uint64_t saved, stats_clock::duration write_time);
    std::filesystem::path journal_dir() const;
    void check_all_done();
    void queue_ack(std::uint32_t conn, std::uint64_t key);
    void flush_acks();
    // Ends the transfer with an Error frame to the sender. `counted`: the refusal it counts
    // as (node_stats::refusals); ERROR_PROTOCOL and ERROR_INTEGRITY count as protocol
    // unless told otherwise.
    void fail(wire::ErrorCode code, exit_code exit, const std::string& why,
              std::optional<refusal> counted = std::nullopt);
    void send_control(wire::Header& h);
    // The file's FileResult: ok, or not with `error` (give_up_here).
    void send_file_result(file_id f, const std::string& error = {});
    void finish_report(bool ok, exit_code code, const std::string& error);
    // A failed transfer reports, and a session whose connections all closed ends, only
    // once the writes and renames on the workers are back: a command that stops its loop
    // on the report would otherwise drop their results, and a verified file written
    // without a name would be gone instead of named (on_whole_written). Called where
    // that work comes back.
    void settle();
    bool work_out() const;
    // A sync's DST folder (not a share's own) gets SRC's mode at the end (check_all_done).
    bool root_mode_mirrored() const;
    // Ends the transfer once idle_timeout passes with no frame from the sender while this
    // side has no work of its own in flight.
    void arm_idle_timer(std::chrono::steady_clock::duration after);

    node_context& ctx_;
    std::string peer_id_;
    std::string session_id_;
    std::function<void(receive_session&)> on_end_;
    std::vector<std::shared_ptr<connection>> conns_;
    std::uint32_t open_conns_ = 0;
    std::string peer_address_;
    receiver_machine machine_;
    std::shared_ptr<dest_tree> tree_;
    std::shared_ptr<unsynced_journal> journal_;  // files renamed before the final sync
    // A file verified and prepared, waiting for the next batch of journal entries and names:
    // renamed from its partial name, or (a new file written whole) linked from `unnamed`.
    struct pending_name {
        file_id f;
        unsynced_journal::entry entry;
        unnamed_file unnamed;
        unique_fd partial;  // open and locked until the name is given (dest_tree::open_partial_file)
    };
    std::vector<pending_name> renames_;  // waiting for the next batch
    bool renaming_ = false;                      // a batch is being journaled and renamed
    bool journal_warned_ = false;
    // The files that come, by id, from their Accept until they are final.
    std::unordered_map<std::uint32_t, std::shared_ptr<sink_file>> sinks_;
    std::shared_ptr<sink_file> sink_of(file_id f) const {
        auto it = sinks_.find(f.value);
        return it == sinks_.end() ? nullptr : it->second;
    }
    std::deque<std::pair<std::vector<file_id>, std::uint64_t>> offers_;  // ids, bytes still to come
    bool offer_busy_ = false;
    std::vector<std::vector<std::uint64_t>> acks_;  // per connection
    bool ack_flush_posted_ = false;
    std::uint32_t finalizing_ = 0;
    std::uint32_t writes_ = 0;
    std::vector<whole_write> whole_writes_;
    struct queued_offer {
        wire::Offer offer;
        std::uint64_t seq = 0;  // order of arrival
        bool ready = true;      // false: still being decompressed (a Packed frame)
    };
    std::deque<queued_offer> queued_offers_;
    std::uint64_t offers_queued_ = 0;  // queued_offer::seq of the next
    bool offer_turn_posted_ = false;
    // Chunk keys with a write in flight -> other connections that sent the same chunk
    // meanwhile (each gets the ack too).
    std::unordered_map<std::uint64_t, std::vector<std::uint32_t>> writing_;
    bool need_syncfs_ = false;
    bool overwrite_ = false;
    // The destination: the inbox, or for `ferry sync` SHARE/path (set by the first batch).
    std::filesystem::path root_;
    std::filesystem::path share_dir_;  // sync: the share's folder, once the target is open ("" otherwise)
    std::shared_ptr<const exclude_set> excludes_;  // sync: never deleted (shared with the workers)
    // Sync: the paths to keep later batches added (Offer.keep), read only at the end of the
    // run (renames, --delete): merged into excludes_ then, once.
    exclude_set later_keeps_;
    std::size_t keep_bytes_ = 0;  // sync: the paths to keep so far (SyncTarget.keep, Offer.keep)
    // Sync: the files already under the sync's folder, where a new path may start from (a
    // rename or copy at SRC). Filled by the offer worker the first time it needs it.
    std::shared_ptr<struct local_basis> basis_;
    // A dry run's folders found missing (or in the way of a file or link), over all its
    // batches: a later batch's entries in them are not there either (nothing is made).
    std::shared_ptr<std::unordered_set<std::string>> dry_absent_;
    std::size_t pinned_bases_ = 0;  // older versions held open by sinks (basis_fd), roughly
    // The sync target (the first batch's), once open_sync_target took it; null otherwise.
    const wire::SyncTarget* sync_target() const { return share_dir_.empty() ? nullptr : &*machine_.sync(); }
    // Checks a sync target (share, access, patterns) and sets root_, share_dir_ and
    // excludes_. False (the transfer failed) when refused.
    bool open_sync_target(const wire::SyncTarget& target);
    // A batch's further paths to keep (Offer.keep) added to later_keeps_; false (the
    // transfer failed) when refused: no sync, over max_sync_keep_bytes in all, or not a
    // wire path.
    bool take_keep(const wire::Offer& offer);
    // Sync --delete: reports what the clean-up removed (Deleted frames on connection 0; a
    // pull's own events and counts), counting `told` more, told of already as the walk
    // went (send_deleted), or without counting (tell_deleted: such a part). One log line
    // counts them all, at the end (finish_report): not one a batch.
    void send_deleted(std::vector<dest_tree::removed_entry> removed, std::size_t told = 0);
    std::size_t deleted_count_ = 0;  // paths send_deleted reported, for its log line
    void tell_deleted(std::vector<dest_tree::removed_entry> removed);
    // A pull (set_pull), with what its report adds: files the sender skipped, paths
    // deleted, bytes rebuilt from older versions here. peer_hello_: the peer's Hello on
    // connection 0 came (the pull was taken).
    std::optional<pull_spec> pull_;
    bool durable() const { return !pull_ || pull_->durable; }
    bool peer_hello_ = false;
    bool data_conns_opened_ = false;
    // A pull's data connections: dialed once data is due and (adaptive_connections) the
    // path calls for them, looking every 500 ms.
    void open_data_connections();
    std::unique_ptr<asio::steady_timer> widen_timer_;
    bool offer_seen_ = false;
    struct redial {
        unsigned failures = 0;
        std::shared_ptr<asio::steady_timer> timer;
    };
    std::vector<redial> redials_;  // a pull's data connections, by index
    bool retryable_ = false;  // the failure may pass: lost connection, peer stopped or busy
    std::vector<skipped_file> given_up_;
    // Folders (and symlinks in them) this side may not make: listed with the
    // TransferResult's not_done, and in the report.
    std::vector<skipped_file> not_made_;
    std::uint64_t deleted_files_ = 0;
    std::uint64_t deleted_dirs_ = 0;
    std::uint64_t delta_copied_ = 0;
    // Files made from DST's own copy at `from`, with nothing sent: renamed if SRC no longer
    // has `from`, known once the last batch is in (check_all_done).
    struct maybe_renamed {
        file_id id;
        entry_info e;
        wire::SyncAction action = wire::SYNC_NONE;
        std::string from;
    };
    std::vector<maybe_renamed> maybe_renamed_;
    // The folders offered, for their modes and mtimes at the end (the machine forgets
    // entries once they are finished).
    std::vector<entry_info> dirs_;
    // A sync's folders whose mode or mtime finish_dir sets: told of (events.folder) once it
    // has, not when the batch is accepted (a run cut off before its end set nothing).
    std::vector<std::string> folder_updates_;
    std::string sync_path_;  // sync: the folder inside share_dir_ ("" = share_dir_ itself)
    void on_peer_hello(connection& c, const wire::Hello& hello);
    // A file in place: its `done` file event, with what the sync did.
    void report_done(file_id f);
    bool finishing_ = false;    // every file is in; folder metadata and durability are running
    bool result_sent_ = false;  // the TransferResult (success) went out
    bool failed_ = false;
    bool reported_ = false;
    bool ended_ = false;
    bool end_posted_ = false;
    std::uint32_t tasks_out_ = 0;  // finalize and drop tasks on the workers (settle)
    // fail()'s report, held until the work out comes back (settle).
    struct held_report {
        exit_code code;
        std::string message;
    };
    std::optional<held_report> held_report_;
    std::string peer_key_;
    file_reporter files_;
    std::shared_ptr<stats_scope> scope_;  // this transfer; parent: the peer's scope
    std::uint64_t files_done_ = 0;        // regular files renamed into place
    double ttfb_s_ = -1;
    std::chrono::steady_clock::time_point start_;
    std::chrono::steady_clock::time_point last_heard_;  // the sender's last frame (not a ping or pong)
    asio::steady_timer idle_timer_;
    // Another transfer wants a file this one claims, or a folder it writes into
    // (partial_claims::ask_holders): the sender gets a Ping, and the transfer ends if not
    // one byte comes from it within sender_answer_timeout (a sender stopped or cut off
    // without a FIN would otherwise hold its files until the idle timeout).
    void ask_sender();
    std::uint64_t asked_wire_ = 0;  // the session's wire bytes received (scope_) at the Ping
    static constexpr std::chrono::seconds sender_answer_timeout{5};
    std::chrono::steady_clock::time_point last_frame_;  // the sender's last frame of any kind
    std::chrono::steady_clock::time_point asked_at_;
    bool asking_ = false;
    std::uint64_t ping_nonce_ = 0;
    asio::steady_timer answer_timer_;
    std::unordered_set<std::uint32_t> dirty_;  // files written since their last resume record
    asio::steady_timer checkpoint_timer_;
    // The node's claims, held by the session itself: its last reference may go after the
    // node's context (a task posted to a stopped loop is destroyed with the io_context).
    std::shared_ptr<partial_claims> claims_;
    bool checkpoint_armed_ = false;
    bool checkpoint_warned_ = false;
};

}  // namespace ferry
