// Coordinator and sites over real TCP sockets on 127.0.0.1, with fake learners whose updates
// make FedAvg's result computable by hand.
#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <future>
#include <mutex>
#include <thread>
#include <zmq.hpp>

#include "federation/federation.h"
#include "federation/wire.h"
#include "tests/test_data.h"
#include "tests/federation/helpers/study_runner.h"

namespace fedrad::fed {
namespace {

using fedrad::testing::free_port;

// fit: global + (index + 1) with index + 1 examples; evaluate: a fixed histogram per site.
class FakeLearner : public Learner {
 public:
  explicit FakeLearner(int index) : index_(index) {}

  int fail_round = -1;  // fit fails in this round
  int slow_round = -1;  // fit sleeps slow_seconds in this round
  double slow_seconds = 0;

  StatusOr<FitReport> fit(const Weights& global, const RoundSettings& settings) override {
    {
      std::lock_guard<std::mutex> lock(mu_);
      seen_.push_back(settings);
    }
    if (static_cast<int>(settings.round) == fail_round)
      return internal_error("secret patient 12345 made the disk catch fire");
    if (static_cast<int>(settings.round) == slow_round)
      std::this_thread::sleep_for(std::chrono::duration<double>(slow_seconds));
    FitReport r;
    r.weights = global;
    for (TensorRecord& t : r.weights)
      for (float& v : t.data) v += static_cast<float>(index_ + 1);
    r.num_examples = static_cast<uint64_t>(index_ + 1);
    r.train_loss = 1.0 / settings.round;
    r.train_seconds = 0.01;
    return r;
  }

  StatusOr<EvalReport> evaluate(const Weights&) override {
    EvalReport e;
    e.histogram.neg.assign(10, 0);
    e.histogram.pos.assign(10, 0);
    e.histogram.neg[2] = static_cast<uint64_t>(index_ + 1);
    e.histogram.neg[8] = 1;
    e.histogram.pos[7] = static_cast<uint64_t>(index_ + 1);
    e.num_examples = 2 * static_cast<uint64_t>(index_ + 1) + 1;
    e.loss = 0.5 + index_;
    return e;
  }

  uint64_t num_train_examples() const override { return 10u * (index_ + 1); }
  uint64_t num_val_examples() const override { return 5; }

  std::vector<RoundSettings> seen() const {
    std::lock_guard<std::mutex> lock(mu_);
    return seen_;
  }

 private:
  int index_;
  mutable std::mutex mu_;
  std::vector<RoundSettings> seen_;
};

struct Study {
  CoordinatorOptions coordinator;
  std::vector<SiteOptions> sites;
  std::vector<std::unique_ptr<FakeLearner>> learners;
  std::vector<RoundLog> logs;
  std::vector<Weights> round_weights;

  explicit Study(int num_sites, int rounds) {
    const std::string port = std::to_string(free_port());
    coordinator.bind_address = "tcp://127.0.0.1:" + port;
    coordinator.study = "pneumonia";
    coordinator.rounds = rounds;
    coordinator.settings.seed = 7;
    coordinator.settings.lr = 0.01;
    coordinator.join_timeout_s = 10;
    coordinator.round_timeout_s = 10;
    coordinator.initial_weights = {TensorRecord{"w", {2}, {0.0f, 1.0f}}};
    coordinator.on_round_end = [this](const RoundLog& log, const Weights& w) {
      logs.push_back(log);
      round_weights.push_back(w);
    };
    for (int i = 0; i < num_sites; ++i) {
      const std::string id = std::string("site-") + static_cast<char>('a' + i);
      coordinator.expected_sites.push_back(id);
      SiteOptions s;
      s.coordinator_address = coordinator.bind_address;
      s.site_id = id;
      s.study = coordinator.study;
      s.idle_timeout_s = 20;
      s.compression = i % 2 ? Compression::kNone : Compression::kZstd;
      sites.push_back(s);
      learners.push_back(std::make_unique<FakeLearner>(i));
    }
  }

