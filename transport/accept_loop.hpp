// accept_loop: keeps an acceptor accepting, handing each socket to `on_socket`. An error
// that is not the acceptor closing (EMFILE, ENFILE, ENOBUFS, ...) would repeat at once if
// the accept were re-armed immediately, so the loop pauses on `retry` (250 ms) instead:
// a timer that exists only while the error lasts. The acceptor and the timer must outlive
// the loop; closing or destroying the acceptor ends it.
#pragma once

#include <asio.hpp>
#include <chrono>
#include <system_error>

namespace ferry {

inline constexpr std::chrono::milliseconds accept_retry_delay{250};

template <typename Acceptor, typename OnSocket, typename OnError>
void accept_loop(Acceptor& acceptor, asio::steady_timer& retry, OnSocket on_socket, OnError on_error) {
    using socket_type = typename Acceptor::protocol_type::socket;
    acceptor.async_accept([&acceptor, &retry, on_socket, on_error](std::error_code ec, socket_type socket) mutable {
        if (ec == asio::error::operation_aborted || !acceptor.is_open()) {
            return;
        }
        if (ec) {
            on_error(ec);
            retry.expires_after(accept_retry_delay);
            retry.async_wait([&acceptor, &retry, on_socket, on_error](std::error_code wait_ec) mutable {
                if (!wait_ec && acceptor.is_open()) {
                    accept_loop(acceptor, retry, on_socket, on_error);
                }
            });
            return;
        }
        on_socket(std::move(socket));
        accept_loop(acceptor, retry, on_socket, on_error);
    });
}

}  // namespace ferry
