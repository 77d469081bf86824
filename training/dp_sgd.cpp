#include "training/dp_sgd.h"

#include <chrono>
#include <cmath>

#include <torch/torch.h>

namespace fedrad::training {

Status check_dp_sgd_model(models::Classifier& model) {
  bool batch_norm = model->options().norm == "batch";
  for (const auto& m : model->modules(/*include_self=*/false))
    batch_norm = batch_norm || m->name().find("BatchNorm") != std::string::npos;
  if (batch_norm)
    return invalid_argument(
        "DP-SGD needs model.norm: group or instance; batch norm mixes the samples of a batch, so per-sample "
        "gradients (and their clipping) are not defined");
  return ok_status();
}

std::vector<torch::Tensor> clipped_gradient_sum(models::Classifier& model, const torch::Tensor& x,
                                                const torch::Tensor& y, double clip) {
  auto params = model->parameters();
  std::vector<torch::Tensor> sum;
  for (auto& p : params) sum.push_back(torch::zeros_like(p));
  for (int64_t i = 0; i < x.size(0); ++i) {
    for (auto& p : params)
      if (p.grad().defined()) p.grad().zero_();
    auto logit = model->forward(x.slice(0, i, i + 1)).squeeze(1);
    torch::binary_cross_entropy_with_logits(logit, y.slice(0, i, i + 1)).backward();
    double sq = 0;
    for (auto& p : params)
      if (p.grad().defined()) sq += p.grad().pow(2).sum().item<double>();
    const double factor = std::min(1.0, clip / (std::sqrt(sq) + 1e-12));
    for (size_t k = 0; k < params.size(); ++k)
      if (params[k].grad().defined()) sum[k].add_(params[k].grad(), factor);
  }
  for (auto& p : params)
    if (p.grad().defined()) p.grad().zero_();
  return sum;
}

DpSgdStats dp_sgd_fit(models::Classifier& model, const ImageSet& data, const FitOptions& options,
                      const DpSgdOptions& dp) {
  const auto start = std::chrono::steady_clock::now();
  model->train();
  auto opt = make_optimizer(model->parameters(), options);
  auto gen = at::detail::createCPUGenerator(options.seed);
  const int64_t n = data.size();
  DpSgdStats stats;
  stats.fit.samples = n;
  if (n == 0) return stats;
  const double q = std::min(1.0, static_cast<double>(options.batch_size) / static_cast<double>(n));
  const double expected_batch = q * static_cast<double>(n);
  stats.sample_rate = q;
  const int64_t steps_per_epoch = std::max<int64_t>(1, static_cast<int64_t>(std::llround(1.0 / q)));
  auto params = model->parameters();
  for (int epoch = 0; epoch < options.epochs; ++epoch) {
    for (auto& group : opt->param_groups()) group.options().set_lr(scheduled_lr(options, epoch));
    double loss_sum = 0;
    int64_t seen = 0;
    for (int64_t step = 0; step < steps_per_epoch; ++step) {
      // Poisson sampling: each sample in with probability q (a batch may be empty).
      auto idx = torch::nonzero(torch::rand({n}, gen) < q).squeeze(1);
      std::vector<torch::Tensor> grad;
      if (idx.numel() > 0) {
        auto x = data.images.index_select(0, idx);
        auto y = data.labels.index_select(0, idx);
        if (options.augment) x = augment(x, options.hflip, gen);
        grad = clipped_gradient_sum(model, x, y, dp.clip);
        {
          torch::NoGradGuard no_grad;
          loss_sum += torch::binary_cross_entropy_with_logits(model->forward(x).squeeze(1), y, {}, {},
                                                              at::Reduction::Sum)
                          .item<double>();
        }
        seen += idx.numel();
      } else {
        for (auto& p : params) grad.push_back(torch::zeros_like(p));
      }
      for (size_t k = 0; k < params.size(); ++k) {
        auto noise = torch::randn(params[k].sizes(), gen) * (dp.noise_multiplier * dp.clip);
        auto g = (grad[k] + noise) / expected_batch;
        params[k].mutable_grad() = g.detach();
      }
      opt->step();
      ++stats.steps;
    }
    stats.fit.loss = seen ? loss_sum / static_cast<double>(seen) : 0;
    if (options.on_epoch) options.on_epoch(epoch, stats.fit.loss);
  }
  stats.fit.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  return stats;
}

}  // namespace fedrad::training
