#include "node/identity.hpp"

#include <fcntl.h>
#include <fmt/format.h>
#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <grp.h>
#include <pwd.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/xattr.h>
#include <unistd.h>

#include <array>
#include <atomic>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <random>
#include <stdexcept>
#include <vector>

#include "node/file_io.hpp"
#include "transport/openssl_util.hpp"
#include "transport/tls.hpp"

namespace ferry {
namespace {

namespace fs = std::filesystem;

[[noreturn]] void fail(const fs::path& path, std::string_view reason) {
    throw std::runtime_error(fmt::format("{}: {}", path.string(), reason));
}

[[noreturn]] void fail_errno(const fs::path& path, std::string_view action, int err) {
    throw std::runtime_error(fmt::format("{}: cannot {}: {}", path.string(), action, std::strerror(err)));
}

std::string env(const char* name) {
    const char* value = std::getenv(name);
    return value != nullptr ? std::string(value) : std::string();
}

// Best effort: the rename itself is already done; a failed folder fsync only weakens
// durability across a power cut.
void fsync_dir(const fs::path& dir) {
    int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd >= 0) {
        ::fsync(fd);
        ::close(fd);
    }
}

// Reads a whole file; nullopt if it does not exist. With `private_only`, refuses a file
// that group or others can access (checked on the open descriptor, not the name).
std::optional<std::string> read_file(const fs::path& path, bool private_only) {
    int raw = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (raw < 0) {
        if (errno == ENOENT) {
            return std::nullopt;
        }
        fail_errno(path, "open", errno);
    }
    unique_fd fd(raw);
    struct stat st {};
    if (::fstat(fd.get(), &st) != 0) {
        fail_errno(path, "stat", errno);
    }
    if (!S_ISREG(st.st_mode)) {
        fail(path, "not a regular file");
    }
    if (private_only && (st.st_mode & 0077) != 0) {
        fail(path, fmt::format("private key is accessible by group or others (mode {:04o}); "
                               "run: chmod 600 {}",
                               st.st_mode & 07777, path.string()));
    }
    std::string out;
    std::array<char, 16 * 1024> buf{};
    for (;;) {
        ssize_t n = ::read(fd.get(), buf.data(), buf.size());
        if (n < 0) {
            if (errno == EINTR) {
                continue;
            }
            fail_errno(path, "read", errno);
        }
        if (n == 0) {
            break;
        }
        out.append(buf.data(), static_cast<std::size_t>(n));
    }
    return out;
}

pkey_ptr parse_key(const fs::path& path, const std::string& pem) {
    pkey_ptr key = read_pem_private_key(pem);
    if (!key) {
        fail(path, "not a valid unencrypted PEM private key (" + tls_error_string() + ")");
    }
    return key;
}

x509_ptr parse_cert(const fs::path& path, const std::string& pem) {
    x509_ptr cert = read_pem_certificate(pem);
    if (!cert) {
        fail(path, "not a valid PEM certificate (" + tls_error_string() + ")");
    }
    return cert;
}

std::string temp_suffix() {
    static std::atomic<unsigned> counter{0};
    std::random_device rd;
    return fmt::format(".tmp-{}-{}-{:08x}", ::getpid(), counter.fetch_add(1), rd());
}

}  // namespace

fs::path resolve_state_dir(const std::optional<fs::path>& flag) {
    if (flag && !flag->empty()) {
        return fs::absolute(*flag);
    }
    if (std::string state = env("FERRY_STATE"); !state.empty()) {
        return fs::absolute(state);
    }
    // The XDG spec says relative values are invalid and must be ignored.
    if (std::string xdg = env("XDG_STATE_HOME"); !xdg.empty() && fs::path(xdg).is_absolute()) {
        return fs::path(xdg) / "ferry";
    }
    std::string home = env("HOME");
    if (home.empty()) {
        if (const passwd* pw = ::getpwuid(::getuid()); pw != nullptr && pw->pw_dir != nullptr) {
            home = pw->pw_dir;
        }
    }
    if (home.empty()) {
        throw std::runtime_error("cannot find the state folder: HOME is not set; use --state DIR or FERRY_STATE");
    }
    return fs::absolute(fs::path(home) / ".local" / "state" / "ferry");
}

namespace {
void refuse_where_it_would_be_made(const fs::path& dir, std::string_view what);
}  // namespace

