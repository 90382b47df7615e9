#include "node/unsynced_journal.hpp"

#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstring>
#include <random>
#include <span>

#include "node/dest_tree.hpp"
#include "protocol/digest.hpp"
#include "protocol/le_bytes.hpp"

namespace ferry {
namespace {

constexpr std::string_view header_magic{"ferry-unsynced-1", 16};
constexpr std::string_view suffix = ".journal";
constexpr std::size_t max_record = 64 * 1024;
constexpr std::size_t entry_fixed = 6 * 8;  // size, mtime, digest (2), dev, ino

std::error_code last_error() { return {errno, std::system_category()}; }

std::uint64_t checksum(std::string_view payload) {
    return hash_chunk(std::span(reinterpret_cast<const std::uint8_t*>(payload.data()), payload.size())).lo;
}

// A record: [u32 length][u64 checksum][payload], little-endian, built in place at the end
// of a string (a batch of small files has thousands: no string per record).
constexpr std::size_t frame_header = 12;

// Starts a record at the end of `out`: room for its header. Returns where it starts.
std::size_t open_frame(std::string& out) {
    std::size_t at = out.size();
    out.append(frame_header, '\0');
    return at;
}

// Fills in the header of the record started at `at`, whose payload runs to the end of `out`.
void close_frame(std::string& out, std::size_t at) {
    std::string_view payload(out.data() + at + frame_header, out.size() - at - frame_header);
    store_le(out.data() + at, payload.size(), 4);
    store_le(out.data() + at + 4, checksum(payload));
}

std::error_code write_all(int fd, std::string_view data) {
    while (!data.empty()) {
        ssize_t n = ::write(fd, data.data(), data.size());
        if (n < 0) {
            if (errno == EINTR) {
                continue;
            }
            return last_error();
        }
        data.remove_prefix(static_cast<std::size_t>(n));
    }
    return {};
}

std::error_code sync_dir(const std::filesystem::path& dir) {
    int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0) {
        return last_error();
    }
    std::error_code ec;
    if (::fsync(fd) != 0) {
        ec = last_error();
    }
    ::close(fd);
    return ec;
}

// Splits a journal's bytes into record payloads, stopping at the first torn or corrupt one.
std::vector<std::string> read_records(int fd) {
    std::string data;
    char buf[64 * 1024];
    for (;;) {
        ssize_t n = ::read(fd, buf, sizeof buf);
        if (n < 0 && errno == EINTR) {
            continue;
        }
        if (n <= 0) {
            break;
        }
        data.append(buf, static_cast<std::size_t>(n));
    }
    std::vector<std::string> out;
    std::size_t pos = 0;
    while (data.size() - pos >= frame_header) {
        auto len = static_cast<std::uint32_t>(get_le(data.data() + pos, 4));
        if (len > max_record || data.size() - pos - frame_header < len) {
            break;
        }
        std::string payload = data.substr(pos + frame_header, len);
        if (checksum(payload) != get_le(data.data() + pos + 4)) {
            break;
        }
        out.push_back(std::move(payload));
        pos += frame_header + len;
    }
    return out;
}

}  // namespace

unsynced_journal::unsynced_journal(std::filesystem::path dir, std::filesystem::path root)
    : dir_(std::move(dir)), root_(std::move(root)) {}

unsynced_journal::~unsynced_journal() {
    if (fd_ >= 0) {
        ::close(fd_);  // releases the lock; the file stays for recovery
    }
}

std::string unsynced_journal::encode_header(const std::filesystem::path& root) {
    std::string out;
    std::size_t at = open_frame(out);
    out += header_magic;
    out += root.string();
    close_frame(out, at);
    return out;
}

std::string unsynced_journal::encode(const entry& e) {
    std::string out;
    encode_into(e, out);
    return out;
}

void unsynced_journal::encode_into(const entry& e, std::string& out) {
    std::size_t at = open_frame(out);
    put_le(out, e.size);
    put_le(out, static_cast<std::uint64_t>(e.mtime_ns));
    put_digest(out, e.digest);
    put_le(out, e.dev);
    put_le(out, e.ino);
    out += e.path;
    close_frame(out, at);
}

unsynced_journal::folder_lock::folder_lock(const std::filesystem::path& dir, bool exclusive) {
    std::error_code ec;
    std::filesystem::create_directories(dir, ec);
    fd_ = ::open((dir / ".lock").c_str(), O_RDONLY | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0600);
    if (fd_ >= 0) {
        while (::flock(fd_, exclusive ? LOCK_EX : LOCK_SH) != 0 && errno == EINTR) {
        }
    }
    // Without the lock file (read-only state folder) there is nothing to recover either.
}

unsynced_journal::folder_lock::~folder_lock() {
    if (fd_ >= 0) {
        ::close(fd_);
    }
}

