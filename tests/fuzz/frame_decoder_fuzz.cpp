// Fuzz target: frame_decoder (protocol/frame.hpp) fed a byte stream in arbitrary pieces.
//
// Input: a config byte (bit 0: small limits, read from the next three bytes; bit 1: take
// payloads with payload_taken() instead of feed()), a count byte and that many piece
// sizes (0 = an empty feed), then the stream. The stream is decoded twice, once in the
// given pieces (cycled) and once whole, and both runs must produce exactly what a plain
// non-incremental reference decoder of the same limits finds: the same headers, the same
// payload bytes per frame, the same error at the same frame. On every step the API's
// promises are checked: need_more means everything was consumed; a header or payload
// step consumes something; a header has a body, payload_len <= max_payload and was read
// from exactly varint + header_len <= max_header bytes; a payload piece is the front of
// the input; frame_complete is right; mid_frame() says whether a frame is cut off at the
// end of each piece; after an error the decoder stays failed.
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <system_error>
#include <vector>

#include "ferry.pb.h"
#include "protocol/errors.hpp"
#include "protocol/frame.hpp"
#include "protocol/types.hpp"
#include "tests/fuzz/fuzz_support.hpp"
#include "tests/fuzz/sample_messages.hpp"

namespace ferry::fuzz {
namespace {

struct limits {
    std::uint32_t max_header = max_header_len;
    std::uint32_t max_payload = max_payload_len;
};

struct frame_record {
    std::string header;  // serialized
    std::string payload;
    bool complete = false;
    bool operator==(const frame_record&) const = default;
};

struct trace {
    std::vector<frame_record> frames;
    std::error_code error;
    bool operator==(const trace&) const = default;
};

// A varint32 as protobuf writes it: {value, bytes}; bytes 0 if cut short, -1 if malformed.
std::pair<std::uint32_t, int> reference_varint(std::span<const std::uint8_t> in) {
    std::uint64_t v = 0;
    for (std::size_t i = 0; i < 5; ++i) {
        if (i == in.size()) {
            return {0, 0};
        }
        v |= std::uint64_t{in[i] & 0x7fu} << (7 * i);
        if ((in[i] & 0x80) == 0) {
            return v > 0xffffffffu ? std::pair{0u, -1}
                                   : std::pair{static_cast<std::uint32_t>(v), static_cast<int>(i + 1)};
        }
    }
    return {0, -1};
}

// What the decoder must find in `stream`, read in one go.
trace reference_decode(std::span<const std::uint8_t> stream, limits lim) {
    trace t;
    std::size_t pos = 0;
    while (pos < stream.size()) {
        auto [len, used] = reference_varint(stream.subspan(pos));
        if (used < 0) {
            t.error = protocol_errc::bad_varint;
            return t;
        }
        if (used == 0) {
            return t;
        }
        if (len > lim.max_header) {
            t.error = protocol_errc::header_too_large;
            return t;
        }
        if (stream.size() - pos - used < len) {
            return t;
        }
        wire::Header h;
        if (!h.ParseFromArray(stream.data() + pos + used, static_cast<int>(len))) {
            t.error = protocol_errc::bad_header;
            return t;
        }
        if (h.payload_len() > lim.max_payload) {
            t.error = protocol_errc::payload_too_large;
            return t;
        }
        if (h.body_case() == wire::Header::BODY_NOT_SET) {
            t.error = protocol_errc::empty_body;
            return t;
        }
        pos += used + len;
        std::size_t n = std::min<std::size_t>(h.payload_len(), stream.size() - pos);
        t.frames.push_back(
            {h.SerializeAsString(), std::string(stream.begin() + pos, stream.begin() + pos + n), n == h.payload_len()});
        pos += n;
    }
    return t;
}

// Decodes `stream` in pieces of the given sizes (cycled; empty: one piece), checking
// every step, and returns what it found.
trace incremental_decode(std::span<const std::uint8_t> stream, limits lim, const std::vector<std::size_t>& pieces,
                         bool take_payloads) {
    frame_decoder dec(lim.max_header, lim.max_payload);
    trace t;
    std::size_t pos = 0;          // stream bytes consumed
    std::size_t frame_start = 0;  // where the current frame's varint starts
    std::size_t payload_len = 0;
    std::size_t payload_seen = 0;
    std::size_t piece = 0;

    auto after_header = [&](const decode_result& r) {
        FUZZ_CHECK(r.consumed > 0);
        FUZZ_CHECK(!dec.failed());
        const wire::Header& h = dec.header();
        FUZZ_CHECK(h.body_case() != wire::Header::BODY_NOT_SET);
        FUZZ_CHECK(h.payload_len() <= lim.max_payload);
        FUZZ_CHECK(dec.payload_remaining() == h.payload_len());
        FUZZ_CHECK(r.frame_complete == (h.payload_len() == 0));
        FUZZ_CHECK(dec.in_payload() == (h.payload_len() > 0));
        // The header was read from exactly its varint and header_len bytes.
        auto [len, used] = reference_varint(stream.subspan(frame_start));
        FUZZ_CHECK(used > 0 && len <= lim.max_header);
        FUZZ_CHECK(pos - frame_start == static_cast<std::size_t>(used) + len);
        t.frames.push_back({h.SerializeAsString(), {}, r.frame_complete});
        payload_len = h.payload_len();
        payload_seen = 0;
        if (r.frame_complete) {
            frame_start = pos;
        }
    };
    auto add_payload = [&](std::span<const std::uint8_t> bytes) {
        payload_seen += bytes.size();
        FUZZ_CHECK(!t.frames.empty() && payload_seen <= payload_len);
        t.frames.back().payload.append(bytes.begin(), bytes.end());
        t.frames.back().complete = payload_seen == payload_len;
        FUZZ_CHECK(dec.payload_remaining() == payload_len - payload_seen);
        if (t.frames.back().complete) {
            FUZZ_CHECK(!dec.in_payload());
            frame_start = pos;
        }
    };

    while (true) {
        std::size_t want = pieces.empty() ? stream.size() : pieces[piece++ % pieces.size()];
        std::span<const std::uint8_t> in = stream.subspan(pos, std::min(want, stream.size() - pos));
        bool last = pos + in.size() == stream.size();
        // One piece: decode until the decoder wants more (or fails).
        while (true) {
            if (take_payloads && dec.in_payload() && !in.empty()) {
                std::size_t n = std::min(in.size(), dec.payload_remaining());
                bool done = dec.payload_taken(n);
                pos += n;
                add_payload(in.first(n));
                FUZZ_CHECK(done == (payload_seen == payload_len));
                in = in.subspan(n);
                continue;
            }
            decode_result r = dec.feed(in);
            FUZZ_CHECK(r.consumed <= in.size());
            if (r.event == decode_event::error) {
                FUZZ_CHECK(r.ec && r.ec.category() == protocol_category());
                FUZZ_CHECK(dec.failed());
                t.error = r.ec;
                // Failed for good: no more steps, whatever comes.
                FUZZ_CHECK(dec.feed(stream.subspan(pos)).event == decode_event::error);
                FUZZ_CHECK(dec.feed({}).event == decode_event::error);
                FUZZ_CHECK(!dec.payload_taken(1));
                return t;
            }
            FUZZ_CHECK(!dec.failed() && !r.ec);
            pos += r.consumed;
            if (r.event == decode_event::need_more) {
                // Part of a frame is in: what a close now would cut off.
                FUZZ_CHECK(dec.mid_frame() == (pos > frame_start));
            }
            if (r.event == decode_event::need_more) {
                FUZZ_CHECK(r.consumed == in.size());
                break;
            }
            if (r.event == decode_event::header) {
                after_header(r);
            } else {
                FUZZ_CHECK(r.event == decode_event::payload);
                FUZZ_CHECK(r.consumed > 0 && r.payload.data() == in.data() && r.payload.size() == r.consumed);
                add_payload(r.payload);
                FUZZ_CHECK(r.frame_complete == (payload_seen == payload_len));
            }
            in = in.subspan(r.consumed);
        }
        if (last) {
            return t;
        }
    }
}

std::vector<seed> seeds() {
    std::vector<std::uint8_t> stream;
    for (const sample_message& m : sample_messages()) {
        append_frame(m.header, m.payload, stream);
    }
    auto with = [&](std::vector<std::uint8_t> prefix, std::span<const std::uint8_t> s) {
        prefix.insert(prefix.end(), s.begin(), s.end());
        return prefix;
    };
    std::vector<std::uint8_t> one_frame;
    append_frame(sample_messages()[3].header, sample_messages()[3].payload, one_frame);  // chunk
    std::vector<std::uint8_t> bad_varint = {0xff, 0xff, 0xff, 0xff, 0x7f};
    std::vector<std::uint8_t> too_large = {0x81, 0x80, 0x04};  // 65537
    std::vector<std::uint8_t> empty_body = {0x02, 0x08, 0x00};
    return {
        {"all-whole", with({0x00, 0x00}, stream)},
        {"all-bytewise", with({0x00, 0x01, 0x01}, stream)},
        {"all-mixed-taken", with({0x02, 0x04, 0x00, 0x03, 0x11, 0x40}, stream)},
        {"chunk-small-limits", with({0x01, 40, 0x80, 0x00, 0x02, 0x05, 0x1f}, one_frame)},
        {"bad-varint", with({0x00, 0x01, 0x02}, bad_varint)},
        {"header-too-large", with({0x00, 0x00}, too_large)},
        {"empty-body", with({0x00, 0x00}, empty_body)},
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
    std::uint8_t config = in.u8();
    limits lim;
    if (config & 1) {
        lim.max_header = in.u8() % 64;
        lim.max_payload = in.u16() % 1024;
    }
    bool take_payloads = (config & 2) != 0;
    std::vector<std::size_t> pieces(in.u8() % 16);
    for (std::size_t& p : pieces) {
        p = in.u8();
    }
    if (std::all_of(pieces.begin(), pieces.end(), [](std::size_t p) { return p == 0; })) {
        pieces.clear();  // only empty feeds would never get through the stream
    }
    std::span<const std::uint8_t> stream = in.bytes(in.remaining());

    trace expected = reference_decode(stream, lim);
    FUZZ_CHECK(incremental_decode(stream, lim, {}, false) == expected);
    FUZZ_CHECK(incremental_decode(stream, lim, pieces, take_payloads) == expected);

    // read_varint32 agrees with the reference wherever the stream is read from.
    std::uint32_t value = 0;
    auto [ref_value, ref_used] = reference_varint(stream);
    int used = read_varint32(stream, value);
    FUZZ_CHECK(used == ref_used);
    FUZZ_CHECK(used <= 0 || value == ref_value);
    return 0;
}
