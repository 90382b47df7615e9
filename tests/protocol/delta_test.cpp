// Rolling block delta: the weak sum slides exactly, the matcher finds basis blocks at any
// offset (insertions, deletions, edits in place), the ops of each chunk rebuild it from
// the basis, and malformed delta payloads are refused.
#include "protocol/delta.hpp"

#include <gtest/gtest.h>

#include <cstring>
#include <random>
#include <vector>

#include "protocol/digest.hpp"

namespace ferry {
namespace {

using bytes = std::vector<std::uint8_t>;
constexpr std::uint64_t B = chunk_size;

bytes random_bytes(std::size_t n, std::uint32_t seed) {
    std::mt19937 rng(seed);
    bytes out(n);
    for (auto& b : out) {
        b = static_cast<std::uint8_t>(rng());
    }
    return out;
}

// The basis's full blocks as the receiver describes them.
block_index index_of(const bytes& basis) {
    std::vector<basis_block> blocks;
    for (std::uint64_t off = 0; off + B <= basis.size(); off += B) {
        std::span<const std::uint8_t> b(basis.data() + off, B);
        blocks.push_back({weak_sum(b), hash_chunk(b), off});
    }
    return block_index(std::move(blocks));
}

struct delta_result {
    std::vector<block_match> matches;
    std::uint64_t copied = 0;    // bytes the ops copy from the basis
    std::uint64_t literal = 0;   // bytes they send
    std::uint64_t rolled = 0;
};

// Runs the sender's side over `file` against `basis`, encodes and decodes every chunk's
// ops, rebuilds each chunk from the basis and the payload, and checks it is the chunk.
// With `parts` > 1 the pass is made as ferry's sender makes it for a big file: in parts,
// each matcher fed its chunks (through the buffer-swapping feed) and one past its end,
// the matches merged by append_part_matches.
delta_result run(const bytes& basis, const bytes& file, std::size_t parts = 1) {
    block_index index = index_of(basis);
    delta_result r;
    const std::uint64_t chunks = (file.size() + B - 1) / B;
    for (std::size_t p = 0; p < parts; ++p) {
        const std::uint64_t first = chunks * p / parts;
        const std::uint64_t end = chunks * (p + 1) / parts;
        delta_matcher m(index, first);
        bytes buf(B);
        for (std::uint64_t i = first; i < std::min(parts > 1 ? end + 1 : end, chunks); ++i) {
            std::size_t len = std::min<std::uint64_t>(B, file.size() - i * B);
            std::memcpy(buf.data(), file.data() + i * B, len);
            m.feed(buf, len, hash_chunk(std::span<const std::uint8_t>(buf.data(), len)));
            EXPECT_EQ(buf.size(), B);
        }
        append_part_matches(r.matches, m.matches(), std::min(end * B, std::uint64_t{file.size()}));
        r.rolled += m.rolled_bytes();
    }
    for (std::uint64_t off = 0; off < file.size(); off += B) {
        auto len = static_cast<std::uint32_t>(std::min<std::uint64_t>(B, file.size() - off));
        std::span<const std::uint8_t> c(file.data() + off, len);
        std::vector<delta_op> ops = chunk_ops(r.matches, off, len);
        r.copied += copied_bytes(ops);
        r.literal += len - copied_bytes(ops);
        bytes payload(2 * B);
        std::size_t n = encode_delta(ops, c, payload.data(), payload.size());
        EXPECT_GT(n, 0u);
        payload.resize(n);
        std::vector<delta_piece> pieces;
        EXPECT_TRUE(decode_delta(payload, len, basis.size(), pieces));
        bytes rebuilt(len);
        for (const delta_piece& p : pieces) {
            const std::uint8_t* from = p.copy ? basis.data() + p.basis_offset : payload.data() + p.literal_at;
            std::memcpy(rebuilt.data() + p.at, from, p.length);
        }
        EXPECT_TRUE(std::equal(rebuilt.begin(), rebuilt.end(), c.begin())) << "chunk at " << off;
    }
    return r;
}

TEST(RollingSum, SlidingIsTheSumOfTheShiftedWindow) {
    bytes data = random_bytes(5000, 1);
    constexpr std::size_t n = 1024;
    rolling_sum s;
    s.reset(std::span(data).first(n));
    for (std::size_t p = 0; p + n < data.size(); ++p) {
        s.roll(data[p], data[p + n]);
        ASSERT_EQ(s.value(), weak_sum(std::span(data).subspan(p + 1, n))) << p;
    }
    rolling_sum split;
    split.reset(std::span(data).subspan(10, 100), std::span(data).subspan(110, n - 100));
    EXPECT_EQ(split.value(), weak_sum(std::span(data).subspan(10, n)));
}

TEST(HashParts, IsTheHashOfTheConcatenation) {
    bytes data = random_bytes(B, 2);
    for (std::size_t cut : {std::size_t{0}, std::size_t{1}, std::size_t{4096}, B - 1, B}) {
        EXPECT_EQ(hash_parts(std::span(data).first(cut), std::span(data).subspan(cut)), hash_chunk(data)) << cut;
    }
}

TEST(DeltaMatcher, AByteInsertedAtTheStartShiftsEveryBlockAndEachIsFound) {
    bytes basis = random_bytes(8 * B + 1000, 3);
    bytes file = basis;
    file.insert(file.begin(), 0x42);
    delta_result r = run(basis, file);
    ASSERT_EQ(r.matches.size(), 8u);
    for (std::size_t j = 0; j < 8; ++j) {
        EXPECT_EQ(r.matches[j].at, j * B + 1);
        EXPECT_EQ(r.matches[j].basis_offset, j * B);
    }
    EXPECT_EQ(r.copied, 8 * B);
    EXPECT_EQ(r.literal, 1 + 1000u);  // the new byte, and the basis's short last block
    EXPECT_LT(r.rolled, 10u);
}

TEST(DeltaMatcher, BytesRemovedInTheMiddleCostOnlyTheBlockTheyWereIn) {
    bytes basis = random_bytes(10 * B, 4);
    bytes file = basis;
    file.erase(file.begin() + 3 * B + 500, file.begin() + 3 * B + 600);
    delta_result r = run(basis, file);
    EXPECT_EQ(r.matches.size(), 9u);  // every block but the one cut
    EXPECT_EQ(r.copied, 9 * B);
    EXPECT_EQ(r.literal, B - 100);
}

TEST(DeltaMatcher, AnEditInPlaceMatchesEveryOtherBlockWhereItIs) {
    bytes basis = random_bytes(6 * B + 77, 5);
    bytes file = basis;
    std::memset(file.data() + 2 * B + 10, 0, 5000);
    delta_result r = run(basis, file);
    ASSERT_EQ(r.matches.size(), 5u);
    for (const block_match& m : r.matches) {
        EXPECT_EQ(m.at, m.basis_offset);
        EXPECT_EQ(m.at % B, 0u);
    }
    EXPECT_EQ(r.literal, B + 77);
}

// A big file's pass is split in parts (one matcher each, fed one chunk past its end):
// it finds what one pass finds, blocks straddling two parts included.
TEST(DeltaMatcher, APassInPartsFindsWhatOnePassFinds) {
    bytes basis = random_bytes(12 * B + 300, 6);
    bytes inserted = basis;
    inserted.insert(inserted.begin(), 0x42);
    bytes removed = basis;
    removed.erase(removed.begin() + 5 * B + 9, removed.begin() + 5 * B + 109);  // in part 2 of 3, not at its edge
    bytes edited = basis;
    std::memset(edited.data() + 8 * B + 10, 0, 5000);
    for (const bytes* file : {&inserted, &removed, &edited, &basis}) {
        delta_result one = run(basis, *file);
        for (std::size_t parts : {2, 3, 4}) {
            delta_result split = run(basis, *file, parts);
            EXPECT_EQ(split.copied, one.copied) << parts << " parts";
            EXPECT_EQ(split.literal, one.literal) << parts << " parts";
            EXPECT_EQ(split.matches.size(), one.matches.size()) << parts << " parts";
        }
    }
    EXPECT_EQ(run(basis, inserted, 3).literal, 1 + 300u);  // the new byte and the short last block

    // Repetitive data: a part finds its first block aligned while the part before it ran
    // a match past their border; the overlap is cut, and nothing more is sent. (One pass
    // stays 1000 bytes off the blocks to the end, so its last 256 KiB - 1000 bytes match
    // no whole block; the parts' last one matches aligned, and sends only the new bytes.)
    bytes zeros(16 * B, 0);
    bytes shifted = zeros;
    shifted.insert(shifted.begin(), 1000, 0x42);
    shifted.resize(zeros.size());
    EXPECT_EQ(run(zeros, shifted).literal, B);
    for (std::size_t parts : {2, 4, 8}) {
        delta_result split = run(zeros, shifted, parts);
        EXPECT_EQ(split.literal, 1000u) << parts << " parts";
        for (std::size_t j = 1; j < split.matches.size(); ++j) {
            EXPECT_GE(split.matches[j].at, split.matches[j - 1].at + split.matches[j - 1].length);
        }
    }
}

TEST(DeltaMatcher, MovedBlocksAreFoundAndUnrelatedDataMatchesNothing) {
    bytes basis = random_bytes(4 * B, 6);
    bytes file(basis.begin() + 2 * B, basis.end());      // the second half first
    file.insert(file.end(), basis.begin(), basis.begin() + 2 * B);
    delta_result r = run(basis, file);
    EXPECT_EQ(r.copied, 4 * B);
    EXPECT_EQ(r.literal, 0u);

    delta_result none = run(basis, random_bytes(3 * B + 5, 7));
    EXPECT_TRUE(none.matches.empty());
    EXPECT_EQ(none.literal, 3 * B + 5);
}

TEST(DeltaMatcher, TheBasisShortLastBlockIsFoundAtTheEnd) {
    bytes basis = random_bytes(5 * B + 3000, 10);
    bytes file = basis;
    file.erase(file.begin() + 100, file.begin() + 200);  // everything after shifts by 100
    block_index index = index_of(basis);
    delta_matcher m(index);
    for (std::uint64_t off = 0; off < file.size(); off += B) {
        std::span<const std::uint8_t> c(file.data() + off, std::min<std::uint64_t>(B, file.size() - off));
        m.feed(c, hash_chunk(c));
    }
    std::span<const std::uint8_t> tail(basis.data() + 5 * B, 3000);
    m.match_tail(std::span(file).last(3000), file.size(), hash_chunk(tail), 5 * B);
    ASSERT_EQ(m.matches().size(), 5u);  // blocks 1..4 and the tail; block 0 held the cut
    EXPECT_EQ(m.matches().back().at, file.size() - 3000);
    EXPECT_EQ(m.matches().back().length, 3000u);
    std::vector<delta_op> ops = chunk_ops(m.matches(), 5 * B, static_cast<std::uint32_t>(file.size() - 5 * B));
    EXPECT_EQ(copied_bytes(ops), file.size() - 5 * B);  // the last chunk: all copies

    delta_matcher other(index);
    other.match_tail(std::span(file).last(3000), file.size(), hash_chunk(std::span(file).first(3000)), 5 * B);
    EXPECT_TRUE(other.matches().empty());  // other bytes at the end
}

TEST(DeltaMatcher, SumsThatMatchWeaklyButNeverStronglyStopTheSliding) {
    // A hostile (or degenerate) basis: many blocks with the weak sum of a window of zeros
    // and digests that never match. Each window of zeros would cost a strong hash.
    bytes zeros(B, 0);
    std::vector<basis_block> blocks;
    for (std::uint64_t i = 0; i < 64; ++i) {
        blocks.push_back({weak_sum(zeros), digest128{i, i}, i * B});
    }
    block_index index(std::move(blocks));
    delta_matcher m(index);
    bytes file(16 * B, 0);
    for (std::uint64_t off = 0; off < file.size(); off += B) {
        std::span<const std::uint8_t> c(file.data() + off, B);
        m.feed(c, hash_chunk(c));
    }
    EXPECT_TRUE(m.matches().empty());
    EXPECT_LE(m.false_alarms(), delta_matcher::max_false_alarms + 1);
}

TEST(BlockIndex, KeepsEachBlockOnceAndFewBlocksPerWeakSum) {
    std::vector<basis_block> blocks;
    for (std::uint64_t i = 0; i < 10; ++i) {
        blocks.push_back({7, digest128{i % 2, 0}, i * B});  // two distinct digests, five times each
    }
    for (std::uint64_t i = 0; i < 10; ++i) {
        blocks.push_back({9, digest128{i, 1}, i * B});  // ten distinct digests
    }
    block_index index(std::move(blocks));
    EXPECT_EQ(index.with_weak(7).size(), 2u);
    EXPECT_EQ(index.with_weak(9).size(), block_index::max_per_weak);
    EXPECT_NE(index.with_strong(digest128{1, 0}), nullptr);
    EXPECT_EQ(index.with_weak(8).size(), 0u);
}

TEST(ChunkOps, AdjacentCopiesOfContiguousBasisBytesMerge) {
    std::vector<block_match> matches{{1, 0}, {B + 1, B}};
    std::vector<delta_op> ops = chunk_ops(matches, B, static_cast<std::uint32_t>(B));
    ASSERT_EQ(ops.size(), 1u);
    EXPECT_TRUE(ops[0].copy);
    EXPECT_EQ(ops[0].basis_offset, B - 1);
    EXPECT_EQ(ops[0].length, B);
}

TEST(DecodeDelta, RefusesMalformedPayloads) {
    bytes chunk = random_bytes(100, 8);
    std::vector<delta_op> ops{{40, false, 0}, {60, true, 1000}};
    bytes payload(200);
    payload.resize(encode_delta(ops, chunk, payload.data(), payload.size()));
    ASSERT_EQ(payload.size(), 4u + 40 + 12);
    std::vector<delta_piece> pieces;
    ASSERT_TRUE(decode_delta(payload, 100, 1060, pieces));
    EXPECT_EQ(pieces.size(), 2u);
    EXPECT_FALSE(decode_delta(payload, 100, 1059, pieces));   // the copy reaches past the basis
    EXPECT_FALSE(decode_delta(payload, 101, 2000, pieces));   // lengths do not add up
    EXPECT_FALSE(decode_delta(payload, 99, 2000, pieces));
    EXPECT_FALSE(decode_delta(std::span(payload).first(payload.size() - 1), 100, 2000, pieces));  // truncated
    bytes longer = payload;
    longer.push_back(0);
    EXPECT_FALSE(decode_delta(longer, 100, 2000, pieces));  // bytes after the last op
    bytes zero{0, 0, 0, 0};
    EXPECT_FALSE(decode_delta(zero, 100, 2000, pieces));  // an op of length 0
    bytes huge{0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff};
    EXPECT_FALSE(decode_delta(huge, 100, UINT64_MAX, pieces));
    EXPECT_EQ(encode_delta(ops, chunk, payload.data(), 50), 0u);  // does not fit
}

// Small files: a version of `file` (at most one chunk) made from `basis` with small_delta's
// ops, through the CODEC_DELTA payload, as the receiver rebuilds it; the bytes left literal.
struct small_result {
    bool delta = false;  // small_delta gave ops
    std::uint64_t literal = 0;
};

small_result small_round_trip(const bytes& basis, const bytes& file) {
    small_sums sums = describe_small(basis);
    // The sums as they travel.
    std::string wire;
    put_small_sums(wire, sums);
    small_sums told;
    EXPECT_TRUE(parse_small_sums(sums.block_size,
                                 std::span(reinterpret_cast<const std::uint8_t*>(wire.data()), wire.size()), told));
    EXPECT_EQ(told.blocks, sums.blocks);
    std::vector<delta_op> ops = small_delta(file, told);
    small_result r;
    if (ops.empty()) {
        return r;
    }
    r.delta = true;
    r.literal = file.size() - copied_bytes(ops);
    bytes payload(file.size() + 64);
    std::size_t n = encode_delta(ops, file, payload.data(), payload.size());
    EXPECT_GT(n, 0u);
    payload.resize(n);
    std::vector<delta_piece> pieces;
    EXPECT_TRUE(decode_delta(payload, static_cast<std::uint32_t>(file.size()), basis.size(), pieces));
    bytes rebuilt(file.size());
    for (const delta_piece& p : pieces) {
        const std::uint8_t* from = p.copy ? basis.data() + p.basis_offset : payload.data() + p.literal_at;
        std::memcpy(rebuilt.data() + p.at, from, p.length);
    }
    EXPECT_EQ(rebuilt, file);
    return r;
}

// ChunkRun entries (protocol 20): chunks made of copies alone, each its digest and ops.
TEST(ChunkRun, EntriesSplitBackIntoEachChunksDigestAndOps) {
    const std::vector<delta_op> shifted = {{static_cast<std::uint32_t>(B), true, 3 * B - 10}};
    const std::vector<delta_op> two = {{100, true, 0}, {static_cast<std::uint32_t>(B) - 100, true, 7 * B}};
    const std::vector<delta_op> last = {{5000, true, 9 * B + 1}};
    bytes payload(3 * max_run_entry);
    std::size_t n = 0;
    n += encode_run_entry({1, 2}, shifted, B, payload.data() + n);
    n += encode_run_entry({3, 4}, two, B, payload.data() + n);
    n += encode_run_entry({5, 6}, last, 5000, payload.data() + n);
    EXPECT_EQ(n, 3 * 18 + 4 * 12u);  // a digest, a length and 12 bytes a copy
    payload.resize(n);
    std::vector<run_entry> entries;
    ASSERT_TRUE(split_run(payload, 3, entries));
    ASSERT_EQ(entries.size(), 3u);
    EXPECT_EQ(entries[1].digest, (digest128{3, 4}));
    // Each entry's ops are that chunk's CODEC_DELTA payload.
    std::vector<delta_piece> pieces;
    ASSERT_TRUE(decode_delta(entries[0].ops, B, 10 * B, pieces));
    ASSERT_EQ(pieces.size(), 1u);
    EXPECT_EQ(pieces[0].basis_offset, 3 * B - 10);
    ASSERT_TRUE(decode_delta(entries[1].ops, B, 10 * B, pieces));
    EXPECT_EQ(pieces.size(), 2u);
    ASSERT_TRUE(decode_delta(entries[2].ops, 5000, 10 * B, pieces));
    EXPECT_EQ(pieces[0].basis_offset, 9 * B + 1);
}

TEST(ChunkRun, OnlyCopiesSmallerThanTheChunkMakeAnEntry) {
    bytes out(max_run_entry);
    const std::vector<delta_op> literal = {{10, false, 0}, {static_cast<std::uint32_t>(B) - 10, true, 0}};
    EXPECT_EQ(encode_run_entry({}, literal, B, out.data()), 0u);
    const std::vector<delta_op> short_copy = {{100, true, 0}};
    EXPECT_EQ(encode_run_entry({}, short_copy, B, out.data()), 0u);  // does not make the chunk
    const std::vector<delta_op> tiny = {{10, true, 0}};
    EXPECT_EQ(encode_run_entry({}, tiny, 10, out.data()), 0u);  // a copy op is larger than 10 bytes
    std::vector<delta_op> many(max_run_ops + 1, {1000, true, 0});
    EXPECT_EQ(encode_run_entry({}, many, 1000 * (max_run_ops + 1), out.data()), 0u);
    EXPECT_EQ(encode_run_entry({}, {}, B, out.data()), 0u);
}

TEST(ChunkRun, MalformedPayloadsAreRefused) {
    const std::vector<delta_op> one = {{static_cast<std::uint32_t>(B), true, 10}};
    bytes entry(max_run_entry);
    entry.resize(encode_run_entry({7, 8}, one, B, entry.data()));
    ASSERT_EQ(entry.size(), 30u);
    bytes two = entry;
    two.insert(two.end(), entry.begin(), entry.end());
    std::vector<run_entry> out;
    EXPECT_TRUE(split_run(two, 2, out));
    EXPECT_FALSE(split_run(two, 3, out));  // an entry missing
    EXPECT_FALSE(split_run(two, 1, out));  // a run is two chunks or more (and bytes are left)
    EXPECT_FALSE(split_run(entry, 1, out));
    bytes extra = two;
    extra.push_back(0);
    EXPECT_FALSE(split_run(extra, 2, out));  // a byte after the last entry
    bytes cut(two.begin(), two.end() - 1);
    EXPECT_FALSE(split_run(cut, 2, out));  // the last ops cut short
    bytes empty_ops = two;
    empty_ops[16] = 0;  // the first entry's ops: no bytes
    empty_ops[17] = 0;
    EXPECT_FALSE(split_run(empty_ops, 2, out));
    bytes long_ops = two;
    long_ops[16] = static_cast<std::uint8_t>(max_run_ops * 12 + 1);  // more than max_run_ops copies
    EXPECT_FALSE(split_run(long_ops, 2, out));
    bytes many;
    for (std::uint32_t i = 0; i <= max_run_chunks; ++i) {
        many.insert(many.end(), entry.begin(), entry.end());
    }
    EXPECT_FALSE(split_run(many, max_run_chunks + 1, out));
    many.resize(many.size() - entry.size());
    EXPECT_TRUE(split_run(many, max_run_chunks, out));
}

TEST(SmallDelta, BlocksAreAboutTheSquareRootOfTheSizeAtMostMaxSmallBlocksOfThem) {
    EXPECT_EQ(small_block_size(2048), min_small_block);
    EXPECT_EQ(small_block_size((32 << 10) - 1), 256u);
    EXPECT_EQ(small_block_size(32 << 10), 512u);  // twice the square root: 362 bytes
    EXPECT_EQ(small_block_size((128 << 10) - 1), 512u);
    EXPECT_EQ(small_block_size(128 << 10), 1024u);
    EXPECT_EQ(small_block_size(512 << 10), 1024u);
    EXPECT_EQ(small_block_size(2048, same_size_min_block), 512u);
    EXPECT_EQ(small_block_size(4 << 20, same_size_min_block), 2048u);
    EXPECT_EQ(small_block_size((2 << 20) - 1), 1024u);  // the square root: 1,448 bytes less a bit
    EXPECT_EQ(small_block_size(2 << 20), 2048u);        // 1,448: nearer 2 KiB than 1 KiB
    EXPECT_EQ(small_block_size(4 << 20), 2048u);
    EXPECT_EQ(small_block_size((8 << 20) - 1), 2048u);
    EXPECT_EQ(small_block_size(8 << 20), 4096u);
    EXPECT_EQ(small_block_size(16 << 20), 4096u);
    EXPECT_EQ(small_block_size((32 << 20) - 1), 4096u);
    EXPECT_EQ(small_block_size(32 << 20), small_delta_max_probe_block);      // 8 KiB: as large as they go
    EXPECT_EQ(small_block_size(std::uint64_t{256} << 20), 8192u);            // 32,768 blocks
    EXPECT_EQ(small_block_size((std::uint64_t{256} << 20) + 8192), 16384u);  // 32,769 blocks of 8 KiB
    EXPECT_EQ(small_block_size(std::uint64_t{512} << 20), 16 * 1024u);
    EXPECT_EQ(small_block_size(std::uint64_t{1} << 30), 32 * 1024u);
    EXPECT_EQ(small_block_size(std::uint64_t{2} << 30), max_fine_block);
    EXPECT_EQ(max_small_blocks_for(2048, 1024), 20u);  // a new version of 2 KiB
    EXPECT_EQ(max_small_blocks_for(std::uint64_t{1} << 30, 1024), max_small_blocks);
    small_sums s = describe_small(random_bytes(10000, 1));
    EXPECT_EQ(s.block_size, 256u);
    EXPECT_EQ(s.blocks.size(), 39u);  // full blocks only
    s = describe_small(random_bytes(10000, 1), same_size_min_block);
    EXPECT_EQ(s.block_size, 512u);
    EXPECT_EQ(s.blocks.size(), 19u);
}

// What a sender takes (max_small_blocks_of) holds every count an honest receiver sends,
// and small blocks only in small numbers.
TEST(SmallDelta, TheBlocksOfEveryVersionSizeAreWithinWhatASenderTakes) {
    for (std::uint64_t size = 1024; size <= (std::uint64_t{4} << 30); size = size * 9 / 8 + 1) {
        for (std::uint32_t least : {min_small_block, same_size_min_block}) {
            const std::uint32_t b = small_block_size(size, least);
            EXPECT_LE(size / b, max_small_blocks_of(b)) << size << " " << least;
            EXPECT_LE(std::min<std::uint64_t>(size / b, max_small_blocks), max_small_blocks_for(size, b)) << size;
        }
    }
    EXPECT_EQ(max_small_blocks_of(256), 528u);
    EXPECT_EQ(max_small_blocks_of(small_delta_max_probe_block), max_small_blocks);
    EXPECT_EQ(max_small_blocks_for(1024, min_small_block), 24u);  // a new version of 1 KiB
}

TEST(SmallDelta, ABlocksWeakSumMadeFromItsPartsIsItsOwn) {
    const bytes block = random_bytes(chunk_size, 12);
    for (std::uint32_t part : {1024u, 4096u, 65536u}) {
        std::vector<std::uint64_t> fine(chunk_size / part - 3, 0);  // fewer than the block has
        EXPECT_EQ(weak_sum_and_small(block, part, fine), weak_sum(block));
        for (std::size_t i = 0; i < fine.size(); ++i) {
            EXPECT_EQ(fine[i], small_block_sum(std::span(block).subspan(i * part, part))) << part << " " << i;
        }
    }
    const bytes ones(chunk_size, 0xff);  // sums that wrap
    std::vector<std::uint64_t> fine(chunk_size / 1024);
    EXPECT_EQ(weak_sum_and_small(ones, 1024, fine), weak_sum(ones));
    EXPECT_EQ(fine.back(), small_block_sum(std::span(ones).subspan(0, 1024)));
}

TEST(SmallDelta, EditsCostAboutABlockAndTheFileIsRebuiltExactly) {
    const bytes basis = random_bytes(200000, 2);  // blocks of 1 KiB
    bytes inserted = basis;
    inserted.insert(inserted.begin() + 777, {1, 2, 3, 4, 5});
    bytes overwritten = basis;
    std::fill(overwritten.begin() + 50000, overwritten.begin() + 50100, 0xab);
    bytes removed = basis;
    removed.erase(removed.begin() + 120000, removed.begin() + 120300);
    bytes appended = basis;
    appended.resize(basis.size() + 1500, 7);
    bytes at_start = basis;
    at_start.insert(at_start.begin(), 1);
    for (const bytes* file : {&inserted, &overwritten, &removed, &appended, &at_start}) {
        small_result r = small_round_trip(basis, *file);
        EXPECT_TRUE(r.delta);
        EXPECT_LE(r.literal, 4 * 1024u);
    }
    // The same bytes: all copies.
    small_result same = small_round_trip(basis, basis);
    EXPECT_TRUE(same.delta);
    EXPECT_EQ(same.literal, basis.size() % 1024);
}

TEST(SmallDelta, BlocksAreFoundAnywhereInTheOlderVersion) {
    // A part from far in a basis of 4 chunks' worth (1 MiB: blocks of 1 KiB) is the new
    // chunk.
    const bytes basis = random_bytes(small_delta_max_basis, 3);
    bytes chunk(basis.begin() + 600000, basis.begin() + 600000 + chunk_size);
    small_result r = small_round_trip(basis, chunk);
    EXPECT_TRUE(r.delta);
    EXPECT_LE(r.literal, 2 * 4096u);
}

TEST(SmallDelta, NewBytesGiveNoDelta) {
    const bytes basis = random_bytes(100000, 4);
    EXPECT_FALSE(small_round_trip(basis, random_bytes(100000, 5)).delta);
    // Too short for a block, or no sums: nothing.
    EXPECT_TRUE(small_delta(random_bytes(500, 6), describe_small(basis)).empty());
    EXPECT_TRUE(small_delta(basis, small_sums{}).empty());
}

TEST(SmallDelta, NewBytesOfAnyLengthCostAboutTheirLength) {
    // New bytes longer than the slack, at the start, in the middle and at the end of a
    // chunk: what follows them is still found (the window jumps, then takes back the
    // blocks it jumped over), so they cost about their length.
    const bytes basis = random_bytes(200'000, 4);
    for (std::size_t length : {small_delta_literal_slack + 4096, std::size_t{50'000}, std::size_t{150'000},
                               std::size_t{180'000}, std::size_t{215'000}}) {
        for (std::size_t at :
             {std::size_t{0}, std::size_t{777}, std::size_t{30'000}, std::size_t{120'000}, basis.size()}) {
            SCOPED_TRACE(testing::Message() << length << " new bytes at " << at);
            bytes file = basis;
            const bytes more = random_bytes(length, 7 + at);
            file.insert(file.begin() + static_cast<std::ptrdiff_t>(at), more.begin(), more.end());
            file.resize(std::min<std::size_t>(file.size(), chunk_size));  // one chunk
            small_result r = small_round_trip(basis, file);
            EXPECT_TRUE(r.delta);
            EXPECT_LE(r.delta ? r.literal : file.size(),
                      std::min(length, file.size() - std::min(at, file.size())) + 2 * 1024);
        }
    }
    // A short last chunk: new bytes, then a few of the older blocks at its very end.
    bytes last = random_bytes(60'000, 10);
    last.insert(last.end(), basis.begin() + 5000, basis.begin() + 19'000);
    small_result end = small_round_trip(basis, last);
    EXPECT_TRUE(end.delta);
    EXPECT_LE(end.delta ? end.literal : last.size(), 60'000u + 2 * 1024);
    // New bytes, then the older ones with an edit every 8 KiB: each edit costs about a
    // block or two once the older bytes are found again (the slack starts again there).
    bytes edited = random_bytes(20'000, 11);
    for (std::size_t at = 0; at + 8192 <= 200'000; at += 8192) {
        edited.insert(edited.end(), basis.begin() + static_cast<std::ptrdiff_t>(at),
                      basis.begin() + static_cast<std::ptrdiff_t>(at + 8192));
        edited.insert(edited.end(), {1, 2, 3, 4, 5, 6, 7, 8, 9, 10});
    }
    small_result many = small_round_trip(basis, edited);
    EXPECT_TRUE(many.delta);
    EXPECT_LE(many.delta ? many.literal : edited.size(), 20'000u + 24 * 2 * 1024);
    // New bytes in place of the older ones over most of the chunk: the last blocks found.
    bytes overwritten = basis;
    const bytes more = random_bytes(150'000, 9);
    std::copy(more.begin(), more.end(), overwritten.begin() + 10'000);
    small_result r = small_round_trip(basis, overwritten);
    ASSERT_TRUE(r.delta);
    EXPECT_LE(r.literal, 150'000u + 2 * 1024);
}

TEST(SmallDelta, BytesInsertedInAChunksFirstLargeBlockCostAboutTwoBlocks) {
    // Blocks of 32 KiB (a version of 300 MiB): from an insertion at a chunk's start the
    // window slides a block's length to meet the next block, past the 16 KiB slack.
    small_sums sums;
    sums.block_size = 32 * 1024;
    const bytes basis = random_bytes(2 * chunk_size, 13);
    for (std::size_t at = 0; at + sums.block_size <= basis.size(); at += sums.block_size) {
        sums.blocks.push_back(small_block_sum(std::span(basis).subspan(at, sums.block_size)));
    }
    bytes chunk(basis.begin(), basis.begin() + chunk_size - 10);
    chunk.insert(chunk.begin() + 100, {1, 2, 3, 4, 5, 6, 7, 8, 9, 10});
    std::vector<delta_op> ops = small_delta(chunk, sums);
    EXPECT_GE(copied_bytes(ops), chunk.size() - 2 * sums.block_size);
}

TEST(SmallDelta, NewBytesPastTheSlackKeepTheBlocksFoundBefore) {
    // A log of 40,000 bytes grown to 100,000: what it had is found, the rest is literal.
    const bytes basis = random_bytes(40'000, 8);
    bytes grown = basis;
    const bytes more = random_bytes(60'000, 9);
    grown.insert(grown.end(), more.begin(), more.end());
    small_result r = small_round_trip(basis, grown);
    EXPECT_TRUE(r.delta);
    EXPECT_LE(r.literal, 60'000u + 1024);
}

// The chunk `data` made from `basis` by `ops`, as the receiver rebuilds it.
bytes apply_ops(std::span<const delta_op> ops, const bytes& basis, std::span<const std::uint8_t> data) {
    bytes out;
    std::size_t at = 0;
    for (const delta_op& op : ops) {
        const std::uint8_t* from = op.copy ? basis.data() + op.basis_offset : data.data() + at;
        out.insert(out.end(), from, from + op.length);
        at += op.length;
    }
    return out;
}

TEST(SmallDelta, BlocksCutByAChunksEdgeAreTakenWhole) {
    // Ten bytes inserted near the start shift every later block ten bytes past the chunks'
    // edges: each chunk ends with a block's first part and the next starts with its rest.
    // With the bytes past the edge, both parts are copies: the insertion costs one block
    // (it cost two, and ten bytes a chunk after it).
    const bytes basis = random_bytes(4 * 1024 * 1024, 14);
    const small_index index(describe_small(basis));
    const std::uint32_t b = index.sums().block_size;
    ASSERT_EQ(b, 2048u);  // (the receiver's, for 4 MiB)
    bytes file = basis;
    file.insert(file.begin() + 5000, {1, 2, 3, 4, 5, 6, 7, 8, 9, 10});
    std::uint64_t literal = 0;
    for (std::size_t off = 0; off < file.size(); off += chunk_size) {
        const std::span<const std::uint8_t> all(file);
        const std::span<const std::uint8_t> data =
            all.subspan(off, std::min<std::size_t>(chunk_size, file.size() - off));
        std::vector<delta_op> ops = small_delta(data, index);
        const edge_lengths edges = edge_literals(ops, static_cast<std::uint32_t>(data.size()), b);
        EXPECT_EQ(edges.head, off == 0 ? 0u : 10u) << off;  // (the last chunk: its 10 bytes are one)
        EXPECT_EQ(edges.tail, off + chunk_size < file.size() ? b - 10 : 0u) << off;
        take_edges(ops, data, off == 0 ? std::span<const std::uint8_t>() : all.subspan(off - b, b),
                   all.subspan(off + data.size(), std::min<std::size_t>(b, file.size() - off - data.size())), index);
        ASSERT_FALSE(ops.empty()) << off;
        EXPECT_EQ(apply_ops(ops, basis, data), bytes(data.begin(), data.end())) << off;
        literal += data.size() - copied_bytes(ops);
        EXPECT_EQ(edge_literals(ops, static_cast<std::uint32_t>(data.size()), b).tail, 0u) << off;
    }
    EXPECT_EQ(literal, b + 10);  // the block the bytes went into, and them
}

TEST(SmallDelta, AnEdgesLiteralStaysWhereItsBlockIsNotTheOlderVersions) {
    // Bytes changed just past a chunk's edge: the block cut by the edge is not one of the
    // older version's, and neither part is taken as a copy. Nor without the bytes past it.
    const bytes basis = random_bytes(4 * 1024 * 1024, 15);
    const small_index index(describe_small(basis));
    const std::uint32_t b = index.sums().block_size;
    bytes file = basis;
    file.insert(file.begin() + 5000, {1, 2, 3, 4, 5, 6, 7, 8, 9, 10});
    file[chunk_size + 3] ^= 1;  // in the next chunk's head, which is part of the block cut
    const std::span<const std::uint8_t> all(file);
    const std::span<const std::uint8_t> first = all.subspan(0, chunk_size);
    const std::span<const std::uint8_t> second = all.subspan(chunk_size, chunk_size);
    std::vector<delta_op> ops = small_delta(first, index);
    const std::vector<delta_op> found = ops;
    take_edges(ops, first, {}, all.subspan(chunk_size, b), index);
    EXPECT_EQ(copied_bytes(ops), copied_bytes(found));
    ops = small_delta(second, index);
    take_edges(ops, second, all.subspan(chunk_size - b, b), all.subspan(2 * chunk_size, b), index);
    EXPECT_EQ(edge_literals(ops, chunk_size, b).head, 10u);  // changed: stays
    EXPECT_EQ(edge_literals(ops, chunk_size, b).tail, 0u);   // the next block: taken
    EXPECT_EQ(apply_ops(ops, basis, second), bytes(second.begin(), second.end()));
    ops = small_delta(all.subspan(2 * chunk_size, chunk_size), index);
    take_edges(ops, all.subspan(2 * chunk_size, chunk_size), {}, {}, index);  // no bytes past the edges
    EXPECT_EQ(edge_literals(ops, chunk_size, b).head, 10u);
    EXPECT_EQ(edge_literals(ops, chunk_size, b).tail, b - 10);
}

TEST(SmallDelta, MalformedSumsAreRefused) {
    small_sums out;
    auto parse = [&](std::uint32_t block_size, std::size_t n) {
        std::vector<std::uint8_t> b(n, 1);
        return parse_small_sums(block_size, b, out);
    };
    EXPECT_TRUE(parse(1024, 8));
    EXPECT_TRUE(parse(max_fine_block, 8 * max_small_blocks));
    EXPECT_FALSE(parse(1024, 0));                           // no block
    EXPECT_FALSE(parse(1024, 12));                          // not whole entries
    EXPECT_FALSE(parse(1024, 8 * (max_small_blocks + 1)));  // too many
    EXPECT_TRUE(parse(min_small_block, 8));
    EXPECT_FALSE(parse(min_small_block / 2, 8));            // too small a block
    EXPECT_FALSE(parse(3000, 8));                           // not a power of two
    EXPECT_FALSE(parse(2 * max_fine_block, 8));             // too large
}

}  // namespace
}  // namespace ferry
