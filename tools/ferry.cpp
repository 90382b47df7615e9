// ferry: the command-line front end. Parses arguments, builds a node, runs its loop on
// this thread, and turns the node's events into human lines (stderr) or JSON lines
// (stdout, --json). Exit codes are listed in docs/cli.md.
#include <CLI/CLI.hpp>
#include <asio.hpp>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <map>
#include <csignal>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <functional>
#include <future>
#include <thread>
#include <optional>
#include <set>
#include <span>
#include <unordered_set>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <fmt/compile.h>
#include <fmt/format.h>

#include "node/backoff.hpp"
#include "node/control_server.hpp"
#include "node/file_io.hpp"
#include "protocol/path.hpp"
#include "node/identity.hpp"
#include "node/metrics_server.hpp"
#include "node/multi_get.hpp"
#include "node/node.hpp"
#include "node/trust_store.hpp"
#include "protocol/exclude.hpp"
#include "tools/config.hpp"
#include "tools/progress.hpp"
#include "tools/sd_notify.hpp"
#include "tools/signals.hpp"
#include "transport/identity.hpp"

namespace fs = std::filesystem;
using json = nlohmann::ordered_json;
using ferry::exit_code;
namespace wire = ferry::wire;

namespace {

const auto program_start = std::chrono::steady_clock::now();

using ferry::cli::human_bytes;

// Version of the --json event stream (docs/json.md); carried by the first line.
constexpr int json_schema = 1;

struct common_opts {
    std::optional<fs::path> state;
    std::optional<fs::path> config;  // --config
    bool json = false;
    bool quiet = false;  // no progress bars
    std::string congestion = "bbr";  // TCP congestion control asked for each socket; "system": leave it
    std::string log_level = "info";  // the node's log lines of this level and above
    // Socket tuning (transport/socket_tuning.hpp): nullopt keeps ferry's default.
    std::optional<std::uint64_t> notsent_lowat;
    std::optional<std::uint64_t> sndbuf;
    std::optional<std::uint64_t> rcvbuf;
    std::optional<double> user_timeout_s;
};

void add_common(CLI::App* cmd, common_opts& o) {
    cmd->add_option("--state", o.state, "state folder (default $FERRY_STATE, the configuration file's `state`, "
                                        "$XDG_STATE_HOME/ferry, ~/.local/state/ferry)");
    cmd->add_option("--config", o.config,
                    "configuration file (default $FERRY_CONFIG, else $XDG_CONFIG_HOME/ferry/config.toml when there; "
                    "docs/config.md)");
    cmd->add_flag("--json", o.json, "print newline-delimited JSON events on stdout (docs/json.md)");
    cmd->add_option("--log-level", o.log_level,
                    "log lines to print: error, warn or info (and above); for serve and receive every line, for the "
                    "other commands the node's own (their summary always shows)")
        ->check(CLI::IsMember({"error", "warn", "info"}))
        ->capture_default_str();
}

const std::map<std::string, double>& time_units();  // "30s", "5m" (below)

void add_transfer_options(CLI::App* cmd, common_opts& o) {
    cmd->add_flag("--quiet,-q", o.quiet, "no progress bars (summary and errors only)");
    cmd->add_option("--notsent-lowat", o.notsent_lowat,
                    "per socket: unsent bytes the kernel may hold (TCP_NOTSENT_LOWAT; default 256K, 0 = the "
                    "kernel's own)")
        ->transform(CLI::AsSizeValue(false))
        ->check(CLI::Range(std::uint64_t{0}, std::uint64_t{1} << 30))
        ->group("Socket tuning");
    cmd->add_option("--sndbuf", o.sndbuf, "per socket: send buffer (SO_SNDBUF; default 0 = the kernel's autotuning)")
        ->transform(CLI::AsSizeValue(false))
        ->check(CLI::Range(std::uint64_t{0}, std::uint64_t{1} << 30))
        ->group("Socket tuning");
    cmd->add_option("--rcvbuf", o.rcvbuf, "per socket: receive buffer (SO_RCVBUF; default 0 = the kernel's autotuning)")
        ->transform(CLI::AsSizeValue(false))
        ->check(CLI::Range(std::uint64_t{0}, std::uint64_t{1} << 30))
        ->group("Socket tuning");
    cmd->add_option("--user-timeout", o.user_timeout_s,
                    "per socket: a peer that acknowledges nothing this long is cut (TCP_USER_TIMEOUT; default 60s, "
                    "0 = the kernel's)")
        ->transform(CLI::AsNumberWithUnit(time_units()))
        ->check(CLI::Range(0.0, 86400.0))
        ->group("Socket tuning");
    cmd->add_option("--congestion", o.congestion,
                    "TCP congestion control for ferry's sockets where the kernel allows it, else the system's "
                    "(`system`: always the system's)")
        ->capture_default_str();
}

// The configuration file the command read (tools/config.hpp), if any.
std::optional<ferry::cli::config_file> loaded_config;

// The trust list of the state folder, with the configuration file's peers.
// A [[peer]] with this node's own ID is a mistake (`ferry trust` refuses it too).
ferry::trust_store load_trust(const fs::path& state) {
    const std::vector<ferry::declared_peer> none;
    const std::vector<ferry::declared_peer>& declared = loaded_config ? loaded_config->peers : none;
    std::error_code ec;
    if (!declared.empty() && fs::exists(state / "key.pem", ec)) {
        const std::string own = ferry::load_or_create_identity(state).id;
        for (const ferry::declared_peer& p : declared) {
            if (p.peer.id == own) {
                throw ferry::cli::config_error(p.where + ": " + ferry::format_node_id(own) +
                                               " is this node's own ID (`ferry id`): a [[peer]] is another node");
            }
        }
    }
    try {
        return ferry::trust_store::load(state, declared);
    } catch (const std::invalid_argument& e) {
        throw ferry::cli::config_error(e.what());
    }
}

// The progress view of the running command, if any: lines to stderr go through it so
// that they never tear its bars.
ferry::cli::progress_view* view = nullptr;

// One JSON line. Bytes that are not UTF-8 (file names on Linux may hold any) become
// U+FFFD rather than an exception.
std::string dump(const json& j) { return j.dump(-1, ' ', false, json::error_handler_t::replace); }

// One line on stdout. std::cout and printf share C's stdout buffer (sync_with_stdio), so
// lines from either keep their order.
void emit_line(std::string_view text, bool flush) {
    std::fwrite(text.data(), 1, text.size(), stdout);
    std::fputc('\n', stdout);
    if (flush) {
        std::fflush(stdout);
    }
}

// "t" of the --json events: whole microseconds since the start, so that the two ways
// events print it (a double, integers) agree and t never goes back.
std::int64_t micros_since_start() {
    return std::chrono::duration_cast<std::chrono::microseconds>(std::chrono::steady_clock::now() - program_start)
        .count();
}

// Whether the --json stream has its first line yet (which carries "schema").
bool json_started = false;

void emit(const common_opts& o, json j, bool flush = true) {
    if (!o.json) {
        return;
    }
    // "event" first, the schema version on the first line of the stream, and a
    // monotonic "t" in seconds last.
    if (!json_started) {
        json_started = true;
        j["schema"] = json_schema;
    }
    // "t" last, to the microsecond from integers as file events print it (t never goes
    // back; a double's dump may take 17 digits: 0.08093500000000001).
    std::string line = dump(j);
    line.pop_back();  // the object's '}'
    std::int64_t us = micros_since_start();
    fmt::format_to(std::back_inserter(line), FMT_COMPILE(R"({}"t":{}.{:06}}})"), j.empty() ? "" : ",", us / 1000000,
                   us % 1000000);
    emit_line(line, flush);
}

// Appends the well-formed UTF-8 sequence at s[i] and moves `i` past it, or U+FFFD for
// the byte there when none starts at it (then false).
bool append_utf8_or_replacement(std::string& out, std::string_view s, std::size_t& i) {
    if (std::size_t n = ferry::utf8_sequence_length(s, i); n > 0) {
        out.append(s.substr(i, n));
        i += n;
        return true;
    }
    out += "\xEF\xBF\xBD";
    ++i;
    return false;
}

// Appends `s` as the inside of a JSON string: quotes, backslashes and control characters
// escaped, each byte that is not part of a well-formed UTF-8 sequence replaced by U+FFFD
// (as utf8_replaced() does, so that a name reads the same in every event). Returns
// whether `s` was UTF-8 all through (nothing replaced).
bool append_json_string(std::string& out, std::string_view s) {
    bool utf8 = true;
    for (std::size_t i = 0; i < s.size();) {
        auto c = static_cast<unsigned char>(s[i]);
        if (c < 0x80) {
            if (c == '"' || c == '\\') {
                out += '\\';
                out += static_cast<char>(c);
            } else if (c < 0x20) {
                // The short escapes where JSON has one, as nlohmann's dump() writes them
                // (docs/json.md: a newline is \n); \u00XX for the rest.
                const char* named = c == '\b'   ? "\\b"
                                    : c == '\t' ? "\\t"
                                    : c == '\n' ? "\\n"
                                    : c == '\f' ? "\\f"
                                    : c == '\r' ? "\\r"
                                                : nullptr;
                if (named != nullptr) {
                    out += named;
                } else {
                    fmt::format_to(std::back_inserter(out), "\\u{:04x}", c);
                }
            } else {
                out += static_cast<char>(c);
            }
            ++i;
            continue;
        }
        utf8 = append_utf8_or_replacement(out, s, i) && utf8;
    }
    return utf8;
}

// `s` with each byte that is not part of a well-formed UTF-8 sequence replaced by U+FFFD;
// `replaced` says whether there was any.
std::string utf8_replaced(std::string_view s, bool& replaced) {
    std::string out;
    out.reserve(s.size());
    replaced = false;
    for (std::size_t i = 0; i < s.size();) {
        replaced = !append_utf8_or_replacement(out, s, i) || replaced;
    }
    return out;
}

// A file name in a JSON event (docs/json.md, "File names"): `key` holds it as it is when
// it is UTF-8; otherwise with each byte that is not UTF-8 replaced by U+FFFD, and
// `key`_hex holds its exact bytes in hex.
void add_path(json& j, const std::string& key, std::string_view path) {
    bool replaced = false;
    j[key] = utf8_replaced(path, replaced);
    if (replaced) {
        j[key + "_hex"] = ferry::hex_encode(path);
    }
}

// `,"KEY":"PATH"` for a line written directly (below), with `,"KEY_hex":"..."` when the
// name is not UTF-8: as add_path() gives it.
void append_path_field(std::string& line, std::string_view key, std::string_view path) {
    fmt::format_to(std::back_inserter(line), FMT_COMPILE(R"(,"{}":")"), key);
    bool utf8 = append_json_string(line, path);
    line += '"';
    if (!utf8) {
        fmt::format_to(std::back_inserter(line), FMT_COMPILE(R"(,"{}_hex":"{}")"), key, ferry::hex_encode(path));
    }
}

// Ends a line written directly as emit() ends its lines ("schema" on the stream's first
// line, "t" last) and writes it out, buffered: the next progress or done line flushes it.
void end_event_line(std::string& line) {
    if (!json_started) {  // never the first line in practice (connected or listening is)
        json_started = true;
        fmt::format_to(std::back_inserter(line), FMT_COMPILE(R"(,"schema":{})"), json_schema);
    }
    // "t" to the microsecond from integers: an event or two a file make the shortest form
    // of a double a cost of its own.
    std::int64_t us = micros_since_start();
    fmt::format_to(std::back_inserter(line), FMT_COMPILE(R"(,"t":{}.{:06}}})"), us / 1000000, us % 1000000);
    emit_line(line, false);
}

// file_start / file_done, and sync's per-path events: one or two per file, so many that
// building a json object for every one showed in profiles of 10,000-file transfers
// (a sync's `created` events were 10 % of its sending command's CPU); written directly
// instead, with the same fields and escaping as emit().
void emit_file_event(const ferry::file_event& f) {
    static std::string line;
    static std::string session_raw;
    static std::string session_hex;
    if (f.session_id != session_raw) {
        session_raw = f.session_id;
        session_hex = ferry::hex_encode(f.session_id);
    }
    line.clear();
    fmt::format_to(std::back_inserter(line), FMT_COMPILE(R"({{"event":"{}","direction":"{}","session":"{}")"),
                   f.done ? "file_done" : "file_start", f.direction, session_hex);
    append_path_field(line, "path", f.path);
    fmt::format_to(std::back_inserter(line), FMT_COMPILE(R"(,"size":{})"), f.size);
    if (f.done) {
        line += f.skipped ? R"(,"skipped":true)" : R"(,"skipped":false)";
    }
    end_event_line(line);
}

// How stderr lines are dressed (main and run_receiver set them): under the systemd journal a
// "<N>" priority first and nothing else (the journal stamps and names them); elsewhere
// "ferry: ", after the local time for a node that runs for long (serve, receive).
bool log_to_journal = false;
bool log_timestamps = false;
int log_most = 6;  // --log-level: the lines of this priority and above (a lower number matters more)
// A node (serve, receive) filters every stderr line by --log-level; the other commands
// only the node's own log lines (their summaries always show).
bool filter_all_lines = false;

std::string local_time_now() {
    auto now = std::chrono::system_clock::now();
    std::time_t sec = std::chrono::system_clock::to_time_t(now);
    auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(now.time_since_epoch()).count() % 1000;
    struct tm tm {};
    char text[40] = "";
    if (::localtime_r(&sec, &tm) != nullptr) {
        std::size_t n = std::strftime(text, sizeof text, "%Y-%m-%d %H:%M:%S", &tm);
        std::snprintf(text + n, sizeof text - n, ".%03lld", static_cast<long long>(ms));
    }
    return text;
}

void say(const std::string& line, ferry::log_level level = ferry::log_level::info) {
    if (filter_all_lines && static_cast<int>(level) > log_most) {
        return;
    }
    std::string text = log_to_journal  ? "<" + std::to_string(static_cast<int>(level)) + ">" + line
                       : log_timestamps ? local_time_now() + " ferry: " + line
                                        : "ferry: " + line;
    if (view != nullptr) {
        view->say(text);
    } else {
        std::cerr << text << '\n';
    }
}

const char* code_name(exit_code c) {
    switch (c) {
        case exit_code::ok: return "ok";
        case exit_code::usage: return "usage";
        case exit_code::transfer_failed: return "transfer_failed";
        case exit_code::auth: return "auth";
        case exit_code::local_io: return "local_io";
        case exit_code::partial: return "partial";
        case exit_code::vanished: return "vanished";
    }
    return "unknown";
}

// The message of the last fail() (a refused reload reports it in its own event).
std::string last_fail_message;

// The `error` event of a failure with exit code `code`.
json error_event(exit_code code, const std::string& message) {
    return {{"event", "error"}, {"code", code_name(code)}, {"exit_code", static_cast<int>(code)}, {"message", message}};
}

int fail(const common_opts& o, exit_code code, const std::string& message) {
    last_fail_message = message;
    say("error: " + message, ferry::log_level::error);
    emit(o, error_event(code, message));
    return static_cast<int>(code);
}

// Confirmed payload that travelled, per second (a delta's copied bytes never did: a 1 GiB
// file with a byte inserted said 875 MB/s over 220 KB of wire, and a sync's summary of a
// 40 MB file with 1 byte changed "sent 2 B in 0.04 s (959.3 MB/s confirmed)").
double mbps(const ferry::transfer_report& r) {
    return r.elapsed_s > 0 ? static_cast<double>(r.travelled_bytes()) / r.elapsed_s / 1e6 : 0.0;
}

// "1 connection", "4 connections": how many carried the transfer, in a summary line.
std::string connections_text(const ferry::transfer_report& r) {
    return std::to_string(r.connections) + (r.connections == 1 ? " connection" : " connections");
}

// "; 7 file(s) (1.20 MB) already there ..., skipped" when the receiver had some files
// already, and what resumed files kept of what interrupted attempts left.
std::string skipped_note(const ferry::transfer_report& r) {
    std::string out;
    if (r.skipped_files > 0) {
        // (skipped_bytes holds the resumed bytes too: not these files'.)
        out = "; " + std::to_string(r.skipped_files) + " file(s) (" +
              human_bytes(r.skipped_bytes - std::min(r.skipped_bytes, r.resumed_bytes)) +
              ") already there with the same size and mtime, skipped";
    }
    if (r.resumed_bytes > 0) {
        // (An interrupted attempt's partial files, and for a sync the older versions and
        // renamed files the new ones started from: the receiver cannot tell them apart.)
        out += "; " + human_bytes(r.resumed_bytes) +
               " of changed files already there in place and kept (an interrupted attempt's, or an older version's)";
    }
    if (r.delta_copied > 0) {
        out += "; " + human_bytes(r.delta_copied) + " copied from older versions there (a delta)";
    }
    return out;
}

std::string compression_note(const ferry::transfer_report& r) {
    if (r.compression_saved == 0) {
        return "";
    }
    return "; compression kept " + human_bytes(r.compression_saved) + " off the wire";
}

// Wire bytes in the direction the payload went, per payload byte, as a percentage.
double overhead_pct(const ferry::transfer_report& r, bool sender) {
    std::uint64_t wire = sender ? r.wire_sent : r.wire_received;
    std::uint64_t moved = r.travelled_bytes();
    return moved > 0 ? 100.0 * (static_cast<double>(wire) - static_cast<double>(moved)) / static_cast<double>(moved)
                     : 0.0;
}

json report_json(const ferry::transfer_report& r, bool sender) {
    double wire = static_cast<double>(sender ? r.wire_sent : r.wire_received);
    return {{"event", "done"},
            {"ok", r.ok && r.given_up.empty()},
            {"failed_files", ferry::count_failed(r.given_up, true)},
            {"failed_other", ferry::count_failed(r.given_up, false)},
            {"direction", sender ? "send" : "receive"},
            {"session", ferry::hex_encode(r.session_id)},
            {"peer", ferry::format_node_id(r.peer_id)},
            {"address", r.peer_address},
            {"files", r.files},
            {"dirs", r.dirs},
            {"skipped_files", r.skipped_files},
            // What a delta copied from DST's older version is there already, as a skipped
            // file's bytes are: not payload that travelled.
            {"skipped_bytes", r.matched_bytes()},
            {"resumed_bytes", r.resumed_bytes},
            {"payload_bytes", r.travelled_bytes()},
            {"total_bytes", r.total_bytes},
            {"wire_bytes_sent", r.wire_sent},
            {"wire_bytes_received", r.wire_received},
            {"elapsed_s", r.elapsed_s},
            {"payload_MBps", mbps(r)},
            {"wire_MBps", r.elapsed_s > 0 ? wire / r.elapsed_s / 1e6 : 0.0},
            {"overhead_pct", overhead_pct(r, sender)},
            {"compression_saved_bytes", r.compression_saved},
            {"connections", r.connections},
            {"ttfb_s", r.ttfb_s >= 0 ? json(r.ttfb_s) : json(nullptr)}};
}

json progress_event(const ferry::transfer_progress& p) {
    json j{{"event", "progress"}};
    j.update(ferry::progress_json(p));
    return j;
}

// The last progress of a finished transfer, from its report.
ferry::transfer_progress final_progress(const ferry::transfer_report& r, bool sender) {
    ferry::transfer_progress p;
    p.direction = sender ? "send" : "receive";
    p.session_id = r.session_id;
    p.peer_id = r.peer_id;
    p.peer_address = r.peer_address;
    p.total_bytes = r.total_bytes;
    p.confirmed_bytes = r.travelled_bytes();
    p.skipped_bytes = r.matched_bytes();
    p.wire_sent = r.wire_sent;
    p.wire_received = r.wire_received;
    p.files_total = std::max(r.files_total, r.files + r.skipped_files);  // failed ones too, as in total_bytes
    p.files_done = r.files + r.skipped_files;
    p.rate = mbps(r) * 1e6;
    p.elapsed_s = r.elapsed_s;
    p.offered = true;
    return p;
}

// Progress bars when stderr is a terminal, unless --quiet, or --json goes to the same
// kind of place (a terminal: the lines would be torn by the redraws); progress events
// with --json.
ferry::cli::progress_view::options view_options(const common_opts& o) {
    bool json_on_terminal = o.json && ::isatty(STDOUT_FILENO) == 1;
    return {!o.quiet && !json_on_terminal && ::isatty(STDERR_FILENO) == 1, o.json};
}

// The progress view of a running command over its node, registered as `view` (so that
// say() never tears its bars) for as long as it lives.
class command_progress : public ferry::cli::progress_view {
public:
  command_progress(asio::io_context& io, const common_opts& o, const ferry::node& n)
      : progress_view(
            io, view_options(o), [&n] { return n.transfers(); },
            [this, &o](const ferry::transfer_progress& p) {
                if (p.peer_address.empty()) {
                    // A session before its peer's Hello (a sync's next pass too): no peer
                    // to name yet. (A plaintext peer has an address and no ID.)
                    return;
                }
                ferry::transfer_progress with = p;
                with.wire_sent += carried_sent_;
                with.wire_received += carried_received_;
                emit(o, progress_event(with));
            }) {
      view = this;
  }
    ~command_progress() { view = nullptr; }
    command_progress(const command_progress&) = delete;
    command_progress& operator=(const command_progress&) = delete;
    // The wire bytes of the run's earlier attempts (lost connections, the first of two
    // passes), added to each progress event's, as `done` counts them: a script's
    // differences of wire_bytes_* stay the bytes that moved. 0 for the final event, whose
    // report counts them already.
    void carry(std::uint64_t sent, std::uint64_t received) {
        carried_sent_ = sent;
        carried_received_ = received;
    }

private:
    std::uint64_t carried_sent_ = 0;
    std::uint64_t carried_received_ = 0;
};

// A --congestion name the kernel does not have at all (a typo, say), as an error line.
// The default (bbr) and `system` are never refused: without BBR the system's is used.
std::optional<std::string> congestion_error(const common_opts& o) {
    if (o.congestion == "bbr" || o.congestion == "system") {
        return std::nullopt;
    }
    std::vector<std::string> available = ferry::available_congestion_controls();
    if (std::find(available.begin(), available.end(), o.congestion) != available.end()) {
        return std::nullopt;
    }
    std::string list;
    for (const std::string& name : available) {
        list += (list.empty() ? "" : " ") + name;
    }
    return "--congestion " + o.congestion + ": this kernel does not have it (available: " +
           (list.empty() ? std::string("unknown") : list) + "; or `system`)";
}

// A flag's value in brackets is taken as it is: the exclude pattern "[ab]". CLI11 reads
// "[a,b]" given to an option of many values as the list a, b (and "[ab]" as "ab"), which
// turned `--exclude '[ab]'` into the pattern "ab" and let `--delete` remove what it was to
// protect. Each such flag still takes one value per occurrence. (Positional arguments
// keep CLI11's reading: a list of them needs it to take more than one. A source named
// "[ab]" is given as ./[ab]: docs/cli.md.)
void take_brackets_literally(CLI::App& app) {
    for (CLI::Option* opt : app.get_options()) {
        if (opt->nonpositional() && opt->get_expected_max() > 1) {
            opt->allow_extra_args(false);
        }
    }
    for (CLI::App* sub : app.get_subcommands([](CLI::App*) { return true; })) {
        take_brackets_literally(*sub);
    }
}

// Builds the node config shared by the commands; throws std::runtime_error on bad state.
ferry::node_config base_config(const common_opts& o) {
    ferry::node_config cfg;
    cfg.state_dir = ferry::resolve_state_dir(o.state);
    if (loaded_config) {
        cfg.config_peers = loaded_config->peers;
    }
    if (const char* l = std::getenv("FERRY_NOTSENT_LOWAT"); l != nullptr) {
        cfg.tuning.notsent_lowat = static_cast<std::uint32_t>(std::atoi(l));
    }
    cfg.tuning.congestion = o.congestion == "system" ? std::string() : o.congestion;
    if (o.notsent_lowat) {
        cfg.tuning.notsent_lowat = static_cast<std::uint32_t>(*o.notsent_lowat);
    }
    if (o.sndbuf) {
        cfg.tuning.sndbuf = static_cast<int>(*o.sndbuf);
    }
    if (o.rcvbuf) {
        cfg.tuning.rcvbuf = static_cast<int>(*o.rcvbuf);
    }
    if (o.user_timeout_s) {
        cfg.tuning.user_timeout_ms = static_cast<std::uint32_t>(std::llround(*o.user_timeout_s * 1000));
    }
    if (const char* w = std::getenv("FERRY_WORKERS"); w != nullptr && std::atoi(w) > 0) {
        cfg.workers = static_cast<std::size_t>(std::atoi(w));
    }
    return cfg;
}

json resumed_event(const std::string& direction, const std::string& session, std::uint64_t bytes, std::uint64_t files) {
    return {{"event", "resumed"},
            {"direction", direction},
            {"session", ferry::hex_encode(session)},
            {"bytes_kept", bytes},
            {"files", files}};
}

ferry::node_events base_events(const common_opts& o) {
    ferry::node_events ev;
    ev.log = [](ferry::log_level level, const std::string& line) {
        if (static_cast<int>(level) <= log_most) {
            say(line, level);
        }
    };
    ev.listening = [&o](const std::string& address, const std::string& id) {
        say("listening on " + address + " as " + ferry::format_node_id(id));
        emit(o, {{"event", "listening"}, {"address", address}, {"id", ferry::format_node_id(id)}});
    };
    ev.connected = [&o](const std::string& peer, const std::string& address, std::uint32_t n) {
        emit(o, {{"event", "connected"}, {"peer", ferry::format_node_id(peer)}, {"address", address}, {"connections", n}});
        if (view != nullptr) {
            view->wake();
        }
    };
    if (o.json) {
        // Per-file lines are many: buffered, flushed with the next progress or done line.
        ev.file = [](const ferry::file_event& f) { emit_file_event(f); };
    }
    ev.trust_read = [&o](std::size_t peers, const std::string& error) {
        emit(o, error.empty() ? json{{"event", "trust_reloaded"}, {"trusted_peers", peers}}
                              : json{{"event", "trust_refused"}, {"trusted_peers", peers}, {"message", error}});
    };
    ev.resumed = [&o](const std::string& direction, const std::string& session, std::uint64_t bytes,
                      std::uint64_t files) {
        if (direction == "send") {
            // (Offered, not yet kept: a source changed since the attempt keeps only what
            // is still the same. `done` and the summary say what was kept.)
            say("resuming: the receiver offers " + human_bytes(bytes) + " of " + std::to_string(files) +
                " file(s) as already there (an interrupted attempt's, or an older version's); each chunk is "
                "checked against this side's, and sent if it differs");
        }
        emit(o, resumed_event(direction, session, bytes, files));
    };
    return ev;
}

// ---- commands --------------------------------------------------------------------------

int cmd_id(const common_opts& o) {
    ferry::identity id = ferry::load_or_create_identity(ferry::resolve_state_dir(o.state));
    if (o.json) {
        emit(o, {{"event", "id"}, {"id", ferry::format_node_id(id.id)}});
    } else {
        std::cout << ferry::format_node_id(id.id) << '\n';
    }
    return 0;
}

using ferry::share_name_ok;

struct trust_opts {
    std::string id;
    std::string name;
    std::optional<std::string> address;  // --address HOST:PORT
    std::optional<std::string> shares;   // --shares a,b ("*" = every share)
    bool remove = false;                 // --remove: ID (or a trusted peer's name) is trusted no more
};

// `ferry trust --remove ID|NAME`: off the state folder's list (a running node refuses the
// peer from its next connection on). A peer the configuration file declares stays: the
// file says so, and is named.
int untrust(const common_opts& o, const fs::path& dir, const std::string& given) {
    // One the configuration file declares stays trusted whatever the list says: nothing
    // is changed then (its entry there may limit its shares). By ID, or by a name the
    // file or the list gives it.
    std::optional<std::string> given_id = ferry::parse_node_id(given);
    auto declared = [&](const std::optional<std::string>& id) -> const ferry::declared_peer* {
        if (!loaded_config) {
            return nullptr;
        }
        for (const ferry::declared_peer& d : loaded_config->peers) {
            if (d.peer.id == id || (!given_id && d.peer.name == given)) {
                return &d;
            }
        }
        return nullptr;
    };
    auto stays = [&](const ferry::declared_peer& d) {
        return fail(o, exit_code::usage,
                    ferry::format_node_id(d.peer.id) + " is declared at " + d.where +
                        " and stays trusted: remove that [[peer]] (then SIGHUP a running `ferry serve`)");
    };
    if (const ferry::declared_peer* d = declared(given_id)) {
        return stays(*d);
    }
    std::error_code ec;
    if (!fs::exists(dir, ec)) {  // no state folder: no list, nobody trusted (none is made)
        if (!given_id) {
            return fail(o, exit_code::usage, "\"" + given + "\" is neither a node ID nor a trusted peer's name");
        }
        say(ferry::format_node_id(*given_id) + " was not trusted");
        emit(o, {{"event", "untrusted"}, {"id", ferry::format_node_id(*given_id)}, {"was_trusted", false}});
        return 0;
    }
    ferry::refuse_if_others_may_change(dir, "the state folder");
    ferry::unique_fd held = ferry::lock_state_file(dir, "trust.lock");
    ferry::trust_store store = ferry::trust_store::load(dir);
    std::optional<ferry::trusted_peer> peer = store.find(given);
    if (!peer && !given_id) {
        return fail(o, exit_code::usage, "\"" + given + "\" is neither a node ID nor a trusted peer's name");
    }
    const std::string id = peer ? peer->id : *given_id;
    if (const ferry::declared_peer* d = declared(id)) {
        return stays(*d);  // a name only the list gives, for a peer the file declares
    }
    bool was = store.remove(id);
    if (was) {
        store.save();
    }
    say(was ? "no longer trusted: " + ferry::format_node_id(id) + (peer->name.empty() ? "" : " (\"" + peer->name + "\")")
            : ferry::format_node_id(id) + " was not trusted");
    emit(o, {{"event", "untrusted"}, {"id", ferry::format_node_id(id)}, {"was_trusted", was}});
    return 0;
}

int cmd_trust(const common_opts& o, const trust_opts& t) {
    if (t.remove) {
        return untrust(o, ferry::resolve_state_dir(o.state), t.id);
    }
    const std::string& id_text = t.id;
    const std::string& name = t.name;
    std::optional<std::string> id = ferry::parse_node_id(id_text);
    if (!id) {
        return fail(o, exit_code::usage, "\"" + id_text + "\" is not a node ID (32 base32 characters, as `ferry id` prints)");
    }
    // Names stand in for peers in PEER and NAME:SHARE arguments, so they may not contain
    // the characters those use.
    if (!ferry::peer_name_ok(name)) {
        return fail(o, exit_code::usage,
                    "a peer name may not contain '@', ':', '/' or spaces, nor be a node ID (and at most 64 bytes)");
    }
    fs::path dir = ferry::resolve_state_dir(o.state);
    if (*id == ferry::load_or_create_identity(dir).id) {
        return fail(o, exit_code::usage,
                    ferry::format_node_id(*id) + " is this node's own ID (`ferry id`): trust the other node's");
    }
    // Two `ferry trust` at once each read the list, change it and write it back: in turns,
    // or one's change is lost.
    ferry::unique_fd held = ferry::lock_state_file(dir, "trust.lock");
    ferry::trust_store store = ferry::trust_store::load(dir);
    if (t.address) {
        std::string host;
        std::string port;
        if (!t.address->empty() && !ferry::split_host_port(*t.address, host, port)) {
            return fail(o, exit_code::usage, "--address \"" + *t.address + "\": expected HOST:PORT ([::1]:PORT for IPv6)");
        }
    }
    std::optional<std::optional<std::vector<std::string>>> shares;
    if (t.shares) {
        if (*t.shares == "*") {
            shares.emplace(std::nullopt);
        } else {
            std::vector<std::string> list;
            std::size_t start = 0;
            while (start <= t.shares->size()) {
                std::size_t comma = t.shares->find(',', start);
                std::string one = t.shares->substr(start, comma == std::string::npos ? std::string::npos : comma - start);
                if (!one.empty()) {
                    if (!share_name_ok(one)) {
                        return fail(o, exit_code::usage, "--shares: \"" + one +
                                                             "\" is not a share name (letters, digits, '-', '_', '.')");
                    }
                    list.push_back(one);
                }
                if (comma == std::string::npos) {
                    break;
                }
                start = comma + 1;
            }
            shares.emplace(std::move(list));
        }
    }
    if (loaded_config && !name.empty()) {
        for (const ferry::declared_peer& d : loaded_config->peers) {
            if (d.peer.name == name && d.peer.id != *id) {
                return fail(o, exit_code::usage, "the name \"" + name + "\" is another peer's: the [[peer]] at " + d.where);
            }
            if (d.peer.id == *id && !d.peer.name.empty() && d.peer.name != name) {
                say("warning: the [[peer]] at " + d.where + " names this peer \"" + d.peer.name +
                        "\", and the configuration file's name is the one used",
                    ferry::log_level::warn);
            }
        }
    }
    std::optional<ferry::trusted_peer> before = store.find_id(*id);
    const std::string kept_name = name.empty() && before ? before->name : name;  // (a name given before stays)
    if (!store.add(*id, kept_name)) {
        return fail(o, exit_code::usage, "the name \"" + name + "\" is already used by another peer");
    }
    store.set_details(*id, t.address, shares);
    store.save();
    // A peer trusted before under another name or address: said, since the old name no
    // longer finds it (NAME:SHARE).
    std::string changes;
    json event = {{"event", "trusted"}, {"id", ferry::format_node_id(*id)}, {"name", kept_name}};
    if (before && !before->name.empty() && before->name != kept_name) {
        changes += "; it was \"" + before->name + "\", a name that now names no peer";
        event["renamed_from"] = before->name;
    }
    if (before && t.address && !before->address.empty() && before->address != *t.address) {
        changes += "; its address was " + before->address;
        event["address_was"] = before->address;
    }
    say("trusted " + ferry::format_node_id(*id) + (kept_name.empty() ? "" : " as \"" + kept_name + "\"") + changes);
    emit(o, event);
    return 0;
}

struct receive_opts {
    std::vector<std::string> listen{"0.0.0.0:7788"};
    std::string accept_from;
    bool accept_any = false;
    bool overwrite = false;
    bool fsync_each = false;
    bool plaintext = false;
    std::string metrics;  // serve: HOST:PORT for /metrics ("" = off)
    std::vector<std::string> shares;  // serve: NAME=DIR[:ro|rw]
    fs::path dir;
    ferry::node_limits limits;
    // The timeouts as the flags take them (seconds, units allowed); the defaults are the
    // node's own.
    double handshake_timeout_s = std::chrono::duration<double>(limits.handshake_timeout).count();
    double idle_timeout_s = std::chrono::duration<double>(limits.idle_timeout).count();
    double partial_max_age_s = 7 * 86400;  // serve
    // serve: LAN discovery (node/discovery.hpp; docs/discovery.md).
    bool discovery = true;
    std::string name;  // announced; "" = the host name
    std::string group4 = ferry::discovery_config{}.group4;
    std::string group6 = ferry::discovery_config{}.group6;
    std::uint16_t discovery_port = ferry::discovery_config{}.port;
    double discovery_interval_s = 30;
    double discovery_timeout_s = 100;
};

// Units for duration options given in seconds ("500ms", "30s", "5m", "2h", "7d").
const std::map<std::string, double>& time_units() {
    static const std::map<std::string, double> units{{"ms", 0.001}, {"s", 1}, {"m", 60}, {"h", 3600}, {"d", 86400}};
    return units;
}

// The limits a listening node grants its peers (node/limits.hpp; docs/cli.md, "Limits").
void add_limit_options(CLI::App* cmd, receive_opts& r) {
    const std::map<std::string, double>& seconds = time_units();
    ferry::node_limits& l = r.limits;
    cmd->add_option("--max-connections", l.max_connections,
                    "inbound connections in all; when full, the oldest not yet in a transfer is closed")
        ->check(CLI::Range(1u, 100000u))
        ->capture_default_str()
        ->group("Limits");
    cmd->add_option("--max-peer-connections", l.max_peer_connections, "connections of one peer over all its transfers")
        ->check(CLI::Range(1u, 100000u))
        ->capture_default_str()
        ->group("Limits");
    cmd->add_option("--max-sessions", l.max_sessions, "inbound transfers at once")
        ->check(CLI::Range(1u, 10000u))
        ->capture_default_str()
        ->group("Limits");
    cmd->add_option("--handshake-timeout", r.handshake_timeout_s,
                    "time for a new connection's TLS handshake, and again for its Hello (e.g. 10s, 500ms)")
        ->transform(CLI::AsNumberWithUnit(seconds))
        ->check(CLI::Range(0.001, 3600.0))
        ->capture_default_str()
        ->group("Limits");
    cmd->add_option("--idle-timeout", r.idle_timeout_s,
                    "end a transfer whose sender sends nothing for this long (e.g. 2m)")
        ->transform(CLI::AsNumberWithUnit(seconds))
        ->check(CLI::Range(0.001, 86400.0))
        ->capture_default_str()
        ->group("Limits");
    cmd->add_option("--max-files", l.max_files, "files and folders per transfer")
        ->check(CLI::Range(std::uint64_t{1}, ferry::max_files_per_transfer))
        ->capture_default_str()
        ->group("Limits");
    cmd->add_option("--max-bytes", l.max_bytes,
                    "bytes per transfer, e.g. 50G (0: no limit but the destination's free space, always checked)")
        ->transform(CLI::AsSizeValue(false))
        ->capture_default_str()
        ->group("Limits");
    cmd->add_option("--max-conn-queue", l.max_queue_bytes, "outbound bytes queued on one connection, e.g. 64M")
        ->transform(CLI::AsSizeValue(false))
        ->check(CLI::Range(std::uint64_t{2} << 20, std::uint64_t{1} << 40))
        ->capture_default_str()
        ->group("Limits");
}

std::chrono::milliseconds to_ms(double seconds) {
    return std::chrono::milliseconds(std::max<std::int64_t>(1, std::llround(seconds * 1000)));
}

// "9100" or ":9100" -> "127.0.0.1:9100": metrics stay on loopback unless the user names
// another address.
std::string metrics_address(const std::string& a) {
    if (!a.empty() && a.find_first_not_of("0123456789") == std::string::npos) {
        return "127.0.0.1:" + a;
    }
    if (a.starts_with(':')) {
        return "127.0.0.1" + a;
    }
    return a;
}

// "NAME=DIR[:ro|rw]" (read-only unless ":rw"): DIR must be an existing folder.
std::optional<ferry::share_config> parse_share(const std::string& spec, std::string& error) {
    std::size_t eq = spec.find('=');
    if (eq == std::string::npos || eq == 0) {
        error = "--share \"" + spec + "\": expected NAME=DIR[:ro|rw]";
        return std::nullopt;
    }
    ferry::share_config share;
    share.name = spec.substr(0, eq);
    std::string dir = spec.substr(eq + 1);
    if (dir.ends_with(":rw")) {
        share.writable = true;
        dir.resize(dir.size() - 3);
    } else if (dir.ends_with(":ro")) {
        dir.resize(dir.size() - 3);
    }
    if (!share_name_ok(share.name)) {
        error = "--share \"" + spec + "\": a share name is letters, digits, '-', '_' and '.' (at most 64)";
        return std::nullopt;
    }
    std::error_code ec;
    share.dir = fs::canonical(dir, ec);
    if (ec || !fs::is_directory(share.dir, ec)) {
        error = "--share \"" + spec + "\": " + dir + " is not an existing folder" + (ec ? " (" + ec.message() + ")" : "");
        return std::nullopt;
    }
    return share;
}

// Where the configuration file gave `flag` the value `value` ("FILE:LINE:COLUMN: "), or
// "" when it did not.
std::string config_place(std::string_view flag, const std::optional<std::string>& value) {
    if (loaded_config) {
        for (const auto& v : loaded_config->values) {
            if (v.flag == flag && (!value || v.value == *value)) {
                return v.where + ": ";
            }
        }
    }
    return {};
}

// The node settings of `ferry receive` and `ferry serve` (`cfg`), checked: 0, or the
// exit code of the error it printed.
int receiver_config(const common_opts& o, const receive_opts& r, bool one_shot, ferry::node_config& cfg) {
    if (auto e = congestion_error(o)) {
        return fail(o, exit_code::usage, config_place("--congestion", o.congestion) + *e);
    }
    cfg = base_config(o);
    cfg.listen = r.listen;
    cfg.inbox = r.dir;
    // A folder that cannot be one is refused now, not when the first sender comes.
    if (std::error_code ec; !r.dir.empty() && fs::exists(r.dir, ec) && !fs::is_directory(r.dir, ec)) {
        return fail(o, exit_code::usage, config_place("--inbox", r.dir.string()) + r.dir.string() + ": not a folder");
    }
    if (one_shot && !r.dir.empty()) {
        // `ferry receive DIR`: made now, and one this user cannot write to refused now.
        std::error_code ec;
        fs::create_directories(r.dir, ec);
        if (ec) {
            return fail(o, exit_code::local_io, r.dir.string() + ": cannot make it: " + ec.message());
        }
        if (::access(r.dir.c_str(), W_OK | X_OK) != 0) {
            std::error_code why(errno, std::system_category());
            return fail(o, exit_code::local_io, r.dir.string() + ": cannot write in it: " + why.message());
        }
    }
    cfg.overwrite = r.overwrite;
    cfg.fsync_each = r.fsync_each;
    cfg.plaintext = r.plaintext;
    cfg.one_shot = one_shot;
    cfg.limits = r.limits;
    cfg.limits.handshake_timeout = to_ms(r.handshake_timeout_s);
    cfg.limits.idle_timeout = to_ms(r.idle_timeout_s);
    cfg.partial_max_age = std::chrono::seconds(std::llround(r.partial_max_age_s));
    cfg.discovery.enabled = r.discovery && !one_shot;
    cfg.discovery.name = r.name;
    cfg.discovery.group4 = r.group4;
    cfg.discovery.group6 = r.group6;
    cfg.discovery.port = r.discovery_port;
    cfg.discovery.interval = to_ms(r.discovery_interval_s);
    cfg.discovery.timeout = to_ms(r.discovery_timeout_s);
    for (const auto& [flag, group, v6] : {std::tuple{"--discovery-group4", r.group4, false},
                                          std::tuple{"--discovery-group6", r.group6, true}}) {
        std::error_code ec;
        asio::ip::address a = asio::ip::make_address(group, ec);
        if (!group.empty() && (ec || !a.is_multicast() || a.is_v6() != v6)) {
            return fail(o, exit_code::usage, config_place(flag, group) + flag + " " + group + ": not an IPv" +
                                                 (v6 ? "6" : "4") + " multicast group (\"\" turns it off)");
        }
    }
    if (cfg.discovery.timeout <= cfg.discovery.interval) {
        // (At the file's timeout, else its interval: the flags given win over both.)
        std::string place = config_place("--discovery-timeout", std::nullopt);
        return fail(o, exit_code::usage,
                    (place.empty() ? config_place("--discovery-interval", std::nullopt) : place) +
                        "--discovery-timeout must be longer than --discovery-interval");
    }
    for (const std::string& spec : r.shares) {
        std::string error;
        std::optional<ferry::share_config> share = parse_share(spec, error);
        const std::string place = config_place("--share", spec);
        if (!share) {
            return fail(o, exit_code::usage, place + error);
        }
        if (std::any_of(cfg.shares.begin(), cfg.shares.end(), [&](const auto& s) { return s.name == share->name; })) {
            return fail(o, exit_code::usage, place + "--share: the name \"" + share->name + "\" is given twice");
        }
        // A peer that may write a share must not reach the node's own keys, trust list
        // or inbox through it, nor the share through the inbox.
        std::error_code ec;
        for (const fs::path& own : {cfg.state_dir, cfg.inbox}) {
            fs::path mine = fs::weakly_canonical(fs::absolute(own, ec), ec);
            auto inside = [](const fs::path& a, const fs::path& b) {  // a is b or lies in it
                auto rel = a.lexically_relative(b);
                return !rel.empty() && *rel.begin() != "..";
            };
            if (!mine.empty() && (inside(mine, share->dir) || inside(share->dir, mine))) {
                return fail(o, exit_code::usage, place + "--share " + share->name + "=" + share->dir.string() + ": overlaps " +
                                                     (own == cfg.state_dir ? "the state folder " : "the inbox ") +
                                                     mine.string());
            }
        }
        cfg.shares.push_back(std::move(*share));
    }
    if (r.plaintext) {
        say(std::string("warning: --plaintext: no TLS, so no sender's ID is checked: any sender that can reach the "
                        "port is taken (") +
                (r.accept_from.empty() ? "the trust list" : "--accept-from") +
                " has no effect), and every byte travels unencrypted",
            ferry::log_level::warn);
    }
    if (r.accept_any) {
        cfg.policy = ferry::accept_policy::any;
    } else if (!r.accept_from.empty()) {
        std::optional<std::string> id = ferry::parse_node_id(r.accept_from);
        if (!id) {
            return fail(o, exit_code::usage, "--accept-from \"" + r.accept_from + "\" is not a node ID");
        }
        cfg.policy = ferry::accept_policy::from_id;
        cfg.accept_from = *id;
    }
    return 0;
}

// `ferry serve --inbox`: the folder given, or STATE/inbox.
fs::path serve_inbox(const common_opts& o, const std::string& inbox) {
    return inbox.empty() ? ferry::resolve_state_dir(o.state) / "inbox" : fs::path(inbox);
}

// The command line, kept for a SIGHUP's re-reading (main sets them).
int saved_argc = 0;
char** saved_argv = nullptr;
void define_serve(CLI::App* serve, common_opts& o, receive_opts& serve_o, std::string& inbox);

// SIGHUP: `ferry serve`'s settings read again as at start, the command line over the
// configuration file (read anew). nullopt when they cannot be had (the error said).
struct reread_settings {
    ferry::node_config cfg;
    std::vector<std::string> restart;  // changed, but bound at start: state, inbox, metrics
    std::string log_level;
};
std::optional<reread_settings> reread_serve_settings(const ferry::node_config& now, const receive_opts& running_r) {
    common_opts running;  // no JSON error events from here: the node goes on (the caller says)
    CLI::App app;
    CLI::App* serve = app.add_subcommand("serve");
    common_opts o;
    receive_opts r;
    std::string inbox;
    define_serve(serve, o, r, inbox);
    take_brackets_literally(app);
    try {
        app.parse(saved_argc, saved_argv);
        if (std::optional<fs::path> file = ferry::cli::pick_config(o.config)) {
            loaded_config = ferry::cli::load_config(*file);
            ferry::cli::apply_config(*loaded_config, *serve);
        } else {
            loaded_config.reset();
        }
    } catch (const CLI::ParseError& e) {
        fail(running, exit_code::usage, e.what());
        return std::nullopt;
    } catch (const ferry::cli::config_error& e) {
        fail(running, exit_code::usage, e.what());
        return std::nullopt;
    }
    r.dir = serve_inbox(o, inbox);
    // The folders the node runs with stay (a share is checked against those, and the trust
    // list read from that state folder); a change to them is named for a restart.
    reread_settings out;
    if (ferry::resolve_state_dir(o.state) != now.state_dir) {
        out.restart.emplace_back("state");
    }
    if (r.dir != now.inbox) {
        out.restart.emplace_back("inbox");
    }
    if (r.metrics != running_r.metrics) {
        out.restart.emplace_back("metrics");
    }
    o.state = now.state_dir;
    r.dir = now.inbox;
    common_opts quiet = o;
    quiet.json = false;  // (its mistakes gave an `error` event, exit_code 1, before `reload_refused`)
    if (receiver_config(quiet, r, false, out.cfg) != 0) {
        return std::nullopt;
    }
    out.log_level = o.log_level;
    return out;
}

int skipped_sources_exit(const common_opts& o, const ferry::transfer_report& r);

// Ends the loop once the node's connections have closed (their last frames out, an Error
// saying why the run ends among them, and the peer closed too), or after
// connection::linger: a process that left at once cut them off with a reset.
void stop_when_quiet(asio::io_context& io, const ferry::node& n, asio::steady_timer& timer,
                     std::chrono::steady_clock::time_point deadline =
                         std::chrono::steady_clock::now() + ferry::connection::linger) {
    if (n.open_connections() == 0 || std::chrono::steady_clock::now() >= deadline) {
        io.stop();
        return;
    }
    timer.expires_after(std::chrono::milliseconds(10));
    timer.async_wait([&io, &n, &timer, deadline](std::error_code ec) {
        if (!ec) {
            stop_when_quiet(io, n, timer, deadline);
        }
    });
}

int run_receiver(const common_opts& o, const receive_opts& r, bool one_shot) {
    log_timestamps = !log_to_journal;  // a node's lines, read later: when each happened
    filter_all_lines = true;
    ferry::node_config cfg;
    if (int code = receiver_config(o, r, one_shot, cfg)) {
        return code;
    }
    // serve's inbox, when there, must take files: one this user may not write is refused
    // now (serve started, and failed each transfer into it). One not there yet is made at
    // the first transfer, inside the state folder made private first (made here, a new
    // state folder would get the umask's mode; `config check` makes nothing).
    if (!one_shot && !cfg.inbox.empty()) {
        // (Not there yet: the folder it would be made in, the nearest one that is.)
        const fs::path there = ferry::nearest_existing(cfg.inbox);
        if (::access(there.c_str(), W_OK | X_OK) != 0) {
            const int err = errno;
            const std::string where =
                there == fs::absolute(cfg.inbox) ? ": cannot write in it: " : ": cannot make it in " + there.string() + ": ";
            return fail(o, exit_code::local_io,
                        config_place("--inbox", cfg.inbox.string()) + cfg.inbox.string() + where + std::strerror(err));
        }
    }
    asio::io_context io(1);
    std::optional<ferry::transfer_report> result;
    ferry::node_events ev = base_events(o);
    asio::steady_timer linger(io);
    bool finishing = false;
    auto finish_soon = [&] {
        // The sender closes after our TransferResult; give it a bounded moment to do so.
        if (!finishing) {
            finishing = true;
            linger.expires_after(std::chrono::seconds(5));
            linger.async_wait([&io](std::error_code ec) {
                if (!ec) {
                    io.stop();
                }
            });
        }
    };
    // A pull this node served: its `done` (direction "send", `pull` what was pulled), or its
    // error, as a received transfer's.
    ev.pull_served = [&](const ferry::transfer_report& rep, const std::string& what) {
        if (rep.ok && view != nullptr) {
            view->final_progress(final_progress(rep, true));  // (a pull's last figures came without it)
        }
        json j = rep.ok ? report_json(rep, true) : error_event(rep.code, rep.error);
        j["pull"] = what;
        emit(o, std::move(j));
    };
    ev.transfer_done = [&](const ferry::transfer_report& rep) {
        if (rep.ok && view != nullptr) {
            view->final_progress(final_progress(rep, false));
        }
        if (rep.ok) {
            say("received " + std::to_string(rep.files) + " files, " + std::to_string(rep.dirs) + " folders, " +
                human_bytes(rep.travelled_bytes()) + " from " +
                (rep.peer_id.empty() ? rep.peer_address : ferry::format_node_id(rep.peer_id)) + " in " + std::to_string(rep.elapsed_s).substr(0, 5) + " s" +
                skipped_note(rep) + compression_note(rep));
        }
        emit(o, rep.ok ? report_json(rep, false) : error_event(rep.code, rep.error));
        if (!rep.ok && one_shot) {
            // (serve's node has logged it, with the peer: "transfer from ID failed: ...";
            // it was said twice.)
            say("error: " + rep.error, ferry::log_level::error);
        }
        if (one_shot && !result) {
            result = rep;
            finish_soon();
        }
    };
    ev.session_ended = [&] {
        if (one_shot && result) {
            io.stop();
        }
    };
    ev.discovered = [&o](const ferry::discovered_peer& p, bool present) {
        std::string who = (p.name.empty() ? "" : "\"" + ferry::printable(p.name) + "\" ") + ferry::format_node_id(p.id);
        if (!o.json) {
            say(present ? "discovered " + who + " at " + ferry::printable(p.addresses.empty() ? p.from : p.addresses.front())
                        : who + " left the LAN");
            return;
        }
        json j{{"event", present ? "discovered" : "peer_left"}, {"id", ferry::format_node_id(p.id)}};
        add_path(j, "name", p.name);
        j["addresses"] = p.addresses;
        j["from"] = p.from;
        emit(o, std::move(j));
    };
    ferry::node n(io, cfg, ev);
    command_progress progress(io, o, n);
    std::string error;
    // `ferry serve` answers `ferry status` on STATE/control.sock and, when asked, serves
    // /metrics; both are ready before the node says it listens.
    std::optional<ferry::control_server> control;
    std::optional<ferry::metrics_server> metrics;
    if (!one_shot) {
        control.emplace(io, [&n](const std::string& request) {
            bool status = request == "status\n" || request == "status\r\n";
            json reply = status ? json(n.status()) : json{{"event", "error"}, {"message", "unknown request"}};
            reply["schema"] = json_schema;
            return dump(reply) + "\n";
        });
        if (control->open(cfg.state_dir, error)) {
            return fail(o, exit_code::local_io, error);
        }
        if (!r.metrics.empty()) {
            metrics.emplace(io, [&n] { return n.metrics(); });
            if (std::error_code ec = metrics->open(metrics_address(r.metrics), error)) {
                return fail(o, ec == std::errc::invalid_argument ? exit_code::usage : exit_code::local_io, error);
            }
        }
    }
    // Caught from before the node says it listens: a supervisor may stop it at once.
    ferry::cli::signal_watch signals(io, {SIGINT, SIGTERM});
    int stopped_by = 0;
    signals.async_wait([&](int sig) {
        stopped_by = sig;
        ferry::cli::sd_notify("STOPPING=1");
        say(std::string("stopping (") + (sig == SIGINT ? "SIGINT" : "SIGTERM") + "); partial files are kept");
        // (What peers are told: a sender sees "receiver: ...", a peer pulling "peer: ...".)
        n.stop(std::string(one_shot ? "ferry receive" : "ferry serve") + " stopped (" +
               (sig == SIGINT ? "SIGINT" : "SIGTERM") + ")");
        // Let the Error frames go out, then leave (bounded; a one-shot receive's report
        // does not start its own wait).
        finishing = true;
        stop_when_quiet(io, n, linger);
    });
    // SIGHUP (`systemctl reload ferry`): trust, shares and limits read again, transfers go on.
    // (`receive` does not watch it: SIGHUP ends it, as it ends most programs.)
    ferry::cli::signal_watch hup = one_shot ? ferry::cli::signal_watch(io, {}) : ferry::cli::signal_watch(io, {SIGHUP});
    std::function<void()> await_hup = [&] {
        hup.async_wait([&](int) {
            if (stopped_by != 0) {
                return;
            }
            timespec mono{};
            ::clock_gettime(CLOCK_MONOTONIC, &mono);
            ferry::cli::sd_notify("RELOADING=1\nMONOTONIC_USEC=" +
                                  std::to_string(static_cast<long long>(mono.tv_sec) * 1000000 + mono.tv_nsec / 1000));
            std::optional<reread_settings> fresh;
            std::optional<ferry::trust_store> trust;
            last_fail_message.clear();
            try {
                fresh = reread_serve_settings(cfg, r);
                if (fresh) {
                    trust = load_trust(cfg.state_dir);  // the running state folder's
                }
            } catch (const std::exception& e) {
                last_fail_message = e.what();
                say(std::string("error: ") + e.what(), ferry::log_level::error);
            }
            if (fresh && trust) {
                std::size_t peers = trust->peers().size();
                std::vector<std::string> restart = n.reload(fresh->cfg, std::move(*trust));
                restart.insert(restart.begin(), fresh->restart.begin(), fresh->restart.end());
                log_most = fresh->log_level == "error" ? 3 : fresh->log_level == "warn" ? 4 : 6;
                std::string also;
                for (const std::string& name : restart) {
                    also += (also.empty() ? "" : ", ") + name;
                }
                say("reloaded: " + std::to_string(peers) + " trusted peer(s), " +
                    std::to_string(fresh->cfg.shares.size()) + " share(s), limits" +
                    (also.empty() ? "" : "; changed but not applied until a restart: " + also));
                emit(o, {{"event", "reloaded"}, {"trusted_peers", peers}, {"shares", fresh->cfg.shares.size()},
                         {"needs_restart", restart}});
            } else {
                say("reload refused: the running settings stay", ferry::log_level::error);
                emit(o, {{"event", "reload_refused"}, {"message", last_fail_message}});
            }
            ferry::cli::sd_notify("READY=1");
            await_hup();
        });
    };
    if (!one_shot) {
        await_hup();
    }
    if (std::error_code ec = n.listen(error)) {
        return fail(o, ec == std::errc::invalid_argument ? exit_code::usage : exit_code::local_io, error);
    }
    if (metrics) {
        say("metrics at http://" + metrics->local_address() + "/metrics");
        emit(o, {{"event", "metrics"}, {"address", metrics->local_address()}});
    }
    // A service manager (systemd Type=notify) learns that it serves now.
    ferry::cli::sd_notify("READY=1\nSTATUS=listening on " + n.listen_address() + "\nMAINPID=" +
                          std::to_string(::getpid()));
    io.run();
    if (stopped_by != 0 && !one_shot) {
        return 0;  // a service stopped: what it was doing is in its log
    }
    // `receive` stopped by a signal: 0 only if its transfer had succeeded by then.
    if (!result) {
        // (Said on stderr and as an `error` event: it exited 2 with neither.)
        return fail(o, exit_code::transfer_failed,
                    stopped_by != 0 ? std::string("stopped (") + (stopped_by == SIGINT ? "SIGINT" : "SIGTERM") +
                                          ") before a transfer ended; partial files are kept, and a sender that "
                                          "sends again to a receiver of this folder resumes"
                                    : std::string("stopped before a transfer ended"));
    }
    if (result->ok) {
        // Done, but partial: files the sender skipped, or this side could not write (each
        // listed, exit 5 or 6), as the sender's own exit code says.
        return skipped_sources_exit(o, *result);
    }
    return static_cast<int>(result->code);
}

// Rate in decimal units per second ("1.23 GB/s").
std::string human_rate(double bytes_per_s) {
    return human_bytes(static_cast<std::uint64_t>(std::max(0.0, bytes_per_s))) + "/s";
}

// `ferry status` without --json: the node, its totals, each peer with its connections,
// then the transfers.
void print_status(const json& st) {
    const json& t = st["totals"];
    std::printf("node %s listening on %s, up %.0f s, %d threads\n", st["id"].get<std::string>().c_str(),
                st["listen"].get<std::string>().c_str(), st["uptime_s"].get<double>(), st["threads"].get<int>());
    std::printf("totals: payload sent %s (confirmed), received %s; wire sent %s, received %s; transfers %llu ok, "
                "%llu failed, %llu cancelled by the puller; now %s\n",
                human_bytes(t["payload_bytes_sent"]).c_str(), human_bytes(t["payload_bytes_received"]).c_str(),
                human_bytes(t["wire_bytes_sent"]).c_str(), human_bytes(t["wire_bytes_received"]).c_str(),
                t["transfers_ok"].get<unsigned long long>(), t["transfers_failed"].get<unsigned long long>(),
                t.value("transfers_cancelled", 0ULL), human_rate(t["payload_rate_Bps"]).c_str());
    // A quantile bound: seconds, or "+Inf" beyond the last bucket.
    auto bound = [](const json& q) {
        return q.is_number() ? "<= " + std::to_string(q.get<double>() * 1000).substr(0, 6) + " ms" : std::string("> 60 s");
    };
    for (const char* name : {"chunk_rtt", "ttfb", "write"}) {
        const json& h = st["latency"][name];
        if (h["count"].get<std::uint64_t>() > 0) {
            std::printf("latency %s: %llu samples, p50 %s, p99 %s\n", name, h["count"].get<unsigned long long>(),
                        bound(h["p50_le_s"]).c_str(), bound(h["p99_le_s"]).c_str());
        }
    }
    std::printf("peers: %zu\n", st["peers"].size());
    for (const json& p : st["peers"]) {
        std::string who = p["id"].get<std::string>().empty() ? p["address"].get<std::string>() : p["id"].get<std::string>();
        if (!p["name"].get<std::string>().empty()) {
            who += " (" + p["name"].get<std::string>() + ")";
        }
        std::printf("  %s: payload sent %s, received %s; wire sent %s, received %s; %zu connections\n", who.c_str(),
                    human_bytes(p["payload_bytes_sent"]).c_str(), human_bytes(p["payload_bytes_received"]).c_str(),
                    human_bytes(p["wire_bytes_sent"]).c_str(), human_bytes(p["wire_bytes_received"]).c_str(),
                    p["connections"].size());
        for (const json& c : p["connections"]) {
            const json& tu = c["tuning"];
            std::printf("    #%u %s  wire sent %s, received %s, chunks %llu/%llu", c["index"].get<unsigned>(),
                        c["remote"].get<std::string>().c_str(), human_bytes(c["wire_bytes_sent"]).c_str(),
                        human_bytes(c["wire_bytes_received"]).c_str(), c["chunks_sent"].get<unsigned long long>(),
                        c["chunks_received"].get<unsigned long long>());
            if (!c["tcp_info"].is_null()) {
                const json& ti = c["tcp_info"];
                std::printf("  rtt %.2f ms, retrans %u, cwnd %u", ti["rtt_ms"].get<double>(),
                            ti["retransmits"].get<unsigned>(), ti["cwnd_segments"].get<unsigned>());
            }
            std::printf("  [%s%s, lowat %u, sndbuf %d, rcvbuf %d]\n", tu["congestion"].get<std::string>().c_str(),
                        tu["nodelay"].get<bool>() ? ", nodelay" : "", tu["notsent_lowat"].get<unsigned>(),
                        tu["sndbuf"].get<int>(), tu["rcvbuf"].get<int>());
        }
    }
    const json& lan = st["discovery"];
    if (lan.is_object() && lan.value("enabled", false)) {
        const json& n = lan["announcements"];
        std::printf("discovery: announcing as \"%s\" on %s %s port %d; %zu node(s) heard; announcements sent %llu, "
                    "taken %llu, ignored %llu (forged %llu, stale %llu, replayed %llu, over the rate %llu)\n",
                    ferry::printable(lan.value("name", "")).c_str(), lan.value("group4", "").c_str(),
                    lan.value("group6", "").c_str(), lan.value("port", 0), lan["peers"].size(),
                    n.value("sent", 0ULL), n.value("taken", 0ULL),
                    n.value("forged", 0ULL) + n.value("stale", 0ULL) + n.value("replayed", 0ULL) + n.value("dropped", 0ULL),
                    n.value("forged", 0ULL), n.value("stale", 0ULL), n.value("replayed", 0ULL), n.value("dropped", 0ULL));
    } else if (lan.is_object()) {
        std::printf("discovery: off\n");
    }
    std::printf("transfers: %zu\n", st["transfers"].size());
    for (const json& x : st["transfers"]) {
        std::uint64_t total = x["total_bytes"];
        std::uint64_t done = x["confirmed_bytes"].get<std::uint64_t>() + x["skipped_bytes"].get<std::uint64_t>();
        std::printf("  %s %s %s: %s / %s (%.0f%%), %s, files %llu/%llu, %u connections\n",
                    x["direction"].get<std::string>().c_str(), x["direction"] == "send" ? "to" : "from",
                    (x["peer"].get<std::string>().empty() ? x["address"] : x["peer"]).get<std::string>().c_str(),
                    human_bytes(x["confirmed_bytes"]).c_str(), human_bytes(total).c_str(),
                    total > 0 ? 100.0 * static_cast<double>(done) / static_cast<double>(total) : 100.0,
                    human_rate(x["rate_Bps"]).c_str(), x["files_done"].get<unsigned long long>(),
                    x["files_total"].get<unsigned long long>(), x["connections"].get<unsigned>());
    }
}

int cmd_status(const common_opts& o) {
    fs::path state = ferry::resolve_state_dir(o.state);
    std::string reply;
    std::error_code ec = ferry::control_request(state, "status", std::chrono::seconds(5), reply);
    if (ec == std::errc::no_such_file_or_directory || ec == std::errc::connection_refused) {
        return fail(o, exit_code::transfer_failed, "no ferry node is running with state folder " + state.string());
    }
    if (ec == std::errc::permission_denied || ec == std::errc::operation_not_permitted) {
        return fail(o, exit_code::local_io, "may not ask the node at " + ferry::control_socket_path(state).string() +
                                                ": " + ec.message() + " (run ferry status as the user the node runs as)");
    }
    if (ec) {
        return fail(o, exit_code::local_io, "the node at " + ferry::control_socket_path(state).string() +
                                                " did not answer: " + ec.message());
    }
    json st = json::parse(reply, nullptr, false);
    if (st.is_discarded() || st.value("event", "") != "status") {
        return fail(o, exit_code::local_io, "the node's answer is not a status: " + reply.substr(0, 200));
    }
    if (o.json) {
        std::cout << dump(st) << '\n' << std::flush;
    } else {
        print_status(st);
    }
    return 0;
}

struct send_opts {
    std::vector<std::string> args;  // PATH... TARGET
    std::uint32_t connections = ferry::default_connections;
    // --connections itself: not given (on the command line or in the configuration file),
    // a push opens the connections above the first only when the path calls for them.
    CLI::Option* connections_flag = nullptr;
    bool overwrite = false;
    bool fsync_each = false;
    bool plaintext = false;
    std::string compress = "auto";
    double retry_for_s = 300;
    double stall_timeout_s = 30;
    std::string bwlimit = "0";
};

// Connections above the first only when the path calls for them: --connections not given
// (on the command line or in the configuration file).
bool adaptive_connections(const send_opts& s) {
    return s.connections_flag == nullptr || s.connections_flag->count() == 0;
}

// The round trip that calls for them: FERRY_WIDEN_RTT_US (for measurements and tests), or
// `fallback`.
std::uint32_t widen_rtt_us(std::uint32_t fallback) {
    const char* rtt = std::getenv("FERRY_WIDEN_RTT_US");
    return rtt != nullptr ? static_cast<std::uint32_t>(std::strtoul(rtt, nullptr, 10)) : fallback;
}

// --bwlimit RATE in bytes per second: a number with K, M or G (powers of 1024), optionally
// followed by "B" or "B/s"; a bare number is KiB/s, as in rsync. 0: no limit. nullopt
// when it is not such a number, or under min_rate: a 256 KiB chunk must go out well
// within the peer's idle timeout (2 minutes by default).
constexpr double min_rate = 16 * 1024;
std::optional<std::uint64_t> parse_rate(const std::string& text) {
    std::size_t used = 0;
    double value = 0;
    try {
        value = std::stod(text, &used);
    } catch (const std::exception&) {
        return std::nullopt;
    }
    std::string unit = text.substr(used);
    for (const char* tail : {"B/s", "/s", "B"}) {
        if (unit.size() > std::strlen(tail) && unit.ends_with(tail)) {
            unit.resize(unit.size() - std::strlen(tail));
            break;
        }
    }
    double scale = unit.empty() ? 1024.0 : 0;
    if (unit == "K" || unit == "k") {
        scale = 1024.0;
    } else if (unit == "M" || unit == "m") {
        scale = 1024.0 * 1024;
    } else if (unit == "G" || unit == "g") {
        scale = 1024.0 * 1024 * 1024;
    }
    if (scale == 0 || !(value >= 0) || value * scale > 1e15 || (value > 0 && value * scale < min_rate)) {
        return std::nullopt;
    }
    return static_cast<std::uint64_t>(std::llround(value * scale));
}

// The flags of an outgoing transfer that need checking (`send`, and `sync` either way),
// parsed: 0, or the usage failure's exit code (the error said).
struct checked_flags {
    ferry::compress_mode compress = ferry::compress_mode::automatic;
    std::uint64_t max_rate = 0;
};
int check_flags(const common_opts& o, const send_opts& s, checked_flags& out) {
    if (auto e = congestion_error(o)) {
        return fail(o, exit_code::usage, *e);
    }
    if (s.connections < 1 || s.connections > ferry::max_connections) {
        return fail(o, exit_code::usage, "--connections must be 1..16");
    }
    std::optional<ferry::compress_mode> mode = ferry::parse_compress_mode(s.compress);
    if (!mode) {
        return fail(o, exit_code::usage, "--compress takes auto, always or never, not '" + s.compress + "'");
    }
    std::optional<std::uint64_t> rate = parse_rate(s.bwlimit);
    if (!rate) {
        return fail(o, exit_code::usage,
                    "--bwlimit takes a rate of at least 16K, such as 500K, 10M or 1G (0: no limit), not '" + s.bwlimit +
                        "'");
    }
    out = {*mode, *rate};
    return 0;
}

struct sync_opts {
    std::string src;
    std::string dst;
    bool delete_ = false;
    bool dry_run = false;
    bool checksum = false;
    bool verbose = false;
    std::vector<std::string> exclude;
    std::vector<std::string> exclude_from;
    // Which of the two each exclude value came from, in command-line order (true:
    // --exclude-from): the last matching pattern decides, as in rsync, whichever flag
    // gave it.
    std::vector<bool> exclude_order;
};

struct sync_run;
using scan_fn = std::function<std::pair<std::error_code, ferry::source_tree>(std::string& error)>;
// A scan that hands its entries to a feed as it goes (`ferry send`): the transfer starts
// with the first part.
using stream_scan_fn = std::function<std::error_code(ferry::scan_feed& feed, std::string& error)>;
int run_send(const common_opts& o, const send_opts& s, const ferry::send_target& t, const scan_fn& scan,
             sync_run* sync, const stream_scan_fn& stream = {});

// A remote folder of `ferry sync`: a peer, one of its shares and a path inside it.
struct remote_spec {
    ferry::send_target target;
    std::string share;
    std::string path;  // wire path inside the share; "" = its root
};

constexpr const char* default_port = "7788";

// "ID@REST" -> t.expected_id = ID, `address` = REST (an address without '@' is left as
// it is). False with `error` set when ID is not a node ID; `whole` is the argument as
// given, for the message.
bool take_expected_id(std::string& address, const std::string& whole, ferry::send_target& t, std::string& error) {
    auto at = address.find('@');
    if (at == std::string::npos) {
        return true;
    }
    std::optional<std::string> id = ferry::parse_node_id(address.substr(0, at));
    if (!id) {
        error = "\"" + address.substr(0, at) + "\" in \"" + whole + "\" is not a node ID";
        return false;
    }
    t.expected_id = *id;
    address = address.substr(at + 1);
    return true;
}

// The running `ferry serve`'s status (same state folder), or null when none answers.
json local_node_status(const common_opts& o) {
    std::string reply;
    if (ferry::control_request(ferry::resolve_state_dir(o.state), "status", std::chrono::seconds(2), reply)) {
        return nullptr;
    }
    json st = json::parse(reply, nullptr, false);
    return st.is_discarded() || st.value("event", "") != "status" ? json(nullptr) : st;
}

// The nodes LAN discovery hears, from a `ferry status` reply (local_node_status): its
// `discovery.peers` array, or null when no node runs or its discovery is off.
const json* lan_peers(const json& status) {
    if (!status.is_object()) {
        return nullptr;
    }
    auto lan = status.find("discovery");
    if (lan == status.end() || !lan->is_object() || !lan->value("enabled", false)) {
        return nullptr;
    }
    static const json none = json::array();
    auto peers = lan->find("peers");
    return peers != lan->end() && peers->is_array() ? &*peers : &none;
}

// Where to reach the peer `name`: a trusted peer's name or ID with the address `ferry
// trust --address` gave it, else the address LAN discovery found it at (the running
// `ferry serve` of this state folder heard its signed announcement), by ID, or by the
// name a trusted node announces. A name only an untrusted node announces is refused
// (anyone may announce any name; an ID given by the user is pinned as given). `t` gets
// the address and the ID to expect.
bool resolve_peer(const common_opts& o, const std::string& name, ferry::send_target& t, std::string& error) {
    ferry::trust_store store = load_trust(ferry::resolve_state_dir(o.state));
    std::optional<ferry::trusted_peer> peer = store.find(name);
    std::string address = peer ? peer->address : "";
    std::string id = peer ? peer->id : ferry::parse_node_id(name).value_or("");
    if (address.empty()) {
        json st = local_node_status(o);
        const json* found = nullptr;
        std::string untrusted;  // a node announcing `name` that is not trusted here
        if (const json* lan = lan_peers(st)) {
            for (const json& d : *lan) {
                std::string did = ferry::parse_node_id(d.value("id", "")).value_or("");
                bool match = id.empty() ? d.value("name", "") == name : did == id;
                if (!match || d["addresses"].empty()) {
                    continue;
                }
                if (id.empty() && !store.find_id(did)) {
                    untrusted = ferry::format_node_id(did);
                    continue;
                }
                if (found != nullptr) {
                    error = "two trusted nodes on the LAN announce the name \"" + name + "\"; name one by its ID";
                    return false;
                }
                found = &d;
            }
        }
        if (found == nullptr) {
            error = peer ? "peer \"" + name + "\" has no address, and LAN discovery has not seen it (give it one: "
                               "ferry trust " + ferry::format_node_id(peer->id) + " --address HOST:PORT)"
                    : !untrusted.empty()
                        ? "\"" + name + "\" is the name node " + untrusted + " announces on the LAN, but that node is "
                              "not trusted here (anyone may announce any name): ferry trust " + untrusted +
                              " --name " + name + ", or name it by its ID"
                        : "no trusted peer named \"" + name + "\", and no node of that name or ID on the LAN (ferry "
                              "trust ID --name " + name + " --address HOST:PORT; `ferry peers` lists what discovery sees)";
            return false;
        }
        address = (*found)["addresses"][0].get<std::string>();
        id = ferry::parse_node_id((*found).value("id", "")).value_or("");
    }
    if (!ferry::split_host_port(address, t.host, t.port)) {
        error = "peer \"" + name + "\" has a bad address \"" + ferry::printable(address) + "\"";
        return false;
    }
    t.expected_id = id;
    return true;
}

// "ferry://[ID@]HOST[:PORT]/SHARE[/PATH]" or "NAME:SHARE[/PATH]" (NAME: a trusted peer's
// name or ID, with the address `ferry trust --address` gave it). A local path (no scheme,
// no ':' before the first '/') gives nullopt with `error` empty; a bad remote sets it.
std::optional<remote_spec> parse_remote(const common_opts& o, const std::string& text, std::string& error,
                                        bool share_optional = false) {
    remote_spec r;
    std::string rest;
    constexpr std::string_view scheme = "ferry://";
    if (text.starts_with(scheme)) {
        std::string after = text.substr(scheme.size());
        std::size_t slash = after.find('/');
        std::string authority = after.substr(0, slash);
        rest = slash == std::string::npos ? "" : after.substr(slash + 1);
        if (!take_expected_id(authority, text, r.target, error)) {
            return std::nullopt;
        }
        bool has_port = authority.starts_with('[') ? authority.find("]:") != std::string::npos
                                                   : authority.find(':') != std::string::npos;
        if (!has_port) {
            authority += std::string(":") + default_port;
        }
        if (authority.empty() || !ferry::split_host_port(authority, r.target.host, r.target.port)) {
            error = "bad address in \"" + text + "\" (expected ferry://[ID@]HOST[:PORT]/SHARE[/PATH])";
            return std::nullopt;
        }
    } else {
        std::size_t colon = text.find(':');
        if (colon == std::string::npos || text.find('/') < colon) {
            return std::nullopt;  // a local path
        }
        std::string name = text.substr(0, colon);
        rest = text.substr(colon + 1);
        if (!resolve_peer(o, name, r.target, error)) {
            error += ", in \"" + text + "\"";
            return std::nullopt;
        }
    }
    while (!rest.empty() && rest.back() == '/') {
        rest.pop_back();
    }
    std::size_t slash = rest.find('/');
    r.share = rest.substr(0, slash);
    r.path = slash == std::string::npos ? "" : rest.substr(slash + 1);
    if (r.share.empty() && !(share_optional && r.path.empty())) {
        error = "no share named in \"" + text + "\"";
        return std::nullopt;
    }
    if (!r.path.empty() && ferry::check_wire_path(r.path)) {
        error = "bad path \"" + r.path + "\" in \"" + text + "\" (relative, no '.', '..' or empty parts)";
        return std::nullopt;
    }
    return r;
}

int cmd_send(const common_opts& o, const send_opts& s) {
    if (s.args.size() < 2) {
        return fail(o, exit_code::usage, "need at least one PATH and a target [ID@]HOST:PORT or PEER");
    }
    std::string target = s.args.back();
    ferry::send_target t;
    std::string error;
    if (target.find(':') == std::string::npos && target.find('@') == std::string::npos) {
        if (!resolve_peer(o, target, t, error)) {  // a peer's name or ID
            return fail(o, exit_code::usage, error);
        }
    } else if (!take_expected_id(target, s.args.back(), t, error)) {
        return fail(o, exit_code::usage, error);
    } else if (!ferry::split_host_port(target, t.host, t.port)) {
        return fail(o, exit_code::usage, "bad target \"" + s.args.back() + "\" (expected [ID@]HOST:PORT, [::1]:PORT for IPv6)");
    }
    std::vector<fs::path> paths(s.args.begin(), s.args.end() - 1);
    return run_send(
        o, s, t,
        [paths](std::string& error) {
            ferry::source_tree out;
            std::error_code ec = ferry::scan_sources(paths, out, error);
            return std::make_pair(ec, std::move(out));
        },
        nullptr,
        [paths](ferry::scan_feed& feed, std::string& error) {
            ferry::source_tree none;
            return ferry::scan_sources(paths, none, error, &feed);
        });
}

// What a sync did, as its summary counts it.
struct sync_counts {
    std::uint64_t created = 0;
    std::uint64_t updated = 0;
    std::uint64_t renamed = 0;
    std::uint64_t unchanged = 0;
    std::uint64_t created_dirs = 0;  // folders DST did not have
    std::uint64_t updated_dirs = 0;  // folders DST had with another mode or mtime
};

// What `ferry sync` adds to a send: the target share, and counts for its summary.
struct sync_run : sync_counts {
    wire::SyncTarget target;
    bool verbose = false;
    bool pull = false;  // SRC is remote: this side receives
    bool get = false;   // `ferry get`: one file or folder of a share into a local folder
    std::filesystem::path src_root;  // a push's SRC folder
    // A dry run's bytes_matched: the sizes of the files found unchanged or to be renamed
    // (its receiver skips every file, so the report's skipped bytes are all of them).
    std::uint64_t dry_matched_bytes = 0;
    bool resumed_told = false;  // the line on files started from what DST has: once a run
    // The failure lines said as they happened ("failed: PATH: reason", "not sent: ..."): the
    // one more pass for files that changed while read meets the same failures again, and
    // says each once (up to max_failed_said of them).
    std::unordered_set<std::string> failed_said;
    static constexpr std::size_t max_failed_said = 4096;
    // What the sync did to a file, as counted.
    enum class action : std::uint8_t { created, updated, renamed, unchanged };
    // Each attempt's receiver says again what it does, of every file: the counts start
    // again. A file an earlier attempt (lost connection, or the one more pass for files
    // that changed while read) made, changed or found unchanged is then found unchanged:
    // it counts as it did then, and is not told of twice (told(), below).
    void new_attempt() {
        fold(sending_, sending_now_);
        if (!now_.empty()) {
            // This attempt's word on a path replaces an earlier one's: the last of each
            // hash kept.
            fold(earlier_, now_);
            auto last = std::unique(earlier_.rbegin(), earlier_.rend(),
                                    [](std::uint64_t a, std::uint64_t b) { return path_key(a) == path_key(b); });
            earlier_.erase(earlier_.begin(), last.base());
        }
        counts() = {};
        dry_matched_bytes = 0;
    }
    // Before the one more attempt for files that changed while read: what to go back to if
    // that attempt never reaches the peer.
    void keep_first_pass() { first_pass = counts(); }
    // The run ended with the first pass's report (the one more never reached the peer).
    void first_pass_counts() { counts() = first_pass; }
    // This attempt sends `path`'s data, to make it (created) or change it (updated). Should
    // the attempt end before the receiver's word on it, and the next find it unchanged (the
    // receiver had placed it), it was made or changed all the same.
    void sending(std::string_view path, action a) {
        sending_now_.push_back(key_of(path, false) | static_cast<std::uint64_t>(a));
    }
    // This attempt says `a` of `path` (of `size` bytes; a folder: `dir`, created, updated
    // or unchanged): counted as what it is to the run. What to tell of it: nothing if an
    // earlier attempt told of it already, else what it is to the run.
    std::optional<action> told(std::string_view path, action a, std::uint64_t size, bool dir = false) {
        const std::uint64_t h = key_of(path, dir);
        const std::uint64_t* it = find(earlier_, h);
        bool before = it != nullptr;
        const action then = before ? static_cast<action>(*it & action_bits) : a;
        // Found unchanged now, or said the same again (a dry run places nothing), or to
        // change what an earlier attempt made (a folder it made, whose mtime it did not
        // set before it ended): as it was then.
        bool again = before && (a == action::unchanged || a == then || (then == action::created && a == action::updated));
        action counted = again ? then : a;
        if (!before && a == action::unchanged && !dir) {
            // Placed by an earlier attempt that ended before it heard so.
            if (const std::uint64_t* sent = find(sending_, h)) {
                counted = static_cast<action>(*sent & action_bits);
            }
        }
        now_.push_back(h | static_cast<std::uint64_t>(counted));
        if (dir) {
            created_dirs += counted == action::created ? 1 : 0;
            updated_dirs += counted == action::updated ? 1 : 0;
        } else {
            switch (counted) {
                case action::created: ++created; break;
                case action::updated: ++updated; break;
                case action::renamed: ++renamed; dry_matched_bytes += size; break;
                case action::unchanged: ++unchanged; dry_matched_bytes += size; break;
            }
        }
        return again ? std::nullopt : std::optional<action>(counted);
    }

private:
    // What earlier attempts told of each path (by its hash, sorted, the action in its low
    // bits: 8 bytes a file, not a copy of every path), and what this one did so far.
    static constexpr std::uint64_t action_bits = 3;
    static constexpr std::uint64_t folder_salt = 0x9e3779b97f4a7c15;
    static std::uint64_t path_key(std::uint64_t e) { return e & ~action_bits; }
    // A folder's record is not its path's file's: a file an attempt made where the next
    // makes a folder is two things made.
    static std::uint64_t key_of(std::string_view path, bool dir) {
        return path_key(std::hash<std::string_view>{}(path) ^ (dir ? folder_salt : 0));
    }
    // Adds `now`'s records to the sorted `records` (stable: a path's later record after its
    // earlier ones) and empties it.
    static void fold(std::vector<std::uint64_t>& records, std::vector<std::uint64_t>& now) {
        if (now.empty()) {
            return;
        }
        records.insert(records.end(), now.begin(), now.end());
        now.clear();
        std::stable_sort(records.begin(), records.end(),
                         [](std::uint64_t a, std::uint64_t b) { return path_key(a) < path_key(b); });
    }
    // The first record of key `h` in the sorted `records`, or null.
    static const std::uint64_t* find(const std::vector<std::uint64_t>& records, std::uint64_t h) {
        auto it = std::lower_bound(records.begin(), records.end(), h,
                                   [](std::uint64_t e, std::uint64_t x) { return path_key(e) < x; });
        return it != records.end() && path_key(*it) == h ? &*it : nullptr;
    }
    std::vector<std::uint64_t> earlier_;
    std::vector<std::uint64_t> now_;
    // What attempts sent data of, to make or change (sending()): earlier ones', sorted,
    // and this one's.
    std::vector<std::uint64_t> sending_;
    std::vector<std::uint64_t> sending_now_;
    sync_counts& counts() { return *this; }
    sync_counts first_pass;
};

// One sync event: a file created, updated, renamed (`from` another path at DST) or
// skipped, or a path deleted (or, in a dry run, what would happen to it): a JSON line, and
// with -v an itemized line.
void sync_event(const common_opts& o, sync_run& run, const char* what, std::string_view path, std::uint64_t size,
                const char* kind, std::string_view from = {}) {
    if (o.json) {
        static std::string line;
        line.clear();
        fmt::format_to(std::back_inserter(line), FMT_COMPILE(R"({{"event":"{}")"), what);
        append_path_field(line, "path", path);
        fmt::format_to(std::back_inserter(line), FMT_COMPILE(R"(,"kind":"{}")"), kind);
        if (std::string_view(kind) == "file" && std::string_view(what) != "deleted") {
            fmt::format_to(std::back_inserter(line), FMT_COMPILE(R"(,"size":{})"), size);
        }
        if (!from.empty()) {
            append_path_field(line, "from", from);
        }
        end_event_line(line);
    } else if (run.verbose && std::string_view(what) != "skipped") {
        // (A dry run's: "would delete dd/", as its summary says "to delete".)
        std::string verb = what;
        if (run.target.dry_run()) {
            verb = "would " + verb.substr(0, verb.size() - 1);  // created -> would create
        }
        say(fmt::format("{} {}{}{}", verb, ferry::printable(path), std::string_view(kind) == "dir" ? "/" : "",
                        from.empty() ? "" : " (from " + ferry::printable(from) + ")"));
    }
}

int run_pull(const common_opts& o, const send_opts& s, const ferry::send_target& t, const std::string& dst,
             sync_run& run);

// Pushes the contents of a local folder into a share of a peer, or pulls a folder of a
// peer's share into a local one.
int cmd_sync(const common_opts& o, const send_opts& s, const sync_opts& y) {
    std::string error;
    std::optional<remote_spec> src = parse_remote(o, y.src, error);
    if (!error.empty()) {
        return fail(o, exit_code::usage, error);
    }
    std::optional<remote_spec> dst = parse_remote(o, y.dst, error);
    if (!error.empty()) {
        return fail(o, exit_code::usage, error);
    }
    if (src && dst) {
        return fail(o, exit_code::usage, "both SRC and DST are remote; one side of a sync must be a local folder");
    }
    if (!src && !dst) {
        return fail(o, exit_code::usage,
                    "neither SRC nor DST is remote (ferry://[ID@]HOST[:PORT]/SHARE[/PATH] or NAME:SHARE[/PATH])");
    }
    ferry::exclude_set excludes;
    // `line` as an --exclude-from file has it, or as pattern_line made it of `given`.
    auto add_pattern = [&](const std::string& line, const std::string& given, const std::string& where) {
        if (!excludes.add(line)) {
            error = "bad exclude pattern \"" + given + "\"" + where + " (too long, too many, or matches nothing)";
            return false;
        }
        return true;
    };
    std::vector<bool> order = y.exclude_order;
    if (static_cast<std::size_t>(std::ranges::count(order, true)) != y.exclude_from.size() ||
        static_cast<std::size_t>(std::ranges::count(order, false)) != y.exclude.size()) {
        // (Values CLI11 gave without an entry in its parse order, if a version ever does:
        // the files first, then the patterns.)
        order.assign(y.exclude_from.size(), true);
        order.insert(order.end(), y.exclude.size(), false);
    }
    std::size_t next_file = 0;
    std::size_t next_pattern = 0;
    for (bool from_file : order) {
        if (from_file) {
            const std::string& file = y.exclude_from[next_file++];
            std::ifstream in(file);
            if (!in) {
                return fail(o, exit_code::usage, "--exclude-from " + file + ": " + std::strerror(errno));
            }
            std::string line;
            for (int n = 1; std::getline(in, line); ++n) {
                if (!add_pattern(line, line, " in " + file + ":" + std::to_string(n))) {
                    return fail(o, exit_code::usage, error);
                }
            }
        } else {
            // A flag's value is one pattern as it is: "#c" and "name " are not a comment and "name".
            const std::string& p = y.exclude[next_pattern++];
            if (!add_pattern(ferry::pattern_line(p), p, "")) {
                return fail(o, exit_code::usage, error);
            }
        }
    }
    const remote_spec& remote = src ? *src : *dst;
    sync_run run;
    run.verbose = y.verbose;
    run.pull = src.has_value();
    run.target.set_share(remote.share);
    run.target.set_path(remote.path);
    run.target.set_delete_(y.delete_);
    run.target.set_dry_run(y.dry_run);
    run.target.set_checksum(y.checksum);
    for (const std::string& l : excludes.lines()) {
        run.target.add_exclude(l);
    }
    if (ferry::exclude_bytes(run.target) > ferry::max_sync_exclude_bytes) {
        return fail(o, exit_code::usage, "exclude patterns over " + std::to_string(ferry::max_sync_exclude_bytes / 1024) +
                                             " KiB in all; use fewer, broader ones");
    }
    if (src) {
        return run_pull(o, s, src->target, y.dst, run);
    }
    fs::path root = y.src;
    run.src_root = root;  // its mode and mtime go with each scan of it (run_send)
    // Offered while SRC is walked (a big tree's first files move before its scan ends, and
    // its entries are never all in one array), except with --checksum: every file is hashed
    // before the first offer.
    stream_scan_fn stream;
    if (!y.checksum) {
        stream = [root, excludes](ferry::scan_feed& feed, std::string& error) {
            ferry::source_tree none;
            return ferry::scan_contents(root, excludes, none, error, nullptr, true, &feed);
        };
    }
    return run_send(o, s, dst->target, [root, excludes](std::string& error) {
        ferry::source_tree out;
        std::error_code ec = ferry::scan_contents(root, excludes, out, error);
        return std::make_pair(ec, std::move(out));
    }, &run, stream);
}

// The folder `p`, not there: under a file (ENOTDIR), the file it lies below is named (the
// nearest path above it that is there, made absolute); else `else_text`. Returns the words
// after the folder's name.
std::string absent_folder_text(const fs::path& p, const std::string& else_text) {
    std::error_code ec;
    const fs::path up = ferry::nearest_existing(p);
    return fs::is_directory(up, ec) ? else_text : " lies below " + up.string() + ", which is not a folder";
}

struct get_opts {
    std::string source;
    std::string dest = ".";
    bool verbose = false;
    std::vector<std::string> from;  // --from: several sources of one file
    std::uint64_t range_size = 0;   // --range-size (0: automatic)
    bool from_lan = false;          // --from-lan: and every trusted peer discovery sees with the same file
};

int run_multi_get(const common_opts& o, const send_opts& s, const get_opts& g, std::optional<remote_spec> first,
                  const std::string& share, const std::string& path, const std::string& name, const fs::path& folder);

// Pulls one file or folder of a peer's share into a local folder, as `cp -r` places it:
// into DEST when DEST is a folder (or ends in '/'), else as DEST itself (a new name in
// DEST's folder). Files already there with the same size and mtime are kept; others
// are replaced, resumed from what an interrupted get left.
int cmd_get(const common_opts& o, const send_opts& s, const get_opts& g) {
    std::string error;
    // With --from, SOURCE may be SHARE/PATH alone (no peer of its own).
    const bool multi = !g.from.empty() || g.from_lan;
    bool bare = multi && g.source.find(':') == std::string::npos;
    std::optional<remote_spec> src = parse_remote(o, bare ? "ferry://0.0.0.0/" + g.source : g.source, error);
    if (!error.empty()) {
        return fail(o, exit_code::usage, error);
    }
    if (!src) {
        return fail(o, exit_code::usage, "\"" + g.source + "\" names no peer's share (NAME:SHARE[/PATH] or "
                                         "ferry://[ID@]HOST[:PORT]/SHARE[/PATH])");
    }
    std::string name = src->path.empty() ? src->share : src->path.substr(src->path.rfind('/') + 1);
    fs::path folder = g.dest;
    struct stat st {};
    bool into = g.dest.ends_with('/') || (::stat(g.dest.c_str(), &st) == 0 && S_ISDIR(st.st_mode));
    if (!into) {
        fs::path d(g.dest);
        name = d.filename().string();
        folder = d.has_parent_path() ? d.parent_path() : fs::path(".");
        if (name == "." || name == ".." || ferry::check_wire_path(name)) {
            return fail(o, exit_code::usage, "DEST " + g.dest + ": not a name a file or folder can take");
        }
        if (const bool there = ::stat(folder.c_str(), &st) == 0; !there || !S_ISDIR(st.st_mode)) {
            return fail(o, exit_code::usage,
                        "DEST " + g.dest + ": " +
                            (there ? folder.string() + " is not a folder"
                                   : "its folder " + folder.string() +
                                         absent_folder_text(folder,
                                                            " does not exist (as with cp, name a folder "
                                                            "that does, or end DEST in '/')")));
        }
    }
    if (!multi && g.range_size != 0) {
        return fail(o, exit_code::usage, "--range-size is for --from (one file from several peers)");
    }
    if (multi) {
        if (src->path.empty()) {
            return fail(o, exit_code::usage,
                        "--from and --from-lan get one file from several sources: name the file (SHARE/PATH)");
        }
        return run_multi_get(o, s, g, bare ? std::nullopt : src, src->share, src->path, name, folder);
    }
    sync_run run;
    run.verbose = g.verbose;
    run.pull = true;
    run.get = true;
    run.target.set_share(src->share);
    run.target.set_path(src->path);
    run.target.set_get(name);
    return run_pull(o, s, src->target, folder.string(), run);
}

struct ls_opts {
    std::string target;
    bool recursive = false;
};

// "drwxr-xr-x" for an entry's kind and permission bits.
std::string mode_text(const ferry::entry_info& e) {
    std::string t = e.is_dir ? "d" : e.is_link ? "l" : "-";
    const char* rwx = "rwxrwxrwx";
    for (int bit = 8; bit >= 0; --bit) {
        t += (e.mode >> bit) & 1u ? rwx[8 - bit] : '-';
    }
    if (e.mode & 04000) {
        t[3] = t[3] == 'x' ? 's' : 'S';
    }
    if (e.mode & 02000) {
        t[6] = t[6] == 'x' ? 's' : 'S';
    }
    if (e.mode & 01000) {
        t[9] = t[9] == 'x' ? 't' : 'T';
    }
    return t;
}

// "2026-12-03 13:13" in local time.
std::string mtime_text(std::int64_t ns) {
    std::time_t sec = static_cast<std::time_t>(ns / 1'000'000'000);
    struct tm tm {};
    char text[32] = "?";
    if (::localtime_r(&sec, &tm) != nullptr) {
        std::strftime(text, sizeof text, "%Y-%m-%d %H:%M", &tm);
    }
    return text;
}

// Lists a peer's shares open to this node, or what a share holds at a path (one level,
// or everything with -r), like ls -l.
int cmd_ls(const common_opts& o, const ls_opts& l) {
    std::string arg = l.target;
    if (arg.find("://") == std::string::npos && arg.find(':') == std::string::npos) {
        arg += ':';  // a peer's name alone: its shares
    }
    std::string error;
    std::optional<remote_spec> remote = parse_remote(o, arg, error, true);
    if (!error.empty()) {
        return fail(o, exit_code::usage, error);
    }
    if (!remote) {
        return fail(o, exit_code::usage, "\"" + l.target + "\" names no peer (NAME[:SHARE[/PATH]] or "
                                         "ferry://[ID@]HOST[:PORT][/SHARE[/PATH]])");
    }
    const bool shares = remote->share.empty();
    // A folder's listing starts with the folder itself; what it holds is shown relative to it.
    const std::string top = remote->path.empty() ? remote->share : remote->path.substr(remote->path.rfind('/') + 1);
    ferry::node_config cfg = base_config(o);
    asio::io_context io(1);
    ferry::node_events ev;
    ev.log = base_events(o).log;  // its warnings (a peer whose ID is not verified), not its events
    ferry::node n(io, cfg, std::move(ev));
    struct counts {
        std::uint64_t files = 0, dirs = 0, links = 0, bytes = 0, shown = 0;
    } count;
    bool first = true;
    bool top_is_dir = false;
    std::optional<ferry::list_report> result;
    ferry::list_spec spec;
    spec.request.set_share(remote->share);
    spec.request.set_path(remote->path);
    spec.request.set_recursive(l.recursive);
    spec.entries = [&](std::vector<ferry::entry_info> batch) {
        for (ferry::entry_info& e : batch) {
            std::string_view path = e.path;
            if (std::exchange(first, false) && !shares && e.path == top && e.is_dir) {
                top_is_dir = true;  // the folder asked for: what it holds follows
                continue;
            }
            if (top_is_dir && path.starts_with(top + "/")) {
                path.remove_prefix(top.size() + 1);
            }
            ++count.shown;
            (e.is_dir ? count.dirs : e.is_link ? count.links : count.files) += 1;
            count.bytes += e.size;
            if (shares) {
                if (o.json) {
                    json j{{"event", "share"}};
                    add_path(j, "name", e.path);
                    j["writable"] = (e.mode & 0200) != 0;
                    emit(o, std::move(j), false);
                } else {
                    std::printf("%-24s %s\n", ferry::printable(e.path).c_str(),
                                e.mode & 0200 ? "read-write" : "read-only");
                }
                continue;
            }
            if (o.json) {
                json j{{"event", "entry"}};
                add_path(j, "path", path);
                j["kind"] = e.is_dir ? "dir" : e.is_link ? "symlink" : "file";
                j["size"] = e.size;
                j["mode"] = fmt::format("{:04o}", e.mode);
                j["mtime_ns"] = e.mtime_ns;
                if (e.is_link) {
                    add_path(j, "link_target", e.link_target.str());
                }
                emit(o, std::move(j), false);
            } else {
                std::printf("%s %12s %s %s%s%s\n", mode_text(e).c_str(),
                            e.is_file() ? std::to_string(e.size).c_str() : "-", mtime_text(e.mtime_ns).c_str(),
                            ferry::printable(path).c_str(), e.is_dir ? "/" : "",
                            e.is_link ? (" -> " + ferry::printable(e.link_target.str())).c_str() : "");
            }
        }
    };
    spec.done = [&](const ferry::list_report& r) {
        result = r;
        n.stop("listed");
    };
    n.list(std::move(spec), remote->target);
    io.run();
    std::fflush(stdout);
    if (!result || !result->ok) {
        return fail(o, result ? result->code : exit_code::transfer_failed,
                    result ? result->error : "the listing did not finish");
    }
    if (o.json) {
        emit(o, json{{"event", "done"},
                     {"peer", ferry::format_node_id(result->peer_id)},
                     {"entries", count.shown},
                     {"files", count.files},
                     {"dirs", count.dirs},
                     {"symlinks", count.links},
                     {"bytes", count.bytes}});
    } else if (shares) {
        say(std::to_string(count.shown) + " share(s) open to this node");
    } else {
        say(fmt::format("{} entr{}: {} file(s) ({}), {} folder(s), {} symlink(s)", count.shown,
                        count.shown == 1 ? "y" : "ies", count.files, human_bytes(count.bytes),
                        count.dirs, count.links));
    }
    return 0;
}

struct peers_opts {
    bool shares = true;
};

// Trusted and discovered peers: who they are, where, whether seen and connected, and
// (asked of each, at once) the shares they open to this node.
int cmd_peers(const common_opts& o, const peers_opts& po) {
    struct row {
        std::string id;  // canonical
        std::string name;            // ours (trust list)
        std::string announced;       // its own, as discovery heard it
        std::vector<std::string> addresses;
        std::optional<double> seen_s_ago;
        bool trusted = false;
        bool connected = false;
        std::optional<json> shares;  // [{name, writable}], once asked
        std::string shares_error;
    };
    std::map<std::string, row> rows;
    ferry::trust_store store = load_trust(ferry::resolve_state_dir(o.state));
    for (const ferry::trusted_peer& p : store.peers()) {
        row& r = rows[p.id];
        r.id = p.id;
        r.name = p.name;
        r.trusted = true;
        if (!p.address.empty()) {
            r.addresses.push_back(p.address);
        }
    }
    json st = local_node_status(o);
    const json* lan = lan_peers(st);
    const bool discovering = lan != nullptr;
    if (lan) {
        for (const json& d : *lan) {
            std::string id = ferry::parse_node_id(d.value("id", "")).value_or("");
            if (id.empty()) {
                continue;
            }
            row& r = rows[id];
            r.id = id;
            r.announced = d.value("name", "");
            r.seen_s_ago = d.value("seen_s_ago", 0.0);
            for (const json& a : d["addresses"]) {
                if (std::ranges::find(r.addresses, a.get<std::string>()) == r.addresses.end()) {
                    r.addresses.push_back(a.get<std::string>());
                }
            }
        }
    }
    if (st.is_object()) {
        for (const json& p : st["peers"]) {
            std::string id = ferry::parse_node_id(p.value("id", "")).value_or("");
            if (auto it = rows.find(id); it != rows.end() && !p["connections"].empty()) {
                it->second.connected = true;
            }
        }
    }
    if (po.shares) {
        // One listing each, all at once, none longer than a few seconds.
        asio::io_context io(1);
        ferry::node n(io, base_config(o), ferry::node_events{});
        asio::steady_timer deadline(io);
        std::size_t pending = 0;
        for (auto& [id, r] : rows) {
            ferry::send_target t;
            // Trusted peers only: a node that only announced itself is not dialed.
            if (!r.trusted || r.addresses.empty() || !ferry::split_host_port(r.addresses.front(), t.host, t.port)) {
                continue;
            }
            t.expected_id = id;
            ++pending;
            ferry::list_spec spec;
            auto shares = std::make_shared<json>(json::array());
            spec.entries = [shares](std::vector<ferry::entry_info> batch) {
                for (const ferry::entry_info& e : batch) {
                    if (shares->size() < 1024) {  // a peer's answer, bounded
                        shares->push_back({{"name", e.path}, {"writable", (e.mode & 0200) != 0}});
                    }
                }
            };
            spec.done = [&pending, &deadline, shares, &r = r](const ferry::list_report& rep) {
                if (rep.ok) {
                    r.shares = *shares;
                } else {
                    r.shares_error = rep.error;
                }
                if (--pending == 0) {
                    deadline.cancel();
                }
            };
            n.list(std::move(spec), t);
        }
        if (pending > 0) {
            deadline.expires_after(std::chrono::seconds(4));
            deadline.async_wait([&](std::error_code) { n.stop("no answer within 4 s"); });
            io.run();
        }
    }
    std::size_t listed = 0;
    for (const auto& [id, r] : rows) {
        ++listed;
        if (o.json) {
            json j{{"event", "peer"},
                   {"id", ferry::format_node_id(id)},
                   {"name", r.name},
                   {"announced_name", r.announced},
                   {"addresses", r.addresses},
                   {"seen_s_ago", r.seen_s_ago ? json(*r.seen_s_ago) : json(nullptr)},
                   {"trusted", r.trusted},
                   {"connected", r.connected},
                   {"shares", r.shares ? *r.shares : json(nullptr)}};
            if (!r.shares_error.empty()) {
                j["shares_error"] = r.shares_error;
            }
            emit(o, std::move(j), false);
            continue;
        }
        std::string shares = "-";
        if (r.shares) {
            shares.clear();
            for (const json& sh : *r.shares) {
                shares += (shares.empty() ? "" : ",") + ferry::printable(sh["name"].get<std::string>()) +
                          (sh["writable"].get<bool>() ? ":rw" : "");
            }
            shares = shares.empty() ? "(none)" : shares;
        } else if (!r.shares_error.empty()) {
            shares = "?";
        }
        std::string name = r.name.empty() ? (r.announced.empty() ? "-" : "(" + r.announced + ")") : r.name;
        std::printf("%-16s %-19s %-24s %-9s %-11s %-9s %s\n", ferry::printable(name).c_str(),
                    ferry::format_node_id(id).substr(0, 19).c_str(),
                    r.addresses.empty() ? "-" : ferry::printable(r.addresses.front()).c_str(),
                    r.seen_s_ago ? fmt::format("{:.0f}s ago", *r.seen_s_ago).c_str() : "-",
                    r.trusted ? "trusted" : "not-trusted", r.connected ? "connected" : "-", shares.c_str());
    }
    std::fflush(stdout);
    std::string note = discovering ? "" : st.is_object() ? "; LAN discovery is off in the running ferry serve"
                                                         : "; no ferry serve runs with this state folder, so "
                                                           "nothing was discovered";
    if (o.json) {
        emit(o, json{{"event", "done"}, {"peers", listed}, {"discovery", discovering}});
    } else {
        say(std::to_string(listed) + " peer(s)" + note);
    }
    return 0;
}

// Test hook (tests/e2e): FERRY_FAULT_AFTER_SCAN="rm:PATH" or "grow:PATH" removes, or
// appends a byte to, the source file at wire path PATH right after the first scan, the way
// a program writing into SRC during a sync would; "unfold:PATH" puts a file in place of
// the folder that holds it.
// FERRY_FAULT_SCAN_DELAY_MS=N (tests): the scan of a send or push starts N ms late, as
// on a slow disk, while the node dials the receiver.
void fault_scan_delay() {
    if (const char* v = std::getenv("FERRY_FAULT_SCAN_DELAY_MS")) {
        std::this_thread::sleep_for(std::chrono::milliseconds(std::atoi(v)));
    }
}

void fault_after_scan(const ferry::source_tree& sources) {
    const char* v = std::getenv("FERRY_FAULT_AFTER_SCAN");
    std::string spec = v != nullptr ? v : "";
    auto colon = spec.find(':');
    if (colon == std::string::npos) {
        return;
    }
    std::string what = spec.substr(0, colon);
    std::string path = spec.substr(colon + 1);
    for (std::size_t i = 0; i < sources.entries.size(); ++i) {
        if (sources.entries[i].path != path) {
            continue;
        }
        std::string local = sources.locals.empty() ? sources.local_prefix + path : sources.locals[i];
        if (what == "rm") {
            ::unlink(local.c_str());
        } else if (what == "grow") {
            std::ofstream(local, std::ios::app | std::ios::binary) << 'x';
        } else if (what == "unfold") {
            const fs::path folder = fs::path(local).parent_path();
            std::error_code ec;
            fs::remove_all(folder, ec);
            std::ofstream(folder, std::ios::binary) << 'x';
        }
    }
}

// Whether `f`'s line was shown as it happened (a warning logged): not said again at the end.
bool said_before(const ferry::skipped_file& f) {
    return f.logged && static_cast<int>(ferry::log_level::warn) <= log_most;
}

// After a transfer that succeeded: one line and one `failed` event per source file the
// sender skipped (vanished, changed while read, unreadable), and the exit code: 0 when
// there is none, `vanished` when every one of them vanished, else `partial`.
int skipped_sources_exit(const common_opts& o, const ferry::transfer_report& r) {
    bool all_vanished = true;
    std::uint64_t at_dst = 0;
    std::uint64_t total = 0;
    for (const ferry::skipped_file& f : r.given_up) {
        if (!said_before(f)) {
            say(ferry::failed_line(f));
        }
        at_dst += f.at_dst ? f.count : 0;
        total += f.count;
        json j{{"event", "failed"}};
        add_path(j, "path", f.path);
        j["reason"] = f.reason;
        j["vanished"] = f.vanished;
        j["at_destination"] = f.at_dst;
        if (f.count != 1) {
            j["count"] = f.count;  // "...": the paths a list on the wire left out
        }
        emit(o, std::move(j), false);
        all_vanished = all_vanished && f.vanished;
    }
    if (r.given_up.empty()) {
        return 0;
    }
    exit_code code = all_vanished ? exit_code::vanished : exit_code::partial;
    std::string what = std::to_string(total - at_dst) + " source path(s) not sent (" +
                       (all_vanished ? "they vanished" : "they changed while read, vanished or could not be read") + ")";
    if (at_dst > 0) {
        // (Each of these is a line above, with the destination's reason.)
        what = (at_dst == total ? "" : what + " and ") + std::to_string(at_dst) +
               " path(s) the destination could not write or finish";
    }
    say(what + ": exit " + std::to_string(static_cast<int>(code)));
    return static_cast<int>(code);
}

// What a sync reports per file and per deleted path, and the resumed line (either
// direction: the node that decides at DST tells, or is told, what it does).
void add_sync_events(const common_opts& o, sync_run& sync, ferry::node_events& ev) {
    ev.log = [&sync, said = std::move(ev.log)](ferry::log_level level, const std::string& line) {
        if (ferry::is_failed_line(line) && sync.failed_said.size() < sync_run::max_failed_said &&
            !sync.failed_said.insert(line).second) {
            return;  // an earlier pass said it
        }
        if (said) {
            said(level, line);
        }
    };
    // Per-file lines say what the sync did (or, in a dry run, would do).
    ev.file = [&o, &sync](const ferry::file_event& f) {
        using action = sync_run::action;
        if (!f.done) {
            if (f.action == wire::SYNC_CREATE || f.action == wire::SYNC_UPDATE) {
                sync.sending(f.path, f.action == wire::SYNC_CREATE ? action::created : action::updated);
            }
            return;
        }
        action a = !f.renamed_from.empty()          ? action::renamed
                   : f.action == wire::SYNC_CREATE ? action::created
                   : f.action == wire::SYNC_UPDATE ? action::updated
                                                   : action::unchanged;
        std::optional<action> tell = sync.told(f.path, a, f.size);
        if (!tell) {
            return;  // an earlier attempt told of it (made, changed or unchanged): not twice
        }
        constexpr const char* names[] = {"created", "updated", "renamed", "skipped"};
        sync_event(o, sync, names[static_cast<int>(*tell)], f.path, f.size, f.symlink ? "symlink" : "file",
                   f.renamed_from);
    };
    ev.resumed = [&o, &sync](const std::string& direction, const std::string& session, std::uint64_t bytes,
                             std::uint64_t files) {
        // Told per batch (each Accept that starts files so) in --json; the line once a
        // run, with -v only (a user's test: noise on every run that updated a file).
        if (sync.verbose && !o.quiet && !sync.resumed_told) {
            sync.resumed_told = true;
            say("changed files start from what the receiver has (an older version, a renamed or copied file, "
                "or what an interrupted attempt left): only the chunks that differ from it are sent");
        }
        emit(o, resumed_event(direction, session, bytes, files));
    };
    ev.folder = [&o, &sync](std::string_view path, wire::SyncAction what) {
        // Told of when made, or when its mode or mtime changes (a folder there as it is in
        // SRC is no change), but recorded either way: a later attempt finds the folder an
        // earlier one made, which still counts.
        using action = sync_run::action;
        auto a = what == wire::SYNC_CREATE   ? action::created
                 : what == wire::SYNC_UPDATE ? action::updated
                                             : action::unchanged;
        if (std::optional<action> tell = sync.told(path, a, 0, true); tell && *tell != action::unchanged) {
            sync_event(o, sync, *tell == action::created ? "created" : "updated", path, 0, "dir");
        }
    };
    ev.deleted = [&o, &sync](std::string_view path, wire::EntryKind kind) {
        sync_event(o, sync, "deleted", path, 0,
                   kind == wire::ENTRY_DIR ? "dir" : kind == wire::ENTRY_SYMLINK ? "symlink" : "file");
    };
}

// ", N failed, M other path(s) not done (below)" for a sync's summary line ("above" when
// each was said as it happened, "listed" when some were; a dry run's: "N would fail, M other
// path(s) would not be done"); "" for none.
std::string failed_text(const std::vector<ferry::skipped_file>& failed, bool dry = false) {
    std::uint64_t files = ferry::count_failed(failed, true);
    std::uint64_t other = ferry::count_failed(failed, false);
    if (failed.empty()) {
        return "";
    }
    std::string out = fmt::format(", {} {}", files, dry ? "would fail" : "failed");
    if (other > 0) {
        out += fmt::format(", {} other path(s) {}", other, dry ? "would not be done" : "not done");
    }
    auto before = std::count_if(failed.begin(), failed.end(), said_before);
    return out + (before == 0 ? " (below)" : before == std::ssize(failed) ? " (above)" : " (listed)");
}

// ", N folder(s) WHAT" for a summary line; "" for none.
std::string folders_text(std::uint64_t n, const char* what) {
    return n == 0 ? "" : fmt::format(", {} folder(s) {}", n, what);
}

// The last line of a sync: what changed (or would), and the `done` event.
// `files`: regular files in SRC (as scanned); `excluded`: what the patterns left out
// there (unknown to a pull: the peer scanned).
int sync_summary(const common_opts& o, const sync_run& run, const ferry::transfer_report& r, std::uint64_t files,
                 std::optional<std::uint64_t> excluded) {
    bool dry = run.target.dry_run();
    std::uint64_t deleted = r.deleted_files + r.deleted_dirs;
    if (run.get) {
        say(fmt::format("got {} file(s): {} created, {} updated, {} copied from files here, {} unchanged{}{}; received "
                        "{} in {:.2f} s ({:.1f} MB/s confirmed, {})",
                        files, run.created, run.updated, run.renamed, run.unchanged, failed_text(r.given_up),
                        folders_text(run.created_dirs, "made") + folders_text(run.updated_dirs, "updated"),
                        human_bytes(r.travelled_bytes()), r.elapsed_s, mbps(r),
                        connections_text(r)) +
            compression_note(r));
    } else if (dry) {
        say(fmt::format(
            "dry run, nothing changed: {} file(s) to create, {} to update, {} to rename, {} unchanged{}{}, "
            "{} path(s) to delete",
            run.created, run.updated, run.renamed, run.unchanged, failed_text(r.given_up, true),
            folders_text(run.created_dirs, "to make") + folders_text(run.updated_dirs, "to update"), deleted));
    } else {
        say(fmt::format("synced {} file(s): {} created, {} updated, {} renamed, {} unchanged{}{}, {} path(s) deleted; "
                        "{} {} in {:.2f} s ({:.1f} MB/s confirmed, {})",
                        files, run.created, run.updated, run.renamed, run.unchanged,
                        failed_text(r.given_up),
                        folders_text(run.created_dirs, "made") + folders_text(run.updated_dirs, "updated"), deleted,
                        run.pull ? "received" : "sent",
                        human_bytes(r.travelled_bytes()),
                        r.elapsed_s, mbps(r), connections_text(r)) +
            compression_note(r));
    }
    json done{{"event", "done"},
             {"ok", r.given_up.empty()},
             {"failed_files", ferry::count_failed(r.given_up, true)},
             {"failed_other", ferry::count_failed(r.given_up, false)},
             {"dry_run", dry},
             {"session", ferry::hex_encode(r.session_id)},
             {"peer", ferry::format_node_id(r.peer_id)},
             {"files_checked", files},
             {"bytes_checked", r.total_bytes}};
    if (excluded) {
        done["excluded"] = *excluded;
    }
    done.update(json{{"created", run.created},
             {"created_dirs", run.created_dirs},
             {"updated_dirs", run.updated_dirs},
             {"updated", run.updated},
             {"renamed", run.renamed},
             {"skipped", run.unchanged},
             {"deleted_files", r.deleted_files},
             {"deleted_dirs", r.deleted_dirs},
             {"bytes_transferred", r.travelled_bytes()},
             {"bytes_matched", dry ? run.dry_matched_bytes : r.matched_bytes()},
             {"wire_bytes_sent", r.wire_sent},
             {"wire_bytes_received", r.wire_received},
             {"compression_saved_bytes", r.compression_saved},
             {"elapsed_s", r.elapsed_s},
             {"connections", r.connections}});
    emit(o, std::move(done));
    return skipped_sources_exit(o, r);
}

// The attempts of one transfer (`send`, or `sync` either way), run to a final report on
// `io`. A session that reached the peer and then lost it (connection lost, peer stopped
// or full) is tried again, with backoff, for --retry-for after each loss; the receiver
// keeps what arrived, so each attempt resumes where the last one stopped. (A first
// attempt that cannot connect at all fails at once: a wrong address should not make a
// script wait.) Files that changed or vanished while read get one more attempt.
struct attempt_loop {
    // Starts one attempt; `done` gets its report on the loop thread.
    std::function<void(const std::function<void(const ferry::transfer_report&)>& done)> start;
    // Before the one more attempt for files that changed or vanished: false if it cannot be made.
    std::function<bool()> again;
    std::string again_line;  // what is said then, after "N file(s) "
    // Filled: the files the first attempt found vanished (still reported if still gone).
    std::vector<ferry::skipped_file> vanished_before;
    // The one more attempt found the peer gone: the outcome is the first attempt's report,
    // which lists those files already (and a sync's counts are the first pass's).
    bool ended_with_first_pass = false;
    // A dry run removes nothing: the next attempt lists a lost one's "would delete" paths
    // again, so they are not carried into its report.
    bool dry_run = false;
};

// A run's report after the one more attempt (`second`) for files that changed or
// vanished during the first (`first`): what both moved, changed and deleted. The second
// found the files the first sent already there: they are not counted as skipped twice.
ferry::transfer_report both_passes(const ferry::transfer_report& first, ferry::transfer_report second) {
    second.files += first.files;  // (each pass counts every folder: dirs is the second's)
    second.skipped_files -= std::min(second.skipped_files, first.files);
    second.skipped_bytes -= std::min(second.skipped_bytes, first.payload_bytes);
    second.resumed_bytes += first.resumed_bytes;
    second.payload_bytes += first.payload_bytes;
    second.delta_copied += first.delta_copied;
    second.wire_sent += first.wire_sent;
    second.wire_received += first.wire_received;
    second.compression_saved += first.compression_saved;
    second.deleted_files += first.deleted_files;
    second.deleted_dirs += first.deleted_dirs;
    // From the command's start: both passes and the rescan between them (a send's second
    // is timed so already, a pull's from its own session's start).
    second.elapsed_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - program_start).count();
    return second;
}

// Adds to `to` what the attempt `from` moved on the wire and, with `deletions`, the paths
// it deleted: what a run carries from attempts it did not end with.
void add_carried(ferry::transfer_report& to, const ferry::transfer_report& from, bool deletions) {
    to.wire_sent += from.wire_sent;
    to.wire_received += from.wire_received;
    if (deletions) {
        to.deleted_files += from.deleted_files;
        to.deleted_dirs += from.deleted_dirs;
    }
}

std::optional<ferry::transfer_report> run_attempts(const common_opts& o, const send_opts& s, asio::io_context& io,
                                                   ferry::node& n, command_progress& progress, attempt_loop& loop) {
    std::optional<ferry::transfer_report> result;
    const auto retry_for = std::chrono::milliseconds(std::llround(s.retry_for_s * 1000));
    asio::steady_timer retry_timer(io);
    unsigned attempts = 0;
    bool tried_again = false;  // the one more attempt after files changed or vanished
    std::optional<ferry::transfer_report> first_pass;  // the report before it
    bool again_connected = false;  // it reached the peer and moved something
    bool ever_connected = false;
    bool interrupted = false;
    std::chrono::steady_clock::time_point lost_at{};
    std::optional<ferry::transfer_report> last_failure;
    std::function<void()> attempt;
    std::function<void()> stop_waiting;  // SIGINT/SIGTERM during a reconnect wait
    asio::steady_timer quiet_timer(io);
    auto finish = [&](const ferry::transfer_report& r) {
        result = r;
        progress.carry(0, 0);  // the report counts every attempt's bytes
        progress.stop();
        if (r.ok) {
            // Every byte is confirmed: let close_notify and the last frames go out, then stop.
            asio::post(io, [&io] { io.stop(); });
        } else {
            stop_when_quiet(io, n, quiet_timer);  // the peer hears why, even over a slow link
        }
    };
    // The wire bytes of attempts lost on the way: the report that ends the run counts them
    // (what they moved and the receiver confirmed is that report's matched data).
    // So do the paths they deleted: each was told of (a `deleted` event) as it went, and
    // the next attempt finds it gone.
    ferry::transfer_report lost;
    std::function<void(const ferry::transfer_report&)> on_done = [&](const ferry::transfer_report& given) {
        ferry::transfer_report r = given;
        add_carried(r, std::exchange(lost, {}), true);
        // A retry's shorter dial was for that attempt alone (the one more pass after it, for
        // files that changed while read, dials as any first attempt does).
        n.set_first_dial_timeout(std::chrono::milliseconds(0));
        auto now = std::chrono::steady_clock::now();
        if (r.connected && !ever_connected) {
            ever_connected = true;
            lost_at = now;
        }
        if (r.connected && r.payload_bytes > 0) {
            // It got somewhere: the backoff and the --retry-for budget start again. (An
            // attempt that reaches the peer and moves nothing does not reset them, so a
            // peer that keeps answering BUSY is given up on in time.)
            attempts = 0;
            lost_at = now;
        }
        last_failure = r;
        if (first_pass && !again_connected && !r.connected && !interrupted) {
            // The one more attempt found nobody (a one-shot `ferry receive` ends with its
            // transfer): what the first one did is the outcome, its files not sent.
            say("the peer is gone (" + r.error + "): the file(s) are left not sent");
            loop.ended_with_first_pass = true;
            ferry::transfer_report out = *first_pass;
            add_carried(out, r, true);  // what the attempts since moved and deleted
            for (ferry::skipped_file& f : out.given_up) {
                f.logged = f.logged && !f.again;  // said as to be tried again: the end says how it ended
            }
            finish(out);
            return;
        }
        again_connected = again_connected || (r.connected && r.payload_bytes > 0);  // got somewhere
        auto worth_again = std::count_if(r.given_up.begin(), r.given_up.end(),
                                         [](const ferry::skipped_file& f) { return f.again; });
        if (r.ok && worth_again > 0 && !tried_again && !interrupted) {
            tried_again = true;
            for (const ferry::skipped_file& f : r.given_up) {
                if (f.vanished) {
                    loop.vanished_before.push_back(f);
                }
            }
            say(std::to_string(worth_again) + " file(s) " + loop.again_line);
            if (loop.again()) {
                first_pass = r;
                again_connected = false;
                progress.carry(r.wire_sent, r.wire_received);
                attempt();
                return;
            }
        }
        if (r.ok && first_pass) {
            finish(both_passes(*first_pass, r));
            return;
        }
        if (r.ok || !r.retryable || !ever_connected || interrupted || retry_for.count() == 0) {
            if (interrupted && !r.ok && r.error == "interrupted") {
                // (It said "interrupted" alone.)
                r.error = "interrupted; what arrived is kept at the destination, and the same command run again "
                          "resumes";
            }
            finish(r);
            return;
        }
        if (now - lost_at >= retry_for) {
            ferry::transfer_report last = r;
            last.error += " (gave up after retrying for " + ferry::seconds_text(retry_for) + " s, --retry-for)";
            finish(last);
            return;
        }
        // The last wait ends with the budget: --retry-for is not overrun by a backoff step.
        // Rounded up, so that the attempt at its end is the last (rounded down, what was
        // left under a millisecond gave a burst of attempts 0 s apart).
        const auto left = std::chrono::ceil<std::chrono::milliseconds>(retry_for - (now - lost_at));
        auto delay = std::min(ferry::backoff_delay(attempts++, std::chrono::milliseconds(500), std::chrono::seconds(30)),
                              left);
        double left_s = std::chrono::duration<double>(left).count();
        say(r.error + "; reconnecting in " + ferry::seconds_text(delay) + " s (attempt " + std::to_string(attempts) +
            ", giving up in " + (left_s < 10 ? ferry::seconds_text(left) : std::to_string(std::lround(left_s))) +
            " s)");
        emit(o, {{"event", "reconnecting"},
                 {"attempt", attempts},
                 {"in_s", delay.count() / 1000.0},
                 {"reason", r.error},
                 {"bytes_confirmed", r.payload_bytes},
                 {"give_up_in_s", left_s}});
        add_carried(lost, r, !loop.dry_run);
        progress.carry(lost.wire_sent + (first_pass ? first_pass->wire_sent : 0),
                       lost.wire_received + (first_pass ? first_pass->wire_received : 0));
        retry_timer.expires_after(delay);
        retry_timer.async_wait([&](std::error_code ec) {
            if (ec) {
                return;  // cancelled by SIGINT/SIGTERM, which finished
            }
            if (interrupted) {
                stop_waiting();  // the signal came after the wait ended but before this ran
                return;
            }
            // Its dial gets no more than the budget has left (a peer that drops every
            // packet held each attempt 15 s: --retry-for 2s gave up 15 s after the loss).
            const auto budget = std::chrono::ceil<std::chrono::milliseconds>(
                retry_for - (std::chrono::steady_clock::now() - lost_at));
            n.set_first_dial_timeout(std::max(budget, std::chrono::milliseconds(1000)));
            attempt();
        });
    };
    stop_waiting = [&] {
        ferry::transfer_report stopped = *last_failure;
        stopped.error = "interrupted while waiting to reconnect";
        finish(stopped);
    };
    attempt = [&] { loop.start(on_done); };
    attempt();
    ferry::cli::signal_watch signals(io, {SIGINT, SIGTERM});
    signals.async_wait([&](int) {
        interrupted = true;
        if (retry_timer.cancel() > 0) {
            stop_waiting();
            return;
        }
        n.stop("interrupted");
    });
    progress.wake();
    io.run();
    progress.stop();
    return result;
}

// Runs one outgoing transfer (`ferry send`, or with `sync` a push of `ferry sync`) to the
// end: scan, connect, send, retry after a lost connection, and report.
int run_send(const common_opts& o, const send_opts& s, const ferry::send_target& t, const scan_fn& scan,
             sync_run* sync, const stream_scan_fn& stream) {
    checked_flags flags;
    if (int code = check_flags(o, s, flags)) {
        return code;
    }
    if (s.plaintext && !t.expected_id.empty()) {
        say("warning: --plaintext: no TLS, so the receiver's ID is not checked (ID@ has no effect)",
            ferry::log_level::warn);
    }
    // The sources are scanned on a thread of their own while the node loads its identity
    // and sets up TLS (each takes milliseconds; a big tree, tens of them).
    std::string error;
    // A streamed scan waits for the transfer when it is this many entries ahead (tests make
    // it small with FERRY_SCAN_WINDOW to see it wait on a small tree).
    const char* w = std::getenv("FERRY_SCAN_WINDOW");
    std::uint64_t scan_window = w != nullptr ? std::strtoull(w, nullptr, 10) : 0;
    if (scan_window == 0) {
        scan_window = ferry::scan_feed::default_max_held;
    }
    std::shared_ptr<ferry::scan_feed> feed = stream ? std::make_shared<ferry::scan_feed>(scan_window) : nullptr;
    auto scanned = std::async(std::launch::async, [&scan, &stream, feed, &error] {
        fault_scan_delay();
        if (feed) {
            std::string why;
            std::error_code ec = stream(*feed, why);
            feed->finish(ec, std::move(why));
            return std::make_pair(std::error_code{}, ferry::source_tree{});
        }
        return scan(error);
    });
    ferry::node_config cfg = base_config(o);
    cfg.plaintext = s.plaintext;
    asio::io_context io(1);
    // The scan's thread ends before the loop it posts to goes (a send that failed stops it).
    struct scan_joiner {
        std::shared_ptr<ferry::scan_feed> feed;
        decltype(scanned)& thread;
        ~scan_joiner() {
            if (feed) {
                feed->cancel();
            }
            if (thread.valid()) {
                thread.wait();
            }
        }
    } joiner{feed, scanned};
    auto scan_news = [&] {
        return feed ? feed->has_news() : scanned.wait_for(std::chrono::seconds(0)) == std::future_status::ready;
    };
    std::optional<ferry::node> node_made;
    std::exception_ptr node_failed;
    try {
        ferry::node_events ev = base_events(o);
        if (sync != nullptr) {
            add_sync_events(o, *sync, ev);
        }
        node_made.emplace(io, cfg, std::move(ev));
    } catch (...) {
        node_failed = std::current_exception();
    }
    // Connection 0 is dialed (TCP, TLS) while a scan still runs: the loop turns until the
    // scan is in. Not before a sync --checksum, which hashes before it connects, and not to
    // a host name: a scan that fails would wait for its lookup to end before exiting.
    std::shared_ptr<ferry::early_dial> dialed;
    const bool hashes_first = sync != nullptr && sync->target.checksum();
    std::error_code not_numeric;
    asio::ip::make_address(t.host, not_numeric);
    if (node_made && !hashes_first && !not_numeric && !scan_news()) {
        dialed = ferry::early_dial::start(node_made->context(), t);
        while (!scan_news() && !io.stopped()) {
            io.run_one_for(std::chrono::milliseconds(5));
        }
        io.restart();
    }
    // The sources: the whole scan, or (streamed) what it found so far, the rest to come.
    ferry::source_tree sources;
    std::error_code scan_ec;
    bool streaming = false;
    if (feed) {
        for (;;) {  // until the first entry, or the scan's end
            feed->wait_news();
            ferry::scan_feed::taken got = feed->take();
            for (ferry::source_tree& part : got.parts) {
                ferry::append_part(sources, std::move(part));
            }
            if (got.finished) {
                scan_ec = got.ec;
                error = std::move(got.error);
                break;
            }
            // (The test hook FERRY_FAULT_AFTER_SCAN changes a file the scan found: it waits
            // for the whole scan.)
            if (!sources.entries.empty() && std::getenv("FERRY_FAULT_AFTER_SCAN") == nullptr) {
                streaming = true;
                break;
            }
        }
    } else {
        auto [ec, scanned_sources] = scanned.get();
        scan_ec = ec;
        sources = std::move(scanned_sources);
    }
    fault_after_scan(sources);
    if (scan_ec) {
        for (const auto& note : sources.skipped) {
            say("skipping " + note);  // why there may be nothing to send
        }
        bool missing = error.find("No such file") != std::string::npos || error == "nothing to send" ||
                       scan_ec == std::errc::not_a_directory || scan_ec == std::errc::file_exists;
        // The names as they are on disk, escaped for the terminal.
        return fail(o, missing ? exit_code::usage : exit_code::local_io, ferry::printable(error));
    }
    if (node_failed) {
        std::rethrow_exception(node_failed);
    }
    ferry::node& n = *node_made;
    for (const auto& note : sources.skipped) {
        say("skipping " + note);
    }
    ferry::send_options so;
    so.connections = s.connections;
    so.adaptive_connections = adaptive_connections(s);
    so.widen_rtt_us = widen_rtt_us(so.widen_rtt_us);
    so.compress = flags.compress;
    so.max_rate = flags.max_rate;
    so.overwrite = s.overwrite;
    so.fsync_each = s.fsync_each;
    so.stall_timeout = to_ms(s.stall_timeout_s);
    so.started = program_start;  // the rate a user can check from outside: from the command's start
    so.dialed = dialed;
    if (streaming) {
        so.feed = feed;
        so.skipped_note = [](const std::string& note) { say("skipping " + note); };
    }
    // What goes with each scan: the chunk digests the attempts share (--retry-for) are
    // kept by entry number, so a new scan starts a new memo; and for a sync, what the scan
    // skipped (special files) is not SRC's to delete at DST.
    const std::optional<wire::SyncTarget> base_target =
        sync != nullptr ? std::optional<wire::SyncTarget>(sync->target) : std::nullopt;
    auto with_scan = [&](const ferry::source_tree& scanned) -> std::string {
        so.memo = std::make_shared<ferry::digest_memo>();
        if (base_target) {
            so.sync = base_target;
            // SRC's own folder as this scan left it: a file replaced at its top while the
            // first attempt ran changed its mtime, which the next scan's attempt then sets.
            struct stat st {};
            if (!sync->src_root.empty() && ::stat(sync->src_root.c_str(), &st) == 0) {
                so.sync->set_root_mode(st.st_mode & 07777);
                so.sync->set_root_mtime_ns(ferry::timespec_ns(st.st_mtim));
            }
            return ferry::keep_skipped(scanned, *so.sync);
        }
        return {};
    };
    if (std::string e = with_scan(sources); !e.empty()) {
        return fail(o, exit_code::usage, e);
    }
    command_progress progress(io, o, n);
    attempt_loop loop;
    // Each attempt's session takes its scan (200,000 files: some 40 MB not held twice): an
    // attempt after a lost connection scans again, and sends what SRC holds by then.
    bool have_scan = true;
    std::uint64_t scanned_files = 0;  // of the scan last sent: regular files and symlinks
    std::uint64_t scanned_excluded = 0;
    bool streamed_attempt = false;  // the last attempt's scan was streamed: `feed` counted it
    std::vector<ferry::skipped_file> still_gone;  // vanished in the first attempt, not in the rescan
    loop.start = [&](const std::function<void(const ferry::transfer_report&)>& done) {
        if (sync != nullptr) {
            sync->new_attempt();  // each attempt's receiver says again what it does
        }
        if (!have_scan) {
            std::string rescan_error;
            auto [ec, again] = scan(rescan_error);
            if (!ec) {
                for (const auto& note : again.skipped) {
                    say("skipping " + note);
                }
                rescan_error = with_scan(again);
            }
            if (ec || !rescan_error.empty()) {
                ferry::transfer_report failed;
                failed.code = exit_code::local_io;
                failed.error = "cannot scan the sources again: " + ferry::printable(rescan_error);
                done(failed);
                return;
            }
            sources = std::move(again);
        }
        have_scan = false;
        scanned_files = std::count_if(sources.entries.begin(), sources.entries.end(),
                                      [](const ferry::entry_info& e) { return !e.is_dir; });
        scanned_excluded = sources.excluded;
        streamed_attempt = so.feed != nullptr;
        n.send(std::move(sources), t, so, done);
        so.dialed.reset();  // the first attempt's; a later one dials its own
        so.feed.reset();    // and scans whole
    };
    loop.again = [&] {
        std::string rescan_error;
        auto [ec, again] = scan(rescan_error);
        if (ec) {
            return false;
        }
        // A file that vanished during the first attempt and is not in this scan is still
        // a file that vanished during the run.
        std::unordered_set<std::string_view> listed;
        for (const ferry::entry_info& e : again.entries) {
            listed.insert(e.path);
        }
        for (const ferry::skipped_file& f : loop.vanished_before) {
            if (!listed.contains(f.path)) {
                still_gone.push_back(f);
            }
        }
        if (!with_scan(again).empty()) {
            return false;
        }
        if (sync != nullptr) {
            sync->keep_first_pass();
        }
        sources = std::move(again);
        have_scan = true;
        return true;
    };
    loop.again_line = "changed or vanished while read; scanning and sending once more";
    loop.dry_run = sync != nullptr && sync->target.dry_run();
    std::optional<ferry::transfer_report> result = run_attempts(o, s, io, n, progress, loop);
    if (!result) {
        return fail(o, exit_code::transfer_failed, "transfer did not finish");
    }
    ferry::transfer_report& r = *result;
    if (!r.ok) {
        return fail(o, r.code, r.error);
    }
    if (loop.ended_with_first_pass) {
        still_gone.clear();
        if (sync != nullptr) {
            sync->first_pass_counts();
        }
    }
    for (ferry::skipped_file& f : still_gone) {
        r.given_up.push_back(std::move(f));  // (as the first pass said it: not again at the end)
    }
    progress.final_progress(final_progress(r, true));
    if (sync != nullptr) {
        if (streamed_attempt) {
            scanned_files = feed->files_put();
            scanned_excluded = feed->excluded_put();
        }
        return sync_summary(o, *sync, r, scanned_files, scanned_excluded);
    }
    char line[256];
    std::snprintf(line, sizeof(line), "sent %llu %s, %llu %s, %s in %.2f s (%.1f MB/s confirmed, %s)",
                  static_cast<unsigned long long>(r.files), r.files == 1 ? "file" : "files",
                  static_cast<unsigned long long>(r.dirs), r.dirs == 1 ? "folder" : "folders",
                  human_bytes(r.payload_bytes).c_str(), r.elapsed_s, mbps(r), connections_text(r).c_str());
    say(std::string(line) + skipped_note(r) + compression_note(r));
    emit(o, report_json(r, true));
    return skipped_sources_exit(o, r);
}

// Pulls a folder of a peer's share into the local folder `dst` (`ferry sync` with a remote
// SRC): this node dials the peer, which scans its share and sends what differs; this
// side decides, deletes and reports, as a share does for a push. Retries like a push:
// once more when files changed or vanished at the peer while read, and after a lost
// connection for --retry-for.
int pull_into(const common_opts& o, const send_opts& s, const ferry::send_target& t, const fs::path& dest,
              sync_run& run, const checked_flags& flags);

// Two pulls into one folder at once (two cron jobs, two sources) would write the same
// partial files, and one could name a file made of both (a soak test, 2026-12-05). A sync
// pulling holds an exclusive flock on DST for its run (made first if it is new). One that
// finds it held waits for the other to end, up to --retry-for. The lock is the folder at
// DST when it is taken: one removed or replaced meanwhile (the other pull failed and
// removed the DST it had made) is let go and the folder there locked instead. (Transfers
// within one `ferry serve` claim files instead; `ferry get` writes into a folder others
// write to, a downloads folder, and takes no lock; a dry run writes nothing.)
// `made`: DST was made here (the caller removes it again, if still empty, when the pull
// fails: a refused pull leaves no folder behind).
int hold_dest(const common_opts& o, const send_opts& s, const fs::path& dest, const std::string& label,
              ferry::unique_fd& held, bool& made) {
    auto io_error = [&] {
        return fail(o, exit_code::local_io, label + dest.string() + ": " + std::error_code(errno, std::system_category()).message());
    };
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(std::llround(s.retry_for_s * 1000));
    bool told = false;
    // SIGINT and SIGTERM end the wait (no loop runs yet to take them: they were lost, and
    // the pull went on once the other ended).
    asio::io_context waiting;
    ferry::cli::signal_watch signals(waiting, {SIGINT, SIGTERM});
    int stopped_by = 0;
    signals.async_wait([&](int sig) { stopped_by = sig; });
    auto interrupted = [&](const std::string& when) {
        return fail(o, exit_code::transfer_failed,
                    std::string("interrupted (") + (stopped_by == SIGINT ? "SIGINT" : "SIGTERM") + ")" + when);
    };
    for (;;) {
        made = ::mkdir(dest.c_str(), 0755) == 0;
        if (!made && errno != EEXIST) {
            return io_error();
        }
        held.reset(::open(dest.c_str(), O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC));
        if (held.get() < 0) {
            return errno == ENOENT ? 0 : io_error();  // gone again: the pull makes it, as before
        }
        while (::flock(held.get(), LOCK_EX | LOCK_NB) != 0) {
            if (errno != EWOULDBLOCK && errno != EINTR) {
                return 0;  // a file system without flock: as before
            }
            if (std::chrono::steady_clock::now() >= deadline) {
                return fail(o, exit_code::transfer_failed,
                            label + dest.string() + " is being written by another ferry process (a sync into it); "
                                                    "try again once it has ended");
            }
            if (!told) {
                say(label + dest.string() + " is being written by another ferry process; waiting for it to end "
                                            "(up to --retry-for)");
                emit(o, {{"event", "waiting"},
                         {"path", dest.string()},
                         {"reason", "another ferry process is syncing into it"},
                         {"give_up_in_s", s.retry_for_s}});
                told = true;
            }
            waiting.run_for(std::chrono::milliseconds(50));
            if (stopped_by != 0) {
                return interrupted(" while waiting for the other sync into " + label + dest.string());
            }
        }
        struct stat locked {};
        struct stat there {};
        if (::fstat(held.get(), &locked) == 0 && locked.st_nlink > 0 && ::lstat(dest.c_str(), &there) == 0 &&
            locked.st_dev == there.st_dev && locked.st_ino == there.st_ino) {
            waiting.poll();  // a signal that came meanwhile, not lost with this watch
            if (stopped_by != 0) {
                return interrupted("");
            }
            return 0;
        }
        held.reset();  // the folder locked is no longer DST: lock the one there now
    }
}

int run_pull(const common_opts& o, const send_opts& s, const ferry::send_target& t, const std::string& dst,
             sync_run& run) {
    const std::string label = run.get ? "DEST " : "DST ";
    checked_flags flags;
    if (int code = check_flags(o, s, flags)) {
        return code;
    }
    std::error_code ec;
    // Resolved as the kernel resolves it (never as text: "link/.." is the folder above the
    // link's target, not the folder that holds the link).
    fs::path dest = fs::absolute(dst, ec);
    if (!dest.has_filename() && dest.has_parent_path() && dest != dest.root_path()) {
        dest = dest.parent_path();  // "DIR/"
    }
    if (ec) {
        return fail(o, exit_code::usage, label + dst + ": " + ec.message());
    }
    struct stat st {};
    const bool there = ::stat(dest.c_str(), &st) == 0;
    if (!there && errno != ENOENT && errno != ENOTDIR) {  // (ENOTDIR: below a file, told below)
        // (A folder this user may not search above it read "is not a folder", exit 1.)
        const int err = errno;
        return fail(o, exit_code::local_io, label + dst + ": " + std::strerror(err));
    }
    if (there && !S_ISDIR(st.st_mode)) {
        return fail(o, exit_code::usage, label + dst + " is not a folder");
    }
    if (there) {
        // DST given as a symlink to a folder: that folder (nothing inside is followed).
        if (fs::path real = fs::canonical(dest, ec); !ec) {
            dest = std::move(real);
        } else {
            return fail(o, exit_code::usage, label + dst + ": " + ec.message());
        }
    } else if (auto parent = fs::canonical(dest.parent_path(), ec); !ec) {
        // A new DST: its folder is opened with no symlink on the way. (One whose parent is
        // not there, "missing/../x" too, is refused below; "x/." or "x/.." that is not
        // there has no parent either.)
        dest = parent / dest.filename();
    }
    ec.clear();
    if (const bool parent_there = ::stat(dest.parent_path().c_str(), &st) == 0; !parent_there || !S_ISDIR(st.st_mode)) {
        return fail(
            o, exit_code::usage,
            label + dst + ": its parent " + dest.parent_path().string() +
                (parent_there ? " is not a folder"
                              : absent_folder_text(dest.parent_path(), " does not exist (ferry creates " + label +
                                                                           "itself, not its parents)")));
    }
    // A get writes into DEST, a pull into DST, or each beside it when it is not there: a
    // folder this user may not write is refused now (a get read "refused transfer: NAME:
    // Permission denied", and both failed each file alone, exit 5). A folder fetched again
    // into a folder of the same name there is written inside that one (root's /var/www
    // holding the user's site/).
    fs::path into = there ? dest : dest.parent_path();
    if (std::error_code dir_ec; run.get && there && !run.target.get().empty() &&
                                fs::is_directory(dest / run.target.get(), dir_ec)) {
        into = dest / run.target.get();
    }
    if (!run.target.dry_run() && ::access(into.c_str(), W_OK | X_OK) != 0) {
        const int err = errno;
        return fail(o, exit_code::local_io, label + dst + ": cannot write in " + into.string() + ": " + std::strerror(err));
    }
    ferry::unique_fd held;
    bool made = false;
    if (!run.target.dry_run()) {
        if (int code = run.get ? 0 : hold_dest(o, s, dest, label, held, made)) {
            return code;
        }
    }
    int code = pull_into(o, s, t, dest, run, flags);
    if (made && code != 0) {
        ::rmdir(dest.c_str());  // only if nothing is in it
    }
    return code;
}

// run_pull once DST is known good (and held).
int pull_into(const common_opts& o, const send_opts& s, const ferry::send_target& t, const fs::path& dest,
              sync_run& run, const checked_flags& flags) {
    ferry::node_config cfg = base_config(o);
    cfg.plaintext = s.plaintext;
    asio::io_context io(1);
    ferry::node_events ev = base_events(o);
    add_sync_events(o, run, ev);
    // What vanished in an earlier attempt and the current one has not reported yet (not
    // a set of every path reported: 200,000 files would hold some 20 MB of it).
    std::set<std::string, std::less<>> still_gone;
    ev.file = [&still_gone, report = std::move(ev.file)](const ferry::file_event& f) {
        if (f.done && !still_gone.empty()) {
            if (auto it = still_gone.find(f.path); it != still_gone.end()) {
                still_gone.erase(it);
            }
        }
        report(f);
    };
    ferry::node n(io, cfg, std::move(ev));
    command_progress progress(io, o, n);
    attempt_loop loop;
    loop.start = [&](const std::function<void(const ferry::transfer_report&)>& done) {
        run.new_attempt();
        still_gone.clear();
        for (const ferry::skipped_file& f : loop.vanished_before) {
            still_gone.insert(f.path);
        }
        ferry::pull_spec spec;
        spec.source = run.target;
        spec.dest = dest;
        spec.connections = s.connections;
        spec.adaptive_connections = adaptive_connections(s);
        spec.widen_rtt_us = widen_rtt_us(spec.widen_rtt_us);
        spec.zstd = flags.compress != ferry::compress_mode::never;
        spec.compress_always = flags.compress == ferry::compress_mode::always;
        spec.max_rate = flags.max_rate;
        spec.done = done;
        n.pull(std::move(spec), t);
    };
    loop.again = [&run] {
        run.keep_first_pass();
        return true;  // the peer scans again
    };
    loop.again_line = run.get ? "changed or vanished at the peer while read; getting them once more"
                              : "changed or vanished at the peer while read; syncing once more";
    loop.dry_run = run.target.dry_run();
    std::optional<ferry::transfer_report> result = run_attempts(o, s, io, n, progress, loop);
    if (!result) {
        return fail(o, exit_code::transfer_failed, "sync did not finish");
    }
    std::vector<ferry::skipped_file>& vanished_before = loop.vanished_before;
    if (loop.ended_with_first_pass) {
        vanished_before.clear();
        run.first_pass_counts();
    }
    ferry::transfer_report& r = *result;
    if (!r.ok) {
        return fail(o, r.code, r.error);
    }
    // From the command's start, as a push's: every attempt and the waits between them (a
    // pull's own report starts with its last session).
    r.elapsed_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - program_start).count();
    std::unordered_set<std::string> failed_again;  // (one back for the second pass and failed there is its)
    for (const ferry::skipped_file& f : r.given_up) {
        failed_again.insert(f.path);
    }
    for (ferry::skipped_file& f : vanished_before) {
        if (still_gone.contains(f.path) && !failed_again.contains(f.path)) {
            r.given_up.push_back(std::move(f));  // still gone: it vanished during the run (said once, as it did)
        }
    }
    progress.final_progress(final_progress(r, false));
    return sync_summary(o, run, r, r.total_files - r.total_dirs, std::nullopt);
}

// `ferry get --from`: one file from several sources at once (node/multi_get.hpp).
// `first`: SOURCE's own peer, when it named one.
int run_multi_get(const common_opts& o, const send_opts& s, const get_opts& g, std::optional<remote_spec> first,
                  const std::string& share, const std::string& path, const std::string& name, const fs::path& folder) {
    checked_flags flags;
    if (int code = check_flags(o, s, flags)) {
        return code;
    }
    if (g.range_size % ferry::chunk_size != 0) {
        return fail(o, exit_code::usage, "--range-size takes a whole number of 256 KiB chunks, such as 1M or 32M, not " +
                                             std::to_string(g.range_size) + " bytes");
    }
    ferry::multi_get_spec spec;
    std::set<std::string> seen;  // one source per address, and per ID
    auto add = [&](const std::string& label, const ferry::send_target& t, bool found = false) {
        if (!t.expected_id.empty() && !seen.insert(t.expected_id).second) {
            return;
        }
        if (seen.insert(t.host + " " + t.port + " " + t.expected_id).second) {
            spec.sources.push_back({label, t, found});
        }
    };
    if (first) {
        // Named as the user named it: "desk", or "ferry://HOST[:PORT]".
        std::string label = g.source.starts_with("ferry://")
                                ? g.source.substr(0, g.source.find('/', std::string_view("ferry://").size()))
                                : g.source.substr(0, g.source.find(':'));
        add(label, first->target);
    }
    for (const std::string& peer : g.from) {
        if (peer.empty()) {
            return fail(o, exit_code::usage, "--from: an empty peer name in the list");
        }
        std::string error;
        std::string text = peer.find("://") != std::string::npos ? peer + "/" + share : peer + ":" + share;
        std::optional<remote_spec> r = parse_remote(o, text, error);
        if (!r) {
            return fail(o, exit_code::usage,
                        "--from " + peer + ": " + (error.empty() ? "not a peer (NAME, ID or ferry://[ID@]HOST[:PORT])" : error));
        }
        add(peer, r->target);
    }
    if (g.from_lan) {
        // Every trusted peer the running `ferry serve` hears on the LAN; each joins only once
        // its own reading of the file digest equals the first source's.
        json st = local_node_status(o);
        const json* lan = lan_peers(st);
        if (!lan) {
            return fail(o, exit_code::usage,
                        "--from-lan needs a running `ferry serve` with LAN discovery on, with this state folder "
                        "(name the peers with --from instead)");
        }
        ferry::trust_store store = load_trust(ferry::resolve_state_dir(o.state));
        for (const json& d : *lan) {
            std::optional<std::string> id = ferry::parse_node_id(d.value("id", ""));
            std::optional<ferry::trusted_peer> peer = id ? store.find_id(*id) : std::nullopt;
            ferry::send_target t;
            if (!peer || d["addresses"].empty() ||
                !ferry::split_host_port(d["addresses"][0].get<std::string>(), t.host, t.port)) {
                continue;  // untrusted nodes are never asked
            }
            t.expected_id = *id;
            add(!peer->name.empty() ? peer->name : ferry::format_node_id(*id).substr(0, 9), t, true);
        }
    }
    if (spec.sources.empty()) {
        return fail(o, exit_code::usage, "no source: name peers with --from (no trusted peer was found on the LAN)");
    }
    std::error_code ec;
    fs::path dir = fs::canonical(folder, ec);
    if (ec) {
        return fail(o, exit_code::usage, "DEST " + g.dest + ": " + ec.message());
    }
    spec.share = share;
    spec.path = path;
    spec.name = name;
    spec.folder = dir;
    spec.connections = s.connections;
    spec.zstd = flags.compress != ferry::compress_mode::never;
    spec.compress_always = flags.compress == ferry::compress_mode::always;
    spec.max_rate = flags.max_rate;
    spec.range_length = g.range_size;
    spec.note = [&o](const std::string& line) {
        say(line);
        emit(o, {{"event", "note"}, {"message", line}});
    };
    ferry::node_config cfg = base_config(o);
    cfg.plaintext = s.plaintext;
    asio::io_context io(1);
    ferry::node_events ev = base_events(o);
    ev.file = nullptr;  // the ranges are pulls of their own: the file is told once, at the end
    ev.connected = nullptr;
    ev.log = [shown = std::move(ev.log)](ferry::log_level level, const std::string& line) {
        // A range pull cancelled because another source brought it first is the end game
        // working, not news.
        if (line.find("another source brought that range first") == std::string::npos &&
            line.find("every range is in") == std::string::npos) {
            shown(level, line);
        }
    };
    ferry::node n(io, cfg, std::move(ev));
    std::optional<ferry::multi_get_report> result;
    asio::steady_timer quiet_timer(io);
    spec.done = [&](const ferry::multi_get_report& r) {
        result = r;
        n.stop("done");
        stop_when_quiet(io, n, quiet_timer);  // the sources hear that their ranges are not needed
    };
    auto mg = std::make_shared<ferry::multi_get>(n, std::move(spec));
    ferry::cli::progress_view progress(
        io, view_options(o),
        [&mg] {
            std::optional<ferry::transfer_progress> p = mg->progress();
            return p ? std::vector<ferry::transfer_progress>{*p} : std::vector<ferry::transfer_progress>{};
        },
        [&o](const ferry::transfer_progress& p) { emit(o, progress_event(p)); });
    view = &progress;
    mg->start();
    progress.wake();
    ferry::cli::signal_watch signals(io, {SIGINT, SIGTERM});
    signals.async_wait([&](int) {
        mg->stop();
        n.stop("interrupted");
        result = ferry::multi_get_report{};
        result->error = "interrupted (the ranges that arrived stay in the parts folder for a rerun)";
        asio::post(io, [&io] { io.stop(); });
    });
    io.run();
    progress.stop();
    view = nullptr;
    if (!result) {
        return fail(o, exit_code::transfer_failed, "get did not finish");
    }
    const ferry::multi_get_report& r = *result;
    if (!r.ok) {
        return fail(o, r.code, r.error);
    }
    {
        // The last progress, with the final figures, right before `done` (as every transfer
        // gives; a get done within the first tick gave none).
        ferry::transfer_progress p;
        p.direction = "receive";
        p.session_id = r.session_id;
        p.total_bytes = r.size;
        p.confirmed_bytes = r.unchanged ? 0 : r.size - std::min(r.size, r.kept_bytes);
        p.skipped_bytes = r.unchanged ? r.size : std::min(r.size, r.kept_bytes);
        p.wire_sent = r.wire_sent;
        p.wire_received = r.wire_received;
        p.files_total = 1;
        p.files_done = 1;
        p.rate = r.elapsed_s > 0 ? static_cast<double>(r.payload_bytes) / r.elapsed_s : 0.0;
        p.elapsed_s = r.elapsed_s;
        p.offered = true;
        emit(o, progress_event(p));
    }
    json sources = json::array();
    std::string per;
    std::size_t used = 0;
    for (const auto& src : r.sources) {
        sources.push_back({{"source", src.label},
                           {"peer", src.peer_id.empty() ? json(nullptr) : json(ferry::format_node_id(src.peer_id))},
                           {"used", src.used},
                           {"ranges", src.figures.ranges},
                           {"bytes", src.figures.bytes},
                           {"failures", src.figures.failures},
                           {"dropped", src.figures.dropped},
                           {"wire_bytes_received", src.wire_received},
                           {"note", src.note}});
        used += src.used ? 1 : 0;
        if (src.used) {
            per += fmt::format("{}{} {} range(s) ({})", per.empty() ? "" : ", ", src.label, src.figures.ranges,
                               human_bytes(src.figures.bytes));
        }
    }
    double rate = r.elapsed_s > 0 ? static_cast<double>(r.payload_bytes) / r.elapsed_s / 1e6 : 0.0;
    if (r.unchanged) {
        say(fmt::format("got {}: unchanged (same size and mtime here), nothing moved", ferry::printable(name)));
    } else {
        say(fmt::format("got {} ({}) from {} source(s) in {:.2f} s ({:.1f} MB/s confirmed): {}{}", ferry::printable(name),
                        human_bytes(r.size), used, r.elapsed_s, rate, per,
                        r.kept_bytes > 0 ? "; " + human_bytes(r.kept_bytes) + " kept from an earlier get" : ""));
    }
    emit(o, {{"event", "done"},
             {"ok", true},
             {"path", name},
             {"size", r.size},
             {"unchanged", r.unchanged},
             {"ranges", r.ranges},
             {"payload_bytes", r.payload_bytes},
             {"kept_bytes", r.kept_bytes},
             {"wire_bytes_received", r.wire_received},
             {"wire_bytes_sent", r.wire_sent},
             {"elapsed_s", r.elapsed_s},
             {"payload_MBps", rate},
             {"digest", r.unchanged ? json(nullptr) : json(ferry::hex_encode(std::string(
                                                           reinterpret_cast<const char*>(&r.digest), sizeof r.digest)))},
             {"sources", std::move(sources)}});
    return 0;
}

// Flags of an outgoing transfer, shared by `send` and `sync`.
void add_send_flags(CLI::App* cmd, send_opts& so) {
    so.connections_flag =
        cmd->add_option("--connections", so.connections,
                        "TCP connections in the session (1..16); when not given, up to 4: those above the first "
                        "only once the path calls for them (a round trip of 5 ms or more, or losses)");
    cmd->add_option(
           "--compress", so.compress,
           "zstd for chunks: auto (while it pays: slow links, very compressible data), always, never (nor the index)")
        ->capture_default_str();
    cmd->add_option("--retry-for", so.retry_for_s,
                    "after the receiver is lost mid-transfer, keep reconnecting (and resuming) this long "
                    "(e.g. 30s, 5m, 0 = never)")
        ->transform(CLI::AsNumberWithUnit(time_units()))
        ->check(CLI::Range(0.0, 7.0 * 86400))
        ->default_str("5m");
    cmd->add_option("--stall-timeout", so.stall_timeout_s,
                    "a connection with data in flight that hears nothing from the receiver this long is "
                    "closed and replaced (e.g. 30s)")
        ->transform(CLI::AsNumberWithUnit(time_units()))
        ->check(CLI::Range(0.1, 86400.0))
        ->default_str("30s");
    cmd->add_option("--bwlimit", so.bwlimit,
                    "send at most RATE of data per second, e.g. 500K, 10M, 1G (a bare number is KiB/s, as in "
                    "rsync; 0 = no limit); for a pull, the peer is asked to send at most that")
        ->type_name("RATE")
        ->default_str("0");
}

// "30s", or "1500ms" when not whole seconds: as the configuration file takes it.
std::string duration_text(std::chrono::milliseconds d) {
    return d.count() % 1000 == 0 ? std::to_string(d.count() / 1000) + "s" : std::to_string(d.count()) + "ms";
}

// `ferry config check` (`show` false) and `ferry config show`: the settings `ferry serve`
// would run with, checked as it checks them (shares, peers).
int cmd_config(const common_opts& o, const receive_opts& r, bool show) {
    ferry::node_config cfg;
    if (int code = receiver_config(o, r, false, cfg)) {
        return code;
    }
    for (const std::string& address : cfg.listen) {
        std::string host;
        std::string port;
        if (!ferry::split_host_port(address, host, port)) {
            return fail(o, exit_code::usage, config_place("--listen", address) + "--listen \"" + address +
                                                 "\": expected HOST:PORT ([::]:PORT for IPv6)");
        }
    }
    if (!r.metrics.empty()) {
        std::string host;
        std::string port;
        if (!ferry::split_host_port(metrics_address(r.metrics), host, port)) {
            return fail(o, exit_code::usage, config_place("--metrics", r.metrics) + "--metrics \"" + r.metrics +
                                                 "\": expected HOST:PORT or PORT");
        }
    }
    ferry::trust_store trust = load_trust(cfg.state_dir);
    const std::string file = loaded_config ? loaded_config->path.string() : std::string();
    if (!show) {
        say(file + ": ok");
        emit(o, {{"event", "config"}, {"file", file}, {"ok", true}});
        return 0;
    }
    json shares = json::array();
    for (const auto& sh : cfg.shares) {
        shares.push_back({{"name", sh.name}, {"path", sh.dir.string()}, {"access", sh.writable ? "rw" : "ro"}});
    }
    json peers = json::array();
    for (const auto& p : trust.peers()) {
        json entry = {{"id", ferry::format_node_id(p.id)}};
        if (!p.name.empty()) {
            entry["name"] = p.name;
        }
        if (!p.address.empty()) {
            entry["address"] = p.address;
        }
        entry["shares"] = p.shares ? json(*p.shares) : json::array({"*"});
        peers.push_back(std::move(entry));
    }
    const ferry::node_limits& l = cfg.limits;
    int file_connections = 4;  // send's default (--connections)
    if (loaded_config) {
        for (const auto& v : loaded_config->values) {
            if (v.flag == "--connections") {
                file_connections = std::atoi(v.value.c_str());
            }
        }
    }
    json settings = {
        {"state", cfg.state_dir.string()},
        {"inbox", cfg.inbox.string()},
        {"listen", cfg.listen},
        {"accept_any", cfg.policy == ferry::accept_policy::any},
        {"overwrite", cfg.overwrite},
        {"fsync_each", cfg.fsync_each},
        {"partial_max_age", cfg.partial_max_age.count()},
        {"congestion", o.congestion},
        {"log_level", o.log_level},
        {"limits",
         {{"max_connections", l.max_connections},
          {"max_peer_connections", l.max_peer_connections},
          {"max_sessions", l.max_sessions},
          {"handshake_timeout", duration_text(l.handshake_timeout)},
          {"idle_timeout", duration_text(l.idle_timeout)},
          {"max_files", l.max_files},
          {"max_bytes", l.max_bytes},
          {"max_conn_queue", l.max_queue_bytes}}},
        {"metrics", r.metrics.empty() ? json::object() : json{{"listen", metrics_address(r.metrics)}}},
        {"tuning",
         {{"connections", file_connections},  // (the clients' setting: send, sync, get)
          {"notsent_lowat", cfg.tuning.notsent_lowat},
          {"sndbuf", cfg.tuning.sndbuf},
          {"rcvbuf", cfg.tuning.rcvbuf},
          {"user_timeout", duration_text(std::chrono::milliseconds(cfg.tuning.user_timeout_ms))}}},
        {"discovery",
         {{"enabled", cfg.discovery.enabled},
          {"name", cfg.discovery.name},
          {"interval", duration_text(cfg.discovery.interval)},
          {"timeout", duration_text(cfg.discovery.timeout)},
          {"port", cfg.discovery.port},
          {"group4", cfg.discovery.group4},
          {"group6", cfg.discovery.group6}}},
        {"share", std::move(shares)},
        {"peer", std::move(peers)},
    };
    if (o.json) {
        emit(o, {{"event", "config"}, {"file", file}, {"settings", settings}});
    } else {
        std::printf("# ferry serve's settings: %s\n%s",
                    file.empty() ? "the defaults (no configuration file)" : (file + " over the defaults").c_str(),
                    ferry::cli::to_toml(settings).c_str());
    }
    return 0;
}

}  // namespace

