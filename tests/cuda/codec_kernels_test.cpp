// Codec kernels: the CPU references' semantics, and the CUDA kernels give the same bits (GPU
// tests skip with the reason when there is no device).
#include "cuda/codec.h"

#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <random>
#include <vector>

#include "cuda/preprocess.h"

#if defined(FEDRAD_HAVE_CUDA)
#include <cuda_runtime.h>
#endif

namespace fedrad::cuda {
namespace {

std::vector<float> random_values(int64_t n, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::vector<float> v(static_cast<size_t>(n));
  for (float& x : v) x = normal(rng);
  if (n > 10) v[3] = 0.0f, v[7] = -0.0f;
  return v;
}

TEST(CodecKernelsCpu, QuantizeStaysWithinOneStepAndDequantizesToLevels) {
  for (int bits : {8, 4, 2}) {
    const int64_t n = 1000;
    const std::vector<float> x = random_values(n, bits);
    QuantParams p;
    p.bits = bits;
    p.block = 64;
    p.seed = 3;
    std::vector<uint8_t> codes(n);
    std::vector<float> scales(num_blocks(n, p.block)), y(n);
    quantize_cpu(n, x.data(), codes.data(), scales.data(), p);
    dequantize_cpu(n, codes.data(), scales.data(), y.data(), p);
    const int levels = quant_levels(bits);
    for (int64_t i = 0; i < n; ++i) {
      ASSERT_LE(codes[i], 2 * levels);
      const float s = scales[i / p.block];
      ASSERT_LE(std::fabs(y[i] - x[i]), s / levels * 1.0001f) << bits << " " << i;
    }
    for (size_t b = 0; b < scales.size(); ++b) {
      float m = 0;
      for (int64_t i = b * p.block; i < std::min<int64_t>(n, (b + 1) * p.block); ++i) m = std::max(m, std::fabs(x[i]));
      EXPECT_EQ(scales[b], m);
    }
  }
}

TEST(CodecKernelsCpu, HashUniformIsInUnitIntervalAndSpread) {
  double sum = 0;
  for (uint64_t i = 0; i < 100000; ++i) {
    const float u = hash_uniform(42, i);
    ASSERT_GE(u, 0.0f);
    ASSERT_LT(u, 1.0f);
    sum += u;
  }
  EXPECT_NEAR(sum / 100000, 0.5, 0.01);
}

TEST(CodecKernelsCpu, MaskSampleAndScatter) {
  const std::vector<float> x = {0.5f, -2.0f, 1.0f, -0.25f, 3.0f};
  std::vector<uint8_t> mask(5);
  mask_above_cpu(5, x.data(), mask.data(), ThresholdParams{1.0f});
  EXPECT_EQ(mask, (std::vector<uint8_t>{0, 1, 1, 0, 1}));
  std::vector<float> sample(3);
  sample_abs_cpu(5, x.data(), sample.data(), SampleParams{2});
  EXPECT_EQ(sample, (std::vector<float>{0.5f, 1.0f, 3.0f}));
  std::vector<float> dst = {1, 1, 1, 1, 1};
  const std::vector<int64_t> idx = {4, 0};
  const std::vector<float> vals = {2, -1};
  scatter_add_cpu(2, idx.data(), vals.data(), dst.data(), 0.5f);
  EXPECT_EQ(dst, (std::vector<float>{0.5f, 1, 1, 1, 2}));
}

#if defined(FEDRAD_HAVE_CUDA)
template <typename T>
T* to_device(const std::vector<T>& v) {
  T* d = nullptr;
  cudaMalloc(&d, std::max<size_t>(1, v.size()) * sizeof(T));
  cudaMemcpy(d, v.data(), v.size() * sizeof(T), cudaMemcpyHostToDevice);
  return d;
}
template <typename T>
std::vector<T> to_host(const T* d, size_t n) {
  std::vector<T> v(n);
  cudaMemcpy(v.data(), d, n * sizeof(T), cudaMemcpyDeviceToHost);
  return v;
}
#endif

class CodecKernelsGpu : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!device_available()) GTEST_SKIP() << "no CUDA device: " << device_description(0);
  }
};

TEST_F(CodecKernelsGpu, QuantizeDequantizeMatchCpuBitForBit) {
#if defined(FEDRAD_HAVE_CUDA)
  for (int bits : {8, 4, 2}) {
    for (int64_t block : {1, 64, 256, 1000}) {
      const int64_t n = 100003;
      const std::vector<float> x = random_values(n, 11);
      QuantParams p{bits, block, 77};
      const int64_t nb = num_blocks(n, block);
      std::vector<uint8_t> codes(n);
      std::vector<float> scales(nb), y(n);
      quantize_cpu(n, x.data(), codes.data(), scales.data(), p);
      dequantize_cpu(n, codes.data(), scales.data(), y.data(), p);
      float* dx = to_device(x);
      uint8_t* dc = to_device(std::vector<uint8_t>(n));
      float* ds = to_device(std::vector<float>(nb));
      float* dy = to_device(std::vector<float>(n));
      ASSERT_TRUE(launch_quantize(nullptr, n, dx, dc, ds, p).ok());
      ASSERT_TRUE(launch_dequantize(nullptr, n, dc, ds, dy, p).ok());
      EXPECT_EQ(to_host(dc, n), codes) << bits << "/" << block;
      const auto gs = to_host(ds, nb);
      const auto gy = to_host(dy, n);
      EXPECT_EQ(std::memcmp(gs.data(), scales.data(), 4 * nb), 0);
      EXPECT_EQ(std::memcmp(gy.data(), y.data(), 4 * n), 0);
      cudaFree(dx), cudaFree(dc), cudaFree(ds), cudaFree(dy);
    }
  }
#endif
}

TEST_F(CodecKernelsGpu, ThresholdSampleAndScatterMatchCpu) {
#if defined(FEDRAD_HAVE_CUDA)
  const int64_t n = 65537;
  const std::vector<float> x = random_values(n, 12);
  std::vector<uint8_t> mask(n);
  mask_above_cpu(n, x.data(), mask.data(), ThresholdParams{1.5f});
  std::vector<float> sample((n + 9) / 10);
  sample_abs_cpu(n, x.data(), sample.data(), SampleParams{10});
  std::vector<int64_t> idx;
  for (int64_t i = 0; i < n; i += 3) idx.push_back(i);
  std::vector<float> vals(idx.size(), 0.25f), dst = x;
  scatter_add_cpu(static_cast<int64_t>(idx.size()), idx.data(), vals.data(), dst.data(), 2.0f);

  float* dx = to_device(x);
  uint8_t* dm = to_device(std::vector<uint8_t>(n));
  float* dsmp = to_device(std::vector<float>(sample.size()));
  int64_t* di = to_device(idx);
  float* dv = to_device(vals);
  float* dd = to_device(x);
  ASSERT_TRUE(launch_mask_above(nullptr, n, dx, dm, ThresholdParams{1.5f}).ok());
  ASSERT_TRUE(launch_sample_abs(nullptr, n, dx, dsmp, SampleParams{10}).ok());
  ASSERT_TRUE(launch_scatter_add(nullptr, static_cast<int64_t>(idx.size()), di, dv, dd, 2.0f).ok());
  EXPECT_EQ(to_host(dm, n), mask);
  EXPECT_EQ(to_host(dsmp, sample.size()), sample);
  EXPECT_EQ(to_host(dd, n), dst);
  cudaFree(dx), cudaFree(dm), cudaFree(dsmp), cudaFree(di), cudaFree(dv), cudaFree(dd);
#endif
}

}  // namespace
}  // namespace fedrad::cuda
