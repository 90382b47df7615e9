// Fuzz target: sender_machine (protocol/transfer.hpp) driven like send_session does, with
// every message from the receiver (Accept, ChunkAck, FileResult, TransferResult) built
// from the input.
//
// The input first describes the local entries (count, then per entry: directory or file,
// path length up to max_path_bytes, size class, mtime), as a source scan would find them;
// then a sequence of operations (see the op enum): the receiver's Accept for the next
// batch (well-formed or with a wrong transfer id, count, id, kind or bitmap), taking the
// next chunk, hashing a taken chunk, requeueing one (its connection failed), acks (for a
// chunk sent, or any key), FileResult and TransferResult with any id and verdict, and
// the node's own calls: release() of a file (what the node does once a file's result is
// reported) and abort_file() (the file vanished or changed while read).
//
// Only what the node would do given the machine's answers: a refused message ends the
// session (the run); only chunks it handed out are hashed or requeued, each taken chunk
// hashed once. A file too large to track cheaply here (over 64 chunks) is always skipped
// by the modeled receiver: a sender's memory for a file it sends grows with that file.
//
// A model is the oracle: each answer and code, each chunk handed out (never one twice
// unless requeued, requeued ones first, offset/length/send right), each FileDone (exactly
// one per file that needs one, with the digest of its chunk digests), and the counters.
// At the end of the input, if the session is still on, the rest of the transfer runs to
// completion (every chunk, ack, FileResult, then TransferResult) and must succeed.
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <deque>
#include <limits>
#include <optional>
#include <string>
#include <system_error>
#include <vector>

#include "ferry.pb.h"
#include "protocol/digest.hpp"
#include "protocol/errors.hpp"
#include "protocol/frame.hpp"
#include "protocol/le_bytes.hpp"
#include "protocol/transfer.hpp"
#include "protocol/types.hpp"
#include "tests/fuzz/accept_model.hpp"
#include "tests/fuzz/fuzz_support.hpp"

namespace ferry::fuzz {
namespace {

constexpr std::uint64_t transfer = 7;
constexpr std::uint64_t max_tracked_chunks = 64;

enum op : std::uint8_t {
    op_accept,           // flags, per file: kind byte (and bitmap)
    op_take,             // next_chunk()
    op_hash,             // hash taken chunk k
    op_requeue,          // requeue taken or in-flight chunk k
    op_ack,              // a ChunkAck key
    op_file_result,      // a FileResult
    op_transfer_result,  // a TransferResult
    op_release,          // release() of file k
    op_abort,            // abort_file() of file k
    op_count,
};

digest128 true_digest(std::uint32_t f, std::uint64_t i) {
    return {0x9e3779b97f4a7c15u * (f + 1) ^ i, 0xc2b2ae3d27d4eb4fu * (i + 1) ^ f};
}

std::vector<entry_info> read_entries(fuzz_input& in) {
    std::vector<entry_info> entries(in.u8() % 33);
    for (std::size_t i = 0; i < entries.size(); ++i) {
        entry_info& e = entries[i];
        std::uint8_t sel = in.u8();
        static constexpr std::size_t lengths[] = {8, 64, 1024, max_path_bytes};
        e.path = "e" + std::to_string(i) + "/";
        e.path.resize(std::max(e.path.size(), lengths[(sel >> 1) % 4] - (sel >> 3) % 8), 'x');
        e.is_dir = (sel & 1) != 0;
        e.mode = e.is_dir ? 0755 : 0644;
        e.mtime_ns = static_cast<std::int64_t>(in.u64());
        if (e.is_dir) {
            continue;
        }
        switch (in.u8() % 4) {
            case 0:
                e.size = 0;
                break;
            case 1:
                e.size = 1 + in.u16() % 1000;
                break;
            case 2: {  // k chunks, -2..+2 bytes
                std::uint64_t k = in.u8() % 9;
                std::int64_t d = in.u8() % 5 - 2;
                e.size = d < 0 && k == 0 ? 0 : k * chunk_size + static_cast<std::uint64_t>(d);
                break;
            }
            default: {  // up to 2^58: 32 local files stay far below 2^64 together
                std::uint64_t v = in.u64();
                e.size = v >> (6 + in.u8() % 58);
                break;
            }
        }
    }
    return entries;
}

struct model_file {
    entry_info info;
    std::uint64_t chunks = 0;
    bool accepted = false;
    bool skipped = false;  // a directory or ACCEPT_SKIP: done on accept
    bool result = false;
    std::optional<std::vector<bool>> have;
    std::uint64_t next = 0;  // chunks handed out (first time)
    std::vector<bool> hashed;
    std::vector<bool> acked;
    std::uint64_t hashed_count = 0;
    int file_dones = 0;
    std::uint64_t kept = 0;  // its chunks' bytes found at the receiver (in skipped_bytes_)
    bool released = false;  // release() took it: its late acks count nothing
    bool aborted = false;   // abort_file() gave up on it
    bool done_with() const { return released || aborted; }
};

class sender_driver {
  public:
    // The entries go to the machine in parts of five, as a streamed scan hands them, so
    // that trim_entries (after every step, as a node trims) has parts to let go.
    static constexpr std::size_t part_size = 5;
    static std::vector<entry_info> part(const std::vector<entry_info>& all, std::size_t at) {
        return {all.begin() + static_cast<std::ptrdiff_t>(at),
                all.begin() + static_cast<std::ptrdiff_t>(std::min(all.size(), at + part_size))};
    }

