// The tier of regional aggregators (federation/regional.h) over real sockets on 127.0.0.1: a
// top coordinator, regions (fed::run_region) and sites, each on its own thread, with fake
// deterministic learners; compared with the same sites talking to the coordinator directly.
#include <gtest/gtest.h>

#include <atomic>
#include <cmath>
#include <future>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "common/config.h"
#include "federation/federation.h"
#include "federation/regional.h"
#include "federation/wire.h"
#include "tests/test_data.h"

namespace fedrad::fed {
namespace {

using fedrad::testing::free_port;

// fit: every value v -> 0.9 v + (index + 1) * 0.5 + 0.01 * round, with 3 * index + 2 examples
// (distinct per site, so sample weighting matters); evaluate: a fixed histogram per site. Counts
// evaluations and keeps the settings it was given.
class TierLearner : public Learner {
 public:
  explicit TierLearner(int index) : index_(index) {}
  int fail_from_round = 0;  // fit fails from this round on (0 = never)

  StatusOr<FitReport> fit(const Weights& global, const RoundSettings& settings) override {
    {
      std::lock_guard<std::mutex> lock(mu_);
      seen_.push_back(settings);
    }
    if (fail_from_round > 0 && static_cast<int>(settings.round) >= fail_from_round)
      return internal_error("patient 4711's scanner caught fire");
    FitReport r;
    r.weights = global;
    for (TensorRecord& t : r.weights)
      for (float& v : t.data) v = step(v, index_, settings.round);
    r.num_examples = examples(index_);
    r.train_loss = 1.0 + index_;
    return r;
  }

  StatusOr<EvalReport> evaluate(const Weights&) override {
    ++evaluations_;
    EvalReport e;
    e.histogram.neg.assign(10, 0);
    e.histogram.pos.assign(10, 0);
    e.histogram.neg[2 + index_] = static_cast<uint64_t>(index_ + 1);
    e.histogram.pos[6] = static_cast<uint64_t>(index_ + 2);
    e.num_examples = 2 * static_cast<uint64_t>(index_) + 3;
    e.loss = 0.25 * (index_ + 1);
    return e;
  }

  uint64_t num_train_examples() const override { return examples(index_); }
  uint64_t num_val_examples() const override { return 2 * static_cast<uint64_t>(index_) + 3; }

  static float step(float v, int index, uint32_t round) {
    return 0.9f * v + static_cast<float>(index + 1) * 0.5f + 0.01f * static_cast<float>(round);
  }
  static uint64_t examples(int index) { return 3 * static_cast<uint64_t>(index) + 2; }

  int evaluations() const { return evaluations_; }
  std::vector<RoundSettings> seen() const {
    std::lock_guard<std::mutex> lock(mu_);
    return seen_;
  }

