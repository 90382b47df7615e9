// Sans-IO transfer state machines: the sender's (offer, chunk scheduling, digests,
// confirmation) and the receiver's (offer validation, chunk admission, completion).
//
// Both are plain data structures driven by the node on its loop thread: they are fed
// messages and completion events and answer with messages to send and decisions. They
// never touch a socket, a file or the clock, so they are unit-tested with literal inputs.
#pragma once

#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <ostream>
#include <optional>
#include <span>
#include <stdexcept>
#include <string>
#include <string_view>
#include <system_error>
#include <unordered_map>
#include <utility>
#include <vector>

#include <google/protobuf/io/coded_stream.h>

#include "ferry.pb.h"
#include "protocol/delta.hpp"
#include "protocol/errors.hpp"
#include "protocol/exclude.hpp"
#include "protocol/segments.hpp"
#include "protocol/types.hpp"

namespace ferry {

// A symlink's target in an entry. Few entries are links, so the text is on the heap only
// when there is one: 8 bytes in each entry, not a std::string's 32 (200,000 entries: 4.8
// MB on each side). A value: copies copy the text.
class link_text {
public:
    link_text() = default;
    explicit link_text(std::string text) { assign(std::move(text)); }
    link_text(const link_text& other) : text_(other.text_ ? std::make_unique<std::string>(*other.text_) : nullptr) {}
    link_text& operator=(const link_text& other) {
        if (this != &other) {
            text_ = other.text_ ? std::make_unique<std::string>(*other.text_) : nullptr;
        }
        return *this;
    }
    link_text(link_text&&) noexcept = default;
    link_text& operator=(link_text&&) noexcept = default;
    link_text& operator=(std::string text) {
        assign(std::move(text));
        return *this;
    }

    void assign(std::string text) {
        text_ = text.empty() ? nullptr : std::make_unique<std::string>(std::move(text));
    }
    const std::string& str() const {
        static const std::string none;
        return text_ ? *text_ : none;
    }
    operator const std::string&() const { return str(); }
    std::size_t size() const { return text_ ? text_->size() : 0; }
    bool empty() const { return !text_; }

