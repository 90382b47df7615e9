#include "node/dest_tree.hpp"

#include <dirent.h>
#include <fcntl.h>
#include <linux/fs.h>
#include <sys/file.h>
#include <sys/ioctl.h>
#include <sys/resource.h>
#include <sys/statvfs.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <chrono>
#include <limits>
#include <map>
#include <cstdio>
#include <cstdlib>
#include <ctime>
#include <thread>

#include "node/batch_reads.hpp"
#include "node/resume.hpp"
#include "protocol/path.hpp"

namespace ferry {

namespace {

class dest_category_impl final : public std::error_category {
public:
    const char* name() const noexcept override { return "ferry.dest"; }
    std::string message(int ev) const override {
        switch (static_cast<dest_errc>(ev)) {
            case dest_errc::ok: return "ok";
            case dest_errc::exists: return "destination exists (use --overwrite to replace it)";
            case dest_errc::not_a_dir: return "a path component exists and is not a directory";
            case dest_errc::symlink: return "refusing to write through a symlink";
            case dest_errc::is_dir: return "destination is a directory";
            case dest_errc::busy:
                return "its partial file is being written by another ferry process";
            case dest_errc::special:
                return "a FIFO, socket or device is there";
            case dest_errc::changed:
                return "changed at the destination while it was synced: left as it is there (the next run brings it)";
            case dest_errc::too_deep:
                return "folders nested deeper than " + std::to_string(dest_tree::max_walk_depth) + " levels here";
        }
        return "unknown destination error";
    }
};

std::error_code last_error() { return {errno, std::system_category()}; }

// The process's limit on open files (its soft limit, which node.cpp raises to the hard one
// first), for the bounds below: each taken once, at its first use.
rlim_t open_files_limit() {
    struct rlimit rl {};
    return ::getrlimit(RLIMIT_NOFILE, &rl) == 0 ? rl.rlim_cur : 1024;
}

}  // namespace

// Enough for an Offer batch's folders (a batch holds up to some 700 entries) to stay open
// from their check to their files' links (with 256, a tree of a folder per file opened
// each folder four or five times), within what the process may open (node.cpp raises the
// limit to its hard one).
std::size_t dest_tree::max_open_folders() {
    static const auto most = static_cast<std::size_t>(std::clamp<rlim_t>(open_files_limit() / 16, 256, 2048));
    return most;
}

namespace {

// The folders every tree of the process holds open (cached, or held by a handle): past an
// eighth of the open-file limit, a tree keeps no more than 256, as before the limit
// counted, so that many trees at once (a node's concurrent transfers) leave room for
// their sockets and files.
std::atomic<std::size_t> folders_open{0};

std::size_t folders_open_budget() {
    static const auto most = static_cast<std::size_t>(std::clamp<rlim_t>(open_files_limit() / 8, 512, 8192));
    return most;
}

// The times utimensat() takes to set the modification time (ns since the epoch) and
// leave the access time untouched.
std::array<struct timespec, 2> mtime_only(std::int64_t mtime_ns) {
    std::array<struct timespec, 2> times{};
    times[0].tv_sec = 0;
    times[0].tv_nsec = UTIME_OMIT;
    times[1].tv_sec = mtime_ns / 1'000'000'000;
    times[1].tv_nsec = mtime_ns % 1'000'000'000;
    if (times[1].tv_nsec < 0) {
        times[1].tv_nsec += 1'000'000'000;
        times[1].tv_sec -= 1;
    }
    return times;
}

std::error_code set_mtime(int fd, std::int64_t mtime_ns) {
    if (::futimens(fd, mtime_only(mtime_ns).data()) != 0) {
        return last_error();
    }
    return {};
}

}  // namespace

std::error_code set_mode_and_mtime(int fd, std::uint32_t mode, std::int64_t mtime_ns) {
    if (::fchmod(fd, mode & 07777) != 0) {
        return last_error();
    }
    return set_mtime(fd, mtime_ns);
}

namespace {

// The steps file systems store mtimes in: ext4/xfs/btrfs/tmpfs keep nanoseconds; CIFS and
// others 100 ns, exFAT 10 ms, ext4 with 128-byte inodes and HFS+ 1 s, FAT 2 s. Each
// truncates (floors) the value.
constexpr std::array<std::int64_t, 7> mtime_steps{1, 100, 1'000, 1'000'000, 10'000'000, 1'000'000'000, 2'000'000'000};

std::int64_t floor_to(std::int64_t ns, std::int64_t step) { return ns - ((ns % step) + step) % step; }

// The finest of mtime_steps in which `stored_ns` is `wanted_ns` truncated, or 0 for none.
std::int64_t matching_step(std::int64_t stored_ns, std::int64_t wanted_ns) {
    for (std::int64_t step : mtime_steps) {
        if (stored_ns == floor_to(wanted_ns, step)) {
            return step;
        }
    }
    return 0;
}

}  // namespace

bool not_permitted(std::error_code ec) {
    return ec.category() == std::system_category() && (ec.value() == EACCES || ec.value() == EPERM);
}

bool file_level(std::error_code ec) {
    if (ec.category() == dest_category()) {
        return ec != dest_errc::too_deep;
    }
    if (ec.category() != std::system_category() && ec.category() != std::generic_category()) {
        return false;
    }
    switch (ec.value()) {
        case EACCES:
        case EPERM:
        case ENAMETOOLONG:
        case EINVAL:  // a name the file system cannot hold (FAT's `:`)
        case EILSEQ:
        case EFBIG:
        case EISDIR:
        case ENOTDIR:
        case ELOOP:
        case EEXIST:
        case ENOENT:  // its folder went meanwhile
        case ETXTBSY:
        case EMLINK: return true;
        default: return false;
    }
}

bool same_stored_mtime(std::int64_t stored_ns, std::int64_t wanted_ns, std::int64_t step_ns) {
    return step_ns > 0 ? stored_ns == floor_to(wanted_ns, step_ns) : matching_step(stored_ns, wanted_ns) > 0;
}

std::int64_t probe_mtime_step(int dir_fd) {
    unique_fd fd(::openat(dir_fd, ".", O_TMPFILE | O_WRONLY | O_CLOEXEC, 0600));
    if (fd.get() < 0) {
        return 0;  // no O_TMPFILE here (or no write access): fall back to any step
    }
    constexpr std::int64_t probe = 1'600'000'001'987'654'321;  // a different value at every step
    struct stat st {};
    if (set_mtime(fd.get(), probe) || ::fstat(fd.get(), &st) != 0) {
        return 0;
    }
    return matching_step(timespec_ns(st.st_mtim), probe);
}

namespace {
std::atomic<int> unnamed_open{0};

// One more unnamed file held by the process, if it may hold one more
// (unnamed_file::max_open()): true; release_unnamed() gives it back.
bool reserve_unnamed() {
    if (unnamed_open.fetch_add(1, std::memory_order_relaxed) >= unnamed_file::max_open()) {
        unnamed_open.fetch_sub(1, std::memory_order_relaxed);
        return false;
    }
    return true;
}

void release_unnamed() { unnamed_open.fetch_sub(1, std::memory_order_relaxed); }

// An O_TMPFILE open failed with `err` because there is none on this file system (EISDIR: a
// kernel that does not know the flag): the caller writes a partial file instead.
bool no_tmpfile_here(int err) { return err == EOPNOTSUPP || err == EISDIR || err == EINVAL; }
}  // namespace

void unnamed_file::reset() {
    if (fd_ >= 0) {
        ::close(fd_);
        fd_ = -1;
        release_unnamed();
    }
}

void unnamed_file::forget() {
    if (fd_ >= 0) {
        fd_ = -1;
        release_unnamed();
    }
}

int unnamed_file::open_count() { return unnamed_open.load(std::memory_order_relaxed); }

int unnamed_file::max_open() {
    static const auto most = static_cast<int>(std::clamp<rlim_t>(open_files_limit() / 4, 16, 4096));
    return most;
}

const std::error_category& dest_category() noexcept {
    static const dest_category_impl instance;
    return instance;
}

namespace {

// The folders opened up for their owner (dest_tree::hold_folder) in this process, and the
// folders trees write in, by device and inode: the mode each gets at the end, and how many
// trees still use it (two transfers into one folder: the last one done sets the mode).
struct loosened_entry {
    mode_t mode = 0;
    int users = 0;
    bool changed = false;  // bits were added, or SRC's mode waits: the last user sets `mode`
};
std::mutex loosened_registry_mutex;
std::map<std::pair<dev_t, ino_t>, loosened_entry> loosened_registry;

const uid_t effective_uid = ::geteuid();

}  // namespace

dest_tree::dest_tree(const std::filesystem::path& root) : root_(root) {
    std::error_code ec;
    std::filesystem::create_directories(root, ec);
    // One spelling per folder (unsynced journals are matched by it).
    if (auto canonical = std::filesystem::canonical(root, ec); !ec) {
        root_ = canonical;
    }
    root_fd_ = ::open(root.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (root_fd_ < 0) {
        throw std::system_error(errno, std::system_category(), "cannot open destination " + root.string());
    }
}

dest_tree::dest_tree(std::filesystem::path root, int root_fd) : root_(std::move(root)), root_fd_(root_fd) {}

std::string dest_tree::full_path(std::string_view wire_path) const {
    const std::string& root = root_.native();
    std::string out;
    out.reserve(root.size() + 1 + wire_path.size());
    out = root;
    if (!root.empty() && root.back() != '/') {
        out += '/';
    }
    out += wire_path;
    return out;
}

const std::int64_t* dest_tree::known_mtime_step(std::uint64_t dev) const {
    for (const auto& [d, step] : mtime_steps_) {
        if (d == dev) {
            return &step;
        }
    }
    return nullptr;
}

std::int64_t dest_tree::mtime_step(std::uint64_t dev, int dir_fd) {
    std::lock_guard lock(steps_mutex_);
    if (const std::int64_t* known = known_mtime_step(dev)) {
        return *known;
    }
    std::int64_t step = probe_mtime_step(dir_fd);
    mtime_steps_.emplace_back(dev, step);
    return step;
}

int dest_tree::open_dir(std::string_view wire_path, std::error_code& ec) {
    dir_handle dh = dir_fd(wire_path, false, ec);
    if (dh.fd < 0) {
        return -1;
    }
    int fd = ::fcntl(dh.fd, F_DUPFD_CLOEXEC, 0);
    if (fd < 0) {
        ec = last_error();
    }
    return fd;
}

dest_tree::~dest_tree() {
    restore_modes();
    if (root_fd_ >= 0) {
        ::close(root_fd_);
    }
}

namespace {

// ".NAME<suffix>", or when that is longer than `max` a stable short name from the name's hash.
std::string decorated_name(std::string_view name, std::string_view suffix, const char* short_form, std::size_t max) {
    std::string p;
    p.reserve(name.size() + suffix.size() + 1);
    p.append(".").append(name).append(suffix);
    if (p.size() <= max) {
        return p;
    }
    std::size_t h = std::hash<std::string_view>{}(name);
    char buf[64];
    std::snprintf(buf, sizeof(buf), short_form, h);
    return buf;
}

}  // namespace

std::string dest_tree::partial_name(std::string_view name) {
    return decorated_name(name, ".ferry-part", ".ferry-%016zx.part", 255);
}

std::string dest_tree::resume_name(std::string_view name) {
    return decorated_name(name, ".ferry-resume", ".ferry-%016zx.resume", 254);  // room for the temporary "~"
}

dest_tree::open_folder::open_folder(int f) : fd(f) { folders_open.fetch_add(1, std::memory_order_relaxed); }

dest_tree::open_folder::~open_folder() {
    folders_open.fetch_sub(1, std::memory_order_relaxed);
    if (fd >= 0) {
        ::close(fd);
    }
}

dest_tree::dir_handle dest_tree::dir_fd(std::string_view dir, bool create, std::error_code& ec, bool write) {
    auto write_in_root = [&] {
        if (root_mirrored_) {
            std::call_once(root_write_once_, [&] { make_accessible(root_fd_, "", S_IRWXU); });
        }
    };
    if (dir.empty()) {
        if (write) {
            write_in_root();
        }
        return {root_fd_, nullptr};
    }
    {
        std::shared_lock lock(mutex_);
        if (auto it = dirs_.find(dir); it != dirs_.end()) {
            it->second->last_use.store(++use_clock_, std::memory_order_relaxed);
            if (write) {
                std::call_once(it->second->write_once, [&] { make_accessible(it->second->fd, dir, S_IRWXU); });
            }
            return {it->second->fd, it->second};
        }
    }
    std::lock_guard lock(mutex_);
    int fd = root_fd_;
    std::shared_ptr<open_folder> folder;
    std::string sofar;
    for (std::string_view comp : split_wire_path(dir)) {
        const std::size_t parent = sofar.size();  // sofar's first `parent` bytes: the folder `fd` is
        if (!sofar.empty()) {
            sofar += '/';
        }
        sofar += comp;
        const bool last = sofar.size() == dir.size();
        if (auto it = dirs_.find(sofar); it != dirs_.end()) {
            folder = it->second;
            folder->last_use.store(++use_clock_, std::memory_order_relaxed);
            fd = folder->fd;
            if (write && last) {
                std::call_once(folder->write_once, [&] { make_accessible(fd, sofar, S_IRWXU); });
            }
            continue;
        }
        std::string name(comp);
        bool made = false;
        int next = ::openat(fd, name.c_str(), O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
        if (next < 0 && errno == EACCES && open_up(fd, name, sofar, write && last ? S_IRWXU : S_IRUSR | S_IXUSR)) {
            next = ::openat(fd, name.c_str(), O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);  // one it may not read
        }
        if (next < 0 && errno == ENOENT && create) {
            // Made in its parent: that one is written in (a folder only looked in or
            // passed through keeps its mode, and its ctime).
            if (folder) {
                std::call_once(folder->write_once,
                               [&] { make_accessible(fd, std::string_view(sofar).substr(0, parent), S_IRWXU); });
            } else {
                write_in_root();
            }
            made = ::mkdirat(fd, name.c_str(), 0755) == 0;
            if (!made && errno != EEXIST) {
                ec = last_error();
                return {};
            }
            next = ::openat(fd, name.c_str(), O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
        }
        if (next < 0) {
            if (errno == ELOOP) {
                ec = dest_errc::symlink;
            } else if (errno == ENOTDIR) {
                struct stat st {};
                ec = (::fstatat(fd, name.c_str(), &st, AT_SYMLINK_NOFOLLOW) == 0 && S_ISLNK(st.st_mode))
                         ? make_error_code(dest_errc::symlink)
                         : make_error_code(dest_errc::not_a_dir);
            } else {
                ec = last_error();
            }
            return {};
        }
        // `folder` (the parent, held here) stays open however the cache changes.
        auto opened = std::make_shared<open_folder>(next);
        // Written in: rwx for its owner; looked in or passed through: r-x.
        if (write && last) {
            std::call_once(opened->write_once, [&] { make_accessible(next, sofar, S_IRWXU); });
        } else {
            make_accessible(next, sofar, S_IRUSR | S_IXUSR);
        }
        if (made) {
            made_dirs_.insert(sofar);
        }
        opened->made = made || made_dirs_.contains(sofar);
        opened->last_use.store(++use_clock_, std::memory_order_relaxed);
        if (dirs_.size() >= max_open_folders() ||
            (dirs_.size() >= 256 && folders_open.load(std::memory_order_relaxed) >= folders_open_budget())) {
            // The least recently used quarter goes at once: one pass over the cache for
            // every quarter of it, not one for every folder opened.
            std::vector<std::uint64_t> uses;
            uses.reserve(dirs_.size());
            for (const auto& [path, f] : dirs_) {
                uses.push_back(f->last_use.load(std::memory_order_relaxed));
            }
            auto cut = uses.begin() + static_cast<std::ptrdiff_t>(uses.size() / 4);
            std::nth_element(uses.begin(), cut, uses.end());
            const std::uint64_t oldest_kept = *cut;
            std::erase_if(
                dirs_, [&](const auto& e) { return e.second->last_use.load(std::memory_order_relaxed) < oldest_kept; });
        }
        dirs_.emplace(sofar, opened);
        folder = std::move(opened);
        fd = next;
    }
    return {fd, std::move(folder)};
}

std::error_code dest_tree::make_dir(std::string_view wire_path, bool create, bool* absent, removed_entry* replaced) {
    std::error_code ec;
    dir_handle h = dir_fd(wire_path, create, ec);
    if ((ec == dest_errc::symlink || ec == dest_errc::not_a_dir) && mirror_ && !keep_kinds_ && !wire_path.empty()) {
        // A mirror: a symlink or a file where the folder goes is removed (as itself), and
        // the folder made. Only at the final name: the folders it lies in came first in the
        // offer. (A local user who swaps a file in between the look and the unlink loses
        // that file, in a folder they can write anyway; a folder swapped in fails the
        // unlink, and a link put back fails the O_NOFOLLOW open: nothing outside is reached.)
        std::error_code pec;
        dir_handle parent = dir_fd(wire_parent(wire_path), false, pec, true);
        std::string name(wire_name(wire_path));
        struct stat st {};
        if (parent.fd >= 0 && ::fstatat(parent.fd, name.c_str(), &st, AT_SYMLINK_NOFOLLOW) == 0 &&
            !S_ISDIR(st.st_mode)) {
            if (!create) {
                if (replaced != nullptr) {
                    *replaced = {std::string(wire_path), false, S_ISLNK(st.st_mode)};  // would be
                }
                if (absent != nullptr) {
                    *absent = true;  // what it would hold is not there either
                }
                return {};
            }
            if (::unlinkat(parent.fd, name.c_str(), 0) != 0 && errno != ENOENT) {
                return last_error();
            }
            if (replaced != nullptr) {
                *replaced = {std::string(wire_path), false, S_ISLNK(st.st_mode)};  // gone, even if the mkdir fails
            }
            ec.clear();
            h = dir_fd(wire_path, true, ec);
        }
    }
    if (absent != nullptr) {
        *absent = !create && ec == std::errc::no_such_file_or_directory;
    }
    if (!create && ec == std::errc::no_such_file_or_directory) {
        return {};  // not there yet: nothing in the way
    }
    return ec;
}

std::error_code dest_tree::stat_final(std::string_view wire_path, bool create_parents, struct stat& st, bool& found,
                                      dir_handle* dir) {
    found = false;
    std::error_code ec;
    dir_handle dh = dir_fd(wire_parent(wire_path), create_parents, ec);
    if (dh.fd < 0) {
        // No parent (and none made): nothing at the name either.
        return ec == std::errc::no_such_file_or_directory && !create_parents ? std::error_code{} : ec;
    }
    std::string name(wire_name(wire_path));
    if (::fstatat(dh.fd, name.c_str(), &st, AT_SYMLINK_NOFOLLOW) != 0) {
        return errno == ENOENT ? std::error_code{} : last_error();
    }
    found = true;
    if (dir != nullptr) {
        *dir = std::move(dh);
    }
    return {};
}

std::error_code dest_tree::check_file(std::string_view wire_path, bool overwrite, std::uint64_t size,
                                      std::int64_t mtime_ns, bool& identical, bool create_parents, bool* exists,
                                      std::uint32_t* mode_there, std::uint64_t* size_there, bool* special_there) {
    identical = false;
    if (exists != nullptr) {
        *exists = false;
    }
    if (special_there != nullptr) {
        *special_there = false;
    }
    struct stat st {};
    bool found = false;
    dir_handle dh;
    if (std::error_code ec = stat_final(wire_path, create_parents, st, found, &dh); ec || !found) {
        return ec;
    }
    if (S_ISLNK(st.st_mode)) {
        if (mirror_) {
            if (exists != nullptr) {
                *exists = true;  // replaced by the new file's rename, never followed
            }
            return {};
        }
        return dest_errc::symlink;
    }
    if (S_ISDIR(st.st_mode)) {
        return dest_errc::is_dir;
    }
    if (keep_kinds_ && !S_ISREG(st.st_mode)) {
        return dest_errc::special;
    }
    if (exists != nullptr) {
        *exists = S_ISREG(st.st_mode);
    }
    if (special_there != nullptr) {
        *special_there = !S_ISREG(st.st_mode);
    }
    if (mode_there != nullptr) {
        *mode_there = st.st_mode & 07777;
    }
    if (size_there != nullptr) {
        *size_there = static_cast<std::uint64_t>(st.st_size);
    }
    std::int64_t mtime = timespec_ns(st.st_mtim);
    if (S_ISREG(st.st_mode) && static_cast<std::uint64_t>(st.st_size) == size &&
        same_stored_mtime(mtime, mtime_ns, mtime_step(st.st_dev, dh.fd))) {
        identical = true;
        return {};
    }
    return overwrite ? std::error_code{} : make_error_code(dest_errc::exists);
}

std::error_code dest_tree::check_link(std::string_view wire_path, const std::string& target, std::int64_t mtime_ns,
                                      bool& identical, bool create_parents, bool& exists) {
    identical = false;
    exists = false;
    struct stat st {};
    bool found = false;
    dir_handle dh;
    if (std::error_code ec = stat_final(wire_path, create_parents, st, found, &dh); ec || !found) {
        return ec;
    }
    if (S_ISDIR(st.st_mode)) {
        return dest_errc::is_dir;
    }
    if (keep_kinds_ && !S_ISREG(st.st_mode) && !S_ISLNK(st.st_mode)) {
        return dest_errc::special;
    }
    exists = true;  // a file or a link: replaced by the new link's rename
    if (!S_ISLNK(st.st_mode) || static_cast<std::uint64_t>(st.st_size) != target.size() ||
        !same_stored_mtime(timespec_ns(st.st_mtim), mtime_ns, mtime_step(st.st_dev, dh.fd))) {
        return {};
    }
    std::string there(target.size() + 1, '\0');
    std::string name(wire_name(wire_path));
    ssize_t n = ::readlinkat(dh.fd, name.c_str(), there.data(), there.size());
    identical = n >= 0 && static_cast<std::size_t>(n) == target.size() && there.compare(0, target.size(), target) == 0;
    return {};
}

std::error_code dest_tree::make_link(std::string_view wire_path, const std::string& target, std::int64_t mtime_ns) {
    std::error_code ec;
    dir_handle dh = dir_fd(wire_parent(wire_path), true, ec, true);
    if (dh.fd < 0) {
        return ec;
    }
    std::string name(wire_name(wire_path));
    std::string part = partial_name(name);
    // What an earlier transfer of a file by this name left is stale now: SRC has a link.
    ::unlinkat(dh.fd, part.c_str(), 0);
    ::unlinkat(dh.fd, resume_name(name).c_str(), 0);
    if (::symlinkat(target.c_str(), dh.fd, part.c_str()) != 0) {
        return last_error();
    }
    // The link's own time (the target is never touched), then the rename, which replaces a
    // file or link at the name in one step; a folder there is refused (check_link).
    if (std::error_code kept = kept_kind_at(dh.fd, name)) {
        ::unlinkat(dh.fd, part.c_str(), 0);
        return kept;
    }
    if (::utimensat(dh.fd, part.c_str(), mtime_only(mtime_ns).data(), AT_SYMLINK_NOFOLLOW) != 0 ||
        ::renameat(dh.fd, part.c_str(), dh.fd, name.c_str()) != 0) {
        ec = last_error();
        ::unlinkat(dh.fd, part.c_str(), 0);
        return ec;
    }
    return {};
}

std::error_code dest_tree::unreplaceable_at(int dir_fd, const std::string& name) {
    struct stat st {};
    if (::fstatat(dir_fd, name.c_str(), &st, AT_SYMLINK_NOFOLLOW) != 0) {
        return {};
    }
    return S_ISDIR(st.st_mode)                         ? make_error_code(dest_errc::is_dir)
           : !S_ISREG(st.st_mode) && !S_ISLNK(st.st_mode) ? make_error_code(dest_errc::special)
                                                          : std::error_code{};
}

namespace {

// An entry of a folder as folder_entries finds it.
struct folder_child {
    std::string name;
    bool is_dir = false;
    bool is_link = false;
};

// The entries of the open folder `fd` (wire path `prefix`) with their kind, ferry's own
// files left out (`own` tells whether there were any; `own_names`, if given, gets their
// names). `stats` (if given) gets each entry's stat, in the same order. On an error,
// `failed` names the entry.
std::error_code folder_entries(int fd, const std::string& prefix, std::vector<folder_child>& out, bool& own,
                               std::string& failed, std::vector<struct stat>* stats = nullptr,
                               std::vector<std::string>* own_names = nullptr) {
    std::vector<std::string> names;
    std::vector<unsigned char> types;
    if (std::error_code ec = list_folder(fd, names, &types)) {
        return ec;
    }
    own = false;
    for (std::size_t i = 0; i < names.size(); ++i) {
        std::string& name = names[i];
        if (is_partial_name(name)) {
            own = true;
            if (own_names != nullptr) {
                own_names->push_back(std::move(name));
            }
            continue;
        }
        // The folder tells the kind (one stat less per entry of a --delete walk), unless
        // the file system leaves it unknown or the caller wants the stat.
        if (stats == nullptr && types[i] != DT_UNKNOWN) {
            out.push_back({std::move(name), types[i] == DT_DIR, types[i] == DT_LNK});
            continue;
        }
        struct stat st {};
        if (::fstatat(fd, name.c_str(), &st, AT_SYMLINK_NOFOLLOW) != 0) {
            if (errno == ENOENT) {
                continue;
            }
            failed = prefix.empty() ? name : prefix + "/" + name;
            return {errno, std::system_category()};
        }
        out.push_back({std::move(name), S_ISDIR(st.st_mode), S_ISLNK(st.st_mode)});
        if (stats != nullptr) {
            stats->push_back(st);
        }
    }
    return {};
}

// Whether `ec`, from opening a folder a listing named without following a symlink, says
// it is gone since, or no longer a folder (a file or symlink took its name).
bool gone_or_replaced(std::error_code ec) {
    return ec == std::errc::no_such_file_or_directory || ec == std::errc::not_a_directory ||
           ec == std::errc::too_many_symbolic_link_levels;
}

// Opens the folder `name` in `dir_fd` without following a symlink, runs `f` (taking the
// folder's fd, returning an error_code) on it, and closes it.
template <class F>
std::error_code in_folder(int dir_fd, const std::string& name, F&& f) {
    int fd = ::openat(dir_fd, name.c_str(), O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    if (fd < 0) {
        return {errno, std::system_category()};
    }
    std::error_code ec = f(fd);
    ::close(fd);
    return ec;
}

// Whether the partial file `part` in the folder `dfd` is there, and locked by a writer that
// is not this descriptor's (open_partial_file's lock): another process's, unless this
// process's own writer still holds it open. `wait`: while it is locked, looks again as
// open_partial_file does (a transfer of this process that is finishing, a retry's attempt
// before, holds it for a moment).
enum class partial_there { none, free, locked };
// Whether the open partial file `fd` is locked by a writer (open_partial_file's lock)
// that is not this descriptor's. (A shared lock taken here goes with the descriptor.)
bool locked_by_writer(int fd) { return ::flock(fd, LOCK_SH | LOCK_NB) != 0 && errno == EWOULDBLOCK; }
partial_there look_at_partial(int dfd, const std::string& part, bool wait = false) {
    unique_fd held(::openat(dfd, part.c_str(), O_RDONLY | O_NOFOLLOW | O_CLOEXEC));
    if (held.get() < 0) {
        return partial_there::none;
    }
    for (int tries = 0; locked_by_writer(held.get()); ++tries) {
        if (!wait || tries >= dest_tree::partial_lock_tries) {
            return partial_there::locked;
        }
        std::this_thread::sleep_for(dest_tree::partial_lock_pause);
    }
    return partial_there::free;
}
bool partial_locked(int dfd, const std::string& part) { return look_at_partial(dfd, part) == partial_there::locked; }

// The folder at wire path `path` under the root, opened again by its path (no symlink on
// the way): what a walk below dest_tree::walk_open_depth uses instead of a descriptor
// kept per level. "" is the root itself (not to be closed: `owned` false).
struct folder_beneath {
    unique_fd owned;
    int fd = -1;
    folder_beneath(int root_fd, std::string_view path) {
        if (path.empty()) {
            fd = root_fd;
            return;
        }
        owned.reset(open_beneath(root_fd, std::string(path), O_RDONLY | O_DIRECTORY));
        fd = owned.get();
    }
};

// The start of a walk of the folder `prefix` at `depth` (pruner's, lister's): refused
// beyond dest_tree::max_walk_depth (`failed` names it); with dir_fd -1 (below
// walk_open_depth) the folder is opened here by its path, into `self`, and `opened` (if
// given) tells whether that worked.
std::error_code enter_folder(int root_fd, const std::string& prefix, int depth, int& dir_fd,
                             std::optional<folder_beneath>& self, std::string& failed, bool* opened) {
    if (depth > dest_tree::max_walk_depth) {
        failed = prefix;
        return make_error_code(dest_errc::too_deep);
    }
    if (dir_fd < 0) {
        self.emplace(root_fd, prefix);
        if (self->fd < 0) {
            return {errno, std::system_category()};
        }
        dir_fd = self->fd;
    }
    if (opened != nullptr) {
        *opened = true;
    }
    return {};
}

struct pruner {
    int root_fd;  // the walk's paths are relative to it (deep folders are opened from it)
    const std::function<dest_tree::verdict(const std::string&, bool)>& keep;
    bool dry_run;
    std::vector<dest_tree::removed_entry>& removed;
    std::string& failed;  // the path an error is about
    // A folder about to lose entries: writable for its owner (dest_tree::make_accessible).
    const std::function<void(int fd, const std::string& path)>& writable;
    // Whether ferry's own files (partial files, resume records) in a folder being removed
    // go too, unreported: true where no file of this transfer can lie below (clear_folder);
    // otherwise they keep their folder.
    bool remove_own = false;
    // In a kept folder (walk), whether the partial file and resume record an earlier
    // attempt left for the file at this wire path may go (prune's `stale`); unset: they stay.
    std::function<bool(const std::string& path)> stale_own;
    // prune: a folder emptied is asked about once more right before it goes, as `keep`
    // may change its answer meanwhile (another transfer into the folder has marked it).
    bool ask_again = false;
    // prune's `taken`: handed `removed` every dest_tree::prune_report_every entries.
    std::function<void(std::vector<dest_tree::removed_entry>&)> taken;
    // prune's `refused`: what this user may not remove or list goes here, and the walk
    // goes on (see passed_over()); null: such an error ends the walk.
    std::vector<dest_tree::refusal>* refused = nullptr;

    // True (and `path` in `refused`) when `ec`, met removing or listing `path`, is this
    // user's lack of rights there: that path stays, and the walk goes on.
    bool passed_over(const std::string& path, std::error_code ec) {
        if (refused == nullptr || !(not_permitted(ec) || ec == std::errc::device_or_resource_busy)) {
            return false;
        }
        refused->emplace_back(path.empty() ? "." : path, ec);  // ("": DST's own folder)
        failed.clear();
        return true;
    }

    // Depths count from 1 for a folder in the root; dest_tree::max_walk_depth is the
    // deepest allowed (2048 nested folders are fine, 2049 are not).
    static std::error_code too_deep() { return make_error_code(dest_errc::too_deep); }

    // Removes `name` in `dir_fd` (wire path `path`) and what is in it, except what `keep`
    // protects (an excluded path) and ferry's own files: a folder still holding any of
    // those stays. `gone` tells whether the entry went.
    std::error_code remove(int dir_fd, const std::string& name, const std::string& path, bool is_dir, bool is_link,
                           int depth, bool& gone) {
        gone = false;
        failed = path;
        if (is_dir) {
            if (depth > dest_tree::max_walk_depth) {
                return too_deep();
            }
            // (dir_fd -1: below walk_open_depth, by its path from the root.)
            int fd = dir_fd >= 0 ? ::openat(dir_fd, name.c_str(), O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC)
                                 : open_beneath(root_fd, path, O_RDONLY | O_DIRECTORY);
            if (fd < 0 && gone_or_replaced({errno, std::system_category()})) {
                gone = errno == ENOENT;  // passed over: this walk's to leave
                failed.clear();
                return {};
            }
            if (fd < 0) {
                std::error_code ec(errno, std::system_category());
                return passed_over(path, ec) ? std::error_code{} : ec;
            }
            if (!dry_run) {
                writable(fd, path);
            }
            std::vector<folder_child> children;
            std::vector<std::string> own_names;
            bool own = false;
            std::error_code ec = folder_entries(fd, path, children, own, failed, nullptr,
                                                remove_own || stale_own ? &own_names : nullptr);
            if (ec && passed_over(path, ec)) {
                ::close(fd);
                return {};
            }
            for (std::size_t i = 0; !ec && !dry_run && remove_own && i < own_names.size(); ++i) {
                if (::unlinkat(fd, own_names[i].c_str(), 0) != 0 && errno != ENOENT) {
                    failed = path + "/" + own_names[i];
                    ec = {errno, std::system_category()};
                }
            }
            if (!ec && own && !remove_own && stale_own) {
                // What interrupted attempts left in a folder SRC no longer has goes as it
                // does in a kept folder (it kept the folder, and --delete never removed it).
                bool loosened = true;  // (writable above)
                std::size_t left = 0;
                ec = drop_stale_own(fd, path, children, own_names, loosened, left);
                own = left > 0;
            }
            bool emptied = !own || remove_own;  // stays true while everything in it goes
            if (depth >= dest_tree::walk_open_depth) {
                ::close(fd);  // each child finds its way by its path: no descriptor per level
                fd = -1;
            }
            for (std::size_t i = 0; !ec && i < children.size(); ++i) {
                const folder_child& child = children[i];
                std::string child_path = path + "/" + child.name;
                if (keep(child_path, child.is_dir) != dest_tree::verdict::remove) {
                    emptied = false;
                    continue;
                }
                bool child_gone = false;
                ec = remove(fd, child.name, child_path, child.is_dir, child.is_link, depth + 1, child_gone);
                emptied = emptied && child_gone;
            }
            if (fd >= 0) {
                ::close(fd);
            }
            if (ec || !emptied) {
                return ec;
            }
            if (ask_again && !dry_run && keep(path, true) != dest_tree::verdict::remove) {
                failed.clear();
                return {};  // taken meanwhile: it stays, empty
            }
            failed = path;
        }
        std::optional<folder_beneath> parent;
        if (dir_fd < 0 && !dry_run) {
            parent.emplace(root_fd, wire_parent(path));
            dir_fd = parent->fd;
            if (dir_fd < 0 && gone_or_replaced({errno, std::system_category()})) {
                failed.clear();
                return {};  // its folder went, or was replaced since: passed over, as an entry is
            }
        }
        if (!dry_run && (dir_fd < 0 || ::unlinkat(dir_fd, name.c_str(), is_dir ? AT_REMOVEDIR : 0) != 0)) {
            if (errno == ENOENT) {
                gone = true;  // gone since it was listed: not this walk's to tell of
                failed.clear();
                return {};
            }
            if (is_dir && (errno == ENOTEMPTY || errno == EEXIST)) {
                failed.clear();
                return {};  // something came into it meanwhile (another transfer's): it stays
            }
            std::error_code ec(errno, std::system_category());
            return passed_over(path, ec) ? std::error_code{} : ec;
        }
        removed.push_back({path, is_dir, is_link});
        if (taken && removed.size() >= dest_tree::prune_report_every) {
            taken(removed);
            removed.clear();
        }
        gone = true;
        return {};
    }

    // Removes the partial files and resume records `own_names` in the folder `dir_fd`
    // (wire path `prefix`; `children`: its other entries) that an interrupted attempt left
    // and that no transfer needs (`stale_own`, and not written in the last minute, nor
    // locked by another process); a dry run removes none and counts those as going.
    // `left`: how many stay. `loosened`: the folder was made writable for it.
    std::error_code drop_stale_own(int dir_fd, const std::string& prefix, const std::vector<folder_child>& children,
                                   const std::vector<std::string>& own_names, bool& loosened, std::size_t& left) {
        left = 0;
        // A long NAME's partial file and record have a hashed name (".ferry-HASH.part"),
        // which does not give NAME back: they are known by the DST file of that NAME.
        std::unordered_map<std::string, std::string> hashed;
        if (!own_names.empty()) {
            for (const folder_child& c : children) {
                for (std::string own : {dest_tree::partial_name(c.name), dest_tree::resume_name(c.name)}) {
                    if (own.size() < c.name.size()) {  // the hashed form
                        hashed.emplace(std::move(own), c.name);
                    }
                }
            }
        }
        for (const std::string& own_name : own_names) {
            // ".NAME.ferry-part" and ".NAME.ferry-resume", where the NAME taken out gives
            // the same name back, or a hashed one of a NAME DST holds.
            std::string name;
            if (auto h = hashed.find(own_name); h != hashed.end()) {
                name = h->second;
            } else {
                std::string_view n = own_name;
                bool part = n.ends_with(".ferry-part");
                std::string_view suffix = part ? ".ferry-part" : ".ferry-resume";
                if (!n.starts_with('.') || !n.ends_with(suffix) || n.size() <= suffix.size() + 1) {
                    ++left;
                    continue;
                }
                name = n.substr(1, n.size() - suffix.size() - 1);
                if ((part ? dest_tree::partial_name(name) : dest_tree::resume_name(name)) != own_name) {
                    ++left;
                    continue;
                }
            }
            // One written in the last minute may be a live transfer's in another process
            // (claims are per process): it stays, for --partial-max-age or a later sync.
            struct stat own_st {};
            if (::fstatat(dir_fd, own_name.c_str(), &own_st, AT_SYMLINK_NOFOLLOW) != 0 ||
                !S_ISREG(own_st.st_mode) || std::time(nullptr) - own_st.st_mtim.tv_sec < 60 ||
                !stale_own(prefix.empty() ? name : prefix + "/" + name)) {
                ++left;
                continue;
            }
            if (partial_locked(dir_fd, own_name)) {
                ++left;
                continue;  // another process writes it (its lock): not an interrupted attempt's
            }
            if (dry_run) {
                continue;
            }
            if (!loosened) {
                writable(dir_fd, prefix);
                loosened = true;
            }
            if (::unlinkat(dir_fd, own_name.c_str(), 0) != 0 && errno != ENOENT) {
                failed = prefix.empty() ? own_name : prefix + "/" + own_name;
                if (std::error_code ec(errno, std::system_category()); !passed_over(failed, ec)) {
                    return ec;
                }
                ++left;
            }
        }
        return {};
    }

    // Walks the kept folder `dir_fd` (wire path `prefix`, "" = the root; dir_fd -1: below
    // walk_open_depth, opened here by its path, `opened` telling whether that worked).
    std::error_code walk(int dir_fd, const std::string& prefix, int depth, bool* opened = nullptr) {
        std::optional<folder_beneath> self;
        if (std::error_code ec = enter_folder(root_fd, prefix, depth, dir_fd, self, failed, opened)) {
            return passed_over(prefix, ec) ? std::error_code{} : ec;
        }
        std::vector<folder_child> children;
        std::vector<std::string> own_names;  // (none in a dry run: nothing of a kept folder's is told of)
        bool own = false;
        if (std::error_code ec =
                folder_entries(dir_fd, prefix, children, own, failed, nullptr,
                               stale_own && !dry_run ? &own_names : nullptr)) {
            return passed_over(prefix, ec) ? std::error_code{} : ec;
        }
        bool loosened = false;
        std::size_t left = 0;  // (they keep no kept folder: the count is not needed)
        if (std::error_code ec = drop_stale_own(dir_fd, prefix, children, own_names, loosened, left)) {
            return ec;
        }
        if (depth >= dest_tree::walk_open_depth) {
            self.reset();  // what is below finds its way by its path: no descriptor per level
            dir_fd = -1;
        }
        for (const auto& [name, is_dir, is_link] : children) {
            std::string path = prefix.empty() ? name : prefix + "/" + name;
            failed = path;
            dest_tree::verdict v = keep(path, is_dir);
            if (v == dest_tree::verdict::remove) {
                if (!dry_run && !loosened) {
                    // It loses an entry (below walk_open_depth: opened again for that).
                    if (dir_fd >= 0) {
                        writable(dir_fd, prefix);
                    } else if (folder_beneath again(root_fd, prefix); again.fd >= 0) {
                        writable(again.fd, prefix);
                    }
                    loosened = true;
                }
                bool gone = false;
                if (std::error_code ec = remove(dir_fd, name, path, is_dir, is_link, depth + 1, gone)) {
                    return ec;
                }
                continue;
            }
            if (is_dir && v == dest_tree::verdict::keep) {
                bool opened = false;
                std::error_code ec =
                    dir_fd < 0 ? walk(-1, path, depth + 1, &opened) : in_folder(dir_fd, name, [&](int fd) {
                        opened = true;
                        return walk(fd, path, depth + 1);
                    });
                // (One gone or no longer a folder since it was listed is passed over, and
                // so is one this user may not open.)
                if (ec && !(!opened && (gone_or_replaced(ec) || passed_over(path, ec)))) {
                    return ec;
                }
            }
        }
        return {};
    }
};

// Lists the regular files under a folder for dest_tree::list_files.
struct lister {
    int root_fd;  // as pruner's
    std::size_t max;
    std::vector<dest_tree::file_stamp>& out;
    std::string& failed;

    // As pruner::walk: dir_fd -1 below walk_open_depth.
    std::error_code walk(int dir_fd, const std::string& prefix, int depth, bool* opened = nullptr) {
        std::optional<folder_beneath> self;
        if (std::error_code ec = enter_folder(root_fd, prefix, depth, dir_fd, self, failed, opened)) {
            return ec;
        }
        std::vector<folder_child> children;
        std::vector<struct stat> stats;
        bool own = false;
        if (std::error_code ec = folder_entries(dir_fd, prefix, children, own, failed, &stats)) {
            return ec;
        }
        if (depth >= dest_tree::walk_open_depth) {
            self.reset();
            dir_fd = -1;
        }
        for (std::size_t i = 0; i < children.size() && out.size() < max; ++i) {
            const auto& [name, is_dir, is_link] = children[i];
            std::string path = prefix.empty() ? name : prefix + "/" + name;
            if (S_ISREG(stats[i].st_mode)) {
                out.push_back({std::move(path), static_cast<std::uint64_t>(stats[i].st_size), timespec_ns(stats[i].st_mtim)});
                continue;
            }
            if (!is_dir) {
                continue;
            }
            bool opened = false;
            std::error_code ec =
                dir_fd < 0 ? walk(-1, path, depth + 1, &opened) : in_folder(dir_fd, name, [&](int fd) {
                    opened = true;
                    return walk(fd, path, depth + 1);
                });
            if (!opened && (gone_or_replaced(ec) || ec == std::errc::permission_denied)) {
                continue;  // gone or replaced since it was listed, or not ours to read
            }
            if (ec) {
                failed = opened ? failed : path;
                return ec;
            }
        }
        return {};
    }
};

}  // namespace

std::error_code dest_tree::list_files(std::size_t max, std::vector<file_stamp>& out, std::string& failed_path,
                                      std::string_view under) {
    lister l{root_fd_, max, out, failed_path};
    if (under.empty()) {
        return l.walk(root_fd_, "", 0);
    }
    std::error_code ec;
    unique_fd fd(open_dir(under, ec));
    if (fd.get() < 0) {
        bool none = ec == std::errc::no_such_file_or_directory || ec == std::errc::not_a_directory ||
                    ec == dest_errc::not_a_dir || ec == dest_errc::symlink;
        if (!none) {
            failed_path = std::string(under);
        }
        return none ? std::error_code() : ec;
    }
    return l.walk(fd.get(), std::string(under), static_cast<int>(std::ranges::count(under, '/')) + 1);
}

std::error_code dest_tree::prune(const std::function<verdict(const std::string& path, bool is_dir)>& keep, bool dry_run,
                                 std::vector<removed_entry>& removed, std::string& failed_path,
                                 std::function<bool(const std::string& path)> stale,
                                 std::function<void(std::vector<removed_entry>&)> taken,
                                 std::vector<refusal>* refused) {
    const std::function<void(int, const std::string&)> writable = [this](int fd, const std::string& path) {
        make_accessible(fd, path, S_IRWXU);
    };
    pruner p{root_fd_,        keep, dry_run, removed, failed_path, writable, false, std::move(stale), true,
             std::move(taken), refused};
    return p.walk(root_fd_, "", 0);
}

std::error_code dest_tree::clear_folder(std::string_view wire_path,
                                        const std::function<verdict(const std::string& path, bool is_dir)>& keep,
                                        bool dry_run, std::vector<removed_entry>& removed, std::string& failed_path) {
    failed_path = std::string(wire_path);
    std::error_code ec;
    dir_handle parent = dir_fd(wire_parent(wire_path), false, ec, !dry_run);
    if (parent.fd < 0) {
        return ec;
    }
    const std::function<verdict(const std::string&, bool)> only_empty = [](const std::string&, bool) {
        return verdict::keep_whole;
    };
    // SRC has a file or link at wire_path, so nothing below it is offered: partial files
    // there are an older attempt's (say, a killed sync before SRC changed) and go too.
    const std::function<void(int, const std::string&)> writable = [this](int fd, const std::string& path) {
        make_accessible(fd, path, S_IRWXU);
    };
    pruner p{root_fd_, keep ? keep : only_empty, dry_run, removed, failed_path, writable, true, {}, false, {}};
    bool gone = false;
    int depth = static_cast<int>(std::count(wire_path.begin(), wire_path.end(), '/')) + 1;  // prune's: 1 in the root
    ec = p.remove(parent.fd, std::string(wire_name(wire_path)), std::string(wire_path), true, false, depth,
                  gone);
    if (!dry_run) {
        // Its folders' descriptors (cached) name nothing any more.
        std::lock_guard lock(mutex_);
        std::erase_if(dirs_, [&](const auto& d) {
            return d.first.starts_with(wire_path) &&
                   (d.first.size() == wire_path.size() || d.first[wire_path.size()] == '/');
        });
    }
    if (!ec && !gone) {
        return dest_errc::is_dir;
    }
    return ec;
}

int dest_tree::open_final_read(std::string_view wire_path, std::error_code& ec) {
    dir_handle dh = dir_fd(wire_parent(wire_path), false, ec);
    if (dh.fd < 0) {
        return -1;
    }
    std::string name(wire_name(wire_path));
    int fd = ::openat(dh.fd, name.c_str(), O_RDONLY | O_NOFOLLOW | O_CLOEXEC | O_NONBLOCK);
    if (fd < 0) {
        ec = errno == ELOOP ? make_error_code(dest_errc::symlink) : last_error();
        return -1;
    }
    struct stat st {};
    if (::fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        ::close(fd);
        ec = dest_errc::is_dir;
        return -1;
    }
    return fd;
}

std::error_code dest_tree::set_final_mode(std::string_view wire_path, std::uint32_t mode) {
    std::error_code ec;
    dir_handle dh = dir_fd(wire_parent(wire_path), false, ec);
    if (dh.fd < 0) {
        return ec;
    }
    std::string name(wire_name(wire_path));
    // Not through a symlink planted since the check, and any permission bits (a file its
    // owner cannot read is still changed): fchmodat2, or glibc's O_PATH descriptor.
    if (::fchmodat(dh.fd, name.c_str(), mode & 07777, AT_SYMLINK_NOFOLLOW) == 0) {
        return {};
    }
    if (errno != EOPNOTSUPP && errno != ENOSYS && errno != EPERM) {
        return last_error();
    }
    // A symlink there, or a C library or sandbox without either way (older glibc, no
    // /proc, a seccomp filter): the regular file itself, opened without following a link.
    int fd = open_final_read(wire_path, ec);
    if (fd < 0) {
        return ec;
    }
    if (::fchmod(fd, mode & 07777) != 0) {
        ec = last_error();
    }
    ::close(fd);
    return ec;
}

std::error_code dest_tree::remove_final(std::string_view wire_path, std::uint64_t dev, std::uint64_t ino) {
    struct stat st {};
    bool found = false;
    dir_handle dh;
    if (std::error_code ec = stat_final(wire_path, false, st, found, &dh); ec || !found) {
        return ec;
    }
    std::string name(wire_name(wire_path));
    if (static_cast<std::uint64_t>(st.st_dev) != dev || static_cast<std::uint64_t>(st.st_ino) != ino) {
        return {};  // replaced since: not the file that was judged
    }
    if (::unlinkat(dh.fd, name.c_str(), 0) != 0 && errno != ENOENT) {
        return last_error();
    }
    return {};
}

int dest_tree::open_partial(std::string_view wire_path, std::error_code& ec, bool create) {
    return open_partial_file(wire_path, create ? O_CREAT : 0, 0600, ec);
}

std::optional<partial_seed> dest_tree::start_seed(std::string_view wire_path, std::uint64_t bytes,
                                                  std::string_view from) {
    std::error_code ec;
    partial_seed seed;
    seed.basis.reset(open_final_read(from.empty() ? wire_path : from, ec));
    if (seed.basis.get() < 0) {
        return std::nullopt;
    }
    struct stat st {};
    seed.bytes = ::fstat(seed.basis.get(), &st) == 0 ? std::min<std::uint64_t>(bytes, st.st_size) : 0;
    // A partial file already there (another transfer of the same path, or one that
    // appeared since the caller looked) is never overwritten: O_EXCL.
    seed.partial.reset(seed.bytes == 0 ? -1 : open_partial_file(wire_path, O_CREAT | O_EXCL, 0600, ec));
    if (seed.partial.get() < 0) {
        return std::nullopt;
    }
    if (seed.bytes == static_cast<std::uint64_t>(st.st_size) &&
        ::ioctl(seed.partial.get(), FICLONE, seed.basis.get()) == 0) {
        // Shares the old file's blocks: no copy. The sums are read from the clone itself
        // (the older version may change after it), so it is open for reading from now on.
        seed.cloned = true;
        seed.partial.reset(open_partial_read(wire_path, ec));
        if (seed.partial.get() < 0) {
            remove_partial(wire_path, true, false);
            return std::nullopt;
        }
        return seed;
    }
    // A real copy: only while it leaves room (what the transfer needs is checked after).
    struct statvfs vfs {};
    constexpr std::uint64_t reserve = 64u << 20;
    if (::fstatvfs(seed.partial.get(), &vfs) != 0 ||
        std::uint64_t{vfs.f_bavail} * vfs.f_frsize < seed.bytes + reserve ||
        ::ftruncate(seed.partial.get(), static_cast<off_t>(seed.bytes)) != 0) {
        seed.partial.reset();  // its lock first: remove_partial leaves a partial file someone holds
        remove_partial(wire_path, true, false);
        return std::nullopt;
    }
    return seed;
}

int dest_tree::open_whole_partial(std::string_view wire_path, std::uint32_t mode, std::error_code& ec) {
    return open_partial_file(wire_path, O_CREAT | O_TRUNC, mode & 0777, ec);
}

namespace {

// Links the open unnamed file `fd` as `name` in the folder `dfd`: by the descriptor
// itself, or (`by_proc`, or where that is refused) by its /proc/self/fd link, which older
// kernels allow any process. -1 with errno as linkat left it.
int link_unnamed(int fd, int dfd, const char* name, bool by_proc) {
    if (!by_proc && ::linkat(fd, "", dfd, name, AT_EMPTY_PATH) == 0) {
        return 0;
    }
    if (!by_proc && errno != ENOENT) {
        return -1;
    }
    char self[32];
    std::snprintf(self, sizeof self, "/proc/self/fd/%d", fd);
    return ::linkat(AT_FDCWD, self, dfd, name, AT_SYMLINK_FOLLOW);
}

}  // namespace

dest_tree::unnamed_link dest_tree::unnamed_how() {
    unnamed_link how = unnamed_link_.load(std::memory_order_relaxed);
    if (how == unnamed_link::unknown) {
        // Asked once, without making a name: linking an open O_TMPFILE file to "." fails
        // with EEXIST where linkat may name it that way, and with ENOENT where it may
        // not (or where /proc is not there). (Test hook, tests/e2e:
        // FERRY_FAULT_NO_UNNAMED=all answers no, as a file system without O_TMPFILE
        // would; =fd skips the link by the descriptor, as a kernel before 6.10 would.)
        const char* fault = std::getenv("FERRY_FAULT_NO_UNNAMED");
        std::string_view no = fault != nullptr ? fault : "";
        unique_fd probe(::openat(root_fd_, ".", O_TMPFILE | O_WRONLY | O_CLOEXEC, 0600));
        how = unnamed_link::none;
        if (probe.get() >= 0 && no != "all") {
            if (no != "fd" && ::linkat(probe.get(), "", root_fd_, ".", AT_EMPTY_PATH) != 0 && errno == EEXIST) {
                how = unnamed_link::by_fd;
            } else if (link_unnamed(probe.get(), root_fd_, ".", true) != 0 && errno == EEXIST) {
                how = unnamed_link::by_proc;
            }
        }
        unnamed_link_.store(how, std::memory_order_relaxed);
    }
    return how;
}

unnamed_file dest_tree::open_unnamed(std::string_view wire_path, std::uint32_t mode, std::error_code& ec) {
    if (unnamed_how() == unnamed_link::none) {
        return {};
    }
    if (!reserve_unnamed()) {
        return {};
    }
    dir_handle dh = dir_fd(wire_parent(wire_path), true, ec, true);
    int fd = dh.fd < 0 ? -1 : ::openat(dh.fd, ".", O_TMPFILE | O_WRONLY | O_CLOEXEC, static_cast<mode_t>(mode & 0777));
    if (fd < 0) {
        int err = errno;
        release_unnamed();
        if (dh.fd >= 0 && !no_tmpfile_here(err)) {
            ec = std::error_code(err, std::system_category());
        }
        return {};
    }
    return unnamed_file(fd);  // counted above; reset() uncounts it
}

void dest_tree::write_new_files(std::span<new_file> files) {
    if (files.empty() || unnamed_how() == unnamed_link::none) {
        return;
    }
    // The opens: one call each, in one submission (each file's folder made first, here).
    std::vector<dir_handle> dirs(files.size());
    std::vector<ring_call> calls;
    std::vector<std::size_t> of;  // the file of each call
    calls.reserve(files.size());
    of.reserve(files.size());
    for (std::size_t i = 0; i < files.size(); ++i) {
        new_file& f = files[i];
        if (f.data.size() > std::numeric_limits<unsigned>::max() || !reserve_unnamed()) {
            continue;  // open_unnamed's caller makes a partial file
        }
        dirs[i] = dir_fd(wire_parent(f.wire_path), true, f.ec, true);
        if (dirs[i].fd < 0) {
            release_unnamed();
            f.handled = true;  // as open_unnamed fails
            continue;
        }
        calls.push_back({.what = ring_call::op::open_tmpfile, .fd = dirs[i].fd, .mode = f.mode & 0777});
        of.push_back(i);
    }
    if (calls.empty()) {
        return;
    }
    if (!make_calls(calls)) {
        for (std::size_t k = 0; k < calls.size(); ++k) {
            release_unnamed();
        }
        return;
    }
    // The writes, in a second submission.
    std::vector<ring_call> writes;
    std::vector<std::size_t> written;
    writes.reserve(calls.size());
    for (std::size_t k = 0; k < calls.size(); ++k) {
        new_file& f = files[of[k]];
        int res = calls[k].res;
        if (res < 0) {  // (not_made too)
            release_unnamed();
            // No O_TMPFILE here: the caller's own way makes a partial file; any other
            // error is the file's.
            if (res != ring_call::not_made && !no_tmpfile_here(-res)) {
                f.ec = std::error_code(-res, std::system_category());
                f.handled = true;
            }
            continue;
        }
        f.file = unnamed_file(res);  // counted above
        writes.push_back({.what = ring_call::op::write, .fd = res, .buf = f.data.data(),
                          .len = static_cast<unsigned>(f.data.size())});
        written.push_back(of[k]);
    }
    auto t0 = std::chrono::steady_clock::now();
    if (!writes.empty()) {
        make_calls(writes);  // without io_uring every res stays not_made: written below
    }
    auto each = (std::chrono::steady_clock::now() - t0) / std::max<std::size_t>(writes.size(), 1);
    for (std::size_t k = 0; k < writes.size(); ++k) {
        new_file& f = files[written[k]];
        f.handled = true;
        f.write_time = each;
        int res = writes[k].res;
        if (res < 0 && res != ring_call::not_made) {
            f.ec = std::error_code(-res, std::system_category());
        } else if (res == ring_call::not_made || static_cast<std::size_t>(res) < f.data.size()) {
            // A short write: the rest. Not made: all of it.
            auto done = static_cast<std::size_t>(res == ring_call::not_made ? 0 : res);
            f.ec = write_at(f.file.get(), f.data.data() + done, f.data.size() - done, done);
        }
        if (!f.ec) {
            f.ec = prepare_final(f.file.get(), f.size, f.mode, f.mtime_ns, false, &f.stored, f.data.size() == f.size,
                                 true);
        }
        if (f.ec) {
            f.file.reset();  // gone with its descriptor
        }
    }
}

std::error_code dest_tree::link_final(const unnamed_file& file, std::string_view wire_path, bool overwrite) {
    std::error_code ec;
    dir_handle dh = dir_fd(wire_parent(wire_path), true, ec, true);
    if (dh.fd < 0) {
        return ec;
    }
    bool by_proc = unnamed_link_.load(std::memory_order_relaxed) == unnamed_link::by_proc;
    std::string name(wire_name(wire_path));
    std::string part = partial_name(name);
    // Another process writing this name (its partial file locked: open_partial_file) has it:
    // neither its partial file nor the name is this transfer's (a small `ferry get` beside a
    // large one of the same name removed the other's partial file, which then failed).
    partial_there left =
        dh.folder == nullptr || !dh.folder->made ? look_at_partial(dh.fd, part, true) : partial_there::none;
    if (left == partial_there::locked) {
        return make_error_code(dest_errc::busy);
    }
    if (link_unnamed(file.get(), dh.fd, name.c_str(), by_proc) == 0) {
        if (left == partial_there::free) {
            ::unlinkat(dh.fd, part.c_str(), 0);  // one an earlier attempt left
        }
        return {};
    }
    if (errno != EEXIST) {
        return last_error();
    }
    if (!overwrite) {
        return make_error_code(dest_errc::exists);
    }
    // Replaced as rename_final replaces: linked under the partial name, renamed over.
    if (link_unnamed(file.get(), dh.fd, part.c_str(), by_proc) != 0) {
        if (errno != EEXIST) {
            return last_error();
        }
        if (look_at_partial(dh.fd, part) == partial_there::locked) {
            return make_error_code(dest_errc::busy);
        }
        if (::unlinkat(dh.fd, part.c_str(), 0) != 0 ||  // one an earlier attempt left
            link_unnamed(file.get(), dh.fd, part.c_str(), by_proc) != 0) {
            return last_error();
        }
    }
    return rename_final(wire_path, true);
}

std::vector<int> dest_tree::link_new(std::span<unnamed_file* const> files,
                                    std::span<const std::string* const> wire_paths) {
    std::vector<int> out(files.size(), 1);
    if (unnamed_link_.load(std::memory_order_relaxed) != unnamed_link::by_fd) {
        return out;
    }
    std::vector<link_close> ops;
    std::vector<std::size_t> of;
    std::vector<dir_handle> dirs;  // held open until the links are done
    ops.reserve(files.size());
    of.reserve(files.size());
    dirs.reserve(files.size());
    for (std::size_t i = 0; i < files.size(); ++i) {
        std::error_code ec;
        dir_handle dh = dir_fd(wire_parent(*wire_paths[i]), false, ec, true);
        if (dh.fd < 0 || dh.folder == nullptr || !dh.folder->made || files[i]->get() < 0) {
            continue;  // link_final: a partial file may be there to remove
        }
        dirs.push_back(std::move(dh));
        // The name is the path's tail, so its bytes end with the path's own terminator.
        ops.push_back(link_close{files[i]->get(), dirs.back().fd, wire_name(*wire_paths[i]).data()});
        of.push_back(i);
    }
    if (ops.size() < 2 || !link_and_close(ops)) {
        return out;
    }
    for (std::size_t k = 0; k < ops.size(); ++k) {
        std::size_t i = of[k];
        if (ops[k].result == 0) {
            files[i]->forget();  // closed by the submission
            out[i] = 0;
        } else if (ops[k].result == 2 || ops[k].result == 3) {
            files[i]->forget();  // whether it is still open is unknown: never close it
            out[i] = 2;
        }
    }
    return out;
}

int dest_tree::open_partial_file(std::string_view wire_path, int flags, std::uint32_t mode, std::error_code& ec,
                                 bool again) {
    dir_handle dh = dir_fd(wire_parent(wire_path), true, ec, true);
    int dfd = dh.fd;
    if (dfd < 0) {
        return -1;
    }
    std::string part = partial_name(wire_name(wire_path));
    // Truncated only once it is this process's (the lock below): not another's data.
    const bool truncate = (flags & O_TRUNC) != 0;
    flags &= ~O_TRUNC;
    int fd = ::openat(dfd, part.c_str(), O_WRONLY | flags | O_NOFOLLOW | O_CLOEXEC, static_cast<mode_t>(mode));
    if (fd < 0 && (errno == EACCES || errno == EPERM) && truncate) {
        // A partial file an earlier attempt left with a read-only mode (a file written
        // whole is created with its final bits): replaced, since it is truncated anyway.
        // None there (the folder itself is not writable): the open's error stands.
        int open_errno = errno;
        // Not one another process writes (it holds the lock): that one stays, and this
        // transfer is refused the file, as below.
        if (partial_locked(dfd, part)) {
            ec = make_error_code(dest_errc::busy);
            return -1;
        }
        if (::unlinkat(dfd, part.c_str(), 0) == 0) {
            fd = ::openat(dfd, part.c_str(), O_WRONLY | flags | O_EXCL | O_NOFOLLOW | O_CLOEXEC,
                          static_cast<mode_t>(mode));
        } else {
            errno = open_errno;
        }
    }
    if (fd < 0) {
        ec = errno == ELOOP ? make_error_code(dest_errc::symlink) : last_error();
        return -1;
    }
    // Whoever writes a partial file holds a lock on it while its descriptor is open: two
    // processes writing the same file into one folder (two `ferry get`s, a pull and a get,
    // a serve's share and a local get) would otherwise write into one partial file, and
    // the first to finish would name a mix of both. flock is per open file: a transfer of
    // this process whose write of it is still finishing (a retry's attempt before) holds it
    // for a moment, hence the short wait.
    for (int tries = 0; ::flock(fd, LOCK_EX | LOCK_NB) != 0; ++tries) {
        if (errno == ENOLCK || errno == EOPNOTSUPP || errno == ENOSYS || errno == EINVAL) {
            break;  // a file system without flock (NFS without its lock daemon): as before
        }
        if (errno != EWOULDBLOCK || tries >= partial_lock_tries) {
            int err = errno;
            ::close(fd);
            ec = err == EWOULDBLOCK ? make_error_code(dest_errc::busy) : std::error_code(err, std::system_category());
            return -1;
        }
        std::this_thread::sleep_for(partial_lock_pause);
    }
    // What was locked must still be the file at the partial name: a writer that held it
    // gives its lock up only once it has named the file (receive_session's renames), and
    // the file then is that writer's final file, not a partial one.
    struct stat locked {};
    struct stat named {};
    if (::fstat(fd, &locked) != 0 || ::fstatat(dfd, part.c_str(), &named, AT_SYMLINK_NOFOLLOW) != 0 ||
        locked.st_ino != named.st_ino || locked.st_dev != named.st_dev) {
        ::close(fd);
        if (again) {
            // Named by its writer (another attempt of this process, finishing): a new
            // partial file, or none to resume from.
            return open_partial_file(wire_path, flags | (truncate ? O_TRUNC : 0), mode, ec, false);
        }
        ec = make_error_code(dest_errc::busy);
        return -1;
    }
    if (truncate && ::ftruncate(fd, 0) != 0) {
        ec = last_error();
        ::close(fd);
        return -1;
    }
    return fd;
}

int dest_tree::open_partial_read(std::string_view wire_path, std::error_code& ec) {
    dir_handle dh = dir_fd(wire_parent(wire_path), false, ec);
    if (dh.fd < 0) {
        if (ec == std::errc::no_such_file_or_directory) {
            ec.clear();
        }
        return -1;
    }
    std::string part = partial_name(wire_name(wire_path));
    int fd = ::openat(dh.fd, part.c_str(), O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
    if (fd < 0 && errno != ENOENT) {
        ec = errno == ELOOP ? make_error_code(dest_errc::symlink) : last_error();
    }
    return fd;
}

std::uint64_t dest_tree::partial_size(std::string_view wire_path, bool* locked) {
    std::error_code ec;
    int fd = open_partial_read(wire_path, ec);
    if (fd < 0) {
        return 0;
    }
    struct stat st {};
    std::uint64_t size = ::fstat(fd, &st) == 0 && S_ISREG(st.st_mode) ? static_cast<std::uint64_t>(st.st_size) : 0;
    if (locked != nullptr) {
        // (No wait here, unlike open_partial_file: a batch may hold many such files. One
        // this process's earlier attempt still held is let go well before a new attempt
        // gets its offer.)
        *locked = locked_by_writer(fd);
    }
    ::close(fd);
    return size;
}

std::error_code dest_tree::save_resume(std::string_view wire_path, std::string_view record) {
    std::error_code ec;
    dir_handle dh = dir_fd(wire_parent(wire_path), false, ec, true);
    if (dh.fd < 0) {
        return ec;
    }
    std::string name = resume_name(wire_name(wire_path));
    std::string tmp = name + "~";
    int fd = ::openat(dh.fd, tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_NOFOLLOW | O_CLOEXEC, 0600);
    if (fd < 0) {
        return errno == ELOOP ? make_error_code(dest_errc::symlink) : last_error();
    }
    ec = write_at(fd, reinterpret_cast<const std::uint8_t*>(record.data()), record.size(), 0);
    if (!ec && ::fdatasync(fd) != 0) {
        ec = last_error();
    }
    if (::close(fd) != 0 && !ec) {
        ec = last_error();
    }
    if (!ec && ::renameat(dh.fd, tmp.c_str(), dh.fd, name.c_str()) != 0) {
        ec = last_error();
    }
    if (ec) {
        ::unlinkat(dh.fd, tmp.c_str(), 0);
    }
    return ec;
}

std::string dest_tree::load_resume(std::string_view wire_path, std::error_code& ec) {
    // A record lists 16 bytes per chunk it has: 256 MiB covers a 4 TiB file.
    constexpr off_t max_record = 256 << 20;
    std::string out;
    dir_handle dh = dir_fd(wire_parent(wire_path), false, ec);
    if (dh.fd < 0) {
        if (ec == std::errc::no_such_file_or_directory) {
            ec.clear();
        }
        return out;
    }
    std::string name = resume_name(wire_name(wire_path));
    int fd = ::openat(dh.fd, name.c_str(), O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
    if (fd < 0) {
        if (errno != ENOENT) {
            ec = errno == ELOOP ? make_error_code(dest_errc::symlink) : last_error();
        }
        return out;
    }
    struct stat st {};
    if (::fstat(fd, &st) != 0) {
        ec = last_error();
    } else if (!S_ISREG(st.st_mode) || st.st_size > max_record) {
        ec = std::make_error_code(std::errc::file_too_large);
    } else {
        out.resize(static_cast<std::size_t>(st.st_size));
        std::error_code rec;
        // Shorter than it said (or unreadable): the decoder refuses what there is.
        out.resize(read_at(fd, reinterpret_cast<std::uint8_t*>(out.data()), out.size(), 0, rec));
    }
    ::close(fd);
    return out;
}

void dest_tree::remove_partial(std::string_view wire_path, bool data, bool record) {
    std::error_code ec;
    dir_handle dh = dir_fd(wire_parent(wire_path), false, ec, true);
    if (dh.fd < 0) {
        return;
    }
    std::string name(wire_name(wire_path));
    if (data) {
        // Not a partial file another process writes (its lock: open_partial_file): that
        // one stays, with its record. (This process's own writer closes it first.)
        std::string part = partial_name(name);
        if (partial_locked(dh.fd, part)) {
            return;
        }
        ::unlinkat(dh.fd, part.c_str(), 0);
    }
    if (record) {
        ::unlinkat(dh.fd, resume_name(name).c_str(), 0);
    }
}

std::error_code dest_tree::finalize(std::string_view wire_path, int fd, std::uint64_t size, std::uint32_t mode,
                                    std::int64_t mtime_ns, bool fsync_file, bool overwrite) {
    // The partial file stays open (and locked: open_partial_file) until it has its name:
    // another process must not take it between.
    std::error_code ec = prepare_final(fd, size, mode, mtime_ns, fsync_file, nullptr, false, true);
    if (!ec) {
        ec = rename_final(wire_path, overwrite, fsync_file);
    }
    ::close(fd);
    return ec;
}

std::error_code dest_tree::prepare_final(int fd, std::uint64_t size, std::uint32_t mode, std::int64_t mtime_ns,
                                         bool fsync_file, stored_file* stored, bool size_written, bool keep_open) {
    std::error_code ec;
    struct stat st {};
    if (!size_written && ::fstat(fd, &st) == 0 && static_cast<std::uint64_t>(st.st_size) != size &&
        ::ftruncate(fd, static_cast<off_t>(size)) != 0) {
        ec = last_error();
    }
    if (!ec) {
        ec = set_mtime(fd, mtime_ns);
    }
    // One fstat serves the mode check and what is stored (a chmod leaves the mtime).
    struct stat after {};
    if (!ec && ::fstat(fd, &after) != 0) {
        ec = last_error();
    }
    if (!ec && (after.st_mode & 07777) != (mode & 07777) && ::fchmod(fd, mode & 07777) != 0) {
        ec = last_error();
    }
    if (!ec && fsync_file && ::fsync(fd) != 0) {
        ec = last_error();
    }
    if (!ec && stored != nullptr) {
        stored->mtime_ns = timespec_ns(after.st_mtim);
        stored->dev = static_cast<std::uint64_t>(after.st_dev);
        stored->ino = static_cast<std::uint64_t>(after.st_ino);
    }
    if (!keep_open && ::close(fd) != 0 && !ec) {
        ec = last_error();
    }
    return ec;
}

std::error_code dest_tree::rename_final(std::string_view wire_path, bool overwrite, bool sync_dir) {
    std::error_code ec;
    dir_handle dh = dir_fd(wire_parent(wire_path), true, ec, true);
    int dfd = dh.fd;
    if (dfd < 0) {
        return ec;
    }
    std::string name(wire_name(wire_path));
    std::string part = partial_name(name);
    if (overwrite) {
        if (std::error_code kept = kept_kind_at(dfd, name)) {
            return kept;
        }
    }
    unsigned flags = overwrite ? 0 : RENAME_NOREPLACE;
    if (::renameat2(dfd, part.c_str(), dfd, name.c_str(), flags) != 0) {
        return errno == EEXIST ? make_error_code(dest_errc::exists) : last_error();
    }
    if (sync_dir && ::fsync(dfd) != 0) {
        return last_error();
    }
    return {};
}

bool dest_tree::folder_differs(std::string_view wire_path, std::uint32_t mode, std::int64_t mtime_ns) {
    std::error_code ec;
    dir_handle dh = dir_fd(wire_path, false, ec);
    struct stat st {};
    if (dh.fd < 0 || ::fstat(dh.fd, &st) != 0) {
        return false;
    }
    // (A user not root may not be let set the set-group-ID bit: only the 9 bits count then,
    // or such a folder would be told of at every sync.)
    const mode_t bits = effective_uid == 0 ? 07777 : 0777;
    return (st.st_mode & bits) != (mode & bits) ||
           !same_stored_mtime(timespec_ns(st.st_mtim), mtime_ns, mtime_step(st.st_dev, dh.fd));
}

dest_tree::folder_state dest_tree::look_at_folder(std::string_view wire_path, std::uint32_t mode, std::int64_t mtime_ns,
                                                  bool keep_mode) {
    // One look by its whole path, with no folder opened on the way (the cache of open
    // folders let most go long before the end). A symlink on the way is followed here:
    // nothing is changed through what this looks at, and at worst a folder finish_dir
    // could not have reached (it opens each step without following one) is taken as done
    // instead of failing; the symlink in its way fails where it is (as a folder of DST
    // replaced by a link meanwhile, reported with its own path).
    struct stat st {};
    const int looked = wire_path.empty()
                           ? ::fstat(root_fd_, &st)
                           : ::fstatat(root_fd_, std::string(wire_path).c_str(), &st, AT_SYMLINK_NOFOLLOW);
    if (looked != 0 || !S_ISDIR(st.st_mode)) {
        return folder_state::other;
    }
    if (effective_uid != 0) {
        // One this process made writable for its owner takes SRC's mode at the end
        // (restore_modes), which finish_dir records. (One only held, its mode as it was,
        // is as any other.)
        std::lock_guard registry(loosened_registry_mutex);
        if (auto it = loosened_registry.find({st.st_dev, st.st_ino});
            it != loosened_registry.end() && it->second.changed) {
            return folder_state::other;
        }
    }
    if (!keep_mode && (st.st_mode & 07777) != (mode & 07777)) {
        return folder_state::other;
    }
    std::int64_t step = 0;
    {
        // (The step of a file system no check has probed yet is not probed here: its
        // folders' mtimes are set.)
        std::lock_guard lock(steps_mutex_);
        const std::int64_t* known = known_mtime_step(st.st_dev);
        if (known == nullptr) {
            return folder_state::mode_as_given;
        }
        step = *known;
    }
    return same_stored_mtime(timespec_ns(st.st_mtim), mtime_ns, step) ? folder_state::as_given
                                                                      : folder_state::mode_as_given;
}

std::error_code dest_tree::finish_dir(std::string_view wire_path, std::uint32_t mode, std::int64_t mtime_ns,
                                      bool keep_mode) {
    // Looked at first: one already as SRC has it (every folder of a sync with nothing to
    // do) is neither opened nor changed, and keeps its ctime, as rsync leaves it (a
    // user's test: 9,781 folders, 2 system calls each, and an open of every folder on its
    // path that the cache of open folders had let go).
    // One whose mode is SRC's (a folder just made, most often) only takes the mtime.
    // (The sync's own folder and a share's, "", too.)
    const folder_state state = look_at_folder(wire_path, mode, mtime_ns, keep_mode);
    if (state == folder_state::as_given) {
        return {};
    }
    std::error_code ec;
    if (state == folder_state::mode_as_given && wire_path.empty()) {
        return set_mtime(root_fd_, mtime_ns);
    }
    if (state == folder_state::mode_as_given) {
        // Through its parent, which the folders before it (in reverse walk order, its
        // siblings) had opened: not opened itself (a tree of a folder per file opened each
        // again here). Never through a symlink: one swapped in meanwhile gets the mtime.
        dir_handle parent = dir_fd(wire_parent(wire_path), false, ec);
        if (parent.fd < 0) {
            return ec;
        }
        if (::utimensat(parent.fd, std::string(wire_name(wire_path)).c_str(), mtime_only(mtime_ns).data(),
                        AT_SYMLINK_NOFOLLOW) != 0) {
            return last_error();
        }
        return {};
    }
    dir_handle dh = dir_fd(wire_path, false, ec);
    int fd = dh.fd;
    if (fd < 0) {
        return ec;
    }
    if (keep_mode) {
        return set_mtime(fd, mtime_ns);
    }
    if (effective_uid != 0) {
        // A folder made writable for its owner takes SRC's mode when the last transfer
        // writing there is done (restore_modes): until then it keeps the owner's bits.
        struct stat st {};
        std::lock_guard registry(loosened_registry_mutex);
        auto it = ::fstat(fd, &st) == 0 ? loosened_registry.find({st.st_dev, st.st_ino}) : loosened_registry.end();
        if (it != loosened_registry.end()) {
            it->second.mode = static_cast<mode_t>(mode & 07777);
            if ((mode & S_IRWXU) == S_IRWXU) {
                return set_mode_and_mtime(fd, mode, mtime_ns);  // nothing the others need is taken away
            }
            it->second.changed = true;
            return set_mode_and_mtime(fd, (mode & 07777) | S_IRWXU, mtime_ns);
        }
    }
    return set_mode_and_mtime(fd, mode, mtime_ns);
}

void dest_tree::hold_folder(std::string_view path, mode_t need, const std::function<bool(struct stat&)>& look,
                            const std::function<bool(mode_t)>& chmod) {
    // The look, the change and the record under one lock: a folder another tree of the
    // process is giving its mode back meanwhile is seen as it is after that.
    std::lock_guard registry(loosened_registry_mutex);
    struct stat st {};
    if (!look(st) || !S_ISDIR(st.st_mode) || st.st_uid != effective_uid) {
        return;
    }
    const std::pair<dev_t, ino_t> key{st.st_dev, st.st_ino};
    auto it = loosened_registry.find(key);
    const bool lacking = (st.st_mode & need) != need;
    if (it == loosened_registry.end() && !lacking && (need & S_IWUSR) == 0) {
        return;  // only looked in, and it may be
    }
    if (lacking && !chmod((st.st_mode & 07777) | need)) {
        return;  // what is done there then fails, and says why
    }
    if (it == loosened_registry.end()) {
        it = loosened_registry.emplace(key, loosened_entry{static_cast<mode_t>(st.st_mode & 07777), 0, false}).first;
    }
    it->second.changed = it->second.changed || lacking;
    std::lock_guard lock(loosened_mutex_);
    if (loosened_.emplace(std::string(path), key).second) {
        ++it->second.users;
    }
}

void dest_tree::make_accessible(int fd, std::string_view path, mode_t need) {
    if (effective_uid == 0 || !receiving_ || restoring_ || (path.empty() && !root_mirrored_)) {
        return;
    }
    hold_folder(
        path, need, [fd](struct stat& st) { return ::fstat(fd, &st) == 0; },
        [fd](mode_t m) { return ::fchmod(fd, m) == 0; });
}

bool dest_tree::open_up(int parent_fd, const std::string& name, std::string_view path, mode_t need) {
    if (effective_uid == 0 || !receiving_ || restoring_ || path.empty()) {
        return false;
    }
    bool changed = false;
    // Never through a symlink swapped in since the look (fchmodat2, or glibc's O_PATH way).
    hold_folder(
        path, need,
        [&](struct stat& st) { return ::fstatat(parent_fd, name.c_str(), &st, AT_SYMLINK_NOFOLLOW) == 0; },
        [&](mode_t m) { return changed = ::fchmodat(parent_fd, name.c_str(), m, AT_SYMLINK_NOFOLLOW) == 0; });
    return changed;
}

void dest_tree::restore_modes() {
    std::unordered_map<std::string, std::pair<dev_t, ino_t>> loosened;
    {
        std::lock_guard lock(loosened_mutex_);  // (taken after the registry's in hold_folder: not held with it here)
        loosened.swap(loosened_);
    }
    // Deepest first: a folder found again by its path is not reached through one whose
    // mode already went back.
    std::vector<std::pair<std::string, std::pair<dev_t, ino_t>>> order(loosened.begin(), loosened.end());
    // (The root, "", after the folders at the top, which have no '/' either.)
    std::ranges::sort(order, std::greater<>{}, [](const auto& e) {
        return e.first.empty() ? std::ptrdiff_t{-1} : std::ranges::count(e.first, '/');
    });
    restoring_ = true;  // the folders found again below are not held again
    // In runs, so that few folders are held open at once: those this tree is the last to
    // hold and whose mode is to change are found again by their paths (no descriptor is
    // kept for each: there may be thousands), outside the registry's lock (dir_fd takes
    // the tree's, which make_accessible is called under); then, under it, each hold is let
    // go and the last one sets the mode. (A folder another tree let go of in between is
    // not found: it keeps its owner's bits.)
    constexpr std::size_t run = 64;
    for (std::size_t from = 0; from < order.size(); from += run) {
        const std::size_t to = std::min(order.size(), from + run);
        std::vector<bool> wanted(to - from, false);
        {
            std::lock_guard registry(loosened_registry_mutex);
            for (std::size_t i = from; i < to; ++i) {
                auto it = loosened_registry.find(order[i].second);
                wanted[i - from] = it != loosened_registry.end() && it->second.users == 1 && it->second.changed;
            }
        }
        std::vector<dir_handle> found(to - from);
        for (std::size_t i = from; i < to; ++i) {
            if (wanted[i - from]) {
                std::error_code ec;
                found[i - from] = dir_fd(order[i].first, false, ec);  // one removed or replaced: not found
            }
        }
        std::lock_guard registry(loosened_registry_mutex);
        for (std::size_t i = from; i < to; ++i) {
            const auto& key = order[i].second;
            auto it = loosened_registry.find(key);
            if (it == loosened_registry.end() || --it->second.users > 0) {
                continue;  // another transfer still works there: its end sets the mode
            }
            struct stat st {};
            const int fd = found[i - from].fd;
            if (it->second.changed && fd >= 0 && ::fstat(fd, &st) == 0 && st.st_dev == key.first &&
                st.st_ino == key.second && (st.st_mode & 07777) != it->second.mode) {
                ::fchmod(fd, it->second.mode);
            }
            loosened_registry.erase(it);
        }
    }
    restoring_ = false;
}

std::error_code dest_tree::sync_all() {
    if (::syncfs(root_fd_) != 0) {
        return last_error();
    }
    return {};
}

}  // namespace ferry
