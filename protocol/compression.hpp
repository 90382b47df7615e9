// Adaptive chunk compression: when the sender compresses a chunk (zstd) and at which level.
//
// Sans-IO: the caller (send_session, loop thread) measures and passes in the figures:
// the session's wire send rate every quarter second or so, and for each compression
// attempt the bytes in, the bytes out and the CPU time it took. No clock, no zstd here.
//
// The rule (`automatic`): compress while it pays.
// - It pays on a slow link: one thread compresses at least twice as fast as the link
//   carries raw bytes, so the link carries fewer bytes per payload byte. The link's rate
//   is what the sockets took in a quarter second when chunks went (nearly all) raw and
//   the network held them back: some connection's socket pushed back (would take no
//   more) for at least half of it, or --bwlimit did. A raw period in which the sockets
//   took everything says the link is not the limit (the sender's or receiver's file
//   work is: many small files), and this reason stops applying until a busy raw period
//   measures the link again. Until such a measurement exists this reason does not
//   apply (the first chunk is still tried, to learn the ratio and speed; one at a time
//   until a result is back). While compressing, the wire rate only
//   raises that figure, because compressing lowers the wire rate by itself and must not
//   make the link look slower; and one quarter second in 48 goes raw to measure the link
//   again. Over 100 Mbit/s or 1 Gbit/s almost anything compressible qualifies.
// - The level: the strongest of 1, 3 and 5 that still keeps up. Level 3 when it compresses
//   twice as fast as the link carries bytes; level 5 (about a tenth smaller than 3 on text,
//   a quarter of its speed) when one thread at it feeds the link at its current ratio,
//   i.e. compresses link_rate / ratio raw bytes a second (so two workers have a margin
//   of two): 100 Mbit/s text qualifies, 1 Gbit/s does not.
// - It pays on a fast link (loopback, 10 GbE) only when compression is cheaper than
//   moving the bytes it saves through TLS and the sockets on both sides (the CPU cost
//   model in compression.cpp): all-zero or highly repetitive data, not ordinary text.
// - Never when the data does not shrink (ratio above 0.9: media, archives, random).
// Measurements are running averages, so a change of data or link is followed within a
// few chunks. While not compressing, every `probe_interval`-th chunk (growing to 128
// while probes find nothing worth compressing) is still tried, to keep the ratio and
// speed current (data that became compressible); the attempt's output is sent when it
// is smaller.
#pragma once

#include <cstdint>
#include <optional>
#include <string_view>

namespace ferry {

enum class compress_mode {
    automatic,  // compress while it pays (above)
    always,     // try every chunk at level 1; send compressed when smaller
    never,      // never compress
};

// Parses "auto", "always" or "never"; nothing for anything else.
std::optional<compress_mode> parse_compress_mode(std::string_view text);
const char* compress_mode_name(compress_mode m);

class compression_policy {
public:
    static constexpr int fast_level = 1;
    static constexpr int strong_level = 3;
    static constexpr int strongest_level = 5;

    explicit compression_policy(compress_mode mode = compress_mode::automatic) : mode_(mode) {}

    // The level to try for the next chunk, or 0 for "send it raw".
    int next_level();

    // Bytes per second the session's sockets accepted over the period since the last call
    // (covering the chunks decided since then), and `link_busy`: the largest share of that
    // period (0 to 1) in which one connection's socket pushed back, or a rate limit held
    // the sender.
    void on_wire_rate(double bytes_per_second, double link_busy);

    // One attempt: `raw` bytes in, `out` bytes out (`raw` or more if it did not shrink),
    // `cpu_seconds` spent compressing, at `level`. `raw` 0: a chunk decided with `level`
    // was not compressed after all (a read error, a delta instead); every decision with a
    // level comes back here once.
    void observe(int level, std::uint64_t raw, std::uint64_t out, double cpu_seconds);

    compress_mode mode() const { return mode_; }
    // Running averages (for status and tests): out/raw, and raw bytes per CPU second at
    // each level (0 until measured).
    double ratio() const { return ratio_; }
    double speed(int level) const {
        return level == strongest_level ? speed_strongest_ : level == strong_level ? speed_strong_ : speed_fast_;
    }
    // What the link carries raw, bytes per second (0 until measured).
    double link_rate() const { return link_rate_; }

private:
    enum class reason { none, cheap, slow_link };
    reason worth_it() const;

    compress_mode mode_;
    double ratio_ = 0;         // 0: no attempt yet
    double speed_fast_ = 0;    // bytes/s at fast_level
    double speed_strong_ = 0;  // bytes/s at strong_level
    double speed_strongest_ = 0;  // bytes/s at strongest_level
    double link_rate_ = 0;
    bool link_measured_ = false;       // link_rate_ comes from a (nearly) raw, busy period
    bool measure_raw_ = false;         // the current period goes raw to measure the link
    bool compressing_for_link_ = false;  // this period compressed because the link is slow
    std::uint32_t compressed_periods_ = 0;  // since the link was last measured raw
    std::uint32_t decided_raw_ = 0;         // since the last wire rate
    std::uint32_t decided_compressed_ = 0;  // since the last wire rate
    bool trial_pending_ = false;  // the first attempt is out, its result not yet observed
    std::uint32_t since_probe_ = 0;
    std::uint32_t probe_interval_ = 16;
};

}  // namespace ferry
