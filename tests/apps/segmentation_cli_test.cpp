// Segmentation through the CLI as a user runs it, on tiny synthetic sites: a 2-site federated
// study (`fedrad simulate`), a baseline (`fedrad train`), `fedrad evaluate`, and `fedrad predict`
// writing a NIfTI mask in the input's geometry plus a PNG overlay.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <iterator>
#include <set>

#include <nlohmann/json.hpp>

#include "imaging/synthetic_volume.h"
#include "imaging/volume.h"
#include "tests/test_data.h"

namespace fedrad::app {
namespace {
namespace fs = std::filesystem;
using nlohmann::json;

const std::string kFedrad = std::string(FEDRAD_BINARY_DIR) + "/apps/fedrad";

class SegCli : public ::testing::Test {
 protected:
  void SetUp() override {
    root_ = testing::temp_dir("seg-cli");
    for (int i = 0; i < 2; ++i) {
      imaging::SyntheticSegSiteSpec spec;
      spec.name = "s" + std::to_string(i + 1);
      spec.num_train = 2;
      spec.num_val = 1;
      spec.extent_mm = 72;
      spec.spacing = i == 0 ? 3.0 : 3.6;  // the sites differ in resolution
      spec.scale = i == 0 ? 1.0 : 300.0;
      ASSERT_TRUE(imaging::write_synthetic_seg_site(root_ + "/data", spec, 10 + i).ok());
    }
    std::ofstream(root_ + "/seg.yaml")
        << "name: seg-cli\ntask: segmentation\nseed: 1\nrounds: 2\nsites: [s1, s2]\n"
           "model: {arch: unet3d, width: 4, stages: 2, norm: instance}\n"
           "train: {batch_size: 2, lr: 0.01, threads: 1}\n"
           "segmentation: {channels: [t1, t1c, t2, flair], labels: [1, 2, 4], brats_regions: true, "
           "spacing: [4, 4, 4], patch_size: [8, 8, 8], patches_per_case: 2}\n";
  }
  std::string root_;
};

TEST_F(SegCli, SimulateTrainEvaluateAndPredict) {
  int rc = 0;
  std::string out = testing::run_command(kFedrad + " -q simulate --config " + root_ + "/seg.yaml --data " + root_ +
                                             "/data --out " + root_ + "/fed",
                                         &rc);
  ASSERT_EQ(rc, 0) << out;
  EXPECT_NE(out.find("mean Dice"), std::string::npos) << out;
  {
    std::ifstream in(root_ + "/fed/summary.json");
    const json s = json::parse(in);
    EXPECT_EQ(s["task"], "segmentation");
    EXPECT_EQ(s["segmentation"]["cases"], 2);
    EXPECT_TRUE(s["segmentation"]["dice"].contains("WT"));
    EXPECT_EQ(s["per_site"].size(), 2u);
    std::ifstream csv(root_ + "/fed/metrics.csv");
    std::string header;
    std::getline(csv, header);
    EXPECT_NE(header.find(",mean_dice,dice_label_1,"), std::string::npos) << header;
    EXPECT_NE(header.find(",hd95_ET"), std::string::npos) << header;
    std::ifstream meta(root_ + "/fed/global.json");
    const json m = json::parse(meta);
    EXPECT_EQ(m["task"], "segmentation");
    EXPECT_EQ(m["model"]["arch"], "unet3d");
    EXPECT_EQ(m["model"]["in_channels"], 4);
    EXPECT_EQ(m["model"]["out_channels"], 4);
  }
  // The report plots Dice, not AUC, for a segmentation study, and tabulates Dice per region.
  out = testing::run_command(kFedrad + " -q report " + root_ + "/fed", &rc);
  ASSERT_EQ(rc, 0) << out;
  {
    std::ifstream in(root_ + "/fed/report.html");
    const std::string html((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    EXPECT_NE(html.find("Validation mean Dice per round"), std::string::npos);
    EXPECT_NE(html.find("<th>dice_WT</th>"), std::string::npos);
    EXPECT_EQ(html.find("Validation AUC per round"), std::string::npos);
  }

  out = testing::run_command(kFedrad + " -q train --config " + root_ + "/seg.yaml --data " + root_ +
                                 "/data --site s2 --out " + root_ + "/s2",
                             &rc);
  ASSERT_EQ(rc, 0) << out;
  ASSERT_TRUE(fs::exists(root_ + "/s2/model.pt"));

  out = testing::run_command(kFedrad + " -q evaluate --model " + root_ + "/fed/global.pt --data " + root_ +
                                 "/data/s1/val --data " + root_ + "/data/s2/val",
                             &rc);
  ASSERT_EQ(rc, 0) << out;
  const json e = json::parse(out);
  EXPECT_EQ(e["cases"], 2);
  EXPECT_EQ(e["per_folder"].size(), 2u);
  EXPECT_GE(e["mean_dice"].get<double>(), 0.0);

  // predict: the s2 validation case (3.6 mm, resampled to 4 mm inside) back in its own geometry.
  const std::string c = root_ + "/data/s2/val/s2-002/";
  const std::string channels = c + "t1.nii.gz " + c + "t1c.nii.gz " + c + "t2.nii.gz " + c + "flair.nii.gz";
  out = testing::run_command(kFedrad + " -q predict --model " + root_ + "/fed/global.pt " + channels + " --out " + root_ +
                                 "/mask.nii.gz",
                             &rc);
  ASSERT_EQ(rc, 0) << out;
  auto mask = imaging::read_nifti(root_ + "/mask.nii.gz");
  auto input = imaging::read_nifti(c + "t1.nii.gz");
  ASSERT_TRUE(mask.ok() && input.ok());
  EXPECT_EQ(mask->size, input->size);
  EXPECT_EQ(mask->spacing, input->spacing);
  for (int k = 0; k < 3; ++k) EXPECT_NEAR(mask->origin[k], input->origin[k], 1e-4);
  std::set<int> values;
  for (float v : mask->voxels) values.insert(static_cast<int>(v));
  for (int v : values) EXPECT_TRUE(v == 0 || v == 1 || v == 2 || v == 4) << v;
  EXPECT_TRUE(fs::exists(root_ + "/mask.png"));

  // The wrong number of channels is refused, naming what the model takes.
  out = testing::run_command(kFedrad + " -q predict --model " + root_ + "/fed/global.pt " + c + "t1.nii.gz --out " +
                                 root_ + "/x.nii.gz",
                             &rc);
  EXPECT_EQ(rc, 1);
  EXPECT_NE(out.find("t1 t1c t2 flair"), std::string::npos) << out;
}

}  // namespace
}  // namespace fedrad::app
