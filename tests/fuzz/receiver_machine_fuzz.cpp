// Fuzz target: receiver_machine (protocol/transfer.hpp) driven like receive_session does.
//
// The input is a config byte (bit 0: tiny limits, max_files 1..8 from the next byte) and
// then a sequence of operations, each an op byte and its arguments (see the op enum):
// Offer batches built from the input (hostile paths, ids, kinds, sizes up to 2^64-1,
// bulk batches of up to 63 entries of one size; an Offer no frame could carry is not
// passed on), the node's decisions (all, skip, partial with a well-formed or malformed
// bitmap), Chunk headers with any index, length, codec and payload length, chunk writes
// completing in any order, FileDone messages, FileAbort messages (the sender gave up on a
// file, before or after its FileDone: what came of it no longer counts, writes under way
// complete as the node completes them), releases (the node done with a file: the machine forgets what lies before the
// oldest file not done with), queries.
//
// Only what the node would call, given the machine's earlier answers: a refused Offer or
// a failed digest ends the session (the run); a batch is decided after the node's space
// check (4 GiB free here) and in order; only admitted chunks are written, once at a time
// each; ready()/on_file_finished() as try_finalize does. A refused Chunk or FileDone
// does not end the run: both are refused before anything changes (on_chunk is const),
// so the state is one a fresh session can reach too.
//
// A model of the transfer runs alongside and is the oracle: every answer (accepted or
// refused, and the code; ids; entries as stored; admission; completion; readiness and
// the digest verdict) and every counter must match it, so an unsafe entry accepted, a
// wrapped size or total, or a chunk admitted out of range fails the run.
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <deque>
#include <limits>
#include <optional>
#include <string>
#include <string_view>
#include <system_error>
#include <unordered_map>
#include <unordered_set>
#include <vector>

#include "ferry.pb.h"
#include "protocol/digest.hpp"
#include "protocol/errors.hpp"
#include "protocol/path.hpp"
#include "protocol/transfer.hpp"
#include "protocol/types.hpp"
#include "tests/fuzz/accept_model.hpp"
#include "tests/fuzz/fuzz_support.hpp"

namespace ferry::fuzz {
namespace {

using u128 = unsigned __int128;

// Free space the modeled node has: a batch whose bytes exceed it is refused before any
// decision (receive_session's statvfs check), as are the allocations that would follow.
constexpr std::uint64_t free_space = std::uint64_t{4} << 30;

enum op : std::uint8_t {
    op_offer,       // flags, count, entries
    op_bulk_offer,  // flags, count (u16 % 64), one size for all
    op_decide,      // per entry of the oldest undecided batch: kind, partial bitmap
    op_chunk,       // a Chunk header and payload length
    op_complete,    // the write of one admitted chunk completes
    op_file_done,   // a FileDone
    op_query,       // the read-only accessors on one file
    op_release,     // the node is done with one file (receiver_machine::release)
    op_file_abort,  // a FileAbort
    op_give_up,     // the node cannot write one file (receiver_machine::give_up)
    op_count,
};

enum size_class : std::uint8_t {
    size_zero,
    size_u16,
    size_chunks,  // k chunks plus -2..+2 bytes
    size_u32,
    size_near_max,  // 2^64 - 1 - u32
    size_power,     // 2^k plus -2..+2 bytes
    size_u64,
    size_class_count,
};

enum path_class : std::uint8_t {
    // <n> is the entry's ordinal, zero-padded: fresh and nested paths come in the offer
    // order (wire_path_less), so that most offers get past the order check.
    path_fresh,    // "p<n>"
    path_nested,   // "p<n>/f"
    path_dup,      // one already offered, or earlier in the batch
    path_hostile,  // from hostile_paths()
    path_child,    // inside the last one offered (or any one before): "<that>/c<n>"
    path_raw,      // bytes of the input
    path_class_count = path_raw + 4,
};

const std::vector<std::string>& hostile_paths() {
    static const std::vector<std::string> paths = {
        "",
        ".",
        "..",
        "../x",
        "/abs",
        "a//b",
        "a/",
        "a/./b",
        "..\\x/..",
        std::string("x\0y", 3),
        "\xC0\xAF/..",  // names that are not UTF-8 are fine; ".." after one is not
        "C:x",  // safe names that look like other systems' paths
        "a\\..\\..\\b",
        ".x.ferry-part",
        "d/.ferry-0123.part",
        std::string(max_name_bytes + 1, 'n'),
        std::string(max_name_bytes, 'n'),
        std::string(max_path_bytes + 1, 'p'),
    };
    return paths;
}

u128 reference_chunks(std::uint64_t size) { return size / chunk_size + (size % chunk_size != 0); }

std::uint32_t reference_length(std::uint64_t size, std::uint64_t index) {
    u128 off = u128{index} * chunk_size;
    if (off >= size) {
        return 0;
    }
    u128 left = size - off;
    return left < chunk_size ? static_cast<std::uint32_t>(left) : chunk_size;
}

// The sender's digest of chunk `i` of file `f` (what its Chunk header carries).
digest128 true_digest(std::uint32_t f, std::uint64_t i) {
    return {0x9e3779b97f4a7c15u * (f + 1) ^ i, 0xc2b2ae3d27d4eb4fu * (i + 1) ^ f};
}

std::uint64_t read_size(fuzz_input& in) {
    auto small_delta = [&] { return static_cast<std::int64_t>(in.u8() % 5) - 2; };
    switch (in.u8() % size_class_count) {
        case size_zero:
            return 0;
        case size_u16:
            return in.u16();
        case size_chunks: {
            std::uint64_t k = in.u8() % 9;
            std::int64_t d = small_delta();
            return k * chunk_size + d < 0 ? 0 : k * chunk_size + static_cast<std::uint64_t>(d);
        }
        case size_u32:
            return in.u32();
        case size_near_max:
            return std::numeric_limits<std::uint64_t>::max() - in.u32();
        case size_power:
            return (std::uint64_t{1} << (in.u8() % 64)) + static_cast<std::uint64_t>(small_delta());
        default:
            return in.u64();
    }
}

// "<prefix><n>", n zero-padded: ascending in n as bytes.
std::string ordered_name(const char* prefix, std::size_t n) {
    char name[32];
    std::snprintf(name, sizeof(name), "%s%08zu", prefix, n);
    return name;
}

// The offer order, from its definition (not wire_path_less's shortcut): the names of two
// checked paths compared one by one as bytes, a path before the ones it is a prefix of.
bool names_less(const std::string& a, const std::string& b) {
    std::vector<std::string_view> x = split_wire_path(a);
    std::vector<std::string_view> y = split_wire_path(b);
    return std::lexicographical_compare(x.begin(), x.end(), y.begin(), y.end());
}

// Offered paths, for the rule that a path is offered once and a file is nobody's folder.
struct path_index {
    std::unordered_map<std::string, bool> paths;  // path -> is a file
    std::unordered_set<std::string> parents;      // every folder an offered path lies in

