// The NCCL calls of data-parallel training (training/data_parallel.h), behind a torch-free
// interface on raw device buffers. It is compiled as its own small library (fedrad_nccl) so that
// FEDRAD_HAVE_NCCL stays off the torch targets, which share one precompiled header and must keep
// identical compile flags. Built without NCCL, every call returns an error naming what is missing.
#pragma once

#include <cstddef>
#include <memory>
#include <string>

#include "common/status.h"

namespace fedrad::training::nccl {

// Whether this build has NCCL (CMake found nccl.h and libnccl with CUDA).
bool available();
// Why not, for error messages ("" when available).
std::string unavailable_reason();

// A fresh ncclUniqueId as bytes: rank 0 makes it and sends it to the other ranks.
StatusOr<std::string> make_unique_id();

// One rank's NCCL communicator on one CUDA device. `stream` arguments are cudaStream_t values
// (nullptr = the legacy default stream); the calls are enqueued on it and return at once.
class Comm {
 public:
  // Collective: every rank of the group calls it with the same id.
  static StatusOr<std::unique_ptr<Comm>> init(const std::string& unique_id, int rank, int world, int cuda_device);
  virtual ~Comm() = default;
  // In place, ncclSum over float32.
  virtual Status all_reduce_sum(float* data, size_t count, void* stream) = 0;
  // In place, from `root`, over raw bytes (any dtype).
  virtual Status broadcast(void* data, size_t bytes, int root, void* stream) = 0;
};

}  // namespace fedrad::training::nccl
