// A compact ResNet-style image classifier (He et al. 2016): a 3x3 stem, `stages` residual stages
// of two 3x3 convolutions each (channels double and resolution halves from the second stage on),
// global average pooling, dropout and one logit (binary: pneumonia vs normal).
//
// Parameter names are stable and mirror models/python/fedrad_models.py, so a state dict saved
// by fedrad loads into the PyTorch definition as is. No I/O here.
#pragma once

#include <string>

#include <torch/nn/module.h>
#include <torch/nn/modules/container/modulelist.h>
#include <torch/nn/modules/container/any.h>
#include <torch/nn/modules/conv.h>
#include <torch/nn/modules/dropout.h>
#include <torch/nn/modules/linear.h>
#include <torch/nn/pimpl.h>

namespace fedrad::models {

struct ClassifierOptions {
  int in_channels = 1;
  int width = 16;               // channels of the first stage
  int stages = 3;
  std::string norm = "batch";   // batch | group | instance (group/instance keep no running stats)
  double dropout = 0.0;
  int num_outputs = 1;          // logits
};

// A normalisation layer chosen by name; owns its module.
torch::nn::AnyModule make_norm(const std::string& kind, int channels);

class ResidualBlockImpl : public torch::nn::Module {
 public:
  ResidualBlockImpl(int in_channels, int out_channels, int stride, const std::string& norm);
  torch::Tensor forward(const torch::Tensor& x);

 private:
  torch::nn::Conv2d conv1_{nullptr}, conv2_{nullptr}, down_conv_{nullptr};
  torch::nn::AnyModule norm1_, norm2_, down_norm_;
  bool has_down_ = false;
};
TORCH_MODULE(ResidualBlock);

class ClassifierImpl : public torch::nn::Module {
 public:
  explicit ClassifierImpl(const ClassifierOptions& options);
  // x: [N, in_channels, H, W] -> logits [N, num_outputs]
  torch::Tensor forward(const torch::Tensor& x);
  const ClassifierOptions& options() const { return options_; }

 private:
  ClassifierOptions options_;
  torch::nn::Conv2d stem_conv_{nullptr};
  torch::nn::AnyModule stem_norm_;
  torch::nn::ModuleList blocks_;
  torch::nn::Dropout dropout_{nullptr};
  torch::nn::Linear head_{nullptr};
};
TORCH_MODULE(Classifier);

}  // namespace fedrad::models
