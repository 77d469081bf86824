// Local training and evaluation as free functions (after PyTorch's C++ examples). They throw
// torch exceptions; the callers at the boundary (TorchLearner, the app) turn them into Status.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include <torch/optim/optimizer.h>
#include <torch/types.h>

#include "common/config.h"
#include "common/metrics.h"
#include "models/classifier.h"
#include "training/dataset.h"
#include "training/device.h"

namespace fedrad::training {

struct FitOptions {
  int epochs = 1;
  int batch_size = 64;
  double lr = 0.001;
  std::string optimizer = "adam";  // adam | sgd
  double momentum = 0.9;
  double weight_decay = 0.0001;
  uint64_t seed = 0;               // shuffling and augmentation; same seed, same run
  bool augment = true;
  bool hflip = false;
  // Cosine decay over a schedule of `schedule_epochs` epochs of which this call runs epochs
  // [schedule_offset, schedule_offset + epochs); 0 = constant lr.
  int schedule_epochs = 0;
  int schedule_offset = 0;
  // FedProx (Li et al. 2020): adds prox_mu / 2 * ||w - w_start||^2 over the trainable parameters,
  // w_start being the weights at the start of the call (the global model); 0 = plain training.
  double prox_mu = 0;
  // Shown as "<label> epoch e/E" with a per-batch progress line (common/progress.h); "" = none.
  std::string progress_label;
  // Called after each epoch with its index (0-based) and mean loss; for progress output.
  std::function<void(int epoch, double loss)> on_epoch;
  // An optimiser over the model's parameters that the caller keeps across calls (a site keeping
  // its Adam moments from round to round: train.keep_optimizer_state); null = a fresh one per call.
  // Its learning rate is set from `lr` and the schedule like a fresh one's.
  torch::optim::Optimizer* kept_optimizer = nullptr;
  // Called after each batch's backward pass and before the optimiser step, with the model's
  // parameters (their .grad() filled): data-parallel training across a site's GPUs all-reduces the
  // gradients here (training/data_parallel.h). Every process of such a site runs the same number
  // of batches. Null = none.
  std::function<void(const std::vector<torch::Tensor>& params)> after_backward;
  // Where the model lives and how it runs (training/device.h). The images may be on the device
  // already (a GPU site keeps its decoded set there) or in host memory, in which case batches
  // stream through a BatchLoader (training/loader.h): gathered into pinned buffers while the
  // device works on the previous batch, copied asynchronously.
  torch::Device device = torch::kCPU;
  Precision precision;
  // Streams the batches through a BatchLoader even when the set is on the device already (the
  // tests use it to check that both paths train the same model).
  bool stream = false;
};

FitOptions fit_options_from(const StudyConfig& config, int epochs, uint64_t seed);

// The learning rate of one epoch under the options' schedule.
double scheduled_lr(const FitOptions& options, int epoch);

// AdamW or SGD (with momentum) over `params` as the options say.
std::unique_ptr<torch::optim::Optimizer> make_optimizer(const std::vector<torch::Tensor>& params,
                                                        const FitOptions& options);

struct FitStats {
  double loss = 0;        // mean training loss of the last epoch
  int64_t samples = 0;    // samples per epoch
  double seconds = 0;
  double loader_wait_seconds = 0;  // time the device waited for host batches (streamed sets)
  int64_t skipped_steps = 0;       // float16 steps skipped for inf/NaN gradients (loss scaling)
};

// Trains `model` on `data` in place. The optimiser is fresh for each call (FedAvg sites restart
// their optimiser state each round) unless options.kept_optimizer gives one.
FitStats fit(models::Classifier& model, const ImageSet& data, const FitOptions& options);

struct Predictions {
  std::vector<float> scores;  // sigmoid probabilities
  std::vector<int> labels;
  double loss = 0;            // mean BCE (when labels are known)
};

// Scores every image, in eval mode, without gradients, on the device the model is on.
Predictions predict(models::Classifier& model, const ImageSet& data, int batch_size = 256);

// The device of a module's first parameter (CPU for a module without parameters).
torch::Device device_of(torch::nn::Module& module);

// Moves a module to `device` and, with channels_last, its 4-D weights to NHWC (PyTorch's
// model.to(memory_format=torch.channels_last)).
void place_model(torch::nn::Module& module, const torch::Device& device, bool channels_last);

// Random shifts, small rotations and scaling, optional horizontal flips and brightness/contrast
// jitter, drawn from `gen` (a CPU generator) so that a run is reproducible. x: [N, 1, S, S] on
// any device; the result is on x's device.
torch::Tensor augment(const torch::Tensor& x, bool hflip, torch::Generator& gen);

// The proximal term of FitOptions::prox_mu for parameters `params` against `anchor` (same order).
torch::Tensor proximal_term(const std::vector<torch::Tensor>& params, const std::vector<torch::Tensor>& anchor,
                            double mu);

// Sets LibTorch's intra-op threads: n > 0 as given, 0 = all cores.
void set_threads(int n);

}  // namespace fedrad::training
