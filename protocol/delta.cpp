#include "protocol/delta.hpp"

#include <algorithm>
#include <bit>
#include <cstring>
#include <tuple>

#include "protocol/digest.hpp"
#include "protocol/le_bytes.hpp"

namespace ferry {

namespace {

// Adds the bytes and the bytes weighted by their position (from `k0`) to `a` and
// `weighted` (mod 2^32): two independent sums the compiler vectorizes (a running a fed
// into b would be one serial chain), with AVX2 where the CPU has it.
// (Not under the sanitizers: the ifunc resolver target_clones adds runs before their
// runtime is up, and ThreadSanitizer crashes at start.)
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && !defined(__SANITIZE_THREAD__) && \
    !defined(__SANITIZE_ADDRESS__)
__attribute__((target_clones("avx2", "default")))
#endif
void add_sums(const std::uint8_t* x, std::uint32_t len, std::uint32_t k0, std::uint32_t& a, std::uint32_t& weighted) {
    std::uint32_t sa = 0;
    std::uint32_t sw = 0;
    for (std::uint32_t k = 0; k < len; ++k) {
        sa += x[k];
        sw += (k0 + k) * x[k];
    }
    a += sa;
    weighted += sw;
}

}  // namespace

void rolling_sum::reset(std::span<const std::uint8_t> head, std::span<const std::uint8_t> tail) {
    n_ = static_cast<std::uint32_t>(head.size() + tail.size());
    // b = sum of (n - k) * x_k = n * a - sum of k * x_k.
    std::uint32_t a = 0;
    std::uint32_t weighted = 0;
    add_sums(head.data(), static_cast<std::uint32_t>(head.size()), 0, a, weighted);
    add_sums(tail.data(), static_cast<std::uint32_t>(tail.size()), static_cast<std::uint32_t>(head.size()), a, weighted);
    a_ = a;
    b_ = n_ * a - weighted;
}

std::uint32_t weak_sum(std::span<const std::uint8_t> block) {
    rolling_sum s;
    s.reset(block);
    return s.value();
}

namespace {

bool strong_less(const digest128& x, const digest128& y) { return std::tie(x.hi, x.lo) < std::tie(y.hi, y.lo); }

}  // namespace

block_index::block_index(std::vector<basis_block> blocks) : blocks_(std::move(blocks)), filter_(filter_mask + 1, 0) {
    std::stable_sort(blocks_.begin(), blocks_.end(), [](const basis_block& x, const basis_block& y) {
        return x.weak != y.weak ? x.weak < y.weak : strong_less(x.strong, y.strong);
    });
    // One block per (weak, strong) (the first: any copy will do), at most max_per_weak per weak.
    std::size_t kept = 0;
    for (std::size_t i = 0; i < blocks_.size(); ++i) {
        const basis_block& b = blocks_[i];
        if (kept > 0 && blocks_[kept - 1].weak == b.weak &&
            (blocks_[kept - 1].strong == b.strong ||
             (kept >= max_per_weak && blocks_[kept - max_per_weak].weak == b.weak))) {
            continue;
        }
        blocks_[kept++] = b;
    }
    blocks_.resize(kept);
    by_strong_.resize(blocks_.size());
    for (std::uint32_t i = 0; i < blocks_.size(); ++i) {
        std::uint32_t w = blocks_[i].weak;
        filter_[w >> 6 & filter_mask] |= std::uint64_t{1} << (w & 63);
        by_strong_[i] = i;
    }
    std::stable_sort(by_strong_.begin(), by_strong_.end(), [this](std::uint32_t x, std::uint32_t y) {
        return strong_less(blocks_[x].strong, blocks_[y].strong);
    });
}

std::span<const basis_block> block_index::with_weak(std::uint32_t weak) const {
    auto [lo, hi] = std::equal_range(blocks_.begin(), blocks_.end(), basis_block{weak, {}, 0},
                                     [](const basis_block& x, const basis_block& y) { return x.weak < y.weak; });
    return {lo, hi};
}

const basis_block* block_index::with_strong(const digest128& strong) const {
    auto it = std::lower_bound(by_strong_.begin(), by_strong_.end(), strong,
                               [this](std::uint32_t i, const digest128& d) { return strong_less(blocks_[i].strong, d); });
    return it != by_strong_.end() && blocks_[*it].strong == strong ? &blocks_[*it] : nullptr;
}

bool delta_matcher::try_match(std::span<const std::uint8_t> head, std::span<const std::uint8_t> tail) {
    std::uint32_t w = sum_.value();
    if (!index_.maybe(w)) {
        return false;
    }
    std::span<const basis_block> candidates = index_.with_weak(w);
    if (candidates.empty()) {
        return false;
    }
    digest128 strong = hash_parts(head, tail);
    for (const basis_block& b : candidates) {
        if (b.strong == strong) {
            matches_.push_back({p_, b.offset, chunk_size});
            return true;
        }
    }
    if (++false_alarms_ > max_false_alarms + matches_.size()) {
        sliding_ = false;
    }
    return false;
}

void delta_matcher::feed(std::span<const std::uint8_t> chunk, const digest128& digest) {
    look(chunk, digest);
    if (chunk.size() == chunk_size) {
        prev_.assign(chunk.begin(), chunk.end());
    }
    ++k_;
}

void delta_matcher::feed(std::vector<std::uint8_t>& buf, std::size_t len, const digest128& digest) {
    look(std::span<const std::uint8_t>(buf.data(), len), digest);
    if (len == chunk_size) {
        prev_.swap(buf);
        buf.resize(chunk_size);
    }
    ++k_;
}

void delta_matcher::look(std::span<const std::uint8_t> chunk, const digest128& digest) {
    constexpr std::uint64_t block = chunk_size;
    const std::uint64_t base = k_ * block;          // this chunk's offset in the file
    const std::uint64_t end = base + chunk.size();  // bytes known so far
    const std::span<const std::uint8_t> prev(prev_);
    while (!index_.empty() && p_ + block <= end) {
        if (p_ == base) {
            // The window is this chunk exactly: its digest is known, no weak sum needed.
            if (const basis_block* b = index_.with_strong(digest)) {
                matches_.push_back({p_, b->offset, block});
                p_ += block;
                fresh_ = true;
                continue;
            }
            break;  // sliding on needs the next chunk
        }
        // p_ is in the previous chunk: the window is prev_[o..] then chunk[..o], and
        // sliding it one byte drops prev_[o] and takes chunk[o].
        if (!sliding_) {
            // Only a chunk equal to a block from now on: the next chunk's start.
            p_ = base;
            fresh_ = true;
            continue;
        }
        std::size_t o = p_ - (base - block);
        if (fresh_) {
            // Right after a match the next block usually follows: its digest alone says so,
            // without the weak sum of the window.
            if (const basis_block* b = index_.with_strong(hash_parts(prev.subspan(o), chunk.first(o)))) {
                matches_.push_back({p_, b->offset, block});
                p_ += block;
                continue;
            }
            sum_.reset(prev.subspan(o), chunk.first(o));
            fresh_ = false;
        }
        const std::size_t limit = chunk.size();  // chunk[o] must exist to slide
        bool matched = try_match(prev.subspan(o), chunk.first(o));
        // Slide one byte at a time until the weak sum passes the filter (most windows
        // match nothing: this loop is where a changed file's time goes).
        const std::uint8_t* out = prev.data();
        const std::uint8_t* in = chunk.data();
        while (!matched && sliding_ && o < limit) {
            std::uint32_t a = sum_.a_;
            std::uint32_t b = sum_.b_;
            const std::uint32_t n = sum_.n_;
            std::size_t start = o;
            bool hit = false;
            while (o < limit) {
                a += static_cast<std::uint32_t>(in[o]) - out[o];
                b += a - n * out[o];
                ++o;
                if (index_.maybe(rolling_sum::mix(a, b))) {
                    hit = true;
                    break;
                }
            }
            sum_.a_ = a;
            sum_.b_ = b;
            rolled_ += o - start;
            p_ += o - start;
            if (hit && try_match(prev.subspan(o), chunk.first(o))) {
                matched = true;
            }
        }
        if (!matched) {
            break;  // the window reached the end of what is known
        }
        p_ += block;
        fresh_ = true;
    }
}

void delta_matcher::match_tail(std::vector<block_match>& matches, std::span<const std::uint8_t> tail,
                               std::uint64_t file_size, const digest128& want, std::uint64_t basis_offset) {
    if (tail.empty() || tail.size() > file_size) {
        return;
    }
    std::uint64_t at = file_size - tail.size();
    if (!matches.empty() && matches.back().at + matches.back().length > at) {
        return;
    }
    if (hash_chunk(tail) == want) {
        matches.push_back({at, basis_offset, tail.size()});
    }
}

void append_part_matches(std::vector<block_match>& into, std::span<const block_match> part, std::uint64_t end) {
    for (block_match m : part) {
        if (m.at >= end) {
            break;
        }
        std::uint64_t covered = into.empty() ? 0 : into.back().at + into.back().length;
        if (m.at + m.length <= covered) {
            continue;
        }
        if (m.at < covered) {
            // The earlier part's last match runs into this one (on repetitive data this
            // part may have found its own first block aligned): the rest of it still
            // copies, and this part's next matches follow on from it.
            std::uint64_t cut = covered - m.at;
            m.at += cut;
            m.basis_offset += cut;
            m.length -= cut;
        }
        into.push_back(m);
    }
}

std::vector<delta_op> chunk_ops(std::span<const block_match> matches, std::uint64_t chunk_offset,
                                std::uint32_t chunk_len) {
    std::vector<delta_op> ops;
    const std::uint64_t end = chunk_offset + chunk_len;
    std::uint64_t pos = chunk_offset;
    auto it = std::upper_bound(matches.begin(), matches.end(), chunk_offset,
                               [](std::uint64_t off, const block_match& m) { return off < m.at + m.length; });
    for (; it != matches.end() && it->at < end; ++it) {
        std::uint64_t from = std::max(it->at, chunk_offset);
        std::uint64_t to = std::min(it->at + it->length, end);
        if (to <= from) {
            continue;  // an empty chunk
        }
        if (from > pos) {
            ops.push_back({static_cast<std::uint32_t>(from - pos), false, 0});
        }
        std::uint64_t basis = it->basis_offset + (from - it->at);
        if (!ops.empty() && ops.back().copy && ops.back().basis_offset + ops.back().length == basis) {
            ops.back().length += static_cast<std::uint32_t>(to - from);
        } else {
            ops.push_back({static_cast<std::uint32_t>(to - from), true, basis});
        }
        pos = to;
    }
    if (pos < end) {
        ops.push_back({static_cast<std::uint32_t>(end - pos), false, 0});
    }
    return ops;
}

std::uint64_t copied_bytes(std::span<const delta_op> ops) {
    std::uint64_t n = 0;
    for (const delta_op& op : ops) {
        n += op.copy ? op.length : 0;
    }
    return n;
}

namespace {

// An op's head in a CODEC_DELTA payload: (length << 1 | copy) in 4 bytes little endian,
// then for a copy the basis offset in 8.
void store_op_head(std::uint8_t* out, const delta_op& op) {
    store_le(out, std::uint64_t{op.length} << 1 | (op.copy ? 1 : 0), 4);
    if (op.copy) {
        store_le(out + 4, op.basis_offset);
    }
}

}  // namespace

std::size_t encode_delta(std::span<const delta_op> ops, std::span<const std::uint8_t> chunk, std::uint8_t* out,
                         std::size_t cap) {
    std::size_t n = 0;
    std::size_t at = 0;  // where the op's bytes are in the chunk
    for (const delta_op& op : ops) {
        std::size_t need = op.copy ? 12 : 4 + std::size_t{op.length};
        if (op.length == 0 || at + op.length > chunk.size() || n + need > cap) {
            return 0;
        }
        store_op_head(out + n, op);
        if (!op.copy) {
            std::memcpy(out + n + 4, chunk.data() + at, op.length);
        }
        n += need;
        at += op.length;
    }
    return at == chunk.size() ? n : 0;
}

std::size_t encode_run_entry(digest128 digest, std::span<const delta_op> ops, std::uint32_t raw_len,
                             std::uint8_t* out) {
    if (ops.empty() || ops.size() > max_run_ops ||
        std::any_of(ops.begin(), ops.end(), [](const delta_op& op) { return !op.copy || op.length == 0; }) ||
        copied_bytes(ops) != raw_len) {
        return 0;
    }
    const std::size_t n = 12 * ops.size();  // (a copy op's head is all of it)
    if (n >= raw_len) {
        return 0;
    }
    store_le(out, digest.lo);
    store_le(out + 8, digest.hi);
    store_le(out + 16, n, 2);
    for (std::size_t k = 0; k < ops.size(); ++k) {
        store_op_head(out + 18 + 12 * k, ops[k]);
    }
    return 18 + n;
}

bool split_run(std::span<const std::uint8_t> payload, std::uint32_t count, std::vector<run_entry>& out) {
    out.clear();
    if (count < 2 || count > max_run_chunks) {
        return false;
    }
    std::size_t n = 0;
    for (std::uint32_t i = 0; i < count; ++i) {
        if (payload.size() - n < 18) {
            return false;
        }
        run_entry e;
        e.digest.lo = get_le(payload.data() + n, 8);
        e.digest.hi = get_le(payload.data() + n + 8, 8);
        std::size_t len = get_le(payload.data() + n + 16, 2);
        n += 18;
        if (len == 0 || len > max_run_ops * 12 || payload.size() - n < len) {
            return false;
        }
        e.ops = payload.subspan(n, len);
        n += len;
        out.push_back(e);
    }
    return n == payload.size();
}

bool decode_delta(std::span<const std::uint8_t> payload, std::uint32_t raw_len, std::uint64_t basis_size,
                  std::vector<delta_piece>& out) {
    out.clear();
    std::size_t n = 0;
    std::uint64_t at = 0;
    while (n < payload.size()) {
        if (payload.size() - n < 4) {
            return false;
        }
        std::uint64_t word = get_le(payload.data() + n, 4);
        n += 4;
        delta_piece piece;
        piece.copy = (word & 1) != 0;
        std::uint64_t length = word >> 1;
        if (length == 0 || length > raw_len - at) {
            return false;
        }
        piece.at = static_cast<std::uint32_t>(at);
        piece.length = static_cast<std::uint32_t>(length);
        if (piece.copy) {
            if (payload.size() - n < 8) {
                return false;
            }
            piece.basis_offset = get_le(payload.data() + n, 8);
            n += 8;
            if (piece.basis_offset > basis_size || length > basis_size - piece.basis_offset) {
                return false;
            }
        } else {
            if (payload.size() - n < length) {
                return false;
            }
            piece.literal_at = static_cast<std::uint32_t>(n);
            n += length;
        }
        at += length;
        out.push_back(piece);
    }
    return at == raw_len;
}

std::uint32_t small_block_size(std::uint64_t basis_size, std::uint32_t min_block) {
    std::uint32_t b = min_block;
    // About the square root of the size (the power of two nearest to it), as rsync's
    // blocks: the sums cost 8 bytes a block and an edit costs a block, so 1 KiB blocks for
    // a 16 MiB file cost 128 KiB of sums where an edit costs 1 KiB. (At most
    // small_delta_max_probe_block: small_delta jumps over new bytes only with blocks up
    // to that.) Up to 1 KiB, about twice the square root: a small file's few edits cost
    // less than its sums with blocks of the square root (a 64 KB file: 256-byte blocks,
    // 2 KB of sums, where an edit costs about 300 bytes).
    while (b < small_delta_max_probe_block && std::uint64_t{2 * b} * (2 * b) <= (b < 1024 ? 8 : 2) * basis_size) {
        b *= 2;
    }
    while (b < chunk_size && basis_size / b > max_small_blocks) {
        b *= 2;
    }
    return b;
}

std::uint64_t small_block_sum(std::span<const std::uint8_t> block) {
    return std::uint64_t{weak_sum(block)} << 32 | static_cast<std::uint32_t>(hash64(block));
}

std::uint32_t weak_sum_and_small(std::span<const std::uint8_t> block, std::uint32_t part,
                                 std::span<std::uint64_t> fine) {
    std::uint32_t a = 0;
    std::uint32_t weighted = 0;
    for (std::size_t i = 0, at = 0; at + part <= block.size(); ++i, at += part) {
        std::uint32_t pa = 0;
        std::uint32_t pw = 0;
        add_sums(block.data() + at, part, 0, pa, pw);
        a += pa;
        weighted += pw + static_cast<std::uint32_t>(at) * pa;  // its bytes' places in the block
        if (i < fine.size()) {
            std::span<const std::uint8_t> bytes = block.subspan(at, part);
            fine[i] =
                std::uint64_t{rolling_sum::mix(pa, part * pa - pw)} << 32 | static_cast<std::uint32_t>(hash64(bytes));
        }
    }
    return rolling_sum::mix(a, static_cast<std::uint32_t>(block.size()) * a - weighted);
}

small_sums describe_small(std::span<const std::uint8_t> basis, std::uint32_t min_block) {
    small_sums out;
    out.block_size = small_block_size(basis.size(), min_block);
    out.blocks.reserve(basis.size() / out.block_size);
    for (std::size_t at = 0; at + out.block_size <= basis.size(); at += out.block_size) {
        out.blocks.push_back(small_block_sum(basis.subspan(at, out.block_size)));
    }
    return out;
}

void put_small_sums(std::string& out, const small_sums& sums) {
    for (std::uint64_t b : sums.blocks) {
        put_le(out, b >> 32, 4);
        put_le(out, b & 0xffffffffu, 4);
    }
}

bool parse_small_sums(std::uint32_t block_size, std::span<const std::uint8_t> bytes, small_sums& out) {
    if (block_size < min_small_block || block_size > max_fine_block || (block_size & (block_size - 1)) != 0 ||
        bytes.empty() || bytes.size() % 8 != 0 || bytes.size() / 8 > max_small_blocks) {
        return false;
    }
    out.block_size = block_size;
    out.blocks.clear();
    out.blocks.reserve(bytes.size() / 8);
    for (std::size_t at = 0; at < bytes.size(); at += 8) {
        out.blocks.push_back(get_le(bytes.data() + at, 4) << 32 | get_le(bytes.data() + at + 4, 4));
    }
    return true;
}

small_index::small_index(small_sums sums)
    : sums_(std::move(sums)),
      filter_mask_(static_cast<std::uint32_t>(std::bit_ceil(std::max<std::size_t>(sums_.blocks.size(), 16))) - 1),
      filter_(filter_mask_ + 1, 0) {
    by_weak_.reserve(sums_.blocks.size());
    for (std::size_t i = 0; i < sums_.blocks.size(); ++i) {
        auto weak = static_cast<std::uint32_t>(sums_.blocks[i] >> 32);
        by_weak_.emplace_back(weak, static_cast<std::uint32_t>(i));
        filter_[weak >> 6 & filter_mask_] |= std::uint64_t{1} << (weak & 63);
    }
    std::sort(by_weak_.begin(), by_weak_.end());
}

std::vector<delta_op> small_delta(std::span<const std::uint8_t> data, const small_sums& sums) {
    return small_delta(data, small_index(sums));
}

std::vector<delta_op> small_delta(std::span<const std::uint8_t> data, const small_index& index) {
    const small_sums& sums = index.sums();
    const std::size_t b = sums.block_size;
    std::vector<delta_op> ops;
    if (b == 0 || sums.blocks.empty() || data.size() < b || data.size() > chunk_size) {
        return ops;
    }
    const auto& by_weak = index.by_weak();
    std::uint64_t literal = 0;
    std::uint64_t copied = 0;
    auto add = [&](std::size_t length, bool copy, std::uint64_t basis_offset) {
        if (!ops.empty() && ops.back().copy == copy &&
            (!copy || ops.back().basis_offset + ops.back().length == basis_offset)) {
            ops.back().length += static_cast<std::uint32_t>(length);  // contiguous: one op
        } else {
            ops.push_back({static_cast<std::uint32_t>(length), copy, basis_offset});
        }
        (copy ? copied : literal) += length;
    };
    std::size_t pos = 0;           // window start
    std::size_t lit_from = 0;      // first byte not yet in an op
    std::uint64_t expect = ~0ull;  // the basis offset that would extend the last copy
    std::uint64_t false_alarms = 0;  // windows whose weak sum matched a block, strong did not
    // Past the slack the window jumps: `stride` bytes ahead, then slides over one block's
    // worth of positions (`sweep_left`), which is enough to meet any block of the older
    // version that lies past the new bytes; the stride doubles while nothing is found. The
    // slack counts from the start, or from where a jump last found blocks.
    const bool may_jump = b <= small_delta_max_probe_block;
    // (Blocks larger than the slack: enough to slide from an insertion to the next block.)
    const std::uint64_t slack = std::max<std::uint64_t>(small_delta_literal_slack, b + 1024);
    const std::size_t min_stride = small_delta_probe_stride;
    std::size_t stride = min_stride;
    std::size_t sweep_left = 0;
    bool probing = false;
    std::uint64_t literal_before = 0;  // literal and copied bytes before the slack's start
    std::uint64_t copied_before = 0;
    // The window's sums, as rolling_sum keeps them, in locals (a register each: the loop
    // is one chain of additions per byte).
    const auto n = static_cast<std::uint32_t>(b);
    std::uint32_t sa = 0;
    std::uint32_t sb = 0;
    auto reset = [&](std::size_t at) {
        std::uint32_t weighted = 0;
        sa = 0;
        add_sums(data.data() + at, n, 0, sa, weighted);
        sb = n * sa - weighted;
    };
    reset(0);
    while (true) {
        std::uint32_t weak = rolling_sum::mix(sa, sb);
        const std::pair<std::uint32_t, std::uint32_t>* found = nullptr;
        if (index.maybe(weak)) {
            auto it = std::lower_bound(by_weak.begin(), by_weak.end(), std::make_pair(weak, std::uint32_t{0}));
            std::uint32_t strong = 0;
            bool hashed = false;
            for (std::size_t n = 0; it != by_weak.end() && it->first == weak && n < 8; ++it, ++n) {
                if (!hashed) {
                    strong = static_cast<std::uint32_t>(hash64(data.subspan(pos, b)));
                    hashed = true;
                }
                if (static_cast<std::uint32_t>(sums.blocks[it->second]) == strong &&
                    (found == nullptr || std::uint64_t{it->second} * b == expect)) {
                    found = &*it;  // the block that extends the last copy, if one does
                }
            }
            false_alarms += hashed && found == nullptr ? 1 : 0;
        }
        if (found != nullptr) {
            std::uint64_t offset = std::uint64_t{found->second} * b;
            std::size_t length = b;
            const bool jumped = probing;
            if (probing) {
                // The bytes jumped over may end with blocks that precede this one in the
                // older version (new bytes inserted, then the older ones again): taken
                // back from the literal, in the same copy.
                while (pos >= lit_from + b && offset >= b &&
                       sums.blocks[offset / b - 1] == small_block_sum(data.subspan(pos - b, b))) {
                    pos -= b;
                    offset -= b;
                    length += b;
                }
                probing = false;
                stride = min_stride;
            }
            if (pos > lit_from) {
                add(pos - lit_from, false, 0);
            }
            if (jumped) {
                literal_before = literal;  // the slack starts again here
                copied_before = copied;
            }
            add(length, true, offset);
            expect = offset + length;
            pos += length;
            lit_from = pos;
            if (pos + b > data.size()) {
                break;
            }
            reset(pos);
            continue;
        }
        if (false_alarms > small_delta_max_false_alarms + ops.size()) {
            break;  // sums that match weakly only: the rest goes literal
        }
        if (!probing && literal - literal_before + (pos - lit_from) > slack + (copied - copied_before)) {
            if (!may_jump) {
                break;  // mostly new bytes: the rest goes literal
            }
            probing = true;  // mostly new bytes: jump from here on
            sweep_left = 0;
        }
        if (probing && sweep_left == 0) {
            if (pos + stride + b <= data.size()) {
                pos += stride;
                stride = std::min(2 * stride, small_delta_max_probe_stride);
                sweep_left = b;
            } else {
                // Too near the end for a whole jump: the last block's worth of positions
                // (or what is left from here), to the end.
                pos = std::max(pos, data.size() + 1 - std::min(data.size() + 1 - pos, 2 * b));
                sweep_left = SIZE_MAX;
            }
            reset(pos);
            continue;
        }
        if (pos + b >= data.size()) {
            break;
        }
        sweep_left -= probing ? 1 : 0;
        const std::uint32_t out = data[pos];
        sa += data[pos + b] - out;
        sb += sa - n * out;
        ++pos;
    }
    if (lit_from < data.size()) {
        add(data.size() - lit_from, false, 0);
    }
    if (copied == 0) {
        ops.clear();
    }
    return ops;
}

edge_lengths edge_literals(std::span<const delta_op> ops, std::uint32_t chunk_len, std::uint32_t block_size) {
    edge_lengths out;
    if (ops.empty()) {
        out.head = chunk_len < block_size ? chunk_len : 0;  // one literal: the head alone
        return out;
    }
    if (!ops.front().copy && ops.front().length < block_size) {
        out.head = ops.front().length;
    }
    if (ops.size() > 1 && !ops.back().copy && ops.back().length < block_size) {
        out.tail = ops.back().length;
    }
    return out;
}

namespace {

// The index of a block of `index` whose sum is `sum` (`prefer` if it is one), or -1.
std::int64_t find_block(const small_index& index, std::uint64_t sum, std::uint64_t prefer) {
    const std::vector<std::uint64_t>& blocks = index.sums().blocks;
    if (prefer < blocks.size() && blocks[prefer] == sum) {
        return static_cast<std::int64_t>(prefer);
    }
    const auto weak = static_cast<std::uint32_t>(sum >> 32);
    if (!index.maybe(weak)) {
        return -1;
    }
    const auto& by_weak = index.by_weak();
    for (auto it = std::lower_bound(by_weak.begin(), by_weak.end(), std::make_pair(weak, std::uint32_t{0}));
         it != by_weak.end() && it->first == weak; ++it) {
        if (blocks[it->second] == sum) {
            return it->second;
        }
    }
    return -1;
}

}  // namespace

void take_edges(std::vector<delta_op>& ops, std::span<const std::uint8_t> data, std::span<const std::uint8_t> before,
                std::span<const std::uint8_t> after, const small_index& index) {
    const std::uint32_t b = index.sums().block_size;
    const auto len = static_cast<std::uint32_t>(data.size());
    const edge_lengths edges = b == 0 ? edge_lengths{} : edge_literals(ops, len, b);
    std::vector<std::uint8_t> window(b);
    if (const std::uint32_t h = edges.head; h > 0 && before.size() >= b - h) {
        // The block's last h bytes begin the chunk; the block before the first copy's, if
        // that is where it is in the older version.
        std::memcpy(window.data(), before.data() + before.size() - (b - h), b - h);
        std::memcpy(window.data() + (b - h), data.data(), h);
        const std::uint64_t next = ops.size() > 1 ? ops[1].basis_offset : 0;
        const std::uint64_t prefer = ops.size() > 1 && next % b == 0 && next > 0 ? next / b - 1 : UINT64_MAX;
        if (std::int64_t j = find_block(index, small_block_sum(window), prefer); j >= 0) {
            const std::uint64_t at = static_cast<std::uint64_t>(j) * b + (b - h);
            if (ops.empty()) {
                ops.push_back({h, true, at});
            } else if (ops.size() > 1 && ops[1].copy && ops[1].basis_offset == at + h) {
                ops[1].basis_offset = at;  // one copy with the next
                ops[1].length += h;
                ops.erase(ops.begin());
            } else if (h >= 8) {
                ops.front() = {h, true, at};  // (a copy op takes 8 bytes more than a literal's)
            }
        }
    }
    if (const std::uint32_t t = edges.tail; t > 0 && after.size() >= b - t) {
        // The block's first t bytes end the chunk; the block after the last copy's, if that
        // is where it is in the older version.
        std::memcpy(window.data(), data.data() + (len - t), t);
        std::memcpy(window.data() + t, after.data(), b - t);
        const delta_op& last = ops[ops.size() - 2];
        const std::uint64_t end = last.basis_offset + last.length;
        const std::uint64_t prefer = last.copy && end % b == 0 ? end / b : UINT64_MAX;
        if (std::int64_t j = find_block(index, small_block_sum(window), prefer); j >= 0) {
            const std::uint64_t at = static_cast<std::uint64_t>(j) * b;
            if (last.copy && end == at) {
                ops[ops.size() - 2].length += t;  // one copy with the one before
                ops.pop_back();
            } else if (t >= 8) {
                ops.back() = {t, true, at};
            }
        }
    }
}

}  // namespace ferry
