#include "training/data_parallel.h"

#include <chrono>
#include <cstring>
#include <deque>
#include <map>
#include <stdexcept>

#include <nlohmann/json.hpp>
#include <torch/torch.h>
#include <zmq.hpp>
#include <zmq_addon.hpp>

#if defined(FEDRAD_TORCH_CUDA)
#include <ATen/cuda/CUDAContext.h>
#endif

#include "common/log.h"
#include "training/checkpoint.h"
#include "training/data_parallel_nccl.h"
#include "training/device.h"
#include "training/learner.h"

namespace fedrad::training {
namespace {

using Clock = std::chrono::steady_clock;

std::string rank_name(int rank) { return "rank " + std::to_string(rank); }

// type u8 | seq u64 (little-endian) | payload
std::string encode(const ControlMessage& m) {
  std::string out(9 + m.payload.size(), '\0');
  out[0] = static_cast<char>(m.type);
  for (int i = 0; i < 8; ++i) out[1 + i] = static_cast<char>((m.seq >> (8 * i)) & 0xff);
  std::memcpy(out.data() + 9, m.payload.data(), m.payload.size());
  return out;
}

StatusOr<ControlMessage> decode(const zmq::message_t& frame) {
  if (frame.size() < 9) return corrupt("data-parallel control message of " + std::to_string(frame.size()) + " bytes");
  const auto* p = static_cast<const unsigned char*>(frame.data());
  ControlMessage m;
  m.type = p[0];
  for (int i = 0; i < 8; ++i) m.seq |= static_cast<uint64_t>(p[1 + i]) << (8 * i);
  m.payload.assign(reinterpret_cast<const char*>(p) + 9, frame.size() - 9);
  return m;
}

class ZmqControlChannel : public ControlChannel {
 public:
  ZmqControlChannel(int rank, int world) : rank_(rank), world_(world), queues_(static_cast<size_t>(world)) {}

  Status start(const std::string& address, double timeout_s) {
    try {
      if (rank_ == 0) {
        socket_ = zmq::socket_t(ctx_, zmq::socket_type::router);
        socket_.set(zmq::sockopt::linger, 2000);  // a last STOP still goes out at close
        socket_.set(zmq::sockopt::router_mandatory, 1);  // a send to a vanished worker fails, not drops
        socket_.bind(address);
        return await_workers(timeout_s);
      }
      socket_ = zmq::socket_t(ctx_, zmq::socket_type::dealer);
      socket_.set(zmq::sockopt::linger, 2000);
      socket_.set(zmq::sockopt::routing_id, rank_name(rank_));
      socket_.connect(address);
    } catch (const zmq::error_t& e) {
      return io_error("data-parallel control channel " + address + ": " + e.what());
    }
    std::string hello(8, '\0');
    std::memcpy(hello.data(), &rank_, 4);
    std::memcpy(hello.data() + 4, &world_, 4);
    FEDRAD_RETURN_IF_ERROR(send(0, {kHello, 0, hello}));
    auto welcome = recv(0, timeout_s);
    if (!welcome.ok()) return welcome.status().with_context(rank_name(rank_) + ": no welcome from rank 0 at " + address);
    if (welcome->type != kWelcome) return corrupt(rank_name(rank_) + ": expected rank 0's welcome");
    return ok_status();
  }

  int rank() const override { return rank_; }
  int world() const override { return world_; }

  Status send(int to, const ControlMessage& message) override {
    if (to < 0 || to >= world_ || to == rank_ || (rank_ != 0 && to != 0))
      return invalid_argument(rank_name(rank_) + " cannot send to " + rank_name(to));
    const std::string bytes = encode(message);
    try {
      if (rank_ == 0) {
        const std::string& id = ids_.at(static_cast<size_t>(to));
        socket_.send(zmq::buffer(id), zmq::send_flags::sndmore);
      }
      socket_.send(zmq::buffer(bytes), zmq::send_flags::none);
    } catch (const zmq::error_t& e) {
      return io_error("data-parallel: cannot send to " + rank_name(to) + ": " + e.what());
    }
    return ok_status();
  }

