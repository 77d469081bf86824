// Coordinator scaling: the real coordinator (federation/federation.h run_coordinator) against N
// fake sites over real TCP on 127.0.0.1, for a model of a given size. Two processes, so that the
// coordinator's peak memory (VmHWM) is its own:
//
//   coordinator_scaling coordinator --port P --sites N --mb M [--rounds R] [--codec none]
//       runs the study, prints one JSON line: per-round seconds, updates received per round,
//       bytes, VmHWM of this process
//   coordinator_scaling sites --port P --sites N [--first K --count C]
//       runs sites K..K+C-1 (default all N) as threads of this process, each with a fake learner
//       whose fit returns the global weights plus a small per-site offset at once (so the round
//       time is the federation's own: encode, send, receive, decode, aggregate)
//
// bench/scaling.sh drives it. Uses only the public API of federation/federation.h.
#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "federation/federation.h"

using namespace fedrad;

namespace {

std::string site_name(int i) {
  char buf[16];
  std::snprintf(buf, sizeof buf, "s%03d", i);
  return buf;
}

// Peak resident set of this process, in bytes (VmHWM in /proc/self/status).
uint64_t vm_hwm_bytes() {
  std::ifstream f("/proc/self/status");
  std::string line;
  while (std::getline(f, line))
    if (line.rfind("VmHWM:", 0) == 0) return std::strtoull(line.c_str() + 6, nullptr, 10) * 1024;
  return 0;
}

class FakeLearner : public fed::Learner {
 public:
  explicit FakeLearner(int index) : index_(index) {}
  StatusOr<fed::FitReport> fit(const fed::Weights& global, const fed::RoundSettings&) override {
    const auto t0 = std::chrono::steady_clock::now();
    fed::FitReport r;
    r.weights = global;
    const float delta = 1e-3f * static_cast<float>(index_ % 7 + 1);
    for (auto& t : r.weights)
      for (float& v : t.data) v += delta;
    r.num_examples = 100 + static_cast<uint64_t>(index_);
    r.train_loss = 0.5;
    r.train_seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    ++fits;
    return r;
  }
  StatusOr<fed::EvalReport> evaluate(const fed::Weights&) override {
    fed::EvalReport e;
    e.histogram = ScoreHistogram::of({0.1f, 0.4f, 0.35f, 0.8f}, {0, 0, 1, 1});
    e.num_examples = 4;
    e.loss = 0.5;
    ++evals;
    return e;
  }
  uint64_t num_train_examples() const override { return 100 + static_cast<uint64_t>(index_); }
  uint64_t num_val_examples() const override { return 4; }
  std::atomic<int> fits{0}, evals{0};

