// The receiver's resume record for one partial file: which chunks it wrote and their
// digests, and which source version (size, mtime) they came from. Pure encode/decode;
// node/ writes it beside the partial file, after the data it lists is on disk.
//
// Layout (little endian): "FERRYRS1" | u32 chunk_size | u64 size | i64 mtime_ns |
// bitmap ((chunks + 7) / 8 bytes, bit i = chunk i) | 16-byte digest (lo, hi) per set bit,
// in index order | XXH3-128 of everything before it (lo, hi).
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "protocol/transfer.hpp"
#include "protocol/types.hpp"

namespace ferry {

struct resume_state {
    std::uint64_t size = 0;     // the source file's size
    std::int64_t mtime_ns = 0;  // and mtime, as offered
    chunk_bitmap have;          // chunk_count(size) bits
    std::vector<digest128> digests;  // chunk_count(size) entries; only those with a set bit count

    // True if this record is about the file offered with `size` and `mtime_ns`.
    bool same_source(std::uint64_t s, std::int64_t m) const { return size == s && mtime_ns == m; }
};

std::string encode_resume_state(const resume_state& state);

// nullopt for anything that is not a whole, intact record of this format (truncated,
// corrupted, another chunk size, a bitmap that does not fit the size); `why` says which.
std::optional<resume_state> decode_resume_state(std::string_view bytes, std::string* why = nullptr);

}  // namespace ferry
