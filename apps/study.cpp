#include "apps/study.h"

#include "apps/report.h"
#include "apps/segmentation.h"
#include "apps/status_server.h"

#include <fcntl.h>
#include <netinet/in.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <csignal>
#include <cstring>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <thread>

#include <torch/torch.h>

#include "common/log.h"
#include "common/metrics.h"
#include "demo_config.h"
#include "federation/audit.h"
#include "federation/dp.h"
#include "federation/federation.h"
#include "federation/keys.h"
#include "federation/regional.h"
#include "imaging/dicom.h"
#include "imaging/scan.h"
#include "imaging/site_index.h"
#include "imaging/synthetic.h"
#include "training/checkpoint.h"
#include "training/data_parallel.h"
#include "training/dataset.h"
#include "training/learner.h"
#include "training/trainer.h"

namespace fedrad::app {
namespace fs = std::filesystem;
using nlohmann::json;

const char* demo_config_yaml() { return kDemoConfigYaml; }

namespace {

int cores() { return static_cast<int>(std::max(1u, std::thread::hardware_concurrency())); }

Status make_dir(const std::string& dir) {
  std::error_code ec;
  fs::create_directories(dir, ec);
  if (ec) return io_error(dir + ": cannot create folder: " + ec.message());
  return ok_status();
}

double p_or(const json& j, const char* key) { return j.value(key, 0.0); }

json metrics_json(const BinaryMetrics& m) {
  return {{"auc", m.auc},       {"accuracy", m.accuracy}, {"sensitivity", m.sensitivity},
          {"specificity", m.specificity}, {"threshold", m.threshold}, {"n", m.n}, {"positives", m.positives}};
}

// A TCP port that was free a moment ago, for simulations on one machine.
StatusOr<int> free_port() {
  int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0) return io_error("cannot open a socket to find a free port");
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = 0;
  socklen_t len = sizeof(addr);
  if (::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0 ||
      ::getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len) != 0) {
    ::close(fd);
    return io_error("cannot bind a socket to find a free port");
  }
  const int port = ntohs(addr.sin_port);
  ::close(fd);
  return port;
}

// Writes what a study produces: per-round models, global.pt, metrics (JSON lines and CSV) and a
// summary; prints progress. Called from the coordinator's round callback (one thread).
class StudyRecorder {
 public:
  StudyRecorder(const StudyConfig& config, std::string out_dir, StatusServer* status = nullptr)
      : config_(config), out_(std::move(out_dir)), model_(training::build_model(config)), status_(status) {}

  // resume: the coordinator continues a study from its checkpoint; the metrics files are kept
  // (trimmed to the checkpoint's round by resume_after).
  Status open(bool resume = false) {
    FEDRAD_RETURN_IF_ERROR(make_dir(out_ + "/models"));
    std::ofstream cfg(out_ + "/config.yaml");
    cfg << to_yaml(config_);
    start_ = std::chrono::steady_clock::now();
    std::error_code ec;
    if (resume && fs::exists(out_ + "/metrics.jsonl") && fs::file_size(out_ + "/metrics.csv", ec) > 0 && !ec) {
      jsonl_.open(out_ + "/metrics.jsonl", std::ios::app);
      csv_.open(out_ + "/metrics.csv", std::ios::app);
      if (!jsonl_ || !csv_ || !cfg) return io_error(out_ + ": cannot write the study's output files");
      return ok_status();
    }
    jsonl_.open(out_ + "/metrics.jsonl", std::ios::trunc);
    csv_.open(out_ + "/metrics.csv", std::ios::trunc);
    if (!jsonl_ || !csv_ || !cfg) return io_error(out_ + ": cannot write the study's output files");
    csv_ << "round,model_round,scope,n,auc,accuracy,sensitivity,specificity,threshold,loss,train_loss,"
            "bytes_up,bytes_down,raw_bytes_up,raw_bytes_down,seconds";
    // Segmentation studies: mean Dice over structures, then Dice and HD95 per structure.
    if (config_.segmentation_task()) {
      csv_ << ",mean_dice";
      for (const auto& st : seg_structures(config_.segmentation.labels, config_.segmentation.brats_regions))
        csv_ << ",dice_" << csv_name(st.name);
      for (const auto& st : seg_structures(config_.segmentation.labels, config_.segmentation.brats_regions))
        csv_ << ",hd95_" << csv_name(st.name);
    }
    csv_ << "\n" << std::flush;  // a coordinator killed before its first round leaves the header
    start_ = std::chrono::steady_clock::now();
    return ok_status();
  }

  // After a coordinator restart: rows of rounds after `round` (written after the checkpoint the
  // study resumes from) go, and the byte totals of the kept rounds count again.
  void resume_after(uint32_t round) {
    jsonl_.close();
    csv_.close();
    auto keep = [&](const std::string& path, bool csv) {
      std::ifstream in(path);
      std::string line, kept;
      bool header = csv;
      while (std::getline(in, line)) {
        if (header) {
          kept += line + "\n";
          header = false;
          continue;
        }
        uint32_t r = 0;
        try {
          if (csv) {
            r = static_cast<uint32_t>(std::stoul(line.substr(0, line.find(','))));
          } else {
            const json j = json::parse(line);
            r = j.at("round").get<uint32_t>();
            if (r <= round && j.value("scope", "") == "global") {
              bytes_up_ += j.value("bytes_up", 0.0);
              bytes_down_ += j.value("bytes_down", 0.0);
              raw_up_ += j.value("raw_bytes_up", 0.0);
              raw_down_ += j.value("raw_bytes_down", 0.0);
            }
          }
        } catch (const std::exception&) {
          continue;  // a line torn by the kill
        }
        if (r <= round) kept += line + "\n";
      }
      in.close();
      Status st = training::write_file_atomic(path, kept);
      if (!st.ok()) logger("coordinator")->error("resume: {}", st.to_string());
    };
    keep(out_ + "/metrics.jsonl", false);
    keep(out_ + "/metrics.csv", true);
    jsonl_.open(out_ + "/metrics.jsonl", std::ios::app);
    csv_.open(out_ + "/metrics.csv", std::ios::app);
    rounds_seen_ = 0;
  }

