// multi_get: `ferry get --from PEER1,PEER2,...`: one file of a share, downloaded from
// several peers at once (docs/decisions.md, "Multi-source get").
//
// - Every source is asked for a listing of the file; those that list a regular file of
//   the size and mtime the first one listed are used (the others are named and left).
//   The first is also asked for the file's digest (ListRequest.checksum), read there
//   while the download runs.
// - The file is cut into ranges (protocol/range_schedule.hpp). Each range is a pull of its
//   own (SyncTarget.range_*) into a folder beside DEST, ".NAME.ferry-parts", each source
//   running up to two at once over its own connections: a faster source asks for its
//   next range sooner and carries more of the file. A range is verified as any pulled
//   file is (every chunk, then its digest), so a range that is there is whole.
// - A failed range goes to another source; a source that fails twice in a row is
//   dropped; in the end game idle sources also run the ranges still running elsewhere
//   and the first to finish wins (the other pull is cancelled).
// - As each range arrives, a worker copies it into DEST's partial file (".NAME.ferry-part")
//   at its offset, hashing every chunk, starts its writeback, then replaces the range's
//   file by its chunk digests ("rNNNNNN.sums"): the copy runs while the other ranges
//   download, and the file's pages reach the disk as they come, not all at the end.
// - Once every range is copied, the file digest over all chunk digests must equal the one
//   the first source read, or nothing is placed (sources that disagree never make a
//   mixed file). Then the file is fsynced, renamed into place and the parts folder
//   removed.
// - An interrupted get leaves the parts folder (with "source": the file's size and mtime
//   as listed) and the partial file: a rerun for the same version keeps the ranges
//   copied or downloaded there, and resumes the partial ones.
//
// Loop thread only; disk work runs on the node's worker pool.
#pragma once

#include <atomic>
#include <chrono>
#include <deque>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "node/context.hpp"
#include "node/file_io.hpp"
#include "node/list_client.hpp"
#include "node/send_session.hpp"
#include "protocol/range_schedule.hpp"

namespace ferry {

class node;

struct multi_get_source {
    std::string label;  // as the user named it
    send_target target;
    // Found by LAN discovery, not named: it is asked for the file digest with its listing,
    // and takes part only when that digest is the one the first source read.
    bool found = false;
};

struct multi_get_report {
    bool ok = false;
    exit_code code = exit_code::transfer_failed;
    std::string error;
    bool unchanged = false;  // DEST already held it (same size and mtime): nothing moved
    std::uint64_t size = 0;
    std::uint64_t payload_bytes = 0;  // range bytes received and verified (wasted end-game copies included)
    std::uint64_t kept_bytes = 0;     // what an earlier, interrupted get had left (ranges whole or begun)
    std::uint64_t wire_received = 0;  // over every range pull
    std::uint64_t wire_sent = 0;
    std::uint64_t ranges = 0;
    double elapsed_s = 0;
    std::string session_id;  // as in this get's progress events
    digest128 digest{};
    struct source {
        std::string label;
        std::string peer_id;  // canonical, once it answered
        bool used = false;    // it listed the same file and took part
        std::string note;     // why not used, or why dropped
        range_schedule::source_figures figures;
        std::uint64_t wire_received = 0;
    };
    std::vector<source> sources;
};

struct multi_get_spec {
    std::vector<multi_get_source> sources;
    std::string share;
    std::string path;  // the file, inside the share (not "")
    std::string name;  // the name it takes in `folder`
    std::filesystem::path folder;  // absolute; exists
    std::uint32_t connections = default_connections;  // per range pull
    bool zstd = true;
    bool compress_always = false;  // --compress always, asked of every source
    std::uint64_t max_rate = 0;  // over all sources (0: no limit)
    // The length of a range, a whole number of chunks (0: about 16 ranges a source, 8-64 MiB).
    std::uint64_t range_length = 0;
    std::function<void(const std::string&)> note;  // a line for the user (a source left, a range retried)
    std::function<void(const multi_get_report&)> done;
};

class multi_get : public std::enable_shared_from_this<multi_get> {
public:
    // At most this many range pulls per source at once: the next one's connections are
    // set up while the current one still moves data.
    static constexpr std::size_t pulls_per_source = 2;

