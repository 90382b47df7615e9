// A bounded pool of chunk buffers (each max_payload_len bytes capacity).
//
// Buffers move between the loop thread and the worker pool, so acquire/release are
// thread-safe (one uncontended mutex). The bound is the memory limit for chunk data in
// flight on one node side; when it is reached, acquire() fails and the caller waits for
// notify_when_available(), which runs the callback (from whichever thread released the
// buffer: the callback must post to its own executor).
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <span>
#include <vector>

namespace ferry {

class buffer_pool;

class pooled_buffer {
public:
    pooled_buffer() = default;
    pooled_buffer(pooled_buffer&& o) noexcept : pool_(o.pool_), data_(o.data_), size_(o.size_) {
        o.pool_ = nullptr;
        o.data_ = nullptr;
        o.size_ = 0;
    }
    pooled_buffer& operator=(pooled_buffer&& o) noexcept;
    pooled_buffer(const pooled_buffer&) = delete;
    pooled_buffer& operator=(const pooled_buffer&) = delete;
    ~pooled_buffer() { reset(); }

    void reset();
    explicit operator bool() const { return data_ != nullptr; }
    std::uint8_t* data() const { return data_; }
    std::size_t size() const { return size_; }
    void resize(std::size_t n) { size_ = n; }  // n <= capacity()
    std::size_t capacity() const;
    std::span<std::uint8_t> span() const { return {data_, size_}; }

private:
    friend class buffer_pool;
    pooled_buffer(std::shared_ptr<buffer_pool> pool, std::uint8_t* data, std::size_t size)
        : pool_(std::move(pool)), data_(data), size_(size) {}

    std::shared_ptr<buffer_pool> pool_;
    std::uint8_t* data_ = nullptr;
    std::size_t size_ = 0;
};

class buffer_pool : public std::enable_shared_from_this<buffer_pool> {
public:
    static std::shared_ptr<buffer_pool> make(std::size_t max_buffers, std::size_t buffer_capacity);
    ~buffer_pool();

    // A buffer of `size` bytes (<= capacity), or an empty handle if the pool is exhausted.
    pooled_buffer acquire(std::size_t size);
    // Runs `fn` once, when a buffer is next released.
    void notify_when_available(std::function<void()> fn);

    std::size_t capacity() const { return capacity_; }
    std::size_t in_use() const;
    std::size_t max_buffers() const { return max_; }
    std::uint64_t exhausted_count() const;  // times acquire() found the pool empty

private:
    friend class pooled_buffer;
    buffer_pool(std::size_t max_buffers, std::size_t capacity) : max_(max_buffers), capacity_(capacity) {}
    void release(std::uint8_t* data);

    const std::size_t max_;
    const std::size_t capacity_;
    mutable std::mutex mutex_;
    std::vector<std::uint8_t*> free_;
    std::size_t allocated_ = 0;
    std::size_t in_use_ = 0;
    std::uint64_t exhausted_ = 0;
    std::vector<std::function<void()>> waiters_;
};

}  // namespace ferry
