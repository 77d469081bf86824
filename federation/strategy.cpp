// Aggregation strategies (federation.h). Each is a small class over one shared skeleton:
// `Strategy::aggregate` drives begin_round / accumulate / finish_round, and every strategy screens
// an update the same way (finite, same names and shapes, optional norm bound) before using it.
//
//   fedavg, fedprox, fedbn   sample-weighted mean, streamed (FedProx and FedBN differ at the sites)
//   fedavgm                  server momentum on the averaged pseudo-gradient (Hsu et al. 2019)
//   fedadam, fedyogi, fedadagrad  server optimisers on the pseudo-gradient (Reddi et al. 2021)
//                            (the server optimisers average normalisation statistics plainly)
//   median, trimmed_mean     coordinate-wise robust statistics, unweighted; keep every update
#include <algorithm>
#include <cmath>
#include <cstring>
#include <functional>
#include <string>

#include "federation/federation.h"

namespace fedrad::fed {
namespace {

std::string site_where(const SiteResult& r) { return "site " + r.site_id; }

// Names the first non-finite value, so a diverged site is found from the log alone.
Status check_finite(const SiteResult& r) {
  for (const TensorRecord& t : r.fit.weights) {
    for (size_t i = 0; i < t.data.size(); ++i) {
      if (!std::isfinite(t.data[i]))
        return invalid_argument(site_where(r) + " sent a non-finite value in tensor '" + t.name + "' at index " +
                                std::to_string(i) + "; update refused");
    }
  }
  return ok_status();
}

Status check_finite_view(const SiteResult& r, const WeightsView& w) {
  for (const TensorView& t : w) {
    for (uint64_t i = 0; i < t.size; ++i) {
      if (!std::isfinite(tensor_value(t, i)))
        return invalid_argument(site_where(r) + " sent a non-finite value in tensor '" + t.name + "' at index " +
                                std::to_string(i) + "; update refused");
    }
  }
  return ok_status();
}

double update_norm(const Weights& w, const Weights& global) {
  double sum = 0;
  for (size_t t = 0; t < w.size(); ++t)
    for (size_t i = 0; i < w[t].data.size(); ++i) {
      const double d = static_cast<double>(w[t].data[i]) - global[t].data[i];
      sum += d * d;
    }
  return std::sqrt(sum);
}

// Normalisation statistics (LibTorch/PyTorch buffer names) are estimates, not parameters: a
// server optimiser's momentum would push a running variance below zero (NaN in evaluation), so
// they take the plain average.
bool is_statistic(const std::string& name) {
  auto ends_with = [&](const char* suffix) {
    const size_t n = std::char_traits<char>::length(suffix);
    return name.size() >= n && name.compare(name.size() - n, n, suffix) == 0;
  };
  return ends_with("running_mean") || ends_with("running_var") || ends_with("num_batches_tracked");
}

// Per-tensor double accumulators with the global model's layout.
using Sums = std::vector<std::vector<double>>;

Sums zeros_like(const Weights& w) {
  Sums s(w.size());
  for (size_t t = 0; t < w.size(); ++t) s[t].assign(w[t].data.size(), 0.0);
  return s;
}

// The skeleton: screening, norm bounding, and the global model of the round.
class StrategyBase : public Strategy {
 public:
  explicit StrategyBase(StrategyConfig config) : config_(std::move(config)) {}
  std::string name() const override { return config_.name; }

  Status begin_round(uint32_t round, const Weights& global) override {
    if (global.empty()) return invalid_argument(name() + ": empty global model");
    round_ = round;
    global_ = &global;  // the caller keeps it until finish_round (federation.h)
    used_ = 0;
    FEDRAD_RETURN_IF_ERROR(begin());
    in_round_ = true;
    return ok_status();
  }