    // Offered before, a file that is a folder of an offered path, or lying in a folder
    // that was offered as a file.
    bool taken(const std::string& path, bool is_file) const {
        if (paths.count(path) != 0 || (is_file && parents.count(path) != 0)) {
            return true;
        }
        for (std::size_t slash = path.find('/'); slash != std::string::npos; slash = path.find('/', slash + 1)) {
            auto it = paths.find(path.substr(0, slash));
            if (it != paths.end() && it->second) {
                return true;
            }
        }
        return false;
    }

    void add(const std::string& path, bool is_file) {
        paths.emplace(path, is_file);
        for (std::size_t slash = path.find('/'); slash != std::string::npos; slash = path.find('/', slash + 1)) {
            parents.insert(path.substr(0, slash));
        }
    }
};

struct model_file {
    std::string path;
    bool is_dir = false;
    bool is_link = false;  // a sync's symlink: no data, answered ACCEPT_SKIP whatever the decision
    std::uint64_t size = 0;
    std::uint64_t chunks = 0;
    bool decided = false;
    bool skip = false;
    bool implicit_done = false;
    bool done_seen = false;
    bool finished = false;
    bool released = false;  // finished, and release()d: its chunk state is gone
    bool aborted = false;   // the sender gave up on it (FileAbort), or this side did (failed_here)
    bool failed_here = false;
    std::vector<bool> claimed;  // ACCEPT_PARTIAL: the chunks it had before (not received)
    digest128 sender_digest;
    std::vector<bool> have;
    std::vector<digest128> digests;  // received (or had) chunk digests; zero where missing
    std::vector<digest128> truth;    // the sender's, for a FileDone that matches
    std::uint64_t have_count = 0;
};

struct pending_write {
    std::uint32_t file;
    std::uint32_t index;
    digest128 digest;
    bool whole;  // single_chunk(): the chunk is the whole file
};

class receiver_driver {
  public:
    explicit receiver_driver(receiver_limits limits) : limits_(limits), machine_(limits) {}

    // One operation; false when the node would end the session here.
    bool step(fuzz_input& in) {
        switch (in.u8() % op_count) {
            case op_offer:
                return offer(in, false);
            case op_bulk_offer:
                return offer(in, true);
            case op_decide:
                return decide(in);
            case op_chunk:
                return chunk(in);
            case op_complete:
                return complete(in);
            case op_file_done:
                return file_done(in);
            case op_release:
                release(in);
                return true;
            case op_file_abort:
                return file_abort(in);
            case op_give_up:
                give_up(in);
                return true;
            default:
                query(in);
                return true;
        }
    }

    // The end of the input: the writes under way complete, in order.
    void finish() {
        while (!writes_.empty()) {
            pending_write w = writes_.front();
            writes_.pop_front();
            if (!write_done(w)) {
                return;
            }
        }
    }

    void check_counters() const {
        FUZZ_CHECK(machine_.total_files() == files_.size());
        FUZZ_CHECK(machine_.total_dirs() == dirs_);
        FUZZ_CHECK(machine_.total_bytes() == total_bytes_);
        FUZZ_CHECK(machine_.received_bytes() == received_bytes_);
        FUZZ_CHECK(machine_.skipped_files() == skipped_files_);
        FUZZ_CHECK(machine_.skipped_bytes() == skipped_bytes_);
        FUZZ_CHECK(machine_.received_bytes() + machine_.skipped_bytes() <= machine_.total_bytes());
        FUZZ_CHECK(machine_.aborted_files() == aborted_files_);
        FUZZ_CHECK(machine_.discarded_bytes() == discarded_bytes_);
        FUZZ_CHECK(machine_.all_offered() == last_seen_);
        FUZZ_CHECK(machine_.all_finished() == (last_seen_ && finished_ == files_.size()));
        if (first_seen_) {
            FUZZ_CHECK(machine_.transfer_id() == transfer_id_);
            FUZZ_CHECK(machine_.options().overwrite == overwrite_ && machine_.options().fsync_each == fsync_each_);
        }
    }

  private:
    std::uint32_t pick_file(fuzz_input& in) {
        std::uint8_t sel = in.u8();
        if ((sel & 0x80) != 0 || files_.empty()) {
            return (sel & 0x40) != 0 ? in.u32() : static_cast<std::uint32_t>(files_.size()) + (sel & 3);
        }
        return in.u16() % files_.size();
    }

