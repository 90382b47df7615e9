// chunk_codec: zstd chunks round-trip, incompressible chunks are left alone, and a
// payload that does not decode to exactly the announced length (garbage, truncated, a
// frame for more bytes, a frame of far more than a chunk) is refused.
#include "node/chunk_codec.hpp"

#include <gtest/gtest.h>
#include <zstd.h>

#include <random>
#include <string>
#include <vector>

#include "protocol/types.hpp"

namespace ferry {
namespace {

std::vector<std::uint8_t> text_chunk(std::size_t n) {
    std::vector<std::uint8_t> out;
    std::mt19937 rng(7);
    const std::string words[] = {"chunk ", "ferry ", "socket ", "window ", "digest "};
    while (out.size() < n) {
        const std::string& w = words[rng() % 5];
        out.insert(out.end(), w.begin(), w.end());
    }
    out.resize(n);
    return out;
}

TEST(chunk_codec_test, compressible_chunks_round_trip_at_both_levels) {
    for (int level : {1, 3}) {
        std::vector<std::uint8_t> original = text_chunk(chunk_size);
        std::vector<std::uint8_t> buf = original;
        compressed_chunk c = compress_chunk(buf, level);
        ASSERT_GT(c.size, 0u);
        EXPECT_LT(c.size, original.size() / 2);
        EXPECT_GE(c.cpu_seconds, 0.0);
        auto raw = decompress_chunk(std::span<const std::uint8_t>(buf.data(), c.size), original.size());
        ASSERT_EQ(raw.size(), original.size());
        EXPECT_TRUE(std::equal(raw.begin(), raw.end(), original.begin())) << "level " << level;
    }
}

TEST(chunk_codec_test, incompressible_chunk_is_left_unchanged) {
    std::vector<std::uint8_t> original(chunk_size);
    std::mt19937_64 rng(1);
    for (auto& b : original) {
        b = static_cast<std::uint8_t>(rng());
    }
    std::vector<std::uint8_t> buf = original;
    EXPECT_EQ(compress_chunk(buf, 1).size, 0u);
    EXPECT_EQ(buf, original);
    std::vector<std::uint8_t> one{42};
    EXPECT_EQ(compress_chunk(one, 1).size, 0u);  // nothing can be smaller than one byte
}

TEST(chunk_codec_test, bad_payloads_are_refused) {
    std::vector<std::uint8_t> original = text_chunk(100'000);
    std::vector<std::uint8_t> buf = original;
    std::size_t n = compress_chunk(buf, 1).size;
    ASSERT_GT(n, 0u);
    std::span<const std::uint8_t> good(buf.data(), n);
    EXPECT_EQ(decompress_chunk(good, original.size()).size(), original.size());
    EXPECT_TRUE(decompress_chunk(good, original.size() - 1).empty());  // decodes to more
    EXPECT_TRUE(decompress_chunk(good, original.size() + 1).empty());  // decodes to less
    EXPECT_TRUE(decompress_chunk(good.first(n - 1), original.size()).empty());  // truncated
    std::vector<std::uint8_t> garbage(n, 0x5a);
    EXPECT_TRUE(decompress_chunk(garbage, original.size()).empty());
    EXPECT_TRUE(decompress_chunk({}, original.size()).empty());
    EXPECT_TRUE(decompress_chunk(good, chunk_size + 1).empty());  // longer than a chunk

    // A valid frame of far more than a chunk (8 MiB) is refused, not decoded.
    std::vector<std::uint8_t> big(8 << 20, 'a');
    std::vector<std::uint8_t> frame(ZSTD_compressBound(big.size()));
    std::size_t fn = ZSTD_compress(frame.data(), frame.size(), big.data(), big.size(), 1);
    ASSERT_FALSE(ZSTD_isError(fn));
    EXPECT_TRUE(decompress_chunk(std::span<const std::uint8_t>(frame.data(), fn), chunk_size).empty());
}

}  // namespace
}  // namespace ferry
