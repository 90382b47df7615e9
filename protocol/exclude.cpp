#include "protocol/exclude.hpp"

#include "protocol/path.hpp"

namespace ferry {

namespace {

// Matches the class starting at p[i] ('[') against c; sets `end` to the index after its
// ']'. Returns false with end == 0 when the class is not closed (then '[' is a literal).
bool class_match(std::string_view p, std::size_t i, char c, std::size_t& end) {
    std::size_t j = i + 1;
    bool negate = j < p.size() && (p[j] == '!' || p[j] == '^');
    if (negate) {
        ++j;
    }
    bool hit = false;
    bool first = true;
    for (; j < p.size() && (p[j] != ']' || first); first = false) {
        char lo = p[j];
        if (lo == '\\' && j + 1 < p.size()) {
            lo = p[++j];
        }
        char hi = lo;
        if (j + 2 < p.size() && p[j + 1] == '-' && p[j + 2] != ']') {
            hi = p[j + 2];
            if (hi == '\\' && j + 3 < p.size()) {
                ++j;
                hi = p[j + 2];
            }
            j += 2;
        }
        auto u = static_cast<unsigned char>(c);
        if (static_cast<unsigned char>(lo) <= u && u <= static_cast<unsigned char>(hi)) {
            hit = true;
        }
        ++j;
    }
    if (j >= p.size()) {
        end = 0;
        return false;
    }
    end = j + 1;
    return hit != negate;
}

// One element of the pattern at p[i] matched against c: sets `next` to the index after it.
bool one_match(std::string_view p, std::size_t i, char c, std::size_t& next) {
    if (p[i] == '?') {
        next = i + 1;
        return true;
    }
    if (p[i] == '[') {
        std::size_t end = 0;
        bool hit = class_match(p, i, c, end);
        if (end != 0) {
            next = end;
            return hit;
        }
    }
    if (p[i] == '\\' && i + 1 < p.size()) {
        next = i + 2;
        return p[i + 1] == c;
    }
    next = i + 1;
    return p[i] == c;
}

// Segments of `rule` from `ri` against path segments from `pi`: "**" matches any number
// of them. The same two-pointer scheme as glob_segment_match, one level up.
bool segments_match(const std::vector<std::string>& rule, const std::vector<std::string_view>& path) {
    std::size_t r = 0;
    std::size_t s = 0;
    std::size_t star_r = std::string::npos;
    std::size_t star_s = 0;
    while (s < path.size()) {
        if (r < rule.size() && rule[r] == "**") {
            star_r = r++;
            star_s = s;
        } else if (r < rule.size() && glob_segment_match(rule[r], path[s])) {
            ++r;
            ++s;
        } else if (star_r != std::string::npos) {
            r = star_r + 1;
            s = ++star_s;
        } else {
            return false;
        }
    }
    while (r < rule.size() && rule[r] == "**") {
        ++r;
    }
    return r == rule.size();
}

}  // namespace

bool glob_segment_match(std::string_view p, std::string_view s) {
    std::size_t pi = 0;
    std::size_t si = 0;
    std::size_t star_p = std::string::npos;
    std::size_t star_s = 0;
    while (si < s.size()) {
        std::size_t next = 0;
        if (pi < p.size() && p[pi] == '*') {
            star_p = pi++;
            star_s = si;
        } else if (pi < p.size() && one_match(p, pi, s[si], next)) {
            pi = next;
            ++si;
        } else if (star_p != std::string::npos) {
            pi = star_p + 1;
            si = ++star_s;
        } else {
            return false;
        }
    }
    while (pi < p.size() && p[pi] == '*') {
        ++pi;
    }
    return pi == p.size();
}

bool exclude_set::add(std::string_view line) {
    while (!line.empty() && (line.back() == '\r' || line.back() == '\n')) {
        line.remove_suffix(1);
    }
    // Trailing spaces are dropped unless escaped, as git does.
    while (!line.empty() && line.back() == ' ' && !(line.size() >= 2 && line[line.size() - 2] == '\\')) {
        line.remove_suffix(1);
    }
    if (line.empty() || line.front() == '#') {
        return true;
    }
    if (line.size() > max_pattern_bytes || rules_.size() >= max_patterns) {
        return false;
    }
    rule r;
    std::string_view p = line;
    if (p.front() == '!') {
        r.negate = true;
        p.remove_prefix(1);
    }
    if (!p.empty() && p.back() == '/') {
        r.dir_only = true;
        p.remove_suffix(1);
    }
    if (p.find('/') != std::string_view::npos) {
        r.anchored = true;
        if (p.front() == '/') {
            p.remove_prefix(1);
        }
    }
    std::size_t start = 0;
    while (start <= p.size()) {
        std::size_t slash = p.find('/', start);
        std::string_view seg = p.substr(start, slash == std::string_view::npos ? std::string_view::npos : slash - start);
        if (!seg.empty() && !(seg == "**" && !r.segments.empty() && r.segments.back() == "**")) {
            r.segments.emplace_back(seg);
        }
        if (slash == std::string_view::npos) {
            break;
        }
        start = slash + 1;
    }
    if (r.segments.empty()) {
        return false;
    }
    rules_.push_back(std::move(r));
    lines_.emplace_back(line);
    return true;
}

bool exclude_set::excluded(std::string_view path, bool is_dir) const {
    if (rules_.empty()) {
        return false;
    }
    std::vector<std::string_view> segments = split_wire_path(path);
    std::string_view name = segments.empty() ? path : segments.back();
    bool out = false;
    for (const rule& r : rules_) {
        if (r.dir_only && !is_dir) {
            continue;
        }
        bool hit = r.anchored ? segments_match(r.segments, segments)
                              : r.segments.size() == 1 && glob_segment_match(r.segments.front(), name);
        if (hit) {
            out = !r.negate;
        }
    }
    return out;
}

bool exclude_set::excluded_or_inside(std::string_view path, bool is_dir) const {
    if (rules_.empty()) {
        return false;
    }
    for (std::size_t slash = path.find('/'); slash != std::string_view::npos; slash = path.find('/', slash + 1)) {
        if (excluded(path.substr(0, slash), true)) {
            return true;
        }
    }
    return excluded(path, is_dir);
}

}  // namespace ferry
