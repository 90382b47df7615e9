// Tests of wire path safety: what check_wire_path accepts and refuses, the
// split_wire_path / wire_parent helpers, and printable() for a peer's text in the log.
#include "protocol/path.hpp"

#include <gtest/gtest.h>

#include <string>
#include <string_view>
#include <vector>

#include "protocol/errors.hpp"
#include "protocol/types.hpp"

namespace ferry {
namespace {

using namespace std::string_literals;

void expect_ok(std::string_view path) {
    EXPECT_FALSE(check_wire_path(path)) << "refused: \"" << path << "\" (" << path.size() << " bytes)";
}

void expect_bad(std::string_view path) {
    std::error_code ec = check_wire_path(path);
    EXPECT_EQ(ec, make_error_code(protocol_errc::bad_path)) << "accepted: \"" << path << "\" (" << path.size()
                                                           << " bytes)";
}

// `count` names of `name_len` bytes joined by '/'.
std::string repeated_names(std::size_t count, std::size_t name_len, char c = 'n') {
    std::string out;
    for (std::size_t i = 0; i < count; ++i) {
        if (i > 0) {
            out += '/';
        }
        out.append(name_len, c);
    }
    return out;
}

TEST(check_wire_path, accepts_plain_paths) {
    expect_ok("a");
    expect_ok("a/b/c");
    expect_ok("file.txt");
    expect_ok("dir/sub/file.tar.gz");
    expect_ok("A-Z_0-9 ~!@#$%^&()+=,;'[]{}");
}

TEST(check_wire_path, accepts_unicode_names) {
    expect_ok("données/ñ.txt");
    expect_ok("日本/語");
    expect_ok("emoji/😀.png");
    expect_ok("Ελληνικά/кириллица/עברית");
}

TEST(check_wire_path, accepts_spaces_and_dots_inside_names) {
    expect_ok("..a");
    expect_ok("a..");
    expect_ok(".hidden");
    expect_ok("dir/.hidden/.x");
    expect_ok("...");
    expect_ok("a/.../b");
    expect_ok(". a");
    expect_ok("a .");
    expect_ok("with space/and more spaces .txt");
    expect_ok(" ");
    expect_ok(" / ");
}

TEST(check_wire_path, accepts_colon_that_is_not_a_drive_letter) {
    expect_ok("a/b:c");
    expect_ok("1:x");
    expect_ok("report 10:30.txt");
}

TEST(check_wire_path, refuses_empty_and_absolute) {
    expect_bad("");
    expect_bad("/");
    expect_bad("/abs");
    expect_bad("/a/b");
    expect_bad("//a");
}

TEST(check_wire_path, refuses_empty_components) {
    expect_bad("a//b");
    expect_bad("a/");
    expect_bad("a/b/");
    expect_bad("a///b");
    expect_bad("//");
}

TEST(check_wire_path, refuses_dot_components) {
    expect_bad(".");
    expect_bad("./a");
    expect_bad("a/./b");
    expect_bad("a/.");
    expect_bad("..");
    expect_bad("../a");
    expect_bad("a/../b");
    expect_bad("a/..");
    expect_bad("a/b/../../..");
}

TEST(check_wire_path, refuses_nul_bytes) {
    expect_bad("a\0b"s);
    expect_bad("\0"s);
    expect_bad("a/\0"s);
    expect_bad("\0/a"s);
    expect_bad("dir/fi\0le.txt"s);
}

TEST(check_wire_path, a_name_is_any_bytes_but_slash_and_nul) {
    // As on Linux: a backslash, a ':' (no drive letters here), control characters and
    // bytes that are not UTF-8 are all name bytes; "..\\.." is a name, not a parent.
    for (const char* p : {"a\\b", "\\a", "a\\", "dir/..\\..\\etc", "C:x", "c:/x", "Z:\\x", "a:b/c", "new\nline",
                          "tab\there", "cr\r", "latin1 caf\xE9", "\xFF\xFE", "cut \xE2\x98", "over\xC0\xAF",
                          "surrogate \xED\xA0\x80", "donn\xC3\xA9" "es/\xE6\x97\xA5\xE6\x9C\xAC",
                          "emoji \xF0\x9F\x98\x80"}) {
        expect_ok(p);
    }
    expect_bad(std::string("nul\0in", 6));
    expect_bad(std::string("\0", 1));
    expect_bad(std::string("dir/\0", 5));
}

TEST(utf8_sequence_length, lengths) {
    EXPECT_EQ(utf8_sequence_length("a", 0), 1u);
    EXPECT_EQ(utf8_sequence_length("\xC3\xA9", 0), 2u);
    EXPECT_EQ(utf8_sequence_length("\xE2\x98\x83", 0), 3u);
    EXPECT_EQ(utf8_sequence_length("\xF0\x9F\x98\x80", 0), 4u);
    EXPECT_EQ(utf8_sequence_length("\xC3", 0), 0u);
    EXPECT_EQ(utf8_sequence_length("\xA9", 0), 0u);
}

TEST(check_wire_path, name_length_limit_is_255_bytes) {
    ASSERT_EQ(max_name_bytes, 255u);
    expect_ok(std::string(255, 'x'));
    expect_bad(std::string(256, 'x'));
    expect_ok("dir/" + std::string(255, 'x'));
    expect_bad("dir/" + std::string(256, 'x'));
    expect_bad(std::string(256, 'x') + "/file");
    expect_ok(std::string(255, 'x') + "/" + std::string(255, 'y'));

    // The limit counts bytes, not characters: "é" is two bytes.
    std::string e2;
    for (int i = 0; i < 127; ++i) {
        e2 += "é";
    }
    expect_ok(e2 + "a");   // 255 bytes
    expect_bad(e2 + "é");  // 256 bytes
}

// What the kernel takes as one path: PATH_MAX (4096) counts the NUL.
TEST(check_wire_path, path_length_limit_is_4095_bytes) {
    ASSERT_EQ(max_path_bytes, 4095u);
    // "a/" * 2047 + "a": exactly 4095 bytes of valid names.
    std::string exact;
    for (int i = 0; i < 2047; ++i) {
        exact += "a/";
    }
    exact += "a";
    ASSERT_EQ(exact.size(), 4095u);
    expect_ok(exact);
    expect_bad(exact + "a");
    expect_bad(exact + "/b");

    // Long names: 16 names of 255 bytes + 15 slashes = 4095 bytes.
    std::string long_names = repeated_names(16, 255);
    ASSERT_EQ(long_names.size(), 4095u);
    expect_ok(long_names);
    expect_bad(long_names + "/b");  // 4097 bytes, every name valid

    // A single long name is refused for its name length whatever the path limit.
    expect_bad(std::string(4096, 'x'));
    expect_bad(std::string(5000, 'x'));
    expect_bad(repeated_names(20, 255));
}

TEST(check_wire_path, error_code_is_in_the_protocol_category) {
    std::error_code ec = check_wire_path("../etc/passwd");
    ASSERT_TRUE(ec);
    EXPECT_EQ(ec.category().name(), std::string("ferry.protocol"));
    EXPECT_EQ(ec.value(), static_cast<int>(protocol_errc::bad_path));
    EXPECT_EQ(ec, protocol_errc::bad_path);
    EXPECT_FALSE(ec.message().empty());
}

TEST(split_wire_path, components) {
    using parts = std::vector<std::string_view>;
    EXPECT_EQ(split_wire_path("a"), parts{"a"});
    EXPECT_EQ(split_wire_path("a/b/c"), (parts{"a", "b", "c"}));
    EXPECT_EQ(split_wire_path("données/ñ.txt"), (parts{"données", "ñ.txt"}));
    EXPECT_EQ(split_wire_path("日本/語"), (parts{"日本", "語"}));
    EXPECT_EQ(split_wire_path("..a/a../.hidden"), (parts{"..a", "a..", ".hidden"}));
    EXPECT_EQ(split_wire_path("with space/x y"), (parts{"with space", "x y"}));
}

TEST(split_wire_path, views_point_into_the_input) {
    std::string path = "dir/sub/file.txt";
    std::vector<std::string_view> parts = split_wire_path(path);
    ASSERT_EQ(parts.size(), 3u);
    EXPECT_EQ(parts[0].data(), path.data());
    EXPECT_EQ(parts[1].data(), path.data() + 4);
    EXPECT_EQ(parts[2].data(), path.data() + 8);
    EXPECT_EQ(parts[2].size(), 8u);
}

TEST(split_wire_path, long_paths) {
    std::string p = repeated_names(16, 255);
    ASSERT_FALSE(check_wire_path(p));
    std::vector<std::string_view> parts = split_wire_path(p);
    ASSERT_EQ(parts.size(), 16u);
    for (std::string_view part : parts) {
        EXPECT_EQ(part, std::string(255, 'n'));
    }
}

TEST(wire_parent, parents) {
    EXPECT_EQ(wire_parent("a"), "");
    EXPECT_TRUE(wire_parent("file.txt").empty());
    EXPECT_EQ(wire_parent("a/b"), "a");
    EXPECT_EQ(wire_parent("a/b/c"), "a/b");
    EXPECT_EQ(wire_parent("données/ñ.txt"), "données");
    EXPECT_EQ(wire_parent("日本/語"), "日本");
    EXPECT_EQ(wire_parent(".hidden/..a/a.."), ".hidden/..a");
}

TEST(wire_name, is_the_last_component_split_gives) {
    for (std::string_view p : {"a", "file.txt", "a/b", "a/b/c", "données/ñ.txt", ".hidden/..a/a..", ""}) {
        EXPECT_EQ(wire_name(p), split_wire_path(p).back()) << p;
    }
    EXPECT_EQ(wire_name("a/b/c"), "c");
    EXPECT_EQ(wire_name("top"), "top");
}

TEST(wire_parent, walks_up_to_the_top) {
    std::string_view p = "a/b/c/d";
    std::vector<std::string_view> chain;
    while (!p.empty() && chain.size() < 10) {
        chain.push_back(p);
        p = wire_parent(p);
    }
    EXPECT_EQ(chain, (std::vector<std::string_view>{"a/b/c/d", "a/b/c", "a/b", "a"}));
}

TEST(wire_parent, parent_of_a_checked_path_is_checked) {
    for (std::string_view p : {"a/b/c", "données/ñ.txt", "日本/語", "x/..a/a../.hidden"}) {
        ASSERT_FALSE(check_wire_path(p)) << p;
        std::string_view parent = wire_parent(p);
        ASSERT_FALSE(parent.empty()) << p;
        EXPECT_FALSE(check_wire_path(parent)) << parent;
        // The parent is a prefix of the path, followed by '/' and the last component.
        EXPECT_EQ(p.substr(0, parent.size()), parent);
        EXPECT_EQ(p[parent.size()], '/');
        EXPECT_EQ(p.substr(parent.size() + 1), split_wire_path(p).back());
    }
}

TEST(printable, keeps_printable_text_and_utf8_as_sent) {
    for (std::string_view t : {"plain/path.txt", "données/ñandú ☃.txt", "日本語/ファイル.txt", "emoji 🦀", ""}) {
        EXPECT_EQ(printable(t), t);
    }
}

TEST(printable, escapes_what_could_end_a_line_or_drive_a_terminal) {
    EXPECT_EQ(printable("a\nb"), "a\\x0Ab");
    EXPECT_EQ(printable("\x1b[2J"), "\\x1B[2J");
    EXPECT_EQ(printable("nul\0x"s), "nul\\x00x");
    EXPECT_EQ(printable("del\x7f"), "del\\x7F");
    EXPECT_EQ(printable("csi\xc2\x9b" "31m"), "csi\\xC2\\x9B31m");            // C1 control U+009B
    EXPECT_EQ(printable("rlo\xe2\x80\xae" "txt"), "rlo\\xE2\\x80\\xAEtxt");  // U+202E
    EXPECT_EQ(printable("ls\xe2\x80\xa8"), "ls\\xE2\\x80\\xA8");            // U+2028
    EXPECT_EQ(printable("bad\xff\xc3"), "bad\\xFF\\xC3");                     // not UTF-8, cut
    // A backslash is doubled, so an escape in the output always was a byte in the input.
    EXPECT_EQ(printable("a\\x1B"), "a\\\\x1B");
}

}  // namespace
}  // namespace ferry

