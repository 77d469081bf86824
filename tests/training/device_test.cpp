// Device selection, mixed precision's loss scaling and the batch loader (training/device.h,
// training/loader.h). Everything here runs without a GPU; the CUDA paths run on GPU nodes
// (scripts/gpu/run.sh).
#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <random>
#include <thread>

#include <torch/torch.h>

#include "common/config.h"
#include "tests/test_data.h"
#include "training/dataset.h"
#include "training/checkpoint.h"
#include "training/device.h"
#include "training/loader.h"
#include "training/trainer.h"

namespace fedrad::training {
namespace {

TEST(Device, CpuResolvesAndCudaIsRefusedWithTheReasonWhereThereIsNone) {
  auto cpu = resolve_device("cpu");
  ASSERT_TRUE(cpu.ok());
  EXPECT_TRUE(cpu->is_cpu());
  EXPECT_NE(describe_device(*cpu).find("cpu"), std::string::npos);
  for (const char* bad : {"gpu", "cuda:", "cuda:x", "cuda:-1", "CUDA"}) {
    auto r = resolve_device(bad);
    ASSERT_FALSE(r.ok()) << bad;
    EXPECT_NE(r.status().message().find("train.device"), std::string::npos) << r.status().message();
  }
  if (torch::cuda::is_available()) GTEST_SKIP() << "this process has CUDA; the refusal is for CPU-only nodes";
  auto cuda = resolve_device("cuda:0");
  ASSERT_FALSE(cuda.ok());
  EXPECT_EQ(cuda.status().code(), StatusCode::kUnsupported);
  EXPECT_NE(cuda.status().message().find("cuda:0"), std::string::npos) << cuda.status().message();
  EXPECT_NE(cuda.status().message().find("train.device: cpu"), std::string::npos) << cuda.status().message();
}

TEST(Device, ConfigRefusesMixedPrecisionOnTheCpuAndBadDevices) {
  auto parse = [](const std::string& train) { return parse_study_config("sites: [a]\ntrain: {" + train + "}\n", "t.yaml"); };
  EXPECT_TRUE(parse("device: cuda:1, amp: true, amp_dtype: bfloat16, channels_last: true").ok());
  auto amp_cpu = parse("amp: true");
  ASSERT_FALSE(amp_cpu.ok());
  EXPECT_NE(amp_cpu.status().message().find("train.amp"), std::string::npos);
  auto bad_dtype = parse("device: cuda, amp: true, amp_dtype: float8");
  ASSERT_FALSE(bad_dtype.ok());
  EXPECT_NE(bad_dtype.status().message().find("train.amp_dtype"), std::string::npos);
  for (const char* d : {"gpu", "cuda:", "cuda:a1"}) {
    auto r = parse(std::string("device: '") + d + "'");
    ASSERT_FALSE(r.ok()) << d;
    EXPECT_NE(r.status().message().find("train.device"), std::string::npos);
  }
  // Precision follows the device: autocast only on CUDA.
  TrainConfig t;
  t.amp = true;
  t.channels_last = true;
  EXPECT_FALSE(precision_for(t, torch::Device(torch::kCPU)).amp);
  EXPECT_TRUE(precision_for(t, torch::Device(torch::kCUDA, 0)).amp);
  EXPECT_TRUE(precision_for(t, torch::Device(torch::kCPU)).channels_last);
}

TEST(Device, AutocastScopeNestsAndRestores) {
  ASSERT_FALSE(cuda_autocast_enabled());
  {
    AutocastScope off(false, torch::kFloat16);
    EXPECT_FALSE(cuda_autocast_enabled());
    AutocastScope on(true, torch::kFloat16);
    EXPECT_TRUE(cuda_autocast_enabled());
    {
      AutocastScope inner(true, torch::kBFloat16);
      EXPECT_TRUE(cuda_autocast_enabled());
    }
    EXPECT_TRUE(cuda_autocast_enabled());
  }
  EXPECT_FALSE(cuda_autocast_enabled());
}

// A parameter with a gradient, and a plain SGD step of lr 1 on it.
struct OneParam {
  torch::Tensor w = torch::ones({3}).requires_grad_(true);
  torch::optim::SGD opt{std::vector<torch::Tensor>{w}, torch::optim::SGDOptions(1.0)};
  void backward(const torch::Tensor& scaled_loss) {
    opt.zero_grad();
    scaled_loss.backward();
  }
};

TEST(GradScaler, UnscalesExactlyStepsAndGrowsAfterTheInterval) {
  GradScaler::Options o;
  o.init_scale = 1024;
  o.growth_interval = 3;
  GradScaler scaler(o);
  OneParam p;
  for (int step = 0; step < 3; ++step) {
    auto loss = (p.w * torch::tensor({1.0f, 2.0f, 3.0f})).sum();
    auto scaled = scaler.scale(loss);
    EXPECT_FLOAT_EQ(scaled.item<float>(), loss.item<float>() * 1024);
    p.backward(scaled);
    ASSERT_TRUE(scaler.unscale({p.w}));
    // Powers of two: the unscaled gradient is exactly the true one.
    EXPECT_TRUE(torch::equal(p.w.grad(), torch::tensor({1.0f, 2.0f, 3.0f})));
    EXPECT_TRUE(scaler.step(p.opt, {p.w}));
  }
  EXPECT_TRUE(torch::allclose(p.w.detach(), torch::tensor({-2.0f, -5.0f, -8.0f})));
  EXPECT_EQ(scaler.current_scale(), 2048);  // 3 clean steps in a row: doubled
  EXPECT_EQ(scaler.skipped_steps(), 0);
}

TEST(GradScaler, SkipsTheStepAndBacksOffOnInfOrNan) {
  GradScaler::Options o;
  o.init_scale = 256;
  o.growth_interval = 2;
  GradScaler scaler(o);
  OneParam p;
  for (float bad : {std::numeric_limits<float>::infinity(), std::nanf("")}) {
    auto before = p.w.detach().clone();
    p.backward(scaler.scale((p.w * torch::tensor({1.0f, bad, 1.0f})).sum()));
    EXPECT_FALSE(scaler.step(p.opt, {p.w}));  // step() unscales when the caller did not
    EXPECT_TRUE(torch::equal(p.w.detach(), before)) << "a step with a non-finite gradient must not move the weights";
  }
  EXPECT_EQ(scaler.current_scale(), 64);
  EXPECT_EQ(scaler.skipped_steps(), 2);
  // One clean step after a skip does not grow the scale yet (the interval restarted).
  p.backward(scaler.scale(p.w.sum()));
  EXPECT_TRUE(scaler.step(p.opt, {p.w}));
  EXPECT_EQ(scaler.current_scale(), 64);
}

TEST(GradScaler, DisabledPassesThrough) {
  GradScaler::Options o;
  o.enabled = false;
  GradScaler scaler(o);
  OneParam p;
  auto loss = p.w.sum();
  EXPECT_TRUE(torch::equal(scaler.scale(loss), loss));
  p.backward(scaler.scale(loss));
  EXPECT_TRUE(scaler.step(p.opt, {p.w}));
  EXPECT_TRUE(torch::allclose(p.w.detach(), torch::zeros({3})));
}

TEST(BatchLoader, DeliversEveryBatchInOrderWithBoundedLookAhead) {
  constexpr int64_t kBatches = 40;
  constexpr int kDepth = 3;
  std::atomic<int64_t> consumed{0}, max_ahead{0};
  BatchLoader::Options o;
  o.depth = kDepth;
  o.workers = 3;  // batches finish out of order; next() must still hand them over in order
  BatchLoader loader(
      kBatches,
      [&](int64_t i, bool pinned) {
        EXPECT_FALSE(pinned);  // CPU device: no page-locked buffers
        int64_t ahead = i - consumed.load();
        int64_t m = max_ahead.load();
        while (ahead > m && !max_ahead.compare_exchange_weak(m, ahead)) {
        }
        std::this_thread::sleep_for(std::chrono::microseconds((i * 7919) % 500));
        HostBatch b;
        b.tensors = {torch::full({4, 2}, static_cast<float>(i)), torch::arange(i, i + 4)};
        return b;
      },
      torch::Device(torch::kCPU), o);
  std::vector<torch::Tensor> t;
  int64_t expected = 0;
  while (loader.next(&t)) {
    ASSERT_EQ(t.size(), 2u);
    EXPECT_TRUE(torch::equal(t[0], torch::full({4, 2}, static_cast<float>(expected))));
    EXPECT_EQ(t[1][0].item<int64_t>(), expected);
    ++expected;
    consumed = expected;
  }
  EXPECT_EQ(expected, kBatches);
  EXPECT_LE(max_ahead.load(), kDepth) << "workers ran further ahead than the queue depth";
  EXPECT_EQ(loader.stats().batches, kBatches);
  EXPECT_FALSE(loader.next(&t));
}

TEST(BatchLoader, AWorkerErrorReachesTheConsumerNamingTheBatch) {
  BatchLoader loader(
      5,
      [](int64_t i, bool) {
        if (i == 3) throw std::runtime_error("cannot decode scan-0003.dcm");
        HostBatch b;
        b.tensors = {torch::zeros({1})};
        return b;
      },
      torch::Device(torch::kCPU));
  std::vector<torch::Tensor> t;
  for (int i = 0; i < 3; ++i) ASSERT_TRUE(loader.next(&t));
  try {
    loader.next(&t);
    FAIL() << "batch 3 should have thrown";
  } catch (const std::runtime_error& e) {
    EXPECT_NE(std::string(e.what()).find("batch 3"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("scan-0003.dcm"), std::string::npos) << e.what();
  }
}

TEST(BatchLoader, StopsCleanlyWhenDroppedHalfWay) {
  std::atomic<int> prepared{0};
  {
    BatchLoader loader(
        1000,
        [&](int64_t, bool) {
          ++prepared;
          HostBatch b;
          b.tensors = {torch::zeros({8})};
          return b;
        },
        torch::Device(torch::kCPU));
    std::vector<torch::Tensor> t;
    ASSERT_TRUE(loader.next(&t));
  }  // must not hang or prepare the remaining batches
  EXPECT_LT(prepared.load(), 10);
}

// Streaming a host set through the loader trains exactly the model that batching it in place does
// (same batches, same augmentation draws, same order of operations).
TEST(Fit, StreamedBatchesTrainTheSameModelAsResidentOnes) {
  set_threads(2);
  StudyConfig cfg;
  cfg.model.width = 8;
  cfg.model.stages = 2;
  cfg.data.input_size = 16;
  ImageSet set;
  torch::manual_seed(5);
  set.images = torch::randn({70, 1, 16, 16});
  set.labels = (torch::rand({70}) > 0.5).to(torch::kFloat32);
  auto train = [&](bool stream) {
    torch::manual_seed(1);
    models::Classifier m(classifier_options(cfg));
    auto options = fit_options_from(cfg, /*epochs=*/2, /*seed=*/9);
    options.batch_size = 16;  // 70 = 4 x 16 + 6: a short last batch
    options.stream = stream;
    auto stats = fit(m, set, options);
    EXPECT_EQ(stats.samples, 70);
    return to_weights(*m);
  };
  const auto resident = train(false), streamed = train(true);
  ASSERT_EQ(resident.size(), streamed.size());
  for (size_t i = 0; i < resident.size(); ++i) EXPECT_EQ(resident[i].data, streamed[i].data) << resident[i].name;
}

}  // namespace
}  // namespace fedrad::training

namespace fedrad::training {
namespace {

// The device path of load_image_set (stored pixels converted by the kernels, here their CPU
// references, one chunk decoded ahead by the loader) gives the images the plain path gives, on
// every site's encoding: 8-bit MONOCHROME2, 12 bits in 16 (JPEG lossless), MONOCHROME1 (RLE) and
// 64 x 64 JPEG-LS resized to 28.
TEST(Dataset, DevicePathEqualsThePlainPathOnEverySite) {
  DataConfig data;
  data.input_size = 28;
  for (const char* site : {"site-a", "site-b", "site-c", "site-d"}) {
    const std::string dir = fedrad::testing::pneumonia_site(site, "val");
    auto plain = load_image_set(dir, data, 2);
    ASSERT_TRUE(plain.ok()) << plain.status().to_string();
    LoadOptions o;
    o.threads = 2;
    o.device_preprocess = true;
    o.chunk = 37;  // several chunks, the last one short
    auto device = load_image_set(dir, data, o);
    ASSERT_TRUE(device.ok()) << device.status().to_string();
    ASSERT_EQ(device->size(), plain->size()) << site;
    EXPECT_EQ(device->files, plain->files) << site;
    EXPECT_TRUE(torch::equal(device->labels, plain->labels)) << site;
    const double diff = (device->images - plain->images).abs().max().item<double>();
    EXPECT_LT(diff, 1e-4) << site << ": largest difference " << diff;
  }
}

TEST(Dataset, DevicePathListsUnreadableFilesAndGoesOn) {
  const std::string dir = fedrad::testing::temp_dir("device-path-unreadable");
  const std::string src = fedrad::testing::pneumonia_site("site-a", "val");
  std::ofstream csv(dir + "/labels.csv");
  csv << "file,label\n";
  std::ifstream in(src + "/labels.csv");
  std::string line;
  std::getline(in, line);  // header
  int n = 0;
  while (n < 5 && std::getline(in, line)) {  // "P00000/IM00000.dcm,PNEUMONIA"
    const std::string rel = line.substr(0, line.find(','));
    const std::string name = std::filesystem::path(rel).filename().string();
    std::filesystem::copy_file(src + "/" + rel, dir + "/" + name, std::filesystem::copy_options::overwrite_existing);
    csv << name << ",NORMAL\n";
    ++n;
  }
  std::ofstream(dir + "/broken.dcm") << "not a DICOM file";
  csv << "broken.dcm,PNEUMONIA\n";
  csv.close();
  DataConfig data;
  LoadOptions o;
  o.device_preprocess = true;
  o.chunk = 4;
  auto set = load_image_set(dir, data, o);
  ASSERT_TRUE(set.ok()) << set.status().to_string();
  EXPECT_EQ(set->size(), n);
  ASSERT_EQ(set->unreadable.size(), 1u);
  EXPECT_NE(set->unreadable[0].path.find("broken.dcm"), std::string::npos);
}

}  // namespace
}  // namespace fedrad::training