    std::string read_path(fuzz_input& in, std::size_t ordinal, const std::vector<std::string>& batch) {
        std::uint8_t sel = in.u8();
        switch (sel % path_class_count) {
            case path_fresh:
                return ordered_name("p", ordinal);
            case path_nested:
                return ordered_name("p", ordinal) + "/f";
            case path_dup:
            case path_child: {
                std::size_t n = files_.size() + batch.size();
                if (n == 0) {
                    return ordered_name("p", 0);
                }
                std::uint16_t pick = in.u16();
                std::size_t k = (pick & 1) != 0 ? n - 1 : (pick >> 1) % n;
                std::string path = k < files_.size() ? files_[k].path : batch[k - files_.size()];
                return sel % path_class_count == path_dup ? path : path + "/" + ordered_name("c", ordinal);
            }
            case path_hostile:
                return hostile_paths()[in.u8() % hostile_paths().size()];
            default:
                return in.text();
        }
    }

    // What on_offer may answer, from the rules in transfer.hpp and path.hpp: nothing if
    // the batch is fine, else every code a rule broken by the first bad entry calls for
    // (the order in which on_offer checks one entry's rules is its own business).
    std::vector<std::error_code> expected_offer(const wire::Offer& o) const {
        if (last_seen_) {
            return {protocol_errc::unexpected_message};
        }
        if (!first_seen_ && o.total_files() > limits_.max_files) {
            return {protocol_errc::too_many_files};
        }
        if (first_seen_ && o.transfer_id() != transfer_id_) {
            return {protocol_errc::unexpected_message};
        }
        if (files_.size() + static_cast<std::size_t>(o.entries_size()) > limits_.max_files) {
            return {protocol_errc::too_many_files};
        }
        path_index batch;  // this batch's entries so far
        std::string before = files_.empty() ? std::string() : files_.back().path;  // the last accepted
        u128 total = total_bytes_;
        for (int i = 0; i < o.entries_size(); ++i) {
            const wire::Entry& e = o.entries(i);
            std::vector<std::error_code> broken;
            if (e.id() != files_.size() + static_cast<std::size_t>(i)) {
                broken.push_back(protocol_errc::duplicate_id);
            }
            bool safe = !check_wire_path(e.path()) && !is_partial_file_name(split_wire_path(e.path()).back());
            bool known_kind = e.kind() == wire::ENTRY_FILE || e.kind() == wire::ENTRY_DIR;
            // A symlink only in a sync (the first batch says), holding what a link can hold.
            if (e.kind() == wire::ENTRY_SYMLINK) {
                const std::string& t = e.link_target();
                known_kind = (first_seen_ ? sync_ : o.has_sync()) && !t.empty() && t.size() <= max_link_target &&
                             t.find('\0') == std::string::npos && e.size() == 0;
            }
            if (!safe || !known_kind) {
                broken.push_back(protocol_errc::bad_path);
            }
            bool is_file = e.kind() != wire::ENTRY_DIR;
            if (safe && (paths_.taken(e.path(), is_file) || batch.taken(e.path(), is_file))) {
                broken.push_back(protocol_errc::duplicate_path);
            }
            // Each after the one before, name by name, each name compared as bytes.
            if (safe && (!files_.empty() || i > 0) && !names_less(before, e.path())) {
                broken.push_back(before == e.path() ? protocol_errc::duplicate_path : protocol_errc::path_out_of_order);
            }
            if (e.kind() == wire::ENTRY_FILE) {
                total += e.size();
                // Every chunk needs an index a Chunk can carry, and the sum a total_bytes().
                if (reference_chunks(e.size()) > std::numeric_limits<std::uint32_t>::max() ||
                    total > std::numeric_limits<std::uint64_t>::max()) {
                    broken.push_back(protocol_errc::bad_chunk);
                }
            }
            if (!broken.empty()) {
                return broken;
            }
            batch.add(e.path(), is_file);
            before = e.path();
        }
        return {};
    }

