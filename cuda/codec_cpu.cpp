// CPU references of the codec kernels (cuda/codec.h); cuda/codec.cu has the same semantics.
#include <algorithm>
#include <cmath>

#include "cuda/codec.h"

namespace fedrad::cuda {

void sample_abs_cpu(int64_t n, const float* x, float* sample, const SampleParams& p) {
  const int64_t stride = std::max<int64_t>(p.stride, 1);
  for (int64_t i = 0, j = 0; i < n; i += stride, ++j) sample[j] = std::fabs(x[i]);
}

void mask_above_cpu(int64_t n, const float* x, uint8_t* mask, const ThresholdParams& p) {
  for (int64_t i = 0; i < n; ++i) mask[i] = std::fabs(x[i]) >= p.threshold ? 1 : 0;
}

void quantize_cpu(int64_t n, const float* x, uint8_t* codes, float* scales, const QuantParams& p) {
  const int levels = quant_levels(p.bits);
  const float fl = static_cast<float>(levels);
  const int64_t nb = num_blocks(n, p.block);
  for (int64_t b = 0; b < nb; ++b) {
    const int64_t lo = b * p.block, hi = std::min(n, lo + p.block);
    float s = 0;
    for (int64_t i = lo; i < hi; ++i) s = std::max(s, std::fabs(x[i]));
    scales[b] = s;
    const float inv = s > 0 ? fl / s : 0.0f;
    for (int64_t i = lo; i < hi; ++i) {
      const float scaled = x[i] * inv;  // separate statements: no contraction into an FMA
      const float shifted = scaled + hash_uniform(p.seed, static_cast<uint64_t>(i));
      int q = static_cast<int>(std::floor(shifted));
      q = std::min(levels, std::max(-levels, q));
      codes[i] = static_cast<uint8_t>(q + levels);
    }
  }
}

void dequantize_cpu(int64_t n, const uint8_t* codes, const float* scales, float* out, const QuantParams& p) {
  const int levels = quant_levels(p.bits);
  const float fl = static_cast<float>(levels);
  for (int64_t i = 0; i < n; ++i) {
    const float step = scales[i / p.block] / fl;
    out[i] = static_cast<float>(static_cast<int>(codes[i]) - levels) * step;
  }
}

void scatter_add_cpu(int64_t n, const int64_t* index, const float* values, float* dst, float weight) {
  for (int64_t i = 0; i < n; ++i) {
    const float v = weight * values[i];
    dst[index[i]] += v;
  }
}

}  // namespace fedrad::cuda