  StatusOr<ControlMessage> recv(int from, double timeout_s) override {
    if (from < 0 || from >= world_ || from == rank_ || (rank_ != 0 && from != 0))
      return invalid_argument(rank_name(rank_) + " cannot receive from " + rank_name(from));
    auto& queue = queues_[static_cast<size_t>(from)];
    if (!queue.empty()) {
      ControlMessage m = std::move(queue.front());
      queue.pop_front();
      return m;
    }
    const auto deadline = Clock::now() + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(timeout_s));
    while (true) {
      auto got = recv_any(deadline);
      if (!got.ok()) {
        if (got.status().code() == StatusCode::kTimeout)
          return timeout_error(rank_name(rank_) + ": nothing from " + rank_name(from) + " for " +
                               std::to_string(static_cast<int>(timeout_s)) + " s");
        return got.status();
      }
      if (got->first == from) return std::move(got->second);
      queues_[static_cast<size_t>(got->first)].push_back(std::move(got->second));
    }
  }

 private:
  // Waits up to a second (less when `left` is shorter) for one multipart message; false: none yet.
  StatusOr<bool> poll_once(std::chrono::milliseconds left, std::vector<zmq::message_t>* parts) {
    try {
      zmq::pollitem_t items[] = {{static_cast<void*>(socket_), 0, ZMQ_POLLIN, 0}};
      zmq::poll(items, 1, std::min<std::chrono::milliseconds>(left, std::chrono::milliseconds(1000)));
      if (!(items[0].revents & ZMQ_POLLIN)) return false;
      return static_cast<bool>(zmq::recv_multipart(socket_, std::back_inserter(*parts), zmq::recv_flags::dontwait));
    } catch (const zmq::error_t& e) {
      return io_error(std::string("data-parallel control channel: ") + e.what());
    }
  }

  // The next message from a known peer, with its rank.
  StatusOr<std::pair<int, ControlMessage>> recv_any(Clock::time_point deadline) {
    while (true) {
      const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now());
      if (left.count() <= 0) return timeout_error("timeout");
      std::vector<zmq::message_t> parts;
      auto got = poll_once(left, &parts);
      if (!got.ok()) return got.status();
      if (!*got) continue;
      int from = 0;
      if (rank_ == 0) {
        if (parts.size() != 2) continue;
        from = rank_of(parts[0].to_string());
        if (from <= 0) continue;  // not a worker of this group: dropped
      } else if (parts.size() != 1) {
        continue;
      }
      auto m = decode(parts.back());
      if (!m.ok()) return m.status();
      return std::make_pair(from, std::move(m).value());
    }
  }

  int rank_of(const std::string& id) const {
    for (int r = 1; r < world_; ++r)
      if (ids_[static_cast<size_t>(r)] == id) return r;
    return -1;
  }

  // Rank 0: every worker says hello with its rank and the world it was started with.
  Status await_workers(double timeout_s) {
    ids_.assign(static_cast<size_t>(world_), "");
    const auto deadline = Clock::now() + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(timeout_s));
    int joined = 0;
    while (joined < world_ - 1) {
      const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now());
      if (left.count() <= 0)
        return timeout_error("data-parallel: " + std::to_string(joined) + " of " + std::to_string(world_ - 1) +
                             " worker processes connected within " + std::to_string(static_cast<int>(timeout_s)) + " s");
      std::vector<zmq::message_t> parts;
      auto got = poll_once(left, &parts);
      if (!got.ok()) return got.status();
      if (!*got) continue;
      if (parts.size() != 2) continue;
      auto m = decode(parts[1]);
      if (!m.ok() || m->type != kHello || m->payload.size() != 8) continue;
      int rank = 0, world = 0;
      std::memcpy(&rank, m->payload.data(), 4);
      std::memcpy(&world, m->payload.data() + 4, 4);
      if (world != world_ || rank <= 0 || rank >= world_)
        return invalid_argument("data-parallel: a worker says it is rank " + std::to_string(rank) + " of " +
                                std::to_string(world) + ", this group has " + std::to_string(world_) + " ranks");
      if (!ids_[static_cast<size_t>(rank)].empty())
        return invalid_argument("data-parallel: two workers say they are " + rank_name(rank));
      ids_[static_cast<size_t>(rank)] = parts[0].to_string();
      ++joined;
    }
    for (int r = 1; r < world_; ++r) FEDRAD_RETURN_IF_ERROR(send(r, {kWelcome, 0, ""}));
    return ok_status();
  }

  int rank_, world_;
  zmq::context_t ctx_;
  zmq::socket_t socket_;
  std::vector<std::string> ids_;  // rank 0: each worker's routing id
  std::vector<std::deque<ControlMessage>> queues_;
};

