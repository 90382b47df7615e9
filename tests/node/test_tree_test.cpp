// The test trees' own helpers (tests/support/tree.hpp): every e2e test's verdict rests on
// compare_trees, so it must see a difference of one byte anywhere in a file, and
// read_text_file must give a file's bytes whole.
#include "tests/support/tree.hpp"

#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <string>

#include "tests/support/temp_dir.hpp"

namespace ferry {
namespace {

namespace fs = std::filesystem;

// Flips one byte of the file at `p` at `offset` and gives it back its mtime.
void flip_byte(const fs::path& p, std::size_t offset) {
    auto mtime = fs::last_write_time(p);
    std::fstream f(p, std::ios::binary | std::ios::in | std::ios::out);
    f.seekg(static_cast<std::streamoff>(offset));
    char c = 0;
    f.get(c);
    f.seekp(static_cast<std::streamoff>(offset));
    f.put(static_cast<char>(c ^ 0x20));
    f.close();
    fs::last_write_time(p, mtime);
}

TEST(TestTree, CompareTreesSeesOneByteChangedPastTheFirstBlockAndACutFile) {
    test::temp_dir dir("ferry-test-tree");
    // 2.5 MiB: more than two of the blocks the comparison reads at a time.
    const std::size_t size = 5 * 512 * 1024;
    test::write_random_file(dir / "a/f.bin", size, 7);
    test::copy_file_with_mtime(dir / "a/f.bin", dir / "b/f.bin");
    fs::last_write_time(dir / "b", fs::last_write_time(dir / "a"));
    EXPECT_EQ(test::compare_trees(dir / "a", dir / "b"), "");

    for (std::size_t at : {std::size_t{0}, std::size_t{(1 << 20) + 5}, size - 1}) {
        flip_byte(dir / "b/f.bin", at);
        EXPECT_EQ(test::compare_trees(dir / "a", dir / "b"), "bytes differ: " + (dir / "b/f.bin").string()) << at;
        flip_byte(dir / "b/f.bin", at);
        EXPECT_EQ(test::compare_trees(dir / "a", dir / "b"), "") << at;
    }
    EXPECT_EQ(test::read_text_file(dir / "b/f.bin"), test::read_text_file(dir / "a/f.bin"));
    EXPECT_EQ(test::read_text_file(dir / "a/f.bin").size(), size);
    EXPECT_EQ(test::read_text_file(dir / "missing"), "");

    auto mtime = fs::last_write_time(dir / "b/f.bin");
    fs::resize_file(dir / "b/f.bin", size - 1);
    fs::last_write_time(dir / "b/f.bin", mtime);
    EXPECT_EQ(test::compare_trees(dir / "a", dir / "b"), "size differs: " + (dir / "b/f.bin").string());
}

}  // namespace
}  // namespace ferry
