#include "models/unet.h"

#include <stdexcept>

#include <torch/nn/functional/activation.h>
#include <torch/nn/functional/pooling.h>
#include <torch/nn/modules/batchnorm.h>
#include <torch/nn/modules/conv.h>
#include <torch/nn/modules/normalization.h>

namespace fedrad::models {
namespace {

torch::nn::AnyModule conv(int dims, int in, int out, int kernel, bool bias) {
  const int pad = kernel / 2;
  if (dims == 2)
    return torch::nn::AnyModule(torch::nn::Conv2d(torch::nn::Conv2dOptions(in, out, kernel).padding(pad).bias(bias)));
  return torch::nn::AnyModule(torch::nn::Conv3d(torch::nn::Conv3dOptions(in, out, kernel).padding(pad).bias(bias)));
}

torch::nn::AnyModule up_conv(int dims, int in, int out) {
  if (dims == 2)
    return torch::nn::AnyModule(torch::nn::ConvTranspose2d(torch::nn::ConvTranspose2dOptions(in, out, 2).stride(2)));
  return torch::nn::AnyModule(torch::nn::ConvTranspose3d(torch::nn::ConvTranspose3dOptions(in, out, 2).stride(2)));
}

// Group norm works for any number of spatial dims; instance norm is group norm with one channel
// per group (affine, no running statistics), as in models/classifier.cpp.
torch::nn::AnyModule norm(int dims, const std::string& kind, int channels) {
  if (kind == "instance") return torch::nn::AnyModule(torch::nn::GroupNorm(channels, channels));
  if (kind == "group") return torch::nn::AnyModule(torch::nn::GroupNorm(std::min(8, channels), channels));
  if (kind == "batch") {
    if (dims == 2) return torch::nn::AnyModule(torch::nn::BatchNorm2d(channels));
    return torch::nn::AnyModule(torch::nn::BatchNorm3d(channels));
  }
  throw std::invalid_argument("unknown normalisation '" + kind + "' (expected instance, group or batch)");
}

}  // namespace

UNetBlockImpl::UNetBlockImpl(int dims, int in_channels, int out_channels, const std::string& norm_kind) {
  conv1_ = conv(dims, in_channels, out_channels, 3, /*bias=*/false);
  register_module("conv1", conv1_.ptr());
  norm1_ = norm(dims, norm_kind, out_channels);
  register_module("norm1", norm1_.ptr());
  conv2_ = conv(dims, out_channels, out_channels, 3, /*bias=*/false);
  register_module("conv2", conv2_.ptr());
  norm2_ = norm(dims, norm_kind, out_channels);
  register_module("norm2", norm2_.ptr());
}

torch::Tensor UNetBlockImpl::forward(const torch::Tensor& x) {
  namespace F = torch::nn::functional;
  const auto act = F::LeakyReLUFuncOptions().negative_slope(0.01);
  auto h = F::leaky_relu(norm1_.forward(conv1_.forward(x)), act);
  return F::leaky_relu(norm2_.forward(conv2_.forward(h)), act);
}

UNetImpl::UNetImpl(const UNetOptions& o) : options_(o) {
  if (o.dims != 2 && o.dims != 3) throw std::invalid_argument("UNet: dims must be 2 or 3");
  if (o.depth < 1 || o.depth > 6) throw std::invalid_argument("UNet: depth must be in 1..6");
  if (o.in_channels < 1 || o.out_channels < 2 || o.width < 1)
    throw std::invalid_argument("UNet: needs in_channels >= 1, out_channels >= 2, width >= 1");
  enc_ = register_module("enc", torch::nn::ModuleList());
  up_ = register_module("up", torch::nn::ModuleList());
  dec_ = register_module("dec", torch::nn::ModuleList());
  int in = o.in_channels;
  for (int l = 0; l < o.depth; ++l) {
    enc_->push_back(UNetBlock(o.dims, in, o.width << l, o.norm));
    in = o.width << l;
  }
  // up.i / dec.i bring level i+1 back to level i (i = depth-2 .. 0; stored in that index order).
  for (int l = 0; l + 1 < o.depth; ++l) {
    ups_.push_back(up_conv(o.dims, o.width << (l + 1), o.width << l));
    up_->push_back(ups_.back().ptr());
    dec_->push_back(UNetBlock(o.dims, 2 * (o.width << l), o.width << l, o.norm));
  }
  head_ = conv(o.dims, o.width, o.out_channels, 1, /*bias=*/true);
  register_module("head", head_.ptr());
}

torch::Tensor UNetImpl::forward(const torch::Tensor& x) {
  namespace F = torch::nn::functional;
  const int m = required_multiple();
  for (int64_t d = 2; d < x.dim(); ++d)
    if (x.size(d) % m != 0)
      throw std::invalid_argument("UNet: spatial size " + std::to_string(x.size(d)) + " is not a multiple of " +
                                  std::to_string(m) + " (depth " + std::to_string(options_.depth) + ")");
  std::vector<torch::Tensor> skips;
  torch::Tensor h = x;
  for (int l = 0; l < options_.depth; ++l) {
    if (l > 0)
      h = options_.dims == 2 ? F::max_pool2d(h, F::MaxPool2dFuncOptions(2)) : F::max_pool3d(h, F::MaxPool3dFuncOptions(2));
    h = enc_[l]->as<UNetBlock>()->forward(h);
    skips.push_back(h);
  }
  for (int l = options_.depth - 2; l >= 0; --l) {
    h = ups_[l].forward(h);
    h = dec_[l]->as<UNetBlock>()->forward(torch::cat({h, skips[l]}, 1));
  }
  return head_.forward(h);
}

}  // namespace fedrad::models
