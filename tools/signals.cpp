#include "tools/signals.hpp"

#include "node/worker_pool.hpp"

#include <poll.h>
#include <pthread.h>
#include <sys/eventfd.h>
#include <sys/signalfd.h>
#include <unistd.h>

#include <asio/executor_work_guard.hpp>
#include <asio/post.hpp>

#include <algorithm>
#include <cstdint>
#include <csignal>
#include <deque>
#include <mutex>
#include <optional>
#include <system_error>
#include <thread>
#include <vector>

namespace ferry::cli {

struct signal_watch::state {
    explicit state(asio::io_context& io) : ex(io.get_executor()) {}
    asio::io_context::executor_type ex;
    sigset_t wanted{};  // under registry().mutex

    // The loop's thread only.
    std::function<void(int)> handler;
    // An armed wait keeps the loop running, as a pending asio operation does (the commands
    // end their loops with io.stop(), never by running out of work).
    std::optional<asio::executor_work_guard<asio::io_context::executor_type>> work;
    std::deque<int> kept;
    bool alive = true;

    void deliver(int signal) {
        if (!alive) {
            return;
        }
        if (!handler) {
            if (std::find(kept.begin(), kept.end(), signal) == kept.end()) {
                kept.push_back(signal);  // like a pending signal: the same one twice is once
            }
            return;
        }
        std::function<void(int)> h = std::move(handler);
        handler = nullptr;
        work.reset();
        h(signal);
    }
};

namespace {

struct watch_registry {
    std::mutex mutex;
    std::vector<std::shared_ptr<signal_watch::state>> watches;
};

watch_registry& registry() {
    static watch_registry r;
    return r;
}

// What the signal does with no handler: ends the process, unless it is ignored.
void default_action(int signal) {
    sigset_t one;
    sigemptyset(&one);
    sigaddset(&one, signal);
    pthread_sigmask(SIG_UNBLOCK, &one, nullptr);
    ::raise(signal);  // delivered to this thread before raise returns
    pthread_sigmask(SIG_BLOCK, &one, nullptr);
}

// The thread that takes the signals: it reads them from a signalfd, and leaves when the
// process exits (a thread still running then would hold up a ThreadSanitizer build's exit
// by its atexit_sleep_ms).
class signal_taker {
public:
    explicit signal_taker(const sigset_t& taken)
        : taken_(taken),
          signals_(::signalfd(-1, &taken, SFD_CLOEXEC | SFD_NONBLOCK)),
          stop_(::eventfd(0, EFD_CLOEXEC)) {
        if (signals_ >= 0 && stop_ >= 0) {
            try {
                thread_ = std::thread([this] { run(); });
            } catch (const std::system_error&) {
                // no thread to be had: running() says so
            }
        }
    }
    ~signal_taker() {
        if (thread_.joinable()) {
            std::uint64_t one = 1;
            (void)!::write(stop_, &one, sizeof one);
            thread_.join();
            // What is left of the exit may still be stopped: a signal now does its default action.
            pthread_sigmask(SIG_UNBLOCK, &taken_, nullptr);
        }
        for (int fd : {signals_, stop_}) {
            if (fd >= 0) {
                ::close(fd);
            }
        }
    }
    signal_taker(const signal_taker&) = delete;
    signal_taker& operator=(const signal_taker&) = delete;

    bool running() const { return thread_.joinable(); }

private:
    void run() {
        for (;;) {
            pollfd fds[2] = {{signals_, POLLIN, 0}, {stop_, POLLIN, 0}};
            if (::poll(fds, 2, -1) < 0) {
                continue;  // EINTR (a stop and continue under a debugger)
            }
            if (fds[1].revents != 0) {
                return;
            }
            signalfd_siginfo info{};
            if (::read(signals_, &info, sizeof info) != static_cast<ssize_t>(sizeof info)) {
                continue;  // EAGAIN: taken by nobody else, but never a reason to block here
            }
            take(static_cast<int>(info.ssi_signo));
        }
    }

    static void take(int signal) {
        bool wanted = false;
        {
            std::lock_guard lock(registry().mutex);
            for (const std::shared_ptr<signal_watch::state>& w : registry().watches) {
                if (sigismember(&w->wanted, signal) == 1) {
                    wanted = true;
                    asio::post(w->ex, [w, signal] { w->deliver(signal); });
                }
            }
        }
        if (!wanted) {
            default_action(signal);
        }
    }

    sigset_t taken_;
    int signals_;
    int stop_;
    std::thread thread_;
};

}  // namespace

void start_signal_thread() {
    const sigset_t taken = stop_signals();
    pthread_sigmask(SIG_BLOCK, &taken, nullptr);
    registry();  // made first, so that it outlives the taker at exit
    static signal_taker taker(taken);
    if (!taker.running()) {
        pthread_sigmask(SIG_UNBLOCK, &taken, nullptr);  // no descriptors: the signals do their default action
    }
}

signal_watch::signal_watch(asio::io_context& io, std::initializer_list<int> signals)
    : state_(std::make_shared<state>(io)) {
    std::lock_guard lock(registry().mutex);
    sigemptyset(&state_->wanted);
    for (int s : signals) {
        sigaddset(&state_->wanted, s);
    }
    registry().watches.push_back(state_);
}

signal_watch::~signal_watch() {
    {
        std::lock_guard lock(registry().mutex);
        std::erase(registry().watches, state_);
    }
    state_->alive = false;
    state_->handler = nullptr;
    state_->work.reset();
}

void signal_watch::async_wait(std::function<void(int)> handler) {
    state_->handler = std::move(handler);
    state_->work.emplace(state_->ex);
    if (!state_->kept.empty()) {
        int signal = state_->kept.front();
        state_->kept.pop_front();
        asio::post(state_->ex, [s = state_, signal] { s->deliver(signal); });
    }
}

}  // namespace ferry::cli
