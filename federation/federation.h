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
#include "common/seg_metrics.h"
#include "common/status.h"
#include "federation/keys.h"

namespace fedrad::fed {

// One named parameter or buffer of a model, row-major float32.
struct TensorRecord {
  std::string name;
  std::vector<int64_t> shape;
  std::vector<float> data;
};
// The same names, shapes and order at every participant of a study.
using Weights = std::vector<TensorRecord>;

// A tensor's values read in place from a buffer somebody else owns (a received message), so that
// a large update is aggregated without a copy of the model: `size` float32 values, little-endian,
// at `data`, which need not be aligned (read them with std::memcpy or tensor_value).
struct TensorView {
  std::string name;
  std::vector<int64_t> shape;
  const void* data = nullptr;
  uint64_t size = 0;
};
using WeightsView = std::vector<TensorView>;
float tensor_value(const TensorView& t, uint64_t i);
// check_compatible for an update given as views.
Status check_compatible(const Weights& a, const WeightsView& b);
// A copy as plain weights (for strategies that keep updates, and tests).
Weights to_weights(const WeightsView& view);

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
  // Set by the strategy (StrategyConfig), carried to the sites so that they follow it:
  double prox_mu = 0;       // FedProx: local loss + prox_mu/2 * ||w - w_global||^2; 0 = off
  bool keep_local_norm = false;  // FedBN: normalisation layers stay local (the site's own copy)
  // Secure aggregation this round (the coordinator's privacy.secure_aggregation): the site keeps
  // its update and takes part in the SECAGG_* phases instead of sending it in FIT_RES.
  bool secure_aggregation = false;
};

// Secure aggregation in the live protocol (federation/secagg.h; wire.h SECAGG_*). After local
// training each site masks [n_i * clip(delta_i), n_i] in fixed point (delta_i: its weights minus
// the model it received, clipped per coordinate; n_i: its example count, capped at the largest
// count a party announced at JOIN), so the coordinator recovers sum n_i delta_i and sum n_i of the
// parties whose input arrived, and nothing about any one site. The fixed-point scale is the
// largest power of two for which the sum of all parties cannot overflow int32.
struct SecureAggregationOptions {
  bool enabled = false;
  double clip = 4;         // per-coordinate bound on a site's update
  uint32_t threshold = 0;  // shares needed to unmask; 0 = parties - parties / 3 (at least 2)
};

// A site's evaluation of a model on its validation split.
struct EvalReport {
  uint64_t num_examples = 0;
  double loss = 0;
  ScoreHistogram histogram;  // pooled across sites at the coordinator for global metrics
  // Segmentation studies: Dice/HD95 sums per structure over the site's validation cases (numbers
  // only; empty for classification). Pooled across sites like the histogram.
  SegScoreSums seg;
};

struct FitReport {
  Weights weights;           // the site's weights after local training
  uint64_t num_examples = 0; // training samples seen per epoch (FedAvg weight)
  double train_loss = 0;
  double train_seconds = 0;
  // Only from learners whose evaluates_in_fit() is true: their evaluation of `global` (the model
  // they received), made as part of fit.
  EvalReport eval_before;
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
  // True when fit() also evaluates the model it received and returns it in FitReport::eval_before;
  // the site runner then does not call evaluate() before fit(). A regional aggregator
  // (federation/regional.h) is such a learner: its sites evaluate the model they receive in the
  // same round, so asking it to evaluate first would make every site evaluate twice.
  virtual bool evaluates_in_fit() const { return false; }
};

// One site's reply in a round, as the strategy sees it (failures included, as data).
struct SiteResult {
  std::string site_id;
  bool ok = false;
  int error_code = 0;        // a StatusCode when !ok (no free text from sites)
  FitReport fit;
  EvalReport eval_before;    // evaluation of the global model the site received this round
};

// Aggregation, apart from the loop (after Flower). Plain functions of the updates; no I/O.
//
// Streaming: per round the coordinator calls begin_round once, accumulate once per site reply as
// it arrives (failures included, as data), then finish_round. Strategies whose streaming() is
// true keep only running sums, so the coordinator's memory does not grow with the number of
// sites; the robust ones (median, trimmed mean) must keep every update and say so.
// The global model given to begin_round is referred to, not copied: the caller keeps it alive
// and unchanged until finish_round returns (a model of 1 GB is not held twice).
// An update that is not finite or does not match the global model's names and shapes is refused
// (logged with the site id by the strategy's caller through `refused`), never averaged in.
class Strategy {
 public:
  virtual ~Strategy() = default;
  virtual std::string name() const = 0;
  virtual bool streaming() const { return false; }
  virtual Status begin_round(uint32_t round, const Weights& global) = 0;
  // Takes the result; returns a non-ok Status (naming the site and why) when the update was
  // refused. The round goes on without it.
  virtual Status accumulate(SiteResult result) = 0;
  // The same with the update as views into a buffer the caller keeps alive during the call
  // (result.fit.weights is ignored): streaming strategies fold it into their running state
  // without a copy of the model; the default copies it into result.fit.weights and calls
  // accumulate. Gives bit for bit the state accumulate would. `done_with`, when given, is called
  // once per tensor index as soon as the strategy will not read that tensor of `update` again,
  // so that the caller can give its memory back while the rest is folded in.
  virtual Status accumulate_view(SiteResult result, const WeightsView& update,
                                 const std::function<void(size_t tensor)>& done_with = nullptr);
  // The new global model; fails when no usable update came in (the caller keeps the old model).
  virtual StatusOr<Weights> finish_round() = 0;
  // What the sites must do this round (FedProx's mu, FedBN), merged into RoundSettings.
  virtual void configure_round(RoundSettings* settings) const { (void)settings; }
  // Server state across rounds (optimiser moments, momentum), for the coordinator's checkpoint.
  // Empty for stateless strategies; restore_state gets what state() returned.
  virtual Weights state() const { return {}; }
  virtual Status restore_state(const Weights& state) { (void)state; return ok_status(); }

