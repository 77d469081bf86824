// U-Net (Ronneberger et al. 2015; 3D as in Cicek et al. 2016) for segmentation in 2D or 3D.
//
// `depth` resolution levels; level l has width * 2^l channels and two 3x3(x3) convolutions, each
// followed by a normalisation and a LeakyReLU (nnU-Net's choice). Max pooling goes down, a
// transposed convolution (kernel 2, stride 2) goes up, the skip connection is concatenated, and a
// 1x1(x1) convolution gives one logit per class (background + labels).
//
// Normalisation: instance or group norm by default (no running statistics, so it behaves the same
// with batches of one or two patches, and per-sample gradients stay per-sample for DP-SGD); batch
// norm is available. Input sizes must be divisible by 2^(depth-1) along every axis
// (required_multiple()). Parameter names mirror models/python/fedrad_models.py (UNet). No I/O here.
#pragma once

#include <string>
#include <vector>

#include <torch/nn/module.h>
#include <torch/nn/modules/container/any.h>
#include <torch/nn/modules/container/modulelist.h>
#include <torch/nn/pimpl.h>

namespace fedrad::models {

struct UNetOptions {
  int dims = 3;                  // 2: [N, C, H, W]; 3: [N, C, D, H, W]
  int in_channels = 1;           // e.g. 4 for the BraTS sequences
  int out_channels = 2;          // classes, background included
  int width = 8;                 // channels of the first level
  int depth = 3;                 // resolution levels (1 = no pooling)
  std::string norm = "instance"; // instance | group | batch
};

class UNetBlockImpl : public torch::nn::Module {
 public:
  UNetBlockImpl(int dims, int in_channels, int out_channels, const std::string& norm);
  torch::Tensor forward(const torch::Tensor& x);

 private:
  torch::nn::AnyModule conv1_, norm1_, conv2_, norm2_;
};
TORCH_MODULE(UNetBlock);

class UNetImpl : public torch::nn::Module {
 public:
  explicit UNetImpl(const UNetOptions& options);
  // x: [N, in_channels, spatial...] -> logits [N, out_channels, spatial...]
  torch::Tensor forward(const torch::Tensor& x);
  const UNetOptions& options() const { return options_; }
  // Every spatial size must be a multiple of this.
  int required_multiple() const { return 1 << (options_.depth - 1); }

 private:
  UNetOptions options_;
  torch::nn::ModuleList enc_, up_, dec_;
  std::vector<torch::nn::AnyModule> ups_;  // the same modules as up_, callable
  torch::nn::AnyModule head_;
};
TORCH_MODULE(UNet);

}  // namespace fedrad::models
