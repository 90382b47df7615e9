// Resume of interrupted transfers on the receiving side: what a partial file left by an
// earlier attempt still holds (find_resume, on the worker pool), what this process
// remembers of the ones it wrote (known_partials), and the sweep of abandoned ones. The
// records themselves are written by receive_session::checkpoint (dest_tree::save_resume);
// see docs/decisions.md, "Resume".
#pragma once

#include <chrono>
#include <cstdint>
#include <deque>
#include <filesystem>
#include <functional>
#include <map>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include <sys/stat.h>

#include "node/dest_tree.hpp"
#include "node/worker_pool.hpp"
#include "protocol/delta.hpp"
#include "protocol/resume_state.hpp"
#include "protocol/transfer.hpp"

namespace ferry {

// Files with fewer chunks than this are not checkpointed: they restart whole.
inline constexpr std::uint64_t resume_min_chunks = 4;
// True for a file (not a folder) large enough to resume: records, offers and digest memos
// are kept for these only.
inline bool resumable(const entry_info& e) { return e.is_file() && chunk_count(e.size) >= resume_min_chunks; }

// What this process verified and wrote into a partial file, kept when its transfer ended
// unfinished, so that a sender coming back while the node runs resumes without the
// partial file being read again (its chunks were hashed when they arrived). Only used if
// the partial file is untouched since: the same inode, size, mtime and ctime.
struct partial_stamp {
    std::uint64_t dev = 0;
    std::uint64_t ino = 0;
    std::uint64_t bytes = 0;
    std::int64_t mtime_ns = 0;
    std::int64_t ctime_ns = 0;
    bool operator==(const partial_stamp&) const = default;
};
partial_stamp stamp_of(const struct stat& st);

struct known_partial {
    partial_stamp file;
    std::uint64_t size = 0;     // the source version
    std::int64_t mtime_ns = 0;
    chunk_bitmap have;
    std::vector<digest128> digests;
};

// known_partials by destination path, bounded (oldest dropped first). Loop thread only.
class known_partials {
public:
    void put(const std::string& key, known_partial k);
    std::optional<known_partial> take(const std::string& key);

private:
    static constexpr std::size_t max_entries = 4096;
    static constexpr std::uint64_t max_chunks = 16u << 20;  // 256 MiB of digests
    std::unordered_map<std::string, known_partial> map_;
    std::deque<std::string> order_;
    std::uint64_t chunks_ = 0;
};

// The destination files each running transfer of this process writes, by their path: two
// transfers into one folder must never write one partial file together (two syncs of
// the same tree at once left files made of both: a soak test, 2026-12-04). A transfer
// claims a file before it touches its partial file, and gives the claim back once the
// file has its name (or all its claims when it ends); one that finds a file claimed by
// another is refused as busy (its sender retries later). A transfer also marks the
// folders it offers as in use, which other transfers may share: `--delete` of another
// transfer leaves what is claimed or in use (held_by_another). Thread-safe (claimed on
// the workers).
class partial_claims {
public:
    // Claims every path for `owner`, or none: the index of the first one another owner
    // holds, else nullopt (all free or `owner`'s already, and now `owner`'s).
    std::optional<std::size_t> claim_all(const std::vector<std::string>& paths, const void* owner);
    // Gives back `owner`'s claim of `path` (its file is written and named).
    void release(const std::string& path, const void* owner);
    // Marks folders as in use by `owner` (shared: never refused).
    void use_folders(const std::vector<std::string>& paths, const void* owner);
    // Gives back all of `owner`'s claims and marks, and forgets its `asked`.
    void release_all(const void* owner);
    // Whether an owner other than `owner` claims or uses `path` or a path below it.
    bool held_by_another(std::string_view path, const void* owner);
    // held_by_another, or `path` lies inside a folder an owner other than `owner` uses:
    // what that transfer has placed there (named, so no longer claimed) is still its own.
    bool within_another(std::string_view path, const void* owner);
    // What to call when another transfer wants a path `owner` claims (ask_holders): the
    // owner checks that its peer is still there, and gives its claims back if not. Called
    // on the asking thread: it must post to the owner's own.
    void set_asked(const void* owner, std::function<void()> asked);
    // Calls the `asked` of each owner other than `asker` that claims or uses `path` or a
    // path below it, or uses a folder `path` lies in.
    void ask_holders(const std::string& path, const void* asker);

private:
    std::mutex mutex_;
    std::map<const void*, std::function<void()>> asked_;
    // Ordered, so that what lies below a folder is found by one search.
    std::map<std::string, const void*, std::less<>> owners_;
    std::multimap<std::string, const void*, std::less<>> folders_;
};

struct resume_found {
    // The chunks the partial file holds and their digests (its bytes as they are now,
    // hashed here). Empty when there is nothing to resume.
    std::optional<chunk_bitmap> have;
    std::vector<digest128> digests;
    std::uint64_t kept_bytes = 0;
    std::uint64_t recorded = 0;   // chunks the record listed
    std::uint64_t repaired = 0;   // of those, chunks whose bytes no longer match: sent again
    std::uint64_t unrecorded = 0; // chunks written after the last record (a crash): the sender checks them
    std::uint64_t remembered = 0; // chunks taken from a known_partial, not read
    bool restarted = false;       // seed_instead, and the source changed since (size or mtime): partial data dropped
    bool no_record = false;       // seed_instead: nothing tells what the partial file holds (not read)
    std::string note;             // one line for the log, empty if nothing was found
};

// What an earlier attempt left for `e` at `e.path` in `tree`. A record of another source
// version, a missing, truncated or damaged one are not trusted: every complete chunk of the
// partial file is hashed as it is now and offered with that digest, which the sender
// compares with its own before it skips the chunk (a file grown since keeps what it had
// but a short last chunk).
// With `seed_instead`, a record of another source version drops the partial file instead.
// At most `max_claims` chunks are offered (the rest are sent again). The partial file's
// mtime is set to now, so that it does not look abandoned while the transfer runs.
// With `known` (from known_partials) for the same inode and source version, the chunks it
// lists are offered without being read.
// With `seed_instead` (a sync's changed file, whose own older version can seed it), a
// partial file that neither a record nor `known` lists chunks of is not read: `no_record`.
resume_found find_resume(dest_tree& tree, const entry_info& e, std::uint64_t max_claims = UINT64_MAX,
                         const known_partial* known = nullptr, bool seed_instead = false);

// A sync's changed (or renamed) file whose partial file was just started from its older
// version (`seed`, dest_tree::start_seed): copies that version's first seed.bytes into
// the partial file (unless cloned) while it reads them for their sums, over the pool's
// workers. Returns the sums of that older version for a delta (protocol/delta.hpp; at
// most max_basis_blocks of `e`'s size, and at most `max_claims` blocks), and in `claims`
// the chunks of `e` the partial file now holds as they are (a full block of the older
// version, or its short last block, in the same place), with their digests, at most
// `max_claims` (possibly none). Null when a file cannot be read or written (the caller
// removes the partial file). `basis_fd` gets the older version, open for reading: the
// delta copies from that very file (the caller owns it), whatever its name holds by then.
// A seed of no bytes and no partial file (only `basis` open) is read for its sums alone:
// nothing is copied, nothing claimed (a resumed file's basis).
std::optional<basis_sums> seeded_sums(const entry_info& e, partial_seed seed, worker_pool& pool,
                                      std::uint64_t max_claims, resume_found& claims, int& basis_fd);

// True for the names of partial files and resume records (dest_tree::partial_name,
// resume_name, and a record's temporary "~" name).
bool is_partial_name(std::string_view name);

struct sweep_result {
    std::uint64_t files = 0;  // removed
    std::uint64_t bytes = 0;
    std::vector<std::string> removed;  // relative paths, the first few
};

// Removes, under `root` (symlinks not followed), every partial file and resume record
// last written more than `max_age` ago: what transfers that never came back left.
sweep_result sweep_abandoned(const std::filesystem::path& root, std::chrono::seconds max_age);

}  // namespace ferry
