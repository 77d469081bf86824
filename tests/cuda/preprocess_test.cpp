#include "cuda/preprocess.h"

#include <gtest/gtest.h>

#include <cmath>
#include <random>
#include <type_traits>
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

// ---- stored pixels -> float (hand-computed; the rules of imaging::read_dicom) ----

template <typename T>
std::vector<float> convert(const std::vector<T>& raw, const PixelParams& p) {
  std::vector<float> out(raw.size());
  pixels_to_float_cpu<T>(1, static_cast<int64_t>(raw.size()), raw.data(), &p, out.data());
  return out;
}

TEST(PixelsToFloat, Uint16RescaleSlopeIntercept) {
  PixelParams p;
  p.slope = 2.0f;
  p.intercept = -1024.0f;
  EXPECT_EQ(convert<uint16_t>({0, 1000, 4095, 65535}, p), (std::vector<float>{-1024, 976, 7166, 130046}));
}

TEST(PixelsToFloat, Monochrome1InvertsStoredValueBeforeRescale) {
  PixelParams p;
  p.invert = true;
  p.bits = 12;  // 2^12 - 1 = 4095 - v
  EXPECT_EQ(convert<uint16_t>({0, 1000, 4095}, p), (std::vector<float>{4095, 3095, 0}));
  p.slope = 2.0f;
  p.intercept = 10.0f;
  EXPECT_EQ(convert<uint16_t>({1000}, p), (std::vector<float>{(4095 - 1000) * 2 + 10}));
  PixelParams p8;
  p8.invert = true;
  p8.bits = 8;
  EXPECT_EQ(convert<uint8_t>({0, 55, 255}, p8), (std::vector<float>{255, 200, 0}));
}

TEST(PixelsToFloat, SignedMonochrome1InvertsAroundMinusOne) {
  PixelParams p;
  p.invert = true;
  p.is_signed = true;
  EXPECT_EQ(convert<int16_t>({-1000, 0, 500, -32768}, p), (std::vector<float>{999, -1, -501, 32767}));
}

TEST(PixelsToFloat, LinearWindowFollowsDicom) {
  // CT: modality = v - 1024; window centre 40, width 400: 0 at or below -160, 1 above 239,
  // (x - 39.5) / 399 + 0.5 between.
  PixelParams p;
  p.intercept = -1024.0f;
  p.window_center = 40.0f;
  p.window_width = 400.0f;
  const auto v = convert<uint16_t>({0, 1024 - 160, 1024 - 159, 1024 + 40, 1024 + 239, 1024 + 240, 4095}, p);
  EXPECT_EQ(v[0], 0.0f);
  EXPECT_EQ(v[1], 0.0f);
  EXPECT_NEAR(v[2], (-159 - 39.5) / 399 + 0.5, 1e-6);
  EXPECT_NEAR(v[3], (40 - 39.5) / 399 + 0.5, 1e-6);
  EXPECT_NEAR(v[4], 1.0, 1e-6);
  EXPECT_EQ(v[5], 1.0f);
  EXPECT_EQ(v[6], 1.0f);
  // MONOCHROME1 with a window: 1 - the windowed value (no inversion of the stored value).
  p.invert = true;
  const auto w = convert<uint16_t>({0, 1024 + 40, 4095}, p);
  EXPECT_EQ(w[0], 1.0f);
  EXPECT_NEAR(w[1], 0.5 - 0.5 / 399, 1e-6);
  EXPECT_EQ(w[2], 0.0f);
}

TEST(PixelsToFloat, UnitWidthWindowIsAStep) {
  PixelParams p;
  p.window_center = 100.0f;
  p.window_width = 1.0f;  // 0 at or below 99.5, 1 above
  EXPECT_EQ(convert<float>({99.0f, 99.5f, 99.75f, 200.0f}, p), (std::vector<float>{0, 0, 1, 1}));
}

TEST(PixelsToFloat, EachImageHasItsOwnParams) {
  std::vector<int16_t> raw = {1, 2, 1, 2};
  PixelParams params[2];
  params[1].slope = 10.0f;
  std::vector<float> out(4);
  pixels_to_float_cpu<int16_t>(2, 2, raw.data(), params, out.data());
  EXPECT_EQ(out, (std::vector<float>{1, 2, 10, 20}));
}

// ---- the fused conversion + resize equals conversion then resize (bit for bit) ----

