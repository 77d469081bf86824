// CUDA versions of the preprocessing references in preprocess_cpu.cpp: the same per-element
// functions (preprocess_ops.h), one thread per output element. Compiled with -fmad=false (see
// CMakeLists.txt) so that nvcc does not contract them into FMAs.
#include <cuda_runtime.h>

#include <algorithm>

#include "cuda/preprocess.h"
#include "cuda/preprocess_ops.h"

namespace fedrad::cuda {
namespace {

constexpr int kThreads = 256;
// 2D launches: a 32x8 block of output pixels; images on grid z (at most this many per launch
// row, the kernels loop over the rest).
constexpr int kBlockX = 32, kBlockY = 8;
constexpr int64_t kMaxGridZ = 65535;

dim3 plane_grid(int h, int w, int64_t planes) {
  return dim3(static_cast<unsigned>((w + kBlockX - 1) / kBlockX), static_cast<unsigned>((h + kBlockY - 1) / kBlockY),
              static_cast<unsigned>(std::min<int64_t>(planes, kMaxGridZ)));
}

unsigned blocks_for(int64_t total) { return static_cast<unsigned>((total + kThreads - 1) / kThreads); }

// Resize (float) and the fused pixel conversion + resize: conv is AsFloat or ConvertPixel<T>.
template <typename T, bool kConvert>
__global__ void resize_kernel(int64_t n, const T* __restrict__ in, const PixelParams* __restrict__ params,
                              float* __restrict__ out, ResizeParams p) {
  const int x = blockIdx.x * blockDim.x + threadIdx.x;
  const int y = blockIdx.y * blockDim.y + threadIdx.y;
  if (x >= p.out_w || y >= p.out_h) return;
  const ops::Tap ty = ops::linear_tap(y, p.in_h, p.out_h), tx = ops::linear_tap(x, p.in_w, p.out_w);
  const int64_t in_plane = static_cast<int64_t>(p.in_h) * p.in_w;
  const int64_t out_plane = static_cast<int64_t>(p.out_h) * p.out_w;
  for (int64_t img = blockIdx.z; img < n; img += gridDim.z) {
    float v;
    if constexpr (kConvert) {
      v = ops::bilinear_sample(in + img * in_plane, p.in_w, ty, tx, ops::ConvertPixel<T>{params[img]});
    } else {
      v = ops::bilinear_sample(in + img * in_plane, p.in_w, ty, tx, ops::AsFloat{});
    }
    out[img * out_plane + static_cast<int64_t>(y) * p.out_w + x] = v;
  }
}

template <typename T>
__global__ void pixels_to_float_kernel(int64_t total, int64_t pixels_per_image, const T* __restrict__ in,
                                       const PixelParams* __restrict__ params, float* __restrict__ out) {
  const int64_t idx = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (idx >= total) return;
  out[idx] = ops::pixel_to_float(in[idx], params[idx / pixels_per_image]);
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

__global__ void resize_trilinear_kernel(int64_t total, const float* __restrict__ in, float* __restrict__ out,
                                        Resize3dParams p) {
  const int64_t idx = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (idx >= total) return;
  const int x = static_cast<int>(idx % p.out_w);
  const int y = static_cast<int>((idx / p.out_w) % p.out_h);
  const int z = static_cast<int>((idx / (static_cast<int64_t>(p.out_w) * p.out_h)) % p.out_d);
  const int64_t v = idx / (static_cast<int64_t>(p.out_w) * p.out_h * p.out_d);
  const float* src = in + v * static_cast<int64_t>(p.in_d) * p.in_h * p.in_w;
  out[idx] = ops::trilinear_sample(src, p.in_h, p.in_w, ops::linear_tap(z, p.in_d, p.out_d),
                                   ops::linear_tap(y, p.in_h, p.out_h), ops::linear_tap(x, p.in_w, p.out_w));
}

// Grid z runs over the planes (image * channels + channel).
__global__ void augment_kernel(int64_t planes, const float* __restrict__ in, const AugmentParams* __restrict__ params,
                               float* __restrict__ out, ImageShape s) {
  const int x = blockIdx.x * blockDim.x + threadIdx.x;
  const int y = blockIdx.y * blockDim.y + threadIdx.y;
  if (x >= s.width || y >= s.height) return;
  const int64_t plane = static_cast<int64_t>(s.height) * s.width;
  for (int64_t q = blockIdx.z; q < planes; q += gridDim.z) {
    const AugmentParams& a = params[q / s.channels];
    const float v = ops::affine_sample(in + q * plane, s.height, s.width, a.theta, y, x);
    out[q * plane + static_cast<int64_t>(y) * s.width + x] = ops::jitter(v, a.contrast, a.brightness);
  }
}

__global__ void flip3d_kernel(int64_t total, const float* __restrict__ in, const uint8_t* __restrict__ axes,
                              float* __restrict__ out, VolumeShape s) {
  const int64_t idx = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (idx >= total) return;
  const int x = static_cast<int>(idx % s.width);
  const int y = static_cast<int>((idx / s.width) % s.height);
  const int z = static_cast<int>((idx / (static_cast<int64_t>(s.width) * s.height)) % s.depth);
  const int64_t q = idx / (static_cast<int64_t>(s.width) * s.height * s.depth);  // volume * channels + channel
  const uint8_t a = axes[q / s.channels];
  const int64_t plane = static_cast<int64_t>(s.height) * s.width;
  const int sz = ops::flip_index(z, s.depth, a & kFlipDepth);
  const int sy = ops::flip_index(y, s.height, a & kFlipHeight);
  const int sx = ops::flip_index(x, s.width, a & kFlipWidth);
  out[idx] = in[q * plane * s.depth + sz * plane + static_cast<int64_t>(sy) * s.width + sx];
}

Status check_launch(const char* what) {
  cudaError_t err = cudaGetLastError();
  if (err == cudaSuccess) return ok_status();
  return internal_error(std::string(what) + ": " + cudaGetErrorString(err));
}

Status check_resize(const char* what, int64_t n, const ResizeParams& p) {
  if (n < 0 || p.in_h <= 0 || p.in_w <= 0 || p.out_h <= 0 || p.out_w <= 0) {
    return invalid_argument(std::string(what) + ": sizes must be positive (in " + std::to_string(p.in_h) + "x" +
                            std::to_string(p.in_w) + ", out " + std::to_string(p.out_h) + "x" +
                            std::to_string(p.out_w) + ")");
  }
  return ok_status();
}

}  // namespace

Status launch_resize_bilinear(cudaStream_t stream, int64_t n, const float* in, float* out, const ResizeParams& p) {
  FEDRAD_RETURN_IF_ERROR(check_resize("resize_bilinear", n, p));
  if (n == 0) return ok_status();
  resize_kernel<float, false><<<plane_grid(p.out_h, p.out_w, n), dim3(kBlockX, kBlockY), 0, stream>>>(
      n, in, nullptr, out, p);
  return check_launch("resize_bilinear");
}

Status launch_normalise(cudaStream_t stream, int64_t n, const float* in, float* out, const NormaliseParams& p) {
  if (n == 0) return ok_status();
  normalise_kernel<<<static_cast<unsigned>(n), kThreads, 2 * kThreads * sizeof(double), stream>>>(in, out, p);
  return check_launch("normalise");
}

template <typename T>
Status launch_pixels_to_float(cudaStream_t stream, int64_t n, int64_t pixels_per_image, const T* in,
                              const PixelParams* params, float* out) {
  const int64_t total = n * pixels_per_image;
  if (total <= 0) return ok_status();
  pixels_to_float_kernel<T><<<blocks_for(total), kThreads, 0, stream>>>(total, pixels_per_image, in, params, out);
  return check_launch("pixels_to_float");
}

template <typename T>
Status launch_pixels_resize(cudaStream_t stream, int64_t n, const T* in, const PixelParams* params, float* out,
                            const ResizeParams& p) {
  FEDRAD_RETURN_IF_ERROR(check_resize("pixels_resize", n, p));
  if (n == 0) return ok_status();
  resize_kernel<T, true><<<plane_grid(p.out_h, p.out_w, n), dim3(kBlockX, kBlockY), 0, stream>>>(n, in, params, out, p);
  return check_launch("pixels_resize");
}

template <typename T>
Status launch_preprocess(cudaStream_t stream, int64_t n, const T* in, const PixelParams* params, float* out,
                         const ResizeParams& p, NormaliseMode mode) {
  FEDRAD_RETURN_IF_ERROR(launch_pixels_resize(stream, n, in, params, out, p));
  NormaliseParams np;
  np.pixels_per_image = static_cast<int64_t>(p.out_h) * p.out_w;
  np.mode = mode;
  return launch_normalise(stream, n, out, out, np);
}

#define FEDRAD_PIXEL_TYPE(T)                                                                                     \
  template Status launch_pixels_to_float<T>(cudaStream_t, int64_t, int64_t, const T*, const PixelParams*, float*); \
  template Status launch_pixels_resize<T>(cudaStream_t, int64_t, const T*, const PixelParams*, float*,           \
                                          const ResizeParams&);                                                  \
  template Status launch_preprocess<T>(cudaStream_t, int64_t, const T*, const PixelParams*, float*,              \
                                       const ResizeParams&, NormaliseMode);
FEDRAD_FOR_EACH_PIXEL_TYPE(FEDRAD_PIXEL_TYPE)
#undef FEDRAD_PIXEL_TYPE

Status launch_resize_trilinear(cudaStream_t stream, int64_t n, const float* in, float* out, const Resize3dParams& p) {
  if (n < 0 || p.in_d <= 0 || p.in_h <= 0 || p.in_w <= 0 || p.out_d <= 0 || p.out_h <= 0 || p.out_w <= 0)
    return invalid_argument("resize_trilinear: sizes must be positive");
  const int64_t total = n * p.out_d * p.out_h * p.out_w;
  if (total == 0) return ok_status();
  resize_trilinear_kernel<<<blocks_for(total), kThreads, 0, stream>>>(total, in, out, p);
  return check_launch("resize_trilinear");
}

Status launch_augment(cudaStream_t stream, int64_t n, const float* in, const AugmentParams* params, float* out,
                      const ImageShape& s) {
  if (n < 0 || s.channels <= 0 || s.height <= 0 || s.width <= 0) return invalid_argument("augment: sizes must be positive");
  const int64_t planes = n * s.channels;
  if (planes == 0) return ok_status();
  augment_kernel<<<plane_grid(s.height, s.width, planes), dim3(kBlockX, kBlockY), 0, stream>>>(planes, in, params, out, s);
  return check_launch("augment");
}

Status launch_flip3d(cudaStream_t stream, int64_t n, const float* in, const uint8_t* axes, float* out,
                     const VolumeShape& s) {
  if (n < 0 || s.channels <= 0 || s.depth <= 0 || s.height <= 0 || s.width <= 0)
    return invalid_argument("flip3d: sizes must be positive");
  const int64_t total = n * s.channels * s.depth * s.height * s.width;
  if (total == 0) return ok_status();
  flip3d_kernel<<<blocks_for(total), kThreads, 0, stream>>>(total, in, axes, out, s);
  return check_launch("flip3d");
}

}  // namespace fedrad::cuda
