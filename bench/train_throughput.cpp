// Local training throughput of fedrad's training loops, for comparison with PyTorch eager in Python
// (bench/peers/torch_throughput.py runs the same loops on the same model, bench/peers.sh and
// bench/gpu_train.sh run the two side by side).
//   --model resnet (default): the pneumonia classifier (configs/pneumonia.yaml) trained by
//     training::fit (AdamW, BCE, the study's augmentation) on a synthetic set already on the device.
//   --model unet2d | unet3d: the segmentation U-Net (configs/segmentation.yaml's model section),
//     timed on the step training::fit_seg runs (seg_forward, dice_ce_loss, backward, AdamW step,
//     AMP through AutocastScope + GradScaler) on random patches already on the device; the host-side
//     patch sampling is left out. images/s = patches/s; --size is the patch edge (unet2d: size x
//     size x 1), --channels the input channels (4, BraTS), --classes the classes (4).
//
//   train_throughput [--model resnet|unet2d|unet3d] [--device cpu|cuda|cuda:N] [--amp 0|1]
//                    [--channels-last 0|1] [--cudnn-benchmark 0|1] [--threads T] [--steps S]
//                    [--warmup W] [--batch B] [--size S] [--augment 0|1] [--repeat R]
//                    [--channels C] [--classes K] [--width W] [--stages L] [--norm instance|group|batch]
//
// --amp 1: float16 autocast with dynamic loss scaling, on CUDA only (as training::precision_for:
// CPU autocast is refused there); on the CPU the run is float32 and the JSON says amp_active false.
// --channels-last: the classifier's weights and inputs (training::fit), the 2D U-Net's weights
// (fit_seg); ignored for the 3D U-Net (fit_seg keeps 3-D patches NCDHW).
// Synthetic inputs: throughput does not depend on the values. Prints one JSON line: images/s of
// the best of R timed runs of S steps, after W warm-up steps, plus the model's parameter count and
// a hash of its parameter names and shapes (the Python peer prints the same, for checking).
#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <ctime>
#include <string>
#include <vector>

#include <torch/cuda.h>
#include <torch/torch.h>

#include "common/allocator.h"
#include "models/classifier.h"
#include "models/unet.h"
#include "training/dataset.h"
#include "training/device.h"
#include "training/segmentation.h"
#include "training/trainer.h"

using namespace fedrad;

namespace {

// Parameter count and a 64-bit FNV-1a hash of "name:d0xd1x...;" over the named parameters in
// registration order (bench/peers/torch_throughput.py computes the same over named_parameters()).
struct ParamSummary {
  int64_t count = 0;
  uint64_t signature = 1469598103934665603ull;
};

ParamSummary summarise(torch::nn::Module& m) {
  ParamSummary s;
  for (const auto& p : m.named_parameters(/*recurse=*/true)) {
    s.count += p.value().numel();
    std::string text = p.key() + ":";
    for (int64_t d = 0; d < p.value().dim(); ++d) text += (d ? "x" : "") + std::to_string(p.value().size(d));
    text += ";";
    for (unsigned char c : text) {
      s.signature ^= c;
      s.signature *= 1099511628211ull;
    }
  }
  return s;
}

std::string json_escape(const std::string& s) {
  std::string out;
  for (char c : s) {
    if (c == '"' || c == '\\') out += '\\';
    if (static_cast<unsigned char>(c) >= 0x20) out += c;
  }
  return out;
}

double cpu_now() {
  timespec c{};
  clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &c);
  return c.tv_sec + c.tv_nsec * 1e-9;
}

}  // namespace

