#include "protocol/path.hpp"

#include <algorithm>
#include <cstdint>

#include "protocol/errors.hpp"
#include "protocol/types.hpp"

namespace ferry {

std::size_t utf8_sequence_length(std::string_view s, std::size_t i) {
    auto c = static_cast<unsigned char>(s[i]);
    if (c < 0x80) {
        return 1;
    }
    std::size_t n = c >= 0xF0 && c <= 0xF4 ? 4 : c >= 0xE0 && c <= 0xEF ? 3 : c >= 0xC2 && c <= 0xDF ? 2 : 0;
    if (n == 0 || i + n > s.size()) {
        return 0;
    }
    for (std::size_t k = 1; k < n; ++k) {
        if ((static_cast<unsigned char>(s[i + k]) & 0xC0) != 0x80) {
            return 0;
        }
    }
    auto c1 = static_cast<unsigned char>(s[i + 1]);
    if ((c == 0xE0 && c1 < 0xA0) || (c == 0xED && c1 >= 0xA0) || (c == 0xF0 && c1 < 0x90) ||
        (c == 0xF4 && c1 >= 0x90)) {
        return 0;  // overlong, surrogate, or beyond U+10FFFF
    }
    return n;
}

std::error_code check_wire_path(std::string_view path) {
    if (path.empty() || path.size() > max_path_bytes) {
        return protocol_errc::bad_path;
    }
    if (path.front() == '/') {
        return protocol_errc::bad_path;
    }
    std::size_t start = 0;
    while (start <= path.size()) {
        std::size_t end = path.find('/', start);
        if (end == std::string_view::npos) {
            end = path.size();
        }
        std::string_view name = path.substr(start, end - start);
        if (name.empty() || name == "." || name == ".." || name.size() > max_name_bytes) {
            return protocol_errc::bad_path;
        }
        if (name.find('\0') != std::string_view::npos) {
            return protocol_errc::bad_path;
        }
        start = end + 1;
    }
    return {};
}

std::string printable(std::string_view text) {
    static constexpr char hex[] = "0123456789ABCDEF";
    std::string out;
    out.reserve(text.size());
    auto escape = [&](std::string_view bytes) {
        for (unsigned char b : bytes) {
            out += "\\x";
            out += hex[b >> 4];
            out += hex[b & 15];
        }
    };
    for (std::size_t i = 0; i < text.size();) {
        auto c = static_cast<unsigned char>(text[i]);
        std::size_t n = utf8_sequence_length(text, i);
        std::string_view seq = text.substr(i, n == 0 ? 1 : n);
        // The code point, as far as it matters: C1, the separators and the bidi controls
        // are 2- and 3-byte sequences; every 4-byte one is printable.
        std::uint32_t cp = c;
        if (n == 2) {
            cp = (c & 0x1fu) << 6 | (static_cast<unsigned char>(text[i + 1]) & 0x3fu);
        } else if (n == 3) {
            cp = (c & 0x0fu) << 12 | (static_cast<unsigned char>(text[i + 1]) & 0x3fu) << 6 |
                 (static_cast<unsigned char>(text[i + 2]) & 0x3fu);
        } else if (n == 4) {
            cp = 0x10000;
        }
        bool control = n == 0 || cp < 0x20 || cp == 0x7f || (cp >= 0x80 && cp <= 0x9f) || cp == 0x200e ||
                       cp == 0x200f || (cp >= 0x2028 && cp <= 0x202e) || (cp >= 0x2066 && cp <= 0x2069);
        if (control) {
            escape(seq);
        } else if (c == '\\') {
            out += "\\\\";
        } else {
            out += seq;
        }
        i += seq.size();
    }
    return out;
}

namespace {

// ".NAME<suffix>" with a name of at least one byte, or ".ferry-HASH<hashed>" with HASH 16
// lowercase hex digits (dest_tree's %016zx): ".ferry-notes.part" is a user's file.
bool decorated(std::string_view name, std::string_view suffix, std::string_view hashed) {
    constexpr std::string_view prefix = ".ferry-";
    constexpr std::size_t hash_digits = 16;
    if (name.size() > suffix.size() + 1 && name.front() == '.' && name.ends_with(suffix)) {
        return true;
    }
    if (name.size() != prefix.size() + hash_digits + hashed.size() || !name.starts_with(prefix) ||
        !name.ends_with(hashed)) {
        return false;
    }
    std::string_view hash = name.substr(prefix.size(), hash_digits);
    return std::all_of(hash.begin(), hash.end(), [](char c) { return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'); });
}

}  // namespace

bool is_partial_file_name(std::string_view name) {
    if (name.ends_with('~')) {  // a resume record being replaced
        name.remove_suffix(1);
        return decorated(name, ".ferry-resume", ".resume");
    }
    return decorated(name, ".ferry-part", ".part") || decorated(name, ".ferry-resume", ".resume");
}

std::vector<std::string_view> split_wire_path(std::string_view path) {
    std::vector<std::string_view> out;
    std::size_t start = 0;
    while (start <= path.size()) {
        std::size_t end = path.find('/', start);
        if (end == std::string_view::npos) {
            end = path.size();
        }
        out.push_back(path.substr(start, end - start));
        start = end + 1;
    }
    return out;
}

std::string_view wire_name(std::string_view path) {
    std::size_t slash = path.rfind('/');
    return slash == std::string_view::npos ? path : path.substr(slash + 1);
}

std::string_view wire_parent(std::string_view path) {
    std::size_t slash = path.rfind('/');
    return slash == std::string_view::npos ? std::string_view{} : path.substr(0, slash);
}

bool wire_path_less(std::string_view a, std::string_view b) {
    const std::size_t n = std::min(a.size(), b.size());
    for (std::size_t i = 0; i < n; ++i) {
        if (a[i] != b[i]) {
            auto rank = [](char c) { return c == '/' ? 0u : static_cast<unsigned char>(c) + 1u; };
            return rank(a[i]) < rank(b[i]);
        }
    }
    return a.size() < b.size();
}

bool wire_path_within(std::string_view inner, std::string_view outer) {
    return inner.size() > outer.size() && inner[outer.size()] == '/' && inner.starts_with(outer);
}

}  // namespace ferry
