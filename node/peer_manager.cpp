#include "node/peer_manager.hpp"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <iterator>

#include "node/dest_tree.hpp"
#include "node/file_io.hpp"

#include "protocol/path.hpp"
#include "transport/identity.hpp"

namespace ferry {

namespace {

// A pull's finished scan, in `parts`: the first part goes to `sources` (what the session
// is made with), the others stay in the feed for the session to take as it starts
// (send_options::feed), but what they skipped goes to `sources` too: keep_skipped puts
// all of it in the sync target, before the first offer.
void first_part(source_tree& sources, scan_feed& parts) {
    scan_feed::taken got = parts.take();
    for (std::size_t i = 0; i < got.parts.size(); ++i) {
        source_tree& part = got.parts[i];
        if (i == 0) {
            append_part(sources, std::move(part));
            continue;
        }
        std::move(part.skipped_paths.begin(), part.skipped_paths.end(), std::back_inserter(sources.skipped_paths));
        part.skipped_paths.clear();
        parts.put(std::move(part));
    }
    parts.finish({}, {});
}

// A get's scan (worker pool): the file or folder `path` of the share open as `share_fd`
// (owned), as the entry `as`. The folder holding it is opened without following a
// symlink, as a pull's folder is. On failure `error` says why, for the puller.
// A range get (SyncTarget.range_*): the scanned entry, one regular file, becomes the
// range's bytes. Returns the error line, or "" (then `file_size` is the whole file's).
std::string take_range(source_tree& sources, std::uint64_t offset, std::uint64_t length, std::uint64_t& file_size) {
    if (sources.entries.size() != 1 || !sources.entries[0].is_file()) {
        return "a range is a get of one regular file";
    }
    entry_info& e = sources.entries[0];
    if (offset >= e.size) {
        return "range from " + std::to_string(offset) + " is past the end of the file (" + std::to_string(e.size) +
               " bytes)";
    }
    file_size = e.size;
    e.size = std::min(length, e.size - offset);
    sources.total_bytes = e.size;
    return "";
}

void scan_for_get(int share_fd, const std::string& path, const std::string& as, source_tree& sources,
                  std::string& error, worker_pool& workers, bool recursive = true) {
    std::size_t slash = path.rfind('/');
    std::string name = slash == std::string::npos ? path : path.substr(slash + 1);
    std::shared_ptr<const int> parent;
    if (slash == std::string::npos) {
        parent = shared_fd(unique_fd(share_fd));
    } else {
        std::error_code ec;
        int fd = dest_tree("", share_fd).open_dir(path.substr(0, slash), ec);  // the tree owns share_fd
        if (fd < 0) {
            error = ec == std::errc::no_such_file_or_directory ? "no \"" + path + "\" in the share"
                    : ec == dest_errc::symlink ? "\"" + path + "\" goes through a symlink (never followed)"
                                               : "cannot open \"" + path + "\": " + ec.message();
            return;
        }
        parent = shared_fd(unique_fd(fd));
    }
    if (std::error_code ec = scan_get(std::move(parent), name, as, sources, error, &workers, recursive)) {
        error = ec == std::errc::no_such_file_or_directory && error == "not found"
                    ? "no \"" + path + "\" in the share"
                    : (path.empty() ? std::string("the share") : "\"" + path + "\"") + ": " + error;
    }
}

}  // namespace

peer_manager::trust_stamp peer_manager::trust_stamp_of(const std::filesystem::path& file) {
    struct stat st {};
    if (::stat(file.c_str(), &st) != 0) {
        return {};
    }
    return {st.st_dev, st.st_ino, st.st_size,
            std::int64_t{st.st_mtim.tv_sec} * 1'000'000'000 + st.st_mtim.tv_nsec,
            std::int64_t{st.st_ctim.tv_sec} * 1'000'000'000 + st.st_ctim.tv_nsec};
}

void peer_manager::refresh_trust() {
    trust_stamp now = trust_stamp_of(ctx_.trust.file());
    if (now == trust_seen_) {
        return;
    }
    trust_seen_ = now;
    try {
        ctx_.trust = trust_store::load(ctx_.config.state_dir, ctx_.config.config_peers);
        ctx_.log("trust list changed: read again (" + std::to_string(ctx_.trust.peers().size()) + " trusted peer(s))",
                 log_level::info);
        if (ctx_.events.trust_read) {
            ctx_.events.trust_read(ctx_.trust.peers().size(), {});
        }
    } catch (const std::exception& e) {
        ctx_.log(std::string("trust list changed but not read again (the list read before stays): ") + e.what(),
                 log_level::error);
        if (ctx_.events.trust_read) {
            ctx_.events.trust_read(ctx_.trust.peers().size(), e.what());
        }
    }
}

bool peer_manager::allowed(const std::string& id) const {
    switch (ctx_.config.policy) {
        case accept_policy::any: return true;
        case accept_policy::from_id: return id == ctx_.config.accept_from || ctx_.trust.trusted(id);
        case accept_policy::trusted: return ctx_.trust.trusted(id);
    }
    return false;
}

void peer_manager::refused(refusal why, const std::string& line) {
    ctx_.stats.refusals.add(why);
    if (auto text = log_throttle_.pass(line, std::chrono::steady_clock::now())) {
        ctx_.log(*text, log_level::warn);
    }
}

std::size_t peer_manager::connection_count() const {
    return waiting_.size() + closing_.size() + scanning_.size() + peer_connections("");
}

std::size_t peer_manager::peer_connections(const std::string& key) const {
    std::size_t n = 0;
    for (const auto& [id, s] : sessions_) {
        n += key.empty() || s->peer_key() == key ? s->open_connections() : 0;
    }
    for (const auto& [id, s] : pulls_) {
        n += key.empty() || s->peer_key() == key ? s->open_connections() : 0;
    }
    return n;
}

bool peer_manager::evict_oldest_waiting() {
    if (waiting_.empty()) {
        return false;
    }
    waiting w = std::move(waiting_.begin()->second);
    waiting_.erase(waiting_.begin());
    refused(refusal::evicted, "closed connection from " + w.from + ": not in a session yet and the node is full (" +
                                  std::to_string(ctx_.config.limits.max_connections) + " connections, --max-connections)");
    if (w.conn) {
        w.conn->close(transport_errc::evicted);
    } else if (w.cancel) {
        w.cancel();
    }
    return true;
}

std::map<std::uint64_t, peer_manager::waiting>::iterator peer_manager::find_waiting(const connection& c) {
    return std::find_if(waiting_.begin(), waiting_.end(), [&](const auto& kv) { return kv.second.conn.get() == &c; });
}

void peer_manager::on_accepted(asio::ip::tcp::socket socket) {
    if (stopping_) {
        return;
    }
    std::error_code ignored;
    auto ep = socket.remote_endpoint(ignored);
    std::string from = ignored ? std::string("?") : format_endpoint(ep);
    const node_limits& limits = ctx_.config.limits;
    if (connection_count() >= limits.max_connections && !evict_oldest_waiting()) {
        refused(refusal::connections, "refused connection from " + from + ": " +
                                          std::to_string(limits.max_connections) +
                                          " connections open (--max-connections)");
        socket.close(ignored);
        return;
    }
    refresh_trust();
    auto check = std::make_unique<tls_peer_check>();
    check->allow = [this](const std::string& id) { return allowed(id); };
    const tls_context* tls = ctx_.config.plaintext ? nullptr : ctx_.tls_server.get();
    std::uint64_t seq = next_seq_++;
    waiting_[seq].from = from;
    // The establishment owns the check until its callback has run: what the handshake
    // learnt (the peer's ID, why it was refused) is read there.
    const tls_peer_check* seen = check.get();
    auto cancel = async_accept_stream(
        ctx_.io, tls, std::move(socket), ctx_.config.tuning, limits.handshake_timeout, std::move(check),
        [this, seq, seen](std::error_code ec, std::unique_ptr<byte_stream> stream) {
            on_handshake(seq, ec, std::move(stream), *seen);
        });
    if (auto it = waiting_.find(seq); it != waiting_.end()) {
        it->second.cancel = std::move(cancel);
    }
}

void peer_manager::on_handshake(std::uint64_t seq, std::error_code ec, std::unique_ptr<byte_stream> stream,
                                const tls_peer_check& check) {
    auto it = waiting_.find(seq);
    if (stopping_ || it == waiting_.end()) {
        return;  // stopped, or evicted (counted and logged then)
    }
    if (ec) {
        std::string from = it->second.from;
        waiting_.erase(it);
        if (ec == transport_errc::closed) {
            // The peer left before the handshake was done (a sender whose transfer ended
            // while its extra connections were being made): nothing was refused.
            return;
        }
        if (ec == transport_errc::untrusted_peer && !check.peer_id.empty()) {
            refused(refusal::untrusted, "refused connection from " + from + ": node " + format_node_id(check.peer_id) +
                                            " is not trusted (" +
                                            (ctx_.config.one_shot ? "ferry trust ID, or --accept-from"
                                                                  : "ferry trust ID with this node's state folder") +
                                            ")");
        } else if (ec == transport_errc::untrusted_peer) {
            // Refused before its ID was read (a chain, an unusable key): the check's reason.
            refused(refusal::handshake_failed,
                    "refused connection from " + from + ": " +
                        printable(check.reason.empty() ? ec.message() : check.reason));
        } else if (ec == transport_errc::timeout) {
            refused(refusal::handshake_timeout, "refused connection from " + from +
                                                    ": no TLS handshake within the handshake timeout");
        } else {
            refused(refusal::handshake_failed, "refused connection from " + from + ": " + ec.message());
        }
        return;
    }
    connection_limits climits;
    climits.queue_max_bytes = ctx_.config.limits.max_queue_bytes;
    auto c = ctx_.new_connection(std::move(stream), climits);
    // A connection that says nothing after its handshake is closed once the handshake
    // timeout passes again. The timer lives as long as the connection waits: leaving
    // waiting_ cancels it.
    auto timer = std::make_unique<asio::steady_timer>(ctx_.io);
    timer->expires_after(ctx_.config.limits.handshake_timeout);
    timer->async_wait([this, weak = std::weak_ptr<connection>(c)](std::error_code ec) {
        auto conn = weak.lock();
        if (ec || !conn || stopping_) {
            return;
        }
        auto w = find_waiting(*conn);
        if (w == waiting_.end()) {
            return;
        }
        refused(refusal::handshake_timeout,
                "closing connection from " + w->second.from + ": no Hello within the handshake timeout");
        waiting_.erase(w);
        conn->close(transport_errc::timeout);
    });
    it->second.cancel = nullptr;
    it->second.conn = c;
    it->second.timer = std::move(timer);
    c->start(this);
}

void peer_manager::on_frame(connection& c, wire::Header& header, pooled_buffer payload) {
    auto self_c = c.shared_from_this();
    if (listings_.erase(&c) > 0) {
        // An asker has nothing to say while its listing goes out.
        turn_away(self_c, wire::ERROR_PROTOCOL, "unexpected message during a listing", refusal::protocol);
        return;
    }
    if (scanning_.erase(self_c) > 0) {
        // A puller waits for the Offer while its folder is scanned: it has nothing to say
        // but that it wants it no more (it stopped, or `get --from` had the range from
        // another source), which is no refusal.
        if (header.has_error() && header.error().code() == wire::ERROR_CANCELLED) {
            ctx_.log("pull ended by the puller before its offer: " + printable(header.error().message()));
            c.close_after_flush();
            closing_.insert(self_c);  // (as turn_away's: the node's stop closes it)
            return;
        }
        turn_away(self_c, wire::ERROR_PROTOCOL, "unexpected message while the pull is prepared", refusal::protocol);
        return;
    }
    if (auto w = find_waiting(c); w != waiting_.end()) {
        waiting_.erase(w);
    }
    auto refuse = [&](wire::ErrorCode code, const std::string& msg, refusal why = refusal::protocol) {
        turn_away(self_c, code, msg, why);
    };
    if (header.body_case() != wire::Header::kHello) {
        refuse(wire::ERROR_PROTOCOL, "expected Hello");
        return;
    }
    const wire::Hello& hello = header.hello();
    if (hello.version() != protocol_version) {
        refuse(wire::ERROR_VERSION, "incompatible protocol version " + std::to_string(hello.version()) +
                                        " (this node speaks " + std::to_string(protocol_version) + ")");
        return;
    }
    if (hello.plaintext() != !c.stream().is_tls()) {
        refuse(wire::ERROR_REFUSED, "one side uses --plaintext and the other does not");
        return;
    }
    if (hello.session_id().size() != 16) {
        refuse(wire::ERROR_PROTOCOL, "bad session id");
        return;
    }
    std::string peer = c.stream().peer_id();
    // Statistics key of the peer: its ID, or its address (without the port) in plaintext.
    std::string remote = c.stream().remote();
    std::string key = peer.empty() ? remote.substr(0, remote.rfind(':')) : peer;
    std::size_t peer_conns = peer_connections(key);
    if (peer_conns >= ctx_.config.limits.max_peer_connections) {
        refuse(wire::ERROR_BUSY,
               "this peer has " + std::to_string(peer_conns) + " connections open (--max-peer-connections)",
               refusal::peer_connections);
        return;
    }
    auto it = sessions_.find(hello.session_id());
    auto pull = pulls_.find(hello.session_id());
    if (hello.conn_index() == 0) {
        if (it != sessions_.end() || pull != pulls_.end()) {
            refuse(wire::ERROR_PROTOCOL, "session already open");
            return;
        }
        if (sessions_.size() + pulls_.size() + scanning_.size() >= ctx_.config.limits.max_sessions) {
            refuse(wire::ERROR_BUSY,
                   "too many transfers at once (" + std::to_string(ctx_.config.limits.max_sessions) +
                       ", --max-sessions)",
                   refusal::sessions);
            return;
        }
        if (hello.has_pull()) {
            start_pull(self_c, hello, key);
            return;
        }
        if (hello.has_list()) {
            start_list(self_c, hello);
            return;
        }
        if (ctx_.config.one_shot && std::exchange(took_one_, true)) {
            // `ferry receive` ends with its transfer: a second one would be cut off then,
            // or would cut the first off ending first.
            refuse(wire::ERROR_BUSY, "ferry receive takes one transfer, and has one", refusal::sessions);
            return;
        }
        auto s = std::make_shared<receive_session>(ctx_, peer, key, hello.session_id(),
                                                   [this](receive_session& s) { end_session(s); });
        sessions_.emplace(hello.session_id(), s);
        s->add_connection(self_c, hello);
        return;
    }
    if (pull != pulls_.end() && pull->second->peer_id() == peer) {
        pull->second->add_connection(self_c, hello);
        if (self_c->closing()) {
            closing_.insert(self_c);  // the session turned it away (bad index): still ours to count
        }
        return;
    }
    if (it == sessions_.end() || it->second->peer_id() != peer) {
        // A session can end before all its connections are in (a send of a few small
        // files, or whose files were all here already): the late ones are no refusal.
        bool ended = std::find(ended_.begin(), ended_.end(), std::make_pair(hello.session_id(), peer)) != ended_.end();
        turn_away(self_c, wire::ERROR_PROTOCOL, ended ? "session already ended" : "unknown session", refusal::protocol,
                  ended);
        return;
    }
    it->second->add_connection(self_c, hello);
    if (self_c->closing()) {
        closing_.insert(self_c);  // the session turned it away (bad index): still ours to count
    }
}

void peer_manager::turn_away(const std::shared_ptr<connection>& c, wire::ErrorCode code, const std::string& msg,
                             std::optional<refusal> why, bool quiet) {
    // `msg` may quote what the peer sent (a share name, a path): escaped for the log, sent
    // as it is (the peer escapes what it shows).
    std::string line = "refused connection from " + c->stream().remote() + ": " + printable(msg);
    if (why && !quiet) {
        refused(*why, line);
    } else if (!quiet) {
        ctx_.log(line);
    }
    wire::Header h;
    h.mutable_error()->set_code(code);
    h.mutable_error()->set_message(msg);
    c->set_handler(this);
    c->send(h);
    // Closing after flush: no more frames reach this handler; on_closed counts its bytes.
    c->close_after_flush(protocol_errc::unexpected_message);
    closing_.insert(c);
}

void peer_manager::start_pull(std::shared_ptr<connection> c, const wire::Hello& hello, const std::string& key) {
    std::string peer = c->stream().peer_id();
    const wire::SyncTarget& want = hello.pull();
    const share_config* share = nullptr;
    std::string why = c->stream().is_tls() ? share_access(ctx_, peer, want.share(), false, &share)
                                           : "shares are not offered over --plaintext (no node ID to check)";
    exclude_set excludes;
    if (why.empty()) {
        why = sync_excludes(want, excludes);
    }
    if (why.empty() && !want.path().empty() && check_wire_path(want.path())) {
        why = "bad path \"" + want.path().substr(0, 200) + "\"";
    }
    if (why.empty() && !want.get().empty() &&
        (check_wire_path(want.get()) || want.get().find('/') != std::string::npos)) {
        why = "bad name for a get \"" + want.get().substr(0, 200) + "\" (one name, no '/')";
    }
    if (why.empty() && !want.get().empty() && (want.delete_() || want.root_mode() != 0 || want.keep_size() > 0)) {
        why = "a get deletes nothing and changes no folder of the puller's";
    }
    if (why.empty() && want.range_length() > 0 && (want.get().empty() || want.checksum())) {
        why = "a range is a get's, of one file, without --checksum";
    }
    if (why.empty() && want.range_offset() % chunk_size != 0) {
        why = "a range starts at a multiple of the chunk size";
    }
    if (!why.empty()) {
        turn_away(c, wire::ERROR_REFUSED, "refused pull: " + why, std::nullopt);
        return;
    }
    // (Its send_session does not send another Hello on connection 0.)
    if (!take_scan(c, hello, std::clamp<std::uint32_t>(hello.conn_count(), 1, max_connections), true)) {
        return;
    }
    // The folder is opened inside the share without following a symlink (as a sync into a
    // share makes it), then scanned through its descriptor; the files are opened relative
    // to it the same way (file_io's open_read).
    node_context* ctx = &ctx_;
    scan_queue_.push_back([this, ctx, alive = std::weak_ptr<int>(alive_), c, hello, key, dir = share->dir,
                           excludes = std::move(excludes)]() mutable {
        const std::string& path = hello.pull().path();
        source_tree sources;
        std::string error;
        struct stat st {};
        std::error_code ec;
        int fd = -1;
        std::uint64_t range_file_size = 0;
        if (int share_fd = open_share_root(dir.string(), error); share_fd < 0) {
            error += ": " + std::string(std::strerror(errno));
        } else if (!hello.pull().get().empty()) {
            scan_for_get(share_fd, path, hello.pull().get(), sources, error, ctx->workers);
            if (error.empty() && hello.pull().range_length() > 0) {
                error = take_range(sources, hello.pull().range_offset(), hello.pull().range_length(), range_file_size);
            }
        } else if (path.empty()) {
            fd = share_fd;
        } else {
            fd = dest_tree(dir, share_fd).open_dir(path, ec);  // the tree owns share_fd
            error = ec == std::errc::no_such_file_or_directory ? "no folder \"" + path + "\" in the share"
                    : ec == std::errc::not_a_directory || ec == dest_errc::not_a_dir
                        ? "\"" + path + "\" is not a folder (a sync mirrors a folder)"
                    : ec == dest_errc::symlink ? "\"" + path + "\" is or goes through a symlink (never followed)"
                    : ec                       ? "cannot open \"" + path + "\": " + ec.message()
                                               : "";
        }
        // A folder's scan comes in parts (as the walk's runs join), handed to the session as
        // they are: never joined into one array beside the runs' own (200,000 entries:
        // some 18 MB held twice for a moment).
        std::shared_ptr<scan_feed> parts;
        if (fd >= 0) {
            sources.root_fd = shared_fd(unique_fd(fd));
            ::fstat(fd, &st);
            std::string root = "/proc/self/fd/" + std::to_string(fd);
            parts = std::make_shared<scan_feed>();
            if (scan_contents(root, excludes, sources, error, &ctx->workers, true, parts.get())) {
                error = "cannot read the share: " + error.substr(std::min(error.size(), root.size() + 1));
            }
            first_part(sources, *parts);
        }
        asio::post(ctx->io, [this, alive, c, hello = std::move(hello), key, sources = std::move(sources), error,
                             st, range_file_size, parts = std::move(parts)]() mutable {
            if (alive.expired()) {
                return;
            }
            if (!scan_done(c)) {
                return;
            }
            wire::SyncTarget target = hello.pull();
            if (error.empty() && target.get().empty()) {
                target.set_root_mode(st.st_mode & 07777);
                target.set_root_mtime_ns(timespec_ns(st.st_mtim));
                error = keep_skipped(sources, target);
            }
            if (!error.empty()) {
                turn_away(c, wire::ERROR_REFUSED, "refused pull: " + error, std::nullopt);
                return;
            }
            send_options so;
            so.feed = std::move(parts);
            so.connections = hello.conn_count();
            so.sync = std::move(target);
            so.idle_timeout = ctx_.config.limits.idle_timeout;
            so.max_rate = hello.max_rate();  // the puller's --bwlimit
            if (hello.compress_always()) {
                so.compress = compress_mode::always;  // the puller's --compress always
            }
            if (hello.pull().range_length() > 0) {
                so.range = send_options::source_range{hello.pull().range_offset(), range_file_size};
            }
            std::string what =
                printable(hello.pull().share() + (hello.pull().path().empty() ? "" : "/" + hello.pull().path()));
            std::string sid = hello.session_id();
            auto s = std::make_shared<send_session>(
                ctx_, std::move(sources), send_target{}, so, [this, alive, what, sid](const transfer_report& r) {
                    if (alive.expired()) {
                        return;
                    }
                    std::string peer = format_node_id(r.peer_id);
                    // (What a delta copied at the puller never travelled.)
                    const std::uint64_t sent = r.travelled_bytes();
                    ctx_.log(r.ok ? "sent " + what + " to " + peer + " (a pull): " + std::to_string(r.files) +
                                        " file(s) sent, " + std::to_string(r.skipped_files) + " unchanged, " +
                                        std::to_string(sent) + " bytes in " +
                                        seconds_text(std::chrono::duration<double>(r.elapsed_s)) + " s"
                             : r.peer_cancelled ? "pull of " + what + " ended by " + peer + ": " + r.error
                                                : "pull of " + what + " by " + peer + " failed: " + r.error,
                             r.ok || r.peer_cancelled ? log_level::info : log_level::warn);
                    if (ctx_.events.pull_served) {
                        ctx_.events.pull_served(r, what);
                    }
                    // Not from inside the session's own call.
                    asio::post(ctx_.io, [this, alive, sid, id = r.peer_id] {
                        if (!alive.expired()) {
                            remember_ended(sid, id);
                            pulls_.erase(sid);
                            if (ctx_.events.session_ended) {
                                ctx_.events.session_ended();
                            }
                        }
                    });
                });
            pulls_.emplace(sid, s);
            s->start_accepted(c, hello);
        });
    });
    next_scan();
}

bool peer_manager::take_scan(const std::shared_ptr<connection>& c, const wire::Hello& hello, std::uint32_t count,
                             bool zstd) {
    if (scanning_.size() >= max_waiting_scans) {
        turn_away(c, wire::ERROR_BUSY,
                  "busy: " + std::to_string(max_waiting_scans) + " pulls are being prepared; try again soon",
                  refusal::sessions);
        return false;
    }
    scanning_.insert(c);
    wire::Header reply = make_hello(hello.session_id(), 0, count, false, zstd);
    c->send(reply);
    return true;
}

void peer_manager::start_list(std::shared_ptr<connection> c, const wire::Hello& hello) {
    std::string peer = c->stream().peer_id();
    const wire::ListRequest& want = hello.list();
    if (!c->stream().is_tls()) {
        turn_away(c, wire::ERROR_REFUSED, "refused list: shares are not offered over --plaintext (no node ID to check)",
                  std::nullopt);
        return;
    }
    if (want.share().empty()) {
        std::vector<entry_info> shares;
        for (const share_config& s : ctx_.config.shares) {
            const share_config* open = nullptr;
            if (share_access(ctx_, peer, s.name, false, &open).empty()) {
                shares.push_back({.path = s.name, .mode = s.writable ? 0755u : 0555u, .is_dir = true});
            }
        }
        wire::Header reply = make_hello(hello.session_id(), 0, 1, false, false);
        c->send(reply);
        send_listing(c, std::move(shares));
        return;
    }
    const share_config* share = nullptr;
    std::string why = share_access(ctx_, peer, want.share(), false, &share);
    if (why.empty() && !want.path().empty() && check_wire_path(want.path())) {
        why = "bad path \"" + want.path().substr(0, 200) + "\"";
    }
    if (!why.empty()) {
        turn_away(c, wire::ERROR_REFUSED, "refused list: " + why, std::nullopt);
        return;
    }
    if (!take_scan(c, hello, 1, false)) {
        return;
    }
    node_context* ctx = &ctx_;
    scan_queue_.push_back([this, ctx, alive = std::weak_ptr<int>(alive_), c, hello, dir = share->dir]() mutable {
        const wire::ListRequest& want = hello.list();
        const std::string& path = want.path();
        std::string name = path.empty() ? want.share() : path.substr(path.rfind('/') + 1);
        source_tree sources;
        std::string error;
        if (int share_fd = open_share_root(dir.string(), error); share_fd < 0) {
            error += ": " + std::string(std::strerror(errno));
        } else {
            scan_for_get(share_fd, path, name, sources, error, ctx->workers, want.recursive());
        }
        // ListRequest.checksum: the file is opened here (as the scan found it, relative to
        // the share) and read later, outside the scan slot.
        std::shared_ptr<unique_fd> file;
        if (error.empty() && want.checksum() && !sources.entries.empty() && sources.entries[0].is_file()) {
            file = std::make_shared<unique_fd>(open_read(*sources.root_fd, sources.locals.at(0)));
            if (file->get() < 0) {
                error = "cannot read \"" + path + "\": " + std::strerror(errno);
            }
        }
        asio::post(ctx->io, [this, alive, c, hello = std::move(hello), entries = std::move(sources.entries), error,
                             file]() mutable {
            if (alive.expired()) {
                return;
            }
            if (!scan_done(c)) {
                return;
            }
            if (!error.empty()) {
                turn_away(c, wire::ERROR_REFUSED, "refused list: " + error, std::nullopt);
                return;
            }
            if (file) {
                list_with_digest(c, std::move(entries), std::move(file));
                return;
            }
            send_listing(c, std::move(entries));
        });
    });
    next_scan();
}

void peer_manager::list_with_digest(const std::shared_ptr<connection>& c, std::vector<entry_info> entries,
                                    std::shared_ptr<unique_fd> file) {
    if (digest_reads_.size() >= max_digest_reads) {
        turn_away(c, wire::ERROR_BUSY, "busy reading other files for their digest; try again later", std::nullopt);
        return;
    }
    auto stop = std::make_shared<std::atomic<bool>>(false);
    c->set_handler(this);
    closing_.insert(c);  // counted as a connection until it closes; no frame of the asker's is read now
    digest_reads_[c.get()] = stop;
    ctx_.workers.post([this, alive = std::weak_ptr<int>(alive_), io = &ctx_.io, c, entries = std::move(entries),
                       file, stop]() mutable {
        // Read and hashed as it is now: a size or mtime other than the scan's is a change.
        entry_info& e = entries[0];
        struct stat st {};
        std::vector<std::uint8_t> buf;
        std::vector<digest128> chunks;
        bool ok = hash_chunks(file->get(), e.size, buf, chunks, [&] { return stop->load(); }) &&
                  ::fstat(file->get(), &st) == 0 && static_cast<std::uint64_t>(st.st_size) == e.size &&
                  timespec_ns(st.st_mtim) == e.mtime_ns;
        if (ok) {
            e.digest = file_digest(chunks);
        }
        asio::post(*io, [this, alive, c, entries = std::move(entries), ok, stop]() mutable {
            if (alive.expired() || stop->load()) {
                return;  // the asker left (or the node stops)
            }
            digest_reads_.erase(c.get());
            if (!ok) {
                turn_away(c, wire::ERROR_REFUSED,
                          "refused list: \"" + entries[0].path + "\" could not be read whole, or changed while it was read",
                          std::nullopt);
                return;
            }
            send_listing(c, std::move(entries));
        });
    });
}

void peer_manager::send_listing(const std::shared_ptr<connection>& c, std::vector<entry_info> entries) {
    c->set_handler(this);
    closing_.insert(c);  // counted as a connection until it closes; no frame of the asker's is read now
    listings_[c.get()] = std::make_unique<listing>(listing{sender_machine(0, std::move(entries), {}), 0});
    pump_listing(*c);
}

void peer_manager::pump_listing(connection& c) {
    auto it = listings_.find(&c);
    if (it == listings_.end()) {
        return;
    }
    listing& l = *it->second;
    constexpr std::size_t queue_target = 1024 * 1024;  // a few dozen batches ahead
    while (l.next < l.batches.offer_count() && c.queued_bytes() < queue_target && !c.closed()) {
        wire::Header h;
        *h.mutable_offer() = l.batches.make_offer(l.next++);
        c.send(h);
    }
    if (l.next == l.batches.offer_count()) {
        listings_.erase(it);
        c.close_after_flush();
    }
}

void peer_manager::on_send_ready(connection& c) { pump_listing(c); }

bool peer_manager::scan_done(const std::shared_ptr<connection>& c) {
    --scans_running_;
    next_scan();
    return scanning_.erase(c) > 0 && !stopping_ && !c->closed() && !c->closing();
}

void peer_manager::next_scan() {
    while (scans_running_ < max_running_scans && !scan_queue_.empty() && !stopping_) {
        ++scans_running_;
        ctx_.workers.post(std::move(scan_queue_.front()));
        scan_queue_.pop_front();
    }
}

void peer_manager::on_closed(connection& c, std::error_code ec) {
    listings_.erase(&c);
    if (auto it = digest_reads_.find(&c); it != digest_reads_.end()) {
        it->second->store(true);  // its read stops
        digest_reads_.erase(it);
    }
    closing_.erase(c.shared_from_this());
    scanning_.erase(c.shared_from_this());
    bool was_pending = false;
    if (auto w = find_waiting(c); w != waiting_.end()) {
        waiting_.erase(w);
        was_pending = true;
    }
    // A connection that never joined a session (timed out, refused, closed before its
    // Hello) still moved bytes on the wire: they count in the node's totals.
    ctx_.stats.traffic->add_wire(c.stream().wire_sent(), c.stream().wire_received());
    if (was_pending && ec && ec != transport_errc::closed && !stopping_) {
        refused(ec == transport_errc::queue_full ? refusal::queue : refusal::protocol,
                "connection from " + c.stream().remote() + " closed before Hello: " + ec.message());
    }
}

void peer_manager::remember_ended(const std::string& session_id, const std::string& peer) {
    ended_.emplace_back(session_id, peer);
    if (ended_.size() > max_ended) {
        ended_.pop_front();
    }
}

void peer_manager::end_session(receive_session& s) {
    remember_ended(s.session_id(), s.peer_id());
    sessions_.erase(s.session_id());
    if (ctx_.events.session_ended) {
        ctx_.events.session_ended();
    }
}

void peer_manager::stop(const std::string& why) {
    stopping_ = true;
    auto closing = std::move(closing_);
    closing_.clear();
    for (auto& c : closing) {
        c->close();
    }
    auto waiting = std::move(waiting_);
    waiting_.clear();
    for (auto& [seq, w] : waiting) {
        if (w.conn) {
            w.conn->close();
        } else if (w.cancel) {
            w.cancel();
        }
    }
    auto sessions = sessions_;
    for (auto& [id, s] : sessions) {
        s->stop(why);
    }
    auto pulls = pulls_;
    for (auto& [id, s] : pulls) {
        s->cancel(why);
    }
    scan_queue_.clear();
    for (const auto& c : std::set<std::shared_ptr<connection>>(std::move(scanning_))) {
        c->close();
    }
    scanning_.clear();
}

}  // namespace ferry
