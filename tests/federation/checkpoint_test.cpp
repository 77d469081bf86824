// The coordinator's round checkpoints (federation/checkpoint.h): exact round trip, the newest
// readable one wins, damage is detected, only the last two are kept.
#include "federation/checkpoint.h"

#include <gtest/gtest.h>

#include <cstring>
#include <filesystem>
#include <fstream>

#include "tests/test_data.h"

namespace fedrad::fed {
namespace {

namespace fs = std::filesystem;

Checkpoint sample(uint32_t round) {
  Checkpoint c;
  c.round = round;
  c.study = "pneumonia";
  c.global = {TensorRecord{"w", {2, 2}, {1.5f, -0.0f, 3e38f, static_cast<float>(round)}}};
  c.strategy_state = {TensorRecord{"m.w", {2}, {0.25f, 0.5f}}};
  c.log.round = round;
  c.log.sites.push_back(SiteRoundLog{});
  c.log.sites[0].site_id = "site-a";
  c.log.sites[0].ok = true;
  c.log.sites[0].bytes_up = 1234;
  c.log.sites[0].eval.auc = 0.75;
  c.log.global_eval.threshold = 0.3;
  c.log.pooled_histogram.neg = {1, 2};
  c.log.pooled_histogram.pos = {3, 4};
  c.log.dp_epsilon = -1;
  return c;
}

TEST(Checkpoint, RoundTripsExactlyAndKeepsTheLastTwo) {
  const std::string dir = fedrad::testing::temp_dir("ckpt");
  for (uint32_t r = 1; r <= 4; ++r) ASSERT_TRUE(write_checkpoint(dir, sample(r)).ok());
  EXPECT_FALSE(fs::exists(checkpoint_path(dir, 1)));
  EXPECT_FALSE(fs::exists(checkpoint_path(dir, 2)));
  EXPECT_TRUE(fs::exists(checkpoint_path(dir, 3)));
  EXPECT_FALSE(fs::exists(checkpoint_path(dir, 4) + ".tmp"));
  auto latest = read_latest_checkpoint(dir, nullptr);
  ASSERT_TRUE(latest.ok());
  ASSERT_TRUE(latest->has_value());
  const Checkpoint& c = **latest;
  const Checkpoint want = sample(4);
  EXPECT_EQ(c.round, 4u);
  EXPECT_EQ(c.study, "pneumonia");
  ASSERT_EQ(c.global.size(), 1u);
  EXPECT_EQ(c.global[0].shape, want.global[0].shape);
  EXPECT_EQ(std::memcmp(c.global[0].data.data(), want.global[0].data.data(), 16), 0);  // bit-exact, -0.0 too
  EXPECT_EQ(c.strategy_state[0].data, want.strategy_state[0].data);
  EXPECT_EQ(c.log.sites[0].site_id, "site-a");
  EXPECT_EQ(c.log.sites[0].bytes_up, 1234u);
  EXPECT_DOUBLE_EQ(c.log.sites[0].eval.auc, 0.75);
  EXPECT_EQ(c.log.pooled_histogram.pos, want.log.pooled_histogram.pos);
  ASSERT_TRUE(clear_checkpoints(dir).ok());
  auto none = read_latest_checkpoint(dir, nullptr);
  ASSERT_TRUE(none.ok());
  EXPECT_FALSE(none->has_value());
}

TEST(Checkpoint, DamagedNewestIsSkippedForThePreviousOne) {
  const std::string dir = fedrad::testing::temp_dir("ckpt-damaged");
  ASSERT_TRUE(write_checkpoint(dir, sample(1)).ok());
  ASSERT_TRUE(write_checkpoint(dir, sample(2)).ok());
  {
    std::fstream f(checkpoint_path(dir, 2), std::ios::in | std::ios::out | std::ios::binary);
    f.seekp(30);
    f.put('\x7f');
  }
  auto direct = read_checkpoint(checkpoint_path(dir, 2));
  ASSERT_FALSE(direct.ok());
  EXPECT_NE(direct.status().message().find("checksum"), std::string::npos);
  std::vector<std::string> skipped;
  auto latest = read_latest_checkpoint(dir, &skipped);
  ASSERT_TRUE(latest.ok());
  ASSERT_TRUE(latest->has_value());
  EXPECT_EQ((*latest)->round, 1u);
  EXPECT_EQ(skipped.size(), 1u);
  // A truncated file is refused too.
  fs::resize_file(checkpoint_path(dir, 1), 20);
  EXPECT_FALSE(read_checkpoint(checkpoint_path(dir, 1)).ok());
}

}  // namespace
}  // namespace fedrad::fed
