#include "tests/support/fault_proxy.hpp"

#include <algorithm>
#include <array>
#include <future>

namespace ferry::test {

struct fault_proxy::link {
    link(asio::io_context& io, asio::ip::tcp::socket c) : client(std::move(c)), server(io) {}
    asio::ip::tcp::socket client;
    asio::ip::tcp::socket server;
    std::array<std::array<std::uint8_t, 64 * 1024>, 2> buf{};  // [0] down, [1] up
    bool done[2] = {false, false};                              // that direction saw EOF
    bool closed = false;
};

namespace {

asio::ip::tcp::endpoint parse(const std::string& hostport) {
    auto colon = hostport.rfind(':');
    return {asio::ip::make_address(hostport.substr(0, colon)),
            static_cast<unsigned short>(std::stoi(hostport.substr(colon + 1)))};
}

}  // namespace

fault_proxy::fault_proxy(const std::string& target)
    : acceptor_(io_, asio::ip::tcp::endpoint(asio::ip::make_address("127.0.0.1"), 0)), target_(parse(target)) {
    address_ = "127.0.0.1:" + std::to_string(acceptor_.local_endpoint().port());  // before the loop thread runs
    accept();
    thread_ = std::thread([this] { io_.run(); });
}

fault_proxy::~fault_proxy() {
    asio::post(io_, [this] {
        std::error_code ignored;
        acceptor_.close(ignored);
        for (auto& w : links_) {
            if (auto l = w.lock()) {
                reset(*l);
            }
        }
        parked_.clear();
        io_.stop();
    });
    thread_.join();
}

std::string fault_proxy::address() const { return address_; }

void fault_proxy::accept() {
    acceptor_.async_accept([this](std::error_code ec, asio::ip::tcp::socket s) {
        if (ec) {
            return;
        }
        auto l = std::make_shared<link>(io_, std::move(s));
        links_.push_back(l);
        ++accepted_;
        ++open_;
        notify();
        l->server.async_connect(target_, [this, l](std::error_code ec) {
            if (ec) {
                reset(*l);
                return;
            }
            start_link(l);
        });
        accept();
    });
}

void fault_proxy::start_link(std::shared_ptr<link> l) {
    asio::ip::tcp::no_delay nd(true);
    std::error_code ignored;
    l->client.set_option(nd, ignored);
    l->server.set_option(nd, ignored);
    pump(l, true);
    pump(l, false);
}

void fault_proxy::pump(std::shared_ptr<link> l, bool up) {
    if (l->closed) {
        return;
    }
    if (stalled_) {
        parked_.push_back([this, l, up] { pump(l, up); });
        return;
    }
    auto& src = up ? l->client : l->server;
    auto& dst = up ? l->server : l->client;
    src.async_read_some(asio::buffer(l->buf[up]), [this, l, up, &dst](std::error_code ec, std::size_t n) {
        if (l->closed) {
            return;
        }
        if (ec == asio::error::eof) {
            // Pass the FIN on; the other direction goes on until it ends too.
            std::error_code ignored;
            dst.shutdown(asio::socket_base::shutdown_send, ignored);
            l->done[up] = true;
            if (l->done[!up]) {
                l->closed = true;
                l->client.close(ignored);
                l->server.close(ignored);
                --open_;
                notify();
            }
            return;
        }
        if (ec) {
            reset(*l);
            return;
        }
        forward(l, up, 0, n);
    });
}

void fault_proxy::forward(std::shared_ptr<link> l, bool up, std::size_t off, std::size_t len) {
    if (l->closed) {
        return;
    }
    while (up && !triggers_.empty() && up_bytes_.load() >= triggers_.front().at) {
        auto action = std::move(triggers_.front().action);
        triggers_.erase(triggers_.begin());
        action(*this);
        if (l->closed) {
            return;
        }
    }
    if (stalled_) {
        parked_.push_back([this, l, up, off, len] { forward(l, up, off, len); });
        return;
    }
    std::size_t now = len;
    if (up && !triggers_.empty()) {
        now = static_cast<std::size_t>(std::min<std::uint64_t>(len, triggers_.front().at - up_bytes_.load()));
    }
    auto write = [this, l, up, off, len, now] {
        if (l->closed) {
            return;
        }
        auto& dst = up ? l->server : l->client;
        asio::async_write(dst, asio::buffer(l->buf[up].data() + off, now),
                          [this, l, up, off, len, now](std::error_code ec, std::size_t) {
                              if (l->closed) {
                                  return;
                              }
                              if (ec) {
                                  reset(*l);
                                  return;
                              }
                              if (up) {
                                  up_bytes_ += now;
                                  notify();
                              }
                              if (now < len) {
                                  forward(l, up, off + now, len - now);
                              } else {
                                  pump(l, up);
                              }
                          });
    };
    if (delay_.count() > 0) {
        auto timer = std::make_shared<asio::steady_timer>(io_, delay_);
        timer->async_wait([timer, write](std::error_code) { write(); });
    } else {
        write();
    }
}

void fault_proxy::reset(link& l) {
    if (l.closed) {
        return;
    }
    l.closed = true;
    std::error_code ignored;
    for (auto* s : {&l.client, &l.server}) {
        if (s->is_open()) {
            s->set_option(asio::socket_base::linger(true, 0), ignored);  // RST, not FIN
            s->close(ignored);
        }
    }
    --open_;
    notify();
}

void fault_proxy::cut(std::size_t index) {
    asio::dispatch(io_, [this, index] {
        if (index < links_.size()) {
            if (auto l = links_[index].lock()) {
                reset(*l);
            }
        }
    });
}

void fault_proxy::cut_all() {
    asio::dispatch(io_, [this] {
        for (auto& w : links_) {
            if (auto l = w.lock()) {
                reset(*l);
            }
        }
    });
}

void fault_proxy::stall(bool on) {
    asio::dispatch(io_, [this, on] {
        stalled_ = on;
        if (!on) {
            resume_parked();
        }
    });
}

void fault_proxy::resume_parked() {
    auto parked = std::move(parked_);
    parked_.clear();
    for (auto& p : parked) {
        p();
    }
}

void fault_proxy::set_delay(std::chrono::milliseconds d) {
    asio::dispatch(io_, [this, d] { delay_ = d; });
}

void fault_proxy::at_up_bytes(std::uint64_t bytes, std::function<void(fault_proxy&)> action) {
    // Registered before the call returns, so no byte passes the mark unseen.
    auto registered = std::make_shared<std::promise<void>>();
    std::future<void> done = registered->get_future();
    asio::dispatch(io_, [this, bytes, registered, action = std::move(action)]() mutable {
        triggers_.push_back({bytes, std::move(action)});
        std::stable_sort(triggers_.begin(), triggers_.end(),
                         [](const trigger& a, const trigger& b) { return a.at < b.at; });
        registered->set_value();
    });
    done.wait_for(std::chrono::seconds(10));
}

void fault_proxy::notify() {
    std::lock_guard lock(mutex_);
    changed_.notify_all();
}

bool fault_proxy::wait_up_bytes(std::uint64_t bytes, std::chrono::milliseconds timeout) {
    std::unique_lock lock(mutex_);
    return changed_.wait_for(lock, timeout, [&] { return up_bytes_.load() >= bytes; });
}

bool fault_proxy::wait_accepted(std::size_t n, std::chrono::milliseconds timeout) {
    std::unique_lock lock(mutex_);
    return changed_.wait_for(lock, timeout, [&] { return accepted_.load() >= n; });
}

}  // namespace ferry::test
