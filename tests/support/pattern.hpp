// Deterministic pseudo-random bytes for tests (header-only, so tests of any layer can
// use it, including protocol/ tests that do not link the support library).
#pragma once

#include <cstddef>
#include <cstdint>
#include <random>
#include <string>
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

// About `n` bytes of words drawn from 4,000 made-up ones: ordinary text to a compressor
// (zstd level 1 shrinks it 2.3x at text speed, not the near-free kind of repeated lines).
inline std::string pattern_words(std::size_t n, std::uint32_t seed) {
    std::mt19937 rng(seed);
    std::vector<std::string> words(4000);
    for (auto& w : words) {
        w.resize(3 + rng() % 7);
        for (auto& c : w) {
            c = static_cast<char>('a' + rng() % 26);
        }
    }
    std::string out;
    while (out.size() < n) {
        out += words[rng() % words.size()];
        out += ' ';
    }
    out.resize(n);
    return out;
}

}  // namespace ferry::test
