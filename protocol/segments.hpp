// segments: a sequence made of vectors taken whole, indexed as one. Elements never move
// while more are appended (each vector keeps its own storage), and a vector handed over is
// kept as it is: a scan's 200,000 entries become the sender's without a second array of
// them alive at the same time, as a std::deque built from them needs (22 MB at 200,000
// files, heaptrack).
#pragma once

#include <algorithm>
#include <cstddef>
#include <stdexcept>
#include <utility>
#include <vector>

namespace ferry {

template <typename T>
class segments {
public:
    segments() = default;
    explicit segments(std::vector<T> first) { append(std::move(first)); }

    void append(std::vector<T> more) {
        if (more.empty()) {
            return;
        }
        starts_.push_back(size_);
        size_ += more.size();
        parts_.push_back(std::move(more));
    }

    std::size_t size() const { return size_; }
    bool empty() const { return size_ == 0; }

    // Frees the vectors that hold only elements before `i`; their indexes stay taken (the
    // rest keep theirs) and are out of range from now on. Elements at `i` on stay.
    void drop_before(std::size_t i) {
        while (dropped_ < parts_.size() && starts_[dropped_] + parts_[dropped_].size() <= i) {
            std::vector<T>().swap(parts_[dropped_]);
            ++dropped_;
        }
    }
    // The first index not dropped (size() when every vector went).
    std::size_t first_held() const { return dropped_ < starts_.size() ? starts_[dropped_] : size_; }

    T& operator[](std::size_t i) { return locate(i); }
    const T& operator[](std::size_t i) const { return const_cast<segments*>(this)->locate(i); }
    T& at(std::size_t i) {
        if (i >= size_ || i < first_held()) {
            throw std::out_of_range("segments::at");
        }
        return locate(i);
    }
    const T& at(std::size_t i) const { return const_cast<segments*>(this)->at(i); }

private:
    T& locate(std::size_t i) {
        if (parts_.size() == 1) {
            return parts_.front()[i];
        }
        std::size_t p = static_cast<std::size_t>(std::upper_bound(starts_.begin(), starts_.end(), i) - starts_.begin()) - 1;
        return parts_[p][i - starts_[p]];
    }

    std::vector<std::vector<T>> parts_;
    std::vector<std::size_t> starts_;  // index of each part's first element
    std::size_t size_ = 0;
    std::size_t dropped_ = 0;  // parts_[0, dropped_) are freed (drop_before)
};

}  // namespace ferry
