#include "tests/support/stale_socket.hpp"

#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <cstring>

namespace ferry::test {

bool leave_stale_socket(const std::filesystem::path& path) {
    sockaddr_un sa{};
    sa.sun_family = AF_UNIX;
    if (path.string().size() >= sizeof(sa.sun_path)) {
        return false;
    }
    std::strcpy(sa.sun_path, path.c_str());
    int fd = ::socket(AF_UNIX, SOCK_STREAM, 0);
    bool ok = fd >= 0 && ::bind(fd, reinterpret_cast<sockaddr*>(&sa), sizeof(sa)) == 0;
    if (fd >= 0) {
        ::close(fd);
    }
    return ok;
}

}  // namespace ferry::test
