#include "tools/config.hpp"

#include <toml++/toml.h>

#include <algorithm>
#include <cstdlib>
#include <limits>
#include <set>
#include <sstream>
#include <string_view>

#include "node/identity.hpp"
#include "transport/identity.hpp"
#include "transport/stream.hpp"

namespace ferry::cli {

namespace fs = std::filesystem;

namespace {

// How a key's value is written in the file, and turned into its flag's text.
enum class kind {
    text,      // a string
    texts,     // a string or an array of strings (a repeatable flag)
    path,      // a string naming a file or folder ("~/" and relative paths resolved)
    boolean,   // true or false
    count,     // a non-negative integer
    duration,  // seconds as an integer, or a string with a unit ("500ms", "30s", "7d")
    size,      // bytes as an integer, or a string with a unit ("64M", "50G")
};

struct key_spec {
    std::string_view key;
    std::string_view flag;
    kind how;
    std::int64_t most = std::numeric_limits<std::int64_t>::max();  // a count's largest (its least: 0, or 1)
    std::int64_t least = 0;
};

// Top level, then [limits], [metrics] and [discovery]. [[share]] and [[peer]] are read apart.
constexpr key_spec top_keys[] = {
    {"listen", "--listen", kind::texts},
    {"inbox", "--inbox", kind::path},
    {"state", "--state", kind::path},
    {"accept_any", "--accept-any", kind::boolean},
    {"overwrite", "--overwrite", kind::boolean},
    {"fsync_each", "--fsync-each", kind::boolean},
    {"partial_max_age", "--partial-max-age", kind::duration},
    {"congestion", "--congestion", kind::text},
    {"log_level", "--log-level", kind::text},
};
constexpr key_spec limit_keys[] = {
    {"max_connections", "--max-connections", kind::count},
    {"max_peer_connections", "--max-peer-connections", kind::count},
    {"max_sessions", "--max-sessions", kind::count},
    {"handshake_timeout", "--handshake-timeout", kind::duration},
    {"idle_timeout", "--idle-timeout", kind::duration},
    {"max_files", "--max-files", kind::count},
    {"max_bytes", "--max-bytes", kind::size},
    {"max_conn_queue", "--max-conn-queue", kind::size},
};
constexpr key_spec metrics_keys[] = {
    {"listen", "--metrics", kind::text},
};
// Outgoing transfers' connection count (send, sync, get) and every command's sockets.
constexpr key_spec tuning_keys[] = {
    {"connections", "--connections", kind::count, 16, 1},  // as the flag (send's check)
    {"notsent_lowat", "--notsent-lowat", kind::size},
    {"sndbuf", "--sndbuf", kind::size},
    {"rcvbuf", "--rcvbuf", kind::size},
    {"user_timeout", "--user-timeout", kind::duration},
};
constexpr key_spec discovery_keys[] = {
    {"enabled", "--discovery", kind::boolean},
    {"name", "--name", kind::text},
    {"interval", "--discovery-interval", kind::duration},
    {"timeout", "--discovery-timeout", kind::duration},
    {"port", "--discovery-port", kind::count, 65535, 1},
    {"group4", "--discovery-group4", kind::text},
    {"group6", "--discovery-group6", kind::text},
};

class reader {
public:
    explicit reader(fs::path file) : file_(std::move(file)), dir_(fs::absolute(file_).parent_path()) {}

    std::string where(const toml::node& n) const { return where(n.source()); }
    std::string where(const toml::source_region& r) const {
        return file_.string() + ":" + std::to_string(r.begin.line) + ":" + std::to_string(r.begin.column);
    }
    [[noreturn]] void fail(const toml::node& n, const std::string& what) const {
        throw config_error(where(n) + ": " + what);
    }

    std::string text(const toml::node& n, std::string_view key) const {
        const auto* s = n.as_string();
        if (s == nullptr) {
            fail(n, std::string(key) + ": expected a string");
        }
        return s->get();
    }

    std::string path(const toml::node& n, std::string_view key) const {
        std::string p = text(n, key);
        if (p.empty()) {
            fail(n, std::string(key) + ": expected a path, not an empty string");
        }
        if (p == "~" || p.starts_with("~/")) {
            const char* home = std::getenv("HOME");
            if (home == nullptr || *home == '\0') {
                fail(n, std::string(key) + ": \"~\" needs HOME to be set");
            }
            return (fs::path(home) / p.substr(std::min<std::size_t>(2, p.size()))).lexically_normal().string();
        }
        fs::path q(p);
        return (q.is_absolute() ? q : dir_ / q).lexically_normal().string();
    }

