// Tests of the sans-IO transfer state machines (sender_machine, receiver_machine) and of
// chunk_bitmap. A loopback wires a sender to a receiver with no I/O: messages are handed
// over directly and chunk payloads are deterministic bytes, so whole transfers (several
// Offer batches, chunks out of order, requeues, partial and skipped files) run in memory.
#include "protocol/transfer.hpp"

#include <gtest/gtest.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <functional>
#include <limits>
#include <optional>
#include <random>
#include <span>
#include <string>
#include <system_error>
#include <vector>

#include "ferry.pb.h"
#include "protocol/digest.hpp"
#include "protocol/errors.hpp"
#include "protocol/le_bytes.hpp"
#include "protocol/path.hpp"
#include "protocol/types.hpp"

namespace ferry {
namespace {

constexpr std::uint64_t test_transfer_id = 7;
constexpr std::int64_t test_mtime_ns = 1'700'000'000'123'456'789;

entry_info file_entry(std::string path, std::uint64_t size) {
    entry_info e;
    e.path = std::move(path);
    e.size = size;
    e.mode = 0644;
    e.mtime_ns = test_mtime_ns;
    return e;
}

// prefix + i, zero-padded: names in the offer order (wire_path_less) for ascending i.
std::string numbered(const std::string& prefix, std::uint32_t i) {
    char n[16];
    std::snprintf(n, sizeof(n), "%05u", i);
    return prefix + n;
}

entry_info dir_entry(std::string path) {
    entry_info e;
    e.path = std::move(path);
    e.is_dir = true;
    e.mode = 0755;
    e.mtime_ns = test_mtime_ns;
    return e;
}

// The bytes of chunk `i` of file `f`: deterministic, different for every chunk.
std::vector<std::uint8_t> chunk_payload(file_id f, chunk_index i, std::uint32_t len) {
    std::vector<std::uint8_t> out(len);
    std::uint32_t state = f.value * 2654435761u + i.value * 40503u + 1u;
    for (std::uint32_t j = 0; j < len; ++j) {
        state = state * 1664525u + 1013904223u;
        out[j] = static_cast<std::uint8_t>(state >> 24);
    }
    return out;
}

digest128 payload_digest(file_id f, chunk_index i, std::uint32_t len) { return hash_chunk(chunk_payload(f, i, len)); }

std::span<const std::uint8_t> as_bytes(const std::string& s) {
    return {reinterpret_cast<const std::uint8_t*>(s.data()), s.size()};
}

receiver_machine::decision accept_all(file_id id) {
    receiver_machine::decision d;
    d.id = id;
    return d;
}

// ACCEPT_PARTIAL of file `id` (of `size` bytes): the receiver has `chunks`, with the right
// bytes (their true digests).
receiver_machine::decision accept_partial(file_id id, std::uint64_t size, std::initializer_list<std::uint32_t> chunks) {
    receiver_machine::decision d = accept_all(id);
    d.kind = wire::ACCEPT_PARTIAL;
    d.have = chunk_bitmap(chunk_count(size));
    d.have_digests.resize(chunk_count(size));
    for (std::uint32_t i : chunks) {
        d.have->set(i);
        d.have_digests[i] = payload_digest(id, chunk_index{i}, chunk_length(size, i));
    }
    return d;
}

wire::Chunk chunk_header(file_id f, chunk_index i, std::uint32_t raw_len, digest128 d = {}) {
    wire::Chunk c;
    c.set_file_id(f.value);
    c.set_index(i.value);
    c.set_raw_len(raw_len);
    c.set_codec(wire::CODEC_RAW);
    c.set_hash_lo(d.lo);
    c.set_hash_hi(d.hi);
    return c;
}

wire::TransferResult transfer_result(bool ok, std::string error = {}) {
    wire::TransferResult r;
    r.set_transfer_id(test_transfer_id);
    r.set_ok(ok);
    r.set_error(std::move(error));
    return r;
}

wire::FileResult file_result(file_id f, bool ok, std::string error = {}) {
    wire::FileResult r;
    r.set_file_id(f.value);
    r.set_ok(ok);
    r.set_error(std::move(error));
    return r;
}

// What a node does before any Accept can come: its Offer batches go out (as many as it
// may send before an answer).
void offer_all(sender_machine& s) {
    while (s.next_offer()) {
    }
}

// A chunk the sender read, hashed and put on the wire.
struct in_flight {
    chunk_ref ref;
    wire::Chunk header;
    std::vector<std::uint8_t> payload;
};

// A sender and a receiver joined by direct calls, doing what both nodes would do with
// each message and completion.
class loopback {
public:
    using decide_fn = std::function<receiver_machine::decision(file_id)>;

    explicit loopback(std::vector<entry_info> entries, transfer_options options = {}, bool complete = true)
        : sender_(test_transfer_id, std::move(entries), options, complete), file_dones_(sender_.total_files(), 0) {}

    // More entries for a sender that was not given them all (a streamed scan), and the end.
    void append(std::vector<entry_info> more) {
        sender_.append(std::move(more));
        file_dones_.resize(sender_.total_files(), 0);
    }
    void complete() { sender_.complete(); }

    sender_machine& sender() { return sender_; }
    receiver_machine& receiver() { return receiver_; }
    int file_dones(file_id f) const { return file_dones_.at(f.value); }
    std::uint64_t file_results() const { return file_results_; }

    // Offer → Accept for every batch, in order. FileDones the Accept releases at once
    // (empty files) go straight to the receiver.
    void exchange_offers(const decide_fn& decide = {}) {
        ASSERT_GT(sender_.offer_count(), offered_);
        for (; offered_ < sender_.offer_count(); ++offered_) {
            std::optional<wire::Offer> next = sender_.next_offer();  // (each answered before the next)
            ASSERT_TRUE(next);
            wire::Offer offer = std::move(*next);
            std::vector<file_id> ids;
            ASSERT_EQ(receiver_.on_offer(offer, ids), std::error_code{});
            ASSERT_EQ(ids.size(), static_cast<std::size_t>(offer.entries_size()));
            std::vector<receiver_machine::decision> decisions;
            for (file_id id : ids) {
                decisions.push_back(decide ? decide(id) : accept_all(id));
            }
            wire::Accept accept = receiver_.accept(decisions);
            for (const receiver_machine::decision& d : decisions) {
                for (const auto& [have, bytes] : receiver_machine::have_digest_frames(d)) {
                    ASSERT_EQ(sender_.on_have_digests(have, as_bytes(bytes)), std::error_code{});
                }
            }
            std::vector<wire::FileDone> done_now;
            ASSERT_EQ(sender_.on_accept(accept, done_now), std::error_code{});
            for (const wire::FileDone& d : done_now) {
                deliver_done(d);
            }
        }
        EXPECT_EQ(sender_.all_accepted(), sender_.is_complete());
        EXPECT_EQ(receiver_.all_offered(), sender_.is_complete());
    }

    // The sender's reader: reads and hashes the chunk, sends the FileDone it releases.
    // Returns the chunk frame unless the receiver already has the chunk.
    std::optional<in_flight> read_and_hash(const chunk_ref& ref) {
        EXPECT_EQ(ref.offset, std::uint64_t{ref.index.value} * chunk_size);
        EXPECT_EQ(ref.length, chunk_length(sender_.entry(ref.file).size, ref.index.value));
        in_flight c;
        c.ref = ref;
        c.payload = chunk_payload(ref.file, ref.index, ref.length);
        digest128 d = hash_chunk(c.payload);
        if (std::optional<wire::FileDone> done = sender_.on_chunk_hashed(ref, d)) {
            deliver_done(*done);
        }
        if (!ref.send) {
            return std::nullopt;
        }
        c.header = chunk_header(ref.file, ref.index, ref.length, d);
        return c;
    }

    // Takes every chunk the sender has now; returns those to put on the wire.
    std::vector<in_flight> pull_chunks() {
        std::vector<in_flight> out;
        while (std::optional<chunk_ref> ref = sender_.next_chunk()) {
            if (std::optional<in_flight> c = read_and_hash(*ref)) {
                out.push_back(std::move(*c));
            }
        }
        return out;
    }

    // The receiver's handling of a chunk frame: admission, hash check, write, ack.
    void deliver(const in_flight& c) {
        ASSERT_EQ(receiver_.on_chunk(c.header, static_cast<std::uint32_t>(c.payload.size())), std::error_code{});
        digest128 d = hash_chunk(c.payload);
        ASSERT_EQ(d, (digest128{c.header.hash_lo(), c.header.hash_hi()}));
        file_id f{c.header.file_id()};
        chunk_index i{c.header.index()};
        if (!receiver_.holds(f, i, d)) {
            receiver_.on_chunk_written(f, i, d);
        }
        std::error_code ec;
        std::optional<wire::FileDone> released;
        sender_.on_ack(chunk_key(f, i), ec, &released);
        ASSERT_FALSE(ec) << ec.message();
        finish_if_ready(f);
        if (released) {
            deliver_done(*released);
        }
    }

    void deliver_done(const wire::FileDone& done) {
        ++file_dones_.at(done.file_id());
        ASSERT_EQ(receiver_.on_file_done(done), std::error_code{});
        finish_if_ready(file_id{done.file_id()});
    }

    // The receiver's TransferResult once every file is finished.
    std::error_code finish() {
        EXPECT_TRUE(receiver_.all_finished());
        wire::TransferResult r = transfer_result(true);
        r.set_files(receiver_.total_files());
        r.set_bytes(receiver_.received_bytes());
        return sender_.on_transfer_result(r);
    }

    // A whole transfer; chunk frames are delivered in a shuffled order when `seed` is set.
    void run(const decide_fn& decide = {}, std::optional<unsigned> seed = std::nullopt) {
        exchange_offers(decide);
        if (::testing::Test::HasFatalFailure()) {
            return;
        }
        std::vector<in_flight> chunks = pull_chunks();
        if (seed) {
            std::mt19937 rng(*seed);
            std::shuffle(chunks.begin(), chunks.end(), rng);
        }
        for (const in_flight& c : chunks) {
            deliver(c);
            if (::testing::Test::HasFatalFailure()) {
                return;
            }
        }
        EXPECT_EQ(finish(), std::error_code{}) << sender_.failure();
    }

private:
    void finish_if_ready(file_id f) {
        bool ok = false;
        if (!receiver_.ready(f, ok)) {
            return;
        }
        EXPECT_TRUE(ok) << "digest mismatch for " << receiver_.entry(f).path;
        receiver_.on_file_finished(f);
        ++file_results_;
        ASSERT_EQ(sender_.on_file_result(file_result(f, ok)), std::error_code{});
    }

