// The torch adapter of the preprocessing kernels (cuda/preprocess.h): tensors in, tensors out.
// A CUDA tensor goes to the CUDA launchers (on the current CUDA stream when the torch build has
// CUDA, FEDRAD_TORCH_CUDA; otherwise the legacy default stream 0, which orders with torch's own
// default stream); a CPU tensor goes to the CPU references, split over images with
// at::parallel_for. The result lies on the input's device. Bad arguments throw c10::Error
// (TORCH_CHECK), as torch functions do; the raw-pointer layer underneath returns Status.
//
// Published API (library fedrad_cuda_torch):
//
//   torch::Tensor preprocess_images(const torch::Tensor& raw, const std::vector<PixelParams>& params,
//                                   int out_size, NormaliseMode mode);
//     raw: [N, H, W] (or [N, 1, H, W]) stored pixels, uint8 / int16 / int32 (uint16 data widened
//     to int32, LibTorch has no uint16) / float32. params: N entries (one per image) or 1 (all).
//     -> [N, 1, S, S] float32: pixel conversion (rescale, MONOCHROME1, window) fused with the
//     bilinear resize to S x S, then the per-image normalisation; what training::preprocess_image
//     does for one already-converted image.
//
//   torch::Tensor augment_images(const torch::Tensor& x, bool hflip, torch::Generator& gen);
//     x: [N, C, H, W] float32. Draws each image's parameters from `gen` (a CPU generator) in the
//     order and ranges of training::augment (angle +-10 deg, scale 0.9..1.1, tx, ty +-0.08, a
//     flip with probability 1/2 when hflip, contrast 0.9..1.1, brightness +-0.1) and returns what
//     training::augment(x, hflip, gen) returns (equal within 1e-5 on CPU; tested), so the two
//     leave `gen` in the same state. A drop-in replacement.
//
//   std::vector<AugmentParams> draw_augment_params(int64_t n, bool hflip, torch::Generator& gen);
//   torch::Tensor augment_images(const torch::Tensor& x, const std::vector<AugmentParams>& params);
//     The two halves of the above: the draw, and the fused affine + jitter with given parameters.
//
//   torch::Tensor resize_volumes(const torch::Tensor& x, int d, int h, int w);
//     x: [N, D, H, W] or [N, C, D, H, W] float32 -> same rank, spatial size d x h x w (trilinear,
//     interpolate(mode="trilinear", align_corners=False)).
//
//   torch::Tensor flip_volumes(const torch::Tensor& x, const std::vector<uint8_t>& axes);
//     x: [N, C, D, H, W] (or [N, D, H, W]) float32; axes: N masks of FlipAxis (kFlipDepth=1,
//     kFlipHeight=2, kFlipWidth=4) -> x with each volume's chosen axes reversed.
#pragma once

#include <torch/torch.h>

#include <cstdint>
#include <vector>

#include "cuda/preprocess.h"

namespace fedrad::cuda {

torch::Tensor preprocess_images(const torch::Tensor& raw, const std::vector<PixelParams>& params, int out_size,
                                NormaliseMode mode);

torch::Tensor augment_images(const torch::Tensor& x, bool hflip, torch::Generator& gen);
// The draws of one augmentation batch, as CPU float32 tensors: theta [n, 2, 3] (affine_grid's
// matrices, flips folded in), contrast [n], brightness [n]. training::augment applies them with
// affine_grid + grid_sample, draw_augment_params hands them to the kernel: one place draws.
struct AugmentDraw {
  torch::Tensor theta, contrast, brightness;
};
AugmentDraw draw_augment(int64_t n, bool hflip, torch::Generator& gen);
std::vector<AugmentParams> draw_augment_params(int64_t n, bool hflip, torch::Generator& gen);
torch::Tensor augment_images(const torch::Tensor& x, const std::vector<AugmentParams>& params);

torch::Tensor resize_volumes(const torch::Tensor& x, int d, int h, int w);
torch::Tensor flip_volumes(const torch::Tensor& x, const std::vector<uint8_t>& axes);

}  // namespace fedrad::cuda
