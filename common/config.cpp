#include "common/config.h"

#include <fstream>
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

bool one_of(const std::string& v, std::initializer_list<const char*> options) {
  for (const char* o : options)
    if (v == o) return true;
  return false;
}

// The stage names and their order of an update codec (federation/codec.h parses the parameters
// when the study starts; common/ cannot depend on federation/). Empty when the codec is fine.
std::string codec_problem(const std::string& codec) {
  if (codec == "none") return "";
  if (codec.empty()) return "must name a codec, e.g. zstd or delta|ef|topk:0.01|q8|zstd";
  int last = -1;
  std::stringstream in(codec);
  std::string stage;
  while (std::getline(in, stage, '|')) {
    const size_t a = stage.find_first_not_of(" \t"), b = stage.find_last_not_of(" \t");
    stage = a == std::string::npos ? "" : stage.substr(a, b - a + 1);
    const std::string name = stage.substr(0, stage.find(':'));
    int rank;
    if (name == "delta") rank = 0;
    else if (name == "ef") rank = 1;
    else if (name == "topk" || name == "randk") rank = 2;
    else if (one_of(name, {"fp16", "bf16", "q8", "q4", "q2"})) rank = 3;
    else if (name == "zstd") rank = 4;
    else
      return "unknown codec stage '" + name + "' in '" + codec +
             "' (known: delta, ef, topk, randk, fp16, bf16, q8, q4, q2, zstd)";
    if (rank == 2 && stage.find(':') == std::string::npos)
      return "codec stage '" + name + "' needs the kept fraction, e.g. " + name + ":0.01";
    if (rank <= last)
      return "codec stage '" + name + "' is out of order in '" + codec +
             "' (order: delta | ef | topk/randk | fp16/bf16/q8/q4/q2 | zstd, each at most once)";
    last = rank;
  }
  if (!codec.empty() && codec.back() == '|') return "codec '" + codec + "' ends with an empty stage";
  return "";
}

}  // namespace

Status validate(const StudyConfig& c) {
  FEDRAD_RETURN_IF_ERROR(check(c.rounds >= 1, c, "rounds", "must be at least 1"));
  FEDRAD_RETURN_IF_ERROR(check(c.model.arch == "resnet", c, "model.arch", "must be 'resnet'"));
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
  FEDRAD_RETURN_IF_ERROR(check(c.train.device == "cpu" || c.train.device.rfind("cuda", 0) == 0, c, "train.device",
                               "must be cpu, cuda or cuda:N"));
  FEDRAD_RETURN_IF_ERROR(check(c.federation.strategy == "fedavg", c, "federation.strategy", "must be 'fedavg'"));
  FEDRAD_RETURN_IF_ERROR(check(c.federation.address.find("://") != std::string::npos, c, "federation.address",
                               "must be a ZeroMQ endpoint such as tcp://127.0.0.1:5555"));
  FEDRAD_RETURN_IF_ERROR(check(c.federation.min_sites >= 0, c, "federation.min_sites", "must be >= 0"));
  FEDRAD_RETURN_IF_ERROR(check(c.sites.empty() || c.federation.min_sites <= static_cast<int>(c.sites.size()), c,
                               "federation.min_sites", "must not exceed the number of sites"));
  FEDRAD_RETURN_IF_ERROR(check(c.federation.join_timeout_s > 0, c, "federation.join_timeout_s", "must be > 0"));
  FEDRAD_RETURN_IF_ERROR(check(c.federation.round_timeout_s > 0, c, "federation.round_timeout_s", "must be > 0"));
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
  FEDRAD_RETURN_IF_ERROR(check(!pv.secure_aggregation, c, "privacy.secure_aggregation",
                               "is not yet supported by the live protocol (federation/secagg.h is a library only)"));
  std::set<std::string> names;
  for (const auto& s : c.sites) {
    FEDRAD_RETURN_IF_ERROR(check(!s.empty() && s.find('/') == std::string::npos, c, "sites",
                                 "each site must be a folder name, got '" + s + "'"));
    FEDRAD_RETURN_IF_ERROR(check(names.insert(s).second, c, "sites", "site '" + s + "' is listed twice"));
  }
  return ok_status();
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
      t.get("threads", &c.train.threads);
      t.get("device", &c.train.device);
      t.finish();
    }
    {
      MapReader f(r.child("federation"), "federation", source, &err);
      f.get("strategy", &c.federation.strategy);
      f.get("address", &c.federation.address);
      f.get("min_sites", &c.federation.min_sites);
      f.get("join_timeout_s", &c.federation.join_timeout_s);
      f.get("round_timeout_s", &c.federation.round_timeout_s);
      f.get("compression", &c.federation.compression);
      f.get("zstd_level", &c.federation.zstd_level);
      f.get("upstream_codec", &c.federation.upstream_codec);
      f.get("downstream_codec", &c.federation.downstream_codec);
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
      p.finish();
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
  e << YAML::Key << "threads" << YAML::Value << c.train.threads;
  e << YAML::Key << "device" << YAML::Value << c.train.device;
  e << YAML::EndMap;
  e << YAML::Key << "federation" << YAML::Value << YAML::BeginMap;
  e << YAML::Key << "strategy" << YAML::Value << c.federation.strategy;
  e << YAML::Key << "address" << YAML::Value << c.federation.address;
  e << YAML::Key << "min_sites" << YAML::Value << c.federation.min_sites;
  e << YAML::Key << "join_timeout_s" << YAML::Value << c.federation.join_timeout_s;
  e << YAML::Key << "round_timeout_s" << YAML::Value << c.federation.round_timeout_s;
  e << YAML::Key << "compression" << YAML::Value << c.federation.compression;
  e << YAML::Key << "zstd_level" << YAML::Value << c.federation.zstd_level;
  e << YAML::Key << "upstream_codec" << YAML::Value << c.federation.upstream_codec;
  e << YAML::Key << "downstream_codec" << YAML::Value << c.federation.downstream_codec;
  e << YAML::EndMap;
  e << YAML::Key << "privacy" << YAML::Value << YAML::BeginMap;
  e << YAML::Key << "client_clip" << YAML::Value << c.privacy.client_clip;
  e << YAML::Key << "client_noise_multiplier" << YAML::Value << c.privacy.client_noise_multiplier;
  e << YAML::Key << "dp_sgd" << YAML::Value << c.privacy.dp_sgd;
  e << YAML::Key << "sample_clip" << YAML::Value << c.privacy.sample_clip;
  e << YAML::Key << "sample_noise_multiplier" << YAML::Value << c.privacy.sample_noise_multiplier;
  e << YAML::Key << "delta" << YAML::Value << c.privacy.delta;
  e << YAML::Key << "secure_aggregation" << YAML::Value << c.privacy.secure_aggregation;
  e << YAML::EndMap;
  e << YAML::EndMap;
  return std::string(e.c_str()) + "\n";
}

}  // namespace fedrad
