#include "protocol/path.hpp"

#include "protocol/errors.hpp"
#include "protocol/types.hpp"

namespace ferry {

std::error_code check_wire_path(std::string_view path) {
    if (path.empty() || path.size() > max_path_bytes) {
        return protocol_errc::bad_path;
    }
    if (path.front() == '/') {
        return protocol_errc::bad_path;
    }
    // Windows drive letters ("C:") are refused even though ':' is a legal name byte elsewhere.
    if (path.size() >= 2 && path[1] == ':' &&
        ((path[0] >= 'A' && path[0] <= 'Z') || (path[0] >= 'a' && path[0] <= 'z'))) {
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
        for (char c : name) {
            if (c == '\0' || c == '\\') {
                return protocol_errc::bad_path;
            }
        }
        start = end + 1;
    }
    return {};
}

bool is_partial_file_name(std::string_view name) {
    auto ends_with = [&](std::string_view suffix) {
        return name.size() >= suffix.size() && name.substr(name.size() - suffix.size()) == suffix;
    };
    constexpr std::string_view suffix = ".ferry-part";  // after "." and a name of at least one byte
    return (name.size() > suffix.size() + 1 && name.front() == '.' && ends_with(suffix)) ||
           (name.substr(0, 7) == ".ferry-" && ends_with(".part"));
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

std::string_view wire_parent(std::string_view path) {
    std::size_t slash = path.rfind('/');
    return slash == std::string_view::npos ? std::string_view{} : path.substr(0, slash);
}

}  // namespace ferry
