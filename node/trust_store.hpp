// The peers this node trusts: canonical node IDs with optional names, addresses and share
// lists, kept in <state>/trusted.json as
// {"peers":[{"id":"...","name":"...","address":"HOST:PORT","shares":["docs"]}]}.
//
// A plain value: no locking. The node keeps one on its loop thread; one-shot commands
// (ferry trust) load, change, save and exit. save() replaces the file atomically
// (0600 temp file + rename), so a reader never sees a half-written file.
#pragma once

#include <algorithm>
#include <filesystem>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "transport/identity.hpp"

namespace ferry {

// A share name: letters, digits, '-', '_' and '.' (not "." or ".."), at most 64 bytes.
bool share_name_ok(std::string_view name);
// A peer name stands in for the peer in PEER and NAME:SHARE arguments: at most 64 bytes,
// none of '@', ':', '/' or white space, and not a node ID (which names its own node there).
bool peer_name_ok(std::string_view name);

struct trusted_peer {
    std::string id;       // canonical node ID
    std::string name;     // may be empty
    std::string address;  // HOST:PORT where it serves, for NAME:SHARE arguments; may be empty
    // The shares of this node the peer may use; nullopt: every share.
    std::optional<std::vector<std::string>> shares;

    bool may_use(std::string_view share) const {
        return !shares || std::find(shares->begin(), shares->end(), share) != shares->end();
    }
};

// A peer the configuration file declares; `shares_given`: its shares (every share when
// peer.shares is nullopt) replace the trust list's, else the trust list's stay.
struct declared_peer {
    trusted_peer peer;
    bool shares_given = false;
    std::string where;  // its place in the file, "FILE:LINE:COLUMN", for messages
};

class trust_store {
  public:
    static constexpr const char* file_name = "trusted.json";  // in the state folder

    // Reads state_dir/trusted.json if present (a missing file is an empty store). Throws
    // std::runtime_error naming the file if it cannot be read or is corrupt (not JSON,
    // wrong shape, an invalid ID, a duplicate ID or name).
    static trust_store load(const std::filesystem::path& state_dir);
    // The same, with the configuration file's peers merged in (merge()). Throws
    // std::invalid_argument "WHERE: why" for a peer that cannot be merged.
    static trust_store load(const std::filesystem::path& state_dir, const std::vector<declared_peer>& declared);

    // Adds or updates a peer; the same ID with a new name replaces the name (an empty
    // name keeps none). Returns false, changing nothing, if `name` is non-empty and
    // already used by another ID. `id` may be canonical or grouped; throws
    // std::invalid_argument if it is not a node ID.
    bool add(const std::string& id, const std::string& name);
    // Sets a trusted peer's address and share list (nullopt: leave as it is). Returns false
    // if the peer is not trusted.
    bool set_details(std::string_view id, std::optional<std::string> address,
                     std::optional<std::optional<std::vector<std::string>>> shares);

    // Adds `peer` as it stands, or sets a trusted one's name, address and (with
    // `set_shares`) shares to its own; an empty name or address keeps the one there: the
    // configuration file's peers. Throws std::invalid_argument if its ID is not a node ID
    // or its name is another's.
    void merge(const trusted_peer& peer, bool set_shares);

    // Takes the peer with this ID (canonical or grouped) off the list: false if it was not
    // on it.
    bool remove(std::string_view id);

    // Writes state_dir/trusted.json atomically (creating state_dir 0700 if needed).
    // Throws std::runtime_error on failure.
    void save() const;

    // Lookups by ID accept the canonical or grouped form.
    bool trusted(std::string_view id) const;
    std::optional<trusted_peer> find_name(std::string_view name) const;
    std::optional<trusted_peer> find_id(std::string_view id) const;
    // A peer by what a command line gives: an ID names its own node (even where an older
    // list gives another peer that ID as its name: names may no longer be IDs), anything
    // else a name.
    std::optional<trusted_peer> find(std::string_view id_or_name) const {
        return parse_node_id(id_or_name) ? find_id(id_or_name) : find_name(id_or_name);
    }

    // In insertion order.
    const std::vector<trusted_peer>& peers() const { return peers_; }

    const std::filesystem::path& file() const { return file_; }

  private:
    explicit trust_store(std::filesystem::path file) : file_(std::move(file)) {}

    std::filesystem::path file_;
    std::vector<trusted_peer> peers_;
};

}  // namespace ferry
