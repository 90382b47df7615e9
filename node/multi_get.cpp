#include "node/multi_get.hpp"

#include <fcntl.h>
#include <openssl/rand.h>
#include <sys/file.h>
#include <sys/stat.h>

#include <algorithm>
#include <cstdio>
#include <fstream>
#include <tuple>

#include "node/dest_tree.hpp"
#include "node/file_io.hpp"
#include "node/node.hpp"
#include "protocol/le_bytes.hpp"
#include "protocol/path.hpp"

namespace ferry {

namespace {

constexpr std::uint64_t MiB = 1024 * 1024;
// Ranges of 8-64 MiB: about 16 a source, so that a fast one can take many more than a
// slow one, and each pull's setup (connections, TLS, slow start) is small beside it.
constexpr std::uint64_t min_range = 8 * MiB;
constexpr std::uint64_t max_range = 64 * MiB;

// A small file of ours in the parts folder: its bytes ("" when absent or unreadable).
std::string read_text(const std::filesystem::path& p) {
    std::ifstream in(p, std::ios::binary);
    return std::string(std::istreambuf_iterator<char>(in), {});
}

std::error_code write_text(const std::filesystem::path& p, const std::string& text) {
    std::ofstream o(p, std::ios::binary | std::ios::trunc);
    o << text;
    o.close();
    return o ? std::error_code{} : std::error_code(errno ? errno : EIO, std::system_category());
}

}  // namespace

multi_get::multi_get(node& n, multi_get_spec spec) : node_(n), spec_(std::move(spec)), session_id_(16, '\0') {
    RAND_bytes(reinterpret_cast<unsigned char*>(session_id_.data()), static_cast<int>(session_id_.size()));
    report_.session_id = session_id_;
    for (const multi_get_source& s : spec_.sources) {
        source_state st;
        st.given = s;
        st.figures.label = s.label;
        sources_.push_back(std::move(st));
    }
}

std::string multi_get::range_name(std::size_t r) const {
    char name[32];
    std::snprintf(name, sizeof name, "r%06zu", r);
    return name;
}

std::filesystem::path multi_get::parts_dir() const { return spec_.folder / ("." + spec_.name + ".ferry-parts"); }

void multi_get::start() {
    start_ = std::chrono::steady_clock::now();
    for (std::size_t i = 0; i < sources_.size(); ++i) {
        list_file(i, sources_[i].given.found, [self = shared_from_this(), i](const list_report& r,
                                                                             std::optional<entry_info> e) {
            self->on_listed(i, r.ok, r.code, r.error, std::move(e), r.peer_id);
        });
    }
}

void multi_get::list_file(std::size_t i, bool checksum,
                          std::function<void(const list_report&, std::optional<entry_info>)> done) {
    auto entry = std::make_shared<std::optional<entry_info>>();
    list_spec ls;
    ls.request.set_share(spec_.share);
    ls.request.set_path(spec_.path);
    ls.request.set_checksum(checksum);
    ls.entries = [entry](std::vector<entry_info> batch) {
        if (!*entry && !batch.empty()) {
            *entry = std::move(batch.front());
        }
    };
    ls.done = [self = shared_from_this(), i, entry, done = std::move(done)](const list_report& r) {
        // The listing's bytes are the get's too (an unchanged file's are all it moves).
        self->sources_[i].figures.wire_received += r.wire_received;
        self->report_.wire_received += r.wire_received;
        self->report_.wire_sent += r.wire_sent;
        done(r, std::move(*entry));
    };
    node_.list(std::move(ls), sources_[i].given.target);
}

void multi_get::leave_out(source_state& s, std::string why) {
    s.figures.note = std::move(why);
    if (spec_.note) {
        spec_.note("not getting from " + s.given.label + ": " + s.figures.note);
    }
}

void multi_get::cancel_runs(const std::function<bool(const source_state&, const run&)>& which, const std::string& why) {
    for (source_state& s : sources_) {
        for (run& x : s.runs) {
            if (!x.cancelled && which(s, x)) {
                x.cancelled = true;
                node_.cancel_pull(x.session_id, why);
            }
        }
    }
}

void multi_get::on_listed(std::size_t i, bool ok, exit_code code, const std::string& error,
                          std::optional<entry_info> e, const std::string& peer_id) {
    if (finished_) {
        return;
    }
    source_state& s = sources_[i];
    s.listed = true;
    s.figures.peer_id = peer_id;
    if (ok && (!e || !e->is_file())) {
        ok = false;
        code = exit_code::usage;
    }
    if (!ok) {
        leave_out(s, !error.empty() ? error
                     : e            ? "\"" + spec_.path + "\" is not a regular file there (several sources download one file)"
                                    : "no listing");
        last_error_ = s.given.label + ": " + s.figures.note;
        s.code = code;
        take_listings();
        return;
    }
    s.listing = std::move(e);
    take_listings();
}

void multi_get::take_listings() {
    // The first source named that lists the file sets the version (size and mtime): the
    // ones after it are taken as their listings come, once it is known.
    for (std::size_t i = 0; i < sources_.size(); ++i) {
        source_state& s = sources_[i];
        if (!file_ && !s.listed) {
            return;  // an earlier source may still set it
        }
        if (!s.listing || s.index || !s.figures.note.empty()) {
            continue;  // failed, or taken already
        }
        const entry_info& e = *s.listing;
        if (!file_) {
            file_ = e;
            if (s.given.found && e.digest) {
                digest_ = e.digest;  // its listing read it
                s.digest_asked = true;
            }
            schedule_.emplace(e.size, spec_.range_length > 0 ? spec_.range_length
                                                             : range_schedule::pick_length(e.size, sources_.size(),
                                                                                           chunk_size, min_range,
                                                                                           max_range));
            digest_from_ = i;
            prepare();
        } else if (e.size != file_->size || e.mtime_ns != file_->mtime_ns) {
            leave_out(s, "it has another version of the file (" + std::to_string(e.size) + " bytes, another mtime) than " +
                             sources_[digest_from_].given.label);
            continue;
        } else if (s.given.found) {
            if (!digest_) {
                continue;  // taken once the first source's digest is known
            }
            if (!e.digest || !(*e.digest == *digest_)) {
                leave_out(s, "it holds other bytes under the same size and mtime (another digest)");
                continue;
            }
        }
        s.index = schedule_->add_source();
        s.figures.used = true;
    }
    if (file_) {
        ask_digest();
    }
    fill();
    check_end();
}

void multi_get::ask_digest() {
    if (digest_ || asking_digest_ || finished_) {
        return;
    }
    // The first source taking part not asked yet (the first named, unless it failed).
    std::optional<std::size_t> pick;
    for (std::size_t k = 0; k < sources_.size() && !pick; ++k) {
        if (sources_[k].index && !sources_[k].digest_asked && !schedule_->dropped(*sources_[k].index)) {
            pick = k;
        }
    }
    if (!pick) {
        return;  // check_end fails the get once no listing can bring another candidate
    }
    std::size_t i = *pick;
    sources_[i].digest_asked = true;
    digest_from_ = i;
    asking_digest_ = true;
    list_file(i, true, [self = shared_from_this(), i](const list_report& r, std::optional<entry_info> e) {
        if (self->finished_) {
            return;
        }
        self->asking_digest_ = false;
        // Read from the version the ranges come from, or worth nothing.
        bool same = e && e->digest && e->size == self->file_->size && e->mtime_ns == self->file_->mtime_ns;
        if (r.ok && same) {
            self->digest_ = *e->digest;
            self->take_listings();  // sources found on the LAN can join now
            return;
        }
        if (self->spec_.note) {
            self->spec_.note("could not read the file digest at " + self->sources_[i].given.label + ": " +
                             (!r.ok ? r.error
                              : e && e->digest ? std::string("the file changed there since it was listed")
                                               : std::string("none given")) +
                             "; asking another source");
        }
        self->ask_digest();
        self->check_end();
    });
}

void multi_get::prepare() {
    struct result {
        std::string error;
        exit_code code = exit_code::local_io;
        bool unchanged = false;
        std::vector<std::uint8_t> staged;  // per range: 0 missing, 1 downloaded (to copy), 2 copied
        std::vector<digest128> digests;    // of the copied ranges' chunks
        std::shared_ptr<unique_fd> parts;  // the parts folder, locked
        std::shared_ptr<unique_fd> file;   // the file being made in it
    };
    auto out = std::make_shared<result>();
    std::vector<std::tuple<std::string, std::uint64_t, std::uint64_t>> ranges;
    for (std::size_t r = 0; r < schedule_->ranges(); ++r) {
        ranges.emplace_back(range_name(r), schedule_->offset(r), schedule_->length(r));
    }
    node_.context().workers.post([self = shared_from_this(), out, io = &node_.context().io, stop = stop_,
                                  ranges = std::move(ranges), file = *file_] {
        try {
            // As a get from one source: a file or symlink here is another version, and
            // replaced; a folder, FIFO, socket or device is not.
            dest_tree dest(self->spec_.folder);
            dest.set_mirror(true);
            dest.set_keep_kinds(true);
            bool identical = false;
            if (std::error_code ec = dest.check_file(self->spec_.name, true, file.size, file.mtime_ns, identical, false)) {
                const bool kind = ec == dest_errc::is_dir || ec == dest_errc::special;
                out->code = kind ? exit_code::usage : exit_code::local_io;
                throw std::runtime_error(printable(self->spec_.name) + ": " +
                                         (ec == dest_errc::is_dir    ? "a folder here, and a file at the peer"
                                          : ec == dest_errc::special ? "a FIFO, socket or device here, and a file at the "
                                                                       "peer (a get replaces nothing: move it away first)"
                                                                     : ec.message()));
            }
            if (identical) {
                out->unchanged = true;
            } else {
                const std::filesystem::path dir = self->parts_dir();
                dest_tree made(dir);  // made if missing, never through a symlink
                out->parts = std::make_shared<unique_fd>(
                    ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC));
                if (out->parts->get() < 0) {
                    throw std::system_error(errno, std::system_category(), "cannot open " + dir.string());
                }
                if (::flock(out->parts->get(), LOCK_EX | LOCK_NB) != 0) {
                    out->code = exit_code::transfer_failed;
                    throw std::runtime_error("another `ferry get --from` is making " + printable(self->spec_.name) +
                                             " in " + self->spec_.folder.string());
                }
                // What the parts folder holds is for one version of the file: another
                // version's ranges (and file) go.
                const std::string version = std::to_string(file.size) + " " + std::to_string(file.mtime_ns) + "\n";
                if (read_text(dir / "source") != version) {
                    for (const auto& e : std::filesystem::directory_iterator(dir)) {
                        std::error_code rm;
                        std::filesystem::remove_all(e.path(), rm);
                    }
                }
                if (std::error_code wec = write_text(dir / "source", version)) {
                    throw std::system_error(wec, "cannot write in " + dir.string());
                }
                out->file = std::make_shared<unique_fd>(::openat(out->parts->get(), "file",
                                                                 O_RDWR | O_CREAT | O_NOFOLLOW | O_CLOEXEC, 0600));
                if (out->file->get() < 0) {
                    throw std::system_error(errno, std::system_category(), "cannot write in " + dir.string());
                }
                out->staged.assign(ranges.size(), 0);
                out->digests.assign(chunk_count(file.size), digest128{});
                std::vector<std::uint8_t> buf;
                for (std::size_t r = 0; r < ranges.size() && !stop->load(); ++r) {
                    const auto& [name, offset, length] = ranges[r];
                    // A range copied before counts only if the file still holds what its sums
                    // say (a crash may have lost pages the sums outlived): read again here.
                    std::string sums = read_text(dir / (name + ".sums"));
                    std::vector<digest128> now;
                    bool same = false;
                    if (sums.size() == chunk_count(length) * 16 &&
                        hash_chunks(out->file->get(), length, buf, now, {}, offset)) {
                        bool match = true;
                        for (std::size_t c = 0; c < now.size() && match; ++c) {
                            match = now[c] == get_digest(sums.data() + 16 * c);
                        }
                        if (match) {
                            out->staged[r] = 2;
                            std::copy(now.begin(), now.end(), out->digests.begin() + static_cast<std::ptrdiff_t>(offset / chunk_size));
                            continue;
                        }
                    }
                    if (!made.check_file(name, true, length, file.mtime_ns, same, false) && same) {
                        out->staged[r] = 1;
                    }
                }
            }
        } catch (const std::exception& e) {
            out->error = e.what();
        }
        asio::post(*io, [self, out] {
            if (self->finished_) {
                return;
            }
            if (!out->error.empty()) {
                self->finish(false, out->code, out->error);
                return;
            }
            if (out->unchanged) {
                self->report_.unchanged = true;
                self->finish(true, exit_code::ok, "");
                return;
            }
            self->parts_fd_ = out->parts;
            self->file_fd_ = out->file;
            self->chunk_digests_ = std::move(out->digests);
            self->brought_.assign(self->schedule_->ranges(), std::string());
            for (std::size_t r = 0; r < out->staged.size(); ++r) {
                self->brought_[r] = self->range_name(r);
                if (out->staged[r] != 0) {
                    self->schedule_->have(r);  // an earlier get left it
                    self->report_.kept_bytes += self->schedule_->length(r);
                }
                if (out->staged[r] == 2) {
                    ++self->copied_count_;
                } else if (out->staged[r] == 1) {
                    self->to_copy_.push_back(r);
                }
            }
            self->prepared_ = true;
            self->copy_next();
            self->fill();
        });
    });
}

