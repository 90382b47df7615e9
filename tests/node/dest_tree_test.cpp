// dest_tree: directory creation, destination checks, symlinks planted in the destination
// (never followed, nothing created outside the root), partial file → final file with
// size, mode and mtime, no-replace finalize, long names, finish_dir and sync_all.
#include "node/dest_tree.hpp"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <map>
#include <optional>
#include <span>
#include <string>
#include <system_error>
#include <vector>

#include "node/resume.hpp"
#include "node/worker_pool.hpp"
#include "protocol/delta.hpp"
#include "protocol/digest.hpp"
#include "tests/support/temp_dir.hpp"
#include "tests/support/tree.hpp"

namespace ferry {
namespace {

// check_file() for a file that is not already there in identical form.
std::error_code check(dest_tree& tree, std::string_view path, bool overwrite) {
    bool identical = false;
    std::error_code ec = tree.check_file(path, overwrite, UINT64_MAX, 0, identical);
    EXPECT_FALSE(identical);
    return ec;
}


namespace fs = std::filesystem;

constexpr std::int64_t test_mtime_ns = 1'600'000'000'123'456'789;

void write_text(const fs::path& p, const std::string& text) {
    std::ofstream out(p, std::ios::binary | std::ios::trunc);
    out << text;
    ASSERT_TRUE(out.good()) << p;
}

struct stat lstat_of(const fs::path& p) {
    struct stat st {};
    EXPECT_EQ(::lstat(p.c_str(), &st), 0) << p;
    return st;
}

std::vector<std::string> removed_paths(const std::vector<dest_tree::removed_entry>& removed) {
    std::vector<std::string> out;
    for (const auto& r : removed) {
        out.push_back(r.path + (r.is_dir ? "/" : ""));
    }
    return out;
}

std::vector<std::string> names_in(const fs::path& dir) {
    std::vector<std::string> names;
    for (const fs::directory_entry& e : fs::directory_iterator(dir)) {
        names.push_back(e.path().filename().string());
    }
    std::sort(names.begin(), names.end());
    return names;
}

bool is_empty_dir(const fs::path& dir) { return fs::is_directory(dir) && fs::is_empty(dir); }

void pwrite_all(int fd, const std::string& bytes, off_t offset) {
    ASSERT_EQ(::pwrite(fd, bytes.data(), bytes.size(), offset), static_cast<ssize_t>(bytes.size()));
}

bool is_symlink_refusal(std::error_code ec) { return ec == dest_errc::symlink || ec == dest_errc::not_a_dir; }

class DestTree : public ::testing::Test {
protected:
    test::temp_dir root_dir_{"ferry-dest"};
    test::temp_dir outside_{"ferry-outside"};
    dest_tree tree_{root_dir_.path()};