    explicit sender_driver(std::vector<entry_info> entries)
        : machine_(transfer, part(entries, 0), {}, entries.size() <= part_size) {
        for (std::size_t at = part_size; at < entries.size(); at += part_size) {
            machine_.append(part(entries, at));
        }
        machine_.complete();
        for (entry_info& e : entries) {
            model_file f;
            f.chunks = e.is_dir ? 0 : chunk_count(e.size);
            total_bytes_ += e.is_dir ? 0 : e.size;
            f.info = std::move(e);
            files_.push_back(std::move(f));
        }
        check_offers();
    }

    bool step(fuzz_input& in) {
        switch (in.u8() % op_count) {
            case op_accept:
                return accept(in);
            case op_take:
                take();
                return true;
            case op_hash:
                hash(in.u16());
                return true;
            case op_requeue:
                requeue(in.u16());
                return true;
            case op_ack:
                return ack(in);
            case op_file_result:
                return file_result(in);
            case op_release:
                release(in.u8());
                return true;
            case op_abort:
                abort(in.u8());
                return true;
            default:
                return transfer_result(in);
        }
    }

    // The rest of a good transfer: every batch accepted whole (skipping what is too large
    // here), every chunk taken, hashed and acked, every FileResult, the TransferResult.
    void finish() {
        while (batches_accepted_ < batches_.size()) {
            send_offers();
            wire::Accept a;
            a.set_transfer_id(transfer);
            auto [first, end] = batches_[batches_accepted_];
            for (std::uint32_t i = first; i < end; ++i) {
                wire::FileAccept* fa = a.add_files();
                fa->set_id(i);
                fa->set_kind(files_[i].chunks > max_tracked_chunks ? wire::ACCEPT_SKIP : wire::ACCEPT_ALL);
            }
            FUZZ_CHECK(answer_accept(a));
        }
        while (take()) {
        }
        while (!taken_.empty()) {
            hash(0);
        }
        for (const chunk_ref& ref : in_flight_) {
            std::error_code ec;
            std::uint64_t n = machine_.on_ack(chunk_key(ref.file, ref.index), ec);
            FUZZ_CHECK(!ec);
            if (files_[ref.file.value].done_with()) {
                FUZZ_CHECK(n == 0);
            } else {
                mark_acked(ref.file.value, ref.index.value);
            }
        }
        in_flight_.clear();
        check_counters();
        if (!gave_up_any_) {  // what a file released early or given up on had unconfirmed stays so
            FUZZ_CHECK(machine_.confirmed_bytes() + machine_.skipped_bytes() == machine_.total_bytes());
        }
        for (std::uint32_t i = 0; i < files_.size(); ++i) {
            model_file& f = files_[i];
            if (f.aborted) {
                FUZZ_CHECK(f.result);
                continue;
            }
            FUZZ_CHECK(f.accepted && (f.skipped || (f.next == f.chunks && f.hashed_count == f.chunks)));
            bool sent_whole = f.chunks == 1 && !f.have;
            int want = f.skipped || sent_whole ? 0 : 1;
            FUZZ_CHECK(f.file_dones == want);
            if (!f.result) {
                wire::FileResult r;
                r.set_file_id(i);
                r.set_ok(true);
                FUZZ_CHECK(!machine_.on_file_result(r));
                f.result = true;
                ++files_done_;
            }
        }
        wire::TransferResult r;
        r.set_transfer_id(transfer);
        r.set_ok(true);
        FUZZ_CHECK(!machine_.on_transfer_result(r));
        FUZZ_CHECK(machine_.finished() &&
                   machine_.confirmed_bytes() == total_bytes_ - skipped_bytes_ - aborted_bytes_);
        FUZZ_CHECK(machine_.aborted_files() == aborted_files_);
    }

