// End-to-end: a 2-site, 2-round study over real TCP sockets on a slice of the shared pneumonia
// data, then the CLI as a user runs it, and the saved model loaded by PyTorch in Python.
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <array>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <thread>

#include <nlohmann/json.hpp>
#include <torch/torch.h>

#include "apps/study.h"
#include "common/config.h"
#include "tests/test_data.h"
#include "training/checkpoint.h"

namespace fedrad::app {
namespace {
namespace fs = std::filesystem;
using nlohmann::json;

// Copies the first `n` labelled files of a shared split into dir, with their labels.csv.
void copy_slice(const std::string& src, const std::string& dir, int n) {
  fs::create_directories(dir);
  std::ifstream in(src + "/labels.csv");
  std::ofstream out(dir + "/labels.csv");
  std::string line;
  std::getline(in, line);
  out << line << "\n";
  for (int i = 0; i < n && std::getline(in, line); ++i) {
    const std::string rel = line.substr(0, line.find(','));
    fs::create_directories(fs::path(dir + "/" + rel).parent_path());
    fs::copy_file(src + "/" + rel, dir + "/" + rel, fs::copy_options::overwrite_existing);
    out << line << "\n";
  }
}

using testing::free_port;
std::string run(const std::string& cmd, int* exit_code) { return testing::run_command(cmd, exit_code); }

const std::string kFedrad = std::string(FEDRAD_BINARY_DIR) + "/apps/fedrad";

// ctest runs each TEST in a process of its own, so the study runs once, in one TEST, and the
// checks on its outputs are its sections.
class StudyTest : public ::testing::Test {
 protected:
  void SetUp() override {
    root_ = testing::temp_dir("study");
    for (const char* s : {"site-a", "site-c"}) {
      copy_slice(testing::pneumonia_site(s, "train"), root_ + "/data/" + s + "/train", 160);
      copy_slice(testing::pneumonia_site(s, "val"), root_ + "/data/" + s + "/val", 60);
    }
    auto c = parse_study_config(
        "name: it\nseed: 3\nrounds: 2\nsites: [site-a, site-c]\nmodel: {width: 8, stages: 2}\n"
        "train: {local_epochs: 3, batch_size: 32, lr: 0.004, threads: 1}\n"
        "federation: {join_timeout_s: 60, round_timeout_s: 120}\n",
        "it.yaml");
    ASSERT_TRUE(c.ok()) << c.status().to_string();
    config_ = *c;
    config_.federation.address = "tcp://127.0.0.1:" + std::to_string(free_port());
    { std::ofstream(root_ + "/it.yaml") << to_yaml(config_); }

    // The coordinator and two sites, each as it runs in a deployment, over TCP.
    Status coord_status, a_status, c_status;
    std::thread coord([&] { coord_status = coordinator(config_, root_ + "/out"); });
    std::thread a([&] { a_status = site(config_, root_ + "/data/site-a", "site-a", "", 1); });
    std::thread c2([&] { c_status = site(config_, root_ + "/data/site-c", "site-c", "", 1); });
    coord.join();
    a.join();
    c2.join();
    ASSERT_TRUE(coord_status.ok()) << coord_status.to_string();
    ASSERT_TRUE(a_status.ok()) << a_status.to_string();
    ASSERT_TRUE(c_status.ok()) << c_status.to_string();
  }

  void model_improves_over_rounds();
  void outputs_are_saved_and_evaluable();
  void cli_evaluate_prints_metrics_json();
  void cli_predict_writes_a_probability_per_image();
  void pytorch_loads_the_global_model_and_agrees();
  void cli_train_epochs_overrides_the_config();