  Status accumulate(SiteResult r) override {
    if (!in_round_) return internal_error(name() + ": accumulate outside a round");
    if (!r.ok) return ok_status();  // a failure is data: nothing to add
    if (r.fit.num_examples == 0) return invalid_argument(site_where(r) + " reported 0 examples; update refused");
    FEDRAD_RETURN_IF_ERROR(check_finite(r));
    const Weights& g = global();
    Status st = check_compatible(g, r.fit.weights);
    if (!st.ok()) return st.with_context(site_where(r) + ": update refused");
    if (config_.max_update_norm > 0) {
      const double norm = update_norm(r.fit.weights, g);
      if (norm > config_.max_update_norm) {
        const double s = config_.max_update_norm / norm;
        for (size_t t = 0; t < g.size(); ++t)
          for (size_t i = 0; i < g[t].data.size(); ++i) {
            float& v = r.fit.weights[t].data[i];
            v = static_cast<float>(g[t].data[i] + s * (static_cast<double>(v) - g[t].data[i]));
          }
      }
    }
    ++used_;
    return add(std::move(r));
  }

  // The same screening on views; strategies that fold an update in as it is read (add_view) skip
  // the copy, the others (and norm bounding, which rewrites the update) get one.
  Status accumulate_view(SiteResult r, const WeightsView& update,
                         const std::function<void(size_t)>& done_with = nullptr) override {
    if (!in_round_) return internal_error(name() + ": accumulate outside a round");
    if (!r.ok) return ok_status();
    if (!reads_views() || config_.max_update_norm > 0)
      return Strategy::accumulate_view(std::move(r), update, done_with);
    if (r.fit.num_examples == 0) return invalid_argument(site_where(r) + " reported 0 examples; update refused");
    FEDRAD_RETURN_IF_ERROR(check_finite_view(r, update));
    Status st = check_compatible(global(), update);
    if (!st.ok()) return st.with_context(site_where(r) + ": update refused");
    ++used_;
    return add_view(r, update, done_with);
  }

  StatusOr<Weights> finish_round() override {
    if (!in_round_) return internal_error(name() + ": finish_round outside a round");
    in_round_ = false;
    const std::string where = name() + " round " + std::to_string(round_);
    if (used_ == 0) return invalid_argument(where + ": no usable site update");
    auto next = finish();
    if (!next.ok()) return next.status().with_context(where);
    return next;
  }

 protected:
  virtual Status begin() = 0;
  virtual Status add(SiteResult r) = 0;
  virtual StatusOr<Weights> finish() = 0;
  // Strategies that fold an update in without keeping it say so and implement add_view.
  virtual bool reads_views() const { return false; }
  virtual Status add_view(const SiteResult& r, const WeightsView& update, const std::function<void(size_t)>& done_with) {
    (void)r;
    (void)update;
    (void)done_with;
    return internal_error(name() + ": add_view not implemented");
  }

  const Weights& global() const { return *global_; }

  StrategyConfig config_;
  uint32_t round_ = 0;
  const Weights* global_ = nullptr;  // begin_round's, alive until finish_round
  size_t used_ = 0;
  bool in_round_ = false;
};

// Sample-weighted mean kept as running sums: O(model) memory whatever the number of sites. The
// sums are double on purpose: n_k w_k (an integer times a float32) and their sum over a few sites
// are exact in double, so the mean does not depend on the order in which updates arrive (a
// resumed study, whose sites answer in another order, ends with the same model bytes); float32
// sums would halve this memory but make the result depend on arrival order. Views are read in
// place (accumulate_view), so an update is never copied here.
class FedAvg : public StrategyBase {
 public:
  using StrategyBase::StrategyBase;
  bool streaming() const override { return true; }
  void configure_round(RoundSettings* s) const override {
    if (config_.name == "fedprox") s->prox_mu = config_.prox_mu;
    if (config_.name == "fedbn") s->keep_local_norm = true;
  }

