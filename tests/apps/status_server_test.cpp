// The live status endpoint: a server on a free port, fed round logs as the coordinator's callback
// feeds it, read back over HTTP as a browser or Prometheus would.
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include "apps/status_server.h"

namespace fedrad::app {
namespace {
using nlohmann::json;

fed::RoundLog round_log(uint32_t round, bool final_eval = false) {
  fed::RoundLog log;
  log.round = round;
  log.evaluation_only = final_eval;
  log.seconds = 10;
  log.bytes_up = 1000;
  log.bytes_down = 3000;
  log.global_eval.auc = 0.75;
  log.global_eval.n = 120;
  log.global_eval_loss = 0.5;
  for (const char* s : {"site-a", "site \"b\""}) {
    fed::SiteRoundLog site;
    site.site_id = s;
    site.ok = s[5] == 'a';
    site.train_loss = 0.4;
    site.eval.auc = 0.7;
    site.bytes_up = 500;
    site.bytes_down = 1500;
    log.sites.push_back(site);
  }
  return log;
}

TEST(StatusServerTest, ServesStatusJsonAndPrometheusMetrics) {
  StatusServer server("it-study", 4, {"site-a", "site \"b\""});
  auto port = server.start(0);
  ASSERT_TRUE(port.ok()) << port.status().to_string();
  ASSERT_GT(*port, 0);
  auto get = [&](const std::string& path) { return http_get_local(*port, path); };

  // Before any round: no ETA yet.
  auto r0 = get("/status");
  ASSERT_TRUE(r0.ok()) << r0.status().to_string();
  EXPECT_EQ(r0->status, 200);
  json s0 = json::parse(r0->body);
  EXPECT_EQ(s0["study"], "it-study");
  EXPECT_EQ(s0["round"], 0);
  EXPECT_TRUE(s0["eta_s"].is_null());
  EXPECT_TRUE(s0["last_round"].is_null());

  server.on_round(round_log(1));
  server.on_round(round_log(2));
  auto r = get("/status");
  ASSERT_TRUE(r.ok()) << r.status().to_string();
  EXPECT_EQ(r->content_type, "application/json");
  json s = json::parse(r->body);
  EXPECT_EQ(s["round"], 2);
  EXPECT_EQ(s["rounds"], 4);
  EXPECT_EQ(s["state"], "running");
  EXPECT_EQ(s["sites"].size(), 2u);
  EXPECT_EQ(s["bytes_up_total"], 2000);
  EXPECT_EQ(s["bytes_down_total"], 6000);
  EXPECT_DOUBLE_EQ(s["eta_s"].get<double>(), 30.0);  // 10 s per round, 2 rounds + final evaluation left
  EXPECT_GE(s["elapsed_s"].get<double>(), 0.0);
  EXPECT_EQ(s["last_round"]["round"], 2);
  EXPECT_EQ(s["last_round"]["sites_reported"], 1);
  EXPECT_EQ(s["last_round"]["sites_expected"], 2);
  EXPECT_DOUBLE_EQ(s["last_round"]["global"]["auc"].get<double>(), 0.75);
  EXPECT_EQ(s["last_round"]["sites"][0]["site"], "site-a");

  auto m = get("/metrics");
  ASSERT_TRUE(m.ok()) << m.status().to_string();
  EXPECT_EQ(m->status, 200);
  EXPECT_NE(m->content_type.find("text/plain"), std::string::npos);
  const std::string& text = m->body;
  EXPECT_NE(text.find("# TYPE fedrad_round gauge\nfedrad_round{study=\"it-study\"} 2\n"), std::string::npos) << text;
  EXPECT_NE(text.find("fedrad_global_auc{study=\"it-study\"} 0.75\n"), std::string::npos) << text;
  EXPECT_NE(text.find("# TYPE fedrad_bytes_up_total counter\nfedrad_bytes_up_total{study=\"it-study\"} 2000\n"),
            std::string::npos) << text;
  EXPECT_NE(text.find("fedrad_sites_reported{study=\"it-study\"} 1\n"), std::string::npos) << text;
  EXPECT_NE(text.find("fedrad_eta_seconds{study=\"it-study\"} 30\n"), std::string::npos) << text;
  EXPECT_NE(text.find("fedrad_site_auc{study=\"it-study\",site=\"site-a\"} 0.7\n"), std::string::npos) << text;
  EXPECT_EQ(text.find("site \\\"b\\\"\"} 0.7"), std::string::npos);  // failed sites have no AUC line

  // The final evaluation: done, nothing left.
  server.on_round(round_log(5, true));
  json done = json::parse(get("/status")->body);
  EXPECT_EQ(done["state"], "done");
  EXPECT_EQ(done["final_evaluation_done"], true);
  EXPECT_DOUBLE_EQ(done["eta_s"].get<double>(), 0.0);
  EXPECT_EQ(get("/nope")->status, 404);

  server.stop();
  EXPECT_FALSE(get("/status").ok());
}

// A segmentation study's round logs carry Dice sums and an empty score histogram (AUC 0.5): the
// endpoint reports mean Dice, globally, per structure and per site, and no AUC.
TEST(StatusServerTest, SegmentationStudiesReportDiceNotAuc) {
  StatusServer server("seg-study", 3, {"site-1", "site-2"});
  server.set_seg_structures({"label 1", "WT"});
  auto port = server.start(0);
  ASSERT_TRUE(port.ok()) << port.status().to_string();
  fed::RoundLog log;
  log.round = 1;
  log.global_eval.auc = 0.5;  // what an empty histogram gives
  for (auto [site, dice] : {std::pair<const char*, double>{"site-1", 0.25}, {"site-2", 0.75}}) {
    fed::SiteRoundLog s;
    s.site_id = site;
    s.ok = true;
    s.eval.auc = 0.5;
    s.seg.add(SegCaseMetrics{{dice, dice + 0.2}, {1.0, 2.0}});  // label 1, WT
    log.global_seg.merge(s.seg);
    log.sites.push_back(s);
  }
  server.on_round(log);

  json s = json::parse(http_get_local(*port, "/status")->body);
  const json& global = s["last_round"]["global"];
  EXPECT_FALSE(global.contains("auc")) << global.dump();
  EXPECT_NEAR(global["mean_dice"].get<double>(), 0.6, 1e-12);  // (0.5 + 0.7) / 2
  EXPECT_NEAR(global["dice"]["label 1"].get<double>(), 0.5, 1e-12);
  EXPECT_NEAR(global["dice"]["WT"].get<double>(), 0.7, 1e-12);
  EXPECT_EQ(global["cases"], 2);
  EXPECT_NEAR(s["last_round"]["sites"][1]["mean_dice"].get<double>(), 0.85, 1e-12);
  EXPECT_FALSE(s["last_round"]["sites"][1].contains("auc"));

  const std::string text = http_get_local(*port, "/metrics")->body;
  EXPECT_NE(text.find("fedrad_global_mean_dice{study=\"seg-study\"} 0.6\n"), std::string::npos) << text;
  EXPECT_NE(text.find("fedrad_global_dice{study=\"seg-study\",structure=\"WT\"} 0.7\n"), std::string::npos) << text;
  EXPECT_NE(text.find("fedrad_site_mean_dice{study=\"seg-study\",site=\"site-1\"} 0.35\n"), std::string::npos) << text;
  EXPECT_EQ(text.find("auc"), std::string::npos) << text;
  server.stop();
}

TEST(StatusServerTest, BindsLoopbackOnlyAndReportsAPortInUse) {
  StatusServer a("s", 1, {});
  auto port = a.start(0);
  ASSERT_TRUE(port.ok());
  StatusServer b("s", 1, {});
  auto again = b.start(*port);
  EXPECT_FALSE(again.ok());
  EXPECT_NE(again.status().to_string().find("127.0.0.1:" + std::to_string(*port)), std::string::npos);
  EXPECT_FALSE(StatusServer("s", 1, {}).start(70000).ok());
}

TEST(StatusServerTest, DurationsAndEta) {
  EXPECT_EQ(format_duration(5), "5s");
  EXPECT_EQ(format_duration(200), "3m 20s");
  EXPECT_EQ(format_duration(3720), "1h 02m");
  EXPECT_EQ(format_duration(-1), "?");
  EXPECT_DOUBLE_EQ(eta_seconds(0, 0, 10), -1);
  EXPECT_DOUBLE_EQ(eta_seconds(20, 2, 10), 90);  // 8 rounds + final evaluation at 10 s
}

}  // namespace
}  // namespace fedrad::app
