// Fuzz target: a frame's header bytes, as the node gets them from the frame decoder.
//
// The input is the Header's bytes. (1) Framed as varint + bytes, frame_decoder must say
// exactly what a direct parse says: header_too_large, bad_header, payload_too_large,
// empty_body, or the same message. (2) A header the decoder accepts re-encodes through
// append_frame_header / append_frame and decodes back to an equal message (and payload).
// (3) Each body goes through the validation protocol/ has for it, with an oracle for the
// answer: Offer -> receiver_machine::on_offer (default and tiny limits); Accept ->
// sender_machine::on_accept and chunk_bitmap::from_bytes; Chunk -> on_chunk; FileDone ->
// on_file_done; ChunkAck -> sender_machine::on_ack; FileResult / TransferResult -> the
// sender's handlers. Hello, Error, Ping and Pong have no validation in protocol/.
#include <google/protobuf/util/message_differencer.h>

#include <cstddef>
#include <cstdint>
#include <limits>
#include <set>
#include <string>
#include <system_error>
#include <vector>

#include "ferry.pb.h"
#include "protocol/digest.hpp"
#include "protocol/errors.hpp"
#include "protocol/frame.hpp"
#include "protocol/path.hpp"
#include "protocol/transfer.hpp"
#include "protocol/types.hpp"
#include "tests/fuzz/accept_model.hpp"
#include "tests/fuzz/fuzz_support.hpp"
#include "tests/fuzz/sample_messages.hpp"

