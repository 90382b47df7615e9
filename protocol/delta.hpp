// Rolling block delta (rsync's algorithm on chunk_size blocks). Pure computation.
//
// The receiver describes the version of a file it has (the basis) by one weak, rolling
// sum and one strong digest (XXH3-128) per chunk_size block. The sender slides a window of
// chunk_size bytes over its own version, one byte at a time where nothing matches, and
// finds those blocks at any offset: a byte inserted near the start shifts every block,
// and each is still found one byte further on. A chunk of the new file is then sent as
// copies of basis bytes and literal bytes (CODEC_DELTA), and the receiver rebuilds it from
// its basis file and checks the chunk's digest as for any chunk.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "protocol/types.hpp"

namespace ferry {

// The weak sum of a window: Adler-style a = sum of x_k, b = sum of (n - k) * x_k (mod
// 2^32), mixed into 32 bits. Sliding it one byte costs a few additions.
class rolling_sum {
public:
    // Over the window `head` then `tail` (a window that spans two buffers).
    void reset(std::span<const std::uint8_t> head, std::span<const std::uint8_t> tail = {});
    // Slides the window one byte: `out` leaves at its start, `in` enters at its end.
    void roll(std::uint8_t out, std::uint8_t in) {
        a_ += static_cast<std::uint32_t>(in) - out;
        b_ += a_ - n_ * out;
    }
    std::uint32_t value() const { return mix(a_, b_); }
    static std::uint32_t mix(std::uint32_t a, std::uint32_t b) {
        std::uint64_t v = (std::uint64_t{a} << 32 | b) * 0x9E3779B97F4A7C15ull;
        return static_cast<std::uint32_t>(v >> 32);
    }

private:
    friend class delta_matcher;  // slides it in a tight loop
    std::uint32_t a_ = 0;
    std::uint32_t b_ = 0;
    std::uint32_t n_ = 0;
};

std::uint32_t weak_sum(std::span<const std::uint8_t> block);

// What the receiver tells of its older version of a file (BasisSums frames): the sums of
// every full block, in order (block i at offset i * chunk_size), and the digest of the
// short block at its end (its last size % chunk_size bytes), when it has one.
struct small_sums;
struct basis_sums {
    std::uint64_t size = 0;
    std::vector<std::uint32_t> weak;
    std::vector<digest128> strong;
    digest128 tail;
    // The same version in small blocks (SmallSums), when worth telling (max_fine_block).
    std::shared_ptr<small_sums> fine;
    std::uint64_t tail_length() const { return size % chunk_size; }
    // The digest of the older version's block at chunk index `c` (the short block's just
    // past the last full one), if it has one there.
    std::optional<digest128> block_digest(std::uint64_t c) const {
        if (c < strong.size()) {
            return strong[c];
        }
        if (c == strong.size() && tail_length() > 0) {
            return tail;
        }
        return std::nullopt;
    }
};

// Full blocks of a basis that a receiver may describe for a new version of `new_size`
// bytes (and a sender accepts): what a delta can use, bounded by the new file's size so
// that a peer cannot make the other side hold more than a few bytes per chunk of it.
constexpr std::uint64_t max_basis_blocks(std::uint64_t new_size) { return 2 * (new_size / chunk_size) + 64; }

// One full block (chunk_size bytes) of the basis, at `offset` in it.
struct basis_block {
    std::uint32_t weak = 0;
    digest128 strong;
    std::uint64_t offset = 0;
};

// The basis blocks looked up by weak sum (behind a bit filter, since most windows match
// nothing) and by strong digest. Blocks with the same sums are kept once, and at most
// max_per_weak blocks share a weak sum (each candidate costs a strong hash of a window).
class block_index {
public:
    explicit block_index(std::vector<basis_block> blocks);
    bool empty() const { return blocks_.empty(); }
    bool maybe(std::uint32_t weak) const { return (filter_[weak >> 6 & filter_mask] >> (weak & 63)) & 1; }
    // The blocks with this weak sum.
    std::span<const basis_block> with_weak(std::uint32_t weak) const;
    // A block with this strong digest, or null.
    const basis_block* with_strong(const digest128& strong) const;

