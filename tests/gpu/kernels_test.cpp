// GPU tests: each kernel against its CPU reference on fresh random inputs (the seed is recorded
// with RecordProperty, and so is the relative error: max |gpu - cpu| / max |cpu|). They carry the
// CTest label `gpu` and skip, with the reason, where there is no device (CI, these machines).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <random>
#include <string>
#include <type_traits>
#include <vector>

#include "cuda/preprocess.h"
#if defined(FEDRAD_HAVE_CUDA)
#include <cuda_runtime.h>
#endif

namespace fedrad::cuda {
namespace {

#if !defined(FEDRAD_HAVE_CUDA)
// The same names as below, skipping: this build has no kernels.
#define FEDRAD_SKIPPED_GPU_TEST(name) \
  TEST(CudaKernels, name) { GTEST_SKIP() << device_description(0); }
FEDRAD_SKIPPED_GPU_TEST(MatchCpuReferences)
FEDRAD_SKIPPED_GPU_TEST(PixelsToFloatEveryType)
FEDRAD_SKIPPED_GPU_TEST(PixelsResizeFusedEveryType)
FEDRAD_SKIPPED_GPU_TEST(PreprocessBothNormalisations)
FEDRAD_SKIPPED_GPU_TEST(ResizeBilinearUpAndDown)
FEDRAD_SKIPPED_GPU_TEST(NormaliseZScore)
FEDRAD_SKIPPED_GPU_TEST(ResizeTrilinear)
FEDRAD_SKIPPED_GPU_TEST(Augment)
FEDRAD_SKIPPED_GPU_TEST(Flip3d)
FEDRAD_SKIPPED_GPU_TEST(RejectsBadSizes)
#undef FEDRAD_SKIPPED_GPU_TEST
#else

// A device copy of a host vector (or n uninitialised elements), freed on scope exit.
template <typename T>
class DeviceBuffer {
 public:
  explicit DeviceBuffer(size_t n) : n_(n) { ok_ = cudaMalloc(&p_, std::max<size_t>(n, 1) * sizeof(T)) == cudaSuccess; }
  explicit DeviceBuffer(const std::vector<T>& host) : DeviceBuffer(host.size()) {
    if (ok_) ok_ = cudaMemcpy(p_, host.data(), n_ * sizeof(T), cudaMemcpyHostToDevice) == cudaSuccess;
  }
  ~DeviceBuffer() { cudaFree(p_); }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  bool ok() const { return ok_; }
  T* get() const { return p_; }
  std::vector<T> download() const {
    std::vector<T> host(n_);
    cudaDeviceSynchronize();
    cudaMemcpy(host.data(), p_, n_ * sizeof(T), cudaMemcpyDeviceToHost);
    return host;
  }

 private:
  T* p_ = nullptr;
  size_t n_ = 0;
  bool ok_ = false;
};

class CudaKernels : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!device_available()) GTEST_SKIP() << "no CUDA device: " << device_description(0);
    seed_ = std::random_device{}();  // fresh inputs each run; the seed is recorded
    RecordProperty("seed", std::to_string(seed_));
    RecordProperty("device", device_description(0));
    rng_.seed(seed_);
  }

  std::vector<float> uniform(size_t n, float lo, float hi) {
    std::uniform_real_distribution<float> u(lo, hi);
    std::vector<float> v(n);
    for (auto& x : v) x = u(rng_);
    return v;
  }

  template <typename T>
  std::vector<T> pixels(size_t n) {
    std::vector<T> v(n);
    if constexpr (std::is_floating_point_v<T>) {
      std::uniform_real_distribution<float> u(-1000.0f, 4000.0f);
      for (auto& x : v) x = u(rng_);
    } else {
      const int64_t lo = std::is_signed_v<T> ? -2048 : 0, hi = std::is_same_v<T, uint8_t> ? 255 : 4095;
      std::uniform_int_distribution<int64_t> u(lo, hi);
      for (auto& x : v) x = static_cast<T>(u(rng_));
    }
    return v;
  }

  std::vector<PixelParams> pixel_params(int n) {
    std::uniform_real_distribution<float> slope(0.5f, 2.0f), intercept(-1024.0f, 100.0f), centre(0.0f, 2000.0f),
        width(1.0f, 3000.0f);
    std::vector<PixelParams> params(static_cast<size_t>(n));
    for (auto& p : params) {
      p.slope = slope(rng_);
      p.intercept = intercept(rng_);
      p.invert = rng_() % 2;
      p.bits = 12;
      p.is_signed = rng_() % 4 == 0;
      if (rng_() % 2) p.window_center = centre(rng_), p.window_width = width(rng_);
    }
    return params;
  }

  // Records the relative error under `what` and expects it below `tolerance`.
  void expect_close(const std::vector<float>& got, const std::vector<float>& ref, double tolerance,
                    const std::string& what = "relative_error") {
    ASSERT_EQ(got.size(), ref.size());
    double max_err = 0, max_ref = 0;
    for (size_t i = 0; i < got.size(); ++i) {
      max_err = std::max(max_err, std::abs(static_cast<double>(got[i]) - ref[i]));
      max_ref = std::max(max_ref, std::abs(static_cast<double>(ref[i])));
    }
    const double rel = max_err / std::max(max_ref, 1e-30);
    RecordProperty(what, std::to_string(rel));
    EXPECT_LT(rel, tolerance) << what << " (max abs error " << max_err << ", seed " << seed_ << ")";
  }

  unsigned seed_ = 0;
  std::mt19937 rng_;
};

