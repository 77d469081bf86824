#include "training/trainer.h"

#include <chrono>
#include <cmath>
#include <thread>

#include <torch/torch.h>

#include <spdlog/fmt/fmt.h>

#include "common/progress.h"

namespace fedrad::training {

FitOptions fit_options_from(const StudyConfig& config, int epochs, uint64_t seed) {
  FitOptions o;
  o.epochs = epochs;
  o.batch_size = config.train.batch_size;
  o.lr = config.train.lr;
  o.optimizer = config.train.optimizer;
  o.momentum = config.train.momentum;
  o.weight_decay = config.train.weight_decay;
  o.seed = seed;
  o.augment = config.data.augment;
  o.hflip = config.data.hflip;
  if (config.train.lr_schedule == "cosine") o.schedule_epochs = epochs;
  return o;
}

double scheduled_lr(const FitOptions& options, int epoch) {
  if (options.schedule_epochs <= 0) return options.lr;
  const double kPi = 3.14159265358979323846;
  const double t = static_cast<double>(options.schedule_offset + epoch) / options.schedule_epochs;
  return options.lr * 0.5 * (1.0 + std::cos(kPi * std::min(1.0, t)));
}

std::unique_ptr<torch::optim::Optimizer> make_optimizer(const std::vector<torch::Tensor>& params,
                                                        const FitOptions& options) {
  if (options.optimizer == "sgd") {
    return std::make_unique<torch::optim::SGD>(
        params, torch::optim::SGDOptions(options.lr).momentum(options.momentum).weight_decay(options.weight_decay));
  }
  return std::make_unique<torch::optim::AdamW>(
      params, torch::optim::AdamWOptions(options.lr).weight_decay(options.weight_decay));
}

void set_threads(int n) {
  const int cores = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  torch::set_num_threads(n > 0 ? n : cores);
}

torch::Tensor augment(const torch::Tensor& x, bool hflip, torch::Generator& gen) {
  const int64_t n = x.size(0);
  auto uniform = [&](double lo, double hi) { return torch::rand({n}, gen) * (hi - lo) + lo; };
  const double kPi = 3.14159265358979323846;
  auto angle = uniform(-10, 10) * (kPi / 180.0);
  auto scale = uniform(0.9, 1.1);
  auto tx = uniform(-0.08, 0.08);  // fractions of half the image (grid units are [-1, 1])
  auto ty = uniform(-0.08, 0.08);
  auto flip = hflip ? torch::where(torch::rand({n}, gen) < 0.5, -1.0, 1.0) : torch::ones({n});
  auto cos = torch::cos(angle) / scale, sin = torch::sin(angle) / scale;
  auto theta = torch::stack({torch::stack({cos * flip, -sin, tx}, 1), torch::stack({sin * flip, cos, ty}, 1)}, 1);
  namespace F = torch::nn::functional;
  auto grid = F::affine_grid(theta.to(x.dtype()), x.sizes().vec(), /*align_corners=*/false);
  auto out = F::grid_sample(x, grid, F::GridSampleFuncOptions().mode(torch::kBilinear).padding_mode(torch::kBorder).align_corners(false));
  // Intensity jitter: contrast x0.9..1.1 and brightness +-0.1 (inputs are roughly in [-1, 1]).
  auto contrast = uniform(0.9, 1.1).view({n, 1, 1, 1});
  auto brightness = uniform(-0.1, 0.1).view({n, 1, 1, 1});
  return out * contrast + brightness;
}

torch::Tensor proximal_term(const std::vector<torch::Tensor>& params, const std::vector<torch::Tensor>& anchor,
                            double mu) {
  torch::Tensor sum = torch::zeros({}, torch::kFloat);
  for (size_t i = 0; i < params.size(); ++i) sum = sum + (params[i] - anchor[i]).pow(2).sum();
  return sum * (mu / 2.0);
}

FitStats fit(models::Classifier& model, const ImageSet& data, const FitOptions& options) {
  const auto start = std::chrono::steady_clock::now();
  model->train();
  const std::vector<torch::Tensor> params = model->parameters();
  std::unique_ptr<torch::optim::Optimizer> fresh;
  if (!options.kept_optimizer) fresh = make_optimizer(params, options);
  torch::optim::Optimizer* opt = options.kept_optimizer ? options.kept_optimizer : fresh.get();
  std::vector<torch::Tensor> anchor;
  if (options.prox_mu > 0)
    for (const auto& p : params) anchor.push_back(p.detach().clone());
  auto gen = at::detail::createCPUGenerator(options.seed);
  const int64_t n = data.size();
  FitStats stats;
  stats.samples = n;
  for (int epoch = 0; epoch < options.epochs; ++epoch) {
    for (auto& group : opt->param_groups()) group.options().set_lr(scheduled_lr(options, epoch));
    std::unique_ptr<Progress> progress;
    if (options.progress_label.size())
      progress = std::make_unique<Progress>("train", options.progress_label + " epoch " + std::to_string(epoch + 1) + "/" +
                                                         std::to_string(options.epochs),
                                            static_cast<uint64_t>(n), "images");
    auto perm = torch::randperm(n, gen, torch::kLong);
    double loss_sum = 0;
    int64_t seen = 0;
    for (int64_t begin = 0; begin < n; begin += options.batch_size) {
      const int64_t end = std::min(n, begin + options.batch_size);
      if (end - begin < 2 && n >= 2) continue;  // a batch of one breaks batch norm
      auto idx = perm.slice(0, begin, end);
      auto x = data.images.index_select(0, idx);
      auto y = data.labels.index_select(0, idx);
      if (options.augment) x = augment(x, options.hflip, gen);
      opt->zero_grad();
      auto logits = model->forward(x).squeeze(1);
      auto loss = torch::binary_cross_entropy_with_logits(logits, y);
      auto objective = options.prox_mu > 0 ? loss + proximal_term(params, anchor, options.prox_mu) : loss;
      objective.backward();
      opt->step();
      loss_sum += loss.item<double>() * static_cast<double>(end - begin);
      seen += end - begin;
      if (progress) {
        progress->set_detail(fmt::format("loss {:.4f}", loss_sum / static_cast<double>(seen)));
        progress->set(static_cast<uint64_t>(end));
      }
    }
    stats.loss = seen ? loss_sum / static_cast<double>(seen) : 0;
    if (progress && options.on_epoch) progress->dismiss();  // the caller logs the epoch
    else if (progress) progress->finish(fmt::format("loss {:.4f}", stats.loss));
    if (options.on_epoch) options.on_epoch(epoch, stats.loss);
  }
  stats.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  return stats;
}

Predictions predict(models::Classifier& model, const ImageSet& data, int batch_size) {
  torch::NoGradGuard no_grad;
  model->eval();
  Predictions p;
  const int64_t n = data.size();
  double loss_sum = 0;
  for (int64_t begin = 0; begin < n; begin += batch_size) {
    const int64_t end = std::min(n, begin + batch_size);
    auto logits = model->forward(data.images.slice(0, begin, end)).squeeze(1);
    auto y = data.labels.slice(0, begin, end);
    auto probs = torch::sigmoid(logits).contiguous();
    const float* pp = probs.data_ptr<float>();
    const auto yc = y.contiguous();
    const float* yy = yc.data_ptr<float>();
    for (int64_t i = 0; i < end - begin; ++i) {
      p.scores.push_back(pp[i]);
      p.labels.push_back(static_cast<int>(yy[i]));
    }
    if ((y >= 0).all().item<bool>())
      loss_sum += torch::binary_cross_entropy_with_logits(logits, y, {}, {}, at::Reduction::Sum).item<double>();
  }
  p.loss = n ? loss_sum / static_cast<double>(n) : 0;
  return p;
}

}  // namespace fedrad::training
