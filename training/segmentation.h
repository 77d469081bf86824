// Segmentation at a site: cases in memory (imaging/seg_data.h), foreground-biased patch sampling,
// Dice + cross-entropy loss, local fit, sliding-window inference with Gaussian blending, per-label
// and BraTS-region Dice and HD95 (common/seg_metrics.h), and SegLearner, the federation's Learner
// for segmentation studies. The functions throw torch exceptions like trainer.h; SegLearner and
// the app catch them at the boundary.
//
// Layout: a case's image is [C, Z, Y, X] (x fastest, as imaging::Volume), a batch of patches
// [N, C, Z, Y, X]; a 2D U-Net sees each axial slice (patch z = 1) as [N, C, Y, X]. Sizes in the
// config are x y z.
#pragma once

#include <array>
#include <cstdint>
#include <functional>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include <torch/types.h>

#include "common/config.h"
#include "common/seg_metrics.h"
#include "common/status.h"
#include "federation/federation.h"
#include "imaging/seg_data.h"
#include "models/unet.h"
#include "training/checkpoint.h"  // unet_options
#include "training/trainer.h"

namespace fedrad::training {

imaging::SegLoadOptions seg_load_options(const StudyConfig& config);

// A split's cases, plus the foreground voxels of each for patch sampling.
struct SegSet {
  std::vector<imaging::SegCase> cases;
  std::vector<std::vector<uint32_t>> foreground;  // per case: voxel indices with class > 0

  int64_t size() const { return static_cast<int64_t>(cases.size()); }
  void index_foreground();  // fills `foreground` from the cases' class maps
};

// Reads SPLIT_DIR/cases.csv with the study's channels, labels and spacing.
StatusOr<SegSet> load_seg_set(const std::string& split_dir, const StudyConfig& config, int threads = 0);
SegSet concat(const std::vector<const SegSet*>& sets);

struct PatchBatch {
  torch::Tensor image;   // [N, C, pz, py, px] float32
  torch::Tensor target;  // [N, pz, py, px] int64 class indices
};

// `n` patches of `patch` (x y z) voxels from random cases; with probability fg_fraction a patch
// is centred on a random labelled voxel, otherwise anywhere. Volumes smaller than the patch are
// padded (image 0, background).
PatchBatch sample_patches(const SegSet& set, int n, const std::array<int, 3>& patch, double fg_fraction,
                          std::mt19937_64& rng);

// Random flips along each axis (2D: x and y) and per-channel intensity scale/shift, drawn from rng.
void augment_patches(PatchBatch* batch, bool flip_z, std::mt19937_64& rng);

// Soft Dice over the foreground classes (batch Dice: sums over the batch and space) plus cross-
// entropy. logits [N, K, ...], target [N, ...] int64.
torch::Tensor dice_ce_loss(const torch::Tensor& logits, const torch::Tensor& target);

// Runs the net on [N, C, Z, Y, X] (2D nets: Z must be 1) and returns logits [N, K, Z, Y, X].
torch::Tensor seg_forward(models::UNet& net, const torch::Tensor& x);

struct SegFitOptions {
  FitOptions fit;                  // epochs, batch size, lr, optimiser, schedule, seed, augment
  std::array<int, 3> patch{32, 32, 32};
  double foreground_fraction = 0.67;
  int patches_per_case = 4;        // per epoch
  double prox_mu = 0;              // FedProx: + prox_mu / 2 * ||w - w_start||^2; 0 = off
};
SegFitOptions seg_fit_options_from(const StudyConfig& config, int epochs, uint64_t seed);

// Trains in place; a fresh optimiser per call (FedAvg restarts it each round). FedProx's term
// (prox_mu) is applied against the weights the call started from.
FitStats fit_seg(models::UNet& net, const SegSet& data, const SegFitOptions& options);

struct SlidingWindowOptions {
  std::array<int, 3> window{32, 32, 32};  // x y z
  double overlap = 0.5;                   // fraction of the window shared by neighbours, [0, 1)
  bool gaussian = true;                   // Gaussian importance weights (nnU-Net); else constant
  int batch = 2;                          // windows per forward pass
};

// The window start positions along one axis of `size` voxels (the last window ends at the edge).
std::vector<int> window_starts(int size, int window, double overlap);

// Blends `predict` over windows of `image` [C, Z, Y, X]: predict maps [N, C, wz, wy, wx] to
// [N, K, wz, wy, wx]; returns [K, Z, Y, X], the weighted mean of the windows covering each voxel.
// Volumes smaller than the window are zero-padded at the far end and cropped back.
torch::Tensor sliding_window(const torch::Tensor& image,
                             const std::function<torch::Tensor(const torch::Tensor&)>& predict,
                             const SlidingWindowOptions& options);

SlidingWindowOptions sliding_window_options_from(const StudyConfig& config);

// Softmax probabilities [K, Z, Y, X] of one case, in eval mode without gradients.
torch::Tensor predict_probabilities(models::UNet& net, const imaging::SegCase& c, const SlidingWindowOptions& options);
std::vector<uint8_t> argmax_classes(const torch::Tensor& probabilities);

struct SegEvaluation {
  SegScoreSums sums;                    // per structure (seg_structures of the config)
  std::vector<SegCaseMetrics> per_case;
  std::vector<std::string> case_ids;
  double loss = 0;                      // mean voxel cross-entropy of the blended probabilities
  double seconds_per_case = 0;          // inference only
};

SegEvaluation evaluate_seg(models::UNet& net, const SegSet& data, const StudyConfig& config);

// The site's side of a segmentation study (fed::Learner); like TorchLearner for classification.
// Follows the strategy's FedBN setting (the site keeps its own normalisation tensors, for
// training and for evaluating the global model) and train.keep_optimizer_state (the site's
// optimiser lives across rounds).
class SegLearner : public fed::Learner {
 public:
  SegLearner(const StudyConfig& config, SegSet train, SegSet val, int site_index);

  StatusOr<fed::FitReport> fit(const fed::Weights& global, const fed::RoundSettings& settings) override;
  StatusOr<fed::EvalReport> evaluate(const fed::Weights& global) override;
  uint64_t num_train_examples() const override { return static_cast<uint64_t>(train_.size()); }
  uint64_t num_val_examples() const override { return static_cast<uint64_t>(val_.size()); }

 private:
  StudyConfig config_;
  SegSet train_, val_;
  int site_index_;
  models::UNet model_;
  bool keep_local_norm_ = false;  // FedBN, set by the coordinator's strategy in each round
  fed::Weights local_norm_;       // this site's normalisation tensors after its last fit (FedBN)
  std::unique_ptr<torch::optim::Optimizer> optimizer_;  // train.keep_optimizer_state: across rounds
};

}  // namespace fedrad::training