    friend bool operator==(const link_text& a, const link_text& b) { return a.str() == b.str(); }
    friend bool operator==(const link_text& a, std::string_view b) { return a.str() == b; }
    friend std::ostream& operator<<(std::ostream& out, const link_text& t) { return out << t.str(); }

private:
    std::unique_ptr<std::string> text_;
};

// One entry of a transfer as the sender describes it.
// (Members ordered for size: 88 bytes. Every side holds one per entry.)
struct entry_info {
    std::string path;  // wire path (relative, '/'-separated)
    link_text link_target = {};  // is_link: what the link holds (readlink), never followed
    std::uint64_t size = 0;
    std::int64_t mtime_ns = 0;
    std::optional<digest128> digest = std::nullopt;  // sync --checksum: the file digest (Entry.digest)
    std::uint32_t mode = 0644;
    bool is_dir = false;
    bool is_link = false;  // a symlink (`ferry sync` only): link_target, no data
    // A regular file: the only kind with bytes to send.
    bool is_file() const { return !is_dir && !is_link; }
};

// The longest link target an offer may carry (PATH_MAX less its NUL).
inline constexpr std::size_t max_link_target = 4095;

// What any receiver of an Entry (an Offer's, a listing's) checks before taking it: a path
// the wire allows (check_wire_path's error), a kind it knows, and for a symlink (only
// where `links` are allowed) a target a link can hold and no data (bad_path).
std::error_code check_wire_entry(const wire::Entry& e, bool links);

struct chunk_ref {
    file_id file;
    chunk_index index;
    std::uint64_t offset = 0;
    std::uint32_t length = 0;
    bool send = true;  // false: the receiver has it; read and hash only (for the file digest)
};

struct transfer_options {
    bool overwrite = false;
    bool fsync_each = false;
    // `ferry sync`: carried by the first Offer batch (its size counts against that batch).
    std::optional<wire::SyncTarget> sync;
};

// Bytes of exclude patterns a SyncTarget may carry, and of the paths it keeps: the sync
// target rides the first Offer batch, which must stay under max_header_len with at least
// one entry (offer_batch_bytes counts the target; a batch takes at least one entry).
inline constexpr std::size_t max_sync_exclude_bytes = 8 * 1024;
inline constexpr std::size_t max_sync_keep_bytes = 40 * 1024;
// Bytes of paths and reasons a TransferResult lists in not_done (the rest
// are counted in not_done_more): it stays well under max_header_len.
inline constexpr std::size_t max_not_done_listed_bytes = 16 * 1024;
// The bytes of a SyncTarget's exclude patterns (what max_sync_exclude_bytes bounds).
inline std::size_t exclude_bytes(const wire::SyncTarget& t) {
    std::size_t n = 0;
    for (const std::string& line : t.exclude()) {
        n += line.size();
    }
    return n;
}
// The bytes one kept path takes in a SyncTarget: its field's tag, its length (a varint)
// and the path.
inline std::size_t keep_entry_bytes(const std::string& path) {
    return 1 + google::protobuf::io::CodedOutputStream::VarintSize32(static_cast<std::uint32_t>(path.size())) +
           path.size();
}
// The bytes of the paths it keeps (what max_sync_keep_bytes bounds).
inline std::size_t keep_bytes(const wire::SyncTarget& t) {
    std::size_t n = 0;
    for (const std::string& path : t.keep()) {
        n += keep_entry_bytes(path);
    }
    return n;
}

// The exclude set a SyncTarget carries: its patterns, then the paths it keeps. Returns ""
// or why a receiver refuses the target (too many bytes, a bad pattern or path); `out`
// then holds what was added before it.
std::string sync_excludes(const wire::SyncTarget& t, exclude_set& out);
// One path to keep (SyncTarget.keep, Offer.keep) into `out`, `bytes` of them taken
// already (and counted with it): "" or why it is refused (over max_sync_keep_bytes in
// all, or not a wire path).
std::string add_keep(const std::string& path, std::size_t& bytes, exclude_set& out);

// The Hello this node sends on connection `index` of session `session_id` (either side,
// either direction): this protocol version and agent, `count` connections, and CODEC_ZSTD
// among the codecs it decodes when `zstd`.
inline wire::Header make_hello(const std::string& session_id, std::uint32_t index, std::uint32_t count, bool plaintext,
                               bool zstd) {
    wire::Header h;
    wire::Hello* hello = h.mutable_hello();
    hello->set_version(protocol_version);
    hello->set_session_id(session_id);
    hello->set_conn_index(index);
    hello->set_conn_count(count);
    hello->set_plaintext(plaintext);
    hello->set_agent("ferry/0.1");
    if (zstd) {
        hello->add_codecs(wire::CODEC_ZSTD);
    }
    return h;
}

// A simple growable bitmap (bit i = chunk i), LSB-first bytes on the wire.
class chunk_bitmap {
public:
    chunk_bitmap() = default;
    // A file of up to 64 chunks (16 MiB) keeps its bits inline: most files, and each of
    // their bitmaps would otherwise be an allocation of its own.
    explicit chunk_bitmap(std::uint64_t bits) : bits_(bits) {
        if (bits > inline_bits) {
            heap_.assign((bits + 7) / 8, 0);
        }
    }
    static std::optional<chunk_bitmap> from_bytes(std::uint64_t bits, const std::string& bytes);
    bool test(std::uint64_t i) const { return (data()[i / 8] >> (i % 8)) & 1u; }
    void set(std::uint64_t i) { data()[i / 8] |= static_cast<std::uint8_t>(1u << (i % 8)); }
    void reset(std::uint64_t i) { data()[i / 8] &= static_cast<std::uint8_t>(~(1u << (i % 8))); }
    std::uint64_t size() const { return bits_; }
    std::uint64_t count() const;
    std::string to_bytes() const { return {reinterpret_cast<const char*>(data()), byte_count()}; }

private:
    static constexpr std::uint64_t inline_bits = 64;
    std::size_t byte_count() const { return static_cast<std::size_t>((bits_ + 7) / 8); }
    std::uint8_t* data() { return bits_ <= inline_bits ? small_ : heap_.data(); }
    const std::uint8_t* data() const { return bits_ <= inline_bits ? small_ : heap_.data(); }

    std::uint64_t bits_ = 0;
    std::uint8_t small_[inline_bits / 8] = {};
    std::vector<std::uint8_t> heap_;
};

// ---------------------------------------------------------------------------------------
// Sender

class sender_machine {
public:
    // `complete`: `entries` are all there is. Otherwise more follow through append(), and
    // complete() says when the last did (`ferry send` offers a tree while it scans it).
    sender_machine(std::uint64_t transfer_id, std::vector<entry_info> entries, transfer_options options,
                   bool complete = true);

    // Entries scanned since, whose ids follow on. Offer batches are sealed as they fill
    // (the first at once); the batch being filled is not offered until it is sealed.
    void append(std::vector<entry_info> more);
    // No more entries: the batch being filled is sealed and is the last (an empty one only
    // when every batch sealed before went out: else the last of those says it is).
    void complete();
    // The batch being filled is sealed now, even empty (a scan that holds entries back
    // for long still sends an Offer now and then: the receiver hears from it).
    void flush();
    bool is_complete() const { return complete_; }
    // Entries appended and not sealed into a batch yet.
    std::size_t unsealed_entries() const { return entries_.size() - open_first_; }

    // The Offer batches, each under offer_batch_bytes, in the order they must be sent (a
    // look at them: a batch counts as sent when next_offer() gives it). Only before any
    // entry is trimmed (trim_entries).
    std::vector<wire::Offer> make_offers() const;
    // Batch b of those (b < offer_count()), built alone.
    wire::Offer make_offer(std::size_t b) const;
    std::size_t offer_count() const { return batch_count_; }
    // Offer batches out before their Accept, at most. The receiver holds the entries of
    // the batches it has not answered (for a tree of 200,000 files offered at once, all of
    // them), so they go as it answers. 16 x offer_batch_bytes (768 KiB, some 16,000
    // entries of 40-byte paths) still keeps a link of 40 ms busy with some 400,000
    // entries a second.
    static constexpr std::size_t max_offers_ahead = 16;
    // Nor while the accepted files not done with hold more small blocks than this
    // (SmallSums: 8 bytes each, 2 MiB here; indexed only while the file is read), so that
    // a sync of many changed files does not take the sums of more batches meanwhile.
    static constexpr std::uint64_t max_small_blocks_held = 256 * 1024;
    // The next batch to send, once it is sealed and fewer than max_offers_ahead of those
    // sent are unanswered; nullopt otherwise (an Accept, or a batch sealed, makes room).
    std::optional<wire::Offer> next_offer();
    std::size_t offers_sent() const { return offers_sent_; }