  void on_round(const fed::RoundLog& log, const fed::Weights& weights) {
    if (status_) status_->on_round(log);
    log_progress(log);
    const int model_round = static_cast<int>(log.round) - 1;  // the model evaluated this round
    seg_ = &log.global_seg;
    write_row(log.round, model_round, "global", log.global_eval, log.global_eval_loss, 0, log.bytes_up, log.bytes_down,
              log.raw_bytes_up, log.raw_bytes_down, log.seconds, true, log.dp_epsilon, log.dp_delta);
    for (const auto& s : log.sites) {
      seg_ = &s.seg;
      write_row(log.round, model_round, s.site_id, s.eval, s.eval_loss, s.train_loss, s.bytes_up, s.bytes_down,
                s.raw_bytes_up, s.raw_bytes_down, s.train_seconds, s.ok);
    }
    seg_ = nullptr;
    jsonl_.flush();
    csv_.flush();

    Status st = training::load_weights(*model_, weights);
    training::ModelMeta meta;
    meta.kind = "global";
    if (log.evaluation_only) {
      meta.round = config_.rounds;
      meta.threshold = log.global_eval.threshold;
      meta.val_auc = log.global_eval.auc;
      final_ = log;
      if (st.ok()) st = training::save_model(out_ + "/global.pt", *model_, config_, meta);
      // The pooled validation scores of the final model, for `fedrad report` (ROC, confusion matrix).
      if (st.ok())
        st = training::write_file_atomic(
            out_ + "/final_histogram.json",
            histogram_to_json(log.pooled_histogram, log.global_eval.threshold,
                              "pooled validation score histograms of the sites (final evaluation)")
                    .dump() +
                "\n");
    } else {
      meta.round = static_cast<int>(log.round);
      meta.threshold = log.global_eval.threshold;  // provisional: chosen on the previous model
      bytes_up_ += log.bytes_up;
      bytes_down_ += log.bytes_down;
      raw_up_ += log.raw_bytes_up;
      raw_down_ += log.raw_bytes_down;
      char name[64];
      std::snprintf(name, sizeof(name), "/models/round-%03u.pt", log.round);
      if (st.ok()) st = training::save_model(out_ + name, *model_, config_, meta);
      if (st.ok()) st = training::save_model(out_ + "/global.pt", *model_, config_, meta);
    }
    if (!st.ok()) logger("coordinator")->error("saving the round {} model failed: {}", log.round, st.to_string());
  }

  // summary.json and a final table on stdout.
  Status finish() {
    const double wall = std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
    const double rounds = std::max(1, config_.rounds);
    json sites = json::array();
    for (const auto& s : final_.sites) sites.push_back({{"site", s.site_id}, {"ok", s.ok}, {"metrics", metrics_json(s.eval)}});
    json summary = {
        {"study", config_.name},
        {"rounds", config_.rounds},
        {"sites", config_.sites},
        {"wall_seconds", wall},
        {"global", metrics_json(final_.global_eval)},
        {"per_site", sites},
        {"bytes_up_per_round", bytes_up_ / rounds},
        {"bytes_down_per_round", bytes_down_ / rounds},
        {"raw_bytes_up_per_round", raw_up_ / rounds},
        {"raw_bytes_down_per_round", raw_down_ / rounds},
        {"model", "global.pt"},
    };
    if (config_.segmentation_task()) {
      summary["task"] = "segmentation";
      summary["segmentation"] = seg_scores_json(final_.global_seg, config_);
      for (size_t i = 0; i < final_.sites.size() && i < summary["per_site"].size(); ++i)
        summary["per_site"][i]["segmentation"] = seg_scores_json(final_.sites[i].seg, config_);
    }
    summary["secure_aggregation"] = config_.privacy.secure_aggregation;
    if (final_epsilon_ >= 0) summary["privacy"] = {{"epsilon", final_epsilon_}, {"delta", config_.privacy.delta},
                                                   {"client_clip", config_.privacy.client_clip},
                                                   {"client_noise_multiplier", config_.privacy.client_noise_multiplier}};
    FEDRAD_RETURN_IF_ERROR(training::write_file_atomic(out_ + "/summary.json", summary.dump(2) + "\n"));
    const auto& g = final_.global_eval;
    std::printf("\nStudy '%s': %d rounds, %zu sites, %.1f s\n", config_.name.c_str(), config_.rounds,
                config_.sites.size(), wall);
    if (config_.segmentation_task()) {
      print_seg_table(wall, rounds);
      return ok_status();
    }
    std::printf("%-12s %6s %7s %9s %7s %7s\n", "scope", "n", "AUC", "accuracy", "sens", "spec");
    for (const auto& s : final_.sites)
      std::printf("%-12s %6lld %7.4f %9.4f %7.4f %7.4f\n", s.site_id.c_str(), static_cast<long long>(s.eval.n),
                  s.eval.auc, s.eval.accuracy, s.eval.sensitivity, s.eval.specificity);
    std::printf("%-12s %6lld %7.4f %9.4f %7.4f %7.4f   (threshold %.3f)\n", "global", static_cast<long long>(g.n),
                g.auc, g.accuracy, g.sensitivity, g.specificity, g.threshold);
    std::printf("bytes per round: up %.1f KB, down %.1f KB (raw fp32: %.1f KB / %.1f KB)\n", bytes_up_ / rounds / 1e3,
                bytes_down_ / rounds / 1e3, raw_up_ / rounds / 1e3, raw_down_ / rounds / 1e3);
    std::printf("model: %s/global.pt   metrics: %s/metrics.csv\n", out_.c_str(), out_.c_str());
    std::fflush(stdout);
    return ok_status();
  }

 private:
  // One line per round for people watching: sites reported, bytes, elapsed and time left.
  void log_progress(const fed::RoundLog& log) {
    ++rounds_seen_;
    round_seconds_ += log.seconds;
    int ok = 0;
    for (const auto& s : log.sites) ok += s.ok ? 1 : 0;
    const double elapsed = std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
    const double eta = eta_seconds(round_seconds_, rounds_seen_, config_.rounds);
    auto l = logger("progress");
    if (config_.segmentation_task()) {
      if (log.evaluation_only)
        l->info("[final evaluation] {}/{} sites reported, mean Dice {:.4f}, elapsed {}", ok, log.sites.size(),
                log.global_seg.mean_dice_all(), format_duration(elapsed));
      else
        l->info("[round {}/{}] {}/{} sites reported, mean Dice {:.4f} (model after round {}), {} up / {} down, "
                "{:.1f} s; elapsed {}, about {} left",
                log.round, config_.rounds, ok, log.sites.size(), log.global_seg.mean_dice_all(), log.round - 1,
                human_bytes(static_cast<double>(log.bytes_up)), human_bytes(static_cast<double>(log.bytes_down)),
                log.seconds, format_duration(elapsed), format_duration(eta));
      return;
    }
    if (log.evaluation_only) {
      l->info("[final evaluation] {}/{} sites reported, AUC {:.4f}, elapsed {}", ok, log.sites.size(),
              log.global_eval.auc, format_duration(elapsed));
    } else {
      l->info("[round {}/{}] {}/{} sites reported, AUC {:.4f} (model after round {}), {} up / {} down, "
              "{:.1f} s; elapsed {}, about {} left",
              log.round, config_.rounds, ok, log.sites.size(), log.global_eval.auc, log.round - 1,
              human_bytes(static_cast<double>(log.bytes_up)), human_bytes(static_cast<double>(log.bytes_down)),
              log.seconds, format_duration(elapsed), format_duration(eta));
    }
  }

  static std::string csv_name(std::string name) {
    for (char& ch : name)
      if (ch == ' ') ch = '_';
    return name;
  }

