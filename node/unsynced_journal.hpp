// unsynced_journal: files a transfer renamed into place before their data was known to be
// on disk, so that after a crash or power loss they are re-verified, never trusted.
//
// Small files are not fsynced one by one: a transfer makes everything durable with one
// syncfs at its end (see docs/decisions.md, "Durability"). Until then a power loss may
// leave a renamed file empty or torn under its final name. So, before renaming a batch of
// such files, the receiver appends them (path, size, mtime, file digest) to its journal
// and fdatasyncs it; once the final syncfs has succeeded the journal is deleted. A journal
// that is still there when the next transfer into the same folder starts belongs to a
// transfer that never reached its sync: recover() re-hashes each listed file and removes
// the ones whose data did not survive, so the new transfer sends them again.
//
// One journal file per transfer in STATE/unsynced/, held with an exclusive flock while
// its transfer runs (a crash releases it), so concurrent transfers and other ferry
// processes sharing the state folder never recover a live journal. Records are
// length-prefixed and checksummed; a torn tail is ignored (its renames never happened).
// Thread-safe: called from worker threads.
#pragma once

#include <cstdint>
#include <filesystem>
#include <mutex>
#include <string>
#include <system_error>
#include <vector>

#include "protocol/types.hpp"

namespace ferry {

class dest_tree;

class unsynced_journal {
public:
    struct entry {
        std::string path;  // wire path under the root
        std::uint64_t size = 0;
        std::int64_t mtime_ns = 0;  // as the file system stored it
        digest128 digest;           // file digest (protocol/digest.hpp)
        std::uint64_t dev = 0;      // the partial file's inode, which the rename keeps:
        std::uint64_t ino = 0;      // recovery judges only that very file
    };

    // Serializes recovery (exclusive) against destination checks of other transfers
    // (shared), across threads and processes sharing the state folder: a transfer must
    // not decide "already there" about a file that a recovery is about to remove.
    class folder_lock {
    public:
        folder_lock(const std::filesystem::path& dir, bool exclusive);
        ~folder_lock();
        folder_lock(const folder_lock&) = delete;
        folder_lock& operator=(const folder_lock&) = delete;

    private:
        int fd_ = -1;
    };

    // A journal for one transfer into `root`; nothing is created before the first commit.
    unsynced_journal(std::filesystem::path dir, std::filesystem::path root);
    ~unsynced_journal();
    unsynced_journal(const unsynced_journal&) = delete;
    unsynced_journal& operator=(const unsynced_journal&) = delete;

    // Appends the entries and makes them durable (write, fdatasync). The caller renames
    // the files only after this returned success.
    std::error_code commit(const std::vector<entry>& entries);
    // The root's data has been synced: the journal is no longer needed and is removed.
    void discard();

    struct recovery {
        std::size_t journals = 0;            // abandoned journals for this root
        std::size_t verified = 0;            // files whose data matched
        std::vector<std::string> removed;    // files removed: their data did not survive
        std::vector<std::string> left;       // replaced or changed since: not ours to judge
    };
    // Re-verifies the files of every abandoned journal in `dir` for `tree`'s root, removes
    // those whose size or digest does not match, syncs, and deletes the journals. The
    // caller holds an exclusive folder_lock.
    static recovery recover(const std::filesystem::path& dir, dest_tree& tree, std::error_code& ec);

    // Record encoding (exposed for tests): one record per entry, and a header record.
    static std::string encode_header(const std::filesystem::path& root);
    static std::string encode(const entry& e);
    // The same record, added at the end of `out`.
    static void encode_into(const entry& e, std::string& out);

private:
    std::error_code open_locked();

    std::filesystem::path dir_;
    std::filesystem::path root_;
    std::filesystem::path file_;
    int fd_ = -1;
    std::mutex mutex_;
};

}  // namespace ferry
