// This node's identity on disk: the state folder, and the key pair and self-signed
// certificate kept in it (key.pem, cert.pem), created on first use.
//
// Start-up code: called once, before the event loop runs, or by one-shot commands.
// Failures throw std::runtime_error naming the path and the reason. Also provides the
// private-file helpers the rest of the state folder uses (trusted.json, ...): files are
// created 0600 from the start and replaced atomically.
#pragma once

#include <filesystem>
#include <optional>
#include <string>
#include <string_view>

#include "node/file_io.hpp"
#include "transport/identity.hpp"

namespace ferry {

// State folder: `flag` (--state) if given, else env FERRY_STATE, else
// $XDG_STATE_HOME/ferry (if set and absolute), else ~/.local/state/ferry. Returned
// absolute. Throws std::runtime_error if no home folder can be found.
std::filesystem::path resolve_state_dir(const std::optional<std::filesystem::path>& flag);

struct identity {
    std::string id;  // canonical node ID
    tls_credentials creds;
};

// Loads key.pem and cert.pem from `dir`. On first use creates `dir` (mode 0700, parents
// as needed) and both files (mode 0600): an Ed25519 key and a self-signed certificate
// (see generate_credentials). A missing cert.pem is rebuilt from key.pem, keeping the ID.
// Throws std::runtime_error (path + reason) if a file cannot be read or written, does not
// parse, the key and certificate do not match, cert.pem exists without key.pem, or
// key.pem is accessible by group or others.
identity load_or_create_identity(const std::filesystem::path& dir);

// Waits for an exclusive lock (flock) on the file `name` in the state folder `dir` (made
// 0600 if missing), held until the descriptor returned is closed: commands that change one
// of the folder's files at once take turns. Throws std::runtime_error (path + reason).
unique_fd lock_state_file(const std::filesystem::path& dir, const char* name);

// Refuses (std::runtime_error naming `path`) what holds this node's identity or whom it
// trusts when another user could change it: `path` (stat `st`) owned by a user other than
// this one and root, or writable by group or others; a folder above it (links resolved)
// owned by such a user, or writable by others or by a group that is not this user's own
// without the sticky bit; `path` a symlink owned by such a user. (Anyone who may write
// there may replace the key, or trust themselves; ssh refuses such files too.) Nothing
// when `path` does not exist. Returns its mode (stat's st_mode; 0 when it does not exist).
unsigned refuse_if_others_may_change(const std::filesystem::path& path, std::string_view what);

// Creates `dir` with mode 0700 if it does not exist (parents with the default mode).
// Throws std::runtime_error if it cannot, or if `dir` exists and is not a folder.
void ensure_private_dir(const std::filesystem::path& dir);

// Atomically replaces `path` with `contents`: writes a temp file beside it, created
// O_EXCL with mode 0600 (never readable by others, even briefly), fsyncs it, renames it
// over `path` and fsyncs the folder. Throws std::runtime_error (path + reason).
void write_private_file(const std::filesystem::path& path, std::string_view contents);

}  // namespace ferry