TEST_F(CudaKernels, MatchCpuReferences) {
  const int n = 16, ih = 64, iw = 48, oh = 28, ow = 28;
  const auto in = uniform(static_cast<size_t>(n) * ih * iw, 0, 4095);
  std::vector<float> ref(static_cast<size_t>(n) * oh * ow);
  resize_bilinear_cpu(n, in.data(), ref.data(), {ih, iw, oh, ow});
  normalise_cpu(n, ref.data(), ref.data(), {oh * ow, NormaliseMode::kMinMax});
  DeviceBuffer<float> d_in(in), d_out(ref.size());
  ASSERT_TRUE(d_in.ok() && d_out.ok());
  ASSERT_TRUE(launch_resize_bilinear(nullptr, n, d_in.get(), d_out.get(), {ih, iw, oh, ow}).ok());
  ASSERT_TRUE(launch_normalise(nullptr, n, d_out.get(), d_out.get(), {oh * ow, NormaliseMode::kMinMax}).ok());
  expect_close(d_out.download(), ref, 1e-6);
}

template <typename T>
void pixels_to_float_case(std::vector<T> raw, const std::vector<PixelParams>& params, int64_t ppi,
                          std::vector<float>* got, std::vector<float>* ref) {
  const int64_t n = static_cast<int64_t>(params.size());
  ref->assign(raw.size(), 0.0f);
  pixels_to_float_cpu<T>(n, ppi, raw.data(), params.data(), ref->data());
  DeviceBuffer<T> d_in(raw);
  DeviceBuffer<PixelParams> d_params(params);
  DeviceBuffer<float> d_out(raw.size());
  ASSERT_TRUE(d_in.ok() && d_params.ok() && d_out.ok());
  ASSERT_TRUE(launch_pixels_to_float<T>(nullptr, n, ppi, d_in.get(), d_params.get(), d_out.get()).ok());
  *got = d_out.download();
}

TEST_F(CudaKernels, PixelsToFloatEveryType) {
  const int n = 12;
  const int64_t ppi = 37 * 41;
  const auto params = pixel_params(n);
  std::vector<float> got, ref;
  pixels_to_float_case<uint8_t>(pixels<uint8_t>(n * ppi), params, ppi, &got, &ref);
  expect_close(got, ref, 1e-6, "relative_error_uint8");
  pixels_to_float_case<int16_t>(pixels<int16_t>(n * ppi), params, ppi, &got, &ref);
  expect_close(got, ref, 1e-6, "relative_error_int16");
  pixels_to_float_case<uint16_t>(pixels<uint16_t>(n * ppi), params, ppi, &got, &ref);
  expect_close(got, ref, 1e-6, "relative_error_uint16");
  pixels_to_float_case<int32_t>(pixels<int32_t>(n * ppi), params, ppi, &got, &ref);
  expect_close(got, ref, 1e-6, "relative_error_int32");
  pixels_to_float_case<float>(pixels<float>(n * ppi), params, ppi, &got, &ref);
  expect_close(got, ref, 1e-6, "relative_error_float");
}

