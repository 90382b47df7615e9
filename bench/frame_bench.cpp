// Micro benchmarks of the frame codec (protocol/frame.hpp) on the frames that dominate a
// transfer: Chunk headers (one per 256 KiB of file data) and ChunkAck batches.
//
// Encoding follows connection::send: a fresh wire::Header per chunk as send_session builds
// it, and a fresh head vector (reserve 64) per frame. Decoding follows
// connection::process_input: chunk payloads either read "direct" into the chunk buffer
// (the decoder only sees headers and is told payload_taken()), or pass through the
// decoder in read-buffer pieces and are copied into a pooled buffer. Each benchmark
// reports heap allocations per frame ("allocs/frame").
#include <benchmark/benchmark.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <memory>
#include <span>
#include <vector>

#include "alloc_counter.hpp"
#include "ferry.pb.h"
#include "micro_main.hpp"
#include "protocol/frame.hpp"
#include "protocol/types.hpp"
#include "tests/support/pattern.hpp"
#include "transport/buffer_pool.hpp"

namespace ferry {
namespace {

// The Chunk header send_session builds for chunk `index` of a file (hash values are
// arbitrary but full-width, as real XXH3 halves are).
void fill_chunk_header(wire::Header& h, std::uint32_t index, std::uint32_t payload_len) {
    wire::Chunk* c = h.mutable_chunk();
    c->set_file_id(3);
    c->set_index(index);
    c->set_raw_len(payload_len);
    c->set_codec(wire::CODEC_RAW);
    c->set_hash_lo(0x9e3779b97f4a7c15ull * (index + 1));
    c->set_hash_hi(0xc2b2ae3d27d4eb4full * (index + 1));
    h.set_payload_len(payload_len);
}

// A ChunkAck as receive_session::flush_acks builds it, from its pending keys.
void fill_chunk_ack(wire::Header& h, const std::vector<std::uint64_t>& keys) {
    h.mutable_chunk_ack()->mutable_chunks()->Add(keys.begin(), keys.end());
}

std::vector<std::uint64_t> ack_keys(std::uint32_t n) {
    std::vector<std::uint64_t> keys;
    for (std::uint32_t i = 0; i < n; ++i) {
        keys.push_back(chunk_key(file_id{3}, chunk_index{1000 + i}));
    }
    return keys;
}

void report_allocs(benchmark::State& state, std::uint64_t before, std::uint64_t frames) {
    state.counters["allocs/frame"] =
        frames == 0 ? 0.0 : static_cast<double>(ferry::bench::allocations() - before) / static_cast<double>(frames);
}

// --- encoding ------------------------------------------------------------------------

// One Chunk frame prefix per iteration, built the way send_session + connection::send do.
void BM_encode_chunk_header(benchmark::State& state) {
    std::uint32_t index = 0;
    std::uint64_t before = ferry::bench::allocations();
    for (auto _ : state) {
        wire::Header h;
        fill_chunk_header(h, index++, chunk_size);
        std::vector<std::uint8_t> head;
        head.reserve(64);
        if (!append_frame_header(h, head)) {
            state.SkipWithError("append_frame_header failed");
            break;
        }
        benchmark::DoNotOptimize(head.data());
    }
    report_allocs(state, before, state.iterations());
    state.SetItemsProcessed(state.iterations());
}
BENCHMARK(BM_encode_chunk_header);

// The same encoder with the Header and the output vector reused: what the per-frame
// allocations of the path above cost.
void BM_encode_chunk_header_reused(benchmark::State& state) {
    std::uint32_t index = 0;
    wire::Header h;
    std::vector<std::uint8_t> head;
    head.reserve(64);
    std::uint64_t before = ferry::bench::allocations();
    for (auto _ : state) {
        fill_chunk_header(h, index++, chunk_size);
        head.clear();
        if (!append_frame_header(h, head)) {
            state.SkipWithError("append_frame_header failed");
            break;
        }
        benchmark::DoNotOptimize(head.data());
    }
    report_allocs(state, before, state.iterations());
    state.SetItemsProcessed(state.iterations());
}
BENCHMARK(BM_encode_chunk_header_reused);

// A ChunkAck of range(0) keys, built as receive_session::flush_acks does.
void BM_encode_chunk_ack(benchmark::State& state) {
    std::vector<std::uint64_t> keys = ack_keys(static_cast<std::uint32_t>(state.range(0)));
    std::uint64_t before = ferry::bench::allocations();
    for (auto _ : state) {
        wire::Header h;
        fill_chunk_ack(h, keys);
        std::vector<std::uint8_t> head;
        head.reserve(64);
        if (!append_frame_header(h, head)) {
            state.SkipWithError("append_frame_header failed");
            break;
        }
        benchmark::DoNotOptimize(head.data());
    }
    report_allocs(state, before, state.iterations());
    state.SetItemsProcessed(state.iterations());
}
BENCHMARK(BM_encode_chunk_ack)->Arg(1)->Arg(64);

// --- decoding ------------------------------------------------------------------------
//
// Each iteration decodes one frame from a batch of encoded frames (taken in turn, so the
// batch cycles through the decoder as a stream would).

// A batch of frames, with each frame's offset (and the batch's end).
struct frame_batch {
    std::vector<std::uint8_t> bytes;
    std::vector<std::size_t> starts;

