// DP-SGD at a site (training/dp_sgd.h): per-sample clipping is exact, batch norm is refused, and
// a noisy run still learns a separable problem.
#include <gtest/gtest.h>

#include <cmath>

#include <torch/torch.h>

#include "common/metrics.h"
#include "training/checkpoint.h"
#include "training/dp_sgd.h"
#include "training/trainer.h"

namespace fedrad::training {
namespace {

StudyConfig dp_config(const std::string& norm) {
  StudyConfig c;
  c.model.width = 4;
  c.model.stages = 1;
  c.model.norm = norm;
  c.data.input_size = 16;
  return c;
}

TEST(DpSgd, RefusesBatchNorm) {
  models::Classifier bn(classifier_options(dp_config("batch")));
  auto st = check_dp_sgd_model(bn);
  EXPECT_FALSE(st.ok());
  EXPECT_NE(st.message().find("group or instance"), std::string::npos) << st.message();
  models::Classifier gn(classifier_options(dp_config("group")));
  EXPECT_TRUE(check_dp_sgd_model(gn).ok());
}

TEST(DpSgd, ClippedSumEqualsBatchGradientWhenNothingIsClipped) {
  torch::manual_seed(1);
  models::Classifier model(classifier_options(dp_config("group")));
  model->eval();  // no dropout: the same function per sample and per batch
  auto x = torch::randn({5, 1, 16, 16});
  auto y = torch::tensor({0.f, 1.f, 1.f, 0.f, 1.f});
  auto sum = clipped_gradient_sum(model, x, y, /*clip=*/1e6);
  model->zero_grad();
  torch::binary_cross_entropy_with_logits(model->forward(x).squeeze(1), y, {}, {}, at::Reduction::Sum).backward();
  auto params = model->parameters();
  for (size_t k = 0; k < params.size(); ++k)
    EXPECT_TRUE(torch::allclose(sum[k], params[k].grad(), 1e-4, 1e-5)) << k;

  // Clipped: the sum of 5 clipped gradients has norm at most 5 C, and each one alone has norm C.
  auto one = clipped_gradient_sum(model, x.slice(0, 0, 1), y.slice(0, 0, 1), /*clip=*/1e-3);
  double sq = 0;
  for (auto& g : one) sq += g.pow(2).sum().item<double>();
  EXPECT_NEAR(std::sqrt(sq), 1e-3, 1e-6);
}

TEST(DpSgd, LearnsASeparableProblemWithNoise) {
  torch::manual_seed(2);
  models::Classifier model(classifier_options(dp_config("group")));
  const int n = 200;
  ImageSet set;
  auto labels = (torch::arange(n) % 2).to(torch::kFloat);
  // A spatial pattern (group norm would remove a plain brightness offset): class 1 is brighter
  // on the left half of the image.
  auto left = torch::zeros({1, 1, 16, 16});
  left.slice(3, 0, 8).fill_(1.0);
  set.images = torch::randn({n, 1, 16, 16}) * 0.3 + labels.view({n, 1, 1, 1}) * left;
  set.labels = labels;
  FitOptions o;
  o.epochs = 3;
  o.batch_size = 20;
  o.lr = 0.01;
  o.augment = false;
  o.seed = 3;
  auto stats = dp_sgd_fit(model, set, o, DpSgdOptions{/*clip=*/1.0, /*noise_multiplier=*/0.8});
  EXPECT_EQ(stats.steps, 30);
  EXPECT_DOUBLE_EQ(stats.sample_rate, 0.1);
  auto p = predict(model, set);
  EXPECT_GT(roc_auc(p.scores, p.labels), 0.9);
}

}  // namespace
}  // namespace fedrad::training
