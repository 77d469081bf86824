#include "cuda/torch_ops.h"

#include <ATen/Parallel.h>

#include <cmath>
#include <cstring>
#include <string>

#if defined(FEDRAD_TORCH_CUDA)
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#endif

namespace fedrad::cuda {
namespace {

// Splits [0, n) over torch's intra-op threads; each chunk runs a CPU reference on its images.
template <typename F>
void for_images(int64_t n, F&& f) {
  at::parallel_for(0, n, 1, [&](int64_t begin, int64_t end) { f(begin, end); });
}

#if defined(FEDRAD_HAVE_CUDA)
// The stream the kernels go on, and the device they run on for as long as the guard lives.
struct CudaContext {
#if defined(FEDRAD_TORCH_CUDA)
  explicit CudaContext(const torch::Device& d) : guard(d), stream(c10::cuda::getCurrentCUDAStream(d.index()).stream()) {}
  c10::cuda::CUDAGuard guard;
  cudaStream_t stream;
#else
  // A torch without CUDA has no CUDA tensors, so this is not reached; the legacy default stream
  // would order with torch's default stream.
  explicit CudaContext(const torch::Device&) {}
  cudaStream_t stream = 0;
#endif
};

// Copies n plain structs to `device` (through torch, so that the copy is ordered on torch's
// current stream, before the kernel that reads them).
template <typename S>
torch::Tensor upload(const S* data, int64_t n, const torch::Device& device) {
  auto host = torch::empty({n * static_cast<int64_t>(sizeof(S))}, torch::kUInt8);
  if (n > 0) std::memcpy(host.data_ptr<uint8_t>(), data, static_cast<size_t>(n) * sizeof(S));
  return host.to(device);
}

void check_status(const Status& s) { TORCH_CHECK(s.ok(), s.to_string()); }
#endif

// Calls f(T{}) with T the C++ type of a stored-pixel dtype.
template <typename F>
void dispatch_pixels(torch::ScalarType t, F&& f) {
  switch (t) {
    case torch::kUInt8: return f(uint8_t{});
    case torch::kInt16: return f(int16_t{});
    case torch::kInt32: return f(int32_t{});
    case torch::kFloat32: return f(float{});
    default: TORCH_CHECK(false, "preprocess_images: pixel dtype ", t, " (uint8, int16, int32 or float32)");
  }
}

}  // namespace

torch::Tensor preprocess_images(const torch::Tensor& raw, const std::vector<PixelParams>& params, int out_size,
                                NormaliseMode mode) {
  TORCH_CHECK(raw.dim() == 3 || (raw.dim() == 4 && raw.size(1) == 1), "preprocess_images: raw must be [N, H, W], got ",
              raw.sizes());
  TORCH_CHECK(out_size > 0, "preprocess_images: out_size ", out_size);
  const int64_t n = raw.size(0);
  const int h = static_cast<int>(raw.size(-2)), w = static_cast<int>(raw.size(-1));
  TORCH_CHECK(h > 0 && w > 0, "preprocess_images: empty images ", raw.sizes());
  TORCH_CHECK(params.size() == static_cast<size_t>(n) || params.size() == 1,
              "preprocess_images: ", params.size(), " PixelParams for ", n, " images (want N or 1)");
  std::vector<PixelParams> per_image = params;
  if (per_image.size() == 1 && n != 1) per_image.assign(static_cast<size_t>(n), params[0]);
  const auto src = raw.contiguous();
  auto out = torch::empty({n, 1, out_size, out_size}, src.options().dtype(torch::kFloat32));
  if (n == 0) return out;
  const ResizeParams rp{h, w, out_size, out_size};
  dispatch_pixels(src.scalar_type(), [&](auto tag) {
    using T = decltype(tag);
    const T* in = src.data_ptr<T>();
    float* dst = out.data_ptr<float>();
    if (src.is_cuda()) {
#if defined(FEDRAD_HAVE_CUDA)
      CudaContext ctx(src.device());
      const auto dparams = upload(per_image.data(), n, src.device());
      check_status(launch_preprocess<T>(ctx.stream, n, in, reinterpret_cast<const PixelParams*>(dparams.data_ptr()),
                                        dst, rp, mode));
#else
      TORCH_CHECK(false, "preprocess_images: a CUDA tensor, and this build has no CUDA kernels");
#endif
      return;
    }
    const int64_t in_plane = static_cast<int64_t>(h) * w, out_plane = static_cast<int64_t>(out_size) * out_size;
    for_images(n, [&](int64_t b, int64_t e) {
      preprocess_cpu<T>(e - b, in + b * in_plane, per_image.data() + b, dst + b * out_plane, rp, mode);
    });
  });
  return out;
}

AugmentDraw draw_augment(int64_t n, bool hflip, torch::Generator& gen) {
  // Random shifts (fractions of half the image: grid units are [-1, 1]), rotations of up to 10
  // degrees, scaling by 0.9..1.1, optional horizontal flips, then contrast x0.9..1.1 and
  // brightness +-0.1 (inputs are roughly in [-1, 1]); drawn in this order, float32 arithmetic.
  auto uniform = [&](double lo, double hi) { return torch::rand({n}, gen) * (hi - lo) + lo; };
  const double kPi = 3.14159265358979323846;
  auto angle = uniform(-10, 10) * (kPi / 180.0);
  auto scale = uniform(0.9, 1.1);
  auto tx = uniform(-0.08, 0.08);
  auto ty = uniform(-0.08, 0.08);
  auto flip = hflip ? torch::where(torch::rand({n}, gen) < 0.5, -1.0, 1.0) : torch::ones({n});
  auto cos = torch::cos(angle) / scale, sin = torch::sin(angle) / scale;
  AugmentDraw d;
  d.theta = torch::stack({torch::stack({cos * flip, -sin, tx}, 1), torch::stack({sin * flip, cos, ty}, 1)}, 1);
  d.contrast = uniform(0.9, 1.1);
  d.brightness = uniform(-0.1, 0.1);
  return d;
}

std::vector<AugmentParams> draw_augment_params(int64_t n, bool hflip, torch::Generator& gen) {
  const AugmentDraw d = draw_augment(n, hflip, gen);
  auto theta = d.theta.to(torch::kFloat32).contiguous();
  auto contrast = d.contrast.to(torch::kFloat32).contiguous();
  auto brightness = d.brightness.to(torch::kFloat32).contiguous();
  std::vector<AugmentParams> out(static_cast<size_t>(n));
  const float* t = theta.data_ptr<float>();
  const float* c = contrast.data_ptr<float>();
  const float* b = brightness.data_ptr<float>();
  for (int64_t i = 0; i < n; ++i) {
    for (int k = 0; k < 6; ++k) out[i].theta[k] = t[i * 6 + k];
    out[i].contrast = c[i];
    out[i].brightness = b[i];
  }
  return out;
}

torch::Tensor augment_images(const torch::Tensor& x, const std::vector<AugmentParams>& params) {
  TORCH_CHECK(x.dim() == 4, "augment_images: x must be [N, C, H, W], got ", x.sizes());
  TORCH_CHECK(x.scalar_type() == torch::kFloat32, "augment_images: x must be float32, got ", x.scalar_type());
  const int64_t n = x.size(0);
  TORCH_CHECK(params.size() == static_cast<size_t>(n), "augment_images: ", params.size(), " AugmentParams for ", n,
              " images");
  const auto src = x.contiguous();
  auto out = torch::empty_like(src);
  const ImageShape s{static_cast<int>(x.size(1)), static_cast<int>(x.size(2)), static_cast<int>(x.size(3))};
  if (src.numel() == 0) return out;
  const float* in = src.data_ptr<float>();
  float* dst = out.data_ptr<float>();
  if (src.is_cuda()) {
#if defined(FEDRAD_HAVE_CUDA)
    CudaContext ctx(src.device());
    const auto dparams = upload(params.data(), n, src.device());
    check_status(launch_augment(ctx.stream, n, in, reinterpret_cast<const AugmentParams*>(dparams.data_ptr()), dst, s));
    return out;
#else
    TORCH_CHECK(false, "augment_images: a CUDA tensor, and this build has no CUDA kernels");
#endif
  }
  const int64_t stride = static_cast<int64_t>(s.channels) * s.height * s.width;
  for_images(n, [&](int64_t b, int64_t e) { augment_cpu(e - b, in + b * stride, params.data() + b, dst + b * stride, s); });
  return out;
}

torch::Tensor augment_images(const torch::Tensor& x, bool hflip, torch::Generator& gen) {
  TORCH_CHECK(x.dim() == 4, "augment_images: x must be [N, C, H, W], got ", x.sizes());
  return augment_images(x, draw_augment_params(x.size(0), hflip, gen));
}

torch::Tensor resize_volumes(const torch::Tensor& x, int d, int h, int w) {
  TORCH_CHECK(x.dim() == 4 || x.dim() == 5, "resize_volumes: x must be [N, D, H, W] or [N, C, D, H, W], got ", x.sizes());
  TORCH_CHECK(x.scalar_type() == torch::kFloat32, "resize_volumes: x must be float32, got ", x.scalar_type());
  TORCH_CHECK(d > 0 && h > 0 && w > 0, "resize_volumes: output size ", d, "x", h, "x", w);
  const auto src = x.contiguous();
  std::vector<int64_t> sizes = src.sizes().vec();
  const Resize3dParams p{static_cast<int>(sizes[sizes.size() - 3]), static_cast<int>(sizes[sizes.size() - 2]),
                         static_cast<int>(sizes[sizes.size() - 1]), d, h, w};
  const int64_t n = src.numel() / std::max<int64_t>(1, static_cast<int64_t>(p.in_d) * p.in_h * p.in_w);
  sizes[sizes.size() - 3] = d, sizes[sizes.size() - 2] = h, sizes[sizes.size() - 1] = w;
  auto out = torch::empty(sizes, src.options());
  if (out.numel() == 0) return out;
  const float* in = src.data_ptr<float>();
  float* dst = out.data_ptr<float>();
  if (src.is_cuda()) {
#if defined(FEDRAD_HAVE_CUDA)
    CudaContext ctx(src.device());
    check_status(launch_resize_trilinear(ctx.stream, n, in, dst, p));
    return out;
#else
    TORCH_CHECK(false, "resize_volumes: a CUDA tensor, and this build has no CUDA kernels");
#endif
  }
  const int64_t in_vol = static_cast<int64_t>(p.in_d) * p.in_h * p.in_w, out_vol = static_cast<int64_t>(d) * h * w;
  for_images(n, [&](int64_t b, int64_t e) { resize_trilinear_cpu(e - b, in + b * in_vol, dst + b * out_vol, p); });
  return out;
}

torch::Tensor flip_volumes(const torch::Tensor& x, const std::vector<uint8_t>& axes) {
  TORCH_CHECK(x.dim() == 4 || x.dim() == 5, "flip_volumes: x must be [N, C, D, H, W] or [N, D, H, W], got ", x.sizes());
  TORCH_CHECK(x.scalar_type() == torch::kFloat32, "flip_volumes: x must be float32, got ", x.scalar_type());
  const int64_t n = x.size(0);
  TORCH_CHECK(axes.size() == static_cast<size_t>(n), "flip_volumes: ", axes.size(), " masks for ", n, " volumes");
  const auto src = x.contiguous();
  auto out = torch::empty_like(src);
  const VolumeShape s{x.dim() == 5 ? static_cast<int>(x.size(1)) : 1, static_cast<int>(x.size(-3)),
                      static_cast<int>(x.size(-2)), static_cast<int>(x.size(-1))};
  if (src.numel() == 0) return out;
  const float* in = src.data_ptr<float>();
  float* dst = out.data_ptr<float>();
  if (src.is_cuda()) {
#if defined(FEDRAD_HAVE_CUDA)
    CudaContext ctx(src.device());
    const auto daxes = upload(axes.data(), n, src.device());
    check_status(launch_flip3d(ctx.stream, n, in, daxes.data_ptr<uint8_t>(), dst, s));
    return out;
#else
    TORCH_CHECK(false, "flip_volumes: a CUDA tensor, and this build has no CUDA kernels");
#endif
  }
  const int64_t stride = static_cast<int64_t>(s.channels) * s.depth * s.height * s.width;
  for_images(n, [&](int64_t b, int64_t e) { flip3d_cpu(e - b, in + b * stride, axes.data() + b, dst + b * stride, s); });
  return out;
}

}  // namespace fedrad::cuda
