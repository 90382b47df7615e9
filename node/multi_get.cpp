#include "node/multi_get.hpp"

#include <fcntl.h>
#include <sys/stat.h>

#include <algorithm>
#include <cstdio>

#include "node/dest_tree.hpp"
#include "node/file_io.hpp"
#include "node/node.hpp"
#include "protocol/path.hpp"

namespace ferry {

namespace {

constexpr std::uint64_t MiB = 1024 * 1024;
// Ranges of 8-64 MiB: about 16 a source, so that a fast one can take many more than a
// slow one, and each pull's setup (connections, TLS, slow start) is small beside it.
constexpr std::uint64_t min_range = 8 * MiB;
constexpr std::uint64_t max_range = 64 * MiB;

}  // namespace

multi_get::multi_get(node& n, multi_get_spec spec) : node_(n), spec_(std::move(spec)) {
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
        auto entry = std::make_shared<std::optional<entry_info>>();
        list_spec ls;
        ls.request.set_share(spec_.share);
        ls.request.set_path(spec_.path);
        ls.entries = [entry](std::vector<entry_info> batch) {
            if (!*entry && !batch.empty()) {
                *entry = std::move(batch.front());
            }
        };
        ls.done = [self = shared_from_this(), i, entry](const list_report& r) {
            self->on_listed(i, r.ok, r.code, r.error, *entry, r.peer_id);
        };
        node_.list(std::move(ls), sources_[i].given.target);
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
        s.figures.note = !error.empty() ? error : e ? "\"" + spec_.path + "\" is not a regular file there (several sources "
                                                      "download one file)"
                                                    : "no listing";
        last_error_ = s.given.label + ": " + s.figures.note;
        last_code_ = code;
        if (spec_.note) {
            spec_.note("not getting from " + s.given.label + ": " + s.figures.note);
        }
        check_end();
        return;
    }
    if (!file_) {
        file_ = e;
        schedule_.emplace(e->size, range_schedule::pick_length(e->size, sources_.size(), chunk_size, min_range,
                                                               max_range));
        ask_digest(i);
        prepare();
    } else if (e->size != file_->size || e->mtime_ns != file_->mtime_ns) {
        s.figures.note = "it has another version of the file (" + std::to_string(e->size) + " bytes, another mtime)";
        if (spec_.note) {
            spec_.note("not getting from " + s.given.label + ": " + s.figures.note);
        }
        check_end();
        return;
    }
    s.index = schedule_->add_source();
    s.figures.used = true;
    fill();
}

void multi_get::ask_digest(std::size_t i) {
    digest_from_ = i;
    asking_digest_ = true;
    auto digest = std::make_shared<std::optional<digest128>>();
    list_spec ls;
    ls.request.set_share(spec_.share);
    ls.request.set_path(spec_.path);
    ls.request.set_checksum(true);
    ls.entries = [digest](std::vector<entry_info> batch) {
        if (!*digest && !batch.empty() && batch.front().digest) {
            *digest = batch.front().digest;
        }
    };
    ls.done = [self = shared_from_this(), i, digest](const list_report& r) {
        if (self->finished_) {
            return;
        }
        self->asking_digest_ = false;
        if (r.ok && *digest) {
            self->digest_ = **digest;
            self->check_end();
            return;
        }
        if (self->spec_.note) {
            self->spec_.note("could not read the file digest at " + self->sources_[i].given.label + ": " +
                             (r.ok ? std::string("none given") : r.error) + "; asking another source");
        }
        // The next source that lists the same file.
        for (std::size_t k = i + 1; k < self->sources_.size(); ++k) {
            if (self->sources_[k].index && !self->schedule_->dropped(*self->sources_[k].index)) {
                self->ask_digest(k);
                return;
            }
        }
        self->digest_failed_ = true;
        self->check_end();
    };
    node_.list(std::move(ls), sources_[i].given.target);
}