    const fs::path& root() const { return root_dir_.path(); }
};

TEST(DestTreeRoot, CreatesMissingRoot) {
    test::temp_dir tmp("ferry-dest");
    fs::path root = tmp / "new/nested/root";
    dest_tree tree(root);
    EXPECT_TRUE(fs::is_directory(root));
    EXPECT_EQ(tree.root(), root);
}

// A claim's key: what std::filesystem's operator/ gives, for any root spelling.
TEST(DestTreeRoot, FullPathIsTheRootJoinedWithTheWirePath) {
    test::temp_dir tmp("ferry-dest");
    for (const fs::path& root : {tmp.path(), fs::path(tmp.path().string() + "/"), fs::path("/")}) {
        int fd = ::open(root.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        ASSERT_GE(fd, 0);
        dest_tree tree(root, fd);
        for (const char* wire : {"a", "a/b c/d.txt", "\xff\n"}) {
            EXPECT_EQ(tree.full_path(wire), (root / wire).string()) << root << " " << wire;
        }
    }
}

TEST(DestTreeRoot, ThrowsWhenRootIsAFile) {
    test::temp_dir tmp("ferry-dest");
    write_text(tmp / "file", "x");
    EXPECT_THROW(dest_tree(tmp / "file"), std::system_error);
}

TEST_F(DestTree, MakeDirNested) {
    EXPECT_EQ(tree_.make_dir("a/b/c"), std::error_code{});
    EXPECT_TRUE(fs::is_directory(root() / "a/b/c"));
    EXPECT_EQ(tree_.make_dir("a/b/c"), std::error_code{});  // already there
    EXPECT_EQ(tree_.make_dir("a/b/d/e"), std::error_code{});
    EXPECT_TRUE(fs::is_directory(root() / "a/b/d/e"));
    EXPECT_EQ(tree_.make_dir(""), std::error_code{});  // the root itself
}

TEST_F(DestTree, MakeDirThroughAFileIsNotADir) {
    write_text(root() / "f", "data");
    EXPECT_EQ(tree_.make_dir("f"), dest_errc::not_a_dir);
    EXPECT_EQ(tree_.make_dir("f/sub"), dest_errc::not_a_dir);
    EXPECT_EQ(test::read_text_file(root() / "f"), "data");
}

TEST_F(DestTree, CheckFileSeesAnIdenticalFileAsAlreadyThere) {
    write_text(root() / "f", "keep");
    struct timespec t[2] = {{0, UTIME_OMIT}, {test_mtime_ns / 1'000'000'000, test_mtime_ns % 1'000'000'000}};
    ASSERT_EQ(::utimensat(AT_FDCWD, (root() / "f").c_str(), t, 0), 0);
    bool identical = false;
    EXPECT_EQ(tree_.check_file("f", false, 4, test_mtime_ns, identical), std::error_code{});
    EXPECT_TRUE(identical);
    // Another size or mtime: an existing file, refused unless overwrite.
    EXPECT_EQ(tree_.check_file("f", false, 5, test_mtime_ns, identical), dest_errc::exists);
    EXPECT_FALSE(identical);
    EXPECT_EQ(tree_.check_file("f", false, 4, test_mtime_ns + 1'000'000'000, identical), dest_errc::exists);
    EXPECT_FALSE(identical);
    EXPECT_EQ(test::read_text_file(root() / "f"), "keep");
}

TEST(StoredMtime, CoarseFileSystemsMatchTheirTruncation) {
    const std::int64_t ns = 1'600'000'001'987'654'321;
    EXPECT_TRUE(same_stored_mtime(ns, ns));
    EXPECT_TRUE(same_stored_mtime(1'600'000'001'987'654'300, ns));  // 100 ns
    EXPECT_TRUE(same_stored_mtime(1'600'000'001'980'000'000, ns));  // 10 ms (exFAT)
    EXPECT_TRUE(same_stored_mtime(1'600'000'001'000'000'000, ns));  // 1 s
    EXPECT_TRUE(same_stored_mtime(1'600'000'000'000'000'000, ns));  // 2 s (FAT)
    EXPECT_FALSE(same_stored_mtime(1'600'000'002'000'000'000, ns));  // rounded up: another time
    EXPECT_FALSE(same_stored_mtime(1'600'000'001'987'654'322, ns));
    EXPECT_FALSE(same_stored_mtime(1'599'999'999'000'000'000, ns));
    // Before 1970 the floor goes down, as the kernel stores it.
    EXPECT_TRUE(same_stored_mtime(-2'000'000'000, -1'500'000'000));
    // A known step takes only its own truncation.
    EXPECT_TRUE(same_stored_mtime(ns, ns, 1));
    EXPECT_FALSE(same_stored_mtime(1'600'000'001'000'000'000, ns, 1));
    EXPECT_TRUE(same_stored_mtime(1'600'000'001'000'000'000, ns, 1'000'000'000));
    EXPECT_FALSE(same_stored_mtime(1'600'000'001'980'000'000, ns, 1'000'000'000));
    EXPECT_TRUE(same_stored_mtime(1'600'000'001'980'000'000, ns, 10'000'000));
}

TEST_F(DestTree, AWholeSecondAtDstIsNotSrcsTimeWithAFractionWhereNanosecondsAreKept) {
    // The test folder's file system (tmpfs or ext4 here) keeps nanoseconds.
    if (std::int64_t step = ferry::test::mtime_step_of(root()); step != 1) {
        GTEST_SKIP() << "the test folder's file system keeps mtimes in steps of " << step
                     << " ns (0: O_TMPFILE not supported); this check needs nanoseconds";
    }
    write_text(root() / "f", "same");
    const std::int64_t whole = 1'600'000'001'000'000'000;
    struct timespec t[2] = {{0, UTIME_OMIT}, {whole / 1'000'000'000, 0}};
    ASSERT_EQ(::utimensat(AT_FDCWD, (root() / "f").c_str(), t, 0), 0);
    bool identical = true;
    EXPECT_EQ(tree_.check_file("f", true, 4, whole + 500'000'000, identical), std::error_code{});
    EXPECT_FALSE(identical);  // SRC is half a second later: it is sent
    EXPECT_EQ(tree_.check_file("f", true, 4, whole, identical), std::error_code{});
    EXPECT_TRUE(identical);
}

TEST_F(DestTree, CheckFileOnFreshPathCreatesParents) {
    EXPECT_EQ(check(tree_, "x/y/f", false), std::error_code{});
    EXPECT_TRUE(fs::is_directory(root() / "x/y"));
    EXPECT_FALSE(fs::exists(fs::symlink_status(root() / "x/y/f")));
    EXPECT_EQ(check(tree_, "top", false), std::error_code{});
    EXPECT_EQ(names_in(root()), (std::vector<std::string>{"x"}));
}

TEST_F(DestTree, CheckFileOnExistingFile) {
    write_text(root() / "f", "keep");
    EXPECT_EQ(check(tree_, "f", false), dest_errc::exists);
    EXPECT_EQ(check(tree_, "f", true), std::error_code{});
    EXPECT_EQ(test::read_text_file(root() / "f"), "keep");  // a check never touches the file
}

TEST_F(DestTree, CheckFileOnDirectory) {
    fs::create_directories(root() / "d/e");
    EXPECT_EQ(check(tree_, "d", false), dest_errc::is_dir);
    EXPECT_EQ(check(tree_, "d", true), dest_errc::is_dir);
    EXPECT_EQ(check(tree_, "d/e", true), dest_errc::is_dir);
}

TEST_F(DestTree, CheckFileUnderAFileIsNotADir) {
    write_text(root() / "f", "data");
    EXPECT_EQ(check(tree_, "f/g", false), dest_errc::not_a_dir);
}

TEST_F(DestTree, SymlinkComponentIsNeverFollowed) {
    fs::create_directory_symlink(outside_.path(), root() / "link");
    EXPECT_TRUE(is_symlink_refusal(check(tree_, "link/f", false)));
    EXPECT_TRUE(is_symlink_refusal(check(tree_, "link/a/b/f", true)));
    EXPECT_TRUE(is_symlink_refusal(tree_.make_dir("link/sub")));
    EXPECT_TRUE(is_symlink_refusal(tree_.make_dir("link")));
    std::error_code ec;
    int fd = tree_.open_partial("link/f", ec);
    EXPECT_EQ(fd, -1);
    EXPECT_TRUE(is_symlink_refusal(ec)) << ec.message();
    EXPECT_TRUE(is_symlink_refusal(tree_.finish_dir("link", 0700, test_mtime_ns)));
    EXPECT_TRUE(is_empty_dir(outside_.path()));
    EXPECT_TRUE(fs::is_symlink(root() / "link"));
}

TEST_F(DestTree, SymlinkDeeperInTheTreeIsNeverFollowed) {
    ASSERT_EQ(tree_.make_dir("a/b"), std::error_code{});
    fs::create_directory_symlink(outside_.path(), root() / "a/b/link");
    EXPECT_TRUE(is_symlink_refusal(check(tree_, "a/b/link/f", false)));
    EXPECT_TRUE(is_symlink_refusal(tree_.make_dir("a/b/link/c/d")));
    EXPECT_TRUE(is_empty_dir(outside_.path()));
}

TEST_F(DestTree, CheckingWithoutCreatingMakesNothing) {
    // What receive_session runs over a whole offer batch before it creates anything.
    bool identical = false;
    EXPECT_FALSE(tree_.make_dir("new/a/b", false));
    EXPECT_FALSE(tree_.check_file("new/a/b/f", false, 5, 0, identical, false));
    EXPECT_FALSE(identical);
    EXPECT_FALSE(fs::exists(root() / "new"));
    fs::create_directory_symlink(outside_.path(), root() / "link");
    EXPECT_TRUE(is_symlink_refusal(tree_.make_dir("link/a", false)));
    EXPECT_TRUE(is_symlink_refusal(tree_.check_file("link/a/f", false, 5, 0, identical, false)));
    EXPECT_EQ(tree_.check_file("link", false, 5, 0, identical, false), dest_errc::symlink);
    write_text(root() / "file", "x");
    EXPECT_EQ(tree_.make_dir("file/sub", false), dest_errc::not_a_dir);
    EXPECT_EQ(tree_.check_file("file", false, 5, 0, identical, false), dest_errc::exists);
    EXPECT_TRUE(is_empty_dir(outside_.path()));
    EXPECT_FALSE(fs::exists(root() / "new"));
}

TEST_F(DestTree, DanglingSymlinkComponentCreatesNothing) {
    fs::path target = outside_ / "not-yet";
    fs::create_directory_symlink(target, root() / "dangling");
    EXPECT_TRUE(is_symlink_refusal(check(tree_, "dangling/f", false)));
    EXPECT_TRUE(is_symlink_refusal(tree_.make_dir("dangling/sub")));
    EXPECT_FALSE(fs::exists(fs::symlink_status(target)));
    EXPECT_TRUE(is_empty_dir(outside_.path()));
}

TEST_F(DestTree, DirectoryReplacedBySymlinkAfterUseIsNotFollowed) {
    ASSERT_EQ(check(tree_, "a/b/f", false), std::error_code{});
    // Planted during the transfer: a/b is moved away and replaced by a symlink.
    fs::rename(root() / "a/b", root() / "a/moved");
    fs::create_directory_symlink(outside_.path(), root() / "a/b");
    std::error_code ec;
    int fd = tree_.open_partial("a/b/f", ec);
    if (fd >= 0) {
        ::close(fd);
    }
    EXPECT_TRUE(is_empty_dir(outside_.path()));
}

TEST_F(DestTree, SymlinkAtFinalNameIsRefusedEvenWithOverwrite) {
    write_text(outside_ / "target", "outside");
    fs::create_symlink(outside_ / "target", root() / "f");
    fs::create_directory_symlink(outside_.path(), root() / "d");
    EXPECT_EQ(check(tree_, "f", false), dest_errc::symlink);
    EXPECT_EQ(check(tree_, "f", true), dest_errc::symlink);
    EXPECT_EQ(check(tree_, "d", true), dest_errc::symlink);
    EXPECT_EQ(test::read_text_file(outside_ / "target"), "outside");
    EXPECT_EQ(names_in(outside_.path()), (std::vector<std::string>{"target"}));
}

// A sync's tree (a mirror) replaces a symlink where a file or folder goes, as itself:
// the file's rename goes over the link, the folder is made after the link is removed, and
// nothing lands where a link pointed. A symlink deeper in a path is still refused.
TEST_F(DestTree, ASyncTreeReplacesSymlinksInTheWayWithoutFollowingThem) {
    tree_.set_mirror(true);
    fs::create_directory_symlink(outside_.path(), root() / "dir");
    write_text(outside_.path() / "victim", "keep");
    fs::create_symlink(outside_.path() / "victim", root() / "file");

    bool identical = true;
    bool exists = false;
    ASSERT_EQ(tree_.check_file("file", true, 4, 0, identical, false, &exists), std::error_code{});
    EXPECT_FALSE(identical);
    EXPECT_TRUE(exists);
    std::error_code ec;
    int fd = tree_.open_partial("file", ec);
    ASSERT_GE(fd, 0) << ec.message();
    pwrite_all(fd, "new!", 0);
    ASSERT_EQ(tree_.finalize("file", fd, 4, 0644, test_mtime_ns, false, true), std::error_code{});
    EXPECT_TRUE(fs::is_regular_file(fs::symlink_status(root() / "file")));
    EXPECT_EQ(test::read_text_file(root() / "file"), "new!");
    EXPECT_EQ(test::read_text_file(outside_.path() / "victim"), "keep");

    bool absent = false;
    ASSERT_EQ(tree_.make_dir("dir", false, &absent), std::error_code{});
    EXPECT_TRUE(absent);
    EXPECT_TRUE(fs::is_symlink(root() / "dir"));  // a check changes nothing
    EXPECT_TRUE(is_symlink_refusal(tree_.make_dir("dir/sub")));  // not at the final name
    ASSERT_EQ(tree_.make_dir("dir"), std::error_code{});  // a sync offers the folder first
    EXPECT_TRUE(fs::is_directory(fs::symlink_status(root() / "dir")));
    ASSERT_EQ(tree_.make_dir("dir/sub"), std::error_code{});
    EXPECT_TRUE(fs::is_directory(root() / "dir/sub"));
    EXPECT_EQ(names_in(outside_.path()), std::vector<std::string>{"victim"});

    fs::create_directory(root() / "real");
    fs::create_directory_symlink(outside_.path(), root() / "real/link");
    EXPECT_TRUE(is_symlink_refusal(check(tree_, "real/link/deeper/f", false)));
    EXPECT_EQ(names_in(outside_.path()), std::vector<std::string>{"victim"});
}

// A sync's symlink: made under the partial name and renamed over a file or link there,
// with its own mtime; identical only with the same target and mtime; never followed.
TEST_F(DestTree, ASyncsSymlinkReplacesAFileOrLinkButNeverFollowsOne) {
    tree_.set_mirror(true);
    write_text(outside_.path() / "victim", "keep");
    fs::create_symlink(outside_.path() / "victim", root() / "l");
    write_text(root() / "f", "a file");
    bool identical = true;
    bool exists = false;
    ASSERT_EQ(tree_.check_link("new", "t", test_mtime_ns, identical, false, exists), std::error_code{});
    EXPECT_FALSE(identical);
    EXPECT_FALSE(exists);
    ASSERT_EQ(tree_.check_link("l", "t", test_mtime_ns, identical, false, exists), std::error_code{});
    EXPECT_FALSE(identical);
    EXPECT_TRUE(exists);
    for (const char* name : {"l", "f", "new", "sub/new"}) {
        ASSERT_EQ(tree_.make_link(name, "../x y", test_mtime_ns), std::error_code{}) << name;
        EXPECT_EQ(fs::read_symlink(root() / name), "../x y") << name;
        struct stat st {};
        ASSERT_EQ(::lstat((root() / name).c_str(), &st), 0);
        EXPECT_EQ(st.st_mtim.tv_sec * 1'000'000'000 + st.st_mtim.tv_nsec, test_mtime_ns) << name;
        ASSERT_EQ(tree_.check_link(name, "../x y", test_mtime_ns, identical, false, exists), std::error_code{});
        EXPECT_TRUE(identical) << name;
        ASSERT_EQ(tree_.check_link(name, "../x z", test_mtime_ns, identical, false, exists), std::error_code{});
        EXPECT_FALSE(identical) << name;  // another target
        ASSERT_EQ(tree_.check_link(name, "../x y", test_mtime_ns + 1'000'000'000, identical, false, exists),
                  std::error_code{});
        EXPECT_FALSE(identical) << name;  // another mtime
    }
    EXPECT_EQ(test::read_text_file(outside_.path() / "victim"), "keep");
    EXPECT_EQ(names_in(outside_.path()), std::vector<std::string>{"victim"});
    fs::create_directory(root() / "dir");
    EXPECT_EQ(tree_.check_link("dir", "t", test_mtime_ns, identical, false, exists), dest_errc::is_dir);
}

// A folder where a sync's file or symlink goes: removed with what it holds, except what
// `keep` protects (then it stays, dest_errc::is_dir); with no `keep`, only an empty one.
// A dry run removes nothing and lists the same.
TEST_F(DestTree, ClearFolderRemovesAFolderInTheWayUnlessSomethingInItIsKept) {
    fs::create_directories(root() / "d/sub");
    write_text(root() / "d/a", "a");
    write_text(root() / "d/sub/b", "b");
    fs::create_directory_symlink(outside_.path(), root() / "d/link");
    write_text(outside_.path() / "victim", "keep");
    fs::create_directory(root() / "empty");
    auto remove_all = [](const std::string&, bool) { return dest_tree::verdict::remove; };
    auto keep_b = [](const std::string& p, bool) {
        return p == "d/sub/b" ? dest_tree::verdict::keep_whole : dest_tree::verdict::remove;
    };
    std::vector<dest_tree::removed_entry> removed;
    std::string where;
    EXPECT_EQ(tree_.clear_folder("d", nullptr, false, removed, where), dest_errc::is_dir);  // not empty
    EXPECT_TRUE(removed.empty());
    EXPECT_EQ(tree_.clear_folder("d", keep_b, false, removed, where), dest_errc::is_dir);
    EXPECT_TRUE(fs::exists(root() / "d/sub/b"));
    EXPECT_FALSE(fs::exists(root() / "d/a"));
    EXPECT_FALSE(fs::exists(fs::symlink_status(root() / "d/link")));  // the link itself went
    removed.clear();
    write_text(root() / "d/a", "a");
    fs::create_directory_symlink(outside_.path(), root() / "d/link");
    ASSERT_EQ(tree_.clear_folder("d", remove_all, true, removed, where), std::error_code{});  // dry run
    EXPECT_EQ(removed.size(), 5u);  // a, link, sub/b, sub, d
    EXPECT_TRUE(fs::exists(root() / "d/sub/b"));
    removed.clear();
    ASSERT_EQ(tree_.clear_folder("d", remove_all, false, removed, where), std::error_code{});
    EXPECT_EQ(removed.size(), 5u);
    EXPECT_EQ(removed.back().path, "d");
    EXPECT_FALSE(fs::exists(fs::symlink_status(root() / "d")));
    EXPECT_EQ(names_in(outside_.path()), std::vector<std::string>{"victim"});
    removed.clear();
    ASSERT_EQ(tree_.clear_folder("empty", nullptr, false, removed, where), std::error_code{});
    EXPECT_FALSE(fs::exists(root() / "empty"));
    // The name is free again (no stale folder descriptor of the tree's stands in the way).
    ASSERT_EQ(tree_.make_link("d", "t", test_mtime_ns), std::error_code{});
    EXPECT_TRUE(fs::is_symlink(root() / "d"));
}

TEST_F(DestTree, AGetsTreeRenamesOverNoFifoOrFolderPutThereAfterItsCheck) {
    // A get's tree replaces files and symlinks only: what another process puts at the
    // name between the check and the rename (long apart for a big file) stays, and the
    // rename says why. A sync's tree (no keep_kinds) is unchanged.
    tree_.set_mirror(true);
    tree_.set_keep_kinds(true);
    write_text(root() / dest_tree::partial_name("f"), "new");
    ASSERT_EQ(::mkfifo((root() / "f").c_str(), 0600), 0);
    EXPECT_EQ(tree_.rename_final("f", true), make_error_code(dest_errc::special));
    EXPECT_TRUE(fs::is_fifo(root() / "f"));
    fs::remove(root() / "f");
    fs::create_directories(root() / "f");
    EXPECT_EQ(tree_.rename_final("f", true), make_error_code(dest_errc::is_dir));
    EXPECT_TRUE(fs::is_directory(root() / "f"));
    ASSERT_EQ(::mkfifo((root() / "l").c_str(), 0600), 0);
    EXPECT_EQ(tree_.make_link("l", "t", test_mtime_ns), make_error_code(dest_errc::special));
    EXPECT_TRUE(fs::is_fifo(root() / "l"));
    EXPECT_FALSE(fs::exists(fs::symlink_status(root() / dest_tree::partial_name("l"))));
    fs::remove(root() / "f");
    write_text(root() / "f", "old");  // a file is another version: replaced
    EXPECT_EQ(tree_.rename_final("f", true), std::error_code{});
    EXPECT_EQ(test::read_text_file(root() / "f"), "new");
    tree_.set_keep_kinds(false);
    EXPECT_EQ(tree_.make_link("l", "t", test_mtime_ns), std::error_code{});  // a sync's: renamed over
    EXPECT_TRUE(fs::is_symlink(root() / "l"));
}

TEST_F(DestTree, ClearFolderTakesAnOlderAttemptsPartialFilesWithIt) {
    // A killed sync left partial files (and a resume record) in folders; SRC now has a
    // file where the folder is. Nothing below that path can be offered, so they go, with
    // --delete or without, and are not reported.
    for (const char* dir : {"d/sub", "only", "mixed"}) {
        fs::create_directories(root() / dir);
    }
    write_text(root() / "d" / dest_tree::partial_name("big"), "half");
    write_text(root() / "d/sub" / dest_tree::partial_name("x"), "half");
    write_text(root() / "only" / dest_tree::partial_name("y"), "half");
    write_text(root() / "mixed" / dest_tree::partial_name("z"), "half");
    write_text(root() / "mixed/theirs", "kept without --delete");
    auto remove_all = [](const std::string&, bool) { return dest_tree::verdict::remove; };
    std::vector<dest_tree::removed_entry> removed;
    std::string where;
    ASSERT_EQ(tree_.clear_folder("only", nullptr, true, removed, where), std::error_code{});  // a dry run: all there
    EXPECT_TRUE(fs::exists(root() / "only" / dest_tree::partial_name("y")));
    removed.clear();
    ASSERT_EQ(tree_.clear_folder("only", nullptr, false, removed, where), std::error_code{}) << where;
    EXPECT_FALSE(fs::exists(root() / "only"));
    EXPECT_EQ(removed_paths(removed), std::vector<std::string>{"only/"});
    removed.clear();
    ASSERT_EQ(tree_.clear_folder("d", remove_all, false, removed, where), std::error_code{}) << where;
    EXPECT_FALSE(fs::exists(root() / "d"));
    EXPECT_EQ(removed_paths(removed), (std::vector<std::string>{"d/sub/", "d/"}));
    removed.clear();
    EXPECT_EQ(tree_.clear_folder("mixed", nullptr, false, removed, where), dest_errc::is_dir);  // not empty: stays
    EXPECT_TRUE(fs::exists(root() / "mixed/theirs"));
}

TEST_F(DestTree, SymlinkAtPartialNameIsRefused) {
    fs::create_symlink(outside_ / "stolen", root() / dest_tree::partial_name("g"));
    std::error_code ec;
    int fd = tree_.open_partial("g", ec);
    EXPECT_EQ(fd, -1);
    EXPECT_EQ(ec, dest_errc::symlink);
    EXPECT_TRUE(is_empty_dir(outside_.path()));
}

TEST_F(DestTree, PartialWriteAndFinalize) {
    ASSERT_EQ(check(tree_, "dir/file.bin", false), std::error_code{});
    std::error_code ec;
    int fd = tree_.open_partial("dir/file.bin", ec);
    ASSERT_GE(fd, 0) << ec.message();
    EXPECT_FALSE(ec);
    fs::path part = root() / "dir" / dest_tree::partial_name("file.bin");
    EXPECT_TRUE(fs::is_regular_file(part));
    // Chunks land out of order.
    pwrite_all(fd, "world", 6);
    pwrite_all(fd, "hello ", 0);
    ASSERT_EQ(tree_.finalize("dir/file.bin", fd, 11, 0640, test_mtime_ns, true, false), std::error_code{});

    fs::path final_path = root() / "dir/file.bin";
    EXPECT_EQ(test::read_text_file(final_path), "hello world");
    struct stat st = lstat_of(final_path);
    EXPECT_TRUE(S_ISREG(st.st_mode));
    EXPECT_EQ(st.st_mode & 07777, 0640u);
    EXPECT_EQ(st.st_mtim.tv_sec, test_mtime_ns / 1'000'000'000);
    EXPECT_EQ(st.st_mtim.tv_nsec, test_mtime_ns % 1'000'000'000);
    EXPECT_FALSE(fs::exists(fs::symlink_status(part)));
    EXPECT_EQ(names_in(root() / "dir"), (std::vector<std::string>{"file.bin"}));
}

TEST_F(DestTree, FinalizeSetsSizeAndNegativeMtime) {
    // A stale partial file longer than the file is cut to size; a short one is extended.
    std::error_code ec;
    int fd = tree_.open_partial("long", ec);
    ASSERT_GE(fd, 0) << ec.message();
    pwrite_all(fd, "0123456789", 0);
    const std::int64_t before_epoch = -1'500'000'000;  // 1.5 s before the epoch
    ASSERT_EQ(tree_.finalize("long", fd, 4, 0600, before_epoch, false, false), std::error_code{});
    EXPECT_EQ(test::read_text_file(root() / "long"), "0123");
    struct stat st = lstat_of(root() / "long");
    EXPECT_EQ(st.st_mtim.tv_sec, -2);
    EXPECT_EQ(st.st_mtim.tv_nsec, 500'000'000);

    fd = tree_.open_partial("short", ec);
    ASSERT_GE(fd, 0) << ec.message();
    pwrite_all(fd, "ab", 0);
    ASSERT_EQ(tree_.finalize("short", fd, 5, 0755, test_mtime_ns, false, false), std::error_code{});
    EXPECT_EQ(test::read_text_file(root() / "short"), std::string("ab\0\0\0", 5));
    EXPECT_EQ(lstat_of(root() / "short").st_mode & 07777, 0755u);
}

TEST_F(DestTree, FinalizeWithoutOverwriteKeepsAFileThatAppeared) {
    ASSERT_EQ(check(tree_, "f", false), std::error_code{});
    std::error_code ec;
    int fd = tree_.open_partial("f", ec);
    ASSERT_GE(fd, 0) << ec.message();
    pwrite_all(fd, "new", 0);
    write_text(root() / "f", "existing");  // appeared after the check
    EXPECT_EQ(tree_.finalize("f", fd, 3, 0644, test_mtime_ns, false, false), dest_errc::exists);
    EXPECT_EQ(test::read_text_file(root() / "f"), "existing");
}

TEST_F(DestTree, FinalizeWithOverwriteReplaces) {
    write_text(root() / "f", "old contents");
    ASSERT_EQ(check(tree_, "f", true), std::error_code{});
    std::error_code ec;
    int fd = tree_.open_partial("f", ec);
    ASSERT_GE(fd, 0) << ec.message();
    pwrite_all(fd, "new", 0);
    ASSERT_EQ(tree_.finalize("f", fd, 3, 0644, test_mtime_ns, false, true), std::error_code{});
    EXPECT_EQ(test::read_text_file(root() / "f"), "new");
    EXPECT_EQ(names_in(root()), (std::vector<std::string>{"f"}));
}

// Why the tests of unnamed files skip where open_unnamed gives none (no error).
constexpr const char* no_unnamed_files_here = "no O_TMPFILE, or no linkat of an open file, here: partial files are used";

// A new file written whole has no name until link_final: nothing shows in its folder
// before (not even a partial name), and the name comes with the mode, mtime and bytes.
TEST_F(DestTree, AnUnnamedFileShowsOnlyOnceLinkedWithItsModeAndMtime) {
    std::error_code ec;
    unnamed_file file = tree_.open_unnamed("dir/new.txt", 0640, ec);
    ASSERT_FALSE(ec) << ec.message();
    if (file.get() < 0) {
        GTEST_SKIP() << no_unnamed_files_here;
    }
    EXPECT_EQ(unnamed_file::open_count(), 1);
    pwrite_all(file.get(), "hello", 0);
    dest_tree::stored_file stored;
    ASSERT_EQ(tree_.prepare_final(file.get(), 5, 0640, test_mtime_ns, false, &stored, true, true), std::error_code{});
    EXPECT_TRUE(is_empty_dir(root() / "dir"));
    ASSERT_EQ(tree_.link_final(file, "dir/new.txt", false), std::error_code{});
    file.reset();
    EXPECT_EQ(unnamed_file::open_count(), 0);
    EXPECT_EQ(names_in(root() / "dir"), (std::vector<std::string>{"new.txt"}));
    EXPECT_EQ(test::read_text_file(root() / "dir/new.txt"), "hello");
    struct stat st = lstat_of(root() / "dir/new.txt");
    EXPECT_EQ(st.st_mode & 07777, 0640u);
    EXPECT_EQ(st.st_mtim.tv_sec, test_mtime_ns / 1'000'000'000);
    EXPECT_EQ(st.st_mtim.tv_nsec, test_mtime_ns % 1'000'000'000);
    EXPECT_EQ(static_cast<std::uint64_t>(st.st_ino), stored.ino);  // what the unsynced journal records

    // One closed before its name is gone, and leaves nothing behind.
    unnamed_file dropped = tree_.open_unnamed("dir/never.txt", 0644, ec);
    ASSERT_GE(dropped.get(), 0) << ec.message();
    pwrite_all(dropped.get(), "lost", 0);
    dropped.reset();
    EXPECT_EQ(names_in(root() / "dir"), (std::vector<std::string>{"new.txt"}));
}

// A batch of new files written at once (io_uring where there is one): each is open, has
// its bytes, mode and mtime and no name, in folders made for it; one whose folder cannot
// be made has that error; a file shorter than its size reads as zeros to the end.
TEST_F(DestTree, NewFilesWrittenAtOnceAreUnnamedWithTheirBytesModeAndMtime) {
    std::error_code ec;
    if (tree_.open_unnamed("probe", 0644, ec).get() < 0) {
        GTEST_SKIP() << no_unnamed_files_here;
    }
    write_text(root() / "a-file", "in the way of a folder");
    const std::string one = "first", two(4000, 'x');
    std::vector<dest_tree::new_file> files(4);
    auto set = [](dest_tree::new_file& f, std::string_view path, const std::string& data, std::uint64_t size,
                  std::uint32_t mode) {
        f.wire_path = path;
        f.data = {reinterpret_cast<const std::uint8_t*>(data.data()), data.size()};
        f.size = size;
        f.mode = mode;
        f.mtime_ns = test_mtime_ns;
    };
    set(files[0], "one.txt", one, one.size(), 0600);
    set(files[1], "new/deeper/two.bin", two, two.size(), 0644);
    set(files[2], "a-file/three", one, one.size(), 0644);
    set(files[3], "new/padded", one, 100, 0640);
    tree_.write_new_files(files);
    EXPECT_EQ(names_in(root()), (std::vector<std::string>{"a-file", "new"}));  // no names yet
    EXPECT_TRUE(files[2].handled);
    EXPECT_EQ(files[2].ec, make_error_code(dest_errc::not_a_dir));
    for (std::size_t i : {0u, 1u, 3u}) {
        if (!files[i].handled) {
            GTEST_SKIP() << "no io_uring here: the caller's own way writes them";
        }
        ASSERT_FALSE(files[i].ec) << files[i].wire_path << ": " << files[i].ec.message();
        ASSERT_GE(files[i].file.get(), 0);
        ASSERT_EQ(tree_.link_final(files[i].file, files[i].wire_path, false), std::error_code{});
        files[i].file.reset();
        struct stat st = lstat_of(root() / std::string(files[i].wire_path));
        EXPECT_EQ(st.st_mode & 07777, files[i].mode);
        EXPECT_EQ(st.st_mtim.tv_sec, test_mtime_ns / 1'000'000'000);
        EXPECT_EQ(static_cast<std::uint64_t>(st.st_ino), files[i].stored.ino);
    }
    EXPECT_EQ(test::read_text_file(root() / "one.txt"), one);
    EXPECT_EQ(test::read_text_file(root() / "new/deeper/two.bin"), two);
    EXPECT_EQ(test::read_text_file(root() / "new/padded"), one + std::string(95, '\0'));
    EXPECT_EQ(unnamed_file::open_count(), 0);
}

// A folder the tree made is still one it made once the cache let it go and it is opened
// again: new files there are linked together, not one by one (each looked at for an
// earlier attempt's partial file first), as in a tree of a folder per file.
TEST_F(DestTree, NewFilesInFoldersItMadeAreLinkedTogetherAfterTheCacheLetThemGo) {
    std::error_code ec;
    auto unnamed_in = [&](const std::string& path) {
        unnamed_file f = tree_.open_unnamed(path, 0644, ec);  // makes its folder
        EXPECT_FALSE(ec) << path << ": " << ec.message();
        return f;
    };
    auto link_together = [&](std::vector<std::string> paths) {
        std::vector<unnamed_file> files;
        for (const std::string& p : paths) {
            files.push_back(unnamed_in(p));
        }
        std::vector<unnamed_file*> fp;
        std::vector<const std::string*> pp;
        for (std::size_t i = 0; i < files.size(); ++i) {
            fp.push_back(&files[i]);
            pp.push_back(&paths[i]);
        }
        return tree_.link_new(fp, pp);
    };
    if (tree_.open_unnamed("probe", 0644, ec).get() < 0) {
        GTEST_SKIP() << no_unnamed_files_here;
    }
    if (link_together({"fresh-a/f", "fresh-b/f"}) != std::vector<int>{0, 0}) {
        GTEST_SKIP() << "no io_uring, or no link by descriptor, here: every file goes through link_final";
    }
    unnamed_file early_a = unnamed_in("early-a/f");
    unnamed_file early_b = unnamed_in("early-b/f");
    for (std::size_t i = 0; i < dest_tree::max_open_folders() + 10; ++i) {
        unnamed_in("many/d" + std::to_string(i) + "/f").reset();  // folders enough to let the first ones go
    }
    std::string path_a = "early-a/f";
    std::string path_b = "early-b/f";
    std::vector<unnamed_file*> files{&early_a, &early_b};
    std::vector<const std::string*> paths{&path_a, &path_b};
    EXPECT_EQ(tree_.link_new(files, paths), (std::vector<int>{0, 0}));
    EXPECT_TRUE(fs::is_regular_file(root() / "early-a/f"));
    EXPECT_TRUE(fs::is_regular_file(root() / "early-b/f"));
}

TEST_F(DestTree, LinkingNewFilesTogetherLeavesANameThatAppearedToTheOneByOneLink) {
    std::error_code ec;
    unnamed_file a = tree_.open_unnamed("made/a", 0644, ec);  // makes the folder
    ASSERT_FALSE(ec) << ec.message();
    if (a.get() < 0) {
        GTEST_SKIP() << no_unnamed_files_here;
    }
    unnamed_file b = tree_.open_unnamed("made/b", 0644, ec);
    ASSERT_FALSE(ec) << ec.message();
    ASSERT_GE(b.get(), 0);
    pwrite_all(a.get(), "new a", 0);
    pwrite_all(b.get(), "new b", 0);
    write_text(root() / "made/b", "appeared");  // after the folder was made
    std::string path_a = "made/a";
    std::string path_b = "made/b";
    std::vector<unnamed_file*> files{&a, &b};
    std::vector<const std::string*> paths{&path_a, &path_b};
    std::vector<int> named = tree_.link_new(files, paths);
    if (named == std::vector<int>{1, 1}) {
        GTEST_SKIP() << "no io_uring, or no link by descriptor, here: every file goes through link_final";
    }
    EXPECT_EQ(named, (std::vector<int>{0, 1}));
    EXPECT_LT(a.get(), 0);  // closed by the submission
    ASSERT_GE(b.get(), 0);  // still open for the fallback
    EXPECT_EQ(test::read_text_file(root() / "made/a"), "new a");
    EXPECT_EQ(test::read_text_file(root() / "made/b"), "appeared");
    EXPECT_EQ(tree_.link_final(b, "made/b", false), dest_errc::exists);
    ASSERT_EQ(tree_.link_final(b, "made/b", true), std::error_code{});
    EXPECT_EQ(test::read_text_file(root() / "made/b"), "new b");
    EXPECT_EQ(names_in(root() / "made"), (std::vector<std::string>{"a", "b"}));
    b.reset();
    EXPECT_EQ(unnamed_file::open_count(), 0);
}

TEST_F(DestTree, LinkingAnUnnamedFileKeepsOrReplacesWhatAppearedAndTakesAStalePartialAway) {
    std::error_code ec;
    unnamed_file file = tree_.open_unnamed("f", 0644, ec);
    ASSERT_FALSE(ec) << ec.message();
    if (file.get() < 0) {
        GTEST_SKIP() << no_unnamed_files_here;
    }
    pwrite_all(file.get(), "new", 0);
    write_text(root() / "f", "existing");  // appeared after the check
    EXPECT_EQ(tree_.link_final(file, "f", false), dest_errc::exists);
    EXPECT_EQ(test::read_text_file(root() / "f"), "existing");
    ASSERT_EQ(tree_.link_final(file, "f", true), std::error_code{});
    EXPECT_EQ(test::read_text_file(root() / "f"), "new");
    EXPECT_EQ(names_in(root()), (std::vector<std::string>{"f"}));

    // A partial file an earlier attempt left for the name goes when the file is named.
    write_text(root() / dest_tree::partial_name("g"), "left by an earlier attempt");
    unnamed_file g = tree_.open_unnamed("g", 0644, ec);
    ASSERT_GE(g.get(), 0) << ec.message();
    ASSERT_EQ(tree_.link_final(g, "g", false), std::error_code{});
    EXPECT_EQ(names_in(root()), (std::vector<std::string>{"f", "g"}));

    // A symlink at the name is never followed: refused, or replaced as itself.
    fs::create_symlink(outside_.path() / "target", root() / "h");
    unnamed_file h = tree_.open_unnamed("h", 0644, ec);
    ASSERT_GE(h.get(), 0) << ec.message();
    EXPECT_EQ(tree_.link_final(h, "h", false), dest_errc::exists);
    ASSERT_EQ(tree_.link_final(h, "h", true), std::error_code{});
    EXPECT_TRUE(fs::is_regular_file(fs::symlink_status(root() / "h")));
    EXPECT_TRUE(is_empty_dir(outside_.path()));
}

// The process holds a bounded number of unnamed files; beyond it the caller is told to
// write a partial file instead (an empty result, no error), and a slot freed is reused.
TEST_F(DestTree, UnnamedFilesAreBoundedAndFallBackToPartialFilesBeyond) {
    std::error_code ec;
    if (tree_.open_unnamed("probe", 0644, ec).get() < 0) {
        GTEST_SKIP() << no_unnamed_files_here;
    }
    std::vector<unnamed_file> held;
    for (int i = 0; i < unnamed_file::max_open(); ++i) {
        held.push_back(tree_.open_unnamed("f" + std::to_string(i), 0644, ec));
        ASSERT_GE(held.back().get(), 0) << i << ": " << ec.message();
    }
    EXPECT_EQ(unnamed_file::open_count(), unnamed_file::max_open());
    unnamed_file over = tree_.open_unnamed("over", 0644, ec);
    EXPECT_LT(over.get(), 0);
    EXPECT_FALSE(ec);
    held.pop_back();
    over = tree_.open_unnamed("over", 0644, ec);
    EXPECT_GE(over.get(), 0) << ec.message();
    held.clear();
    over.reset();
    EXPECT_EQ(unnamed_file::open_count(), 0);
    EXPECT_TRUE(names_in(root()).empty());
}

TEST_F(DestTree, PartialNameOfLongNames) {
    EXPECT_EQ(dest_tree::partial_name("a.txt"), ".a.txt.ferry-part");
    std::string at_limit(243, 'n');  // decorated: exactly 255 bytes
    EXPECT_EQ(dest_tree::partial_name(at_limit), "." + at_limit + ".ferry-part");

    std::string long_a(250, 'a');
    std::string long_b(250, 'b');
    std::string pa = dest_tree::partial_name(long_a);
    std::string pb = dest_tree::partial_name(long_b);
    EXPECT_LE(pa.size(), 255u);
    EXPECT_LE(dest_tree::partial_name(std::string(255, 'z')).size(), 255u);
    EXPECT_NE(pa, pb);
    EXPECT_NE(pa, long_a);
    EXPECT_EQ(pa, dest_tree::partial_name(long_a));  // stable, so a resume finds it again

    // The whole cycle works with a name at the file system's limit.
    std::error_code ec;
    int fd = tree_.open_partial(long_a, ec);
    ASSERT_GE(fd, 0) << ec.message();
    pwrite_all(fd, "x", 0);
    ASSERT_EQ(tree_.finalize(long_a, fd, 1, 0644, test_mtime_ns, false, false), std::error_code{});
    EXPECT_EQ(test::read_text_file(root() / long_a), "x");
    EXPECT_EQ(names_in(root()), (std::vector<std::string>{long_a}));
}

TEST_F(DestTree, FinishDirSetsModeAndMtime) {
    ASSERT_EQ(tree_.make_dir("d/e"), std::error_code{});
    write_text(root() / "d/e/f", "content");  // contents are written before finish_dir
    ASSERT_EQ(tree_.finish_dir("d/e", 0750, test_mtime_ns), std::error_code{});
    ASSERT_EQ(tree_.finish_dir("d", 0705, test_mtime_ns + 1), std::error_code{});
    struct stat e = lstat_of(root() / "d/e");
    EXPECT_EQ(e.st_mode & 07777, 0750u);
    EXPECT_EQ(e.st_mtim.tv_sec, test_mtime_ns / 1'000'000'000);
    EXPECT_EQ(e.st_mtim.tv_nsec, test_mtime_ns % 1'000'000'000);
    struct stat d = lstat_of(root() / "d");
    EXPECT_EQ(d.st_mode & 07777, 0705u);
    EXPECT_EQ(d.st_mtim.tv_nsec, test_mtime_ns % 1'000'000'000 + 1);
}

TEST_F(DestTree, FinishDirOfMissingDirFails) {
    std::error_code ec = tree_.finish_dir("missing", 0755, test_mtime_ns);
    EXPECT_EQ(ec, std::errc::no_such_file_or_directory);
    EXPECT_FALSE(fs::exists(root() / "missing"));
}

TEST_F(DestTree, SyncAll) {
    ASSERT_EQ(check(tree_, "s/f", false), std::error_code{});
    std::error_code ec;
    int fd = tree_.open_partial("s/f", ec);
    ASSERT_GE(fd, 0) << ec.message();
    pwrite_all(fd, "durable", 0);
    ASSERT_EQ(tree_.finalize("s/f", fd, 7, 0644, test_mtime_ns, false, false), std::error_code{});
    EXPECT_EQ(tree_.sync_all(), std::error_code{});
    EXPECT_EQ(test::read_text_file(root() / "s/f"), "durable");
}

TEST(DestCategory, MessagesAndName) {
    std::error_code ec = dest_errc::symlink;
    EXPECT_STREQ(ec.category().name(), "ferry.dest");
    EXPECT_NE(ec.message().find("symlink"), std::string::npos);
    EXPECT_NE(make_error_code(dest_errc::exists).message().find("overwrite"), std::string::npos);
}

}  // namespace
}  // namespace ferry

namespace ferry {
namespace {

// prune() with a keep rule from a list of kept paths and of paths kept whole.
std::vector<dest_tree::removed_entry> prune(dest_tree& tree, const std::vector<std::string>& keep,
                                            const std::vector<std::string>& keep_whole, bool dry_run,
                                            std::error_code* ec_out = nullptr) {
    std::vector<dest_tree::removed_entry> removed;
    std::string where;
    std::error_code ec = tree.prune(
        [&](const std::string& path, bool) {
            if (std::find(keep_whole.begin(), keep_whole.end(), path) != keep_whole.end()) {
                return dest_tree::verdict::keep_whole;
            }
            return std::find(keep.begin(), keep.end(), path) != keep.end() ? dest_tree::verdict::keep
                                                                            : dest_tree::verdict::remove;
        },
        dry_run, removed, where);
    if (ec_out != nullptr) {
        *ec_out = ec;
    } else {
        EXPECT_EQ(ec, std::error_code{}) << where;
    }
    return removed;
}

TEST_F(DestTree, PruneRemovesWhatIsNotKeptContentsBeforeTheirFolder) {
    fs::create_directories(root() / "keep/old/deep");
    fs::create_directories(root() / "cache/x");
    write_text(root() / "keep/a.txt", "a");
    write_text(root() / "keep/gone.txt", "g");
    write_text(root() / "keep/old/deep/f", "f");
    write_text(root() / "cache/x/y", "y");
    write_text(root() / "top.txt", "t");
    // ferry's own files are never looked at
    write_text(root() / "keep/.b.txt.ferry-part", "partial");
    write_text(root() / "keep/.b.txt.ferry-resume", "record");

    // A dry run reports the same and removes nothing.
    auto dry = prune(tree_, {"keep", "keep/a.txt"}, {"cache"}, true);
    auto wet = prune(tree_, {"keep", "keep/a.txt"}, {"cache"}, false);
    std::vector<std::string> expected{"keep/gone.txt", "keep/old/deep/f", "keep/old/deep/", "keep/old/", "top.txt"};
    EXPECT_EQ(removed_paths(dry), expected);
    EXPECT_EQ(removed_paths(wet), expected);
    EXPECT_EQ(names_in(root()), (std::vector<std::string>{"cache", "keep"}));
    EXPECT_EQ(names_in(root() / "keep"), (std::vector<std::string>{".b.txt.ferry-part", ".b.txt.ferry-resume", "a.txt"}));
    EXPECT_EQ(test::read_text_file(root() / "cache/x/y"), "y");  // kept whole: not walked into
}

TEST_F(DestTree, PruneKeepsWhatIsKeptInsideAFolderItRemoves) {
    fs::create_directories(root() / "old/sub");
    write_text(root() / "old/a.txt", "a");
    write_text(root() / "old/important.keep", "k");  // excluded
    write_text(root() / "old/sub/.big.iso.ferry-part", "partial of another transfer");
    write_text(root() / "old/sub/b.txt", "b");
    std::vector<dest_tree::removed_entry> removed;
    std::string where;
    ASSERT_EQ(tree_.prune(
                  [](const std::string& path, bool) {
                      return path.ends_with(".keep") ? dest_tree::verdict::keep_whole : dest_tree::verdict::remove;
                  },
                  false, removed, where),
              std::error_code{});
    EXPECT_EQ(removed_paths(removed), (std::vector<std::string>{"old/a.txt", "old/sub/b.txt"}));
    EXPECT_EQ(names_in(root() / "old"), (std::vector<std::string>{"important.keep", "sub"}));
    EXPECT_EQ(names_in(root() / "old/sub"), (std::vector<std::string>{".big.iso.ferry-part"}));
}

TEST_F(DestTree, PruneLeavesAFolderThatIsTakenWhileItIsEmptied) {
    // Another transfer into DST marks a folder (it offers it) after this prune judged the
    // folder but before it removes it: asked once more before its rmdir, it stays.
    fs::create_directories(root() / "old/sub");
    write_text(root() / "old/a.txt", "a");
    write_text(root() / "old/sub/b.txt", "b");
    std::map<std::string, int> asked;
    std::vector<dest_tree::removed_entry> removed;
    std::string where;
    ASSERT_EQ(tree_.prune(
                  [&](const std::string& path, bool) {
                      bool taken = path == "old/sub" && ++asked[path] > 1;
                      return taken ? dest_tree::verdict::keep : dest_tree::verdict::remove;
                  },
                  false, removed, where),
              std::error_code{})
        << where;
    EXPECT_EQ(removed_paths(removed), (std::vector<std::string>{"old/a.txt", "old/sub/b.txt"}));
    EXPECT_EQ(names_in(root() / "old"), (std::vector<std::string>{"sub"}));
    EXPECT_TRUE(names_in(root() / "old/sub").empty());
}

// `levels` nested folders named "d" in `dir_fd`, made (and removed) folder by folder: a
// chain deeper than a path can name whole.
void make_chain(int dir_fd, int levels) {
    int fd = ::dup(dir_fd);
    for (int i = 0; i < levels && fd >= 0; ++i) {
        ASSERT_EQ(::mkdirat(fd, "d", 0755), 0) << i;
        int next = ::openat(fd, "d", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        ::close(fd);
        fd = next;
    }
    ::close(fd);
}
void remove_chain(int dir_fd) {
    int fd = ::openat(dir_fd, "d", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0) {
        return;
    }
    remove_chain(fd);
    ::close(fd);
    ::unlinkat(dir_fd, "d", AT_REMOVEDIR);
}

TEST_F(DestTree, PruneWalksTreesAsDeepAsAWirePathGoesAndRefusesDeeperOnes) {
    // 300 nested folders (deeper than the walks keep a descriptor per level), the deepest
    // holding a file to remove and one to keep: walked whole. A file list and a removal of
    // the whole chain go as deep.
    constexpr int levels = 300;
    static_assert(levels > dest_tree::walk_open_depth);
    fs::path deep = root();
    for (int i = 0; i < levels; ++i) {
        deep /= "d";
    }
    fs::create_directories(deep);
    write_text(deep / "old", "o");
    write_text(deep / "new", "n");
    std::vector<dest_tree::removed_entry> removed;
    std::string where;
    EXPECT_EQ(tree_.prune([](const std::string& path, bool) {
        return path.ends_with("/old") ? dest_tree::verdict::remove : dest_tree::verdict::keep;
    }, false, removed, where), std::error_code{}) << where;
    ASSERT_EQ(removed.size(), 1u);
    EXPECT_FALSE(fs::exists(deep / "old"));
    EXPECT_TRUE(fs::exists(deep / "new"));
    std::vector<dest_tree::file_stamp> files;
    EXPECT_EQ(tree_.list_files(10, files, where), std::error_code{}) << where;
    ASSERT_EQ(files.size(), 1u);
    EXPECT_TRUE(files[0].path.ends_with("/d/new")) << files[0].path;
    removed.clear();
    EXPECT_EQ(tree_.prune([](const std::string&, bool) { return dest_tree::verdict::remove; }, false, removed, where),
              std::error_code{})
        << where;
    EXPECT_EQ(removed.size(), static_cast<std::size_t>(levels) + 1);  // the folders and the file
    EXPECT_FALSE(fs::exists(root() / "d"));

    // A folder in the way of a file takes as many levels below it too, with a file at the end.
    deep = root() / "way";
    for (int i = 0; i < levels; ++i) {
        deep /= "d";
    }
    fs::create_directories(deep);
    write_text(deep / "f", "f");
    removed.clear();
    EXPECT_EQ(tree_.clear_folder("way", [](const std::string&, bool) { return dest_tree::verdict::remove; }, false,
                                 removed, where),
              std::error_code{})
        << where;
    EXPECT_FALSE(fs::exists(root() / "way"));

    // The deepest a wire path reaches (2048 one-byte names) is walked and removed; one more
    // level is an error naming the folder, and nothing is removed.
    int root_fd = ::open(root().c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    ASSERT_GE(root_fd, 0);
    make_chain(root_fd, dest_tree::max_walk_depth);
    removed.clear();
    EXPECT_EQ(tree_.prune([](const std::string&, bool) { return dest_tree::verdict::remove; }, false, removed, where),
              std::error_code{})
        << where;
    EXPECT_EQ(removed.size(), static_cast<std::size_t>(dest_tree::max_walk_depth));
    EXPECT_FALSE(fs::exists(root() / "d"));
    make_chain(root_fd, dest_tree::max_walk_depth + 1);
    removed.clear();
    std::error_code ec = tree_.prune([](const std::string&, bool) { return dest_tree::verdict::keep; }, false, removed,
                                     where);
    EXPECT_EQ(ec, dest_errc::too_deep);
    EXPECT_TRUE(removed.empty());
    EXPECT_EQ(std::ranges::count(where, '/'), dest_tree::max_walk_depth) << where.size();
    remove_chain(root_fd);
    EXPECT_FALSE(fs::exists(root() / "d"));
    ::close(root_fd);
}

TEST_F(DestTree, PruneNeverFollowsASymlink) {
    write_text(outside_ / "precious", "p");
    fs::create_directories(outside_ / "dir");
    write_text(outside_ / "dir/inner", "i");
    fs::create_symlink(outside_ / "precious", root() / "link-to-file");
    fs::create_symlink(outside_ / "dir", root() / "link-to-dir");
    fs::create_directories(root() / "kept");
    fs::create_symlink(outside_ / "dir", root() / "kept/inner-link");
    auto removed = prune(tree_, {"kept"}, {}, false);
    EXPECT_EQ(removed_paths(removed), (std::vector<std::string>{"kept/inner-link", "link-to-dir", "link-to-file"}));
    EXPECT_EQ(names_in(root()), (std::vector<std::string>{"kept"}));
    EXPECT_TRUE(is_empty_dir(root() / "kept"));
    EXPECT_EQ(test::read_text_file(outside_ / "precious"), "p");
    EXPECT_EQ(test::read_text_file(outside_ / "dir/inner"), "i");
}

TEST_F(DestTree, PruneStopsAtTheFirstErrorAndNamesThePath) {
    if (::geteuid() == 0) {
        GTEST_SKIP() << "root removes files from a read-only folder";
    }
    fs::create_directories(root() / "locked");
    write_text(root() / "locked/f", "f");
    ASSERT_EQ(::chmod((root() / "locked").c_str(), 0555), 0);
    std::vector<dest_tree::removed_entry> removed;
    std::string where;
    std::error_code ec = tree_.prune([](const std::string&, bool) { return dest_tree::verdict::remove; }, false,
                                     removed, where);
    ::chmod((root() / "locked").c_str(), 0755);
    EXPECT_EQ(ec, std::errc::permission_denied);
    EXPECT_EQ(where, "locked/f");
    EXPECT_TRUE(fs::exists(root() / "locked/f"));
}

TEST_F(DestTree, ListFilesGivesRegularFilesWithSizeAndMtimeButNothingBehindASymlink) {
    write_text(root() / "a", "12345");
    fs::create_directories(root() / "d/e");
    write_text(root() / "d/e/b", "xy");
    write_text(root() / ("d/" + dest_tree::partial_name("c")), "partial");
    write_text(outside_ / "secret", "s");
    fs::create_symlink(outside_.path(), root() / "d/link-to-dir");
    fs::create_symlink(outside_ / "secret", root() / "link-to-file");
    struct timespec t[2] = {{0, UTIME_OMIT}, {1'500'000'000, 42}};
    ASSERT_EQ(::utimensat(AT_FDCWD, (root() / "a").c_str(), t, 0), 0);

    std::vector<dest_tree::file_stamp> files;
    std::string where;
    ASSERT_EQ(tree_.list_files(100, files, where), std::error_code{});
    ASSERT_EQ(files.size(), 2u);
    EXPECT_EQ(files[0].path, "a");
    EXPECT_EQ(files[0].size, 5u);
    EXPECT_EQ(files[0].mtime_ns, 1'500'000'000'000'000'042);
    EXPECT_EQ(files[1].path, "d/e/b");
    EXPECT_EQ(files[1].size, 2u);

    files.clear();
    ASSERT_EQ(tree_.list_files(1, files, where), std::error_code{});
    EXPECT_EQ(files.size(), 1u);  // the bound
}

TEST_F(DestTree, SeedPartialFromAnotherFileCopiesItsBytes) {
    write_text(root() / "old", "the old name's bytes");
    std::optional<partial_seed> seed = tree_.start_seed("sub/new", 20, "old");
    ASSERT_TRUE(seed);
    EXPECT_EQ(seed->bytes, 20u);
    worker_pool pool(2);
    resume_found claims;
    int basis_fd = -1;
    entry_info e{.path = "sub/new", .size = 20};
    std::optional<basis_sums> sums = seeded_sums(e, std::move(*seed), pool, UINT64_MAX, claims, basis_fd);
    ASSERT_TRUE(sums);
    EXPECT_GE(basis_fd, 0);
    ::close(basis_fd);
    EXPECT_EQ(test::read_text_file(root() / ("sub/" + dest_tree::partial_name("new"))), "the old name's bytes");
    EXPECT_EQ(test::read_text_file(root() / "old"), "the old name's bytes");
    EXPECT_TRUE(sums->weak.empty());  // no full block; the short one is the file
    EXPECT_EQ(sums->tail, hash_chunk(std::span(reinterpret_cast<const std::uint8_t*>("the old name's bytes"), 20)));
    ASSERT_TRUE(claims.have);
    EXPECT_TRUE(claims.have->test(0));
    EXPECT_EQ(claims.digests[0], sums->tail);
    EXPECT_EQ(claims.kept_bytes, 20u);

    EXPECT_FALSE(tree_.start_seed("other", 5, "missing"));
    EXPECT_FALSE(fs::exists(root() / dest_tree::partial_name("other")));
}

// A changed file seeded from its older version, longer than the new one and of many
// blocks (summed in parts on both workers): the partial file holds the older version's
// first bytes up to the new size, every block's sums are those of its bytes, and only
// the chunks of the new size that are whole blocks inside the partial file are claimed.
TEST_F(DestTree, SeedFromALongerOlderVersionSumsEveryBlockAndClaimsWholeChunks) {
    const std::uint64_t old_size = 21 * chunk_size + 1000;
    const std::uint64_t new_size = 10 * chunk_size + 77;
    std::string bytes(old_size, '\0');
    for (std::size_t i = 0; i < bytes.size(); ++i) {
        bytes[i] = static_cast<char>((i * 2654435761u) >> 13);
    }
    write_text(root() / "f", bytes);
    std::optional<partial_seed> seed = tree_.start_seed("f", new_size);
    ASSERT_TRUE(seed);
    worker_pool pool(2);
    resume_found claims;
    int basis_fd = -1;
    entry_info e{.path = "f", .size = new_size};
    std::optional<basis_sums> sums = seeded_sums(e, std::move(*seed), pool, UINT64_MAX, claims, basis_fd);
    ASSERT_TRUE(sums);
    ::close(basis_fd);
    EXPECT_EQ(test::read_text_file(root() / dest_tree::partial_name("f")), bytes.substr(0, new_size));
    auto span_of = [&](std::uint64_t at, std::uint64_t len) {
        return std::span(reinterpret_cast<const std::uint8_t*>(bytes.data()) + at, len);
    };
    ASSERT_EQ(sums->weak.size(), 21u);
    for (std::uint64_t b = 0; b < 21; ++b) {
        EXPECT_EQ(sums->weak[b], weak_sum(span_of(b * chunk_size, chunk_size))) << b;
        EXPECT_EQ(sums->strong[b], hash_chunk(span_of(b * chunk_size, chunk_size))) << b;
    }
    EXPECT_EQ(sums->size, old_size);
    EXPECT_EQ(sums->tail, hash_chunk(span_of(21 * chunk_size, 1000)));
    ASSERT_TRUE(claims.have);
    EXPECT_EQ(claims.have->count(), 10u);
    EXPECT_FALSE(claims.have->test(10));  // 77 bytes: not a block of the older version
    EXPECT_EQ(claims.digests[3], sums->strong[3]);
    EXPECT_EQ(claims.kept_bytes, 10 * chunk_size);
}

// More folders than the tree keeps open: each is still found (the least recently used
// are closed to make room), and the open descriptors stay bounded.
TEST_F(DestTree, ManyMoreFoldersThanItKeepsOpenAreStillCheckedRight) {
    const int folders = static_cast<int>(dest_tree::max_open_folders()) / 2 + 200;
    for (int i = 0; i < folders; ++i) {
        fs::create_directories(root() / ("d" + std::to_string(i)) / "s");
        write_text(root() / ("d" + std::to_string(i)) / "s" / "f", std::string(static_cast<std::size_t>(i), 'x'));
    }
    auto open_fds = [] {
        return std::distance(fs::directory_iterator("/proc/self/fd"), fs::directory_iterator());
    };
    const auto before = open_fds();
    for (int round = 0; round < 2; ++round) {
        for (int i = 0; i < folders; ++i) {
            std::string path = "d" + std::to_string(i) + "/s/f";
            struct stat st = lstat_of(root() / path);
            bool identical = false;
            bool exists = false;
            ASSERT_EQ(tree_.check_file(path, false, static_cast<std::uint64_t>(i), timespec_ns(st.st_mtim), identical,
                                       false, &exists),
                      std::error_code{})
                << path;
            EXPECT_TRUE(identical) << path;
            EXPECT_TRUE(exists) << path;
            // A size that differs is not identical: the lookup is of this folder's file.
            ASSERT_EQ(tree_.check_file(path, true, static_cast<std::uint64_t>(i) + 1, timespec_ns(st.st_mtim),
                                       identical, false),
                      std::error_code{});
            EXPECT_FALSE(identical) << path;
        }
    }
    // Two folders per path (d<i> and d<i>/s), 400 more than the cache holds.
    EXPECT_LE(open_fds() - before, static_cast<std::ptrdiff_t>(dest_tree::max_open_folders()));
    EXPECT_GT(open_fds() - before, 0);
}

TEST_F(DestTree, CheckFileTellsWhetherAFileIsThere) {
    write_text(root() / "here", "x");
    bool identical = true;
    bool exists = false;
    EXPECT_EQ(tree_.check_file("here", true, 99, 0, identical, false, &exists), std::error_code{});
    EXPECT_FALSE(identical);
    EXPECT_TRUE(exists);
    EXPECT_EQ(tree_.check_file("absent", true, 99, 0, identical, false, &exists), std::error_code{});
    EXPECT_FALSE(exists);
}

}  // namespace
}  // namespace ferry

namespace ferry {
namespace {

TEST_F(DestTree, ATreeOpenedThroughAnotherFollowsNoSymlinkToItsRoot) {
    fs::create_directories(root() / "share/site");
    fs::create_symlink(outside_.path(), root() / "share/elsewhere");
    std::error_code ec;
    int fd = tree_.open_dir("share/site", ec);
    ASSERT_GE(fd, 0) << ec.message();
    dest_tree sub(root() / "share/site", fd);
    EXPECT_EQ(sub.make_dir("x/y"), std::error_code{});
    EXPECT_TRUE(fs::is_directory(root() / "share/site/x/y"));
    EXPECT_EQ(tree_.open_dir("share/elsewhere", ec), -1);
    EXPECT_TRUE(is_symlink_refusal(ec)) << ec.message();
    EXPECT_TRUE(fs::is_empty(outside_.path()));
}

}  // namespace
}  // namespace ferry
