#include "node/control_server.hpp"

#include <fcntl.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include "node/request_reply.hpp"
#include "transport/accept_loop.hpp"

namespace ferry {

namespace fs = std::filesystem;

namespace {

constexpr std::size_t max_request = 4096;
constexpr std::chrono::seconds client_timeout{5};

// A sockaddr_un path for `file`: the path itself when it fits in sun_path, otherwise the
// same file reached through /proc/self/fd of its folder (state folders can be deep).
class socket_address {
public:
    explicit socket_address(const fs::path& file) {
        std::string p = file.string();
        if (p.size() >= sizeof(sockaddr_un::sun_path)) {
            dir_fd_ = ::open(file.parent_path().c_str(), O_PATH | O_DIRECTORY | O_CLOEXEC);
            p = "/proc/self/fd/" + std::to_string(dir_fd_) + "/" + file.filename().string();
        }
        path_ = std::move(p);
    }
    ~socket_address() {
        if (dir_fd_ >= 0) {
            ::close(dir_fd_);
        }
    }
    socket_address(const socket_address&) = delete;
    socket_address& operator=(const socket_address&) = delete;

    asio::local::stream_protocol::endpoint endpoint() const { return {path_}; }
    bool fill(sockaddr_un& sa) const {
        if (path_.size() >= sizeof(sa.sun_path)) {
            return false;
        }
        sa.sun_family = AF_UNIX;
        std::memcpy(sa.sun_path, path_.c_str(), path_.size() + 1);
        return true;
    }

private:
    int dir_fd_ = -1;
    std::string path_;
};

// Connects (blocking; a Unix socket connect never waits on the network) or says why not.
int connect_control(const fs::path& file, std::error_code& ec) {
    socket_address addr(file);
    sockaddr_un sa{};
    if (!addr.fill(sa)) {
        ec = std::make_error_code(std::errc::filename_too_long);
        return -1;
    }
    int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        ec = {errno, std::generic_category()};
        return -1;
    }
    if (::connect(fd, reinterpret_cast<sockaddr*>(&sa), sizeof(sa)) != 0) {
        ec = {errno, std::generic_category()};
        ::close(fd);
        return -1;
    }
    ec = {};
    return fd;
}

bool same_user(int fd) {
    ucred cred{};
    socklen_t len = sizeof(cred);
    if (::getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) != 0) {
        return false;
    }
    return cred.uid == ::geteuid() || cred.uid == 0;
}

}  // namespace

fs::path control_socket_path(const fs::path& state_dir) { return state_dir / "control.sock"; }

control_server::control_server(asio::io_context& io, handler answer)
    : acceptor_(io), retry_(io), answer_(std::move(answer)) {}

control_server::~control_server() { close(); }

std::error_code control_server::open(const fs::path& state_dir, std::string& error) {
    fs::path file = control_socket_path(state_dir);
    std::error_code ec;
    struct stat st {};
    if (::lstat(file.c_str(), &st) == 0) {
        if (!S_ISSOCK(st.st_mode)) {
            error = file.string() + " exists and is not a socket; remove it to run the node";
            return std::make_error_code(std::errc::file_exists);
        }
        int fd = connect_control(file, ec);
        if (fd >= 0 || ec != std::errc::connection_refused) {
            // Answering, or busy (EAGAIN: a live node's backlog is full): not ours to take.
            if (fd >= 0) {
                ::close(fd);
            }
            error = "another ferry node is running with state folder " + state_dir.string() + " (" + file.string() +
                    (fd >= 0 ? " answers)" : " is busy: " + ec.message() + ")");
            return std::make_error_code(std::errc::address_in_use);
        }
        // Refused: nobody listens. Left by a node that died; replace it.
        if (::unlink(file.c_str()) != 0 && errno != ENOENT) {
            ec = {errno, std::generic_category()};
            error = "cannot remove stale control socket " + file.string() + ": " + ec.message();
            return ec;
        }
    }
    socket_address addr(file);
    acceptor_.open(asio::local::stream_protocol(), ec);
    if (!ec) {
        acceptor_.bind(addr.endpoint(), ec);
    }
    if (!ec && (::chmod(file.c_str(), 0600) != 0 || ::lstat(file.c_str(), &st) != 0)) {
        ec = {errno, std::generic_category()};
    }
    if (!ec) {
        acceptor_.listen(asio::socket_base::max_listen_connections, ec);
    }
    if (ec) {
        error = "cannot open control socket " + file.string() + ": " + ec.message();
        std::error_code ignored;
        acceptor_.close(ignored);
        return ec;
    }
    path_ = file;
    dev_ = st.st_dev;
    ino_ = st.st_ino;
    accept_next();
    return {};
}

void control_server::close() {
    if (!acceptor_.is_open()) {
        return;
    }
    std::error_code ignored;
    acceptor_.close(ignored);
    // Remove the socket file only if it is still the one this server bound (another node
    // may have replaced it since).
    struct stat st {};
    if (!path_.empty() && ::lstat(path_.c_str(), &st) == 0 && st.st_dev == dev_ && st.st_ino == ino_) {
        ::unlink(path_.c_str());
    }
    path_.clear();
}

void control_server::accept_next() {
    accept_loop(
        acceptor_, retry_,
        [this](asio::local::stream_protocol::socket socket) {
            if (*clients_ < max_clients && same_user(socket.native_handle())) {
                ++*clients_;
                request_reply(std::move(socket), "\n", max_request, client_timeout, answer_,
                              [clients = clients_] { --*clients; });
            }
        },
        [](std::error_code) {});
}

std::error_code control_request(const fs::path& state_dir, const std::string& request,
                                std::chrono::milliseconds timeout, std::string& reply) {
    std::error_code ec;
    int fd = connect_control(control_socket_path(state_dir), ec);
    if (fd < 0) {
        return ec;
    }
    auto deadline = std::chrono::steady_clock::now() + timeout;
    auto wait_for = [&](short events) -> std::error_code {
        auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now());
        pollfd p{fd, events, 0};
        if (left.count() <= 0 || ::poll(&p, 1, static_cast<int>(left.count())) <= 0) {
            return std::make_error_code(std::errc::timed_out);
        }
        return {};
    };
    std::string line = request + "\n";
    std::size_t sent = 0;
    while (sent < line.size() && !ec) {
        if (!(ec = wait_for(POLLOUT))) {
            ssize_t n = ::send(fd, line.data() + sent, line.size() - sent, MSG_NOSIGNAL);
            if (n < 0 && errno != EINTR) {
                ec = {errno, std::generic_category()};
            }
            sent += n > 0 ? static_cast<std::size_t>(n) : 0;
        }
    }
    reply.clear();
    while (!ec) {
        if (!(ec = wait_for(POLLIN))) {
            char buf[65536];
            ssize_t n = ::read(fd, buf, sizeof(buf));
            if (n == 0) {
                break;
            }
            if (n < 0 && errno != EINTR) {
                ec = {errno, std::generic_category()};
            }
            reply.append(buf, n > 0 ? static_cast<std::size_t>(n) : 0);
        }
    }
    ::close(fd);
    return ec;
}

}  // namespace ferry
