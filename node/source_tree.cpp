#include "node/source_tree.hpp"

#include <dirent.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>
#ifdef __GLIBC__
#include <malloc.h>  // malloc_trim
#endif

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdlib>
#include <iterator>
#include <set>
#include <string_view>
#include <thread>
#include <utility>

#include "node/file_io.hpp"
#include "node/worker_pool.hpp"
#include "protocol/path.hpp"

namespace ferry {

namespace {

// Folders deeper than this are walked by full path instead of keeping one open folder
// per level, so that a very deep tree cannot run out of file descriptors.
constexpr int max_open_depth = 128;

// Scans of at least this many entries give their threads' freed memory back (below).
constexpr std::size_t trim_after_entries = 10'000;

// Threads a sync's scan uses outside a node: one per core, up to 4 (the stats are system
// calls that scale with cores; past a few, the file system's locks do not).
std::size_t max_scan_threads() { return std::clamp<std::size_t>(std::thread::hardware_concurrency(), 1, 4); }

// Why the wire path `wire`, of a name on disk, cannot be sent (check_wire_path refused it:
// a name or the whole path too long).
std::string unsendable_path(std::string_view wire) {
    for (std::string_view name : split_wire_path(wire)) {
        if (name.size() > max_name_bytes) {
            return "a name over " + std::to_string(max_name_bytes) + " bytes cannot be sent";
        }
    }
    return "path too long to send (over " + std::to_string(max_path_bytes) + " bytes below SRC)";
}

// Test faults for a streamed scan (a send offers its entries while it scans):
// FERRY_FAULT_SCAN_WAIT=ENTRY=FILE holds the scan at the wire path ENTRY until FILE exists
// (the scan fails after 10 s without it), FERRY_FAULT_SCAN_FAIL=ENTRY fails it there.
struct scan_faults {
    std::string wait_at, wait_for, fail_at;
    scan_faults() {
        if (const char* v = std::getenv("FERRY_FAULT_SCAN_WAIT")) {
            std::string spec = v;
            if (auto eq = spec.find('='); eq != std::string::npos) {
                wait_at = spec.substr(0, eq);
                wait_for = spec.substr(eq + 1);
            }
        }
        if (const char* v = std::getenv("FERRY_FAULT_SCAN_FAIL")) {
            fail_at = v;
        }
    }
    // False (and `error` set) when the scan must fail at `wire`.
    bool at(const std::string& wire, std::string& error) const {
        if (!wait_at.empty() && wire == wait_at && !wait_until_exists(wait_for, std::chrono::seconds(10))) {
            error = wire + ": FERRY_FAULT_SCAN_WAIT timed out";
            return false;
        }
        if (!fail_at.empty() && wire == fail_at) {
            error = wire + ": injected scan failure";
            return false;
        }
        return true;
    }
    // Whether a hold or failure is set at `wire`: such a folder is not split (its entry
    // would be visited before anything is fed, where a hold cannot be let go).
    bool marks(std::string_view wire) const { return wire == wait_at || wire == fail_at; }
};

const scan_faults& faults() {
    static const scan_faults f;
    return f;
}

// Why an entry of mode `mode` named `name` is left out of a scan (the note's ending), or
// null when it is walked.
const char* skip_note(mode_t mode, std::string_view name, bool keep_links) {
    if (S_ISLNK(mode) && !keep_links) {
        return " (symlink)";
    }
    if (!S_ISREG(mode) && !S_ISDIR(mode) && !S_ISLNK(mode)) {
        return " (not a regular file)";
    }
    if (S_ISREG(mode) && is_partial_file_name(name)) {
        return " (a ferry partial file)";
    }
    return nullptr;
}

struct scanner;
bool walk_in_parts(const scanner& how, int fd, std::vector<std::string> names, std::vector<unsigned char> types,
                   const std::string& local_prefix, const std::string& wire_prefix, worker_pool* pool);

// Walks the sources with one open folder per level: each entry is a short fstatat()
// relative to its folder, not a lookup of its whole path (10,000 files: a few ms).
struct scanner {
    source_tree& out;
    std::string& error;
    std::set<std::string> top_names;  // inside a folder names are unique; only sources can clash
    const exclude_set* excludes = nullptr;
    bool keep_links = false;  // `ferry sync`: a symlink is an entry of its own (kept as a link)
    bool keep_locals = true;  // false: out.locals stays empty (scan_contents' local_prefix)
    bool recurse = true;      // false: a folder's own entry only, not what it holds
    scan_feed* feed = nullptr;  // parts go to it as the walk goes
    std::errc failure = std::errc::invalid_argument;  // scan_sources' error code: file_exists for a name clash

