// dest_tree: the receiver's view of its destination folder, safe against hostile paths.
//
// Every path is resolved component by component with openat(O_NOFOLLOW) from the root
// folder's fd, so a symlink anywhere under the root (planted before or during the
// transfer) is never followed and nothing is created outside the root. Data goes into a
// partial file beside the final name and is renamed into place only once verified; a new
// file written whole (verified before it is written) goes into a file with no name,
// linked to its final name instead (open_unnamed, link_final).
// Called from worker threads; the directory-fd cache is guarded by a mutex.
#pragma once

#include <sys/stat.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <shared_mutex>
#include <span>
#include <string>
#include <string_view>
#include <system_error>
#include <unordered_map>
#include <unordered_set>
#include <utility>
#include <vector>

#include "node/file_io.hpp"

namespace ferry {

enum class dest_errc {
    ok = 0,
    exists = 1,     // the destination exists and overwrite was not asked for
    not_a_dir = 2,  // a path component exists and is not a directory
    symlink = 3,    // a path component or the target is a symlink
    is_dir = 4,     // a file's destination is a directory
    too_deep = 5,   // folders nested deeper than a walk of DST goes (max_walk_depth)
    busy = 6,       // the partial file is another process's to write (its lock)
    special = 7,    // a FIFO, socket or device where a file or symlink goes (keep_kinds)
    changed = 8,    // the file here changed while the sync took it as it was (CODEC_SAME)
};
const std::error_category& dest_category() noexcept;
inline std::error_code make_error_code(dest_errc e) noexcept { return {static_cast<int>(e), dest_category()}; }

}  // namespace ferry

template <>
struct std::is_error_code_enum<ferry::dest_errc> : std::true_type {};

namespace ferry {

// True when `ec`, met writing or naming one file at DST, is that file's alone: its
// folder refuses this user, the file system refuses its name or size, another process
// writes its partial file, or something else took its place meanwhile. The transfer goes
// on without it. A full disk, an I/O error or a read-only file system are DST's own, and
// end the transfer.
bool file_level(std::error_code ec);
// True when `ec` (a system error) is this user's lack of rights: EACCES or EPERM.
bool not_permitted(std::error_code ec);

// True if `stored_ns` is `wanted_ns` as a file system that keeps steps of `step_ns`
// stores it (truncated). With step_ns 0 (not known) any of 1 ns, 100 ns, 1 us, 1 ms,
// 10 ms, 1 s or 2 s will do.
bool same_stored_mtime(std::int64_t stored_ns, std::int64_t wanted_ns, std::int64_t step_ns = 0);

// The step in which the file system holding the folder `dir_fd` stores modification
// times (1 for nanoseconds, up to 2 s for FAT), found by setting one on a file no one can
// see (O_TMPFILE) and reading it back; 0 where that cannot be done. Knowing it, a file
// whose mtime is a whole second at DST is not taken for SRC's file of that second plus a
// fraction: that is only so where the file system keeps whole seconds. A dest_tree probes
// each file system it compares a file on once, the first time.
std::int64_t probe_mtime_step(int dir_fd);

// Permission bits (07777), then the modification time, of the open file `fd`.
std::error_code set_mode_and_mtime(int fd, std::uint32_t mode, std::int64_t mtime_ns);

// A partial file started from an older version of its file (dest_tree::start_seed): the
// partial file is to hold the older version's first `bytes` bytes (it already does when
// `cloned`; else it is that long and its filler writes them). Closes both on destruction.
struct partial_seed {
    unique_fd basis;    // the older version, open for reading
    unique_fd partial;  // the partial file, open for writing (for reading when cloned)
    std::uint64_t bytes = 0;
    bool cloned = false;  // a reflink: the bytes are there already
};

// A new file written whole that has no name yet (dest_tree::open_unnamed): an O_TMPFILE
// file, named by dest_tree::link_final once it is verified and its journal entry is
// durable. Closed on destruction; a file closed unnamed is gone, leaving nothing behind.
// The process holds a bounded number of them (open_unnamed falls back beyond it).
class unnamed_file {
public:
    unnamed_file() = default;
    unnamed_file(unnamed_file&& o) noexcept : fd_(std::exchange(o.fd_, -1)) {}
    unnamed_file& operator=(unnamed_file&& o) noexcept {
        if (this != &o) {
            reset();
            fd_ = std::exchange(o.fd_, -1);
        }
        return *this;
    }
    unnamed_file(const unnamed_file&) = delete;
    unnamed_file& operator=(const unnamed_file&) = delete;
    ~unnamed_file() { reset(); }
    int get() const { return fd_; }
    void reset();
    // How many the process holds, and how many it may (a quarter of its descriptors, 16-4096).
    static int open_count();
    static int max_open();

private:
    friend class dest_tree;
    explicit unnamed_file(int fd) : fd_(fd) {}
    void forget();  // closed (or lost) elsewhere: uncounted, not closed
    int fd_ = -1;
};

class dest_tree {
public:
    // The deepest a walk of DST goes (prune, clear_folder, list_files): as deep as a wire
    // path can reach (max_path_bytes: 2048 one-byte names), so that whatever a sync makes
    // it can also walk. Down to walk_open_depth a walk keeps one open folder per level;
    // below, it opens each folder again from the root by its path when it needs it, so a
    // peer-made tree cannot run the node out of descriptors.
    static constexpr int max_walk_depth = 2048;
    static constexpr int walk_open_depth = 256;
    // A partial file locked by another open file (open_partial_file) is waited for this
    // long at most, 50 x 20 ms, then refused (dest_errc::busy).
    static constexpr int partial_lock_tries = 50;
    static constexpr std::chrono::milliseconds partial_lock_pause{20};

