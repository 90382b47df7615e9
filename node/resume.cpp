#include "node/resume.hpp"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <memory>

#include "node/file_io.hpp"
#include "protocol/delta.hpp"
#include "protocol/digest.hpp"

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

resume_found find_resume(dest_tree& tree, const entry_info& e, std::uint64_t max_claims, const known_partial* known) {
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
    if (record && !record->same_source(e.size, e.mtime_ns)) {
        tree.remove_partial(e.path, true, true);
        out.restarted = true;
        out.note = e.path + ": the source changed since the interrupted attempt (size or mtime): starting it over";
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
    out.note = e.path + ": resuming with " + std::to_string(n) + " of " + std::to_string(chunks) + " chunks (" +
               std::to_string(out.kept_bytes) + " bytes) already here";
    if (out.remembered > 0) {
        out.note += " (" + std::to_string(out.remembered) + " known from the interrupted session, not read again)";
    }
    if (out.repaired > 0) {
        out.note += ", " + std::to_string(out.repaired) + " recorded chunk(s) damaged: sent again";
    }
    if (!bytes.empty() && !record) {
        out.note += " (resume record unreadable: " + why + "; every chunk checked by the sender)";
    }
    return out;
}

std::optional<basis_sums> seeded_sums(dest_tree& tree, const entry_info& e, std::string_view basis_path,
                                      std::uint64_t seeded, std::uint64_t max_claims, resume_found& claims,
                                      int& basis_fd) {
    basis_fd = -1;
    std::error_code ec;
    int partial = tree.open_partial_read(e.path, ec);
    int basis = partial < 0 ? -1 : tree.open_final_read(basis_path, ec);
    struct stat st {};
    std::optional<basis_sums> out;
    if (basis >= 0 && ::fstat(basis, &st) == 0) {
        out.emplace();
        out->size = static_cast<std::uint64_t>(st.st_size);
    }
    auto buf = std::make_unique<std::uint8_t[]>(chunk_size);
    // Block `off`..`off + len` of the older version: from the partial file where the seed
    // put it (what a claim must describe), else from the older version itself.
    auto read_block = [&](std::uint64_t off, std::uint32_t len) {
        int fd = off + len <= seeded ? partial : basis;
        std::error_code rec;
        return read_at(fd, buf.get(), len, off, rec) == len ? std::span<const std::uint8_t>(buf.get(), len)
                                                            : std::span<const std::uint8_t>();
    };
    std::uint64_t chunks = chunk_count(e.size);
    chunk_bitmap have(chunks);
    std::vector<digest128> digests(chunks);
    std::uint64_t claimed = 0;
    // A chunk of the new version whose range is a block of the older one that the seed copied.
    auto claim = [&](std::uint64_t off, std::uint32_t len, const digest128& d) {
        std::uint64_t i = off / chunk_size;
        if (off % chunk_size == 0 && i < chunks && chunk_length(e.size, i) == len && off + len <= seeded &&
            claimed < max_claims) {
            have.set(i);
            digests[i] = d;
            claims.kept_bytes += len;
            ++claimed;
        }
    };
    std::uint64_t blocks = out ? std::min({out->size / chunk_size, max_basis_blocks(e.size), max_claims}) : 0;
    for (std::uint64_t b = 0; out && b < blocks; ++b) {
        std::span<const std::uint8_t> bytes = read_block(b * chunk_size, chunk_size);
        if (bytes.empty()) {
            out.reset();  // it changed size under us: no delta (the transfer sends the file)
            break;
        }
        out->weak.push_back(weak_sum(bytes));
        out->strong.push_back(hash_chunk(bytes));
        claim(b * chunk_size, chunk_size, out->strong.back());
    }
    if (std::uint64_t t = out ? out->tail_length() : 0; t > 0) {
        std::span<const std::uint8_t> bytes = read_block(out->size - t, static_cast<std::uint32_t>(t));
        if (bytes.empty()) {
            out.reset();
        } else {
            out->tail = hash_chunk(bytes);
            claim(out->size - t, static_cast<std::uint32_t>(t), out->tail);
        }
    }
    if (partial >= 0) {
        ::close(partial);
    }
    if (basis >= 0 && !out) {
        ::close(basis);
    } else {
        basis_fd = basis;
    }
    if (!out) {
        claims.kept_bytes = 0;
        return out;
    }
    claims.have = std::move(have);  // possibly no chunk: the delta alone then saves the bytes
    claims.digests = std::move(digests);
    return out;
}

bool is_partial_name(std::string_view name) {
    if (name.ends_with("~")) {
        name.remove_suffix(1);
        return name.starts_with(".") && (name.ends_with(".ferry-resume") ||
                                         (name.starts_with(".ferry-") && name.ends_with(".resume")));
    }
    if (!name.starts_with(".")) {
        return false;
    }
    return name.ends_with(".ferry-part") || name.ends_with(".ferry-resume") ||
           (name.starts_with(".ferry-") && (name.ends_with(".part") || name.ends_with(".resume")));
}

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
