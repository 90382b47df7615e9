#include "protocol/exclude.hpp"

#include "protocol/path.hpp"

namespace ferry {

namespace {

// The two-pointer wildcard match of pattern elements [0, np) against text elements
// [0, nt): `is_star(p)` says element p matches any run (an empty one too), `one(p, t)`
// whether element p matches text element t. On a mismatch only the last star is moved
// on: O(np x nt), never exponential. Serves both levels: characters of a name, and
// segments of a path ("**").
template <class IsStar, class One>
bool wildcard_match(std::size_t np, std::size_t nt, IsStar is_star, One one) {
    std::size_t p = 0;
    std::size_t t = 0;
    std::size_t star_p = std::string::npos;
    std::size_t star_t = 0;
    while (t < nt) {
        if (p < np && is_star(p)) {
            star_p = p++;
            star_t = t;
        } else if (p < np && one(p, t)) {
            ++p;
            ++t;
        } else if (star_p != std::string::npos) {
            p = star_p + 1;
            t = ++star_t;
        } else {
            return false;
        }
    }
    while (p < np && is_star(p)) {
        ++p;
    }
    return p == np;
}

// Rule segments against path segments: a "**" segment matches any number of them.
bool segments_match(const std::vector<glob_segment>& rule, const std::vector<std::string_view>& path) {
    return wildcard_match(
        rule.size(), path.size(), [&](std::size_t r) { return rule[r].globstar(); },
        [&](std::size_t r, std::size_t t) { return rule[r].match(path[t]); });
}

}  // namespace

glob_segment::glob_segment(std::string_view p) {
    globstar_ = p == "**";
    for (std::size_t i = 0; i < p.size();) {
        char c = p[i];
        if (c == '*') {
            if (tokens_.empty() || tokens_.back().kind != token::star) {  // "**" in a name is '*'
                tokens_.push_back({token::star});
            }
            ++i;
        } else if (c == '?') {
            tokens_.push_back({token::any});
            ++i;
        } else if (c == '\\' && i + 1 < p.size()) {
            tokens_.push_back({token::literal, static_cast<unsigned char>(p[i + 1])});
            i += 2;
        } else if (c == '[') {
            // The class runs to the first ']' after its first member; unclosed: a literal '['.
            std::size_t j = i + 1;
            bool negate = j < p.size() && (p[j] == '!' || p[j] == '^');
            j += negate ? 1 : 0;
            std::bitset<256> set;
            bool first = true;
            for (; j < p.size() && (p[j] != ']' || first); first = false) {
                unsigned char lo = static_cast<unsigned char>(p[j]);
                if (lo == '\\' && j + 1 < p.size()) {
                    lo = static_cast<unsigned char>(p[++j]);
                }
                unsigned char hi = lo;
                if (j + 2 < p.size() && p[j + 1] == '-' && p[j + 2] != ']') {
                    j += 2;
                    if (p[j] == '\\' && j + 1 < p.size()) {
                        ++j;
                    }
                    hi = static_cast<unsigned char>(p[j]);
                }
                for (unsigned v = lo; v <= hi; ++v) {
                    set.set(v);
                }
                ++j;
            }
            if (j >= p.size()) {
                tokens_.push_back({token::literal, static_cast<unsigned char>('[')});
                ++i;
                continue;
            }
            if (negate) {
                set.flip();
            }
            set.reset('/');
            tokens_.push_back({token::set, 0, static_cast<std::uint32_t>(sets_.size())});
            sets_.push_back(set);
            i = j + 1;
        } else {
            tokens_.push_back({token::literal, static_cast<unsigned char>(c)});
            ++i;
        }
    }
}

bool glob_segment::match(std::string_view s) const {
    return wildcard_match(
        tokens_.size(), s.size(), [&](std::size_t t) { return tokens_[t].kind == token::star; },
        [&](std::size_t t, std::size_t i) {
            const token& k = tokens_[t];
            auto c = static_cast<unsigned char>(s[i]);
            switch (k.kind) {
                case token::literal: return k.c == c;
                case token::any: return c != '/';
                case token::set: return sets_[k.index].test(c);
                case token::star: return false;
            }
            return false;
        });
}

bool glob_segment_match(std::string_view pattern, std::string_view name) { return glob_segment(pattern).match(name); }

std::string pattern_line(std::string_view pattern) {
    std::string line(pattern);
    if (!line.empty() && line.front() == '#') {
        line.insert(0, 1, '\\');  // "\#": a literal '#', as in .gitignore
    }
    if (!line.empty() && line.back() == ' ' && !(line.size() >= 2 && line[line.size() - 2] == '\\')) {
        line.insert(line.size() - 1, 1, '\\');  // the last space escaped keeps every one before it
    }
    return line;
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
        if (!seg.empty() && !(seg == "**" && !r.segments.empty() && r.segments.back().globstar())) {
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
    if (r.segments.size() > 1 && r.segments.back().globstar()) {
        // "a/**" is what lies inside a, not a itself (as in gitignore): the trailing "**"
        // stands for one name or more, "*/**", wherever in the path the rest matched
        // (a "**" before it may stand for no folder at all: "**/build/**" holds build/x).
        r.segments.insert(r.segments.end() - 1, glob_segment("*"));
    }
    rules_.push_back(std::move(r));
    lines_.emplace_back(line);
    return true;
}

bool exclude_set::keep(std::string_view path) {
    if (check_wire_path(path)) {
        return false;
    }
    kept_.emplace(path);
    return true;
}

bool exclude_set::excluded(std::string_view path, bool is_dir) const {
    if (!kept_.empty() && kept_.contains(path)) {
        return true;
    }
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
                              : r.segments.size() == 1 && r.segments.front().match(name);
        if (hit) {
            out = !r.negate;
        }
    }
    return out;
}

bool exclude_set::excluded_or_inside(std::string_view path, bool is_dir) const {
    if (empty()) {
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