    // Opens (creating if needed) the root folder; root() is its canonical path. Throws
    // std::system_error on failure.
    explicit dest_tree(const std::filesystem::path& root);
    // A tree whose root is the open folder `root_fd` (owned from now on), known as `root`:
    // a folder opened through another tree (open_dir), so no symlink was followed to it.
    dest_tree(std::filesystem::path root, int root_fd);
    ~dest_tree();
    dest_tree(const dest_tree&) = delete;
    dest_tree& operator=(const dest_tree&) = delete;

    // A sync's tree (a mirror): a symlink at the final name of a file or folder that
    // comes, or a file where a folder comes, is replaced (renamed over, or removed before
    // the folder is made), never followed. Otherwise it is refused (dest_errc::symlink,
    // not_a_dir). Set before any use.
    void set_mirror(bool on) { mirror_ = on; }
    // A get's tree: a mirror that replaces a file by a file and a symlink by a file or
    // symlink, and nothing else: a file or symlink where a folder comes stays (not_a_dir,
    // symlink), as does a FIFO, socket or device where a file or symlink comes (special).
    void set_keep_kinds(bool on) { keep_kinds_ = on; }
    // With keep_kinds: what is at `name` in `dir_fd` now may not be replaced (a folder:
    // is_dir; a FIFO, socket or device: special), looked at again right before the
    // rename that would (the check pass may have been long before). Else nothing.
    std::error_code kept_kind_at(int dir_fd, const std::string& name) const {
        return keep_kinds_ ? unreplaceable_at(dir_fd, name) : std::error_code{};
    }
    // The same look for any rename that replaces only a file or symlink (get --from's).
    static std::error_code unreplaceable_at(int dir_fd, const std::string& name);
    // A tree a transfer receives into: a folder below the root that its owner (this
    // process, not root) may not look or write in is opened up while the tree works there
    // (make_accessible). Not for a tree that only finds a share's folder to send from: the
    // owner's modes say what may be read. Set before any use.
    void set_receiving(bool on) { receiving_ = on; }
    // A sync's DST folder, whose own mode is SRC's, set at the end (as rsync gives it): the
    // root is opened up as a folder below it is, so that a read-only SRC folder mirrored
    // once does not stop the next sync. (A share's own folder, or an inbox, keeps the
    // mode its owner gave it.) Set before any use.
    void set_root_mirrored(bool on) { root_mirrored_ = on; }

