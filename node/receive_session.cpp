#include "node/receive_session.hpp"

#include <fcntl.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <iterator>
#include <limits>
#include <optional>

#include "node/backoff.hpp"
#include "node/chunk_codec.hpp"
#include "node/file_io.hpp"
#include "node/resume.hpp"
#include "protocol/digest.hpp"
#include "protocol/path.hpp"
#include "transport/identity.hpp"
#include "transport/socket_tuning.hpp"

namespace ferry {

// The files under a sync's folder by size and mtime: a file new at DST with the size and
// mtime of one already there was likely renamed or copied at SRC, so it starts as a copy
// of that one (made in the kernel, or a reflink), and only chunks the sender finds
// different travel. Files of resume size match on size alone too (a copy whose mtime was
// not kept), but only where one file at DST has that size, and once: where files of one
// size are many (fixed-size records, a camera's raw files, a first sync cut short), each
// new one would otherwise be copied from the same file and hashed for nothing. The
// digests decide in every case: a wrong guess costs a local copy, never a wrong byte.
struct local_basis {
    static constexpr std::size_t max_files = 256 * 1024;  // bounds the memory (about 25 MiB)
    bool built = false;
    std::vector<dest_tree::file_stamp> files;
    std::unordered_map<std::uint64_t, std::uint32_t> by_stamp;  // stamp_key -> first such file
    // stamp_key and the file's name -> first such file: of many files with one size and
    // mtime (a script wrote them in one clock tick), a moved folder's file finds its own.
    std::unordered_map<std::uint64_t, std::uint32_t> by_named_stamp;
    // Files of resume size and up, by size: `guessed` where more than one has that size,
    // or one was guessed from already.
    std::unordered_map<std::uint64_t, std::uint32_t> by_size;
    static constexpr std::uint32_t guessed = UINT32_MAX;
    // Each file's next one of its stamp (`none` for the last): files of one stamp are many
    // where a script wrote them in one clock tick, or copies kept their mtime.
    static constexpr std::uint32_t none = UINT32_MAX;
    std::vector<std::uint32_t> next_of_stamp;
    // A dry run's: how many more new files it may tell as renamed or copied from a stamp's
    // files (set when first asked), and how many of one stamp's files it reads at most.
    std::unordered_map<std::uint64_t, std::uint32_t> dry_left;
    static constexpr std::uint64_t max_alike_bytes = 64 << 20;  // read of one stamp's files at most,
    static constexpr std::uint64_t max_alike_files = 4096;      // and as many files at most

    static std::uint64_t stamp_key(std::uint64_t size, std::int64_t mtime_ns) {
        return size * 0x9E3779B97F4A7C15ull ^ static_cast<std::uint64_t>(mtime_ns);
    }
    static std::uint64_t named_key(std::uint64_t stamp, std::string_view path) {
        return stamp ^ (std::hash<std::string_view>{}(wire_name(path)) * 0xC2B2AE3D27D4EB4Full);
    }
    static bool same_stamp(const dest_tree::file_stamp& f, const entry_info& e) {
        return f.size == e.size && f.mtime_ns == e.mtime_ns;
    }

    // Lists the folder (once; a get's, only what its own entry holds there: the folder
    // it lands in may be a big one). A listing cut short by an error is used as far as it
    // got: it only ever saves bytes.
    void build(dest_tree& tree, std::string_view under) {
        built = true;
        std::string failed;
        (void)tree.list_files(max_files, files, failed, under);
        next_of_stamp.assign(files.size(), none);
        std::unordered_map<std::uint64_t, std::uint32_t> last_of_stamp;  // for the chains
        for (std::uint32_t i = 0; i < files.size(); ++i) {
            const dest_tree::file_stamp& f = files[i];
            if (f.size == 0 || check_wire_path(f.path)) {
                continue;  // empty, or a path the wire cannot carry (too long for FileAccept.basis)
            }
            if (auto [it, fresh] = by_stamp.try_emplace(stamp_key(f.size, f.mtime_ns), i); !fresh) {
                auto last = last_of_stamp.try_emplace(it->first, it->second).first;
                next_of_stamp[last->second] = i;
                last->second = i;
            }
            by_named_stamp.try_emplace(named_key(stamp_key(f.size, f.mtime_ns), f.path), i);
            if (chunk_count(f.size) >= resume_min_chunks) {
                if (auto [it, fresh] = by_size.try_emplace(f.size, i); !fresh) {
                    it->second = guessed;
                }
            }
        }
    }

    // The file to start `e` from, if any: one of its size and mtime (of its name first),
    // else, for a file of resume size, one of its size alone. The digests prove it.
    const dest_tree::file_stamp* find(const entry_info& e) {
        if (const dest_tree::file_stamp* f = of_stamp(e)) {
            return f;
        }
        auto it = by_size.find(e.size);
        if (it == by_size.end() || it->second == guessed) {
            return nullptr;
        }
        const dest_tree::file_stamp* f = &files[it->second];
        it->second = guessed;
        return f;
    }

    // A dry run's find(), which has no digests to prove a guess: a file of `e`'s size and
    // mtime only, and from the files of one stamp no more new files than they are, when they
    // hold the same bytes (copies of one file, which it reads): else the run's digests may
    // find the one taken different (three files of one tick, shuffled; 300 new files of the
    // tick of one DST has), and the run tell another story. Errs towards "created".
    const dest_tree::file_stamp* predict(const entry_info& e, dest_tree& tree) {
        const dest_tree::file_stamp* f = of_stamp(e);
        if (f == nullptr || wire_name(f->path) == wire_name(e.path)) {
            return f;  // (a moved folder's file: the run takes the same)
        }
        const std::uint64_t stamp = stamp_key(e.size, e.mtime_ns);
        auto [it, fresh] = dry_left.try_emplace(stamp, 0);
        if (fresh) {
            it->second = alike_count(tree, by_stamp.at(stamp));
        }
        if (it->second == 0) {
            return nullptr;
        }
        --it->second;
        return f;
    }

  private:
    const dest_tree::file_stamp* of_stamp(const entry_info& e) const {
        const std::uint64_t stamp = stamp_key(e.size, e.mtime_ns);
        if (auto it = by_named_stamp.find(named_key(stamp, e.path)); it != by_named_stamp.end()) {
            const dest_tree::file_stamp& f = files[it->second];
            if (same_stamp(f, e) && wire_name(f.path) == wire_name(e.path)) {
                return &f;
            }
        }
        auto it = by_stamp.find(stamp);
        return it != by_stamp.end() && same_stamp(files[it->second], e) ? &files[it->second] : nullptr;
    }

    // How many files the stamp whose first is `first` has, when they hold the same bytes
    // (one file: 1, unread); 0 when two differ, or when together they are more than
    // max_alike_bytes or max_alike_files (a dry run does not read copies of a disk image).
    std::uint32_t alike_count(dest_tree& tree, std::uint32_t first) const {
        if (next_of_stamp[first] == none) {
            return 1;
        }
        std::uint64_t count = 0;
        for (std::uint32_t i = first; i != none; i = next_of_stamp[i]) {
            if (++count > max_alike_files || count * files[first].size > max_alike_bytes) {  // (one size)
                return 0;
            }
        }
        std::optional<digest128> digest;
        for (std::uint32_t i = first; i != none; i = next_of_stamp[i]) {
            std::error_code ec;
            unique_fd fd(tree.open_final_read(files[i].path, ec));
            std::optional<digest128> d = fd.get() >= 0 ? file_digest_of(fd.get(), files[i].size) : std::nullopt;
            if (!d || (digest && *d != *digest)) {
                return 0;
            }
            digest = d;
        }
        return static_cast<std::uint32_t>(count);
    }
};

namespace {

// The error line of a removal at DST (--delete, or a folder in the way) that failed at
// `where`.
std::string removal_error(const std::string& where, std::error_code ec) {
    return ec == dest_errc::too_deep ? where + ": " + ec.message() + " (removals at DST go no deeper)"
                                     : "could not delete " + where + ": " + ec.message();
}

// Why a get fails a path whose kind differs here (a get replaces nothing, as cp -r would
// not): a folder here where the peer has a file or symlink (`folder_here`; `link`: the
// peer's is a symlink), or a file or symlink (`link`) here where the peer has a folder.
std::string get_replaces_nothing(bool folder_here, bool link) {
    const char* other = link ? "a symlink" : "a file";
    return (folder_here ? std::string("a folder here, and ") + other + " at the peer"
                        : std::string(other) + " here, and a folder at the peer") +
           " (a get replaces nothing: move it away first)";
}

// The Error code a disk error of this side's goes to the sender as: a full disk or quota
// at a node that stays (which may have room later: the sender tries again with
// --retry-for; a `ferry receive` exits with its transfer), or any other.
wire::ErrorCode disk_error(const node_context& ctx, std::error_code ec) {
    bool full = ec == std::errc::no_space_on_device || (ec.category() == std::system_category() && ec.value() == EDQUOT);
    return full && !ctx.config.one_shot ? wire::ERROR_NO_SPACE : wire::ERROR_IO;
}

// The kind a removed entry goes on the wire as (Deleted) and in events.
wire::EntryKind kind_of(const dest_tree::removed_entry& r) {
    return r.is_dir ? wire::ENTRY_DIR : r.is_link ? wire::ENTRY_SYMLINK : wire::ENTRY_FILE;
}

// A sync's older version of a file, open (seeded_sums), on its way to the file's sink:
// the delta then copies from that very inode, whatever its name holds by then.
struct basis_file {
    file_id id;
    int fd = -1;
    std::uint64_t size = 0;
    basis_file(file_id i, int f, std::uint64_t s) : id(i), fd(f), size(s) {}
    basis_file(basis_file&& o) noexcept : id(o.id), fd(std::exchange(o.fd, -1)), size(o.size) {}
    basis_file& operator=(basis_file&&) = delete;
    ~basis_file() {
        if (fd >= 0) {
            ::close(fd);
        }
    }
};

// Older versions one session keeps open at once (beyond that, a delta opens the older
// version by its name at its first chunk).
constexpr std::size_t max_pinned_bases = 256;

// How a chunk's payload is encoded (from its Chunk header), for the worker that decodes it.
struct chunk_encoding {
    wire::Codec codec = wire::CODEC_RAW;
    std::uint32_t raw_len = 0;
    int basis_fd = -1;             // CODEC_DELTA: the older version to copy from
    std::uint64_t basis_size = 0;
};

// What a worker found in a chunk, for the loop thread.
struct chunk_verdict {
    digest128 got;             // XXH3-128 of the raw bytes
    bool undecodable = false;  // a zstd or delta payload that does not decode to exactly raw_len bytes
    bool bad = false;          // undecodable, or `got` is not the hash the sender announced
    std::uint64_t len = 0;     // raw (payload) bytes
    std::uint64_t saved = 0;   // raw_len minus the compressed size, for a good compressed (not delta) chunk
    std::uint64_t copied = 0;  // a good delta chunk: the bytes its copy ops took from the older version (as the sender counts them)

    // The error line for a bad chunk of `path`.
    std::string problem(const std::string& path, chunk_index i) const {
        return path + ": chunk " + std::to_string(i.value) +
               (undecodable ? " does not decompress to its length" : " failed its hash check");
    }
};

struct verified_chunk {
    std::span<const std::uint8_t> raw;  // valid on this thread until its next decode
    chunk_verdict verdict;
};

// On a worker: the chunk's raw bytes (decompressed into this thread's scratch when it came
// compressed; the receiver_machine has already checked raw_len against the file) and
// their hash checked against the one the sender announced.
verified_chunk verify_chunk(std::span<const std::uint8_t> payload, const chunk_encoding& encoding, digest128 expect) {
    verified_chunk out;
    switch (encoding.codec) {
        case wire::CODEC_ZSTD:
            out.raw = decompress_chunk(payload, encoding.raw_len);
            break;
        case wire::CODEC_DELTA:
            out.raw =
                rebuild_delta(payload, encoding.raw_len, encoding.basis_fd, encoding.basis_size, &out.verdict.copied);
            break;
        default:
            out.raw = payload;
            break;
    }
    chunk_verdict& v = out.verdict;
    v.len = encoding.raw_len;
    v.undecodable = out.raw.empty();
    if (!v.undecodable) {
        v.got = hash_chunk(out.raw);
        // A delta's bytes came from the older version here, not through compression.
        v.saved = encoding.codec == wire::CODEC_DELTA ? 0 : encoding.raw_len - payload.size();
    } else {
        v.copied = 0;
    }
    v.bad = v.undecodable || v.got != expect;
    return out;
}

// DST's older version a delta copies from, open by its final name (-1 when it cannot be),
// and its size then.
int open_basis(dest_tree& tree, std::string_view path, std::uint64_t& size) {
    std::error_code ec;
    int fd = tree.open_final_read(path, ec);
    struct stat st {};
    size = fd >= 0 && ::fstat(fd, &st) == 0 ? static_cast<std::uint64_t>(st.st_size) : 0;
    return fd;
}

// A delta chunk that did not rebuild to its digest: DST's older version changed (or went)
// since its sums were read, unless the payload is malformed in itself (a broken sender).
bool basis_changed(std::span<const std::uint8_t> payload, const chunk_encoding& encoding,
                   const chunk_verdict& verdict) {
    std::vector<delta_piece> pieces;
    return encoding.codec == wire::CODEC_DELTA && verdict.bad &&
           decode_delta(payload, encoding.raw_len, std::numeric_limits<std::uint64_t>::max(), pieces);
}

// Files at least this large are fsynced on the worker pool when they complete; smaller
// ones are made durable together by one syncfs at the end of the transfer.
constexpr std::uint64_t fsync_own_threshold = 16 * 1024 * 1024;

// Test hook (tests/e2e): FERRY_FAULT_EXIT_AFTER_RENAMES=N makes the process die (_exit 86)
// as soon as N files were renamed before the final sync, the way a crash would leave it.
long fault_rename_limit() {
    static const long limit = [] {
        const char* v = std::getenv("FERRY_FAULT_EXIT_AFTER_RENAMES");
        return v != nullptr ? std::strtol(v, nullptr, 10) : 0L;
    }();
    return limit;
}

bool fault_hook_armed() { return fault_rename_limit() > 0; }

// Test hook (tests/e2e): FERRY_FAULT_EDIT_BASIS=1 overwrites 16 bytes at the start and at
// the middle of DST's older version of a file (its final name `path`) just before a delta
// chunk is rebuilt from it, as a user's editor could between the sums it told and that
// chunk.
void fault_edit_basis(const dest_tree& tree, std::string_view path) {
    static const bool on = std::getenv("FERRY_FAULT_EDIT_BASIS") != nullptr;
    if (!on) {
        return;
    }
    unique_fd fd(::open(tree.full_path(path).c_str(), O_WRONLY | O_CLOEXEC));
    static constexpr char edit[16] = {'e', 'd', 'i', 't', 'e', 'd', ' ', 'h', 'e', 'r', 'e', ' ', 'n', 'o', 'w', '!'};
    struct stat st {};
    if (fd.get() < 0 || ::fstat(fd.get(), &st) != 0 ||
        ::pwrite(fd.get(), edit, sizeof edit, 0) != static_cast<ssize_t>(sizeof edit) ||
        ::pwrite(fd.get(), edit, sizeof edit, st.st_size / 2) != static_cast<ssize_t>(sizeof edit)) {
        std::fprintf(stderr, "FERRY_FAULT_EDIT_BASIS: could not edit %s\n", std::string(path).c_str());
    }
}

// Test hook (tests/e2e): FERRY_FAULT_PRUNE_WAIT=FILE holds a sync's --delete walk, once every
// file is in, until FILE exists (at most 10 s); it makes FILE.waiting first, so that a test
// knows the walk is about to start.
void fault_point_before_prune() {
    static const char* const go = std::getenv("FERRY_FAULT_PRUNE_WAIT");
    if (go == nullptr) {
        return;
    }
    unique_fd(::open((std::string(go) + ".waiting").c_str(), O_WRONLY | O_CREAT | O_CLOEXEC, 0644));
    wait_until_exists(go, std::chrono::seconds(10));
}

void fault_point_after_renames(std::size_t renamed) {
    const long limit = fault_rename_limit();
    static std::atomic<long> total{0};
    if (limit > 0 && (total += static_cast<long>(renamed)) >= limit) {
        std::_Exit(86);
    }
}

// The digest of the one chunk of DST's regular file at `e.path` (at most chunk_size
// bytes), when it has e.size bytes and may take a mode and mtime where it is: this user's
// (or root's to change) and its inode's only name (another name, a snapshot's hard link
// or a second path of DST, would take them too); null otherwise. With `keep`, the file
// stays open there.
// Whether DST's file of `st` may take a mode and mtime where it is (CODEC_SAME): this
// user's (or root's to change) and its inode's only name.
bool changes_in_place(const struct stat& st) {
    static const uid_t euid = ::geteuid();
    return st.st_nlink == 1 && (euid == 0 || st.st_uid == euid);
}

std::optional<digest128> one_chunk_digest(dest_tree& tree, const entry_info& e, unique_fd* keep = nullptr) {
    std::error_code ec;
    unique_fd fd(tree.open_final_read(e.path, ec));
    struct stat st {};
    if (fd.get() < 0 || e.size == 0 || e.size > chunk_size || ::fstat(fd.get(), &st) != 0 ||
        static_cast<std::uint64_t>(st.st_size) != e.size || !changes_in_place(st)) {
        return std::nullopt;
    }
    auto buf = std::make_unique_for_overwrite<std::uint8_t[]>(e.size);
    if (read_at(fd.get(), buf.get(), e.size, 0, ec) != e.size) {
        return std::nullopt;
    }
    digest128 d = hash_chunk(std::span<const std::uint8_t>(buf.get(), e.size));
    if (keep != nullptr) {
        *keep = std::move(fd);
    }
    return d;
}

// What a sync's changed one-chunk file `e` may start from at DST, read once there: the
// digest of DST's file when it has e.size bytes and may keep them (one_chunk_digest's
// rules: CODEC_SAME), and its sums in small blocks when both versions have 1 KiB or more
// (the sender sends a CODEC_DELTA of them): of its first small_delta_max_basis bytes, when
// it is larger (a file cut short). `size_there`: that file's size, from the look.
struct small_basis {
    std::optional<digest128> same_as;
    std::optional<small_sums> sums;
};

bool small_delta_candidate(const entry_info& e, std::uint64_t size_there) {
    // (A file of resume_min_chunks chunks or more starts from a copy of DST's version, and
    // its sums in small blocks go with that version's: seeded_sums.)
    // (Its blocks are of min_small_block and more: at most half of e.)
    static_assert(small_delta_max_basis / min_small_block <= max_small_blocks &&
                  min_small_block <= small_delta_min_size / 2);
    return e.size >= small_delta_min_size && !resumable(e) && size_there >= small_delta_min_size;
}

small_basis read_small_basis(dest_tree& tree, const entry_info& e, std::uint64_t size_there) {
    small_basis out;
    if (!small_delta_candidate(e, size_there)) {
        out.same_as = one_chunk_digest(tree, e);  // (of the same size only)
        return out;
    }
    std::error_code ec;
    unique_fd fd(tree.open_final_read(e.path, ec));
    struct stat st {};
    if (fd.get() < 0 || ::fstat(fd.get(), &st) != 0 || !S_ISREG(st.st_mode) ||
        !small_delta_candidate(e, static_cast<std::uint64_t>(st.st_size))) {
        return out;
    }
    // (Of a version larger than the new file, only the blocks a sender takes for blocks of
    // min_small_block, whatever their size turns out to be.)
    const auto size = std::min({static_cast<std::uint64_t>(st.st_size), small_delta_max_basis,
                                max_small_blocks_for(e.size, min_small_block) * min_small_block});
    // One buffer per worker thread, kept: a fresh one per file would fault in its pages
    // each time.
    static thread_local std::unique_ptr<std::uint8_t[]> buf =
        std::make_unique_for_overwrite<std::uint8_t[]>(small_delta_max_basis);
    if (read_at(fd.get(), buf.get(), size, 0, ec) != size) {
        return out;
    }
    std::span<const std::uint8_t> bytes(buf.get(), size);
    const bool same_size = static_cast<std::uint64_t>(st.st_size) == e.size;
    if (same_size && size <= chunk_size && changes_in_place(st)) {
        out.same_as = hash_chunk(bytes);
    }
    out.sums = describe_small(bytes, same_size ? same_size_min_block : min_small_block);
    return out;
}

// Sync --checksum: whether the file at `e.path` under `tree` has e.digest as content (read
// and hashed chunk by chunk; a size other than e.size is a difference). With `fix_meta` and
// the same content, its mode and mtime become e's (they may differ: --checksum looks at
// content only). `other_mtime`: the same content with another mtime (a change to tell of,
// as rsync -c -i does: .f..t).
bool same_content(dest_tree& tree, const entry_info& e, bool fix_meta, bool& other_mtime) {
    other_mtime = false;
    std::error_code ec;
    int fd = tree.open_final_read(e.path, ec);
    if (fd < 0) {
        return false;
    }
    struct stat st {};
    bool same = ::fstat(fd, &st) == 0 && static_cast<std::uint64_t>(st.st_size) == e.size &&
                file_digest_of(fd, e.size) == *e.digest;
    // (As a file system with coarser timestamps stores it: FAT's 2 s never hold SRC's ns.)
    other_mtime = same && !same_stored_mtime(timespec_ns(st.st_mtim), e.mtime_ns);
    if (other_mtime && fix_meta) {
        set_mode_and_mtime(fd, e.mode, e.mtime_ns);  // best effort: the content is what counts
    }
    ::close(fd);
    return same;
}

}  // namespace

struct receive_session::whole_write {
    file_id f;
    std::uint32_t conn = 0;
    entry_info e;  // a copy: the worker must not read the machine
    digest128 expect;
    chunk_encoding encoding;
    pooled_buffer payload;
    // Filled in by the worker:
    chunk_verdict verdict;
    std::error_code ec;
    dest_tree::stored_file stored;
    unnamed_file unnamed;  // the file, kept open with no name until the batch links it
    stats_clock::duration write_time{};
    unique_fd partial;  // a partial file (where no unnamed one could be had), held open and locked until named
    bool kept = false;  // CODEC_SAME: the file at its name was these bytes, and took e's mode and mtime

