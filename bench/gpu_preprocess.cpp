// Throughput of the classifier preprocessing chain (cuda/preprocess.h): stored uint16 pixels ->
// float with rescale / MONOCHROME1 / window, fused with the bilinear resize, then the per-image
// min-max normalisation; a batch of N images of IN x IN -> OUT x OUT.
//
//   gpu_preprocess_bench [--n 4096] [--in 512] [--out 224] [--repeat 3] [--threads 0] [--chunk 256]
//                        [--json PATH]
//
// Measures the CPU reference on all cores (std::thread over images), and where a CUDA device is
// present: the H2D bandwidth from pinned memory, the kernels alone, and end to end (chunks over
// two streams: H2D of the stored pixels, the kernels, D2H of the floats, overlapped), each as
// input GB/s, and end to end as a fraction of the H2D bandwidth. Without a device the GPU
// figures are reported as unmeasured, with the reason. A markdown table goes to stdout, and the
// same figures as JSON to --json PATH.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include <nlohmann/json.hpp>

#include "cuda/preprocess.h"
#if defined(FEDRAD_HAVE_CUDA)
#include <cuda_runtime.h>
#endif

namespace {

using fedrad::cuda::NormaliseMode;
using fedrad::cuda::PixelParams;
using fedrad::cuda::ResizeParams;
using Clock = std::chrono::steady_clock;

struct Options {
  int64_t n = 4096;
  int in = 512, out = 224;
  int repeat = 3, threads = 0, chunk = 256;
  std::string json;
};

bool parse(int argc, char** argv, Options* o) {
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    auto next = [&]() -> const char* { return i + 1 < argc ? argv[++i] : nullptr; };
    const char* v = nullptr;
    if (a == "--n" && (v = next())) o->n = std::atoll(v);
    else if (a == "--in" && (v = next())) o->in = std::atoi(v);
    else if (a == "--out" && (v = next())) o->out = std::atoi(v);
    else if (a == "--repeat" && (v = next())) o->repeat = std::atoi(v);
    else if (a == "--threads" && (v = next())) o->threads = std::atoi(v);
    else if (a == "--chunk" && (v = next())) o->chunk = std::atoi(v);
    else if (a == "--json" && (v = next())) o->json = v;
    else {
      std::fprintf(stderr, "usage: %s [--n N] [--in PX] [--out PX] [--repeat R] [--threads T] [--chunk C] [--json PATH]\n",
                   argv[0]);
      return false;
    }
  }
  return o->n > 0 && o->in > 0 && o->out > 0 && o->repeat > 0 && o->chunk > 0;
}

// Host memory for the stored pixels: pinned when a device is there (the H2D copies need it).
struct HostBuffer {
  void* p = nullptr;
  bool pinned = false;
  HostBuffer(size_t bytes, bool want_pinned) {
#if defined(FEDRAD_HAVE_CUDA)
    if (want_pinned && cudaMallocHost(&p, bytes) == cudaSuccess) {
      pinned = true;
      return;
    }
#endif
    (void)want_pinned;
    p = std::malloc(bytes);
  }
  ~HostBuffer() {
#if defined(FEDRAD_HAVE_CUDA)
    if (pinned) {
      cudaFreeHost(p);
      return;
    }
#endif
    std::free(p);
  }
  HostBuffer(const HostBuffer&) = delete;
  HostBuffer& operator=(const HostBuffer&) = delete;
};

// Chest-X-ray-like 12-bit images: a smooth gradient plus noise (xorshift per image).
void fill_images(uint16_t* px, int64_t n, int size, int threads) {
  auto work = [&](int64_t begin, int64_t end) {
    for (int64_t img = begin; img < end; ++img) {
      uint32_t s = 2463534242u ^ static_cast<uint32_t>(img * 2654435761u);
      uint16_t* dst = px + img * size * size;
      for (int y = 0; y < size; ++y)
        for (int x = 0; x < size; ++x) {
          s ^= s << 13, s ^= s >> 17, s ^= s << 5;
          const int base = 1000 + (2000 * (x + y)) / (2 * size);
          dst[y * size + x] = static_cast<uint16_t>(std::min(4095, base + static_cast<int>(s % 512)));
        }
    }
  };
  std::vector<std::thread> pool;
  for (int t = 0; t < threads; ++t) pool.emplace_back(work, n * t / threads, n * (t + 1) / threads);
  for (auto& t : pool) t.join();
}