    bool offer(fuzz_input& in, bool bulk) {
        std::uint8_t flags = in.u8();
        wire::Offer o;
        o.set_transfer_id((flags & 8) != 0 ? in.u64() : transfer_id_);
        o.set_last((flags & 1) != 0);
        o.set_overwrite((flags & 2) != 0);
        o.set_fsync_each((flags & 4) != 0);
        if ((flags & 32) != 0 && !first_seen_) {
            o.mutable_sync()->set_share("s");  // a sync: symlinks may come
        }
        std::size_t n = bulk ? in.u16() % 64 : in.u8() % 9;
        o.set_total_files((flags & 16) != 0 ? in.u64() : files_.size() + n);
        std::vector<std::string> batch;
        std::uint64_t bulk_size = bulk ? read_size(in) : 0;
        for (std::size_t i = 0; i < n; ++i) {
            wire::Entry* e = o.add_entries();
            std::size_t ordinal = files_.size() + i;
            if (bulk) {
                e->set_id(static_cast<std::uint32_t>(ordinal));
                e->set_path(ordered_name("p", ordinal));
                e->set_size(bulk_size);
            } else {
                std::uint8_t sel = in.u8();
                e->set_id((sel & 0x80) != 0 ? in.u32() : static_cast<std::uint32_t>(ordinal));
                e->set_path(read_path(in, ordinal, batch));
                std::uint8_t kind = in.u8();
                e->set_kind(kind % 8 == 1   ? wire::ENTRY_DIR
                            : kind % 8 == 2 ? static_cast<wire::EntryKind>(kind)
                            : kind % 8 == 3 ? wire::ENTRY_SYMLINK
                                            : wire::ENTRY_FILE);
                if (kind % 8 == 3) {
                    std::uint8_t t = in.u8();  // mostly a short target; else empty, NUL or too long
                    e->set_link_target(t < 200   ? std::string(1 + t % 16, 'a' + t % 26)
                                       : t < 220 ? std::string()
                                       : t < 240 ? std::string("a\0b", 3)
                                                 : std::string(max_link_target + t % 2, 'x'));
                }
                e->set_size(kind % 8 == 3 && (kind & 0x80) == 0 ? 0 : read_size(in));
                e->set_mode((sel & 0x40) != 0 ? in.u32() : 0644);
                e->set_mtime_ns(static_cast<std::int64_t>(in.u64()));
            }
            batch.push_back(e->path());
        }
        // The frame decoder lets no larger header through (a Header adds a few bytes).
        if (o.ByteSizeLong() + 16 > max_header_len) {
            return true;
        }

        std::vector<std::error_code> broken = expected_offer(o);
        std::vector<file_id> ids;
        std::error_code ec = machine_.on_offer(o, ids);
        FUZZ_CHECK(!ec == broken.empty());
        FUZZ_CHECK(!ec || std::find(broken.begin(), broken.end(), ec) != broken.end());
        if (ec) {
            return false;  // the node refuses the transfer
        }
        if (!first_seen_) {
            first_seen_ = true;
            sync_ = o.has_sync();
            transfer_id_ = o.transfer_id();
            overwrite_ = o.overwrite();
            fsync_each_ = o.fsync_each();
        }
        last_seen_ = o.last();
        FUZZ_CHECK(ids.size() == n);
        for (std::size_t i = 0; i < n; ++i) {
            const wire::Entry& e = o.entries(static_cast<int>(i));
            FUZZ_CHECK(ids[i].value == files_.size());
            model_file f;
            f.path = e.path();
            f.is_dir = e.kind() == wire::ENTRY_DIR;
            f.is_link = e.kind() == wire::ENTRY_SYMLINK;
            f.size = f.is_dir || f.is_link ? 0 : e.size();
            f.chunks = static_cast<std::uint64_t>(reference_chunks(f.size));
            const entry_info& info = machine_.entry(ids[i]);
            FUZZ_CHECK(info.path == f.path && info.is_dir == f.is_dir && info.size == f.size);
            FUZZ_CHECK(info.is_link == f.is_link && info.link_target == (f.is_link ? e.link_target() : ""));
            // Never setuid/setgid; a symlink's own bits mean nothing.
            FUZZ_CHECK(info.mode == (f.is_link ? 0777u : e.mode() & (f.is_dir ? 01777u : 0777u)));
            FUZZ_CHECK(info.mtime_ns == e.mtime_ns());
            paths_.add(f.path, !f.is_dir);
            total_bytes_ += f.size;
            dirs_ += f.is_dir ? 1 : 0;
            files_.push_back(std::move(f));
        }
        batches_.push_back({std::move(ids), total_bytes_ - received_bytes_});
        return true;
    }

    bool decide(fuzz_input& in) {
        if (batches_.empty()) {
            return true;
        }
        auto [ids, need] = std::move(batches_.front());
        batches_.pop_front();
        if (need > free_space) {
            return false;  // "not enough space": the node refuses the transfer
        }
        std::vector<receiver_machine::decision> decisions;
        std::vector<bool> well_formed;
        for (file_id id : ids) {
            model_file& f = files_[id.value];
            receiver_machine::decision d;
            d.id = id;
            std::uint8_t sel = in.u8();
            d.kind = sel % 4 == 2 ? wire::ACCEPT_SKIP : sel % 4 == 3 ? wire::ACCEPT_PARTIAL : wire::ACCEPT_ALL;
            f.truth.resize(f.chunks);
            for (std::uint64_t i = 0; i < f.chunks; ++i) {
                f.truth[i] = true_digest(id.value, i);
            }
            bool ok_partial = false;
            if (d.kind == wire::ACCEPT_PARTIAL) {
                // Bitmap and digests of the right size unless the selector says otherwise.
                std::uint64_t bits = (sel & 0x10) != 0 ? f.chunks + 1 : f.chunks;
                std::uint64_t digests = (sel & 0x20) != 0 ? f.chunks / 2 : f.chunks;
                std::span<const std::uint8_t> pattern = in.bytes(in.u8() % 8);
                chunk_bitmap have(bits);
                for (std::uint64_t i = 0; i < bits && !pattern.empty(); ++i) {
                    if ((pattern[(i / 8) % pattern.size()] >> (i % 8)) & 1u) {
                        have.set(i);
                    }
                }
                d.have = have;
                for (std::uint64_t i = 0; i < digests; ++i) {
                    d.have_digests.push_back(true_digest(id.value, i));
                }
                ok_partial = (sel & 0x40) == 0;
                if (!ok_partial) {
                    d.have.reset();
                }
                ok_partial = ok_partial && bits == f.chunks && digests == f.chunks;
            }
            well_formed.push_back(ok_partial);
            decisions.push_back(std::move(d));
        }

        const wire::Accept sent = machine_.accept(decisions);
        // Read as a sender reads it (Accept.unchanged taken back in place): each bit an
        // answer the model below expects as plain.
        std::optional<wire::Accept> full =
            decisions.empty()
                ? std::optional<wire::Accept>(sent)
                : expanded_accept(sent, decisions.front().id.value, static_cast<std::uint32_t>(decisions.size()),
                                  [&](std::uint32_t i) { return files_[i].is_dir; });
        FUZZ_CHECK(full.has_value());
        const wire::Accept& a = *full;
        FUZZ_CHECK(a.transfer_id() == transfer_id_);
        FUZZ_CHECK(static_cast<std::size_t>(a.files_size()) == decisions.size());
        bool any_partial = false;
        for (std::size_t k = 0; k < decisions.size(); ++k) {
            const receiver_machine::decision& d = decisions[k];
            const wire::FileAccept& fa = a.files(static_cast<int>(k));
            model_file& f = files_[d.id.value];
            FUZZ_CHECK(fa.id() == d.id.value);
            f.decided = true;
            if (f.is_dir || f.is_link || d.kind == wire::ACCEPT_SKIP) {
                FUZZ_CHECK(fa.kind() == (f.is_dir ? wire::ACCEPT_ALL : wire::ACCEPT_SKIP) && fa.have().empty());
                if (!f.is_dir) {
                    ++skipped_files_;
                    skipped_bytes_ += f.size;
                }
                f.skip = true;
                f.finished = true;
                ++finished_;
                continue;
            }
            f.have.assign(f.chunks, false);
            f.claimed.assign(f.chunks, false);
            f.digests.assign(f.chunks, digest128{});
            if (well_formed[k]) {
                any_partial = true;
                FUZZ_CHECK(fa.kind() == wire::ACCEPT_PARTIAL && fa.have() == d.have->to_bytes());
                for (std::uint64_t i = 0; i < f.chunks; ++i) {
                    f.have[i] = d.have->test(i);
                    f.claimed[i] = f.have[i];
                    f.have_count += f.have[i] ? 1 : 0;
                }
                f.digests = d.have_digests;
            } else {
                FUZZ_CHECK(fa.kind() == wire::ACCEPT_ALL && fa.have().empty());
                f.implicit_done = f.chunks == 1;
            }
            FUZZ_CHECK(machine_.single_chunk(d.id) == f.implicit_done);
        }
        // The answer goes back in one frame: without bitmaps it is never larger than the
        // Offer batch it answers, which came in one (a PARTIAL one can be larger).
        FUZZ_CHECK(any_partial || sent.ByteSizeLong() < max_header_len);
        return true;
    }

