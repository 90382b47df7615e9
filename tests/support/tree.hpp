// Helpers to build test file trees and compare them: bytes, modes and mtimes.
#pragma once

#include <cstdint>
#include <filesystem>
#include <string>

namespace ferry::test {

// Writes `size` pseudo-random bytes (seeded) to `path`, creating parent folders.
void write_random_file(const std::filesystem::path& path, std::uint64_t size, std::uint32_t seed);
void write_text_file(const std::filesystem::path& path, const std::string& text);
// Copies the file `from` to `to` with its mtime, creating parent folders: a file that
// looks the same to a sync (size and mtime) and is.
void copy_file_with_mtime(const std::filesystem::path& from, const std::filesystem::path& to);
// The bytes of the file at `path` (empty if it cannot be read).
std::string read_text_file(const std::filesystem::path& path);

// Empty string if `a` and `b` hold the same tree (names, kinds, bytes, permission bits,
// mtimes of files and symlinks to the nanosecond, symlink targets; nothing followed);
// otherwise the first difference, in words.
std::string compare_trees(const std::filesystem::path& a, const std::filesystem::path& b);

// The step, in ns, in which the file system holding the folder `dir` keeps mtimes
// (probe_mtime_step of node/dest_tree.hpp); 0 when it cannot be told.
std::int64_t mtime_step_of(const std::filesystem::path& dir);

}  // namespace ferry::test
