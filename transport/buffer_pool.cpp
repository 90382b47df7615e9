#include "transport/buffer_pool.hpp"

#include <cstdlib>

namespace ferry {

pooled_buffer& pooled_buffer::operator=(pooled_buffer&& o) noexcept {
    if (this != &o) {
        reset();
        pool_ = std::move(o.pool_);
        data_ = o.data_;
        size_ = o.size_;
        o.data_ = nullptr;
        o.size_ = 0;
    }
    return *this;
}

void pooled_buffer::reset() {
    if (data_ != nullptr && pool_) {
        pool_->release(data_);
    }
    pool_.reset();
    data_ = nullptr;
    size_ = 0;
}

std::size_t pooled_buffer::capacity() const { return pool_ ? pool_->capacity() : 0; }

std::shared_ptr<buffer_pool> buffer_pool::make(std::size_t max_buffers, std::size_t buffer_capacity) {
    return std::shared_ptr<buffer_pool>(new buffer_pool(max_buffers, buffer_capacity));
}

buffer_pool::~buffer_pool() {
    for (std::uint8_t* p : free_) {
        std::free(p);
    }
}

pooled_buffer buffer_pool::acquire(std::size_t size) {
    std::uint8_t* data = nullptr;
    {
        std::lock_guard lock(mutex_);
        if (size > capacity_) {
            return {};
        }
        if (!free_.empty()) {
            data = free_.back();
            free_.pop_back();
        } else if (allocated_ < max_) {
            // Page-aligned so that reads and writes of whole chunks stay page-aligned.
            data = static_cast<std::uint8_t*>(std::aligned_alloc(4096, (capacity_ + 4095) / 4096 * 4096));
            if (data == nullptr) {
                return {};
            }
            ++allocated_;
        } else {
            ++exhausted_;
            return {};
        }
        ++in_use_;
    }
    return pooled_buffer(shared_from_this(), data, size);
}

void buffer_pool::release(std::uint8_t* data) {
    std::vector<std::function<void()>> wake;
    {
        std::lock_guard lock(mutex_);
        free_.push_back(data);
        --in_use_;
        wake.swap(waiters_);
    }
    for (auto& fn : wake) {
        fn();
    }
}

void buffer_pool::notify_when_available(std::function<void()> fn) {
    std::unique_lock lock(mutex_);
    if (!free_.empty() || allocated_ < max_) {
        lock.unlock();
        fn();
        return;
    }
    waiters_.push_back(std::move(fn));
}

std::size_t buffer_pool::in_use() const {
    std::lock_guard lock(mutex_);
    return in_use_;
}

std::uint64_t buffer_pool::exhausted_count() const {
    std::lock_guard lock(mutex_);
    return exhausted_;
}

}  // namespace ferry
