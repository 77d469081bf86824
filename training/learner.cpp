#include "training/learner.h"

#include <set>
#include <string>

#include <torch/torch.h>

#include "common/log.h"
#include "training/checkpoint.h"
#include "training/dp_sgd.h"
#include "training/trainer.h"

namespace fedrad::training {

TorchLearner::TorchLearner(const StudyConfig& config, ImageSet train, ImageSet val, int site_index)
    : config_(config),
      train_(std::move(train)),
      val_(std::move(val)),
      site_index_(site_index),
      model_(classifier_options(config)) {
  // The caller (apps/study.cpp) has resolved train.device already and reported any error.
  auto device = resolve_device(config.train.device);
  if (device.ok() && device->is_cuda()) {
    to_device(&train_, *device);
    to_device(&val_, *device);
    place_model(*model_, *device, config.train.channels_last);
  }
}

fed::Weights TorchLearner::with_local_norm(const fed::Weights& global) const {
  return keep_local_norm_ ? with_local_tensors(global, local_norm_) : global;
}

StatusOr<fed::FitReport> TorchLearner::fit(const fed::Weights& global, const fed::RoundSettings& settings) {
  try {
    keep_local_norm_ = settings.keep_local_norm;
    FEDRAD_RETURN_IF_ERROR(load_weights(*model_, with_local_norm(global)));
    auto options = fit_options_from(config_, static_cast<int>(settings.local_epochs),
                                     settings.seed * 7919 + static_cast<uint64_t>(site_index_));
    options.batch_size = static_cast<int>(settings.batch_size);
    options.lr = settings.lr;
    options.prox_mu = settings.prox_mu;
    // The study-wide schedule: this round runs epochs [(round-1) * E, round * E) of rounds * E.
    if (config_.train.lr_schedule == "cosine") {
      options.schedule_epochs = config_.rounds * static_cast<int>(settings.local_epochs);
      options.schedule_offset = static_cast<int>(settings.round - 1) * static_cast<int>(settings.local_epochs);
    }
    // Shuffling and augmentation draw from a generator seeded by the options; dropout draws from
    // torch's global one, which a site process never seeded (its seed differs from run to run).
    // Seeded here, a round's local training is the same whatever the process did before it.
    torch::manual_seed(options.seed);
    auto log = logger("train");
    options.progress_label = "round " + std::to_string(settings.round);  // logs each epoch's loss
    FitStats stats;
    if (config_.privacy.dp_sgd) {
      FEDRAD_RETURN_IF_ERROR(check_dp_sgd_model(model_));
      DpSgdOptions dp{config_.privacy.sample_clip, config_.privacy.sample_noise_multiplier};
      DpSgdStats dps = dp_sgd_fit(model_, train_, options, dp);
      stats = dps.fit;
      dp_accountant_.step(dps.sample_rate, dp.noise_multiplier, static_cast<uint64_t>(dps.steps));
      log->info("round {}: DP-SGD, {} steps at q = {:.4f}, sigma = {}: epsilon {:.3f} at delta {} so far",
                settings.round, dps.steps, dps.sample_rate, dp.noise_multiplier,
                dp_accountant_.spent(config_.privacy.delta).epsilon, config_.privacy.delta);
    } else {
      if (config_.train.keep_optimizer_state) {
        if (!optimizer_) optimizer_ = make_optimizer(model_->parameters(), options);
        options.kept_optimizer = optimizer_.get();
      }
      stats = training::fit(model_, train_, options);
    }
    fed::FitReport report;
    report.weights = to_weights(*model_);
    if (keep_local_norm_) local_norm_ = norm_tensors_of(*model_, report.weights);
    report.num_examples = static_cast<uint64_t>(stats.samples);
    report.train_loss = stats.loss;
    report.train_seconds = stats.seconds;
    return report;
  } catch (const std::exception& e) {
    return internal_error(std::string("local training failed: ") + e.what());
  }
}

fed::EvalReport to_eval_report(const Predictions& p) {
  fed::EvalReport report;
  report.num_examples = p.scores.size();
  report.loss = p.loss;
  report.histogram = ScoreHistogram::of(p.scores, p.labels);
  return report;
}

StatusOr<fed::EvalReport> TorchLearner::evaluate(const fed::Weights& global) {
  try {
    FEDRAD_RETURN_IF_ERROR(load_weights(*model_, with_local_norm(global)));
    Predictions p = predict(model_, val_);
    return to_eval_report(p);
  } catch (const std::exception& e) {
    return internal_error(std::string("evaluation failed: ") + e.what());
  }
}

}  // namespace fedrad::training