    sender_machine sender_;
    receiver_machine receiver_;
    std::size_t offered_ = 0;  // Offer batches exchanged so far
    std::vector<int> file_dones_;
    std::uint64_t file_results_ = 0;
};

// An Offer as a (possibly hostile) sender would write it.
wire::Offer raw_offer(const std::vector<std::pair<std::uint32_t, std::string>>& entries, bool last = true,
                      std::uint64_t total_files = 0) {
    wire::Offer o;
    o.set_transfer_id(test_transfer_id);
    o.set_last(last);
    o.set_total_files(total_files != 0 ? total_files : entries.size());
    for (const auto& [id, path] : entries) {
        wire::Entry* e = o.add_entries();
        e->set_id(id);
        e->set_path(path);
        e->set_kind(wire::ENTRY_FILE);
        e->set_size(10);
        e->set_mode(0644);
    }
    return o;
}

std::error_code offer_error(receiver_machine& r, const wire::Offer& o) {
    std::vector<file_id> ids;
    return r.on_offer(o, ids);
}

// ---------------------------------------------------------------------------------------
// chunk_bitmap

TEST(Segments, VectorsTakenWholeAreIndexedAsOneAndNeverMove) {
    std::vector<int> first{0, 1, 2};
    const int* kept = first.data();
    segments<int> s(std::move(first));
    EXPECT_EQ(&s[0], kept);  // the vector handed over is the storage, not copied
    s.append({});
    s.append({3});
    s.append({4, 5, 6, 7});
    ASSERT_EQ(s.size(), 8u);
    for (std::size_t i = 0; i < s.size(); ++i) {
        EXPECT_EQ(s[i], static_cast<int>(i));
        EXPECT_EQ(s.at(i), static_cast<int>(i));
    }
    const int* third = &s[3];
    for (int i = 0; i < 100; ++i) {
        s.append({8 + i});
    }
    EXPECT_EQ(&s[3], third);
    EXPECT_EQ(s[107], 107);
    EXPECT_THROW(s.at(108), std::out_of_range);
    EXPECT_TRUE(segments<int>().empty());

    // Whole vectors go, those before the index given only; their indexes stay taken.
    s.drop_before(4);  // {0, 1, 2} and {3}; {4..7} holds 4
    EXPECT_EQ(s.first_held(), 4u);
    EXPECT_THROW(s.at(3), std::out_of_range);
    EXPECT_EQ(s.at(4), 4);
    EXPECT_EQ(&s[8], &s.at(8));
    s.drop_before(6);
    EXPECT_EQ(s.first_held(), 4u);
    s.drop_before(108);
    EXPECT_EQ(s.first_held(), 108u);
    EXPECT_EQ(s.size(), 108u);
    EXPECT_THROW(s.at(107), std::out_of_range);
    s.append({108});
    EXPECT_EQ(s.at(108), 108);
}

TEST(ChunkBitmap, SetTestCount) {
    chunk_bitmap b(20);
    EXPECT_EQ(b.size(), 20u);
    EXPECT_EQ(b.count(), 0u);
    EXPECT_EQ(b.to_bytes().size(), 3u);
    b.set(0);
    b.set(7);
    b.set(8);
    b.set(19);
    b.set(8);  // setting twice changes nothing
    EXPECT_EQ(b.count(), 4u);
    for (std::uint64_t i = 0; i < 20; ++i) {
        EXPECT_EQ(b.test(i), i == 0 || i == 7 || i == 8 || i == 19) << i;
    }
    // LSB first: bit 0 and bit 7 in byte 0, bit 8 in byte 1, bit 19 is bit 3 of byte 2.
    EXPECT_EQ(b.to_bytes(), std::string("\x81\x01\x08", 3));
}

// Up to 64 bits are kept inline, more on the heap: both behave the same, copies included.
TEST(ChunkBitmap, InlineAndHeapBitmapsAgree) {
    for (std::uint64_t bits : {1u, 63u, 64u, 65u, 200u}) {
        chunk_bitmap b(bits);
        b.set(0);
        b.set(bits - 1);
        chunk_bitmap copy = b;
        copy.set(bits / 2);
        EXPECT_EQ(b.count(), bits == 1 ? 1u : 2u) << bits;
        EXPECT_FALSE(b.test(bits / 2) && bits / 2 != 0 && bits / 2 != bits - 1) << bits;
        EXPECT_TRUE(copy.test(bits / 2)) << bits;
        std::string bytes = copy.to_bytes();
        EXPECT_EQ(bytes.size(), (bits + 7) / 8) << bits;
        std::optional<chunk_bitmap> back = chunk_bitmap::from_bytes(bits, bytes);
        ASSERT_TRUE(back) << bits;
        EXPECT_EQ(back->count(), copy.count()) << bits;
        EXPECT_EQ(back->to_bytes(), bytes) << bits;
        copy.reset(0);
        EXPECT_FALSE(copy.test(0)) << bits;
        EXPECT_TRUE(b.test(0)) << bits;
    }
}

TEST(ChunkBitmap, FromBytesRoundTrip) {
    chunk_bitmap b(13);
    b.set(2);
    b.set(12);
    std::optional<chunk_bitmap> back = chunk_bitmap::from_bytes(13, b.to_bytes());
    ASSERT_TRUE(back);
    EXPECT_EQ(back->size(), 13u);
    EXPECT_EQ(back->count(), 2u);
    EXPECT_TRUE(back->test(2));
    EXPECT_TRUE(back->test(12));
    EXPECT_FALSE(back->test(3));

    std::optional<chunk_bitmap> empty = chunk_bitmap::from_bytes(0, "");
    ASSERT_TRUE(empty);
    EXPECT_EQ(empty->size(), 0u);
    EXPECT_EQ(empty->count(), 0u);
}

TEST(ChunkBitmap, FromBytesRejectsWrongLength) {
    EXPECT_FALSE(chunk_bitmap::from_bytes(9, std::string(1, '\xff')));
    EXPECT_FALSE(chunk_bitmap::from_bytes(9, std::string(3, '\xff')));
    EXPECT_FALSE(chunk_bitmap::from_bytes(8, ""));
    EXPECT_FALSE(chunk_bitmap::from_bytes(0, std::string(1, '\0')));
    EXPECT_TRUE(chunk_bitmap::from_bytes(9, std::string(2, '\0')));
}

TEST(ChunkBitmap, FromBytesIgnoresPaddingBits) {
    // A peer may set the unused high bits of the last byte; they must not be counted.
    std::optional<chunk_bitmap> b = chunk_bitmap::from_bytes(3, std::string(1, '\xff'));
    ASSERT_TRUE(b);
    EXPECT_EQ(b->count(), 3u);
    EXPECT_EQ(b->to_bytes(), std::string(1, '\x07'));
}

// ---------------------------------------------------------------------------------------
// Whole transfers in memory

std::vector<entry_info> mixed_entries() {
    return {
        dir_entry("d"),
        file_entry("d/a-empty", 0),
        file_entry("d/b-one", 1),
        file_entry("d/c-exact", chunk_size),
        file_entry("d/d-plus", chunk_size + 1),
        file_entry("d/e-multi", 3 * std::uint64_t{chunk_size} + 100),
        dir_entry("d/sub"),
        file_entry("d/sub/small", 1000),
        file_entry("top", 5 * std::uint64_t{chunk_size}),
    };
}

TEST(TransferLoopback, DeliversEveryEntryInOrder) {
    std::vector<entry_info> entries = mixed_entries();
    loopback lb(entries);
    std::uint64_t expected_bytes = 0;
    for (const entry_info& e : entries) {
        expected_bytes += e.is_dir ? 0 : e.size;
    }
    EXPECT_EQ(lb.sender().total_bytes(), expected_bytes);
    EXPECT_EQ(lb.sender().total_files(), entries.size());

    lb.run();

    EXPECT_TRUE(lb.sender().finished());
    EXPECT_EQ(lb.sender().confirmed_bytes(), expected_bytes);
    EXPECT_EQ(lb.sender().files_done(), entries.size());
    EXPECT_EQ(lb.sender().skipped_bytes(), 0u);
    EXPECT_TRUE(lb.sender().failure().empty());
    EXPECT_TRUE(lb.receiver().all_finished());
    EXPECT_EQ(lb.receiver().total_bytes(), expected_bytes);
    EXPECT_EQ(lb.receiver().received_bytes(), expected_bytes);
    EXPECT_EQ(lb.receiver().total_files(), entries.size());
    // A FileResult for every regular file (empty ones included), none for directories;
    // exactly one FileDone per regular file, except a file of exactly one chunk, whose
    // Chunk frame is the whole file.
    EXPECT_EQ(lb.file_results(), 7u);
    for (std::uint32_t i = 0; i < entries.size(); ++i) {
        bool one_chunk = !entries[i].is_dir && chunk_count(entries[i].size) == 1;
        EXPECT_EQ(lb.file_dones(file_id{i}), entries[i].is_dir || one_chunk ? 0 : 1) << entries[i].path;
        EXPECT_EQ(lb.receiver().entry(file_id{i}).path, entries[i].path);
        EXPECT_EQ(lb.receiver().entry(file_id{i}).is_dir, entries[i].is_dir);
        EXPECT_EQ(lb.receiver().entry(file_id{i}).mtime_ns, test_mtime_ns);
    }
}

TEST(TransferLoopback, ChunkCountsAndLengthsAtSizeBoundaries) {
    std::vector<entry_info> entries = mixed_entries();
    loopback lb(entries);
    lb.exchange_offers();
    std::vector<std::uint64_t> chunks(entries.size(), 0);
    std::vector<std::uint64_t> bytes(entries.size(), 0);
    for (const in_flight& c : lb.pull_chunks()) {
        ++chunks[c.ref.file.value];
        bytes[c.ref.file.value] += c.ref.length;
        EXPECT_GT(c.ref.length, 0u);
        EXPECT_LE(c.ref.length, chunk_size);
    }
    EXPECT_EQ(chunks, (std::vector<std::uint64_t>{0, 0, 1, 1, 2, 4, 0, 1, 5}));
    for (std::uint32_t i = 0; i < entries.size(); ++i) {
        EXPECT_EQ(bytes[i], entries[i].is_dir ? 0 : entries[i].size) << entries[i].path;
    }
}

TEST(TransferLoopback, ChunksOutOfOrder) {
    for (unsigned seed : {1u, 2u, 3u}) {
        std::vector<entry_info> entries = mixed_entries();
        loopback lb(entries);
        lb.run({}, seed);
        EXPECT_TRUE(lb.sender().finished()) << "seed " << seed;
        EXPECT_EQ(lb.sender().confirmed_bytes(), lb.sender().total_bytes()) << "seed " << seed;
        EXPECT_EQ(lb.sender().files_done(), entries.size()) << "seed " << seed;
    }
}

TEST(TransferLoopback, ManyOfferBatchesOutOfOrder) {
    std::vector<entry_info> entries;
    entries.push_back(dir_entry(std::string(200, 'd')));
    for (std::uint32_t i = 1; i < 700; ++i) {
        std::string path = numbered(std::string(200, 'd') + "/", i) + std::string(40, 'x');
        std::uint64_t size = i % 4 == 0 ? 0 : i * 13;
        if (i % 97 == 0) {
            size = 2 * std::uint64_t{chunk_size} + i;
        }
        entries.push_back(file_entry(path, size));
    }
    loopback lb(entries);

    std::vector<wire::Offer> offers = lb.sender().make_offers();
    ASSERT_GT(offers.size(), 1u);
    std::uint32_t next_id = 0;
    for (std::size_t b = 0; b < offers.size(); ++b) {
        const wire::Offer& o = offers[b];
        EXPECT_LE(o.ByteSizeLong(), offer_batch_bytes) << "batch " << b;
        EXPECT_GT(o.entries_size(), 0) << "batch " << b;
        EXPECT_EQ(o.last(), b + 1 == offers.size()) << "batch " << b;
        EXPECT_EQ(o.transfer_id(), test_transfer_id);
        EXPECT_EQ(o.total_files(), entries.size());
        EXPECT_EQ(o.total_bytes(), lb.sender().total_bytes());
        for (const wire::Entry& e : o.entries()) {
            EXPECT_EQ(e.id(), next_id);
            EXPECT_EQ(e.path(), entries[next_id].path);
            ++next_id;
        }
    }
    EXPECT_EQ(next_id, entries.size());

    lb.run({}, 42);
    EXPECT_TRUE(lb.sender().finished());
    EXPECT_EQ(lb.sender().confirmed_bytes(), lb.sender().total_bytes());
    EXPECT_EQ(lb.sender().files_done(), entries.size());
    EXPECT_EQ(lb.receiver().received_bytes(), lb.sender().total_bytes());
    EXPECT_EQ(lb.receiver().total_files(), entries.size());
}

// `ferry send` offers a tree while it scans it: entries come in parts, each part's files
// move before the next part is there, and only the batch sealed by complete() is `last`.
TEST(TransferLoopback, EntriesAppendedWhileTheFirstOnesMove) {
    std::vector<entry_info> all;
    all.push_back(dir_entry("t"));
    for (std::uint32_t i = 1; i < 400; ++i) {
        all.push_back(file_entry(numbered("t/f", i), i % 5 == 0 ? 0 : 100 + i));
    }
    all.push_back(file_entry("t/z-big", 3 * std::uint64_t{chunk_size} + 7));
    std::vector<entry_info> first(all.begin(), all.begin() + 3);
    loopback lb(first, {}, false);
    EXPECT_FALSE(lb.sender().is_complete());
    ASSERT_EQ(lb.sender().offer_count(), 1u) << "the first part goes out at once, however small";
    EXPECT_FALSE(lb.sender().make_offer(0).last());
    lb.exchange_offers();
    for (const in_flight& c : lb.pull_chunks()) {
        lb.deliver(c);
    }
    EXPECT_EQ(lb.sender().files_done(), 3u) << "the first part's files are done before the rest is scanned";
    EXPECT_FALSE(lb.sender().all_accepted());

    // A part too small for an Offer of its own waits for the next.
    lb.append({all[3]});
    EXPECT_EQ(lb.sender().offer_count(), 1u);
    std::size_t at = 4;
    std::size_t offered = 1;
    for (std::size_t part : {150u, 1u, 200u}) {
        lb.append(std::vector<entry_info>(all.begin() + at, all.begin() + at + part));
        at += part;
        if (lb.sender().offer_count() > offered) {
            offered = lb.sender().offer_count();
            lb.exchange_offers();
            for (const in_flight& c : lb.pull_chunks()) {
                lb.deliver(c);
            }
        }
    }
    lb.append(std::vector<entry_info>(all.begin() + at, all.end()));
    EXPECT_EQ(lb.sender().total_files(), all.size());
    EXPECT_NE(lb.sender().on_transfer_result(transfer_result(true)), std::error_code{})
        << "a result before the scan's end is refused";
    EXPECT_FALSE(lb.sender().finished());
    lb.complete();
    EXPECT_TRUE(lb.sender().make_offer(lb.sender().offer_count() - 1).last());
    for (std::size_t b = 0; b + 1 < lb.sender().offer_count(); ++b) {
        EXPECT_FALSE(lb.sender().make_offer(b).last()) << b;
        EXPECT_LE(lb.sender().make_offer(b).ByteSizeLong(), offer_batch_bytes) << b;
    }
    lb.exchange_offers();
    for (const in_flight& c : lb.pull_chunks()) {
        lb.deliver(c);
    }
    EXPECT_EQ(lb.finish(), std::error_code{}) << lb.sender().failure();
    EXPECT_TRUE(lb.sender().finished());
    EXPECT_EQ(lb.sender().files_done(), all.size());
    EXPECT_EQ(lb.receiver().total_files(), all.size());
    EXPECT_EQ(lb.sender().confirmed_bytes(), lb.sender().total_bytes());
    // (The receiver forgets entries once they are finished; their paths stay.)
    ASSERT_EQ(lb.receiver().paths().size(), all.size());
    for (std::uint32_t i = 0; i < all.size(); ++i) {
        EXPECT_EQ(lb.receiver().paths().path(i), all[i].path);
        EXPECT_EQ(lb.receiver().paths().is_folder(i), all[i].is_dir);
    }
}

// A file given up on (FileAbort) is finished but keeps its chunk state, and so holds the
// entries after it, until the node releases it too.
TEST(ReceiverMachine, AFileGivenUpOnIsForgottenOnceReleased) {
    receiver_machine r;
    std::vector<file_id> ids;
    ASSERT_EQ(r.on_offer(raw_offer({{0, "a"}}, false, 2000), ids), std::error_code{});
    receiver_machine::decision d = accept_all(file_id{0});
    r.accept({d});
    wire::FileAbort abort;
    abort.set_file_id(0);
    ASSERT_EQ(r.on_file_abort(abort), std::error_code{});
    for (std::uint32_t b = 0; b < 4; ++b) {
        std::vector<std::pair<std::uint32_t, std::string>> entries;
        for (std::uint32_t id = 1 + b * 100; id < 1 + (b + 1) * 100; ++id) {
            entries.emplace_back(id, numbered("b", id));
        }
        ASSERT_EQ(r.on_offer(raw_offer(entries, b == 3, 2000), ids), std::error_code{});
        std::vector<receiver_machine::decision> skip;
        for (file_id id : ids) {
            skip.push_back(accept_all(id));
            skip.back().kind = wire::ACCEPT_SKIP;
        }
        r.accept(skip);
    }
    EXPECT_TRUE(r.all_finished());
    EXPECT_EQ(r.held_entries(), 401u);
    EXPECT_TRUE(r.aborted(file_id{0}));
    r.release(file_id{0});
    EXPECT_EQ(r.held_entries(), 0u);
    EXPECT_EQ(r.aborted_files(), 1u);
}

// Paths of any length up to max_path_bytes, across the blocks they are kept in.
TEST(ReceiverMachine, OfferedPathsSpanBlocks) {
    offered_paths p;
    std::vector<std::string> all;
    for (std::uint32_t i = 0; i < 600; ++i) {
        std::string path = numbered("d", i) + "/" + std::string(max_path_bytes - 7, 'x');
        ASSERT_EQ(path.size(), max_path_bytes);
        all.push_back(path);
        p.add(path, false);
    }
    p.add("e", true);
    p.add("e/f", false);
    ASSERT_EQ(p.size(), 602u);
    for (std::uint32_t i = 0; i < 600; ++i) {
        ASSERT_EQ(p.path(i), all[i]) << i;
        EXPECT_EQ(p.find(all[i]), offered_paths::kind::file);
        EXPECT_EQ(p.find(numbered("d", i)), offered_paths::kind::folder);  // what it lies in
    }
    EXPECT_EQ(p.find("e"), offered_paths::kind::folder);
    EXPECT_TRUE(p.is_folder(600));
    EXPECT_EQ(p.find("e/f"), offered_paths::kind::file);
    EXPECT_EQ(p.find("e/g"), offered_paths::kind::none);
    EXPECT_EQ(p.find("d"), offered_paths::kind::none);
}

// The sender keeps at most max_offers_ahead batches unanswered: the receiver holds the
// entries of every batch it has not answered yet.
TEST(TransferLoopback, OfferBatchesGoAsTheReceiverAnswersThem) {
    std::vector<entry_info> entries;
    for (std::uint32_t i = 0; i < 30000; ++i) {
        entries.push_back(file_entry(numbered("folder-with-a-name/file-with-a-longer-name-", i), 10));
    }
    sender_machine sender(test_transfer_id, entries, {});
    receiver_machine receiver;
    const std::size_t ahead = sender_machine::max_offers_ahead;
    ASSERT_GT(sender.offer_count(), ahead + 2);
    std::deque<std::vector<file_id>> out;  // sent and taken by the receiver, not answered
    std::size_t largest = 0;  // entries in a batch
    auto drain = [&] {
        while (std::optional<wire::Offer> o = sender.next_offer()) {
            std::vector<file_id> ids;
            ASSERT_EQ(receiver.on_offer(*o, ids), std::error_code{});
            largest = std::max(largest, ids.size());
            out.push_back(std::move(ids));
            // It holds the entries of the batches it has not answered, and not many more.
            EXPECT_LE(receiver.held_entries(), (ahead + 1) * largest);
        }
    };
    auto answer_one = [&] {
        std::vector<file_id> ids = std::move(out.front());
        out.pop_front();
        std::vector<receiver_machine::decision> decisions;
        for (file_id id : ids) {
            decisions.push_back(accept_all(id));
            decisions.back().kind = wire::ACCEPT_SKIP;
        }
        std::vector<wire::FileDone> done_now;
        wire::Accept accept = receiver.accept(decisions);
        ASSERT_EQ(sender.on_accept(accept, done_now), std::error_code{});
    };
    drain();
    EXPECT_EQ(out.size(), ahead);
    EXPECT_EQ(sender.offers_sent(), ahead);
    EXPECT_GE(receiver.held_entries(), ahead * (largest / 2));  // unanswered: held
    answer_one();
    drain();
    EXPECT_EQ(out.size(), ahead);  // one answered, one more out
    EXPECT_EQ(sender.offers_sent(), ahead + 1);
    while (!out.empty()) {
        answer_one();
        drain();
        EXPECT_LE(out.size(), ahead);
    }
    EXPECT_EQ(sender.offers_sent(), sender.offer_count());
    EXPECT_TRUE(sender.all_accepted());
    EXPECT_EQ(sender.held_states(), 0u);  // every file skipped: done with at its Accept
    EXPECT_TRUE(receiver.all_finished());
    EXPECT_EQ(receiver.total_files(), entries.size());
    // (Skipped entries are forgotten at the next batch: the last batches' stay.)
    EXPECT_LE(receiver.held_entries(), (ahead + 1) * largest);
}

// The sender holds a file's state from its batch's Accept until it is released and every
// file before it is too; a late duplicate ack of a forgotten file is ignored, a requeue
// of it dropped, a second result refused.
TEST(TransferLoopback, TheSenderForgetsTheStatesOfFilesDoneWith) {
    loopback lb({dir_entry("d"), file_entry("d/a", 2 * std::uint64_t{chunk_size} + 1), file_entry("d/b", 7),
                 file_entry("d/c", 0)});
    EXPECT_EQ(lb.sender().held_states(), 0u);  // nothing accepted yet
    lb.run();
    ASSERT_FALSE(::testing::Test::HasFatalFailure());
    EXPECT_TRUE(lb.sender().finished());
    EXPECT_EQ(lb.sender().held_states(), 3u);  // the folder is done with; the files wait for release
    lb.sender().release(file_id{2});
    EXPECT_EQ(lb.sender().held_states(), 3u);  // d/a before it is not released yet
    lb.sender().release(file_id{1});
    EXPECT_EQ(lb.sender().held_states(), 1u);
    lb.sender().release(file_id{3});
    EXPECT_EQ(lb.sender().held_states(), 0u);

    std::error_code ec;
    EXPECT_EQ(lb.sender().on_ack(chunk_key(file_id{1}, chunk_index{1}), ec), 0u);
    EXPECT_FALSE(ec);
    lb.sender().on_ack(chunk_key(file_id{1}, chunk_index{3}), ec);  // beyond its chunks
    EXPECT_EQ(ec, protocol_errc::unknown_file);
    ec = {};
    lb.sender().on_ack(chunk_key(file_id{0}, chunk_index{0}), ec);  // a folder has none
    EXPECT_EQ(ec, protocol_errc::unknown_file);
    chunk_ref ref;
    ref.file = file_id{1};
    ref.index = chunk_index{0};
    EXPECT_FALSE(lb.sender().requeue(ref));
    EXPECT_FALSE(lb.sender().abort_file(file_id{1}, false, "late").has_value());
    EXPECT_EQ(lb.sender().on_file_result(file_result(file_id{1}, true)), protocol_errc::unexpected_message);
    EXPECT_EQ(lb.sender().basis(file_id{1}), "");
    EXPECT_FALSE(lb.sender().sent_nothing(file_id{1}));
    EXPECT_EQ(lb.sender().confirmed_bytes(), lb.sender().total_bytes());
}

// The entries of files done with go with trim_entries, a part (a vector handed over) at a
// time: never one of a file still held, nor one at or after the id the caller still reads.
// A late ack of a file whose entry went is ignored, whatever chunk it names.
TEST(TransferLoopback, TheEntriesOfFilesDoneWithGoAPartAtATime) {
    loopback lb({file_entry("a", 2 * std::uint64_t{chunk_size}), file_entry("b", 7)}, {}, false);
    lb.append({file_entry("c", 7)});
    lb.append({file_entry("d", 7), file_entry("e", 7)});
    lb.complete();
    lb.run();
    ASSERT_FALSE(::testing::Test::HasFatalFailure());
    sender_machine& s = lb.sender();
    ASSERT_TRUE(s.finished());
    s.release(file_id{0});
    s.release(file_id{1});
    s.release(file_id{2});
    s.trim_entries(std::numeric_limits<std::uint32_t>::max());
    EXPECT_EQ(s.first_entry_held(), 3u);  // d is held (not released): its part stays, with e
    EXPECT_THROW(s.entry(file_id{1}), std::out_of_range);
    EXPECT_EQ(s.entry(file_id{3}).path, "d");
    EXPECT_EQ(s.total_files(), 5u);
    s.release(file_id{3});
    s.release(file_id{4});
    s.trim_entries(4);  // the caller still reads e: its part stays
    EXPECT_EQ(s.first_entry_held(), 3u);
    s.trim_entries(5);
    EXPECT_EQ(s.first_entry_held(), 5u);
    EXPECT_THROW(s.entry(file_id{4}), std::out_of_range);
    std::error_code ec;
    EXPECT_EQ(s.on_ack(chunk_key(file_id{0}, chunk_index{1}), ec), 0u);
    EXPECT_EQ(s.on_ack(chunk_key(file_id{0}, chunk_index{9}), ec), 0u);  // no entry to check it by
    EXPECT_FALSE(ec);
    EXPECT_EQ(s.on_file_result(file_result(file_id{0}, false, "disk full")), protocol_errc::peer_error);
    EXPECT_EQ(s.failure(), "file 0: disk full");
    EXPECT_EQ(s.confirmed_bytes(), s.total_bytes());
}

// Every batch went out before the scan's end was known: an empty last batch says it.
TEST(TransferLoopback, AStreamedTransferWhoseBatchesAllWentOutEndsWithAnEmptyLastBatch) {
    std::vector<entry_info> more;
    for (std::uint32_t i = 0; i < 200; ++i) {
        more.push_back(file_entry(numbered("f", i), 10));
    }
    loopback lb({dir_entry("d")}, {}, false);
    lb.append(more);  // over 4 KiB of entries: sealed at once
    std::size_t sealed = lb.sender().offer_count();
    ASSERT_GE(sealed, 2u);
    lb.exchange_offers();
    lb.complete();
    ASSERT_EQ(lb.sender().offer_count(), sealed + 1);
    wire::Offer last = lb.sender().make_offer(sealed);
    EXPECT_TRUE(last.last());
    EXPECT_EQ(last.entries_size(), 0);
    lb.exchange_offers();
    for (const in_flight& c : lb.pull_chunks()) {
        lb.deliver(c);
    }
    EXPECT_EQ(lb.finish(), std::error_code{}) << lb.sender().failure();
    EXPECT_TRUE(lb.sender().finished());
    EXPECT_EQ(lb.receiver().total_files(), 201u);
}

TEST(TransferLoopback, BatchesStayUnderLimitWithLargestFieldValues) {
    // Longest names, largest ids, sizes, modes and negative times: every varint at its widest.
    std::vector<entry_info> entries;
    for (std::uint32_t i = 0; i < 60; ++i) {
        entry_info e = file_entry(std::to_string(i) + "-" + std::string(4000, 'p'), ~std::uint64_t{0} - i);
        e.mode = 0xffffffffu;
        e.mtime_ns = -1;
        entries.push_back(std::move(e));
    }
    sender_machine sender(~std::uint64_t{0}, entries, {.overwrite = true, .fsync_each = true, .sync = {}});
    std::vector<wire::Offer> offers = sender.make_offers();
    ASSERT_GT(offers.size(), 1u);
    for (const wire::Offer& o : offers) {
        EXPECT_LE(o.ByteSizeLong(), offer_batch_bytes);
    }
}

TEST(TransferLoopback, EmptyTransfer) {
    loopback lb({});
    std::vector<wire::Offer> offers = lb.sender().make_offers();
    ASSERT_EQ(offers.size(), 1u);
    EXPECT_TRUE(offers[0].last());
    EXPECT_EQ(offers[0].entries_size(), 0);
    lb.run();
    EXPECT_TRUE(lb.sender().finished());
    EXPECT_EQ(lb.sender().confirmed_bytes(), 0u);
    EXPECT_TRUE(lb.receiver().all_finished());
}

TEST(TransferLoopback, OptionsReachTheReceiver) {
    loopback lb({file_entry("f", 3)}, {.overwrite = true, .fsync_each = true, .sync = {}});
    lb.run();
    EXPECT_TRUE(lb.receiver().options().overwrite);
    EXPECT_TRUE(lb.receiver().options().fsync_each);
    EXPECT_EQ(lb.receiver().transfer_id(), test_transfer_id);
    EXPECT_TRUE(lb.sender().finished());
}

// ---------------------------------------------------------------------------------------
// Sender: requeue and acks

TEST(SenderMachine, RequeuedChunkComesBackFirstAndYieldsOneFileDone) {
    const std::uint64_t size = 2 * std::uint64_t{chunk_size} + 10;
    loopback lb({file_entry("f", size), file_entry("g", 5)});
    lb.exchange_offers();
    sender_machine& s = lb.sender();

    std::optional<chunk_ref> c0 = s.next_chunk();
    std::optional<chunk_ref> c1 = s.next_chunk();
    std::optional<chunk_ref> c2 = s.next_chunk();
    ASSERT_TRUE(c0 && c1 && c2);
    EXPECT_EQ(c2->file, file_id{0});
    EXPECT_EQ(c2->index, chunk_index{2});
    std::optional<in_flight> f0 = lb.read_and_hash(*c0);
    std::optional<in_flight> f1 = lb.read_and_hash(*c1);
    std::optional<in_flight> f2 = lb.read_and_hash(*c2);
    ASSERT_TRUE(f0 && f1 && f2);
    EXPECT_EQ(lb.file_dones(file_id{0}), 1);

    // c1's connection failed before delivery: it is the next chunk handed out, ahead of g.
    s.requeue(*c1);
    std::optional<chunk_ref> again = s.next_chunk();
    ASSERT_TRUE(again);
    EXPECT_EQ(again->file, file_id{0});
    EXPECT_EQ(again->index, chunk_index{1});
    EXPECT_EQ(again->offset, c1->offset);
    EXPECT_EQ(again->length, c1->length);
    std::optional<in_flight> f1_again = lb.read_and_hash(*again);
    ASSERT_TRUE(f1_again);
    EXPECT_EQ(lb.file_dones(file_id{0}), 1);  // hashed twice, still one FileDone

    std::optional<chunk_ref> g0 = s.next_chunk();
    ASSERT_TRUE(g0);
    EXPECT_EQ(g0->file, file_id{1});
    std::optional<in_flight> g_frame = lb.read_and_hash(*g0);
    ASSERT_TRUE(g_frame);
    EXPECT_FALSE(s.next_chunk());

    // Both copies of c1 arrive (the first one was in fact delivered): the receiver re-acks
    // the duplicate and the sender counts it once.
    lb.deliver(*f0);
    lb.deliver(*f1);
    lb.deliver(*f1_again);
    lb.deliver(*f2);
    lb.deliver(*g_frame);
    EXPECT_EQ(s.confirmed_bytes(), size + 5);
    EXPECT_EQ(lb.receiver().received_bytes(), size + 5);
    EXPECT_EQ(lb.finish(), std::error_code{});
    EXPECT_TRUE(s.finished());
    EXPECT_EQ(s.confirmed_bytes(), s.total_bytes());
}

TEST(TransferLoopback, AFileGivenUpOnEndsTheTransferWithoutItAndItsLateChunksAreDropped) {
    // More than 64 chunks: its chunk bitmaps do not fit their inline word (accepted whole,
    // its `claimed` bitmap is empty and must not be read).
    const std::uint64_t size = 100 * std::uint64_t{chunk_size};
    loopback lb({file_entry("gone", size), file_entry("kept", 100)});
    lb.exchange_offers();
    sender_machine& s = lb.sender();
    receiver_machine& r = lb.receiver();
    std::optional<chunk_ref> c0 = s.next_chunk();
    ASSERT_TRUE(c0);
    std::optional<in_flight> d0 = lb.read_and_hash(*c0);
    ASSERT_TRUE(d0);
    lb.deliver(*d0);  // received and written before the file goes
    std::optional<chunk_ref> c1 = s.next_chunk();
    ASSERT_TRUE(c1);
    std::optional<in_flight> f0 = lb.read_and_hash(*c1);  // on the wire when the file goes
    ASSERT_TRUE(f0);
    s.requeue(*s.next_chunk());  // one waits to be sent again

    std::optional<wire::FileAbort> abort = s.abort_file(file_id{0}, true, "gone");
    ASSERT_TRUE(abort);
    EXPECT_TRUE(abort->vanished());
    EXPECT_FALSE(s.abort_file(file_id{0}, true, "again"));  // once
    // Nothing more of it is handed out: the next chunk is the other file's.
    std::optional<chunk_ref> next = s.next_chunk();
    ASSERT_TRUE(next);
    EXPECT_EQ(next->file, file_id{1});
    std::optional<in_flight> k = lb.read_and_hash(*next);
    ASSERT_TRUE(k);
    EXPECT_FALSE(s.next_chunk());

    ASSERT_EQ(r.on_file_abort(*abort), std::error_code{});
    EXPECT_TRUE(r.aborted(file_id{0}));
    EXPECT_EQ(r.on_file_abort(*abort), protocol_errc::unexpected_message);
    // Its chunk still on the wire is admitted (and dropped by the node), never an error.
    EXPECT_EQ(r.on_chunk(f0->header, static_cast<std::uint32_t>(f0->payload.size())), std::error_code{});
    std::error_code ec;
    EXPECT_EQ(s.on_ack(chunk_key(file_id{0}, chunk_index{1}), ec), 0u);  // confirms nothing
    EXPECT_FALSE(ec);
    lb.deliver(*k);
    EXPECT_EQ(lb.finish(), std::error_code{}) << s.failure();
    EXPECT_EQ(s.aborted_files(), 1u);
    EXPECT_EQ(r.aborted_files(), 1u);
    EXPECT_EQ(s.confirmed_bytes(), 100u);  // not the file given up on
    // The receiver counts the same: not the chunk of it that was written (a pull's report
    // is the receiver's, and the one more pass sends the file again, counted then).
    EXPECT_EQ(r.received_bytes(), 100u);
}

TEST(TransferLoopback, AFileTheReceiverGivesUpOnEndsTheTransferWithoutItAndWhatCrossedIsDropped) {
    // The receiver could not write file 0 (its folder refuses this user): it gives it up
    // and says so (FileResult not ok); the sender stops sending it. Its chunk, its
    // FileDone and a FileAbort of it sent before the sender heard are no error.
    const std::uint64_t size = 3 * std::uint64_t{chunk_size};
    loopback lb({file_entry("closed", size), file_entry("kept", 100)});
    lb.exchange_offers();
    sender_machine& s = lb.sender();
    receiver_machine& r = lb.receiver();
    std::optional<chunk_ref> c0 = s.next_chunk();
    ASSERT_TRUE(c0);
    std::optional<in_flight> d0 = lb.read_and_hash(*c0);
    ASSERT_TRUE(d0);
    lb.deliver(*d0);
    std::optional<chunk_ref> c1 = s.next_chunk();
    ASSERT_TRUE(c1);
    std::optional<in_flight> d1 = lb.read_and_hash(*c1);  // on the wire when the receiver gives up
    ASSERT_TRUE(d1);

    ASSERT_TRUE(r.give_up(file_id{0}));
    EXPECT_FALSE(r.give_up(file_id{0}));  // once
    EXPECT_TRUE(r.failed_here(file_id{0}));
    EXPECT_FALSE(r.failed_here(file_id{1}));
    EXPECT_TRUE(r.aborted(file_id{0}));
    EXPECT_TRUE(r.finished(file_id{0}));
    // Its last chunk is read before the sender hears: its FileDone goes out and is dropped
    // (read_and_hash delivers it and asserts no error).
    std::optional<chunk_ref> c2 = s.next_chunk();
    ASSERT_TRUE(c2);
    EXPECT_EQ(c2->file, file_id{0});
    ASSERT_TRUE(lb.read_and_hash(*c2));
    EXPECT_EQ(lb.file_dones(file_id{0}), 1);
    bool ok = true;
    EXPECT_FALSE(r.ready(file_id{0}, ok));  // never made final

    ASSERT_TRUE(s.receiver_gave_up(file_id{0}));
    EXPECT_FALSE(s.receiver_gave_up(file_id{0}));
    EXPECT_FALSE(s.receiver_gave_up(file_id{7}));  // never offered: no file of it (on_file_result says so)
    EXPECT_TRUE(s.aborted(file_id{0}));
    EXPECT_EQ(r.on_chunk(d1->header, static_cast<std::uint32_t>(d1->payload.size())), std::error_code{});
    std::error_code ec;
    EXPECT_EQ(s.on_ack(chunk_key(file_id{0}, chunk_index{1}), ec), 0u);  // confirms nothing
    EXPECT_FALSE(ec);
    wire::FileAbort crossed;
    crossed.set_file_id(0);
    crossed.set_vanished(true);
    EXPECT_EQ(r.on_file_abort(crossed), std::error_code{});
    // The late result of a file the receiver gave up on is not an error either.
    EXPECT_EQ(s.on_file_result(file_result(file_id{0}, false)), std::error_code{});

    std::optional<chunk_ref> next = s.next_chunk();
    ASSERT_TRUE(next);
    EXPECT_EQ(next->file, file_id{1});
    std::optional<in_flight> k = lb.read_and_hash(*next);
    ASSERT_TRUE(k);
    EXPECT_FALSE(s.next_chunk());
    lb.deliver(*k);
    EXPECT_EQ(lb.finish(), std::error_code{}) << s.failure();
    EXPECT_EQ(s.aborted_files(), 1u);
    EXPECT_EQ(r.aborted_files(), 1u);
    EXPECT_EQ(s.confirmed_bytes(), 100u);
    EXPECT_EQ(r.received_bytes(), 100u);
    // Forgotten since: what crosses still is dropped, not refused.
    r.release(file_id{0});
    EXPECT_FALSE(r.entry_held(file_id{0}));
    EXPECT_EQ(r.on_file_abort(crossed), std::error_code{});
    EXPECT_EQ(r.on_chunk(d1->header, static_cast<std::uint32_t>(d1->payload.size())), std::error_code{});
}

TEST(SenderMachine, RequeueBeforeHashing) {
    sender_machine s(test_transfer_id, {file_entry("f", chunk_size + 1)}, {});
    offer_all(s);
    wire::Accept a;
    a.set_transfer_id(test_transfer_id);
    a.add_files()->set_id(0);
    std::vector<wire::FileDone> done;
    ASSERT_EQ(s.on_accept(a, done), std::error_code{});
    EXPECT_TRUE(done.empty());

    std::optional<chunk_ref> c0 = s.next_chunk();
    ASSERT_TRUE(c0);
    s.requeue(*c0);
    std::optional<chunk_ref> first = s.next_chunk();
    std::optional<chunk_ref> second = s.next_chunk();
    ASSERT_TRUE(first && second);
    EXPECT_EQ(first->index, chunk_index{0});
    EXPECT_EQ(second->index, chunk_index{1});
    EXPECT_FALSE(s.next_chunk());

    EXPECT_FALSE(s.on_chunk_hashed(*second, payload_digest(second->file, second->index, second->length)));
    std::optional<wire::FileDone> d = s.on_chunk_hashed(*first, payload_digest(first->file, first->index, first->length));
    ASSERT_TRUE(d);
    EXPECT_EQ(d->file_id(), 0u);
    std::vector<digest128> digests{payload_digest(file_id{0}, chunk_index{0}, chunk_size),
                                   payload_digest(file_id{0}, chunk_index{1}, 1)};
    digest128 expected = file_digest(digests);
    EXPECT_EQ(d->digest_lo(), expected.lo);
    EXPECT_EQ(d->digest_hi(), expected.hi);
}

// A sender for `entries` whose single batch was accepted with ACCEPT_ALL (or `kinds`).
sender_machine accepted_sender(std::vector<entry_info> entries, const std::vector<wire::AcceptKind>& kinds = {}) {
    sender_machine s(test_transfer_id, std::move(entries), {});
    offer_all(s);
    wire::Accept a;
    a.set_transfer_id(test_transfer_id);
    for (std::uint32_t i = 0; i < s.total_files(); ++i) {
        wire::FileAccept* fa = a.add_files();
        fa->set_id(i);
        fa->set_kind(i < kinds.size() ? kinds[i] : wire::ACCEPT_ALL);
    }
    std::vector<wire::FileDone> done;
    EXPECT_EQ(s.on_accept(a, done), std::error_code{});
    return s;
}

TEST(SenderMachine, DuplicateAckCountsOnce) {
    sender_machine s = accepted_sender({file_entry("f", chunk_size + 7)});
    std::error_code ec;
    EXPECT_EQ(s.on_ack(chunk_key(file_id{0}, chunk_index{1}), ec), 7u);
    EXPECT_FALSE(ec);
    EXPECT_EQ(s.on_ack(chunk_key(file_id{0}, chunk_index{1}), ec), 0u);
    EXPECT_FALSE(ec);
    EXPECT_EQ(s.confirmed_bytes(), 7u);
    EXPECT_EQ(s.on_ack(chunk_key(file_id{0}, chunk_index{0}), ec), chunk_size);
    EXPECT_FALSE(ec);
    EXPECT_EQ(s.confirmed_bytes(), chunk_size + 7u);
}

TEST(SenderMachine, AckForUnknownChunkIsAnError) {
    sender_machine s = accepted_sender({file_entry("f", chunk_size + 7), dir_entry("d"), file_entry("skipped", 100)},
                                       {wire::ACCEPT_ALL, wire::ACCEPT_ALL, wire::ACCEPT_SKIP});
    auto ack_error = [&s](file_id f, chunk_index i) {
        std::error_code ec;
        EXPECT_EQ(s.on_ack(chunk_key(f, i), ec), 0u);
        return ec;
    };
    EXPECT_EQ(ack_error(file_id{3}, chunk_index{0}), protocol_errc::unknown_file);       // no such file
    EXPECT_EQ(ack_error(file_id{0}, chunk_index{2}), protocol_errc::unknown_file);       // index past the end
    EXPECT_EQ(ack_error(file_id{0}, chunk_index{~0u}), protocol_errc::unknown_file);     // far past the end
    EXPECT_EQ(ack_error(file_id{1}, chunk_index{0}), protocol_errc::unknown_file);       // a directory
    EXPECT_EQ(ack_error(file_id{2}, chunk_index{0}), protocol_errc::unknown_file);       // a skipped file
    EXPECT_EQ(ack_error(file_id{~0u}, chunk_index{0}), protocol_errc::unknown_file);
    EXPECT_EQ(s.confirmed_bytes(), 0u);
}

TEST(SenderMachine, AckBeforeAcceptIsAnError) {
    sender_machine s(test_transfer_id, {file_entry("f", 10)}, {});
    offer_all(s);
    std::error_code ec;
    EXPECT_EQ(s.on_ack(chunk_key(file_id{0}, chunk_index{0}), ec), 0u);
    EXPECT_EQ(ec, protocol_errc::unknown_file);
    EXPECT_FALSE(s.next_chunk());  // nothing to read before the Accept
}

// The entries a receiver finds unchanged (a file skipped, a folder there, each SYNC_NONE)
// are told by a bit each, and the sender puts their answers back in place.
TEST(SenderMachine, UnchangedEntriesAreToldByABitAndTakenBackInPlace) {
    std::vector<entry_info> entries{dir_entry("d"),        file_entry("d/a", 10), file_entry("d/b", 10),
                                    dir_entry("e"),        file_entry("e/c", 10), file_entry("e/d", 10),
                                    file_entry("e/e", 10), file_entry("e/f", 10), file_entry("e/g", 10)};
    sender_machine sender(test_transfer_id, entries, {});
    receiver_machine receiver;
    std::optional<wire::Offer> o = sender.next_offer();
    ASSERT_TRUE(o);
    std::vector<file_id> ids;
    ASSERT_EQ(receiver.on_offer(*o, ids), std::error_code{});
    ASSERT_EQ(ids.size(), entries.size());
    std::vector<receiver_machine::decision> decisions;
    for (file_id id : ids) {
        decisions.push_back(accept_all(id));
        decisions.back().kind = wire::ACCEPT_SKIP;  // unchanged, but:
    }
    decisions[2].kind = wire::ACCEPT_ALL;  // d/b changed
    decisions[2].action = wire::SYNC_UPDATE;
    decisions[3].action = wire::SYNC_CREATE;  // e made
    decisions[6].action = wire::SYNC_UPDATE;  // e/e: its mode alone
    wire::Accept accept = receiver.accept(decisions);
    EXPECT_EQ(accept.unchanged(), (std::string{"\xb3\x01", 2}));  // entries 0, 1, 4, 5, 7, 8
    ASSERT_EQ(accept.files_size(), 3);
    EXPECT_EQ(accept.files(0).id(), 2u);
    EXPECT_EQ(accept.files(1).id(), 3u);
    EXPECT_EQ(accept.files(2).id(), 6u);
    EXPECT_LT(accept.ByteSizeLong(), 40u);

    wire::Accept bad = accept;
    bad.set_unchanged(std::string{"\xb3\x03", 2});  // a bit past the last entry
    std::vector<wire::FileDone> done;
    EXPECT_EQ(sender.on_accept(bad, done), protocol_errc::unexpected_message);
    bad.set_unchanged(std::string{"\xb3", 1});  // too short
    EXPECT_EQ(sender.on_accept(bad, done), protocol_errc::unexpected_message);
    bad.set_unchanged(std::string{"\xb7\x01", 2});  // one more than the files left out
    EXPECT_EQ(sender.on_accept(bad, done), protocol_errc::unexpected_message);
    EXPECT_EQ(sender.held_states(), 0u);

    ASSERT_EQ(sender.on_accept(accept, done), std::error_code{});
    EXPECT_TRUE(accept.unchanged().empty());
    ASSERT_EQ(accept.files_size(), static_cast<int>(entries.size()));
    for (int i = 0; i < accept.files_size(); ++i) {
        EXPECT_EQ(accept.files(i).id(), static_cast<std::uint32_t>(i));
        EXPECT_EQ(accept.files(i).kind(), i == 0 || i == 3 || i == 2 ? wire::ACCEPT_ALL : wire::ACCEPT_SKIP) << i;
    }
    EXPECT_EQ(accept.files(3).action(), wire::SYNC_CREATE);
    EXPECT_EQ(accept.files(6).action(), wire::SYNC_UPDATE);
    EXPECT_EQ(sender.skipped_files(), 6u);  // every file but d/b
    std::optional<chunk_ref> c = sender.next_chunk();
    ASSERT_TRUE(c);
    EXPECT_EQ(c->file, file_id{2});
}

TEST(SenderMachine, BadAcceptIsRefused) {
    std::vector<wire::FileDone> done;
    {
        // An answer to a batch not offered yet: the receiver cannot know its files.
        sender_machine s(test_transfer_id, {file_entry("f", 10)}, {});
        wire::Accept a;
        a.set_transfer_id(test_transfer_id);
        a.add_files()->set_id(0);
        EXPECT_EQ(s.on_accept(a, done), protocol_errc::unexpected_message);
        EXPECT_EQ(s.held_states(), 0u);
        ASSERT_TRUE(s.next_offer());
        EXPECT_EQ(s.on_accept(a, done), std::error_code{});
    }
    {
        sender_machine s(test_transfer_id, {file_entry("f", 10)}, {});
        offer_all(s);
        wire::Accept a;
        a.set_transfer_id(test_transfer_id + 1);
        a.add_files()->set_id(0);
        EXPECT_EQ(s.on_accept(a, done), protocol_errc::unexpected_message);
    }
    {
        sender_machine s(test_transfer_id, {file_entry("f", 10), file_entry("g", 10)}, {});
        offer_all(s);
        wire::Accept a;
        a.set_transfer_id(test_transfer_id);
        a.add_files()->set_id(0);
        EXPECT_EQ(s.on_accept(a, done), protocol_errc::unexpected_message);  // too few answers
    }
    {
        sender_machine s(test_transfer_id, {file_entry("f", 10), file_entry("g", 10)}, {});
        offer_all(s);
        wire::Accept a;
        a.set_transfer_id(test_transfer_id);
        a.add_files()->set_id(1);
        a.add_files()->set_id(0);
        EXPECT_EQ(s.on_accept(a, done), protocol_errc::unknown_file);  // out of order
    }
    {
        sender_machine s(test_transfer_id, {file_entry("f", chunk_size * 2)}, {});
        offer_all(s);
        wire::Accept a;
        a.set_transfer_id(test_transfer_id);
        wire::FileAccept* fa = a.add_files();
        fa->set_id(0);
        fa->set_kind(wire::ACCEPT_PARTIAL);
        fa->set_have(std::string(2, '\0'));  // 2 chunks need 1 byte
        EXPECT_EQ(s.on_accept(a, done), protocol_errc::bad_chunk);
    }
    {
        sender_machine s = accepted_sender({file_entry("f", 10)});
        wire::Accept a;
        a.set_transfer_id(test_transfer_id);
        a.add_files()->set_id(0);
        EXPECT_EQ(s.on_accept(a, done), protocol_errc::unexpected_message);  // no batch left
    }
    {
        // Refused at its second file: the first one's state and chunks go with it, and the
        // same batch can still be answered.
        sender_machine s(test_transfer_id, {file_entry("f", 10), file_entry("g", 10)}, {});
        offer_all(s);
        wire::Accept a;
        a.set_transfer_id(test_transfer_id);
        a.add_files()->set_id(0);
        wire::FileAccept* bad = a.add_files();
        bad->set_id(1);
        bad->set_kind(static_cast<wire::AcceptKind>(77));
        EXPECT_EQ(s.on_accept(a, done), protocol_errc::unexpected_message);
        EXPECT_EQ(s.held_states(), 0u);
        EXPECT_FALSE(s.next_chunk().has_value());
        bad->set_kind(wire::ACCEPT_ALL);
        EXPECT_EQ(s.on_accept(a, done), std::error_code{});
        EXPECT_EQ(s.held_states(), 2u);
        std::optional<chunk_ref> c = s.next_chunk();
        ASSERT_TRUE(c.has_value());
        EXPECT_EQ(c->file, file_id{0});
    }
    EXPECT_TRUE(done.empty());
}

// A file given up on is done with: its state is forgotten like any other, and it still
// answers as given up on (a chunk read meanwhile is not sent, a late ack is ignored, a
// result that crossed the FileAbort is taken).
TEST(SenderMachine, AFileGivenUpOnIsForgottenAndStillKnownAsSuch) {
    loopback lb({file_entry("a", 3 * std::uint64_t{chunk_size}), file_entry("b", 5)});
    lb.exchange_offers();
    sender_machine& s = lb.sender();
    std::optional<chunk_ref> first = s.next_chunk();
    ASSERT_TRUE(first.has_value());
    EXPECT_EQ(first->file, file_id{0});
    ASSERT_TRUE(s.abort_file(file_id{0}, true, "gone").has_value());
    EXPECT_EQ(s.held_states(), 1u);  // b's
    EXPECT_TRUE(s.aborted(file_id{0}));
    EXPECT_FALSE(s.requeue(*first));
    std::error_code ec;
    EXPECT_EQ(s.on_ack(chunk_key(file_id{0}, chunk_index{0}), ec), 0u);
    EXPECT_FALSE(ec);
    EXPECT_EQ(s.on_file_result(file_result(file_id{0}, true)), std::error_code{});  // crossed it
    std::optional<chunk_ref> next = s.next_chunk();
    ASSERT_TRUE(next.has_value());
    EXPECT_EQ(next->file, file_id{1});  // a's other chunks are not handed out
    EXPECT_EQ(s.aborted_files(), 1u);
}

TEST(SenderMachine, EmptyFileIsDoneOnAccept) {
    sender_machine s(test_transfer_id, {file_entry("e", 0)}, {});
    offer_all(s);
    wire::Accept a;
    a.set_transfer_id(test_transfer_id);
    a.add_files()->set_id(0);
    std::vector<wire::FileDone> done;
    ASSERT_EQ(s.on_accept(a, done), std::error_code{});
    ASSERT_EQ(done.size(), 1u);
    digest128 empty = file_digest({});
    EXPECT_EQ(done[0].file_id(), 0u);
    EXPECT_EQ(done[0].digest_lo(), empty.lo);
    EXPECT_EQ(done[0].digest_hi(), empty.hi);
    EXPECT_FALSE(s.next_chunk());
    EXPECT_EQ(s.files_done(), 0u);  // done only once the receiver's FileResult arrives
    EXPECT_EQ(s.on_file_result(file_result(file_id{0}, true)), std::error_code{});
    EXPECT_EQ(s.files_done(), 1u);
    EXPECT_EQ(s.on_file_result(file_result(file_id{0}, true)), protocol_errc::unexpected_message);
    EXPECT_EQ(s.on_file_result(file_result(file_id{1}, true)), protocol_errc::unknown_file);
}

TEST(SenderMachine, FileResultFailureCarriesPathAndError) {
    sender_machine s = accepted_sender({file_entry("dir/f", 10)});
    EXPECT_EQ(s.on_file_result(file_result(file_id{0}, false, "disk full")), protocol_errc::peer_error);
    EXPECT_EQ(s.failure(), "dir/f: disk full");
    EXPECT_EQ(s.files_done(), 0u);
}

// ---------------------------------------------------------------------------------------
// Skip and partial accepts

TEST(TransferLoopback, AcceptSkipSendsNothingForTheFile) {
    const std::uint64_t a_size = chunk_size + 3;
    const std::uint64_t b_size = 2 * std::uint64_t{chunk_size};
    loopback lb({file_entry("a", a_size), file_entry("b", b_size), file_entry("c", 4)});
    lb.exchange_offers([](file_id id) {
        receiver_machine::decision d = accept_all(id);
        if (id == file_id{1}) {
            d.kind = wire::ACCEPT_SKIP;
        }
        return d;
    });
    sender_machine& s = lb.sender();
    EXPECT_EQ(s.files_done(), 1u);  // b counts as done at once
    EXPECT_EQ(s.skipped_bytes(), b_size);

    std::vector<in_flight> chunks = lb.pull_chunks();
    ASSERT_EQ(chunks.size(), 3u);
    for (const in_flight& c : chunks) {
        EXPECT_NE(c.ref.file, file_id{1});
    }
    EXPECT_EQ(lb.file_dones(file_id{1}), 0);
    // The receiver refuses chunks and FileDone for the skipped file.
    EXPECT_EQ(lb.receiver().on_chunk(chunk_header(file_id{1}, chunk_index{0}, chunk_size), chunk_size),
              protocol_errc::unknown_file);
    wire::FileDone stray;
    stray.set_file_id(1);
    EXPECT_EQ(lb.receiver().on_file_done(stray), protocol_errc::unexpected_message);

    for (const in_flight& c : chunks) {
        lb.deliver(c);
    }
    EXPECT_EQ(s.confirmed_bytes(), a_size + 4);
    EXPECT_EQ(lb.finish(), std::error_code{});
    EXPECT_TRUE(s.finished());
    EXPECT_EQ(s.files_done(), 3u);
    EXPECT_EQ(s.confirmed_bytes(), s.total_bytes() - s.skipped_bytes());
    EXPECT_EQ(s.confirmed_bytes(), a_size + 4);
}

TEST(TransferLoopback, AcceptPartialSendsOnlyMissingChunks) {
    const std::uint64_t size = 3 * std::uint64_t{chunk_size} + 5;  // 4 chunks
    loopback lb({file_entry("p", size), file_entry("q", 9)});
    // The receiver already has chunks 0 and 2 of p (with the right bytes).
    lb.exchange_offers([&](file_id id) { return id == file_id{0} ? accept_partial(id, size, {0, 2}) : accept_all(id); });
    sender_machine& s = lb.sender();

    std::vector<chunk_ref> refs;
    while (std::optional<chunk_ref> r = s.next_chunk()) {
        refs.push_back(*r);
    }
    ASSERT_EQ(refs.size(), 5u);
    for (std::uint32_t i = 0; i < 4; ++i) {
        EXPECT_EQ(refs[i].file, file_id{0});
        EXPECT_EQ(refs[i].index, chunk_index{i});
        EXPECT_EQ(refs[i].send, i == 1 || i == 3) << i;  // read and hashed, not sent
    }
    EXPECT_TRUE(refs[4].send);

    std::vector<in_flight> frames;
    for (const chunk_ref& r : refs) {
        if (std::optional<in_flight> f = lb.read_and_hash(r)) {
            frames.push_back(std::move(*f));
        }
    }
    ASSERT_EQ(frames.size(), 3u);
    EXPECT_EQ(lb.file_dones(file_id{0}), 1);
    const std::uint64_t skipped = 2 * std::uint64_t{chunk_size};
    EXPECT_EQ(s.skipped_bytes(), skipped);
    EXPECT_EQ(s.confirmed_bytes(), 0u);  // skipped chunks are not confirmed payload

    std::reverse(frames.begin(), frames.end());
    for (const in_flight& f : frames) {
        lb.deliver(f);
    }
    EXPECT_EQ(s.confirmed_bytes(), chunk_size + 5u + 9u);
    EXPECT_EQ(lb.receiver().received_bytes(), chunk_size + 5u + 9u);
    EXPECT_EQ(lb.file_results(), 2u);  // p's digest matched with the receiver's own chunks

    EXPECT_EQ(lb.finish(), std::error_code{});
    EXPECT_TRUE(s.finished());
    EXPECT_EQ(s.files_done(), 2u);
    EXPECT_EQ(s.confirmed_bytes(), s.total_bytes() - skipped);
}

TEST(TransferLoopback, AFileGivenUpOnAfterItsFileDoneIsTakenButNotOnceItIsFinishedHere) {
    // p's two chunks are hashed (its FileDone goes), the first arrives, the second is lost
    // with its connection; read again, p is gone: the sender gives it up. The receiver
    // takes that FileAbort (it refused it after a FileDone, failing the whole transfer).
    const std::uint64_t size = chunk_size + 10;  // 2 chunks
    loopback lb({file_entry("p", size), file_entry("q", 100)});
    lb.exchange_offers();
    sender_machine& s = lb.sender();
    receiver_machine& r = lb.receiver();
    std::optional<chunk_ref> c0 = s.next_chunk();
    std::optional<chunk_ref> c1 = s.next_chunk();
    ASSERT_TRUE(c0 && c1 && c1->file == file_id{0});
    std::optional<in_flight> f0 = lb.read_and_hash(*c0);
    std::optional<in_flight> f1 = lb.read_and_hash(*c1);
    ASSERT_TRUE(f0 && f1);
    EXPECT_EQ(lb.file_dones(file_id{0}), 1);  // delivered
    lb.deliver(*f0);
    ASSERT_TRUE(s.requeue(*c1));
    std::optional<wire::FileAbort> abort = s.abort_file(file_id{0}, true, "gone");
    ASSERT_TRUE(abort);
    ASSERT_EQ(r.on_file_abort(*abort), std::error_code{});
    EXPECT_TRUE(r.aborted(file_id{0}));
    EXPECT_TRUE(r.finished(file_id{0}));
    EXPECT_EQ(r.received_bytes(), 0u);  // what came of p no longer counts
    EXPECT_EQ(r.on_file_abort(*abort), protocol_errc::unexpected_message);  // twice
    for (const in_flight& c : lb.pull_chunks()) {
        lb.deliver(c);
    }
    EXPECT_TRUE(r.finished(file_id{1}));
    // A FileAbort for q, made final here from what the sender read: refused (the transfer
    // fails and the next attempt finds q as SRC has it then), nothing changes.
    wire::FileAbort late;
    late.set_file_id(1);
    EXPECT_EQ(r.on_file_abort(late), protocol_errc::unexpected_message);
    EXPECT_FALSE(r.aborted(file_id{1}));
    EXPECT_EQ(r.received_bytes(), 100u);
    EXPECT_EQ(r.aborted_files(), 1u);
    EXPECT_EQ(lb.finish(), std::error_code{}) << s.failure();
    EXPECT_EQ(s.confirmed_bytes(), 100u);
}

TEST(TransferLoopback, AFileDoneAfterTheFileWasGivenUpOnIsRefusedAsAfterItIsForgotten) {
    // No sender sends a FileDone after its FileAbort. The receiver took one while it still
    // held the file's state and refused it once the file was forgotten (a fuzz run found
    // the two answers to the same message).
    loopback lb({file_entry("p", chunk_size + 10)});
    lb.exchange_offers();
    receiver_machine& r = lb.receiver();
    wire::FileAbort abort;
    abort.set_file_id(0);
    abort.set_vanished(true);
    ASSERT_EQ(r.on_file_abort(abort), std::error_code{});
    ASSERT_TRUE(r.entry_held(file_id{0}));
    wire::FileDone done;
    done.set_file_id(0);
    EXPECT_EQ(r.on_file_done(done), protocol_errc::unexpected_message);
    r.release(file_id{0});
    EXPECT_EQ(r.on_file_done(done), protocol_errc::unexpected_message);
}

TEST(TransferLoopback, AResumedFileGivenUpOnLeavesTheConfirmedCountAtTheOtherFiles) {
    // The receiver had 2 of p's 3 chunks (an interrupted attempt's); p vanishes once those
    // two are hashed. The TransferResult confirms every byte but p's: q's 9, never a count
    // below zero (a fuzz run found 18446744073709289472: p's kept chunks were taken off
    // twice, as skipped and as given up on).
    const std::uint64_t size = 2 * std::uint64_t{chunk_size} + 3;  // 3 chunks
    loopback lb({file_entry("p", size), file_entry("q", 9)});
    lb.exchange_offers([&](file_id id) { return id == file_id{0} ? accept_partial(id, size, {0, 1}) : accept_all(id); });
    sender_machine& s = lb.sender();
    for (int k = 0; k < 2; ++k) {
        std::optional<chunk_ref> r = s.next_chunk();
        ASSERT_TRUE(r && r->file == file_id{0} && !r->send);
        EXPECT_FALSE(lb.read_and_hash(*r));  // the receiver's own: nothing to send
    }
    EXPECT_EQ(s.skipped_bytes(), 2 * std::uint64_t{chunk_size});
    std::optional<wire::FileAbort> abort = s.abort_file(file_id{0}, true, "gone");
    ASSERT_TRUE(abort);
    ASSERT_EQ(lb.receiver().on_file_abort(*abort), std::error_code{});
    std::optional<chunk_ref> q = s.next_chunk();
    ASSERT_TRUE(q && q->file == file_id{1});
    std::optional<in_flight> f = lb.read_and_hash(*q);
    ASSERT_TRUE(f);
    lb.deliver(*f);
    EXPECT_EQ(lb.finish(), std::error_code{}) << s.failure();
    EXPECT_TRUE(s.finished());
    EXPECT_EQ(s.confirmed_bytes(), 9u);
}

TEST(TransferLoopback, ResumedChunkWithOtherBytesIsSentAgain) {
    // The receiver claims chunks 0..2 of p, but its chunk 1 holds other bytes (a damaged
    // partial file, or a source changed at the same size and mtime): the sender finds the
    // digest differs when it hashes that chunk and sends it, and the file completes.
    const std::uint64_t size = 3 * std::uint64_t{chunk_size} + 7;  // 4 chunks
    loopback lb({file_entry("p", size)});
    lb.run([&](file_id id) {
        receiver_machine::decision d = accept_partial(id, size, {0, 1, 2});
        d.have_digests[1].lo ^= 1;
        return d;
    });
    EXPECT_TRUE(lb.sender().finished());
    EXPECT_EQ(lb.file_results(), 1u);
    EXPECT_EQ(lb.sender().resent_chunks(), 1u);
    EXPECT_EQ(lb.sender().skipped_bytes(), 2 * std::uint64_t{chunk_size});
    EXPECT_EQ(lb.sender().confirmed_bytes(), chunk_size + 7u);
    EXPECT_EQ(lb.receiver().received_bytes(), chunk_size + 7u);
    EXPECT_EQ(lb.receiver().kept_bytes(), 2 * std::uint64_t{chunk_size});
}

TEST(TransferLoopback, FileDoneWaitsForTheResentChunk) {
    // Every chunk claimed, the last with other bytes: hashing the last chunk must not
    // release the FileDone (the receiver, which has every bit set, would check the digest
    // over its stale chunk and fail); the ack of the resent chunk releases it.
    const std::uint64_t size = 3 * std::uint64_t{chunk_size} + 9;  // 4 chunks
    loopback lb({file_entry("p", size)});
    lb.exchange_offers([&](file_id id) {
        receiver_machine::decision d = accept_partial(id, size, {0, 1, 2, 3});
        d.have_digests[3].hi ^= 4;
        return d;
    });
    std::vector<in_flight> frames = lb.pull_chunks();
    ASSERT_EQ(frames.size(), 1u);  // the resent chunk, pulled after the others were hashed
    EXPECT_EQ(frames[0].ref.index, chunk_index{3});
    EXPECT_EQ(lb.file_dones(file_id{0}), 0);
    lb.deliver(frames[0]);
    EXPECT_EQ(lb.file_dones(file_id{0}), 1);
    EXPECT_EQ(lb.file_results(), 1u);  // the digest matched: the replacement was in first
    EXPECT_EQ(lb.finish(), std::error_code{});
    EXPECT_TRUE(lb.sender().finished());
}

TEST(ReceiverMachine, OnlyAnOfferedChunkIsReplacedAndOnlyOnce) {
    const std::uint64_t size = 2 * std::uint64_t{chunk_size};
    receiver_machine r;
    std::vector<file_id> ids;
    wire::Offer o = raw_offer({{0, "f"}, {1, "g"}});
    o.mutable_entries(0)->set_size(size);
    o.mutable_entries(1)->set_size(size);
    ASSERT_EQ(r.on_offer(o, ids), std::error_code{});
    receiver_machine::decision d = accept_all(file_id{0});
    d.kind = wire::ACCEPT_PARTIAL;
    d.have = chunk_bitmap(2);
    d.have->set(0);
    d.have_digests = {digest128{1, 1}, digest128{}};
    r.accept({d, accept_all(file_id{1})});
    const digest128 other{2, 2};
    // Offered chunk 0: replaced once by other bytes, never again.
    EXPECT_FALSE(r.holds(file_id{0}, chunk_index{0}, other));
    r.on_chunk_written(file_id{0}, chunk_index{0}, other);
    EXPECT_EQ(r.kept_bytes(), 0u);
    EXPECT_EQ(r.received_bytes(), chunk_size);
    EXPECT_TRUE(r.holds(file_id{0}, chunk_index{0}, digest128{3, 3}));  // a later different copy is dropped
    r.on_chunk_written(file_id{0}, chunk_index{0}, digest128{3, 3});
    EXPECT_EQ(r.received_bytes(), chunk_size);
    // A file accepted whole: a chunk written is never rewritten by another digest.
    r.on_chunk_written(file_id{1}, chunk_index{1}, other);
    EXPECT_TRUE(r.holds(file_id{1}, chunk_index{1}, digest128{5, 5}));
    r.on_chunk_written(file_id{1}, chunk_index{1}, digest128{5, 5});
    EXPECT_EQ(r.received_bytes(), 2 * std::uint64_t{chunk_size});
    EXPECT_EQ(r.digests(file_id{1})[1], other);
}

TEST(SenderMachine, HaveDigestsAreBoundedAndMustMatchTheAccept) {
    const std::uint64_t size = 2 * std::uint64_t{chunk_size};  // 2 chunks
    std::string one(16, '\1');
    std::string three(48, '\1');
    auto have = [](std::uint32_t id, std::uint32_t first) {
        wire::HaveDigests h;
        h.set_file_id(id);
        h.set_first(first);
        return h;
    };
    sender_machine s(test_transfer_id, {file_entry("f", size), dir_entry("d")}, {});
    offer_all(s);
    EXPECT_EQ(s.on_have_digests(have(0, 0), as_bytes(three)), protocol_errc::bad_chunk);  // more than its chunks
    EXPECT_EQ(s.on_have_digests(have(0, 1), as_bytes(one)), protocol_errc::bad_chunk);    // not contiguous
    EXPECT_EQ(s.on_have_digests(have(0, 0), as_bytes(std::string(15, 'x'))), protocol_errc::payload_mismatch);
    EXPECT_EQ(s.on_have_digests(have(0, 0), {}), protocol_errc::payload_mismatch);
    EXPECT_EQ(s.on_have_digests(have(1, 0), as_bytes(one)), protocol_errc::unknown_file);  // a folder
    EXPECT_EQ(s.on_have_digests(have(2, 0), as_bytes(one)), protocol_errc::unknown_file);
    ASSERT_EQ(s.on_have_digests(have(0, 0), as_bytes(one)), std::error_code{});

    // The Accept claims two chunks; one digest came.
    wire::Accept a;
    a.set_transfer_id(test_transfer_id);
    wire::FileAccept* fa = a.add_files();
    fa->set_id(0);
    fa->set_kind(wire::ACCEPT_PARTIAL);
    fa->set_have(std::string(1, '\3'));
    a.add_files()->set_id(1);
    std::vector<wire::FileDone> done;
    EXPECT_EQ(s.on_accept(a, done), protocol_errc::bad_chunk);

    // Digests for a file then accepted whole are a broken peer too.
    sender_machine t(test_transfer_id, {file_entry("f", size)}, {});
    offer_all(t);
    ASSERT_EQ(t.on_have_digests(have(0, 0), as_bytes(one)), std::error_code{});
    wire::Accept b;
    b.set_transfer_id(test_transfer_id);
    b.add_files()->set_id(0);
    EXPECT_EQ(t.on_accept(b, done), protocol_errc::unexpected_message);
}

TEST(SenderMachine, BasisSumsAreBoundedAndReachTheFileOnlyThroughItsPartialAccept) {
    const std::uint64_t size = 3 * std::uint64_t{chunk_size};
    auto sums = [](std::uint32_t id, std::uint32_t first, std::uint64_t basis_size) {
        wire::BasisSums h;
        h.set_file_id(id);
        h.set_first(first);
        h.set_size(basis_size);
        h.set_tail_lo(7);
        return h;
    };
    std::string one(20, '\1');
    std::string two(40, '\1');
    transfer_options sync;
    sync.sync.emplace();
    sync.sync->set_share("www");
    const std::uint64_t big = 1000 * std::uint64_t{chunk_size};  // more blocks than max_basis_blocks(size)
    {
        sender_machine plain(test_transfer_id, {file_entry("f", size)}, {});
        offer_all(plain);
        EXPECT_EQ(plain.on_basis_sums(sums(0, 0, size), as_bytes(one)), protocol_errc::unexpected_message);  // not a sync
        sender_machine s(test_transfer_id, {file_entry("f", size), dir_entry("d")}, sync);
        offer_all(s);
        EXPECT_EQ(s.on_basis_sums(sums(1, 0, size), as_bytes(one)), protocol_errc::unknown_file);  // a folder
        EXPECT_EQ(s.on_basis_sums(sums(0, 0, size), as_bytes(std::string(19, 'x'))), protocol_errc::payload_mismatch);
        EXPECT_EQ(s.on_basis_sums(sums(0, 0, chunk_size), as_bytes(two)), protocol_errc::bad_chunk);  // past its size
        EXPECT_EQ(s.on_basis_sums(sums(0, 1, size), as_bytes(one)), protocol_errc::bad_chunk);  // not contiguous
    }
    {
        sender_machine s(test_transfer_id, {file_entry("f", size)}, sync);
        offer_all(s);
        std::string many(20 * (max_basis_blocks(size) + 1), '\2');
        EXPECT_EQ(s.on_basis_sums(sums(0, 0, big), as_bytes(many)), protocol_errc::bad_chunk);  // over the bound
    }
    sender_machine s(test_transfer_id, {file_entry("f", size)}, sync);
    offer_all(s);
    ASSERT_EQ(s.on_basis_sums(sums(0, 0, 2 * chunk_size + 10), as_bytes(one)), std::error_code{});
    EXPECT_EQ(s.on_basis_sums(sums(0, 1, 2 * chunk_size + 11), as_bytes(one)), protocol_errc::bad_chunk);  // size changed
    ASSERT_EQ(s.on_basis_sums(sums(0, 1, 2 * chunk_size + 10), as_bytes(one)), std::error_code{});
    wire::Accept a;
    a.set_transfer_id(test_transfer_id);
    wire::FileAccept* fa = a.add_files();
    fa->set_id(0);
    fa->set_kind(wire::ACCEPT_PARTIAL);
    fa->set_have(std::string(1, '\0'));  // no chunk kept as it is: the delta alone
    std::vector<wire::FileDone> done;
    ASSERT_EQ(s.on_accept(a, done), std::error_code{});
    const basis_sums* b = s.basis_of(file_id{0});
    ASSERT_NE(b, nullptr);
    EXPECT_EQ(b->size, 2 * std::uint64_t{chunk_size} + 10);
    EXPECT_EQ(b->weak.size(), 2u);
    EXPECT_EQ(b->weak[0], 0x01010101u);
    EXPECT_EQ(b->tail, (digest128{7, 0}));

    // Sums for a file then accepted whole are a broken peer.
    sender_machine t(test_transfer_id, {file_entry("f", size)}, sync);
    offer_all(t);
    ASSERT_EQ(t.on_basis_sums(sums(0, 0, size), as_bytes(one)), std::error_code{});
    wire::Accept whole;
    whole.set_transfer_id(test_transfer_id);
    whole.add_files()->set_id(0);
    EXPECT_EQ(t.on_accept(whole, done), protocol_errc::unexpected_message);
}

// Protocol 20: a file started from a copy of its older version has, at each index, the
// digest BasisSums tell of the block there: no HaveDigests travel for it, and the sender
// takes its digests from the sums; any other digest, and they travel as before.
TEST(TransferMachines, HaveDigestsThatAreTheBasisBlocksAreTakenFromBasisSums) {
    const std::uint64_t size = 4 * std::uint64_t{chunk_size} + 5;  // 5 chunks
    basis_sums b;
    b.size = 3 * std::uint64_t{chunk_size} + 100;  // 3 blocks and a tail
    for (std::uint32_t i = 0; i < 3; ++i) {
        b.weak.push_back(i);
        b.strong.push_back({i + 1, i + 1});
    }
    b.tail = {9, 9};
    receiver_machine::decision d = accept_all(file_id{0});
    d.kind = wire::ACCEPT_PARTIAL;
    d.have = chunk_bitmap(5);
    d.have_digests.resize(5);
    for (std::uint32_t c : {0u, 2u, 3u}) {
        d.have->set(c);
    }
    d.have_digests[0] = b.strong[0];
    d.have_digests[2] = b.strong[2];
    d.have_digests[3] = b.tail;
    d.sums = b;
    EXPECT_TRUE(receiver_machine::have_is_basis(d));
    EXPECT_TRUE(receiver_machine::have_digest_frames(d).empty());
    receiver_machine::decision other = d;
    other.have_digests[2] = {5, 5};  // a chunk written since (a resumed file)
    EXPECT_FALSE(receiver_machine::have_is_basis(other));
    EXPECT_EQ(receiver_machine::have_digest_frames(other).size(), 1u);
    receiver_machine::decision past = d;
    past.have->set(4);  // past the tail: no block of the sums there
    past.have_digests[4] = b.tail;
    EXPECT_FALSE(receiver_machine::have_is_basis(past));
    receiver_machine::decision resumed = d;
    resumed.sums.reset();  // a resume: no sums to take them from
    EXPECT_FALSE(receiver_machine::have_is_basis(resumed));

    // The sender takes the sums' digests for the chunks the bitmap names.
    transfer_options sync;
    sync.sync.emplace();
    sync.sync->set_share("www");
    auto sender_with_sums = [&](sender_machine& s) {
        offer_all(s);
        for (const auto& [h, bytes] : receiver_machine::basis_sum_frames(d)) {
            ASSERT_EQ(s.on_basis_sums(h, as_bytes(bytes)), std::error_code{});
        }
    };
    auto accept = [&](const receiver_machine::decision& x, bool from_basis) {
        wire::Accept a;
        a.set_transfer_id(test_transfer_id);
        wire::FileAccept* fa = a.add_files();
        fa->set_id(0);
        fa->set_kind(wire::ACCEPT_PARTIAL);
        fa->set_have(x.have->to_bytes());
        fa->set_have_from_basis(from_basis);
        return a;
    };
    std::vector<wire::FileDone> done;
    {
        sender_machine s(test_transfer_id, {file_entry("f", size)}, sync);
        sender_with_sums(s);
        wire::Accept a = accept(d, true);
        ASSERT_EQ(s.on_accept(a, done), std::error_code{});
        // Chunk 0 as the receiver has it is not sent; chunk 1, which it lacks, is.
        bool resend = false;  // (set only when the chunk must be sent)
        chunk_ref r0{file_id{0}, chunk_index{0}, 0, chunk_size, false};
        s.on_chunk_hashed(r0, b.strong[0], &resend);
        EXPECT_FALSE(resend);
        chunk_ref r2{file_id{0}, chunk_index{2}, 2 * std::uint64_t{chunk_size}, chunk_size, false};
        s.on_chunk_hashed(r2, {8, 8}, &resend);
        EXPECT_TRUE(resend);  // other bytes than its block 2 there: sent
    }
    {
        sender_machine s(test_transfer_id, {file_entry("f", size)}, sync);
        sender_with_sums(s);
        wire::Accept a = accept(past, true);
        EXPECT_EQ(s.on_accept(a, done), protocol_errc::bad_chunk);  // a chunk the sums cannot tell
    }
    {
        sender_machine s(test_transfer_id, {file_entry("f", size)}, {});
        offer_all(s);
        wire::Accept a = accept(d, true);
        EXPECT_EQ(s.on_accept(a, done), protocol_errc::bad_chunk);  // no sums to take them from
    }
}

TEST(ReceiverMachine, BasisSumFramesCarryEveryBlockAndTheTail) {
    receiver_machine::decision d = accept_all(file_id{3});
    d.kind = wire::ACCEPT_PARTIAL;
    d.have = chunk_bitmap(2);
    d.have_digests.resize(2);
    EXPECT_TRUE(receiver_machine::basis_sum_frames(d).empty());  // a resume: no sums
    basis_sums b;
    b.size = 5 * std::uint64_t{chunk_size} + 1;
    for (std::uint32_t i = 0; i < 5; ++i) {
        b.weak.push_back(i);
        b.strong.push_back({i, i});
    }
    b.tail = {9, 9};
    d.sums = b;
    auto frames = receiver_machine::basis_sum_frames(d);
    ASSERT_EQ(frames.size(), 1u);
    EXPECT_EQ(frames[0].first.file_id(), 3u);
    EXPECT_EQ(frames[0].first.size(), b.size);
    EXPECT_EQ(frames[0].first.tail_lo(), 9u);
    EXPECT_EQ(frames[0].second.size(), 100u);

    // Many blocks: frames of at most a chunk's worth of payload (the peer's frame buffers).
    basis_sums many;
    many.size = 30000 * std::uint64_t{chunk_size};
    many.weak.assign(30000, 1);
    many.strong.assign(30000, digest128{1, 2});
    d.sums = many;
    frames = receiver_machine::basis_sum_frames(d);
    ASSERT_EQ(frames.size(), 3u);
    std::uint32_t first = 0;
    for (const auto& [h, bytes] : frames) {
        EXPECT_EQ(h.first(), first);
        EXPECT_LE(bytes.size(), chunk_size);
        first += static_cast<std::uint32_t>(bytes.size() / 20);
    }
    EXPECT_EQ(first, 30000u);

    // A basis shorter than a block: one frame, the tail alone.
    d.sums = basis_sums{};
    d.sums->size = 10;
    frames = receiver_machine::basis_sum_frames(d);
    ASSERT_EQ(frames.size(), 1u);
    EXPECT_TRUE(frames[0].second.empty());
}

TEST(ReceiverMachine, HaveDigestFramesSplitLargeFiles) {
    const std::uint64_t chunks = 2 * std::uint64_t{receiver_machine::max_have_digests_per_frame} + 3;
    receiver_machine::decision d = accept_all(file_id{5});
    d.kind = wire::ACCEPT_PARTIAL;
    d.have = chunk_bitmap(chunks);
    d.have_digests.resize(chunks);
    std::uint64_t set = 0;
    for (std::uint64_t i = 0; i < chunks; i += (i % 7 == 0 ? 2 : 1)) {
        d.have->set(i);
        d.have_digests[i] = {i, ~i};
        ++set;
    }
    auto frames = receiver_machine::have_digest_frames(d);
    ASSERT_EQ(frames.size(), (set + receiver_machine::max_have_digests_per_frame - 1) /
                                 receiver_machine::max_have_digests_per_frame);
    std::uint64_t ordinal = 0;
    for (const auto& [h, bytes] : frames) {
        EXPECT_EQ(h.file_id(), 5u);
        EXPECT_EQ(h.first(), ordinal);
        EXPECT_EQ(bytes.size() % 16, 0u);
        EXPECT_LE(bytes.size(), 16u * receiver_machine::max_have_digests_per_frame);
        ordinal += bytes.size() / 16;
    }
    EXPECT_EQ(ordinal, set);
    EXPECT_TRUE(receiver_machine::have_digest_frames(accept_all(file_id{1})).empty());
}

TEST(TransferLoopback, AcceptPartialWithEveryChunkPresent) {
    const std::uint64_t size = chunk_size + 1;
    loopback lb({file_entry("p", size)});
    lb.run([&](file_id id) { return accept_partial(id, size, {0, 1}); });
    EXPECT_EQ(lb.file_results(), 1u);
    EXPECT_TRUE(lb.sender().finished());
    EXPECT_EQ(lb.sender().skipped_bytes(), size);
    EXPECT_EQ(lb.sender().confirmed_bytes(), 0u);
    EXPECT_EQ(lb.receiver().received_bytes(), 0u);
}

TEST(ReceiverMachine, MalformedPartialDecisionFallsBackToAcceptAll) {
    receiver_machine r;
    std::vector<file_id> ids;
    wire::Offer o = raw_offer({{0, "f"}});
    o.mutable_entries(0)->set_size(2 * std::uint64_t{chunk_size});
    ASSERT_EQ(r.on_offer(o, ids), std::error_code{});
    receiver_machine::decision d = accept_all(file_id{0});
    d.kind = wire::ACCEPT_PARTIAL;
    d.have = chunk_bitmap(3);  // the file has 2 chunks
    d.have_digests.resize(3);
    wire::Accept a = r.accept({d});
    ASSERT_EQ(a.files_size(), 1);
    EXPECT_EQ(a.files(0).kind(), wire::ACCEPT_ALL);
    EXPECT_TRUE(a.files(0).have().empty());
    EXPECT_FALSE(r.has_chunk(file_id{0}, chunk_index{0}));
}

// ---------------------------------------------------------------------------------------
// Receiver: offer validation

TEST(ReceiverMachine, RefusesBadPaths) {
    for (const char* path : {"../x", "/abs", "a//b", "", "a/./b", "a/..", "a/", "./a", "a/.", "..\\a/.."}) {
        receiver_machine r;
        EXPECT_EQ(offer_error(r, raw_offer({{0, path}})), protocol_errc::bad_path) << '"' << path << '"';
        EXPECT_EQ(r.total_files(), 0u);
    }
    receiver_machine r;
    EXPECT_EQ(offer_error(r, raw_offer({{0, "ok"}, {1, "ok/../../escape"}})), protocol_errc::bad_path);
}

TEST(ReceiverMachine, RefusesDuplicatePaths) {
    {
        receiver_machine r;
        EXPECT_EQ(offer_error(r, raw_offer({{0, "a"}, {1, "b"}, {2, "b"}})), protocol_errc::duplicate_path);
    }
    {
        receiver_machine r;  // across batches too
        EXPECT_EQ(offer_error(r, raw_offer({{0, "a"}, {1, "b"}}, false, 3)), std::error_code{});
        EXPECT_EQ(offer_error(r, raw_offer({{2, "b"}}, true, 3)), protocol_errc::duplicate_path);
    }
}

// Entries go by name, each name compared as bytes, a folder right before what it holds.
TEST(ReceiverMachine, RefusesAnOfferOutOfOrder) {
    EXPECT_TRUE(wire_path_less("a", "a/b"));
    EXPECT_TRUE(wire_path_less("a/b", "a.txt"));  // '/' before every other byte
    EXPECT_TRUE(wire_path_less("a/z/z", "a0"));
    EXPECT_TRUE(wire_path_less("B", "a"));
    EXPECT_TRUE(wire_path_less("a", "\xff"));  // bytes, unsigned
    EXPECT_FALSE(wire_path_less("a", "a"));
    EXPECT_FALSE(wire_path_less("a.txt", "a/b"));
    for (const auto& [first, second] : std::vector<std::pair<std::string, std::string>>{
             {"b", "a"}, {"a.txt", "a/b"}, {"a/b", "a"}, {"x/a/b/c", "x/a"}, {"\xff", "a"}}) {
        receiver_machine r;  // in one batch and across two
        EXPECT_EQ(offer_error(r, raw_offer({{0, first}, {1, second}})), protocol_errc::path_out_of_order)
            << first << " then " << second;
        receiver_machine t;
        EXPECT_EQ(offer_error(t, raw_offer({{0, first}}, false, 2)), std::error_code{});
        EXPECT_EQ(offer_error(t, raw_offer({{1, second}}, true, 2)), protocol_errc::path_out_of_order);
        EXPECT_EQ(t.total_files(), 1u);
    }
    receiver_machine r;
    wire::Offer o = raw_offer({{0, "a"}, {1, "a/b"}, {2, "a/b/c"}, {3, "a/z"}, {4, "a.txt"}, {5, "b"}});
    o.mutable_entries(0)->set_kind(wire::ENTRY_DIR);
    o.mutable_entries(1)->set_kind(wire::ENTRY_DIR);
    EXPECT_EQ(offer_error(r, o), std::error_code{});
}

// The checks keep no set of paths: the peer announced one file and offers 200, and every
// check still holds across batches; a refused entry leaves nothing behind. The offered
// paths are looked up in offer order once all are in.
TEST(ReceiverMachine, PathChecksHoldWhenTheEntriesOutgrowTheAnnouncedCount) {
    const std::string long_dir(40, 'd');
    auto name = [&](std::uint32_t i) {
        char n[16];
        std::snprintf(n, sizeof(n), "x%03u", i);
        return (i % 2 == 0 ? std::string("a/") : long_dir + "/") + n;
    };
    auto offer_all = [&](receiver_machine& r) {
        ASSERT_EQ(offer_error(r, raw_offer({{0, "a/f"}, {1, "a/g"}}, false, 1)), std::error_code{});
        std::vector<std::pair<std::uint32_t, std::string>> more;
        for (std::uint32_t i = 2; i < 200; i += 2) {
            more.emplace_back(more.size() + 2, name(i));
        }
        for (std::uint32_t i = 3; i < 200; i += 2) {
            more.emplace_back(more.size() + 2, name(i));
        }
        ASSERT_EQ(offer_error(r, raw_offer(more, false, 1)), std::error_code{});
    };
    receiver_machine r;
    offer_all(r);
    auto offered_file = [&r](const std::string& path) {
        return r.paths().find(path) == offered_paths::kind::file;
    };
    EXPECT_TRUE(offered_file("a/f"));
    EXPECT_TRUE(offered_file(name(198)));
    EXPECT_TRUE(offered_file(name(199)));
    EXPECT_FALSE(offered_file("a"));  // a folder they lie in
    EXPECT_FALSE(offered_file("a/f/z"));
    EXPECT_EQ(offer_error(r, raw_offer({{200, name(199) + "/z"}}, false, 1)), protocol_errc::duplicate_path);
    EXPECT_FALSE(offered_file(name(199) + "/z"));
    EXPECT_EQ(r.total_files(), 200u);
    EXPECT_EQ(offer_error(r, raw_offer({{200, name(199)}}, true, 1)), protocol_errc::duplicate_path);
    EXPECT_EQ(offer_error(r, raw_offer({{200, "a/zz"}}, true, 1)), protocol_errc::path_out_of_order);

    receiver_machine t;
    offer_all(t);
    const offered_paths& paths = t.paths();
    EXPECT_EQ(paths.size(), 200u);
    EXPECT_EQ(paths.find("a"), offered_paths::kind::folder);
    EXPECT_EQ(paths.find(long_dir), offered_paths::kind::folder);
    EXPECT_EQ(paths.find("a/f"), offered_paths::kind::file);
    EXPECT_EQ(paths.find(name(101)), offered_paths::kind::file);
    EXPECT_EQ(paths.find("a/f/z"), offered_paths::kind::none);
    EXPECT_EQ(paths.find("a/h"), offered_paths::kind::none);
    EXPECT_EQ(paths.find("b"), offered_paths::kind::none);
    EXPECT_EQ(paths.find(std::string(41, 'd')), offered_paths::kind::none);
    EXPECT_EQ(paths.find(std::string(39, 'd')), offered_paths::kind::none);
}

// The receiver holds the entries of files in flight, not of every file offered: a
// finished file's entry goes once the files before it are finished too, and its path
// stays in paths(). A forgotten file's late chunk is confirmed again, its FileDone is
// unexpected, as for any finished file.
TEST(ReceiverMachine, ForgetsFinishedEntriesAndKeepsTheirPaths) {
    receiver_machine r;
    constexpr std::uint32_t batch = 1000;
    constexpr std::uint32_t batches = 10;
    auto offer = [&](std::uint32_t first, std::uint32_t count, bool last) {
        std::vector<std::pair<std::uint32_t, std::string>> entries;
        for (std::uint32_t id = first; id < first + count; ++id) {
            entries.emplace_back(id, numbered("f", id));
        }
        std::vector<file_id> ids;
        EXPECT_EQ(r.on_offer(raw_offer(entries, last, batch * batches + 1), ids), std::error_code{});
        return ids;
    };
    auto decide = [&](const std::vector<file_id>& ids, wire::AcceptKind kind) {
        std::vector<receiver_machine::decision> decisions;
        for (file_id id : ids) {
            receiver_machine::decision d = accept_all(id);
            d.kind = kind;
            decisions.push_back(std::move(d));
        }
        r.accept(decisions);
    };
    // One file in flight (accepted, not finished) holds every entry after it.
    std::vector<file_id> first = offer(0, 1, false);
    decide(first, wire::ACCEPT_ALL);
    for (std::uint32_t b = 0; b < batches; ++b) {
        decide(offer(1 + b * batch, batch, b + 1 == batches), wire::ACCEPT_SKIP);
    }
    EXPECT_EQ(r.held_entries(), std::size_t{batch * batches + 1});
    EXPECT_FALSE(r.all_finished());

    // It finishes (one chunk, whole): every entry is forgotten.
    file_id f = first[0];
    EXPECT_TRUE(r.on_chunk_written(f, chunk_index{0}, digest128{1, 2}));
    bool ok = false;
    ASSERT_TRUE(r.ready(f, ok));
    EXPECT_TRUE(ok);
    r.on_file_finished(f);
    EXPECT_EQ(r.held_entries(), std::size_t{batch * batches + 1});  // until the node is done with it
    r.release(f);
    EXPECT_EQ(r.held_entries(), 0u);
    EXPECT_TRUE(r.all_finished());
    EXPECT_EQ(r.total_files(), std::uint64_t{batch * batches + 1});
    EXPECT_EQ(r.skipped_files(), std::uint64_t{batch * batches});

    for (file_id id : {f, file_id{batch * batches}}) {
        EXPECT_FALSE(r.entry_held(id));
        EXPECT_TRUE(r.finished(id));
        EXPECT_FALSE(r.aborted(id));
        EXPECT_THROW(r.entry(id), std::out_of_range);
    }
    // A late copy of its chunk is admitted (the node confirms it again) and changes nothing.
    wire::Chunk late;
    late.set_file_id(f.value);
    late.set_index(0);
    late.set_raw_len(10);
    EXPECT_EQ(r.on_chunk(late, 10), std::error_code{});
    EXPECT_FALSE(r.on_chunk_written(f, chunk_index{0}, digest128{3, 4}));
    wire::FileDone done;
    done.set_file_id(f.value);
    EXPECT_EQ(r.on_file_done(done), protocol_errc::unexpected_message);
    late.set_file_id(batch * batches + 1);
    EXPECT_EQ(r.on_chunk(late, 10), protocol_errc::unknown_file);  // never offered
    EXPECT_THROW(r.finished(file_id{batch * batches + 1}), std::out_of_range);

    // The paths stay, in offer order.
    ASSERT_EQ(r.paths().size(), std::size_t{batch * batches + 1});
    EXPECT_EQ(r.paths().path(0), numbered("f", 0));
    EXPECT_EQ(r.paths().path(batch * batches), numbered("f", batch * batches));
    EXPECT_EQ(r.paths().find(numbered("f", 4321)), offered_paths::kind::file);
}

TEST(ReceiverMachine, RefusesAFileThatAnotherEntryNeedsAsAFolder) {
    // In one batch and across two: "a" cannot be both a file and the folder of "a/b".
    for (const auto& [first, second] : std::vector<std::pair<std::string, std::string>>{{"a", "a/b"}, {"x/a", "x/a/b/c"}}) {
        receiver_machine r;
        EXPECT_EQ(offer_error(r, raw_offer({{0, first}}, false, 2)), std::error_code{});
        EXPECT_EQ(offer_error(r, raw_offer({{1, second}}, true, 2)), protocol_errc::duplicate_path)
            << first << " then " << second;
        receiver_machine t;
        EXPECT_EQ(offer_error(t, raw_offer({{0, first}, {1, second}})), protocol_errc::duplicate_path);
    }
    // A folder entry, what lies in it, and siblings are fine; a folder never offered too.
    receiver_machine r;
    wire::Offer o = raw_offer({{0, "d"}, {1, "d/f"}, {2, "d/g"}, {3, "d/h/i"}, {4, "e"}});
    o.mutable_entries(0)->set_kind(wire::ENTRY_DIR);
    EXPECT_EQ(offer_error(r, o), std::error_code{});
}

TEST(ReceiverMachine, RefusesNonDenseIds) {
    {
        receiver_machine r;
        EXPECT_EQ(offer_error(r, raw_offer({{1, "a"}})), protocol_errc::duplicate_id);
    }
    {
        receiver_machine r;
        EXPECT_EQ(offer_error(r, raw_offer({{0, "a"}, {2, "b"}})), protocol_errc::duplicate_id);
    }
    {
        receiver_machine r;
        EXPECT_EQ(offer_error(r, raw_offer({{0, "a"}, {0, "b"}})), protocol_errc::duplicate_id);
    }
    {
        receiver_machine r;  // the second batch must continue where the first ended
        EXPECT_EQ(offer_error(r, raw_offer({{0, "a"}}, false, 2)), std::error_code{});
        EXPECT_EQ(offer_error(r, raw_offer({{0, "b"}}, true, 2)), protocol_errc::duplicate_id);
    }
}

TEST(ReceiverMachine, RefusesTooManyFiles) {
    const receiver_limits limits{.max_files = 3};
    {
        receiver_machine r(limits);
        std::vector<file_id> ids;
        EXPECT_EQ(r.on_offer(raw_offer({{0, "a"}, {1, "b"}, {2, "c"}}), ids), std::error_code{});
        EXPECT_EQ(ids, (std::vector<file_id>{file_id{0}, file_id{1}, file_id{2}}));
    }
    {
        receiver_machine r(limits);  // announced total over the limit
        EXPECT_EQ(offer_error(r, raw_offer({{0, "a"}}, false, 4)), protocol_errc::too_many_files);
    }
    {
        receiver_machine r(limits);  // a lying total does not help
        EXPECT_EQ(offer_error(r, raw_offer({{0, "a"}, {1, "b"}, {2, "c"}, {3, "d"}}, true, 1)),
                  protocol_errc::too_many_files);
    }
    {
        receiver_machine r(limits);  // counted across batches
        EXPECT_EQ(offer_error(r, raw_offer({{0, "a"}, {1, "b"}}, false, 3)), std::error_code{});
        EXPECT_EQ(offer_error(r, raw_offer({{2, "c"}, {3, "d"}}, true, 3)), protocol_errc::too_many_files);
    }
}

TEST(ReceiverMachine, RefusesOfferAfterLastAndForeignTransfer) {
    {
        receiver_machine r;
        EXPECT_EQ(offer_error(r, raw_offer({{0, "a"}})), std::error_code{});
        EXPECT_TRUE(r.all_offered());
        EXPECT_EQ(offer_error(r, raw_offer({{1, "b"}})), protocol_errc::unexpected_message);
        EXPECT_EQ(r.total_files(), 1u);
    }
    {
        receiver_machine r;
        EXPECT_EQ(offer_error(r, raw_offer({{0, "a"}}, false, 2)), std::error_code{});
        EXPECT_FALSE(r.all_offered());
        wire::Offer other = raw_offer({{1, "b"}}, true, 2);
        other.set_transfer_id(test_transfer_id + 1);
        EXPECT_EQ(offer_error(r, other), protocol_errc::unexpected_message);
    }
}

TEST(ReceiverMachine, RefusesUnknownEntryKindAndHugeFile) {
    {
        receiver_machine r;
        wire::Offer o = raw_offer({{0, "a"}});
        o.mutable_entries(0)->set_kind(static_cast<wire::EntryKind>(5));
        EXPECT_EQ(offer_error(r, o), protocol_errc::bad_path);
    }
    {
        receiver_machine r;  // more chunks than a chunk index can name
        wire::Offer o = raw_offer({{0, "a"}});
        o.mutable_entries(0)->set_size((std::uint64_t{1} << 32) * chunk_size + 1);
        EXPECT_EQ(offer_error(r, o), protocol_errc::bad_chunk);
    }
}

TEST(TransferLoopback, ASyncsSymlinkTravelsAsItsTargetAndIsNeverSentData) {
    transfer_options sync;
    sync.sync.emplace();
    sync.sync->set_share("www");
    entry_info link;
    link.path = "d/link";
    link.is_link = true;
    link.link_target = "../some where/\xff";  // any bytes but NUL
    link.mtime_ns = test_mtime_ns;
    loopback lb({dir_entry("d"), link, file_entry("d/m", 5)}, sync);
    wire::Offer offer = lb.sender().make_offer(0);
    ASSERT_EQ(offer.entries_size(), 3);
    EXPECT_EQ(offer.entries(1).kind(), wire::ENTRY_SYMLINK);
    EXPECT_EQ(offer.entries(1).link_target(), link.link_target);
    EXPECT_EQ(offer.entries(1).size(), 0u);
    // The receiver makes the link itself and answers ACCEPT_SKIP with what it did.
    lb.exchange_offers([](file_id id) {
        receiver_machine::decision d = accept_all(id);
        if (id == file_id{1}) {
            d.kind = wire::ACCEPT_SKIP;
            d.action = wire::SYNC_CREATE;
        }
        return d;
    });
    const entry_info& got = lb.receiver().entry(file_id{1});
    EXPECT_TRUE(got.is_link);
    EXPECT_FALSE(got.is_file());
    EXPECT_EQ(got.link_target, link.link_target);
    EXPECT_EQ(got.mode, 0777u);
    EXPECT_TRUE(lb.receiver().finished(file_id{1}));
    // The sender is done with the folder and the link at their Accept (the node reports
    // a skipped entry's action from the Accept itself): only d/m's state is held.
    EXPECT_EQ(lb.sender().files_done(), 2u);
    EXPECT_EQ(lb.sender().held_states(), 1u);
    EXPECT_EQ(lb.sender().action(file_id{1}), wire::SYNC_NONE);
    // No chunk of it is handed out, and none is taken.
    std::vector<in_flight> chunks = lb.pull_chunks();
    ASSERT_EQ(chunks.size(), 1u);
    EXPECT_EQ(chunks[0].ref.file, file_id{2});
    EXPECT_EQ(lb.receiver().on_chunk(chunk_header(file_id{1}, chunk_index{0}, 1), 1), protocol_errc::unknown_file);
    lb.deliver(chunks[0]);
    EXPECT_EQ(lb.finish(), std::error_code{});
    EXPECT_TRUE(lb.sender().finished());
}

TEST(ReceiverMachine, RefusesASymlinkOutsideASyncOrWithATargetNoLinkCanHold) {
    auto link_offer = [](std::string target, bool sync, std::uint64_t size = 0) {
        wire::Offer o = raw_offer({{0, "l"}});
        o.mutable_entries(0)->set_kind(wire::ENTRY_SYMLINK);
        o.mutable_entries(0)->set_size(size);
        o.mutable_entries(0)->set_link_target(std::move(target));
        if (sync) {
            o.mutable_sync()->set_share("www");
        }
        return o;
    };
    {
        receiver_machine r;
        EXPECT_EQ(offer_error(r, link_offer("ok", true)), std::error_code{});
    }
    for (const wire::Offer& bad : {link_offer("ok", false), link_offer("", true), link_offer(std::string("a\0b", 3), true),
                                   link_offer(std::string(max_link_target + 1, 'x'), true), link_offer("ok", true, 10)}) {
        receiver_machine r;
        EXPECT_EQ(offer_error(r, bad), protocol_errc::bad_path);
    }
    {
        receiver_machine r;  // a link is not a folder: nothing may lie in it
        wire::Offer o = link_offer("/etc", true);
        wire::Entry* e = o.add_entries();
        e->set_id(1);
        e->set_path("l/passwd");
        e->set_kind(wire::ENTRY_FILE);
        o.set_total_files(2);
        EXPECT_EQ(offer_error(r, o), protocol_errc::duplicate_path);
    }
}

TEST(ReceiverMachine, RefusesSizesNear2To64) {
    // chunk_count() once wrapped for these sizes, to 0 chunks, and the file was accepted as
    // an "empty" file of 2^64-1 bytes (found by receiver_machine_fuzz).
    for (std::uint64_t size : {~std::uint64_t{0}, ~std::uint64_t{0} - chunk_size + 2}) {
        receiver_machine r;
        wire::Offer o = raw_offer({{0, "a"}});
        o.mutable_entries(0)->set_size(size);
        EXPECT_EQ(offer_error(r, o), protocol_errc::bad_chunk) << size;
    }
}

TEST(ReceiverMachine, RefusesOffersWhoseTotalWouldWrap) {
    // Sizes that each fit but whose sum passed 2^64 once wrapped total_bytes() to a small
    // figure (found by receiver_machine_fuzz's model).
    constexpr std::uint64_t big = std::uint64_t{1} << 49;  // 2^31 chunks: allowed
    receiver_machine r;
    wire::Offer first = raw_offer({}, false, 1 << 15);
    for (std::uint32_t i = 0; i < (1u << 15) - 1; ++i) {
        wire::Entry* e = first.add_entries();
        e->set_id(i);
        e->set_path(numbered("f", i));
        e->set_size(big);
    }
    ASSERT_EQ(offer_error(r, first), std::error_code{});
    EXPECT_EQ(r.total_bytes(), big * ((1u << 15) - 1));

    wire::Offer last = raw_offer({{(1u << 15) - 1, "last"}});
    last.mutable_entries(0)->set_size(big);  // the sum would be 2^64
    EXPECT_EQ(offer_error(r, last), protocol_errc::bad_chunk);
    EXPECT_EQ(r.total_bytes(), big * ((1u << 15) - 1));
}

// ---------------------------------------------------------------------------------------
// Receiver: chunk admission and completion

// A receiver that was offered: 0 "f" (2 chunks), 1 "d" (dir), 2 "s" (skipped), 3 "e"
// (empty), then in a second batch, not yet decided, 4 "u".
class ReceiverChunks : public ::testing::Test {
protected:
    static constexpr std::uint64_t f_size = chunk_size + 100;

