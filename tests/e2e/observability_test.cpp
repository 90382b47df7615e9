// End-to-end: what ferry reports about itself. The --json event stream of both sides
// (every line parses, "t" never goes back, confirmed bytes never decrease and end at the
// total, the summary's figures agree with each other and with the other side), and a
// live `ferry serve` seen through `ferry status` and /metrics while a transfer runs.
#include <fcntl.h>
#include <poll.h>
#include <pty.h>
#include <sys/wait.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <asio.hpp>
#include <csignal>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>

#include "tests/support/ferry_cli.hpp"
#include "tests/support/http_get.hpp"
#include "tests/support/stale_socket.hpp"
#include "tests/support/tree.hpp"

namespace fs = std::filesystem;
using namespace ferry::test;
using nlohmann::json;

namespace {

// Checks the rules every --json stream follows and returns its `done` event.
json check_stream(const std::vector<json>& lines, std::uint64_t expect_total, std::size_t expect_files,
                  std::uint64_t expect_skipped = 0) {
    EXPECT_FALSE(lines.empty());
    if (lines.empty()) {
        return {};
    }
    EXPECT_EQ(lines.front().value("schema", 0), 1) << lines.front();
    double t = 0;
    std::uint64_t confirmed = 0;
    std::size_t progress = 0;
    std::size_t started = 0;
    std::size_t finished = 0;
    json last_progress;
    json done;
    double last_progress_t = -1;
    for (const json& j : lines) {
        EXPECT_GE(j["t"].get<double>(), t) << j;
        t = j["t"].get<double>();
        std::string ev = j["event"];
        if (ev == "progress") {
            ++progress;
            for (const char* key : {"confirmed_bytes", "inflight_bytes", "wire_bytes_sent", "total_bytes"}) {
                EXPECT_TRUE(j.contains(key) && j[key].is_number_unsigned()) << key << " in " << j;
            }
            EXPECT_GE(j["confirmed_bytes"].get<std::uint64_t>(), confirmed) << j;
            confirmed = j["confirmed_bytes"];
            EXPECT_LE(confirmed + j["skipped_bytes"].get<std::uint64_t>(), j["total_bytes"].get<std::uint64_t>()) << j;
            // At most 4 a second: periodic events are >= 250 ms apart (the final one, which
            // comes right before `done`, may follow sooner).
            bool final_one = &j == &lines.back() - 1;
            if (last_progress_t >= 0 && !final_one) {
                EXPECT_GE(j["t"].get<double>() - last_progress_t, 0.24) << j;
            }
            last_progress_t = j["t"].get<double>();
            last_progress = j;
        } else if (ev == "file_start") {
            ++started;
        } else if (ev == "file_done") {
            ++finished;
        } else if (ev == "done") {
            done = j;
        }
    }
    EXPECT_GE(progress, 1u);
    EXPECT_EQ(last_progress["confirmed_bytes"], expect_total - expect_skipped) << last_progress;
    EXPECT_EQ(last_progress["skipped_bytes"], expect_skipped) << last_progress;
    EXPECT_EQ(last_progress["total_bytes"], expect_total) << last_progress;
    EXPECT_EQ(last_progress["inflight_bytes"], 0u) << last_progress;
    EXPECT_EQ(started, expect_files);
    EXPECT_EQ(finished, expect_files);
    EXPECT_FALSE(done.is_null());
    EXPECT_EQ(lines.back()["event"], "done");
    return done;
}


// Checks a whole Prometheus text exposition: every sample belongs to a family announced
// by # TYPE before it, values parse, histogram buckets are cumulative and +Inf == _count.
void check_exposition(const std::string& text) {
    std::map<std::string, std::string> types;
    std::map<std::string, double> last_bucket;
    std::map<std::string, double> inf_bucket;
    std::size_t start = 0;
    while (start < text.size()) {
        std::size_t nl = text.find('\n', start);
        ASSERT_NE(nl, std::string::npos) << "the exposition must end with a newline";
        std::string line = text.substr(start, nl - start);
        start = nl + 1;
        if (line.rfind("# TYPE ", 0) == 0) {
            std::string rest = line.substr(7);
            types[rest.substr(0, rest.find(' '))] = rest.substr(rest.find(' ') + 1);
            continue;
        }
        if (line.rfind("# HELP ", 0) == 0) {
            continue;
        }
        ASSERT_FALSE(line.empty() || line[0] == '#') << line;
        std::size_t name_end = line.find_first_of("{ ");
        std::string name = line.substr(0, name_end);
        std::string family = name;
        for (const char* suffix : {"_bucket", "_sum", "_count"}) {
            if (family.ends_with(suffix) && types.count(family.substr(0, family.size() - std::strlen(suffix)))) {
                family = family.substr(0, family.size() - std::strlen(suffix));
            }
        }
        ASSERT_TRUE(types.count(family)) << "no # TYPE before " << line;
        double value = std::stod(line.substr(line.rfind(' ') + 1));
        EXPECT_GE(value, 0) << line;
        if (name.ends_with("_bucket")) {
            EXPECT_EQ(types[family], "histogram") << line;
            EXPECT_GE(value, last_bucket[family]) << "buckets must be cumulative: " << line;
            last_bucket[family] = value;
            if (line.find("le=\"+Inf\"") != std::string::npos) {
                inf_bucket[family] = value;
            }
        } else if (name.ends_with("_count") && types[family] == "histogram") {
            ASSERT_TRUE(inf_bucket.count(family)) << line;
            EXPECT_EQ(value, inf_bucket[family]) << line;
        }
    }
    EXPECT_EQ(types["ferry_wire_bytes_sent_total"], "counter");
    EXPECT_EQ(types["ferry_connections"], "gauge");
    EXPECT_EQ(types["ferry_chunk_rtt_seconds"], "histogram");
}

// The value of one sample line ("name{labels} value") of a Prometheus exposition.
double metric(const std::string& text, const std::string& sample) {
    std::size_t at = text.find("\n" + sample + " ");
    EXPECT_NE(at, std::string::npos) << sample << " missing in\n" << text;
    if (at == std::string::npos) {
        return -1;
    }
    return std::stod(text.substr(at + sample.size() + 2));
}

// What a terminal shows after `raw` was written to it: handles the only controls the
// progress view uses (\r, \n, ESC[nA cursor up, ESC[J erase to the end of the screen).
// Returns the lines left on screen; fails the test on any other escape sequence.
std::vector<std::string> render_terminal(const std::string& raw) {
    std::vector<std::string> screen(1);
    std::size_t row = 0;
    std::size_t col = 0;
    for (std::size_t i = 0; i < raw.size(); ++i) {
        char ch = raw[i];
        if (ch == '\r') {
            col = 0;
        } else if (ch == '\n') {
            ++row;
            col = 0;
            if (row >= screen.size()) {
                screen.resize(row + 1);
            }
        } else if (ch == '\x1b') {
            std::size_t end = raw.find_first_of("ABCDHJK", i);
            if (end == std::string::npos || raw[i + 1] != '[') {
                ADD_FAILURE() << "unexpected escape at " << i;
                break;
            }
            std::string arg = raw.substr(i + 2, end - i - 2);
            if (raw[end] == 'A') {
                std::size_t n = arg.empty() ? 1 : std::stoul(arg);
                row = n > row ? 0 : row - n;
            } else if (raw[end] == 'J') {
                screen[row].resize(std::min(screen[row].size(), col));
                screen.resize(row + 1);
            } else {
                ADD_FAILURE() << "unexpected escape sequence ESC[" << arg << raw[end];
            }
            i = end;
        } else {
            std::string& line = screen[row];
            if (line.size() < col + 1) {
                line.resize(col + 1, ' ');
            }
            line[col++] = ch;
        }
    }
    while (!screen.empty() && screen.back().empty()) {
        screen.pop_back();
    }
    return screen;
}

// Runs argv with stderr on a pseudo-terminal of 80 columns (stdin and stdout: /dev/null)
// and returns everything written to the terminal, once the program exited.
struct term_run {
    int exit_code = -1;
    std::string raw;
};
term_run run_on_terminal(const std::vector<std::string>& args) {
    term_run out;
    int master = -1;
    int slave = -1;
    winsize ws{};
    ws.ws_col = 80;  // too narrow for bar and figures: the bar gives way, nothing wraps
    ws.ws_row = 40;
    if (::openpty(&master, &slave, nullptr, nullptr, &ws) != 0) {
        ADD_FAILURE() << "openpty failed";
        return out;
    }
    std::vector<char*> argv;
    for (const std::string& a : args) {
        argv.push_back(const_cast<char*>(a.c_str()));
    }
    argv.push_back(nullptr);
    pid_t pid = ::fork();
    if (pid == 0) {
        int devnull = ::open("/dev/null", O_RDWR);
        ::dup2(devnull, 0);
        ::dup2(devnull, 1);
        ::dup2(slave, 2);
        ::execv(argv[0], argv.data());
        ::_exit(127);
    }
    ::close(slave);
    for (;;) {  // until the child closes the terminal (bounded by the poll timeout)
        pollfd p{master, POLLIN, 0};
        if (::poll(&p, 1, 120'000) <= 0) {
            break;
        }
        char buf[4096];
        ssize_t n = ::read(master, buf, sizeof buf);
        if (n <= 0) {
            break;  // EIO once the child exited
        }
        out.raw.append(buf, static_cast<std::size_t>(n));
    }
    ::close(master);
    int status = 0;
    if (pid > 0 && ::waitpid(pid, &status, 0) == pid && WIFEXITED(status)) {
        out.exit_code = WEXITSTATUS(status);
    }
    return out;
}

class observability : public ::testing::Test {
protected:
    ferry_cli cli;
    std::string a_id = cli.id("A");
    std::string b_id = cli.id("B");

    // Starts sending a large sparse file (8 GiB: it keeps the transfer running while a
    // test looks) and returns once the sender reports confirmed bytes; null on failure.
    std::unique_ptr<child_process> send_until_flowing(const std::string& target,
                                                      const std::vector<std::string>& extra = {}) {
        fs::path big = cli.root() / "big.sparse";
        if (!fs::exists(big)) {
            std::ofstream f(big);
        }
        fs::resize_file(big, 8ull << 30);
        std::vector<std::string> argv{FERRY_BINARY, "send", "--state", cli.state("B").string(), "--json"};
        argv.insert(argv.end(), extra.begin(), extra.end());
        argv.push_back(big.string());
        argv.push_back(target);
        auto sender = std::make_unique<child_process>(argv);
        for (int i = 0; i < 100; ++i) {
            auto line = sender->read_line(process_timeout);
            if (!line) {
                break;
            }
            json j = json::parse(*line, nullptr, false);
            if (j.value("event", "") == "progress" && j.value("confirmed_bytes", 0ull) > 0) {
                return sender;
            }
        }
        ADD_FAILURE() << "the sender never reported confirmed bytes: " << sender->err();
        return nullptr;
    }

    void SetUp() override {
        ASSERT_EQ(cli.ferry({"trust", b_id, "--state", cli.state("A").string()}).code, 0);
        ASSERT_EQ(cli.ferry({"trust", a_id, "--state", cli.state("B").string()}).code, 0);
    }
};

TEST_F(observability, json_streams_of_both_sides_are_well_formed_and_agree) {
    fs::path src = cli.root() / "src";
    std::uint64_t total = 0;
    for (int i = 0; i < 40; ++i) {
        std::uint64_t size = 1000 + static_cast<std::uint64_t>(i) * 7919;
        write_random_file(src / ("d" + std::to_string(i % 3)) / ("f" + std::to_string(i)), size, 50 + i);
        total += size;
    }
    write_random_file(src / "big.bin", 24 * 1024 * 1024 + 5, 9);
    total += 24 * 1024 * 1024 + 5;
    write_text_file(src / "empty", "");
    const std::size_t files = 42;

    auto rx = cli.start({"receive", "--state", cli.state("A").string(), "--listen", "127.0.0.1:0", "--json",
                         (cli.root() / "inbox").string()});
    run_result s = cli.ferry({"send", "--state", cli.state("B").string(), "--json", src.string(), a_id + "@" + rx.address});
    ASSERT_EQ(s.code, 0) << s.err;
    ASSERT_EQ(rx.proc->wait(process_timeout), 0) << rx.proc->err();
    EXPECT_EQ(compare_trees(src, cli.root() / "inbox" / "src"), "");
    // Not a terminal: no escape codes on stderr.
    EXPECT_EQ(s.err.find('\x1b'), std::string::npos) << s.err;

    json sent = check_stream(json_events(s.out), total, files);
    // The receiver's stream: its first line (listening) was read by start().
    std::vector<json> rx_lines = json_events(rx.first_line + "\n" + rx.proc->out());
    EXPECT_EQ(rx_lines.front()["event"], "listening");
    json received = check_stream(rx_lines, total, files);
    // Both sides name the same session in their summaries.
    EXPECT_EQ(received["session"], sent["session"]);
    EXPECT_EQ(received["session"].get<std::string>().size(), 32u);

    for (const json* d : {&sent, &received}) {
        const json& done = *d;
        EXPECT_EQ(done["payload_bytes"], total) << done;
        double elapsed = done["elapsed_s"];
        EXPECT_GT(elapsed, 0);
        EXPECT_NEAR(done["payload_MBps"].get<double>(), static_cast<double>(total) / elapsed / 1e6, 1e-6) << done;
        EXPECT_GE(done["ttfb_s"].get<double>(), 0.0) << done;
        EXPECT_LE(done["ttfb_s"].get<double>(), elapsed) << done;
        EXPECT_EQ(done["connections"], 4) << done;
        EXPECT_EQ(done["compression_saved_bytes"], 0) << done;
    }
    // Wire bytes: what one side's sockets sent, the other's received (TLS included);
    // more than the payload, by little.
    std::uint64_t wire = sent["wire_bytes_sent"];
    EXPECT_GT(wire, total);
    EXPECT_LT(wire, total + total / 20);
    // Each summary is taken when that side finishes: the receiver's before its last
    // frames and close_notify, the sender's after the receiver's TransferResult.
    EXPECT_LE(received["wire_bytes_received"].get<std::uint64_t>(), wire) << received;
    EXPECT_GE(received["wire_bytes_received"].get<std::uint64_t>() + 1024, wire) << received;
    EXPECT_LE(received["wire_bytes_sent"].get<std::uint64_t>(), sent["wire_bytes_received"].get<std::uint64_t>());
    EXPECT_GE(received["wire_bytes_sent"].get<std::uint64_t>() + 1024, sent["wire_bytes_received"].get<std::uint64_t>());
    EXPECT_NEAR(sent["overhead_pct"].get<double>(),
                100.0 * static_cast<double>(wire - total) / static_cast<double>(total), 1e-9);

    // The same tree again: everything is already there and skipped; the figures say so.
    auto again = cli.start({"receive", "--state", cli.state("A").string(), "--listen", "127.0.0.1:0", "--json",
                            (cli.root() / "inbox").string()});
    run_result s2 =
        cli.ferry({"send", "--state", cli.state("B").string(), "--json", src.string(), a_id + "@" + again.address});
    ASSERT_EQ(s2.code, 0) << s2.err;
    ASSERT_EQ(again.proc->wait(process_timeout), 0) << again.proc->err();
    json skipped = check_stream(json_events(s2.out), total, files, total);
    EXPECT_EQ(skipped["payload_bytes"], 0u);
    EXPECT_EQ(skipped["skipped_bytes"], total);
    EXPECT_EQ(skipped["skipped_files"], files);
}

TEST_F(observability, on_a_terminal_bars_are_drawn_and_only_the_summary_stays) {
    fs::path src = cli.root() / "src";
    // Large enough to last several redraws (100 ms apart) on a fast machine: sparse, so
    // it costs no disk on the sending side.
    fs::create_directories(src);
    {
        std::ofstream f(src / "a.bin");
    }
    fs::resize_file(src / "a.bin", 384ull << 20);
    for (int i = 0; i < 20; ++i) {
        write_random_file(src / "small" / ("f" + std::to_string(i)), 5000, 70 + i);
    }
    auto rx = cli.start({"receive", "--state", cli.state("A").string(), "--listen", "127.0.0.1:0", "--json",
                         (cli.root() / "inbox").string()});
    term_run run = run_on_terminal({FERRY_BINARY, "send", "--state", cli.state("B").string(), src.string(),
                                    a_id + "@" + rx.address});
    EXPECT_EQ(run.exit_code, 0) << run.raw;
    EXPECT_EQ(rx.proc->wait(process_timeout), 0);
    std::string raw = run.raw;
    // The terminal translates \n to \r\n; the renderer handles both.
    EXPECT_NE(raw.find("\x1b[1A"), std::string::npos) << "no bar was redrawn: " << raw;
    EXPECT_NE(raw.find("files "), std::string::npos) << raw;
    // No line is as wide as the terminal (80 columns): a wrapped bar would break the
    // redraw. Columns are characters: UTF-8 continuation bytes take none.
    // (The bars only: the summary after the last erase may wrap, nothing redraws it.)
    std::size_t cols = 0;
    std::size_t bars_end = raw.rfind("\x1b[J");
    for (std::size_t i = 0; i < bars_end && i != std::string::npos; ++i) {
        unsigned char ch = static_cast<unsigned char>(raw[i]);
        if (ch == '\r' || ch == '\n') {
            cols = 0;
        } else if (ch == 0x1b) {
            i = raw.find_first_of("AJ", i);
        } else if ((ch & 0xC0) != 0x80) {
            ++cols;
            ASSERT_LT(cols, 80u) << "a line reaches the terminal's width: " << raw.substr(raw.find_last_of("\r\n", i) + 1, 200);
        }
    }
    std::vector<std::string> screen = render_terminal(raw);
    ASSERT_EQ(screen.size(), 1u) << raw;
    EXPECT_EQ(screen[0].rfind("ferry: sent 21 files", 0), 0u) << screen[0];

    // --quiet: no bar, no escape code, the same summary.
    auto rx2 = cli.start({"receive", "--state", cli.state("A").string(), "--listen", "127.0.0.1:0", "--json",
                          (cli.root() / "inbox2").string()});
    term_run quiet = run_on_terminal({FERRY_BINARY, "send", "--state", cli.state("B").string(), "--quiet",
                                      src.string(), a_id + "@" + rx2.address});
    EXPECT_EQ(quiet.exit_code, 0) << quiet.raw;
    EXPECT_EQ(rx2.proc->wait(process_timeout), 0);
    EXPECT_EQ(quiet.raw.find('\x1b'), std::string::npos) << quiet.raw;
    screen = render_terminal(quiet.raw);
    ASSERT_EQ(screen.size(), 1u) << quiet.raw;
    EXPECT_EQ(screen[0].rfind("ferry: sent 21 files", 0), 0u) << screen[0];
}

TEST_F(observability, status_and_metrics_of_a_live_serve) {
    fs::path state = cli.state("A");
    // No node yet: status says so, exit 2.
    run_result none = cli.ferry({"status", "--state", state.string()});
    EXPECT_EQ(none.code, 2) << none.err;
    EXPECT_NE(none.err.find("no ferry node is running"), std::string::npos) << none.err;

    auto sv = cli.start({"serve", "--state", state.string(), "--listen", "127.0.0.1:0", "--json", "--metrics",
                         "127.0.0.1:0", "--inbox", (cli.root() / "inbox").string()});
    auto metrics_line = sv.proc->read_line(process_timeout);
    ASSERT_TRUE(metrics_line.has_value()) << sv.proc->err();
    std::string metrics_address = json::parse(*metrics_line).value("address", "");
    ASSERT_FALSE(metrics_address.empty()) << *metrics_line;

    // An idle node answers too.
    run_result idle = cli.ferry({"status", "--state", state.string(), "--json"});
    ASSERT_EQ(idle.code, 0) << idle.err;
    json st = json::parse(idle.out);
    EXPECT_EQ(st["event"], "status");
    EXPECT_EQ(st["transfers"].size(), 0u);
    EXPECT_EQ(st["totals"]["payload_bytes_received"], 0u);

    auto sender_ptr = send_until_flowing(a_id + "@" + sv.address);
    ASSERT_TRUE(sender_ptr);
    child_process& sender = *sender_ptr;

    run_result human = cli.ferry({"status", "--state", state.string()});
    EXPECT_EQ(human.code, 0) << human.err;
    EXPECT_NE(human.out.find("receive from " + b_id), std::string::npos) << human.out;
    EXPECT_NE(human.out.find("rtt "), std::string::npos) << human.out;
    run_result live = cli.ferry({"status", "--state", state.string(), "--json"});
    ASSERT_EQ(live.code, 0) << live.err;
    st = json::parse(live.out);
    ASSERT_EQ(st["transfers"].size(), 1u) << st;
    const json& x = st["transfers"][0];
    EXPECT_EQ(x["direction"], "receive");
    EXPECT_EQ(x["peer"], b_id);
    EXPECT_EQ(x["total_bytes"], 8ull << 30);
    EXPECT_GT(x["confirmed_bytes"].get<std::uint64_t>(), 0u);
    ASSERT_EQ(st["peers"].size(), 1u) << st;
    const json& peer = st["peers"][0];
    EXPECT_EQ(peer["id"], b_id);
    EXPECT_TRUE(peer["trusted"].get<bool>());
    ASSERT_EQ(peer["connections"].size(), 4u) << peer;
    std::uint64_t conn_wire = 0;
    for (const json& c : peer["connections"]) {
        EXPECT_TRUE(c["tuning"]["nodelay"].get<bool>()) << c;
        ASSERT_TRUE(c["tcp_info"].is_object()) << c;
        EXPECT_GT(c["tcp_info"]["rtt_ms"].get<double>(), 0.0) << c;
        EXPECT_GT(c["tcp_info"]["bytes_received"].get<std::uint64_t>(), 0u) << c;
        EXPECT_GT(c["tcp_info"]["rcvbuf"].get<int>(), 0) << c;  // the socket's now
        EXPECT_GT(c["tcp_info"]["sndbuf"].get<int>(), 0) << c;
        // What ferry read from a socket cannot exceed what that socket's kernel received.
        EXPECT_LE(c["wire_bytes_received"].get<std::uint64_t>(), c["tcp_info"]["bytes_received"].get<std::uint64_t>())
            << c;
        conn_wire += c["wire_bytes_received"].get<std::uint64_t>();
    }
    EXPECT_EQ(conn_wire, peer["wire_bytes_received"].get<std::uint64_t>()) << peer;
    EXPECT_GE(st["totals"]["payload_bytes_received"].get<std::uint64_t>(), x["confirmed_bytes"].get<std::uint64_t>());

    std::string m = http_get(metrics_address, "/metrics");
    EXPECT_EQ(m.rfind("HTTP/1.1 200 OK", 0), 0u) << m.substr(0, 200);
    check_exposition(m.substr(m.find("\r\n\r\n") + 4));
    EXPECT_EQ(metric(m, "ferry_connections"), 4);
    EXPECT_EQ(metric(m, "ferry_peers"), 1);
    EXPECT_EQ(metric(m, "ferry_transfers_in_flight"), 1);
    EXPECT_GT(metric(m, "ferry_payload_bytes_confirmed_total{direction=\"receive\"}"), 0);
    // Every confirmed payload byte came over the wire, raw or compressed (TLS and framing on top).
    EXPECT_GT(metric(m, "ferry_wire_bytes_received_total") + metric(m, "ferry_compression_saved_bytes_total"),
              metric(m, "ferry_payload_bytes_confirmed_total{direction=\"receive\"}"));
    EXPECT_GT(metric(m, "ferry_chunks_total{direction=\"receive\"}"), 0);
    EXPECT_EQ(metric(m, "ferry_transfers_total{result=\"ok\"}"), 0);
    EXPECT_NE(m.find("ferry_chunk_rtt_seconds_bucket{le=\"+Inf\"}"), std::string::npos);

    // Stop the sender; the node counts a failed transfer and keeps serving.
    sender.signal(SIGKILL);
    sender.wait(process_timeout);
    sv.proc->signal(SIGTERM);
    EXPECT_EQ(sv.proc->wait(process_timeout), 0) << sv.proc->err();
    EXPECT_FALSE(fs::exists(state / "control.sock"));
}

TEST_F(observability, status_of_a_plaintext_peer_lists_its_connections_under_its_address) {
    fs::path state = cli.state("A");
    auto sv = cli.start({"serve", "--state", state.string(), "--listen", "127.0.0.1:0", "--json", "--plaintext",
                         "--accept-any", "--inbox", (cli.root() / "inbox").string()});
    auto sender = send_until_flowing(sv.address, {"--plaintext"});
    ASSERT_TRUE(sender);
    run_result live = cli.ferry({"status", "--state", state.string(), "--json"});
    ASSERT_EQ(live.code, 0) << live.err;
    json st = json::parse(live.out);
    ASSERT_EQ(st["peers"].size(), 1u) << st;
    EXPECT_EQ(st["peers"][0]["address"], "127.0.0.1") << st;
    EXPECT_EQ(st["peers"][0]["connections"].size(), 4u) << st;
    EXPECT_EQ(st["connections"], 4) << st;
    sender->signal(SIGKILL);
    sender->wait(process_timeout);
    sv.proc->signal(SIGTERM);
    EXPECT_EQ(sv.proc->wait(process_timeout), 0) << sv.proc->err();
}

TEST_F(observability, a_stale_control_socket_is_replaced) {
    fs::path state = cli.state("A");
    fs::path sock = state / "control.sock";
    ASSERT_TRUE(leave_stale_socket(sock));  // what a crashed node leaves
    EXPECT_EQ(cli.ferry({"status", "--state", state.string()}).code, 2);
    auto sv = cli.start({"serve", "--state", state.string(), "--listen", "127.0.0.1:0", "--json"});
    run_result st = cli.ferry({"status", "--state", state.string()});
    EXPECT_EQ(st.code, 0) << st.err;
    EXPECT_NE(st.out.find(a_id), std::string::npos) << st.out;
    // A second serve on the same state folder is refused while the first runs.
    run_result second = cli.ferry({"serve", "--state", state.string(), "--listen", "127.0.0.1:0"});
    EXPECT_EQ(second.code, 4) << second.err;
    EXPECT_NE(second.err.find("another ferry node"), std::string::npos) << second.err;
    sv.proc->signal(SIGTERM);
    EXPECT_EQ(sv.proc->wait(process_timeout), 0) << sv.proc->err();
}

TEST_F(observability, a_metrics_address_in_use_fails_serve_at_start) {
    asio::io_context io;
    asio::ip::tcp::acceptor taken(io, {asio::ip::make_address("127.0.0.1"), 0});
    std::string address = "127.0.0.1:" + std::to_string(taken.local_endpoint().port());
    run_result r = cli.ferry({"serve", "--state", cli.state("A").string(), "--listen", "127.0.0.1:0", "--json",
                              "--metrics", address});
    EXPECT_EQ(r.code, 4) << r.err;
    EXPECT_NE(r.err.find("metrics"), std::string::npos) << r.err;
    EXPECT_NE(r.err.find(address), std::string::npos) << r.err;
    EXPECT_EQ(r.out.find("listening"), std::string::npos) << r.out;
    EXPECT_FALSE(fs::exists(cli.state("A") / "control.sock"));
}

}  // namespace
