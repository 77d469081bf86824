// Where a site trains and how: device selection (train.device), cuDNN autotuning, mixed precision
// (autocast + dynamic loss scaling, as torch.cuda.amp) and channels-last. The same code builds
// against Debian's CPU LibTorch 1.13 and a CUDA LibTorch 2.x; the autocast API differs between
// them, which is hidden here.
#pragma once

#include <string>
#include <vector>

#include <torch/types.h>

#include "common/config.h"
#include "common/status.h"

namespace fedrad::training {

// "cpu", "cuda" (device 0) or "cuda:N" -> a torch device this process can use; a clear error
// naming the key and the reason when it cannot (a CPU-only LibTorch, no device, N out of range).
StatusOr<torch::Device> resolve_device(const std::string& spec);

// One line for logs and reports: "cpu (2 threads)" or "cuda:0 (NVIDIA H100 80GB HBM3)".
std::string describe_device(const torch::Device& device);

// Applies the process-wide settings of train: cuDNN autotuning when training on CUDA.
void configure_backend(const TrainConfig& train, const torch::Device& device);

// What every process that trains does first: `threads` CPU threads for LibTorch (0 = one per
// core), the device `spec` names (resolve_device) and configure_backend on it.
StatusOr<torch::Device> prepare_device(const TrainConfig& train, const std::string& spec, int threads);

// How a forward/backward pass runs on the device: the model's activations' memory format and
// mixed precision. Built from the config by precision_for().
struct Precision {
  bool amp = false;                              // autocast on the device
  torch::ScalarType amp_dtype = torch::kFloat16; // kFloat16 (loss scaling) or kBFloat16
  bool channels_last = false;                    // 4-D inputs and weights in NHWC
};
Precision precision_for(const TrainConfig& train, const torch::Device& device);

// Autocast on CUDA for a scope (nested scopes allowed), like `with torch.autocast("cuda")`.
// A no-op when `enabled` is false.
class AutocastScope {
 public:
  AutocastScope(bool enabled, torch::ScalarType dtype);
  ~AutocastScope();
  AutocastScope(const AutocastScope&) = delete;
  AutocastScope& operator=(const AutocastScope&) = delete;

 private:
  bool enabled_;
  bool prev_enabled_ = false;
  torch::ScalarType prev_dtype_ = torch::kFloat16;
};

// A sum of per-batch losses that does not stop a GPU at every batch: on the CPU it adds doubles,
// on a device it adds on the device and syncs only when sum() is read.
class RunningLoss {
 public:
  void add(const torch::Tensor& loss, double weight = 1.0);
  double sum() const;
  bool on_host() const { return !device_sum_.defined(); }

 private:
  double host_sum_ = 0;
  torch::Tensor device_sum_;
};

// Whether CUDA autocast is on in this thread (for tests and assertions).
bool cuda_autocast_enabled();

// Dynamic loss scaling for float16 training (the semantics of torch.cuda.amp.GradScaler): the loss
// is multiplied by `scale` before backward; before the optimiser step the gradients are divided by
// it and checked; a step whose gradients hold an inf or NaN is skipped and the scale halved; after
// `growth_interval` clean steps in a row the scale doubles. Works on any device (tested on CPU).
class GradScaler {
 public:
  struct Options {
    double init_scale = 65536.0;
    double growth_factor = 2.0;
    double backoff_factor = 0.5;
    int growth_interval = 2000;
    bool enabled = true;  // disabled: scale() and step() pass through (float32, bfloat16)
  };
  GradScaler() : GradScaler(Options{}) {}
  explicit GradScaler(Options options);

  torch::Tensor scale(const torch::Tensor& loss) const;
  // Divides the gradients of `params` by the scale in place; returns whether all are finite.
  // Must be called once per step, before step() (gradient clipping goes between the two).
  bool unscale(const std::vector<torch::Tensor>& params);
  // Runs opt->step() unless the last unscale() found an inf/NaN; then updates the scale.
  // Returns whether the optimiser stepped.
  template <typename Optimizer>
  bool step(Optimizer& opt, const std::vector<torch::Tensor>& params) {
    if (!options_.enabled) {
      opt.step();
      return true;
    }
    if (!unscaled_) unscale(params);
    const bool stepped = finite_;
    if (stepped) opt.step();
    update();
    return stepped;
  }

  double current_scale() const { return scale_; }
  int64_t skipped_steps() const { return skipped_; }
  bool enabled() const { return options_.enabled; }

 private:
  void update();

  Options options_;
  double scale_;
  int growth_tracker_ = 0;
  int64_t skipped_ = 0;
  bool unscaled_ = false;
  bool finite_ = true;
};

}  // namespace fedrad::training
