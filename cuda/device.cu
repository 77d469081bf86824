#include <cuda_runtime.h>

#include "cuda/preprocess.h"

namespace fedrad::cuda {

bool device_available() {
  int count = 0;
  return cudaGetDeviceCount(&count) == cudaSuccess && count > 0;
}

std::string device_description(int index) {
  int count = 0;
  cudaError_t err = cudaGetDeviceCount(&count);
  if (err != cudaSuccess) return std::string("no CUDA device: ") + cudaGetErrorString(err);
  if (index < 0 || index >= count) return "no CUDA device " + std::to_string(index) + " (" + std::to_string(count) + " present)";
  cudaDeviceProp prop{};
  cudaGetDeviceProperties(&prop, index);
  return prop.name;
}

}  // namespace fedrad::cuda
