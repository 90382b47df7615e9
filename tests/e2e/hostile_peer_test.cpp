// End-to-end: a peer that misbehaves on purpose (tests/support/hostile_peer.hpp) against a
// running `ferry serve` or `ferry receive` on 127.0.0.1. Every case checks
//   (a) what the node answered: an Error frame with its ErrorCode and then the close, or,
//       for a refused TLS handshake, the close alone (no frame ever reaches such a peer);
//   (b) the one clear line the node logged about it, and that its stderr holds no line
//       per frame and no control character a peer sent;
//   (c) that nothing was written outside the destination folder, and nothing at all for
//       a refused offer;
//   (d) that the node goes on serving: a normal `ferry send` right after arrives
//       byte-identical.
// Nothing sleeps: the peer's reads time out, and log lines are waited for with a timeout.
#include "tests/support/hostile_peer.hpp"

#include <gtest/gtest.h>

#include <limits>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <set>

#include "node/chunk_codec.hpp"
#include "node/identity.hpp"
#include "protocol/delta.hpp"
#include "protocol/digest.hpp"
#include "protocol/transfer.hpp"
#include "tests/support/ferry_cli.hpp"
#include "tests/support/pattern.hpp"
#include "tests/support/tree.hpp"
#include "transport/identity.hpp"

namespace fs = std::filesystem;
using namespace ferry;
using namespace ferry::test;
using namespace std::chrono_literals;

namespace {

constexpr auto log_timeout = 15s;

// Every path under `dir` (not following symlinks), relative, with a "/" after folders;
// top-level names in `skip` are left out.
std::set<std::string> listing(const fs::path& dir, const std::set<std::string>& skip = {}) {
    std::set<std::string> out;
    std::error_code ec;
    for (auto it = fs::recursive_directory_iterator(dir, ec); !ec && it != fs::recursive_directory_iterator();
         it.increment(ec)) {
        std::string rel = fs::relative(it->path(), dir).string();
        if (it.depth() == 0 && skip.count(rel) > 0) {
            it.disable_recursion_pending();
            continue;
        }
        out.insert(rel + (it->is_directory() && !it->is_symlink() ? "/" : ""));
    }
    return out;
}

std::span<const std::uint8_t> bytes_of(std::string_view s) {
    return {reinterpret_cast<const std::uint8_t*>(s.data()), s.size()};
}

wire::Entry* add_entry(wire::Offer& o, std::uint32_t id, const std::string& path, bool dir, std::uint64_t size = 0) {
    wire::Entry* e = o.add_entries();
    e->set_id(id);
    e->set_path(path);
    e->set_kind(dir ? wire::ENTRY_DIR : wire::ENTRY_FILE);
    e->set_size(size);
    e->set_mode(dir ? 0755 : 0644);
    e->set_mtime_ns(1'600'000'000'000'000'000);
    return e;
}

// A one-batch offer of files `paths` (each `size` bytes), ids 0..n-1.
wire::Offer offer_of(const std::vector<std::string>& paths, std::uint64_t size = 5) {
    wire::Offer o;
    o.set_transfer_id(7);
    o.set_last(true);
    o.set_total_files(paths.size());
    for (std::uint32_t i = 0; i < paths.size(); ++i) {
        add_entry(o, i, paths[i], false, size);
        o.set_total_bytes(o.total_bytes() + size);
    }
    return o;
}

wire::Header frame_with(const wire::Offer& o) {
    wire::Header h;
    *h.mutable_offer() = o;
    return h;
}

// What a node does to a peer it refuses at the frame level: one Error frame with `code`
// whose message says `text`, then the close.
void expect_error_frame(const node_answer& a, wire::ErrorCode code, std::string_view text) {
    const wire::Error* e = a.error();
    ASSERT_NE(e, nullptr) << "no Error frame; the connection ended with: " << a.detail << " after " << a.frames.size()
                          << " frame(s)";
    EXPECT_EQ(wire::ErrorCode_Name(e->code()), wire::ErrorCode_Name(code)) << e->message();
    EXPECT_NE(e->message().find(text), std::string::npos) << e->message();
    EXPECT_EQ(a.count(wire::Header::kError), 1u);
    EXPECT_TRUE(a.closed) << "still open after the Error frame: " << a.detail;
}

class hostile : public ::testing::Test {
  protected:
    // Starts `ferry serve` (or, one_shot, `ferry receive`) for state A, which trusts the
    // hostile peer H and the well-behaved sender B.
    void start_node(bool one_shot) {
        hostile_ = load_or_create_identity(cli_.state("H"));
        sender_ = load_or_create_identity(cli_.state("B"));
        for (const std::string& id : {hostile_.id, sender_.id}) {
            run_result r = cli_.ferry({"trust", "--state", cli_.state("A").string(), format_node_id(id)});
            ASSERT_EQ(r.code, 0) << r.err;
        }
        fs::create_directories(inbox_);
        fs::create_directories(outside_);
        fs::create_directories(sources_);
        std::vector<std::string> args{
            one_shot ? "receive" : "serve", "--state", cli_.state("A").string(), "--listen", "127.0.0.1:0", "--json"};
        if (one_shot) {
            args.insert(args.end(), {"--accept-from", hostile_.id, inbox_.string()});
        } else {
            // A read-only share for pulls: a file, and a symlink out of the share.
            write_text_file(share_ / "pub/readme.txt", "shared\n");
            write_text_file(outside_ / "../secret.txt", "not shared\n");
            fs::create_symlink(cli_.root() / "secret.txt", share_ / "pub/leak.txt");
            args.insert(args.end(), {"--inbox", inbox_.string(), "--share", "pub=" + share_.string(), "--share",
                                     "drop=" + drop_.string() + ":rw"});
            fs::create_directories(drop_);
        }
        node_ = cli_.start(args);
        ASSERT_FALSE(node_.address.empty());
        outside_before_ = outside_listing();
        inbox_before_ = inbox_listing();
    }

    void TearDown() override {
        if (!node_.proc) {
            return;
        }
        // A peer's bytes never reach the terminal as control characters.
        std::string log = node_.proc->err();
        for (char c : log) {
            if ((static_cast<unsigned char>(c) < 0x20 && c != '\n') || c == 0x7f) {
                ADD_FAILURE() << "control character " << int(c) << " in the node's stderr:\n" << log;
                break;
            }
        }
    }

    hostile_tls trusted_tls() const { return {true, hostile_.creds, TLS1_3_VERSION, {}}; }

    std::unique_ptr<hostile_peer> connect(hostile_tls tls) {
        auto p = std::make_unique<hostile_peer>(node_.address, std::move(tls));
        EXPECT_TRUE(p->connect()) << p->error();
        return p;
    }

    // A trusted peer that opened a session (its Hello answered by the node's).
    std::unique_ptr<hostile_peer> session() {
        auto p = connect(trusted_tls());
        if (!p->hello()) {
            ADD_FAILURE() << "no session: " << p->error();
            return nullptr;
        }
        return p;
    }

    // A session whose offer of `paths` (files of `size` bytes) the node accepted.
    std::unique_ptr<hostile_peer> accepted(const std::vector<std::string>& paths, std::uint64_t size) {
        auto p = session();
        if (!p) {
            return nullptr;
        }
        std::optional<wire::Accept> a = p->offer(offer_of(paths, size));
        if (!a || a->files_size() != static_cast<int>(paths.size())) {
            ADD_FAILURE() << "offer not accepted: " << p->last_end().detail
                          << (p->last_end().error() ? " " + p->last_end().error()->message() : "");
            return nullptr;
        }
        return p;
    }

    // The node's stderr once it holds `needle` (bounded wait); a failure if it never does.
    std::string log_with(std::string_view needle) {
        std::optional<std::string> log = node_.proc->wait_for_err(needle, log_timeout);
        if (!log) {
            ADD_FAILURE() << "the node never logged \"" << needle << "\"; its stderr:\n" << node_.proc->err();
            return node_.proc->err();
        }
        return *log;
    }

