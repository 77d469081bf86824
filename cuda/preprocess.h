// Preprocessing kernels with plain signatures (after tiny-cuda-nn): raw pointers, an element
// count and a params struct; the CUDA launchers also take an explicit stream. Every kernel has a
// CPU reference with the same semantics, which is what runs on machines without a GPU.
// This header compiles without nvcc.
#pragma once

#include <cstdint>
#include <string>

#include "common/status.h"

#if defined(FEDRAD_HAVE_CUDA)
#include <cuda_runtime_api.h>
#endif

namespace fedrad::cuda {

// Bilinear resize with half-pixel centres, the semantics of PyTorch's
// interpolate(mode="bilinear", align_corners=False, antialias=False): a source coordinate is
// (dst + 0.5) * in/out - 0.5, clamped at 0, neighbours clamped at the edge.
struct ResizeParams {
  int in_h = 0, in_w = 0;
  int out_h = 0, out_w = 0;
};

enum class NormaliseMode : int {
  kMinMax = 0,  // per image: (x - min) / (max - min) -> [0, 1], then (x - 0.5) / 0.5 -> [-1, 1]
  kZScore = 1,  // per image: (x - mean) / std
};

struct NormaliseParams {
  int64_t pixels_per_image = 0;
  NormaliseMode mode = NormaliseMode::kMinMax;
  float eps = 1e-6f;  // a flat image maps to 0 instead of dividing by zero
};

// n images of in_h*in_w floats -> n images of out_h*out_w floats.
void resize_bilinear_cpu(int64_t n, const float* in, float* out, const ResizeParams& p);
// n images of pixels_per_image floats, in place allowed (in == out).
void normalise_cpu(int64_t n, const float* in, float* out, const NormaliseParams& p);

// Whether a CUDA device can be used by this build in this process (false without nvcc or GPU).
bool device_available();
// "NVIDIA H100 80GB HBM3" style name of device `index`, or the reason there is none.
std::string device_description(int index = 0);

#if defined(FEDRAD_HAVE_CUDA)
// Same semantics as the CPU references; pointers are device memory; asynchronous on `stream`.
Status launch_resize_bilinear(cudaStream_t stream, int64_t n, const float* in, float* out, const ResizeParams& p);
Status launch_normalise(cudaStream_t stream, int64_t n, const float* in, float* out, const NormaliseParams& p);
#endif

}  // namespace fedrad::cuda
