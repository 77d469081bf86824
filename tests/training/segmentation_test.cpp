#include "training/segmentation.h"

#include <gtest/gtest.h>

#include <filesystem>

#include <torch/torch.h>

#include "imaging/synthetic_volume.h"
#include "tests/test_data.h"
#include "training/checkpoint.h"

namespace fedrad::training {
namespace {

StudyConfig seg_config(const std::string& arch = "unet3d") {
  StudyConfig c;
  c.name = "seg-unit";
  c.task = "segmentation";
  c.sites = {"a"};
  c.model.arch = arch;
  c.model.width = 4;
  c.model.stages = 2;
  c.model.norm = "instance";
  c.segmentation.channels = {"t1", "t1c", "t2", "flair"};
  c.segmentation.labels = {1, 2, 4};
  c.segmentation.brats_regions = true;
  c.segmentation.patch_size = arch == "unet2d" ? std::vector<int>{16, 16, 1} : std::vector<int>{16, 16, 16};
  c.train.lr = 0.01;
  c.train.batch_size = 2;
  c.train.weight_decay = 0;
  c.segmentation.overlap = 0.25;  // fewer windows: CPU time of the tests
  return c;
}

// Synthetic brains with BraTS-style tumours as a SegSet (no files): `n` cases of size^3 voxels.
SegSet synthetic_set(int n, int size, double spacing, uint64_t seed) {
  SegSet set;
  imaging::SegLoadOptions o;
  o.labels = {1, 2, 4};
  for (int i = 0; i < n; ++i) {
    auto s = imaging::synthetic_brain_case(size, spacing, 1.0, 0.05, 0.1, seed + i);
    auto c = imaging::make_seg_case("case-" + std::to_string(i), s.channels, &s.mask, o);
    EXPECT_TRUE(c.ok()) << c.status().to_string();
    set.cases.push_back(std::move(c).value());
  }
  set.index_foreground();
  return set;
}

TEST(UNet, ShapesIn2DAnd3D) {
  torch::manual_seed(0);
  models::UNetOptions o;
  o.in_channels = 4;
  o.out_channels = 4;
  o.width = 4;
  o.depth = 3;
  models::UNet net3(o);
  EXPECT_EQ(net3->forward(torch::randn({2, 4, 8, 16, 12})).sizes(), (std::vector<int64_t>{2, 4, 8, 16, 12}));
  o.dims = 2;
  o.norm = "group";
  models::UNet net2(o);
  EXPECT_EQ(net2->forward(torch::randn({3, 4, 16, 20})).sizes(), (std::vector<int64_t>{3, 4, 16, 20}));
  EXPECT_THROW(net2->forward(torch::randn({1, 4, 18, 20})), std::exception);  // 18 is not a multiple of 4
  // Parameter names the PyTorch definition mirrors.
  auto params = net3->named_parameters();
  EXPECT_TRUE(params.contains("enc.0.conv1.weight"));
  EXPECT_TRUE(params.contains("enc.2.norm2.bias"));
  EXPECT_TRUE(params.contains("up.1.weight"));
  EXPECT_TRUE(params.contains("dec.0.conv2.weight"));
  EXPECT_TRUE(params.contains("head.bias"));
}

TEST(SlidingWindow, StartsCoverTheAxisWithTheRequestedOverlap) {
  EXPECT_EQ(window_starts(32, 32, 0.5), (std::vector<int>{0}));
  EXPECT_EQ(window_starts(20, 32, 0.5), (std::vector<int>{0}));
  EXPECT_EQ(window_starts(64, 32, 0.5), (std::vector<int>{0, 16, 32}));
  EXPECT_EQ(window_starts(70, 32, 0.5), (std::vector<int>{0, 16, 32, 38}));
  EXPECT_EQ(window_starts(64, 32, 0.0), (std::vector<int>{0, 32}));
}

TEST(SlidingWindow, EqualsAWholeVolumePassWhenTheWindowCoversTheVolume) {
  torch::manual_seed(1);
  auto config = seg_config();
  models::UNet net(unet_options(config));
  net->eval();
  torch::NoGradGuard no_grad;
  auto image = torch::randn({4, 16, 16, 16});  // [C, Z, Y, X]
  auto whole = torch::softmax(net->forward(image.unsqueeze(0)), 1)[0];
  SlidingWindowOptions o;
  o.window = {16, 16, 16};
  for (bool gaussian : {true, false}) {
    o.gaussian = gaussian;
    auto blended = sliding_window(image, [&](const torch::Tensor& x) { return torch::softmax(net->forward(x), 1); }, o);
    EXPECT_EQ(blended.sizes(), whole.sizes());
    EXPECT_LT((blended - whole).abs().max().item<float>(), 1e-5f);
  }
}

TEST(SlidingWindow, OverlappingWindowsBlendToTheWholePassOfAPointwiseModel) {
  // A 1x1x1 convolution sees each voxel alone, so every window agrees with the whole pass:
  // blending (Gaussian weights, overlaps, the last window shifted to the edge, padding of a short
  // axis) must give back exactly the whole-volume output.
  torch::manual_seed(2);
  torch::nn::Conv3d point(torch::nn::Conv3dOptions(3, 5, 1));
  torch::NoGradGuard no_grad;
  auto image = torch::randn({3, 21, 37, 30});
  auto whole = point->forward(image.unsqueeze(0))[0];
  SlidingWindowOptions o;
  o.window = {16, 16, 32};  // x y z: z is longer than the volume (padded), x and y need 2..4 windows
  o.overlap = 0.5;
  int calls = 0;
  auto blended = sliding_window(image, [&](const torch::Tensor& x) { ++calls; return point->forward(x); }, o);
  EXPECT_EQ(blended.sizes(), whole.sizes());
  EXPECT_LT((blended - whole).abs().max().item<float>(), 1e-5f);
  EXPECT_GT(calls, 1);
}

TEST(SegLoss, DiceCeIsLowForTheTruthAndHighForItsOpposite) {
  auto target = torch::randint(0, 3, {2, 4, 4, 4}, torch::kInt64);
  auto onehot = torch::one_hot(target, 3).movedim(-1, 1).to(torch::kFloat32);
  const double good = dice_ce_loss(onehot * 20, target).item<double>();
  const double bad = dice_ce_loss((1 - onehot) * 20, target).item<double>();
  EXPECT_LT(good, 0.01);
  EXPECT_GT(bad, 1.9);  // Dice term ~1 plus a large cross-entropy
}

TEST(SegPatches, ForegroundBiasedSamplingFindsTheLesion) {
  auto set = synthetic_set(2, 32, 3.75, 5);
  std::mt19937_64 rng(1);
  auto fg = sample_patches(set, 16, {8, 8, 8}, /*fg_fraction=*/1.0, rng);
  EXPECT_EQ(fg.image.sizes(), (std::vector<int64_t>{16, 4, 8, 8, 8}));
  for (int i = 0; i < 16; ++i) EXPECT_GT(fg.target[i].gt(0).sum().item<int64_t>(), 0) << i;
  // A patch larger than the volume is padded with background.
  auto big = sample_patches(set, 1, {64, 8, 8}, 0.0, rng);
  EXPECT_EQ(big.image.size(4), 64);
  EXPECT_EQ(big.image[0].slice(3, set.cases[0].size[0], 64).abs().sum().item<float>(), 0.0f);
}

// The acceptance test of issue 5's training path: a short run on a few small synthetic brains
// learns the tumour (whole-tumour Dice on unseen cases above a set bar).
TEST(SegTraining, AShortRunLearnsASyntheticLesion) {
  torch::manual_seed(3);
  set_threads(2);
  auto config = seg_config();
  auto train = synthetic_set(6, 32, 3.75, 100);
  auto val = synthetic_set(3, 32, 3.75, 200);
  models::UNet net(unet_options(config));
  const auto before = evaluate_seg(net, val, config);
  auto options = seg_fit_options_from(config, /*epochs=*/12, /*seed=*/1);
  options.patches_per_case = 4;
  options.fit.augment = false;
  auto stats = fit_seg(net, train, options);
  const auto after = evaluate_seg(net, val, config);
  ASSERT_EQ(after.sums.cases, 3u);
  const double wt = after.sums.mean_dice()[3];
  std::printf("loss %.3f; WT Dice %.3f -> %.3f; inference %.3f s per case\n", stats.loss, before.sums.mean_dice()[3],
              wt, after.seconds_per_case);
  EXPECT_GT(wt, 0.6);
  EXPECT_GT(wt, before.sums.mean_dice()[3] + 0.3);
}

TEST(SegTraining, TwoDimensionalUNetTrainsOnSlices) {
  torch::manual_seed(4);
  set_threads(2);
  auto config = seg_config("unet2d");
  auto train = synthetic_set(4, 32, 3.75, 300);
  models::UNet net(unet_options(config));
  auto options = seg_fit_options_from(config, 2, 1);
  auto stats = fit_seg(net, train, options);
  EXPECT_TRUE(std::isfinite(stats.loss));
  auto e = evaluate_seg(net, train, config);
  EXPECT_EQ(e.sums.cases, 4u);
  EXPECT_EQ(e.sums.dice_sum.size(), 6u);  // 3 labels + WT, TC, ET
}

TEST(SegCheckpoint, SavedUNetReloadsWithItsArchitecture) {
  torch::manual_seed(5);
  auto config = seg_config();
  config.model.width = 6;
  models::UNet net(unet_options(config));
  const std::string path = testing::temp_dir("seg-ckpt") + "/m.pt";
  ASSERT_TRUE(save_model(path, *net, config, ModelMeta{}).ok());
  auto loaded = load_model(path);
  ASSERT_TRUE(loaded.ok()) << loaded.status().to_string();
  ASSERT_TRUE(loaded->unet);
  EXPECT_FALSE(loaded->model);
  EXPECT_EQ(loaded->unet->options().width, 6);
  EXPECT_EQ(loaded->unet->options().in_channels, 4);
  EXPECT_EQ(loaded->unet->options().out_channels, 4);
  torch::NoGradGuard no_grad;
  net->eval();
  auto x = torch::randn({1, 4, 16, 16, 16});
  EXPECT_TRUE(torch::allclose(net->forward(x), loaded->unet->forward(x)));
}

TEST(SegLearner, EvaluatesAndFitsThroughTheFederationInterface) {
  torch::manual_seed(6);
  set_threads(2);
  auto config = seg_config();
  SegLearner learner(config, synthetic_set(2, 32, 3.75, 400), synthetic_set(1, 32, 3.75, 500), 1);
  EXPECT_EQ(learner.num_train_examples(), 2u);
  models::UNet net(unet_options(config));
  const auto global = to_weights(*net);
  auto eval = learner.evaluate(global);
  ASSERT_TRUE(eval.ok()) << eval.status().to_string();
  EXPECT_EQ(eval->seg.cases, 1u);
  EXPECT_EQ(eval->seg.dice_sum.size(), 6u);
  EXPECT_TRUE(eval->histogram.neg.empty());  // no classification scores
  fed::RoundSettings settings;
  settings.round = 1;
  settings.batch_size = 2;
  settings.lr = 0.01;
  auto fit = learner.fit(global, settings);
  ASSERT_TRUE(fit.ok()) << fit.status().to_string();
  EXPECT_EQ(fit->num_examples, 2u);
  EXPECT_TRUE(fed::check_compatible(global, fit->weights).ok());
  // Weights of the wrong architecture fail as a Status, not an exception.
  config.model.width = 5;
  models::UNet other(unet_options(config));
  EXPECT_FALSE(learner.evaluate(to_weights(*other)).ok());
}

// Two fits from the same global weights with the same round settings: a site that restarts its
// optimiser each round repeats itself exactly; one that keeps its Adam moments
// (train.keep_optimizer_state) does not, since the second fit starts from the first one's moments.
TEST(SegLearner, KeepsItsOptimiserStateAcrossRoundsWhenAsked) {
  set_threads(1);
  auto config = seg_config();
  config.segmentation.patches_per_case = 2;
  auto train = synthetic_set(2, 32, 3.75, 600);
  torch::manual_seed(7);
  models::UNet net(unet_options(config));
  const auto global = to_weights(*net);
  fed::RoundSettings settings;
  settings.round = 1;
  settings.batch_size = 2;
  settings.lr = 0.01;
  settings.seed = 3;
  auto max_difference = [](const fed::Weights& a, const fed::Weights& b) {
    double d = 0;
    for (size_t t = 0; t < a.size(); ++t)
      for (size_t i = 0; i < a[t].data.size(); ++i) d = std::max(d, std::abs(double(a[t].data[i]) - b[t].data[i]));
    return d;
  };
  for (bool keep : {false, true}) {
    SCOPED_TRACE(keep ? "keep_optimizer_state" : "fresh optimiser per round");
    config.train.keep_optimizer_state = keep;
    SegLearner learner(config, train, SegSet{}, 0);
    auto first = learner.fit(global, settings);
    ASSERT_TRUE(first.ok()) << first.status().to_string();
    auto second = learner.fit(global, settings);
    ASSERT_TRUE(second.ok()) << second.status().to_string();
    EXPECT_GT(max_difference(first->weights, global), 1e-3);  // it trained
    if (keep)
      EXPECT_GT(max_difference(first->weights, second->weights), 1e-4);
    else
      EXPECT_EQ(max_difference(first->weights, second->weights), 0.0);
  }
}

// FedBN (the strategy sets keep_local_norm): the site trains and evaluates with its own
// normalisation tensors, whatever the global model says for them.
TEST(SegLearner, FedBnKeepsTheSitesNormalisationTensors) {
  set_threads(1);
  auto config = seg_config();
  config.segmentation.patches_per_case = 2;
  torch::manual_seed(8);
  models::UNet net(unet_options(config));
  const auto names = norm_tensor_names(*net);
  ASSERT_FALSE(names.empty());
  SegLearner learner(config, synthetic_set(2, 32, 3.75, 700), synthetic_set(1, 32, 3.75, 800), 0);
  fed::RoundSettings settings;
  settings.round = 1;
  settings.batch_size = 2;
  settings.lr = 0.01;
  settings.keep_local_norm = true;
  auto first = learner.fit(to_weights(*net), settings);
  ASSERT_TRUE(first.ok()) << first.status().to_string();
  // A global model whose normalisation tensors are nonsense: the site must not use them.
  fed::Weights odd = first->weights;
  for (auto& t : odd)
    if (names.count(t.name)) std::fill(t.data.begin(), t.data.end(), 100.0f);
  auto own = learner.evaluate(first->weights);
  auto with_odd = learner.evaluate(odd);
  ASSERT_TRUE(own.ok() && with_odd.ok());
  EXPECT_DOUBLE_EQ(with_odd->loss, own->loss);
  settings.round = 2;
  settings.lr = 1e-9;  // (almost) no training: the result shows what the fit started from
  auto second = learner.fit(odd, settings);
  ASSERT_TRUE(second.ok()) << second.status().to_string();
  for (size_t t = 0; t < second->weights.size(); ++t) {
    if (!names.count(second->weights[t].name)) continue;
    for (size_t i = 0; i < second->weights[t].data.size(); ++i)
      ASSERT_NEAR(second->weights[t].data[i], first->weights[t].data[i], 1e-4) << second->weights[t].name;
  }
}

}  // namespace
}  // namespace fedrad::training
