#include "transport/connection.hpp"

#include <algorithm>
#include <cstring>

#include "protocol/delta.hpp"

namespace ferry {

connection::connection(std::unique_ptr<byte_stream> stream, std::shared_ptr<buffer_pool> pool,
                       connection_limits limits)
    : stream_(std::move(stream)), pool_(std::move(pool)), limits_(limits), rbuf_(limits.read_buffer) {}

connection::~connection() = default;

void connection::start(connection_handler* handler) {
    handler_ = handler;
    asio::post(stream_->socket().get_executor(), [self = shared_from_this()] { self->read_loop(); });
}

void connection::read_loop() {
    // Bounded work per turn so that one busy connection cannot starve the others.
    for (int round = 0; round < 32; ++round) {
        if (closed_ || waiting_buffer_) {
            return;
        }
        std::span<std::uint8_t> target;
        bool direct = decoder_.in_payload() && rpos_ == rend_ && payload_;
        if (direct) {
            target = std::span<std::uint8_t>(payload_.data() + payload_filled_, decoder_.payload_remaining());
        } else {
            if (rpos_ == rend_) {
                rpos_ = rend_ = 0;
            } else if (rpos_ > 0 && rend_ == rbuf_.size()) {
                std::memmove(rbuf_.data(), rbuf_.data() + rpos_, rend_ - rpos_);
                rend_ -= rpos_;
                rpos_ = 0;
            }
            target = std::span<std::uint8_t>(rbuf_.data() + rend_, rbuf_.size() - rend_);
        }
        io_result r = stream_->read_now(target);
        if (r.ec) {
            // A close in the middle of a frame is the peer's error, not a clean end.
            bool cut = r.ec == transport_errc::closed && !framing_refused_ && decoder_.mid_frame();
            fail(cut ? make_error_code(protocol_errc::truncated_frame) : r.ec);
            return;
        }
        if (r.n == 0 && r.wait == io_wait::none) {
            continue;  // records without data (KeyUpdate, empty): read again, within this turn's bound
        }
        if (r.n == 0) {
            if (!reading_) {
                reading_ = true;
                stream_->async_wait(r.wait, [self = shared_from_this()](std::error_code ec) {
                    self->reading_ = false;
                    if (ec) {
                        if (!self->closed_) {
                            self->fail(ec);
                        }
                        return;
                    }
                    self->read_loop();
                });
            }
            return;
        }
        if (direct) {
            payload_filled_ += r.n;
            counters_.payload_received += r.n;
            if (decoder_.payload_taken(r.n) && !dispatch()) {
                return;
            }
            continue;
        }
        rend_ += r.n;
        if (!process_input()) {
            return;
        }
    }
    asio::post(stream_->socket().get_executor(), [self = shared_from_this()] { self->read_loop(); });
}

// Decodes what is in rbuf_. Returns false if reading must stop (closed or out of buffers).
bool connection::process_input() {
    if (framing_refused_ || lingering_) {
        rpos_ = rend_;  // drained, never decoded, until the close
        return !closed_;
    }
    while (rpos_ < rend_ || (decoder_.in_payload() && !payload_)) {
        if (decoder_.in_payload() && !payload_) {
            // Header decoded; its payload needs a buffer first.
            payload_ = pool_->acquire(decoder_.header().payload_len());
            if (!payload_) {
                if (decoder_.header().payload_len() > pool_->capacity()) {
                    refuse_framing(protocol_errc::payload_too_large);
                    return process_input();
                }
                waiting_buffer_ = true;
                pool_->notify_when_available(decoder_.header().payload_len(), [weak = weak_from_this()] {
                    if (auto self = weak.lock()) {
                        asio::post(self->stream_->socket().get_executor(), [self] {
                            self->waiting_buffer_ = false;
                            // Closed while waiting: deliver nothing after on_closed.
                            if (self->closed_) {
                                return;
                            }
                            if (self->process_input()) {
                                self->read_loop();
                            }
                        });
                    }
                });
                return false;
            }
            payload_filled_ = 0;
            continue;
        }
        decode_result d = decoder_.feed(std::span<const std::uint8_t>(rbuf_.data() + rpos_, rend_ - rpos_));
        rpos_ += d.consumed;
        switch (d.event) {
            case decode_event::error: refuse_framing(d.ec); return process_input();
            case decode_event::need_more: return true;
            case decode_event::header:
                if (d.frame_complete && !dispatch()) {
                    return false;
                }
                break;
            case decode_event::payload:
                std::memcpy(payload_.data() + payload_filled_, d.payload.data(), d.payload.size());
                payload_filled_ += d.payload.size();
                counters_.payload_received += d.payload.size();
                if (d.frame_complete && !dispatch()) {
                    return false;
                }
                break;
        }
    }
    return true;
}

void connection::refuse_framing(std::error_code ec) {
    // DESIGN.md (wire format): a frame over a limit or that does not parse is a protocol
    // error, and the peer hears why before the connection closes.
    framing_refused_ = true;
    payload_.reset();
    // Already closing for its own reason: send() takes nothing more and that reason stands.
    wire::Header h;
    h.mutable_error()->set_code(wire::ERROR_PROTOCOL);
    h.mutable_error()->set_message(ec.message());
    send(h);
    close_after_flush(ec);
}

bool connection::dispatch() {
    ++counters_.frames_received;
    if (decoder_.header().has_chunk()) {
        ++counters_.payload_frames_received;
    } else if (decoder_.header().has_chunk_run()) {
        // (Counted before the session checks the frame: at most a run's worth.)
        counters_.payload_frames_received += std::min(decoder_.header().chunk_run().count(), max_run_chunks);
    }
    pooled_buffer payload = std::move(payload_);
    payload_filled_ = 0;
    // A connection closing after its last frames (close_after_flush) delivers nothing more.
    if (handler_ != nullptr && !close_when_drained_) {
        handler_->on_frame(*this, decoder_.header(), std::move(payload));
    }
    return !closed_;
}

bool connection::send(wire::Header& header, pooled_buffer owner, std::size_t payload_len) {
    if (closed_ || close_when_drained_) {
        return false;
    }
    header.set_payload_len(static_cast<std::uint32_t>(payload_len));
    out_frame f;
    f.head.reserve(64);
    if (!append_frame_header(header, f.head)) {
        fail(protocol_errc::header_too_large);
        return false;
    }
    f.payload = std::move(owner);
    f.payload_len = payload_len;
    f.chunks = header.has_chunk() ? 1 : header.has_chunk_run() ? header.chunk_run().count() : 0;
    queued_bytes_ += f.head.size() + payload_len;
    queue_.push_back(std::move(f));
    ++counters_.frames_sent;
    if (queued_bytes_ > limits_.queue_max_bytes) {
        fail(transport_errc::queue_full);
        return false;
    }
    schedule_flush();
    return true;
}

void connection::schedule_flush() {
    if (flush_posted_ || writing_) {
        return;
    }
    flush_posted_ = true;
    asio::post(stream_->socket().get_executor(), [self = shared_from_this()] {
        self->flush_posted_ = false;
        self->flush();
    });
}

void connection::flush() {
    if (closed_ || writing_) {
        return;
    }
    for (int round = 0; round < 16 && (!queue_.empty() || stream_->has_pending_output()); ++round) {
        std::array<asio::const_buffer, 64> bufs;
        std::size_t nb = 0;
        std::size_t skip = front_written_;
        for (const out_frame& f : queue_) {
            if (nb + 2 > bufs.size()) {
                break;
            }
            asio::const_buffer parts[2] = {asio::buffer(f.head), asio::buffer(f.payload.data(), f.payload_len)};
            for (const auto& p : parts) {
                if (p.size() <= skip) {
                    skip -= p.size();
                    continue;
                }
                bufs[nb++] = asio::buffer(static_cast<const std::uint8_t*>(p.data()) + skip, p.size() - skip);
                skip = 0;
            }
        }
        io_result r = stream_->write_now(std::span<const asio::const_buffer>(bufs.data(), nb));
        // Retire what the kernel took.
        std::size_t n = r.n;
        queued_bytes_ -= n;
        while (n > 0 && !queue_.empty()) {
            out_frame& f = queue_.front();
            std::size_t total = f.head.size() + f.payload_len;
            std::size_t left = total - front_written_;
            if (n < left) {
                front_written_ += n;
                break;
            }
            n -= left;
            counters_.payload_sent += f.payload_len;
            counters_.payload_frames_sent += f.chunks;
            front_written_ = 0;
            queue_.pop_front();
        }
        if (r.ec) {
            fail(r.ec);
            return;
        }
        if (r.wait != io_wait::none) {
            writing_ = true;
            stream_->async_wait(r.wait, [self = shared_from_this()](std::error_code ec) {
                self->writing_ = false;
                if (ec) {
                    if (!self->closed_) {
                        self->fail(ec);
                    }
                    return;
                }
                self->flush();
            });
            break;
        }
    }
    if (queue_.empty() && !stream_->has_pending_output() && close_when_drained_) {
        linger_then_close();
        return;
    }
    if ((!queue_.empty() || stream_->has_pending_output()) && !writing_) {
        schedule_flush();
    }
    if (queued_bytes_ < limits_.queue_low_water && handler_ != nullptr && !closed_) {
        handler_->on_send_ready(*this);
    }
}

void connection::close(std::error_code ec) { fail(ec); }

void connection::close_after_flush(std::error_code ec) {
    if (closed_) {
        return;
    }
    if (close_when_drained_) {
        return;  // the first reason stands, and so does its deadline
    }
    close_when_drained_ = true;
    close_reason_ = ec;
    // One deadline for the flush and the drain together: a peer that stops reading cannot
    // hold the connection open.
    linger_timer_ = std::make_unique<asio::steady_timer>(stream_->socket().get_executor(), linger);
    linger_timer_->async_wait([self = shared_from_this()](std::error_code ec) {
        if (!ec) {
            self->fail(self->close_reason_);
        }
    });
    if (queue_.empty() && !stream_->has_pending_output()) {
        linger_then_close();
    } else {
        schedule_flush();
    }
}

std::size_t connection::drop_unsent_chunks() {
    // The front frame may be partly written: it stays whole, or the framing would break.
    auto first = queue_.begin() + (front_written_ > 0 && !queue_.empty() ? 1 : 0);
    auto kept = std::stable_partition(first, queue_.end(), [](const out_frame& f) { return f.chunks == 0; });
    std::size_t dropped = 0;
    for (auto it = kept; it != queue_.end(); ++it) {
        queued_bytes_ -= it->head.size() + it->payload_len;
        ++dropped;
    }
    queue_.erase(kept, queue_.end());
    counters_.frames_sent -= dropped;
    return dropped;
}

void connection::linger_then_close() {
    if (lingering_ || closed_) {
        return;
    }
    // The read loop goes on and discards what arrives; the peer's close ends it (fail), or
    // the deadline set by close_after_flush does.
    stream_->shutdown_send();
    lingering_ = true;
}

void connection::fail(std::error_code ec) {
    if (closed_) {
        return;
    }
    closed_ = true;
    if (lingering_) {
        ec = close_reason_;  // the end of the drain, not a failure of its own
    }
    if (linger_timer_) {
        linger_timer_->cancel();
    }
    stream_->close();
    queue_.clear();
    queued_bytes_ = 0;
    payload_.reset();
    asio::post(stream_->socket().get_executor(), [self = shared_from_this(), ec] {
        if (self->handler_ != nullptr) {
            self->handler_->on_closed(*self, ec);
        }
    });
}

}  // namespace ferry
