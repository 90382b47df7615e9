// Little-endian integers and digests in byte strings: the on-disk and payload encodings
// (file digests, resume records, HaveDigests, the unsynced journal) agree whatever the
// host's byte order. Pure.
#pragma once

#include <cstdint>

#include "protocol/types.hpp"

namespace ferry {

// Appends the low `bytes` bytes of `v`, least significant first. `Out`: std::string or
// std::vector<std::uint8_t>.
template <typename Out>
void put_le(Out& out, std::uint64_t v, int bytes = 8) {
    for (int i = 0; i < bytes; ++i) {
        out.push_back(static_cast<typename Out::value_type>((v >> (8 * i)) & 0xff));
    }
}

// Writes the low `bytes` bytes of `v` at `p`, least significant first (put_le in place).
template <typename Byte>
void store_le(Byte* p, std::uint64_t v, int bytes = 8) {
    for (int i = 0; i < bytes; ++i) {
        p[i] = static_cast<Byte>((v >> (8 * i)) & 0xff);
    }
}

// Reads `bytes` bytes at `p`, least significant first.
template <typename Byte>
std::uint64_t get_le(const Byte* p, int bytes = 8) {
    std::uint64_t v = 0;
    for (int i = 0; i < bytes; ++i) {
        v |= std::uint64_t{static_cast<std::uint8_t>(p[i])} << (8 * i);
    }
    return v;
}

// A digest as 16 bytes: lo, then hi.
template <typename Out>
void put_digest(Out& out, digest128 d) {
    put_le(out, d.lo);
    put_le(out, d.hi);
}

template <typename Byte>
digest128 get_digest(const Byte* p) {
    return {get_le(p), get_le(p + 8)};
}

}  // namespace ferry
