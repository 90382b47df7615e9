#include "tests/support/process.hpp"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <stdexcept>
#include <system_error>

namespace ferry::test {

namespace {

int pidfd_open(pid_t pid) { return static_cast<int>(::syscall(SYS_pidfd_open, pid, 0)); }

}  // namespace

child_process::child_process(const std::vector<std::string>& argv, const std::vector<std::string>& env) {
    int out[2];
    int err[2];
    if (::pipe2(out, O_CLOEXEC) != 0 || ::pipe2(err, O_CLOEXEC) != 0) {
        throw std::system_error(errno, std::generic_category(), "pipe");
    }
    pid_ = ::fork();
    if (pid_ < 0) {
        throw std::system_error(errno, std::generic_category(), "fork");
    }
    if (pid_ == 0) {
        ::dup2(out[1], 1);
        ::dup2(err[1], 2);
        int devnull = ::open("/dev/null", O_RDONLY);
        ::dup2(devnull, 0);
        for (const std::string& e : env) {
            ::putenv(const_cast<char*>(e.c_str()));
        }
        std::vector<char*> args;
        for (const std::string& a : argv) {
            args.push_back(const_cast<char*>(a.c_str()));
        }
        args.push_back(nullptr);
        ::execv(args[0], args.data());
        ::_exit(127);
    }
    ::close(out[1]);
    ::close(err[1]);
    out_fd_ = out[0];
    err_fd_ = err[0];
    ::fcntl(err_fd_, F_SETFL, O_NONBLOCK);
    pidfd_ = pidfd_open(pid_);
}

child_process::~child_process() {
    if (!status_ && pid_ > 0) {
        ::kill(pid_, SIGKILL);
        int st = 0;
        ::waitpid(pid_, &st, 0);
    }
    for (int fd : {out_fd_, err_fd_, pidfd_}) {
        if (fd >= 0) {
            ::close(fd);
        }
    }
}

std::optional<std::string> child_process::read_line(std::chrono::milliseconds timeout) {
    auto deadline = std::chrono::steady_clock::now() + timeout;
    for (;;) {
        if (auto nl = out_buf_.find('\n'); nl != std::string::npos) {
            std::string line = out_buf_.substr(0, nl);
            out_buf_.erase(0, nl + 1);
            return line;
        }
        auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now());
        if (left.count() <= 0 || out_fd_ < 0) {
            return std::nullopt;
        }
        pollfd p{out_fd_, POLLIN, 0};
        if (::poll(&p, 1, static_cast<int>(left.count())) <= 0) {
            return std::nullopt;
        }
        char buf[4096];
        ssize_t n = ::read(out_fd_, buf, sizeof(buf));
        if (n <= 0) {
            ::close(out_fd_);
            out_fd_ = -1;
            continue;
        }
        out_buf_.append(buf, static_cast<std::size_t>(n));
    }
}

std::optional<int> child_process::wait(std::chrono::milliseconds timeout) {
    if (status_) {
        return status_;
    }
    pollfd p{pidfd_, POLLIN, 0};
    if (pidfd_ >= 0 && ::poll(&p, 1, static_cast<int>(timeout.count())) <= 0) {
        return std::nullopt;
    }
    int st = 0;
    if (::waitpid(pid_, &st, 0) != pid_) {
        return std::nullopt;
    }
    status_ = WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
    return status_;
}

void child_process::signal(int sig) {
    if (!status_) {
        ::kill(pid_, sig);
    }
}

void child_process::drain(int fd, std::string& into, bool block_until_eof) {
    if (fd < 0) {
        return;
    }
    char buf[4096];
    for (;;) {
        ssize_t n = ::read(fd, buf, sizeof(buf));
        if (n > 0) {
            into.append(buf, static_cast<std::size_t>(n));
            continue;
        }
        if (n < 0 && errno == EAGAIN && block_until_eof) {
            pollfd p{fd, POLLIN, 0};
            if (::poll(&p, 1, 5000) > 0) {
                continue;
            }
        }
        return;
    }
}

std::string child_process::err() {
    drain(err_fd_, err_buf_, status_.has_value());
    return err_buf_;
}

std::string child_process::out() {
    if (status_) {
        drain(out_fd_, out_buf_, true);
    }
    return out_buf_;
}

run_result run(const std::vector<std::string>& argv, std::chrono::milliseconds timeout) {
    child_process c(argv);
    run_result r;
    std::optional<int> code = c.wait(timeout);
    r.code = code ? *code : -1;
    r.out = c.out();
    r.err = c.err();
    return r;
}

}  // namespace ferry::test