  // Segmentation studies: mean Dice (and HD95) per structure, per site and pooled.
  void print_seg_table(double wall, double rounds) {
    (void)wall;
    const auto structures = seg_structures(config_.segmentation.labels, config_.segmentation.brats_regions);
    std::printf("%-12s %6s %9s", "scope", "cases", "mean Dice");
    for (const auto& st : structures) std::printf(" %9s", ("Dice " + st.name.substr(st.name.find(' ') + 1)).c_str());
    std::printf("\n");
    auto row = [&](const std::string& scope, const SegScoreSums& sums) {
      std::printf("%-12s %6llu %9.4f", scope.c_str(), static_cast<unsigned long long>(sums.cases), sums.mean_dice_all());
      for (double d : sums.mean_dice()) std::printf(" %9.4f", d);
      std::printf("\n");
    };
    for (const auto& s : final_.sites) row(s.site_id, s.seg);
    row("global", final_.global_seg);
    std::printf("bytes per round: up %.1f KB, down %.1f KB (raw fp32: %.1f KB / %.1f KB)\n", bytes_up_ / rounds / 1e3,
                bytes_down_ / rounds / 1e3, raw_up_ / rounds / 1e3, raw_down_ / rounds / 1e3);
    std::printf("model: %s/global.pt   metrics: %s/metrics.csv\n", out_.c_str(), out_.c_str());
    std::fflush(stdout);
  }

  void write_row(uint32_t round, int model_round, const std::string& scope, const BinaryMetrics& m, double loss,
                 double train_loss, uint64_t up, uint64_t down, uint64_t raw_up, uint64_t raw_down, double seconds,
                 bool ok = true, double dp_epsilon = -1, double dp_delta = 0) {
    json j = {{"round", round}, {"model_round", model_round}, {"scope", scope}, {"ok", ok}, {"loss", loss},
              {"train_loss", train_loss}, {"bytes_up", up}, {"bytes_down", down}, {"raw_bytes_up", raw_up},
              {"raw_bytes_down", raw_down}, {"seconds", seconds}};
    j.update(metrics_json(m));
    if (dp_epsilon >= 0) {
      j["dp_epsilon"] = dp_epsilon;
      j["dp_delta"] = dp_delta;
      final_epsilon_ = dp_epsilon;
    }
    if (config_.segmentation_task() && seg_ != nullptr) j["segmentation"] = seg_scores_json(*seg_, config_);
    jsonl_ << j.dump() << "\n";
    csv_ << round << "," << model_round << "," << scope << "," << m.n << "," << m.auc << "," << m.accuracy << ","
         << m.sensitivity << "," << m.specificity << "," << m.threshold << "," << loss << "," << train_loss << ","
         << up << "," << down << "," << raw_up << "," << raw_down << "," << seconds;
    if (config_.segmentation_task()) {
      const SegScoreSums empty;
      const SegScoreSums& g = seg_ != nullptr ? *seg_ : empty;
      const size_t n = seg_structures(config_.segmentation.labels, config_.segmentation.brats_regions).size();
      const auto d = g.mean_dice();
      const auto h = g.mean_hd95();
      csv_ << "," << g.mean_dice_all();
      for (size_t i = 0; i < n; ++i) csv_ << "," << (i < d.size() ? std::to_string(d[i]) : "");
      for (size_t i = 0; i < n; ++i) csv_ << "," << (i < h.size() && std::isfinite(h[i]) ? std::to_string(h[i]) : "");
    }
    csv_ << "\n";
  }

  StudyConfig config_;
  std::string out_;
  std::shared_ptr<torch::nn::Module> model_;  // the classifier or the U-Net (task: segmentation)
  std::ofstream jsonl_, csv_;
  fed::RoundLog final_;
  double bytes_up_ = 0, bytes_down_ = 0, raw_up_ = 0, raw_down_ = 0;
  std::chrono::steady_clock::time_point start_;
  StatusServer* status_ = nullptr;
  int rounds_seen_ = 0;
  double round_seconds_ = 0;
  double final_epsilon_ = -1;
  const SegScoreSums* seg_ = nullptr;  // the segmentation scores of the row being written
};

fed::CoordinatorOptions coordinator_options(const StudyConfig& config) {
  fed::CoordinatorOptions o;
  o.bind_address = config.federation.address;
  o.study = config.name;
  o.expected_sites = config.coordinator_participants();  // the regions, with federation.regions
  o.min_sites = config.federation.min_sites;
  o.rounds = config.rounds;
  o.settings.local_epochs = static_cast<uint32_t>(config.train.local_epochs);
  o.settings.batch_size = static_cast<uint32_t>(config.train.batch_size);
  o.settings.lr = config.train.lr;
  o.settings.seed = config.seed;
  o.join_timeout_s = config.federation.join_timeout_s;
  o.round_timeout_s = config.federation.round_timeout_s;
  o.compression = config.federation.compression == "zstd" ? fed::Compression::kZstd : fed::Compression::kNone;
  o.zstd_level = config.federation.zstd_level;
  o.upstream_codec = config.federation.upstream_codec;
  o.downstream_codec = config.federation.downstream_codec;
  o.heartbeat_s = config.federation.heartbeat_s;
  o.heartbeat_misses = config.federation.heartbeat_misses;
  o.chunk_bytes = static_cast<size_t>(config.federation.chunk_mb) << 20;
  const FederationConfig& f = config.federation;
  o.strategy.name = f.strategy;
  o.strategy.server_lr = f.server_lr;
  o.strategy.server_momentum = f.server_momentum;
  o.strategy.beta1 = f.server_beta1;
  o.strategy.beta2 = f.server_beta2;
  o.strategy.tau = f.server_tau;
  o.strategy.prox_mu = f.prox_mu;
  o.strategy.trim_fraction = f.trim_fraction;
  o.strategy.max_update_norm = f.max_update_norm;
  o.secure_aggregation.enabled = config.privacy.secure_aggregation;
  o.secure_aggregation.clip = config.privacy.secagg_clip;
  o.secure_aggregation.threshold = static_cast<uint32_t>(config.privacy.secagg_threshold);
  // The round-1 global model: the config's architecture, initialised from the study seed.
  torch::manual_seed(config.seed);
  o.initial_weights = training::to_weights(*training::build_model(config));
  return o;
}

// CurveZMQ keys named by federation.keys_dir; errors name the key and the file.
StatusOr<fed::CoordinatorKeys> coordinator_keys(const StudyConfig& config) {
  if (config.federation.keys_dir.empty()) return fed::CoordinatorKeys{};
  auto keys = fed::load_coordinator_keys(config.federation.keys_dir, config.coordinator_participants());
  if (!keys.ok()) return keys.status().with_context(config.source + ": federation.keys_dir");
  return keys;
}