    // The line of a transfer from H that failed: "transfer from HHHH-...-HHHH failed: ...".
    std::string failed_line() const { return "transfer from " + ferry::format_node_id(hostile_.id) + " failed: "; }

    std::set<std::string> outside_listing() const {
        return listing(cli_.root(), {"state-A", "state-B", "state-C", "state-H", "inbox", "sources", "share", "drop"});
    }

    void expect_nothing_outside() {
        EXPECT_EQ(outside_listing(), outside_before_);
        EXPECT_TRUE(fs::is_empty(outside_)) << "written outside the destination";
    }

    // The destination, without the transfers of expect_node_still_serves().
    std::set<std::string> inbox_listing() const {
        std::set<std::string> out = listing(inbox_);
        std::erase_if(out, [](const std::string& p) { return p.rfind("after-", 0) == 0; });
        return out;
    }

    void expect_inbox_untouched() {
        std::set<std::string> now = inbox_listing();
        EXPECT_EQ(now, inbox_before_) << "the destination changed: " << now.size() << " entries, first "
                                      << (now.empty() ? std::string() : *now.begin());
    }

    // The node still takes a normal transfer from B, byte-identical (for `receive`, that
    // transfer is the one it was waiting for: it then exits 0).
    void expect_node_still_serves(bool one_shot = false) {
        fs::path src = sources_ / ("after-" + std::to_string(++sends_));
        write_random_file(src / "data.bin", 300'001, 77 + sends_);
        write_text_file(src / "note.txt", "still serving\n");
        run_result s = cli_.ferry({"send", "--state", cli_.state("B").string(), "--connections", "2", "--quiet",
                                   src.string(), node_.id + "@" + node_.address});
        ASSERT_EQ(s.code, 0) << s.err << "\nnode stderr:\n" << node_.proc->err();
        EXPECT_EQ(compare_trees(src, inbox_ / src.filename()), "");
        if (one_shot) {
            EXPECT_EQ(node_.proc->wait(std::chrono::milliseconds(process_timeout)), 0) << node_.proc->err();
        }
    }

    ferry_cli cli_;
    identity hostile_;
    identity sender_;
    fs::path inbox_ = cli_.root() / "inbox";
    fs::path outside_ = cli_.root() / "outside";
    fs::path sources_ = cli_.root() / "sources";
    fs::path share_ = cli_.root() / "share";
    fs::path drop_ = cli_.root() / "drop";  // a writable share ("drop") for sync pushes
    ferry_cli::receiver node_;
    std::set<std::string> outside_before_;
    std::set<std::string> inbox_before_;
    int sends_ = 0;
};

class hostile_serve : public hostile {
  protected:
    void SetUp() override { start_node(false); }
};

class hostile_receive : public hostile {
  protected:
    void SetUp() override { start_node(true); }
};

// ---------------------------------------------------------------------------------------
// TLS: refused in the handshake, logged once with the peer's address, no frame ever read.

class hostile_tls_test : public hostile_serve {
  protected:
    // The connection ends without a frame from the node (a TLS alert or the close), and
    // the node logs exactly one line about this peer: the refusal, saying `why`.
    void expect_refused_once(hostile_peer& p, std::string_view why) {
        node_answer a = p.read_until_closed();
        EXPECT_TRUE(a.closed) << a.detail;
        EXPECT_TRUE(a.frames.empty()) << "a refused peer got a frame";
        std::string log = log_with("refused connection from " + p.local_address());
        expect_node_still_serves();
        log = node_.proc->err();  // after a whole transfer: any second line would be there
        EXPECT_EQ(lines_with(log, p.local_address()), 1u) << log;
        EXPECT_EQ(lines_with(log, "refused connection from " + p.local_address() + ": "), 1u) << log;
        EXPECT_NE(log.find(why), std::string::npos) << log;
        expect_nothing_outside();
    }
};

TEST_F(hostile_tls_test, plain_tcp_garbage_is_refused) {
    auto p = connect({false, std::nullopt, TLS1_3_VERSION, {}});
    p->send_raw("GET / HTTP/1.1\r\nHost: ferry\r\n\r\n" + std::string(2000, '\xee'));
    expect_refused_once(*p, "does not speak TLS");
    expect_inbox_untouched();
}

TEST_F(hostile_tls_test, tls12_only_client_is_refused) {
    hostile_peer p(node_.address, {true, hostile_.creds, TLS1_2_VERSION, {}});
    EXPECT_FALSE(p.connect()) << "a TLS 1.2 handshake succeeded";
    EXPECT_NE(p.error().find("protocol version"), std::string::npos) << p.error();
    expect_refused_once(p, "does not speak TLS 1.3");
}

TEST_F(hostile_tls_test, tls13_client_without_certificate_is_refused) {
    auto p = connect({true, std::nullopt, TLS1_3_VERSION, {}});
    p->send_frame(wire::Header());  // would be its first frame, were it let in
    expect_refused_once(*p, "sent no certificate");
}

TEST_F(hostile_tls_test, untrusted_node_is_refused_and_never_reaches_the_protocol) {
    identity stranger = load_or_create_identity(cli_.state("C"));
    auto p = connect({true, stranger.creds, TLS1_3_VERSION, {}});
    ASSERT_TRUE(p->hello() == false) << "an untrusted peer got a Hello back";
    expect_refused_once(*p, "node " + format_node_id(stranger.id) + " is not trusted");
    EXPECT_EQ(node_.proc->err().find("Hello"), std::string::npos) << node_.proc->err();
}

TEST_F(hostile_tls_test, rsa_certificate_is_refused) {
    tls_credentials rsa = rsa_credentials("not-a-ferry-node");
    auto p = connect({true, rsa, TLS1_3_VERSION, {}});
    EXPECT_FALSE(p->hello());
    expect_refused_once(*p, "node " + format_node_id(id_of(rsa)) + " is not trusted");
}

TEST_F(hostile_tls_test, certificate_claiming_a_trusted_id_with_another_key_is_refused) {
    // The certificate's CN says it is H (trusted); its key is not H's. The ID is the key's.
    tls_credentials liar = ed25519_credentials_claiming(hostile_.id);
    ASSERT_NE(id_of(liar), hostile_.id);
    auto p = connect({true, liar, TLS1_3_VERSION, {}});
    EXPECT_FALSE(p->hello());
    expect_refused_once(*p, "node " + format_node_id(id_of(liar)) + " is not trusted");
    EXPECT_EQ(lines_with(node_.proc->err(), format_node_id(hostile_.id)), 0u) << node_.proc->err();
}

TEST_F(hostile_tls_test, certificate_chain_is_refused) {
    // H's own (trusted) certificate, followed by a second one: a node presents exactly one.
    tls_credentials extra = ed25519_credentials_claiming("extra");
    auto p = connect({true, hostile_.creds, TLS1_3_VERSION, {extra.cert_pem}});
    EXPECT_FALSE(p->hello());
    // Refused before its ID was read: the log gives the TLS layer's reason, once, with the
    // address.
    expect_refused_once(*p, "refused connection from " + p->local_address());
    EXPECT_EQ(lines_with(node_.proc->err(), "chain of 2 certificates"), 1u) << node_.proc->err();
    EXPECT_EQ(lines_with(node_.proc->err(), "is not trusted"), 0u) << node_.proc->err();
    EXPECT_EQ(lines_with(node_.proc->err(), format_node_id(hostile_.id)), 0u) << node_.proc->err();
}

// ---------------------------------------------------------------------------------------
// Frames: each ends that connection (or transfer) with an Error frame and one log line.

class hostile_frames_test : public hostile_serve {
  protected:
    // The transfer from H failed with `code`/`text` in the Error frame, the node logged it
    // once, wrote nothing outside the destination (nothing at all if `untouched`), and
    // still serves.
    void expect_transfer_failed(hostile_peer& p, wire::ErrorCode code, std::string_view text, bool untouched = true) {
        node_answer a = p.read_until_closed();
        p.close();
        expect_error_frame(a, code, text);
        log_with(failed_line());
        expect_node_still_serves();
        std::string log = node_.proc->err();
        EXPECT_EQ(lines_with(log, failed_line()), 1u) << log;
        EXPECT_EQ(lines_with(log, text), 1u) << log;  // the failure's line (an `error:` line said it again)
        expect_nothing_outside();
        if (untouched) {
            expect_inbox_untouched();
        }
    }

