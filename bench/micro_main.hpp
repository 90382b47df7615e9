// main() of ferry's micro benchmarks: Google Benchmark's, with shorter runs by default
// (0.1 s per benchmark instead of 0.5 s) so that every *_bench binary together finishes
// in well under a minute. A --benchmark_min_time on the command line still wins; use
// --benchmark_repetitions=N to see the spread.
#pragma once

#include <benchmark/benchmark.h>

#include <string_view>
#include <vector>

namespace ferry::bench {

inline int run_main(int argc, char** argv) {
    static char short_runs[] = "--benchmark_min_time=0.1";
    std::vector<char*> args(argv, argv + argc);
    bool given = false;
    for (int i = 1; i < argc; ++i) {
        given = given || std::string_view(argv[i]).starts_with("--benchmark_min_time");
    }
    if (!given) {
        args.insert(args.begin() + 1, short_runs);
    }
    args.push_back(nullptr);
    int n = static_cast<int>(args.size()) - 1;
    benchmark::Initialize(&n, args.data());
    if (benchmark::ReportUnrecognizedArguments(n, args.data())) {
        return 1;
    }
    benchmark::RunSpecifiedBenchmarks();
    benchmark::Shutdown();
    return 0;
}

}  // namespace ferry::bench
