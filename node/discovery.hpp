// discovery: LAN discovery for `ferry serve` (docs/discovery.md).
//
// Announces this node on a UDP multicast group (IPv4 and IPv6 link-local, one port) on
// every interface that is up and multicast-capable, and listens there for the others'
// announcements. Each announcement is signed with the node key (transport/announce.hpp);
// one whose signature or ID does not hold is ignored, and so is one that is not newer
// than the last taken from that node (protocol/announce_filter.hpp: recordings sent again,
// stale clocks). Announcements go out at start, on change, then at growing gaps (1 s
// doubling up to the interval, each drawn between half and all of it, so a fleet started
// together does not stay in step), and within a second of hearing a node that is new
// here (so that it hears this one soon too); a node not heard for the timeout is
// forgotten, and one that stops says so (leaving).
//
// Loop thread only. Interfaces are looked at again before each announcement (one
// getifaddrs), so one that comes up later is joined then.
#pragma once

#include <asio.hpp>
#include <algorithm>
#include <chrono>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include "protocol/announce_filter.hpp"
#include "transport/announce.hpp"

namespace ferry {

struct discovery_config {
    bool enabled = false;  // `ferry serve` turns it on (--no-discovery: off)
    std::string name;                        // announced; empty: the host name
    std::string group4 = "239.255.77.88";
    std::string group6 = "ff02::7788";
    std::uint16_t port = 7789;
    std::chrono::milliseconds interval{std::chrono::seconds(30)};  // the longest gap between announcements
    std::chrono::milliseconds timeout{std::chrono::seconds(100)};  // a node not heard this long is forgotten
};

inline constexpr std::size_t max_discovered_addresses = 8;

// Events against a rate: `burst` at once, then `rate` a second.
struct event_bucket {
    double rate;
    double burst;
    double tokens = burst;
    std::chrono::steady_clock::time_point refill{};
    // True (and one taken) when an event may pass at `now`.
    bool take(std::chrono::steady_clock::time_point now) {
        tokens = std::min(burst, tokens + rate * std::chrono::duration<double>(now - refill).count());
        refill = now;
        if (tokens < 1) {
            return false;
        }
        tokens -= 1;
        return true;
    }
};

struct discovered_peer {
    std::string id;
    std::string name;
    std::vector<std::string> addresses;  // HOST:PORT to dial, as heard (newest first)
    std::string from;                    // the address the last announcement came from
    bool heard_v4 = false;               // the last announcement taken came by IPv4 (and/or IPv6)
    bool heard_v6 = false;
    std::uint32_t version = 0;
    std::chrono::steady_clock::time_point last_seen;
    std::int64_t last_seen_ms = 0;  // our wall clock then
};

struct discovery_counts {
    std::uint64_t sent = 0;
    std::uint64_t received = 0;
    std::uint64_t taken = 0;
    std::uint64_t forged = 0;    // did not open: malformed, bad signature, an ID not its key's
    std::uint64_t stale = 0;     // a clock far from ours
    std::uint64_t replayed = 0;  // not newer than the last taken from that node
    std::uint64_t dropped = 0;   // over the rate this node reads announcements at
};

class discovery {
public:
    // `listen`: this node's listen addresses (HOST:PORT) when asked.
    // `seen`: a node heard for the first time (or again after it was forgotten), or one
    // that said it leaves (`present` false).
    discovery(asio::io_context& io, discovery_config config, const std::string& key_pem,
              std::function<std::vector<std::string>()> listen, std::function<void(const std::string&)> log,
              std::function<void(const discovered_peer&, bool present)> seen = nullptr);
    ~discovery();

    // Opens the sockets and starts announcing. False, with `error`, when neither family's
    // socket can be bound (the node runs on without discovery).
    bool start(std::string& error);
    // Says it is leaving (once on each interface) and closes.
    void stop();

    // Nodes heard within the timeout, by ID.
    std::vector<discovered_peer> peers() const;
    const discovery_counts& counts() const { return counts_; }
    const discovery_config& config() const { return config_; }

private:
    struct family;
    void announce(bool leaving);
    void schedule();
    // The next announcement at `at`.
    void announce_at(std::chrono::steady_clock::time_point at);
    // A node new here: the next announcement goes within a second, unless one is due
    // sooner (never later: a flood of new IDs cannot hold this node's announcements back).
    void answer();
    void receive(family& f);
    void take(std::span<const std::uint8_t> datagram, const asio::ip::address& from);
    // The addresses `a` gives to dial `p` at, heard from `from` (0.0.0.0 and [::] mean
    // `from`), added to p.addresses (IP literals only; at most max_addresses in all).
    static void add_addresses(discovered_peer& p, const announcement& a, const asio::ip::address& from);
    void join_interfaces();

    asio::io_context& io_;
    discovery_config config_;
    announce_signer signer_;
    std::function<std::vector<std::string>()> listen_;
    std::function<void(const std::string&)> log_;
    std::function<void(const discovered_peer&, bool present)> seen_;
    std::unique_ptr<family> v4_;
    std::unique_ptr<family> v6_;
    asio::steady_timer timer_;
    unsigned round_ = 0;
    std::chrono::steady_clock::time_point next_announce_;
    // `seen` calls for new nodes (a flood of new IDs is not a flood of lines).
    event_bucket seen_rate_{.rate = 1.0 / 3, .burst = 20};
    std::uint64_t instance_ = 0;
    std::uint64_t seq_ = 0;
    announce_filter filter_;
    std::map<std::string, discovered_peer> peers_;
    discovery_counts counts_;
    // Announcements read a second, so a flood costs little.
    event_bucket read_rate_{.rate = 50, .burst = 100};
    std::chrono::steady_clock::time_point last_log_;
    bool stopped_ = false;
};

}  // namespace ferry
