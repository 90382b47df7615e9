#include "node/metrics_server.hpp"

#include "node/request_reply.hpp"
#include "transport/accept_loop.hpp"
#include "transport/stream.hpp"

namespace ferry {

namespace {

constexpr std::size_t max_request = 8192;
constexpr std::chrono::seconds client_timeout{5};

std::string http_reply(const char* status, const char* type, const std::string& body, bool head) {
    std::string out = std::string("HTTP/1.1 ") + status + "\r\nContent-Type: " + type +
                      "\r\nContent-Length: " + std::to_string(body.size()) + "\r\nConnection: close\r\n\r\n";
    if (!head) {
        out += body;
    }
    return out;
}

}  // namespace

metrics_server::metrics_server(asio::io_context& io, source text)
    : acceptor_(io), retry_(io), text_(std::move(text)) {}

std::string metrics_server::answer(const std::string& request, const source& text) {
    // Request line: METHOD SP TARGET SP HTTP/x.y
    std::string line = request.substr(0, request.find("\r\n"));
    std::size_t sp1 = line.find(' ');
    std::size_t sp2 = sp1 == std::string::npos ? std::string::npos : line.find(' ', sp1 + 1);
    if (sp2 == std::string::npos || line.compare(sp2 + 1, 5, "HTTP/") != 0) {
        return http_reply("400 Bad Request", "text/plain; charset=utf-8", "bad request\n", false);
    }
    std::string method = line.substr(0, sp1);
    std::string target = line.substr(sp1 + 1, sp2 - sp1 - 1);
    target = target.substr(0, target.find('?'));
    bool head = method == "HEAD";
    if (method != "GET" && !head) {
        return http_reply("405 Method Not Allowed", "text/plain; charset=utf-8", "only GET and HEAD\n", false);
    }
    if (target == "/metrics") {
        return http_reply("200 OK", "text/plain; version=0.0.4; charset=utf-8", text(), head);
    }
    if (target == "/") {
        return http_reply("200 OK", "text/plain; charset=utf-8", "ferry node: metrics at /metrics\n", head);
    }
    return http_reply("404 Not Found", "text/plain; charset=utf-8", "not found; metrics are at /metrics\n", head);
}

std::error_code metrics_server::open(const std::string& address, std::string& error) {
    std::error_code ec = open_listener(acceptor_, address, error);
    if (ec) {
        error = "metrics: " + error;
        return ec;
    }
    accept_next();
    return {};
}

void metrics_server::close() {
    std::error_code ignored;
    acceptor_.close(ignored);
}

std::string metrics_server::local_address() const {
    std::error_code ec;
    auto ep = acceptor_.local_endpoint(ec);
    return ec ? std::string() : format_endpoint(ep);
}

void metrics_server::accept_next() {
    accept_loop(
        acceptor_, retry_,
        [this](asio::ip::tcp::socket socket) {
            if (*clients_ < max_clients) {
                ++*clients_;
                request_reply(
                    std::move(socket), "\r\n\r\n", max_request, client_timeout,
                    [text = text_](const std::string& request) { return answer(request, text); },
                    [clients = clients_] { --*clients; });
            }
        },
        [](std::error_code) {});
}

}  // namespace ferry