 protected:
  // The sums are allocated with the first update, tensor by tensor, not at begin: while the
  // round's model is encoded and sent there are no zeros besides it, and while the first update
  // is folded in the sums grow as the caller gives the update's memory back (done_with).
  Status begin() override {
    sums_.clear();
    total_ = 0;
    return ok_status();
  }
  std::vector<double>& sums_of(size_t t) {
    const Weights& g = global();
    if (sums_.size() != g.size()) sums_.resize(g.size());
    if (sums_[t].size() != g[t].data.size()) sums_[t].assign(g[t].data.size(), 0.0);
    return sums_[t];
  }
  Status add(SiteResult r) override {
    const double n = static_cast<double>(r.fit.num_examples);
    for (size_t t = 0; t < global().size(); ++t) {
      const std::vector<float>& d = r.fit.weights[t].data;
      std::vector<double>& s = sums_of(t);
      for (size_t i = 0; i < s.size(); ++i) s[i] += n * d[i];
    }
    total_ += n;
    return ok_status();
  }
  bool reads_views() const override { return true; }
  Status add_view(const SiteResult& r, const WeightsView& update, const std::function<void(size_t)>& done_with) override {
    const double n = static_cast<double>(r.fit.num_examples);
    for (size_t t = 0; t < global().size(); ++t) {
      const char* d = static_cast<const char*>(update[t].data);
      std::vector<double>& s = sums_of(t);
      for (size_t i = 0; i < s.size(); ++i) {
        float v;  // read in place; memcpy because the buffer need not be aligned (one load)
        std::memcpy(&v, d + i * sizeof(float), sizeof v);
        s[i] += n * v;
      }
      if (done_with) done_with(t);
    }
    total_ += n;
    return ok_status();
  }
  StatusOr<Weights> finish() override { return average(); }

  // Tensor by tensor, each tensor's sums freed once converted: the mean and the sums are not
  // held in full at the same time.
  Weights average() {
    const Weights& g = global();
    const double scale = 1.0 / total_;
    Weights avg(g.size());
    for (size_t t = 0; t < g.size(); ++t) {
      avg[t].name = g[t].name;
      avg[t].shape = g[t].shape;
      std::vector<float>& out = avg[t].data;
      out.resize(sums_[t].size());
      for (size_t i = 0; i < out.size(); ++i) out[i] = static_cast<float>(sums_[t][i] * scale);
      std::vector<double>().swap(sums_[t]);
    }
    sums_.clear();
    return avg;
  }

 private:
  Sums sums_;
  double total_ = 0;
};

// Named server state: tensors "<prefix>/<name>" with the model's shapes.
Weights pack_state(const std::vector<std::pair<std::string, const Sums*>>& parts, const Weights& layout) {
  Weights out;
  for (const auto& [prefix, sums] : parts) {
    if (sums->empty()) continue;
    for (size_t t = 0; t < layout.size(); ++t) {
      TensorRecord r;
      r.name = prefix + "/" + layout[t].name;
      r.shape = layout[t].shape;
      r.data.assign((*sums)[t].begin(), (*sums)[t].end());
      out.push_back(std::move(r));
    }
  }
  return out;
}

// Names and shapes of w[begin, begin + n) without their values, the first `strip` characters of
// each name dropped: what state() needs to name the server's moments.
Weights layout_of(const Weights& w, size_t begin, size_t n, size_t strip = 0) {
  Weights out;
  out.reserve(n);
  for (size_t t = begin; t < begin + n; ++t) out.push_back(TensorRecord{w[t].name.substr(strip), w[t].shape, {}});
  return out;
}

Status unpack_state(const Weights& state, const std::vector<std::pair<std::string, Sums*>>& parts,
                    const std::string& who) {
  if (state.empty()) {
    for (auto& p : parts) p.second->clear();
    return ok_status();
  }
  const size_t per = state.size() / parts.size();
  if (per * parts.size() != state.size())
    return invalid_argument(who + ": state has " + std::to_string(state.size()) + " tensors, expected a multiple of " +
                            std::to_string(parts.size()));
  for (size_t p = 0; p < parts.size(); ++p) {
    Sums& s = *parts[p].second;
    s.assign(per, {});
    for (size_t t = 0; t < per; ++t) {
      const TensorRecord& r = state[p * per + t];
      if (r.name.rfind(parts[p].first + "/", 0) != 0)
        return invalid_argument(who + ": state tensor '" + r.name + "' is not in part '" + parts[p].first + "'");
      s[t].assign(r.data.begin(), r.data.end());
    }
  }
  return ok_status();
}

// Server optimisers on the pseudo-gradient delta = mean(w_k) - global.
class ServerOptimizer : public FedAvg {
 public:
  using FedAvg::FedAvg;