    // mkdir -p of a wire path inside the root (no symlinks followed). With `create` false
    // nothing is made: it checks that every component already there is a folder and not
    // a symlink (a missing one is fine: it would be created); `absent` (if given) then
    // tells whether the folder is not there yet. In a mirror, a file or symlink at the
    // folder's own name is removed first (or, with `create` false, would be): `replaced` (if
    // given) then tells what.
    struct removed_entry;
    std::error_code make_dir(std::string_view wire_path, bool create = true, bool* absent = nullptr,
                             removed_entry* replaced = nullptr);
    // Checks that a file may be written at `wire_path` (parents are created unless
    // `create_parents` is false; a missing parent then means nothing is in the way). A
    // regular file already there with this size and mtime sets `identical` (nothing to
    // send); the mtime matches if it is `mtime_ns` as a file system with coarser
    // timestamps stores it.
    // `exists` (if given) tells whether a regular file is there (identical or not), and
    // `mode_there` and `size_there` (if given) get that file's permission bits (07777) and
    // size. `special_there` (if given): a FIFO, socket or device is there instead (with
    // `overwrite` the new file's rename replaces it).
    std::error_code check_file(std::string_view wire_path, bool overwrite, std::uint64_t size, std::int64_t mtime_ns,
                               bool& identical, bool create_parents = true, bool* exists = nullptr,
                               std::uint32_t* mode_there = nullptr, std::uint64_t* size_there = nullptr,
                               bool* special_there = nullptr);
    // A sync's symlink at `wire_path` (parents created unless `create_parents` is false):
    // `exists` tells whether a file or a symlink is there (which make_link replaces),
    // `identical` whether it is a symlink holding `target` with this mtime. A folder
    // there is an error (dest_errc::is_dir).
    std::error_code check_link(std::string_view wire_path, const std::string& target, std::int64_t mtime_ns,
                               bool& identical, bool create_parents, bool& exists);
    // Makes the symlink `wire_path` -> `target` with this mtime: made under the partial
    // name, then renamed over whatever file or symlink is at the final name, so that the
    // name is always the old entry or the new link. Nothing is followed.
    std::error_code make_link(std::string_view wire_path, const std::string& target, std::int64_t mtime_ns);
    // Sets the permission bits of the regular file at its final name (no symlink followed).
    std::error_code set_final_mode(std::string_view wire_path, std::uint32_t mode);
    // Removes what lies under the root and is not kept (`ferry sync --delete`). `keep` is
    // asked about every entry (a wire path; is_dir): a folder kept is walked into (unless
    // kept whole); an entry not kept is removed with what is in it, except what `keep`
    // keeps there (a folder still holding something stays). Nothing is followed through a
    // symlink (a symlink is removed as itself), partial files and resume records
    // (is_partial_name) are left alone (their folder too), and folders nested deeper than
    // max_walk_depth levels are an error. With `dry_run` nothing is removed. `removed` gets
    // every path removed, a folder's contents before the folder. Stops at the first error,
    // with `failed_path` naming the entry it is about.
    struct removed_entry {
        std::string path;
        bool is_dir = false;
        bool is_link = false;  // a symlink (removed as itself)
    };
    enum class verdict { remove, keep, keep_whole };
    // `stale` (if given) says, for a wire path, whether the partial file and resume record
    // an earlier attempt left for that file in a kept folder go (unreported; not in a dry
    // run).
    // `taken` (if given) is handed `removed` each time prune_report_every more entries are
    // in it, and takes them (it is left empty): a long walk is told of as it goes.
    // `refused` (if given) gets each path this user may not remove or list (EACCES, EPERM,
    // EBUSY: a folder of another user's, a mount point), which stays, with the folders
    // holding it, and the walk goes on; without it the first such error ends the walk.
    static constexpr std::size_t prune_report_every = 1024;
    using refusal = std::pair<std::string, std::error_code>;
    std::error_code prune(const std::function<verdict(const std::string& path, bool is_dir)>& keep, bool dry_run,
                          std::vector<removed_entry>& removed, std::string& failed_path,
                          std::function<bool(const std::string& path)> stale = {},
                          std::function<void(std::vector<removed_entry>&)> taken = {},
                          std::vector<refusal>* refused = nullptr);
    // A sync's file or symlink whose name a folder takes at DST: removes that folder as
    // prune() would remove it (what `keep` protects stays), with ferry's own partial files
    // in it (an older attempt's: nothing below a file's path is offered), unreported; with
    // `keep` null only a folder empty but for those goes. A folder still there afterwards
    // (something kept in it) is dest_errc::is_dir. With `dry_run` nothing is removed, and `removed`
    // gets what would be.
    std::error_code clear_folder(std::string_view wire_path,
                                 const std::function<verdict(const std::string& path, bool is_dir)>& keep,
                                 bool dry_run, std::vector<removed_entry>& removed, std::string& failed_path);
    // The regular files under the root (wire path, size, mtime), in a stable order, at most
    // `max` of them: what a sync may copy from locally (a renamed or copied file). Nothing
    // is followed through a symlink, ferry's own files are left out, a folder that cannot
    // be read is passed over, and folders nested deeper than max_walk_depth are an error.
    // With `under`, only what the folder at that wire path holds (none when it is not a
    // folder).
    struct file_stamp {
        std::string path;
        std::uint64_t size = 0;
        std::int64_t mtime_ns = 0;
    };
    std::error_code list_files(std::size_t max, std::vector<file_stamp>& out, std::string& failed_path,
                               std::string_view under = {});
    // Opens the folder at `wire_path` (no symlink followed) and returns a descriptor of
    // its own, or -1 with `ec` set.
    int open_dir(std::string_view wire_path, std::error_code& ec);
    // Opens the regular file at its final name for reading. Returns an fd or -1 (ec set).
    int open_final_read(std::string_view wire_path, std::error_code& ec);
    // Removes the file at its final name if it is still inode `ino` of device `dev`
    // (absent or replaced since is fine: then nothing is removed).
    std::error_code remove_final(std::string_view wire_path, std::uint64_t dev, std::uint64_t ino);
    // Opens (creating, unless `create` is false) the partial file of `wire_path` for
    // writing. Returns an fd or -1 (ec set).
    int open_partial(std::string_view wire_path, std::error_code& ec, bool create = true);
    // The partial file of a file written whole at once (one chunk): created with its final
    // permission bits (the umask applies; prepare_final sets the exact mode if that
    // differs) and truncated (an earlier attempt may have left a longer one).
    int open_whole_partial(std::string_view wire_path, std::uint32_t mode, std::error_code& ec);
    // Starts the partial file of `wire_path` from the first `bytes` bytes of the final file
    // there: `ferry sync` then offers its chunks, and only the chunks that differ are sent.
    // A reflink where the file system has them (`cloned`); else an empty partial file of
    // that length, which the caller fills (resume.hpp's seeded_sums copies the bytes as
    // it reads them for their sums), and only while 64 MiB stay free beyond it (seeds
    // started before are filled, so the room they take is counted). Never
    // replaces a partial file already there. Null (and no partial file of its own left)
    // when it did not start one.
    // `from` (if not empty) names another file of the tree to start from instead (a
    // rename or copy detected by a sync).
    std::optional<partial_seed> start_seed(std::string_view wire_path, std::uint64_t bytes, std::string_view from = {});
    // Makes the partial file final: prepare_final(), then rename_final() (with `fsync_file`
    // the folder is fsynced too, so file and name are both durable).
    std::error_code finalize(std::string_view wire_path, int fd, std::uint64_t size, std::uint32_t mode,
                             std::int64_t mtime_ns, bool fsync_file, bool overwrite);
    // What the file system recorded for a prepared file: the mtime as stored (file systems
    // with coarse timestamps truncate it) and the inode, which the rename keeps.
    struct stored_file {
        std::int64_t mtime_ns = 0;
        std::uint64_t dev = 0;
        std::uint64_t ino = 0;
    };
    // Size, mode, mtime, optional fsync, close (the fd is closed in every case, unless
    // `keep_open`: then the caller closes it, also after an error).
    // `size_written`: exactly `size` bytes were written to a truncated file (no check).
    std::error_code prepare_final(int fd, std::uint64_t size, std::uint32_t mode, std::int64_t mtime_ns,
                                  bool fsync_file, stored_file* stored = nullptr, bool size_written = false,
                                  bool keep_open = false);
    // A file of `wire_path` to be written whole, with no name (O_TMPFILE in its folder,
    // parents made, mode & 0777): it spares the partial name and its rename, which on
    // tmpfs cost a receiver of many small files a sixth of its CPU. Empty (get() < 0) with
    // no error where it cannot be had: no O_TMPFILE on that file system, no way for
    // linkat to name an open file (by the descriptor: from kernel 6.10, or before with
    // CAP_DAC_READ_SEARCH; else by its /proc/self/fd link, where /proc is mounted), or
    // unnamed_file::max_open() held already; the caller writes a partial file instead.
    unnamed_file open_unnamed(std::string_view wire_path, std::uint32_t mode, std::error_code& ec);
    // New files written whole, many at once (open_unnamed, a write and prepare_final for
    // each, kept open): the opens go to the kernel in one io_uring submission and the
    // writes in a second (node/batch_reads.hpp), not two system calls a file. A file
    // `handled` has its outcome here (`file` open and prepared, `stored` set; or `ec`);
    // one not handled (no io_uring, no O_TMPFILE, unnamed_file::max_open() held) is left
    // to the caller's own way: open_unnamed, else a partial file.
    struct new_file {
        std::string_view wire_path;
        std::uint32_t mode = 0;
        std::span<const std::uint8_t> data;  // written from offset 0
        std::uint64_t size = 0;  // the file's (data is all of it, or the rest reads as zeros)
        std::int64_t mtime_ns = 0;
        bool handled = false;
        std::error_code ec;
        unnamed_file file;
        stored_file stored;
        std::chrono::steady_clock::duration write_time{};
    };
    void write_new_files(std::span<new_file> files);
    // Names the unnamed file `file` `wire_path` (linkat). A name already there:
    // dest_errc::exists, or with `overwrite` it is replaced as rename_final replaces it
    // (the file is linked under the partial name, then renamed over).
    std::error_code link_final(const unnamed_file& file, std::string_view wire_path, bool overwrite);
    // link_final for many files at once, none over an existing name (such a link fails
    // and is left to the caller's link_final, which may replace the name): those whose folder
    // this tree made (no partial file of an earlier attempt can be there) are linked and
    // closed in one io_uring submission (node/batch_reads.hpp) where linkat by descriptor
    // works. For each file: 0 named (its descriptor gone), 1 left to the caller's
    // link_final (not tried, or its link failed: the caller's attempt says why), or 2
    // failed in a way that leaves its descriptor unknown (released unclosed; report EIO).
    std::vector<int> link_new(std::span<unnamed_file* const> files, std::span<const std::string* const> wire_paths);
    // Renames the partial file to its final name (never over an existing one unless
    // `overwrite`); with `sync_dir`, fsyncs the folder so the new name is durable.
    std::error_code rename_final(std::string_view wire_path, bool overwrite, bool sync_dir = false);
    // Whether the folder at `wire_path` (there already) has other permission bits (all
    // 12 as root, else the 9 rwx bits) or another mtime (as this file system stores `mtime_ns`) than `mode` and
    // `mtime_ns`: what finish_dir will set. False when it cannot be looked at.
    bool folder_differs(std::string_view wire_path, std::uint32_t mode, std::int64_t mtime_ns);
    // Sets a directory's mode and mtime (after its contents are written); with
    // `keep_mode`, only its mtime. One that has both already is left as it is.
    std::error_code finish_dir(std::string_view wire_path, std::uint32_t mode, std::int64_t mtime_ns,
                               bool keep_mode = false);
    // A node that is not root writes into a folder below the root that it owns but may not
    // write to (a read-only folder an earlier transfer made, as SRC has it) as rsync does:
    // the folder gets its owner's write bit while the tree writes, and its mode back at
    // the end, unless finish_dir gave it SRC's. Gives each folder still changed its mode
    // back (also done when the tree goes).
    void restore_modes();
    // Makes everything written under the root durable (one syncfs).
    std::error_code sync_all();

