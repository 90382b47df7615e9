#include "tests/support/fs_util.hpp"

#include <fcntl.h>
#include <poll.h>
#include <sched.h>
#include <sys/inotify.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <unistd.h>

#include <array>
#include <cerrno>
#include <cstring>

namespace ferry::test {

bool set_mtime(const std::filesystem::path& p, std::int64_t sec) {
    const std::array<timespec, 2> times{timespec{0, UTIME_OMIT}, timespec{sec, 0}};
    return ::utimensat(AT_FDCWD, p.c_str(), times.data(), AT_SYMLINK_NOFOLLOW) == 0;
}

std::uint64_t allocated_bytes(const std::filesystem::path& p) {
    struct stat st {};
    return ::stat(p.c_str(), &st) == 0 ? static_cast<std::uint64_t>(st.st_blocks) * 512 : 0;
}

bool wait_for_change(const std::filesystem::path& dir, const std::function<bool()>& ready,
                     std::chrono::milliseconds timeout) {
    std::error_code ec;
    std::filesystem::create_directories(dir, ec);
    int fd = ::inotify_init1(IN_CLOEXEC | IN_NONBLOCK);
    if (fd < 0 || ::inotify_add_watch(fd, dir.c_str(),
                                      IN_CREATE | IN_MODIFY | IN_CLOSE_WRITE | IN_MOVED_TO | IN_MOVED_FROM |
                                          IN_DELETE | IN_ATTRIB) < 0) {
        if (fd >= 0) {
            ::close(fd);
        }
        return ready();  // no inotify: one look, no wait
    }
    auto deadline = std::chrono::steady_clock::now() + timeout;
    bool ok = ready();
    while (!ok) {
        auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now());
        if (left.count() <= 0) {
            break;
        }
        pollfd p{fd, POLLIN, 0};
        if (::poll(&p, 1, static_cast<int>(left.count())) < 0 && errno != EINTR) {
            break;
        }
        std::array<char, 4096> events;
        while (::read(fd, events.data(), events.size()) > 0) {
        }
        ok = ready();
    }
    ::close(fd);
    return ok;
}

std::string mount_private_tmpfs(const std::filesystem::path& dir, const std::string& options) {
    if (::unshare(CLONE_NEWNS) != 0) {
        return std::string("cannot create a mount namespace (needs root): ") + std::strerror(errno);
    }
    if (::mount(nullptr, "/", nullptr, MS_REC | MS_PRIVATE, nullptr) != 0) {
        return std::string("cannot make the mounts private: ") + std::strerror(errno);
    }
    std::filesystem::create_directories(dir);
    if (::mount("ferry-test", dir.c_str(), "tmpfs", 0, options.c_str()) != 0) {
        return std::string("cannot mount a tmpfs: ") + std::strerror(errno);
    }
    return "";
}

}  // namespace ferry::test