 private:
  int index_;
};

struct Args {
  std::string mode;
  int port = 0, sites = 1, rounds = 3, first = 0, count = -1;
  double mb = 1.0;
  std::string codec = "none";
  int heartbeat_misses = 0;  // 0 = the coordinator's default
};

Args parse(int argc, char** argv) {
  Args a;
  if (argc > 1) a.mode = argv[1];
  for (int i = 2; i + 1 < argc; i += 2) {
    const std::string k = argv[i], v = argv[i + 1];
    if (k == "--port") a.port = std::atoi(v.c_str());
    else if (k == "--sites") a.sites = std::atoi(v.c_str());
    else if (k == "--rounds") a.rounds = std::atoi(v.c_str());
    else if (k == "--mb") a.mb = std::atof(v.c_str());
    else if (k == "--first") a.first = std::atoi(v.c_str());
    else if (k == "--count") a.count = std::atoi(v.c_str());
    else if (k == "--codec") a.codec = v;
    else if (k == "--heartbeat-misses") a.heartbeat_misses = std::atoi(v.c_str());
    else {
      std::fprintf(stderr, "unknown argument %s\n", k.c_str());
      std::exit(2);
    }
  }
  if (a.count < 0) a.count = a.sites - a.first;
  return a;
}

// A model of about `mb` megabytes (10^6 bytes) of float32, as 8 tensors like a network's layers.
fed::Weights make_model(double mb) {
  const uint64_t values = std::max<uint64_t>(8, static_cast<uint64_t>(mb * 1e6 / 4));
  fed::Weights w;
  for (int t = 0; t < 8; ++t) {
    fed::TensorRecord r;
    r.name = "layer" + std::to_string(t) + ".weight";
    const int64_t n = static_cast<int64_t>(values / 8);
    r.shape = {n};
    r.data.resize(static_cast<size_t>(n));
    // Pseudo-random values like a trained layer's (uniform in [-0.1, 0.1]), so that zstd gains on
    // them about what it gains on real weights (~1.1x) instead of compressing a pattern away.
    uint64_t state = 0x9E3779B97F4A7C15ull ^ static_cast<uint64_t>(t);
    for (int64_t i = 0; i < n; ++i) {
      state ^= state << 13;
      state ^= state >> 7;
      state ^= state << 17;
      r.data[static_cast<size_t>(i)] = (static_cast<float>(state >> 40) / static_cast<float>(1 << 24) - 0.5f) * 0.2f;
    }
    w.push_back(std::move(r));
  }
  return w;
}

int run_coordinator_mode(const Args& a) {
  fed::CoordinatorOptions o;
  o.bind_address = "tcp://127.0.0.1:" + std::to_string(a.port);
  o.study = "scaling";
  for (int i = 0; i < a.sites; ++i) o.expected_sites.push_back(site_name(i));
  o.rounds = a.rounds;
  o.join_timeout_s = 600;
  o.round_timeout_s = 1200;
  o.compression = a.codec == "zstd" ? fed::Compression::kZstd : fed::Compression::kNone;
  o.upstream_codec = a.codec;
  o.downstream_codec = a.codec;
  if (a.heartbeat_misses > 0) o.heartbeat_misses = a.heartbeat_misses;
  o.initial_weights = make_model(a.mb);
  const uint64_t model_bytes = fed::num_values(o.initial_weights) * 4;
  const uint64_t hwm_before = vm_hwm_bytes();
  std::vector<double> seconds;
  std::vector<int> received;
  uint64_t bytes_up = 0, bytes_down = 0;
  o.on_round_end = [&](const fed::RoundLog& log, const fed::Weights&) {
    if (log.evaluation_only) return;
    seconds.push_back(log.seconds);
    int ok = 0;
    for (const auto& s : log.sites) ok += s.ok ? 1 : 0;
    received.push_back(ok);
    bytes_up += log.bytes_up;
    bytes_down += log.bytes_down;
  };
  const auto t0 = std::chrono::steady_clock::now();
  auto result = fed::run_coordinator(std::move(o));  // the coordinator takes the initial model (no second copy)
  const double wall = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  if (!result.ok()) {
    std::fprintf(stderr, "coordinator: %s\n", result.status().to_string().c_str());
    return 1;
  }
  std::string secs, recv;
  for (size_t i = 0; i < seconds.size(); ++i) {
    secs += (i ? ", " : "") + std::to_string(seconds[i]);
    recv += (i ? ", " : "") + std::to_string(received[i]);
  }
  std::printf(
      "{\"sites\": %d, \"model_mb\": %.3f, \"model_bytes\": %llu, \"rounds\": %d, \"codec\": \"%s\", "
      "\"round_seconds\": [%s], \"updates_received\": [%s], \"updates_expected_per_round\": %d, \"heartbeat_misses\": %d, "
      "\"bytes_up\": %llu, \"bytes_down\": %llu, \"wall_seconds\": %.3f, \"vm_hwm_bytes\": %llu, "
      "\"vm_hwm_before_study_bytes\": %llu}\n",
      a.sites, a.mb, static_cast<unsigned long long>(model_bytes), a.rounds, a.codec.c_str(), secs.c_str(),
      recv.c_str(), a.sites, a.heartbeat_misses, static_cast<unsigned long long>(bytes_up), static_cast<unsigned long long>(bytes_down),
      wall, static_cast<unsigned long long>(vm_hwm_bytes()), static_cast<unsigned long long>(hwm_before));
  return 0;
}

int run_sites_mode(const Args& a) {
  std::vector<std::unique_ptr<FakeLearner>> learners;
  std::vector<std::thread> threads;
  std::atomic<int> failed{0};
  for (int i = a.first; i < a.first + a.count; ++i) learners.push_back(std::make_unique<FakeLearner>(i));
  for (int k = 0; k < a.count; ++k) {
    threads.emplace_back([&, k] {
      fed::SiteOptions s;
      s.coordinator_address = "tcp://127.0.0.1:" + std::to_string(a.port);
      s.site_id = site_name(a.first + k);
      s.study = "scaling";
      s.idle_timeout_s = 1800;
      s.compression = a.codec == "zstd" ? fed::Compression::kZstd : fed::Compression::kNone;
      s.upstream_codec = a.codec;
      s.downstream_codec = a.codec;
      Status st = fed::run_site(*learners[static_cast<size_t>(k)], s);
      if (!st.ok()) {
        std::fprintf(stderr, "%s: %s\n", s.site_id.c_str(), st.to_string().c_str());
        ++failed;
      }
    });
  }
  for (auto& t : threads) t.join();
  int fits = 0, evals = 0;
  for (auto& l : learners) {
    fits += l->fits;
    evals += l->evals;
  }
  std::printf("{\"sites\": %d, \"fits\": %d, \"evals\": %d, \"failed\": %d, \"vm_hwm_bytes\": %llu}\n", a.count, fits,
              evals, failed.load(), static_cast<unsigned long long>(vm_hwm_bytes()));
  return failed ? 1 : 0;
}

}  // namespace

int main(int argc, char** argv) {
  const Args a = parse(argc, argv);
  if (a.port <= 0 || (a.mode != "coordinator" && a.mode != "sites")) {
    std::fprintf(stderr, "usage: coordinator_scaling coordinator|sites --port P --sites N [--mb M] [--rounds R] "
                         "[--first K --count C] [--codec none|zstd] [--heartbeat-misses N]\n");
    return 2;
  }
  return a.mode == "coordinator" ? run_coordinator_mode(a) : run_sites_mode(a);
}
