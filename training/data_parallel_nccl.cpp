#include "training/data_parallel_nccl.h"

#if defined(FEDRAD_HAVE_NCCL)
#include <cuda_runtime_api.h>
#include <nccl.h>
#endif

namespace fedrad::training::nccl {

#if defined(FEDRAD_HAVE_NCCL)

namespace {

Status nccl_status(ncclResult_t r, const char* what) {
  if (r == ncclSuccess) return ok_status();
  return internal_error(std::string("NCCL ") + what + " failed: " + ncclGetErrorString(r));
}

class NcclComm : public Comm {
 public:
  explicit NcclComm(ncclComm_t comm) : comm_(comm) {}
  ~NcclComm() override { ncclCommDestroy(comm_); }

  Status all_reduce_sum(float* data, size_t count, void* stream) override {
    return nccl_status(ncclAllReduce(data, data, count, ncclFloat32, ncclSum, comm_, static_cast<cudaStream_t>(stream)),
                       "all-reduce");
  }
  Status broadcast(void* data, size_t bytes, int root, void* stream) override {
    return nccl_status(ncclBroadcast(data, data, bytes, ncclUint8, root, comm_, static_cast<cudaStream_t>(stream)),
                       "broadcast");
  }

 private:
  ncclComm_t comm_;
};

}  // namespace

bool available() { return true; }
std::string unavailable_reason() { return ""; }

StatusOr<std::string> make_unique_id() {
  ncclUniqueId id;
  FEDRAD_RETURN_IF_ERROR(nccl_status(ncclGetUniqueId(&id), "ncclGetUniqueId"));
  return std::string(id.internal, sizeof(id.internal));
}

StatusOr<std::unique_ptr<Comm>> Comm::init(const std::string& unique_id, int rank, int world, int cuda_device) {
  ncclUniqueId id;
  if (unique_id.size() != sizeof(id.internal))
    return corrupt("NCCL unique id has " + std::to_string(unique_id.size()) + " bytes, expected " +
                   std::to_string(sizeof(id.internal)));
  std::copy(unique_id.begin(), unique_id.end(), id.internal);
  if (cudaError_t e = cudaSetDevice(cuda_device); e != cudaSuccess)
    return internal_error("cuda:" + std::to_string(cuda_device) + ": cannot select the device: " + cudaGetErrorString(e));
  ncclComm_t comm = nullptr;
  FEDRAD_RETURN_IF_ERROR(nccl_status(ncclCommInitRank(&comm, world, id, rank), "ncclCommInitRank"));
  return std::unique_ptr<Comm>(new NcclComm(comm));
}

#else  // no NCCL in this build

bool available() { return false; }
std::string unavailable_reason() {
  return "this build has no NCCL (CMake found no CUDA compiler, or no nccl.h and libnccl; reconfigure with them "
         "installed, or use train.device: cpu)";
}

StatusOr<std::string> make_unique_id() { return unsupported(unavailable_reason()); }

StatusOr<std::unique_ptr<Comm>> Comm::init(const std::string&, int, int, int) {
  return unsupported(unavailable_reason());
}

#endif

}  // namespace fedrad::training::nccl