int main(int argc, char** argv) {
  fedrad::tune_allocator();  // as the fedrad binary does
  int threads = 1, steps = 40, warmup = 5, batch = -1, size = -1, augment = 1, repeat = 3;
  int amp = 0, channels_last = 0, cudnn_benchmark = 1;
  int channels = 4, classes = 4, width = 8, stages = 3;  // configs/segmentation.yaml (BraTS: 4 sequences, 3 labels + background)
  std::string device_spec = "cpu", model_kind = "resnet", norm = "instance";
  for (int i = 1; i < argc; i += 2) {
    const std::string k = argv[i];
    if (i + 1 >= argc) {
      std::fprintf(stderr, "argument %s needs a value\n", k.c_str());
      return 2;
    }
    const std::string sv = argv[i + 1];
    const int v = std::atoi(sv.c_str());
    if (k == "--threads") threads = v;
    else if (k == "--steps") steps = v;
    else if (k == "--warmup") warmup = v;
    else if (k == "--batch") batch = v;
    else if (k == "--size") size = v;
    else if (k == "--augment") augment = v;
    else if (k == "--repeat") repeat = v;
    else if (k == "--amp") amp = v;
    else if (k == "--channels-last") channels_last = v;
    else if (k == "--cudnn-benchmark") cudnn_benchmark = v;
    else if (k == "--channels") channels = v;
    else if (k == "--classes") classes = v;
    else if (k == "--width") width = v;
    else if (k == "--stages") stages = v;
    else if (k == "--norm") norm = sv;
    else if (k == "--device") device_spec = sv;
    else if (k == "--model") model_kind = sv;
    else {
      std::fprintf(stderr, "unknown argument %s\n", k.c_str());
      return 2;
    }
  }
  const bool unet = model_kind == "unet2d" || model_kind == "unet3d";
  if (!unet && model_kind != "resnet") {
    std::fprintf(stderr, "--model must be resnet, unet2d or unet3d, not '%s'\n", model_kind.c_str());
    return 2;
  }
  if (steps < 1 || repeat < 1 || warmup < 0) {
    std::fprintf(stderr, "--steps and --repeat must be >= 1, --warmup >= 0\n");
    return 2;
  }
  if (batch < 0) batch = unet ? 2 : 64;  // configs/segmentation.yaml, configs/pneumonia.yaml
  if (size < 0) size = unet ? 32 : 28;
  auto resolved = training::resolve_device(device_spec);
  if (!resolved.ok()) {
    std::fprintf(stderr, "train_throughput: --device %s: %s\n", device_spec.c_str(),
                 resolved.status().message().c_str());
    return 2;
  }
  const torch::Device device = *resolved;
  training::set_threads(threads);
  TrainConfig tc;
  tc.cudnn_benchmark = cudnn_benchmark != 0;
  training::configure_backend(tc, device);
  training::Precision precision;
  precision.amp = amp != 0 && device.is_cuda();  // training::precision_for: no CPU autocast
  precision.amp_dtype = torch::kFloat16;
  precision.channels_last = channels_last != 0;
  if (amp && !device.is_cuda())
    std::fprintf(stderr, "train_throughput: --amp 1 is CUDA-only (as train.amp); this run on %s is float32\n",
                 device_spec.c_str());
  auto sync = [&] {
    if (device.is_cuda()) torch::cuda::synchronize(device.index());
  };
  torch::manual_seed(0);

  double best = 1e30, best_cpu = 1e30;
  ParamSummary summary;
  int64_t skipped = 0;
  std::string shape;  // of one sample
  bool cl_effective = precision.channels_last;
  try {
    if (!unet) {
      models::ClassifierOptions mo;  // configs/pneumonia.yaml: width 16, 3 stages, batch norm, dropout 0.1
      mo.width = 16;
      mo.stages = 3;
      mo.norm = "batch";
      mo.dropout = 0.1;
      models::Classifier model(mo);
      summary = summarise(*model);
      auto make_set = [&](int n) {
        training::ImageSet s;
        s.images = torch::rand({n, 1, size, size}) * 2 - 1;
        s.labels = (torch::rand({n}) < 0.7).to(torch::kFloat32);
        training::to_device(&s, device);  // a GPU site keeps its decoded set on the device
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
      fo.device = device;
      fo.precision = precision;
      const auto warm = make_set(batch * std::max(1, warmup));
      auto ws = training::fit(model, warm, fo);
      const auto data = make_set(batch * steps);
      sync();
      // Wall time, and CPU time of the whole process (all its threads): on a shared machine the
      // CPU time per image is the steadier figure.
      for (int r = 0; r < repeat; ++r) {
        sync();
        const auto t0 = std::chrono::steady_clock::now();
        const double c0 = cpu_now();
        auto st = training::fit(model, data, fo);
        sync();
        const double c1 = cpu_now();
        best = std::min(best, std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
        best_cpu = std::min(best_cpu, c1 - c0);
        skipped += st.skipped_steps;
      }
      (void)ws;
      shape = "[1, " + std::to_string(size) + ", " + std::to_string(size) + "]";
    } else {
      models::UNetOptions uo;  // configs/segmentation.yaml: width 8, 3 stages, instance norm
      uo.dims = model_kind == "unet2d" ? 2 : 3;
      uo.in_channels = channels;
      uo.out_channels = classes;
      uo.width = width;
      uo.depth = stages;
      uo.norm = norm;
      models::UNet net(uo);
      summary = summarise(*net);
      const int pz = uo.dims == 2 ? 1 : size;
      cl_effective = precision.channels_last && uo.dims == 2;
      // As fit_seg: 3-D patches stay NCDHW, channels-last applies to the 2-D U-Net's weights only.
      training::place_model(*net, device, cl_effective);
      net->train();
      std::vector<torch::Tensor> params = net->parameters();
      training::FitOptions fo;  // configs/segmentation.yaml's train section
      fo.lr = 0.003;
      fo.optimizer = "adam";
      fo.weight_decay = 1e-5;
      // A few distinct batches on the device, cycled ([N, C, z, y, x] as fit_seg's loader gives them).
      const int pool = std::max(1, std::min(steps, 4));
      std::vector<torch::Tensor> xs, ys;
      for (int i = 0; i < pool; ++i) {
        xs.push_back(torch::randn({batch, channels, pz, size, size}).to(device));
        ys.push_back(torch::randint(0, classes, {batch, pz, size, size}, torch::kLong).to(device));
      }
      // One call of fit_seg's inner loop: a fresh optimiser and scaler (fit_seg makes them per call).
      auto run = [&](int n) {
        auto opt = training::make_optimizer(params, fo);
        training::GradScaler::Options so;
        so.enabled = precision.amp && precision.amp_dtype == torch::kFloat16;
        training::GradScaler scaler(so);
        training::RunningLoss loss_sum;
        for (int s = 0; s < n; ++s) {
          const auto& x = xs[s % pool];
          const auto& y = ys[s % pool];
          opt->zero_grad();
          torch::Tensor loss;
          {
            training::AutocastScope autocast(precision.amp, precision.amp_dtype);
            loss = training::dice_ce_loss(training::seg_forward(net, x).to(torch::kFloat32), y);
          }
          scaler.scale(loss).backward();
          scaler.step(*opt, params);
          loss_sum.add(loss);
        }
        return std::make_pair(loss_sum.sum() / n, scaler.skipped_steps());
      };
      run(std::max(1, warmup));
      sync();
      for (int r = 0; r < repeat; ++r) {
        sync();
        const auto t0 = std::chrono::steady_clock::now();
        const double c0 = cpu_now();
        auto res = run(steps);
        sync();
        const double c1 = cpu_now();
        best = std::min(best, std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
        best_cpu = std::min(best_cpu, c1 - c0);
        skipped += res.second;
      }
      shape = "[" + std::to_string(channels) + ", " + std::to_string(pz) + ", " + std::to_string(size) + ", " +
              std::to_string(size) + "]";
    }
  } catch (const std::exception& e) {
    std::fprintf(stderr, "train_throughput: %s\n", e.what());
    return 1;
  }
  const double images = static_cast<double>(batch) * steps;
  std::printf("{\"tool\": \"fedrad\", \"model\": \"%s\", \"device\": \"%s\", \"device_name\": \"%s\", "
              "\"amp\": %s, \"amp_active\": %s, \"channels_last\": %s, \"threads\": %d, \"batch\": %d, "
              "\"size\": %d, \"sample_shape\": %s, \"augment\": %s, \"steps\": %d, \"repeat\": %d, "
              "\"params\": %lld, \"param_signature\": \"%016llx\", \"skipped_steps\": %lld, "
              "\"seconds\": %.4f, \"images_per_s\": %.1f, \"cpu_seconds\": %.4f, \"images_per_cpu_s\": %.1f, "
              "\"torch\": \"%s\"}\n",
              model_kind.c_str(), device.str().c_str(), json_escape(training::describe_device(device)).c_str(),
              amp ? "true" : "false", precision.amp ? "true" : "false", cl_effective ? "true" : "false", threads,
              batch, size, shape.c_str(), (!unet && augment) ? "true" : "false", steps, repeat,
              static_cast<long long>(summary.count), static_cast<unsigned long long>(summary.signature),
              static_cast<long long>(skipped), best, images / best, best_cpu, images / best_cpu, TORCH_VERSION);
  return 0;
}