namespace {

// `ferry serve`'s options, bound to `o`, `serve_o` and `inbox` (main, and a SIGHUP's
// re-reading of the command line and the configuration file).
void define_serve(CLI::App* serve, common_opts& o, receive_opts& serve_o, std::string& inbox) {
    add_common(serve, o);
    add_transfer_options(serve, o);
    serve->add_option("--listen", serve_o.listen, "HOST:PORT to listen on (repeatable)")->capture_default_str();
    serve->add_option("--inbox", inbox, "folder for received transfers (default: STATE/inbox)");
    serve->add_option("--share", serve_o.shares,
                      "offer DIR to trusted peers as NAME (read-only unless :rw; `ferry sync` pushes into rw shares, pulls from any); "
                      "repeatable")
        ->type_name("NAME=DIR[:ro|rw]");
    serve->add_flag("--accept-any,!--no-accept-any", serve_o.accept_any, "accept any peer (trust on first use)");
    serve->add_flag("--overwrite,!--no-overwrite", serve_o.overwrite, "replace existing files");
    serve->add_flag("--fsync-each,!--no-fsync-each", serve_o.fsync_each,
                    "fsync every file before it is renamed into place");
    serve->add_flag("--plaintext", serve_o.plaintext, "no TLS (benchmarks only)");
    serve->add_option("--partial-max-age", serve_o.partial_max_age_s,
                      "remove partial files of interrupted transfers not resumed for this long (e.g. 7d, 12h; 0 = keep)")
        ->transform(CLI::AsNumberWithUnit(time_units()))
        ->check(CLI::Range(0.0, 3650.0 * 86400))
        ->default_str("7d");
    serve->add_option("--metrics", serve_o.metrics,
                      "serve Prometheus metrics at http://HOST:PORT/metrics (a bare PORT means 127.0.0.1:PORT)");
    add_limit_options(serve, serve_o);
    serve->add_flag("--discovery,!--no-discovery", serve_o.discovery,
                    "announce this node on the LAN and listen for others (UDP multicast; docs/discovery.md)");
    serve->add_option("--name", serve_o.name, "the name this node announces (default: the host name)");
    serve->add_option("--discovery-interval", serve_o.discovery_interval_s,
                      "the longest gap between two announcements (they start at 1 s and double)")
        ->transform(CLI::AsNumberWithUnit(time_units()))
        ->check(CLI::Range(1.0, 3600.0))
        ->default_str("30s");
    serve->add_option("--discovery-timeout", serve_o.discovery_timeout_s,
                      "a node not heard this long is forgotten")
        ->transform(CLI::AsNumberWithUnit(time_units()))
        ->check(CLI::Range(2.0, 86400.0))
        ->default_str("100s");
    serve->add_option("--discovery-port", serve_o.discovery_port, "the UDP port of the discovery groups")
        ->check(CLI::Range(1, 65535))
        ->capture_default_str();
    serve->add_option("--discovery-group4", serve_o.group4, "IPv4 multicast group (\"\": none)")->capture_default_str();
    serve->add_option("--discovery-group6", serve_o.group6, "IPv6 link-local multicast group (\"\": none)")
        ->capture_default_str();
    serve->footer("Example:\n  ferry serve --listen 0.0.0.0:7788 --inbox ~/inbox --share www=/srv/www:rw --metrics 127.0.0.1:9188\n\n"
                  "Exit codes: 0 stopped by SIGINT/SIGTERM, 1 usage or a mistake in the configuration, 4 local I/O\n"
                  "(the port or the state folder taken, the inbox not writable).");
}

}  // namespace

