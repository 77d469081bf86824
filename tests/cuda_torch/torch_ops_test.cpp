// The CPU references of the preprocessing kernels against independent definitions in torch
// (interpolate, affine_grid + grid_sample, flip), and the torch adapter (cuda/torch_ops.h)
// against the training path it replaces (training::augment).
#include <gtest/gtest.h>

#include <torch/torch.h>

#include <cmath>
#include <vector>

#include "cuda/preprocess.h"
#include "cuda/torch_ops.h"
#include "training/trainer.h"

namespace fedrad::cuda {
namespace {

namespace F = torch::nn::functional;

double max_abs_diff(const torch::Tensor& a, const torch::Tensor& b) {
  return (a.to(torch::kDouble) - b.to(torch::kDouble)).abs().max().item<double>();
}

torch::Tensor interpolate(const torch::Tensor& x, std::vector<int64_t> size, bool trilinear) {
  auto options = F::InterpolateFuncOptions().size(size).align_corners(false);
  if (trilinear) options.mode(torch::kTrilinear);
  else options.mode(torch::kBilinear);
  return F::interpolate(x, options);
}

TEST(TorchReference, ResizeBilinearMatchesInterpolate) {
  torch::manual_seed(1);
  for (const ResizeParams& p : {ResizeParams{37, 53, 24, 19}, ResizeParams{13, 9, 31, 20}, ResizeParams{64, 64, 28, 28},
                                ResizeParams{512, 512, 224, 224}, ResizeParams{1, 5, 3, 2}}) {
    auto x = torch::rand({3, 1, p.in_h, p.in_w}) * 4095;
    auto out = torch::empty({3, 1, p.out_h, p.out_w});
    resize_bilinear_cpu(3, x.data_ptr<float>(), out.data_ptr<float>(), p);
    // The source coordinate is computed in float, as torch's CUDA kernel does (its CPU kernel
    // uses double): up to ~2 ulps of the coordinate apart, times the steepest step of the noise.
    const double diff = max_abs_diff(out, interpolate(x, {p.out_h, p.out_w}, false));
    const double coordinate_ulp = std::max(p.in_h, p.in_w) * 1.2e-7;
    EXPECT_LT(diff, 4095 * 2 * coordinate_ulp) << p.in_h << "x" << p.in_w << " -> " << p.out_h << "x" << p.out_w;
  }
}

TEST(TorchReference, ResizeTrilinearMatchesInterpolate) {
  torch::manual_seed(2);
  for (const Resize3dParams& p : {Resize3dParams{7, 9, 11, 5, 4, 13}, Resize3dParams{16, 16, 16, 8, 8, 8},
                                  Resize3dParams{3, 20, 6, 9, 7, 6}}) {
    auto x = torch::randn({2, 1, p.in_d, p.in_h, p.in_w});
    auto out = torch::empty({2, 1, p.out_d, p.out_h, p.out_w});
    resize_trilinear_cpu(2, x.data_ptr<float>(), out.data_ptr<float>(), p);
    EXPECT_LT(max_abs_diff(out, interpolate(x, {p.out_d, p.out_h, p.out_w}, true)), 1e-5);
    // The adapter, with and without a channel axis.
    EXPECT_LT(max_abs_diff(resize_volumes(x, p.out_d, p.out_h, p.out_w), out), 1e-6);
    EXPECT_LT(max_abs_diff(resize_volumes(x.squeeze(1), p.out_d, p.out_h, p.out_w), out.squeeze(1)), 1e-6);
  }
}

// grid_sample(affine_grid(theta), bilinear, border, align_corners=false) * contrast + brightness.
torch::Tensor torch_augment(const torch::Tensor& x, const std::vector<AugmentParams>& params) {
  const int64_t n = x.size(0);
  auto theta = torch::empty({n, 2, 3});
  auto contrast = torch::empty({n, 1, 1, 1}), brightness = torch::empty({n, 1, 1, 1});
  for (int64_t i = 0; i < n; ++i) {
    for (int k = 0; k < 6; ++k) theta[i][k / 3][k % 3] = params[i].theta[k];
    contrast[i] = params[i].contrast;
    brightness[i] = params[i].brightness;
  }
  auto grid = F::affine_grid(theta, x.sizes().vec(), /*align_corners=*/false);
  auto out = F::grid_sample(
      x, grid, F::GridSampleFuncOptions().mode(torch::kBilinear).padding_mode(torch::kBorder).align_corners(false));
  return out * contrast + brightness;
}

TEST(TorchReference, AugmentMatchesAffineGridAndGridSample) {
  torch::manual_seed(3);
  // Smooth-ish images (training inputs are resized photographs, not noise) in [-1, 1]; large
  // rotations, scales and shifts so that the border padding is exercised.
  auto x = interpolate(torch::rand({6, 3, 12, 10}) * 2 - 1, {40, 56}, false).contiguous();
  std::vector<AugmentParams> params(6);
  for (int i = 0; i < 6; ++i) {
    const float a = 0.6f * static_cast<float>(i - 3), s = 0.7f + 0.15f * static_cast<float>(i);
    const float flip = i % 2 ? -1.0f : 1.0f;
    const float c = std::cos(a) / s, sn = std::sin(a) / s;
    const float t[6] = {c * flip, -sn, 0.3f * static_cast<float>(i - 2), sn * flip, c, -0.2f * static_cast<float>(i - 2)};
    for (int k = 0; k < 6; ++k) params[i].theta[k] = t[k];
    params[i].contrast = 0.9f + 0.04f * static_cast<float>(i);
    params[i].brightness = -0.1f + 0.04f * static_cast<float>(i);
  }
  auto out = torch::empty_like(x);
  augment_cpu(6, x.data_ptr<float>(), params.data(), out.data_ptr<float>(), {3, 40, 56});
  const double diff = max_abs_diff(out, torch_augment(x, params));
  RecordProperty("max_abs_diff", std::to_string(diff));
  EXPECT_LT(diff, 1e-5);
  EXPECT_LT(max_abs_diff(augment_images(x, params), out), 1e-7);  // the adapter, same kernel
}

TEST(TorchReference, AugmentOnNoiseMatchesWithinFloatRounding) {
  // Pixel noise has the steepest gradients: a rounding difference of the sampling point
  // (~1e-6 pixel) shows most here.
  torch::manual_seed(4);
  auto x = torch::rand({4, 1, 33, 47}) * 2 - 1;
  std::vector<AugmentParams> params(4);
  params[1].theta[0] = -1.0f;
  params[2].theta[0] = 0.95f, params[2].theta[1] = -0.2f, params[2].theta[3] = 0.2f, params[2].theta[4] = 0.95f;
  params[3].theta[2] = 0.07f, params[3].theta[5] = -0.05f, params[3].contrast = 1.07f;
  auto out = torch::empty_like(x);
  augment_cpu(4, x.data_ptr<float>(), params.data(), out.data_ptr<float>(), {1, 33, 47});
  EXPECT_LT(max_abs_diff(out, torch_augment(x, params)), 1e-4);
}

// The adapter draws as training::augment does: the same generator state gives the same output
// and leaves the same state.
TEST(TorchAdapter, AugmentImagesEqualsTrainingAugment) {
  for (bool hflip : {false, true}) {
    torch::manual_seed(5);
    auto x = interpolate(torch::rand({16, 1, 16, 16}) * 2 - 1, {64, 64}, false).contiguous();
    auto g1 = at::detail::createCPUGenerator(1234);
    auto g2 = at::detail::createCPUGenerator(1234);
    auto expected = training::augment(x, hflip, g1);
    auto got = augment_images(x, hflip, g2);
    ASSERT_EQ(got.sizes(), expected.sizes());
    const double diff = max_abs_diff(got, expected);
    RecordProperty(hflip ? "max_abs_diff_hflip" : "max_abs_diff", std::to_string(diff));
    EXPECT_LT(diff, 1e-5) << "hflip " << hflip;
    EXPECT_TRUE(torch::equal(torch::rand({4}, g1), torch::rand({4}, g2)));  // same state after
  }
}

TEST(TorchAdapter, AugmentImagesEqualsTrainingAugmentOnMultiChannelNoise) {
  auto x = torch::rand({8, 3, 32, 24}) * 2 - 1;
  auto g1 = at::detail::createCPUGenerator(99);
  auto g2 = at::detail::createCPUGenerator(99);
  EXPECT_LT(max_abs_diff(augment_images(x, true, g2), training::augment(x, true, g1)), 1e-4);
}

// The independent chain in torch: convert (the PixelParams rules), interpolate, min-max or
// z-score per image.
torch::Tensor torch_preprocess(const torch::Tensor& raw, const std::vector<PixelParams>& params, int s,
                               NormaliseMode mode) {
  std::vector<torch::Tensor> images;
  for (int64_t i = 0; i < raw.size(0); ++i) {
    const PixelParams& p = params[static_cast<size_t>(i)];
    auto x = raw[i].to(torch::kFloat64);
    const bool window = p.window_width > 0;
    if (p.invert && !window) x = (p.is_signed ? -1.0 : std::pow(2.0, p.bits) - 1) - x;
    x = x * p.slope + p.intercept;
    if (window) {
      x = ((x - (p.window_center - 0.5)) / (p.window_width - 1) + 0.5).clamp(0, 1);
      if (p.invert) x = 1 - x;
    }
    images.push_back(x.to(torch::kFloat32));
  }
  auto x = interpolate(torch::stack(images).unsqueeze(1), {s, s}, false).to(torch::kFloat64);
  auto flat = x.view({x.size(0), -1});
  if (mode == NormaliseMode::kMinMax) {
    auto lo = std::get<0>(flat.min(1, true)), hi = std::get<0>(flat.max(1, true));
    flat = ((flat - lo) / (hi - lo) - 0.5) / 0.5;
  } else {
    flat = (flat - flat.mean(1, true)) / flat.std(1, /*unbiased=*/false, true);
  }
  return flat.view_as(x).to(torch::kFloat32);
}

TEST(TorchAdapter, PreprocessImagesMatchesTorchChainForEveryDtype) {
  torch::manual_seed(6);
  for (auto dtype : {torch::kUInt8, torch::kInt16, torch::kInt32, torch::kFloat32}) {
    const float top = dtype == torch::kUInt8 ? 255.0f : 4095.0f;
    const int bits = dtype == torch::kUInt8 ? 8 : 12;
    std::vector<PixelParams> params(4);
    params[0].intercept = -1024, params[0].slope = 1.5f;
    params[1].invert = true, params[1].bits = bits;
    params[2].window_center = 0.3f * top, params[2].window_width = 0.45f * top;
    params[3].invert = true, params[3].bits = bits, params[3].window_center = 0.5f * top, params[3].window_width = 0.25f * top;
    auto smooth = interpolate(torch::rand({4, 1, 9, 7}), {45, 61}, false).squeeze(1);
    auto raw = (smooth * top).to(dtype);
    for (NormaliseMode mode : {NormaliseMode::kMinMax, NormaliseMode::kZScore}) {
      auto got = preprocess_images(raw, params, 28, mode);
      ASSERT_EQ(got.sizes(), (std::vector<int64_t>{4, 1, 28, 28}));
      ASSERT_EQ(got.scalar_type(), torch::kFloat32);
      EXPECT_LT(max_abs_diff(got, torch_preprocess(raw, params, 28, mode)), 1e-4) << dtype;
    }
  }
  // One PixelParams for all images; [N, 1, H, W] input.
  std::vector<PixelParams> params(4);
  params[0].intercept = -1024, params[0].slope = 1.5f;
  auto raw = (torch::rand({3, 1, 20, 20}) * 4095).to(torch::kInt16);
  auto one = preprocess_images(raw, {params[0]}, 16, NormaliseMode::kMinMax);
  EXPECT_LT(max_abs_diff(one, torch_preprocess(raw.squeeze(1), std::vector<PixelParams>(3, params[0]), 16,
                                               NormaliseMode::kMinMax)),
            1e-4);
  EXPECT_THROW(preprocess_images(raw, params, 16, NormaliseMode::kMinMax), c10::Error);  // 4 params, 3 images
  EXPECT_THROW(preprocess_images(raw.to(torch::kInt64), {params[0]}, 16, NormaliseMode::kMinMax), c10::Error);
}

TEST(TorchAdapter, FlipVolumesMatchesTorchFlip) {
  auto x = torch::randn({4, 2, 3, 5, 6});
  const std::vector<uint8_t> axes = {0, kFlipDepth, kFlipHeight | kFlipWidth, kFlipDepth | kFlipHeight | kFlipWidth};
  auto got = flip_volumes(x, axes);
  EXPECT_TRUE(torch::equal(got[0], x[0]));
  EXPECT_TRUE(torch::equal(got[1], x[1].flip({1})));
  EXPECT_TRUE(torch::equal(got[2], x[2].flip({2, 3})));
  EXPECT_TRUE(torch::equal(got[3], x[3].flip({1, 2, 3})));
  EXPECT_TRUE(torch::equal(flip_volumes(x.select(1, 0), axes)[3], x[3][0].flip({0, 1, 2})));
}

}  // namespace
}  // namespace fedrad::cuda
