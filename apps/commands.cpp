#include "apps/commands.h"

#include <cstdio>
#include <iostream>

#include <CLI/CLI.hpp>

#include "apps/report.h"
#include "apps/segmentation.h"
#include "apps/study.h"
#include "common/config.h"
#include "common/log.h"
#include "common/progress.h"
#include "imaging/scan.h"

namespace fedrad::app {
namespace {

int report(const Status& st) {
  if (st.ok()) return 0;
  std::fprintf(stderr, "fedrad: error: %s\n", st.to_string().c_str());
  return 1;
}

}  // namespace

int run_cli(int argc, char** argv) {
  CLI::App app{"fedrad: federated learning for medical imaging, on DICOM, without moving patient data"};
  app.require_subcommand(1);
  app.fallthrough();  // global flags (-v, -q) work after the subcommand too
  bool verbose = false, quiet = false;
  app.add_flag("-v,--verbose", verbose, "debug output");
  app.add_flag("-q,--quiet", quiet, "warnings and errors only");
  std::string progress = "auto";
  app.add_option("--progress", progress,
                 "progress display: auto (a live line on a terminal, plain log lines otherwise), live, plain or off")
      ->check(CLI::IsMember({"auto", "live", "plain", "off"}))
      ->envname("FEDRAD_PROGRESS");

  std::string config_path, data, out, model, site_id, address, csv_out = "-";
  std::vector<std::string> data_dirs, sites, inputs;
  int threads = 0, rounds = 0, status_port = 0;
  double threshold = -1;

  auto* demo = app.add_subcommand("demo", "Write synthetic DICOM for three sites and run a short federated study");
  demo->add_option("--out", out, "output folder")->default_val("out/demo");
  demo->add_option("--rounds", rounds, "rounds (default: the demo config's)");

  auto* simulate = app.add_subcommand("simulate", "Run a study on this machine: coordinator plus one process per site");
  simulate->add_option("--config", config_path, "study config (YAML)")->required()->check(CLI::ExistingFile);
  simulate->add_option("--data", data, "folder with one sub-folder per site, each with train/ and val/")
      ->required()->check(CLI::ExistingDirectory);
  simulate->add_option("--out", out, "output folder")->required();
  simulate->add_option("--status-port", status_port,
                       "serve live status on http://127.0.0.1:PORT/status and /metrics (default: off)")
      ->check(CLI::Range(0, 65535));

  auto* coord = app.add_subcommand("coordinator", "Run the coordinator of a study (sites connect to it)");
  coord->add_option("--config", config_path, "study config (YAML)")->required()->check(CLI::ExistingFile);
  coord->add_option("--out", out, "output folder")->required();
  coord->add_option("--address", address, "bind address (default: federation.address)");
  std::string keys_dir;
  bool resume = false;
  coord->add_option("--keys", keys_dir, "CurveZMQ keys folder (default: federation.keys_dir; see `fedrad keys`)");
  coord->add_flag("--resume", resume,
                  "continue the study from OUT/state (the last completed round) after a crash; without it the "
                  "study starts at round 1");
  coord->add_option("--status-port", status_port,
                    "serve live status on http://127.0.0.1:PORT/status and /metrics (default: off)")
      ->check(CLI::Range(0, 65535));

  auto* site = app.add_subcommand("site", "Run one site: train on its data, talk to the coordinator");
  site->add_option("--config", config_path, "study config (YAML)")->required()->check(CLI::ExistingFile);
  site->add_option("--data", data, "the site's folder with train/ and val/")->required()->check(CLI::ExistingDirectory);
  site->add_option("--site-id", site_id, "this site's name (one of the config's sites)")->required();
  site->add_option("--address", address, "coordinator address (default: federation.address)");
  site->add_option("--threads", threads, "compute threads (default: train.threads)");
  site->add_option("--keys", keys_dir, "CurveZMQ keys folder (default: federation.keys_dir; see `fedrad keys`)");

  auto* region = app.add_subcommand(
      "region", "Run a regional aggregator (federation.regions): a site towards the coordinator, a coordinator of its sites");
  std::string region_id, listen;
  region->add_option("--config", config_path, "study config (YAML)")->required()->check(CLI::ExistingFile);
  region->add_option("--region-id", region_id, "this region's name (one of federation.regions)")->required();
  region->add_option("--address", address, "coordinator address (default: federation.address)");
  region->add_option("--listen", listen, "where its sites connect (default: the region's address in the config)");
  region->add_option("--keys", keys_dir, "CurveZMQ keys folder (default: federation.keys_dir; see `fedrad keys`)");
  std::string region_audit_log;
  region->add_option("--audit-log", region_audit_log,
                     "append the tamper-evident log of what the region sent to and received from the coordinator "
                     "(default: none)");

  // Started by `site` for train.data_parallel > 1: one more rank of that site (hidden).
  auto* site_worker = app.add_subcommand("site-worker", "A data-parallel rank of a site (started by `site`)");
  site_worker->group("");
  int rank = 0, world = 0;
  site_worker->add_option("--config", config_path, "the site's effective config")->required()->check(CLI::ExistingFile);
  site_worker->add_option("--data", data, "the site's folder")->required()->check(CLI::ExistingDirectory);
  site_worker->add_option("--site-id", site_id, "the site's name")->required();
  site_worker->add_option("--rank", rank, "this rank")->required()->check(CLI::Range(1, 63));
  site_worker->add_option("--world", world, "ranks of the site")->required()->check(CLI::Range(2, 64));
  site_worker->add_option("--control", address, "rank 0's control endpoint")->required();
  site_worker->add_option("--threads", threads, "compute threads");

  auto* keys = app.add_subcommand("keys", "Create CurveZMQ key pairs for the coordinator and each site");
  keys->add_option("--out", out, "keys folder (kept keys are not replaced)")->required();
  keys->add_option("--config", config_path, "study config whose `sites` get keys")->check(CLI::ExistingFile);
  keys->add_option("--site", sites, "a site to create keys for (repeatable; default: the config's sites)");
  std::string audit_log;
  site->add_option("--audit-log", audit_log,
                   "append the tamper-evident log of every message sent and received here "
                   "(default: audit-<site-id>.log beside the --data folder)");

  auto* audit = app.add_subcommand("audit", "Audit tools for a site's compliance officer");
  auto* audit_verify = audit->add_subcommand("verify", "Check an audit log's hash chain; summarise what left the site");
  std::string audit_path;
  audit_verify->add_option("log", audit_path, "a site's audit log (audit-<site>.log)")->required()->check(CLI::ExistingFile);
  audit->require_subcommand(1);

  auto* train = app.add_subcommand("train", "Centralised baseline on the union of sites, or one site alone");
  train->add_option("--config", config_path, "study config (YAML)")->required()->check(CLI::ExistingFile);
  train->add_option("--data", data, "folder with one sub-folder per site")->required()->check(CLI::ExistingDirectory);
  train->add_option("--site", sites, "train on these sites only (repeatable; default: all of the config's)");
  train->add_option("--out", out, "output folder")->required();
  int epochs = 0;
  train->add_option("--epochs", epochs, "epochs (default: the config's train.epochs, else rounds x local epochs)")
      ->check(CLI::Range(1, 100000));

  auto* evaluate = app.add_subcommand("evaluate", "Evaluate a model on labelled folders; prints JSON");
  evaluate->add_option("--model", model, "model file (global.pt or model.pt)")->required()->check(CLI::ExistingFile);
  evaluate->add_option("--data", data_dirs, "folder with labels.csv (repeatable: pooled)")->required();
  evaluate->add_option("--threshold", threshold, "decision threshold (default: the model's)");

  auto* predict = app.add_subcommand(
      "predict", "Classifier: probability of pneumonia per DICOM image, CSV out. Segmentation model: one case's "
                 "channels in, a NIfTI mask (same geometry) and a PNG overlay out");
  predict->add_option("--model", model, "model file")->required()->check(CLI::ExistingFile);
  predict->add_option("inputs", inputs,
                      "DICOM files or folders; for a segmentation model the case's channels in the model's order "
                      "(NIfTI files or DICOM series folders)")
      ->required();
  predict->add_option("--out", csv_out, "CSV file (default: stdout); segmentation: the mask (.nii.gz)");
  std::string overlay;
  predict->add_option("--overlay", overlay, "segmentation: PNG quick look (default: the mask's name with .png; none = off)");

  auto* synth_seg = app.add_subcommand(
      "synth-seg", "Write synthetic brain-tumour MRI (4 channels, BraTS labels) for three sites (NIfTI + cases.csv)");
  synth_seg->add_option("--out", out, "output folder (one sub-folder per site)")->required();
  int synth_train = 8, synth_val = 4;
  uint64_t synth_seed = 42;
  synth_seg->add_option("--train", synth_train, "train cases per site")->default_val(8)->check(CLI::Range(1, 10000));
  synth_seg->add_option("--val", synth_val, "validation cases per site")->default_val(4)->check(CLI::Range(1, 10000));
  synth_seg->add_option("--seed", synth_seed, "seed")->default_val(42);

  auto* index = app.add_subcommand("index", "Report what a DICOM folder holds: studies, series, syntaxes, labels");
  index->add_option("dir", data, "folder of DICOM files (with a labels.csv, labels are counted)")
      ->required()
      ->check(CLI::ExistingDirectory);
  bool index_json = false;
  index->add_flag("--json", index_json, "print JSON instead of the human-readable report");

  auto* report_cmd = app.add_subcommand("report", "Write OUT/report.html: plots, final ROC, confusion matrix, settings");
  report_cmd->add_option("out", out, "a study's or baseline's output folder (with metrics.jsonl)")
      ->required()
      ->check(CLI::ExistingDirectory);
  report_cmd->add_option("--data", data_dirs,
                         "labelled folders to score the final model on for the ROC curve (repeatable; default: "
                         "the saved validation histogram)");
  std::string report_out;
  report_cmd->add_option("--html", report_out, "output file (default: OUT/report.html)");

  auto* config = app.add_subcommand("config", "Config tools");
  auto* show = config->add_subcommand("show", "Print the effective config with every default");
  show->add_option("--config", config_path, "study config (YAML)")->required()->check(CLI::ExistingFile);
  config->require_subcommand(1);

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e) == 0 ? 0 : 2;
  }
  set_verbosity(quiet ? Verbosity::kQuiet : verbose ? Verbosity::kVerbose : Verbosity::kNormal);
  ProgressMode mode = ProgressMode::kAuto;
  parse_progress_mode(progress, &mode);
  set_progress_mode(quiet && mode == ProgressMode::kAuto ? ProgressMode::kOff : mode);

  auto load = [&]() -> StatusOr<StudyConfig> { return load_study_config(config_path); };

  if (*demo) return report(app::demo(out, rounds));
  if (*simulate) {
    auto c = load();
    return report(c.ok() ? app::simulate(*c, data, out, status_port) : c.status());
  }
  // Across machines the traffic is encrypted and authenticated unless the config says otherwise.
  auto need_keys = [&](StudyConfig& c) -> Status {
    if (!keys_dir.empty()) c.federation.keys_dir = keys_dir;
    if (!c.federation.keys_dir.empty() || c.federation.plaintext) return ok_status();
    return invalid_argument(c.source +
                            ": federation.keys_dir: no CurveZMQ keys; create them with `fedrad keys --out DIR "
                            "--config FILE` and pass --keys DIR (or set federation.keys_dir), or set "
                            "federation.plaintext: true to run unencrypted inside a VPN");
  };
  if (*coord) {
    auto c = load();
    if (!c.ok()) return report(c.status());
    if (!address.empty()) c->federation.address = address;
    if (Status st = need_keys(*c); !st.ok()) return report(st);
    return report(app::coordinator(*c, out, status_port, resume));
  }
  if (*site) {
    auto c = load();
    if (!c.ok()) return report(c.status());
    if (Status st = need_keys(*c); !st.ok()) return report(st);
    return report(app::site(*c, data, site_id, address, threads, audit_log));
  }
  if (*region) {
    auto c = load();
    if (!c.ok()) return report(c.status());
    if (Status st = need_keys(*c); !st.ok()) return report(st);
    return report(app::region(*c, region_id, address, listen, region_audit_log));
  }
  if (*site_worker) {
    auto c = load();
    if (!c.ok()) return report(c.status());
    return report(app::site_worker(*c, data, site_id, rank, world, address, threads));
  }
  if (*keys) {
    std::vector<std::string> names = sites;
    if (names.empty() && !config_path.empty()) {
      auto c = load();
      if (!c.ok()) return report(c.status());
      names = c->sites;
      // Regions get a pair too: they join the coordinator with it and serve their sites with it.
      for (const RegionConfig& r : c->federation.regions) names.push_back(r.id);
    }
    return report(app::write_keys(out, names));
  }
  if (*train) {
    auto c = load();
    if (!c.ok()) return report(c.status());
    if (epochs > 0) c->train.epochs = epochs;
    return report(app::train(*c, data, sites.empty() ? c->sites : sites, out));
  }
  if (*evaluate) {
    auto r = app::evaluate(model, data_dirs, threshold);
    if (!r.ok()) return report(r.status());
    std::cout << r->dump(2) << std::endl;
    return 0;
  }
  if (*predict) return report(app::predict(model, inputs, csv_out, overlay));
  if (*synth_seg) return report(app::write_synthetic_seg_sites(out, synth_train, synth_val, synth_seed));
  if (*audit_verify) return report(app::audit_verify(audit_path));
  if (*index) {
    if (!index_json) {
      imaging::ScanOptions scan_options;
      scan_options.decode_pixels = true;
      auto scan = imaging::scan_folder(data, scan_options);
      if (!scan.ok()) return report(scan.status());
      std::cout << imaging::describe(*scan);
      return 0;
    }
    auto r = app::index_folder(data);
    if (!r.ok()) return report(r.status());
    std::cout << r->dump(2) << std::endl;
    return 0;
  }
  if (*report_cmd) {
    ReportOptions ro;
    ro.data_dirs = data_dirs;
    ro.output = report_out;
    auto path = app::write_report(out, ro);
    if (!path.ok()) return report(path.status());
    std::cout << *path << std::endl;
    return 0;
  }
  if (*show) {
    auto c = load();
    if (!c.ok()) return report(c.status());
    std::cout << to_yaml(*c);
    return 0;
  }
  return 2;
}

}  // namespace fedrad::app
