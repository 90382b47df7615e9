#include "node/source_tree.hpp"

#include <sys/stat.h>

#include <algorithm>
#include <set>

#include "protocol/path.hpp"

namespace ferry {

namespace {

std::int64_t mtime_ns_of(const struct stat& st) {
    return static_cast<std::int64_t>(st.st_mtim.tv_sec) * 1'000'000'000 + st.st_mtim.tv_nsec;
}

struct scanner {
    source_tree& out;
    std::string& error;
    std::set<std::string> seen;

    bool add(const std::filesystem::path& local, const std::string& wire, const struct stat& st) {
        if (check_wire_path(wire)) {
            error = local.string() + ": name cannot be sent (not UTF-8, too long, or contains a backslash)";
            return false;
        }
        if (!seen.insert(wire).second) {
            error = local.string() + ": two sources map to the same name \"" + wire + "\"";
            return false;
        }
        entry_info e;
        e.path = wire;
        e.is_dir = S_ISDIR(st.st_mode);
        e.size = e.is_dir ? 0 : static_cast<std::uint64_t>(st.st_size);
        e.mode = st.st_mode & 07777;
        e.mtime_ns = mtime_ns_of(st);
        out.total_bytes += e.size;
        out.entries.push_back(std::move(e));
        out.locals.push_back(local);
        return true;
    }

    bool walk(const std::filesystem::path& local, const std::string& wire) {
        struct stat st {};
        if (::lstat(local.c_str(), &st) != 0) {
            error = local.string() + ": " + std::error_code(errno, std::system_category()).message();
            return false;
        }
        if (S_ISLNK(st.st_mode)) {
            out.skipped.push_back(local.string() + " (symlink)");
            return true;
        }
        if (S_ISREG(st.st_mode) && is_partial_file_name(local.filename().string())) {
            out.skipped.push_back(local.string() + " (a ferry partial file)");
            return true;
        }
        if (!S_ISREG(st.st_mode) && !S_ISDIR(st.st_mode)) {
            out.skipped.push_back(local.string() + " (not a regular file)");
            return true;
        }
        if (!add(local, wire, st)) {
            return false;
        }
        if (!S_ISDIR(st.st_mode)) {
            return true;
        }
        std::error_code ec;
        std::vector<std::filesystem::path> children;
        for (std::filesystem::directory_iterator it(local, ec), end; !ec && it != end; it.increment(ec)) {
            children.push_back(it->path());
        }
        if (ec) {
            error = local.string() + ": " + ec.message();
            return false;
        }
        std::sort(children.begin(), children.end());
        for (const auto& child : children) {
            if (!walk(child, wire + "/" + child.filename().string())) {
                return false;
            }
        }
        return true;
    }
};

}  // namespace

std::error_code scan_sources(const std::vector<std::filesystem::path>& paths, source_tree& out, std::string& error) {
    scanner s{out, error, {}};
    for (const auto& p : paths) {
        std::filesystem::path clean = p.lexically_normal();
        if (clean.has_filename() == false) {
            clean = clean.parent_path();
        }
        std::string name = clean.filename().string();
        if (name.empty() || name == "." || name == "..") {
            std::error_code ec;
            std::filesystem::path abs = std::filesystem::canonical(p, ec);
            name = ec ? std::string() : abs.filename().string();
        }
        if (name.empty()) {
            error = p.string() + ": cannot send the root folder itself; name a folder inside it";
            return std::make_error_code(std::errc::invalid_argument);
        }
        if (!s.walk(p, name)) {
            return std::make_error_code(std::errc::invalid_argument);
        }
    }
    if (out.entries.empty()) {
        error = "nothing to send";
        return std::make_error_code(std::errc::invalid_argument);
    }
    return {};
}

}  // namespace ferry
