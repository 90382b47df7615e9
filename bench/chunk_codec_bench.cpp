// Micro benchmarks of ferry's per-chunk codec (node/chunk_codec.hpp) as the worker pool
// runs it: compress_chunk() on a freshly read 256 KiB chunk at the two levels the
// compression policy picks (1 and 3), and decompress_chunk() on what it produced.
//
// compress_chunk() compresses in place, so the chunk is restored before each iteration,
// outside the timing (as pread refills it in a transfer). On random data the call is a
// failed attempt: zstd runs out of its one-byte-smaller output buffer and the chunk is
// sent raw; "shrunk" says whether the chunk was replaced. Bytes/s counts raw bytes on one
// core; "ratio" is raw / payload sent.
#include <benchmark/benchmark.h>

#include <cstdint>
#include <cstring>
#include <span>
#include <string>
#include <vector>

#include "chunk_data.hpp"
#include "micro_main.hpp"
#include "node/chunk_codec.hpp"

namespace ferry {
namespace {

using bench::data_kind;

constexpr int levels[] = {1, 3};

void compress(benchmark::State& state, data_kind kind, int level) {
    const std::vector<std::uint8_t>& src = bench::chunk_of(kind);
    std::vector<std::uint8_t> chunk(src.size());
    compressed_chunk r;
    for (auto _ : state) {
        state.PauseTiming();
        std::memcpy(chunk.data(), src.data(), src.size());
        state.ResumeTiming();
        r = compress_chunk(chunk, level);
        benchmark::DoNotOptimize(chunk.data());
    }
    state.counters["shrunk"] = r.size > 0 ? 1.0 : 0.0;
    state.counters["ratio"] = static_cast<double>(src.size()) / static_cast<double>(r.size > 0 ? r.size : src.size());
    state.SetBytesProcessed(state.iterations() * static_cast<std::int64_t>(src.size()));
}

void decompress(benchmark::State& state, data_kind kind, int level) {
    const std::vector<std::uint8_t>& src = bench::chunk_of(kind);
    std::vector<std::uint8_t> payload = src;
    compressed_chunk r = compress_chunk(payload, level);
    if (r.size == 0) {
        state.SkipWithError("the chunk does not shrink");
        return;
    }
    payload.resize(r.size);
    for (auto _ : state) {
        std::span<const std::uint8_t> out = decompress_chunk(payload, src.size());
        if (out.size() != src.size()) {
            state.SkipWithError("decompression failed");
            return;
        }
        benchmark::DoNotOptimize(out.data());
    }
    state.counters["ratio"] = static_cast<double>(src.size()) / static_cast<double>(r.size);
    state.SetBytesProcessed(state.iterations() * static_cast<std::int64_t>(src.size()));
}

[[maybe_unused]] const bool registered = bench::register_codec_benchmarks("chunk", levels, compress, decompress);

}  // namespace
}  // namespace ferry

int main(int argc, char** argv) { return ferry::bench::run_main(argc, argv); }
