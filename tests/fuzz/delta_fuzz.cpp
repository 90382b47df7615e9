// Fuzz target: the CODEC_DELTA payload codec and chunk_ops (protocol/delta.hpp).
//
// Input: raw_len (u32, up to one chunk), basis_size (u64), then a mode byte. Mode 0: the
// rest is a peer's delta payload for decode_delta. Checked: an accepted payload's pieces
// cover [0, raw_len) in order without gaps, none is empty, every copy lies inside the
// basis and every literal inside the payload, one after the other; encoding the pieces
// again (literals from a chunk rebuilt with them) gives back the payload byte for byte.
// Mode 1: the rest is a list of matches (gap u16, length u16 → at most one chunk) for
// chunk_ops over a chunk at an input offset: the ops cover the chunk exactly, never hold
// an empty op or two literals in a row, and copy exactly the bytes the matches cover.
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <vector>

#include "protocol/delta.hpp"
#include "protocol/types.hpp"
#include "tests/fuzz/fuzz_support.hpp"

namespace ferry::fuzz {
namespace {

std::vector<seed> seeds() {
    auto payload = [](std::uint32_t raw_len, const std::vector<delta_op>& ops) {
        std::vector<std::uint8_t> chunk(raw_len, 'x');
        std::vector<std::uint8_t> out(2 * raw_len + 64);
        out.resize(encode_delta(ops, chunk, out.data(), out.size()));
        fuzz_output o;
        o.u32(raw_len).u64(1u << 20).u8(0).bytes(out);
        return o.data();
    };
    fuzz_output matches;
    matches.u32(chunk_size).u64(3 * std::uint64_t{chunk_size}).u8(1).u32(1);
    for (int i = 0; i < 6; ++i) {
        matches.u16(static_cast<std::uint16_t>(i * 100)).u16(40000);
    }
    return {
        {"literal-then-copy", payload(100, {{40, false, 0}, {60, true, 1000}})},
        {"copies", payload(4096, {{1, true, 0}, {4095, true, 7}})},
        {"matches", matches.data()},
    };
}

}  // namespace
}  // namespace ferry::fuzz

extern "C" int LLVMFuzzerInitialize(int*, char***) {
    ferry::fuzz::initialize(ferry::fuzz::seeds);
    return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    using namespace ferry;
    using namespace ferry::fuzz;
    fuzz_input in({data, size});
    std::uint32_t raw_len = in.u32() % (chunk_size + 1);
    std::uint64_t basis_size = in.u64();
    if (in.u8() % 2 == 0) {
        std::span<const std::uint8_t> payload = in.bytes(in.remaining());
        std::vector<delta_piece> pieces;
        if (!decode_delta(payload, raw_len, basis_size, pieces)) {
            return 0;
        }
        std::uint64_t at = 0;
        std::uint64_t next_literal = 4;  // a literal's bytes follow its 4-byte op
        std::vector<delta_op> ops;
        std::vector<std::uint8_t> chunk(raw_len);
        for (const delta_piece& p : pieces) {
            FUZZ_CHECK(p.length > 0 && p.at == at);
            at += p.length;
            if (p.copy) {
                FUZZ_CHECK(p.basis_offset <= basis_size && p.length <= basis_size - p.basis_offset);
                next_literal += 12;
            } else {
                FUZZ_CHECK(p.literal_at == next_literal && p.literal_at + std::uint64_t{p.length} <= payload.size());
                std::memcpy(chunk.data() + p.at, payload.data() + p.literal_at, p.length);
                next_literal += p.length + 4;
            }
            ops.push_back({p.length, p.copy, p.basis_offset});
        }
        FUZZ_CHECK(at == raw_len);
        std::vector<std::uint8_t> again(payload.size() + 1);
        std::size_t n = encode_delta(ops, chunk, again.data(), again.size());
        FUZZ_CHECK(n == payload.size() && std::memcmp(again.data(), payload.data(), n) == 0);
        return 0;
    }
    // chunk_ops over matches the input lays out one after the other.
    std::uint64_t chunk_offset = in.u32() % (4 * std::uint64_t{chunk_size});
    std::vector<block_match> matches;
    std::uint64_t pos = 0;
    while (in.remaining() >= 4 && matches.size() < 64) {
        pos += in.u16();
        std::uint64_t length = std::uint64_t{in.u16()} * 8 + 1;
        matches.push_back({pos, pos * 3 + 17, length});
        pos += length;
    }
    std::vector<delta_op> ops = chunk_ops(matches, chunk_offset, raw_len);
    std::uint64_t covered = 0;
    std::uint64_t total = 0;
    for (std::size_t i = 0; i < ops.size(); ++i) {
        FUZZ_CHECK(ops[i].length > 0);
        FUZZ_CHECK(ops[i].copy || i == 0 || ops[i - 1].copy);
        total += ops[i].length;
    }
    FUZZ_CHECK(total == raw_len);
    for (const block_match& m : matches) {
        std::uint64_t from = std::max(m.at, chunk_offset);
        std::uint64_t to = std::min(m.at + m.length, chunk_offset + raw_len);
        covered += to > from ? to - from : 0;
    }
    FUZZ_CHECK(copied_bytes(ops) == covered);
    return 0;
}
