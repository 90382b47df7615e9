// The control socket (`ferry status`) and the metrics endpoint: round trips on a real
// Unix socket / loopback TCP with the loop on its own thread, stale sockets, a second
// node on the same state folder, an address in use, and the HTTP answers.
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <asio.hpp>
#include <thread>

#include "node/control_server.hpp"
#include "node/metrics_server.hpp"
#include "tests/support/http_get.hpp"
#include "tests/support/stale_socket.hpp"
#include "tests/support/temp_dir.hpp"

namespace ferry {
namespace {

namespace fs = std::filesystem;
using std::chrono::seconds;
using test::http_get;

// Runs an io_context on a thread for the life of the object.
struct loop_thread {
    asio::io_context io;
    asio::executor_work_guard<asio::io_context::executor_type> work{io.get_executor()};
    std::thread thread{[this] { io.run(); }};
    ~loop_thread() {
        work.reset();
        io.stop();
        thread.join();
    }
    // Runs fn on the loop and waits for it.
    template <typename Fn>
    auto on_loop(Fn fn) {
        std::packaged_task<decltype(fn())()> task(std::move(fn));
        auto result = task.get_future();
        asio::post(io, [&task] { task(); });
        return result.get();
    }
};

TEST(control_server, answers_one_request_per_connection_and_removes_its_socket) {
    test::temp_dir dir;
    loop_thread loop;
    control_server server(loop.io, [](const std::string& req) { return "you said " + req; });
    std::string error;
    ASSERT_FALSE(loop.on_loop([&] { return server.open(dir.path(), error); })) << error;
    fs::path sock = control_socket_path(dir.path());
    struct stat st {};
    ASSERT_EQ(::stat(sock.c_str(), &st), 0);
    EXPECT_TRUE(S_ISSOCK(st.st_mode));
    EXPECT_EQ(st.st_mode & 0777, 0600u);
    for (int i = 0; i < 3; ++i) {
        std::string reply;
        ASSERT_FALSE(control_request(dir.path(), "status", seconds(5), reply));
        EXPECT_EQ(reply, "you said status\n");
    }
    loop.on_loop([&] { server.close(); });
    EXPECT_FALSE(fs::exists(sock));
    std::string reply;
    EXPECT_EQ(control_request(dir.path(), "status", seconds(5), reply), std::errc::no_such_file_or_directory);
}

TEST(control_server, a_stale_socket_is_replaced_and_a_live_one_is_refused) {
    test::temp_dir dir;
    fs::path sock = control_socket_path(dir.path());
    ASSERT_TRUE(test::leave_stale_socket(sock));  // what a crashed node leaves
    std::string reply;
    EXPECT_EQ(control_request(dir.path(), "status", seconds(5), reply), std::errc::connection_refused);

    loop_thread loop;
    control_server first(loop.io, [](const std::string&) { return std::string("first\n"); });
    std::string error;
    ASSERT_FALSE(loop.on_loop([&] { return first.open(dir.path(), error); })) << error;
    ASSERT_FALSE(control_request(dir.path(), "status", seconds(5), reply));
    EXPECT_EQ(reply, "first\n");

    control_server second(loop.io, [](const std::string&) { return std::string("second\n"); });
    std::error_code ec = loop.on_loop([&] { return second.open(dir.path(), error); });
    EXPECT_EQ(ec, std::errc::address_in_use);
    EXPECT_NE(error.find("another ferry node"), std::string::npos) << error;
    // The first node still answers.
    ASSERT_FALSE(control_request(dir.path(), "status", seconds(5), reply));
    EXPECT_EQ(reply, "first\n");
    loop.on_loop([&] { first.close(); });
}

TEST(control_server, a_state_folder_path_longer_than_sun_path_works) {
    test::temp_dir dir;
    fs::path deep = dir.path() / std::string(60, 'a') / std::string(60, 'b');
    fs::create_directories(deep);
    loop_thread loop;
    control_server server(loop.io, [](const std::string&) { return std::string("deep\n"); });
    std::string error;
    ASSERT_FALSE(loop.on_loop([&] { return server.open(deep, error); })) << error;
    std::string reply;
    ASSERT_FALSE(control_request(deep, "status", seconds(5), reply));
    EXPECT_EQ(reply, "deep\n");
    loop.on_loop([&] { server.close(); });
    EXPECT_FALSE(fs::exists(control_socket_path(deep)));
}

TEST(control_server, a_client_that_says_nothing_does_not_block_others) {
    test::temp_dir dir;
    loop_thread loop;
    control_server server(loop.io, [](const std::string&) { return std::string("ok\n"); });
    std::string error;
    ASSERT_FALSE(loop.on_loop([&] { return server.open(dir.path(), error); })) << error;
    // A silent client holds a connection open.
    int silent = ::socket(AF_UNIX, SOCK_STREAM, 0);
    sockaddr_un sa{};
    sa.sun_family = AF_UNIX;
    std::strcpy(sa.sun_path, control_socket_path(dir.path()).c_str());
    ASSERT_EQ(::connect(silent, reinterpret_cast<sockaddr*>(&sa), sizeof(sa)), 0);
    std::string reply;
    ASSERT_FALSE(control_request(dir.path(), "status", seconds(5), reply));
    EXPECT_EQ(reply, "ok\n");
    ::close(silent);
    loop.on_loop([&] { server.close(); });
}

TEST(metrics_server, http_answers) {
    metrics_server::source text = [] { return std::string("ferry_x 1\n"); };
    std::string ok = metrics_server::answer("GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n", text);
    EXPECT_EQ(ok.rfind("HTTP/1.1 200 OK\r\n", 0), 0u) << ok;
    EXPECT_NE(ok.find("Content-Type: text/plain; version=0.0.4"), std::string::npos);
    EXPECT_NE(ok.find("Content-Length: 10\r\n"), std::string::npos);
    EXPECT_EQ(ok.substr(ok.size() - 10), "ferry_x 1\n");
    std::string head = metrics_server::answer("HEAD /metrics?x=1 HTTP/1.0\r\n\r\n", text);
    EXPECT_EQ(head.rfind("HTTP/1.1 200 OK", 0), 0u);
    EXPECT_EQ(head.substr(head.size() - 4), "\r\n\r\n");  // no body
    EXPECT_EQ(metrics_server::answer("GET /other HTTP/1.1\r\n\r\n", text).rfind("HTTP/1.1 404", 0), 0u);
    EXPECT_EQ(metrics_server::answer("POST /metrics HTTP/1.1\r\n\r\n", text).rfind("HTTP/1.1 405", 0), 0u);
    EXPECT_EQ(metrics_server::answer("garbage\r\n\r\n", text).rfind("HTTP/1.1 400", 0), 0u);
}


TEST(metrics_server, serves_over_tcp_and_an_address_in_use_fails) {
    loop_thread loop;
    int calls = 0;
    metrics_server server(loop.io, [&calls] { return "ferry_calls " + std::to_string(++calls) + "\n"; });
    std::string error;
    ASSERT_FALSE(loop.on_loop([&] { return server.open("127.0.0.1:0", error); })) << error;
    std::string address = loop.on_loop([&] { return server.local_address(); });
    EXPECT_NE(http_get(address, "/metrics").find("ferry_calls 1\n"), std::string::npos);
    EXPECT_NE(http_get(address, "/metrics").find("ferry_calls 2\n"), std::string::npos);

    metrics_server other(loop.io, [] { return std::string(); });
    std::error_code ec = loop.on_loop([&] { return other.open(address, error); });
    EXPECT_EQ(ec.value(), EADDRINUSE) << ec.message();
    EXPECT_NE(error.find("metrics"), std::string::npos) << error;
    EXPECT_NE(error.find(address), std::string::npos) << error;
    loop.on_loop([&] {
        server.close();
        return 0;
    });
}

}  // namespace
}  // namespace ferry