    multi_get(node& n, multi_get_spec spec);
    void start();
    // The command is interrupted: what runs on the worker pool stops at its next step and
    // nothing is placed; the parts folder stays for a rerun.
    void stop() { stop_->store(true); }
    // The download as one transfer (for progress bars and events); nullopt before the size
    // is known.
    std::optional<transfer_progress> progress() const;

private:
    struct run {
        std::size_t range;
        std::string session_id;
        std::string name;  // its file in the parts folder (an end-game second runner's has its own)
        bool cancelled = false;  // another runner brought the range first
    };
    struct source_state {
        multi_get_source given;
        std::optional<std::size_t> index;  // in schedule_, once it listed the same file
        std::vector<run> runs;
        bool listed = false;  // its listing came (good or not)
        std::optional<entry_info> listing;  // the file, as it listed it
        bool digest_asked = false;
        exit_code code = exit_code::ok;  // why its listing failed
        multi_get_report::source figures;
    };

    void on_listed(std::size_t i, bool ok, exit_code code, const std::string& error, std::optional<entry_info> e,
                   const std::string& peer_id);
    void take_listings();
    // Asks source `i` for a listing of the file (with its digest read there when
    // `checksum`); `done` gets the report and the file's entry, if one came.
    void list_file(std::size_t i, bool checksum,
                   std::function<void(const list_report&, std::optional<entry_info>)> done);
    // Source `s` takes no part: `why` is its note, and told to the user.
    void leave_out(source_state& s, std::string why);
    // Cancels the range pulls `which` picks that are not cancelled yet.
    void cancel_runs(const std::function<bool(const source_state&, const run&)>& which, const std::string& why);
    // Asks the first source taking part and not asked yet for the file digest.
    void ask_digest();
    void prepare();  // worker: the parts folder, ranges already there, DEST as it is
    void fill();
    void start_range(std::size_t i, std::size_t r);
    void on_range_done(std::size_t i, const std::string& session_id, const transfer_report& report);
    void check_end();
    void copy_next();  // the next range that arrived, into the partial file
    void place();      // every range copied: check the digest, place the file
    void finish(bool ok, exit_code code, const std::string& error);
    // Hands the report over once no pull is left running (and the parts folder is gone
    // when remove_parts_).
    void deliver();
    std::string range_name(std::size_t r) const;
    std::filesystem::path parts_dir() const;

    node& node_;
    multi_get_spec spec_;
    std::vector<source_state> sources_;
    std::chrono::steady_clock::time_point start_;
    // This get's own ID in its progress events (16 random bytes, as a transfer's session;
    // its range pulls have their own). The report carries it too, for the last event.
    std::string session_id_;
    // The file as the first source listed it.
    std::optional<entry_info> file_;
    std::optional<range_schedule> schedule_;
    std::vector<std::string> brought_;  // per range: the file in the parts folder that holds it
    // Per range file in the parts folder: its bytes this get has counted (kept from an
    // earlier get, or received and reported by a run of this one). A run that resumes from
    // the file reports what it found there; the part beyond these was brought by a run of
    // this get that failed before it reported it (payload), or, for the file's first run
    // here, left by an earlier get (kept).
    std::map<std::string, std::uint64_t> range_file_counted_;
    // The parts folder (held locked: one get --from per file and folder) and the file being
    // made in it ("file"), open while ranges are copied into it.
    std::shared_ptr<unique_fd> parts_fd_;
    std::shared_ptr<unique_fd> file_fd_;
    // Set by stop(): work on the pool skips what is left (nothing is placed after it).
    std::shared_ptr<std::atomic<bool>> stop_ = std::make_shared<std::atomic<bool>>(false);
    std::vector<digest128> chunk_digests_;  // the whole file's, as the ranges were copied
    std::size_t copied_count_ = 0;          // ranges copied into the file
    std::deque<std::size_t> to_copy_;
    bool copying_ = false;
    bool prepared_ = false;
    std::optional<digest128> digest_;    // the first source's reading of the file digest
    std::size_t digest_from_ = 0;        // the source asked for it
    bool asking_digest_ = false;
    bool placing_ = false;
    bool finished_ = false;
    bool delivered_ = false;
    std::size_t live_pulls_ = 0;  // range pulls whose session (or dial) still exists
    bool remove_parts_ = false;  // the file was placed, or its ranges proved wrong
    std::string last_error_;
    multi_get_report report_;
    // progress(): (when, bytes in) over the last 5 s, for the rate.
    mutable std::deque<std::pair<std::chrono::steady_clock::time_point, std::uint64_t>> rate_samples_;
};

}  // namespace ferry