    // Resume records (protocol/resume_state.hpp), kept beside the partial file as
    // resume_name(): written to a temporary name, fdatasynced, then renamed over the old
    // record, so a record is always whole. Nothing is followed through a symlink.
    std::error_code save_resume(std::string_view wire_path, std::string_view record);
    // The record's bytes; empty with no error when there is none.
    std::string load_resume(std::string_view wire_path, std::error_code& ec);
    // Removes the partial file and/or the record (absent is fine). A partial file another
    // process is writing (locked) is left, and its record with it.
    void remove_partial(std::string_view wire_path, bool data, bool record);
    // Opens the partial file of `wire_path` for reading; -1 with no error when absent.
    int open_partial_read(std::string_view wire_path, std::error_code& ec);
    // The partial file's size in bytes (0 when there is none).
    // `locked` (if given): whether another writer holds it (open_partial_file's lock).
    std::uint64_t partial_size(std::string_view wire_path, bool* locked = nullptr);

    const std::filesystem::path& root() const { return root_; }
    // Folders a tree keeps open at most (a cache): 256 to 2,048, by the process's limit
    // on open files; 256 once every tree's together pass an eighth of it.
    static std::size_t max_open_folders();
    // root() / wire_path as a string, as std::filesystem's operator/ gives it for a
    // non-empty relative path, without its parse (a claim's key, once or twice a file).
    std::string full_path(std::string_view wire_path) const;
    static std::string partial_name(std::string_view name);
    static std::string resume_name(std::string_view name);

private:
    // An open folder of the tree, closed when the cache and every handle have let go.
    struct open_folder {
        int fd = -1;
        // This tree made it: nothing of an earlier attempt is in it. (Another transfer
        // into the same share may leave a partial file of its own there, which naming a
        // file does not remove: a leftover, never taken for data, since a resume verifies.)
        bool made = false;
        std::once_flag write_once;  // made accessible for writing (others wait for it)
        std::atomic<std::uint64_t> last_use{0};
        explicit open_folder(int f);  // counted with every tree's (dest_tree.cpp)
        open_folder(const open_folder&) = delete;
        open_folder& operator=(const open_folder&) = delete;
        ~open_folder();
    };
    // A directory fd: the root's (owned by the tree) or a cached folder's, which stays
    // open while the handle lives even if the cache evicts it meanwhile.
    struct dir_handle {
        int fd = -1;
        std::shared_ptr<open_folder> folder;
    };
    // The directory `dir` (a wire path, "" = root), created (with the folders on the way)
    // if `create`. With `write` something is to be made or removed in it: it is made
    // accessible to its owner where it must be (make_accessible), once per tree, as is a
    // folder another one is made in; one only passed through or looked in is made
    // readable and searchable where it must be, and otherwise left as it is.
    dir_handle dir_fd(std::string_view dir, bool create, std::error_code& ec, bool write = false);
    // Whether the folder at `wire_path` ("": the root) has `mode` (all 12 bits; any with
    // `keep_mode`) and `mtime_ns` (as this file system stores it) already, or the mode
    // alone; `other` for one whose mode this process changed to write in it (hold_folder)
    // or that cannot be looked at.
    enum class folder_state { as_given, mode_as_given, other };
    folder_state look_at_folder(std::string_view wire_path, std::uint32_t mode, std::int64_t mtime_ns, bool keep_mode);
    // A process that is not root, in a folder below the root that it owns: the owner bits
    // `need` (r-x to look in it, rwx to write there) added where they lack, and the folder
    // held by this tree until restore_modes gives it its mode (its own, or SRC's from
    // finish_dir), as the last tree of the process using it. A folder written in is held
    // even when nothing was added, so that a transfer finishing there leaves it open to
    // another still writing. make_accessible for an open folder `fd`; open_up for the
    // folder `name` in `parent_fd` that could not be opened (true: its bits were added).
    void make_accessible(int fd, std::string_view path, mode_t need);
    bool open_up(int parent_fd, const std::string& name, std::string_view path, mode_t need);
    void hold_folder(std::string_view path, mode_t need, const std::function<bool(struct stat&)>& look,
                     const std::function<bool(mode_t)>& chmod);
    std::atomic<bool> restoring_{false};  // restore_modes runs: nothing is held again
    std::mutex loosened_mutex_;
    std::unordered_map<std::string, std::pair<dev_t, ino_t>> loosened_;  // by wire path
    // `again`: once more when the file it locked was named meanwhile by its writer.
    int open_partial_file(std::string_view wire_path, int flags, std::uint32_t mode, std::error_code& ec,
                          bool again = true);
    // lstat() of what is at the final name of `wire_path` (its folder made if
    // `create_parents`): `found` false, with no error, when nothing is (nor, without
    // create_parents, its folder). `dir` (if given) gets the folder it is in.
    std::error_code stat_final(std::string_view wire_path, bool create_parents, struct stat& st, bool& found,
                               dir_handle* dir = nullptr);