    // A file accepted with data to come (not skipped, not a folder or link).
    static bool came(const model_file& f) { return f.decided && !f.skip && !f.is_dir && !f.is_link; }

    std::error_code expected_chunk(const wire::Chunk& c, std::uint32_t payload_len) const {
        if (c.file_id() >= files_.size()) {
            return protocol_errc::unknown_file;
        }
        const model_file& f = files_[c.file_id()];
        if (!machine_.entry_held(file_id{c.file_id()})) {
            // Forgotten (query checks when that may be): a file that came is finished.
            return came(f) ? std::error_code{} : protocol_errc::unknown_file;
        }
        if (f.aborted) {
            return {};  // sent before the sender gave up on it: dropped unread, as a forgotten one's
        }
        if (!f.decided || f.skip || f.is_dir || f.is_link) {
            return protocol_errc::unknown_file;  // (a finished file's chunk is admitted, then dropped)
        }
        if (c.index() >= f.chunks || c.raw_len() != reference_length(f.size, c.index())) {
            return protocol_errc::bad_chunk;
        }
        if (c.codec() == wire::CODEC_RAW) {
            return payload_len == c.raw_len() ? std::error_code{} : protocol_errc::payload_mismatch;
        }
        if (c.codec() == wire::CODEC_ZSTD) {
            return payload_len > 0 && payload_len < c.raw_len() ? std::error_code{} : protocol_errc::payload_mismatch;
        }
        return protocol_errc::bad_chunk;
    }

    bool chunk(fuzz_input& in) {
        wire::Chunk c;
        std::uint32_t file = pick_file(in);
        c.set_file_id(file);
        const model_file* f = file < files_.size() ? &files_[file] : nullptr;
        std::uint64_t chunks = f != nullptr ? f->chunks : 0;
        std::uint8_t sel = in.u8();
        switch (sel % 4) {
            case 0: {  // the first chunk neither here nor being written
                std::uint64_t i = 0;
                while (f != nullptr && i < f->have.size() &&
                       (f->have[i] ||
                        writing_.count(chunk_key(file_id{file}, chunk_index{static_cast<std::uint32_t>(i)})))) {
                    ++i;
                }
                c.set_index(static_cast<std::uint32_t>(i));
                break;
            }
            case 1:
                c.set_index(in.u32());
                break;
            case 2:
                c.set_index(static_cast<std::uint32_t>(in.u32() % (chunks + 1)));
                break;
            default:
                c.set_index(chunks > 0 ? static_cast<std::uint32_t>(chunks - 1) : 0);
                break;
        }
        std::uint32_t right_len = f != nullptr ? reference_length(f->size, c.index()) : 0;
        switch ((sel >> 2) % 4) {
            case 0:
            case 1:
                c.set_raw_len(right_len);
                break;
            case 2:
                c.set_raw_len(in.u32());
                break;
            default:
                c.set_raw_len(right_len + (in.flag() ? 1 : -1));
                break;
        }
        std::uint8_t codec = in.u8();
        c.set_codec(codec % 4 < 2    ? wire::CODEC_RAW
                    : codec % 4 == 2 ? wire::CODEC_ZSTD
                                     : static_cast<wire::Codec>(codec));
        std::uint32_t payload_len = c.raw_len();
        if ((sel & 0x10) != 0) {
            payload_len = in.u32() % (max_payload_len + 1);  // what a frame can carry
        } else if (c.codec() == wire::CODEC_ZSTD) {
            payload_len = c.raw_len() / 2;
        }
        payload_len = std::min(payload_len, max_payload_len);
        digest128 d = (sel & 0x20) != 0 ? digest128{in.u64(), in.u64()} : true_digest(file, c.index());
        c.set_hash_lo(d.lo);
        c.set_hash_hi(d.hi);

        std::error_code ec = machine_.on_chunk(c, payload_len);
        FUZZ_CHECK(ec == expected_chunk(c, payload_len));
        if (ec) {
            return true;  // refused without a change (on_chunk is const)
        }
        if (f->finished) {
            return true;  // receive_session::on_chunk: dropped and confirmed again
        }
        // receive_session::on_chunk: a duplicate is re-acked, one being written dropped.
        file_id id{file};
        chunk_index idx{c.index()};
        FUZZ_CHECK(machine_.has_chunk(id, idx) == f->have[c.index()]);
        if (f->have[c.index()] || !writing_.insert(chunk_key(id, idx)).second) {
            return true;
        }
        FUZZ_CHECK(machine_.single_chunk(id) == f->implicit_done);
        writes_.push_back({file, c.index(), d, f->implicit_done});
        return true;
    }

