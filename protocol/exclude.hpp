// exclude_set: gitignore-style patterns for `ferry sync --exclude` (docs/cli.md).
//
// Checked on both sides: the sender leaves out what matches, and the receiver never
// deletes what matches (rsync's exclude semantics). The receiver gets the patterns from
// the peer, so matching is bounded: each segment is matched with the two-pointer glob
// algorithm (no exponential backtracking), and the count and size of patterns are capped.
//
// Rules, as in .gitignore: '#' starts a comment line and blank lines are ignored; `!`
// re-includes; a trailing '/' matches folders only; a pattern with a '/' elsewhere is
// anchored at the sync root (a leading '/' only anchors), otherwise it matches a name at
// any depth; '*' and '?' never match '/', "[a-z]" and "[!a-z]" are classes, '\' escapes;
// a "**" segment matches any number of folders. The last matching pattern decides. What
// lies inside an excluded folder is excluded too (walkers do not descend into it).
// A plain value: no I/O, no locking.
#pragma once

#include <bitset>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <set>
#include <string>
#include <string_view>
#include <vector>

namespace ferry {

// One path segment's pattern, parsed: '*', '?', classes ("[a-z]", "[!a-z]"; an unclosed
// '[' is a literal), '\' escapes, or "**" alone (any number of folders, see exclude_set).
class glob_segment {
public:
    explicit glob_segment(std::string_view pattern);
    bool match(std::string_view name) const;
    bool globstar() const { return globstar_; }

private:
    struct token {
        enum kind_t : std::uint8_t { literal, any, star, set } kind;
        unsigned char c = 0;      // literal
        std::uint32_t index = 0;  // set: into sets_
    };
    std::vector<token> tokens_;
    std::vector<std::bitset<256>> sets_;
    bool globstar_ = false;
};

// The pattern line that stands for one pattern given as it is (a `--exclude` flag's
// value): a leading '#' and trailing spaces are part of the pattern there, where a line
// (of an --exclude-from file, or on the wire) would take them as a comment and drop them.
std::string pattern_line(std::string_view pattern);

class exclude_set {
public:
    static constexpr std::size_t max_patterns = 1024;
    static constexpr std::size_t max_pattern_bytes = 1024;

    // Adds one pattern line. Returns false (adding nothing) for a pattern that is too
    // long or would match nothing ever ("/", "!"), or when the set is full; blank lines
    // and comments are accepted and ignored.
    bool add(std::string_view line);

    // Whether `path` (a wire path relative to the sync root; `is_dir`: it is a folder)
    // is excluded by the patterns themselves. Its parents are not looked at: see
    // excluded_or_inside().
    bool excluded(std::string_view path, bool is_dir) const;
    // Whether `path` or a folder it lies in is excluded.
    bool excluded_or_inside(std::string_view path, bool is_dir) const;

    // Keeps exactly `path` (a wire path from the root; any bytes, no pattern syntax):
    // excluded() is true for it whatever the patterns say (SyncTarget.keep, what SRC's
    // scan skipped). A path that is not a wire path is refused (false).
    bool keep(std::string_view path);
    // Keeps every path `other` keeps too (its patterns are not taken).
    void keep_all_of(const exclude_set& other) { kept_.insert(other.kept_.begin(), other.kept_.end()); }

    // The pattern lines kept, as given (for the wire).
    const std::vector<std::string>& lines() const { return lines_; }
    bool empty() const { return rules_.empty() && kept_.empty(); }

private:
    struct rule {
        std::vector<glob_segment> segments;  // "**" stands for any number of folders
        bool negate = false;
        bool dir_only = false;
        bool anchored = false;  // relative to the root; otherwise one segment, any depth
    };
    std::vector<rule> rules_;
    std::vector<std::string> lines_;
    std::set<std::string, std::less<>> kept_;
};

// glob_segment(pattern).match(name).
bool glob_segment_match(std::string_view pattern, std::string_view name);

}  // namespace ferry
