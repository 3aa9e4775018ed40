// The study file: grid expansion (cross product, zip, source filters), stable cell hashes and
// the file/line/key errors a bad config gets before anything runs.
#include <gtest/gtest.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <set>

#include "core/error.hpp"
#include "sweep/store.hpp"
#include "sweep/study.hpp"

namespace kvlab::sweep {
namespace {

namespace fs = std::filesystem;

class StudyTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() / ("kvlab_study_test_" + std::to_string(::getpid()));
    fs::create_directories(dir_);
    for (const char* name : {"a_32k.h5", "b_32k.h5", "c_128k.h5"}) std::ofstream(dir_ / name) << "x";
  }
  void TearDown() override { fs::remove_all(dir_); }

  std::string write(const std::string& text) {
    const fs::path file = dir_ / "study.toml";
    std::ofstream(file) << text;
    return file.string();
  }
  std::string header() const { return "out_dir = \"" + (dir_ / "out").string() + "\"\n"; }
  std::string traces(const std::string& pattern) const {
    return "[[source]]\ntraces = [\"" + (dir_ / pattern).string() + "\"]\n";
  }
  /// The InputError message of parsing and expanding `text`.
  std::string error_of(const std::string& text) {
    try {
      (void)expand_cells(parse_study(write(text)));
    } catch (const InputError& e) {
      return e.what();
    }
    return "no error";
  }

  fs::path dir_;
};

TEST(StableHash, IsFnv1a64) {
  EXPECT_EQ(stable_hash(""), "cbf29ce484222325");  // the FNV-1a 64 offset basis
  EXPECT_EQ(stable_hash("a"), "af63dc4c8601ec8c");
}

TEST(FloatText, ShortestRoundTripWithAPoint) {
  EXPECT_EQ(float_text(0.1), "0.1");
  EXPECT_EQ(float_text(1.0), "1.0");  // "1" would read as one token, not the whole context
  EXPECT_EQ(float_text(0.15), "0.15");
  EXPECT_EQ(float_text(1e-7), "1e-07");
}

TEST_F(StudyTest, ListsCrossAndZippedListsAdvanceTogether) {
  const std::string text = header() + "seeds = [0, 1]\n" + traces("*_32k.h5") +
                           "[[policy]]\nname = \"sliding_window\"\nwindow = [512, 1024, 2048]\nsinks = [0, 64]\n"
                           "[[policy]]\nname = \"oracle_topk\"\nbudget = [0.1, 0.2]\nper_row = [true, false]\n"
                           "zip = [\"budget\", \"per_row\"]\n";
  const std::vector<Cell> cells = expand_cells(parse_study(write(text)));
  // 2 sources x (3x2 windows + 2 zipped oracle points) x 2 seeds
  ASSERT_EQ(cells.size(), 2u * (6 + 2) * 2);
  std::set<std::string> policies;
  std::set<std::string> hashes;
  for (const Cell& c : cells) {
    policies.insert(c.policy);
    hashes.insert(c.hash);
  }
  EXPECT_EQ(hashes.size(), cells.size());
  EXPECT_TRUE(policies.count("oracle_topk:budget=0.1,per_row=true"));
  EXPECT_TRUE(policies.count("oracle_topk:budget=0.2,per_row=false"));
  EXPECT_FALSE(policies.count("oracle_topk:budget=0.1,per_row=false"));
  EXPECT_EQ(cells.front().source, "a_32k");
}

TEST_F(StudyTest, HashesAreStableAndChangeOnlyWithTheCell) {
  const std::string base = header() + traces("*_32k.h5") + "[[policy]]\nname = \"random\"\nbudget = [0.1, 0.2]\n";
  const std::vector<Cell> first = expand_cells(parse_study(write(base)));
  const std::vector<Cell> again = expand_cells(parse_study(write(base + "[engine]\nthreads = 7\n")));
  ASSERT_EQ(first.size(), again.size());
  for (size_t i = 0; i < first.size(); ++i) EXPECT_EQ(first[i].hash, again[i].hash);  // threads: no effect
  const std::vector<Cell> other = expand_cells(parse_study(write(base + "[engine]\ncritical_mass = 0.8\n")));
  for (size_t i = 0; i < first.size(); ++i) EXPECT_NE(first[i].hash, other[i].hash);
  // resolved_recall at its default leaves the hash as it was before the key existed.
  const std::vector<Cell> same = expand_cells(parse_study(write(base + "[engine]\nresolved_recall = 0.95\n")));
  const std::vector<Cell> stricter = expand_cells(parse_study(write(base + "[engine]\nresolved_recall = 0.99\n")));
  for (size_t i = 0; i < first.size(); ++i) {
    EXPECT_EQ(first[i].hash, same[i].hash);
    EXPECT_NE(first[i].hash, stricter[i].hash);
  }
  EXPECT_FALSE(first[0].config.contains("resolved_recall"));
  // The hash is that of the canonical config text: any process computes the same name.
  EXPECT_EQ(first[0].hash, stable_hash(first[0].config.dump()));
}

TEST_F(StudyTest, SourceFiltersPickPolicies) {
  const std::string text = header() + traces("*.h5") +
                           "[[policy]]\nname = \"full\"\n"
                           "[[policy]]\nname = \"random\"\nbudget = 0.1\nsources = [\"*_128k\"]\n";
  const std::vector<Cell> cells = expand_cells(parse_study(write(text)));
  ASSERT_EQ(cells.size(), 4u);  // full on three sources, random on c_128k only
  EXPECT_EQ(cells.back().source, "c_128k");
  EXPECT_EQ(cells.back().policy_name, "random");
}

