#include "node/node.hpp"

#include "node/resume.hpp"

#include <openssl/rand.h>
#include <algorithm>
#include <fcntl.h>
#include <sys/resource.h>
#include <unistd.h>

#include "node/dest_tree.hpp"
#include "node/identity.hpp"
#include "transport/accept_loop.hpp"
#include "transport/identity.hpp"

namespace ferry {

namespace {


// Chunk buffers per node: enough for 16 connections' read-ahead (1 MiB each, plus two
// queued chunks) and a receiver's write-behind, and a hard cap on the memory of chunk
// data in flight: 40 MiB, so that a receiver whose page-cache writes stall stays under
// 64 MiB of RSS (with 256 buffers a --plaintext receiver reached 78 MiB).
constexpr std::size_t pool_buffers = 160;

}  // namespace

void reserve_descriptors() {
    struct rlimit rl {};
    if (::getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        ::setrlimit(RLIMIT_NOFILE, &rl);
    }
    // A descriptor far up grows the table once; the slot is given back at once, the table stays.
    int fd = ::open("/dev/null", O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        return;
    }
    if (::getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur > 1) {
        rlim_t want = static_cast<rlim_t>(unnamed_file::max_open()) + 256;
        int high = ::fcntl(fd, F_DUPFD_CLOEXEC, static_cast<int>(std::min(want, rl.rlim_cur - 1)));
        if (high >= 0) {
            ::close(high);
        }
    }
    ::close(fd);
}

node::node(asio::io_context& io, node_config config, node_events events) : sweep_timer_(io) {
    reserve_descriptors();
    identity ident = load_or_create_identity(config.state_dir);
    const peer_manager::trust_stamp trust_seen = peer_manager::trust_stamp_of(config.state_dir / trust_store::file_name);
    trust_store trust = trust_store::load(config.state_dir, config.config_peers);
    std::size_t workers = config.workers;
    ctx_.reset(new node_context{io, std::move(config), std::move(events), ident.id, std::move(trust), nullptr, nullptr,
                                worker_pool(workers), buffer_pool::make(pool_buffers, chunk_size), node_stats{}, known_partials{}, std::make_shared<partial_claims>(), {}});
    key_pem_ = ident.creds.key_pem;
    if (!ctx_->config.plaintext) {
        ctx_->tls_client = std::make_unique<tls_context>(ident.creds, tls_role::client);
        ctx_->tls_server = std::make_unique<tls_context>(ident.creds, tls_role::server);
    }
    peers_ = std::make_unique<peer_manager>(*ctx_, trust_seen);
}

node::~node() {
    stop("node shutting down");
}

std::string node::listen_address() const {
    std::vector<std::string> all = listen_addresses();
    return all.empty() ? std::string() : all.front();
}

std::vector<std::string> node::listen_addresses() const {
    std::vector<std::string> out;
    for (const auto& l : listeners_) {
        std::error_code ec;
        if (auto ep = l->acceptor.local_endpoint(ec); !ec) {
            out.push_back(format_endpoint(ep));
        }
    }
    return out;
}

std::error_code node::listen(std::string& error) {
    // Every address is bound before any accepts: one that fails leaves none open.
    for (const std::string& address : ctx_->config.listen) {
        auto l = std::make_unique<listener>(ctx_->io);
        if (std::error_code ec = open_listener(l->acceptor, address, error)) {
            listeners_.clear();
            return ec;
        }
        listeners_.push_back(std::move(l));
    }
    if (listeners_.empty()) {
        error = "no address to listen on";
        return std::make_error_code(std::errc::invalid_argument);
    }
    for (auto& l : listeners_) {
        if (ctx_->events.listening) {
            std::error_code ec;
            ctx_->events.listening(format_endpoint(l->acceptor.local_endpoint(ec)), ctx_->id);
        }
        accept_next(*l);
    }
    if (!ctx_->config.one_shot && ctx_->config.partial_max_age.count() > 0 && !ctx_->config.inbox.empty()) {
        sweep_partials();
    }
    if (ctx_->config.discovery.enabled && !ctx_->config.plaintext) {  // a plaintext node has no ID to announce
        discovery_ = std::make_unique<discovery>(
            ctx_->io, ctx_->config.discovery, key_pem_, [this] { return listen_addresses(); },
            [this](const std::string& line) { ctx_->log(line, log_level::warn); },
            [this](const discovered_peer& p, bool present) {
                if (ctx_->events.discovered) {
                    ctx_->events.discovered(p, present);
                }
            });
        std::string why;
        if (!discovery_->start(why)) {
            ctx_->log("LAN discovery is off: " + why, log_level::warn);
            discovery_.reset();
        }
    }
    return {};
}

void node::sweep_partials() {
    // The inbox, and the writable shares (syncs leave partial files there too).
    std::vector<std::filesystem::path> roots{ctx_->config.inbox};
    for (const share_config& share : ctx_->config.shares) {
        if (share.writable) {
            roots.push_back(share.dir);
        }
    }
    auto age = ctx_->config.partial_max_age;
    ctx_->workers.post([ctx = ctx_.get(), roots, age] {
        sweep_result r;
        for (const std::filesystem::path& root : roots) {
            sweep_result one = sweep_abandoned(root, age);
            r.files += one.files;
            r.bytes += one.bytes;
            for (std::string& path : one.removed) {
                if (r.removed.size() < 5) {
                    r.removed.push_back(root == roots.front() ? std::move(path) : (root / path).string());
                }
            }
        }
        if (r.files == 0) {
            return;
        }
        asio::post(ctx->io, [ctx, r, age] {
            long long secs = age.count();
            std::string for_ = secs % 86400 == 0   ? std::to_string(secs / 86400) + " day(s)"
                               : secs % 3600 == 0 ? std::to_string(secs / 3600) + " hour(s)"
                                                  : std::to_string(secs) + " s";
            std::string line = "removed " + std::to_string(r.files) + " abandoned partial file(s) (" +
                               std::to_string(r.bytes) + " bytes) not written for " + for_ +
                               " or more (--partial-max-age): ";
            for (std::size_t i = 0; i < r.removed.size(); ++i) {
                line += (i > 0 ? ", " : "") + r.removed[i];
            }
            if (r.files > r.removed.size()) {
                line += ", ...";
            }
            ctx->log(line);
        });
    });
    sweep_timer_.expires_after(std::min<std::chrono::seconds>(age, std::chrono::hours(24)));
    sweep_timer_.async_wait([this](std::error_code ec) {
        if (!ec && !stopped_) {
            sweep_partials();
        }
    });
}

void node::accept_next(listener& l) {
    accept_loop(
        l.acceptor, l.retry,
        [this](asio::ip::tcp::socket socket) {
            if (!stopped_) {
                peers_->on_accepted(std::move(socket));
            }
        },
        [this](std::error_code ec) { ctx_->log("accept failed: " + ec.message() + " (retrying)", log_level::warn); });
}

void node::send(source_tree sources, send_target target, send_options options,
                std::function<void(const transfer_report&)> done) {
    auto s = std::make_shared<send_session>(*ctx_, std::move(sources), std::move(target), options, std::move(done));
    std::erase_if(sends_, [](const auto& old) { return old->finished(); });
    sends_.push_back(s);
    s->start();
}

std::vector<std::string> node::reload(const node_config& fresh, trust_store trust) {
    node_config& now = ctx_->config;
    std::vector<std::string> restart;
    auto differs = [&](bool changed, const char* name) {
        if (changed) {
            restart.emplace_back(name);
        }
    };
    differs(fresh.listen != now.listen, "listen");
    differs(fresh.state_dir != now.state_dir, "state");
    differs(fresh.inbox != now.inbox, "inbox");
    differs(fresh.plaintext != now.plaintext, "plaintext");
    differs(fresh.overwrite != now.overwrite, "overwrite");
    differs(fresh.fsync_each != now.fsync_each, "fsync_each");
    differs(fresh.partial_max_age != now.partial_max_age, "partial_max_age");
    differs(fresh.tuning.congestion != now.tuning.congestion, "congestion");
    differs(fresh.tuning.notsent_lowat != now.tuning.notsent_lowat || fresh.tuning.sndbuf != now.tuning.sndbuf ||
                fresh.tuning.rcvbuf != now.tuning.rcvbuf || fresh.tuning.user_timeout_ms != now.tuning.user_timeout_ms,
            "tuning");
    const discovery_config& a = fresh.discovery;
    const discovery_config& b = now.discovery;
    differs(a.enabled != b.enabled || a.name != b.name || a.group4 != b.group4 || a.group6 != b.group6 ||
                a.port != b.port || a.interval != b.interval || a.timeout != b.timeout,
            "discovery");
    // Read on the loop thread only (a share's folder is copied out when a transfer opens
    // it), so they are replaced here whole.
    now.shares = fresh.shares;
    now.limits = fresh.limits;
    now.policy = fresh.policy;
    now.accept_from = fresh.accept_from;
    now.config_peers = fresh.config_peers;
    ctx_->trust = std::move(trust);
    // The list just read is the one the file holds now: not read again at the next
    // connection (which told of a change that was not one).
    peers_->trust_read_now();
    return restart;
}

void node::cancel_pull(const std::string& session_id, const std::string& why) {
    for (auto& s : pulls_) {
        if (s->session_id() == session_id) {
            if (!s->reported()) {
                s->stop(why);
            }
            return;
        }
    }
    cancelled_dials_.push_back(session_id);  // a pull whose session does not exist yet (or ended)
}

std::string node::pull(pull_spec spec, send_target target) {
    std::string session_id(16, '\0');
    RAND_bytes(reinterpret_cast<unsigned char*>(session_id.data()), static_cast<int>(session_id.size()));
    std::uint32_t count = std::clamp<std::uint32_t>(spec.connections, 1, max_connections);
    auto hello_for = [session_id, count](std::uint32_t index) {
        wire::Hello h;
        h.set_session_id(session_id);
        h.set_conn_index(index);
        h.set_conn_count(count);
        return h;
    };
    dial_peer(*ctx_, target, [this, spec = std::move(spec), target, session_id, hello_for](
                                 std::error_code ec, std::unique_ptr<byte_stream> stream) mutable {
        bool cancelled = std::erase(cancelled_dials_, session_id) > 0;
        if (ec || stopped_ || cancelled) {
            transfer_report r;
            r.session_id = session_id;
            std::tie(r.code, r.error) = ec ? dial_failure(ec, target, "peer")
                                           : std::pair(exit_code::transfer_failed,
                                                       "cannot connect to " + join_host_port(target.host, target.port) +
                                                           (cancelled ? ": cancelled" : ": node stopped"));
            // As for a push: a peer not answering now may answer later (a restarted node),
            // so a run that reached it once retries for --retry-for; a refused ID does not.
            r.retryable = ec && r.code != exit_code::auth;
            spec.done(r);
            return;
        }
        auto c = ctx_->new_connection(std::move(stream));
        std::string peer = c->stream().peer_id();
        std::string key = peer.empty() ? c->stream().remote() : peer;
        warn_unverified(*ctx_, c->stream().is_tls(), target.expected_id, peer, "peer", "ferry://ID@HOST");
        // Dropped once every connection closed (not when it reports: they may still call in).
        auto s = std::make_shared<receive_session>(*ctx_, peer, key, session_id, [this](receive_session& done) {
            std::erase_if(pulls_, [&](const auto& p) { return p.get() == &done; });
        });
        spec.open = [this, weak = std::weak_ptr<receive_session>(s), target, hello_for](std::uint32_t index) {
            dial_peer(*ctx_, target, [this, weak, target, index, hello_for](std::error_code ec,
                                                                            std::unique_ptr<byte_stream> stream) {
                auto s = weak.lock();
                if (!s || s->reported()) {
                    return;
                }
                if (ec) {
                    ctx_->log("connection " + std::to_string(index) + " to " + join_host_port(target.host, target.port) +
                              " failed: " + ec.message() + "; continuing with the others", log_level::warn);
                    s->data_connection_lost(index);
                    return;
                }
                auto c = ctx_->new_connection(std::move(stream));
                s->add_connection(c, hello_for(index));
                c->start(s.get());
            }, false);
        };
        s->set_pull(std::move(spec));
        pulls_.push_back(s);
        s->add_connection(c, hello_for(0));
        c->start(s.get());
    }, true);
    return session_id;
}

void node::list(list_spec spec, send_target target) {
    std::erase_if(lists_, [](const auto& l) { return l->done(); });  // the connection calls in until it closed
    if (stopped_) {
        list_report r;
        r.error = "node stopped";
        spec.done(r);
        return;
    }
    auto l = std::make_shared<list_client>(*ctx_, std::move(spec), std::move(target));
    lists_.push_back(l);
    l->start();
}

std::vector<node::live_session> node::live_sessions() const {
    std::vector<live_session> out;
    for (const auto& s : sends_) {
        if (!s->finished()) {
            out.push_back({s->peer_key(), s->connections(), s->progress()});
        }
    }
    for (const auto& s : pulls_) {
        if (!s->reported()) {
            out.push_back({s->peer_key(), s->connections(), s->progress()});
        }
    }
    for (const auto& [id, s] : peers_->pull_senders()) {
        if (!s->finished()) {
            out.push_back({s->peer_key(), s->connections(), s->progress()});
        }
    }
    for (const auto& [id, s] : peers_->sessions()) {
        out.push_back({s->peer_key(), s->connections(),
                       s->reported() ? std::nullopt : std::optional<transfer_progress>(s->progress())});
    }
    return out;
}

std::vector<transfer_progress> node::transfers() const {
    std::vector<transfer_progress> out;
    for (live_session& s : live_sessions()) {
        if (s.running) {
            out.push_back(std::move(*s.running));
        }
    }
    return out;
}

std::size_t node::open_connections() const {
    return std::count_if(ctx_->connections.begin(), ctx_->connections.end(), [](const std::weak_ptr<connection>& w) {
        auto c = w.lock();
        return c && !c->closed();
    });
}

void node::set_first_dial_timeout(std::chrono::milliseconds timeout) {
    ctx_->first_dial_timeout = timeout;
}

void node::stop(const std::string& why) {
    if (stopped_) {
        return;
    }
    stopped_ = true;
    sweep_timer_.cancel();
    for (auto& l : listeners_) {
        std::error_code ignored;
        l->acceptor.close(ignored);
        l->retry.cancel();
    }
    peers_->stop(why);
    if (discovery_) {
        discovery_->stop();  // says it leaves
    }
    for (auto& s : sends_) {
        s->cancel(why);
    }
    for (auto& s : pulls_) {
        s->stop(why);
    }
    for (auto& l : lists_) {
        l->cancel(why);
    }
}

}  // namespace ferry
