// Data-parallel training across the GPUs (or CPU processes) of one site: one process per rank,
// gradients all-reduced (mean) after every backward pass, so the ranks step in lockstep with
// identical weights. Rank 0 is the site as the federation sees it (it alone talks to the
// coordinator and reports the whole site's sample count); ranks 1.. are workers that take
// commands from rank 0 over a ZeroMQ control channel and never touch the federation.
//
//   rank 0 (DataParallelLearner)            rank r (run_data_parallel_worker)
//     FIT(round settings) ------------------>  (waits for commands)
//     broadcast(weights from rank 0) <======>  broadcast
//     every batch: all_reduce_mean(grads) <=>  all_reduce_mean(grads)
//     all_reduce_mean(BN buffers, loss) <===>  all_reduce_mean(BN buffers, loss)
//     <------------------------------------ DONE
//     STOP (at the end, or to abort) ------->  exits
//
// Sharding: rank r of w trains on the train examples with index % w == r, truncated to
// floor(n / w) each so that every rank runs the same number of batches, with batch size
// batch_size / w (the effective batch is the config's) and seed + r for shuffling.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include <torch/types.h>

#include "common/config.h"
#include "common/status.h"
#include "federation/federation.h"
#include "models/classifier.h"
#include "training/dataset.h"
#include "training/trainer.h"

namespace fedrad::training {

// Collectives across the ranks of one site. Every rank calls the same collectives in the same
// order with tensors of the same shapes.
class Communicator {
 public:
  virtual ~Communicator() = default;
  virtual int rank() const = 0;
  virtual int world() const = 0;
  // In place: each tensor becomes the mean of that tensor over the ranks (float32). Every rank
  // ends with bit-identical values.
  virtual Status all_reduce_mean(const std::vector<torch::Tensor>& tensors) = 0;
  // In place: every rank's tensors become `root`'s (float32).
  virtual Status broadcast(const std::vector<torch::Tensor>& tensors, int root) = 0;
};

// One message between rank 0 and a worker on the control channel.
struct ControlMessage {
  uint8_t type = 0;  // ControlChannel::k*
  uint64_t seq = 0;  // the fit or collective it belongs to
  std::string payload;
};

// The ZeroMQ star between rank 0 (a ROUTER bound to the address) and the workers (DEALERs).
// It carries commands, and the data of the CPU backend's collectives. Within one site machine:
// the app uses ipc:// in a folder only its user can enter; tests use tcp://127.0.0.1.
class ControlChannel {
 public:
  enum : uint8_t { kHello = 1, kWelcome, kFit, kStop, kPart, kResult, kDone, kFailed, kNcclId };

