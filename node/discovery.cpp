#include "node/discovery.hpp"

#include <ifaddrs.h>
#include <net/if.h>
#include <openssl/rand.h>
#include <unistd.h>

#include <algorithm>

#include "node/backoff.hpp"
#include "protocol/types.hpp"
#include "transport/stream.hpp"

namespace ferry {

namespace {

std::int64_t wall_ms() {
    return std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::system_clock::now().time_since_epoch())
        .count();
}

std::string host_name() {
    char name[256] = {};
    return ::gethostname(name, sizeof name - 1) == 0 ? std::string(name) : std::string();
}

}  // namespace

struct discovery::family {
    explicit family(asio::io_context& io) : socket(io) {}
    asio::ip::udp::socket socket;
    asio::ip::udp::endpoint group;
    std::vector<asio::ip::address_v4> v4_interfaces;  // the interfaces' own addresses (IPv4)
    std::vector<unsigned> v6_interfaces;              // interface indexes (IPv6)
    std::set<std::string> joined;                     // interfaces the group is joined on
    std::array<std::uint8_t, 2048> buffer{};
    asio::ip::udp::endpoint sender;
};

discovery::discovery(asio::io_context& io, discovery_config config, const std::string& key_pem,
                     std::function<std::vector<std::string>()> listen, std::function<void(const std::string&)> log,
                     std::function<void(const discovered_peer&, bool present)> seen)
    : io_(io), config_(std::move(config)), signer_(key_pem), listen_(std::move(listen)), log_(std::move(log)),
      seen_(std::move(seen)), timer_(io) {
    if (config_.name.empty()) {
        config_.name = host_name();
    }
    RAND_bytes(reinterpret_cast<unsigned char*>(&instance_), sizeof instance_);
}

discovery::~discovery() = default;

bool discovery::start(std::string& error) {
    std::error_code ec;
    auto open = [&](std::unique_ptr<family>& f, const asio::ip::udp& proto, const std::string& group) {
        auto fam = std::make_unique<family>(io_);
        asio::ip::address g = asio::ip::make_address(group, ec);
        if (ec || !g.is_multicast()) {
            error += (error.empty() ? "" : "; ") + group + " is not a multicast group";
            return;
        }
        fam->group = asio::ip::udp::endpoint(g, config_.port);
        fam->socket.open(proto, ec);
        if (!ec && proto == asio::ip::udp::v6()) {
            fam->socket.set_option(asio::ip::v6_only(true), ec);
        }
        if (!ec) {
            fam->socket.set_option(asio::ip::udp::socket::reuse_address(true), ec);  // several nodes on one host
        }
        if (!ec) {
            fam->socket.bind(asio::ip::udp::endpoint(proto, config_.port), ec);
        }
        if (!ec) {
            fam->socket.set_option(asio::ip::multicast::enable_loopback(true), ec);
        }
        if (!ec) {
            fam->socket.set_option(asio::ip::multicast::hops(1), ec);  // this link only
        }
        if (ec) {
            error += (error.empty() ? "" : "; ") + group + " port " + std::to_string(config_.port) + ": " + ec.message();
            return;
        }
        f = std::move(fam);
    };
    if (!config_.group4.empty()) {
        open(v4_, asio::ip::udp::v4(), config_.group4);
    }
    if (!config_.group6.empty()) {
        open(v6_, asio::ip::udp::v6(), config_.group6);
    }
    if (!v4_ && !v6_) {
        return false;
    }
    for (family* f : {v4_.get(), v6_.get()}) {
        if (f != nullptr) {
            receive(*f);
        }
    }
    announce(false);
    return true;
}

void discovery::stop() {
    if (stopped_) {
        return;
    }
    announce(true);
    stopped_ = true;
    timer_.cancel();
    std::error_code ignored;
    for (family* f : {v4_.get(), v6_.get()}) {
        if (f != nullptr) {
            f->socket.close(ignored);
        }
    }
}

