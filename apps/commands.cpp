#include "apps/commands.h"

#include <cstdio>
#include <iostream>

#include <CLI/CLI.hpp>

#include "apps/report.h"
#include "apps/study.h"
#include "common/config.h"
#include "common/log.h"
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
  coord->add_option("--status-port", status_port,
                    "serve live status on http://127.0.0.1:PORT/status and /metrics (default: off)")
      ->check(CLI::Range(0, 65535));

  auto* site = app.add_subcommand("site", "Run one site: train on its data, talk to the coordinator");
  site->add_option("--config", config_path, "study config (YAML)")->required()->check(CLI::ExistingFile);
  site->add_option("--data", data, "the site's folder with train/ and val/")->required()->check(CLI::ExistingDirectory);
  site->add_option("--site-id", site_id, "this site's name (one of the config's sites)")->required();
  site->add_option("--address", address, "coordinator address (default: federation.address)");
  site->add_option("--threads", threads, "compute threads (default: train.threads)");
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

  auto* evaluate = app.add_subcommand("evaluate", "Evaluate a model on labelled folders; prints JSON");
  evaluate->add_option("--model", model, "model file (global.pt or model.pt)")->required()->check(CLI::ExistingFile);
  evaluate->add_option("--data", data_dirs, "folder with labels.csv (repeatable: pooled)")->required();
  evaluate->add_option("--threshold", threshold, "decision threshold (default: the model's)");

  auto* predict = app.add_subcommand("predict", "Probability of pneumonia per DICOM image; CSV out");
  predict->add_option("--model", model, "model file")->required()->check(CLI::ExistingFile);
  predict->add_option("inputs", inputs, "DICOM files or folders")->required();
  predict->add_option("--out", csv_out, "CSV file (default: stdout)");

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

  auto load = [&]() -> StatusOr<StudyConfig> { return load_study_config(config_path); };

  if (*demo) return report(app::demo(out, rounds));
  if (*simulate) {
    auto c = load();
    return report(c.ok() ? app::simulate(*c, data, out, status_port) : c.status());
  }
  if (*coord) {
    auto c = load();
    if (!c.ok()) return report(c.status());
    if (!address.empty()) c->federation.address = address;
    return report(app::coordinator(*c, out, status_port));
  }
  if (*site) {
    auto c = load();
    return report(c.ok() ? app::site(*c, data, site_id, address, threads, audit_log) : c.status());
  }
  if (*train) {
    auto c = load();
    if (!c.ok()) return report(c.status());
    return report(app::train(*c, data, sites.empty() ? c->sites : sites, out));
  }
  if (*evaluate) {
    auto r = app::evaluate(model, data_dirs, threshold);
    if (!r.ok()) return report(r.status());
    std::cout << r->dump(2) << std::endl;
    return 0;
  }
  if (*predict) return report(app::predict(model, inputs, csv_out));
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
