// End-to-end `ferry get --from`: one file from three serving nodes at once, on loopback,
// with the fault proxy slowing one down and one killed mid-transfer; sources that
// disagree; an interrupted get that resumes. Checked on disk (bytes) and in the --json
// `done` event (ranges per source).
#include <sys/stat.h>

#include <gtest/gtest.h>

#include <csignal>
#include <nlohmann/json.hpp>

#include "tests/support/fault_proxy.hpp"
#include "tests/support/ferry_cli.hpp"
#include "tests/support/fs_util.hpp"
#include "tests/support/tree.hpp"

namespace fs = std::filesystem;
using namespace ferry::test;
using namespace std::chrono_literals;

namespace {

constexpr std::uint64_t MiB = 1024 * 1024;

bool same_bytes(const fs::path& a, const fs::path& b) {
    std::string x = read_text_file(a);
    return !x.empty() && x == read_text_file(b);
}

class multi_get : public ::testing::Test {
protected:
    ferry_cli cli;
    std::string c_id = cli.id("C");
    fs::path out = cli.root() / "out";
    std::vector<ferry_cli::receiver> nodes;

    void SetUp() override { fs::create_directories(out); }
    void TearDown() override {
        for (auto& n : nodes) {
            if (n.proc && n.id != "killed") {
                n.proc->signal(SIGTERM);
                EXPECT_EQ(n.proc->wait(10s), 0) << n.proc->err();
            }
        }
    }