    std::vector<std::string> texts(const toml::node& n, std::string_view key) const {
        if (n.is_string()) {
            return {text(n, key)};
        }
        const auto* a = n.as_array();
        if (a == nullptr) {
            fail(n, std::string(key) + ": expected a string or an array of strings");
        }
        std::vector<std::string> out;
        for (const toml::node& e : *a) {
            out.push_back(text(e, key));
        }
        if (out.empty()) {
            fail(n, std::string(key) + ": an empty list");
        }
        return out;
    }

    // The text a flag of kind `how` takes for `n`.
    std::vector<std::string> values(const toml::node& n, const key_spec& k) const {
        switch (k.how) {
        case kind::text:
            return {text(n, k.key)};
        case kind::texts:
            return texts(n, k.key);
        case kind::path:
            return {path(n, k.key)};
        case kind::boolean:
            if (const auto* b = n.as_boolean()) {
                return {b->get() ? "true" : "false"};
            }
            fail(n, std::string(k.key) + ": expected true or false");
        case kind::count:
            if (const auto* i = n.as_integer(); i != nullptr && i->get() >= k.least && i->get() <= k.most) {
                return {std::to_string(i->get())};
            }
            if (k.most != std::numeric_limits<std::int64_t>::max()) {
                fail(n, std::string(k.key) + ": expected a whole number from " + std::to_string(k.least) + " to " +
                            std::to_string(k.most));
            }
            fail(n, std::string(k.key) + ": expected a whole number, 0 or more");
        case kind::duration:
        case kind::size:
            if (const auto* i = n.as_integer(); i != nullptr && i->get() >= 0) {
                return {std::to_string(i->get())};
            }
            if (const auto* s = n.as_string()) {
                return {s->get()};
            }
            fail(n, std::string(k.key) +
                        (k.how == kind::duration ? ": expected seconds, or a string such as \"30s\", \"5m\", \"7d\""
                                                 : ": expected bytes, or a string such as \"64M\", \"50G\""));
        }
        fail(n, std::string(k.key) + ": unexpected value");
    }

    // The keys of `t` as `keys` describes them; anything else is an error naming `section`.
    template <std::size_t N>
    void settings(const toml::table& t, const key_spec (&keys)[N], std::string_view section,
                  const std::set<std::string_view>& apart, config_file& out) const {
        // In the file's order (a table iterates by key), so that the first mistake is reported.
        std::vector<std::pair<const toml::key*, const toml::node*>> in_order;
        for (auto&& [key, value] : t) {
            in_order.emplace_back(&key, &value);
        }
        std::sort(in_order.begin(), in_order.end(), [](const auto& a, const auto& b) {
            const toml::source_position &x = a.first->source().begin, &y = b.first->source().begin;
            return std::pair(x.line, x.column) < std::pair(y.line, y.column);
        });
        for (auto [key_ptr, value_ptr] : in_order) {
            const toml::key& key = *key_ptr;
            const toml::node& value = *value_ptr;
            if (apart.contains(key.str())) {
                continue;
            }
            const key_spec* k = std::find_if(std::begin(keys), std::end(keys), [&](const key_spec& s) { return s.key == key.str(); });
            if (k == std::end(keys)) {
                throw config_error(where(key.source()) + ": unknown key \"" + std::string(key.str()) + "\"" +
                                   (section.empty() ? std::string() : " in [" + std::string(section) + "]"));
            }
            for (std::string& v : values(value, *k)) {
                out.values.push_back({std::string(k->flag), std::move(v), where(value)});
            }
        }
    }

