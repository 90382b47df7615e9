// Frame codec: varint32 header_len | Header (protobuf) | payload (Header.payload_len raw bytes).
//
// Sans-IO and single-threaded: the decoder is fed bytes as they arrive, in pieces of any
// size, and says what it found. Limits are checked before anything is allocated. The
// payload is never copied into a protobuf string; the caller either takes payload
// pieces from feed() or reads the payload straight into its own buffer and reports that
// with payload_taken().
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <system_error>
#include <vector>

#include "ferry.pb.h"
#include "protocol/errors.hpp"
#include "protocol/types.hpp"

namespace ferry {

// Encodes the frame prefix (varint length + header) for a frame whose payload has
// `header.payload_len()` bytes, appending it to `out`. The caller sends the payload
// right after it (a gather write). Returns false if the header exceeds max_header_len.
bool append_frame_header(const wire::Header& header, std::vector<std::uint8_t>& out);

// Same, for a whole frame whose payload is `payload` (copied; for small payloads only).
bool append_frame(const wire::Header& header, std::span<const std::uint8_t> payload,
                  std::vector<std::uint8_t>& out);

enum class decode_event {
    need_more,  // all input consumed; feed more
    header,     // a header was decoded: header() is valid, payload_remaining() bytes follow
    payload,    // `payload` holds the next piece of the current frame's payload
    error,      // the stream is malformed; `ec` says why; the decoder stays failed
};

struct decode_result {
    decode_event event = decode_event::need_more;
    std::size_t consumed = 0;              // bytes of the input used by this step
    std::span<const std::uint8_t> payload; // decode_event::payload: the piece (inside the input)
    bool frame_complete = false;           // the current frame's last byte was consumed
    std::error_code ec;
};

class frame_decoder {
public:
    explicit frame_decoder(std::uint32_t max_header = max_header_len, std::uint32_t max_payload = max_payload_len)
        : max_header_(max_header), max_payload_(max_payload) {}

    // Decodes the next step from `in`. Call again with the rest of the input until it
    // returns need_more (everything consumed) or error.
    decode_result feed(std::span<const std::uint8_t> in);

    // The caller put `n` payload bytes somewhere itself (n <= payload_remaining()).
    // Returns true when that completed the frame.
    bool payload_taken(std::size_t n);

    const wire::Header& header() const { return header_; }
    wire::Header& header() { return header_; }
    std::size_t payload_remaining() const { return payload_remaining_; }
    bool in_payload() const { return state_ == state::payload; }
    // Part of a frame was fed and the rest has not come yet.
    bool mid_frame() const { return state_ == state::payload || !acc_.empty(); }
    bool failed() const { return state_ == state::failed; }

private:
    enum class state { header, payload, failed };

    decode_result fail(protocol_errc e);
    decode_result finish_header(std::span<const std::uint8_t> header_bytes, std::size_t consumed);

    std::uint32_t max_header_;
    std::uint32_t max_payload_;
    state state_ = state::header;
    std::vector<std::uint8_t> acc_;  // partial varint + header, at most 5 + max_header_ bytes
    std::size_t need_ = 0;           // total bytes of varint + header, once the varint is known
    std::size_t payload_remaining_ = 0;
    wire::Header header_;
};

// Reads a varint32 from `in`. Returns bytes used, 0 if more input is needed, or -1 if the
// varint is malformed (over 5 bytes or over 32 bits).
int read_varint32(std::span<const std::uint8_t> in, std::uint32_t& value);

}  // namespace ferry