template <typename T>
void pixels_resize_case(std::vector<T> raw, const std::vector<PixelParams>& params, const ResizeParams& rp, bool normalise,
                        NormaliseMode mode, std::vector<float>* got, std::vector<float>* ref) {
  const int64_t n = static_cast<int64_t>(params.size());
  ref->assign(static_cast<size_t>(n) * rp.out_h * rp.out_w, 0.0f);
  if (normalise) preprocess_cpu<T>(n, raw.data(), params.data(), ref->data(), rp, mode);
  else pixels_resize_cpu<T>(n, raw.data(), params.data(), ref->data(), rp);
  DeviceBuffer<T> d_in(raw);
  DeviceBuffer<PixelParams> d_params(params);
  DeviceBuffer<float> d_out(ref->size());
  ASSERT_TRUE(d_in.ok() && d_params.ok() && d_out.ok());
  const Status s = normalise ? launch_preprocess<T>(nullptr, n, d_in.get(), d_params.get(), d_out.get(), rp, mode)
                             : launch_pixels_resize<T>(nullptr, n, d_in.get(), d_params.get(), d_out.get(), rp);
  ASSERT_TRUE(s.ok()) << s.to_string();
  *got = d_out.download();
}

TEST_F(CudaKernels, PixelsResizeFusedEveryType) {
  const int n = 9;
  const ResizeParams rp{131, 97, 56, 72};  // odd sizes, a different ratio per axis
  const int64_t px = static_cast<int64_t>(n) * rp.in_h * rp.in_w;
  const auto params = pixel_params(n);
  std::vector<float> got, ref;
  pixels_resize_case<uint8_t>(pixels<uint8_t>(px), params, rp, false, NormaliseMode::kMinMax, &got, &ref);
  expect_close(got, ref, 1e-6, "relative_error_uint8");
  pixels_resize_case<int16_t>(pixels<int16_t>(px), params, rp, false, NormaliseMode::kMinMax, &got, &ref);
  expect_close(got, ref, 1e-6, "relative_error_int16");
  pixels_resize_case<uint16_t>(pixels<uint16_t>(px), params, rp, false, NormaliseMode::kMinMax, &got, &ref);
  expect_close(got, ref, 1e-6, "relative_error_uint16");
  pixels_resize_case<int32_t>(pixels<int32_t>(px), params, rp, false, NormaliseMode::kMinMax, &got, &ref);
  expect_close(got, ref, 1e-6, "relative_error_int32");
  pixels_resize_case<float>(pixels<float>(px), params, rp, false, NormaliseMode::kMinMax, &got, &ref);
  expect_close(got, ref, 1e-6, "relative_error_float");
}

TEST_F(CudaKernels, PreprocessBothNormalisations) {
  const int n = 20;
  const ResizeParams rp{512, 384, 224, 224};
  const auto raw = pixels<uint16_t>(static_cast<size_t>(n) * rp.in_h * rp.in_w);
  auto params = pixel_params(n);
  for (auto& p : params) p.window_width = 0;  // a window can flatten an image; keep the range
  std::vector<float> got, ref;
  pixels_resize_case<uint16_t>(raw, params, rp, true, NormaliseMode::kMinMax, &got, &ref);
  expect_close(got, ref, 1e-5, "relative_error_minmax");
  pixels_resize_case<uint16_t>(raw, params, rp, true, NormaliseMode::kZScore, &got, &ref);
  expect_close(got, ref, 1e-5, "relative_error_zscore");
}

TEST_F(CudaKernels, ResizeBilinearUpAndDown) {
  for (const ResizeParams& rp : {ResizeParams{64, 48, 150, 33}, ResizeParams{7, 300, 7, 299}}) {
    const int n = 5;
    const auto in = uniform(static_cast<size_t>(n) * rp.in_h * rp.in_w, -3, 3);
    std::vector<float> ref(static_cast<size_t>(n) * rp.out_h * rp.out_w);
    resize_bilinear_cpu(n, in.data(), ref.data(), rp);
    DeviceBuffer<float> d_in(in), d_out(ref.size());
    ASSERT_TRUE(d_in.ok() && d_out.ok());
    ASSERT_TRUE(launch_resize_bilinear(nullptr, n, d_in.get(), d_out.get(), rp).ok());
    expect_close(d_out.download(), ref, 1e-6, "relative_error_" + std::to_string(rp.out_h));
  }
}

TEST_F(CudaKernels, NormaliseZScore) {
  const int n = 7, m = 3001;
  const auto in = uniform(static_cast<size_t>(n) * m, 100, 900);
  std::vector<float> ref(in.size());
  normalise_cpu(n, in.data(), ref.data(), {m, NormaliseMode::kZScore});
  DeviceBuffer<float> d_in(in), d_out(in.size());
  ASSERT_TRUE(d_in.ok() && d_out.ok());
  ASSERT_TRUE(launch_normalise(nullptr, n, d_in.get(), d_out.get(), {m, NormaliseMode::kZScore}).ok());
  expect_close(d_out.download(), ref, 1e-5);
}

