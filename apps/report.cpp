#include "apps/report.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <map>
#include <set>
#include <sstream>

#include <yaml-cpp/yaml.h>

#include "common/log.h"
#include "training/checkpoint.h"
#include "training/dataset.h"
#include "training/trainer.h"

namespace fedrad::app {
namespace fs = std::filesystem;
using nlohmann::json;

namespace {

const char* const kPalette[] = {"#1f5fa8", "#d1495b", "#2a9d5c", "#e09f3e", "#7b4fa0",
                                "#3a9fb5", "#8c564b", "#c2467f", "#6b6b6b", "#9aa329"};

std::string num(double v, int precision = 4) {
  if (!std::isfinite(v)) return "n/a";
  char buf[64];
  std::snprintf(buf, sizeof(buf), "%.*g", precision, v);
  return buf;
}

std::string fixed(double v, int decimals) {
  if (!std::isfinite(v)) return "n/a";
  char buf[64];
  std::snprintf(buf, sizeof(buf), "%.*f", decimals, v);
  return buf;
}

// Tick values for [lo, hi] at a 1/2/5 step giving about `target` ticks.
std::vector<double> nice_ticks(double lo, double hi, int target, bool integer) {
  std::vector<double> ticks;
  if (!(hi > lo)) return {lo};
  const double raw = (hi - lo) / std::max(1, target);
  const double mag = std::pow(10.0, std::floor(std::log10(raw)));
  double step = mag;
  for (double m : {1.0, 2.0, 5.0, 10.0})
    if (m * mag >= raw) {
      step = m * mag;
      break;
    }
  if (integer) step = std::max(1.0, std::round(step));
  for (double t = std::ceil(lo / step - 1e-9) * step; t <= hi + step * 1e-9; t += step)
    ticks.push_back(std::abs(t) < step * 1e-9 ? 0.0 : t);
  return ticks;
}

StatusOr<json> read_json(const std::string& path) {
  std::ifstream in(path);
  if (!in) return not_found(path + ": missing");
  try {
    return json::parse(in);
  } catch (const std::exception& e) {
    return corrupt(path + ": not valid JSON: " + e.what());
  }
}

StatusOr<std::vector<json>> read_jsonl(const std::string& path) {
  std::ifstream in(path);
  if (!in) return not_found(path + ": missing");
  std::vector<json> rows;
  std::string line;
  int n = 0;
  while (std::getline(in, line)) {
    ++n;
    if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
    try {
      rows.push_back(json::parse(line));
    } catch (const std::exception& e) {
      return corrupt(path + ":" + std::to_string(n) + ": not valid JSON: " + e.what());
    }
  }
  return rows;
}

double get(const json& j, const char* key, double fallback = NAN) {
  auto it = j.find(key);
  if (it == j.end() || !it->is_number()) return fallback;
  return it->get<double>();
}

std::string get_str(const json& j, const char* key, const std::string& fallback = "") {
  auto it = j.find(key);
  if (it == j.end()) return fallback;
  if (it->is_string()) return it->get<std::string>();
  return it->dump();
}

// A YAML scalar for people: 0.0041999999999999997 (a double written at full precision) as 0.0042.
std::string scalar_text(const YAML::Node& node) {
  const std::string s = node.as<std::string>();
  if (s.size() < 12 || s.find_first_not_of("0123456789.eE+-") != std::string::npos) return s;
  try {
    size_t used = 0;
    const double v = std::stod(s, &used);
    if (used == s.size()) return num(v, 10);
  } catch (const std::exception&) {
  }
  return s;
}

// config.yaml flattened to dotted keys ("train.lr"), sequences inline.
void flatten_yaml(const YAML::Node& node, const std::string& prefix,
                  std::vector<std::pair<std::string, std::string>>& out) {
  if (node.IsMap()) {
    for (const auto& kv : node) {
      const std::string key = kv.first.as<std::string>();
      flatten_yaml(kv.second, prefix.empty() ? key : prefix + "." + key, out);
    }
  } else if (node.IsSequence()) {
    std::string s = "[";
    for (size_t i = 0; i < node.size(); ++i) {
      if (i) s += ", ";
      s += node[i].IsScalar() ? scalar_text(node[i]) : YAML::Dump(node[i]);
    }
    out.emplace_back(prefix, s + "]");
  } else if (node.IsScalar()) {
    out.emplace_back(prefix, scalar_text(node));
  } else {
    out.emplace_back(prefix, "");
  }
}

std::string metrics_cells(const json& m) {
  std::string s;
  for (const char* k : {"n", "auc", "accuracy", "sensitivity", "specificity", "threshold"}) {
    const double v = get(m, k);
    s += "<td class=num>" + (std::string(k) == "n" ? num(v, 10) : fixed(v, 4)) + "</td>";
  }
  return s;
}

const char* kCss = R"(
body{font-family:-apple-system,"Segoe UI",Helvetica,Arial,sans-serif;margin:24px 32px;color:#1d2329;background:#fff;max-width:1180px}
h1{font-size:24px;margin:0 0 4px} h2{font-size:18px;margin:28px 0 8px;border-bottom:1px solid #d8dde3;padding-bottom:4px}
.sub{color:#5a6570;margin:0 0 16px;font-size:13px}
.cards{display:flex;flex-wrap:wrap;gap:12px;margin:12px 0}
.card{border:1px solid #d8dde3;border-radius:6px;padding:8px 14px;min-width:120px}
.card .k{font-size:12px;color:#5a6570}.card .v{font-size:20px;font-weight:600}
.grid{display:flex;flex-wrap:wrap;gap:16px}
figure{margin:0;border:1px solid #e3e7eb;border-radius:6px;padding:6px;background:#fcfdfe}
table{border-collapse:collapse;font-size:13px;margin:6px 0}
th,td{border:1px solid #d8dde3;padding:4px 10px;text-align:left} th{background:#f1f4f7}
td.num{text-align:right;font-variant-numeric:tabular-nums}
table.cm td{width:110px;height:54px;text-align:center;font-size:15px}
td.good{background:#d9efe1} td.bad{background:#f6dcdc}
.note{color:#5a6570;font-size:12px;max-width:900px}
svg text{font-family:Helvetica,Arial,sans-serif}
)";

}  // namespace

std::string html_escape(const std::string& s) {
  std::string out;
  out.reserve(s.size());
  for (char c : s) {
    switch (c) {
      case '&': out += "&amp;"; break;
      case '<': out += "&lt;"; break;
      case '>': out += "&gt;"; break;
      case '"': out += "&quot;"; break;
      case '\'': out += "&#39;"; break;
      default: out += c;
    }
  }
  return out;
}

std::string human_bytes(double bytes) {
  const char* units[] = {"B", "kB", "MB", "GB", "TB"};
  int u = 0;
  while (std::abs(bytes) >= 1000 && u < 4) bytes /= 1000, ++u;
  return (u == 0 ? fixed(bytes, 0) : fixed(bytes, bytes < 10 ? 2 : 1)) + " " + units[u];
}

json histogram_to_json(const ScoreHistogram& h, double threshold, const std::string& source) {
  return {{"bins", h.bins()}, {"neg", h.neg}, {"pos", h.pos}, {"threshold", threshold}, {"source", source}};
}

StatusOr<ScoreHistogram> histogram_from_json(const json& j) {
  ScoreHistogram h;
  try {
    h.neg = j.at("neg").get<std::vector<uint64_t>>();
    h.pos = j.at("pos").get<std::vector<uint64_t>>();
  } catch (const std::exception& e) {
    return corrupt(std::string("score histogram: expected 'neg' and 'pos' count arrays: ") + e.what());
  }
  if (h.neg.size() != h.pos.size()) return corrupt("score histogram: 'neg' and 'pos' differ in length");
  return h;
}

std::string svg_line_plot(const PlotSpec& spec, const std::vector<PlotSeries>& series) {
  const double W = spec.width, H = spec.height;
  const double ml = 58, mr = 14, mt = 30, mb = 44;
  std::vector<const PlotSeries*> shown;
  for (const auto& s : series)
    if (!s.x.empty() && s.x.size() == s.y.size()) shown.push_back(&s);
  size_t longest = 0;
  for (const auto* s : shown) longest = std::max(longest, s->name.size());
  const size_t cols = longest > 18 ? 2 : 3;  // legend entries per line
  const double legend_h = shown.size() > 1 ? 16.0 * ((shown.size() + cols - 1) / cols) : 0;
  const double ph = H - mt - mb - legend_h, pw = W - ml - mr;
  double xlo = INFINITY, xhi = -INFINITY, ylo = INFINITY, yhi = -INFINITY;
  for (const auto* s : shown)
    for (size_t i = 0; i < s->x.size(); ++i) {
      if (!std::isfinite(s->x[i]) || !std::isfinite(s->y[i])) continue;
      xlo = std::min(xlo, s->x[i]), xhi = std::max(xhi, s->x[i]);
      ylo = std::min(ylo, s->y[i]), yhi = std::max(yhi, s->y[i]);
    }
  const bool empty = !std::isfinite(xlo);
  if (empty) xlo = 0, xhi = 1, ylo = 0, yhi = 1;
  if (spec.y_unit_interval) {
    ylo = std::min(0.0, ylo), yhi = std::max(1.0, yhi);
  } else {
    if (ylo > 0 && ylo < 0.5 * yhi) ylo = 0;  // start at zero unless that squashes the curves
    const double pad = (yhi - ylo) * 0.08;
    if (pad > 0) yhi += pad, ylo = ylo == 0 ? 0 : ylo - pad;
    if (!(yhi > ylo)) ylo -= 0.5, yhi += 0.5;
  }
  if (!(xhi > xlo)) xlo -= 0.5, xhi += 0.5;
  auto px = [&](double x) { return ml + (x - xlo) / (xhi - xlo) * pw; };
  auto py = [&](double y) { return mt + ph - (y - ylo) / (yhi - ylo) * ph; };

  std::ostringstream o;
  o << "<svg xmlns=\"http://www.w3.org/2000/svg\" class=\"plot\" width=\"" << W << "\" height=\"" << H
    << "\" viewBox=\"0 0 " << W << " " << H << "\" role=\"img\" aria-label=\"" << html_escape(spec.title) << "\">";
  o << "<rect x=\"0\" y=\"0\" width=\"" << W << "\" height=\"" << H << "\" fill=\"#ffffff\"/>";
  o << "<text x=\"" << W / 2 << "\" y=\"18\" text-anchor=\"middle\" font-size=\"14\" font-weight=\"600\">"
    << html_escape(spec.title) << "</text>";
  // Grid and ticks.
  for (double t : nice_ticks(ylo, yhi, 5, false)) {
    if (t < ylo - 1e-12 || t > yhi + 1e-12) continue;
    o << "<line x1=\"" << ml << "\" x2=\"" << ml + pw << "\" y1=\"" << py(t) << "\" y2=\"" << py(t)
      << "\" stroke=\"#e6e9ed\"/>";
    o << "<text x=\"" << ml - 6 << "\" y=\"" << py(t) + 4 << "\" text-anchor=\"end\" font-size=\"11\" fill=\"#444\">"
      << num(t, 4) << "</text>";
  }
  for (double t : nice_ticks(xlo, xhi, 8, spec.integer_x)) {
    if (t < xlo - 1e-12 || t > xhi + 1e-12) continue;
    o << "<line x1=\"" << px(t) << "\" x2=\"" << px(t) << "\" y1=\"" << mt + ph << "\" y2=\"" << mt + ph + 4
      << "\" stroke=\"#444\"/>";
    o << "<text x=\"" << px(t) << "\" y=\"" << mt + ph + 16 << "\" text-anchor=\"middle\" font-size=\"11\" fill=\"#444\">"
      << num(t, 4) << "</text>";
  }
  o << "<rect x=\"" << ml << "\" y=\"" << mt << "\" width=\"" << pw << "\" height=\"" << ph
    << "\" fill=\"none\" stroke=\"#8a939c\"/>";
  o << "<text x=\"" << ml + pw / 2 << "\" y=\"" << mt + ph + 32 << "\" text-anchor=\"middle\" font-size=\"12\">"
    << html_escape(spec.x_label) << "</text>";
  o << "<text transform=\"translate(14," << mt + ph / 2 << ") rotate(-90)\" text-anchor=\"middle\" font-size=\"12\">"
    << html_escape(spec.y_label) << "</text>";
  if (empty)
    o << "<text x=\"" << ml + pw / 2 << "\" y=\"" << mt + ph / 2 << "\" text-anchor=\"middle\" fill=\"#888\">no data</text>";
  // Series.
  for (size_t k = 0; k < shown.size(); ++k) {
    const PlotSeries& s = *shown[k];
    const char* colour = kPalette[k % (sizeof(kPalette) / sizeof(kPalette[0]))];
    std::string pts;
    for (size_t i = 0; i < s.x.size(); ++i) {
      if (!std::isfinite(s.x[i]) || !std::isfinite(s.y[i])) continue;
      pts += num(px(s.x[i]), 6) + "," + num(py(s.y[i]), 6) + " ";
    }
    o << "<polyline class=\"series\" data-name=\"" << html_escape(s.name) << "\" fill=\"none\" stroke=\"" << colour
      << "\" stroke-width=\"" << (s.dashed ? 1.6 : 2.4) << "\"" << (s.dashed ? " stroke-dasharray=\"5,3\"" : "")
      << " points=\"" << pts << "\"/>";
    if (s.x.size() <= 60)
      for (size_t i = 0; i < s.x.size(); ++i) {
        if (!std::isfinite(s.x[i]) || !std::isfinite(s.y[i])) continue;
        o << "<circle cx=\"" << px(s.x[i]) << "\" cy=\"" << py(s.y[i]) << "\" r=\"2.8\" fill=\"" << colour
          << "\"><title>" << html_escape(s.name) << " @ " << num(s.x[i]) << ": " << num(s.y[i], 5)
          << "</title></circle>";
      }
    if (shown.size() > 1) {
      const double lx = ml + (k % cols) * (pw / cols), ly = H - legend_h - 4 + 16.0 * (k / cols) + 8;
      o << "<line x1=\"" << lx << "\" x2=\"" << lx + 20 << "\" y1=\"" << ly << "\" y2=\"" << ly << "\" stroke=\""
        << colour << "\" stroke-width=\"2.4\"" << (s.dashed ? " stroke-dasharray=\"5,3\"" : "") << "/>";
      o << "<text x=\"" << lx + 25 << "\" y=\"" << ly + 4 << "\" font-size=\"11\">" << html_escape(s.name)
        << "</text>";
    }
  }
  o << "</svg>";
  return o.str();
}

Confusion confusion_at(const ScoreHistogram& h, double threshold) {
  Confusion c;
  for (int b = 0; b < h.bins(); ++b) {
    const double lower_edge = static_cast<double>(b) / h.bins();
    const bool pred = lower_edge >= threshold - 1e-12;
    (pred ? c.tp : c.fn) += static_cast<int64_t>(h.pos[b]);
    (pred ? c.fp : c.tn) += static_cast<int64_t>(h.neg[b]);
  }
  return c;
}

std::string svg_roc_curve(const ScoreHistogram& h, double threshold, int size) {
  const double S = size, m = 46, pw = S - m - 12;
  double P = 0, N = 0;
  for (int b = 0; b < h.bins(); ++b) P += h.pos[b], N += h.neg[b];
  auto px = [&](double fpr) { return m + fpr * pw; };
  auto py = [&](double tpr) { return 28 + (1 - tpr) * pw; };
  std::ostringstream o;
  const double H = 28 + pw + 40;
  o << "<svg xmlns=\"http://www.w3.org/2000/svg\" class=\"roc\" width=\"" << S << "\" height=\"" << H
    << "\" viewBox=\"0 0 " << S << " " << H << "\" role=\"img\" aria-label=\"ROC curve\">";
  o << "<rect x=\"0\" y=\"0\" width=\"" << S << "\" height=\"" << H << "\" fill=\"#ffffff\"/>";
  o << "<text x=\"" << S / 2 << "\" y=\"18\" text-anchor=\"middle\" font-size=\"14\" font-weight=\"600\">ROC curve (AUC "
    << fixed(roc_auc(h), 4) << ")</text>";
  for (double t : {0.0, 0.2, 0.4, 0.6, 0.8, 1.0}) {
    o << "<line x1=\"" << px(0) << "\" x2=\"" << px(1) << "\" y1=\"" << py(t) << "\" y2=\"" << py(t)
      << "\" stroke=\"#e6e9ed\"/><line x1=\"" << px(t) << "\" x2=\"" << px(t) << "\" y1=\"" << py(0) << "\" y2=\""
      << py(1) << "\" stroke=\"#e6e9ed\"/>";
    o << "<text x=\"" << px(0) - 6 << "\" y=\"" << py(t) + 4 << "\" text-anchor=\"end\" font-size=\"11\">" << num(t)
      << "</text><text x=\"" << px(t) << "\" y=\"" << py(0) + 15 << "\" text-anchor=\"middle\" font-size=\"11\">"
      << num(t) << "</text>";
  }
  o << "<rect x=\"" << m << "\" y=\"28\" width=\"" << pw << "\" height=\"" << pw << "\" fill=\"none\" stroke=\"#8a939c\"/>";
  o << "<line x1=\"" << px(0) << "\" y1=\"" << py(0) << "\" x2=\"" << px(1) << "\" y2=\"" << py(1)
    << "\" stroke=\"#9aa3ab\" stroke-dasharray=\"4,4\"/>";
  o << "<text x=\"" << m + pw / 2 << "\" y=\"" << py(0) + 31 << "\" text-anchor=\"middle\" font-size=\"12\">"
    << "false positive rate (1 - specificity)</text>";
  o << "<text transform=\"translate(13," << 28 + pw / 2 << ") rotate(-90)\" text-anchor=\"middle\" font-size=\"12\">"
    << "true positive rate (sensitivity)</text>";
  if (P > 0 && N > 0) {
    // Thresholds from above 1 down to 0: one point per bin edge (empty bins add no vertex).
    std::string pts = num(px(0), 6) + "," + num(py(0), 6) + " ";
    double tp = 0, fp = 0;
    for (int b = h.bins() - 1; b >= 0; --b) {
      if (h.pos[b] == 0 && h.neg[b] == 0) continue;
      tp += h.pos[b], fp += h.neg[b];
      pts += num(px(fp / N), 6) + "," + num(py(tp / P), 6) + " ";
    }
    o << "<polyline class=\"roc-curve\" fill=\"none\" stroke=\"#1f5fa8\" stroke-width=\"2.4\" points=\"" << pts << "\"/>";
    const Confusion c = confusion_at(h, threshold);
    const double tpr = c.tp / P, fpr = c.fp / N;
    o << "<circle class=\"operating-point\" cx=\"" << px(fpr) << "\" cy=\"" << py(tpr)
      << "\" r=\"5\" fill=\"#d1495b\"><title>threshold " << fixed(threshold, 3) << "</title></circle>";
    o << "<text x=\"" << std::min(px(fpr) + 8, S - 120) << "\" y=\"" << py(tpr) + 16
      << "\" font-size=\"11\" fill=\"#d1495b\">threshold " << fixed(threshold, 3) << "</text>";
  } else {
    o << "<text x=\"" << m + pw / 2 << "\" y=\"" << 28 + pw / 2
      << "\" text-anchor=\"middle\" fill=\"#888\">needs both classes</text>";
  }
  o << "</svg>";
  return o.str();
}

std::string html_confusion_matrix(const Confusion& c, double threshold) {
  std::ostringstream o;
  const double P = static_cast<double>(c.tp + c.fn), N = static_cast<double>(c.fp + c.tn);
  auto pct = [](double a, double b) { return b > 0 ? fixed(100.0 * a / b, 1) + "%" : std::string("n/a"); };
  o << "<table class=\"cm\"><tr><th></th><th>predicted PNEUMONIA</th><th>predicted NORMAL</th></tr>"
    << "<tr><th>actual PNEUMONIA (" << static_cast<int64_t>(P) << ")</th><td class=good>" << c.tp
    << "<br><small>TP</small></td><td class=bad>" << c.fn << "<br><small>FN</small></td></tr>"
    << "<tr><th>actual NORMAL (" << static_cast<int64_t>(N) << ")</th><td class=bad>" << c.fp
    << "<br><small>FP</small></td><td class=good>" << c.tn << "<br><small>TN</small></td></tr></table>"
    << "<p class=note>At threshold " << fixed(threshold, 3) << " (score &ge; threshold is PNEUMONIA): sensitivity "
    << pct(c.tp, P) << ", specificity " << pct(c.tn, N) << ", accuracy " << pct(c.tp + c.tn, P + N) << ".</p>";
  return o.str();
}

namespace {

// Scores the final model on labelled folders (ReportOptions::data_dirs).
StatusOr<std::pair<ScoreHistogram, double>> histogram_from_model(const std::string& model_path,
                                                                 const std::vector<std::string>& dirs) {
  FEDRAD_ASSIGN_OR_RETURN(auto loaded, training::load_model(model_path));
  std::vector<float> scores;
  std::vector<int> labels;
  try {
    for (const auto& dir : dirs) {
      auto set = training::load_image_set(dir, loaded.config.data, loaded.config.train.threads);
      if (!set.ok()) return set.status();
      auto p = training::predict(loaded.model, *set);
      scores.insert(scores.end(), p.scores.begin(), p.scores.end());
      labels.insert(labels.end(), p.labels.begin(), p.labels.end());
    }
  } catch (const std::exception& e) {
    return internal_error(std::string("scoring the model failed: ") + e.what());
  }
  return std::make_pair(ScoreHistogram::of(scores, labels), loaded.meta.threshold);
}

std::vector<double> seq(const std::vector<json>& rows, const char* key) {
  std::vector<double> v;
  for (const auto& r : rows) v.push_back(get(r, key));
  return v;
}

bool any_has(const std::vector<json>& rows, const char* key) {
  for (const auto& r : rows)
    if (r.contains(key) && r[key].is_number()) return true;
  return false;
}

std::string figure(const std::string& svg) { return "<figure>" + svg + "</figure>"; }

}  // namespace

StatusOr<std::string> write_report(const std::string& out_dir, const ReportOptions& options) {
  auto log = logger("report");
  FEDRAD_ASSIGN_OR_RETURN(auto rows, read_jsonl(out_dir + "/metrics.jsonl"));
  // Segmentation rows nest their scores ({"segmentation": {"mean_dice", "dice": {...}, "hd95": {...}}});
  // flattened here to mean_dice, dice_<name>, hd95_<name> like the CSV's columns.
  for (auto& r : rows) {
    if (!r.contains("segmentation") || !r["segmentation"].is_object()) continue;
    const json& sg = r["segmentation"];
    if (sg.contains("mean_dice")) r["mean_dice"] = sg["mean_dice"];
    for (const char* part : {"dice", "hd95"})
      if (sg.contains(part) && sg[part].is_object())
        for (const auto& [name, v] : sg[part].items()) {
          std::string key = std::string(part) + "_" + name;
          std::replace(key.begin(), key.end(), ' ', '_');
          r[key] = v;
        }
  }
  json summary = json::object();
  if (auto s = read_json(out_dir + "/summary.json"); s.ok()) summary = *s;
  else log->warn("{}", s.status().to_string());

  // Study (rows per round and scope) or baseline (rows per epoch).
  const bool baseline = !rows.empty() && rows.front().contains("epoch");
  std::ostringstream body;
  std::string title;
  std::vector<std::string> figures;

  const std::string study = summary.contains("study") ? get_str(summary, "study") : get_str(summary, "kind", "study");
  // Segmentation studies record Dice (mean_dice, dice_<label or region>) where classification
  // records AUC; the plots follow whichever the metrics hold.
  const bool seg = any_has(rows, "mean_dice") || any_has(rows, "val_mean_dice");
  const char* quality = seg ? "mean_dice" : "auc";
  const char* val_quality = seg ? "val_mean_dice" : "val_auc";
  const std::string quality_name = seg ? "mean Dice" : "AUC", loss_name = seg ? "Dice + CE loss" : "BCE loss";
  if (!baseline) {
    title = "Federated study '" + study + "'";
    int rounds = static_cast<int>(get(summary, "rounds", 0));
    if (rounds <= 0)
      for (const auto& r : rows) rounds = std::max(rounds, static_cast<int>(get(r, "model_round", 0)));
    std::vector<json> global;
    std::map<std::string, std::vector<json>> per_site;  // ordered by name
    std::vector<std::string> site_order;
    for (const auto& r : rows) {
      const std::string scope = get_str(r, "scope");
      if (scope == "global") {
        global.push_back(r);
      } else {
        if (!per_site.count(scope)) site_order.push_back(scope);
        per_site[scope].push_back(r);
      }
    }
    // Quality of each round's model (0 = the initial model): global pooled, then each site's.
    // Classification: AUC; segmentation: mean Dice over the structures, and Dice per region.
    std::vector<PlotSeries> auc{{"global (pooled)", seq(global, "model_round"), seq(global, quality)}};
    for (const auto& s : site_order) {
      PlotSeries p{s, {}, {}, true};
      for (const auto& r : per_site[s])
        if (r.value("ok", true)) p.x.push_back(get(r, "model_round")), p.y.push_back(get(r, quality));
      auc.push_back(p);
    }
    figures.push_back(svg_line_plot(
        {"Validation " + quality_name + " per round", "model after round (0 = initial)", quality_name, true}, auc));
    if (seg && !global.empty()) {
      std::vector<PlotSeries> regions;
      for (const auto& [key, value] : global.front().items())
        if (key.rfind("dice_", 0) == 0) regions.push_back({key.substr(5), seq(global, "model_round"), seq(global, key.c_str())});
      if (!regions.empty())
        figures.push_back(svg_line_plot({"Dice per label and region (global)", "model after round (0 = initial)", "Dice", true},
                                        regions));
    }
    // Losses: pooled validation loss of each round's model; mean local training loss per round.
    PlotSeries train_loss{"train loss (mean over sites)", {}, {}, true};
    for (const auto& g : global) {
      const int round = static_cast<int>(get(g, "round", 0));
      if (round > rounds) continue;
      double sum = 0;
      int n = 0;
      for (const auto& s : site_order)
        for (const auto& r : per_site[s])
          if (static_cast<int>(get(r, "round", -1)) == round && r.value("ok", true)) sum += get(r, "train_loss", 0), ++n;
      if (n) train_loss.x.push_back(round), train_loss.y.push_back(sum / n);
    }
    figures.push_back(svg_line_plot({"Loss per round", "round (validation: model after round)", loss_name},
                                    {{"validation loss (pooled)", seq(global, "model_round"), seq(global, "loss")},
                                     train_loss}));
    // Bytes on the wire per round, all sites together.
    double max_bytes = 0;
    for (const auto& g : global) max_bytes = std::max({max_bytes, get(g, "bytes_up", 0), get(g, "bytes_down", 0)});
    const double scale = max_bytes >= 1e6 ? 1e6 : 1e3;
    const std::string unit = max_bytes >= 1e6 ? "MB" : "kB";
    std::vector<PlotSeries> bytes;
    for (const char* key : {"bytes_up", "bytes_down", "raw_bytes_up", "raw_bytes_down"}) {
      PlotSeries p{std::string(key).substr(0, 4) == "raw_" ? std::string(key + 4) + " (raw fp32)" : key, {}, {},
                   std::string(key).substr(0, 4) == "raw_"};
      for (const auto& g : global) p.x.push_back(get(g, "round")), p.y.push_back(get(g, key) / scale);
      bytes.push_back(p);
    }
    figures.push_back(svg_line_plot({"Bytes per round (all sites; last = final evaluation)", "round", unit}, bytes));
    // Global accuracy, sensitivity, specificity at each round's pooled threshold.
    if (!seg)
      figures.push_back(svg_line_plot(
        {"Global metrics at the pooled threshold", "model after round (0 = initial)", "rate", true},
        {{"accuracy", seq(global, "model_round"), seq(global, "accuracy")},
         {"sensitivity", seq(global, "model_round"), seq(global, "sensitivity"), true},
         {"specificity", seq(global, "model_round"), seq(global, "specificity"), true}}));
    // Differential privacy budget, when the study records one (StudyRecorder: dp_epsilon).
    const char* eps_key = any_has(rows, "dp_epsilon") ? "dp_epsilon" : "epsilon";
    if (any_has(rows, eps_key)) {
      const auto& src = any_has(global, eps_key) ? global : rows;
      PlotSeries p{"epsilon", {}, {}};
      std::string delta;
      for (const auto& r : src)
        if (r.contains(eps_key) && r[eps_key].is_number()) {
          p.x.push_back(get(r, "round")), p.y.push_back(get(r, eps_key));
          if (r.contains("dp_delta")) delta = " at delta " + num(get(r, "dp_delta"), 3);
        }
      figures.push_back(svg_line_plot({"Privacy budget spent (epsilon" + delta + ")", "round", "epsilon"}, {p}));
    }

    // Header cards.
    const json g = summary.value("global", json::object());
    body << "<div class=cards>"
         << "<div class=card><div class=k>final " << quality_name << " (pooled)</div><div class=v id=final-auc>"
         << fixed(seg ? (global.empty() ? NAN : get(global.back(), quality)) : get(g, "auc"), 4) << "</div></div>"
         << "<div class=card><div class=k>rounds</div><div class=v>" << rounds << "</div></div>"
         << "<div class=card><div class=k>sites</div><div class=v>" << site_order.size() << "</div></div>"
         << "<div class=card><div class=k>wall time</div><div class=v>" << fixed(get(summary, "wall_seconds"), 1)
         << " s</div></div>"
         << "<div class=card><div class=k>up / down per round</div><div class=v>"
         << human_bytes(get(summary, "bytes_up_per_round", 0)) << " / "
         << human_bytes(get(summary, "bytes_down_per_round", 0)) << "</div></div></div>";
    body << "<h2>Training progress</h2><div class=grid>";
    for (const auto& f : figures) body << figure(f);
    body << "</div>";
    // Final metrics table: segmentation, Dice per label and region of the last (final evaluation) round.
    if (seg && !global.empty()) {
      const int last = static_cast<int>(get(global.back(), "round", 0));
      std::vector<std::string> keys;
      for (const auto& [key, value] : global.back().items())
        if (key.rfind("dice_", 0) == 0 || key.rfind("hd95_", 0) == 0) keys.push_back(key);
      body << "<h2>Final model</h2><table id=final-metrics><tr><th>scope</th><th>mean Dice</th>";
      for (const auto& k : keys) body << "<th>" << html_escape(k) << "</th>";
      body << "</tr>";
      for (const auto& r : rows) {
        if (static_cast<int>(get(r, "round", -1)) != last) continue;
        body << "<tr><td>" << html_escape(get_str(r, "scope")) << "</td><td>" << fixed(get(r, "mean_dice"), 4) << "</td>";
        for (const auto& k : keys) body << "<td>" << fixed(get(r, k.c_str()), k.rfind("hd95_", 0) == 0 ? 1 : 4) << "</td>";
        body << "</tr>";
      }
      body << "</table><p class=note>Dice per label and BraTS region (WT, TC, ET); HD95 in mm. Sites send sums "
              "over their validation cases, never masks.</p>";
    } else {
    // Final metrics table.
    body << "<h2>Final model</h2><table id=final-metrics><tr><th>scope</th><th>n</th><th>AUC</th><th>accuracy</th>"
            "<th>sensitivity</th><th>specificity</th><th>threshold</th></tr>";
    for (const auto& s : summary.value("per_site", json::array()))
      body << "<tr><td>" << html_escape(get_str(s, "site")) << (s.value("ok", true) ? "" : " (failed)") << "</td>"
           << metrics_cells(s.value("metrics", json::object())) << "</tr>";
    if (!g.empty()) body << "<tr><th>global (pooled)</th>" << metrics_cells(g) << "</tr>";
    body << "</table><p class=note>Per-site numbers are at the global threshold, chosen on the pooled validation "
            "scores (Youden's J). Sites send score histograms, never per-image values.</p>";
    }
  } else {
    title = "Baseline '" + get_str(summary, "kind", "baseline") + "'";
    PlotSeries auc{"validation AUC", {}, {}}, tl{"train loss", {}, {}}, vl{"validation loss", {}, {}, true};
    for (const auto& r : rows) {
      const double e = get(r, "epoch");
      if (std::isfinite(get(r, val_quality))) auc.x.push_back(e), auc.y.push_back(get(r, val_quality));
      if (std::isfinite(get(r, "loss"))) tl.x.push_back(e), tl.y.push_back(get(r, "loss"));
      if (std::isfinite(get(r, "val_loss"))) vl.x.push_back(e), vl.y.push_back(get(r, "val_loss"));
    }
    auc.name = "validation " + quality_name;
    figures.push_back(svg_line_plot({"Validation " + quality_name + " per epoch", "epoch", quality_name, true}, {auc}));
    figures.push_back(svg_line_plot({"Loss per epoch", "epoch", loss_name}, {tl, vl}));
    const json v = summary.value("val", json::object());
    body << "<div class=cards><div class=card><div class=k>final AUC (validation)</div><div class=v id=final-auc>"
         << fixed(get(v, "auc"), 4) << "</div></div><div class=card><div class=k>epochs</div><div class=v>"
         << get_str(summary, "epochs", "?") << "</div></div><div class=card><div class=k>train images</div><div class=v>"
         << get_str(summary, "train_images", "?") << "</div></div><div class=card><div class=k>train time</div>"
         << "<div class=v>" << fixed(get(summary, "train_seconds"), 1) << " s</div></div></div>";
    body << "<h2>Training progress</h2><div class=grid>";
    for (const auto& f : figures) body << figure(f);
    body << "</div><h2>Final model</h2><table id=final-metrics><tr><th>scope</th><th>n</th><th>AUC</th>"
            "<th>accuracy</th><th>sensitivity</th><th>specificity</th><th>threshold</th></tr>"
         << "<tr><th>validation</th>" << metrics_cells(v) << "</tr></table>";
  }

  // ROC curve and confusion matrix of the final model.
  ScoreHistogram hist;
  double threshold = NAN;
  std::string hist_source;
  if (!options.data_dirs.empty()) {
    const std::string model = fs::exists(out_dir + "/global.pt") ? out_dir + "/global.pt" : out_dir + "/model.pt";
    FEDRAD_ASSIGN_OR_RETURN(auto ht, histogram_from_model(model, options.data_dirs));
    hist = std::move(ht.first);
    threshold = ht.second;
    hist_source = "the final model scored on " + std::to_string(options.data_dirs.size()) + " folder(s) given with --data";
  } else if (auto hj = read_json(out_dir + "/final_histogram.json"); hj.ok()) {
    FEDRAD_ASSIGN_OR_RETURN(hist, histogram_from_json(*hj));
    threshold = get(*hj, "threshold");
    hist_source = get_str(*hj, "source", "final_histogram.json");
  } else {
    log->warn("{}: no ROC curve or confusion matrix (pass --data to score the model)", hj.status().to_string());
  }
  if (!std::isfinite(threshold)) {
    const json& m = summary.value("global", summary.value("val", json::object()));
    threshold = get(m, "threshold", 0.5);
  }
  if (hist.bins() > 0) {
    body << "<div class=grid>" << figure(svg_roc_curve(hist, threshold)) << "<div><h3>Confusion matrix</h3>"
         << html_confusion_matrix(confusion_at(hist, threshold), threshold) << "<p class=note>Scores: "
         << html_escape(hist_source) << " (" << hist.bins() << " bins; the curve is exact up to the bin width).</p></div></div>";
  }

  // Settings.
  body << "<h2>Settings</h2>";
  try {
    std::vector<std::pair<std::string, std::string>> kv;
    flatten_yaml(YAML::LoadFile(out_dir + "/config.yaml"), "", kv);
    body << "<table id=settings><tr><th>key</th><th>value</th></tr>";
    for (const auto& [k, v] : kv) body << "<tr><td>" << html_escape(k) << "</td><td>" << html_escape(v) << "</td></tr>";
    body << "</table>";
  } catch (const std::exception& e) {
    body << "<p class=note>config.yaml: " << html_escape(e.what()) << "</p>";
  }

  char when[64];
  const std::time_t now = std::time(nullptr);
  std::strftime(when, sizeof(when), "%Y-%m-%d %H:%M", std::localtime(&now));
  std::ostringstream html;
  html << "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>fedrad report: "
       << html_escape(title) << "</title><style>" << kCss << "</style></head><body>\n<h1>" << html_escape(title)
       << "</h1><p class=sub>fedrad report of " << html_escape(fs::absolute(out_dir).lexically_normal().string())
       << ", written " << when << ". Metrics are on the sites' validation splits.</p>\n"
       << body.str() << "\n</body></html>\n";
  const std::string path = options.output.empty() ? out_dir + "/report.html" : options.output;
  FEDRAD_RETURN_IF_ERROR(training::write_file_atomic(path, html.str()));
  log->info("wrote {} ({} plots{})", path, figures.size() + (hist.bins() > 0 ? 1 : 0),
            hist.bins() > 0 ? ", ROC, confusion matrix" : "");
  return path;
}

}  // namespace fedrad::app