  // begin_round + accumulate each + finish_round (refusals are skipped).
  StatusOr<Weights> aggregate(uint32_t round, const Weights& global, const std::vector<SiteResult>& results);
};

struct StrategyConfig {
  // fedavg | fedavgm | fedprox | fedadam | fedyogi | fedadagrad | fedbn | median | trimmed_mean
  std::string name = "fedavg";
  double server_lr = 1.0;        // fedavgm (with server_momentum); fedadam/yogi/adagrad: eta
  double server_momentum = 0.9;  // fedavgm
  double beta1 = 0.9, beta2 = 0.99, tau = 1e-3;  // fedadam / fedyogi / fedadagrad (Reddi et al.)
  double prox_mu = 0.01;         // fedprox
  double trim_fraction = 0.2;    // trimmed_mean: fraction cut at each end per coordinate
  // Update-norm bounding for any strategy: a site's update (its weights - global) with an L2
  // norm above this is scaled down to it; 0 = off.
  double max_update_norm = 0;
};

// Sample-weighted FedAvg (McMahan et al. 2017): sum_k n_k w_k / sum_k n_k over successful sites.
std::unique_ptr<Strategy> make_fedavg();
StatusOr<std::unique_ptr<Strategy>> make_strategy(const std::string& name);
StatusOr<std::unique_ptr<Strategy>> make_strategy(const StrategyConfig& config);

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
  SegScoreSums seg;         // segmentation studies: the site's Dice/HD95 sums (empty otherwise)
};

struct RoundLog {
  uint32_t round = 0;        // 1..rounds; rounds+1 is the final evaluation-only round
  bool evaluation_only = false;
  std::vector<SiteRoundLog> sites;
  // Metrics of the model that was sent this round (the global model after round-1), pooled over
  // the sites' validation histograms; the threshold is chosen on that pooled histogram.
  BinaryMetrics global_eval;
  double global_eval_loss = 0;
  uint64_t global_eval_examples = 0;  // validation examples behind global_eval (not checkpointed)
  ScoreHistogram pooled_histogram;  // the pooled validation scores behind global_eval (ROC curves)
  SegScoreSums global_seg;          // segmentation studies: the sites' Dice/HD95 sums pooled (mean over cases)
  double seconds = 0;
  uint64_t bytes_down = 0, bytes_up = 0, raw_bytes_down = 0, raw_bytes_up = 0;
  // Differential privacy spent so far (client-level, RDP accountant of federation/dp.h) at
  // `dp_delta`; negative when the study runs without DP. Filled in by the app.
  double dp_epsilon = -1;
  double dp_delta = 0;
};