void multi_get::prepare() {
    struct result {
        std::string error;
        bool unchanged = false;
        std::vector<std::uint8_t> staged;
    };
    auto out = std::make_shared<result>();
    std::vector<std::pair<std::string, std::uint64_t>> ranges;
    for (std::size_t r = 0; r < schedule_->ranges(); ++r) {
        ranges.emplace_back(range_name(r), schedule_->length(r));
    }
    node_.context().workers.post([self = shared_from_this(), out, ranges = std::move(ranges), file = *file_] {
        try {
            dest_tree dest(self->spec_.folder);
            bool identical = false;
            if (std::error_code ec = dest.check_file(self->spec_.name, true, file.size, file.mtime_ns, identical, false)) {
                out->error = printable(self->spec_.name) + ": " +
                             (ec == dest_errc::is_dir ? "a folder here, and a file at the peer" : ec.message());
            } else if (identical) {
                out->unchanged = true;
            } else {
                dest_tree parts(self->parts_dir());  // made if missing
                out->staged.assign(ranges.size(), 0);
                for (std::size_t r = 0; r < ranges.size(); ++r) {
                    bool same = false;
                    bool exists = false;
                    if (!parts.check_file(ranges[r].first, true, ranges[r].second, file.mtime_ns, same, false, &exists)) {
                        out->staged[r] = same ? 1 : 0;
                    }
                }
            }
        } catch (const std::exception& e) {
            out->error = e.what();
        }
        asio::post(self->node_.context().io, [self, out] {
            if (self->finished_) {
                return;
            }
            if (!out->error.empty()) {
                self->finish(false, exit_code::transfer_failed, out->error);
                return;
            }
            if (out->unchanged) {
                self->report_.unchanged = true;
                self->finish(true, exit_code::ok, "");
                return;
            }
            self->brought_.assign(self->schedule_->ranges(), std::string());
            for (std::size_t r = 0; r < out->staged.size(); ++r) {
                self->brought_[r] = self->range_name(r);
                if (out->staged[r] != 0) {
                    self->schedule_->have(r);  // an earlier get left it
                    self->report_.kept_bytes += self->schedule_->length(r);
                }
            }
            self->prepared_ = true;
            self->fill();
        });
    });
}

void multi_get::fill() {
    if (!prepared_ || finished_ || assembling_) {
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
    spec.durable = false;  // the assembled file is, once verified
    // --bwlimit holds over everything running at once.
    spec.max_rate = spec_.max_rate == 0 ? 0
                                        : std::max<std::uint64_t>(1, spec_.max_rate / (sources_.size() * pulls_per_source));
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
    if (!report.peer_id.empty()) {
        s.figures.peer_id = report.peer_id;
    }
    if (finished_) {
        return;
    }
    // A range that changed at the source while read comes back as given up: not here.
    bool here = report.ok && report.given_up.empty() && report.files + report.skipped_files == 1;
    if (here) {
        report_.payload_bytes += report.payload_bytes;
        if (schedule_->done(done.range, *s.index)) {
            brought_.at(done.range) = done.name;
            for (source_state& other : sources_) {
                for (run& x : other.runs) {
                    if (x.range == done.range && !x.cancelled) {
                        x.cancelled = true;
                        node_.cancel_pull(x.session_id, "another source brought that range first");
                    }
                }
            }
        }
    } else {
        bool was_dropped = schedule_->dropped(*s.index);
        schedule_->failed(done.range, *s.index, !done.cancelled);
        if (!done.cancelled) {
            std::string why = !report.ok ? report.error
                              : !report.given_up.empty() ? "the file changed at the source while it was read"
                                                         : "the range did not arrive";
            last_error_ = s.given.label + ": " + why;
            last_code_ = report.ok ? exit_code::vanished : report.code;
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
                for (run& x : s.runs) {
                    if (!x.cancelled) {
                        x.cancelled = true;
                        node_.cancel_pull(x.session_id, "source dropped");
                    }
                }
            }
        }
    }
    fill();
}

void multi_get::check_end() {
    if (finished_ || assembling_) {
        return;
    }
    bool listing = std::any_of(sources_.begin(), sources_.end(), [](const source_state& s) { return !s.listed; });
    if (!file_) {
        if (!listing) {
            finish(false, last_code_, "no source lists the file: " + last_error_);
        }
        return;
    }
    if (!prepared_) {
        return;
    }
    if (schedule_->stuck() || std::none_of(sources_.begin(), sources_.end(), [](const source_state& s) {
            return s.index.has_value();
        })) {
        if (!listing) {
            finish(false, last_code_, "every source failed; last: " + last_error_);
        }
        return;
    }
    if (!schedule_->finished()) {
        return;
    }
    if (digest_failed_) {
        finish(false, exit_code::transfer_failed, "no source could read the file digest to check the ranges against");
        return;
    }
    if (!digest_ && asking_digest_) {
        return;  // comes when the source has read the file
    }
    assemble();
}

