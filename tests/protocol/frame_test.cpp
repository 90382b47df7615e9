// Tests of the frame codec: round trips of each message kind, a stream of frames decoded
// when split at every byte boundary / one byte at a time / in random pieces, the
// payload_taken() path, and every limit and malformed-input error.
#include "protocol/frame.hpp"

#include <gtest/gtest.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <random>
#include <span>
#include <string>
#include <vector>

#include "ferry.pb.h"
#include "protocol/errors.hpp"
#include "protocol/types.hpp"
#include "tests/support/pattern.hpp"

namespace ferry {
namespace {

using bytes = std::vector<std::uint8_t>;

using test::pattern_bytes;

bytes varint_bytes(std::uint32_t v) {
    bytes out;
    while (v >= 0x80) {
        out.push_back(static_cast<std::uint8_t>(v | 0x80));
        v >>= 7;
    }
    out.push_back(static_cast<std::uint8_t>(v));
    return out;
}

std::string serialized(const wire::Header& h) {
    std::string s;
    EXPECT_TRUE(h.SerializeToString(&s));
    return s;
}

wire::Header hello_header() {
    wire::Header h;
    auto* hello = h.mutable_hello();
    hello->set_version(protocol_version);
    hello->set_session_id(std::string("0123456789abcdef"));
    hello->set_conn_index(3);
    hello->set_conn_count(4);
    hello->set_plaintext(true);
    hello->set_agent("ferry/0.1.0");
    return h;
}

wire::Header offer_header(int entries) {
    wire::Header h;
    auto* offer = h.mutable_offer();
    offer->set_transfer_id(0x0123456789abcdefULL);
    offer->set_last(true);
    offer->set_total_files(static_cast<std::uint64_t>(entries));
    offer->set_total_bytes(0xfedcba9876ULL);
    offer->set_overwrite(true);
    offer->set_fsync_each(false);
    for (int i = 0; i < entries; ++i) {
        auto* e = offer->add_entries();
        e->set_id(static_cast<std::uint32_t>(i));
        e->set_path("dir" + std::to_string(i % 7) + "/données/file-" + std::to_string(i) + ".bin");
        e->set_kind(i % 5 == 0 ? wire::ENTRY_DIR : wire::ENTRY_FILE);
        e->set_size(static_cast<std::uint64_t>(i) * 1'000'003ULL);
        e->set_mode(0644);
        e->set_mtime_ns(-1'000'000'000LL + i);
    }
    return h;
}

wire::Header chunk_header(std::uint32_t payload_len) {
    wire::Header h;
    h.set_payload_len(payload_len);
    auto* c = h.mutable_chunk();
    c->set_file_id(7);
    c->set_index(42);
    c->set_raw_len(payload_len);
    c->set_codec(wire::CODEC_RAW);
    c->set_hash_lo(0x1122334455667788ULL);
    c->set_hash_hi(0x99aabbccddeeff00ULL);
    return h;
}

wire::Header chunk_ack_header() {
    wire::Header h;
    auto* ack = h.mutable_chunk_ack();
    for (std::uint32_t i = 0; i < 100; ++i) {
        ack->add_chunks(chunk_key(file_id{i / 10}, chunk_index{i * 1000}));
    }
    ack->add_chunks(chunk_key(file_id{0xffffffffu}, chunk_index{0xffffffffu}));
    return h;
}

wire::Header error_header() {
    wire::Header h;
    auto* e = h.mutable_error();
    e->set_code(wire::ERROR_INTEGRITY);
    e->set_message("digest mismatch for \"a/b.txt\"");
    return h;
}

wire::Header ping_header(std::uint64_t nonce) {
    wire::Header h;
    h.mutable_ping()->set_nonce(nonce);
    return h;
}

// One decoded frame, as seen by a caller that copies payload pieces out of feed().
struct decoded_frame {
    std::string header;
    bytes payload;
    bool complete = false;
};

// Feeds every byte of `in` (one feed() step at a time) and appends what was found to
// `frames`. Returns the error code if the decoder reported one.
std::error_code feed_all(frame_decoder& d, std::span<const std::uint8_t> in, std::vector<decoded_frame>& frames) {
    while (!in.empty()) {
        decode_result r = d.feed(in);
        EXPECT_LE(r.consumed, in.size());
        switch (r.event) {
            case decode_event::error:
                EXPECT_TRUE(r.ec);
                return r.ec;
            case decode_event::need_more:
                EXPECT_EQ(r.consumed, in.size());
                break;
            case decode_event::header:
                frames.push_back({serialized(d.header()), {}, r.frame_complete});
                EXPECT_EQ(d.payload_remaining(), d.header().payload_len());
                break;
            case decode_event::payload:
                EXPECT_FALSE(frames.empty());
                if (frames.empty()) {
                    return make_error_code(protocol_errc::unexpected_message);
                }
                EXPECT_EQ(r.payload.data(), in.data());
                EXPECT_EQ(r.payload.size(), r.consumed);
                frames.back().payload.insert(frames.back().payload.end(), r.payload.begin(), r.payload.end());
                frames.back().complete = r.frame_complete;
                break;
        }
        if (r.consumed == 0) {
            ADD_FAILURE() << "feed() made no progress on " << in.size() << " bytes";
            return make_error_code(protocol_errc::unexpected_message);
        }
        in = in.subspan(r.consumed);
    }
    return {};
}

// Decodes one encoded frame fed in a single piece; expects exactly one complete frame.
decoded_frame decode_one(const bytes& encoded) {
    frame_decoder d;
    std::vector<decoded_frame> frames;
    EXPECT_FALSE(feed_all(d, encoded, frames));
    EXPECT_EQ(frames.size(), 1u);
    EXPECT_FALSE(d.failed());
    EXPECT_FALSE(d.in_payload());
    if (frames.empty()) {
        return {};
    }
    EXPECT_TRUE(frames.front().complete);
    return frames.front();
}

// ---------------------------------------------------------------------------------------
// Round trips.

TEST(frame_round_trip, hello) {
    wire::Header h = hello_header();
    bytes out;
    ASSERT_TRUE(append_frame(h, {}, out));
    // varint length + header, nothing else.
    std::size_t len = h.ByteSizeLong();
    ASSERT_LT(len, 128u);
    ASSERT_EQ(out.size(), 1 + len);
    EXPECT_EQ(out[0], len);

    frame_decoder d;
    decode_result r = d.feed(out);
    ASSERT_EQ(r.event, decode_event::header);
    EXPECT_EQ(r.consumed, out.size());
    EXPECT_TRUE(r.frame_complete);
    EXPECT_FALSE(r.ec);
    EXPECT_FALSE(d.in_payload());
    EXPECT_EQ(d.payload_remaining(), 0u);
    ASSERT_EQ(d.header().body_case(), wire::Header::kHello);
    const auto& hello = d.header().hello();
    EXPECT_EQ(hello.version(), protocol_version);
    EXPECT_EQ(hello.session_id(), "0123456789abcdef");
    EXPECT_EQ(hello.conn_index(), 3u);
    EXPECT_EQ(hello.conn_count(), 4u);
    EXPECT_TRUE(hello.plaintext());
    EXPECT_EQ(hello.agent(), "ferry/0.1.0");
    EXPECT_EQ(serialized(d.header()), serialized(h));
}

TEST(frame_round_trip, offer_with_many_entries) {
    wire::Header h = offer_header(1000);
    ASSERT_GT(h.ByteSizeLong(), 16'384u);  // a 3-byte varint
    ASSERT_LE(h.ByteSizeLong(), max_header_len);
    bytes out;
    ASSERT_TRUE(append_frame_header(h, out));
    ASSERT_EQ(out.size(), 3 + h.ByteSizeLong());

    decoded_frame f = decode_one(out);
    EXPECT_EQ(f.header, serialized(h));
    EXPECT_TRUE(f.payload.empty());

    wire::Header back;
    ASSERT_TRUE(back.ParseFromString(f.header));
    ASSERT_EQ(back.body_case(), wire::Header::kOffer);
    const auto& offer = back.offer();
    ASSERT_EQ(offer.entries_size(), 1000);
    EXPECT_EQ(offer.transfer_id(), 0x0123456789abcdefULL);
    EXPECT_TRUE(offer.last());
    EXPECT_TRUE(offer.overwrite());
    EXPECT_EQ(offer.total_files(), 1000u);
    EXPECT_EQ(offer.entries(999).id(), 999u);
    EXPECT_EQ(offer.entries(999).path(), "dir5/données/file-999.bin");
    EXPECT_EQ(offer.entries(999).size(), 999u * 1'000'003ULL);
    EXPECT_EQ(offer.entries(995).kind(), wire::ENTRY_DIR);
    EXPECT_EQ(offer.entries(0).mtime_ns(), -1'000'000'000LL);
}

TEST(frame_round_trip, chunk_with_256_kib_payload) {
    bytes payload = pattern_bytes(chunk_size, 1);
    wire::Header h = chunk_header(chunk_size);
    bytes out;
    ASSERT_TRUE(append_frame(h, payload, out));
    ASSERT_EQ(out.size(), 1 + h.ByteSizeLong() + chunk_size);
    // The payload follows the header verbatim.
    EXPECT_TRUE(std::equal(payload.begin(), payload.end(), out.end() - chunk_size));

    decoded_frame f = decode_one(out);
    EXPECT_EQ(f.header, serialized(h));
    EXPECT_EQ(f.payload, payload);

    // Fed in one call, the header step hands back the payload in the next step, in place.
    frame_decoder d;
    decode_result r = d.feed(out);
    ASSERT_EQ(r.event, decode_event::header);
    EXPECT_FALSE(r.frame_complete);
    EXPECT_TRUE(d.in_payload());
    EXPECT_EQ(d.payload_remaining(), chunk_size);
    EXPECT_EQ(d.header().chunk().file_id(), 7u);
    EXPECT_EQ(d.header().chunk().index(), 42u);
    EXPECT_EQ(d.header().chunk().raw_len(), chunk_size);
    EXPECT_EQ(d.header().chunk().hash_lo(), 0x1122334455667788ULL);
    EXPECT_EQ(d.header().chunk().hash_hi(), 0x99aabbccddeeff00ULL);
    std::span<const std::uint8_t> rest = std::span<const std::uint8_t>(out).subspan(r.consumed);
    r = d.feed(rest);
    ASSERT_EQ(r.event, decode_event::payload);
    EXPECT_EQ(r.consumed, chunk_size);
    EXPECT_EQ(r.payload.data(), rest.data());
    EXPECT_EQ(r.payload.size(), chunk_size);
    EXPECT_TRUE(r.frame_complete);
    EXPECT_FALSE(d.in_payload());
    EXPECT_EQ(d.payload_remaining(), 0u);
}

TEST(frame_round_trip, chunk_ack) {
    wire::Header h = chunk_ack_header();
    bytes out;
    ASSERT_TRUE(append_frame(h, {}, out));
    decoded_frame f = decode_one(out);
    EXPECT_EQ(f.header, serialized(h));
    wire::Header back;
    ASSERT_TRUE(back.ParseFromString(f.header));
    ASSERT_EQ(back.body_case(), wire::Header::kChunkAck);
    ASSERT_EQ(back.chunk_ack().chunks_size(), 101);
    std::uint64_t k = back.chunk_ack().chunks(55);
    EXPECT_EQ(chunk_key_file(k), file_id{5});
    EXPECT_EQ(chunk_key_index(k), chunk_index{55'000});
    std::uint64_t last = back.chunk_ack().chunks(100);
    EXPECT_EQ(chunk_key_file(last), file_id{0xffffffffu});
    EXPECT_EQ(chunk_key_index(last), chunk_index{0xffffffffu});
}

TEST(frame_round_trip, error) {
    wire::Header h = error_header();
    bytes out;
    ASSERT_TRUE(append_frame(h, {}, out));
    decoded_frame f = decode_one(out);
    wire::Header back;
    ASSERT_TRUE(back.ParseFromString(f.header));
    ASSERT_EQ(back.body_case(), wire::Header::kError);
    EXPECT_EQ(back.error().code(), wire::ERROR_INTEGRITY);
    EXPECT_EQ(back.error().message(), "digest mismatch for \"a/b.txt\"");
}

TEST(frame_round_trip, small_payload_kinds) {
    // A payload on a non-chunk message is the codec's business only: it is carried as is.
    for (std::uint32_t n : {0u, 1u, 2u, 127u, 128u, 1000u}) {
        SCOPED_TRACE(n);
        wire::Header h = ping_header(n);
        h.set_payload_len(n);
        bytes payload = pattern_bytes(n, n);
        bytes out;
        ASSERT_TRUE(append_frame(h, payload, out));
        decoded_frame f = decode_one(out);
        EXPECT_EQ(f.header, serialized(h));
        EXPECT_EQ(f.payload, payload);
    }
}

TEST(frame_round_trip, append_appends_after_existing_bytes) {
    bytes out = {0xde, 0xad};
    wire::Header h = ping_header(9);
    ASSERT_TRUE(append_frame_header(h, out));
    ASSERT_GE(out.size(), 3u);
    EXPECT_EQ(out[0], 0xde);
    EXPECT_EQ(out[1], 0xad);
    bytes expected;
    ASSERT_TRUE(append_frame_header(h, expected));
    EXPECT_TRUE(std::equal(expected.begin(), expected.end(), out.begin() + 2, out.end()));
}

TEST(frame_round_trip, max_payload_is_accepted) {
    bytes payload = pattern_bytes(max_payload_len, 3);
    wire::Header h = chunk_header(max_payload_len);
    bytes out;
    ASSERT_TRUE(append_frame(h, payload, out));
    decoded_frame f = decode_one(out);
    EXPECT_EQ(f.payload, payload);
}

TEST(frame_round_trip, append_frame_refuses_mismatched_or_oversized_payload) {
    bytes payload = pattern_bytes(10, 4);
    bytes out;
    wire::Header h = chunk_header(9);
    EXPECT_FALSE(append_frame(h, payload, out));
    h.set_payload_len(11);
    EXPECT_FALSE(append_frame(h, payload, out));
    EXPECT_TRUE(out.empty());

    bytes big(max_payload_len + 1);
    h.set_payload_len(max_payload_len + 1);
    EXPECT_FALSE(append_frame(h, big, out));
    EXPECT_TRUE(out.empty());
}

// ---------------------------------------------------------------------------------------
// A stream of frames fed in pieces.

struct expected_frame {
    std::string header;
    std::size_t payload_begin = 0;  // offset of the payload in the stream
    std::size_t payload_len = 0;
    bytes payload;
};

struct encoded_stream {
    bytes data;
    std::vector<expected_frame> frames;

    void add(const wire::Header& h, const bytes& payload) {
        ASSERT_TRUE(append_frame(h, payload, data));
        frames.push_back({serialized(h), data.size() - payload.size(), payload.size(), payload});
    }
};

// Payloads of 0, 1, 1000 and 256 KiB, a header with a 2-byte varint, and frames of
// several kinds around them.
encoded_stream mixed_stream() {
    encoded_stream s;
    s.add(hello_header(), {});
    s.add(chunk_header(0), {});
    s.add(chunk_header(1), pattern_bytes(1, 10));
    s.add(offer_header(5), {});
    s.add(chunk_header(1000), pattern_bytes(1000, 11));
    s.add(chunk_header(chunk_size), pattern_bytes(chunk_size, 12));
    s.add(chunk_ack_header(), {});
    s.add(chunk_header(1), pattern_bytes(1, 13));
    s.add(error_header(), {});
    return s;
}

// Only frames without big payloads, for the quadratic test.
encoded_stream small_stream() {
    encoded_stream s;
    s.add(ping_header(1), {});
    s.add(chunk_header(1), pattern_bytes(1, 20));
    s.add(hello_header(), {});
    s.add(chunk_header(3), pattern_bytes(3, 21));
    s.add(error_header(), {});
    return s;
}

// Drives one decoder over a stream fed in pieces, and checks every step against the
// frames the stream was built from. Each piece must be a subrange of `s.data`, fed in
// order; a payload piece must then point exactly at the payload bytes inside the stream,
// which proves its bytes identical without copying. With `copy`, the payloads are also
// collected and compared byte by byte at the end.
class stream_checker {
public:
    explicit stream_checker(const encoded_stream& s, bool copy = false) : s_(s), copy_(copy) {
        if (copy_) {
            got_.resize(s_.frames.size());
        }
    }

    // Feeds [begin, end) of the stream. Returns "" or a description of the first mismatch.
    std::string feed(std::size_t begin, std::size_t end) {
        if (begin != pos_) {
            return "pieces not contiguous";
        }
        while (pos_ < end) {
            std::span<const std::uint8_t> in(s_.data.data() + pos_, end - pos_);
            decode_result r = d_.feed(in);
            if (r.consumed > in.size()) {
                return "consumed more than given";
            }
            if (r.consumed == 0) {
                return "no progress at " + std::to_string(pos_);
            }
            switch (r.event) {
                case decode_event::error:
                    return "error at " + std::to_string(pos_) + ": " + r.ec.message();
                case decode_event::need_more:
                    if (r.consumed != in.size()) {
                        return "need_more without consuming everything at " + std::to_string(pos_);
                    }
                    if (d_.in_payload()) {
                        return "need_more in payload state";
                    }
                    break;
                case decode_event::header: {
                    if (in_payload_) {
                        return "header inside a payload at " + std::to_string(pos_);
                    }
                    if (next_ >= s_.frames.size()) {
                        return "extra frame at " + std::to_string(pos_);
                    }
                    const expected_frame& f = s_.frames[next_];
                    if (pos_ + r.consumed != f.payload_begin) {
                        return "header of frame " + std::to_string(next_) + " ends at the wrong offset";
                    }
                    if (serialized(d_.header()) != f.header) {
                        return "header of frame " + std::to_string(next_) + " differs";
                    }
                    if (d_.payload_remaining() != f.payload_len || r.frame_complete != (f.payload_len == 0) ||
                        d_.in_payload() != (f.payload_len > 0)) {
                        return "payload state of frame " + std::to_string(next_) + " wrong after header";
                    }
                    if (r.frame_complete) {
                        ++next_;
                    } else {
                        in_payload_ = true;
                    }
                    break;
                }
                case decode_event::payload: {
                    if (!in_payload_) {
                        return "payload outside a frame at " + std::to_string(pos_);
                    }
                    const expected_frame& f = s_.frames[next_];
                    std::size_t end_of_payload = f.payload_begin + f.payload_len;
                    if (r.payload.data() != in.data() || r.payload.size() != r.consumed) {
                        return "payload piece not in place at " + std::to_string(pos_);
                    }
                    if (pos_ < f.payload_begin || pos_ + r.consumed > end_of_payload) {
                        return "payload piece outside frame " + std::to_string(next_);
                    }
                    if (d_.payload_remaining() != end_of_payload - pos_ - r.consumed) {
                        return "payload_remaining wrong at " + std::to_string(pos_);
                    }
                    if (copy_) {
                        got_[next_].insert(got_[next_].end(), r.payload.begin(), r.payload.end());
                    }
                    bool last = pos_ + r.consumed == end_of_payload;
                    if (r.frame_complete != last) {
                        return "frame_complete wrong at " + std::to_string(pos_);
                    }
                    if (last) {
                        in_payload_ = false;
                        ++next_;
                    }
                    break;
                }
            }
            pos_ += r.consumed;
        }
        return "";
    }

    // After the whole stream: every frame seen, complete, with identical payloads.
    std::string finish() const {
        if (pos_ != s_.data.size()) {
            return "stream not fully fed";
        }
        if (next_ != s_.frames.size() || in_payload_ || d_.in_payload() || d_.failed()) {
            return "saw " + std::to_string(next_) + " of " + std::to_string(s_.frames.size()) + " frames";
        }
        if (copy_) {
            for (std::size_t i = 0; i < s_.frames.size(); ++i) {
                if (got_[i] != s_.frames[i].payload) {
                    return "payload of frame " + std::to_string(i) + " differs";
                }
            }
        }
        return "";
    }

private:
    const encoded_stream& s_;
    bool copy_;
    frame_decoder d_;
    std::size_t pos_ = 0;
    std::size_t next_ = 0;
    bool in_payload_ = false;
    std::vector<bytes> got_;
};

TEST(frame_stream, stream_layout) {
    encoded_stream s = mixed_stream();
    ASSERT_EQ(s.frames.size(), 9u);
    EXPECT_GT(s.frames[3].header.size(), 127u);  // the Offer has a 2-byte varint
    EXPECT_EQ(s.frames.back().payload_begin + s.frames.back().payload_len, s.data.size());
}

TEST(frame_stream, whole_stream_in_one_piece) {
    encoded_stream s = mixed_stream();
    stream_checker c(s, true);
    ASSERT_EQ(c.feed(0, s.data.size()), "");
    EXPECT_EQ(c.finish(), "");
}

// Whether a split at `k` is worth its own run: every point in or near a frame's header,
// and within 64 bytes of a payload's ends. Points deep inside a payload all leave the
// decoder in the same state (a stride of 997 through them checks that): trying each of a
// megabyte's took 15 s under ASan and 41 s under TSan for nothing more.
bool telling_split(const encoded_stream& s, std::size_t k) {
    for (const expected_frame& f : s.frames) {
        if (k > f.payload_begin + 64 && k + 64 < f.payload_begin + f.payload_len) {
            return k % 997 == 0;
        }
    }
    return true;
}

TEST(frame_stream, split_at_every_byte_boundary) {
    encoded_stream s = mixed_stream();
    std::size_t n = s.data.size();
    std::size_t tried = 0;
    for (std::size_t k = 0; k <= n; ++k) {
        if (!telling_split(s, k)) {
            continue;
        }
        ++tried;
        stream_checker c(s);
        std::string err = c.feed(0, k);
        if (err.empty()) {
            err = c.feed(k, n);
        }
        if (err.empty()) {
            err = c.finish();
        }
        ASSERT_EQ(err, "") << "split at " << k << " of " << n;
    }
    EXPECT_GT(tried, n / 997);  // the stride ran, and every boundary region besides
}

TEST(frame_stream, split_at_every_byte_boundary_with_copies) {
    // Copying variant, on the frames without the big payload (plus a full check at a few
    // split points inside the big payload).
    encoded_stream s = small_stream();
    std::size_t n = s.data.size();
    for (std::size_t k = 0; k <= n; ++k) {
        stream_checker c(s, true);
        std::string err = c.feed(0, k);
        if (err.empty()) {
            err = c.feed(k, n);
        }
        if (err.empty()) {
            err = c.finish();
        }
        ASSERT_EQ(err, "") << "split at " << k << " of " << n;
    }
    encoded_stream m = mixed_stream();
    const expected_frame& big = m.frames[5];
    for (std::size_t k : {big.payload_begin - 1, big.payload_begin, big.payload_begin + 1,
                          big.payload_begin + big.payload_len / 2, big.payload_begin + big.payload_len - 1,
                          big.payload_begin + big.payload_len}) {
        stream_checker c(m, true);
        std::string err = c.feed(0, k);
        if (err.empty()) {
            err = c.feed(k, m.data.size());
        }
        if (err.empty()) {
            err = c.finish();
        }
        ASSERT_EQ(err, "") << "split at " << k;
    }
}

TEST(frame_stream, split_at_every_pair_of_boundaries) {
    encoded_stream s = small_stream();
    std::size_t n = s.data.size();
    for (std::size_t i = 0; i <= n; ++i) {
        for (std::size_t j = i; j <= n; ++j) {
            stream_checker c(s);
            std::string err = c.feed(0, i);
            if (err.empty()) {
                err = c.feed(i, j);
            }
            if (err.empty()) {
                err = c.feed(j, n);
            }
            if (err.empty()) {
                err = c.finish();
            }
            ASSERT_EQ(err, "") << "split at " << i << " and " << j << " of " << n;
        }
    }
}

TEST(frame_stream, one_byte_at_a_time) {
    encoded_stream s = mixed_stream();
    stream_checker c(s, true);
    for (std::size_t k = 0; k < s.data.size(); ++k) {
        ASSERT_EQ(c.feed(k, k + 1), "") << "byte " << k;
    }
    EXPECT_EQ(c.finish(), "");
}

TEST(frame_stream, random_pieces) {
    encoded_stream s = mixed_stream();
    std::mt19937 rng(20240607);
    for (int round = 0; round < 50; ++round) {
        SCOPED_TRACE(round);
        // Small pieces in some rounds (headers split many ways), large ones in others.
        std::size_t max_piece = round % 3 == 0 ? 7 : (round % 3 == 1 ? 300 : 70'000);
        std::uniform_int_distribution<std::size_t> piece(1, max_piece);
        stream_checker c(s, true);
        std::size_t at = 0;
        while (at < s.data.size()) {
            std::size_t next = std::min(s.data.size(), at + piece(rng));
            ASSERT_EQ(c.feed(at, next), "") << "piece [" << at << ", " << next << ")";
            at = next;
        }
        EXPECT_EQ(c.finish(), "");
    }
}

TEST(frame_stream, empty_input_needs_more) {
    encoded_stream s = mixed_stream();
    frame_decoder d;
    decode_result r = d.feed({});
    EXPECT_EQ(r.event, decode_event::need_more);
    EXPECT_EQ(r.consumed, 0u);
    // Part of a header, then nothing, then the rest.
    std::span<const std::uint8_t> all(s.data);
    r = d.feed(all.first(3));
    EXPECT_EQ(r.event, decode_event::need_more);
    EXPECT_EQ(r.consumed, 3u);
    r = d.feed({});
    EXPECT_EQ(r.event, decode_event::need_more);
    EXPECT_EQ(r.consumed, 0u);
    EXPECT_FALSE(d.failed());
    std::vector<decoded_frame> frames;
    ASSERT_FALSE(feed_all(d, all.subspan(3), frames));
    ASSERT_EQ(frames.size(), s.frames.size());
    // Empty input in the middle of a payload changes nothing either.
    frame_decoder d2;
    const expected_frame& big = s.frames[5];
    frames.clear();
    ASSERT_FALSE(feed_all(d2, all.first(big.payload_begin + 10), frames));
    ASSERT_TRUE(d2.in_payload());
    r = d2.feed({});
    EXPECT_EQ(r.event, decode_event::need_more);
    EXPECT_EQ(r.consumed, 0u);
    EXPECT_EQ(d2.payload_remaining(), big.payload_len - 10);
}

// ---------------------------------------------------------------------------------------
// payload_taken(): the caller reads the payload into its own buffer.

// Decodes `s` fed in pieces of `piece` bytes; payload bytes go to the caller's buffer,
// alternately through feed() and through a direct copy + payload_taken().
void decode_with_payload_taken(const encoded_stream& s, std::size_t piece, std::mt19937& rng) {
    frame_decoder d;
    std::vector<decoded_frame> frames;
    std::bernoulli_distribution use_taken(0.5);
    std::size_t pos = 0;
    while (pos < s.data.size()) {
        std::size_t end = std::min(s.data.size(), pos + piece);
        while (pos < end) {
            std::span<const std::uint8_t> in(s.data.data() + pos, end - pos);
            if (d.in_payload() && use_taken(rng)) {
                ASSERT_FALSE(frames.empty());
                std::size_t n = std::min(in.size(), d.payload_remaining());
                ASSERT_GT(n, 0u);
                std::size_t before = d.payload_remaining();
                frames.back().payload.insert(frames.back().payload.end(), in.begin(), in.begin() + n);
                bool done = d.payload_taken(n);
                EXPECT_EQ(done, before == n);
                EXPECT_EQ(d.payload_remaining(), before - n);
                EXPECT_EQ(d.in_payload(), !done);
                frames.back().complete = done;
                pos += n;
                continue;
            }
            decode_result r = d.feed(in);
            ASSERT_NE(r.event, decode_event::error) << r.ec.message();
            ASSERT_GT(r.consumed, 0u);
            if (r.event == decode_event::header) {
                frames.push_back({serialized(d.header()), {}, r.frame_complete});
            } else if (r.event == decode_event::payload) {
                ASSERT_FALSE(frames.empty());
                frames.back().payload.insert(frames.back().payload.end(), r.payload.begin(), r.payload.end());
                frames.back().complete = r.frame_complete;
            }
            pos += r.consumed;
        }
    }
    EXPECT_FALSE(d.in_payload());
    EXPECT_FALSE(d.failed());
    ASSERT_EQ(frames.size(), s.frames.size());
    for (std::size_t i = 0; i < frames.size(); ++i) {
        EXPECT_EQ(frames[i].header, s.frames[i].header) << "frame " << i;
        EXPECT_EQ(frames[i].payload, s.frames[i].payload) << "frame " << i;
        EXPECT_TRUE(frames[i].complete) << "frame " << i;
    }
}

TEST(frame_payload_taken, whole_payload_after_header) {
    encoded_stream s;
    s.add(chunk_header(chunk_size), pattern_bytes(chunk_size, 30));
    s.add(ping_header(5), {});
    frame_decoder d;
    std::span<const std::uint8_t> all(s.data);
    decode_result r = d.feed(all);
    ASSERT_EQ(r.event, decode_event::header);
    ASSERT_TRUE(d.in_payload());
    ASSERT_EQ(d.payload_remaining(), chunk_size);
    // The caller reads the payload straight from its socket into its own buffer.
    bytes mine(all.begin() + static_cast<std::ptrdiff_t>(r.consumed),
               all.begin() + static_cast<std::ptrdiff_t>(r.consumed + chunk_size));
    EXPECT_TRUE(d.payload_taken(chunk_size));
    EXPECT_FALSE(d.in_payload());
    EXPECT_EQ(d.payload_remaining(), 0u);
    EXPECT_EQ(mine, s.frames[0].payload);
    // The decoder goes on with the next header.
    r = d.feed(all.subspan(r.consumed + chunk_size));
    ASSERT_EQ(r.event, decode_event::header);
    EXPECT_TRUE(r.frame_complete);
    EXPECT_EQ(d.header().ping().nonce(), 5u);
}

TEST(frame_payload_taken, in_pieces_then_feed_finishes) {
    encoded_stream s;
    s.add(chunk_header(1000), pattern_bytes(1000, 31));
    frame_decoder d;
    std::span<const std::uint8_t> all(s.data);
    decode_result r = d.feed(all);
    ASSERT_EQ(r.event, decode_event::header);
    std::size_t pos = r.consumed;
    EXPECT_FALSE(d.payload_taken(0));
    EXPECT_EQ(d.payload_remaining(), 1000u);
    EXPECT_TRUE(d.in_payload());
    EXPECT_FALSE(d.payload_taken(400));
    EXPECT_EQ(d.payload_remaining(), 600u);
    pos += 400;
    r = d.feed(all.subspan(pos, 100));
    ASSERT_EQ(r.event, decode_event::payload);
    EXPECT_EQ(r.payload.data(), all.data() + pos);
    EXPECT_EQ(r.consumed, 100u);
    EXPECT_FALSE(r.frame_complete);
    pos += 100;
    EXPECT_FALSE(d.payload_taken(499));
    EXPECT_EQ(d.payload_remaining(), 1u);
    pos += 499;
    r = d.feed(all.subspan(pos));
    ASSERT_EQ(r.event, decode_event::payload);
    EXPECT_EQ(r.consumed, 1u);
    EXPECT_TRUE(r.frame_complete);
    EXPECT_EQ(r.payload[0], s.frames[0].payload[999]);
    EXPECT_FALSE(d.in_payload());
}

TEST(frame_payload_taken, mixed_with_feed_over_a_stream) {
    encoded_stream s = mixed_stream();
    std::mt19937 rng(7);
    for (std::size_t piece : {std::size_t{1}, std::size_t{13}, std::size_t{4096}, std::size_t{100'000},
                              s.data.size()}) {
        SCOPED_TRACE(piece);
        decode_with_payload_taken(s, piece, rng);
    }
}

// ---------------------------------------------------------------------------------------
// Limits and malformed input.

// Feeds `in` whole, then (on a fresh decoder) one byte at a time; both must fail with `e`
// after consuming no bytes past the offending one.
void expect_error(const bytes& in, protocol_errc e, std::uint32_t max_header = max_header_len,
                  std::uint32_t max_payload = max_payload_len) {
    {
        frame_decoder d(max_header, max_payload);
        std::vector<decoded_frame> frames;
        EXPECT_EQ(feed_all(d, in, frames), make_error_code(e)) << "whole";
        EXPECT_TRUE(frames.empty());
        EXPECT_TRUE(d.failed());
        EXPECT_FALSE(d.in_payload());
    }
    {
        frame_decoder d(max_header, max_payload);
        decode_result r;
        std::size_t i = 0;
        for (; i < in.size(); ++i) {
            r = d.feed(std::span<const std::uint8_t>(in).subspan(i, 1));
            if (r.event != decode_event::need_more) {
                break;
            }
            EXPECT_EQ(r.consumed, 1u);
        }
        EXPECT_EQ(r.event, decode_event::error) << "byte at a time";
        EXPECT_EQ(r.ec, make_error_code(e)) << "byte at a time, failed at byte " << i;
        EXPECT_TRUE(d.failed());
    }
}

bytes frame_prefix(const wire::Header& h) {
    bytes out;
    EXPECT_TRUE(append_frame_header(h, out));
    return out;
}

TEST(frame_limits, header_too_large_from_the_varint_alone) {
    bytes in = varint_bytes(max_header_len + 1);
    ASSERT_EQ(in.size(), 3u);
    frame_decoder d;
    decode_result r = d.feed(in);
    EXPECT_EQ(r.event, decode_event::error);
    EXPECT_EQ(r.ec, protocol_errc::header_too_large);
    EXPECT_TRUE(d.failed());
    expect_error(in, protocol_errc::header_too_large);
    expect_error(varint_bytes(0xffffffffu), protocol_errc::header_too_large);
}

TEST(frame_limits, header_of_exactly_the_limit_is_awaited) {
    bytes in = varint_bytes(max_header_len);
    frame_decoder d;
    decode_result r = d.feed(in);
    EXPECT_EQ(r.event, decode_event::need_more);
    EXPECT_EQ(r.consumed, in.size());
    EXPECT_FALSE(d.failed());
}

TEST(frame_limits, header_of_exactly_the_limit_round_trips) {
    // Grow a Hello's agent until the Header is exactly max_header_len bytes.
    wire::Header h = hello_header();
    std::size_t agent = max_header_len - 64;
    h.mutable_hello()->set_agent(std::string(agent, 'x'));
    while (h.ByteSizeLong() < max_header_len) {
        h.mutable_hello()->set_agent(std::string(++agent, 'x'));
    }
    ASSERT_EQ(h.ByteSizeLong(), max_header_len);
    bytes out;
    ASSERT_TRUE(append_frame_header(h, out));
    decoded_frame f = decode_one(out);
    EXPECT_EQ(f.header, serialized(h));

    // One more byte is refused by the encoder, and leaves `out` untouched.
    h.mutable_hello()->set_agent(std::string(agent + 1, 'x'));
    ASSERT_EQ(h.ByteSizeLong(), max_header_len + 1);
    bytes before = out;
    EXPECT_FALSE(append_frame_header(h, out));
    EXPECT_FALSE(append_frame(h, {}, out));
    EXPECT_EQ(out, before);
}

TEST(frame_limits, append_frame_header_refuses_over_64_kib) {
    wire::Header h = offer_header(5000);
    ASSERT_GT(h.ByteSizeLong(), max_header_len);
    bytes out;
    EXPECT_FALSE(append_frame_header(h, out));
    EXPECT_TRUE(out.empty());
}

TEST(frame_limits, payload_too_large) {
    wire::Header h = ping_header(1);
    h.set_payload_len(max_payload_len + 1);
    expect_error(frame_prefix(h), protocol_errc::payload_too_large);
    h.set_payload_len(0xffffffffu);
    expect_error(frame_prefix(h), protocol_errc::payload_too_large);

    h.set_payload_len(max_payload_len);
    frame_decoder d;
    decode_result r = d.feed(frame_prefix(h));
    EXPECT_EQ(r.event, decode_event::header);
    EXPECT_EQ(d.payload_remaining(), max_payload_len);
}

TEST(frame_limits, bad_varint) {
    expect_error(bytes(6, 0xff), protocol_errc::bad_varint);
    expect_error(bytes{0x80, 0x80, 0x80, 0x80, 0x80, 0x00}, protocol_errc::bad_varint);
    // Five bytes whose value does not fit 32 bits.
    expect_error(bytes{0xff, 0xff, 0xff, 0xff, 0x1f}, protocol_errc::bad_varint);
}

TEST(frame_limits, bad_header) {
    // Field 2 (Hello) claims 16 bytes, only 1 follows.
    expect_error(bytes{0x03, 0x12, 0x10, 0x01}, protocol_errc::bad_header);
    // Wire type 7 does not exist.
    expect_error(bytes{0x02, 0x0f, 0x00}, protocol_errc::bad_header);
    // Field number 0 is invalid.
    expect_error(bytes{0x02, 0x00, 0x00}, protocol_errc::bad_header);
    // A truncated varint field inside the header.
    expect_error(bytes{0x02, 0x08, 0x80}, protocol_errc::bad_header);
    // Random garbage that happens to start with a small length.
    bytes g = pattern_bytes(40, 99);
    g[0] = 39;
    g[1] = 0xff;  // tag varint that never ends inside the header
    g[2] = 0xff;
    g[3] = 0xff;
    g[4] = 0xff;
    g[5] = 0xff;
    g[6] = 0xff;
    expect_error(g, protocol_errc::bad_header);
}

TEST(frame_limits, empty_body) {
    // A zero-length header.
    expect_error(bytes{0x00}, protocol_errc::empty_body);
    // A header with only payload_len.
    wire::Header h;
    h.set_payload_len(10);
    expect_error(frame_prefix(h), protocol_errc::empty_body);
    // A header with only an unknown field (number 15, varint).
    expect_error(bytes{0x02, 0x78, 0x01}, protocol_errc::empty_body);
}

TEST(frame_limits, decoder_stays_failed) {
    bytes good;
    ASSERT_TRUE(append_frame(hello_header(), {}, good));
    for (const bytes& bad : {bytes(6, 0xff), bytes{0x00}, varint_bytes(max_header_len + 1)}) {
        frame_decoder d;
        decode_result r = d.feed(bad);
        ASSERT_EQ(r.event, decode_event::error);
        ASSERT_TRUE(d.failed());
        for (int i = 0; i < 3; ++i) {
            r = d.feed(good);
            EXPECT_EQ(r.event, decode_event::error);
            EXPECT_TRUE(r.ec);
            EXPECT_EQ(r.consumed, 0u);
            EXPECT_TRUE(d.failed());
        }
        r = d.feed({});
        EXPECT_EQ(r.event, decode_event::error);
        EXPECT_FALSE(d.payload_taken(1));
        EXPECT_TRUE(d.failed());
    }
}

TEST(frame_limits, error_after_good_frames) {
    // Good frames are delivered, then the bad one fails the decoder.
    encoded_stream s = small_stream();
    bytes in = s.data;
    in.push_back(0x00);  // an empty header
    frame_decoder d;
    std::vector<decoded_frame> frames;
    EXPECT_EQ(feed_all(d, in, frames), make_error_code(protocol_errc::empty_body));
    ASSERT_EQ(frames.size(), s.frames.size());
    for (std::size_t i = 0; i < frames.size(); ++i) {
        EXPECT_EQ(frames[i].header, s.frames[i].header);
        EXPECT_EQ(frames[i].payload, s.frames[i].payload);
    }
    EXPECT_TRUE(d.failed());
}

TEST(frame_limits, custom_limits) {
    constexpr std::uint32_t max_header = 100;
    constexpr std::uint32_t max_payload = 1000;

    // Header length: 100 is awaited, 101 is refused from the varint alone.
    {
        frame_decoder d(max_header, max_payload);
        decode_result r = d.feed(varint_bytes(100));
        EXPECT_EQ(r.event, decode_event::need_more);
        EXPECT_FALSE(d.failed());
    }
    expect_error(varint_bytes(101), protocol_errc::header_too_large, max_header, max_payload);

    // A real header just over the limit, and one at it.
    wire::Header h;
    h.mutable_error()->set_message(std::string(10, 'e'));
    while (h.ByteSizeLong() < max_header) {
        h.mutable_error()->mutable_message()->push_back('e');
    }
    ASSERT_EQ(h.ByteSizeLong(), max_header);
    {
        bytes out;
        ASSERT_TRUE(append_frame(h, {}, out));
        frame_decoder d(max_header, max_payload);
        std::vector<decoded_frame> frames;
        EXPECT_FALSE(feed_all(d, out, frames));
        ASSERT_EQ(frames.size(), 1u);
        EXPECT_EQ(frames[0].header, serialized(h));
    }
    h.mutable_error()->mutable_message()->push_back('e');
    expect_error(frame_prefix(h), protocol_errc::header_too_large, max_header, max_payload);

    // Payload: 1000 is accepted, 1001 refused; the default limits accept both.
    {
        encoded_stream s;
        s.add(chunk_header(1000), pattern_bytes(1000, 40));
        frame_decoder d(max_header, max_payload);
        std::vector<decoded_frame> frames;
        EXPECT_FALSE(feed_all(d, s.data, frames));
        ASSERT_EQ(frames.size(), 1u);
        EXPECT_EQ(frames[0].payload, s.frames[0].payload);
    }
    bytes big = frame_prefix(chunk_header(1001));
    expect_error(big, protocol_errc::payload_too_large, max_header, max_payload);
    frame_decoder d;
    EXPECT_EQ(d.feed(big).event, decode_event::header);
}

TEST(read_varint32, values_and_errors) {
    std::uint32_t v = 12345;
    EXPECT_EQ(read_varint32({}, v), 0);
    EXPECT_EQ(read_varint32(bytes{0x00}, v), 1);
    EXPECT_EQ(v, 0u);
    EXPECT_EQ(read_varint32(bytes{0x7f, 0xff}, v), 1);
    EXPECT_EQ(v, 127u);
    EXPECT_EQ(read_varint32(bytes{0x80}, v), 0);
    EXPECT_EQ(read_varint32(bytes{0xac, 0x02}, v), 2);
    EXPECT_EQ(v, 300u);
    EXPECT_EQ(read_varint32(bytes{0xff, 0xff, 0xff, 0xff}, v), 0);
    EXPECT_EQ(read_varint32(bytes{0xff, 0xff, 0xff, 0xff, 0x0f}, v), 5);
    EXPECT_EQ(v, 0xffffffffu);
    EXPECT_EQ(read_varint32(bytes{0xff, 0xff, 0xff, 0xff, 0x10}, v), -1);
    EXPECT_EQ(read_varint32(bytes{0x80, 0x80, 0x80, 0x80, 0x80}, v), -1);
    EXPECT_EQ(read_varint32(bytes(6, 0xff), v), -1);
    for (std::uint32_t x : {0u, 1u, 127u, 128u, 16'383u, 16'384u, max_header_len, max_payload_len, 0xfffffffeu}) {
        bytes b = varint_bytes(x);
        EXPECT_EQ(read_varint32(b, v), static_cast<int>(b.size()));
        EXPECT_EQ(v, x);
    }
}

}  // namespace
}  // namespace ferry
