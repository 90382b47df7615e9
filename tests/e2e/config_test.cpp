// End-to-end configuration files: a `ferry serve` started from its file alone (listen
// addresses, state, inbox, shares, trusted peers) takes a `ferry sync` from a peer that
// names it through its own file; `ferry config check` reports a mistake at its place.
#include <sys/stat.h>

#include <gtest/gtest.h>

#include <csignal>
#include <fstream>
#include <nlohmann/json.hpp>

#include "tests/support/ferry_cli.hpp"
#include "tests/support/tree.hpp"

namespace fs = std::filesystem;
using namespace ferry::test;
using namespace std::chrono_literals;

namespace {

// A configuration file as its owner keeps it: ferry refuses one its group or others may
// write, whatever the umask the tests run under.
void write_file(const fs::path& p, const std::string& text) {
    write_text_file(p, text);
    fs::permissions(p, static_cast<fs::perms>(0644));
}

TEST(config_file, serve_runs_from_its_file_alone_and_a_peer_named_in_another_file_syncs_into_its_share) {
    ferry_cli cli;
    const std::string a_id = cli.id("A");
    const std::string b_id = cli.id("B");
    const fs::path share = cli.root() / "share";
    fs::create_directories(share);
    const fs::path a_conf = cli.root() / "a" / "config.toml";
    write_file(a_conf, "listen = [\"127.0.0.1:0\", \"127.0.0.2:0\"]\n"
                       "state = \"" + cli.state("A").string() + "\"\n"
                       "inbox = \"inbox\"\n"
                       "log_level = \"warn\"\n"
                       "[limits]\nmax_sessions = 2\n"
                       "[tuning]\nsndbuf = \"2M\"\nuser_timeout = \"45s\"\nconnections = 3\n"
                       "[[share]]\nname = \"www\"\npath = \"" + share.string() + "\"\naccess = \"rw\"\n"
                       "[[share]]\nname = \"docs\"\npath = \"" + share.string() + "\"\n"
                       "[[peer]]\nid = \"" + b_id + "\"\nname = \"bee\"\nshares = [\"www\"]\n");
    ferry_cli::receiver node = cli.start({"serve", "--json"}, {"FERRY_CONFIG=" + a_conf.string()});
    ASSERT_FALSE(node.address.empty());
    EXPECT_EQ(node.id, a_id);
    // The second address is announced too, and `ferry status` (the state folder from the
    // same file) lists both.
    std::optional<std::string> second = node.proc->read_line(30s);
    ASSERT_TRUE(second);
    EXPECT_EQ(nlohmann::json::parse(*second).value("event", ""), "listening") << *second;
    run_result st = cli.ferry({"status", "--json", "--config", a_conf.string()});
    ASSERT_EQ(st.code, 0) << st.err;
    nlohmann::json status = nlohmann::json::parse(st.out, nullptr, false);
    ASSERT_EQ(status["listen_addresses"].size(), 2u) << st.out;
    // `ferry config show` gives what serve took: the inbox relative to the file's folder.
    run_result show = cli.ferry({"config", "show", "--json", "--config", a_conf.string()});
    ASSERT_EQ(show.code, 0) << show.err;
    nlohmann::json settings = find_event(json_events(show.out), "config")["settings"];
    EXPECT_EQ(settings["inbox"], (cli.root() / "a" / "inbox").string()) << show.out;
    EXPECT_EQ(settings["limits"]["max_sessions"], 2) << show.out;
    EXPECT_EQ(settings["share"].size(), 2u) << show.out;
    EXPECT_EQ(settings["tuning"]["sndbuf"], 2 * 1024 * 1024) << show.out;
    EXPECT_EQ(settings["tuning"]["user_timeout"], "45s") << show.out;
    EXPECT_EQ(settings["log_level"], "warn") << show.out;             // (it was left out)
    EXPECT_EQ(settings["tuning"]["connections"], 3) << show.out;  // (so was this)

    // B knows A by name from its own file: NAME:SHARE works without `ferry trust`.
    const fs::path b_conf = cli.root() / "b.toml";
    write_file(b_conf, "state = \"" + cli.state("B").string() + "\"\n"
                       "[tuning]\nconnections = 2\n"
                       "[[peer]]\nid = \"" + a_id + "\"\nname = \"ay\"\naddress = \"" + node.address + "\"\n");
    const fs::path src = cli.root() / "src";
    for (int i = 0; i < 20; ++i) {
        write_random_file(src / ("d" + std::to_string(i % 3)) / ("f" + std::to_string(i)), 3000 + 1000 * i, i);
    }
    run_result r = cli.ferry({"sync", "--json", "--config", b_conf.string(), src.string(), "ay:www/site"});
    ASSERT_EQ(r.code, 0) << r.err;
    EXPECT_EQ(compare_trees(src, share / "site"), "");
    EXPECT_EQ(find_event(json_events(r.out), "connected")["connections"], 2) << r.out;  // the file's [tuning]
    // The file gives B the www share only: docs is refused.
    run_result refused = cli.ferry({"sync", "--json", "--config", b_conf.string(), src.string(), "ay:docs/site"});
    EXPECT_EQ(refused.code, 2) << refused.err;
    EXPECT_NE(refused.err.find("docs"), std::string::npos) << refused.err;
    // Nothing of the file's peers was written to either trust list.
    EXPECT_FALSE(fs::exists(cli.state("A") / "trusted.json"));
    EXPECT_FALSE(fs::exists(cli.state("B") / "trusted.json"));

    node.proc->signal(SIGTERM);
    EXPECT_EQ(node.proc->wait(10s), 0) << node.proc->err();
}

TEST(config_file, ferry_trust_meets_the_files_peers_and_changes_nothing_it_refuses) {
    ferry_cli cli;
    const std::string a_id = cli.id("A");
    const std::string b_id = cli.id("B");
    const std::string c_id = cli.id("C");
    const fs::path conf = cli.root() / "a.toml";
    write_file(conf, "state = \"" + cli.state("A").string() + "\"\n[[peer]]\nid = \"" + b_id + "\"\nname = \"bee\"\n");
    const std::string state = cli.state("A").string();
    ASSERT_EQ(cli.ferry({"trust", "--state", state, b_id, "--shares", "www", "--name", "web1"}).code, 0);
    const std::string list = read_text_file(cli.state("A") / "trusted.json");
    // --remove of a peer the file declares (by ID, by its name there, or by the list's
    // name for it): refused, and the list is as it was (B's entry, which limits its
    // shares, went).
    for (const std::string& who : {b_id, std::string("bee"), std::string("web1")}) {
        run_result r = cli.ferry({"trust", "--config", conf.string(), "--remove", who});
        EXPECT_EQ(r.code, 1) << r.err;
        EXPECT_NE(r.err.find("is declared at " + conf.string() + ":2:1 and stays trusted"), std::string::npos) << r.err;
        EXPECT_EQ(read_text_file(cli.state("A") / "trusted.json"), list);
    }
    // The file's name for another ID: refused with the file; taken without it, and then
    // the file's name wins (serve started: it failed, and a running node kept its old
    // list for good).
    run_result clash = cli.ferry({"trust", "--config", conf.string(), c_id, "--name", "bee"});
    EXPECT_EQ(clash.code, 1) << clash.err;
    EXPECT_NE(clash.err.find("the [[peer]] at " + conf.string() + ":2:1"), std::string::npos) << clash.err;
    // Another name for the peer the file names: taken into the list, and the user told
    // that the file's name is the one used (it said "trusted as other" alone).
    run_result renamed = cli.ferry({"trust", "--config", conf.string(), b_id, "--name", "other"});
    EXPECT_EQ(renamed.code, 0) << renamed.err;
    EXPECT_NE(renamed.err.find("names this peer \"bee\", and the configuration file's name is the one used"),
              std::string::npos)
        << renamed.err;
    ASSERT_EQ(cli.ferry({"trust", "--state", state, c_id, "--name", "bee"}).code, 0);
    run_result check = cli.ferry({"config", "check", conf.string()});
    EXPECT_EQ(check.code, 0) << check.err;
    ferry_cli::receiver node = cli.start({"serve", "--json", "--config", conf.string(), "--listen", "127.0.0.1:0"});
    ASSERT_FALSE(node.address.empty()) << node.proc->err();
    node.proc->signal(SIGTERM);
    EXPECT_EQ(node.proc->wait(10s), 0) << node.proc->err();
    // A trust list that is not a regular file is refused, not opened (a FIFO blocked).
    fs::remove(cli.state("A") / "trusted.json");
    ASSERT_EQ(::mkfifo((cli.state("A") / "trusted.json").c_str(), 0600), 0);
    run_result fifo = cli.ferry({"trust", "--state", state, c_id});
    EXPECT_EQ(fifo.code, 4) << fifo.err;
    EXPECT_NE(fifo.err.find("not a regular file"), std::string::npos) << fifo.err;
}

TEST(config_file, a_flag_overrides_the_file_and_a_mistake_stops_serve_with_its_place) {
    ferry_cli cli;
    const fs::path conf = cli.root() / "config.toml";
    write_file(conf, "listen = [\"127.0.0.1:1\"]\nstate = \"" + cli.state("A").string() + "\"\n");
    // --listen on the command line replaces the file's (port 1 could not be bound).
    ferry_cli::receiver node = cli.start({"serve", "--json", "--listen", "127.0.0.1:0", "--config", conf.string()});
    ASSERT_FALSE(node.address.empty());
    EXPECT_NE(node.address, "127.0.0.1:1");
    node.proc->signal(SIGTERM);
    EXPECT_EQ(node.proc->wait(10s), 0) << node.proc->err();

    write_file(conf, "state = \"" + cli.state("A").string() + "\"\n[limits]\nmax_sesions = 3\n");
    run_result check = cli.ferry({"config", "check", conf.string()});
    EXPECT_EQ(check.code, 1);
    EXPECT_NE(check.err.find(conf.string() + ":3:1: unknown key \"max_sesions\" in [limits]"), std::string::npos)
        << check.err;
    run_result serve = cli.ferry({"serve", "--config", conf.string()});
    EXPECT_EQ(serve.code, 1);
    EXPECT_NE(serve.err.find(conf.string() + ":3:1"), std::string::npos) << serve.err;
    // A mistake between two keys is placed at one of them (it had no place).
    write_file(conf, "[discovery]\ninterval = \"10s\"\ntimeout = \"5s\"\n");
    run_result pair = cli.ferry({"config", "check", conf.string()});
    EXPECT_EQ(pair.code, 1);
    EXPECT_NE(pair.err.find(conf.string() + ":3:11: --discovery-timeout must be longer"), std::string::npos)
        << pair.err;
    // A share's folder that does not exist is placed at its path.
    write_file(conf, "state = \"" + cli.state("A").string() + "\"\n[[share]]\nname = \"x\"\n\npath = \"" +
                         (cli.root() / "nope").string() + "\"\n");
    run_result gone = cli.ferry({"config", "check", conf.string()});
    EXPECT_EQ(gone.code, 1);
    EXPECT_NE(gone.err.find(conf.string() + ":5:8: --share"), std::string::npos) << gone.err;
    // A [[peer]] with the node's own ID, as `ferry trust` refuses it.
    const std::string own = cli.id("A");
    write_file(conf, "state = \"" + cli.state("A").string() + "\"\n[[peer]]\nid = \"" + own + "\"\n");
    run_result self = cli.ferry({"config", "check", conf.string()});
    EXPECT_EQ(self.code, 1);
    EXPECT_NE(self.err.find(conf.string() + ":2:1: " + own + " is this node's own ID"), std::string::npos) << self.err;
    // A file others may write is refused: its [[peer]]s are trusted.
    write_file(conf, "state = \"" + cli.state("A").string() + "\"\n");
    fs::permissions(conf, static_cast<fs::perms>(0666));
    run_result open = cli.ferry({"config", "check", conf.string()});
    EXPECT_EQ(open.code, 1);
    EXPECT_NE(open.err.find("the configuration file may be written by any user (mode 0666)"), std::string::npos)
        << open.err;
    // A file named by FERRY_CONFIG must exist.
    run_result missing = cli.ferry({"id"}, {"FERRY_CONFIG=" + (cli.root() / "nope.toml").string()});
    EXPECT_EQ(missing.code, 1);
    EXPECT_NE(missing.err.find("nope.toml"), std::string::npos) << missing.err;
}

}  // namespace