    bool fail(const std::string& local, int err) {
        error = local + ": " + std::error_code(err, std::system_category()).message();
        return false;
    }

    // An entry below a source that `err` keeps from being walked: one this user may not
    // read is left out and kept at DST (skipped_paths); one that vanished (or turned from
    // a folder into something else, a symlink too) meanwhile is left out. Either way it is reported as
    // not sent and the walk goes on: true. Any other error fails the scan (false). A
    // `folder` counts in failed_other, anything else in failed_files.
    bool not_read(const std::string& local, const std::string& wire, int err, bool folder = false) {
        const bool vanished = vanished_error(err);
        if (!vanished && err != EACCES && err != EPERM && err != EIO) {
            return fail(local, err);
        }
        std::string why = std::error_code(err, std::system_category()).message();
        out.unread.push_back({wire, vanished ? "vanished while the sources were scanned" : "cannot read it: " + why,
                              vanished, false, false, !folder});
        if (!vanished) {
            out.skipped_paths.push_back(wire);
        }
        return true;
    }

    // One entry: `dir_fd`/`name` (dir_fd may be AT_FDCWD with a full path as name), at
    // `depth` folders below a source.
    bool visit(int dir_fd, const char* name, const std::string& local, const std::string& wire, int depth) {
        if (feed != nullptr && feed->cancelled()) {
            error = "scan stopped";  // the send it fed ended
            return false;
        }
        if (!faults().at(wire, error)) {
            return false;
        }
        struct stat st {};
        if (::fstatat(dir_fd, name, &st, AT_SYMLINK_NOFOLLOW) != 0) {
            return depth > 0 ? not_read(local, wire, errno) : fail(local, errno);
        }
        if (const char* skip = skip_note(st.st_mode, wire_name(wire), keep_links)) {
            out.skipped.push_back(printable(local) + skip);
            out.skipped_paths.push_back(wire);  // checked if it must travel (keep_skipped)
            out.skipped_notes.push_back(wire + skip);
            return true;
        }
        if (excludes != nullptr && excludes->excluded(wire, S_ISDIR(st.st_mode))) {
            ++out.excluded;
            return true;  // and whatever is in it
        }
        if (check_wire_path(wire)) {
            error = local + ": " + unsendable_path(wire);
            return false;
        }
        entry_info e;
        e.path = wire;
        e.is_dir = S_ISDIR(st.st_mode);
        e.is_link = S_ISLNK(st.st_mode);
        e.size = S_ISREG(st.st_mode) ? static_cast<std::uint64_t>(st.st_size) : 0;
        e.mode = e.is_link ? 0777 : st.st_mode & 07777;
        e.mtime_ns = timespec_ns(st.st_mtim);
        if (e.is_link) {
            std::string target;
            if (!read_link(dir_fd, name, local, target)) {
                return false;
            }
            e.link_target = std::move(target);
        }
        out.total_bytes += e.size;
        out.entries.push_back(std::move(e));
        if (keep_locals) {
            out.locals.emplace_back(local);
        }
        if (!S_ISDIR(st.st_mode) || !recurse) {
            return true;
        }
        return walk_contents(dir_fd, name, local, wire, depth);
    }

    // What the symlink `dir_fd`/`name` holds, never followed. One that cannot be sent as
    // it is (longer than a link may hold, or changed to something else meanwhile) fails
    // the scan, as a file that cannot be read does.
    bool read_link(int dir_fd, const char* name, const std::string& local, std::string& target) {
        target.resize(max_link_target + 1);
        ssize_t n = ::readlinkat(dir_fd, name, target.data(), target.size());
        if (n < 0) {
            return fail(local, errno);
        }
        if (n == 0 || static_cast<std::size_t>(n) > max_link_target) {
            error = local + ": symlink target too long to send";
            return false;
        }
        target.resize(static_cast<std::size_t>(n));
        return true;
    }

