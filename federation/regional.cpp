#include "federation/regional.h"

#include <chrono>

#include "common/log.h"

namespace fedrad::fed {
namespace {

// The region's evaluation of a model: its sites' evaluations pooled, as the top coordinator pools
// its own participants' (histograms and segmentation sums add, the loss is example-weighted).
EvalReport pooled_eval(const RoundLog& log) {
  EvalReport e;
  e.num_examples = log.global_eval_examples;
  e.loss = log.global_eval_loss;
  e.histogram = log.pooled_histogram;
  e.seg = log.global_seg;
  return e;
}

size_t sites_ok(const RoundLog& log) {
  size_t n = 0;
  for (const SiteRoundLog& s : log.sites) n += s.ok ? 1 : 0;
  return n;
}

}  // namespace

Status validate_region_options(const RegionOptions& o) {
  const std::string region = o.upstream.site_id;
  if (region.empty()) return invalid_argument("region: empty region id (upstream.site_id)");
  const std::string what = "region '" + region + "': ";
  if (o.downstream.expected_sites.empty()) return invalid_argument(what + "no sites");
  for (const std::string& s : o.downstream.expected_sites)
    if (s == region) return invalid_argument(what + "a region cannot be one of its own sites");
  if (o.downstream.study != o.upstream.study)
    return invalid_argument(what + "study '" + o.downstream.study + "' towards its sites, '" + o.upstream.study +
                            "' towards the top coordinator; they must be the same");
  if (o.downstream.bind_address == o.upstream.coordinator_address)
    return invalid_argument(what + "listens on " + o.downstream.bind_address +
                            ", the top coordinator's address; a region needs an address of its own");
  if (o.upstream.secure_aggregation || o.downstream.secure_aggregation.enabled)
    return invalid_argument(what + "secure aggregation cannot pass through a regional aggregator: the region would "
                            "unmask, and so see, each of its sites' updates; run the study without regions");
  if (o.downstream.strategy.name != "fedavg" || o.downstream.strategy.max_update_norm > 0)
    return invalid_argument(what + "strategy '" + o.downstream.strategy.name +
                            "' towards its sites; a region aggregates with plain fedavg (its result goes upstream "
                            "as its sites' sample-weighted mean); the study's strategy runs at the top coordinator");
  if (!o.downstream.state_dir.empty() || o.downstream.resume)
    return invalid_argument(what + "no state_dir or resume: the top coordinator checkpoints the study");
  return ok_status();
}

RegionalLearner::RegionalLearner(CoordinatorOptions downstream) : options_(std::move(downstream)) {
  options_.on_joined = [this](const Status& st, uint64_t num_train, uint64_t num_val) {
    std::lock_guard<std::mutex> lock(mu_);
    joined_ = true;
    join_status_ = st;
    num_train_ = num_train;
    num_val_ = num_val;
    cv_.notify_all();
  };
  options_.next_step = [this]() -> DrivenStep {
    std::unique_lock<std::mutex> lock(mu_);
    cv_.wait(lock, [&] { return step_.has_value(); });
    DrivenStep s = std::move(*step_);
    step_.reset();
    return s;
  };
  options_.on_round_end = [this](const RoundLog& log, const Weights& w) {
    std::lock_guard<std::mutex> lock(mu_);
    outcome_ = Outcome{ok_status(), log, w};
    cv_.notify_all();
  };
  options_.on_step_failed = [this](const Status& st) {
    std::lock_guard<std::mutex> lock(mu_);
    outcome_ = Outcome{st, {}, {}};
    cv_.notify_all();
  };
  thread_ = std::thread([this] {
    StatusOr<Weights> result = run_coordinator(options_);
    std::lock_guard<std::mutex> lock(mu_);
    coordinator_done_ = true;
    coordinator_status_ = result.ok() ? ok_status() : result.status();
    if (!joined_) {  // refused before its join phase (bad options, cannot bind)
      joined_ = true;
      join_status_ = coordinator_status_.ok() ? internal_error("region: coordinator ended before its sites joined")
                                              : coordinator_status_;
    }
    cv_.notify_all();
  });
}

RegionalLearner::~RegionalLearner() {
  Status st = stop();
  if (!st.ok()) logger("region")->warn("its coordinator ended with: {}", st.to_string());
}

Status RegionalLearner::joined() const {
  std::unique_lock<std::mutex> lock(mu_);
  cv_.wait(lock, [&] { return joined_; });
  return join_status_;
}

uint64_t RegionalLearner::num_train_examples() const {
  (void)joined();
  std::lock_guard<std::mutex> lock(mu_);
  return num_train_;
}

uint64_t RegionalLearner::num_val_examples() const {
  (void)joined();
  std::lock_guard<std::mutex> lock(mu_);
  return num_val_;
}

Status RegionalLearner::stop() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (!thread_.joinable()) return coordinator_status_;
    if (!coordinator_done_) {
      step_ = DrivenStep{};  // kStop: the coordinator shuts the sites down and returns
      cv_.notify_all();
    }
  }
  thread_.join();
  std::lock_guard<std::mutex> lock(mu_);
  return coordinator_status_;
}