    static constexpr std::size_t max_per_weak = 4;

private:
    static constexpr std::uint32_t filter_mask = (1u << 14) - 1;  // 2^20 bits
    std::vector<basis_block> blocks_;                              // by weak sum
    std::vector<std::uint64_t> filter_;
    std::vector<std::uint32_t> by_strong_;  // indexes into blocks_, by strong digest
};

// Basis bytes found in the new file: new[at, at + length) = basis[basis_offset, ...).
struct block_match {
    std::uint64_t at = 0;
    std::uint64_t basis_offset = 0;
    std::uint64_t length = chunk_size;
};

// Finds basis blocks in a file fed to it chunk by chunk, in order. Holds one chunk of
// its own (the window spans the previous chunk and the current one).
class delta_matcher {
public:
    // Fed from chunk `first_chunk` of the file on (a pass split in parts: each part's
    // matcher finds nothing that starts before its first chunk).
    explicit delta_matcher(const block_index& index, std::uint64_t first_chunk = 0)
        : index_(index), k_(first_chunk), p_(first_chunk * chunk_size) {}
    // The file's next chunk (chunk_size bytes, the last one possibly fewer) and its
    // XXH3-128: a chunk equal to a basis block is found without rolling.
    void feed(std::span<const std::uint8_t> chunk, const digest128& digest);
    // As feed(), for a chunk in the first `len` bytes of `buf` (chunk_size bytes long),
    // without a copy: `buf` becomes the matcher's previous chunk and gets back a buffer
    // of the same size, to read the next chunk into.
    void feed(std::vector<std::uint8_t>& buf, std::size_t len, const digest128& digest);
    // After the last chunk: the basis's short last block (`want`, at `basis_offset`) is
    // looked for at the very end of the file, whose last bytes are `tail` (as long as
    // that block), unless a match already covers them.
    void match_tail(std::span<const std::uint8_t> tail, std::uint64_t file_size, const digest128& want,
                    std::uint64_t basis_offset) {
        match_tail(matches_, tail, file_size, want, basis_offset);
    }
    // The same over `matches` (the merged matches of a pass made in parts).
    static void match_tail(std::vector<block_match>& matches, std::span<const std::uint8_t> tail,
                           std::uint64_t file_size, const digest128& want, std::uint64_t basis_offset);
    // The blocks found, by position, never overlapping.
    const std::vector<block_match>& matches() const { return matches_; }
    std::vector<block_match> take_matches() { return std::move(matches_); }
    // Bytes the window slid over one at a time (what found nothing at once).
    std::uint64_t rolled_bytes() const { return rolled_; }
    // Windows whose weak sum matched a block but whose strong digest did not. Past
    // max_false_alarms more than there are matches (a degenerate basis, or a hostile peer's
    // sums), the window stops sliding: only chunks equal to a block are found from then on.
    std::uint64_t false_alarms() const { return false_alarms_; }
    static constexpr std::uint64_t max_false_alarms = 256;

private:
    // feed() but for keeping the chunk as prev_.
    void look(std::span<const std::uint8_t> chunk, const digest128& digest);
    // The window at p_ as two spans: the part in prev_ and the part in the current chunk.
    bool try_match(std::span<const std::uint8_t> head, std::span<const std::uint8_t> tail);

