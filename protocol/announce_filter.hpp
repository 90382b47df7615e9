// announce_filter: which checked LAN announcements are news (docs/discovery.md).
//
// An announcement was signed by the node it names (transport/announce.hpp), but anyone
// on the LAN can record one and send it again later. Each carries the sender's clock, a
// random instance per start and a count within it; per node the newest is kept, and an
// announcement is taken only when it is newer:
// - its clock is within max_skew_ms of ours (an old recording is stale, whoever sends it);
// - same instance: a higher count (a recording of this run is a replay; the last one
//   again is a duplicate, as a node sends each on both IPv4 and IPv6);
// - another instance (the node restarted): a later clock than the last one taken.
// No clock of its own: `now_ms` is given. Bounded: past max_nodes, the node heard from
// longest ago is dropped.
#pragma once

#include <cstdint>
#include <string>
#include <unordered_map>

namespace ferry {

class announce_filter {
public:
    static constexpr std::int64_t max_skew_ms = 10 * 60 * 1000;
    static constexpr std::size_t max_nodes = 4096;

    enum class verdict {
        fresh,      // news: take it
        duplicate,  // the one last taken from that node, again (sent on IPv4 and IPv6)
        stale,      // its clock is too far behind ours (or ahead)
        replayed,   // older than what was taken from that node
    };

    verdict check(const std::string& id, std::uint64_t instance, std::uint64_t seq, std::int64_t time_ms,
                  std::int64_t now_ms);
    std::size_t size() const { return newest_.size(); }

private:
    struct newest {
        std::uint64_t instance = 0;
        std::uint64_t seq = 0;
        std::int64_t time_ms = 0;
        std::int64_t heard_ms = 0;  // our clock when taken
    };
    std::unordered_map<std::string, newest> newest_;
};

const char* to_string(announce_filter::verdict v);

}  // namespace ferry
