// Counts heap allocations made through the global operator new, so that a micro benchmark
// can report allocations per operation next to its time.
//
// Replaces the global operator new/delete of the binary that includes it: include it from
// exactly one translation unit of a benchmark binary (each bench/*_bench.cpp is its own
// binary). The counter is a relaxed atomic; reading it is only meaningful while one
// thread runs the measured code.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <new>

namespace ferry::bench {

inline std::atomic<std::uint64_t> heap_allocations{0};

inline std::uint64_t allocations() { return heap_allocations.load(std::memory_order_relaxed); }

inline void* counted_alloc(std::size_t n) {
    heap_allocations.fetch_add(1, std::memory_order_relaxed);
    if (void* p = std::malloc(n == 0 ? 1 : n)) {
        return p;
    }
    throw std::bad_alloc();
}

}  // namespace ferry::bench

void* operator new(std::size_t n) { return ferry::bench::counted_alloc(n); }
void* operator new[](std::size_t n) { return ferry::bench::counted_alloc(n); }
void operator delete(void* p) noexcept { std::free(p); }
void operator delete[](void* p) noexcept { std::free(p); }
void operator delete(void* p, std::size_t) noexcept { std::free(p); }
void operator delete[](void* p, std::size_t) noexcept { std::free(p); }
