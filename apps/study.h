// The site adapter and the study flows behind the CLI: simulate, coordinator, site, train,
// evaluate, predict, index and demo. apps/ is where training/ and federation/ meet.
#pragma once

#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "common/config.h"
#include "common/status.h"

namespace fedrad::app {

// Coordinator plus one child process per site on this machine. data_root holds one folder per
// site (cfg.sites), each with train/ and val/. Writes the study's outputs to out_dir.
// status_port > 0: serve live status on http://127.0.0.1:PORT/status and /metrics (apps/status_server.h).
Status simulate(const StudyConfig& config, const std::string& data_root, const std::string& out_dir,
                int status_port = 0);

// The coordinator alone (real deployments): waits for cfg.sites at cfg.federation.address.
// resume: continue from out_dir/state (the last completed round) after a crash or kill; without
// it a study starts at round 1 and earlier checkpoints there are removed.
Status coordinator(const StudyConfig& config, const std::string& out_dir, int status_port = 0, bool resume = false);

// `fedrad keys`: CurveZMQ key pairs for the coordinator and each site in `dir` (federation/keys.h);
// existing keys are kept.
Status write_keys(const std::string& dir, const std::vector<std::string>& sites);

// One site: site_dir holds train/ and val/ with labels.csv each. threads: torch and decoding
// threads (0 = config's train.threads).
// audit_log: where the site appends its tamper-evident log of what it sent and received
// (federation/audit.h); "" = <parent of site_dir>/audit-<site_id>.log.
Status site(const StudyConfig& config, const std::string& site_dir, const std::string& site_id,
            const std::string& address, int threads, const std::string& audit_log = "");

// `fedrad region`: the regional aggregator `region_id` of cfg.federation.regions (federation/regional.h):
// a site towards the coordinator at `address` (default: federation.address), a coordinator of its
// sites listening on `listen` (default: the region's address). Keys as for a site (DIR/<region>.secret,
// DIR/coordinator.pub) plus its sites' public keys (DIR/sites/<site>.pub). audit_log: "" = none.
Status region(const StudyConfig& config, const std::string& region_id, const std::string& address,
              const std::string& listen, const std::string& audit_log = "");

// A data-parallel rank 1.. of a site (train.data_parallel > 1): `site` starts world - 1 of these
// as child processes with the site's effective config; each trains its shard in lockstep with
// rank 0 over `control` (training/data_parallel.h) and never talks to the coordinator.
Status site_worker(const StudyConfig& config, const std::string& site_dir, const std::string& site_id, int rank,
                   int world, const std::string& control, int threads);

// `fedrad audit verify LOG`: checks the hash chain and prints what left the site. Returns an error
// naming the first bad record when the log was tampered with.
Status audit_verify(const std::string& log_path);

// Centralised baseline on the union of `sites` (one name: single-site baseline); trains on their
// train splits for cfg.baseline_epochs(), picks the threshold on their val splits, saves
// out_dir/model.pt (+ .json), out_dir/summary.json, per-epoch out_dir/metrics.jsonl and .csv (train
// loss, validation loss and AUC) and out_dir/final_histogram.json (validation scores, for reports).
Status train(const StudyConfig& config, const std::string& data_root, const std::vector<std::string>& sites,
             const std::string& out_dir);

// Evaluates a saved model on folders with labels.csv (pooled) at its saved threshold (or
// `threshold` when >= 0). Returns {auc, accuracy, sensitivity, specificity, threshold, n, ...}.
StatusOr<nlohmann::json> evaluate(const std::string& model_path, const std::vector<std::string>& data_dirs,
                                  double threshold = -1);

// Probability per image for DICOM files or folders; CSV (file,probability,prediction) to `csv_out`
// ("-" = stdout). Segmentation models (task: segmentation): `inputs` are one case's channels in
// the model's order, `csv_out` the NIfTI mask to write, `overlay` the PNG quick look (default:
// the mask's name with .png; "none" = no PNG).
Status predict(const std::string& model_path, const std::vector<std::string>& inputs, const std::string& csv_out,
               const std::string& overlay = "");

// A report of a labelled folder: counts per label, unreadable and unlabelled files.
StatusOr<nlohmann::json> index_folder(const std::string& dir);

// Writes synthetic DICOM sites under out_dir/data and runs a short federated study.
Status demo(const std::string& out_dir, int rounds);

// The demo's study config (configs/demo.yaml, embedded at build time).
const char* demo_config_yaml();

}  // namespace fedrad::app
