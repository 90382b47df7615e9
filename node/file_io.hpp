// Plain file I/O helpers shared by both sides: whole positioned reads and writes, folder
// listings, and timestamps in nanoseconds. Called from worker threads; no state.
#pragma once

#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <limits>
#include <memory>
#include <optional>
#include <string>
#include <system_error>
#include <utility>
#include <vector>

#include "protocol/digest.hpp"

namespace ferry {

// Owns a file descriptor (-1: none): closed on destruction. Move-only.
class unique_fd {
public:
    unique_fd() = default;
    explicit unique_fd(int fd) : fd_(fd) {}
    unique_fd(unique_fd&& o) noexcept : fd_(o.release()) {}
    unique_fd& operator=(unique_fd&& o) noexcept {
        if (this != &o) {
            reset(o.release());
        }
        return *this;
    }
    ~unique_fd() { reset(); }
    int get() const { return fd_; }
    // Gives the fd up to the caller, who closes it.
    int release() { return std::exchange(fd_, -1); }
    // Closes the fd held (if any) and holds `fd` instead.
    void reset(int fd = -1) {
        if (fd_ >= 0) {
            ::close(fd_);
        }
        fd_ = fd;
    }
    // Closes now and reports the result (close can report a deferred write error).
    int close() { return ::close(release()); }

private:
    int fd_ = -1;
};

// An fd shared by whoever holds the pointer, closed when the last one lets go (a source
// tree's root folder, read by tasks on the worker pool).
inline std::shared_ptr<const int> shared_fd(unique_fd fd) {
    return std::shared_ptr<const int>(new int(fd.release()), [](const int* p) {
        ::close(*p);
        delete p;
    });
}

// Whether `err`, met opening or looking at a source path the scan found, says the path is no
// longer there as it was: gone (ENOENT), a folder on it now something else (ENOTDIR), or a
// symlink where a file or folder was (ELOOP: source paths are opened without following
// links). The scan and the reads both call such a path vanished.
inline bool vanished_error(int err) {
    return err == ENOENT || err == ENOTDIR || err == ELOOP;
}

// pwrite of all `len` bytes at `offset` (retries short writes and EINTR).
std::error_code write_at(int fd, const std::uint8_t* data, std::size_t len, std::uint64_t offset);
// pread of `len` bytes at `offset` (retries short reads and EINTR). Returns the bytes read:
// fewer than `len` only at the end of the file, or with `ec` set on an error.
std::size_t read_at(int fd, std::uint8_t* data, std::size_t len, std::uint64_t offset, std::error_code& ec);

// The chunk digests (protocol/digest.hpp) of the `size` bytes of the open file `fd` from
// `offset` on, read chunk by chunk into `buf` (grown to a chunk's size at most) until `stop`
// says so.
// False when they could not all be read (the file is shorter, an error) or `stop` stopped it.
bool hash_chunks(int fd, std::uint64_t size, std::vector<std::uint8_t>& buf, std::vector<digest128>& out,
                 const std::function<bool()>& stop = {}, std::uint64_t offset = 0);

// The file digest (protocol/digest.hpp: over its chunks' digests) of the `size` bytes of
// the open file `fd`, read and hashed by hash_chunks; none when they could not all be read.
std::optional<digest128> file_digest_of(int fd, std::uint64_t size);

// For test hooks (FERRY_FAULT_*): waits until `path` exists, looking every millisecond,
// for at most `timeout`. False when it timed out.
bool wait_until_exists(const std::string& path, std::chrono::milliseconds timeout);

// `path` made absolute, or the nearest folder above it that is there (where it would be
// made); "/" at the most.
std::filesystem::path nearest_existing(const std::filesystem::path& path);

// The names in the open folder `dir_fd` (without "." and ".."), sorted bytewise so that
// the order does not depend on the file system. `dir_fd` stays open and is not moved.
// `types` (if given) gets each name's d_type as the folder told it (DT_UNKNOWN where the
// file system does not say), in the same order.
std::error_code list_folder(int dir_fd, std::vector<std::string>& names,
                            std::vector<unsigned char>* types = nullptr);

// Opens `path` for reading. With `root_fd` >= 0, `path` is relative to that folder and
// must resolve inside it without any symlink (openat2 RESOLVE_BENEATH and
// RESOLVE_NO_SYMLINKS: what a peer asks for out of a share); with -1 it is an ordinary
// open. Returns an fd, or -1 with errno set.
int open_read(int root_fd, const std::string& path);
// Opens `path` relative to `root_fd` with `flags` (O_CLOEXEC and O_NOFOLLOW added),
// resolved inside it without any symlink on the way (openat2 RESOLVE_BENEATH and
// RESOLVE_NO_SYMLINKS). An fd, or -1 with errno set.
int open_beneath(int root_fd, const std::string& path, std::uint64_t flags);
// stat of `path` the same way (without following a symlink when `root_fd` >= 0).
int stat_at(int root_fd, const std::string& path, struct stat& st);
// Opens a share's folder, given by its canonical path (symlinks resolved when the share
// was configured), refusing any symlink on the way (openat2 RESOLVE_NO_SYMLINKS): a peer
// that may write to a share holding another share's folder cannot swap a link in for that
// folder, or for one above it, and so move the other share. Returns an fd, or -1 with
// errno set (ELOOP or ENOTDIR: a symlink is there now) and `why` saying what is wrong
// (without errno's text).
int open_share_root(const std::string& canonical_dir, std::string& why);

// A file timestamp (st_mtim, st_ctim) in nanoseconds since the epoch, as the wire carries
// it: 64 bits hold 1677-09-21 to 2262-04-11, and a time outside is clamped to the nearest
// end (the early one 2 s in). A file dated 2300 arrives dated 2262-04-11T23:47:16.854775807Z,
// and a later sync finds the two alike instead of sending it every time (where DST's file
// system keeps such dates: XFS without bigtime ends in 2038).
inline std::int64_t timespec_ns(const struct timespec& t) {
    constexpr std::int64_t ns = 1'000'000'000;
    // The early end in whole seconds, 2 s in: rounding a time down to a file system's
    // step (up to FAT's 2 s) stays inside 64 bits.
    constexpr std::int64_t earliest = (std::numeric_limits<std::int64_t>::min() / ns + 2) * ns;
    std::int64_t out = 0;
    if (__builtin_mul_overflow(std::int64_t{t.tv_sec}, ns, &out) ||
        __builtin_add_overflow(out, std::int64_t{t.tv_nsec}, &out)) {
        return t.tv_sec > 0 ? std::numeric_limits<std::int64_t>::max() : earliest;
    }
    return std::max(out, earliest);
}

}  // namespace ferry
