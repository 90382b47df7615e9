#include "tests/support/process.hpp"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <sys/eventfd.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdint>
#include <stdexcept>
#include <string_view>
#include <system_error>

namespace ferry::test {

namespace {

int pidfd_open(pid_t pid) { return static_cast<int>(::syscall(SYS_pidfd_open, pid, 0)); }

constexpr std::chrono::seconds eof_timeout{5};

}  // namespace

child_process::child_process(const std::vector<std::string>& argv, const std::vector<std::string>& env) {
    int out[2];
    int err[2];
    if (::pipe2(out, O_CLOEXEC) != 0 || ::pipe2(err, O_CLOEXEC) != 0) {
        throw std::system_error(errno, std::generic_category(), "pipe");
    }
    // Everything the child needs is built before fork(): other children's pump threads
    // may hold the allocator's lock at that moment.
    std::vector<char*> args;
    for (const std::string& a : argv) {
        args.push_back(const_cast<char*>(a.c_str()));
    }
    args.push_back(nullptr);
    std::vector<char*> envp;
    auto overridden = [&env](const char* entry) {
        std::string_view v(entry);
        std::string_view name = v.substr(0, v.find('='));
        for (const std::string& e : env) {
            if (std::string_view(e).substr(0, e.find('=')) == name) {
                return true;
            }
        }
        return false;
    };
    for (char** e = environ; *e != nullptr; ++e) {
        if (!overridden(*e)) {
            envp.push_back(*e);
        }
    }
    for (const std::string& e : env) {
        envp.push_back(const_cast<char*>(e.c_str()));
    }
    // A ferry a test starts reads no configuration file of the user running the tests
    // (docs/config.md: $FERRY_CONFIG, then $XDG_CONFIG_HOME), unless `env` names one.
    static const std::string no_config = "FERRY_CONFIG=";
    static const std::string no_config_home = "XDG_CONFIG_HOME=/nonexistent/ferry-tests";
    // Nor does it wait for a long round trip before opening the connections above the
    // first (loopback has none): the tests of many connections get them, as `--connections
    // N` would. The tests of that choice set FERRY_WIDEN_RTT_US themselves.
    static const std::string widen_at_once = "FERRY_WIDEN_RTT_US=0";
    for (const std::string* d : {&no_config, &no_config_home, &widen_at_once}) {
        if (!overridden(d->c_str())) {
            envp.push_back(const_cast<char*>(d->c_str()));
        }
    }
    envp.push_back(nullptr);
    // posix_spawn, not fork: glibc starts the child in the parent's memory (clone with
    // CLONE_VM|CLONE_VFORK), so a sanitized test process (gigabytes of shadow mappings)
    // neither copies its page tables nor takes a copy-on-write fault on every page it
    // writes while a child lives. Each child starts from the default signal actions and an
    // empty mask, whatever the test runner ignores or blocks (nohup ignores SIGHUP).
    posix_spawn_file_actions_t actions;
    posix_spawnattr_t attr;
    posix_spawn_file_actions_init(&actions);
    posix_spawn_file_actions_adddup2(&actions, out[1], 1);
    posix_spawn_file_actions_adddup2(&actions, err[1], 2);
    posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0);
    posix_spawnattr_init(&attr);
    sigset_t defaults;
    sigemptyset(&defaults);
    for (int sig : {SIGHUP, SIGINT, SIGTERM}) {
        sigaddset(&defaults, sig);
    }
    sigset_t none;
    sigemptyset(&none);
    posix_spawnattr_setsigdefault(&attr, &defaults);
    posix_spawnattr_setsigmask(&attr, &none);
    posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETSIGDEF | POSIX_SPAWN_SETSIGMASK);
    int spawned = ::posix_spawn(&pid_, args[0], &actions, &attr, args.data(), envp.data());
    posix_spawnattr_destroy(&attr);
    posix_spawn_file_actions_destroy(&actions);
    if (spawned != 0) {
        for (int fd : {out[0], out[1], err[0], err[1]}) {
            ::close(fd);
        }
        pid_ = -1;
        throw std::system_error(spawned, std::generic_category(), "posix_spawn " + argv.at(0));
    }
    ::close(out[1]);
    ::close(err[1]);
    out_fd_ = out[0];
    err_fd_ = err[0];
    pidfd_ = pidfd_open(pid_);
    stop_fd_ = ::eventfd(0, EFD_CLOEXEC);
    pump_ = std::thread([this] { pump(); });
}

