// The trust store: add/update, name conflicts, atomic save and reload, corrupt files.
#include "node/trust_store.hpp"

#include <gtest/gtest.h>
#include <sys/stat.h>

#include <fstream>
#include <stdexcept>
#include <string>

#include "node/identity.hpp"
#include "tests/support/temp_dir.hpp"
#include "transport/identity.hpp"

namespace ferry {
namespace {

namespace fs = std::filesystem;

const std::string id_a = "AAAABBBBCCCCDDDDEEEEFFFFGGGGHHHH";
const std::string id_b = "IIIIJJJJKKKKLLLLMMMMNNNNOOOOPPPP";
const std::string id_c = "QQQQRRRRSSSSTTTTUUUUVVVVWWWW2345";

unsigned mode_of(const fs::path& p) {
    struct stat st {};
    EXPECT_EQ(::stat(p.c_str(), &st), 0) << p;
    return st.st_mode & 07777;
}

// Written as the state folder's owner keeps it (ferry refuses a trust list its group or
// others may write), whatever the umask the tests run under.
void write_text(const fs::path& p, const std::string& text) {
    {
        std::ofstream out(p, std::ios::binary | std::ios::trunc);
        out << text;
    }
    fs::permissions(p, static_cast<fs::perms>(0600));
}

void expect_corrupt(const fs::path& dir, const std::string& text, const std::string& needle) {
    write_text(dir / "trusted.json", text);
    try {
        trust_store::load(dir);
        ADD_FAILURE() << "accepted: " << text;
    } catch (const std::runtime_error& e) {
        std::string msg = e.what();
        EXPECT_NE(msg.find((dir / "trusted.json").string()), std::string::npos) << msg;
        EXPECT_NE(msg.find("corrupt"), std::string::npos) << msg;
        EXPECT_NE(msg.find(needle), std::string::npos) << msg;
    }
}

TEST(trust_store, missing_file_is_empty) {
    test::temp_dir tmp;
    trust_store store = trust_store::load(tmp.path());
    EXPECT_TRUE(store.peers().empty());
    EXPECT_FALSE(store.trusted(id_a));
    EXPECT_EQ(store.file(), tmp / "trusted.json");
}

TEST(trust_store, add_save_load_round_trip) {
    test::temp_dir tmp;
    {
        trust_store store = trust_store::load(tmp.path());
        EXPECT_TRUE(store.add(id_a, "laptop"));
        EXPECT_TRUE(store.add(format_node_id(id_b), ""));  // grouped form is canonicalized
        store.save();
    }
    EXPECT_EQ(mode_of(tmp / "trusted.json"), 0600u);

    trust_store store = trust_store::load(tmp.path());
    ASSERT_EQ(store.peers().size(), 2u);
    EXPECT_EQ(store.peers()[0].id, id_a);
    EXPECT_EQ(store.peers()[0].name, "laptop");
    EXPECT_EQ(store.peers()[1].id, id_b);
    EXPECT_EQ(store.peers()[1].name, "");

    EXPECT_TRUE(store.trusted(id_a));
    EXPECT_TRUE(store.trusted(format_node_id(id_b)));
    EXPECT_TRUE(store.trusted("iiiijjjjkkkkllllmmmmnnnnoooopppp"));
    EXPECT_FALSE(store.trusted(id_c));
    EXPECT_FALSE(store.trusted("not an id"));

    ASSERT_TRUE(store.find_name("laptop"));
    EXPECT_EQ(store.find_name("laptop")->id, id_a);
    EXPECT_FALSE(store.find_name("desktop"));
    EXPECT_FALSE(store.find_name(""));  // an empty name never matches
    ASSERT_TRUE(store.find_id(format_node_id(id_a)));
    EXPECT_EQ(store.find_id(id_a)->name, "laptop");
    EXPECT_FALSE(store.find_id(id_c));

    for (const fs::directory_entry& e : fs::directory_iterator(tmp.path())) {
        EXPECT_EQ(e.path().filename(), "trusted.json") << "left behind: " << e.path();
    }
}

TEST(trust_store, same_id_updates_the_name) {
    test::temp_dir tmp;
    trust_store store = trust_store::load(tmp.path());
    EXPECT_TRUE(store.add(id_a, "old"));
    EXPECT_TRUE(store.add(id_a, "new"));
    ASSERT_EQ(store.peers().size(), 1u);
    EXPECT_EQ(store.peers()[0].name, "new");
    EXPECT_FALSE(store.find_name("old"));
    EXPECT_TRUE(store.add(id_a, "new"));  // same name, same id: fine
    EXPECT_EQ(store.peers().size(), 1u);
}

TEST(trust_store, name_used_by_another_id_is_refused) {
    test::temp_dir tmp;
    trust_store store = trust_store::load(tmp.path());
    EXPECT_TRUE(store.add(id_a, "laptop"));
    EXPECT_TRUE(store.add(id_b, "desktop"));
    EXPECT_FALSE(store.add(id_c, "laptop"));  // new id, taken name
    EXPECT_FALSE(store.add(id_b, "laptop"));  // rename onto a taken name
    EXPECT_EQ(store.peers().size(), 2u);
    EXPECT_EQ(store.find_id(id_b)->name, "desktop");
    EXPECT_FALSE(store.trusted(id_c));
    // Empty names never conflict.
    EXPECT_TRUE(store.add(id_c, ""));
    EXPECT_TRUE(store.add(id_b, ""));
}

TEST(trust_store, invalid_id_is_a_programmer_error) {
    test::temp_dir tmp;
    trust_store store = trust_store::load(tmp.path());
    EXPECT_THROW(store.add("nope", "x"), std::invalid_argument);
    EXPECT_TRUE(store.peers().empty());
}

TEST(trust_store, save_creates_the_state_dir) {
    test::temp_dir tmp;
    const fs::path dir = tmp / "new/state";
    trust_store store = trust_store::load(dir);
    EXPECT_TRUE(store.add(id_a, "x"));
    store.save();
    EXPECT_EQ(mode_of(dir), 0700u);
    EXPECT_EQ(mode_of(dir / "trusted.json"), 0600u);
    EXPECT_TRUE(trust_store::load(dir).trusted(id_a));
}

TEST(trust_store, save_replaces_the_previous_file) {
    test::temp_dir tmp;
    trust_store store = trust_store::load(tmp.path());
    store.add(id_a, "a");
    store.save();
    store.add(id_b, "b");
    store.save();
    EXPECT_EQ(trust_store::load(tmp.path()).peers().size(), 2u);
}

TEST(trust_store, accepts_missing_or_null_names_and_grouped_ids_in_the_file) {
    test::temp_dir tmp;
    write_text(tmp / "trusted.json",
               R"({"peers":[{"id":")" + format_node_id(id_a) + R"("},{"id":")" + id_b + R"(","name":null}]})");
    trust_store store = trust_store::load(tmp.path());
    ASSERT_EQ(store.peers().size(), 2u);
    EXPECT_EQ(store.peers()[0].id, id_a);
    EXPECT_EQ(store.peers()[0].name, "");
    EXPECT_EQ(store.peers()[1].name, "");
}

TEST(trust_store, corrupt_files_are_clear_errors) {
    test::temp_dir tmp;
    expect_corrupt(tmp.path(), "{not json", "not valid JSON");
    expect_corrupt(tmp.path(), "", "not valid JSON");
    expect_corrupt(tmp.path(), "[]", "\"peers\"");
    expect_corrupt(tmp.path(), R"({"peers":{}})", "\"peers\"");
    expect_corrupt(tmp.path(), R"({"peers":[{"name":"x"}]})", "peer #0");
    expect_corrupt(tmp.path(), R"({"peers":[{"id":"SHORT"}]})", "invalid node ID");
    expect_corrupt(tmp.path(), R"({"peers":[{"id":")" + id_a + R"(","name":5}]})", "\"name\"");
    expect_corrupt(tmp.path(), R"({"peers":[{"id":")" + id_a + R"("},{"id":")" + id_a + R"("}]})", "twice");
    expect_corrupt(tmp.path(), R"({"peers":[{"id":")" + id_a + R"(","name":"n"},{"id":")" + id_b + R"(","name":"n"}]})",
                   "two peers");
}

}  // namespace
}  // namespace ferry

