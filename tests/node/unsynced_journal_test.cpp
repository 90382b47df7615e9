// unsynced_journal: files renamed before the final sync are recorded, and after an
// interruption they are re-verified: intact ones kept, damaged ones removed, changed
// ones left alone. Live journals (locked) are never touched; torn tails are ignored.
#include "node/unsynced_journal.hpp"

#include <gtest/gtest.h>
#include <fcntl.h>
#include <sys/stat.h>

#include <algorithm>
#include <atomic>
#include <memory>
#include <thread>
#include <filesystem>
#include <fstream>
#include <span>
#include <string>
#include <vector>

#include "node/dest_tree.hpp"
#include "protocol/digest.hpp"
#include "tests/support/temp_dir.hpp"

namespace ferry {
namespace {

namespace fs = std::filesystem;

constexpr std::int64_t mtime_ns = 1'700'000'000'000'000'000;

void write_bytes(const fs::path& p, const std::string& bytes) {
    std::ofstream out(p, std::ios::binary | std::ios::trunc);
    out << bytes;
    ASSERT_TRUE(out.good()) << p;
}

void set_mtime(const fs::path& p, std::int64_t ns) {
    timespec ts[2] = {{0, UTIME_OMIT}, {ns / 1'000'000'000, ns % 1'000'000'000}};
    ASSERT_EQ(::utimensat(AT_FDCWD, p.c_str(), ts, 0), 0) << p;
}

// The protocol's file digest of `bytes` (XXH3-128 per 256 KiB chunk, then over the list).
digest128 digest_of(const std::string& bytes) {
    std::vector<digest128> chunks;
    for (std::size_t off = 0; off < bytes.size(); off += chunk_size) {
        std::size_t n = std::min<std::size_t>(chunk_size, bytes.size() - off);
        chunks.push_back(hash_chunk(std::span(reinterpret_cast<const std::uint8_t*>(bytes.data()) + off, n)));
    }
    return file_digest(chunks);
}

std::string content(std::size_t n, char seed) {
    std::string s(n, '\0');
    for (std::size_t i = 0; i < n; ++i) {
        s[i] = static_cast<char>(seed + i * 7 + (i >> 9));
    }
    return s;
}

std::vector<fs::path> journals_in(const fs::path& dir) {
    std::vector<fs::path> out;
    std::error_code ec;
    for (const auto& de : fs::directory_iterator(dir, ec)) {
        if (de.path().extension() == ".journal") {
            out.push_back(de.path());
        }
    }
    return out;
}

class unsynced_journal_test : public ::testing::Test {
protected:
    // Writes `bytes` as a received file would be (final name, mtime) and returns its entry.
    unsynced_journal::entry place(const std::string& path, const std::string& bytes) {
        fs::create_directories((root_.path() / path).parent_path());
        write_bytes(root_.path() / path, bytes);
        set_mtime(root_.path() / path, mtime_ns);
        struct stat st {};
        EXPECT_EQ(::stat((root_.path() / path).c_str(), &st), 0);
        return {path, bytes.size(), mtime_ns, digest_of(bytes), static_cast<std::uint64_t>(st.st_dev),
                static_cast<std::uint64_t>(st.st_ino)};
    }

