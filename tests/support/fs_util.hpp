// File-system helpers for tests: waiting on a folder without sleeping (inotify), and a
// private tmpfs to fill up.
#pragma once

#include <chrono>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <string>

namespace ferry::test {

// Waits until `ready()` holds. It is checked at once and then whenever a file in `dir`
// (not in its subfolders) is created, written, renamed in or out, removed or has its
// attributes changed. `dir` is created if missing. False on timeout.
bool wait_for_change(const std::filesystem::path& dir, const std::function<bool()>& ready,
                     std::chrono::milliseconds timeout);

// Bytes of data the (possibly sparse) file `p` holds: its allocated blocks; 0 if it is not
// there.
std::uint64_t allocated_bytes(const std::filesystem::path& p);

// Sets the mtime of `p` (not following a symlink) to `sec` seconds since the epoch, the
// atime left; false (errno set) when it cannot.
[[nodiscard]] bool set_mtime(const std::filesystem::path& p, std::int64_t sec);

// Mounts a tmpfs with `options` (e.g. "size=48m") on `dir` in a mount namespace of this
// process alone (the ferry processes it starts inherit it; the host never sees it).
// Returns "" on success, else why it could not (not root, no namespaces): a reason to skip.
std::string mount_private_tmpfs(const std::filesystem::path& dir, const std::string& options);

}  // namespace ferry::test
