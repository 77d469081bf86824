// Differential privacy without torch: L2 clipping, Gaussian noise, a Rényi-DP accountant for the
// sampled Gaussian mechanism (Mironov, Talwar, Zhang 2019; as in TF Privacy and Opacus) with the
// RDP -> (eps, delta) conversion of Balle et al. 2020 (Opacus' get_privacy_spent), and the
// client-level DP wrapper of a site's Learner (DP-FedAvg, McMahan et al. 2018).
#pragma once

#include <cstdint>
#include <memory>
#include <random>
#include <vector>

#include "common/status.h"
#include "federation/federation.h"

namespace fedrad::fed::dp {

// Scales every tensor of `w` together so that its global L2 norm is at most `clip`. Returns the
// norm before clipping.
double clip_l2(Weights& w, double clip);
double l2_norm(const Weights& w);

// Adds N(0, stddev^2) to every value; `seed` 0 draws the seed from the OS (libsodium).
void add_gaussian_noise(Weights& w, double stddev, uint64_t seed = 0);

// RDP of the sampled Gaussian mechanism (sampling rate q, noise multiplier sigma) at `order`,
// for one step. q = 1 is the plain Gaussian mechanism: order / (2 sigma^2).
double rdp_sampled_gaussian(double q, double sigma, double order);

struct PrivacySpent {
  double epsilon = 0;
  double order = 0;
};
// Smallest epsilon over `orders` (Balle et al. 2020, Theorem 21).
PrivacySpent privacy_spent(const std::vector<double>& orders, const std::vector<double>& rdp, double delta);

// Fractional orders 1.1..10.9 (step 0.1) and integers 11..64.
std::vector<double> default_orders();

// Composes mechanisms; thread-compatible.
class RdpAccountant {
 public:
  explicit RdpAccountant(std::vector<double> orders = default_orders());
  void step(double q, double sigma, uint64_t steps = 1);
  PrivacySpent spent(double delta) const;
  const std::vector<double>& rdp() const { return rdp_; }

 private:
  std::vector<double> orders_, rdp_;
};

struct ClientDpOptions {
  double clip = 1.0;             // bound on the L2 norm of a site's update (new - global weights)
  double noise_multiplier = 0;   // z: noise on the *average* of the sites' updates is N(0, (zC/K)^2)
  int num_sites = 1;             // K; each site adds N(0, (zC/sqrt(K))^2), so the K noises sum to zC
  uint64_t seed = 0;             // 0 = from the OS (deployments); tests fix it
};

// A Learner whose fit() returns global + clip(update) + noise, and reports one example, so that
// FedAvg weighs the sites equally (the sensitivity of the average to one site is then C/K).
// Evaluation passes through. Not thread-safe (like the Learner it wraps).
class ClientDpLearner : public Learner {
 public:
  ClientDpLearner(Learner& inner, ClientDpOptions options) : inner_(inner), opt_(options) {}
  StatusOr<FitReport> fit(const Weights& global, const RoundSettings& settings) override;
  StatusOr<EvalReport> evaluate(const Weights& global) override { return inner_.evaluate(global); }
  uint64_t num_train_examples() const override { return inner_.num_train_examples(); }
  uint64_t num_val_examples() const override { return inner_.num_val_examples(); }
  double last_update_norm() const { return last_norm_; }

 private:
  Learner& inner_;
  ClientDpOptions opt_;
  double last_norm_ = 0;
};

}  // namespace fedrad::fed::dp
