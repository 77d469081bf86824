// Secure aggregation in the live protocol: coordinator and sites over real TCP sockets on
// 127.0.0.1 run the SECAGG_* phases each round (wire.h), with learners whose updates are known,
// so the recovered weighted mean can be checked against plain FedAvg and against the inputs of
// the sites that survive.
#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <cmath>
#include <functional>
#include <future>
#include <map>
#include <mutex>
#include <thread>
#include <zmq.hpp>

#include "federation/audit.h"
#include "federation/codec.h"
#include "federation/federation.h"
#include "federation/secagg.h"
#include "federation/wire.h"
#include "tests/test_data.h"
#include "tests/federation/helpers/fake_learner.h"
#include "tests/federation/helpers/study_runner.h"

namespace fedrad::fed {
namespace {

using fedrad::testing::free_port;

constexpr size_t kValues = 2000;

Weights initial_model() {
  Weights w;
  w.push_back(TensorRecord{"conv.weight", {1000}, std::vector<float>(1000)});
  w.push_back(TensorRecord{"fc.weight", {1000}, std::vector<float>(1000)});
  for (size_t i = 0; i < 1000; ++i) {
    w[0].data[i] = static_cast<float>(std::sin(0.1 * i));
    w[1].data[i] = static_cast<float>(0.5 * std::cos(0.07 * i));
  }
  return w;
}

// Site k's update does not depend on the model it gets: delta_j = 0.4 sin(j (k + 1) / 7 + k),
// with 10 (k + 1) examples; so every round adds the same known weighted mean.
float delta_of(int k, size_t j) {
  return static_cast<float>(0.4 * std::sin(static_cast<double>(j) * (k + 1) / 7.0 + k));
}
uint64_t examples_of(int k) { return 10u * static_cast<uint64_t>(k + 1); }

// DeterministicLearner's evaluation (a fixed histogram per site) with a known update.
class KnownUpdateLearner : public fed::testing::DeterministicLearner {
 public:
  explicit KnownUpdateLearner(int k) : DeterministicLearner(k), k_(k) {}
  StatusOr<FitReport> fit(const Weights& global, const RoundSettings&) override {
    FitReport r;
    r.weights = global;
    size_t j = 0;
    for (TensorRecord& t : r.weights)
      for (float& v : t.data) v += delta_of(k_, j++);
    r.num_examples = examples_of(k_);
    r.train_loss = 0.1 * (k_ + 1);
    return r;
  }
  uint64_t num_train_examples() const override { return examples_of(k_); }
  uint64_t num_val_examples() const override { return 2; }

 private:
  int k_;
};

// The weighted mean of the sites `ks`' updates, as plain FedAvg computes it (double sums).
std::vector<double> weighted_mean(const std::vector<int>& ks) {
  std::vector<double> m(kValues, 0);
  double n = 0;
  for (int k : ks) {
    for (size_t j = 0; j < kValues; ++j) m[j] += static_cast<double>(examples_of(k)) * delta_of(k, j);
    n += static_cast<double>(examples_of(k));
  }
  for (double& v : m) v /= n;
  return m;
}

// The coordinator's fixed-point scale (federation.h SecureAggregationOptions): the largest power
// of two with parties x weight cap x clip x scale below 2^31.
double scale_for(int parties, uint64_t weight_cap, double clip) {
  return std::exp2(std::floor(std::log2(2147483647.0 / (parties * static_cast<double>(weight_cap) * clip))));
}

struct Study {
  CoordinatorOptions coordinator;
  std::vector<SiteOptions> sites;
  std::vector<std::unique_ptr<KnownUpdateLearner>> learners;
  std::vector<RoundLog> logs;
  std::mutex mu;
  std::vector<std::string> refusals;