    // What a node does after each message: the entries of files done with go. Only files
    // forgotten may lose theirs: accepted, and skipped, released or given up on.
    void trim() {
        machine_.trim_entries(std::numeric_limits<std::uint32_t>::max());
        for (std::size_t i = trimmed_; i < machine_.first_entry_held(); ++i) {
            const model_file& f = files_[i];
            FUZZ_CHECK(f.accepted && (f.skipped || f.done_with()));
        }
        trimmed_ = std::max<std::size_t>(trimmed_, machine_.first_entry_held());
    }

    void check_counters() const {
        FUZZ_CHECK(machine_.total_bytes() == total_bytes_);
        FUZZ_CHECK(machine_.total_files() == files_.size());
        FUZZ_CHECK(machine_.confirmed_bytes() == confirmed_bytes_);
        FUZZ_CHECK(machine_.skipped_bytes() == skipped_bytes_);
        FUZZ_CHECK(machine_.skipped_files() == skipped_files_);
        FUZZ_CHECK(machine_.files_done() == files_done_);
        FUZZ_CHECK(machine_.dirs_done() == dirs_done_);
        FUZZ_CHECK(machine_.confirmed_bytes() + machine_.skipped_bytes() <= machine_.total_bytes());
        FUZZ_CHECK(machine_.all_accepted() == (batches_accepted_ == batches_.size()));
        FUZZ_CHECK(!machine_.finished());
    }

  private:
    // make_offers: every entry once, in order, in batches that each fit a frame header.
    void check_offers() {
        std::vector<wire::Offer> offers = machine_.make_offers();
        FUZZ_CHECK(!offers.empty());
        std::uint32_t next = 0;
        for (std::size_t b = 0; b < offers.size(); ++b) {
            const wire::Offer& o = offers[b];
            FUZZ_CHECK(o.transfer_id() == transfer && o.last() == (b + 1 == offers.size()));
            FUZZ_CHECK(o.total_files() == files_.size() && o.total_bytes() == total_bytes_);
            FUZZ_CHECK(o.entries_size() > 0 || files_.empty());
            FUZZ_CHECK(o.ByteSizeLong() <= offer_batch_bytes);
            wire::Header h;
            *h.mutable_offer() = o;
            std::vector<std::uint8_t> frame;
            FUZZ_CHECK(append_frame_header(h, frame));
            std::uint32_t first = next;
            for (const wire::Entry& e : o.entries()) {
                const entry_info& info = files_.at(next).info;
                FUZZ_CHECK(e.id() == next && e.path() == info.path);
                FUZZ_CHECK(e.kind() == (info.is_dir ? wire::ENTRY_DIR : wire::ENTRY_FILE));
                FUZZ_CHECK(e.size() == (info.is_dir ? 0 : info.size) && e.mode() == info.mode);
                FUZZ_CHECK(e.mtime_ns() == info.mtime_ns);
                ++next;
            }
            batches_.emplace_back(first, next);
        }
        FUZZ_CHECK(next == files_.size());
    }

