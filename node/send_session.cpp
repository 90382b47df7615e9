#include "node/send_session.hpp"

#include <fcntl.h>
#include <openssl/rand.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <cstring>
#include <limits>
#include <stdexcept>
#include <utility>

#include "node/chunk_codec.hpp"
#include "node/backoff.hpp"
#include "node/batch_reads.hpp"
#include "node/file_io.hpp"
#include "protocol/path.hpp"
#include "protocol/digest.hpp"
#include "transport/identity.hpp"
#include "transport/socket_tuning.hpp"

namespace ferry {

namespace {

std::string random_bytes(std::size_t n) {
    std::string s(n, '\0');
    RAND_bytes(reinterpret_cast<unsigned char*>(s.data()), static_cast<int>(n));
    return s;
}

std::uint64_t random_u64() {
    std::uint64_t v = 0;
    RAND_bytes(reinterpret_cast<unsigned char*>(&v), sizeof(v));
    return v;
}

// Bytes of Offer.not_sent in one Offer: a batch (offer_batch_bytes, with a sync's target)
// leaves this much room under max_header_len, with one entry's overshoot to spare.
constexpr std::size_t max_not_sent_bytes = 2 * 1024;
// Bytes of Offer.keep in one Offer, with max_not_sent_bytes still under max_header_len. A
// batch carries more than keep_per_offer of them while more wait (a path is at most
// max_path_bytes).
constexpr std::size_t max_keep_offer_bytes = 8 * 1024;
constexpr std::size_t keep_per_offer = max_keep_offer_bytes - (max_path_bytes + 3);
// Bytes of Offer.skipped (a pull's notes) in one Offer, in what the two above leave under
// max_header_len (never overshot: a note that does not fit waits for the next batch).
constexpr std::size_t max_skipped_note_bytes = 1024;

// Whether a file that failed to be read with `ec` may be read in another attempt: not one
// this user may not read (a file that changed or vanished meanwhile may).
bool worth_again(std::error_code ec) {
    return ec != std::errc::permission_denied && ec != std::errc::operation_not_permitted;
}

// Test hook (tests/e2e): FERRY_FAULT_AFTER_DELTA_SCAN=OFFSET overwrites 16 bytes at OFFSET
// of the first file whose delta pass ends, right after it, as a user's edit in place would,
// and gives the file its mtime back (as `touch -r` would): only its bytes tell.
void fault_after_delta_scan(int root_fd, const std::string& path) {
    static const char* const at = std::getenv("FERRY_FAULT_AFTER_DELTA_SCAN");
    static bool done = false;
    if (at == nullptr || std::exchange(done, true)) {
        return;
    }
    unique_fd fd(::openat(root_fd >= 0 ? root_fd : AT_FDCWD, path.c_str(), O_WRONLY | O_CLOEXEC));
    static constexpr char edit[16] = {'e', 'd', 'i', 't', 'e', 'd', ' ', 'a', 't', ' ', 's', 'r', 'c', ' ', '!', '!'};
    struct stat st {};
    if (fd.get() < 0 || ::fstat(fd.get(), &st) != 0 ||
        ::pwrite(fd.get(), edit, sizeof edit, std::atoll(at)) != static_cast<ssize_t>(sizeof edit) ||
        ::futimens(fd.get(), std::array<timespec, 2>{st.st_atim, st.st_mtim}.data()) != 0) {
        std::fprintf(stderr, "FERRY_FAULT_AFTER_DELTA_SCAN: could not edit %s\n", path.c_str());
    }
}

}  // namespace

void send_session::source_file::read_done() {
    std::lock_guard lock(mutex);
    if (reads_left > 0 && --reads_left == 0 && fd >= 0) {
        ::close(fd);
        fd = -1;
    }
}

void send_session::source_file::read_again() {
    std::lock_guard lock(mutex);
    ++reads_left;
}

send_session::source_file::~source_file() {
    if (fd >= 0) {
        ::close(fd);
    }
}

send_session::send_session(node_context& ctx, source_tree sources, send_target target, send_options options,
                           std::function<void(const transfer_report&)> done)
    : ctx_(ctx), sources_(std::move(sources)), target_(std::move(target)), options_(options), done_(std::move(done)),
      machine_(random_u64(), std::move(sources_.entries), transfer_options{options.overwrite, options.fsync_each, options.sync},
               options.feed == nullptr),
      session_id_(random_bytes(16)), compression_(options.compress) {
    options_.connections = std::clamp<std::uint32_t>(options_.connections, 1, max_connections);
    conns_.resize(options_.connections);
    for (conn_state& cs : conns_) {
        cs.window_bytes = options_.window_bytes;
    }
    if (options_.sync) {
        keep_bytes_ = keep_bytes(*options_.sync);
    }
    // The entries now live in machine_ (sources_ keeps the local paths).
    took_entries(0);
    took_unread(sources_.unread);
    skipped_notes_ = std::move(sources_.skipped_notes);
}

void send_session::took_unread(std::vector<skipped_file>& unread) {
    for (skipped_file& f : unread) {
        log_failed(ctx_, f);
        given_up_.push_back(f);
        not_sent_.push_back(std::move(f));
    }
    unread.clear();
}

bool send_session::took_skipped(const source_tree& part) {
    if (!options_.sync || !options_.sync->delete_() || part.skipped_paths.empty()) {
        return true;
    }
    if (std::string error = check_keep(part, keep_bytes_); !error.empty()) {
        fail(exit_code::usage, error);  // before the last batch: the receiver deletes nothing
        return false;
    }
    for (const std::string& path : part.skipped_paths) {
        dst_keeps().keep(path);
        keep_.push_back(path);
    }
    return true;
}

void send_session::took_entries(std::uint32_t from) {
    std::size_t n = machine_.total_files();
    memo_ok_.resize(n, 0);
    file_events_.resize(n);
    for (std::uint32_t i = from; i < n; ++i) {
        regular_files_ += machine_.entry(file_id{i}).is_dir ? 0 : 1;
    }
}

const std::shared_ptr<send_session::source_file>& send_session::file(file_id f) {
    if (f.value >= machine_.total_files()) {
        throw std::out_of_range("send_session: no such file");
    }
    std::shared_ptr<source_file>& p = files_[f.value];
    if (!p) {
        // Made at its first read: a sync that finds most files unchanged never makes them.
        p = std::make_shared<source_file>();
        p->reads_left = chunk_count(machine_.entry(f).size);
    }
    return p;
}

send_session::~send_session() {
    // Connections may outlive the session while they close (close_after_flush lingers):
    // they must not call back into it.
    for (auto& cs : conns_) {
        if (cs.conn) {
            cs.conn->set_handler(nullptr);
        }
    }
}

void send_session::start() {
    start_ = options_.started.value_or(std::chrono::steady_clock::now());
    if (options_.feed) {
        options_.feed->on_change([weak = weak_from_this(), &io = ctx_.io] {
            asio::post(io, [weak] {
                if (auto self = weak.lock()) {
                    self->take_scan();
                }
            });
        });
        take_scan();  // what came before
        if (finished_) {
            return;
        }
    }
    if (options_.sync && options_.sync->checksum()) {
        // Hashed before connecting: the receiver does not wait on a silent sender.
        checksum_pass([this] { open_connection(0); });
        return;
    }
    open_connection(0);
}

void dial_peer(node_context& ctx, const send_target& target,
               std::function<void(std::error_code, std::unique_ptr<byte_stream>)> fn, bool first) {
    connect_options opts;
    opts.host = target.host;
    opts.port = target.port;
    opts.plaintext = ctx.config.plaintext;
    opts.tuning = ctx.config.tuning;
    opts.timeout = first && ctx.first_dial_timeout.count() > 0
                       ? std::min(ctx.first_dial_timeout, ctx.config.connect_timeout)
                       : ctx.config.connect_timeout;
    auto check = std::make_unique<tls_peer_check>();
    if (!target.expected_id.empty()) {
        std::string want = target.expected_id;
        check->allow = [want](const std::string& id) { return id == want; };
    }
    async_connect_stream(ctx.io, ctx.config.plaintext ? nullptr : ctx.tls_client.get(), opts, std::move(check),
                         std::move(fn));
}

early_dial::early_dial(node_context& ctx, send_target target, std::chrono::milliseconds hold)
    : ctx_(ctx), target_(std::move(target)), hold_(hold), expiry_(ctx.io) {}

std::shared_ptr<early_dial> early_dial::start(node_context& ctx, const send_target& target,
                                              std::chrono::milliseconds hold) {
    auto d = std::make_shared<early_dial>(ctx, target, hold);
    dial_peer(
        ctx, target, [d](std::error_code ec, std::unique_ptr<byte_stream> stream) { d->on_dialed(ec, std::move(stream)); },
        true);
    return d;
}

void early_dial::on_dialed(std::error_code ec, std::unique_ptr<byte_stream> stream) {
    done_ = true;
    done_at_ = std::chrono::steady_clock::now();
    ec_ = ec;
    stream_ = std::move(stream);
    if (fn_) {
        std::exchange(fn_, nullptr)(ec_, std::move(stream_));
        return;
    }
    if (stream_) {
        expiry_.expires_after(hold_);
        expiry_.async_wait([weak = weak_from_this()](std::error_code wait_ec) {
            if (auto d = weak.lock(); d && !wait_ec) {
                d->stream_.reset();  // closed before its Hello
            }
        });
    }
}

void early_dial::take(result_fn fn) {
    if (!done_) {
        fn_ = std::move(fn);
        return;
    }
    expiry_.cancel();
    // Dropped (held too long), held too long while the loop did not run, or failed a while
    // ago (the receiver may be up by now): a new dial's outcome is the one that counts.
    if ((!ec_ && !stream_) || std::chrono::steady_clock::now() - done_at_ > hold_) {
        dial_peer(ctx_, target_, std::move(fn), true);
        return;
    }
    // From the loop, as a dial's outcome always comes.
    auto held = std::make_shared<std::unique_ptr<byte_stream>>(std::move(stream_));
    asio::post(ctx_.io, [fn = std::move(fn), ec = ec_, held] { fn(ec, std::move(*held)); });
}

std::pair<exit_code, std::string> dial_failure(std::error_code ec, const send_target& target, const std::string& role) {
    std::string where = join_host_port(target.host, target.port);
    if (ec == transport_errc::untrusted_peer) {
        return {exit_code::auth,
                role + " at " + where + " is not " + format_node_id(target.expected_id) + " (its certificate has another ID)"};
    }
    return {exit_code::transfer_failed, "cannot connect to " + where + ": " + ec.message()};
}

void send_session::open_connection(std::uint32_t index) {
    auto on_dialed = [self = shared_from_this(), index](std::error_code ec, std::unique_ptr<byte_stream> stream) {
        if (self->finished_) {
            return;
        }
        if (ec) {
            std::string where = join_host_port(self->target_.host, self->target_.port);
            auto [code, line] = dial_failure(ec, self->target_, "receiver");
            if (code == exit_code::auth) {
                self->fail(code, line, false);
            } else if (index == 0) {
                self->fail(code, line, false, true);
            } else {
                self->ctx_.log("connection " + std::to_string(index) + " to " + where +
                               " failed: " + ec.message() + "; continuing with the others", log_level::warn);
                self->schedule_reopen(index);
            }
            return;
        }
        self->on_connected(index, std::move(stream));
    };
    if (index == 0 && options_.dialed) {
        redial_first_ = true;
        std::exchange(options_.dialed, nullptr)->take(std::move(on_dialed));
        return;
    }
    redial_first_ = false;
    dial_peer(ctx_, target_, std::move(on_dialed), index == 0);
}

void send_session::on_connected(std::uint32_t index, std::unique_ptr<byte_stream> stream) {
    adopt(index, ctx_.new_connection(std::move(stream)));
    if (index > 0) {
        conns_[index].ready = true;
        pump(index);
    }
}

void send_session::adopt(std::uint32_t index, std::shared_ptr<connection> c, bool reading) {
    if (!scope_) {
        // Connection 0 comes first; the peer's ID is known from its handshake.
        peer_key_ = c->stream().peer_id().empty() ? c->stream().remote() : c->stream().peer_id();
        scope_ = std::make_shared<stats_scope>(ctx_.stats.peers.get(peer_key_), start_);
    }
    count_wire(c->stream(), scope_);
    c->index = index;
    if (conns_[index].conn) {
        conns_[index].conn->set_handler(nullptr);  // the lost one it replaces
        if (!conns_[index].conn->closed()) {
            conns_[index].conn->close();
        }
        requeue_inflight(conns_[index]);
        conns_[index].window_bytes = options_.window_bytes;
        conns_[index].window_bound = false;
        conns_[index].pushed_back_since = {};
        conns_[index].pushed_back = {};
    }
    conns_[index].conn = c;
    conns_[index].heard = stats_clock::now();
    if (!stall_timer_) {
        stall_timer_ = std::make_unique<asio::steady_timer>(ctx_.io);
        check_stalls();
    }
    if (reading) {
        c->set_handler(this);
    } else {
        c->start(this);
    }
    if (accepted_ && index == 0) {
        return;  // a pull's: peer_manager answered its Hello before the scan
    }
    wire::Header h = make_hello(session_id_, index, options_.connections, ctx_.config.plaintext, true);
    c->send(h);
}

void send_session::start_accepted(std::shared_ptr<connection> c, const wire::Hello& hello) {
    start_ = options_.started.value_or(std::chrono::steady_clock::now());
    accepted_ = true;
    session_id_ = hello.session_id();  // the receiver chose it: its other connections name it
    file_events_.set_session(session_id_);  // (its file events carried the one made here)
    if (options_.feed) {
        take_scan();  // a pull's scan, finished: its parts after the first
        if (finished_) {
            return;
        }
    }
    adopt(0, std::move(c), true);
    on_hello(*conns_[0].conn, hello);
}

void send_session::add_connection(std::shared_ptr<connection> c, const wire::Hello& hello) {
    std::uint32_t idx = hello.conn_index();
    if (finished_ || !accepted_ || idx == 0 || idx >= conns_.size()) {
        wire::Header h;
        h.mutable_error()->set_code(wire::ERROR_PROTOCOL);
        h.mutable_error()->set_message(finished_ ? "session over" : "bad connection index");
        c->send(h);
        c->close_after_flush(protocol_errc::unexpected_message);
        return;
    }
    if (conns_[idx].conn) {
        ctx_.log("connection " + std::to_string(idx) + " from " + log_id(peer_id_) + " replaced");
    }
    adopt(idx, std::move(c), true);
    conns_[idx].ready = true;
    pump(idx);
}

std::uint32_t send_session::open_connections() const {
    return static_cast<std::uint32_t>(std::count_if(conns_.begin(), conns_.end(), [](const conn_state& cs) {
        return cs.conn && !cs.conn->closed();
    }));
}

void send_session::on_hello(connection& c, const wire::Hello& hello) {
    if (hello.version() != protocol_version) {
        fail(exit_code::transfer_failed,
             "receiver speaks protocol version " + std::to_string(hello.version()) + ", this ferry speaks " +
                 std::to_string(protocol_version) + " (upgrade the older side)");
        return;
    }
    if (c.index != 0 || offers_sent_ || checksums_left_ > 0) {
        return;
    }
    peer_id_ = c.stream().peer_id();
    peer_address_ = c.stream().remote();
    bool peer_decodes_zstd = std::find(hello.codecs().begin(), hello.codecs().end(), wire::CODEC_ZSTD) !=
                             hello.codecs().end();
    if (!peer_decodes_zstd) {
        compression_ = compression_policy(compress_mode::never);
    }
    warn_unverified(ctx_, c.stream().is_tls(), target_.expected_id, peer_id_, "receiver", "ID@HOST:PORT");
    if (ctx_.events.connected) {
        ctx_.events.connected(peer_id_, peer_address_, options_.connections);
    }
    if (accepted_ && options_.sync && options_.sync->checksum()) {
        checksum_pass([this] { begin_offers(); });  // a pull: the puller waits for the first Offer
        return;
    }
    begin_offers();
}

void send_session::begin_offers() {
    offers_sent_ = true;
    send_offers();
    conns_[0].ready = true;
    if (!accepted_) {
        widen();
    }
}

bool send_session::path_calls_for_more() const {
    const std::shared_ptr<connection>& c = conns_[0].conn;
    if (!c || c->closed()) {
        return false;  // lost: the session ends or dials it again, and its path is unknown
    }
    return path_calls_for_more_connections(c->stream().socket().native_handle(), options_.widen_rtt_us);
}

void send_session::widen() {
    if (widened_ || finished_ || options_.connections < 2) {
        return;
    }
    if (options_.adaptive_connections && !path_calls_for_more()) {
        if (!widen_timer_) {
            widen_timer_ = std::make_unique<asio::steady_timer>(ctx_.io);
        }
        widen_timer_->expires_after(widen_every);
        widen_timer_->async_wait([weak = weak_from_this()](std::error_code ec) {
            if (auto self = weak.lock(); self && !ec) {
                self->widen();
            }
        });
        return;
    }
    widened_ = true;
    for (std::uint32_t i = 1; i < options_.connections; ++i) {
        open_connection(i);
    }
}

void send_session::checksum_pass(std::function<void()> then) {
    checksum_then_ = std::move(then);
    if (!options_.memo) {
        options_.memo = std::make_shared<digest_memo>();
    }
    // Batches of about 8 MiB or 256 files (many small files cost one round trip to the
    // pool), at most two on the pool at once, so that other sessions' work is not queued
    // behind a whole tree and a session that ends stops hashing.
    std::vector<std::uint32_t> batch;
    std::uint64_t bytes = 0;
    for (std::uint32_t i = 0; i < machine_.total_files(); ++i) {
        const entry_info& e = machine_.entry(file_id{i});
        if (!e.is_file()) {
            continue;
        }
        if (batch.size() >= 256 || bytes >= (std::uint64_t{8} << 20)) {
            checksum_batches_.push_back(std::move(batch));
            batch.clear();
            bytes = 0;
        }
        batch.push_back(i);
        bytes += e.size;
    }
    if (!batch.empty()) {
        checksum_batches_.push_back(std::move(batch));
    }
    checksums_left_ = checksum_batches_.size();
    if (checksums_left_ == 0) {
        checksum_then_();
        return;
    }
    for (int k = 0; k < 2; ++k) {
        next_checksum_batch();
    }
}

void send_session::next_checksum_batch() {
    if (checksum_batches_.empty() || finished_) {
        return;
    }
    struct result {
        std::uint32_t id = 0;
        std::vector<digest128> chunks;
        bool failed = false;
    };
    std::vector<std::uint32_t> ids = std::move(checksum_batches_.front());
    checksum_batches_.pop_front();
    std::vector<std::pair<const std::string*, std::uint64_t>> files;
    for (std::uint32_t id : ids) {
        files.emplace_back(&local_path(file_id{id}), machine_.entry(file_id{id}).size);
    }
    ctx_.workers.post([self = shared_from_this(), ids = std::move(ids), files = std::move(files), root_fd = root_fd()] {
        std::vector<result> out(ids.size());
        std::vector<std::uint8_t> buf;
        for (std::size_t k = 0; k < ids.size() && !self->cancelled_->load(std::memory_order_relaxed); ++k) {
            out[k].id = ids[k];
            auto [local, size] = files[k];
            unique_fd fd(open_read(root_fd, *local));
            out[k].failed = fd.get() < 0 || !hash_chunks(fd.get(), size, buf, out[k].chunks, [&] {
                return self->cancelled_->load(std::memory_order_relaxed);
            });
        }
        asio::post(self->ctx_.io, [self, out = std::move(out)] {
            if (self->finished_) {
                return;
            }
            for (const result& r : out) {
                file_id f{r.id};
                if (r.failed) {
                    self->options_.memo->forget(f);  // offered without a digest: compared by size and mtime
                    continue;
                }
                self->machine_.set_digest(f, file_digest(r.chunks));
                for (std::uint32_t c = 0; c < r.chunks.size(); ++c) {
                    self->options_.memo->put(f, chunk_index{c}, r.chunks.size(), r.chunks[c]);
                }
            }
            if (--self->checksums_left_ == 0) {
                self->checksum_then_();
            } else {
                self->next_checksum_batch();
            }
        });
    });
}

void send_session::send_offers() {
    if (!offers_sent_ || offer_posted_ || finished_ || !conns_[0].conn || conns_[0].conn->closed()) {
        return;
    }
    std::optional<wire::Offer> offer = machine_.next_offer();
    if (!offer) {
        return;  // none sealed, or the receiver has max_offers_ahead to answer (its Accept calls again)
    }
    wire::Header h;
    *h.mutable_offer() = std::move(*offer);
    // Paths not sent ride along in what the frame header has room for beside the batch;
    // the rest wait for the next batch, and the last says how many it could not list.
    std::size_t listed = 0;
    for (std::size_t bytes = 0; listed < not_sent_.size(); ++listed) {
        const skipped_file& f = not_sent_[listed];
        bytes += f.path.size() + f.reason.size() + 16;
        if (bytes > max_not_sent_bytes) {
            break;
        }
        wire::NotSent* n = h.mutable_offer()->add_not_sent();
        n->set_path(f.path);
        n->set_reason(f.reason);
        n->set_vanished(f.vanished);
        n->set_folder(!f.file);
    }
    not_sent_.erase(not_sent_.begin(), not_sent_.begin() + static_cast<std::ptrdiff_t>(listed));
    std::size_t kept = 0;
    for (std::size_t bytes = 0; kept < keep_.size(); ++kept) {
        bytes += keep_entry_bytes(keep_[kept]);
        if (bytes > max_keep_offer_bytes) {
            break;
        }
        h.mutable_offer()->add_keep(std::move(keep_[kept]));
    }
    keep_.erase(keep_.begin(), keep_.begin() + static_cast<std::ptrdiff_t>(kept));
    // A pull's notes, in the room left under max_header_len (a push's sender shows them
    // itself). One too long for any batch is only counted. (The batch's size is measured
    // only when there are notes: it walks every entry.)
    std::size_t noted = 0;
    const std::size_t header = accepted_ && !skipped_notes_.empty() ? h.ByteSizeLong() : max_header_len;
    const std::size_t room = header + 1024 < max_header_len ? std::min(max_skipped_note_bytes, max_header_len - header - 1024) : 0;
    for (std::size_t bytes = 0; accepted_ && noted < skipped_notes_.size(); ++noted) {
        if (skipped_notes_[noted].size() + 3 > max_skipped_note_bytes) {
            ++skipped_unlisted_;
            continue;
        }
        bytes += skipped_notes_[noted].size() + 3;
        if (bytes > room) {
            break;
        }
        h.mutable_offer()->add_skipped(std::move(skipped_notes_[noted]));
    }
    skipped_notes_.erase(skipped_notes_.begin(), skipped_notes_.begin() + static_cast<std::ptrdiff_t>(noted));
    if (h.offer().last()) {
        h.mutable_offer()->set_skipped_more(accepted_ ? skipped_notes_.size() + skipped_unlisted_ : 0);
        skipped_notes_.clear();
    }
    if (h.offer().last() && !keep_.empty()) {
        // (take_scan left batches enough for them: never.)
        fail(exit_code::transfer_failed, "paths to keep left over after the last Offer");
        return;
    }
    if (h.offer().last()) {
        h.mutable_offer()->set_not_sent_more(not_sent_.size());
        h.mutable_offer()->set_not_sent_more_folders(
            std::count_if(not_sent_.begin(), not_sent_.end(), [](const skipped_file& f) { return !f.file; }));
        not_sent_.clear();
    }
    // Batches after the first go compressed (Packed) when compression is allowed both ways:
    // an index of paths shrinks about eightfold, so a no-change sync of a big tree sends
    // less than rsync's file list. zstd runs on a worker, ahead of the chunk reads queued
    // there; batches leave in order (offers_out_), and the next is made meanwhile. The
    // first, small batch goes at once (the receiver starts on it while the next is
    // compressed), and so does any batch when no buffer is free.
    outgoing_offer& out = offers_out_.emplace_back();
    out.seq = offers_made_++;
    const std::size_t raw = h.ByteSizeLong();
    if (compression_.mode() != compress_mode::never && machine_.offers_sent() > 1 && raw >= min_packed_offer_bytes) {
        out.packed = ctx_.buffers->acquire(raw);
    }
    if (out.packed.data()) {
        h.SerializeWithCachedSizesToArray(out.packed.data());
        out.ready = false;
        out.raw_len = raw;
        // The slot owns the buffer and leaves offers_out_ only once ready: the worker's
        // pointer stays valid (and `self` keeps the session).
        ctx_.workers.post_first([self = shared_from_this(), seq = out.seq, buf = out.packed.data(), raw] {
            std::size_t n = compress_chunk({buf, raw}, compression_policy::fast_level).size;
            asio::post(self->ctx_.io, [self, seq, n] {
                for (outgoing_offer& o : self->offers_out_) {
                    if (o.seq == seq) {
                        o.packed_len = n;  // 0: it did not shrink
                        o.ready = true;
                    }
                }
                self->flush_offers();
            });
        });
    }
    out.h = std::move(h);
    flush_offers();
    offer_sent_at_ = stats_clock::now();
    if (machine_.offers_sent() < machine_.offer_count()) {
        offer_posted_ = true;
        asio::post(ctx_.io, [self = shared_from_this()] {
            self->offer_posted_ = false;
            self->send_offers();
        });
    }
}

void send_session::flush_offers() {
    while (!offers_out_.empty() && offers_out_.front().ready && !finished_ && conns_[0].conn &&
           !conns_[0].conn->closed()) {
        outgoing_offer& o = offers_out_.front();
        if (o.packed_len > 0) {
            wire::Header p;
            p.mutable_packed()->set_raw_len(static_cast<std::uint32_t>(o.raw_len));
            conns_[0].conn->send(p, std::move(o.packed), o.packed_len);
        } else {
            conns_[0].conn->send(o.h);
        }
        offers_out_.pop_front();
    }
}

void send_session::take_scan() {
    if (finished_ || !options_.feed) {
        return;
    }
    scan_feed::taken got = options_.feed->take();
    auto from = static_cast<std::uint32_t>(machine_.total_files());
    for (source_tree& part : got.parts) {
        if (options_.skipped_note) {
            for (const std::string& note : part.skipped) {
                options_.skipped_note(note);
            }
        }
        if (!took_skipped(part)) {
            return;
        }
        std::move(part.locals.begin(), part.locals.end(), std::back_inserter(sources_.locals));
        machine_.append(std::move(part.entries));
        took_unread(part.unread);
        if (accepted_) {  // (a push's sender shows its notes itself: kept for a puller only)
            std::move(part.skipped_notes.begin(), part.skipped_notes.end(), std::back_inserter(skipped_notes_));
        }
    }
    took_entries(from);
    if (got.finished) {
        options_.feed.reset();
        if (got.ec) {
            fail(exit_code::local_io, "cannot scan the sources: " + printable(got.error));
            return;
        }
        // The batches still to go carry the paths to keep still waiting: enough of them
        // (each a new one, not sent yet).
        std::size_t waiting = 0;
        for (const std::string& path : keep_) {
            waiting += keep_entry_bytes(path);
        }
        for (; waiting > 0; waiting -= std::min(waiting, keep_per_offer)) {
            machine_.flush();
        }
        machine_.complete();
        report_maybe_renamed();
    } else if (options_.feed->max_held() > 0 && machine_.unsealed_entries() > 0 &&
               machine_.total_files() - machine_.files_done() >= options_.feed->max_held()) {
        // The scan waits for room (scan_feed::put): what it found goes out now, not when a
        // batch fills, so that its files can be done with.
        machine_.flush();
    }
    send_offers();
    pump_all();
}

void send_session::on_frame(connection& c, wire::Header& header, pooled_buffer payload) {
    if (finished_) {
        return;
    }
    conn_state& cs = conns_[c.index];
    cs.heard = stats_clock::now();
    switch (header.body_case()) {
        case wire::Header::kHello: on_hello(c, header.hello()); return;
        case wire::Header::kAccept: {
            std::vector<wire::FileDone> done_now;
            if (std::error_code ec = machine_.on_accept(*header.mutable_accept(), done_now)) {
                fail(exit_code::transfer_failed, "protocol error from receiver: " + ec.message());
                return;
            }
            for (const wire::FileAccept& fa : header.accept().files()) {
                if (fa.id() >= machine_.total_files()) {
                    continue;
                }
                const entry_info& e = machine_.entry(file_id{fa.id()});
                if (fa.action() == wire::SYNC_FAILED) {
                    continue;  // not made there: told of with the TransferResult
                }
                if (e.is_dir) {
                    if (ctx_.events.folder && options_.sync) {
                        if (fa.action() == wire::SYNC_UPDATE) {
                            // Set by the receiver at the end: told of with its TransferResult.
                            folder_updates_.push_back(e.path);
                        } else {
                            ctx_.events.folder(e.path, fa.action());
                        }
                    }
                } else if (fa.kind() == wire::ACCEPT_SKIP) {
                    if (!fa.basis().empty() && fa.action() == wire::SYNC_CREATE && options_.sync &&
                        options_.sync->dry_run()) {
                        // A dry run's new file the receiver would start from its file at
                        // `basis`: told as the run would tell it (a rename where SRC no
                        // longer has that path), once SRC's scan is whole.
                        maybe_renamed_.push_back({file_id{fa.id()}, e, fa.action(), fa.basis()});
                        if (machine_.is_complete()) {
                            report_maybe_renamed();
                        }
                    } else {
                        file_events_.done(ctx_.events.file, file_id{fa.id()}, e, true, fa.action());
                    }
                }
            }
            for (wire::FileDone& d : done_now) {
                wire::Header h;
                *h.mutable_file_done() = std::move(d);
                conns_[0].conn->send(h);
            }
            if (machine_.all_accepted() && machine_.claimed_bytes() > 0 && ctx_.events.resumed) {
                ctx_.events.resumed("send", session_id_, machine_.claimed_bytes(), machine_.resumed_files());
            }
            trim_entries();  // the folders, links and files found unchanged are done with
            send_offers();  // room for one more batch
            pump_all();
            return;
        }
        case wire::Header::kHaveDigests:
            if (c.index != 0) {
                break;
            }
            if (std::error_code ec = machine_.on_have_digests(header.have_digests(), payload.span())) {
                fail(exit_code::transfer_failed, "protocol error from receiver: " + ec.message());
                return;
            }
            return;
        case wire::Header::kBasisSums:
            if (c.index != 0) {
                break;
            }
            if (std::error_code ec = machine_.on_basis_sums(header.basis_sums(), payload.span())) {
                fail(exit_code::transfer_failed, "protocol error from receiver: " + ec.message());
                return;
            }
            return;
        case wire::Header::kSmallSums:
            if (c.index != 0) {
                break;
            }
            if (std::error_code ec = machine_.on_small_sums(header.small_sums(), payload.span())) {
                fail(exit_code::transfer_failed, "protocol error from receiver: " + ec.message());
                return;
            }
            return;
        case wire::Header::kChunkAck: {
            std::uint64_t acked = 0;
            for (std::uint64_t key : header.chunk_ack().chunks()) {
                std::error_code ec;
                std::optional<wire::FileDone> released;
                bool after_result = false;
                bool first_ack = machine_.on_ack(key, ec, &released, &after_result) > 0;
                if (ec) {
                    fail(exit_code::transfer_failed, "protocol error from receiver: " + ec.message());
                    return;
                }
                if (released) {
                    // A resumed file's FileDone, held until the chunks sent again were written.
                    send_file_done(chunk_key_file(key), std::move(*released));
                }
                if (auto it = cs.inflight.find(key); it != cs.inflight.end()) {
                    std::uint64_t len = it->second.raw_len;
                    auto now = stats_clock::now();
                    ctx_.stats.chunk_rtt.observe(now - it->second.sent_at);
                    // A delta's bytes copied at the receiver are not what compression saved.
                    const std::uint64_t copied = it->second.copied;
                    std::uint64_t saved = copied > 0 ? 0 : len - it->second.wire_len;
                    // A chunk sent twice counts once. One whose file's result came first (a
                    // one-chunk file's) counts once the transfer succeeds, as its payload
                    // does then (result()).
                    delta_copied_ += first_ack ? copied : 0;
                    copied_after_result_ += !first_ack && after_result ? copied : 0;
                    cs.inflight.erase(it);
                    cs.inflight_bytes -= len;
                    acked += len;
                    // A delta's copied bytes are confirmed but never travelled: matched, not
                    // payload sent (node totals, rates, progress).
                    scope_->add_payload_sent(len - copied, 1, now, saved);
                    if (ttfb_s_ < 0) {
                        ttfb_s_ = seconds_since(start_);
                        ctx_.stats.ttfb.observe(now - start_);
                    }
                }
            }
            if (acked > 0 && cs.failures > 0) {
                cs.failures = 0;
                if (cs.lost_at != stats_clock::time_point{}) {
                    double ms = std::chrono::duration<double, std::milli>(stats_clock::now() - cs.lost_at).count();
                    ctx_.log("connection " + std::to_string(c.index) + " is back and carrying data, " +
                             std::to_string(static_cast<long>(ms)) + " ms after it was lost");
                    cs.lost_at = {};
                }
            }
            adjust_window(cs, acked);
            pump(c.index);
            return;
        }
        case wire::Header::kFileResult:
            if (const wire::FileResult& r = header.file_result();
                !r.ok() && machine_.receiver_gave_up(file_id{r.file_id()})) {
                // That file alone could not be written there: the others go on, and the
                // transfer ends partial (exit 5).
                let_go(file_id{r.file_id()}, "not written at the receiver: " + printable(r.error()), false, false, true);
                pump_all();
                send_offers();  // (its small sums went with it)
                return;
            }
            if (std::error_code ec = machine_.on_file_result(header.file_result())) {
                fail(exit_code::transfer_failed, "receiver failed: " + printable(machine_.failure()), false);
                return;
            }
            // (Not a file given up on and forgotten since, its entry gone: its result crossed
            // the FileAbort, and its `failed` line is out.)
            if (std::uint32_t id = header.file_result().file_id();
                id < machine_.total_files() && id >= machine_.first_entry_held()) {
                file_id f{id};
                std::string_view from = machine_.basis(f);
                if (!from.empty() && machine_.sent_nothing(f) && !machine_.is_complete()) {
                    // Made from DST's copy at `from`: a rename if SRC has no such path, unless
                    // the scan fails before its end (told of once it ends: take_scan).
                    maybe_renamed_.push_back({f, machine_.entry(f), machine_.action(f), std::string(from)});
                } else {
                    if (from.empty() || !machine_.sent_nothing(f) || still_at_dst(from)) {
                        from = {};  // sent (in part), or a copy of a file DST keeps
                    }
                    file_events_.done(ctx_.events.file, f, machine_.entry(f), false, machine_.action(f), from);
                }
                // Done with: 200,000 files kept ~600 bytes each for nothing.
                machine_.release(f);
                files_.erase(id);
                trim_entries();
                send_offers();  // (one held back while the accepted files hold many small sums)
            }
            return;
        case wire::Header::kDeleted:
            // --delete's prune, or a folder in the way of a file (either way, a sync's).
            if (c.index != 0 || !options_.sync) {
                break;
            }
            for (const wire::Entry& e : header.deleted().entries()) {
                ++(e.kind() == wire::ENTRY_DIR ? deleted_dirs_ : deleted_files_);
                if (ctx_.events.deleted) {
                    // Names as the receiver's file system has them (any bytes): the
                    // events' reader escapes them for a terminal or JSON.
                    ctx_.events.deleted(e.path(), e.kind());
                }
            }
            return;
        case wire::Header::kTransferResult: {
            if (std::error_code ec = machine_.on_transfer_result(header.transfer_result())) {
                fail(exit_code::transfer_failed, "receiver failed: " + printable(machine_.failure()), false);
                return;
            }
            for (const wire::NotSent& n : header.transfer_result().not_done()) {
                given_up_.push_back({n.path(), "at the receiver: " + printable(n.reason()), false, false, true, n.file()});
            }
            // The paths the list left out: one entry for their files and symlinks, one for
            // the other paths, each counting them (an older receiver tells no kinds: all
            // counted as other paths).
            const wire::TransferResult& tr = header.transfer_result();
            std::uint64_t more_files = std::min(tr.not_done_more_files(), tr.not_done_more());
            for (auto [n, files] : {std::pair{more_files, true}, std::pair{tr.not_done_more() - more_files, false}}) {
                if (n > 0) {
                    const char* what = files ? " more file(s) or symlink(s)"
                                       : tr.has_not_done_more_files() ? " more other path(s)"
                                                                      : " more path(s)";
                    given_up_.push_back({"...", std::to_string(n) + what + " the receiver could not finish", false,
                                         false, true, files, n});
                }
            }
            // The folders whose mode or mtime it set (not those it lists as not set).
            if (!folder_updates_.empty()) {
                tell_folder_updates(ctx_.events, folder_updates_, given_up_);
            }
            finish(true, exit_code::ok, "");
            return;
        }
        case wire::Header::kError:
            if (c.index != 0 && header.error().code() == wire::ERROR_BUSY) {
                // The receiver's connection limits turned away an extra connection: go
                // on with the ones it took (on_closed requeues whatever this one held).
                ctx_.log("receiver refused connection " + std::to_string(c.index) + ": " +
                         printable(header.error().message()) +
                         "; continuing with the others", log_level::warn);
                cs.refused = true;
                c.close();
                return;
            }
            // A puller that needs it no more (or stopped) ends a pull: no fault of this node's.
            peer_cancelled_ = accepted_ && header.error().code() == wire::ERROR_CANCELLED;
            // A receiver that stopped, timed out or is full may take the transfer later.
            fail(exit_code::transfer_failed, "receiver: " + printable(header.error().message()), false,
                 header.error().code() == wire::ERROR_CANCELLED || header.error().code() == wire::ERROR_BUSY ||
                     header.error().code() == wire::ERROR_NO_SPACE);
            return;
        case wire::Header::kPong: return;
        case wire::Header::kPing: {
            // The receiver asks whether this side is still there (another transfer wants
            // files this one writes): the answer goes out on the loop, whatever is queued.
            wire::Header h;
            h.mutable_pong()->set_nonce(header.ping().nonce());
            c.send(h);
            return;
        }
        default: break;
    }
    fail(exit_code::transfer_failed, "protocol error from receiver: unexpected message");
}

void send_session::on_send_ready(connection& c) { pump(c.index); }

bool send_session::still_at_dst(std::string_view path) {
    // Excluded, or what SRC could not read: DST keeps it.
    if (options_.sync && dst_keeps().excluded_or_inside(path, false)) {
        return true;
    }
    // SRC as it is now (its entries of files done with are gone: trim_entries): anything
    // but a folder, reached without a symlink (a symlink itself is stat'ed as one: stat_at
    // beneath a sync's SRC), is what its scan offers. A folder of SRC's there replaces
    // DST's file: it was moved.
    struct stat st {};
    return stat_at(root_fd(), std::string(path), st) == 0 && !S_ISDIR(st.st_mode);
}

void send_session::trim_entries() {
    machine_.trim_entries(pinned_.empty() ? std::numeric_limits<std::uint32_t>::max() : *pinned_.begin());
    sources_.trim_locals(machine_.first_entry_held());
    if (options_.feed) {
        // The scan's window counts the entries not done with, not those still held: one
        // big file early in the walk holds every entry after it (its parts go only once it
        // is done), and the scan must not wait for it while the files after it move.
        options_.feed->let_go(machine_.files_done());
    }
}

void send_session::report_maybe_renamed() {
    for (const maybe_renamed& m : maybe_renamed_) {
        // A scan that ended early may not have reached `from`: a copy then (a failed
        // attempt deletes nothing at DST).
        bool renamed = machine_.is_complete() && !still_at_dst(m.from);
        const bool dry = options_.sync && options_.sync->dry_run();  // nothing came: skipped
        file_events_.done(ctx_.events.file, m.id, m.entry, dry, m.action,
                          renamed ? std::string_view(m.from) : std::string_view());
    }
    maybe_renamed_ = {};
}

exclude_set& send_session::dst_keeps() {
    if (!excludes_) {
        excludes_.emplace();
        sync_excludes(*options_.sync, *excludes_);  // checked when the sync began
    }
    return *excludes_;
}

void send_session::pump_all() {
    for (std::uint32_t i = 0; i < conns_.size(); ++i) {
        pump(i);
    }
}

void send_session::pump(std::uint32_t index) {
    conn_state& cs = conns_[index];
    // Reads go to the pool in batches: a chunk of a big file alone (both workers hash in
    // parallel), small files together (one round trip to the pool for many files).
    std::vector<read_job> batch;
    std::uint64_t batch_bytes = 0;
    pending_run run;
    if (cs.pushed_back_since != stats_clock::time_point{} && !cs.socket_full()) {
        cs.pushed_back += stats_clock::now() - cs.pushed_back_since;
        cs.pushed_back_since = {};
    }
    while (!finished_ && !waiting_buffer_ && cs.ready && cs.conn && !cs.conn->closed()) {
        if (cs.socket_full()) {
            if (cs.pushed_back_since == stats_clock::time_point{}) {
                cs.pushed_back_since = stats_clock::now();
            }
            break;  // the socket is the limit
        }
        if (cs.inflight_bytes + cs.reading_bytes >= cs.window_bytes) {
            cs.window_bound = true;  // the window is the limit, though the socket takes more
            break;
        }
        if (cs.inflight.size() + cs.reading >= options_.window_chunks || cs.reading_bytes >= options_.read_ahead_bytes) {
            break;
        }
        if (options_.max_rate > 0 && !rate_allows()) {
            break;
        }
        std::optional<chunk_ref> ref = machine_.next_chunk();
        if (!ref) {
            break;
        }
        bool stop = false;
        if (delta_ref(*ref, stop)) {
            continue;
        }
        if (stop) {
            break;
        }
        if (add_to_run(cs, *ref, run)) {
            continue;
        }
        if (!ref->send && hashed_from_memo(*ref)) {
            continue;
        }
        pooled_buffer buf = ctx_.buffers->acquire(ref->length);
        if (!buf) {
            machine_.requeue(*ref);
            waiting_buffer_ = true;
            ctx_.buffers->notify_when_available(ref->length, [weak = weak_from_this()] {
                if (auto self = weak.lock()) {
                    asio::post(self->ctx_.io, [self] {
                        self->waiting_buffer_ = false;
                        self->pump_all();
                    });
                }
            });
            break;
        }
        ++cs.reading;
        cs.reading_bytes += ref->length;
        if (ref->send) {
            rate_.tokens -= ref->length;  // --bwlimit: charged now; on_read refunds what does not go out
        }
        batch.push_back(make_read_job(*ref, std::move(buf)));
        batch_bytes += ref->length;
        if (batch.size() >= max_batch_reads || batch_bytes >= chunk_size) {
            sample_wire_rate();
            post_reads(index, std::move(batch));
            batch.clear();
            batch_bytes = 0;
        }
    }
    send_run(cs, run);
    if (!batch.empty()) {
        sample_wire_rate();
        post_reads(index, std::move(batch));
    }
}

bool send_session::add_to_run(conn_state& cs, const chunk_ref& ref, pending_run& run) {
    auto it = scans_.find(ref.file.value);
    if (!ref.send || it == scans_.end() || !it->second || !it->second->done) {
        return false;
    }
    const delta_scan& scan = *it->second;
    std::vector<delta_op> ops = chunk_ops(scan.matches, ref.offset, ref.length);
    const digest128 digest = scan.digests.at(ref.index.value);
    std::vector<std::uint8_t> entry(max_run_entry);
    entry.resize(encode_run_entry(digest, ops, ref.length, entry.data()));
    if (entry.empty()) {
        return false;  // not copies alone, or a short last chunk they would not make smaller
    }
    // The run goes on at either end with the chunks next to it (only the file's last
    // chunk is short, and it has the highest index).
    const std::size_t count = run.chunks.size();
    const bool after = count > 0 && ref.index.value == run.first + count;
    const bool before = count > 0 && ref.index.value + 1 == run.first;
    if (count == 0 || run.file != ref.file || count == max_run_chunks || !(after || before)) {
        send_run(cs, run);
        run.buf = ctx_.buffers->acquire(max_run_payload);
        if (!run.buf) {
            return false;  // read as usual (it waits for a buffer there)
        }
        run.file = ref.file;
        run.first = ref.index.value;
    } else if (before) {
        run.first = ref.index.value;
    }
    const std::uint32_t wire_len = static_cast<std::uint32_t>(entry.size());
    run.chunks.push_back({ref, digest, std::move(entry)});
    file(ref.file)->read_done();  // nothing of it is read
    // In flight from now on (pump() sends the run before it returns), each chunk charged
    // its entry's bytes.
    const stats_clock::time_point now = stats_clock::now();
    if (cs.inflight.empty()) {
        cs.busy_since = now;
    }
    cs.inflight.emplace(chunk_key(ref.file, ref.index), inflight_chunk{now, wire_len, ref.length, ref.length});
    cs.inflight_bytes += ref.length;
    rate_.tokens -= wire_len;  // --bwlimit
    return true;
}

void send_session::send_run(conn_state& cs, pending_run& run) {
    std::vector<pending_run::chunk> chunks = std::move(run.chunks);
    run.chunks.clear();
    pooled_buffer buf = std::move(run.buf);
    if (chunks.empty()) {
        return;
    }
    std::sort(chunks.begin(), chunks.end(),
              [](const auto& a, const auto& b) { return a.ref.index.value < b.ref.index.value; });
    for (const pending_run::chunk& c : chunks) {
        on_hashed(c.ref, c.digest);
    }
    const chunk_ref& last = chunks.back().ref;
    if (machine_.aborted(last.file)) {
        return;  // given up on as it was hashed (changed since its scan): its chunks left the window
    }
    file_events_.started(ctx_.events.file, last.file, machine_.entry(last.file), machine_.action(last.file));
    if (!cs.conn || cs.conn->closed()) {
        return;  // its chunks are in flight there: on_closed requeues them
    }
    wire::Header h;
    std::size_t size = 0;
    if (chunks.size() == 1) {
        // One chunk: its own Chunk frame, with the entry's ops as its payload.
        const std::vector<std::uint8_t>& e = chunks[0].entry;
        size = e.size() - 18;
        std::memcpy(buf.data(), e.data() + 18, size);
        wire::Chunk* c = h.mutable_chunk();
        c->set_file_id(last.file.value);
        c->set_index(last.index.value);
        c->set_raw_len(last.length);
        c->set_codec(wire::CODEC_DELTA);
        c->set_hash_lo(chunks[0].digest.lo);
        c->set_hash_hi(chunks[0].digest.hi);
    } else {
        for (const pending_run::chunk& c : chunks) {
            std::memcpy(buf.data() + size, c.entry.data(), c.entry.size());
            size += c.entry.size();
        }
        wire::ChunkRun* r = h.mutable_chunk_run();
        r->set_file_id(last.file.value);
        r->set_first(chunks.front().ref.index.value);
        r->set_count(static_cast<std::uint32_t>(chunks.size()));
        r->set_last_raw_len(last.length);
    }
    buf.resize(size);
    cs.conn->send(h, std::move(buf), size);
}

bool send_session::rate_allows() {
    auto now = stats_clock::now();
    double rate = static_cast<double>(options_.max_rate);
    // A chunk may go on what is left (the tokens go below 0 until it is paid for): the
    // bucket holds a chunk less than the burst, so that the burst and that chunk together
    // are a tenth of a second's worth, or one chunk (they were a chunk more: 2 MiB at
    // --bwlimit 16K went at 21.7 KB/s).
    double cap = std::max(std::max(rate / 10, static_cast<double>(chunk_size)) - static_cast<double>(chunk_size), 1.0);
    if (rate_.at == stats_clock::time_point{}) {
        rate_.tokens = cap;
    } else {
        rate_.tokens = std::min(cap, rate_.tokens + rate * std::chrono::duration<double>(now - rate_.at).count());
    }
    rate_.at = now;
    if (rate_.tokens > 0) {
        return true;
    }
    auto wait =
        std::chrono::duration_cast<stats_clock::duration>(std::chrono::duration<double>((1 - rate_.tokens) / rate));
    // Armed already, but for longer than now needed: a read charged a whole chunk, and
    // what it did not send (a delta's copies, compression) came back since. Armed again
    // for the shorter wait (a delta chunk at --bwlimit 16K waited 16 s for each 256 KiB
    // it copied).
    const bool sooner = rate_.armed && rate_.timer && now + wait < rate_.timer->expiry();
    if (!rate_.armed || sooner) {
        if (sooner) {
            rate_.held -= rate_.timer->expiry() - now;
        }
        rate_.armed = true;
        if (!rate_.timer) {
            rate_.timer = std::make_unique<asio::steady_timer>(ctx_.io);
        }
        rate_.held += wait;
        rate_.timer->expires_after(wait);  // (a wait pending ends, operation_aborted)
        rate_.timer->async_wait([weak = weak_from_this()](std::error_code ec) {
            if (auto self = weak.lock(); self && !ec) {
                self->rate_.armed = false;
                self->pump_all();
            }
        });
    }
    return false;
}

void digest_memo::put(file_id f, chunk_index i, std::uint64_t chunks, digest128 d) {
    if (known.size() <= f.value) {
        known.resize(f.value + 1);
        digests.resize(f.value + 1);
    }
    if (known[f.value].size() != chunks) {
        known[f.value] = chunk_bitmap(chunks);
        digests[f.value].assign(chunks, digest128{});
    }
    known[f.value].set(i.value);
    digests[f.value][i.value] = d;
}

bool digest_memo::get(file_id f, chunk_index i, digest128& d) const {
    if (f.value >= known.size() || i.value >= known[f.value].size() || !known[f.value].test(i.value)) {
        return false;
    }
    d = digests[f.value][i.value];
    return true;
}

void digest_memo::forget(file_id f) {
    if (f.value < known.size()) {
        known[f.value] = chunk_bitmap();
        digests[f.value].clear();
    }
}

bool send_session::hashed_from_memo(const chunk_ref& ref) {
    const auto& memo = options_.memo;
    digest128 d;
    if (!memo || !memo->get(ref.file, ref.index, d)) {
        return false;
    }
    std::int8_t& ok = memo_ok_.at(ref.file.value);
    if (ok == 0) {
        // Once per file per attempt: the memo holds for the file as scanned, unchanged.
        struct stat st {};
        const entry_info& e = machine_.entry(ref.file);
        bool same = stat_at(root_fd(), local_path(ref.file), st) == 0 &&
                    static_cast<std::uint64_t>(st.st_size) == file_size(e) &&
                    timespec_ns(st.st_mtim) == e.mtime_ns;
        ok = same ? 1 : -1;
        if (!same) {
            memo->forget(ref.file);
        }
    }
    if (ok < 0) {
        return false;
    }
    file(ref.file)->read_done();
    on_hashed(ref, d);
    return true;
}

bool send_session::delta_ref(const chunk_ref& ref, bool& stop) {
    auto it = scans_.find(ref.file.value);
    if (it == scans_.end()) {
        if (!machine_.resumed(ref.file)) {
            return false;
        }
        const basis_sums* basis = machine_.basis_of(ref.file);
        if (basis == nullptr || basis->weak.empty()) {
            // A resume, not a sync's older version; or a version with no full block (a
            // file grown from less than a chunk), of which a pass could find the short
            // block alone, at the very end: its small sums are looked for in each chunk
            // as it is read (read_source), with no pass first.
            scans_.emplace(ref.file.value, nullptr);
            return false;
        }
        if (scans_running_ >= max_delta_scans) {
            machine_.requeue(ref);  // taken again once a pass is done
            stop = true;
            return false;
        }
        auto scan = std::make_shared<delta_scan>();
        it = scans_.emplace(ref.file.value, scan).first;
        ++scans_running_;
        pinned_.insert(ref.file.value);  // until on_scanned
        const entry_info& e = machine_.entry(ref.file);
        std::vector<basis_block> blocks;
        blocks.reserve(basis->weak.size());
        for (std::size_t b = 0; b < basis->weak.size(); ++b) {
            blocks.push_back({basis->weak[b], basis->strong[b], b * std::uint64_t{chunk_size}});
        }
        std::uint64_t tail = basis->tail_length();
        ctx_.workers.post([self = shared_from_this(), scan, f = ref.file, blocks = std::move(blocks), tail,
                           tail_digest = basis->tail, tail_at = basis->size - tail,
                           local = &local_path(ref.file), root_fd = root_fd(), size = e.size,
                           base = file_base(), whole_size = file_size(e)]() mutable {
            block_index index(std::move(blocks));
            const std::uint64_t chunks = chunk_count(size);
            scan->digests.resize(chunks);
            // In parts over the pool's workers, each part's own matcher fed one chunk past
            // its end as well, so that a block straddling two parts is still found
            // (append_part_matches cuts what the next part's matches overlap).
            const std::size_t parts =
                chunks < 64 ? 1 : static_cast<std::size_t>(std::min<std::uint64_t>(chunks / 32, 8));
            struct part_result {
                std::vector<block_match> matches;
                std::uint64_t end = 0;  // in bytes
                std::error_code ec;
                std::string what;
            };
            std::vector<part_result> results(parts);
            // One descriptor, read by every part (pread), and its size checked once.
            unique_fd fd(open_source(root_fd, *local, whole_size, true, scan->ec, scan->what));
            if (!scan->ec) {
                self->ctx_.workers.run_parts(parts, [&](std::size_t p) {
                    part_result& r = results[p];
                    const std::uint64_t first = chunks * p / parts;
                    const std::uint64_t end = chunks * (p + 1) / parts;
                    delta_matcher matcher(index, first);
                    std::vector<std::uint8_t> buf(chunk_size);
                    for (std::uint64_t i = first; !r.ec && i < std::min(end + 1, chunks); ++i) {
                        std::uint32_t len = chunk_length(size, i);
                        if (read_at(fd.get(), buf.data(), len, base + i * chunk_size, r.ec) != len && !r.ec) {
                            r.ec = std::make_error_code(std::errc::invalid_argument);
                            r.what = "file shrank during the transfer";
                        }
                        if (!r.ec) {
                            digest128 d = hash_chunk(std::span<const std::uint8_t>(buf.data(), len));
                            if (i < end) {
                                scan->digests[i] = d;
                            }
                            matcher.feed(buf, len, d);
                        }
                    }
                    r.matches = matcher.take_matches();
                    r.end = end * chunk_size;
                });
                for (part_result& r : results) {
                    if (r.ec) {
                        scan->ec = r.ec;
                        scan->what = std::move(r.what);
                        break;
                    }
                    append_part_matches(scan->matches, r.matches, r.end);
                }
            }
            if (!scan->ec && tail > 0 && tail <= size) {
                // The older version's short last block, looked for at the very end.
                std::error_code tail_ec;
                std::vector<std::uint8_t> buf(tail);
                if (read_at(fd.get(), buf.data(), tail, base + size - tail, tail_ec) == tail) {
                    delta_matcher::match_tail(scan->matches, buf, size, tail_digest, tail_at);
                }
            }
            if (scan->ec && scan->what.empty()) {
                scan->what = scan->ec.message();
            }
            asio::post(self->ctx_.io, [self, f, scan] { self->on_scanned(f, scan); });
        });
    }
    if (!it->second) {
        return false;
    }
    delta_scan& scan = *it->second;
    if (!scan.done) {
        scan.parked.push_back(ref);
        return true;
    }
    if (ref.send) {
        return false;  // a run's (add_to_run), or read as usual: make_read_job gives it its ops
    }
    file(ref.file)->read_done();
    on_hashed(ref, scan.digests.at(ref.index.value));
    return true;
}

void send_session::on_scanned(file_id f, const std::shared_ptr<delta_scan>& scan) {
    --scans_running_;
    pinned_.erase(pinned_.find(f.value));
    scan->done = true;
    if (finished_) {
        return;
    }
    if (scan->ec) {
        scan->parked.clear();
        give_up_unread(f, scan->ec, scan->what);
        return;
    }
    fault_after_delta_scan(root_fd(), local_path(f));
    std::vector<chunk_ref> parked = std::move(scan->parked);
    for (const chunk_ref& ref : parked) {
        if (!ref.send) {
            file(f)->read_done();
            on_hashed(ref, scan->digests.at(ref.index.value));
        }
    }
    // Chunks to send go back to the front of the queue, last first: they come out in order.
    for (auto it = parked.rbegin(); it != parked.rend(); ++it) {
        if (it->send) {
            machine_.requeue(*it);
        }
    }
    pump_all();
}

void send_session::forget_scan(file_id f) {
    if (auto it = scans_.find(f.value); it != scans_.end()) {
        it->second = nullptr;  // no more reads of it need ops: its memory goes
    }
}

void send_session::send_file_done(file_id f, wire::FileDone done) {
    forget_scan(f);
    // The file as it was read must still be the file that was scanned: a size or mtime
    // that moved means it changed while it was read (the chunks may mix two versions).
    const entry_info& e = machine_.entry(f);
    struct stat st {};
    if (stat_at(root_fd(), local_path(f), st) != 0) {
        give_up(f, vanished_error(errno), std::string("vanished while it was read: ") + std::strerror(errno), true);
        return;
    }
    if (static_cast<std::uint64_t>(st.st_size) != file_size(e) || timespec_ns(st.st_mtim) != e.mtime_ns) {
        give_up(f, false, "changed while it was read (size or mtime)", true);
        return;
    }
    wire::Header h;
    *h.mutable_file_done() = std::move(done);
    conns_[0].conn->send(h);
}

void send_session::give_up(file_id f, bool vanished, const std::string& reason, bool again) {
    std::optional<wire::FileAbort> abort = machine_.abort_file(f, vanished, reason);
    if (!abort) {
        return;
    }
    abort->set_again(again);
    let_go(f, reason, vanished, again);
    wire::Header h;
    *h.mutable_file_abort() = std::move(*abort);
    conns_[0].conn->send(h);
    pump_all();
    send_offers();  // (its small sums went with it)
}

void send_session::give_up_unread(file_id f, std::error_code ec, const std::string& what) {
    const bool gone = (ec.category() == std::system_category() || ec.category() == std::generic_category()) &&
                      vanished_error(ec.value());
    give_up(f, gone, gone ? std::string("vanished before it was read") : "cannot read it: " + what, worth_again(ec));
}

void send_session::let_go(file_id f, const std::string& reason, bool vanished, bool again, bool at_dst) {
    forget_scan(f);
    // Its descriptor closes once the reads of it still out are done (they hold the file):
    // a folder of large files the receiver refuses would keep one open each until the end.
    files_.erase(f.value);
    // Its chunks in flight will not be confirmed (the receiver drops them): they leave the
    // windows now.
    for (conn_state& cs : conns_) {
        for (auto it = cs.inflight.begin(); it != cs.inflight.end();) {
            if (chunk_key_file(it->first) == f) {
                cs.inflight_bytes -= it->second.raw_len;
                it = cs.inflight.erase(it);
            } else {
                ++it;
            }
        }
    }
    const std::string& path = machine_.entry(f).path;
    given_up_.push_back({path, reason, vanished, again, at_dst});
    log_failed(ctx_, given_up_.back());
}

void send_session::on_hashed(const chunk_ref& ref, digest128 digest) {
    if (const entry_info& e = machine_.entry(ref.file); options_.memo && resumable(e)) {
        options_.memo->put(ref.file, ref.index, chunk_count(e.size), digest);
    }
    bool resend = false;
    if (auto done = machine_.on_chunk_hashed(ref, digest, &resend)) {
        send_file_done(ref.file, std::move(*done));
    }
    if (resend) {
        file(ref.file)->read_again();  // the receiver has other bytes there: read and send it
    }
}

send_session::read_job send_session::make_read_job(const chunk_ref& ref, pooled_buffer buf) {
    read_job job;
    job.ref = ref;
    job.file = file(ref.file);
    // Its entry and local path stay (pinned_) until on_read, and the task holds the
    // session: no copy.
    pinned_.insert(ref.file.value);
    job.local = &local_path(ref.file);
    job.root_fd = root_fd();
    job.expect_size = file_size(machine_.entry(ref.file));
    job.base = file_base();
    job.buf = std::move(buf);
    if (auto it = scans_.find(ref.file.value); ref.send && it != scans_.end() && it->second && it->second->done) {
        job.ops = chunk_ops(it->second->matches, ref.offset, ref.length);
        job.scanned = it->second->digests.at(ref.index.value);
        std::uint64_t copied = copied_bytes(job.ops);
        if (copied == 0) {
            job.ops.clear();
        } else if (copied == ref.length) {
            job.copies_only = true;
            job.digest = it->second->digests.at(ref.index.value);
        }
    }
    job.level = ref.send ? compression_.next_level() : 0;  // also when a delta does not pay
    job.same_as = machine_.receiver_same_as(ref.file);
    job.small = ref.send ? machine_.receiver_small_sums(ref.file) : nullptr;
    return job;
}

int send_session::open_source(int root_fd, const std::string& path, std::uint64_t expect_size, bool check_size,
                              std::error_code& ec, std::string& what) {
    int fd = open_read(root_fd, path);
    struct stat st {};
    if (fd < 0) {
        ec = std::error_code(errno, std::system_category());
    } else if (check_size && (::fstat(fd, &st) != 0 || static_cast<std::uint64_t>(st.st_size) != expect_size)) {
        ec = std::make_error_code(std::errc::invalid_argument);
        what = "file changed size since the transfer started";
    } else if (expect_size > chunk_size) {
        ::posix_fadvise(fd, 0, 0, POSIX_FADV_SEQUENTIAL);
    }
    return fd;
}

void send_session::read_source(read_job& job) {
    const chunk_ref& ref = job.ref;
    source_file& file = *job.file;
    if (job.copies_only) {
        // The receiver rebuilds it all from its older version: the ops are the payload.
        // (The chunk's span is only a length here: copies take no byte from it.)
        std::size_t n = encode_delta(job.ops, std::span<const std::uint8_t>(job.buf.data(), ref.length), job.buf.data(),
                                     ref.length - 1);
        job.packed.size = n;
        job.delta = n > 0;
        if (job.delta) {
            file.read_done();
            return;
        }
        job.copies_only = false;  // cannot happen (a few ops, a chunk of room): read it after all
    }
    // A file read whole in one go is checked for a size change by reading one byte more
    // than it had at the scan, not by an fstat (one system call fewer per small file).
    bool whole = job.whole();
    // Read already, with its open and close, in the batch's io_uring submission.
    bool prefetched = whole && job.prefetched == static_cast<long>(ref.length);
    int fd = -1;
    if (!prefetched) {
        std::lock_guard lock(file.mutex);
        if (file.fd < 0) {
            file.fd = open_source(job.root_fd, *job.local, job.expect_size, !whole, job.ec, job.what);
        }
        fd = file.fd;
    }
    if (!job.ec && !prefetched) {
        std::size_t want = ref.length + (whole ? 1 : 0);
        // One pread for a small file (its end included); anything unusual is read again
        // with read_at, which retries short reads and interruptions.
        ssize_t first = whole ? ::pread(fd, job.buf.data(), want, 0) : -1;
        std::size_t got = first == static_cast<ssize_t>(ref.length)
                              ? ref.length
                              : read_at(fd, job.buf.data(), want, job.base + ref.offset, job.ec);
        if (!job.ec && got != ref.length) {
            job.ec = std::make_error_code(std::errc::invalid_argument);
            job.what = whole ? "file changed size since the transfer started" : "file shrank during the transfer";
        }
    }
    if (!job.ec) {
        job.digest = hash_chunk(std::span<const std::uint8_t>(job.buf.data(), ref.length));
        if (job.scanned && *job.scanned != job.digest) {
            job.changed = true;
            file.read_done();
            return;
        }
        if (job.small && job.same_as != job.digest && copied_bytes(job.ops) < ref.length) {
            // A changed file: the receiver's older version's small blocks, found in this
            // chunk in memory, where they leave fewer new bytes than the pass over
            // chunk_size blocks did (if any).
            std::shared_ptr<const small_index> index;
            {
                std::lock_guard lock(file.mutex);
                if (!file.small) {
                    file.small = std::make_shared<const small_index>(*job.small);
                }
                index = file.small;
            }
            std::vector<delta_op> fine = small_delta(std::span<const std::uint8_t>(job.buf.data(), ref.length), *index);
            if (copied_bytes(fine) > copied_bytes(job.ops)) {
                job.ops = std::move(fine);
            }
            take_edges(job, fd, *index);
        }
        if (!job.ops.empty()) {
            job.packed = delta_chunk(std::span<std::uint8_t>(job.buf.data(), ref.length), job.ops);
            job.delta = job.packed.size > 0;
            if (!job.delta) {
                job.ops.clear();  // not smaller: sent as it is (and copies nothing)
            }
        }
        if (job.level > 0 && !job.delta && job.same_as != job.digest) {  // (CODEC_SAME sends no bytes)
            job.packed = compress_chunk(std::span<std::uint8_t>(job.buf.data(), ref.length), job.level);
        }
    }
    file.read_done();
    if (job.what.empty() && job.ec) {
        job.what = job.ec.message();
    }
}

void send_session::take_edges(read_job& job, int fd, const small_index& index) {
    const chunk_ref& ref = job.ref;
    const std::uint32_t b = index.sums().block_size;
    const edge_lengths edges = edge_literals(job.ops, ref.length, b);
    if ((edges.head == 0 && edges.tail == 0) || job.base != 0 || fd < 0) {
        return;  // (a range's entry has no bytes of its own around it; a whole file none)
    }
    // The block's other part: in the bytes before the chunk, or after it.
    const std::uint64_t end = ref.offset + ref.length;
    const std::uint32_t want_before = edges.head > 0 ? b - edges.head : 0;
    const std::uint32_t want_after = edges.tail > 0 ? b - edges.tail : 0;
    // (At most two blocks of max_fine_block: a chunk's worth at most, read only for a
    // chunk whose edge has such a literal, which bytes inserted or removed before it make.)
    std::vector<std::uint8_t> around(std::size_t{want_before} + want_after);
    std::error_code ec;  // (a read that fails leaves that edge's literal as it is)
    std::error_code ec_after;
    std::span<const std::uint8_t> before;
    std::span<const std::uint8_t> after;
    if (want_before > 0 && ref.offset >= want_before &&
        read_at(fd, around.data(), want_before, ref.offset - want_before, ec) == want_before) {
        before = std::span<const std::uint8_t>(around.data(), want_before);
    }
    if (want_after > 0 && end + want_after <= job.expect_size &&
        read_at(fd, around.data() + want_before, want_after, end, ec_after) == want_after) {
        after = std::span<const std::uint8_t>(around.data() + want_before, want_after);
    }
    ferry::take_edges(job.ops, std::span<const std::uint8_t>(job.buf.data(), ref.length), before, after, index);
}

void send_session::prefetch_whole(std::span<read_job> jobs) {
    static_assert(max_batch_reads <= max_whole_reads, "a batch of reads fits one submission");
    std::array<whole_read, max_whole_reads> reads;
    std::array<read_job*, max_whole_reads> of;
    std::size_t n = 0;
    for (read_job& job : jobs) {
        if (n == reads.size() || !job.whole()) {
            continue;
        }
        {
            std::lock_guard lock(job.file->mutex);
            if (job.file->fd >= 0) {
                continue;  // open already: read as it is
            }
        }
        reads[n] = whole_read{job.root_fd, job.local, job.buf.data(), job.ref.length + 1};
        of[n++] = &job;
    }
    if (n < 2 || !read_whole(std::span<whole_read>(reads.data(), n))) {
        return;  // one file: as cheap through read_source
    }
    for (std::size_t i = 0; i < n; ++i) {
        of[i]->prefetched = reads[i].got;
    }
}

void send_session::post_reads(std::uint32_t index, std::vector<read_job> jobs) {
    ctx_.workers.post([self = shared_from_this(), index, jobs = std::move(jobs)]() mutable {
        prefetch_whole(jobs);
        for (read_job& job : jobs) {
            read_source(job);
        }
        asio::post(self->ctx_.io, [self, index, jobs = std::move(jobs)]() mutable {
            for (read_job& job : jobs) {
                self->on_read(index, job);
            }
            self->pump(index);
        });
    });
}

void send_session::on_read(std::uint32_t index, read_job& job) {
    const chunk_ref& ref = job.ref;
    pinned_.erase(pinned_.find(ref.file.value));
    conn_state& cs = conns_[index];
    --cs.reading;
    cs.reading_bytes -= ref.length;
    if (finished_) {
        return;
    }
    if (job.level > 0) {
        bool tried = !job.ec && !job.delta && job.same_as != job.digest;
        compression_.observe(job.level, tried ? ref.length : 0, job.packed.size > 0 ? job.packed.size : ref.length,
                             job.packed.cpu_seconds);
    }
    if (ref.send) {
        rate_.tokens += ref.length;  // --bwlimit: charged again below with what really goes out
    }
    if (machine_.aborted(ref.file)) {
        return;  // given up on while it was read
    }
    if (job.ec) {
        // One file that cannot be read (gone, changed, unreadable) is skipped, not the
        // transfer: the report lists it and the exit code says so.
        give_up_unread(ref.file, job.ec, job.what);
        return;
    }
    if (job.changed) {
        // Since its delta pass (a user's edit in place): given up on for now, and sent
        // again from a new scan, not as the pass's copies of other bytes (which the
        // receiver would take for its own file having changed).
        give_up(ref.file, false, "changed while it was read (its bytes since the delta's pass)", true);
        return;
    }
    on_hashed(ref, job.digest);
    if (!ref.send || machine_.aborted(ref.file)) {
        return;  // (given up on as it was hashed: not sent, nor counted in flight)
    }
    if (!cs.conn || cs.conn->closed()) {
        if (machine_.requeue(ref)) {
            file(ref.file)->read_again();
        }
        pump_all();  // this connection is gone: another one takes the chunk
        return;
    }
    wire::Header h;
    wire::Chunk* c = h.mutable_chunk();
    c->set_file_id(ref.file.value);
    c->set_index(ref.index.value);
    c->set_raw_len(ref.length);
    // The receiver's file there is this chunk already (a file only touched here): no bytes
    // go, and they count as matched there, as a delta's copies do.
    const bool same = job.same_as == job.digest;
    c->set_codec(same                  ? wire::CODEC_SAME
                 : job.delta           ? wire::CODEC_DELTA
                 : job.packed.size > 0 ? wire::CODEC_ZSTD
                                       : wire::CODEC_RAW);
    c->set_hash_lo(job.digest.lo);
    c->set_hash_hi(job.digest.hi);
    std::uint32_t wire_len = same ? 0 : job.packed.size > 0 ? static_cast<std::uint32_t>(job.packed.size) : ref.length;
    std::uint32_t copied = same ? ref.length : job.delta ? static_cast<std::uint32_t>(copied_bytes(job.ops)) : 0;
    stats_clock::time_point now = stats_clock::now();
    if (cs.inflight.empty()) {
        cs.busy_since = now;
    }
    cs.inflight.emplace(chunk_key(ref.file, ref.index), inflight_chunk{now, wire_len, copied, ref.length});
    rate_.tokens -= wire_len;  // --bwlimit
    cs.inflight_bytes += ref.length;
    file_events_.started(ctx_.events.file, ref.file, machine_.entry(ref.file), machine_.action(ref.file));
    cs.conn->send(h, same ? pooled_buffer{} : std::move(job.buf), wire_len);
}

void send_session::adjust_window(conn_state& cs, std::uint64_t acked) {
    // Like TCP's slow start one level up: while the window, and not the socket, is what
    // holds a connection back, each acked byte lets one more in (the window doubles per
    // round trip) until the kernel's buffers or the chunk cap take over. When something
    // else holds it back, the window shrinks to twice what is actually outstanding, so a
    // window grown on a fast stretch does not let a connection pile up data later (a
    // receiver whose disk fell behind, say).
    std::uint64_t outstanding = cs.inflight_bytes + cs.reading_bytes + acked;
    if (cs.window_bound) {
        cs.window_bound = false;
        std::uint64_t cap = std::max(std::uint64_t{options_.window_chunks} * chunk_size, options_.window_bytes);
        cs.window_bytes = std::min(cap, cs.window_bytes + acked);
    } else {
        cs.window_bytes = std::max(options_.window_bytes, std::min(cs.window_bytes, 2 * outstanding));
    }
}

void send_session::sample_wire_rate() {
    auto now = stats_clock::now();
    auto since = now - wire_sample_.at;
    if (!scope_ || since < std::chrono::milliseconds(250)) {
        return;
    }
    std::uint64_t sent = scope_->counters().wire_sent;
    double busy = link_busy(wire_sample_.at, now);
    if (wire_sample_.at != stats_clock::time_point{}) {
        compression_.on_wire_rate(
            static_cast<double>(sent - wire_sample_.wire_sent) / std::chrono::duration<double>(since).count(), busy);
    }
    wire_sample_ = {now, sent};
}

double send_session::link_busy(stats_clock::time_point from, stats_clock::time_point now) {
    // --bwlimit holding reads back is the link pushing back.
    stats_clock::duration busiest = std::exchange(rate_.held, {});
    for (auto& cs : conns_) {
        stats_clock::duration pushed = std::exchange(cs.pushed_back, {});
        if (cs.pushed_back_since != stats_clock::time_point{}) {
            pushed += now - std::max(cs.pushed_back_since, from);
            cs.pushed_back_since = now;
        }
        busiest = std::max(busiest, pushed);
    }
    return std::min(std::chrono::duration<double>(busiest) / std::chrono::duration<double>(now - from), 1.0);
}

void send_session::requeue_inflight(conn_state& cs) {
    // Each goes to the front of the queue: last first, so that they come out in order (and
    // chunks of copies alone make runs again).
    std::vector<std::pair<std::uint64_t, std::uint32_t>> chunks;
    chunks.reserve(cs.inflight.size());
    for (const auto& [key, chunk] : cs.inflight) {
        chunks.emplace_back(key, chunk.raw_len);
    }
    std::sort(chunks.begin(), chunks.end(), std::greater<>());
    for (const auto& [key, raw_len] : chunks) {
        file_id f = chunk_key_file(key);
        chunk_index i = chunk_key_index(key);
        chunk_ref ref;
        ref.file = f;
        ref.index = i;
        ref.offset = std::uint64_t{i.value} * chunk_size;
        ref.length = raw_len;
        if (machine_.requeue(ref)) {
            file(f)->read_again();
        }
    }
    cs.inflight.clear();
    cs.inflight_bytes = 0;
}

void send_session::on_closed(connection& c, std::error_code ec) {
    conn_state& cs = conns_[c.index];
    if (finished_) {
        return;
    }
    if (c.index == 0) {
        if (redial_first_ && !offers_sent_ && ec != transport_errc::peer_refused &&
            ec != transport_errc::plaintext_mismatch) {
            // The connection dialed while the sources were scanned was closed by the
            // receiver before its Hello came (a short handshake timeout there, or an
            // eviction): dialed again, once.
            redial_first_ = false;
            open_connection(0);
            return;
        }
        if (ec == transport_errc::peer_refused) {
            fail(exit_code::auth,
                 "receiver refused this node: its ID " + format_node_id(ctx_.id) +
                     " is not trusted there (run `ferry trust " + format_node_id(ctx_.id) +
                     "` on the receiver; a `ferry receive` also takes --accept-from)",
                 false);
        } else if (ec == transport_errc::plaintext_mismatch) {
            fail(exit_code::transfer_failed, ec.message(), false);
        } else {
            std::string why = "connection to receiver lost: " + (ec ? ec.message() : std::string("closed"));
            if (ctx_.config.plaintext && !offers_sent_) {
                // A TLS receiver closes on the first plaintext frame, without a word.
                why += " before it answered (this side uses --plaintext: does the receiver?)";
            }
            fail(exit_code::transfer_failed, why, false, true);
        }
        return;
    }
    if (!cs.refused) {
        ctx_.log("connection " + std::to_string(c.index) + " lost (" + (ec ? ec.message() : "closed") +
                 "); its unconfirmed chunks go to the others", log_level::warn);
        if (cs.lost_at == stats_clock::time_point{}) {
            cs.lost_at = stats_clock::now();
        }
    }
    requeue_inflight(cs);
    pump_all();
    if (!cs.refused) {
        schedule_reopen(c.index);
    }
}

void send_session::check_stalls() {
    if (finished_) {
        return;
    }
    auto now = stats_clock::now();
    if (options_.idle_timeout.count() > 0) {
        stats_clock::time_point heard{};
        for (const auto& cs : conns_) {
            heard = std::max(heard, cs.heard);
        }
        // Until every Offer batch is answered the receiver may be busy checking (hashing,
        // with --checksum) what it has: up to an hour.
        bool checking = !machine_.all_accepted() && now - start_ < std::chrono::hours(1);
        if (!checking && now - heard >= options_.idle_timeout) {
            fail(exit_code::transfer_failed,
                 "nothing from the receiver for " + seconds_text(options_.idle_timeout) + " s (--idle-timeout)");
            return;
        }
    }
    // A scan that holds its entries back (one big folder walked whole before the next
    // part) still sends an Offer, empty if need be, every few seconds: the receiver's idle
    // timeout counts the sender's silence.
    if (options_.feed && offers_sent_ && machine_.offers_sent() == machine_.offer_count() &&
        now - offer_sent_at_ >= scan_keepalive) {
        machine_.flush();
        send_offers();
    }
    for (auto& cs : conns_) {
        if (cs.conn && !cs.conn->closed() && !cs.inflight.empty() &&
            now - std::max(cs.heard, cs.busy_since) >= options_.stall_timeout) {
            ctx_.log("connection " + std::to_string(cs.conn->index) + " stalled: nothing from the receiver for " +
                     seconds_text(options_.stall_timeout) + " s with chunks in flight", log_level::warn);
            cs.conn->close(std::make_error_code(std::errc::timed_out));
        }
    }
    // A quarter of the timeout between checks: a stall is found within 1.25 timeouts.
    auto every = options_.stall_timeout / 4;
    if (options_.idle_timeout.count() > 0) {
        every = std::min(every, options_.idle_timeout / 4);
    }
    if (options_.feed) {
        every = std::min<std::chrono::milliseconds>(every, scan_keepalive);
    }
    stall_timer_->expires_after(every);
    stall_timer_->async_wait([weak = weak_from_this()](std::error_code ec) {
        if (auto self = weak.lock(); self && !ec) {
            self->check_stalls();
        }
    });
}

void send_session::schedule_reopen(std::uint32_t index) {
    conn_state& cs = conns_[index];
    if (finished_ || cs.refused || accepted_) {  // a pull's receiver reopens its own
        return;
    }
    if (cs.failures >= max_reopen_attempts) {
        ctx_.log("giving up on connection " + std::to_string(index) + " after " + std::to_string(cs.failures) +
                 " attempts; the transfer goes on over the others", log_level::warn);
        return;
    }
    auto delay = backoff_delay(cs.failures, std::chrono::milliseconds(100), std::chrono::seconds(5));
    ++cs.failures;
    if (!cs.reopen) {
        cs.reopen = std::make_shared<asio::steady_timer>(ctx_.io);
    }
    cs.reopen->expires_after(delay);
    cs.reopen->async_wait([weak = weak_from_this(), index](std::error_code ec) {
        auto self = weak.lock();
        if (ec || !self || self->finished_) {
            return;
        }
        self->open_connection(index);
    });
}

transfer_progress send_session::progress() const {
    transfer_progress p;
    p.direction = "send";
    p.session_id = session_id_;
    p.peer_id = peer_id_;
    p.peer_address = peer_address_;
    p.total_bytes = machine_.total_bytes();
    p.skipped_bytes = machine_.skipped_bytes() + delta_copied_;
    p.files_total = regular_files_;
    p.files_done = machine_.files_done() - machine_.dirs_done() - machine_.not_made_dirs();
    p.elapsed_s = seconds_since(start_);
    p.offered = offers_sent_ && machine_.is_complete();
    if (scope_) {
        auto now = stats_clock::now();
        p.confirmed_bytes = scope_->counters().payload_sent;
        p.wire_sent = scope_->counters().wire_sent;
        p.wire_received = scope_->counters().wire_received;
        p.rate = scope_->payload_rate(now);
    }
    for (const auto& cs : conns_) {
        p.connections += (cs.conn && !cs.conn->closed()) ? 1 : 0;
        p.inflight_bytes += cs.inflight_bytes;
    }
    return p;
}

void send_session::fail(exit_code code, const std::string& message, bool tell_peer, bool retryable) {
    if (finished_) {
        return;
    }
    retryable_ = retryable;
    if (tell_peer && conns_[0].conn && !conns_[0].conn->closed()) {
        wire::Header h;
        h.mutable_error()->set_code(code == exit_code::local_io ? wire::ERROR_IO : wire::ERROR_PROTOCOL);
        h.mutable_error()->set_message(message);
        conns_[0].conn->send(h);
    }
    finish(false, code, message);
}

void send_session::cancel(const std::string& why) {
    // The node stops (or the send is cancelled), which is no fault of the receiver's: one
    // pulling from this node takes CANCELLED as a reason to come back (--retry-for).
    if (!finished_ && conns_[0].conn && !conns_[0].conn->closed()) {
        wire::Header h;
        h.mutable_error()->set_code(wire::ERROR_CANCELLED);
        h.mutable_error()->set_message(why);
        conns_[0].conn->send(h);
    }
    fail(exit_code::transfer_failed, why, false);
}

void send_session::finish(bool ok, exit_code code, const std::string& error) {
    if (finished_) {
        return;
    }
    if (options_.feed) {
        options_.feed->cancel();  // the scan stops: nothing more is sent
        options_.feed.reset();
    }
    report_maybe_renamed();  // (a scan that ended early: as copies)
    transfer_report r;
    r.session_id = session_id_;
    r.ok = ok;
    r.code = code;
    r.error = error;
    r.connected = offers_sent_;
    r.retryable = !ok && retryable_;
    r.peer_id = peer_id_;
    r.peer_address = peer_address_;
    r.skipped_files = machine_.skipped_files();
    r.skipped_bytes = machine_.skipped_bytes();
    r.resumed_bytes = machine_.kept_bytes();
    r.files = machine_.files_done() - machine_.dirs_done() - r.skipped_files - machine_.aborted_files() -
              machine_.not_made_dirs() - machine_.not_made_files();
    r.dirs = machine_.dirs_done();
    r.total_files = machine_.total_files();
    r.files_total = regular_files_;
    r.payload_bytes = machine_.confirmed_bytes();
    r.total_bytes = machine_.total_bytes();
    r.elapsed_s = seconds_since(start_);
    // Every connection's bytes, open or closed, handshakes included (stats scope; none
    // before the first connection).
    r.wire_sent = scope_ ? scope_->counters().wire_sent : 0;
    r.wire_received = scope_ ? scope_->counters().wire_received : 0;
    std::uint32_t used = 0;
    for (const auto& cs : conns_) {
        // (One the receiver refused carried nothing it kept: what went on it went again.)
        used += (cs.conn && !cs.refused && cs.conn->counters().payload_frames_sent > 0) ? 1 : 0;
    }
    r.connections = ok ? std::max<std::uint32_t>(used, 1) : used;
    if (ok && scope_) {
        // The receiver's TransferResult confirms every byte; ChunkAcks still on their way
        // on other connections would have said the same about the chunks still in flight.
        std::uint64_t chunks = 0;
        std::uint64_t saved = 0;
        for (auto& cs : conns_) {
            chunks += cs.inflight.size();
            for (const auto& [key, chunk] : cs.inflight) {
                saved += chunk.copied > 0 ? 0 : chunk.raw_len - chunk.wire_len;
                delta_copied_ += chunk.copied;
            }
            cs.inflight.clear();
            cs.inflight_bytes = 0;
        }
        delta_copied_ += std::exchange(copied_after_result_, 0);
        r.delta_copied = delta_copied_;
        const std::uint64_t travelled = r.travelled_bytes();
        if (scope_->counters().payload_sent < travelled) {
            scope_->add_payload_sent(travelled - scope_->counters().payload_sent, chunks, stats_clock::now(), saved);
        }
    }
    r.compression_saved = scope_ ? scope_->counters().compression_saved : 0;
    r.delta_copied = delta_copied_;
    r.given_up = given_up_;
    r.ttfb_s = ttfb_s_;
    r.deleted_files = deleted_files_;
    r.deleted_dirs = deleted_dirs_;
    r.peer_cancelled = !ok && peer_cancelled_;
    ++(ok ? ctx_.stats.transfers_ok : r.peer_cancelled ? ctx_.stats.transfers_cancelled : ctx_.stats.transfers_failed);
    finished_ = true;
    cancelled_->store(true);  // work still queued for this session stops early
    if (stall_timer_) {
        stall_timer_->cancel();
    }
    if (widen_timer_) {
        widen_timer_->cancel();
    }
    if (rate_.timer) {
        rate_.timer->cancel();
    }
    for (auto& cs : conns_) {
        if (cs.reopen) {
            cs.reopen->cancel();
        }
        if (cs.conn && !cs.conn->closed()) {
            if (!ok) {
                // Chunks not begun are of no use now, and the Error frame saying why
                // waits behind them: over a slow link, past the process's exit.
                cs.conn->drop_unsent_chunks();
            }
            cs.conn->close_after_flush();
        }
    }
    if (done_) {
        auto done = std::move(done_);
        done(r);
    }
}

}  // namespace ferry
