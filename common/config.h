// The study configuration: YAML parsed once into validated structs. Raw YAML never travels past
// the loader. Each field has its default beside it; configs/*.yaml only say what differs.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "common/status.h"

namespace fedrad {

struct ModelConfig {
  std::string arch = "resnet";  // compact ResNet-style classifier (models/classifier.h)
  int width = 16;               // channels of the first stage; doubled at each later stage
  int stages = 3;               // residual stages (each halves the resolution after the first)
  std::string norm = "batch";   // batch | group | instance
  double dropout = 0.0;         // before the final linear layer
};

struct DataConfig {
  int input_size = 28;   // images are resized to input_size x input_size
  bool augment = true;   // light augmentation while training (shift, small rotation, flip, jitter)
  bool hflip = false;    // horizontal flips (off by default: chest X-rays are not symmetric)
  std::string normalise = "minmax";  // minmax: per image to [0,1] then (x-0.5)/0.5; zscore: per image
};

struct TrainConfig {
  int local_epochs = 1;        // epochs over the site's train split per round
  int epochs = 0;              // centralised/single-site baselines; 0 = rounds * local_epochs
  int batch_size = 64;
  double lr = 0.001;
  std::string optimizer = "adam";  // adam | sgd
  // constant, or cosine: lr * (1 + cos(pi * e / E)) / 2 at epoch e of the E epochs of the whole
  // study (rounds x local_epochs when federated, `epochs` for baselines), so federated and
  // centralised runs decay alike.
  std::string lr_schedule = "constant";
  double momentum = 0.9;       // sgd only
  double weight_decay = 0.0001;
  int threads = 0;             // intra-op threads per process; 0 = all cores (shared out in simulate)
  std::string device = "cpu";  // cpu | cuda | cuda:N
};

struct FederationConfig {
  std::string strategy = "fedavg";
  std::string address = "tcp://127.0.0.1:5555";  // coordinator's bind/connect address
  int min_sites = 0;             // updates needed to close a round; 0 = every site in `sites`
  double join_timeout_s = 300;   // how long the coordinator waits for sites to join
  double round_timeout_s = 1800; // deadline for a round's updates
  std::string compression = "zstd";  // none | zstd (lossless, applied to every model message)
  int zstd_level = 3;
  // Update codecs (federation/codec.h), per direction: stages joined by '|' in the order
  // delta | ef[:m] | topk:F or randk:F | fp16, bf16, q8[:B], q4[:B] or q2[:B] | zstd[:L],
  // e.g. "delta|ef|topk:0.01|q8|zstd". "zstd" (default) and "none" send lossless plain weights.
  std::string upstream_codec = "zstd";    // site -> coordinator
  std::string downstream_codec = "zstd";  // coordinator -> site
};

// Privacy (federation/dp.h, training/dp_sgd.h). Off by default. Client-level DP clips each site's
// update (new - global weights) to client_clip and has the sites add Gaussian noise that sums to
// N(0, (client_noise_multiplier * client_clip)^2) over the sites' average; FedAvg then weighs the
// sites equally. DP-SGD clips each sample's gradient to sample_clip and adds
// N(0, (sample_noise_multiplier * sample_clip)^2) per step (needs group or instance norm).
struct PrivacyConfig {
  double client_clip = 0;              // > 0 turns client-level DP on (clipping)
  double client_noise_multiplier = 0;  // z; 0 = clipping only (no DP guarantee)
  bool dp_sgd = false;                 // sample-level DP-SGD at each site
  double sample_clip = 1.0;
  double sample_noise_multiplier = 1.0;
  double delta = 1e-5;                 // epsilon is reported at this delta
  bool secure_aggregation = false;     // federation/secagg.h; not yet carried by the live protocol
};

struct StudyConfig {
  std::string name = "study";
  uint64_t seed = 42;
  int rounds = 10;
  std::vector<std::string> sites;  // site folder names under the data root
  ModelConfig model;
  DataConfig data;
  TrainConfig train;
  FederationConfig federation;
  PrivacyConfig privacy;

  std::string source;  // where it was loaded from, for error messages; not a YAML key

  int baseline_epochs() const { return train.epochs > 0 ? train.epochs : rounds * train.local_epochs; }
};

// Parses and validates. Unknown keys, wrong types and impossible values fail with the file, the
// key and what is expected.
StatusOr<StudyConfig> load_study_config(const std::string& path);
StatusOr<StudyConfig> parse_study_config(const std::string& yaml_text, const std::string& source);
Status validate(const StudyConfig& c);

// The effective config (defaults filled in) as YAML; parse_study_config(to_yaml(c)) == c.
std::string to_yaml(const StudyConfig& c);

}  // namespace fedrad