    bool accept(fuzz_input& in) {
        std::uint8_t flags = in.u8();
        if ((flags & 4) == 0) {
            send_offers();  // (else the receiver answers a batch it may not have been sent)
        }
        wire::Accept a;
        a.set_transfer_id((flags & 1) != 0 ? in.u64() : transfer);
        std::pair<std::uint32_t, std::uint32_t> batch =
            batches_accepted_ < batches_.size() ? batches_[batches_accepted_] : std::pair{0u, 1u};
        std::size_t count = batch.second - batch.first;
        if ((flags & 2) != 0) {
            count = in.u8() % (count + 2);
        }
        for (std::size_t k = 0; k < count; ++k) {
            std::uint32_t id = batch.first + static_cast<std::uint32_t>(k);
            wire::FileAccept* fa = a.add_files();
            std::uint8_t sel = in.u8();
            fa->set_id((sel & 0x80) != 0 ? in.u32() : id);
            std::uint64_t chunks = id < files_.size() ? files_[id].chunks : 0;
            if (chunks > max_tracked_chunks) {
                fa->set_kind(wire::ACCEPT_SKIP);  // the modeled receiver never asks for it
                continue;
            }
            switch (sel % 4) {
                case 0:
                case 1:
                    fa->set_kind(wire::ACCEPT_ALL);
                    break;
                case 2:
                    fa->set_kind(wire::ACCEPT_SKIP);
                    break;
                default: {
                    fa->set_kind(wire::ACCEPT_PARTIAL);
                    std::size_t len = (sel & 0x10) != 0 ? in.u8() : (chunks + 7) / 8;
                    std::span<const std::uint8_t> pattern = in.bytes(in.u8() % 4);
                    std::string have(len, '\0');
                    for (std::size_t i = 0; i < len && !pattern.empty(); ++i) {
                        have[i] = static_cast<char>(pattern[i % pattern.size()]);
                    }
                    fa->set_have(have);
                }
            }
            if ((sel & 0x40) != 0) {
                fa->set_kind(static_cast<wire::AcceptKind>(in.u8()));
            }
        }
        return answer_accept(a);
    }

    std::error_code expected_accept(const wire::Accept& a) const {
        if (batches_accepted_ >= sent_ || a.transfer_id() != transfer) {
            return protocol_errc::unexpected_message;
        }
        auto [first, end] = batches_[batches_accepted_];
        if (static_cast<std::size_t>(a.files_size()) != end - first) {
            return protocol_errc::unexpected_message;
        }
        for (std::uint32_t i = first; i < end; ++i) {
            const wire::FileAccept& fa = a.files(static_cast<int>(i - first));
            const model_file& f = files_[i];
            if (fa.id() != i) {
                return protocol_errc::unknown_file;
            }
            if (f.info.is_dir || fa.kind() == wire::ACCEPT_SKIP) {
                continue;
            }
            if (fa.kind() == wire::ACCEPT_PARTIAL && fa.have().size() != (f.chunks + 7) / 8) {
                return protocol_errc::bad_chunk;
            }
            if (fa.kind() != wire::ACCEPT_PARTIAL && fa.kind() != wire::ACCEPT_ALL) {
                return protocol_errc::unexpected_message;
            }
        }
        return {};
    }

    // A receiver that accepts a file ACCEPT_PARTIAL sends the digests of the chunks it
    // claims first (HaveDigests); this one claims the true bytes, in frames of up to 8.
    void send_have_digests(const wire::Accept& a) {
        if (batches_accepted_ >= sent_) {
            return;  // (a receiver not sent the batch knows nothing to claim)
        }
        auto [first, end] = batches_[batches_accepted_];
        std::vector<bool> fed(end - first, false);
        for (const wire::FileAccept& fa : a.files()) {
            std::uint32_t id = fa.id();
            if (fa.kind() != wire::ACCEPT_PARTIAL || id < first || id >= end || fed[id - first] ||
                files_[id].info.is_dir) {
                continue;
            }
            fed[id - first] = true;
            auto have = chunk_bitmap::from_bytes(files_[id].chunks, fa.have());
            if (!have) {
                continue;
            }
            std::vector<std::uint8_t> payload;
            std::uint32_t sent = 0;
            auto flush = [&] {
                if (payload.empty()) {
                    return;
                }
                wire::HaveDigests h;
                h.set_file_id(id);
                h.set_first(sent);
                FUZZ_CHECK(!machine_.on_have_digests(h, payload));
                sent += static_cast<std::uint32_t>(payload.size() / 16);
                payload.clear();
            };
            for (std::uint64_t c = 0; c < have->size(); ++c) {
                if (!have->test(c)) {
                    continue;
                }
                put_digest(payload, true_digest(id, c));
                if (payload.size() == 8 * 16) {
                    flush();
                }
            }
            flush();
        }
    }

