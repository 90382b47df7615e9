// End-to-end: a listening node's resource limits (node/limits.hpp) against connections
// that go silent, a sender that stops talking, and transfers over the configured bounds.
// The real ferry binary serves; the misbehaving clients are this test process, built on
// ferry's own transport (TLS 1.3 with a trusted node identity) or on raw TCP sockets.
#include <netinet/in.h>
#include <sched.h>
#include <sys/mount.h>
#include <sys/socket.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <asio.hpp>
#include <cstring>
#include <nlohmann/json.hpp>

#include "node/identity.hpp"
#include "protocol/types.hpp"
#include "tests/support/ferry_cli.hpp"
#include "tests/support/tree.hpp"
#include "transport/buffer_pool.hpp"
#include "transport/connection.hpp"
#include "transport/stream.hpp"
#include "transport/tls.hpp"

namespace fs = std::filesystem;
using json = nlohmann::json;
using namespace ferry::test;
using namespace std::chrono_literals;

namespace {

// Runs `io` until `done` holds or `limit` passes; returns whether `done` holds.
bool run_until(asio::io_context& io, const std::function<bool()>& done, std::chrono::milliseconds limit = 60s) {
    auto deadline = std::chrono::steady_clock::now() + limit;
    while (!done() && std::chrono::steady_clock::now() < deadline) {
        if (io.stopped()) {
            io.restart();
        }
        io.run_one_for(100ms);
    }
    return done();
}

// A raw TCP connection to HOST:PORT (IPv4 loopback) that sends nothing.
int open_silent_tcp(const std::string& address) {
    int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_in sa{};
    sa.sin_family = AF_INET;
    sa.sin_port = htons(static_cast<std::uint16_t>(std::stoi(address.substr(address.rfind(':') + 1))));
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (fd >= 0 && ::connect(fd, reinterpret_cast<sockaddr*>(&sa), sizeof sa) != 0) {
        ::close(fd);
        fd = -1;
    }
    return fd;
}

// Collects what a client connection receives.
struct recorder : ferry::connection_handler {
    std::vector<ferry::wire::Header> frames;
    bool closed = false;
    void on_frame(ferry::connection&, ferry::wire::Header& h, ferry::pooled_buffer) override { frames.push_back(h); }
    void on_send_ready(ferry::connection&) override {}
    void on_closed(ferry::connection&, std::error_code) override { closed = true; }
    const ferry::wire::Error* error() const {
        for (const auto& h : frames) {
            if (h.has_error()) {
                return &h.error();
            }
        }
        return nullptr;
    }
};

// TLS 1.3 clients of node B (trusted by the node under test), on the test's own loop.
class trusted_client {
public:
    explicit trusted_client(const fs::path& state)
        : ident_(ferry::load_or_create_identity(state)), tls_(ident_.creds, ferry::tls_role::client) {}

    // Starts `n` connections; each result lands in `streams` (null on failure).
    void connect(const std::string& address, std::size_t n) {
        ferry::connect_options opts;
        ASSERT_TRUE(ferry::split_host_port(address, opts.host, opts.port));
        for (std::size_t i = 0; i < n; ++i) {
            ferry::async_connect_stream(io, &tls_, opts, std::make_unique<ferry::tls_peer_check>(),
                                        [this](std::error_code ec, std::unique_ptr<ferry::byte_stream> s) {
                                            ++finished;
                                            failed += ec ? 1 : 0;
                                            streams.push_back(std::move(s));
                                        });
        }
    }

    asio::io_context io;
    std::vector<std::unique_ptr<ferry::byte_stream>> streams;
    std::size_t finished = 0;
    std::size_t failed = 0;

private:
    ferry::identity ident_;
    ferry::tls_context tls_;
};

class limits : public ::testing::Test {
protected:
    ferry_cli cli;
    std::string a_id = cli.id("A");
    std::string b_id = cli.id("B");

