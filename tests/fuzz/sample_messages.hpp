// One valid Header of every body type, with its payload, for the seeds of the frame and
// header fuzz targets (tests/fuzz). Built through the real encoders where there is one
// (sender_machine::make_offers), so the seeds look like what a node sends.
#pragma once

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "ferry.pb.h"
#include "protocol/digest.hpp"
#include "protocol/transfer.hpp"
#include "protocol/types.hpp"

namespace ferry::fuzz {

struct sample_message {
    std::string name;
    wire::Header header;
    std::vector<std::uint8_t> payload;  // header.payload_len() bytes
};

inline std::vector<sample_message> sample_messages() {
    std::vector<sample_message> out;
    auto add = [&](std::string name, wire::Header h, std::vector<std::uint8_t> payload = {}) {
        h.set_payload_len(static_cast<std::uint32_t>(payload.size()));
        out.push_back({std::move(name), std::move(h), std::move(payload)});
    };

    wire::Header hello;
    hello.mutable_hello()->set_version(protocol_version);
    hello.mutable_hello()->set_session_id(std::string(16, '\x5a'));
    hello.mutable_hello()->set_conn_count(default_connections);
    hello.mutable_hello()->set_agent("ferry/0.1.0");
    hello.mutable_hello()->add_codecs(wire::CODEC_ZSTD);
    add("hello", hello);

    std::vector<entry_info> entries = {
        {.path = "docs", .mtime_ns = 1'700'000'000'000'000'000, .mode = 0755, .is_dir = true},
        {.path = "docs/a.txt", .size = 100, .mtime_ns = 1'700'000'000'000'000'001, .mode = 0644},
        {.path = "docs/big.bin", .size = std::uint64_t{chunk_size} * 2 + 1, .mtime_ns = 1'700'000'000'000'000'002,
         .mode = 0600},
        {.path = "empty", .mode = 0644},
    };
    sender_machine sender(7, entries, {true, false, std::nullopt});
    wire::Header offer;
    *offer.mutable_offer() = sender.make_offers().front();
    add("offer", offer);


    wire::Header accept;
    accept.mutable_accept()->set_transfer_id(7);
    for (std::uint32_t i = 0; i < entries.size(); ++i) {
        wire::FileAccept* fa = accept.mutable_accept()->add_files();
        fa->set_id(i);
        fa->set_kind(i == 2 ? wire::ACCEPT_PARTIAL : wire::ACCEPT_ALL);
        if (i == 2) {
            fa->set_have(std::string(1, '\x02'));
        }
    }
    add("accept", accept);

    std::vector<std::uint8_t> bytes(100);
    for (std::size_t i = 0; i < bytes.size(); ++i) {
        bytes[i] = static_cast<std::uint8_t>(i * 7);
    }
    digest128 d = hash_chunk(bytes);
    wire::Header chunk;
    chunk.mutable_chunk()->set_file_id(1);
    chunk.mutable_chunk()->set_raw_len(100);
    chunk.mutable_chunk()->set_hash_lo(d.lo);
    chunk.mutable_chunk()->set_hash_hi(d.hi);
    add("chunk", chunk, bytes);

    wire::Header ack;
    ack.mutable_chunk_ack()->add_chunks(chunk_key(file_id{1}, chunk_index{0}));
    ack.mutable_chunk_ack()->add_chunks(chunk_key(file_id{2}, chunk_index{2}));
    add("chunk_ack", ack);

    digest128 fd = file_digest(std::vector<digest128>{d});
    wire::Header done;
    done.mutable_file_done()->set_file_id(1);
    done.mutable_file_done()->set_digest_lo(fd.lo);
    done.mutable_file_done()->set_digest_hi(fd.hi);
    add("file_done", done);

    wire::Header file_result;
    file_result.mutable_file_result()->set_file_id(1);
    file_result.mutable_file_result()->set_ok(true);
    add("file_result", file_result);

    wire::Header transfer_result;
    transfer_result.mutable_transfer_result()->set_transfer_id(7);
    transfer_result.mutable_transfer_result()->set_ok(true);
    transfer_result.mutable_transfer_result()->set_files(entries.size());
    transfer_result.mutable_transfer_result()->set_bytes(sender.total_bytes());
    add("transfer_result", transfer_result);

    wire::Header error;
    error.mutable_error()->set_code(wire::ERROR_REFUSED);
    error.mutable_error()->set_message("refused transfer: unsafe or malformed path");
    add("error", error);

    wire::Header ping;
    ping.mutable_ping()->set_nonce(0x0123456789abcdefu);
    add("ping", ping);
    wire::Header pong;
    pong.mutable_pong()->set_nonce(0x0123456789abcdefu);
    add("pong", pong);

    // A sync's first batch: a target with exclude patterns and paths to keep (any bytes).
    wire::SyncTarget target;
    target.set_share("www");
    target.set_path("site");
    target.set_delete_(true);
    target.add_exclude("*.tmp");
    target.add_exclude("!keep.tmp");
    target.add_keep("run/fifo");
    target.add_keep("odd\nname \xFF");
    sender_machine syncer(8, entries, {false, false, target});
    wire::Header sync_offer;
    *sync_offer.mutable_offer() = syncer.make_offers().front();
    add("sync_offer", sync_offer);
    return out;
}

}  // namespace ferry::fuzz
