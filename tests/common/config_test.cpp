#include "common/config.h"

#include <gtest/gtest.h>

#include <filesystem>

namespace fedrad {
namespace {

TEST(Config, DefaultsFillWhatIsNotGiven) {
  auto c = parse_study_config("name: x\nrounds: 3\nsites: [a, b]\ntrain: {lr: 0.01}\n", "t.yaml");
  ASSERT_TRUE(c.ok()) << c.status().to_string();
  EXPECT_EQ(c->rounds, 3);
  EXPECT_EQ(c->sites, (std::vector<std::string>{"a", "b"}));
  EXPECT_DOUBLE_EQ(c->train.lr, 0.01);
  EXPECT_EQ(c->train.batch_size, TrainConfig{}.batch_size);
  EXPECT_EQ(c->data.input_size, DataConfig{}.input_size);
  EXPECT_EQ(c->baseline_epochs(), 3);
}

TEST(Config, ToYamlRoundTrips) {
  auto c = parse_study_config("name: x\nseed: 9\nrounds: 4\nsites: [s1]\nmodel: {width: 8, norm: group}\n", "t.yaml");
  ASSERT_TRUE(c.ok());
  auto again = parse_study_config(to_yaml(*c), "again.yaml");
  ASSERT_TRUE(again.ok()) << again.status().to_string();
  EXPECT_EQ(to_yaml(*again), to_yaml(*c));
  EXPECT_EQ(again->model.norm, "group");
  EXPECT_EQ(again->seed, 9u);
}

TEST(Config, KeepOptimizerStateIsOffByDefaultAndRoundTrips) {
  auto plain = parse_study_config("name: x\n", "t.yaml");
  ASSERT_TRUE(plain.ok());
  EXPECT_FALSE(plain->train.keep_optimizer_state);
  auto c = parse_study_config("name: x\ntrain: {keep_optimizer_state: true}\n", "t.yaml");
  ASSERT_TRUE(c.ok()) << c.status().to_string();
  EXPECT_TRUE(c->train.keep_optimizer_state);
  auto again = parse_study_config(to_yaml(*c), "again.yaml");
  ASSERT_TRUE(again.ok()) << again.status().to_string();
  EXPECT_TRUE(again->train.keep_optimizer_state);
}

TEST(Config, DataParallelIsOneByDefaultAndRoundTrips) {
  auto plain = parse_study_config("name: x\n", "t.yaml");
  ASSERT_TRUE(plain.ok());
  EXPECT_EQ(plain->train.data_parallel, 1);
  auto c = parse_study_config("name: x\ntrain: {data_parallel: 4, batch_size: 64}\nprivacy: {secure_aggregation: true}\n",
                              "t.yaml");
  ASSERT_TRUE(c.ok()) << c.status().to_string();  // secure aggregation: only rank 0 talks to the coordinator
  EXPECT_EQ(c->train.data_parallel, 4);
  auto again = parse_study_config(to_yaml(*c), "again.yaml");
  ASSERT_TRUE(again.ok()) << again.status().to_string();
  EXPECT_EQ(again->train.data_parallel, 4);
}

struct BadCase {
  const char* yaml;
  const char* expected_in_message;
};

class BadConfig : public ::testing::TestWithParam<BadCase> {};

TEST_P(BadConfig, FailsNamingFileAndKey) {
  auto c = parse_study_config(GetParam().yaml, "study.yaml");
  ASSERT_FALSE(c.ok());
  EXPECT_EQ(c.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(c.status().message().find("study.yaml"), std::string::npos) << c.status().message();
  EXPECT_NE(c.status().message().find(GetParam().expected_in_message), std::string::npos) << c.status().message();
}

INSTANTIATE_TEST_SUITE_P(
    Cases, BadConfig,
    ::testing::Values(BadCase{"rounds: 0\n", "rounds: must be at least 1"},
                      BadCase{"rounds: many\n", "rounds: expected an integer, got 'many'"},
                      BadCase{"roundz: 3\n", "roundz: unknown key"},
                      BadCase{"train: {lr: -1}\n", "train.lr"},
                      BadCase{"train: {optimiser: sgd}\n", "train.optimiser: unknown key"},
                      BadCase{"model: {norm: layer}\n", "model.norm"},
                      BadCase{"train: {lr_schedule: step}\n", "train.lr_schedule"},
                      BadCase{"train: {keep_optimizer_state: yes please}\n",
                              "train.keep_optimizer_state: expected true or false"},
                      BadCase{"model: {norm: group}\ntrain: {keep_optimizer_state: true}\nprivacy: {dp_sgd: true}\n",
                              "train.keep_optimizer_state: cannot be used with privacy.dp_sgd"},
                      BadCase{"train: {data_parallel: 0}\n", "train.data_parallel: must be in 1..64"},
                      BadCase{"model: {norm: group}\ntrain: {data_parallel: 2}\nprivacy: {dp_sgd: true}\n",
                              "train.data_parallel: must be 1 with privacy.dp_sgd"},
                      BadCase{"train: {data_parallel: 4, batch_size: 6}\n",
                              "train.data_parallel: leaves fewer than 2 images per process"},
                      BadCase{"data: {input_size: 3}\n", "data.input_size"},
                      BadCase{"sites: [a, a]\n", "listed twice"},
                      BadCase{"sites: [a]\nfederation: {min_sites: 2}\n", "federation.min_sites"},
                      BadCase{"federation: {compression: lz4}\n", "federation.compression"},
                      BadCase{"federation: {heartbeat_s: 0}\n", "federation.heartbeat_s"},
                      BadCase{"federation: {heartbeat_misses: 0}\n", "federation.heartbeat_misses"},
                      BadCase{"federation: {chunk_mb: 0}\n", "federation.chunk_mb"},
                      BadCase{"federation: {keys_dir: /nonexistent/fedrad-keys}\n", "federation.keys_dir"},
                      BadCase{"federation: {plaintext: maybe}\n", "federation.plaintext: expected true or false"},
                      BadCase{"model: 3\n", "model: expected a mapping"},
                      BadCase{"rounds: [1\n", "not valid YAML"}));

TEST(Config, MissingFileIsNotFound) {
  auto c = load_study_config("/nonexistent/study.yaml");
  ASSERT_FALSE(c.ok());
  EXPECT_EQ(c.status().code(), StatusCode::kNotFound);
  EXPECT_NE(c.status().message().find("/nonexistent/study.yaml"), std::string::npos);
}

TEST(Config, ShippedConfigsAreValid) {
  int checked = 0;
  for (const auto& e : std::filesystem::directory_iterator("configs")) {
    if (e.path().extension() != ".yaml") continue;
    auto c = load_study_config(e.path().string());
    EXPECT_TRUE(c.ok()) << e.path() << ": " << c.status().to_string();
    ++checked;
  }
  EXPECT_GE(checked, 8);  // pneumonia (plain, study, secagg, regions, gpu), demo, segmentation, brats-half
}

}  // namespace
}  // namespace fedrad