template <typename T>
std::vector<T> random_pixels(size_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::vector<T> v(n);
  if constexpr (std::is_floating_point_v<T>) {
    std::uniform_real_distribution<float> u(-100.0f, 3000.0f);
    for (auto& x : v) x = u(rng);
  } else {
    std::uniform_int_distribution<int64_t> u(std::is_signed_v<T> ? -2048 : 0, std::is_same_v<T, uint8_t> ? 255 : 4095);
    for (auto& x : v) x = static_cast<T>(u(rng));
  }
  return v;
}

std::vector<PixelParams> varied_params(int n) {
  std::vector<PixelParams> params(static_cast<size_t>(n));
  for (int i = 0; i < n; ++i) {
    params[i].slope = 0.5f + 0.25f * i;
    params[i].intercept = -1024.0f + 100.0f * i;
    params[i].invert = i % 2 == 1;
    params[i].bits = 12;
    if (i % 3 == 2) params[i].window_center = 300.0f, params[i].window_width = 1500.0f;
  }
  return params;
}

template <typename T>
void expect_fused_equals_chain(const ResizeParams& rp) {
  const int n = 5;
  const auto raw = random_pixels<T>(static_cast<size_t>(n) * rp.in_h * rp.in_w, 7);
  const auto params = varied_params(n);
  std::vector<float> converted(raw.size()), chain(static_cast<size_t>(n) * rp.out_h * rp.out_w), fused(chain.size());
  pixels_to_float_cpu<T>(n, static_cast<int64_t>(rp.in_h) * rp.in_w, raw.data(), params.data(), converted.data());
  resize_bilinear_cpu(n, converted.data(), chain.data(), rp);
  pixels_resize_cpu<T>(n, raw.data(), params.data(), fused.data(), rp);
  EXPECT_EQ(fused, chain);
  // And preprocess = fused, then normalise.
  for (NormaliseMode mode : {NormaliseMode::kMinMax, NormaliseMode::kZScore}) {
    std::vector<float> full(chain.size()), expected = chain;
    normalise_cpu(n, expected.data(), expected.data(), {static_cast<int64_t>(rp.out_h) * rp.out_w, mode});
    preprocess_cpu<T>(n, raw.data(), params.data(), full.data(), rp, mode);
    EXPECT_EQ(full, expected);
  }
}

TEST(PixelsResize, FusedEqualsConvertThenResizeForEveryType) {
  for (const ResizeParams& rp : {ResizeParams{37, 53, 24, 19}, ResizeParams{13, 9, 31, 20}, ResizeParams{8, 8, 8, 8}}) {
    expect_fused_equals_chain<uint8_t>(rp);
    expect_fused_equals_chain<int16_t>(rp);
    expect_fused_equals_chain<uint16_t>(rp);
    expect_fused_equals_chain<int32_t>(rp);
    expect_fused_equals_chain<float>(rp);
  }
}

// ---- trilinear (hand-computed; against torch in tests/cuda_torch) ----

TEST(ResizeTrilinear, IdentityWhenSizesMatch) {
  std::vector<float> in(2 * 3 * 4);
  for (size_t i = 0; i < in.size(); ++i) in[i] = static_cast<float>(i);
  std::vector<float> out(in.size());
  resize_trilinear_cpu(1, in.data(), out.data(), {2, 3, 4, 2, 3, 4});
  EXPECT_EQ(out, in);
}

TEST(ResizeTrilinear, EachAxisUsesHalfPixelCentres) {
  std::vector<float> in = {0, 4};
  std::vector<float> out(4);
  for (const Resize3dParams& p : {Resize3dParams{2, 1, 1, 4, 1, 1}, Resize3dParams{1, 2, 1, 1, 4, 1},
                                  Resize3dParams{1, 1, 2, 1, 1, 4}}) {
    resize_trilinear_cpu(1, in.data(), out.data(), p);
    EXPECT_EQ(out, (std::vector<float>{0, 1, 3, 4}));
  }
}

TEST(ResizeTrilinear, EqualSlicesGiveTheBilinearResize) {
  const ResizeParams rp{5, 7, 3, 11};
  std::vector<float> slice(5 * 7);
  for (size_t i = 0; i < slice.size(); ++i) slice[i] = std::sin(0.3f * static_cast<float>(i));
  std::vector<float> vol;
  for (int z = 0; z < 4; ++z) vol.insert(vol.end(), slice.begin(), slice.end());
  std::vector<float> out(6 * 3 * 11), flat(3 * 11);
  resize_trilinear_cpu(1, vol.data(), out.data(), {4, 5, 7, 6, 3, 11});
  resize_bilinear_cpu(1, slice.data(), flat.data(), rp);
  for (size_t i = 0; i < out.size(); ++i) EXPECT_NEAR(out[i], flat[i % flat.size()], 1e-6);
}

