// announce_filter: recordings of a node's announcements, sent again, are not taken.
#include "protocol/announce_filter.hpp"

#include <gtest/gtest.h>

namespace ferry {
namespace {

using verdict = announce_filter::verdict;
constexpr std::int64_t now = 1'800'000'000'000;

TEST(AnnounceFilter, TakesEachNewerAnnouncementOfANodeOnce) {
    announce_filter f;
    EXPECT_EQ(f.check("A", 7, 1, now, now), verdict::fresh);
    EXPECT_EQ(f.check("A", 7, 1, now, now + 5), verdict::duplicate);  // the same one again (the other family)
    EXPECT_EQ(f.check("A", 7, 2, now + 1000, now + 1000), verdict::fresh);
    EXPECT_EQ(f.check("A", 7, 1, now, now + 2000), verdict::replayed);  // an older one of this run
    // Another node is its own count.
    EXPECT_EQ(f.check("B", 7, 1, now, now), verdict::fresh);
    EXPECT_EQ(f.size(), 2u);
}

TEST(AnnounceFilter, ARestartIsTakenAndTheOldRunsRecordingsAreNot) {
    announce_filter f;
    ASSERT_EQ(f.check("A", 7, 40, now, now), verdict::fresh);
    // Restarted: a new instance, counting from 1 again, with a later clock.
    EXPECT_EQ(f.check("A", 9, 1, now + 3000, now + 3000), verdict::fresh);
    // The old run's announcements, recorded and sent now: its clock is behind.
    EXPECT_EQ(f.check("A", 7, 41, now + 100, now + 4000), verdict::replayed);
    EXPECT_EQ(f.check("A", 9, 2, now + 5000, now + 5000), verdict::fresh);
}

TEST(AnnounceFilter, ClocksFarFromOursAreStale) {
    announce_filter f;
    const std::int64_t skew = announce_filter::max_skew_ms;
    EXPECT_EQ(f.check("A", 1, 1, now - skew - 1, now), verdict::stale);
    EXPECT_EQ(f.check("A", 1, 1, now + skew + 1, now), verdict::stale);
    EXPECT_EQ(f.size(), 0u);  // nothing was taken from them
    EXPECT_EQ(f.check("A", 1, 1, now - skew, now), verdict::fresh);
}

TEST(AnnounceFilter, StaysBoundedDroppingTheNodeHeardFromLongestAgo) {
    announce_filter f;
    for (std::size_t i = 0; i < announce_filter::max_nodes; ++i) {
        ASSERT_EQ(f.check("N" + std::to_string(i), 1, 1, now, now + static_cast<std::int64_t>(i)), verdict::fresh);
    }
    EXPECT_EQ(f.check("new", 1, 1, now, now + 100'000), verdict::fresh);
    EXPECT_EQ(f.size(), announce_filter::max_nodes);
    EXPECT_EQ(f.check("N0", 1, 1, now, now + 100'001), verdict::fresh);  // N0 was dropped: news again
    EXPECT_EQ(f.check("N2", 1, 1, now, now + 100'002), verdict::duplicate);  // N2 is still known
}

}  // namespace
}  // namespace ferry
