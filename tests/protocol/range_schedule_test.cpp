#include "protocol/range_schedule.hpp"

#include <gtest/gtest.h>

#include <set>

namespace ferry {
namespace {

constexpr std::uint64_t MiB = 1024 * 1024;

TEST(RangeSchedule, cuts_the_file_in_equal_ranges_the_last_one_shorter) {
    range_schedule s(10 * MiB + 5, 4 * MiB);
    ASSERT_EQ(s.ranges(), 3u);
    EXPECT_EQ(s.offset(2), 8 * MiB);
    EXPECT_EQ(s.length(0), 4 * MiB);
    EXPECT_EQ(s.length(2), 2 * MiB + 5);
    EXPECT_EQ(range_schedule(0, MiB).ranges(), 0u);
    EXPECT_TRUE(range_schedule(0, MiB).finished());
}

TEST(RangeSchedule, picks_about_sixteen_ranges_a_source_in_whole_chunks_within_bounds) {
    constexpr std::uint64_t chunk = 256 * 1024;
    EXPECT_EQ(range_schedule::pick_length(1024 * MiB, 2, chunk, 8 * MiB, 64 * MiB), 32 * MiB);
    EXPECT_EQ(range_schedule::pick_length(10 * MiB, 3, chunk, 8 * MiB, 64 * MiB), 8 * MiB);
    EXPECT_EQ(range_schedule::pick_length(100000 * MiB, 2, chunk, 8 * MiB, 64 * MiB), 64 * MiB);
    EXPECT_EQ(range_schedule::pick_length(1000 * MiB, 3, chunk, 8 * MiB, 64 * MiB) % chunk, 0u);
}

// A simulated download in virtual time: source k brings a range in speed[k] ticks, each
// source runs up to two ranges at once.
std::vector<std::uint64_t> simulate(range_schedule& s, const std::vector<int>& ticks_per_range) {
    struct run {
        std::size_t range, source;
        int ends;
    };
    std::vector<run> running;
    std::vector<std::size_t> ids;
    for (std::size_t k = 0; k < ticks_per_range.size(); ++k) {
        ids.push_back(s.add_source());
    }
    for (int now = 0; !s.finished() && now < 100000; ++now) {
        for (std::size_t k : ids) {
            int mine = static_cast<int>(std::count_if(running.begin(), running.end(), [&](const run& r) { return r.source == k; }));
            for (; mine < 2; ++mine) {
                auto r = s.next(k);
                if (!r) {
                    break;
                }
                running.push_back({*r, k, now + ticks_per_range[k]});
            }
        }
        for (auto it = running.begin(); it != running.end();) {
            if (it->ends <= now + 1) {
                if (s.done(it->range, it->source)) {
                    // The other runner of the range stops.
                    for (auto& o : running) {
                        if (o.range == it->range && o.source != it->source) {
                            o.ends = -1;
                        }
                    }
                }
                it = running.erase(it);
            } else if (it->ends < 0) {
                s.failed(it->range, it->source, false);
                it = running.erase(it);
            } else {
                ++it;
            }
        }
    }
    std::vector<std::uint64_t> ranges;
    for (std::size_t k : ids) {
        ranges.push_back(s.figures(k).ranges);
    }
    return ranges;
}

TEST(RangeSchedule, a_faster_source_carries_more_ranges) {
    range_schedule s(64 * MiB, MiB);
    std::vector<std::uint64_t> got = simulate(s, {1, 4});
    ASSERT_TRUE(s.finished());
    EXPECT_EQ(got[0] + got[1], 64u);
    EXPECT_GT(got[0], 3 * got[1]) << got[0] << " vs " << got[1];
}

TEST(RangeSchedule, a_failed_range_goes_to_another_source_and_two_failures_in_a_row_drop_a_source) {
    range_schedule s(4 * MiB, MiB);
    std::size_t a = s.add_source();
    std::size_t b = s.add_source();
    std::size_t r0 = *s.next(a);
    std::size_t r1 = *s.next(a);
    s.failed(r0, a);
    EXPECT_FALSE(s.dropped(a));
    EXPECT_EQ(s.next(b), r0);  // back at the front of the queue
    s.failed(r1, a);
    EXPECT_TRUE(s.dropped(a));
    EXPECT_EQ(s.next(a), std::nullopt);
    EXPECT_EQ(s.next(b), r1);
    EXPECT_FALSE(s.stuck());
    EXPECT_EQ(s.figures(a).failures, 2u);
    EXPECT_TRUE(s.figures(a).dropped);
}

TEST(RangeSchedule, a_range_a_source_failed_goes_to_the_others_unless_it_is_the_last_source) {
    range_schedule s(2 * MiB, MiB);
    std::size_t a = s.add_source();
    std::size_t b = s.add_source();
    std::size_t r0 = *s.next(a);
    s.failed(r0, a);
    // r0 waits at the front, for b: a gets the next one instead.
    std::size_t r1 = *s.next(a);
    EXPECT_NE(r1, r0);
    EXPECT_TRUE(s.done(r1, a));
    EXPECT_EQ(s.next(a), std::nullopt);
    // Once b is gone, a is the only one left to try it again.
    s.drop(b);
    EXPECT_EQ(s.next(a), r0);
}

TEST(RangeSchedule, a_success_resets_the_failures_in_a_row) {
    range_schedule s(4 * MiB, MiB);
    std::size_t a = s.add_source();
    s.failed(*s.next(a), a);
    EXPECT_TRUE(s.done(*s.next(a), a));
    s.failed(*s.next(a), a);
    EXPECT_FALSE(s.dropped(a));
}

TEST(RangeSchedule, with_every_source_dropped_it_is_stuck) {
    range_schedule s(2 * MiB, MiB);
    std::size_t a = s.add_source();
    s.drop(a);
    EXPECT_TRUE(s.stuck());
    EXPECT_EQ(s.next(a), std::nullopt);
    std::size_t b = s.add_source();  // a source found later unsticks it
    EXPECT_FALSE(s.stuck());
    EXPECT_TRUE(s.next(b).has_value());
}

TEST(RangeSchedule, the_end_game_doubles_the_oldest_running_range_and_the_first_to_finish_wins) {
    range_schedule s(3 * MiB, MiB);
    std::size_t slow = s.add_source();
    std::size_t fast = s.add_source();
    std::size_t r0 = *s.next(slow);
    std::size_t r1 = *s.next(fast);
    std::size_t r2 = *s.next(fast);
    EXPECT_TRUE(s.done(r1, fast));
    EXPECT_TRUE(s.done(r2, fast));
    // Nothing waits: the fast source runs the slow one's range too, never twice itself.
    EXPECT_EQ(s.next(fast), r0);
    EXPECT_EQ(s.next(fast), std::nullopt);
    EXPECT_EQ(s.runners(r0).size(), 2u);
    EXPECT_TRUE(s.done(r0, fast));
    EXPECT_TRUE(s.finished());
    EXPECT_FALSE(s.done(r0, slow));  // late: not counted
    EXPECT_EQ(s.figures(slow).ranges, 0u);
    EXPECT_EQ(s.figures(fast).ranges, 3u);
    EXPECT_EQ(s.figures(fast).bytes, 3 * MiB);
}

TEST(RangeSchedule, a_stalled_source_does_not_hold_the_end) {
    range_schedule s(40 * MiB, MiB);
    // Source 1 never finishes anything (a stall): the others bring every range.
    std::vector<std::uint64_t> got = simulate(s, {2, 1000000, 3});
    ASSERT_TRUE(s.finished());
    EXPECT_EQ(got[1], 0u);
    EXPECT_EQ(got[0] + got[2], 40u);
}

}  // namespace
}  // namespace ferry