TEST_F(CudaKernels, ResizeTrilinear) {
  const int n = 3;
  for (const Resize3dParams& p : {Resize3dParams{40, 48, 36, 24, 32, 32}, Resize3dParams{9, 7, 11, 20, 15, 30}}) {
    const auto in = uniform(static_cast<size_t>(n) * p.in_d * p.in_h * p.in_w, -1, 1);
    std::vector<float> ref(static_cast<size_t>(n) * p.out_d * p.out_h * p.out_w);
    resize_trilinear_cpu(n, in.data(), ref.data(), p);
    DeviceBuffer<float> d_in(in), d_out(ref.size());
    ASSERT_TRUE(d_in.ok() && d_out.ok());
    ASSERT_TRUE(launch_resize_trilinear(nullptr, n, d_in.get(), d_out.get(), p).ok());
    expect_close(d_out.download(), ref, 1e-6, "relative_error_" + std::to_string(p.out_d));
  }
}

TEST_F(CudaKernels, Augment) {
  const int n = 10;
  const ImageShape s{3, 67, 45};
  const auto in = uniform(static_cast<size_t>(n) * s.channels * s.height * s.width, -1, 1);
  std::uniform_real_distribution<float> angle(-0.5f, 0.5f), scale(0.8f, 1.2f), shift(-0.2f, 0.2f), jit(-0.1f, 0.1f);
  std::vector<AugmentParams> params(n);
  for (auto& a : params) {
    const float r = angle(rng_), k = scale(rng_), flip = rng_() % 2 ? -1.0f : 1.0f;
    const float c = std::cos(r) / k, sn = std::sin(r) / k;
    const float t[6] = {c * flip, -sn, shift(rng_), sn * flip, c, shift(rng_)};
    std::copy(t, t + 6, a.theta);
    a.contrast = 1.0f + jit(rng_);
    a.brightness = jit(rng_);
  }
  std::vector<float> ref(in.size());
  augment_cpu(n, in.data(), params.data(), ref.data(), s);
  DeviceBuffer<float> d_in(in), d_out(in.size());
  DeviceBuffer<AugmentParams> d_params(params);
  ASSERT_TRUE(d_in.ok() && d_out.ok() && d_params.ok());
  ASSERT_TRUE(launch_augment(nullptr, n, d_in.get(), d_params.get(), d_out.get(), s).ok());
  expect_close(d_out.download(), ref, 1e-6);
}

TEST_F(CudaKernels, Flip3d) {
  const int n = 8;
  const VolumeShape s{2, 13, 17, 19};
  const auto in = uniform(static_cast<size_t>(n) * s.channels * s.depth * s.height * s.width, -1, 1);
  std::vector<uint8_t> axes(n);
  for (int i = 0; i < n; ++i) axes[i] = static_cast<uint8_t>(i);  // every combination of the 3 axes
  std::vector<float> ref(in.size());
  flip3d_cpu(n, in.data(), axes.data(), ref.data(), s);
  DeviceBuffer<float> d_in(in), d_out(in.size());
  DeviceBuffer<uint8_t> d_axes(axes);
  ASSERT_TRUE(d_in.ok() && d_out.ok() && d_axes.ok());
  ASSERT_TRUE(launch_flip3d(nullptr, n, d_in.get(), d_axes.get(), d_out.get(), s).ok());
  const auto got = d_out.download();
  EXPECT_EQ(got, ref);  // a permutation: exact
  expect_close(got, ref, 1e-12);
}

TEST_F(CudaKernels, RejectsBadSizes) {
  EXPECT_EQ(launch_resize_bilinear(nullptr, 1, nullptr, nullptr, {0, 4, 2, 2}).code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(launch_resize_trilinear(nullptr, 1, nullptr, nullptr, {1, 1, 1, 0, 1, 1}).code(),
            StatusCode::kInvalidArgument);
  EXPECT_EQ(launch_augment(nullptr, 1, nullptr, nullptr, nullptr, {1, 0, 3}).code(), StatusCode::kInvalidArgument);
  EXPECT_TRUE(launch_flip3d(nullptr, 0, nullptr, nullptr, nullptr, {1, 2, 2, 2}).ok());  // nothing to do
}
#endif

}  // namespace
}  // namespace fedrad::cuda
