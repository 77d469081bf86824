#include "training/trainer.h"

#include <chrono>
#include <cmath>
#include <thread>

#include <torch/torch.h>

#include <spdlog/fmt/fmt.h>

#include "common/progress.h"
#include "cuda/torch_ops.h"
#include "training/loader.h"

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
  auto device = resolve_device(config.train.device);
  if (device.ok()) o.device = *device;  // the callers resolve it first and report the error
  o.precision = precision_for(config.train, o.device);
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
  const cuda::AugmentDraw d = cuda::draw_augment(n, hflip, gen);
  namespace F = torch::nn::functional;
  auto grid = F::affine_grid(d.theta.to(x.device(), x.dtype()), x.sizes().vec(), /*align_corners=*/false);
  auto out = F::grid_sample(x, grid, F::GridSampleFuncOptions().mode(torch::kBilinear).padding_mode(torch::kBorder).align_corners(false));
  return out * d.contrast.view({n, 1, 1, 1}).to(x.device(), x.dtype()) +
         d.brightness.view({n, 1, 1, 1}).to(x.device(), x.dtype());
}

torch::Tensor proximal_term(const std::vector<torch::Tensor>& params, const std::vector<torch::Tensor>& anchor,
                            double mu) {
  torch::Tensor sum = torch::zeros({}, params.empty() ? torch::TensorOptions(torch::kFloat)
                                                      : params.front().options().dtype(torch::kFloat));
  for (size_t i = 0; i < params.size(); ++i) sum = sum + (params[i] - anchor[i]).pow(2).sum();
  return sum * (mu / 2.0);
}

torch::Device device_of(torch::nn::Module& module) {
  auto params = module.parameters();
  return params.empty() ? torch::Device(torch::kCPU) : params.front().device();
}

void place_model(torch::nn::Module& module, const torch::Device& device, bool channels_last) {
  module.to(device);
  if (!channels_last) return;
  torch::NoGradGuard no_grad;
  for (auto& p : module.parameters())
    if (p.dim() == 4) p.set_data(p.data().contiguous(torch::MemoryFormat::ChannelsLast));
}

FitStats fit(models::Classifier& model, const ImageSet& data, const FitOptions& options) {
  const auto start = std::chrono::steady_clock::now();
  const torch::Device device = options.device;
  const Precision& precision = options.precision;
  place_model(*model, device, precision.channels_last);
  model->train();
  const std::vector<torch::Tensor> params = model->parameters();
  std::unique_ptr<torch::optim::Optimizer> fresh;
  if (!options.kept_optimizer) fresh = make_optimizer(params, options);
  torch::optim::Optimizer* opt = options.kept_optimizer ? options.kept_optimizer : fresh.get();
  std::vector<torch::Tensor> anchor;
  if (options.prox_mu > 0)
    for (const auto& p : params) anchor.push_back(p.detach().clone());
  // float16 autocast needs loss scaling (small gradients underflow); bfloat16 has float32's range.
  GradScaler::Options so;
  so.enabled = precision.amp && precision.amp_dtype == torch::kFloat16;
  GradScaler scaler(so);
  auto gen = at::detail::createCPUGenerator(options.seed);
  const int64_t n = data.size();
  // A set already on the device is batched there; any other streams through a BatchLoader.
  const bool resident = !options.stream && data.images.device() == device;
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
    // The epoch's batches: [begin, end) of perm; a batch of one breaks batch norm and is skipped.
    std::vector<std::pair<int64_t, int64_t>> batches;
    for (int64_t begin = 0; begin < n; begin += options.batch_size) {
      const int64_t end = std::min(n, begin + options.batch_size);
      if (end - begin < 2 && n >= 2) continue;
      batches.emplace_back(begin, end);
    }
    std::unique_ptr<BatchLoader> loader;
    torch::Tensor perm_on_device;
    if (resident) {
      perm_on_device = perm.to(device);
    } else {
      loader = std::make_unique<BatchLoader>(
          static_cast<int64_t>(batches.size()),
          [&](int64_t b, bool pinned) {
            auto idx = perm.slice(0, batches[b].first, batches[b].second);
            HostBatch hb;
            auto x = empty_host({idx.size(0), data.images.size(1), data.images.size(2), data.images.size(3)},
                                torch::kFloat32, pinned);
            auto y = empty_host({idx.size(0)}, torch::kFloat32, pinned);
            torch::index_select_out(x, data.images, 0, idx);
            torch::index_select_out(y, data.labels, 0, idx);
            hb.tensors = {x, y};
            return hb;
          },
          device);
    }
    RunningLoss loss_sum;  // on a GPU it stays there: no host sync per batch
    int64_t seen = 0;
    for (const auto& [begin, end] : batches) {
      torch::Tensor x, y;
      if (loader) {
        std::vector<torch::Tensor> t;
        loader->next(&t);
        x = t[0], y = t[1];
      } else {
        auto idx = perm_on_device.slice(0, begin, end);
        x = data.images.index_select(0, idx);
        y = data.labels.index_select(0, idx);
      }
      // On a GPU the fused augmentation kernel (cuda/torch_ops.h; same draws from gen, same
      // result as augment(), tested on the CPU) replaces torch's affine_grid + grid_sample chain.
      if (options.augment) x = x.is_cuda() ? cuda::augment_images(x, options.hflip, gen) : augment(x, options.hflip, gen);
      if (precision.channels_last) x = x.contiguous(torch::MemoryFormat::ChannelsLast);
      opt->zero_grad();
      torch::Tensor loss;
      {
        AutocastScope autocast(precision.amp, precision.amp_dtype);
        auto logits = model->forward(x).squeeze(1);
        loss = torch::binary_cross_entropy_with_logits(logits.to(torch::kFloat32), y);
      }
      auto objective = options.prox_mu > 0 ? loss + proximal_term(params, anchor, options.prox_mu) : loss;
      scaler.scale(objective).backward();
      if (options.after_backward) options.after_backward(params);
      scaler.step(*opt, params);
      loss_sum.add(loss, static_cast<double>(end - begin));
      seen += end - begin;
      if (progress) {
        if (loss_sum.on_host()) progress->set_detail(fmt::format("loss {:.4f}", loss_sum.sum() / static_cast<double>(seen)));
        progress->set(static_cast<uint64_t>(end));
      }
    }
    stats.loss = seen ? loss_sum.sum() / static_cast<double>(seen) : 0;
    if (loader) stats.loader_wait_seconds += loader->stats().wait_seconds;
    stats.skipped_steps = scaler.skipped_steps();
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
  const torch::Device device = device_of(*model);
  Predictions p;
  const int64_t n = data.size();
  double loss_sum = 0;
  for (int64_t begin = 0; begin < n; begin += batch_size) {
    const int64_t end = std::min(n, begin + batch_size);
    auto logits = model->forward(data.images.slice(0, begin, end).to(device)).squeeze(1).to(torch::kCPU);
    auto y = data.labels.slice(0, begin, end).to(torch::kCPU);
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