  Weights state() const override { return pack_state({{"m", &m_}, {"v", &v_}}, layout_); }
  Status restore_state(const Weights& state) override {
    FEDRAD_RETURN_IF_ERROR(unpack_state(state, {{"m", &m_}, {"v", &v_}}, name()));
    layout_ = layout_of(state, 0, state.size() / 2, /*strip "m/"*/ 2);
    return ok_status();
  }

 protected:
  StatusOr<Weights> finish() override {
    Weights avg = average();
    const Weights& gm = global();
    if (m_.empty()) {
      m_ = zeros_like(gm);
      // v starts at tau^2 (Reddi et al.'s choice in Flower) for the adaptive ones.
      v_ = zeros_like(gm);
      const double v0 = config_.name == "fedavgm" ? 0.0 : config_.tau * config_.tau;
      for (auto& t : v_) std::fill(t.begin(), t.end(), v0);
    }
    if (m_.size() != gm.size()) return invalid_argument("server state does not match the model");
    layout_ = layout_of(gm, 0, gm.size());
    Weights next = gm;
    const double b1 = config_.beta1, b2 = config_.beta2, eta = config_.server_lr, tau = config_.tau;
    for (size_t t = 0; t < next.size(); ++t) {
      if (m_[t].size() != next[t].data.size()) return invalid_argument("server state does not match the model");
      if (is_statistic(next[t].name)) {
        next[t].data = avg[t].data;
        continue;
      }
      for (size_t i = 0; i < next[t].data.size(); ++i) {
        const double g = static_cast<double>(gm[t].data[i]);
        const double delta = static_cast<double>(avg[t].data[i]) - g;
        double& m = m_[t][i];
        double& v = v_[t][i];
        double step;
        if (config_.name == "fedavgm") {
          m = config_.server_momentum * m + delta;
          step = eta * m;
        } else {
          m = b1 * m + (1 - b1) * delta;
          const double d2 = delta * delta;
          if (config_.name == "fedadam") v = b2 * v + (1 - b2) * d2;
          else if (config_.name == "fedyogi") v = v - (1 - b2) * d2 * (v - d2 > 0 ? 1.0 : (v - d2 < 0 ? -1.0 : 0.0));
          else v = v + d2;  // fedadagrad
          step = eta * m / (std::sqrt(v) + tau);
        }
        next[t].data[i] = static_cast<float>(g + step);
      }
    }
    return next;
  }

 private:
  Sums m_, v_;
  Weights layout_;  // names and shapes for state()
};

// Coordinate-wise median or trimmed mean over the sites' models, unweighted (a site cannot buy
// influence with a large sample count). Keeps every update: memory grows with the sites.
class RobustStatistic : public StrategyBase {
 public:
  using StrategyBase::StrategyBase;