namespace ferry::fuzz {
namespace {

using google::protobuf::util::MessageDifferencer;

constexpr std::uint64_t transfer = 7;

// Chunks of a file of `size` bytes, computed without wrapping.
unsigned __int128 reference_chunks(std::uint64_t size) { return size / chunk_size + (size % chunk_size != 0); }

// The entries both fixtures use: dir, two-chunk file, one-chunk file, empty file.
std::vector<entry_info> fixture_entries() {
    return {
        {.path = "d", .mode = 0755, .is_dir = true},
        {.path = "d/two", .size = std::uint64_t{chunk_size} + 100, .mode = 0644},
        {.path = "e-one", .size = 1000, .mode = 0644},  // before "empty": the offer order
        {.path = "empty", .mode = 0644},
    };
}

// A receiver that was offered fixture_entries() and accepted them all.
receiver_machine fixture_receiver() {
    sender_machine s(transfer, fixture_entries(), {});
    receiver_machine r;
    std::vector<file_id> ids;
    FUZZ_CHECK(!r.on_offer(s.make_offers().front(), ids));
    std::vector<receiver_machine::decision> decisions;
    for (file_id id : ids) {
        decisions.push_back({id, wire::ACCEPT_ALL, std::nullopt, {}, wire::SYNC_NONE, {}, {}});
    }
    r.accept(decisions);
    return r;
}

// A sender whose one batch of fixture_entries() was accepted whole.
sender_machine fixture_sender() {
    sender_machine s(transfer, fixture_entries(), {});
    FUZZ_CHECK(s.next_offer());  // (offered, as a node does before any answer)
    wire::Accept a;
    a.set_transfer_id(transfer);
    for (std::uint32_t i = 0; i < fixture_entries().size(); ++i) {
        a.add_files()->set_id(i);
    }
    std::vector<wire::FileDone> done;
    FUZZ_CHECK(!s.on_accept(a, done));
    return s;
}

void check_offer(const wire::Offer& offer, receiver_limits limits) {
    receiver_machine r(limits);
    std::vector<file_id> ids;
    if (r.on_offer(offer, ids)) {
        return;
    }
    FUZZ_CHECK(static_cast<std::uint64_t>(offer.entries_size()) <= limits.max_files);
    FUZZ_CHECK(offer.total_files() <= limits.max_files);
    FUZZ_CHECK(ids.size() == static_cast<std::size_t>(offer.entries_size()));
    unsigned __int128 total = 0;
    std::set<std::string> paths;
    for (std::size_t i = 0; i < ids.size(); ++i) {
        const wire::Entry& e = offer.entries(static_cast<int>(i));
        FUZZ_CHECK(ids[i].value == i && e.id() == i);
        FUZZ_CHECK(!check_wire_path(e.path()) && !is_partial_file_name(split_wire_path(e.path()).back()));
        FUZZ_CHECK(paths.insert(e.path()).second);
        FUZZ_CHECK(e.kind() == wire::ENTRY_FILE || e.kind() == wire::ENTRY_DIR ||
                   (e.kind() == wire::ENTRY_SYMLINK && offer.has_sync()));  // a symlink only in a sync
        const entry_info& info = r.entry(ids[i]);
        FUZZ_CHECK(info.path == e.path() && info.is_dir == (e.kind() == wire::ENTRY_DIR));
        FUZZ_CHECK(info.is_link == (e.kind() == wire::ENTRY_SYMLINK));
        FUZZ_CHECK(!info.is_link || (!info.link_target.empty() && info.link_target.size() <= max_link_target &&
                                     info.link_target.str().find('\0') == std::string::npos));
        FUZZ_CHECK((info.mode & 06000) == 0 && (info.is_dir || (info.mode & 01000) == 0));
        FUZZ_CHECK(info.size == (info.is_file() ? e.size() : 0));
        // Every chunk of the file has an index a Chunk message can carry.
        FUZZ_CHECK(reference_chunks(info.size) <= std::numeric_limits<std::uint32_t>::max());
        total += info.size;
    }
    FUZZ_CHECK(total == r.total_bytes());
    FUZZ_CHECK(r.all_offered() == offer.last());
}

void check_bitmap(std::uint64_t bits, const std::string& bytes) {
    std::optional<chunk_bitmap> b = chunk_bitmap::from_bytes(bits, bytes);
    FUZZ_CHECK(b.has_value() == (bytes.size() == (bits + 7) / 8));
    if (!b) {
        return;
    }
    FUZZ_CHECK(b->size() == bits && b->count() <= bits);
    std::uint64_t count = 0;
    for (std::uint64_t i = 0; i < bits; ++i) {
        bool bit = (static_cast<std::uint8_t>(bytes[i / 8]) >> (i % 8)) & 1u;
        FUZZ_CHECK(b->test(i) == bit);
        count += bit ? 1 : 0;
    }
    FUZZ_CHECK(b->count() == count);
    std::string back = b->to_bytes();
    FUZZ_CHECK(back.size() == bytes.size());
    FUZZ_CHECK(chunk_bitmap::from_bytes(bits, back)->to_bytes() == back);
}

void check_accept(const wire::Accept& sent) {
    for (const wire::FileAccept& fa : sent.files()) {
        std::uint64_t bits = fa.have().size() * 8;
        check_bitmap(bits, fa.have());
        check_bitmap(bits > 0 ? bits - fa.id() % 8 : 0, fa.have());
        check_bitmap(fa.id() % 64, fa.have());
    }

    std::vector<entry_info> entries = fixture_entries();
    sender_machine s(transfer, entries, {});
    FUZZ_CHECK(s.next_offer());
    std::vector<wire::FileDone> done;
    wire::Accept given = sent;
    std::error_code ec = s.on_accept(given, done);
    // The answers as the sender reads them (Accept.unchanged taken back in place).
    std::optional<wire::Accept> full = expanded_accept(sent, 0, static_cast<std::uint32_t>(entries.size()),
                                                       [&](std::uint32_t i) { return entries[i].is_dir; });
    if (!full) {
        FUZZ_CHECK(ec);
        return;
    }
    const wire::Accept& accept = *full;
    bool expect_ok =
        accept.transfer_id() == transfer && static_cast<std::size_t>(accept.files_size()) == entries.size();
    std::vector<std::uint32_t> expect_done;
    for (std::size_t i = 0; expect_ok && i < entries.size(); ++i) {
        const wire::FileAccept& fa = accept.files(static_cast<int>(i));
        const entry_info& e = entries[i];
        if (fa.id() != i) {
            expect_ok = false;
        } else if (e.is_dir || fa.kind() == wire::ACCEPT_SKIP) {
            continue;
        } else if (fa.kind() == wire::ACCEPT_PARTIAL) {
            // No HaveDigests came first here: only a claim of no chunk at all stands.
            auto have = chunk_bitmap::from_bytes(chunk_count(e.size), fa.have());
            expect_ok = have && have->count() == 0;
        } else if (fa.kind() != wire::ACCEPT_ALL) {
            expect_ok = false;
        }
        if (expect_ok && e.size == 0 && !e.is_dir && fa.kind() != wire::ACCEPT_SKIP) {
            expect_done.push_back(static_cast<std::uint32_t>(i));
        }
    }
    FUZZ_CHECK(!ec == expect_ok);
    if (ec) {
        return;
    }
    FUZZ_CHECK(s.all_accepted());
    FUZZ_CHECK(done.size() == expect_done.size());
    digest128 empty = file_digest({});
    for (std::size_t i = 0; i < done.size(); ++i) {
        FUZZ_CHECK(done[i].file_id() == expect_done[i]);
        FUZZ_CHECK(done[i].digest_lo() == empty.lo && done[i].digest_hi() == empty.hi);
    }
    // Every chunk handed out belongs to an accepted file that wants it sent or hashed.
    while (std::optional<chunk_ref> ref = s.next_chunk()) {
        const entry_info& e = entries.at(ref->file.value);
        const wire::FileAccept& fa = accept.files(static_cast<int>(ref->file.value));
        FUZZ_CHECK(!e.is_dir && fa.kind() != wire::ACCEPT_SKIP);
        FUZZ_CHECK(ref->index.value < chunk_count(e.size));
        FUZZ_CHECK(ref->offset == std::uint64_t{ref->index.value} * chunk_size);
        FUZZ_CHECK(ref->length == chunk_length(e.size, ref->index.value));
        bool have = fa.kind() == wire::ACCEPT_PARTIAL &&
                    ((static_cast<std::uint8_t>(fa.have()[ref->index.value / 8]) >> (ref->index.value % 8)) & 1u);
        FUZZ_CHECK(ref->send == !have);
    }
}

void check_chunk(const wire::Chunk& chunk, std::uint32_t payload_len) {
    receiver_machine r = fixture_receiver();
    std::vector<entry_info> entries = fixture_entries();
    std::error_code expect;
    if (chunk.file_id() >= entries.size() || entries[chunk.file_id()].is_dir) {
        expect = protocol_errc::unknown_file;
    } else if (std::uint64_t size = entries[chunk.file_id()].size;
               chunk.index() >= reference_chunks(size) || chunk.raw_len() != chunk_length(size, chunk.index())) {
        expect = protocol_errc::bad_chunk;
    } else if (chunk.codec() == wire::CODEC_RAW) {
        expect = payload_len == chunk.raw_len() ? std::error_code{} : protocol_errc::payload_mismatch;
    } else if (chunk.codec() == wire::CODEC_ZSTD) {
        expect = payload_len > 0 && payload_len < chunk.raw_len() ? std::error_code{} : protocol_errc::payload_mismatch;
    } else {
        expect = protocol_errc::bad_chunk;
    }
    FUZZ_CHECK(r.on_chunk(chunk, payload_len) == expect);
    if (!expect) {
        file_id f{chunk.file_id()};
        FUZZ_CHECK(!r.has_chunk(f, chunk_index{chunk.index()}));
        FUZZ_CHECK(r.single_chunk(f) == (reference_chunks(entries[f.value].size) == 1));
    }
}

void check_file_done(const wire::FileDone& done) {
    receiver_machine r = fixture_receiver();
    std::vector<entry_info> entries = fixture_entries();
    std::uint32_t id = done.file_id();
    bool known = id < entries.size();
    std::error_code expect = !known ? protocol_errc::unknown_file
                             : entries[id].is_dir || chunk_count(entries[id].size) == 1
                                 ? protocol_errc::unexpected_message
                                 : std::error_code{};
    FUZZ_CHECK(r.on_file_done(done) == expect);
    if (!expect) {
        bool ok = false;
        bool ready = r.ready(file_id{id}, ok);
        FUZZ_CHECK(ready == (entries[id].size == 0));  // the two-chunk file has no chunk yet
        digest128 empty = file_digest({});
        FUZZ_CHECK(!ready || ok == (done.digest_lo() == empty.lo && done.digest_hi() == empty.hi));
        FUZZ_CHECK(r.on_file_done(done) == protocol_errc::unexpected_message);
    }
}

void check_chunk_ack(const wire::ChunkAck& ack) {
    sender_machine s = fixture_sender();
    std::vector<entry_info> entries = fixture_entries();
    std::set<std::uint64_t> seen;
    for (std::uint64_t key : ack.chunks()) {
        std::error_code ec;
        std::uint64_t n = s.on_ack(key, ec);
        file_id f = chunk_key_file(key);
        chunk_index i = chunk_key_index(key);
        bool known =
            f.value < entries.size() && !entries[f.value].is_dir && i.value < chunk_count(entries[f.value].size);
        FUZZ_CHECK(!ec == known);
        if (!known) {
            FUZZ_CHECK(ec == protocol_errc::unknown_file && n == 0);
            return;  // the node ends the session on the first bad key
        }
        FUZZ_CHECK(n == (seen.insert(key).second ? chunk_length(entries[f.value].size, i.value) : 0));
    }
    std::uint64_t confirmed = 0;
    for (std::uint64_t key : seen) {
        confirmed += chunk_length(entries[chunk_key_file(key).value].size, chunk_key_index(key).value);
    }
    FUZZ_CHECK(s.confirmed_bytes() == confirmed);
}

void check_results(const wire::Header& h) {
    sender_machine s = fixture_sender();
    std::vector<entry_info> entries = fixture_entries();
    if (h.has_file_result()) {
        const wire::FileResult& fr = h.file_result();
        std::error_code expect = fr.file_id() >= entries.size() ? protocol_errc::unknown_file
                                 : !fr.ok()                     ? protocol_errc::peer_error
                                 : entries[fr.file_id()].is_dir ? protocol_errc::unexpected_message
                                                                : std::error_code{};
        FUZZ_CHECK(s.on_file_result(fr) == expect);
        FUZZ_CHECK(s.files_done() == 1 + (expect ? 0 : 1));  // the directory, done on accept
    } else {
        const wire::TransferResult& tr = h.transfer_result();
        std::error_code expect = tr.transfer_id() != transfer ? protocol_errc::unexpected_message
                                 : !tr.ok()                   ? protocol_errc::peer_error
                                                              : protocol_errc::unexpected_message;  // files left
        FUZZ_CHECK(s.on_transfer_result(tr) == expect);
        FUZZ_CHECK(!s.finished());
    }
}

// (2): a header the decoder accepted re-encodes and decodes back to itself.
void check_round_trip(const wire::Header& h) {
    std::vector<std::uint8_t> out;
    bool fits = h.ByteSizeLong() <= max_header_len;
    FUZZ_CHECK(append_frame_header(h, out) == fits);
    if (!fits) {
        return;
    }
    frame_decoder dec;
    decode_result r = dec.feed(out);
    FUZZ_CHECK(r.event == decode_event::header && r.consumed == out.size());
    FUZZ_CHECK(MessageDifferencer::Equals(dec.header(), h));

    if (h.payload_len() > 4096) {
        return;  // append_frame copies the payload: small ones only
    }
    std::vector<std::uint8_t> payload(h.payload_len());
    for (std::size_t i = 0; i < payload.size(); ++i) {
        payload[i] = static_cast<std::uint8_t>(i * 31 + 7);
    }
    std::vector<std::uint8_t> frame;
    FUZZ_CHECK(append_frame(h, payload, frame));
    frame_decoder whole;
    std::span<const std::uint8_t> in(frame);
    decode_result hr = whole.feed(in);
    FUZZ_CHECK(hr.event == decode_event::header && MessageDifferencer::Equals(whole.header(), h));
    in = in.subspan(hr.consumed);
    if (!payload.empty()) {
        decode_result pr = whole.feed(in);
        FUZZ_CHECK(pr.event == decode_event::payload && pr.frame_complete);
        FUZZ_CHECK(std::equal(pr.payload.begin(), pr.payload.end(), payload.begin(), payload.end()));
        in = in.subspan(pr.consumed);
    }
    FUZZ_CHECK(in.empty() && whole.feed(in).event == decode_event::need_more);
}

std::vector<seed> seeds() {
    std::vector<seed> out;
    auto add = [&](const std::string& name, const wire::Header& h) {
        std::string bytes = h.SerializeAsString();
        out.push_back({name, {bytes.begin(), bytes.end()}});
    };
    for (const sample_message& m : sample_messages()) {
        add(m.name, m.header);
    }
    wire::Header offer;
    offer.mutable_offer()->set_transfer_id(transfer);
    offer.mutable_offer()->set_last(true);
    offer.mutable_offer()->set_total_files(2);
    wire::Entry* e = offer.mutable_offer()->add_entries();
    e->set_path("../escape");
    add("offer-unsafe-path", offer);
    e->set_path("huge");
    e->set_size(std::numeric_limits<std::uint64_t>::max());
    add("offer-huge-file", offer);
    wire::Header chunk;
    chunk.set_payload_len(100);
    chunk.mutable_chunk()->set_file_id(1);
    chunk.mutable_chunk()->set_index(1);
    chunk.mutable_chunk()->set_raw_len(100);
    add("chunk-fixture-last", chunk);
    chunk.set_payload_len(60);
    chunk.mutable_chunk()->set_codec(wire::CODEC_ZSTD);
    add("chunk-fixture-zstd", chunk);
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
    if (size > max_header_len + 16) {
        return 0;  // only the limit's edge matters past max_header_len
    }
    wire::Header h;
    bool parsed = h.ParseFromArray(data, static_cast<int>(size));

    // (1) The frame decoder on varint(size) + these bytes.
    std::vector<std::uint8_t> frame;
    for (std::uint64_t v = size;; v >>= 7) {
        frame.push_back(static_cast<std::uint8_t>(v >= 0x80 ? (v & 0x7f) | 0x80 : v));
        if (v < 0x80) {
            break;
        }
    }
    frame.insert(frame.end(), data, data + size);
    frame_decoder dec;
    decode_result r = dec.feed(frame);
    std::error_code expect = size > max_header_len                         ? protocol_errc::header_too_large
                             : !parsed                                     ? protocol_errc::bad_header
                             : h.payload_len() > max_payload_len           ? protocol_errc::payload_too_large
                             : h.body_case() == wire::Header::BODY_NOT_SET ? protocol_errc::empty_body
                                                                           : std::error_code{};
    FUZZ_CHECK(r.ec == expect);
    if (expect) {
        FUZZ_CHECK(r.event == decode_event::error);
        return 0;
    }
    FUZZ_CHECK(r.event == decode_event::header && r.consumed == frame.size());
    FUZZ_CHECK(MessageDifferencer::Equals(dec.header(), h));

    check_round_trip(h);

    // (3) What protocol/ checks for each message.
    switch (h.body_case()) {
        case wire::Header::kOffer:
            check_offer(h.offer(), {});
            check_offer(h.offer(), {2});
            break;
        case wire::Header::kAccept:
            check_accept(h.accept());
            break;
        case wire::Header::kChunk:
            check_chunk(h.chunk(), h.payload_len());
            break;
        case wire::Header::kFileDone:
            check_file_done(h.file_done());
            break;
        case wire::Header::kChunkAck:
            check_chunk_ack(h.chunk_ack());
            break;
        case wire::Header::kFileResult:
        case wire::Header::kTransferResult:
            check_results(h);
            break;
        default:
            break;
    }
    return 0;
}