void ensure_private_dir(const fs::path& given) {
    // ("DIR/" is DIR: made by the loop below as a folder above itself, it kept the umask's
    // mode.)
    const fs::path dir = given.has_filename() || !given.has_parent_path() ? given : given.parent_path();
    std::error_code ec;
    if (fs::is_directory(dir, ec)) {
        return;
    }
    if (fs::exists(dir, ec)) {
        fail(dir, "exists and is not a folder");
    }
    // Refused before anything is made (a refused command left the folders it had made).
    refuse_where_it_would_be_made(dir, "the state folder");
    // Each folder not there yet is made 0700, the folders above too: with the umask's
    // mode, or a default ACL, they could let others write, and be refused after they were
    // made. (~/.local/state is 0700 by the XDG spec.)
    std::vector<fs::path> missing;
    for (fs::path p = fs::absolute(dir); !fs::exists(p, ec) && p.has_relative_path(); p = p.parent_path()) {
        missing.push_back(p);
    }
    for (auto it = missing.rbegin(); it != missing.rend(); ++it) {
        if (::mkdir(it->c_str(), 0700) != 0) {
            if (errno == EEXIST && fs::is_directory(*it, ec)) {
                continue;  // created concurrently
            }
            fail_errno(*it, "create folder", errno);
        }
        // mkdir applied the umask; chmod sets the mode exactly (and a default ACL's mask).
        if (::chmod(it->c_str(), 0700) != 0) {
            fail_errno(*it, "chmod", errno);
        }
    }
}

void write_private_file(const fs::path& path, std::string_view contents) {
    fs::path tmp = path;
    tmp += temp_suffix();
    int raw = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, 0600);
    if (raw < 0) {
        fail_errno(tmp, "create", errno);
    }
    unique_fd fd(raw);
    auto give_up = [&](std::string_view action, int err) {
        ::unlink(tmp.c_str());
        fail_errno(tmp, action, err);
    };
    // The umask may have removed bits; the owner must be able to read the file back.
    if (::fchmod(fd.get(), 0600) != 0) {
        give_up("chmod", errno);
    }
    std::size_t done = 0;
    while (done < contents.size()) {
        ssize_t n = ::write(fd.get(), contents.data() + done, contents.size() - done);
        if (n < 0) {
            if (errno == EINTR) {
                continue;
            }
            give_up("write", errno);
        }
        done += static_cast<std::size_t>(n);
    }
    if (::fsync(fd.get()) != 0) {
        give_up("fsync", errno);
    }
    if (fd.close() != 0) {
        give_up("close", errno);
    }
    if (::rename(tmp.c_str(), path.c_str()) != 0) {
        int err = errno;
        ::unlink(tmp.c_str());
        fail_errno(path, "rename into place", err);
    }
    fsync_dir(path.has_parent_path() ? path.parent_path() : fs::path("."));
}

unique_fd lock_state_file(const fs::path& dir, const char* name) {
    const fs::path lock_path = dir / name;
    int raw_lock = ::open(lock_path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0600);
    if (raw_lock < 0) {
        fail_errno(lock_path, "open", errno);
    }
    unique_fd lock(raw_lock);
    while (::flock(lock.get(), LOCK_EX) != 0) {
        if (errno != EINTR) {
            fail_errno(lock_path, "lock", errno);
        }
    }
    return lock;
}