  std::string root_;
  StudyConfig config_;
};

TEST_F(StudyTest, TwoSitesTwoRoundsOverTcp) {
  ASSERT_FALSE(HasFatalFailure());
  {
    SCOPED_TRACE("model improves over rounds");
    model_improves_over_rounds();
  }
  {
    SCOPED_TRACE("outputs are saved and evaluable");
    outputs_are_saved_and_evaluable();
  }
  {
    SCOPED_TRACE("fedrad evaluate prints metrics JSON");
    cli_evaluate_prints_metrics_json();
  }
  {
    SCOPED_TRACE("fedrad predict writes a probability per image");
    cli_predict_writes_a_probability_per_image();
  }
  {
    SCOPED_TRACE("PyTorch loads the global model and agrees");
    pytorch_loads_the_global_model_and_agrees();
  }
  {
    SCOPED_TRACE("fedrad train --epochs overrides the config's budget");
    cli_train_epochs_overrides_the_config();
  }
}

void StudyTest::model_improves_over_rounds() {
  std::ifstream in(root_ + "/out/metrics.jsonl");
  ASSERT_TRUE(in) << "metrics.jsonl missing";
  std::map<int, double> global_auc;  // model_round -> pooled val AUC
  std::string line;
  int site_rows = 0;
  while (std::getline(in, line)) {
    auto j = json::parse(line);
    if (j["scope"] == "global") global_auc[j["model_round"]] = j["auc"];
    else ++site_rows;
  }
  ASSERT_EQ(global_auc.size(), 3u);  // models after rounds 0 (initial), 1 and 2
  EXPECT_EQ(site_rows, 6);
  EXPECT_GT(global_auc[2], 0.8);
  EXPECT_GT(global_auc[2], global_auc[0] + 0.1) << "initial " << global_auc[0];
}

void StudyTest::outputs_are_saved_and_evaluable() {
  for (const char* f : {"global.pt", "global.json", "models/round-001.pt", "models/round-002.pt", "metrics.csv",
                        "summary.json", "config.yaml"})
    EXPECT_TRUE(fs::exists(root_ + "/out/" + f)) << f;
  auto summary = json::parse(std::ifstream(root_ + "/out/summary.json"));
  auto r = evaluate(root_ + "/out/global.pt", {root_ + "/data/site-a/val", root_ + "/data/site-c/val"});
  ASSERT_TRUE(r.ok()) << r.status().to_string();
  EXPECT_EQ((*r)["n"], 120);
  // The coordinator's AUC comes from the sites' score histograms (1000 bins): near-exact.
  EXPECT_NEAR((*r)["auc"].get<double>(), summary["global"]["auc"].get<double>(), 2e-3);
  EXPECT_DOUBLE_EQ((*r)["threshold"].get<double>(), summary["global"]["threshold"].get<double>());
}

void StudyTest::cli_evaluate_prints_metrics_json() {
  int code = 0;
  auto out = run(kFedrad + " evaluate --model " + root_ + "/out/global.pt --data " + root_ + "/data/site-a/val -q", &code);
  ASSERT_EQ(code, 0) << out;
  auto j = json::parse(out.substr(out.find('{')));  // JSON on stdout; logs go to stderr
  for (const char* k : {"auc", "accuracy", "sensitivity", "specificity", "n"}) EXPECT_TRUE(j.contains(k)) << k;
  EXPECT_EQ(j["n"], 60);
}

void StudyTest::cli_predict_writes_a_probability_per_image() {
  int code = 0;
  const std::string csv = root_ + "/pred.csv";
  auto out = run(kFedrad + " predict --model " + root_ + "/out/global.pt " + root_ + "/data/site-c/val --out " + csv, &code);
  ASSERT_EQ(code, 0) << out;
  std::ifstream in(csv);
  std::string line;
  int rows = 0;
  std::getline(in, line);
  EXPECT_EQ(line, "file,probability,prediction");
  while (std::getline(in, line)) ++rows;
  EXPECT_EQ(rows, 60);
}

void StudyTest::pytorch_loads_the_global_model_and_agrees() {
  // The same input through fedrad's model and through models/python/fedrad_models.py.
  auto loaded = training::load_model(root_ + "/out/global.pt");
  ASSERT_TRUE(loaded.ok());
  torch::manual_seed(0);
  auto x = torch::randn({4, 1, 28, 28});
  auto expected = loaded->model->forward(x).squeeze(1);
  { std::ofstream(root_ + "/x.bin", std::ios::binary).write(reinterpret_cast<const char*>(x.data_ptr<float>()), x.numel() * 4); }
  int code = 0;
  auto out = run("/usr/bin/python3 models/python/check_model.py " + root_ + "/out/global.pt " + root_ + "/x.bin 4", &code);
  ASSERT_EQ(code, 0) << out;
  auto logits = json::parse(out.substr(out.find('[')));
  ASSERT_EQ(logits.size(), 4u);
  for (int i = 0; i < 4; ++i) EXPECT_NEAR(logits[i].get<double>(), expected[i].item<double>(), 1e-4);
}

void StudyTest::cli_train_epochs_overrides_the_config() {
  // The config gives rounds x local epochs = 6 epochs to a baseline; --epochs 2 trains 2, one
  // metrics row each, and summary.json says so. A non-positive budget is refused by name.
  int code = 0;
  const std::string dir = root_ + "/site-c-2ep";
  auto out = run(kFedrad + " -q train --config " + root_ + "/it.yaml --data " + root_ + "/data --site site-c --epochs 2 --out " + dir, &code);
  ASSERT_EQ(code, 0) << out;
  auto summary = json::parse(std::ifstream(dir + "/summary.json"));
  EXPECT_EQ(summary["epochs"], 2) << summary.dump();
  std::ifstream csv(dir + "/metrics.csv");
  std::string line;
  int rows = -1;  // the header
  while (std::getline(csv, line)) ++rows;
  EXPECT_EQ(rows, 2);
  EXPECT_TRUE(fs::exists(dir + "/model.pt"));
  out = run(kFedrad + " -q train --config " + root_ + "/it.yaml --data " + root_ + "/data --epochs 0 --out " + root_ + "/x", &code);
  EXPECT_NE(code, 0);
  EXPECT_NE(out.find("--epochs"), std::string::npos) << out;
}

TEST(Cli, BadConfigFailsNamingTheKey) {
  const std::string dir = testing::temp_dir("cli");
  { std::ofstream(dir + "/bad.yaml") << "rounds: 3\ntrain: {lr: fast}\n"; }
  int code = 0;
  auto out = run(kFedrad + " config show --config " + dir + "/bad.yaml", &code);
  EXPECT_EQ(code, 1);
  EXPECT_NE(out.find("bad.yaml"), std::string::npos) << out;
  EXPECT_NE(out.find("train.lr"), std::string::npos) << out;
}

TEST(Cli, SimulateRefusesASiteWithoutData) {
  const std::string dir = testing::temp_dir("cli-nodata");
  fs::create_directories(dir + "/data/site-x/train");
  { std::ofstream(dir + "/s.yaml") << "sites: [site-x]\n"; }
  int code = 0;
  auto out = run(kFedrad + " simulate --config " + dir + "/s.yaml --data " + dir + "/data --out " + dir + "/out", &code);
  EXPECT_EQ(code, 1);
  EXPECT_NE(out.find("site-x"), std::string::npos) << out;
  EXPECT_NE(out.find("labels.csv"), std::string::npos) << out;
}

TEST(Cli, ConfigShowPrintsDefaults) {
  int code = 0;
  auto out = run(kFedrad + " config show --config configs/pneumonia.yaml", &code);
  ASSERT_EQ(code, 0) << out;
  EXPECT_NE(out.find("round_timeout_s"), std::string::npos);  // a default the file does not set
}

TEST(Cli, ProgressIsALiveLineOnATerminalAndPlainLinesOtherwise) {
  const std::string site = testing::pneumonia_site("site-a", "val");
  int code = 0;
  // Live: the status line is redrawn in place (carriage return + erase line) and cleared at the end.
  auto live = run(kFedrad + " --progress live index " + site, &code);
  ASSERT_EQ(code, 0) << live;
  EXPECT_NE(live.find("\r\033[K"), std::string::npos) << "no live line drawn";
  EXPECT_NE(live.find("indexing"), std::string::npos) << live;
  EXPECT_NE(live.find("files"), std::string::npos) << live;
  // Plain (what a pipe gets with --progress auto): log lines only, no terminal control codes.
  auto plain = run(kFedrad + " index " + site, &code);
  ASSERT_EQ(code, 0) << plain;
  EXPECT_EQ(plain.find('\r'), std::string::npos);
  EXPECT_EQ(plain.find("\033["), std::string::npos);
  EXPECT_NE(plain.find("indexing " + site + ": done"), std::string::npos) << plain;
  // Quiet: no progress at all.
  auto quiet = run(kFedrad + " -q index " + site, &code);
  EXPECT_EQ(quiet.find("indexing"), std::string::npos) << quiet;
}

}  // namespace
}  // namespace fedrad::app