    // The receiver's Accept for the next unanswered batch (one sent: an Accept for a batch
    // not offered yet is unexpected_message). Appends FileDone messages for
    // files that need no chunk read (empty or skipped) to `done_now`. A file of exactly
    // one chunk accepted whole gets no FileDone at all: its Chunk frame carries its only
    // digest (receiver_machine::single_chunk). The entries Accept.unchanged tells of are
    // put back into `accept` first, as FileAccepts in their places (the caller then reads
    // every entry's answer there).
    std::error_code on_accept(wire::Accept& accept, std::vector<wire::FileDone>& done_now);
    // Accept.unchanged of the batch [first, end) made FileAccepts again; an error when the
    // bits do not fit the batch.
    std::error_code expand_unchanged(wire::Accept& accept, std::uint32_t first, std::uint32_t end) const;

    // Next chunk to read (and send unless ref.send is false); nullopt when nothing is
    // available now (all assigned, or waiting for Accept).
    std::optional<chunk_ref> next_chunk();

    // The receiver's digests of chunks it has (before the Accept that names the file
    // ACCEPT_PARTIAL); `payload` holds 16 bytes per digest.
    std::error_code on_have_digests(const wire::HaveDigests& have, std::span<const std::uint8_t> payload);
    // The receiver's sums of its older version of a file (before the Accept that names
    // it ACCEPT_PARTIAL); `payload` holds 20 bytes per block.
    std::error_code on_basis_sums(const wire::BasisSums& sums, std::span<const std::uint8_t> payload);
    // SmallSums: the receiver's sums of its files at the paths of changed small files of
    // the batch whose Accept comes next (each taken by that file's ACCEPT_ALL).
    std::error_code on_small_sums(const wire::SmallSums& sums, std::span<const std::uint8_t> payload);

    // A chunk was read and hashed. Returns the file's FileDone when that was its last
    // missing digest. A chunk the receiver said it had (ref.send false) whose digest is
    // not the receiver's is queued again to be sent, and `resend` (if given) is set.
    std::optional<wire::FileDone> on_chunk_hashed(const chunk_ref& ref, digest128 digest, bool* resend = nullptr);

    // A chunk that was taken but not delivered (its connection failed) goes back to the
    // front of the queue. False (dropped) when its file was given up on or released.
    bool requeue(const chunk_ref& ref);

    // Receiver-confirmed chunk. Returns the confirmed payload bytes it adds. When it was
    // the last chunk of a file sent again (see on_chunk_hashed), the file's FileDone,
    // held back until then, is put in `released`: the receiver must have written the
    // replacement before it checks the file digest. `after_result` (if given) is set when
    // the ack confirms nothing because the file's result (success) came first: the
    // chunk's ack was on its way then (a one-chunk file's, say), and it counts as
    // confirmed all the same.
    std::uint64_t on_ack(std::uint64_t key, std::error_code& ec, std::optional<wire::FileDone>* released = nullptr,
                         bool* after_result = nullptr);

    // Gives up on an accepted file (it vanished or changed at the source): no more of its
    // chunks are handed out, its acks and results are ignored, and the transfer can end
    // without it (its bytes are not confirmed). Returns the FileAbort to send on
    // connection 0; nullopt when there is nothing to abort (already done, or skipped).
    std::optional<wire::FileAbort> abort_file(file_id f, bool vanished, const std::string& reason);
    // The receiver gave up on an accepted file of its own accord (a FileResult not ok:
    // that file alone could not be written there): given up on as abort_file does, with no
    // FileAbort to send. False when it is not a file in flight here (its result is in, or
    // it was given up on here first: the FileResult crossed the FileAbort).
    bool receiver_gave_up(file_id f);
    bool aborted(file_id f) const { return gave_up_.at(f.value); }  // std::out_of_range: never offered
    std::uint64_t aborted_files() const { return aborted_files_; }

    std::error_code on_file_result(const wire::FileResult& result);
    // Once a file's result is in and reported: what its chunks needed (bitmaps, digests,
    // the receiver's sums) goes, about 500 bytes a file. basis(), resumed(),
    // sent_nothing() and basis_of() then answer as for a file sent whole; a late
    // duplicate ack of it is ignored, a requeue of it dropped.
    // Only once every chunk was handed out and hashed, none is to be sent again, and the
    // result is in (an early FileResult from a broken peer leaves the file as it is).
    // Then, once every file before it is done with too, its state goes (forget()).
    void release(file_id f) {
        file_state* s = state(f);
        if (s && s->result && s->work && s->next == s->chunks && s->hashed == s->chunks &&
            s->resend_pending == 0) {
            std::erase_if(requeued_, [f](const chunk_ref& r) { return r.file == f; });
            drop_work(*s);
            s->released = true;
            forget();
        }
    }
    // Per-file states held now: made by a batch's Accept, gone once the file and every
    // one before it is done with (what the machine's memory grows with, beside entries).
    std::size_t held_states() const { return files_.size(); }
    std::error_code on_transfer_result(const wire::TransferResult& result);