  Study(int num_sites, int rounds, bool secure) {
    coordinator.bind_address = "tcp://127.0.0.1:" + std::to_string(free_port());
    coordinator.study = "secagg";
    coordinator.rounds = rounds;
    coordinator.join_timeout_s = 10;
    coordinator.round_timeout_s = 15;
    coordinator.heartbeat_s = 0.2;
    coordinator.heartbeat_misses = 5;
    coordinator.initial_weights = initial_model();
    coordinator.secure_aggregation.enabled = secure;
    coordinator.secure_aggregation.clip = 1;
    coordinator.on_round_end = [this](const RoundLog& log, const Weights&) { logs.push_back(log); };
    coordinator.on_refused = [this](const std::string&, const std::string& why) {
      std::lock_guard<std::mutex> lock(mu);
      refusals.push_back(why);
    };
    for (int i = 0; i < num_sites; ++i) {
      const std::string id = std::string("site-") + static_cast<char>('a' + i);
      coordinator.expected_sites.push_back(id);
      SiteOptions s;
      s.coordinator_address = coordinator.bind_address;
      s.site_id = id;
      s.study = coordinator.study;
      s.idle_timeout_s = 20;
      s.heartbeat_s = 0.2;
      s.secure_aggregation = secure;
      sites.push_back(s);
      learners.push_back(std::make_unique<KnownUpdateLearner>(i));
    }
  }

  testing::StudyOutcome run() { return testing::run_study_in_process(coordinator, sites, learners); }

