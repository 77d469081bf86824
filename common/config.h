// The study configuration: YAML parsed once into validated structs. Raw YAML never travels past
// the loader. Each field has its default beside it; configs/*.yaml only say what differs.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "common/status.h"

namespace fedrad {

struct ModelConfig {
  // resnet: compact ResNet-style classifier (models/classifier.h), task classification;
  // unet2d | unet3d: U-Net (models/unet.h), task segmentation.
  std::string arch = "resnet";
  int width = 16;               // channels of the first stage (U-Net: first level); doubled at each later one
  int stages = 3;               // residual stages (each halves the resolution after the first); U-Net: depth
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
  // Federated sites keep their optimiser state (Adam's moments, SGD's momentum) from one round to
  // the next instead of starting a fresh optimiser each round; the weights still come from the
  // global model. Not with privacy.dp_sgd (its optimiser is its own).
  bool keep_optimizer_state = false;
  int threads = 0;             // intra-op threads per process; 0 = all cores (shared out in simulate)
  std::string device = "cpu";  // cpu | cuda | cuda:N
  // Mixed precision on CUDA: autocast to amp_dtype with dynamic loss scaling (float16), as
  // torch.cuda.amp does. On the CPU it is refused (LibTorch's CPU autocast only slows this down).
  bool amp = false;
  std::string amp_dtype = "float16";  // float16 | bfloat16 (bfloat16 needs no loss scaling)
  bool channels_last = false;   // NHWC activations for 2D models: faster convolutions on tensor cores
  bool cudnn_benchmark = true;  // cuDNN autotuning of convolution algorithms (fixed input sizes)
  // Processes per site for data-parallel training (training/data_parallel.h): > 1 starts that
  // many processes, one per GPU with device cuda (rank r on cuda:r, or cuda:N+r for cuda:N; NCCL
  // all-reduce) or CPU processes sharing train.threads (ZeroMQ all-reduce). Each takes 1/P of the
  // site's train images and batch_size / P per batch; gradients are averaged every batch, so the
  // site trains like one process with batch_size and still looks like one site to the
  // coordinator. Classification only; not with privacy.dp_sgd.
  int data_parallel = 1;
};

// A regional aggregator (`fedrad region`, federation/regional.h): a site towards the coordinator,
// a coordinator towards its own sites.
struct RegionConfig {
  std::string id;                  // the region's name (a participant of the top coordinator)
  std::string address;             // where the region listens for its sites (its sites connect here)
  std::vector<std::string> sites;  // its sites, each one of the study's `sites`, each in one region
  int min_sites = 0;               // updates the region needs to close its round; 0 = all its sites
};

struct FederationConfig {
  // fedavg | fedprox | fedbn | fedavgm | fedadam | fedyogi | fedadagrad | median | trimmed_mean
  // (federation/federation.h StrategyConfig says what each does and which keys below it reads).
  std::string strategy = "fedavg";
  double server_lr = 1.0;         // fedavgm, fedadam, fedyogi, fedadagrad
  double server_momentum = 0.9;   // fedavgm
  double server_beta1 = 0.9;      // fedadam, fedyogi, fedadagrad
  double server_beta2 = 0.99;     // fedadam, fedyogi
  double server_tau = 1e-3;       // fedadam, fedyogi, fedadagrad: adaptivity
  double prox_mu = 0.01;          // fedprox: proximal term at the sites
  double trim_fraction = 0.2;     // trimmed_mean: cut at each end per coordinate
  double max_update_norm = 0;     // any strategy: bound on a site's update norm; 0 = off
  std::string address = "tcp://127.0.0.1:5555";  // coordinator's bind/connect address
  int min_sites = 0;             // updates needed to close a round; 0 = every site in `sites`
  double join_timeout_s = 300;   // how long the coordinator waits for sites to join
  double round_timeout_s = 1800; // deadline for a round's updates
  std::string compression = "zstd";  // none | zstd (lossless, applied to every model message)
  int zstd_level = 3;
  // Update codecs (federation/codec.h), per direction: stages joined by '|' in the order
  // delta | ef[:m] | topk:F, ktopk:F or randk:F | fp16, bf16, q8[:B], q4[:B] or q2[:B] | zstd[:L],
  // e.g. "delta|ef|ktopk:0.03|q4|zstd". "zstd" (default) and "none" send lossless plain weights.
  std::string upstream_codec = "zstd";    // site -> coordinator
  std::string downstream_codec = "zstd";  // coordinator -> site
  // CurveZMQ keys (federation/keys.h; `fedrad keys` writes them): the coordinator reads
  // coordinator.secret and sites/<site>.pub (its allow-list), a site reads <site>.secret and
  // coordinator.pub. "" = none: `fedrad coordinator` and `fedrad site` then refuse to start
  // unless `plaintext: true` (inside a VPN); `fedrad simulate` creates keys in OUT/keys.
  std::string keys_dir;
  bool plaintext = false;
  double heartbeat_s = 5;        // sites send a heartbeat this often, also while training
  int heartbeat_misses = 6;      // a site silent for this many heartbeats is dropped from the round
  int chunk_mb = 64;             // larger messages travel in chunks of this many MiB
  // Optional tier of regional aggregators (`regions:` maps a region id to {address, sites,
  // min_sites}). Empty: the sites talk to the coordinator. Otherwise every site is in exactly one
  // region, the coordinator's participants are the regions (min_sites then counts regions) and
  // what cannot pass through a region is refused (secure aggregation, median, trimmed_mean,
  // max_update_norm).
  std::vector<RegionConfig> regions;
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
  // Secure aggregation in the live protocol (federation/secagg.h, federation.h
  // SecureAggregationOptions): the coordinator learns only the sample-weighted sum of the updates.
  bool secure_aggregation = false;
  double secagg_clip = 4;              // per-coordinate bound on a site's update (fixed-point range)
  int secagg_threshold = 0;            // shares needed to unmask; 0 = parties - parties/3 (at least 2)
};

// Segmentation studies (task: segmentation; training/segmentation.h). A site's split holds a
// cases.csv: `case`, one column per input channel (named in `channels`) and `mask`.
struct SegmentationConfig {
  std::vector<std::string> channels = {"image"};  // cases.csv columns, in the model's input order
  std::vector<int> labels = {1};                  // mask values of the classes (0 = background)
  std::vector<int> patch_size = {32, 32, 32};     // training patch and inference window, x y z voxels (unet2d: z = 1)
  std::vector<double> spacing;                    // resample every case to this x y z spacing (mm); [] = as stored
  double overlap = 0.5;                           // sliding-window overlap in [0, 1)
  std::string blend = "gaussian";                 // gaussian | constant: weights of overlapping windows
  double foreground_fraction = 0.67;              // share of training patches centred on a labelled voxel
  int patches_per_case = 4;                       // training patches per case per epoch
  bool brats_regions = false;                     // also score WT/TC/ET (labels 1, 2 and 4 or 3)
};

struct StudyConfig {
  std::string name = "study";
  std::string task = "classification";  // classification | segmentation
  uint64_t seed = 42;
  int rounds = 10;
  std::vector<std::string> sites;  // site folder names under the data root
  ModelConfig model;
  DataConfig data;
  TrainConfig train;
  FederationConfig federation;
  PrivacyConfig privacy;
  SegmentationConfig segmentation;  // task: segmentation only

  std::string source;  // where it was loaded from, for error messages; not a YAML key

  bool segmentation_task() const { return task == "segmentation"; }
  // The region a site belongs to (nullptr: none, the site talks to the coordinator).
  const RegionConfig* region_of_site(const std::string& site) const;
  const RegionConfig* region(const std::string& id) const;
  // Who joins the coordinator: the region ids when there are regions, else the sites.
  std::vector<std::string> coordinator_participants() const;
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