    std::filesystem::path root_;
    int root_fd_ = -1;
    // The mtime step of each file system met below the root (a mount inside DST may keep
    // whole seconds where the root keeps nanoseconds), probed where it is first needed.
    std::int64_t mtime_step(std::uint64_t dev, int dir_fd);
    std::mutex steps_mutex_;
    std::vector<std::pair<std::uint64_t, std::int64_t>> mtime_steps_;  // st_dev -> step (0: unknown)
    // The step found for `dev` already, or null (steps_mutex_ held).
    const std::int64_t* known_mtime_step(std::uint64_t dev) const;
    // How this tree's unnamed files get their names, from open_unnamed's probe.
    enum class unnamed_link { unknown, none, by_fd, by_proc };
    std::atomic<unnamed_link> unnamed_link_{unnamed_link::unknown};
    unnamed_link unnamed_how();  // probed on first use
    std::atomic<bool> mirror_{false};
    std::atomic<bool> keep_kinds_{false};
    std::atomic<bool> receiving_{false};
    std::atomic<bool> root_mirrored_{false};
    std::once_flag root_write_once_;  // the root made accessible for writing (root_mirrored_)
    struct path_hash {
        using is_transparent = void;
        std::size_t operator()(std::string_view s) const { return std::hash<std::string_view>{}(s); }
    };
    // Looked up by every file operation from both workers: shared for lookups. At most
    // max_open_folders() folders stay open; the least recently used quarter makes room.
    std::shared_mutex mutex_;
    std::unordered_map<std::string, std::shared_ptr<open_folder>, path_hash, std::equal_to<>> dirs_;
    // The folders this tree made (under mutex_): one the cache let go and opens again is
    // still one it made (open_folder::made), whose new files are linked in batches (a
    // tree of 27,000 folders holding a file each had every file named one by one, each
    // looked at for an earlier attempt's partial file first).
    std::unordered_set<std::string, path_hash, std::equal_to<>> made_dirs_;
    std::atomic<std::uint64_t> use_clock_{0};
};

}  // namespace ferry