void multi_get::fill() {
    if (!prepared_ || finished_ || placing_) {
        return;
    }
    for (std::size_t i = 0; i < sources_.size(); ++i) {
        source_state& s = sources_[i];
        while (s.index && s.runs.size() < pulls_per_source) {
            std::optional<std::size_t> r = schedule_->next(*s.index);
            if (!r) {
                break;
            }
            start_range(i, *r);
        }
    }
    check_end();
}

void multi_get::start_range(std::size_t i, std::size_t r) {
    source_state& s = sources_[i];
    // Two runners of a range (the end game) never share a partial file.
    std::string name = range_name(r);
    for (const source_state& other : sources_) {
        for (const run& x : other.runs) {
            if (x.range == r && x.name == name) {
                name += "b";
            }
        }
    }
    pull_spec spec;
    spec.source.set_share(spec_.share);
    spec.source.set_path(spec_.path);
    spec.source.set_get(name);
    spec.source.set_range_offset(schedule_->offset(r));
    spec.source.set_range_length(schedule_->length(r));
    spec.dest = parts_dir();
    spec.connections = spec_.connections;
    spec.zstd = spec_.zstd;
    spec.compress_always = spec_.compress_always;
    spec.durable = false;  // the file they make is, once verified
    spec.range_mtime_ns = file_->mtime_ns;
    ++live_pulls_;
    spec.lifetime = std::shared_ptr<void>(nullptr, [self = shared_from_this(), io = &node_.context().io](void*) {
        // Wherever the session let go (a worker, the loop): told on the loop.
        asio::post(*io, [self] {
            --self->live_pulls_;
            self->deliver();
        });
    });
    // --bwlimit holds over everything running at once.
    // (At least 16 KiB/s each, as --bwlimit takes: a chunk must go out well within the
    // peer's idle timeout.)
    spec.max_rate = spec_.max_rate == 0
                        ? 0
                        : std::max<std::uint64_t>(16 * 1024, spec_.max_rate / (sources_.size() * pulls_per_source));
    auto sid = std::make_shared<std::string>();
    spec.done = [self = shared_from_this(), i, sid](const transfer_report& report) {
        // Posted: the pull may report from inside node::pull (a dial that fails at once),
        // before its session ID is known here.
        asio::post(self->node_.context().io, [self, i, sid, report] { self->on_range_done(i, *sid, report); });
    };
    *sid = node_.pull(std::move(spec), s.given.target);
    s.runs.push_back({r, *sid, name});
}

