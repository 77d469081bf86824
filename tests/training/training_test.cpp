#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <fstream>

#include <torch/torch.h>

#include "common/metrics.h"
#include "imaging/synthetic.h"
#include "tests/test_data.h"
#include "training/checkpoint.h"
#include "training/dataset.h"
#include "training/learner.h"
#include "training/trainer.h"

namespace fedrad::training {
namespace {

StudyConfig small_config() {
  StudyConfig c;
  c.name = "unit";
  c.model.width = 8;
  c.model.stages = 2;
  c.data.input_size = 28;
  c.train.batch_size = 32;
  c.train.lr = 0.003;
  c.sites = {"a"};
  return c;
}

// What a coordinator sends a site of small_config() for round 1: one local epoch, batches of 16.
fed::RoundSettings first_round() {
  fed::RoundSettings rs;
  rs.round = 1;
  rs.local_epochs = 1;
  rs.batch_size = 16;
  rs.lr = 0.003;
  return rs;
}

// Normal vs pneumonia synthetic images, preprocessed as real data would be.
ImageSet synthetic_set(int per_class, int size, uint64_t seed) {
  DataConfig data;
  data.input_size = size;
  const int n = 2 * per_class;
  ImageSet set;
  set.images = torch::empty({n, 1, size, size});
  std::vector<float> labels;
  for (int i = 0; i < n; ++i) {
    const bool pneumonia = i % 2 == 1;
    auto px = imaging::synthetic_chest_xray(48, pneumonia, 8, 1.0, 0.05, seed + i);
    std::vector<float> f(px.begin(), px.end());
    preprocess_image(f, 48, 48, data, set.images[i].data_ptr<float>());
    labels.push_back(pneumonia ? 1.0f : 0.0f);
    set.files.push_back("synthetic-" + std::to_string(i));
  }
  set.labels = torch::tensor(labels);
  return set;
}

TEST(Preprocess, ResizesAndNormalisesToMinusOneOne) {
  DataConfig data;
  data.input_size = 4;
  std::vector<float> px = {0, 100, 200, 300};  // 2x2
  std::vector<float> out(16);
  preprocess_image(px, 2, 2, data, out.data());
  EXPECT_FLOAT_EQ(*std::min_element(out.begin(), out.end()), -1.0f);
  EXPECT_FLOAT_EQ(*std::max_element(out.begin(), out.end()), 1.0f);
  EXPECT_LT(out[0], out[3]);   // brighter to the right
  EXPECT_LT(out[0], out[12]);  // and downwards
}

TEST(Dataset, LoadsARealSiteSplit) {
  DataConfig data;
  data.input_size = 28;
  auto set = load_image_set(testing::pneumonia_site("site-c", "val"), data, 2);  // RLE, MONOCHROME1
  ASSERT_TRUE(set.ok()) << set.status().to_string();
  EXPECT_EQ(set->size(), 98);
  EXPECT_TRUE(set->unreadable.empty());
  EXPECT_EQ(set->images.sizes(), (std::vector<int64_t>{98, 1, 28, 28}));
  EXPECT_LE(set->images.max().item<float>(), 1.0f);
  EXPECT_GE(set->images.min().item<float>(), -1.0f);
  EXPECT_EQ(set->positives(), set->index.label_counts["PNEUMONIA"]);
}

TEST(Dataset, UnreadableFilesAreListedAndSkipped) {
  const std::string dir = testing::temp_dir("unreadable");
  namespace fs = std::filesystem;
  const std::string src = testing::pneumonia_site("site-a", "val");
  fs::copy_file(src + "/P00000/IM00000.dcm", dir + "/good.dcm");
  { std::ofstream(dir + "/bad.dcm") << "this is not DICOM"; }
  { std::ofstream(dir + "/labels.csv") << "file,label\ngood.dcm,NORMAL\nbad.dcm,PNEUMONIA\n"; }
  DataConfig data;
  auto set = load_image_set(dir, data, 1);
  ASSERT_TRUE(set.ok()) << set.status().to_string();
  EXPECT_EQ(set->size(), 1);
  ASSERT_EQ(set->unreadable.size(), 1u);
  EXPECT_NE(set->unreadable[0].reason.find("bad.dcm"), std::string::npos) << set->unreadable[0].reason;
}

TEST(Schedule, CosineDecaysOverTheWholeStudy) {
  FitOptions o;
  o.lr = 0.01;
  EXPECT_DOUBLE_EQ(scheduled_lr(o, 7), 0.01);  // constant without a schedule
  o.schedule_epochs = 4;
  EXPECT_DOUBLE_EQ(scheduled_lr(o, 0), 0.01);
  EXPECT_NEAR(scheduled_lr(o, 2), 0.005, 1e-12);  // halfway
  o.schedule_offset = 3;                            // a federated round that runs epoch 3 of 4
  EXPECT_NEAR(scheduled_lr(o, 0), 0.01 * 0.5 * (1 + std::cos(3.14159265358979323846 * 0.75)), 1e-12);
  auto c = small_config();
  c.rounds = 5;
  c.train.lr_schedule = "cosine";
  EXPECT_EQ(fit_options_from(c, 5, 0).schedule_epochs, 5);
}

TEST(Augment, SameSeedSameOutputAndShapeKept) {
  auto x = torch::randn({4, 1, 28, 28});
  auto g1 = at::detail::createCPUGenerator(5), g2 = at::detail::createCPUGenerator(5);
  auto a = augment(x, true, g1), b = augment(x, true, g2);
  EXPECT_EQ(a.sizes(), x.sizes());
  EXPECT_TRUE(torch::equal(a, b));
  EXPECT_FALSE(torch::allclose(a, x));
}

TEST(Weights, RoundTripThroughFederationRecords) {
  auto cfg = small_config();
  torch::manual_seed(1);
  models::Classifier a(classifier_options(cfg));
  torch::manual_seed(2);
  models::Classifier b(classifier_options(cfg));
  auto w = to_weights(*a);
  ASSERT_TRUE(load_weights(*b, w).ok());
  auto x = torch::randn({3, 1, 28, 28});
  a->eval();
  b->eval();
  EXPECT_TRUE(torch::equal(a->forward(x), b->forward(x)));
  w.pop_back();
  EXPECT_FALSE(load_weights(*b, w).ok());
}

TEST(Checkpoint, SaveLoadGivesTheSameModel) {
  auto cfg = small_config();
  models::Classifier m(classifier_options(cfg));
  ModelMeta meta;
  meta.threshold = 0.37;
  meta.round = 4;
  const std::string dir = testing::temp_dir("ckpt");
  ASSERT_TRUE(save_model(dir + "/m.pt", *m, cfg, meta).ok());
  auto loaded = load_model(dir + "/m.pt");
  ASSERT_TRUE(loaded.ok()) << loaded.status().to_string();
  EXPECT_DOUBLE_EQ(loaded->meta.threshold, 0.37);
  EXPECT_EQ(loaded->meta.round, 4);
  EXPECT_EQ(loaded->config.model.width, 8);
  auto x = torch::randn({2, 1, 28, 28});
  m->eval();
  EXPECT_TRUE(torch::allclose(m->forward(x), loaded->model->forward(x)));
}

TEST(Checkpoint, CorruptFileIsRefusedNamingIt) {
  auto cfg = small_config();
  models::Classifier m(classifier_options(cfg));
  const std::string dir = testing::temp_dir("ckpt-bad");
  ASSERT_TRUE(save_model(dir + "/m.pt", *m, cfg, {}).ok());
  { std::ofstream(dir + "/m.pt", std::ios::trunc) << "garbage"; }
  auto loaded = load_model(dir + "/m.pt");
  ASSERT_FALSE(loaded.ok());
  EXPECT_NE(loaded.status().message().find("m.pt"), std::string::npos);
  auto missing = load_model(dir + "/absent.pt");
  ASSERT_FALSE(missing.ok());
}

TEST(Fit, LearnsSyntheticPneumonia) {
  set_threads(2);
  auto cfg = small_config();
  auto train = synthetic_set(96, 28, 100);
  auto val = synthetic_set(48, 28, 9000);
  torch::manual_seed(3);
  models::Classifier m(classifier_options(cfg));
  const double before = roc_auc(predict(m, val).scores, predict(m, val).labels);
  auto options = fit_options_from(cfg, /*epochs=*/8, /*seed=*/11);
  std::vector<double> losses;
  options.on_epoch = [&](int, double loss) { losses.push_back(loss); };
  auto stats = fit(m, train, options);
  auto p = predict(m, val);
  const double after = roc_auc(p.scores, p.labels);
  EXPECT_EQ(losses.size(), 8u);
  EXPECT_LT(losses.back(), losses.front());
  EXPECT_EQ(stats.samples, 192);
  EXPECT_GT(after, 0.85) << "AUC before training " << before;
  EXPECT_GT(after, before + 0.1);
}

TEST(TorchLearner, FitAndEvaluateSpeakFederation) {
  set_threads(2);
  auto cfg = small_config();
  TorchLearner learner(cfg, synthetic_set(32, 28, 1), synthetic_set(16, 28, 500), 1);
  models::Classifier init(classifier_options(cfg));
  auto global = to_weights(*init);
  fed::RoundSettings rs = first_round();
  auto fit = learner.fit(global, rs);
  ASSERT_TRUE(fit.ok()) << fit.status().to_string();
  EXPECT_TRUE(fed::check_compatible(global, fit->weights).ok());
  EXPECT_EQ(fit->num_examples, 64u);
  EXPECT_TRUE(std::isfinite(fit->train_loss));
  auto eval = learner.evaluate(fit->weights);
  ASSERT_TRUE(eval.ok());
  EXPECT_EQ(eval->num_examples, 32u);
  uint64_t counted = 0;
  for (int b = 0; b < eval->histogram.bins(); ++b) counted += eval->histogram.neg[b] + eval->histogram.pos[b];
  EXPECT_EQ(counted, 32u);
  // Weights of another architecture are refused as a Status, not an exception.
  global.pop_back();
  EXPECT_FALSE(learner.fit(global, rs).ok());
}

TEST(TorchLearner, ARoundsTrainingIsTheSameWhateverRanBeforeIt) {
  // Dropout draws from torch's global generator; a site's round must not depend on its state.
  set_threads(2);
  auto cfg = small_config();
  cfg.model.dropout = 0.5;
  models::Classifier init(classifier_options(cfg));
  const auto global = to_weights(*init);
  fed::RoundSettings rs = first_round();
  rs.seed = 42;
  auto run = [&](uint64_t unrelated_seed) {
    torch::manual_seed(unrelated_seed);  // whatever the process drew before the round
    TorchLearner learner(cfg, synthetic_set(32, 28, 1), synthetic_set(16, 28, 500), 1);
    auto fit = learner.fit(global, rs);
    EXPECT_TRUE(fit.ok()) << fit.status().to_string();
    return fit.ok() ? fit->weights : fed::Weights{};
  };
  const auto a = run(1), b = run(2);
  ASSERT_EQ(a.size(), b.size());
  ASSERT_FALSE(a.empty());
  for (size_t t = 0; t < a.size(); ++t) EXPECT_EQ(a[t].data, b[t].data) << a[t].name;
  rs.seed = 43;  // and the round's seed does matter
  const auto c = run(1);
  bool differs = false;
  for (size_t t = 0; t < a.size(); ++t) differs |= a[t].data != c[t].data;
  EXPECT_TRUE(differs);
}

TEST(FedProx, ProximalTermMatchesHandComputedValueAndHoldsTrainingNearTheStart) {
  auto term = proximal_term({torch::tensor({1.0f, 2.0f}), torch::tensor({3.0f})},
                            {torch::zeros({2}), torch::tensor({1.0f})}, /*mu=*/2.0);
  EXPECT_FLOAT_EQ(term.item<float>(), 9.0f);  // 2/2 * (1 + 4 + 4)

  set_threads(2);
  auto cfg = small_config();
  auto train = synthetic_set(32, 28, 100);
  auto distance_moved = [&](double mu) {
    torch::manual_seed(5);
    models::Classifier m(classifier_options(cfg));
    std::vector<torch::Tensor> start;  // trainable parameters only (running statistics are not held)
    for (const auto& p : m->parameters()) start.push_back(p.detach().clone());
    auto options = fit_options_from(cfg, /*epochs=*/2, /*seed=*/11);
    options.prox_mu = mu;
    fit(m, train, options);
    double d = 0;
    const auto end = m->parameters();
    for (size_t t = 0; t < start.size(); ++t) d += (end[t].detach() - start[t]).pow(2).sum().item<double>();
    return std::sqrt(d);
  };
  const double free = distance_moved(0), held = distance_moved(50.0);
  EXPECT_LT(held, 0.8 * free) << "free " << free << ", with prox_mu 50: " << held;
}

TEST(FedBN, NormTensorNamesAreTheNormalisationLayersOnly) {
  auto cfg = small_config();
  models::Classifier m(classifier_options(cfg));
  auto names = norm_tensor_names(*m);
  ASSERT_FALSE(names.empty());
  size_t running = 0;
  for (const auto& t : to_weights(*m)) {
    if (t.name.find("running_mean") != std::string::npos) {
      EXPECT_TRUE(names.count(t.name)) << t.name;
      ++running;
    }
    if (t.shape.size() == 4) EXPECT_FALSE(names.count(t.name)) << "a convolution: " << t.name;
  }
  EXPECT_GT(running, 0u);
}

TEST(FedBN, SiteKeepsItsOwnNormalisationLayers) {
  set_threads(2);
  auto cfg = small_config();
  models::Classifier init(classifier_options(cfg));
  auto global = to_weights(*init);
  fed::RoundSettings rs = first_round();
  rs.keep_local_norm = true;
  auto run = [&](bool keep) {
    TorchLearner learner(cfg, synthetic_set(32, 28, 1), synthetic_set(16, 28, 500), 1);
    rs.keep_local_norm = keep;
    auto fit = learner.fit(global, rs);
    EXPECT_TRUE(fit.ok()) << fit.status().to_string();
    // The "aggregated" model: the site's weights with every normalisation tensor replaced.
    auto names = norm_tensor_names(*init);
    fed::Weights other = fit->weights;
    for (auto& t : other)
      if (names.count(t.name)) std::fill(t.data.begin(), t.data.end(), t.name.find("var") != std::string::npos ? 4.0f : 0.5f);
    auto own = learner.evaluate(fit->weights);
    auto mixed = learner.evaluate(other);
    EXPECT_TRUE(own.ok() && mixed.ok());
    return std::make_pair(own->loss, mixed->loss);
  };
  auto [own_keep, mixed_keep] = run(true);
  EXPECT_DOUBLE_EQ(own_keep, mixed_keep) << "FedBN: the site evaluates with its own norm layers";
  auto [own_plain, mixed_plain] = run(false);
  EXPECT_NE(own_plain, mixed_plain) << "without FedBN the received norm layers are used";
}

}  // namespace
}  // namespace fedrad::training
