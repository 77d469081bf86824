#include "training/segmentation.h"

#include "training/loader.h"

#include <algorithm>
#include <chrono>
#include <cmath>

#include <torch/torch.h>

#include "common/log.h"
#include "training/checkpoint.h"
#include "training/loader.h"

namespace fedrad::training {
namespace {

using Clock = std::chrono::steady_clock;
double seconds_since(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }

// [C, Z, Y, X] float tensor viewing a case's image (no copy).
torch::Tensor image_tensor(const imaging::SegCase& c) {
  return torch::from_blob(const_cast<float*>(c.image.data()), {c.channels, c.size[2], c.size[1], c.size[0]},
                          torch::kFloat32);
}

// Separable Gaussian importance map [wz, wy, wx], sigma = window / 8 (nnU-Net), max 1; the
// smallest weight is kept away from 0 so that every voxel's total weight is positive.
torch::Tensor importance_map(const std::array<int, 3>& w, bool gaussian) {
  if (!gaussian) return torch::ones({w[2], w[1], w[0]});
  auto axis = [](int n) {
    auto t = torch::arange(n, torch::kFloat64) - (n - 1) / 2.0;
    const double sigma = std::max(1e-6, n / 8.0);
    return torch::exp(-(t * t) / (2 * sigma * sigma));
  };
  auto m = axis(w[2]).view({-1, 1, 1}) * axis(w[1]).view({1, -1, 1}) * axis(w[0]).view({1, 1, -1});
  m = m / m.max();
  return torch::clamp_min(m, 1e-3).to(torch::kFloat32);
}

}  // namespace

imaging::SegLoadOptions seg_load_options(const StudyConfig& config) {
  imaging::SegLoadOptions o;
  o.labels = config.segmentation.labels;
  o.spacing = config.segmentation.spacing;
  return o;
}

void SegSet::index_foreground() {
  foreground.assign(cases.size(), {});
  for (size_t i = 0; i < cases.size(); ++i)
    for (size_t v = 0; v < cases[i].classes.size(); ++v)
      if (cases[i].classes[v] > 0) foreground[i].push_back(static_cast<uint32_t>(v));
}

StatusOr<SegSet> load_seg_set(const std::string& split_dir, const StudyConfig& config, int threads) {
  SegSet set;
  FEDRAD_ASSIGN_OR_RETURN(set.cases, imaging::load_seg_cases(split_dir + "/cases.csv", config.segmentation.channels,
                                                             seg_load_options(config), threads));
  set.index_foreground();
  return set;
}

SegSet concat(const std::vector<const SegSet*>& sets) {
  SegSet out;
  for (const SegSet* s : sets) {
    out.cases.insert(out.cases.end(), s->cases.begin(), s->cases.end());
    out.foreground.insert(out.foreground.end(), s->foreground.begin(), s->foreground.end());
  }
  return out;
}

PatchBatch sample_patches(const SegSet& set, int n, const std::array<int, 3>& patch, double fg_fraction,
                          std::mt19937_64& rng) {
  const int channels = set.cases.at(0).channels;
  PatchBatch b;
  b.image = torch::zeros({n, channels, patch[2], patch[1], patch[0]});
  b.target = torch::zeros({n, patch[2], patch[1], patch[0]}, torch::kInt64);
  std::uniform_real_distribution<double> U(0.0, 1.0);
  for (int i = 0; i < n; ++i) {
    const size_t ci = std::uniform_int_distribution<size_t>(0, set.cases.size() - 1)(rng);
    const imaging::SegCase& c = set.cases[ci];
    std::array<int, 3> centre;
    const bool has_fg = ci < set.foreground.size() && !set.foreground[ci].empty();
    if (has_fg && U(rng) < fg_fraction) {
      const auto& fg = set.foreground[ci];
      const uint32_t v = fg[std::uniform_int_distribution<size_t>(0, fg.size() - 1)(rng)];
      centre = {static_cast<int>(v % c.size[0]), static_cast<int>((v / c.size[0]) % c.size[1]),
                static_cast<int>(v / (static_cast<size_t>(c.size[0]) * c.size[1]))};
    } else {
      for (int k = 0; k < 3; ++k) centre[k] = std::uniform_int_distribution<int>(0, c.size[k] - 1)(rng);
    }
    std::array<int, 3> start, len;
    for (int k = 0; k < 3; ++k) {
      start[k] = std::clamp(centre[k] - patch[k] / 2, 0, std::max(0, c.size[k] - patch[k]));
      len[k] = std::min(patch[k], c.size[k]);
    }
    auto img = image_tensor(c).slice(1, start[2], start[2] + len[2]).slice(2, start[1], start[1] + len[1])
                   .slice(3, start[0], start[0] + len[0]);
    b.image[i].slice(1, 0, len[2]).slice(2, 0, len[1]).slice(3, 0, len[0]).copy_(img);
    if (!c.classes.empty()) {
      auto cls = torch::from_blob(const_cast<uint8_t*>(c.classes.data()), {c.size[2], c.size[1], c.size[0]},
                                  torch::kUInt8);
      auto part = cls.slice(0, start[2], start[2] + len[2]).slice(1, start[1], start[1] + len[1])
                      .slice(2, start[0], start[0] + len[0]);
      b.target[i].slice(0, 0, len[2]).slice(1, 0, len[1]).slice(2, 0, len[0]).copy_(part.to(torch::kInt64));
    }
  }
  return b;
}

void augment_patches(PatchBatch* b, bool flip_z, std::mt19937_64& rng) {
  std::uniform_real_distribution<double> U(0.0, 1.0);
  std::normal_distribution<double> N(0.0, 1.0);
  const int64_t n = b->image.size(0), channels = b->image.size(1);
  for (int64_t i = 0; i < n; ++i) {
    std::vector<int64_t> dims;  // of the sample's [C, Z, Y, X] image; the target is [Z, Y, X]
    if (U(rng) < 0.5) dims.push_back(3);
    if (U(rng) < 0.5) dims.push_back(2);
    if (flip_z && U(rng) < 0.5) dims.push_back(1);
    if (!dims.empty()) {
      std::vector<int64_t> tdims;
      for (int64_t d : dims) tdims.push_back(d - 1);
      b->image[i].copy_(b->image[i].flip(dims));
      b->target[i].copy_(b->target[i].flip(tdims));
    }
    for (int64_t c = 0; c < channels; ++c) {
      auto ch = b->image[i][c];
      ch.mul_(1.0 + 0.1 * N(rng)).add_(0.1 * N(rng));
    }
  }
}

torch::Tensor dice_ce_loss(const torch::Tensor& logits, const torch::Tensor& target) {
  const int64_t k = logits.size(1);
  auto ce = torch::nn::functional::cross_entropy(logits, target);
  auto probs = torch::softmax(logits, 1);
  auto onehot = torch::one_hot(target, k).movedim(-1, 1).to(probs.dtype());
  std::vector<int64_t> sum_dims = {0};
  for (int64_t d = 2; d < logits.dim(); ++d) sum_dims.push_back(d);
  auto inter = (probs * onehot).sum(sum_dims);
  auto denom = probs.sum(sum_dims) + onehot.sum(sum_dims);
  const double eps = 1e-5;
  auto dice = (2 * inter + eps) / (denom + eps);
  auto dice_loss = 1 - dice.slice(0, 1, k).mean();  // foreground classes
  return ce + dice_loss;
}

torch::Tensor seg_forward(models::UNet& net, const torch::Tensor& x) {
  if (net->options().dims == 3) return net->forward(x);
  TORCH_CHECK(x.size(2) == 1, "a 2D U-Net takes patches of one slice (z = 1), got z = ", x.size(2));
  return net->forward(x.squeeze(2)).unsqueeze(2);
}

SegFitOptions seg_fit_options_from(const StudyConfig& config, int epochs, uint64_t seed) {
  SegFitOptions o;
  o.fit = fit_options_from(config, epochs, seed);
  const auto& p = config.segmentation.patch_size;
  o.patch = {p[0], p[1], p[2]};
  o.foreground_fraction = config.segmentation.foreground_fraction;
  o.patches_per_case = config.segmentation.patches_per_case;
  return o;
}

FitStats fit_seg(models::UNet& net, const SegSet& data, const SegFitOptions& options) {
  const auto t0 = Clock::now();
  const torch::Device device = options.fit.device;
  const Precision& precision = options.fit.precision;
  // 3-D patches stay NCDHW: channels-last applies to the 2-D U-Net's weights only.
  place_model(*net, device, precision.channels_last && net->options().dims == 2);
  net->train();
  std::vector<torch::Tensor> params = net->parameters();
  std::vector<torch::Tensor> anchor;
  if (options.prox_mu > 0)
    for (const auto& p : params) anchor.push_back(p.detach().clone());
  std::unique_ptr<torch::optim::Optimizer> fresh;
  if (!options.fit.kept_optimizer) fresh = make_optimizer(params, options.fit);
  torch::optim::Optimizer* opt = options.fit.kept_optimizer ? options.fit.kept_optimizer : fresh.get();
  GradScaler::Options so;
  so.enabled = precision.amp && precision.amp_dtype == torch::kFloat16;
  GradScaler scaler(so);
  std::mt19937_64 rng(options.fit.seed * 0x9E3779B97F4A7C15ull + 17);
  const int batch = std::max(1, options.fit.batch_size);
  const int64_t per_epoch = std::max<int64_t>(1, data.size() * options.patches_per_case);
  const int64_t steps = (per_epoch + batch - 1) / batch;
  const bool flip_z = net->options().dims == 3;
  FitStats stats;
  stats.samples = data.size();
  for (int epoch = 0; epoch < options.fit.epochs; ++epoch) {
    for (auto& group : opt->param_groups()) group.options().set_lr(scheduled_lr(options.fit, epoch));
    // Patches are sampled and augmented on the host by one worker, in step order (the same draws
    // from rng as a plain loop), while the device trains on the previous batch.
    BatchLoader loader(
        steps,
        [&](int64_t s, bool pinned) {
          const int n = static_cast<int>(std::min<int64_t>(batch, per_epoch - s * batch));
          PatchBatch b = sample_patches(data, n, options.patch, options.foreground_fraction, rng);
          if (options.fit.augment) augment_patches(&b, flip_z, rng);
          HostBatch hb;
          if (pinned) {
            hb.tensors = {empty_host(b.image.sizes(), b.image.scalar_type(), true).copy_(b.image),
                          empty_host(b.target.sizes(), b.target.scalar_type(), true).copy_(b.target)};
          } else {
            hb.tensors = {b.image, b.target};
          }
          return hb;
        },
        device);
    RunningLoss loss_sum;
    std::vector<torch::Tensor> t;
    while (loader.next(&t)) {
      opt->zero_grad();
      torch::Tensor loss;
      {
        AutocastScope autocast(precision.amp, precision.amp_dtype);
        loss = dice_ce_loss(seg_forward(net, t[0]).to(torch::kFloat32), t[1]);
      }
      auto objective = loss;
      if (options.prox_mu > 0) {
        auto prox = torch::zeros({}, loss.options());
        for (size_t i = 0; i < params.size(); ++i) prox = prox + (params[i] - anchor[i]).pow(2).sum();
        objective = loss + 0.5 * options.prox_mu * prox;
      }
      scaler.scale(objective).backward();
      if (options.fit.after_backward) options.fit.after_backward(params);
      scaler.step(*opt, params);
      loss_sum.add(loss);
    }
    stats.loss = loss_sum.sum() / static_cast<double>(steps);
    stats.loader_wait_seconds += loader.stats().wait_seconds;
    stats.skipped_steps = scaler.skipped_steps();
    if (options.fit.on_epoch) options.fit.on_epoch(epoch, stats.loss);
  }
  stats.seconds = seconds_since(t0);
  return stats;
}

std::vector<int> window_starts(int size, int window, double overlap) {
  if (size <= window) return {0};
  const int step = std::max(1, static_cast<int>(std::floor(window * (1.0 - overlap))));
  std::vector<int> starts;
  for (int s = 0; s + window < size; s += step) starts.push_back(s);
  starts.push_back(size - window);
  return starts;
}

torch::Tensor sliding_window(const torch::Tensor& image, const std::function<torch::Tensor(const torch::Tensor&)>& predict,
                             const SlidingWindowOptions& o) {
  TORCH_CHECK(image.dim() == 4, "sliding_window: image must be [C, Z, Y, X]");
  const std::array<int64_t, 3> size{image.size(3), image.size(2), image.size(1)};  // x y z
  std::array<int64_t, 3> padded;
  for (int k = 0; k < 3; ++k) padded[k] = std::max<int64_t>(size[k], o.window[k]);
  torch::Tensor x = image;
  if (padded != size)
    x = torch::constant_pad_nd(image, {0, padded[0] - size[0], 0, padded[1] - size[1], 0, padded[2] - size[2]}, 0);
  const auto wmap = importance_map(o.window, o.gaussian);
  const auto xs = window_starts(static_cast<int>(padded[0]), o.window[0], o.overlap);
  const auto ys = window_starts(static_cast<int>(padded[1]), o.window[1], o.overlap);
  const auto zs = window_starts(static_cast<int>(padded[2]), o.window[2], o.overlap);
  std::vector<std::array<int, 3>> windows;
  for (int z : zs)
    for (int y : ys)
      for (int xx : xs) windows.push_back({xx, y, z});
  torch::Tensor out, weight = torch::zeros({padded[2], padded[1], padded[0]});
  const size_t batch = static_cast<size_t>(std::max(1, o.batch));
  for (size_t first = 0; first < windows.size(); first += batch) {
    const size_t last = std::min(windows.size(), first + batch);
    std::vector<torch::Tensor> crops;
    for (size_t i = first; i < last; ++i) {
      const auto& w = windows[i];
      crops.push_back(x.slice(1, w[2], w[2] + o.window[2]).slice(2, w[1], w[1] + o.window[1])
                          .slice(3, w[0], w[0] + o.window[0]));
    }
    auto pred = predict(torch::stack(crops)).to(torch::kFloat32);
    if (!out.defined()) out = torch::zeros({pred.size(1), padded[2], padded[1], padded[0]});
    for (size_t i = first; i < last; ++i) {
      const auto& w = windows[i];
      out.slice(1, w[2], w[2] + o.window[2]).slice(2, w[1], w[1] + o.window[1]).slice(3, w[0], w[0] + o.window[0])
          .add_(pred[static_cast<int64_t>(i - first)] * wmap);
      weight.slice(0, w[2], w[2] + o.window[2]).slice(1, w[1], w[1] + o.window[1]).slice(2, w[0], w[0] + o.window[0])
          .add_(wmap);
    }
  }
  out = out / weight.unsqueeze(0);
  return out.slice(1, 0, size[2]).slice(2, 0, size[1]).slice(3, 0, size[0]).contiguous();
}

SlidingWindowOptions sliding_window_options_from(const StudyConfig& config) {
  SlidingWindowOptions o;
  const auto& p = config.segmentation.patch_size;
  o.window = {p[0], p[1], p[2]};
  o.overlap = config.segmentation.overlap;
  o.gaussian = config.segmentation.blend == "gaussian";
  o.batch = config.model.arch == "unet2d" ? 16 : 2;
  return o;
}

torch::Tensor predict_probabilities(models::UNet& net, const imaging::SegCase& c, const SlidingWindowOptions& options) {
  torch::NoGradGuard no_grad;
  net->eval();
  const torch::Device device = device_of(*net);  // windows go to the model's device and back
  return sliding_window(
      image_tensor(c),
      [&](const torch::Tensor& x) { return torch::softmax(seg_forward(net, x.to(device)), 1).to(torch::kCPU); },
      options);
}

std::vector<uint8_t> argmax_classes(const torch::Tensor& probabilities) {
  auto a = probabilities.argmax(0).to(torch::kUInt8).contiguous();
  return std::vector<uint8_t>(a.data_ptr<uint8_t>(), a.data_ptr<uint8_t>() + a.numel());
}

SegEvaluation evaluate_seg(models::UNet& net, const SegSet& data, const StudyConfig& config) {
  SegEvaluation e;
  const auto structures = seg_structures(config.segmentation.labels, config.segmentation.brats_regions);
  const auto options = sliding_window_options_from(config);
  double loss_sum = 0, seconds = 0;
  for (const auto& c : data.cases) {
    const auto t0 = Clock::now();
    auto probs = predict_probabilities(net, c, options);
    auto pred = argmax_classes(probs);
    seconds += seconds_since(t0);
    if (!c.classes.empty()) {
      auto target = torch::from_blob(const_cast<uint8_t*>(c.classes.data()), {c.size[2], c.size[1], c.size[0]},
                                     torch::kUInt8).to(torch::kInt64);
      auto p = probs.gather(0, target.unsqueeze(0)).clamp_min(1e-7);
      loss_sum += -p.log().mean().item<double>();
      auto m = seg_case_metrics(pred, c.classes, c.size, c.spacing, structures);
      e.sums.add(m);
      e.per_case.push_back(std::move(m));
      e.case_ids.push_back(c.id);
    }
  }
  if (!data.cases.empty()) {
    e.loss = loss_sum / static_cast<double>(data.cases.size());
    e.seconds_per_case = seconds / static_cast<double>(data.cases.size());
  }
  return e;
}

SegLearner::SegLearner(const StudyConfig& config, SegSet train, SegSet val, int site_index)
    : config_(config),
      train_(std::move(train)),
      val_(std::move(val)),
      site_index_(site_index),
      model_(unet_options(config)) {
  // The caller has resolved train.device already and reported any error.
  auto device = resolve_device(config.train.device);
  if (device.ok() && device->is_cuda()) place_model(*model_, *device, false);
}

StatusOr<fed::FitReport> SegLearner::fit(const fed::Weights& global, const fed::RoundSettings& settings) {
  try {
    keep_local_norm_ = settings.keep_local_norm;
    FEDRAD_RETURN_IF_ERROR(load_weights(*model_, keep_local_norm_ ? with_local_tensors(global, local_norm_) : global));
    auto options = seg_fit_options_from(config_, static_cast<int>(settings.local_epochs),
                                        settings.seed * 7919 + static_cast<uint64_t>(site_index_));
    options.fit.batch_size = static_cast<int>(settings.batch_size);
    options.fit.lr = settings.lr;
    options.prox_mu = settings.prox_mu;
    if (config_.train.lr_schedule == "cosine") {
      options.fit.schedule_epochs = config_.rounds * static_cast<int>(settings.local_epochs);
      options.fit.schedule_offset = static_cast<int>(settings.round - 1) * static_cast<int>(settings.local_epochs);
    }
    auto log = logger("train");
    options.fit.on_epoch = [&](int epoch, double loss) {
      log->info("round {} epoch {}/{}: Dice+CE loss {:.4f}", settings.round, epoch + 1, settings.local_epochs, loss);
    };
    if (config_.train.keep_optimizer_state) {
      // load_weights copies into the same parameter tensors, so the optimiser's references and
      // moments stay valid from round to round.
      if (!optimizer_) optimizer_ = make_optimizer(model_->parameters(), options.fit);
      options.fit.kept_optimizer = optimizer_.get();
    }
    FitStats stats = fit_seg(model_, train_, options);
    fed::FitReport report;
    report.weights = to_weights(*model_);
    if (keep_local_norm_) local_norm_ = norm_tensors_of(*model_, report.weights);
    report.num_examples = static_cast<uint64_t>(train_.size());
    report.train_loss = stats.loss;
    report.train_seconds = stats.seconds;
    return report;
  } catch (const std::exception& e) {
    return internal_error(std::string("local segmentation training failed: ") + e.what());
  }
}

StatusOr<fed::EvalReport> SegLearner::evaluate(const fed::Weights& global) {
  try {
    FEDRAD_RETURN_IF_ERROR(load_weights(*model_, keep_local_norm_ ? with_local_tensors(global, local_norm_) : global));
    SegEvaluation e = evaluate_seg(model_, val_, config_);
    fed::EvalReport report;
    report.num_examples = static_cast<uint64_t>(val_.size());
    report.loss = e.loss;
    report.seg = e.sums;
    return report;
  } catch (const std::exception& e) {
    return internal_error(std::string("segmentation evaluation failed: ") + e.what());
  }
}

}  // namespace fedrad::training
