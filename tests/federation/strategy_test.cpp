#include <gtest/gtest.h>

#include <cmath>
#include <limits>

#include "federation/federation.h"

namespace fedrad::fed {
namespace {

Weights model(std::vector<float> values, const std::string& name = "w") {
  return {TensorRecord{name, {static_cast<int64_t>(values.size())}, std::move(values)}};
}

SiteResult result(const std::string& id, Weights w, uint64_t n, bool ok = true) {
  SiteResult r;
  r.site_id = id;
  r.ok = ok;
  r.error_code = ok ? 0 : static_cast<int>(StatusCode::kInternal);
  r.fit.weights = std::move(w);
  r.fit.num_examples = n;
  return r;
}

TEST(WeightedAverage, MatchesHandComputedValues) {
  const Weights a = model({1, 2}), b = model({5, 6});
  auto avg = weighted_average({&a, &b}, {1, 3});
  ASSERT_TRUE(avg.ok()) << avg.status().to_string();
  EXPECT_EQ((*avg)[0].data, (std::vector<float>{4, 5}));
  EXPECT_EQ((*avg)[0].name, "w");
  EXPECT_EQ((*avg)[0].shape, (std::vector<int64_t>{2}));
}

TEST(WeightedAverage, RejectsBadArguments) {
  const Weights a = model({1, 2}), b = model({5, 6}), c = model({1, 2, 3});
  EXPECT_FALSE(weighted_average({}, {}).ok());
  EXPECT_FALSE(weighted_average({&a, &b}, {1}).ok());
  EXPECT_FALSE(weighted_average({&a, &b}, {1, 0}).ok());
  EXPECT_FALSE(weighted_average({&a, &b}, {1, -2}).ok());
  EXPECT_FALSE(weighted_average({&a, &b}, {1, std::nan("")}).ok());
  auto bad = weighted_average({&a, &c}, {1, 1});
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(bad.status().message().find("shape"), std::string::npos);
}

TEST(CheckCompatible, NamesTheFirstMismatch) {
  EXPECT_TRUE(check_compatible(model({1, 2}), model({3, 4})).ok());
  Status st = check_compatible(model({1, 2}, "a"), model({1, 2}, "b"));
  EXPECT_NE(st.message().find("'b'"), std::string::npos);
  st = check_compatible(model({1, 2}), model({1, 2, 3}));
  EXPECT_NE(st.message().find("[3]"), std::string::npos);
  EXPECT_FALSE(check_compatible(model({1}), Weights{}).ok());
}

TEST(NumValuesAndCompression, Basics) {
  Weights w = model({1, 2, 3});
  w.push_back(TensorRecord{"b", {2, 2}, {0, 0, 0, 0}});
  EXPECT_EQ(num_values(w), 7u);
  EXPECT_EQ(num_values({}), 0u);
  EXPECT_EQ(*parse_compression("none"), Compression::kNone);
  EXPECT_EQ(*parse_compression("zstd"), Compression::kZstd);
  auto bad = parse_compression("gzip");
  ASSERT_FALSE(bad.ok());
  EXPECT_EQ(bad.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(bad.status().message().find("gzip"), std::string::npos);
}

TEST(FedAvg, WeightsBySampleCountAndIgnoresFailures) {
  auto s = make_fedavg();
  EXPECT_EQ(s->name(), "fedavg");
  const Weights global = model({0, 0});
  std::vector<SiteResult> results = {
      result("a", model({1, 2}), 1),
      result("b", model({5, 6}), 3),
      result("failed", model({100, 100}), 50, /*ok=*/false),
      result("empty", model({-100, -100}), 0),
  };
  auto avg = s->aggregate(1, global, results);
  ASSERT_TRUE(avg.ok()) << avg.status().to_string();
  EXPECT_EQ((*avg)[0].data, (std::vector<float>{4, 5}));
}

TEST(FedAvg, RefusesNanUpdateNamingTheSiteAndAveragesTheRest) {
  auto s = make_fedavg();
  const Weights global = model({0, 0});
  ASSERT_TRUE(s->begin_round(2, global).ok());
  EXPECT_TRUE(s->accumulate(result("a", model({1, 2}), 1)).ok());
  Status st = s->accumulate(result("site-nan", model({1, std::nanf("")}), 3));
  ASSERT_FALSE(st.ok());
  EXPECT_NE(st.message().find("site-nan"), std::string::npos);
  st = s->accumulate(result("site-inf", model({std::numeric_limits<float>::infinity(), 0}), 3));
  ASSERT_FALSE(st.ok());
  EXPECT_NE(st.message().find("site-inf"), std::string::npos);
  auto avg = s->finish_round();
  ASSERT_TRUE(avg.ok()) << avg.status().to_string();
  EXPECT_EQ((*avg)[0].data, (std::vector<float>{1, 2}));
  // Only poisoned updates: nothing usable, the round's aggregation fails (the caller keeps the old model).
  auto none = s->aggregate(3, global, {result("site-nan", model({std::nanf(""), 0}), 3)});
  ASSERT_FALSE(none.ok());
  EXPECT_NE(none.status().message().find("no usable"), std::string::npos);
}

TEST(FedAvg, IgnoresNanFromFailedSite) {
  auto s = make_fedavg();
  std::vector<SiteResult> results = {result("a", model({1, 2}), 1),
                                     result("b", model({std::nanf(""), 0}), 3, false)};
  auto avg = s->aggregate(1, model({0, 0}), results);
  ASSERT_TRUE(avg.ok());
  EXPECT_EQ((*avg)[0].data, (std::vector<float>{1, 2}));
}

TEST(FedAvg, RefusesIncompatibleShapesAndFailsWithoutResults) {
  auto s = make_fedavg();
  const Weights global = model({0, 0});
  ASSERT_TRUE(s->begin_round(1, global).ok());
  Status st = s->accumulate(result("wide", model({1, 2, 3}), 1));
  ASSERT_FALSE(st.ok());
  EXPECT_NE(st.message().find("wide"), std::string::npos);
  EXPECT_TRUE(s->accumulate(result("a", model({1, 2}), 1)).ok());
  ASSERT_TRUE(s->finish_round().ok());
  EXPECT_FALSE(s->aggregate(1, global, {result("a", model({1, 2}), 1, false)}).ok());
  EXPECT_FALSE(s->aggregate(1, global, {}).ok());
  EXPECT_FALSE(s->accumulate(result("a", model({1, 2}), 1)).ok()) << "accumulate outside a round";
}

StrategyConfig config(const std::string& name) {
  StrategyConfig c;
  c.name = name;
  return c;
}

std::unique_ptr<Strategy> make(const StrategyConfig& c) {
  auto s = make_strategy(c);
  EXPECT_TRUE(s.ok()) << s.status().to_string();
  return s.ok() ? std::move(s).value() : nullptr;
}

float run(Strategy& s, uint32_t round, float global, const std::vector<std::pair<float, uint64_t>>& sites) {
  std::vector<SiteResult> results;
  for (size_t i = 0; i < sites.size(); ++i)
    results.push_back(result("s" + std::to_string(i), model({sites[i].first}), sites[i].second));
  auto next = s.aggregate(round, model({global}), results);
  EXPECT_TRUE(next.ok()) << next.status().to_string();
  return next.ok() ? (*next)[0].data[0] : std::nanf("");
}

TEST(ServerMomentum, FollowsHsuEtAl) {
  StrategyConfig c = config("fedavgm");
  c.server_lr = 1.0;
  c.server_momentum = 0.9;
  auto s = make(c);
  // Round 1: delta = mean - global = 1, v = 1, w = 0 + 1.
  EXPECT_FLOAT_EQ(run(*s, 1, 0, {{0.5f, 1}, {1.5f, 1}}), 1.0f);
  // Round 2: delta = 1, v = 0.9 * 1 + 1 = 1.9, w = 1 + 1.9.
  EXPECT_FLOAT_EQ(run(*s, 2, 1, {{2, 1}}), 2.9f);
}

TEST(ServerAdaptive, AdamYogiAdagradFollowReddiEtAl) {
  for (const std::string name : {"fedadam", "fedyogi", "fedadagrad"}) {
    StrategyConfig c = config(name);
    c.server_lr = 0.1;
    c.beta1 = 0.9;
    c.beta2 = 0.99;
    c.tau = 1e-3;
    auto s = make(c);
    // delta = 0.5 (weighted mean of 0 and 2 with weights 3 and 1), from global 0.
    const double delta = 0.5, tau2 = 1e-6;
    const double m = 0.1 * delta;
    double v;
    if (name == "fedadam") v = 0.99 * tau2 + 0.01 * delta * delta;
    else if (name == "fedyogi") v = tau2 + 0.01 * delta * delta;  // sign(tau^2 - delta^2) = -1
    else v = tau2 + delta * delta;
    const double expected = 0.1 * m / (std::sqrt(v) + 1e-3);
    EXPECT_NEAR(run(*s, 1, 0, {{0, 3}, {2, 1}}), expected, 1e-6) << name;
  }
}

TEST(ServerMomentum, NormalisationStatisticsAreAveragedNotOptimised) {
  StrategyConfig c = config("fedavgm");
  c.server_momentum = 0.9;
  auto s = make(c);
  auto site = [](float w, float var) {
    Weights m = model({w}, "bn.weight");
    m.push_back(TensorRecord{"bn.running_var", {1}, {var}});
    return m;
  };
  for (uint32_t round = 1; round <= 3; ++round) {
    // The running variance falls each round; momentum on it would overshoot below zero.
    const float var = 1.0f / static_cast<float>(round * round);
    auto next = s->aggregate(round, site(0, 4.0f), {result("a", site(1, var), 1)});
    ASSERT_TRUE(next.ok());
    EXPECT_FLOAT_EQ((*next)[1].data[0], var) << "round " << round;
  }
}

TEST(ServerAdaptive, StateRoundTripContinuesIdentically) {
  StrategyConfig c = config("fedadam");
  c.server_lr = 0.1;
  auto a = make(c);
  run(*a, 1, 0, {{1, 1}, {2, 1}});
  const Weights state = a->state();
  ASSERT_EQ(state.size(), 2u);  // m and v of the one tensor
  EXPECT_EQ(state[0].name, "m/w");
  EXPECT_EQ(state[1].name, "v/w");
  auto b = make(c);
  ASSERT_TRUE(b->restore_state(state).ok());
  EXPECT_EQ(run(*a, 2, 0.3f, {{1, 1}}), run(*b, 2, 0.3f, {{1, 1}}));
  EXPECT_FALSE(b->restore_state({TensorRecord{"m/w", {1}, {0}}, TensorRecord{"x/w", {1}, {0}}}).ok());
}

TEST(RobustStatistics, MedianAndTrimmedMeanIgnoreOutliersAndSampleCounts) {
  auto median = make(config("median"));
  EXPECT_FALSE(median->streaming());
  EXPECT_FLOAT_EQ(run(*median, 1, 0, {{1, 1}, {5, 1}, {1000, 1000}}), 5.0f);
  EXPECT_FLOAT_EQ(run(*median, 1, 0, {{1, 1}, {3, 1}, {5, 1}, {1000, 1}}), 4.0f);
  StrategyConfig c = config("trimmed_mean");
  c.trim_fraction = 0.2;
  auto trimmed = make(c);
  EXPECT_FLOAT_EQ(run(*trimmed, 1, 0, {{1, 1}, {2, 1}, {3, 1}, {4, 1}, {-1000, 50}}), 2.0f);  // cut 1 at each end: 1, 2, 3
  EXPECT_FLOAT_EQ(run(*trimmed, 1, 0, {{1, 1}, {2, 1}, {3, 1}}), 2.0f);  // 0.2 * 3 < 1: plain mean
}

TEST(UpdateNormBound, ScalesLargeUpdatesDownToTheBound) {
  StrategyConfig c = config("fedavg");
  c.max_update_norm = 1.0;
  auto s = make(c);
  auto next = s->aggregate(1, model({1, 1}), {result("big", model({4, 5}), 1)});  // update (3, 4), norm 5
  ASSERT_TRUE(next.ok());
  EXPECT_NEAR((*next)[0].data[0], 1.6f, 1e-6);
  EXPECT_NEAR((*next)[0].data[1], 1.8f, 1e-6);
  next = s->aggregate(2, model({1, 1}), {result("small", model({1.5f, 1}), 1)});  // norm 0.5: unchanged
  ASSERT_TRUE(next.ok());
  EXPECT_FLOAT_EQ((*next)[0].data[0], 1.5f);
}

TEST(SiteSideStrategies, ProxAndBnAreCarriedInTheRoundSettings) {
  StrategyConfig c = config("fedprox");
  c.prox_mu = 0.05;
  RoundSettings settings;
  make(c)->configure_round(&settings);
  EXPECT_DOUBLE_EQ(settings.prox_mu, 0.05);
  EXPECT_FALSE(settings.keep_local_norm);
  RoundSettings bn;
  make(config("fedbn"))->configure_round(&bn);
  EXPECT_TRUE(bn.keep_local_norm);
  EXPECT_DOUBLE_EQ(bn.prox_mu, 0);
  EXPECT_TRUE(make(config("fedbn"))->streaming());
}

TEST(MakeStrategy, KnowsEachStrategyAndRefusesBadSettings) {
  for (const char* name : {"fedavg", "fedprox", "fedbn", "fedavgm", "fedadam", "fedyogi", "fedadagrad", "median",
                           "trimmed_mean"}) {
    auto s = make_strategy(name);
    ASSERT_TRUE(s.ok()) << name << ": " << s.status().to_string();
    EXPECT_EQ((*s)->name(), name);
  }
  auto bad = make_strategy("krum");
  ASSERT_FALSE(bad.ok());
  EXPECT_EQ(bad.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(bad.status().message().find("fedyogi"), std::string::npos);
  StrategyConfig c = config("trimmed_mean");
  c.trim_fraction = 0.5;
  auto trim = make_strategy(c);
  ASSERT_FALSE(trim.ok());
  EXPECT_NE(trim.status().message().find("trim_fraction"), std::string::npos);
  c = config("fedprox");
  c.prox_mu = 0;
  EXPECT_FALSE(make_strategy(c).ok());
  c = config("fedadam");
  c.tau = -1;
  EXPECT_FALSE(make_strategy(c).ok());
}

}  // namespace
}  // namespace fedrad::fed
