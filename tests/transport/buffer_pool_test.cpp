// The chunk buffer pool's byte bound: whole-size buffers are reused, small payloads take
// only their own pages (reused too, up to a quarter of the bound), and idle buffers give
// their room to other sizes.
#include "transport/buffer_pool.hpp"

#include <gtest/gtest.h>

#include <cstddef>
#include <vector>

namespace ferry {
namespace {

constexpr std::size_t cap = 256 * 1024;

TEST(buffer_pool_test, whole_size_buffers_are_bounded_and_reused) {
    auto pool = buffer_pool::make(2, cap);
    pooled_buffer a = pool->acquire(cap);
    pooled_buffer b = pool->acquire(cap / 2);
    ASSERT_TRUE(a);
    ASSERT_TRUE(b);
    EXPECT_EQ(a.capacity(), cap);
    EXPECT_EQ(b.capacity(), cap) << "more than a quarter of the capacity takes a whole buffer";
    EXPECT_FALSE(pool->acquire(cap)) << "the bound is 2 whole buffers";
    EXPECT_EQ(pool->exhausted_count(), 1u);
    std::uint8_t* data = a.data();
    a.reset();
    pooled_buffer c = pool->acquire(1000 * 100);
    EXPECT_EQ(c.data(), data) << "a released whole buffer is reused";
    EXPECT_EQ(pool->bytes_allocated(), 2 * cap);
    EXPECT_EQ(pool->in_use(), 2u);
    EXPECT_FALSE(pool->acquire(cap + 1)) << "more than the capacity never fits";
}

TEST(buffer_pool_test, small_payloads_take_their_own_pages) {
    auto pool = buffer_pool::make(2, cap);
    std::vector<pooled_buffer> held;
    // 4 KiB payloads take 8 KiB (room for the one byte a sender reads past a file's end):
    // the bound of 2 x 256 KiB holds 64 of them.
    for (int i = 0; i < 64; ++i) {
        held.push_back(pool->acquire(4096));
        ASSERT_TRUE(held.back()) << "small buffer " << i;
        EXPECT_EQ(held.back().size(), 4096u);
        EXPECT_EQ(held.back().capacity(), 8192u);
    }
    EXPECT_EQ(pool->bytes_allocated(), 2 * cap);
    EXPECT_FALSE(pool->acquire(1)) << "the bound counts bytes";
    EXPECT_FALSE(pool->acquire(cap));
    EXPECT_FALSE(pool->acquire(0)) << "even an empty payload takes a page";
    held.resize(32);  // half of them back: room for one whole buffer exactly
    EXPECT_EQ(pool->bytes_allocated(), cap + cap / 2) << "a quarter of the bound (16 x 8 KiB) kept idle for reuse";
    pooled_buffer whole = pool->acquire(cap);
    ASSERT_TRUE(whole) << "the idle small buffers give their room";
    EXPECT_EQ(pool->bytes_allocated(), 2 * cap);
    EXPECT_FALSE(pool->acquire(100));
    EXPECT_EQ(pool->in_use(), 33u);
    held.clear();
    whole.reset();
    EXPECT_EQ(pool->in_use(), 0u);
    EXPECT_EQ(pool->bytes_allocated(), cap + cap / 2) << "the whole buffer and a quarter of the bound stay for reuse";
}

TEST(buffer_pool_test, released_small_buffers_are_reused_by_their_size) {
    auto pool = buffer_pool::make(2, cap);
    pooled_buffer a = pool->acquire(4096);
    std::uint8_t* eight_kib = a.data();
    a.reset();
    pooled_buffer other = pool->acquire(100);
    EXPECT_NE(other.data(), eight_kib) << "one page: another size";
    pooled_buffer again = pool->acquire(5000);
    EXPECT_EQ(again.data(), eight_kib) << "two pages again: the same buffer";
    EXPECT_EQ(again.capacity(), 8192u);
    EXPECT_EQ(again.size(), 5000u);
    EXPECT_EQ(pool->bytes_allocated(), 8192u + 4096u);
    EXPECT_EQ(pool->in_use(), 2u);
}

TEST(buffer_pool_test, idle_whole_buffers_make_room_for_small_ones) {
    auto pool = buffer_pool::make(2, cap);
    {
        pooled_buffer a = pool->acquire(cap);
        pooled_buffer b = pool->acquire(cap);
    }
    EXPECT_EQ(pool->bytes_allocated(), 2 * cap);
    std::vector<pooled_buffer> held;
    for (int i = 0; i < 64; ++i) {
        held.push_back(pool->acquire(100));
        ASSERT_TRUE(held.back()) << "small buffer " << i;
        EXPECT_EQ(held.back().capacity(), 4096u);
    }
    EXPECT_EQ(pool->bytes_allocated(), cap + 64 * 4096) << "one idle whole buffer was freed for them";
}

TEST(buffer_pool_test, a_waiter_runs_when_its_size_fits) {
    auto pool = buffer_pool::make(1, cap);
    pooled_buffer small = pool->acquire(4096);
    int now = 0;
    pool->notify_when_available(4096, [&] { ++now; });
    EXPECT_EQ(now, 1) << "room for another small buffer: runs at once";
    int later = 0;
    pool->notify_when_available(cap, [&] { ++later; });
    EXPECT_EQ(later, 0) << "no room for a whole buffer while a small one is held";
    small.reset();
    EXPECT_EQ(later, 1);
    EXPECT_TRUE(pool->acquire(cap));
}

}  // namespace
}  // namespace ferry