    const block_index& index_;
    std::vector<std::uint8_t> prev_;  // the previous chunk (full)
    std::uint64_t k_ = 0;             // index of the chunk being fed
    std::uint64_t p_ = 0;             // next window start to look at
    bool fresh_ = true;               // the rolling sum is not the window at p_
    rolling_sum sum_;
    std::uint64_t rolled_ = 0;
    std::uint64_t false_alarms_ = 0;
    bool sliding_ = true;             // false once false alarms pass the bound
    std::vector<block_match> matches_;
};

// A pass over a file made in parts, each by its own matcher (constructed at the part's
// first chunk) fed one chunk past the part's end, so that a block straddling two parts
// is found too: adds the matches of the next part to `into` (the earlier parts', in
// file order), without those that start at or past `end` (the part's end, in bytes:
// the next part's own) or lie inside one already there; one that overlaps the last
// one there keeps the bytes past it (a match may be shorter than a block).
void append_part_matches(std::vector<block_match>& into, std::span<const block_match> part, std::uint64_t end);

// One step of rebuilding a chunk: `length` bytes copied from the basis at
// `basis_offset`, or `length` literal bytes.
struct delta_op {
    std::uint32_t length = 0;
    bool copy = false;
    std::uint64_t basis_offset = 0;
};

// The ops that make the chunk at `chunk_offset` (`chunk_len` bytes) from `matches`: a copy
// where a match covers it (copies of contiguous basis bytes merged), literals between.
std::vector<delta_op> chunk_ops(std::span<const block_match> matches, std::uint64_t chunk_offset,
                                std::uint32_t chunk_len);
// Bytes of the chunk those ops copy.
std::uint64_t copied_bytes(std::span<const delta_op> ops);

// The CODEC_DELTA payload: per op a 32-bit little-endian (length << 1 | copy), then for a
// copy the 64-bit basis offset, for a literal its bytes (taken from `chunk`, the chunk's
// raw bytes). Writes at most `cap` bytes into `out`; returns the size, or 0 when it would
// not fit.
std::size_t encode_delta(std::span<const delta_op> ops, std::span<const std::uint8_t> chunk, std::uint8_t* out,
                         std::size_t cap);

// ChunkRun frames (protocol 20): chunks made of copies alone, up to max_run_chunks of one
// file in one frame, each told by its digest and its ops (at most max_run_ops copies: a
// chunk_size block found at any offset makes a chunk of one or two, the short block at the
// end one more).
inline constexpr std::uint32_t max_run_chunks = 64;
inline constexpr std::size_t max_run_ops = 4;
inline constexpr std::size_t max_run_entry = 16 + 2 + max_run_ops * 12;
inline constexpr std::size_t max_run_payload = max_run_chunks * max_run_entry;

// Writes one chunk's entry of a ChunkRun payload at `out` (room for max_run_entry bytes):
// its digest, the length of its ops, its ops. Returns the bytes written, or 0 when the ops
// are not copies alone, are more than max_run_ops, do not make `raw_len` bytes, or take
// as many bytes as the chunk (a short last chunk: a CODEC_DELTA payload is smaller).
std::size_t encode_run_entry(digest128 digest, std::span<const delta_op> ops, std::uint32_t raw_len, std::uint8_t* out);

// One chunk of a ChunkRun payload: its digest, and its ops (a CODEC_DELTA payload).
struct run_entry {
    digest128 digest;
    std::span<const std::uint8_t> ops;
};

// Splits a ChunkRun payload into its `count` entries (count 2 to max_run_chunks). False
// when it is malformed: an entry cut short, ops of no bytes or of more than max_run_ops
// copies' worth, or bytes after the last entry. (Each entry's ops are checked as that
// chunk's CODEC_DELTA payload is: decode_delta.)
bool split_run(std::span<const std::uint8_t> payload, std::uint32_t count, std::vector<run_entry>& out);

// A decoded op: where its bytes go in the chunk and, for a literal, where they are in the
// payload.
struct delta_piece {
    std::uint32_t at = 0;
    std::uint32_t length = 0;
    bool copy = false;
    std::uint64_t basis_offset = 0;  // copy
    std::uint32_t literal_at = 0;    // literal: offset in the payload
};

// Parses a CODEC_DELTA payload for a chunk of `raw_len` bytes from a basis of `basis_size`
// bytes. False (with `out` unspecified) when it is malformed: ops of length 0, lengths
// that do not add up to raw_len, a truncated op or literal, bytes after the last op, or a
// copy reaching past the basis.
bool decode_delta(std::span<const std::uint8_t> payload, std::uint32_t raw_len, std::uint64_t basis_size,
                  std::vector<delta_piece>& out);

// Small files (protocol 16): a changed file of at most four chunks, which the receiver has
// another version of at its path, is told by that version's sums of much smaller blocks
// (SmallSums frames), so that an edit costs about a block instead of the whole file. The
// sender matches them over each chunk in memory and sends CODEC_DELTA copies from that
// version; the receiver rebuilds the chunk from its file at the path.
struct small_sums {
    std::uint32_t block_size = 0;
    // Per full block of the older version, in order: the weak sum (high 32 bits) and the
    // low 32 bits of the block's XXH3-64 (the strong sum). Each block is at
    // index * block_size in that version.
    std::vector<std::uint64_t> blocks;
};

// Sizes (of the older version and of the new one) that small sums are for: smaller files
// cost little to send whole, and an older version is read into memory (its first
// small_delta_max_basis bytes, when it is larger).
inline constexpr std::uint64_t small_delta_min_size = 1024;
inline constexpr std::uint64_t small_delta_max_basis = 4 * chunk_size;
inline constexpr std::uint32_t min_small_block = 256;  // (protocol 19; 1 KiB before)
// An older version of the same size as the new one was most likely only touched, or
// overwritten in place, and then its sums are most of what travels: blocks of at least
// this many bytes (sums of 1.6 % of its size; 3.1 % with 256-byte blocks).
inline constexpr std::uint32_t same_size_min_block = 512;
inline constexpr std::size_t max_small_blocks = 32768;  // (protocol 19; 16,384 in 18, 4,096 before)
// A larger file's older version (the block delta's basis, BasisSums) is told in small
// blocks too, when they are at most this large (a version of at most 2 GiB): the sender
// matches them over the chunks that its pass over chunk_size blocks leaves with new bytes.
inline constexpr std::uint32_t max_fine_block = 64 * 1024;

// The block size for an older version of `basis_size` bytes: the largest power of two
// from `min_block` (min_small_block or more) up to small_delta_max_probe_block whose
// square is at most twice `basis_size` (the nearest to its square root: 2 KiB from
// 2 MiB, 4 KiB from 8 MiB, 8 KiB from 32 MiB), up to 1 KiB the nearest to twice its
// square root (512 bytes from 32 KiB, 1 KiB from 128 KiB), or, where that makes more
// than max_small_blocks blocks, the smallest power of two that makes at most that many.
std::uint32_t small_block_size(std::uint64_t basis_size, std::uint32_t min_block = min_small_block);

// Blocks a sender takes for a file of `new_size` bytes (a basis much larger than the new
// version is of little use): a receiver cannot make it hold more than 64 bytes of sums
// per KiB of the files it sends (with 256-byte blocks; 16 with 1 KiB ones).
constexpr std::uint64_t max_small_blocks_for(std::uint64_t new_size, std::uint32_t block_size) {
    const std::uint64_t bound = 2 * (new_size / block_size) + 16;
    return bound < max_small_blocks ? bound : max_small_blocks;
}

// One block's entry in small_sums::blocks.
std::uint64_t small_block_sum(std::span<const std::uint8_t> block);

// weak_sum(block), made from the sums of its parts of `part` bytes (block.size() a
// multiple of it), whose small_block_sum goes into `fine` (its first ones: as many as it
// holds): one pass over the bytes for both.
std::uint32_t weak_sum_and_small(std::span<const std::uint8_t> block, std::uint32_t part,
                                 std::span<std::uint64_t> fine);

// The sums of `basis` (the receiver's older version) in blocks of
// small_block_size(its size, min_block).
small_sums describe_small(std::span<const std::uint8_t> basis, std::uint32_t min_block = min_small_block);

// One file's part of a SmallSums payload: 8 bytes per block, little endian, the weak sum
// first (appended to `out`).
void put_small_sums(std::string& out, const small_sums& sums);
// Parses one file's part of a SmallSums frame as a receiver may send it: a block size that
// is a power of two from min_small_block to max_fine_block, 1 to max_small_blocks blocks of 8
// bytes (the sender bounds them further by its file's size: max_small_blocks_for). False
// when it is not.
bool parse_small_sums(std::uint32_t block_size, std::span<const std::uint8_t> bytes, small_sums& out);

// Small sums looked up by weak sum (behind a bit filter): built once per file.
class small_index {
  public:
    explicit small_index(small_sums sums);
    const small_sums& sums() const { return sums_; }
    // (weak sum, block index), sorted.
    const std::vector<std::pair<std::uint32_t, std::uint32_t>>& by_weak() const { return by_weak_; }
    bool maybe(std::uint32_t weak) const { return (filter_[weak >> 6 & filter_mask_] >> (weak & 63)) & 1; }

