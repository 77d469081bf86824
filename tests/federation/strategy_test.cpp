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

TEST(FedAvg, RejectsNanUpdateNamingTheSite) {
  auto s = make_fedavg();
  const Weights global = model({0, 0});
  std::vector<SiteResult> results = {result("a", model({1, 2}), 1),
                                     result("site-nan", model({1, std::nanf("")}), 3)};
  auto avg = s->aggregate(2, global, results);
  ASSERT_FALSE(avg.ok());
  EXPECT_NE(avg.status().message().find("site-nan"), std::string::npos);
  results[1] = result("site-inf", model({std::numeric_limits<float>::infinity(), 0}), 3);
  avg = s->aggregate(2, global, results);
  ASSERT_FALSE(avg.ok());
  EXPECT_NE(avg.status().message().find("site-inf"), std::string::npos);
}

TEST(FedAvg, IgnoresNanFromFailedSite) {
  auto s = make_fedavg();
  std::vector<SiteResult> results = {result("a", model({1, 2}), 1),
                                     result("b", model({std::nanf(""), 0}), 3, false)};
  auto avg = s->aggregate(1, model({0, 0}), results);
  ASSERT_TRUE(avg.ok());
  EXPECT_EQ((*avg)[0].data, (std::vector<float>{1, 2}));
}

TEST(FedAvg, RejectsIncompatibleShapesAndNoResults) {
  auto s = make_fedavg();
  const Weights global = model({0, 0});
  auto avg = s->aggregate(1, global, {result("a", model({1, 2}), 1), result("wide", model({1, 2, 3}), 1)});
  ASSERT_FALSE(avg.ok());
  EXPECT_NE(avg.status().message().find("wide"), std::string::npos);
  avg = s->aggregate(1, global, {result("a", model({1, 2}), 1, false)});
  ASSERT_FALSE(avg.ok());
  EXPECT_FALSE(s->aggregate(1, global, {}).ok());
}

TEST(MakeStrategy, KnowsFedAvgOnly) {
  auto s = make_strategy("fedavg");
  ASSERT_TRUE(s.ok());
  EXPECT_EQ((*s)->name(), "fedavg");
  auto bad = make_strategy("fedprox");
  ASSERT_FALSE(bad.ok());
  EXPECT_EQ(bad.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(bad.status().message().find("fedavg"), std::string::npos);
}

}  // namespace
}  // namespace fedrad::fed