    void SetUp() override {
        wire::Offer first = raw_offer({{0, "a-f"}, {1, "b-d"}, {2, "c-s"}, {3, "d-e"}}, false, 5);
        first.mutable_entries(0)->set_size(f_size);
        first.mutable_entries(1)->set_kind(wire::ENTRY_DIR);
        first.mutable_entries(2)->set_size(50);
        first.mutable_entries(3)->set_size(0);
        std::vector<file_id> ids;
        ASSERT_EQ(r_.on_offer(first, ids), std::error_code{});
        receiver_machine::decision skip = accept_all(file_id{2});
        skip.kind = wire::ACCEPT_SKIP;
        wire::Accept a = r_.accept({accept_all(file_id{0}), accept_all(file_id{1}), skip, accept_all(file_id{3})});
        // The folder (always "all") and the skipped file are unchanged: a bit each.
        ASSERT_EQ(a.files_size(), 2);
        EXPECT_EQ(a.unchanged(), std::string(1, '\x06'));
        EXPECT_EQ(a.files(0).id(), 0u);
        EXPECT_EQ(a.files(1).id(), 3u);
        ASSERT_EQ(r_.on_offer(raw_offer({{4, "u"}}, true, 5), ids), std::error_code{});
    }

    std::error_code admit(std::uint32_t file, std::uint32_t index, std::uint32_t raw_len, std::uint32_t payload_len,
                          wire::Codec codec = wire::CODEC_RAW) const {
        wire::Chunk c = chunk_header(file_id{file}, chunk_index{index}, raw_len);
        c.set_codec(codec);
        return r_.on_chunk(c, payload_len);
    }

