// Exponential backoff with jitter for reconnects (a lost data connection, a lost receiver).
#pragma once

#include <algorithm>
#include <chrono>
#include <cmath>
#include <random>

namespace ferry {

// The wait before retry `attempt` (0-based): `base` doubling up to `cap`, drawn between
// half and all of that, so that peers cut off together do not come back in step.
inline std::chrono::milliseconds backoff_delay(unsigned attempt, std::chrono::milliseconds base,
                                               std::chrono::milliseconds cap) {
    static thread_local std::mt19937_64 rng{std::random_device{}()};
    double top = std::min(static_cast<double>(cap.count()),
                          static_cast<double>(base.count()) * std::ldexp(1.0, static_cast<int>(std::min(attempt, 20u))));
    return std::chrono::milliseconds(std::llround(std::uniform_real_distribution<double>(top / 2, top)(rng)));
}

}  // namespace ferry