void multi_get::assemble() {
    assembling_ = true;
    for (source_state& s : sources_) {
        for (run& x : s.runs) {
            if (!x.cancelled) {
                x.cancelled = true;
                node_.cancel_pull(x.session_id, "every range is in");
            }
        }
    }
    struct result {
        std::string error;
        bool mismatch = false;
        digest128 digest{};
    };
    auto out = std::make_shared<result>();
    std::vector<std::pair<std::string, std::uint64_t>> ranges;
    for (std::size_t r = 0; r < schedule_->ranges(); ++r) {
        ranges.emplace_back(brought_[r], schedule_->length(r));
    }
    node_.context().workers.post([self = shared_from_this(), out, ranges = std::move(ranges), file = *file_,
                                  want = *digest_] {
        try {
            dest_tree dest(self->spec_.folder);
            std::error_code ec;
            unique_fd fd(dest.open_partial(self->spec_.name, ec));
            if (fd.get() < 0 || ::ftruncate(fd.get(), 0) != 0) {
                throw std::system_error(ec ? ec : std::error_code(errno, std::system_category()),
                                        "cannot write " + self->spec_.name);
            }
            std::vector<digest128> chunks;
            chunks.reserve(chunk_count(file.size));
            std::vector<std::uint8_t> buf(chunk_size);
            std::uint64_t at = 0;
            std::filesystem::path dir = self->parts_dir();
            for (const auto& [name, length] : ranges) {
                unique_fd part(::open((dir / name).c_str(), O_RDONLY | O_CLOEXEC | O_NOFOLLOW));
                struct stat st {};
                if (part.get() < 0 || ::fstat(part.get(), &st) != 0 || static_cast<std::uint64_t>(st.st_size) != length) {
                    throw std::runtime_error("range " + name + " in " + dir.string() + " is missing or cut short");
                }
                ::posix_fadvise(part.get(), 0, 0, POSIX_FADV_SEQUENTIAL);
                for (std::uint64_t off = 0; off < length; off += chunk_size) {
                    std::uint32_t len = chunk_length(length, off / chunk_size);
                    std::error_code rec;
                    if (read_at(part.get(), buf.data(), len, off, rec) != len) {
                        throw std::runtime_error("cannot read range " + name + ": " +
                                                 (rec ? rec.message() : std::string("cut short")));
                    }
                    chunks.push_back(hash_chunk(std::span<const std::uint8_t>(buf.data(), len)));
                    if (std::error_code wec = write_at(fd.get(), buf.data(), len, at + off)) {
                        throw std::system_error(wec, "cannot write " + self->spec_.name);
                    }
                }
                at += length;
            }
            out->digest = file_digest(chunks);
            if (!(out->digest == want)) {
                out->mismatch = true;
                dest.remove_partial(self->spec_.name, true, false);
            } else if (std::error_code fec = dest.finalize(self->spec_.name, fd.release(), file.size, file.mode,
                                                           file.mtime_ns, true, true)) {
                throw std::system_error(fec, "cannot place " + self->spec_.name);
            }
            // Placed, or the ranges do not make the file the source read: either way the
            // parts have served (a rerun starts afresh).
            std::error_code rm;
            std::filesystem::remove_all(dir, rm);
        } catch (const std::exception& e) {
            out->error = e.what();
        }
        asio::post(self->node_.context().io, [self, out] {
            if (self->finished_) {
                return;
            }
            self->report_.digest = out->digest;
            if (!out->error.empty()) {
                self->finish(false, exit_code::transfer_failed, out->error);
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
    for (source_state& s : sources_) {
        for (run& x : s.runs) {
            if (!x.cancelled) {
                x.cancelled = true;
                node_.cancel_pull(x.session_id, ok ? "done" : "the get failed");
            }
        }
    }
    report_.ok = ok;
    report_.code = ok ? exit_code::ok : code;
    report_.error = error;
    report_.elapsed_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
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
    if (spec_.done) {
        spec_.done(report_);
    }
}

std::optional<transfer_progress> multi_get::progress() const {
    if (!file_ || finished_) {
        return std::nullopt;
    }
    transfer_progress p;
    p.direction = "receive";
    p.session_id = "multi";
    p.total_bytes = file_->size;
    p.files_total = 1;
    p.offered = true;
    p.elapsed_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
    std::uint64_t done = report_.kept_bytes;
    std::uint32_t peers = 0;
    for (const source_state& s : sources_) {
        if (s.index) {
            done += schedule_->figures(*s.index).bytes;
            peers += s.runs.empty() ? 0 : 1;
        }
    }
    // Ranges running now: the most any of their runners has written.
    std::vector<std::uint64_t> running(schedule_->ranges(), 0);
    for (const transfer_progress& t : node_.transfers()) {
        for (const source_state& s : sources_) {
            for (const run& x : s.runs) {
                if (x.session_id == t.session_id && !x.cancelled) {
                    running[x.range] = std::max(running[x.range], t.confirmed_bytes + t.skipped_bytes);
                    p.rate += t.rate;
                    p.connections += t.connections;
                    p.wire_received += t.wire_received;
                }
            }
        }
    }
    for (std::uint64_t b : running) {
        done += b;
    }
    p.confirmed_bytes = std::min(done, file_->size);
    p.wire_received += report_.wire_received;
    p.peer_id = std::to_string(peers) + " source(s)";
    return p;
}

}  // namespace ferry
