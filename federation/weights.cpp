#include <cmath>
#include <cstring>
#include <string>

#include "federation/federation.h"

namespace fedrad::fed {
namespace {

std::string shape_string(const std::vector<int64_t>& shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) s += (i ? "," : "") + std::to_string(shape[i]);
  return s + "]";
}

uint64_t values_of(const TensorRecord& t) { return t.data.size(); }
uint64_t values_of(const TensorView& t) { return t.size; }

// `b` (a model or a view of one) against `a`: the first mismatch, named.
template <class Model>
Status check_layout(const Weights& a, const Model& b) {
  if (a.size() != b.size())
    return invalid_argument("model has " + std::to_string(b.size()) + " tensors, expected " +
                            std::to_string(a.size()));
  for (size_t i = 0; i < a.size(); ++i) {
    if (a[i].name != b[i].name)
      return invalid_argument("tensor " + std::to_string(i) + " is '" + b[i].name + "', expected '" +
                              a[i].name + "'");
    if (a[i].shape != b[i].shape)
      return invalid_argument("tensor '" + a[i].name + "' has shape " + shape_string(b[i].shape) +
                              ", expected " + shape_string(a[i].shape));
    // A shape that matches while the data does not would make the averaging read out of bounds.
    if (a[i].data.size() != values_of(b[i]))
      return invalid_argument("tensor '" + a[i].name + "' has " + std::to_string(values_of(b[i])) +
                              " values, expected " + std::to_string(a[i].data.size()));
  }
  return ok_status();
}

}  // namespace

Status check_compatible(const Weights& a, const Weights& b) { return check_layout(a, b); }

Status check_compatible(const Weights& a, const WeightsView& b) { return check_layout(a, b); }

uint64_t num_values(const Weights& w) {
  uint64_t n = 0;
  for (const TensorRecord& t : w) n += t.data.size();
  return n;
}

StatusOr<Compression> parse_compression(const std::string& name) {
  if (name == "none") return Compression::kNone;
  if (name == "zstd") return Compression::kZstd;
  return invalid_argument("unknown compression '" + name + "' (known: none, zstd)");
}

StatusOr<Weights> weighted_average(const std::vector<const Weights*>& models,
                                   const std::vector<double>& weights) {
  if (models.empty()) return invalid_argument("weighted_average of no models");
  if (models.size() != weights.size())
    return invalid_argument("weighted_average of " + std::to_string(models.size()) + " models with " +
                            std::to_string(weights.size()) + " weights");
  double total = 0;
  for (size_t k = 0; k < models.size(); ++k) {
    if (models[k] == nullptr) return invalid_argument("model " + std::to_string(k) + " is null");
    if (!(weights[k] > 0) || !std::isfinite(weights[k]))
      return invalid_argument("weight " + std::to_string(k) + " is " + std::to_string(weights[k]) +
                              ", must be positive and finite");
    total += weights[k];
  }
  if (!(total > 0) || !std::isfinite(total))
    return invalid_argument("weights sum to " + std::to_string(total));
  for (size_t k = 1; k < models.size(); ++k) {
    Status st = check_compatible(*models[0], *models[k]);
    if (!st.ok()) return st.with_context("model " + std::to_string(k));
  }

  Weights out = *models[0];
  std::vector<double> acc;
  for (size_t t = 0; t < out.size(); ++t) {
    // Double accumulation keeps the sum independent of float rounding order across many sites.
    acc.assign(out[t].data.size(), 0.0);
    for (size_t k = 0; k < models.size(); ++k) {
      const double wk = weights[k];
      const std::vector<float>& src = (*models[k])[t].data;
      for (size_t i = 0; i < acc.size(); ++i) acc[i] += wk * static_cast<double>(src[i]);
    }
    for (size_t i = 0; i < acc.size(); ++i) out[t].data[i] = static_cast<float>(acc[i] / total);
  }
  return out;
}

}  // namespace fedrad::fed

namespace fedrad::fed {

float tensor_value(const TensorView& t, uint64_t i) {
  float v;
  std::memcpy(&v, static_cast<const char*>(t.data) + i * sizeof(float), sizeof v);
  return v;
}

Weights to_weights(const WeightsView& view) {
  Weights out(view.size());
  for (size_t t = 0; t < view.size(); ++t) {
    out[t].name = view[t].name;
    out[t].shape = view[t].shape;
    out[t].data.resize(static_cast<size_t>(view[t].size));
    if (view[t].size != 0) std::memcpy(out[t].data.data(), view[t].data, static_cast<size_t>(view[t].size) * sizeof(float));
  }
  return out;
}

}  // namespace fedrad::fed