    // [[share]]: name, path, access ("ro" or "rw").
    void share(const toml::node& n, config_file& out) const {
        const auto* t = n.as_table();
        if (t == nullptr) {
            fail(n, "share: expected a table ([[share]])");
        }
        std::string name, dir, access = "ro";
        const toml::node* path_value = nullptr;  // where the folder's mistakes are placed
        for (auto&& [key, value] : *t) {
            if (key == "name") {
                name = text(value, "name");
                if (!share_name_ok(name)) {
                    fail(value, "name: a share name is letters, digits, '-', '_' and '.' (at most 64)");
                }
            } else if (key == "path") {
                dir = path(value, "path");
                path_value = &value;
            } else if (key == "access") {
                access = text(value, "access");
                if (access != "ro" && access != "rw") {
                    fail(value, "access: expected \"ro\" or \"rw\"");
                }
            } else {
                throw config_error(where(key.source()) + ": unknown key \"" + std::string(key.str()) + "\" in [[share]]");
            }
        }
        if (name.empty() || dir.empty()) {
            fail(n, "[[share]] needs a name and a path");
        }
        out.values.push_back({"--share", name + "=" + dir + ":" + access, where(*path_value)});
    }

    // [[peer]]: id, name, address, shares.
    void peer(const toml::node& n, config_file& out) const {
        const auto* t = n.as_table();
        if (t == nullptr) {
            fail(n, "peer: expected a table ([[peer]])");
        }
        declared_peer p;
        p.where = where(n);
        trusted_peer& peer = p.peer;
        for (auto&& [key, value] : *t) {
            if (key == "id") {
                std::string id = text(value, "id");
                std::optional<std::string> canonical = parse_node_id(id);
                if (!canonical) {
                    fail(value, "id: \"" + id + "\" is not a node ID (as `ferry id` prints it)");
                }
                peer.id = *canonical;
            } else if (key == "name") {
                peer.name = text(value, "name");
                if (peer.name.empty() || !peer_name_ok(peer.name)) {
                    fail(value, "name: a peer name is 1 to 64 bytes without '@', ':', '/' or spaces, and not a node ID");
                }
            } else if (key == "address") {
                peer.address = text(value, "address");
                std::string host;
                std::string port;
                if (!split_host_port(peer.address, host, port)) {
                    fail(value, "address: expected HOST:PORT ([::1]:PORT for IPv6)");
                }
            } else if (key == "shares") {
                std::vector<std::string> shares = texts(value, "shares");
                p.shares_given = true;
                for (const std::string& s : shares) {
                    if (s != "*" && !share_name_ok(s)) {
                        fail(value, "shares: \"" + s + "\" is not a share name (letters, digits, '-', '_', '.')");
                    }
                }
                if (std::find(shares.begin(), shares.end(), "*") == shares.end()) {
                    peer.shares = std::move(shares);  // else every share
                }
            } else {
                throw config_error(where(key.source()) + ": unknown key \"" + std::string(key.str()) + "\" in [[peer]]");
            }
        }
        if (peer.id.empty()) {
            fail(n, "[[peer]] needs an id");
        }
        for (const declared_peer& other : out.peers) {
            if (other.peer.id == peer.id) {
                fail(n, "this peer is already declared at " + other.where);
            }
            if (!peer.name.empty() && other.peer.name == peer.name) {
                fail(n, "the name \"" + peer.name + "\" is already declared at " + other.where);
            }
        }
        out.peers.push_back(std::move(p));
    }

    // Each element of the array `n` (key `key`), taken by `one`.
    template <typename Fn>
    void each(const toml::node& n, std::string_view key, Fn one) const {
        const auto* a = n.as_array();
        if (a == nullptr) {
            fail(n, std::string(key) + ": expected [[" + std::string(key) + "]] tables");
        }
        for (const toml::node& e : *a) {
            one(e);
        }
    }

