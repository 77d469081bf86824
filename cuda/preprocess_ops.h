// Per-element functions of the preprocessing chain, shared by the CPU references
// (preprocess_cpu.cpp) and the CUDA kernels (preprocess.cu): one definition, so both compute the
// same thing. preprocess.cu is compiled with -fmad=false, so nvcc does not contract these
// expressions into FMAs either (x86-64 hosts without -march do not); GPU and CPU results then
// differ only where the reductions of normalise sum in another order.
// This header compiles without nvcc.
#pragma once

#include <math.h>

#include <cstdint>

#include "cuda/preprocess.h"

#if defined(__CUDACC__)
#define FEDRAD_HD __host__ __device__
#else
#define FEDRAD_HD
#endif

namespace fedrad::cuda::ops {

FEDRAD_HD inline int clamp_int(int v, int lo, int hi) { return v < lo ? lo : (v > hi ? hi : v); }
FEDRAD_HD inline float clamp_float(float v, float lo, float hi) { return v < lo ? lo : (v > hi ? hi : v); }

// ---- stored pixel -> float (PixelParams, preprocess.h) ----

// min + max of the BitsStored range: what MONOCHROME1 subtracts from.
FEDRAD_HD inline float invert_base(const PixelParams& p) {
  if (p.is_signed) return -1.0f;
  const int bits = clamp_int(p.bits, 0, 32);
  return static_cast<float>((uint64_t{1} << bits) - 1);
}

// DICOM linear VOI window (PS3.3 C.11.2.1.2.1) onto [0, 1]; imaging::read_dicom's kLinear.
FEDRAD_HD inline float window_linear(float x, float center, float width) {
  const float half = (width - 1.0f) * 0.5f;
  const float c = center - 0.5f;
  if (x <= c - half) return 0.0f;
  if (x > c + half) return 1.0f;
  return width <= 1.0f ? 1.0f : (x - c) / (width - 1.0f) + 0.5f;
}

template <typename T>
FEDRAD_HD inline float pixel_to_float(T raw, const PixelParams& p) {
  float v = static_cast<float>(raw);
  const bool window = p.window_width > 0.0f;
  if (p.invert && !window) v = invert_base(p) - v;
  v = v * p.slope + p.intercept;
  if (window) {
    v = window_linear(v, p.window_center, p.window_width);
    if (p.invert) v = 1.0f - v;
  }
  return v;
}

// Identity conversion (the float resize) and the PixelParams one, as functors for the samplers.
struct AsFloat {
  FEDRAD_HD float operator()(float v) const { return v; }
};
template <typename T>
struct ConvertPixel {
  PixelParams p;
  FEDRAD_HD float operator()(T v) const { return pixel_to_float(v, p); }
};

// ---- linear resize taps: half-pixel centres, PyTorch's align_corners=False ----

// One output coordinate's two source indices and the weight of the second.
struct Tap {
  int i0, i1;
  float w1;
};

FEDRAD_HD inline Tap linear_tap(int dst, int in_size, int out_size) {
  const float scale = static_cast<float>(in_size) / static_cast<float>(out_size);
  float src = (static_cast<float>(dst) + 0.5f) * scale - 0.5f;
  src = src > 0.0f ? src : 0.0f;
  const int i0 = clamp_int(static_cast<int>(src), 0, in_size - 1);
  const int i1 = i0 + 1 < in_size ? i0 + 1 : in_size - 1;
  return {i0, i1, src - static_cast<float>(i0)};
}

// Bilinear sample of a row-major plane of width w at taps (ty, tx); conv maps a stored T to float.
// The order of operations is the original resize_bilinear_cpu's (its results are unchanged).
template <typename T, typename Conv>
FEDRAD_HD inline float bilinear_sample(const T* src, int w, const Tap& ty, const Tap& tx, const Conv& conv) {
  const int64_t r0 = static_cast<int64_t>(ty.i0) * w, r1 = static_cast<int64_t>(ty.i1) * w;
  const float top = conv(src[r0 + tx.i0]) * (1 - tx.w1) + conv(src[r0 + tx.i1]) * tx.w1;
  const float bottom = conv(src[r1 + tx.i0]) * (1 - tx.w1) + conv(src[r1 + tx.i1]) * tx.w1;
  return top * (1 - ty.w1) + bottom * ty.w1;
}

// Trilinear sample of a [d, h, w] volume at taps (td, ty, tx), linear along w, then h, then d.
FEDRAD_HD inline float trilinear_sample(const float* src, int h, int w, const Tap& td, const Tap& ty,
                                        const Tap& tx) {
  const int64_t plane = static_cast<int64_t>(h) * w;
  const float a = bilinear_sample(src + td.i0 * plane, w, ty, tx, AsFloat{});
  const float b = bilinear_sample(src + td.i1 * plane, w, ty, tx, AsFloat{});
  return a * (1 - td.w1) + b * td.w1;
}

// ---- affine resample: torch affine_grid + grid_sample(bilinear, border, align_corners=false) ----

// The normalised coordinate of pixel i on an axis of `size` pixels, as affine_grid computes it:
// linspace(-1, 1, size) (filled from both ends), times (size - 1) / size.
FEDRAD_HD inline float affine_base(int i, int size) {
  if (size <= 1) return 0.0f;
  const float step = 2.0f / static_cast<float>(size - 1);
  const float v = i < size / 2 ? -1.0f + step * static_cast<float>(i) : 1.0f - step * static_cast<float>(size - 1 - i);
  return v * static_cast<float>(size - 1) / static_cast<float>(size);
}

// A normalised grid coordinate -> a pixel coordinate (align_corners=false), clamped to the
// border: padding_mode=border repeats the edge pixels.
FEDRAD_HD inline float grid_to_pixel_border(float g, int size) {
  const float x = (g + 1.0f) * (static_cast<float>(size) * 0.5f) - 0.5f;
  return clamp_float(x, 0.0f, static_cast<float>(size - 1));
}

// Output pixel (y, x) of one [h, w] plane under theta (bilinear; the clamped pixel coordinate
// keeps every tap inside, and a tap past the last pixel has weight 0).
FEDRAD_HD inline float affine_sample(const float* src, int h, int w, const float* theta, int y, int x) {
  const float xn = affine_base(x, w), yn = affine_base(y, h);
  const float gx = theta[0] * xn + theta[1] * yn + theta[2];
  const float gy = theta[3] * xn + theta[4] * yn + theta[5];
  const float ix = grid_to_pixel_border(gx, w), iy = grid_to_pixel_border(gy, h);
  const int x0 = static_cast<int>(floorf(ix)), y0 = static_cast<int>(floorf(iy));
  const int x1 = x0 + 1 < w ? x0 + 1 : w - 1, y1 = y0 + 1 < h ? y0 + 1 : h - 1;
  const float wx = ix - static_cast<float>(x0), wy = iy - static_cast<float>(y0);
  const int64_t r0 = static_cast<int64_t>(y0) * w, r1 = static_cast<int64_t>(y1) * w;
  return src[r0 + x0] * ((1 - wx) * (1 - wy)) + src[r0 + x1] * (wx * (1 - wy)) + src[r1 + x0] * ((1 - wx) * wy) +
         src[r1 + x1] * (wx * wy);
}

// Intensity jitter.
FEDRAD_HD inline float jitter(float v, float contrast, float brightness) { return v * contrast + brightness; }

// ---- 3D flips ----

// The source index along an axis of `size` for destination i, reversed when `flip`.
FEDRAD_HD inline int flip_index(int i, int size, bool flip) { return flip ? size - 1 - i : i; }

}  // namespace fedrad::cuda::ops