void discovery::join_interfaces() {
    ifaddrs* list = nullptr;
    if (::getifaddrs(&list) != 0) {
        return;
    }
    if (v4_) {
        v4_->v4_interfaces.clear();
    }
    if (v6_) {
        v6_->v6_interfaces.clear();
    }
    for (ifaddrs* i = list; i != nullptr; i = i->ifa_next) {
        if (i->ifa_addr == nullptr || (i->ifa_flags & IFF_UP) == 0 || (i->ifa_flags & IFF_MULTICAST) == 0) {
            continue;
        }
        std::error_code ec;
        if (i->ifa_addr->sa_family == AF_INET && v4_) {
            auto* sin = reinterpret_cast<const sockaddr_in*>(i->ifa_addr);
            asio::ip::address_v4 addr(ntohl(sin->sin_addr.s_addr));
            v4_->v4_interfaces.push_back(addr);
            if (v4_->joined.insert(addr.to_string()).second) {
                v4_->socket.set_option(asio::ip::multicast::join_group(v4_->group.address().to_v4(), addr), ec);
            }
        } else if (i->ifa_addr->sa_family == AF_INET6 && v6_) {
            unsigned index = ::if_nametoindex(i->ifa_name);
            if (index == 0 || std::ranges::find(v6_->v6_interfaces, index) != v6_->v6_interfaces.end()) {
                continue;
            }
            v6_->v6_interfaces.push_back(index);
            if (v6_->joined.insert(std::to_string(index)).second) {
                v6_->socket.set_option(asio::ip::multicast::join_group(v6_->group.address().to_v6(), index), ec);
            }
        }
    }
    ::freeifaddrs(list);
}

void discovery::announce(bool leaving) {
    join_interfaces();
    auto now = std::chrono::steady_clock::now();
    std::erase_if(peers_, [&](const auto& p) { return now - p.second.last_seen > config_.timeout; });
    announcement a;
    a.name = config_.name;
    a.listen = listen_();
    a.version = protocol_version;
    a.instance = instance_;
    a.seq = ++seq_;
    a.time_ms = wall_ms();
    a.leaving = leaving;
    std::string datagram = signer_.sign(std::move(a));
    asio::const_buffer out(datagram.data(), datagram.size());
    std::error_code ec;
    if (v4_) {
        for (const asio::ip::address_v4& addr : v4_->v4_interfaces) {
            v4_->socket.set_option(asio::ip::multicast::outbound_interface(addr), ec);
            if (!ec && v4_->socket.send_to(asio::buffer(out), v4_->group, 0, ec) > 0) {
                ++counts_.sent;
            }
        }
    }
    if (v6_) {
        for (unsigned index : v6_->v6_interfaces) {
            v6_->socket.set_option(asio::ip::multicast::outbound_interface(index), ec);
            if (!ec && v6_->socket.send_to(asio::buffer(out), v6_->group, 0, ec) > 0) {
                ++counts_.sent;
            }
        }
    }
    if (!leaving) {
        schedule();
    }
}

void discovery::schedule() {
    announce_at(std::chrono::steady_clock::now() + backoff_delay(round_++, std::chrono::seconds(1), config_.interval));
}

void discovery::answer() {
    auto at = std::chrono::steady_clock::now() +
              backoff_delay(0, std::chrono::seconds(1), std::chrono::seconds(1));  // 0.5-1 s, drawn
    if (!stopped_ && at < next_announce_) {
        announce_at(at);
    }
}

void discovery::announce_at(std::chrono::steady_clock::time_point at) {
    next_announce_ = at;
    timer_.expires_at(at);
    timer_.async_wait([this](std::error_code ec) {
        if (!ec && !stopped_) {
            announce(false);
        }
    });
}

void discovery::receive(family& f) {
    f.socket.async_receive_from(asio::buffer(f.buffer), f.sender, [this, &f](std::error_code ec, std::size_t n) {
        if (ec == asio::error::operation_aborted || stopped_) {
            return;
        }
        if (!ec) {
            take(std::span<const std::uint8_t>(f.buffer.data(), n), f.sender.address());
        }
        receive(f);
    });
}

