#include "transport/buffer_pool.hpp"

#include <cstdlib>

namespace ferry {

namespace {

constexpr std::size_t page = 4096;

std::size_t whole_pages(std::size_t n) { return (n + page - 1) / page * page; }

}  // namespace

pooled_buffer& pooled_buffer::operator=(pooled_buffer&& o) noexcept {
    if (this != &o) {
        reset();
        pool_ = std::move(o.pool_);
        data_ = o.data_;
        size_ = o.size_;
        capacity_ = o.capacity_;
        o.data_ = nullptr;
        o.size_ = 0;
        o.capacity_ = 0;
    }
    return *this;
}

void pooled_buffer::reset() {
    if (data_ != nullptr && pool_) {
        pool_->release(data_, capacity_);
    }
    pool_.reset();
    data_ = nullptr;
    size_ = 0;
    capacity_ = 0;
}

buffer_pool::buffer_pool(std::size_t max_buffers, std::size_t capacity)
    : max_(max_buffers), capacity_(capacity), budget_(max_buffers * whole_pages(capacity)),
      small_free_(whole_pages(capacity / 4 + 1) / page) {}

std::shared_ptr<buffer_pool> buffer_pool::make(std::size_t max_buffers, std::size_t buffer_capacity) {
    return std::shared_ptr<buffer_pool>(new buffer_pool(max_buffers, buffer_capacity));
}

buffer_pool::~buffer_pool() {
    for (std::uint8_t* p : free_) {
        std::free(p);
    }
    for (const auto& kept : small_free_) {
        for (std::uint8_t* p : kept) {
            std::free(p);
        }
    }
}

std::size_t buffer_pool::small_capacity(std::size_t size) const {
    // Room for one byte more: a sender reads a small file whole plus one byte, to see
    // that it did not grow without an fstat.
    std::size_t n = whole_pages(size + 1);
    return size <= capacity_ / 4 && n < capacity_ ? n : 0;
}

std::size_t buffer_pool::buffer_capacity(std::size_t size) const {
    std::size_t small = small_capacity(size);
    return small != 0 ? small : capacity_;
}

bool buffer_pool::room_for(std::size_t capacity) const {
    if (capacity == capacity_ && !free_.empty()) {
        return true;
    }
    if (capacity != capacity_ && !small_free_[capacity / page - 1].empty()) {
        return true;
    }
    std::size_t idle = free_.size() * whole_pages(capacity_) + small_idle_bytes_;
    return allocated_bytes_ - idle + whole_pages(capacity) <= budget_;
}

void buffer_pool::make_room(std::size_t need) {
    while (allocated_bytes_ + need > budget_ && !free_.empty()) {
        std::free(free_.back());
        free_.pop_back();
        allocated_bytes_ -= whole_pages(capacity_);
    }
    for (std::size_t c = small_free_.size(); c-- > 0 && allocated_bytes_ + need > budget_;) {
        std::vector<std::uint8_t*>& kept = small_free_[c];
        while (!kept.empty() && allocated_bytes_ + need > budget_) {
            std::free(kept.back());
            kept.pop_back();
            allocated_bytes_ -= (c + 1) * page;
            small_idle_bytes_ -= (c + 1) * page;
        }
    }
}

pooled_buffer buffer_pool::acquire(std::size_t size) {
    std::size_t cap = buffer_capacity(size);
    bool small = cap != capacity_;
    std::uint8_t* data = nullptr;
    {
        std::lock_guard lock(mutex_);
        if (size > capacity_) {
            return {};
        }
        std::vector<std::uint8_t*>& kept = small ? small_free_[cap / page - 1] : free_;
        if (!kept.empty()) {
            data = kept.back();
            kept.pop_back();
            if (small) {
                small_idle_bytes_ -= cap;
            }
            ++in_use_;
            return pooled_buffer(shared_from_this(), data, size, cap);
        }
        // Idle buffers of other sizes give their room.
        std::size_t alloc = whole_pages(cap);
        make_room(alloc);
        if (allocated_bytes_ + alloc > budget_) {
            ++exhausted_;
            return {};
        }
        // Page-aligned so that reads and writes of whole chunks stay page-aligned.
        data = static_cast<std::uint8_t*>(std::aligned_alloc(page, alloc));
        if (data == nullptr) {
            return {};
        }
        allocated_bytes_ += alloc;
        ++in_use_;
    }
    return pooled_buffer(shared_from_this(), data, size, cap);
}

void buffer_pool::release(std::uint8_t* data, std::size_t capacity) {
    std::vector<std::function<void()>> wake;
    {
        std::lock_guard lock(mutex_);
        if (capacity == capacity_) {
            free_.push_back(data);
        } else if (small_idle_bytes_ + capacity <= budget_ / 4) {
            small_free_[capacity / page - 1].push_back(data);
            small_idle_bytes_ += capacity;
        } else {
            std::free(data);
            allocated_bytes_ -= whole_pages(capacity);
        }
        --in_use_;
        wake.swap(waiters_);
    }
    for (auto& fn : wake) {
        fn();
    }
}

void buffer_pool::notify_when_available(std::size_t size, std::function<void()> fn) {
    std::unique_lock lock(mutex_);
    if (room_for(buffer_capacity(size))) {
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

std::size_t buffer_pool::bytes_allocated() const {
    std::lock_guard lock(mutex_);
    return allocated_bytes_;
}

std::uint64_t buffer_pool::exhausted_count() const {
    std::lock_guard lock(mutex_);
    return exhausted_;
}

}  // namespace ferry
