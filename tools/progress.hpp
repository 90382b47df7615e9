// progress_view: what `ferry send/receive/serve` show while transfers run.
//
// On a terminal (stderr is a TTY, no --quiet) one bar per transfer, redrawn at most 10
// times a second and erased before any other line is written, so only the summary lines
// stay. With --json, `progress` events at most 4 times a second per transfer, and one
// last `progress` with the final figures before `done`. The timer runs only while a
// transfer does: an idle node never wakes up for it.
#pragma once

#include <asio.hpp>
#include <chrono>
#include <functional>
#include <map>
#include <string>
#include <vector>

#include "node/context.hpp"

namespace ferry::cli {

class progress_view {
public:
    struct options {
        bool bars = false;  // draw bars on stderr
        bool json = false;  // emit progress events
    };
    using source = std::function<std::vector<transfer_progress>()>;
    using json_sink = std::function<void(const transfer_progress&)>;

    progress_view(asio::io_context& io, options opts, source src, json_sink sink);
    ~progress_view();

    // A transfer started: make sure the timer runs.
    void wake();
    // Erases the bars (before a summary or log line is written); they come back on the
    // next tick.
    void clear();
    // Writes a line to stderr without tearing the bars.
    void say(const std::string& line);
    // The final figures of a finished transfer (the last progress event of it).
    void final_progress(const transfer_progress& p);
    // Stops drawing for good (the command is ending).
    void stop();

    // "[=====>    ]  45%  1.23 GB / 2.73 GB  1.10 GB/s  ETA 0:01  files 3/10"
    static std::string bar_line(const transfer_progress& p, std::size_t width);

private:
    void tick();
    void draw(const std::vector<transfer_progress>& now);

    asio::steady_timer timer_;
    options opts_;
    source source_;
    json_sink sink_;
    bool running_ = false;
    bool stopped_ = false;
    std::size_t drawn_ = 0;  // bar lines on screen
    std::chrono::steady_clock::time_point last_json_{};
};

// 1234567 -> "1.23 MB" (10^3 units).
std::string human_bytes(std::uint64_t b);

}  // namespace ferry::cli