namespace {

std::string user_named(uid_t uid) {
    const passwd* owner = ::getpwuid(uid);
    return owner != nullptr ? fmt::format("{} (uid {})", owner->pw_name, uid) : fmt::format("uid {}", uid);
}

// A group only this user is in: the user's own primary group with no other member listed,
// and no other user's primary group either (Debian's user private groups, whose umask 002
// makes folders group-writable; not a shared "users" or "nogroup").
bool group_of_me_alone(gid_t gid) {
    const uid_t me_uid = ::geteuid();
    if (gid != ::getegid()) {
        return false;
    }
    const passwd* me = ::getpwuid(me_uid);
    const group* g = ::getgrgid(gid);
    if (me == nullptr || g == nullptr) {
        return false;
    }
    const std::string name = me->pw_name;
    for (char** m = g->gr_mem; *m != nullptr; ++m) {
        if (name != *m) {
            return false;
        }
    }
    bool alone = true;
    ::setpwent();
    while (const passwd* p = ::getpwent()) {
        if (p->pw_gid == gid && p->pw_uid != me_uid) {
            alone = false;
            break;
        }
    }
    ::endpwent();
    return alone;
}

// Whether `dir` has an access ACL: its group bits are then the mask of named users' and
// groups' entries too, so a group-writable mode may let others write.
bool has_access_acl(const fs::path& dir) {
    return ::getxattr(dir.c_str(), "system.posix_acl_access", nullptr, 0) >= 0;
}

// Whether another user could write what has mode `st`: others may, or a group that is not
// this user's own private one, or an ACL (whose mask the group bits then are).
bool others_may_write(const struct stat& st, const fs::path& path) {
    return (st.st_mode & 002) != 0 ||
           ((st.st_mode & 020) != 0 && (!group_of_me_alone(st.st_gid) || has_access_acl(path)));
}

std::string who_may_write(const struct stat& st, const fs::path& path) {
    if ((st.st_mode & 002) != 0) {
        return "any user";
    }
    if (has_access_acl(path)) {
        return "the users its ACL names (getfacl " + path.string() + ")";
    }
    const group* g = ::getgrgid(st.st_gid);
    return g != nullptr ? fmt::format("its group {}", g->gr_name) : fmt::format("its group (gid {})", st.st_gid);
}

// A folder that holds a step of `path`: anyone who may rename its entries may put another
// file or folder in that step's place. A sticky folder (/tmp) lets nobody but its owner
// move another user's entries.
void refuse_folder_others_may_change(const fs::path& dir, const fs::path& path, std::string_view what) {
    const uid_t me = ::geteuid();
    struct stat st {};
    if (::stat(dir.c_str(), &st) != 0) {
        fail_errno(dir, "stat", errno);
    }
    if (st.st_uid != me && st.st_uid != 0) {  // (a sticky folder's owner may move any entry)
        fail(path, fmt::format("{} is inside {}, which belongs to another user, {}, who could put another in its "
                               "place; move it to a folder of this user's",
                               what, dir.string(), user_named(st.st_uid)));
    }
    if (others_may_write(st, dir) && (st.st_mode & S_ISVTX) == 0) {
        fail(path, fmt::format("{} is inside {}, which {} may write (mode {:04o}), who could put another in its "
                               "place; make it this user's alone (chmod go-w {}), or move it",
                               what, dir.string(), who_may_write(st, dir), st.st_mode & 07777, dir.string()));
    }
}

// Every step of `path` as written (`holder`'s steps when relative), each symlink's target
// the same way (up to 40 links): a link another user owns in a sticky folder (they may
// replace it there at any time; elsewhere only who may write the folder can, which is
// refused), or a folder holding a step that another user may change, is refused.
void refuse_steps(const fs::path& path, const fs::path& holder_of_relative, const fs::path& named,
                  std::string_view what, int links) {
    const uid_t me = ::geteuid();
    const fs::path given = path.is_absolute() ? path : holder_of_relative / path;
    fs::path step = given.root_path();
    for (const fs::path& part : given.relative_path()) {
        const fs::path holder = step;
        step /= part;
        struct stat link {};
        if (part == "." || part == ".." || ::lstat(step.c_str(), &link) != 0) {
            continue;
        }
        refuse_folder_others_may_change(holder, named, what);
        if (!S_ISLNK(link.st_mode)) {
            continue;
        }
        char target[4096];
        const ssize_t n = ::readlink(step.c_str(), target, sizeof target - 1);
        struct stat held {};
        if (link.st_uid != me && link.st_uid != 0 && ::stat(holder.c_str(), &held) == 0 &&
            (held.st_mode & S_ISVTX) != 0) {
            fail(named, fmt::format("{} is reached through {}, a symlink{} that belongs to another user, {}, who could "
                                    "replace it; name the folder itself",
                                    what, step.string(),
                                    n > 0 ? " to " + std::string(target, static_cast<std::size_t>(n)) : std::string(),
                                    user_named(link.st_uid)));
        }
        if (n > 0 && links < 40) {
            refuse_steps(fs::path(std::string(target, static_cast<std::size_t>(n))), holder, named, what, links + 1);
        }
    }
}

// refuse_steps, and every folder above `path` as the kernel finds it (links resolved), as
// ssh refuses them.
void refuse_if_others_may_move(const fs::path& path, std::string_view what, const fs::path& shown = {}) {
    const fs::path& named = shown.empty() ? path : shown;
    refuse_steps(fs::absolute(path), {}, named, what, 0);
    std::unique_ptr<char, decltype(&std::free)> real(::realpath(path.c_str(), nullptr), &std::free);
    if (real == nullptr) {
        fail_errno(path, "resolve", errno);
    }
    for (fs::path dir = fs::path(real.get()).parent_path();; dir = dir.parent_path()) {
        refuse_folder_others_may_change(dir, named, what);
        if (dir == dir.root_path() || !dir.has_relative_path()) {
            break;
        }
    }
}

// Before `dir` is made (with any folders above it not there yet): the nearest folder that
// is there, the steps to it and every folder above it pass the checks above.
void refuse_where_it_would_be_made(const fs::path& dir, std::string_view what) {
    const fs::path there = nearest_existing(dir);
    if (std::error_code ec; fs::is_directory(there, ec)) {
        refuse_if_others_may_move(there, what, dir);
        refuse_folder_others_may_change(there, dir, what);
    }
}

}  // namespace