// The tensors' values as one float32 buffer, in order.
StatusOr<std::string> pack(const std::vector<torch::Tensor>& tensors) {
  size_t total = 0;
  for (size_t i = 0; i < tensors.size(); ++i) {
    if (!tensors[i].defined() || tensors[i].scalar_type() != torch::kFloat)
      return invalid_argument("data-parallel: tensor " + std::to_string(i) + " is not a defined float32 tensor");
    total += static_cast<size_t>(tensors[i].numel());
  }
  std::string out(total * sizeof(float), '\0');
  size_t offset = 0;
  for (const auto& t : tensors) {
    auto c = t.detach().to(torch::kCPU).contiguous();
    const size_t bytes = static_cast<size_t>(c.numel()) * sizeof(float);
    std::memcpy(out.data() + offset, c.data_ptr<float>(), bytes);
    offset += bytes;
  }
  return out;
}

void unpack(const std::string& bytes, const std::vector<torch::Tensor>& tensors) {
  torch::NoGradGuard no_grad;
  size_t offset = 0;
  for (const auto& t : tensors) {
    auto src = torch::from_blob(const_cast<char*>(bytes.data() + offset), t.sizes(), torch::kFloat);
    const_cast<torch::Tensor&>(t).copy_(src);
    offset += static_cast<size_t>(t.numel()) * sizeof(float);
  }
}

class CpuCommunicator : public Communicator {
 public:
  CpuCommunicator(ControlChannel& channel, double timeout_s) : ch_(channel), timeout_s_(timeout_s) {}
  int rank() const override { return ch_.rank(); }
  int world() const override { return ch_.world(); }

  Status all_reduce_mean(const std::vector<torch::Tensor>& tensors) override {
    FEDRAD_ASSIGN_OR_RETURN(std::string mine, pack(tensors));
    const uint64_t seq = ++seq_;
    if (rank() != 0) {
      FEDRAD_RETURN_IF_ERROR(ch_.send(0, {ControlChannel::kPart, seq, std::move(mine)}));
      FEDRAD_ASSIGN_OR_RETURN(std::string result, await(0, ControlChannel::kResult, seq, mine_size(tensors)));
      unpack(result, tensors);
      return ok_status();
    }
    // Rank 0 sums in rank order (so the result does not depend on arrival order) and divides once.
    std::vector<float> sum(mine.size() / sizeof(float));
    std::memcpy(sum.data(), mine.data(), mine.size());
    for (int r = 1; r < world(); ++r) {
      FEDRAD_ASSIGN_OR_RETURN(std::string part, await(r, ControlChannel::kPart, seq, mine.size()));
      const float* p = reinterpret_cast<const float*>(part.data());
      for (size_t i = 0; i < sum.size(); ++i) sum[i] += p[i];
    }
    const float w = static_cast<float>(world());
    for (float& v : sum) v /= w;
    std::string result(reinterpret_cast<const char*>(sum.data()), sum.size() * sizeof(float));
    for (int r = 1; r < world(); ++r) FEDRAD_RETURN_IF_ERROR(ch_.send(r, {ControlChannel::kResult, seq, result}));
    unpack(result, tensors);
    return ok_status();
  }

  Status broadcast(const std::vector<torch::Tensor>& tensors, int root) override {
    if (root < 0 || root >= world()) return invalid_argument("data-parallel broadcast from " + rank_name(root));
    const uint64_t seq = ++seq_;
    const size_t size = mine_size(tensors);
    if (rank() == root) {
      FEDRAD_ASSIGN_OR_RETURN(std::string mine, pack(tensors));
      if (rank() != 0) return ch_.send(0, {ControlChannel::kPart, seq, std::move(mine)});
      for (int r = 1; r < world(); ++r) FEDRAD_RETURN_IF_ERROR(ch_.send(r, {ControlChannel::kResult, seq, mine}));
      return ok_status();
    }
    if (rank() == 0) {  // relays a worker's broadcast
      FEDRAD_ASSIGN_OR_RETURN(std::string data, await(root, ControlChannel::kPart, seq, size));
      for (int r = 1; r < world(); ++r)
        if (r != root) FEDRAD_RETURN_IF_ERROR(ch_.send(r, {ControlChannel::kResult, seq, data}));
      unpack(data, tensors);
      return ok_status();
    }
    FEDRAD_ASSIGN_OR_RETURN(std::string data, await(0, ControlChannel::kResult, seq, size));
    unpack(data, tensors);
    return ok_status();
  }

