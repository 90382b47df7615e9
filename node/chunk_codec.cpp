#include "node/chunk_codec.hpp"

#include <zstd.h>

#include <cstring>
#include <ctime>
#include <memory>
#include <vector>

#include "node/file_io.hpp"
#include "protocol/types.hpp"

namespace ferry {

namespace {

struct cctx_free {
    void operator()(ZSTD_CCtx* c) const { ZSTD_freeCCtx(c); }
};
struct dctx_free {
    void operator()(ZSTD_DCtx* d) const { ZSTD_freeDCtx(d); }
};

// This thread's zstd state; created on first use, freed when the thread ends.
// Single-pass decompression writes straight into the scratch buffer and allocates
// nothing per frame, whatever window a peer's frame declares: the output is bounded by the
// chunk's raw length, which is at most one chunk.
struct thread_codec {
    std::unique_ptr<ZSTD_CCtx, cctx_free> cctx{ZSTD_createCCtx()};
    std::unique_ptr<ZSTD_DCtx, dctx_free> dctx{ZSTD_createDCtx()};
    std::vector<std::uint8_t> scratch = std::vector<std::uint8_t>(chunk_size);
    std::vector<delta_piece> pieces;
};

thread_codec& this_thread_codec() {
    thread_local thread_codec codec;
    return codec;
}

double thread_cpu_seconds() {
    timespec ts{};
    ::clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return static_cast<double>(ts.tv_sec) + static_cast<double>(ts.tv_nsec) * 1e-9;
}

}  // namespace

compressed_chunk compress_chunk(std::span<std::uint8_t> chunk, int level) {
    thread_codec& codec = this_thread_codec();
    compressed_chunk out;
    if (chunk.empty() || chunk.size() > codec.scratch.size()) {
        return out;
    }
    double t0 = thread_cpu_seconds();
    // Room for one byte less than the input: an output that would not be smaller ends in
    // an error instead of a copy. (It costs about a full compression all the same, which
    // is why the policy probes incompressible data only now and then.)
    std::size_t n = ZSTD_compressCCtx(codec.cctx.get(), codec.scratch.data(), chunk.size() - 1, chunk.data(),
                                      chunk.size(), level);
    out.cpu_seconds = thread_cpu_seconds() - t0;
    if (ZSTD_isError(n) || n == 0 || n >= chunk.size()) {
        return out;
    }
    std::memcpy(chunk.data(), codec.scratch.data(), n);
    out.size = n;
    return out;
}

compressed_chunk delta_chunk(std::span<std::uint8_t> chunk, std::span<const delta_op> ops) {
    thread_codec& codec = this_thread_codec();
    compressed_chunk out;
    if (chunk.empty() || chunk.size() > codec.scratch.size()) {
        return out;
    }
    std::size_t n = encode_delta(ops, chunk, codec.scratch.data(), chunk.size() - 1);
    if (n > 0) {
        std::memcpy(chunk.data(), codec.scratch.data(), n);
        out.size = n;
    }
    return out;
}

std::span<const std::uint8_t> decompress_chunk(std::span<const std::uint8_t> payload, std::size_t raw_len) {
    thread_codec& codec = this_thread_codec();
    if (raw_len == 0 || raw_len > codec.scratch.size() || payload.empty()) {
        return {};
    }
    std::size_t n = ZSTD_decompressDCtx(codec.dctx.get(), codec.scratch.data(), raw_len, payload.data(), payload.size());
    if (ZSTD_isError(n) || n != raw_len) {
        return {};
    }
    return {codec.scratch.data(), raw_len};
}

std::span<const std::uint8_t> rebuild_delta(std::span<const std::uint8_t> payload, std::size_t raw_len, int basis_fd,
                                            std::uint64_t basis_size, std::uint64_t* copied) {
    thread_codec& codec = this_thread_codec();
    if (raw_len == 0 || raw_len > codec.scratch.size() || basis_fd < 0 ||
        !decode_delta(payload, static_cast<std::uint32_t>(raw_len), basis_size, codec.pieces)) {
        return {};
    }
    for (const delta_piece& p : codec.pieces) {
        std::uint8_t* to = codec.scratch.data() + p.at;
        if (!p.copy) {
            std::memcpy(to, payload.data() + p.literal_at, p.length);
            continue;
        }
        std::error_code ec;
        if (read_at(basis_fd, to, p.length, p.basis_offset, ec) != p.length) {
            return {};  // the basis shrank since it was opened
        }
        if (copied != nullptr) {
            *copied += p.length;
        }
    }
    return {codec.scratch.data(), raw_len};
}

}  // namespace ferry