 protected:
  Status begin() override {
    models_.clear();
    return ok_status();
  }
  Status add(SiteResult r) override {
    models_.push_back(std::move(r.fit.weights));
    return ok_status();
  }
  StatusOr<Weights> finish() override {
    const size_t n = models_.size();
    size_t cut = 0;
    if (config_.name == "trimmed_mean") {
      cut = static_cast<size_t>(std::floor(config_.trim_fraction * static_cast<double>(n)));
      if (2 * cut >= n) cut = (n - 1) / 2;
    }
    Weights out = global();
    std::vector<float> column(n);
    for (size_t t = 0; t < out.size(); ++t) {
      for (size_t i = 0; i < out[t].data.size(); ++i) {
        for (size_t k = 0; k < n; ++k) column[k] = models_[k][t].data[i];
        std::sort(column.begin(), column.end());
        double v;
        if (config_.name == "median") {
          v = n % 2 ? column[n / 2] : 0.5 * (static_cast<double>(column[n / 2 - 1]) + column[n / 2]);
        } else {
          double sum = 0;
          for (size_t k = cut; k < n - cut; ++k) sum += column[k];
          v = sum / static_cast<double>(n - 2 * cut);
        }
        out[t].data[i] = static_cast<float>(v);
      }
    }
    models_.clear();
    return out;
  }

 private:
  std::vector<Weights> models_;
};

const char* kKnown = "fedavg, fedprox, fedbn, fedavgm, fedadam, fedyogi, fedadagrad, median, trimmed_mean";

}  // namespace

Status Strategy::accumulate_view(SiteResult result, const WeightsView& update,
                                 const std::function<void(size_t)>& done_with) {
  result.fit.weights = to_weights(update);
  if (done_with)
    for (size_t t = 0; t < update.size(); ++t) done_with(t);  // copied: not read again
  return accumulate(std::move(result));
}

StatusOr<Weights> Strategy::aggregate(uint32_t round, const Weights& global, const std::vector<SiteResult>& results) {
  FEDRAD_RETURN_IF_ERROR(begin_round(round, global));
  for (const SiteResult& r : results) {
    Status st = accumulate(r);
    (void)st;  // refused updates are left out; callers that log them use accumulate directly
  }
  return finish_round();
}

std::unique_ptr<Strategy> make_fedavg() { return std::make_unique<FedAvg>(StrategyConfig{}); }

StatusOr<std::unique_ptr<Strategy>> make_strategy(const std::string& name) {
  StrategyConfig c;
  c.name = name;
  return make_strategy(c);
}

StatusOr<std::unique_ptr<Strategy>> make_strategy(const StrategyConfig& c) {
  auto bad = [&](const std::string& what) -> Status {
    return invalid_argument("strategy " + c.name + ": " + what);
  };
  if (!(c.max_update_norm >= 0) || !std::isfinite(c.max_update_norm)) return bad("max_update_norm must be >= 0");
  if (c.name == "fedavg" || c.name == "fedbn") return std::unique_ptr<Strategy>(new FedAvg(c));
  if (c.name == "fedprox") {
    if (!(c.prox_mu > 0) || !std::isfinite(c.prox_mu)) return bad("prox_mu must be > 0");
    return std::unique_ptr<Strategy>(new FedAvg(c));
  }
  if (c.name == "fedavgm" || c.name == "fedadam" || c.name == "fedyogi" || c.name == "fedadagrad") {
    if (!(c.server_lr > 0) || !std::isfinite(c.server_lr)) return bad("server_lr must be > 0");
    if (!(c.server_momentum >= 0 && c.server_momentum < 1)) return bad("server_momentum must be in [0, 1)");
    if (!(c.beta1 >= 0 && c.beta1 < 1)) return bad("beta1 must be in [0, 1)");
    if (!(c.beta2 >= 0 && c.beta2 < 1)) return bad("beta2 must be in [0, 1)");
    if (!(c.tau > 0) || !std::isfinite(c.tau)) return bad("tau must be > 0");
    return std::unique_ptr<Strategy>(new ServerOptimizer(c));
  }
  if (c.name == "median") return std::unique_ptr<Strategy>(new RobustStatistic(c));
  if (c.name == "trimmed_mean") {
    if (!(c.trim_fraction >= 0 && c.trim_fraction < 0.5)) return bad("trim_fraction must be in [0, 0.5)");
    return std::unique_ptr<Strategy>(new RobustStatistic(c));
  }
  return invalid_argument("unknown strategy '" + c.name + "' (known: " + kKnown + ")");
}

}  // namespace fedrad::fed
