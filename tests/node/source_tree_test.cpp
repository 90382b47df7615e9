// scan_sources: what `ferry send` makes of its arguments: folders walked in bytewise name
// order with the folder's own name first, files by base name, symlinks, special files and
// ferry partial files skipped with a note, clashing source names and missing paths refused.
#include "node/source_tree.hpp"

#include <gtest/gtest.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <fstream>
#include <future>

#include "node/dest_tree.hpp"
#include "node/worker_pool.hpp"
#include "protocol/path.hpp"
#include "tests/support/temp_dir.hpp"

namespace ferry {
namespace {

namespace fs = std::filesystem;

void write(const fs::path& p, const std::string& bytes) {
    fs::create_directories(p.parent_path());
    std::ofstream(p, std::ios::binary) << bytes;
}

std::vector<std::string> wire_paths(const source_tree& t) {
    std::vector<std::string> out;
    for (const auto& e : t.entries) {
        out.push_back(e.path);
    }
    return out;
}

TEST(source_tree_test, folders_are_walked_in_name_order_and_odd_entries_are_skipped) {
    test::temp_dir tmp{"ferry-scan"};
    fs::path root = tmp.path() / "photos";
    write(root / "b.txt", "bb");
    write(root / "a" / "z.bin", "zzz");
    write(root / "a" / "B.bin", "");
    fs::create_directories(root / "empty");
    write(root / "C", "c");
    write(root / dest_tree::partial_name("half.bin"), "partial");
    fs::create_symlink("b.txt", root / "link");
    ASSERT_EQ(::mkfifo((root / "fifo").c_str(), 0600), 0);
    ::chmod((root / "b.txt").c_str(), 0640);

    source_tree t;
    std::string error;
    ASSERT_EQ(scan_sources({root}, t, error), std::error_code{}) << error;
    EXPECT_EQ(wire_paths(t), (std::vector<std::string>{"photos", "photos/C", "photos/a", "photos/a/B.bin",
                                                       "photos/a/z.bin", "photos/b.txt", "photos/empty"}));
    EXPECT_EQ(t.total_bytes, 1u + 3u + 2u);
    ASSERT_EQ(t.locals.size(), t.entries.size());
    EXPECT_EQ(t.locals[4], root / "a" / "z.bin");
    EXPECT_TRUE(t.entries[0].is_dir);
    EXPECT_EQ(t.entries[5].mode, 0640u);
    EXPECT_EQ(t.entries[5].size, 2u);
    EXPECT_EQ(t.skipped.size(), 3u);  // symlink, fifo, partial file
    std::string notes;
    for (const auto& s : t.skipped) {
        notes += s + "\n";
    }
    EXPECT_NE(notes.find("link (symlink)"), std::string::npos) << notes;
    EXPECT_NE(notes.find("fifo (not a regular file)"), std::string::npos) << notes;
    EXPECT_NE(notes.find("(a ferry partial file)"), std::string::npos) << notes;
}

// `ferry sync`'s scan keeps a symlink as an entry of its own (its target read, never
// followed, even to a folder), and still skips special files.
TEST(source_tree_test, a_syncs_scan_keeps_symlinks_as_links_and_skips_special_files) {
    test::temp_dir tmp{"ferry-scan"};
    fs::path root = tmp.path() / "src";
    write(root / "sub/f.txt", "ff");
    fs::create_directory_symlink("sub", root / "dir-link");
    fs::create_symlink("/nowhere/at all", root / "dangling");
    ASSERT_EQ(::mkfifo((root / "fifo").c_str(), 0600), 0);

    source_tree t;
    std::string error;
    ASSERT_EQ(scan_contents(root, exclude_set{}, t, error), std::error_code{}) << error;
    EXPECT_EQ(wire_paths(t), (std::vector<std::string>{"dangling", "dir-link", "sub", "sub/f.txt"}));
    EXPECT_TRUE(t.entries[0].is_link);
    EXPECT_EQ(t.entries[0].link_target, "/nowhere/at all");
    EXPECT_TRUE(t.entries[1].is_link);
    EXPECT_FALSE(t.entries[1].is_dir);  // not walked into
    EXPECT_EQ(t.entries[1].link_target, "sub");
    EXPECT_EQ(t.entries[1].size, 0u);
    EXPECT_FALSE(t.entries[1].is_file());
    EXPECT_EQ(t.total_bytes, 2u);
    EXPECT_EQ(t.skipped_paths, std::vector<std::string>{"fifo"});
}

// A sync's scan walks the folder's entries in runs on several threads (more entries than
// runs here, so runs hold several names): joined, they are one walk's entries, each
// folder before what it holds, with the skipped and excluded ones counted once.
TEST(source_tree_test, a_syncs_scan_over_several_threads_gives_one_walks_entries) {
    test::temp_dir tmp{"ferry-scan"};
    fs::path root = tmp.path() / "src";
    std::vector<std::string> expected;
    for (int i = 0; i < 300; ++i) {
        char name[16];
        std::snprintf(name, sizeof name, "d%03d", i);
        write(root / name / "a.txt", "aa");
        write(root / name / "b.log", "b");
        expected.push_back(name);
        expected.push_back(std::string(name) + "/a.txt");
    }
    ASSERT_EQ(::mkfifo((root / "d299/fifo").c_str(), 0600), 0);
    write(root / "top.txt", "top");
    expected.push_back("top.txt");

    exclude_set excludes;
    ASSERT_TRUE(excludes.add("*.log"));
    source_tree t;
    std::string error;
    ASSERT_EQ(scan_contents(root, excludes, t, error), std::error_code{}) << error;
    EXPECT_EQ(wire_paths(t), expected);
    // Read through the folder kept open, by wire path; no local path held per entry.
    EXPECT_TRUE(t.locals.empty());
    ASSERT_TRUE(t.root_fd);
    EXPECT_EQ(t.local(1, t.entries[1].path), "d000/a.txt");
    EXPECT_EQ(t.local_prefix + t.entries[1].path, (root / "d000/a.txt").string());
    struct stat by_fd {};
    struct stat by_path {};
    ASSERT_EQ(::fstatat(*t.root_fd, "d000/a.txt", &by_fd, 0), 0);
    ASSERT_EQ(::stat((root / "d000/a.txt").c_str(), &by_path), 0);
    EXPECT_EQ(by_fd.st_ino, by_path.st_ino);
    EXPECT_EQ(t.total_bytes, 300u * 2 + 3);
    EXPECT_EQ(t.excluded, 300u);
    EXPECT_EQ(t.skipped_paths, std::vector<std::string>{"d299/fifo"});
}

TEST(source_tree_test, files_go_by_base_name_and_trailing_slashes_do_not_matter) {
    test::temp_dir tmp{"ferry-scan"};
    write(tmp.path() / "x" / "notes.txt", "n");
    write(tmp.path() / "dir" / "f", "f");
    source_tree t;
    std::string error;
    ASSERT_EQ(scan_sources({tmp.path() / "x" / "notes.txt", tmp.path().string() + "/dir/"}, t, error),
              std::error_code{})
        << error;
    // By name, whatever the order given (the offer order, wire_path_less).
    EXPECT_EQ(wire_paths(t), (std::vector<std::string>{"dir", "dir/f", "notes.txt"}));
    EXPECT_EQ(t.locals[1], fs::path(tmp.path().string() + "/dir/f"));
}

TEST(source_tree_test, clashing_names_missing_paths_and_nothing_to_send_are_refused) {
    test::temp_dir tmp{"ferry-scan"};
    write(tmp.path() / "one" / "same.txt", "1");
    write(tmp.path() / "two" / "same.txt", "2");
    std::string error;
    source_tree t1;
    EXPECT_NE(scan_sources({tmp.path() / "one" / "same.txt", tmp.path() / "two" / "same.txt"}, t1, error),
              std::error_code{});
    EXPECT_NE(error.find("two sources map to the same name"), std::string::npos) << error;

    source_tree t2;
    error.clear();
    EXPECT_NE(scan_sources({tmp.path() / "missing"}, t2, error), std::error_code{});
    EXPECT_NE(error.find("missing"), std::string::npos) << error;

    source_tree t3;
    error.clear();
    fs::create_symlink("no-such-target", tmp.path() / "only-a-link");  // (one that points somewhere is followed)
    EXPECT_NE(scan_sources({tmp.path() / "only-a-link"}, t3, error), std::error_code{});
    EXPECT_NE(error.find("only-a-link: a symlink that leads nowhere here"), std::string::npos) << error;  // as cp -H

    source_tree t4;
    error.clear();
    ASSERT_EQ(::mkfifo((tmp.path() / "only-a-fifo").c_str(), 0600), 0);
    EXPECT_NE(scan_sources({tmp.path() / "only-a-fifo"}, t4, error), std::error_code{});
    EXPECT_EQ(error, "nothing to send");
}

// `ferry send` starts before its scan ends: the parts a feed gets, joined, are what one
// scan gives; the first comes before the last run of the walk, and a stopped feed stops it.
TEST(source_tree_test, a_scan_fed_in_parts_gives_one_walks_entries_in_order) {
    test::temp_dir tmp{"ferry-scan"};
    fs::path root = tmp.path() / "src";
    for (int i = 0; i < 300; ++i) {
        char name[16];
        std::snprintf(name, sizeof name, "d%03d", i);
        write(root / name / "a.txt", "aa");
        write(root / name / "b" / "c.txt", "c");
    }
    fs::create_symlink("d000", root / "link");
    write(tmp.path() / "single.txt", "1");
    fs::create_directories(tmp.path() / "empty");
    std::vector<fs::path> sources{tmp.path() / "single.txt", root, tmp.path() / "empty"};  // walked by name

    source_tree whole;
    std::string error;
    ASSERT_EQ(scan_sources(sources, whole, error), std::error_code{}) << error;

    scan_feed feed;
    std::atomic<int> wakes{0};
    feed.on_change([&] { ++wakes; });
    source_tree unused;
    ASSERT_EQ(scan_sources(sources, unused, error, &feed), std::error_code{}) << error;
    EXPECT_TRUE(unused.entries.empty());
    EXPECT_EQ(feed.entries_put(), whole.entries.size());
    scan_feed::taken got = feed.take();
    EXPECT_FALSE(got.finished) << "the caller finishes the feed";
    ASSERT_GT(got.parts.size(), 2u);
    EXPECT_EQ(wakes.load(), static_cast<int>(got.parts.size()));
    EXPECT_EQ(got.parts.front().entries.front().path, "empty") << "the first by name comes with the first part";
    source_tree joined;
    for (source_tree& part : got.parts) {
        ASSERT_EQ(part.locals.size(), part.entries.size());
        append_part(joined, std::move(part));
    }
    EXPECT_EQ(wire_paths(joined), wire_paths(whole));
    EXPECT_EQ(joined.locals, whole.locals);
    EXPECT_EQ(joined.skipped, whole.skipped);
    EXPECT_EQ(joined.total_bytes, whole.total_bytes);
    std::vector<std::string> paths = wire_paths(joined);
    EXPECT_EQ(paths[1], "single.txt");
    EXPECT_EQ(paths[2], "src");
    EXPECT_EQ(paths.back(), "src/d299/b/c.txt");
    EXPECT_TRUE(std::is_sorted(paths.begin(), paths.end(), wire_path_less));

    // What fails the sources as a whole fails before the first entry is handed out.
    for (const std::vector<fs::path>& bad :
         {std::vector<fs::path>{root, tmp.path() / "missing"}, std::vector<fs::path>{root, tmp.path() / "x" / "src"}}) {
        write(tmp.path() / "x" / "src" / "f", "f");
        scan_feed early;
        source_tree t;
        error.clear();
        EXPECT_NE(scan_sources(bad, t, error, &early), std::error_code{});
        EXPECT_EQ(early.entries_put(), 0u) << error;
        EXPECT_FALSE(early.has_news()) << error;
    }
    EXPECT_NE(error.find("two sources map to the same name"), std::string::npos) << error;

    scan_feed stopped;
    stopped.cancel();
    source_tree none;
    error.clear();
    EXPECT_NE(scan_sources(sources, none, error, &stopped), std::error_code{});
    EXPECT_EQ(error, "scan stopped");
}

// A tree whose top holds one folder (DIR/ holding project/ and all the rest) is split below
// it: walked by several threads and fed in many parts as they end, not as one part once
// the whole tree is walked, with the same entries in the same order as one walk gives.
TEST(source_tree_test, a_tree_held_in_one_folder_is_scanned_and_fed_in_parts_in_walk_order) {
    test::temp_dir tmp{"ferry-scan"};
    fs::path root = tmp.path() / "src";
    std::vector<std::string> expected{"top"};
    for (int i = 0; i < 150; ++i) {
        char name[16];
        std::snprintf(name, sizeof name, "d%03d", i);
        const std::string d = std::string("top/") + name;
        write(root / d / "a.txt", "aa");
        write(root / d / "sub" / "c.txt", "c");
        write(root / d / "x.log", "x");
        for (const char* p : {"", "/a.txt", "/sub", "/sub/c.txt"}) {
            expected.push_back(d + p);
        }
    }
    ASSERT_EQ(::mkfifo((root / "top/d149/fifo").c_str(), 0600), 0);
    fs::create_symlink("d000", root / "top" / "link");
    write(root / "top" / "skip" / "f.txt", "left out with its folder");
    write(root / "top" / "zz.txt", "zz");
    expected.push_back("top/link");
    expected.push_back("top/zz.txt");

    exclude_set excludes;
    ASSERT_TRUE(excludes.add("*.log"));
    ASSERT_TRUE(excludes.add("skip/"));
    source_tree whole;
    std::string error;
    ASSERT_EQ(scan_contents(root, excludes, whole, error), std::error_code{}) << error;
    EXPECT_EQ(wire_paths(whole), expected);
    EXPECT_EQ(whole.excluded, 151u);
    EXPECT_EQ(whole.skipped_paths, std::vector<std::string>{"top/d149/fifo"});
    EXPECT_EQ(whole.total_bytes, 150u * 3 + 2);

    // (On one worker the runs end in order, each fed as it ends: on more, how many parts
    // the feed gets depends on which thread ends first.)
    worker_pool one{1};
    scan_feed feed;
    source_tree unused;
    ASSERT_EQ(scan_contents(root, excludes, unused, error, &one, true, &feed), std::error_code{}) << error;
    scan_feed::taken got = feed.take();
    ASSERT_GT(got.parts.size(), 10u) << "fed as the parts below top/ end";
    EXPECT_EQ(got.parts.front().entries.front().path, "top");
    EXPECT_LT(got.parts.front().entries.size(), expected.size() / 4);
    source_tree joined;
    for (source_tree& part : got.parts) {
        append_part(joined, std::move(part));
    }
    EXPECT_EQ(wire_paths(joined), expected);
    EXPECT_EQ(joined.excluded, whole.excluded);
    EXPECT_EQ(joined.skipped_paths, whole.skipped_paths);

    // `ferry send DIR`: the same below a source.
    source_tree sent;
    ASSERT_EQ(scan_sources({root}, sent, error, &feed), std::error_code{}) << error;
    got = feed.take();
    joined = {};
    for (source_tree& part : got.parts) {
        ASSERT_EQ(part.locals.size(), part.entries.size());
        append_part(joined, std::move(part));
    }
    ASSERT_EQ(joined.entries.size(), joined.locals.size());
    EXPECT_EQ(joined.entries.front().path, "src");
    EXPECT_EQ(joined.entries[1].path, "src/top");
    EXPECT_EQ(joined.locals[1], (root / "top").string());
    EXPECT_EQ(joined.entries.back().path, "src/top/zz.txt");
    EXPECT_EQ(joined.locals.back(), (root / "top/zz.txt").string());
}

// A feed with a window: a put that leaves `max_held` entries or more held returns once the
// taker lets enough go (or the send is cancelled), well before its guard's time is up.
TEST(source_tree_test, a_put_over_the_feeds_window_waits_for_the_taker_to_let_go) {
    auto part_of = [](int n) {
        source_tree t;
        for (int i = 0; i < n; ++i) {
            t.entries.push_back(entry_info{.path = "f" + std::to_string(i)});
        }
        return t;
    };
    scan_feed feed(4);
    feed.put(part_of(3));  // under the window: at once
    EXPECT_EQ(feed.take().parts.size(), 1u);
    auto second = std::async(std::launch::async, [&] { feed.put(part_of(2)); });
    feed.wait_news();
    EXPECT_EQ(feed.take().parts.size(), 1u);  // the part is the taker's while its put waits
    feed.let_go(1);  // 4 held: still at the window
    EXPECT_NE(second.wait_for(std::chrono::seconds(0)), std::future_status::ready);
    feed.let_go(2);  // 3 held
    ASSERT_EQ(second.wait_for(scan_feed::max_hold_wait / 2), std::future_status::ready);

    auto third = std::async(std::launch::async, [&] { feed.put(part_of(5)); });
    feed.wait_news();
    feed.cancel();
    EXPECT_EQ(third.wait_for(scan_feed::max_hold_wait / 2), std::future_status::ready);

    scan_feed unbounded;  // a pull's: never waits
    unbounded.put(part_of(100000));
    EXPECT_EQ(unbounded.entries_put(), 100000u);
}

TEST(source_tree_test, a_tree_deeper_than_the_open_folder_limit_is_walked_whole) {
    test::temp_dir tmp{"ferry-scan"};
    fs::path dir = tmp.path() / "deep";
    std::string wire = "deep";
    for (int i = 0; i < 150; ++i) {
        dir /= "d";
        wire += "/d";
    }
    write(dir / "leaf.txt", "leaf");
    source_tree t;
    std::string error;
    ASSERT_EQ(scan_sources({tmp.path() / "deep"}, t, error), std::error_code{}) << error;
    ASSERT_EQ(t.entries.size(), 152u);  // deep, 150 folders, the file
    EXPECT_EQ(t.entries.back().path, wire + "/leaf.txt");
    EXPECT_EQ(t.locals.back(), dir / "leaf.txt");
    EXPECT_EQ(t.total_bytes, 4u);
}

TEST(source_tree_test, a_source_given_as_a_symlink_is_what_it_points_to_under_its_own_name) {
    test::temp_dir tmp{"ferry-scan"};
    write(tmp.path() / "real" / "x", "x");
    write(tmp.path() / "real" / "sub" / "y", "yy");
    fs::create_symlink("x", tmp.path() / "real" / "inner");
    fs::create_directory_symlink(tmp.path() / "real", tmp.path() / "top");
    source_tree t;
    std::string error;
    ASSERT_EQ(scan_sources({tmp.path() / "top"}, t, error), std::error_code{}) << error;
    EXPECT_EQ(wire_paths(t), (std::vector<std::string>{"top", "top/sub", "top/sub/y", "top/x"}));
    EXPECT_EQ(t.skipped.size(), 1u);  // top/inner: a link inside is not followed
    EXPECT_EQ(t.total_bytes, 3u);
}

TEST(source_tree_test, a_skipped_source_takes_no_name) {
    test::temp_dir tmp{"ferry-scan"};
    write(tmp.path() / "real" / "x", "x");
    fs::create_directories(tmp.path() / "links");
    ASSERT_EQ(::mkfifo((tmp.path() / "links" / "x").c_str(), 0600), 0);  // not a file: skipped
    source_tree t;
    std::string error;
    ASSERT_EQ(scan_sources({tmp.path() / "links" / "x", tmp.path() / "real" / "x"}, t, error), std::error_code{})
        << error;
    EXPECT_EQ(wire_paths(t), (std::vector<std::string>{"x"}));
    EXPECT_EQ(t.skipped.size(), 1u);
}

TEST(source_tree_test, skipped_paths_are_kept_by_a_delete_sync_only_and_within_their_bound) {
    source_tree sources;
    for (int i = 0; i < 4000; ++i) {
        sources.skipped_paths.push_back("run/sock" + std::to_string(i));
    }
    wire::SyncTarget plain;
    EXPECT_EQ(keep_skipped(sources, plain), "");  // nothing is deleted: nothing to keep, however many
    EXPECT_EQ(plain.keep_size(), 0);

    wire::SyncTarget del;
    del.set_delete_(true);
    EXPECT_NE(keep_skipped(sources, del), "");  // over max_sync_keep_bytes: refused whole
    EXPECT_EQ(del.keep_size(), 0);

    sources.skipped_paths.resize(100);
    sources.skipped_paths.push_back("odd\nname \xFF");
    EXPECT_EQ(keep_skipped(sources, del), "");
    ASSERT_EQ(del.keep_size(), 101);
    EXPECT_EQ(del.keep(100), "odd\nname \xFF");
    EXPECT_LE(keep_bytes(del), max_sync_keep_bytes);
}

TEST(source_tree_test, a_folder_this_user_may_not_read_counts_as_another_path_not_a_file) {
    // Reported in `failed_other` (it was counted in `failed_files`). The scan runs as nobody
    // in a child process: root reads everything.
    if (::geteuid() != 0) {
        GTEST_SKIP() << "needs root to scan as nobody";
    }
    test::temp_dir tmp{"ferry-scan"};
    write(tmp.path() / "top" / "ok", "ok");
    write(tmp.path() / "top" / "closed" / "x", "x");
    fs::permissions(tmp.path(), fs::perms::all & ~fs::perms::group_write & ~fs::perms::others_write);
    fs::permissions(tmp.path() / "top" / "closed", fs::perms::owner_all);
    pid_t pid = ::fork();
    ASSERT_GE(pid, 0);
    if (pid == 0) {
        if (::setgid(65534) != 0 || ::setuid(65534) != 0) {
            ::_exit(10);
        }
        source_tree t;
        std::string error;
        if (scan_sources({tmp.path() / "top"}, t, error)) {
            ::_exit(11);
        }
        auto find = [&](const std::string& path) {
            return std::find_if(t.unread.begin(), t.unread.end(), [&](const skipped_file& f) { return f.path == path; });
        };
        auto closed = find("top/closed");
        ::_exit(closed == t.unread.end() ? 12 : closed->file ? 13 : 0);
    }
    int status = 0;
    ASSERT_EQ(::waitpid(pid, &status, 0), pid);
    ASSERT_TRUE(WIFEXITED(status));
    EXPECT_EQ(WEXITSTATUS(status), 0) << "10: no setuid, 11: the scan failed, 12: not listed, 13: counted as a file";
}

}  // namespace
}  // namespace ferry
