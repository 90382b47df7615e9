// Shared tooling of the libFuzzer targets in tests/fuzz (see docs/fuzzing.md).
//
// fuzz_input reads a target's input front to back as typed values, and fuzz_output writes
// the same encoding, for the seeds each target describes next to its decoder. Past the
// end of the input every read yields zeros (or nothing), so a harness never checks
// lengths and a short input is simply a short run. FUZZ_CHECK is the harnesses' assert:
// a broken invariant prints where and aborts, which libFuzzer reports as a crash and
// saves as an artifact. Single-threaded, like the fuzz targets.
#pragma once

#include <google/protobuf/stubs/logging.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#define FUZZ_CHECK(cond)                                                                        \
    do {                                                                                        \
        if (!(cond)) {                                                                          \
            std::fprintf(stderr, "%s:%d: invariant violated: %s\n", __FILE__, __LINE__, #cond); \
            std::abort();                                                                       \
        }                                                                                       \
    } while (false)

namespace ferry::fuzz {

class fuzz_input {
  public:
    explicit fuzz_input(std::span<const std::uint8_t> data) : data_(data) {}

    bool empty() const { return pos_ >= data_.size(); }
    std::size_t remaining() const { return data_.size() - pos_; }

    std::uint8_t u8() { return empty() ? 0 : data_[pos_++]; }
    bool flag() { return (u8() & 1) != 0; }
    std::uint16_t u16() { return static_cast<std::uint16_t>(read_le(2)); }
    std::uint32_t u32() { return static_cast<std::uint32_t>(read_le(4)); }
    std::uint64_t u64() { return read_le(8); }

    // At most `n` bytes (fewer at the end of the input).
    std::span<const std::uint8_t> bytes(std::size_t n) {
        n = std::min(n, remaining());
        auto out = data_.subspan(pos_, n);
        pos_ += n;
        return out;
    }

    // A length byte, then that many bytes (at most `max`).
    std::string text(std::size_t max = 255) {
        std::size_t n = std::min<std::size_t>(u8(), max);
        auto b = bytes(n);
        return {b.begin(), b.end()};
    }

  private:
    std::uint64_t read_le(int n) {
        std::uint64_t v = 0;
        for (int i = 0; i < n; ++i) {
            v |= std::uint64_t{u8()} << (8 * i);
        }
        return v;
    }

    std::span<const std::uint8_t> data_;
    std::size_t pos_ = 0;
};

// Writes what fuzz_input reads (for seeds).
class fuzz_output {
  public:
    fuzz_output& u8(std::uint8_t v) {
        data_.push_back(v);
        return *this;
    }
    fuzz_output& flag(bool v) { return u8(v ? 1 : 0); }
    fuzz_output& u16(std::uint16_t v) { return write_le(v, 2); }
    fuzz_output& u32(std::uint32_t v) { return write_le(v, 4); }
    fuzz_output& u64(std::uint64_t v) { return write_le(v, 8); }
    fuzz_output& bytes(std::span<const std::uint8_t> b) {
        data_.insert(data_.end(), b.begin(), b.end());
        return *this;
    }
    fuzz_output& bytes(std::string_view s) {
        data_.insert(data_.end(), s.begin(), s.end());
        return *this;
    }
    fuzz_output& text(std::string_view s) {
        u8(static_cast<std::uint8_t>(s.size()));
        return bytes(s);
    }
    const std::vector<std::uint8_t>& data() const { return data_; }

  private:
    fuzz_output& write_le(std::uint64_t v, int n) {
        for (int i = 0; i < n; ++i) {
            data_.push_back(static_cast<std::uint8_t>(v >> (8 * i)));
        }
        return *this;
    }

    std::vector<std::uint8_t> data_;
};

struct seed {
    std::string name;
    std::vector<std::uint8_t> data;
};

// Called from each target's LLVMFuzzerInitialize. Silences protobuf's log (a peer's
// invalid UTF-8 is logged on every parse, which would flood the fuzzer's output). With
// FERRY_FUZZ_WRITE_SEEDS=DIR in the environment, writes the target's seeds into DIR as
// seed-<name> and exits, so the committed corpus is regenerated from the same encoding
// the harness reads.
template <typename MakeSeeds>
void initialize(MakeSeeds make_seeds) {
    google::protobuf::SetLogHandler(nullptr);
    const char* dir = std::getenv("FERRY_FUZZ_WRITE_SEEDS");
    if (dir == nullptr || *dir == '\0') {
        return;
    }
    std::filesystem::create_directories(dir);
    std::vector<seed> seeds = make_seeds();
    for (const seed& s : seeds) {
        std::ofstream out(std::filesystem::path(dir) / ("seed-" + s.name), std::ios::binary | std::ios::trunc);
        out.write(reinterpret_cast<const char*>(s.data.data()), static_cast<std::streamsize>(s.data.size()));
        if (!out) {
            std::fprintf(stderr, "cannot write seed %s into %s\n", s.name.c_str(), dir);
            std::exit(1);
        }
    }
    std::fprintf(stderr, "wrote %zu seeds into %s\n", seeds.size(), dir);
    std::exit(0);
}

}  // namespace ferry::fuzz
