// Packaging: the Debian package CPack builds from this build (its file list, control
// fields, conffiles and maintainer scripts, read back with dpkg-deb, nothing installed),
// and the bash completion script against this build's binary.
#include <gtest/gtest.h>

#include <algorithm>
#include <sstream>

#include "tests/support/ferry_cli.hpp"
#include "tests/support/temp_dir.hpp"
#include "tests/support/tree.hpp"

namespace fs = std::filesystem;
using namespace ferry::test;
using namespace std::chrono_literals;

namespace {

std::optional<std::string> find_tool(const std::string& name) {
    for (const char* dir : {"/usr/bin", "/bin", "/usr/local/bin", "/usr/sbin"}) {
        fs::path p = fs::path(dir) / name;
        if (::access(p.c_str(), X_OK) == 0) {
            return p.string();
        }
    }
    return std::nullopt;
}

std::vector<std::string> lines(const std::string& text) {
    std::vector<std::string> out;
    std::istringstream in(text);
    for (std::string l; std::getline(in, l);) {
        out.push_back(l);
    }
    return out;
}

TEST(package, the_deb_holds_the_binary_man_page_completions_units_and_a_conffile) {
    if (FERRY_SANITIZED) {
        GTEST_SKIP() << "packages are built from the release build";
    }
    if (std::string(FERRY_INSTALL_PREFIX) != "/usr") {
        GTEST_SKIP() << "the package is checked as `make build` configures it (prefix /usr), not "
                     << FERRY_INSTALL_PREFIX;
    }
    std::optional<std::string> cpack = find_tool("cpack");
    std::optional<std::string> dpkg_deb = find_tool("dpkg-deb");
    if (!cpack || !dpkg_deb) {
        GTEST_SKIP() << "no cpack or dpkg-deb here";
    }
    temp_dir out;
    run_result made = run({*cpack, "-G", "DEB", "-B", out.path().string(), "--config",
                           std::string(FERRY_BUILD_DIR) + "/CPackConfig.cmake"},
                          120s);
    ASSERT_EQ(made.code, 0) << made.out << made.err;
    fs::path deb;
    for (const auto& e : fs::directory_iterator(out.path())) {
        if (e.path().extension() == ".deb") {
            deb = e.path();
        }
    }
    ASSERT_FALSE(deb.empty()) << made.out;
    EXPECT_TRUE(deb.filename().string().starts_with("ferry_")) << deb;

    run_result listing = run({*dpkg_deb, "-c", deb.string()}, 30s);
    ASSERT_EQ(listing.code, 0) << listing.err;
    std::vector<std::string> files;
    for (const std::string& l : lines(listing.out)) {
        std::string path = l.substr(l.rfind(' ') + 1);
        if (!path.ends_with("/")) {
            files.push_back(path);
        }
    }
    std::sort(files.begin(), files.end());
    const std::vector<std::string> expected{"./etc/ferry/config.toml",
                                            "./usr/bin/ferry",
                                            "./usr/lib/systemd/system/ferry.service",
                                            "./usr/lib/systemd/user/ferry.service",
                                            "./usr/share/bash-completion/completions/ferry",
                                            "./usr/share/doc/ferry/cli.md",
                                            "./usr/share/doc/ferry/config.md",
                                            "./usr/share/doc/ferry/discovery.md",
                                            "./usr/share/doc/ferry/json.md",
                                            "./usr/share/doc/ferry/service.md",
                                            "./usr/share/man/man1/ferry.1.gz",
                                            "./usr/share/zsh/vendor-completions/_ferry"};
    EXPECT_EQ(files, expected) << listing.out;

    run_result control = run({*dpkg_deb, "-f", deb.string(), "Package", "Depends"}, 30s);
    ASSERT_EQ(control.code, 0) << control.err;
    EXPECT_NE(control.out.find("Package: ferry"), std::string::npos) << control.out;
    for (const char* lib : {"libssl3", "libprotobuf", "libzstd1", "adduser"}) {
        EXPECT_NE(control.out.find(lib), std::string::npos) << lib << " missing from " << control.out;
    }
    fs::path ctl = out.path() / "control";
    ASSERT_EQ(run({*dpkg_deb, "-e", deb.string(), ctl.string()}, 30s).code, 0);
    EXPECT_EQ(read_text_file(ctl / "conffiles"), "/etc/ferry/config.toml\n");
    for (const char* script : {"postinst", "prerm", "postrm"}) {
        EXPECT_EQ(::access((ctl / script).c_str(), X_OK), 0) << script;
    }
    EXPECT_NE(read_text_file(ctl / "postinst").find("adduser --system"), std::string::npos);

    // The unit runs the packaged binary with the packaged configuration, as notify.
    fs::path tree = out.path() / "tree";
    ASSERT_EQ(run({*dpkg_deb, "-x", deb.string(), tree.string()}, 30s).code, 0);
    std::string unit = read_text_file(tree / "usr/lib/systemd/system/ferry.service");
    EXPECT_NE(unit.find("ExecStart=/usr/bin/ferry serve --config /etc/ferry/config.toml"), std::string::npos) << unit;
    EXPECT_NE(unit.find("Type=notify"), std::string::npos);
    EXPECT_NE(unit.find("NoNewPrivileges=yes"), std::string::npos);
    EXPECT_NE(unit.find("ProtectSystem=strict"), std::string::npos);
    // The packaged configuration is one the binary takes.
    run_result check = run({FERRY_BINARY, "config", "check", "--config", (tree / "etc/ferry/config.toml").string()}, 30s);
    EXPECT_EQ(check.code, 0) << check.err;
}

TEST(package, bash_completion_offers_commands_options_and_trusted_peer_names) {
    std::optional<std::string> bash = find_tool("bash");
    if (!bash) {
        GTEST_SKIP() << "no bash here";
    }
    ferry_cli cli;
    std::string peer = cli.id("P");
    ASSERT_EQ(cli.ferry({"trust", "--state", cli.state("A").string(), peer, "--name", "laptop"}).code, 0);
    std::string script = std::string(FERRY_SOURCE_DIR) + "/packaging/completions/ferry.bash";
    std::string bin_dir = fs::path(FERRY_BINARY).parent_path().string();
    auto complete = [&](const std::string& words, int cword) {
        std::string cmd = "PATH=" + bin_dir + ":$PATH; source " + script + "; COMP_WORDS=(" + words +
                          "); COMP_CWORD=" + std::to_string(cword) + "; _ferry; printf '%s\\n' \"${COMPREPLY[@]}\"";
        run_result r = run({*bash, "-c", cmd}, 30s);
        EXPECT_EQ(r.code, 0) << r.err;
        return lines(r.out);
    };
    EXPECT_EQ(complete("ferry ge", 1), std::vector<std::string>{"get"});
    std::vector<std::string> opts = complete("ferry get --fr", 2);
    EXPECT_EQ(opts, (std::vector<std::string>{"--from", "--from-lan"}));
    std::vector<std::string> names = complete("ferry get --state " + cli.state("A").string() + " lap", 4);
    EXPECT_NE(std::find(names.begin(), names.end(), "laptop"), names.end());
}

}  // namespace
