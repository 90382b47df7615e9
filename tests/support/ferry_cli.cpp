#include "tests/support/ferry_cli.hpp"

#include <gtest/gtest.h>

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

ferry_cli::receiver ferry_cli::start(const std::vector<std::string>& args, const std::vector<std::string>& env) {
    std::vector<std::string> argv{FERRY_BINARY};
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

run_result ferry_cli::ferry(const std::vector<std::string>& args) {
    std::vector<std::string> argv{FERRY_BINARY};
    argv.insert(argv.end(), args.begin(), args.end());
    return run(argv, process_timeout);
}

}  // namespace ferry::test