// Half the images MONOCHROME1, some with a window; slopes and intercepts vary.
std::vector<PixelParams> make_params(int64_t n) {
  std::vector<PixelParams> p(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) {
    p[i].bits = 12;
    p[i].invert = i % 2 == 1;
    p[i].slope = 1.0f + 0.001f * static_cast<float>(i % 7);
    p[i].intercept = -1024.0f + static_cast<float>(i % 5);
    if (i % 4 == 3) p[i].window_center = 1500.0f, p[i].window_width = 2500.0f;
  }
  return p;
}

struct Row {
  std::string name, unit, note;
  double value = 0;
};

}  // namespace

int main(int argc, char** argv) {
  Options o;
  if (!parse(argc, argv, &o)) return 2;
  const int threads = o.threads > 0 ? o.threads : static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  const bool gpu = fedrad::cuda::device_available();
  const std::string device = fedrad::cuda::device_description(0);
  const int64_t in_plane = static_cast<int64_t>(o.in) * o.in, out_plane = static_cast<int64_t>(o.out) * o.out;
  const double in_bytes = static_cast<double>(o.n) * in_plane * sizeof(uint16_t);
  const ResizeParams rp{o.in, o.in, o.out, o.out};
  const NormaliseMode mode = NormaliseMode::kMinMax;

  HostBuffer input(static_cast<size_t>(in_bytes), gpu);
  if (!input.p) {
    std::fprintf(stderr, "cannot allocate %.2f GB of input\n", in_bytes / 1e9);
    return 1;
  }
  auto* px = static_cast<uint16_t*>(input.p);
  fill_images(px, o.n, o.in, threads);
  const auto params = make_params(o.n);
  std::vector<float> cpu_out(static_cast<size_t>(o.n * out_plane));

  std::vector<Row> rows;
  nlohmann::json j = {{"images", o.n},       {"in_size", o.in},  {"out_size", o.out}, {"dtype", "uint16"},
                      {"input_bytes", in_bytes}, {"cpu_threads", threads}, {"device", device}};

  // CPU reference, all cores: each thread a contiguous range of images.
  double cpu_best = 1e30;
  for (int r = 0; r < o.repeat; ++r) {
    const auto t0 = Clock::now();
    std::vector<std::thread> pool;
    for (int t = 0; t < threads; ++t) {
      const int64_t b = o.n * t / threads, e = o.n * (t + 1) / threads;
      pool.emplace_back([&, b, e] {
        fedrad::cuda::preprocess_cpu<uint16_t>(e - b, px + b * in_plane, params.data() + b, cpu_out.data() + b * out_plane,
                                               rp, mode);
      });
    }
    for (auto& t : pool) t.join();
    cpu_best = std::min(cpu_best, std::chrono::duration<double>(Clock::now() - t0).count());
  }
  rows.push_back({"CPU reference (" + std::to_string(threads) + " threads)", "images/s", "", o.n / cpu_best});
  rows.push_back({"CPU reference, input", "GB/s", "", in_bytes / cpu_best / 1e9});
  j["cpu"] = {{"seconds", cpu_best}, {"images_per_s", o.n / cpu_best}, {"input_gb_per_s", in_bytes / cpu_best / 1e9}};

  bool gpu_measured = false;
  std::string gpu_reason = gpu ? "" : device;
#if defined(FEDRAD_HAVE_CUDA)
  if (gpu && !input.pinned) gpu_reason = "pinned host memory could not be allocated";
  if (gpu && input.pinned) {
    auto check = [&](cudaError_t e, const char* what) {
      if (e != cudaSuccess && gpu_reason.empty()) gpu_reason = std::string(what) + ": " + cudaGetErrorString(e);
      return e == cudaSuccess;
    };
    uint16_t* d_in = nullptr;
    float* d_out = nullptr;
    PixelParams* d_params = nullptr;
    float* h_out = nullptr;
    cudaStream_t streams[2] = {nullptr, nullptr};
    cudaEvent_t e0 = nullptr, e1 = nullptr;
    const size_t out_bytes = static_cast<size_t>(o.n * out_plane) * sizeof(float);
    bool ok = check(cudaMalloc(&d_in, static_cast<size_t>(in_bytes)), "cudaMalloc input") &&
              check(cudaMalloc(&d_out, out_bytes), "cudaMalloc output") &&
              check(cudaMalloc(&d_params, params.size() * sizeof(PixelParams)), "cudaMalloc params") &&
              check(cudaMallocHost(&h_out, out_bytes), "cudaMallocHost output") &&
              check(cudaStreamCreate(&streams[0]), "stream") && check(cudaStreamCreate(&streams[1]), "stream") &&
              check(cudaEventCreate(&e0), "event") && check(cudaEventCreate(&e1), "event") &&
              check(cudaMemcpy(d_params, params.data(), params.size() * sizeof(PixelParams), cudaMemcpyHostToDevice),
                    "params");
    auto elapsed = [&](cudaStream_t s, auto&& body) {
      cudaEventRecord(e0, s);
      body();
      cudaEventRecord(e1, s);
      cudaEventSynchronize(e1);
      float ms = 0;
      cudaEventElapsedTime(&ms, e0, e1);
      return ms / 1e3;
    };
    double h2d = 1e30, fused = 1e30, chain = 1e30, e2e = 1e30;
    if (ok) {
      for (int r = 0; r < o.repeat + 1; ++r) {  // the first round warms up
        const double t = elapsed(streams[0], [&] {
          cudaMemcpyAsync(d_in, px, static_cast<size_t>(in_bytes), cudaMemcpyHostToDevice, streams[0]);
        });
        if (r > 0) h2d = std::min(h2d, t);
      }
      for (int r = 0; r < o.repeat + 1 && ok; ++r) {
        const double tf = elapsed(streams[0], [&] {
          ok = fedrad::cuda::launch_pixels_resize<uint16_t>(streams[0], o.n, d_in, d_params, d_out, rp).ok();
        });
        const double tc = elapsed(streams[0], [&] {
          ok = ok && fedrad::cuda::launch_preprocess<uint16_t>(streams[0], o.n, d_in, d_params, d_out, rp, mode).ok();
        });
        if (r > 0) fused = std::min(fused, tf), chain = std::min(chain, tc);
      }
      if (!ok && gpu_reason.empty()) gpu_reason = "kernel launch failed";
      // End to end: chunks alternate between two streams, so one chunk's copies overlap
      // another's kernels (H2D and D2H use separate copy engines).
      for (int r = 0; r < o.repeat && ok; ++r) {
        check(cudaDeviceSynchronize(), "sync");
        const auto t0 = Clock::now();
        for (int64_t b = 0, k = 0; b < o.n; b += o.chunk, ++k) {
          const int64_t m = std::min<int64_t>(o.chunk, o.n - b);
          cudaStream_t s = streams[k % 2];
          cudaMemcpyAsync(d_in + b * in_plane, px + b * in_plane, static_cast<size_t>(m * in_plane) * sizeof(uint16_t),
                          cudaMemcpyHostToDevice, s);
          ok = ok && fedrad::cuda::launch_preprocess<uint16_t>(s, m, d_in + b * in_plane, d_params + b,
                                                               d_out + b * out_plane, rp, mode)
                         .ok();
          cudaMemcpyAsync(h_out + b * out_plane, d_out + b * out_plane, static_cast<size_t>(m * out_plane) * sizeof(float),
                          cudaMemcpyDeviceToHost, s);
        }
        ok = check(cudaDeviceSynchronize(), "end to end") && ok;
        e2e = std::min(e2e, std::chrono::duration<double>(Clock::now() - t0).count());
      }
    }
    if (ok) {
      double max_err = 0;  // the GPU's output against the CPU reference's, every image
      for (size_t i = 0; i < cpu_out.size(); ++i) max_err = std::max(max_err, std::abs(double(h_out[i]) - cpu_out[i]));
      gpu_measured = true;
      char note[64];
      std::snprintf(note, sizeof note, "cudaMemcpyAsync, one %.2f GB copy", in_bytes / 1e9);
      rows.push_back({"H2D copy, pinned", "GB/s", note, in_bytes / h2d / 1e9});
      rows.push_back({"GPU fused convert+resize (kernel)", "GB/s", "input bytes / kernel time", in_bytes / fused / 1e9});
      rows.push_back({"GPU chain: fused + normalise (kernels)", "GB/s", "", in_bytes / chain / 1e9});
      rows.push_back({"GPU chain (kernels)", "images/s", "", o.n / chain});
      rows.push_back({"GPU end to end (H2D + kernels + D2H)", "GB/s",
                      std::to_string(o.chunk) + "-image chunks on 2 streams", in_bytes / e2e / 1e9});
      rows.push_back({"GPU end to end", "images/s", "", o.n / e2e});
      rows.push_back({"GPU end to end / H2D bandwidth", "fraction", "", h2d / e2e});
      rows.push_back({"GPU kernels / H2D bandwidth", "fraction", "how far the kernels outrun the copy", h2d / chain});
      rows.push_back({"GPU vs CPU reference, max abs diff", "", "", max_err});
      j["gpu"] = {{"h2d_gb_per_s", in_bytes / h2d / 1e9},
                  {"fused_kernel_input_gb_per_s", in_bytes / fused / 1e9},
                  {"chain_kernels_input_gb_per_s", in_bytes / chain / 1e9},
                  {"chain_kernels_images_per_s", o.n / chain},
                  {"end_to_end_input_gb_per_s", in_bytes / e2e / 1e9},
                  {"end_to_end_images_per_s", o.n / e2e},
                  {"end_to_end_fraction_of_h2d", h2d / e2e},
                  {"chunk", o.chunk},
                  {"max_abs_diff_vs_cpu", max_err}};
    }
    if (e0) cudaEventDestroy(e0);
    if (e1) cudaEventDestroy(e1);
    for (auto s : streams)
      if (s) cudaStreamDestroy(s);
    cudaFree(d_in);
    cudaFree(d_out);
    cudaFree(d_params);
    cudaFreeHost(h_out);
  }
#else
  gpu_reason = device;
#endif
  if (!gpu_measured) j["gpu"] = {{"measured", false}, {"reason", gpu_reason}};

  std::printf("## Preprocessing chain: %lld uint16 images %dx%d -> %dx%d float, min-max (%.2f GB in)\n\n",
              static_cast<long long>(o.n), o.in, o.in, o.out, o.out, in_bytes / 1e9);
  std::printf("| measure | value | unit | note |\n|---|---:|---|---|\n");
  for (const Row& r : rows) std::printf("| %s | %.4g | %s | %s |\n", r.name.c_str(), r.value, r.unit.c_str(), r.note.c_str());
  if (!gpu_measured) std::printf("\nGPU figures unmeasured: %s\n", gpu_reason.c_str());
  else std::printf("\nDevice: %s\n", device.c_str());
  if (!o.json.empty()) {
    std::ofstream f(o.json);
    f << j.dump(2) << "\n";
    if (!f) {
      std::fprintf(stderr, "cannot write %s\n", o.json.c_str());
      return 1;
    }
  }
  return 0;
}
