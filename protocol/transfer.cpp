#include "protocol/transfer.hpp"

#include <bit>
#include <cstring>
#include <limits>

#include "protocol/digest.hpp"
#include "protocol/le_bytes.hpp"
#include "protocol/path.hpp"

namespace ferry {

std::optional<chunk_bitmap> chunk_bitmap::from_bytes(std::uint64_t bits, const std::string& bytes) {
    if (bytes.size() != (bits + 7) / 8) {
        return std::nullopt;
    }
    chunk_bitmap b(bits);
    std::uint8_t* out = b.data();
    for (std::size_t i = 0; i < bytes.size(); ++i) {
        out[i] = static_cast<std::uint8_t>(bytes[i]);
    }
    if (bits % 8 != 0 && !bytes.empty()) {
        out[bytes.size() - 1] &= static_cast<std::uint8_t>((1u << (bits % 8)) - 1);
    }
    return b;
}

std::uint64_t chunk_bitmap::count() const {
    std::uint64_t n = 0;
    const std::uint8_t* bytes = data();
    for (std::size_t i = 0; i < byte_count(); ++i) {
        n += static_cast<std::uint64_t>(std::popcount(bytes[i]));
    }
    return n;
}

std::error_code check_wire_entry(const wire::Entry& e, bool links) {
    if (std::error_code ec = check_wire_path(e.path())) {
        return ec;
    }
    bool is_link = e.kind() == wire::ENTRY_SYMLINK;
    if (e.kind() != wire::ENTRY_DIR && !is_link && e.kind() != wire::ENTRY_FILE) {
        return protocol_errc::bad_path;
    }
    if (is_link && (!links || e.link_target().empty() || e.link_target().size() > max_link_target ||
                    e.link_target().find('\0') != std::string::npos || e.size() != 0)) {
        return protocol_errc::bad_path;
    }
    return {};
}

// ---------------------------------------------------------------------------------------
// Sender

sender_machine::sender_machine(std::uint64_t transfer_id, std::vector<entry_info> entries, transfer_options options,
                               bool complete)
    : transfer_id_(transfer_id), entries_(std::move(entries)), options_(std::move(options)) {
    open_bytes_ = options_.sync ? options_.sync->ByteSizeLong() : 0;
    take_entries(0);
    if (complete) {
        this->complete();
    } else {
        seal_if_due();
    }
}

void sender_machine::seal_if_due() {
    // What came so far goes out once it is worth an Offer of its own (or is the first).
    if (open_first_ < entries_.size() && (batches_.empty() || open_bytes_ >= first_offer_batch_bytes)) {
        seal_batch(static_cast<std::uint32_t>(entries_.size()));
    }
}

void sender_machine::flush() {
    if (!complete_) {
        seal_batch(static_cast<std::uint32_t>(entries_.size()));
    }
}

void sender_machine::append(std::vector<entry_info> more) {
    std::size_t from = entries_.size();
    entries_.append(std::move(more));
    take_entries(from);
    seal_if_due();
}

void sender_machine::complete() {
    if (complete_) {
        return;
    }
    // An empty transfer still has its one (empty) batch; so has a streamed one whose
    // batches all went out before the end was known: the last must say it is. (One not
    // sent yet says so when it goes: make_offer.)
    if (open_first_ < entries_.size() || batches_.empty() || offers_sent_ == batch_count_) {
        seal_batch(static_cast<std::uint32_t>(entries_.size()));
    }
    complete_ = true;
}

void sender_machine::take_entries(std::size_t from) {
    sent_.resize(entries_.size(), false);
    gave_up_.resize(entries_.size(), false);
    // The first batch is small: the receiver answers it, and the first files move, while
    // it still reads the batches after it.
    for (std::size_t i = from; i < entries_.size(); ++i) {
        const entry_info& e = entries_[i];
        if (e.is_file()) {
            total_bytes_ += e.size;
        }
        std::size_t cost = e.path.size() + e.link_target.size() + 40;
        std::size_t limit = batches_.empty() ? first_offer_batch_bytes : offer_batch_bytes;
        if (open_bytes_ + cost > limit && i > open_first_) {
            seal_batch(static_cast<std::uint32_t>(i));
        }
        open_bytes_ += cost;
    }
}

void sender_machine::seal_batch(std::uint32_t end) {
    batches_.emplace_back(open_first_, end);
    open_first_ = end;
    open_bytes_ = 0;
    batch_count_ = batches_.size();
}

wire::Offer sender_machine::make_offer(std::size_t b) const {
    wire::Offer o;
    o.set_transfer_id(transfer_id_);
    o.set_last(complete_ && b + 1 == batches_.size());
    o.set_total_files(entries_.size());
    o.set_total_bytes(total_bytes_);
    o.set_overwrite(options_.overwrite);
    o.set_fsync_each(options_.fsync_each);
    if (b == 0 && options_.sync) {
        *o.mutable_sync() = *options_.sync;
    }
    for (std::uint32_t i = batches_.at(b).first; i < batches_[b].second; ++i) {
        const entry_info& e = entries_[i];
        wire::Entry* w = o.add_entries();
        w->set_id(i);
        w->set_path(e.path);
        w->set_kind(e.is_dir ? wire::ENTRY_DIR : e.is_link ? wire::ENTRY_SYMLINK : wire::ENTRY_FILE);
        w->set_size(e.is_file() ? e.size : 0);
        if (e.is_link) {
            w->set_link_target(e.link_target.str());
        }
        w->set_mode(e.mode);
        w->set_mtime_ns(e.mtime_ns);
        if (e.digest) {
            std::string d;
            put_digest(d, *e.digest);
            w->set_digest(std::move(d));
        }
    }
    return o;
}

std::optional<wire::Offer> sender_machine::next_offer() {
    if (offers_sent_ >= batch_count_ || offers_sent_ >= accepted_batches_ + max_offers_ahead ||
        small_blocks_held_ > max_small_blocks_held) {
        return std::nullopt;  // (the files that hold them go on, and free them as they end)
    }
    return make_offer(offers_sent_++);
}

std::vector<wire::Offer> sender_machine::make_offers() const {
    std::vector<wire::Offer> offers;
    offers.reserve(batch_count_);
    for (std::size_t b = 0; b < batch_count_; ++b) {
        offers.push_back(make_offer(b));
    }
    return offers;
}

std::error_code sender_machine::expand_unchanged(wire::Accept& accept, std::uint32_t first, std::uint32_t end) const {
    if (accept.unchanged().empty()) {
        return {};
    }
    const std::uint32_t n = end - first;
    // A bit for every entry (from_bytes), none past the last (it clears those), and as many
    // left out as `files` lacks.
    std::optional<chunk_bitmap> plain = chunk_bitmap::from_bytes(n, accept.unchanged());
    if (!plain || plain->to_bytes() != accept.unchanged() ||
        plain->count() + static_cast<std::uint64_t>(accept.files_size()) != n) {
        return protocol_errc::unexpected_message;
    }
    google::protobuf::RepeatedPtrField<wire::FileAccept> all;
    all.Reserve(static_cast<int>(n));
    int next = 0;
    for (std::uint32_t i = 0; i < n; ++i) {
        if (plain->test(i)) {
            wire::FileAccept* fa = all.Add();
            fa->set_id(first + i);
            fa->set_kind(entries_[first + i].is_dir ? wire::ACCEPT_ALL : wire::ACCEPT_SKIP);
        } else {
            all.Add(std::move(*accept.mutable_files(next++)));
        }
    }
    accept.mutable_files()->Swap(&all);
    accept.clear_unchanged();
    return {};
}

std::error_code sender_machine::on_accept(wire::Accept& accept, std::vector<wire::FileDone>& done_now) {
    // (A batch not sent yet: a receiver cannot have been told its files.)
    if (accepted_batches_ >= offers_sent_ || accept.transfer_id() != transfer_id_) {
        return protocol_errc::unexpected_message;
    }
    auto [first, end] = batches_[accepted_batches_];
    if (std::error_code ec = expand_unchanged(accept, first, end)) {
        return ec;
    }
    if (static_cast<std::uint32_t>(accept.files_size()) != end - first) {
        return protocol_errc::unexpected_message;
    }
    // The batch's files get their states now (those before are all made: the batches are
    // answered in order), and lose them again if the Accept is refused.
    struct undo {
        std::deque<file_state>& files;
        std::size_t keep;
        std::deque<std::uint32_t>& ready;
        std::size_t ready_keep;
        bool armed = true;
        ~undo() {
            if (armed) {
                files.resize(keep);
                ready.resize(ready_keep);  // no chunk of a file whose state went
            }
        }
    } made{files_, files_.size(), ready_files_, ready_files_.size()};
    for (std::uint32_t i = first; i < end; ++i) {
        files_.emplace_back().chunks = entries_[i].is_file() ? chunk_count(entries_[i].size) : 0;
    }
    for (std::uint32_t i = first; i < end; ++i) {
        const wire::FileAccept& fa = accept.files(static_cast<int>(i - first));
        if (fa.id() != i) {
            return protocol_errc::unknown_file;
        }
        if (entries_[i].is_link && fa.kind() != wire::ACCEPT_SKIP) {
            return protocol_errc::unexpected_message;  // the receiver makes a link itself
        }
        file_state& f = files_[i - base_];
        f.accepted = true;
        f.action = fa.action();
        if (!entries_[i].is_file() || fa.kind() == wire::ACCEPT_SKIP) {  // a symlink: made there, nothing sent
            f.result = true;
            ++files_done_;
            if (fa.action() == wire::SYNC_FAILED) {
                ++(entries_[i].is_dir ? not_made_dirs_ : not_made_files_);
            } else if (entries_[i].is_dir) {
                ++dirs_done_;
            } else {
                ++skipped_files_;
                skipped_bytes_ += entries_[i].size;
            }
            continue;
        }
        f.work = std::make_unique<file_work>();
        sent_[i] = true;
        file_work& w = *f.work;
        w.acked_bits = chunk_bitmap(f.chunks);
        w.hashed_bits = chunk_bitmap(f.chunks);
        w.digests.assign(f.chunks, digest128{});
        if (fa.kind() == wire::ACCEPT_PARTIAL) {
            w.have = chunk_bitmap::from_bytes(f.chunks, fa.have());
            if (!w.have) {
                return protocol_errc::bad_chunk;
            }
            // Every chunk the receiver claims comes with its digest there: in HaveDigests,
            // or (have_from_basis) in the BasisSums of the block at its index.
            auto it = have_digests_.find(i);
            if (fa.have_from_basis()) {
                auto b = basis_pending_.find(i);
                if (it != have_digests_.end() || b == basis_pending_.end()) {
                    return protocol_errc::bad_chunk;
                }
                std::vector<digest128>& list = have_digests_[i];
                for (std::uint64_t c = 0; c < f.chunks; ++c) {
                    if (!w.have->test(c)) {
                        continue;
                    }
                    std::optional<digest128> digest = b->second.block_digest(c);
                    if (!digest) {
                        have_digests_.erase(i);
                        return protocol_errc::bad_chunk;
                    }
                    list.push_back(*digest);
                }
                it = have_digests_.find(i);
            }
            std::size_t got = it == have_digests_.end() ? 0 : it->second.size();
            if (got != w.have->count()) {
                return protocol_errc::bad_chunk;
            }
            w.theirs.assign(f.chunks, digest128{});
            ++resumed_files_;
            std::size_t next = 0;
            for (std::uint64_t c = 0; c < f.chunks && next < got; ++c) {
                if (w.have->test(c)) {
                    w.theirs[c] = it->second[next++];
                    claimed_bytes_ += chunk_length(entries_[i].size, c);
                }
            }
            if (it != have_digests_.end()) {
                have_digests_.erase(it);
            }
            if (auto b = basis_pending_.find(i); b != basis_pending_.end()) {
                w.sums = std::move(b->second);
                basis_pending_.erase(b);
            }
            w.basis = fa.basis();
        } else if (fa.kind() != wire::ACCEPT_ALL) {
            return protocol_errc::unexpected_message;
        }
        if (!fa.same_as().empty()) {
            // Only of a one-chunk file accepted whole, and as 16 bytes.
            if (fa.kind() != wire::ACCEPT_ALL || f.chunks != 1 || fa.same_as().size() != 16) {
                return protocol_errc::unexpected_message;
            }
            w.same_as = get_digest(fa.same_as().data());
        }
        if (auto sm = small_pending_.find(i); sm != small_pending_.end()) {
            // (A file answered ACCEPT_SKIP left the loop above: its sums stay pending, and
            // are refused below.)
            w.small = std::make_shared<const small_sums>(std::move(sm->second));
            small_blocks_held_ += w.small->blocks.size();
            small_pending_.erase(sm);
        }
        if (f.chunks == 0) {
            wire::FileDone d;
            d.set_file_id(i);
            digest128 dg = file_digest({});
            d.set_digest_lo(dg.lo);
            d.set_digest_hi(dg.hi);
            done_now.push_back(std::move(d));
        } else {
            ready_files_.push_back(i);
        }
    }
    if (!have_digests_.empty() || !basis_pending_.empty() || !small_pending_.empty()) {
        return protocol_errc::unexpected_message;  // digests for a file not accepted PARTIAL (or ALL)
    }
    made.armed = false;
    ++accepted_batches_;
    forget();
    return {};
}

void sender_machine::drop_work(file_state& f) {
    if (f.work && f.work->small) {
        small_blocks_held_ -= f.work->small->blocks.size();
    }
    f.work.reset();
}

void sender_machine::forget() {
    while (!files_.empty() && files_.front().result && !files_.front().work) {
        files_.pop_front();
        ++base_;
    }
}

std::error_code sender_machine::next_accepted_file(std::uint32_t id) const {
    if (accepted_batches_ >= offers_sent_) {  // (a batch not offered yet: its files are not known there)
        return protocol_errc::unexpected_message;
    }
    auto [first, end] = batches_[accepted_batches_];
    if (id < first || id >= end || !entries_[id].is_file()) {
        return protocol_errc::unknown_file;
    }
    return {};
}

std::error_code sender_machine::on_have_digests(const wire::HaveDigests& have, std::span<const std::uint8_t> payload) {
    // Only for a file of the batch whose Accept comes next, contiguous, and never more
    // digests than the file has chunks: a receiver cannot make this side hold more.
    std::uint32_t id = have.file_id();
    if (std::error_code ec = next_accepted_file(id)) {
        return ec;
    }
    if (payload.empty() || payload.size() % 16 != 0) {
        return protocol_errc::payload_mismatch;
    }
    std::vector<digest128>& list = have_digests_[id];
    std::uint64_t n = payload.size() / 16;
    if (have.first() != list.size() || list.size() + n > chunk_count(entries_[id].size)) {
        if (list.empty()) {
            have_digests_.erase(id);
        }
        return protocol_errc::bad_chunk;
    }
    list.reserve(list.size() + n);
    for (std::uint64_t k = 0; k < n; ++k) {
        list.push_back(get_digest(payload.data() + 16 * k));
    }
    return {};
}

std::error_code sender_machine::on_basis_sums(const wire::BasisSums& sums, std::span<const std::uint8_t> payload) {
    // Like HaveDigests: only for a file of the batch whose Accept comes next, contiguous,
    // and never more blocks than max_basis_blocks of the file.
    if (!options_.sync) {
        return protocol_errc::unexpected_message;  // a delta is for a sync's older versions only
    }
    std::uint32_t id = sums.file_id();
    if (std::error_code ec = next_accepted_file(id)) {
        return ec;
    }
    if (payload.size() % 20 != 0) {
        return protocol_errc::payload_mismatch;
    }
    auto [it, fresh] = basis_pending_.try_emplace(id);
    basis_sums& b = it->second;
    if (fresh) {
        b.size = sums.size();
        b.tail = {sums.tail_lo(), sums.tail_hi()};
    }
    std::uint64_t n = payload.size() / 20;
    if (b.size != sums.size() || b.tail != digest128{sums.tail_lo(), sums.tail_hi()} || sums.first() != b.weak.size() ||
        b.weak.size() + n > std::min(b.size / chunk_size, max_basis_blocks(entries_[id].size))) {
        return protocol_errc::bad_chunk;
    }
    for (std::uint64_t k = 0; k < n; ++k) {
        b.strong.push_back(get_digest(payload.data() + 20 * k));
        b.weak.push_back(static_cast<std::uint32_t>(get_le(payload.data() + 20 * k + 16, 4)));
    }
    return {};
}

std::error_code sender_machine::on_small_sums(const wire::SmallSums& sums, std::span<const std::uint8_t> payload) {
    // Only for files of the batch whose Accept comes next, each once, of sizes a receiver
    // tells sums for: a receiver cannot make this side hold more than
    // max_small_blocks_for(its size) blocks per file of that batch.
    if (!options_.sync) {
        return protocol_errc::unexpected_message;
    }
    const int n = sums.file_ids_size();
    if (n == 0 || sums.block_sizes_size() != n || sums.blocks_size() != n) {
        return protocol_errc::unexpected_message;
    }
    std::size_t at = 0;
    for (int k = 0; k < n; ++k) {
        std::uint32_t id = sums.file_ids(k);
        if (std::error_code ec = next_accepted_file(id)) {
            return ec;
        }
        std::uint64_t size = entries_[id].size;
        std::uint64_t bytes = std::uint64_t{sums.blocks(k)} * 8;
        small_sums parsed;
        if (size < small_delta_min_size || small_pending_.contains(id) || bytes > payload.size() - at ||
            !parse_small_sums(sums.block_sizes(k), payload.subspan(at, bytes), parsed) ||
            parsed.blocks.size() > max_small_blocks_for(size, parsed.block_size) ||
            parsed.blocks.size() > max_small_blocks_of(parsed.block_size)) {
            return protocol_errc::bad_chunk;
        }
        small_pending_.emplace(id, std::move(parsed));
        at += bytes;
    }
    if (at != payload.size()) {
        return protocol_errc::payload_mismatch;
    }
    return {};
}

std::optional<chunk_ref> sender_machine::next_chunk() {
    if (!requeued_.empty()) {
        chunk_ref r = requeued_.front();
        requeued_.pop_front();
        return r;
    }
    if (ready_files_.empty()) {
        return std::nullopt;
    }
    std::uint32_t id = ready_files_.front();
    file_state& f = *state(file_id{id});  // accepted, chunks left: held
    chunk_ref r;
    r.file = file_id{id};
    r.index = chunk_index{static_cast<std::uint32_t>(f.next)};
    r.offset = f.next * chunk_size;
    r.length = chunk_length(entries_[id].size, f.next);
    r.send = !(f.work->have && f.work->have->test(f.next));
    if (++f.next == f.chunks) {
        ready_files_.pop_front();
    }
    return r;
}

std::optional<wire::FileDone> sender_machine::on_chunk_hashed(const chunk_ref& ref, digest128 digest, bool* resend) {
    file_state* s = state(ref.file);
    if (!s || !s->work || ref.index.value >= s->chunks || s->work->hashed_bits.test(ref.index.value)) {
        return std::nullopt;  // a requeued chunk read twice has the same digest
    }
    file_state& f = *s;
    file_work& w = *f.work;
    w.hashed_bits.set(ref.index.value);
    w.digests[ref.index.value] = digest;
    if (!ref.send && !w.acked_bits.test(ref.index.value)) {
        if (!w.theirs.empty() && w.theirs[ref.index.value] != digest) {
            // The receiver has other bytes there: send this chunk after all.
            chunk_ref again = ref;
            again.send = true;
            requeued_.push_front(again);
            ++resent_chunks_;
            if (w.resend_bits.size() == 0) {
                w.resend_bits = chunk_bitmap(f.chunks);
            }
            w.resend_bits.set(ref.index.value);
            ++f.resend_pending;
            if (resend != nullptr) {
                *resend = true;
            }
        } else {
            // The receiver already had this chunk: it is confirmed once its digest is known.
            w.acked_bits.set(ref.index.value);
            skipped_bytes_ += ref.length;
            kept_bytes_ += ref.length;
            f.kept += ref.length;
        }
    }
    if (++f.hashed < f.chunks) {
        return std::nullopt;
    }
    if (f.chunks == 1 && ref.send && !w.have) {
        return std::nullopt;  // the Chunk frame is the whole file: no FileDone
    }
    if (f.resend_pending > 0) {
        f.done_held = true;  // released by the last resent chunk's ack (on_ack)
        return std::nullopt;
    }
    return file_done(ref.file.value);
}


wire::FileDone sender_machine::file_done(std::uint32_t id) const {
    wire::FileDone d;
    d.set_file_id(id);
    static const std::vector<digest128> none;
    const file_work* w = work(file_id{id});
    digest128 dg = file_digest(w ? w->digests : none);  // both named: no copy
    d.set_digest_lo(dg.lo);
    d.set_digest_hi(dg.hi);
    return d;
}

bool sender_machine::requeue(const chunk_ref& ref) {
    if (const file_state* f = state(ref.file); !f || gave_up_[ref.file.value] || f->released) {
        return false;  // (no state: done with, and forgotten)
    }
    requeued_.push_front(ref);
    return true;
}

std::uint64_t sender_machine::on_ack(std::uint64_t key, std::error_code& ec, std::optional<wire::FileDone>* released,
                                     bool* after_result) {
    file_id fid = chunk_key_file(key);
    chunk_index idx = chunk_key_index(key);
    // Only files whose chunks are sent have acked bits: a directory, a skipped file or a
    // file not yet accepted has none, and an ack for it is the peer's error.
    if (fid.value >= entries_.size()) {
        ec = protocol_errc::unknown_file;
        return 0;
    }
    file_state* s = state(fid);
    // (A forgotten file was done with: sent and released or given up on, or skipped,
    // which no ack names.)
    bool forgotten = !s && fid.value < base_ && sent_[fid.value];
    bool done_with = forgotten || (s && (s->released || gave_up_[fid.value]));
    if (done_with && (fid.value < entries_.first_held() || idx.value < chunk_count(entries_[fid.value].size))) {
        if (after_result != nullptr) {
            *after_result = !gave_up_[fid.value];
        }
        return 0;  // confirmed before its result, or of a file given up on: nothing to count
    }
    if (!s || !s->work || idx.value >= s->work->acked_bits.size()) {
        ec = protocol_errc::unknown_file;
        return 0;
    }
    file_state& f = *s;
    file_work& w = *f.work;
    if (finished_ || w.acked_bits.test(idx.value)) {
        // A chunk delivered twice (after a requeue) is confirmed once; after the
        // TransferResult every byte is already confirmed.
        return 0;
    }
    w.acked_bits.set(idx.value);
    ++f.acked;
    std::uint64_t n = chunk_length(entries_[fid.value].size, idx.value);
    confirmed_bytes_ += n;
    if (f.resend_pending > 0 && w.resend_bits.test(idx.value)) {
        w.resend_bits.reset(idx.value);
        if (--f.resend_pending == 0 && f.done_held) {
            f.done_held = false;
            if (released != nullptr) {
                *released = file_done(fid.value);
            }
        }
    }
    return n;
}

std::optional<wire::FileAbort> sender_machine::abort_file(file_id id, bool vanished, const std::string& reason) {
    if (!give_up(id)) {
        return std::nullopt;
    }
    wire::FileAbort a;
    a.set_file_id(id.value);
    a.set_vanished(vanished);
    a.set_reason(reason);
    return a;
}

bool sender_machine::receiver_gave_up(file_id id) { return id.value < entries_.size() && give_up(id); }

bool sender_machine::give_up(file_id id) {
    file_state* s = state(id);
    if (!s || !s->accepted || s->result || !entries_[id.value].is_file()) {
        // (No state: not accepted, or done with and forgotten. A result: done, or given
        // up on already.)
        return false;
    }
    file_state& f = *s;
    f.result = true;
    f.done_held = false;
    drop_work(f);  // nothing more of it is sent or counted (forget() may take it now)
    gave_up_[id.value] = true;
    ++files_done_;
    ++aborted_files_;
    // (Not what of it the receiver had: skipped_bytes_ holds that, and the TransferResult's
    // count of every other byte would take it twice, below zero for a file resumed whole.)
    aborted_bytes_ += entries_[id.value].size - f.kept;
    std::erase(ready_files_, id.value);
    std::erase_if(requeued_, [id](const chunk_ref& r) { return r.file == id; });
    forget();
    return true;
}

std::error_code sender_machine::on_file_result(const wire::FileResult& result) {
    if (result.file_id() >= entries_.size()) {
        return protocol_errc::unknown_file;
    }
    if (gave_up_[result.file_id()]) {
        return {};  // crossed the FileAbort: the receiver made it final before it knew
    }
    file_state* s = state(file_id{result.file_id()});
    if (!s && result.file_id() >= base_) {
        return protocol_errc::unknown_file;  // not accepted yet
    }
    if (!s) {
        // Done with and forgotten: its result was in. Another is a broken peer's.
        if (!result.ok()) {
            failure_ = (result.file_id() < entries_.first_held() ? "file " + std::to_string(result.file_id())
                                                                   : entries_[result.file_id()].path) +
                       ": " + result.error();
            return protocol_errc::peer_error;
        }
        return protocol_errc::unexpected_message;
    }
    file_state& f = *s;
    if (!f.accepted) {
        return protocol_errc::unknown_file;
    }
    if (!result.ok()) {
        failure_ = entries_[result.file_id()].path + ": " + result.error();
        return protocol_errc::peer_error;
    }
    if (f.result) {
        return protocol_errc::unexpected_message;
    }
    f.result = true;
    ++files_done_;
    return {};
}

std::error_code sender_machine::on_transfer_result(const wire::TransferResult& result) {
    if (result.transfer_id() != transfer_id_) {
        return protocol_errc::unexpected_message;
    }
    if (!result.ok()) {
        failure_ = result.error();
        return protocol_errc::peer_error;
    }
    if (files_done_ != entries_.size() || !complete_) {
        failure_ = "receiver reported success before every file was confirmed";
        return protocol_errc::unexpected_message;
    }
    // The result is the receiver's confirmation of every byte (verified and durable);
    // ChunkAcks still in flight on other connections would only repeat it.
    confirmed_bytes_ = total_bytes_ - skipped_bytes_ - aborted_bytes_;
    finished_ = true;
    return {};
}

// ---------------------------------------------------------------------------------------
// Receiver

std::error_code receiver_machine::on_offer(const wire::Offer& offer, std::vector<file_id>& ids) {
    if (last_seen_) {
        return protocol_errc::unexpected_message;
    }
    if (!first_seen_) {
        first_seen_ = true;
        transfer_id_ = offer.transfer_id();
        options_.overwrite = offer.overwrite();
        options_.fsync_each = offer.fsync_each();
        if (offer.has_sync()) {
            if (!offer.sync().path().empty()) {
                if (std::error_code ec = check_wire_path(offer.sync().path())) {
                    return ec;
                }
            }
            sync_ = offer.sync();
        }
        if (offer.total_files() > limits_.max_files) {
            return protocol_errc::too_many_files;
        }
    } else if (offer.transfer_id() != transfer_id_ || offer.has_sync()) {
        return protocol_errc::unexpected_message;
    }
    if (offered() + static_cast<std::size_t>(offer.entries_size()) > limits_.max_files) {
        return protocol_errc::too_many_files;
    }
    forget();  // what the batches before left finished
    ids.clear();
    for (const wire::Entry& e : offer.entries()) {
        if (e.id() != offered()) {
            return protocol_errc::duplicate_id;
        }
        // A symlink only into a sync's mirror.
        if (std::error_code ec = check_wire_entry(e, sync_.has_value())) {
            return ec;
        }
        if (is_partial_file_name(wire_name(e.path()))) {
            return protocol_errc::bad_path;  // would collide with the receiver's partial files
        }
        bool is_dir = e.kind() == wire::ENTRY_DIR;
        bool is_link = e.kind() == wire::ENTRY_SYMLINK;
        // Every chunk needs an index a Chunk can carry, and the sizes a sum total_bytes()
        // can hold: a wrapped total would pass for a small transfer.
        if (!is_dir && (chunk_count(e.size()) > std::numeric_limits<std::uint32_t>::max() ||
                        e.size() > std::numeric_limits<std::uint64_t>::max() - total_bytes_)) {
            return protocol_errc::bad_chunk;
        }
        file_state f;
        f.info.path = e.path();
        f.info.is_dir = is_dir;
        f.info.is_link = is_link;
        f.info.size = f.info.is_file() ? e.size() : 0;
        // Never setuid/setgid from a peer's word; the sticky bit only on folders. A
        // symlink's own bits mean nothing on Linux.
        f.info.mode = is_link ? 0777u : e.mode() & (is_dir ? 01777u : 0777u);
        f.info.mtime_ns = e.mtime_ns();
        if (f.info.is_file() && e.digest().size() == 16) {
            f.info.digest = get_digest(e.digest().data());
        }
        if (is_link) {
            f.info.link_target = e.link_target();
        }
        f.chunks = f.info.is_file() ? chunk_count(e.size()) : 0;
        if (std::error_code ec = claim_path(f.info)) {
            return ec;
        }
        total_bytes_ += f.info.size;
        files_.push_back(std::move(f));
        came_.push_back(false);
        total_dirs_ += is_dir ? 1 : 0;
        ids.push_back(file_id{e.id()});
    }
    if (offer.last()) {
        last_seen_ = true;
    }
    return {};
}

std::error_code receiver_machine::claim_path(const entry_info& e) {
    // In order, each after the one before: no path twice, and what lies in a folder comes
    // right after it. So the offered folders the path may lie in are the ones the entry
    // before lies in (or that entry itself): a chain as deep as the tree, not a set of
    // every path.
    if (paths_.size() > 0) {
        std::string_view before = paths_.path(paths_.size() - 1);
        if (!wire_path_less(before, e.path)) {
            return before == e.path ? protocol_errc::duplicate_path : protocol_errc::path_out_of_order;
        }
    }
    std::size_t around = chain_.size();  // how many of the chain hold this path
    while (around > 0 && !wire_path_within(e.path, paths_.path(chain_[around - 1]))) {
        --around;
    }
    if (around > 0 && !paths_.is_folder(chain_[around - 1])) {
        return protocol_errc::duplicate_path;  // a file or symlink offered as its folder
    }
    chain_.resize(around);
    chain_.push_back(static_cast<std::uint32_t>(paths_.size()));
    paths_.add(e.path, e.is_dir);
    return {};
}

void offered_paths::add(std::string_view path, bool folder) {
    if (block_bytes - used_ < path.size() + 1) {
        blocks_.push_back(std::make_unique_for_overwrite<char[]>(block_bytes));
        used_ = 0;
    }
    char* at = &blocks_.back()[used_];
    std::memcpy(at, path.data(), path.size());
    at[path.size()] = '\0';
    starts_.push_back(((blocks_.size() - 1) * block_bytes + used_) | (folder ? folder_bit : 0));
    used_ += path.size() + 1;
}

offered_paths::kind offered_paths::find(std::string_view path) const {
    // By hand: no iterators to halve over, and clang 14 cannot take libstdc++ 12's
    // std::views::iota as a range.
    std::size_t lo = 0;
    std::size_t hi = size();
    while (lo < hi) {
        std::size_t mid = lo + (hi - lo) / 2;
        if (wire_path_less(this->path(mid), path)) {
            lo = mid + 1;
        } else {
            hi = mid;
        }
    }
    if (lo == size()) {
        return kind::none;
    }
    if (this->path(lo) == path) {
        return is_folder(lo) ? kind::folder : kind::file;
    }
    // What lies in `path`, if anything was offered there, comes right after it.
    return wire_path_within(this->path(lo), path) ? kind::folder : kind::none;
}

bool receiver_machine::have_is_basis(const decision& d) {
    if (d.kind != wire::ACCEPT_PARTIAL || !d.have || !d.sums || d.have_digests.size() != d.have->size()) {
        return false;
    }
    for (std::uint64_t c = 0; c < d.have->size(); ++c) {
        if (d.have->test(c) && d.sums->block_digest(c) != d.have_digests[c]) {
            return false;
        }
    }
    return true;
}

std::vector<std::pair<wire::HaveDigests, std::string>> receiver_machine::have_digest_frames(const decision& d) {
    std::vector<std::pair<wire::HaveDigests, std::string>> out;
    if (d.kind != wire::ACCEPT_PARTIAL || !d.have || d.have_digests.size() != d.have->size() || have_is_basis(d)) {
        return out;
    }
    std::uint32_t ordinal = 0;
    for (std::uint64_t c = 0; c < d.have->size(); ++c) {
        if (!d.have->test(c)) {
            continue;
        }
        if (out.empty() || out.back().second.size() >= 16 * std::size_t{max_have_digests_per_frame}) {
            wire::HaveDigests h;
            h.set_file_id(d.id.value);
            h.set_first(ordinal);
            out.emplace_back(std::move(h), std::string());
            out.back().second.reserve(16 * std::min<std::uint64_t>(max_have_digests_per_frame, d.have->size()));
        }
        put_digest(out.back().second, d.have_digests[c]);
        ++ordinal;
    }
    return out;
}

std::vector<std::pair<wire::BasisSums, std::string>> receiver_machine::basis_sum_frames(const decision& d) {
    std::vector<std::pair<wire::BasisSums, std::string>> out;
    if (d.kind != wire::ACCEPT_PARTIAL || !d.sums) {
        return out;
    }
    const basis_sums& b = *d.sums;
    auto frame = [&](std::uint32_t first) {
        wire::BasisSums h;
        h.set_file_id(d.id.value);
        h.set_first(first);
        h.set_size(b.size);
        h.set_tail_lo(b.tail.lo);
        h.set_tail_hi(b.tail.hi);
        out.emplace_back(std::move(h), std::string());
    };
    for (std::uint32_t i = 0; i < b.weak.size(); ++i) {
        if (out.empty() || out.back().second.size() >= 20 * std::size_t{max_basis_sums_per_frame}) {
            frame(i);
        }
        put_digest(out.back().second, b.strong[i]);
        put_le(out.back().second, b.weak[i], 4);
    }
    if (out.empty() && b.tail_length() > 0) {
        frame(0);  // no full block: the tail alone
    }
    return out;
}

std::vector<std::pair<wire::SmallSums, std::string>> receiver_machine::small_sum_frames(
    const std::vector<decision>& decisions) {
    static_assert(max_small_blocks * 8 <= chunk_size);  // one file's sums fit a frame of the pools' buffers
    std::vector<std::pair<wire::SmallSums, std::string>> out;
    for (const decision& d : decisions) {
        // A changed small file accepted whole, or a larger one's older version (its
        // BasisSums) in small blocks too.
        const small_sums* sums = d.kind == wire::ACCEPT_ALL && d.small                      ? &*d.small
                                 : d.kind == wire::ACCEPT_PARTIAL && d.sums && d.sums->fine ? d.sums->fine.get()
                                                                                            : nullptr;
        if (sums == nullptr || sums->blocks.empty()) {
            continue;
        }
        if (out.empty() || out.back().second.size() + sums->blocks.size() * 8 > chunk_size) {
            out.emplace_back();
        }
        auto& [h, bytes] = out.back();
        h.add_file_ids(d.id.value);
        h.add_block_sizes(sums->block_size);
        h.add_blocks(static_cast<std::uint32_t>(sums->blocks.size()));
        put_small_sums(bytes, *sums);
    }
    return out;
}

void receiver_machine::forget() {
    while (!files_.empty() && files_.front().finished && !files_.front().data) {
        files_.pop_front();
        ++base_;
    }
}

wire::Accept receiver_machine::accept(const std::vector<decision>& decisions) {
    wire::Accept a;
    a.set_transfer_id(transfer_id_);
    // The entries whose answer is the plain one (unchanged here) are told by a bit each
    // (Accept.unchanged), not a FileAccept: most of a no-change sync's Accept.
    chunk_bitmap unchanged(decisions.size());
    bool any_unchanged = false;
    for (std::size_t pos = 0; pos < decisions.size(); ++pos) {
        const decision& d = decisions[pos];
        file_state& f = held(d.id);
        decided_files_ += f.decided ? 0 : 1;
        f.decided = true;
        wire::FileAccept* fa = a.add_files();
        fa->set_id(d.id.value);
        fa->set_action(d.action);  // a folder's: SYNC_CREATE when the receiver had none
        // A symlink is made (or found) by the receiver itself: always answered
        // ACCEPT_SKIP, with what the sync did to it.
        if (!f.info.is_file() || d.kind == wire::ACCEPT_SKIP) {
            fa->set_kind(f.info.is_dir ? wire::ACCEPT_ALL : wire::ACCEPT_SKIP);
            if (f.info.is_file() && d.action == wire::SYNC_CREATE) {
                fa->set_basis(d.basis);  // a dry run's: the file it would start from
            }
            if (d.action == wire::SYNC_FAILED) {
                ++(f.info.is_dir ? not_made_dirs_ : not_made_files_);
            } else if (!f.info.is_dir) {
                ++skipped_files_;
                skipped_bytes_ += f.info.size;
            }
            f.skip = true;
            f.finished = true;
            ++finished_files_;
            if (d.action == wire::SYNC_NONE && fa->basis().empty()) {
                a.mutable_files()->RemoveLast();
                unchanged.set(pos);
                any_unchanged = true;
            }
            continue;
        }
        f.data = std::make_unique<file_state::chunk_data>();
        came_[d.id.value] = true;
        file_state::chunk_data& fd = *f.data;
        fd.have = chunk_bitmap(f.chunks);
        fd.digests.assign(f.chunks, digest128{});
        f.implicit_done = f.chunks == 1;
        fa->set_kind(d.kind);
        if (d.kind == wire::ACCEPT_PARTIAL && d.have && d.have->size() == f.chunks &&
            d.have_digests.size() == f.chunks) {
            fd.have = *d.have;
            fd.claimed = *d.have;
            f.have_count = fd.have.count();
            fd.digests = d.have_digests;
            for (std::uint64_t c = 0; c < f.chunks; ++c) {
                kept_bytes_ += fd.have.test(c) ? chunk_length(f.info.size, c) : 0;
            }
            f.implicit_done = false;
            f.delta = d.sums.has_value();
            fa->set_have(fd.have.to_bytes());
            fa->set_basis(d.basis);
            fa->set_have_from_basis(have_is_basis(d));
        } else {
            fa->set_kind(wire::ACCEPT_ALL);
            if (d.same_as && f.chunks == 1) {
                f.same_as = d.same_as;
                std::string bytes;
                put_digest(bytes, *d.same_as);
                fa->set_same_as(std::move(bytes));
            }
            f.small_delta = d.small && !d.small->blocks.empty();  // (small_sum_frames)
        }
    }
    if (any_unchanged) {
        a.set_unchanged(unchanged.to_bytes());
    }
    return a;
}

std::error_code receiver_machine::on_chunk(const wire::Chunk& chunk, std::uint32_t payload_len) const {
    if (chunk.file_id() >= offered()) {
        return protocol_errc::unknown_file;
    }
    const file_state* state = live(file_id{chunk.file_id()});
    if (!state) {
        // Finished and forgotten: a file that came is confirmed again; no chunk ever
        // belonged to a folder, a link or a skipped file.
        return came_[chunk.file_id()] ? std::error_code{} : protocol_errc::unknown_file;
    }
    const file_state& f = *state;
    if (f.aborted) {
        return {};  // sent before the sender gave up on it: dropped
    }
    // A finished file's chunk is admitted (and dropped by the node, which confirms it
    // again): a chunk resent after its connection was lost with the ack on its way may
    // come after the file was made final from the first copy.
    if (!f.decided || f.skip || !f.info.is_file()) {
        return protocol_errc::unknown_file;
    }
    if (chunk.index() >= f.chunks || chunk.raw_len() != chunk_length(f.info.size, chunk.index())) {
        return protocol_errc::bad_chunk;
    }
    if (chunk.codec() == wire::CODEC_RAW) {
        if (payload_len != chunk.raw_len()) {
            return protocol_errc::payload_mismatch;
        }
    } else if (chunk.codec() == wire::CODEC_ZSTD ||
               (chunk.codec() == wire::CODEC_DELTA && (f.delta || f.small_delta))) {
        // A compressed or delta chunk is sent only when it is smaller than the raw bytes.
        if (payload_len == 0 || payload_len >= chunk.raw_len()) {
            return protocol_errc::payload_mismatch;
        }
    } else if (chunk.codec() == wire::CODEC_SAME && f.same_as) {
        // The bytes this side said it has: none travel, and the digest is the one it told.
        if (payload_len != 0) {
            return protocol_errc::payload_mismatch;
        }
        if (digest128{chunk.hash_lo(), chunk.hash_hi()} != *f.same_as) {
            return protocol_errc::bad_chunk;
        }
    } else {
        return protocol_errc::bad_chunk;
    }
    return {};
}

bool receiver_machine::on_chunk_written(file_id id, chunk_index i, digest128 digest) {
    file_state* state = live(id);
    if (!state || !state->data) {
        return false;  // not a file that comes (on_chunk refuses its chunks), or forgotten
    }
    file_state& f = *state;
    file_state::chunk_data& fd = *f.data;
    if (fd.have.test(i.value) && fd.digests[i.value] != digest) {
        if (!replaceable(id, i)) {
            return f.have_count == f.chunks;  // only a chunk offered when resuming is replaced, once
        }
        // A chunk it had with other bytes (resumed), replaced by the sender's.
        fd.claimed.reset(i.value);
        fd.digests[i.value] = digest;
        received_bytes_ += f.aborted ? 0 : chunk_length(f.info.size, i.value);
        kept_bytes_ -= chunk_length(f.info.size, i.value);
    } else if (!fd.have.test(i.value)) {
        fd.have.set(i.value);
        fd.digests[i.value] = digest;
        ++f.have_count;
        received_bytes_ += f.aborted ? 0 : chunk_length(f.info.size, i.value);
        if (f.implicit_done) {
            f.done_seen = true;
            f.sender_digest = file_digest(fd.digests);
        }
    }
    return f.have_count == f.chunks;
}

std::error_code receiver_machine::on_file_abort(const wire::FileAbort& abort) {
    if (abort.file_id() >= offered()) {
        return protocol_errc::unknown_file;
    }
    if (failed_here(file_id{abort.file_id()})) {
        return {};  // crossed this side's FileResult: given up on here already
    }
    file_state* state = live(file_id{abort.file_id()});
    if (!state) {
        return protocol_errc::unexpected_message;  // finished and forgotten
    }
    file_state& f = *state;
    // After its FileDone too (a chunk of it lost with its connection could not be read
    // again), but not once it is finished here: made final from what the sender read,
    // which it now says vanished or changed. That fails the transfer, and the next
    // attempt finds the file as SRC has it now (taking the abort as a crossing would
    // keep a copy the sender gave up on, and a pull would report it sent).
    if (!f.decided || f.skip || !f.info.is_file() || f.aborted || f.finished) {
        return protocol_errc::unexpected_message;
    }
    drop_received(f);
    return {};
}

bool receiver_machine::give_up(file_id id) {
    file_state* state = live(id);
    // (Released: done with, its chunk state gone; a file that comes has it until then.)
    if (!state || !state->decided || state->skip || !state->info.is_file() || state->aborted || !state->data) {
        return false;
    }
    if (failed_here_.size() <= id.value) {
        failed_here_.resize(id.value + 1);
    }
    failed_here_[id.value] = true;
    drop_received(*state);
    return true;
}

void receiver_machine::drop_received(file_state& f) {
    f.aborted = true;
    ++aborted_files_;
    if (f.data) {
        // What came of it is not the file: the one more pass sends it again, and counts it.
        // (`claimed` has bits only for a file accepted ACCEPT_PARTIAL.)
        const file_state::chunk_data& fd = *f.data;
        for (std::uint64_t c = 0; c < f.chunks; ++c) {
            if (fd.have.test(c) && !(c < fd.claimed.size() && fd.claimed.test(c))) {
                received_bytes_ -= chunk_length(f.info.size, c);
                discarded_bytes_ += chunk_length(f.info.size, c);
            }
        }
    }
    if (!f.finished) {
        f.finished = true;
        ++finished_files_;
    }
}

std::error_code receiver_machine::on_file_done(const wire::FileDone& done) {
    if (done.file_id() >= offered()) {
        return protocol_errc::unknown_file;
    }
    if (failed_here(file_id{done.file_id()})) {
        return {};  // sent before the sender heard that this side gave it up: dropped
    }
    file_state* state = live(file_id{done.file_id()});
    if (!state) {
        return protocol_errc::unexpected_message;  // finished and forgotten
    }
    file_state& f = *state;
    // (After a FileAbort no FileDone comes: the sender gave the file up. Refused whether
    // or not the file is forgotten by now, as it was only once it was.)
    if (!f.decided || f.skip || !f.info.is_file() || f.done_seen || f.implicit_done || f.aborted) {
        return protocol_errc::unexpected_message;
    }
    f.done_seen = true;
    f.sender_digest = {done.digest_lo(), done.digest_hi()};
    return {};
}

bool receiver_machine::ready(file_id id, bool& ok) const {
    const file_state* state = live(id);
    if (!state) {
        return false;
    }
    const file_state& f = *state;
    if (f.finished || !f.done_seen || f.have_count != f.chunks || !f.data) {
        return false;
    }
    ok = file_digest(f.data->digests) == f.sender_digest;
    return true;
}

digest128 receiver_machine::received_digest(file_id id) const { return file_digest(digests(id)); }

void receiver_machine::on_file_finished(file_id id) {
    file_state* state = live(id);
    if (!state) {
        return;
    }
    file_state& f = *state;
    if (!f.finished) {
        f.finished = true;
        ++finished_files_;
    }
}

std::string sync_excludes(const wire::SyncTarget& t, exclude_set& out) {
    if (exclude_bytes(t) > max_sync_exclude_bytes) {
        return "exclude patterns over " + std::to_string(max_sync_exclude_bytes) + " bytes in all";
    }
    for (const std::string& line : t.exclude()) {
        if (!out.add(line)) {
            return "bad exclude pattern \"" + line.substr(0, 100) + "\"";
        }
    }
    std::size_t bytes = 0;
    for (const std::string& path : t.keep()) {
        if (std::string refused = add_keep(path, bytes, out); !refused.empty()) {
            return refused;
        }
    }
    return {};
}

std::string add_keep(const std::string& path, std::size_t& bytes, exclude_set& out) {
    bytes += keep_entry_bytes(path);
    if (bytes > max_sync_keep_bytes) {
        return "paths to keep over " + std::to_string(max_sync_keep_bytes) + " bytes in all";
    }
    if (!out.keep(path)) {
        return "bad path to keep \"" + path.substr(0, 100) + "\"";
    }
    return {};
}

}  // namespace ferry