    // Verifies the chunk and writes the file: with --fsync-each to a partial file renamed
    // here; else to a file with no name (a partial file where there can be none), kept
    // for the next journaled batch of names.
    void run(dest_tree& tree, bool fsync_now, bool overwrite) {
        if (encoding.codec == wire::CODEC_SAME) {
            keep(tree, fsync_now);
            return;
        }
        unique_fd basis;
        if (encoding.codec == wire::CODEC_DELTA) {
            // Copies from the file at its name (its sums went in SmallSums), which stays there
            // until this one replaces it.
            fault_edit_basis(tree, e.path);
            basis.reset(open_basis(tree, e.path, encoding.basis_size));
            encoding.basis_fd = basis.get();
        }
        verified_chunk checked = verify_chunk(payload.span(), encoding, expect);
        verdict = checked.verdict;
        if (basis_changed(payload.span(), encoding, verdict)) {
            // Not the bytes its sums told of: the file there changed since (or went). It
            // fails alone, as a CODEC_SAME file does.
            verdict = chunk_verdict{};
            verdict.len = e.size;
            ec = dest_errc::changed;
        } else if (!verdict.bad) {
            write(tree, fsync_now, overwrite, checked.raw);
        }
        payload.reset();
    }

    // CODEC_SAME: the file at its name, if it still holds the bytes told (FileAccept's
    // same_as), takes e's mode and mtime where it is; one that changed since fails alone.
    void keep(dest_tree& tree, bool fsync_now) {
        unique_fd fd;
        std::optional<digest128> d = one_chunk_digest(tree, e, &fd);
        verdict.len = e.size;
        verdict.copied = e.size;  // never travelled: matched here, as a delta's copies
        if (!d || *d != expect) {
            ec = dest_errc::changed;
            return;
        }
        verdict.got = *d;
        ec = tree.prepare_final(fd.get(), e.size, e.mode, e.mtime_ns, fsync_now, &stored, true, true);
        kept = !ec;
    }