    // The entries inside the folder `dir_fd`/`name` (wire path `wire`).
    bool walk_contents(int dir_fd, const char* name, const std::string& local, const std::string& wire, int depth) {
        int fd = ::openat(dir_fd, name, O_RDONLY | O_DIRECTORY | O_CLOEXEC | O_NOFOLLOW);
        std::vector<std::string> names;
        int err = fd < 0 ? errno : list_folder(fd, names).value();
        // A folder that may be listed but not searched: none of its entries can be looked
        // at, so it is left out (and kept at DST) as one, not as each of them.
        if (err == 0 && !names.empty() && ::faccessat(fd, ".", X_OK, AT_EACCESS) != 0 && errno == EACCES) {
            err = EACCES;
        }
        if (err != 0) {
            if (fd >= 0) {
                ::close(fd);
            }
            return unread_folder(local, wire, err);
        }
        if (depth >= max_open_depth) {
            ::close(fd);
            fd = AT_FDCWD;
        }
        std::string prefix = local.back() == '/' ? local : local + "/";
        bool ok = true;
        for (std::size_t i = 0; ok && i < names.size(); ++i) {
            std::string child = prefix + names[i];
            ok = visit(fd, fd == AT_FDCWD ? child.c_str() : names[i].c_str(), child, wire + "/" + names[i], depth + 1);
        }
        if (fd != AT_FDCWD) {
            ::close(fd);
        }
        return ok;
    }

    // The folder `wire`, just added to out, whose contents `err` keeps from being read.
    // One that vanished takes its entry out again; one this user may not read keeps it
    // (it is made at DST, what is in it there kept).
    bool unread_folder(const std::string& local, const std::string& wire, int err) {
        if (!not_read(local, wire, err, true)) {
            return false;
        }
        if (out.unread.back().vanished && !out.entries.empty() && out.entries.back().path == wire) {
            out.entries.pop_back();
            if (keep_locals) {
                out.locals.pop_back();
            }
        }
        return true;
    }