namespace ferry {
namespace {

TEST(trust_store, address_and_share_list_round_trip_and_limit_shares) {
    test::temp_dir tmp;
    {
        trust_store store = trust_store::load(tmp.path());
        ASSERT_TRUE(store.add(id_a, "web"));
        ASSERT_TRUE(store.add(id_b, ""));
        EXPECT_TRUE(store.set_details(id_a, "192.0.2.7:7788", std::vector<std::string>{"www", "docs"}));
        EXPECT_FALSE(store.set_details(id_c, "x:1", std::nullopt));  // not trusted
        store.save();
    }
    trust_store store = trust_store::load(tmp.path());
    std::optional<trusted_peer> a = store.find_name("web");
    ASSERT_TRUE(a);
    EXPECT_EQ(a->address, "192.0.2.7:7788");
    EXPECT_TRUE(a->may_use("www"));
    EXPECT_FALSE(a->may_use("private"));
    std::optional<trusted_peer> b = store.find_id(id_b);
    ASSERT_TRUE(b);
    EXPECT_EQ(b->address, "");
    EXPECT_TRUE(b->may_use("anything"));  // no list: every share
    // Back to every share; the address stays when not given.
    EXPECT_TRUE(store.set_details(id_a, std::nullopt, std::optional<std::vector<std::string>>{}));
    EXPECT_TRUE(store.find_id(id_a)->may_use("private"));
    EXPECT_EQ(store.find_id(id_a)->address, "192.0.2.7:7788");
    expect_corrupt(tmp.path(), R"({"peers":[{"id":")" + id_a + R"(","shares":"www"}]})", "shares");
    expect_corrupt(tmp.path(), R"({"peers":[{"id":")" + id_a + R"(","address":7}]})", "address");
}

TEST(trust_store, merge_adds_a_peer_or_takes_its_details_and_takes_a_name_from_another) {
    test::temp_dir dir("ferry-trust");
    trust_store store = trust_store::load(dir.path());
    ASSERT_TRUE(store.add(id_a, "alpha"));
    ASSERT_TRUE(store.set_details(id_a, std::string("192.0.2.1:7788"), std::vector<std::string>{"docs"}));

    // Known: the given name and shares replace the store's; an empty address keeps its own.
    store.merge(trusted_peer{id_a, "first", "", std::vector<std::string>{"www"}}, true);
    std::optional<trusted_peer> a = store.find_id(id_a);
    ASSERT_TRUE(a);
    EXPECT_EQ(a->name, "first");
    EXPECT_EQ(a->address, "192.0.2.1:7788");
    EXPECT_EQ(a->shares, std::vector<std::string>{"www"});
    // No name and no shares given: the store's stay.
    store.merge(trusted_peer{id_a, "", "", std::nullopt}, false);
    EXPECT_EQ(store.find_id(id_a)->name, "first");
    EXPECT_EQ(store.find_id(id_a)->shares, std::vector<std::string>{"www"});

    // New: added as given (no shares: every share).
    store.merge(trusted_peer{id_b, "", "192.0.2.2:7788", std::nullopt}, false);
    ASSERT_TRUE(store.find_id(id_b));
    EXPECT_TRUE(store.find_id(id_b)->may_use("anything"));
    EXPECT_EQ(store.find_id(id_b)->address, "192.0.2.2:7788");

    // Every share, given: replaces the store's list.
    store.merge(trusted_peer{id_a, "", "", std::nullopt}, true);
    EXPECT_TRUE(store.find_id(id_a)->may_use("anything"));

    // The configuration file's name wins: the listed peer that had it stays, without it
    // (a refusal kept a running node on its old list for good).
    store.merge(trusted_peer{id_c, "first", "", std::nullopt}, false);
    ASSERT_TRUE(store.find_id(id_c));
    EXPECT_EQ(store.find_id(id_c)->name, "first");
    ASSERT_TRUE(store.find_id(id_a));
    EXPECT_EQ(store.find_id(id_a)->name, "");
    EXPECT_THROW(store.merge(trusted_peer{"not-an-id", "", "", std::nullopt}, false), std::invalid_argument);
}

}  // namespace
}  // namespace ferry
