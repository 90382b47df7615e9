// A temporary folder under /tmp, removed (recursively) when the object goes away.
#pragma once

#include <filesystem>
#include <string>

namespace ferry::test {

class temp_dir {
public:
    explicit temp_dir(const std::string& prefix = "ferry-test");
    ~temp_dir();
    temp_dir(const temp_dir&) = delete;
    temp_dir& operator=(const temp_dir&) = delete;

    const std::filesystem::path& path() const { return path_; }
    std::filesystem::path operator/(const std::string& rel) const { return path_ / rel; }

private:
    std::filesystem::path path_;
};

}  // namespace ferry::test
