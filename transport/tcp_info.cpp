// sample_tcp_info lives apart from the rest of socket_tuning: it needs the kernel's own
// struct tcp_info (linux/tcp.h: bytes_acked, delivery_rate, ...), which clashes with
// glibc's older copy in netinet/tcp.h.
#include <linux/tcp.h>
#include <netinet/in.h>
#include <sys/socket.h>

#include "transport/socket_tuning.hpp"

namespace ferry {

tcp_info_sample sample_tcp_info(int fd) {
    tcp_info_sample out;
    struct tcp_info ti {};
    socklen_t len = sizeof(ti);
    if (fd < 0 || ::getsockopt(fd, IPPROTO_TCP, TCP_INFO, &ti, &len) != 0) {
        return out;
    }
    out.ok = true;
    out.rtt_us = ti.tcpi_rtt;
    out.min_rtt_us = ti.tcpi_min_rtt;
    out.rttvar_us = ti.tcpi_rttvar;
    out.snd_cwnd = ti.tcpi_snd_cwnd;
    out.snd_mss = ti.tcpi_snd_mss;
    out.total_retrans = ti.tcpi_total_retrans;
    out.bytes_acked = ti.tcpi_bytes_acked;
    out.bytes_received = ti.tcpi_bytes_received;
    out.delivery_rate = ti.tcpi_delivery_rate;
    out.unacked = ti.tcpi_unacked;
    out.segs_out = ti.tcpi_segs_out;
    socklen_t n = sizeof(int);
    if (::getsockopt(fd, SOL_SOCKET, SO_SNDBUF, &out.sndbuf, &n) != 0) {
        out.sndbuf = 0;
    }
    n = sizeof(int);
    if (::getsockopt(fd, SOL_SOCKET, SO_RCVBUF, &out.rcvbuf, &n) != 0) {
        out.rcvbuf = 0;
    }
    return out;
}

bool path_calls_for_more_connections(int fd, std::uint32_t rtt_us) {
    tcp_info_sample ti = sample_tcp_info(fd);
    bool losses = ti.total_retrans >= 8 && std::uint64_t{ti.total_retrans} * 100 >= ti.segs_out;
    // The least round trip seen, not the smoothed one: a busy host's scheduling delay
    // (loopback under load) and a queue's growth lengthen the smoothed one, and neither is
    // a reason for more streams. None yet: the kernel's ~0 (or 0 from a kernel before 4.6).
    const bool no_min = ti.min_rtt_us == 0 || ti.min_rtt_us == UINT32_MAX;
    const std::uint32_t path_rtt_us = no_min ? ti.rtt_us : ti.min_rtt_us;
    return !ti.ok || path_rtt_us >= rtt_us || losses;
}

}  // namespace ferry