 private:
  static size_t mine_size(const std::vector<torch::Tensor>& tensors) {
    size_t n = 0;
    for (const auto& t : tensors) n += static_cast<size_t>(t.defined() ? t.numel() : 0);
    return n * sizeof(float);
  }

  // The next message from `from`, which must be this collective's part of `bytes` bytes.
  StatusOr<std::string> await(int from, uint8_t type, uint64_t seq, size_t bytes) {
    FEDRAD_ASSIGN_OR_RETURN(ControlMessage m, ch_.recv(from, timeout_s_));
    if (m.type == ControlChannel::kFailed)
      return internal_error("data-parallel: " + rank_name(from) + " failed: " + m.payload);
    if (m.type == ControlChannel::kStop)
      return internal_error("data-parallel: rank 0 stopped the group during a collective");
    if (m.type != type || m.seq != seq)
      return internal_error("data-parallel: " + rank_name(from) + " is out of step (message " +
                            std::to_string(m.type) + " of collective #" + std::to_string(m.seq) + " while " +
                            rank_name(rank()) + " is at #" + std::to_string(seq) +
                            "; did the ranks run different numbers of batches?)");
    if (m.payload.size() != bytes)
      return invalid_argument("data-parallel: " + rank_name(from) + " sent " + std::to_string(m.payload.size() / 4) +
                              " values, " + rank_name(rank()) + " has " + std::to_string(bytes / 4) +
                              " (the same model on every rank?)");
    return std::move(m.payload);
  }

  ControlChannel& ch_;
  double timeout_s_;
  uint64_t seq_ = 0;  // collectives so far: every rank counts alike
};

// NCCL on CUDA tensors: the tensors are flattened into one buffer so that each collective is one
// NCCL call, enqueued on the current stream.
class NcclCommunicator : public Communicator {
 public:
  NcclCommunicator(int rank, int world, int device, std::unique_ptr<nccl::Comm> comm)
      : rank_(rank), world_(world), device_(device), comm_(std::move(comm)) {}
  int rank() const override { return rank_; }
  int world() const override { return world_; }

  Status all_reduce_mean(const std::vector<torch::Tensor>& tensors) override {
    try {
      torch::NoGradGuard no_grad;
      FEDRAD_ASSIGN_OR_RETURN(torch::Tensor flat, flatten(tensors));
      if (flat.numel() == 0) return ok_status();
      FEDRAD_RETURN_IF_ERROR(comm_->all_reduce_sum(flat.data_ptr<float>(), static_cast<size_t>(flat.numel()), stream()));
      flat.div_(static_cast<double>(world_));
      scatter(flat, tensors);
      return ok_status();
    } catch (const std::exception& e) {
      return internal_error(std::string("data-parallel NCCL all-reduce: ") + e.what());
    }
  }

  Status broadcast(const std::vector<torch::Tensor>& tensors, int root) override {
    try {
      torch::NoGradGuard no_grad;
      FEDRAD_ASSIGN_OR_RETURN(torch::Tensor flat, flatten(tensors));
      if (flat.numel() == 0) return ok_status();
      FEDRAD_RETURN_IF_ERROR(
          comm_->broadcast(flat.data_ptr<float>(), static_cast<size_t>(flat.numel()) * sizeof(float), root, stream()));
      scatter(flat, tensors);
      return ok_status();
    } catch (const std::exception& e) {
      return internal_error(std::string("data-parallel NCCL broadcast: ") + e.what());
    }
  }

 private:
  void* stream() const {
#if defined(FEDRAD_TORCH_CUDA)
    return at::cuda::getCurrentCUDAStream(static_cast<c10::DeviceIndex>(device_)).stream();
#else
    return nullptr;  // the legacy default stream, which is LibTorch's current one unless changed
#endif
  }

