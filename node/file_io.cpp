#include "node/file_io.hpp"

#include <dirent.h>
#include <fcntl.h>
#include <linux/openat2.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <string_view>
#include <thread>

namespace ferry {

int open_beneath(int root_fd, const std::string& path, std::uint64_t flags) {
    struct open_how how {};
    how.flags = flags | O_CLOEXEC | O_NOFOLLOW;
    how.resolve = RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS;
    for (;;) {
        long fd = ::syscall(SYS_openat2, root_fd, path.c_str(), &how, sizeof how);
        if (fd >= 0 || errno != EAGAIN) {  // EAGAIN: a rename raced the lookup
            return static_cast<int>(fd);
        }
    }
}

int open_share_root(const std::string& canonical_dir, std::string& why) {
    struct open_how how {};
    how.flags = O_RDONLY | O_DIRECTORY | O_CLOEXEC | O_NOFOLLOW;
    how.resolve = RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS;
    for (;;) {
        long fd = ::syscall(SYS_openat2, AT_FDCWD, canonical_dir.c_str(), &how, sizeof how);
        if (fd >= 0 || errno != EAGAIN) {  // EAGAIN: a rename raced the lookup
            if (fd < 0) {
                int err = errno;
                why =
                    err == ELOOP || err == ENOTDIR
                        ? "the share's folder is no longer a folder reached without a symlink (one was put on its path)"
                        : "the share's folder cannot be opened";
                errno = err;
            }
            return static_cast<int>(fd);
        }
    }
}

int open_read(int root_fd, const std::string& path) {
    return root_fd < 0 ? ::open(path.c_str(), O_RDONLY | O_CLOEXEC) : open_beneath(root_fd, path, O_RDONLY);
}

int stat_at(int root_fd, const std::string& path, struct stat& st) {
    if (root_fd < 0) {
        return ::stat(path.c_str(), &st);
    }
    int fd = open_beneath(root_fd, path, O_PATH);
    if (fd < 0) {
        return -1;
    }
    int r = ::fstat(fd, &st);
    int saved = errno;
    ::close(fd);
    errno = saved;
    return r;
}

std::error_code write_at(int fd, const std::uint8_t* data, std::size_t len, std::uint64_t offset) {
    std::size_t done = 0;
    while (done < len) {
        ssize_t n = ::pwrite(fd, data + done, len - done, static_cast<off_t>(offset + done));
        if (n < 0 && errno == EINTR) {
            continue;
        }
        if (n < 0) {
            return {errno, std::system_category()};
        }
        done += static_cast<std::size_t>(n);
    }
    return {};
}

std::size_t read_at(int fd, std::uint8_t* data, std::size_t len, std::uint64_t offset, std::error_code& ec) {
    std::size_t done = 0;
    while (done < len) {
        ssize_t n = ::pread(fd, data + done, len - done, static_cast<off_t>(offset + done));
        if (n < 0 && errno == EINTR) {
            continue;
        }
        if (n < 0) {
            ec = {errno, std::system_category()};
            break;
        }
        if (n == 0) {
            break;  // the end of the file
        }
        done += static_cast<std::size_t>(n);
    }
    return done;
}

bool hash_chunks(int fd, std::uint64_t size, std::vector<std::uint8_t>& buf, std::vector<digest128>& out,
                 const std::function<bool()>& stop, std::uint64_t offset) {
    // (As large as a chunk of this file needs: a small file's digest maps no 256 KiB.)
    buf.resize(std::max<std::size_t>(buf.size(), std::min<std::uint64_t>(size, chunk_size)));
    for (std::uint64_t c = 0; c < chunk_count(size); ++c) {
        std::uint32_t len = chunk_length(size, c);
        std::error_code ec;
        if ((stop && stop()) || read_at(fd, buf.data(), len, offset + c * chunk_size, ec) != len) {
            return false;
        }
        out.push_back(hash_chunk(std::span<const std::uint8_t>(buf.data(), len)));
    }
    return true;
}

std::optional<digest128> file_digest_of(int fd, std::uint64_t size) {
    std::vector<std::uint8_t> buf;
    std::vector<digest128> chunks;
    if (!hash_chunks(fd, size, buf, chunks)) {
        return std::nullopt;
    }
    return file_digest(chunks);
}

std::filesystem::path nearest_existing(const std::filesystem::path& path) {
    std::error_code ec;
    std::filesystem::path there = std::filesystem::absolute(path, ec);
    while (!std::filesystem::exists(there, ec) && there.has_parent_path() && there != there.parent_path()) {
        there = there.parent_path();
    }
    return there;
}

bool wait_until_exists(const std::string& path, std::chrono::milliseconds timeout) {
    const auto until = std::chrono::steady_clock::now() + timeout;
    while (::access(path.c_str(), F_OK) != 0) {
        if (std::chrono::steady_clock::now() > until) {
            return false;
        }
        std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
    return true;
}

std::error_code list_folder(int dir_fd, std::vector<std::string>& names, std::vector<unsigned char>* types) {
    names.clear();
    std::vector<std::pair<std::string, unsigned char>> typed;  // only with `types`
    int fd = ::dup(dir_fd);  // fdopendir takes the fd it is given; the caller keeps its own
    DIR* d = fd < 0 ? nullptr : ::fdopendir(fd);
    if (d == nullptr) {
        std::error_code ec(errno, std::system_category());
        if (fd >= 0) {
            ::close(fd);
        }
        return ec;
    }
    ::rewinddir(d);  // the dup shares its position with dir_fd, which may have been read
    std::error_code ec;
    for (;;) {
        errno = 0;
        const dirent* de = ::readdir(d);
        if (de == nullptr) {
            if (errno != 0) {
                ec = std::error_code(errno, std::system_category());
            }
            break;
        }
        std::string_view n(de->d_name);
        if (n == "." || n == "..") {
            continue;
        }
        if (types != nullptr) {
            typed.emplace_back(n, de->d_type);
        } else {
            names.emplace_back(n);
        }
    }
    ::closedir(d);
    if (types == nullptr) {
        std::sort(names.begin(), names.end());
        return ec;
    }
    std::sort(typed.begin(), typed.end());
    types->clear();
    names.reserve(typed.size());
    types->reserve(typed.size());
    for (auto& [name, type] : typed) {
        names.push_back(std::move(name));
        types->push_back(type);
    }
    return ec;
}

}  // namespace ferry