    // One source: a folder's contents are walked in parts, on a few threads.
    bool walk(const std::filesystem::path& local, const std::string& wire) {
        std::size_t before = out.entries.size();
        recurse = false;
        bool ok = visit(AT_FDCWD, local.c_str(), local.string(), wire, 0);
        recurse = true;
        if (!ok) {
            return false;
        }
        // A skipped source (a symlink, say) takes no name.
        if (out.entries.size() == before) {
            return true;
        }
        if (!top_names.insert(wire).second) {
            error = local.string() + ": two sources map to the same name \"" + wire + "\"";
            failure = std::errc::file_exists;
            return false;
        }
        if (!out.entries.back().is_dir) {
            return true;
        }
        int fd = ::openat(AT_FDCWD, local.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC | O_NOFOLLOW);
        if (fd < 0) {
            return fail(local.string(), errno);
        }
        unique_fd dir(fd);
        std::vector<std::string> names;
        std::vector<unsigned char> types;
        if (std::error_code ec = list_folder(fd, names, &types)) {
            error = local.string() + ": " + ec.message();
            return false;
        }
        std::string prefix = local.string().back() == '/' ? local.string() : local.string() + "/";
        return walk_in_parts(*this, fd, std::move(names), std::move(types), prefix, wire + "/", nullptr);
    }
};

// A folder whose entries are units of a walk in parts: the top's, or one split below it
// (held open until the walk has ended).
struct scan_folder {
    int fd = -1;
    unique_fd owned;  // a split folder's
    std::string local_prefix;
    std::string wire_prefix;
    int depth = 1;  // its entries'
    std::vector<std::string> names;
    std::vector<unsigned char> types;  // as the listing told them (DT_UNKNOWN: not told)
};

// A piece of a walk in parts: an entry of a scan_folder, walked with all it holds; or a
// folder split up (`own` >= 0: its entry, visited already), what it holds being the units
// after it. Small: a folder of 50,000 entries is as many units.
struct scan_unit {
    std::uint32_t folder = 0;  // in the walk's scan_folders
    std::uint32_t name = 0;    // in that folder's names
    std::int32_t own = -1;     // in the walk's split entries
    bool whole_only = false;   // tried and not split (not a folder, or one not to be opened here)
};

// Units a walk in parts wants at least: one folder of a tree holding all the rest would
// otherwise be one run, walked by one thread, and fed to the transfer only once walked
// whole (a sync of DIR/ holding project/ with 10,000 files sent its first file after the
// whole scan: 18 ms after connecting, against 2 ms when split).
constexpr std::size_t split_below_units = 256;
constexpr int split_levels = 8;            // how deep folders are split at most
constexpr std::size_t split_folders = 64;  // and how many, on the calling thread

// `units` with folders split into their own entry (visited here, as a run would record
// it, into `owns`) and what they hold (a new scan_folder, held open for the runs), level by
// level, while there are fewer than split_below_units. One that cannot be split as it is
// (not a folder, excluded, or not to be listed or searched) stays a unit of its own, and
// its run meets whatever kept it.
void split_units(const scanner& how, std::vector<scan_folder>& folders, std::vector<scan_unit>& units,
                 std::vector<source_tree>& owns);

// The entries `names` (with their d_types `types`) of the open folder `fd` (local path
// `local_prefix` + name, wire path `wire_prefix` + name) and all they hold, walked as `how`
// walks, appended to how.out in the order one walk would give (a folder before what it
// holds). The names, and the folders split_units splits below them, are taken in runs of
// consecutive units, each run walked by one of a few threads into a tree of its own, then
// joined: a stat costs a system call, and a big tree's scan is most of what a no-change
// sync does. The threads are the pool's workers (the caller's among them, when it is one)
// with `pool`, else threads of their own, one per core up to 4. On failure how.error
// names the first path, in walk order, that failed.
bool walk_in_parts(const scanner& how, int fd, std::vector<std::string> names, std::vector<unsigned char> types,
                   const std::string& local_prefix, const std::string& wire_prefix, worker_pool* pool) {
    // (Room for every folder split_units may split: a reference to one stays good while
    // more are added.)
    std::vector<scan_folder> folders(1);
    folders.reserve(1 + split_folders);
    folders[0].fd = fd;
    folders[0].local_prefix = local_prefix;
    folders[0].wire_prefix = wire_prefix;
    folders[0].names = std::move(names);
    folders[0].types = std::move(types);
    std::vector<scan_unit> units(folders[0].names.size());
    for (std::size_t i = 0; i < units.size(); ++i) {
        units[i].name = static_cast<std::uint32_t>(i);
    }
    std::vector<source_tree> owns;
    if (how.recurse) {
        split_units(how, folders, units, owns);
    }
    const std::size_t runs = std::min<std::size_t>(units.size(), 256);
    std::vector<source_tree> parts(runs);
    std::vector<std::string> errors(runs);
    std::atomic<std::size_t> next{0};
    source_tree& out = how.out;
    // Runs are joined to `out` in order as they end; with a feed, each joined stretch
    // goes to it at once (with whatever the walk put in `out` before).
    std::mutex join_mutex;
    std::vector<char> ended(runs, 0);
    std::size_t joined = 0;
    std::size_t entries = 0;
    auto join_ended = [&] {  // with join_mutex held
        std::size_t before = joined;
        while (joined < runs && ended[joined] && errors[joined].empty()) {
            entries += parts[joined].entries.size();
            append_part(out, std::move(parts[joined]));
            parts[joined] = {};  // its memory goes now, not after the last run's
            ++joined;
        }
        if (how.feed != nullptr && joined > before) {
            source_tree part;
            append_part(part, std::move(out));
            // Kept whole by the taker (sender_machine's segments): without the spare room
            // its doubling left.
            part.entries.shrink_to_fit();
            how.feed->put(std::move(part));
        }
    };
    auto scan_runs = [&] {
        for (std::size_t r = next++; r < runs; r = next++) {
            scanner part{parts[r], errors[r], {}, how.excludes, how.keep_links, how.keep_locals, how.recurse, how.feed};
            for (std::size_t i = units.size() * r / runs; i < units.size() * (r + 1) / runs; ++i) {
                const scan_unit& u = units[i];
                if (u.own >= 0) {
                    append_part(parts[r], std::move(owns[static_cast<std::size_t>(u.own)]));
                    continue;
                }
                const scan_folder& f = folders[u.folder];
                const std::string& name = f.names[u.name];
                if (!part.visit(f.fd, name.c_str(), f.local_prefix + name, f.wire_prefix + name, f.depth)) {
                    break;
                }
            }
            if (how.feed == nullptr) {
                // Joined only once every run has ended: until then the runs' arrays live
                // side by side, so none keeps the spare room its doubling left (200,000
                // entries: the scan's peak heap 61 MB -> 53 MB, heaptrack).
                parts[r].entries.shrink_to_fit();
            }
            std::lock_guard lock(join_mutex);
            ended[r] = 1;
            if (how.feed != nullptr) {
                join_ended();
            }
        }
    };
    if (pool != nullptr) {
        pool->run_parts(std::min(runs, pool->size()), [&](std::size_t) { scan_runs(); });
    } else {
        std::vector<std::jthread> helpers;
        try {
            for (std::size_t t = 1; t < std::min<std::size_t>(runs, max_scan_threads()); ++t) {
                helpers.emplace_back(scan_runs);
            }
        } catch (const std::system_error&) {
            // no more threads to be had: the ones there (this one at least) take every run
        }
        scan_runs();
    }
    if (how.feed == nullptr) {
        std::size_t all = 0;
        for (std::size_t r = 0; r < runs; ++r) {
            all += parts[r].entries.size();
        }
        out.entries.reserve(out.entries.size() + all);  // one array, not doubled as it grows
        join_ended();
    }
    if (joined < runs) {
        how.error = std::move(errors[joined]);  // the first in walk order, as one walk would stop at
        return false;
    }
    // The runs' arrays were allocated by the scanning threads, in their malloc arenas,
    // among the paths that live on: freed, their pages stay with the process (200,000
    // entries: 20 MB of RSS, depending on the entries' size) until given back here. Not
    // for small trees: it walks every arena under its lock.
#ifdef __GLIBC__
    if (entries >= trim_after_entries) {
        ::malloc_trim(0);
    }
#endif
    return true;
}

void split_units(const scanner& how, std::vector<scan_folder>& folders, std::vector<scan_unit>& units,
                 std::vector<source_tree>& owns) {
    for (int level = 1; level <= split_levels && units.size() < split_below_units; ++level) {
        std::vector<scan_unit> next;
        bool split_any = false;
        std::size_t count = units.size();  // units once this pass's splits so far are counted
        for (scan_unit& u : units) {
            const scan_folder& in = folders[u.folder];
            const unsigned char type =
                u.name < in.types.size() ? in.types[u.name] : static_cast<unsigned char>(DT_UNKNOWN);
            // (folders.size() - 1: the folders split so far; capacity() is reserved for them.)
            const bool candidate = in.depth == level && u.own < 0 && !u.whole_only &&
                                   (type == DT_DIR || type == DT_UNKNOWN) && count < split_below_units &&
                                   folders.size() - 1 < split_folders;
            if (!candidate) {
                next.push_back(u);
                continue;
            }
            // Its entry, as a run would visit it (its own checks, excludes and notes
            // included); then what it holds, as walk_contents lists it.
            const std::string& name = in.names[u.name];
            const std::string local = in.local_prefix + name;
            const std::string wire = in.wire_prefix + name;
            source_tree own;
            std::string error;
            scanner visitor{own, error, {}, how.excludes, how.keep_links, how.keep_locals, false, how.feed};
            bool split = !faults().marks(wire) && visitor.visit(in.fd, name.c_str(), local, wire, in.depth) &&
                         own.entries.size() == 1 && own.entries.front().is_dir && own.unread.empty() &&
                         own.skipped.empty();
            scan_folder inner;
            if (split) {
                inner.owned.reset(::openat(in.fd, name.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC | O_NOFOLLOW));
                inner.fd = inner.owned.get();
                split = inner.fd >= 0 && !list_folder(inner.fd, inner.names, &inner.types) &&
                        (inner.names.empty() || ::faccessat(inner.fd, ".", X_OK, AT_EACCESS) == 0);
            }
            if (!split) {
                u.whole_only = true;  // its run walks it (and meets what kept it from being split)
                next.push_back(u);
                continue;
            }
            split_any = true;
            inner.local_prefix = local.back() == '/' ? local : local + "/";
            inner.wire_prefix = wire + "/";
            inner.depth = in.depth + 1;
            scan_unit parent = u;
            parent.own = static_cast<std::int32_t>(owns.size());
            owns.push_back(std::move(own));
            next.push_back(parent);
            const auto index = static_cast<std::uint32_t>(folders.size());
            const std::size_t children = inner.names.size();
            folders.push_back(std::move(inner));
            for (std::size_t i = 0; i < children; ++i) {
                next.push_back(scan_unit{index, static_cast<std::uint32_t>(i)});
            }
            count += children;
        }
        units = std::move(next);
        if (!split_any) {
            break;
        }
    }
}

}  // namespace

std::error_code scan_contents(const std::filesystem::path& dir, const exclude_set& excludes, source_tree& out,
                              std::string& error, worker_pool* pool, bool recursive, scan_feed* feed) {
    struct stat st {};
    if (::stat(dir.c_str(), &st) != 0) {
        error = dir.string() + ": " + std::error_code(errno, std::system_category()).message();
        return std::error_code(errno, std::system_category());
    }
    if (!S_ISDIR(st.st_mode)) {
        error = dir.string() + ": not a folder";
        return std::make_error_code(std::errc::not_a_directory);
    }
    // The folder itself may be a symlink (named by the user); what is inside is not followed.
    unique_fd dir_fd(::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
    const int fd = dir_fd.get();
    if (fd < 0) {
        std::error_code ec(errno, std::system_category());
        error = dir.string() + ": " + ec.message();
        return ec;
    }
    std::vector<std::string> names;
    std::vector<unsigned char> types;
    if (std::error_code ec = list_folder(fd, names, &types)) {
        error = dir.string() + ": " + ec.message();
        return ec;
    }
    const std::string prefix = dir.string().back() == '/' ? dir.string() : dir.string() + "/";
    out.local_prefix = prefix;
    if (!out.root_fd) {
        out.root_fd = shared_fd(std::move(dir_fd));
    }
    if (!walk_in_parts(scanner{out, error, {}, &excludes, true, false, recursive, feed}, fd, std::move(names),
                       std::move(types), prefix, "", pool)) {
        return std::make_error_code(std::errc::invalid_argument);
    }
    return {};
}

std::error_code scan_get(std::shared_ptr<const int> parent, const std::string& name, const std::string& as,
                         source_tree& out, std::string& error, worker_pool* pool, bool recursive) {
    struct stat st {};
    if (::fstatat(*parent, name.empty() ? "." : name.c_str(), &st, AT_SYMLINK_NOFOLLOW) != 0) {
        std::error_code ec(errno, std::system_category());
        error = ec == std::errc::no_such_file_or_directory ? "not found" : ec.message();
        return ec;
    }
    if (S_ISLNK(st.st_mode)) {
        error = "a symlink (never followed)";
        return std::make_error_code(std::errc::too_many_symbolic_link_levels);
    }
    if (!S_ISREG(st.st_mode) && !S_ISDIR(st.st_mode)) {
        error = "not a regular file or a folder";
        return std::make_error_code(std::errc::invalid_argument);
    }
    entry_info top{.path = as, .size = S_ISREG(st.st_mode) ? static_cast<std::uint64_t>(st.st_size) : 0,
                   .mtime_ns = timespec_ns(st.st_mtim), .mode = st.st_mode & 07777, .is_dir = S_ISDIR(st.st_mode)};
    if (!top.is_dir) {
        out.total_bytes = top.size;
        out.entries.push_back(std::move(top));
        out.locals.push_back(name);
        out.root_fd = std::move(parent);
        return {};
    }
    int fd = name.empty() ? ::fcntl(*parent, F_DUPFD_CLOEXEC, 0)
                          : ::openat(*parent, name.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC | O_NOFOLLOW);
    if (fd < 0) {
        std::error_code ec(errno, std::system_category());
        error = ec.message();
        return ec;
    }
    source_tree inside;
    inside.root_fd = shared_fd(unique_fd(fd));
    std::string root = "/proc/self/fd/" + std::to_string(fd);
    if (std::error_code ec = scan_contents(root, exclude_set{}, inside, error, pool, recursive)) {
        error = error.substr(std::min(error.size(), root.size() + 1));  // "PATH: why", PATH inside the folder
        return ec;
    }
    // Its entries below `as`, read by their paths inside it.
    out.entries.reserve(inside.entries.size() + 1);
    out.entries.push_back(std::move(top));
    out.locals.emplace_back(".");
    for (entry_info& e : inside.entries) {
        std::string wire = as + "/" + e.path;
        if (check_wire_path(wire)) {
            error = e.path + ": " + unsendable_path(wire);
            return std::make_error_code(std::errc::filename_too_long);
        }
        out.locals.push_back(std::exchange(e.path, std::move(wire)));
        out.entries.push_back(std::move(e));
    }
    out.total_bytes = inside.total_bytes;
    out.skipped = std::move(inside.skipped);
    for (const std::string& note : inside.skipped_notes) {
        out.skipped_notes.push_back(as + "/" + note);
    }
    for (skipped_file& f : inside.unread) {
        f.path = as + "/" + f.path;
        out.unread.push_back(std::move(f));
    }
    out.root_fd = std::move(inside.root_fd);
    return {};
}

void append_part(source_tree& to, source_tree&& from) {
    auto move_all = [](auto& dst, auto& src) {
        bool steal = dst.empty();
        if constexpr (requires { dst.capacity(); }) {
            steal = steal && dst.capacity() < src.size();  // a reserved array is kept
        }
        if (steal) {
            dst = std::move(src);
        } else {
            std::move(src.begin(), src.end(), std::back_inserter(dst));
        }
        src.clear();
    };
    move_all(to.entries, from.entries);
    move_all(to.locals, from.locals);
    move_all(to.skipped, from.skipped);
    move_all(to.skipped_paths, from.skipped_paths);
    move_all(to.skipped_notes, from.skipped_notes);
    move_all(to.unread, from.unread);
    to.total_bytes += std::exchange(from.total_bytes, 0);
    to.excluded += std::exchange(from.excluded, 0);
    if (!to.root_fd) {
        // A streamed scan_contents' parts: each names the folder its wire paths are in.
        to.root_fd = from.root_fd;
        to.local_prefix = from.local_prefix;
    }
}

void scan_feed::put(source_tree part) {
    std::function<void()> wake;
    auto files = std::count_if(part.entries.begin(), part.entries.end(), [](const entry_info& e) { return !e.is_dir; });
    {
        std::lock_guard lock(mutex_);
        entries_put_ += part.entries.size();
        files_put_ += static_cast<std::uint64_t>(files);
        excluded_put_ += part.excluded;
        parts_.push_back(std::move(part));
        wake = wake_;
    }
    news_.notify_all();
    if (wake && !cancelled()) {
        wake();
    }
    if (max_held_ > 0) {
        // The part is the taker's already: the walk waits before it finds more.
        std::unique_lock lock(mutex_);
        room_.wait_for(lock, max_hold_wait,
                       [this] { return cancelled() || entries_put_ - std::min(let_go_, entries_put_) < max_held_; });
    }
}

void scan_feed::let_go(std::uint64_t n) {
    {
        std::lock_guard lock(mutex_);
        if (n <= let_go_) {
            return;
        }
        let_go_ = n;
    }
    room_.notify_all();
}

void scan_feed::finish(std::error_code ec, std::string error) {
    std::function<void()> wake;
    {
        std::lock_guard lock(mutex_);
        finished_ = true;
        ec_ = ec;
        error_ = std::move(error);
        wake = wake_;
    }
    news_.notify_all();
    if (wake && !cancelled()) {
        wake();
    }
}

void scan_feed::on_change(std::function<void()> wake) {
    std::lock_guard lock(mutex_);
    wake_ = std::move(wake);
}

void scan_feed::cancel() {
    cancelled_ = true;
    {
        std::lock_guard lock(mutex_);
        wake_ = nullptr;
    }
    room_.notify_all();
}

scan_feed::taken scan_feed::take() {
    std::lock_guard lock(mutex_);
    taken t;
    t.parts = std::move(parts_);
    parts_.clear();
    t.finished = finished_;
    t.ec = ec_;
    t.error = error_;
    return t;
}

std::uint64_t scan_feed::entries_put() const {
    std::lock_guard lock(mutex_);
    return entries_put_;
}

std::uint64_t scan_feed::files_put() const {
    std::lock_guard lock(mutex_);
    return files_put_;
}

std::uint64_t scan_feed::excluded_put() const {
    std::lock_guard lock(mutex_);
    return excluded_put_;
}

void scan_feed::wait_news() const {
    std::unique_lock lock(mutex_);
    news_.wait(lock, [this] { return finished_ || !parts_.empty(); });
}

bool scan_feed::has_news() const {
    std::lock_guard lock(mutex_);
    return finished_ || !parts_.empty();
}

std::error_code scan_sources(const std::vector<std::filesystem::path>& given, source_tree& out, std::string& error,
                             scan_feed* feed) {
    // Each source's name (its base name; a folder named by "." or "dir/" too).
    std::vector<std::string> names;
    for (const auto& p : given) {
        std::filesystem::path clean = p.lexically_normal();
        if (clean.has_filename() == false) {
            clean = clean.parent_path();
        }
        std::string name = clean.filename().string();
        if (name.empty() || name == "." || name == "..") {
            std::error_code ec;
            std::filesystem::path abs = std::filesystem::canonical(p, ec);
            name = ec ? std::string() : abs.filename().string();
        }
        if (name.empty()) {
            error = p.string() + ": cannot send the root folder itself; name a folder inside it";
            return std::make_error_code(std::errc::invalid_argument);
        }
        names.push_back(std::move(name));
    }
    // Walked in order of their names, as a folder's entries are: the offer order
    // (wire_path_less).
    std::vector<std::size_t> order(given.size());
    for (std::size_t i = 0; i < order.size(); ++i) {
        order[i] = i;
    }
    std::stable_sort(order.begin(), order.end(), [&](std::size_t a, std::size_t b) { return names[a] < names[b]; });
    std::vector<std::filesystem::path> paths;
    std::vector<std::string> by_name;
    for (std::size_t i : order) {
        paths.push_back(given[i]);
        by_name.push_back(std::move(names[i]));
    }
    names = std::move(by_name);
    // A source named through a symlink is what the link points to, under the link's name,
    // as cp -H, scp and tar -h take a path given on the command line (a symlink met inside
    // a folder is still skipped, with a note). One that leads nowhere fails the command, as
    // a missing path does (cp -H: "cannot stat"); it was skipped, and the send said ok.
    for (std::filesystem::path& p : paths) {
        struct stat lst {};
        if (::lstat(p.c_str(), &lst) == 0 && S_ISLNK(lst.st_mode)) {
            std::error_code ec;
            std::filesystem::path real = std::filesystem::canonical(p, ec);
            if (ec) {
                error = p.string() + ": a symlink that leads nowhere here (" + ec.message() + ")";
                return ec;
            }
            p = std::move(real);
        }
    }
    // A file named on the command line that this user may not read fails the command
    // before anything is sent, as a folder named there that cannot be opened does (it
    // connected, sent nothing and exited 5).
    for (const std::filesystem::path& p : paths) {
        struct stat st {};
        if (::stat(p.c_str(), &st) == 0 && S_ISREG(st.st_mode) && ::faccessat(AT_FDCWD, p.c_str(), R_OK, AT_EACCESS) != 0) {
            std::error_code ec(errno, std::system_category());
            error = p.string() + ": " + ec.message();
            return ec;
        }
    }
    if (feed != nullptr) {
        // Fed, the first entries may travel before the last source is looked at: what
        // would fail the sources as a whole (a missing one, two of one name) is found
        // before any of them is walked.
        std::set<std::string> taken;
        for (std::size_t i = 0; i < paths.size(); ++i) {
            struct stat st {};
            if (::lstat(paths[i].c_str(), &st) != 0) {
                error = paths[i].string() + ": " + std::error_code(errno, std::system_category()).message();
                return std::error_code(errno, std::system_category());
            }
            if (skip_note(st.st_mode, names[i], false) == nullptr && !taken.insert(names[i]).second) {
                error = paths[i].string() + ": two sources map to the same name \"" + names[i] + "\"";
                return std::make_error_code(std::errc::file_exists);
            }
        }
    }
    scanner s{out, error, {}};
    s.feed = feed;
    for (std::size_t i = 0; i < paths.size(); ++i) {
        if (!s.walk(paths[i], names[i])) {
            return std::make_error_code(s.failure);
        }
        // A file source, or a folder's own entry when it holds nothing: what the walk left
        // in `out`. (Skipped notes alone wait for a part with entries: the send starts
        // with its first entry.)
        if (feed != nullptr && !out.entries.empty()) {
            source_tree part;
            append_part(part, std::move(out));
            feed->put(std::move(part));
        }
    }
    // Notes on what was skipped go too when nothing else does: they say why.
    if (feed != nullptr && (!out.skipped.empty() || !out.unread.empty())) {
        source_tree part;
        append_part(part, std::move(out));
        feed->put(std::move(part));
    }
    if (out.entries.empty() && (feed == nullptr || feed->entries_put() == 0)) {
        error = "nothing to send";
        return std::make_error_code(std::errc::invalid_argument);
    }
    return {};
}

std::string check_keep(const source_tree& sources, std::size_t& bytes) {
    std::size_t more = 0;
    for (const std::string& path : sources.skipped_paths) {
        if (check_wire_path(path)) {
            return printable(sources.local_prefix + path) + ": " + unsendable_path(path) +
                   ", so --delete cannot be told to keep it; exclude its folder (--exclude) or sync without --delete";
        }
        more += keep_entry_bytes(path);
    }
    if (bytes + more > max_sync_keep_bytes) {
        return "the special files and paths that cannot be read in SRC are more than --delete can be told to keep (" +
               std::to_string(max_sync_keep_bytes / 1024) +
               " KiB of paths); exclude their folders (--exclude) or sync without --delete";
    }
    bytes += more;
    return {};
}

std::string keep_skipped(const source_tree& sources, wire::SyncTarget& target) {
    if (!target.delete_()) {
        return {};  // nothing at DST is deleted: nothing to keep
    }
    std::size_t bytes = keep_bytes(target);
    if (std::string error = check_keep(sources, bytes); !error.empty()) {
        return error;
    }
    for (const std::string& path : sources.skipped_paths) {
        target.add_keep(path);
    }
    return {};
}

}  // namespace ferry
