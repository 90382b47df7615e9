// Micro benchmarks of the block delta (protocol/delta.hpp): the receiver's weak sum of
// one block (it sums every block of an older version), and the sender's matcher over a
// file whose blocks are all found in place, all found one byte further on (a byte
// inserted at the start), or not found at all (new content: the window slides byte by
// byte). Bytes/s is per core (one thread).
#include <benchmark/benchmark.h>

#include <cstdint>
#include <span>
#include <vector>

#include "micro_main.hpp"
#include "protocol/delta.hpp"
#include "protocol/digest.hpp"
#include "protocol/types.hpp"
#include "tests/support/pattern.hpp"

namespace ferry {
namespace {

void BM_weak_sum(benchmark::State& state) {
    std::vector<std::uint8_t> bytes = test::pattern_bytes(chunk_size, 1);
    for (auto _ : state) {
        benchmark::DoNotOptimize(weak_sum(bytes));
    }
    state.SetBytesProcessed(state.iterations() * std::int64_t{chunk_size});
}
BENCHMARK(BM_weak_sum);

constexpr std::size_t file_chunks = 64;  // a 16 MiB file

std::vector<basis_block> sums_of(std::span<const std::uint8_t> basis) {
    std::vector<basis_block> blocks;
    for (std::size_t at = 0; at + chunk_size <= basis.size(); at += chunk_size) {
        std::span<const std::uint8_t> b = basis.subspan(at, chunk_size);
        blocks.push_back({weak_sum(b), hash_chunk(b), at});
    }
    return blocks;
}

// range(0): how many bytes the new version has before the older one's (0: in place).
void BM_match(benchmark::State& state, bool related) {
    std::vector<std::uint8_t> basis = test::pattern_bytes(file_chunks * chunk_size, 2);
    std::vector<std::uint8_t> file(static_cast<std::size_t>(state.range(0)), 'x');
    if (related) {
        file.insert(file.end(), basis.begin(), basis.end());
    } else {
        std::vector<std::uint8_t> other = test::pattern_bytes(basis.size(), 3);
        file.insert(file.end(), other.begin(), other.end());
    }
    file.resize(basis.size());
    block_index index(sums_of(basis));
    std::vector<digest128> digests;
    for (std::size_t at = 0; at < file.size(); at += chunk_size) {
        digests.push_back(hash_chunk(std::span<const std::uint8_t>(file).subspan(at, chunk_size)));
    }
    for (auto _ : state) {
        delta_matcher m(index);
        for (std::size_t k = 0; k < digests.size(); ++k) {
            m.feed(std::span<const std::uint8_t>(file).subspan(k * chunk_size, chunk_size), digests[k]);
        }
        benchmark::DoNotOptimize(m.matches().size());
    }
    state.SetBytesProcessed(state.iterations() * std::int64_t(file.size()));
}
BENCHMARK_CAPTURE(BM_match, in_place, true)->Arg(0);
BENCHMARK_CAPTURE(BM_match, shifted, true)->Arg(1);
BENCHMARK_CAPTURE(BM_match, new_content, false)->Arg(0);

}  // namespace
}  // namespace ferry

int main(int argc, char** argv) { return ferry::bench::run_main(argc, argv); }
