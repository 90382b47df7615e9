// Strong types and constants shared by every layer of ferry.
//
// Pure values: no I/O, no threads. Indices and ids are distinct types so that a chunk
// index can never be passed where a file id is expected.
#pragma once

#include <compare>
#include <cstddef>
#include <cstdint>
#include <functional>

namespace ferry {

// A strongly typed integer: same layout as the raw value, no implicit conversions.
template <typename Tag, typename Rep>
struct strong_int {
    Rep value{};

    constexpr strong_int() = default;
    constexpr explicit strong_int(Rep v) : value(v) {}
    constexpr auto operator<=>(const strong_int&) const = default;
};

struct file_id_tag {};
struct chunk_index_tag {};
using file_id = strong_int<file_id_tag, std::uint32_t>;
using chunk_index = strong_int<chunk_index_tag, std::uint32_t>;

// Wire protocol version carried in Hello; bumped on any incompatible change.
// 2: HaveDigests (resume); 3: sync to shares; 4: delta; 5: pull; 6: --checksum, --bwlimit;
// 7: symlinks; 8: paths as bytes, SyncTarget.keep; 9: SyncTarget.get (ferry get), Hello.list
// (ferry ls); 10: SyncTarget.range_* and ListRequest.checksum (ferry get --from); 11: Offer
// entries in path order (wire_path_less), the receiver refuses any other; 12: an exclude
// pattern's trailing "/**" holds what is inside wherever an earlier "**" stood for no folder
// ("**/build/**" holds build/x): both sides must read patterns alike, or --delete removes
// what the sender left out; 13: a sender answers the receiver's Ping with a Pong (a
// receiver asks when another transfer wants files the sender's transfer claims); 14:
// Offer.keep (a sync's paths DST keeps, found by a scan still going when its first batch
// went): a receiver that ignored them would delete them; 15: an Offer batch may come as a
// Packed frame (zstd), which an older receiver would refuse as an unknown message, and an
// Accept tells unchanged entries by a bit each (Accept.unchanged); 16: SmallSums frames (a
// changed file's older version in small blocks) and chunks sent as CODEC_DELTA of them,
// for files under 4 chunks (two commits of 2026-12-07 only); 17: SmallSums for a block
// delta's older version too, and bounded as max_small_blocks_for says (a 16 peer refuses
// those, and sends more blocks than a 17 one takes); 18: up to 16,384 small blocks a file
// (4,096 before), so that versions up to 1 GiB are told in blocks of at most 64 KiB (a 17
// peer refuses more than 4,096); 19: small blocks from 256 bytes (1 KiB before), for
// files from 1 KiB (2 KiB before), and up to 32,768 of them (versions up to 2 GiB; an 18
// peer refuses blocks under 1 KiB and more than 16,384); 20: ChunkRun frames (a run of
// chunks made of copies alone in one frame, which a 19 peer refuses as an unknown message)
// and FileAccept.have_from_basis (no HaveDigests where BasisSums tell the same digests: a
// 19 peer would miss them).
inline constexpr std::uint32_t protocol_version = 20;

// Chunk size on the wire: 256 KiB (the last chunk of a file is shorter).
inline constexpr std::uint32_t chunk_size = 256 * 1024;

// Frame limits, checked before anything is allocated.
inline constexpr std::uint32_t max_header_len = 64 * 1024;
inline constexpr std::uint32_t max_payload_len = 1024 * 1024;

// Offer batches are kept well under max_header_len.
inline constexpr std::size_t offer_batch_bytes = 48 * 1024;
inline constexpr std::size_t first_offer_batch_bytes = 4 * 1024;  // the first batch only

// Connections per peer session.
inline constexpr std::uint32_t default_connections = 4;
inline constexpr std::uint32_t max_connections = 16;

// Default limits for one transfer.
inline constexpr std::uint64_t max_files_per_transfer = 10'000'000;
// A path the kernel takes whole (PATH_MAX, 4096, counts the NUL): a sender opens a file by
// its wire path below SRC. (4096 until protocol 11: such a path was scanned, then failed
// to open as if it had changed.)
inline constexpr std::size_t max_path_bytes = 4095;
inline constexpr std::size_t max_name_bytes = 255;

// Number of chunks in a file of `size` bytes (0 for an empty file). Written so that it
// cannot wrap: a peer's size near 2^64 has about 2^46 chunks, not 0.
constexpr std::uint64_t chunk_count(std::uint64_t size) { return size / chunk_size + (size % chunk_size != 0 ? 1 : 0); }

// Raw length of chunk `index` in a file of `size` bytes.
constexpr std::uint32_t chunk_length(std::uint64_t size, std::uint64_t index) {
    std::uint64_t off = index * chunk_size;
    if (off >= size) {
        return 0;
    }
    std::uint64_t left = size - off;
    return left < chunk_size ? static_cast<std::uint32_t>(left) : chunk_size;
}

// A 128-bit digest (XXH3-128), as two 64-bit halves.
struct digest128 {
    std::uint64_t lo = 0;
    std::uint64_t hi = 0;
    constexpr auto operator<=>(const digest128&) const = default;
};

// Key of one chunk of one transfer: (file << 32) | index, as carried in ChunkAck.
constexpr std::uint64_t chunk_key(file_id f, chunk_index c) {
    return (std::uint64_t{f.value} << 32) | c.value;
}
constexpr file_id chunk_key_file(std::uint64_t key) { return file_id{static_cast<std::uint32_t>(key >> 32)}; }
constexpr chunk_index chunk_key_index(std::uint64_t key) {
    return chunk_index{static_cast<std::uint32_t>(key & 0xffffffffu)};
}

}  // namespace ferry

template <typename Tag, typename Rep>
struct std::hash<ferry::strong_int<Tag, Rep>> {
    std::size_t operator()(const ferry::strong_int<Tag, Rep>& v) const noexcept { return std::hash<Rep>{}(v.value); }
};
