#include "protocol/range_schedule.hpp"

#include <algorithm>
#include <limits>

namespace ferry {

range_schedule::range_schedule(std::uint64_t file_size, std::uint64_t range_length)
    : size_(file_size), length_(std::max<std::uint64_t>(range_length, 1)) {
    std::uint64_t n = size_ / length_ + (size_ % length_ != 0 ? 1 : 0);
    ranges_.resize(n);
    for (std::size_t r = 0; r < n; ++r) {
        waiting_.push_back(r);
    }
}

std::uint64_t range_schedule::pick_length(std::uint64_t file_size, std::size_t sources, std::uint64_t chunk,
                                          std::uint64_t min_length, std::uint64_t max_length) {
    std::uint64_t want = file_size / (16 * std::max<std::size_t>(sources, 1));
    want = std::clamp(want, min_length, max_length);
    return std::max(chunk, want / chunk * chunk);
}

std::uint64_t range_schedule::length(std::size_t r) const {
    return std::min(length_, size_ - offset(r));
}

std::size_t range_schedule::add_source() {
    sources_.emplace_back();
    return sources_.size() - 1;
}

bool range_schedule::runs(std::size_t r, std::size_t s) const {
    const auto& run = ranges_[r].runners;
    return std::find(run.begin(), run.end(), s) != run.end();
}

bool range_schedule::failed_it(std::size_t r, std::size_t s) const {
    const auto& f = ranges_[r].failed_by;
    return std::find(f.begin(), f.end(), s) != f.end();
}

bool range_schedule::others_alive(std::size_t s) const {
    for (std::size_t k = 0; k < sources_.size(); ++k) {
        if (k != s && !sources_[k].dropped) {
            return true;
        }
    }
    return false;
}

std::optional<std::size_t> range_schedule::next(std::size_t s) {
    if (sources_.at(s).dropped) {
        return std::nullopt;
    }
    // The first waiting range this source has not failed (any, when it is the last source).
    bool alone = !others_alive(s);
    for (auto it = waiting_.begin(); it != waiting_.end(); ++it) {
        std::size_t r = *it;
        if (!alone && failed_it(r, s)) {
            continue;
        }
        waiting_.erase(it);
        ranges_[r].runners.push_back(s);
        if (ranges_[r].handed == 0) {
            ranges_[r].handed = ++handed_;
        }
        return r;
    }
    if (!waiting_.empty() && !alone) {
        return std::nullopt;  // what waits is for the others
    }
    // End game: the range running longest that `s` does not run, with one runner.
    std::optional<std::size_t> best;
    for (std::size_t r = 0; r < ranges_.size(); ++r) {
        const range_state& st = ranges_[r];
        if (st.done || st.runners.empty() || st.runners.size() >= max_runners || runs(r, s) || failed_it(r, s)) {
            continue;
        }
        if (!best || st.handed < ranges_[*best].handed) {
            best = r;
        }
    }
    if (best) {
        ranges_[*best].runners.push_back(s);
    }
    return best;
}

bool range_schedule::done(std::size_t r, std::size_t s) {
    range_state& st = ranges_.at(r);
    std::erase(st.runners, s);
    sources_.at(s).failures_in_row = 0;
    if (st.done) {
        return false;
    }
    st.done = true;
    ++done_count_;
    std::erase(waiting_, r);
    sources_[s].figures.ranges += 1;
    sources_[s].figures.bytes += length(r);
    return true;
}

void range_schedule::have(std::size_t r) {
    range_state& st = ranges_.at(r);
    if (!st.done) {
        st.done = true;
        ++done_count_;
        std::erase(waiting_, r);
    }
}

void range_schedule::failed(std::size_t r, std::size_t s, bool counts) {
    range_state& st = ranges_.at(r);
    std::erase(st.runners, s);
    if (counts) {
        if (!failed_it(r, s)) {
            st.failed_by.push_back(s);
        }
        source_state& src = sources_.at(s);
        ++src.figures.failures;
        if (++src.failures_in_row >= max_failures) {
            drop(s);
        }
    }
    if (!st.done && st.runners.empty() && std::find(waiting_.begin(), waiting_.end(), r) == waiting_.end()) {
        waiting_.push_front(r);
    }
}

void range_schedule::drop(std::size_t s) {
    sources_.at(s).dropped = true;
    sources_[s].figures.dropped = true;
}

bool range_schedule::stuck() const {
    if (finished()) {
        return false;
    }
    return std::all_of(sources_.begin(), sources_.end(), [](const source_state& s) { return s.dropped; });
}

}  // namespace ferry