int main(int argc, char** argv) {
    saved_argc = argc;
    saved_argv = argv;
    ferry::reserve_descriptors();  // before any thread starts
    ferry::cli::start_signal_thread();  // so too: every thread after it keeps the signals blocked
    // A peer that closes first must not kill us: writes to a closed socket return EPIPE.
    std::signal(SIGPIPE, SIG_IGN);
    // --json lines into a file or a pipe go out in 64 KiB writes (a small file makes two
    // events), not in writes of the size stdio picks (4 KiB); the flush points stay.
    // (glibc ignores the size when it is to allocate the buffer itself.)
    static char stdout_buffer[64 << 10];
    if (::isatty(STDOUT_FILENO) == 0) {
        std::setvbuf(stdout, stdout_buffer, _IOFBF, sizeof stdout_buffer);
    }
    CLI::App app{"ferry: fast, authenticated peer-to-peer file transfer"};
    app.require_subcommand(1);
    app.set_version_flag("--version", "ferry " FERRY_VERSION);
    app.footer("Examples:\n"
               "  ferry id                                   (this node's ID; its key is made on first use)\n"
               "  ferry receive --accept-from ID ~/inbox     (take one transfer)\n"
               "  ferry send photos/ ID@192.0.2.7:7788\n"
               "  ferry sync --delete ~/site web1:www/site   (mirror to a peer's share)\n"
               "  ferry COMMAND --help                       (each command's flags, examples and exit codes)\n\n"
               "Exit codes: 0 ok, 1 usage, 2 transfer failed, 3 authentication/trust, 4 local I/O, 5 some source files\n"
               "not sent, 6 some source files vanished. See docs/cli.md.");

    common_opts o;

    auto* id = app.add_subcommand("id", "print this node's ID (creating its key on first use)");
    add_common(id, o);
    id->footer("Example:\n  ferry id --state ~/.local/state/ferry\n\n"
               "Exit codes: 0 printed (made first if there was none), 1 usage, 4 the state folder cannot be read or written.");

    trust_opts to;
    auto* trust = app.add_subcommand("trust", "trust a peer's node ID");
    add_common(trust, o);
    trust->add_option("ID", to.id, "the peer's node ID, as its `ferry id` prints it (with --remove: or its name)")->required();
    auto* trust_name = trust->add_option("--name", to.name, "a name for the peer (NAME:SHARE in `ferry sync`)");
    auto* trust_address = trust->add_option("--address", to.address, "where the peer serves, HOST:PORT (for NAME:SHARE)");
    auto* trust_shares = trust->add_option("--shares", to.shares, "the shares of this node the peer may use, comma-separated (\"*\": all, the default)");
    trust->add_flag("--remove", to.remove, "trust the peer no more (a running node refuses it from its next connection)")
        ->excludes(trust_name)
        ->excludes(trust_address)
        ->excludes(trust_shares);
    trust->footer("A running `ferry serve` of the same state folder takes a change from its next connection on.\n\n"
                  "Examples:\n  ferry trust ABCD-EFGH-IJKL-MNOP-QRST-UVWX-YZ23-4567 --name laptop --address 192.0.2.7:7788 --shares www,docs\n"
                  "  ferry trust --remove laptop\n\n"
                  "Exit codes: 0 trusted (or, with --remove, not trusted now), 1 usage (a malformed ID, name, address or share; "
                  "a peer the configuration file declares, for --remove), 4 the trust list cannot be written.");

    receive_opts ro;
    auto* receive = app.add_subcommand("receive", "accept one transfer into DIR, then exit");
    add_common(receive, o);
    add_transfer_options(receive, o);
    std::string receive_listen = "0.0.0.0:7788";
    receive->add_option("--listen", receive_listen, "HOST:PORT to listen on (port 0 = any free port)")->capture_default_str();
    auto* from = receive->add_option("--accept-from", ro.accept_from, "accept this sender ID (besides trusted peers)");
    receive->add_flag("--accept-any", ro.accept_any, "accept any sender (trust on first use)")->excludes(from);
    receive->add_flag("--overwrite", ro.overwrite, "replace existing files");
    receive->add_flag("--fsync-each", ro.fsync_each, "fsync every file before it is renamed into place");
    receive->add_flag("--plaintext", ro.plaintext, "no TLS (benchmarks only; the sender must say it too)");
    receive->add_option("DIR", ro.dir, "destination folder")->required();
    add_limit_options(receive, ro);
    receive->footer("Example:\n  ferry receive --listen 0.0.0.0:7788 --accept-from ABCD-EFGH-IJKL-MNOP-QRST-UVWX-YZ23-4567 ~/inbox\n\n"
                    "Exit codes: 0 the transfer succeeded, 1 usage, 2 it failed (or SIGINT/SIGTERM came first), 4 local I/O,\n"
                    "5 some files were not sent or not written (each listed), 6 some vanished at the sender.");

    send_opts so;
    auto* send = app.add_subcommand("send", "send files and folders to a peer");
    add_common(send, o);
    add_transfer_options(send, o);
    add_send_flags(send, so);
    send->add_flag("--overwrite", so.overwrite, "ask the receiver to replace existing files");
    send->add_flag("--fsync-each", so.fsync_each, "ask the receiver to fsync every file before rename");
    send->add_flag("--plaintext", so.plaintext, "no TLS (benchmarks only; the receiver must say it too)");
    send->add_option("ARGS", so.args, "PATH... [ID@]HOST:PORT, or PATH... PEER (a trusted name, or an ID LAN discovery found)")
        ->required();
    send->footer("Examples:\n  ferry send photos/ notes.txt ABCD-EFGH-IJKL-MNOP-QRST-UVWX-YZ23-4567@192.0.2.7:7788\n"
                 "  ferry send report.pdf desk\n\n"
                 "Exit codes: 0 every byte confirmed, 1 usage, 2 transfer failed, 3 trust, 4 local I/O, 5 some source files\n"
                 "not sent (listed), 6 some vanished while sent.");

    receive_opts serve_o;
    serve_o.dir = "";
    std::string inbox;
    send_opts sync_so;
    sync_opts sy;
    auto* sync = app.add_subcommand("sync", "mirror a folder into a peer's share or out of one (only what changed moves)");
    add_common(sync, o);
    add_transfer_options(sync, o);
    add_send_flags(sync, sync_so);
    sync->add_flag("--delete", sy.delete_, "remove files and folders at DST that are not in SRC (never excluded ones)");
    sync->add_flag("--dry-run,-n", sy.dry_run, "print what would change, change nothing");
    sync->add_flag("--checksum,-c", sy.checksum,
                   "compare files by content digest, not size and mtime (reads every file on both sides)");
    sync->add_flag("--verbose,-v", sy.verbose,
                   "one line per file created, updated or renamed, per folder made and per path deleted");
    CLI::Option* exclude_opt =
        sync->add_option("--exclude", sy.exclude, "leave out paths matching PATTERN (gitignore-style; repeatable)")
            ->type_name("PATTERN");
    CLI::Option* exclude_from_opt =
        sync->add_option("--exclude-from", sy.exclude_from, "read exclude patterns from FILE, one per line")
            ->check(CLI::ExistingFile);
    sync->parse_complete_callback([&sy, sync, exclude_opt, exclude_from_opt] {
        for (const CLI::Option* opt : sync->parse_order()) {  // one per value given
            if (opt == exclude_opt || opt == exclude_from_opt) {
                sy.exclude_order.push_back(opt == exclude_from_opt);
            }
        }
    });
    sync->add_option("SRC", sy.src, "folder whose contents are mirrored: local, or a peer's (pull)")->required();
    sync->add_option("DST", sy.dst, "ferry://[ID@]HOST[:PORT]/SHARE[/PATH] or NAME:SHARE[/PATH], or a local folder (pull)")
        ->required();
    sync->footer("Examples:\n"
                 "  ferry sync --delete ~/site/ web1:www/blog\n"
                 "  ferry sync --dry-run --json --exclude '*.tmp' build/ ferry://ABCD-...-4567@192.0.2.7/artifacts/nightly\n"
                 "  ferry sync --delete web1:www/blog ~/blog-copy      (a pull: web1's share into a local folder)\n"
                 "SRC's contents become DST's: files differing in size or mtime are replaced, others are skipped.\n"
                 "Exit codes: 0 done, 1 usage, 2 sync failed (refused, lost), 3 authentication/trust, 4 local I/O,\n"
                 "5 some files not sent (changed while read, unreadable), 6 some files vanished.");

    send_opts get_so;
    get_opts go;
    auto* get = app.add_subcommand("get", "copy a file or folder out of a peer's share (read-only shares too)");
    add_common(get, o);
    add_transfer_options(get, o);
    add_send_flags(get, get_so);
    get->add_flag("--verbose,-v", go.verbose, "one line per file created or updated and per folder made");
    get->add_option("--from", go.from,
                    "get one file from these peers at once (NAME, ID or ferry://[ID@]HOST[:PORT], comma-separated); "
                    "SOURCE is then SHARE/PATH")
        ->delimiter(',')
        ->allow_extra_args(false)
        ->type_name("PEER,...");
    get->add_option("--range-size", go.range_size,
                    "with --from: bytes a source is asked for at a time, in 256K chunks (e.g. 4M; default: about 16 "
                    "ranges a source, 8M-64M)")
        ->transform(CLI::AsSizeValue(false))
        ->type_name("SIZE");
    get->add_flag("--from-lan", go.from_lan,
                  "also get from every trusted peer LAN discovery hears (a running `ferry serve`) that holds the "
                  "same file: same size, mtime and digest");
    get->add_option("SOURCE", go.source, "NAME:SHARE[/PATH] or ferry://[ID@]HOST[:PORT]/SHARE[/PATH]")->required();
    get->add_option("DEST", go.dest,
                    "a folder to put it in (default: the current folder), or a new name for it")
        ->capture_default_str();
    get->footer("Examples:\n"
                "  ferry get web1:www/blog/index.html              (into the current folder)\n"
                "  ferry get --json web1:isos/debian.iso ~/Downloads/\n"
                "  ferry get ferry://ABCD-...-4567@192.0.2.7/photos/2024 ./photos-2024   (a folder, renamed)\n"
                "  ferry get --from web1,web2,web3 isos/debian.iso ~/Downloads/   (one file, from three peers at once)\n"
                "  ferry get --from-lan web1:isos/debian.iso ~/Downloads/   (and from every trusted LAN peer holding it)\n"
                "DEST as cp -r takes it: a folder (or a name ending in '/') receives SOURCE under its own name;\n"
                "any other name is what SOURCE is called here. Files already there with the same size and mtime\n"
                "are kept, others replaced (an interrupted get resumes).\n"
                "Exit codes: 0 done, 1 usage, 2 get failed (refused, not found, lost), 3 authentication/trust,\n"
                "4 local I/O, 5 some files not sent (changed while read, unreadable), 6 some files vanished.");

    peers_opts po;
    auto* peers = app.add_subcommand("peers", "list trusted peers and the nodes LAN discovery found");
    add_common(peers, o);
    peers->add_flag("--shares,!--no-shares", po.shares, "ask each peer which of its shares it opens to this node");
    peers->footer("Example:\n  ferry peers\n  ferry peers --json | jq -r 'select(.event==\"peer\") | .id'\n"
                  "Columns: name (ours; the one it announces in parentheses), ID, address, last heard on the LAN,\n"
                  "trusted, connected, its shares open to this node (:rw writable; ? when it did not answer).\n"
                  "Discovery needs a running `ferry serve` with this state folder.\n"
                  "Exit codes: 0 listed, 1 usage, 4 local I/O.");

    ls_opts lo;
    auto* ls = app.add_subcommand("ls", "list a peer's shares, or what one holds");
    add_common(ls, o);
    ls->add_flag("--recursive,-r", lo.recursive, "everything below PATH, not only what it holds itself");
    ls->add_option("TARGET", lo.target,
                   "NAME (its shares open to this node), NAME:SHARE[/PATH], or ferry://[ID@]HOST[:PORT][/SHARE[/PATH]]")
        ->required();
    ls->footer("Examples:\n"
               "  ferry ls web1                     (the shares web1 opens to this node)\n"
               "  ferry ls web1:www/blog\n"
               "  ferry ls -r --json web1:isos | jq -r 'select(.event==\"entry\") | .path'\n"
               "Lines: mode, size (files), mtime (local time), path (relative to PATH; a folder ends in '/').\n"
               "Exit codes: 0 listed, 1 usage, 2 failed (not found, refused, lost), 3 authentication/trust,\n"
               "4 this node's state folder cannot be read.");

    auto* serve = app.add_subcommand("serve", "run the node: accept transfers from trusted peers into the inbox");
    define_serve(serve, o, serve_o, inbox);

    auto* config = app.add_subcommand("config", "check the configuration file, or show the settings `ferry serve` takes from it");
    config->require_subcommand(1);
    config->footer("Examples:\n  ferry config check /etc/ferry/config.toml\n  ferry config show --json\n"
                   "Every key: docs/config.md.\n\nExit codes: 0 done, 1 the file has a mistake (FILE:LINE:COLUMN).");
    auto* config_check = config->add_subcommand("check", "check a configuration file: its syntax, keys, values, shares and peers");
    add_common(config_check, o);
    std::string check_file;
    config_check->add_option("FILE", check_file, "the file (default: --config, $FERRY_CONFIG, or the default path)");
    config_check->footer("Example:\n  ferry config check /etc/ferry/config.toml\n\n"
                         "Exit codes: 0 the file is good, 1 it is not (the first mistake is printed as FILE:LINE:COLUMN).");
    auto* config_show = config->add_subcommand("show", "print the settings `ferry serve` would run with (the file's, "
                                                       "over the defaults), as TOML or with --json as JSON");
    add_common(config_show, o);
    config_show->footer("Example:\n  ferry config show --config /etc/ferry/config.toml\n\n"
                        "Exit codes: 0 printed, 1 the file has a mistake.");

    auto* status = app.add_subcommand("status", "show what the running `ferry serve` is doing");
    add_common(status, o);
    status->footer("Example:\n  ferry status --json | jq '.transfers[] | {peer, confirmed_bytes, rate_Bps}'\n\n"
                   "Exit codes: 0 the node answered, 2 no node is running with this state folder, "
                   "4 it did not answer (in 5 s), or this user may not ask it.");

    take_brackets_literally(app);
    try {
        app.parse(argc, argv);
    } catch (const CLI::CallForHelp& e) {
        return app.exit(e);
    } catch (const CLI::CallForAllHelp& e) {
        return app.exit(e);
    } catch (const CLI::CallForVersion& e) {
        return app.exit(e);
    } catch (const CLI::ParseError& e) {
        // What was not understood is said first: a missing argument hid it ("ferry bogus"
        // said "A subcommand is required", "ferry send --bogus" "ARGS is required").
        std::string message = e.what();
        std::string names;
        bool known = false;
        for (const CLI::App* sub : app.get_subcommands({})) {
            names += (names.empty() ? "" : ", ") + sub->get_name();
            known = known || (argc >= 2 && sub->get_name() == argv[1]);
        }
        if (argc >= 2 && argv[1][0] != '-' && !known) {
            message = "unknown command \"" + std::string(argv[1]) + "\" (the commands: " + names + "; ferry --help)";
        } else if (dynamic_cast<const CLI::RequiredError*>(&e) != nullptr) {
            for (const CLI::App* sub : app.get_subcommands()) {
                for (const std::string& word : sub->remaining()) {
                    if (word.size() > 1 && word[0] == '-') {
                        message = "unknown option " + word + " for ferry " + sub->get_name() + " (ferry " +
                                  sub->get_name() + " --help)";
                        break;
                    }
                }
            }
        }
        if (message == e.what()) {
            app.exit(e);  // the message and where to find help, on stderr
        } else {
            std::fprintf(stderr, "%s\n", message.c_str());
        }
        // A script that asked for --json hears of a mistake in its words the way it hears
        // of any other (the parse may have stopped before it reached --json).
        const std::span<char* const> words(argv + 1, static_cast<std::size_t>(argc - 1));
        const auto end = std::find(words.begin(), words.end(), std::string_view("--"));
        o.json = std::find(words.begin(), end, std::string_view("--json")) != end;
        emit(o, error_event(exit_code::usage, message));
        return static_cast<int>(exit_code::usage);
    }

    log_to_journal = ferry::cli::stderr_is_journal();
    // The configuration file: `ferry serve` (and `ferry config`) take all of it, the other
    // commands its state folder, congestion control, [tuning] and peers. Flags given win.
    const bool serve_settings = serve->parsed() || config->parsed();
    try {
        std::optional<fs::path> file =
            config_check->parsed() && !check_file.empty() ? fs::path(check_file) : ferry::cli::pick_config(o.config);
        if (file) {
            loaded_config = ferry::cli::load_config(*file);
            ferry::cli::config_file use = *loaded_config;
            CLI::App* ran = serve_settings ? serve : app.get_subcommands().front();
            if (!serve_settings) {
                // Their state folder, peers, and what tunes their sockets and connections.
                static const std::set<std::string> taken{"--state",  "--congestion", "--connections", "--notsent-lowat",
                                                         "--sndbuf", "--rcvbuf",     "--user-timeout"};
                std::erase_if(use.values, [](const auto& v) { return !taken.contains(v.flag); });
            }
            for (CLI::App* sub : {config_check, config_show}) {
                if (sub->parsed() && sub->count("--state") > 0) {  // given to `config`, not to serve's own flag
                    std::erase_if(use.values, [](const auto& v) { return v.flag == "--state"; });
                }
            }
            ferry::cli::apply_config(use, *ran);
            if (!loaded_config->peers.empty()) {
                load_trust(ferry::resolve_state_dir(o.state));  // a name the trust list gives another peer
            }
        } else if (config_check->parsed()) {
            return fail(o, exit_code::usage,
                        "no configuration file: give one (--config FILE), set FERRY_CONFIG, or write " +
                            ferry::cli::default_config_path().string());
        }
    } catch (const ferry::cli::config_error& e) {
        return fail(o, exit_code::usage, e.what());
    } catch (const std::exception& e) {
        return fail(o, exit_code::local_io, e.what());
    }
    log_most = o.log_level == "error" ? 3 : o.log_level == "warn" ? 4 : 6;  // flag or file
    ro.listen = {receive_listen};

    try {
        if (serve_settings) {
            serve_o.dir = serve_inbox(o, inbox);
        }
        if (config->parsed()) {
            return cmd_config(o, serve_o, config_show->parsed());
        }
        if (id->parsed()) {
            return cmd_id(o);
        }
        if (trust->parsed()) {
            return cmd_trust(o, to);
        }
        if (receive->parsed()) {
            return run_receiver(o, ro, true);
        }
        if (send->parsed()) {
            return cmd_send(o, so);
        }
        if (sync->parsed()) {
            return cmd_sync(o, sync_so, sy);
        }
        if (get->parsed()) {
            return cmd_get(o, get_so, go);
        }
        if (ls->parsed()) {
            return cmd_ls(o, lo);
        }
        if (peers->parsed()) {
            return cmd_peers(o, po);
        }
        if (status->parsed()) {
            return cmd_status(o);
        }
        if (serve->parsed()) {
            return run_receiver(o, serve_o, false);
        }
    } catch (const std::exception& e) {
        return fail(o, exit_code::local_io, e.what());
    }
    return static_cast<int>(exit_code::usage);
}