  StatusOr<torch::Tensor> flatten(const std::vector<torch::Tensor>& tensors) const {
    std::vector<torch::Tensor> views;
    for (size_t i = 0; i < tensors.size(); ++i) {
      const auto& t = tensors[i];
      if (!t.defined() || t.scalar_type() != torch::kFloat || !t.is_cuda())
        return invalid_argument("data-parallel NCCL: tensor " + std::to_string(i) + " is not a float32 CUDA tensor");
      views.push_back(t.detach().reshape({-1}));
    }
    if (views.empty()) return torch::Tensor(torch::empty({0}));
    return torch::cat(views).contiguous();
  }

  static void scatter(const torch::Tensor& flat, const std::vector<torch::Tensor>& tensors) {
    int64_t offset = 0;
    for (const auto& t : tensors) {
      const_cast<torch::Tensor&>(t).copy_(flat.slice(0, offset, offset + t.numel()).view(t.sizes()));
      offset += t.numel();
    }
  }

  int rank_, world_, device_;
  std::unique_ptr<nccl::Comm> comm_;
};

int cuda_index(const std::string& device) {
  const auto colon = device.find(':');
  return colon == std::string::npos ? 0 : std::stoi(device.substr(colon + 1));
}

// Parameters and float32 buffers in registration order: what a rank's model state is.
std::vector<torch::Tensor> float_buffers(models::Classifier& model) {
  std::vector<torch::Tensor> out;
  for (const auto& b : model->buffers())
    if (b.scalar_type() == torch::kFloat) out.push_back(b);
  return out;
}

nlohmann::json settings_json(const fed::RoundSettings& s) {
  return {{"round", s.round}, {"local_epochs", s.local_epochs}, {"batch_size", s.batch_size},
          {"lr", s.lr},       {"seed", s.seed},                 {"prox_mu", s.prox_mu}};
}

StatusOr<fed::RoundSettings> settings_from(const std::string& text) {
  try {
    const auto j = nlohmann::json::parse(text);
    fed::RoundSettings s;
    s.round = j.at("round").get<uint32_t>();
    s.local_epochs = j.at("local_epochs").get<uint32_t>();
    s.batch_size = j.at("batch_size").get<uint32_t>();
    s.lr = j.at("lr").get<double>();
    s.seed = j.at("seed").get<uint64_t>();
    s.prox_mu = j.at("prox_mu").get<double>();
    return s;
  } catch (const std::exception& e) {
    return corrupt(std::string("data-parallel FIT command: ") + e.what());
  }
}

// The rank's device (errors name train.device and why), the model placed there and, on a GPU, the
// images copied there too, as TorchLearner does.
Status place(models::Classifier& model, const StudyConfig& rank_config, ImageSet* shard, ImageSet* val) {
  auto device = resolve_device(rank_config.train.device);
  if (!device.ok()) return device.status().with_context("train.device " + rank_config.train.device);
  try {
    place_model(*model, *device, rank_config.train.channels_last);
    if (device->is_cuda()) {
      to_device(shard, *device);
      if (val) to_device(val, *device);
    }
    return ok_status();
  } catch (const std::exception& e) {
    return internal_error(rank_config.train.device + ": cannot place the model and images there: " + e.what());
  }
}

}  // namespace

StatusOr<std::unique_ptr<ControlChannel>> ControlChannel::open(int rank, int world, const std::string& address,
                                                               double timeout_s) {
  if (world < 1 || rank < 0 || rank >= world)
    return invalid_argument("data-parallel: rank " + std::to_string(rank) + " of " + std::to_string(world));
  auto channel = std::make_unique<ZmqControlChannel>(rank, world);
  FEDRAD_RETURN_IF_ERROR(channel->start(address, timeout_s));
  return std::unique_ptr<ControlChannel>(std::move(channel));
}

std::unique_ptr<Communicator> make_cpu_communicator(ControlChannel& channel, double op_timeout_s) {
  return std::make_unique<CpuCommunicator>(channel, op_timeout_s);
}