    // false when the Accept was refused (the session ends).
    bool answer_accept(const wire::Accept& sent) {
        // The answers as the sender reads them (Accept.unchanged taken back in place),
        // once the batch and transfer are right (the machine checks those first).
        wire::Accept a = sent;
        bool bits_fit = true;
        if (!sent.unchanged().empty() && batches_accepted_ < sent_ && sent.transfer_id() == transfer) {
            auto [first, end] = batches_[batches_accepted_];
            std::optional<wire::Accept> full =
                expanded_accept(sent, first, end - first, [&](std::uint32_t i) { return files_[i].info.is_dir; });
            bits_fit = full.has_value();
            if (full) {
                a = std::move(*full);
            }
        }
        send_have_digests(a);
        std::error_code expect = bits_fit ? expected_accept(a) : protocol_errc::unexpected_message;
        std::vector<wire::FileDone> done;
        wire::Accept given = sent;
        std::error_code ec = machine_.on_accept(given, done);
        FUZZ_CHECK(ec == expect);
        if (ec) {
            return false;
        }
        auto [first, end] = batches_[batches_accepted_++];
        std::vector<std::uint32_t> empty_files;
        for (std::uint32_t i = first; i < end; ++i) {
            const wire::FileAccept& fa = a.files(static_cast<int>(i - first));
            model_file& f = files_[i];
            f.accepted = true;
            if (f.info.is_dir || fa.kind() == wire::ACCEPT_SKIP) {
                f.skipped = true;
                f.result = true;
                ++files_done_;
                if (f.info.is_dir) {
                    ++dirs_done_;
                } else {
                    ++skipped_files_;
                    skipped_bytes_ += f.info.size;
                }
                continue;
            }
            f.hashed.assign(f.chunks, false);
            f.acked.assign(f.chunks, false);
            if (fa.kind() == wire::ACCEPT_PARTIAL) {
                f.have.emplace(f.chunks);
                for (std::uint64_t c = 0; c < f.chunks; ++c) {
                    (*f.have)[c] = (static_cast<std::uint8_t>(fa.have()[c / 8]) >> (c % 8)) & 1u;
                }
            }
            if (f.chunks == 0) {
                empty_files.push_back(i);
            }
        }
        digest128 empty = file_digest({});
        FUZZ_CHECK(done.size() == empty_files.size());
        for (std::size_t k = 0; k < done.size(); ++k) {
            FUZZ_CHECK(done[k].file_id() == empty_files[k]);
            FUZZ_CHECK(done[k].digest_lo() == empty.lo && done[k].digest_hi() == empty.hi);
            ++files_[empty_files[k]].file_dones;
        }
        return true;
    }

    // false when nothing was available.
    bool take() {
        std::optional<chunk_ref> ref = machine_.next_chunk();
        if (!requeued_.empty()) {
            chunk_ref want = requeued_.front();
            requeued_.pop_front();
            FUZZ_CHECK(ref && ref->file == want.file && ref->index == want.index && ref->send == want.send);
            taken_.push_back(*ref);
            return true;
        }
        bool left = false;
        for (const model_file& f : files_) {
            left = left || (f.accepted && !f.skipped && !f.aborted && f.next < f.chunks);
        }
        FUZZ_CHECK(ref.has_value() == left);
        if (!ref) {
            return false;
        }
        FUZZ_CHECK(ref->file.value < files_.size());
        model_file& f = files_[ref->file.value];
        FUZZ_CHECK(f.accepted && !f.skipped && !f.aborted);
        FUZZ_CHECK(ref->index.value == f.next);  // each chunk handed out once, in order per file
        ++f.next;
        FUZZ_CHECK(ref->offset == std::uint64_t{ref->index.value} * chunk_size);
        FUZZ_CHECK(ref->length == chunk_length(f.info.size, ref->index.value) && ref->length > 0);
        FUZZ_CHECK(ref->send == !(f.have && (*f.have)[ref->index.value]));
        taken_.push_back(*ref);
        return true;
    }