    // Writes the verified bytes `raw`, as run() does.
    void write(dest_tree& tree, bool fsync_now, bool overwrite, std::span<const std::uint8_t> raw) {
        if (!fsync_now) {
            unnamed = tree.open_unnamed(e.path, e.mode, ec);
        }
        int fd = unnamed.get() >= 0 || ec ? unnamed.get() : tree.open_whole_partial(e.path, e.mode, ec);
        if (!ec) {
            auto t0 = stats_clock::now();
            ec = write_at(fd, raw.data(), raw.size(), 0);
            write_time = stats_clock::now() - t0;
        }
        if (unnamed.get() >= 0) {
            if (!ec) {
                ec = tree.prepare_final(fd, e.size, e.mode, e.mtime_ns, false, &stored, raw.size() == e.size, true);
            }
            if (ec) {
                unnamed.reset();  // gone with its descriptor
            }
        } else if (fd >= 0) {
            if (ec) {
                ::close(fd);
            } else if (fsync_now) {
                ec = tree.finalize(e.path, fd, e.size, e.mode, e.mtime_ns, true, overwrite);
            } else {
                ec = tree.prepare_final(fd, e.size, e.mode, e.mtime_ns, false, &stored, raw.size() == e.size, true);
                partial.reset(fd);
            }
        }
    }
};

int receive_session::sink_file::partial_fd(dest_tree& tree, const std::string& path, bool create,
                                           std::error_code& ec) {
    if (fd < 0 && !open_error) {
        fd = tree.open_partial(path, open_error, create);
    }
    ec = fd < 0 ? open_error : std::error_code();
    return fd;
}

receive_session::sink_file::~sink_file() {
    if (fd >= 0) {
        ::close(fd);
    }
    if (basis_fd >= 0) {
        ::close(basis_fd);
    }
}

receive_session::receive_session(node_context& ctx, std::string peer_id, const std::string& peer_key,
                                 std::string session_id, std::function<void(receive_session&)> on_end)
    : ctx_(ctx), peer_id_(std::move(peer_id)), session_id_(std::move(session_id)), on_end_(std::move(on_end)),
      machine_(receiver_limits{ctx.config.limits.max_files}), peer_key_(peer_key), files_("receive", session_id_),
      scope_(std::make_shared<stats_scope>(ctx_.stats.peers.get(peer_key))), start_(std::chrono::steady_clock::now()),
      last_heard_(start_), idle_timer_(ctx.io), last_frame_(start_), answer_timer_(ctx.io), checkpoint_timer_(ctx.io),
      claims_(ctx.claims) {
    root_ = ctx_.config.inbox;
}

receive_session::~receive_session() {
    claims_->release_all(this);  // no task of this session is left to write
    for (auto& c : conns_) {
        if (c) {
            c->set_handler(nullptr);  // a connection closing after the session must not call into it
        }
    }
}

void receive_session::add_connection(std::shared_ptr<connection> c, const wire::Hello& hello) {
    std::uint32_t count = std::clamp<std::uint32_t>(hello.conn_count(), 1, max_connections);
    if (conns_.empty()) {
        conns_.resize(count);
        acks_.resize(count);
        peer_address_ = c->stream().remote();
    }
    std::uint32_t idx = hello.conn_index();
    if (ended_ || failed_) {
        // Too late to join (the session failed, or closed its last connection and is being
        // removed): the sender already has, or will get, the reason on connection 0.
        c->close();
        return;
    }
    if (idx >= conns_.size() || (idx == 0 && conns_[0])) {
        wire::Header h;
        h.mutable_error()->set_code(wire::ERROR_PROTOCOL);
        h.mutable_error()->set_message("bad connection index");
        ctx_.stats.refusals.add(refusal::protocol);
        c->send(h);
        c->close_after_flush(protocol_errc::unexpected_message);
        return;
    }
    if (conns_[idx]) {
        // The sender gave this index up (lost or stalled, maybe not yet closed here) and
        // opened a replacement: the new one takes its place.
        ctx_.log("connection " + std::to_string(idx) + " from " + log_id(peer_id_) + " replaced");
        conns_[idx]->set_handler(nullptr);
        if (!conns_[idx]->closed()) {
            conns_[idx]->close();
            --open_conns_;  // its on_closed no longer reaches this session
        }
        acks_[idx].clear();
    }
    c->index = idx;
    c->set_handler(this);
    conns_[idx] = c;
    count_wire(c->stream(), scope_);
    ++open_conns_;
    wire::Header h = make_hello(session_id_, idx, static_cast<std::uint32_t>(conns_.size()), !c->stream().is_tls(),
                                !pull_ || pull_->zstd);
    wire::Hello* reply = h.mutable_hello();
    if (pull_ && idx == 0) {
        *reply->mutable_pull() = pull_->source;  // this side asks: the peer answers with its Hello
        reply->set_max_rate(pull_->max_rate);
        reply->set_compress_always(pull_->compress_always);
    }
    c->send(h);
    if (idx == 0 && ctx_.events.connected) {
        ctx_.events.connected(peer_id_, peer_address_, static_cast<std::uint32_t>(conns_.size()));
    }
    if (idx == 0) {
        arm_idle_timer(ctx_.config.limits.idle_timeout);
        claims_->set_asked(this, [weak = weak_from_this(), &io = ctx_.io] {
            asio::post(io, [weak] {
                if (auto self = weak.lock()) {
                    self->ask_sender();
                }
            });
        });
    }
}

void receive_session::ask_sender() {
    if (failed_ || ended_ || result_sent_ || finishing_ || asking_) {
        return;  // ending anyway, or asked already
    }
    auto open = std::find_if(conns_.begin(), conns_.end(), [](const auto& c) { return c && !c->closed() && !c->closing(); });
    if (open == conns_.end()) {
        return;  // the session ends with its last connection
    }
    wire::Header h;
    h.mutable_ping()->set_nonce(++ping_nonce_);
    (*open)->send(h);
    asking_ = true;
    asked_at_ = std::chrono::steady_clock::now();
    asked_wire_ = scope_->counters().wire_received;
    answer_timer_.expires_after(sender_answer_timeout);
    answer_timer_.async_wait([weak = weak_from_this()](std::error_code ec) {
        auto self = weak.lock();
        if (ec || !self) {
            return;
        }
        self->asking_ = false;
        // Any byte from the sender is an answer: on a slow link the Pong waits behind
        // chunks queued before it, and a chunk frame may take longer than the wait.
        if (self->failed_ || self->ended_ || self->result_sent_ || self->last_frame_ >= self->asked_at_ ||
            self->scope_->counters().wire_received != self->asked_wire_) {
            return;
        }
        // A connection held back by the node's buffer pool is not read: the answer may
        // be waiting in it. The next transfer that wants the files asks again.
        if (std::any_of(self->conns_.begin(), self->conns_.end(),
                        [](const auto& c) { return c && !c->closed() && c->waiting_for_buffer(); })) {
            return;
        }
        self->fail(wire::ERROR_CANCELLED, exit_code::transfer_failed,
                   "the sender did not answer for " + seconds_text(sender_answer_timeout) +
                       " s while another transfer waited for its files");
    });
}

void receive_session::arm_idle_timer(std::chrono::steady_clock::duration after) {
    idle_timer_.expires_after(after);
    idle_timer_.async_wait([weak = weak_from_this()](std::error_code ec) {
        auto self = weak.lock();
        if (ec || !self || self->failed_ || self->ended_) {
            return;
        }
        auto idle = self->ctx_.config.limits.idle_timeout;
        auto now = std::chrono::steady_clock::now();
        if (self->result_sent_) {
            // Done, and the sender has had a whole idle timeout to close: close for it.
            for (auto& c : self->conns_) {
                if (c && !c->closed() && !c->closing()) {
                    c->close();
                }
            }
            return;
        }
        // A connection held back by the node's buffer pool (other transfers' writes) is not
        // the sender's silence either.
        // A pull's peer took the request and scans (and with --checksum hashes) its folder
        // before its first Offer: up to an hour for a very large tree on a cold disk. (A
        // pushing sender does all that before it connects.)
        bool peer_scanning = self->pull_ && self->peer_hello_ && !self->offer_seen_ &&
                             now - self->start_ < std::chrono::hours(1);
        // (A Packed batch waiting for a worker too: the sender waits for its Accept.)
        bool own_work = self->offer_busy_ || self->writes_ > 0 || self->finalizing_ > 0 || self->renaming_ ||
                        std::any_of(self->queued_offers_.begin(), self->queued_offers_.end(),
                                    [](const queued_offer& q) { return !q.ready; }) ||
                        self->finishing_ || peer_scanning ||
                        std::any_of(self->conns_.begin(), self->conns_.end(),
                                    [](const auto& c) { return c && !c->closed() && c->waiting_for_buffer(); });
        if (own_work) {
            self->last_heard_ = now;  // the sender waits for us: that is not idle
        }
        if (now - self->last_heard_ < idle) {
            self->arm_idle_timer(self->last_heard_ + idle - now);
            return;
        }
        self->fail(wire::ERROR_CANCELLED, exit_code::transfer_failed,
                   "nothing from the sender for " + seconds_text(idle) + " s (--idle-timeout)", refusal::idle);
    });
}

void receive_session::send_control(wire::Header& h) {
    if (!conns_.empty() && conns_[0] && !conns_[0]->closed()) {
        conns_[0]->send(h);
    }
}

void receive_session::on_frame(connection& c, wire::Header& header, pooled_buffer payload) {
    if (failed_) {
        return;
    }
    last_frame_ = std::chrono::steady_clock::now();
    if (header.body_case() != wire::Header::kPing && header.body_case() != wire::Header::kPong) {
        last_heard_ = last_frame_;  // pings alone do not keep a transfer alive
    }
    switch (header.body_case()) {
        case wire::Header::kChunk: on_chunk(c, header.chunk(), std::move(payload)); return;
        case wire::Header::kChunkRun:
            on_chunk_run(c, header.chunk_run(), std::move(payload));
            return;
        case wire::Header::kOffer:
            if (c.index != 0) {
                break;
            }
            offer_seen_ = true;
            queue_offer(std::move(*header.mutable_offer()));
            return;
        case wire::Header::kPacked:
            if (c.index != 0) {
                break;
            }
            offer_seen_ = true;
            on_packed(header.packed(), std::move(payload));
            return;
        case wire::Header::kFileDone:
            if (c.index != 0) {
                break;
            }
            on_file_done(header.file_done());
            return;
        case wire::Header::kFileAbort:
            if (c.index != 0) {
                break;
            }
            on_file_abort(header.file_abort());
            return;
        case wire::Header::kPing: {
            wire::Header h;
            h.mutable_pong()->set_nonce(header.ping().nonce());
            c.send(h);
            return;
        }
        case wire::Header::kPong: return;  // the sender is there (ask_sender)
        case wire::Header::kHello:
            if (!pull_) {
                break;
            }
            on_peer_hello(c, header.hello());
            return;
        case wire::Header::kError:
            retryable_ = header.error().code() == wire::ERROR_CANCELLED || header.error().code() == wire::ERROR_BUSY;
            fail(wire::ERROR_CANCELLED, exit_code::transfer_failed,
                 (pull_ ? "peer: " : "sender stopped: ") + header.error().message());
            return;
        default: break;
    }
    fail(wire::ERROR_PROTOCOL, exit_code::transfer_failed,
         "protocol error from " + log_id(peer_id_) + ": unexpected message");
}

void receive_session::on_peer_hello(connection& c, const wire::Hello& hello) {
    if (hello.version() != protocol_version) {
        fail(wire::ERROR_VERSION, exit_code::transfer_failed,
             "peer speaks protocol version " + std::to_string(hello.version()) + ", this ferry speaks " +
                 std::to_string(protocol_version) + " (upgrade the older side)");
        return;
    }
    if (c.index != 0 || peer_hello_) {
        return;  // a data connection's answer: nothing to do
    }
    peer_hello_ = true;  // the peer took the pull; the other connections join once data is due
}

void receive_session::open_data_connections() {
    if (data_conns_opened_ || failed_ || result_sent_ || ended_ || !pull_) {
        return;
    }
    const std::shared_ptr<connection>& c0 = conns_.empty() ? nullptr : conns_[0];
    if (pull_->adaptive_connections && conns_.size() > 1 &&
        !(c0 && !c0->closed() &&
          path_calls_for_more_connections(c0->stream().socket().native_handle(), pull_->widen_rtt_us))) {
        if (!widen_timer_) {
            widen_timer_ = std::make_unique<asio::steady_timer>(ctx_.io);
        }
        widen_timer_->expires_after(std::chrono::milliseconds(500));
        widen_timer_->async_wait([weak = weak_from_this()](std::error_code ec) {
            if (auto self = weak.lock(); self && !ec) {
                self->open_data_connections();
            }
        });
        return;
    }
    data_conns_opened_ = true;
    for (std::uint32_t i = 1; i < conns_.size(); ++i) {
        pull_->open(i);
    }
}

void receive_session::data_connection_lost(std::uint32_t index) {
    if (!pull_ || failed_ || result_sent_ || ended_ || index == 0 || index >= conns_.size()) {
        return;
    }
    redials_.resize(conns_.size());
    redial& r = redials_[index];
    if (r.failures >= 8) {
        ctx_.log("giving up on connection " + std::to_string(index) + " after " + std::to_string(r.failures) +
                 " attempts; the transfer goes on over the others", log_level::warn);
        return;
    }
    if (!r.timer) {
        r.timer = std::make_shared<asio::steady_timer>(ctx_.io);
    }
    r.timer->expires_after(backoff_delay(r.failures++, std::chrono::milliseconds(100), std::chrono::seconds(5)));
    r.timer->async_wait([weak = weak_from_this(), index](std::error_code ec) {
        auto self = weak.lock();
        if (!ec && self && !self->failed_ && !self->result_sent_) {
            self->pull_->open(index);
        }
    });
}

void receive_session::queue_offer(wire::Offer offer) {
    // One Offer batch per turn of the loop: an offer of many batches arrives at once, and
    // the Accept of the first must not wait behind the checks of all. The queue is
    // bounded: a peer that sends batches faster than they are checked has them checked
    // as they come (its limits, --max-files among them, apply within a few batches).
    if (!queued_offers_.empty() && !queued_offers_.front().ready &&
        queued_offers_.size() >= sender_machine::max_offers_ahead) {
        // (Behind a Packed batch none can be checked as it comes: see on_packed.)
        fail(wire::ERROR_PROTOCOL, exit_code::transfer_failed,
             "protocol error from " + log_id(peer_id_) + ": more Offer batches than may be unanswered");
        return;
    }
    queued_offers_.push_back({std::move(offer), offers_queued_++, true});
    while (queued_offers_.size() > max_queued_offers && !failed_ && take_offer()) {
    }
    post_offer_turn();
}

void receive_session::on_packed(const wire::Packed& packed, pooled_buffer payload) {
    const std::uint32_t raw_len = packed.raw_len();
    // A sender keeps at most max_offers_ahead batches unanswered, so no more than that
    // can wait here.
    if (raw_len == 0 || raw_len > max_header_len || !payload.data() ||
        queued_offers_.size() >= sender_machine::max_offers_ahead) {
        fail(wire::ERROR_PROTOCOL, exit_code::transfer_failed,
             "protocol error from " + log_id(peer_id_) + ": a Packed frame out of bounds");
        return;
    }
    const std::uint64_t seq = offers_queued_++;
    queued_offers_.push_back({wire::Offer{}, seq, false});
    ctx_.workers.post_first([self = shared_from_this(), payload = std::move(payload), raw_len, seq]() mutable {
        wire::Header h;
        std::span<const std::uint8_t> raw = decompress_chunk({payload.data(), payload.size()}, raw_len);
        bool ok = !raw.empty() && h.ParseFromArray(raw.data(), static_cast<int>(raw.size())) &&
                  h.body_case() == wire::Header::kOffer && h.payload_len() == 0;
        payload = {};  // back to the pool
        asio::post(self->ctx_.io, [self, h = std::move(h), ok, seq]() mutable {
            if (self->failed_) {
                return;
            }
            if (!ok) {
                self->fail(wire::ERROR_PROTOCOL, exit_code::transfer_failed,
                           "protocol error from " + log_id(self->peer_id_) +
                               ": a Packed frame that is not a compressed Offer");
                return;
            }
            for (queued_offer& q : self->queued_offers_) {
                if (q.seq == seq) {
                    q.offer = std::move(*h.mutable_offer());
                    q.ready = true;
                }
            }
            self->post_offer_turn();
        });
    });
}

void receive_session::post_offer_turn() {
    // One is posted while the queue's first batch is there to check.
    if (offer_turn_posted_ || queued_offers_.empty() || !queued_offers_.front().ready) {
        return;
    }
    offer_turn_posted_ = true;
    asio::post(ctx_.io, [self = shared_from_this()] {
        self->offer_turn_posted_ = false;
        self->take_offer();
        self->post_offer_turn();
    });
}

bool receive_session::take_offer() {
    if (failed_) {
        queued_offers_.clear();
        return false;
    }
    if (queued_offers_.empty() || !queued_offers_.front().ready) {
        return false;
    }
    wire::Offer offer = std::move(queued_offers_.front().offer);
    queued_offers_.pop_front();
    on_offer(offer);
    return true;
}

void receive_session::on_offer(const wire::Offer& offer) {
    std::vector<file_id> ids;
    if (std::error_code ec = machine_.on_offer(offer, ids)) {
        std::string what = ec.message();
        if (ec == protocol_errc::too_many_files) {
            what += " (this node takes " + std::to_string(ctx_.config.limits.max_files) + ", --max-files)";
        }
        for (const wire::Entry& e : offer.entries()) {
            if (check_wire_path(e.path())) {
                // Quoted as sent, up to a readable length (fail() escapes what is not printable).
                constexpr std::size_t shown = 200;
                what += ": \"" + e.path().substr(0, shown) + (e.path().size() > shown ? "...\"" : "\"");
                break;
            }
        }
        // An offer out of sequence or with ids that are not dense is a broken peer
        // (ERROR_PROTOCOL); a path or a limit refuses what was offered.
        bool malformed = ec == protocol_errc::unexpected_message || ec == protocol_errc::duplicate_id;
        fail(malformed ? wire::ERROR_PROTOCOL : wire::ERROR_REFUSED, exit_code::transfer_failed,
             "refused transfer: " + what, ec == protocol_errc::too_many_files ? refusal::files : refusal::protocol);
        return;
    }
    // What the sender's scan could not read: in the report as not sent (its log names
    // them), no more of them than files this node takes.
    if (given_up_.size() + offer.not_sent_size() > ctx_.config.limits.max_files) {
        fail(wire::ERROR_REFUSED, exit_code::transfer_failed, "refused transfer: too many paths not sent",
             refusal::files);
        return;
    }
    for (const wire::NotSent& n : offer.not_sent()) {
        given_up_.push_back({n.path(), printable(n.reason()), n.vanished(), false, false, !n.folder()});
    }
    if (pull_) {
        // What the serving node's scan left out (a FIFO, say): noted here, as a push's
        // sender notes its own.
        for (const std::string& note : offer.skipped()) {
            ctx_.log("skipping " + printable(note) + " at the peer");
        }
        if (offer.skipped_more() > 0) {
            ctx_.log("skipping " + std::to_string(offer.skipped_more()) +
                     " more path(s) at the peer (not regular files, or ferry's partial files)");
        }
    }
    // Those not listed, counted as files or (not_sent_more_folders) as other paths.
    const std::uint64_t more_folders = std::min(offer.not_sent_more_folders(), offer.not_sent_more());
    for (bool files : {true, false}) {
        std::uint64_t more = files ? offer.not_sent_more() - more_folders : more_folders;
        if (more > 0) {
            given_up_.push_back({"...",
                                 std::to_string(more) + (files ? " more path(s)" : " more folder(s)") + " not sent (" +
                                     log_id(peer_id_) + "'s log lists them)",
                                 false, false, false, files, more});
        }
    }
    if (pull_ && !pull_->source.get().empty()) {
        // A get: the one entry asked for, and what is below it. Nothing else in the
        // puller's folder is the peer's to write.
        const std::string& name = pull_->source.get();
        for (file_id id : ids) {
            const std::string& path = machine_.entry(id).path;
            bool top_link = path == name && machine_.entry(id).is_link;  // what was asked for is a file or a folder
            // A range: one file of at most the range's length.
            const entry_info& e = machine_.entry(id);
            const std::uint64_t length = pull_->source.range_length();
            bool bad_range = length > 0 && (path != name || !e.is_file() || id.value != 0 || e.size > length);
            if (!bad_range && length > 0 &&
                (e.size != length || (pull_->range_mtime_ns && e.mtime_ns != *pull_->range_mtime_ns))) {
                fail(wire::ERROR_REFUSED, exit_code::transfer_failed,
                     "the file changed at " + log_id(peer_id_) + " since it was listed (another size or mtime)");
                return;
            }
            if (top_link || bad_range || !path.starts_with(name) || (path.size() > name.size() && path[name.size()] != '/')) {
                fail(wire::ERROR_PROTOCOL, exit_code::transfer_failed,
                     "protocol error from " + log_id(peer_id_) + ": it offers \"" + path.substr(0, 200) +
                         (bad_range ? "\", not the one file range that was asked for"
                                    : "\", not below \"" + name + "\" that was asked for"));
                return;
            }
        }
    }
    if (std::uint64_t max = ctx_.config.limits.max_bytes; max > 0 && machine_.total_bytes() > max) {
        fail(wire::ERROR_REFUSED, exit_code::transfer_failed,
             "refused transfer: " + std::to_string(machine_.total_bytes()) + " bytes offered, over this node's limit of " +
                 std::to_string(max) + " (--max-bytes)",
             refusal::bytes);
        return;
    }
    if (pull_ && !machine_.sync()) {
        fail(wire::ERROR_PROTOCOL, exit_code::transfer_failed,
             "protocol error from " + log_id(peer_id_) + ": its offer is not the sync that was asked for");
        return;
    }
    if (machine_.sync() && !sync_target() && !open_sync_target(*machine_.sync())) {
        return;
    }
    if (offer.keep_size() > 0 && !take_keep(offer)) {
        return;
    }
    overwrite_ = ctx_.config.overwrite || machine_.options().overwrite || sync_target() != nullptr;
    // The space check uses the sizes of the entries offered up to this batch, summed here
    // (never the sender's own claim of a total); what is already written, kept or skipped
    // is taken off when the batch's turn comes (next_offer), once the batches before it
    // are decided.
    offers_.emplace_back(std::move(ids), machine_.total_bytes());
    next_offer();
}

bool receive_session::open_sync_target(const wire::SyncTarget& target) {
    std::string refused;
    const share_config* share = nullptr;
    if (pull_) {
        // Our own folder, with our own options: a peer that changes them is broken.
        const wire::SyncTarget& asked = pull_->source;
        bool same = target.delete_() == asked.delete_() && target.dry_run() == asked.dry_run() &&
                    target.checksum() == asked.checksum() && target.get() == asked.get() &&
                    target.range_offset() == asked.range_offset() && target.range_length() == asked.range_length() &&
                    (asked.get().empty() || (target.root_mode() == 0 && target.keep_size() == 0)) &&
                    target.exclude_size() == asked.exclude_size() &&
                    std::equal(asked.exclude().begin(), asked.exclude().end(), target.exclude().begin());
        if (!same) {
            fail(wire::ERROR_PROTOCOL, exit_code::transfer_failed,
                 "protocol error from " + log_id(peer_id_) + ": its offer changes the sync's options");
            return false;
        }
    } else {
        refused = share_access(ctx_, peer_id_, target.share(), true, &share);
    }
    auto excludes = std::make_shared<exclude_set>();
    if (refused.empty()) {
        refused = sync_excludes(target, *excludes);
    }
    excludes_ = std::move(excludes);
    keep_bytes_ = keep_bytes(target);
    if (!refused.empty()) {
        fail(wire::ERROR_REFUSED, exit_code::transfer_failed, "refused sync: " + refused);
        return false;
    }
    if (pull_) {
        share_dir_ = pull_->dest.parent_path();
        sync_path_ = pull_->dest.filename().string();
        root_ = pull_->dest;
    } else {
        share_dir_ = share->dir;
        sync_path_ = target.path();
        root_ = sync_path_.empty() ? share_dir_ : share_dir_ / sync_path_;
    }
    return true;
}

bool receive_session::take_keep(const wire::Offer& offer) {
    if (!sync_target() || !sync_target()->get().empty()) {
        fail(wire::ERROR_PROTOCOL, exit_code::transfer_failed,
             "protocol error from " + log_id(peer_id_) + ": paths to keep in a transfer that is no sync (or a get)");
        return false;
    }
    for (const std::string& path : offer.keep()) {
        if (std::string refused = add_keep(path, keep_bytes_, later_keeps_); !refused.empty()) {
            fail(wire::ERROR_REFUSED, exit_code::transfer_failed, "refused sync: " + refused);
            return false;
        }
    }
    return true;
}

void receive_session::next_offer() {
    if (offer_busy_ || offers_.empty() || failed_ || machine_.in_progress() >= max_files_in_progress) {
        return;  // (a file that finishes calls again)
    }
    offer_busy_ = true;
    auto [ids, offered_so_far] = std::move(offers_.front());
    offers_.pop_front();
    std::uint64_t here =
        machine_.received_bytes() + machine_.discarded_bytes() + machine_.kept_bytes() + machine_.skipped_bytes();
    std::uint64_t total_bytes = offered_so_far > here ? offered_so_far - here : 0;
    struct item {
        file_id id;
        entry_info e;  // a copy: the worker must not read the machine
    };
    std::vector<item> items;
    items.reserve(ids.size());
    std::vector<std::optional<known_partial>> known(ids.size());
    for (file_id id : ids) {
        const entry_info& e = machine_.entry(id);
        if (resumable(e) && !sync_target()) {
            known[items.size()] = ctx_.known.take(e.path);  // kept by inbox path
        }
        items.push_back({id, e});
    }
    auto tree = tree_;
    std::filesystem::path root = root_;
    std::filesystem::path journals = journal_dir();
    bool overwrite = overwrite_;
    std::uint64_t need = total_bytes;
    struct sync_view {
        bool on = false;
        bool dry_run = false;
        bool checksum = false;
        std::filesystem::path share_dir;
        std::string path;
        // A folder where SRC has a file or a symlink: with --delete removed with what it
        // holds (never what an exclude pattern matches); else only when empty. Never one
        // that is excluded or inside an excluded folder.
        bool del = false;
        std::shared_ptr<const exclude_set> excludes;
        std::string get;  // a get: the name of its one entry
        bool root_mirrored = false;  // DST's own folder takes SRC's mode (root_mode_mirrored)
    } sync;
    std::shared_ptr<local_basis> basis;
    std::shared_ptr<std::unordered_set<std::string>> absent;
    if (const wire::SyncTarget* t = sync_target()) {
        sync = {true, t->dry_run(), t->checksum(), share_dir_, sync_path_, t->delete_(), excludes_, t->get(),
                root_mode_mirrored()};
        if (t->dry_run()) {
            if (!dry_absent_) {
                dry_absent_ = std::make_shared<std::unordered_set<std::string>>();
            }
            absent = dry_absent_;
        }
        // (A dry run looks too: what it tells of a file it would start from a file DST
        // has at another path is what the run would tell, a rename.)
        if (!basis_) {
            basis_ = std::make_shared<local_basis>();
        }
        basis = basis_;
    }
    if (!absent) {
        absent = std::make_shared<std::unordered_set<std::string>>();  // this batch's alone
    }
    ctx_.workers.post([self = shared_from_this(), items = std::move(items), known = std::move(known), tree, root,
                       journals, overwrite, need, sync = std::move(sync), basis, absent,
                       pinned = pinned_bases_]() mutable {
        std::string error;
        exit_code code = exit_code::transfer_failed;
        bool no_space = false;
        // An earlier attempt's partial files are here: this is a retry (after a disk that
        // filled mid-transfer, say), and room later is worth another (ERROR_NO_SPACE).
        bool resuming = false;
        bool busy = false;  // a file is another transfer's (partial_claims)
        std::vector<receiver_machine::decision> decisions;
        decisions.reserve(items.size());  // one array a batch, not a doubling one (fresh pages each time)
        std::vector<std::string> resumed;  // one line per file resumed or restarted, or whose mode could not be set
        // Folders this user may not make (in a folder of another user's, for one), and the
        // symlinks in them: left out, listed at the end (not_made_). The files in them are
        // accepted and given up on right after the Accept (refused_files).
        std::vector<skipped_file> not_made;
        std::unordered_map<std::string, std::string> unmade;  // folder path: why
        std::vector<std::pair<file_id, std::string>> refused_files;  // and why
        std::string recovered;
        // Held until every entry of the batch is decided: a recovery (a session's first
        // batch) excludes every other transfer's checks, so no transfer decides "already
        // there" about a file that a recovery is about to remove.
        std::optional<unsynced_journal::folder_lock> lock;
        lock.emplace(journals, !tree);
        // A dry run into a folder of the share that is not there yet: everything would be
        // created, and nothing is looked at (or made).
        bool nothing_there = false;
        try {
            std::shared_ptr<dest_tree> opened;
            if (!tree && sync.on) {
                // The share's folder with no symlink on its path (one a writer of an outer
                // share swapped in would move this share), and SHARE/path made and opened
                // inside it without following one, like every entry: the tree's root is
                // that folder's own descriptor.
                std::string why;
                int share_fd = open_share_root(sync.share_dir.string(), why);
                if (share_fd < 0) {
                    throw std::system_error(errno, std::system_category(), why);
                }
                auto share = std::make_shared<dest_tree>(sync.share_dir, share_fd);
                share->set_receiving(true);
                if (sync.path.empty()) {
                    opened = std::move(share);
                } else {
                    std::error_code ec = share->make_dir(sync.path, !sync.dry_run, &nothing_there);
                    int fd = ec || nothing_there ? -1 : share->open_dir(sync.path, ec);
                    if (ec) {
                        throw std::system_error(ec, sync.path);
                    }
                    if (fd >= 0) {
                        opened = std::make_shared<dest_tree>(root, fd);
                    }
                }
            }
            if (!tree && !nothing_there) {
                tree = opened ? std::move(opened) : std::make_shared<dest_tree>(root);
                tree->set_mirror(sync.on);  // a mirror replaces what is in the way
                tree->set_keep_kinds(!sync.get.empty());  // a get only files and symlinks
                tree->set_root_mirrored(sync.root_mirrored);
                tree->set_receiving(true);
                // A transfer into this folder that never reached its final sync left files
                // that must not be trusted: re-verify them before anything is decided.
                // (A dry run changes nothing: it leaves them to the next real transfer.)
                std::error_code ec;
                auto r = sync.dry_run ? unsynced_journal::recovery{} : unsynced_journal::recover(journals, *tree, ec);
                if (ec) {
                    error = "could not re-verify files left by an interrupted transfer: " + ec.message();
                    code = exit_code::local_io;
                } else if (r.journals > 0) {
                    recovered = "re-verified " + std::to_string(r.verified + r.removed.size()) +
                                " file(s) an interrupted transfer had renamed before its final sync: " +
                                std::to_string(r.verified) + " intact";
                    if (!r.removed.empty()) {
                        recovered += ", " + std::to_string(r.removed.size()) + " damaged and removed (" +
                                     printable(r.removed.front()) + (r.removed.size() > 1 ? ", ..." : "") + ")";
                    }
                    if (!r.left.empty()) {
                        recovered += ", " + std::to_string(r.left.size()) + " replaced or changed since and left alone";
                    }
                }
            }
        } catch (const std::system_error& e) {
            error = e.what();
            code = exit_code::local_io;
        }
        // A get does not turn a file here into a folder, or the other way (as cp -r would not).
        for (std::size_t i = 0; error.empty() && !sync.get.empty() && i < items.size(); ++i) {
            struct stat st {};
            if (items[i].e.path == sync.get && ::lstat((root / sync.get).c_str(), &st) == 0 &&
                S_ISDIR(st.st_mode) != items[i].e.is_dir) {
                error = printable(sync.get) + (!items[i].e.is_dir       ? " is a folder here, and a file at the peer"
                                               : S_ISLNK(st.st_mode) ? " is a symlink here, and a folder at the peer"
                                                                     : " is a file here, and a folder at the peer") +
                        ": give DEST another name";
                code = exit_code::usage;
            }
        }
        // Every entry is checked before any folder is made, so that a batch refused for one
        // entry (a symlink or a file in the way) leaves the destination as it was. The
        // second pass, which creates, checks again: nothing is followed if that changed.
        std::vector<resume_found> found(items.size());
        std::vector<std::optional<basis_sums>> sums(items.size());  // a sync's changed file: its older version
        std::vector<basis_file> basis_fds;  // and that version, open (handed to the file's sink)
        std::vector<bool> identical(items.size(), false);
        // Something is there already: a regular file or symlink (identical or not), or for
        // a folder, a folder.
        std::vector<bool> exists(items.size(), false);
        // A sync's file whose name a FIFO, socket or device at DST has: replaced, so updated.
        std::vector<bool> special_there(items.size(), false);
        // A sync's file or symlink whose name a folder takes: that folder goes first, with
        // what it holds (sync_view: --delete, excludes). What went (or, in a dry run, would).
        std::vector<bool> folder_there(items.size(), false);
        // Why entry i fails alone (fail_alone): a folder that must stay, or that this user
        // may not remove, is where it goes; it could not be looked at; another process
        // writes its partial file. Empty: it does not.
        std::vector<std::string> blocked(items.size());
        std::vector<dest_tree::removed_entry> cleared;
        // Removes (or with `dry` only looks at) the folder where item i goes: false, with
        // `error` set, when it cannot go (something kept in it, or not empty without --delete).
        auto clear_folder = [&](std::size_t i, bool dry) {
            std::string where;
            std::vector<dest_tree::removed_entry> gone;
            std::error_code ec;
            bool excluded = sync.excludes->excluded_or_inside(items[i].e.path, true);
            // Another transfer into this folder writes there (a file it claims, a folder it
            // offered): not this one's to remove now; the sender tries again later.
            bool held = false;
            if (!excluded && !sync.dry_run) {
                std::string folder = tree->full_path(items[i].e.path);
                held = self->claims_->held_by_another(folder, self.get());
                if (held) {
                    self->claims_->ask_holders(folder, self.get());  // are their senders still there?
                }
            }
            if (excluded || held) {
                ec = dest_errc::is_dir;  // an excluded folder is never SRC's to remove
            } else {
                std::function<dest_tree::verdict(const std::string&, bool)> keep;
                if (sync.del) {
                    keep = [&](const std::string& path, bool is_dir) {
                        return sync.excludes->excluded(path, is_dir) ? dest_tree::verdict::keep_whole
                                                                    : dest_tree::verdict::remove;
                    };
                }
                ec = tree->clear_folder(items[i].e.path, keep, dry, gone, where);
            }
            // What went is reported even when the walk failed later on.
            if (dry == sync.dry_run && !(sync.dry_run && sync.del)) {
                cleared.insert(cleared.end(), gone.begin(), gone.end());
            }
            const std::string in_the_way =
                std::string("a folder is in the way of this ") + (items[i].e.is_link ? "symlink" : "file");
            if (ec == dest_errc::is_dir) {
                std::string why = in_the_way + (excluded ? " and is excluded"
                                                : held   ? " and another transfer into the same folder is writing "
                                                           "there; try again once it has ended"
                                                : sync.del ? " and holds excluded paths or SRC's special files"
                                                           : "; it is not empty (--delete removes it)");
                if (!held) {
                    blocked[i] = std::move(why);  // that one fails, as rsync's "could not make way"
                    return true;
                }
                error = items[i].e.path + ": " + why;
                code = exit_code::transfer_failed;
                busy = true;
                return false;
            }
            if (not_permitted(ec)) {
                // One this user may not remove (another user's): that file or link alone
                // fails, as rsync's "could not make way".
                blocked[i] = in_the_way + ": " + removal_error(where, ec);
                return true;
            }
            if (ec) {
                error = removal_error(where, ec);
                code = exit_code::local_io;
                return false;
            }
            return true;
        };
        // The check found a folder where item i (a sync's file or link) goes (`ec` is_dir):
        // marked as there, and looked at as a dry run would; false (`error` set) when it
        // cannot go. Any other `ec` is left to the caller.
        auto folder_in_the_way = [&](std::size_t i, std::error_code& ec, bool& there) {
            if (ec != dest_errc::is_dir) {
                return true;
            }
            ec.clear();
            there = true;
            if (!sync.get.empty()) {
                blocked[i] = get_replaces_nothing(true, items[i].e.is_link);  // fails alone: nothing here is removed
                return true;
            }
            folder_there[i] = true;
            return clear_folder(i, true);
        };
        // The batch stops at item i's error.
        auto fail_item = [&](std::size_t i, std::error_code ec) {
            error = items[i].e.path + ": " + ec.message();
            code = ec.category() == std::system_category() ? exit_code::local_io : exit_code::transfer_failed;
        };
        std::vector<std::uint32_t> mode_there(items.size(), 0);
        std::vector<std::uint64_t> size_there(items.size(), 0);  // of a regular file there
        // A sync's file already there whose permission bits differ: set in place (rsync -a
        // does too), nothing sent.
        std::vector<bool> mode_only(items.size(), false);
        // Sync --checksum: the same content with another mtime, set in place: told as updated too.
        std::vector<bool> mtime_only(items.size(), false);
        // A sync's folder already there whose mode or mtime finish_dir changes: told as
        // updated (rsync -i: .d..tp).
        std::vector<bool> folder_changes(items.size(), false);
        // What a sync does with each file, told to the sender.
        auto action = [&](std::size_t i) {
            if (mode_only[i] || mtime_only[i]) {
                return wire::SYNC_UPDATE;
            }
            if (!sync.on || identical[i]) {
                return wire::SYNC_NONE;
            }
            if (items[i].e.is_dir) {  // (node_events::folder)
                return !exists[i] ? wire::SYNC_CREATE : folder_changes[i] ? wire::SYNC_UPDATE : wire::SYNC_NONE;
            }
            return exists[i] || special_there[i] ? wire::SYNC_UPDATE : wire::SYNC_CREATE;
        };
        // Item i alone fails, for blocked[i], and what is below it (for `below`, if given):
        // a file is given up on right after the Accept, so that nothing of it is counted; a
        // folder or symlink is listed at the end (not_made_), unless `listed` is false (a
        // folder below one that failed: that one is listed).
        auto fail_alone = [&](std::size_t i, const std::string& below = {}, bool listed = true) {
            const entry_info& e = items[i].e;
            if (e.is_file()) {
                refused_files.emplace_back(items[i].id, blocked[i]);
            } else {
                if (e.is_dir) {
                    unmade.emplace(e.path, below.empty() ? blocked[i] : below);
                }
                if (listed || !e.is_dir) {
                    not_made.push_back({e.path, blocked[i], false, false, true, !e.is_dir});
                }
            }
            decisions.push_back({items[i].id, e.is_file() ? wire::ACCEPT_ALL : wire::ACCEPT_SKIP, std::nullopt, {},
                                 e.is_file() ? action(i) : wire::SYNC_FAILED, {}, {}});
        };
        // A get replaces nothing (dest_tree::set_keep_kinds): `ec` saying a file or symlink
        // is where item i's folder (or one it lies in) goes, or a FIFO, socket or device
        // where its file or symlink goes, makes item i fail alone, with what it holds;
        // true then. In the check pass (`create` false) a folder's contents are not looked
        // at either; in the second pass (something put there since) it fails now.
        auto kept_kind = [&](std::size_t i, std::error_code ec, bool create) {
            if (sync.get.empty() ||
                (ec != dest_errc::not_a_dir && ec != dest_errc::symlink && ec != dest_errc::special)) {
                return false;
            }
            const entry_info& e = items[i].e;
            struct stat st {};
            if (ec == dest_errc::special) {
                blocked[i] = std::string("a FIFO, socket or device here, and a ") + (e.is_link ? "symlink" : "file") +
                             " at the peer (a get replaces nothing: move it away first)";
            } else if (e.is_dir && ::lstat((tree->root() / e.path).c_str(), &st) == 0 && !S_ISDIR(st.st_mode)) {
                blocked[i] = get_replaces_nothing(false, S_ISLNK(st.st_mode));
            } else {
                blocked[i] = "below a file or symlink here where the peer has a folder (a get replaces nothing: move it "
                             "away first)";
            }
            if (e.is_dir) {
                absent->insert(e.path);
            }
            if (create) {
                fail_alone(i);
            }
            return true;
        };
        // A dry run decides after the check pass: every file is answered ACCEPT_SKIP (no
        // chunk comes), with what would happen to it.
        // Bytes the batch's Accept may carry beyond each entry's plain answer (at most 12
        // bytes, or a bit): FileAccept.basis (and its `have` bitmap) and same_as.
        // The Offer batch is cut by SRC's paths, and files moved from long paths to short
        // ones, or many small changed files, would otherwise make an Accept over
        // max_header_len (the connection fails). Past it, a new file is sent (or told as
        // created, in a dry run), a changed one sent whole.
        std::size_t extras_room = [&] {
            const std::size_t plain = 12 * items.size() + items.size() / 8 + 8 * 1024;
            return plain < max_header_len ? std::min<std::size_t>(max_header_len - plain, 40 * 1024) : 0;
        }();
        auto take_room = [&](std::size_t cost) {
            if (cost > extras_room) {
                return false;
            }
            extras_room -= cost;
            return true;
        };
        auto take_basis_room = [&](const entry_info& e, std::string_view from) {
            return take_room(from.size() + (chunk_count(e.size) + 7) / 8 + 16);
        };
        auto dry_decisions = [&] {
            for (std::size_t i = 0; i < items.size(); ++i) {
                const entry_info& e = items[i].e;
                if (!blocked[i].empty()) {
                    not_made.push_back({e.path, blocked[i], false, false, true, !e.is_dir});  // would fail
                }
                // A new file with the size and mtime of one DST has elsewhere: the run
                // would start from that one (from_basis, below), and tell of a rename
                // where SRC no longer has it. Told by `basis`, as in the run.
                std::string from;
                if (tree && basis && blocked[i].empty() && e.is_file() && e.size > 0 && !identical[i] && !exists[i] &&
                    !special_there[i]) {
                    if (!basis->built) {
                        basis->build(*tree, sync.get);
                    }
                    if (const dest_tree::file_stamp* f = basis->predict(e, *tree);
                        f != nullptr && f->path != e.path && take_basis_room(e, f->path)) {
                        from = f->path;
                    }
                }
                decisions.push_back({items[i].id,
                                     wire::ACCEPT_SKIP,
                                     std::nullopt,
                                     {},
                                     blocked[i].empty() ? action(i) : wire::SYNC_FAILED,
                                     std::move(from),
                                     {}});
            }
        };
        auto space_check = [&](std::uint64_t here) {
            std::uint64_t want = need > here ? need - here : 0;
            struct statvfs vfs {};
            if (error.empty() && ::statvfs(root.c_str(), &vfs) == 0) {
                std::uint64_t avail = std::uint64_t{vfs.f_bavail} * vfs.f_frsize;
                if (avail < want) {
                    error = "not enough space in " + root.string() + ": transfer needs " + std::to_string(want) +
                            " bytes, " + std::to_string(avail) + " available";
                    code = exit_code::local_io;
                    no_space = true;
                }
            }
        };
        // Chunks this batch may offer back to the sender: their digests travel before the
        // Accept on the control connection, whose queue is bounded (32 MiB of digests).
        std::uint64_t claim_budget = std::uint64_t{2} << 20;
        // The sums `sums` of an older version, open as `fd` (seeded_sums), go with the
        // accept of `it` with the chunks `claims` offers: both count against the budget, and
        // the version stays open for the file's delta while few are.
        auto keep_basis = [&](const item& it, const resume_found& claims, std::optional<basis_sums>& sums, int fd) {
            // (Small sums, 8 bytes a block, count as half a digest each.)
            std::uint64_t cost = (claims.have ? claims.have->count() : 0) + sums->weak.size() +
                                 (sums->fine ? sums->fine->blocks.size() / 2 : 0);
            claim_budget -= std::min(claim_budget, cost);
            if (sums->weak.empty() && (!sums->fine || sums->fine->blocks.empty())) {
                ::close(fd);  // no block, large or small: nothing a delta could copy (the claims hold)
                sums.reset();
            } else if (pinned + basis_fds.size() < max_pinned_bases) {
                basis_fds.emplace_back(it.id, fd, sums->size);
            } else {
                ::close(fd);
            }
        };
        // A file new at DST that SRC may have renamed or copied from one DST has: started
        // from that file and accepted ACCEPT_PARTIAL with its chunks' digests (the sender
        // checks each). False when there is none to start from.
        // The partial file of item `it` started from an older version (its own final file,
        // or `from`) and filled: that version's sums (a delta's basis) and the chunks it
        // holds (in `claims`), or false (and no partial file left) when it could not be
        // started, read or written.
        auto seeded = [&](const item& it, std::string_view from, resume_found& claims,
                          std::optional<basis_sums>& sums) {
            std::optional<partial_seed> seed = tree->start_seed(it.e.path, it.e.size, from);
            if (!seed) {
                return false;
            }
            int fd = -1;
            sums = seeded_sums(it.e, std::move(*seed), self->ctx_.workers, claim_budget, claims, fd);
            if (!sums) {
                tree->remove_partial(it.e.path, true, true);
                claims = {};
                return false;
            }
            keep_basis(it, claims, sums, fd);
            return true;
        };
        // A sync's changed file resumed from an interrupted attempt's partial file: that
        // file's chunks are offered where they are (`claims`), and DST's own file, which
        // stays as it was until the new version replaces it, is the basis of a delta for
        // the rest, as it was for the attempt. (Without it, a rerun after insertions sent
        // nearly every chunk whole.) Its sums only: nothing is copied. None when it cannot
        // be read (the chunks not kept are then sent as they are).
        auto resumed_basis = [&](const item& it, std::optional<basis_sums>& sums) {
            if (claim_budget == 0) {
                return;  // no room left to tell of it
            }
            std::error_code ec;
            partial_seed older;  // no partial file, no bytes to copy: seeded_sums only reads
            older.basis.reset(tree->open_final_read(it.e.path, ec));
            if (older.basis.get() < 0) {
                return;
            }
            resume_found none;  // (it claims nothing: no byte of it is in the partial file; the
            int fd = -1;        // partial file's own claims were counted when found)
            sums = seeded_sums(it.e, std::move(older), self->ctx_.workers, claim_budget, none, fd);
            if (sums) {
                keep_basis(it, none, sums, fd);
            }
        };
        auto from_basis = [&](std::size_t i) {
            const entry_info& e = items[i].e;
            if (!basis || e.is_dir || e.size == 0 || identical[i] || exists[i] || special_there[i] ||
                claim_budget == 0) {
                return false;
            }
            if (!basis->built) {
                basis->build(*tree, sync.get);
            }
            const dest_tree::file_stamp* from = basis->find(e);
            if (from == nullptr || from->path == e.path || !take_basis_room(e, from->path)) {
                return false;  // nothing like it (or no room left to tell of it)
            }
            // An earlier attempt's partial file resumes a file large enough to resume.
            // One too small to resume would be sent whole: it goes, and the copy here
            // is made instead (an interrupted run's renamed small files were sent again).
            bool partial = tree->partial_size(e.path) != 0;
            if (partial && resumable(e)) {
                return false;
            }
            tree->remove_partial(e.path, partial, true);  // else a record without data: stale
            resume_found r;
            std::optional<basis_sums> sums;
            if (!seeded(items[i], from->path, r, sums)) {
                return false;
            }
            decisions.push_back({items[i].id, wire::ACCEPT_PARTIAL, std::move(r.have), std::move(r.digests), action(i),
                                 from->path, std::move(sums)});
            return true;
        };
        // Folders of the batch found missing by the check: what they hold is not there
        // either (parents come before their contents in an offer), so it is not looked
        // for, neither by the check nor after the second pass made the folder.
        // (A dry run's set lives on over its batches: `absent` then is the session's.)
        //
        // The check's look at the batch's regular files, taken ahead over the pool's
        // workers (a no-change sync of a big tree is mostly these stats): the batch's
        // folders first, one at a time, as the check finds them (those missing go into
        // `absent`), then every file not in a missing folder. Nothing is made or changed
        // by either, so the check takes these answers in its own order instead of
        // looking again.
        struct look {
            bool done = false;
            bool same = false;
            bool there = false;
            bool special = false;
            std::error_code ec;
            small_basis basis;        // for the accept (below), read here too (not with --checksum,
            bool basis_read = false;  // whose content check decides what changed)
        };
        // A changed one-chunk file DST has at the same size (touched at SRC, or bytes
        // changed in place): the digest of DST's file goes with the accept, and a sender
        // whose chunk is the same sends none of its bytes (CODEC_SAME: the file keeps its
        // bytes and takes SRC's mode and mtime). One that differs costs this read, and comes
        // as any other. And one of 1 KiB to 1 MiB at DST (a file edited at SRC): its sums in
        // small blocks go with the accept, and the sender sends what it finds of them as
        // copies (CODEC_DELTA).
        auto basis_candidate = [&](const entry_info& e, bool identical_there, bool there, std::uint64_t size) {
            // (With --checksum a file found different by content is not read again for its
            // digest: only for its sums.)
            return sync.on && !sync.dry_run && !identical_there && there && e.is_file() && e.size > 0 &&
                   ((chunk_count(e.size) == 1 && size == e.size && !sync.checksum) || small_delta_candidate(e, size));
        };
        std::vector<look> ahead;
        std::vector<std::optional<small_basis>> bases;  // read over the workers for the answers (below)
        if (tree && items.size() >= 512 && self->ctx_.workers.size() > 1) {
            std::vector<std::size_t> files;
            for (std::size_t i = 0; i < items.size(); ++i) {
                const entry_info& e = items[i].e;
                bool in_absent = absent->contains(std::string(wire_parent(e.path)));
                if (e.is_dir) {
                    bool missing = in_absent;
                    if (!in_absent) {
                        tree->make_dir(e.path, false, &missing);  // an error is the check's to report
                    }
                    if (missing) {
                        absent->insert(e.path);
                    }
                } else if (!e.is_link && !in_absent) {
                    files.push_back(i);
                }
            }
            const std::size_t parts = std::min<std::size_t>(files.size() / 256, 16);
            if (parts > 1) {
                ahead.resize(items.size());
                self->ctx_.workers.run_parts(parts, [&](std::size_t p) {
                    for (std::size_t k = files.size() * p / parts; k < files.size() * (p + 1) / parts; ++k) {
                        const entry_info& e = items[files[k]].e;
                        look& l = ahead[files[k]];
                        l.ec = tree->check_file(e.path, overwrite, e.size, e.mtime_ns, l.same, false, &l.there,
                                                &mode_there[files[k]], &size_there[files[k]], &l.special);
                        if (!l.ec && !sync.checksum && basis_candidate(e, l.same, l.there, size_there[files[k]])) {
                            l.basis = read_small_basis(*tree, e, size_there[files[k]]);
                            l.basis_read = true;
                        }
                        l.done = true;
                    }
                });
            }
        }
        for (bool create : {false, true}) {
            if (!tree) {
                if (error.empty()) {
                    dry_decisions();  // a dry run into a folder not there yet: all created
                }
                break;
            }
            if (create && sync.dry_run) {
                dry_decisions();
                break;
            }
            if (create && self->ctx_.workers.size() > 1) {
                // The changed files' older versions (their digests and sums, below), read
                // over the pool's workers where the look did not read them.
                std::vector<std::size_t> reads;
                for (std::size_t i = 0; i < items.size(); ++i) {
                    if (!folder_there[i] && blocked[i].empty() && (ahead.empty() || !ahead[i].basis_read) &&
                        basis_candidate(items[i].e, identical[i], exists[i], size_there[i])) {
                        reads.push_back(i);
                    }
                }
                if (reads.size() > 1) {
                    bases.resize(items.size());
                    const std::size_t parts = std::min(reads.size(), 4 * self->ctx_.workers.size());
                    self->ctx_.workers.run_parts(parts, [&](std::size_t p) {
                        for (std::size_t k = reads.size() * p / parts; k < reads.size() * (p + 1) / parts; ++k) {
                            bases[reads[k]] = read_small_basis(*tree, items[reads[k]].e, size_there[reads[k]]);
                        }
                    });
                }
            }
            for (std::size_t i = 0; i < items.size() && error.empty(); ++i) {
                const item& it = items[i];
                bool same = false;
                const entry_info& e = it.e;
                if (auto up = create && !unmade.empty() ? unmade.find(std::string(wire_parent(e.path))) : unmade.end();
                    up != unmade.end()) {
                    // In a folder that could not be made or looked at: what is below it
                    // fails with it (a folder not listed: the folder above it is).
                    std::string why = up->second;
                    blocked[i] = e.is_link ? "symlink not made: " + why : why;
                    fail_alone(i, why, false);
                    continue;
                }
                if (create && !blocked[i].empty()) {
                    fail_alone(i);
                    continue;
                }
                if (e.is_link) {
                    // A sync's symlink: looked at by the check, made (or renamed over what
                    // is there) by the second pass. Nothing is sent either way.
                    std::error_code ec;
                    if (!create && !absent->contains(std::string(wire_parent(e.path)))) {
                        bool there = false;
                        ec = tree->check_link(e.path, e.link_target, e.mtime_ns, same, false, there);
                        if (kept_kind(i, ec, false)) {
                            continue;
                        }
                        if (!folder_in_the_way(i, ec, there)) {
                            break;
                        }
                        if (not_permitted(ec)) {
                            // One this user may not look at (a folder of another user's
                            // that it may not list or search): it alone fails.
                            blocked[i] = "cannot look at it here: " + ec.message();
                            continue;
                        }
                        identical[i] = same;
                        exists[i] = there;
                    } else if (create && !identical[i]) {
                        if (folder_there[i] && !clear_folder(i, false)) {
                            break;
                        }
                        if (!blocked[i].empty()) {
                            fail_alone(i);  // the folder in its way could not go after all
                            continue;
                        }
                        ec = tree->make_link(e.path, e.link_target, e.mtime_ns);
                        if (kept_kind(i, ec, true)) {
                            continue;
                        }
                        if (ec && ec.category() == std::system_category() && file_level(ec)) {
                            // One this user may not make (its folder is another user's): it
                            // alone fails, as a file that cannot be written does.
                            blocked[i] = "symlink not made: " + ec.message();
                            fail_alone(i);
                            continue;
                        }
                    }
                    if (ec) {
                        fail_item(i, ec);
                        break;
                    }
                    if (create) {
                        decisions.push_back({it.id, wire::ACCEPT_SKIP, std::nullopt, {}, action(i), {}, {}});
                    }
                    continue;
                }
                if (absent->contains(std::string(wire_parent(e.path)))) {
                    if (!create) {
                        if (e.is_dir) {
                            absent->insert(e.path);
                        }
                        continue;
                    }
                    if (!e.is_dir) {
                        // In a folder this pass has just made (from the offer, before
                        // it): nothing to look at.
                        if (!from_basis(i)) {
                            decisions.push_back({it.id, wire::ACCEPT_ALL, std::nullopt, {}, action(i), {}, {}});
                        }
                        continue;
                    }
                }
                if (create && identical[i] && !e.is_dir && !found[i].have) {
                    // Already there and nothing is written: the check pass's look is enough.
                    if (mode_only[i]) {
                        std::uint32_t mode = e.mode & 0777;  // a setuid, setgid or sticky bit here goes too
                        if (std::error_code mec = tree->set_final_mode(e.path, mode)) {
                            // DST's file is not SRC's: it fails (as rsync's "failed to set
                            // permissions"), told of with the TransferResult.
                            not_made.push_back({e.path, "could not set its permission bits: " + mec.message(), false,
                                                false, true, true});
                            decisions.push_back({it.id, wire::ACCEPT_SKIP, std::nullopt, {}, wire::SYNC_FAILED, {}, {}});
                            continue;
                        }
                    }
                    decisions.push_back({it.id, wire::ACCEPT_SKIP, std::nullopt, {}, action(i), {}, {}});
                    continue;
                }
                bool missing = false;
                bool is_there = false;
                bool special = false;
                if (create && folder_there[i] && !clear_folder(i, false)) {
                    break;
                }
                if (create && !blocked[i].empty()) {
                    fail_alone(i);  // the folder in its way could not go after all
                    continue;
                }
                std::error_code ec;
                if (!create && !ahead.empty() && ahead[i].done) {
                    ec = ahead[i].ec;  // looked at ahead (above)
                    same = ahead[i].same;
                    is_there = ahead[i].there;
                    special = ahead[i].special;
                } else if (create && !e.is_dir && !exists[i] && !folder_there[i]) {
                    // The check pass found nothing at its name (in a folder that is
                    // there): nothing to look at again. A file put there meanwhile meets
                    // the final rename, which replaces only where replacing is asked for
                    // (RENAME_NOREPLACE otherwise), as one put there after this pass would.
                } else {
                    dest_tree::removed_entry replaced;
                    ec = e.is_dir ? tree->make_dir(e.path, create, &missing, &replaced)
                                  : tree->check_file(e.path, overwrite, e.size, e.mtime_ns, same, create,
                                                     create ? nullptr : &is_there, create ? nullptr : &mode_there[i],
                                                     create ? nullptr : &size_there[i], create ? nullptr : &special);
                    // A file or symlink SRC made a folder: it goes (a dry run's check tells
                    // it would), and is reported as deleted, as a folder in a file's way is.
                    // (Not in a get: kept_kind, below.)
                    if (!replaced.path.empty() && create != sync.dry_run) {
                        cleared.push_back(std::move(replaced));
                    }
                }
                if (missing) {
                    absent->insert(e.path);
                }
                if (kept_kind(i, ec, create)) {
                    continue;
                }
                if (sync.on && !create && !folder_in_the_way(i, ec, is_there)) {
                    break;
                }
                if (ec && create && e.is_dir && ec.category() == std::system_category() && file_level(ec)) {
                    // A folder this user may not make: it and what is below it fail, the
                    // rest goes on (as rsync's "mkdir failed").
                    blocked[i] = "folder not made: " + ec.message();
                    fail_alone(i, ec.message());
                    continue;
                }
                if (!create && not_permitted(ec)) {
                    // (As for a symlink, above; and what is below a folder fails with it.)
                    blocked[i] = "cannot look at it here: " + ec.message();
                    continue;
                }
                if (ec) {
                    fail_item(i, ec);
                    break;
                }
                if (!create) {
                    identical[i] = same;
                    exists[i] = e.is_dir ? !missing : is_there;
                    special_there[i] = !e.is_dir && special;
                    folder_changes[i] = sync.on && e.is_dir && exists[i] && !e.path.empty() &&
                                        tree->folder_differs(e.path, e.mode, e.mtime_ns);
                    if (sync.checksum && is_there && e.digest) {
                        bool other_mtime = false;
                        identical[i] = same_content(*tree, e, !sync.dry_run, other_mtime);  // content decides
                        mtime_only[i] = other_mtime;
                    }
                    // Permission bits only: a file's set-user-ID, set-group-ID and sticky bits a
                    // peer never sets, and those DST's file has go (rsync -a would give it
                    // SRC's; a setuid program must not stay one with SRC's other bits).
                    mode_only[i] = sync.on && identical[i] && is_there && mode_there[i] != (e.mode & 0777);
                    continue;
                }
                if (found[i].have) {
                    decisions.push_back({it.id, wire::ACCEPT_PARTIAL, std::move(found[i].have), std::move(found[i].digests),
                                         action(i), {}, std::move(sums[i])});
                } else if (!e.is_dir && from_basis(i)) {
                    continue;
                } else {
                    small_basis basis;
                    if (!folder_there[i] && basis_candidate(e, identical[i], exists[i], size_there[i])) {
                        // (Read over the workers with the check's look, for a big batch.)
                        basis = !ahead.empty() && ahead[i].basis_read ? std::move(ahead[i].basis)
                                : !bases.empty() && bases[i]          ? std::move(*bases[i])
                                                                      : read_small_basis(*tree, e, size_there[i]);
                    }
                    if (basis.same_as && !take_room(20)) {
                        basis.same_as.reset();  // sent whole
                    }
                    decisions.push_back({it.id,
                                         identical[i] ? wire::ACCEPT_SKIP : wire::ACCEPT_ALL,
                                         std::nullopt,
                                         {},
                                         action(i),
                                         {},
                                         {},
                                         basis.same_as,
                                         std::move(basis.sums)});
                }
            }
            // The files this batch writes are this transfer's until it ends: one that another
            // transfer into the same folder is writing refuses the batch as busy, before
            // any partial file is touched (the sender tries again later).
            // All of the batch or none of it (two transfers taking the same files in other
            // orders must not each hold some).
            if (!create && error.empty() && !sync.dry_run) {
                std::vector<std::string> writes;
                std::vector<std::string> folders;
                if (!self->sync_path_.empty()) {
                    folders.push_back(tree->root().string());  // the sync's own folder, below the share's
                }
                for (std::size_t i = 0; i < items.size(); ++i) {
                    if (items[i].e.is_file() && !identical[i]) {
                        writes.push_back(tree->full_path(items[i].e.path));
                    } else if (items[i].e.is_dir) {
                        folders.push_back(tree->full_path(items[i].e.path));
                    }
                }
                if (std::optional<std::size_t> taken = self->claims_->claim_all(writes, self.get())) {
                    self->claims_->ask_holders(writes[*taken], self.get());  // is that one's sender still there?
                    error = printable(writes[*taken]) + " is being received by another transfer into the same folder; "
                                                        "try again once it has ended";
                    code = exit_code::transfer_failed;
                    busy = true;
                } else {
                    self->claims_->use_folders(folders, self.get());  // another's --delete leaves them
                }
            }
            if (!create && error.empty()) {
                // Room for what is still to come: files already here need none, nor the
                // chunks resumed files keep. First with every partial file's bytes
                // counted as kept (a bound, before any is read: an offer that cannot fit
                // is refused before its partial files are hashed), then with what the
                // hashing found.
                std::uint64_t here = 0;
                std::vector<bool> partial(items.size(), false);
                std::vector<bool> seed(items.size(), false);
                for (std::size_t i = 0; i < items.size(); ++i) {
                    if (identical[i]) {
                        here += items[i].e.size;
                    } else if (!blocked[i].empty()) {
                        // It fails alone: its partial file (an earlier attempt's) is neither
                        // read nor removed, for a later run to resume from.
                    } else if (resumable(items[i].e)) {
                        bool locked = false;
                        std::uint64_t bytes = tree->partial_size(items[i].e.path, &locked);
                        if (locked && !sync.dry_run) {
                            // Another process writes this name: this file alone fails, before
                            // anything of it is sent (nor is its partial file read).
                            blocked[i] = make_error_code(dest_errc::busy).message();
                            continue;
                        }
                        if (bytes == 0 && sync.on && !sync.dry_run && exists[i] && !folder_there[i]) {
                            // A changed file of a sync: its old version seeds the new one
                            // and is the basis of a delta, so that only what differs
                            // travels (below: its sums, and the chunks the seed holds as
                            // they are; the sender checks every digest). No partial data,
                            // so any resume record is stale. The seed is written below:
                            // until then it takes room like the rest of the new version.
                            tree->remove_partial(items[i].e.path, false, true);
                            seed[i] = true;
                        }
                        partial[i] = bytes > 0;
                        here += std::min(bytes, items[i].e.size);
                    }
                }
                resuming = here > 0;
                space_check(here);
                here = 0;
                for (std::size_t i = 0; i < items.size() && error.empty() && !sync.dry_run; ++i) {
                    if (seed[i]) {
                        seeded(items[i], {}, found[i], sums[i]);
                    } else if (partial[i]) {
                        // What an interrupted attempt left: offered to the sender, which
                        // checks every chunk's digest before it skips the chunk.
                        const bool seed_instead = sync.on && exists[i] && !folder_there[i];
                        found[i] = find_resume(*tree, items[i].e, claim_budget, known[i] ? &*known[i] : nullptr,
                                               seed_instead);
                        claim_budget -= found[i].have ? std::min(claim_budget, found[i].have->count()) : 0;
                        // (With no budget left, find_resume offers nothing: the partial
                        // file stays, and its chunks are sent again.)
                        const bool nothing_kept = !found[i].have && claim_budget > 0;
                        if (seed_instead && (found[i].restarted || found[i].no_record || nothing_kept)) {
                            // The attempt was for another version of SRC's file, left no
                            // record of what it wrote (killed within its first seconds), or
                            // left no chunk to keep: DST's own file seeds the new one
                            // instead, as when nothing was left, so that a delta finds what
                            // moved (the partial file's chunks are only ever offered where
                            // they are).
                            // (Neither of the first two read the partial file: no chunk was
                            // claimed.)
                            resumed.push_back(printable(items[i].e.path) + ": an interrupted attempt's partial file " +
                                              (found[i].no_record   ? "was not recorded"
                                               : found[i].restarted ? "was for another version"
                                                                    : "held no chunk to keep") +
                                              ": starting from the file here instead");
                            tree->remove_partial(items[i].e.path, true, true);
                            found[i] = {};
                            seeded(items[i], {}, found[i], sums[i]);
                        } else {
                            if (!found[i].note.empty()) {
                                resumed.push_back(std::move(found[i].note));
                            }
                            if (seed_instead) {
                                resumed_basis(items[i], sums[i]);
                            }
                        }
                    }
                    here += identical[i] ? items[i].e.size : found[i].kept_bytes;
                }
                space_check(here);
            }
        }
        lock.reset();
        asio::post(self->ctx_.io, [self, tree, decisions = std::move(decisions), error, code, recovered, no_space, resuming, busy,
                                   resumed = std::move(resumed), basis_fds = std::move(basis_fds),
                                   cleared = std::move(cleared), not_made = std::move(not_made),
                                   refused_files = std::move(refused_files)]() mutable {
            self->offer_busy_ = false;
            // Gone even if the batch or the transfer failed meanwhile (the report waits).
            self->send_deleted(std::move(cleared));
            if (!recovered.empty()) {
                self->ctx_.log(recovered);
            }
            constexpr std::size_t shown = 5;
            for (std::size_t i = 0; i < resumed.size() && i < shown; ++i) {
                self->ctx_.log(resumed[i]);
            }
            if (resumed.size() > shown) {
                self->ctx_.log("... and " + std::to_string(resumed.size() - shown) + " more file(s) resumed or restarted");
            }
            if (self->failed_) {
                self->settle();
                return;
            }
            self->tree_ = tree;
            if (!error.empty()) {
                // Too little room for a retry at a node that stays may be room later (a
                // retry after a disk that filled mid-transfer meets this check first); a
                // transfer too large from its start is refused for good.
                self->fail(busy                                                   ? wire::ERROR_BUSY
                           : no_space && resuming && !self->ctx_.config.one_shot ? wire::ERROR_NO_SPACE
                           : code == exit_code::local_io                  ? wire::ERROR_IO
                                                                          : wire::ERROR_REFUSED,
                           code,
                           "refused transfer: " + error,
                           no_space ? std::optional<refusal>(refusal::disk_space) : std::nullopt);
                return;
            }
            self->files_.resize(self->machine_.total_files());
            for (skipped_file& n : not_made) {
                log_failed(self->ctx_, n);
                self->not_made_.push_back(std::move(n));
            }
            for (const auto& d : decisions) {
                if (d.action == wire::SYNC_FAILED) {
                    continue;  // not made: no mode, mtime or event for it (not_made_)
                }
                if (const entry_info& e = self->machine_.entry(d.id); e.is_dir) {
                    self->dirs_.push_back(e);
                    if (self->ctx_.events.folder && self->sync_target() != nullptr) {
                        if (d.action == wire::SYNC_UPDATE) {
                            self->folder_updates_.push_back(e.path);  // told once its mode and mtime are set
                        } else {
                            self->ctx_.events.folder(e.path, d.action);
                        }
                    }
                }
                if (d.kind == wire::ACCEPT_SKIP) {
                    // It may have been renamed by a transfer that has not synced yet:
                    // success is reported only once it is on disk too.
                    self->need_syncfs_ = true;
                    // With what a sync does to it (a dry run's every file; permission
                    // bits set in place), as the sender reports it for a push. A dry
                    // run's file it would start from another: a rename or not, once all
                    // is offered.
                    if (!d.basis.empty()) {
                        self->maybe_renamed_.push_back({d.id, self->machine_.entry(d.id), d.action, d.basis});
                    } else {
                        self->files_.done(self->ctx_.events.file, d.id, self->machine_.entry(d.id), true, d.action);
                    }
                }
            }
            wire::Header h;
            std::uint64_t kept_before = self->machine_.kept_bytes();
            *h.mutable_accept() = self->machine_.accept(decisions);
            self->send_have_digests(decisions);
            if (std::uint64_t kept = self->machine_.kept_bytes() - kept_before; kept > 0 && self->ctx_.events.resumed) {
                std::uint64_t files = std::count_if(decisions.begin(), decisions.end(),
                                                    [](const auto& d) { return d.kind == wire::ACCEPT_PARTIAL; });
                self->ctx_.events.resumed("receive", self->session_id_, kept, files);
            }
            for (const auto& d : decisions) {
                // A file that comes (a skipped one has nothing to write, and no sink).
                if (const entry_info& e = self->machine_.entry(d.id); e.is_file() && d.kind != wire::ACCEPT_SKIP) {
                    auto sink = std::make_shared<sink_file>();
                    sink->resumed = d.kind == wire::ACCEPT_PARTIAL;
                    sink->action = d.action;
                    sink->from = d.basis;
                    if (d.sums || d.small) {
                        sink->basis = d.basis.empty() ? e.path : d.basis;
                    }
                    self->sinks_[d.id.value] = std::move(sink);
                }
            }
            for (basis_file& b : basis_fds) {
                if (auto sink = self->sink_of(b.id); sink && !sink->basis.empty()) {
                    sink->basis_fd = std::exchange(b.fd, -1);
                    sink->basis_size = b.size;
                    sink->pinned = true;
                    ++self->pinned_bases_;
                }
            }
            self->send_control(h);
            // A pull opens its data connections when there is data to come (a sync that
            // changes nothing needs none, nor do files refused right away, below).
            std::unordered_set<std::uint32_t> refused_ids;
            for (const auto& r : refused_files) {
                refused_ids.insert(r.first.value);
            }
            const bool data_due = std::any_of(decisions.begin(), decisions.end(), [&](const receiver_machine::decision& d) {
                return d.kind != wire::ACCEPT_SKIP && self->machine_.entry(d.id).size > 0 &&
                       !refused_ids.contains(d.id.value);
            });
            for (const auto& [id, why] : refused_files) {
                // Nothing of it was written here: a partial file of its name is not this
                // transfer's to remove (another process's, or one a later run resumes from).
                self->give_up_here(id, self->machine_.entry(id).path, why, false);
            }
            if (self->pull_ && !self->data_conns_opened_ && data_due) {
                self->open_data_connections();
            }
            self->check_all_done();
            self->next_offer();
        });
    });
}

void receive_session::on_file_abort(const wire::FileAbort& abort) {
    if (abort.file_id() < machine_.total_files() && machine_.failed_here(file_id{abort.file_id()})) {
        return;  // sent before the sender heard that this side gave the file up
    }
    if (std::error_code ec = machine_.on_file_abort(abort)) {
        fail(wire::ERROR_PROTOCOL, exit_code::transfer_failed, "protocol error from " + log_id(peer_id_) + ": " + ec.message());
        return;
    }
    file_id f{abort.file_id()};
    const entry_info& e = machine_.entry(f);
    ctx_.log("not sent: " + printable(e.path) + ": " + printable(abort.reason()) + " (the sender skipped it; left as it was here)",
             log_level::warn);
    given_up_.push_back({e.path, printable(abort.reason()), abort.vanished(), abort.again(), false, true, 1, true});
    dirty_.erase(f.value);
    drop_partial(f);
    next_offer();  // one fewer in progress
    check_all_done();
}

void receive_session::send_file_result(file_id f, const std::string& error) {
    wire::Header h;
    wire::FileResult* r = h.mutable_file_result();
    r->set_file_id(f.value);
    r->set_ok(error.empty());
    r->set_error(error);
    send_control(h);
}

void receive_session::give_up_here(file_id f, const std::string& path, std::error_code ec) {
    give_up_here(f, path, ec.message());
}

void receive_session::give_up_here(file_id f, const std::string& path, const std::string& why, bool drop) {
    if (!machine_.give_up(f)) {
        // The sender gave it up while its whole-file write was out (drop_partial left it
        // to that write's end, report_done): nothing to tell, and it is done with here.
        if (auto sink = sink_of(f); sink && sink->whole == 0 && machine_.aborted(f)) {
            sinks_.erase(f.value);
            machine_.release(f);
            next_offer();
            check_all_done();
        }
        return;
    }
    send_file_result(f, why);
    given_up_.push_back({path, "not written here: " + why, false, false, true});
    log_failed(ctx_, given_up_.back());
    dirty_.erase(f.value);
    if (drop && sink_of(f)) {
        drop_partial(f);
    } else {
        sinks_.erase(f.value);  // (refused before anything of it was written: nothing open)
        machine_.release(f);
    }
    next_offer();  // one fewer in progress
    check_all_done();
}

void receive_session::unpin(sink_file& sink) {
    if (sink.pinned) {
        sink.pinned = false;
        --pinned_bases_;  // its worker job closes basis_fd
    }
}

void receive_session::drop_partial(file_id f) {
    auto sink = sink_of(f);
    ++finalizing_;  // the transfer ends after this
    if (sink->writes > 0) {
        sink->drop = true;  // once its writes in flight are done (it stays counted meanwhile)
        return;
    }
    ++tasks_out_;
    unpin(*sink);
    // A whole-file write of it still out (a file of one chunk) names it as it always did:
    // with --fsync-each through a partial file of its own, which is not this one's to remove.
    const bool whole_out = sink->whole > 0;
    ctx_.workers.post([self = shared_from_this(), f, sink, tree = tree_, path = machine_.entry(f).path, whole_out] {
        {
            std::lock_guard lock(sink->mutex);
            if (sink->fd >= 0) {
                ::close(sink->fd);
                sink->fd = -1;
            }
            if (sink->basis_fd >= 0) {
                ::close(sink->basis_fd);
                sink->basis_fd = -1;
            }
            sink->finalized = true;  // no resume record for it any more
        }
        if (tree) {
            tree->remove_partial(path, !whole_out, true);
        }
        asio::post(self->ctx_.io, [self, f, sink, whole_out] {
            // Done with: its state goes, so that the files after it are forgotten too;
            // unless a whole-file write of it was out, which names and reports it as it
            // always did (report_done then releases it; that write may be done by now and
            // its name still to come).
            if (!whole_out && sink->whole == 0 && self->sink_of(f) == sink) {
                self->sinks_.erase(f.value);
                self->machine_.release(f);
            }
            --self->finalizing_;
            --self->tasks_out_;
            self->check_all_done();
            self->settle();
        });
    });
}

void receive_session::on_chunk(connection& c, const wire::Chunk& chunk, pooled_buffer payload) {
    if (!admit_chunk(c, chunk, payload.size())) {
        return;
    }
    if (machine_.single_chunk(file_id{chunk.file_id()})) {
        write_whole_file(c.index, chunk, std::move(payload));
        return;
    }
    auto owner = std::make_shared<pooled_buffer>(std::move(payload));
    std::span<const std::uint8_t> bytes = owner->span();
    write_chunk(c.index, chunk, std::move(owner), bytes);
}

void receive_session::on_chunk_run(connection& c, const wire::ChunkRun& run, pooled_buffer payload) {
    std::vector<run_entry> entries;
    if (!split_run(payload.span(), run.count(), entries) || run.first() > UINT32_MAX - run.count()) {
        fail(wire::ERROR_PROTOCOL, exit_code::transfer_failed,
             "protocol error from " + log_id(peer_id_) + ": a ChunkRun frame that does not split into its chunks");
        return;
    }
    // Each chunk as its own CODEC_DELTA Chunk frame would be; their writes hold the frame,
    // and they are confirmed together once the last is written: one ChunkAck, which lets
    // the sender's window take the next run whole (acks of one chunk each let it take one
    // chunk at a time, a frame each).
    auto owner = std::make_shared<pooled_buffer>(std::move(payload));
    auto acks = std::make_shared<run_acks>();
    wire::Chunk chunk;
    chunk.set_file_id(run.file_id());
    chunk.set_codec(wire::CODEC_DELTA);
    for (std::uint32_t k = 0; k < run.count() && !failed_; ++k) {
        chunk.set_index(run.first() + k);
        chunk.set_raw_len(k + 1 < run.count() ? chunk_size : run.last_raw_len());
        chunk.set_hash_lo(entries[k].digest.lo);
        chunk.set_hash_hi(entries[k].digest.hi);
        if (!admit_chunk(c, chunk, entries[k].ops.size())) {
            continue;
        }
        if (machine_.single_chunk(file_id{chunk.file_id()})) {
            fail(wire::ERROR_PROTOCOL, exit_code::transfer_failed,
                 "protocol error from " + log_id(peer_id_) + ": a ChunkRun frame for a file of one chunk");
            return;
        }
        write_chunk(c.index, chunk, owner, entries[k].ops, acks);
        ++acks->count;
    }
}

bool receive_session::admit_chunk(connection& c, const wire::Chunk& chunk, std::size_t payload_len) {
    if (std::error_code ec = machine_.on_chunk(chunk, static_cast<std::uint32_t>(payload_len))) {
        fail(wire::ERROR_PROTOCOL, exit_code::transfer_failed,
             "protocol error from " + log_id(peer_id_) + ": " + ec.message());
        return false;
    }
    file_id f{chunk.file_id()};
    if (machine_.aborted(f)) {
        return false;  // sent before the sender gave up on the file
    }
    chunk_index idx{chunk.index()};
    std::uint32_t conn = c.index;
    std::uint64_t key = chunk_key(f, idx);
    if (machine_.finished(f)) {
        // Sent again after its first copy's connection was lost with the ack on its way,
        // and the file was made final from that copy meanwhile: confirmed again.
        queue_ack(conn, key);
        return false;
    }
    if (machine_.holds(f, idx, digest128{chunk.hash_lo(), chunk.hash_hi()})) {
        queue_ack(conn, key);  // a duplicate after a requeue: confirm again
        return false;
    }
    if (auto [it, fresh] = writing_.try_emplace(key); !fresh) {
        // A duplicate of a chunk being written (sent again after its first connection was
        // lost): that write's ack confirms it on this connection too.
        if (std::find(it->second.begin(), it->second.end(), conn) == it->second.end()) {
            it->second.push_back(conn);
        }
        return false;
    }
    files_.started(ctx_.events.file, f, machine_.entry(f));
    sink_of(f)->got_bytes = true;
    if (c.index < redials_.size()) {
        redials_[c.index].failures = 0;  // it carries data again
    }
    return true;
}

void receive_session::write_chunk(std::uint32_t conn, const wire::Chunk& chunk, std::shared_ptr<pooled_buffer> owner,
                                  std::span<const std::uint8_t> bytes, std::shared_ptr<run_acks> acks) {
    file_id f{chunk.file_id()};
    chunk_index idx{chunk.index()};
    ++writes_;
    auto sink = sink_of(f);
    ++sink->writes;
    bool create = !sink->resumed;
    auto tree = tree_;
    std::string path = machine_.entry(f).path;
    digest128 expect{chunk.hash_lo(), chunk.hash_hi()};
    std::uint64_t offset = std::uint64_t{idx.value} * chunk_size;
    chunk_encoding encoding{chunk.codec(), chunk.raw_len()};
    ctx_.workers.post([self = shared_from_this(), sink, tree, path = std::move(path), expect, offset, f, idx, conn,
                       encoding, create, owner = std::move(owner), bytes, acks = std::move(acks)]() mutable {
        if (encoding.codec == wire::CODEC_DELTA) {
            // The older version stays at its final name until this file replaces it; if
            // it changed meanwhile, the chunk fails its digest check (and the file alone
            // fails, below).
            std::lock_guard lock(sink->mutex);
            fault_edit_basis(*tree, sink->basis);
            if (sink->basis_fd < 0) {
                sink->basis_fd = open_basis(*tree, sink->basis, sink->basis_size);
            }
            encoding.basis_fd = sink->basis_fd;
            encoding.basis_size = sink->basis_size;
        }
        verified_chunk checked = verify_chunk(bytes, encoding, expect);
        std::span<const std::uint8_t> raw = checked.raw;
        chunk_verdict verdict = checked.verdict;
        std::error_code ec;
        stats_clock::duration write_time{};
        if (basis_changed(bytes, encoding, verdict)) {
            // Not the bytes the older version's sums told of: it changed here since they
            // were read (or went). That file fails alone, as a CODEC_SAME one does.
            verdict = chunk_verdict{};
            ec = dest_errc::changed;
        } else if (!verdict.bad) {
            int fd;
            {
                std::lock_guard lock(sink->mutex);
                // (A resumed file's partial file holds the chunks kept: it must still be
                // there, never an empty one made in its place.)
                fd = sink->partial_fd(*tree, path, create, ec);
            }
            if (!ec) {
                std::lock_guard write_lock(sink->write_mutex);
                auto t0 = stats_clock::now();
                ec = write_at(fd, raw.data(), raw.size(), offset);
                write_time = stats_clock::now() - t0;
            }
        }
        owner.reset();
        asio::post(self->ctx_.io, [self, sink, f, idx, conn, verdict, ec, path, write_time, acks = std::move(acks)] {
            --self->writes_;
            --sink->writes;
            std::vector<std::uint32_t> also = self->written(chunk_key(f, idx));
            if (self->failed_) {
                self->settle();
                return;
            }
            if (sink->writes == 0 && sink->finalize_waits) {
                sink->finalize_waits = false;
                asio::post(self->ctx_.io, [self, f] { self->try_finalize(f); });
            }
            if (sink->writes == 0 && sink->drop) {
                sink->drop = false;
                --self->finalizing_;  // counted again by drop_partial
                self->drop_partial(f);
                return;
            }
            if (self->machine_.aborted(f)) {
                return;  // given up on while this chunk was written: not confirmed
            }
            if (verdict.bad) {
                self->fail(wire::ERROR_INTEGRITY, exit_code::transfer_failed, verdict.problem(path, idx));
                return;
            }
            if (ec && file_level(ec)) {
                self->give_up_here(f, path, ec);
                return;
            }
            if (ec) {
                self->fail(disk_error(self->ctx_, ec), exit_code::local_io, "write failed: " + path + ": " + ec.message());
                return;
            }
            bool complete = self->machine_.on_chunk_written(f, idx, verdict.got);
            // What a delta copied from DST's older version never travelled: it counts as
            // matched, not as payload received (node totals, rates, progress).
            self->on_payload_written(verdict.len - verdict.copied, verdict.saved, write_time);
            self->delta_copied_ += verdict.copied;
            if (!acks) {
                self->queue_ack(conn, chunk_key(f, idx));
            } else if (acks->keys.push_back(chunk_key(f, idx)); acks->keys.size() == acks->count) {
                for (std::uint64_t key : acks->keys) {
                    self->queue_ack(conn, key);
                }
            }
            for (std::uint32_t other : also) {
                self->queue_ack(other, chunk_key(f, idx));
            }
            // A file started from DST's older version has every chunk from the start (the
            // seed's, replaced one by one): "complete" says little until its FileDone, and
            // its resume record must follow the replacements all the same (a kill -9 lost
            // them all: a user's test, 2026-12-06). The record of a file finalized since
            // is skipped (checkpoint).
            self->mark_dirty(f);
            if (complete) {
                self->try_finalize(f);
            }
        });
    });
}

// A batch of whole files on a worker: each verified, then written as run() writes it, the
// new files' opens and writes batched (dest_tree::write_new_files). A compressed chunk is
// decoded into the thread's scratch, which the next decode reuses: such a file is written
// at once, on its own.
void receive_session::write_whole_batch(dest_tree& tree, std::span<whole_write> batch, bool fsync_now,
                                        bool overwrite) {
    std::vector<dest_tree::new_file> files;
    std::vector<whole_write*> owners;
    for (whole_write& w : batch) {
        if (fsync_now || w.encoding.codec != wire::CODEC_RAW) {
            w.run(tree, fsync_now, overwrite);
            continue;
        }
        verified_chunk checked = verify_chunk(w.payload.span(), w.encoding, w.expect);
        w.verdict = checked.verdict;
        if (w.verdict.bad) {
            w.payload.reset();
            continue;
        }
        dest_tree::new_file& f = files.emplace_back();
        f.wire_path = w.e.path;
        f.mode = w.e.mode;
        f.data = checked.raw;
        f.size = w.e.size;
        f.mtime_ns = w.e.mtime_ns;
        owners.push_back(&w);
    }
    tree.write_new_files(files);
    for (std::size_t k = 0; k < files.size(); ++k) {
        whole_write& w = *owners[k];
        dest_tree::new_file& f = files[k];
        if (f.handled) {
            w.ec = f.ec;
            w.unnamed = std::move(f.file);
            w.stored = f.stored;
            w.write_time = f.write_time;
        } else {
            w.write(tree, fsync_now, overwrite, f.data);
        }
        w.payload.reset();
    }
}

void receive_session::write_whole_file(std::uint32_t conn, const wire::Chunk& chunk, pooled_buffer payload) {
    file_id f{chunk.file_id()};
    ++writes_;
    ++finalizing_;
    ++sink_of(f)->whole;  // (an aborted file is not released while it is written)
    whole_write& w = whole_writes_.emplace_back();
    w.f = f;
    w.conn = conn;
    w.e = machine_.entry(f);
    w.expect = digest128{chunk.hash_lo(), chunk.hash_hi()};
    w.encoding = chunk_encoding{chunk.codec(), chunk.raw_len()};
    w.payload = std::move(payload);
    if (whole_writes_.size() >= max_batch_writes) {
        post_whole_writes();
    } else if (whole_writes_.size() == 1 && whole_batches_out_ < ctx_.workers.size()) {
        asio::post(ctx_.io, [self = shared_from_this()] { self->post_whole_writes(); });
    }
}

void receive_session::post_whole_writes() {
    if (whole_writes_.empty()) {
        return;
    }
    bool fsync_now = durable() && (machine_.options().fsync_each || ctx_.config.fsync_each);
    if (failed_) {
        // Nothing more is written for a failed transfer; the counters still settle. Such a
        // file was never written: it is not named (a partial file an earlier attempt left
        // at its name must not take the final name for it).
        auto batch = std::move(whole_writes_);
        whole_writes_.clear();
        for (whole_write& w : batch) {
            w.ec = std::make_error_code(std::errc::operation_canceled);
            on_whole_written(w, fsync_now);
        }
        settle();
        return;
    }
    if (!fsync_now) {
        need_syncfs_ = true;
    }
    ++whole_batches_out_;
    ctx_.workers.post([self = shared_from_this(), tree = tree_, fsync_now, overwrite = overwrite_,
                       batch = std::move(whole_writes_)]() mutable {
        self->write_whole_batch(*tree, batch, fsync_now, overwrite);
        asio::post(self->ctx_.io, [self, fsync_now, batch = std::move(batch)]() mutable {
            --self->whole_batches_out_;
            for (whole_write& w : batch) {
                self->on_whole_written(w, fsync_now);
            }
            self->post_whole_writes();  // what gathered while every worker was busy
            self->settle();
        });
    });
    whole_writes_.clear();
}

void receive_session::on_whole_written(whole_write& w, bool fsync_now) {
    file_id f = w.f;
    --writes_;
    std::vector<std::uint32_t> also = written(chunk_key(f, chunk_index{0}));
    if (auto sink = sink_of(f)) {
        --sink->whole;
    }
    if (failed_ && (w.ec || w.verdict.bad || fsync_now)) {
        --finalizing_;
        return;
    }
    if (w.verdict.bad) {
        --finalizing_;
        fail(wire::ERROR_INTEGRITY, exit_code::transfer_failed, w.verdict.problem(w.e.path, chunk_index{0}));
        return;
    }
    if (!w.ec) {
        machine_.on_chunk_written(f, chunk_index{0}, w.verdict.got);
        bool ok = false;
        machine_.ready(f, ok);  // one chunk: the digest is that chunk's, ok by construction
        machine_.on_file_finished(f);
        if (!failed_) {
            on_payload_written(w.verdict.len - w.verdict.copied, w.verdict.saved, w.write_time);
            queue_ack(w.conn, chunk_key(f, chunk_index{0}));
            for (std::uint32_t other : also) {
                queue_ack(other, chunk_key(f, chunk_index{0}));
            }
        }
        // Whole and verified: it gets its name even when the transfer failed meanwhile (a
        // full disk, a lost peer), so that a later attempt finds it done.
        // Bytes matched here (CODEC_SAME's, a delta's copies); not for a file given up on
        // meanwhile: nothing of it counts.
        delta_copied_ += machine_.aborted(f) ? 0 : w.verdict.copied;
        if (w.kept) {
            need_syncfs_ = need_syncfs_ || !fsync_now;  // its new mode and mtime
        } else if (!fsync_now) {
            queue_rename(f, machine_.received_digest(f), w.stored, std::move(w.unnamed), std::move(w.partial));
            return;
        }
    }
    --finalizing_;
    on_file_finalized(f, w.ec, w.e.path);
}

void receive_session::on_file_done(const wire::FileDone& done) {
    if (std::error_code ec = machine_.on_file_done(done)) {
        fail(wire::ERROR_PROTOCOL, exit_code::transfer_failed,
             "protocol error from " + log_id(peer_id_) + ": " + ec.message());
        return;
    }
    try_finalize(file_id{done.file_id()});
}

void receive_session::try_finalize(file_id f) {
    bool ok = false;
    if (!machine_.ready(f, ok)) {
        return;
    }
    const entry_info& e = machine_.entry(f);
    if (!ok) {
        fail(wire::ERROR_INTEGRITY, exit_code::transfer_failed, e.path + ": file digest mismatch");
        return;
    }
    if (auto sink = sink_of(f); sink->writes > 0) {
        sink->finalize_waits = true;  // a chunk being replaced: finalize once it is written
        return;
    }
    machine_.on_file_finished(f);  // no second finalize for this file
    ++finalizing_;
    unpin(*sink_of(f));
    bool fsync_now =
        durable() && (machine_.options().fsync_each || ctx_.config.fsync_each || e.size >= fsync_own_threshold);
    if (!fsync_now) {
        need_syncfs_ = true;
    }
    auto sink = sink_of(f);
    dirty_.erase(f.value);
    ++tasks_out_;
    ctx_.workers.post([self = shared_from_this(), sink, tree = tree_, e, f, fsync_now, overwrite = overwrite_,
                       create = !sink->resumed] {
        std::error_code ec;
        int fd;
        // A new empty file (no chunk, so none written yet) is made with no name and linked
        // with the batch of new files, as one written whole is: not a partial file locked,
        // set and renamed (50,000 empty files: 2.3x tar | nc, a user's test).
        auto unnamed = std::make_shared<unnamed_file>();
        {
            std::lock_guard lock(sink->mutex);
            if (e.size == 0 && create && !fsync_now && !resumable(e) && sink->fd < 0 && !sink->open_error) {
                *unnamed = tree->open_unnamed(e.path, e.mode, ec);
            }
            if (unnamed->get() >= 0 || ec) {
                fd = unnamed->get();
            } else {
                // (Opened here for an empty file, which has no chunk write, and for a resumed
                // one whose chunks were all kept, whose partial file must still be there.)
                fd = sink->partial_fd(*tree, e.path, create, ec);
                sink->fd = -1;
                if (sink->basis_fd >= 0) {
                    ::close(sink->basis_fd);  // every chunk is in (the loop thread counts it unpinned)
                    sink->basis_fd = -1;
                }
            }
            sink->finalized = true;  // no checkpoint records it any more
        }
        if (resumable(e)) {
            // Verified whole: its resume record has served. (A crash before the rename
            // leaves the partial file alone, and a later attempt hashes it again.)
            tree->remove_partial(e.path, false, true);
        }
        dest_tree::stored_file stored;
        // Held open (and locked) until it has its name (the batch of renames).
        auto held = std::make_shared<unique_fd>();
        if (!ec && unnamed->get() >= 0) {
            ec = tree->prepare_final(fd, 0, e.mode, e.mtime_ns, false, &stored, true, true);
            if (ec) {
                unnamed->reset();  // gone with its descriptor
            }
        } else if (!ec) {
            if (fsync_now) {
                ec = tree->finalize(e.path, fd, e.size, e.mode, e.mtime_ns, true, overwrite);
            } else {
                ec = tree->prepare_final(fd, e.size, e.mode, e.mtime_ns, false, &stored, false, true);
                held->reset(fd);
            }
        }
        asio::post(self->ctx_.io, [self, f, ec, fsync_now, stored, path = e.path, held, unnamed] {
            --self->tasks_out_;
            // Whole and verified: named even when the transfer failed meanwhile, as a
            // one-chunk file is (on_whole_written), so that a later attempt finds it done.
            if (!ec && !fsync_now) {
                self->queue_rename(f, self->machine_.received_digest(f), stored, std::move(*unnamed), std::move(*held));
            } else {
                --self->finalizing_;
                self->on_file_finalized(f, ec, path);
            }
            self->settle();
        });
    });
}

std::filesystem::path receive_session::journal_dir() const { return ctx_.config.state_dir / "unsynced"; }

void receive_session::queue_rename(file_id f, digest128 digest, const dest_tree::stored_file& stored,
                                   unnamed_file unnamed, unique_fd partial) {
    const entry_info& e = machine_.entry(f);
    unsynced_journal::entry entry{e.path, e.size, stored.mtime_ns, digest, stored.dev, stored.ino};
    renames_.push_back(pending_name{f, std::move(entry), std::move(unnamed), std::move(partial)});
    start_renames();
}

void receive_session::start_renames() {
    if (renaming_ || renames_.empty()) {
        return;
    }
    // Every file here is whole and verified: named even after a failure (nothing is
    // reported for it then), so that a failed transfer keeps what it verified. A one-chunk
    // file written without a name would otherwise be gone.
    if (!journal_ && durable()) {
        journal_ = std::make_shared<unsynced_journal>(journal_dir(), tree_->root());
    }
    // Group commit: everything that became ready while the previous batch ran goes in
    // one journal write + fdatasync, then its renames.
    renaming_ = true;
    auto batch = std::move(renames_);
    renames_.clear();
    ctx_.workers.post([self = shared_from_this(), tree = tree_, journal = journal_, batch = std::move(batch),
                       overwrite = overwrite_]() mutable {
        std::vector<unsynced_journal::entry> entries;
        entries.reserve(batch.size());
        for (const pending_name& b : batch) {
            entries.push_back(b.entry);
        }
        // Without a journal (state folder full or read-only) the batch is made durable
        // before its renames instead: slower, never unsafe. (A pull that is not to be
        // durable has none: nothing is synced for it.)
        std::error_code journal_ec = journal ? journal->commit(entries) : std::error_code{};
        std::error_code sync_ec = journal_ec ? tree->sync_all() : std::error_code{};
        std::vector<std::error_code> results(batch.size());
        // New files in new folders: linked and closed in one submission where io_uring is
        // there (not with the crash hook armed, which counts names one by one). A name
        // that appeared there meanwhile fails its link: link_final below keeps it or, with
        // `overwrite` (sync), replaces it.
        std::vector<int> named(batch.size(), 1);
        if (!sync_ec && !fault_hook_armed()) {
            std::vector<unnamed_file*> files;
            std::vector<const std::string*> paths;
            files.reserve(batch.size());
            paths.reserve(batch.size());
            for (pending_name& b : batch) {
                files.push_back(&b.unnamed);
                paths.push_back(&b.entry.path);
            }
            named = tree->link_new(files, paths);
        }
        for (std::size_t i = 0; i < batch.size(); ++i) {
            pending_name& b = batch[i];
            results[i] = named[i] == 0             ? std::error_code{}
                         : named[i] == 2          ? std::make_error_code(std::errc::io_error)
                         : sync_ec                ? sync_ec
                         : b.unnamed.get() >= 0 ? tree->link_final(b.unnamed, b.entry.path, overwrite)
                                                 : tree->rename_final(b.entry.path, overwrite);
            b.unnamed.reset();  // named now, or gone with its descriptor
            b.partial.reset();  // named (or not): its lock goes
            fault_point_after_renames(1);
        }
        asio::post(self->ctx_.io, [self, batch = std::move(batch), results = std::move(results), journal_ec] {
            self->renaming_ = false;
            if (journal_ec && !self->journal_warned_) {
                self->journal_warned_ = true;
                self->ctx_.log("cannot write the unsynced journal in " + self->journal_dir().string() + " (" +
                               journal_ec.message() + "): syncing before each batch of renames instead", log_level::warn);
            }
            for (std::size_t i = 0; i < batch.size(); ++i) {
                --self->finalizing_;
                self->on_file_finalized(batch[i].f, results[i], batch[i].entry.path);
            }
            self->start_renames();
            self->settle();
        });
    });
}

void receive_session::on_file_finalized(file_id f, std::error_code ec, const std::string& path) {
    if (failed_) {
        // Named all the same (whole and verified): told of, so that the files an attempt
        // placed are all in its events (a pull that reconnects told the next attempt's
        // finds of them as unchanged: a user's test, 2026-12-06). Nothing else is sent.
        if (const auto sink = sink_of(f); !ec && sink && !machine_.entry(f).is_dir) {
            files_.done(ctx_.events.file, f, machine_.entry(f), false, sink->action);
        }
        return;
    }
    if (ec && file_level(ec)) {
        give_up_here(f, path, ec);
        return;
    }
    if (ec) {
        bool local = ec.category() == std::system_category();
        fail(local ? disk_error(ctx_, ec) : wire::ERROR_REFUSED, local ? exit_code::local_io : exit_code::transfer_failed,
             path + ": " + ec.message());
        return;
    }
    send_file_result(f);
    if (!machine_.entry(f).is_dir) {
        if (tree_) {
            claims_->release(tree_->full_path(path), this);  // named: another may replace it now
        }
        ++files_done_;
        report_done(f);
    }
    next_offer();  // one fewer in progress
    check_all_done();
}

void receive_session::on_payload_written(std::uint64_t bytes, std::uint64_t saved, stats_clock::duration write_time) {
    auto now = stats_clock::now();
    scope_->add_payload_received(bytes, 1, now, saved);
    ctx_.stats.write_latency.observe(write_time);
    if (ttfb_s_ < 0) {
        ttfb_s_ = seconds_since(start_);
        ctx_.stats.ttfb.observe(now - start_);
    }
}

transfer_progress receive_session::progress() const {
    transfer_progress p;
    p.direction = "receive";
    p.session_id = session_id_;
    p.peer_id = peer_id_;
    p.peer_address = peer_address_;
    p.total_bytes = machine_.total_bytes();
    p.skipped_bytes = machine_.skipped_bytes() + machine_.kept_bytes() + delta_copied_;
    p.confirmed_bytes = scope_->counters().payload_received;
    p.wire_sent = scope_->counters().wire_sent;
    p.wire_received = scope_->counters().wire_received;
    p.rate = scope_->payload_rate(stats_clock::now());
    p.files_total = machine_.total_files() - machine_.total_dirs();
    p.files_done = files_done_ + machine_.skipped_files();
    p.elapsed_s = seconds_since(start_);
    p.offered = machine_.all_offered();
    p.connections = open_conns_;
    return p;
}

void receive_session::report_done(file_id f) {
    const sink_file& sink = *sink_of(f);
    if (!sink.from.empty() && !sink.got_bytes) {
        // A rename if SRC no longer has `from`: known once all is offered.
        maybe_renamed_.push_back({f, machine_.entry(f), sink.action, sink.from});
    } else {
        files_.done(ctx_.events.file, f, machine_.entry(f), false, sink.action);
    }
    sinks_.erase(f.value);  // final: nothing more comes for it
    machine_.release(f);
}

void receive_session::check_all_done() {
    if (finishing_ || failed_ || !machine_.all_finished() || finalizing_ > 0 || offer_busy_ || !offers_.empty() ||
        !queued_offers_.empty()) {
        return;
    }
    finishing_ = true;
    if (!later_keeps_.empty()) {
        // (A worker deciding a batch holds the set it was given: a new one.)
        auto all = std::make_shared<exclude_set>(*excludes_);
        all->keep_all_of(later_keeps_);
        excludes_ = std::move(all);
    }
    // What was offered (every path, in offer order), looked up by the files made from
    // DST's own copy (renamed when SRC no longer has the old path) and by --delete.
    const wire::SyncTarget* target = sync_target();
    const offered_paths& offered = machine_.paths();
    for (const maybe_renamed& m : maybe_renamed_) {
        // An excluded old path (or one SRC could not read) stays at DST: a copy, not a rename.
        bool renamed = offered.find(m.from) != offered_paths::kind::file &&
                       !(excludes_ && excludes_->excluded_or_inside(m.from, false));
        // (A dry run's: nothing came, it is skipped as its every file is.)
        files_.done(ctx_.events.file, m.id, m.e, target && target->dry_run(), m.action,
                    renamed ? std::string_view(m.from) : std::string_view());
    }
    maybe_renamed_.clear();
    flush_acks();
    // Directory modes and mtimes last (each after what it holds), then durability, then success.
    std::vector<entry_info> dirs = std::move(dirs_);
    // (In reverse walk order: each after every folder in it, as deepest first would give,
    // and the folders of one parent together, while the cache of open folders holds it.)
    std::sort(dirs.begin(), dirs.end(),
              [](const entry_info& a, const entry_info& b) { return wire_path_less(b.path, a.path); });
    if (root_mode_mirrored()) {
        // The sync's own folder gets SRC's mode and mtime, last (a share's folder: never;
        // setuid and setgid: never on a peer's word).
        dirs.push_back({.path = "", .mtime_ns = target->root_mtime_ns(), .mode = target->root_mode() & 01777,
                        .is_dir = true});
    }
    // A share's own folder keeps its mode (the share's owner set it) but takes SRC's
    // mtime, as rsync -a gives a module's root; best effort (the folder may not be ours).
    std::optional<std::int64_t> share_root_mtime;
    if (target && sync_path_.empty() && target->root_mode() != 0) {
        share_root_mtime = target->root_mtime_ns();
    }
    // Sync --delete: what is under the destination and was not offered goes (never what
    // an exclude pattern matches, nor ferry's own partial files), before the folders get
    // their mtimes. Offers are over: the worker reads the machine's paths, which no longer
    // change.
    std::function<dest_tree::verdict(const std::string&, bool)> keep;
    // What --delete left because another transfer writes there: told of as not done.
    struct left_in_use {
        std::size_t count = 0;
        std::string first;
    };
    auto in_use = std::make_shared<left_in_use>();
    if (target && target->delete_() && tree_) {
        // (The machine's paths: it lives while the worker's task holds this session.)
        keep = [&paths = offered, excludes = excludes_, claims = claims_, owner = this, root = tree_->root(),
                in_use](const std::string& path, bool is_dir) {
            if (excludes->excluded(path, is_dir)) {
                return dest_tree::verdict::keep_whole;
            }
            // Not offered, or a folder where a file or symlink was offered (gone already, but
            // not in a dry run, which lists it here). A file or symlink where a folder was
            // offered was replaced by it (a dry run: would be), as rsync does, not deleted.
            offered_paths::kind k = paths.find(path);
            if (k != offered_paths::kind::none && !(k == offered_paths::kind::file && is_dir)) {
                return dest_tree::verdict::keep;
            }
            // Another transfer into this folder is writing it, or a file below it (a folder
            // it has just made), or has offered a folder it lies in: it stays. (What such a
            // transfer has already named there was removed, and it ended with exit 0 and its
            // tree incomplete: two --delete pushes into one folder at once, a user's test.)
            // The last to finish deletes what its SRC lacks; this one says what it left
            // (exit 5), and asks the other whether its sender is still there (one gone
            // silent lets go within seconds, not at its idle timeout).
            if (std::string full = (root / path).string(); claims->within_another(full, owner)) {
                if (in_use->count++ == 0) {
                    in_use->first = path;
                    claims->ask_holders(full, owner);
                }
                return dest_tree::verdict::keep;
            }
            return dest_tree::verdict::remove;
        };
    }
    bool dry_run = target && target->dry_run();
    ++tasks_out_;
    ctx_.workers.post([self = shared_from_this(), tree = tree_, journal = journal_, dirs = std::move(dirs),
                       syncfs = need_syncfs_ && durable(), keep = std::move(keep), dry_run, share_root_mtime, in_use] {
        std::error_code ec;
        std::string error;
        std::vector<dest_tree::removed_entry> removed;
        std::vector<skipped_file> not_done;  // not deleted, folders whose mode or mtime could not be set
        std::size_t told = 0;  // of those removed, told of already (taken, below)
        if (keep && tree) {
            std::string where;
            // What an interrupted attempt left beside a file that needs it no more (SRC has
            // it as DST does, or not at all) goes too, unless another transfer into this
            // folder is writing that file: it is claimed first, and stays this session's.
            // (A dry run claims nothing: it looks.)
            auto stale = [&](const std::string& path) {
                std::string full = tree->full_path(path);
                return !self->excludes_->excluded(path, false) && !self->claims_->within_another(full, self.get()) &&
                       (dry_run || !self->claims_->claim_all({full}, self.get()));
            };
            fault_point_before_prune();
            // Told of as the walk goes (a receiver that dies in a long one has still told
            // of most of what it removed); the log line counts them all at the end.
            auto taken = [&](std::vector<dest_tree::removed_entry>& part) {
                told += part.size();
                asio::post(self->ctx_.io, [self, part = std::move(part)]() mutable { self->tell_deleted(std::move(part)); });
            };
            std::vector<dest_tree::refusal> refused;  // this user may not: they stay (as rsync, exit 5)
            if ((ec = tree->prune(keep, dry_run, removed, where, stale, taken, &refused))) {
                error = removal_error(where, ec);
            }
            for (auto& [path, why] : refused) {
                not_done.push_back({std::move(path), "not deleted: " + why.message(), false, false, true, false});
            }
            if (in_use->count > 0) {
                not_done.push_back({in_use->first,
                                  "not deleted: another transfer of the node is writing into this folder" +
                                      (in_use->count > 1 ? " (" + std::to_string(in_use->count - 1) +
                                                               " more path(s) left for it too)"
                                                         : std::string()) +
                                      "; a sync after it deletes what SRC lacks",
                                  false, false, true, false});
            }
        }
        std::size_t not_set_folders = 0;
        for (const entry_info& d : dirs) {
            if (ec || dry_run) {
                break;
            }
            if (tree && (ec = tree->finish_dir(d.path, d.mode, d.mtime_ns))) {
                if (!file_level(ec)) {
                    break;
                }
                // (As rsync: "failed to set times", the files in it are in.)
                // (First in the list: the sender tells of no update for a folder it names,
                // and a list cut at its bound keeps its head.)
                not_done.insert(not_done.begin() + static_cast<std::ptrdiff_t>(not_set_folders++),
                                {d.path, "folder's mode or mtime not set: " + ec.message(), false, false, true, false});
                ec = {};
            }
        }
        if (!ec && !dry_run && tree && share_root_mtime) {
            tree->finish_dir("", 0, *share_root_mtime, true);
        }
        if (tree) {
            tree->restore_modes();  // read-only folders written into, that SRC did not give a mode
        }
        if (!ec && tree && (syncfs || !removed.empty()) && !dry_run) {
            ec = tree->sync_all();
        }
        if (!ec && journal) {
            journal->discard();  // every renamed file is on disk now
        }
        if (ec && error.empty()) {
            error = "could not finish the transfer: " + ec.message();
        }
        asio::post(self->ctx_.io, [self, error, told, removed = std::move(removed), not_done = std::move(not_done)]() mutable {
            --self->tasks_out_;
            // Reported even when a later deletion failed, or the transfer failed meanwhile
            // (a pull whose peer went while DST was pruned): these are gone. A failure's
            // report waits for this (settle), so that it counts them.
            self->send_deleted(std::move(removed), told);
            if (self->failed_) {
                self->settle();
                return;
            }
            if (!error.empty()) {
                self->fail(wire::ERROR_IO, exit_code::local_io, error);
                return;
            }
            self->result_sent_ = true;
            // Every file is named and every folder finished: nothing is left to keep from
            // another transfer's --delete, however long the sender takes to close.
            self->claims_->release_all(self.get());
            wire::Header h;
            wire::TransferResult* r = h.mutable_transfer_result();
            r->set_transfer_id(self->machine_.transfer_id());
            r->set_ok(true);
            r->set_files(self->machine_.total_files());
            r->set_bytes(self->machine_.received_bytes());
            // What was not made (or looked at) is told of when it was not, and once: not
            // again as not deleted.
            std::unordered_set<std::string> not_made;
            for (const auto* list : {&self->not_made_, &self->given_up_}) {
                for (const skipped_file& n : *list) {
                    if (n.at_dst) {
                        not_made.insert(n.path);  // (a file given up on here, whose place a folder held)
                    }
                }
            }
            std::erase_if(not_done, [&](const skipped_file& u) {
                // (Nor what lies below such a path: a folder in a file's way that could not go.)
                for (std::string_view p = u.path; !p.empty(); p = wire_parent(p)) {
                    if (not_made.contains(std::string(p))) {
                        return true;
                    }
                }
                return false;
            });
            for (skipped_file& u : not_done) {
                log_failed(self->ctx_, u);
            }
            if (!self->folder_updates_.empty()) {
                tell_folder_updates(self->ctx_.events, self->folder_updates_, not_done);
            }
            not_done.insert(not_done.begin(), std::make_move_iterator(self->not_made_.begin()),
                            std::make_move_iterator(self->not_made_.end()));
            self->not_made_.clear();
            std::size_t listed = 0;
            for (skipped_file& u : not_done) {
                listed += u.path.size() + u.reason.size();
                if (listed <= max_not_done_listed_bytes) {
                    wire::NotSent* n = r->add_not_done();
                    n->set_path(u.path);
                    n->set_reason(u.reason);
                    n->set_file(u.file);
                } else {
                    r->set_not_done_more(r->not_done_more() + 1);
                    r->set_not_done_more_files(r->not_done_more_files() + (u.file ? 1 : 0));
                }
                self->given_up_.push_back(std::move(u));
            }
            self->send_control(h);
            self->finish_report(true, exit_code::ok, "");
        });
    });
}

void receive_session::send_deleted(std::vector<dest_tree::removed_entry> removed, std::size_t told) {
    deleted_count_ += told + removed.size();
    tell_deleted(std::move(removed));
}

void receive_session::tell_deleted(std::vector<dest_tree::removed_entry> removed) {
    const wire::SyncTarget* target = sync_target();
    if (removed.empty() || target == nullptr || (failed_ && target->dry_run())) {
        return;  // (a dry run's: nothing went, and the next attempt lists it again)
    }
    if (pull_) {
        // This side asked for the sync: what went is its to report (the peer hears it too).
        for (const dest_tree::removed_entry& r : removed) {
            ++(r.is_dir ? deleted_dirs_ : deleted_files_);
            if (ctx_.events.deleted) {
                ctx_.events.deleted(r.path, kind_of(r));
            }
        }
    }
    if (failed_) {
        return;  // its Error frame was the last the peer hears
    }
    wire::Header h;
    std::size_t bytes = 0;
    auto flush = [&] {
        if (h.deleted().entries_size() > 0) {
            send_control(h);
            h.Clear();
            bytes = 0;
        }
    };
    for (const dest_tree::removed_entry& r : removed) {
        if (bytes + r.path.size() + 16 > offer_batch_bytes) {
            flush();
        }
        bytes += r.path.size() + 16;
        wire::Entry* e = h.mutable_deleted()->add_entries();
        e->set_kind(kind_of(r));
        e->set_path(r.path);
    }
    flush();
}

void receive_session::queue_ack(std::uint32_t conn, std::uint64_t key) {
    if (conn >= acks_.size()) {
        return;
    }
    acks_[conn].push_back(key);
    if (!ack_flush_posted_) {
        ack_flush_posted_ = true;
        asio::post(ctx_.io, [self = shared_from_this()] { self->flush_acks(); });
    }
}

void receive_session::flush_acks() {
    ack_flush_posted_ = false;
    for (std::size_t i = 0; i < acks_.size(); ++i) {
        if (acks_[i].empty()) {
            continue;
        }
        if (conns_[i] && !conns_[i]->closed()) {
            wire::Header h;
            auto* a = h.mutable_chunk_ack();
            a->mutable_chunks()->Add(acks_[i].begin(), acks_[i].end());
            conns_[i]->send(h);
        }
        acks_[i].clear();
    }
}

void receive_session::finish_report(bool ok, exit_code code, const std::string& error) {
    if (reported_) {
        return;
    }
    reported_ = true;
    if (deleted_count_ > 0) {  // one line for them all, whatever the end
        const bool dry = sync_target() && sync_target()->dry_run();
        ctx_.log(std::string(dry ? "sync dry run: would delete " : "sync: deleted ") + std::to_string(deleted_count_) +
                 " path(s) under " + root_.string());
    }
    transfer_report r;
    r.session_id = session_id_;
    r.ok = ok;
    r.code = code;
    r.error = error;
    r.peer_id = peer_id_;
    r.peer_address = peer_address_;
    r.skipped_files = machine_.skipped_files();
    r.skipped_bytes = machine_.skipped_bytes() + machine_.kept_bytes();
    r.resumed_bytes = machine_.kept_bytes();
    r.files = ok ? machine_.total_files() - machine_.total_dirs() - r.skipped_files - machine_.aborted_files() -
                       machine_.not_made_files()
                 : 0;
    r.dirs = ok ? machine_.total_dirs() - machine_.not_made_dirs() : 0;
    r.total_files = machine_.total_files();
    r.total_dirs = machine_.total_dirs();
    r.files_total = machine_.total_files() - machine_.total_dirs();
    r.payload_bytes = machine_.received_bytes();
    r.total_bytes = machine_.total_bytes();
    // Every joined connection's bytes, open or closed, handshakes included (stats scope).
    r.wire_sent = scope_->counters().wire_sent;
    r.wire_received = scope_->counters().wire_received;
    r.compression_saved = scope_->counters().compression_saved;
    r.elapsed_s = seconds_since(start_);
    r.connections = static_cast<std::uint32_t>(std::count_if(conns_.begin(), conns_.end(), [](const auto& c) {
        return c != nullptr;  // joined (open or closed since)
    }));
    r.ttfb_s = ttfb_s_;
    r.connected = peer_hello_;
    r.retryable = !ok && retryable_;
    r.given_up = given_up_;
    r.deleted_files = deleted_files_;
    r.deleted_dirs = deleted_dirs_;
    r.delta_copied = delta_copied_;
    ++(ok ? ctx_.stats.transfers_ok : ctx_.stats.transfers_failed);
    if (pull_ && pull_->done) {
        auto done = std::move(pull_->done);
        done(r);
    } else if (ctx_.events.transfer_done) {
        ctx_.events.transfer_done(r);
    }
}

void receive_session::fail(wire::ErrorCode code, exit_code exit, const std::string& why,
                           std::optional<refusal> counted) {
    if (failed_ || result_sent_) {
        return;
    }
    failed_ = true;
    // Paths and error texts in `why` come from the peer: they reach the log, the report
    // and the peer's terminal only as printable text.
    const std::string message = printable(why);
    if (!counted && (code == wire::ERROR_PROTOCOL || code == wire::ERROR_INTEGRITY)) {
        counted = refusal::protocol;  // a broken frame or bad data from the peer
    }
    if (counted) {
        ctx_.stats.refusals.add(*counted);
    }
    if (!pull_) {
        ctx_.log("transfer from " + log_id(peer_id_) + " failed: " + message, log_level::error);  // a pull's report says it
    }
    // What was verified so far stays for a later attempt: every unfinished file with chunks
    // here gets its record, and is remembered (ctx_.known) for a sender that comes back.
    for (const auto& [id, sink] : sinks_) {
        if (sink && !machine_.finished(file_id{id}) && resumable(machine_.entry(file_id{id})) &&
            machine_.have(file_id{id}).count() > 0) {
            dirty_.insert(id);
        }
    }
    checkpoint();
    wire::Header h;
    h.mutable_error()->set_code(code);
    h.mutable_error()->set_message(why);  // bytes as they are: the peer escapes what it shows
    for (auto& c : conns_) {
        if (!c || c->closed()) {
            continue;
        }
        if (c->index == 0) {
            c->send(h);
            c->close_after_flush(protocol_errc::peer_error);
        } else {
            c->close();
        }
    }
    held_report_ = held_report{exit, message};
    settle();
}

bool receive_session::root_mode_mirrored() const {
    const wire::SyncTarget* target = sync_target();
    return target && !sync_path_.empty() && target->root_mode() != 0;
}

bool receive_session::work_out() const {
    return writes_ > 0 || whole_batches_out_ > 0 || tasks_out_ > 0 || offer_busy_ || renaming_ || !renames_.empty();
}

void receive_session::settle() {
    if (work_out()) {
        return;
    }
    if (held_report_) {
        held_report report = std::move(*held_report_);
        held_report_.reset();
        finish_report(false, report.code, report.message);
    }
    if (ended_ && reported_ && !end_posted_) {
        end_posted_ = true;
        asio::post(ctx_.io, [self = shared_from_this()] { self->on_end_(*self); });
    }
}

void receive_session::stop(const std::string& why) {
    if (!result_sent_) {
        fail(wire::ERROR_CANCELLED, exit_code::transfer_failed, why);
    }
    for (auto& c : conns_) {
        if (c && !c->closed() && !c->closing()) {
            c->close();  // one closing after its Error frame ends by itself, soon
        }
    }
}

std::vector<std::uint32_t> receive_session::written(std::uint64_t key) {
    std::vector<std::uint32_t> also;
    if (auto it = writing_.find(key); it != writing_.end()) {
        also = std::move(it->second);
        writing_.erase(it);
    }
    return also;
}

void receive_session::send_have_digests(const std::vector<receiver_machine::decision>& decisions) {
    // Before the Accept, on the same connection: the sender needs them to schedule.
    if (conns_.empty() || !conns_[0] || conns_[0]->closed()) {
        return;
    }
    // Per file: its HaveDigests, then (a sync's older version) its BasisSums.
    std::vector<std::pair<wire::Header, std::string>> frames;
    for (const auto& d : decisions) {
        for (auto& [have, bytes] : receiver_machine::have_digest_frames(d)) {
            frames.emplace_back(wire::Header(), std::move(bytes));
            *frames.back().first.mutable_have_digests() = std::move(have);
        }
        for (auto& [sums, bytes] : receiver_machine::basis_sum_frames(d)) {
            frames.emplace_back(wire::Header(), std::move(bytes));
            *frames.back().first.mutable_basis_sums() = std::move(sums);
        }
    }
    // Then the small changed files' sums.
    for (auto& [sums, bytes] : receiver_machine::small_sum_frames(decisions)) {
        frames.emplace_back(wire::Header(), std::move(bytes));
        *frames.back().first.mutable_small_sums() = std::move(sums);
    }
    if (frames.empty()) {
        return;
    }
    // Their own buffers (one per frame, released as each is written): not the chunk pool.
    auto pool = buffer_pool::make(frames.size(), chunk_size);  // what either kind of frame holds at most
    for (auto& [h, bytes] : frames) {
        pooled_buffer buf = pool->acquire(bytes.size());
        std::memcpy(buf.data(), bytes.data(), bytes.size());
        conns_[0]->send(h, std::move(buf), bytes.size());
    }
}

void receive_session::mark_dirty(file_id f) {
    if (!resumable(machine_.entry(f))) {
        return;
    }
    dirty_.insert(f.value);
    arm_checkpoint();
}

void receive_session::arm_checkpoint() {
    if (checkpoint_armed_ || failed_) {
        return;
    }
    checkpoint_armed_ = true;
    checkpoint_timer_.expires_after(checkpoint_interval);
    checkpoint_timer_.async_wait([weak = weak_from_this()](std::error_code ec) {
        if (auto self = weak.lock(); self && !ec) {
            self->checkpoint_armed_ = false;
            if (!self->failed_) {
                self->checkpoint();
            }
        }
    });
}

void receive_session::checkpoint() {
    // The record lists what the receiver_machine has now: every chunk in it was written
    // (on_chunk_written follows the write), and the worker makes the data durable before
    // the record replaces the previous one.
    std::unordered_set<std::uint32_t> still;  // a record of theirs is being written: next time
    for (std::uint32_t id : dirty_) {
        file_id f{id};
        if (machine_.finished(f) || !sink_of(f)) {
            continue;
        }
        if (sinks_[id]->checkpointing) {
            still.insert(id);
            continue;
        }
        sinks_[id]->checkpointing = true;
        const entry_info& e = machine_.entry(f);
        resume_state state;
        state.size = e.size;
        state.mtime_ns = e.mtime_ns;
        state.have = machine_.have(f);
        state.digests = machine_.digests(f);
        ctx_.workers.post([self = shared_from_this(), sink = sinks_[id], tree = tree_, path = e.path,
                           state = std::move(state)] {
            int fd = -1;
            {
                std::lock_guard lock(sink->mutex);
                if (!sink->finalized && sink->fd >= 0) {
                    fd = ::dup(sink->fd);
                }
            }
            std::error_code ec;
            struct stat st {};
            bool saved = false;
            if (fd >= 0) {
                if (::fdatasync(fd) != 0 || ::fstat(fd, &st) != 0) {
                    ec = {errno, std::system_category()};
                }
                ::close(fd);
                if (!ec) {
                    std::lock_guard lock(sink->mutex);
                    if (!sink->finalized) {
                        ec = tree->save_resume(path, encode_resume_state(state));
                        saved = !ec;
                    }
                }
            }
            asio::post(self->ctx_.io, [self, sink, path, ec, saved, stamp = stamp_of(st),
                                       state = std::move(state)]() mutable {
                sink->checkpointing = false;
                if (saved && self->failed_) {
                    self->ctx_.known.put(path, known_partial{stamp, state.size, state.mtime_ns, std::move(state.have),
                                                             std::move(state.digests)});
                }
                if (self->failed_ && !self->dirty_.empty()) {
                    self->checkpoint();  // the final record of a file this one was in the way of
                }
                if (ec) {
                    if (!self->checkpoint_warned_) {
                        self->checkpoint_warned_ = true;
                        self->ctx_.log("cannot record resume state for " + printable(path) + ": " + ec.message() +
                                       " (an interrupted transfer re-checks this file's data instead)", log_level::warn);
                    }
                }
            });
        });
    }
    dirty_ = std::move(still);
    if (!dirty_.empty()) {
        arm_checkpoint();
    }
}

void receive_session::on_closed(connection& c, std::error_code ec) {
    if (open_conns_ > 0) {
        --open_conns_;
    }
    if (!result_sent_ && !failed_ && c.index != 0 && !ended_ && ec != transport_errc::queue_full) {
        // One of the data connections: what it carried is sent again on the others, and
        // the sender opens a replacement (which joins at the same index).
        std::string why = ec && ec != transport_errc::closed ? ec.message() : "closed by the sender";
        ctx_.log("connection " + std::to_string(c.index) + " from " + log_id(peer_id_) + " lost (" + why +
                 "); the transfer goes on over the others", log_level::warn);
        data_connection_lost(c.index);  // a pull's: this side dials it again
    } else if (!result_sent_ && !failed_ && pull_ && ec == transport_errc::peer_refused) {
        fail(wire::ERROR_CANCELLED, exit_code::auth,
             "peer refused this node: its ID " + format_node_id(ctx_.id) + " is not trusted there (run `ferry trust " +
                 format_node_id(ctx_.id) + "` on the peer)");
    } else if (!result_sent_ && !failed_) {
        // The control connection: the transfer ends (partial files stay for resume).
        retryable_ = ec != transport_errc::queue_full;
        std::string why = ec && ec != transport_errc::closed ? ec.message() : "connection closed by sender";
        fail(wire::ERROR_CANCELLED, exit_code::transfer_failed, "transfer interrupted: " + why,
             ec == transport_errc::queue_full ? std::optional<refusal>(refusal::queue) : std::nullopt);
    }
    for (auto& other : conns_) {
        // The control connection carrying the Error frame closes by itself once it is out.
        if (other && !other->closed() && !other->closing() && open_conns_ > 0 && failed_) {
            other->close();
        }
    }
    if (open_conns_ == 0 && !ended_) {
        ended_ = true;
        idle_timer_.cancel();
        answer_timer_.cancel();
        checkpoint_timer_.cancel();
        if (widen_timer_) {
            widen_timer_->cancel();
        }
        if (!reported_ && !held_report_) {
            finish_report(result_sent_, result_sent_ ? exit_code::ok : exit_code::transfer_failed, "connection lost");
        }
        for (auto& x : conns_) {
            if (x) {
                x->set_handler(nullptr);
            }
        }
        settle();
    }
}

}  // namespace ferry