    std::uint64_t transfer_id() const { return transfer_id_; }
    std::uint64_t total_bytes() const { return total_bytes_; }
    std::uint64_t total_files() const { return entries_.size(); }
    std::uint64_t confirmed_bytes() const { return confirmed_bytes_; }
    std::uint64_t files_done() const { return files_done_; }  // entries, directories included
    std::uint64_t dirs_done() const { return dirs_done_; }  // made there or there already
    std::uint64_t skipped_bytes() const { return skipped_bytes_; }
    std::uint64_t skipped_files() const { return skipped_files_; }  // already at the receiver
    // Folders, and symlinks (or, in a dry run, files), the receiver could not make
    // (SYNC_FAILED): done with, and in neither dirs_done() nor skipped_files().
    std::uint64_t not_made_dirs() const { return not_made_dirs_; }
    std::uint64_t not_made_files() const { return not_made_files_; }
    // Chunks the receiver had but with other bytes (a changed source, a damaged partial
    // file): sent again.
    std::uint64_t resent_chunks() const { return resent_chunks_; }
    // Bytes of resumed files the receiver had and kept (their digests matched): a part of
    // skipped_bytes(). claimed_bytes(): what the Accepts said it had.
    std::uint64_t kept_bytes() const { return kept_bytes_; }
    std::uint64_t claimed_bytes() const { return claimed_bytes_; }
    std::uint64_t resumed_files() const { return resumed_files_; }  // accepted ACCEPT_PARTIAL
    bool all_accepted() const { return complete_ && accepted_batches_ == batch_count_; }
    bool finished() const { return finished_; }
    // Out of range for an id never offered, and for one whose entry went (trim_entries).
    const entry_info& entry(file_id f) const { return entries_.at(f.value); }
    // The entries of files done with and forgotten go, in the scan's parts (a part goes
    // once all of it is before `below` and before every file still held): a sender streaming
    // a big tree holds the files in flight, not the tree. The caller passes the first id it
    // may still look at (reads out on the pool, events held back). A late ack of a file
    // whose entry went is ignored whatever chunk it names.
    void trim_entries(std::uint32_t below) { entries_.drop_before(std::min<std::size_t>(below, base_)); }
    // Ids before this have no entry any more.
    std::size_t first_entry_held() const { return entries_.first_held(); }
    // Sync --checksum: the file's digest, offered with it (before the offer is made).
    void set_digest(file_id f, digest128 d) { entries_.at(f.value).digest = d; }
    // What a sync receiver said it does with the file (FileAccept.action): SYNC_NONE
    // before its Accept, once forgotten (a folder, link or skipped file at once; the node
    // reports those from the Accept itself) and outside a sync.
    wire::SyncAction action(file_id f) const {
        const file_state* s = state(f);
        return s ? s->action : wire::SYNC_NONE;
    }
    // The receiver accepted the file ACCEPT_PARTIAL, claiming some of its chunks.
    bool resumed(file_id f) const {
        const file_work* w = work(f);
        return w && !w->theirs.empty();
    }
    // Sync: the receiver's own file it started this one from (FileAccept.basis; "" when
    // none), and whether the receiver had every chunk, so that no byte of it was sent.
    std::string_view basis(file_id f) const {
        const file_work* w = work(f);
        return w ? std::string_view(w->basis) : std::string_view();
    }
    // What the receiver sent of its older version of the file (BasisSums), which a
    // delta may copy from; null for any other file.
    const basis_sums* basis_of(file_id f) const {
        const file_work* w = work(f);
        return w && w->sums ? &*w->sums : nullptr;
    }
    // The digest of the one chunk of the file the receiver has at the path (FileAccept's
    // same_as), if it told one: a chunk of that digest goes as CODEC_SAME, without its bytes.
    std::optional<digest128> receiver_same_as(file_id f) const {
        const file_work* w = work(f);
        return w ? w->same_as : std::nullopt;
    }
    // The receiver's sums of its file at the path, in small blocks (SmallSums), if it told
    // them: the chunk may go as a CODEC_DELTA of them (protocol/delta.hpp).
    std::shared_ptr<const small_sums> receiver_small_sums(file_id f) const {
        const file_work* w = work(f);
        return w ? w->small : nullptr;
    }
    bool sent_nothing(file_id f) const {
        const file_state* s = state(f);
        return s && s->work && s->work->have && s->work->have->count() == s->chunks && s->work->resend_bits.size() == 0;
    }
    const std::string& failure() const { return failure_; }

private:
    // What a file accepted to be sent needs while its chunks go out: made by its Accept,
    // so that the files a sync finds unchanged cost only their file_state.
    struct file_work {
        std::string basis;
        std::optional<chunk_bitmap> have;  // receiver already has these (partial accept)
        std::vector<digest128> theirs;     // and their digests there (index order, `have` bits only)
        std::optional<basis_sums> sums;    // its older version there (BasisSums)
        chunk_bitmap resend_bits;          // claimed chunks with other bytes there, sent again, not yet acked
        chunk_bitmap acked_bits;
        chunk_bitmap hashed_bits;
        std::vector<digest128> digests;
        std::optional<digest128> same_as;  // ACCEPT_ALL: the receiver's file, if its chunk is this one
        std::shared_ptr<const small_sums> small;  // the receiver's older version in small blocks (indexed on workers)
    };
    struct file_state {
        bool accepted = false;
        bool result = false;
        bool done_held = false;  // FileDone waits for the acks of resent chunks
        bool released = false;   // release(): its file_work is gone
        wire::SyncAction action = wire::SYNC_NONE;
        std::uint64_t chunks = 0;
        std::uint64_t next = 0;    // scheduling cursor
        std::uint64_t hashed = 0;  // digests known
        std::uint64_t acked = 0;
        std::uint64_t kept = 0;  // its chunks' bytes the receiver had (in skipped_bytes_)
        std::uint64_t resend_pending = 0;
        std::unique_ptr<file_work> work;  // accepted, not skipped
    };