StatusOr<std::unique_ptr<Communicator>> make_nccl_communicator(ControlChannel& channel, int cuda_device,
                                                               double op_timeout_s) {
  if (!nccl::available())
    return unsupported("train.data_parallel > 1 on CUDA devices needs NCCL: " + nccl::unavailable_reason());
  std::string id;
  if (channel.rank() == 0) {
    FEDRAD_ASSIGN_OR_RETURN(id, nccl::make_unique_id());
    for (int r = 1; r < channel.world(); ++r) FEDRAD_RETURN_IF_ERROR(channel.send(r, {ControlChannel::kNcclId, 0, id}));
  } else {
    FEDRAD_ASSIGN_OR_RETURN(ControlMessage m, channel.recv(0, op_timeout_s));
    if (m.type != ControlChannel::kNcclId) return corrupt("data-parallel: expected the NCCL id from rank 0");
    id = m.payload;
  }
  FEDRAD_ASSIGN_OR_RETURN(auto comm, nccl::Comm::init(id, channel.rank(), channel.world(), cuda_device));
  return std::unique_ptr<Communicator>(
      std::make_unique<NcclCommunicator>(channel.rank(), channel.world(), cuda_device, std::move(comm)));
}

StatusOr<std::unique_ptr<Communicator>> make_communicator(ControlChannel& channel, const std::string& device,
                                                          double op_timeout_s) {
  if (device.rfind("cuda", 0) == 0) return make_nccl_communicator(channel, cuda_index(device), op_timeout_s);
  return make_cpu_communicator(channel, op_timeout_s);
}

std::string rank_device(const std::string& device, int rank) {
  if (device.rfind("cuda", 0) != 0) return device;
  return "cuda:" + std::to_string(cuda_index(device) + rank);
}

ImageSet shard_for_rank(const ImageSet& data, int rank, int world) {
  ImageSet out;
  const int64_t per = world > 0 ? data.size() / world : 0;
  auto idx = torch::arange(static_cast<int64_t>(rank), static_cast<int64_t>(rank) + per * world, world, torch::kLong);
  if (data.images.defined()) out.images = data.images.index_select(0, idx.to(data.images.device()));
  if (data.labels.defined()) out.labels = data.labels.index_select(0, idx.to(data.labels.device()));
  for (int64_t i = 0; i < per; ++i) {
    const size_t k = static_cast<size_t>(rank + i * world);
    if (k < data.files.size()) out.files.push_back(data.files[k]);
  }
  return out;
}

FitOptions rank_fit_options(const StudyConfig& config, const fed::RoundSettings& settings, int site_index, int rank,
                            int world) {
  // Rank 0 shuffles as a single-process site would; the others are offset by a prime so that
  // neither they nor the next site's index collide with it.
  const uint64_t seed = settings.seed * 7919 + static_cast<uint64_t>(site_index) + 104729ull * static_cast<uint64_t>(rank);
  auto options = fit_options_from(config, static_cast<int>(settings.local_epochs), seed);
  options.batch_size = std::max(1, static_cast<int>(settings.batch_size) / std::max(1, world));
  options.lr = settings.lr;
  options.prox_mu = settings.prox_mu;
  if (config.train.lr_schedule == "cosine") {  // as TorchLearner: the study-wide schedule
    options.schedule_epochs = config.rounds * static_cast<int>(settings.local_epochs);
    options.schedule_offset = static_cast<int>(settings.round - 1) * static_cast<int>(settings.local_epochs);
  }
  return options;
}

StatusOr<FitStats> data_parallel_fit(models::Classifier& model, const ImageSet& shard, FitOptions options,
                                     Communicator& comm) {
  try {
    std::vector<torch::Tensor> state = model->parameters();
    const auto buffers = float_buffers(model);
    state.insert(state.end(), buffers.begin(), buffers.end());
    FEDRAD_RETURN_IF_ERROR(comm.broadcast(state, 0).with_context("weights from rank 0"));
    // Mean of the ranks' batch-mean gradients = the gradient of the global batch (equal shards,
    // equal batch sizes). The trainer's hook cannot return a Status: a failure throws and ends
    // the fit, caught below.
    options.after_backward = [&comm](const std::vector<torch::Tensor>& params) {
      std::vector<torch::Tensor> grads;
      for (const auto& p : params)
        if (p.grad().defined()) grads.push_back(p.grad());
      Status st = comm.all_reduce_mean(grads);
      if (!st.ok()) throw std::runtime_error(st.to_string());
    };
    torch::manual_seed(options.seed);  // dropout's draws, as TorchLearner::fit (rank-specific seed)
    FitStats stats = fit(model, shard, options);
    // Each rank's batch norm saw only its shard; the mean of the running statistics is what the
    // site reports (and what the ranks start the next round from anyway, after the broadcast).
    FEDRAD_RETURN_IF_ERROR(comm.all_reduce_mean(buffers).with_context("running statistics"));
    const auto device = state.empty() ? torch::Device(torch::kCPU) : state.front().device();
    auto loss = torch::full({1}, static_cast<float>(stats.loss), torch::TensorOptions().device(device));
    FEDRAD_RETURN_IF_ERROR(comm.all_reduce_mean({loss}).with_context("loss"));
    stats.loss = loss.item<double>();
    stats.samples = shard.size() * comm.world();
    return stats;
  } catch (const std::exception& e) {
    return internal_error(std::string("data-parallel training failed on ") + rank_name(comm.rank()) + ": " + e.what());
  }
}

