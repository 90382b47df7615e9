#include "transport/socket_tuning.hpp"

#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>

#include <cstring>
#include <fstream>

namespace ferry {

namespace {

bool set_int(int fd, int level, int name, int value) {
    return ::setsockopt(fd, level, name, &value, sizeof(value)) == 0;
}

int get_int(int fd, int level, int name) {
    int v = 0;
    socklen_t len = sizeof(v);
    if (::getsockopt(fd, level, name, &v, &len) != 0) {
        return -1;
    }
    return v;
}

}  // namespace

tuning_report apply_socket_tuning(int fd, const socket_tuning& t) {
    tuning_report r;
    if (t.nodelay) {
        r.nodelay = set_int(fd, IPPROTO_TCP, TCP_NODELAY, 1);
    }
    if (t.notsent_lowat > 0 && set_int(fd, IPPROTO_TCP, TCP_NOTSENT_LOWAT, static_cast<int>(t.notsent_lowat))) {
        r.notsent_lowat = t.notsent_lowat;
    }
    if (t.keepalive) {
        r.keepalive = set_int(fd, SOL_SOCKET, SO_KEEPALIVE, 1) &&
                      set_int(fd, IPPROTO_TCP, TCP_KEEPIDLE, t.keepalive_idle_s) &&
                      set_int(fd, IPPROTO_TCP, TCP_KEEPINTVL, t.keepalive_interval_s) &&
                      set_int(fd, IPPROTO_TCP, TCP_KEEPCNT, t.keepalive_count);
    }
    if (t.user_timeout_ms > 0 && set_int(fd, IPPROTO_TCP, TCP_USER_TIMEOUT, static_cast<int>(t.user_timeout_ms))) {
        r.user_timeout_ms = t.user_timeout_ms;
    }
    if (t.sndbuf > 0) {
        set_int(fd, SOL_SOCKET, SO_SNDBUF, t.sndbuf);
    }
    if (t.rcvbuf > 0) {
        set_int(fd, SOL_SOCKET, SO_RCVBUF, t.rcvbuf);
    }
    if (!t.congestion.empty()) {
        ::setsockopt(fd, IPPROTO_TCP, TCP_CONGESTION, t.congestion.data(), static_cast<socklen_t>(t.congestion.size()));
    }
    r.sndbuf = get_int(fd, SOL_SOCKET, SO_SNDBUF);
    r.rcvbuf = get_int(fd, SOL_SOCKET, SO_RCVBUF);
    char cc[32] = {};
    socklen_t len = sizeof(cc) - 1;
    if (::getsockopt(fd, IPPROTO_TCP, TCP_CONGESTION, cc, &len) == 0) {
        r.congestion.assign(cc, ::strnlen(cc, len));
    }
    return r;
}

std::vector<std::string> available_congestion_controls() {
    std::ifstream in("/proc/sys/net/ipv4/tcp_available_congestion_control");
    std::vector<std::string> names;
    for (std::string name; in >> name;) {
        names.push_back(name);
    }
    return names;
}

}  // namespace ferry