    wire::FileDone file_done(std::uint32_t id) const;
    // The state of file `f`: null before its batch's Accept and once forgotten. An id
    // never offered is out of range (std::out_of_range).
    const file_state* state(file_id f) const {
        if (f.value >= entries_.size()) {
            throw std::out_of_range("sender_machine: no such file");
        }
        return f.value < base_ || f.value - base_ >= files_.size() ? nullptr : &files_[f.value - base_];
    }
    file_state* state(file_id f) { return const_cast<file_state*>(std::as_const(*this).state(f)); }
    const file_work* work(file_id f) const {
        const file_state* s = state(f);
        return s ? s->work.get() : nullptr;
    }
    // Drops the states at the front that are done with: a result in, and no chunk work
    // (released, skipped, a folder or a link, or given up on).
    void forget();
    // A file of the batch whose Accept comes next (what HaveDigests and BasisSums may be
    // about): the error to answer otherwise.
    std::error_code next_accepted_file(std::uint32_t id) const;

    // Adds entries_[from..] to the totals, files_ and the batches (sealed as they fill).
    void take_entries(std::size_t from);
    void seal_batch(std::uint32_t end);  // the batch being filled ends before entry `end`
    void seal_if_due();  // the batch being filled, once it holds first_offer_batch_bytes (or is the first)

    std::uint64_t transfer_id_;
    // An entry or a file's state stays where it is while more are appended; the entries
    // are the vectors handed over, kept whole (not moved into a second array).
    segments<entry_info> entries_;
    transfer_options options_;
    // The states of files base_ on, up to the end of the last batch accepted.
    std::deque<file_state> files_;
    std::uint32_t base_ = 0;
    // By id, sized as entries come (take_entries): accepted to be sent (a forgotten file's
    // late ack is ignored only then), and abort_file()d (whether its state is there or
    // forgotten; a file given up on has no chunk work left).
    std::vector<bool> sent_;
    std::vector<bool> gave_up_;
    // abort_file() and receiver_gave_up(): no more of file `f` is sent or counted.
    bool give_up(file_id f);
    std::vector<std::pair<std::uint32_t, std::uint32_t>> batches_;  // [first, end) entry ids, sealed
    std::size_t batch_count_ = 0;
    std::uint32_t open_first_ = 0;  // the batch being filled: entries [open_first_, size)
    std::size_t open_bytes_ = 0;
    bool complete_ = false;
    std::size_t accepted_batches_ = 0;
    std::size_t offers_sent_ = 0;  // by next_offer()
    std::deque<std::uint32_t> ready_files_;  // accepted files with chunks left to schedule
    std::deque<chunk_ref> requeued_;
    std::unordered_map<std::uint32_t, std::vector<digest128>> have_digests_;  // before their Accept
    std::unordered_map<std::uint32_t, basis_sums> basis_pending_;  // BasisSums before their Accept
    std::unordered_map<std::uint32_t, small_sums> small_pending_;  // SmallSums before their Accept
    std::uint64_t small_blocks_held_ = 0;                          // by file_work::small, all files'
    // A file's file_work goes (release, give_up), and the small blocks it held with it.
    void drop_work(file_state& f);
    std::uint64_t resent_chunks_ = 0;
    std::uint64_t aborted_files_ = 0;
    // Their sizes, but for the chunks the receiver had (counted in skipped_bytes_ already):
    // the TransferResult's confirmed count leaves them out, the chunks acked before the
    // abort too (the receiver drops them; confirmed_bytes() counts those until then).
    std::uint64_t aborted_bytes_ = 0;
    std::uint64_t kept_bytes_ = 0;
    std::uint64_t claimed_bytes_ = 0;
    std::uint64_t resumed_files_ = 0;
    std::uint64_t total_bytes_ = 0;
    std::uint64_t confirmed_bytes_ = 0;
    std::uint64_t skipped_bytes_ = 0;
    std::uint64_t skipped_files_ = 0;
    std::uint64_t files_done_ = 0;
    std::uint64_t dirs_done_ = 0;
    std::uint64_t not_made_dirs_ = 0;
    std::uint64_t not_made_files_ = 0;
    bool finished_ = false;
    std::string failure_;
};

// ---------------------------------------------------------------------------------------
// Receiver

// The paths a sender offered, in offer order (wire_path_less), looked up by halving:
// each path once, in blocks of bytes (a path and its NUL), with one offset and kind per
// path. About 9 MB for 200,000 paths of 38 bytes, where the offered entries themselves
// are no longer held (receiver_machine keeps only the files in flight).
class offered_paths {
public:
    // `folder`: offered as one, or some offered path lies in it.
    enum class kind { none, file, folder };
    kind find(std::string_view path) const;
    std::size_t size() const { return starts_.size(); }
    std::string_view path(std::size_t i) const {
        std::uint64_t at = starts_[i] & ~folder_bit;
        return {&blocks_[at / block_bytes][at % block_bytes]};
    }
    bool is_folder(std::size_t i) const { return (starts_[i] & folder_bit) != 0; }
    // The next path in offer order (no NUL in it; at most max_path_bytes).
    void add(std::string_view path, bool folder);

private:
    static constexpr std::size_t block_bytes = std::size_t{1} << 20;
    static constexpr std::uint64_t folder_bit = std::uint64_t{1} << 63;
    std::vector<std::unique_ptr<char[]>> blocks_;
    std::size_t used_ = block_bytes;  // of the last block
    std::vector<std::uint64_t> starts_;  // block * block_bytes + offset, and folder_bit
};

struct receiver_limits {
    std::uint64_t max_files = max_files_per_transfer;
};

class receiver_machine {
public:
    explicit receiver_machine(receiver_limits limits = {}) : limits_(limits) {}
    // Not copied: it holds a file's chunk state and an offered path once (a move keeps them).
    receiver_machine(const receiver_machine&) = delete;
    receiver_machine& operator=(const receiver_machine&) = delete;
    receiver_machine(receiver_machine&&) = default;
    receiver_machine& operator=(receiver_machine&&) = default;