    void hash(std::uint16_t pick) {
        if (taken_.empty()) {
            return;
        }
        std::size_t k = pick % taken_.size();
        chunk_ref ref = taken_[k];
        taken_.erase(taken_.begin() + static_cast<std::ptrdiff_t>(k));
        model_file& f = files_[ref.file.value];
        std::uint64_t i = ref.index.value;
        std::optional<wire::FileDone> done = machine_.on_chunk_hashed(ref, true_digest(ref.file.value, i));
        if (f.done_with()) {
            FUZZ_CHECK(!done);  // nothing more of it is counted (a released one was hashed whole)
            if (ref.send) {
                in_flight_.push_back(ref);
            }
            return;
        }
        bool completes = false;
        if (!f.hashed[i]) {
            f.hashed[i] = true;
            completes = ++f.hashed_count == f.chunks;
            if (!ref.send && !f.acked[i]) {
                f.acked[i] = true;  // the receiver has it: confirmed by its digest
                skipped_bytes_ += ref.length;
                f.kept += ref.length;
            }
        }
        bool sent_whole = f.chunks == 1 && ref.send && !f.have;
        FUZZ_CHECK(done.has_value() == (completes && !sent_whole));
        if (done) {
            std::vector<digest128> digests;
            for (std::uint64_t c = 0; c < f.chunks; ++c) {
                digests.push_back(true_digest(ref.file.value, c));
            }
            digest128 d = file_digest(digests);
            FUZZ_CHECK(done->file_id() == ref.file.value && done->digest_lo() == d.lo && done->digest_hi() == d.hi);
            ++f.file_dones;
        }
        if (ref.send) {
            in_flight_.push_back(ref);
        }
    }

    void requeue(std::uint16_t pick) {
        std::size_t n = taken_.size() + in_flight_.size();
        if (n == 0) {
            return;
        }
        std::size_t k = pick % n;
        std::deque<chunk_ref>& from = k < taken_.size() ? taken_ : in_flight_;
        std::size_t at = k < taken_.size() ? k : k - taken_.size();
        chunk_ref ref = from[at];
        from.erase(from.begin() + static_cast<std::ptrdiff_t>(at));
        bool again = machine_.requeue(ref);
        FUZZ_CHECK(again == !files_[ref.file.value].done_with());  // dropped once done with
        if (again) {
            requeued_.push_front(ref);
        }
    }

    // What the node does once a file's result is reported: its chunk work goes, if it is
    // done with (every chunk handed out and hashed, the result in).
    void release(std::uint8_t pick) {
        if (files_.empty()) {
            return;
        }
        std::uint32_t id = pick_file(pick);
        model_file& f = files_[id];
        bool due = f.accepted && !f.skipped && !f.done_with() && f.result && f.next == f.chunks &&
                   f.hashed_count == f.chunks;
        machine_.release(file_id{id});
        if (!due) {
            return;
        }
        f.released = true;
        gave_up_any_ = gave_up_any_ || std::find(f.acked.begin(), f.acked.end(), false) != f.acked.end();
        drop_requeued(id);
    }

    // The file vanished or changed while read: given up on, if it is accepted and not done.
    void abort(std::uint8_t pick) {
        if (files_.empty()) {
            return;
        }
        std::uint32_t id = pick_file(pick);
        model_file& f = files_[id];
        bool due = f.accepted && !f.result && !f.info.is_dir;
        std::optional<wire::FileAbort> a = machine_.abort_file(file_id{id}, true, "vanished");
        FUZZ_CHECK(a.has_value() == due);
        if (!a) {
            return;
        }
        FUZZ_CHECK(a->file_id() == id && a->vanished() && a->reason() == "vanished");
        gave_up(id);
    }

    // A file given up on, by this side (abort) or the receiver (a FileResult not ok).
    void gave_up(std::uint32_t id) {
        model_file& f = files_[id];
        FUZZ_CHECK(machine_.aborted(file_id{id}));
        f.aborted = true;
        f.result = true;
        ++files_done_;
        ++aborted_files_;
        aborted_bytes_ += f.info.size - f.kept;  // none of it confirmed (what it had there stays skipped)
        gave_up_any_ = true;
        drop_requeued(id);
    }

    // What the node does whenever it may: the next Offer batches go, up to max_offers_ahead
    // unanswered.
    void send_offers() {
        while (machine_.next_offer()) {
            ++sent_;
        }
        FUZZ_CHECK(sent_ == std::min(batches_.size(), batches_accepted_ + sender_machine::max_offers_ahead));
    }

    // One of the files (there is one at least), by the input's byte.
    std::uint32_t pick_file(std::uint8_t pick) const { return pick % static_cast<std::uint32_t>(files_.size()); }

    // A file done with: its requeued chunks are handed out no more.
    void drop_requeued(std::uint32_t id) {
        std::erase_if(requeued_, [id](const chunk_ref& r) { return r.file.value == id; });
    }