    wire::FileDone done_for(std::uint32_t file, digest128 d) const {
        wire::FileDone done;
        done.set_file_id(file);
        done.set_digest_lo(d.lo);
        done.set_digest_hi(d.hi);
        return done;
    }

    receiver_machine r_;
};

TEST_F(ReceiverChunks, AdmitsValidChunks) {
    EXPECT_EQ(admit(0, 0, chunk_size, chunk_size), std::error_code{});
    EXPECT_EQ(admit(0, 1, 100, 100), std::error_code{});
    EXPECT_EQ(admit(0, 1, 100, 37, wire::CODEC_ZSTD), std::error_code{});
    EXPECT_EQ(admit(0, 0, chunk_size, chunk_size - 1, wire::CODEC_ZSTD), std::error_code{});
}

TEST_F(ReceiverChunks, RefusesBadChunks) {
    EXPECT_EQ(admit(5, 0, 10, 10), protocol_errc::unknown_file);             // never offered
    EXPECT_EQ(admit(~0u, 0, 10, 10), protocol_errc::unknown_file);
    EXPECT_EQ(admit(0, 2, 100, 100), protocol_errc::bad_chunk);              // index past the end
    EXPECT_EQ(admit(0, 0, chunk_size - 1, chunk_size - 1), protocol_errc::bad_chunk);  // wrong raw_len
    EXPECT_EQ(admit(0, 1, chunk_size, chunk_size), protocol_errc::bad_chunk);  // last chunk is short
    EXPECT_EQ(admit(0, 1, 100, 99), protocol_errc::payload_mismatch);        // raw payload too short
    EXPECT_EQ(admit(0, 1, 100, 101), protocol_errc::payload_mismatch);       // raw payload too long
    EXPECT_EQ(admit(0, 1, 100, 0, wire::CODEC_ZSTD), protocol_errc::payload_mismatch);
    EXPECT_EQ(admit(0, 1, 100, max_payload_len + 1, wire::CODEC_ZSTD), protocol_errc::payload_mismatch);
    EXPECT_EQ(admit(0, 1, 100, 100, wire::CODEC_ZSTD), protocol_errc::payload_mismatch);  // not smaller than raw
    EXPECT_EQ(admit(0, 0, chunk_size, max_payload_len, wire::CODEC_ZSTD), protocol_errc::payload_mismatch);
    EXPECT_EQ(admit(0, 1, 100, 100, static_cast<wire::Codec>(9)), protocol_errc::bad_chunk);
    EXPECT_EQ(admit(1, 0, 0, 0), protocol_errc::unknown_file);               // a directory
    EXPECT_EQ(admit(2, 0, 50, 50), protocol_errc::unknown_file);             // skipped
    EXPECT_EQ(admit(3, 0, 0, 0), protocol_errc::bad_chunk);                  // empty file has no chunk
    EXPECT_EQ(admit(4, 0, 10, 10), protocol_errc::unknown_file);             // offered, not decided
}

// CODEC_SAME ("the bytes you have"): only for a one-chunk file accepted whole with the
// digest of the receiver's own file (FileAccept.same_as), with no payload and that digest.
TEST(ReceiverMachine, ACodecSameChunkIsTakenOnlyAsTheFileItToldItHas) {
    receiver_machine r;
    wire::Offer offer = raw_offer({{0, "a"}, {1, "b"}, {2, "c"}});
    offer.mutable_entries(2)->set_size(chunk_size + 1);  // two chunks
    std::vector<file_id> ids;
    ASSERT_EQ(r.on_offer(offer, ids), std::error_code{});
    const digest128 mine{0x1111, 0x2222};
    receiver_machine::decision a = accept_all(file_id{0});
    a.same_as = mine;
    receiver_machine::decision c = accept_all(file_id{2});
    c.same_as = mine;
    wire::Accept accept = r.accept({a, accept_all(file_id{1}), c});
    ASSERT_EQ(accept.files_size(), 3);
    EXPECT_EQ(accept.files(0).same_as().size(), 16u);
    EXPECT_TRUE(accept.files(1).same_as().empty());
    EXPECT_TRUE(accept.files(2).same_as().empty());  // not one chunk: not told
    auto admit = [&](std::uint32_t file, digest128 d, std::uint32_t payload_len) {
        wire::Chunk chunk = chunk_header(file_id{file}, chunk_index{0}, 10, d);
        chunk.set_codec(wire::CODEC_SAME);
        return r.on_chunk(chunk, payload_len);
    };
    EXPECT_EQ(admit(0, mine, 0), std::error_code{});
    EXPECT_EQ(admit(0, digest128{0x1111, 0x2223}, 0), protocol_errc::bad_chunk);  // not what it has
    EXPECT_EQ(admit(0, mine, 10), protocol_errc::payload_mismatch);
    EXPECT_EQ(admit(1, mine, 0), protocol_errc::bad_chunk);  // nothing was told of it

    // The sender takes the digest only where it may stand.
    sender_machine s(test_transfer_id, {file_entry("a", 10), file_entry("b", 10), file_entry("c", chunk_size + 1)}, {});
    offer_all(s);
    std::vector<wire::FileDone> done_now;
    wire::Accept told;
    told.set_transfer_id(test_transfer_id);
    for (std::uint32_t i = 0; i < 2; ++i) {
        wire::FileAccept* fa = told.add_files();
        fa->set_id(i);
        fa->set_kind(wire::ACCEPT_ALL);
    }
    std::string bytes;
    put_digest(bytes, mine);
    told.mutable_files(0)->set_same_as(bytes);
    told.add_files()->set_id(2);
    {
        sender_machine other(test_transfer_id,
                             {file_entry("a", 10), file_entry("b", 10), file_entry("c", chunk_size + 1)}, {});
        offer_all(other);
        wire::Accept bad = told;  // on a file of two chunks: refused
        bad.mutable_files(2)->set_same_as(bytes);
        EXPECT_EQ(other.on_accept(bad, done_now), protocol_errc::unexpected_message);
    }
    ASSERT_EQ(s.on_accept(told, done_now), std::error_code{});
    EXPECT_EQ(s.receiver_same_as(file_id{0}), mine);
    EXPECT_NE(s.receiver_same_as(file_id{0}), (digest128{0x1111, 0x2223}));
    EXPECT_FALSE(s.receiver_same_as(file_id{1}));
}

// Small changed files (protocol 16): the receiver's sums of its file at the path go in
// SmallSums frames before the Accept, only for files it accepts whole; such a file may
// then come as a CODEC_DELTA chunk, and no other file may.
TEST(ReceiverMachine, SmallSumsGoForWholeAcceptsAndLetACodecDeltaChunkIn) {
    receiver_machine r;
    wire::Offer offer = raw_offer({{0, "a"}, {1, "b"}, {2, "c"}});
    for (int i = 0; i < 3; ++i) {
        offer.mutable_entries(i)->set_size(10000);
    }
    std::vector<file_id> ids;
    ASSERT_EQ(r.on_offer(offer, ids), std::error_code{});
    small_sums sums;
    sums.block_size = 1024;
    sums.blocks.assign(9, 0x0102030405060708ull);
    receiver_machine::decision a = accept_all(file_id{0});
    a.small = sums;
    receiver_machine::decision c = accept_all(file_id{2});
    c.small = sums;
    c.kind = wire::ACCEPT_SKIP;  // unchanged after all: nothing told
    std::vector<receiver_machine::decision> decisions{a, accept_all(file_id{1}), c};
    auto frames = receiver_machine::small_sum_frames(decisions);
    ASSERT_EQ(frames.size(), 1u);
    ASSERT_EQ(frames[0].first.file_ids_size(), 1);
    EXPECT_EQ(frames[0].first.file_ids(0), 0u);
    EXPECT_EQ(frames[0].first.block_sizes(0), 1024u);
    EXPECT_EQ(frames[0].first.blocks(0), 9u);
    EXPECT_EQ(frames[0].second.size(), 9 * 8u);
    r.accept(decisions);
    auto admit = [&](std::uint32_t file, std::uint32_t payload_len) {
        wire::Chunk chunk = chunk_header(file_id{file}, chunk_index{0}, 10000);
        chunk.set_codec(wire::CODEC_DELTA);
        return r.on_chunk(chunk, payload_len);
    };
    EXPECT_EQ(admit(0, 100), std::error_code{});
    EXPECT_EQ(admit(0, 10000), protocol_errc::payload_mismatch);  // not smaller than its bytes
    EXPECT_EQ(admit(1, 100), protocol_errc::bad_chunk);           // nothing was told of it
}

TEST(SenderMachine, SmallSumsAreBoundedAndReachTheFileOnlyThroughItsAccept) {
    transfer_options sync;
    sync.sync.emplace();
    sync.sync->set_share("www");
    const std::vector<entry_info> entries{file_entry("f", 10000), file_entry("g", 100),
                                          file_entry("h", 20 * std::uint64_t{chunk_size}), dir_entry("d")};
    auto frame = [](std::vector<std::uint32_t> ids, std::uint32_t block_size, std::uint32_t blocks) {
        wire::SmallSums h;
        for (std::uint32_t id : ids) {
            h.add_file_ids(id);
            h.add_block_sizes(block_size);
            h.add_blocks(blocks);
        }
        return h;
    };
    const std::string nine(9 * 8, '\1');
    {
        sender_machine plain(test_transfer_id, entries, {});
        offer_all(plain);
        EXPECT_EQ(plain.on_small_sums(frame({0}, 1024, 9), as_bytes(nine)), protocol_errc::unexpected_message);
    }
    auto fresh = [&] {
        auto s = std::make_unique<sender_machine>(test_transfer_id, entries, sync);
        offer_all(*s);
        return s;
    };
    EXPECT_EQ(fresh()->on_small_sums(frame({3}, 1024, 9), as_bytes(nine)), protocol_errc::unknown_file);  // a folder
    EXPECT_EQ(fresh()->on_small_sums(frame({9}, 1024, 9), as_bytes(nine)), protocol_errc::unknown_file);
    EXPECT_EQ(fresh()->on_small_sums(frame({1}, 1024, 9), as_bytes(nine)), protocol_errc::bad_chunk);   // too small
    const std::string many(35 * 8, '\1');  // over 2 * (10000 / 1024) + 16 blocks for a file of 10,000 bytes
    EXPECT_EQ(fresh()->on_small_sums(frame({0}, 1024, 35), as_bytes(many)), protocol_errc::bad_chunk);
    EXPECT_EQ(fresh()->on_small_sums(frame({2}, 1024, 9), as_bytes(nine)), std::error_code{});          // a larger file
    // Small blocks only in small numbers, however large the file (max_small_blocks_of).
    const std::string small_blocks(529 * 8, '\1');
    EXPECT_EQ(fresh()->on_small_sums(frame({2}, 256, 528), as_bytes(small_blocks).first(528 * 8)), std::error_code{});
    EXPECT_EQ(fresh()->on_small_sums(frame({2}, 256, 529), as_bytes(small_blocks)), protocol_errc::bad_chunk);
    EXPECT_EQ(fresh()->on_small_sums(frame({0}, 1000, 9), as_bytes(nine)), protocol_errc::bad_chunk);   // block size
    EXPECT_EQ(fresh()->on_small_sums(frame({0}, 1024, 10), as_bytes(nine)), protocol_errc::bad_chunk);  // short payload
    EXPECT_EQ(fresh()->on_small_sums(frame({0}, 1024, 8), as_bytes(nine)), protocol_errc::payload_mismatch);
    EXPECT_EQ(fresh()->on_small_sums(frame({0, 0}, 1024, 9), as_bytes(nine + nine)), protocol_errc::bad_chunk);
    wire::SmallSums uneven = frame({0}, 1024, 9);
    uneven.add_blocks(1);
    EXPECT_EQ(fresh()->on_small_sums(uneven, as_bytes(nine)), protocol_errc::unexpected_message);

    auto answer = [](wire::AcceptKind kind) {
        wire::Accept a;
        a.set_transfer_id(test_transfer_id);
        for (std::uint32_t i = 0; i < 4; ++i) {
            wire::FileAccept* fa = a.add_files();
            fa->set_id(i);
            fa->set_kind(i == 0 ? kind : wire::ACCEPT_SKIP);
        }
        return a;
    };
    std::vector<wire::FileDone> done;
    auto s = fresh();
    ASSERT_EQ(s->on_small_sums(frame({0}, 1024, 9), as_bytes(nine)), std::error_code{});
    wire::Accept all = answer(wire::ACCEPT_ALL);
    ASSERT_EQ(s->on_accept(all, done), std::error_code{});
    std::shared_ptr<const small_sums> got = s->receiver_small_sums(file_id{0});
    ASSERT_NE(got, nullptr);
    EXPECT_EQ(got->block_size, 1024u);
    EXPECT_EQ(got->blocks, std::vector<std::uint64_t>(9, 0x0101010101010101ull));
    EXPECT_EQ(s->receiver_small_sums(file_id{1}), nullptr);
    // Sums for a file then skipped are a broken peer.
    auto t = fresh();
    ASSERT_EQ(t->on_small_sums(frame({0}, 1024, 9), as_bytes(nine)), std::error_code{});
    wire::Accept skip = answer(wire::ACCEPT_SKIP);
    EXPECT_EQ(t->on_accept(skip, done), protocol_errc::unexpected_message);
}

// The sums a receiver tells of the files it accepted stay with the sender until those
// files are done with: while they pass max_small_blocks_held, no more batches go (each
// could bring as many), and the files that end free theirs.
TEST(SenderMachine, NoMoreBatchesGoWhileTheAcceptedFilesHoldManySmallSums) {
    transfer_options sync;
    sync.sync.emplace();
    sync.sync->set_share("www");
    std::vector<entry_info> entries;
    for (int i = 0; i < 20; ++i) {
        entries.push_back(file_entry("big" + std::to_string(100 + i), std::uint64_t{64} << 20));
    }
    for (int i = 0; i < 400; ++i) {
        entries.push_back(file_entry("small" + std::to_string(1000 + i), 100));
    }
    sender_machine s(test_transfer_id, entries, sync);
    std::optional<wire::Offer> first = s.next_offer();
    ASSERT_TRUE(first);
    const auto n = static_cast<std::uint32_t>(first->entries_size());
    ASSERT_GE(n, 20u);
    ASSERT_LT(n, entries.size());  // more batches to come
    // 16,384 blocks of 8 KiB for each big file: 20 x 16,384 = 327,680 blocks.
    const std::string sums(16384 * 8, '\1');
    for (std::uint32_t i = 0; i < 20; ++i) {
        wire::SmallSums h;
        h.add_file_ids(i);
        h.add_block_sizes(8192);
        h.add_blocks(16384);
        ASSERT_EQ(s.on_small_sums(h, as_bytes(sums)), std::error_code{});
    }
    wire::Accept a;
    a.set_transfer_id(test_transfer_id);
    for (std::uint32_t i = 0; i < n; ++i) {
        wire::FileAccept* fa = a.add_files();
        fa->set_id(i);
        fa->set_kind(i < 20 ? wire::ACCEPT_ALL : wire::ACCEPT_SKIP);
    }
    std::vector<wire::FileDone> done;
    ASSERT_EQ(s.on_accept(a, done), std::error_code{});
    static_assert(20 * 16384 > sender_machine::max_small_blocks_held);
    EXPECT_FALSE(s.next_offer());  // held back
    // Four files end (here: given up on): 16 x 16,384 blocks left, under the bound.
    static_assert(16 * 16384 <= sender_machine::max_small_blocks_held);
    for (std::uint32_t i = 0; i < 4; ++i) {
        ASSERT_TRUE(s.receiver_gave_up(file_id{i}));
    }
    std::optional<wire::Offer> next = s.next_offer();
    ASSERT_TRUE(next);
    EXPECT_EQ(next->entries(0).id(), n);
}

// A chunk sent again after its connection was lost with the ack on its way may come after
// the file was made final: admitted (the node drops it and confirms it again), as long as
// it is a chunk the file has.
TEST_F(ReceiverChunks, AdmitsAResentChunkOfAFinishedFileButStillChecksIt) {
    r_.on_file_finished(file_id{0});
    EXPECT_TRUE(r_.finished(file_id{0}));
    EXPECT_EQ(admit(0, 0, chunk_size, chunk_size), std::error_code{});
    EXPECT_EQ(admit(0, 99, chunk_size, chunk_size), protocol_errc::bad_chunk);
    EXPECT_EQ(admit(0, 0, chunk_size, chunk_size + 1), protocol_errc::payload_mismatch);
}

TEST_F(ReceiverChunks, CompletionNeedsEveryChunkAndFileDone) {
    digest128 d0 = payload_digest(file_id{0}, chunk_index{0}, chunk_size);
    digest128 d1 = payload_digest(file_id{0}, chunk_index{1}, 100);
    bool ok = false;
    EXPECT_FALSE(r_.ready(file_id{0}, ok));
    EXPECT_FALSE(r_.on_chunk_written(file_id{0}, chunk_index{1}, d1));
    EXPECT_TRUE(r_.has_chunk(file_id{0}, chunk_index{1}));
    EXPECT_FALSE(r_.has_chunk(file_id{0}, chunk_index{0}));
    EXPECT_FALSE(r_.on_chunk_written(file_id{0}, chunk_index{1}, d1));  // a duplicate adds nothing
    EXPECT_EQ(r_.received_bytes(), 100u);
    EXPECT_TRUE(r_.on_chunk_written(file_id{0}, chunk_index{0}, d0));
    EXPECT_EQ(r_.received_bytes(), f_size);
    EXPECT_FALSE(r_.ready(file_id{0}, ok));  // no FileDone yet

    std::vector<digest128> digests{d0, d1};
    ASSERT_EQ(r_.on_file_done(done_for(0, file_digest(digests))), std::error_code{});
    ASSERT_TRUE(r_.ready(file_id{0}, ok));
    EXPECT_TRUE(ok);
    EXPECT_EQ(r_.on_file_done(done_for(0, file_digest(digests))), protocol_errc::unexpected_message);

    EXPECT_FALSE(r_.all_finished());
    r_.on_file_finished(file_id{0});
    EXPECT_FALSE(r_.ready(file_id{0}, ok));
    r_.on_file_finished(file_id{0});  // twice is harmless
    ASSERT_EQ(r_.on_file_done(done_for(3, file_digest({}))), std::error_code{});
    ASSERT_TRUE(r_.ready(file_id{3}, ok));
    EXPECT_TRUE(ok);
    r_.on_file_finished(file_id{3});
    EXPECT_FALSE(r_.all_finished());  // "u" is still open
    r_.accept({accept_all(file_id{4})});
    r_.on_file_finished(file_id{4});
    EXPECT_TRUE(r_.all_finished());
}

TEST_F(ReceiverChunks, FileDigestMismatch) {
    digest128 d0 = payload_digest(file_id{0}, chunk_index{0}, chunk_size);
    digest128 d1 = payload_digest(file_id{0}, chunk_index{1}, 100);
    r_.on_chunk_written(file_id{0}, chunk_index{0}, d0);
    r_.on_chunk_written(file_id{0}, chunk_index{1}, d1);
    std::vector<digest128> swapped{d1, d0};  // right chunks, wrong order
    ASSERT_EQ(r_.on_file_done(done_for(0, file_digest(swapped))), std::error_code{});
    bool ok = true;
    ASSERT_TRUE(r_.ready(file_id{0}, ok));
    EXPECT_FALSE(ok);

    bool empty_ok = true;
    ASSERT_EQ(r_.on_file_done(done_for(3, digest128{1, 2})), std::error_code{});
    ASSERT_TRUE(r_.ready(file_id{3}, empty_ok));
    EXPECT_FALSE(empty_ok);
}

TEST_F(ReceiverChunks, RefusesStrayFileDone) {
    EXPECT_EQ(r_.on_file_done(done_for(9, {})), protocol_errc::unknown_file);
    EXPECT_EQ(r_.on_file_done(done_for(1, {})), protocol_errc::unexpected_message);  // directory
    EXPECT_EQ(r_.on_file_done(done_for(2, {})), protocol_errc::unexpected_message);  // skipped
    EXPECT_EQ(r_.on_file_done(done_for(4, {})), protocol_errc::unexpected_message);  // undecided
}

// ---------------------------------------------------------------------------------------
// TransferResult

TEST(TransferLoopback, FailedTransferResultIsAnError) {
    loopback lb({file_entry("f", 10)});
    lb.exchange_offers();
    EXPECT_EQ(lb.sender().on_transfer_result(transfer_result(false, "no space left on device")),
              protocol_errc::peer_error);
    EXPECT_EQ(lb.sender().failure(), "no space left on device");
    EXPECT_FALSE(lb.sender().finished());
}

TEST(TransferLoopback, TransferResultBeforeEveryFileResultIsAnError) {
    loopback lb({file_entry("f", 10), file_entry("g", chunk_size + 1)});
    lb.exchange_offers();
    std::vector<in_flight> chunks = lb.pull_chunks();
    ASSERT_EQ(chunks.size(), 3u);
    lb.deliver(chunks[0]);  // f is finished, g is not
    EXPECT_EQ(lb.file_results(), 1u);
    EXPECT_EQ(lb.sender().on_transfer_result(transfer_result(true)), protocol_errc::unexpected_message);
    EXPECT_FALSE(lb.sender().finished());
    EXPECT_FALSE(lb.sender().failure().empty());
    EXPECT_EQ(lb.sender().confirmed_bytes(), 10u);

    wire::TransferResult foreign = transfer_result(true);
    foreign.set_transfer_id(test_transfer_id + 1);
    EXPECT_EQ(lb.sender().on_transfer_result(foreign), protocol_errc::unexpected_message);

    lb.deliver(chunks[1]);
    lb.deliver(chunks[2]);
    EXPECT_EQ(lb.finish(), std::error_code{});
    EXPECT_TRUE(lb.sender().finished());
    EXPECT_EQ(lb.sender().confirmed_bytes(), lb.sender().total_bytes());
}

TEST(TransferLoopback, TransferResultConfirmsAcksStillInFlight) {
    loopback lb({file_entry("f", chunk_size + 1)});
    lb.exchange_offers();
    std::vector<in_flight> chunks = lb.pull_chunks();
    ASSERT_EQ(chunks.size(), 2u);
    // The receiver finished the file; the sender saw the FileResult but one ChunkAck is
    // still on another connection when the TransferResult arrives.
    receiver_machine& r = lb.receiver();
    for (const in_flight& c : chunks) {
        ASSERT_EQ(r.on_chunk(c.header, static_cast<std::uint32_t>(c.payload.size())), std::error_code{});
        r.on_chunk_written(c.ref.file, c.ref.index, hash_chunk(c.payload));
    }
    std::error_code ec;
    lb.sender().on_ack(chunk_key(file_id{0}, chunk_index{0}), ec);
    ASSERT_FALSE(ec);
    bool ok = false;
    ASSERT_TRUE(r.ready(file_id{0}, ok));
    ASSERT_TRUE(ok);
    r.on_file_finished(file_id{0});
    ASSERT_EQ(lb.sender().on_file_result(file_result(file_id{0}, true)), std::error_code{});
    EXPECT_EQ(lb.sender().confirmed_bytes(), chunk_size);
    EXPECT_EQ(lb.finish(), std::error_code{});
    EXPECT_EQ(lb.sender().confirmed_bytes(), chunk_size + 1u);
    // The late ack repeats what the result confirmed: it adds nothing.
    EXPECT_EQ(lb.sender().on_ack(chunk_key(file_id{0}, chunk_index{1}), ec), 0u);
    EXPECT_FALSE(ec);
    EXPECT_EQ(lb.sender().confirmed_bytes(), lb.sender().total_bytes());
}

}  // namespace
}  // namespace ferry

