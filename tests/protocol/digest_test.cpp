// Tests of chunk hashes and file digests (XXH3-128), and of the chunk arithmetic in
// types.hpp that decides which bytes each chunk hash covers.
#include "protocol/digest.hpp"

#include <gtest/gtest.h>

#include <algorithm>
#include <cstdint>
#include <random>
#include <span>
#include <string_view>
#include <vector>

#include "protocol/types.hpp"
#include "tests/support/pattern.hpp"

namespace ferry {
namespace {

using bytes = std::vector<std::uint8_t>;

using test::pattern_bytes;

std::span<const std::uint8_t> as_bytes(std::string_view s) {
    return {reinterpret_cast<const std::uint8_t*>(s.data()), s.size()};
}

// The file digest's input, written out independently: (lo, hi) of each chunk digest as
// 16 little-endian bytes.
bytes serialize_le(std::span<const digest128> digests) {
    bytes out;
    for (const digest128& d : digests) {
        for (std::uint64_t half : {d.lo, d.hi}) {
            for (int i = 0; i < 8; ++i) {
                out.push_back(static_cast<std::uint8_t>((half >> (8 * i)) & 0xff));
            }
        }
    }
    return out;
}

// Reference XXH3-128 values (seed 0), checked against libxxhash 0.8.1 XXH3_128bits().
constexpr digest128 xxh3_128_empty{0x6001c324468d497fULL, 0x99aa06d3014798d8ULL};
constexpr digest128 xxh3_128_abc{0x78af5f94892f3950ULL, 0x06b05ab6733a6185ULL};

TEST(hash_chunk, known_answers) {
    EXPECT_EQ(hash_chunk({}), xxh3_128_empty);
    EXPECT_EQ(hash_chunk(as_bytes("abc")), xxh3_128_abc);
}

TEST(hash_chunk, same_input_same_hash) {
    for (std::size_t n : {std::size_t{0}, std::size_t{1}, std::size_t{16}, std::size_t{17}, std::size_t{128},
                          std::size_t{129}, std::size_t{240}, std::size_t{241}, std::size_t{1000},
                          std::size_t{chunk_size}}) {
        SCOPED_TRACE(n);
        bytes a = pattern_bytes(n, 5);
        bytes b = a;  // a different buffer with the same bytes
        EXPECT_EQ(hash_chunk(a), hash_chunk(a));
        EXPECT_EQ(hash_chunk(a), hash_chunk(b));
    }
}

TEST(hash_chunk, one_bit_changes_the_hash) {
    bytes data = pattern_bytes(chunk_size, 6);
    const digest128 base = hash_chunk(data);
    for (std::size_t at : {std::size_t{0}, std::size_t{1}, std::size_t{chunk_size / 2}, std::size_t{chunk_size - 1}}) {
        for (int bit : {0, 7}) {
            SCOPED_TRACE(testing::Message() << "byte " << at << " bit " << bit);
            bytes flipped = data;
            flipped[at] ^= static_cast<std::uint8_t>(1u << bit);
            digest128 h = hash_chunk(flipped);
            EXPECT_NE(h, base);
            // Both halves change, as expected of a 128-bit hash.
            EXPECT_NE(h.lo, base.lo);
            EXPECT_NE(h.hi, base.hi);
        }
    }
    // Small inputs too (XXH3 has separate code paths by length).
    for (std::size_t n : {std::size_t{1}, std::size_t{3}, std::size_t{8}, std::size_t{100}, std::size_t{200}}) {
        bytes small = pattern_bytes(n, 7);
        bytes flipped = small;
        flipped[n - 1] ^= 0x01;
        EXPECT_NE(hash_chunk(small), hash_chunk(flipped)) << n;
    }
}

TEST(hash_chunk, length_matters) {
    bytes a = {0x00};
    bytes b = {0x00, 0x00};
    EXPECT_NE(hash_chunk({}), hash_chunk(a));
    EXPECT_NE(hash_chunk(a), hash_chunk(b));
    bytes data = pattern_bytes(chunk_size + 1, 8);
    std::span<const std::uint8_t> all(data);
    EXPECT_NE(hash_chunk(all.first(chunk_size)), hash_chunk(all));
}

TEST(hash_chunk, depends_only_on_the_bytes_not_their_address) {
    bytes data = pattern_bytes(4096 + 64, 9);
    bytes copy(data.begin() + 3, data.begin() + 3 + 4096);
    EXPECT_EQ(hash_chunk(std::span<const std::uint8_t>(data).subspan(3, 4096)), hash_chunk(copy));
}

TEST(file_digest, empty_list_is_stable) {
    const digest128 empty = file_digest({});
    EXPECT_EQ(file_digest({}), empty);
    std::vector<digest128> none;
    EXPECT_EQ(file_digest(none), empty);
    // The digest of the empty list is XXH3-128 of no bytes.
    EXPECT_EQ(empty, xxh3_128_empty);
    EXPECT_EQ(empty, hash_chunk({}));
}

TEST(file_digest, order_matters) {
    digest128 a = hash_chunk(as_bytes("first chunk"));
    digest128 b = hash_chunk(as_bytes("second chunk"));
    ASSERT_NE(a, b);
    std::vector<digest128> ab = {a, b};
    std::vector<digest128> ba = {b, a};
    EXPECT_NE(file_digest(ab), file_digest(ba));
    EXPECT_EQ(file_digest(ab), file_digest(std::vector<digest128>{a, b}));

    // lo and hi are not interchangeable either.
    digest128 swapped{a.hi, a.lo};
    EXPECT_NE(file_digest(std::span<const digest128>(&a, 1)), file_digest(std::span<const digest128>(&swapped, 1)));

    // Count matters: [a] vs [a, a].
    std::vector<digest128> aa = {a, a};
    EXPECT_NE(file_digest(std::span<const digest128>(&a, 1)), file_digest(aa));
}

TEST(file_digest, is_the_same_hash_either_side_of_the_inline_limit) {
    // 64 digests are serialized on the stack, more in a heap buffer: the same bytes.
    for (std::size_t n : {1u, 63u, 64u, 65u, 200u}) {
        std::vector<digest128> chunks;
        for (std::size_t i = 0; i < n; ++i) {
            chunks.push_back(hash_chunk(pattern_bytes(32, static_cast<int>(i))));
        }
        EXPECT_EQ(file_digest(chunks), hash_chunk(serialize_le(chunks))) << n << " chunks";
    }
}

TEST(file_digest, equals_hash_of_little_endian_serialization) {
    // A digest whose serialization is the bytes 0x00..0x0f, whatever the host byte order.
    digest128 d{0x0706050403020100ULL, 0x0f0e0d0c0b0a0908ULL};
    bytes expected(16);
    for (std::size_t i = 0; i < 16; ++i) {
        expected[i] = static_cast<std::uint8_t>(i);
    }
    ASSERT_EQ(serialize_le(std::span<const digest128>(&d, 1)), expected);
    EXPECT_EQ(file_digest(std::span<const digest128>(&d, 1)), hash_chunk(expected));

    // A real file of three chunks (256 KiB, 256 KiB, 1 byte).
    bytes file = pattern_bytes(2 * chunk_size + 1, 10);
    ASSERT_EQ(chunk_count(file.size()), 3u);
    std::vector<digest128> chunks;
    for (std::uint64_t i = 0; i < chunk_count(file.size()); ++i) {
        std::span<const std::uint8_t> c(file.data() + i * chunk_size, chunk_length(file.size(), i));
        chunks.push_back(hash_chunk(c));
    }
    bytes serialized = serialize_le(chunks);
    ASSERT_EQ(serialized.size(), 48u);
    EXPECT_EQ(file_digest(chunks), hash_chunk(serialized));

    // Many digests, including all-zero and all-one halves.
    std::vector<digest128> many = {{0, 0}, {~0ULL, ~0ULL}, {1, 0}, {0, 1ULL << 63}};
    std::mt19937_64 rng(11);
    for (int i = 0; i < 1000; ++i) {
        many.push_back({rng(), rng()});
    }
    EXPECT_EQ(file_digest(many), hash_chunk(serialize_le(many)));
}

TEST(file_digest, one_chunk_file_is_not_its_chunk_hash) {
    // The file digest hashes the chunk digest list, so even a one-chunk file differs from
    // its chunk hash: a chunk hash can never be mistaken for a file digest.
    digest128 c = hash_chunk(as_bytes("only chunk"));
    EXPECT_NE(file_digest(std::span<const digest128>(&c, 1)), c);
}

// chunk_count / chunk_length / chunk_key (types.hpp).

static_assert(chunk_size == 256 * 1024);
static_assert(chunk_count(0) == 0);
static_assert(chunk_count(1) == 1);
static_assert(chunk_count(chunk_size) == 1);
static_assert(chunk_count(chunk_size + 1) == 2);
// Sizes near 2^64 (a peer's claim) once wrapped to 0 chunks (found by receiver_machine_fuzz).
static_assert(chunk_count(UINT64_MAX) == (std::uint64_t{1} << 46));
static_assert(chunk_count(UINT64_MAX - chunk_size + 2) == (std::uint64_t{1} << 46));
static_assert(chunk_length(0, 0) == 0);
static_assert(chunk_length(chunk_size + 1, 1) == 1);

TEST(chunk_math, empty_file) {
    EXPECT_EQ(chunk_count(0), 0u);
    EXPECT_EQ(chunk_length(0, 0), 0u);
    EXPECT_EQ(chunk_length(0, 1), 0u);
}

TEST(chunk_math, one_byte_file) {
    EXPECT_EQ(chunk_count(1), 1u);
    EXPECT_EQ(chunk_length(1, 0), 1u);
    EXPECT_EQ(chunk_length(1, 1), 0u);
}

TEST(chunk_math, exactly_one_chunk) {
    EXPECT_EQ(chunk_count(chunk_size - 1), 1u);
    EXPECT_EQ(chunk_length(chunk_size - 1, 0), chunk_size - 1);
    EXPECT_EQ(chunk_count(chunk_size), 1u);
    EXPECT_EQ(chunk_length(chunk_size, 0), chunk_size);
    EXPECT_EQ(chunk_length(chunk_size, 1), 0u);
}

TEST(chunk_math, one_chunk_plus_one_byte) {
    EXPECT_EQ(chunk_count(chunk_size + 1), 2u);
    EXPECT_EQ(chunk_length(chunk_size + 1, 0), chunk_size);
    EXPECT_EQ(chunk_length(chunk_size + 1, 1), 1u);
    EXPECT_EQ(chunk_length(chunk_size + 1, 2), 0u);
}

TEST(chunk_math, lengths_sum_to_the_size) {
    for (std::uint64_t size : {std::uint64_t{0}, std::uint64_t{1}, std::uint64_t{chunk_size - 1},
                               std::uint64_t{chunk_size}, std::uint64_t{chunk_size + 1},
                               std::uint64_t{3 * chunk_size}, std::uint64_t{3 * chunk_size + 12345},
                               std::uint64_t{1} << 40, (std::uint64_t{1} << 40) + 7}) {
        SCOPED_TRACE(size);
        std::uint64_t n = chunk_count(size);
        EXPECT_EQ(n, (size + chunk_size - 1) / chunk_size);
        if (n > 0) {
            // Every chunk but the last is full; the last is 1..chunk_size bytes.
            EXPECT_EQ(chunk_length(size, 0), std::min<std::uint64_t>(size, chunk_size));
            std::uint32_t last = chunk_length(size, n - 1);
            EXPECT_GE(last, 1u);
            EXPECT_LE(last, chunk_size);
            EXPECT_EQ((n - 1) * chunk_size + last, size);
            if (n > 1) {
                EXPECT_EQ(chunk_length(size, n - 2), chunk_size);
            }
        }
        EXPECT_EQ(chunk_length(size, n), 0u);
    }
    EXPECT_EQ(chunk_count(std::uint64_t{1} << 40), std::uint64_t{1} << 22);
}

TEST(chunk_math, chunk_key_round_trip) {
    for (std::uint32_t f : {0u, 1u, 0x12345678u, 0xffffffffu}) {
        for (std::uint32_t c : {0u, 1u, 0x9abcdef0u, 0xffffffffu}) {
            std::uint64_t key = chunk_key(file_id{f}, chunk_index{c});
            EXPECT_EQ(key, (std::uint64_t{f} << 32) | c);
            EXPECT_EQ(chunk_key_file(key), file_id{f});
            EXPECT_EQ(chunk_key_index(key), chunk_index{c});
        }
    }
}

}  // namespace
}  // namespace ferry