unsigned refuse_if_others_may_change(const fs::path& path, std::string_view what) {
    struct stat st {};
    if (::stat(path.c_str(), &st) != 0) {
        if (errno == ENOENT) {
            return 0;
        }
        fail_errno(path, "stat", errno);
    }
    const uid_t me = ::geteuid();
    struct stat link {};
    if (::lstat(path.c_str(), &link) == 0 && S_ISLNK(link.st_mode) && st.st_uid != me && st.st_uid != 0) {
        fail(path, fmt::format("{} is a symlink to a file of another user, {}, who could change whom this node trusts "
                               "or take its identity; replace it with a file of this user's",
                               what, user_named(st.st_uid)));
    }
    if (st.st_uid != me && st.st_uid != 0) {
        const passwd* owner = ::getpwuid(st.st_uid);
        fail(path, fmt::format("{} belongs to another user, {}, who could change whom this node trusts or take its "
                               "identity: run ferry as that user{}, or give it one of this user's (uid {})",
                               what, user_named(st.st_uid),
                               owner != nullptr ? fmt::format(" (sudo -u {} ferry ...)", owner->pw_name) : "", me));
    }
    // (Group-writable in the user's own private group, as an editor under umask 002 leaves
    // a file, is this user's alone: Debian's ssh takes it too.)
    if (others_may_write(st, path)) {
        fail(path, fmt::format("{} may be written by {} (mode {:04o}), who could change whom this node trusts or "
                               "take its identity; chmod go-w {}",
                               what, who_may_write(st, path), st.st_mode & 07777, path.string()));
    }
    refuse_if_others_may_move(path, what);
    return st.st_mode;
}

identity load_or_create_identity(const fs::path& dir) {
    ensure_private_dir(dir);
    refuse_if_others_may_change(dir, "the state folder");

    // Two commands run for the first time at once must not make two identities.
    unique_fd lock = lock_state_file(dir, "identity.lock");

    const fs::path key_path = dir / "key.pem";
    const fs::path cert_path = dir / "cert.pem";
    std::optional<std::string> key_pem = read_file(key_path, true);
    std::optional<std::string> cert_pem = read_file(cert_path, false);

    identity out;
    if (!key_pem) {
        if (cert_pem) {
            fail(key_path, "missing while cert.pem exists; the node's identity is lost. Remove " + cert_path.string() +
                               " to create a new identity");
        }
        out.creds = generate_credentials();
        // Key first: if we stop in between, the next run rebuilds cert.pem from it.
        write_private_file(key_path, out.creds.key_pem);
        write_private_file(cert_path, out.creds.cert_pem);
    } else if (!cert_pem) {
        auto key = parse_key(key_path, *key_pem);
        out.creds = credentials_for_key(key.get());
        out.creds.key_pem = *key_pem;
        write_private_file(cert_path, out.creds.cert_pem);
    } else {
        out.creds = tls_credentials{*cert_pem, *key_pem};
    }

    auto key = parse_key(key_path, out.creds.key_pem);
    auto cert = parse_cert(cert_path, out.creds.cert_pem);
    if (X509_check_private_key(cert.get(), key.get()) != 1) {
        ERR_clear_error();
        fail(cert_path, "does not match " + key_path.string());
    }
    out.id = node_id_from_pubkey(key.get());
    return out;
}

}  // namespace ferry
