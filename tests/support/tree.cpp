#include "tests/support/tree.hpp"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstring>
#include <fstream>
#include <random>
#include <set>
#include <vector>

#include "node/dest_tree.hpp"
#include "node/file_io.hpp"

namespace ferry::test {

namespace fs = std::filesystem;

void write_random_file(const fs::path& path, std::uint64_t size, std::uint32_t seed) {
    fs::create_directories(path.parent_path());
    std::ofstream out(path, std::ios::binary | std::ios::trunc);
    std::mt19937_64 rng(seed);
    std::vector<std::uint64_t> block(8192);
    while (size > 0) {
        for (auto& w : block) {
            w = rng();
        }
        std::uint64_t n = std::min<std::uint64_t>(size, block.size() * 8);
        out.write(reinterpret_cast<const char*>(block.data()), static_cast<std::streamsize>(n));
        size -= n;
    }
}

void write_text_file(const fs::path& path, const std::string& text) {
    fs::create_directories(path.parent_path());
    std::ofstream out(path, std::ios::binary | std::ios::trunc);
    out << text;
}

void copy_file_with_mtime(const fs::path& from, const fs::path& to) {
    fs::create_directories(to.parent_path());
    fs::copy_file(from, to);
    fs::last_write_time(to, fs::last_write_time(from));
}

std::string read_text_file(const fs::path& p) {
    // Whole blocks (read_at), not a call per byte through a stream iterator: under the
    // sanitizers the iterator made reading a test's files most of an e2e test's time.
    std::string out;
    int fd = ::open(p.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        return out;
    }
    struct stat st {};
    std::size_t expected = ::fstat(fd, &st) == 0 && st.st_size > 0 ? static_cast<std::size_t>(st.st_size) : 0;
    std::size_t have = 0;
    std::error_code ec;
    // One byte past the size fstat gave, then 64 KiB at a time: a file still growing is
    // read to its end.
    for (std::size_t room = expected + 1;; room = 64 * 1024) {
        out.resize(have + room);
        std::size_t n = read_at(fd, reinterpret_cast<std::uint8_t*>(out.data()) + have, room, have, ec);
        have += n;
        if (ec || n < room) {
            break;
        }
    }
    out.resize(have);
    ::close(fd);
    return out;
}

namespace {

// True when the files at `a` and `b` hold the same bytes. Read a block at a time into two
// buffers kept for the thread: a test compares files of tens of MiB, and under the
// sanitizers a fresh buffer for each costs a page fault per page of its shadow.
bool same_bytes(const fs::path& a, const fs::path& b) {
    constexpr std::size_t block = 1 << 20;
    thread_local std::vector<std::uint8_t> ba(block);
    thread_local std::vector<std::uint8_t> bb(block);
    int fa = ::open(a.c_str(), O_RDONLY | O_CLOEXEC);
    int fb = ::open(b.c_str(), O_RDONLY | O_CLOEXEC);
    bool same = fa >= 0 && fb >= 0;
    std::error_code ea;
    std::error_code eb;
    for (std::uint64_t offset = 0; same; offset += block) {
        std::size_t na = read_at(fa, ba.data(), block, offset, ea);
        std::size_t nb = read_at(fb, bb.data(), block, offset, eb);
        same = !ea && !eb && na == nb && std::memcmp(ba.data(), bb.data(), na) == 0;
        if (na < block) {
            break;  // the end of both (or of one: then `same` is false already)
        }
    }
    for (int fd : {fa, fb}) {
        if (fd >= 0) {
            ::close(fd);
        }
    }
    return same;
}

std::set<std::string> names(const fs::path& dir) {
    std::set<std::string> out;
    for (const auto& e : fs::directory_iterator(dir)) {
        out.insert(e.path().filename().string());
    }
    return out;
}

}  // namespace

std::string compare_trees(const fs::path& a, const fs::path& b) {
    struct stat sa {};
    struct stat sb {};
    if (::lstat(a.c_str(), &sa) != 0) {
        return "missing " + a.string();
    }
    if (::lstat(b.c_str(), &sb) != 0) {
        return "missing " + b.string();
    }
    if ((sa.st_mode & S_IFMT) != (sb.st_mode & S_IFMT)) {
        return "kind differs: " + b.string();
    }
    if ((sa.st_mode & 07777) != (sb.st_mode & 07777)) {
        return "mode differs: " + b.string();
    }
    if (S_ISDIR(sa.st_mode)) {
        auto na = names(a);
        auto nb = names(b);
        if (na != nb) {
            return "entries differ in " + b.string();
        }
        for (const auto& n : na) {
            if (std::string d = compare_trees(a / n, b / n); !d.empty()) {
                return d;
            }
        }
        if (sa.st_mtim.tv_sec != sb.st_mtim.tv_sec || sa.st_mtim.tv_nsec != sb.st_mtim.tv_nsec) {
            return "dir mtime differs: " + b.string();
        }
        return {};
    }
    if (sa.st_size != sb.st_size) {
        return "size differs: " + b.string();
    }
    if (sa.st_mtim.tv_sec != sb.st_mtim.tv_sec || sa.st_mtim.tv_nsec != sb.st_mtim.tv_nsec) {
        return "mtime differs: " + b.string();
    }
    if (S_ISLNK(sa.st_mode)) {
        return fs::read_symlink(a) == fs::read_symlink(b) ? "" : "link target differs: " + b.string();
    }
    if (!same_bytes(a, b)) {
        return "bytes differ: " + b.string();
    }
    return {};
}

std::int64_t mtime_step_of(const fs::path& dir) {
    int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0) {
        return 0;
    }
    std::int64_t step = probe_mtime_step(fd);
    ::close(fd);
    return step;
}

}  // namespace ferry::test
