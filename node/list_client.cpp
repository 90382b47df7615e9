#include "node/list_client.hpp"

#include <openssl/rand.h>

#include "protocol/le_bytes.hpp"
#include "protocol/path.hpp"

namespace ferry {

namespace {

// Until the peer's Hello (the TLS handshake is behind us), and then between two frames
// while it scans the folder (a recursive listing of a big share takes a while).
constexpr std::chrono::seconds hello_wait{30};
constexpr std::chrono::seconds scan_wait{600};

// An entry of the listing, checked as a receiver checks an offer's (check_wire_entry):
// nullopt when no node sends such a thing.
std::optional<entry_info> listed_entry(const wire::Entry& e) {
    if (check_wire_entry(e, true)) {
        return std::nullopt;
    }
    entry_info out{.path = e.path(), .size = e.size(), .mtime_ns = e.mtime_ns(), .mode = e.mode() & 07777,
                   .is_dir = e.kind() == wire::ENTRY_DIR, .is_link = e.kind() == wire::ENTRY_SYMLINK};
    if (out.is_link) {
        out.link_target = e.link_target();
    }
    if (!out.is_file()) {
        out.size = 0;
    } else if (e.digest().size() == 16) {
        out.digest = get_digest(e.digest().data());  // ListRequest.checksum
    }
    return out;
}

}  // namespace

list_client::list_client(node_context& ctx, list_spec spec, send_target target)
    : ctx_(ctx), spec_(std::move(spec)), target_(std::move(target)), timer_(ctx.io) {}

void list_client::start() {
    arm_timer(hello_wait);
    dial_peer(ctx_, target_, [self = shared_from_this()](std::error_code ec, std::unique_ptr<byte_stream> stream) {
        if (self->finished_) {
            return;
        }
        if (ec) {
            auto [code, error] = dial_failure(ec, self->target_, "peer");
            self->finish(code, error);
            return;
        }
        self->conn_ = self->ctx_.new_connection(std::move(stream));
        self->report_.peer_id = self->conn_->stream().peer_id();
        warn_unverified(self->ctx_, self->conn_->stream().is_tls(), self->target_.expected_id, self->report_.peer_id,
                        "peer", "ferry://ID@HOST");
        std::string session_id(16, '\0');
        RAND_bytes(reinterpret_cast<unsigned char*>(session_id.data()), static_cast<int>(session_id.size()));
        wire::Header hello = make_hello(session_id, 0, 1, !self->conn_->stream().is_tls(), false);
        *hello.mutable_hello()->mutable_list() = self->spec_.request;
        self->conn_->start(self.get());
        self->conn_->send(hello);
    }, true);
}

void list_client::arm_timer(std::chrono::seconds wait) {
    timer_.expires_after(wait);
    timer_.async_wait([self = shared_from_this(), wait](std::error_code ec) {
        if (!ec && !self->finished_) {
            self->finish(exit_code::transfer_failed,
                         "the peer sent nothing for " + std::to_string(wait.count()) + " s; gave up");
        }
    });
}

void list_client::on_frame(connection& c, wire::Header& header, pooled_buffer) {
    if (finished_) {
        return;
    }
    auto broken = [&](const std::string& what) {
        finish(exit_code::transfer_failed, "protocol error from " + log_id(report_.peer_id) + ": " + what);
    };
    switch (header.body_case()) {
        case wire::Header::kError:
            finish(exit_code::transfer_failed, "peer: " + printable(header.error().message()));
            return;
        case wire::Header::kHello:
            if (hello_seen_) {
                return broken("a second Hello");
            }
            if (header.hello().version() != protocol_version) {
                finish(exit_code::transfer_failed, "the peer speaks protocol " +
                                                       std::to_string(header.hello().version()) + ", this node " +
                                                       std::to_string(protocol_version) + " (upgrade the older side)");
                return;
            }
            hello_seen_ = true;
            arm_timer(scan_wait);
            return;
        case wire::Header::kOffer: {
            if (!hello_seen_) {
                return broken("an Offer before its Hello");
            }
            std::vector<entry_info> batch;
            batch.reserve(static_cast<std::size_t>(header.offer().entries_size()));
            for (const wire::Entry& e : header.offer().entries()) {
                std::optional<entry_info> entry = listed_entry(e);
                if (!entry || e.id() != report_.entries + batch.size()) {
                    return broken("a listed entry no node sends (\"" + printable(e.path().substr(0, 200)) + "\")");
                }
                batch.push_back(std::move(*entry));
            }
            report_.entries += batch.size();
            if (spec_.entries && !batch.empty()) {
                spec_.entries(std::move(batch));
            }
            if (header.offer().last()) {
                finish(exit_code::ok, {});
            } else {
                arm_timer(scan_wait);
            }
            return;
        }
        default:
            return broken("an unexpected frame in a listing");
    }
}

void list_client::on_closed(connection&, std::error_code ec) {
    closed_ = true;
    if (finished_) {
        return;
    }
    if (ec == transport_errc::peer_refused) {
        finish(exit_code::auth, "peer refused this node: its ID " + format_node_id(ctx_.id) +
                                    " is not trusted there (run `ferry trust " + format_node_id(ctx_.id) +
                                    "` on the peer)");
        return;
    }
    finish(exit_code::transfer_failed,
           "the peer closed the connection before the listing ended" +
               (ec && ec != transport_errc::closed ? " (" + ec.message() + ")" : std::string()));
}

void list_client::finish(exit_code code, std::string error) {
    if (finished_) {
        return;
    }
    finished_ = true;
    timer_.cancel();
    report_.ok = code == exit_code::ok;
    report_.code = code;
    report_.error = std::move(error);
    if (conn_) {
        report_.wire_sent = conn_->stream().wire_sent();
        report_.wire_received = conn_->stream().wire_received();
    }
    if (conn_ && !conn_->closed()) {
        conn_->close_after_flush();
    }
    if (spec_.done) {
        auto done = std::move(spec_.done);
        done(report_);
    }
}

}  // namespace ferry