void multi_get::on_range_done(std::size_t i, const std::string& session_id, const transfer_report& report) {
    source_state& s = sources_[i];
    auto it = std::find_if(s.runs.begin(), s.runs.end(), [&](const run& x) { return x.session_id == session_id; });
    if (it == s.runs.end()) {
        return;
    }
    run done = *it;
    s.runs.erase(it);
    s.figures.wire_received += report.wire_received;
    report_.wire_received += report.wire_received;
    report_.wire_sent += report.wire_sent;
    // What came verified counts, whatever became of the range: an end-game double (one
    // reporting after the get finished too), or the part a source brought before it
    // failed (another source resumes from it).
    report_.payload_bytes += report.payload_bytes;
    {
        auto [counted, first] = range_file_counted_.try_emplace(done.name, 0);
        const std::uint64_t found = report.resumed_bytes;  // what the run kept of its file
        const std::uint64_t unseen = found - std::min(found, counted->second);
        (first ? report_.kept_bytes : report_.payload_bytes) += unseen;
        counted->second = std::max(counted->second, found) + report.payload_bytes;
    }
    if (!report.peer_id.empty()) {
        s.figures.peer_id = report.peer_id;
    }
    if (finished_) {
        deliver();  // once the last pull has reported
        return;
    }
    // A range that changed at the source while read comes back as given up: not here.
    bool here = report.ok && report.given_up.empty() && report.files + report.skipped_files == 1;
    if (here) {
        if (schedule_->done(done.range, *s.index)) {
            brought_.at(done.range) = done.name;
            to_copy_.push_back(done.range);
            copy_next();
            cancel_runs([r = done.range](const source_state&, const run& x) { return x.range == r; },
                        "another source brought that range first");
        }
    } else {
        bool was_dropped = schedule_->dropped(*s.index);
        schedule_->failed(done.range, *s.index, !done.cancelled);
        if (!done.cancelled) {
            std::string why = !report.ok                  ? report.error
                              : report.given_up.empty()     ? "the range did not arrive"
                              : report.given_up[0].at_dst ? report.given_up[0].reason
                                                            : "the file changed at the source while it was read";
            last_error_ = s.given.label + ": " + why;
            if (spec_.note) {
                spec_.note("range " + std::to_string(done.range + 1) + "/" + std::to_string(schedule_->ranges()) +
                           " from " + s.given.label + " failed (" + why + "); it goes to another source");
            }
            if (!was_dropped && schedule_->dropped(*s.index)) {
                s.figures.note = "dropped after " + std::to_string(range_schedule::max_failures) +
                                 " failures in a row (" + why + ")";
                if (spec_.note) {
                    spec_.note("no longer getting from " + s.given.label + ": " + s.figures.note);
                }
                cancel_runs([&s](const source_state& of, const run&) { return &of == &s; }, "source dropped");
            }
        }
    }
    fill();
}