    // Validates one Offer batch (ids dense and in order, paths safe and unique, sizes,
    // limits). On success returns the ids of the batch's entries, in order.
    std::error_code on_offer(const wire::Offer& offer, std::vector<file_id>& ids);

    // The node decided, per entry of the batch, what to ask for (ACCEPT_ALL, SKIP, or
    // PARTIAL with the chunks it has). Builds the Accept and records the decisions.
    struct decision {
        file_id id;
        wire::AcceptKind kind = wire::ACCEPT_ALL;
        std::optional<chunk_bitmap> have;
        std::vector<digest128> have_digests;  // PARTIAL: digests of the chunks it has
        wire::SyncAction action = wire::SYNC_NONE;  // sync: what happens to the file (told to the sender)
        // PARTIAL: the receiver's own file it started from (FileAccept.basis); SKIP of a
        // dry run's new file: the one it would start from
        std::string basis;
        // PARTIAL, a sync's older version: its sums (BasisSums frames, basis_sum_frames);
        // the file then takes CODEC_DELTA chunks. At most max_basis_blocks full blocks.
        std::optional<basis_sums> sums;
        // ALL, a one-chunk file: the digest of the node's own file of that size at the path
        // (FileAccept.same_as); the file then takes a CODEC_SAME chunk.
        std::optional<digest128> same_as{};
        // ALL, a changed file of a few chunks: the sums of the node's own file at the path
        // in small blocks (SmallSums frames, small_sum_frames); the file then takes
        // CODEC_DELTA chunks of them. (A PARTIAL one's go in sums->fine.)
        std::optional<small_sums> small{};
    };
    wire::Accept accept(const std::vector<decision>& decisions);

    // The HaveDigests frames (header, payload) that must precede that Accept: one or more
    // per ACCEPT_PARTIAL decision, each under max_have_digests_per_frame digests.
    static constexpr std::uint32_t max_have_digests_per_frame = 16384;  // 256 KiB of payload
    // BasisSums frames carry 20 bytes per block: at most a chunk's worth of payload too
    // (what the sender's frame buffers hold).
    static constexpr std::uint32_t max_basis_sums_per_frame = chunk_size / 20;
    static std::vector<std::pair<wire::HaveDigests, std::string>> have_digest_frames(const decision& d);
    // Whether every chunk `d` has is its older version's block at that index, by digest
    // (FileAccept.have_from_basis): then none of its HaveDigests travel.
    static bool have_is_basis(const decision& d);
    // The BasisSums frames (header, payload) of a decision with sums: sent after its
    // HaveDigests, before the Accept.
    static std::vector<std::pair<wire::BasisSums, std::string>> basis_sum_frames(const decision& d);
    // The SmallSums frames that must precede the Accept of `decisions` (each payload at
    // most chunk_size bytes).
    static std::vector<std::pair<wire::SmallSums, std::string>> small_sum_frames(
        const std::vector<decision>& decisions);

