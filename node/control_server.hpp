// control_server: the Unix socket STATE/control.sock that `ferry status` talks to.
//
// One request line in, one reply out, then close (node/request_reply.hpp); served on the
// loop thread, so reading state needs no locks and no polling thread. Only the owner may
// connect: the socket file is mode 0600 inside the 0700 state folder, and the peer's
// credentials (SO_PEERCRED) must match this process's user (or root).
//
// A socket file left by a crashed node is detected (nobody answers a connect) and
// replaced; a live node already answering on it is an error.
#pragma once

#include <sys/types.h>

#include <asio.hpp>
#include <filesystem>
#include <functional>
#include <memory>
#include <string>

namespace ferry {

class control_server {
public:
    using handler = std::function<std::string(const std::string& request)>;

    control_server(asio::io_context& io, handler answer);
    ~control_server();  // closes and removes the socket file

    // Binds and listens at `control_socket_path(state_dir)`; on failure `error` says why.
    std::error_code open(const std::filesystem::path& state_dir, std::string& error);
    void close();

    static constexpr std::size_t max_clients = 16;

private:
    void accept_next();

    asio::local::stream_protocol::acceptor acceptor_;
    asio::steady_timer retry_;
    handler answer_;
    std::filesystem::path path_;
    dev_t dev_ = 0;  // of the socket file bound
    ino_t ino_ = 0;
    // Clients being served; shared with their handlers, which may outlive this object.
    std::shared_ptr<std::size_t> clients_ = std::make_shared<std::size_t>(0);
};

std::filesystem::path control_socket_path(const std::filesystem::path& state_dir);

// Client side (used by `ferry status`): sends `request` (one line) and returns the whole
// reply. Errors: no_such_file_or_directory / connection_refused when no node runs there,
// timed_out when it does not answer within `timeout`.
std::error_code control_request(const std::filesystem::path& state_dir, const std::string& request,
                                std::chrono::milliseconds timeout, std::string& reply);

}  // namespace ferry
