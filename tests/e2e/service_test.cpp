// `ferry serve` under a service manager: the sd_notify readiness protocol (READY=1 once it
// listens, STOPPING=1 on SIGTERM) on a NOTIFY_SOCKET datagram socket the test binds.
#include <poll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <csignal>
#include <cstring>

#include "tests/support/ferry_cli.hpp"
#include "tests/support/tree.hpp"

namespace fs = std::filesystem;
using namespace ferry::test;
using namespace std::chrono_literals;

namespace {

// A configuration file as its owner keeps it: ferry refuses one its group or others may
// write, whatever the umask the tests run under.
void write_conf_text(const fs::path& p, const std::string& text) {
    write_text_file(p, text);
    fs::permissions(p, static_cast<fs::perms>(0644));
}

// A unix datagram socket bound at `path`, as a service manager's notify socket.
class notify_socket {
public:
    explicit notify_socket(const fs::path& path) : path_(path) {
        fd_ = ::socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
        sockaddr_un addr{};
        addr.sun_family = AF_UNIX;
        std::strncpy(addr.sun_path, path.c_str(), sizeof addr.sun_path - 1);
        bound_ = fd_ >= 0 && ::bind(fd_, reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0;
    }
    ~notify_socket() {
        if (fd_ >= 0) {
            ::close(fd_);
        }
    }
    bool bound() const { return bound_; }
    // The next datagram, or nullopt when none comes within `timeout`.
    std::optional<std::string> next(std::chrono::milliseconds timeout) {
        pollfd p{fd_, POLLIN, 0};
        if (::poll(&p, 1, static_cast<int>(timeout.count())) != 1) {
            return std::nullopt;
        }
        char buf[4096];
        ssize_t n = ::recv(fd_, buf, sizeof buf, 0);
        return n < 0 ? std::nullopt : std::optional<std::string>(std::string(buf, static_cast<std::size_t>(n)));
    }

private:
    fs::path path_;
    int fd_ = -1;
    bool bound_ = false;
};

TEST(service, serve_tells_the_service_manager_it_is_ready_and_when_it_stops) {
    ferry_cli cli;
    cli.id("A");
    notify_socket notify(cli.root() / "notify.sock");
    ASSERT_TRUE(notify.bound());
    ferry_cli::receiver node = cli.start({"serve", "--state", cli.state("A").string(), "--listen", "127.0.0.1:0",
                                          "--inbox", (cli.root() / "inbox").string(), "--json"},
                                         {"NOTIFY_SOCKET=" + (cli.root() / "notify.sock").string()});
    ASSERT_FALSE(node.address.empty());
    std::optional<std::string> ready = notify.next(30s);
    ASSERT_TRUE(ready) << node.proc->err();
    EXPECT_NE(ready->find("READY=1\n"), std::string::npos) << *ready;
    EXPECT_NE(ready->find("STATUS=listening on " + node.address), std::string::npos) << *ready;
    EXPECT_NE(ready->find("MAINPID=" + std::to_string(node.proc->pid())), std::string::npos) << *ready;
    node.proc->signal(SIGTERM);
    std::optional<std::string> stopping = notify.next(10s);
    ASSERT_TRUE(stopping) << node.proc->err();
    EXPECT_EQ(*stopping, "STOPPING=1");
    EXPECT_EQ(node.proc->wait(10s), 0) << node.proc->err();
}

// Every thread keeps SIGINT, SIGTERM and SIGHUP blocked and one takes them (tools/signals.hpp).
// A signal the command handles stops it cleanly; one it does not handle (SIGHUP to
// `ferry receive`) ends it as it would with no handler, and one that is ignored when ferry
// starts (as nohup ignores SIGHUP) stays ignored.
TEST(service, signals_the_command_does_not_handle_keep_their_default_action) {
    ferry_cli cli;
    cli.id("A");
    auto start_receive = [&](const std::vector<std::string>& launcher) {
        return cli.start({"receive", "--state", cli.state("A").string(), "--listen", "127.0.0.1:0", "--accept-any",
                          "--json", (cli.root() / "inbox").string()},
                         {}, launcher);
    };
    {
        ferry_cli::receiver rx = start_receive({});
        ASSERT_FALSE(rx.address.empty()) << rx.proc->err();
        rx.proc->signal(SIGHUP);
        EXPECT_EQ(rx.proc->wait(10s), 128 + SIGHUP) << rx.proc->err();
    }
    {
        ferry_cli::receiver rx = start_receive({"/bin/sh", "-c", "trap '' HUP; exec \"$0\" \"$@\"", FERRY_BINARY});
        ASSERT_FALSE(rx.address.empty()) << rx.proc->err();
        rx.proc->signal(SIGHUP);
        // The kernel hands over SIGHUP first. Taken and ignored, it is gone; left pending, it
        // would be read again and again ahead of SIGINT, and the node would not stop.
        rx.proc->signal(SIGINT);
        EXPECT_EQ(rx.proc->wait(10s), 2) << rx.proc->err();  // 2: stopped before any transfer
        EXPECT_NE(rx.proc->err().find("stopping (SIGINT)"), std::string::npos) << rx.proc->err();
    }
}

// Under the journal (stderr is the stream $JOURNAL_STREAM names) each line starts with its
// syslog priority and carries no time; elsewhere a node's lines start with the local time.
// --log-level keeps the lines of that level and above.
TEST(service, log_lines_carry_their_priority_under_the_journal_and_the_time_elsewhere) {
    ferry_cli cli;
    cli.id("A");
    std::string stranger = cli.id("S");  // not trusted by A: its transfer is refused (a warning)
    auto serve_args = [&](const std::string& level) {
        return std::vector<std::string>{"serve", "--state", cli.state("A").string(), "--listen", "127.0.0.1:0",
                                        "--inbox", (cli.root() / "inbox").string(), "--log-level", level, "--json"};
    };
    auto refused_send = [&](const std::string& address) {
        write_text_file(cli.root() / "f.txt", "x");
        run_result r = cli.ferry({"send", "--state", cli.state("S").string(), (cli.root() / "f.txt").string(),
                                  address});
        EXPECT_NE(r.code, 0);
    };
    // The journal's stream: bash hands its own stderr (the pipe to the test) to ferry.
    std::vector<std::string> in_journal{"/bin/bash", "-c",
                                        "JOURNAL_STREAM=$(stat -L -c %d:%i /proc/self/fd/2) exec \"$0\" \"$@\"",
                                        FERRY_BINARY};
    {
        ferry_cli::receiver node = cli.start(serve_args("info"), {}, in_journal);
        ASSERT_FALSE(node.address.empty());
        refused_send(node.address);
        ASSERT_TRUE(node.proc->wait_for_err("<4>refused connection", 30s)) << node.proc->err();
        node.proc->signal(SIGTERM);
        EXPECT_EQ(node.proc->wait(10s), 0);
        std::string err = node.proc->err();
        EXPECT_NE(err.find("<6>listening on 127.0.0.1:"), std::string::npos) << err;
        EXPECT_NE(err.find("<6>stopping (SIGTERM)"), std::string::npos) << err;
        EXPECT_EQ(err.find("ferry: "), std::string::npos) << err;
    }
    {
        // Not under the journal, --log-level warn: no info line, the warning with its time.
        ferry_cli::receiver node = cli.start(serve_args("warn"));
        ASSERT_FALSE(node.address.empty());
        refused_send(node.address);
        std::optional<std::string> line = node.proc->wait_for_err("refused connection", 30s);
        ASSERT_TRUE(line) << node.proc->err();
        node.proc->signal(SIGTERM);
        EXPECT_EQ(node.proc->wait(10s), 0);
        std::string err = node.proc->err();
        EXPECT_EQ(err.find("listening on"), std::string::npos) << err;
        EXPECT_EQ(err.find("stopping"), std::string::npos) << err;
        // "2026-12-03 17:40:01.123 ferry: refused connection ..."
        std::size_t at = err.find("ferry: refused connection");
        ASSERT_NE(at, std::string::npos) << err;
        ASSERT_GE(at, 24u);
        std::string stamp = err.substr(at - 24, 24);
        EXPECT_EQ(stamp[4], '-') << stamp;
        EXPECT_EQ(stamp[10], ' ') << stamp;
        EXPECT_EQ(stamp[13], ':') << stamp;
        EXPECT_EQ(stamp[19], '.') << stamp;
    }
}

// SIGHUP (`systemctl reload ferry`): trust, shares and limits read again from the file; a
// transfer that runs goes on; a file with a mistake changes nothing.
TEST(service, trust_changed_with_ferry_trust_reaches_a_running_node_at_its_next_connection) {
    // A peer trusted, limited, then taken off with `ferry trust` while `ferry serve` runs:
    // each change holds from the next connection, without a SIGHUP (none took effect
    // before one, and `ferry trust` gave no hint of it).
    ferry_cli cli;
    const std::string a_id = cli.id("A");
    const std::string b_id = cli.id("B");
    for (const char* name : {"one", "two"}) {
        fs::create_directories(cli.root() / name);
    }
    ferry_cli::receiver node =
        cli.start({"serve", "--json", "--state", cli.state("A").string(), "--listen", "127.0.0.1:0", "--share",
                   "one=" + (cli.root() / "one").string(), "--share", "two=" + (cli.root() / "two").string()});
    ASSERT_FALSE(node.address.empty());
    ASSERT_EQ(cli.ferry({"trust", "--state", cli.state("B").string(), a_id, "--name", "ay", "--address", node.address})
                  .code,
              0);
    auto ls = [&] { return cli.ferry({"ls", "--state", cli.state("B").string(), "--json", "ay"}); };
    auto shares_of = [](const run_result& r) {
        std::vector<std::string> names;
        for (const auto& e : json_events(r.out)) {
            if (e["event"] == "share") {
                names.push_back(e["name"]);
            }
        }
        return names;
    };
    EXPECT_EQ(ls().code, 3);  // not trusted yet
    auto trust = [&](std::vector<std::string> args) {
        args.insert(args.begin(), {"trust", "--state", cli.state("A").string()});
        run_result r = cli.ferry(args);
        EXPECT_EQ(r.code, 0) << r.err;
    };
    trust({b_id, "--name", "bee"});
    run_result r = ls();
    EXPECT_EQ(r.code, 0) << r.err;
    EXPECT_EQ(shares_of(r), (std::vector<std::string>{"one", "two"}));
    trust({b_id, "--shares", "two"});
    r = ls();
    EXPECT_EQ(r.code, 0) << r.err;
    EXPECT_EQ(shares_of(r), (std::vector<std::string>{"two"}));
    trust({"--remove", "bee"});
    EXPECT_EQ(ls().code, 3);
    EXPECT_TRUE(node.proc->wait_for_err("trust list changed: read again (0 trusted peer(s))", 30s)) << node.proc->err();
    // A SIGHUP reads the list too: the next connection does not read it once more (it
    // told of a change that was none).
    trust({b_id, "--name", "bee"});
    node.proc->signal(SIGHUP);
    ASSERT_TRUE(node.proc->wait_for_err("reloaded: 1 trusted peer(s)", 30s)) << node.proc->err();
    const std::size_t reads = lines_with(node.proc->err(), "trust list changed: read again");
    EXPECT_EQ(ls().code, 0);
    run_result again = ls();  // (the first one's log lines are out by the end of the second)
    EXPECT_EQ(again.code, 0);
    EXPECT_EQ(lines_with(node.proc->err(), "trust list changed: read again"), reads) << node.proc->err();
    // A trust list another user may write is refused, and the one read before stays.
    trust({b_id});
    EXPECT_EQ(ls().code, 0);
    ASSERT_EQ(::chmod((cli.state("A") / "trusted.json").c_str(), 0666), 0);
    ASSERT_EQ(ls().code, 0);
    EXPECT_TRUE(node.proc->wait_for_err("trust list changed but not read again", 30s)) << node.proc->err();
    EXPECT_TRUE(wait_for_event(*node.proc, "trust_refused", 30s));  // for a script too (--json)
    run_result refused = cli.ferry({"trust", "--state", cli.state("A").string(), "--remove", b_id});
    EXPECT_EQ(refused.code, 4) << refused.err;
    EXPECT_NE(refused.err.find("may be written by any user (mode 0666)"), std::string::npos) << refused.err;
    node.proc->signal(SIGTERM);
    EXPECT_EQ(node.proc->wait(10s), 0) << node.proc->err();
}

TEST(service, sighup_reloads_trust_shares_and_limits_without_dropping_a_transfer) {
    ferry_cli cli;
    const std::string a_id = cli.id("A");
    const std::string b_id = cli.id("B");
    const fs::path one = cli.root() / "one";
    const fs::path two = cli.root() / "two";
    fs::create_directories(one);
    fs::create_directories(two);
    const fs::path conf = cli.root() / "a.toml";
    auto write_conf = [&](const std::string& shares_of_b, bool with_two, const std::string& extra) {
        write_conf_text(conf, "listen = [\"127.0.0.1:0\"]\nstate = \"" + cli.state("A").string() + "\"\n" + extra +
                                  "[[share]]\nname = \"one\"\npath = \"" + one.string() + "\"\naccess = \"rw\"\n" +
                                  (with_two ? "[[share]]\nname = \"two\"\npath = \"" + two.string() + "\"\n" : "") +
                                  "[[peer]]\nid = \"" + b_id + "\"\nname = \"bee\"\nshares = [" + shares_of_b + "]\n");
    };
    write_conf("\"one\"", false, "");
    ferry_cli::receiver node = cli.start({"serve", "--json", "--config", conf.string()});
    ASSERT_FALSE(node.address.empty());
    ASSERT_EQ(cli.ferry({"trust", "--state", cli.state("B").string(), a_id, "--name", "ay", "--address", node.address})
                  .code,
              0);
    auto shares_seen = [&] {
        run_result r = cli.ferry({"ls", "--state", cli.state("B").string(), "--json", "ay"});
        EXPECT_EQ(r.code, 0) << r.err;
        std::vector<std::string> names;
        for (const auto& e : json_events(r.out)) {
            if (e["event"] == "share") {
                names.push_back(e["name"]);
            }
        }
        return names;
    };
    EXPECT_EQ(shares_seen(), std::vector<std::string>{"one"});

    // A push into "one" held to 1 MiB/s, running while the node reloads.
    const fs::path src = cli.root() / "src";
    write_random_file(src / "big.bin", 3 * 1024 * 1024, 5);
    child_process pushing({FERRY_BINARY, "sync", "--state", cli.state("B").string(), "--json", "--bwlimit", "1M",
                           src.string(), "ay:one/site"});
    bool moving = false;  // until its first progress event: the transfer runs
    while (!moving) {
        std::optional<std::string> line = pushing.read_line(30s);
        ASSERT_TRUE(line) << pushing.err();
        moving = line->find("\"event\":\"progress\"") != std::string::npos;
    }
    write_conf("\"one\", \"two\"", true, "");
    node.proc->signal(SIGHUP);
    std::optional<std::string> reloaded = node.proc->wait_for_err("reloaded: 1 trusted peer(s), 2 share(s)", 30s);
    ASSERT_TRUE(reloaded) << node.proc->err();
    EXPECT_EQ(shares_seen(), (std::vector<std::string>{"one", "two"}));
    EXPECT_EQ(pushing.wait(60s), 0) << pushing.err();
    EXPECT_EQ(compare_trees(src, one / "site"), "");

    // A mistake in the file: refused, the running settings stay.
    write_conf_text(conf, "bogus = 1\n");
    node.proc->signal(SIGHUP);
    ASSERT_TRUE(node.proc->wait_for_err("reload refused", 30s)) << node.proc->err();
    EXPECT_NE(node.proc->err().find("bogus"), std::string::npos) << node.proc->err();
    bool told = false;  // --json: a reload_refused event with the mistake, not an error
    for (int i = 0; i < 200 && !told; ++i) {
        std::optional<std::string> line = node.proc->read_line(30s);
        ASSERT_TRUE(line) << node.proc->err();
        EXPECT_EQ(line->find("\"event\":\"error\""), std::string::npos) << *line;
        told = line->find("\"event\":\"reload_refused\"") != std::string::npos &&
               line->find("bogus") != std::string::npos;
    }
    EXPECT_TRUE(told);
    EXPECT_EQ(shares_seen(), (std::vector<std::string>{"one", "two"}));
    // A share whose folder is not there: the same, and no `error` event either (it gave
    // one, exit_code 1, as if serve had failed).
    write_conf_text(conf, "listen = [\"127.0.0.1:0\"]\nstate = \"" + cli.state("A").string() +
                              "\"\n[[share]]\nname = \"gone\"\npath = \"" + (cli.root() / "not-there").string() +
                              "\"\n");
    node.proc->signal(SIGHUP);
    told = false;
    for (int i = 0; i < 200 && !told; ++i) {
        std::optional<std::string> line = node.proc->read_line(30s);
        ASSERT_TRUE(line) << node.proc->err();
        EXPECT_EQ(line->find("\"event\":\"error\""), std::string::npos) << *line;
        told = line->find("\"event\":\"reload_refused\"") != std::string::npos;
    }
    EXPECT_TRUE(told);
    EXPECT_EQ(shares_seen(), (std::vector<std::string>{"one", "two"}));

    // What only a restart applies is named, and the rest is taken.
    write_conf("\"two\"", true, "inbox = \"" + (cli.root() / "elsewhere").string() + "\"\n");
    node.proc->signal(SIGHUP);
    std::optional<std::string> named = node.proc->wait_for_err("not applied until a restart: inbox", 30s);
    ASSERT_TRUE(named) << node.proc->err();
    EXPECT_EQ(shares_seen(), std::vector<std::string>{"two"});

    node.proc->signal(SIGTERM);
    EXPECT_EQ(node.proc->wait(10s), 0) << node.proc->err();
}

}  // namespace
