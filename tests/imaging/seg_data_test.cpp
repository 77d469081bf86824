#include "imaging/seg_data.h"

#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <set>

#include "imaging/overlay.h"
#include "imaging/synthetic_volume.h"
#include "tests/test_data.h"

namespace fedrad::imaging {
namespace {
namespace fs = std::filesystem;

Volume cube(int n, double spacing, float value) {
  Volume v;
  v.size = {n, n, n};
  v.spacing = {spacing, spacing, spacing};
  v.voxels.assign(v.count(), value);
  return v;
}

void write(const std::string& path, const std::string& text) { std::ofstream(path) << text; }

class CasesCsv : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = testing::temp_dir("cases-csv");
    fs::create_directories(dir_ + "/c1");
    ASSERT_TRUE(write_nifti(dir_ + "/c1/t1.nii.gz", cube(8, 1, 1)).ok());
    ASSERT_TRUE(write_nifti(dir_ + "/c1/t2.nii.gz", cube(8, 1, 2)).ok());
    auto m = cube(8, 1, 0);
    m.voxels[m.index(3, 3, 3)] = 2;
    ASSERT_TRUE(write_nifti(dir_ + "/c1/seg.nii.gz", m, VoxelType::kUInt8).ok());
  }
  std::string dir_;
};

TEST_F(CasesCsv, ReadsChannelsInTheRequestedOrder) {
  write(dir_ + "/cases.csv", "mask,t2,case,t1\nc1/seg.nii.gz,c1/t2.nii.gz,c1,c1/t1.nii.gz\n");
  auto rows = read_cases_csv(dir_ + "/cases.csv", {"t1", "t2"});
  ASSERT_TRUE(rows.ok()) << rows.status().to_string();
  ASSERT_EQ(rows->size(), 1u);
  EXPECT_EQ((*rows)[0].id, "c1");
  EXPECT_EQ((*rows)[0].channels[0], dir_ + "/c1/t1.nii.gz");
  EXPECT_EQ((*rows)[0].channels[1], dir_ + "/c1/t2.nii.gz");
  EXPECT_EQ((*rows)[0].mask, dir_ + "/c1/seg.nii.gz");
  EXPECT_EQ((*rows)[0].line, 2);
}

TEST_F(CasesCsv, ErrorsNameTheFileRowAndColumn) {
  struct Bad {
    std::string csv, expect1, expect2;
  };
  const std::vector<Bad> bad = {
      {"case,t1,mask\nc1,c1/t1.nii.gz,c1/seg.nii.gz\n", "no column 't2'", "segmentation.channels"},
      {"case,t1,t2\nc1,c1/t1.nii.gz,c1/t2.nii.gz\n", "no column 'mask'", "the header has: case, t1, t2"},
      {"case,t1,t2,mask\nc1,c1/t1.nii.gz,c1/missing.nii.gz,c1/seg.nii.gz\n", "line 2: column 't2'",
       "missing.nii.gz does not exist"},
      {"case,t1,t2,mask\nc1,c1/t1.nii.gz,,c1/seg.nii.gz\n", "line 2: column 't2' is empty", ""},
      {"case,t1,t2,mask\nc1,c1/t1.nii.gz,c1/t2.nii.gz\n", "line 2: 3 cells, the header has 4", ""},
      {"case,t1,t2,mask\nc1,c1/t1.nii.gz,c1/t2.nii.gz,c1/seg.nii.gz\n\nc1,c1/t1.nii.gz,c1/t2.nii.gz,c1/seg.nii.gz\n",
       "line 4: case 'c1' is listed twice", ""},
      {"case,t1,t2,mask\n", "lists no case", ""},
  };
  for (const auto& b : bad) {
    SCOPED_TRACE(b.csv);
    write(dir_ + "/cases.csv", b.csv);
    auto rows = read_cases_csv(dir_ + "/cases.csv", {"t1", "t2"});
    ASSERT_FALSE(rows.ok());
    const std::string msg = rows.status().message();
    EXPECT_NE(msg.find(dir_ + "/cases.csv"), std::string::npos) << msg;
    EXPECT_NE(msg.find(b.expect1), std::string::npos) << msg;
    EXPECT_NE(msg.find(b.expect2), std::string::npos) << msg;
  }
}

