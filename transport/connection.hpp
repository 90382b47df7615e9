// connection: ferry frames over one byte_stream.
//
// Loop thread only. At most one read and one write are outstanding. Inbound: an
// incremental frame_decoder; a chunk payload is read straight into a pooled buffer
// (no copy through a protobuf string), and when the pool is exhausted the connection
// stops reading until a buffer is released (backpressure reaches the peer's TCP window).
// Outbound: a bounded queue of owned frames drained by gather writes; frames queued in
// the same loop turn leave in one write. The handler hears about frames, about room in
// the queue (to pull more chunks) and, exactly once, about the close. A peer that breaks
// the framing (a frame over a limit, a header that does not parse) gets an Error frame
// (ERROR_PROTOCOL) saying why, and the close reports that protocol_errc; one that closes
// in the middle of a frame is reported as protocol_errc::truncated_frame.
#pragma once

#include <asio.hpp>
#include <cstdint>
#include <deque>
#include <memory>
#include <system_error>
#include <vector>

#include "ferry.pb.h"
#include "protocol/frame.hpp"
#include "transport/buffer_pool.hpp"
#include "transport/stream.hpp"

namespace ferry {

class connection;

class connection_handler {
public:
    virtual ~connection_handler() = default;
    // A whole frame arrived. `payload` is empty when the frame has none.
    virtual void on_frame(connection& c, wire::Header& header, pooled_buffer payload) = 0;
    // The outbound queue dropped below its low-water mark.
    virtual void on_send_ready(connection& c) = 0;
    // The connection closed (error, peer close, or close()); called once, never inline
    // from close().
    virtual void on_closed(connection& c, std::error_code ec) = 0;
};

struct connection_limits {
    std::size_t queue_low_water = 512 * 1024;          // on_send_ready below this
    std::size_t queue_max_bytes = 64 * 1024 * 1024;    // hard bound; beyond it the connection fails
    std::size_t read_buffer = 256 * 1024;
};

struct connection_counters {
    std::uint64_t frames_sent = 0;
    std::uint64_t frames_received = 0;
    std::uint64_t payload_sent = 0;      // payload bytes the kernel accepted (not confirmed)
    std::uint64_t payload_received = 0;
    std::uint64_t payload_frames_sent = 0;      // chunks (of Chunk and ChunkRun frames) the kernel took whole
    std::uint64_t payload_frames_received = 0;  // chunks (of Chunk and ChunkRun frames) received whole
};

class connection : public std::enable_shared_from_this<connection> {
public:
    connection(std::unique_ptr<byte_stream> stream, std::shared_ptr<buffer_pool> pool, connection_limits limits = {});
    ~connection();

    void start(connection_handler* handler);
    void set_handler(connection_handler* handler) { handler_ = handler; }

    // Queues a frame (header + optional payload view into `owner`, which is kept alive
    // until written). Returns false if the connection is closed.
    bool send(wire::Header& header, pooled_buffer owner = {}, std::size_t payload_len = 0);
    // Closes now (queued frames are dropped). The handler's on_closed follows.
    void close(std::error_code ec = {});
    // Sends what is queued, then ends the sending direction and drains (discards) what
    // the peer still sends until it closes too; then closes. The peer reads every frame
    // sent before, instead of a reset. Flush and drain together take at most `linger`.
    void close_after_flush(std::error_code ec = {});
    // Drops the queued Chunk frames that have not begun to go out, so that a frame queued
    // after them (an Error saying why a transfer ends) is not stuck behind data nobody
    // will use. Other frames stay, payload or not (a Packed Offer: the batches after it
    // would arrive without it). Returns how many were dropped.
    std::size_t drop_unsent_chunks();
    static constexpr std::chrono::milliseconds linger{2000};

    bool closed() const { return closed_; }
    // close_after_flush was called: the connection ends by itself within `linger`.
    bool closing() const { return close_when_drained_ && !closed_; }
    // Reading is held until the buffer pool has a buffer for the next payload.
    bool waiting_for_buffer() const { return waiting_buffer_; }
    std::size_t queued_bytes() const { return queued_bytes_; }
    byte_stream& stream() { return *stream_; }
    const byte_stream& stream() const { return *stream_; }
    const connection_counters& counters() const { return counters_; }
    std::uint32_t index = 0;  // position in its session (set by the owner)

private:
    struct out_frame {
        std::vector<std::uint8_t> head;
        pooled_buffer payload;
        std::size_t payload_len = 0;
        std::uint32_t chunks = 0;  // the chunks it holds (a Chunk or ChunkRun frame), else 0
    };

    void read_loop();
    bool process_input();
    bool dispatch();
    void schedule_flush();
    void linger_then_close();
    // The peer broke the framing: an Error frame says why, then close_after_flush().
    void refuse_framing(std::error_code ec);
    void flush();
    void fail(std::error_code ec);

    std::unique_ptr<byte_stream> stream_;
    std::shared_ptr<buffer_pool> pool_;
    connection_limits limits_;
    connection_handler* handler_ = nullptr;
    frame_decoder decoder_;
    std::vector<std::uint8_t> rbuf_;
    std::size_t rpos_ = 0;
    std::size_t rend_ = 0;
    pooled_buffer payload_;
    std::size_t payload_filled_ = 0;
    bool waiting_buffer_ = false;
    bool reading_ = false;  // a read wait is outstanding
    std::deque<out_frame> queue_;
    std::size_t queued_bytes_ = 0;
    std::size_t front_written_ = 0;
    bool flush_posted_ = false;
    bool writing_ = false;  // a write wait is outstanding
    bool close_when_drained_ = false;
    bool lingering_ = false;  // sending side shut, draining the peer's bytes
    bool framing_refused_ = false;  // nothing after a framing error is decoded
    std::unique_ptr<asio::steady_timer> linger_timer_;
    std::error_code close_reason_;
    bool closed_ = false;
    connection_counters counters_;
};

}  // namespace ferry
