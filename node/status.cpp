// node::status() and node::metrics(): the two read-only views of a running node, built
// from the same incremental counters (node/stats). Nothing here scans past transfers:
// the cost is the peers kept (bounded by node_stats::max_peers) plus the live
// sessions and their connections. TCP_INFO is sampled here, when someone asks, and never
// on a timer.
#include <fmt/format.h>

#include <cmath>
#include <set>

#include "node/node.hpp"
#include "transport/identity.hpp"
#include "transport/socket_tuning.hpp"

namespace ferry {

namespace {

using json = nlohmann::ordered_json;

json counters_json(const traffic_counters& c) {
    return {{"wire_bytes_sent", c.wire_sent},
            {"wire_bytes_received", c.wire_received},
            {"payload_bytes_sent", c.payload_sent},
            {"payload_bytes_received", c.payload_received},
            {"chunks_sent", c.chunks_sent},
            {"chunks_received", c.chunks_received},
            {"compression_saved_bytes", c.compression_saved}};
}

// A quantile's bucket bound: a number, "+Inf" beyond the last bound, null with no data.
json quantile_json(const latency_histogram& h, double q) {
    if (h.count() == 0) {
        return nullptr;
    }
    double b = h.quantile_bound(q);
    return std::isinf(b) ? json("+Inf") : json(b);
}

json histogram_json(const latency_histogram& h) {
    return {{"count", h.count()},
            {"sum_s", h.sum_seconds()},
            {"p50_le_s", quantile_json(h, 0.5)},
            {"p99_le_s", quantile_json(h, 0.99)}};
}

json connection_json(connection& c) {
    const connection_counters& k = c.counters();
    const tuning_report& t = c.stream().tuning();
    json j{{"index", c.index},
           {"remote", c.stream().remote()},
           {"wire_bytes_sent", c.stream().wire_sent()},
           {"wire_bytes_received", c.stream().wire_received()},
           {"chunks_sent", k.payload_frames_sent},
           {"chunks_received", k.payload_frames_received},
           {"frames_sent", k.frames_sent},
           {"frames_received", k.frames_received},
           {"queued_bytes", c.queued_bytes()},
           {"tuning",
            {{"nodelay", t.nodelay},
             {"notsent_lowat", t.notsent_lowat},
             {"keepalive", t.keepalive},
             {"user_timeout_ms", t.user_timeout_ms},
             {"sndbuf", t.sndbuf},
             {"rcvbuf", t.rcvbuf},
             {"congestion", t.congestion}}}};
    tcp_info_sample ti = sample_tcp_info(c.stream().socket().native_handle());
    if (ti.ok) {
        j["tcp_info"] = {{"rtt_ms", ti.rtt_us / 1000.0},
                         {"rttvar_ms", ti.rttvar_us / 1000.0},
                         {"retransmits", ti.total_retrans},
                         {"cwnd_segments", ti.snd_cwnd},
                         {"mss", ti.snd_mss},
                         {"unacked_segments", ti.unacked},
                         {"bytes_acked", ti.bytes_acked},
                         {"bytes_received", ti.bytes_received},
                         {"delivery_rate_Bps", ti.delivery_rate},
                         {"sndbuf", ti.sndbuf},
                         {"rcvbuf", ti.rcvbuf}};
    } else {
        j["tcp_info"] = nullptr;
    }
    return j;
}


// Prometheus label value escaping (backslash, quote, newline).
std::string label(std::string_view v) {
    std::string out;
    for (char ch : v) {
        if (ch == '\\' || ch == '"') {
            out += '\\';
            out += ch;
        } else if (ch == '\n') {
            out += "\\n";
        } else {
            out += ch;
        }
    }
    return out;
}

void histogram_text(std::string& out, const char* name, const char* help, const latency_histogram& h) {
    fmt::format_to(std::back_inserter(out), "# HELP {} {}\n# TYPE {} histogram\n", name, help, name);
    std::uint64_t cumulative = 0;
    for (std::size_t i = 0; i < latency_histogram::bounds.size(); ++i) {
        cumulative += h.bucket(i);
        fmt::format_to(std::back_inserter(out), "{}_bucket{{le=\"{}\"}} {}\n", name, latency_histogram::bounds[i],
                       cumulative);
    }
    fmt::format_to(std::back_inserter(out), "{}_bucket{{le=\"+Inf\"}} {}\n{}_sum {}\n{}_count {}\n", name, h.count(),
                   name, h.sum_seconds(), name, h.count());
}

}  // namespace

nlohmann::ordered_json progress_json(const transfer_progress& p) {
    return {{"direction", p.direction},
            {"session", hex_encode(p.session_id)},
            {"peer", p.peer_id.empty() ? std::string() : format_node_id(p.peer_id)},
            {"address", p.peer_address},
            {"confirmed_bytes", p.confirmed_bytes},
            {"inflight_bytes", p.inflight_bytes},
            {"total_bytes", p.total_bytes},
            {"skipped_bytes", p.skipped_bytes},
            {"wire_bytes_sent", p.wire_sent},
            {"wire_bytes_received", p.wire_received},
            {"rate_Bps", p.rate},
            {"files_done", p.files_done},
            {"files_total", p.files_total},
            {"elapsed_s", p.elapsed_s},
            {"connections", p.connections}};
}

nlohmann::ordered_json node::status() const {
    const node_context& ctx = *ctx_;
    auto now = stats_clock::now();

    // Live connections, grouped by peer (ID, or address for a plaintext peer).
    std::map<std::string, json> live;
    std::size_t connections = 0;
    json transfers = json::array();
    for (const live_session& s : live_sessions()) {
        if (s.running) {
            transfers.push_back(progress_json(*s.running));
        }
        if (s.peer_key.empty()) {
            continue;
        }
        json& list = live[s.peer_key];
        if (list.is_null()) {
            list = json::array();
        }
        for (const auto& c : s.connections) {
            if (c && !c->closed()) {
                list.push_back(connection_json(*c));
                ++connections;
            }
        }
    }

    json peers = json::array();
    for (const auto& [key, scope] : ctx.stats.peers.all()) {
        json pj = counters_json(scope->counters());
        bool is_id = parse_node_id(key) == key;
        pj["id"] = is_id ? format_node_id(key) : std::string();
        pj["address"] = is_id ? std::string() : key;
        auto trusted = is_id ? ctx.trust.find_id(key) : std::nullopt;
        pj["name"] = trusted ? trusted->name : std::string();
        pj["trusted"] = trusted.has_value();
        pj["payload_rate_Bps"] = scope->payload_rate(now);
        auto it = live.find(key);
        pj["connections"] = it != live.end() ? std::move(it->second) : json::array();
        peers.push_back(std::move(pj));
    }

    const auto& tc = ctx.stats.traffic->counters();
    json totals = counters_json(tc);
    totals["transfers_ok"] = ctx.stats.transfers_ok;
    totals["transfers_failed"] = ctx.stats.transfers_failed;
    totals["transfers_cancelled"] = ctx.stats.transfers_cancelled;
    totals["payload_rate_Bps"] = ctx.stats.traffic->payload_rate(now);
    json refusals = json::object();
    for (std::size_t i = 0; i < refusal_kinds; ++i) {
        refusals[std::string(refusal_name(static_cast<refusal>(i)))] = ctx.stats.refusals.counts[i];
    }
    json lan = {{"enabled", discovery_ != nullptr}};
    if (discovery_) {
        const discovery_config& dc = discovery_->config();
        const discovery_counts& n = discovery_->counts();
        lan["name"] = dc.name;
        lan["group4"] = dc.group4;
        lan["group6"] = dc.group6;
        lan["port"] = dc.port;
        lan["announcements"] = {{"sent", n.sent},         {"received", n.received}, {"taken", n.taken},
                                {"forged", n.forged},     {"stale", n.stale},       {"replayed", n.replayed},
                                {"dropped", n.dropped}};
        json found = json::array();
        for (const discovered_peer& p : discovery_->peers()) {
            auto trusted = ctx.trust.find_id(p.id);
            found.push_back({{"id", format_node_id(p.id)},
                             {"name", p.name},
                             {"trusted_name", trusted ? trusted->name : std::string()},
                             {"trusted", trusted.has_value()},
                             {"addresses", p.addresses},
                             {"from", p.from},
                             {"version", p.version},
                             {"last_seen_ms", p.last_seen_ms},
                             {"seen_s_ago", std::chrono::duration<double>(std::chrono::steady_clock::now() - p.last_seen)
                                                .count()}});
        }
        lan["peers"] = std::move(found);
    }
    return {{"event", "status"},
            {"id", format_node_id(ctx.id)},
            {"listen", listen_address()},
            {"listen_addresses", listen_addresses()},
            {"uptime_s", std::chrono::duration<double>(now - ctx.stats.started).count()},
            {"threads", 1 + ctx.workers.size()},
            {"connections", connections + peers_->pending_count()},
            {"transfers_in_flight", transfers.size()},
            {"totals", std::move(totals)},
            {"refusals", std::move(refusals)},
            {"latency",
             {{"chunk_rtt", histogram_json(ctx.stats.chunk_rtt)},
              {"ttfb", histogram_json(ctx.stats.ttfb)},
              {"write", histogram_json(ctx.stats.write_latency)}}},
            {"peers", std::move(peers)},
            {"transfers", std::move(transfers)},
            {"discovery", std::move(lan)}};
}

std::string node::metrics() const {
    const node_context& ctx = *ctx_;
    const auto& c = ctx.stats.traffic->counters();
    std::size_t in_flight = 0;
    std::size_t connections = peers_->pending_count();
    std::set<std::string> peers_connected;
    for (const live_session& s : live_sessions()) {
        in_flight += s.running ? 1 : 0;
        for (const auto& conn : s.connections) {
            if (conn && !conn->closed()) {
                ++connections;
                peers_connected.insert(s.peer_key);
            }
        }
    }
    std::string out;
    auto it = std::back_inserter(out);
    fmt::format_to(it, "# HELP ferry_info This node.\n# TYPE ferry_info gauge\nferry_info{{id=\"{}\"}} 1\n",
                   label(format_node_id(ctx.id)));
    fmt::format_to(it,
                   "# HELP ferry_wire_bytes_sent_total Bytes the kernel accepted on ferry's TCP sockets (TLS and "
                   "framing included).\n# TYPE ferry_wire_bytes_sent_total counter\nferry_wire_bytes_sent_total {}\n",
                   c.wire_sent);
    fmt::format_to(it,
                   "# HELP ferry_wire_bytes_received_total Bytes read from ferry's TCP sockets (TLS and framing "
                   "included).\n# TYPE ferry_wire_bytes_received_total counter\nferry_wire_bytes_received_total {}\n",
                   c.wire_received);
    fmt::format_to(it,
                   "# HELP ferry_payload_bytes_confirmed_total File bytes verified and written by the receiver "
                   "(send: confirmed by its ChunkAck).\n# TYPE ferry_payload_bytes_confirmed_total counter\n"
                   "ferry_payload_bytes_confirmed_total{{direction=\"send\"}} {}\n"
                   "ferry_payload_bytes_confirmed_total{{direction=\"receive\"}} {}\n",
                   c.payload_sent, c.payload_received);
    fmt::format_to(it,
                   "# HELP ferry_chunks_total Chunks confirmed (send) or verified and written (receive).\n"
                   "# TYPE ferry_chunks_total counter\nferry_chunks_total{{direction=\"send\"}} {}\n"
                   "ferry_chunks_total{{direction=\"receive\"}} {}\n",
                   c.chunks_sent, c.chunks_received);
    fmt::format_to(it,
                   "# HELP ferry_compression_saved_bytes_total Payload bytes zstd kept off the wire (confirmed "
                   "chunks, both directions).\n# TYPE ferry_compression_saved_bytes_total counter\n"
                   "ferry_compression_saved_bytes_total {}\n",
                   c.compression_saved);
    fmt::format_to(it,
                   "# HELP ferry_transfers_total Transfers finished, by result.\n# TYPE ferry_transfers_total counter\n"
                   "ferry_transfers_total{{result=\"ok\"}} {}\nferry_transfers_total{{result=\"failed\"}} {}\n"
                   "ferry_transfers_total{{result=\"cancelled\"}} {}\n",
                   ctx.stats.transfers_ok, ctx.stats.transfers_failed, ctx.stats.transfers_cancelled);
    fmt::format_to(it, "# HELP ferry_refusals_total Connections and transfers refused or closed by this node, by "
                       "reason (docs/cli.md, limits).\n# TYPE ferry_refusals_total counter\n");
    for (std::size_t i = 0; i < refusal_kinds; ++i) {
        fmt::format_to(it, "ferry_refusals_total{{reason=\"{}\"}} {}\n", refusal_name(static_cast<refusal>(i)),
                       ctx.stats.refusals.counts[i]);
    }
    fmt::format_to(it, "# HELP ferry_peers Peers with an open connection.\n# TYPE ferry_peers gauge\nferry_peers {}\n",
                   peers_connected.size());
    fmt::format_to(it,
                   "# HELP ferry_connections Open TCP connections (in sessions or before their Hello).\n"
                   "# TYPE ferry_connections gauge\nferry_connections {}\n",
                   connections);
    fmt::format_to(it,
                   "# HELP ferry_transfers_in_flight Transfers running now.\n# TYPE ferry_transfers_in_flight gauge\n"
                   "ferry_transfers_in_flight {}\n",
                   in_flight);
    fmt::format_to(it,
                   "# HELP ferry_uptime_seconds Seconds since the node started.\n# TYPE ferry_uptime_seconds gauge\n"
                   "ferry_uptime_seconds {}\n",
                   std::chrono::duration<double>(stats_clock::now() - ctx.stats.started).count());
    histogram_text(out, "ferry_chunk_rtt_seconds", "Chunk handed to a connection until its ChunkAck (sender).",
                   ctx.stats.chunk_rtt);
    histogram_text(out, "ferry_ttfb_seconds", "Transfer start until its first confirmed or written byte.",
                   ctx.stats.ttfb);
    histogram_text(out, "ferry_write_latency_seconds", "One chunk's write on the worker pool (receiver).",
                   ctx.stats.write_latency);
    return out;
}

}  // namespace ferry
