// GPU tests: each kernel against its CPU reference on fresh random inputs. They carry the CTest
// label `gpu` and skip, with the reason, where there is no device (CI, these machines).
#include <gtest/gtest.h>

#include <cmath>
#include <random>
#include <vector>

#include "cuda/preprocess.h"
#if defined(FEDRAD_HAVE_CUDA)
#include <cuda_runtime.h>
#endif

namespace fedrad::cuda {
namespace {

#if !defined(FEDRAD_HAVE_CUDA)
TEST(CudaKernels, MatchCpuReferences) { GTEST_SKIP() << device_description(0); }
#else
// Each kernel against its CPU reference on fresh random inputs.
TEST(CudaKernels, MatchCpuReferences) {
  if (!device_available()) GTEST_SKIP() << "no CUDA device: " << device_description(0);
  const unsigned seed = std::random_device{}();  // fresh inputs each run; the seed is recorded
  RecordProperty("seed", std::to_string(seed));
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> u(0, 4095);
  const int n = 16, ih = 64, iw = 48, oh = 28, ow = 28;
  std::vector<float> in(n * ih * iw);
  for (auto& x : in) x = u(rng);
  std::vector<float> ref(n * oh * ow), got(n * oh * ow);
  resize_bilinear_cpu(n, in.data(), ref.data(), {ih, iw, oh, ow});
  normalise_cpu(n, ref.data(), ref.data(), {oh * ow, NormaliseMode::kMinMax});
  float *d_in = nullptr, *d_out = nullptr;
  ASSERT_EQ(cudaMalloc(&d_in, in.size() * sizeof(float)), cudaSuccess);
  ASSERT_EQ(cudaMalloc(&d_out, got.size() * sizeof(float)), cudaSuccess);
  cudaMemcpy(d_in, in.data(), in.size() * sizeof(float), cudaMemcpyHostToDevice);
  ASSERT_TRUE(launch_resize_bilinear(nullptr, n, d_in, d_out, {ih, iw, oh, ow}).ok());
  ASSERT_TRUE(launch_normalise(nullptr, n, d_out, d_out, {oh * ow, NormaliseMode::kMinMax}).ok());
  cudaMemcpy(got.data(), d_out, got.size() * sizeof(float), cudaMemcpyDeviceToHost);
  cudaFree(d_in);
  cudaFree(d_out);
  double max_err = 0;
  for (size_t i = 0; i < got.size(); ++i) max_err = std::max(max_err, std::abs(double(got[i]) - ref[i]));
  RecordProperty("max_abs_error", std::to_string(max_err));
  EXPECT_LT(max_err, 1e-4);
}
#endif

}  // namespace
}  // namespace fedrad::cuda
