#include "node/file_io.hpp"

#include <unistd.h>

#include <cerrno>

namespace ferry {

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

}  // namespace ferry
