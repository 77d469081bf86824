// Issue 8: the egress guard, the audit log, secure aggregation and the DP accountant.
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <random>
#include <sstream>

#include "federation/audit.h"
#include "federation/dp.h"
#include "federation/egress.h"
#include "federation/secagg.h"
#include "federation/wire.h"
#include "tests/test_data.h"

namespace fedrad::fed {
namespace {

Weights model() { return {{"conv.weight", {2, 2}, {1, 2, 3, 4}}, {"fc.bias", {1}, {0.5f}}}; }

wire::Message from_site(wire::Body body) {
  wire::Message m;
  m.study = "pneumonia";
  m.sender = "site-a";
  m.round = 3;
  m.body = std::move(body);
  return m;
}

// ---- Egress guard -----------------------------------------------------------------------------
TEST(EgressGuard, AdmitsWhatASiteSends) {
  EgressGuard g({"site-a", "pneumonia", ""});
  const Weights ref = model();
  EXPECT_TRUE(g.admit(from_site(wire::Join{10, 5}), nullptr).ok());
  wire::FitRes res;
  res.weights = ref;
  res.num_examples = 10;
  EXPECT_TRUE(g.admit(from_site(res), &ref).ok());
  EXPECT_TRUE(g.admit(from_site(wire::EvalRes{}), nullptr).ok());
  auto sealed = g.seal(from_site(res), &ref, 3);
  ASSERT_TRUE(sealed.ok()) << sealed.status().to_string();
  EXPECT_GT(sealed->bytes.size(), 0u);
}

TEST(EgressGuard, RefusesTypesASiteDoesNotSend) {
  EgressGuard g({"site-a", "pneumonia", ""});
  for (wire::Body b : {wire::Body{wire::JoinAck{}}, wire::Body{wire::Reject{1}}, wire::Body{wire::FitIns{}},
                       wire::Body{wire::EvalIns{}}, wire::Body{wire::Shutdown{0}}})
    EXPECT_FALSE(g.admit(from_site(b), nullptr).ok()) << b.index();
}

TEST(EgressGuard, RefusesFreeTextInEveryStringField) {
  EgressGuard g({"site-a", "pneumonia", "delta|q8|zstd"});
  const Weights ref = model();
  auto m = from_site(wire::Join{1, 1});
  m.sender = "CANARY^SITE-A^1";
  EXPECT_FALSE(g.admit(m, nullptr).ok());
  m = from_site(wire::Join{1, 1});
  m.study = "PHI-0001";
  EXPECT_FALSE(g.admit(m, nullptr).ok());
  // A tensor renamed to carry text.
  wire::FitRes res;
  res.weights = ref;
  res.weights[1].name = "PHI-12345";
  auto refused = g.admit(from_site(res), &ref);
  ASSERT_FALSE(refused.ok());
  EXPECT_EQ(refused.message().find("PHI"), std::string::npos) << "the error must not echo the text";
  // Plain weights with no received model to compare names with.
  res.weights = ref;
  EXPECT_FALSE(g.admit(from_site(res), nullptr).ok());
  // An update whose codec text is not the configured codec.
  wire::FitRes up;
  up.update.codec = "delta|q8|zstd CANARY^X";
  up.update.bytes = "x";
  EXPECT_FALSE(g.admit(from_site(up), &ref).ok());
  up.update.codec = "delta|q8|zstd";
  EXPECT_TRUE(g.admit(from_site(up), &ref).ok());
}

TEST(EgressGuard, PolicyIdsMustBeSafe) {
  EXPECT_TRUE(is_safe_id("site-a.1_x"));
  EXPECT_FALSE(is_safe_id(""));
  EXPECT_FALSE(is_safe_id("CANARY^A"));
  EXPECT_FALSE(is_safe_id("has space"));
  EXPECT_FALSE(is_safe_id(std::string(65, 'a')));
  EXPECT_FALSE(EgressGuard({"Mr Smith", "s", ""}).check_policy().ok());
}

// ---- Audit log --------------------------------------------------------------------------------
std::vector<std::string> lines_of(const std::string& path) {
  std::ifstream in(path);
  std::vector<std::string> out;
  std::string l;
  while (std::getline(in, l)) out.push_back(l);
  return out;
}
void write_lines(const std::string& path, const std::vector<std::string>& lines) {
  std::ofstream out(path, std::ios::trunc);
  for (const auto& l : lines) out << l << "\n";
}

std::string make_log(const std::string& dir, int records) {
  const std::string path = dir + "/audit-site-a.log";
  auto log = AuditLog::open(path);
  EXPECT_TRUE(log.ok());
  for (int i = 0; i < records; ++i) {
    const std::string bytes(100 + i, static_cast<char>(i));
    EXPECT_TRUE(log->record(i % 2 ? "out" : "in", i % 2 ? "FIT_RES" : "FIT_INS", i / 2 + 1, bytes.data(), bytes.size(),
                            400 + i)
                    .ok());
  }
  return path;
}

TEST(AuditLog, VerifiesAndSummarises) {
  const std::string dir = testing::temp_dir("audit-ok");
  const std::string path = make_log(dir, 6);
  {  // reopening continues the chain
    auto log = AuditLog::open(path);
    ASSERT_TRUE(log.ok());
    ASSERT_TRUE(log->record("out", "EVAL_RES", 4, "abc", 3, 3).ok());
  }
  auto s = verify_audit_log(path);
  ASSERT_TRUE(s.ok());
  EXPECT_TRUE(s->ok) << s->problem;
  EXPECT_EQ(s->records, 7u);
  EXPECT_EQ(s->sent["FIT_RES"].messages, 3u);
  EXPECT_EQ(s->sent["FIT_RES"].wire_bytes, 101u + 103 + 105);
  EXPECT_EQ(s->sent["EVAL_RES"].messages, 1u);
  EXPECT_EQ(s->received["FIT_INS"].messages, 3u);
  EXPECT_NE(describe(*s, path).find("OK, 7 records"), std::string::npos);
}

TEST(AuditLog, TamperingIsFoundAtTheRightRecord) {
  const std::string dir = testing::temp_dir("audit-bad");
  const std::string path = make_log(dir, 8);
  const auto good = lines_of(path);
  struct Case {
    const char* name;
    std::function<void(std::vector<std::string>&)> edit;
    uint64_t first_bad;
  };
  const std::vector<Case> cases = {
      {"edited byte count", [](auto& l) { auto p = l[4].find(" 104 "); l[4].replace(p, 5, " 999 "); }, 5},
      {"record dropped", [](auto& l) { l.erase(l.begin() + 2); }, 3},
      {"records swapped", [](auto& l) { std::swap(l[5], l[6]); }, 6},
      {"hash recomputed by hand is still off the chain",
       [](auto& l) {
         // Rewrite record 3's direction and its own hash consistently: the next record's prev breaks.
         std::string body = l[3].substr(0, l[3].rfind(' '));
         body.replace(body.find(" out "), 5, " in ");
         l[3] = body + " " + blake2b_hex(body.data(), body.size());
       },
       5},
      {"truncated line", [](auto& l) { l[7] = l[7].substr(0, 40); }, 8},
  };
  for (const auto& c : cases) {
    auto lines = good;
    c.edit(lines);
    write_lines(path, lines);
    auto s = verify_audit_log(path);
    ASSERT_TRUE(s.ok());
    EXPECT_FALSE(s->ok) << c.name;
    EXPECT_EQ(s->first_bad, c.first_bad) << c.name << ": " << s->problem;
  }
}

// ---- Secure aggregation -----------------------------------------------------------------------
TEST(Shamir, AnyThresholdSharesRecoverTheSecret) {
  std::vector<uint8_t> secret(32);
  for (int i = 0; i < 32; ++i) secret[i] = static_cast<uint8_t>(i * 37 + 1);
  auto shares = secagg::shamir_split(secret, 7, 5);
  std::vector<secagg::Share> pick = {shares[6], shares[0], shares[3], shares[2], shares[5]};
  auto back = secagg::shamir_combine(pick, 5);
  ASSERT_TRUE(back.ok());
  EXPECT_EQ(*back, secret);
  pick.pop_back();
  EXPECT_FALSE(secagg::shamir_combine(pick, 5).ok());
  // Four shares are consistent with any secret: the wrong combination gives garbage.
  auto wrong = secagg::shamir_combine(pick, 4);
  ASSERT_TRUE(wrong.ok());
  EXPECT_NE(*wrong, secret);
}

std::vector<std::vector<uint32_t>> random_inputs(uint32_t parties, uint32_t dim, const secagg::FixedPoint& fp,
                                                 uint64_t seed, std::vector<std::vector<float>>* floats = nullptr) {
  std::mt19937_64 gen(seed);
  std::normal_distribution<float> normal(0, 0.05f);
  std::vector<std::vector<uint32_t>> out;
  for (uint32_t u = 0; u < parties; ++u) {
    std::vector<float> v(dim);
    for (auto& x : v) x = normal(gen);
    if (floats) floats->push_back(v);
    out.push_back(secagg::quantise(v, fp));
  }
  return out;
}

std::vector<uint32_t> plain_sum(const std::vector<std::vector<uint32_t>>& in, const std::vector<uint32_t>& who) {
  std::vector<uint32_t> s(in[0].size(), 0);
  for (uint32_t u : who)
    for (size_t i = 0; i < s.size(); ++i) s[i] += in[u][i];
  return s;
}

TEST(SecureAggregation, SumIsBitExactWithAndWithoutDropouts) {
  struct Case {
    uint32_t parties;
    std::vector<uint32_t> drop_input, drop_unmask;
  };
  const std::vector<Case> cases = {
      {4, {}, {}}, {4, {2}, {}}, {4, {}, {1}}, {7, {0, 5}, {}}, {10, {1, 4, 9}, {}}, {10, {3}, {0, 6}},
  };
  for (const auto& c : cases) {
    const auto fp = secagg::FixedPoint::for_parties(static_cast<int>(c.parties), 1.0);
    const auto inputs = random_inputs(c.parties, 1000, fp, c.parties * 31 + c.drop_input.size());
    secagg::DriverOptions o;
    o.params.parties = c.parties;
    o.params.dim = 1000;
    o.params.round = 7;
    o.drop_before_input = c.drop_input;
    o.drop_before_unmask = c.drop_unmask;
    secagg::DriverStats stats;
    auto sum = secagg::run_secure_aggregation(inputs, o, &stats);
    ASSERT_TRUE(sum.ok()) << c.parties << ": " << sum.status().to_string();
    EXPECT_EQ(*sum, plain_sum(inputs, stats.survivors)) << c.parties << " parties";
    EXPECT_EQ(stats.survivors.size(), c.parties - c.drop_input.size());
  }
}

TEST(SecureAggregation, TooManyDropoutsFailInsteadOfRevealing) {
  const auto fp = secagg::FixedPoint::for_parties(6, 1.0);
  const auto inputs = random_inputs(6, 50, fp, 1);
  secagg::DriverOptions o;
  o.params.parties = 6;
  o.params.dim = 50;
  o.drop_before_input = {0, 1, 2};  // threshold is 4
  EXPECT_FALSE(secagg::run_secure_aggregation(inputs, o).ok());
}

TEST(SecureAggregation, ComposesWithFixedPointAndSharedRandomK) {
  const uint32_t parties = 5, dim = 5000, k = 500;
  const auto fp = secagg::FixedPoint::for_parties(parties, 0.5);
  std::vector<std::vector<float>> dense;
  random_inputs(parties, dim, fp, 9, &dense);
  const auto idx = secagg::shared_random_k(dim, k, /*seed=*/1234);
  ASSERT_EQ(idx.size(), k);
  EXPECT_EQ(idx, secagg::shared_random_k(dim, k, 1234)) << "every site picks the same coordinates";
  std::vector<std::vector<uint32_t>> inputs;
  for (const auto& v : dense) {
    std::vector<float> picked;
    for (uint32_t i : idx) picked.push_back(v[i]);
    inputs.push_back(secagg::quantise(picked, fp));
  }
  secagg::DriverOptions o;
  o.params.parties = parties;
  o.params.dim = k;
  o.drop_before_input = {3};
  secagg::DriverStats stats;
  auto sum = secagg::run_secure_aggregation(inputs, o, &stats);
  ASSERT_TRUE(sum.ok());
  EXPECT_EQ(*sum, plain_sum(inputs, stats.survivors));
  const auto mean = secagg::dequantise(*sum, fp);
  for (uint32_t j = 0; j < k; ++j) {
    double expect = 0;
    for (uint32_t u : stats.survivors) expect += dense[u][idx[j]];
    EXPECT_NEAR(mean[j], expect, stats.survivors.size() / fp.scale + 1e-6) << j;  // + float32 rounding
  }
}

TEST(SecureAggregation, OneMaskedUpdateLooksUniform) {
  // The inputs are far from uniform (small values near 0, i.e. 0x0000.... and 0xFFFF....); what
  // the coordinator sees of one site must not be. Chi-square over 256 buckets of the top byte.
  const uint32_t parties = 4, dim = 65536;
  const auto fp = secagg::FixedPoint::for_parties(parties, 1.0);
  const auto inputs = random_inputs(parties, dim, fp, 5);
  secagg::DriverOptions o;
  o.params.parties = parties;
  o.params.dim = dim;
  o.params.deterministic_seed = 2024;  // fixed keys: the statistic is reproducible
  std::vector<std::vector<uint32_t>> masked;
  ASSERT_TRUE(secagg::run_secure_aggregation(inputs, o, nullptr, &masked).ok());
  auto chi2_top_byte = [](const std::vector<uint32_t>& v) {
    std::vector<double> counts(256, 0);
    for (uint32_t x : v) counts[x >> 24] += 1;
    const double e = v.size() / 256.0;
    double chi2 = 0;
    for (double c : counts) chi2 += (c - e) * (c - e) / e;
    return chi2;
  };
  // 255 degrees of freedom: p = 0.001 at chi2 = 330.5 (upper tail).
  EXPECT_LT(chi2_top_byte(masked[1]), 330.5);
  EXPECT_GT(chi2_top_byte(inputs[1]), 10000) << "the test must be able to fail";
  // And the low byte, which quantisation leaves nearly uniform, for the masked value too.
  std::vector<uint32_t> low(dim);
  for (uint32_t i = 0; i < dim; ++i) low[i] = masked[1][i] << 24;
  EXPECT_LT(chi2_top_byte(low), 330.5);
}

TEST(SecureAggregation, ARelayedShareThatWasTamperedWithIsRefused) {
  secagg::Params p;
  p.parties = 3;
  p.dim = 4;
  secagg::SecAggClient a(p, 0), b(p, 1), c(p, 2);
  const std::vector<secagg::Key> keys = {a.public_key(), b.public_key(), c.public_key()};
  auto from_a = a.share_keys(keys);
  auto from_c = c.share_keys(keys);
  ASSERT_TRUE(from_a.ok() && from_c.ok());
  ASSERT_TRUE(b.share_keys(keys).ok());
  std::vector<secagg::EncryptedShares> for_b = {(*from_a)[0], (*from_c)[1]};
  for_b[0].nonce_and_box.back() ^= 1;
  EXPECT_FALSE(b.masked_input({1, 2, 3, 4}, for_b).ok());
}

// ---- Differential privacy -----------------------------------------------------------------------
// References: Opacus' opacus/accountants/analysis/rdp.py (= TF Privacy's rdp_accountant.py with
// the Balle et al. 2020 conversion). The first is the worked example in that file's docstring;
// the others were computed with a line-by-line pure-Python port of it (bench/privacy_rdp_ref.py),
// over Opacus' DEFAULT_ALPHAS ([1 + x/10 for x in 1..99] + 12..63).
std::vector<double> opacus_alphas() {
  std::vector<double> a;
  for (int x = 1; x < 100; ++x) a.push_back(1 + x / 10.0);
  for (int i = 12; i < 64; ++i) a.push_back(i);
  return a;
}

TEST(RdpAccountant, MatchesOpacusDocstringExample) {
  std::vector<double> orders;
  for (int a = 2; a <= 32; ++a) orders.push_back(a);
  dp::RdpAccountant acc(orders);
  acc.step(1e-5, 1.0, 10);
  acc.step(1e-4, 3.0, 4);
  auto s = acc.spent(1e-5);
  EXPECT_NEAR(s.epsilon, 0.336, 5e-4);  // published: (0.336, 23)
  EXPECT_EQ(s.order, 23);
}

TEST(RdpAccountant, MatchesReferenceValues) {
  struct Case {
    double q, sigma;
    uint64_t steps;
    double delta, epsilon, order;
  };
  const std::vector<Case> cases = {
      {0.01, 1.1, 10000, 1e-5, 5.63199236854841, 4.7},
      {256.0 / 60000, 1.1, 14062, 1e-5, 2.5965558689607486, 8.1},  // MNIST DP-SGD tutorial, 60 epochs
      {0.02, 0.8, 1000, 1e-5, 7.200571566711017, 3.4},
      {1.0, 2.0, 20, 1e-5, 12.301691480042896, 3.0},
      {0.1, 4.0, 500, 1e-6, 2.8482525449785023, 9.1},
  };
  for (const auto& c : cases) {
    dp::RdpAccountant acc(opacus_alphas());
    acc.step(c.q, c.sigma, c.steps);
    auto s = acc.spent(c.delta);
    EXPECT_NEAR(s.epsilon, c.epsilon, 1e-6 * c.epsilon) << "q=" << c.q << " sigma=" << c.sigma;
    EXPECT_NEAR(s.order, c.order, 1e-9);
  }
  // Integer orders 2..64 (the default list holds them) never do worse than the fractional list.
  dp::RdpAccountant acc;
  acc.step(0.01, 1.1, 10000);
  EXPECT_LE(acc.spent(1e-5).epsilon, 5.632);
}

TEST(ClientDp, ClipsTheUpdateAndWeighsSitesEqually) {
  struct Fixed : Learner {
    StatusOr<FitReport> fit(const Weights& g, const RoundSettings&) override {
      FitReport r;
      r.weights = g;
      for (auto& t : r.weights)
        for (auto& v : t.data) v += 3.0f;  // update norm 3 * sqrt(5)
      r.num_examples = 100;
      return r;
    }
    StatusOr<EvalReport> evaluate(const Weights&) override { return EvalReport{}; }
    uint64_t num_train_examples() const override { return 100; }
    uint64_t num_val_examples() const override { return 10; }
  } inner;
  dp::ClientDpLearner clip_only(inner, {/*clip=*/1.0, /*noise_multiplier=*/0, /*num_sites=*/4, /*seed=*/1});
  const Weights g = model();
  auto r = clip_only.fit(g, RoundSettings{});
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->num_examples, 1u);
  EXPECT_NEAR(clip_only.last_update_norm(), 3 * std::sqrt(5.0), 1e-5);
  Weights delta = r->weights;
  for (size_t t = 0; t < delta.size(); ++t)
    for (size_t i = 0; i < delta[t].data.size(); ++i) delta[t].data[i] -= g[t].data[i];
  EXPECT_NEAR(dp::l2_norm(delta), 1.0, 1e-5);

  // Noise per site: z C / sqrt(K).
  Weights big = {{"w", {100000}, std::vector<float>(100000, 0.f)}};
  dp::add_gaussian_noise(big, 0.5, /*seed=*/3);
  double ss = 0;
  for (float v : big[0].data) ss += v * v;
  EXPECT_NEAR(std::sqrt(ss / 100000), 0.5, 0.01);
}

}  // namespace
}  // namespace fedrad::fed
