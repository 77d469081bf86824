// Codec throughput: encode and decode of a model update, in GB/s of raw float32 (the model's
// size as plain weights), for the codec settings of bench/compression.sh; and the CPU kernels.
//   build-codec/bench/codec_bench --benchmark_min_time=0.2
#include <benchmark/benchmark.h>

#include <random>
#include <vector>

#include "cuda/codec.h"
#include "federation/codec.h"

namespace {

using fedrad::fed::CodecSpec;
using fedrad::fed::ErrorFeedback;
using fedrad::fed::Weights;

// A model of `n` values in a few tensors, and a "trained" copy: reference + small gaussian steps.
// The three largest tensors are shaped like convolution weights [out, 1, 3, 3] (so that kernel
// top-k has kernels to choose), the last one flat.
struct Pair {
  Weights reference, model;
};

Pair make_pair(int64_t n) {
  std::mt19937_64 rng(1);
  std::normal_distribution<float> w(0.0f, 0.1f), step(0.0f, 0.001f);
  Pair p;
  int64_t parts[4] = {n / 2 / 9 * 9, n / 4 / 9 * 9, n / 8 / 9 * 9, 0};
  parts[3] = n - parts[0] - parts[1] - parts[2];
  for (int i = 0; i < 4; ++i) {
    const std::vector<int64_t> shape =
        i < 3 ? std::vector<int64_t>{parts[i] / 9, 1, 3, 3} : std::vector<int64_t>{parts[i]};
    fedrad::fed::TensorRecord t{"layer" + std::to_string(i) + ".weight", shape, {}};
    t.data.resize(static_cast<size_t>(parts[i]));
    for (float& v : t.data) v = w(rng);
    p.reference.push_back(t);
    for (float& v : t.data) v += step(rng);
    p.model.push_back(std::move(t));
  }
  return p;
}

const char* kCodecs[] = {"delta|zstd",          "delta|fp16|zstd",          "delta|q8|zstd",
                         "delta|ef|q4|zstd",    "delta|ef|topk:0.01|q8|zstd", "delta|ef|topk:0.01|q4|zstd",
                         "delta|ef|topk:0.001|q8|zstd", "delta|ef|randk:0.01|q8|zstd", "delta|ef|ktopk:0.03|q4|zstd"};

void BM_Encode(benchmark::State& state) {
  const char* codec = kCodecs[state.range(0)];
  const int64_t n = state.range(1);
  const Pair p = make_pair(n);
  const CodecSpec spec = CodecSpec::parse(codec).value();
  ErrorFeedback ef;
  size_t bytes = 0;
  uint64_t seed = 0;
  for (auto _ : state) {
    auto out = fedrad::fed::encode_update(spec, p.model, p.reference, ++seed, &ef);
    bytes = out->size();
    benchmark::DoNotOptimize(out);
  }
  state.SetLabel(codec);
  state.SetBytesProcessed(state.iterations() * n * 4);
  state.counters["ratio"] = static_cast<double>(n * 4) / static_cast<double>(bytes);
}

void BM_Decode(benchmark::State& state) {
  const char* codec = kCodecs[state.range(0)];
  const int64_t n = state.range(1);
  const Pair p = make_pair(n);
  const CodecSpec spec = CodecSpec::parse(codec).value();
  ErrorFeedback ef;
  const std::string bytes = fedrad::fed::encode_update(spec, p.model, p.reference, 1, &ef).value();
  const std::string text = spec.to_string();
  for (auto _ : state) {
    auto w = fedrad::fed::decode_update(text, bytes, p.reference);
    benchmark::DoNotOptimize(w);
  }
  state.SetLabel(codec);
  state.SetBytesProcessed(state.iterations() * n * 4);
}

void codec_args(benchmark::internal::Benchmark* b) {
  for (int c = 0; c < static_cast<int>(std::size(kCodecs)); ++c) b->Args({c, 1 << 20});
}
BENCHMARK(BM_Encode)->Apply(codec_args)->Unit(benchmark::kMillisecond);
BENCHMARK(BM_Decode)->Apply(codec_args)->Unit(benchmark::kMillisecond);

void BM_QuantizeCpu(benchmark::State& state) {
  const int64_t n = state.range(0);
  const Pair p = make_pair(n);
  std::vector<float> x;
  for (const auto& t : p.model) x.insert(x.end(), t.data.begin(), t.data.end());
  fedrad::cuda::QuantParams qp{static_cast<int>(state.range(1)), 256, 7};
  std::vector<uint8_t> codes(n);
  std::vector<float> scales(fedrad::cuda::num_blocks(n, 256));
  for (auto _ : state) {
    fedrad::cuda::quantize_cpu(n, x.data(), codes.data(), scales.data(), qp);
    benchmark::DoNotOptimize(codes.data());
  }
  state.SetBytesProcessed(state.iterations() * n * 4);
}
BENCHMARK(BM_QuantizeCpu)->Args({1 << 20, 8})->Args({1 << 20, 2})->Unit(benchmark::kMillisecond);

void BM_MaskAboveCpu(benchmark::State& state) {
  const int64_t n = state.range(0);
  const Pair p = make_pair(n);
  std::vector<float> x;
  for (const auto& t : p.model) x.insert(x.end(), t.data.begin(), t.data.end());
  std::vector<uint8_t> mask(n);
  for (auto _ : state) {
    fedrad::cuda::mask_above_cpu(n, x.data(), mask.data(), {0.25f});
    benchmark::DoNotOptimize(mask.data());
  }
  state.SetBytesProcessed(state.iterations() * n * 4);
}
BENCHMARK(BM_MaskAboveCpu)->Arg(1 << 20)->Unit(benchmark::kMillisecond);

}  // namespace

BENCHMARK_MAIN();