  testing::StudyOutcome run() { return testing::run_study_in_process(coordinator, sites, learners); }
};

// FedAvg of fake updates: each round adds sum_k n_k (k+1) / sum_k n_k with n_k = k+1.
float expected_step(const std::vector<int>& indices) {
  double num = 0, den = 0;
  for (int k : indices) num += (k + 1.0) * (k + 1.0), den += k + 1.0;
  return static_cast<float>(num / den);
}

TEST(FederationIntegration, ThreeSitesThreeRoundsMatchHandComputedFedAvg) {
  Study study(3, 3);
  const auto out = study.run();
  ASSERT_TRUE(out.weights.ok()) << out.weights.status().to_string();
  for (const Status& s : out.sites) EXPECT_TRUE(s.ok()) << s.to_string();

  const float step = expected_step({0, 1, 2});  // 14/6
  ASSERT_EQ(out.weights->size(), 1u);
  EXPECT_NEAR((*out.weights)[0].data[0], 3 * step, 1e-5);
  EXPECT_NEAR((*out.weights)[0].data[1], 1 + 3 * step, 1e-5);

  ASSERT_EQ(study.logs.size(), 4u);
  for (int r = 0; r < 4; ++r) {
    const RoundLog& log = study.logs[r];
    SCOPED_TRACE("round " + std::to_string(r + 1));
    EXPECT_EQ(log.round, static_cast<uint32_t>(r + 1));
    EXPECT_EQ(log.evaluation_only, r == 3);
    ASSERT_EQ(log.sites.size(), 3u);
    uint64_t down = 0, up = 0;
    for (size_t i = 0; i < 3; ++i) {
      const SiteRoundLog& s = log.sites[i];
      EXPECT_EQ(s.site_id, study.sites[i].site_id);
      EXPECT_TRUE(s.ok);
      EXPECT_EQ(s.error_code, 0);
      EXPECT_GT(s.bytes_down, 0u);
      EXPECT_GT(s.bytes_up, 0u);
      EXPECT_GT(s.raw_bytes_down, 40u);
      EXPECT_GT(s.raw_bytes_up, 40u);
      // Site b sends uncompressed, so its wire and raw sizes agree.
      if (i == 1) EXPECT_EQ(s.bytes_up, s.raw_bytes_up);
      if (r < 3) {
        EXPECT_EQ(s.num_examples, i + 1);
        EXPECT_DOUBLE_EQ(s.train_loss, 1.0 / (r + 1));
      }
      EXPECT_DOUBLE_EQ(s.eval_loss, 0.5 + i);
      EXPECT_EQ(s.eval.n, static_cast<int64_t>(2 * (i + 1) + 1));
      EXPECT_DOUBLE_EQ(s.eval.threshold, 0.5);
      down += s.bytes_down;
      up += s.bytes_up;
    }
    EXPECT_EQ(log.bytes_down, down);
    EXPECT_EQ(log.bytes_up, up);
    // Pooled: negatives 6 in bin 2 and 3 in bin 8, positives 6 in bin 7.
    EXPECT_EQ(log.global_eval.n, 15);
    EXPECT_EQ(log.global_eval.positives, 6);
    EXPECT_NEAR(log.global_eval.auc, 2.0 / 3.0, 1e-9);
    EXPECT_DOUBLE_EQ(log.global_eval.threshold, 0.5);
    EXPECT_DOUBLE_EQ(log.global_eval.sensitivity, 1.0);
    EXPECT_NEAR(log.global_eval.specificity, 6.0 / 9.0, 1e-9);
    // Eval loss weighted by validation examples: (3*0.5 + 5*1.5 + 7*2.5) / 15.
    EXPECT_NEAR(log.global_eval_loss, (3 * 0.5 + 5 * 1.5 + 7 * 2.5) / 15, 1e-9);
    EXPECT_GE(log.seconds, 0.0);
    EXPECT_NEAR(study.round_weights[r][0].data[0], std::min(r + 1, 3) * step, 1e-5);
  }

  // Each site saw rounds 1..3 with the derived per-round seed and the study's settings.
  for (const auto& learner : study.learners) {
    const auto seen = learner->seen();
    ASSERT_EQ(seen.size(), 3u);
    for (uint32_t r = 1; r <= 3; ++r) {
      EXPECT_EQ(seen[r - 1].round, r);
      EXPECT_EQ(seen[r - 1].seed, 7u * 1000003u + r);
      EXPECT_DOUBLE_EQ(seen[r - 1].lr, 0.01);
    }
  }
}

TEST(FederationIntegration, WrongStudyAndGarbageAreRefusedAndTheRestGoOn) {
  Study study(3, 2);
  study.coordinator.min_sites = 2;
  study.coordinator.join_timeout_s = 1.0;
  study.sites[2].study = "another-study";

  // A peer that speaks garbage must not disturb the coordinator.
  zmq::context_t ctx;
  zmq::socket_t rogue(ctx, zmq::socket_type::dealer);
  rogue.set(zmq::sockopt::linger, 0);
  rogue.connect(study.coordinator.bind_address);
  rogue.send(zmq::str_buffer("hello, is this the study?"), zmq::send_flags::none);
  rogue.send(zmq::str_buffer("FDRD\x01\x00\x04\x00\xff\xff\xff\xff"), zmq::send_flags::none);

  const auto out = study.run();
  ASSERT_TRUE(out.weights.ok()) << out.weights.status().to_string();
  EXPECT_TRUE(out.sites[0].ok()) << out.sites[0].to_string();
  EXPECT_TRUE(out.sites[1].ok()) << out.sites[1].to_string();
  ASSERT_FALSE(out.sites[2].ok());
  EXPECT_NE(out.sites[2].message().find("reason code 1"), std::string::npos) << out.sites[2].to_string();
  EXPECT_TRUE(study.learners[2]->seen().empty());

  const float step = expected_step({0, 1});  // 5/3
  EXPECT_NEAR((*out.weights)[0].data[0], 2 * step, 1e-5);
  ASSERT_EQ(study.logs.size(), 3u);
  for (const RoundLog& log : study.logs) {
    ASSERT_EQ(log.sites.size(), 2u);
    EXPECT_EQ(log.sites[0].site_id, "site-a");
    EXPECT_EQ(log.sites[1].site_id, "site-b");
  }
}

TEST(FederationIntegration, FailedFitIsReportedAndTheRoundStillCompletes) {
  Study study(3, 3);
  study.coordinator.min_sites = 2;
  study.learners[1]->fail_round = 2;
  const auto out = study.run();
  ASSERT_TRUE(out.weights.ok()) << out.weights.status().to_string();
  for (const Status& s : out.sites) EXPECT_TRUE(s.ok()) << s.to_string();

  ASSERT_EQ(study.logs.size(), 4u);
  const SiteRoundLog& failed = study.logs[1].sites[1];
  EXPECT_EQ(failed.site_id, "site-b");
  EXPECT_FALSE(failed.ok);
  EXPECT_EQ(failed.error_code, static_cast<int>(StatusCode::kInternal));
  EXPECT_GT(failed.bytes_up, 0u);
  EXPECT_TRUE(study.logs[1].sites[0].ok);
  EXPECT_TRUE(study.logs[1].sites[2].ok);
  EXPECT_TRUE(study.logs[2].sites[1].ok);  // back in the next round
  // Pooled metrics of round 2 cover the two sites that answered: 3 + 7 examples.
  EXPECT_EQ(study.logs[1].global_eval.n, 10);

  const float expected = 2 * expected_step({0, 1, 2}) + expected_step({0, 2});  // 14/6 + 10/4 + 14/6
  EXPECT_NEAR((*out.weights)[0].data[0], expected, 1e-5);
}

TEST(FederationIntegration, TooFewSuccessesFailTheRoundAndReleaseTheSites) {
  Study study(2, 3);
  study.learners[0]->fail_round = 1;  // min_sites 0: every joined site must succeed
  const auto out = study.run();
  ASSERT_FALSE(out.weights.ok());
  EXPECT_NE(out.weights.status().message().find("round 1"), std::string::npos)
      << out.weights.status().to_string();
  // The coordinator's SHUTDOWN ends the sites instead of their idle timeout.
  for (const Status& s : out.sites) EXPECT_TRUE(s.ok()) << s.to_string();
  EXPECT_TRUE(study.logs.empty());
}

TEST(FederationIntegration, SlowSiteMissesTheDeadlineAndRejoinsNextRound) {
  Study study(3, 3);
  study.coordinator.min_sites = 2;
  study.coordinator.round_timeout_s = 1.0;
  study.learners[2]->slow_round = 1;
  study.learners[2]->slow_seconds = 1.5;
  const auto out = study.run();
  ASSERT_TRUE(out.weights.ok()) << out.weights.status().to_string();
  ASSERT_EQ(study.logs.size(), 4u);
  EXPECT_FALSE(study.logs[0].sites[2].ok);
  EXPECT_EQ(study.logs[0].sites[2].error_code, static_cast<int>(StatusCode::kTimeout));
  EXPECT_EQ(study.logs[0].sites[2].bytes_up, 0u);
  EXPECT_TRUE(study.logs[1].sites[2].ok);  // its late round-1 reply was dropped, not counted
  const float expected = expected_step({0, 1}) + 2 * expected_step({0, 1, 2});
  EXPECT_NEAR((*out.weights)[0].data[0], expected, 1e-5);
}

TEST(FederationIntegration, CoordinatorGivesUpWhenNobodyJoins) {
  Study study(2, 1);
  study.coordinator.join_timeout_s = 0.3;
  auto result = run_coordinator(study.coordinator);
  ASSERT_FALSE(result.ok());
  EXPECT_EQ(result.status().code(), StatusCode::kTimeout);
  EXPECT_TRUE(study.logs.empty());
}

TEST(FederationIntegration, CoordinatorRefusesBadOptions) {
  Study study(2, 1);
  study.coordinator.min_sites = 3;
  EXPECT_EQ(run_coordinator(study.coordinator).status().code(), StatusCode::kInvalidArgument);
  study.coordinator.min_sites = 0;
  study.coordinator.expected_sites.clear();
  EXPECT_EQ(run_coordinator(study.coordinator).status().code(), StatusCode::kInvalidArgument);
}

TEST(FederationIntegration, SiteTimesOutWhenTheCoordinatorIsSilent) {
  FakeLearner learner(0);
  SiteOptions options;
  options.coordinator_address = "tcp://127.0.0.1:" + std::to_string(free_port());
  options.site_id = "lonely";
  options.idle_timeout_s = 0.3;
  const auto start = std::chrono::steady_clock::now();
  Status st = run_site(learner, options);
  ASSERT_FALSE(st.ok());
  EXPECT_EQ(st.code(), StatusCode::kTimeout);
  EXPECT_NE(st.message().find(options.coordinator_address), std::string::npos);
  EXPECT_LT(std::chrono::steady_clock::now() - start, std::chrono::seconds(5));
}

}  // namespace
}  // namespace fedrad::fed
