// socket_tuning: what apply_socket_tuning asks of a real TCP socket and what it reports
// the kernel took, including the congestion control fallback.
#include "transport/socket_tuning.hpp"

#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

namespace ferry {
namespace {

std::string read_proc(const char* path) {
    std::ifstream in(path);
    std::string s;
    std::getline(in, s);
    return s;
}

bool listed(const std::string& list, const std::string& name) {
    std::istringstream in(list);
    for (std::string w; in >> w;) {
        if (w == name) {
            return true;
        }
    }
    return false;
}

class tcp_socket {
public:
    tcp_socket() : fd_(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0)) {}
    ~tcp_socket() { ::close(fd_); }
    int fd() const { return fd_; }

private:
    int fd_;
};

TEST(socket_tuning_test, options_are_applied_and_reported) {
    tcp_socket s;
    ASSERT_GE(s.fd(), 0);
    socket_tuning t;
    t.congestion.clear();
    tuning_report r = apply_socket_tuning(s.fd(), t);
    EXPECT_TRUE(r.nodelay);
    EXPECT_EQ(r.notsent_lowat, t.notsent_lowat);
    EXPECT_TRUE(r.keepalive);
    EXPECT_EQ(r.user_timeout_ms, t.user_timeout_ms);
    EXPECT_GT(r.sndbuf, 0);
    EXPECT_EQ(r.congestion, read_proc("/proc/sys/net/ipv4/tcp_congestion_control"));  // "": the system's
}

TEST(socket_tuning_test, bbr_is_asked_for_by_default_and_an_unknown_algorithm_keeps_the_system_default) {
    std::string system = read_proc("/proc/sys/net/ipv4/tcp_congestion_control");
    ASSERT_FALSE(system.empty());
    {
        tcp_socket s;
        tuning_report r = apply_socket_tuning(s.fd(), socket_tuning{});
        if (listed(read_proc("/proc/sys/net/ipv4/tcp_allowed_congestion_control"), "bbr")) {
            EXPECT_EQ(r.congestion, "bbr");  // allowed to every process
        } else if (std::vector<std::string> available = available_congestion_controls();
                   std::find(available.begin(), available.end(), "bbr") == available.end()) {
            EXPECT_EQ(r.congestion, system);  // not in this kernel
        } else {
            // Available but not allowed: it depends on CAP_NET_ADMIN in this network
            // namespace, which a test cannot know beforehand; either way, never a third value.
            EXPECT_TRUE(r.congestion == "bbr" || r.congestion == system) << r.congestion;
        }
    }
    {
        tcp_socket s;
        socket_tuning t;
        t.congestion = "no-such-cc";
        EXPECT_EQ(apply_socket_tuning(s.fd(), t).congestion, system);
    }
}

}  // namespace
}  // namespace ferry
