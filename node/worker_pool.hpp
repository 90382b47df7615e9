// A small fixed pool of worker threads for disk I/O, hashing and compression.
//
// The loop thread posts owned work here; each task posts its result back to the loop
// (asio::post on the node's io_context). The thread count is fixed at construction and
// never grows with peers or transfers.
#pragma once

#include <signal.h>

#include <condition_variable>
#include <cstddef>
#include <deque>
#include <functional>
#include <memory>
#include <type_traits>
#include <mutex>
#include <thread>
#include <vector>

namespace ferry {

// The signals that stop a ferry process: SIGINT, SIGTERM and SIGHUP. The workers never
// take them, and the ferry binary takes them on one thread of its own (tools/signals.hpp).
sigset_t stop_signals();

// A move-only type-erased task (tasks own move-only buffers; std::function needs copies).
class unique_task {
public:
    unique_task() = default;
    template <typename F>
    unique_task(F&& f) : impl_(std::make_unique<model<std::decay_t<F>>>(std::forward<F>(f))) {}
    void operator()() { impl_->call(); }
    explicit operator bool() const { return impl_ != nullptr; }

private:
    struct concept_t {
        virtual ~concept_t() = default;
        virtual void call() = 0;
    };
    template <typename F>
    struct model final : concept_t {
        explicit model(F&& f) : fn(std::move(f)) {}
        void call() override { fn(); }
        F fn;
    };
    std::unique_ptr<concept_t> impl_;
};

class worker_pool {
public:
    explicit worker_pool(std::size_t threads);
    ~worker_pool();  // runs what is queued, then joins
    worker_pool(const worker_pool&) = delete;
    worker_pool& operator=(const worker_pool&) = delete;

    void post(unique_task task);
    // Ahead of every task waiting: for short work that others wait on (an Offer batch's
    // compression), not for bulk.
    void post_first(unique_task task);
    std::size_t size() const { return threads_.size(); }

    // Runs fn(0) .. fn(parts - 1) and returns once every one has run: the calling thread
    // takes parts in turn, and helpers posted to the pool (at most size() - 1) take others
    // when a worker comes free. Safe from a worker's own task: a part no helper has taken
    // is run by the caller, which waits only for parts already running elsewhere. Parts
    // run concurrently. A part that throws does not stop the others: once all are done,
    // the first exception is thrown again here.
    void run_parts(std::size_t parts, const std::function<void(std::size_t)>& fn);

private:
    void run();

    std::mutex mutex_;
    std::condition_variable cv_;
    std::deque<unique_task> tasks_;
    bool stopping_ = false;
    std::vector<std::thread> threads_;
};

}  // namespace ferry