// A region's keys towards its sites: its own pair (DIR/<region>.secret, the one it joins the
// coordinator with) as the server key, its sites' public keys as the allow-list.
StatusOr<fed::CoordinatorKeys> region_keys(const StudyConfig& config, const RegionConfig& region) {
  if (config.federation.keys_dir.empty()) return fed::CoordinatorKeys{};
  const std::string& dir = config.federation.keys_dir;
  auto load = [&]() -> StatusOr<fed::CoordinatorKeys> {
    FEDRAD_RETURN_IF_ERROR(fed::require_curve());
    fed::CoordinatorKeys keys;
    FEDRAD_ASSIGN_OR_RETURN(keys.own, fed::read_secret_key(fed::site_secret_key_path(dir, region.id)));
    for (const std::string& s : region.sites) {
      FEDRAD_ASSIGN_OR_RETURN(std::string pub, fed::read_public_key(fed::site_public_key_path(dir, s)));
      keys.sites[s] = pub;
    }
    return keys;
  };
  auto keys = load();
  if (!keys.ok()) return keys.status().with_context(config.source + ": federation.keys_dir (region '" + region.id + "')");
  return keys;
}

StatusOr<fed::SiteKeys> site_keys(const StudyConfig& config, const std::string& site_id) {
  if (config.federation.keys_dir.empty()) return fed::SiteKeys{};
  if (const RegionConfig* region = config.region_of_site(site_id)) {
    // A site of a region talks to its region, whose key is DIR/sites/<region>.pub.
    auto keys = [&]() -> StatusOr<fed::SiteKeys> {
      FEDRAD_RETURN_IF_ERROR(fed::require_curve());
      fed::SiteKeys k;
      FEDRAD_ASSIGN_OR_RETURN(k.own, fed::read_secret_key(fed::site_secret_key_path(config.federation.keys_dir, site_id)));
      FEDRAD_ASSIGN_OR_RETURN(k.coordinator_public_key,
                              fed::read_public_key(fed::site_public_key_path(config.federation.keys_dir, region->id)));
      return k;
    }();
    if (!keys.ok()) return keys.status().with_context(config.source + ": federation.keys_dir");
    return keys;
  }
  auto keys = fed::load_site_keys(config.federation.keys_dir, site_id);
  if (!keys.ok()) return keys.status().with_context(config.source + ": federation.keys_dir");
  return keys;
}

Status run_coordinator_to(const StudyConfig& config, const std::string& out_dir, int status_port, bool resume = false) {
  if (config.sites.empty()) return invalid_argument(config.source + ": sites: list the sites of the study");
  FEDRAD_ASSIGN_OR_RETURN(fed::CoordinatorKeys keys, coordinator_keys(config));
  std::unique_ptr<StatusServer> status;
  if (status_port > 0) {
    status = std::make_unique<StatusServer>(config.name, config.rounds, config.coordinator_participants());
    if (config.segmentation_task()) {
      std::vector<std::string> names;
      for (const auto& s : seg_structures(config.segmentation.labels, config.segmentation.brats_regions))
        names.push_back(s.name);
      status->set_seg_structures(std::move(names));
    }
    FEDRAD_RETURN_IF_ERROR(status->start(status_port).status());
  }
  StudyRecorder recorder(config, out_dir, status.get());
  FEDRAD_RETURN_IF_ERROR(recorder.open(resume));
  auto options = coordinator_options(config);
  options.keys = std::move(keys);
  // Each completed round is checkpointed here; `fedrad coordinator --resume` continues from it.
  options.state_dir = out_dir + "/state";
  options.resume = resume;
  // Client-level DP: every site takes part in every round (q = 1), one Gaussian mechanism each.
  fed::dp::RdpAccountant accountant;
  options.on_round_end = [&](const fed::RoundLog& log, const fed::Weights& w) {
    if (config.privacy.client_clip <= 0 || config.privacy.client_noise_multiplier <= 0) return recorder.on_round(log, w);
    fed::RoundLog with_dp = log;
    if (!log.evaluation_only) accountant.step(/*q=*/1.0, config.privacy.client_noise_multiplier);
    with_dp.dp_epsilon = accountant.spent(config.privacy.delta).epsilon;
    with_dp.dp_delta = config.privacy.delta;
    recorder.on_round(with_dp, w);
  };
  options.on_resume = [&](const fed::RoundLog& last, const fed::Weights&) {
    recorder.resume_after(last.round);
    if (config.privacy.client_clip > 0 && config.privacy.client_noise_multiplier > 0)
      for (uint32_t r = 0; r < last.round; ++r) accountant.step(/*q=*/1.0, config.privacy.client_noise_multiplier);
  };
  if (status) status->set_state("running");
  auto result = fed::run_coordinator(std::move(options));  // takes the initial model: not held twice
  if (!result.ok()) {
    if (status) status->set_state("failed");
    return result.status();
  }
  return recorder.finish();
}

