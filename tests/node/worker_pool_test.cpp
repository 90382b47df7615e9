// worker_pool: post_first jumps the queue; run_parts: every part runs exactly once, parts run on more than one thread
// when workers are free, and calls from inside the pool's own tasks (every worker at
// once) finish instead of waiting for each other.
#include "node/worker_pool.hpp"

#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <future>
#include <mutex>
#include <set>
#include <stdexcept>
#include <thread>
#include <vector>

namespace ferry {
namespace {

// post_first: the task runs before every task still waiting, after the running one.
TEST(WorkerPool, PostFirstRunsAheadOfTheTasksWaiting) {
    worker_pool pool(1);
    std::promise<void> started;
    std::promise<void> release;
    std::shared_future<void> go = release.get_future().share();
    std::mutex mutex;
    std::vector<int> order;
    std::promise<void> last;
    pool.post([&, go] {
        started.set_value();
        go.wait();
    });
    ASSERT_EQ(started.get_future().wait_for(std::chrono::seconds(10)), std::future_status::ready);
    for (int i = 1; i <= 3; ++i) {
        pool.post([&, i] {
            std::lock_guard lock(mutex);
            order.push_back(i);
            if (i == 3) {
                last.set_value();
            }
        });
    }
    pool.post_first([&] {
        std::lock_guard lock(mutex);
        order.push_back(0);
    });
    release.set_value();
    ASSERT_EQ(last.get_future().wait_for(std::chrono::seconds(10)), std::future_status::ready);
    std::lock_guard lock(mutex);
    EXPECT_EQ(order, (std::vector<int>{0, 1, 2, 3}));
}

TEST(WorkerPool, RunPartsRunsEveryPartOnceAndReturnsAfterTheLast) {
    worker_pool pool(2);
    constexpr std::size_t parts = 1000;
    std::vector<std::atomic<int>> runs(parts);
    std::atomic<std::size_t> finished{0};
    pool.run_parts(parts, [&](std::size_t i) {
        runs[i].fetch_add(1);
        finished.fetch_add(1);
    });
    EXPECT_EQ(finished.load(), parts);  // all done by the time it returned
    for (std::size_t i = 0; i < parts; ++i) {
        EXPECT_EQ(runs[i].load(), 1) << i;
    }
}

// A part that throws: every other part still runs, and the caller gets the exception
// once none runs any more.
TEST(WorkerPool, RunPartsThrowsAPartsExceptionAfterAllPartsRan) {
    worker_pool pool(2);
    std::atomic<int> ran{0};
    EXPECT_THROW(pool.run_parts(50,
                                [&](std::size_t i) {
                                    ran.fetch_add(1);
                                    if (i == 7) {
                                        throw std::runtime_error("part 7");
                                    }
                                }),
                 std::runtime_error);
    EXPECT_EQ(ran.load(), 50);
}

// Two parts that each wait (bounded) for the other to start can only both finish if they
// run at the same time: on the caller and on a free worker.
TEST(WorkerPool, RunPartsUsesAFreeWorker) {
    worker_pool pool(2);
    std::mutex m;
    std::set<std::thread::id> threads;
    std::promise<void> first_started;
    std::shared_future<void> started = first_started.get_future().share();
    std::atomic<int> arrived{0};
    std::atomic<bool> met{false};
    pool.run_parts(2, [&](std::size_t) {
        {
            std::lock_guard lock(m);
            threads.insert(std::this_thread::get_id());
        }
        if (arrived.fetch_add(1) == 0) {
            first_started.set_value();
            auto until = std::chrono::steady_clock::now() + std::chrono::seconds(10);
            while (arrived.load() < 2 && std::chrono::steady_clock::now() < until) {
                std::this_thread::yield();
            }
            met = arrived.load() == 2;
        } else {
            started.wait();
        }
    });
    EXPECT_TRUE(met);
    EXPECT_EQ(threads.size(), 2u);
}

// Every worker calls run_parts from its own task at once: no helper can start, so each
// caller runs all its parts itself, and none waits for the other.
TEST(WorkerPool, RunPartsFromEveryWorkerAtOnceFinishes) {
    worker_pool pool(2);
    std::atomic<std::size_t> total{0};
    std::vector<std::promise<void>> done(2);
    std::atomic<int> inside{0};
    for (auto& d : done) {
        pool.post([&pool, &total, &inside, &d] {
            inside.fetch_add(1);
            auto until = std::chrono::steady_clock::now() + std::chrono::seconds(10);
            while (inside.load() < 2 && std::chrono::steady_clock::now() < until) {
                std::this_thread::yield();  // both workers busy before either splits its work
            }
            pool.run_parts(100, [&](std::size_t) { total.fetch_add(1); });
            d.set_value();
        });
    }
    for (auto& d : done) {
        ASSERT_EQ(d.get_future().wait_for(std::chrono::seconds(30)), std::future_status::ready);
    }
    EXPECT_EQ(total.load(), 200u);
}

}  // namespace
}  // namespace ferry
