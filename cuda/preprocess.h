// Preprocessing kernels with plain signatures (after tiny-cuda-nn): raw pointers, an element
// count and a params struct; the CUDA launchers also take an explicit stream. Every kernel has a
// CPU reference with the same semantics, which is what runs on machines without a GPU: both call
// the same per-element functions (cuda/preprocess_ops.h), so the semantics agree by construction.
// This header compiles without nvcc.
//
// The chain (issue 4): integer pixels -> float (rescale, MONOCHROME1 inversion, window), fused
// with the bilinear resize; per-image normalisation; trilinear resize of volumes; the training
// augmentations (affine + intensity jitter, fused; 3D flips). All batched over n images.
// The torch adapter is cuda/torch_ops.h.
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

// Stored pixel value -> float, per image; the order and rules of imaging::read_dicom:
//   1. MONOCHROME1 (invert) without a window: v = (min + max of the BitsStored range) - v, i.e.
//      (2^bits - 1) - v unsigned and -1 - v signed (two's complement), before the rescale;
//   2. modality rescale: v * slope + intercept;
//   3. window_width > 0: the DICOM linear VOI window (PS3.3 C.11.2.1.2.1) to [0, 1], and then
//      MONOCHROME1 inverts as 1 - v (after the window, as read_dicom does).
// Arithmetic is float: integer inputs are exact up to 24 bits (uint8/int16/uint16 always).
struct PixelParams {
  float slope = 1.0f;
  float intercept = 0.0f;
  bool invert = false;     // MONOCHROME1
  bool is_signed = false;  // PixelRepresentation 1: the inversion base is -1
  int bits = 16;           // BitsStored: the inversion base is 2^bits - 1 (unsigned)
  float window_center = 0.0f;
  float window_width = 0.0f;  // 0 (or less): no window
};

// Trilinear resize of volumes, PyTorch's interpolate(mode="trilinear", align_corners=False):
// the bilinear rule above on each of the three axes.
struct Resize3dParams {
  int in_d = 0, in_h = 0, in_w = 0;
  int out_d = 0, out_h = 0, out_w = 0;
};

// One image's training augmentation: an affine resample then an intensity jitter,
//   out = grid_sample(x, affine_grid(theta), bilinear, padding border, align_corners=false)
//         * contrast + brightness,
// theta the 2x3 matrix torch.nn.functional.affine_grid takes (row-major, normalised [-1, 1]
// coordinates, output -> input). A horizontal flip is the sign of theta's first column
// (theta[0], theta[3]), as training::augment builds it.
struct AugmentParams {
  float theta[6] = {1, 0, 0, 0, 1, 0};
  float contrast = 1.0f;
  float brightness = 0.0f;
};

// n images of [channels, height, width]; the channels of an image share its AugmentParams.
struct ImageShape {
  int channels = 1, height = 0, width = 0;
};

// n volumes of [channels, depth, height, width] (segmentation patches).
struct VolumeShape {
  int channels = 1, depth = 0, height = 0, width = 0;
};

// Per-volume flip mask for flip3d: which axes are reversed.
enum FlipAxis : uint8_t { kFlipDepth = 1, kFlipHeight = 2, kFlipWidth = 4 };

// ---- CPU references (single-threaded; batch over threads by splitting n) ----

// n images of in_h*in_w floats -> n images of out_h*out_w floats.
void resize_bilinear_cpu(int64_t n, const float* in, float* out, const ResizeParams& p);
// n images of pixels_per_image floats, in place allowed (in == out).
void normalise_cpu(int64_t n, const float* in, float* out, const NormaliseParams& p);

// T is one of uint8_t, int16_t, uint16_t, int32_t, float (explicitly instantiated, CPU and CUDA
// alike, with this list).
#define FEDRAD_FOR_EACH_PIXEL_TYPE(X) X(uint8_t) X(int16_t) X(uint16_t) X(int32_t) X(float)
// params: n PixelParams, one per image. Images of one call share their size.
template <typename T>
void pixels_to_float_cpu(int64_t n, int64_t pixels_per_image, const T* in, const PixelParams* params, float* out);
// Fused: stored pixels -> float (PixelParams) -> bilinear resize, without a float image in
// between; equal to pixels_to_float then resize_bilinear (each tap is converted, then weighted).
template <typename T>
void pixels_resize_cpu(int64_t n, const T* in, const PixelParams* params, float* out, const ResizeParams& p);
// pixels_resize then normalise (in place on out): the whole classifier preprocessing.
template <typename T>
void preprocess_cpu(int64_t n, const T* in, const PixelParams* params, float* out, const ResizeParams& p,
                    NormaliseMode mode);

// n volumes of in_d*in_h*in_w floats -> n volumes of out_d*out_h*out_w (channels: fold into n).
void resize_trilinear_cpu(int64_t n, const float* in, float* out, const Resize3dParams& p);
// params: n AugmentParams. out must not alias in.
void augment_cpu(int64_t n, const float* in, const AugmentParams* params, float* out, const ImageShape& s);
// axes: n FlipAxis masks. out must not alias in.
void flip3d_cpu(int64_t n, const float* in, const uint8_t* axes, float* out, const VolumeShape& s);

// Whether a CUDA device can be used by this build in this process (false without nvcc or GPU).
bool device_available();
// "NVIDIA H100 80GB HBM3" style name of device `index`, or the reason there is none.
std::string device_description(int index = 0);

#if defined(FEDRAD_HAVE_CUDA)
// Same semantics as the CPU references; every pointer, the per-image params arrays included, is
// device memory; asynchronous on `stream` (the caller keeps the buffers alive until it is done).
Status launch_resize_bilinear(cudaStream_t stream, int64_t n, const float* in, float* out, const ResizeParams& p);
Status launch_normalise(cudaStream_t stream, int64_t n, const float* in, float* out, const NormaliseParams& p);

template <typename T>
Status launch_pixels_to_float(cudaStream_t stream, int64_t n, int64_t pixels_per_image, const T* in,
                              const PixelParams* params, float* out);
// One kernel: reads the stored pixels and writes the resized floats.
template <typename T>
Status launch_pixels_resize(cudaStream_t stream, int64_t n, const T* in, const PixelParams* params, float* out,
                            const ResizeParams& p);
// launch_pixels_resize then launch_normalise in place, on the same stream.
template <typename T>
Status launch_preprocess(cudaStream_t stream, int64_t n, const T* in, const PixelParams* params, float* out,
                         const ResizeParams& p, NormaliseMode mode);

Status launch_resize_trilinear(cudaStream_t stream, int64_t n, const float* in, float* out, const Resize3dParams& p);
Status launch_augment(cudaStream_t stream, int64_t n, const float* in, const AugmentParams* params, float* out,
                      const ImageShape& s);
Status launch_flip3d(cudaStream_t stream, int64_t n, const float* in, const uint8_t* axes, float* out,
                     const VolumeShape& s);
#endif

}  // namespace fedrad::cuda
