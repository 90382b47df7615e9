// node/stats: rate windows, histograms and the aggregation tree, driven with literal
// times (no clock, no sleeps).
#include "node/stats.hpp"

#include <gtest/gtest.h>

#include <cmath>
#include <limits>

namespace ferry {
namespace {

using std::chrono::milliseconds;
using std::chrono::seconds;

// A fixed point in time, well past the clock's epoch, at the start of a whole second.
const stats_clock::time_point t0 = stats_clock::time_point(seconds(1'000'000));

TEST(rate_window, empty_is_zero) {
    rate_window w(t0);
    EXPECT_EQ(w.rate(t0), 0.0);
}

TEST(rate_window, steady_rate_over_full_seconds) {
    rate_window w(t0);
    // 10 MB each second for 10 s, added in 10 pieces per second.
    for (int s = 0; s < 10; ++s) {
        for (int i = 0; i < 10; ++i) {
            w.add(1'000'000, t0 + seconds(s) + milliseconds(i * 100));
        }
    }
    // At t0+10 s (start of second 10): the last 5 s are seconds 6..9 (full) plus 0 s of 10.
    // Span 5 covers seconds 6,7,8,9,10 = 40 MB over 4 s.
    EXPECT_NEAR(w.rate(t0 + seconds(10), 5), 10e6, 1);
    // Mid-second 9: seconds 5..9, the last one half over and half filled (5 MB so far
    // would be the ideal; here second 9 is already full: 50 MB over 4.5 s).
    EXPECT_NEAR(w.rate(t0 + seconds(9) + milliseconds(999), 5), 50e6 / 4.999, 1e3);
}

TEST(rate_window, first_seconds_use_the_time_since_the_origin) {
    rate_window w(t0);  // the transfer started at t0
    // The first acknowledgement, half a second in, confirms 5 MB that took the whole half
    // second (and the half before it) to arrive.
    w.add(5'000'000, t0 + milliseconds(500));
    // One second after the start: 5 MB over 1 s, not over the 5 s span, and not over the
    // 0.5 s since the first byte.
    EXPECT_NEAR(w.rate(t0 + seconds(1), 5), 5e6, 1);
}

TEST(rate_window, stalls_fall_to_zero_and_old_buckets_are_cleared) {
    rate_window w(t0);
    for (int s = 0; s < 60; ++s) {
        w.add(1'000'000, t0 + seconds(s));
    }
    EXPECT_NEAR(w.rate(t0 + seconds(60), 60), 1e6, 1);
    // Nothing for 10 s: the 5 s rate is zero, the 60 s rate lost the oldest 10 buckets.
    EXPECT_EQ(w.rate(t0 + seconds(70), 5), 0.0);
    w.add(0, t0 + seconds(70));  // advances the window
    EXPECT_NEAR(w.rate(t0 + seconds(70), 60), 49e6 / 59, 1);
    // Two minutes later a new byte: every stale bucket was cleared.
    w.add(600, t0 + seconds(190));
    EXPECT_NEAR(w.rate(t0 + seconds(190) + milliseconds(500), 60), 600 / 59.5, 1e-6);
}

TEST(rate_window, a_clock_going_back_beyond_the_window_is_ignored) {
    rate_window w(t0);
    w.add(100, t0 + seconds(100));
    w.add(1'000'000, t0);  // 100 s earlier: outside the window
    EXPECT_NEAR(w.rate(t0 + seconds(101), 1), 0.0, 1e-9);
    EXPECT_NEAR(w.rate(t0 + seconds(101), 2), 100.0, 1e-6);
}

TEST(latency_histogram, buckets_count_sum_and_quantiles) {
    latency_histogram h;
    EXPECT_EQ(h.quantile_bound(0.5), 0.0);
    // 90 fast (0.3 ms -> le 0.0005), 9 medium (20 ms -> le 0.025), 1 slow (100 s -> +Inf).
    for (int i = 0; i < 90; ++i) {
        h.observe(std::chrono::microseconds(300));
    }
    for (int i = 0; i < 9; ++i) {
        h.observe(milliseconds(20));
    }
    h.observe(seconds(100));
    EXPECT_EQ(h.count(), 100u);
    EXPECT_NEAR(h.sum_seconds(), 90 * 0.0003 + 9 * 0.020 + 100, 1e-9);
    EXPECT_EQ(h.bucket(2), 90u);                                // le 0.0005
    EXPECT_EQ(h.bucket(7), 9u);                                 // le 0.025
    EXPECT_EQ(h.bucket(latency_histogram::bounds.size()), 1u);  // overflow
    EXPECT_EQ(h.quantile_bound(0.5), 0.0005);
    EXPECT_EQ(h.quantile_bound(0.9), 0.0005);
    EXPECT_EQ(h.quantile_bound(0.95), 0.025);
    EXPECT_EQ(h.quantile_bound(0.99), 0.025);
    EXPECT_EQ(h.quantile_bound(1.0), std::numeric_limits<double>::infinity());
}

TEST(latency_histogram, an_observation_on_a_bound_counts_in_that_bucket) {
    latency_histogram h;
    h.observe(milliseconds(1));  // exactly le="0.001"
    EXPECT_EQ(h.bucket(3), 1u);
}

TEST(stats_scope, updates_reach_every_ancestor_in_the_same_step) {
    auto node = std::make_shared<stats_scope>();
    auto peer = std::make_shared<stats_scope>(node);
    auto transfer_a = std::make_shared<stats_scope>(peer);
    auto transfer_b = std::make_shared<stats_scope>(peer);
    transfer_a->add_wire(1000, 10);
    transfer_b->add_wire(500, 5);
    transfer_a->add_payload_sent(262144, 1, t0);
    transfer_b->add_payload_received(4096, 1, t0);

    EXPECT_EQ(transfer_a->counters().wire_sent, 1000u);
    EXPECT_EQ(transfer_a->counters().payload_sent, 262144u);
    EXPECT_EQ(transfer_a->counters().payload_received, 0u);
    EXPECT_EQ(transfer_b->counters().wire_received, 5u);
    for (const auto& s : {peer, node}) {
        EXPECT_EQ(s->counters().wire_sent, 1500u);
        EXPECT_EQ(s->counters().wire_received, 15u);
        EXPECT_EQ(s->counters().payload_sent, 262144u);
        EXPECT_EQ(s->counters().payload_received, 4096u);
        EXPECT_EQ(s->counters().chunks_sent, 1u);
        EXPECT_EQ(s->counters().chunks_received, 1u);
    }
    // Rates aggregate too: both directions' payload over the last second.
    EXPECT_NEAR(node->payload_rate(t0 + milliseconds(500), 1), (262144 + 4096) / 0.5, 1);
}

TEST(stats_scope, a_finished_transfer_keeps_its_totals_in_its_parents) {
    auto node = std::make_shared<stats_scope>();
    auto peer = std::make_shared<stats_scope>(node);
    {
        auto transfer = std::make_shared<stats_scope>(peer);
        transfer->add_payload_received(100, 1, t0);
    }
    EXPECT_EQ(peer->counters().payload_received, 100u);
    EXPECT_EQ(node->counters().payload_received, 100u);
}

TEST(latency_histogram, everything_slow_puts_the_quantiles_beyond_the_last_bound) {
    latency_histogram h;
    for (int i = 0; i < 10; ++i) {
        h.observe(seconds(61));
    }
    EXPECT_EQ(h.quantile_bound(0.5), std::numeric_limits<double>::infinity());
}

TEST(peer_scopes, bounded_and_evicts_only_peers_without_a_running_transfer) {
    auto root = std::make_shared<stats_scope>(nullptr, t0);
    peer_scopes peers(root, 3);
    auto busy = std::make_shared<stats_scope>(peers.get("busy", t0), t0);  // a running transfer holds it
    peers.get("idle1", t0)->add_payload_received(10, 1, t0);
    peers.get("idle2", t0)->add_payload_received(20, 1, t0);
    EXPECT_EQ(peers.all().size(), 3u);
    EXPECT_EQ(peers.get("busy", t0).get(), busy->parent().get());  // found, not re-created
    for (int i = 0; i < 100; ++i) {
        peers.get("new" + std::to_string(i), t0)->add_payload_received(1, 1, t0);
        EXPECT_LE(peers.all().size(), 3u);
    }
    EXPECT_EQ(peers.all().count("busy"), 1u);
    // The evicted peers' bytes stay in the node's totals.
    EXPECT_EQ(root->counters().payload_received, 130u);
}

}  // namespace
}  // namespace ferry