void multi_get::check_end() {
    if (finished_ || placing_) {
        return;
    }
    bool listing = std::any_of(sources_.begin(), sources_.end(), [](const source_state& s) { return !s.listed; });
    if (!file_) {
        if (!listing) {
            // Every source's reason. A folder named where a file must be is a usage error;
            // sources that all refused this node's identity, an authentication one.
            std::string why;
            bool not_a_file = false;
            bool all_auth = true;
            for (const source_state& s : sources_) {
                why += (why.empty() ? "" : "; ") + s.given.label + ": " + s.figures.note;
                not_a_file = not_a_file || s.code == exit_code::usage;
                all_auth = all_auth && s.code == exit_code::auth;
            }
            finish(false, not_a_file ? exit_code::usage : all_auth ? exit_code::auth : exit_code::transfer_failed,
                   "no source lists the file (" + why + ")");
        }
        return;
    }
    bool can_ask = std::any_of(sources_.begin(), sources_.end(), [&](const source_state& s) {
        return s.index && !s.digest_asked && !schedule_->dropped(*s.index);
    });
    if (!digest_ && !asking_digest_ && !can_ask && !listing) {
        finish(false, exit_code::transfer_failed, "no source could read the file digest to check the ranges against");
        return;
    }
    if (!prepared_) {
        return;
    }
    bool any = std::any_of(sources_.begin(), sources_.end(), [](const source_state& s) { return s.index.has_value(); });
    if (!schedule_->finished() && (schedule_->stuck() || !any)) {
        if (!listing) {
            finish(false, exit_code::transfer_failed, "every source failed; last: " + last_error_);
        }
        return;
    }
    if (!schedule_->finished() || copied_count_ < schedule_->ranges() || !digest_) {
        return;  // the digest comes when the source has read the file
    }
    place();
}

