// compression_policy: the adaptive rule, driven with literal measurements (no clock, no
// zstd): what it chooses for incompressible data, for cheap-to-compress data on a fast
// link, for ordinary text on a fast and on a slow link, and how it learns the link rate.
#include "protocol/compression.hpp"

#include <gtest/gtest.h>

namespace ferry {
namespace {

constexpr std::uint64_t chunk = 256 * 1024;
constexpr double mb = 1e6;
// A period in which the network held the sockets' bytes all along (a link that is the
// limit), and one in which they waited for data (loopback with many small files).
constexpr double busy = 1.0;
constexpr double idle = 0.1;

// Feeds `n` decisions, answering each attempt with `ratio` at `speed` bytes per CPU second
// (level 3 at a third of it, level 5 at a twelfth), and returns how many were compressed.
int drive(compression_policy& p, int n, double ratio, double speed) {
    int compressed = 0;
    for (int i = 0; i < n; ++i) {
        int level = p.next_level();
        if (level > 0) {
            ++compressed;
            double s = level == compression_policy::strongest_level ? speed / 12
                       : level == compression_policy::strong_level  ? speed / 3
                                                                    : speed;
            p.observe(level, chunk, static_cast<std::uint64_t>(ratio * chunk), static_cast<double>(chunk) / s);
        }
    }
    return compressed;
}

TEST(compress_mode_test, parses_the_three_names_and_nothing_else) {
    EXPECT_EQ(parse_compress_mode("auto"), compress_mode::automatic);
    EXPECT_EQ(parse_compress_mode("always"), compress_mode::always);
    EXPECT_EQ(parse_compress_mode("never"), compress_mode::never);
    EXPECT_EQ(parse_compress_mode("zstd"), std::nullopt);
    EXPECT_EQ(parse_compress_mode(""), std::nullopt);
    EXPECT_STREQ(compress_mode_name(compress_mode::automatic), "auto");
}

TEST(compression_policy_test, never_and_always_do_what_they_say) {
    compression_policy never(compress_mode::never);
    compression_policy always(compress_mode::always);
    EXPECT_EQ(drive(never, 100, 0.01, 10e9), 0);
    EXPECT_EQ(drive(always, 100, 1.0, 100 * mb), 100);  // even when it does not shrink
}

TEST(compression_policy_test, incompressible_data_is_probed_rarely_and_ever_more_rarely) {
    compression_policy p;
    p.on_wire_rate(12 * mb, busy);  // nothing decided yet: ignored
    EXPECT_EQ(p.link_rate(), 0);
    int first = drive(p, 128, 1.0, 1000 * mb);
    EXPECT_GE(first, 2);   // the first chunk, then probes
    EXPECT_LE(first, 10);  // every 16th, then every 32nd, ...
    int later = drive(p, 1280, 1.0, 1000 * mb);
    EXPECT_LE(later, 1280 / 128 + 1);  // the probe interval stops growing at 128
    EXPECT_GE(later, 1280 / 128 - 1);
    p.on_wire_rate(12 * mb, busy);  // a slow link changes nothing when nothing shrinks
    EXPECT_LE(drive(p, 128, 1.0, 1000 * mb), 2);
}

// The first chunks are decided before the first attempt's result is back (a window of
// reads at once): only one of them is tried, or a first window of any data would be
// compressed. An attempt that was not made after all (a read error) does not block the next.
TEST(compression_policy_test, the_first_attempt_is_one_chunk) {
    compression_policy p;
    ASSERT_EQ(p.next_level(), compression_policy::fast_level);
    for (int i = 0; i < 16; ++i) {
        EXPECT_EQ(p.next_level(), 0) << i;
    }
    p.observe(compression_policy::fast_level, 0, 0, 0);  // not made
    ASSERT_EQ(p.next_level(), compression_policy::fast_level);
    EXPECT_EQ(p.next_level(), 0);
    p.observe(compression_policy::fast_level, chunk, chunk / 1000, chunk / (8000 * mb));  // zeros: cheap
    EXPECT_EQ(drive(p, 10, 0.001, 8000 * mb), 10);
}

TEST(compression_policy_test, very_compressible_data_is_compressed_even_on_a_fast_link) {
    compression_policy p;
    drive(p, 1, 0.001, 8000 * mb);
    p.on_wire_rate(1500 * mb, busy);  // loopback
    EXPECT_EQ(drive(p, 100, 0.001, 8000 * mb), 100);
}

TEST(compression_policy_test, text_goes_raw_on_a_fast_link_and_compressed_on_a_slow_one) {
    compression_policy fast;
    drive(fast, 1, 0.35, 400 * mb);
    EXPECT_EQ(drive(fast, 15, 0.35, 400 * mb), 0);  // no link rate yet and not cheap: raw
    fast.on_wire_rate(1300 * mb, busy);
    EXPECT_LE(drive(fast, 160, 0.35, 400 * mb), 10);  // probes only
    EXPECT_LE(drive(fast, 1280, 0.35, 400 * mb), 1280 / 128 + 1);  // ever more rarely

    compression_policy slow;
    drive(slow, 16, 0.35, 400 * mb);
    slow.on_wire_rate(12.5 * mb, busy);  // 100 Mbit/s, measured while raw
    EXPECT_DOUBLE_EQ(slow.link_rate(), 12.5 * mb);
    EXPECT_EQ(drive(slow, 100, 0.35, 400 * mb), 100);
}

// Many small files over loopback: the wire rate is what the file work allows (tens of
// MB/s) and would pass for a slow link, but the sockets sat idle, so text goes raw. The
// same rate with the network holding the bytes is a slow link; and when the link later
// turns out not to be the limit, compression for it stops.
TEST(compression_policy_test, a_slow_rate_with_idle_sockets_is_not_a_slow_link) {
    compression_policy p;
    drive(p, 16, 0.35, 400 * mb);
    for (int period = 0; period < 10; ++period) {
        EXPECT_LE(drive(p, 20, 0.35, 400 * mb), 2) << period;
        p.on_wire_rate(40 * mb, idle);
    }
    EXPECT_EQ(drive(p, 1, 0.35, 400 * mb), 0);  // probes only, and the last was just now
    p.on_wire_rate(12.5 * mb, busy);
    EXPECT_DOUBLE_EQ(p.link_rate(), 12.5 * mb);
    EXPECT_EQ(drive(p, 100, 0.35, 400 * mb), 100);
    p.on_wire_rate(4 * mb, busy);  // compressed: says nothing about the link
    int raw_periods = 0;
    for (int period = 0; period < 60 && raw_periods == 0; ++period) {
        int compressed = drive(p, 20, 0.35, 400 * mb);
        raw_periods += compressed == 0 ? 1 : 0;
        p.on_wire_rate(compressed == 0 ? 60 * mb : 12.0 * mb, compressed == 0 ? idle : busy);
    }
    ASSERT_EQ(raw_periods, 1);  // the raw period that measures the link again found it idle
    EXPECT_LE(drive(p, 100, 0.35, 400 * mb), 8);
}

TEST(compression_policy_test, compressing_never_makes_the_link_look_slower) {
    compression_policy p;
    drive(p, 16, 0.35, 400 * mb);
    p.on_wire_rate(100 * mb, busy);  // raw: 1 Gbit/s-ish
    ASSERT_EQ(drive(p, 50, 0.35, 400 * mb), 50);
    p.on_wire_rate(20 * mb, busy);  // compressed: the wire rate drops by itself
    EXPECT_DOUBLE_EQ(p.link_rate(), 100 * mb);
    ASSERT_EQ(drive(p, 50, 0.35, 400 * mb), 50);
    p.on_wire_rate(300 * mb, busy);  // but a higher one shows the link is faster than thought
    EXPECT_DOUBLE_EQ(p.link_rate(), 300 * mb);
}

TEST(compression_policy_test, text_after_zeros_on_a_fast_link_goes_raw) {
    // Zeros are compressed without any link measurement (cheap); the compressed wire rate
    // they leave behind must not pass for a slow link when ordinary text follows.
    compression_policy p;
    for (int period = 0; period < 8; ++period) {
        ASSERT_EQ(drive(p, 50, 0.001, 8000 * mb), 50);
        p.on_wire_rate(0.5 * mb, busy);
    }
    EXPECT_EQ(p.link_rate(), 0.5 * mb);  // a lower bound only
    drive(p, 20, 0.35, 400 * mb);         // the averages move to text
    EXPECT_LE(drive(p, 50, 0.35, 400 * mb), 5);
    p.on_wire_rate(1300 * mb, busy);  // measured raw: loopback
    EXPECT_LE(drive(p, 160, 0.35, 400 * mb), 10);
}

TEST(compression_policy_test, a_slow_link_is_measured_raw_again_now_and_then) {
    compression_policy p;
    drive(p, 16, 0.35, 400 * mb);
    p.on_wire_rate(12.5 * mb, busy);
    int raw_periods = 0;
    for (int period = 0; period < 120; ++period) {
        int compressed = drive(p, 20, 0.35, 400 * mb);
        raw_periods += compressed == 0 ? 1 : 0;
        EXPECT_TRUE(compressed == 0 || compressed == 20) << period;
        p.on_wire_rate(compressed == 0 ? 12.5 * mb : 12.0 * mb, busy);
    }
    EXPECT_GE(raw_periods, 2);  // one in 48
    EXPECT_LE(raw_periods, 3);
    EXPECT_DOUBLE_EQ(p.link_rate(), 12.5 * mb);
}

TEST(compression_policy_test, the_stronger_level_is_used_when_it_keeps_up_with_the_link) {
    compression_policy p;
    drive(p, 16, 0.35, 400 * mb);
    p.on_wire_rate(12.5 * mb, busy);  // 400 >= 6 x 12.5: try the stronger level
    EXPECT_EQ(p.next_level(), compression_policy::strong_level);
    p.observe(compression_policy::strong_level, chunk, chunk / 4, chunk / (130 * mb));
    EXPECT_EQ(p.next_level(), compression_policy::strong_level);  // 130 >= 2 x 12.5

    compression_policy q;
    drive(q, 16, 0.35, 400 * mb);
    q.on_wire_rate(100 * mb, busy);  // 400 < 6 x 100: the fast level
    EXPECT_EQ(q.next_level(), compression_policy::fast_level);
}

// Text (zstd 3.3x) over 100 Mbit/s: level 3 at 216 MB/s is four times what the link needs
// raw (12.5 / 0.3 MB/s), so level 5 is tried, and kept while one thread at it feeds the
// link; it is left when it falls behind, and never tried over 1 Gbit/s.
TEST(compression_policy_test, the_strongest_level_is_used_on_a_link_it_feeds) {
    compression_policy p;
    drive(p, 16, 0.3, 400 * mb);
    p.on_wire_rate(12.5 * mb, busy);
    ASSERT_EQ(p.next_level(), compression_policy::strong_level);
    p.observe(compression_policy::strong_level, chunk, chunk * 3 / 10, chunk / (216 * mb));
    ASSERT_EQ(p.next_level(), compression_policy::strongest_level);
    p.observe(compression_policy::strongest_level, chunk, chunk * 3 / 10, chunk / (62 * mb));
    EXPECT_EQ(p.next_level(), compression_policy::strongest_level);  // 62 >= 41.7 MB/s
    EXPECT_DOUBLE_EQ(p.speed(compression_policy::strongest_level), 62 * mb);
    for (int i = 0; i < 8; ++i) {
        p.observe(compression_policy::strongest_level, chunk, chunk * 3 / 10, chunk / (30 * mb));  // a busy CPU
    }
    EXPECT_EQ(p.next_level(), compression_policy::strong_level);

    compression_policy q;
    drive(q, 16, 0.3, 400 * mb);
    q.on_wire_rate(50 * mb, busy);  // 400 Mbit/s: level 3 keeps up, level 5 would not (needs 167 MB/s)
    q.observe(compression_policy::strong_level, chunk, chunk * 3 / 10, chunk / (216 * mb));
    EXPECT_EQ(q.next_level(), compression_policy::strong_level);

    compression_policy g;
    drive(g, 16, 0.3, 400 * mb);
    g.on_wire_rate(125 * mb, busy);  // 1 Gbit/s: the fast level
    EXPECT_EQ(g.next_level(), compression_policy::fast_level);
}

}  // namespace
}  // namespace ferry
