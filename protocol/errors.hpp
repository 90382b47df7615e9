// Error codes of the protocol layer, as std::error_code (category "ferry.protocol").
#pragma once

#include <string>
#include <system_error>

namespace ferry {

enum class protocol_errc {
    ok = 0,
    header_too_large = 1,     // a frame header over max_header_len
    payload_too_large = 2,    // a frame payload over max_payload_len
    bad_varint = 3,           // the header length varint is malformed
    bad_header = 4,           // the header does not parse as a Header message
    empty_body = 5,           // the header carries no known message
    unexpected_message = 6,   // a message out of sequence
    bad_path = 7,             // a received path is unsafe or malformed
    duplicate_path = 8,       // two entries map to the same path, or a file is another's folder
    duplicate_id = 9,         // two entries share a file id
    too_many_files = 10,      // more entries than the limit
    unknown_file = 11,        // a chunk or message names a file not offered
    bad_chunk = 12,           // chunk index or length does not fit the file
    hash_mismatch = 13,       // chunk bytes do not match their XXH3-128
    digest_mismatch = 14,     // file digest does not match the chunk digests
    version_mismatch = 15,    // incompatible protocol version
    payload_mismatch = 16,    // payload length not what the message requires
    peer_error = 17,          // the peer reported an error
    truncated_frame = 18,     // the peer closed the connection in the middle of a frame
    path_out_of_order = 19,   // an offered path not after the one before it (wire_path_less)
};

const std::error_category& protocol_category() noexcept;

inline std::error_code make_error_code(protocol_errc e) noexcept {
    return {static_cast<int>(e), protocol_category()};
}

}  // namespace ferry

template <>
struct std::is_error_code_enum<ferry::protocol_errc> : std::true_type {};
