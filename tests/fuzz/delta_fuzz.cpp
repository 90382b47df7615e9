// Fuzz target: the CODEC_DELTA payload codec and chunk_ops (protocol/delta.hpp).
//
// Input: raw_len (u32, up to one chunk), basis_size (u64), then a mode byte. Mode 0: the
// rest is a peer's delta payload for decode_delta, and a ChunkRun payload for split_run
// (entries that it accepts lie one after the other and fill it). Checked: an accepted payload's pieces
// cover [0, raw_len) in order without gaps, none is empty, every copy lies inside the
// basis and every literal inside the payload, one after the other; encoding the pieces
// again (literals from a chunk rebuilt with them) gives back the payload byte for byte.
// Mode 1: the rest is a list of matches (gap u16, length u16 → at most one chunk) for
// chunk_ops over a chunk at an input offset: the ops cover the chunk exactly, never hold
// an empty op or two literals in a row, and copy exactly the bytes the matches cover.
// Mode 2: small_delta (protocol 16): a basis made from the input (a seed and a size), a
// file made from it by the input's edits (insert, remove, overwrite, take from elsewhere);
// the basis's sums go through put_small_sums and parse_small_sums, and the ops small_delta
// gives, if any, rebuild the file exactly from the basis through encode_delta and
// decode_delta; the file cut in two at an input offset, each part's ops with take_edges
// (the bytes past the cut given; blocks of 1-8 times the basis's own) rebuild that part exactly. Mode 3: sums straight
// from the input (parse_small_sums) against input bytes: any ops (after take_edges, with input bytes past the edges)
// cover the bytes exactly and copy only inside the blocks described.
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "protocol/delta.hpp"
#include "protocol/le_bytes.hpp"
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
    fuzz_output small_edits;  // a basis of 20,000 bytes, then an insert, a removal and a copy
    small_edits.u32(20000).u64(7).u8(2);
    small_edits.u8(0).u16(300).u16(5).u8(1).u8(2).u8(3).u8(4).u8(5);
    small_edits.u8(1).u16(9000).u16(100);
    small_edits.u8(3).u16(15000).u16(2048);
    fuzz_output matches;
    matches.u32(chunk_size).u64(3 * std::uint64_t{chunk_size}).u8(1).u32(1);
    for (int i = 0; i < 6; ++i) {
        matches.u16(static_cast<std::uint16_t>(i * 100)).u16(40000);
    }
    return {
        {"literal-then-copy", payload(100, {{40, false, 0}, {60, true, 1000}})},
        {"copies", payload(4096, {{1, true, 0}, {4095, true, 7}})},
        {"matches", matches.data()},
        {"small-edits", small_edits.data()},
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
    const std::uint8_t mode = in.u8() % 4;
    if (mode == 2) {
        // The basis: raw_len random bytes (a few distinct values when the seed says so, so
        // that weak sums collide).
        std::mt19937 rng(static_cast<std::uint32_t>(basis_size));
        const bool dull = (basis_size >> 32) % 2 == 1;
        std::vector<std::uint8_t> basis(raw_len);
        for (auto& b : basis) {
            b = static_cast<std::uint8_t>(dull ? rng() % 3 : rng());
        }
        std::vector<std::uint8_t> file = basis;
        while (in.remaining() >= 5 && file.size() <= chunk_size) {
            const std::uint8_t op = in.u8() % 4;
            const std::size_t at = file.empty() ? 0 : in.u16() % file.size();
            const std::size_t len = in.u16() % 4096;
            if (op == 0) {
                std::span<const std::uint8_t> add = in.bytes(std::min<std::size_t>(len, in.remaining()));
                file.insert(file.begin() + static_cast<std::ptrdiff_t>(at), add.begin(), add.end());
            } else if (op == 1) {
                file.erase(file.begin() + static_cast<std::ptrdiff_t>(at),
                           file.begin() + static_cast<std::ptrdiff_t>(std::min(file.size(), at + len)));
            } else if (op == 2) {
                for (std::size_t k = at; k < std::min(file.size(), at + len); ++k) {
                    file[k] ^= 0x5a;
                }
            } else if (!basis.empty()) {
                const std::size_t from = (at * 7) % basis.size();
                const std::size_t n = std::min(len, basis.size() - from);
                file.insert(file.begin() + static_cast<std::ptrdiff_t>(at), basis.begin() + from,
                            basis.begin() + from + n);
            }
        }
        if (file.size() > chunk_size) {
            file.resize(chunk_size);
        }
        small_sums sums = describe_small(basis);
        std::string wire;
        put_small_sums(wire, sums);
        small_sums told;
        const bool parsed = parse_small_sums(
            sums.block_size, std::span(reinterpret_cast<const std::uint8_t*>(wire.data()), wire.size()), told);
        FUZZ_CHECK(parsed == !sums.blocks.empty());
        if (!parsed) {
            return 0;
        }
        FUZZ_CHECK(told.blocks == sums.blocks);
        std::vector<delta_op> ops = small_delta(file, told);
        if (ops.empty()) {
            return 0;
        }
        std::vector<std::uint8_t> payload(file.size() + 12 * ops.size() + 64);
        std::size_t n = encode_delta(ops, file, payload.data(), payload.size());
        FUZZ_CHECK(n > 0);
        payload.resize(n);
        std::vector<delta_piece> pieces;
        FUZZ_CHECK(decode_delta(payload, static_cast<std::uint32_t>(file.size()), basis.size(), pieces));
        std::vector<std::uint8_t> rebuilt(file.size());
        for (const delta_piece& p : pieces) {
            const std::uint8_t* from = p.copy ? basis.data() + p.basis_offset : payload.data() + p.literal_at;
            std::memcpy(rebuilt.data() + p.at, from, p.length);
        }
        // (A false match of both sums would fail here: 64 bits of sums per block.)
        FUZZ_CHECK(rebuilt == file);
        // The file cut in two at an input offset, as at a chunk's edge: each part's ops,
        // with take_edges given the bytes past its edge, still rebuild it exactly. In
        // blocks of one to eight times the basis's own (as a larger file's), from the input.
        small_sums coarse;
        coarse.block_size = told.block_size << (basis_size >> 40) % 4;
        for (std::size_t at = 0; at + coarse.block_size <= basis.size(); at += coarse.block_size) {
            coarse.blocks.push_back(small_block_sum(std::span(basis).subspan(at, coarse.block_size)));
        }
        if (coarse.blocks.empty()) {
            return 0;
        }
        const small_index index(std::move(coarse));
        const std::size_t b = index.sums().block_size;
        const std::size_t cut = static_cast<std::size_t>(basis_size >> 33) % (file.size() + 1);
        const std::span<const std::uint8_t> all(file);
        for (int part = 0; part < 2; ++part) {
            const std::span<const std::uint8_t> piece = part == 0 ? all.first(cut) : all.subspan(cut);
            const std::span<const std::uint8_t> before =
                part == 0 ? std::span<const std::uint8_t>() : all.subspan(cut - std::min(cut, b), std::min(cut, b));
            const std::span<const std::uint8_t> after =
                part == 0 ? all.subspan(cut, std::min(b, file.size() - cut)) : std::span<const std::uint8_t>();
            std::vector<delta_op> edged = small_delta(piece, index);
            const std::uint64_t copied = copied_bytes(edged);
            take_edges(edged, piece, before, after, index);
            FUZZ_CHECK(copied_bytes(edged) >= copied);
            std::vector<std::uint8_t> made;
            for (const delta_op& op : edged) {
                FUZZ_CHECK(op.length > 0);
                FUZZ_CHECK(!op.copy || op.basis_offset + op.length <= basis.size());
                const std::uint8_t* from = op.copy ? basis.data() + op.basis_offset : piece.data() + made.size();
                made.insert(made.end(), from, from + op.length);
            }
            FUZZ_CHECK(edged.empty() || std::equal(made.begin(), made.end(), piece.begin(), piece.end()));
        }
        return 0;
    }
    if (mode == 3) {
        const std::uint32_t block_size = std::uint32_t{1} << (in.u8() % 20);
        // (Up to 512 KiB of sums: past the most a receiver may tell, max_small_blocks.)
        std::span<const std::uint8_t> sum_bytes =
            in.bytes(std::min<std::size_t>(std::size_t{in.u16()} * 8, in.remaining()));
        small_sums sums;
        if (!parse_small_sums(block_size, sum_bytes, sums)) {
            return 0;
        }
        FUZZ_CHECK(sums.blocks.size() * 8 == sum_bytes.size() && sums.block_size == block_size);
        std::span<const std::uint8_t> bytes = in.bytes(std::min<std::size_t>(raw_len, in.remaining()));
        const small_index index(sums);
        std::vector<delta_op> ops = small_delta(bytes, index);
        // (And take_edges, with the bytes past the edges from the input.)
        std::span<const std::uint8_t> before = in.bytes(std::min<std::size_t>(in.u16(), in.remaining()));
        std::span<const std::uint8_t> after = in.bytes(std::min<std::size_t>(in.u16(), in.remaining()));
        take_edges(ops, bytes, before, after, index);
        std::uint64_t total = 0;
        for (const delta_op& op : ops) {
            FUZZ_CHECK(op.length > 0);
            FUZZ_CHECK(!op.copy || op.basis_offset + op.length <= sums.blocks.size() * std::uint64_t{block_size});
            total += op.length;
        }
        FUZZ_CHECK(ops.empty() || total == bytes.size());
        return 0;
    }
    if (mode == 0) {
        std::span<const std::uint8_t> payload = in.bytes(in.remaining());
        // The same bytes as a ChunkRun payload: accepted entries lie one after the other,
        // each its 18 bytes of digest and length, then its ops, and fill the payload.
        std::vector<run_entry> entries;
        const std::uint32_t count = 2 + raw_len % (max_run_chunks - 1);
        if (split_run(payload, count, entries)) {
            FUZZ_CHECK(entries.size() == count);
            std::size_t n = 0;
            for (const run_entry& e : entries) {
                FUZZ_CHECK(e.ops.data() == payload.data() + n + 18);
                FUZZ_CHECK(!e.ops.empty() && e.ops.size() <= max_run_ops * 12);
                FUZZ_CHECK(e.digest.lo == get_le(payload.data() + n, 8) &&
                           e.digest.hi == get_le(payload.data() + n + 8, 8));
                n += 18 + e.ops.size();
            }
            FUZZ_CHECK(n == payload.size());
        }
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