void multi_get::copy_next() {
    if (copying_ || to_copy_.empty() || finished_) {
        return;
    }
    copying_ = true;
    std::size_t r = to_copy_.front();
    to_copy_.pop_front();
    struct result {
        std::string error;
        std::vector<digest128> digests;
    };
    auto out = std::make_shared<result>();
    node_.context().workers.post([self = shared_from_this(), out, r, io = &node_.context().io, stop = stop_,
                                  file = file_fd_, name = brought_.at(r), sums = range_name(r) + ".sums",
                                  offset = schedule_->offset(r), length = schedule_->length(r)] {
        try {
            const std::filesystem::path dir = self->parts_dir();
            unique_fd part(::open((dir / name).c_str(), O_RDONLY | O_CLOEXEC | O_NOFOLLOW));
            struct stat st {};
            if (part.get() < 0 || ::fstat(part.get(), &st) != 0 || static_cast<std::uint64_t>(st.st_size) != length) {
                throw std::runtime_error("range " + name + " in " + dir.string() + " is missing or cut short");
            }
            ::posix_fadvise(part.get(), 0, 0, POSIX_FADV_SEQUENTIAL);
            std::vector<std::uint8_t> buf(chunk_size);
            std::string sum_bytes;
            for (std::uint64_t off = 0; off < length && !stop->load(); off += chunk_size) {
                std::uint32_t len = chunk_length(length, off / chunk_size);
                std::error_code ec;
                if (read_at(part.get(), buf.data(), len, off, ec) != len) {
                    throw std::runtime_error("cannot read range " + name + ": " +
                                             (ec ? ec.message() : std::string("cut short")));
                }
                digest128 d = hash_chunk(std::span<const std::uint8_t>(buf.data(), len));
                out->digests.push_back(d);
                put_digest(sum_bytes, d);
                if (std::error_code wec = write_at(file->get(), buf.data(), len, offset + off)) {
                    throw std::system_error(wec, "cannot write " + (dir / "file").string());
                }
            }
            if (!stop->load()) {
                // Its pages start for the disk now, so the fsync before the rename finds
                // little left.
                ::sync_file_range(file->get(), static_cast<off_t>(offset), static_cast<off_t>(length),
                                  SYNC_FILE_RANGE_WRITE);
                if (std::error_code wec = write_text(dir / sums, sum_bytes)) {
                    throw std::system_error(wec, "cannot write in " + dir.string());
                }
                ::unlink((dir / name).c_str());
            }
        } catch (const std::exception& e) {
            out->error = e.what();
        }
        asio::post(*io, [self, out, r] {
            self->copying_ = false;
            if (self->finished_) {
                return;
            }
            if (!out->error.empty()) {
                self->finish(false, exit_code::local_io, out->error);
                return;
            }
            std::copy(out->digests.begin(), out->digests.end(),
                      self->chunk_digests_.begin() + static_cast<std::ptrdiff_t>(self->schedule_->offset(r) / chunk_size));
            ++self->copied_count_;
            self->copy_next();
            self->check_end();
        });
    });
}

