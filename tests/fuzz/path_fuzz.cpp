// Fuzz target: check_wire_path and the helpers around it (protocol/path.hpp).
//
// The input is the path, byte for byte. check_wire_path must agree exactly with an
// independent reading of what path.hpp documents (relative, '/'-separated, no empty, "."
// or ".." component, no NUL, names <= max_name_bytes, whole <= max_path_bytes; any other
// byte, UTF-8 or not), both ways: nothing unsafe accepted, nothing safe refused.
// utf8_sequence_length is checked against a plain decoder at every byte. An accepted path
// also splits and joins back to itself, its parent is accepted too, and it survives a
// protobuf round trip (Entry.path is bytes: no UTF-8 check may drop it).
//
// The same bytes go through printable() (peer text on its way to a log line): the result
// is well-formed UTF-8 without any of the characters path.hpp lists (C0, DEL, C1, the
// line separators and bidi controls), and undoing its escapes gives the input back.
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <string>
#include <string_view>
#include <vector>

#include "ferry.pb.h"
#include "protocol/errors.hpp"
#include "protocol/path.hpp"
#include "protocol/types.hpp"
#include "tests/fuzz/fuzz_support.hpp"

namespace ferry::fuzz {
namespace {

// Length of the well-formed UTF-8 sequence at s[i] (RFC 3629), or 0.
std::size_t reference_utf8_length(std::string_view s, std::size_t i) {
    auto c = static_cast<unsigned char>(s[i]);
    std::size_t n = 0;
    std::uint32_t cp = 0;
    std::uint32_t min = 0;
    if (c < 0x80) {
        return 1;
    } else if ((c & 0xE0) == 0xC0) {
        n = 2, cp = c & 0x1Fu, min = 0x80;
    } else if ((c & 0xF0) == 0xE0) {
        n = 3, cp = c & 0x0Fu, min = 0x800;
    } else if ((c & 0xF8) == 0xF0) {
        n = 4, cp = c & 0x07u, min = 0x10000;
    } else {
        return 0;
    }
    if (s.size() - i < n) {
        return 0;
    }
    for (std::size_t k = 1; k < n; ++k) {
        auto b = static_cast<unsigned char>(s[i + k]);
        if ((b & 0xC0) != 0x80) {
            return 0;
        }
        cp = (cp << 6) | (b & 0x3Fu);
    }
    if (cp < min || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) {
        return 0;
    }
    return n;
}

// The code point of the well-formed sequence at s[i] (n bytes).
std::uint32_t code_point(std::string_view s, std::size_t i, std::size_t n) {
    static constexpr std::uint8_t lead_mask[] = {0, 0x7f, 0x1f, 0x0f, 0x07};
    std::uint32_t cp = static_cast<unsigned char>(s[i]) & lead_mask[n];
    for (std::size_t k = 1; k < n; ++k) {
        cp = (cp << 6) | (static_cast<unsigned char>(s[i + k]) & 0x3fu);
    }
    return cp;
}

bool unsafe_in_a_log_line(std::uint32_t cp) {
    return cp < 0x20 || cp == 0x7f || (cp >= 0x80 && cp <= 0x9f) || cp == 0x200e || cp == 0x200f ||
           (cp >= 0x2028 && cp <= 0x202e) || (cp >= 0x2066 && cp <= 0x2069);
}

int hex_value(char c) { return c >= '0' && c <= '9' ? c - '0' : c >= 'A' && c <= 'F' ? c - 'A' + 10 : -1; }

void check_printable(std::string_view text) {
    std::string out = printable(text);
    std::string back;
    for (std::size_t i = 0; i < out.size();) {
        std::size_t n = reference_utf8_length(out, i);
        FUZZ_CHECK(n > 0);
        FUZZ_CHECK(!unsafe_in_a_log_line(code_point(out, i, n)));
        if (out[i] != '\\') {
            back.append(out, i, n);
            i += n;
        } else if (i + 1 < out.size() && out[i + 1] == '\\') {
            back += '\\';
            i += 2;
        } else {
            FUZZ_CHECK(i + 3 < out.size() && out[i + 1] == 'x');
            int hi = hex_value(out[i + 2]);
            int lo = hex_value(out[i + 3]);
            FUZZ_CHECK(hi >= 0 && lo >= 0);
            back += static_cast<char>(hi * 16 + lo);
            i += 4;
        }
    }
    FUZZ_CHECK(back == text);
}

// path.hpp's contract, written out independently of path.cpp.
bool reference_safe(std::string_view path) {
    if (path.empty() || path.size() > max_path_bytes || path.front() == '/') {
        return false;
    }
    for (char c : path) {
        if (c == '\0') {
            return false;
        }
    }
    std::string_view rest = path;
    while (true) {
        std::size_t slash = rest.find('/');
        std::string_view name = rest.substr(0, slash);
        if (name.empty() || name == "." || name == ".." || name.size() > max_name_bytes) {
            return false;
        }
        if (slash == std::string_view::npos) {
            return true;
        }
        rest.remove_prefix(slash + 1);
    }
}

std::vector<seed> seeds() {
    std::vector<std::pair<std::string, std::string>> paths = {
        {"file", "a"},
        {"nested", "dir/sub/file.txt"},
        {"unicode", "caf\xC3\xA9/\xE6\x97\xA5\xE6\x9C\xAC/\xF0\x9F\x93\x81"},
        {"dotnames", ".hidden/..x/x../..."},
        {"partial", "d/.f.ferry-part"},
        {"longest-name", std::string(max_name_bytes, 'n')},
        {"name-too-long", std::string(max_name_bytes + 1, 'n')},
        {"dotdot", "a/../b"},
        {"absolute", "/etc/passwd"},
        {"drive", "C:x"},
        {"empty-component", "a//b"},
        {"trailing-slash", "a/"},
        {"backslash", "a\\b"},
        {"nul", std::string("a\0b", 3)},
        {"overlong", "\xC0\xAF"},
        {"surrogate", "\xED\xA0\x80"},
        {"cut", "ab\xE6\x97"},
    };
    std::vector<seed> out;
    for (const auto& [name, path] : paths) {
        out.push_back({name, {path.begin(), path.end()}});
    }
    std::string longest;
    while (longest.size() + 2 <= max_path_bytes) {
        longest += longest.empty() ? "p" : "/p";
    }
    out.push_back({"longest-path", {longest.begin(), longest.end()}});
    return out;
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
    std::string_view path(reinterpret_cast<const char*>(data), size);

    for (std::size_t i = 0; i < path.size(); ++i) {
        FUZZ_CHECK(utf8_sequence_length(path, i) == reference_utf8_length(path, i));
    }

    check_printable(path);

    bool accepted = !check_wire_path(path);
    FUZZ_CHECK(accepted == reference_safe(path));
    if (!accepted) {
        FUZZ_CHECK(check_wire_path(path) == protocol_errc::bad_path);
        return 0;
    }

    std::vector<std::string_view> names = split_wire_path(path);
    std::string joined;
    for (std::string_view name : names) {
        FUZZ_CHECK(!name.empty() && name.size() <= max_name_bytes);
        joined += joined.empty() ? "" : "/";
        joined += name;
        if (is_partial_file_name(name)) {
            FUZZ_CHECK(name.front() == '.');
        }
    }
    FUZZ_CHECK(joined == path);

    // Joined to a folder it never names anything outside it, however it is normalized.
    std::string inside = std::filesystem::path("/root/dst/" + std::string(path)).lexically_normal().string();
    FUZZ_CHECK(inside.rfind("/root/dst/", 0) == 0 && inside.size() > std::string("/root/dst/").size());

    std::string_view parent = wire_parent(path);
    FUZZ_CHECK(parent.empty() == (names.size() == 1));
    if (!parent.empty()) {
        FUZZ_CHECK(path.substr(0, parent.size()) == parent && path[parent.size()] == '/');
        FUZZ_CHECK(!check_wire_path(parent));
    }

    wire::Entry entry;
    entry.set_path(std::string(path));
    wire::Entry back;
    FUZZ_CHECK(back.ParseFromString(entry.SerializeAsString()));
    FUZZ_CHECK(back.path() == path);
    return 0;
}
