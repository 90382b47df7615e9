#include "node/resume.hpp"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <memory>
#include <set>
#include <vector>

#include "node/file_io.hpp"
#include "node/worker_pool.hpp"
#include "protocol/delta.hpp"
#include "protocol/digest.hpp"
#include "protocol/path.hpp"

namespace ferry {

namespace {

// True if [offset, offset + len) of `fd` holds no data (a hole the writer never reached).
bool is_hole(int fd, std::uint64_t offset, std::uint32_t len) {
    off_t data = ::lseek(fd, static_cast<off_t>(offset), SEEK_DATA);
    if (data < 0) {
        return errno == ENXIO;  // no data from here to the end
    }
    return static_cast<std::uint64_t>(data) >= offset + len;
}

}  // namespace

partial_stamp stamp_of(const struct stat& st) {
    return {static_cast<std::uint64_t>(st.st_dev), static_cast<std::uint64_t>(st.st_ino),
            static_cast<std::uint64_t>(st.st_size), timespec_ns(st.st_mtim),
            timespec_ns(st.st_ctim)};
}

std::optional<std::size_t> partial_claims::claim_all(const std::vector<std::string>& paths, const void* owner) {
    std::lock_guard lock(mutex_);
    for (std::size_t i = 0; i < paths.size(); ++i) {
        if (auto it = owners_.find(paths[i]); it != owners_.end() && it->second != owner) {
            return i;
        }
    }
    for (const std::string& path : paths) {
        owners_.emplace(path, owner);
    }
    return std::nullopt;
}

void partial_claims::release(const std::string& path, const void* owner) {
    std::lock_guard lock(mutex_);
    if (auto it = owners_.find(path); it != owners_.end() && it->second == owner) {
        owners_.erase(it);
    }
}

void partial_claims::use_folders(const std::vector<std::string>& paths, const void* owner) {
    std::lock_guard lock(mutex_);
    for (std::string_view path : paths) {
        if (path.size() > 1 && path.ends_with('/')) {
            path.remove_suffix(1);  // the transfer's own folder (root / ""), as within_another looks it up
        }
        auto [from, to] = folders_.equal_range(path);
        if (std::none_of(from, to, [owner](const auto& kv) { return kv.second == owner; })) {
            folders_.emplace_hint(to, path, owner);
        }
    }
}

void partial_claims::release_all(const void* owner) {
    std::lock_guard lock(mutex_);
    auto owned = [owner](const auto& kv) { return kv.second == owner; };
    std::erase_if(owners_, owned);
    std::erase_if(folders_, owned);
    asked_.erase(owner);
}

void partial_claims::set_asked(const void* owner, std::function<void()> asked) {
    std::lock_guard lock(mutex_);
    asked_[owner] = std::move(asked);
}

namespace {

// Calls `f` with the owner of each entry of `map` at `path` or below it, until `f` returns
// true; whether it did.
template <class Map, class F>
bool any_at_or_below(const Map& map, std::string_view path, F f) {
    auto [from, to] = map.equal_range(path);
    for (auto it = from; it != to; ++it) {
        if (f(it->second)) {
            return true;
        }
    }
    std::string below = std::string(path) + '/';
    for (auto it = map.lower_bound(below); it != map.end() && it->first.starts_with(below); ++it) {
        if (f(it->second)) {
            return true;
        }
    }
    return false;
}

// Calls `f` with the owner of each entry of `map` at a folder `path` lies in (any depth
// above it), until `f` returns true; whether it did.
template <class Map, class F>
bool any_above(const Map& map, std::string_view path, F f) {
    for (std::size_t slash = path.rfind('/'); slash != std::string_view::npos && slash > 0;
         slash = path.rfind('/', slash - 1)) {
        auto [from, to] = map.equal_range(path.substr(0, slash));
        for (auto it = from; it != to; ++it) {
            if (f(it->second)) {
                return true;
            }
        }
    }
    return false;
}

}  // namespace

void partial_claims::ask_holders(const std::string& path, const void* asker) {
    std::vector<std::function<void()>> asks;
    {
        std::lock_guard lock(mutex_);
        std::set<const void*> owners;
        auto add = [&owners](const void* owner) {
            owners.insert(owner);
            return false;  // all of them
        };
        any_at_or_below(owners_, path, add);
        any_at_or_below(folders_, path, add);
        any_above(folders_, path, add);  // and whoever uses a folder it lies in (within_another)
        owners.erase(asker);
        for (const void* owner : owners) {
            if (auto a = asked_.find(owner); a != asked_.end()) {
                asks.push_back(a->second);
            }
        }
    }
    for (const auto& ask : asks) {
        ask();
    }
}

bool partial_claims::held_by_another(std::string_view path, const void* owner) {
    std::lock_guard lock(mutex_);
    auto other = [owner](const void* o) { return o != owner; };
    return any_at_or_below(owners_, path, other) || any_at_or_below(folders_, path, other);
}

bool partial_claims::within_another(std::string_view path, const void* owner) {
    {
        std::lock_guard lock(mutex_);
        if (any_above(folders_, path, [owner](const void* o) { return o != owner; })) {
            return true;
        }
    }
    return held_by_another(path, owner);
}

void known_partials::put(const std::string& key, known_partial k) {
    if (auto it = map_.find(key); it != map_.end()) {
        chunks_ -= it->second.have.size();
        map_.erase(it);
    }
    chunks_ += k.have.size();
    map_.emplace(key, std::move(k));
    order_.push_back(key);
    while ((map_.size() > max_entries || chunks_ > max_chunks) && !order_.empty()) {
        if (auto it = map_.find(order_.front()); it != map_.end()) {
            chunks_ -= it->second.have.size();
            map_.erase(it);
        }
        order_.pop_front();
    }
    if (order_.size() > 2 * max_entries) {
        std::erase_if(order_, [this](const std::string& k) { return !map_.contains(k); });
    }
}

std::optional<known_partial> known_partials::take(const std::string& key) {
    auto it = map_.find(key);
    if (it == map_.end()) {
        return std::nullopt;
    }
    known_partial k = std::move(it->second);
    chunks_ -= k.have.size();
    map_.erase(it);
    return k;
}

resume_found find_resume(dest_tree& tree, const entry_info& e, std::uint64_t max_claims, const known_partial* known,
                         bool seed_instead) {
    resume_found out;
    if (!resumable(e)) {
        return out;
    }
    std::uint64_t chunks = chunk_count(e.size);
    std::error_code ec;
    std::string bytes = tree.load_resume(e.path, ec);
    std::optional<resume_state> record;
    std::string why;
    if (!bytes.empty()) {
        record = decode_resume_state(bytes, &why);
    }
    const bool other_source = record && !record->same_source(e.size, e.mtime_ns);
    if (other_source && seed_instead) {
        tree.remove_partial(e.path, true, true);
        out.restarted = true;
        out.note = printable(e.path) +
                   ": the source changed since the interrupted attempt (size or mtime): starting it over";
        return out;
    }
    if (other_source) {
        // No older version here to start from instead: what the attempt wrote is offered
        // still, each chunk hashed again (the record's digests are of the other version),
        // and the sender keeps those whose digest its file still has (a file grown at its
        // end since, a log or a dump still being written, keeps all but its last chunk).
        record.reset();
    }
    if (seed_instead && (!record || record->have.count() == 0) && (known == nullptr || known->have.count() == 0)) {
        out.no_record = true;
        return out;
    }
    int fd = tree.open_partial_read(e.path, ec);
    if (fd < 0) {
        if (!bytes.empty()) {
            tree.remove_partial(e.path, false, true);  // a record whose data is gone
        }
        return out;
    }
    struct stat st {};
    std::uint64_t have_bytes = ::fstat(fd, &st) == 0 ? static_cast<std::uint64_t>(st.st_size) : 0;
    if (known != nullptr &&
        (!(known->file == stamp_of(st)) || known->size != e.size || known->mtime_ns != e.mtime_ns ||
         known->have.size() != chunks)) {
        known = nullptr;  // touched since, another file, or another source version
    }
    ::futimens(fd, nullptr);  // in use again: not abandoned (serve's --partial-max-age)
    chunk_bitmap have(chunks);
    std::vector<digest128> digests(chunks);
    auto buf = std::make_unique<std::uint8_t[]>(chunk_size);
    std::uint64_t claims = 0;
    for (std::uint64_t i = 0; i < chunks && claims < max_claims; ++i) {
        std::uint64_t offset = i * chunk_size;
        std::uint32_t len = chunk_length(e.size, i);
        if (known != nullptr && known->have.test(i) && offset + len <= have_bytes) {
            // Hashed by this process when it arrived, written, and the file not replaced.
            ++claims;
            ++out.remembered;
            have.set(i);
            digests[i] = known->digests[i];
            out.kept_bytes += len;
            continue;
        }
        bool listed = record && record->have.test(i);
        out.recorded += listed ? 1 : 0;
        std::error_code rec;
        if (offset + len > have_bytes || is_hole(fd, offset, len) || read_at(fd, buf.get(), len, offset, rec) != len) {
            out.repaired += listed ? 1 : 0;
            continue;
        }
        digest128 d = hash_chunk(std::span<const std::uint8_t>(buf.get(), len));
        if (listed && d != record->digests[i]) {
            ++out.repaired;  // the bytes changed since they were recorded: not offered
            continue;
        }
        out.unrecorded += listed ? 0 : 1;
        ++claims;
        have.set(i);
        digests[i] = d;
        out.kept_bytes += len;
    }
    ::close(fd);
    std::uint64_t n = have.count();
    if (n == 0) {
        return out;
    }
    out.have = std::move(have);
    out.digests = std::move(digests);
    // (What the sender finds other than its own is sent: a partial file seeded with DST's
    // older version holds chunks of that version.)
    out.note = printable(e.path) +
               (other_source ? ": the source changed since the interrupted attempt (size or mtime)" : "") +
               ": resuming with " + std::to_string(n) + " of " + std::to_string(chunks) + " chunks (" +
               std::to_string(out.kept_bytes) + " bytes) here, each kept if the source's is the same";
    if (out.remembered > 0) {
        out.note += " (" + std::to_string(out.remembered) + " known from the interrupted session, not read again)";
    }
    if (out.repaired > 0) {
        // (Written again since the record, as a file seeded with DST's older version
        // replaces its chunks, or damaged.)
        out.note += ", " + std::to_string(out.repaired) +
                    " recorded chunk(s) no longer as recorded (written again after the record, or damaged): sent again";
    }
    if (!bytes.empty() && !record && !other_source) {
        out.note += " (resume record unreadable: " + why + "; every chunk checked by the sender)";
    }
    return out;
}

std::optional<basis_sums> seeded_sums(const entry_info& e, partial_seed seed, worker_pool& pool,
                                      std::uint64_t max_claims, resume_found& claims, int& basis_fd) {
    basis_fd = -1;
    struct stat st {};
    if (::fstat(seed.basis.get(), &st) != 0) {
        return std::nullopt;
    }
    basis_sums out;
    out.size = static_cast<std::uint64_t>(st.st_size);
    const std::uint64_t bytes = seed.bytes;  // of the partial file, to be copied unless cloned
    const std::uint64_t blocks = std::min({out.size / chunk_size, max_basis_blocks(e.size), max_claims});
    out.weak.resize(blocks);
    out.strong.resize(blocks);
    std::atomic<bool> failed{false};
    // Bytes [off, off + len) of the older version: read, copied into the partial file
    // (what lies inside its length) and summed from the very buffer that was written, so
    // that a claim describes the partial file's bytes even if the older version changes.
    // A clone is read itself, for the same reason.
    auto copy_block = [&](std::uint8_t* buf, std::uint64_t off, std::uint32_t len) {
        std::error_code ec;
        if (read_at(seed.cloned ? seed.partial.get() : seed.basis.get(), buf, len, off, ec) != len) {
            return false;  // it changed size under us: no delta (the transfer sends the file)
        }
        if (!seed.cloned && off < bytes) {
            return !write_at(seed.partial.get(), buf, static_cast<std::size_t>(std::min<std::uint64_t>(len, bytes - off)),
                             off);
        }
        return true;
    };
    // The same bytes in small blocks too (SmallSums), where those are small enough to
    // find edits by: at most the blocks a sender takes for the new version (its first
    // ones: so sized from what a sender takes of a basis much larger than the new file).
    const std::uint32_t fine_block =
        small_block_size(std::min({out.size, blocks * std::uint64_t{chunk_size} + out.tail_length(), 2 * e.size}));
    std::shared_ptr<small_sums> fine;
    const std::uint64_t fine_limit = max_small_blocks_for(e.size, fine_block);
    // (With no full block, the short last one's small blocks alone: a file that grew
    // from less than a chunk.)
    if (fine_block <= max_fine_block && (blocks > 0 || out.size >= small_delta_min_size)) {
        fine = std::make_shared<small_sums>();
        fine->block_size = fine_block;
        fine->blocks.resize(std::min<std::uint64_t>(blocks * (chunk_size / fine_block), fine_limit));
    }
    // The full blocks, in parts over the pool's workers (the sender waits for these sums).
    const std::size_t parts = blocks < 16 ? 1 : static_cast<std::size_t>(std::min<std::uint64_t>(blocks / 8, 64));
    pool.run_parts(parts, [&](std::size_t p) {
        auto buf = std::make_unique_for_overwrite<std::uint8_t[]>(chunk_size);
        for (std::uint64_t b = blocks * p / parts; b < blocks * (p + 1) / parts && !failed.load(); ++b) {
            if (!copy_block(buf.get(), b * chunk_size, chunk_size)) {
                failed = true;
                break;
            }
            std::span<const std::uint8_t> block(buf.get(), chunk_size);
            // (Its small blocks' sums from the same pass as its weak sum.)
            const std::uint64_t per = chunk_size / fine_block;
            const std::uint64_t first = std::min<std::uint64_t>(b * per, fine ? fine->blocks.size() : 0);
            const std::uint64_t end = std::min<std::uint64_t>(first + per, fine ? fine->blocks.size() : 0);
            out.weak[b] = fine ? weak_sum_and_small(block, fine_block,
                                                    std::span<std::uint64_t>(fine->blocks).subspan(first, end - first))
                               : weak_sum(block);
            out.strong[b] = hash_chunk(block);
        }
    });
    const std::uint64_t t = out.tail_length();
    const std::uint64_t tail_at = out.size - t;
    // What lies between the last block summed and the short last block (only when the
    // blocks were capped), copied as it is.
    for (std::uint64_t done = blocks * chunk_size, end = std::min(bytes, tail_at);
         !failed && !seed.cloned && done < end;) {
        loff_t from = static_cast<loff_t>(done);
        loff_t to = static_cast<loff_t>(done);
        ssize_t n = ::copy_file_range(seed.basis.get(), &from, seed.partial.get(), &to, end - done, 0);
        if (n < 0 && errno == EINTR) {
            continue;
        }
        if (n <= 0) {
            failed = true;
            break;
        }
        done += static_cast<std::uint64_t>(n);
    }
    if (t > 0 && !failed) {
        auto buf = std::make_unique_for_overwrite<std::uint8_t[]>(t);
        if (copy_block(buf.get(), tail_at, static_cast<std::uint32_t>(t))) {
            out.tail = hash_chunk(std::span<const std::uint8_t>(buf.get(), t));
            // Its full small blocks follow the others (when no block was left out between).
            for (std::uint64_t k = 0; fine && tail_at == blocks * chunk_size && fine->blocks.size() < fine_limit &&
                                      (k + 1) * fine_block <= t;
                 ++k) {
                fine->blocks.push_back(
                    small_block_sum(std::span<const std::uint8_t>(buf.get() + k * fine_block, fine_block)));
            }
        } else {
            failed = true;
        }
    }
    if (fine) {
        out.fine = std::move(fine);
    }
    if (failed) {
        return std::nullopt;
    }
    std::uint64_t chunks = chunk_count(e.size);
    chunk_bitmap have(chunks);
    std::vector<digest128> digests(chunks);
    std::uint64_t claimed = 0;
    // A chunk of the new version whose range is a block of the older one now in the
    // partial file at the same place.
    auto claim = [&](std::uint64_t off, std::uint32_t len, const digest128& d) {
        std::uint64_t i = off / chunk_size;
        if (off % chunk_size == 0 && i < chunks && chunk_length(e.size, i) == len && off + len <= bytes &&
            claimed < max_claims) {
            have.set(i);
            digests[i] = d;
            claims.kept_bytes += len;
            ++claimed;
        }
    };
    for (std::uint64_t b = 0; b < blocks; ++b) {
        claim(b * chunk_size, chunk_size, out.strong[b]);
    }
    if (t > 0) {
        claim(tail_at, static_cast<std::uint32_t>(t), out.tail);
    }
    claims.have = std::move(have);  // possibly no chunk: the delta alone then saves the bytes
    claims.digests = std::move(digests);
    basis_fd = seed.basis.release();
    return out;
}

bool is_partial_name(std::string_view name) { return is_partial_file_name(name); }

sweep_result sweep_abandoned(const std::filesystem::path& root, std::chrono::seconds max_age) {
    namespace fs = std::filesystem;
    sweep_result out;
    std::error_code ec;
    auto cutoff = fs::file_time_type::clock::now() - max_age;
    for (fs::recursive_directory_iterator it(root, fs::directory_options::skip_permission_denied, ec), end;
         !ec && it != end; it.increment(ec)) {
        const fs::directory_entry& e = *it;
        std::error_code fe;
        if (!e.is_regular_file(fe) || e.is_symlink(fe) || !is_partial_name(e.path().filename().string())) {
            continue;
        }
        auto written = e.last_write_time(fe);
        if (fe || written > cutoff) {
            continue;
        }
        std::uintmax_t size = e.file_size(fe);
        if (fs::remove(e.path(), fe)) {
            ++out.files;
            out.bytes += fe ? 0 : size;
            if (out.removed.size() < 5) {
                out.removed.push_back(fs::relative(e.path(), root, fe).string());
            }
        }
    }
    return out;
}

}  // namespace ferry
