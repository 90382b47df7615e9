// The node's identity on disk (key.pem, cert.pem, modes, reload) and the state folder.
#include "node/identity.hpp"

#include <gtest/gtest.h>
#include <sys/stat.h>

#include <cstdlib>
#include <optional>
#include <stdexcept>
#include <string>

#include "tests/support/temp_dir.hpp"
#include "tests/support/tree.hpp"
#include "transport/tls.hpp"

namespace ferry {
namespace {

namespace fs = std::filesystem;

unsigned mode_of(const fs::path& p) {
    struct stat st {};
    EXPECT_EQ(::stat(p.c_str(), &st), 0) << p;
    return st.st_mode & 07777;
}

// Sets or unsets an environment variable for one scope, restoring the old value.
class scoped_env {
  public:
    scoped_env(const char* name, const char* value) : name_(name) {
        if (const char* old = std::getenv(name)) {
            old_ = old;
        }
        if (value != nullptr) {
            ::setenv(name, value, 1);
        } else {
            ::unsetenv(name);
        }
    }
    scoped_env(const scoped_env&) = delete;
    scoped_env& operator=(const scoped_env&) = delete;
    ~scoped_env() {
        if (old_) {
            ::setenv(name_.c_str(), old_->c_str(), 1);
        } else {
            ::unsetenv(name_.c_str());
        }
    }

