// SocketTuning: the one place where ferry's TCP sockets are tuned.
//
// Called on the loop thread right after connect/accept. Every option is applied
// best-effort; what the kernel actually took is reported back (for `ferry status`).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace ferry {

struct socket_tuning {
    bool nodelay = true;                       // ferry batches its own writes
    std::uint32_t notsent_lowat = 256 * 1024;  // keep the kernel's unsent queue short; 0 = leave
    bool keepalive = true;
    int keepalive_idle_s = 30;
    int keepalive_interval_s = 10;
    int keepalive_count = 3;
    std::uint32_t user_timeout_ms = 60'000;  // a peer that stops acking fails within a minute
    int sndbuf = 0;                          // 0 = kernel autotuning (measured best on loopback)
    int rcvbuf = 0;
    // Asked per socket (TCP_CONGESTION); when the kernel does not have it or does not
    // allow it, the socket keeps the system default. "" = system default. BBR keeps a
    // lossy long path full where loss-based algorithms (cubic) back off at every loss.
    std::string congestion = "bbr";
};

struct tuning_report {
    bool nodelay = false;
    std::uint32_t notsent_lowat = 0;
    bool keepalive = false;
    std::uint32_t user_timeout_ms = 0;
    int sndbuf = 0;  // as reported by getsockopt after tuning
    int rcvbuf = 0;
    std::string congestion;
};

tuning_report apply_socket_tuning(int fd, const socket_tuning& t);

// The congestion control algorithms this kernel has (as
// net.ipv4.tcp_available_congestion_control lists them); empty when it cannot be read.
std::vector<std::string> available_congestion_controls();

// The kernel's own view of a TCP connection (TCP_INFO), sampled on demand only (for
// `ferry status`), never on a timer. `ok` false when the socket gave nothing.
struct tcp_info_sample {
    bool ok = false;
    std::uint32_t rtt_us = 0;
    std::uint32_t rttvar_us = 0;
    std::uint32_t min_rtt_us = 0;     // the least round trip seen (~0 from the kernel: none yet)
    std::uint32_t snd_cwnd = 0;       // segments
    std::uint32_t snd_mss = 0;
    std::uint32_t total_retrans = 0;  // segments retransmitted over the connection's life
    std::uint64_t bytes_acked = 0;    // sent bytes the peer's kernel acknowledged
    std::uint64_t bytes_received = 0;
    std::uint64_t delivery_rate = 0;  // bytes/s, the kernel's latest estimate
    std::uint32_t unacked = 0;        // segments in flight
    std::uint32_t segs_out = 0;       // segments sent over the connection's life
    // The socket's buffers now (SO_SNDBUF, SO_RCVBUF): the kernel's autotuning grows them
    // past what they were when the connection was set up (tuning_report).
    int sndbuf = 0;
    int rcvbuf = 0;
};

tcp_info_sample sample_tcp_info(int fd);

// Whether the path of the connection on socket `fd` calls for more connections beside it
// (a transfer's connections above the first, when --connections is not given): a least
// round trip seen (TCP_INFO's min_rtt) of `rtt_us` or more, or losses (8 segments
// retransmitted or more, and at least 1 % of those sent: a lone timeout on a busy
// loopback is none); also when TCP_INFO cannot be read (docs/decisions.md, "Extra
// connections when the path calls for them").
bool path_calls_for_more_connections(int fd, std::uint32_t rtt_us);
constexpr std::uint32_t default_widen_rtt_us = 5'000;  // above loopback and LAN round trips

}  // namespace ferry
