// zstd for chunk payloads, on the worker pool.
//
// Each worker thread keeps its own compression and decompression contexts and a scratch
// buffer (thread_local), so no call allocates after a thread's first chunk. Which chunks
// are compressed is decided on the loop thread (protocol/compression.hpp).
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>

#include "protocol/delta.hpp"

namespace ferry {

struct compressed_chunk {
    std::size_t size = 0;     // bytes written back into the chunk buffer; 0: did not shrink
    double cpu_seconds = 0;   // CPU time of this thread spent compressing
};

// Compresses `chunk` at zstd `level`. When the result is smaller it replaces the chunk's
// first bytes in place and its size is returned; otherwise the chunk is left as it was
// and size is 0.
compressed_chunk compress_chunk(std::span<std::uint8_t> chunk, int level);

// Encodes `chunk` as the CODEC_DELTA payload of `ops` (protocol/delta.hpp), with the same
// contract as compress_chunk: when smaller, it replaces the chunk's first bytes in place.
compressed_chunk delta_chunk(std::span<std::uint8_t> chunk, std::span<const delta_op> ops);

// Decompresses a zstd chunk payload that must expand to exactly `raw_len` bytes (at most
// one chunk). The result lives in this thread's scratch buffer until the next call on the
// same thread. An empty span means the payload is not a valid zstd frame of that size.
std::span<const std::uint8_t> decompress_chunk(std::span<const std::uint8_t> payload, std::size_t raw_len);

// Rebuilds a CODEC_DELTA chunk of `raw_len` bytes (at most one chunk) from its payload and
// the older version open at `basis_fd` (`basis_size` bytes), into this thread's scratch
// buffer (valid until the next call on the same thread). An empty span means the payload
// is malformed (protocol/delta.hpp decode_delta) or the basis could not be read.
// `copied` (if given) has the bytes the copy ops took from the basis added.
std::span<const std::uint8_t> rebuild_delta(std::span<const std::uint8_t> payload, std::size_t raw_len, int basis_fd,
                                            std::uint64_t basis_size, std::uint64_t* copied = nullptr);

}  // namespace ferry
