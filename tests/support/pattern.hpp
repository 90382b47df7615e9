// Deterministic pseudo-random bytes for tests (header-only, so tests of any layer can
// use it, including protocol/ tests that do not link the support library).
#pragma once

#include <cstddef>
#include <cstdint>
#include <random>
#include <vector>

namespace ferry::test {

inline std::vector<std::uint8_t> pattern_bytes(std::size_t n, std::uint32_t seed) {
    std::vector<std::uint8_t> out(n);
    std::mt19937 rng(seed);
    for (auto& b : out) {
        b = static_cast<std::uint8_t>(rng());
    }
    return out;
}

}  // namespace ferry::test