child_process::~child_process() {
    if (!status_ && pid_ > 0) {
        ::kill(pid_, SIGKILL);
        int st = 0;
        ::waitpid(pid_, &st, 0);
    }
    std::uint64_t one = 1;
    (void)!::write(stop_fd_, &one, sizeof(one));
    pump_.join();
    for (int fd : {out_fd_, err_fd_, pidfd_, stop_fd_}) {
        if (fd >= 0) {
            ::close(fd);
        }
    }
}

void child_process::pump() {
    bool out_open = true;
    bool err_open = true;
    while (out_open || err_open) {
        pollfd p[3] = {{out_open ? out_fd_ : -1, POLLIN, 0}, {err_open ? err_fd_ : -1, POLLIN, 0}, {stop_fd_, POLLIN, 0}};
        if (::poll(p, 3, -1) < 0) {
            if (errno == EINTR) {
                continue;
            }
            break;
        }
        if (p[2].revents != 0) {
            break;
        }
        for (int i = 0; i < 2; ++i) {
            if (p[i].revents == 0) {
                continue;
            }
            char buf[65536];
            ssize_t n = ::read(p[i].fd, buf, sizeof(buf));
            std::lock_guard lock(mutex_);
            if (n > 0) {
                (i == 0 ? out_buf_ : err_buf_).append(buf, static_cast<std::size_t>(n));
            } else if (n == 0 || errno != EINTR) {
                (i == 0 ? out_open : err_open) = false;
            }
        }
        changed_.notify_all();
    }
    std::lock_guard lock(mutex_);
    out_eof_ = true;
    err_eof_ = true;
    changed_.notify_all();
}

void child_process::wait_for_eof() {
    std::unique_lock lock(mutex_);
    changed_.wait_for(lock, eof_timeout, [this] { return out_eof_ && err_eof_; });
}

std::optional<std::string> child_process::read_line(std::chrono::milliseconds timeout) {
    std::unique_lock lock(mutex_);
    std::size_t nl = std::string::npos;
    changed_.wait_for(lock, timeout, [&] {
        nl = out_buf_.find('\n');
        return nl != std::string::npos || out_eof_;
    });
    if (nl == std::string::npos) {
        return std::nullopt;
    }
    std::string line = out_buf_.substr(0, nl);
    out_buf_.erase(0, nl + 1);
    return line;
}

std::optional<std::string> child_process::wait_for_err(std::string_view needle, std::chrono::milliseconds timeout) {
    std::unique_lock lock(mutex_);
    auto found = [&] { return err_buf_.find(needle) != std::string::npos; };
    changed_.wait_for(lock, timeout, [&] { return found() || err_eof_; });
    if (!found()) {
        return std::nullopt;
    }
    return err_buf_;
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

std::string child_process::err() {
    if (status_) {
        wait_for_eof();
    }
    std::lock_guard lock(mutex_);
    return err_buf_;
}

std::string child_process::out() {
    if (status_) {
        wait_for_eof();
    }
    std::lock_guard lock(mutex_);
    return out_buf_;
}

std::size_t lines_with(const std::string& text, std::string_view needle) {
    std::size_t n = 0;
    std::size_t start = 0;
    while (start < text.size()) {
        std::size_t nl = text.find('\n', start);
        std::string_view line = std::string_view(text).substr(start, nl == std::string::npos ? nl : nl - start);
        n += line.find(needle) != std::string_view::npos ? 1 : 0;
        start = nl == std::string::npos ? text.size() : nl + 1;
    }
    return n;
}

run_result run(const std::vector<std::string>& argv, std::chrono::milliseconds timeout,
               const std::vector<std::string>& env) {
    child_process c(argv, env);
    run_result r;
    std::optional<int> code = c.wait(timeout);
    r.code = code ? *code : -1;
    r.out = c.out();
    r.err = c.err();
    return r;
}

}  // namespace ferry::test
