// Built when the project is configured without CUDA.
#include "cuda/preprocess.h"

namespace fedrad::cuda {

bool device_available() { return false; }
std::string device_description(int) { return "no CUDA device: this build has no CUDA support (FEDRAD_CUDA=OFF or no nvcc)"; }

}  // namespace fedrad::cuda
