#include "protocol/errors.hpp"

namespace ferry {
namespace {

class protocol_category_impl final : public std::error_category {
public:
    const char* name() const noexcept override { return "ferry.protocol"; }

    std::string message(int ev) const override {
        switch (static_cast<protocol_errc>(ev)) {
            case protocol_errc::ok: return "ok";
            case protocol_errc::header_too_large: return "frame header exceeds 64 KiB";
            case protocol_errc::payload_too_large: return "frame payload exceeds 1 MiB";
            case protocol_errc::bad_varint: return "malformed frame length";
            case protocol_errc::bad_header: return "malformed frame header";
            case protocol_errc::empty_body: return "frame carries no known message";
            case protocol_errc::unexpected_message: return "message out of sequence";
            case protocol_errc::bad_path: return "unsafe or malformed path";
            case protocol_errc::duplicate_path:
                return "duplicate path in offer (or a file offered where another entry needs a folder)";
            case protocol_errc::duplicate_id: return "duplicate file id in offer";
            case protocol_errc::too_many_files: return "too many files in transfer";
            case protocol_errc::unknown_file: return "message names an unknown file";
            case protocol_errc::bad_chunk: return "chunk index or length out of range";
            case protocol_errc::hash_mismatch: return "chunk hash mismatch";
            case protocol_errc::digest_mismatch: return "file digest mismatch";
            case protocol_errc::version_mismatch: return "incompatible protocol version";
            case protocol_errc::payload_mismatch: return "unexpected payload length";
            case protocol_errc::peer_error: return "peer reported an error";
            case protocol_errc::truncated_frame: return "the peer closed the connection in the middle of a frame";
            case protocol_errc::path_out_of_order:
                return "offer out of order (entries go by name, a folder right before what it holds)";
        }
        return "unknown protocol error";
    }
};

}  // namespace

const std::error_category& protocol_category() noexcept {
    static const protocol_category_impl instance;
    return instance;
}

}  // namespace ferry