  // Rank 0 binds `address` and waits up to timeout_s for every other rank's hello, then welcomes
  // them; the others connect and wait as long for the welcome.
  static StatusOr<std::unique_ptr<ControlChannel>> open(int rank, int world, const std::string& address,
                                                        double timeout_s);
  virtual ~ControlChannel() = default;
  virtual int rank() const = 0;
  virtual int world() const = 0;
  // Rank 0 sends to any rank; the others only to rank 0.
  virtual Status send(int to, const ControlMessage& message) = 0;
  // The next message from `from` (rank 0 keeps what the others sent meanwhile); a timeout error
  // after timeout_s.
  virtual StatusOr<ControlMessage> recv(int from, double timeout_s) = 0;
};

// The backend over the control channel: rank 0 gathers every rank's tensors, sums them in rank
// order and sends the result back, so all ranks get the same bits. Tensors may live on any
// device (they are staged through host memory). `op_timeout_s` bounds each wait.
std::unique_ptr<Communicator> make_cpu_communicator(ControlChannel& channel, double op_timeout_s = 600);

// NCCL on the ranks' CUDA devices (rank 0 makes the ncclUniqueId and sends it over `channel`).
// Collective over all ranks. Fails with a message naming what is missing when this build has no
// NCCL (training/data_parallel_nccl.h).
StatusOr<std::unique_ptr<Communicator>> make_nccl_communicator(ControlChannel& channel, int cuda_device,
                                                               double op_timeout_s = 600);

// backend: "nccl" on a CUDA device, "cpu" otherwise (the choice every rank makes alike from
// its config). `device` is this rank's (rank_device).
StatusOr<std::unique_ptr<Communicator>> make_communicator(ControlChannel& channel, const std::string& device,
                                                          double op_timeout_s = 600);

// The device of `rank`: cuda -> cuda:rank, cuda:N -> cuda:(N + rank), cpu -> cpu.
std::string rank_device(const std::string& device, int rank);

// The examples of `rank` of `world`: index % world == rank, floor(n / world) of them.
ImageSet shard_for_rank(const ImageSet& data, int rank, int world);

// The fit options of `rank` for a round: the site's options (as TorchLearner's) with batch size
// settings.batch_size / world and seed + rank.
FitOptions rank_fit_options(const StudyConfig& config, const fed::RoundSettings& settings, int site_index, int rank,
                            int world);

// One rank's part of a data-parallel fit, the same on every rank: broadcasts the model's
// parameters and floating-point buffers from rank 0, trains on `shard` with the gradients
// all-reduced after every backward pass (options.after_backward is set here), then averages the
// floating-point buffers (batch norm's running statistics) and the loss over the ranks.
// stats.samples is the whole group's (shard size x world). Torch and communication errors come
// back as Status.
StatusOr<FitStats> data_parallel_fit(models::Classifier& model, const ImageSet& shard, FitOptions options,
                                     Communicator& comm);

struct DataParallelOptions {
  int world = 2;                   // processes of the site, this one (rank 0) included
  std::string control_address;     // ZeroMQ endpoint rank 0 binds
  double connect_timeout_s = 300;  // how long rank 0 waits for the workers to come up
  double op_timeout_s = 600;       // a collective or a worker's reply
};

// Rank 0 of a data-parallel site: the learner the site runner drives. The coordinator sees one
// participant whose sample count is the whole group's. Evaluation runs here alone (rank 0 holds
// the whole validation split).
class DataParallelLearner : public fed::Learner {
 public:
  // Binds the control channel, waits for the world - 1 workers and sets up the backend. `train`
  // is the site's whole train split (this rank trains on its shard of it).
  static StatusOr<std::unique_ptr<DataParallelLearner>> create(const StudyConfig& config, const ImageSet& train,
                                                               ImageSet val, int site_index,
                                                               const DataParallelOptions& options);
  ~DataParallelLearner() override;  // stop()

  StatusOr<fed::FitReport> fit(const fed::Weights& global, const fed::RoundSettings& settings) override;
  StatusOr<fed::EvalReport> evaluate(const fed::Weights& global) override;
  uint64_t num_train_examples() const override { return site_train_examples_; }
  uint64_t num_val_examples() const override { return static_cast<uint64_t>(val_.size()); }

  // Tells the workers to exit (once). After a failed fit the workers are stopped and every later
  // fit fails: a lockstep group cannot go on with a rank missing.
  void stop();

 private:
  DataParallelLearner(const StudyConfig& config, ImageSet shard, ImageSet val, int site_index);

  StudyConfig config_;
  ImageSet shard_, val_;
  uint64_t site_train_examples_ = 0;
  int site_index_;
  models::Classifier model_;
  std::unique_ptr<ControlChannel> channel_;
  std::unique_ptr<Communicator> comm_;
  double op_timeout_s_ = 600;
  uint64_t fits_ = 0;
  bool stopped_ = false;
  Status broken_;                 // why the group stopped (ok while it works)
  bool keep_local_norm_ = false;  // FedBN, as TorchLearner
  fed::Weights local_norm_;
  std::unique_ptr<torch::optim::Optimizer> optimizer_;  // train.keep_optimizer_state
};

// A worker rank (1..world-1) of a data-parallel site: connects to rank 0's control channel,
// trains its shard of `train` in lockstep on each FIT, and returns when rank 0 says STOP (ok) or
// is silent for idle_timeout_s (error). `config` is the site's; the rank's device is derived from
// train.device (rank_device). A failed fit is reported to rank 0 and ends the worker (error).
Status run_data_parallel_worker(const StudyConfig& config, const ImageSet& train, int site_index, int rank, int world,
                                const std::string& control_address, double idle_timeout_s = 3600,
                                double op_timeout_s = 600);

}  // namespace fedrad::training
