// The configuration file (TOML, docs/config.md): what `ferry serve` takes on its command
// line, and trusted peers with their names, addresses and shares.
//
// A setting is kept as the flag that takes it and the text that flag would be given
// ("--max-bytes", "64G"), so that the file goes through the very checks, units and ranges
// of the command line (apply_config); flags given on the command line win. The file's
// own shape (syntax, unknown keys, types) is checked by load_config, with the file, line
// and column of what is wrong.
#pragma once

#include <CLI/CLI.hpp>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

#include "node/trust_store.hpp"

namespace ferry::cli {

// "FILE:LINE:COLUMN: what is wrong".
struct config_error : std::runtime_error {
    using std::runtime_error::runtime_error;
};

struct config_value {
    std::string flag;   // "--listen"
    std::string value;  // as that flag takes it
    std::string where;  // "FILE:LINE:COLUMN"
};

struct config_file {
    std::filesystem::path path;
    std::vector<config_value> values;  // in the file's order; repeatable flags repeat
    std::vector<declared_peer> peers;
};

// $XDG_CONFIG_HOME/ferry/config.toml, else ~/.config/ferry/config.toml; empty when
// neither can be known (no HOME).
std::filesystem::path default_config_path();

// The file a command reads: `flag` (--config) when given, else $FERRY_CONFIG, else the
// default path when a file is there; nullopt: none. A file named by the flag or the
// variable must exist (load_config says so).
std::optional<std::filesystem::path> pick_config(const std::optional<std::filesystem::path>& flag);

// Reads and checks `path`. Relative paths in it (state, inbox, share paths) are taken
// relative to the file's folder, and a leading "~/" is $HOME. Throws config_error.
config_file load_config(const std::filesystem::path& path);

// Gives each value of `cfg` to `cmd`'s option of that flag, unless the command line gave
// that option (or, for --state, $FERRY_STATE is set); options `cmd` does not have are
// left out. The option's own checks run; a failure throws config_error at the value's
// place.
void apply_config(const config_file& cfg, CLI::App& cmd);

// `settings` (an object of strings, booleans, numbers, arrays and objects, arrays of
// objects becoming [[tables]]) as TOML text: what `ferry config show` prints.
std::string to_toml(const nlohmann::ordered_json& settings);

}  // namespace ferry::cli