  private:
    std::string name_;
    std::optional<std::string> old_;
};

// Expects `fn` to throw std::runtime_error whose message contains `needle`.
template <typename Fn>
void expect_error_containing(Fn&& fn, const std::string& needle) {
    try {
        fn();
        ADD_FAILURE() << "no exception; expected one mentioning " << needle;
    } catch (const std::runtime_error& e) {
        EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
    }
}

TEST(identity, created_on_first_use_with_private_modes) {
    test::temp_dir tmp;
    const fs::path dir = tmp / "state/ferry";  // parents do not exist yet
    identity id = load_or_create_identity(dir);

    EXPECT_EQ(id.id.size(), node_id_chars);
    EXPECT_EQ(parse_node_id(id.id), id.id);
    EXPECT_EQ(mode_of(dir), 0700u);
    EXPECT_EQ(mode_of(dir / "key.pem"), 0600u);
    EXPECT_EQ(mode_of(dir / "cert.pem"), 0600u);
    EXPECT_EQ(test::read_text_file(dir / "key.pem"), id.creds.key_pem);
    EXPECT_EQ(test::read_text_file(dir / "cert.pem"), id.creds.cert_pem);

    // Nothing else is left behind (no temp files).
    for (const fs::directory_entry& e : fs::directory_iterator(dir)) {
        std::string name = e.path().filename().string();
        EXPECT_TRUE(name == "key.pem" || name == "cert.pem" || name == "identity.lock") << name;
    }

    // The credentials work and carry the same ID.
    tls_context ctx(id.creds, tls_role::server);
    EXPECT_EQ(ctx.id(), id.id);
}

TEST(identity, reload_gives_the_same_id) {
    test::temp_dir tmp;
    identity first = load_or_create_identity(tmp.path());
    identity second = load_or_create_identity(tmp.path());
    EXPECT_EQ(first.id, second.id);
    EXPECT_EQ(first.creds.key_pem, second.creds.key_pem);
    EXPECT_EQ(first.creds.cert_pem, second.creds.cert_pem);

    test::temp_dir other;
    EXPECT_NE(load_or_create_identity(other.path()).id, first.id);
}

TEST(identity, refuses_a_key_readable_by_others) {
    test::temp_dir tmp;
    load_or_create_identity(tmp.path());
    const fs::path key = tmp / "key.pem";
    ASSERT_EQ(::chmod(key.c_str(), 0640), 0);
    expect_error_containing([&] { load_or_create_identity(tmp.path()); }, key.string());
    ASSERT_EQ(::chmod(key.c_str(), 0604), 0);
    expect_error_containing([&] { load_or_create_identity(tmp.path()); }, "chmod 600");
    ASSERT_EQ(::chmod(key.c_str(), 0600), 0);
    EXPECT_NO_THROW(load_or_create_identity(tmp.path()));
}

TEST(identity, lost_certificate_is_rebuilt_with_the_same_id) {
    test::temp_dir tmp;
    identity first = load_or_create_identity(tmp.path());
    fs::remove(tmp / "cert.pem");
    identity second = load_or_create_identity(tmp.path());
    EXPECT_EQ(second.id, first.id);
    EXPECT_EQ(second.creds.key_pem, first.creds.key_pem);
    EXPECT_NE(second.creds.cert_pem, first.creds.cert_pem);  // new serial
    EXPECT_EQ(mode_of(tmp / "cert.pem"), 0600u);
    EXPECT_EQ(load_or_create_identity(tmp.path()).creds.cert_pem, second.creds.cert_pem);
}

TEST(identity, lost_key_is_an_error_not_a_new_identity) {
    test::temp_dir tmp;
    load_or_create_identity(tmp.path());
    fs::remove(tmp / "key.pem");
    expect_error_containing([&] { load_or_create_identity(tmp.path()); }, "key.pem");
    EXPECT_FALSE(fs::exists(tmp / "key.pem"));
}

TEST(identity, corrupt_or_mismatched_files_are_errors) {
    test::temp_dir a;
    test::temp_dir b;
    load_or_create_identity(a.path());
    load_or_create_identity(b.path());

    // b's certificate with a's key.
    fs::copy_file(b / "cert.pem", a / "cert.pem", fs::copy_options::overwrite_existing);
    expect_error_containing([&] { load_or_create_identity(a.path()); }, "does not match");

    write_private_file(a / "cert.pem", "garbage\n");
    expect_error_containing([&] { load_or_create_identity(a.path()); }, (a / "cert.pem").string());

    write_private_file(b / "key.pem", "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n");
    expect_error_containing([&] { load_or_create_identity(b.path()); }, (b / "key.pem").string());
}

TEST(identity, state_dir_that_is_a_file_is_an_error) {
    test::temp_dir tmp;
    write_private_file(tmp / "file", "x");
    expect_error_containing([&] { load_or_create_identity(tmp / "file"); }, "not a folder");
}

TEST(write_private_file, mode_0600_whatever_the_umask_and_replaces) {
    test::temp_dir tmp;
    const fs::path p = tmp / "f.json";
    mode_t old = ::umask(0);
    write_private_file(p, "one");
    ::umask(0277);
    write_private_file(p, "two");
    ::umask(old);
    EXPECT_EQ(mode_of(p), 0600u);
    EXPECT_EQ(test::read_text_file(p), "two");
    EXPECT_THROW(write_private_file(tmp / "missing/f", "x"), std::runtime_error);
}

TEST(state_dir, resolution_order) {
    scoped_env ferry_state("FERRY_STATE", "/srv/ferry-state");
    scoped_env xdg("XDG_STATE_HOME", "/home/u/.state");
    scoped_env home("HOME", "/home/u");

    EXPECT_EQ(resolve_state_dir(fs::path("/opt/flag")), fs::path("/opt/flag"));
    EXPECT_EQ(resolve_state_dir(std::nullopt), fs::path("/srv/ferry-state"));

    ::unsetenv("FERRY_STATE");
    EXPECT_EQ(resolve_state_dir(std::nullopt), fs::path("/home/u/.state/ferry"));

    ::setenv("FERRY_STATE", "", 1);  // empty counts as unset
    EXPECT_EQ(resolve_state_dir(std::nullopt), fs::path("/home/u/.state/ferry"));

    ::setenv("XDG_STATE_HOME", "relative/state", 1);  // the XDG spec says ignore it
    EXPECT_EQ(resolve_state_dir(std::nullopt), fs::path("/home/u/.local/state/ferry"));

    ::unsetenv("XDG_STATE_HOME");
    EXPECT_EQ(resolve_state_dir(std::nullopt), fs::path("/home/u/.local/state/ferry"));

    // A relative flag is made absolute.
    EXPECT_EQ(resolve_state_dir(fs::path("rel")), fs::current_path() / "rel");
    EXPECT_EQ(resolve_state_dir(fs::path()), fs::path("/home/u/.local/state/ferry"));
}

}  // namespace
}  // namespace ferry