void discovery::take(std::span<const std::uint8_t> datagram, const asio::ip::address& from) {
    ++counts_.received;
    auto now = std::chrono::steady_clock::now();
    if (!read_rate_.take(now)) {
        ++counts_.dropped;
        return;
    }
    std::string why;
    std::optional<announcement> a = open_announcement(datagram, why);
    if (a && a->id == signer_.id()) {
        return;  // our own, looped back
    }
    auto note = [&](const std::string& line) {
        if (now - last_log_ > std::chrono::minutes(1)) {  // at most one such line a minute
            last_log_ = now;
            log_(line);
        }
    };
    if (!a) {
        ++counts_.forged;
        note("discovery: ignored an announcement from " + from.to_string() + ": " + why);
        return;
    }
    std::int64_t now_ms = wall_ms();
    announce_filter::verdict v = filter_.check(a->id, a->instance, a->seq, a->time_ms, now_ms);
    if (v == announce_filter::verdict::duplicate) {
        // The same one by the other family (once): its addresses too. Another copy by
        // the same family is a recording sent again.
        auto it = peers_.find(a->id);
        if (it == peers_.end()) {
            return;  // the other copy of a `leaving` (nothing to add to)
        }
        if (from.is_v6() ? it->second.heard_v6 : it->second.heard_v4) {
            ++counts_.replayed;
            return;
        }
        (from.is_v6() ? it->second.heard_v6 : it->second.heard_v4) = true;
        add_addresses(it->second, *a, from);
        return;
    }
    if (v != announce_filter::verdict::fresh) {
        ++(v == announce_filter::verdict::stale ? counts_.stale : counts_.replayed);
        note("discovery: ignored an announcement of " + format_node_id(a->id) + " from " + from.to_string() + ": " +
             to_string(v));
        return;
    }
    ++counts_.taken;
    auto known = peers_.find(a->id);
    bool is_new = known == peers_.end() || now - known->second.last_seen > config_.timeout;
    if (a->leaving) {
        if (known != peers_.end()) {
            discovered_peer gone = std::move(known->second);
            peers_.erase(known);
            if (seen_) {
                seen_(gone, false);
            }
        }
        return;
    }
    discovered_peer& p = peers_[a->id];
    p.id = a->id;
    p.name = a->name;
    p.version = a->version;
    p.last_seen = now;
    p.last_seen_ms = now_ms;
    p.from = from.to_string();
    p.heard_v4 = from.is_v4();
    p.heard_v6 = from.is_v6();
    p.addresses.clear();
    add_addresses(p, *a, from);
    if (is_new) {
        // A node new here has not heard this one yet, most likely: announce within a
        // second (drawn, so that a LAN of nodes does not answer at once), not at the end
        // of a long gap.
        answer();
        if (seen_ && seen_rate_.take(now)) {
            seen_(p, true);
        }
    }
}

void discovery::add_addresses(discovered_peer& p, const announcement& a, const asio::ip::address& from) {
    const std::string sender = from.to_string();  // an IPv6 link-local one with its %scope
    for (const std::string& l : a.listen) {
        std::string host;
        std::string port;
        if (!split_host_port(l, host, port)) {
            continue;
        }
        std::error_code ec;
        asio::ip::address h = asio::ip::make_address(host, ec);
        std::string dial;
        if (ec) {
            continue;  // an IP address, not a name (nor anything a terminal would take for a command)
        }
        if (h.is_unspecified()) {
            if (h.is_v4() && from.is_v6()) {
                continue;  // 0.0.0.0 takes IPv4 only: its IPv4 copy gives the address
            }
            dial = from.is_v6() ? "[" + sender + "]:" + port : sender + ":" + port;
        } else if (h.is_loopback() && !from.is_loopback()) {
            continue;  // its loopback is not ours
        } else {
            dial = h.is_v6() ? "[" + h.to_string() + "]:" + port : h.to_string() + ":" + port;  // as asio writes it
        }
        if (std::ranges::find(p.addresses, dial) == p.addresses.end() && p.addresses.size() < max_discovered_addresses) {
            p.addresses.push_back(dial);
        }
    }
}

std::vector<discovered_peer> discovery::peers() const {
    std::vector<discovered_peer> out;
    auto now = std::chrono::steady_clock::now();
    for (const auto& [id, p] : peers_) {
        if (now - p.last_seen <= config_.timeout) {
            out.push_back(p);
        }
    }
    return out;
}

}  // namespace ferry
