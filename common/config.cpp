#include "common/config.h"

#include <cctype>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <map>
#include <set>
#include <sstream>

#include <yaml-cpp/yaml.h>

namespace fedrad {
namespace {

// Reads one map level: each `get` consumes a key; `finish` reports keys nobody asked for.
class MapReader {
 public:
  MapReader(const YAML::Node& node, std::string path, const std::string& source, Status* err)
      : node_(node), path_(std::move(path)), source_(source), err_(err) {
    if (node_ && !node_.IsNull() && !node_.IsMap()) fail(path_, "expected a mapping");
  }

  template <typename T>
  void get(const char* key, T* out) {
    if (!err_->ok() || !node_ || node_.IsNull()) return;
    seen_.insert(key);
    YAML::Node v = node_[key];
    if (!v) return;
    try {
      *out = v.as<T>();
    } catch (const YAML::Exception&) {
      fail(full(key), std::string("expected ") + type_name(out) + ", got '" + scalar(v) + "'");
    }
  }

  YAML::Node child(const char* key) {
    seen_.insert(key);
    if (!node_ || node_.IsNull() || !node_.IsMap()) return YAML::Node();
    return node_[key];
  }

  std::string full(const char* key) const { return path_.empty() ? key : path_ + "." + key; }

  void finish() {
    if (!err_->ok() || !node_ || !node_.IsMap()) return;
    for (const auto& kv : node_) {
      std::string k = kv.first.as<std::string>();
      if (!seen_.count(k)) {
        std::string allowed;
        for (const auto& s : seen_) allowed += (allowed.empty() ? "" : ", ") + s;
        fail(full(k.c_str()), "unknown key (expected one of: " + allowed + ")");
        return;
      }
    }
  }

  void fail(const std::string& key, const std::string& why) {
    if (err_->ok()) *err_ = invalid_argument(source_ + ": " + key + ": " + why);
  }

 private:
  static std::string scalar(const YAML::Node& v) {
    if (v.IsScalar()) return v.Scalar();
    return v.IsSequence() ? "<list>" : "<mapping>";
  }
  static const char* type_name(int*) { return "an integer"; }
  static const char* type_name(uint64_t*) { return "a non-negative integer"; }
  static const char* type_name(double*) { return "a number"; }
  static const char* type_name(bool*) { return "true or false"; }
  static const char* type_name(std::string*) { return "a string"; }
  static const char* type_name(std::vector<std::string>*) { return "a list of strings"; }
  static const char* type_name(std::vector<int>*) { return "a list of integers"; }
  static const char* type_name(std::vector<double>*) { return "a list of numbers"; }