namespace ferry {
namespace {

TEST(SingleChunkFile, NoFileDoneWhenSentWholeAndOneWhenTheReceiverHasIt) {
    // Sent whole: the Chunk frame is the file; a FileDone for it is out of sequence.
    loopback whole({file_entry("small", 100)});
    whole.exchange_offers();
    EXPECT_TRUE(whole.receiver().single_chunk(file_id{0}));
    wire::FileDone stray;
    stray.set_file_id(0);
    EXPECT_EQ(whole.receiver().on_file_done(stray), make_error_code(protocol_errc::unexpected_message));
    for (const auto& c : whole.pull_chunks()) {
        whole.deliver(c);
    }
    EXPECT_EQ(whole.finish(), std::error_code{});
    EXPECT_EQ(whole.file_dones(file_id{0}), 0);
    EXPECT_TRUE(whole.sender().finished());

    // The receiver already has the one chunk: it is read and hashed only, and the FileDone
    // (the sender's digest) is what lets the receiver check what it has.
    loopback partial({file_entry("small", 100)});
    partial.exchange_offers([](file_id id) { return accept_partial(id, 100, {0}); });
    EXPECT_FALSE(partial.receiver().single_chunk(file_id{0}));
    std::optional<chunk_ref> r = partial.sender().next_chunk();
    ASSERT_TRUE(r.has_value());
    EXPECT_FALSE(r->send);
    EXPECT_FALSE(partial.read_and_hash(*r).has_value());
    EXPECT_EQ(partial.file_dones(file_id{0}), 1);
}

}  // namespace
}  // namespace ferry