    template <typename Fill>
    static frame_batch make(std::uint32_t frames, Fill fill) {
        frame_batch b;
        for (std::uint32_t i = 0; i < frames; ++i) {
            b.starts.push_back(b.bytes.size());
            wire::Header h;
            fill(h, i);
            append_frame_header(h, b.bytes);
        }
        b.starts.push_back(b.bytes.size());
        return b;
    }
    std::size_t frames() const { return starts.size() - 1; }
    std::span<const std::uint8_t> frame(std::size_t i) const {
        return std::span<const std::uint8_t>(bytes).subspan(starts[i], starts[i + 1] - starts[i]);
    }
};

// Chunk frame prefixes without their payloads (the direct-read path never shows payload
// bytes to the decoder).
frame_batch chunk_header_batch() {
    return frame_batch::make(1024, [](wire::Header& h, std::uint32_t i) { fill_chunk_header(h, i, chunk_size); });
}

// Direct path: feed() decodes a header, the payload is read elsewhere and reported with
// payload_taken(), as connection::read_loop does when its read buffer is empty.
void BM_decode_chunk_header(benchmark::State& state) {
    frame_batch batch = chunk_header_batch();
    frame_decoder dec;
    std::size_t next = 0;
    std::uint64_t before = ferry::bench::allocations();
    for (auto _ : state) {
        decode_result d = dec.feed(batch.frame(next));
        if (d.event != decode_event::header) {
            state.SkipWithError("expected a header");
            return;
        }
        benchmark::DoNotOptimize(dec.header().chunk().index());
        dec.payload_taken(dec.payload_remaining());
        next = next + 1 == batch.frames() ? 0 : next + 1;
    }
    report_allocs(state, before, state.iterations());
    state.SetItemsProcessed(state.iterations());
}
BENCHMARK(BM_decode_chunk_header);

// Each header arrives in two reads, split in its middle (as when a header straddles the
// end of a read), so the decoder takes its accumulating slow path.
void BM_decode_chunk_header_split(benchmark::State& state) {
    frame_batch batch = chunk_header_batch();
    frame_decoder dec;
    std::size_t next = 0;
    std::uint64_t before = ferry::bench::allocations();
    for (auto _ : state) {
        std::span<const std::uint8_t> frame = batch.frame(next);
        std::span<const std::uint8_t> pieces[2] = {frame.first(frame.size() / 2), frame.subspan(frame.size() / 2)};
        bool got_header = false;
        for (std::span<const std::uint8_t> in : pieces) {
            decode_result d = dec.feed(in);
            if (d.event == decode_event::error || d.consumed != in.size()) {
                state.SkipWithError("decode error");
                return;
            }
            got_header = got_header || d.event == decode_event::header;
        }
        if (!got_header) {
            state.SkipWithError("expected a header");
            return;
        }
        dec.payload_taken(dec.payload_remaining());
        next = next + 1 == batch.frames() ? 0 : next + 1;
    }
    report_allocs(state, before, state.iterations());
    state.SetItemsProcessed(state.iterations());
}
BENCHMARK(BM_decode_chunk_header_split);

// Whole Chunk frames (header + 256 KiB payload) fed in pieces of range(0) bytes; each
// payload gets a pooled buffer and its pieces are copied in, as connection::process_input
// does when payload bytes arrive in the read buffer behind a header. One iteration is
// one frame; bytes/s counts header and payload.
void BM_decode_chunk_stream(benchmark::State& state) {
    constexpr std::uint32_t frames_per_stream = 16;  // 4 MiB: beyond L2, like a socket stream
    auto piece = static_cast<std::size_t>(state.range(0));
    std::vector<std::uint8_t> payload = test::pattern_bytes(chunk_size, 1);
    std::vector<std::uint8_t> stream;
    for (std::uint32_t i = 0; i < frames_per_stream; ++i) {
        wire::Header h;
        fill_chunk_header(h, i, chunk_size);
        append_frame(h, payload, stream);
    }
    std::shared_ptr<buffer_pool> pool = buffer_pool::make(4, max_payload_len);
    frame_decoder dec;
    pooled_buffer buf;
    std::size_t filled = 0;
    std::size_t at = 0;                // next byte of the stream to read
    std::span<const std::uint8_t> in;  // what the last read brought and is not decoded yet
    std::uint64_t before = ferry::bench::allocations();
    for (auto _ : state) {
        bool complete = false;
        while (!complete) {
            if (in.empty()) {
                at = at == stream.size() ? 0 : at;
                in = std::span<const std::uint8_t>(stream.data() + at, std::min(piece, stream.size() - at));
                at += in.size();
            }
            if (dec.in_payload() && !buf) {
                buf = pool->acquire(dec.header().payload_len());
                filled = 0;
            }
            decode_result d = dec.feed(in);
            in = in.subspan(d.consumed);
            if (d.event == decode_event::error) {
                state.SkipWithError("decode error");
                return;
            }
            if (d.event == decode_event::payload) {
                std::memcpy(buf.data() + filled, d.payload.data(), d.payload.size());
                filled += d.payload.size();
            }
            if (d.frame_complete) {
                benchmark::DoNotOptimize(buf.data());
                buf.reset();
                complete = true;
            }
        }
    }
    report_allocs(state, before, state.iterations());
    state.SetItemsProcessed(state.iterations());
    state.SetBytesProcessed(state.iterations() * static_cast<std::int64_t>(stream.size() / frames_per_stream));
}
BENCHMARK(BM_decode_chunk_stream)->Arg(16 * 1024)->Arg(256 * 1024);

void BM_decode_chunk_ack(benchmark::State& state) {
    std::vector<std::uint64_t> keys = ack_keys(static_cast<std::uint32_t>(state.range(0)));
    frame_batch batch = frame_batch::make(256, [&keys](wire::Header& h, std::uint32_t) { fill_chunk_ack(h, keys); });
    frame_decoder dec;
    std::size_t next = 0;
    std::uint64_t before = ferry::bench::allocations();
    for (auto _ : state) {
        decode_result d = dec.feed(batch.frame(next));
        if (d.event != decode_event::header || !d.frame_complete) {
            state.SkipWithError("expected a whole frame");
            return;
        }
        benchmark::DoNotOptimize(dec.header().chunk_ack().chunks_size());
        next = next + 1 == batch.frames() ? 0 : next + 1;
    }
    report_allocs(state, before, state.iterations());
    state.SetItemsProcessed(state.iterations());
}
BENCHMARK(BM_decode_chunk_ack)->Arg(1)->Arg(64);

}  // namespace
}  // namespace ferry

int main(int argc, char** argv) { return ferry::bench::run_main(argc, argv); }