    // Admission of a chunk header before its payload is read. A chunk of a finished file
    // is admitted: the node drops it and confirms it again (see finished()).
    std::error_code on_chunk(const wire::Chunk& chunk, std::uint32_t payload_len) const;

    // A chunk was verified against its hash and written. Returns true when the file has
    // all its chunks (and may be ready to finalize, see ready()).
    bool on_chunk_written(file_id f, chunk_index i, digest128 digest);

    bool has_chunk(file_id f, chunk_index i) const {
        const file_state* s = live(f);
        return s && s->data && s->data->have.test(i.value);
    }
    // The chunk is here with these very bytes (a duplicate after a requeue): drop it and
    // re-ack. A chunk here with another digest (a resumed file whose source changed, or
    // whose partial data was damaged) is written again.
    bool holds(file_id f, chunk_index i, digest128 d) const {
        const file_state* s = live(f);
        return s && s->data && s->data->have.test(i.value) && (s->data->digests[i.value] == d || !replaceable(f, i));
    }
    // A chunk this side offered when resuming, which the sender may replace once.
    bool replaceable(file_id f, chunk_index i) const {
        const file_state* s = live(f);
        return s && s->data && s->data->claimed.size() > i.value && s->data->claimed.test(i.value);
    }

    std::error_code on_file_done(const wire::FileDone& done);

    // A file of exactly one chunk that the sender sends whole: its Chunk frame is the
    // whole file, the file digest is the digest of that one chunk digest, and no
    // FileDone follows. The node may verify, write and finalize it in one step.
    bool single_chunk(file_id f) const {
        const file_state* s = live(f);
        return s && s->implicit_done;
    }

    // True when the file has every chunk and its FileDone; `ok` tells whether the digest
    // over the chunk digests matches the sender's.
    bool ready(file_id f, bool& ok) const;

    // The file digest over the chunk digests received so far (the verified digest once
    // ready() said ok).
    digest128 received_digest(file_id f) const;

    // The node finished the file (renamed into place, or failed).
    void on_file_finished(file_id f);
    // Files decided and not finished yet: what the node holds chunk state and open files
    // for (it takes no more batches while too many are).
    std::uint64_t in_progress() const { return decided_files_ - finished_files_; }
    // A finished file's chunk state (bitmaps, digests) goes once the node is done with it
    // (received_digest() then no longer answers for it), and with it, once every file
    // offered before it is finished and released too, its entry (see forget()).
    void release(file_id f) {
        if (file_state* s = live(f); s && s->finished) {
            s->data.reset();
        }
        forget();
    }

    // A file's entry, while the machine holds it: from its offer until it is finished and
    // released, and every file before it is too (entry_held()). The node copies what it
    // needs of an entry for later.
    const entry_info& entry(file_id f) const { return held(f).info; }
    bool entry_held(file_id f) const { return live(f) != nullptr; }
    // Every path the batches offered, in offer order, for the receiver's clean-up and its
    // renamed files once the last batch is in. Valid while this machine lives; it takes no
    // offer after the last, so it no longer changes then.
    const offered_paths& paths() const { return paths_; }
    // The first batch's sync target, if it had one (`ferry sync` into a share).
    const std::optional<wire::SyncTarget>& sync() const { return sync_; }
    // The chunks of a decided file that are here, and their digests (for resume records).
    const chunk_bitmap& have(file_id f) const {
        static const chunk_bitmap none;
        const file_state* s = live(f);
        return s && s->data ? s->data->have : none;
    }
    const std::vector<digest128>& digests(file_id f) const {
        static const std::vector<digest128> none;
        const file_state* s = live(f);
        return s && s->data ? s->data->digests : none;
    }
    // (A file no longer held was finished.)
    bool finished(file_id f) const {
        const file_state* s = live(f);
        return !s || s->finished;
    }
    bool all_offered() const { return last_seen_; }
    bool all_finished() const { return last_seen_ && finished_files_ == offered(); }
    // The sender gave up on a file (FileAbort): it counts as finished, is never made
    // final, and chunks of it still on their way are to be dropped (on_chunk accepts them).
    // Also after the file's FileDone (a chunk of it lost with its connection that the
    // sender could not read again); not for a file finished here (unexpected_message).
    std::error_code on_file_abort(const wire::FileAbort& abort);
    // The node could not write or name file `f` for a reason of that file alone (no
    // permission at its place, a name its file system refuses, another process writing
    // it): given up on here, as a FileAbort gives it up. It counts as finished and is
    // never made final; its chunks, its FileDone and a FileAbort of it still on their way
    // (sent before the sender heard) are dropped, also once it is forgotten. False when it
    // is not a file that comes, is given up on already, or was released.
    bool give_up(file_id f);
    bool failed_here(file_id f) const { return f.value < failed_here_.size() && failed_here_[f.value]; }
    // (A file given up on is held until the node releases it.)
    bool aborted(file_id f) const {
        const file_state* s = live(f);
        return s && s->aborted;
    }
    std::uint64_t aborted_files() const { return aborted_files_; }
    std::uint64_t total_files() const { return offered(); }  // entries, directories included
    // Entries the machine holds now (the files in flight, and finished ones it waits to
    // forget): what its memory grows with.
    std::size_t held_entries() const { return files_.size(); }
    std::uint64_t total_dirs() const { return total_dirs_; }
    std::uint64_t total_bytes() const { return total_bytes_; }
    // Payload received and written, of files not aborted (FileAbort): what the sender
    // counts as confirmed once the transfer ends.
    std::uint64_t received_bytes() const { return received_bytes_; }
    // What aborted files had received and written before the FileAbort (their partial
    // files keep it): left out of received_bytes().
    std::uint64_t discarded_bytes() const { return discarded_bytes_; }
    std::uint64_t skipped_files() const { return skipped_files_; }  // already here (ACCEPT_SKIP)
    std::uint64_t skipped_bytes() const { return skipped_bytes_; }
    // Folders, and symlinks (or, in a dry run, files), decided SYNC_FAILED (not made here):
    // in neither total_dirs()'s made folders nor skipped_files().
    std::uint64_t not_made_dirs() const { return not_made_dirs_; }
    std::uint64_t not_made_files() const { return not_made_files_; }
    // Bytes of resumed files (ACCEPT_PARTIAL) that were already here and stayed.
    std::uint64_t kept_bytes() const { return kept_bytes_; }
    std::uint64_t transfer_id() const { return transfer_id_; }
    transfer_options options() const { return options_; }

private:
    struct file_state {
        entry_info info;
        bool decided = false;
        bool skip = false;
        bool done_seen = false;
        bool finished = false;
        bool implicit_done = false;  // one chunk, sent: no FileDone follows (see single_chunk)
        bool delta = false;          // weak sums went out: CODEC_DELTA chunks are welcome
        std::optional<digest128> same_as;  // told in the FileAccept: a CODEC_SAME chunk of this digest is welcome
        bool small_delta = false;          // SmallSums went out for it: a CODEC_DELTA chunk is welcome
        bool aborted = false;        // FileAbort
        digest128 sender_digest;
        std::uint64_t chunks = 0;
        std::uint64_t have_count = 0;
        // The chunks of a file that comes (decided, not skipped): made by accept(), so
        // that the files a sync finds unchanged cost only their file_state.
        struct chunk_data {
            chunk_bitmap have;
            chunk_bitmap claimed;  // offered in ACCEPT_PARTIAL and not yet replaced: the only chunks a different digest may replace
            std::vector<digest128> digests;
        };
        std::unique_ptr<chunk_data> data;
    };

