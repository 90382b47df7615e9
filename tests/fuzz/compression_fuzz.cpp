// Fuzz target: parse_compress_mode and compression_policy (protocol/compression.hpp).
//
// The input starts with a text (length byte, bytes) for parse_compress_mode: it accepts
// exactly "auto", "always" and "never", and compress_mode_name() gives the text back.
// Then a mode byte and a sequence of events as send_session produces them: next_level()
// for a chunk, the attempt's figures (observe(), only at the level next_level() gave:
// any raw length up to a chunk, any output size, any CPU time) and wire rates (any
// non-negative figure). Checked throughout: next_level() is 0, fast_level, strong_level
// or strongest_level, 0 under `never` and fast_level under `always`; ratio() stays in [0, 1]
// and every average is finite and non-negative (no division turning into NaN or inf).
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "protocol/compression.hpp"
#include "protocol/types.hpp"
#include "tests/fuzz/fuzz_support.hpp"

namespace ferry::fuzz {
namespace {

enum op : std::uint8_t {
    op_chunk,      // next_level(); if it compresses: raw (u32), out (u32), cpu (u32 ns)
    op_wire_rate,  // on_wire_rate(u32 * 2^(u8 % 16) bytes/s, u8 / 255 busy)
    op_count,
};

void check_figures(const compression_policy& p) {
    FUZZ_CHECK(std::isfinite(p.ratio()) && p.ratio() >= 0 && p.ratio() <= 1);
    for (int level :
         {compression_policy::fast_level, compression_policy::strong_level, compression_policy::strongest_level}) {
        FUZZ_CHECK(std::isfinite(p.speed(level)) && p.speed(level) >= 0);
    }
    FUZZ_CHECK(std::isfinite(p.link_rate()) && p.link_rate() >= 0);
}

std::vector<seed> seeds() {
    auto session = [](std::string_view text, std::uint8_t mode, int chunks, std::uint32_t out) {
        fuzz_output o;
        o.text(text).u8(mode);
        for (int i = 0; i < chunks; ++i) {
            o.u8(op_chunk).u32(chunk_size).u32(out).u32(400'000);  // 0.4 ms per chunk
            if (i % 4 == 3) {
                o.u8(op_wire_rate).u32(12'500'000).u8(0).u8(255);  // 100 Mbit/s, busy
            }
        }
        return o.data();
    };
    return {
        {"auto-compressible-slow-link", session("auto", 0, 40, chunk_size / 4)},
        {"auto-random", session("auto", 0, 40, chunk_size + 64)},
        {"always", session("always", 1, 8, chunk_size / 2)},
        {"never", session("never", 2, 8, chunk_size / 2)},
        {"bad-mode", session("Auto", 0, 2, 0)},
    };
}

}  // namespace
}  // namespace ferry::fuzz

extern "C" int LLVMFuzzerInitialize(int*, char***) {
    ferry::fuzz::initialize(ferry::fuzz::seeds);
    return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    using namespace ferry;
    using namespace ferry::fuzz;
    fuzz_input in({data, size});

    std::string text = in.text();
    std::optional<compress_mode> parsed = parse_compress_mode(text);
    FUZZ_CHECK(parsed.has_value() == (text == "auto" || text == "always" || text == "never"));
    if (parsed) {
        FUZZ_CHECK(compress_mode_name(*parsed) == text);
    }

    static constexpr compress_mode modes[] = {compress_mode::automatic, compress_mode::always, compress_mode::never};
    compress_mode mode = modes[in.u8() % 3];
    FUZZ_CHECK(parse_compress_mode(compress_mode_name(mode)) == mode);
    compression_policy policy(mode);
    FUZZ_CHECK(policy.mode() == mode);
    check_figures(policy);
    while (!in.empty()) {
        if (in.u8() % op_count == op_chunk) {
            int level = policy.next_level();
            FUZZ_CHECK(level == 0 || level == compression_policy::fast_level ||
                       level == compression_policy::strong_level || level == compression_policy::strongest_level);
            FUZZ_CHECK(mode != compress_mode::never || level == 0);
            FUZZ_CHECK(mode != compress_mode::always || level == compression_policy::fast_level);
            if (level > 0) {
                std::uint64_t raw = in.u32() % (chunk_size + 1);
                std::uint64_t out = in.u32();
                double cpu_seconds = in.u32() * 1e-9;
                policy.observe(level, raw, out, cpu_seconds);
            }
        } else {
            std::uint32_t rate = in.u32();
            int scale = in.u8() % 16;
            policy.on_wire_rate(std::ldexp(static_cast<double>(rate), scale), in.u8() / 255.0);
        }
        check_figures(policy);
    }
    return 0;
}