    bool complete(fuzz_input& in) {
        std::uint16_t pick = in.u16();
        if (writes_.empty()) {
            return true;
        }
        std::size_t k = pick % writes_.size();
        pending_write w = writes_[k];
        writes_.erase(writes_.begin() + static_cast<std::ptrdiff_t>(k));
        return write_done(w);
    }

    // A verified chunk was written: the completion handlers of receive_session.
    bool write_done(const pending_write& w) {
        writing_.erase(chunk_key(file_id{w.file}, chunk_index{w.index}));
        model_file& f = files_[w.file];
        if (f.aborted) {
            // Given up on while written: a chunk of a larger file is left unconfirmed; the
            // whole-file write of a one-chunk file names it as before (on_whole_written).
            if (w.whole) {
                std::uint64_t before = machine_.received_bytes();
                if (!f.released && !f.have[w.index]) {  // its digest is kept, its bytes not counted
                    f.have[w.index] = true;
                    f.digests[w.index] = w.digest;
                    ++f.have_count;
                    f.done_seen = true;
                }
                machine_.on_chunk_written(file_id{w.file}, chunk_index{w.index}, w.digest);
                bool ok = false;
                machine_.ready(file_id{w.file}, ok);
                machine_.on_file_finished(file_id{w.file});
                FUZZ_CHECK(machine_.received_bytes() == before);  // counts nothing
            }
            return true;
        }
        FUZZ_CHECK(!f.have[w.index] && !f.finished);
        f.have[w.index] = true;
        f.digests[w.index] = w.digest;
        ++f.have_count;
        received_bytes_ += reference_length(f.size, w.index);
        bool complete = machine_.on_chunk_written(file_id{w.file}, chunk_index{w.index}, w.digest);
        FUZZ_CHECK(complete == (f.have_count == f.chunks));
        if (w.whole) {
            // The chunk is the whole file: its digest is the file's, ok by construction.
            f.done_seen = true;
            f.sender_digest = file_digest(f.digests);
            bool ok = false;
            FUZZ_CHECK(complete && machine_.ready(file_id{w.file}, ok) && ok);
            machine_.on_file_finished(file_id{w.file});
            f.finished = true;
            ++finished_;
            return true;
        }
        return !complete || try_finalize(w.file);
    }

    // receive_session::try_finalize: false when the digest fails (the session ends).
    bool try_finalize(std::uint32_t file) {
        model_file& f = files_[file];
        bool ok = false;
        bool ready = machine_.ready(file_id{file}, ok);
        FUZZ_CHECK(ready == (!f.finished && f.done_seen && f.have_count == f.chunks));
        if (!ready) {
            return true;
        }
        FUZZ_CHECK(ok == (file_digest(f.digests) == f.sender_digest));
        if (!ok) {
            return false;
        }
        machine_.on_file_finished(file_id{file});
        f.finished = true;
        ++finished_;
        return true;
    }

    bool file_done(fuzz_input& in) {
        std::uint32_t file = pick_file(in);
        wire::FileDone done;
        done.set_file_id(file);
        digest128 d;
        if (in.flag() && file < files_.size()) {
            d = file_digest(files_[file].truth);
        } else {
            d = {in.u64(), in.u64()};
        }
        done.set_digest_lo(d.lo);
        done.set_digest_hi(d.hi);

        std::error_code expect;
        if (file >= files_.size()) {
            expect = protocol_errc::unknown_file;
        } else if (files_[file].failed_here) {
            FUZZ_CHECK(!machine_.on_file_done(done));  // crossed this side's FileResult: dropped
            return true;
        } else if (const model_file& f = files_[file];
                   !f.decided || f.skip || f.is_dir || f.done_seen || f.implicit_done || f.aborted) {
            expect = protocol_errc::unexpected_message;  // (one given up on: no FileDone comes after)
        }
        std::error_code ec = machine_.on_file_done(done);
        FUZZ_CHECK(ec == expect);
        if (ec) {
            return true;  // refused before anything changed
        }
        files_[file].done_seen = true;
        files_[file].sender_digest = d;
        return try_finalize(file);
    }

