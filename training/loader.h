// Streams batches to the training device while it works (issue 4's loader): worker threads
// prepare the next batches (gather from an in-memory set, or decode files) into host buffers that
// are page-locked when the device is a GPU; each buffer is copied to the device asynchronously on
// a side stream, and the consumer's stream waits on that copy's event, never the host. In steady
// state the device does not wait for the host: BatchLoader::stats() says how long it did.
//
// On a CPU device the same queue runs (workers prepare batch k+1.. while batch k trains), minus
// pinning and copies, so the code path is exercised and tested on machines without a GPU.
#pragma once

#include <condition_variable>
#include <cstdint>
#include <map>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include <torch/types.h>

namespace fedrad::training {

// A batch as the workers hand it over: any number of tensors (images, labels, ...) in host memory.
struct HostBatch {
  std::vector<torch::Tensor> tensors;  // copied to the device
  std::vector<torch::Tensor> host;     // stay in host memory (indices, per-item parameters)
  std::string error;  // non-empty: the batch could not be prepared (next() throws with it)
};

// Host tensors for a batch: page-locked when `pinned` (copies to the GPU can then be asynchronous).
torch::Tensor empty_host(at::IntArrayRef sizes, torch::ScalarType dtype, bool pinned);

class BatchLoader {
 public:
  // Prepares batch `index` (0-based); runs on a worker thread, several at once when workers > 1.
  // `pinned`: allocate the batch's tensors with empty_host(..., pinned).
  using Prepare = std::function<HostBatch(int64_t index, bool pinned)>;

  struct Options {
    int depth = 3;    // batches prepared ahead of the consumer (bounded memory: depth + 1 batches)
    int workers = 1;  // threads preparing batches
  };

  BatchLoader(int64_t num_batches, Prepare prepare, torch::Device device, Options options);
  BatchLoader(int64_t num_batches, Prepare prepare, torch::Device device)
      : BatchLoader(num_batches, std::move(prepare), device, Options{}) {}
  ~BatchLoader();  // stops the workers; unconsumed batches are dropped
  BatchLoader(const BatchLoader&) = delete;
  BatchLoader& operator=(const BatchLoader&) = delete;

  // The next batch, in index order, on the device (on a GPU: ordered on the current stream, so
  // kernels launched after this call see the data). Returns false after the last batch. Throws
  // std::runtime_error with the worker's message when a batch could not be prepared.
  bool next(std::vector<torch::Tensor>* out, std::vector<torch::Tensor>* host = nullptr);

  struct Stats {
    int64_t batches = 0;
    double wait_seconds = 0;  // time next() blocked on the workers (the device starving)
  };
  Stats stats() const { return stats_; }

 private:
  struct Slot;
  void work();

  const int64_t num_batches_;
  Prepare prepare_;
  const torch::Device device_;
  const Options options_;
  const bool to_gpu_;

  std::mutex mu_;
  std::condition_variable ready_cv_, space_cv_;
  std::map<int64_t, std::unique_ptr<Slot>> ready_;  // prepared, not yet consumed, by batch index
  int64_t next_to_prepare_ = 0;
  int64_t next_to_consume_ = 0;
  bool stop_ = false;
  std::vector<std::thread> workers_;
  Stats stats_;
};

}  // namespace fedrad::training
