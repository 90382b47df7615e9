#include "protocol/digest.hpp"

#include "protocol/le_bytes.hpp"

#include <array>
#include <vector>

#if FERRY_XXH_DISPATCH
#define XXH_STATIC_LINKING_ONLY  // XXH3_state_t on the stack
#include <xxhash.h>
#include <xxh_x86dispatch.h>
#else
#define XXH_INLINE_ALL
#include <xxhash.h>
#endif

namespace ferry {

namespace {

// Writes bytes one after another from `at` (put_le's output, into room already there).
struct byte_cursor {
    using value_type = std::uint8_t;
    std::uint8_t* at;
    void push_back(std::uint8_t b) { *at++ = b; }
};

}  // namespace

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

std::uint64_t hash64(std::span<const std::uint8_t> bytes) {
#if FERRY_XXH_DISPATCH
    return XXH3_64bits_dispatch(bytes.data(), bytes.size());
#else
    return XXH3_64bits(bytes.data(), bytes.size());
#endif
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
    // Little-endian (lo, hi) pairs, so both ends agree whatever the host order. A file of
    // up to 64 chunks (16 MiB: most files, each hashed so two or three times) takes no
    // allocation.
    constexpr std::size_t inline_chunks = 64;
    std::array<std::uint8_t, inline_chunks * 16> small;
    std::vector<std::uint8_t> big;
    std::uint8_t* bytes = small.data();
    if (chunk_digests.size() > inline_chunks) {
        big.resize(chunk_digests.size() * 16);
        bytes = big.data();
    }
    byte_cursor out{bytes};
    for (const digest128& d : chunk_digests) {
        put_digest(out, d);
    }
    return hash_chunk({bytes, chunk_digests.size() * 16});
}

}  // namespace ferry
