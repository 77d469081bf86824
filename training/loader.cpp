#include "training/loader.h"

#include <chrono>
#include <map>
#include <stdexcept>

#include <torch/torch.h>

#if defined(FEDRAD_TORCH_CUDA)
#include <ATen/cuda/CUDAEvent.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#endif

namespace fedrad::training {

torch::Tensor empty_host(at::IntArrayRef sizes, torch::ScalarType dtype, bool pinned) {
  return torch::empty(sizes, torch::TensorOptions().dtype(dtype).pinned_memory(pinned));
}

struct BatchLoader::Slot {
  std::vector<torch::Tensor> tensors;  // on the device once ready (host tensors on a CPU device)
  std::vector<torch::Tensor> host;
  std::string error;
#if defined(FEDRAD_TORCH_CUDA)
  at::cuda::CUDAEvent copied;  // recorded on the side stream after the asynchronous copies
#endif
};

BatchLoader::BatchLoader(int64_t num_batches, Prepare prepare, torch::Device device, Options options)
    : num_batches_(num_batches),
      prepare_(std::move(prepare)),
      device_(device),
      options_(options),
      to_gpu_(device.is_cuda()) {
  const int workers = std::max(1, options_.workers);
  for (int i = 0; i < workers && i < num_batches_; ++i) workers_.emplace_back([this] { work(); });
}

BatchLoader::~BatchLoader() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stop_ = true;
  }
  space_cv_.notify_all();
  ready_cv_.notify_all();
  for (auto& t : workers_) t.join();
}

void BatchLoader::work() {
  for (;;) {
    int64_t index;
    {
      std::unique_lock<std::mutex> lock(mu_);
      space_cv_.wait(lock, [&] {
        return stop_ || next_to_prepare_ >= num_batches_ ||
               next_to_prepare_ - next_to_consume_ < std::max(1, options_.depth);
      });
      if (stop_ || next_to_prepare_ >= num_batches_) return;
      index = next_to_prepare_++;
    }
    auto slot = std::make_unique<Slot>();
    try {
      HostBatch host = prepare_(index, to_gpu_);
      slot->error = std::move(host.error);
      slot->host = std::move(host.host);
      if (slot->error.empty() && to_gpu_) {
#if defined(FEDRAD_TORCH_CUDA)
        c10::cuda::CUDAGuard guard(device_);
        auto stream = c10::cuda::getStreamFromPool(/*isHighPriority=*/false, device_.index());
        c10::cuda::CUDAStreamGuard stream_guard(stream);
        for (auto& t : host.tensors) slot->tensors.push_back(t.to(device_, /*non_blocking=*/true));
        slot->copied.record(stream);
#else
        for (auto& t : host.tensors) slot->tensors.push_back(t.to(device_));
#endif
      } else {
        slot->tensors = std::move(host.tensors);
      }
    } catch (const std::exception& e) {
      slot->error = "batch " + std::to_string(index) + ": " + e.what();
    }
    {
      std::lock_guard<std::mutex> lock(mu_);
      ready_.emplace(index, std::move(slot));
    }
    ready_cv_.notify_all();
  }
}

bool BatchLoader::next(std::vector<torch::Tensor>* out, std::vector<torch::Tensor>* host) {
  if (next_to_consume_ >= num_batches_) return false;
  std::unique_ptr<Slot> slot;
  {
    const auto t0 = std::chrono::steady_clock::now();
    std::unique_lock<std::mutex> lock(mu_);
    ready_cv_.wait(lock, [&] { return ready_.count(next_to_consume_) > 0; });
    slot = std::move(ready_[next_to_consume_]);
    ready_.erase(next_to_consume_);
    ++next_to_consume_;
    stats_.wait_seconds += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    ++stats_.batches;
  }
  space_cv_.notify_all();
  if (!slot->error.empty()) throw std::runtime_error(slot->error);
#if defined(FEDRAD_TORCH_CUDA)
  if (to_gpu_) {
    auto current = c10::cuda::getCurrentCUDAStream(device_.index());
    slot->copied.block(current);  // the consumer's stream waits for the copy, not the host
    // The device tensors were allocated on the side stream: tell the caching allocator they are
    // used on the consumer's stream too, so their memory is not reused before that work is done.
    for (auto& t : slot->tensors) t.record_stream(current);
  }
#endif
  *out = std::move(slot->tensors);
  if (host) *host = std::move(slot->host);
  return true;
}

}  // namespace fedrad::training
