// The resume record codec: round trips, and every truncated or damaged record refused.
#include "protocol/resume_state.hpp"

#include <gtest/gtest.h>

#include <string>

namespace ferry {
namespace {

resume_state sample(std::uint64_t size) {
    resume_state s;
    s.size = size;
    s.mtime_ns = -1'234'567'890'123;  // before 1970 is a valid mtime
    std::uint64_t chunks = chunk_count(size);
    s.have = chunk_bitmap(chunks);
    s.digests.assign(chunks, digest128{});
    for (std::uint64_t i = 0; i < chunks; i += 3) {
        s.have.set(i);
        s.digests[i] = {i * 0x9e3779b97f4a7c15ull + 1, ~i};
    }
    return s;
}

TEST(ResumeState, RoundTrips) {
    for (std::uint64_t size : {std::uint64_t{0}, std::uint64_t{1}, std::uint64_t{chunk_size},
                               std::uint64_t{chunk_size} * 9 + 5, std::uint64_t{1} << 32}) {
        resume_state in = sample(size);
        std::string bytes = encode_resume_state(in);
        std::string why;
        std::optional<resume_state> out = decode_resume_state(bytes, &why);
        ASSERT_TRUE(out.has_value()) << size << ": " << why;
        EXPECT_EQ(out->size, in.size);
        EXPECT_EQ(out->mtime_ns, in.mtime_ns);
        EXPECT_TRUE(out->same_source(in.size, in.mtime_ns));
        EXPECT_FALSE(out->same_source(in.size + 1, in.mtime_ns));
        ASSERT_EQ(out->have.size(), in.have.size());
        EXPECT_EQ(out->have.to_bytes(), in.have.to_bytes());
        for (std::uint64_t i = 0; i < in.have.size(); ++i) {
            if (in.have.test(i)) {
                EXPECT_EQ(out->digests[i], in.digests[i]) << i;
            }
        }
    }
}

TEST(ResumeState, EveryTruncationIsRefused) {
    std::string bytes = encode_resume_state(sample(std::uint64_t{chunk_size} * 20));
    for (std::size_t n = 0; n < bytes.size(); ++n) {
        EXPECT_FALSE(decode_resume_state(std::string_view(bytes).substr(0, n)).has_value()) << n;
    }
    EXPECT_FALSE(decode_resume_state(bytes + "x").has_value());
}

TEST(ResumeState, EveryFlippedBitIsRefused) {
    std::string bytes = encode_resume_state(sample(std::uint64_t{chunk_size} * 11 + 3));
    for (std::size_t i = 0; i < bytes.size(); ++i) {
        for (int bit = 0; bit < 8; ++bit) {
            std::string damaged = bytes;
            damaged[i] = static_cast<char>(damaged[i] ^ (1 << bit));
            EXPECT_FALSE(decode_resume_state(damaged).has_value()) << i << ":" << bit;
        }
    }
}

TEST(ResumeState, SaysWhyARecordIsRefused) {
    std::string why;
    EXPECT_FALSE(decode_resume_state("short", &why).has_value());
    EXPECT_EQ(why, "truncated");
    std::string bytes = encode_resume_state(sample(100));
    bytes[0] = 'X';
    EXPECT_FALSE(decode_resume_state(bytes, &why).has_value());
    EXPECT_EQ(why, "not a ferry resume record");
    bytes = encode_resume_state(sample(100));
    bytes[bytes.size() - 20] ^= 1;
    EXPECT_FALSE(decode_resume_state(bytes, &why).has_value());
    EXPECT_NE(why.find("checksum"), std::string::npos);
}

}  // namespace
}  // namespace ferry