  private:
    small_sums sums_;
    std::uint32_t filter_mask_ = 0;  // 64 bits per block (at least 16 words): 1.6 % set
    std::vector<std::pair<std::uint32_t, std::uint32_t>> by_weak_;
    std::vector<std::uint64_t> filter_;
};

// The ops that make `data` (one chunk of the new version) from the blocks of `sums`, or
// none when no block is found. The window slides one byte at a time where nothing
// matches until the bytes left literal pass small_delta_literal_slack plus those found in
// blocks. From there, with blocks of at most small_delta_max_probe_block, it jumps:
// small_delta_probe_stride bytes ahead (doubling up to small_delta_max_probe_stride while
// nothing is found; near the chunk's end, to its last blocks), then slides over one
// block's worth of positions, which meets any block of the older version lying past the
// new bytes. The blocks just before one found so are taken back from the literal, and the
// slack counts from there again. So a rewritten chunk costs about 16 KiB of sliding plus
// two blocks' worth per jump (six jumps in 256 KiB), and new bytes inserted cost about
// their length and a block or two, however many. With larger blocks the rest of the chunk
// is literal instead, and the slack is at least a block and 1 KiB (so that a few bytes
// inserted in a chunk's first block do not cost the rest of it). The sliding stops for good once
// small_delta_max_false_alarms windows (plus one per op) matched a weak sum but not its strong one.
inline constexpr std::uint64_t small_delta_literal_slack = 16 * 1024;
inline constexpr std::size_t small_delta_probe_stride = 8 * 1024;
inline constexpr std::size_t small_delta_max_probe_stride = 64 * 1024;
inline constexpr std::size_t small_delta_max_probe_block = 8 * 1024;
// A sender's second bound on a file's small sums, beside max_small_blocks_for: no more
// blocks of `block_size` than small_block_size ever makes of that size (under
// small_delta_max_probe_block: fewer than twice the block size in bytes, whatever the
// version's size and the least block asked for), plus 16. So small blocks come only in
// small numbers (at most 528 blocks of 256 bytes, 4 KiB of sums).
constexpr std::uint64_t max_small_blocks_of(std::uint32_t block_size) {
    return block_size < small_delta_max_probe_block ? 2 * std::uint64_t{block_size} + 16 : max_small_blocks;
}
inline constexpr std::uint64_t small_delta_max_false_alarms = 256;
std::vector<delta_op> small_delta(std::span<const std::uint8_t> data, const small_index& index);
std::vector<delta_op> small_delta(std::span<const std::uint8_t> data, const small_sums& sums);  // (builds an index)

// A chunk's edges. Bytes inserted or removed earlier in a file shift every later block of
// the older version off the chunks' edges: a chunk then ends with the first part of a
// block (too short for small_delta's window) and the next one starts with the rest. Where
// `ops` (from small_delta, or the pass over chunk_size blocks) start or end with a literal
// shorter than a block, `edge_literals` gives its length (0: none). With `before` (the
// bytes just before the chunk: at least a block less the first literal's length) or
// `after` (just after it: a block less the last literal's length), `take_edges` makes
// that literal a copy where the block it is part of is one of `index`'s, checked by its
// sum (one copy with the copy next to it where they meet; a literal under 8 bytes that
// would be a copy of its own stays, a copy op taking 8 bytes more). No ops stand for one
// literal of the whole chunk when it is shorter than a block (a file's last chunk). The
// receiver's digest check of the chunk covers these copies as any others.
struct edge_lengths {
    std::uint32_t head = 0;
    std::uint32_t tail = 0;
};
edge_lengths edge_literals(std::span<const delta_op> ops, std::uint32_t chunk_len, std::uint32_t block_size);
void take_edges(std::vector<delta_op>& ops, std::span<const std::uint8_t> data, std::span<const std::uint8_t> before,
                std::span<const std::uint8_t> after, const small_index& index);

}  // namespace ferry
