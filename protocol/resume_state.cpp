#include "protocol/resume_state.hpp"

#include <cstring>

#include "protocol/digest.hpp"
#include "protocol/le_bytes.hpp"

namespace ferry {

namespace {

constexpr std::string_view magic = "FERRYRS1";
constexpr std::size_t fixed_bytes = 8 + 4 + 8 + 8;
// A file size the record can describe: its chunk count must fit the 32-bit chunk index.
constexpr std::uint64_t max_chunks = std::uint64_t{1} << 32;

// XXH3-128 of the record's body, as its trailer.
digest128 checksum(std::string_view body) {
    return hash_chunk(std::span<const std::uint8_t>(reinterpret_cast<const std::uint8_t*>(body.data()), body.size()));
}

std::optional<resume_state> reject(std::string* why, const char* what) {
    if (why != nullptr) {
        *why = what;
    }
    return std::nullopt;
}

}  // namespace

std::string encode_resume_state(const resume_state& state) {
    std::uint64_t chunks = chunk_count(state.size);
    std::string out;
    out.reserve(fixed_bytes + (chunks + 7) / 8 + 16 * state.have.count() + 16);
    out.append(magic);
    put_le(out, chunk_size, 4);
    put_le(out, state.size);
    put_le(out, static_cast<std::uint64_t>(state.mtime_ns));
    chunk_bitmap have = state.have.size() == chunks ? state.have : chunk_bitmap(chunks);
    out.append(have.to_bytes());
    for (std::uint64_t i = 0; i < chunks; ++i) {
        if (have.test(i)) {
            put_digest(out, state.digests.at(i));
        }
    }
    put_digest(out, checksum(out));
    return out;
}

std::optional<resume_state> decode_resume_state(std::string_view in, std::string* why) {
    if (in.size() < fixed_bytes + 16) {
        return reject(why, "truncated");
    }
    if (in.substr(0, magic.size()) != magic) {
        return reject(why, "not a ferry resume record");
    }
    std::string_view body = in.substr(0, in.size() - 16);
    if (get_digest(in.data() + body.size()) != checksum(body)) {
        return reject(why, "checksum mismatch (truncated or corrupted)");
    }
    if (get_le(in.data() + 8, 4) != chunk_size) {
        return reject(why, "written with another chunk size");
    }
    resume_state s;
    s.size = get_le(in.data() + 12);
    s.mtime_ns = static_cast<std::int64_t>(get_le(in.data() + 20));
    std::uint64_t chunks = chunk_count(s.size);
    if (chunks > max_chunks) {
        return reject(why, "file size out of range");
    }
    std::uint64_t map_bytes = (chunks + 7) / 8;
    if (body.size() - fixed_bytes < map_bytes) {
        return reject(why, "bitmap truncated");
    }
    auto have = chunk_bitmap::from_bytes(chunks, std::string(body.substr(fixed_bytes, map_bytes)));
    if (!have || have->to_bytes() != body.substr(fixed_bytes, map_bytes)) {
        return reject(why, "bitmap has bits past the last chunk");
    }
    std::uint64_t set = have->count();
    if (body.size() - fixed_bytes - map_bytes != 16 * set) {
        return reject(why, "digest count does not match the bitmap");
    }
    s.have = std::move(*have);
    s.digests.assign(chunks, digest128{});
    std::size_t at = fixed_bytes + map_bytes;
    for (std::uint64_t i = 0; i < chunks; ++i) {
        if (s.have.test(i)) {
            s.digests[i] = get_digest(in.data() + at);
            at += 16;
        }
    }
    return s;
}

}  // namespace ferry