// Starts `fedrad site ...` as a child that dies with its parent; its output goes to `log_path`
// ("" = this process's output).
StatusOr<pid_t> spawn_site(const std::vector<std::string>& args, const std::string& log_path) {
  std::vector<char*> argv;
  for (const auto& a : args) argv.push_back(const_cast<char*>(a.c_str()));
  argv.push_back(nullptr);
  const pid_t parent = ::getpid();
  pid_t pid = ::fork();
  if (pid < 0) return io_error("cannot start a site process");
  if (pid == 0) {
    ::prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (::getppid() != parent) ::_exit(1);
    int fd = log_path.empty() ? -1 : ::open(log_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (fd >= 0) {
      ::dup2(fd, STDOUT_FILENO);
      ::dup2(fd, STDERR_FILENO);
      ::close(fd);
    }
    ::execv("/proc/self/exe", argv.data());
    ::_exit(127);
  }
  return pid;
}

int site_index(const StudyConfig& config, const std::string& site_id) {
  for (size_t i = 0; i < config.sites.size(); ++i)
    if (config.sites[i] == site_id) return static_cast<int>(i) + 1;
  return 0;
}

// Ranks 1.. of a data-parallel site (train.data_parallel > 1) as `fedrad site-worker` children
// that die with this process. Their control channel is an ipc socket in a fresh folder only this
// user can enter (the gradients and weights never touch the network). The destructor, after the
// learner has sent STOP, waits for them a while, then kills what is left. A worker that dies or
// fails before that ends the site: a lockstep group cannot train with a rank missing.
class SiteWorkers {
 public:
  static StatusOr<std::unique_ptr<SiteWorkers>> start(const StudyConfig& config, const std::string& site_dir,
                                                       const std::string& site_id, int threads) {
    std::unique_ptr<SiteWorkers> w(new SiteWorkers);
    std::string tmpl = (fs::temp_directory_path() / "fedrad-dp-XXXXXX").string();
    if (!::mkdtemp(tmpl.data())) return io_error(tmpl + ": cannot create the data-parallel control folder");
    w->dir_ = tmpl;
    w->address_ = "ipc://" + tmpl + "/control";
    const std::string config_path = tmpl + "/config.yaml";
    std::ofstream cfg(config_path);
    cfg << to_yaml(config);
    if (!cfg) return io_error(config_path + ": cannot write");
    const int world = config.train.data_parallel;
    w->threads_ = std::max(1, (threads > 0 ? threads : cores()) / world);
    const auto level = logger(site_id)->level();
    for (int r = 1; r < world; ++r) {
      std::vector<std::string> args = {"fedrad", "site-worker", "--config", config_path, "--data", site_dir,
                                       "--site-id", site_id, "--rank", std::to_string(r), "--world",
                                       std::to_string(world), "--control", w->address_, "--threads",
                                       std::to_string(w->threads_)};
      if (level <= spdlog::level::debug) args.push_back("--verbose");
      else if (level >= spdlog::level::warn) args.push_back("--quiet");
      FEDRAD_ASSIGN_OR_RETURN(pid_t pid, spawn_site(args, ""));
      w->pids_.push_back(pid);
    }
    w->watcher_ = std::thread([raw = w.get(), site_id] { raw->watch(site_id); });
    return w;
  }

  ~SiteWorkers() {
    done_ = true;
    if (watcher_.joinable()) watcher_.join();
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(30);
    for (pid_t pid : pids_) {
      int status = 0;
      while (::waitpid(pid, &status, WNOHANG) == 0) {
        if (std::chrono::steady_clock::now() > deadline) {
          ::kill(pid, SIGKILL);
          ::waitpid(pid, &status, 0);
          break;
        }
        std::this_thread::sleep_for(std::chrono::milliseconds(50));
      }
    }
    std::error_code ec;
    if (!dir_.empty()) fs::remove_all(dir_, ec);
  }

  const std::string& address() const { return address_; }
  int threads() const { return threads_; }

 private:
  SiteWorkers() = default;

  void watch(const std::string& site_id) {
    while (!done_) {
      for (pid_t pid : pids_) {
        siginfo_t info{};  // WNOWAIT: the destructor still reaps it
        if (::waitid(P_PID, static_cast<id_t>(pid), &info, WEXITED | WNOHANG | WNOWAIT) != 0 || info.si_pid != pid)
          continue;
        // Exit 0 is a worker leaving at rank 0's STOP (shutdown, racing this destructor); a worker
        // stopped during a failed fit exits with an error.
        if (done_ || (info.si_code == CLD_EXITED && info.si_status == 0)) continue;
        logger(site_id)->error("data-parallel worker process {} stopped ({} {}); the site stops too", pid,
                               info.si_code == CLD_EXITED ? "exit code" : "signal", info.si_status);
        for (pid_t other : pids_) ::kill(other, SIGKILL);
        std::fflush(nullptr);
        std::_Exit(1);
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(200));
    }
  }

  std::string dir_, address_;
  int threads_ = 1;
  std::vector<pid_t> pids_;
  std::atomic<bool> done_{false};
  std::thread watcher_;
};

}  // namespace

Status coordinator(const StudyConfig& config, const std::string& out_dir, int status_port, bool resume) {
  FEDRAD_RETURN_IF_ERROR(make_dir(out_dir));
  return run_coordinator_to(config, out_dir, status_port, resume);
}

Status write_keys(const std::string& dir, const std::vector<std::string>& sites) {
  if (sites.empty()) return invalid_argument("keys: no sites (give --config with `sites` or --site)");
  FEDRAD_ASSIGN_OR_RETURN(auto written, fed::write_study_keys(dir, sites));
  for (const auto& f : written) std::printf("wrote %s\n", f.c_str());
  std::printf(
      "coordinator: %s/coordinator.secret and %s/sites/*.pub; site S: %s/S.secret and %s/coordinator.pub "
      "(set federation.keys_dir to the folder holding them on each machine)\n",
      dir.c_str(), dir.c_str(), dir.c_str(), dir.c_str());
  return ok_status();
}

Status simulate(const StudyConfig& config_in, const std::string& data_root, const std::string& out_dir,
                int status_port) {
  StudyConfig config = config_in;
  if (config.sites.empty()) return invalid_argument(config.source + ": sites: list the sites to simulate");
  for (const auto& s : config.sites) {
    const fs::path dir = fs::path(data_root) / s;
    const char* listing = config.segmentation_task() ? "cases.csv" : "labels.csv";
    for (const char* split : {"train", "val"})
      if (!fs::exists(dir / split / listing))
        return not_found((dir / split / listing).string() + ": site '" + s + "' has no " + split + " split");
  }
  FEDRAD_RETURN_IF_ERROR(make_dir(out_dir + "/logs"));
  FEDRAD_ASSIGN_OR_RETURN(int port, free_port());
  config.federation.address = "tcp://127.0.0.1:" + std::to_string(port);
  // A tier of regional aggregators: one process per region, each on a port of its own here.
  std::vector<std::string> key_owners = config.sites;
  for (RegionConfig& r : config.federation.regions) {
    FEDRAD_ASSIGN_OR_RETURN(int region_port, free_port());
    r.address = "tcp://127.0.0.1:" + std::to_string(region_port);
    key_owners.push_back(r.id);
  }
  // Encrypted and authenticated by default: keys for the coordinator and each site in OUT/keys.
  if (config.federation.keys_dir.empty() && !config.federation.plaintext) {
    const std::string keys_dir = fs::absolute(fs::path(out_dir) / "keys").lexically_normal().string();
    auto written = fed::write_study_keys(keys_dir, key_owners);
    if (!written.ok()) return written.status().with_context("simulate: keys");
    config.federation.keys_dir = keys_dir;
  }
  // The sites share this machine's cores; the coordinator needs little.
  const int threads = config.train.threads > 0 ? config.train.threads
                                               : std::max(1, cores() / static_cast<int>(config.sites.size()));
  const std::string config_path = out_dir + "/config.yaml";
  {
    std::ofstream cfg(config_path);
    cfg << to_yaml(config);
    if (!cfg) return io_error(config_path + ": cannot write");
  }
  auto log = logger("simulate");
  log->info("study '{}': {} sites, {} rounds, coordinator at {}, site logs in {}/logs", config.name, config.sites.size(),
            config.rounds, config.federation.address, out_dir);

  std::vector<std::pair<std::string, pid_t>> children;
  for (const auto& s : config.sites) {
    std::vector<std::string> args = {"fedrad", "site", "--config", config_path, "--data", (fs::path(data_root) / s).string(),
                                     "--site-id", s, "--threads", std::to_string(threads),
                                     "--audit-log", out_dir + "/logs/audit-" + s + ".log"};
    // The sites log at this process's verbosity (-v / -q).
    const auto level = log->level();
    if (level <= spdlog::level::debug) args.push_back("--verbose");
    else if (level >= spdlog::level::warn) args.push_back("--quiet");
    auto pid = spawn_site(args, out_dir + "/logs/" + s + ".log");
    if (!pid.ok()) return pid.status();
    children.emplace_back(s, *pid);
  }
  for (const RegionConfig& r : config.federation.regions) {
    std::vector<std::string> args = {"fedrad", "region", "--config", config_path, "--region-id", r.id};
    const auto level = log->level();
    if (level <= spdlog::level::debug) args.push_back("--verbose");
    else if (level >= spdlog::level::warn) args.push_back("--quiet");
    auto pid = spawn_site(args, out_dir + "/logs/" + r.id + ".log");
    if (!pid.ok()) return pid.status();
    children.emplace_back(r.id, *pid);
    std::string names;
    for (const std::string& x : r.sites) names += (names.empty() ? "" : ", ") + x;
    log->info("region '{}' at {}: sites {}", r.id, r.address, names);
  }
  // A site that fails (bad data, crash) ends the simulation with its log named, instead of
  // leaving the coordinator waiting for its deadline.
  std::atomic<bool> done{false};
  std::thread watcher([&] {
    while (!done) {
      for (auto& [name, pid] : children) {
        if (pid <= 0) continue;
        int status = 0;
        if (::waitpid(pid, &status, WNOHANG) == pid) {
          pid = -1;
          const bool clean = WIFEXITED(status) && WEXITSTATUS(status) == 0;
          if (!clean && !done) {
            log->error("site '{}' stopped unexpectedly ({}); see {}/logs/{}.log", name,
                       WIFSIGNALED(status) ? "signal " + std::to_string(WTERMSIG(status))
                                           : "exit code " + std::to_string(WEXITSTATUS(status)),
                       out_dir, name);
            for (auto& c : children)
              if (c.second > 0) ::kill(c.second, SIGKILL);
            std::fflush(nullptr);
            std::_Exit(1);
          }
        }
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(200));
    }
  });
  Status st = run_coordinator_to(config, out_dir, status_port);
  done = true;
  watcher.join();
  for (auto& [name, pid] : children) {
    if (pid <= 0) continue;
    if (!st.ok()) ::kill(pid, SIGKILL);
    int status = 0;
    ::waitpid(pid, &status, 0);
  }
  return st;
}


