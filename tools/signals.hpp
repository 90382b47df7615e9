// Stop and reload signals (SIGINT, SIGTERM, SIGHUP) without a signal handler: every
// thread keeps them blocked and one thread takes them from a signalfd(2), then posts each
// to the loops that watch it. A handler would run on whichever thread the kernel picks,
// at any point of its work (ThreadSanitizer, which defers such handlers, three times left a
// node deaf to SIGTERM); a blocked signal waits in the kernel until it is taken.
#pragma once

#include <asio/io_context.hpp>

#include <functional>
#include <initializer_list>
#include <memory>

namespace ferry::cli {

// First in main, while the process has one thread: blocks SIGINT, SIGTERM and SIGHUP (every
// thread started later inherits that) and starts the thread that takes them. A signal that
// no signal_watch wants when it comes does what it would have done with no handler: ends
// the process (or nothing, when it was ignored, as under nohup).
void start_signal_thread();

// The signals a command handles, on its loop's thread; the watch must not outlive `io`.
// As with asio::signal_set, an armed wait keeps io.run() going, a signal that comes while
// no wait is armed is kept for the next one (the same signal twice, once), and a signal a
// watch wants is taken even when it was ignored at exec (`ferry serve &` from a script
// still stops on SIGINT). A signal that comes before the watch exists does its default
// action.
class signal_watch {
public:
    signal_watch(asio::io_context& io, std::initializer_list<int> signals);
    ~signal_watch();
    signal_watch(const signal_watch&) = delete;
    signal_watch& operator=(const signal_watch&) = delete;

    // `handler(signal)` runs on the loop's thread for the next signal (never inside this
    // call); once the watch is gone, never.
    void async_wait(std::function<void(int)> handler);

    struct state;

private:
    std::shared_ptr<state> state_;
};

}  // namespace ferry::cli
