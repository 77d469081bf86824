#include "cuda/preprocess.h"

#include <gtest/gtest.h>

#include <cmath>
#include <random>
#include <vector>

namespace fedrad::cuda {
namespace {

TEST(ResizeBilinear, IdentityWhenSizesMatch) {
  std::vector<float> in = {1, 2, 3, 4, 5, 6};
  std::vector<float> out(6);
  resize_bilinear_cpu(1, in.data(), out.data(), {2, 3, 2, 3});
  EXPECT_EQ(out, in);
}

TEST(ResizeBilinear, UpsampleMatchesHalfPixelCentres) {
  // 1x2 -> 1x4: source x = (dst + 0.5) * 0.5 - 0.5 = -0.25 (clamped 0), 0.25, 0.75, 1.25 (clamped).
  std::vector<float> in = {0, 4};
  std::vector<float> out(4);
  resize_bilinear_cpu(1, in.data(), out.data(), {1, 2, 1, 4});
  EXPECT_FLOAT_EQ(out[0], 0.0f);
  EXPECT_FLOAT_EQ(out[1], 1.0f);
  EXPECT_FLOAT_EQ(out[2], 3.0f);
  EXPECT_FLOAT_EQ(out[3], 4.0f);
}

TEST(ResizeBilinear, DownsampleByTwoAveragesPairs) {
  // 4 -> 2 in x: source x = 0.5 and 2.5, the means of neighbouring pairs.
  std::vector<float> in = {0, 2, 4, 6};
  std::vector<float> out(2);
  resize_bilinear_cpu(1, in.data(), out.data(), {1, 4, 1, 2});
  EXPECT_FLOAT_EQ(out[0], 1.0f);
  EXPECT_FLOAT_EQ(out[1], 5.0f);
}

TEST(ResizeBilinear, BatchedImagesAreIndependent) {
  std::vector<float> in = {1, 1, 1, 1, 7, 7, 7, 7};  // two flat 2x2 images
  std::vector<float> out(2 * 9);
  resize_bilinear_cpu(2, in.data(), out.data(), {2, 2, 3, 3});
  for (int i = 0; i < 9; ++i) EXPECT_FLOAT_EQ(out[i], 1.0f);
  for (int i = 9; i < 18; ++i) EXPECT_FLOAT_EQ(out[i], 7.0f);
}

TEST(Normalise, MinMaxMapsToMinusOneOne) {
  std::vector<float> v = {10, 20, 30, 50};
  normalise_cpu(1, v.data(), v.data(), {4, NormaliseMode::kMinMax});
  EXPECT_FLOAT_EQ(v[0], -1.0f);
  EXPECT_FLOAT_EQ(v[1], -0.5f);
  EXPECT_FLOAT_EQ(v[2], 0.0f);
  EXPECT_FLOAT_EQ(v[3], 1.0f);
}

TEST(Normalise, ZScoreHasZeroMeanUnitStd) {
  std::vector<float> v = {1, 2, 3, 4, 5, 6, 7, 8};
  normalise_cpu(1, v.data(), v.data(), {8, NormaliseMode::kZScore});
  double mean = 0, sq = 0;
  for (float x : v) mean += x, sq += x * x;
  EXPECT_NEAR(mean / 8, 0.0, 1e-6);
  EXPECT_NEAR(sq / 8, 1.0, 1e-5);
}

TEST(Normalise, FlatImageBecomesZeroNotNaN) {
  std::vector<float> v(16, 3.0f);
  normalise_cpu(1, v.data(), v.data(), {16, NormaliseMode::kMinMax});
  for (float x : v) EXPECT_EQ(x, 0.0f);
}


}  // namespace
}  // namespace fedrad::cuda