    test::temp_dir root_{"ferry-journal-root"};
    test::temp_dir state_{"ferry-journal-state"};
    fs::path dir_ = state_.path() / "unsynced";
};

TEST_F(unsynced_journal_test, nothing_is_created_before_the_first_commit_and_discard_removes_it) {
    unsynced_journal j(dir_, fs::canonical(root_.path()));
    EXPECT_TRUE(journals_in(dir_).empty());
    ASSERT_EQ(j.commit({place("a", "hello")}), std::error_code{});
    EXPECT_EQ(journals_in(dir_).size(), 1u);
    j.discard();
    EXPECT_TRUE(journals_in(dir_).empty());
}

TEST_F(unsynced_journal_test, recovery_keeps_intact_files_removes_damaged_ones_and_leaves_changed_ones) {
    std::string big = content(3 * chunk_size + 123, 'x');
    {
        unsynced_journal j(dir_, fs::canonical(root_.path()));
        ASSERT_EQ(j.commit({place("intact", content(1000, 'a')), place("sub/big", big)}), std::error_code{});
        ASSERT_EQ(j.commit({place("torn", content(5000, 'b')), place("empty-now", content(4096, 'c')),
                            place("edited", content(10, 'd')), place("gone", "x"), place("zero", ""),
                            place("replaced", content(300, 'e'))}),
                  std::error_code{});
        // The transfer dies here: no final sync, no discard (the lock goes with the fd).
    }
    // What a power loss may leave: same size and mtime but other bytes, a truncated file.
    std::string torn = content(5000, 'b');
    torn[4000] ^= 1;
    write_bytes(root_.path() / "torn", torn);
    set_mtime(root_.path() / "torn", mtime_ns);
    write_bytes(root_.path() / "empty-now", "");
    set_mtime(root_.path() / "empty-now", mtime_ns);
    // Someone edited this one since (mtime moved): not ours to judge.
    write_bytes(root_.path() / "edited", "mine now");
    fs::remove(root_.path() / "gone");
    // Another file now has that name (same mtime, other bytes): ferry never wrote it.
    // The old one is moved aside rather than deleted so that its inode stays in use: a
    // filesystem may hand a just-freed inode number to the next file (tmpfs, overlayfs do).
    fs::rename(root_.path() / "replaced", root_.path() / "replaced.old");
    write_bytes(root_.path() / "replaced", content(300, 'f'));
    set_mtime(root_.path() / "replaced", mtime_ns);

    dest_tree tree(root_.path());
    std::error_code ec;
    unsynced_journal::recovery r = unsynced_journal::recover(dir_, tree, ec);
    ASSERT_EQ(ec, std::error_code{});
    EXPECT_EQ(r.journals, 1u);
    EXPECT_EQ(r.verified, 3u);  // intact, sub/big, zero
    std::vector<std::string> removed = r.removed;
    std::sort(removed.begin(), removed.end());
    EXPECT_EQ(removed, (std::vector<std::string>{"empty-now", "torn"}));
    std::vector<std::string> left = r.left;
    std::sort(left.begin(), left.end());
    EXPECT_EQ(left, (std::vector<std::string>{"edited", "replaced"}));

    EXPECT_TRUE(fs::exists(root_.path() / "intact"));
    EXPECT_TRUE(fs::exists(root_.path() / "sub/big"));
    EXPECT_TRUE(fs::exists(root_.path() / "zero"));
    EXPECT_TRUE(fs::exists(root_.path() / "edited"));
    EXPECT_TRUE(fs::exists(root_.path() / "replaced"));
    EXPECT_FALSE(fs::exists(root_.path() / "torn"));
    EXPECT_FALSE(fs::exists(root_.path() / "empty-now"));
    EXPECT_TRUE(journals_in(dir_).empty());

    // Done once: a second recovery finds nothing.
    r = unsynced_journal::recover(dir_, tree, ec);
    EXPECT_EQ(r.journals, 0u);
}

TEST_F(unsynced_journal_test, a_live_journal_is_never_recovered) {
    unsynced_journal live(dir_, fs::canonical(root_.path()));
    ASSERT_EQ(live.commit({place("f", "data")}), std::error_code{});
    write_bytes(root_.path() / "f", "dat!");  // would count as damaged if it were judged
    set_mtime(root_.path() / "f", mtime_ns);
    dest_tree tree(root_.path());
    std::error_code ec;
    unsynced_journal::recovery r = unsynced_journal::recover(dir_, tree, ec);
    EXPECT_EQ(r.journals, 0u);
    EXPECT_TRUE(fs::exists(root_.path() / "f"));
    EXPECT_EQ(journals_in(dir_).size(), 1u);
}

TEST_F(unsynced_journal_test, checks_wait_for_a_recovery_in_progress) {
    auto recovering = std::make_unique<unsynced_journal::folder_lock>(dir_, true);
    std::atomic<bool> checked{false};
    std::thread checker([&] {
        unsynced_journal::folder_lock shared(dir_, false);
        checked = true;
    });
    // The shared lock cannot be had while the exclusive one is held...
    bool early = false;
    for (int i = 0; i < 1000 && !early; ++i) {
        early = checked.load();
        std::this_thread::yield();
    }
    EXPECT_FALSE(early);
    recovering.reset();  // ...and is granted once it goes.
    checker.join();
    EXPECT_TRUE(checked);
}

TEST_F(unsynced_journal_test, a_torn_tail_is_ignored_and_other_folders_journals_are_kept) {
    {
        unsynced_journal j(dir_, fs::canonical(root_.path()));
        ASSERT_EQ(j.commit({place("ok", "fine")}), std::error_code{});
    }
    test::temp_dir other("ferry-journal-other");
    {
        unsynced_journal j(dir_, fs::canonical(other.path()));
        ASSERT_EQ(j.commit({{"elsewhere", 1, mtime_ns, digest_of("z")}}), std::error_code{});
    }
    // A record cut short by the crash, after the good ones. Its file is there with other
    // bytes: were the torn record read, recovery would remove it.
    unsynced_journal::entry torn = place("never-renamed", "abc");
    write_bytes(root_.path() / "never-renamed", "xyz");
    set_mtime(root_.path() / "never-renamed", mtime_ns);
    for (const auto& p : journals_in(dir_)) {
        std::ofstream out(p, std::ios::binary | std::ios::app);
        std::string rec = unsynced_journal::encode(torn);
        out << rec.substr(0, rec.size() - 2);
    }
    dest_tree tree(root_.path());
    std::error_code ec;
    unsynced_journal::recovery r = unsynced_journal::recover(dir_, tree, ec);
    ASSERT_EQ(ec, std::error_code{});
    EXPECT_EQ(r.journals, 1u);
    EXPECT_EQ(r.verified, 1u);
    EXPECT_TRUE(r.removed.empty());
    EXPECT_TRUE(r.left.empty());
    EXPECT_TRUE(fs::exists(root_.path() / "never-renamed"));
    EXPECT_EQ(journals_in(dir_).size(), 1u);  // the other folder's
}

}  // namespace
}  // namespace ferry
