// node/stats: incremental statistics with bounded memory.
//
// Every figure is updated where its event happens, in O(1), and reading one never scans
// history: a stats_scope is one level of the aggregation tree (connection < transfer <
// peer < node) and passes each update up to its parent in the same step. Rates come from
// a fixed window of 1-second buckets over the last 60 s; latencies go into fixed-bucket
// histograms. Loop thread only (no locks), like all node state.
//
// What the figures count (docs/json.md):
// - wire bytes: what the kernel accepted from / delivered to ferry on each TCP socket,
//   TLS records, framing and handshakes included;
// - payload sent: file bytes the receiver confirmed (ChunkAck) after verifying and
//   writing them; payload received: file bytes this node verified and wrote;
// - in flight: sent but not yet confirmed (kept by the sending session).
#pragma once

#include <array>
#include <chrono>
#include <cstdint>
#include <map>
#include <memory>
#include <string>

#include "node/limits.hpp"

namespace ferry {

class byte_stream;

using stats_clock = std::chrono::steady_clock;

// Bytes per 1-second bucket over the last 60 seconds.
class rate_window {
public:
    static constexpr int seconds = 60;

    // `origin`: when what is measured started (a transfer's start). Rates never cover
    // more time than has passed since then.
    explicit rate_window(stats_clock::time_point origin = stats_clock::now()) : origin_(origin) {}

    void add(std::uint64_t bytes, stats_clock::time_point now);
    // Bytes per second over the last `span` seconds (1..60) up to `now`: the full seconds
    // before plus the current partial one; shorter if the origin is more recent.
    double rate(stats_clock::time_point now, int span = 5) const;

private:
    static std::int64_t second_of(stats_clock::time_point t);
    void advance(std::int64_t second);

    std::array<std::uint64_t, seconds> buckets_{};
    std::int64_t newest_ = 0;      // second of the newest bucket
    bool started_ = false;
    stats_clock::time_point origin_;
};

// Fixed buckets in seconds (Prometheus style upper bounds), a count and a sum.
class latency_histogram {
public:
    static constexpr std::array<double, 18> bounds{0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005,
                                                   0.01,   0.025,   0.05,   0.1,   0.25,   0.5,
                                                   1.0,    2.5,     5.0,    10.0,  30.0,   60.0};

    void observe(stats_clock::duration d);
    std::uint64_t count() const { return count_; }
    double sum_seconds() const { return sum_; }
    // Observations in bucket i (i == bounds.size(): above the last bound). Not cumulative.
    std::uint64_t bucket(std::size_t i) const { return buckets_[i]; }
    // The smallest bound below which at least `q` (0..1) of the observations fall; +inf
    // if only the overflow bucket reaches it, 0 with no observations.
    double quantile_bound(double q) const;

private:
    std::array<std::uint64_t, bounds.size() + 1> buckets_{};
    std::uint64_t count_ = 0;
    double sum_ = 0;
};

struct traffic_counters {
    std::uint64_t wire_sent = 0;
    std::uint64_t wire_received = 0;
    std::uint64_t payload_sent = 0;      // confirmed by the receiver
    std::uint64_t payload_received = 0;  // verified and written here
    std::uint64_t chunks_sent = 0;       // confirmed
    std::uint64_t chunks_received = 0;   // verified and written
    // Of the payload above (either direction), bytes zstd kept off the wire: raw length
    // minus compressed length of each confirmed compressed chunk.
    std::uint64_t compression_saved = 0;
};

// One level of the aggregation tree. Updates go to this scope and every ancestor.
class stats_scope {
public:
    // `origin`: when this scope's activity started (for its rate window).
    explicit stats_scope(std::shared_ptr<stats_scope> parent = nullptr,
                         stats_clock::time_point origin = stats_clock::now())
        : payload_rate_(origin), parent_(std::move(parent)) {}

    void add_wire(std::uint64_t sent, std::uint64_t received);
    // `saved`: of `bytes`, what compression kept off the wire.
    void add_payload_sent(std::uint64_t bytes, std::uint64_t chunks, stats_clock::time_point now,
                          std::uint64_t saved = 0);
    void add_payload_received(std::uint64_t bytes, std::uint64_t chunks, stats_clock::time_point now,
                              std::uint64_t saved = 0);

    const traffic_counters& counters() const { return c_; }
    // Payload (sent confirmed + received) per second over the last `span` seconds.
    double payload_rate(stats_clock::time_point now, int span = 5) const { return payload_rate_.rate(now, span); }
    const std::shared_ptr<stats_scope>& parent() const { return parent_; }

private:
    traffic_counters c_;
    rate_window payload_rate_;
    std::shared_ptr<stats_scope> parent_;
};

// Counts a stream's wire bytes in `scope` (and its ancestors) from now on, starting with
// what it moved so far (its handshake).
void count_wire(byte_stream& stream, const std::shared_ptr<stats_scope>& scope);

// Per-peer scopes over the node's life, keyed by canonical node ID (or the address of a
// plaintext peer), children of `root`. Bounded: beyond `cap` peers, one that no running
// transfer holds is dropped (its bytes stay in the root) before a new one is added.
class peer_scopes {
public:
    peer_scopes(std::shared_ptr<stats_scope> root, std::size_t cap) : root_(std::move(root)), cap_(cap) {}

    std::shared_ptr<stats_scope> get(const std::string& key, stats_clock::time_point now = stats_clock::now());
    const std::map<std::string, std::shared_ptr<stats_scope>>& all() const { return scopes_; }

private:
    std::shared_ptr<stats_scope> root_;
    std::size_t cap_;
    std::map<std::string, std::shared_ptr<stats_scope>> scopes_;
};

// Node-wide figures besides the traffic of its root scope.
struct node_stats {
    std::shared_ptr<stats_scope> traffic = std::make_shared<stats_scope>();
    latency_histogram chunk_rtt;      // sender: chunk handed to a connection -> its ChunkAck
    latency_histogram ttfb;           // transfer start -> first confirmed (sent) / written (received) byte
    latency_histogram write_latency;  // receiver: one chunk's pwrite on the worker pool
    std::uint64_t transfers_ok = 0;
    std::uint64_t transfers_failed = 0;
    std::uint64_t transfers_cancelled = 0;  // a pull this node served, ended by the puller
    refusal_counters refusals;  // connections and transfers this node refused or closed, by reason
    stats_clock::time_point started = stats_clock::now();
    static constexpr std::size_t max_peers = 1024;
    peer_scopes peers{traffic, max_peers};
};

}  // namespace ferry
