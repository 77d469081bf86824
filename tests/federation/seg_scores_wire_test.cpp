// Segmentation scores in EVAL_RES / FIT_RES: numbers only, round-trip exactly, and hostile values
// are refused by the decoder.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>

#include "federation/wire.h"

namespace fedrad::fed::wire {
namespace {

constexpr size_t kMax = 1 << 20;

Message eval_message(const SegScoreSums& seg) {
  Message m;
  m.study = "s";
  m.round = 3;
  m.sender = "site-a";
  EvalRes r;
  r.eval.num_examples = 4;
  r.eval.loss = 0.25;
  r.eval.seg = seg;
  m.body = r;
  return m;
}

SegScoreSums sample() {
  SegScoreSums g;
  g.cases = 4;
  g.dice_sum = {3.5, 2.0, 0.0};
  g.hd95_sum = {8.25, 0.0, 12.5};
  g.hd95_cases = {4, 0, 2};
  return g;
}

TEST(SegScoresWire, RoundTripsExactly) {
  for (Compression c : {Compression::kNone, Compression::kZstd}) {
    Message m = eval_message(sample());
    m.compression = c;
    auto enc = encode(m);
    ASSERT_TRUE(enc.ok()) << enc.status().to_string();
    auto dec = decode(enc->bytes.data(), enc->bytes.size(), kMax);
    ASSERT_TRUE(dec.ok()) << dec.status().to_string();
    const auto& got = std::get<EvalRes>(dec->message.body).eval.seg;
    EXPECT_EQ(got.cases, 4u);
    EXPECT_EQ(got.dice_sum, sample().dice_sum);
    EXPECT_EQ(got.hd95_sum, sample().hd95_sum);
    EXPECT_EQ(got.hd95_cases, sample().hd95_cases);
  }
  // Classification evaluations carry no structures.
  auto enc = encode(eval_message(SegScoreSums{}));
  ASSERT_TRUE(enc.ok());
  auto dec = decode(enc->bytes.data(), enc->bytes.size(), kMax);
  ASSERT_TRUE(dec.ok());
  EXPECT_TRUE(std::get<EvalRes>(dec->message.body).eval.seg.empty());
}

// Encodes `seg` unchecked by patching a valid message's bytes: finds the sample's first Dice sum.
std::string with_first_dice_sum(double value) {
  auto enc = encode(eval_message(sample()));
  EXPECT_TRUE(enc.ok());
  std::string b = enc->bytes;
  double original = 3.5;
  const std::string needle(reinterpret_cast<const char*>(&original), 8);
  const size_t at = b.find(needle);
  EXPECT_NE(at, std::string::npos);
  std::memcpy(&b[at], &value, 8);
  return b;
}

TEST(SegScoresWire, RefusesImpossibleScores) {
  for (double bad : {5.0 /* more than 4 cases can sum to */, -0.5, std::nan("")}) {
    const std::string b = with_first_dice_sum(bad);
    auto dec = decode(b.data(), b.size(), kMax);
    ASSERT_FALSE(dec.ok()) << bad;
    EXPECT_EQ(dec.status().code(), StatusCode::kCorrupt);
    EXPECT_NE(dec.status().message().find("Dice"), std::string::npos) << dec.status().message();
  }
}

TEST(SegScoresWire, RefusesTooManyStructuresAndUnevenArrays) {
  SegScoreSums g;
  g.cases = 1;
  g.dice_sum.assign(kMaxSegStructures + 1, 0.5);
  g.hd95_sum.assign(kMaxSegStructures + 1, 0.0);
  g.hd95_cases.assign(kMaxSegStructures + 1, 0);
  EXPECT_FALSE(encode(eval_message(g)).ok());
  SegScoreSums uneven = sample();
  uneven.hd95_cases.pop_back();
  EXPECT_FALSE(encode(eval_message(uneven)).ok());
  // A truncated score block is refused, not read past the end.
  auto enc = encode(eval_message(sample()));
  ASSERT_TRUE(enc.ok());
  const std::string cut = enc->bytes.substr(0, enc->bytes.size() - 5);
  EXPECT_FALSE(decode(cut.data(), cut.size(), kMax).ok());
}

}  // namespace
}  // namespace fedrad::fed::wire