    // Checks the entry `e`, to be offered next: refused unless its path comes after the
    // one before it (wire_path_less), or if a folder it lies in was offered as a file or
    // symlink. Then it is the last of the chain, and in paths_.
    std::error_code claim_path(const entry_info& e);

    std::uint64_t offered() const { return paths_.size(); }
    // The state of file `f` while held; nullptr once forgotten. An id never offered is out
    // of range (std::out_of_range), as a bad index was.
    const file_state* live(file_id f) const {
        if (f.value >= offered()) {
            throw std::out_of_range("receiver_machine: no such file");
        }
        return f.value < base_ ? nullptr : &files_[f.value - base_];
    }
    file_state* live(file_id f) { return const_cast<file_state*>(std::as_const(*this).live(f)); }
    const file_state& held(file_id f) const {
        const file_state* s = live(f);
        if (!s) {
            throw std::out_of_range("receiver_machine: file no longer held");
        }
        return *s;
    }
    file_state& held(file_id f) { return const_cast<file_state&>(std::as_const(*this).held(f)); }
    // Drops the entries at the front that are finished and hold no chunk state.
    void forget();
    // A file given up on: what came of it leaves received_bytes_, and it is finished.
    void drop_received(file_state& f);

    receiver_limits limits_;
    std::uint64_t transfer_id_ = 0;
    bool first_seen_ = false;
    bool last_seen_ = false;
    transfer_options options_;
    std::optional<wire::SyncTarget> sync_;
    // The files from id base_ on: the oldest one not finished and released, and those
    // offered after it.
    std::deque<file_state> files_;
    std::uint32_t base_ = 0;
    offered_paths paths_;
    // By id, one per offered entry: accepted with data to come (a forgotten file's chunk is
    // admitted only then).
    std::vector<bool> came_;
    // By id, up to the highest: given up on here (give_up).
    std::vector<bool> failed_here_;
    // The last entry offered and the offered folders it lies in, outermost first (indexes
    // into paths_).
    std::vector<std::uint32_t> chain_;
    std::uint64_t total_bytes_ = 0;
    std::uint64_t received_bytes_ = 0;
    std::uint64_t discarded_bytes_ = 0;
    std::uint64_t skipped_files_ = 0;
    std::uint64_t skipped_bytes_ = 0;
    std::uint64_t kept_bytes_ = 0;
    std::uint64_t finished_files_ = 0;
    std::uint64_t decided_files_ = 0;
    std::uint64_t aborted_files_ = 0;
    std::uint64_t total_dirs_ = 0;
    std::uint64_t not_made_dirs_ = 0;
    std::uint64_t not_made_files_ = 0;
};

}  // namespace ferry