    // A frame refused before the peer said Hello: Error frame, one line naming the peer's
    // address.
    void expect_refused_before_hello(hostile_peer& p, std::string_view text) {
        node_answer a = p.read_until_closed();
        p.close();
        expect_error_frame(a, wire::ERROR_PROTOCOL, text);
        log_with(p.local_address());
        expect_node_still_serves();
        std::string log = node_.proc->err();
        EXPECT_EQ(lines_with(log, p.local_address()), 1u) << log;
        EXPECT_EQ(lines_with(log, text), 1u) << log;
        expect_nothing_outside();
    }
};

TEST_F(hostile_frames_test, offer_before_hello) {
    auto p = connect(trusted_tls());
    p->send_frame(frame_with(offer_of({"early.txt"})));
    expect_refused_before_hello(*p, "expected Hello");
}

TEST_F(hostile_frames_test, garbage_after_tls_before_hello) {
    auto p = connect(trusted_tls());
    // A 16-byte header of 0xff: not a protobuf message.
    std::vector<std::uint8_t> junk(1 + 16, 0xff);
    junk[0] = 16;
    std::vector<std::uint8_t> more = pattern_bytes(4000, 3);
    junk.insert(junk.end(), more.begin(), more.end());
    p->send_raw(junk);
    expect_refused_before_hello(*p, "malformed frame header");
}

TEST_F(hostile_frames_test, garbage_after_tls_in_a_session) {
    auto p = session();
    ASSERT_TRUE(p);
    p->send_raw(std::string(8, '\xff'));  // a length varint longer than 5 bytes
    expect_transfer_failed(*p, wire::ERROR_PROTOCOL, "malformed frame length");
}

TEST_F(hostile_frames_test, header_over_64_kib) {
    auto p = session();
    ASSERT_TRUE(p);
    wire::Header h;
    h.mutable_hello()->set_agent(std::string(65 * 1024, 'a'));
    std::vector<std::uint8_t> frame = encode_frame(h);
    ASSERT_GT(frame.size(), max_header_len + 3u);
    p->send_raw(frame);  // may fail part-way: the node stops reading at the length
    expect_transfer_failed(*p, wire::ERROR_PROTOCOL, "frame header exceeds 64 KiB");
}

TEST_F(hostile_frames_test, payload_over_1_mib) {
    auto p = accepted({"big.bin"}, 3 * 1024 * 1024);
    ASSERT_TRUE(p);
    std::vector<std::uint8_t> raw(2 * 1024 * 1024, 0x5a);
    wire::Header h = chunk_header(0, 0, raw);
    // The header claims 2 MiB; only its first 64 KiB are sent before the node's answer.
    std::vector<std::uint8_t> frame = encode_frame(h, std::span<const std::uint8_t>(raw).first(64 * 1024));
    p->send_raw(frame);
    expect_transfer_failed(*p, wire::ERROR_PROTOCOL, "frame payload exceeds 1 MiB", false);
    EXPECT_FALSE(fs::exists(inbox_ / "big.bin"));
}

TEST_F(hostile_frames_test, truncated_frame_then_close) {
    auto p = accepted({"cut.bin"}, 300'000);
    ASSERT_TRUE(p);
    std::vector<std::uint8_t> raw = pattern_bytes(chunk_size, 5);
    std::vector<std::uint8_t> frame = encode_frame(chunk_header(0, 0, raw), raw);
    frame.resize(frame.size() / 2);
    p->send_raw(frame);
    p->shutdown_write();
    node_answer a = p->read_until_closed();
    EXPECT_TRUE(a.closed) << a.detail;
    log_with(failed_line());
    expect_node_still_serves();
    std::string log = node_.proc->err();
    EXPECT_EQ(lines_with(log, failed_line()), 1u) << log;
    EXPECT_EQ(lines_with(log, "in the middle of a frame"), 1u) << log;
    EXPECT_FALSE(fs::exists(inbox_ / "cut.bin"));
    expect_nothing_outside();
}

TEST_F(hostile_frames_test, truncated_hello_then_close) {
    auto p = connect(trusted_tls());
    wire::Header h;
    h.mutable_hello()->set_agent("cut short");
    std::vector<std::uint8_t> frame = encode_frame(h);
    frame.pop_back();
    p->send_raw(frame);
    p->shutdown_write();
    node_answer a = p->read_until_closed();
    EXPECT_TRUE(a.closed) << a.detail;
    EXPECT_TRUE(a.frames.empty());
    log_with(p->local_address());
    expect_node_still_serves();
    std::string log = node_.proc->err();
    EXPECT_EQ(lines_with(log, p->local_address()), 1u) << log;
    EXPECT_EQ(lines_with(log, "in the middle of a frame"), 1u) << log;
}

TEST_F(hostile_frames_test, header_with_no_body) {
    auto p = session();
    ASSERT_TRUE(p);
    // payload_len = 0 and nothing else.
    p->send_raw(std::string("\x02\x08\x00", 3));
    expect_transfer_failed(*p, wire::ERROR_PROTOCOL, "frame carries no known message");
}

TEST_F(hostile_frames_test, header_with_unknown_field_numbers) {
    auto p = session();
    ASSERT_TRUE(p);
    // Field 13 (next free in the oneof) and field 99, both varint 1: fields a newer peer
    // might send, that this node does not know.
    p->send_raw(std::string("\x05\x68\x01\x98\x06\x01", 6));
    expect_transfer_failed(*p, wire::ERROR_PROTOCOL, "frame carries no known message");
}

TEST_F(hostile_frames_test, message_a_receiver_never_expects) {
    auto p = session();
    ASSERT_TRUE(p);
    wire::Header h;
    h.mutable_accept()->set_transfer_id(1);
    p->send_frame(h);
    expect_transfer_failed(*p, wire::ERROR_PROTOCOL, "unexpected message");
}

TEST_F(hostile_frames_test, incompatible_version) {
    auto p = connect(trusted_tls());
    wire::Header h;
    h.mutable_hello()->set_version(protocol_version + 1);
    h.mutable_hello()->set_session_id(std::string(16, 'v'));
    p->send_frame(h);
    node_answer a = p->read_until_closed();
    expect_error_frame(a, wire::ERROR_VERSION, "incompatible protocol version");
    std::string log = log_with(p->local_address());
    EXPECT_NE(log.find("incompatible protocol version"), std::string::npos) << log;
}

TEST_F(hostile_frames_test, chunk_before_offer) {
    auto p = session();
    ASSERT_TRUE(p);
    std::vector<std::uint8_t> raw = pattern_bytes(100, 1);
    p->send_frame(chunk_header(0, 0, raw), raw);
    expect_transfer_failed(*p, wire::ERROR_PROTOCOL, "unknown file");
}

TEST_F(hostile_frames_test, second_hello) {
    auto p = session();
    ASSERT_TRUE(p);
    EXPECT_FALSE(p->hello());
    expect_transfer_failed(*p, wire::ERROR_PROTOCOL, "unexpected message");
}

TEST_F(hostile_frames_test, offer_after_the_last_batch) {
    auto p = accepted({"one.txt"}, 5);
    ASSERT_TRUE(p);
    p->send_frame(frame_with(offer_of({"two.txt"})));
    expect_transfer_failed(*p, wire::ERROR_PROTOCOL, "out of sequence", false);
    EXPECT_FALSE(fs::exists(inbox_ / "two.txt"));
}

TEST_F(hostile_frames_test, paths_to_keep_outside_a_sync) {
    auto p = session();
    ASSERT_TRUE(p);
    wire::Offer o = offer_of({"one.txt"});
    o.add_keep("one.txt");
    p->send_frame(frame_with(o));
    expect_transfer_failed(*p, wire::ERROR_PROTOCOL, "paths to keep in a transfer that is no sync");
    EXPECT_FALSE(fs::exists(inbox_ / "one.txt"));
}

TEST_F(hostile_frames_test, chunk_for_an_unknown_file) {
    auto p = accepted({"known.txt"}, 5);
    ASSERT_TRUE(p);
    std::string raw = "hello";
    p->send_frame(chunk_header(7, 0, bytes_of(raw)), bytes_of(raw));
    expect_transfer_failed(*p, wire::ERROR_PROTOCOL, "unknown file", false);
    EXPECT_FALSE(fs::exists(inbox_ / "known.txt"));
}

TEST_F(hostile_frames_test, chunk_index_beyond_the_declared_size) {
    // 300'000 bytes are two chunks; a third is more than the size allows.
    auto p = accepted({"two-chunks.bin"}, 300'000);
    ASSERT_TRUE(p);
    std::vector<std::uint8_t> raw = pattern_bytes(1000, 2);
    p->send_frame(chunk_header(0, 2, raw), raw);
    expect_transfer_failed(*p, wire::ERROR_PROTOCOL, "chunk index or length out of range", false);
    EXPECT_FALSE(fs::exists(inbox_ / "two-chunks.bin"));
}

TEST_F(hostile_frames_test, last_chunk_shorter_than_the_declared_size) {
    auto p = accepted({"short.bin"}, 300'000);
    ASSERT_TRUE(p);
    std::vector<std::uint8_t> first = pattern_bytes(chunk_size, 3);
    p->send_frame(chunk_header(0, 0, first), first);
    std::vector<std::uint8_t> last = pattern_bytes(1000, 4);  // 300'000 - 262'144 = 37'856 declared
    p->send_frame(chunk_header(0, 1, last), last);
    expect_transfer_failed(*p, wire::ERROR_PROTOCOL, "chunk index or length out of range", false);
    EXPECT_FALSE(fs::exists(inbox_ / "short.bin"));
}

TEST_F(hostile_frames_test, payload_shorter_than_the_chunk_says) {
    auto p = accepted({"lying.bin"}, 1000);
    ASSERT_TRUE(p);
    std::vector<std::uint8_t> raw = pattern_bytes(1000, 6);
    wire::Header h = chunk_header(0, 0, raw);
    p->send_frame(h, std::span<const std::uint8_t>(raw).first(500));  // payload_len 500, raw_len 1000
    expect_transfer_failed(*p, wire::ERROR_PROTOCOL, "unexpected payload length", false);
    EXPECT_FALSE(fs::exists(inbox_ / "lying.bin"));
}

TEST_F(hostile_frames_test, chunk_whose_hash_does_not_match) {
    auto p = accepted({"tampered.bin"}, 1000);
    ASSERT_TRUE(p);
    std::vector<std::uint8_t> raw = pattern_bytes(1000, 7);
    wire::Header h = chunk_header(0, 0, raw);
    raw[500] ^= 1;
    p->send_frame(h, raw);
    expect_transfer_failed(*p, wire::ERROR_INTEGRITY, "tampered.bin: chunk 0 failed its hash check", false);
    EXPECT_FALSE(fs::exists(inbox_ / "tampered.bin"));
}

// A ChunkRun header for `count` full chunks of `file` from `first`.
wire::Header chunk_run_header(std::uint32_t file, std::uint32_t first, std::uint32_t count) {
    wire::Header h;
    wire::ChunkRun* r = h.mutable_chunk_run();
    r->set_file_id(file);
    r->set_first(first);
    r->set_count(count);
    r->set_last_raw_len(chunk_size);
    return h;
}

TEST_F(hostile_frames_test, chunk_run_that_does_not_split_into_its_chunks) {
    auto p = accepted({"run.bin"}, 3 * chunk_size);
    ASSERT_TRUE(p);
    std::vector<std::uint8_t> junk = pattern_bytes(40, 8);
    p->send_frame(chunk_run_header(0, 0, 2), junk);
    expect_transfer_failed(*p, wire::ERROR_PROTOCOL, "a ChunkRun frame that does not split into its chunks", false);
    EXPECT_FALSE(fs::exists(inbox_ / "run.bin"));
}

TEST_F(hostile_frames_test, chunk_run_for_a_file_the_receiver_told_no_older_version_of) {
    // Well formed, but copies of an older version this side never offered (a plain send).
    auto p = accepted({"run.bin"}, 3 * chunk_size);
    ASSERT_TRUE(p);
    const std::vector<delta_op> ops = {{chunk_size, true, 0}};
    std::vector<std::uint8_t> payload(2 * max_run_entry);
    std::size_t n = encode_run_entry({1, 2}, ops, chunk_size, payload.data());
    n += encode_run_entry({3, 4}, ops, chunk_size, payload.data() + n);
    payload.resize(n);
    p->send_frame(chunk_run_header(0, 0, 2), payload);
    expect_transfer_failed(*p, wire::ERROR_PROTOCOL, "chunk index or length out of range", false);
    EXPECT_FALSE(fs::exists(inbox_ / "run.bin"));
}

TEST_F(hostile_frames_test, compressed_chunk_that_does_not_decompress) {
    auto p = accepted({"packed.bin"}, 1000);
    ASSERT_TRUE(p);
    std::vector<std::uint8_t> raw = pattern_bytes(1000, 10);
    wire::Header h = chunk_header(0, 0, raw);
    h.mutable_chunk()->set_codec(wire::CODEC_ZSTD);
    std::vector<std::uint8_t> junk = pattern_bytes(300, 11);  // shorter than raw_len: admitted, then decoded
    p->send_frame(h, junk);
    expect_transfer_failed(*p, wire::ERROR_INTEGRITY, "packed.bin: chunk 0 does not decompress to its length", false);
    EXPECT_FALSE(fs::exists(inbox_ / "packed.bin"));
}

// A Packed frame (a compressed Offer) whose payload is `payload`, said to expand to `raw_len`.
std::vector<std::uint8_t> packed_frame(std::uint32_t raw_len, std::span<const std::uint8_t> payload) {
    wire::Header h;
    h.set_payload_len(static_cast<std::uint32_t>(payload.size()));
    h.mutable_packed()->set_raw_len(raw_len);
    return encode_frame(h, payload);
}

// `h` serialized and compressed as a sender packs an Offer.
std::vector<std::uint8_t> packed_bytes(const wire::Header& h) {
    std::vector<std::uint8_t> raw(h.ByteSizeLong());
    h.SerializeToArray(raw.data(), static_cast<int>(raw.size()));
    std::size_t n = compress_chunk(raw, 1).size;
    raw.resize(n);
    return raw;
}

TEST_F(hostile_frames_test, packed_offer_that_does_not_decompress) {
    auto p = session();
    ASSERT_TRUE(p);
    p->send_raw(packed_frame(1000, pattern_bytes(300, 12)));
    expect_transfer_failed(*p, wire::ERROR_PROTOCOL, "a Packed frame that is not a compressed Offer");
}

TEST_F(hostile_frames_test, packed_frame_holding_another_message) {
    auto p = session();
    ASSERT_TRUE(p);
    wire::Header h;
    h.mutable_hello()->set_agent(std::string(2000, 'a'));
    std::vector<std::uint8_t> packed = packed_bytes(h);
    ASSERT_FALSE(packed.empty());
    p->send_raw(packed_frame(static_cast<std::uint32_t>(h.ByteSizeLong()), packed));
    expect_transfer_failed(*p, wire::ERROR_PROTOCOL, "a Packed frame that is not a compressed Offer");
}

TEST_F(hostile_frames_test, packed_offer_of_another_size_than_it_says) {
    auto p = session();
    ASSERT_TRUE(p);
    wire::Header h;
    *h.mutable_offer() = offer_of({std::string(300, 'a'), std::string(300, 'b'), std::string(300, 'c')});
    std::vector<std::uint8_t> packed = packed_bytes(h);
    ASSERT_FALSE(packed.empty());
    p->send_raw(packed_frame(static_cast<std::uint32_t>(h.ByteSizeLong()) + 1, packed));
    expect_transfer_failed(*p, wire::ERROR_PROTOCOL, "a Packed frame that is not a compressed Offer");
}

TEST_F(hostile_frames_test, packed_frame_said_to_expand_past_64_kib) {
    auto p = session();
    ASSERT_TRUE(p);
    p->send_raw(packed_frame(max_header_len + 1, pattern_bytes(300, 13)));
    expect_transfer_failed(*p, wire::ERROR_PROTOCOL, "a Packed frame out of bounds");
}

TEST_F(hostile_frames_test, a_packed_offer_is_taken_as_the_offer_it_holds) {
    // ... and refused as that Offer would be: a path twice.
    auto p = session();
    ASSERT_TRUE(p);
    wire::Offer o = offer_of({"a.txt", "b.txt"});
    const std::string twice = std::string(200, 'p') + "/" + std::string(200, 'q') + "/" + std::string(200, 'r');
    o.mutable_entries(0)->set_path(twice);
    o.mutable_entries(1)->set_path(twice);
    wire::Header h;
    *h.mutable_offer() = o;
    std::vector<std::uint8_t> packed = packed_bytes(h);
    ASSERT_FALSE(packed.empty());
    p->send_raw(packed_frame(static_cast<std::uint32_t>(h.ByteSizeLong()), packed));
    expect_transfer_failed(*p, wire::ERROR_REFUSED, "duplicate path in offer");
}

TEST_F(hostile_frames_test, another_node_cannot_join_a_session) {
    // H opens a session of two connections; B, trusted too, presents itself as its second.
    auto p = connect(trusted_tls());
    wire::Header h;
    wire::Hello* hello = h.mutable_hello();
    hello->set_version(protocol_version);
    hello->set_session_id(std::string(16, 's'));
    hello->set_conn_count(2);
    ASSERT_TRUE(p->send_frame(h));
    std::optional<wire::Header> reply = p->read_frame();
    ASSERT_TRUE(reply && reply->has_hello()) << p->last_end().detail;
    auto intruder = connect({true, sender_.creds, TLS1_3_VERSION, {}});
    hello->set_conn_index(1);
    intruder->send_frame(h);
    node_answer a = intruder->read_until_closed();
    intruder->close();
    expect_error_frame(a, wire::ERROR_PROTOCOL, "unknown session");
    log_with(intruder->local_address());
    // H's session is untouched: its offer is still answered.
    EXPECT_TRUE(p->offer(offer_of({"still-mine.txt"}))) << p->last_end().detail;
    expect_node_still_serves();
    std::string log = node_.proc->err();
    EXPECT_EQ(lines_with(log, intruder->local_address()), 1u) << log;
    EXPECT_EQ(lines_with(log, "unknown session"), 1u) << log;
    EXPECT_EQ(lines_with(log, failed_line()), 0u) << log;
}

TEST_F(hostile_frames_test, file_done_before_every_chunk_then_close) {
    // The sender claims the file is done with one of its two chunks: the final name never
    // holds it.
    auto p = accepted({"half.bin"}, 300'000);
    ASSERT_TRUE(p);
    std::vector<std::uint8_t> first = pattern_bytes(chunk_size, 8);
    p->send_frame(chunk_header(0, 0, first), first);
    wire::Header done;
    std::vector<digest128> digests{hash_chunk(first)};
    digest128 d = file_digest(digests);
    done.mutable_file_done()->set_file_id(0);
    done.mutable_file_done()->set_digest_lo(d.lo);
    done.mutable_file_done()->set_digest_hi(d.hi);
    p->send_frame(done);
    std::optional<wire::Header> ack = p->read_frame();
    ASSERT_TRUE(ack && ack->body_case() == wire::Header::kChunkAck) << p->last_end().detail;
    p->shutdown_write();
    node_answer a = p->read_until_closed();
    EXPECT_TRUE(a.closed);
    log_with(failed_line());
    expect_node_still_serves();
    EXPECT_EQ(lines_with(node_.proc->err(), failed_line()), 1u) << node_.proc->err();
    EXPECT_FALSE(fs::exists(inbox_ / "half.bin"));
    expect_nothing_outside();
}

TEST_F(hostile_frames_test, files_given_up_on_while_their_chunks_are_written_leave_no_partial_file) {
    // A sender gives up on each file right after its first chunk (it changed while read).
    // A file whose chunk is still being written has its partial file removed once the
    // write is done, and the transfer's end waits for that: no partial file is left when
    // the TransferResult comes (the end was told while the removal still waited).
    constexpr std::uint32_t files = 40;
    constexpr std::uint64_t size = chunk_size + 1000;
    std::vector<std::string> names;
    for (std::uint32_t i = 0; i < files; ++i) {
        names.push_back("f" + std::to_string(100 + i) + ".bin");
    }
    auto p = accepted(names, size);
    ASSERT_TRUE(p);
    for (std::uint32_t i = 0; i < files; ++i) {
        std::vector<std::uint8_t> data = pattern_bytes(chunk_size, 50 + i);
        ASSERT_TRUE(p->send_frame(chunk_header(i, 0, data), data));
        wire::Header abort;
        abort.mutable_file_abort()->set_file_id(i);
        abort.mutable_file_abort()->set_reason("changed while read");
        abort.mutable_file_abort()->set_again(true);
        ASSERT_TRUE(p->send_frame(abort));
    }
    std::optional<wire::Header> frame;
    while ((frame = p->read_frame()) && frame->body_case() != wire::Header::kTransferResult &&
           frame->body_case() != wire::Header::kError) {
    }
    ASSERT_TRUE(frame) << p->last_end().detail;
    ASSERT_EQ(frame->body_case(), wire::Header::kTransferResult) << frame->error().message();
    EXPECT_TRUE(frame->transfer_result().ok());
    EXPECT_EQ(frame->transfer_result().bytes(), 0u);  // nothing of a file given up on counts
    expect_inbox_untouched();
    p->shutdown_write();
    p->read_until_closed();
    p->close();
    expect_node_still_serves();
    expect_nothing_outside();
}

TEST_F(hostile_frames_test, declared_size_that_overflows_the_chunk_count) {
    // 2^64 - 1 bytes: chunk_count() must not wrap around to 0 (an "empty" file of any
    // size), and a second file must not wrap the offer's total back under the free space.
    auto p = session();
    ASSERT_TRUE(p);
    wire::Offer o = offer_of({"huge.bin", "small.bin"}, 1);
    o.mutable_entries(0)->set_size(std::numeric_limits<std::uint64_t>::max());
    std::optional<wire::Accept> a = p->offer(o);
    p->close();
    EXPECT_FALSE(a) << "an offer of a 16 EiB file was accepted";
    expect_error_frame(p->last_end(), wire::ERROR_REFUSED, "chunk index or length out of range");
    log_with(failed_line());
    expect_node_still_serves();
    EXPECT_FALSE(fs::exists(inbox_ / "huge.bin"));
    expect_nothing_outside();
}

TEST_F(hostile_frames_test, duplicate_file_ids) {
    auto p = session();
    ASSERT_TRUE(p);
    wire::Offer o = offer_of({"a.txt", "b.txt"});
    o.mutable_entries(1)->set_id(0);
    p->send_frame(frame_with(o));
    expect_transfer_failed(*p, wire::ERROR_PROTOCOL, "duplicate file id");
}

TEST_F(hostile_frames_test, more_files_than_the_limit) {
    auto p = session();
    ASSERT_TRUE(p);
    wire::Offer o = offer_of({"a.txt"});
    o.set_total_files(max_files_per_transfer + 1);
    o.set_last(false);
    p->send_frame(frame_with(o));
    expect_transfer_failed(*p, wire::ERROR_REFUSED, "too many files");
}

// ---------------------------------------------------------------------------------------
// Paths in an Offer: refused before anything is written.

class hostile_paths_test : public hostile_serve {
  protected:
    // Offers a valid folder and file and then `bad` in one batch; the node refuses the
    // whole offer and writes nothing, not even the valid entries before it.
    void expect_offer_refused(const std::string& bad, std::string_view text, bool bad_is_dir = false) {
        SCOPED_TRACE("path \"" + bad + "\" (" + std::to_string(bad.size()) + " bytes)");
        auto p = session();
        ASSERT_TRUE(p);
        wire::Offer o;
        o.set_transfer_id(9);
        o.set_last(true);
        add_entry(o, 0, "fine", true);
        add_entry(o, 1, "fine/first.txt", false, 5);
        add_entry(o, 2, bad, bad_is_dir, 5);
        o.set_total_files(3);
        o.set_total_bytes(10);
        std::optional<wire::Accept> a = p->offer(o);
        p->close();
        EXPECT_FALSE(a) << "accepted";
        expect_error_frame(p->last_end(), wire::ERROR_REFUSED, text);
        expect_inbox_untouched();
        expect_nothing_outside();
        ++refusals_;
    }

    void expect_all_logged_then_serving(std::string_view text) {
        std::string log = log_with(failed_line());
        expect_node_still_serves();
        log = node_.proc->err();
        EXPECT_EQ(lines_with(log, failed_line()), refusals_) << log;
        EXPECT_EQ(lines_with(log, text), refusals_) << log;  // the failure's line (an `error:` line said it again)
    }

    std::size_t refusals_ = 0;
};

TEST_F(hostile_paths_test, unsafe_paths_are_refused_before_anything_is_written) {
    std::string outside = outside_.string();
    std::vector<std::string> bad = {
        outside + "/absolute.txt",  // absolute
        "/etc/passwd",
        "../outside/escape.txt",  // ".." anywhere
        "fine/../../outside/escape.txt",
        "fine/..",
        "..",
        "./x.txt",
        "fine//empty-component.txt",  // empty components
        "fine/",
        "",
        std::string("nul\0byte.txt", 12),  // NUL
        std::string(256, 'n'),             // a name over 255 bytes
        ".x.txt.ferry-part",  // a name the receiver keeps for its own partial files
    };
    std::string deep;  // a path over 4096 bytes, of names of 200 bytes
    while (deep.size() <= max_path_bytes) {
        deep += std::string(200, 'd') + "/";
    }
    bad.push_back(deep + "x");
    for (const std::string& path : bad) {
        expect_offer_refused(path, "unsafe or malformed path");
    }
    expect_all_logged_then_serving("unsafe or malformed path");
}

TEST_F(hostile_paths_test, unsafe_path_with_control_characters_is_logged_escaped) {
    // A refused path is quoted in the log: its bytes must not become terminal escapes or
    // a forged line of their own.
    expect_offer_refused("../\x1b[2J\nferry: received 999 files from NOBODY", "unsafe or malformed path");
    expect_all_logged_then_serving("unsafe or malformed path");
    EXPECT_EQ(lines_with(node_.proc->err(), "received 999 files"), 1u);  // inside the failure's line, not one of its own
    EXPECT_EQ(node_.proc->err().find("\nferry: received 999"), std::string::npos) << node_.proc->err();
}

TEST_F(hostile_paths_test, a_backslash_name_is_one_name_inside_the_destination) {
    // Any bytes but '/' and NUL make a name on Linux: "..\\..\\outside\\x.txt" is one
    // file, made inside the inbox, never a way out of it.
    const std::string name = "..\\..\\outside\\x.txt";
    fs::path src = sources_ / "odd";
    write_text_file(src / name, "hello\n");
    run_result r = cli_.ferry({"send", "--state", cli_.state("B").string(), "--quiet", src.string(),
                               node_.id + "@" + node_.address});
    ASSERT_EQ(r.code, 0) << r.err;
    EXPECT_EQ(read_text_file(inbox_ / "odd" / name), "hello\n");
    expect_nothing_outside();
}

TEST_F(hostile_paths_test, a_sync_keep_list_that_is_unsafe_or_too_long_is_refused) {
    // SyncTarget.keep names paths --delete must leave: each must be a wire path, and all of
    // them fit max_sync_keep_bytes. Either way the sync is refused before anything is
    // decided, and the log quotes the path escaped.
    auto refuse = [&](const std::vector<std::string>& keep, std::string_view text) {
        auto p = session();
        ASSERT_TRUE(p);
        wire::Offer o = offer_of({"a.txt"});
        wire::SyncTarget* t = o.mutable_sync();
        t->set_share("drop");
        t->set_delete_(true);
        for (const std::string& k : keep) {
            t->add_keep(k);
        }
        std::optional<wire::Accept> a = p->offer(o);
        p->close();
        EXPECT_FALSE(a) << "accepted";
        expect_error_frame(p->last_end(), wire::ERROR_REFUSED, text);
        ++refusals_;
    };
    refuse({"ok", "../escape"}, "bad path to keep");
    refuse({"/etc/passwd"}, "bad path to keep");
    refuse({"\x1b[2J\nferry: forged line/../x"}, "bad path to keep");
    refuse(std::vector<std::string>(max_sync_keep_bytes / 100 + 1, std::string(98, 'k')), "paths to keep over");
    expect_all_logged_then_serving("refused sync");
    EXPECT_TRUE(fs::is_empty(drop_));
    EXPECT_EQ(node_.proc->err().find("\nferry: forged line"), std::string::npos) << node_.proc->err();
}

// A sender that streams its scan sends what it skips later as paths to keep with a later
// batch (Offer.keep): checked as the first batch's are, and counted with them.
TEST_F(hostile_paths_test, paths_to_keep_in_a_later_batch_are_checked_as_the_first_batchs_are) {
    write_text_file(drop_ / "old.txt", "not offered: only a sync that ends deletes it\n");
    auto refuse = [&](const std::vector<std::string>& first, const std::vector<std::string>& later,
                      std::string_view text) {
        auto p = session();
        ASSERT_TRUE(p);
        wire::Offer o = offer_of({});
        o.set_last(false);
        wire::SyncTarget* t = o.mutable_sync();
        t->set_share("drop");
        t->set_delete_(true);
        for (const std::string& k : first) {
            t->add_keep(k);
        }
        ASSERT_TRUE(p->offer(o)) << p->last_end().detail;
        wire::Offer more = offer_of({});
        for (const std::string& k : later) {
            more.add_keep(k);
        }
        std::optional<wire::Accept> a = p->offer(more);
        p->close();
        EXPECT_FALSE(a) << "accepted";
        expect_error_frame(p->last_end(), wire::ERROR_REFUSED, text);
        ++refusals_;
    };
    refuse({}, {"ok", "../escape"}, "bad path to keep");
    // Each batch's alone is under max_sync_keep_bytes, both together over it.
    const std::vector<std::string> half(max_sync_keep_bytes / 200 + 1, std::string(98, 'k'));
    refuse(half, half, "paths to keep over");
    expect_all_logged_then_serving("refused sync");
    EXPECT_EQ(read_text_file(drop_ / "old.txt"), "not offered: only a sync that ends deletes it\n");
}

TEST_F(hostile_paths_test, write_through_a_symlink_in_the_destination_is_refused) {
    fs::create_directory_symlink(outside_, inbox_ / "link");
    inbox_before_ = inbox_listing();
    expect_offer_refused("link/x.txt", "refusing to write through a symlink");
    expect_offer_refused("link", "refusing to write through a symlink");
    expect_offer_refused("link", "refusing to write through a symlink", true);
    expect_offer_refused("link/deeper/x.txt", "refusing to write through a symlink");
    expect_all_logged_then_serving("refusing to write through a symlink");
}

TEST_F(hostile_paths_test, two_entries_for_the_same_path_are_refused) {
    expect_offer_refused("fine/first.txt", "duplicate path");
    expect_offer_refused("fine/first.txt/inside", "duplicate path");  // a file taken for a folder
    expect_all_logged_then_serving("duplicate path");
}

// Entries go by name, a folder right before what it holds: so a receiver checks them
// against the chain of folders the last one lies in, not a set of every path.
TEST_F(hostile_paths_test, entries_out_of_order_are_refused) {
    expect_offer_refused("a-before-fine", "offer out of order");
    expect_offer_refused("fine", "offer out of order", true);  // the folder again, after what it holds
    expect_all_logged_then_serving("offer out of order");
}

// ---------------------------------------------------------------------------------------
// `ferry receive`: a refused peer does not end the one-shot receiver; a failed transfer
// from its trusted sender does, with exit 2.

TEST_F(hostile_receive, refused_handshakes_leave_the_receiver_waiting_for_its_sender) {
    auto garbage = connect({false, std::nullopt, TLS1_3_VERSION, {}});
    garbage->send_raw("SSH-2.0-OpenSSH_9.2\r\n" + std::string(600, '\0'));
    EXPECT_TRUE(garbage->read_until_closed().closed);
    identity stranger = load_or_create_identity(cli_.state("C"));
    auto untrusted = connect({true, stranger.creds, TLS1_3_VERSION, {}});
    EXPECT_FALSE(untrusted->hello());
    std::string log = log_with("refused connection from " + untrusted->local_address());
    EXPECT_EQ(lines_with(log, garbage->local_address()), 1u) << log;
    expect_node_still_serves(true);
    EXPECT_EQ(lines_with(node_.proc->err(), untrusted->local_address()), 1u) << node_.proc->err();
    expect_nothing_outside();
}

TEST_F(hostile_receive, protocol_error_ends_the_one_shot_receiver_with_exit_2) {
    auto p = accepted({"tampered.bin"}, 1000);
    ASSERT_TRUE(p);
    std::vector<std::uint8_t> raw = pattern_bytes(1000, 9);
    wire::Header h = chunk_header(0, 0, raw);
    raw[0] ^= 0xff;
    p->send_frame(h, raw);
    expect_error_frame(p->read_until_closed(), wire::ERROR_INTEGRITY, "failed its hash check");
    p->close();
    EXPECT_EQ(node_.proc->wait(std::chrono::milliseconds(process_timeout)), 2);
    std::string log = node_.proc->err();
    EXPECT_EQ(lines_with(log, failed_line()), 1u) << log;
    EXPECT_EQ(lines_with(log, "error: tampered.bin: chunk 0 failed its hash check"), 1u) << log;
    EXPECT_FALSE(fs::exists(inbox_ / "tampered.bin"));
    expect_nothing_outside();
}

// ---------------------------------------------------------------------------------------
// Pulls (Hello.pull): the node sends out of a share, never outside it.

class hostile_pull_test : public hostile_frames_test {
  protected:
    // Connection 0 asking to pull `path` of share `share`.
    static wire::Header pull_hello(const std::string& share, const std::string& path) {
        wire::Header h;
        wire::Hello* hello = h.mutable_hello();
        hello->set_version(protocol_version);
        hello->set_session_id(std::string(16, 'p'));
        hello->set_conn_index(0);
        hello->set_conn_count(1);
        hello->set_agent("hostile-peer/0");
        hello->mutable_pull()->set_share(share);
        hello->mutable_pull()->set_path(path);
        return h;
    }
};

// A symlink in the share (here to a file outside it) is offered as a link, its target as
// text with no data: never what it points to.
TEST_F(hostile_pull_test, a_pull_offers_what_the_share_holds_and_a_symlink_only_as_a_link) {
    auto p = connect(trusted_tls());
    ASSERT_TRUE(p->send_frame(pull_hello("pub", "")));
    std::optional<wire::Header> hello = p->read_frame();
    ASSERT_TRUE(hello && hello->has_hello()) << p->last_end().detail;
    std::vector<std::string> offered;
    for (bool last = false; !last;) {
        std::optional<wire::Header> f = p->read_frame();
        ASSERT_TRUE(f && f->has_offer()) << p->last_end().detail;
        // The first batch names the share; later ones (a scan's parts as they end) none.
        if (offered.empty()) {
            EXPECT_TRUE(f->offer().sync().share() == "pub");
        } else {
            EXPECT_FALSE(f->offer().has_sync());
        }
        for (const wire::Entry& e : f->offer().entries()) {
            offered.push_back(e.path());
            if (e.path() == "pub/leak.txt") {
                EXPECT_EQ(e.kind(), wire::ENTRY_SYMLINK);
                EXPECT_EQ(e.size(), 0u);
                EXPECT_EQ(e.link_target(), (cli_.root() / "secret.txt").string());
            }
        }
        last = f->offer().last();
    }
    EXPECT_EQ(offered, (std::vector<std::string>{"pub", "pub/leak.txt", "pub/readme.txt"}));
    p->close();
    expect_node_still_serves();
}

TEST_F(hostile_pull_test, paths_out_of_the_share_are_refused) {
    for (const std::string& path : {std::string("../outside"), std::string("pub/leak.txt"), std::string("/etc"),
                                    std::string("pub/../..")}) {
        auto p = connect(trusted_tls());
        ASSERT_TRUE(p->send_frame(pull_hello("pub", path)));
        node_answer a = p->read_until_closed();
        p->close();
        expect_error_frame(a, wire::ERROR_REFUSED, "refused pull");
        EXPECT_EQ(a.count(wire::Header::kOffer), 0u) << path;
    }
    expect_node_still_serves();
    expect_nothing_outside();
}

// A get (SyncTarget.get) offers the one file or folder asked for under the name asked,
// and never follows a symlink or leaves the share to find it.
TEST_F(hostile_pull_test, a_get_offers_one_entry_by_the_name_asked_and_never_leaves_the_share) {
    auto p = connect(trusted_tls());
    wire::Header h = pull_hello("pub", "pub/readme.txt");
    h.mutable_hello()->mutable_pull()->set_get("renamed.txt");
    ASSERT_TRUE(p->send_frame(h));
    std::optional<wire::Header> hello = p->read_frame();
    ASSERT_TRUE(hello && hello->has_hello()) << p->last_end().detail;
    std::optional<wire::Header> f = p->read_frame();
    ASSERT_TRUE(f && f->has_offer()) << p->last_end().detail;
    ASSERT_EQ(f->offer().entries_size(), 1);
    EXPECT_EQ(f->offer().entries(0).path(), "renamed.txt");
    EXPECT_EQ(f->offer().entries(0).kind(), wire::ENTRY_FILE);
    EXPECT_EQ(f->offer().entries(0).size(), 7u);
    EXPECT_TRUE(f->offer().last());
    EXPECT_EQ(f->offer().sync().root_mode(), 0u);  // the puller's folder is not the share's
    p->close();

    struct refused_case {
        std::string path;
        std::string get;
        bool del;
        std::string message;
    };
    for (const refused_case& c : {refused_case{"pub/leak.txt", "x", false, "symlink"},
                                  refused_case{"../outside", "x", false, "bad path"},
                                  refused_case{"pub/missing", "x", false, "no \"pub/missing\" in the share"},
                                  refused_case{"pub", "a/b", false, "bad name for a get"},
                                  refused_case{"pub", "..", false, "bad name for a get"},
                                  refused_case{"pub", "pub", true, "deletes nothing"}}) {
        auto q = connect(trusted_tls());
        wire::Header g = pull_hello("pub", c.path);
        g.mutable_hello()->mutable_pull()->set_get(c.get);
        g.mutable_hello()->mutable_pull()->set_delete_(c.del);
        ASSERT_TRUE(q->send_frame(g));
        node_answer a = q->read_until_closed();
        q->close();
        expect_error_frame(a, wire::ERROR_REFUSED, c.message);
        EXPECT_EQ(a.count(wire::Header::kOffer), 0u) << c.path;
    }
    expect_node_still_serves();
    expect_nothing_outside();
}

// A range get (SyncTarget.range_*, `ferry get --from`) offers the range of one regular
// file as a file of the range's length; anything else is refused before a byte is read.
TEST_F(hostile_pull_test, a_range_get_offers_only_that_range_of_one_file) {
    auto ranged = [](const std::string& path, const std::string& get, std::uint64_t offset, std::uint64_t length) {
        wire::Header h = pull_hello("pub", path);
        h.mutable_hello()->mutable_pull()->set_get(get);
        h.mutable_hello()->mutable_pull()->set_range_offset(offset);
        h.mutable_hello()->mutable_pull()->set_range_length(length);
        return h;
    };
    auto p = connect(trusted_tls());
    ASSERT_TRUE(p->send_frame(ranged("pub/readme.txt", "r0", 0, 3)));
    std::optional<wire::Header> hello = p->read_frame();
    ASSERT_TRUE(hello && hello->has_hello()) << p->last_end().detail;
    std::optional<wire::Header> f = p->read_frame();
    ASSERT_TRUE(f && f->has_offer()) << p->last_end().detail;
    ASSERT_EQ(f->offer().entries_size(), 1);
    EXPECT_EQ(f->offer().entries(0).path(), "r0");
    EXPECT_EQ(f->offer().entries(0).size(), 3u);  // the range, not the file's 7 bytes
    EXPECT_EQ(f->offer().total_bytes(), 3u);
    p->close();

    struct refused_case {
        std::string path;
        std::string get;
        std::uint64_t offset;
        std::uint64_t length;
        bool checksum;
        std::string message;
    };
    for (const refused_case& c :
         {refused_case{"pub/readme.txt", "r", chunk_size, 10, false, "past the end of the file"},
          refused_case{"pub/readme.txt", "r", 5, 10, false, "multiple of the chunk size"},
          refused_case{"pub", "r", 0, 10, false, "one regular file"},
          refused_case{"pub/readme.txt", "", 0, 10, false, "a range is a get's"},
          refused_case{"pub/readme.txt", "r", 0, 10, true, "without --checksum"},
          refused_case{"pub/leak.txt", "r", 0, 10, false, "symlink"}}) {
        auto q = connect(trusted_tls());
        wire::Header g = ranged(c.path, c.get, c.offset, c.length);
        g.mutable_hello()->mutable_pull()->set_checksum(c.checksum);
        ASSERT_TRUE(q->send_frame(g));
        node_answer a = q->read_until_closed();
        q->close();
        expect_error_frame(a, wire::ERROR_REFUSED, c.message);
        EXPECT_EQ(a.count(wire::Header::kOffer), 0u) << c.message;
    }
    expect_node_still_serves();
    expect_nothing_outside();
}

// A listing (Hello.list) shows the share's entries, a symlink as a link, and nothing
// out of the share; then the node closes the connection.
TEST_F(hostile_pull_test, a_listing_stays_in_the_share_and_ends_with_the_connection) {
    auto list_hello = [](const std::string& share, const std::string& path) {
        wire::Header h = pull_hello(share, path);
        h.mutable_hello()->clear_pull();
        h.mutable_hello()->mutable_list()->set_share(share);
        h.mutable_hello()->mutable_list()->set_path(path);
        return h;
    };
    auto p = connect(trusted_tls());
    ASSERT_TRUE(p->send_frame(list_hello("pub", "pub")));
    node_answer a = p->read_until_closed();
    p->close();
    EXPECT_TRUE(a.closed) << a.detail;
    ASSERT_EQ(a.count(wire::Header::kOffer), 1u) << a.detail;
    std::vector<std::string> listed;
    for (const wire::Header& f : a.frames) {
        if (f.has_offer()) {
            EXPECT_TRUE(f.offer().last());
            for (const wire::Entry& e : f.offer().entries()) {
                listed.push_back(e.path());
                if (e.path() == "pub/leak.txt") {
                    EXPECT_EQ(e.kind(), wire::ENTRY_SYMLINK);  // a link, never what it points to
                    EXPECT_EQ(e.size(), 0u);
                }
            }
        }
    }
    EXPECT_EQ(listed, (std::vector<std::string>{"pub", "pub/leak.txt", "pub/readme.txt"}));
    // With checksum, a file comes with its digest (a folder never has one).
    for (const std::string& path : {std::string("pub/readme.txt"), std::string("pub")}) {
        auto q = connect(trusted_tls());
        wire::Header h = list_hello("pub", path);
        h.mutable_hello()->mutable_list()->set_checksum(true);
        ASSERT_TRUE(q->send_frame(h));
        node_answer r = q->read_until_closed();
        q->close();
        ASSERT_EQ(r.count(wire::Header::kOffer), 1u) << r.detail;
        for (const wire::Header& f : r.frames) {
            if (f.has_offer()) {
                EXPECT_EQ(f.offer().entries(0).digest().size(), path == "pub" ? 0u : 16u) << path;
            }
        }
    }
    for (const std::string& path : {std::string("../outside"), std::string("pub/leak.txt"), std::string("/etc")}) {
        auto q = connect(trusted_tls());
        ASSERT_TRUE(q->send_frame(list_hello("pub", path)));
        node_answer r = q->read_until_closed();
        q->close();
        expect_error_frame(r, wire::ERROR_REFUSED, "refused list");
        EXPECT_EQ(r.count(wire::Header::kOffer), 0u) << path;
    }
    expect_node_still_serves();
    expect_nothing_outside();
}

TEST_F(hostile_pull_test, a_frame_while_the_pull_is_prepared_ends_it_and_frees_its_connection) {
    // Many times over: a connection that took over while closing would stay counted, and
    // the node would end up refusing everyone (--max-connections).
    for (int i = 0; i < 40; ++i) {
        auto p = connect(trusted_tls());
        ASSERT_TRUE(p->send_frame(pull_hello("pub", "")));
        ASSERT_TRUE(p->send_frame(frame_with(offer_of({"x.txt"}))));
        node_answer a = p->read_until_closed();
        p->close();
        // Either the node read the second frame during the scan (Error), or the scan won
        // and the session read it as a protocol error: the connection ends both ways.
        EXPECT_TRUE(a.closed) << a.detail;
        EXPECT_EQ(a.count(wire::Header::kError), 1u) << i;
    }
    expect_node_still_serves();
    // Every one of them is gone from the node's count (asked until it is, at most 300 times:
    // the last transfer's connections close just after the sender exits).
    int connections = -1;
    for (int i = 0; i < 300 && connections != 0; ++i) {
        run_result status = cli_.ferry({"status", "--state", cli_.state("A").string(), "--json"});
        ASSERT_EQ(status.code, 0) << status.err;
        connections = nlohmann::json::parse(status.out)["connections"].get<int>();
    }
    EXPECT_EQ(connections, 0);
}

}  // namespace

