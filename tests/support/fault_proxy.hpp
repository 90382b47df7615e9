// fault_proxy: a TCP proxy on loopback for fault-injection tests. It forwards every
// connection it accepts to one target and can, on command or when the bytes it forwarded
// toward the target reach a chosen count, reset one connection or all of them, stall
// (stop forwarding, so that the peers' socket buffers fill and they block), or delay
// every piece it forwards. It runs its own Asio loop on its own thread; every method is
// safe to call from the test's thread (or from a trigger's action, where it takes effect
// at once), and every wait is bounded.
#pragma once

#include <asio.hpp>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

namespace ferry::test {

class fault_proxy {
public:
    // Listens on 127.0.0.1:<ephemeral> and forwards to `target` ("HOST:PORT").
    explicit fault_proxy(const std::string& target);
    ~fault_proxy();
    fault_proxy(const fault_proxy&) = delete;
    fault_proxy& operator=(const fault_proxy&) = delete;

    std::string address() const;  // "127.0.0.1:PORT"

    // Bytes forwarded toward the target (client to target) over all connections, and the
    // connections accepted so far / open now.
    std::uint64_t up_bytes() const { return up_bytes_.load(); }
    std::size_t accepted() const { return accepted_.load(); }
    std::size_t open() const { return open_.load(); }

    // Resets connection `index` (in accept order) or all open ones: both sides get an RST.
    void cut(std::size_t index);
    void cut_all();
    // Stops (true) or resumes forwarding in both directions on every connection, new ones
    // included.
    void stall(bool on);
    // Every piece forwarded waits this long first (0: none).
    void set_delay(std::chrono::milliseconds d);
    // Once up_bytes() reaches `bytes`, runs `action` on the proxy's thread. Forwarding stops
    // exactly at that count until the action has run, so "stall at N bytes" is exact.
    void at_up_bytes(std::uint64_t bytes, std::function<void(fault_proxy&)> action);

    // Bounded waits; false on timeout.
    bool wait_up_bytes(std::uint64_t bytes, std::chrono::milliseconds timeout);
    bool wait_accepted(std::size_t n, std::chrono::milliseconds timeout);

private:
    struct pipe;
    struct link;
    void accept();
    void start_link(std::shared_ptr<link> l);
    void pump(std::shared_ptr<link> l, bool up);
    void forward(std::shared_ptr<link> l, bool up, std::size_t off, std::size_t len);
    void resume_parked();
    void reset(link& l);
    void notify();

    asio::io_context io_;
    asio::ip::tcp::acceptor acceptor_;
    asio::ip::tcp::endpoint target_;
    std::string address_;
    std::vector<std::weak_ptr<link>> links_;  // loop thread
    struct trigger {
        std::uint64_t at;
        std::function<void(fault_proxy&)> action;
    };
    std::vector<trigger> triggers_;  // loop thread; sorted by `at`
    std::vector<std::function<void()>> parked_;  // pumps waiting for the stall to end
    bool stalled_ = false;
    std::chrono::milliseconds delay_{0};
    std::atomic<std::uint64_t> up_bytes_{0};
    std::atomic<std::size_t> accepted_{0};
    std::atomic<std::size_t> open_{0};
    std::mutex mutex_;
    std::condition_variable changed_;
    std::thread thread_;
};

}  // namespace ferry::test