namespace {

// What a participant that talks to a coordinator (a site, or a region towards the coordinator)
// takes from the study config: transport, codecs, deadlines, heartbeats and its keys.
StatusOr<fed::SiteOptions> site_options(const StudyConfig& config, const std::string& id, const std::string& address) {
  fed::SiteOptions o;
  o.coordinator_address = address;
  o.site_id = id;
  o.study = config.name;
  o.compression = config.federation.compression == "zstd" ? fed::Compression::kZstd : fed::Compression::kNone;
  o.zstd_level = config.federation.zstd_level;
  o.upstream_codec = config.federation.upstream_codec;
  o.downstream_codec = config.federation.downstream_codec;
  o.idle_timeout_s = config.federation.round_timeout_s + config.federation.join_timeout_s;
  o.heartbeat_s = config.federation.heartbeat_s;
  o.chunk_bytes = static_cast<size_t>(config.federation.chunk_mb) << 20;
  FEDRAD_ASSIGN_OR_RETURN(o.keys, site_keys(config, id));
  return o;
}

}  // namespace

Status site(const StudyConfig& config, const std::string& site_dir, const std::string& site_id,
            const std::string& address, int threads, const std::string& audit_log) {
  const int n = threads > 0 ? threads : config.train.threads;
  auto log = logger(site_id);
  FEDRAD_ASSIGN_OR_RETURN(const torch::Device device, training::prepare_device(config.train, config.train.device, n));
  log->info("training on {}", training::describe_device(device));
  const int index = site_index(config, site_id);
  std::unique_ptr<SiteWorkers> workers;  // train.data_parallel > 1; outlives the learner, which stops them
  std::unique_ptr<fed::Learner> learner_ptr;
  if (config.segmentation_task()) {
    FEDRAD_ASSIGN_OR_RETURN(learner_ptr, make_seg_learner(config, site_dir, site_id, index, n));
  } else {
    if (config.train.data_parallel > 1) {  // started first: they load their data while this one does
      FEDRAD_ASSIGN_OR_RETURN(workers, SiteWorkers::start(config, site_dir, site_id, n));
      training::set_threads(workers->threads());
    }
    const auto t0 = std::chrono::steady_clock::now();
    training::LoadOptions load;  // on a GPU: decoded on the host, converted there, kept there
    load.threads = n;
    load.device = device;
    auto train = training::load_image_set(site_dir + "/train", config.data, load);
    if (!train.ok()) return train.status().with_context("site " + site_id);
    auto val = training::load_image_set(site_dir + "/val", config.data, load);
    if (!val.ok()) return val.status().with_context("site " + site_id);
    log->info("loaded {} train ({} pneumonia) and {} val images in {:.1f} s; {} unreadable, {} unlabelled",
              train->size(), train->positives(), val->size(),
              std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count(),
              train->unreadable.size() + val->unreadable.size(),
              train->index.unlabelled.size() + val->index.unlabelled.size());
    if (workers) {
      training::DataParallelOptions dp;
      dp.world = config.train.data_parallel;
      dp.control_address = workers->address();
      dp.connect_timeout_s = config.federation.join_timeout_s;
      auto learner = training::DataParallelLearner::create(config, *train, std::move(val).value(), index, dp);
      if (!learner.ok()) return learner.status().with_context("site " + site_id);
      learner_ptr = std::move(learner).value();
    } else {
      learner_ptr = std::make_unique<training::TorchLearner>(config, std::move(train).value(), std::move(val).value(), index);
    }
  }
  fed::Learner& learner = *learner_ptr;
  const RegionConfig* region = config.region_of_site(site_id);  // its sites talk to the region
  FEDRAD_ASSIGN_OR_RETURN(
      fed::SiteOptions o,
      site_options(config, site_id,
                   !address.empty() ? address : region != nullptr ? region->address : config.federation.address));
  o.secure_aggregation = config.privacy.secure_aggregation;
  o.audit_log = !audit_log.empty()
                    ? audit_log
                    : (fs::absolute(fs::path(site_dir)).lexically_normal().parent_path() / ("audit-" + site_id + ".log"))
                          .string();
  log->info("audit log: {}", o.audit_log);
  if (config.privacy.client_clip > 0) {
    fed::dp::ClientDpOptions dp;
    dp.clip = config.privacy.client_clip;
    dp.noise_multiplier = config.privacy.client_noise_multiplier;
    dp.num_sites = static_cast<int>(std::max<size_t>(1, config.sites.size()));
    fed::dp::ClientDpLearner private_learner(learner, dp);
    log->info("client-level DP: updates clipped to L2 norm {}, noise multiplier {} (shared over {} sites)", dp.clip,
              dp.noise_multiplier, dp.num_sites);
    return fed::run_site(private_learner, o);
  }
  return fed::run_site(learner, o);
}