 private:
  int index_;
  std::atomic<int> evaluations_{0};
  mutable std::mutex mu_;
  std::vector<RoundSettings> seen_;
};

const char* kStudy = "tiered";

Weights initial_model() {
  return {TensorRecord{"conv.weight", {2, 3}, {0.1f, -0.2f, 0.3f, 1.5f, -2.0f, 0.0f}},
          TensorRecord{"fc.bias", {2}, {0.5f, -0.5f}}};
}

std::string site_name(int i) { return std::string("site-") + static_cast<char>('a' + i); }

SiteOptions site_options(const std::string& id, const std::string& address) {
  SiteOptions s;
  s.coordinator_address = address;
  s.site_id = id;
  s.study = kStudy;
  s.idle_timeout_s = 20;
  s.heartbeat_s = 0.1;
  return s;
}

CoordinatorOptions coordinator_options(const std::vector<std::string>& participants, int rounds) {
  CoordinatorOptions c;
  c.bind_address = "tcp://127.0.0.1:" + std::to_string(free_port());
  c.study = kStudy;
  c.expected_sites = participants;
  c.rounds = rounds;
  c.settings.seed = 11;
  c.settings.lr = 0.02;
  c.settings.local_epochs = 2;
  c.join_timeout_s = 10;
  c.round_timeout_s = 10;
  c.heartbeat_s = 0.1;
  c.heartbeat_misses = 5;
  c.initial_weights = initial_model();
  return c;
}

struct Outcome {
  StatusOr<Weights> weights = internal_error("not run");
  std::vector<RoundLog> logs;
  std::vector<Weights> round_weights;
  std::vector<Status> regions, sites;
};

// A flat study: every site talks to the coordinator.
Outcome run_flat(CoordinatorOptions top, std::vector<std::unique_ptr<TierLearner>>& learners) {
  Outcome out;
  top.on_round_end = [&](const RoundLog& log, const Weights& w) {
    out.logs.push_back(log);
    out.round_weights.push_back(w);
  };
  std::vector<SiteOptions> sites;
  for (const std::string& s : top.expected_sites) sites.push_back(site_options(s, top.bind_address));
  auto coord = std::async(std::launch::async, [&] { return run_coordinator(top); });
  std::vector<std::future<Status>> futures;
  for (size_t i = 0; i < sites.size(); ++i)
    futures.push_back(std::async(std::launch::async, [&, i] { return run_site(*learners[i], sites[i]); }));
  out.weights = coord.get();
  for (auto& f : futures) out.sites.push_back(f.get());
  return out;
}

struct Region {
  std::string id;
  std::vector<int> sites;  // indices into the learners
  int min_sites = 0;
};

// The same sites through regions: the top coordinator's participants are the regions.
Outcome run_tiered(CoordinatorOptions top, const std::vector<Region>& regions,
                   std::vector<std::unique_ptr<TierLearner>>& learners,
                   const std::vector<SiteOptions>& site_overrides = {}) {
  Outcome out;
  top.on_round_end = [&](const RoundLog& log, const Weights& w) {
    out.logs.push_back(log);
    out.round_weights.push_back(w);
  };
  std::vector<RegionOptions> region_options;
  std::vector<SiteOptions> sites(learners.size());
  for (const Region& r : regions) {
    RegionOptions o;
    o.upstream = site_options(r.id, top.bind_address);
    o.downstream.bind_address = "tcp://127.0.0.1:" + std::to_string(free_port());
    o.downstream.study = kStudy;
    o.downstream.min_sites = r.min_sites;
    o.downstream.rounds = top.rounds;
    o.downstream.join_timeout_s = 10;
    o.downstream.round_timeout_s = 8;
    o.downstream.heartbeat_s = 0.1;
    o.downstream.heartbeat_misses = 3;
    for (int i : r.sites) {
      o.downstream.expected_sites.push_back(site_name(i));
      sites[i] = site_overrides.size() > static_cast<size_t>(i) && !site_overrides[i].site_id.empty()
                     ? site_overrides[i]
                     : site_options(site_name(i), o.downstream.bind_address);
      sites[i].coordinator_address = o.downstream.bind_address;
    }
    region_options.push_back(o);
  }
  auto coord = std::async(std::launch::async, [&] { return run_coordinator(top); });
  std::vector<std::future<Status>> region_futures, site_futures;
  for (size_t r = 0; r < region_options.size(); ++r)
    region_futures.push_back(std::async(std::launch::async, [&, r] { return run_region(region_options[r]); }));
  for (size_t i = 0; i < sites.size(); ++i)
    site_futures.push_back(std::async(std::launch::async, [&, i] { return run_site(*learners[i], sites[i]); }));
  out.weights = coord.get();
  for (auto& f : region_futures) out.regions.push_back(f.get());
  for (auto& f : site_futures) out.sites.push_back(f.get());
  return out;
}

std::vector<std::unique_ptr<TierLearner>> make_learners(int n) {
  std::vector<std::unique_ptr<TierLearner>> v;
  for (int i = 0; i < n; ++i) v.push_back(std::make_unique<TierLearner>(i));
  return v;
}

void expect_close(const Weights& a, const Weights& b, double rel) {
  ASSERT_EQ(a.size(), b.size());
  for (size_t t = 0; t < a.size(); ++t) {
    ASSERT_EQ(a[t].name, b[t].name);
    ASSERT_EQ(a[t].data.size(), b[t].data.size());
    for (size_t i = 0; i < a[t].data.size(); ++i)
      EXPECT_NEAR(a[t].data[i], b[t].data[i], rel * std::max(1.0, std::fabs(static_cast<double>(a[t].data[i]))))
          << a[t].name << "[" << i << "]";
  }
}

// FedAvg by hand over the sites in `in_round[r]` for round r + 1 (the learners' step is per value).
Weights hand_fedavg(int rounds, const std::vector<std::vector<int>>& in_round) {
  Weights w = initial_model();
  for (int r = 1; r <= rounds; ++r) {
    for (TensorRecord& t : w)
      for (float& v : t.data) {
        double num = 0, den = 0;
        for (int k : in_round[r - 1]) {
          num += static_cast<double>(TierLearner::examples(k)) * TierLearner::step(v, k, r);
          den += static_cast<double>(TierLearner::examples(k));
        }
        v = static_cast<float>(num / den);
      }
  }
  return w;
}

class RegionalEquivalence : public ::testing::TestWithParam<std::string> {};

// 4 sites in 2 regions give the flat 4-site study's global model, round by round, with the
// study's strategy at the top; the sites see the same settings; each site evaluates once per round.
TEST_P(RegionalEquivalence, FourSitesInTwoRegionsMatchTheFlatStudy) {
  const int rounds = 3;
  const std::vector<std::string> sites = {site_name(0), site_name(1), site_name(2), site_name(3)};
  CoordinatorOptions flat_options = coordinator_options(sites, rounds);
  flat_options.strategy.name = GetParam();
  flat_options.strategy.prox_mu = 0.3;
  auto flat_learners = make_learners(4);
  Outcome flat = run_flat(flat_options, flat_learners);
  ASSERT_TRUE(flat.weights.ok()) << flat.weights.status().to_string();

  CoordinatorOptions top = coordinator_options({"north", "south"}, rounds);
  top.strategy = flat_options.strategy;
  auto learners = make_learners(4);
  Outcome tiered = run_tiered(top, {{"north", {0, 2}}, {"south", {1, 3}}}, learners);
  ASSERT_TRUE(tiered.weights.ok()) << tiered.weights.status().to_string();
  for (const Status& s : tiered.regions) EXPECT_TRUE(s.ok()) << s.to_string();
  for (const Status& s : tiered.sites) EXPECT_TRUE(s.ok()) << s.to_string();

  ASSERT_EQ(tiered.round_weights.size(), flat.round_weights.size());
  for (size_t r = 0; r < flat.round_weights.size(); ++r) {
    SCOPED_TRACE("round " + std::to_string(r + 1));
    expect_close(tiered.round_weights[r], flat.round_weights[r], 1e-5);
    // The regions' pooled evaluations add up to the flat pooled histogram and loss.
    EXPECT_EQ(tiered.logs[r].pooled_histogram.neg, flat.logs[r].pooled_histogram.neg);
    EXPECT_EQ(tiered.logs[r].pooled_histogram.pos, flat.logs[r].pooled_histogram.pos);
    EXPECT_EQ(tiered.logs[r].global_eval_examples, flat.logs[r].global_eval_examples);
    EXPECT_NEAR(tiered.logs[r].global_eval_loss, flat.logs[r].global_eval_loss, 1e-12);
    EXPECT_DOUBLE_EQ(tiered.logs[r].global_eval.auc, flat.logs[r].global_eval.auc);
    ASSERT_EQ(tiered.logs[r].sites.size(), 2u);
    EXPECT_EQ(tiered.logs[r].sites[0].site_id, "north");
    if (r < static_cast<size_t>(rounds)) {
      EXPECT_TRUE(tiered.logs[r].sites[0].ok);
      EXPECT_EQ(tiered.logs[r].sites[0].num_examples, TierLearner::examples(0) + TierLearner::examples(2));
      EXPECT_EQ(tiered.logs[r].sites[1].num_examples, TierLearner::examples(1) + TierLearner::examples(3));
    }
  }
  expect_close(*tiered.weights, *flat.weights, 1e-5);
  if (GetParam() == "fedavg") expect_close(*tiered.weights, hand_fedavg(rounds, {{0, 1, 2, 3}, {0, 1, 2, 3}, {0, 1, 2, 3}}), 1e-5);

  for (int i = 0; i < 4; ++i) {
    SCOPED_TRACE(site_name(i));
    // Once per round (the model received) and once at the end: never twice per round.
    EXPECT_EQ(learners[i]->evaluations(), rounds + 1);
    const auto seen = learners[i]->seen(), seen_flat = flat_learners[i]->seen();
    ASSERT_EQ(seen.size(), seen_flat.size());
    for (size_t r = 0; r < seen.size(); ++r) {
      EXPECT_EQ(seen[r].round, seen_flat[r].round);
      EXPECT_EQ(seen[r].seed, seen_flat[r].seed);
      EXPECT_EQ(seen[r].local_epochs, 2u);
      EXPECT_DOUBLE_EQ(seen[r].lr, 0.02);
      EXPECT_DOUBLE_EQ(seen[r].prox_mu, seen_flat[r].prox_mu);  // FedProx's mu passes through
      EXPECT_EQ(seen[r].keep_local_norm, seen_flat[r].keep_local_norm);  // and FedBN's flag
      EXPECT_FALSE(seen[r].secure_aggregation);
    }
    if (GetParam() == "fedprox") {
      ASSERT_FALSE(seen.empty());
      EXPECT_DOUBLE_EQ(seen[0].prox_mu, 0.3);
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Strategies, RegionalEquivalence, ::testing::Values("fedavg", "fedadam", "fedprox", "fedbn"));

// A site of a region stops answering after round 1 (as if killed): the region drops it after its
// missed heartbeats and closes rounds 2 and 3 with the other site (its min_sites: 1).
TEST(Regional, SiteVanishingInsideARegionLeavesTheRoundToTheRest) {
  const int rounds = 3;
  CoordinatorOptions top = coordinator_options({"north", "south"}, rounds);
  auto learners = make_learners(4);
  std::vector<SiteOptions> overrides(4);
  overrides[2] = site_options(site_name(2), "");
  overrides[2].vanish_after = static_cast<uint16_t>(wire::MessageType::kFitRes);
  Outcome out = run_tiered(top, {{"north", {0, 2}, 1}, {"south", {1, 3}}}, learners, overrides);
  ASSERT_TRUE(out.weights.ok()) << out.weights.status().to_string();
  for (const Status& s : out.regions) EXPECT_TRUE(s.ok()) << s.to_string();
  EXPECT_FALSE(out.sites[2].ok());  // it vanished
  ASSERT_EQ(out.logs.size(), static_cast<size_t>(rounds + 1));
  EXPECT_EQ(out.logs[0].sites[0].num_examples, TierLearner::examples(0) + TierLearner::examples(2));
  for (int r = 1; r < rounds; ++r) {
    SCOPED_TRACE("round " + std::to_string(r + 1));
    EXPECT_TRUE(out.logs[r].sites[0].ok);
    EXPECT_EQ(out.logs[r].sites[0].num_examples, TierLearner::examples(0));
    EXPECT_TRUE(out.logs[r].sites[1].ok);
  }
  expect_close(*out.weights, hand_fedavg(rounds, {{0, 1, 2, 3}, {0, 1, 3}, {0, 1, 3}}), 1e-5);
}

// Every site of a region fails from round 2 on: the region answers with a status code (kIoError,
// no text), the top coordinator goes on with the other region (its min_sites: 1), and the region
// still takes part in the final evaluation.
TEST(Regional, RegionWhoseSitesAllFailReportsAFailureCode) {
  const int rounds = 3;
  CoordinatorOptions top = coordinator_options({"north", "south"}, rounds);
  top.min_sites = 1;
  auto learners = make_learners(4);
  learners[1]->fail_from_round = 2;
  learners[3]->fail_from_round = 2;
  Outcome out = run_tiered(top, {{"north", {0, 2}}, {"south", {1, 3}, 1}}, learners);
  ASSERT_TRUE(out.weights.ok()) << out.weights.status().to_string();
  for (const Status& s : out.regions) EXPECT_TRUE(s.ok()) << s.to_string();
  ASSERT_EQ(out.logs.size(), static_cast<size_t>(rounds + 1));
  EXPECT_TRUE(out.logs[0].sites[1].ok);
  for (int r = 1; r < rounds; ++r) {
    SCOPED_TRACE("round " + std::to_string(r + 1));
    EXPECT_TRUE(out.logs[r].sites[0].ok);
    EXPECT_FALSE(out.logs[r].sites[1].ok);
    EXPECT_EQ(out.logs[r].sites[1].error_code, static_cast<int>(StatusCode::kIoError));
  }
  expect_close(*out.weights, hand_fedavg(rounds, {{0, 1, 2, 3}, {0, 2}, {0, 2}}), 1e-5);
  EXPECT_TRUE(out.logs[rounds].sites[1].ok);  // the final evaluation
}

// ---- refusals

RegionOptions valid_region() {
  RegionOptions o;
  o.upstream = site_options("north", "tcp://127.0.0.1:1");
  o.downstream.bind_address = "tcp://127.0.0.1:2";
  o.downstream.study = kStudy;
  o.downstream.expected_sites = {"site-a", "site-b"};
  return o;
}

TEST(Regional, RefusesWhatCannotPassThroughARegion) {
  EXPECT_TRUE(validate_region_options(valid_region()).ok());
  auto refused = [](const RegionOptions& o, const std::string& why) {
    Status st = validate_region_options(o);
    EXPECT_EQ(st.code(), StatusCode::kInvalidArgument) << why;
    EXPECT_NE(st.message().find(why), std::string::npos) << st.message();
    // run_region refuses the same before it opens a socket.
    EXPECT_EQ(run_region(o).code(), StatusCode::kInvalidArgument);
  };
  RegionOptions o = valid_region();
  o.downstream.secure_aggregation.enabled = true;
  refused(o, "secure aggregation cannot pass through a regional aggregator");
  o = valid_region();
  o.upstream.secure_aggregation = true;
  refused(o, "secure aggregation");
  o = valid_region();
  o.downstream.strategy.name = "median";
  refused(o, "plain fedavg");
  o = valid_region();
  o.downstream.strategy.max_update_norm = 1;
  refused(o, "plain fedavg");
  o = valid_region();
  o.downstream.bind_address = o.upstream.coordinator_address;
  refused(o, "an address of its own");
  o = valid_region();
  o.downstream.study = "other";
  refused(o, "must be the same");
  o = valid_region();
  o.downstream.expected_sites.push_back("north");
  refused(o, "its own sites");
  o = valid_region();
  o.downstream.state_dir = "/tmp/x";
  refused(o, "state_dir");
}

// A top coordinator that asks for secure aggregation gets a failure code from each region, never
// an update: the region would otherwise unmask its sites' inputs.
TEST(Regional, RegionAnswersSecureAggregationWithAFailureCode) {
  CoordinatorOptions top = coordinator_options({"north", "south"}, 1);
  top.secure_aggregation.enabled = true;
  std::vector<std::string> refusals;
  std::mutex mu;
  top.on_refused = [&](const std::string& peer, const std::string& why) {
    std::lock_guard<std::mutex> lock(mu);
    refusals.push_back(peer + ": " + why);
  };
  auto learners = make_learners(4);
  Outcome out = run_tiered(top, {{"north", {0, 2}}, {"south", {1, 3}}}, learners);
  ASSERT_FALSE(out.weights.ok());
  EXPECT_NE(out.weights.status().message().find("0 of 2 sites succeeded"), std::string::npos)
      << out.weights.status().to_string();
  for (int i = 0; i < 4; ++i) EXPECT_TRUE(learners[i]->seen().empty()) << "site " << i << " trained";
}

StatusOr<StudyConfig> parse(const std::string& federation_extra, const std::string& top_extra = "") {
  return parse_study_config(
      "name: tiered\nsites: [a, b, c, d]\n" + top_extra +
          "federation:\n"
          "  regions:\n"
          "    north: {address: 'tcp://127.0.0.1:5701', sites: [a, c], min_sites: 1}\n"
          "    south: {address: 'tcp://127.0.0.1:5702', sites: [b, d]}\n" +
          federation_extra,
      "study.yaml");
}

void expect_config_error(const StatusOr<StudyConfig>& c, const std::string& key, const std::string& why) {
  ASSERT_FALSE(c.ok()) << "accepted; expected an error naming " << key;
  EXPECT_NE(c.status().message().find("study.yaml: " + key + ": "), std::string::npos) << c.status().message();
  EXPECT_NE(c.status().message().find(why), std::string::npos) << c.status().message();
}

TEST(RegionalConfig, ParsesRegionsAndPrintsThemBack) {
  auto c = parse("");
  ASSERT_TRUE(c.ok()) << c.status().to_string();
  ASSERT_EQ(c->federation.regions.size(), 2u);
  EXPECT_EQ(c->federation.regions[0].id, "north");
  EXPECT_EQ(c->federation.regions[0].sites, (std::vector<std::string>{"a", "c"}));
  EXPECT_EQ(c->federation.regions[0].min_sites, 1);
  EXPECT_EQ(c->federation.regions[1].address, "tcp://127.0.0.1:5702");
  EXPECT_EQ(c->coordinator_participants(), (std::vector<std::string>{"north", "south"}));
  ASSERT_NE(c->region_of_site("d"), nullptr);
  EXPECT_EQ(c->region_of_site("d")->id, "south");
  auto again = parse_study_config(to_yaml(*c), "again.yaml");
  ASSERT_TRUE(again.ok()) << again.status().to_string();
  EXPECT_EQ(to_yaml(*again), to_yaml(*c));
  // Without regions nothing about them is printed (configs print as before).
  auto flat = parse_study_config("name: flat\nsites: [a, b]\n", "flat.yaml");
  ASSERT_TRUE(flat.ok());
  EXPECT_EQ(to_yaml(*flat).find("regions"), std::string::npos);
  EXPECT_EQ(flat->coordinator_participants(), (std::vector<std::string>{"a", "b"}));
}

TEST(RegionalConfig, RefusesWhatCannotWorkThroughATier) {
  expect_config_error(parse("", "privacy: {secure_aggregation: true}\n"), "federation.regions",
                      "secure_aggregation");
  expect_config_error(parse("  strategy: median\n"), "federation.strategy", "one mean per region");
  expect_config_error(parse("  strategy: trimmed_mean\n"), "federation.strategy", "one mean per region");
  expect_config_error(parse("  max_update_norm: 2\n"), "federation.max_update_norm", "region's mean update");
  expect_config_error(parse("  min_sites: 3\n"), "federation.min_sites", "number of regions");
  // FedProx, FedBN and server optimisers pass through.
  for (const char* s : {"fedprox", "fedbn", "fedavgm", "fedadam", "fedyogi", "fedadagrad"})
    EXPECT_TRUE(parse(std::string("  strategy: ") + s + "\n").ok()) << s;
}

TEST(RegionalConfig, RefusesInconsistentRegions) {
  auto with = [](const std::string& regions) {
    return parse_study_config("name: t\nsites: [a, b, c]\nfederation:\n  regions:\n" + regions, "study.yaml");
  };
  expect_config_error(with("    r1: {address: 'tcp://h:1', sites: [a, b]}\n"), "federation.regions", "'c' is in no region");
  expect_config_error(with("    r1: {address: 'tcp://h:1', sites: [a, b]}\n    r2: {address: 'tcp://h:2', sites: [b, c]}\n"),
                      "federation.regions.r2.sites", "already in region 'r1'");
  expect_config_error(with("    r1: {address: 'tcp://h:1', sites: [a, b, c, x]}\n"), "federation.regions.r1.sites",
                      "'x' is not one of the study's sites");
  expect_config_error(with("    a: {address: 'tcp://h:1', sites: [a, b, c]}\n"), "federation.regions.a",
                      "also a site's name");
  expect_config_error(with("    r1: {address: 'h:1', sites: [a, b, c]}\n"), "federation.regions.r1.address",
                      "ZeroMQ endpoint");
  expect_config_error(with("    r1: {address: 'tcp://h:1', sites: [a]}\n    r2: {address: 'tcp://h:1', sites: [b, c]}\n"),
                      "federation.regions.r2.address", "already");
  expect_config_error(with("    r1: {address: 'tcp://h:1', sites: [a, b, c], min_sites: 4}\n"),
                      "federation.regions.r1.min_sites", "0..the region's 3 sites");
  expect_config_error(with("    r1: {address: 'tcp://h:1', sites: [a, b, c], deadline: 4}\n"),
                      "federation.regions.r1.deadline", "unknown key");
  expect_config_error(with("    'bad id': {address: 'tcp://h:1', sites: [a, b, c]}\n"), "federation.regions.bad id",
                      "must match");
  expect_config_error(parse_study_config("name: t\nsites: [a]\nfederation: {regions: [a]}\n", "study.yaml"),
                      "federation.regions", "expected a mapping");
}

}  // namespace
}  // namespace fedrad::fed