    void mark_acked(std::uint32_t file, std::uint32_t index) {
        model_file& f = files_[file];
        if (!f.acked[index]) {
            f.acked[index] = true;
            confirmed_bytes_ += chunk_length(f.info.size, index);
        }
    }

    bool ack(fuzz_input& in) {
        std::uint8_t sel = in.u8();
        std::uint64_t key;
        if (sel % 3 == 0 && !in_flight_.empty()) {
            std::size_t k = in.u16() % in_flight_.size();
            key = chunk_key(in_flight_[k].file, in_flight_[k].index);
            in_flight_.erase(in_flight_.begin() + static_cast<std::ptrdiff_t>(k));
        } else if (sel % 3 == 1) {
            std::uint32_t file = in.u8() % static_cast<std::uint32_t>(files_.size() + 1);
            key = chunk_key(file_id{file}, chunk_index{in.u8()});
        } else {
            key = in.u64();
        }
        file_id f = chunk_key_file(key);
        chunk_index i = chunk_key_index(key);
        // (A file whose entry went has no chunk count to check an index by: ignored.)
        bool known = f.value < files_.size() && files_[f.value].accepted && !files_[f.value].skipped &&
                     (i.value < files_[f.value].chunks || f.value < trimmed_);
        bool counts = known && !files_[f.value].done_with();  // a late ack of a file done with counts nothing
        std::uint64_t before =
            counts && !files_[f.value].acked[i.value] ? chunk_length(files_[f.value].info.size, i.value) : 0;
        std::error_code ec;
        std::uint64_t n = machine_.on_ack(key, ec);
        FUZZ_CHECK(!ec == known);
        if (ec) {
            FUZZ_CHECK(ec == protocol_errc::unknown_file && n == 0);
            return false;
        }
        FUZZ_CHECK(n == before);
        if (counts) {
            mark_acked(f.value, i.value);
        }
        return true;
    }

    bool file_result(fuzz_input& in) {
        std::uint8_t sel = in.u8();
        std::uint32_t id = (sel & 0x80) != 0 || files_.empty() ? in.u32() : in.u8() % files_.size();
        wire::FileResult r;
        r.set_file_id(id);
        r.set_ok((sel & 1) == 0);
        r.set_error((sel & 1) == 0 ? "" : "disk full");
        if (!r.ok()) {
            // send_session: the receiver gave that file alone up, unless it is not one in
            // flight here (then on_file_result judges the result).
            bool due = id < files_.size() && files_[id].accepted && !files_[id].result && !files_[id].info.is_dir;
            bool taken = machine_.receiver_gave_up(file_id{id});
            FUZZ_CHECK(taken == due);
            if (taken) {
                gave_up(id);
                return true;
            }
        }
        std::error_code expect = id >= files_.size() || !files_[id].accepted ? protocol_errc::unknown_file
                                 : files_[id].aborted                        ? std::error_code{}  // crossed the FileAbort
                                 : !r.ok()                                   ? protocol_errc::peer_error
                                 : files_[id].result                         ? protocol_errc::unexpected_message
                                                                             : std::error_code{};
        std::error_code ec = machine_.on_file_result(r);
        FUZZ_CHECK(ec == expect);
        if (ec == protocol_errc::peer_error) {
            FUZZ_CHECK(machine_.failure() ==
                       (id < trimmed_ ? "file " + std::to_string(id) : files_[id].info.path) + ": disk full");
        }
        if (ec) {
            return false;
        }
        if (!files_[id].aborted) {
            files_[id].result = true;
            ++files_done_;
        }
        return true;
    }

    bool transfer_result(fuzz_input& in) {
        std::uint8_t sel = in.u8();
        wire::TransferResult r;
        r.set_transfer_id((sel & 2) != 0 ? in.u64() : transfer);
        r.set_ok((sel & 1) == 0);
        std::error_code expect = r.transfer_id() != transfer    ? protocol_errc::unexpected_message
                                 : !r.ok()                      ? protocol_errc::peer_error
                                 : files_done_ != files_.size() ? protocol_errc::unexpected_message
                                                                : std::error_code{};
        std::error_code ec = machine_.on_transfer_result(r);
        FUZZ_CHECK(ec == expect);
        if (!ec) {
            // The receiver vouches for every byte: all confirmed, the session is over.
            FUZZ_CHECK(machine_.finished());
            FUZZ_CHECK(machine_.confirmed_bytes() == total_bytes_ - skipped_bytes_ - aborted_bytes_);
        }
        return false;
    }

