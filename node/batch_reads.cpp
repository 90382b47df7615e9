#include "node/batch_reads.hpp"

#include <fcntl.h>
#include <linux/openat2.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <algorithm>

#ifdef FERRY_HAVE_LIBURING
#include <liburing.h>
#endif

namespace ferry {

#ifdef FERRY_HAVE_LIBURING

namespace {

// One ring per worker thread, with a fixed-file slot per file of a batch: the open puts
// the file in its slot, the read and the close name the slot, so the three can be linked
// in one submission (a plain descriptor is not known before the open completes).
class thread_ring {
public:
    thread_ring() {
        const char* env = std::getenv("FERRY_IO_URING");
        if (env != nullptr && std::strcmp(env, "0") == 0) {
            return;
        }
        // Completions are taken by this thread alone, when it waits for them.
        io_uring_params p{};
        // SUBMIT_ALL: an entry that fails its preparation does not stop the submission of
        // the rest, so every entry submitted completes (what complete() counts on).
        p.flags = IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN | IORING_SETUP_SUBMIT_ALL;
        if (io_uring_queue_init_params(entries, &ring_, &p) != 0) {
            io_uring_params plain{};
            plain.flags = IORING_SETUP_SUBMIT_ALL;
            if (io_uring_queue_init_params(entries, &ring_, &plain) != 0) {
                return;  // before 5.18: the plain system calls
            }
        }
        if (io_uring_register_files_sparse(&ring_, max_whole_reads) != 0) {
            io_uring_queue_exit(&ring_);
            return;
        }
        ok_ = true;
    }
    ~thread_ring() {
        if (ok_) {
            io_uring_queue_exit(&ring_);
        }
    }
    thread_ring(const thread_ring&) = delete;
    thread_ring& operator=(const thread_ring&) = delete;

    bool read(std::span<whole_read> reads) {
        if (!ok_) {
            return false;
        }
        std::size_t n = reads.size() < max_whole_reads ? reads.size() : max_whole_reads;
        for (std::size_t i = 0; i < n; ++i) {
            whole_read& r = reads[i];
            r.got = -ECANCELED;
            auto slot = static_cast<unsigned>(i);
            // As open_read: under root_fd without a symlink or leaving it, else as open(2).
            how_[i] = open_how{};
            how_[i].flags = O_RDONLY | (r.root_fd >= 0 ? O_NOFOLLOW : 0);
            how_[i].resolve = r.root_fd >= 0 ? RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS : 0;
            io_uring_sqe* open = io_uring_get_sqe(&ring_);
            io_uring_sqe* read = io_uring_get_sqe(&ring_);
            io_uring_sqe* close = io_uring_get_sqe(&ring_);
            if (open == nullptr || read == nullptr || close == nullptr) {
                return give_up(reads);  // cannot happen: the ring holds three a file
            }
            io_uring_prep_openat2_direct(open, r.root_fd >= 0 ? r.root_fd : AT_FDCWD, r.path->c_str(), &how_[i], slot);
            open->flags |= IOSQE_IO_LINK;  // a failed open cancels its read
            io_uring_sqe_set_data64(open, (i << 2) | 0);
            io_uring_prep_read(read, static_cast<int>(slot), r.buf, static_cast<unsigned>(r.want), 0);
            // A short read (the usual end: `want` asks one byte past the size) must not
            // cancel the close: a hard link.
            read->flags |= IOSQE_FIXED_FILE | IOSQE_IO_HARDLINK;
            io_uring_sqe_set_data64(read, (i << 2) | 1);
            io_uring_prep_close_direct(close, slot);
            io_uring_sqe_set_data64(close, (i << 2) | 2);
        }
        int submitted = io_uring_submit_and_wait(&ring_, static_cast<unsigned>(3 * n));
        if (submitted != static_cast<int>(3 * n)) {
            return give_up(reads);
        }
        // Every entry submitted completes, cancelled ones too; wait for all of them.
        std::size_t done = 0;
        while (done < 3 * n) {
            io_uring_cqe* cqe = nullptr;
            if (io_uring_wait_cqe(&ring_, &cqe) != 0) {
                return give_up(reads);  // not expected
            }
            std::uint64_t tag = io_uring_cqe_get_data64(cqe);
            std::size_t i = tag >> 2;
            if ((tag & 3) == 0 && cqe->res < 0) {
                reads[i].got = cqe->res;
            } else if ((tag & 3) == 1 && reads[i].got == -ECANCELED) {
                reads[i].got = cqe->res;
            }
            io_uring_cqe_seen(&ring_, cqe);
            ++done;
        }
        for (std::size_t i = n; i < reads.size(); ++i) {
            reads[i].got = -1;
        }
        return true;
    }