TEST_F(CasesCsv, AMaskValueOutsideTheLabelsIsRefused) {
  write(dir_ + "/cases.csv", "case,t1,t2,mask\nc1,c1/t1.nii.gz,c1/t2.nii.gz,c1/seg.nii.gz\n");
  SegLoadOptions o;
  o.labels = {1, 4};  // the mask holds a 2
  auto cases = load_seg_cases(dir_ + "/cases.csv", {"t1", "t2"}, o, 1);
  ASSERT_FALSE(cases.ok());
  EXPECT_NE(cases.status().message().find("case 'c1' (line 2): the mask holds the value 2"), std::string::npos)
      << cases.status().message();
  o.labels = {2};
  cases = load_seg_cases(dir_ + "/cases.csv", {"t1", "t2"}, o, 1);
  ASSERT_TRUE(cases.ok()) << cases.status().to_string();
  EXPECT_EQ((*cases)[0].channels, 2);
}

TEST(SegData, ZScoreOverTheForegroundOnly) {
  std::vector<float> v = {0, 0, 2, 4, 6, 0};
  std::vector<uint8_t> fg(6, 0);
  fg[2] = fg[3] = fg[4] = 1;
  // Too few foreground voxels would fall back to all; 3 of 6 is plenty.
  zscore_foreground(v.data(), v.size(), fg);
  const double sd = std::sqrt(8.0 / 3.0);
  EXPECT_NEAR(v[2], -2 / sd, 1e-5);
  EXPECT_NEAR(v[3], 0, 1e-6);
  EXPECT_NEAR(v[4], 2 / sd, 1e-5);
  EXPECT_EQ(v[0], 0.0f);
  EXPECT_EQ(v[5], 0.0f);
}

TEST(SegData, ResamplesCropsNormalisesAndMapsBack) {
  // A 20^3 volume at 1 mm with a non-zero 10^3 "brain" and a 4^3 lesion inside it.
  Volume img = cube(20, 1.0, 0.0f), mask = cube(20, 1.0, 0.0f);
  img.origin = {5, -3, 7};
  mask.origin = img.origin;
  for (int z = 5; z < 15; ++z)
    for (int y = 5; y < 15; ++y)
      for (int x = 5; x < 15; ++x) img.voxels[img.index(x, y, z)] = 100.0f + x;
  for (int z = 8; z < 12; ++z)
    for (int y = 8; y < 12; ++y)
      for (int x = 8; x < 12; ++x) mask.voxels[mask.index(x, y, z)] = 3;
  SegLoadOptions o;
  o.labels = {3};
  o.spacing = {2, 2, 2};
  o.margin = 1;
  auto c = make_seg_case("x", {img}, &mask, o);
  ASSERT_TRUE(c.ok()) << c.status().to_string();
  EXPECT_EQ(c->grid_size, (std::array<int, 3>{10, 10, 10}));
  EXPECT_EQ(c->spacing, (std::array<double, 3>{2, 2, 2}));
  // The brain spans voxels 5..14 at 1 mm -> about 2..7 at 2 mm (linear interpolation blurs the
  // edge by one voxel), plus the margin.
  for (int k = 0; k < 3; ++k) {
    EXPECT_GE(c->crop_lo[k], 1);
    EXPECT_LE(c->crop_lo[k], 2);
    EXPECT_LE(c->size[k], 9);
  }
  // Classes are 0/1 (label 3 -> class 1); the image has mean 0 over the foreground.
  std::set<int> classes(c->classes.begin(), c->classes.end());
  EXPECT_EQ(classes, (std::set<int>{0, 1}));
  double sum = 0, n = 0;
  for (float v : c->image)
    if (v != 0) sum += v, n += 1;
  EXPECT_NEAR(sum / n, 0.0, 1e-3);
  // The class map goes back to the original 20^3 geometry with the label values.
  Volume back = classes_to_reference(*c, c->classes, o.labels);
  EXPECT_EQ(back.size, img.size);
  EXPECT_EQ(back.origin, img.origin);
  EXPECT_EQ(back.spacing, img.spacing);
  EXPECT_EQ(back.at(10, 10, 10), 3.0f);
  EXPECT_EQ(back.at(2, 2, 2), 0.0f);
  double agree = 0;
  for (size_t i = 0; i < back.voxels.size(); ++i) agree += back.voxels[i] == mask.voxels[i];
  EXPECT_GT(agree / back.voxels.size(), 0.98);
}