std::error_code unsynced_journal::open_locked() {
    std::error_code ec;
    bool created = std::filesystem::create_directories(dir_, ec);
    if (ec) {
        return ec;
    }
    if (created && (ec = sync_dir(dir_.parent_path()))) {
        return ec;  // the folder's own name must survive a crash too
    }
    // Created and locked under a temporary name, then renamed: recovery only looks at
    // "*.journal", so it never sees one that is not locked yet.
    std::random_device rd;
    std::string name = std::to_string(::getpid()) + "-" + std::to_string(rd()) + "-" + std::to_string(rd());
    std::filesystem::path tmp = dir_ / ("." + name + ".tmp");
    file_ = dir_ / (name + std::string(suffix));
    fd_ = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_APPEND | O_CLOEXEC, 0600);
    if (fd_ < 0) {
        return last_error();
    }
    if (::flock(fd_, LOCK_EX | LOCK_NB) != 0 || (ec = write_all(fd_, encode_header(root_))) ||
        ::fdatasync(fd_) != 0 || ::rename(tmp.c_str(), file_.c_str()) != 0) {
        ec = ec ? ec : last_error();
        ::close(fd_);
        fd_ = -1;
        ::unlink(tmp.c_str());
        return ec;
    }
    return sync_dir(dir_);
}

std::error_code unsynced_journal::commit(const std::vector<entry>& entries) {
    std::lock_guard lock(mutex_);
    if (fd_ < 0) {
        if (std::error_code ec = open_locked()) {
            return ec;
        }
    }
    std::string batch;
    std::size_t bytes = 0;
    for (const entry& e : entries) {
        bytes += frame_header + entry_fixed + e.path.size();
    }
    batch.reserve(bytes);
    for (const entry& e : entries) {
        encode_into(e, batch);
    }
    if (std::error_code ec = write_all(fd_, batch)) {
        return ec;
    }
    return ::fdatasync(fd_) == 0 ? std::error_code{} : last_error();
}

void unsynced_journal::discard() {
    std::lock_guard lock(mutex_);
    if (fd_ >= 0) {
        ::unlink(file_.c_str());
        ::close(fd_);
        fd_ = -1;
    }
}

unsynced_journal::recovery unsynced_journal::recover(const std::filesystem::path& dir, dest_tree& tree,
                                                     std::error_code& ec) {
    recovery out;
    std::error_code iter_ec;
    std::vector<std::filesystem::path> candidates;
    for (const auto& de : std::filesystem::directory_iterator(dir, iter_ec)) {
        std::string name = de.path().filename().string();
        if (name.size() > suffix.size() && name.ends_with(suffix)) {
            candidates.push_back(de.path());
        }
    }
    std::vector<std::pair<int, std::filesystem::path>> done;  // verified journals, still locked
    for (const auto& path : candidates) {
        int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
        if (fd < 0) {
            continue;
        }
        struct stat jst {};
        if (::flock(fd, LOCK_EX | LOCK_NB) != 0 || ::fstat(fd, &jst) != 0 || jst.st_nlink == 0) {
            ::close(fd);  // a live transfer's journal, or one finished and unlinked meanwhile
            continue;
        }
        std::vector<std::string> records = read_records(fd);
        std::string expect(header_magic);
        expect += tree.root().string();
        if (records.empty() || records.front() != expect) {
            ::close(fd);  // another folder's journal (or a torn header: nothing was renamed)
            if (records.empty()) {
                ::unlink(path.c_str());
            }
            continue;
        }
        ++out.journals;
        for (std::size_t i = 1; i < records.size(); ++i) {
            const std::string& r = records[i];
            if (r.size() < entry_fixed) {
                continue;
            }
            entry e;
            e.size = get_le(r.data());
            e.mtime_ns = static_cast<std::int64_t>(get_le(r.data() + 8));
            e.digest = get_digest(r.data() + 16);
            e.dev = get_le(r.data() + 32);
            e.ino = get_le(r.data() + 40);
            e.path = r.substr(entry_fixed);
            std::error_code fec;
            int ffd = tree.open_final_read(e.path, fec);
            if (ffd < 0) {
                continue;  // gone (or never made it): nothing under the final name to judge
            }
            struct stat st {};
            bool ok = ::fstat(ffd, &st) == 0;
            std::int64_t mtime = timespec_ns(st.st_mtim);
            bool same_file = ok && static_cast<std::uint64_t>(st.st_dev) == e.dev &&
                             static_cast<std::uint64_t>(st.st_ino) == e.ino;
            if (ok && (!same_file || mtime != e.mtime_ns)) {
                // Another file under that name (the rename never happened, or someone
                // replaced it), or changed by someone since: not ours to judge.
                out.left.push_back(e.path);
            } else if (ok && static_cast<std::uint64_t>(st.st_size) == e.size &&
                       file_digest_of(ffd, e.size) == e.digest) {
                ++out.verified;
            } else if (ok) {
                if (std::error_code rec = tree.remove_final(e.path, e.dev, e.ino); rec && !ec) {
                    ec = rec;
                }
                out.removed.push_back(e.path);
            }
            ::close(ffd);
        }
        done.emplace_back(fd, path);
    }
    // What was verified (and removed) is made durable before the journals go.
    if (!done.empty() && !ec) {
        ec = tree.sync_all();
    }
    for (auto& [fd, path] : done) {
        if (!ec) {
            ::unlink(path.c_str());
        }
        ::close(fd);
    }
    if (!done.empty() && !ec) {
        sync_dir(dir);
    }
    return out;
}

}  // namespace ferry