// Driven mode of a coordinator (CoordinatorOptions::next_step): what to do next. A regional
// aggregator (federation/regional.h) drives its sites' coordinator so, one upstream round at a time.
struct DrivenStep {
  enum class Kind { kFit, kEvaluate, kStop };
  Kind kind = Kind::kStop;
  uint32_t round = 0;      // the round number the sites see (the upstream round's)
  Weights global;          // the model to send
  RoundSettings settings;  // kFit: sent to the sites as they are (no strategy settings added)
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
  // Messages larger than this travel as CHUNK messages of at most this many bytes (wire.h), so
  // that no ZeroMQ frame is larger; libzmq refuses frames above it.
  size_t chunk_bytes = size_t{64} << 20;
  // CurveZMQ (federation/keys.h). When keys.enabled(), every connection is encrypted, a site is
  // admitted only with a public key on keys.sites, and that key fixes the site id it may use.
  // Without keys the traffic is plain (tests; a study inside a VPN) and a warning is logged.
  CoordinatorKeys keys;
  // Liveness: sites send HEARTBEAT every heartbeat_s while they work; a site the coordinator
  // waits for that says nothing for heartbeat_misses x heartbeat_s is taken for dead and the
  // round goes on without it (it may rejoin later). Anything it sends counts, each chunk of a large
  // message included, and silence is judged only once what is queued has been read (a site is
  // not silent because the coordinator was busy with another site's large update).
  double heartbeat_s = 5;
  int heartbeat_misses = 6;
  // Durability (federation/checkpoint.h): when set, each completed round is written atomically
  // to state_dir/round-NNN.ckpt (global model, strategy state, round log) before on_round_end.
  // resume: continue from the newest checkpoint there (the sites rejoin and get the full model);
  // without it, existing checkpoints are removed and the study starts at round 1.
  std::string state_dir;
  bool resume = false;
  // Called once on resume, before the sites join, with the log of the last completed round and
  // the global model after it (the app trims its metrics files to that round here).
  std::function<void(const RoundLog&, const Weights&)> on_resume;
  // Called for every message or connection the coordinator refuses, with the peer (site id or
  // address, printable) and the reason; also logged. For tests and monitoring.
  std::function<void(const std::string& peer, const std::string& reason)> on_refused;
  // Update codecs (federation/codec.h), e.g. "delta|ef|topk:0.01|q8|zstd". Upstream: what the
  // coordinator expects (it decodes any codec it knows; sites choose theirs in SiteOptions).
  // Downstream: how global models go to the sites, as a delta against the copy each site holds
  // (a site without one gets the full model). "zstd" (lossless plain weights) keeps the old bytes.
  std::string upstream_codec = "zstd";
  std::string downstream_codec = "zstd";
  StrategyConfig strategy;          // aggregation (make_strategy)
  // Secure aggregation: the coordinator never holds a site's update; only strategies that work on
  // the sample-weighted mean are allowed (not median, trimmed_mean or max_update_norm).
  SecureAggregationOptions secure_aggregation;
  // Tests and audits: each masked vector as the coordinator received it (site, round, values).
  std::function<void(const std::string& site, uint32_t round, const std::vector<uint32_t>& masked)> on_masked_input;
  Weights initial_weights;          // the round-1 global model (the app builds it from the config)
  // Called after each round's aggregation with the log and the new global weights (the app saves
  // the model and metrics here); the last call has evaluation_only = true and the final weights.
  std::function<void(const RoundLog&, const Weights&)> on_round_end;
  // Driven mode (a regional aggregator, federation/regional.h): when next_step is set, the
  // coordinator does not run `rounds` rounds from initial_weights (which may be empty). After the
  // join phase, reported through on_joined (its status and the joined sites' example counts), it
  // asks next_step what to do, runs that step with the given model and settings, reports it through
  // on_round_end (kFit: the strategy's result; kEvaluate: evaluation_only) or, when the step
  // failed (e.g. fewer than min_sites updates), through on_step_failed, and asks again until kStop;
  // a failed step does not end it. `rounds` only labels the log lines. Not with secure
  // aggregation, state_dir or resume.
  std::function<DrivenStep()> next_step;
  std::function<void(const Status& joined, uint64_t num_train, uint64_t num_val)> on_joined;
  std::function<void(const Status& failure)> on_step_failed;
};

// Runs a whole study: waits for the sites, runs the rounds, the final evaluation, shuts the sites
// down. Returns the final global weights. Not thread-safe; one call at a time.
StatusOr<Weights> run_coordinator(const CoordinatorOptions& options);
// The same, taking options.initial_weights instead of copying them (left empty): a caller that
// has no further use for the initial model does not hold it beside the coordinator's own.
StatusOr<Weights> run_coordinator(CoordinatorOptions&& options);

struct SiteOptions {
  std::string coordinator_address = "tcp://127.0.0.1:5555";
  std::string site_id;
  std::string study = "study";
  double idle_timeout_s = 3600;    // give up when the coordinator says nothing for this long
  Compression compression = Compression::kZstd;
  int zstd_level = 3;
  size_t max_message_bytes = 2ull << 30;
  size_t chunk_bytes = size_t{64} << 20;  // as CoordinatorOptions::chunk_bytes
  // CurveZMQ: this site's key pair and the only coordinator key it talks to (federation/keys.h).
  SiteKeys keys;
  double heartbeat_s = 5;  // HEARTBEAT to the coordinator this often, also while training
  // Codec of this site's updates (federation/codec.h); its error-feedback residual is kept across
  // rounds. downstream_codec is the one this site expects from the coordinator: a site decodes any
  // codec it knows, and the field only serves to check the configuration at start.
  std::string upstream_codec = "zstd";
  std::string downstream_codec = "zstd";
  // Tamper-evident log of every message sent and received (federation/audit.h); "" = none. The
  // app passes <out>/audit-<site>.log.
  std::string audit_log;
  // This site's update leaves only masked (secure aggregation): a FIT_INS that does not ask for
  // secure aggregation is answered with a failure, never with the update.
  bool secure_aggregation = false;
  // Tests only: after sending a message of this type (wire::MessageType as a number; 0 = never)
  // the site stops at once, as if killed: no more messages, not even heartbeats.
  uint16_t vanish_after = 0;
};

// Joins the study and serves the coordinator until SHUTDOWN. A failed fit or evaluation is
// reported to the coordinator as a status code and the site stays in the study.
Status run_site(Learner& learner, const SiteOptions& options);

}  // namespace fedrad::fed
