// XXH3-128 chunk hashes and the file digest (XXH3-128 over the chunk digests in index
// order), which both sides compute without reading a file twice. Pure computation.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "protocol/types.hpp"

namespace ferry {

digest128 hash_chunk(std::span<const std::uint8_t> bytes);
// XXH3-64 of `bytes` (the strong sum of a small file's block, protocol/delta.hpp).
std::uint64_t hash64(std::span<const std::uint8_t> bytes);
// hash_chunk of `head` followed by `tail` (a window that spans two buffers).
digest128 hash_parts(std::span<const std::uint8_t> head, std::span<const std::uint8_t> tail);

// Digest of a whole file from its chunk digests (index order). An empty file has the
// digest of the empty list.
digest128 file_digest(std::span<const digest128> chunk_digests);

}  // namespace ferry
