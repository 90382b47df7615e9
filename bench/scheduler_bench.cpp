// Micro benchmarks of the chunk scheduler and the per-chunk bookkeeping of both transfer
// state machines (protocol/transfer.hpp), with no I/O and no hashing: digests are made
// up (hashing is in digest_bench).
//
// Sender: what send_session does per chunk on the loop thread: next_chunk() (the
// scheduler every connection pulls from), on_chunk_hashed() when the worker returns,
// on_ack() when the receiver confirms. Each iteration is a whole transfer: the machine
// is built, makes its Offers and takes the Accepts (prepared once by a receiver_machine),
// then every chunk goes through. Receiver: on_offer/accept, then per chunk on_chunk()
// admission and on_chunk_written(), then the file's completion check, as
// receive_session does. Items/s counts chunks (a 4 KiB file is one chunk).
#include <benchmark/benchmark.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <optional>
#include <stdexcept>
#include <string>
#include <system_error>
#include <vector>

#include "alloc_counter.hpp"
#include "ferry.pb.h"
#include "micro_main.hpp"
#include "protocol/digest.hpp"
#include "protocol/transfer.hpp"
#include "protocol/types.hpp"

namespace ferry {
namespace {

constexpr std::uint64_t bench_transfer_id = 42;

digest128 made_up_digest(file_id f, chunk_index i) { return {i.value + 1ull, f.value + 1ull}; }

struct transfer_plan {
    std::vector<entry_info> entries;
    std::vector<wire::Offer> offers;
    std::vector<wire::Accept> accepts;
    // Per Accept, the HaveDigests frames (header, payload) that go before it.
    std::vector<std::vector<std::pair<wire::HaveDigests, std::string>>> have_frames;
    std::vector<receiver_machine::decision> decisions;  // in entry order, over all batches
    std::vector<wire::FileDone> file_dones;             // per file of more than one chunk
    std::uint64_t chunks = 0;
};

// `files` files of `size` bytes each, in folders of 100. With `resume`, the receiver
// already has every other chunk of each file (ACCEPT_PARTIAL).
transfer_plan make_plan(std::uint32_t files, std::uint64_t size, bool resume) {
    transfer_plan p;
    for (std::uint32_t i = 0; i < files; ++i) {
        entry_info e;
        // Zero-padded: offered in path order (wire_path_less), as a receiver demands.
        char path[40];
        std::snprintf(path, sizeof(path), "dir%05u/file%07u.bin", i / 100, i);
        e.path = path;
        e.size = size;
        e.mtime_ns = 1'700'000'000'000'000'000;
        p.entries.push_back(std::move(e));
        p.chunks += chunk_count(size);
    }
    sender_machine sender(bench_transfer_id, p.entries, {});
    p.offers = sender.make_offers();
    receiver_machine receiver;
    for (const wire::Offer& offer : p.offers) {
        std::vector<file_id> ids;
        if (receiver.on_offer(offer, ids)) {
            throw std::runtime_error("offer refused");
        }
        std::vector<receiver_machine::decision> batch;
        for (file_id id : ids) {
            receiver_machine::decision d;
            d.id = id;
            std::uint64_t chunks = chunk_count(p.entries[id.value].size);
            if (resume && chunks > 1) {
                d.kind = wire::ACCEPT_PARTIAL;
                d.have = chunk_bitmap(chunks);
                d.have_digests.resize(chunks);
                for (std::uint64_t c = 0; c < chunks; c += 2) {
                    d.have->set(c);
                    d.have_digests[c] = made_up_digest(id, chunk_index{static_cast<std::uint32_t>(c)});
                }
            }
            batch.push_back(d);
            p.decisions.push_back(d);
        }
        std::vector<std::pair<wire::HaveDigests, std::string>> frames;
        for (const receiver_machine::decision& d : batch) {
            for (auto& f : receiver_machine::have_digest_frames(d)) {
                frames.push_back(std::move(f));
            }
        }
        p.have_frames.push_back(std::move(frames));
        p.accepts.push_back(receiver.accept(batch));
    }
    for (std::uint32_t i = 0; i < files; ++i) {
        std::uint64_t chunks = chunk_count(size);
        if (chunks < 2) {
            continue;
        }
        std::vector<digest128> digests;
        for (std::uint64_t c = 0; c < chunks; ++c) {
            digests.push_back(made_up_digest(file_id{i}, chunk_index{static_cast<std::uint32_t>(c)}));
        }
        digest128 d = file_digest(digests);
        wire::FileDone done;
        done.set_file_id(i);
        done.set_digest_lo(d.lo);
        done.set_digest_hi(d.hi);
        p.file_dones.push_back(done);
    }
    return p;
}

// Sends the whole plan through a new sender_machine; `requeue_window` > 0 hands every
// chunk back once, in windows of that many (a connection lost with a full window, each
// time). Returns the chunks taken from next_chunk(), or 0 on a protocol error.
std::uint64_t run_sender(const transfer_plan& p, std::vector<entry_info> entries, std::size_t requeue_window) {
    sender_machine s(bench_transfer_id, std::move(entries), {});
    std::vector<wire::Offer> offers = s.make_offers();
    benchmark::DoNotOptimize(offers.data());
    std::vector<wire::FileDone> done_now;
    for (std::size_t b = 0; b < p.accepts.size(); ++b) {
        while (s.next_offer()) {  // (what the node sends before each answer)
        }
        for (const auto& [have, payload] : p.have_frames[b]) {  // what the receiver has, first
            if (s.on_have_digests(have, {reinterpret_cast<const std::uint8_t*>(payload.data()), payload.size()})) {
                return 0;
            }
        }
        wire::Accept accept = p.accepts[b];  // (on_accept takes back what Accept.unchanged left out)
        if (s.on_accept(accept, done_now)) {
            return 0;
        }
    }
    std::uint64_t taken = 0;
    std::vector<chunk_ref> window;
    std::error_code ec;
    for (;;) {
        window.clear();
        while (window.size() < std::max<std::size_t>(requeue_window, 1)) {
            std::optional<chunk_ref> ref = s.next_chunk();
            if (!ref) {
                break;
            }
            ++taken;
            window.push_back(*ref);
        }
        if (window.empty()) {
            break;
        }
        if (requeue_window > 0) {
            for (const chunk_ref& ref : window) {
                s.requeue(ref);
            }
            for (chunk_ref& ref : window) {
                ref = *s.next_chunk();
                ++taken;
            }
        }
        for (const chunk_ref& ref : window) {
            benchmark::DoNotOptimize(s.on_chunk_hashed(ref, made_up_digest(ref.file, ref.index)));
            if (ref.send) {
                s.on_ack(chunk_key(ref.file, ref.index), ec);
            }
        }
    }
    if (ec || s.confirmed_bytes() + s.skipped_bytes() != s.total_bytes()) {
        return 0;
    }
    return taken;
}

void sender_bench(benchmark::State& state, const transfer_plan& p, std::size_t requeue_window) {
    std::uint64_t taken = 0;
    std::uint64_t allocs = 0;
    for (auto _ : state) {
        state.PauseTiming();
        std::vector<entry_info> entries = p.entries;  // the sender gets its list by value
        state.ResumeTiming();
        std::uint64_t before = ferry::bench::allocations();
        std::uint64_t n = run_sender(p, std::move(entries), requeue_window);
        allocs += ferry::bench::allocations() - before;
        if (n == 0) {
            state.SkipWithError("the transfer did not complete");
            return;
        }
        taken += n;
    }
    state.counters["allocs/chunk"] = static_cast<double>(allocs) / static_cast<double>(state.iterations() * p.chunks);
    state.SetItemsProcessed(state.iterations() * static_cast<std::int64_t>(p.chunks));
    state.counters["next_chunk/chunk"] =
        static_cast<double>(taken) / static_cast<double>(state.iterations() * p.chunks);
}

// One 1 GiB file: 4096 chunks.
void BM_sender_one_file(benchmark::State& state) {
    static const transfer_plan p = make_plan(1, 4096ull * chunk_size, false);
    sender_bench(state, p, 0);
}
BENCHMARK(BM_sender_one_file);

// The same file resumed: the receiver has every other chunk, which the sender still reads
// and hashes (for the file digest) but does not send.
void BM_sender_one_file_resume(benchmark::State& state) {
    static const transfer_plan p = make_plan(1, 4096ull * chunk_size, true);
    sender_bench(state, p, 0);
}
BENCHMARK(BM_sender_one_file_resume);

// Every chunk requeued once in windows of 64, as if a connection died with a full window
// each time: the requeue path's cost per chunk.
void BM_sender_one_file_requeue(benchmark::State& state) {
    static const transfer_plan p = make_plan(1, 4096ull * chunk_size, false);
    sender_bench(state, p, 64);
}
BENCHMARK(BM_sender_one_file_requeue);

// 10,000 files of 4 KiB (one chunk each): Offer batches, Accepts and one chunk per file.
void BM_sender_small_files(benchmark::State& state) {
    static const transfer_plan p = make_plan(10'000, 4096, false);
    sender_bench(state, p, 0);
}
BENCHMARK(BM_sender_small_files);

// The receiver's side of the same transfers.
void receiver_bench(benchmark::State& state, const transfer_plan& p) {
    std::uint64_t allocs = 0;
    for (auto _ : state) {
        std::uint64_t before = ferry::bench::allocations();
        receiver_machine r;
        std::size_t next_decision = 0;
        std::size_t next_done = 0;
        std::uint64_t finished = 0;
        wire::Chunk c;
        c.set_codec(wire::CODEC_RAW);
        for (const wire::Offer& offer : p.offers) {
            std::vector<file_id> ids;
            if (r.on_offer(offer, ids)) {
                state.SkipWithError("offer refused");
                return;
            }
            std::vector<receiver_machine::decision> batch(
                p.decisions.begin() + static_cast<std::ptrdiff_t>(next_decision),
                p.decisions.begin() + static_cast<std::ptrdiff_t>(next_decision + ids.size()));
            next_decision += ids.size();
            benchmark::DoNotOptimize(r.accept(batch));
            for (file_id f : ids) {
                std::uint64_t size = r.entry(f).size;
                std::uint64_t chunks = chunk_count(size);
                for (std::uint64_t i = 0; i < chunks; ++i) {
                    chunk_index idx{static_cast<std::uint32_t>(i)};
                    if (r.has_chunk(f, idx)) {
                        continue;  // resumed: the sender does not send it
                    }
                    c.set_file_id(f.value);
                    c.set_index(idx.value);
                    c.set_raw_len(chunk_length(size, i));
                    if (r.on_chunk(c, c.raw_len())) {
                        state.SkipWithError("chunk refused");
                        return;
                    }
                    r.on_chunk_written(f, idx, made_up_digest(f, idx));
                }
                if (!r.single_chunk(f) && r.on_file_done(p.file_dones.at(next_done++))) {
                    state.SkipWithError("FileDone refused");
                    return;
                }
                bool ok = false;
                if (!r.ready(f, ok) || !ok) {
                    state.SkipWithError("file not verified");
                    return;
                }
                r.on_file_finished(f);
                ++finished;
            }
        }
        if (!r.all_finished()) {
            state.SkipWithError("transfer not finished");
            return;
        }
        benchmark::DoNotOptimize(finished);
        allocs += ferry::bench::allocations() - before;
    }
    state.counters["allocs/chunk"] = static_cast<double>(allocs) / static_cast<double>(state.iterations() * p.chunks);
    state.SetItemsProcessed(state.iterations() * static_cast<std::int64_t>(p.chunks));
}

void BM_receiver_one_file(benchmark::State& state) {
    static const transfer_plan p = make_plan(1, 4096ull * chunk_size, false);
    receiver_bench(state, p);
}
BENCHMARK(BM_receiver_one_file);

void BM_receiver_small_files(benchmark::State& state) {
    static const transfer_plan p = make_plan(10'000, 4096, false);
    receiver_bench(state, p);
}
BENCHMARK(BM_receiver_small_files);

}  // namespace
}  // namespace ferry

int main(int argc, char** argv) { return ferry::bench::run_main(argc, argv); }
