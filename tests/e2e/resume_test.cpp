// End-to-end: interrupted transfers lose nothing. kill -9 of either side at chosen byte
// counts, then the same send again: only what the receiver lacks travels (asserted from
// the sender's own counters) and the file is identical. Connections cut from outside
// while data flows (tests/support/fault_proxy): one is replaced and the transfer goes on;
// all of them, and `ferry send` reconnects and resumes.
#include <fcntl.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <csignal>
#include <fstream>
#include <memory>
#include <nlohmann/json.hpp>

#include "tests/support/fault_proxy.hpp"
#include "tests/support/ferry_cli.hpp"
#include "tests/support/fs_util.hpp"
#include "tests/support/tree.hpp"

namespace fs = std::filesystem;
using json = nlohmann::json;
using namespace ferry::test;
using namespace std::chrono_literals;

namespace {

constexpr std::uint64_t file_size = 24ull * 1024 * 1024 + 12345;  // 97 chunks, the last one short
constexpr std::uint64_t chunk = 256 * 1024;

// How far short of `wire` bytes (what passed the proxy) the whole chunks a receiver wrote
// may fall: a chunk cut short on each of the 4 connections, and the framing and TLS bytes
// that are not file data (well under 1%).
std::uint64_t slack(std::uint64_t wire) { return 4 * chunk + wire / 100; }

class resume : public ::testing::Test {
protected:
    ferry_cli cli;
    std::string a_id = cli.id("A");
    std::string b_id = cli.id("B");
    fs::path src = cli.root() / "src/big.bin";
    fs::path inbox = cli.root() / "inbox";
    fs::path part = inbox / ".big.bin.ferry-part";

    void SetUp() override {
        write_random_file(src, file_size, 77);
        run_result t = cli.ferry({"trust", "--state", cli.state("A").string(), b_id});
        ASSERT_EQ(t.code, 0) << t.err;
    }

    ferry_cli::receiver serve() {
        return cli.start({"serve", "--state", cli.state("A").string(), "--listen", "127.0.0.1:0", "--json", "--inbox",
                          inbox.string()});
    }

    std::vector<std::string> send_args(const std::string& address, std::vector<std::string> extra = {}) {
        std::vector<std::string> args{FERRY_BINARY, "send", "--state", cli.state("B").string(), "--json"};
        args.insert(args.end(), extra.begin(), extra.end());
        args.push_back(src.string());
        args.push_back(a_id + "@" + address);
        return args;
    }

    // The send, straight to `address`, run to its end.
    run_result send(const std::string& address, std::vector<std::string> extra = {}) {
        std::vector<std::string> args = send_args(address, std::move(extra));
        args.erase(args.begin());  // cli.ferry names the binary itself
        return cli.ferry(args);
    }

    // Waits (on the file system, bounded) until the partial file `p` holds what `at` bytes
    // on the wire carried in whole chunks.
    bool written(const fs::path& p, std::uint64_t at) {
        return wait_for_change(p.parent_path(), [&] { return allocated_bytes(p) + slack(at) >= at; }, 60s);
    }

    bool resume_record_written() {
        return wait_for_change(inbox, [&] { return fs::exists(inbox / ".big.bin.ferry-resume"); }, 30s);
    }

    // Starts the send through `proxy`, which stalls once `at` bytes passed it; returns once
    // they did and, given `partial`, once the receiver wrote them. Null (the test failed)
    // if that does not happen in time.
    std::unique_ptr<child_process> send_stalled_at(fault_proxy& proxy, std::uint64_t at,
                                                   std::vector<std::string> extra = {}, const fs::path& partial = {}) {
        proxy.at_up_bytes(at, [](fault_proxy& p) { p.stall(true); });
        auto tx = std::make_unique<child_process>(send_args(proxy.address(), std::move(extra)));
        if (!proxy.wait_up_bytes(at, 60s)) {
            ADD_FAILURE() << "the proxy never passed " << at << " bytes: " << tx->err();
            return nullptr;
        }
        if (!partial.empty() && !written(partial, at)) {
            ADD_FAILURE() << "the receiver wrote " << allocated_bytes(partial) << " bytes of the " << at << " that passed";
            return nullptr;
        }
        return tx;
    }

