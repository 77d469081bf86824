#include <gtest/gtest.h>

#include "common/config.h"

namespace fedrad {
namespace {

const char* kSeg =
    "name: s\ntask: segmentation\nsites: [a]\nmodel: {arch: unet3d, width: 8, stages: 3, norm: instance}\n"
    "segmentation: {channels: [t1, t2], labels: [1, 2, 4], patch_size: [32, 32, 16], spacing: [2, 2, 2.5], "
    "brats_regions: true}\n";

TEST(SegConfig, ParsesAndRoundTrips) {
  auto c = parse_study_config(kSeg, "seg.yaml");
  ASSERT_TRUE(c.ok()) << c.status().to_string();
  EXPECT_TRUE(c->segmentation_task());
  EXPECT_EQ(c->segmentation.channels, (std::vector<std::string>{"t1", "t2"}));
  EXPECT_EQ(c->segmentation.patch_size, (std::vector<int>{32, 32, 16}));
  EXPECT_EQ(c->segmentation.spacing, (std::vector<double>{2, 2, 2.5}));
  auto again = parse_study_config(to_yaml(*c), "again.yaml");
  ASSERT_TRUE(again.ok()) << again.status().to_string();
  EXPECT_EQ(to_yaml(*again), to_yaml(*c));
}

struct Bad {
  std::string yaml;
  std::string key;
  std::string why;
};

TEST(SegConfig, BadValuesNameTheKey) {
  const std::string head = "name: s\ntask: segmentation\nsites: [a]\n";
  const std::vector<Bad> cases = {
      {head + "model: {arch: resnet}\n", "model.arch", "unet2d or unet3d"},
      {"name: s\nmodel: {arch: unet3d}\n", "model.arch", "task: segmentation"},
      {head + "model: {arch: unet3d}\ntask2: x\n", "task2", "unknown key"},
      {"name: s\ntask: detection\n", "task", "classification or segmentation"},
      {head + "model: {arch: unet3d, stages: 3}\nsegmentation: {patch_size: [32, 30, 32]}\n",
       "segmentation.patch_size", "multiple of 2^(model.stages-1) = 4"},
      {head + "model: {arch: unet3d}\nsegmentation: {patch_size: [32, 32]}\n", "segmentation.patch_size", "[x, y, z]"},
      {head + "model: {arch: unet2d}\nsegmentation: {patch_size: [32, 32, 8]}\n", "segmentation.patch_size",
       "z must be 1"},
      {head + "model: {arch: unet3d}\nsegmentation: {labels: [1, 1]}\n", "segmentation.labels", "listed twice"},
      {head + "model: {arch: unet3d}\nsegmentation: {labels: [0]}\n", "segmentation.labels", "1..255"},
      {head + "model: {arch: unet3d}\nsegmentation: {channels: [mask]}\n", "segmentation.channels", "other than"},
      {head + "model: {arch: unet3d}\nsegmentation: {overlap: 1}\n", "segmentation.overlap", "[0, 1)"},
      {head + "model: {arch: unet3d}\nsegmentation: {spacing: [1, 0, 1]}\n", "segmentation.spacing", "(0, 100]"},
      {head + "model: {arch: unet3d}\nsegmentation: {labels: [1, 2], brats_regions: true}\n",
       "segmentation.brats_regions", "BraTS"},
      {head + "model: {arch: unet3d}\nsegmentation: {labels: one}\n", "segmentation.labels", "a list of integers"},
      {head + "model: {arch: unet3d}\nsegmentation: {blend: max}\n", "segmentation.blend", "gaussian or constant"},
  };
  for (const auto& b : cases) {
    SCOPED_TRACE(b.yaml);
    auto c = parse_study_config(b.yaml, "bad.yaml");
    ASSERT_FALSE(c.ok());
    EXPECT_NE(c.status().message().find("bad.yaml: " + b.key), std::string::npos) << c.status().message();
    EXPECT_NE(c.status().message().find(b.why), std::string::npos) << c.status().message();
  }
}

}  // namespace
}  // namespace fedrad
