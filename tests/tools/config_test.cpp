// The configuration file's reader (tools/config.hpp): what a file gives, where its
// mistakes are reported, and how the command line wins over it.
#include "tools/config.hpp"

#include <gtest/gtest.h>

#include <cstdlib>
#include <fstream>

#include "tests/support/temp_dir.hpp"
#include "transport/identity.hpp"

namespace fs = std::filesystem;
using ferry::cli::config_error;
using ferry::cli::load_config;

namespace {

const std::string peer_id = "D7PZ-4ZBI-FRPP-6BB4-7PDP-CFNT-L6VA-BZKT";

class config_file_test : public ::testing::Test {
protected:
    ferry::test::temp_dir dir{"ferry-config"};

    fs::path write(const std::string& text) {
        fs::path p = dir / "config.toml";
        std::ofstream(p) << text;
        fs::permissions(p, static_cast<fs::perms>(0644));  // as its owner keeps it, whatever the umask
        return p;
    }
    // The message load_config throws for `text` ("" when it throws none).
    std::string error_of(const std::string& text) {
        try {
            load_config(write(text));
        } catch (const config_error& e) {
            return e.what();
        }
        return "";
    }
    std::string values_of(const ferry::cli::config_file& c) {
        std::string out;
        for (const auto& v : c.values) {
            out += v.flag + " " + v.value + "\n";
        }
        return out;
    }
};

TEST_F(config_file_test, every_setting_becomes_the_flag_that_takes_it_with_paths_resolved_beside_the_file) {
    fs::path file = write(R"(
listen = ["127.0.0.1:7788", "[::1]:7788"]
state = "st"
inbox = "~/in"
accept_any = false
partial_max_age = "2d"
congestion = "cubic"
log_level = "warn"

[limits]
max_sessions = 3
handshake_timeout = 10
max_bytes = "10G"

[metrics]
listen = "127.0.0.1:9188"

[tuning]
connections = 8
notsent_lowat = "128K"
sndbuf = "4M"
rcvbuf = 0
user_timeout = "30s"

[[share]]
name = "www"
path = "/srv/www"
access = "rw"

[[share]]
name = "docs"
path = "docs"

[[peer]]
id = ")" + peer_id + R"("
name = "bee"
address = "192.0.2.7:7788"
shares = ["www"]
)");
    const char* home = std::getenv("HOME");
    const std::string saved = home != nullptr ? home : "";
    ::setenv("HOME", "/home/someone", 1);
    ferry::cli::config_file c = load_config(file);
    if (home != nullptr) {
        ::setenv("HOME", saved.c_str(), 1);
    } else {
        ::unsetenv("HOME");
    }
    std::string root = dir.path().lexically_normal().string();
    // Top-level keys, the [limits] and [metrics] tables, then the shares, in that order.
    EXPECT_EQ(values_of(c), "--listen 127.0.0.1:7788\n--listen [::1]:7788\n--state " + root + "/st\n"
                            "--inbox /home/someone/in\n--accept-any false\n--partial-max-age 2d\n--congestion cubic\n"
                            "--log-level warn\n--max-sessions 3\n--handshake-timeout 10\n--max-bytes 10G\n--metrics 127.0.0.1:9188\n"
                            "--connections 8\n--notsent-lowat 128K\n--sndbuf 4M\n--rcvbuf 0\n--user-timeout 30s\n"
                            "--share www=/srv/www:rw\n--share docs=" + root + "/docs:ro\n");
    EXPECT_EQ(c.values[0].where, file.string() + ":2:10");
    ASSERT_EQ(c.peers.size(), 1u);
    EXPECT_EQ(c.peers[0].peer.name, "bee");
    EXPECT_EQ(c.peers[0].peer.address, "192.0.2.7:7788");
    ASSERT_TRUE(c.peers[0].peer.shares.has_value());
    EXPECT_EQ(*c.peers[0].peer.shares, std::vector<std::string>{"www"});
    EXPECT_EQ(c.peers[0].peer.id, *ferry::parse_node_id(peer_id));
    EXPECT_TRUE(c.peers[0].shares_given);
}

TEST_F(config_file_test, the_discovery_table_gives_every_discovery_flag) {
    ferry::cli::config_file c = load_config(write("[discovery]\nenabled = false\nname = \"desk\"\ninterval = \"10s\"\n"
                                                  "timeout = \"1m\"\nport = 7790\ngroup4 = \"239.1.2.3\"\n"
                                                  "group6 = \"\"\n"));
    EXPECT_EQ(values_of(c), "--discovery false\n--name desk\n--discovery-interval 10s\n--discovery-timeout 1m\n"
                            "--discovery-port 7790\n--discovery-group4 239.1.2.3\n--discovery-group6 \n");
    const std::string f = (dir / "config.toml").string();
    EXPECT_EQ(error_of("[discovery]\nintervall = \"10s\"\n"), f + ":2:1: unknown key \"intervall\" in [discovery]");
    EXPECT_EQ(error_of("[discovery]\nenabled = \"no\"\n"), f + ":2:11: enabled: expected true or false");
}

TEST_F(config_file_test, a_peer_given_every_share_says_so_and_one_without_shares_does_not) {
    ferry::cli::config_file c = load_config(write("[[peer]]\nid = \"" + peer_id + "\"\nshares = [\"*\"]\n"));
    ASSERT_EQ(c.peers.size(), 1u);
    EXPECT_TRUE(c.peers[0].shares_given);
    EXPECT_FALSE(c.peers[0].peer.shares.has_value());  // every share
    c = load_config(write("[[peer]]\nid = \"" + peer_id + "\"\n"));
    EXPECT_FALSE(c.peers[0].shares_given);
}

TEST_F(config_file_test, a_mistake_is_reported_at_its_line_and_column) {
    const std::string f = (dir / "config.toml").string();
    EXPECT_EQ(error_of("inbox = \"x\"\nbogus = 1\n"), f + ":2:1: unknown key \"bogus\"");
    EXPECT_EQ(error_of("[limits]\nmax_sesions = 3\n"), f + ":2:1: unknown key \"max_sesions\" in [limits]");
    EXPECT_EQ(error_of("listen = 5\n"), f + ":1:10: listen: expected a string or an array of strings");
    EXPECT_EQ(error_of("[limits]\nmax_files = -1\n"), f + ":2:13: max_files: expected a whole number, 0 or more");
    EXPECT_EQ(error_of("overwrite = \"yes\"\n"), f + ":1:13: overwrite: expected true or false");
    // A count the flag would refuse is refused here, at its place (`config check` said ok).
    EXPECT_EQ(error_of("[tuning]\nconnections = 17\n"), f + ":2:15: connections: expected a whole number from 1 to 16");
    EXPECT_EQ(error_of("[tuning]\nconnections = 0\n"), f + ":2:15: connections: expected a whole number from 1 to 16");
    EXPECT_EQ(error_of("[discovery]\nport = 70000\n"), f + ":2:8: port: expected a whole number from 1 to 65535");
    EXPECT_EQ(error_of("[[share]]\nname = \"w\"\npath = \"/x\"\naccess = \"rx\"\n"),
              f + ":4:10: access: expected \"ro\" or \"rw\"");
    EXPECT_EQ(error_of("[[share]]\nname = \"w\"\nmode = \"rw\"\n"), f + ":3:1: unknown key \"mode\" in [[share]]");
    EXPECT_EQ(error_of("[[share]]\nname = \"w\"\n"), f + ":1:1: [[share]] needs a name and a path");
    EXPECT_EQ(error_of("[[peer]]\nid = \"nope\"\n"), f + ":2:6: id: \"nope\" is not a node ID (as `ferry id` prints it)");
    EXPECT_EQ(error_of("[[peer]]\nid = \"" + peer_id + "\"\n[[peer]]\nid = \"" + peer_id + "\"\n"),
              f + ":3:1: this peer is already declared at " + f + ":1:1");
    EXPECT_EQ(error_of("metrics = 9188\n"), f + ":1:11: metrics: expected a table ([metrics])");
    EXPECT_EQ(error_of("listen = []\n"), f + ":1:10: listen: an empty list");
    EXPECT_EQ(error_of("[[share]]\nname = \"a=b\"\npath = \"/x\"\n"),
              f + ":2:8: name: a share name is letters, digits, '-', '_' and '.' (at most 64)");
    EXPECT_EQ(error_of("[[peer]]\nid = \"" + peer_id + "\"\nname = \"a b\"\n"),
              f + ":3:8: name: a peer name is 1 to 64 bytes without '@', ':', '/' or spaces, and not a node ID");
    EXPECT_EQ(error_of("[[peer]]\nid = \"" + peer_id + "\"\naddress = \"host\"\n"),
              f + ":3:11: address: expected HOST:PORT ([::1]:PORT for IPv6)");
    EXPECT_EQ(error_of("[[peer]]\nid = \"" + peer_id + "\"\nshares = [\"w w\"]\n"),
              f + ":3:10: shares: \"w w\" is not a share name (letters, digits, '-', '_', '.')");
    // Syntax: the parser's own words, at its place.
    std::string syntax = error_of("listen = [\n");
    EXPECT_EQ(syntax.rfind(f + ":", 0), 0u) << syntax;
    EXPECT_NE(syntax.find("array"), std::string::npos) << syntax;
}

TEST_F(config_file_test, a_missing_file_is_an_error_naming_it) {
    fs::path missing = dir / "nope.toml";
    try {
        load_config(missing);
        FAIL() << "no error";
    } catch (const config_error& e) {
        EXPECT_EQ(std::string(e.what()).rfind(missing.string() + ": ", 0), 0u) << e.what();
    }
}

TEST_F(config_file_test, the_command_line_wins_and_values_go_through_the_flags_own_checks) {
    CLI::App app;
    std::vector<std::string> listen{"0.0.0.0:7788"};
    std::uint32_t sessions = 8;
    std::uint64_t max_bytes = 0;
    app.add_option("--listen", listen);
    app.add_option("--max-sessions", sessions)->check(CLI::Range(1u, 10000u));
    app.add_option("--max-bytes", max_bytes)->transform(CLI::AsSizeValue(false));
    app.parse(std::vector<std::string>{"9", "--max-sessions"});  // reversed: --max-sessions 9

    ferry::cli::config_file c = load_config(write("listen = [\"127.0.0.1:1\", \"[::1]:2\"]\n"
                                                  "[limits]\nmax_sessions = 3\nmax_bytes = \"2K\"\n"));
    ferry::cli::apply_config(c, app);
    EXPECT_EQ(listen, (std::vector<std::string>{"127.0.0.1:1", "[::1]:2"}));
    EXPECT_EQ(sessions, 9u);  // given on the command line
    EXPECT_EQ(max_bytes, 2048u);

    // A repeatable option given on the command line replaces all of the file's values; a
    // flag takes the file's true, and its --no- form given on the command line wins.
    {
        CLI::App cmd;
        std::vector<std::string> l{"0.0.0.0:7788"};
        bool overwrite = false;
        bool fsync_each = false;
        cmd.add_option("--listen", l);
        cmd.add_flag("--overwrite,!--no-overwrite", overwrite);
        cmd.add_flag("--fsync-each,!--no-fsync-each", fsync_each);
        cmd.parse(std::vector<std::string>{"--no-fsync-each", "127.0.0.1:9", "--listen"});
        ferry::cli::apply_config(load_config(write("listen = [\"127.0.0.1:1\", \"[::1]:2\"]\n"
                                                   "overwrite = true\nfsync_each = true\n")),
                                 cmd);
        EXPECT_EQ(l, std::vector<std::string>{"127.0.0.1:9"});
        EXPECT_TRUE(overwrite);
        EXPECT_FALSE(fsync_each);
    }

    CLI::App fresh;
    fresh.add_option("--max-sessions", sessions)->check(CLI::Range(1u, 10000u));
    fresh.parse(std::vector<std::string>{});
    ferry::cli::config_file zero = load_config(write("[limits]\nmax_sessions = 0\n"));
    try {
        ferry::cli::apply_config(zero, fresh);
        FAIL() << "no error";
    } catch (const config_error& e) {
        std::string what = e.what();
        EXPECT_EQ(what.rfind((dir / "config.toml").string() + ":2:16: --max-sessions", 0), 0u) << what;
        EXPECT_NE(what.find("not in range"), std::string::npos) << what;
    }
}

}  // namespace
