// CUDA versions of the preprocessing references in preprocess_cpu.cpp; same semantics.
#include <cuda_runtime.h>

#include "cuda/preprocess.h"

namespace fedrad::cuda {
namespace {

__device__ inline void tap(int dst, int in_size, int out_size, int* i0, int* i1, float* w1) {
  const float scale = static_cast<float>(in_size) / static_cast<float>(out_size);
  float src = fmaxf((static_cast<float>(dst) + 0.5f) * scale - 0.5f, 0.0f);
  *i0 = min(static_cast<int>(src), in_size - 1);
  *i1 = min(*i0 + 1, in_size - 1);
  *w1 = src - static_cast<float>(*i0);
}

__global__ void resize_bilinear_kernel(int64_t total, const float* in, float* out, ResizeParams p) {
  const int64_t idx = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (idx >= total) return;
  const int x = static_cast<int>(idx % p.out_w);
  const int y = static_cast<int>((idx / p.out_w) % p.out_h);
  const int64_t img = idx / (static_cast<int64_t>(p.out_w) * p.out_h);
  const float* src = in + img * p.in_h * p.in_w;
  int y0, y1, x0, x1;
  float wy, wx;
  tap(y, p.in_h, p.out_h, &y0, &y1, &wy);
  tap(x, p.in_w, p.out_w, &x0, &x1, &wx);
  const float top = src[y0 * p.in_w + x0] * (1 - wx) + src[y0 * p.in_w + x1] * wx;
  const float bottom = src[y1 * p.in_w + x0] * (1 - wx) + src[y1 * p.in_w + x1] * wx;
  out[idx] = top * (1 - wy) + bottom * wy;
}

// One block per image: a block-wide reduction for min/max (or sum/sumsq), then a scaling pass.
__global__ void normalise_kernel(const float* in, float* out, NormaliseParams p) {
  extern __shared__ double shared[];
  const int64_t m = p.pixels_per_image;
  const float* src = in + blockIdx.x * m;
  float* dst = out + blockIdx.x * m;
  double a = p.mode == NormaliseMode::kMinMax ? INFINITY : 0.0;
  double b = p.mode == NormaliseMode::kMinMax ? -INFINITY : 0.0;
  for (int64_t i = threadIdx.x; i < m; i += blockDim.x) {
    const double v = src[i];
    if (p.mode == NormaliseMode::kMinMax) a = fmin(a, v), b = fmax(b, v);
    else a += v, b += v * v;
  }
  shared[threadIdx.x] = a;
  shared[blockDim.x + threadIdx.x] = b;
  __syncthreads();
  for (unsigned s = blockDim.x / 2; s > 0; s >>= 1) {
    if (threadIdx.x < s) {
      if (p.mode == NormaliseMode::kMinMax) {
        shared[threadIdx.x] = fmin(shared[threadIdx.x], shared[threadIdx.x + s]);
        shared[blockDim.x + threadIdx.x] = fmax(shared[blockDim.x + threadIdx.x], shared[blockDim.x + threadIdx.x + s]);
      } else {
        shared[threadIdx.x] += shared[threadIdx.x + s];
        shared[blockDim.x + threadIdx.x] += shared[blockDim.x + threadIdx.x + s];
      }
    }
    __syncthreads();
  }
  const double r0 = shared[0], r1 = shared[blockDim.x];
  for (int64_t i = threadIdx.x; i < m; i += blockDim.x) {
    if (p.mode == NormaliseMode::kMinMax) {
      const float lo = static_cast<float>(r0), range = static_cast<float>(r1) - lo;
      dst[i] = range > p.eps ? ((src[i] - lo) / range - 0.5f) / 0.5f : 0.0f;
    } else {
      const double mean = r0 / m, sd = sqrt(fmax(0.0, r1 / m - mean * mean));
      dst[i] = sd > p.eps ? static_cast<float>((src[i] - mean) / sd) : 0.0f;
    }
  }
}

Status check_launch(const char* what) {
  cudaError_t err = cudaGetLastError();
  if (err == cudaSuccess) return ok_status();
  return internal_error(std::string(what) + ": " + cudaGetErrorString(err));
}

}  // namespace

Status launch_resize_bilinear(cudaStream_t stream, int64_t n, const float* in, float* out, const ResizeParams& p) {
  const int64_t total = n * p.out_h * p.out_w;
  if (total == 0) return ok_status();
  constexpr int kThreads = 256;
  const int64_t blocks = (total + kThreads - 1) / kThreads;
  resize_bilinear_kernel<<<static_cast<unsigned>(blocks), kThreads, 0, stream>>>(total, in, out, p);
  return check_launch("resize_bilinear");
}

Status launch_normalise(cudaStream_t stream, int64_t n, const float* in, float* out, const NormaliseParams& p) {
  if (n == 0) return ok_status();
  constexpr int kThreads = 256;
  normalise_kernel<<<static_cast<unsigned>(n), kThreads, 2 * kThreads * sizeof(double), stream>>>(in, out, p);
  return check_launch("normalise");
}

}  // namespace fedrad::cuda
