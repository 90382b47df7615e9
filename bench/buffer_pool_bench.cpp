// Micro benchmark of the chunk buffer pool (transport/buffer_pool.hpp): one acquire and
// one release per chunk on each side of a transfer, under the pool's mutex.
#include <benchmark/benchmark.h>

#include <cstddef>
#include <memory>
#include <vector>

#include "alloc_counter.hpp"
#include "micro_main.hpp"
#include "protocol/types.hpp"
#include "transport/buffer_pool.hpp"

namespace ferry {
namespace {

// range(0) buffers held at once (a window of chunks in flight), then released in order.
void BM_buffer_pool_cycle(benchmark::State& state) {
    auto held = static_cast<std::size_t>(state.range(0));
    std::shared_ptr<buffer_pool> pool = buffer_pool::make(held, max_payload_len);
    std::vector<pooled_buffer> bufs(held);
    std::uint64_t before = ferry::bench::allocations();
    for (auto _ : state) {
        for (pooled_buffer& b : bufs) {
            b = pool->acquire(chunk_size);
        }
        for (pooled_buffer& b : bufs) {
            b.reset();
        }
    }
    auto cycles = static_cast<double>(state.iterations()) * static_cast<double>(held);
    // The first cycle allocates the buffers themselves; after that the pool reuses them.
    state.counters["allocs/buffer"] = static_cast<double>(ferry::bench::allocations() - before) / cycles;
    state.SetItemsProcessed(state.iterations() * state.range(0));
}
BENCHMARK(BM_buffer_pool_cycle)->Arg(1)->Arg(64);

}  // namespace
}  // namespace ferry

int main(int argc, char** argv) { return ferry::bench::run_main(argc, argv); }
