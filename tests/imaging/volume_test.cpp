// Series to volume (sorting, gaps, duplicates, inconsistent geometry), NIfTI and resampling.
#include <algorithm>
#include <cmath>
#include <filesystem>
#include <numeric>
#include <random>
#include <set>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "imaging/dicom.h"
#include "imaging/volume.h"
#include "tests/test_data.h"

namespace fedrad::imaging {
namespace {

namespace fs = std::filesystem;

std::string brats(const std::string& name) { return fedrad::testing::shared_data() + "/brats-case/" + name; }

constexpr int kRows = 8, kCols = 10, kSlices = 6;
constexpr double kSliceGap = 2.5;
// An oblique orientation: rows along x, columns tilted 30 degrees out of the y axis.
const std::array<double, 6> kOrientation{1, 0, 0, 0, std::cos(M_PI / 6), -std::sin(M_PI / 6)};
const std::array<double, 3> kNormal{0, std::sin(M_PI / 6), std::cos(M_PI / 6)};  // row x column
const std::array<double, 3> kOrigin{-12.5, 30, 7};

// Writes slice i of a series; its voxels are 100 i + 10 y + x so the order shows in the values.
void write_slice(const std::string& path, int i, const std::string& series_uid, int rows = kRows) {
  WriteSpec spec;
  spec.rows = rows;
  spec.columns = kCols;
  spec.bits_stored = 12;
  spec.modality = "CT";
  spec.pixel_spacing = 0.75;
  spec.study_uid = "1.2.826.0.1.3680043.10.1234.1";
  spec.series_uid = series_uid;
  spec.instance_number = i + 1;
  spec.has_geometry = true;
  spec.orientation = kOrientation;
  for (int k = 0; k < 3; ++k) spec.position[k] = kOrigin[k] + i * kSliceGap * kNormal[k];
  spec.slice_thickness = kSliceGap;
  std::vector<uint16_t> px(static_cast<size_t>(rows * kCols));
  for (int y = 0; y < rows; ++y)
    for (int x = 0; x < kCols; ++x) px[y * kCols + x] = static_cast<uint16_t>(100 * i + 10 * y + x);
  ASSERT_TRUE(write_dicom(path, px, spec).ok());
}

// A folder with the series written in a shuffled order under names that do not sort by slice.
std::string write_series(const std::string& name, const std::string& uid = "1.2.826.0.1.3680043.10.1234.2") {
  const std::string dir = fedrad::testing::temp_dir(name);
  std::vector<int> order(kSlices);
  std::iota(order.begin(), order.end(), 0);
  std::shuffle(order.begin(), order.end(), std::mt19937(7));
  for (int k = 0; k < kSlices; ++k) write_slice(dir + "/img" + std::to_string(k) + ".dcm", order[k], uid);
  return dir;
}

TEST(SeriesToVolume, ShuffledFilesSortAlongTheNormal) {
  auto r = load_series(write_series("vol-ok"));
  ASSERT_TRUE(r.ok()) << r.status().to_string();
  ASSERT_EQ(r->size(), 1u);
  const SeriesVolume& s = r->front();
  EXPECT_TRUE(s.problems.empty()) << problem_name(s.problems.front().kind) << ": " << s.problems.front().detail;
  ASSERT_TRUE(s.has_volume);
  const Volume& v = s.volume;
  EXPECT_EQ(v.size, (std::array<int, 3>{kCols, kRows, kSlices}));
  EXPECT_NEAR(v.spacing[0], 0.75, 1e-9);
  EXPECT_NEAR(v.spacing[1], 0.75, 1e-9);
  EXPECT_NEAR(v.spacing[2], kSliceGap, 1e-6);
  for (int k = 0; k < 3; ++k) {
    EXPECT_NEAR(v.origin[k], kOrigin[k], 1e-6);
    EXPECT_NEAR(v.direction[k * 3 + 2], kNormal[k], 1e-6);
  }
  for (int z = 0; z < kSlices; ++z)
    for (int y = 0; y < kRows; ++y)
      for (int x = 0; x < kCols; ++x) ASSERT_EQ(v.at(x, y, z), 100 * z + 10 * y + x);
}

TEST(SeriesToVolume, RemovedSliceIsReportedAsMissing) {
  const std::string dir = write_series("vol-gap");
  // Remove the file holding slice 3 (value 300 at voxel 0).
  for (const auto& e : fs::directory_iterator(dir)) {
    auto px = read_dicom(e.path().string());
    if (px.ok() && px->pixels[0] == 300) fs::remove(e.path());
  }
  auto r = load_series(dir);
  ASSERT_TRUE(r.ok());
  const SeriesVolume& s = r->front();
  ASSERT_TRUE(s.has(SeriesProblemKind::kMissingSlice));
  EXPECT_EQ(s.problems.size(), 1u);
  EXPECT_NE(s.problems[0].detail.find("1 slice(s) missing"), std::string::npos) << s.problems[0].detail;
  EXPECT_EQ(std::string(problem_name(s.problems[0].kind)), "missing_slice");
  ASSERT_TRUE(s.has_volume);
  EXPECT_EQ(s.volume.size[2], kSlices - 1);
  EXPECT_NEAR(s.volume.spacing[2], kSliceGap, 1e-6);
}

TEST(SeriesToVolume, DuplicatePositionIsReportedAndDropped) {
  const std::string dir = write_series("vol-dup");
  fs::copy_file(dir + "/img2.dcm", dir + "/zz_copy.dcm");
  auto r = load_series(dir);
  ASSERT_TRUE(r.ok());
  const SeriesVolume& s = r->front();
  EXPECT_TRUE(s.has(SeriesProblemKind::kDuplicatePosition));
  EXPECT_FALSE(s.has(SeriesProblemKind::kMissingSlice));
  ASSERT_TRUE(s.has_volume);
  EXPECT_EQ(s.volume.size[2], kSlices);
}

TEST(SeriesToVolume, InconsistentGeometryAndSeparateSeries) {
  const std::string dir = write_series("vol-bad");
  write_slice(dir + "/odd.dcm", 7, "1.2.826.0.1.3680043.10.1234.2", /*rows=*/9);
  write_slice(dir + "/other.dcm", 0, "1.2.826.0.1.3680043.10.1234.99");
  auto r = load_series(dir);
  ASSERT_TRUE(r.ok());
  ASSERT_EQ(r->size(), 2u);
  const SeriesVolume& s = r->at(0);  // ...1234.2 sorts before ...1234.99
  EXPECT_EQ(s.series_uid, "1.2.826.0.1.3680043.10.1234.2");
  EXPECT_TRUE(s.has(SeriesProblemKind::kInconsistentGeometry));
  EXPECT_FALSE(s.has_volume);
  const SeriesVolume& single = r->at(1);
  EXPECT_TRUE(single.problems.empty());
  ASSERT_TRUE(single.has_volume);
  EXPECT_EQ(single.volume.size[2], 1);

  // A file without geometry (the plain writer's default).
  WriteSpec plain;
  plain.rows = plain.columns = 4;
  ASSERT_TRUE(write_dicom(dir + "/flat.dcm", std::vector<uint16_t>(16, 1), plain).ok());
  auto ng = series_to_volume({dir + "/flat.dcm"});
  ASSERT_TRUE(ng.ok());
  EXPECT_TRUE(ng->has(SeriesProblemKind::kNoGeometry));
  EXPECT_FALSE(series_to_volume({}).ok());
}

// ---- NIfTI ----

TEST(Nifti, BratsImageAndMasks) {
  auto t1c = read_nifti(brats("t1c.nii.gz"));
  ASSERT_TRUE(t1c.ok()) << t1c.status().to_string();
  EXPECT_EQ(t1c->size, (std::array<int, 3>{240, 240, 155}));
  for (int k = 0; k < 3; ++k) EXPECT_NEAR(t1c->spacing[k], 1.0, 1e-6);
  EXPECT_GT(*std::max_element(t1c->voxels.begin(), t1c->voxels.end()), 0.0f);

  auto seg = read_nifti(brats("seg-BraTS23_1.nii.gz"));
  auto mapped = read_nifti(brats("seg-BraTS23_1_mapped.nii.gz"));
  ASSERT_TRUE(seg.ok() && mapped.ok());
  EXPECT_EQ(seg->size, t1c->size);
  std::set<float> labels(seg->voxels.begin(), seg->voxels.end());
  EXPECT_EQ(labels, (std::set<float>{0, 1, 2, 3}));
  // _mapped: the same mask with 4 for enhancing tumour.
  ASSERT_EQ(seg->voxels.size(), mapped->voxels.size());
  for (size_t i = 0; i < seg->voxels.size(); ++i)
    ASSERT_EQ(mapped->voxels[i], seg->voxels[i] == 3 ? 4.0f : seg->voxels[i]) << i;

  EXPECT_FALSE(read_nifti("/nonexistent/x.nii.gz").ok());
  EXPECT_FALSE(read_nifti(fedrad::testing::shared_data() + "/dicom/pydicom/CT_small.dcm").ok());
}

Volume small_volume() {
  Volume v;
  v.size = {7, 5, 4};
  v.spacing = {0.8, 1.2, 3.0};
  v.origin = {-10, 20.5, 3};
  v.direction = {0, 1, 0, -1, 0, 0, 0, 0, 1};  // a 90 degree rotation
  v.voxels.resize(v.count());
  for (size_t i = 0; i < v.voxels.size(); ++i) v.voxels[i] = static_cast<float>(std::sin(i * 0.37) * 1000.5);
  return v;
}

TEST(Nifti, WriteReadRoundTripIsExact) {
  const std::string dir = fedrad::testing::temp_dir("nifti");
  const Volume v = small_volume();
  for (const char* name : {"/v.nii", "/v.nii.gz"}) {
    ASSERT_TRUE(write_nifti(dir + name, v).ok());
    auto r = read_nifti(dir + name);
    ASSERT_TRUE(r.ok()) << r.status().to_string();
    EXPECT_EQ(r->size, v.size);
    EXPECT_EQ(r->voxels, v.voxels) << name;
    for (int k = 0; k < 3; ++k) {
      EXPECT_NEAR(r->spacing[k], v.spacing[k], 1e-6);
      EXPECT_NEAR(r->origin[k], v.origin[k], 1e-4);
    }
    for (int k = 0; k < 9; ++k) EXPECT_NEAR(r->direction[k], v.direction[k], 1e-6);
  }
  Volume mask = v;
  for (size_t i = 0; i < mask.voxels.size(); ++i) mask.voxels[i] = static_cast<float>(i % 5);
  ASSERT_TRUE(write_nifti(dir + "/m8.nii.gz", mask, VoxelType::kUInt8).ok());
  Volume labels16 = mask;
  labels16.voxels[3] = -300;
  labels16.voxels[4] = 30000;
  ASSERT_TRUE(write_nifti(dir + "/m16.nii", labels16, VoxelType::kInt16).ok());
  auto m8 = read_nifti(dir + "/m8.nii.gz");
  auto m16 = read_nifti(dir + "/m16.nii");
  ASSERT_TRUE(m8.ok() && m16.ok());
  EXPECT_EQ(m8->voxels, mask.voxels);
  EXPECT_EQ(m16->voxels, labels16.voxels);
  EXPECT_FALSE(write_nifti(dir + "/bad.nii", labels16, VoxelType::kUInt8).ok()) << "-300 does not fit uint8";
}

// ---- resampling ----

TEST(Resample, SpacingSizeAndValues) {
  Volume ramp;
  ramp.size = {9, 6, 5};
  ramp.spacing = {1, 1, 2};
  ramp.voxels.resize(ramp.count());
  for (int z = 0; z < 5; ++z)
    for (int y = 0; y < 6; ++y)
      for (int x = 0; x < 9; ++x) ramp.voxels[ramp.index(x, y, z)] = static_cast<float>(2 * x + 3 * y + 5 * z);
  auto half = resample(ramp, {0.5, 0.5, 1.0}, Interpolation::kLinear);
  ASSERT_TRUE(half.ok()) << half.status().to_string();
  EXPECT_EQ(half->size, (std::array<int, 3>{18, 12, 10}));
  EXPECT_EQ(half->spacing, (std::array<double, 3>{0.5, 0.5, 1.0}));
  // Linear interpolation reproduces a linear function inside the input grid.
  for (int z = 0; z <= 8; ++z)
    for (int y = 0; y <= 10; ++y)
      for (int x = 0; x <= 16; ++x)
        ASSERT_NEAR(half->at(x, y, z), 2 * (x * 0.5) + 3 * (y * 0.5) + 5 * (z * 1.0 / 2), 1e-4) << x << y << z;

  auto seg = read_nifti(brats("seg-BraTS23_1.nii.gz"));
  ASSERT_TRUE(seg.ok());
  auto coarse = resample(*seg, {2, 2, 2}, Interpolation::kNearest);
  ASSERT_TRUE(coarse.ok());
  EXPECT_EQ(coarse->size, (std::array<int, 3>{120, 120, 78}));
  std::set<float> labels(coarse->voxels.begin(), coarse->voxels.end());
  EXPECT_EQ(labels, (std::set<float>{0, 1, 2, 3})) << "nearest neighbour invents no labels";
  EXPECT_EQ(coarse->at(10, 20, 30), seg->at(20, 40, 60));
  EXPECT_FALSE(resample(ramp, {0, 1, 1}, Interpolation::kLinear).ok());
}

}  // namespace
}  // namespace fedrad::imaging