    sender_machine machine_;
    std::vector<model_file> files_;
    std::vector<std::pair<std::uint32_t, std::uint32_t>> batches_;
    std::size_t batches_accepted_ = 0;
    std::deque<chunk_ref> requeued_;
    std::size_t sent_ = 0;             // Offer batches the node sent (next_offer)
    std::deque<chunk_ref> taken_;      // handed out, not hashed yet
    std::deque<chunk_ref> in_flight_;  // hashed and sent, not acked
    std::uint64_t total_bytes_ = 0;
    std::uint64_t confirmed_bytes_ = 0;
    std::size_t trimmed_ = 0;  // entries before this id went (trim)
    std::uint64_t skipped_bytes_ = 0;
    std::uint64_t skipped_files_ = 0;
    std::uint64_t files_done_ = 0;
    std::uint64_t dirs_done_ = 0;
    std::uint64_t aborted_files_ = 0;
    std::uint64_t aborted_bytes_ = 0;  // of the files given up on, what the receiver did not have
    bool gave_up_any_ = false;  // a file given up on, or released with chunks not acked
};

std::vector<seed> seeds() {
    // Entries: a folder, a file of 2 chunks + 100 bytes, a 100-byte file, an empty file.
    auto entries = [](fuzz_output& o) {
        o.u8(4);
        o.u8(1).u64(1);                        // dir "e0/..."
        o.u8(0).u64(2).u8(2).u8(2).u8(2 + 2);  // 2 chunks + 2 bytes
        o.u8(0).u64(3).u8(1).u16(99);          // 100 bytes
        o.u8(0).u64(4).u8(0);                  // empty
    };
    std::vector<seed> out;
    {
        fuzz_output o;  // accept all, then the rest runs to completion at the end
        entries(o);
        o.u8(op_accept).u8(0).u8(0).u8(0).u8(0).u8(0);
        o.u8(op_take).u8(op_take).u8(op_hash).u16(1).u8(op_ack).u8(0).u16(0).u8(op_take).u8(op_requeue).u16(0);
        out.push_back({"accept-all", o.data()});
    }
    {
        fuzz_output o;  // skip the dir, partial (has chunk 1) for the big file, skip the small one
        entries(o);
        o.u8(op_accept).u8(0).u8(2).u8(3).u8(1).u8(0x02).u8(2).u8(0);
        o.u8(op_take).u8(op_take).u8(op_take).u8(op_hash).u16(0).u8(op_hash).u16(0).u8(op_hash).u16(0);
        o.u8(op_file_result).u8(0).u8(1).u8(op_file_result).u8(0).u8(3).u8(op_transfer_result).u8(0);
        out.push_back({"partial-skip", o.data()});
    }
    {
        fuzz_output o;  // 12 long paths: two Offer batches; a bad Accept for the first
        o.u8(12);
        for (int i = 0; i < 12; ++i) {
            o.u8(6).u64(0).u8(1).u16(10);
        }
        o.u8(op_accept).u8(2).u8(3);
        out.push_back({"two-batches-bad-count", o.data()});
    }
    {
        fuzz_output o;  // the 100-byte file sent, its result in, released; the big one given up on
        entries(o);
        o.u8(op_accept).u8(0).u8(0).u8(0).u8(0).u8(0);
        o.u8(op_take).u8(op_take).u8(op_take).u8(op_hash).u16(2).u8(op_ack).u8(0).u16(0);
        o.u8(op_file_result).u8(0).u8(2).u8(op_release).u8(2).u8(op_abort).u8(1).u8(op_hash).u16(0);
        out.push_back({"release-abort", o.data()});
    }
    {
        fuzz_output o;  // an ack for a chunk the empty file does not have
        entries(o);
        o.u8(op_accept).u8(0).u8(0).u8(0).u8(0).u8(0);
        o.u8(op_ack).u8(2).u64(chunk_key(file_id{3}, chunk_index{0}));
        out.push_back({"stray-ack", o.data()});
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
    using namespace ferry::fuzz;
    fuzz_input in({data, size});
    sender_driver driver(read_entries(in));
    driver.check_counters();
    while (!in.empty()) {
        if (!driver.step(in)) {
            return 0;  // the session ended
        }
        driver.trim();
        driver.check_counters();
    }
    driver.finish();
    return 0;
}