// ---------------------------------------------------------------------------------------------
// Rank 0

DataParallelLearner::DataParallelLearner(const StudyConfig& config, ImageSet shard, ImageSet val, int site_index)
    : config_(config),
      shard_(std::move(shard)),
      val_(std::move(val)),
      site_index_(site_index),
      model_(classifier_options(config)) {}

DataParallelLearner::~DataParallelLearner() { stop(); }

StatusOr<std::unique_ptr<DataParallelLearner>> DataParallelLearner::create(const StudyConfig& config,
                                                                           const ImageSet& train, ImageSet val,
                                                                           int site_index,
                                                                           const DataParallelOptions& options) {
  const int world = options.world;
  if (world < 2) return invalid_argument("data-parallel: needs at least 2 ranks, got " + std::to_string(world));
  if (train.size() < world)
    return invalid_argument("data-parallel: " + std::to_string(train.size()) + " train images for " +
                            std::to_string(world) + " ranks");
  StudyConfig rank_config = config;
  rank_config.train.device = rank_device(config.train.device, 0);
  std::unique_ptr<DataParallelLearner> learner(
      new DataParallelLearner(rank_config, shard_for_rank(train, 0, world), std::move(val), site_index));
  learner->site_train_examples_ = static_cast<uint64_t>(train.size());
  learner->op_timeout_s_ = options.op_timeout_s;
  FEDRAD_RETURN_IF_ERROR(place(learner->model_, rank_config, &learner->shard_, &learner->val_));
  FEDRAD_ASSIGN_OR_RETURN(learner->channel_,
                          ControlChannel::open(0, world, options.control_address, options.connect_timeout_s));
  FEDRAD_ASSIGN_OR_RETURN(learner->comm_,
                          make_communicator(*learner->channel_, rank_config.train.device, options.op_timeout_s));
  logger("data-parallel")
      ->info("{} ranks ({} backend on {}), {} train images each", world,
             rank_config.train.device == "cpu" ? "ZeroMQ" : "NCCL", rank_config.train.device, learner->shard_.size());
  return learner;
}

void DataParallelLearner::stop() {
  if (stopped_ || !channel_) return;
  stopped_ = true;
  for (int r = 1; r < channel_->world(); ++r) (void)channel_->send(r, {ControlChannel::kStop, fits_, ""});
}

