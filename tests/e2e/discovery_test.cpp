// LAN discovery between two nodes in network namespaces the test makes (a veth pair,
// addresses in 198.18.0.0/15): each finds the other by its signed announcement, `ferry
// peers` lists it, a name resolves through it, and forged or replayed announcements sent
// into the link change nothing. Skipped where namespaces cannot be made (not root, no
// `ip`).
#include <arpa/inet.h>
#include <fcntl.h>
#include <net/if.h>
#include <netinet/in.h>
#include <sched.h>
#include <sys/socket.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <nlohmann/json.hpp>
#include <map>
#include <thread>

#include "ferry.pb.h"
#include "tests/support/announce_forge.hpp"
#include "tests/support/ferry_cli.hpp"
#include "tests/support/tree.hpp"
#include "transport/identity.hpp"

namespace fs = std::filesystem;
using namespace ferry;
using namespace ferry::test;
using namespace std::chrono_literals;

namespace {

bool sh(const std::string& cmd) { return std::system((cmd + " >/dev/null 2>&1").c_str()) == 0; }

// iproute2's `ip` (child_process runs a path, not a name looked up in PATH).
std::string ip_binary() {
    for (const char* p : {"/usr/sbin/ip", "/sbin/ip", "/usr/bin/ip", "/bin/ip"}) {
        if (::access(p, X_OK) == 0) {
            return p;
        }
    }
    return "ip";
}

// Two namespaces joined by a veth pair: A at 198.18.213.1, B at 198.18.213.2.
class lan_pair {
public:
    lan_pair() : a_("ferry-t" + std::to_string(::getpid()) + "a"), b_("ferry-t" + std::to_string(::getpid()) + "b") {
        std::string va = "fva" + std::to_string(::getpid());
        std::string vb = "fvb" + std::to_string(::getpid());
        ok_ = ::geteuid() == 0 && sh("ip netns add " + a_) && sh("ip netns add " + b_) &&
              sh("ip link add " + va + " type veth peer name " + vb) && sh("ip link set " + va + " netns " + a_) &&
              sh("ip link set " + vb + " netns " + b_) && sh("ip -n " + a_ + " addr add 198.18.213.1/24 dev " + va) &&
              sh("ip -n " + b_ + " addr add 198.18.213.2/24 dev " + vb) && sh("ip -n " + a_ + " link set " + va + " up") &&
              sh("ip -n " + b_ + " link set " + vb + " up") && sh("ip -n " + a_ + " link set lo up") &&
              sh("ip -n " + b_ + " link set lo up");
    }
    ~lan_pair() {
        sh("ip netns del " + a_);  // the veth pair goes with it
        sh("ip netns del " + b_);
    }
    bool ok() const { return ok_; }
    const std::string& a() const { return a_; }
    const std::string& b() const { return b_; }

private:
    std::string a_;
    std::string b_;
    bool ok_ = false;
};

// A UDP socket made inside namespace `ns` (it stays there), joined to the IPv4 group on
// the interface with address `local`, sending through it.
int socket_in(const std::string& ns, const std::string& local) {
    int out = -1;
    std::thread t([&] {
        int nsfd = ::open(("/run/netns/" + ns).c_str(), O_RDONLY | O_CLOEXEC);
        if (nsfd < 0 || ::setns(nsfd, CLONE_NEWNET) != 0) {
            return;
        }
        ::close(nsfd);
        int fd = ::socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
        int one = 1;
        ::setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
        sockaddr_in any{};
        any.sin_family = AF_INET;
        any.sin_port = htons(7789);
        ::bind(fd, reinterpret_cast<sockaddr*>(&any), sizeof any);
        ip_mreqn m{};
        ::inet_pton(AF_INET, "239.255.77.88", &m.imr_multiaddr);
        ::inet_pton(AF_INET, local.c_str(), &m.imr_address);
        ::setsockopt(fd, IPPROTO_IP, IP_ADD_MEMBERSHIP, &m, sizeof m);
        in_addr via{};
        ::inet_pton(AF_INET, local.c_str(), &via);
        ::setsockopt(fd, IPPROTO_IP, IP_MULTICAST_IF, &via, sizeof via);
        timeval tv{5, 0};
        ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
        out = fd;
    });
    t.join();
    return out;
}

void send_group(int fd, const std::string& datagram) {
    sockaddr_in to{};
    to.sin_family = AF_INET;
    to.sin_port = htons(7789);
    ::inet_pton(AF_INET, "239.255.77.88", &to.sin_addr);
    ASSERT_EQ(::sendto(fd, datagram.data(), datagram.size(), 0, reinterpret_cast<sockaddr*>(&to), sizeof to),
              static_cast<ssize_t>(datagram.size()));
}

// An announcement claiming `id`, listening at `listen`, signed by a key that is not
// that node's (it cannot have that node's key).
std::string forged_for(const std::string& id, const std::string& listen) {
    wire::AnnounceBody body;
    body.set_node_id(id);
    body.set_name("impostor");
    body.add_listen(listen);
    body.set_version(9);
    body.set_instance(1);
    body.set_seq(1'000'000);
    body.set_time_ms(std::chrono::duration_cast<std::chrono::milliseconds>(
                         std::chrono::system_clock::now().time_since_epoch())
                         .count());
    return sign_announce_body(generate_credentials().key_pem, body);
}

// The next JSON event named `name` on `proc`'s stdout (nullopt: none within `timeout`).
std::optional<nlohmann::json> next_event(child_process& proc, const std::string& name, std::chrono::seconds timeout) {
    auto end = std::chrono::steady_clock::now() + timeout;
    while (std::chrono::steady_clock::now() < end) {
        auto left = std::chrono::duration_cast<std::chrono::milliseconds>(end - std::chrono::steady_clock::now());
        std::optional<std::string> line = proc.read_line(std::max(left, 1ms));
        if (!line) {
            return std::nullopt;
        }
        nlohmann::json j = nlohmann::json::parse(*line, nullptr, false);
        if (!j.is_discarded() && j.value("event", "") == name) {
            return j;
        }
    }
    return std::nullopt;
}

TEST(discovery, nodes_on_a_link_find_each_other_and_forged_or_replayed_announcements_change_nothing) {
    lan_pair lan;
    if (!lan.ok()) {
        GTEST_SKIP() << "cannot make network namespaces here (needs root and iproute2)";
    }
    ferry_cli cli;
    std::string a_id = cli.id("A");
    std::string b_id = cli.id("B");
    const std::string a_canon = parse_node_id(a_id).value_or("");
    fs::path share = cli.root() / "share";
    write_random_file(share / "data.bin", 700'000, 91);
    ASSERT_EQ(cli.ferry({"trust", "--state", cli.state("A").string(), b_id, "--name", "bee"}).code, 0);
    ASSERT_EQ(cli.ferry({"trust", "--state", cli.state("B").string(), a_id, "--name", "ay"}).code, 0);  // no address
    auto in_ns = [](const std::string& ns) {
        return std::vector<std::string>{ip_binary(), "netns", "exec", ns, FERRY_BINARY};
    };
    const std::vector<std::string> fast{"--discovery-interval", "2s", "--discovery-timeout", "6s"};
    std::vector<std::string> a_args{"serve", "--state", cli.state("A").string(), "--listen", "0.0.0.0:0", "--json",
                                    "--inbox", (cli.root() / "in-a").string(), "--name", "node-a", "--share",
                                    "pub=" + share.string()};
    a_args.insert(a_args.end(), fast.begin(), fast.end());
    ferry_cli::receiver a = cli.start(a_args, {}, in_ns(lan.a()));
    ASSERT_FALSE(a.address.empty());
    std::string a_port = a.address.substr(a.address.rfind(':') + 1);
    std::vector<std::string> b_args{"serve", "--state", cli.state("B").string(), "--listen", "0.0.0.0:0", "--json",
                                    "--inbox", (cli.root() / "in-b").string(), "--name", "node-b"};
    b_args.insert(b_args.end(), fast.begin(), fast.end());
    ferry_cli::receiver b = cli.start(b_args, {}, in_ns(lan.b()));
    ASSERT_FALSE(b.address.empty());
    // C, beside A, is not trusted by B and announces a name of its choice.
    const std::string c_canon = parse_node_id(cli.id("C")).value_or("");
    std::vector<std::string> c_args{"serve", "--state", cli.state("C").string(), "--listen", "0.0.0.0:0", "--json",
                                    "--inbox", (cli.root() / "in-c").string(), "--name", "desk"};
    c_args.insert(c_args.end(), fast.begin(), fast.end());
    ferry_cli::receiver c = cli.start(c_args, {}, in_ns(lan.a()));
    ASSERT_FALSE(c.address.empty());

    // B hears A and C (their first announcements, or the next within the interval).
    std::map<std::string, nlohmann::json> heard;
    while (heard.size() < 2) {
        std::optional<nlohmann::json> found = next_event(*b.proc, "discovered", 20s);
        ASSERT_TRUE(found) << b.proc->err();
        heard[parse_node_id((*found)["id"].get<std::string>()).value_or("")] = *found;
    }
    ASSERT_TRUE(heard.contains(a_canon));
    EXPECT_EQ(heard[a_canon]["name"], "node-a");
    EXPECT_EQ(heard[a_canon]["addresses"][0], "198.18.213.1:" + a_port);
    ASSERT_TRUE(heard.contains(c_canon));

    auto b_cmd = [&](std::vector<std::string> args) {
        std::vector<std::string> argv = in_ns(lan.b());
        argv.insert(argv.end(), args.begin(), args.end());
        return run(argv, process_timeout);
    };
    // `ferry peers` on B: A, trusted, where discovery heard it, with the share it opens to B.
    run_result peers = b_cmd({"peers", "--state", cli.state("B").string(), "--json"});
    ASSERT_EQ(peers.code, 0) << peers.err;
    nlohmann::json a_row;
    nlohmann::json c_row;
    for (const nlohmann::json& e : json_events(peers.out)) {
        if (e["event"] == "peer") {
            (parse_node_id(e["id"].get<std::string>()) == a_canon ? a_row : c_row) = e;
        }
    }
    ASSERT_FALSE(a_row.is_null()) << peers.out;
    ASSERT_FALSE(c_row.is_null()) << peers.out;
    EXPECT_EQ(c_row["trusted"], false);
    EXPECT_TRUE(c_row["shares"].is_null());  // a node that is not trusted is not dialed
    EXPECT_EQ(parse_node_id(a_row["id"].get<std::string>()), a_canon);
    EXPECT_EQ(a_row["name"], "ay");
    EXPECT_EQ(a_row["announced_name"], "node-a");
    EXPECT_EQ(a_row["trusted"], true);
    EXPECT_EQ(a_row["addresses"][0], "198.18.213.1:" + a_port);
    ASSERT_TRUE(a_row["shares"].is_array()) << peers.out;
    EXPECT_EQ(a_row["shares"][0]["name"], "pub");

    // The name "ay" has no address in B's trust list: discovery gives it, for get and ls,
    // and so does the name A announces.
    fs::path dest = cli.root() / "got";
    fs::create_directories(dest);
    run_result got = b_cmd({"get", "--state", cli.state("B").string(), "-q", "ay:pub/data.bin", dest.string()});
    ASSERT_EQ(got.code, 0) << got.err;
    EXPECT_EQ(read_text_file(dest / "data.bin"), read_text_file(share / "data.bin"));
    run_result ls = b_cmd({"ls", "--state", cli.state("B").string(), "node-a:pub"});
    ASSERT_EQ(ls.code, 0) << ls.err;
    EXPECT_NE(ls.out.find("data.bin"), std::string::npos) << ls.out;
    // --from-lan: every trusted node B hears that holds the same file (A; never C, which B
    // does not trust), its digest read there.
    fs::path lan_dest = cli.root() / "got-lan";
    fs::create_directories(lan_dest);
    run_result multi = b_cmd({"get", "--state", cli.state("B").string(), "--json", "--from-lan", "--range-size", "256K",
                              "pub/data.bin", lan_dest.string()});
    ASSERT_EQ(multi.code, 0) << multi.err;
    EXPECT_EQ(read_text_file(lan_dest / "data.bin"), read_text_file(share / "data.bin"));
    nlohmann::json multi_done = find_event(json_events(multi.out), "done");
    ASSERT_EQ(multi_done["sources"].size(), 1u) << multi.out;
    EXPECT_EQ(multi_done["sources"][0]["source"], "ay");
    EXPECT_EQ(multi_done["sources"][0]["ranges"], 3);
    // A name only an untrusted node announces is not resolved: anyone may announce any name.
    run_result spoof = b_cmd({"send", "--state", cli.state("B").string(), (share / "data.bin").string(), "desk"});
    EXPECT_EQ(spoof.code, 1) << spoof.err;
    EXPECT_NE(spoof.err.find("not trusted here"), std::string::npos) << spoof.err;
    EXPECT_FALSE(fs::exists(cli.root() / "in-c" / "data.bin"));

    // Into the link from B's side: an announcement for A's ID signed by another key, and
    // a real announcement of A's recorded and sent again. Neither moves A's address.
    int probe = socket_in(lan.b(), "198.18.213.2");
    ASSERT_GE(probe, 0);
    std::string recorded;
    for (int i = 0; i < 20 && recorded.empty(); ++i) {  // A's next announcement (every 2 s at most)
        char buf[2048];
        ssize_t n = ::recv(probe, buf, sizeof buf, 0);
        ASSERT_GT(n, 0) << "no announcement of A heard within 5 s";
        wire::Announce an;
        wire::AnnounceBody body;
        if (an.ParseFromArray(buf, static_cast<int>(n)) && body.ParseFromString(an.body()) && body.node_id() == a_canon) {
            recorded.assign(buf, static_cast<std::size_t>(n));
        }
    }
    ASSERT_FALSE(recorded.empty());
    send_group(probe, forged_for(a_canon, "198.18.213.66:1"));
    // Sent again once A has moved on (its next announcement is newer): a replay.
    std::optional<nlohmann::json> status;
    for (int i = 0; i < 200; ++i) {
        run_result st = b_cmd({"status", "--state", cli.state("B").string(), "--json"});
        ASSERT_EQ(st.code, 0) << st.err;
        nlohmann::json j = nlohmann::json::parse(st.out);
        const nlohmann::json& n = j["discovery"]["announcements"];
        if (n["forged"].get<int>() >= 1 && n["replayed"].get<int>() >= 1) {
            status = j;
            break;
        }
        send_group(probe, recorded);
        char buf[2048];
        (void)::recv(probe, buf, sizeof buf, 0);  // waits for the next datagram on the link (bounded: 5 s)
    }
    ::close(probe);
    ASSERT_TRUE(status) << "B did not count the forged and the replayed announcement";
    const nlohmann::json* d = nullptr;
    for (const nlohmann::json& p : (*status)["discovery"]["peers"]) {
        if (parse_node_id(p["id"].get<std::string>()) == a_canon) {
            d = &p;
        }
    }
    ASSERT_NE(d, nullptr);
    EXPECT_EQ((*d)["addresses"], nlohmann::json::array({"198.18.213.1:" + a_port}));
    EXPECT_EQ((*d)["name"], "node-a");

    // A stops: it says so, and B forgets it at once.
    a.proc->signal(SIGTERM);
    EXPECT_EQ(a.proc->wait(10s), 0);
    std::optional<nlohmann::json> left = next_event(*b.proc, "peer_left", 10s);
    ASSERT_TRUE(left) << b.proc->err();
    EXPECT_EQ(parse_node_id((*left)["id"].get<std::string>()), a_canon);
    for (ferry_cli::receiver* r : {&b, &c}) {
        r->proc->signal(SIGTERM);
        EXPECT_EQ(r->proc->wait(10s), 0);
    }
}

}  // namespace
