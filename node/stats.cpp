#include "node/stats.hpp"

#include <algorithm>
#include <cmath>
#include <limits>

#include "transport/stream.hpp"

namespace ferry {

std::int64_t rate_window::second_of(stats_clock::time_point t) {
    return std::chrono::duration_cast<std::chrono::seconds>(t.time_since_epoch()).count();
}

void rate_window::advance(std::int64_t second) {
    if (!started_ || second <= newest_) {
        return;
    }
    // Clear the buckets of the seconds that passed without data (at most all of them).
    std::int64_t gap = std::min<std::int64_t>(second - newest_, seconds);
    for (std::int64_t s = 1; s <= gap; ++s) {
        buckets_[static_cast<std::size_t>((newest_ + s) % seconds)] = 0;
    }
    newest_ = second;
}

void rate_window::add(std::uint64_t bytes, stats_clock::time_point now) {
    std::int64_t second = second_of(now);
    if (!started_) {
        started_ = true;
        newest_ = second;
        buckets_.fill(0);
    }
    advance(second);
    if (second <= newest_ - seconds) {
        return;  // older than the window (a clock that went back): ignored
    }
    buckets_[static_cast<std::size_t>(((second % seconds) + seconds) % seconds)] += bytes;
}

double rate_window::rate(stats_clock::time_point now, int span) const {
    if (!started_) {
        return 0;
    }
    span = std::clamp(span, 1, seconds);
    std::int64_t second = second_of(now);
    std::uint64_t sum = 0;
    for (std::int64_t s = second - span + 1; s <= second; ++s) {
        if (s <= newest_ && s > newest_ - seconds) {
            sum += buckets_[static_cast<std::size_t>(((s % seconds) + seconds) % seconds)];
        }
    }
    // Elapsed time covered: the full seconds before plus the part of the current one,
    // and never more than the time since the origin (a transfer's first ack carries bytes
    // that took the whole time since its start to arrive).
    double into_second = std::chrono::duration<double>(now.time_since_epoch()).count() - static_cast<double>(second);
    double covered = static_cast<double>(span - 1) + into_second;
    double since_origin = std::chrono::duration<double>(now - origin_).count();
    covered = std::min(covered, since_origin);
    if (covered <= 0.001) {
        covered = 0.001;
    }
    return static_cast<double>(sum) / covered;
}

void latency_histogram::observe(stats_clock::duration d) {
    double s = std::chrono::duration<double>(d).count();
    std::size_t i = 0;
    while (i < bounds.size() && s > bounds[i]) {
        ++i;
    }
    ++buckets_[i];
    ++count_;
    sum_ += s;
}

double latency_histogram::quantile_bound(double q) const {
    if (count_ == 0) {
        return 0;
    }
    auto need = static_cast<std::uint64_t>(std::ceil(q * static_cast<double>(count_)));
    need = std::max<std::uint64_t>(need, 1);
    std::uint64_t seen = 0;
    for (std::size_t i = 0; i < bounds.size(); ++i) {
        seen += buckets_[i];
        if (seen >= need) {
            return bounds[i];
        }
    }
    return std::numeric_limits<double>::infinity();
}

void stats_scope::add_wire(std::uint64_t sent, std::uint64_t received) {
    for (stats_scope* s = this; s != nullptr; s = s->parent_.get()) {
        s->c_.wire_sent += sent;
        s->c_.wire_received += received;
    }
}

void stats_scope::add_payload_sent(std::uint64_t bytes, std::uint64_t chunks, stats_clock::time_point now,
                                   std::uint64_t saved) {
    for (stats_scope* s = this; s != nullptr; s = s->parent_.get()) {
        s->c_.payload_sent += bytes;
        s->c_.chunks_sent += chunks;
        s->c_.compression_saved += saved;
        s->payload_rate_.add(bytes, now);
    }
}

void stats_scope::add_payload_received(std::uint64_t bytes, std::uint64_t chunks, stats_clock::time_point now,
                                       std::uint64_t saved) {
    for (stats_scope* s = this; s != nullptr; s = s->parent_.get()) {
        s->c_.payload_received += bytes;
        s->c_.chunks_received += chunks;
        s->c_.compression_saved += saved;
        s->payload_rate_.add(bytes, now);
    }
}

std::shared_ptr<stats_scope> peer_scopes::get(const std::string& key, stats_clock::time_point now) {
    if (auto it = scopes_.find(key); it != scopes_.end()) {
        return it->second;
    }
    if (scopes_.size() >= cap_) {
        for (auto i = scopes_.begin(); i != scopes_.end(); ++i) {
            if (i->second.use_count() == 1) {  // no running transfer holds it
                scopes_.erase(i);
                break;
            }
        }
    }
    auto scope = std::make_shared<stats_scope>(root_, now);
    scopes_.emplace(key, scope);
    return scope;
}

void count_wire(byte_stream& stream, const std::shared_ptr<stats_scope>& scope) {
    scope->add_wire(stream.wire_sent(), stream.wire_received());
    stream.set_wire_observer([scope](std::uint64_t sent, std::uint64_t received) { scope->add_wire(sent, received); });
}

}  // namespace ferry
