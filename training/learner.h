// The site's side of the federation: training/ implements federation's Learner interface over a
// site's train and validation splits. Torch exceptions stop here and become Status values.
#pragma once

#include <memory>

#include "common/config.h"
#include "federation/dp.h"
#include "federation/federation.h"
#include "models/classifier.h"
#include "training/dataset.h"
#include "training/trainer.h"

namespace fedrad::training {

// What a site reports of its validation predictions: count, loss and score histogram (no scores).
fed::EvalReport to_eval_report(const Predictions& p);

class TorchLearner : public fed::Learner {
 public:
  // Takes the site's data; the model is built from the config and overwritten by each round's
  // global weights. `site_index` decorrelates the sites' shuffling and augmentation.
  TorchLearner(const StudyConfig& config, ImageSet train, ImageSet val, int site_index);

  StatusOr<fed::FitReport> fit(const fed::Weights& global, const fed::RoundSettings& settings) override;
  StatusOr<fed::EvalReport> evaluate(const fed::Weights& global) override;
  uint64_t num_train_examples() const override { return static_cast<uint64_t>(train_.size()); }
  uint64_t num_val_examples() const override { return static_cast<uint64_t>(val_.size()); }

 private:
  // FedBN: the model to use is the global one with this site's own normalisation tensors.
  fed::Weights with_local_norm(const fed::Weights& global) const;

  StudyConfig config_;
  ImageSet train_, val_;
  int site_index_;
  models::Classifier model_;
  fed::dp::RdpAccountant dp_accountant_;  // DP-SGD's privacy spent at this site, across rounds
  bool keep_local_norm_ = false;  // set by the coordinator's strategy (FedBN) in each round
  fed::Weights local_norm_;       // this site's normalisation parameters and statistics
  std::unique_ptr<torch::optim::Optimizer> optimizer_;  // train.keep_optimizer_state: across rounds
};

}  // namespace fedrad::training