Status region(const StudyConfig& config, const std::string& region_id, const std::string& address,
              const std::string& listen, const std::string& audit_log) {
  const RegionConfig* r = config.region(region_id);
  if (r == nullptr) {
    std::string ids;
    for (const RegionConfig& x : config.federation.regions) ids += (ids.empty() ? "" : ", ") + x.id;
    return invalid_argument(config.source + ": federation.regions: no region '" + region_id + "' (" +
                            (ids.empty() ? std::string("the config has no regions") : "regions: " + ids) + ")");
  }
  fed::RegionOptions o;
  // Towards the coordinator: a site named after the region.
  FEDRAD_ASSIGN_OR_RETURN(o.upstream,
                          site_options(config, r->id, address.empty() ? config.federation.address : address));
  fed::SiteOptions& up = o.upstream;
  up.audit_log = audit_log;
  // Towards its sites: a coordinator of the same study with plain FedAvg, no model of its own
  // (each round's comes from above). Its deadlines are 10% shorter than the coordinator's, so that
  // its answer (or its failure) arrives before the coordinator gives up on it.
  fed::CoordinatorOptions& down = o.downstream;
  down.bind_address = listen.empty() ? r->address : listen;
  down.study = config.name;
  down.expected_sites = r->sites;
  down.min_sites = r->min_sites;
  down.rounds = config.rounds;
  down.join_timeout_s = 0.9 * config.federation.join_timeout_s;
  down.round_timeout_s = 0.9 * config.federation.round_timeout_s;
  down.compression = up.compression;
  down.zstd_level = config.federation.zstd_level;
  down.upstream_codec = config.federation.upstream_codec;
  down.downstream_codec = config.federation.downstream_codec;
  down.heartbeat_s = config.federation.heartbeat_s;
  down.heartbeat_misses = config.federation.heartbeat_misses;
  down.chunk_bytes = up.chunk_bytes;
  FEDRAD_ASSIGN_OR_RETURN(down.keys, region_keys(config, *r));
  return fed::run_region(o);
}

Status site_worker(const StudyConfig& config, const std::string& site_dir, const std::string& site_id, int rank,
                   int world, const std::string& control, int threads) {
  const int n = threads > 0 ? threads : config.train.threads;
  FEDRAD_ASSIGN_OR_RETURN(const torch::Device device,
                          training::prepare_device(config.train, training::rank_device(config.train.device, rank), n));
  auto train = training::load_image_set(site_dir + "/train", config.data, n);
  if (!train.ok()) return train.status().with_context("site " + site_id + " rank " + std::to_string(rank));
  // Silent for as long as the site itself may wait for the coordinator: rank 0 then is gone.
  const double idle_s = config.federation.round_timeout_s + config.federation.join_timeout_s;
  return training::run_data_parallel_worker(config, *train, site_index(config, site_id), rank, world, control, idle_s);
}

Status audit_verify(const std::string& log_path) {
  FEDRAD_ASSIGN_OR_RETURN(auto summary, fed::verify_audit_log(log_path));
  std::fputs(fed::describe(summary, log_path).c_str(), stdout);
  std::fflush(stdout);
  if (!summary.ok)
    return corrupt(log_path + ": audit record at line " + std::to_string(summary.first_bad) + " fails: " + summary.problem);
  return ok_status();
}

Status train(const StudyConfig& config, const std::string& data_root, const std::vector<std::string>& sites,
             const std::string& out_dir) {
  if (config.segmentation_task()) return train_segmentation(config, data_root, sites, out_dir);
  if (sites.empty()) return invalid_argument("train: no sites given (config 'sites' or --site)");
  FEDRAD_RETURN_IF_ERROR(make_dir(out_dir));
  auto log = logger("train");
  FEDRAD_ASSIGN_OR_RETURN(const torch::Device device,
                          training::prepare_device(config.train, config.train.device, config.train.threads));
  log->info("training on {}", training::describe_device(device));
  std::vector<training::ImageSet> trains, vals;
  for (size_t i = 0; i < sites.size(); ++i) {
    const std::string& s = sites[i];
    const std::string dir = (fs::path(data_root) / s).string();
    log->info("[{}/{}] loading {} (decoding DICOM)...", i + 1, sites.size(), dir);
    const auto t_load = std::chrono::steady_clock::now();
    training::LoadOptions load;
    load.threads = config.train.threads;
    load.device = device;
    auto tr = training::load_image_set(dir + "/train", config.data, load);
    if (!tr.ok()) return tr.status().with_context("site " + s);
    auto va = training::load_image_set(dir + "/val", config.data, load);
    if (!va.ok()) return va.status().with_context("site " + s);
    log->info("[{}/{}] {}: {} train, {} val images in {:.1f} s", i + 1, sites.size(), s, tr->size(), va->size(),
              std::chrono::duration<double>(std::chrono::steady_clock::now() - t_load).count());
    trains.push_back(std::move(tr).value());
    vals.push_back(std::move(va).value());
  }
  std::vector<const training::ImageSet*> tp, vp;
  for (auto& t : trains) tp.push_back(&t);
  for (auto& v : vals) vp.push_back(&v);
  training::ImageSet train_set = training::concat(tp), val_set = training::concat(vp);
  training::to_device(&train_set, device);  // decoded once, then everything stays on the device
  training::to_device(&val_set, device);

  try {
    torch::manual_seed(config.seed);
    models::Classifier model(training::classifier_options(config));
    const int epochs = config.baseline_epochs();
    auto options = training::fit_options_from(config, epochs, config.seed);
    // Per-epoch metrics for reports: train loss every epoch; validation loss and AUC every
    // epoch while cheap (small inputs, small sets), else every few epochs and always the last.
    std::ofstream jsonl(out_dir + "/metrics.jsonl", std::ios::trunc), csv(out_dir + "/metrics.csv", std::ios::trunc);
    if (!jsonl || !csv) return io_error(out_dir + ": cannot write metrics.jsonl / metrics.csv");
    csv << "epoch,loss,val_loss,val_auc,seconds\n";
    const int64_t work = val_set.size() * config.data.input_size * config.data.input_size;
    const int val_every = work <= int64_t{20000} * 64 * 64 ? 1 : std::max(1, epochs / 10);
    const auto t_fit = std::chrono::steady_clock::now();
    options.on_epoch = [&](int epoch, double loss) {
      const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t_fit).count();
      const double eta = secs / (epoch + 1) * (epochs - epoch - 1);
      json row = {{"epoch", epoch + 1}, {"loss", loss}, {"seconds", secs}};
      std::string val_text;
      if ((epoch + 1) % val_every == 0 || epoch + 1 == epochs) {
        auto p = training::predict(model, val_set);
        model->train();  // predict() leaves eval mode; fit() goes on training
        row["val_loss"] = p.loss;
        row["val_auc"] = roc_auc(p.scores, p.labels);
        char buf[96];
        std::snprintf(buf, sizeof(buf), ", val loss %.4f, val AUC %.4f", p.loss, row["val_auc"].get<double>());
        val_text = buf;
      }
      jsonl << row.dump() << "\n" << std::flush;
      csv << epoch + 1 << "," << loss << "," << (row.contains("val_loss") ? std::to_string(p_or(row, "val_loss")) : "")
          << "," << (row.contains("val_auc") ? std::to_string(p_or(row, "val_auc")) : "") << "," << secs << "\n"
          << std::flush;
      log->info("epoch {}/{}: loss {:.4f}{}; elapsed {}, about {} left", epoch + 1, epochs, loss, val_text,
                format_duration(secs), format_duration(eta));
    };
    options.progress_label = "training";
    const auto t0 = std::chrono::steady_clock::now();
    auto stats = training::fit(model, train_set, options);
    auto pred = training::predict(model, val_set);
    const double threshold = youden_threshold(pred.scores, pred.labels);
    const BinaryMetrics m = binary_metrics(pred.scores, pred.labels, threshold);
    training::ModelMeta meta;
    meta.kind = sites.size() == 1 ? "site:" + sites[0] : "centralised";
    meta.epochs = epochs;
    meta.threshold = threshold;
    meta.val_auc = m.auc;
    FEDRAD_RETURN_IF_ERROR(training::save_model(out_dir + "/model.pt", *model, config, meta));
    FEDRAD_RETURN_IF_ERROR(training::write_file_atomic(
        out_dir + "/final_histogram.json",
        histogram_to_json(ScoreHistogram::of(pred.scores, pred.labels), threshold, "validation scores of the final model")
                .dump() +
            "\n"));
    { std::ofstream cfg(out_dir + "/config.yaml"); cfg << to_yaml(config); }
    json summary = {{"kind", meta.kind},
                    {"sites", sites},
                    {"epochs", epochs},
                    {"train_images", train_set.size()},
                    {"train_seconds", stats.seconds},
                    {"wall_seconds", std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count()},
                    {"val", metrics_json(m)},
                    {"model", "model.pt"}};
    FEDRAD_RETURN_IF_ERROR(training::write_file_atomic(out_dir + "/summary.json", summary.dump(2) + "\n"));
    std::printf("%s on %lld images, %d epochs: val AUC %.4f, accuracy %.4f (threshold %.3f); model %s/model.pt\n",
                meta.kind.c_str(), static_cast<long long>(train_set.size()), epochs, m.auc, m.accuracy, threshold,
                out_dir.c_str());
  } catch (const std::exception& e) {
    return internal_error(std::string("training failed: ") + e.what());
  }
  return ok_status();
}

