#include "federation/dp.h"

#include <sodium.h>

#include <cmath>
#include <limits>

namespace fedrad::fed::dp {
namespace {

constexpr double kInf = std::numeric_limits<double>::infinity();

double log_add(double a, double b) {
  const double lo = std::min(a, b), hi = std::max(a, b);
  if (lo == -kInf) return hi;
  return std::log1p(std::exp(lo - hi)) + hi;
}

double log_sub(double a, double b) {  // a >= b
  if (b == -kInf) return a;
  if (a <= b) return -kInf;
  const double d = a - b;
  if (d > 700) return a;
  return std::log(std::expm1(d)) + b;
}

// log C(alpha, i) and its sign for real alpha (generalised binomial).
double log_abs_binom(double alpha, double i, bool* positive) {
  // C(a, i) = Gamma(a+1) / (Gamma(i+1) Gamma(a-i+1)); lgamma gives log|Gamma| and the sign.
  int s1 = 1, s2 = 1, s3 = 1;
  const double l1 = lgamma_r(alpha + 1, &s1);
  const double l2 = lgamma_r(i + 1, &s2);
  const double l3 = lgamma_r(alpha - i + 1, &s3);
  *positive = (s1 * s2 * s3) > 0;
  return l1 - l2 - l3;
}

// log(erfc(x)), accurate for large x.
double log_erfc(double x) {
  if (x < 25) return std::log(std::erfc(x));
  // Asymptotic series: erfc(x) ~ exp(-x^2)/(x sqrt(pi)) (1 - 1/(2x^2) + 3/(4x^4) - 15/(8x^6)).
  const double x2 = x * x;
  return -x2 - std::log(x) - 0.5 * std::log(M_PI) + std::log1p(-0.5 / x2 + 0.75 / (x2 * x2) - 1.875 / (x2 * x2 * x2));
}

double log_a_int(double q, double sigma, int alpha) {
  double log_a = -kInf;
  for (int i = 0; i <= alpha; ++i) {
    bool pos;
    const double log_coef = log_abs_binom(alpha, i, &pos) + i * std::log(q) + (alpha - i) * std::log1p(-q);
    log_a = log_add(log_a, log_coef + (double(i) * i - i) / (2 * sigma * sigma));
  }
  return log_a;
}

double log_a_frac(double q, double sigma, double alpha) {
  double log_a0 = -kInf, log_a1 = -kInf;
  const double z0 = sigma * sigma * std::log(1 / q - 1) + 0.5;
  for (int i = 0; i < 100000; ++i) {
    bool pos;
    const double log_coef = log_abs_binom(alpha, i, &pos);
    const double j = alpha - i;
    const double log_t0 = log_coef + i * std::log(q) + j * std::log1p(-q);
    const double log_t1 = log_coef + j * std::log(q) + i * std::log1p(-q);
    const double log_e0 = std::log(0.5) + log_erfc((i - z0) / (std::sqrt(2.0) * sigma));
    const double log_e1 = std::log(0.5) + log_erfc((z0 - j) / (std::sqrt(2.0) * sigma));
    const double log_s0 = log_t0 + (double(i) * i - i) / (2 * sigma * sigma) + log_e0;
    const double log_s1 = log_t1 + (j * j - j) / (2 * sigma * sigma) + log_e1;
    if (pos) {
      log_a0 = log_add(log_a0, log_s0);
      log_a1 = log_add(log_a1, log_s1);
    } else {
      log_a0 = log_sub(log_a0, log_s0);
      log_a1 = log_sub(log_a1, log_s1);
    }
    if (std::max(log_s0, log_s1) < -30) break;
  }
  return log_add(log_a0, log_a1);
}

}  // namespace

double l2_norm(const Weights& w) {
  double s = 0;
  for (const auto& t : w)
    for (float v : t.data) s += static_cast<double>(v) * v;
  return std::sqrt(s);
}

double clip_l2(Weights& w, double clip) {
  const double norm = l2_norm(w);
  if (norm > clip && norm > 0) {
    const float f = static_cast<float>(clip / norm);
    for (auto& t : w)
      for (float& v : t.data) v *= f;
  }
  return norm;
}

void add_gaussian_noise(Weights& w, double stddev, uint64_t seed) {
  if (stddev <= 0) return;
  if (seed == 0) {
    if (sodium_init() < 0) std::abort();
    randombytes_buf(&seed, sizeof(seed));
  }
  std::mt19937_64 gen(seed);
  std::normal_distribution<double> normal(0.0, stddev);
  for (auto& t : w)
    for (float& v : t.data) v += static_cast<float>(normal(gen));
}

double rdp_sampled_gaussian(double q, double sigma, double order) {
  if (q <= 0) return 0;
  if (sigma <= 0 || std::isinf(order)) return kInf;
  if (q >= 1) return order / (2 * sigma * sigma);
  const double log_a = order == std::floor(order) ? log_a_int(q, sigma, static_cast<int>(order))
                                                  : log_a_frac(q, sigma, order);
  return log_a / (order - 1);
}

PrivacySpent privacy_spent(const std::vector<double>& orders, const std::vector<double>& rdp, double delta) {
  PrivacySpent best{kInf, 0};
  for (size_t i = 0; i < orders.size() && i < rdp.size(); ++i) {
    const double a = orders[i];
    const double eps = rdp[i] - (std::log(delta) + std::log(a)) / (a - 1) + std::log((a - 1) / a);
    if (!std::isnan(eps) && eps < best.epsilon) best = {eps, a};
  }
  if (best.epsilon < 0) best.epsilon = 0;
  return best;
}

std::vector<double> default_orders() {
  std::vector<double> o;
  for (int x = 1; x < 100; ++x) o.push_back(1 + x / 10.0);
  for (int a = 11; a <= 64; ++a) o.push_back(a);
  return o;
}

RdpAccountant::RdpAccountant(std::vector<double> orders) : orders_(std::move(orders)), rdp_(orders_.size(), 0.0) {}

void RdpAccountant::step(double q, double sigma, uint64_t steps) {
  for (size_t i = 0; i < orders_.size(); ++i) rdp_[i] += static_cast<double>(steps) * rdp_sampled_gaussian(q, sigma, orders_[i]);
}

PrivacySpent RdpAccountant::spent(double delta) const { return privacy_spent(orders_, rdp_, delta); }

StatusOr<FitReport> ClientDpLearner::fit(const Weights& global, const RoundSettings& settings) {
  if (opt_.clip <= 0) return invalid_argument("client DP: clip must be > 0");
  auto fit = inner_.fit(global, settings);
  if (!fit.ok()) return fit;
  FEDRAD_RETURN_IF_ERROR(check_compatible(global, fit->weights));
  Weights delta = fit->weights;
  for (size_t t = 0; t < delta.size(); ++t)
    for (size_t i = 0; i < delta[t].data.size(); ++i) delta[t].data[i] -= global[t].data[i];
  last_norm_ = clip_l2(delta, opt_.clip);
  const double stddev = opt_.noise_multiplier * opt_.clip / std::sqrt(static_cast<double>(std::max(1, opt_.num_sites)));
  const uint64_t seed = opt_.seed == 0 ? 0 : opt_.seed * 0x9e3779b97f4a7c15ull + settings.round;
  add_gaussian_noise(delta, stddev, seed);
  for (size_t t = 0; t < delta.size(); ++t)
    for (size_t i = 0; i < delta[t].data.size(); ++i) fit->weights[t].data[i] = global[t].data[i] + delta[t].data[i];
  fit->num_examples = 1;  // equal FedAvg weights: the noise is calibrated to C/K
  return fit;
}

}  // namespace fedrad::fed::dp
