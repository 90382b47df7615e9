#include "protocol/digest.hpp"

#include "protocol/le_bytes.hpp"

#define XXH_INLINE_ALL
#include <xxhash.h>

namespace ferry {

digest128 hash_chunk(std::span<const std::uint8_t> bytes) {
    XXH128_hash_t h = XXH3_128bits(bytes.data(), bytes.size());
    return {h.low64, h.high64};
}

digest128 file_digest(std::span<const digest128> chunk_digests) {
    // Little-endian (lo, hi) pairs, so both ends agree whatever the host order.
    std::vector<std::uint8_t> bytes;
    bytes.reserve(chunk_digests.size() * 16);
    for (const digest128& d : chunk_digests) {
        put_digest(bytes, d);
    }
    return hash_chunk(bytes);
}

}  // namespace ferry
