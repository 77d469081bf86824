#include "common/seg_metrics.h"

#include <gtest/gtest.h>

#include <cmath>
#include <random>

namespace fedrad {
namespace {

using Size = std::array<int, 3>;
using Spacing = std::array<double, 3>;

std::vector<uint8_t> box(const Size& size, Size lo, Size hi) {  // inclusive corners
  std::vector<uint8_t> m(static_cast<size_t>(size[0]) * size[1] * size[2], 0);
  for (int z = lo[2]; z <= hi[2]; ++z)
    for (int y = lo[1]; y <= hi[1]; ++y)
      for (int x = lo[0]; x <= hi[0]; ++x) m[(static_cast<size_t>(z) * size[1] + y) * size[0] + x] = 1;
  return m;
}

TEST(SegMetrics, DiceOfHandCountedMasks) {
  // a: 4 voxels, b: 2 voxels, 2 shared -> 2*2 / (4+2) = 2/3.
  const std::vector<uint8_t> a = {1, 1, 1, 1, 0, 0}, b = {0, 0, 1, 1, 0, 0};
  EXPECT_NEAR(dice(a, b), 2.0 / 3.0, 1e-12);
  EXPECT_DOUBLE_EQ(dice(a, a), 1.0);
  EXPECT_DOUBLE_EQ(dice(a, {0, 0, 0, 0, 1, 1}), 0.0);
  EXPECT_DOUBLE_EQ(dice({0, 0, 0}, {0, 0, 0}), 1.0);  // both empty: perfect
  EXPECT_DOUBLE_EQ(dice({0, 0, 0}, {0, 1, 0}), 0.0);
}

TEST(SegMetrics, Hd95OfTwoPointsIsTheirDistanceInMillimetres) {
  const Size size{10, 4, 4};
  const auto a = box(size, {1, 1, 1}, {1, 1, 1}), b = box(size, {4, 1, 1}, {4, 1, 1});
  EXPECT_DOUBLE_EQ(hd95(a, b, size, {1, 1, 1}), 3.0);
  EXPECT_DOUBLE_EQ(hd95(a, b, size, {2.5, 1, 1}), 7.5);  // 3 voxels of 2.5 mm
  EXPECT_DOUBLE_EQ(hd95(a, b, size, {1, 7, 7}), 3.0);    // other axes' spacing does not matter here
  EXPECT_DOUBLE_EQ(hd95(a, a, size, {1, 1, 1}), 0.0);
}

TEST(SegMetrics, Hd95OfShiftedSlabs) {
  // Two 1-voxel-thick slabs 2 voxels apart along z at 1.5 mm: every surface voxel is 3 mm from
  // the other surface.
  const Size size{6, 6, 8};
  const auto a = box(size, {0, 0, 2}, {5, 5, 2}), b = box(size, {0, 0, 4}, {5, 5, 4});
  EXPECT_NEAR(hd95(a, b, size, {1, 1, 1.5}), 3.0, 1e-12);
}

TEST(SegMetrics, Hd95TakesThe95thPercentileNotTheMaximum) {
  // a: a 1x1x40 line; b: the same line plus one voxel far away (distance 10 along x from the
  // line's end). From b's surface: 40 zeros and one 10 -> P95 over 41 values: rank 38 -> 0.
  // From a: all zeros. The maximum (Hausdorff) would be 10, HD95 is 0.
  const Size size{20, 1, 40};
  auto a = box(size, {0, 0, 0}, {0, 0, 39});
  auto b = a;
  b[(static_cast<size_t>(39) * 1 + 0) * 20 + 10] = 1;
  EXPECT_DOUBLE_EQ(hd95(a, b, size, {1, 1, 1}), 0.0);
  // Hand-computed percentile with interpolation: values 0..9, P95 at position 8.55 -> 8.55.
  std::vector<double> v;
  for (int i = 0; i < 10; ++i) v.push_back(i);
  EXPECT_NEAR(percentile(v, 95), 8.55, 1e-12);
}

TEST(SegMetrics, Hd95IsUndefinedWhenOneMaskIsEmpty) {
  const Size size{4, 4, 4};
  const auto a = box(size, {1, 1, 1}, {2, 2, 2});
  const std::vector<uint8_t> empty(a.size(), 0);
  EXPECT_TRUE(std::isnan(hd95(a, empty, size, {1, 1, 1})));
  EXPECT_DOUBLE_EQ(hd95(empty, empty, size, {1, 1, 1}), 0.0);
}

TEST(SegMetrics, DistanceTransformMatchesBruteForce) {
  const Size size{9, 7, 5};
  const Spacing sp{0.8, 1.3, 2.1};
  std::mt19937 rng(3);
  std::vector<uint8_t> f(static_cast<size_t>(size[0]) * size[1] * size[2]);
  for (auto& v : f) v = rng() % 17 == 0;
  const auto d2 = squared_distance_transform(f, size, sp);
  for (int z = 0; z < size[2]; ++z)
    for (int y = 0; y < size[1]; ++y)
      for (int x = 0; x < size[0]; ++x) {
        double best = INFINITY;
        for (int c = 0; c < size[2]; ++c)
          for (int b = 0; b < size[1]; ++b)
            for (int a = 0; a < size[0]; ++a)
              if (f[(static_cast<size_t>(c) * size[1] + b) * size[0] + a]) {
                const double dx = (x - a) * sp[0], dy = (y - b) * sp[1], dz = (z - c) * sp[2];
                best = std::min(best, dx * dx + dy * dy + dz * dz);
              }
        EXPECT_NEAR(d2[(static_cast<size_t>(z) * size[1] + y) * size[0] + x], best, 1e-9);
      }
}

TEST(SegMetrics, SurfaceOfACubeIsItsShell) {
  const Size size{5, 5, 5};
  const auto cube = box(size, {1, 1, 1}, {3, 3, 3});
  const auto s = surface(cube, size);
  int n = 0;
  for (uint8_t v : s) n += v;
  EXPECT_EQ(n, 27 - 1);  // all but the centre voxel
}

TEST(SegMetrics, BratsRegionsUnionTheirLabels) {
  const auto st = seg_structures({1, 2, 4}, /*brats_regions=*/true);
  ASSERT_EQ(st.size(), 6u);
  EXPECT_EQ(st[3].name, "WT");
  EXPECT_EQ(st[3].classes, (std::vector<int>{1, 2, 3}));
  EXPECT_EQ(st[4].name, "TC");
  EXPECT_EQ(st[4].classes, (std::vector<int>{1, 3}));
  EXPECT_EQ(st[5].classes, (std::vector<int>{3}));
  // BraTS 2023 numbering (3 = enhancing) and no regions without the convention.
  EXPECT_EQ(seg_structures({1, 2, 3}, true)[5].classes, (std::vector<int>{3}));
  EXPECT_EQ(seg_structures({1, 5}, true).size(), 2u);

  // Classes (0 bg, 1 necrosis, 2 oedema, 3 enhancing): prediction calls the necrosis voxel
  // enhancing. Per label: label 1 Dice 0 (pred empty), label 2 perfect, label 4 2*1/(1+2).
  // WT perfect; TC perfect (necrosis and enhancing both in the core); ET 2/3.
  const Size size{4, 1, 1};
  const std::vector<uint8_t> truth = {0, 1, 2, 3}, pred = {0, 3, 2, 3};
  const auto m = seg_case_metrics(pred, truth, size, {1, 1, 1}, st);
  EXPECT_DOUBLE_EQ(m.dice[0], 0.0);
  EXPECT_DOUBLE_EQ(m.dice[1], 1.0);
  EXPECT_NEAR(m.dice[2], 2.0 / 3.0, 1e-12);
  EXPECT_DOUBLE_EQ(m.dice[3], 1.0);
  EXPECT_DOUBLE_EQ(m.dice[4], 1.0);
  EXPECT_NEAR(m.dice[5], 2.0 / 3.0, 1e-12);
  EXPECT_TRUE(std::isnan(m.hd95[0]));
  EXPECT_DOUBLE_EQ(m.hd95[3], 0.0);
  EXPECT_NEAR(m.hd95[5], 1.9, 1e-12);  // distances {0, 2} from the prediction: P95 = 1.9
}

TEST(SegMetrics, SumsPoolAcrossSitesAsMeansOverCases) {
  SegScoreSums a, b;
  a.add({{1.0, 0.5}, {2.0, NAN}});
  a.add({{0.0, 0.5}, {4.0, 1.0}});
  b.add({{0.5, 1.0}, {NAN, 3.0}});
  ASSERT_TRUE(a.merge(b));
  EXPECT_EQ(a.cases, 3u);
  EXPECT_NEAR(a.mean_dice()[0], 0.5, 1e-12);
  EXPECT_NEAR(a.mean_dice()[1], 2.0 / 3.0, 1e-12);
  EXPECT_NEAR(a.mean_hd95()[0], 3.0, 1e-12);  // over the 2 cases where it is defined
  EXPECT_NEAR(a.mean_hd95()[1], 2.0, 1e-12);
  EXPECT_NEAR(a.mean_dice_all(), (0.5 + 2.0 / 3.0) / 2, 1e-12);
  SegScoreSums other;
  other.add({{1.0}, {1.0}});
  EXPECT_FALSE(a.merge(other));  // another structure count is refused
  EXPECT_EQ(a.cases, 3u);
}

}  // namespace
}  // namespace fedrad