TEST(SyntheticVolume, MasksAreExactAndSitesDiffer) {
  const auto c = synthetic_brain_case(40, 3.0, 500.0, 0.05, 0.1, 7);
  ASSERT_EQ(c.channels.size(), 4u);
  std::set<int> labels;
  for (float v : c.mask.voxels) labels.insert(static_cast<int>(v));
  EXPECT_TRUE(labels.count(2));  // oedema
  EXPECT_TRUE(labels.count(4));  // enhancing
  for (int l : labels) EXPECT_TRUE(l == 0 || l == 1 || l == 2 || l == 4) << l;
  // Enhancing tumour is bright on t1c (channel 1) compared with the brain around it.
  double et = 0, net = 0, brain = 0, nbrain = 0;
  for (size_t i = 0; i < c.mask.voxels.size(); ++i) {
    const float v = c.channels[1].voxels[i];
    if (c.mask.voxels[i] == 4) et += v, net += 1;
    else if (v != 0 && c.mask.voxels[i] == 0) brain += v, nbrain += 1;
  }
  EXPECT_GT(et / net, 1.2 * brain / nbrain);
  // Background is exactly 0 (skull-stripped) and the brain is non-zero.
  EXPECT_EQ(c.channels[0].at(0, 0, 0), 0.0f);
  EXPECT_NE(c.channels[0].at(20, 20, 20), 0.0f);
  // The site's scale reaches the intensities.
  const auto d = synthetic_brain_case(40, 3.0, 1.0, 0.05, 0.1, 7);
  EXPECT_NEAR(c.channels[0].at(20, 20, 20) / d.channels[0].at(20, 20, 20), 500.0, 1.0);
}

TEST(SyntheticVolume, WritesSitesThatLoad) {
  const std::string root = testing::temp_dir("synthetic-seg");
  SyntheticSegSiteSpec spec;
  spec.name = "s";
  spec.num_train = 2;
  spec.num_val = 1;
  spec.extent_mm = 60;
  spec.spacing = 2.5;
  ASSERT_TRUE(write_synthetic_seg_site(root, spec, 1).ok());
  SegLoadOptions o;
  o.labels = {1, 2, 4};
  o.spacing = {2, 2, 2};
  auto cases = load_seg_cases(root + "/s/train/cases.csv", synthetic_seg_channels(), o, 2);
  ASSERT_TRUE(cases.ok()) << cases.status().to_string();
  ASSERT_EQ(cases->size(), 2u);
  EXPECT_EQ((*cases)[0].reference.size, (std::array<int, 3>{24, 24, 24}));
  EXPECT_EQ((*cases)[0].grid_size, (std::array<int, 3>{30, 30, 30}));
  EXPECT_EQ((*cases)[0].channels, 4);
}

TEST(Overlay, WritesAPng) {
  const auto c = synthetic_brain_case(24, 5.0, 1.0, 0.05, 0.1, 3);
  const std::string path = testing::temp_dir("overlay") + "/o.png";
  ASSERT_TRUE(write_overlay_png(path, c.channels[3], c.mask).ok());
  std::ifstream in(path, std::ios::binary);
  std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  ASSERT_GT(bytes.size(), 33u);
  EXPECT_EQ(bytes.substr(0, 8), std::string("\x89PNG\r\n\x1a\n", 8));
  EXPECT_EQ(bytes.substr(12, 4), "IHDR");
  // Width: three panels (24 + 4 + 24 + 4 + 24), height 24, enlarged 10x; big-endian.
  EXPECT_EQ(static_cast<unsigned char>(bytes[18]) * 256 + static_cast<unsigned char>(bytes[19]), 800);
  EXPECT_EQ(static_cast<unsigned char>(bytes[22]) * 256 + static_cast<unsigned char>(bytes[23]), 240);
  Volume other = c.mask;
  other.size = {12, 24, 48};
  EXPECT_FALSE(write_overlay_png(path, c.channels[3], other).ok());
}

}  // namespace
}  // namespace fedrad::imaging