StatusOr<json> evaluate(const std::string& model_path, const std::vector<std::string>& data_dirs, double threshold) {
  FEDRAD_ASSIGN_OR_RETURN(auto loaded, training::load_model(model_path));
  if (loaded.config.segmentation_task()) return evaluate_segmentation(loaded, model_path, data_dirs);
  const double t = threshold >= 0 ? threshold : loaded.meta.threshold;
  std::vector<float> scores;
  std::vector<int> labels;
  json per_folder = json::array();
  size_t unreadable = 0;
  try {
    for (const auto& dir : data_dirs) {
      auto set = training::load_image_set(dir, loaded.config.data, loaded.config.train.threads);
      if (!set.ok()) return set.status();
      unreadable += set->unreadable.size();
      auto p = training::predict(loaded.model, *set);
      per_folder.push_back({{"data", dir}, {"metrics", metrics_json(binary_metrics(p.scores, p.labels, t))}});
      scores.insert(scores.end(), p.scores.begin(), p.scores.end());
      labels.insert(labels.end(), p.labels.begin(), p.labels.end());
    }
  } catch (const std::exception& e) {
    return internal_error(std::string("evaluation failed: ") + e.what());
  }
  json out = metrics_json(binary_metrics(scores, labels, t));
  out["model"] = model_path;
  out["unreadable"] = unreadable;
  if (data_dirs.size() > 1) out["per_folder"] = per_folder;
  return out;
}

Status predict(const std::string& model_path, const std::vector<std::string>& inputs, const std::string& csv_out,
               const std::string& overlay) {
  FEDRAD_ASSIGN_OR_RETURN(auto loaded, training::load_model(model_path));
  if (loaded.config.segmentation_task()) {
    std::string png = overlay;
    if (png.empty()) {
      png = csv_out;
      for (const char* ext : {".nii.gz", ".nii"})
        if (png.size() > std::strlen(ext) && png.compare(png.size() - std::strlen(ext), std::string::npos, ext) == 0) {
          png.resize(png.size() - std::strlen(ext));
          break;
        }
      png += ".png";
    } else if (png == "none") {
      png.clear();
    }
    return predict_segmentation(loaded, inputs, csv_out, png);
  }
  std::vector<std::string> files;
  for (const auto& in : inputs) {
    std::error_code ec;
    if (fs::is_directory(in, ec)) {
      for (const auto& e : fs::recursive_directory_iterator(in, ec))
        if (e.is_regular_file() && e.path().filename() != "labels.csv" && e.path().filename().string()[0] != '.')
          files.push_back(e.path().string());
    } else if (fs::exists(in, ec)) {
      files.push_back(in);
    } else {
      return not_found(in + ": no such file or folder");
    }
  }
  std::sort(files.begin(), files.end());
  FEDRAD_ASSIGN_OR_RETURN(auto set, training::load_unlabelled(files, loaded.config.data, loaded.config.train.threads));
  training::Predictions p;
  try {
    p = training::predict(loaded.model, set);
  } catch (const std::exception& e) {
    return internal_error(std::string("prediction failed: ") + e.what());
  }
  std::ofstream file;
  if (csv_out != "-") {
    file.open(csv_out);
    if (!file) return io_error(csv_out + ": cannot write");
  }
  std::ostream& out = csv_out == "-" ? std::cout : file;
  out << "file,probability,prediction\n";
  for (size_t i = 0; i < p.scores.size(); ++i)
    out << set.files[i] << "," << p.scores[i] << ","
        << imaging::kClassNames[p.scores[i] >= loaded.meta.threshold ? 1 : 0] << "\n";
  for (const auto& u : set.unreadable) logger("predict")->warn("not predicted: {}", u.reason);
  return ok_status();
}

StatusOr<json> index_folder(const std::string& dir) {
  // imaging::scan_folder reads headers (studies, series, syntaxes, sizes, labels.csv when there)
  // and, with decode_pixels, decodes each image so that broken pixel data is reported too.
  imaging::ScanOptions options;
  options.decode_pixels = true;
  FEDRAD_ASSIGN_OR_RETURN(auto scan, imaging::scan_folder(dir, options));
  return json::parse(imaging::to_json(scan));
}

Status demo(const std::string& out_dir, int rounds) {
  FEDRAD_ASSIGN_OR_RETURN(auto config, parse_study_config(demo_config_yaml(), "configs/demo.yaml (embedded)"));
  if (rounds > 0) config.rounds = rounds;
  const std::string data_root = out_dir + "/data";
  auto log = logger("demo");
  log->info("writing synthetic chest X-ray DICOM files for {} sites to {}", config.sites.size(), data_root);
  auto specs = imaging::default_demo_sites();
  for (size_t i = 0; i < specs.size(); ++i) {
    FEDRAD_RETURN_IF_ERROR(make_dir(data_root));
    FEDRAD_RETURN_IF_ERROR(imaging::write_synthetic_site(data_root, specs[i], config.seed + i));
  }
  config.sites.clear();
  for (const auto& s : specs) config.sites.push_back(s.name);
  return simulate(config, data_root, out_dir + "/study");
}

}  // namespace fedrad::app
