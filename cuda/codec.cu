// CUDA versions of the codec references in codec_cpu.cpp, bit-identical: explicit round-to-nearest
// intrinsics (__fmul_rn, __fadd_rn, __fdiv_rn) keep nvcc from contracting into FMAs.
#include <cuda_runtime.h>

#include <string>

#include "cuda/codec.h"

namespace fedrad::cuda {
namespace {

constexpr int kThreads = 256;

__device__ inline float device_hash_uniform(uint64_t seed, uint64_t index) {
  uint64_t z = seed + 0x9e3779b97f4a7c15ull * (index + 1);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  z ^= z >> 31;
  return __fmul_rn(static_cast<float>(z >> 40), 1.0f / 16777216.0f);
}

__global__ void sample_abs_kernel(int64_t count, const float* x, float* sample, int64_t stride) {
  const int64_t j = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (j < count) sample[j] = fabsf(x[j * stride]);
}

__global__ void mask_above_kernel(int64_t n, const float* x, uint8_t* mask, float threshold) {
  const int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (i < n) mask[i] = fabsf(x[i]) >= threshold ? 1 : 0;
}

// One CUDA block per quantisation block: max-reduce |x|, then round every value.
__global__ void quantize_kernel(int64_t n, const float* x, uint8_t* codes, float* scales, QuantParams p) {
  __shared__ float red[kThreads];
  const int64_t lo = blockIdx.x * p.block;
  const int64_t hi = min(n, lo + p.block);
  float s = 0;
  for (int64_t i = lo + threadIdx.x; i < hi; i += blockDim.x) s = fmaxf(s, fabsf(x[i]));
  red[threadIdx.x] = s;
  __syncthreads();
  for (unsigned k = blockDim.x / 2; k > 0; k >>= 1) {
    if (threadIdx.x < k) red[threadIdx.x] = fmaxf(red[threadIdx.x], red[threadIdx.x + k]);
    __syncthreads();
  }
  s = red[0];
  if (threadIdx.x == 0) scales[blockIdx.x] = s;
  const int levels = (1 << (p.bits - 1)) - 1;
  const float fl = static_cast<float>(levels);
  const float inv = s > 0 ? __fdiv_rn(fl, s) : 0.0f;
  for (int64_t i = lo + threadIdx.x; i < hi; i += blockDim.x) {
    const float scaled = __fmul_rn(x[i], inv);
    const float shifted = __fadd_rn(scaled, device_hash_uniform(p.seed, static_cast<uint64_t>(i)));
    int q = static_cast<int>(floorf(shifted));
    q = min(levels, max(-levels, q));
    codes[i] = static_cast<uint8_t>(q + levels);
  }
}

__global__ void dequantize_kernel(int64_t n, const uint8_t* codes, const float* scales, float* out, QuantParams p) {
  const int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (i >= n) return;
  const int levels = (1 << (p.bits - 1)) - 1;
  const float step = __fdiv_rn(scales[i / p.block], static_cast<float>(levels));
  out[i] = __fmul_rn(static_cast<float>(static_cast<int>(codes[i]) - levels), step);
}

__global__ void scatter_add_kernel(int64_t n, const int64_t* index, const float* values, float* dst, float weight) {
  const int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (i >= n) return;
  // Indices are distinct (checked by the decoder), so a plain read-modify-write is race-free.
  dst[index[i]] = __fadd_rn(dst[index[i]], __fmul_rn(weight, values[i]));
}

unsigned grid_for(int64_t n) { return static_cast<unsigned>((n + kThreads - 1) / kThreads); }

Status check_launch(const char* what) {
  cudaError_t err = cudaGetLastError();
  if (err == cudaSuccess) return ok_status();
  return internal_error(std::string(what) + ": " + cudaGetErrorString(err));
}

Status check_quant(const QuantParams& p) {
  if (p.bits != 8 && p.bits != 4 && p.bits != 2) return invalid_argument("quantize: bits must be 8, 4 or 2");
  if (p.block <= 0) return invalid_argument("quantize: block must be positive");
  return ok_status();
}

}  // namespace

Status launch_sample_abs(cudaStream_t stream, int64_t n, const float* x, float* sample, const SampleParams& p) {
  const int64_t stride = p.stride > 0 ? p.stride : 1;
  const int64_t count = (n + stride - 1) / stride;
  if (count == 0) return ok_status();
  sample_abs_kernel<<<grid_for(count), kThreads, 0, stream>>>(count, x, sample, stride);
  return check_launch("sample_abs");
}

Status launch_mask_above(cudaStream_t stream, int64_t n, const float* x, uint8_t* mask, const ThresholdParams& p) {
  if (n == 0) return ok_status();
  mask_above_kernel<<<grid_for(n), kThreads, 0, stream>>>(n, x, mask, p.threshold);
  return check_launch("mask_above");
}

Status launch_quantize(cudaStream_t stream, int64_t n, const float* x, uint8_t* codes, float* scales,
                       const QuantParams& p) {
  FEDRAD_RETURN_IF_ERROR(check_quant(p));
  const int64_t nb = num_blocks(n, p.block);
  if (nb == 0) return ok_status();
  quantize_kernel<<<static_cast<unsigned>(nb), kThreads, 0, stream>>>(n, x, codes, scales, p);
  return check_launch("quantize");
}

Status launch_dequantize(cudaStream_t stream, int64_t n, const uint8_t* codes, const float* scales, float* out,
                         const QuantParams& p) {
  FEDRAD_RETURN_IF_ERROR(check_quant(p));
  if (n == 0) return ok_status();
  dequantize_kernel<<<grid_for(n), kThreads, 0, stream>>>(n, codes, scales, out, p);
  return check_launch("dequantize");
}

Status launch_scatter_add(cudaStream_t stream, int64_t n, const int64_t* index, const float* values, float* dst,
                          float weight) {
  if (n == 0) return ok_status();
  scatter_add_kernel<<<grid_for(n), kThreads, 0, stream>>>(n, index, values, dst, weight);
  return check_launch("scatter_add");
}

}  // namespace fedrad::cuda
