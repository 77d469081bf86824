#include "training/device.h"

#include <ATen/autocast_mode.h>
#include <torch/cuda.h>
#include <torch/torch.h>
#include <torch/version.h>

#include "cuda/preprocess.h"  // device_description
#include "training/trainer.h"  // set_threads

namespace fedrad::training {

// LibTorch 2.4 moved autocast to per-device-type functions and deprecated the CUDA-only ones.
#if TORCH_VERSION_MAJOR > 2 || (TORCH_VERSION_MAJOR == 2 && TORCH_VERSION_MINOR >= 4)
#define FEDRAD_AUTOCAST_PER_DEVICE 1
#endif

StatusOr<torch::Device> resolve_device(const std::string& spec) {
  if (spec == "cpu") return torch::Device(torch::kCPU);
  int index = 0;
  if (spec.rfind("cuda:", 0) == 0) {
    const std::string digits = spec.substr(5);
    if (digits.empty() || digits.size() > 3 || digits.find_first_not_of("0123456789") != std::string::npos)
      return invalid_argument("train.device: '" + spec + "' is not cpu, cuda or cuda:N");
    index = std::stoi(digits);
  } else if (spec != "cuda") {
    return invalid_argument("train.device: '" + spec + "' is not cpu, cuda or cuda:N");
  }
  if (!torch::cuda::is_available()) {
    return unsupported("train.device: " + spec +
                               " asked for, but this process cannot use CUDA (" +
                               (cuda::device_available() ? std::string("this LibTorch build is CPU-only")
                                                         : cuda::device_description(0)) +
                               "); use train.device: cpu or a CUDA LibTorch on a GPU node");
  }
  const int count = static_cast<int>(torch::cuda::device_count());
  if (index >= count)
    return unsupported("train.device: " + spec + " asked for, but this node has " + std::to_string(count) +
                               " CUDA device(s)");
  return torch::Device(torch::kCUDA, static_cast<torch::DeviceIndex>(index));
}

std::string describe_device(const torch::Device& device) {
  if (device.is_cpu()) return "cpu (" + std::to_string(torch::get_num_threads()) + " threads)";
  const int index = device.has_index() ? device.index() : 0;
  return "cuda:" + std::to_string(index) + " (" + cuda::device_description(index) + ")";
}

void configure_backend(const TrainConfig& train, const torch::Device& device) {
  if (device.is_cuda()) at::globalContext().setBenchmarkCuDNN(train.cudnn_benchmark);
}

StatusOr<torch::Device> prepare_device(const TrainConfig& train, const std::string& spec, int threads) {
  set_threads(threads);
  FEDRAD_ASSIGN_OR_RETURN(const torch::Device device, resolve_device(spec));
  configure_backend(train, device);
  return device;
}

Precision precision_for(const TrainConfig& train, const torch::Device& device) {
  Precision p;
  p.amp = train.amp && device.is_cuda();
  p.amp_dtype = train.amp_dtype == "bfloat16" ? torch::kBFloat16 : torch::kFloat16;
  p.channels_last = train.channels_last;
  return p;
}

AutocastScope::AutocastScope(bool enabled, torch::ScalarType dtype) : enabled_(enabled) {
  if (!enabled_) return;
#if defined(FEDRAD_AUTOCAST_PER_DEVICE)
  prev_enabled_ = at::autocast::is_autocast_enabled(at::kCUDA);
  prev_dtype_ = at::autocast::get_autocast_dtype(at::kCUDA);
  at::autocast::set_autocast_enabled(at::kCUDA, true);
  at::autocast::set_autocast_dtype(at::kCUDA, dtype);
#else
  prev_enabled_ = at::autocast::is_enabled();
  prev_dtype_ = at::autocast::get_autocast_gpu_dtype();
  at::autocast::set_enabled(true);
  at::autocast::set_autocast_gpu_dtype(dtype);
#endif
  at::autocast::increment_nesting();
}

AutocastScope::~AutocastScope() {
  if (!enabled_) return;
  // Leaving the outermost scope frees the cached low-precision copies of the weights, as
  // torch.autocast's __exit__ does.
  if (at::autocast::decrement_nesting() == 0) at::autocast::clear_cache();
#if defined(FEDRAD_AUTOCAST_PER_DEVICE)
  at::autocast::set_autocast_enabled(at::kCUDA, prev_enabled_);
  at::autocast::set_autocast_dtype(at::kCUDA, prev_dtype_);
#else
  at::autocast::set_enabled(prev_enabled_);
  at::autocast::set_autocast_gpu_dtype(prev_dtype_);
#endif
}

bool cuda_autocast_enabled() {
#if defined(FEDRAD_AUTOCAST_PER_DEVICE)
  return at::autocast::is_autocast_enabled(at::kCUDA);
#else
  return at::autocast::is_enabled();
#endif
}

void RunningLoss::add(const torch::Tensor& loss, double weight) {
  if (loss.device().is_cpu()) {
    host_sum_ += loss.item<double>() * weight;
    return;
  }
  auto l = loss.detach() * weight;
  device_sum_ = device_sum_.defined() ? device_sum_ + l : l;
}

double RunningLoss::sum() const {
  return host_sum_ + (device_sum_.defined() ? device_sum_.item<double>() : 0.0);
}

GradScaler::GradScaler(Options options) : options_(options), scale_(options.init_scale) {}

torch::Tensor GradScaler::scale(const torch::Tensor& loss) const {
  return options_.enabled ? loss * scale_ : loss;
}

bool GradScaler::unscale(const std::vector<torch::Tensor>& params) {
  if (!options_.enabled) return true;
  torch::NoGradGuard no_grad;
  const double inv = 1.0 / scale_;
  std::vector<torch::Tensor> grads;
  for (const auto& p : params)
    if (p.grad().defined()) grads.push_back(p.grad());
  if (!grads.empty() && grads.front().is_cuda()) {
    // PyTorch's fused kernel (what torch.cuda.amp.GradScaler calls): one launch for all tensors.
    auto found_inf = torch::zeros({1}, grads.front().options());
    auto inv_scale = torch::full({1}, inv, grads.front().options());
    at::_amp_foreach_non_finite_check_and_unscale_(grads, found_inf, inv_scale);
    finite_ = found_inf.item<float>() == 0.0f;
    unscaled_ = true;
    return finite_;
  }
  torch::Tensor bad;  // accumulated on the device: one host sync per step, not one per tensor
  for (const auto& p : params) {
    auto g = p.grad();
    if (!g.defined()) continue;
    g.mul_(inv);
    auto b = g.isfinite().logical_not().any();
    bad = bad.defined() ? bad.logical_or(b) : b;
  }
  finite_ = !bad.defined() || !bad.item<bool>();
  unscaled_ = true;
  return finite_;
}

void GradScaler::update() {
  unscaled_ = false;
  if (!finite_) {
    scale_ *= options_.backoff_factor;
    growth_tracker_ = 0;
    ++skipped_;
    return;
  }
  if (++growth_tracker_ >= options_.growth_interval) {
    scale_ *= options_.growth_factor;
    growth_tracker_ = 0;
  }
}

}  // namespace fedrad::training
