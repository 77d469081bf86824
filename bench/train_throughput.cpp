// Local training throughput of fedrad's training loop (training::fit: AdamW, BCE, the study's
// augmentation) on the pneumonia classifier, for comparison with PyTorch eager in Python
// (bench/peers/torch_throughput.py runs the same loop).
//   train_throughput [--threads T] [--steps S] [--warmup W] [--batch B] [--size 28] [--augment 0|1] [--repeat R]
// Synthetic inputs (uniform in [-1, 1], random labels): throughput does not depend on the pixels.
// Prints one JSON line: images/s of the best of R timed runs of S steps, after W warm-up steps.
#include <algorithm>
#include <chrono>
#include <ctime>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include <torch/torch.h>

#include "common/allocator.h"
#include "models/classifier.h"
#include "training/dataset.h"
#include "training/trainer.h"

using namespace fedrad;

int main(int argc, char** argv) {
  fedrad::tune_allocator();  // as the fedrad binary does
  int threads = 1, steps = 40, warmup = 5, batch = 64, size = 28, augment = 1, repeat = 3;
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string k = argv[i];
    const int v = std::atoi(argv[i + 1]);
    if (k == "--threads") threads = v;
    else if (k == "--steps") steps = v;
    else if (k == "--warmup") warmup = v;
    else if (k == "--batch") batch = v;
    else if (k == "--size") size = v;
    else if (k == "--augment") augment = v;
    else if (k == "--repeat") repeat = v;
    else {
      std::fprintf(stderr, "unknown argument %s\n", k.c_str());
      return 2;
    }
  }
  training::set_threads(threads);
  torch::manual_seed(0);
  models::ClassifierOptions mo;  // configs/pneumonia.yaml: width 16, 3 stages, batch norm, dropout 0.1
  mo.width = 16;
  mo.stages = 3;
  mo.norm = "batch";
  mo.dropout = 0.1;
  models::Classifier model(mo);
  auto make_set = [&](int n) {
    training::ImageSet s;
    s.images = torch::rand({n, 1, size, size}) * 2 - 1;
    s.labels = (torch::rand({n}) < 0.7).to(torch::kFloat32);
    return s;
  };
  training::FitOptions fo;
  fo.epochs = 1;
  fo.batch_size = batch;
  fo.lr = 0.002;
  fo.optimizer = "adam";
  fo.weight_decay = 1e-4;
  fo.augment = augment != 0;
  fo.seed = 1;
  const auto warm = make_set(batch * std::max(1, warmup));
  training::fit(model, warm, fo);
  const auto data = make_set(batch * steps);
  // Wall time, and CPU time of the whole process (all its threads): on a shared machine the CPU
  // time per image is the steadier figure.
  double best = 1e30, best_cpu = 1e30;
  for (int r = 0; r < repeat; ++r) {
    const auto t0 = std::chrono::steady_clock::now();
    timespec c0{}, c1{};
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &c0);
    training::fit(model, data, fo);
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &c1);
    best = std::min(best, std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
    best_cpu = std::min(best_cpu, (c1.tv_sec - c0.tv_sec) + (c1.tv_nsec - c0.tv_nsec) * 1e-9);
  }
  const double images = static_cast<double>(batch) * steps;
  std::printf("{\"tool\": \"fedrad\", \"threads\": %d, \"batch\": %d, \"size\": %d, \"augment\": %s, \"steps\": %d, "
              "\"seconds\": %.4f, \"images_per_s\": %.1f, \"cpu_seconds\": %.4f, \"images_per_cpu_s\": %.1f, \"torch\": \"%s\"}\n",
              threads, batch, size, augment ? "true" : "false", steps, best, images / best, best_cpu, images / best_cpu,
              TORCH_VERSION);
  return 0;
}