    // kill -9 of a sender held by the stalled proxy; the proxy then resets its links (it
    // would hold the sender's end open) and serve reports the transfer failed.
    void kill_sender(child_process& tx, fault_proxy& proxy, ferry_cli::receiver& sv) {
        tx.signal(SIGKILL);
        EXPECT_TRUE(tx.wait(process_timeout).has_value());
        proxy.cut_all();
        EXPECT_TRUE(sv.proc->wait_for_err("failed", process_timeout)) << sv.proc->err();
    }

    // A send through a proxy stalled half way, killed (kill_sender): the receiver keeps
    // the partial file and its resume record. False when no record was written.
    bool interrupted_half_way(ferry_cli::receiver& sv) {
        fault_proxy proxy(sv.address);
        auto tx = send_stalled_at(proxy, file_size / 2);
        if (!tx) {
            return false;
        }
        kill_sender(*tx, proxy, sv);
        return resume_record_written();
    }

    // The same send again, straight to `address`; checks it succeeded, that the file is
    // identical, and that it sent exactly the chunks the receiver lacked (and on the wire
    // little more). Returns the bytes the receiver kept.
    std::uint64_t resend_and_check(const std::string& address) {
        run_result r = send(address);
        EXPECT_EQ(r.code, 0) << r.err;
        EXPECT_EQ(compare_trees(src, inbox / "big.bin"), "");
        std::vector<json> ev = json_events(r.out);
        json done = find_event(ev, "done");
        EXPECT_TRUE(done.value("ok", false)) << r.out;
        std::uint64_t kept = done.value("resumed_bytes", std::uint64_t{0});
        std::uint64_t sent = done.value("payload_bytes", std::uint64_t{0});
        std::uint64_t wire = done.value("wire_bytes_sent", std::uint64_t{0});
        EXPECT_EQ(sent + kept, file_size) << done;
        // TLS records, frame headers and the handshake: well under 1% plus 64 KiB.
        EXPECT_LE(wire, sent + sent / 100 + 64 * 1024) << done;
        json resumed = find_event(ev, "resumed");
        EXPECT_EQ(resumed.value("bytes_kept", std::uint64_t{0}), kept) << r.out;
        return kept;
    }
};

// Kill -9 of the sender with the link stalled at `at` bytes: the receiver has everything
// that passed the proxy, and the next send sends only the rest.
class sender_killed : public resume, public ::testing::WithParamInterface<double> {};

TEST_P(sender_killed, resend_sends_only_what_is_missing) {
    auto sv = serve();
    fault_proxy proxy(sv.address);
    const std::uint64_t at = static_cast<std::uint64_t>(GetParam() * file_size);
    // Everything that passed is written (the receiver is alive): all but the chunks cut
    // short by the stall, one per connection at most.
    auto tx = send_stalled_at(proxy, at, {}, part);
    ASSERT_TRUE(tx);
    kill_sender(*tx, proxy, sv);

    std::uint64_t kept = resend_and_check(sv.address);
    EXPECT_GE(kept + slack(at), at);
    EXPECT_LE(kept, at);
}

INSTANTIATE_TEST_SUITE_P(at, sender_killed, ::testing::Values(0.2, 0.5, 0.9));

// Kill -9 of the receiver (`ferry serve`) once its partial file holds `at` bytes; a new
// serve on the same inbox, and the same send: only what the partial file lacks travels,
// though the last resume record may be older than the kill (the sender checks every chunk
// the receiver offers).
class receiver_killed : public resume, public ::testing::WithParamInterface<double> {};

TEST_P(receiver_killed, resend_to_a_new_serve_sends_only_what_is_missing) {
    std::uint64_t kept_before = 0;
    {
        auto sv = serve();
        fault_proxy proxy(sv.address);
        const std::uint64_t at = static_cast<std::uint64_t>(GetParam() * file_size);
        auto tx = send_stalled_at(proxy, at, {"--retry-for", "0"}, part);
        ASSERT_TRUE(tx);
        sv.proc->signal(SIGKILL);
        ASSERT_TRUE(sv.proc->wait(process_timeout).has_value());
        kept_before = allocated_bytes(part);
        proxy.cut_all();
        EXPECT_EQ(tx->wait(process_timeout), 2) << tx->err();
    }
    auto sv = serve();
    std::uint64_t kept = resend_and_check(sv.address);
    // Every whole chunk in the partial file counts (a chunk cut short does not).
    EXPECT_GE(kept + slack(kept_before), kept_before);
    EXPECT_NE(sv.proc->err().find("resuming with"), std::string::npos) << sv.proc->err();
}

INSTANTIATE_TEST_SUITE_P(at, receiver_killed, ::testing::Values(0.3, 0.7));

TEST_F(resume, damaged_partial_data_is_repaired_not_trusted) {
    // Interrupt at half, then damage one recorded chunk of the partial file: the resend
    // sends that chunk again and the result is identical.
    auto sv = serve();
    {
        fault_proxy proxy(sv.address);
        auto tx = send_stalled_at(proxy, file_size / 2, {}, part);
        ASSERT_TRUE(tx);
        kill_sender(*tx, proxy, sv);
    }
    ASSERT_TRUE(resume_record_written()) << "no resume record after the failed transfer";
    {
        // Flips bits of one byte in chunk 3, which the record lists.
        int fd = ::open(part.c_str(), O_RDWR);
        ASSERT_GE(fd, 0);
        unsigned char b = 0;
        ASSERT_EQ(::pread(fd, &b, 1, 3 * chunk + 100), 1);
        b ^= 0x5a;
        ASSERT_EQ(::pwrite(fd, &b, 1, 3 * chunk + 100), 1);
        ::close(fd);
    }
    std::uint64_t kept = resend_and_check(sv.address);
    EXPECT_LE(kept, file_size / 2);
    EXPECT_NE(sv.proc->err().find("damaged"), std::string::npos) << sv.proc->err();
}

TEST_F(resume, a_source_changed_whole_is_sent_whole) {
    // The receiver offers what the attempt wrote of the other version, and the sender,
    // whose digests differ for every chunk, sends every one.
    auto sv = serve();
    ASSERT_TRUE(interrupted_half_way(sv));
    write_random_file(src, file_size + 1, 78);  // another version of the file
    run_result r = send(sv.address);
    ASSERT_EQ(r.code, 0) << r.err;
    EXPECT_EQ(compare_trees(src, inbox / "big.bin"), "");
    json done = find_event(json_events(r.out), "done");
    EXPECT_EQ(done.value("resumed_bytes", 1), 0) << done;
    EXPECT_EQ(done.value("payload_bytes", std::uint64_t{0}), file_size + 1) << done;
    EXPECT_NE(sv.proc->err().find("the source changed since the interrupted attempt"), std::string::npos)
        << sv.proc->err();
}

TEST_F(resume, a_source_grown_at_its_end_since_keeps_what_the_attempt_wrote) {
    // A file still being written at SRC (a log, a dump): its size and mtime changed since
    // the attempt, its first chunks did not. Before, they were dropped and sent again.
    auto sv = serve();
    ASSERT_TRUE(interrupted_half_way(sv));
    {
        std::ofstream out(src, std::ios::binary | std::ios::app);
        out << std::string(300 * 1024, 'x');
    }
    const std::uint64_t grown = file_size + 300 * 1024;
    ASSERT_TRUE(set_mtime(src, 1'700'000'000));  // (a new mtime, whatever the clock's resolution)
    run_result r = send(sv.address);
    ASSERT_EQ(r.code, 0) << r.err;
    EXPECT_EQ(compare_trees(src, inbox / "big.bin"), "");
    json done = find_event(json_events(r.out), "done");
    const std::uint64_t kept = done.value("resumed_bytes", std::uint64_t{0});
    // What the attempt wrote (what passed the proxy, less what was still in flight when it
    // was killed: 6.0-6.3 MB of the 12 MB here), where it was 0.
    EXPECT_GT(kept, 0u) << done;
    EXPECT_EQ(done.value("payload_bytes", std::uint64_t{0}) + kept, grown) << done;
    EXPECT_NE(sv.proc->err().find("the source changed since the interrupted attempt"), std::string::npos)
        << sv.proc->err();
}

TEST_F(resume, one_cut_connection_is_replaced_and_the_transfer_goes_on) {
    auto sv = serve();
    fault_proxy proxy(sv.address);
    // Connection 2 in accept order is a data connection (0 is the control connection).
    // Each forwarded piece (up to 64 KiB) waits 4 ms (about 60 MB/s per connection), so
    // that the transfer outlasts the replacement's backoff and handshake.
    proxy.set_delay(4ms);
    proxy.at_up_bytes(file_size / 20, [](fault_proxy& p) { p.cut(2); });
    run_result r = send(proxy.address());
    ASSERT_EQ(r.code, 0) << r.err;
    EXPECT_EQ(compare_trees(src, inbox / "big.bin"), "");
    std::vector<json> ev = json_events(r.out);
    EXPECT_TRUE(find_event(ev, "reconnecting").is_null()) << "the session itself was restarted:\n" << r.out;
    EXPECT_NE(r.err.find("lost"), std::string::npos) << r.err;
    EXPECT_NE(r.err.find("is back and carrying data"), std::string::npos) << r.err;
    EXPECT_GE(proxy.accepted(), 5u);  // 4 and the replacement
    json done = find_event(ev, "done");
    EXPECT_EQ(done.value("payload_bytes", std::uint64_t{0}), file_size) << done;
}

TEST_F(resume, all_connections_cut_the_sender_reconnects_and_resumes) {
    auto sv = serve();
    fault_proxy proxy(sv.address);
    proxy.at_up_bytes(file_size / 2, [](fault_proxy& p) { p.cut_all(); });
    run_result r = send(proxy.address(), {"--retry-for", "60s"});
    ASSERT_EQ(r.code, 0) << r.err << sv.proc->err();
    EXPECT_EQ(compare_trees(src, inbox / "big.bin"), "");
    std::vector<json> ev = json_events(r.out);
    json again = find_event(ev, "reconnecting");
    ASSERT_FALSE(again.is_null()) << r.out;
    EXPECT_GE(again.value("attempt", 0), 1);
    json resumed = find_event(ev, "resumed");
    ASSERT_FALSE(resumed.is_null()) << r.out;
    EXPECT_GT(resumed.value("bytes_kept", std::uint64_t{0}), 0u);
    json done = find_event(ev, "done");
    // The last attempt sent what the receiver lacked, nothing it kept.
    EXPECT_EQ(done.value("payload_bytes", std::uint64_t{0}) + done.value("resumed_bytes", std::uint64_t{0}), file_size)
        << done;
}

TEST_F(resume, a_stalled_link_is_detected_and_the_transfer_resumes_when_it_flows_again) {
    // The link stops passing anything, with no reset: the sender takes its connections for
    // dead after --stall-timeout, reconnects once the link flows again, and resumes.
    auto sv = serve();
    fault_proxy proxy(sv.address);
    proxy.at_up_bytes(file_size / 3, [](fault_proxy& p) { p.stall(true); });
    child_process tx(send_args(proxy.address(), {"--stall-timeout", "1s", "--retry-for", "60s"}));
    ASSERT_TRUE(tx.wait_for_err("stalled", 60s)) << tx.err();
    proxy.stall(false);
    ASSERT_EQ(tx.wait(process_timeout), 0) << tx.err() << sv.proc->err();
    EXPECT_EQ(compare_trees(src, inbox / "big.bin"), "");
    json done = find_event(json_events(tx.out()), "done");
    EXPECT_EQ(done.value("payload_bytes", std::uint64_t{0}) + done.value("resumed_bytes", std::uint64_t{0}), file_size)
        << done;
}

TEST_F(resume, serve_restarted_mid_transfer_the_waiting_sender_resumes) {
    // kill -9 of serve while the sender keeps retrying; a new serve on the same address
    // and inbox: the sender reconnects by itself and sends only what is missing.
    auto sv = serve();
    fault_proxy proxy(sv.address);
    const std::uint64_t at = file_size / 2;
    auto tx = send_stalled_at(proxy, at, {"--retry-for", "2m"}, part);
    ASSERT_TRUE(tx);
    sv.proc->signal(SIGKILL);
    ASSERT_TRUE(sv.proc->wait(process_timeout).has_value());
    proxy.cut_all();
    proxy.stall(false);
    ASSERT_TRUE(tx->wait_for_err("reconnecting in", 60s)) << tx->err();
    auto sv2 = cli.start({"serve", "--state", cli.state("A").string(), "--listen", sv.address, "--json", "--inbox",
                          inbox.string()});
    ASSERT_EQ(tx->wait(process_timeout), 0) << tx->err() << sv2.proc->err();
    EXPECT_EQ(compare_trees(src, inbox / "big.bin"), "");
    std::vector<json> ev = json_events(tx->out());
    json done = find_event(ev, "done");
    EXPECT_GE(done.value("resumed_bytes", std::uint64_t{0}) + slack(at), at) << done;
    EXPECT_EQ(done.value("payload_bytes", std::uint64_t{0}) + done.value("resumed_bytes", std::uint64_t{0}), file_size);
    EXPECT_FALSE(find_event(ev, "resumed").is_null());
}

TEST_F(resume, retry_gives_up_after_retry_for) {
    // The receiver goes away for good: the sender tries again for --retry-for, then fails.
    auto sv = serve();
    fault_proxy proxy(sv.address);
    auto tx = send_stalled_at(proxy, file_size / 4, {"--retry-for", "1s"});
    ASSERT_TRUE(tx);
    sv.proc->signal(SIGKILL);
    ASSERT_TRUE(sv.proc->wait(process_timeout).has_value());
    proxy.cut_all();
    EXPECT_EQ(tx->wait(process_timeout), 2) << tx->err();
    EXPECT_NE(tx->err().find("--retry-for"), std::string::npos) << tx->err();
    EXPECT_NE(tx->err().find("reconnecting in"), std::string::npos) << tx->err();
}

TEST_F(resume, disk_full_mid_file_exits_4_and_the_resend_keeps_what_was_written) {
    // A 48 MiB tmpfs in a mount namespace of this test process (the ferry processes
    // inherit it). The transfer passes the space check, stalls at half, another writer
    // fills the disk, and the rest of the file meets ENOSPC.
    fs::path disk = cli.root() / "disk";
    if (std::string why = mount_private_tmpfs(disk, "size=48m"); !why.empty()) {
        GTEST_SKIP() << why;
    }
    auto receive = [&] {
        return cli.start({"receive", "--state", cli.state("A").string(), "--listen", "127.0.0.1:0", "--accept-from",
                          b_id, "--json", disk.string()});
    };
    fs::path disk_part = disk / ".big.bin.ferry-part";
    const std::uint64_t at = file_size / 2;
    {
        auto rx = receive();
        fault_proxy proxy(rx.address);
        auto tx = send_stalled_at(proxy, at, {"--retry-for", "0"}, disk_part);
        ASSERT_TRUE(tx);
        {
            // The other writer: takes what is left, but for 64 KiB.
            struct statvfs vfs {};
            ASSERT_EQ(::statvfs(disk.c_str(), &vfs), 0);
            std::uint64_t left = std::uint64_t{vfs.f_bavail} * vfs.f_frsize;
            ASSERT_GT(left, 64u * 1024);
            write_random_file(disk / "filler", left - 64 * 1024, 5);
        }
        proxy.stall(false);
        EXPECT_EQ(rx.proc->wait(process_timeout), 4) << rx.proc->err();
        EXPECT_NE(rx.proc->err().find("No space left on device"), std::string::npos) << rx.proc->err();
        EXPECT_EQ(tx->wait(process_timeout), 2) << tx->err();
        EXPECT_FALSE(fs::exists(disk / "big.bin"));  // never a partial file under its final name
    }
    fs::remove(disk / "filler");
    auto rx = receive();
    run_result r = send(rx.address);
    ASSERT_EQ(r.code, 0) << r.err << rx.proc->err();
    EXPECT_EQ(rx.proc->wait(process_timeout), 0) << rx.proc->err();
    EXPECT_EQ(compare_trees(src, disk / "big.bin"), "");
    json done = find_event(json_events(r.out), "done");
    EXPECT_GE(done.value("resumed_bytes", std::uint64_t{0}) + slack(at), at) << done;
    EXPECT_EQ(done.value("payload_bytes", std::uint64_t{0}) + done.value("resumed_bytes", std::uint64_t{0}), file_size);
    ::umount2(disk.c_str(), MNT_DETACH);
}

TEST_F(resume, serve_removes_abandoned_partial_files_at_start) {
    auto age = [](const fs::path& p, int days) {
        struct timespec t[2] = {{0, UTIME_OMIT}, {::time(nullptr) - days * 86400L, 0}};
        ASSERT_EQ(::utimensat(AT_FDCWD, p.c_str(), t, AT_SYMLINK_NOFOLLOW), 0) << p;
    };
    write_text_file(inbox / "a/.old.bin.ferry-part", std::string(1000, 'x'));
    write_text_file(inbox / "a/.old.bin.ferry-resume", "record");
    write_text_file(inbox / ".ferry-0123456789abcdef.part", "hashed long name");
    write_text_file(inbox / "a/.recent.bin.ferry-part", "still wanted");
    write_text_file(inbox / "a/old.bin", "a file of the user's, not a partial one");
    write_text_file(inbox / "a/.notes.ferry-part.txt", "nor this");
    for (const char* p : {"a/.old.bin.ferry-part", "a/.old.bin.ferry-resume", ".ferry-0123456789abcdef.part",
                          "a/old.bin", "a/.notes.ferry-part.txt"}) {
        age(inbox / p, 10);
    }
    age(inbox / "a/.recent.bin.ferry-part", 6);
    auto sv = serve();
    auto err = sv.proc->wait_for_err("abandoned partial file", process_timeout);
    ASSERT_TRUE(err) << sv.proc->err();
    EXPECT_NE(err->find("removed 3 abandoned partial file(s) (1022 bytes) not written for 7 day(s)"), std::string::npos)
        << *err;
    EXPECT_FALSE(fs::exists(inbox / "a/.old.bin.ferry-part"));
    EXPECT_FALSE(fs::exists(inbox / "a/.old.bin.ferry-resume"));
    EXPECT_FALSE(fs::exists(inbox / ".ferry-0123456789abcdef.part"));
    EXPECT_TRUE(fs::exists(inbox / "a/.recent.bin.ferry-part"));
    EXPECT_TRUE(fs::exists(inbox / "a/old.bin"));
    EXPECT_TRUE(fs::exists(inbox / "a/.notes.ferry-part.txt"));
}

TEST_F(resume, sigterm_stops_serve_at_once_and_keeps_a_resume_record) {
    auto sv = serve();
    fault_proxy proxy(sv.address);
    const std::uint64_t at = file_size / 2;
    auto tx = send_stalled_at(proxy, at, {"--retry-for", "0"}, part);
    ASSERT_TRUE(tx);
    sv.proc->signal(SIGTERM);
    EXPECT_EQ(sv.proc->wait(10s), 0) << sv.proc->err();
    EXPECT_TRUE(fs::exists(inbox / ".big.bin.ferry-resume"));
    proxy.cut_all();
    tx->wait(process_timeout);

    auto sv2 = serve();
    std::uint64_t kept = resend_and_check(sv2.address);
    EXPECT_GE(kept + slack(at), at);
}

}  // namespace
