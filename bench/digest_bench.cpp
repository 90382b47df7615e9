// Micro benchmarks of chunk hashing (protocol/digest.hpp): XXH3-128 over one chunk, which
// both sides run on every chunk on the worker pool, and the file digest over the chunk
// digests. Bytes/s is per core (one thread).
#include <benchmark/benchmark.h>

#include <cstdint>
#include <span>
#include <vector>

#include "micro_main.hpp"
#include "protocol/digest.hpp"
#include "protocol/types.hpp"
#include "tests/support/pattern.hpp"

namespace ferry {
namespace {

// One buffer of range(0) bytes hashed again and again: it stays in cache, as a chunk just
// read by pread or just decrypted into its buffer mostly is.
void BM_hash_chunk(benchmark::State& state) {
    std::vector<std::uint8_t> bytes = test::pattern_bytes(static_cast<std::size_t>(state.range(0)), 1);
    for (auto _ : state) {
        benchmark::DoNotOptimize(hash_chunk(bytes));
    }
    state.SetBytesProcessed(state.iterations() * state.range(0));
}
BENCHMARK(BM_hash_chunk)->Arg(4 * 1024)->Arg(64 * 1024)->Arg(chunk_size);

// 256 KiB chunks taken in turn from 32 MiB, so none is in L1/L2 when it is hashed (as on
// the receiver, where a chunk decrypted on the loop thread is hashed on a worker). On a
// machine whose L3 holds 32 MiB this still reads from L3, not from memory.
void BM_hash_chunk_out_of_l2(benchmark::State& state) {
    constexpr std::size_t span_bytes = 32 * 1024 * 1024;
    std::vector<std::uint8_t> bytes = test::pattern_bytes(span_bytes, 2);
    std::size_t at = 0;
    for (auto _ : state) {
        benchmark::DoNotOptimize(hash_chunk(std::span<const std::uint8_t>(bytes.data() + at, chunk_size)));
        at = (at + chunk_size) % span_bytes;
    }
    state.SetBytesProcessed(state.iterations() * std::int64_t{chunk_size});
}
BENCHMARK(BM_hash_chunk_out_of_l2);

// The file digest of a file of range(0) chunks (4096 chunks = a 1 GiB file). Items/s
// counts chunk digests.
void BM_file_digest(benchmark::State& state) {
    std::vector<digest128> digests(static_cast<std::size_t>(state.range(0)));
    for (std::size_t i = 0; i < digests.size(); ++i) {
        digests[i] = {0x9e3779b97f4a7c15ull * (i + 1), 0xc2b2ae3d27d4eb4full * (i + 1)};
    }
    for (auto _ : state) {
        benchmark::DoNotOptimize(file_digest(digests));
    }
    state.SetItemsProcessed(state.iterations() * state.range(0));
}
BENCHMARK(BM_file_digest)->Arg(1)->Arg(4096);

}  // namespace
}  // namespace ferry

int main(int argc, char** argv) { return ferry::bench::run_main(argc, argv); }