    // Serving node `who` with the share "pub" (its own folder, holding what the test puts
    // there), trusting C. Returns its address.
    fs::path share(const std::string& who) { return cli.root() / ("share-" + who); }
    std::string serve(const std::string& who) {
        fs::create_directories(share(who));
        EXPECT_EQ(cli.ferry({"trust", "--state", cli.state(who).string(), c_id, "--name", "cee"}).code, 0);
        nodes.push_back(cli.start({"serve", "--state", cli.state(who).string(), "--listen", "127.0.0.1:0", "--share",
                                   "pub=" + share(who).string(), "--json"}));
        EXPECT_FALSE(nodes.back().address.empty());
        return nodes.back().address;
    }
    // C trusts `who` as NAME at `address` (the node's own, or a proxy's in front of it).
    void trust(const std::string& who, const std::string& name, const std::string& address) {
        ASSERT_EQ(cli.ferry({"trust", "--state", cli.state("C").string(), cli.id(who), "--name", name, "--address",
                             address})
                      .code,
                  0);
    }
    // The same bytes and mtime in every node's share.
    void place(const fs::path& original, const std::vector<std::string>& who) {
        for (const std::string& w : who) {
            fs::copy_file(original, share(w) / original.filename(), fs::copy_options::overwrite_existing);
            ASSERT_TRUE(set_mtime(share(w) / original.filename(), 1700000000));
        }
    }
    run_result get(const std::string& from, const std::string& what, std::vector<std::string> extra = {}) {
        std::vector<std::string> args{"get", "--state", cli.state("C").string(), "--json", "--from", from};
        args.insert(args.end(), extra.begin(), extra.end());
        args.push_back(what);
        args.push_back(out.string() + "/");
        return cli.ferry(args);
    }
    static nlohmann::json source(const nlohmann::json& done, const std::string& label) {
        for (const auto& s : done["sources"]) {
            if (s["source"] == label) {
                return s;
            }
        }
        ADD_FAILURE() << "no source " << label << " in " << done.dump();
        return {};
    }
};

TEST_F(multi_get, a_slowed_peer_carries_few_ranges_a_killed_one_is_replaced_and_the_file_is_whole) {
    std::string a = serve("A");
    std::string b = serve("B");
    std::string k = serve("K");
    fault_proxy slow(b);
    slow.set_delay(30ms);  // every piece it forwards waits: a slow link
    fault_proxy doomed(k);
    // Once K's node has taken some requests and acks, its traffic stops there and the
    // node is killed: its running ranges are lost mid-transfer.
    constexpr std::uint64_t kill_at = 24 * 1024;
    doomed.at_up_bytes(kill_at, [](fault_proxy& p) { p.stall(true); });
    trust("A", "fast", a);
    trust("B", "slow", slow.address());
    trust("K", "doomed", doomed.address());
    fs::path original = cli.root() / "disk.img";
    write_random_file(original, 48 * MiB + 12345, 91);
    place(original, {"A", "B", "K"});

    std::vector<std::string> args{FERRY_BINARY, "get",         "--state", cli.state("C").string(), "--json",
                                  "--from",     "fast,slow,doomed", "--range-size", "1M", "pub/disk.img",
                                  out.string() + "/"};
    auto getter = std::make_unique<child_process>(args);
    ASSERT_TRUE(doomed.wait_up_bytes(kill_at, 60s)) << "the get never reached the doomed node";
    nodes[2].proc->signal(SIGKILL);
    EXPECT_EQ(nodes[2].proc->wait(10s), 128 + SIGKILL);
    nodes[2].id = "killed";
    doomed.stall(false);
    doomed.cut_all();
    ASSERT_EQ(getter->wait(120s), 0) << getter->err();

    EXPECT_TRUE(same_bytes(original, out / "disk.img"));
    struct stat st {};
    ASSERT_EQ(::stat((out / "disk.img").c_str(), &st), 0);
    EXPECT_EQ(st.st_mtim.tv_sec, 1700000000);
    EXPECT_FALSE(fs::exists(out / ".disk.img.ferry-parts"));
    nlohmann::json done = find_event(json_events(getter->out()), "done");
    ASSERT_FALSE(done.is_null()) << getter->out();
    EXPECT_EQ(done["size"], 48 * MiB + 12345);
    EXPECT_EQ(done["ranges"], 49);
    EXPECT_EQ(done["kept_bytes"], 0);
    std::uint64_t fast = source(done, "fast")["ranges"];
    std::uint64_t slowed = source(done, "slow")["ranges"];
    std::uint64_t killed = source(done, "doomed")["ranges"];
    EXPECT_EQ(fast + slowed + killed, 49u) << done.dump();
    EXPECT_GT(fast, slowed) << done.dump();
    EXPECT_GT(fast, killed) << done.dump();
    EXPECT_GT(fast, 49u / 2) << "the fast peer carries most of the file: " << done.dump();
}

TEST_F(multi_get, sources_with_other_versions_are_left_out_or_fail_the_get_and_nothing_mixed_is_placed) {
    std::string a = serve("A");
    std::string b = serve("B");
    trust("A", "one", a);
    trust("B", "two", b);
    fs::path original = cli.root() / "data.bin";
    write_random_file(original, 9 * MiB, 5);
    place(original, {"A", "B"});

    // B's copy has another mtime: B is left out with a note, A brings it all.
    ASSERT_TRUE(set_mtime(share("B") / "data.bin", 1600000000));
    run_result r = get("one,two", "pub/data.bin", {"--range-size", "1M"});
    ASSERT_EQ(r.code, 0) << r.err;
    EXPECT_TRUE(same_bytes(original, out / "data.bin"));
    auto events = json_events(r.out);
    nlohmann::json done = find_event(events, "done");
    EXPECT_EQ(source(done, "one")["ranges"], 9);
    EXPECT_EQ(source(done, "two")["used"], false);
    // A last progress with the final figures right before `done`, its session 32 hex
    // digits as everywhere (it was "multi" in hex, and a quick get had no progress at all).
    ASSERT_GE(events.size(), 2u);
    const nlohmann::json& last = events[events.size() - 2];
    EXPECT_EQ(last["event"], "progress") << r.out;
    EXPECT_EQ(last["session"].get<std::string>().size(), 32u) << last;
    EXPECT_EQ(last["confirmed_bytes"].get<std::uint64_t>() + last["skipped_bytes"].get<std::uint64_t>(), 9 * MiB)
        << last;
    EXPECT_EQ(last["files_done"], 1) << last;
    EXPECT_NE(r.err.find("another version"), std::string::npos) << r.err;

    // Same size and mtime, other bytes: the ranges cannot make the file A read, so the get
    // fails and places nothing (what was there stays).
    write_random_file(share("B") / "data.bin", 9 * MiB, 6);
    ASSERT_TRUE(set_mtime(share("B") / "data.bin", 1700000000));
    fs::remove(out / "data.bin");
    r = get("one,two", "pub/data.bin", {"--range-size", "1M"});
    EXPECT_EQ(r.code, 2) << r.err;
    EXPECT_NE(r.err.find("digest differs"), std::string::npos) << r.err;
    EXPECT_FALSE(fs::exists(out / "data.bin"));
    EXPECT_FALSE(fs::exists(out / ".data.bin.ferry-parts"));
    EXPECT_FALSE(fs::exists(out / ".data.bin.ferry-part"));

    // A folder, or a file no source has: clear errors.
    fs::create_directories(share("A") / "dir");
    fs::create_directories(share("B") / "dir");
    r = get("one,two", "pub/dir");
    EXPECT_EQ(r.code, 1) << r.err;
    EXPECT_NE(r.err.find("not a regular file"), std::string::npos) << r.err;
    r = get("one,two", "pub/nothing.bin");
    EXPECT_EQ(r.code, 2) << r.err;
    EXPECT_NE(r.err.find("no \"nothing.bin\" in the share"), std::string::npos) << r.err;
}

TEST_F(multi_get, an_interrupted_get_keeps_its_ranges_and_a_second_get_moves_nothing) {
    std::string a = serve("A");
    fs::path original = cli.root() / "data.bin";
    write_random_file(original, 9 * MiB + 1, 8);
    place(original, {"A"});
    std::vector<std::string> flags{"--range-size", "1M", "--connections", "1"};
    // A whole get through a proxy: what it sends toward the node in all.
    std::uint64_t whole = 0;
    {
        fault_proxy proxy(a);
        trust("A", "one", proxy.address());
        // A FIFO here is not replaced (it was renamed over), as a get from one source leaves it.
        ASSERT_EQ(::mkfifo((out / "data.bin").c_str(), 0600), 0);
        run_result fifo = get("one", "pub/data.bin", flags);
        EXPECT_EQ(fifo.code, 1) << fifo.err;
        EXPECT_NE(fifo.err.find("a FIFO, socket or device here"), std::string::npos) << fifo.err;
        EXPECT_TRUE(fs::is_fifo(out / "data.bin"));
        fs::remove(out / "data.bin");
        // A setuid file at the source comes without the bit (it came 04755).
        ASSERT_EQ(::chmod((share("A") / "data.bin").c_str(), 04755), 0);
        run_result r = get("one", "pub/data.bin", flags);
        ASSERT_EQ(r.code, 0) << r.err;
        whole = proxy.up_bytes();
        struct stat st {};
        ASSERT_EQ(::stat((out / "data.bin").c_str(), &st), 0);
        EXPECT_EQ(st.st_mode & 07777, 0755U);
        ASSERT_EQ(::chmod((share("A") / "data.bin").c_str(), 0644), 0);
        fs::remove(out / "data.bin");
    }
    // The same get, stopped at half of that (its traffic held there) and interrupted.
    fault_proxy proxy(a);
    proxy.at_up_bytes(whole / 2, [](fault_proxy& p) { p.stall(true); });
    trust("A", "one", proxy.address());
    std::vector<std::string> args{FERRY_BINARY, "get", "--state", cli.state("C").string(), "--json", "--from", "one"};
    args.insert(args.end(), flags.begin(), flags.end());
    args.insert(args.end(), {"pub/data.bin", out.string() + "/"});
    child_process getter(args);
    ASSERT_TRUE(proxy.wait_up_bytes(whole / 2, 60s));
    getter.signal(SIGINT);
    EXPECT_EQ(getter.wait(30s), 2) << getter.err();
    EXPECT_FALSE(fs::exists(out / "data.bin"));
    fs::path parts = out / ".data.bin.ferry-parts";
    EXPECT_TRUE(fs::exists(parts / "source"));
    // The first range was in before half the traffic: copied into the partial file, or
    // still in its own file when the interruption came first.
    EXPECT_TRUE(fs::exists(parts / "r000000.sums") || fs::exists(parts / "r000000"));

    trust("A", "one", a);
    run_result r = get("one", "pub/data.bin", flags);
    ASSERT_EQ(r.code, 0) << r.err;
    EXPECT_TRUE(same_bytes(original, out / "data.bin"));
    EXPECT_FALSE(fs::exists(parts));
    EXPECT_FALSE(fs::exists(out / ".data.bin.ferry-part"));
    nlohmann::json done = find_event(json_events(r.out), "done");
    std::uint64_t kept = done["kept_bytes"];
    EXPECT_GE(kept, MiB);
    EXPECT_LT(kept, 9 * MiB);
    // (A range the interrupted get had begun counts whole for its source, and its kept
    // part in kept_bytes: the sum may pass the size.)
    EXPECT_GE(kept + source(done, "one")["bytes"].get<std::uint64_t>(), 9 * MiB + 1);
    // Every byte is either kept or received (a begun range's kept part was in neither).
    EXPECT_GE(kept + done["payload_bytes"].get<std::uint64_t>(), 9 * MiB + 1) << done;
    // Its progress: what the first get left is skipped, never confirmed, and confirmed
    // never goes back (it counted the kept bytes, reached the size early, then dropped).
    std::uint64_t confirmed = 0;
    for (const auto& e : json_events(r.out)) {
        if (e["event"] == "progress") {
            EXPECT_GE(e["confirmed_bytes"].get<std::uint64_t>(), confirmed) << e;
            confirmed = e["confirmed_bytes"];
            EXPECT_LE(confirmed + e["skipped_bytes"].get<std::uint64_t>(), 9 * MiB + 1) << e;
            EXPECT_GT(e["skipped_bytes"].get<std::uint64_t>(), 0u) << e;
        }
    }

    r = get("one", "pub/data.bin", flags);
    ASSERT_EQ(r.code, 0) << r.err;
    done = find_event(json_events(r.out), "done");
    EXPECT_EQ(done["unchanged"], true);
    // The listing moved bytes (the handshake, the entry): counted, as the kernel counts them.
    EXPECT_GT(done["wire_bytes_received"].get<std::uint64_t>(), 0U) << r.out;
    EXPECT_GT(done["wire_bytes_sent"].get<std::uint64_t>(), 0U) << r.out;
    EXPECT_GT(source(done, "one")["wire_bytes_received"].get<std::uint64_t>(), 0U) << r.out;
}

}  // namespace
