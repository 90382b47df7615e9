// range_schedule: which source downloads which range of one file (`ferry get --from`,
// several sources at once). Sans-IO: the node asks for work whenever a source has room
// for another range, and tells the outcome of each.
//
// - The file is cut into ranges of equal length (the last one shorter), handed out in
//   order to whichever source asks: a faster source finishes its ranges sooner, asks
//   sooner, and so carries more of the file.
// - A range whose download failed goes back to the front of the queue, for another
//   source: the one that failed it takes it again only when no other source is left. A
//   source that fails `max_failures` times in a row is dropped: it gets no more work.
// - End game: once no range is waiting, a source with room takes a range another source
//   is still downloading (the one handed out first, at most two runners a range), so a
//   slow or stalled source does not set the end time. The first to finish wins.
#pragma once

#include <cstddef>
#include <cstdint>
#include <deque>
#include <optional>
#include <vector>

namespace ferry {

class range_schedule {
public:
    static constexpr unsigned max_failures = 2;
    static constexpr unsigned max_runners = 2;

    // `range_length` > 0; a file of 0 bytes has no range.
    range_schedule(std::uint64_t file_size, std::uint64_t range_length);

    // The range length for a file of `file_size` bytes and `sources` sources: about 16
    // ranges a source, in whole chunks of `chunk`, between `min_length` and `max_length`.
    static std::uint64_t pick_length(std::uint64_t file_size, std::size_t sources, std::uint64_t chunk,
                                     std::uint64_t min_length, std::uint64_t max_length);

    // A new source (any time): its index.
    std::size_t add_source();

    std::size_t ranges() const { return ranges_.size(); }
    std::uint64_t offset(std::size_t r) const { return r * length_; }
    std::uint64_t length(std::size_t r) const;

    // The range source `s` is to download next, or nullopt (nothing it may take now, or
    // it was dropped). Never a range `s` already runs or finished.
    std::optional<std::size_t> next(std::size_t s);
    // Range `r` is here, downloaded by `s`. True when it was not already (the first to
    // finish); the other runner's work is then wasted and may be stopped (runners()).
    bool done(std::size_t r, std::size_t s);
    // Range `r` is here already (an earlier, interrupted download left it): nobody is to
    // bring it, and it counts for no source.
    void have(std::size_t r);
    // `s` did not bring range `r` (an error, or stopped). `counts`: a failure of the
    // source's own (not when the range was stopped because another runner won).
    void failed(std::size_t r, std::size_t s, bool counts = true);
    // Stops handing work to `s` (it serves another version of the file, say).
    void drop(std::size_t s);

    bool finished() const { return done_count_ == ranges_.size(); }
    // No source left that may take work, and ranges still missing.
    bool stuck() const;
    bool dropped(std::size_t s) const { return sources_.at(s).dropped; }
    // Sources running range `r` now.
    const std::vector<std::size_t>& runners(std::size_t r) const { return ranges_.at(r).runners; }

    struct source_figures {
        std::uint64_t ranges = 0;  // ranges it brought first
        std::uint64_t bytes = 0;   // their bytes
        unsigned failures = 0;     // over the whole download
        bool dropped = false;
    };
    const source_figures& figures(std::size_t s) const { return sources_.at(s).figures; }
    std::size_t sources() const { return sources_.size(); }

private:
    struct range_state {
        std::vector<std::size_t> runners;
        std::vector<std::size_t> failed_by;  // sources that failed it (counted failures)
        bool done = false;
        std::uint64_t handed = 0;  // when it was first handed out (a count), for the end game
    };
    struct source_state {
        source_figures figures;
        unsigned failures_in_row = 0;
        bool dropped = false;
    };
    bool runs(std::size_t r, std::size_t s) const;
    bool failed_it(std::size_t r, std::size_t s) const;
    // Another source than `s` may still take work.
    bool others_alive(std::size_t s) const;

    std::uint64_t size_;
    std::uint64_t length_;
    std::vector<range_state> ranges_;
    std::vector<source_state> sources_;
    std::deque<std::size_t> waiting_;  // not done, no runner
    std::size_t done_count_ = 0;
    std::uint64_t handed_ = 0;
};

}  // namespace ferry
