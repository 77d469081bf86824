// CPU references of the preprocessing kernels: loops over the per-element functions of
// preprocess_ops.h, which the CUDA kernels (preprocess.cu) call too.
#include <algorithm>
#include <cmath>
#include <vector>

#include "cuda/preprocess.h"
#include "cuda/preprocess_ops.h"

namespace fedrad::cuda {
namespace {

// The taps of every output coordinate along one axis, computed once per call.
std::vector<ops::Tap> taps(int in_size, int out_size) {
  std::vector<ops::Tap> t(static_cast<size_t>(std::max(out_size, 0)));
  for (int i = 0; i < out_size; ++i) t[static_cast<size_t>(i)] = ops::linear_tap(i, in_size, out_size);
  return t;
}

template <typename T, typename Conv>
void resize_plane(const T* src, float* dst, const ResizeParams& p, const std::vector<ops::Tap>& ty,
                  const std::vector<ops::Tap>& tx, const Conv& conv) {
  for (int y = 0; y < p.out_h; ++y)
    for (int x = 0; x < p.out_w; ++x)
      dst[static_cast<int64_t>(y) * p.out_w + x] = ops::bilinear_sample(src, p.in_w, ty[y], tx[x], conv);
}

}  // namespace

void resize_bilinear_cpu(int64_t n, const float* in, float* out, const ResizeParams& p) {
  const int64_t in_plane = static_cast<int64_t>(p.in_h) * p.in_w;
  const int64_t out_plane = static_cast<int64_t>(p.out_h) * p.out_w;
  const auto ty = taps(p.in_h, p.out_h), tx = taps(p.in_w, p.out_w);
  for (int64_t img = 0; img < n; ++img) resize_plane(in + img * in_plane, out + img * out_plane, p, ty, tx, ops::AsFloat{});
}

void normalise_cpu(int64_t n, const float* in, float* out, const NormaliseParams& p) {
  const int64_t m = p.pixels_per_image;
  for (int64_t img = 0; img < n; ++img) {
    const float* src = in + img * m;
    float* dst = out + img * m;
    if (p.mode == NormaliseMode::kMinMax) {
      float lo = src[0], hi = src[0];
      for (int64_t i = 1; i < m; ++i) lo = std::min(lo, src[i]), hi = std::max(hi, src[i]);
      const float range = hi - lo;
      for (int64_t i = 0; i < m; ++i) dst[i] = range > p.eps ? ((src[i] - lo) / range - 0.5f) / 0.5f : 0.0f;
    } else {
      double sum = 0, sq = 0;
      for (int64_t i = 0; i < m; ++i) sum += src[i], sq += static_cast<double>(src[i]) * src[i];
      const double mean = sum / m;
      const double sd = std::sqrt(std::max(0.0, sq / m - mean * mean));
      for (int64_t i = 0; i < m; ++i)
        dst[i] = sd > p.eps ? static_cast<float>((src[i] - mean) / sd) : 0.0f;
    }
  }
}

template <typename T>
void pixels_to_float_cpu(int64_t n, int64_t pixels_per_image, const T* in, const PixelParams* params, float* out) {
  for (int64_t img = 0; img < n; ++img) {
    const PixelParams pp = params[img];
    const T* src = in + img * pixels_per_image;
    float* dst = out + img * pixels_per_image;
    for (int64_t i = 0; i < pixels_per_image; ++i) dst[i] = ops::pixel_to_float(src[i], pp);
  }
}

template <typename T>
void pixels_resize_cpu(int64_t n, const T* in, const PixelParams* params, float* out, const ResizeParams& p) {
  const int64_t in_plane = static_cast<int64_t>(p.in_h) * p.in_w;
  const int64_t out_plane = static_cast<int64_t>(p.out_h) * p.out_w;
  const auto ty = taps(p.in_h, p.out_h), tx = taps(p.in_w, p.out_w);
  for (int64_t img = 0; img < n; ++img)
    resize_plane(in + img * in_plane, out + img * out_plane, p, ty, tx, ops::ConvertPixel<T>{params[img]});
}

template <typename T>
void preprocess_cpu(int64_t n, const T* in, const PixelParams* params, float* out, const ResizeParams& p,
                    NormaliseMode mode) {
  pixels_resize_cpu(n, in, params, out, p);
  NormaliseParams np;
  np.pixels_per_image = static_cast<int64_t>(p.out_h) * p.out_w;
  np.mode = mode;
  normalise_cpu(n, out, out, np);
}

#define FEDRAD_PIXEL_TYPE(T)                                                                                    \
  template void pixels_to_float_cpu<T>(int64_t, int64_t, const T*, const PixelParams*, float*);                 \
  template void pixels_resize_cpu<T>(int64_t, const T*, const PixelParams*, float*, const ResizeParams&);       \
  template void preprocess_cpu<T>(int64_t, const T*, const PixelParams*, float*, const ResizeParams&, NormaliseMode);
FEDRAD_FOR_EACH_PIXEL_TYPE(FEDRAD_PIXEL_TYPE)
#undef FEDRAD_PIXEL_TYPE

void resize_trilinear_cpu(int64_t n, const float* in, float* out, const Resize3dParams& p) {
  const int64_t in_vol = static_cast<int64_t>(p.in_d) * p.in_h * p.in_w;
  const int64_t out_vol = static_cast<int64_t>(p.out_d) * p.out_h * p.out_w;
  const auto td = taps(p.in_d, p.out_d), ty = taps(p.in_h, p.out_h), tx = taps(p.in_w, p.out_w);
  for (int64_t v = 0; v < n; ++v) {
    const float* src = in + v * in_vol;
    float* dst = out + v * out_vol;
    for (int z = 0; z < p.out_d; ++z)
      for (int y = 0; y < p.out_h; ++y)
        for (int x = 0; x < p.out_w; ++x)
          *dst++ = ops::trilinear_sample(src, p.in_h, p.in_w, td[z], ty[y], tx[x]);
  }
}

void augment_cpu(int64_t n, const float* in, const AugmentParams* params, float* out, const ImageShape& s) {
  const int64_t plane = static_cast<int64_t>(s.height) * s.width;
  for (int64_t img = 0; img < n; ++img) {
    const AugmentParams a = params[img];
    for (int c = 0; c < s.channels; ++c) {
      const int64_t offset = (img * s.channels + c) * plane;
      const float* src = in + offset;
      float* dst = out + offset;
      for (int y = 0; y < s.height; ++y)
        for (int x = 0; x < s.width; ++x)
          dst[static_cast<int64_t>(y) * s.width + x] =
              ops::jitter(ops::affine_sample(src, s.height, s.width, a.theta, y, x), a.contrast, a.brightness);
    }
  }
}

void flip3d_cpu(int64_t n, const float* in, const uint8_t* axes, float* out, const VolumeShape& s) {
  const int64_t plane = static_cast<int64_t>(s.height) * s.width;
  const int64_t vol = plane * s.depth;
  for (int64_t v = 0; v < n; ++v) {
    const uint8_t a = axes[v];
    for (int c = 0; c < s.channels; ++c) {
      const float* src = in + (v * s.channels + c) * vol;
      float* dst = out + (v * s.channels + c) * vol;
      for (int z = 0; z < s.depth; ++z)
        for (int y = 0; y < s.height; ++y)
          for (int x = 0; x < s.width; ++x) {
            const int sz = ops::flip_index(z, s.depth, a & kFlipDepth);
            const int sy = ops::flip_index(y, s.height, a & kFlipHeight);
            const int sx = ops::flip_index(x, s.width, a & kFlipWidth);
            *dst++ = src[sz * plane + static_cast<int64_t>(sy) * s.width + sx];
          }
    }
  }
}

}  // namespace fedrad::cuda
