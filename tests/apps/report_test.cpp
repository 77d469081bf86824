// `fedrad report`: the HTML page from a small fake study folder (and a baseline's), its plots and
// numbers, then the page rendered by a real headless browser (Debian's chromium).
#include <gtest/gtest.h>

#include <array>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <random>
#include <sstream>

#include <nlohmann/json.hpp>

#include "apps/report.h"
#include "common/config.h"
#include "common/metrics.h"
#include "tests/test_data.h"

namespace fedrad::app {
namespace {
namespace fs = std::filesystem;
using nlohmann::json;

std::string slurp(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

size_t count(const std::string& s, const std::string& what) {
  size_t n = 0;
  for (size_t p = s.find(what); p != std::string::npos; p = s.find(what, p + what.size())) ++n;
  return n;
}

std::string run(const std::string& cmd, int* exit_code) { return testing::run_command(cmd, exit_code); }

// Scores of a decent classifier: positives around 0.7, negatives around 0.3.
ScoreHistogram fake_histogram(int n, uint32_t seed) {
  std::mt19937 gen(seed);
  std::normal_distribution<float> pos(0.7f, 0.15f), neg(0.3f, 0.15f);
  std::vector<float> scores;
  std::vector<int> labels;
  for (int i = 0; i < n; ++i) {
    const bool p = i % 3 == 0;
    scores.push_back(std::clamp(p ? pos(gen) : neg(gen), 0.0f, 1.0f));
    labels.push_back(p ? 1 : 0);
  }
  return ScoreHistogram::of(scores, labels);
}

// What StudyRecorder writes for a 3-round, 2-site study (plus an epsilon column, as a DP study
// would record it).
std::string fake_study(const std::string& name, ScoreHistogram* hist_out) {
  const std::string dir = testing::temp_dir(name);
  std::ofstream jsonl(dir + "/metrics.jsonl");
  const int rounds = 3;
  for (int r = 1; r <= rounds + 1; ++r) {
    const double auc = 0.55 + 0.1 * (r - 1);  // 0.55 0.65 0.75 0.85
    json g = {{"round", r}, {"model_round", r - 1}, {"scope", "global"}, {"ok", true}, {"loss", 0.7 - 0.05 * r},
              {"train_loss", 0}, {"bytes_up", 200000 * (r <= rounds ? 1 : 0) + 100}, {"bytes_down", 150000},
              {"raw_bytes_up", 400000}, {"raw_bytes_down", 400000}, {"seconds", 2.5}, {"auc", auc},
              {"accuracy", auc - 0.05}, {"sensitivity", 0.8}, {"specificity", auc - 0.1}, {"threshold", 0.45},
              {"n", 120}, {"positives", 40}, {"dp_epsilon", 0.5 * r}, {"dp_delta", 1e-5}};
    jsonl << g.dump() << "\n";
    for (const char* s : {"site-a", "site-b"}) {
      json row = g;
      row["scope"] = s;
      row["auc"] = auc + (s[5] == 'a' ? 0.02 : -0.02);
      row["train_loss"] = r <= rounds ? 0.69 - 0.1 * r : 0.0;
      row["n"] = 60;
      row.erase("dp_epsilon");
      row.erase("dp_delta");
      jsonl << row.dump() << "\n";
    }
  }
  json summary = {{"study", "unit-study"}, {"rounds", rounds}, {"sites", {"site-a", "site-b"}},
                  {"wall_seconds", 12.5},
                  {"global", {{"auc", 0.8512}, {"accuracy", 0.8}, {"sensitivity", 0.8}, {"specificity", 0.75},
                              {"threshold", 0.45}, {"n", 120}, {"positives", 40}}},
                  {"per_site", {{{"site", "site-a"}, {"ok", true}, {"metrics", {{"auc", 0.87}, {"n", 60}}}},
                                {{"site", "site-b"}, {"ok", true}, {"metrics", {{"auc", 0.83}, {"n", 60}}}}}},
                  {"bytes_up_per_round", 200100}, {"bytes_down_per_round", 150000}};
  std::ofstream(dir + "/summary.json") << summary.dump(2);
  auto cfg = parse_study_config("name: unit-study\nrounds: 3\nsites: [site-a, site-b]\ntrain: {lr: 0.0042}\n", "u.yaml");
  EXPECT_TRUE(cfg.ok()) << cfg.status().to_string();
  std::ofstream(dir + "/config.yaml") << to_yaml(*cfg);
  const ScoreHistogram h = fake_histogram(600, 7);
  std::ofstream(dir + "/final_histogram.json") << histogram_to_json(h, 0.45, "test").dump();
  if (hist_out) *hist_out = h;
  return dir;
}

TEST(ReportTest, StudyReportHasPlotsNumbersAndSettings) {
  ScoreHistogram h;
  const std::string dir = fake_study("report-study", &h);
  auto path = write_report(dir);
  ASSERT_TRUE(path.ok()) << path.status().to_string();
  EXPECT_EQ(*path, dir + "/report.html");
  const std::string html = slurp(*path);

  // Self-contained: no scripts, no external resources.
  EXPECT_EQ(count(html, "<script"), 0u);
  EXPECT_EQ(count(html, "src="), 0u);
  EXPECT_EQ(count(html, "href="), 0u);
  EXPECT_EQ(count(html, "@import"), 0u);
  EXPECT_NE(html.find("<style>"), std::string::npos);

  // AUC, loss, bytes, global rates, epsilon, ROC.
  EXPECT_EQ(count(html, "<svg"), 6u);
  EXPECT_NE(html.find("Validation AUC per round"), std::string::npos);
  EXPECT_NE(html.find("Loss per round"), std::string::npos);
  EXPECT_NE(html.find("Bytes per round"), std::string::npos);
  EXPECT_NE(html.find("Privacy budget spent (epsilon at delta 1e-05)"), std::string::npos);
  EXPECT_NE(html.find("data-name=\"global (pooled)\""), std::string::npos);
  EXPECT_NE(html.find("data-name=\"site-a\""), std::string::npos);
  EXPECT_NE(html.find("data-name=\"site-b\""), std::string::npos);
  EXPECT_NE(html.find("class=\"roc-curve\""), std::string::npos);
  EXPECT_NE(html.find("class=\"operating-point\""), std::string::npos);
  // 4 points for the global AUC series (models 0..3) and markers for every series.
  EXPECT_GE(count(html, "<circle"), 4u * 3);

  // Numbers: final AUC card, the ROC's AUC, the confusion matrix at the saved threshold.
  EXPECT_NE(html.find("id=final-auc>0.8512<"), std::string::npos);
  char roc_title[64];
  std::snprintf(roc_title, sizeof(roc_title), "ROC curve (AUC %.4f)", roc_auc(h));
  EXPECT_NE(html.find(roc_title), std::string::npos) << roc_title;
  const Confusion c = confusion_at(h, 0.45);
  EXPECT_EQ(c.tp + c.fn, 200);
  EXPECT_EQ(c.fp + c.tn, 400);
  EXPECT_NE(html.find("<td class=good>" + std::to_string(c.tp) + "<br><small>TP"), std::string::npos);
  EXPECT_NE(html.find("<td class=good>" + std::to_string(c.tn) + "<br><small>TN"), std::string::npos);
  EXPECT_NE(html.find("<td class=bad>" + std::to_string(c.fn) + "<br><small>FN"), std::string::npos);
  EXPECT_NE(html.find("<td class=bad>" + std::to_string(c.fp) + "<br><small>FP"), std::string::npos);
  EXPECT_NE(html.find("200.1 kB / 150.0 kB"), std::string::npos);  // bytes per round card

  // Settings from config.yaml, flattened.
  EXPECT_NE(html.find("<td>train.lr</td><td>0.0042</td>"), std::string::npos);
  EXPECT_NE(html.find("<td>sites</td><td>[site-a, site-b]</td>"), std::string::npos);
}

TEST(ReportTest, EpsilonPlotOnlyWhenRecorded) {
  const std::string dir = fake_study("report-noeps", nullptr);
  std::string lines, line;
  {
    std::ifstream in(dir + "/metrics.jsonl");
    while (std::getline(in, line)) {
      json j = json::parse(line);
      j.erase("dp_epsilon");
      j.erase("dp_delta");
      lines += j.dump() + "\n";
    }
  }
  std::ofstream(dir + "/metrics.jsonl") << lines;
  fs::remove(dir + "/final_histogram.json");
  auto path = write_report(dir);
  ASSERT_TRUE(path.ok()) << path.status().to_string();
  const std::string html = slurp(*path);
  EXPECT_EQ(html.find("epsilon"), std::string::npos);
  EXPECT_EQ(html.find("roc-curve"), std::string::npos);  // no histogram, no --data: no ROC
  EXPECT_EQ(count(html, "<svg"), 4u);
}

TEST(ReportTest, BaselineReportPlotsEpochs) {
  const std::string dir = testing::temp_dir("report-baseline");
  std::ofstream jsonl(dir + "/metrics.jsonl");
  for (int e = 1; e <= 5; ++e)
    jsonl << json{{"epoch", e}, {"loss", 0.7 / e}, {"val_loss", 0.6 / e + 0.1}, {"val_auc", 0.6 + 0.05 * e},
                  {"seconds", 1.0 * e}}.dump()
          << "\n";
  jsonl.close();
  std::ofstream(dir + "/summary.json")
      << json{{"kind", "centralised"}, {"epochs", 5}, {"train_images", 320}, {"train_seconds", 5.0},
              {"val", {{"auc", 0.85}, {"threshold", 0.5}, {"n", 100}}}}.dump();
  std::ofstream(dir + "/final_histogram.json") << histogram_to_json(fake_histogram(200, 3), 0.5, "test").dump();
  auto path = write_report(dir);
  ASSERT_TRUE(path.ok()) << path.status().to_string();
  const std::string html = slurp(*path);
  EXPECT_NE(html.find("Baseline &#39;centralised&#39;"), std::string::npos);
  EXPECT_NE(html.find("Validation AUC per epoch"), std::string::npos);
  EXPECT_NE(html.find("id=final-auc>0.8500<"), std::string::npos);
  EXPECT_EQ(count(html, "<svg"), 3u);
}

TEST(ReportTest, MissingMetricsIsAClearError) {
  const std::string dir = testing::temp_dir("report-empty");
  auto path = write_report(dir);
  ASSERT_FALSE(path.ok());
  EXPECT_NE(path.status().to_string().find("metrics.jsonl"), std::string::npos);
}

TEST(ReportTest, PiecesBehave) {
  EXPECT_EQ(html_escape("<a href=\"x\">&'"), "&lt;a href=&quot;x&quot;&gt;&amp;&#39;");
  EXPECT_EQ(human_bytes(999), "999 B");
  EXPECT_EQ(human_bytes(1234567), "1.23 MB");
  const std::string svg = svg_line_plot({"T", "x", "y"}, {{"a", {1, 2, 3}, {0.5, 0.7, 0.6}}});
  EXPECT_EQ(svg.rfind("<svg", 0), 0u);
  EXPECT_NE(svg.find("<polyline"), std::string::npos);
  EXPECT_EQ(count(svg, "<circle"), 3u);
  EXPECT_NE(svg_line_plot({"T", "x", "y"}, {}).find("no data"), std::string::npos);
  // A perfect classifier's ROC reaches (0, 1).
  ScoreHistogram h = ScoreHistogram::of({0.1f, 0.2f, 0.8f, 0.9f}, {0, 0, 1, 1}, 10);
  EXPECT_NE(svg_roc_curve(h, 0.5).find("AUC 1.0000"), std::string::npos);
  const Confusion c = confusion_at(h, 0.5);
  EXPECT_EQ(c.tp, 2);
  EXPECT_EQ(c.tn, 2);
  EXPECT_EQ(c.fp, 0);
  EXPECT_EQ(c.fn, 0);
  auto back = histogram_from_json(histogram_to_json(h, 0.5, "x"));
  ASSERT_TRUE(back.ok());
  EXPECT_EQ(back->pos, h.pos);
  EXPECT_FALSE(histogram_from_json(json{{"neg", {1, 2}}}).ok());
}

TEST(ReportTest, CliWritesTheReport) {
  const std::string dir = fake_study("report-cli", nullptr);
  int code = 0;
  const std::string out = run(std::string(FEDRAD_BINARY_DIR) + "/apps/fedrad report " + dir, &code);
  EXPECT_EQ(code, 0) << out;
  EXPECT_NE(out.find(dir + "/report.html"), std::string::npos) << out;
  EXPECT_TRUE(fs::exists(dir + "/report.html"));
  const std::string bad = run(std::string(FEDRAD_BINARY_DIR) + "/apps/fedrad report " + dir + "/nope", &code);
  EXPECT_NE(code, 0) << bad;
}

// The page as a browser draws it: Debian's chromium, headless (scripts/setup.sh installs it).
TEST(ReportTest, RendersInHeadlessChromium) {
  int code = 0;
  const std::string which = run("command -v chromium", &code);
  ASSERT_EQ(code, 0) << "chromium is not installed: run scripts/setup.sh (Debian package 'chromium'); "
                        "this test renders report.html in a headless browser";
  const std::string dir = fake_study("report-chromium", nullptr);
  auto path = write_report(dir);
  ASSERT_TRUE(path.ok()) << path.status().to_string();
  const std::string png = dir + "/report.png";
  const std::string cmd = "timeout 120 chromium --headless --no-sandbox --disable-gpu --hide-scrollbars "
                          "--no-first-run --user-data-dir=" + dir + "/chromium-profile --screenshot=" + png +
                          " --window-size=1200,2000 file://" + fs::absolute(*path).string();
  const std::string out = run(cmd, &code);
  ASSERT_EQ(code, 0) << cmd << "\n" << out;
  ASSERT_TRUE(fs::exists(png)) << out;
  const std::string bytes = slurp(png);
  ASSERT_GT(bytes.size(), 24u);
  ASSERT_EQ(bytes.substr(0, 8), std::string("\x89PNG\r\n\x1a\n", 8));
  ASSERT_EQ(bytes.substr(12, 4), "IHDR");
  auto be32 = [&](size_t at) {
    return (static_cast<uint32_t>(static_cast<uint8_t>(bytes[at])) << 24) |
           (static_cast<uint32_t>(static_cast<uint8_t>(bytes[at + 1])) << 16) |
           (static_cast<uint32_t>(static_cast<uint8_t>(bytes[at + 2])) << 8) |
           static_cast<uint32_t>(static_cast<uint8_t>(bytes[at + 3]));
  };
  EXPECT_EQ(be32(16), 1200u);
  EXPECT_EQ(be32(20), 2000u);
  // A blank 1200x2000 page compresses to a few kB; plots, text and tables do not.
  EXPECT_GT(bytes.size(), 60u * 1024) << "the screenshot looks blank: " << png;
}

}  // namespace
}  // namespace fedrad::app
