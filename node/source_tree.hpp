// source_tree: what `ferry send` was asked to send, scanned into a transfer's entries.
//
// Folders are walked recursively (relative paths kept, the folder's own name first,
// empty files and folders included, symlinks skipped with a note); files are sent by
// their base name. Called before the transfer starts; reading the file bytes happens
// later on the worker pool.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <filesystem>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <system_error>
#include <type_traits>
#include <vector>

#include "protocol/exclude.hpp"
#include "protocol/path.hpp"
#include "protocol/transfer.hpp"

namespace ferry {

class worker_pool;

// A source path not sent: a file the sender gave up on during a transfer (FileAbort), or
// an entry its scan could not read (Offer.not_sent).
struct skipped_file {
    std::string path;
    std::string reason;
    bool vanished = false;  // gone from the source (else changed, or unreadable)
    // Changed or vanished while it was read: worth one more attempt. Not so for what this
    // user may not read, or what vanished before it was offered.
    bool again = false;
    // Not a source file's failure: DST could not take it (not written there, a folder or
    // symlink not made or looked at, a folder whose mode or mtime could not be set, a path
    // --delete could not remove).
    bool at_dst = false;
    // A file or symlink (counted in `failed_files`); false: a folder DST could not make or
    // finish, or a path --delete could not remove (`failed_other`).
    bool file = true;
    // How many paths this entry stands for: 1, or more for the "..." entry of paths a list
    // on the wire left out (only counted there).
    std::uint64_t count = 1;
    // Its line went to the log (a warning) as it happened: the list at the end leaves it
    // out where warnings are shown, instead of saying it twice.
    bool logged = false;
};
// The line a path that failed is said with, as it happens (a session's warning) and in a
// command's list at the end: "failed: PATH: reason" at DST, "not sent: PATH: reason" at SRC.
inline constexpr std::string_view failed_at_dst_prefix = "failed: ";
inline constexpr std::string_view not_sent_prefix = "not sent: ";
inline std::string failed_line(const skipped_file& f) {
    return std::string(f.at_dst ? failed_at_dst_prefix : not_sent_prefix) + printable(f.path) + ": " + f.reason;
}
// Whether a log line is one failed_line() made.
inline bool is_failed_line(std::string_view line) {
    return line.starts_with(failed_at_dst_prefix) || line.starts_with(not_sent_prefix);
}
// How many paths of `list` are files or symlinks (`file`), or the other paths.
inline std::uint64_t count_failed(const std::vector<skipped_file>& list, bool files) {
    std::uint64_t n = 0;
    for (const skipped_file& f : list) {
        n += f.file == files ? f.count : 0;
    }
    return n;
}

struct source_tree {
    source_tree() = default;
    source_tree(const source_tree&) = default;
    source_tree& operator=(const source_tree&) = default;
    // noexcept, so that a vector of parts (scan_feed) moves them when it grows rather than
    // copying every entry and path: std::deque's move may allocate, and a failure there
    // ends the program.
    source_tree(source_tree&&) noexcept = default;
    source_tree& operator=(source_tree&&) noexcept = default;

    std::vector<entry_info> entries;             // wire view, id = index
    // Local path of each entry (scan_sources; scan_get's relative to root_fd). Empty after
    // scan_contents: its entries are read through root_fd by their wire paths (200,000
    // paths not held twice), and local_prefix + wire path names one for a person.
    // A deque: a local path stays where it is while a streamed scan appends more (a read
    // on the worker pool holds it by address).
    std::deque<std::string> locals;
    std::size_t locals_base = 0;  // the id of locals.front() (trim_locals)
    std::string local_prefix;
    std::vector<std::string> skipped;            // notes on what was not sent (symlinks for send, specials), escaped
    std::vector<std::string> skipped_paths;      // their wire paths (`ferry sync` keeps them at DST)
    std::vector<std::string> skipped_notes;      // the notes by wire path, "PATH (why)" (a pull's puller is told)
    // Entries below a source the scan could not read (a folder or file this user may not
    // read, kept at DST as skipped_paths are) or that vanished while it was walked: left
    // out, reported as not sent (exit code partial or vanished), the rest sent.
    std::vector<skipped_file> unread;
    std::uint64_t total_bytes = 0;
    std::uint64_t excluded = 0;  // entries an exclude pattern left out (scan_contents)
    // The folder scan_contents walked (a pull's share folder, or SRC of a push), held open
    // while its entries are read: they are opened by their wire paths relative to it,
    // without following a symlink (file_io's open_read). Null after scan_sources.
    std::shared_ptr<const int> root_fd;

    // Where the entry `id`, of wire path `wire`, is read from: its local path when there
    // are locals (relative to root_fd when that is set: scan_get), else its wire path
    // relative to root_fd (the entries may have moved elsewhere: the caller passes it).
    const std::string& local(std::size_t id, const std::string& wire) const {
        // (Never a wire path taken as relative to the cwd.)
        return root_fd && locals.empty() && locals_base == 0 ? wire : locals.at(id - locals_base);
    }
    // The local paths of entries before `id` go (a send's files done with).
    void trim_locals(std::size_t id) {
        for (; locals_base < id && !locals.empty(); ++locals_base) {
            locals.pop_front();
        }
    }
};
static_assert(std::is_nothrow_move_constructible_v<source_tree>);

// A scan handed out as it goes, so that a send starts before its scan ends: parts in
// walk order, each taking up where the one before stopped (entries, their locals and
// skipped notes). The scan's threads put parts and finish; the loop takes them.
class scan_feed {
public:
    // `max_held` > 0: put() waits while that many entries or more were put and not let go
    // (let_go: the taker's entries done with), so that a scan far ahead of its transfer
    // does not hold the whole tree. 0: no limit (a pull's scan, taken whole when its
    // session starts).
    explicit scan_feed(std::uint64_t max_held = 0) : max_held_(max_held) {}
    // What a streamed send holds at most ahead of its files done with: some 5 MB of
    // entries with 40-byte paths (more with long paths, and a send's local paths), twice
    // the 16 Offer batches a sender has out with 40-byte paths, many times with long ones.
    // 32,768 measured as fast as 65,536 at 200,000 files, with 5 MB less (bench/RESULTS.md).
    static constexpr std::uint64_t default_max_held = 32768;
    // How long a put waits for room at most: the scan goes on after that whatever the
    // transfer does (a guard against waiting for good, not a pace).
    static constexpr std::chrono::seconds max_hold_wait{10};