void multi_get::place() {
    placing_ = true;
    cancel_runs([](const source_state&, const run&) { return true; }, "every range is in");
    struct result {
        std::string error;
        bool mismatch = false;
        digest128 digest{};
    };
    auto out = std::make_shared<result>();
    node_.context().workers.post([self = shared_from_this(), out, io = &node_.context().io, stop = stop_,
                                  parts = parts_fd_, file = file_fd_, entry = *file_, want = *digest_,
                                  digest = file_digest(chunk_digests_)] {
        out->digest = digest;
        try {
            if (!(digest == want)) {
                out->mismatch = true;  // the parts folder goes (deliver)
            } else if (!stop->load()) {
                // Its size, mode and mtime, fsynced; then renamed from the parts folder to its
                // name (replacing what was there, as a get does), and that folder fsynced.
                // Permission bits only: a peer never makes a setuid program here (the
                // listing carries all twelve bits, for `ferry ls`).
                dest_tree dest(self->spec_.folder);
                if (std::error_code ec =
                        dest.prepare_final(file->release(), entry.size, entry.mode & 0777, entry.mtime_ns, true)) {
                    throw std::system_error(ec, "cannot finish " + self->spec_.name);
                }
                unique_fd folder(::open(self->spec_.folder.c_str(), O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC));
                if (folder.get() >= 0) {
                    if (std::error_code ec = dest_tree::unreplaceable_at(folder.get(), self->spec_.name)) {
                        throw std::system_error(ec, "cannot place " + printable(self->spec_.name) + " in " +
                                                        self->spec_.folder.string());  // put there since the check
                    }
                }
                if (folder.get() < 0 || ::renameat(parts->get(), "file", folder.get(), self->spec_.name.c_str()) != 0 ||
                    ::fsync(folder.get()) != 0) {
                    throw std::system_error(errno, std::system_category(),
                                            "cannot place " + printable(self->spec_.name) + " in " +
                                                self->spec_.folder.string());
                }
            }
        } catch (const std::exception& e) {
            out->error = e.what();
        }
        asio::post(*io, [self, out] {
            if (self->finished_) {
                return;
            }
            self->report_.digest = out->digest;
            // Placed, or the ranges do not make the file the source read: either way the
            // parts folder has served (a rerun starts afresh).
            self->remove_parts_ = out->error.empty();
            if (!out->error.empty()) {
                self->finish(false, exit_code::local_io, out->error);
            } else if (out->mismatch) {
                self->finish(false, exit_code::transfer_failed,
                             "the ranges do not make the file " + self->sources_[self->digest_from_].given.label +
                                 " read (its digest differs): the sources hold different contents under the same "
                                 "size and mtime; nothing was placed");
            } else {
                self->finish(true, exit_code::ok, "");
            }
        });
    });
}

