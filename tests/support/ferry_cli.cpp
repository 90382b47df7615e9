#include "tests/support/ferry_cli.hpp"

#include <gtest/gtest.h>

#include <algorithm>

#include <nlohmann/json.hpp>

namespace ferry::test {

ferry_cli::ferry_cli() : dir_("ferry-e2e") {}

std::string ferry_cli::id(const std::string& who) {
    run_result r = ferry({"id", "--state", state(who).string()});
    EXPECT_EQ(r.code, 0) << r.err;
    std::string out = r.out;
    while (!out.empty() && (out.back() == '\n' || out.back() == '\r')) {
        out.pop_back();
    }
    return out;
}

namespace {

// `ferry serve` announces itself on the LAN by multicast unless told not to: a test's
// node must not (tests talk to loopback and their own namespaces only), so one that
// says nothing about discovery gets --no-discovery.
std::vector<std::string> quiet_on_the_lan(std::vector<std::string> args) {
    bool serve = !args.empty() && args.front() == "serve";
    bool said = std::ranges::any_of(args, [](const std::string& a) {
        return a == "--discovery" || a == "--no-discovery" || a.starts_with("--discovery-");
    });
    if (serve && !said) {
        args.push_back("--no-discovery");
    }
    return args;
}

}  // namespace

ferry_cli::receiver ferry_cli::start(const std::vector<std::string>& given, const std::vector<std::string>& env,
                                     const std::vector<std::string>& launcher) {
    std::vector<std::string> args = quiet_on_the_lan(given);
    std::vector<std::string> argv = launcher.empty() ? std::vector<std::string>{FERRY_BINARY} : launcher;
    argv.insert(argv.end(), args.begin(), args.end());
    receiver r;
    r.proc = std::make_unique<child_process>(argv, env);
    std::optional<std::string> line = r.proc->read_line(std::chrono::seconds(30));
    if (!line) {
        ADD_FAILURE() << "receiver did not announce its address; stderr: " << r.proc->err();
        return r;
    }
    nlohmann::json j = nlohmann::json::parse(*line, nullptr, false);
    if (j.is_discarded() || j.value("event", "") != "listening") {
        ADD_FAILURE() << "first line is not a listening event: " << *line;
        return r;
    }
    r.first_line = *line;
    r.address = j.value("address", "");
    r.id = j.value("id", "");
    return r;
}

run_result ferry_cli::ferry(const std::vector<std::string>& given, const std::vector<std::string>& env) {
    std::vector<std::string> args = quiet_on_the_lan(given);
    std::vector<std::string> argv{FERRY_BINARY};
    argv.insert(argv.end(), args.begin(), args.end());
    return run(argv, process_timeout, env);
}

bool wait_for_event(child_process& p, const std::string& name, std::chrono::milliseconds timeout) {
    const auto deadline = std::chrono::steady_clock::now() + timeout;
    for (auto left = timeout; left.count() > 0;
         left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now())) {
        std::optional<std::string> line = p.read_line(left);
        if (!line) {
            return false;
        }
        nlohmann::json ev = nlohmann::json::parse(*line, nullptr, false);
        if (!ev.is_discarded() && ev.is_object() && ev.value("event", "") == name) {
            return true;
        }
    }
    return false;
}

std::vector<nlohmann::json> json_events(const std::string& out) {
    std::vector<nlohmann::json> lines;
    std::size_t start = 0;
    while (start < out.size()) {
        std::size_t nl = out.find('\n', start);
        std::string line = out.substr(start, nl == std::string::npos ? std::string::npos : nl - start);
        nlohmann::json j = nlohmann::json::parse(line, nullptr, false);
        EXPECT_FALSE(j.is_discarded()) << "not JSON: " << line;
        EXPECT_TRUE(j.is_object() && j.contains("event") && j.contains("t")) << line;
        lines.push_back(std::move(j));
        if (nl == std::string::npos) {
            break;
        }
        start = nl + 1;
    }
    return lines;
}

nlohmann::json find_event(const std::vector<nlohmann::json>& events, const std::string& name) {
    for (auto it = events.rbegin(); it != events.rend(); ++it) {
        if (it->is_object() && it->value("event", "") == name) {
            return *it;
        }
    }
    return nullptr;
}

}  // namespace ferry::test