    void query(fuzz_input& in) {
        if (files_.empty()) {
            return;
        }
        std::uint32_t file = in.u16() % files_.size();
        const model_file& f = files_[file];
        if (!machine_.entry_held(file_id{file})) {
            // Forgotten only once done with, and so is every file before it.
            FUZZ_CHECK(f.finished && (!came(f) || f.released));
            FUZZ_CHECK(file == 0 || !machine_.entry_held(file_id{file - 1}));
            FUZZ_CHECK(machine_.finished(file_id{file}) && !machine_.aborted(file_id{file}));
            FUZZ_CHECK(!machine_.single_chunk(file_id{file}));
            bool ok = false;
            FUZZ_CHECK(!machine_.ready(file_id{file}, ok));
            return;
        }
        FUZZ_CHECK(machine_.entry(file_id{file}).path == f.path);
        FUZZ_CHECK(machine_.aborted(file_id{file}) == f.aborted);
        FUZZ_CHECK(machine_.finished(file_id{file}) == f.finished);
        FUZZ_CHECK(machine_.single_chunk(file_id{file}) == f.implicit_done);
        static const std::vector<digest128> none;
        FUZZ_CHECK(machine_.received_digest(file_id{file}) == file_digest(f.released ? none : f.digests));
        bool ok = false;
        bool ready = machine_.ready(file_id{file}, ok);
        FUZZ_CHECK(ready == (!f.finished && f.done_seen && f.have_count == f.chunks));
        std::uint32_t pick = in.u32();
        if (f.decided && !f.skip && !f.finished && f.chunks > 0) {
            std::uint64_t i = pick % f.chunks;
            FUZZ_CHECK(!f.released);
            FUZZ_CHECK(machine_.has_chunk(file_id{file}, chunk_index{static_cast<std::uint32_t>(i)}) == f.have[i]);
        }
    }

    // receive_session::report_done: a finished file's state goes (the machine does nothing
    // for one not finished).
    void release(fuzz_input& in) {
        if (files_.empty()) {
            return;
        }
        std::uint32_t file = in.u16() % files_.size();
        machine_.release(file_id{file});
        model_file& f = files_[file];
        f.released = f.released || (f.finished && came(f));
    }

    // receive_session::on_file_abort: a refused one ends the session (false). What came of
    // the file stops counting as received; it is finished, never made final.
    bool file_abort(fuzz_input& in) {
        std::uint32_t file = pick_file(in);
        wire::FileAbort a;
        a.set_file_id(file);
        a.set_vanished(in.flag());
        a.set_reason("gone");
        std::error_code expect;
        if (file >= files_.size()) {
            expect = protocol_errc::unknown_file;
        } else if (files_[file].failed_here) {
            FUZZ_CHECK(!machine_.on_file_abort(a));  // crossed this side's FileResult: dropped
            return true;
        } else if (!machine_.entry_held(file_id{file})) {
            expect = protocol_errc::unexpected_message;  // finished and forgotten (query checks when)
        } else if (const model_file& f = files_[file];
                   !f.decided || f.skip || f.is_dir || f.is_link || f.aborted || f.finished) {
            expect = protocol_errc::unexpected_message;  // (after its FileDone, unfinished: taken)
        }
        std::error_code ec = machine_.on_file_abort(a);
        FUZZ_CHECK(ec == expect);
        if (ec) {
            return false;
        }
        drop_received(files_[file]);
        FUZZ_CHECK(machine_.aborted(file_id{file}) && machine_.finished(file_id{file}));
        return true;
    }

    // receive_session::give_up_here: the node could not write or name a file that comes
    // (decided, not skipped, a regular file), finished or not, not yet released; once.
    void give_up(fuzz_input& in) {
        std::uint32_t file = pick_file(in);
        if (file >= files_.size()) {
            return;  // (the node gives up only on files it was offered)
        }
        const model_file& m = files_[file];
        bool due = machine_.entry_held(file_id{file}) && m.decided && !m.skip && !m.is_dir && !m.is_link && !m.aborted &&
                   !m.released;
        FUZZ_CHECK(machine_.give_up(file_id{file}) == due);
        if (!due) {
            return;
        }
        files_[file].failed_here = true;
        drop_received(files_[file]);
        FUZZ_CHECK(machine_.failed_here(file_id{file}));
        FUZZ_CHECK(machine_.aborted(file_id{file}) && machine_.finished(file_id{file}));
    }

    // A file given up on (either side): what came of it stops counting as received; it is
    // finished, never made final.
    void drop_received(model_file& f) {
        f.aborted = true;
        ++aborted_files_;
        for (std::uint64_t i = 0; i < f.chunks; ++i) {
            if (f.have[i] && !f.claimed[i]) {
                received_bytes_ -= reference_length(f.size, i);
                discarded_bytes_ += reference_length(f.size, i);
            }
        }
        if (!f.finished) {
            f.finished = true;
            ++finished_;
        }
    }