namespace ferry {
namespace {

TEST(ReceiverMachine, RefusesNamesReservedForPartialFiles) {
    for (const char* path : {".x.ferry-part", "d/.report.pdf.ferry-part", ".ferry-00112233aabbccdd.part"}) {
        receiver_machine r;
        EXPECT_EQ(offer_error(r, raw_offer({{0, path}})), make_error_code(protocol_errc::bad_path)) << path;
    }
    receiver_machine ok;
    EXPECT_EQ(offer_error(ok, raw_offer({{0, ".ferry-part"}, {1, ".part"}, {2, "x.ferry-part.txt"}})),
              std::error_code{});
}

TEST(ReceiverMachine, NeverTakesSetuidOrSetgidFromThePeer) {
    receiver_machine r;
    wire::Offer o = raw_offer({{0, "a-tool"}});
    o.mutable_entries(0)->set_mode(06755);
    wire::Entry* d = o.add_entries();
    d->set_id(1);
    d->set_path("shared");
    d->set_kind(wire::ENTRY_DIR);
    d->set_mode(03777);
    std::vector<file_id> ids;
    ASSERT_EQ(r.on_offer(o, ids), std::error_code{});
    EXPECT_EQ(r.entry(file_id{0}).mode, 0755u);
    EXPECT_EQ(r.entry(file_id{1}).mode, 01777u);
}

}  // namespace
}  // namespace ferry

