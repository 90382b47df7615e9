#include "protocol/announce_filter.hpp"

#include <algorithm>

namespace ferry {

announce_filter::verdict announce_filter::check(const std::string& id, std::uint64_t instance, std::uint64_t seq,
                                                std::int64_t time_ms, std::int64_t now_ms) {
    if (time_ms < now_ms - max_skew_ms || time_ms > now_ms + max_skew_ms) {
        return verdict::stale;
    }
    auto it = newest_.find(id);
    if (it != newest_.end()) {
        const newest& n = it->second;
        if (instance == n.instance && seq == n.seq && time_ms == n.time_ms) {
            return verdict::duplicate;
        }
        bool newer = instance == n.instance ? seq > n.seq : time_ms > n.time_ms;
        if (!newer) {
            return verdict::replayed;
        }
        it->second = {instance, seq, time_ms, now_ms};
        return verdict::fresh;
    }
    if (newest_.size() >= max_nodes) {
        auto oldest = std::min_element(newest_.begin(), newest_.end(), [](const auto& a, const auto& b) {
            return a.second.heard_ms < b.second.heard_ms;
        });
        newest_.erase(oldest);
    }
    newest_.emplace(id, newest{instance, seq, time_ms, now_ms});
    return verdict::fresh;
}

const char* to_string(announce_filter::verdict v) {
    switch (v) {
        case announce_filter::verdict::fresh: return "fresh";
        case announce_filter::verdict::duplicate: return "a duplicate of the last one taken";
        case announce_filter::verdict::stale: return "stale (its clock is over 10 minutes from ours)";
        case announce_filter::verdict::replayed: return "replayed (older than the last one taken)";
    }
    return "?";
}

}  // namespace ferry
