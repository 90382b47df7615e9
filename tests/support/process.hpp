// child_process: runs a program (the real ferry binary) with its stdout and stderr
// piped, for end-to-end tests. A pump thread reads both pipes as the child writes, so a
// chatty child (a --json receiver nobody reads yet) never blocks on a full pipe. Every
// wait is bounded: read_line() waits on the pump with a timeout, wait() polls a pidfd.
#pragma once

#include <sys/types.h>

#include <chrono>
#include <condition_variable>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

namespace ferry::test {

class child_process {
public:
    explicit child_process(const std::vector<std::string>& argv, const std::vector<std::string>& env = {});
    ~child_process();  // kills (SIGKILL) and reaps a child still running
    child_process(const child_process&) = delete;
    child_process& operator=(const child_process&) = delete;

    // Next line of stdout (without '\n'), or nullopt on timeout or end of output.
    std::optional<std::string> read_line(std::chrono::milliseconds timeout);
    // Exit code (128 + signal if killed by one), or nullopt on timeout.
    std::optional<int> wait(std::chrono::milliseconds timeout);
    void signal(int sig);
    // Waits until stderr contains `needle` and returns all of it so far, or nullopt if the
    // timeout passed or stderr ended first.
    std::optional<std::string> wait_for_err(std::string_view needle, std::chrono::milliseconds timeout);
    // Everything the child wrote to stderr so far (non-blocking), and the rest of stdout.
    std::string err();
    std::string out();
    pid_t pid() const { return pid_; }

private:
    void pump();
    // Waits (bounded) until the pump has seen the end of both pipes.
    void wait_for_eof();

    pid_t pid_ = -1;
    int pidfd_ = -1;
    int out_fd_ = -1;
    int err_fd_ = -1;
    int stop_fd_ = -1;  // eventfd: tells the pump to give up
    std::optional<int> status_;

    std::mutex mutex_;
    std::condition_variable changed_;
    std::string out_buf_;  // guarded by mutex_; lines read_line() returned are removed
    std::string err_buf_;
    bool out_eof_ = false;
    bool err_eof_ = false;
    std::thread pump_;
};

// How many lines of `text` (a child's stderr, say) contain `needle`.
std::size_t lines_with(const std::string& text, std::string_view needle);

// Runs a command to completion (bounded) and returns {exit code, stdout, stderr}.
struct run_result {
    int code = -1;
    std::string out;
    std::string err;
};
run_result run(const std::vector<std::string>& argv, std::chrono::milliseconds timeout = std::chrono::seconds(60),
               const std::vector<std::string>& env = {});

}  // namespace ferry::test
