// End-to-end: the real ferry binary, two nodes on loopback, real TLS 1.3.
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <csignal>
#include <fstream>
#include <nlohmann/json.hpp>

#include "tests/support/fault_proxy.hpp"
#include "tests/support/ferry_cli.hpp"
#include "tests/support/pattern.hpp"
#include "tests/support/tree.hpp"

namespace fs = std::filesystem;
using namespace ferry::test;
using namespace std::chrono_literals;

namespace {

void set_mtime(const fs::path& p, std::int64_t sec, long nsec) {
    struct timespec t[2] = {{0, UTIME_OMIT}, {sec, nsec}};
    ASSERT_EQ(::utimensat(AT_FDCWD, p.c_str(), t, AT_SYMLINK_NOFOLLOW), 0) << p;
}

// The tree the foundation issue names: empty file, empty dir, 1 byte, exactly 256 KiB,
// 256 KiB + 1, 20 MiB random, unicode names, nested folders, modes and mtimes.
fs::path make_reference_tree(const fs::path& base) {
    fs::path src = base / "tree";
    write_text_file(src / "empty.txt", "");
    fs::create_directories(src / "empty-dir");
    write_text_file(src / "one.byte", "x");
    write_random_file(src / "exact-256k.bin", 256 * 1024, 1);
    write_random_file(src / "256k-plus-1.bin", 256 * 1024 + 1, 2);
    write_random_file(src / "nested/deeper/random-20m.bin", 20 * 1024 * 1024, 3);
    write_text_file(src / "données/ñandú ☃.txt", "unicode\n");
    write_text_file(src / "日本語/ファイル.txt", "nihongo\n");
    write_text_file(src / "nested/script.sh", "#!/bin/sh\necho hi\n");
    ::chmod((src / "nested/script.sh").c_str(), 0755);
    write_text_file(src / "private.key", "secret\n");
    ::chmod((src / "private.key").c_str(), 0600);
    set_mtime(src / "one.byte", 1'000'000'000, 123'456'789);
    ::chmod((src / "empty.txt").c_str(), 0640);  // an empty file is made with no name, then set
    set_mtime(src / "empty.txt", 1'200'000'000, 7);
    set_mtime(src / "nested/deeper/random-20m.bin", 1'500'000'000, 1);
    set_mtime(src / "empty-dir", 1'600'000'000, 42);
    set_mtime(src / "nested/deeper", 1'650'000'000, 0);
    return src;
}

class cli_transfer : public ::testing::Test {
protected:
    ferry_cli cli;
    std::string a_id = cli.id("A");
    std::string b_id = cli.id("B");

    ferry_cli::receiver start_receiver(const fs::path& dest, std::vector<std::string> extra = {},
                                       const std::vector<std::string>& env = {},
                                       const std::vector<std::string>& launcher = {}) {
        std::vector<std::string> args{"receive", "--state", cli.state("A").string(), "--listen", "127.0.0.1:0",
                                      "--accept-from", b_id, "--json"};
        args.insert(args.end(), extra.begin(), extra.end());
        args.push_back(dest.string());
        return cli.start(args, env, launcher);
    }

    // The serving node `node` (state A) counted no refusal of any kind; then it stops on
    // SIGTERM, exits 0 and has logged no "refused" line.
    void expect_no_refusals_then_stop(ferry_cli::receiver& node) {
        run_result status = cli.ferry({"status", "--state", cli.state("A").string(), "--json"});
        ASSERT_EQ(status.code, 0) << status.err;
        nlohmann::json st = nlohmann::json::parse(status.out, nullptr, false);
        ASSERT_FALSE(st.is_discarded()) << status.out;
        ASSERT_TRUE(st["refusals"].is_object()) << status.out;
        for (const auto& [reason, count] : st["refusals"].items()) {
            EXPECT_EQ(count, 0u) << reason;
        }
        node.proc->signal(SIGTERM);
        EXPECT_EQ(node.proc->wait(10s), 0) << node.proc->err();
        EXPECT_EQ(node.proc->err().find("refused"), std::string::npos) << node.proc->err();
    }

    run_result send(const std::vector<std::string>& paths, const std::string& target,
                    std::vector<std::string> extra = {}, const std::string& who = "B") {
        std::vector<std::string> args{"send", "--state", cli.state(who).string(), "--json"};
        args.insert(args.end(), extra.begin(), extra.end());
        args.insert(args.end(), paths.begin(), paths.end());
        args.push_back(target);
        return cli.ferry(args);
    }
};

nlohmann::json last_json_line(const std::string& out) {
    std::string last;
    std::size_t start = 0;
    while (start < out.size()) {
        std::size_t nl = out.find('\n', start);
        std::string line = out.substr(start, nl == std::string::npos ? std::string::npos : nl - start);
        if (!line.empty()) {
            last = line;
        }
        if (nl == std::string::npos) {
            break;
        }
        start = nl + 1;
    }
    return nlohmann::json::parse(last, nullptr, false);
}

std::int64_t mtime_ns_of(const fs::path& p) {
    struct stat st {};
    EXPECT_EQ(::stat(p.c_str(), &st), 0) << p;
    return std::int64_t{st.st_mtim.tv_sec} * 1'000'000'000 + st.st_mtim.tv_nsec;
}

// True when no transfer left an unsynced journal in state folder `state`.
bool no_journals(const fs::path& state) {
    fs::path dir = state / "unsynced";
    if (!fs::exists(dir)) {
        return true;
    }
    for (const auto& de : fs::directory_iterator(dir)) {
        if (de.path().extension() == ".journal") {
            return false;
        }
    }
    return true;
}

std::size_t regular_files_in(const fs::path& dir) {
    std::size_t n = 0;
    for (const auto& de : fs::recursive_directory_iterator(dir)) {
        n += de.is_regular_file() ? 1 : 0;
    }
    return n;
}

}  // namespace

TEST_F(cli_transfer, reference_tree_arrives_byte_identical_with_modes_and_mtimes) {
    fs::path src = make_reference_tree(cli.root());
    fs::path dest = cli.root() / "inbox";
    auto rx = start_receiver(dest);
    ASSERT_FALSE(rx.address.empty());
    EXPECT_EQ(rx.id, a_id);

    run_result s = send({src.string()}, a_id + "@" + rx.address);
    ASSERT_EQ(s.code, 0) << s.err;
    auto code = rx.proc->wait(process_timeout);
    ASSERT_TRUE(code.has_value());
    EXPECT_EQ(*code, 0) << rx.proc->err();
    EXPECT_EQ(compare_trees(src, dest / "tree"), "");

    nlohmann::json done = last_json_line(s.out);
    ASSERT_FALSE(done.is_discarded()) << s.out;
    EXPECT_EQ(done["event"], "done");
    std::uint64_t total = 1 + 256 * 1024 + 256 * 1024 + 1 + 20 * 1024 * 1024 + 8 + 8 + 18 + 7;
    EXPECT_EQ(done["payload_bytes"].get<std::uint64_t>(), total);
    EXPECT_EQ(done["connections"].get<int>(), 4);
    EXPECT_GT(done["wire_bytes_sent"].get<std::uint64_t>(), total);  // TLS records and framing on top
    // No partial file is left anywhere.
    for (const auto& e : fs::recursive_directory_iterator(dest)) {
        EXPECT_EQ(e.path().filename().string().find(".ferry-part"), std::string::npos) << e.path();
    }
}

TEST_F(cli_transfer, one_and_sixteen_connections_both_work) {
    fs::path src = cli.root() / "set";
    write_random_file(src / "a.bin", 3 * 1024 * 1024 + 17, 7);
    for (int i = 0; i < 40; ++i) {
        write_random_file(src / "small" / ("f" + std::to_string(i)), static_cast<std::uint64_t>(i) * 977, 100 + i);
    }
    for (int n : {1, 16}) {
        fs::path dest = cli.root() / ("inbox-" + std::to_string(n));
        auto rx = start_receiver(dest);
        ASSERT_FALSE(rx.address.empty());
        run_result s = send({src.string()}, a_id + "@" + rx.address, {"--connections", std::to_string(n)});
        ASSERT_EQ(s.code, 0) << "connections " << n << ": " << s.err;
        EXPECT_EQ(rx.proc->wait(process_timeout), 0) << rx.proc->err();
        EXPECT_EQ(compare_trees(src, dest / "set"), "") << "connections " << n;
        nlohmann::json done = last_json_line(s.out);
        EXPECT_LE(done["connections"].get<int>(), n);
        EXPECT_GE(done["connections"].get<int>(), 1);
    }
}

TEST_F(cli_transfer, without_connections_a_send_opens_more_only_when_the_round_trip_calls_for_them) {
    // 12 MiB: 48 chunks, enough to reach every connection that is open.
    fs::path src = cli.root() / "data.bin";
    write_random_file(src, 12 * 1024 * 1024, 21);
    struct run {
        std::vector<std::string> flags;
        std::string widen_rtt_us;  // the round trip that calls for more connections
        int connections;           // 1: one carried data; 4: more than one did (how many of
                                   // the four reach data before the end is timing)
    };
    for (const run& r : {run{{}, "60000000", 1},                   // a path that never calls for them
                         run{{"--connections", "4"}, "60000000", 4},  // asked for: all at once
                         run{{}, "0", 4}}) {                       // any round trip calls for them
        std::string what = (r.flags.empty() ? "no --connections" : "--connections 4") + std::string(", ") +
                           r.widen_rtt_us + " us";
        fs::path dest = cli.root() / ("inbox-" + std::to_string(r.connections) + "-" + r.widen_rtt_us);
        auto rx = start_receiver(dest);
        ASSERT_FALSE(rx.address.empty());
        std::vector<std::string> args{"send", "--state", cli.state("B").string(), "--json"};
        args.insert(args.end(), r.flags.begin(), r.flags.end());
        args.push_back(src.string());
        args.push_back(a_id + "@" + rx.address);
        run_result s = cli.ferry(args, {"FERRY_WIDEN_RTT_US=" + r.widen_rtt_us});
        ASSERT_EQ(s.code, 0) << what << ": " << s.err;
        ASSERT_EQ(rx.proc->wait(process_timeout), 0) << rx.proc->err();
        EXPECT_EQ(compare_trees(src, dest / "data.bin"), "") << what;
        for (const std::string& out : {s.out, rx.proc->out()}) {
            int used = last_json_line(out)["connections"];
            if (r.connections == 1) {
                EXPECT_EQ(used, 1) << what << ": " << out;
            } else {
                EXPECT_GT(used, 1) << what << ": " << out;
                EXPECT_LE(used, r.connections) << what << ": " << out;
            }
        }
    }
}

TEST_F(cli_transfer, compressed_chunks_arrive_identical_and_are_counted) {
    fs::path src = cli.root() / "compressible";
    std::string text;
    for (int i = 0; text.size() < 3 * 1024 * 1024 + 100; ++i) {
        text += "line " + std::to_string(i % 977) + " of a log that repeats itself\n";
    }
    write_text_file(src / "log.txt", text);                           // several chunks
    write_text_file(src / "small.txt", text.substr(0, 5000));          // one chunk
    write_random_file(src / "random.bin", 600 * 1024, 9);             // does not shrink
    for (const char* mode : {"always", "auto", "never"}) {
        fs::path dest = cli.root() / (std::string("inbox-") + mode);
        auto rx = start_receiver(dest);
        ASSERT_FALSE(rx.address.empty());
        run_result s = send({src.string()}, a_id + "@" + rx.address, {"--compress", mode});
        ASSERT_EQ(s.code, 0) << mode << ": " << s.err;
        EXPECT_EQ(rx.proc->wait(process_timeout), 0) << rx.proc->err();
        EXPECT_EQ(compare_trees(src, dest / "compressible"), "") << mode;
        nlohmann::json done = last_json_line(s.out);
        nlohmann::json rdone = last_json_line(rx.proc->out());
        std::uint64_t saved = done["compression_saved_bytes"].get<std::uint64_t>();
        std::uint64_t payload = done["payload_bytes"].get<std::uint64_t>();
        EXPECT_EQ(payload, text.size() + 5000 + 600 * 1024) << mode;
        EXPECT_EQ(rdone["compression_saved_bytes"].get<std::uint64_t>(), saved) << mode;
        if (std::string(mode) == "always") {
            // The text shrinks (tens of times), the random file does not.
            EXPECT_GT(saved, (text.size() + 5000) * 9 / 10) << mode;
            EXPECT_LT(done["wire_bytes_sent"].get<std::uint64_t>(), payload - saved + payload / 10) << mode;
        } else if (std::string(mode) == "never") {
            EXPECT_EQ(saved, 0u);
            EXPECT_GT(done["wire_bytes_sent"].get<std::uint64_t>(), payload);
        }
    }
    run_result bad = send({src.string()}, a_id + "@127.0.0.1:9", {"--compress", "zip"});
    EXPECT_EQ(bad.code, 1);
    EXPECT_NE(bad.err.find("--compress"), std::string::npos) << bad.err;
}

// `--compress auto` compresses ordinary text only where the link is the limit. Over
// loopback it is not (the text goes raw, but for the first chunk and probes); through a
// slow link (the fault proxy forwarding 64 KiB every 40 ms: the sender's socket pushes
// back) and under --bwlimit it is, and the same text is compressed.
TEST_F(cli_transfer, auto_compresses_text_where_the_link_is_the_limit) {
    fs::path src = cli.root() / "words";
    std::string text = ferry::test::pattern_words(6 * 1024 * 1024, 7);
    write_text_file(src / "words.txt", text);
    enum { loopback, slow_link, bwlimit };
    std::uint64_t saved_at[3] = {};
    for (int how : {loopback, slow_link, bwlimit}) {
        fs::path dest = cli.root() / ("inbox-" + std::to_string(how));
        auto rx = start_receiver(dest);
        ASSERT_FALSE(rx.address.empty());
        std::string address = rx.address;
        std::unique_ptr<ferry::test::fault_proxy> proxy;
        if (how == slow_link) {
            proxy = std::make_unique<ferry::test::fault_proxy>(rx.address);
            proxy->set_delay(std::chrono::milliseconds(40));
            address = proxy->address();
        }
        std::vector<std::string> flags = {"--compress", "auto", "--connections", "1"};
        if (how == bwlimit) {
            flags.insert(flags.end(), {"--bwlimit", "2M"});
        }
        run_result s = send({src.string()}, a_id + "@" + address, flags);
        ASSERT_EQ(s.code, 0) << s.err;
        EXPECT_EQ(rx.proc->wait(process_timeout), 0) << rx.proc->err();
        EXPECT_EQ(compare_trees(src, dest / "words"), "");
        saved_at[how] = last_json_line(s.out)["compression_saved_bytes"].get<std::uint64_t>();
    }
    // zstd -1 shrinks this text 2.3x: where it is compressed, most of it is.
    EXPECT_LT(saved_at[loopback], text.size() / 5);  // raw but for a few chunks
    EXPECT_GT(saved_at[slow_link], text.size() / 5) << "loopback " << saved_at[loopback];
    EXPECT_GT(saved_at[bwlimit], text.size() / 4) << "loopback " << saved_at[loopback];
}

TEST_F(cli_transfer, progress_events_name_the_peer_from_the_first) {
    // A session reports progress from its start, before its peer's Hello names the peer:
    // a handshake slowed by a proxy (0.3 s a piece) gave `progress` events with an empty
    // `peer` and `address` (seen on a sync's second pass).
    fs::path src = cli.root() / "slow.bin";
    write_random_file(src, 64 * 1024, 23);
    auto rx = start_receiver(cli.root() / "inbox");
    ASSERT_FALSE(rx.address.empty());
    ferry::test::fault_proxy proxy(rx.address);
    proxy.set_delay(std::chrono::milliseconds(300));
    run_result s = send({src.string()}, a_id + "@" + proxy.address(), {"--connections", "1"});
    ASSERT_EQ(s.code, 0) << s.err;
    std::size_t progress = 0;
    for (const nlohmann::json& e : json_events(s.out)) {
        if (e["event"] == "progress") {
            ++progress;
            EXPECT_EQ(e["peer"], a_id) << e;
            EXPECT_FALSE(e["address"].get<std::string>().empty()) << e;
        }
    }
    EXPECT_GE(progress, 1u) << s.out;  // the last one at least, right before done
    EXPECT_EQ(rx.proc->wait(process_timeout), 0) << rx.proc->err();
}

TEST_F(cli_transfer, the_quiet_between_chunks_under_bwlimit_is_no_stall) {
    // Under --bwlimit a connection waits with nothing in flight between chunks; the stall
    // clock counts from when a chunk went out, not from the last answer before that wait
    // (a healthy link was closed as stalled and the session reconnected). A chunk and its
    // ack take about 0.25 s through the proxy here; chunks go out 2 s apart; the stall
    // timeout is 0.7 s.
    fs::path src = cli.root() / "paced";
    write_random_file(src / "paced.bin", 3 * 256 * 1024 + 5, 17);
    fs::path dest = cli.root() / "inbox";
    auto rx = start_receiver(dest);
    ASSERT_FALSE(rx.address.empty());
    ferry::test::fault_proxy proxy(rx.address);
    proxy.set_delay(std::chrono::milliseconds(40));
    run_result s = send({src.string()}, a_id + "@" + proxy.address(),
                        {"--connections", "1", "--compress", "never", "--bwlimit", "128K", "--stall-timeout", "700ms"});
    ASSERT_EQ(s.code, 0) << s.err;
    EXPECT_EQ(s.err.find("stalled"), std::string::npos) << s.err;
    EXPECT_EQ(proxy.accepted(), 1u) << s.err;  // no connection replaced
    // And the limit holds but for the chunk that may go at once: 4 chunks' data in no
    // less than 3 chunks' time (a chunk more went at once: 1.5x the limit).
    nlohmann::json done = last_json_line(s.out);
    double rate = done["payload_bytes"].get<double>() / done["elapsed_s"].get<double>();
    EXPECT_LT(rate, 128 * 1024 * 4.0 / 3 * 1.01) << done;
    EXPECT_EQ(rx.proc->wait(process_timeout), 0) << rx.proc->err();
    EXPECT_EQ(compare_trees(src, dest / "paced"), "");
}

TEST_F(cli_transfer, many_small_files_and_single_file_sources) {
    fs::path src = cli.root() / "many";
    for (int i = 0; i < 2000; ++i) {
        write_random_file(src / ("d" + std::to_string(i % 10)) / ("f" + std::to_string(i)), 4096, 1000 + i);
    }
    fs::path single = cli.root() / "single.bin";
    write_random_file(single, 123457, 9);
    // Small files are read in io_uring batches where it is there (node/batch_reads.hpp),
    // and with plain system calls where not: both ways.
    for (std::string uring : {"1", "0"}) {
        fs::path dest = cli.root() / ("inbox-" + uring);
        auto rx = start_receiver(dest);
        std::vector<std::string> args{"send", "--state", cli.state("B").string(), "--json", src.string(),
                                      single.string(), a_id + "@" + rx.address};
        run_result s = cli.ferry(args, {"FERRY_IO_URING=" + uring});
        ASSERT_EQ(s.code, 0) << s.err;
        EXPECT_EQ(rx.proc->wait(process_timeout), 0) << rx.proc->err();
        EXPECT_EQ(compare_trees(src, dest / "many"), "") << "FERRY_IO_URING=" << uring;
        EXPECT_EQ(compare_trees(single, dest / "single.bin"), "") << "FERRY_IO_URING=" << uring;
    }
    // The summary of one file says "1 file" (it said "1 files").
    auto rx = start_receiver(cli.root() / "inbox-one");
    run_result one = cli.ferry({"send", "--state", cli.state("B").string(), single.string(), a_id + "@" + rx.address});
    ASSERT_EQ(one.code, 0) << one.err;
    EXPECT_EQ(rx.proc->wait(process_timeout), 0) << rx.proc->err();
    EXPECT_NE(one.err.find("sent 1 file, 0 folders, "), std::string::npos) << one.err;
}

TEST_F(cli_transfer, untrusted_sender_is_refused_and_nothing_is_written) {
    std::string c_id = cli.id("C");
    fs::path src = cli.root() / "x";
    write_text_file(src / "f.txt", "data");
    fs::path dest = cli.root() / "inbox";
    auto rx = start_receiver(dest);
    run_result s = send({src.string()}, a_id + "@" + rx.address, {}, "C");
    EXPECT_EQ(s.code, 3) << s.err;
    EXPECT_NE(s.err.find("not trusted"), std::string::npos) << s.err;
    EXPECT_NE(s.err.find(c_id), std::string::npos) << s.err;
    nlohmann::json err = last_json_line(s.out);
    EXPECT_EQ(err["event"], "error");
    EXPECT_EQ(err["exit_code"], 3);
    // The receiver keeps waiting for its real sender, which still gets through.
    EXPECT_FALSE(fs::exists(dest / "x"));
    run_result ok = send({src.string()}, a_id + "@" + rx.address);
    EXPECT_EQ(ok.code, 0) << ok.err;
    EXPECT_EQ(rx.proc->wait(process_timeout), 0);
    EXPECT_EQ(compare_trees(src, dest / "x"), "");
}

TEST_F(cli_transfer, receiver_id_mismatch_is_refused) {
    std::string c_id = cli.id("C");
    fs::path src = cli.root() / "x";
    write_text_file(src / "f.txt", "data");
    fs::path dest = cli.root() / "inbox";
    auto rx = start_receiver(dest);
    run_result s = send({src.string()}, c_id + "@" + rx.address);
    EXPECT_EQ(s.code, 3) << s.err;
    EXPECT_NE(s.err.find(c_id), std::string::npos) << s.err;
    EXPECT_FALSE(fs::exists(dest / "x"));
    // Stopped before any transfer: exit 2, said on stderr and as an `error` event (it
    // exited 2 with neither).
    rx.proc->signal(SIGINT);
    EXPECT_EQ(rx.proc->wait(process_timeout), 2);
    EXPECT_NE(rx.proc->err().find("error: stopped (SIGINT) before a transfer ended"), std::string::npos)
        << rx.proc->err();
    nlohmann::json err = find_event(json_events(rx.proc->out()), "error");
    EXPECT_EQ(err["exit_code"], 2) << rx.proc->out();
}

TEST_F(cli_transfer, existing_file_is_not_overwritten_unless_asked) {
    fs::path src = cli.root() / "x";
    write_text_file(src / "f.txt", "new contents");
    fs::path dest = cli.root() / "inbox";
    write_text_file(dest / "x" / "f.txt", "old");
    {
        auto rx = start_receiver(dest);
        run_result s = send({src.string()}, a_id + "@" + rx.address);
        EXPECT_EQ(s.code, 2) << s.err;
        EXPECT_NE(s.err.find("exists"), std::string::npos) << s.err;
        EXPECT_EQ(rx.proc->wait(process_timeout), 2);
        EXPECT_EQ(read_text_file(dest / "x" / "f.txt"), "old");
    }
    auto rx = start_receiver(dest, {"--overwrite"});
    run_result s = send({src.string()}, a_id + "@" + rx.address);
    EXPECT_EQ(s.code, 0) << s.err;
    EXPECT_EQ(rx.proc->wait(process_timeout), 0);
    EXPECT_EQ(compare_trees(src, dest / "x"), "");
}

// A small file's partial file is created with the file's final mode, so an attempt that
// failed mid-write can leave a read-only one behind; the next attempt replaces it. Only a
// receiver that is not root meets that permission check: the test runs it as nobody.
TEST_F(cli_transfer, read_only_partial_left_by_an_earlier_attempt_is_replaced) {
    if (::geteuid() != 0 || !fs::exists("/usr/bin/setpriv")) {
        GTEST_SKIP() << "needs root and setpriv, to run a receiver as nobody";
    }
    constexpr uid_t nobody = 65534;
    constexpr gid_t nogroup = 65534;
    const fs::perms read_only = fs::perms::owner_read | fs::perms::group_read | fs::perms::others_read;
    fs::path src = cli.root() / "r";
    write_text_file(src / "f", "read-only contents");
    fs::permissions(src / "f", read_only);
    fs::path dest = cli.root() / "inbox";
    // Everything the receiver uses belongs to nobody, its binary too (the build folder
    // may not be reachable for it).
    fs::path bin = cli.root() / "ferry-as-nobody";
    fs::copy_file(FERRY_BINARY, bin);
    fs::permissions(bin, fs::perms::owner_all | fs::perms::group_read | fs::perms::group_exec |
                             fs::perms::others_read | fs::perms::others_exec);
    fs::permissions(cli.root(), fs::perms::others_exec | fs::perms::group_exec, fs::perm_options::add);
    // A new file written whole is made with no name and linked, by its descriptor or (as
    // on a kernel before 6.10, forced here) by its /proc/self/fd link, and the partial
    // file left is removed then; where neither can be (forced) it is written under the
    // partial name, which is replaced.
    for (std::string no_unnamed : {"", "fd", "all"}) {
        SCOPED_TRACE("FERRY_FAULT_NO_UNNAMED=" + no_unnamed);
        fs::remove(dest / "r" / "f");
        write_text_file(dest / "r" / ".f.ferry-part", "left by an earlier attempt, longer than the file");
        fs::permissions(dest / "r" / ".f.ferry-part", read_only);
        for (const fs::path& top : {cli.state("A"), dest}) {
            ASSERT_EQ(::lchown(top.c_str(), nobody, nogroup), 0) << top;
            for (const auto& de : fs::recursive_directory_iterator(top)) {
                ASSERT_EQ(::lchown(de.path().c_str(), nobody, nogroup), 0) << de.path();
            }
        }
        std::vector<std::string> env;
        if (!no_unnamed.empty()) {
            env.push_back("FERRY_FAULT_NO_UNNAMED=" + no_unnamed);
        }
        auto rx = start_receiver(dest, {}, env,
                                 {"/usr/bin/setpriv", "--reuid=" + std::to_string(nobody),
                                  "--regid=" + std::to_string(nogroup), "--clear-groups", bin.string()});
        ASSERT_FALSE(rx.address.empty());
        run_result s = send({src.string()}, a_id + "@" + rx.address);
        EXPECT_EQ(s.code, 0) << s.err;
        EXPECT_EQ(rx.proc->wait(process_timeout), 0) << rx.proc->err();
        EXPECT_EQ(read_text_file(dest / "r" / "f"), "read-only contents");
        EXPECT_EQ(fs::status(dest / "r" / "f").permissions(), read_only);
        EXPECT_FALSE(fs::exists(dest / "r" / ".f.ferry-part"));
    }
}

// A file that changes while it is read gets one more attempt. A one-shot receiver has
// ended by then: the sender says the peer is gone and reports the file as not sent at
// once, rather than retrying for all of --retry-for.
TEST_F(cli_transfer, a_second_pass_that_finds_a_one_shot_receiver_gone_ends_at_once) {
    fs::path src = cli.root() / "x";
    write_random_file(src / "big.bin", 3 * 256 * 1024, 7);
    write_text_file(src / "a.txt", "a\n");
    fs::path dest = cli.root() / "inbox";
    auto rx = start_receiver(dest);
    ASSERT_FALSE(rx.address.empty());
    run_result s = cli.ferry({"send", "--state", cli.state("B").string(), "--json", "--retry-for", "10m",
                              (src / "big.bin").string(), (src / "a.txt").string(), a_id + "@" + rx.address},
                             {"FERRY_FAULT_AFTER_SCAN=grow:big.bin"});
    EXPECT_EQ(s.code, 5) << s.err;
    EXPECT_NE(s.err.find("scanning and sending once more"), std::string::npos) << s.err;
    EXPECT_NE(s.err.find("the peer is gone"), std::string::npos) << s.err;
    EXPECT_NE(s.err.find("not sent: big.bin: "), std::string::npos) << s.err;
    EXPECT_TRUE(rx.proc->wait(process_timeout).has_value());
    EXPECT_EQ(read_text_file(dest / "a.txt"), "a\n");
    EXPECT_FALSE(fs::exists(dest / "big.bin"));
}

TEST_F(cli_transfer, plaintext_on_both_sides_works_and_mismatch_fails_clearly) {
    fs::path src = cli.root() / "x";
    write_random_file(src / "f.bin", 1'000'000, 5);
    fs::path dest = cli.root() / "inbox";
    {
        auto rx = start_receiver(dest, {"--plaintext"});
        run_result s = send({src.string()}, rx.address);
        EXPECT_EQ(s.code, 2) << s.err;
        EXPECT_NE(s.err.find("plaintext"), std::string::npos) << s.err;
        rx.proc->signal(SIGTERM);
        rx.proc->wait(process_timeout);
    }
    {
        // The other way: a TLS receiver closes on the first plaintext frame, and the
        // sender says what may be wrong.
        auto rx = start_receiver(dest);
        run_result s = send({src.string()}, rx.address, {"--plaintext", "--retry-for", "0"});
        EXPECT_EQ(s.code, 2) << s.err;
        EXPECT_NE(s.err.find("--plaintext"), std::string::npos) << s.err;
        rx.proc->signal(SIGTERM);
        rx.proc->wait(process_timeout);
    }
    auto rx = start_receiver(dest, {"--plaintext"});
    run_result s = send({src.string()}, rx.address, {"--plaintext"});
    EXPECT_EQ(s.code, 0) << s.err;
    EXPECT_EQ(rx.proc->wait(process_timeout), 0);
    EXPECT_EQ(compare_trees(src, dest / "x"), "");
}

TEST_F(cli_transfer, a_receive_stopped_in_a_transfer_exits_with_the_transfers_code_not_0) {
    // SIGTERM while a file comes: the transfer fails ("receiver stopped"), the partial file
    // stays, and the exit code says so (it was 0, as if the transfer had succeeded).
    fs::path src = cli.root() / "x";
    write_random_file(src / "big.bin", 8 * 1024 * 1024, 3);
    fs::path dest = cli.root() / "inbox";
    auto rx = start_receiver(dest);
    child_process sender({FERRY_BINARY, "send", "--state", cli.state("B").string(), "--bwlimit", "2M", "--retry-for",
                          "0", src.string(), a_id + "@" + rx.address});
    ASSERT_TRUE(wait_for_event(*rx.proc, "file_start", 30s)) << "the receiver stopped: " << rx.proc->err();
    rx.proc->signal(SIGTERM);
    EXPECT_EQ(rx.proc->wait(process_timeout), 2) << rx.proc->err();
    EXPECT_NE(sender.wait(process_timeout), 0);
    EXPECT_FALSE(fs::exists(dest / "x/big.bin"));
    EXPECT_TRUE(fs::exists(dest / "x/.big.bin.ferry-part"));
}

TEST_F(cli_transfer, a_receive_refuses_a_second_transfer_while_it_has_one) {
    // `ferry receive` takes one transfer: a second sender was taken too, and when its
    // small transfer ended first the receiver exited 0 and cut the first one off.
    fs::path src = cli.root() / "x";
    write_random_file(src / "big.bin", 3 * 1024 * 1024, 6);
    fs::path other = cli.root() / "y";
    write_text_file(other / "small.txt", "small\n");
    fs::path dest = cli.root() / "inbox";
    auto rx = start_receiver(dest);
    ferry::test::fault_proxy proxy(rx.address);  // holds the first transfer while the second comes
    child_process first({FERRY_BINARY, "send", "--state", cli.state("B").string(), "--bwlimit", "2M", src.string(),
                         a_id + "@" + proxy.address()});
    ASSERT_TRUE(wait_for_event(*rx.proc, "file_start", 30s)) << "the receiver stopped: " << rx.proc->err();
    proxy.stall(true);
    run_result second = send({other.string()}, a_id + "@" + rx.address, {"--retry-for", "0"});
    proxy.stall(false);
    EXPECT_EQ(second.code, 2) << second.err;
    EXPECT_NE(second.err.find("ferry receive takes one transfer, and has one"), std::string::npos) << second.err;
    EXPECT_EQ(first.wait(process_timeout), 0) << first.err();
    EXPECT_EQ(rx.proc->wait(process_timeout), 0) << rx.proc->err();
    EXPECT_EQ(compare_trees(src, dest / "x"), "");
    EXPECT_FALSE(fs::exists(dest / "y"));
}

TEST_F(cli_transfer, retry_for_bounds_the_dials_to_a_peer_that_drops_everything) {
    // The path goes silent mid-transfer, new connections too (a cut link: TCP connects to
    // the proxy, nothing comes back). Each dial waited its full 15 s, so --retry-for 2s gave
    // up some 15 s after the loss; now a retry's dial gets what the budget has left (at
    // least a second).
    fs::path src = cli.root() / "x";
    write_random_file(src / "big.bin", 8 * 1024 * 1024, 8);
    fs::path dest = cli.root() / "inbox";
    auto rx = start_receiver(dest);
    ferry::test::fault_proxy proxy(rx.address);
    proxy.at_up_bytes(1024 * 1024, [](fault_proxy& p) { p.stall(true); });
    child_process sender({FERRY_BINARY, "send", "--state", cli.state("B").string(), "--bwlimit", "4M", "--connections",
                          "1", "--stall-timeout", "1s", "--retry-for", "2s", src.string(), a_id + "@" + proxy.address()});
    ASSERT_TRUE(proxy.wait_up_bytes(1024 * 1024, 30s)) << sender.err();
    const auto lost = std::chrono::steady_clock::now();
    EXPECT_EQ(sender.wait(process_timeout), 2) << sender.err();
    const double took = std::chrono::duration<double>(std::chrono::steady_clock::now() - lost).count();
    // 1 s to notice, 2 s of budget, a last dial of at least 1 s: well under 15.
    EXPECT_LT(took, 9.0) << sender.err();
    EXPECT_NE(sender.err().find("--retry-for"), std::string::npos) << sender.err();
    proxy.stall(false);
    rx.proc->signal(SIGTERM);
    rx.proc->wait(process_timeout);
}

TEST_F(cli_transfer, a_sender_stopped_on_a_slow_link_tells_the_receiver_why) {
    // Ctrl-C in a send over a slow link: the Error frame saying why waited behind the
    // chunks queued before it and the process left before they went out, so the receiver
    // saw the connection drop ("connection closed by sender") instead of the reason. Now
    // the chunks not begun are dropped and the process waits (bounded) for its
    // connections to close.
    fs::path src = cli.root() / "x";
    write_random_file(src / "big.bin", 24 * 1024 * 1024, 5);
    fs::path dest = cli.root() / "inbox";
    auto rx = start_receiver(dest);
    ferry::test::fault_proxy proxy(rx.address);
    proxy.set_delay(std::chrono::milliseconds(5));  // slower than the sender, and what it holds drains in time
    child_process sender({FERRY_BINARY, "send", "--state", cli.state("B").string(), "--connections", "1",
                          "--compress", "never", "--retry-for", "0", src.string(), a_id + "@" + proxy.address()});
    ASSERT_TRUE(proxy.wait_up_bytes(1024 * 1024, 30s)) << sender.err();
    sender.signal(SIGINT);
    EXPECT_NE(sender.wait(process_timeout), 0) << sender.err();
    EXPECT_NE(rx.proc->wait(process_timeout), 0) << rx.proc->err();
    std::string err = rx.proc->err();
    EXPECT_NE(err.find("sender stopped: interrupted"), std::string::npos) << err;
    EXPECT_FALSE(fs::exists(dest / "x/big.bin"));
}

TEST_F(cli_transfer, a_path_given_as_a_symlink_is_followed_and_one_inside_a_folder_is_not) {
    // `ferry send ~/photos` where photos is a link to a folder sent nothing ("skipping
    // photos (symlink)", then "nothing to send").
    fs::path real = cli.root() / "real";
    write_text_file(real / "a.txt", "a\n");
    write_text_file(real / "sub/b.txt", "b\n");
    fs::create_symlink("a.txt", real / "inner-link");
    fs::create_directory_symlink(real, cli.root() / "photos");
    fs::path dest = cli.root() / "inbox";
    auto rx = start_receiver(dest);
    run_result s = send({(cli.root() / "photos").string()}, a_id + "@" + rx.address);
    ASSERT_EQ(s.code, 0) << s.err;
    EXPECT_EQ(rx.proc->wait(process_timeout), 0) << rx.proc->err();
    EXPECT_TRUE(fs::is_directory(fs::symlink_status(dest / "photos")));
    EXPECT_EQ(read_text_file(dest / "photos/a.txt"), "a\n");
    EXPECT_EQ(read_text_file(dest / "photos/sub/b.txt"), "b\n");
    EXPECT_FALSE(fs::exists(fs::symlink_status(dest / "photos/inner-link")));
    EXPECT_NE(s.err.find("inner-link"), std::string::npos) << s.err;  // the note
    // One that leads nowhere fails as a missing path does (it was skipped, exit 0).
    fs::create_symlink(cli.root() / "not-there", cli.root() / "dangling");
    run_result d = send({(cli.root() / "dangling").string(), (real / "a.txt").string()}, a_id + "@127.0.0.1:1");
    EXPECT_EQ(d.code, 1) << d.err;
    EXPECT_NE(d.err.find("dangling: a symlink that leads nowhere here"), std::string::npos) << d.err;
}

TEST_F(cli_transfer, ipv6_loopback) {
    fs::path src = cli.root() / "x";
    write_random_file(src / "f.bin", 700'000, 6);
    fs::path dest = cli.root() / "inbox";
    auto rx = cli.start({"receive", "--state", cli.state("A").string(), "--listen", "[::1]:0", "--accept-from", b_id,
                         "--json", dest.string()});
    if (rx.address.empty()) {
        GTEST_SKIP() << "no IPv6 loopback here";
    }
    ASSERT_EQ(rx.address.substr(0, 5), "[::1]");
    run_result s = send({src.string()}, a_id + "@" + rx.address);
    EXPECT_EQ(s.code, 0) << s.err;
    EXPECT_EQ(rx.proc->wait(process_timeout), 0);
    EXPECT_EQ(compare_trees(src, dest / "x"), "");
}

TEST_F(cli_transfer, refused_connection_and_bad_input_give_clear_errors) {
    fs::path src = cli.root() / "x";
    write_text_file(src / "f.txt", "data");
    // Nothing listens on port 1 of loopback.
    run_result refused = send({src.string()}, "127.0.0.1:1");
    EXPECT_EQ(refused.code, 2);
    EXPECT_NE(refused.err.find("cannot connect"), std::string::npos) << refused.err;
    nlohmann::json err = last_json_line(refused.out);
    EXPECT_EQ(err["event"], "error");

    EXPECT_EQ(send({src.string()}, "not-an-address").code, 1);
    EXPECT_EQ(send({(cli.root() / "missing").string()}, "127.0.0.1:1").code, 1);
    // A receiver's folder that is a file is refused at start.
    run_result not_dir = cli.ferry({"receive", "--state", cli.state("A").string(), "--listen", "127.0.0.1:0",
                                    (src / "f.txt").string()});
    EXPECT_EQ(not_dir.code, 1) << not_dir.err;
    EXPECT_NE(not_dir.err.find("not a folder"), std::string::npos) << not_dir.err;
    // A folder that cannot be made is refused at once, not when a sender comes.
    run_result below_file = cli.ferry({"receive", "--state", cli.state("A").string(), "--listen", "127.0.0.1:0",
                                       (src / "f.txt" / "sub").string()});
    EXPECT_EQ(below_file.code, 4) << below_file.err;
    EXPECT_NE(below_file.err.find("cannot make it"), std::string::npos) << below_file.err;
    // Two sources of one name would arrive as one: a usage error.
    write_text_file(cli.root() / "y" / "f.txt", "other");
    run_result clash = send({(src / "f.txt").string(), (cli.root() / "y" / "f.txt").string()}, "127.0.0.1:1");
    EXPECT_EQ(clash.code, 1) << clash.err;
    EXPECT_NE(clash.err.find("two sources map to the same name"), std::string::npos) << clash.err;
    // A symlink that points nowhere: as a missing path.
    fs::create_symlink(cli.root() / "nowhere", cli.root() / "link");
    run_result link = send({(cli.root() / "link").string()}, "127.0.0.1:1");
    EXPECT_EQ(link.code, 1) << link.err;
    EXPECT_NE(link.err.find("link: a symlink that leads nowhere here"), std::string::npos) << link.err;
    EXPECT_EQ(cli.ferry({"send", "--state", cli.state("B").string(), "only-one-arg"}).code, 1);
    EXPECT_EQ(cli.ferry({"trust", "--state", cli.state("B").string(), "NOT-AN-ID"}).code, 1);
    run_result self = cli.ferry({"trust", "--state", cli.state("B").string(), b_id});  // its own ID
    EXPECT_EQ(self.code, 1);
    EXPECT_NE(self.err.find("own ID"), std::string::npos) << self.err;
    EXPECT_EQ(cli.ferry({"trust", "--state", cli.state("B").string(), a_id, "--name", "a@b"}).code, 1);
    // A name that is another node's ID: `ls ID:share` would have gone to this peer.
    run_result id_name = cli.ferry({"trust", "--state", cli.state("B").string(), a_id, "--name", cli.id("C")});
    EXPECT_EQ(id_name.code, 1) << id_name.err;
    EXPECT_NE(id_name.err.find("nor be a node ID"), std::string::npos) << id_name.err;
    {
        // An older list that gives a peer another node's ID as its name: that ID still
        // names its own node, not the listed peer (whose address is a port nobody serves).
        const std::string c_id = cli.id("C");
        const fs::path e_state = cli.state("E");
        cli.id("E");
        write_text_file(e_state / "trusted.json", "{\"peers\":[{\"id\":\"" + a_id + "\",\"name\":\"" + c_id +
                                                      "\",\"address\":\"127.0.0.1:9\"}]}");
        fs::permissions(e_state / "trusted.json", static_cast<fs::perms>(0600));
        run_result by_id = cli.ferry({"ls", "--state", e_state.string(), c_id + ":pub"});
        EXPECT_EQ(by_id.code, 1) << by_id.err;  // C: not trusted here, no address known
        EXPECT_EQ(by_id.err.find("127.0.0.1:9"), std::string::npos) << by_id.err;
    }
    EXPECT_EQ(cli.ferry({"trust", "--state", cli.state("B").string(), a_id, "--name", "desk"}).code, 0);
    // Trusted again without --name: the name stays, and the output says so (it said "").
    run_result again = cli.ferry({"trust", "--state", cli.state("B").string(), a_id, "--shares", "www", "--json"});
    EXPECT_EQ(again.code, 0) << again.err;
    EXPECT_EQ(last_json_line(again.out)["name"], "desk") << again.out;
    EXPECT_NE(again.err.find("as \"desk\""), std::string::npos) << again.err;
    EXPECT_FALSE(last_json_line(again.out).contains("renamed_from")) << again.out;
    // Trusted again under another name: the old name names no peer now, and the output
    // says so (a user's script that still used it was puzzled).
    run_result renamed = cli.ferry({"trust", "--state", cli.state("B").string(), a_id, "--name", "desk2", "--json"});
    EXPECT_EQ(renamed.code, 0) << renamed.err;
    EXPECT_EQ(last_json_line(renamed.out)["renamed_from"], "desk") << renamed.out;
    EXPECT_NE(renamed.err.find("it was \"desk\", a name that now names no peer"), std::string::npos) << renamed.err;
    {
        // A state folder another user may write is refused (they could trust themselves or
        // replace the key); it was taken as it was.
        const fs::path open_state = cli.root() / "open-state";
        fs::create_directories(open_state);
        ASSERT_EQ(::chmod(open_state.c_str(), 0777), 0);
        run_result open = cli.ferry({"id", "--state", open_state.string()});
        EXPECT_EQ(open.code, 4) << open.err;
        EXPECT_NE(open.err.find("the state folder may be written by any user (mode 0777)"), std::string::npos)
            << open.err;
        // Group-writable: refused in a group others are in (nogroup: nobody's primary
        // group). (In the user's own private group it is taken, as an editor under umask
        // 002 leaves a file; Debian's ssh takes that too.)
        ASSERT_EQ(::chmod(open_state.c_str(), 0770), 0);
        if (::geteuid() == 0) {  // (chgrp to a group one is not in)
            ASSERT_EQ(::chown(open_state.c_str(), static_cast<uid_t>(-1), 65534), 0);
            run_result shared_group = cli.ferry({"id", "--state", open_state.string()});
            EXPECT_EQ(shared_group.code, 4) << shared_group.err;
            EXPECT_NE(shared_group.err.find("may be written by its group "), std::string::npos) << shared_group.err;
            EXPECT_NE(shared_group.err.find("(mode 0770)"), std::string::npos) << shared_group.err;
        }
        ASSERT_EQ(::chmod(open_state.c_str(), 0700), 0);
        EXPECT_EQ(cli.ferry({"id", "--state", open_state.string()}).code, 0);
        if (::geteuid() == 0) {  // (a link another user owns)
            // Reached through a link of this user's to one another user owns in a sticky
            // folder (they may replace theirs at any time): refused. (The path as typed
            // alone was looked at.)
            const fs::path sticky = cli.root() / "sticky";
            fs::create_directories(sticky);
            ASSERT_EQ(::chmod(sticky.c_str(), 01777), 0);
            fs::create_symlink(open_state, sticky / "theirs");
            ASSERT_EQ(::lchown((sticky / "theirs").c_str(), 65534, 65534), 0);
            fs::create_symlink(sticky / "theirs", cli.root() / "mine");
            run_result chained = cli.ferry({"id", "--state", (cli.root() / "mine").string()});
            EXPECT_EQ(chained.code, 4) << chained.err;
            EXPECT_NE(chained.err.find("is reached through " + (sticky / "theirs").string()), std::string::npos)
                << chained.err;
        }

        // Nor one inside a folder any user may write (they could move it away and put
        // their own in its place), nor a trust list linked into one; a sticky folder (as
        // /tmp) lets nobody move another's entries, and is taken. (Both were taken.)
        const fs::path shared = cli.root() / "shared";
        fs::create_directories(shared);
        ASSERT_EQ(::chmod(shared.c_str(), 0777), 0);
        run_result inside = cli.ferry({"id", "--state", (shared / "state").string()});
        EXPECT_EQ(inside.code, 4) << inside.err;
        EXPECT_NE(inside.err.find("the state folder is inside " + shared.string() + ", which any user may write"),
                  std::string::npos)
            << inside.err;
        ASSERT_EQ(::chmod(shared.c_str(), 01777), 0);
        EXPECT_EQ(cli.ferry({"id", "--state", (shared / "state").string()}).code, 0);
        ASSERT_EQ(::chmod(shared.c_str(), 0777), 0);
        write_text_file(shared / "trusted.json", "[]");
        ASSERT_EQ(::chmod((shared / "trusted.json").c_str(), 0600), 0);
        fs::create_symlink(shared / "trusted.json", open_state / "trusted.json");
        run_result linked = cli.ferry({"peers", "--state", open_state.string()});
        EXPECT_EQ(linked.code, 4) << linked.err;
        EXPECT_NE(linked.err.find("the trust list is inside " + shared.string()), std::string::npos) << linked.err;
    }
    {
        // Several `ferry trust` at once each keep their peer (each read, changed and wrote
        // the list, and some changes were lost).
        std::vector<std::string> ids;
        for (int i = 0; i < 12; ++i) {
            ids.push_back(cli.id("T" + std::to_string(i)));
        }
        std::vector<std::unique_ptr<child_process>> runs;
        for (const std::string& id : ids) {
            runs.push_back(std::make_unique<child_process>(
                std::vector<std::string>{FERRY_BINARY, "trust", "--state", cli.state("B").string(), id}));
        }
        for (auto& r : runs) {
            EXPECT_EQ(r->wait(60s), 0) << r->err();
        }
        nlohmann::json list = nlohmann::json::parse(read_text_file(cli.state("B") / "trusted.json"));
        for (const std::string& id : ids) {
            std::string bare = id;
            std::erase(bare, '-');
            bool kept = false;
            for (const nlohmann::json& p : list["peers"]) {
                std::string have = p["id"].get<std::string>();
                std::erase(have, '-');
                kept = kept || have == bare;
            }
            EXPECT_TRUE(kept) << id << ": " << list.dump();
        }
    }
    EXPECT_EQ(cli.ferry({"frobnicate"}).code, 1);
    std::string state_b = cli.state("B").string();
    std::string dir = cli.root().string();
    for (const std::vector<std::string>& args :
         {std::vector<std::string>{"send", "--state", state_b, "--congestion", "no-such-cc", "x", "127.0.0.1:9"},
          std::vector<std::string>{"receive", "--state", state_b, "--congestion", "no-such-cc", dir},
          std::vector<std::string>{"serve", "--state", state_b, "--congestion", "no-such-cc"}}) {
        run_result cc = cli.ferry(args);
        EXPECT_EQ(cc.code, 1) << args[0];
        EXPECT_NE(cc.err.find("--congestion no-such-cc"), std::string::npos) << args[0] << ": " << cc.err;
    }
    // Every command's help has an example and its exit codes (some had none).
    for (const char* cmd :
         {"id", "trust", "send", "sync", "receive", "serve", "get", "peers", "ls", "config", "status"}) {
        run_result h = cli.ferry({cmd, "--help"});
        EXPECT_EQ(h.code, 0) << cmd;
        EXPECT_NE(h.out.find("Example"), std::string::npos) << cmd;
        EXPECT_NE(h.out.find("Exit codes"), std::string::npos) << cmd;
    }
    // `ferry id --json` is an event like every other command's output.
    nlohmann::json id = last_json_line(cli.ferry({"id", "--state", state_b, "--json"}).out);
    EXPECT_EQ(id["event"], "id");
    EXPECT_EQ(id["schema"], 1);
    EXPECT_EQ(id["id"], b_id);
    run_result version = cli.ferry({"--version"});
    EXPECT_EQ(version.code, 0) << version.err;
    EXPECT_EQ(version.out.rfind("ferry ", 0), 0u) << version.out;
}

TEST_F(cli_transfer, serve_accepts_concurrent_trusted_senders_and_stops_on_sigterm) {
    std::string c_id = cli.id("C");
    ASSERT_EQ(cli.ferry({"trust", "--state", cli.state("A").string(), b_id, "--name", "bee"}).code, 0);
    ASSERT_EQ(cli.ferry({"trust", "--state", cli.state("A").string(), c_id}).code, 0);
    fs::path src_b = cli.root() / "from-b";
    fs::path src_c = cli.root() / "from-c";
    write_random_file(src_b / "b.bin", 5'000'000, 11);
    write_random_file(src_c / "c.bin", 5'000'000, 12);
    fs::path inbox = cli.root() / "inbox";
    auto node = cli.start({"serve", "--state", cli.state("A").string(), "--listen", "127.0.0.1:0", "--inbox",
                           inbox.string(), "--json"});
    ASSERT_FALSE(node.address.empty());
    child_process sb({FERRY_BINARY, "send", "--state", cli.state("B").string(), src_b.string(), a_id + "@" + node.address});
    child_process sc({FERRY_BINARY, "send", "--state", cli.state("C").string(), src_c.string(), a_id + "@" + node.address});
    EXPECT_EQ(sb.wait(process_timeout), 0) << sb.err();
    EXPECT_EQ(sc.wait(process_timeout), 0) << sc.err();
    EXPECT_EQ(compare_trees(src_b, inbox / "from-b"), "");
    EXPECT_EQ(compare_trees(src_c, inbox / "from-c"), "");
    node.proc->signal(SIGTERM);
    EXPECT_EQ(node.proc->wait(10s), 0) << node.proc->err();
}

// Two senders of the same name at once into one inbox: one file arrives whole from one of
// them, never a mix of both (they once shared one partial file). The other is told the
// file is busy, tries again, and finds it there.
TEST_F(cli_transfer, two_sends_of_one_name_at_once_never_mix_in_one_file) {
    std::string c_id = cli.id("C");
    ASSERT_EQ(cli.ferry({"trust", "--state", cli.state("A").string(), b_id}).code, 0);
    ASSERT_EQ(cli.ferry({"trust", "--state", cli.state("A").string(), c_id}).code, 0);
    fs::path src_b = cli.root() / "b/p";
    fs::path src_c = cli.root() / "c/p";
    write_random_file(src_b / "x", 12 * 1024 * 1024, 31);
    write_random_file(src_c / "x", 12 * 1024 * 1024, 32);
    fs::path inbox = cli.root() / "inbox";
    auto node = cli.start({"serve", "--state", cli.state("A").string(), "--listen", "127.0.0.1:0", "--inbox",
                           inbox.string(), "--json"});
    ASSERT_FALSE(node.address.empty());
    // Slowed down so that the two overlap.
    child_process sb({FERRY_BINARY, "send", "--state", cli.state("B").string(), "--bwlimit", "24M", src_b.string(),
                      a_id + "@" + node.address});
    child_process sc({FERRY_BINARY, "send", "--state", cli.state("C").string(), "--bwlimit", "24M", src_c.string(),
                      a_id + "@" + node.address});
    int rb = sb.wait(process_timeout).value_or(-1);
    int rc = sc.wait(process_timeout).value_or(-1);
    EXPECT_TRUE((rb == 0) != (rc == 0)) << rb << " " << rc << "\n" << sb.err() << "\n" << sc.err();
    const fs::path& winner = rb == 0 ? src_b : src_c;
    EXPECT_EQ(compare_trees(winner / "x", inbox / "p/x"), "");
    EXPECT_NE((rb == 0 ? sc : sb).err().find("exists"), std::string::npos) << sb.err() << sc.err();
    node.proc->signal(SIGTERM);
    EXPECT_EQ(node.proc->wait(10s), 0) << node.proc->err();
}

// `ferry send` dials the receiver while it scans its sources. A connection the scan keeps
// waiting over a second is closed before its Hello (the receiver counts nothing) and the
// session dials again; one taken in time carries the transfer.
TEST_F(cli_transfer, a_connection_dialed_during_the_scan_carries_the_send_or_is_dropped_unseen_after_a_long_one) {
    ASSERT_EQ(cli.ferry({"trust", "--state", cli.state("A").string(), b_id}).code, 0);
    fs::path src = make_reference_tree(cli.root());
    fs::path inbox = cli.root() / "inbox";
    auto node = cli.start({"serve", "--state", cli.state("A").string(), "--listen", "127.0.0.1:0", "--inbox",
                           inbox.string(), "--overwrite", "--json"});
    ASSERT_FALSE(node.address.empty());
    for (const char* delay_ms : {"300", "1500"}) {
        // Each send moves the whole tree (a send whose files are all there already ends
        // before its other connections join, and the node turns those away).
        fs::remove_all(inbox / "tree");
        run_result s = cli.ferry({"send", "--state", cli.state("B").string(), "--json", "--overwrite", src.string(),
                                  a_id + "@" + node.address},
                                 {std::string("FERRY_FAULT_SCAN_DELAY_MS=") + delay_ms});
        ASSERT_EQ(s.code, 0) << delay_ms << ": " << s.err;
        EXPECT_EQ(compare_trees(src, inbox / "tree"), "") << delay_ms;
        EXPECT_EQ(last_json_line(s.out)["event"], "done") << s.out;
    }
    expect_no_refusals_then_stop(node);
    EXPECT_EQ(node.proc->err().find("before Hello"), std::string::npos) << node.proc->err();
}

// A send of one small file ends before its other connections are in; they are no
// refusal: neither those the sender closes during their TLS handshake, nor those whose
// Hello comes after the session ended. (Before, about one send in two left a refusal.)
TEST_F(cli_transfer, connections_a_short_send_no_longer_needs_are_not_counted_as_refusals) {
    ASSERT_EQ(cli.ferry({"trust", "--state", cli.state("A").string(), b_id}).code, 0);
    fs::path src = cli.root() / "one";
    write_random_file(src / "f", 4096, 3);
    fs::path inbox = cli.root() / "inbox";
    auto node = cli.start({"serve", "--state", cli.state("A").string(), "--listen", "127.0.0.1:0", "--inbox",
                           inbox.string(), "--json"});
    ASSERT_FALSE(node.address.empty());
    for (int round = 0; round < 10; ++round) {
        run_result s = cli.ferry({"send", "--state", cli.state("B").string(), "--json", "--connections", "4",
                                  src.string(), a_id + "@" + node.address});
        ASSERT_EQ(s.code, 0) << round << ": " << s.err;
        EXPECT_EQ(last_json_line(s.out)["files"], round == 0 ? 1u : 0u) << s.out;
    }
    EXPECT_EQ(compare_trees(src, inbox / "one"), "");
    expect_no_refusals_then_stop(node);
}

// A big tree's files move while it is still scanned: the scan is held at a late folder
// until the receiver has placed a file of the first one (it gives up after 10 s, failing
// the send). A scan that fails after files moved fails the send (exit 4) with its reason.
TEST_F(cli_transfer, a_tree_is_sent_while_it_is_scanned_and_a_scan_failing_midway_fails_the_send) {
    fs::path src = cli.root() / "src" / "tree";
    for (int d = 0; d < 60; ++d) {
        for (int f = 0; f < 5; ++f) {
            write_random_file(src / ("d" + std::to_string(100 + d)) / ("f" + std::to_string(f)), 3000 + d * 7 + f,
                              static_cast<unsigned>(d * 10 + f));
        }
    }
    fs::path dest = cli.root() / "inbox";
    {
        auto rx = start_receiver(dest);
        run_result s = cli.ferry({"send", "--state", cli.state("B").string(), "--json", src.string(), a_id + "@" + rx.address},
                                 {"FERRY_FAULT_SCAN_WAIT=tree/d150=" + (dest / "tree" / "d100" / "f0").string()});
        ASSERT_EQ(s.code, 0) << s.err;
        EXPECT_EQ(rx.proc->wait(process_timeout), 0) << rx.proc->err();
        EXPECT_EQ(compare_trees(src, dest / "tree"), "");
        nlohmann::json done = last_json_line(s.out);
        EXPECT_EQ(done["files"], 300u) << s.out;
        EXPECT_EQ(done["dirs"], 61u) << s.out;
    }
    fs::path dest2 = cli.root() / "inbox2";
    auto rx = start_receiver(dest2);
    run_result s = cli.ferry({"send", "--state", cli.state("B").string(), "--json", src.string(), a_id + "@" + rx.address},
                             {"FERRY_FAULT_SCAN_WAIT=tree/d150=" + (dest2 / "tree" / "d100" / "f0").string(),
                              "FERRY_FAULT_SCAN_FAIL=tree/d155"});
    EXPECT_EQ(s.code, 4) << s.err;
    EXPECT_NE(s.err.find("cannot scan the sources: tree/d155: injected scan failure"), std::string::npos) << s.err;
    EXPECT_NE(rx.proc->wait(process_timeout), 0);
    EXPECT_TRUE(fs::exists(dest2 / "tree" / "d100" / "f0")) << "files moved before the scan failed";
    EXPECT_FALSE(fs::exists(dest2 / "tree" / "d159")) << "nothing after the failure was offered";
}

// A scan that holds its entries back longer than the receiver's idle timeout (one big
// folder, a slow disk): the sender keeps offering, empty batches if need be, and the
// receiver keeps waiting.
TEST_F(cli_transfer, a_scan_stalled_past_the_receivers_idle_timeout_keeps_the_send_alive) {
    fs::path src = cli.root() / "src" / "tree";
    for (int d = 0; d < 20; ++d) {
        for (int f = 0; f < 3; ++f) {
            write_random_file(src / ("d" + std::to_string(100 + d)) / ("f" + std::to_string(f)), 2000 + d + f,
                              static_cast<unsigned>(d * 3 + f));
        }
    }
    fs::path dest = cli.root() / "inbox";
    fs::path go = cli.root() / "go";
    auto rx = start_receiver(dest, {"--idle-timeout", "2"});
    child_process sender({FERRY_BINARY, "send", "--state", cli.state("B").string(), "--json", src.string(),
                          a_id + "@" + rx.address},
                         {"FERRY_FAULT_SCAN_WAIT=tree/d110=" + go.string()});
    // The receiver's own events tell the time: the scan stays held until the receiver,
    // still in the transfer, has reported twice its idle timeout past its first file
    // (its progress events keep coming while a transfer runs; a receiver that gave up
    // ends its output, and the read fails).
    std::optional<double> placed_at;
    for (double t = 0; !placed_at || t < *placed_at + 4.0;) {
        std::optional<std::string> line = rx.proc->read_line(30s);
        ASSERT_TRUE(line) << "the receiver stopped: " << rx.proc->err();
        nlohmann::json ev = nlohmann::json::parse(*line, nullptr, false);
        ASSERT_FALSE(ev.is_discarded()) << *line;
        ASSERT_NE(ev["event"], "done") << *line;
        t = ev["t"].get<double>();
        if (!placed_at && ev["event"] == "file_done" && ev["path"] == "tree/d100/f0") {
            placed_at = t;
        }
    }
    write_random_file(go, 1, 1);
    EXPECT_EQ(sender.wait(process_timeout), 0) << sender.err();
    EXPECT_EQ(rx.proc->wait(process_timeout), 0) << rx.proc->err();
    EXPECT_EQ(compare_trees(src, dest / "tree"), "");
}

TEST_F(cli_transfer, resend_skips_identical_files_and_re_verifies_what_an_interrupted_transfer_left) {
    fs::path src = make_reference_tree(cli.root());
    fs::path dest = cli.root() / "inbox";
    std::size_t files = regular_files_in(src);
    for (int round = 0; round < 2; ++round) {
        auto rx = start_receiver(dest);
        run_result s = send({src.string()}, a_id + "@" + rx.address);
        ASSERT_EQ(s.code, 0) << s.err;
        EXPECT_EQ(rx.proc->wait(process_timeout), 0);
        nlohmann::json done = last_json_line(s.out);
        ASSERT_FALSE(done.is_discarded()) << s.out;
        // The second time everything is already there: nothing is sent, nothing replaced.
        EXPECT_EQ(done["files"], round == 0 ? files : 0u) << s.out;
        EXPECT_EQ(done["skipped_files"], round == 0 ? 0u : files) << s.out;
        if (round == 1) {
            EXPECT_EQ(done["payload_bytes"], 0u);
            EXPECT_NE(s.err.find("already there"), std::string::npos) << s.err;
        }
        EXPECT_EQ(compare_trees(src, dest / "tree"), "");
    }
    EXPECT_TRUE(no_journals(cli.state("A")));  // every transfer reached its sync
}

TEST_F(cli_transfer, crash_after_renames_before_sync_then_resend_re_verifies_and_repairs) {
    fs::path src = cli.root() / "x";
    for (int i = 0; i < 60; ++i) {
        write_random_file(src / ("d" + std::to_string(i % 4)) / ("f" + std::to_string(i)), 1000 + i * 977, 300 + i);
    }
    fs::path dest = cli.root() / "inbox";
    std::size_t files = regular_files_in(src);
    {
        // The receiver dies (like a crash) once 10 files were renamed into place before
        // the transfer's final sync.
        auto rx = start_receiver(dest, {}, {"FERRY_FAULT_EXIT_AFTER_RENAMES=10"});
        run_result s = send({src.string()}, a_id + "@" + rx.address, {"--retry-for", "0"});
        EXPECT_EQ(s.code, 2) << s.err;
        EXPECT_EQ(rx.proc->wait(process_timeout), 86);
    }
    // It left its journal, listing what it renamed before dying.
    ASSERT_FALSE(no_journals(cli.state("A")));
    std::vector<fs::path> arrived;
    for (const auto& de : fs::recursive_directory_iterator(dest / "x")) {
        std::string name = de.path().filename().string();
        if (de.is_regular_file() && !name.ends_with(".ferry-part")) {
            arrived.push_back(de.path());
        }
    }
    ASSERT_GE(arrived.size(), 10u);
    ASSERT_LT(arrived.size(), files);
    // What a power loss can do to those files: other bytes under the same size and mtime
    // (data blocks never written), or cut short.
    std::sort(arrived.begin(), arrived.end());
    auto damage = [](const fs::path& p, bool cut) {
        std::int64_t mtime = mtime_ns_of(p);
        if (cut) {
            fs::resize_file(p, fs::file_size(p) / 2);
        } else {
            std::string bytes = read_text_file(p);
            bytes[bytes.size() / 2] ^= 0x55;
            std::fstream out(p, std::ios::binary | std::ios::in | std::ios::out);
            out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
        }
        set_mtime(p, mtime / 1'000'000'000, static_cast<long>(mtime % 1'000'000'000));
    };
    damage(arrived[0], false);
    damage(arrived[1], true);

    auto rx = start_receiver(dest);
    run_result s = send({src.string()}, a_id + "@" + rx.address);
    ASSERT_EQ(s.code, 0) << s.err;
    EXPECT_EQ(rx.proc->wait(process_timeout), 0);
    std::string rx_err = rx.proc->err();
    EXPECT_NE(rx_err.find("re-verified " + std::to_string(arrived.size()) + " file(s)"), std::string::npos) << rx_err;
    EXPECT_NE(rx_err.find("2 damaged and removed"), std::string::npos) << rx_err;
    nlohmann::json done = last_json_line(s.out);
    // The intact arrivals are skipped; the two damaged ones and the rest travel.
    EXPECT_EQ(done["skipped_files"], arrived.size() - 2) << s.out;
    EXPECT_EQ(done["files"], files - arrived.size() + 2) << s.out;
    EXPECT_EQ(compare_trees(src, dest / "x"), "");
    EXPECT_TRUE(no_journals(cli.state("A")));
}

TEST_F(cli_transfer, receiver_killed_mid_transfer_then_resend_completes_byte_identical) {
    fs::path src = cli.root() / "x";
    for (int i = 0; i < 300; ++i) {
        write_random_file(src / ("small/f" + std::to_string(i)), 3000 + i * 17, 100 + i);
    }
    write_random_file(src / "big.bin", 48 * 1024 * 1024, 7);
    fs::path dest = cli.root() / "inbox";
    {
        auto rx = start_receiver(dest);
        // --retry-for 0: this sender gives up at once instead of waiting for the receiver.
        child_process sender({FERRY_BINARY, "send", "--state", cli.state("B").string(), "--json", "--retry-for", "0",
                              src.string(), a_id + "@" + rx.address});
        // Kill -9 once the sender is connected (data is flowing or about to).
        bool connected = false;
        for (int i = 0; i < 10 && !connected; ++i) {
            auto line = sender.read_line(process_timeout);
            if (!line) {
                break;
            }
            connected = line->find("\"connected\"") != std::string::npos;
        }
        ASSERT_TRUE(connected) << sender.err();
        rx.proc->signal(SIGKILL);
        EXPECT_EQ(rx.proc->wait(process_timeout), 128 + SIGKILL);
        auto code = sender.wait(process_timeout);
        ASSERT_TRUE(code.has_value());
        // Unless it finished first, the sender reports the lost receiver.
        EXPECT_TRUE(*code == 0 || *code == 2) << *code << sender.err();
    }
    auto rx = start_receiver(dest);
    run_result s = send({src.string()}, a_id + "@" + rx.address);
    ASSERT_EQ(s.code, 0) << s.err;
    EXPECT_EQ(rx.proc->wait(process_timeout), 0);
    // Byte-identical, and no partial file left behind (compare_trees sees every name).
    EXPECT_EQ(compare_trees(src, dest / "x"), "");
    EXPECT_TRUE(no_journals(cli.state("A")));
}
