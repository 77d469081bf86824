#include "models/classifier.h"

#include <stdexcept>

#include <torch/nn/functional/activation.h>
#include <torch/nn/functional/pooling.h>
#include <torch/nn/modules/batchnorm.h>
#include <torch/nn/modules/normalization.h>

namespace fedrad::models {
namespace {

torch::nn::Conv2d conv3x3(int in, int out, int stride) {
  return torch::nn::Conv2d(torch::nn::Conv2dOptions(in, out, 3).stride(stride).padding(1).bias(false));
}

}  // namespace

torch::nn::AnyModule make_norm(const std::string& kind, int channels) {
  if (kind == "batch") return torch::nn::AnyModule(torch::nn::BatchNorm2d(channels));
  // Group norm with 8 groups (or fewer for narrow layers); instance norm is group norm with one
  // channel per group, which keeps the affine parameters and no running statistics.
  if (kind == "group") return torch::nn::AnyModule(torch::nn::GroupNorm(std::min(8, channels), channels));
  if (kind == "instance") return torch::nn::AnyModule(torch::nn::GroupNorm(channels, channels));
  throw std::invalid_argument("unknown normalisation '" + kind + "' (expected batch, group or instance)");
}

ResidualBlockImpl::ResidualBlockImpl(int in_channels, int out_channels, int stride, const std::string& norm)
    : has_down_(stride != 1 || in_channels != out_channels) {
  conv1_ = register_module("conv1", conv3x3(in_channels, out_channels, stride));
  norm1_ = make_norm(norm, out_channels);
  register_module("norm1", norm1_.ptr());
  conv2_ = register_module("conv2", conv3x3(out_channels, out_channels, 1));
  norm2_ = make_norm(norm, out_channels);
  register_module("norm2", norm2_.ptr());
  if (has_down_) {
    down_conv_ = register_module(
        "down_conv", torch::nn::Conv2d(torch::nn::Conv2dOptions(in_channels, out_channels, 1).stride(stride).bias(false)));
    down_norm_ = make_norm(norm, out_channels);
    register_module("down_norm", down_norm_.ptr());
  }
}

torch::Tensor ResidualBlockImpl::forward(const torch::Tensor& x) {
  auto out = torch::relu(norm1_.forward(conv1_->forward(x)));
  out = norm2_.forward(conv2_->forward(out));
  auto shortcut = has_down_ ? down_norm_.forward(down_conv_->forward(x)) : x;
  return torch::relu(out + shortcut);
}

ClassifierImpl::ClassifierImpl(const ClassifierOptions& options) : options_(options) {
  stem_conv_ = register_module("stem_conv", conv3x3(options.in_channels, options.width, 1));
  stem_norm_ = make_norm(options.norm, options.width);
  register_module("stem_norm", stem_norm_.ptr());
  blocks_ = register_module("blocks", torch::nn::ModuleList());
  int channels = options.width;
  for (int s = 0; s < options.stages; ++s) {
    const int out = options.width << s;
    blocks_->push_back(ResidualBlock(channels, out, s == 0 ? 1 : 2, options.norm));
    channels = out;
  }
  dropout_ = register_module("dropout", torch::nn::Dropout(options.dropout));
  head_ = register_module("head", torch::nn::Linear(channels, options.num_outputs));
}

torch::Tensor ClassifierImpl::forward(const torch::Tensor& x) {
  auto h = torch::relu(stem_norm_.forward(stem_conv_->forward(x)));
  for (const auto& block : *blocks_) h = block->as<ResidualBlock>()->forward(h);
  h = h.mean({2, 3});  // global average pooling
  return head_->forward(dropout_->forward(h));
}

}  // namespace fedrad::models
