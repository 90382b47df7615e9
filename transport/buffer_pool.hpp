// A bounded pool of chunk buffers.
//
// Buffers move between the loop thread and the worker pool, so acquire/release are
// thread-safe (one uncontended mutex). The bound, max_buffers x capacity bytes, is the
// memory limit for chunk data in flight on one node side. A payload of up to a quarter
// of the capacity (a small file's only chunk) takes a buffer of its own size, rounded up
// to whole pages with room for one byte more, so thousands of small files fit in the
// bound that holds max_buffers whole chunks. Released buffers are kept for reuse: the
// whole-size ones, and small ones by their number of pages up to a quarter of the bound
// (many small files would otherwise cost a malloc, a free from another thread and fresh
// pages each); idle ones are freed when another size needs their room. When the bound is reached, acquire() fails and
// the caller waits for notify_when_available(), which runs the callback (from whichever
// thread released the buffer: the callback must post to its own executor).
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
    pooled_buffer(pooled_buffer&& o) noexcept
        : pool_(std::move(o.pool_)), data_(o.data_), size_(o.size_), capacity_(o.capacity_) {
        o.data_ = nullptr;
        o.size_ = 0;
        o.capacity_ = 0;
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
    // Bytes this buffer holds: at least size() + 1 for a small one, the pool's capacity
    // for a whole-size one.
    std::size_t capacity() const { return capacity_; }
    std::span<std::uint8_t> span() const { return {data_, size_}; }

private:
    friend class buffer_pool;
    pooled_buffer(std::shared_ptr<buffer_pool> pool, std::uint8_t* data, std::size_t size, std::size_t capacity)
        : pool_(std::move(pool)), data_(data), size_(size), capacity_(capacity) {}

    std::shared_ptr<buffer_pool> pool_;
    std::uint8_t* data_ = nullptr;
    std::size_t size_ = 0;
    std::size_t capacity_ = 0;
};

class buffer_pool : public std::enable_shared_from_this<buffer_pool> {
public:
    static std::shared_ptr<buffer_pool> make(std::size_t max_buffers, std::size_t buffer_capacity);
    ~buffer_pool();

    // A buffer of `size` bytes (<= capacity), or an empty handle if the pool is exhausted.
    pooled_buffer acquire(std::size_t size);
    // Runs `fn` once, now if a buffer of `size` bytes may be had, else when a buffer is
    // next released.
    void notify_when_available(std::size_t size, std::function<void()> fn);

    std::size_t capacity() const { return capacity_; }
    std::size_t in_use() const;  // buffers handed out and not yet released
    std::size_t max_buffers() const { return max_; }
    std::size_t bytes_allocated() const;  // small buffers in use plus whole-size ones held
    std::uint64_t exhausted_count() const;  // times acquire() found the pool empty
    // The bytes a small buffer for `size` takes (0: `size` takes a whole-size buffer).
    std::size_t small_capacity(std::size_t size) const;

private:
    friend class pooled_buffer;
    buffer_pool(std::size_t max_buffers, std::size_t capacity);
    void release(std::uint8_t* data, std::size_t capacity);
    std::size_t buffer_capacity(std::size_t size) const;
    bool room_for(std::size_t capacity) const;  // with mutex_ held

    const std::size_t max_;
    const std::size_t capacity_;
    const std::size_t budget_;  // bytes
    mutable std::mutex mutex_;
    std::vector<std::uint8_t*> free_;  // whole-size buffers kept for reuse
    // Small buffers kept for reuse: [pages - 1], and the bytes they hold (at most a
    // quarter of the bound).
    std::vector<std::vector<std::uint8_t*>> small_free_;
    std::size_t small_idle_bytes_ = 0;
    // Frees idle buffers (whole-size first) until `need` more bytes fit in the bound.
    void make_room(std::size_t need);  // with mutex_ held
    std::size_t allocated_bytes_ = 0;
    std::size_t in_use_ = 0;
    std::uint64_t exhausted_ = 0;
    std::vector<std::function<void()>> waiters_;
};

}  // namespace ferry
