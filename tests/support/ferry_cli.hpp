// ferry_cli: drives the real `ferry` binary for end-to-end tests: state folders for a
// receiver (A), a sender (B) and a stranger (C), a receiver started on 127.0.0.1:0 whose
// `listening` JSON line gives its address, and bounded waits for every process.
#pragma once

#include <chrono>
#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "tests/support/process.hpp"
#include "tests/support/temp_dir.hpp"

namespace ferry::test {

inline constexpr std::chrono::seconds process_timeout{120};

class ferry_cli {
public:
    ferry_cli();

    const std::filesystem::path& root() const { return dir_.path(); }
    std::filesystem::path state(const std::string& who) const { return dir_.path() / ("state-" + who); }
    // The node ID of state folder `who` (created on first use), as `ferry id` prints it.
    std::string id(const std::string& who);

    struct receiver {
        std::unique_ptr<child_process> proc;
        std::string address;  // HOST:PORT from the listening event
        std::string id;
        std::string first_line;  // the listening event, as printed
    };
    // Starts `ferry receive` (or serve) for state `who`; fails the test if it does not
    // announce where it listens within the timeout. `env`: extra "NAME=value" entries.
    // `launcher`, when given, replaces the binary at the front of the command line (a
    // wrapper such as setpriv followed by the ferry binary to run).
    receiver start(const std::vector<std::string>& args, const std::vector<std::string>& env = {},
                   const std::vector<std::string>& launcher = {});

    // Runs the ferry binary to completion (`env`: extra "NAME=value" entries).
    run_result ferry(const std::vector<std::string>& args, const std::vector<std::string>& env = {});

private:
    temp_dir dir_;
};

// The events of a `--json` command's stdout, one per line; a line that is not a JSON
// object with `event` and `t` fails the test.
std::vector<nlohmann::json> json_events(const std::string& out);
// Reads `--json` lines of `p`'s stdout until one is the event `name` (those before it are
// dropped); false when its output ends or `timeout` passes first.
bool wait_for_event(child_process& p, const std::string& name, std::chrono::milliseconds timeout);
// The last event named `name` in `events`, or null.
nlohmann::json find_event(const std::vector<nlohmann::json>& events, const std::string& name);

}  // namespace ferry::test
