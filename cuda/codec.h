// Kernels of the update codecs (federation/codec.h): the costly, data-parallel steps, with plain
// signatures. Every kernel has a CPU reference with the same semantics *bit for bit*: stochastic
// rounding draws its uniform from a counter-based hash of (seed, index), not from a stateful
// generator, and floating-point expressions are written so that no compiler contracts them into
// FMAs, so a GPU site and a CPU coordinator produce and read exactly the same bytes.
// This header compiles without nvcc.
#pragma once

#include <cstdint>

#include "common/status.h"

#if defined(FEDRAD_HAVE_CUDA)
#include <cuda_runtime_api.h>
#endif

namespace fedrad::cuda {

// Every `stride`-th |x| (starting at 0) into `sample`: count = ceil(n / stride) values. The top-k
// threshold is the (1 - fraction) quantile of this sample (taken on the host).
struct SampleParams {
  int64_t stride = 1;
};

// mask[i] = |x[i]| >= threshold (1/0). With threshold from the sample, about fraction*n survive.
struct ThresholdParams {
  float threshold = 0;
};

// Stochastic block quantisation to `bits` (8, 4 or 2): per block of `block` values a scale
// s = max |x|; a value becomes the integer q in [-L, L], L = 2^(bits-1) - 1, with
// q = floor(x * (L / s) + u), u uniform in [0, 1) from hash(seed, index): unbiased, E[q s/L] = x.
// codes[i] = q + L (one byte per value; packing is the caller's); dequantisation is q * (s / L).
struct QuantParams {
  int bits = 8;
  int64_t block = 256;
  uint64_t seed = 0;
};

inline int64_t num_blocks(int64_t n, int64_t block) { return block > 0 ? (n + block - 1) / block : 0; }
inline int quant_levels(int bits) { return (1 << (bits - 1)) - 1; }

// The uniform in [0, 1) (24 bits) that stochastic rounding uses for value `index`.
inline float hash_uniform(uint64_t seed, uint64_t index) {
  uint64_t z = seed + 0x9e3779b97f4a7c15ull * (index + 1);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  z ^= z >> 31;
  return static_cast<float>(z >> 40) * (1.0f / 16777216.0f);
}

void sample_abs_cpu(int64_t n, const float* x, float* sample, const SampleParams& p);
void mask_above_cpu(int64_t n, const float* x, uint8_t* mask, const ThresholdParams& p);
// scales: num_blocks(n, block) floats; codes: n bytes.
void quantize_cpu(int64_t n, const float* x, uint8_t* codes, float* scales, const QuantParams& p);
void dequantize_cpu(int64_t n, const uint8_t* codes, const float* scales, float* out, const QuantParams& p);
// dst[index[i]] += weight * values[i] for i < n. Indices must be distinct and in range (the
// decoder checks them before calling); with distinct indices the order does not matter.
void scatter_add_cpu(int64_t n, const int64_t* index, const float* values, float* dst, float weight);

#if defined(FEDRAD_HAVE_CUDA)
// Same semantics as the CPU references; pointers are device memory; asynchronous on `stream`.
Status launch_sample_abs(cudaStream_t stream, int64_t n, const float* x, float* sample, const SampleParams& p);
Status launch_mask_above(cudaStream_t stream, int64_t n, const float* x, uint8_t* mask, const ThresholdParams& p);
Status launch_quantize(cudaStream_t stream, int64_t n, const float* x, uint8_t* codes, float* scales,
                       const QuantParams& p);
Status launch_dequantize(cudaStream_t stream, int64_t n, const uint8_t* codes, const float* scales, float* out,
                         const QuantParams& p);
Status launch_scatter_add(cudaStream_t stream, int64_t n, const int64_t* index, const float* values, float* dst,
                          float weight);
#endif

}  // namespace fedrad::cuda
