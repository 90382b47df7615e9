// byte_stream establishment and connection framing over real loopback TCP, TLS and
// plaintext. Everything runs on one io_context driven from the test thread; every wait is
// on an event with a deadline (run_until), and the only fixed-time runs check that
// nothing more happens (quiet_for).
#include "transport/connection.hpp"

#include <gtest/gtest.h>

#include <algorithm>
#include <asio.hpp>
#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <system_error>
#include <vector>

#include "protocol/errors.hpp"
#include "protocol/frame.hpp"
#include "transport/buffer_pool.hpp"
#include "transport/identity.hpp"
#include "transport/stream.hpp"
#include "transport/tls.hpp"

namespace ferry {
namespace {

using namespace std::chrono_literals;

constexpr auto default_deadline = std::chrono::milliseconds(20'000);

// Runs the loop until `done` holds or the deadline passes. Returns whether `done` holds.
// Single-threaded: once the loop has no work left, nothing can change, so it stops early.
bool run_until(asio::io_context& io, const std::function<bool()>& done,
               std::chrono::milliseconds limit = default_deadline) {
    auto deadline = std::chrono::steady_clock::now() + limit;
    while (!done()) {
        auto now = std::chrono::steady_clock::now();
        if (now >= deadline) {
            return false;
        }
        if (io.stopped()) {
            io.restart();
        }
        auto slice = std::min<std::chrono::steady_clock::duration>(deadline - now, 100ms);
        if (io.run_one_for(slice) == 0 && io.stopped()) {
            io.restart();
            return done();
        }
    }
    return true;
}

// Runs the loop for a fixed time to check that nothing more happens.
void quiet_for(asio::io_context& io, std::chrono::milliseconds d) {
    if (io.stopped()) {
        io.restart();
    }
    io.run_for(d);
    if (io.stopped()) {
        io.restart();
    }
}

// Runs what is ready now (e.g. posted on_closed calls) without waiting.
void drain_ready(asio::io_context& io) {
    if (io.stopped()) {
        io.restart();
    }
    io.poll();
    if (io.stopped()) {
        io.restart();
    }
}

struct node_keys {
    tls_credentials creds;
    tls_context server;
    tls_context client;

    explicit node_keys(tls_credentials c)
        : creds(std::move(c)), server(creds, tls_role::server), client(creds, tls_role::client) {}
};

// Two nodes' credentials, generated once for the whole binary.
const node_keys& alice() {
    static const node_keys keys(generate_credentials());
    return keys;
}
const node_keys& bob() {
    static const node_keys keys(generate_credentials());
    return keys;
}

std::unique_ptr<tls_peer_check> allow_only(std::string id) {
    auto check = std::make_unique<tls_peer_check>();
    check->allow = [id = std::move(id)](const std::string& peer) { return peer == id; };
    return check;
}

std::unique_ptr<tls_peer_check> refuse_all() {
    auto check = std::make_unique<tls_peer_check>();
    check->allow = [](const std::string&) { return false; };
    return check;
}

// Outcome of one side of an establishment.
struct side_result {
    bool done = false;
    std::error_code ec;
    std::unique_ptr<byte_stream> stream;
};

struct establish_result {
    side_result client;
    side_result server;
};

// Accepts one connection on 127.0.0.1:<ephemeral> and connects to it; `client_tls` or
// `server_tls` null means that side is plaintext. Runs until both sides completed.
establish_result establish(asio::io_context& io, const tls_context* client_tls, const tls_context* server_tls,
                           std::unique_ptr<tls_peer_check> client_check,
                           std::unique_ptr<tls_peer_check> server_check) {
    establish_result out;
    asio::ip::tcp::acceptor acceptor(io, asio::ip::tcp::endpoint(asio::ip::make_address("127.0.0.1"), 0));
    bool accept_failed = false;
    acceptor.async_accept([&](std::error_code ec, asio::ip::tcp::socket socket) {
        if (ec) {
            accept_failed = true;
            out.server.done = true;
            out.server.ec = ec;
            return;
        }
        async_accept_stream(io, server_tls, std::move(socket), socket_tuning{}, 10s, std::move(server_check),
                            [&out](std::error_code ec, std::unique_ptr<byte_stream> s) {
                                out.server.done = true;
                                out.server.ec = ec;
                                out.server.stream = std::move(s);
                            });
    });

    connect_options opts;
    opts.host = "127.0.0.1";
    opts.port = std::to_string(acceptor.local_endpoint().port());
    opts.plaintext = client_tls == nullptr;
    opts.timeout = 10s;
    async_connect_stream(io, client_tls, opts, std::move(client_check),
                         [&out](std::error_code ec, std::unique_ptr<byte_stream> s) {
                             out.client.done = true;
                             out.client.ec = ec;
                             out.client.stream = std::move(s);
                         });

    bool finished = run_until(io, [&] { return out.client.done && out.server.done; });
    EXPECT_TRUE(finished) << "establishment did not complete (client done " << out.client.done << ", server done "
                          << out.server.done << ")";
    EXPECT_FALSE(accept_failed) << out.server.ec.message();
    if (!out.server.done) {
        // The accept handler references locals of this function: cancel it before leaving.
        acceptor.close();
        drain_ready(io);
    }
    return out;
}

struct recorded_frame {
    wire::Header header;
    std::vector<std::uint8_t> payload;
};

// Records frames and closes. With `hold` set it keeps the received pooled buffers, so the
// receiving pool stays exhausted (backpressure).
struct recording_handler : connection_handler {
    void on_frame(connection&, wire::Header& header, pooled_buffer payload) override {
        recorded_frame f;
        f.header = header;
        if (payload) {
            f.payload.assign(payload.data(), payload.data() + payload.size());
        }
        if (closed_count > 0) {
            ++frames_after_close;
        }
        frames.push_back(std::move(f));
        if (hold && payload) {
            held.push_back(std::move(payload));
        }
    }
    void on_send_ready(connection&) override { ++send_ready; }
    void on_closed(connection&, std::error_code ec) override {
        ++closed_count;
        closed_ec = ec;
    }

    std::size_t chunk_frames() const {
        std::size_t n = 0;
        for (const auto& f : frames) {
            if (f.header.has_chunk()) {
                ++n;
            }
        }
        return n;
    }

    std::vector<recorded_frame> frames;
    bool hold = false;
    std::vector<pooled_buffer> held;
    int send_ready = 0;
    int closed_count = 0;
    int frames_after_close = 0;
    std::error_code closed_ec;
};

std::uint8_t pattern_byte(std::uint32_t frame, std::size_t at) {
    return static_cast<std::uint8_t>((frame * 31u + at * 7u + (at >> 8)) & 0xffu);
}

pooled_buffer patterned(buffer_pool& pool, std::uint32_t frame, std::size_t len) {
    pooled_buffer b = pool.acquire(len);
    if (b) {
        for (std::size_t i = 0; i < len; ++i) {
            b.data()[i] = pattern_byte(frame, i);
        }
    }
    return b;
}

bool matches_pattern(const std::vector<std::uint8_t>& bytes, std::uint32_t frame) {
    for (std::size_t i = 0; i < bytes.size(); ++i) {
        if (bytes[i] != pattern_byte(frame, i)) {
            return false;
        }
    }
    return true;
}

wire::Header ping_header(std::uint64_t nonce) {
    wire::Header h;
    h.mutable_ping()->set_nonce(nonce);
    return h;
}

wire::Header chunk_header(std::uint32_t index, std::uint32_t len) {
    wire::Header h;
    wire::Chunk* c = h.mutable_chunk();
    c->set_file_id(7);
    c->set_index(index);
    c->set_raw_len(len);
    c->set_codec(wire::CODEC_RAW);
    c->set_hash_lo(0x1111'0000'0000'0000ull + index);
    c->set_hash_hi(0x2222'0000'0000'0000ull + index);
    return h;
}

// Two started connections over an established pair (client side `a`, server side `b`).
// Handlers are declared before the io_context so that they outlive every pending handler.
class connection_pair_test : public ::testing::Test {
  protected:
    void connect(bool tls, std::shared_ptr<buffer_pool> pool_a, std::shared_ptr<buffer_pool> pool_b) {
        establish_result r =
            tls ? establish(io_, &alice().client, &bob().server, allow_only(bob().server.id()),
                            allow_only(alice().client.id()))
                : establish(io_, nullptr, nullptr, nullptr, nullptr);
        ASSERT_FALSE(r.client.ec) << r.client.ec.message();
        ASSERT_FALSE(r.server.ec) << r.server.ec.message();
        ASSERT_TRUE(r.client.stream);
        ASSERT_TRUE(r.server.stream);
        a_ = std::make_shared<connection>(std::move(r.client.stream), std::move(pool_a));
        b_ = std::make_shared<connection>(std::move(r.server.stream), std::move(pool_b));
        a_->start(&ha_);
        b_->start(&hb_);
    }

    void TearDown() override {
        if (a_) {
            a_->close();
        }
        if (b_) {
            b_->close();
        }
        ha_.held.clear();
        hb_.held.clear();
        drain_ready(io_);
    }

    recording_handler ha_;
    recording_handler hb_;
    asio::io_context io_;
    std::shared_ptr<connection> a_;
    std::shared_ptr<connection> b_;
};

// --- establishment -------------------------------------------------------------------

TEST(stream_establish, tls_both_sides_learn_the_other_id) {
    asio::io_context io;
    establish_result r = establish(io, &alice().client, &bob().server, allow_only(bob().server.id()),
                                   allow_only(alice().client.id()));
    ASSERT_FALSE(r.client.ec) << r.client.ec.message();
    ASSERT_FALSE(r.server.ec) << r.server.ec.message();
    ASSERT_TRUE(r.client.stream);
    ASSERT_TRUE(r.server.stream);

    EXPECT_EQ(r.client.stream->peer_id(), bob().server.id());
    EXPECT_EQ(r.server.stream->peer_id(), alice().client.id());
    EXPECT_NE(alice().client.id(), bob().server.id());
    EXPECT_TRUE(r.client.stream->is_tls());
    EXPECT_TRUE(r.server.stream->is_tls());
    EXPECT_TRUE(r.client.stream->is_open());
    EXPECT_TRUE(r.server.stream->is_open());
    EXPECT_TRUE(r.client.stream->tuning().nodelay);
    EXPECT_TRUE(r.server.stream->tuning().nodelay);
    EXPECT_EQ(r.client.stream->remote(), "127.0.0.1:" + std::to_string(r.server.stream->socket().local_endpoint().port()));
    // The handshake itself crossed the wire, both ways.
    EXPECT_GT(r.client.stream->wire_sent(), 0u);
    EXPECT_GT(r.server.stream->wire_sent(), 0u);
}

// The TLS record path of byte_stream: a writer mixing large and small buffers, a reader
// with targets of every awkward size (1 byte, a record minus one, more than a record),
// so records are opened straight into the target, through the staging buffer, and
// across calls. Every byte must arrive once, in order, and the wire counters must agree.
TEST(stream_establish, tls_stream_delivers_every_byte_through_odd_sized_reads) {
    asio::io_context io;
    establish_result r = establish(io, &alice().client, &bob().server, allow_only(bob().server.id()),
                                   allow_only(alice().client.id()));
    ASSERT_TRUE(r.client.stream && r.server.stream);
    byte_stream& w = *r.client.stream;
    byte_stream& rd = *r.server.stream;
    EXPECT_NE(w.cipher_name().find("TLS_AES_128_GCM_SHA256"), std::string::npos) << w.cipher_name();

    std::vector<std::vector<std::uint8_t>> pieces;
    std::size_t sizes[] = {1, 40, 300 * 1024, 7, 16 * 1024, 16 * 1024 - 1, 16 * 1024 + 1, 3, 100'000};
    std::vector<std::uint8_t> expect;
    for (std::size_t i = 0; i < std::size(sizes); ++i) {
        std::vector<std::uint8_t> p(sizes[i]);
        for (std::size_t j = 0; j < p.size(); ++j) {
            p[j] = static_cast<std::uint8_t>(j * 13 + i * 101 + (j >> 10));
        }
        expect.insert(expect.end(), p.begin(), p.end());
        pieces.push_back(std::move(p));
    }
    std::vector<asio::const_buffer> bufs;
    for (const auto& p : pieces) {
        bufs.emplace_back(p.data(), p.size());
    }

    std::vector<std::uint8_t> got;
    std::size_t read_sizes[] = {1, 16 * 1024 - 1, 5, 16 * 1024, 16 * 1024 + 17, 2, 70'000};
    std::size_t sent = 0;
    std::size_t reads = 0;
    for (int round = 0; round < 100'000 && got.size() < expect.size(); ++round) {
        while (sent < expect.size() || w.has_pending_output()) {
            // Write what is left, from the buffer where the last write stopped.
            std::vector<asio::const_buffer> rest;
            std::size_t skip = sent;
            for (const auto& b : bufs) {
                if (skip >= b.size()) {
                    skip -= b.size();
                    continue;
                }
                rest.emplace_back(static_cast<const std::uint8_t*>(b.data()) + skip, b.size() - skip);
                skip = 0;
            }
            io_result wr = w.write_now(rest);
            ASSERT_FALSE(wr.ec) << wr.ec.message();
            sent += wr.n;
            if (wr.wait != io_wait::none || wr.n == 0) {
                break;
            }
        }
        std::vector<std::uint8_t> buf(read_sizes[reads % std::size(read_sizes)]);
        io_result rr = rd.read_now(buf);
        ASSERT_FALSE(rr.ec) << rr.ec.message();
        if (rr.n > 0) {
            got.insert(got.end(), buf.begin(), buf.begin() + static_cast<std::ptrdiff_t>(rr.n));
            ++reads;
        }
    }
    ASSERT_EQ(got.size(), expect.size());
    EXPECT_TRUE(got == expect);
    EXPECT_EQ(w.wire_sent(), rd.wire_received());
    // Records add 22 bytes each: about 1 % over the payload here, never less than it.
    EXPECT_GT(w.wire_sent(), expect.size());
    EXPECT_LT(w.wire_sent(), expect.size() + expect.size() / 50 + 8192);
}

TEST(stream_establish, plaintext_connects) {
    asio::io_context io;
    establish_result r = establish(io, nullptr, nullptr, nullptr, nullptr);
    ASSERT_FALSE(r.client.ec) << r.client.ec.message();
    ASSERT_FALSE(r.server.ec) << r.server.ec.message();
    ASSERT_TRUE(r.client.stream);
    ASSERT_TRUE(r.server.stream);
    EXPECT_FALSE(r.client.stream->is_tls());
    EXPECT_FALSE(r.server.stream->is_tls());
    EXPECT_EQ(r.client.stream->peer_id(), "");
    EXPECT_EQ(r.server.stream->peer_id(), "");
    EXPECT_TRUE(r.client.stream->tuning().nodelay);
    EXPECT_TRUE(r.server.stream->tuning().nodelay);
    EXPECT_EQ(r.client.stream->wire_sent(), 0u);
    EXPECT_EQ(r.server.stream->wire_received(), 0u);
}

// A client the server refuses learns why (peer_refused) and gets no frame. With
// `write_first` it sends frames before it reads: the server refuses with the client's last
// flight unread, and were it to close at once, the reset would fail that write ("connection
// closed by peer") before the client reads the alert; the server drains instead.
void check_refused_client(bool write_first) {
    recording_handler h;  // declared first: outlives the loop and its pending handlers
    asio::io_context io;
    establish_result r =
        establish(io, &alice().client, &bob().server, allow_only(bob().server.id()), refuse_all());
    EXPECT_EQ(r.server.ec, transport_errc::untrusted_peer) << r.server.ec.message();
    EXPECT_FALSE(r.server.stream);

    if (r.client.ec) {
        // The refusal alert arrived during the client's handshake.
        EXPECT_EQ(r.client.ec, transport_errc::peer_refused) << r.client.ec.message();
        return;
    }
    // TLS 1.3: the client finished first and learns of the refusal on its first read.
    ASSERT_TRUE(r.client.stream);
    auto conn = std::make_shared<connection>(std::move(r.client.stream), buffer_pool::make(2, 64 * 1024));
    for (std::uint64_t i = 0; write_first && i < 8; ++i) {
        wire::Header ping = ping_header(i);
        ASSERT_TRUE(conn->send(ping));
    }
    conn->start(&h);
    ASSERT_TRUE(run_until(io, [&] { return h.closed_count > 0; })) << "client never saw the refusal";
    EXPECT_EQ(h.closed_ec, transport_errc::peer_refused) << h.closed_ec.message();
    EXPECT_TRUE(h.frames.empty());
}

TEST(stream_establish, tls_refused_client_fails_on_both_sides) { check_refused_client(false); }

TEST(stream_establish, tls_refused_client_that_writes_at_once_still_reads_the_refusal) { check_refused_client(true); }

// Sends one Ping so that a plaintext client actually puts bytes on the wire.
void send_ping(connection& c) {
    wire::Header h = ping_header(1);
    c.send(h);
}

TEST(stream_establish, plaintext_client_to_tls_server_fails) {
    recording_handler h;  // declared first: outlives the loop and its pending handlers
    asio::io_context io;
    bool server_done = false;
    std::error_code server_ec;
    std::shared_ptr<connection> conn;

    asio::ip::tcp::acceptor acceptor(io, asio::ip::tcp::endpoint(asio::ip::make_address("127.0.0.1"), 0));
    acceptor.async_accept([&](std::error_code ec, asio::ip::tcp::socket socket) {
        ASSERT_FALSE(ec) << ec.message();
        async_accept_stream(io, &bob().server, std::move(socket), socket_tuning{}, 10s,
                            allow_only(alice().client.id()),
                            [&](std::error_code ec, std::unique_ptr<byte_stream> s) {
                                server_done = true;
                                server_ec = ec;
                                EXPECT_FALSE(s);
                            });
    });
    connect_options opts;
    opts.host = "127.0.0.1";
    opts.port = std::to_string(acceptor.local_endpoint().port());
    opts.plaintext = true;
    opts.timeout = 10s;
    bool client_done = false;
    std::error_code client_ec;
    async_connect_stream(io, nullptr, opts, nullptr, [&](std::error_code ec, std::unique_ptr<byte_stream> s) {
        client_done = true;
        client_ec = ec;
        if (!ec) {
            conn = std::make_shared<connection>(std::move(s), buffer_pool::make(2, 64 * 1024));
            conn->start(&h);
            send_ping(*conn);
        }
    });

    ASSERT_TRUE(run_until(io, [&] { return server_done && client_done && (client_ec || h.closed_count > 0); }))
        << "server done " << server_done << ", client done " << client_done << ", client closed " << h.closed_count;
    // The plaintext client connects (there is no handshake), then loses the connection.
    std::error_code client_fail = client_ec ? client_ec : h.closed_ec;
    EXPECT_TRUE(client_fail) << "the plaintext client's connection should fail";
    EXPECT_TRUE(server_ec) << "the TLS server must not accept a plaintext client";
    EXPECT_TRUE(server_ec == transport_errc::plaintext_mismatch || client_fail == transport_errc::plaintext_mismatch)
        << "server: " << server_ec.message() << "; client: " << client_fail.message();
    EXPECT_TRUE(h.frames.empty());
    if (conn) {
        conn->close();
        drain_ready(io);
    }
}

// A client that connects and leaves before its handshake is done (a sender whose transfer
// ended while its extra connections were being made) has only left: closed, not taken
// for a peer that does not speak TLS (which a plaintext peer that says something is).
TEST(stream_establish, a_client_that_leaves_during_the_tls_handshake_is_closed_not_a_plaintext_peer) {
    asio::io_context io;
    asio::ip::tcp::acceptor acceptor(io, asio::ip::tcp::endpoint(asio::ip::make_address("127.0.0.1"), 0));
    bool server_done = false;
    std::error_code server_ec;
    acceptor.async_accept([&](std::error_code ec, asio::ip::tcp::socket socket) {
        ASSERT_FALSE(ec) << ec.message();
        async_accept_stream(io, &bob().server, std::move(socket), socket_tuning{}, 10s, allow_only(alice().client.id()),
                            [&](std::error_code ec, std::unique_ptr<byte_stream> s) {
                                server_done = true;
                                server_ec = ec;
                                EXPECT_FALSE(s);
                            });
    });
    asio::ip::tcp::socket client(io);
    client.connect(acceptor.local_endpoint());
    client.close();
    ASSERT_TRUE(run_until(io, [&] { return server_done; }));
    EXPECT_EQ(server_ec, make_error_code(transport_errc::closed)) << server_ec.message();
}

TEST(stream_establish, tls_client_to_plaintext_server_fails) {
    recording_handler h;  // declared first: outlives the loop and its pending handlers
    asio::io_context io;
    std::shared_ptr<connection> conn;
    bool server_done = false;
    std::error_code server_ec;

    asio::ip::tcp::acceptor acceptor(io, asio::ip::tcp::endpoint(asio::ip::make_address("127.0.0.1"), 0));
    acceptor.async_accept([&](std::error_code ec, asio::ip::tcp::socket socket) {
        ASSERT_FALSE(ec) << ec.message();
        async_accept_stream(io, nullptr, std::move(socket), socket_tuning{}, 10s, nullptr,
                            [&](std::error_code ec, std::unique_ptr<byte_stream> s) {
                                server_done = true;
                                server_ec = ec;
                                if (!ec) {
                                    conn = std::make_shared<connection>(std::move(s), buffer_pool::make(2, 64 * 1024));
                                    conn->start(&h);
                                }
                            });
    });
    connect_options opts;
    opts.host = "127.0.0.1";
    opts.port = std::to_string(acceptor.local_endpoint().port());
    opts.timeout = 10s;
    bool client_done = false;
    std::error_code client_ec;
    async_connect_stream(io, &alice().client, opts, allow_only(bob().server.id()),
                         [&](std::error_code ec, std::unique_ptr<byte_stream> s) {
                             client_done = true;
                             client_ec = ec;
                             EXPECT_FALSE(s);
                         });

    ASSERT_TRUE(run_until(io, [&] { return client_done && server_done && (server_ec || h.closed_count > 0); }))
        << "server done " << server_done << ", client done " << client_done << ", server closed " << h.closed_count;
    // The plaintext server accepts (no handshake), then its first read sees a TLS record.
    std::error_code server_fail = server_ec ? server_ec : h.closed_ec;
    EXPECT_TRUE(server_fail) << "the plaintext server's connection should fail";
    EXPECT_TRUE(client_ec) << "the TLS client must not complete against a plaintext server";
    EXPECT_TRUE(server_fail == transport_errc::plaintext_mismatch || client_ec == transport_errc::plaintext_mismatch)
        << "server: " << server_fail.message() << "; client: " << client_ec.message();
    EXPECT_TRUE(h.frames.empty());
    if (conn) {
        conn->close();
        drain_ready(io);
    }
}

TEST(stream_establish, split_host_port_accepts_valid_addresses) {
    struct ok_case {
        const char* text;
        const char* host;
        const char* port;
    };
    for (const ok_case& c : {ok_case{"127.0.0.1:80", "127.0.0.1", "80"}, ok_case{"[::1]:7788", "::1", "7788"},
                             ok_case{"host.example:1", "host.example", "1"}}) {
        std::string host;
        std::string port;
        EXPECT_TRUE(split_host_port(c.text, host, port)) << c.text;
        EXPECT_EQ(host, c.host) << c.text;
        EXPECT_EQ(port, c.port) << c.text;
    }
}

TEST(stream_establish, split_host_port_refuses_malformed_addresses) {
    // In brackets only an IPv6 address ("[::g]:1" was dialed as a host name, exit 2).
    for (const char* text : {"", "noport", "1.2.3.4:", ":80", "[::1]80", "h:99999", "a:b:c", "[::g]:1",
                             "[127.0.0.1]:1", "[host]:1", "[]:1"}) {
        std::string host;
        std::string port;
        EXPECT_FALSE(split_host_port(text, host, port)) << '"' << text << '"';
    }
}

TEST(stream_establish, join_host_port_brackets_an_ipv6_host) {
    EXPECT_EQ(join_host_port("::1", "7788"), "[::1]:7788");
    EXPECT_EQ(join_host_port("127.0.0.1", "80"), "127.0.0.1:80");
    EXPECT_EQ(join_host_port("host.example", "1"), "host.example:1");
}

// --- framing -------------------------------------------------------------------------

// 200 frames mixing Pings and chunks of 256 KiB, 1 byte and 100 KiB, all queued in one
// loop turn; checks order, headers, payload bytes, counters and wire counters.
void run_mixed_frames(bool tls, asio::io_context& io, connection& a, connection& b, recording_handler& hb,
                      buffer_pool& send_pool) {
    constexpr std::uint32_t frame_count = 200;
    constexpr std::size_t lens[] = {256 * 1024, 1, 100 * 1024};
    std::vector<wire::Header> sent;
    std::uint64_t payload_bytes = 0;
    std::uint64_t frame_bytes = 0;
    for (std::uint32_t i = 0; i < frame_count; ++i) {
        wire::Header h;
        pooled_buffer payload;
        std::size_t len = 0;
        if (i % 4 == 0) {
            h = ping_header(i);
        } else {
            len = lens[i % 4 - 1];
            h = chunk_header(i, static_cast<std::uint32_t>(len));
            payload = patterned(send_pool, i, len);
            ASSERT_TRUE(payload) << "send pool exhausted at frame " << i;
        }
        ASSERT_TRUE(a.send(h, std::move(payload), len)) << "frame " << i;
        EXPECT_EQ(h.payload_len(), len);  // send() stamps the length into the header
        std::vector<std::uint8_t> head;
        ASSERT_TRUE(append_frame_header(h, head));
        frame_bytes += head.size() + len;
        payload_bytes += len;
        sent.push_back(h);
    }
    EXPECT_GT(a.queued_bytes(), 0u);

    ASSERT_TRUE(run_until(io, [&] { return hb.frames.size() >= frame_count || hb.closed_count > 0; }))
        << "received " << hb.frames.size() << " of " << frame_count << " frames";
    ASSERT_EQ(hb.closed_count, 0) << hb.closed_ec.message();
    ASSERT_EQ(hb.frames.size(), frame_count);
    for (std::uint32_t i = 0; i < frame_count; ++i) {
        const recorded_frame& f = hb.frames[i];
        EXPECT_EQ(f.header.SerializeAsString(), sent[i].SerializeAsString()) << "frame " << i;
        EXPECT_EQ(f.header.payload_len(), f.payload.size()) << "frame " << i;
        if (i % 4 == 0) {
            EXPECT_TRUE(f.header.has_ping()) << "frame " << i;
            EXPECT_EQ(f.header.ping().nonce(), i);
            EXPECT_TRUE(f.payload.empty()) << "frame " << i;
        } else {
            ASSERT_TRUE(f.header.has_chunk()) << "frame " << i;
            EXPECT_EQ(f.header.chunk().index(), i);
            EXPECT_EQ(f.header.chunk().file_id(), 7u);
            EXPECT_EQ(f.payload.size(), lens[i % 4 - 1]) << "frame " << i;
            EXPECT_TRUE(matches_pattern(f.payload, i)) << "payload bytes differ in frame " << i;
        }
    }

    // Everything left the sender (the receiver has it all).
    EXPECT_EQ(a.queued_bytes(), 0u);
    EXPECT_EQ(a.counters().frames_sent, frame_count);
    EXPECT_EQ(b.counters().frames_received, frame_count);
    EXPECT_EQ(a.counters().payload_sent, payload_bytes);
    EXPECT_EQ(b.counters().payload_received, payload_bytes);
    EXPECT_EQ(a.counters().frames_received, 0u);
    EXPECT_EQ(b.counters().frames_sent, 0u);

    // Both directions are idle: what one side wrote, the other has read.
    EXPECT_EQ(a.stream().wire_sent(), b.stream().wire_received());
    EXPECT_EQ(b.stream().wire_sent(), a.stream().wire_received());
    if (tls) {
        // Handshake and record overhead on top of the frames.
        EXPECT_GT(a.stream().wire_sent(), frame_bytes);
    } else {
        EXPECT_EQ(a.stream().wire_sent(), frame_bytes);
    }
    EXPECT_EQ(send_pool.in_use(), 0u) << "written payloads must be released";
}

TEST_F(connection_pair_test, tls_frames_arrive_in_order_intact) {
    auto send_pool = buffer_pool::make(256, 256 * 1024);
    ASSERT_NO_FATAL_FAILURE(connect(true, send_pool, buffer_pool::make(4, 256 * 1024)));
    run_mixed_frames(true, io_, *a_, *b_, hb_, *send_pool);
}

TEST_F(connection_pair_test, plaintext_frames_arrive_in_order_intact) {
    auto send_pool = buffer_pool::make(256, 256 * 1024);
    ASSERT_NO_FATAL_FAILURE(connect(false, send_pool, buffer_pool::make(4, 256 * 1024)));
    run_mixed_frames(false, io_, *a_, *b_, hb_, *send_pool);
}

// The receiver's pool holds 2 buffers and its handler keeps them: it must stop at 2
// chunks (and stop reading), then take the rest once the buffers come back.
void run_backpressure(asio::io_context& io, connection& a, recording_handler& hb, buffer_pool& recv_pool,
                      std::size_t len) {
    constexpr std::uint32_t chunks = 10;
    auto send_pool = buffer_pool::make(chunks, 256 * 1024);
    hb.hold = true;
    for (std::uint32_t i = 0; i < chunks; ++i) {
        wire::Header h = chunk_header(i, static_cast<std::uint32_t>(len));
        ASSERT_TRUE(a.send(h, patterned(*send_pool, i, len), len));
    }

    ASSERT_TRUE(run_until(io, [&] { return hb.chunk_frames() >= 2 || hb.closed_count > 0; }))
        << "the first 2 chunks did not arrive";
    quiet_for(io, 200ms);  // nothing more may arrive while the pool is exhausted
    EXPECT_EQ(hb.chunk_frames(), 2u);
    EXPECT_EQ(hb.closed_count, 0) << hb.closed_ec.message();
    EXPECT_EQ(recv_pool.in_use(), 2u);
    EXPECT_GE(recv_pool.exhausted_count(), 1u);

    hb.hold = false;
    hb.held.clear();  // returns both buffers to the pool
    ASSERT_TRUE(run_until(io, [&] { return hb.chunk_frames() >= chunks || hb.closed_count > 0; }))
        << "only " << hb.chunk_frames() << " of " << chunks << " chunks arrived after the release";
    ASSERT_EQ(hb.chunk_frames(), chunks);
    EXPECT_EQ(hb.closed_count, 0) << hb.closed_ec.message();
    for (std::uint32_t i = 0; i < chunks; ++i) {
        EXPECT_EQ(hb.frames[i].header.chunk().index(), i);
        EXPECT_EQ(hb.frames[i].payload.size(), len);
        EXPECT_TRUE(matches_pattern(hb.frames[i].payload, i)) << "chunk " << i;
    }
    EXPECT_EQ(recv_pool.in_use(), 0u);
}

TEST_F(connection_pair_test, tls_exhausted_pool_stops_reading_until_release) {
    auto recv_pool = buffer_pool::make(2, 256 * 1024);
    ASSERT_NO_FATAL_FAILURE(connect(true, buffer_pool::make(1, 256 * 1024), recv_pool));
    run_backpressure(io_, *a_, hb_, *recv_pool, 128 * 1024);
}

TEST_F(connection_pair_test, plaintext_exhausted_pool_stops_reading_until_release) {
    auto recv_pool = buffer_pool::make(2, 256 * 1024);
    ASSERT_NO_FATAL_FAILURE(connect(false, buffer_pool::make(1, 256 * 1024), recv_pool));
    run_backpressure(io_, *a_, hb_, *recv_pool, 128 * 1024);
}

// A connection closed while it waits for a pool buffer must not deliver the frames it
// already has in its read buffer once a buffer comes back.
TEST_F(connection_pair_test, closed_while_waiting_for_a_buffer_delivers_nothing_more) {
    auto recv_pool = buffer_pool::make(2, 4096);  // 512-byte payloads take whole 4 KiB buffers
    auto send_pool = buffer_pool::make(10, 256 * 1024);
    ASSERT_NO_FATAL_FAILURE(connect(false, send_pool, recv_pool));
    hb_.hold = true;
    // Small chunks: all of them land in the receiver's read buffer in one read.
    for (std::uint32_t i = 0; i < 10; ++i) {
        wire::Header h = chunk_header(i, 512);
        ASSERT_TRUE(a_->send(h, patterned(*send_pool, i, 512), 512));
    }
    ASSERT_TRUE(run_until(io_, [&] { return hb_.chunk_frames() >= 2; }));
    quiet_for(io_, 100ms);
    ASSERT_EQ(hb_.chunk_frames(), 2u);

    b_->close();
    ASSERT_TRUE(run_until(io_, [&] { return hb_.closed_count > 0; }));
    hb_.hold = false;
    hb_.held.clear();
    quiet_for(io_, 100ms);
    EXPECT_EQ(hb_.frames_after_close, 0);
    EXPECT_EQ(hb_.chunk_frames(), 2u);
    EXPECT_EQ(hb_.closed_count, 1);
}

// --- closing -------------------------------------------------------------------------

void run_peer_close(asio::io_context& io, connection& a, recording_handler& ha, recording_handler& hb) {
    a.close();
    EXPECT_TRUE(a.closed());
    EXPECT_EQ(ha.closed_count, 0) << "on_closed must be posted, not called from close()";
    ASSERT_TRUE(run_until(io, [&] { return ha.closed_count > 0 && hb.closed_count > 0; }))
        << "closer closed " << ha.closed_count << ", peer closed " << hb.closed_count;
    quiet_for(io, 50ms);
    EXPECT_EQ(ha.closed_count, 1);
    EXPECT_EQ(hb.closed_count, 1);
    EXPECT_FALSE(ha.closed_ec) << ha.closed_ec.message();
    EXPECT_TRUE(hb.closed_ec == transport_errc::closed || hb.closed_ec == asio::error::connection_reset)
        << hb.closed_ec.message();

    // Closing again (or sending) changes nothing.
    a.close();
    wire::Header h = ping_header(5);
    EXPECT_FALSE(a.send(h));
    quiet_for(io, 20ms);
    EXPECT_EQ(ha.closed_count, 1);
    EXPECT_EQ(hb.closed_count, 1);
}

TEST_F(connection_pair_test, tls_peer_close_is_reported_once_on_both_sides) {
    ASSERT_NO_FATAL_FAILURE(connect(true, buffer_pool::make(1, 256 * 1024), buffer_pool::make(1, 256 * 1024)));
    run_peer_close(io_, *a_, ha_, hb_);
}

TEST_F(connection_pair_test, plaintext_peer_close_is_reported_once_on_both_sides) {
    ASSERT_NO_FATAL_FAILURE(connect(false, buffer_pool::make(1, 256 * 1024), buffer_pool::make(1, 256 * 1024)));
    run_peer_close(io_, *a_, ha_, hb_);
}

TEST_F(connection_pair_test, close_reason_reaches_own_handler) {
    ASSERT_NO_FATAL_FAILURE(connect(false, buffer_pool::make(1, 256 * 1024), buffer_pool::make(1, 256 * 1024)));
    b_->close(transport_errc::timeout);
    EXPECT_EQ(hb_.closed_count, 0);
    ASSERT_TRUE(run_until(io_, [&] { return hb_.closed_count > 0 && ha_.closed_count > 0; }));
    EXPECT_EQ(hb_.closed_ec, transport_errc::timeout);
    EXPECT_EQ(hb_.closed_count, 1);
}

TEST_F(connection_pair_test, close_after_flush_delivers_queued_frames) {
    auto send_pool = buffer_pool::make(4, 256 * 1024);
    ASSERT_NO_FATAL_FAILURE(connect(true, send_pool, buffer_pool::make(4, 256 * 1024)));
    for (std::uint32_t i = 0; i < 4; ++i) {
        wire::Header h = chunk_header(i, 200 * 1024);
        ASSERT_TRUE(a_->send(h, patterned(*send_pool, i, 200 * 1024), 200 * 1024));
    }
    a_->close_after_flush();
    wire::Header late = ping_header(9);
    EXPECT_FALSE(a_->send(late)) << "nothing may be queued after close_after_flush";
    ASSERT_TRUE(run_until(io_, [&] { return ha_.closed_count > 0 && hb_.closed_count > 0; }));
    ASSERT_EQ(hb_.chunk_frames(), 4u);
    for (std::uint32_t i = 0; i < 4; ++i) {
        EXPECT_TRUE(matches_pattern(hb_.frames[i].payload, i)) << "chunk " << i;
    }
    EXPECT_FALSE(ha_.closed_ec) << ha_.closed_ec.message();
    EXPECT_EQ(hb_.closed_ec, transport_errc::closed) << hb_.closed_ec.message();
}

TEST_F(connection_pair_test, close_after_flush_while_the_peer_still_sends_delivers_the_last_frame) {
    // B streams chunks at A; A answers with one frame and closes. A drains what B still
    // sends until B closes, so B reads A's frame and sees a clean close, not a reset.
    auto pool_b = buffer_pool::make(16, 256 * 1024);
    ASSERT_NO_FATAL_FAILURE(connect(true, buffer_pool::make(16, 256 * 1024), pool_b));
    for (std::uint32_t i = 0; i < 16; ++i) {
        wire::Header h = chunk_header(i, 200 * 1024);
        ASSERT_TRUE(b_->send(h, patterned(*pool_b, i, 200 * 1024), 200 * 1024));
    }
    ASSERT_TRUE(run_until(io_, [&] { return !ha_.frames.empty(); }));
    wire::Header last = ping_header(77);
    ASSERT_TRUE(a_->send(last));
    a_->close_after_flush(protocol_errc::peer_error);
    ASSERT_TRUE(run_until(io_, [&] {
        return std::any_of(hb_.frames.begin(), hb_.frames.end(), [](const auto& f) { return f.header.has_ping(); });
    })) << "B never read A's last frame; B closed with: " << hb_.closed_ec.message();
    b_->close();
    ASSERT_TRUE(run_until(io_, [&] { return ha_.closed_count > 0; }, std::chrono::milliseconds(10'000)));
    EXPECT_EQ(ha_.closed_ec, protocol_errc::peer_error) << ha_.closed_ec.message();
}

TEST_F(connection_pair_test, close_after_flush_is_bounded_when_the_peer_never_reads) {
    // B holds its only two pool buffers, so it stops reading; A's queue can never drain.
    // close_after_flush still ends A within its linger deadline.
    auto pool_a = buffer_pool::make(64, 256 * 1024);
    ASSERT_NO_FATAL_FAILURE(connect(true, pool_a, buffer_pool::make(2, 256 * 1024)));
    hb_.hold = true;
    for (std::uint32_t i = 0; i < 64; ++i) {
        wire::Header h = chunk_header(i, 256 * 1024);
        ASSERT_TRUE(a_->send(h, patterned(*pool_a, i, 256 * 1024), 256 * 1024));
    }
    ASSERT_TRUE(run_until(io_, [&] { return hb_.chunk_frames() >= 2; }));
    quiet_for(io_, 100ms);
    ASSERT_GT(a_->queued_bytes(), 0u) << "the queue drained: the test would not test the deadline";
    auto t0 = std::chrono::steady_clock::now();
    a_->close_after_flush(protocol_errc::peer_error);
    ASSERT_TRUE(run_until(io_, [&] { return ha_.closed_count > 0; }, std::chrono::milliseconds(10'000)));
    auto took = std::chrono::steady_clock::now() - t0;
    EXPECT_LT(took, connection::linger + 1s);
    EXPECT_EQ(ha_.closed_ec, protocol_errc::peer_error) << ha_.closed_ec.message();
}

// --- limits --------------------------------------------------------------------------

TEST_F(connection_pair_test, payload_over_pool_capacity_closes_receiver) {
    auto send_pool = buffer_pool::make(1, 256 * 1024);
    ASSERT_NO_FATAL_FAILURE(connect(true, send_pool, buffer_pool::make(2, 64 * 1024)));
    constexpr std::size_t len = 100 * 1024;  // under max_payload_len, over the receiver's 64 KiB buffers
    wire::Header h = chunk_header(0, static_cast<std::uint32_t>(len));
    ASSERT_TRUE(a_->send(h, patterned(*send_pool, 0, len), len));
    ASSERT_TRUE(run_until(io_, [&] { return hb_.closed_count > 0; })) << "the receiver did not fail";
    EXPECT_EQ(hb_.closed_ec, protocol_errc::payload_too_large) << hb_.closed_ec.message();
    EXPECT_TRUE(hb_.frames.empty());
    EXPECT_TRUE(b_->closed());
}

}  // namespace
}  // namespace ferry
