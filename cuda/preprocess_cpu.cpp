#include <algorithm>
#include <cmath>

#include "cuda/preprocess.h"

namespace fedrad::cuda {
namespace {

// One output coordinate's two source indices and the weight of the second (half-pixel centres).
struct Tap {
  int i0, i1;
  float w1;
};

Tap tap(int dst, int in_size, int out_size) {
  const float scale = static_cast<float>(in_size) / static_cast<float>(out_size);
  float src = (static_cast<float>(dst) + 0.5f) * scale - 0.5f;
  src = std::max(src, 0.0f);
  const int i0 = std::min(static_cast<int>(src), in_size - 1);
  const int i1 = std::min(i0 + 1, in_size - 1);
  return {i0, i1, src - static_cast<float>(i0)};
}

}  // namespace

void resize_bilinear_cpu(int64_t n, const float* in, float* out, const ResizeParams& p) {
  const int64_t in_plane = static_cast<int64_t>(p.in_h) * p.in_w;
  const int64_t out_plane = static_cast<int64_t>(p.out_h) * p.out_w;
  for (int64_t img = 0; img < n; ++img) {
    const float* src = in + img * in_plane;
    float* dst = out + img * out_plane;
    for (int y = 0; y < p.out_h; ++y) {
      const Tap ty = tap(y, p.in_h, p.out_h);
      for (int x = 0; x < p.out_w; ++x) {
        const Tap tx = tap(x, p.in_w, p.out_w);
        const float top = src[ty.i0 * p.in_w + tx.i0] * (1 - tx.w1) + src[ty.i0 * p.in_w + tx.i1] * tx.w1;
        const float bottom = src[ty.i1 * p.in_w + tx.i0] * (1 - tx.w1) + src[ty.i1 * p.in_w + tx.i1] * tx.w1;
        dst[y * p.out_w + x] = top * (1 - ty.w1) + bottom * ty.w1;
      }
    }
  }
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

}  // namespace fedrad::cuda