namespace ferry {
namespace {

wire::SyncTarget sync_target(const std::string& share, const std::string& path) {
    wire::SyncTarget t;
    t.set_share(share);
    t.set_path(path);
    t.set_delete_(true);
    t.add_exclude("*.tmp");
    return t;
}

TEST(TransferLoopback, SyncTargetRidesTheFirstBatchOnlyAndActionsReachTheSender) {
    std::vector<entry_info> entries;
    for (int i = 0; i < 3000; ++i) {  // several batches
        entries.push_back(file_entry(numbered("dir-with-a-long-name/file-", i), 10));
    }
    transfer_options options{.overwrite = false, .fsync_each = false, .sync = sync_target("www", "site/blog")};
    loopback lb(entries, options);
    std::vector<wire::Offer> offers = lb.sender().make_offers();
    ASSERT_GT(offers.size(), 1u);
    EXPECT_TRUE(offers[0].has_sync());
    EXPECT_EQ(offers[0].sync().path(), "site/blog");
    for (std::size_t b = 1; b < offers.size(); ++b) {
        EXPECT_FALSE(offers[b].has_sync());
    }
    for (const wire::Offer& o : offers) {
        EXPECT_LE(o.ByteSizeLong(), offer_batch_bytes + max_sync_exclude_bytes);
    }
    lb.exchange_offers([](file_id id) {
        receiver_machine::decision d = accept_all(id);
        d.action = id.value % 2 == 0 ? wire::SYNC_CREATE : wire::SYNC_UPDATE;
        return d;
    });
    ASSERT_TRUE(lb.receiver().sync());
    EXPECT_EQ(lb.receiver().sync()->share(), "www");
    EXPECT_EQ(lb.receiver().sync()->exclude_size(), 1);
    EXPECT_EQ(lb.sender().action(file_id{0}), wire::SYNC_CREATE);
    EXPECT_EQ(lb.sender().action(file_id{1}), wire::SYNC_UPDATE);
    const offered_paths& paths = lb.receiver().paths();
    EXPECT_EQ(paths.size(), entries.size());
    EXPECT_EQ(paths.find(numbered("dir-with-a-long-name/file-", 2999)), offered_paths::kind::file);
    EXPECT_EQ(paths.find("dir-with-a-long-name"), offered_paths::kind::folder);
}

TEST(ReceiverMachine, RefusesABadSyncPathAndASyncTargetAfterTheFirstBatch) {
    for (const char* bad : {"../up", "/abs", "a//b", "a/./b"}) {
        receiver_machine r;
        wire::Offer o;
        o.set_transfer_id(test_transfer_id);
        o.set_last(true);
        *o.mutable_sync() = sync_target("www", bad);
        std::vector<file_id> ids;
        EXPECT_EQ(r.on_offer(o, ids), protocol_errc::bad_path) << bad;
    }
    receiver_machine r;
    wire::Offer first;
    first.set_transfer_id(test_transfer_id);
    *first.mutable_sync() = sync_target("www", "");
    std::vector<file_id> ids;
    ASSERT_EQ(r.on_offer(first, ids), std::error_code{});
    wire::Offer second = first;  // a later batch may not change the target
    second.set_last(true);
    EXPECT_EQ(r.on_offer(second, ids), protocol_errc::unexpected_message);
}

}  // namespace
}  // namespace ferry
