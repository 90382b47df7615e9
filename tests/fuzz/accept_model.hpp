// The fuzzers' own reading of Accept.unchanged (proto/ferry.proto), to check the
// machines against: written again from the protocol's words, not taken from
// sender_machine::expand_unchanged.
#pragma once

#include <cstdint>
#include <functional>
#include <optional>
#include <string>

#include "ferry.pb.h"

namespace ferry::fuzz {

// Accept.unchanged taken back as FileAccepts, the protocol's rule written again for the
// fuzzers' models (proto/ferry.proto): a set bit i is entry first + i answered ACCEPT_ALL
// (a folder) or ACCEPT_SKIP, SYNC_NONE; the others come from `files` in order. Nothing
// when the bits do not fit a batch of n entries (length, a bit past the last, a count
// that is not n with `files`). An Accept without bits comes back as it is.
inline std::optional<wire::Accept> expanded_accept(const wire::Accept& a, std::uint32_t first, std::uint32_t n,
                                                   const std::function<bool(std::uint32_t)>& is_dir) {
    if (a.unchanged().empty()) {
        return a;
    }
    const std::string& bits = a.unchanged();
    if (bits.size() != (static_cast<std::size_t>(n) + 7) / 8) {
        return std::nullopt;
    }
    auto bit = [&](std::uint32_t i) { return (static_cast<unsigned char>(bits[i / 8]) >> (i % 8)) & 1u; };
    std::uint32_t set = 0;
    for (std::uint32_t i = 0; i < bits.size() * 8; ++i) {
        if (bit(i)) {
            if (i >= n) {
                return std::nullopt;
            }
            ++set;
        }
    }
    if (set + static_cast<std::uint32_t>(a.files_size()) != n) {
        return std::nullopt;
    }
    wire::Accept out;
    out.set_transfer_id(a.transfer_id());
    int next = 0;
    for (std::uint32_t i = 0; i < n; ++i) {
        if (bit(i)) {
            wire::FileAccept* fa = out.add_files();
            fa->set_id(first + i);
            fa->set_kind(is_dir(first + i) ? wire::ACCEPT_ALL : wire::ACCEPT_SKIP);
        } else {
            *out.add_files() = a.files(next++);
        }
    }
    return out;
}

}  // namespace ferry::fuzz