  bool refused_with(const std::string& text) {
    std::lock_guard<std::mutex> lock(mu);
    for (const std::string& r : refusals)
      if (r.find(text) != std::string::npos) return true;
    return false;
  }
};

std::vector<float> flat(const Weights& w) {
  std::vector<float> out;
  for (const TensorRecord& t : w) out.insert(out.end(), t.data.begin(), t.data.end());
  return out;
}

// (a) The same global model as plain FedAvg within the fixed-point error. Per round and value:
// each of P parties rounds n_k delta to 1/scale (0.5/scale each) and the sum is divided by
// sum n_k; besides, a site's float delta (w - g) is rounded once (half an ulp of |delta| <= 0.4),
// both paths round the new model to float once (half an ulp of the value each), and the learners'
// float(g + delta) round differently once the two models differ (one ulp). With M_j the largest
// magnitude value j can reach (|start| + rounds x 0.4), the bound after R rounds is
// R x (P x 0.5 / (scale x sum n) + 2 ulp(M_j) + ulp(0.4) / 2).
TEST(SecAggLive, MatchesPlainFedAvgWithinTheQuantisationError) {
  constexpr int kSites = 3, kRounds = 3;
  Study plain(kSites, kRounds, /*secure=*/false);
  auto p = plain.run();
  ASSERT_TRUE(p.weights.ok()) << p.weights.status().to_string();
  Study secure(kSites, kRounds, /*secure=*/true);
  const std::string audit = ::testing::TempDir() + "secagg-audit-site-a-" + std::to_string(::getpid()) + ".log";
  std::remove(audit.c_str());
  secure.sites[0].audit_log = audit;
  auto s = secure.run();
  ASSERT_TRUE(s.weights.ok()) << s.weights.status().to_string();
  for (const Status& st : s.sites) EXPECT_TRUE(st.ok()) << st.to_string();

  const double scale = scale_for(kSites, examples_of(kSites - 1), /*clip=*/1);
  const double total = static_cast<double>(examples_of(0) + examples_of(1) + examples_of(2));
  const double quantisation = kSites * 0.5 / (scale * total);
  const std::vector<float> a = flat(*p.weights), b = flat(*s.weights);
  ASSERT_EQ(a.size(), b.size());
  double worst = 0, worst_bound = 0;
  auto ulp = [](double x) {
    const float f = static_cast<float>(x);
    return static_cast<double>(std::nextafter(f, INFINITY) - f);
  };
  const std::vector<float> start0 = flat(initial_model());
  for (size_t j = 0; j < a.size(); ++j) {
    const double m = std::fabs(start0[j]) + kRounds * 0.4;
    const double bound = kRounds * (quantisation + 2 * ulp(m) + ulp(0.4) / 2);
    EXPECT_LE(std::fabs(static_cast<double>(a[j]) - b[j]), bound) << "value " << j;
    worst = std::max(worst, std::fabs(static_cast<double>(a[j]) - b[j]));
    worst_bound = std::max(worst_bound, bound);
  }
  // And both moved by the known mean each round.
  const std::vector<double> mean = weighted_mean({0, 1, 2});
  const std::vector<float> start = flat(initial_model());
  for (size_t j = 0; j < kValues; j += 97)
    EXPECT_NEAR(b[j], start[j] + kRounds * mean[j], 1e-5) << "value " << j;
  ASSERT_EQ(secure.logs.size(), static_cast<size_t>(kRounds + 1));
  for (const RoundLog& log : secure.logs) {
    ASSERT_EQ(log.sites.size(), 3u);
    for (const SiteRoundLog& site : log.sites) {
      EXPECT_TRUE(site.ok) << site.site_id << " round " << log.round;
      if (!log.evaluation_only) EXPECT_GT(site.bytes_up, 4 * kValues);  // the masked vector went up
    }
    EXPECT_NEAR(log.global_eval.auc, plain.logs[log.round - 1].global_eval.auc, 1e-12);
  }
  // The site's audit log records each secure-aggregation message it sent, and no update in the clear.
  auto summary = verify_audit_log(audit);
  ASSERT_TRUE(summary.ok()) << summary.status().to_string();
  EXPECT_TRUE(summary->ok) << summary->problem;
  for (const char* type : {"SECAGG_KEYS", "SECAGG_SHARES", "SECAGG_MASKED", "SECAGG_UNMASK_RES"})
    EXPECT_EQ(summary->sent[type].messages, static_cast<uint64_t>(kRounds)) << type;
  for (const char* type : {"SECAGG_KEY_LIST", "SECAGG_RELAY", "SECAGG_UNMASK"})
    EXPECT_EQ(summary->received[type].messages, static_cast<uint64_t>(kRounds)) << type;
  EXPECT_EQ(summary->sent.count("FIT_RES"), 0u);
  std::printf("largest difference %.3g, bound %.3g (scale 2^%d)\n", worst, worst_bound,
              static_cast<int>(std::log2(scale)));
}

// Shared-seed random-k composes with masking: every site masks only the values at
// randk_indices(seed of the round), the same coordinates at each site and at the coordinator, so
// the masks still cancel and the upload shrinks to ~F of the model. With error feedback a value
// waits at the site until its coordinate is drawn; as every site's update here is the same each
// round, after R rounds value j has moved by L_j x (the weighted mean), L_j being the last round
// that drew j (0: never), exactly up to the fixed point.
std::vector<int64_t> drawn_in(uint32_t round, const CoordinatorOptions& o, double fraction) {
  return randk_indices(initial_model(), fraction, secure_randk_seed(o.settings.seed * 1000003ull + round));
}

TEST(SecAggLive, SharedSeedRandomKMasksTheSameCoordinatesAtEverySite) {
  constexpr int kSites = 3, kRounds = 4;
  constexpr double kFraction = 0.1;
  for (const bool feedback : {false, true}) {
    SCOPED_TRACE(feedback ? "delta|ef|randk:0.1" : "randk:0.1");
    Study study(kSites, kRounds, /*secure=*/true);
    const std::string codec = feedback ? "delta|ef|randk:0.1" : "randk:0.1";
    study.coordinator.upstream_codec = codec;
    study.coordinator.secure_aggregation.clip = 8;  // above kRounds x 0.4: error feedback's sums are never clipped
    for (SiteOptions& s : study.sites) s.upstream_codec = codec;
    auto r = study.run();
    ASSERT_TRUE(r.weights.ok()) << r.weights.status().to_string();
    for (const Status& st : r.sites) EXPECT_TRUE(st.ok()) << st.to_string();

    std::vector<uint32_t> last(kValues, 0);  // L_j
    std::vector<uint32_t> times(kValues, 0);  // how often j was drawn
    size_t drawn_total = 0;
    for (uint32_t round = 1; round <= kRounds; ++round) {
      const auto idx = drawn_in(round, study.coordinator, kFraction);
      drawn_total += idx.size();
      for (int64_t j : idx) {
        last[static_cast<size_t>(j)] = round;
        ++times[static_cast<size_t>(j)];
      }
    }
    // About F of the values each round (both tensors have 1000 values, so both are sparsified).
    EXPECT_GT(drawn_total, kRounds * kValues * kFraction * 0.7);
    EXPECT_LT(drawn_total, kRounds * kValues * kFraction * 1.3);

    const std::vector<double> mean = weighted_mean({0, 1, 2});
    const std::vector<float> start = flat(initial_model()), got = flat(*r.weights);
    size_t moved = 0;
    for (size_t j = 0; j < kValues; ++j) {
      const double expect = start[j] + (feedback ? last[j] : times[j]) * mean[j];
      EXPECT_NEAR(got[j], expect, 1e-5) << "value " << j << " drawn " << times[j] << " times, last in round " << last[j];
      moved += got[j] != start[j] ? 1 : 0;
    }
    EXPECT_GT(moved, 0u);
    EXPECT_LT(moved, kValues);  // some values were never drawn in 4 rounds at F = 0.1 (~66% of them)
    // The upload: ~F of the values, 4 bytes each, instead of the whole model.
    for (const RoundLog& log : study.logs) {
      if (log.evaluation_only) continue;
      for (const SiteRoundLog& site : log.sites) {
        EXPECT_TRUE(site.ok) << site.site_id << " round " << log.round;
        EXPECT_LT(site.bytes_up, 4 * kValues / 2) << site.site_id << " round " << log.round;
      }
    }
  }
}

// A site whose codec disagrees with the coordinator's masks another number of values: it says so
// (in its own log) and drops out of the round instead of sending a vector that would not cancel.
TEST(SecAggLive, ASiteWhoseRandomKDisagreesWithTheCoordinatorDropsOut) {
  Study study(3, 1, /*secure=*/true);
  study.coordinator.upstream_codec = "randk:0.1";
  study.coordinator.min_sites = 2;
  for (size_t i = 0; i < 2; ++i) study.sites[i].upstream_codec = "randk:0.1";
  study.sites[2].upstream_codec = "randk:0.2";
  auto r = study.run();
  ASSERT_TRUE(r.weights.ok()) << r.weights.status().to_string();
  ASSERT_GE(study.logs.size(), 1u);
  const RoundLog& log = study.logs[0];
  ASSERT_EQ(log.sites.size(), 3u);
  EXPECT_TRUE(log.sites[0].ok);
  EXPECT_TRUE(log.sites[1].ok);
  EXPECT_FALSE(log.sites[2].ok);
}

// (b) A site that vanishes after sending its masked input, and one that vanishes after sharing
// its keys: the round completes with the sum of the inputs that arrived (a, b, c), recovered with
// the shares of the two sites still there (threshold 2).
TEST(SecAggLive, SitesVanishingAfterMaskingOrAfterSharingLeaveTheSumOfTheInputsThatArrived) {
  Study study(4, /*rounds=*/1, /*secure=*/true);
  study.coordinator.min_sites = 2;
  study.coordinator.secure_aggregation.threshold = 2;
  study.sites[2].vanish_after = static_cast<uint16_t>(wire::MessageType::kSecAggMasked);
  study.sites[3].vanish_after = static_cast<uint16_t>(wire::MessageType::kSecAggShares);
  auto out = study.run();
  ASSERT_TRUE(out.weights.ok()) << out.weights.status().to_string();
  EXPECT_TRUE(out.sites[0].ok()) << out.sites[0].to_string();
  EXPECT_TRUE(out.sites[1].ok()) << out.sites[1].to_string();
  EXPECT_FALSE(out.sites[2].ok());  // vanished
  EXPECT_FALSE(out.sites[3].ok());

  const std::vector<double> mean = weighted_mean({0, 1, 2});
  const std::vector<float> start = flat(initial_model()), got = flat(*out.weights);
  const double scale = scale_for(4, examples_of(3), 1);
  const double bound = 3 * 0.5 / (scale * (examples_of(0) + examples_of(1) + examples_of(2))) + 2e-7;
  for (size_t j = 0; j < kValues; ++j) ASSERT_NEAR(got[j], start[j] + mean[j], bound) << "value " << j;
  ASSERT_GE(study.logs.size(), 1u);
  const RoundLog& r1 = study.logs[0];
  EXPECT_TRUE(r1.sites[0].ok && r1.sites[1].ok && r1.sites[2].ok);  // c's input is in the sum
  EXPECT_FALSE(r1.sites[3].ok);
}

// (c) What the coordinator receives from a site is not its update: the masked vector is uniform
// mod 2^32 and uncorrelated with the fixed-point input it hides.
TEST(SecAggLive, TheCoordinatorReceivesOnlyUniformLookingMaskedVectors) {
  Study study(2, /*rounds=*/1, /*secure=*/true);
  std::mutex mu;
  std::map<std::string, std::vector<uint32_t>> received;
  study.coordinator.on_masked_input = [&](const std::string& site, uint32_t, const std::vector<uint32_t>& v) {
    std::lock_guard<std::mutex> lock(mu);
    received[site] = v;
  };
  auto out = study.run();
  ASSERT_TRUE(out.weights.ok()) << out.weights.status().to_string();
  ASSERT_EQ(received.size(), 2u);
  const double scale = scale_for(2, examples_of(1), 1);
  for (int k = 0; k < 2; ++k) {
    const std::vector<uint32_t>& y = received[std::string("site-") + static_cast<char>('a' + k)];
    ASSERT_EQ(y.size(), kValues + 1);
    std::vector<double> x(kValues), m(kValues);
    size_t equal = 0;
    std::vector<int> bins(16, 0);
    for (size_t j = 0; j < kValues; ++j) {
      const int32_t plain = static_cast<int32_t>(std::llround(delta_of(k, j) * examples_of(k) * scale));
      equal += static_cast<uint32_t>(plain) == y[j] ? 1 : 0;
      x[j] = plain;
      m[j] = static_cast<double>(y[j]);
      ++bins[y[j] >> 28];
    }
    EXPECT_LE(equal, 2u) << "values sent in the clear";
    // Chi-square of the top 4 bits against uniform (15 degrees of freedom; P(> 60) < 1e-6).
    double chi2 = 0;
    const double expect = kValues / 16.0;
    for (int c : bins) chi2 += (c - expect) * (c - expect) / expect;
    EXPECT_LT(chi2, 60) << "site " << k;
    // Pearson correlation with the hidden input: |r| ~ 1/sqrt(2000) = 0.022 by chance.
    double mx = 0, mm = 0;
    for (size_t j = 0; j < kValues; ++j) mx += x[j] / kValues, mm += m[j] / kValues;
    double sxy = 0, sxx = 0, syy = 0;
    for (size_t j = 0; j < kValues; ++j) {
      sxy += (x[j] - mx) * (m[j] - mm);
      sxx += (x[j] - mx) * (x[j] - mx);
      syy += (m[j] - mm) * (m[j] - mm);
    }
    EXPECT_LT(std::fabs(sxy / std::sqrt(sxx * syy)), 0.15) << "site " << k;
  }
}

// (d) A rogue site speaking the wire protocol sends bad secure-aggregation messages: a wrong
// round, a wrong party index, a masked vector of the wrong size, garbage. Each is refused with a
// logged reason, the rogue is left out of that round's sum and the study completes with the
// honest sites' weighted mean.
class RoguePeer {
 public:
  RoguePeer(const std::string& address, const std::string& study, const std::string& id)
      : study_(study), id_(id), socket_(ctx_, zmq::socket_type::dealer) {
    socket_.set(zmq::sockopt::linger, 0);
    socket_.connect(address);
  }