    template <std::size_t N>
    void section(const toml::table& top, std::string_view name, const key_spec (&keys)[N], config_file& out) const {
        if (const toml::node* n = top.get(name)) {
            const auto* t = n->as_table();
            if (t == nullptr) {
                fail(*n, std::string(name) + ": expected a table ([" + std::string(name) + "])");
            }
            settings(*t, keys, name, {}, out);
        }
    }

private:
    fs::path file_;
    fs::path dir_;
};

}  // namespace

fs::path default_config_path() {
    if (const char* xdg = std::getenv("XDG_CONFIG_HOME"); xdg != nullptr && fs::path(xdg).is_absolute()) {
        return fs::path(xdg) / "ferry" / "config.toml";
    }
    if (const char* home = std::getenv("HOME"); home != nullptr && *home != '\0') {
        return fs::path(home) / ".config" / "ferry" / "config.toml";
    }
    return {};
}

std::optional<fs::path> pick_config(const std::optional<fs::path>& flag) {
    if (flag && !flag->empty()) {
        return fs::absolute(*flag);
    }
    if (const char* env = std::getenv("FERRY_CONFIG"); env != nullptr && *env != '\0') {
        return fs::absolute(env);
    }
    fs::path def = default_config_path();
    std::error_code ec;
    if (!def.empty() && fs::exists(def, ec)) {
        return def;
    }
    return std::nullopt;
}

config_file load_config(const fs::path& path) {
    config_file out;
    out.path = path;
    try {
        refuse_if_others_may_change(path, "the configuration file");  // its [[peer]]s are trusted
    } catch (const std::runtime_error& e) {
        throw config_error(e.what());
    }
    toml::table top;
    try {
        top = toml::parse_file(path.string());
    } catch (const toml::parse_error& e) {
        const toml::source_region& r = e.source();
        if (r.begin.line == 0) {  // the file itself: missing, unreadable
            throw config_error(path.string() + ": " + std::string(e.description()));
        }
        throw config_error(path.string() + ":" + std::to_string(r.begin.line) + ":" + std::to_string(r.begin.column) +
                           ": " + std::string(e.description()));
    }
    reader rd(path);
    rd.settings(top, top_keys, "", {"limits", "metrics", "discovery", "tuning", "share", "peer"}, out);
    rd.section(top, "limits", limit_keys, out);
    rd.section(top, "metrics", metrics_keys, out);
    rd.section(top, "discovery", discovery_keys, out);
    rd.section(top, "tuning", tuning_keys, out);
    if (const toml::node* n = top.get("share")) {
        rd.each(*n, "share", [&](const toml::node& e) { rd.share(e, out); });
    }
    if (const toml::node* n = top.get("peer")) {
        rd.each(*n, "peer", [&](const toml::node& e) { rd.peer(e, out); });
    }
    return out;
}

void apply_config(const config_file& cfg, CLI::App& cmd) {
    std::set<std::string> given;  // on the command line: the file's values do not count
    for (const config_value& v : cfg.values) {
        if (const CLI::Option* opt = cmd.get_option_no_throw(v.flag); opt != nullptr && opt->count() > 0) {
            given.insert(v.flag);
        }
    }
    if (const char* env = std::getenv("FERRY_STATE"); env != nullptr && *env != '\0') {
        given.insert("--state");
    }
    for (const config_value& v : cfg.values) {
        CLI::Option* opt = cmd.get_option_no_throw(v.flag);
        if (opt == nullptr || given.contains(v.flag)) {
            continue;
        }
        try {
            opt->add_result(v.value);
            opt->run_callback();
        } catch (const CLI::Error& e) {
            throw config_error(v.where + ": " + e.what());
        }
    }
}

namespace {

toml::array toml_array(const nlohmann::ordered_json& a);

toml::table toml_table(const nlohmann::ordered_json& o) {
    toml::table t;
    for (const auto& [key, v] : o.items()) {
        if (v.is_null()) {
            continue;
        }
        if (v.is_object()) {
            t.insert(key, toml_table(v));
        } else if (v.is_array()) {
            t.insert(key, toml_array(v));
        } else if (v.is_boolean()) {
            t.insert(key, v.get<bool>());
        } else if (v.is_number_integer()) {
            t.insert(key, v.get<std::int64_t>());
        } else if (v.is_number()) {
            t.insert(key, v.get<double>());
        } else {
            t.insert(key, v.get<std::string>());
        }
    }
    return t;
}

toml::array toml_array(const nlohmann::ordered_json& a) {
    toml::array out;
    for (const auto& v : a) {
        if (v.is_object()) {
            out.push_back(toml_table(v));
        } else if (v.is_boolean()) {
            out.push_back(v.get<bool>());
        } else if (v.is_number_integer()) {
            out.push_back(v.get<std::int64_t>());
        } else if (v.is_string()) {
            out.push_back(v.get<std::string>());
        }
    }
    return out;
}

}  // namespace

std::string to_toml(const nlohmann::ordered_json& settings) {
    std::ostringstream out;
    out << toml_table(settings) << "\n";
    return out.str();
}

}  // namespace ferry::cli
