#include "tools/progress.hpp"

#include <sys/ioctl.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <iostream>

namespace ferry::cli {

namespace {

constexpr auto bar_period = std::chrono::milliseconds(100);   // at most 10 redraws a second
constexpr auto json_period = std::chrono::milliseconds(250);  // at most 4 events a second

std::size_t terminal_width() {
    winsize ws{};
    if (::ioctl(STDERR_FILENO, TIOCGWINSZ, &ws) == 0 && ws.ws_col >= 40) {
        return ws.ws_col;
    }
    return 80;
}

std::string clock_text(double seconds) {
    if (!std::isfinite(seconds) || seconds < 0 || seconds > 99 * 3600) {
        return "--:--";
    }
    auto s = static_cast<long>(seconds + 0.5);
    char buf[32];
    if (s >= 3600) {
        std::snprintf(buf, sizeof buf, "%ld:%02ld:%02ld", s / 3600, (s / 60) % 60, s % 60);
    } else {
        std::snprintf(buf, sizeof buf, "%ld:%02ld", s / 60, s % 60);
    }
    return buf;
}

}  // namespace

std::string human_bytes(std::uint64_t b) {
    const char* units[] = {"B", "KB", "MB", "GB", "TB", "PB"};
    double v = static_cast<double>(b);
    int u = 0;
    while (v >= 1000 && u < 5) {
        v /= 1000;
        ++u;
    }
    char buf[64];
    std::snprintf(buf, sizeof(buf), u == 0 ? "%.0f %s" : "%.2f %s", v, units[u]);
    return buf;
}

progress_view::progress_view(asio::io_context& io, options opts, source src, json_sink sink)
    : timer_(io), opts_(opts), source_(std::move(src)), sink_(std::move(sink)) {}

progress_view::~progress_view() { stop(); }

void progress_view::wake() {
    if (running_ || stopped_ || (!opts_.bars && !opts_.json)) {
        return;
    }
    running_ = true;
    timer_.expires_after(opts_.bars ? bar_period : json_period);
    timer_.async_wait([this](std::error_code ec) {
        if (!ec) {
            tick();
        }
    });
}

void progress_view::tick() {
    running_ = false;
    if (stopped_) {
        return;
    }
    std::vector<transfer_progress> now = source_();
    if (now.empty()) {
        clear();
        return;  // nothing runs: no timer until the next transfer wakes us
    }
    if (opts_.bars) {
        draw(now);
    }
    auto t = std::chrono::steady_clock::now();
    if (opts_.json && t - last_json_ >= json_period - std::chrono::milliseconds(5)) {
        last_json_ = t;
        for (const auto& p : now) {
            sink_(p);
        }
    }
    wake();
}

std::string progress_view::bar_line(const transfer_progress& p, std::size_t width) {
    std::uint64_t to_move = p.total_bytes > p.skipped_bytes ? p.total_bytes - p.skipped_bytes : 0;
    double frac = to_move > 0 ? std::min(1.0, static_cast<double>(p.confirmed_bytes) / static_cast<double>(to_move))
                              : (p.offered ? 1.0 : 0.0);
    std::string stats = " " + std::string(p.direction == "send" ? "↑" : "↓") + " ";
    char pct[16];
    std::snprintf(pct, sizeof pct, "%3d%%", static_cast<int>(frac * 100));
    stats += pct;
    stats += "  " + human_bytes(p.confirmed_bytes) + " / " + human_bytes(to_move);
    stats += "  " + human_bytes(static_cast<std::uint64_t>(p.rate)) + "/s";
    double eta = p.rate > 0 && to_move > p.confirmed_bytes
                     ? static_cast<double>(to_move - p.confirmed_bytes) / p.rate
                     : (to_move == p.confirmed_bytes ? 0.0 : -1.0);
    stats += "  ETA " + clock_text(eta);
    stats += "  files " + std::to_string(p.files_done) + "/" + std::to_string(p.files_total);
    // A bar of fixed width for the terminal (so it does not wobble as the figures change
    // length); no bar, then a cut line, where the terminal is too narrow: a wrapped line
    // would break the redraw. The arrow is 3 bytes and one column.
    std::size_t visible = stats.size() - 2;
    std::size_t bar = width >= 110 ? 30 : 16;
    if (bar + 2 + visible >= width) {
        std::string cut = stats.substr(1);
        return width > 1 && cut.size() - 2 >= width - 1 ? cut.substr(0, width + 1) : cut;
    }
    auto filled = static_cast<std::size_t>(frac * static_cast<double>(bar));
    std::string line = "[";
    line += std::string(filled, '=');
    if (filled < bar) {
        line += '>';
        line += std::string(bar - filled - 1, ' ');
    }
    line += "]";
    return line + stats;
}

void progress_view::draw(const std::vector<transfer_progress>& now) {
    std::size_t width = terminal_width();
    std::string out;
    if (drawn_ > 0) {
        out += "\033[" + std::to_string(drawn_) + "A\r\033[J";
    }
    for (const auto& p : now) {
        out += bar_line(p, width) + "\n";
    }
    drawn_ = now.size();
    std::cerr << out << std::flush;
}

void progress_view::clear() {
    if (drawn_ > 0) {
        std::cerr << "\033[" << drawn_ << "A\r\033[J" << std::flush;
        drawn_ = 0;
    }
}

void progress_view::say(const std::string& line) {
    clear();
    std::cerr << line << '\n' << std::flush;
}

void progress_view::final_progress(const transfer_progress& p) {
    if (opts_.json) {
        sink_(p);
    }
}

void progress_view::stop() {
    if (stopped_) {
        return;
    }
    stopped_ = true;
    clear();
    timer_.cancel();
}

}  // namespace ferry::cli
