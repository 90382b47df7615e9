#include "node/worker_pool.hpp"

#include <pthread.h>

#include <csignal>
#include <exception>

namespace ferry {

sigset_t stop_signals() {
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGINT);
    sigaddset(&set, SIGTERM);
    sigaddset(&set, SIGHUP);
    return set;
}

worker_pool::worker_pool(std::size_t threads) {
    if (threads == 0) {
        threads = 1;
    }
    threads_.reserve(threads);
    // The workers never take SIGINT, SIGTERM or SIGHUP: they inherit them blocked, so a
    // program that handles them with a handler has it run on one of its own threads, not
    // in a worker's long task. (The ferry binary blocks them in every thread and takes
    // them on one: tools/signals.hpp.)
    const sigset_t handled = stop_signals();
    sigset_t before;
    pthread_sigmask(SIG_BLOCK, &handled, &before);
    for (std::size_t i = 0; i < threads; ++i) {
        threads_.emplace_back([this] { run(); });
    }
    pthread_sigmask(SIG_SETMASK, &before, nullptr);
}

worker_pool::~worker_pool() {
    {
        std::lock_guard lock(mutex_);
        stopping_ = true;
    }
    cv_.notify_all();
    for (std::thread& t : threads_) {
        t.join();
    }
}

void worker_pool::post(unique_task task) {
    {
        std::lock_guard lock(mutex_);
        tasks_.push_back(std::move(task));
    }
    cv_.notify_one();
}

void worker_pool::post_first(unique_task task) {
    {
        std::lock_guard lock(mutex_);
        tasks_.push_front(std::move(task));
    }
    cv_.notify_one();
}

void worker_pool::run_parts(std::size_t parts, const std::function<void(std::size_t)>& fn) {
    struct shared {
        std::mutex mutex;
        std::condition_variable cv;
        std::size_t parts = 0;
        std::size_t next = 0;  // the next part to take
        std::size_t done = 0;
        const std::function<void(std::size_t)>* fn = nullptr;  // read only after taking a part
        std::exception_ptr failure;                            // the first part that threw
    };
    auto state = std::make_shared<shared>();
    state->parts = parts;
    state->fn = &fn;
    auto take_parts = [](shared& s) {
        for (;;) {
            std::size_t i = 0;
            {
                std::lock_guard lock(s.mutex);
                if (s.next == s.parts) {
                    return;  // a helper that came late touches nothing else
                }
                i = s.next++;
            }
            std::exception_ptr failed;
            try {
                (*s.fn)(i);
            } catch (...) {
                failed = std::current_exception();
            }
            std::lock_guard lock(s.mutex);
            if (failed && !s.failure) {
                s.failure = failed;
            }
            if (++s.done == s.parts) {
                s.cv.notify_all();
            }
        }
    };
    for (std::size_t h = 1; h < size() && h < parts; ++h) {
        post([state, take_parts] { take_parts(*state); });
    }
    take_parts(*state);
    std::unique_lock lock(state->mutex);
    state->cv.wait(lock, [&] { return state->done == state->parts; });
    if (state->failure) {
        std::rethrow_exception(state->failure);  // on the caller, once no part runs any more
    }
}

void worker_pool::run() {
    for (;;) {
        unique_task task;
        {
            std::unique_lock lock(mutex_);
            cv_.wait(lock, [this] { return stopping_ || !tasks_.empty(); });
            if (tasks_.empty()) {
                return;
            }
            task = std::move(tasks_.front());
            tasks_.pop_front();
        }
        task();
    }
}

}  // namespace ferry