  void send(uint32_t round, wire::Body body) {
    wire::Message m;
    m.study = study_;
    m.round = round;
    m.sender = id_;
    m.sequence = ++sequence_;
    m.body = std::move(body);
    auto enc = wire::encode(m);
    ASSERT_TRUE(enc.ok()) << enc.status().to_string();
    socket_.send(zmq::buffer(enc->bytes), zmq::send_flags::none);
  }

  // Serves until SHUTDOWN or `seconds`.
  void serve(double seconds) {
    send(0, wire::Join{5, 2, 77});
    const auto end = std::chrono::steady_clock::now() + std::chrono::duration<double>(seconds);
    while (std::chrono::steady_clock::now() < end) {
      zmq::message_t frame;
      socket_.set(zmq::sockopt::rcvtimeo, 100);
      if (!socket_.recv(frame)) continue;
      auto d = wire::decode(frame.data(), frame.size(), 1 << 30);
      ASSERT_TRUE(d.ok()) << d.status().to_string();
      const wire::Message& m = d->message;
      switch (m.type()) {
        case wire::MessageType::kFitIns: {
          ASSERT_TRUE(std::get<wire::FitIns>(m.body).settings.secure_aggregation);
          secagg::Params p;
          p.round = m.round;
          client_ = std::make_unique<secagg::SecAggClient>(p, 0);
          if (m.round == 1) send(99, wire::SecAggKeys{client_->public_key()});  // wrong round
          socket_.send(zmq::str_buffer("not a fedrad message"), zmq::send_flags::none);
          send(m.round, wire::SecAggKeys{client_->public_key()});
          break;
        }
        case wire::MessageType::kSecAggKeyList: {
          const auto& l = std::get<wire::SecAggKeyList>(m.body);
          secagg::Params p;
          p.parties = static_cast<uint32_t>(l.keys.size());
          p.threshold = l.threshold;
          p.dim = l.dim;
          p.round = m.round;
          dim_ = l.dim;
          ASSERT_TRUE(client_->bind(p, l.party).ok());
          auto boxes = client_->share_keys(l.keys);
          ASSERT_TRUE(boxes.ok());
          wire::SecAggShares out;
          // Round 1: claims another party's index. Round 2: honest shares.
          out.party = m.round == 1 ? p.parties + 5 : l.party;
          party_ = l.party;
          for (auto& e : *boxes) out.boxes.push_back(wire::SecAggBox{e.to, e.nonce_and_box});
          send(m.round, std::move(out));
          break;
        }
        case wire::MessageType::kSecAggRelay: {
          wire::SecAggMasked out;
          out.party = party_;
          out.values.assign(dim_ - 1, 12345u);  // one value short
          send(m.round, std::move(out));
          break;
        }
        case wire::MessageType::kSecAggUnmask:
          ADD_FAILURE() << "the rogue was asked to unmask although its input was refused";
          break;
        case wire::MessageType::kEvalIns:
          send(m.round, wire::EvalRes{});
          break;
        case wire::MessageType::kShutdown:
          return;
        default:
          break;
      }
    }
  }

