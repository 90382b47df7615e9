// request_reply: one request, one reply, then close, on an accepted stream socket (the
// control socket and the metrics endpoint). The request ends at `delimiter` and may be at
// most `max_request` bytes; a client that says nothing in `timeout` is dropped. The reply
// comes from `answer(request)` on the loop thread. Nothing here runs without a client:
// no timers, no polling.
#pragma once

#include <asio.hpp>
#include <chrono>
#include <functional>
#include <memory>
#include <string>

namespace ferry {

template <typename Socket>
void request_reply(Socket socket, std::string delimiter, std::size_t max_request, std::chrono::milliseconds timeout,
                   std::function<std::string(const std::string&)> answer, std::function<void()> done) {
    struct state {
        Socket socket;
        asio::steady_timer timer;
        std::string in;
        std::string out;
        std::function<void()> done;
        explicit state(Socket s) : socket(std::move(s)), timer(socket.get_executor()) {}
        ~state() {
            if (done) {
                done();
            }
        }
    };
    auto st = std::make_shared<state>(std::move(socket));
    st->done = std::move(done);
    st->timer.expires_after(timeout);
    st->timer.async_wait([w = std::weak_ptr<state>(st)](std::error_code ec) {
        if (auto s = w.lock(); s && !ec) {
            std::error_code ignored;
            s->socket.close(ignored);
        }
    });
    asio::async_read_until(
        st->socket, asio::dynamic_buffer(st->in, max_request), delimiter,
        [st, answer = std::move(answer)](std::error_code ec, std::size_t n) {
            if (ec) {
                st->timer.cancel();
                return;
            }
            try {
                st->out = answer(st->in.substr(0, n));
            } catch (const std::exception&) {
                // A reply that cannot be built ends this client, never the node.
                st->timer.cancel();
                return;
            }
            asio::async_write(st->socket, asio::buffer(st->out), [st](std::error_code, std::size_t) {
                st->timer.cancel();
                std::error_code ignored;
                st->socket.shutdown(Socket::shutdown_both, ignored);
                st->socket.close(ignored);
            });
        });
}

}  // namespace ferry