    receiver_limits limits_;
    receiver_machine machine_;
    std::vector<model_file> files_;
    path_index paths_;
    std::deque<std::pair<std::vector<file_id>, std::uint64_t>> batches_;  // undecided: ids, bytes needed
    std::deque<pending_write> writes_;
    std::unordered_set<std::uint64_t> writing_;
    bool first_seen_ = false;
    bool sync_ = false;  // the first batch carried a SyncTarget
    bool last_seen_ = false;
    std::uint64_t transfer_id_ = 0;
    bool overwrite_ = false;
    bool fsync_each_ = false;
    std::uint64_t total_bytes_ = 0;
    std::uint64_t received_bytes_ = 0;
    std::uint64_t skipped_files_ = 0;
    std::uint64_t skipped_bytes_ = 0;
    std::uint64_t dirs_ = 0;
    std::uint64_t finished_ = 0;
    std::uint64_t aborted_files_ = 0;
    std::uint64_t discarded_bytes_ = 0;
};

// Seeds: whole sessions written with the encoding above.
class session_writer {
  public:
    explicit session_writer(bool tiny, std::uint8_t max_files = 0) {
        out_.u8(tiny ? 1 : 0);
        if (tiny) {
            out_.u8(max_files);
        }
    }
    struct entry {
        std::string path;
        bool dir;
        std::uint64_t size;
    };
    session_writer& offer(const std::vector<entry>& entries, bool last, std::uint8_t extra_flags = 0) {
        out_.u8(op_offer).u8(static_cast<std::uint8_t>((last ? 1 : 0) | extra_flags));
        out_.u8(static_cast<std::uint8_t>(entries.size()));
        for (const entry& e : entries) {
            out_.u8(0).u8(path_raw).text(e.path).u8(e.dir ? 1 : 0);
            out_.u8(size_u64).u64(e.size).u64(1'700'000'000'000'000'000);
        }
        return *this;
    }
    session_writer& decide(const std::vector<std::uint8_t>& kinds) {
        out_.u8(op_decide);
        for (std::uint8_t k : kinds) {
            out_.u8(k);
            if (k % 4 == 3) {
                out_.u8(1).u8(0x05);  // partial: chunks 0 and 2 present
            }
        }
        return *this;
    }
    // The first missing chunk of `file`, raw or zstd.
    session_writer& chunk(std::uint16_t file, bool zstd = false) {
        out_.u8(op_chunk).u8(0).u16(file).u8(0).u8(zstd ? 2 : 0);
        return *this;
    }
    session_writer& complete(std::uint16_t k = 0) {
        out_.u8(op_complete).u16(k);
        return *this;
    }
    session_writer& file_done(std::uint16_t file) {
        out_.u8(op_file_done).u8(0).u16(file).u8(1);
        return *this;
    }
    session_writer& file_abort(std::uint16_t file) {
        out_.u8(op_file_abort).u8(0).u16(file).u8(1);
        return *this;
    }
    session_writer& query(std::uint16_t file) {
        out_.u8(op_query).u16(file).u32(1);
        return *this;
    }
    std::vector<std::uint8_t> data() const { return out_.data(); }

  private:
    fuzz_output out_;
};

std::vector<seed> seeds() {
    std::vector<seed> out;
    {
        // A folder, a 2-chunk file, a 1-chunk file, an empty file: everything arrives.
        session_writer s(false);
        s.offer({{"d", true, 0}, {"d/two", false, chunk_size + 100}, {"e-one", false, 100}, {"empty", false, 0}}, true)
            .decide({0, 0, 0, 0})
            .chunk(1)
            .chunk(2)
            .complete(1)
            .chunk(1, true)
            .complete()
            .complete()
            .file_done(1)
            .file_done(3)
            .query(1)
            .query(2);
        out.push_back({"whole-transfer", s.data()});
    }
    {
        // Two batches; skip, partial (3 chunks, has 0 and 2) and all.
        session_writer s(false);
        s.offer({{"a", false, 3 * chunk_size}, {"b", false, 50}}, false)
            .offer({{"c", false, 2 * chunk_size - 1}}, true)
            .decide({3, 2})
            .decide({0})
            .chunk(0)
            .chunk(2)
            .chunk(2)
            .complete()
            .complete()
            .complete()
            .file_done(0)
            .file_done(2)
            .query(0);
        out.push_back({"batches-skip-partial", s.data()});
    }
    {
        // A partial file (has chunks 0 and 2 of 3) given up on with chunk 1 written and a
        // one-chunk file given up on while its whole write is under way.
        session_writer s(false);
        s.offer({{"a", false, 3 * chunk_size}, {"b", false, 50}}, true)
            .decide({3, 0})
            .chunk(0)
            .complete()
            .chunk(1)
            .file_abort(0)
            .file_abort(1)
            .complete()
            .query(0)
            .query(1);
        out.push_back({"file-abort", s.data()});
    }
    {
        // Tiny limits: two files allowed, three offered.
        session_writer s(true, 1);
        s.offer({{"x", false, 1}, {"y", false, 1}}, false).offer({{"z", false, 1}}, true);
        out.push_back({"tiny-limits", s.data()});
    }
    {
        // Hostile entries: unsafe paths, a duplicate, a foreign transfer id.
        fuzz_output o;
        o.u8(0).u8(op_offer).u8(1).u8(3);
        o.u8(0).u8(path_hostile).u8(3).u8(0).u8(size_u16).u16(10).u64(0);
        o.u8(0).u8(path_fresh).u8(0).u8(size_zero).u64(0);
        o.u8(0).u8(path_dup).u16(0).u8(0).u8(size_zero).u64(0);
        out.push_back({"hostile-offer", o.data()});
    }
    {
        // A bulk batch of 63 one-chunk files, decided, one chunk in.
        fuzz_output o;
        o.u8(0).u8(op_bulk_offer).u8(1).u16(63).u8(size_u16).u16(4096);
        o.u8(op_decide);
        for (int i = 0; i < 63; ++i) {
            o.u8(0);
        }
        o.u8(op_chunk).u8(0).u16(7).u8(0).u8(0).u8(op_complete).u16(0);
        out.push_back({"bulk", o.data()});
    }
    return out;
}

}  // namespace
}  // namespace ferry::fuzz

extern "C" int LLVMFuzzerInitialize(int*, char***) {
    ferry::fuzz::initialize(ferry::fuzz::seeds);
    return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    using namespace ferry;
    using namespace ferry::fuzz;
    fuzz_input in({data, size});
    receiver_limits limits;
    if ((in.u8() & 1) != 0) {
        limits.max_files = 1 + in.u8() % 8;
    }
    receiver_driver driver(limits);
    while (!in.empty()) {
        if (!driver.step(in)) {
            return 0;  // the session ended: the machine is dropped as it is
        }
        driver.check_counters();
    }
    driver.finish();
    driver.check_counters();
    return 0;
}
