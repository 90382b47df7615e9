// node/limits: what a node grants its peers, and the count of every time it said no.
//
// Each limit has a default here, a flag on `ferry serve` / `ferry receive` (docs/cli.md)
// and a counter (`refusals` in `ferry status`, ferry_refusals_total in the metrics). The
// defaults let a real transfer through while 200 silent connections sit on the port:
// connections that have not yet joined a session are the first to go when the node is
// full (the oldest of them is closed to make room), and each has to finish its TLS
// handshake and say Hello within the handshake timeout.
#pragma once

#include <array>
#include <chrono>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

#include "protocol/types.hpp"

namespace ferry {

struct node_limits {
    std::uint32_t max_connections = 512;        // inbound TCP connections, authenticated or not
    std::uint32_t max_peer_connections = 64;    // connections of one peer (node ID) over all its sessions
    std::uint32_t max_sessions = 64;            // inbound transfers at once
    std::chrono::milliseconds handshake_timeout{10'000};  // accept -> TLS done -> Hello, each step
    std::chrono::milliseconds idle_timeout{120'000};      // a transfer that hears nothing from its sender
    std::uint64_t max_files = max_files_per_transfer;     // entries (files and folders) per transfer
    std::uint64_t max_bytes = 0;                          // bytes per transfer; 0: only free disk space
    std::uint64_t max_queue_bytes = 64 * 1024 * 1024;     // outbound frames queued on one connection
};

// Why a node refused or closed a connection or a transfer.
enum class refusal : std::uint8_t {
    handshake_failed,    // TLS handshake error (no certificate, TLS < 1.3, garbage, ...)
    untrusted,           // a valid certificate of a node this one does not trust
    handshake_timeout,   // no finished TLS handshake, or no Hello after it, in time
    evicted,             // not yet in a session when the node was full: closed for a newer one
    connections,         // max_connections reached with nothing to evict
    peer_connections,    // max_peer_connections reached for that peer
    sessions,            // max_sessions reached
    idle,                // idle_timeout passed without a frame from the sender
    files,               // more entries than max_files
    bytes,               // more bytes than max_bytes
    disk_space,          // more bytes than the free space of the destination
    queue,               // the outbound queue bound of a connection was reached
    protocol,            // a malformed or out-of-sequence frame, or a refused offer
};
inline constexpr std::size_t refusal_kinds = 13;

constexpr std::string_view refusal_name(refusal r) {
    constexpr std::array<std::string_view, refusal_kinds> names{
        "handshake_failed", "untrusted", "handshake_timeout", "evicted", "connections", "peer_connections",
        "sessions",         "idle",      "files",             "bytes",   "disk_space",  "queue",
        "protocol"};
    return names[static_cast<std::size_t>(r)];
}

// One counter per refusal (loop thread only, like all node statistics).
struct refusal_counters {
    std::array<std::uint64_t, refusal_kinds> counts{};
    void add(refusal r) { ++counts[static_cast<std::size_t>(r)]; }
    std::uint64_t operator[](refusal r) const { return counts[static_cast<std::size_t>(r)]; }
};

// Keeps a flood of refusals (a port scan, 200 silent connections) from flooding the log:
// at most `burst` lines per `window`; the next line that passes says how many were held.
class log_throttle {
public:
    explicit log_throttle(std::uint32_t burst = 20, std::chrono::seconds window = std::chrono::seconds(10))
        : burst_(burst), window_(window) {}

    // The line to log now, or nothing if it is held back.
    std::optional<std::string> pass(std::string line, std::chrono::steady_clock::time_point now) {
        if (now - window_start_ >= window_) {
            window_start_ = now;
            passed_ = 0;
        }
        if (passed_ >= burst_) {
            ++held_;
            return std::nullopt;
        }
        ++passed_;
        if (held_ > 0) {
            line += " (" + std::to_string(held_) + " similar line(s) held back before this one)";
            held_ = 0;
        }
        return line;
    }

private:
    std::uint32_t burst_;
    std::chrono::steady_clock::duration window_;
    std::chrono::steady_clock::time_point window_start_{};
    std::uint32_t passed_ = 0;
    std::uint64_t held_ = 0;
};

}  // namespace ferry
