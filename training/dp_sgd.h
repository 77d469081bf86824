// Sample-level differential privacy at a site: DP-SGD (Abadi et al. 2016) in LibTorch 1.13, which
// has no vectorised per-sample gradients in C++, so each sample's gradient is computed on its own
// (microbatches of one): slow but exact. Batches are Poisson-sampled with rate q = batch_size / n,
// as the RDP accountant of federation/dp.h assumes. Throws torch exceptions like trainer.h.
#pragma once

#include <cstdint>
#include <vector>

#include <torch/types.h>

#include "common/status.h"
#include "models/classifier.h"
#include "training/dataset.h"
#include "training/trainer.h"

namespace fedrad::training {

struct DpSgdOptions {
  double clip = 1.0;              // per-sample gradient L2 bound C
  double noise_multiplier = 1.0;  // sigma: noise N(0, (sigma C)^2) on the sum of clipped gradients
};

// Batch norm mixes the samples of a batch (a sample's output depends on the others), which breaks
// per-sample clipping; DP-SGD needs group or instance norm.
Status check_dp_sgd_model(models::Classifier& model);

// Sum over the rows of x of each sample's gradient clipped to L2 norm `clip` (over all parameters
// together), in model->parameters() order. Leaves the model's .grad fields zeroed.
std::vector<torch::Tensor> clipped_gradient_sum(models::Classifier& model, const torch::Tensor& x,
                                                const torch::Tensor& y, double clip);

struct DpSgdStats {
  FitStats fit;
  int64_t steps = 0;        // noisy steps taken (for the accountant)
  double sample_rate = 0;   // q
};

// DP-SGD for options.epochs epochs of n / batch_size Poisson-sampled steps each.
DpSgdStats dp_sgd_fit(models::Classifier& model, const ImageSet& data, const FitOptions& options,
                      const DpSgdOptions& dp);

}  // namespace fedrad::training
