// Micro benchmarks of libzstd itself on ferry's chunk size (256 KiB), over a range of
// levels: what each level costs and saves per chunk, to choose the adaptive codec's
// levels. ferry's own per-chunk codec (node/chunk_codec.hpp, levels 1 and 3) is measured
// in chunk_codec_bench; this file calls zstd directly, one reused context per thread and
// one whole chunk per call, as that codec does, with an output buffer of
// ZSTD_compressBound() so every level runs to the end.
//
// Bytes/s counts raw (uncompressed) bytes on one core; "ratio" is raw / compressed.
// Random data is not decompressed: a chunk that does not shrink is sent raw.
#include <benchmark/benchmark.h>
#include <zstd.h>

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "chunk_data.hpp"
#include "micro_main.hpp"

namespace ferry {
namespace {

using bench::data_kind;

struct cctx_deleter {
    void operator()(ZSTD_CCtx* c) const { ZSTD_freeCCtx(c); }
};
struct dctx_deleter {
    void operator()(ZSTD_DCtx* d) const { ZSTD_freeDCtx(d); }
};

void set_ratio(benchmark::State& state, std::size_t raw, std::size_t compressed) {
    state.counters["ratio"] = compressed == 0 ? 0.0 : static_cast<double>(raw) / static_cast<double>(compressed);
}

void compress(benchmark::State& state, data_kind kind, int level) {
    const std::vector<std::uint8_t>& src = bench::chunk_of(kind);
    std::unique_ptr<ZSTD_CCtx, cctx_deleter> cctx(ZSTD_createCCtx());
    std::vector<std::uint8_t> dst(ZSTD_compressBound(src.size()));
    std::size_t n = 0;
    for (auto _ : state) {
        n = ZSTD_compressCCtx(cctx.get(), dst.data(), dst.size(), src.data(), src.size(), level);
        if (ZSTD_isError(n)) {
            state.SkipWithError(ZSTD_getErrorName(n));
            return;
        }
        benchmark::DoNotOptimize(dst.data());
    }
    set_ratio(state, src.size(), n);
    state.SetBytesProcessed(state.iterations() * static_cast<std::int64_t>(src.size()));
}

void decompress(benchmark::State& state, data_kind kind, int level) {
    const std::vector<std::uint8_t>& src = bench::chunk_of(kind);
    std::vector<std::uint8_t> packed(ZSTD_compressBound(src.size()));
    std::size_t packed_len = ZSTD_compress(packed.data(), packed.size(), src.data(), src.size(), level);
    if (ZSTD_isError(packed_len)) {
        state.SkipWithError(ZSTD_getErrorName(packed_len));
        return;
    }
    std::unique_ptr<ZSTD_DCtx, dctx_deleter> dctx(ZSTD_createDCtx());
    std::vector<std::uint8_t> out(src.size());
    for (auto _ : state) {
        std::size_t n = ZSTD_decompressDCtx(dctx.get(), out.data(), out.size(), packed.data(), packed_len);
        if (ZSTD_isError(n) || n != src.size()) {
            state.SkipWithError("decompression failed");
            return;
        }
        benchmark::DoNotOptimize(out.data());
    }
    set_ratio(state, src.size(), packed_len);
    state.SetBytesProcessed(state.iterations() * static_cast<std::int64_t>(src.size()));
}

// Negative levels are zstd's fast modes; 1 and 3 are the levels ferry's codec uses; 6 (the
// first "lazy" level) shows what a slower level buys.
constexpr int levels[] = {-5, -1, 1, 3, 6};

[[maybe_unused]] const bool registered = bench::register_codec_benchmarks("zstd", levels, compress, decompress);

}  // namespace
}  // namespace ferry

int main(int argc, char** argv) { return ferry::bench::run_main(argc, argv); }
