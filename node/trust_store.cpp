#include "node/trust_store.hpp"

#include <fmt/format.h>
#include <sys/stat.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <cstring>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>
#include <stdexcept>

#include "node/identity.hpp"
#include "transport/identity.hpp"

namespace ferry {
namespace {

namespace fs = std::filesystem;

[[noreturn]] void corrupt(const fs::path& file, std::string_view reason) {
    throw std::runtime_error(fmt::format(
        "trust store {} is corrupt: {} (fix or remove the file, then trust peers again)", file.string(), reason));
}

}  // namespace

trust_store trust_store::load(const fs::path& state_dir, const std::vector<declared_peer>& declared) {
    trust_store store = load(state_dir);
    for (const declared_peer& p : declared) {
        try {
            store.merge(p.peer, p.shares_given);
        } catch (const std::invalid_argument& e) {
            throw std::invalid_argument(p.where + ": " + e.what());
        }
    }
    return store;
}

trust_store trust_store::load(const fs::path& state_dir) {
    trust_store store(state_dir / file_name);
    const fs::path& file = store.file_;
    if (const unsigned mode = refuse_if_others_may_change(file, "the trust list"); mode != 0 && !S_ISREG(mode)) {
        throw std::runtime_error(fmt::format("{}: the trust list is not a regular file", file.string()));  // (a FIFO would block)
    }

    std::ifstream in(file, std::ios::binary);
    if (!in) {
        int err = errno;
        std::error_code ec;
        if (!fs::exists(file, ec) && !ec) {
            return store;
        }
        throw std::runtime_error(fmt::format("cannot read trust store {}: {}", file.string(), std::strerror(err)));
    }
    std::ostringstream text;
    text << in.rdbuf();
    if (in.bad()) {
        throw std::runtime_error(fmt::format("cannot read trust store {}", file.string()));
    }

    nlohmann::json doc;
    try {
        doc = nlohmann::json::parse(text.str());
    } catch (const nlohmann::json::parse_error& e) {
        corrupt(file, fmt::format("not valid JSON ({})", e.what()));
    }
    if (!doc.is_object() || !doc.contains("peers") || !doc["peers"].is_array()) {
        corrupt(file, "expected an object with a \"peers\" array");
    }
    std::size_t index = 0;
    for (const nlohmann::json& entry : doc["peers"]) {
        if (!entry.is_object() || !entry.contains("id") || !entry["id"].is_string()) {
            corrupt(file, fmt::format("peer #{} has no \"id\" string", index));
        }
        std::optional<std::string> id = parse_node_id(entry["id"].get<std::string>());
        if (!id) {
            corrupt(file, fmt::format("peer #{} has an invalid node ID \"{}\"", index, entry["id"].get<std::string>()));
        }
        std::string name;
        if (entry.contains("name") && !entry["name"].is_null()) {
            if (!entry["name"].is_string()) {
                corrupt(file, fmt::format("peer #{} has a \"name\" that is not a string", index));
            }
            name = entry["name"].get<std::string>();
        }
        std::string address;
        if (entry.contains("address") && !entry["address"].is_null()) {
            if (!entry["address"].is_string()) {
                corrupt(file, fmt::format("peer #{} has an \"address\" that is not a string", index));
            }
            address = entry["address"].get<std::string>();
        }
        std::optional<std::vector<std::string>> shares;
        if (entry.contains("shares") && !entry["shares"].is_null()) {
            const nlohmann::json& list = entry["shares"];
            if (!list.is_array() || !std::all_of(list.begin(), list.end(), [](const auto& v) { return v.is_string(); })) {
                corrupt(file, fmt::format("peer #{} has \"shares\" that are not an array of names", index));
            }
            shares = list.get<std::vector<std::string>>();
        }
        if (store.find_id(*id)) {
            corrupt(file, fmt::format("node ID {} is listed twice", format_node_id(*id)));
        }
        if (!name.empty() && store.find_name(name)) {
            corrupt(file, fmt::format("name \"{}\" is used by two peers", name));
        }
        store.peers_.push_back(trusted_peer{std::move(*id), std::move(name), std::move(address), std::move(shares)});
        ++index;
    }
    return store;
}

bool trust_store::add(const std::string& id, const std::string& name) {
    std::optional<std::string> canonical = parse_node_id(id);
    if (!canonical) {
        throw std::invalid_argument("trust_store::add: not a node ID: " + id);
    }
    if (!name.empty()) {
        auto other = std::find_if(peers_.begin(), peers_.end(),
                                  [&](const trusted_peer& p) { return p.name == name && p.id != *canonical; });
        if (other != peers_.end()) {
            return false;
        }
    }
    auto same = std::find_if(peers_.begin(), peers_.end(), [&](const trusted_peer& p) { return p.id == *canonical; });
    if (same != peers_.end()) {
        same->name = name;
    } else {
        peers_.push_back(trusted_peer{std::move(*canonical), name, {}, std::nullopt});
    }
    return true;
}

bool trust_store::set_details(std::string_view id, std::optional<std::string> address,
                              std::optional<std::optional<std::vector<std::string>>> shares) {
    std::optional<std::string> canonical = parse_node_id(id);
    auto it = std::find_if(peers_.begin(), peers_.end(), [&](const trusted_peer& p) { return canonical && p.id == *canonical; });
    if (it == peers_.end()) {
        return false;
    }
    if (address) {
        it->address = std::move(*address);
    }
    if (shares) {
        it->shares = std::move(*shares);
    }
    return true;
}

bool share_name_ok(std::string_view name) {
    return !name.empty() && name.size() <= 64 && name != "." && name != ".." &&
           std::all_of(name.begin(), name.end(), [](char c) {
               return std::isalnum(static_cast<unsigned char>(c)) != 0 || c == '-' || c == '_' || c == '.';
           });
}

bool peer_name_ok(std::string_view name) {
    // Not a node ID either: where a name or an ID is taken, an ID names its own node.
    return name.size() <= 64 && name.find_first_of("@:/ \t\n\r") == std::string_view::npos &&
           !parse_node_id(name);
}

void trust_store::merge(const trusted_peer& peer, bool set_shares) {
    std::optional<std::string> canonical = parse_node_id(peer.id);
    if (!canonical) {
        throw std::invalid_argument("not a node ID: " + peer.id);
    }
    bool known = trusted(*canonical);
    if (!peer.name.empty()) {
        // The file's name wins: a listed peer of another ID that has it (`ferry trust` run
        // without this file) stays trusted, without the name. Failing here instead made a
        // running node keep its old list for good, removals included.
        for (trusted_peer& other : peers_) {
            if (other.name == peer.name && other.id != *canonical) {
                other.name.clear();
            }
        }
    }
    if ((!known || !peer.name.empty()) && !add(*canonical, peer.name)) {
        throw std::invalid_argument("the name \"" + peer.name + "\" is already another peer's");
    }
    set_details(*canonical, peer.address.empty() ? std::nullopt : std::optional<std::string>(peer.address),
                set_shares ? std::optional<std::optional<std::vector<std::string>>>(peer.shares) : std::nullopt);
}

void trust_store::save() const {
    nlohmann::json peers = nlohmann::json::array();
    for (const trusted_peer& p : peers_) {
        nlohmann::json entry = {{"id", p.id}, {"name", p.name}};
        if (!p.address.empty()) {
            entry["address"] = p.address;
        }
        if (p.shares) {
            entry["shares"] = *p.shares;
        }
        peers.push_back(std::move(entry));
    }
    nlohmann::json doc = {{"peers", std::move(peers)}};
    if (file_.has_parent_path()) {
        ensure_private_dir(file_.parent_path());
    }
    // Replace, not throw, on a name that is not valid UTF-8.
    write_private_file(file_, doc.dump(2, ' ', false, nlohmann::json::error_handler_t::replace) + "\n");
}

bool trust_store::remove(std::string_view id) {
    std::optional<std::string> canonical = parse_node_id(id);
    return canonical && std::erase_if(peers_, [&](const trusted_peer& p) { return p.id == *canonical; }) > 0;
}

bool trust_store::trusted(std::string_view id) const { return find_id(id).has_value(); }

std::optional<trusted_peer> trust_store::find_name(std::string_view name) const {
    if (name.empty()) {
        return std::nullopt;
    }
    for (const trusted_peer& p : peers_) {
        if (p.name == name) {
            return p;
        }
    }
    return std::nullopt;
}

std::optional<trusted_peer> trust_store::find_id(std::string_view id) const {
    std::optional<std::string> canonical = parse_node_id(id);
    if (!canonical) {
        return std::nullopt;
    }
    for (const trusted_peer& p : peers_) {
        if (p.id == *canonical) {
            return p;
        }
    }
    return std::nullopt;
}

}  // namespace ferry