    bool link(std::span<link_close> ops) {
        if (!ok_) {
            return false;
        }
        // Two submissions a round: the links, then the closes of those linked. (A failed
        // linkat does not break an io_uring link chain, unlike a failed read: a close
        // linked after it would run all the same, and the caller needs the file open.)
        std::size_t done = 0;
        while (done < ops.size()) {
            std::size_t n = std::min<std::size_t>(ops.size() - done, entries);
            for (std::size_t i = done; i < done + n; ++i) {
                link_close& op = ops[i];
                io_uring_sqe* link = io_uring_get_sqe(&ring_);
                if (link == nullptr) {
                    return give_up_links();  // cannot happen: the ring holds `entries`
                }
                op.result = 2;  // submitted: until its completion, unknown
                io_uring_prep_linkat(link, op.fd, "", op.dir_fd, op.name, AT_EMPTY_PATH);
                io_uring_sqe_set_data64(link, i);
            }
            if (!complete(n, [&](std::uint64_t i, int res) { ops[i].result = res < 0 ? res : 3; })) {
                return give_up_links();
            }
            std::size_t closes = 0;
            for (std::size_t i = done; i < done + n; ++i) {
                if (ops[i].result == 3) {  // linked: now closed
                    io_uring_sqe* close = io_uring_get_sqe(&ring_);
                    if (close == nullptr) {
                        return give_up_links();
                    }
                    io_uring_prep_close(close, ops[i].fd);
                    io_uring_sqe_set_data64(close, i);
                    ++closes;
                }
            }
            // close(2) frees the descriptor even when it reports an error.
            if (closes > 0 && !complete(closes, [&](std::uint64_t i, int) { ops[i].result = 0; })) {
                return give_up_links();
            }
            done += n;
        }
        return true;
    }

    bool calls(std::span<ring_call> cs) {
        if (!ok_) {
            return false;
        }
        std::size_t done = 0;
        while (done < cs.size()) {
            std::size_t n = std::min<std::size_t>(cs.size() - done, entries);
            for (std::size_t i = done; i < done + n; ++i) {
                ring_call& c = cs[i];
                io_uring_sqe* sqe = io_uring_get_sqe(&ring_);
                if (sqe == nullptr) {
                    return give_up_links();  // cannot happen: the ring holds `entries`
                }
                if (c.what == ring_call::op::open_tmpfile) {
                    io_uring_prep_openat(sqe, c.fd, ".", O_TMPFILE | O_WRONLY | O_CLOEXEC, c.mode);
                } else {
                    io_uring_prep_write(sqe, c.fd, c.buf, c.len, 0);
                }
                io_uring_sqe_set_data64(sqe, i);
            }
            if (!complete(n, [&](std::uint64_t i, int res) { cs[i].res = res; })) {
                return give_up_links();
            }
            done += n;
        }
        return true;
    }

private:
    static constexpr unsigned entries = 4 * max_whole_reads;

    // As give_up(), for links and calls: the ring is closed for good on this thread. Files
    // not submitted keep result 1 (the caller names them itself); one whose link or close
    // was submitted and not seen through keeps 2 or 3, both "unknown" to the caller. A
    // call not seen through keeps res not_made.
    bool give_up_links() {
        io_uring_queue_exit(&ring_);
        ok_ = false;
        return true;
    }
    // Submits what is queued and takes `n` completions, handing each (user data, result)
    // to `seen`. False when the ring fails (not expected).
    template <typename Seen>
    bool complete(std::size_t n, Seen seen) {
        if (io_uring_submit_and_wait(&ring_, static_cast<unsigned>(n)) != static_cast<int>(n)) {
            return false;
        }
        for (std::size_t k = 0; k < n; ++k) {
            io_uring_cqe* cqe = nullptr;
            if (io_uring_wait_cqe(&ring_, &cqe) != 0) {
                return false;
            }
            seen(io_uring_cqe_get_data64(cqe), cqe->res);
            io_uring_cqe_seen(&ring_, cqe);
        }
        return true;
    }
    // Something the ring should never do: it is closed for good on this thread (with what
    // it still held, so that no late completion is taken for a later batch's), and the
    // files are read by the caller's own path.
    bool give_up(std::span<whole_read> reads) {
        io_uring_queue_exit(&ring_);
        ok_ = false;
        for (whole_read& r : reads) {
            r.got = -1;
        }
        return true;
    }
    io_uring ring_{};
    bool ok_ = false;
    open_how how_[max_whole_reads]{};  // alive until the opens are done (openat2 copies it at issue)
};

}  // namespace

thread_ring& this_thread_ring() {
    thread_local thread_ring ring;
    return ring;
}

bool read_whole(std::span<whole_read> reads) { return this_thread_ring().read(reads); }

bool link_and_close(std::span<link_close> ops) { return this_thread_ring().link(ops); }

bool make_calls(std::span<ring_call> calls) { return this_thread_ring().calls(calls); }

#else

bool read_whole(std::span<whole_read>) { return false; }

bool link_and_close(std::span<link_close>) { return false; }

bool make_calls(std::span<ring_call>) { return false; }

#endif

}  // namespace ferry