// ---- augment: affine + jitter (against torch's affine_grid + grid_sample in tests/cuda_torch) ----

std::vector<float> ramp_image(int c, int h, int w) {
  std::vector<float> v(static_cast<size_t>(c) * h * w);
  for (size_t i = 0; i < v.size(); ++i) v[i] = std::cos(0.37f * static_cast<float>(i)) + 0.01f * static_cast<float>(i);
  return v;
}

TEST(Augment, IdentityThetaWithJitterIsAffineInIntensity) {
  const ImageShape s{2, 6, 9};
  const auto in = ramp_image(s.channels, s.height, s.width);
  std::vector<float> out(in.size());
  AugmentParams a;
  a.contrast = 1.1f;
  a.brightness = -0.05f;
  augment_cpu(1, in.data(), &a, out.data(), s);
  for (size_t i = 0; i < in.size(); ++i) EXPECT_NEAR(out[i], in[i] * 1.1f - 0.05f, 1e-5) << i;
}

TEST(Augment, NegatedFirstColumnMirrorsHorizontally) {
  const ImageShape s{1, 5, 8};
  const auto in = ramp_image(1, s.height, s.width);
  std::vector<float> out(in.size());
  AugmentParams a;
  a.theta[0] = -1.0f;
  augment_cpu(1, in.data(), &a, out.data(), s);
  for (int y = 0; y < s.height; ++y)
    for (int x = 0; x < s.width; ++x) EXPECT_NEAR(out[y * s.width + x], in[y * s.width + s.width - 1 - x], 1e-5);
}

TEST(Augment, ShiftByOnePixelRepeatsTheBorder) {
  // tx = 2 / w moves the sampling point one pixel right: out[x] = in[x + 1], the last column
  // repeated (padding_mode=border).
  const ImageShape s{1, 3, 8};
  const auto in = ramp_image(1, s.height, s.width);
  std::vector<float> out(in.size());
  AugmentParams a;
  a.theta[2] = 2.0f / s.width;
  augment_cpu(1, in.data(), &a, out.data(), s);
  for (int y = 0; y < s.height; ++y)
    for (int x = 0; x < s.width; ++x)
      EXPECT_NEAR(out[y * s.width + x], in[y * s.width + std::min(x + 1, s.width - 1)], 1e-5);
}

TEST(Augment, ChannelsShareTheImageParamsAndImagesDoNot) {
  const ImageShape s{3, 4, 4};
  std::vector<float> in(2 * 3 * 16, 1.0f), out(in.size());
  AugmentParams a[2];
  a[0].brightness = 0.5f;
  a[1].contrast = 2.0f;
  augment_cpu(2, in.data(), a, out.data(), s);
  for (int i = 0; i < 48; ++i) EXPECT_NEAR(out[i], 1.5f, 1e-6);
  for (int i = 48; i < 96; ++i) EXPECT_NEAR(out[i], 2.0f, 1e-6);
}

// ---- 3D flips ----

TEST(Flip3d, ReversesTheChosenAxesPerVolume) {
  const VolumeShape s{2, 2, 3, 4};  // 2 channels of 2x3x4
  const int vol = 2 * 3 * 4;
  std::vector<float> in(static_cast<size_t>(3) * 2 * vol);
  for (size_t i = 0; i < in.size(); ++i) in[i] = static_cast<float>(i);
  const std::vector<uint8_t> axes = {0, kFlipWidth, kFlipDepth | kFlipHeight | kFlipWidth};
  std::vector<float> out(in.size());
  flip3d_cpu(3, in.data(), axes.data(), out.data(), s);
  auto at = [&](const std::vector<float>& v, int n, int c, int z, int y, int x) {
    return v[static_cast<size_t>(((n * 2 + c) * 2 + z) * 12 + y * 4 + x)];
  };
  for (int c = 0; c < 2; ++c)
    for (int z = 0; z < 2; ++z)
      for (int y = 0; y < 3; ++y)
        for (int x = 0; x < 4; ++x) {
          EXPECT_EQ(at(out, 0, c, z, y, x), at(in, 0, c, z, y, x));
          EXPECT_EQ(at(out, 1, c, z, y, x), at(in, 1, c, z, y, 3 - x));
          EXPECT_EQ(at(out, 2, c, z, y, x), at(in, 2, c, 1 - z, 2 - y, 3 - x));
        }
}


}  // namespace
}  // namespace fedrad::cuda
