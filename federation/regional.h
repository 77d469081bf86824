// An optional tier of regional aggregators for large consortia (fedrad region).
//
// A regional aggregator is a site towards the top coordinator (it joins with its own region id,
// with CurveZMQ keys when keys are configured) and a coordinator towards its own sites. Each
// upstream FIT_INS becomes one round with its sites: they get the global model and the round's
// settings unchanged (FedProx's mu, FedBN), their updates are folded into a streaming
// sample-weighted mean, and the region replies FIT_RES with that mean, the region's total example
// count and the pooled evaluation its sites made of the model they received (score histograms,
// segmentation sums and example-weighted losses add up). The top coordinator's strategy then
// sees one update per region, and for FedAvg
//   sum_r N_r * mean_r / sum_r N_r = sum_k n_k w_k / sum_k n_k
// so the global model equals the flat study's; server optimisers (FedAvgM, FedAdam, ...) act on
// that same mean. EVAL_INS is answered with the pooled evaluation of its sites, SHUTDOWN shuts
// its sites down.
//
// What cannot pass through a tier is refused (validate_region_options, and common/config.cpp for
// a study config): secure aggregation (the region would hold each site's update) and, at the top,
// strategies or bounds that act on one site's update (median, trimmed_mean, max_update_norm),
// which would act on regions instead.
//
// Failures: a site that fails, goes silent or misses the deadline is left out of the region's
// round as the coordinator does (the region's own min_sites and round_timeout_s); a region whose
// round fails (fewer than min_sites updates) answers FIT_RES with the status code kIoError, never
// with text.
//
// Implementation: the downstream side is fed::run_coordinator in driven mode
// (CoordinatorOptions::next_step) on a thread of its own; RegionalLearner hands it one step per
// upstream message and waits for the outcome, and fed::run_site drives RegionalLearner upstream.
#pragma once

#include <condition_variable>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "federation/federation.h"

namespace fedrad::fed {

struct RegionOptions {
  // Towards the top coordinator: site_id is the region's id; its upstream codec, keys (the
  // region's own pair and the top coordinator's public key), heartbeats, audit log.
  SiteOptions upstream;
  // Towards the region's sites: bind_address, study (the same as upstream's), expected_sites (its
  // sites), min_sites, join and round timeouts, keys (the region's pair as a server and its sites'
  // public keys), codecs, heartbeats. strategy must stay fedavg; rounds only labels log lines;
  // initial_weights, settings, state_dir and the driven-mode callbacks are set by run_region.
  CoordinatorOptions downstream;
};

// What cannot work through a tier, named (invalid_argument); ok otherwise.
Status validate_region_options(const RegionOptions& options);

// The region as a Learner for fed::run_site: fit() runs one round with the region's sites, and
// evaluate() (the upstream EVAL_INS) pools their evaluations. Starts the downstream coordinator on
// its own thread at construction; the destructor shuts the region's sites down and joins it.
class RegionalLearner : public Learner {
 public:
  // A copy of `downstream` is kept; its driven-mode callbacks and on_round_end are replaced.
  explicit RegionalLearner(CoordinatorOptions downstream);
  ~RegionalLearner() override;
  RegionalLearner(const RegionalLearner&) = delete;
  RegionalLearner& operator=(const RegionalLearner&) = delete;

  StatusOr<FitReport> fit(const Weights& global, const RoundSettings& settings) override;
  StatusOr<EvalReport> evaluate(const Weights& global) override;
  bool evaluates_in_fit() const override { return true; }
  // The region's sites' totals, once they joined (these wait for the join phase to end, so the
  // region joins the top coordinator with its sites' counts).
  uint64_t num_train_examples() const override;
  uint64_t num_val_examples() const override;

  // Waits for the downstream join phase to end; its status (the region cannot work without the
  // sites it needs: fewer than max(min_sites, 1) joined within the join timeout).
  Status joined() const;
  // Stops the downstream coordinator (its sites get SHUTDOWN) and returns how it ended.
  Status stop();

 private:
  struct Outcome {
    Status status;  // of the step
    RoundLog log;
    Weights weights;
  };
  StatusOr<Outcome> run_step(DrivenStep step);

  CoordinatorOptions options_;
  mutable std::mutex mu_;
  mutable std::condition_variable cv_;
  bool joined_ = false;
  Status join_status_;
  uint64_t num_train_ = 0, num_val_ = 0;
  std::optional<DrivenStep> step_;        // posted by the site side, taken by the coordinator
  std::optional<Outcome> outcome_;        // posted by the coordinator
  bool coordinator_done_ = false;
  Status coordinator_status_;
  uint32_t last_round_ = 0;
  std::thread thread_;
};

// Runs a regional aggregator until the top coordinator's SHUTDOWN (or an error upstream); its sites
// are shut down then. Refuses what validate_region_options refuses.
Status run_region(const RegionOptions& options);

}  // namespace fedrad::fed
