// metrics_server: `ferry serve --metrics HOST:PORT`, Prometheus text exposition at
// /metrics over a minimal HTTP/1.x server on the loop thread (one request per connection,
// then close; node/request_reply.hpp). Off unless asked; the CLI defaults the host to
// 127.0.0.1 when only a port is given.
#pragma once

#include <asio.hpp>
#include <functional>
#include <memory>
#include <string>

namespace ferry {

class metrics_server {
public:
    using source = std::function<std::string()>;  // the exposition text

    metrics_server(asio::io_context& io, source text);

    // Binds HOST:PORT (numeric or a name, resolved once) and starts serving; on failure
    // `error` says why (e.g. the address is in use).
    std::error_code open(const std::string& address, std::string& error);
    void close();
    std::string local_address() const;

    static constexpr std::size_t max_clients = 16;

    // The HTTP reply to one request (exposed for tests).
    static std::string answer(const std::string& request, const source& text);

private:
    void accept_next();

    asio::ip::tcp::acceptor acceptor_;
    asio::steady_timer retry_;
    source text_;
    // Clients being served; shared with their handlers, which may outlive this object.
    std::shared_ptr<std::size_t> clients_ = std::make_shared<std::size_t>(0);
};

}  // namespace ferry
