// `fedrad report OUT`: one self-contained HTML page (inline SVG plots and CSS; no scripts, fonts
// or anything fetched from the network) from the outputs of a study (`simulate`, `coordinator`)
// or a baseline (`train`): metrics.jsonl, summary.json, config.yaml and final_histogram.json.
//
// The pieces are plain functions so that tests and other tools can use them on their own.
#pragma once

#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "common/metrics.h"
#include "common/status.h"

namespace fedrad::app {

struct ReportOptions {
  // Labelled folders (train/ or val/ splits with labels.csv) to score the final model on for the
  // ROC curve and confusion matrix. Empty: final_histogram.json (pooled validation scores).
  std::vector<std::string> data_dirs;
  std::string output;  // default: out_dir/report.html
};

// Writes the report and returns its path.
StatusOr<std::string> write_report(const std::string& out_dir, const ReportOptions& options = {});

// The final evaluation's pooled score histogram (what a study's StudyRecorder and `train` save as
// final_histogram.json) and back. `threshold` is the final model's decision threshold.
nlohmann::json histogram_to_json(const ScoreHistogram& h, double threshold, const std::string& source);
StatusOr<ScoreHistogram> histogram_from_json(const nlohmann::json& j);

// ---- HTML and SVG writers ----

std::string html_escape(const std::string& s);

struct PlotSeries {
  std::string name;
  std::vector<double> x, y;
  bool dashed = false;
};

struct PlotSpec {
  std::string title, x_label, y_label;
  bool y_unit_interval = false;  // y axis fixed to [0, 1] (AUC, rates)
  bool integer_x = true;         // rounds and epochs
  int width = 520, height = 320;
};

// A line plot with axes, ticks, a legend and a point marker per value. Empty series are skipped;
// with no points at all it draws the frame and "no data".
std::string svg_line_plot(const PlotSpec& spec, const std::vector<PlotSeries>& series);

// The ROC curve of a score histogram (thresholds at bin edges) with the operating point at
// `threshold` marked, and the AUC in the title.
std::string svg_roc_curve(const ScoreHistogram& h, double threshold, int size = 360);

struct Confusion {
  int64_t tp = 0, fn = 0, fp = 0, tn = 0;
};
// score >= threshold is positive (the same rule as binary_metrics).
Confusion confusion_at(const ScoreHistogram& h, double threshold);
std::string html_confusion_matrix(const Confusion& c, double threshold);

// "12.3 kB", "4.56 MB".
std::string human_bytes(double bytes);

}  // namespace fedrad::app
