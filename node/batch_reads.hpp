// Whole small files read, and new small files named, in one io_uring submission: each
// file's open, read and close (or link and close) go to the kernel together, instead of
// two or three system calls a file.
//
// Why: a send of 10,000 x 4 KiB files spends most of its sender's CPU in system calls, and
// on the 2-core bench VM a system call's entry and exit alone cost ~2 us (a bare
// getppid() loop). One submission for 32 files replaces 96 of them (bench/RESULTS.md,
// "Tuning log (issue 5): small files read through io_uring").
//
// Each worker thread keeps a ring of its own, made on first use. Where io_uring cannot be
// had (built without liburing, an old kernel, a seccomp filter, kernel.io_uring_disabled,
// FERRY_IO_URING=0), read_whole() returns false and the caller reads as before. A file
// that fails in any way here (not found, a symlink where RESOLVE_NO_SYMLINKS refuses it,
// a short or long read) is simply not read here: the caller's ordinary path reads it
// again and reports what went wrong, in its own words.
#pragma once

#include <cstddef>
#include <cstdint>
#include <limits>
#include <span>
#include <string>

namespace ferry {

struct whole_read {
    // As file_io's open_read takes them: `path` relative to `root_fd` and never leaving it
    // (openat2, RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS), or with root_fd < 0 a path opened
    // as ::open opens it.
    int root_fd = -1;
    const std::string* path = nullptr;
    std::uint8_t* buf = nullptr;
    std::size_t want = 0;  // bytes to read from offset 0 (a file's size, plus one to see it grew)
    long got = -1;         // bytes read, or a negative errno (-1: not attempted)
};

// Opens, reads (from offset 0, up to `want` bytes) and closes every file of `reads` in one
// submission, setting each `got`. At most max_whole_reads files at once. False when io_uring is
// not available on this thread (nothing was attempted).
bool read_whole(std::span<whole_read> reads);

constexpr std::size_t max_whole_reads = 32;

// An open file with no name (O_TMPFILE) to link into folder `dir_fd` as `name`
// (linkat(fd, "", dir_fd, name, AT_EMPTY_PATH)), then close.
struct link_close {
    int fd = -1;
    int dir_fd = -1;
    const char* name = nullptr;
    // 0: linked and closed; < 0: the link's -errno, `fd` still open; 1: not attempted;
    // 2 or 3: the ring failed midway (cannot happen short of a kernel fault): whether the
    // file is linked, and whether `fd` is still open, is unknown, so it must be neither
    // used nor closed.
    int result = 1;
};

// Links every file of `ops` in one io_uring submission, then closes the linked ones in a
// second, setting each `result`. False when io_uring is not available on this thread
// (nothing was attempted, every `result` stays 1).
bool link_and_close(std::span<link_close> ops);

// One system call of a batch that make_calls() makes through io_uring.
struct ring_call {
    enum class op { open_tmpfile, write };
    op what = op::write;
    int fd = -1;                  // open_tmpfile: the folder the file is made in; write: the file
    unsigned mode = 0;            // open_tmpfile: openat(fd, ".", O_TMPFILE | O_WRONLY | O_CLOEXEC, mode)
    const void* buf = nullptr;    // write: `len` bytes at offset 0
    unsigned len = 0;
    // What the call returned (a descriptor, the bytes written) or -errno; not_made when
    // the ring failed before it was seen through (cannot happen short of a kernel fault).
    static constexpr int not_made = std::numeric_limits<int>::min();
    int res = not_made;
};

// Makes every call of `calls` through io_uring, none waiting for another, in as few
// submissions as the ring holds (one for a batch of whole writes), setting each `res`.
// False when io_uring is not available on this thread (nothing was attempted).
bool make_calls(std::span<ring_call> calls);

}  // namespace ferry
