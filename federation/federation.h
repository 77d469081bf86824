// fedrad's federation layer: the coordinator and the site runner, talking over ZeroMQ.
//
// The federation never sees LibTorch, DICOM or the GPU: a model is a list of named float tensors
// (`Weights`), a site's learning is behind the `Learner` interface (training/ implements it), and
// aggregation is a `Strategy` of plain functions. So a coordinator builds and runs anywhere.
//
// Protocol (federation/wire.h has the byte layout): a site connects a DEALER socket to the
// coordinator's ROUTER and sends JOIN. Once the expected sites have joined, each round the
// coordinator sends FIT_INS (global weights + round settings); the site evaluates the weights it
// received on its validation split, trains, and replies FIT_RES (its new weights, sample count,
// train loss and the evaluation as a score histogram). After the last round the coordinator sends
// EVAL_INS with the final weights, collects EVAL_RES, then SHUTDOWN. Sites send numbers only:
// no free text from DICOM headers or error messages reaches the coordinator.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "common/metrics.h"
#include "common/status.h"

namespace fedrad::fed {

// One named parameter or buffer of a model, row-major float32.
struct TensorRecord {
  std::string name;
  std::vector<int64_t> shape;
  std::vector<float> data;
};
// The same names, shapes and order at every participant of a study.
using Weights = std::vector<TensorRecord>;

// Checks that `b` has the names and shapes of `a` (the error names the first mismatch).
Status check_compatible(const Weights& a, const Weights& b);
uint64_t num_values(const Weights& w);

// What a site is asked to do in a round.
struct RoundSettings {
  uint32_t round = 0;       // 1-based
  uint32_t local_epochs = 1;
  uint32_t batch_size = 64;
  double lr = 0.001;
  uint64_t seed = 0;        // per round and site: the site mixes in its own index
};

// A site's evaluation of a model on its validation split.
struct EvalReport {
  uint64_t num_examples = 0;
  double loss = 0;
  ScoreHistogram histogram;  // pooled across sites at the coordinator for global metrics
};

struct FitReport {
  Weights weights;           // the site's weights after local training
  uint64_t num_examples = 0; // training samples seen per epoch (FedAvg weight)
  double train_loss = 0;
  double train_seconds = 0;
};

// A site's learning. Implemented by training/ (TorchLearner); tests use small fakes.
// Not required to be thread-safe: one site runner drives one learner.
class Learner {
 public:
  virtual ~Learner() = default;
  virtual StatusOr<FitReport> fit(const Weights& global, const RoundSettings& settings) = 0;
  virtual StatusOr<EvalReport> evaluate(const Weights& global) = 0;
  virtual uint64_t num_train_examples() const = 0;
  virtual uint64_t num_val_examples() const = 0;
};

// One site's reply in a round, as the strategy sees it (failures included, as data).
struct SiteResult {
  std::string site_id;
  bool ok = false;
  int error_code = 0;        // a StatusCode when !ok (no free text from sites)
  FitReport fit;
  EvalReport eval_before;    // evaluation of the global model the site received this round
};

// Aggregation, apart from the loop (after Flower). Plain functions; no I/O.
class Strategy {
 public:
  virtual ~Strategy() = default;
  virtual std::string name() const = 0;
  // New global weights from the current ones and the round's results (failures included).
  virtual StatusOr<Weights> aggregate(uint32_t round, const Weights& global,
                                      const std::vector<SiteResult>& results) = 0;
};

// Sample-weighted FedAvg (McMahan et al. 2017): sum_k n_k w_k / sum_k n_k over successful sites.
std::unique_ptr<Strategy> make_fedavg();
StatusOr<std::unique_ptr<Strategy>> make_strategy(const std::string& name);

// The arithmetic of FedAvg, exposed for tests and other strategies.
StatusOr<Weights> weighted_average(const std::vector<const Weights*>& models,
                                   const std::vector<double>& weights);

enum class Compression { kNone = 0, kZstd = 1 };
StatusOr<Compression> parse_compression(const std::string& name);

// Per-site accounting and metrics of one round, for progress, logs and metrics files.
struct SiteRoundLog {
  std::string site_id;
  bool ok = false;
  int error_code = 0;
  uint64_t num_examples = 0;
  double train_loss = 0;
  double train_seconds = 0;
  uint64_t bytes_down = 0;  // bytes of the messages the coordinator sent to this site (on the wire)
  uint64_t bytes_up = 0;    // bytes of the messages received from it
  uint64_t raw_bytes_down = 0;  // the same before compression
  uint64_t raw_bytes_up = 0;
  BinaryMetrics eval;       // of the global model the site received, at the global threshold
  double eval_loss = 0;
};

struct RoundLog {
  uint32_t round = 0;        // 1..rounds; rounds+1 is the final evaluation-only round
  bool evaluation_only = false;
  std::vector<SiteRoundLog> sites;
  // Metrics of the model that was sent this round (the global model after round-1), pooled over
  // the sites' validation histograms; the threshold is chosen on that pooled histogram.
  BinaryMetrics global_eval;
  double global_eval_loss = 0;
  ScoreHistogram pooled_histogram;  // the pooled validation scores behind global_eval (ROC curves)
  double seconds = 0;
  uint64_t bytes_down = 0, bytes_up = 0, raw_bytes_down = 0, raw_bytes_up = 0;
  // Differential privacy spent so far (client-level, RDP accountant of federation/dp.h) at
  // `dp_delta`; negative when the study runs without DP. Filled in by the app.
  double dp_epsilon = -1;
  double dp_delta = 0;
};

struct CoordinatorOptions {
  std::string bind_address = "tcp://127.0.0.1:5555";
  std::string study = "study";     // sites with another study name are refused
  std::vector<std::string> expected_sites;  // site ids allowed to join; all must join to start
  int min_sites = 0;                // updates needed to close a round; 0 = all expected sites
  int rounds = 10;
  RoundSettings settings;           // round and seed are filled in per round
  double join_timeout_s = 300;
  double round_timeout_s = 1800;
  Compression compression = Compression::kZstd;
  int zstd_level = 3;
  size_t max_message_bytes = 2ull << 30;  // larger messages are refused
  // Update codecs (federation/codec.h), e.g. "delta|ef|topk:0.01|q8|zstd". Upstream: what the
  // coordinator expects (it decodes any codec it knows; sites choose theirs in SiteOptions).
  // Downstream: how global models go to the sites, as a delta against the copy each site holds
  // (a site without one gets the full model). "zstd" (lossless plain weights) keeps the old bytes.
  std::string upstream_codec = "zstd";
  std::string downstream_codec = "zstd";
  Weights initial_weights;          // the round-1 global model (the app builds it from the config)
  // Called after each round's aggregation with the log and the new global weights (the app saves
  // the model and metrics here); the last call has evaluation_only = true and the final weights.
  std::function<void(const RoundLog&, const Weights&)> on_round_end;
};

// Runs a whole study: waits for the sites, runs the rounds, the final evaluation, shuts the sites
// down. Returns the final global weights. Not thread-safe; one call at a time.
StatusOr<Weights> run_coordinator(const CoordinatorOptions& options);

struct SiteOptions {
  std::string coordinator_address = "tcp://127.0.0.1:5555";
  std::string site_id;
  std::string study = "study";
  double idle_timeout_s = 3600;    // give up when the coordinator says nothing for this long
  Compression compression = Compression::kZstd;
  int zstd_level = 3;
  size_t max_message_bytes = 2ull << 30;
  // Codec of this site's updates (federation/codec.h); its error-feedback residual is kept across
  // rounds. downstream_codec is the one this site expects from the coordinator: a site decodes any
  // codec it knows, and the field only serves to check the configuration at start.
  std::string upstream_codec = "zstd";
  std::string downstream_codec = "zstd";
  // Tamper-evident log of every message sent and received (federation/audit.h); "" = none. The
  // app passes <out>/audit-<site>.log.
  std::string audit_log;
};

// Joins the study and serves the coordinator until SHUTDOWN. A failed fit or evaluation is
// reported to the coordinator as a status code and the site stays in the study.
Status run_site(Learner& learner, const SiteOptions& options);

}  // namespace fedrad::fed
