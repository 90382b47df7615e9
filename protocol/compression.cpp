#include "protocol/compression.hpp"

#include <algorithm>

namespace ferry {

namespace {

// Weight of the newest attempt in the running averages.
constexpr double ewma_weight = 0.25;
// Above this out/raw ratio compression is not worth its CPU anywhere.
constexpr double max_ratio = 0.9;
// A link is "slow" for compression at `fast_level` when that level compresses at least
// this many times faster than the link carries bytes now.
constexpr double link_margin = 2.0;
// CPU seconds that one byte on the wire costs on a fast link, sender and receiver together
// (TLS seal and open, socket write and read): 2.0 CPU s/GiB measured on loopback
// (bench/RESULTS.md, 2026-12-01), taken a little low so that compression must clearly win.
constexpr double wire_cost_per_byte = 1.5e-9;
// Decompression cost per raw byte, estimated from the compression cost (zstd decodes
// several times faster than it encodes), with a floor for the write of the output.
constexpr double min_decode_cost_per_byte = 0.25e-9;
constexpr std::uint32_t min_probe_interval = 16;
// While compressing because the link is slow, one wire-rate period in this many (about
// 12 s of quarter seconds) goes raw to measure the link again. Such a period moves
// 1/ratio less payload (text over 100 Mbit/s: one in 16 cost 5 % of the rate, one in
// 48 costs under 2 %); a link that became fast is noticed that much later.
constexpr std::uint32_t raw_period_interval = 48;
constexpr std::uint32_t max_probe_interval = 128;
// A raw period measures the link only when a socket pushed back for at least this share
// of it. A 100 Mbit/s link shows 0.88-1.0; loopback carrying many small files 0-0.13
// (bench/RESULTS.md, 2026-12-03).
constexpr double min_link_busy = 0.5;

double blend(double average, double sample) {
    return average == 0 ? sample : average + ewma_weight * (sample - average);
}

}  // namespace

std::optional<compress_mode> parse_compress_mode(std::string_view text) {
    if (text == "auto") {
        return compress_mode::automatic;
    }
    if (text == "always") {
        return compress_mode::always;
    }
    if (text == "never") {
        return compress_mode::never;
    }
    return std::nullopt;
}

const char* compress_mode_name(compress_mode m) {
    switch (m) {
        case compress_mode::automatic: return "auto";
        case compress_mode::always: return "always";
        case compress_mode::never: return "never";
    }
    return "auto";
}

compression_policy::reason compression_policy::worth_it() const {
    if (ratio_ > max_ratio || speed_fast_ <= 0) {
        return reason::none;
    }
    double encode = 1.0 / speed_fast_;
    double decode = std::max(min_decode_cost_per_byte, encode / 4);
    if ((1.0 - ratio_) * wire_cost_per_byte >= encode + decode) {
        return reason::cheap;  // cheaper than moving the bytes it saves, however fast the link
    }
    // The link (measured raw) is the limit, and compression keeps up with it.
    return link_measured_ && speed_fast_ >= link_margin * link_rate_ ? reason::slow_link : reason::none;
}

int compression_policy::next_level() {
    int level = 0;
    switch (mode_) {
        case compress_mode::never: return 0;
        case compress_mode::always: return fast_level;
        case compress_mode::automatic: break;
    }
    reason why = ratio_ == 0 ? reason::none : worth_it();
    if (why == reason::slow_link && measure_raw_) {
        level = 0;  // this period goes raw, to measure the link again
    } else if (ratio_ == 0) {
        // Nothing measured yet: find out, one chunk at a time (the chunks decided before
        // its result comes back go raw, or a first window of any data would be compressed).
        level = trial_pending_ ? 0 : fast_level;
        trial_pending_ = true;
    } else if (why == reason::none) {
        if (++since_probe_ >= probe_interval_) {
            since_probe_ = 0;
            level = fast_level;
        }
    } else {
        since_probe_ = 0;
        // On a link slow enough that the stronger level keeps up too, its better ratio is free.
        bool strong_keeps_up = link_measured_ && (speed_strong_ > 0 ? speed_strong_ >= link_margin * link_rate_
                                                                    : speed_fast_ >= 3 * link_margin * link_rate_);
        // The strongest level: one thread must compress what the link carries at this
        // ratio (raw bytes link_rate / ratio a second); until measured, level 3 must do
        // four times that (level 5 is about a quarter of its speed).
        double raw_needed = link_rate_ / ratio_;
        bool strongest_keeps_up = strong_keeps_up && (speed_strongest_ > 0 ? speed_strongest_ >= raw_needed
                                                                          : speed_strong_ >= 4 * raw_needed);
        level = strongest_keeps_up ? strongest_level : strong_keeps_up ? strong_level : fast_level;
        compressing_for_link_ = why == reason::slow_link;
    }
    ++(level > 0 ? decided_compressed_ : decided_raw_);
    return level;
}

void compression_policy::on_wire_rate(double bytes_per_second, double link_busy) {
    if (decided_raw_ + decided_compressed_ == 0 || bytes_per_second <= 0) {
        return;  // nothing was sent: says nothing about the link
    }
    if (decided_compressed_ * 10 <= decided_raw_) {
        if (link_busy >= min_link_busy) {
            // (Nearly) all raw and the network the limit: this is the link's rate now.
            link_rate_ = link_measured_ ? (link_rate_ + bytes_per_second) / 2 : bytes_per_second;
            link_measured_ = true;
        } else {
            // The sockets waited for data: the link carries more than this and is not
            // what limits the transfer. Compressing would only add CPU work.
            link_rate_ = std::max(link_rate_, bytes_per_second);
            link_measured_ = false;
        }
        measure_raw_ = false;
        compressed_periods_ = 0;
    } else {
        // Compressed data leaves the link idle when compression is the limit, so the
        // wire rate is only a lower bound on what the link carries.
        link_rate_ = std::max(link_rate_, bytes_per_second);
        // A decision that rests on the link's rate is checked again now and then: one
        // period in raw_period_interval goes raw.
        if (compressing_for_link_ && ++compressed_periods_ >= raw_period_interval) {
            measure_raw_ = true;
        }
    }
    decided_raw_ = 0;
    decided_compressed_ = 0;
    compressing_for_link_ = false;
}

void compression_policy::observe(int level, std::uint64_t raw, std::uint64_t out, double cpu_seconds) {
    trial_pending_ = false;
    if (raw == 0) {
        return;
    }
    double r = std::min(1.0, static_cast<double>(out) / static_cast<double>(raw));
    ratio_ = blend(ratio_, std::max(r, 1e-6));
    if (cpu_seconds > 0) {
        double s = static_cast<double>(raw) / cpu_seconds;
        double& speed = level == strongest_level ? speed_strongest_ : level == strong_level ? speed_strong_ : speed_fast_;
        speed = blend(speed, s);
    }
    // Probes grow rarer while they find nothing worth compressing: data that does not
    // shrink, or text on a link that is not the limit (whose probes cost CPU and save
    // nothing that matters).
    probe_interval_ =
        worth_it() == reason::none ? std::min(probe_interval_ * 2, max_probe_interval) : min_probe_interval;
}

}  // namespace ferry
