#include "common/metrics.h"

#include <gtest/gtest.h>

namespace fedrad {
namespace {

TEST(RocAuc, HandComputedWithTies) {
  // Positives {0.9, 0.4, 0.6}, negatives {0.1, 0.4, 0.7}: of the 9 (pos, neg) pairs,
  // 0.9 beats all 3; 0.6 beats 0.1 and 0.4; 0.4 beats 0.1 and ties 0.4 (1/2). U = 3 + 2 + 1.5.
  std::vector<float> s = {0.9f, 0.1f, 0.4f, 0.4f, 0.6f, 0.7f};
  std::vector<int> y = {1, 0, 1, 0, 1, 0};
  EXPECT_NEAR(roc_auc(s, y), 6.5 / 9.0, 1e-12);
}

TEST(RocAuc, PerfectInvertedAndDegenerate) {
  EXPECT_DOUBLE_EQ(roc_auc({0.1f, 0.2f, 0.8f, 0.9f}, {0, 0, 1, 1}), 1.0);
  EXPECT_DOUBLE_EQ(roc_auc({0.9f, 0.8f, 0.2f, 0.1f}, {0, 0, 1, 1}), 0.0);
  EXPECT_DOUBLE_EQ(roc_auc({0.3f, 0.7f}, {1, 1}), 0.5);  // one class only
}

TEST(BinaryMetrics, AtThreshold) {
  std::vector<float> s = {0.9f, 0.1f, 0.4f, 0.4f, 0.6f, 0.7f};
  std::vector<int> y = {1, 0, 1, 0, 1, 0};
  auto m = binary_metrics(s, y, 0.5);
  // Predicted positive: 0.9 (TP), 0.6 (TP), 0.7 (FP); negative: 0.1 (TN), 0.4 (FN), 0.4 (TN).
  EXPECT_EQ(m.n, 6);
  EXPECT_EQ(m.positives, 3);
  EXPECT_NEAR(m.accuracy, 4.0 / 6, 1e-12);
  EXPECT_NEAR(m.sensitivity, 2.0 / 3, 1e-12);
  EXPECT_NEAR(m.specificity, 2.0 / 3, 1e-12);
}

TEST(Youden, PicksTheSeparatingThreshold) {
  std::vector<float> s = {0.05f, 0.1f, 0.2f, 0.3f, 0.35f, 0.8f};
  std::vector<int> y = {0, 0, 0, 1, 1, 1};
  const double t = youden_threshold(s, y);
  EXPECT_FLOAT_EQ(static_cast<float>(t), 0.3f);
  auto m = binary_metrics(s, y, t);
  EXPECT_DOUBLE_EQ(m.sensitivity, 1.0);
  EXPECT_DOUBLE_EQ(m.specificity, 1.0);
}

TEST(ScoreHistogram, AgreesWithExactMetricsWhenScoresFallInDistinctBins) {
  std::vector<float> s = {0.91f, 0.12f, 0.43f, 0.47f, 0.65f, 0.72f, 0.05f, 0.33f};
  std::vector<int> y = {1, 0, 1, 0, 1, 0, 0, 1};
  auto h = ScoreHistogram::of(s, y, 100);
  EXPECT_NEAR(roc_auc(h), roc_auc(s, y), 1e-12);
  auto hm = binary_metrics(h, 0.5), em = binary_metrics(s, y, 0.5);
  EXPECT_EQ(hm.n, em.n);
  EXPECT_DOUBLE_EQ(hm.accuracy, em.accuracy);
  EXPECT_DOUBLE_EQ(hm.sensitivity, em.sensitivity);
  EXPECT_DOUBLE_EQ(hm.specificity, em.specificity);
}

TEST(ScoreHistogram, MergeEqualsPooledHistogram) {
  std::vector<float> a = {0.2f, 0.8f, 0.6f}, b = {0.1f, 0.9f};
  std::vector<int> ya = {0, 1, 1}, yb = {0, 1};
  auto h = ScoreHistogram::of(a, ya);
  h.merge(ScoreHistogram::of(b, yb));
  std::vector<float> all = {0.2f, 0.8f, 0.6f, 0.1f, 0.9f};
  std::vector<int> yall = {0, 1, 1, 0, 1};
  EXPECT_EQ(h.pos, ScoreHistogram::of(all, yall).pos);
  EXPECT_EQ(h.neg, ScoreHistogram::of(all, yall).neg);
}

}  // namespace
}  // namespace fedrad