 private:
  std::string study_, id_;
  zmq::context_t ctx_;
  zmq::socket_t socket_;
  uint64_t sequence_ = 1000;
  std::unique_ptr<secagg::SecAggClient> client_;
  uint32_t dim_ = 0, party_ = 0;
};

TEST(SecAggLive, BadSecureAggregationMessagesAreRefusedAndTheStudyGoesOn) {
  Study study(3, /*rounds=*/2, /*secure=*/true);
  study.coordinator.min_sites = 2;
  study.coordinator.secure_aggregation.threshold = 2;
  study.coordinator.heartbeat_misses = 10;
  auto coord = std::async(std::launch::async, [&] { return run_coordinator(study.coordinator); });
  std::vector<std::future<Status>> honest;
  for (size_t i = 0; i < 2; ++i)
    honest.push_back(
        std::async(std::launch::async, [&, i] { return run_site(*study.learners[i], study.sites[i]); }));
  RoguePeer rogue(study.coordinator.bind_address, study.coordinator.study, "site-c");
  rogue.serve(/*seconds=*/20);
  auto result = coord.get();
  ASSERT_TRUE(result.ok()) << result.status().to_string();
  for (auto& f : honest) EXPECT_TRUE(f.get().ok());

  EXPECT_TRUE(study.refused_with("round 99 (late or early)"));
  EXPECT_TRUE(study.refused_with("malformed"));
  EXPECT_TRUE(study.refused_with("refused SECAGG_SHARES: names party"));
  EXPECT_TRUE(study.refused_with("refused SECAGG_MASKED: a masked vector of 2000 values, expected 2001"));
  // Each round added the weighted mean of a and b only.
  const std::vector<double> mean = weighted_mean({0, 1});
  const std::vector<float> start = flat(initial_model()), got = flat(*result);
  for (size_t j = 0; j < kValues; ++j) ASSERT_NEAR(got[j], start[j] + 2 * mean[j], 1e-5) << "value " << j;
  ASSERT_EQ(study.logs.size(), 3u);
  for (int r = 0; r < 2; ++r) {
    EXPECT_TRUE(study.logs[r].sites[0].ok);
    EXPECT_TRUE(study.logs[r].sites[1].ok);
    EXPECT_FALSE(study.logs[r].sites[2].ok);
  }
}

// (e) What secure aggregation cannot do is refused at start, naming the option and why.
TEST(SecAggLive, CoordinatorRefusesStrategiesThatNeedEachUpdate) {
  struct Case {
    std::function<void(CoordinatorOptions&)> set;
    std::string expect;
  };
  const std::vector<Case> cases = {
      {[](CoordinatorOptions& o) { o.strategy.name = "median"; },
       "strategy median needs every site's update"},
      {[](CoordinatorOptions& o) { o.strategy.name = "trimmed_mean"; }, "strategy trimmed_mean"},
      {[](CoordinatorOptions& o) { o.strategy.max_update_norm = 1; }, "max_update_norm"},
      {[](CoordinatorOptions& o) { o.upstream_codec = "delta|topk:0.1|zstd"; },
       "top-k picks other coordinates at each site"},
      {[](CoordinatorOptions& o) { o.upstream_codec = "delta|randk:0.1|q8"; },
       "drop the fp16/bf16/q8/q4/q2 stage"},
      {[](CoordinatorOptions& o) { o.expected_sites = {"site-a"}; }, "needs 2..255 sites"},
      {[](CoordinatorOptions& o) { o.secure_aggregation.threshold = 5; }, "threshold 5"},
  };
  for (const Case& c : cases) {
    Study study(3, 1, /*secure=*/true);
    c.set(study.coordinator);
    auto r = run_coordinator(study.coordinator);
    ASSERT_FALSE(r.ok()) << c.expect;
    EXPECT_NE(r.status().message().find(c.expect), std::string::npos) << r.status().message();
  }
}

// A site configured for secure aggregation never sends its update to a coordinator that does not
// ask for it: it answers with a failure code and the round fails for lack of updates.
TEST(SecAggLive, ASiteConfiguredForSecureAggregationWithholdsItsUpdateFromAPlainCoordinator) {
  Study study(2, 1, /*secure=*/false);
  study.sites[1].secure_aggregation = true;
  study.coordinator.min_sites = 1;
  auto out = study.run();
  ASSERT_TRUE(out.weights.ok()) << out.weights.status().to_string();
  ASSERT_GE(study.logs.size(), 1u);
  EXPECT_TRUE(study.logs[0].sites[0].ok);
  EXPECT_FALSE(study.logs[0].sites[1].ok);
  EXPECT_EQ(study.logs[0].sites[1].error_code, static_cast<int>(StatusCode::kInvalidArgument));
}

// The decoder refuses secure-aggregation bodies whose sizes or indices are impossible, before
// the coordinator or a site looks at them.
wire::Message secagg_message(wire::Body body) {
  wire::Message m;
  m.study = "s";
  m.round = 1;
  m.sender = "site-a";
  m.sequence = 5;
  m.body = std::move(body);
  return m;
}

std::string encoded(const wire::Message& m) {
  auto e = wire::encode(m);
  EXPECT_TRUE(e.ok()) << e.status().to_string();
  return e.ok() ? e->bytes : std::string();
}

TEST(SecAggWire, RoundTripsEveryMessage) {
  wire::SecAggKeyList list;
  list.party = 1;
  list.threshold = 2;
  list.dim = 9;
  list.scale = 65536;
  list.clip = 4;
  list.weight_cap = 100;
  list.keys.assign(3, secagg::Key{});
  list.keys[2][0] = 7;
  wire::SecAggMasked masked;
  masked.party = 2;
  masked.values = {1, 2, 0xFFFFFFFFu};
  masked.train_loss = 0.25;
  wire::SecAggUnmaskRes res;
  res.party = 0;
  res.self_mask.push_back(
      wire::SecAggShareOf{1, secagg::Share{2, std::vector<uint8_t>(secagg::kShareBytes, 3)}});
  res.secret_key.push_back(
      wire::SecAggShareOf{2, secagg::Share{1, std::vector<uint8_t>(secagg::kShareBytes, 4)}});
  wire::SecAggShares shares;
  shares.party = 0;
  shares.boxes.push_back(wire::SecAggBox{1, std::vector<uint8_t>(secagg::kShareBoxBytes, 9)});
  for (const wire::Body& body :
       {wire::Body{list}, wire::Body{masked}, wire::Body{res}, wire::Body{shares},
        wire::Body{wire::SecAggRelay{1, {1, 1, 0}, {wire::SecAggBox{0, shares.boxes[0].box}}}},
        wire::Body{wire::SecAggUnmask{0, {1, 0, 1}}}, wire::Body{wire::SecAggKeys{}}}) {
    const wire::Message m = secagg_message(body);
    const std::string bytes = encoded(m);
    auto d = wire::decode(bytes.data(), bytes.size(), 1 << 20);
    ASSERT_TRUE(d.ok()) << wire::message_type_name(m.type()) << ": " << d.status().to_string();
    EXPECT_EQ(d->message.type(), m.type());
    EXPECT_EQ(encoded(d->message), bytes) << wire::message_type_name(m.type());
  }
}

TEST(SecAggWire, RefusesImpossibleSizesAndIndices) {
  std::vector<std::pair<wire::Body, std::string>> bad;
  {
    wire::SecAggKeyList l;  // party outside the list (encoder refuses it too, so patch below)
    l.party = 0;
    l.threshold = 5;  // above the party count
    l.dim = 9;
    l.scale = 2;
    l.clip = 1;
    l.weight_cap = 1;
    l.keys.assign(3, secagg::Key{});
    bad.push_back({l, "threshold 5"});
  }
  bad.push_back({wire::SecAggRelay{2, {1, 1, 0}, {}}, "is not a sharing party"});
  bad.push_back(
      {wire::SecAggRelay{0, {1, 1, 0}, {wire::SecAggBox{2, std::vector<uint8_t>(secagg::kShareBoxBytes)}}},
       "marked as not sharing"});
  bad.push_back({wire::SecAggShares{1, {wire::SecAggBox{1, std::vector<uint8_t>(secagg::kShareBoxBytes)}}},
                 "own index"});
  bad.push_back({wire::SecAggUnmask{1, {1, 0, 1}}, "not among those with input"});
  {
    wire::SecAggUnmaskRes r;
    r.self_mask.push_back(
        wire::SecAggShareOf{1, secagg::Share{2, std::vector<uint8_t>(secagg::kShareBytes)}});
    r.secret_key.push_back(
        wire::SecAggShareOf{1, secagg::Share{2, std::vector<uint8_t>(secagg::kShareBytes)}});
    bad.push_back({r, "both shares of party 1"});
  }
  for (const auto& [body, why] : bad) {
    const std::string bytes = encoded(secagg_message(body));
    auto d = wire::decode(bytes.data(), bytes.size(), 1 << 20);
    ASSERT_FALSE(d.ok()) << why;
    EXPECT_NE(d.status().message().find(why), std::string::npos) << d.status().message();
  }
  // A share box one byte short and a masked vector that claims more values than it carries.
  {
    std::string bytes = encoded(secagg_message(
        wire::SecAggShares{0, {wire::SecAggBox{1, std::vector<uint8_t>(secagg::kShareBoxBytes)}}}));
    bytes.pop_back();
    EXPECT_FALSE(wire::decode(bytes.data(), bytes.size(), 1 << 20).ok());
    wire::SecAggMasked m;
    m.values.assign(4, 1);
    bytes = encoded(secagg_message(m));
    bytes.resize(bytes.size() - 4);
    auto d = wire::decode(bytes.data(), bytes.size(), 1 << 20);
    ASSERT_FALSE(d.ok());
    EXPECT_NE(d.status().message().find("masked values"), std::string::npos) << d.status().message();
  }
  // Round settings: bit 1 asks for secure aggregation; higher bits are refused.
  wire::FitIns ins;
  ins.settings.secure_aggregation = true;
  std::string bytes = encoded(secagg_message(ins));
  auto d = wire::decode(bytes.data(), bytes.size(), 1 << 20);
  ASSERT_TRUE(d.ok());
  EXPECT_TRUE(std::get<wire::FitIns>(d->message.body).settings.secure_aggregation);
}

}  // namespace
}  // namespace fedrad::fed
