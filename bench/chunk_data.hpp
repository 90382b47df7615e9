// Deterministic 256 KiB chunks of three kinds of data for the compression benchmarks:
// random (already compressed media or archives), text (logs and sources), zero (sparse
// images, fresh disk images). Generated from fixed seeds, so every run sees the same bytes.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <iterator>
#include <random>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include <benchmark/benchmark.h>

#include "protocol/types.hpp"
#include "tests/support/pattern.hpp"

namespace ferry::bench {

enum class data_kind { random, text, zero };

inline constexpr data_kind all_data_kinds[] = {data_kind::random, data_kind::text, data_kind::zero};

// Log-like lines: timestamps, words from a small vocabulary, hex ids and numbers. zstd
// compresses it about as fast as real sources and licence texts, at a lower ratio (3x
// rather than 4.5x at level 1).
inline std::vector<std::uint8_t> text_bytes(std::size_t n, std::uint32_t seed) {
    static constexpr std::string_view words[] = {
        "chunk",    "file",   "transfer", "peer",   "connection", "accepted", "sent",  "received",
        "verified", "digest", "offset",   "length", "window",     "queue",    "flush", "error",
        "timeout",  "retry",  "session",  "node",   "share",      "folder",   "path",  "bytes",
        "the",      "a",      "of",       "to",     "and",        "in",       "is",    "for",
    };
    std::mt19937 rng(seed);
    std::string out;
    out.reserve(n + 256);
    std::uint64_t t = 1'700'000'000'000;
    while (out.size() < n) {
        t += rng() % 5000;
        out += std::to_string(t);
        out += (rng() % 8 == 0) ? " WARN " : " INFO ";
        int count = 4 + static_cast<int>(rng() % 10);
        for (int i = 0; i < count; ++i) {
            out += words[rng() % std::size(words)];
            out += ' ';
        }
        char tail[32];
        std::snprintf(tail, sizeof tail, "id=%08x n=%u\n", static_cast<unsigned>(rng()),
                      static_cast<unsigned>(rng() % 100000));
        out += tail;
    }
    return {out.begin(), out.begin() + static_cast<std::ptrdiff_t>(n)};
}

// One whole chunk (chunk_size bytes) of the given kind.
inline const std::vector<std::uint8_t>& chunk_of(data_kind kind) {
    static const std::vector<std::uint8_t> random = test::pattern_bytes(chunk_size, 1);
    static const std::vector<std::uint8_t> text = text_bytes(chunk_size, 2);
    static const std::vector<std::uint8_t> zero(chunk_size, 0);
    switch (kind) {
        case data_kind::random:
            return random;
        case data_kind::text:
            return text;
        case data_kind::zero:
            return zero;
    }
    return zero;
}

inline const char* name_of(data_kind kind) {
    switch (kind) {
        case data_kind::random:
            return "random";
        case data_kind::text:
            return "text";
        case data_kind::zero:
            return "zero";
    }
    return "?";
}

// Registers PREFIX_compress/KIND/level:L for every kind of data and level, and
// PREFIX_decompress/... for the kinds that shrink (random data is never sent compressed).
// `compress` and `decompress` take (benchmark::State&, data_kind, int level).
template <typename Compress, typename Decompress>
bool register_codec_benchmarks(const std::string& prefix, std::span<const int> levels, Compress compress,
                               Decompress decompress) {
    for (data_kind kind : all_data_kinds) {
        for (int level : levels) {
            std::string suffix = std::string("/") + name_of(kind) + "/level:" + std::to_string(level);
            benchmark::RegisterBenchmark((prefix + "_compress" + suffix).c_str(),
                                         [=](benchmark::State& s) { compress(s, kind, level); });
            if (kind != data_kind::random) {
                benchmark::RegisterBenchmark((prefix + "_decompress" + suffix).c_str(),
                                             [=](benchmark::State& s) { decompress(s, kind, level); });
            }
        }
    }
    return true;
}

}  // namespace ferry::bench