TEST_F(StudyTest, BadConfigsNameFileLineAndKey) {
  const std::string policy = "[[policy]]\nname = \"full\"\n";
  const std::string file = (dir_ / "study.toml").string();
  EXPECT_EQ(error_of(header() + "sedes = [1]\n" + traces("*.h5") + policy),
            file + ":2: sedes: unknown key (valid: artifact, engine, out_dir, plugins, policy, seeds, source)");
  EXPECT_EQ(error_of(header() + "[engine]\nthreads = \"two\"\n" + traces("*.h5") + policy),
            file + ":3: engine.threads: expected an integer, got a string");
  EXPECT_EQ(error_of(header() + "[engine]\nresolved_recall = 1.5\n" + traces("*.h5") + policy),
            file + ":3: engine.resolved_recall: must be in (0, 1]");
  EXPECT_NE(error_of(header() + traces("nothing_*.h5") + policy).find(":3: source.traces: '"), std::string::npos);
  EXPECT_NE(error_of(header() + traces("*.h5") + "[[policy]]\nname = \"ful\"\n").find(":4: policy ful: unknown policy 'ful'"),
            std::string::npos);
  EXPECT_NE(error_of(header() + traces("*.h5") + "[[policy]]\nname = \"random\"\nbudgte = 0.1\n")
                .find(":4: policy random: unknown parameter 'budgte'"),
            std::string::npos);
  EXPECT_NE(error_of(header() + traces("*.h5") + "[[policy]]\nname = \"random\"\nbudget = [0.1]\nsinks = [1, 2]\n"
                                                 "zip = [\"budget\", \"sinks\"]\n")
                .find(":4: policy.zip: the zipped lists have different lengths"),
            std::string::npos);
  EXPECT_NE(error_of(header() + "[[source]]\ntraces = [\"@idx\"]\n" + policy).find(":3: source.traces: '@idx' names no artifact"),
            std::string::npos);
  EXPECT_NE(error_of(header() + traces("*.h5") + "[[policy]\n").find(":4: "), std::string::npos);
}

TEST_F(StudyTest, LiveSourcesTakeStopPrefillWindowAndTemplateSet) {
  const std::string policy = "[[policy]]\nname = \"full\"\n";
  const std::string live = "[[source]]\ntask = \"niah_single\"\n";
  const std::vector<Cell> plain = expand_cells(parse_study(write(header() + live + policy)));
  const std::vector<Cell> worded = expand_cells(parse_study(
      write(header() + live + "stop = \"limit\"\nprefill_window = 16\ntemplate_set = \"heldout\"\n" + policy)));
  ASSERT_EQ(plain.size(), 1u);
  ASSERT_EQ(worded.size(), 1u);
  const auto flags = worded[0].config["run_flags"].get<std::vector<std::string>>();
  for (const auto& [flag, value] : std::vector<std::pair<std::string, std::string>>{
           {"--stop", "limit"}, {"--prefill-window", "16"}, {"--template-set", "heldout"}}) {
    const auto at = std::find(flags.begin(), flags.end(), flag);
    ASSERT_NE(at, flags.end()) << flag;
    ASSERT_NE(at + 1, flags.end()) << flag;
    EXPECT_EQ(*(at + 1), value) << flag;
  }
  // A source without the keys keeps the cell it had before they existed.
  EXPECT_EQ(plain[0].config["run_flags"], (nlohmann::json{"--task", "niah_single"}));
  EXPECT_NE(plain[0].hash, worded[0].hash);

  const std::string file = (dir_ / "study.toml").string();
  EXPECT_EQ(error_of(header() + live + "stop = \"never\"\n" + policy),
            file + ":4: source.stop: 'never' is not one of eos, limit");
  EXPECT_EQ(error_of(header() + live + "template_set = \"test\"\n" + policy),
            file + ":4: source.template_set: 'test' is not one of default, train, heldout");
  EXPECT_EQ(error_of(header() + live + "prefill_window = -1\n" + policy),
            file + ":4: source.prefill_window: must be between 0 and 1048576");
  EXPECT_EQ(error_of(header() + live + "prefill_window = \"32\"\n" + policy),
            file + ":4: source.prefill_window: expected an integer, got a string");
  EXPECT_EQ(error_of(header() + live + "stop = 1\n" + policy), file + ":4: source.stop: expected a string, got an integer");
  // Replay sources take none of them.
  EXPECT_NE(error_of(header() + traces("*.h5") + "template_set = \"train\"\n" + policy)
                .find("source.template_set: only live sources (task = ...) take it"),
            std::string::npos);
}

TEST(Shards, ShareEveryCellExactlyOnce) {
  std::vector<int> owner(23, -1);
  for (int64_t i = 0; i < 4; ++i) {
    for (size_t k : shard_share(owner.size(), i, 4)) {
      EXPECT_EQ(owner[k], -1);
      owner[k] = static_cast<int>(i);
    }
  }
  for (int o : owner) EXPECT_NE(o, -1);
  EXPECT_EQ(parse_shard("3/4", "--shard"), (std::pair<int64_t, int64_t>{3, 4}));
  EXPECT_THROW(parse_shard("4/4", "--shard"), UsageError);
  EXPECT_THROW(parse_shard("1", "--shard"), UsageError);
  EXPECT_THROW(parse_shard("1/2x", "--shard"), UsageError);
}

}  // namespace
}  // namespace kvlab::sweep