    ferry_cli::receiver start_serve(std::vector<std::string> extra) {
        run_result t = cli.ferry({"trust", "--state", cli.state("A").string(), b_id});
        EXPECT_EQ(t.code, 0) << t.err;
        std::vector<std::string> args{"serve",   "--state", cli.state("A").string(), "--listen", "127.0.0.1:0",
                                      "--json", "--inbox", (cli.root() / "inbox").string()};
        args.insert(args.end(), extra.begin(), extra.end());
        return cli.start(args);
    }

    json status() {
        run_result st = cli.ferry({"status", "--state", cli.state("A").string(), "--json"});
        EXPECT_EQ(st.code, 0) << st.err;
        return st.code == 0 ? json::parse(st.out) : json::object();
    }

    run_result send(const fs::path& what, const std::string& address, std::vector<std::string> extra = {}) {
        std::vector<std::string> args{"send", "--state", cli.state("B").string()};
        args.insert(args.end(), extra.begin(), extra.end());
        args.push_back(what.string());
        args.push_back(a_id + "@" + address);
        return cli.ferry(args);
    }
};

std::size_t count_lines_with(const std::string& text, const std::string& needle) {
    std::size_t n = 0;
    for (std::size_t at = text.find(needle); at != std::string::npos; at = text.find(needle, at + 1)) {
        ++n;
    }
    return n;
}

TEST_F(limits, silent_connections_do_not_stop_a_real_transfer) {
    // 200 raw TCP connections that never start TLS, then 200 that finish TLS as a trusted
    // peer and never say Hello. The node takes 300 in all: the oldest silent ones make room.
    // A handshake timeout longer than the test: every silent connection that goes, goes
    // by eviction.
    auto sv = start_serve({"--max-connections", "300", "--handshake-timeout", "60s"});
    std::vector<int> raw;
    for (int i = 0; i < 200; ++i) {
        int fd = open_silent_tcp(sv.address);
        ASSERT_GE(fd, 0) << "connection " << i;
        raw.push_back(fd);
    }
    trusted_client tls(cli.state("B"));
    tls.connect(sv.address, 200);
    ASSERT_TRUE(run_until(tls.io, [&] { return tls.finished == 200; })) << tls.finished << " of 200 handshakes ended";

    write_random_file(cli.root() / "src/tree/a.bin", 3 * 1024 * 1024 + 17, 7);
    write_random_file(cli.root() / "src/tree/b/c.bin", 4096, 8);
    run_result r = send(cli.root() / "src/tree", sv.address);
    ASSERT_EQ(r.code, 0) << r.err << sv.proc->err();
    EXPECT_EQ(compare_trees(cli.root() / "src/tree", cli.root() / "inbox/tree"), "");

    json st = status();
    const json& no = st["refusals"];
    // 400 silent + 4 real connections against a cap of 300: at least 104 were closed to
    // make room, and the real ones were never among them.
    EXPECT_GE(no["evicted"].get<std::uint64_t>(), 104u) << no;
    EXPECT_EQ(st["totals"]["transfers_ok"], 1u) << st;
    // One log line per refusal, but throttled (20 per 10 s): far fewer lines than
    // evictions, even if a slow run spans two windows.
    std::string log = sv.proc->err();
    std::size_t lines = count_lines_with(log, "not in a session yet and the node is full");
    EXPECT_GE(lines, 1u) << log;
    EXPECT_LE(lines, 40u) << log.substr(0, 4000);
    for (int fd : raw) {
        ::close(fd);
    }
    sv.proc->signal(SIGTERM);
    EXPECT_EQ(sv.proc->wait(process_timeout), 0) << sv.proc->err();
}

TEST_F(limits, connections_that_say_nothing_are_closed_after_the_timeouts) {
    auto sv = start_serve({"--handshake-timeout", "300ms", "--idle-timeout", "500ms"});
    trusted_client client(cli.state("B"));
    // After TLS, no Hello: closed once the handshake timeout passes again.
    client.connect(sv.address, 1);
    ASSERT_TRUE(run_until(client.io, [&] { return client.finished == 1; }));
    ASSERT_TRUE(client.streams[0]) << "TLS handshake failed";
    auto pool = ferry::buffer_pool::make(4, ferry::chunk_size);
    recorder silent;
    auto quiet = std::make_shared<ferry::connection>(std::move(client.streams[0]), pool);
    quiet->start(&silent);
    ASSERT_TRUE(run_until(client.io, [&] { return silent.closed; }, 30s)) << "still open";

    // Hello, then silence: the transfer ends with an Error frame after the idle timeout.
    client.connect(sv.address, 1);
    ASSERT_TRUE(run_until(client.io, [&] { return client.finished == 2; }));
    ASSERT_TRUE(client.streams[1]);
    recorder idle;
    auto c = std::make_shared<ferry::connection>(std::move(client.streams[1]), pool);
    c->start(&idle);
    ferry::wire::Header h;
    auto* hello = h.mutable_hello();
    hello->set_version(ferry::protocol_version);
    hello->set_session_id(std::string(16, 'x'));
    hello->set_conn_index(0);
    hello->set_conn_count(1);
    c->send(h);
    ASSERT_TRUE(run_until(client.io, [&] { return idle.closed; }, 30s)) << "still open";
    ASSERT_NE(idle.error(), nullptr) << "no Error frame before the close";
    EXPECT_EQ(idle.error()->code(), ferry::wire::ERROR_CANCELLED);
    EXPECT_NE(idle.error()->message().find("--idle-timeout"), std::string::npos) << idle.error()->message();

    json st = status();
    EXPECT_EQ(st["refusals"]["handshake_timeout"], 1u) << st["refusals"];
    EXPECT_EQ(st["refusals"]["idle"], 1u) << st["refusals"];
    std::string log = sv.proc->err();
    EXPECT_NE(log.find("no Hello within the handshake timeout"), std::string::npos) << log;
    EXPECT_NE(log.find("nothing from the sender for"), std::string::npos) << log;

    // And the node still serves.
    write_random_file(cli.root() / "after.bin", 300 * 1024, 9);
    run_result r = send(cli.root() / "after.bin", sv.address);
    ASSERT_EQ(r.code, 0) << r.err << sv.proc->err();
    EXPECT_EQ(compare_trees(cli.root() / "after.bin", cli.root() / "inbox/after.bin"), "");
}

TEST_F(limits, extra_connections_of_one_peer_are_turned_away_and_the_transfer_goes_on) {
    auto sv = start_serve({"--max-peer-connections", "2"});
    write_random_file(cli.root() / "src/big.bin", 6 * 1024 * 1024, 11);
    run_result r = send(cli.root() / "src/big.bin", sv.address, {"--connections", "4"});
    ASSERT_EQ(r.code, 0) << r.err << sv.proc->err();
    EXPECT_EQ(compare_trees(cli.root() / "src/big.bin", cli.root() / "inbox/big.bin"), "");
    EXPECT_NE(r.err.find("--max-peer-connections"), std::string::npos) << r.err;
    EXPECT_EQ(status()["refusals"]["peer_connections"], 2u);
}

TEST_F(limits, transfers_over_the_file_or_byte_limits_are_refused_before_anything_is_written) {
    auto sv = start_serve({"--max-files", "3", "--max-bytes", "8K"});
    for (int i = 0; i < 4; ++i) {
        write_text_file(cli.root() / "many" / ("f" + std::to_string(i)), "x");
    }
    run_result many = send(cli.root() / "many", sv.address);
    EXPECT_EQ(many.code, 2) << many.err;
    EXPECT_NE(many.err.find("--max-files"), std::string::npos) << many.err;

    write_random_file(cli.root() / "big.bin", 8 * 1024 + 1, 12);
    run_result big = send(cli.root() / "big.bin", sv.address);
    EXPECT_EQ(big.code, 2) << big.err;
    EXPECT_NE(big.err.find("--max-bytes"), std::string::npos) << big.err;

    std::error_code ec;
    EXPECT_TRUE(!fs::exists(cli.root() / "inbox") || fs::is_empty(cli.root() / "inbox", ec))
        << "something was written";
    json no = status()["refusals"];
    EXPECT_EQ(no["files"], 1u) << no;
    EXPECT_EQ(no["bytes"], 1u) << no;

    write_random_file(cli.root() / "fits.bin", 8 * 1024, 13);
    run_result fits = send(cli.root() / "fits.bin", sv.address);
    EXPECT_EQ(fits.code, 0) << fits.err;
}

TEST_F(limits, disk_full_mid_transfer_fails_with_exit_4_keeps_verified_data_and_resumes) {
    // A tmpfs with room for the bytes but only 40 inodes, mounted in a mount namespace of
    // this test process (the ferry processes inherit it; the host never sees it): the
    // space check passes and file creation runs out mid-transfer with ENOSPC.
    if (::unshare(CLONE_NEWNS) != 0) {
        GTEST_SKIP() << "cannot create a mount namespace (needs root): " << std::strerror(errno);
    }
    ASSERT_EQ(::mount(nullptr, "/", nullptr, MS_REC | MS_PRIVATE, nullptr), 0) << std::strerror(errno);
    fs::path disk = cli.root() / "disk";
    fs::create_directories(disk);
    ASSERT_EQ(::mount("ferry-test", disk.c_str(), "tmpfs", 0, "size=64m,nr_inodes=40"), 0) << std::strerror(errno);
    fs::path src = cli.root() / "src/tree";
    for (int i = 0; i < 100; ++i) {
        write_random_file(src / ("f" + std::to_string(i)), 4096 + i, 100 + i);
    }
    auto receive = [&] {
        return cli.start({"receive", "--state", cli.state("A").string(), "--listen", "127.0.0.1:0", "--accept-from",
                          b_id, "--json", disk.string()});
    };
    auto rx = receive();
    run_result r = send(src, rx.address);
    EXPECT_EQ(r.code, 2) << r.err;
    EXPECT_NE(r.err.find("No space left on device"), std::string::npos) << r.err;
    EXPECT_EQ(rx.proc->wait(process_timeout), 4) << rx.proc->err();
    EXPECT_NE(rx.proc->err().find("No space left on device"), std::string::npos) << rx.proc->err();
    // Nothing under a final name that is not the whole, verified file; what was written
    // stays (as partial files) for the next attempt.
    std::size_t kept = 0;
    for (const auto& e : fs::directory_iterator(disk / "tree")) {
        std::string name = e.path().filename().string();
        if (name.ends_with(".ferry-part")) {
            ++kept;
            continue;
        }
        EXPECT_EQ(compare_trees(src / name, e.path()), "") << name;
    }
    EXPECT_GT(kept, 0u);

    // Room again: the same send completes and the tree is identical.
    ASSERT_EQ(::mount(nullptr, disk.c_str(), nullptr, MS_REMOUNT, "size=64m,nr_inodes=1000"), 0) << std::strerror(errno);
    auto rx2 = receive();
    run_result again = send(src, rx2.address);
    ASSERT_EQ(again.code, 0) << again.err << rx2.proc->err();
    EXPECT_EQ(rx2.proc->wait(process_timeout), 0) << rx2.proc->err();
    EXPECT_EQ(compare_trees(src, disk / "tree"), "");
    ::umount2(disk.c_str(), MNT_DETACH);
}

TEST_F(limits, bad_limit_values_are_usage_errors) {
    for (const auto& bad : std::vector<std::vector<std::string>>{{"--max-connections", "0"},
                                                                 {"--idle-timeout", "5 fortnights"},
                                                                 {"--max-bytes", "lots"},
                                                                 {"--max-conn-queue", "1K"}}) {
        std::vector<std::string> args{"serve", "--state", cli.state("A").string(), "--listen", "127.0.0.1:0"};
        args.insert(args.end(), bad.begin(), bad.end());
        run_result r = cli.ferry(args);
        EXPECT_EQ(r.code, 1) << bad[0] << " " << bad[1] << ": " << r.err;
        EXPECT_NE(r.err.find(bad[0]), std::string::npos) << r.err;
    }
}

}  // namespace
