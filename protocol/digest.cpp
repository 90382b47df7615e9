#include "protocol/digest.hpp"

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
        for (int i = 0; i < 8; ++i) {
            bytes.push_back(static_cast<std::uint8_t>(d.lo >> (8 * i)));
        }
        for (int i = 0; i < 8; ++i) {
            bytes.push_back(static_cast<std::uint8_t>(d.hi >> (8 * i)));
        }
    }
    return hash_chunk(bytes);
}

}  // namespace ferry