    // The scan's side (any thread).
    void put(source_tree part);
    void finish(std::error_code ec, std::string error);
    bool cancelled() const { return cancelled_.load(); }
    const std::atomic<bool>& stop_flag() const { return cancelled_; }

    // The taker's side. `wake` runs, on a scan thread, each time a part comes or the scan
    // ends (it must post to the taker's loop); set once, before taking.
    void on_change(std::function<void()> wake);
    // The send ended: the scan stops at its next entry, nobody is woken.
    void cancel();
    // The taker is done with `n` of the entries put, in all (a count that only grows): a put
    // waiting for room may go on.
    void let_go(std::uint64_t n);
    std::uint64_t max_held() const { return max_held_; }
    struct taken {
        std::vector<source_tree> parts;
        bool finished = false;
        std::error_code ec;  // with finished: how the scan ended
        std::string error;
    };
    taken take();
    bool has_news() const;  // a part or the end is waiting
    void wait_news() const;  // blocks until has_news()
    std::uint64_t entries_put() const;  // so far, in all parts
    // Of those, the entries that are no folder, and what exclude patterns left out.
    std::uint64_t files_put() const;
    std::uint64_t excluded_put() const;

private:
    mutable std::mutex mutex_;
    mutable std::condition_variable news_;
    std::condition_variable room_;
    const std::uint64_t max_held_;
    std::uint64_t let_go_ = 0;
    std::vector<source_tree> parts_;
    std::uint64_t entries_put_ = 0;
    std::uint64_t files_put_ = 0;
    std::uint64_t excluded_put_ = 0;
    bool finished_ = false;
    std::error_code ec_;
    std::string error_;
    std::function<void()> wake_;
    std::atomic<bool> cancelled_{false};
};

// Moves what `from` holds (entries, locals, skipped notes, counts) to the end of `to`; and
// `to` without a root_fd takes `from`'s, with its local_prefix.
void append_part(source_tree& to, source_tree&& from);

// Scans `paths`. On failure `error` names the path and the reason. With `feed`, the
// entries go to it in parts as the walk goes (`out` keeps none; the caller finishes the
// feed with the outcome).
std::error_code scan_sources(const std::vector<std::filesystem::path>& paths, source_tree& out, std::string& error,
                             scan_feed* feed = nullptr);

// Scans what the folder `dir` holds (`ferry sync`): wire paths are relative to it, and
// entries `excludes` matches are left out with everything in them. A symlink is an
// entry of its own (is_link, its target read, never followed); special files are skipped. An empty folder gives
// no entries (not an error). On failure `error` names the path and the reason.
// The walk runs on several threads: the pool's workers (the caller's among them, when it
// is one) with `pool`, else threads of its own, one per core up to 4. `out` must be
// empty; it keeps `dir` open as its root_fd (unless the caller set one: the same folder).
// Not `recursive`: the folder's own entries only (`ferry ls`). With `feed`, the entries go
// to it in parts as the walk goes, as scan_sources' do, each part with the root_fd and
// local_prefix `out` would have had.
std::error_code scan_contents(const std::filesystem::path& dir, const exclude_set& excludes, source_tree& out,
                              std::string& error, worker_pool* pool = nullptr, bool recursive = true,
                              scan_feed* feed = nullptr);

// `ferry get`: the file or folder `name` of the open folder `parent` (a share's folder),
// offered as one entry named `as`, a folder with what it holds below it (walked as
// scan_contents walks, symlinks inside kept as links). `name` itself is never followed:
// a symlink or a special file there is refused. With `name` empty the folder `parent` is
// the one offered. The entries are read relative to out.root_fd by out.locals. Not
// `recursive`: a folder's own entries only (`ferry ls`).
std::error_code scan_get(std::shared_ptr<const int> parent, const std::string& name, const std::string& as,
                         source_tree& out, std::string& error, worker_pool* pool = nullptr, bool recursive = true);

// `ferry sync --delete`: what the scan skipped (special files, ferry's partial files) is
// not SRC's to delete at DST, so each path is added to `target`'s keep list (without
// --delete, nothing). When one cannot travel, or they would take the list over
// max_sync_keep_bytes, `target` is left as it was and the error line is returned;
// otherwise "".
std::string keep_skipped(const source_tree& sources, wire::SyncTarget& target);
// The check keep_skipped makes, for paths that travel later (Offer.keep: a streamed scan's):
// whether every path `sources` skipped can travel, `bytes` of such paths having gone
// already. "" (and `bytes` counts them too) or the error line.
std::string check_keep(const source_tree& sources, std::size_t& bytes);

}  // namespace ferry
