// leave_stale_socket: what a crashed node leaves behind: a Unix socket file bound at `path`
// that nobody listens on (bound, then closed). False if it could not be made (the path
// is too long for sun_path, or bind failed).
#pragma once

#include <filesystem>

namespace ferry::test {

bool leave_stale_socket(const std::filesystem::path& path);

}  // namespace ferry::test
