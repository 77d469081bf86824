// Data-parallel training within a site (training/data_parallel.h) over real ZeroMQ sockets, the
// ranks as threads of this process with the CPU backend: the collectives' exact results, the
// equivalence of a 2-rank fit with a 1-process fit of the same global batches, and a federated
// study in which one site runs on two ranks and still counts as one participant.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <cstring>
#include <functional>
#include <future>
#include <string>
#include <thread>
#include <vector>

#include <torch/torch.h>

#include "federation/federation.h"
#include "tests/federation/helpers/study_runner.h"
#include "tests/test_data.h"
#include "training/checkpoint.h"
#include "training/data_parallel.h"
#include "training/learner.h"
#include "training/trainer.h"

namespace fedrad::training {
namespace {

using fedrad::testing::free_port;

std::string tcp_address() { return "tcp://127.0.0.1:" + std::to_string(free_port()); }

// Runs body(rank) on `world` threads at once and returns their results in rank order.
template <class T>
std::vector<T> on_ranks(int world, const std::function<T(int)>& body) {
  std::vector<std::future<T>> futures;
  for (int r = 0; r < world; ++r) futures.push_back(std::async(std::launch::async, body, r));
  std::vector<T> out;
  for (auto& f : futures) out.push_back(f.get());
  return out;
}

bool bit_identical(const torch::Tensor& a, const torch::Tensor& b) {
  auto ca = a.contiguous(), cb = b.contiguous();
  return ca.sizes() == cb.sizes() && ca.scalar_type() == cb.scalar_type() &&
         std::memcmp(ca.data_ptr(), cb.data_ptr(), static_cast<size_t>(ca.nbytes())) == 0;
}

// ||a - b|| / ||b|| per tensor, the largest.
double max_relative_difference(const std::vector<torch::Tensor>& a, const std::vector<torch::Tensor>& b) {
  double worst = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    const double diff = (a[i] - b[i]).norm().item<double>();
    const double ref = std::max(b[i].norm().item<double>(), 1e-12);
    worst = std::max(worst, diff / ref);
  }
  return worst;
}

std::vector<torch::Tensor> copies(const std::vector<torch::Tensor>& ts) {
  std::vector<torch::Tensor> out;
  for (const auto& t : ts) out.push_back(t.detach().clone());
  return out;
}

TEST(DataParallel, AllReduceMeanAndBroadcastOverThreeRanksAreExactAndBitIdentical) {
  const std::string address = tcp_address();
  constexpr int kWorld = 3;
  struct Result {
    Status status;
    std::vector<torch::Tensor> reduced, from0, from2;
  };
  auto results = on_ranks<Result>(kWorld, [&](int rank) {
    Result res;
    auto channel = ControlChannel::open(rank, kWorld, address, 30);
    if (!channel.ok()) return Result{channel.status(), {}, {}, {}};
    auto comm = make_cpu_communicator(**channel, 30);
    EXPECT_EQ(comm->rank(), rank);
    EXPECT_EQ(comm->world(), kWorld);
    // Rank r holds a = 3i + r (i the element index) and b = 0.1 (r + 1) + i: the means are
    // a: 3i + 1 exactly, b: 0.2 + i up to rounding (the same bits on every rank is the point).
    auto a = torch::arange(6, torch::kFloat).view({2, 3}) * 3 + rank;
    auto b = torch::arange(5, torch::kFloat) + 0.1f * static_cast<float>(rank + 1);
    res.status = comm->all_reduce_mean({a, b});
    if (!res.status.ok()) return res;
    res.reduced = {a.clone(), b.clone()};
    auto c = torch::full({4}, static_cast<float>(rank) + 0.5f);
    auto d = torch::full({2, 2}, 7.0f - static_cast<float>(rank));
    res.status = comm->broadcast({c, d}, 0);
    if (!res.status.ok()) return res;
    res.from0 = {c.clone(), d.clone()};
    // A worker as the root (rank 0 relays it).
    auto e = torch::arange(3, torch::kFloat) * static_cast<float>(rank + 1);
    res.status = comm->broadcast({e}, 2);
    res.from2 = {e.clone()};
    return res;
  });
  for (int r = 0; r < kWorld; ++r) ASSERT_TRUE(results[r].status.ok()) << "rank " << r << ": " << results[r].status.to_string();

  auto expected_a = torch::arange(6, torch::kFloat).view({2, 3}) * 3 + 1;
  EXPECT_TRUE(bit_identical(results[0].reduced[0], expected_a)) << results[0].reduced[0];
  // b: ((0.1 + 0.2) + 0.3) / 3 + i in float32, summed in rank order as the backend does.
  std::vector<float> expected_b(5);
  for (int i = 0; i < 5; ++i) {
    float sum = 0;
    for (int r = 0; r < kWorld; ++r) sum += static_cast<float>(i) + 0.1f * static_cast<float>(r + 1);
    expected_b[static_cast<size_t>(i)] = sum / 3.0f;
  }
  EXPECT_TRUE(bit_identical(results[0].reduced[1], torch::tensor(expected_b))) << results[0].reduced[1];
  for (int r = 1; r < kWorld; ++r) {
    for (size_t i = 0; i < 2; ++i) {
      EXPECT_TRUE(bit_identical(results[r].reduced[i], results[0].reduced[i])) << "rank " << r << " tensor " << i;
      EXPECT_TRUE(bit_identical(results[r].from0[i], results[0].from0[i])) << "rank " << r;
    }
  }
  for (int r = 0; r < kWorld; ++r) {
    EXPECT_TRUE(bit_identical(results[r].from0[0], torch::full({4}, 0.5f))) << "rank " << r;
    EXPECT_TRUE(bit_identical(results[r].from0[1], torch::full({2, 2}, 7.0f))) << "rank " << r;
    EXPECT_TRUE(bit_identical(results[r].from2[0], torch::arange(3, torch::kFloat) * 3.0f)) << "rank " << r;
  }
}

TEST(DataParallel, MismatchedShapesAreAnErrorNotACorruption) {
  const std::string address = tcp_address();
  auto statuses = on_ranks<Status>(2, [&](int rank) -> Status {
    FEDRAD_ASSIGN_OR_RETURN(auto channel, ControlChannel::open(rank, 2, address, 30));
    auto comm = make_cpu_communicator(*channel, 5);
    auto t = torch::ones({rank == 0 ? 4 : 5});
    return comm->all_reduce_mean({t});
  });
  EXPECT_FALSE(statuses[0].ok());
  EXPECT_NE(statuses[0].message().find("sent 5 values"), std::string::npos) << statuses[0].to_string();
  EXPECT_FALSE(statuses[1].ok());  // rank 0 never answers: rank 1 times out
}

TEST(DataParallel, ShardsInterleaveAndTruncateToEqualSizes) {
  ImageSet set;
  set.images = torch::arange(7, torch::kFloat).view({7, 1, 1, 1});
  set.labels = torch::arange(7, torch::kFloat);
  auto s0 = shard_for_rank(set, 0, 3), s1 = shard_for_rank(set, 1, 3), s2 = shard_for_rank(set, 2, 3);
  EXPECT_TRUE(bit_identical(s0.labels, torch::tensor({0.0f, 3.0f})));
  EXPECT_TRUE(bit_identical(s1.labels, torch::tensor({1.0f, 4.0f})));
  EXPECT_TRUE(bit_identical(s2.labels, torch::tensor({2.0f, 5.0f})));  // 6 is left out: floor(7 / 3) each
  EXPECT_EQ(rank_device("cuda", 1), "cuda:1");
  EXPECT_EQ(rank_device("cuda:2", 1), "cuda:3");
  EXPECT_EQ(rank_device("cpu", 1), "cpu");
}

// A small classifier without batch norm (group norm keeps no running statistics), so that a
// rank's batch statistics play no part and the comparison is about the gradients alone.
models::ClassifierOptions small_model() {
  models::ClassifierOptions o;
  o.width = 4;
  o.stages = 2;
  o.norm = "group";
  return o;
}

ImageSet random_set(int n, int size, uint64_t seed) {
  torch::manual_seed(seed);
  ImageSet set;
  set.images = torch::randn({n, 1, size, size});
  set.labels = (torch::rand({n}) < 0.5).to(torch::kFloat);
  return set;
}

FitOptions plain_options(int batch, uint64_t seed, int epochs) {
  FitOptions o;
  o.epochs = epochs;
  o.batch_size = batch;
  o.lr = 0.01;
  o.optimizer = "adam";
  o.weight_decay = 1e-4;
  o.seed = seed;
  o.augment = false;
  return o;
}

struct RankOutcome {
  Status status;
  std::vector<torch::Tensor> params;
  FitStats stats;
};

// Each rank trains `shards[rank]` with `options[rank]` from a model initialised with seed
// 100 + rank (rank 0's weights must reach the others through the broadcast).
std::vector<RankOutcome> run_ranks(const std::vector<ImageSet>& shards, const std::vector<FitOptions>& options) {
  const std::string address = tcp_address();
  const int world = static_cast<int>(shards.size());
  // Built here, one after the other: torch::manual_seed is process-wide.
  std::vector<models::Classifier> models;
  for (int r = 0; r < world; ++r) {
    torch::manual_seed(100 + static_cast<uint64_t>(r));
    models.emplace_back(small_model());
  }
  return on_ranks<RankOutcome>(world, [&](int rank) {
    RankOutcome out;
    auto channel = ControlChannel::open(rank, world, address, 30);
    if (!channel.ok()) return RankOutcome{channel.status(), {}, {}};
    auto comm = make_cpu_communicator(**channel, 60);
    models::Classifier& model = models[static_cast<size_t>(rank)];
    auto stats = data_parallel_fit(model, shards[static_cast<size_t>(rank)], options[static_cast<size_t>(rank)], *comm);
    if (!stats.ok()) return RankOutcome{stats.status(), {}, {}};
    out.stats = *stats;
    out.params = copies(model->parameters());
    return out;
  });
}

std::vector<torch::Tensor> single_process_fit(const ImageSet& data, const FitOptions& options, FitStats* stats) {
  torch::manual_seed(100);  // rank 0's initialisation
  models::Classifier model(small_model());
  *stats = fit(model, data, options);
  return copies(model->parameters());
}

// The trainer shuffles each epoch with torch::randperm(n, CPU generator seeded with
// options.seed). One process with batch B sees global batch j = perm[jB, (j+1)B). For two ranks
// with batch B/2 to see exactly the halves of those batches, rank r's shard is laid out so that
// the rank's own permutation (randperm(n/2) with its seed) lands on them: shard_r[q_r[k]] =
// data[perm[j B + r B/2 + i]] for k = j B/2 + i. Then every step averages the same two half-batch
// gradients the single process averages over the whole batch, up to float rounding.
TEST(DataParallel, TwoRanksWithHalfBatchesTrainLikeOneProcessOnTheSameBatches) {
  torch::set_num_threads(1);
  constexpr int kN = 64, kBatch = 8, kWorld = 2;
  const ImageSet data = random_set(kN, 16, 5);
  const uint64_t seed = 11;
  FitStats single_stats;
  const auto expected = single_process_fit(data, plain_options(kBatch, seed, 1), &single_stats);

  auto gen = at::detail::createCPUGenerator(seed);
  const auto perm = torch::randperm(kN, gen, torch::kLong);
  std::vector<ImageSet> shards;
  std::vector<FitOptions> options;
  for (int r = 0; r < kWorld; ++r) {
    const uint64_t rank_seed = 1000 + static_cast<uint64_t>(r);
    auto rank_gen = at::detail::createCPUGenerator(rank_seed);
    const auto q = torch::randperm(kN / kWorld, rank_gen, torch::kLong);
    std::vector<int64_t> source(kN / kWorld);
    for (int64_t k = 0; k < kN / kWorld; ++k) {
      const int64_t j = k / (kBatch / kWorld), i = k % (kBatch / kWorld);
      source[static_cast<size_t>(q[k].item<int64_t>())] = perm[j * kBatch + r * (kBatch / kWorld) + i].item<int64_t>();
    }
    const auto index = torch::tensor(source, torch::kLong);
    ImageSet shard;
    shard.images = data.images.index_select(0, index);
    shard.labels = data.labels.index_select(0, index);
    shards.push_back(shard);
    options.push_back(plain_options(kBatch / kWorld, rank_seed, 1));
  }
  const auto ranks = run_ranks(shards, options);
  for (int r = 0; r < kWorld; ++r) ASSERT_TRUE(ranks[r].status.ok()) << ranks[r].status.to_string();

  for (size_t i = 0; i < ranks[0].params.size(); ++i)
    EXPECT_TRUE(bit_identical(ranks[0].params[i], ranks[1].params[i])) << "parameter " << i << " differs between ranks";
  const double rel = max_relative_difference(ranks[0].params, expected);
  std::printf("2 ranks x batch 4 vs 1 process x batch 8: largest relative difference %.3g\n", rel);
  EXPECT_LT(rel, 1e-5);
  // And it did train: the weights moved away from the initialisation.
  torch::manual_seed(100);
  models::Classifier init(small_model());
  EXPECT_GT(max_relative_difference(ranks[0].params, copies(init->parameters())), 1e-3);
  EXPECT_EQ(ranks[0].stats.samples, kN);
  EXPECT_NEAR(ranks[0].stats.loss, single_stats.loss, 1e-5);
  EXPECT_EQ(ranks[1].stats.loss, ranks[0].stats.loss);
}

// Full-batch steps do not depend on the order at all, so the sharding of data_parallel itself
// (index % world) can be compared with one process over several epochs.
TEST(DataParallel, FullBatchEpochsOnInterleavedShardsMatchOneProcess) {
  torch::set_num_threads(1);
  constexpr int kN = 64, kWorld = 2;
  const ImageSet data = random_set(kN, 16, 6);
  FitStats single_stats;
  const auto expected = single_process_fit(data, plain_options(kN, 3, 4), &single_stats);
  std::vector<ImageSet> shards;
  std::vector<FitOptions> options;
  for (int r = 0; r < kWorld; ++r) {
    shards.push_back(shard_for_rank(data, r, kWorld));
    options.push_back(plain_options(kN / kWorld, 50 + static_cast<uint64_t>(r), 4));
  }
  const auto ranks = run_ranks(shards, options);
  for (int r = 0; r < kWorld; ++r) ASSERT_TRUE(ranks[r].status.ok()) << ranks[r].status.to_string();
  for (size_t i = 0; i < ranks[0].params.size(); ++i)
    EXPECT_TRUE(bit_identical(ranks[0].params[i], ranks[1].params[i])) << "parameter " << i;
  const double rel = max_relative_difference(ranks[0].params, expected);
  std::printf("full batch, 4 epochs, 2 ranks vs 1 process: largest relative difference %.3g\n", rel);
  EXPECT_LT(rel, 1e-5);
}

StudyConfig small_study_config() {
  StudyConfig c;
  c.name = "dp-study";
  c.sites = {"site-a", "site-b"};
  c.rounds = 2;
  c.model.width = 4;
  c.model.stages = 2;
  c.model.norm = "batch";  // running statistics are averaged over the ranks
  c.data.input_size = 16;
  c.data.augment = false;
  c.train.batch_size = 8;
  c.train.lr = 0.01;
  c.train.data_parallel = 2;
  return c;
}

// Two sites, site-b on two ranks (rank 1 a worker thread with its own control connection): the
// coordinator sees two participants per round with site-b's whole sample count, and the worker
// leaves when rank 0 stops it.
TEST(DataParallel, FederatedStudyCountsADataParallelSiteOnceWithAllItsSamples) {
  torch::set_num_threads(1);
  const StudyConfig config = small_study_config();
  const ImageSet a_train = random_set(24, 16, 1), a_val = random_set(10, 16, 2);
  const ImageSet b_train = random_set(41, 16, 3), b_val = random_set(12, 16, 4);  // 41: one left over

  const std::string control = tcp_address();
  auto worker = std::async(std::launch::async, [&] {
    return run_data_parallel_worker(config, b_train, 2, 1, 2, control, /*idle_timeout_s=*/60, /*op_timeout_s=*/60);
  });
  DataParallelOptions dp;
  dp.world = 2;
  dp.control_address = control;
  dp.connect_timeout_s = 30;
  dp.op_timeout_s = 60;
  auto site_b = DataParallelLearner::create(config, b_train, b_val, 2, dp);
  ASSERT_TRUE(site_b.ok()) << site_b.status().to_string();
  EXPECT_EQ((*site_b)->num_train_examples(), 41u);
  auto site_a = std::make_unique<TorchLearner>(config, a_train, a_val, 1);

  fed::CoordinatorOptions coord;
  coord.bind_address = tcp_address();
  coord.study = config.name;
  coord.expected_sites = config.sites;
  coord.rounds = config.rounds;
  coord.settings.batch_size = 8;
  coord.settings.lr = 0.01;
  coord.settings.seed = 7;
  coord.join_timeout_s = 30;
  coord.round_timeout_s = 120;
  torch::manual_seed(config.seed);
  coord.initial_weights = to_weights(*build_model(config));
  std::vector<fed::RoundLog> logs;
  coord.on_round_end = [&](const fed::RoundLog& log, const fed::Weights&) { logs.push_back(log); };
  std::vector<fed::SiteOptions> sites;
  for (const auto& id : config.sites) {
    fed::SiteOptions s;
    s.coordinator_address = coord.bind_address;
    s.site_id = id;
    s.study = config.name;
    s.idle_timeout_s = 120;
    sites.push_back(s);
  }
  std::vector<fed::Learner*> learners = {site_a.get(), site_b->get()};
  const auto out = fed::testing::run_study_in_process(coord, sites, learners);
  ASSERT_TRUE(out.weights.ok()) << out.weights.status().to_string();
  for (const Status& s : out.sites) EXPECT_TRUE(s.ok()) << s.to_string();

  (*site_b)->stop();
  const Status worker_status = worker.get();
  EXPECT_TRUE(worker_status.ok()) << worker_status.to_string();

  int training_rounds = 0;
  for (const auto& log : logs) {
    if (log.evaluation_only) continue;
    ++training_rounds;
    ASSERT_EQ(log.sites.size(), 2u) << "round " << log.round;
    for (const auto& s : log.sites) {
      EXPECT_TRUE(s.ok) << s.site_id << " round " << log.round;
      if (s.site_id == "site-a") EXPECT_EQ(s.num_examples, 24u);
      else EXPECT_EQ(s.num_examples, 40u) << "site-b: 2 ranks x floor(41 / 2)";
      EXPECT_TRUE(std::isfinite(s.train_loss));
    }
  }
  EXPECT_EQ(training_rounds, 2);
  // The global model is finite and was trained.
  for (const auto& t : *out.weights)
    for (float v : t.data) ASSERT_TRUE(std::isfinite(v)) << t.name;
}

}  // namespace
}  // namespace fedrad::training