StatusOr<RegionalLearner::Outcome> RegionalLearner::run_step(DrivenStep step) {
  std::unique_lock<std::mutex> lock(mu_);
  if (coordinator_done_)
    return io_error("region: its coordinator has stopped: " +
                    (coordinator_status_.ok() ? std::string("shut down") : coordinator_status_.to_string()));
  outcome_.reset();
  step_ = std::move(step);
  cv_.notify_all();
  // Bounded by the coordinator: each step ends by its round deadline (round_timeout_s).
  cv_.wait(lock, [&] { return outcome_.has_value() || coordinator_done_; });
  if (!outcome_)
    return io_error("region: its coordinator stopped during the round: " + coordinator_status_.to_string());
  Outcome o = std::move(*outcome_);
  outcome_.reset();
  if (!o.status.ok()) return o.status;
  return o;
}

StatusOr<FitReport> RegionalLearner::fit(const Weights& global, const RoundSettings& settings) {
  // The region would unmask its sites' inputs: refused here too, whatever the top asks for.
  if (settings.secure_aggregation)
    return unsupported("region: secure aggregation cannot pass through a regional aggregator");
  const auto start = std::chrono::steady_clock::now();
  DrivenStep step;
  step.kind = DrivenStep::Kind::kFit;
  step.round = settings.round;
  step.global = global;
  step.settings = settings;
  FEDRAD_ASSIGN_OR_RETURN(Outcome o, run_step(std::move(step)));
  last_round_ = settings.round;
  FitReport r;
  double loss = 0;
  for (const SiteRoundLog& s : o.log.sites) {
    if (!s.ok) continue;
    r.num_examples += s.num_examples;
    loss += static_cast<double>(s.num_examples) * s.train_loss;
  }
  if (r.num_examples == 0)
    return io_error("region: round " + std::to_string(settings.round) + ": no site update with examples");
  r.weights = std::move(o.weights);  // the sample-weighted mean of the sites' models (FedAvg)
  r.train_loss = loss / static_cast<double>(r.num_examples);
  r.train_seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  r.eval_before = pooled_eval(o.log);
  logger("region")->info("round {}: {}/{} sites, {} examples, mean train loss {:.4f}", settings.round,
                         sites_ok(o.log), o.log.sites.size(), r.num_examples, r.train_loss);
  return r;
}

StatusOr<EvalReport> RegionalLearner::evaluate(const Weights& global) {
  DrivenStep step;
  step.kind = DrivenStep::Kind::kEvaluate;
  step.round = last_round_ + 1;  // the top's final evaluation follows its last round
  step.global = global;
  FEDRAD_ASSIGN_OR_RETURN(Outcome o, run_step(std::move(step)));
  if (sites_ok(o.log) == 0) return io_error("region: no site evaluated the model");
  return pooled_eval(o.log);
}

Status run_region(const RegionOptions& options) {
  FEDRAD_RETURN_IF_ERROR(validate_region_options(options));
  const std::string what = "region '" + options.upstream.site_id + "'";
  auto log = logger("region");
  log->info("{}: {} sites at {}, top coordinator at {}", what, options.downstream.expected_sites.size(),
            options.downstream.bind_address, options.upstream.coordinator_address);
  RegionalLearner learner(options.downstream);
  // Joins the top coordinator only with the sites it needs: a region without them would only
  // report failures, so it stops here naming why.
  Status joined = learner.joined();
  if (!joined.ok()) {
    Status stopped = learner.stop();
    (void)stopped;
    return joined.with_context(what);
  }
  Status up = run_site(learner, options.upstream);
  Status down = learner.stop();
  if (!up.ok()) return up.with_context(what + " towards the top coordinator");
  if (!down.ok()) return down.with_context(what + " towards its sites");
  return ok_status();
}

}  // namespace fedrad::fed