void multi_get::finish(bool ok, exit_code code, const std::string& error) {
    if (finished_) {
        return;
    }
    finished_ = true;
    cancel_runs([](const source_state&, const run&) { return true; }, ok ? "done" : "the get failed");
    report_.ok = ok;
    report_.code = ok ? exit_code::ok : code;
    report_.error = error;
    report_.elapsed_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
    deliver();
}

void multi_get::deliver() {
    bool running = std::any_of(sources_.begin(), sources_.end(), [](const source_state& s) { return !s.runs.empty(); });
    if (!finished_ || delivered_ || running || live_pulls_ > 0) {
        return;  // a cancelled pull may still write into the parts folder until it is gone
    }
    delivered_ = true;
    if (file_) {
        report_.size = file_->size;
        report_.ranges = schedule_->ranges();
    }
    for (source_state& s : sources_) {
        if (s.index) {
            s.figures.figures = schedule_->figures(*s.index);
        }
        report_.sources.push_back(s.figures);
    }
    if (!remove_parts_) {
        if (spec_.done) {
            spec_.done(report_);
        }
        return;
    }
    parts_fd_.reset();
    file_fd_.reset();
    node_.context().workers.post([self = shared_from_this(), io = &node_.context().io] {
        std::error_code ec;
        std::filesystem::remove_all(self->parts_dir(), ec);
        asio::post(*io, [self] {
            if (self->spec_.done) {
                self->spec_.done(self->report_);
            }
        });
    });
}

std::optional<transfer_progress> multi_get::progress() const {
    if (!file_ || finished_) {
        return std::nullopt;
    }
    transfer_progress p;
    p.direction = "receive";
    p.session_id = session_id_;
    p.total_bytes = file_->size;
    p.files_total = 1;
    p.offered = true;
    p.elapsed_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
    // What an earlier get left is skipped, not confirmed (it counted as confirmed, so a
    // rerun's bar reached 100 % early and then went back: a user's test).
    const std::uint64_t kept = std::min(report_.kept_bytes, file_->size);
    p.skipped_bytes = kept;
    // What ranges that reported brought (their begun parts counted once, as `done`
    // counts them: a range's own size counted a begun part twice), and what the running
    // pulls have so far.
    std::uint64_t done = report_.payload_bytes;
    std::uint32_t peers = 0;
    for (const source_state& s : sources_) {
        if (s.index) {
            peers += s.runs.empty() ? 0 : 1;
        }
    }
    // Ranges running now: the most any of their runners has written.
    std::vector<std::uint64_t> running(schedule_->ranges(), 0);
    for (const transfer_progress& t : node_.transfers()) {
        for (const source_state& s : sources_) {
            for (const run& x : s.runs) {
                if (x.session_id == t.session_id && !x.cancelled) {
                    // (A begun range's own kept part is in `kept` already: its pull's
                    // skipped bytes are not counted again.)
                    running[x.range] = std::max(running[x.range], t.confirmed_bytes);
                    p.connections += t.connections;
                    p.wire_received += t.wire_received;
                    p.wire_sent += t.wire_sent;
                }
            }
        }
    }
    for (std::uint64_t b : running) {
        done += b;
    }
    p.confirmed_bytes = std::min(done, file_->size - kept);
    // The rate over the last 5 s of the whole file's progress: the range pulls' own rates
    // jump as each one starts and ends.
    auto now = std::chrono::steady_clock::now();
    rate_samples_.emplace_back(now, p.confirmed_bytes);
    while (rate_samples_.size() > 2 && now - rate_samples_[1].first >= std::chrono::seconds(5)) {
        rate_samples_.pop_front();
    }
    if (double dt = std::chrono::duration<double>(now - rate_samples_.front().first).count(); dt > 0.2) {
        p.rate = static_cast<double>(p.confirmed_bytes - std::min(p.confirmed_bytes, rate_samples_.front().second)) / dt;
    }
    p.wire_received += report_.wire_received;
    p.wire_sent += report_.wire_sent;
    p.peer_id = std::to_string(peers) + " source(s)";
    return p;
}

}  // namespace ferry
