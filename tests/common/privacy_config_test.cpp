// The `privacy:` section of the study config (issue 8).
#include <gtest/gtest.h>

#include "common/config.h"

namespace fedrad {
namespace {

TEST(PrivacyConfig, ParsesValidatesAndRoundTrips) {
  auto c = parse_study_config(
      "model: {norm: group}\nprivacy: {client_clip: 2.5, client_noise_multiplier: 0.7, dp_sgd: true, "
      "sample_clip: 0.5, sample_noise_multiplier: 1.3, delta: 1.0e-6}\n",
      "p.yaml");
  ASSERT_TRUE(c.ok()) << c.status().to_string();
  EXPECT_DOUBLE_EQ(c->privacy.client_clip, 2.5);
  EXPECT_DOUBLE_EQ(c->privacy.client_noise_multiplier, 0.7);
  EXPECT_TRUE(c->privacy.dp_sgd);
  EXPECT_DOUBLE_EQ(c->privacy.sample_noise_multiplier, 1.3);
  auto again = parse_study_config(to_yaml(*c), "again.yaml");
  ASSERT_TRUE(again.ok()) << again.status().to_string();
  EXPECT_DOUBLE_EQ(again->privacy.delta, 1e-6);
  EXPECT_DOUBLE_EQ(again->privacy.sample_clip, 0.5);
  // Defaults: off.
  auto d = parse_study_config("", "d.yaml");
  ASSERT_TRUE(d.ok());
  EXPECT_EQ(d->privacy.client_clip, 0);
  EXPECT_FALSE(d->privacy.dp_sgd);
}

TEST(PrivacyConfig, RefusesImpossibleSettingsNamingTheKey) {
  const std::vector<std::pair<std::string, std::string>> cases = {
      {"model: {norm: group}\nprivacy: {client_noise_multiplier: 1.0}\n", "privacy.client_noise_multiplier"},
      {"privacy: {dp_sgd: true}\n", "model.norm"},  // batch norm is the default
      {"model: {norm: group}\nprivacy: {delta: 1.5}\n", "privacy.delta"},
      {"privacy: {secure_aggregation: true}\nfederation: {strategy: median}\n", "federation.strategy"},
      {"privacy: {epsilon: 3}\n", "privacy.epsilon"},
  };
  for (const auto& [yaml, key] : cases) {
    auto c = parse_study_config(yaml, "bad.yaml");
    ASSERT_FALSE(c.ok()) << yaml;
    EXPECT_NE(c.status().message().find(key), std::string::npos) << c.status().message();
  }
}

}  // namespace
}  // namespace fedrad
