#include "protocol/exclude.hpp"

#include <gtest/gtest.h>

#include <chrono>
#include <string>

namespace ferry {
namespace {

exclude_set make(std::initializer_list<const char*> lines) {
    exclude_set s;
    for (const char* l : lines) {
        EXPECT_TRUE(s.add(l)) << l;
    }
    return s;
}

TEST(glob_segment, stars_questions_classes_and_escapes) {
    EXPECT_TRUE(glob_segment_match("*.o", "main.o"));
    EXPECT_FALSE(glob_segment_match("*.o", "main.c"));
    EXPECT_TRUE(glob_segment_match("*", ""));
    EXPECT_TRUE(glob_segment_match("a*b*c", "aXXbYYc"));
    EXPECT_FALSE(glob_segment_match("a*b*c", "aXXbYY"));
    EXPECT_TRUE(glob_segment_match("f?o", "foo"));
    EXPECT_FALSE(glob_segment_match("f?o", "fo"));
    EXPECT_TRUE(glob_segment_match("[a-c]x", "bx"));
    EXPECT_FALSE(glob_segment_match("[a-c]x", "dx"));
    EXPECT_TRUE(glob_segment_match("[!a-c]x", "dx"));
    EXPECT_TRUE(glob_segment_match("[]]", "]"));
    EXPECT_TRUE(glob_segment_match("\\*", "*"));
    EXPECT_FALSE(glob_segment_match("\\*", "a"));
    EXPECT_TRUE(glob_segment_match("[ab", "[ab"));  // not closed: literal
}

TEST(glob_segment, a_hostile_pattern_is_matched_without_backtracking) {
    // Backtracking matchers take exponential time on this; the two-pointer one is
    // O(pattern x name) (the test's ctest timeout is the bound).
    std::string pattern;
    for (int i = 0; i < 200; ++i) {
        pattern += "*a";
    }
    pattern += "b";
    EXPECT_FALSE(glob_segment_match(pattern, std::string(4000, 'a')));
    EXPECT_TRUE(glob_segment_match(pattern, std::string(4000, 'a') + "b"));
}

TEST(exclude_set, unclosed_classes_in_a_long_hostile_pattern_stay_cheap) {
    // Each unclosed '[' is parsed once as a literal: matching stays O(pattern x name).
    exclude_set s;
    for (int i = 0; i < 8; ++i) {
        ASSERT_TRUE(s.add("**/*" + std::string(128, '[') + "b" + std::string(880, 'x')));
    }
    std::string path;
    for (int i = 0; i < 15; ++i) {
        path += (i ? "/" : "") + std::string(255, '[');
    }
    for (int i = 0; i < 20; ++i) {
        EXPECT_FALSE(s.excluded(path, false));
    }
}

TEST(exclude_set, a_pattern_without_slash_matches_a_name_at_any_depth) {
    exclude_set s = make({"*.tmp", "build/"});
    EXPECT_TRUE(s.excluded("x.tmp", false));
    EXPECT_TRUE(s.excluded("a/b/x.tmp", false));
    EXPECT_FALSE(s.excluded("a/b/x.tmpl", false));
    EXPECT_TRUE(s.excluded("src/build", true));
    EXPECT_FALSE(s.excluded("src/build", false));  // trailing '/': folders only
    EXPECT_TRUE(s.excluded_or_inside("src/build/out.o", false));
    EXPECT_FALSE(s.excluded("src/build/out.o", false));
}

TEST(exclude_set, a_pattern_with_slash_is_anchored_at_the_root) {
    exclude_set s = make({"/top.txt", "docs/*.pdf", "a/**/z", "**/cache", "logs/**"});
    EXPECT_TRUE(s.excluded("top.txt", false));
    EXPECT_FALSE(s.excluded("sub/top.txt", false));
    EXPECT_TRUE(s.excluded("docs/x.pdf", false));
    EXPECT_FALSE(s.excluded("docs/sub/x.pdf", false));  // '*' never crosses '/'
    EXPECT_FALSE(s.excluded("other/docs/x.pdf", false));
    EXPECT_TRUE(s.excluded("a/z", false));
    EXPECT_TRUE(s.excluded("a/b/c/z", false));
    EXPECT_FALSE(s.excluded("b/a/z", false));
    EXPECT_TRUE(s.excluded("cache", true));
    EXPECT_TRUE(s.excluded("x/y/cache", true));
    EXPECT_TRUE(s.excluded("logs/2026/day.log", false));
    EXPECT_FALSE(s.excluded("logs", true));  // "logs/**" is what is inside, not logs itself
}

TEST(exclude_set, a_trailing_globstar_holds_what_is_inside_wherever_an_earlier_one_stands_for_no_folder) {
    // "**/build/**" holds build/x at the top as git's does (a soak test, 2026-12-05: it
    // did not, and --delete then removed DST's own build/ files).
    exclude_set s = make({"**/build/**", "a/**/b/**"});
    EXPECT_TRUE(s.excluded("build/out.bin", false));
    EXPECT_TRUE(s.excluded("build/deep/er/x", false));
    EXPECT_TRUE(s.excluded("sub/build/out.bin", false));
    EXPECT_FALSE(s.excluded("build", true));
    EXPECT_FALSE(s.excluded("sub/build", true));
    EXPECT_TRUE(s.excluded_or_inside("build/out.bin", false));
    EXPECT_TRUE(s.excluded("a/b/f", false));
    EXPECT_TRUE(s.excluded("a/x/y/b/f", false));
    EXPECT_FALSE(s.excluded("a/b", true));
    EXPECT_FALSE(s.excluded("b/f", false));
}

TEST(exclude_set, the_last_matching_pattern_decides_and_negation_re_includes) {
    exclude_set s = make({"*.log", "!keep.log"});
    EXPECT_TRUE(s.excluded("a.log", false));
    EXPECT_FALSE(s.excluded("keep.log", false));
    EXPECT_FALSE(s.excluded("d/keep.log", false));
    exclude_set t = make({"!keep.log", "*.log"});
    EXPECT_TRUE(t.excluded("keep.log", false));
}

TEST(exclude_set, a_kept_path_matches_exactly_itself_whatever_its_bytes) {
    exclude_set s = make({"!*"});  // a re-include does not undo a kept path
    const std::string name(200, 'y');
    for (const std::string& p : std::vector<std::string>{"a*b/[x]?", "sp ace ", "!bang", "#hash", "back\\slash",
                                                         "new\nline", "cr\r", "not\xff" "utf8", "d:x",
                                                         name + "/" + name + "/" + name + "/" + name + "/" + name}) {
        ASSERT_TRUE(s.keep(p)) << p;
        EXPECT_TRUE(s.excluded(p, false)) << p;
        EXPECT_TRUE(s.excluded_or_inside(p + "/inside", false)) << p;
    }
    EXPECT_FALSE(s.excluded("aXb/[x]?", false));
    EXPECT_FALSE(s.excluded("a*b/x!", false));
    EXPECT_FALSE(s.excluded("sub/!bang", false));
    EXPECT_FALSE(s.excluded("new", false));
    for (const std::string& bad :
         std::vector<std::string>{"", "/abs", "a/../b", "a//b", std::string("nul\0", 4), std::string(256, 'n')}) {
        EXPECT_FALSE(s.keep(bad)) << bad;
    }
    exclude_set none;
    EXPECT_TRUE(none.empty());
    ASSERT_TRUE(none.keep("x"));
    EXPECT_FALSE(none.empty());
}

TEST(exclude_set, comments_blank_lines_and_bad_patterns) {
    exclude_set s;
    EXPECT_TRUE(s.add("# a comment"));
    EXPECT_TRUE(s.add(""));
    EXPECT_TRUE(s.add("   "));
    EXPECT_TRUE(s.empty());
    EXPECT_FALSE(s.add("/"));
    EXPECT_FALSE(s.add("!"));
    EXPECT_FALSE(s.add(std::string(exclude_set::max_pattern_bytes + 1, 'x')));
    EXPECT_TRUE(s.add("name \r\n"));  // line ends and trailing spaces dropped
    EXPECT_TRUE(s.excluded("name", false));
    EXPECT_EQ(s.lines().size(), 1u);
    EXPECT_EQ(s.lines().front(), "name");
    for (std::size_t i = 1; i < exclude_set::max_patterns; ++i) {
        ASSERT_TRUE(s.add("p" + std::to_string(i)));
    }
    EXPECT_FALSE(s.add("one-too-many"));
}

// A flag's value is one pattern as it is: pattern_line makes the line that means it (what
// goes on the wire, parsed the same way at the peer).
TEST(exclude_set, a_pattern_given_as_it_is_keeps_its_leading_hash_and_trailing_spaces) {
    exclude_set s;
    for (const char* p : {"#c", "sp ", "two  ", "*.tmp", "a\\ ", "#"}) {
        ASSERT_TRUE(s.add(pattern_line(p))) << p;
    }
    EXPECT_EQ(s.lines(), (std::vector<std::string>{"\\#c", "sp\\ ", "two \\ ", "*.tmp", "a\\ ", "\\#"}));
    EXPECT_TRUE(s.excluded("#c", false));
    EXPECT_TRUE(s.excluded("d/#c", false));
    EXPECT_TRUE(s.excluded("sp ", false));
    EXPECT_FALSE(s.excluded("sp", false));
    EXPECT_TRUE(s.excluded("two  ", false));
    EXPECT_FALSE(s.excluded("two ", false));
    EXPECT_TRUE(s.excluded("a ", false));  // escaped by the user: the same pattern
    EXPECT_TRUE(s.excluded("#", false));
    exclude_set peer;
    for (const std::string& line : s.lines()) {
        ASSERT_TRUE(peer.add(line));
    }
    EXPECT_TRUE(peer.excluded("sp ", false));
    EXPECT_TRUE(peer.excluded("#c", false));
}

}  // namespace
}  // namespace ferry
