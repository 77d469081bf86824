// A deterministic fake learner for federation tests and benchmarks: no torch, no data.
// fit: every weight + (index + 1), with index + 1 examples, after sleeping fit_seconds;
// evaluate: a fixed small histogram per site. So FedAvg's result is computable by hand, and two
// runs with the same inputs give the same bytes.
#pragma once

#include <atomic>
#include <chrono>
#include <thread>

#include "federation/federation.h"

namespace fedrad::fed::testing {

class DeterministicLearner : public Learner {
 public:
  explicit DeterministicLearner(int index, double fit_seconds = 0)
      : index_(index), fit_seconds_(fit_seconds) {}

  StatusOr<FitReport> fit(const Weights& global, const RoundSettings& settings) override {
    ++fits_;
    if (fit_seconds_ > 0) std::this_thread::sleep_for(std::chrono::duration<double>(fit_seconds_));
    FitReport r;
    r.weights = global;
    for (TensorRecord& t : r.weights)
      for (float& v : t.data) v += static_cast<float>(index_ + 1);
    r.num_examples = static_cast<uint64_t>(index_ + 1);
    r.train_loss = 1.0 / std::max<uint32_t>(settings.round, 1);
    r.train_seconds = fit_seconds_;
    return r;
  }

  StatusOr<EvalReport> evaluate(const Weights&) override {
    EvalReport e;
    e.histogram.neg.assign(10, 0);
    e.histogram.pos.assign(10, 0);
    e.histogram.neg[2] = static_cast<uint64_t>(index_ + 1);
    e.histogram.pos[7] = static_cast<uint64_t>(index_ + 1);
    e.num_examples = 2 * static_cast<uint64_t>(index_ + 1);
    e.loss = 0.5;
    return e;
  }

  uint64_t num_train_examples() const override { return 10u * (index_ + 1); }
  uint64_t num_val_examples() const override { return 2u * (index_ + 1); }
  int fits() const { return fits_; }

 private:
  int index_;
  double fit_seconds_;
  std::atomic<int> fits_{0};
};

// A model of `values` floats in a few tensors, the same at every participant.
inline Weights fake_model(size_t values) {
  Weights w;
  const size_t a = values / 2, b = values - a;
  w.push_back(TensorRecord{"layer1.weight", {static_cast<int64_t>(a)}, std::vector<float>(a)});
  w.push_back(TensorRecord{"layer2.weight", {static_cast<int64_t>(b)}, std::vector<float>(b)});
  for (size_t i = 0; i < a; ++i) w[0].data[i] = static_cast<float>(i % 97) * 0.01f;
  for (size_t i = 0; i < b; ++i) w[1].data[i] = -static_cast<float>(i % 89) * 0.02f;
  return w;
}

}  // namespace fedrad::fed::testing