  YAML::Node node_;
  std::string path_;
  const std::string& source_;
  Status* err_;
  std::set<std::string> seen_;
};

Status check(bool ok, const StudyConfig& c, const std::string& key, const std::string& expected) {
  if (ok) return ok_status();
  return invalid_argument(c.source + ": " + key + ": " + expected);
}

// cpu, cuda, or cuda:N with N a non-negative integer.
bool valid_device(const std::string& d) {
  if (d == "cpu" || d == "cuda") return true;
  if (d.rfind("cuda:", 0) != 0 || d.size() == 5 || d.size() > 8) return false;
  return d.find_first_not_of("0123456789", 5) == std::string::npos;
}

bool one_of(const std::string& v, std::initializer_list<const char*> options) {
  for (const char* o : options)
    if (v == o) return true;
  return false;
}

// An update codec's stages ("delta|ef|topk:0.01" -> "delta", "ef", "topk:0.01"), blanks trimmed.
std::vector<std::string> codec_stages(const std::string& codec) {
  std::vector<std::string> out;
  std::stringstream in(codec);
  std::string stage;
  while (std::getline(in, stage, '|')) {
    const size_t a = stage.find_first_not_of(" \t"), b = stage.find_last_not_of(" \t");
    out.push_back(a == std::string::npos ? "" : stage.substr(a, b - a + 1));
  }
  return out;
}

std::string stage_name(const std::string& stage) { return stage.substr(0, stage.find(':')); }

// The stage names and their order of an update codec (federation/codec.h parses the parameters
// when the study starts; common/ cannot depend on federation/). Empty when the codec is fine.
std::string codec_problem(const std::string& codec) {
  if (codec == "none") return "";
  if (codec.empty()) return "must name a codec, e.g. zstd or delta|ef|topk:0.01|q8|zstd";
  int last = -1;
  for (const std::string& stage : codec_stages(codec)) {
    const std::string name = stage_name(stage);
    int rank;
    if (name == "delta") rank = 0;
    else if (name == "ef") rank = 1;
    else if (name == "topk" || name == "ktopk" || name == "randk") rank = 2;
    else if (one_of(name, {"fp16", "bf16", "q8", "q4", "q2"})) rank = 3;
    else if (name == "zstd") rank = 4;
    else
      return "unknown codec stage '" + name + "' in '" + codec +
             "' (known: delta, ef, topk, ktopk, randk, fp16, bf16, q8, q4, q2, zstd)";
    if (rank == 2 && stage.find(':') == std::string::npos)
      return "codec stage '" + name + "' needs the kept fraction, e.g. " + name + ":0.01";
    if (rank <= last)
      return "codec stage '" + name + "' is out of order in '" + codec +
             "' (order: delta | ef | topk/ktopk/randk | fp16/bf16/q8/q4/q2 | zstd, each at most once)";
    last = rank;
  }
  if (!codec.empty() && codec.back() == '|') return "codec '" + codec + "' ends with an empty stage";
  return "";
}

// The stages of an upstream codec that cannot carry a securely aggregated (masked) update, as in
// fed::check_secure_aggregation_codec. Empty when the codec composes with masking.
std::string secure_codec_problem(const std::string& codec) {
  for (const std::string& stage : codec_stages(codec)) {
    const std::string name = stage_name(stage);
    if (name == "topk" || name == "ktopk")
      return "cannot use " + name + " with privacy.secure_aggregation: true (each site would pick other coordinates, so "
             "the masks would not cancel); use randk:F, whose coordinates come from a seed all sites share";
    if (one_of(name, {"fp16", "bf16", "q8", "q4", "q2"}))
      return "cannot use " + name + " with privacy.secure_aggregation: true (the fixed point before masking is "
             "the quantiser, and a value masked mod 2^32 takes 4 bytes whatever its precision); allowed: zstd, "
             "none, or [delta|][ef|]randk:F[|zstd]";
  }
  return "";
}

// A participant's name on the wire and in key files (the egress guard's rule).
bool valid_participant_name(const std::string& s) {
  if (s.empty() || s.size() > 64) return false;
  for (char ch : s)
    if (!std::isalnum(static_cast<unsigned char>(ch)) && ch != '.' && ch != '_' && ch != '-') return false;
  return true;
}

// `federation.regions`: a region id maps to {address, sites, min_sites}, in the file's order.
void parse_regions(const YAML::Node& node, const std::string& source, Status* err, std::vector<RegionConfig>* out) {
  if (!err->ok() || !node || node.IsNull()) return;
  if (!node.IsMap()) {
    *err = invalid_argument(source + ": federation.regions: expected a mapping of region id to {address, sites, "
                            "min_sites}");
    return;
  }
  for (const auto& kv : node) {
    RegionConfig r;
    r.id = kv.first.Scalar();
    MapReader m(kv.second, "federation.regions." + r.id, source, err);
    m.get("address", &r.address);
    m.get("sites", &r.sites);
    m.get("min_sites", &r.min_sites);
    m.finish();
    out->push_back(std::move(r));
  }
}

// What a tier of regional aggregators needs, and what cannot pass through one (federation/regional.h).
Status validate_regions(const StudyConfig& c) {
  const FederationConfig& fc = c.federation;
  if (fc.regions.empty()) return ok_status();
  FEDRAD_RETURN_IF_ERROR(check(!c.privacy.secure_aggregation, c, "federation.regions",
                               "cannot be used with privacy.secure_aggregation: true (a regional aggregator would "
                               "unmask, and so see, each of its sites' updates); run the study without regions"));
  FEDRAD_RETURN_IF_ERROR(check(!one_of(fc.strategy, {"median", "trimmed_mean"}), c, "federation.strategy",
                               "cannot be " + fc.strategy +
                                   " with federation.regions (it is robust to faulty sites because it sees each "
                                   "site's update; through regions it would see one mean per region): use fedavg, "
                                   "fedprox, fedbn, fedavgm, fedadam, fedyogi or fedadagrad, or no regions"));
  FEDRAD_RETURN_IF_ERROR(check(fc.max_update_norm == 0, c, "federation.max_update_norm",
                               "must be 0 with federation.regions (it would bound a region's mean update, not a "
                               "site's); use privacy.client_clip to bound each site's update at the site"));
  std::set<std::string> sites(c.sites.begin(), c.sites.end()), addresses{fc.address};
  std::map<std::string, std::string> region_of;
  for (const RegionConfig& r : fc.regions) {
    const std::string key = "federation.regions." + r.id;
    FEDRAD_RETURN_IF_ERROR(check(valid_participant_name(r.id), c, key,
                                 "a region id must match [A-Za-z0-9._-]{1,64}, got '" + r.id + "'"));
    FEDRAD_RETURN_IF_ERROR(check(!sites.count(r.id), c, key,
                                 "region id '" + r.id + "' is also a site's name; regions and sites need distinct "
                                 "names (they share the keys folder)"));
    FEDRAD_RETURN_IF_ERROR(check(r.address.find("://") != std::string::npos, c, key + ".address",
                                 "must be the ZeroMQ endpoint the region listens on for its sites, such as "
                                 "tcp://0.0.0.0:5601"));
    FEDRAD_RETURN_IF_ERROR(check(addresses.insert(r.address).second, c, key + ".address",
                                 "'" + r.address + "' is already federation.address or another region's address"));
    FEDRAD_RETURN_IF_ERROR(check(!r.sites.empty(), c, key + ".sites", "must list the region's sites"));
    for (const std::string& s : r.sites) {
      FEDRAD_RETURN_IF_ERROR(check(sites.count(s) > 0, c, key + ".sites", "'" + s + "' is not one of the study's sites"));
      auto [it, fresh] = region_of.emplace(s, r.id);
      FEDRAD_RETURN_IF_ERROR(check(fresh, c, key + ".sites",
                                   "site '" + s + "' is already in region '" + it->second + "' (a site is in one region)"));
    }
    FEDRAD_RETURN_IF_ERROR(check(r.min_sites >= 0 && r.min_sites <= static_cast<int>(r.sites.size()), c,
                                 key + ".min_sites",
                                 "must be in 0..the region's " + std::to_string(r.sites.size()) + " sites (0 = all)"));
  }
  for (const std::string& s : c.sites)
    FEDRAD_RETURN_IF_ERROR(check(region_of.count(s) > 0, c, "federation.regions",
                                 "site '" + s + "' is in no region (with regions, every site is in exactly one)"));
  return ok_status();
}

Status validate_segmentation(const StudyConfig& c) {
  const SegmentationConfig& g = c.segmentation;
  FEDRAD_RETURN_IF_ERROR(check(!g.channels.empty() && g.channels.size() <= 16, c, "segmentation.channels",
                               "must name 1 to 16 cases.csv columns"));
  std::set<std::string> names;
  for (const auto& ch : g.channels) {
    FEDRAD_RETURN_IF_ERROR(check(!ch.empty() && ch != "case" && ch != "mask", c, "segmentation.channels",
                                 "a channel must be a column name other than 'case' and 'mask', got '" + ch + "'"));
    FEDRAD_RETURN_IF_ERROR(check(names.insert(ch).second, c, "segmentation.channels", "'" + ch + "' is listed twice"));
  }
  FEDRAD_RETURN_IF_ERROR(check(!g.labels.empty() && g.labels.size() <= 32, c, "segmentation.labels",
                               "must list 1 to 32 mask values (background 0 is implied)"));
  std::set<int> labels;
  for (int v : g.labels) {
    FEDRAD_RETURN_IF_ERROR(check(v >= 1 && v <= 255, c, "segmentation.labels",
                                 "each label must be a mask value in 1..255, got " + std::to_string(v)));
    FEDRAD_RETURN_IF_ERROR(check(labels.insert(v).second, c, "segmentation.labels",
                                 std::to_string(v) + " is listed twice"));
  }
  FEDRAD_RETURN_IF_ERROR(check(g.patch_size.size() == 3, c, "segmentation.patch_size", "must be [x, y, z] voxels"));
  const int multiple = 1 << std::max(0, c.model.stages - 1);
  for (int i = 0; i < 3; ++i) {
    const int p = g.patch_size[i];
    if (i == 2 && c.model.arch == "unet2d") {
      FEDRAD_RETURN_IF_ERROR(check(p == 1, c, "segmentation.patch_size", "z must be 1 for model.arch: unet2d"));
      continue;
    }
    FEDRAD_RETURN_IF_ERROR(check(p >= multiple && p <= 1024 && p % multiple == 0, c, "segmentation.patch_size",
                                 "each size must be a multiple of 2^(model.stages-1) = " + std::to_string(multiple) +
                                     " in " + std::to_string(multiple) + "..1024, got " + std::to_string(p)));
  }
  FEDRAD_RETURN_IF_ERROR(check(g.spacing.empty() || g.spacing.size() == 3, c, "segmentation.spacing",
                               "must be [] (as stored) or [x, y, z] in mm"));
  for (double s : g.spacing)
    FEDRAD_RETURN_IF_ERROR(check(s > 0 && s <= 100, c, "segmentation.spacing", "each spacing must be in (0, 100] mm"));
  FEDRAD_RETURN_IF_ERROR(check(g.overlap >= 0 && g.overlap < 1, c, "segmentation.overlap", "must be in [0, 1)"));
  FEDRAD_RETURN_IF_ERROR(check(one_of(g.blend, {"gaussian", "constant"}), c, "segmentation.blend",
                               "must be gaussian or constant"));
  FEDRAD_RETURN_IF_ERROR(check(g.foreground_fraction >= 0 && g.foreground_fraction <= 1, c,
                               "segmentation.foreground_fraction", "must be in [0, 1]"));
  FEDRAD_RETURN_IF_ERROR(check(g.patches_per_case >= 1 && g.patches_per_case <= 10000, c,
                               "segmentation.patches_per_case", "must be in 1..10000"));
  const bool brats = labels.count(1) && labels.count(2) && (labels.count(3) || labels.count(4));
  FEDRAD_RETURN_IF_ERROR(check(!g.brats_regions || brats, c, "segmentation.brats_regions",
                               "needs segmentation.labels to hold 1, 2 and 4 (or 3), the BraTS convention"));
  return ok_status();
}

}  // namespace

Status validate(const StudyConfig& c) {
  FEDRAD_RETURN_IF_ERROR(check(c.rounds >= 1, c, "rounds", "must be at least 1"));
  FEDRAD_RETURN_IF_ERROR(check(one_of(c.task, {"classification", "segmentation"}), c, "task",
                               "must be classification or segmentation"));
  if (c.segmentation_task()) {
    FEDRAD_RETURN_IF_ERROR(check(one_of(c.model.arch, {"unet2d", "unet3d"}), c, "model.arch",
                                 "must be unet2d or unet3d for task: segmentation"));
    FEDRAD_RETURN_IF_ERROR(validate_segmentation(c));
  } else {
    FEDRAD_RETURN_IF_ERROR(check(c.model.arch == "resnet", c, "model.arch",
                                 "must be 'resnet' for task: classification (unet2d/unet3d need task: segmentation)"));
  }
  FEDRAD_RETURN_IF_ERROR(check(c.model.width >= 1 && c.model.width <= 512, c, "model.width", "must be in 1..512"));
  FEDRAD_RETURN_IF_ERROR(check(c.model.stages >= 1 && c.model.stages <= 6, c, "model.stages", "must be in 1..6"));
  FEDRAD_RETURN_IF_ERROR(check(one_of(c.model.norm, {"batch", "group", "instance"}), c, "model.norm",
                               "must be batch, group or instance"));
  FEDRAD_RETURN_IF_ERROR(check(c.model.dropout >= 0 && c.model.dropout < 1, c, "model.dropout", "must be in [0, 1)"));
  FEDRAD_RETURN_IF_ERROR(check(c.data.input_size >= 8 && c.data.input_size <= 1024, c, "data.input_size",
                               "must be in 8..1024"));
  FEDRAD_RETURN_IF_ERROR(check(one_of(c.data.normalise, {"minmax", "zscore"}), c, "data.normalise",
                               "must be minmax or zscore"));
  FEDRAD_RETURN_IF_ERROR(check(c.train.local_epochs >= 1, c, "train.local_epochs", "must be at least 1"));
  FEDRAD_RETURN_IF_ERROR(check(c.train.epochs >= 0, c, "train.epochs", "must be 0 (auto) or more"));
  FEDRAD_RETURN_IF_ERROR(check(c.train.batch_size >= 1, c, "train.batch_size", "must be at least 1"));
  FEDRAD_RETURN_IF_ERROR(check(c.train.lr > 0 && c.train.lr < 10, c, "train.lr", "must be in (0, 10)"));
  FEDRAD_RETURN_IF_ERROR(check(one_of(c.train.optimizer, {"adam", "sgd"}), c, "train.optimizer", "must be adam or sgd"));
  FEDRAD_RETURN_IF_ERROR(check(one_of(c.train.lr_schedule, {"constant", "cosine"}), c, "train.lr_schedule",
                               "must be constant or cosine"));
  FEDRAD_RETURN_IF_ERROR(check(c.train.momentum >= 0 && c.train.momentum < 1, c, "train.momentum", "must be in [0, 1)"));
  FEDRAD_RETURN_IF_ERROR(check(c.train.weight_decay >= 0, c, "train.weight_decay", "must be >= 0"));
  FEDRAD_RETURN_IF_ERROR(check(c.train.threads >= 0, c, "train.threads", "must be >= 0"));
  FEDRAD_RETURN_IF_ERROR(check(!(c.train.keep_optimizer_state && c.privacy.dp_sgd), c, "train.keep_optimizer_state",
                               "cannot be used with privacy.dp_sgd (DP-SGD's optimiser starts fresh each round)"));
  FEDRAD_RETURN_IF_ERROR(check(valid_device(c.train.device), c, "train.device",
                               "must be cpu, cuda or cuda:N (N a device index)"));
  FEDRAD_RETURN_IF_ERROR(check(one_of(c.train.amp_dtype, {"float16", "bfloat16"}), c, "train.amp_dtype",
                               "must be float16 or bfloat16"));
  FEDRAD_RETURN_IF_ERROR(check(!c.train.amp || c.train.device != "cpu", c, "train.amp",
                               "needs train.device cuda or cuda:N (mixed precision is a GPU feature here)"));
  FEDRAD_RETURN_IF_ERROR(check(!(c.train.amp && c.privacy.dp_sgd), c, "train.amp",
                               "cannot be used with privacy.dp_sgd (per-sample clipping runs in float32)"));
  FEDRAD_RETURN_IF_ERROR(check(c.train.data_parallel >= 1 && c.train.data_parallel <= 64, c, "train.data_parallel",
                               "must be in 1..64 (processes per site)"));
  if (c.train.data_parallel > 1) {
    FEDRAD_RETURN_IF_ERROR(check(!c.segmentation_task(), c, "train.data_parallel",
                                 "must be 1 for task: segmentation (the U-Net trainer has no gradient all-reduce yet)"));
    // DP-SGD adds its noise to each step's clipped gradient sum in its own loop; split over
    // processes, each would add its own noise (and the accountant's sampling rate would be wrong).
    FEDRAD_RETURN_IF_ERROR(check(!c.privacy.dp_sgd, c, "train.data_parallel",
                                 "must be 1 with privacy.dp_sgd (its per-sample clipping and noise run in one "
                                 "process; split over several, the noise and the privacy accounting would be wrong)"));
    // The trainer skips batches of one (batch norm), so each process needs at least two images.
    FEDRAD_RETURN_IF_ERROR(check(c.train.batch_size / c.train.data_parallel >= 2, c, "train.data_parallel",
                                 "leaves fewer than 2 images per process and batch (train.batch_size " +
                                     std::to_string(c.train.batch_size) + " / " +
                                     std::to_string(c.train.data_parallel) + "); use a larger batch_size"));
  }
  const FederationConfig& fc = c.federation;
  FEDRAD_RETURN_IF_ERROR(check(one_of(fc.strategy, {"fedavg", "fedprox", "fedbn", "fedavgm", "fedadam", "fedyogi",
                                                    "fedadagrad", "median", "trimmed_mean"}),
                               c, "federation.strategy",
                               "must be one of fedavg, fedprox, fedbn, fedavgm, fedadam, fedyogi, fedadagrad, median, "
                               "trimmed_mean"));
  FEDRAD_RETURN_IF_ERROR(check(fc.server_lr > 0, c, "federation.server_lr", "must be > 0"));
  FEDRAD_RETURN_IF_ERROR(check(fc.server_momentum >= 0 && fc.server_momentum < 1, c, "federation.server_momentum",
                               "must be in [0, 1)"));
  FEDRAD_RETURN_IF_ERROR(check(fc.server_beta1 >= 0 && fc.server_beta1 < 1, c, "federation.server_beta1", "must be in [0, 1)"));
  FEDRAD_RETURN_IF_ERROR(check(fc.server_beta2 >= 0 && fc.server_beta2 < 1, c, "federation.server_beta2", "must be in [0, 1)"));
  FEDRAD_RETURN_IF_ERROR(check(fc.server_tau > 0, c, "federation.server_tau", "must be > 0"));
  FEDRAD_RETURN_IF_ERROR(check(fc.prox_mu > 0, c, "federation.prox_mu", "must be > 0"));
  FEDRAD_RETURN_IF_ERROR(check(fc.trim_fraction >= 0 && fc.trim_fraction < 0.5, c, "federation.trim_fraction",
                               "must be in [0, 0.5)"));
  FEDRAD_RETURN_IF_ERROR(check(fc.max_update_norm >= 0, c, "federation.max_update_norm", "must be >= 0 (0 = off)"));
  FEDRAD_RETURN_IF_ERROR(check(c.federation.address.find("://") != std::string::npos, c, "federation.address",
                               "must be a ZeroMQ endpoint such as tcp://127.0.0.1:5555"));
  FEDRAD_RETURN_IF_ERROR(check(c.federation.min_sites >= 0, c, "federation.min_sites", "must be >= 0"));
  if (c.federation.regions.empty()) {
    FEDRAD_RETURN_IF_ERROR(check(c.sites.empty() || c.federation.min_sites <= static_cast<int>(c.sites.size()), c,
                                 "federation.min_sites", "must not exceed the number of sites"));
  } else {
    FEDRAD_RETURN_IF_ERROR(check(c.federation.min_sites <= static_cast<int>(c.federation.regions.size()), c,
                                 "federation.min_sites",
                                 "must not exceed the number of regions (with federation.regions the coordinator's "
                                 "participants are the regions)"));
  }
  FEDRAD_RETURN_IF_ERROR(check(c.federation.join_timeout_s > 0, c, "federation.join_timeout_s", "must be > 0"));
  FEDRAD_RETURN_IF_ERROR(check(c.federation.round_timeout_s > 0, c, "federation.round_timeout_s", "must be > 0"));
  FEDRAD_RETURN_IF_ERROR(check(c.federation.heartbeat_s > 0, c, "federation.heartbeat_s", "must be > 0"));
  FEDRAD_RETURN_IF_ERROR(check(c.federation.heartbeat_misses >= 1, c, "federation.heartbeat_misses", "must be >= 1"));
  FEDRAD_RETURN_IF_ERROR(check(c.federation.chunk_mb >= 1 && c.federation.chunk_mb <= 1024, c, "federation.chunk_mb",
                               "must be in 1..1024"));
  FEDRAD_RETURN_IF_ERROR(check(c.federation.keys_dir.empty() || std::filesystem::is_directory(c.federation.keys_dir), c,
                               "federation.keys_dir",
                               "folder '" + c.federation.keys_dir + "' does not exist (create it with `fedrad keys`)"));
  FEDRAD_RETURN_IF_ERROR(check(one_of(c.federation.compression, {"none", "zstd"}), c, "federation.compression",
                               "must be none or zstd"));
  FEDRAD_RETURN_IF_ERROR(check(c.federation.zstd_level >= 1 && c.federation.zstd_level <= 19, c,
                               "federation.zstd_level", "must be in 1..19"));
  for (const auto& [key, codec] : {std::pair<const char*, const std::string*>{"federation.upstream_codec",
                                                                             &c.federation.upstream_codec},
                                   {"federation.downstream_codec", &c.federation.downstream_codec}}) {
    const std::string why = codec_problem(*codec);
    FEDRAD_RETURN_IF_ERROR(check(why.empty(), c, key, why));
  }
  const PrivacyConfig& pv = c.privacy;
  FEDRAD_RETURN_IF_ERROR(check(pv.client_clip >= 0, c, "privacy.client_clip", "must be >= 0 (0 = off)"));
  FEDRAD_RETURN_IF_ERROR(check(pv.client_noise_multiplier >= 0, c, "privacy.client_noise_multiplier", "must be >= 0"));
  FEDRAD_RETURN_IF_ERROR(check(pv.client_noise_multiplier == 0 || pv.client_clip > 0, c,
                               "privacy.client_noise_multiplier", "needs privacy.client_clip > 0 (the noise is scaled by it)"));
  FEDRAD_RETURN_IF_ERROR(check(pv.sample_clip > 0, c, "privacy.sample_clip", "must be > 0"));
  FEDRAD_RETURN_IF_ERROR(check(pv.sample_noise_multiplier >= 0, c, "privacy.sample_noise_multiplier", "must be >= 0"));
  FEDRAD_RETURN_IF_ERROR(check(pv.delta > 0 && pv.delta < 1, c, "privacy.delta", "must be in (0, 1)"));
  FEDRAD_RETURN_IF_ERROR(check(!(pv.dp_sgd || pv.client_clip > 0) || c.model.norm != "batch", c, "model.norm",
                               "must be group or instance with differential privacy (batch norm mixes samples and its "
                               "running statistics are not clipped)"));
  FEDRAD_RETURN_IF_ERROR(check(pv.secagg_clip > 0 && std::isfinite(pv.secagg_clip), c, "privacy.secagg_clip",
                               "must be > 0"));
  FEDRAD_RETURN_IF_ERROR(check(pv.secagg_threshold == 0 ||
                                   (pv.secagg_threshold >= 2 &&
                                    (c.sites.empty() || pv.secagg_threshold <= static_cast<int>(c.sites.size()))),
                               c, "privacy.secagg_threshold", "must be 0 (automatic) or in 2..the number of sites"));
  if (pv.secure_aggregation) {
    // The coordinator learns only sum n_i delta_i and sum n_i: whatever needs one site's update is out.
    FEDRAD_RETURN_IF_ERROR(check(!one_of(fc.strategy, {"median", "trimmed_mean"}), c, "federation.strategy",
                                 "cannot be " + fc.strategy +
                                     " with privacy.secure_aggregation: true (it needs every site's update; the "
                                     "coordinator only learns their weighted sum): use fedavg, fedprox, fedbn, fedavgm, "
                                     "fedadam, fedyogi or fedadagrad"));
    FEDRAD_RETURN_IF_ERROR(check(fc.max_update_norm == 0, c, "federation.max_update_norm",
                                 "must be 0 with privacy.secure_aggregation: true (the coordinator never sees one "
                                 "site's update to bound it; privacy.secagg_clip and privacy.client_clip bound updates "
                                 "at the sites)"));
    const std::string why = secure_codec_problem(fc.upstream_codec);
    FEDRAD_RETURN_IF_ERROR(check(why.empty(), c, "federation.upstream_codec", why));
    FEDRAD_RETURN_IF_ERROR(check(c.sites.empty() || (c.sites.size() >= 2 && c.sites.size() <= 255), c, "sites",
                                 "secure aggregation needs 2..255 sites (one site's sum is its update)"));
  }
  std::set<std::string> names;
  for (const auto& s : c.sites) {
    FEDRAD_RETURN_IF_ERROR(check(!s.empty() && s.find('/') == std::string::npos, c, "sites",
                                 "each site must be a folder name, got '" + s + "'"));
    FEDRAD_RETURN_IF_ERROR(check(names.insert(s).second, c, "sites", "site '" + s + "' is listed twice"));
  }
  FEDRAD_RETURN_IF_ERROR(validate_regions(c));
  return ok_status();
}

const RegionConfig* StudyConfig::region_of_site(const std::string& site) const {
  for (const RegionConfig& r : federation.regions)
    for (const std::string& s : r.sites)
      if (s == site) return &r;
  return nullptr;
}

const RegionConfig* StudyConfig::region(const std::string& id) const {
  for (const RegionConfig& r : federation.regions)
    if (r.id == id) return &r;
  return nullptr;
}

std::vector<std::string> StudyConfig::coordinator_participants() const {
  if (federation.regions.empty()) return sites;
  std::vector<std::string> ids;
  for (const RegionConfig& r : federation.regions) ids.push_back(r.id);
  return ids;
}

StatusOr<StudyConfig> parse_study_config(const std::string& yaml_text, const std::string& source) {
  YAML::Node root;
  try {
    root = YAML::Load(yaml_text);
  } catch (const YAML::Exception& e) {
    return invalid_argument(source + ": not valid YAML: " + e.what());
  }
  StudyConfig c;
  c.source = source;
  Status err;
  {
    MapReader r(root, "", source, &err);
    r.get("name", &c.name);
    r.get("task", &c.task);
    r.get("seed", &c.seed);
    r.get("rounds", &c.rounds);
    r.get("sites", &c.sites);
    {
      MapReader m(r.child("model"), "model", source, &err);
      m.get("arch", &c.model.arch);
      m.get("width", &c.model.width);
      m.get("stages", &c.model.stages);
      m.get("norm", &c.model.norm);
      m.get("dropout", &c.model.dropout);
      m.finish();
    }
    {
      MapReader d(r.child("data"), "data", source, &err);
      d.get("input_size", &c.data.input_size);
      d.get("augment", &c.data.augment);
      d.get("hflip", &c.data.hflip);
      d.get("normalise", &c.data.normalise);
      d.finish();
    }
    {
      MapReader t(r.child("train"), "train", source, &err);
      t.get("local_epochs", &c.train.local_epochs);
      t.get("epochs", &c.train.epochs);
      t.get("batch_size", &c.train.batch_size);
      t.get("lr", &c.train.lr);
      t.get("optimizer", &c.train.optimizer);
      t.get("lr_schedule", &c.train.lr_schedule);
      t.get("momentum", &c.train.momentum);
      t.get("weight_decay", &c.train.weight_decay);
      t.get("keep_optimizer_state", &c.train.keep_optimizer_state);
      t.get("threads", &c.train.threads);
      t.get("device", &c.train.device);
      t.get("amp", &c.train.amp);
      t.get("amp_dtype", &c.train.amp_dtype);
      t.get("channels_last", &c.train.channels_last);
      t.get("cudnn_benchmark", &c.train.cudnn_benchmark);
      t.get("data_parallel", &c.train.data_parallel);
      t.finish();
    }
    {
      MapReader f(r.child("federation"), "federation", source, &err);
      f.get("strategy", &c.federation.strategy);
      f.get("server_lr", &c.federation.server_lr);
      f.get("server_momentum", &c.federation.server_momentum);
      f.get("server_beta1", &c.federation.server_beta1);
      f.get("server_beta2", &c.federation.server_beta2);
      f.get("server_tau", &c.federation.server_tau);
      f.get("prox_mu", &c.federation.prox_mu);
      f.get("trim_fraction", &c.federation.trim_fraction);
      f.get("max_update_norm", &c.federation.max_update_norm);
      f.get("address", &c.federation.address);
      f.get("min_sites", &c.federation.min_sites);
      f.get("join_timeout_s", &c.federation.join_timeout_s);
      f.get("round_timeout_s", &c.federation.round_timeout_s);
      f.get("compression", &c.federation.compression);
      f.get("zstd_level", &c.federation.zstd_level);
      f.get("upstream_codec", &c.federation.upstream_codec);
      f.get("downstream_codec", &c.federation.downstream_codec);
      f.get("keys_dir", &c.federation.keys_dir);
      f.get("plaintext", &c.federation.plaintext);
      f.get("heartbeat_s", &c.federation.heartbeat_s);
      f.get("heartbeat_misses", &c.federation.heartbeat_misses);
      f.get("chunk_mb", &c.federation.chunk_mb);
      parse_regions(f.child("regions"), source, &err, &c.federation.regions);
      f.finish();
    }
    {
      MapReader p(r.child("privacy"), "privacy", source, &err);
      p.get("client_clip", &c.privacy.client_clip);
      p.get("client_noise_multiplier", &c.privacy.client_noise_multiplier);
      p.get("dp_sgd", &c.privacy.dp_sgd);
      p.get("sample_clip", &c.privacy.sample_clip);
      p.get("sample_noise_multiplier", &c.privacy.sample_noise_multiplier);
      p.get("delta", &c.privacy.delta);
      p.get("secure_aggregation", &c.privacy.secure_aggregation);
      p.get("secagg_clip", &c.privacy.secagg_clip);
      p.get("secagg_threshold", &c.privacy.secagg_threshold);
      p.finish();
    }
    {
      MapReader g(r.child("segmentation"), "segmentation", source, &err);
      g.get("channels", &c.segmentation.channels);
      g.get("labels", &c.segmentation.labels);
      g.get("patch_size", &c.segmentation.patch_size);
      g.get("spacing", &c.segmentation.spacing);
      g.get("overlap", &c.segmentation.overlap);
      g.get("blend", &c.segmentation.blend);
      g.get("foreground_fraction", &c.segmentation.foreground_fraction);
      g.get("patches_per_case", &c.segmentation.patches_per_case);
      g.get("brats_regions", &c.segmentation.brats_regions);
      g.finish();
    }
    r.finish();
  }
  FEDRAD_RETURN_IF_ERROR(err);
  FEDRAD_RETURN_IF_ERROR(validate(c));
  return c;
}

StatusOr<StudyConfig> load_study_config(const std::string& path) {
  std::ifstream in(path);
  if (!in) return not_found("config file '" + path + "' cannot be opened");
  std::stringstream ss;
  ss << in.rdbuf();
  return parse_study_config(ss.str(), path);
}

std::string to_yaml(const StudyConfig& c) {
  YAML::Emitter e;
  e << YAML::BeginMap;
  e << YAML::Key << "name" << YAML::Value << c.name;
  e << YAML::Key << "task" << YAML::Value << c.task;
  e << YAML::Key << "seed" << YAML::Value << c.seed;
  e << YAML::Key << "rounds" << YAML::Value << c.rounds;
  e << YAML::Key << "sites" << YAML::Value << YAML::Flow << c.sites;
  e << YAML::Key << "model" << YAML::Value << YAML::BeginMap;
  e << YAML::Key << "arch" << YAML::Value << c.model.arch;
  e << YAML::Key << "width" << YAML::Value << c.model.width;
  e << YAML::Key << "stages" << YAML::Value << c.model.stages;
  e << YAML::Key << "norm" << YAML::Value << c.model.norm;
  e << YAML::Key << "dropout" << YAML::Value << c.model.dropout;
  e << YAML::EndMap;
  e << YAML::Key << "data" << YAML::Value << YAML::BeginMap;
  e << YAML::Key << "input_size" << YAML::Value << c.data.input_size;
  e << YAML::Key << "augment" << YAML::Value << c.data.augment;
  e << YAML::Key << "hflip" << YAML::Value << c.data.hflip;
  e << YAML::Key << "normalise" << YAML::Value << c.data.normalise;
  e << YAML::EndMap;
  e << YAML::Key << "train" << YAML::Value << YAML::BeginMap;
  e << YAML::Key << "local_epochs" << YAML::Value << c.train.local_epochs;
  e << YAML::Key << "epochs" << YAML::Value << c.train.epochs;
  e << YAML::Key << "batch_size" << YAML::Value << c.train.batch_size;
  e << YAML::Key << "lr" << YAML::Value << c.train.lr;
  e << YAML::Key << "optimizer" << YAML::Value << c.train.optimizer;
  e << YAML::Key << "lr_schedule" << YAML::Value << c.train.lr_schedule;
  e << YAML::Key << "momentum" << YAML::Value << c.train.momentum;
  e << YAML::Key << "weight_decay" << YAML::Value << c.train.weight_decay;
  e << YAML::Key << "keep_optimizer_state" << YAML::Value << c.train.keep_optimizer_state;
  e << YAML::Key << "threads" << YAML::Value << c.train.threads;
  e << YAML::Key << "device" << YAML::Value << c.train.device;
  e << YAML::Key << "amp" << YAML::Value << c.train.amp;
  e << YAML::Key << "amp_dtype" << YAML::Value << c.train.amp_dtype;
  e << YAML::Key << "channels_last" << YAML::Value << c.train.channels_last;
  e << YAML::Key << "cudnn_benchmark" << YAML::Value << c.train.cudnn_benchmark;
  e << YAML::Key << "data_parallel" << YAML::Value << c.train.data_parallel;
  e << YAML::EndMap;
  e << YAML::Key << "federation" << YAML::Value << YAML::BeginMap;
  e << YAML::Key << "strategy" << YAML::Value << c.federation.strategy;
  e << YAML::Key << "server_lr" << YAML::Value << c.federation.server_lr;
  e << YAML::Key << "server_momentum" << YAML::Value << c.federation.server_momentum;
  e << YAML::Key << "server_beta1" << YAML::Value << c.federation.server_beta1;
  e << YAML::Key << "server_beta2" << YAML::Value << c.federation.server_beta2;
  e << YAML::Key << "server_tau" << YAML::Value << c.federation.server_tau;
  e << YAML::Key << "prox_mu" << YAML::Value << c.federation.prox_mu;
  e << YAML::Key << "trim_fraction" << YAML::Value << c.federation.trim_fraction;
  e << YAML::Key << "max_update_norm" << YAML::Value << c.federation.max_update_norm;
  e << YAML::Key << "address" << YAML::Value << c.federation.address;
  e << YAML::Key << "min_sites" << YAML::Value << c.federation.min_sites;
  e << YAML::Key << "join_timeout_s" << YAML::Value << c.federation.join_timeout_s;
  e << YAML::Key << "round_timeout_s" << YAML::Value << c.federation.round_timeout_s;
  e << YAML::Key << "compression" << YAML::Value << c.federation.compression;
  e << YAML::Key << "zstd_level" << YAML::Value << c.federation.zstd_level;
  e << YAML::Key << "upstream_codec" << YAML::Value << c.federation.upstream_codec;
  e << YAML::Key << "downstream_codec" << YAML::Value << c.federation.downstream_codec;
  e << YAML::Key << "keys_dir" << YAML::Value << c.federation.keys_dir;
  e << YAML::Key << "plaintext" << YAML::Value << c.federation.plaintext;
  e << YAML::Key << "heartbeat_s" << YAML::Value << c.federation.heartbeat_s;
  e << YAML::Key << "heartbeat_misses" << YAML::Value << c.federation.heartbeat_misses;
  e << YAML::Key << "chunk_mb" << YAML::Value << c.federation.chunk_mb;
  if (!c.federation.regions.empty()) {  // absent without regions: such configs print as before
    e << YAML::Key << "regions" << YAML::Value << YAML::BeginMap;
    for (const RegionConfig& r : c.federation.regions) {
      e << YAML::Key << r.id << YAML::Value << YAML::BeginMap;
      e << YAML::Key << "address" << YAML::Value << r.address;
      e << YAML::Key << "sites" << YAML::Value << YAML::Flow << r.sites;
      e << YAML::Key << "min_sites" << YAML::Value << r.min_sites;
      e << YAML::EndMap;
    }
    e << YAML::EndMap;
  }
  e << YAML::EndMap;
  e << YAML::Key << "privacy" << YAML::Value << YAML::BeginMap;
  e << YAML::Key << "client_clip" << YAML::Value << c.privacy.client_clip;
  e << YAML::Key << "client_noise_multiplier" << YAML::Value << c.privacy.client_noise_multiplier;
  e << YAML::Key << "dp_sgd" << YAML::Value << c.privacy.dp_sgd;
  e << YAML::Key << "sample_clip" << YAML::Value << c.privacy.sample_clip;
  e << YAML::Key << "sample_noise_multiplier" << YAML::Value << c.privacy.sample_noise_multiplier;
  e << YAML::Key << "delta" << YAML::Value << c.privacy.delta;
  e << YAML::Key << "secure_aggregation" << YAML::Value << c.privacy.secure_aggregation;
  e << YAML::Key << "secagg_clip" << YAML::Value << c.privacy.secagg_clip;
  e << YAML::Key << "secagg_threshold" << YAML::Value << c.privacy.secagg_threshold;
  e << YAML::EndMap;
  if (c.segmentation_task()) {
    const SegmentationConfig& g = c.segmentation;
    e << YAML::Key << "segmentation" << YAML::Value << YAML::BeginMap;
    e << YAML::Key << "channels" << YAML::Value << YAML::Flow << g.channels;
    e << YAML::Key << "labels" << YAML::Value << YAML::Flow << g.labels;
    e << YAML::Key << "patch_size" << YAML::Value << YAML::Flow << g.patch_size;
    e << YAML::Key << "spacing" << YAML::Value << YAML::Flow << g.spacing;
    e << YAML::Key << "overlap" << YAML::Value << g.overlap;
    e << YAML::Key << "blend" << YAML::Value << g.blend;
    e << YAML::Key << "foreground_fraction" << YAML::Value << g.foreground_fraction;
    e << YAML::Key << "patches_per_case" << YAML::Value << g.patches_per_case;
    e << YAML::Key << "brats_regions" << YAML::Value << g.brats_regions;
    e << YAML::EndMap;
  }
  e << YAML::EndMap;
  return std::string(e.c_str()) + "\n";
}

}  // namespace fedrad
