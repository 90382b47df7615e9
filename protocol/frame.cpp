#include "protocol/frame.hpp"

#include <algorithm>

namespace ferry {

namespace {

void append_varint32(std::uint32_t v, std::vector<std::uint8_t>& out) {
    while (v >= 0x80) {
        out.push_back(static_cast<std::uint8_t>(v | 0x80));
        v >>= 7;
    }
    out.push_back(static_cast<std::uint8_t>(v));
}

}  // namespace

int read_varint32(std::span<const std::uint8_t> in, std::uint32_t& value) {
    std::uint64_t v = 0;
    for (std::size_t i = 0; i < 5; ++i) {
        if (i >= in.size()) {
            return 0;
        }
        std::uint8_t b = in[i];
        v |= std::uint64_t{b & 0x7fu} << (7 * i);
        if ((b & 0x80) == 0) {
            if (v > 0xffffffffu) {
                return -1;
            }
            value = static_cast<std::uint32_t>(v);
            return static_cast<int>(i + 1);
        }
    }
    return -1;
}

bool append_frame_header(const wire::Header& header, std::vector<std::uint8_t>& out) {
    std::size_t len = header.ByteSizeLong();
    if (len > max_header_len) {
        return false;
    }
    append_varint32(static_cast<std::uint32_t>(len), out);
    std::size_t at = out.size();
    out.resize(at + len);
    header.SerializeWithCachedSizesToArray(out.data() + at);
    return true;
}

bool append_frame(const wire::Header& header, std::span<const std::uint8_t> payload, std::vector<std::uint8_t>& out) {
    if (header.payload_len() != payload.size() || payload.size() > max_payload_len) {
        return false;
    }
    if (!append_frame_header(header, out)) {
        return false;
    }
    out.insert(out.end(), payload.begin(), payload.end());
    return true;
}

decode_result frame_decoder::fail(protocol_errc e) {
    state_ = state::failed;
    acc_.clear();
    acc_.shrink_to_fit();
    decode_result r;
    r.event = decode_event::error;
    r.ec = e;
    return r;
}

decode_result frame_decoder::finish_header(std::span<const std::uint8_t> header_bytes, std::size_t consumed) {
    header_.Clear();
    if (!header_.ParseFromArray(header_bytes.data(), static_cast<int>(header_bytes.size()))) {
        return fail(protocol_errc::bad_header);
    }
    if (header_.payload_len() > max_payload_) {
        return fail(protocol_errc::payload_too_large);
    }
    if (header_.body_case() == wire::Header::BODY_NOT_SET) {
        return fail(protocol_errc::empty_body);
    }
    acc_.clear();
    need_ = 0;
    payload_remaining_ = header_.payload_len();
    state_ = payload_remaining_ > 0 ? state::payload : state::header;
    decode_result r;
    r.event = decode_event::header;
    r.consumed = consumed;
    r.frame_complete = payload_remaining_ == 0;
    return r;
}

decode_result frame_decoder::feed(std::span<const std::uint8_t> in) {
    if (state_ == state::failed) {
        decode_result r;
        r.event = decode_event::error;
        r.ec = protocol_errc::bad_header;
        return r;
    }
    if (state_ == state::payload) {
        std::size_t n = std::min(in.size(), payload_remaining_);
        if (n == 0) {
            return {};
        }
        payload_remaining_ -= n;
        decode_result r;
        r.event = decode_event::payload;
        r.consumed = n;
        r.payload = in.first(n);
        r.frame_complete = payload_remaining_ == 0;
        if (r.frame_complete) {
            state_ = state::header;
        }
        return r;
    }

    // Header state. Fast path: the whole varint + header is inside `in`.
    if (acc_.empty()) {
        std::uint32_t len = 0;
        int used = read_varint32(in, len);
        if (used < 0) {
            return fail(protocol_errc::bad_varint);
        }
        if (used > 0) {
            if (len > max_header_) {
                return fail(protocol_errc::header_too_large);
            }
            std::size_t total = static_cast<std::size_t>(used) + len;
            if (in.size() >= total) {
                return finish_header(in.subspan(used, len), total);
            }
        }
    }

    // Slow path: accumulate. Before the varint is known, take one byte at a time (at most 5).
    std::size_t consumed = 0;
    while (consumed < in.size()) {
        if (need_ == 0) {
            acc_.push_back(in[consumed++]);
            std::uint32_t len = 0;
            int used = read_varint32(acc_, len);
            if (used < 0) {
                return fail(protocol_errc::bad_varint);
            }
            if (used == 0) {
                continue;
            }
            if (len > max_header_) {
                return fail(protocol_errc::header_too_large);
            }
            need_ = static_cast<std::size_t>(used) + len;
            acc_.reserve(need_);
        }
        std::size_t take = std::min(need_ - acc_.size(), in.size() - consumed);
        acc_.insert(acc_.end(), in.begin() + static_cast<std::ptrdiff_t>(consumed),
                    in.begin() + static_cast<std::ptrdiff_t>(consumed + take));
        consumed += take;
        if (acc_.size() == need_) {
            std::uint32_t len = 0;
            int used = read_varint32(acc_, len);
            std::vector<std::uint8_t> bytes = std::move(acc_);
            acc_ = {};
            return finish_header(std::span<const std::uint8_t>(bytes).subspan(static_cast<std::size_t>(used)), consumed);
        }
    }
    decode_result r;
    r.consumed = consumed;
    return r;
}

bool frame_decoder::payload_taken(std::size_t n) {
    n = std::min(n, payload_remaining_);
    payload_remaining_ -= n;
    if (payload_remaining_ == 0 && state_ == state::payload) {
        state_ = state::header;
        return true;
    }
    return false;
}

}  // namespace ferry