TEST(PartialFileName, MatchesOnlyFerrysOwnPartialNames) {
    EXPECT_TRUE(ferry::is_partial_file_name(".a.ferry-part"));
    EXPECT_TRUE(ferry::is_partial_file_name(".ferry-0123456789abcdef.part"));
    EXPECT_FALSE(ferry::is_partial_file_name(".ferry-part"));
    EXPECT_FALSE(ferry::is_partial_file_name("a.ferry-part"));
    EXPECT_FALSE(ferry::is_partial_file_name("ferry-x.part"));
    EXPECT_FALSE(ferry::is_partial_file_name(".part"));
    EXPECT_FALSE(ferry::is_partial_file_name("notes.txt"));
    // A hashed name is 16 lowercase hex digits; a user's ".ferry-abc.part" is theirs.
    EXPECT_FALSE(ferry::is_partial_file_name(".ferry-abc.part"));
    EXPECT_FALSE(ferry::is_partial_file_name(".ferry-0123456789ABCDEF.part"));
    EXPECT_FALSE(ferry::is_partial_file_name(".ferry-0123456789abcdefg.part"));
    EXPECT_FALSE(ferry::is_partial_file_name(".ferry-notes.resume"));
    // Resume records too, and one being replaced.
    EXPECT_TRUE(ferry::is_partial_file_name(".a.ferry-resume"));
    EXPECT_TRUE(ferry::is_partial_file_name(".a.ferry-resume~"));
    EXPECT_TRUE(ferry::is_partial_file_name(".ferry-0123456789abcdef.resume"));
    EXPECT_FALSE(ferry::is_partial_file_name(".ferry-resume"));
    EXPECT_FALSE(ferry::is_partial_file_name("a.ferry-resume"));
    EXPECT_FALSE(ferry::is_partial_file_name(".a.ferry-part~"));
}