StatusOr<fed::FitReport> DataParallelLearner::fit(const fed::Weights& global, const fed::RoundSettings& settings) {
  if (!broken_.ok()) return broken_.with_context("data-parallel group stopped after an earlier failure");
  if (stopped_) return internal_error("data-parallel group stopped");
  const int world = comm_->world();
  // A failure part-way leaves the workers in a collective: stop them, and this group for good.
  auto fail = [&](const Status& st) -> Status {
    broken_ = st;
    stop();
    return st;
  };
  const uint64_t seq = ++fits_;
  const std::string command = settings_json(settings).dump();
  for (int r = 1; r < world; ++r)
    if (Status st = channel_->send(r, {ControlChannel::kFit, seq, command}); !st.ok()) return fail(st);
  try {
    keep_local_norm_ = settings.keep_local_norm;
    const auto& weights = keep_local_norm_ ? with_local_tensors(global, local_norm_) : global;
    if (Status st = load_weights(*model_, weights); !st.ok()) return fail(st);
  } catch (const std::exception& e) {
    return fail(internal_error(std::string("data-parallel: loading the global weights: ") + e.what()));
  }
  auto options = rank_fit_options(config_, settings, site_index_, 0, world);
  options.progress_label = "round " + std::to_string(settings.round);
  if (config_.train.keep_optimizer_state) {
    if (!optimizer_) optimizer_ = make_optimizer(model_->parameters(), options);
    options.kept_optimizer = optimizer_.get();
  }
  auto stats = data_parallel_fit(model_, shard_, options, *comm_);
  if (!stats.ok()) return fail(stats.status());
  for (int r = 1; r < world; ++r) {
    auto reply = channel_->recv(r, op_timeout_s_);
    if (!reply.ok()) return fail(reply.status());
    if (reply->type == ControlChannel::kFailed)
      return fail(internal_error("data-parallel: rank " + std::to_string(r) + " failed: " + reply->payload));
    if (reply->type != ControlChannel::kDone || reply->seq != seq)
      return fail(internal_error("data-parallel: rank " + std::to_string(r) + " is out of step after fit #" +
                                 std::to_string(seq)));
  }
  try {
    fed::FitReport report;
    report.weights = to_weights(*model_);
    if (keep_local_norm_) local_norm_ = norm_tensors_of(*model_, report.weights);
    report.num_examples = static_cast<uint64_t>(stats->samples);  // the whole group's
    report.train_loss = stats->loss;
    report.train_seconds = stats->seconds;
    return report;
  } catch (const std::exception& e) {
    return internal_error(std::string("data-parallel: reading the trained weights: ") + e.what());
  }
}

StatusOr<fed::EvalReport> DataParallelLearner::evaluate(const fed::Weights& global) {
  try {
    FEDRAD_RETURN_IF_ERROR(load_weights(*model_, keep_local_norm_ ? with_local_tensors(global, local_norm_) : global));
    Predictions p = predict(model_, val_);
    return to_eval_report(p);
  } catch (const std::exception& e) {
    return internal_error(std::string("evaluation failed: ") + e.what());
  }
}

// ---------------------------------------------------------------------------------------------
// Ranks 1..

Status run_data_parallel_worker(const StudyConfig& config, const ImageSet& train, int site_index, int rank, int world,
                                const std::string& control_address, double idle_timeout_s, double op_timeout_s) {
  if (rank < 1 || rank >= world)
    return invalid_argument("data-parallel worker: rank " + std::to_string(rank) + " of " + std::to_string(world));
  auto log = logger("rank" + std::to_string(rank));
  StudyConfig rank_config = config;
  rank_config.train.device = rank_device(config.train.device, rank);
  ImageSet shard = shard_for_rank(train, rank, world);
  models::Classifier model(classifier_options(rank_config));
  FEDRAD_RETURN_IF_ERROR(place(model, rank_config, &shard, nullptr));
  FEDRAD_ASSIGN_OR_RETURN(auto channel, ControlChannel::open(rank, world, control_address, idle_timeout_s));
  FEDRAD_ASSIGN_OR_RETURN(auto comm, make_communicator(*channel, rank_config.train.device, op_timeout_s));
  log->info("{} of {} on {}: {} train images", rank_name(rank), world, rank_config.train.device, shard.size());
  std::unique_ptr<torch::optim::Optimizer> optimizer;
  while (true) {
    auto command = channel->recv(0, idle_timeout_s);
    if (!command.ok()) return command.status().with_context("data-parallel worker");
    if (command->type == ControlChannel::kStop) return ok_status();
    if (command->type != ControlChannel::kFit) continue;  // a stale reply to an earlier step
    auto settings = settings_from(command->payload);
    if (!settings.ok()) return settings.status();
    auto options = rank_fit_options(rank_config, *settings, site_index, rank, world);
    if (rank_config.train.keep_optimizer_state) {
      if (!optimizer) optimizer = make_optimizer(model->parameters(), options);
      options.kept_optimizer = optimizer.get();
    }
    auto stats = data_parallel_fit(model, shard, options, *comm);
    if (!stats.ok()) {
      (void)channel->send(0, {ControlChannel::kFailed, command->seq, stats.status().to_string()});
      return stats.status();
    }
    FEDRAD_RETURN_IF_ERROR(channel->send(0, {ControlChannel::kDone, command->seq, ""}));
    log->debug("round {}: loss {:.4f}", settings->round, stats->loss);
  }
}

}  // namespace fedrad::training
