// End-to-end: a listening node's resource limits (node/limits.hpp) against connections
// that go silent, a sender that stops talking, and transfers over the configured bounds.
// The real ferry binary serves; the misbehaving clients are hostile_peer connections
// (tests/support): plain TCP, or TLS 1.3 with the identity of node B, which the node trusts.
#include <fcntl.h>
#include <sys/mount.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <cstring>
#include <memory>
#include <nlohmann/json.hpp>

#include "node/identity.hpp"
#include "tests/support/ferry_cli.hpp"
#include "tests/support/fs_util.hpp"
#include "tests/support/hostile_peer.hpp"
#include "tests/support/tree.hpp"

namespace fs = std::filesystem;
using json = nlohmann::json;
using namespace ferry::test;
using namespace std::chrono_literals;

namespace {

class limits : public ::testing::Test {
protected:
    ferry_cli cli;
    std::string a_id = cli.id("A");
    std::string b_id = cli.id("B");

    // TLS as node B, with B's own key and certificate.
    hostile_tls as_b() { return {true, ferry::load_or_create_identity(cli.state("B")).creds, TLS1_3_VERSION, {}}; }

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

TEST_F(limits, silent_connections_do_not_stop_a_real_transfer) {
    // 200 raw TCP connections that never start TLS, then 200 that finish TLS as a trusted
    // peer and never say Hello. The node takes 300 in all: the oldest silent ones make room.
    // A handshake timeout longer than the test: every silent connection that goes, goes
    // by eviction.
    auto sv = start_serve({"--max-connections", "300", "--handshake-timeout", "60s"});
    std::vector<std::unique_ptr<hostile_peer>> silent;
    for (int i = 0; i < 200; ++i) {
        silent.push_back(std::make_unique<hostile_peer>(sv.address, hostile_tls{false, std::nullopt, TLS1_3_VERSION, {}}));
        ASSERT_TRUE(silent.back()->connect()) << "connection " << i << ": " << silent.back()->error();
    }
    hostile_tls b = as_b();
    for (int i = 0; i < 200; ++i) {
        silent.push_back(std::make_unique<hostile_peer>(sv.address, b));
        ASSERT_TRUE(silent.back()->connect()) << "TLS connection " << i << ": " << silent.back()->error();
    }

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
    std::size_t lines = lines_with(log, "not in a session yet and the node is full");
    EXPECT_GE(lines, 1u) << log;
    EXPECT_LE(lines, 40u) << log.substr(0, 4000);
    silent.clear();
    sv.proc->signal(SIGTERM);
    EXPECT_EQ(sv.proc->wait(process_timeout), 0) << sv.proc->err();
}

TEST_F(limits, connections_that_say_nothing_are_closed_after_the_timeouts) {
    auto sv = start_serve({"--handshake-timeout", "300ms", "--idle-timeout", "500ms"});
    // After TLS, no Hello: closed once the handshake timeout passes again.
    hostile_peer quiet(sv.address, as_b(), 30s);
    ASSERT_TRUE(quiet.connect()) << quiet.error();
    EXPECT_TRUE(quiet.read_until_closed().closed) << "still open";

    // Hello, then silence: the transfer ends with an Error frame after the idle timeout.
    hostile_peer idle(sv.address, as_b(), 30s);
    ASSERT_TRUE(idle.connect()) << idle.error();
    ASSERT_TRUE(idle.hello()) << idle.error();
    node_answer a = idle.read_until_closed();
    ASSERT_TRUE(a.closed) << "still open";
    ASSERT_NE(a.error(), nullptr) << "no Error frame before the close";
    EXPECT_EQ(a.error()->code(), ferry::wire::ERROR_CANCELLED);
    EXPECT_NE(a.error()->message().find("--idle-timeout"), std::string::npos) << a.error()->message();

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
    run_result r = send(cli.root() / "src/big.bin", sv.address, {"--connections", "4", "--json"});
    ASSERT_EQ(r.code, 0) << r.err << sv.proc->err();
    EXPECT_EQ(compare_trees(cli.root() / "src/big.bin", cli.root() / "inbox/big.bin"), "");
    EXPECT_NE(r.err.find("--max-peer-connections"), std::string::npos) << r.err;
    EXPECT_EQ(status()["refusals"]["peer_connections"], 2u);
    // The two turned away are not counted as connections that carried payload (what went
    // on them before the refusal went again on the others).
    EXPECT_LE(find_event(json_events(r.out), "done")["connections"], 2) << r.out;
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
    fs::path disk = cli.root() / "disk";
    if (std::string why = mount_private_tmpfs(disk, "size=64m,nr_inodes=40"); !why.empty()) {
        GTEST_SKIP() << why;
    }
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
    // stays, renamed into place or (verified, its rename not yet done when the disk
    // filled) as a partial file, for the next attempt. A whole, verified file is named
    // even though the transfer failed; a one-chunk file written without a name and not
    // yet verified is gone with its descriptor.
    std::size_t kept = 0;
    for (const auto& e : fs::directory_iterator(disk / "tree")) {
        std::string name = e.path().filename().string();
        ++kept;
        if (name.ends_with(".ferry-part")) {
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

TEST_F(limits, a_disk_full_mid_transfer_at_a_serving_node_is_tried_again_once_there_is_room) {
    // `ferry serve` stays when its disk fills: the sender's --retry-for tries again (the
    // Error said ERROR_IO, which it took as final, and the send failed at once).
    fs::path disk = cli.root() / "inbox";
    if (std::string why = mount_private_tmpfs(disk, "size=64m,nr_inodes=40"); !why.empty()) {
        GTEST_SKIP() << why;
    }
    fs::path src = cli.root() / "src/tree";
    for (int i = 0; i < 100; ++i) {
        write_random_file(src / ("f" + std::to_string(i)), 4096 + i, 300 + i);
    }
    auto sv = start_serve({});
    child_process tx({FERRY_BINARY, "send", "--state", cli.state("B").string(), "--retry-for", "60s", src.string(),
                      a_id + "@" + sv.address});
    std::optional<std::string> line = tx.wait_for_err("reconnecting", process_timeout);
    ASSERT_TRUE(line) << tx.err();
    EXPECT_NE(line->find("No space left on device"), std::string::npos) << *line;
    ASSERT_EQ(::mount(nullptr, disk.c_str(), nullptr, MS_REMOUNT, "size=64m,nr_inodes=1000"), 0) << std::strerror(errno);
    EXPECT_EQ(tx.wait(process_timeout), 0) << tx.err();
    EXPECT_EQ(compare_trees(src, disk / "tree"), "");
    sv.proc->signal(SIGTERM);
    EXPECT_EQ(sv.proc->wait(process_timeout), 0) << sv.proc->err();
    ::umount2(disk.c_str(), MNT_DETACH);
}

TEST_F(limits, a_serving_nodes_disk_that_runs_out_of_bytes_mid_transfer_is_tried_again_once_there_is_room) {
    // As above, with bytes: the next attempt meets the space check before it offers a
    // byte, and too little room there was final (ERROR_IO) too.
    fs::path disk = cli.root() / "inbox";
    if (std::string why = mount_private_tmpfs(disk, "size=24m"); !why.empty()) {
        GTEST_SKIP() << why;
    }
    fs::path src = cli.root() / "src/big.bin";
    write_random_file(src, 16 * 1024 * 1024, 77);
    auto sv = start_serve({});
    child_process tx({FERRY_BINARY, "send", "--state", cli.state("B").string(), "--retry-for", "60s", "--bwlimit",
                      "8M", "--compress", "never", src.string(), a_id + "@" + sv.address});
    ASSERT_TRUE(wait_for_change(
        disk, [&] { return allocated_bytes(disk / ".big.bin.ferry-part") >= 2 * 1024 * 1024; }, process_timeout))
        << tx.err();
    {
        int fd = ::open((disk / "filler").c_str(), O_WRONLY | O_CREAT | O_CLOEXEC, 0600);
        ASSERT_GE(fd, 0) << std::strerror(errno);
        EXPECT_EQ(::fallocate(fd, 0, 0, 12 * 1024 * 1024), 0) << std::strerror(errno);
        ::close(fd);
    }
    // The first attempt fails writing, the second at the space check: both are tried again.
    ASSERT_TRUE(tx.wait_for_err("(attempt 2,", process_timeout)) << tx.err();
    EXPECT_NE(tx.err().find("refused transfer: not enough space"), std::string::npos) << tx.err();
    fs::remove(disk / "filler");
    EXPECT_EQ(tx.wait(process_timeout), 0) << tx.err();
    EXPECT_EQ(compare_trees(src, disk / "big.bin"), "");
    sv.proc->signal(SIGTERM);
    EXPECT_EQ(sv.proc->wait(process_timeout), 0) << sv.proc->err();
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
