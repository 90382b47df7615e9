// read_whole: a batch of small files opened, read and closed in one io_uring submission.
// Each file's `got` is what a plain open + pread would give, and what fails (missing, a
// symlink under a root, a folder) comes back as its errno for the caller to read again.
#include "node/batch_reads.hpp"

#include <fcntl.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <array>
#include <cerrno>
#include <cstdlib>
#include <filesystem>
#include <string>
#include <thread>
#include <vector>

#include "tests/support/temp_dir.hpp"
#include "tests/support/tree.hpp"

namespace ferry {
namespace {

namespace fs = std::filesystem;

TEST(BatchReads, EachFileGetsWhatAPlainReadGivesAndFailuresTheirErrno) {
    test::temp_dir dir("ferry-batch-reads");
    fs::path root = dir.path() / "root";
    test::write_random_file(root / "a.bin", 4096, 1);
    test::write_random_file(root / "sub/b.bin", 1, 2);
    test::write_text_file(root / "empty", "");
    test::write_random_file(root / "grown.bin", 5000, 3);
    fs::create_symlink("a.bin", root / "link");
    fs::create_directories(root / "folder");
    std::vector<std::string> paths{"a.bin", "sub/b.bin", "empty", "grown.bin", "missing", "link", "../root/a.bin",
                                   "folder"};
    int root_fd = ::open(root.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    ASSERT_GE(root_fd, 0);
    std::vector<std::vector<std::uint8_t>> bufs(paths.size(), std::vector<std::uint8_t>(8192));
    std::vector<whole_read> reads;
    std::vector<std::size_t> sizes{4096, 1, 0, 4096, 0, 0, 0, 0};  // as "scanned": grown.bin was 4096
    for (std::size_t i = 0; i < paths.size(); ++i) {
        reads.push_back(whole_read{root_fd, &paths[i], bufs[i].data(), sizes[i] + 1});
    }
    // An absolute path, as `ferry send` reads its sources.
    std::string absolute = (root / "sub/b.bin").string();
    std::vector<std::uint8_t> abs_buf(16);
    reads.push_back(whole_read{-1, &absolute, abs_buf.data(), 2});

    if (!read_whole(reads)) {
        GTEST_SKIP() << "io_uring is not available here (or ferry was built without liburing)";
    }
    EXPECT_EQ(reads[0].got, 4096);
    EXPECT_EQ(std::string(bufs[0].begin(), bufs[0].begin() + 4096), test::read_text_file(root / "a.bin"));
    EXPECT_EQ(reads[1].got, 1);
    EXPECT_EQ(bufs[1][0], static_cast<std::uint8_t>(test::read_text_file(root / "sub/b.bin")[0]));
    EXPECT_EQ(reads[2].got, 0);
    EXPECT_EQ(reads[3].got, 4097) << "one byte past the size it was given: it grew";
    EXPECT_EQ(reads[4].got, -ENOENT);
    EXPECT_EQ(reads[5].got, -ELOOP) << "a symlink is not followed under a root";
    EXPECT_EQ(reads[6].got, -EXDEV) << "nothing outside the root";
    EXPECT_LT(reads[7].got, 0) << "a folder reads as an error (EISDIR)";
    EXPECT_EQ(reads[8].got, 1);
    EXPECT_EQ(abs_buf[0], bufs[1][0]);

    // The slots are free again: a second batch on the same thread reads the same.
    std::array<whole_read, 2> again{whole_read{root_fd, &paths[0], bufs[0].data(), 4097},
                                    whole_read{root_fd, &paths[1], bufs[1].data(), 2}};
    ASSERT_TRUE(read_whole(again));
    EXPECT_EQ(again[0].got, 4096);
    EXPECT_EQ(again[1].got, 1);
    ::close(root_fd);
}

TEST(BatchReads, MoreFilesThanOneSubmissionTakesAreLeftToTheCaller) {
    test::temp_dir dir("ferry-batch-reads");
    std::vector<std::string> paths;
    for (std::size_t i = 0; i < max_whole_reads + 3; ++i) {
        paths.push_back((dir.path() / ("f" + std::to_string(i))).string());
        test::write_random_file(paths.back(), 100 + i, static_cast<std::uint32_t>(i));
    }
    std::vector<std::vector<std::uint8_t>> bufs(paths.size(), std::vector<std::uint8_t>(256));
    std::vector<whole_read> reads;
    for (std::size_t i = 0; i < paths.size(); ++i) {
        reads.push_back(whole_read{-1, &paths[i], bufs[i].data(), 100 + i + 1});
    }
    if (!read_whole(reads)) {
        GTEST_SKIP() << "io_uring is not available here";
    }
    for (std::size_t i = 0; i < paths.size(); ++i) {
        EXPECT_EQ(reads[i].got, i < max_whole_reads ? static_cast<long>(100 + i) : -1) << i;
    }
}

TEST(BatchReads, UnnamedFilesAreLinkedAndClosedAndAFailedLinkLeavesItsFileOpen) {
    test::temp_dir dir("ferry-batch-links");
    int dir_fd = ::open(dir.path().c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    ASSERT_GE(dir_fd, 0);
    test::write_text_file(dir.path() / "taken", "already here\n");
    std::vector<std::string> names{"one", "two", "taken"};
    std::vector<link_close> ops;
    for (const std::string& name : names) {
        int fd = ::openat(dir_fd, ".", O_TMPFILE | O_WRONLY | O_CLOEXEC, 0644);
        if (fd < 0) {
            GTEST_SKIP() << "no O_TMPFILE here";
        }
        ASSERT_EQ(::write(fd, name.data(), name.size()), static_cast<ssize_t>(name.size()));
        ops.push_back(link_close{fd, dir_fd, name.c_str()});
    }
    if (!link_and_close(ops)) {
        GTEST_SKIP() << "io_uring is not available here";
    }
    EXPECT_EQ(ops[0].result, 0);
    EXPECT_EQ(ops[1].result, 0);
    EXPECT_EQ(test::read_text_file(dir.path() / "one"), "one");
    EXPECT_EQ(test::read_text_file(dir.path() / "two"), "two");
    // Linked and closed: the descriptors are gone.
    EXPECT_EQ(::fcntl(ops[0].fd, F_GETFD), -1);
    EXPECT_EQ(::fcntl(ops[1].fd, F_GETFD), -1);
    // A name already there is kept, and the unnamed file stays open for the caller.
    EXPECT_EQ(ops[2].result, -EEXIST);
    EXPECT_EQ(test::read_text_file(dir.path() / "taken"), "already here\n");
    EXPECT_GE(::fcntl(ops[2].fd, F_GETFD), 0);
    ::close(ops[2].fd);
    ::close(dir_fd);
}

TEST(BatchReads, FerryIoUringZeroTurnsItOffForNewThreads) {
    // A thread's ring is made on its first use: a fresh thread sees the variable.
    ::setenv("FERRY_IO_URING", "0", 1);
    bool used = true;
    std::thread t([&] {
        std::string path = "/nonexistent";
        std::uint8_t b = 0;
        std::array<whole_read, 1> one{whole_read{-1, &path, &b, 1}};
        used = read_whole(one);
    });
    t.join();
    ::unsetenv("FERRY_IO_URING");
    EXPECT_FALSE(used);
}

}  // namespace
}  // namespace ferry
