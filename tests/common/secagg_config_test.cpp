// privacy.secure_aggregation in the study config: what composes with it is accepted, what needs
// one site's update (or would break the masks) is refused naming the key and why.
#include <gtest/gtest.h>

#include "common/config.h"

namespace fedrad {
namespace {

const char* kSites = "sites: [a, b, c, d]\n";

TEST(SecAggConfig, ParsesTheKeysAndComposesWithFedAvgVariantsAndClientDp) {
  for (const char* strategy : {"fedavg", "fedprox", "fedbn", "fedavgm", "fedadam", "fedyogi", "fedadagrad"}) {
    const std::string yaml = std::string(kSites) + "federation: {strategy: " + strategy +
                             ", downstream_codec: 'delta|q8|zstd'}\n"
                             "model: {norm: group}\n"
                             "privacy: {secure_aggregation: true, secagg_clip: 2.5, secagg_threshold: 3, "
                             "client_clip: 1.0, client_noise_multiplier: 0.1}\n";
    auto c = parse_study_config(yaml, "ok.yaml");
    ASSERT_TRUE(c.ok()) << strategy << ": " << c.status().to_string();
    EXPECT_TRUE(c->privacy.secure_aggregation);
    EXPECT_DOUBLE_EQ(c->privacy.secagg_clip, 2.5);
    EXPECT_EQ(c->privacy.secagg_threshold, 3);
    auto again = parse_study_config(to_yaml(*c), "again.yaml");
    ASSERT_TRUE(again.ok()) << again.status().to_string();
    EXPECT_TRUE(again->privacy.secure_aggregation);
    EXPECT_DOUBLE_EQ(again->privacy.secagg_clip, 2.5);
  }
  auto d = parse_study_config("", "d.yaml");
  ASSERT_TRUE(d.ok());
  EXPECT_FALSE(d->privacy.secure_aggregation);
  EXPECT_DOUBLE_EQ(d->privacy.secagg_clip, 4);
  EXPECT_EQ(d->privacy.secagg_threshold, 0);
}

// Shared-seed random-k (with delta and error feedback) composes with masking.
TEST(SecAggConfig, AcceptsSharedSeedRandomK) {
  for (const char* codec : {"randk:0.1", "delta|ef|randk:0.05|zstd", "delta|ef:0.9|randk:0.2", "none", "zstd"}) {
    auto c = parse_study_config(std::string(kSites) + "federation: {upstream_codec: '" + codec +
                                    "'}\nprivacy: {secure_aggregation: true}\n",
                                "ok.yaml");
    EXPECT_TRUE(c.ok()) << codec << ": " << c.status().to_string();
  }
}

// Kernel top-k is a codec like topk without masking.
TEST(SecAggConfig, KernelTopKIsAnUpstreamCodecWithoutMasking) {
  auto c = parse_study_config(std::string(kSites) + "federation: {upstream_codec: 'delta|ef|ktopk:0.03|q4|zstd'}\n",
                              "ok.yaml");
  EXPECT_TRUE(c.ok()) << c.status().to_string();
  auto bad = parse_study_config(std::string(kSites) + "federation: {upstream_codec: 'delta|ktopk|q4'}\n", "bad.yaml");
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(bad.status().message().find("kept fraction"), std::string::npos) << bad.status().message();
}

TEST(SecAggConfig, RefusesWhatNeedsOneSitesUpdateNamingTheKeyAndWhy) {
  const std::string on = "privacy: {secure_aggregation: true}\n";
  const std::vector<std::tuple<std::string, std::string, std::string>> cases = {
      {std::string(kSites) + "federation: {strategy: median}\n" + on, "federation.strategy",
       "needs every site's update"},
      {std::string(kSites) + "federation: {strategy: trimmed_mean}\n" + on, "federation.strategy",
       "trimmed_mean"},
      {std::string(kSites) + "federation: {max_update_norm: 5}\n" + on, "federation.max_update_norm",
       "never sees one site's update"},
      {std::string(kSites) + "federation: {upstream_codec: 'delta|topk:0.01|zstd'}\n" + on,
       "federation.upstream_codec", "the masks would not cancel"},
      {std::string(kSites) + "federation: {upstream_codec: 'delta|ef|ktopk:0.03|zstd'}\n" + on,
       "federation.upstream_codec", "cannot use ktopk"},
      {std::string(kSites) + "federation: {upstream_codec: 'delta|ef|randk:0.1|q8|zstd'}\n" + on,
       "federation.upstream_codec", "cannot use q8"},
      {"sites: [a]\n" + on, "sites", "2..255 sites"},
      {std::string(kSites) + "privacy: {secure_aggregation: true, secagg_clip: 0}\n", "privacy.secagg_clip",
       "> 0"},
      {std::string(kSites) + "privacy: {secure_aggregation: true, secagg_threshold: 1}\n",
       "privacy.secagg_threshold", "2..the number of sites"},
      {std::string(kSites) + "privacy: {secure_aggregation: true, secagg_threshold: 5}\n",
       "privacy.secagg_threshold", "2..the number of sites"},
  };
  for (const auto& [yaml, key, why] : cases) {
    auto c = parse_study_config(yaml, "bad.yaml");
    ASSERT_FALSE(c.ok()) << yaml;
    const std::string& msg = c.status().message();
    EXPECT_NE(msg.find("bad.yaml"), std::string::npos) << msg;
    EXPECT_NE(msg.find(key), std::string::npos) << msg;
    EXPECT_NE(msg.find(why), std::string::npos) << msg;
  }
}

}  // namespace
}  // namespace fedrad
