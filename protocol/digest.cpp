#include "protocol/digest.hpp"

#include "protocol/le_bytes.hpp"

#if FERRY_XXH_DISPATCH
#define XXH_STATIC_LINKING_ONLY  // XXH3_state_t on the stack
#include <xxhash.h>
#include <xxh_x86dispatch.h>
#else
#define XXH_INLINE_ALL
#include <xxhash.h>
#endif

namespace ferry {

digest128 hash_chunk(std::span<const std::uint8_t> bytes) {
#if FERRY_XXH_DISPATCH
    // The library picks AVX-512, AVX2 or SSE2 at run time (the header alone, inlined,
    // compiles for the baseline x86-64: SSE2, about half the speed on long inputs).
    XXH128_hash_t h = XXH3_128bits_dispatch(bytes.data(), bytes.size());
#else
    XXH128_hash_t h = XXH3_128bits(bytes.data(), bytes.size());
#endif
    return {h.low64, h.high64};
}

digest128 hash_parts(std::span<const std::uint8_t> head, std::span<const std::uint8_t> tail) {
    if (tail.empty()) {
        return hash_chunk(head);
    }
    XXH3_state_t state;
    XXH3_INITSTATE(&state);
    XXH3_128bits_reset(&state);
    XXH3_128bits_update(&state, head.data(), head.size());
    XXH3_128bits_update(&state, tail.data(), tail.size());
    XXH128_hash_t h = XXH3_128bits_digest(&state);
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
