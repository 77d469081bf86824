// Update codecs: parsing, round trips within each codec's stated error, exact error feedback,
// index coding, refusal of unknown codecs and malformed bytes, and a study over TCP with lossy
// codecs both ways in which every site holds bit for bit the coordinator's downstream copy.
#include "federation/codec.h"

#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cmath>
#include <cstring>
#include <future>
#include <mutex>
#include <random>

#include "federation/wire.h"
#include "tests/test_data.h"

namespace fedrad::fed {
namespace {

Weights make_weights(uint64_t seed, float scale = 1.0f) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> normal(0.0f, scale);
  Weights w = {TensorRecord{"conv.weight", {16, 8, 3, 3}, {}}, TensorRecord{"conv.bias", {16}, {}},
               TensorRecord{"fc.weight", {2, 1000}, {}}, TensorRecord{"bn.running_var", {7}, {}}};
  for (TensorRecord& t : w) {
    int64_t n = 1;
    for (int64_t d : t.shape) n *= d;
    t.data.resize(static_cast<size_t>(n));
    for (float& v : t.data) v = normal(rng);
  }
  return w;
}

std::vector<float> flat(const Weights& w) {
  std::vector<float> out;
  for (const TensorRecord& t : w) out.insert(out.end(), t.data.begin(), t.data.end());
  return out;
}

Weights zeros_like(const Weights& w) {
  Weights z = w;
  for (TensorRecord& t : z) std::fill(t.data.begin(), t.data.end(), 0.0f);
  return z;
}

CodecSpec spec_of(const std::string& text) {
  auto s = CodecSpec::parse(text);
  EXPECT_TRUE(s.ok()) << text << ": " << s.status().to_string();
  return s.ok() ? *s : CodecSpec{};
}

std::string encode_ok(const std::string& codec, const Weights& model, const Weights& ref, uint64_t seed = 1,
                      ErrorFeedback* ef = nullptr) {
  auto bytes = encode_update(spec_of(codec), model, ref, seed, ef);
  EXPECT_TRUE(bytes.ok()) << bytes.status().to_string();
  return bytes.ok() ? *bytes : std::string();
}

// ---- parsing ---------------------------------------------------------------------------------

TEST(CodecSpec, ParsesAndPrintsCanonically) {
  const std::vector<std::pair<std::string, std::string>> cases = {
      {"zstd", "zstd"},
      {"none", "none"},
      {" delta | ef | topk:0.01 | q8 | zstd ", "delta|ef|topk:0.01|q8|zstd"},
      {"delta|ef:0.9|randk:0.05|q4:64|zstd:9", "delta|ef:0.9|randk:0.05|q4:64|zstd:9"},
      {"delta|fp16", "delta|fp16"},
      {"bf16|zstd:3", "bf16|zstd"},
      {"delta|topk:1|q2:256", "delta|topk:1|q2"},
      {"delta | ef | ktopk:0.05 | q4 | zstd", "delta|ef|ktopk:0.05|q4|zstd"},
  };
  for (const auto& [in, want] : cases) {
    auto s = CodecSpec::parse(in);
    ASSERT_TRUE(s.ok()) << in << ": " << s.status().to_string();
    EXPECT_EQ(s->to_string(), want);
    EXPECT_EQ(CodecSpec::parse(s->to_string())->to_string(), want);
  }
  EXPECT_TRUE(CodecSpec::parse("zstd")->plain());
  EXPECT_TRUE(CodecSpec::parse("none")->plain());
  EXPECT_FALSE(CodecSpec::parse("delta|zstd")->plain());
  EXPECT_TRUE(CodecSpec::parse("delta|zstd")->lossless());
  EXPECT_FALSE(CodecSpec::parse("q8")->lossless());
}

TEST(CodecSpec, RefusesUnknownStagesBadParametersAndOrder) {
  const std::vector<std::pair<std::string, std::string>> cases = {
      {"delta|lz4", "unknown codec stage 'lz4'"},
      {"delta||zstd", "unknown codec stage ''"},
      {"", "empty codec"},
      {"topk", "kept fraction"},
      {"topk:0", "kept fraction"},
      {"topk:1.5", "kept fraction"},
      {"randk:abc", "kept fraction"},
      {"q8:0", "block size"},
      {"ef:1", "momentum"},
      {"zstd:30", "level"},
      {"delta:1", "no parameter"},
      {"zstd|delta", "cannot follow"},
      {"q8|fp16", "cannot follow"},
      {"topk:0.1|topk:0.2", "cannot follow"},
      {"ktopk", "kept fraction"},
      {"topk:0.1|ktopk:0.2", "cannot follow"},
  };
  for (const auto& [in, why] : cases) {
    auto s = CodecSpec::parse(in);
    ASSERT_FALSE(s.ok()) << in;
    EXPECT_EQ(s.status().code(), StatusCode::kInvalidArgument) << in;
    EXPECT_NE(s.status().message().find(why), std::string::npos) << in << ": " << s.status().message();
  }
}

// ---- round trips -----------------------------------------------------------------------------

struct RoundTripCase {
  std::string codec;
  // Per value: |decoded - x| <= abs_tol + rel_tol |x| + step_tol * (max |x| of its block).
  double rel_tol;
  double step_tol;
};

class CodecRoundTrip : public ::testing::TestWithParam<RoundTripCase> {};

TEST_P(CodecRoundTrip, DenseCodecsStayWithinTheirStatedError) {
  const RoundTripCase& c = GetParam();
  const Weights ref = make_weights(1);
  const Weights model = make_weights(2);
  const CodecSpec spec = spec_of(c.codec);
  const std::string bytes = encode_ok(c.codec, model, ref, 99);
  auto got = decode_update(spec.to_string(), bytes, ref);
  ASSERT_TRUE(got.ok()) << got.status().to_string();
  ASSERT_TRUE(check_compatible(ref, *got).ok());
  const std::vector<float> x = flat(model), r = flat(ref), y = flat(*got);
  // The quantity that was coded: the delta or the model itself.
  std::vector<float> coded(x.size());
  for (size_t i = 0; i < x.size(); ++i) coded[i] = spec.delta ? x[i] - r[i] : x[i];
  // Blocks of `block` values within each tensor.
  const size_t block = static_cast<size_t>(spec.block);
  std::vector<size_t> tensor_start(x.size()), tensor_end(x.size());
  for (size_t t = 0, at = 0; t < ref.size(); at += ref[t].data.size(), ++t)
    for (size_t i = at; i < at + ref[t].data.size(); ++i) tensor_start[i] = at, tensor_end[i] = at + ref[t].data.size();
  for (size_t i = 0; i < x.size(); ++i) {
    const size_t ts = tensor_start[i], te = tensor_end[i];
    const size_t b0 = ts + (i - ts) / block * block;
    float block_max = 0;
    for (size_t j = b0; j < std::min(te, b0 + block); ++j) block_max = std::max(block_max, std::fabs(coded[j]));
    const double tol = 1e-6 * (1 + std::fabs(x[i])) + c.rel_tol * std::fabs(coded[i]) + c.step_tol * block_max;
    ASSERT_LE(std::fabs(y[i] - x[i]), tol) << c.codec << " value " << i;
  }
  // Deterministic: the same inputs and seed give the same bytes (what keeps copies identical).
  EXPECT_EQ(encode_ok(c.codec, model, ref, 99), bytes);
}

INSTANTIATE_TEST_SUITE_P(
    Codecs, CodecRoundTrip,
    ::testing::Values(RoundTripCase{"none", 0, 0}, RoundTripCase{"zstd", 0, 0}, RoundTripCase{"delta|zstd", 0, 0},
                      RoundTripCase{"delta|fp16", 1.0 / 2048, 0}, RoundTripCase{"bf16|zstd", 1.0 / 256, 0},
                      // Stochastic rounding lands on one of the two neighbouring levels: one step.
                      RoundTripCase{"delta|q8|zstd", 0, 1.0 / 127}, RoundTripCase{"delta|q8:32", 0, 1.0 / 127},
                      RoundTripCase{"delta|q4", 0, 1.0 / 7}, RoundTripCase{"q4:100|zstd", 0, 1.0 / 7},
                      RoundTripCase{"delta|q2", 0, 1.0}, RoundTripCase{"q2:7", 0, 1.0}),
    [](const auto& info) {
      std::string n = info.param.codec;
      for (char& ch : n)
        if (!std::isalnum(static_cast<unsigned char>(ch))) ch = '_';
      return n;
    });

TEST(Codec, StochasticRoundingIsUnbiased) {
  const Weights ref = zeros_like(make_weights(1));
  const Weights model = make_weights(3);
  const std::vector<float> x = flat(model);
  std::vector<double> mean(x.size(), 0.0);
  constexpr int kTrials = 400;
  for (int s = 0; s < kTrials; ++s) {
    auto got = decode_update("q2", encode_ok("q2", model, ref, static_cast<uint64_t>(s)), ref);
    ASSERT_TRUE(got.ok());
    const std::vector<float> y = flat(*got);
    for (size_t i = 0; i < x.size(); ++i) mean[i] += y[i] / kTrials;
  }
  // Ternary levels of a block scale ~3.5: per-value std of the mean is about 3.5 / sqrt(400).
  double err = 0;
  for (size_t i = 0; i < x.size(); ++i) err += std::fabs(mean[i] - x[i]);
  EXPECT_LT(err / x.size(), 0.12);
}

TEST(Codec, FloatConversionsRoundToNearestEven) {
  EXPECT_EQ(float_to_half(1.0f), 0x3c00);
  EXPECT_EQ(float_to_half(-2.0f), 0xc000);
  EXPECT_EQ(float_to_half(65504.0f), 0x7bff);
  EXPECT_EQ(float_to_half(1e6f), 0x7c00);
  EXPECT_EQ(float_to_half(std::ldexp(1.0f, -24)), 0x0001);  // smallest subnormal
  EXPECT_EQ(float_to_half(1.0f + std::ldexp(1.0f, -11)), 0x3c00);  // tie to even
  EXPECT_EQ(float_to_half(1.0f + 3 * std::ldexp(1.0f, -11)), 0x3c02);
  for (uint32_t h = 0; h < 0x7c00; ++h) EXPECT_EQ(float_to_half(half_to_float(static_cast<uint16_t>(h))), h);
  EXPECT_EQ(float_to_bf16(1.0f), 0x3f80);
  EXPECT_EQ(bf16_to_float(float_to_bf16(3.140625f)), 3.140625f);
  EXPECT_TRUE(std::isnan(bf16_to_float(float_to_bf16(std::nanf("")))));
}

TEST(Codec, TopKKeepsTheLargestMagnitudesOfEachTensorExactly) {
  const Weights ref = zeros_like(make_weights(1));
  const Weights model = make_weights(4);
  for (double fraction : {0.001, 0.01, 0.1, 0.5}) {
    const std::string codec = "topk:" + std::to_string(fraction);
    auto got = decode_update(codec, encode_ok(codec, model, ref), ref);
    ASSERT_TRUE(got.ok()) << got.status().to_string();
    for (size_t t = 0; t < model.size(); ++t) {
      const std::vector<float>& x = model[t].data;
      const std::vector<float>& y = (*got)[t].data;
      size_t kept = 0;
      float min_kept = INFINITY, max_dropped = 0;
      for (size_t i = 0; i < x.size(); ++i) {
        if (y[i] != 0) {
          EXPECT_EQ(y[i], x[i]);  // kept values are exact without a quantiser
          ++kept;
          min_kept = std::min(min_kept, std::fabs(x[i]));
        } else {
          max_dropped = std::max(max_dropped, std::fabs(x[i]));
        }
      }
      if (x.size() <= 512) {  // small tensors are always sent whole
        EXPECT_EQ(kept, x.size()) << codec << " tensor " << t;
        continue;
      }
      const double k = std::max(1.0, std::round(fraction * x.size()));
      EXPECT_GE(kept, std::max(1.0, 0.5 * k)) << codec << " tensor " << t;  // at least one per tensor
      EXPECT_LE(kept, 1.5 * k + 16) << codec << " tensor " << t;
      EXPECT_GE(min_kept, max_dropped) << codec << " tensor " << t;
    }
  }
}

TEST(Codec, TensorsOfAtMost512ValuesAreSentWholeAndLargerOnesSparsified) {
  std::mt19937_64 rng(3);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  Weights model = {TensorRecord{"stem.weight", {4, 1, 3, 3}, std::vector<float>(36)},
                   TensorRecord{"head.weight", {1, 512}, std::vector<float>(512)},
                   TensorRecord{"body.weight", {1, 513}, std::vector<float>(513)},
                   TensorRecord{"bn.num_batches_tracked", {}, std::vector<float>(1)}};
  for (TensorRecord& t : model)
    for (float& v : t.data) v = normal(rng);
  const Weights ref = zeros_like(model);
  for (const char* codec : {"topk:0.01", "randk:0.01"}) {
    auto got = decode_update(codec, encode_ok(codec, model, ref), ref);
    ASSERT_TRUE(got.ok()) << got.status().to_string();
    for (size_t t : {0, 1, 3}) EXPECT_EQ((*got)[t].data, model[t].data) << codec << " " << model[t].name;
    size_t kept = 0;
    for (float v : (*got)[2].data) kept += v != 0;
    EXPECT_LT(kept, 30u) << codec;  // 513 values at 1%: about 5 (topk's threshold is sampled)
  }
}

TEST(Codec, RandomKIndicesComeFromTheSeedAndAreNotSent) {
  const Weights ref = zeros_like(make_weights(1));
  const Weights model = make_weights(5);
  const std::string a = encode_ok("randk:0.1", model, ref, 7);
  const std::string b = encode_ok("randk:0.1", model, ref, 8);
  const size_t n = flat(model).size();
  // header 24 + count 8 + ~10% of values (and the 23 of the small tensors) as fp32, no indices.
  EXPECT_LT(a.size(), 24 + 8 + 4 * (0.13 * n + 23));
  auto ya = decode_update("randk:0.1", a, ref), yb = decode_update("randk:0.1", b, ref);
  ASSERT_TRUE(ya.ok() && yb.ok());
  const std::vector<float> x = flat(model), fa = flat(*ya), fb = flat(*yb);
  size_t kept = 0, differ = 0;
  for (size_t i = 0; i < n; ++i) {
    if (fa[i] != 0) EXPECT_EQ(fa[i], x[i]);
    kept += fa[i] != 0;
    differ += (fa[i] != 0) != (fb[i] != 0);
  }
  EXPECT_NEAR(static_cast<double>(kept) / n, 0.1, 0.02);
  EXPECT_GT(differ, 0u);  // another seed, other indices
}

TEST(Codec, IndexCodingPicksTheSmallestOfRiceVarintAndBitmap) {
  const Weights ref = zeros_like(make_weights(1));
  const Weights model = make_weights(6);
  const size_t n = flat(model).size();
  // Sparse: ~n/100 indices as Rice codes (~log2(100) + 1.5 bits each) beat varints (a byte or
  // two each) and an n/8 bitmap.
  const std::string sparse = encode_ok("topk:0.01", model, ref);
  EXPECT_LT(sparse.size(), 24 + 1 + 8 + 1 + 8 + 1.2 * (0.015 * n + 2) + 4 * (0.015 * n + 2 + 23) + 16);
  EXPECT_EQ(static_cast<uint8_t>(sparse[24]), 3);  // Rice
  auto got = decode_update("topk:0.01", sparse, ref);
  ASSERT_TRUE(got.ok()) << got.status().to_string();
  // A run of consecutive indices (the 1% of fc.weight) beside long gaps round-trips exactly.
  Weights ones = zeros_like(model);
  for (size_t i = 0; i < 20; ++i) ones[2].data[100 + i] = 1.0f + static_cast<float>(i);
  const std::string run = encode_ok("topk:0.01", ones, zeros_like(model));
  auto back = decode_update("topk:0.01", run, zeros_like(model));
  ASSERT_TRUE(back.ok()) << back.status().to_string();
  EXPECT_EQ(flat(*back), flat(ones));
  // Dense-ish: half of the values: the bitmap (n/8 bytes) wins.
  const std::string half = encode_ok("topk:0.5", model, ref);
  EXPECT_EQ(static_cast<uint8_t>(half[24]), 2);  // bitmap
  EXPECT_LE(half.size(), 24 + 1 + 8 + (n + 7) / 8 + 4 * (0.75 * n + 16));
}

// ---- error feedback --------------------------------------------------------------------------

TEST(ErrorFeedback, ResidualIsExactlyWhatWasNotSent) {
  const Weights ref = zeros_like(make_weights(1));
  for (const std::string codec :
       {"ef|topk:0.05|q8", "ef|topk:0.02", "ef|ktopk:0.05|q4", "ef|randk:0.1|q4|zstd", "ef|q2", "ef|fp16"}) {
    ErrorFeedback ef;
    std::vector<float> carried(flat(ref).size(), 0.0f);
    std::vector<double> sent_total(carried.size(), 0.0), input_total(carried.size(), 0.0);
    for (int round = 0; round < 5; ++round) {
      const Weights model = make_weights(10 + round);
      const std::vector<float> x = flat(model);
      const std::string bytes = encode_ok(codec, model, ref, round, &ef);
      auto got = decode_update(spec_of(codec).to_string(), bytes, ref);
      ASSERT_TRUE(got.ok()) << got.status().to_string();
      const std::vector<float> y = flat(*got);
      ASSERT_EQ(ef.residual.size(), x.size());
      for (size_t i = 0; i < x.size(); ++i) {
        const float accumulated = carried[i] + x[i];
        // Bit for bit: residual = accumulated - decoded.
        ASSERT_EQ(ef.residual[i], accumulated - y[i]) << codec << " round " << round << " value " << i;
        carried[i] = ef.residual[i];
        sent_total[i] += y[i];
        input_total[i] += x[i];
      }
    }
    // Nothing is lost: what was sent plus what is still owed is what came in.
    for (size_t i = 0; i < carried.size(); ++i)
      ASSERT_NEAR(sent_total[i] + carried[i], input_total[i], 1e-4 * (1 + std::fabs(input_total[i]))) << codec;
  }
}

TEST(ErrorFeedback, MomentumCorrectionFollowsDgc) {
  const Weights ref = zeros_like(make_weights(1));
  ErrorFeedback ef;
  const float m = 0.9f;
  std::vector<float> u(flat(ref).size(), 0.0f), v(u.size(), 0.0f);
  for (int round = 0; round < 4; ++round) {
    const Weights model = make_weights(20 + round);
    const std::vector<float> x = flat(model);
    for (size_t i = 0; i < x.size(); ++i) {
      u[i] = m * u[i] + x[i];
      v[i] = v[i] + u[i];
    }
    auto got = decode_update("ef:0.9|topk:0.05", encode_ok("ef:0.9|topk:0.05", model, ref, round, &ef), ref);
    ASSERT_TRUE(got.ok());
    const std::vector<float> y = flat(*got);
    for (size_t i = 0; i < x.size(); ++i) {
      if (y[i] != 0) {
        ASSERT_EQ(y[i], v[i]);
        v[i] = 0;  // sent: accumulator and momentum are cleared (momentum factor masking)
        u[i] = 0;
      }
      ASSERT_EQ(ef.residual[i], v[i]);
      ASSERT_EQ(ef.velocity[i], u[i]);
    }
  }
}

TEST(ErrorFeedback, IsRequiredByEfCodecs) {
  const Weights ref = make_weights(1);
  auto r = encode_update(spec_of("delta|ef|topk:0.1"), make_weights(2), ref, 0, nullptr);
  EXPECT_EQ(r.status().code(), StatusCode::kInvalidArgument);
}

// ---- refusal and validation ------------------------------------------------------------------

TEST(CodecDecode, RefusesUnknownCodecsNamingTheStage) {
  const Weights ref = make_weights(1);
  const std::string bytes = encode_ok("delta|q8|zstd", make_weights(2), ref);
  auto got = decode_update("delta|q3|zstd", bytes, ref);
  ASSERT_FALSE(got.ok());
  EXPECT_EQ(got.status().code(), StatusCode::kUnsupported);
  EXPECT_NE(got.status().message().find("unknown codec stage 'q3'"), std::string::npos) << got.status().message();
}

TEST(CodecDecode, RefusesAnotherModelLayout) {
  const Weights ref = make_weights(1);
  const std::string bytes = encode_ok("delta|q8", make_weights(2), ref);
  Weights other = ref;
  other[1].name = "conv.bias2";
  EXPECT_EQ(decode_update("delta|q8", bytes, other).status().code(), StatusCode::kCorrupt);
  other = ref;
  other.pop_back();
  EXPECT_FALSE(decode_update("delta|q8", bytes, other).ok());
  EXPECT_FALSE(encode_update(spec_of("delta|q8"), make_weights(2), other, 0).ok());
}

TEST(CodecDecode, EveryTruncationAndTrailingByteIsRefused) {
  const Weights ref = make_weights(1);
  for (const std::string codec : {"delta|topk:0.01|q8|zstd", "delta|topk:0.6|q4", "delta|topk:0.01|fp16",
                                  "delta|ktopk:0.05|q4", "randk:0.1|q2", "delta|q8:100", "bf16", "none"}) {
    const std::string bytes = encode_ok(codec, make_weights(2), ref);
    ASSERT_TRUE(decode_update(codec, bytes, ref).ok()) << codec;
    for (size_t len = 0; len < bytes.size(); ++len)
      ASSERT_FALSE(decode_update(codec, std::string_view(bytes.data(), len), ref).ok()) << codec << " len " << len;
    if (codec.find("zstd") == std::string::npos)
      EXPECT_FALSE(decode_update(codec, bytes + std::string(1, '\0'), ref).ok()) << codec;
    // The same bytes under another known codec are refused too (never read out of bounds).
    EXPECT_FALSE(decode_update(codec == "none" ? "fp16" : "none", bytes, ref).ok()) << codec;
  }
}

// v as a LEB128 varint (7 bits per byte, low first; the high bit says more follow), as the
// index section codes gaps.
std::string varint(uint64_t v) {
  std::string out;
  for (; v >= 0x80; v >>= 7) out.push_back(static_cast<char>((v & 0x7f) | 0x80));
  out.push_back(static_cast<char>(v));
  return out;
}

// Builds a topk/fp32 update by hand: header | varint coding | k | bytes | varints | values.
std::string hand_made(const Weights& ref, uint8_t coding, uint64_t k, const std::string& index_bytes,
                      const std::vector<float>& values, bool with_length = true) {
  std::string b;
  auto u64 = [&](uint64_t v) {
    for (int i = 0; i < 8; ++i) b.push_back(static_cast<char>(v >> (8 * i)));
  };
  u64(layout_fingerprint(ref));
  u64(num_values(ref));
  u64(0);
  b.push_back(static_cast<char>(coding));
  u64(k);
  if (with_length) u64(index_bytes.size());
  b += index_bytes;
  for (float f : values) b.append(reinterpret_cast<const char*>(&f), 4);
  return b;
}

// The tensors top-k sparsifies (more than 512 values), so that hand-made payloads need no values
// for the small tensors, which travel whole.
Weights large_only(const Weights& w) {
  Weights out;
  for (const TensorRecord& t : w)
    if (t.data.size() > 512) out.push_back(t);
  return out;
}

std::string hand_rice(const Weights& ref, uint64_t k, uint8_t r, const std::string& bits,
                      const std::vector<float>& values) {
  std::string b = hand_made(ref, 3, k, "", {}, false);
  b.push_back(static_cast<char>(r));
  for (int i = 0; i < 8; ++i) b.push_back(static_cast<char>(static_cast<uint64_t>(bits.size()) >> (8 * i)));
  b += bits;
  for (float f : values) b.append(reinterpret_cast<const char*>(&f), 4);
  return b;
}

TEST(CodecDecode, ValidatesRiceIndices) {
  const Weights ref = zeros_like(large_only(make_weights(1)));
  const uint64_t n = num_values(ref);
  // Indices 0 and 2, r = 0: gap 0 is "0", gap 1 is "10"; bits from bit 0: 0b010.
  auto ok = decode_update("topk:0.5", hand_rice(ref, 2, 0, "\x02", {1, 2}), ref);
  ASSERT_TRUE(ok.ok()) << ok.status().to_string();
  EXPECT_EQ((*ok)[0].data[0], 1.0f);
  EXPECT_EQ((*ok)[0].data[2], 2.0f);
  auto why = [&](const std::string& bytes) {
    auto r = decode_update("topk:0.5", bytes, ref);
    return r.ok() ? std::string("accepted") : r.status().message();
  };
  // A gap of n with r = 12 (quotient 0, then 12 low bits): past the last value.
  ASSERT_LT(n, 4096u);
  std::string far(2, '\0');
  for (int i = 0; i < 12; ++i)
    if ((n >> i) & 1u) far[(1 + i) / 8] = static_cast<char>(far[(1 + i) / 8] | (1 << ((1 + i) % 8)));
  EXPECT_NE(why(hand_rice(ref, 1, 12, far, {1})).find("out of range"), std::string::npos);
  // A unary run longer than any gap can be.
  EXPECT_NE(why(hand_rice(ref, 1, 0, std::string(n / 8 + 2, '\xff'), {1})).find("out of range"), std::string::npos);
  // Truncated: the bits end inside the third code.
  EXPECT_NE(why(hand_rice(ref, 3, 0, "\xff", {1, 2, 3})).find("truncated"), std::string::npos);
  // Padding bits set, a byte left over, a parameter above 31.
  EXPECT_NE(why(hand_rice(ref, 2, 0, "\x82", {1, 2})).find("left over"), std::string::npos);
  EXPECT_NE(why(hand_rice(ref, 2, 0, std::string("\x02\x00", 2), {1, 2})).find("left over"), std::string::npos);
  EXPECT_NE(why(hand_rice(ref, 2, 32, "\x02", {1, 2})).find("Rice parameter"), std::string::npos);
}

TEST(CodecDecode, ValidatesIndices) {
  const Weights ref = large_only(make_weights(1));
  const uint64_t n = num_values(ref);
  // Indices 0 and 2: gaps 0 and 1.
  EXPECT_TRUE(decode_update("topk:0.5", hand_made(ref, 1, 2, std::string("\x00\x01", 2), {1, 2}), ref).ok());
  // Past the end: a gap of n.
  const std::string far = varint(n);
  auto r = decode_update("topk:0.5", hand_made(ref, 1, 1, far, {1}), ref);
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.status().message().find("out of range"), std::string::npos) << r.status().message();
  // A varint that never ends, a count above n, leftover index bytes, an unknown coding.
  EXPECT_FALSE(decode_update("topk:0.5", hand_made(ref, 1, 1, std::string(12, '\xff'), {1}), ref).ok());
  EXPECT_FALSE(decode_update("topk:0.5", hand_made(ref, 1, n + 1, "", {}), ref).ok());
  EXPECT_FALSE(decode_update("topk:0.5", hand_made(ref, 1, 1, std::string("\x00\x00", 2), {1}), ref).ok());
  EXPECT_FALSE(decode_update("topk:0.5", hand_made(ref, 9, 1, std::string("\x00", 1), {1}), ref).ok());
  // The small tensors travel whole and their indices are implied: a coded index inside one is
  // refused. conv.bias (16 values) starts at index 1152 of make_weights' layout.
  const Weights full = make_weights(1);
  ASSERT_EQ(full[1].name, "conv.bias");
  const std::string into_bias = varint(1152);
  auto inside = decode_update("topk:0.5", hand_made(full, 1, 1, into_bias, std::vector<float>(1 + 16 + 7, 1.0f)), full);
  ASSERT_FALSE(inside.ok());
  EXPECT_NE(inside.status().message().find("travels whole"), std::string::npos) << inside.status().message();
  // Non-finite values are refused.
  EXPECT_FALSE(decode_update("topk:0.5", hand_made(ref, 1, 1, std::string("\x00", 1), {NAN}), ref).ok());
  // A bitmap with a bit past the last value, or whose bits disagree with the count.
  std::string bitmap((n + 7) / 8, '\0');
  bitmap[0] = 1;
  EXPECT_TRUE(decode_update("topk:0.5", hand_made(ref, 2, 1, bitmap, {1}, false), ref).ok());
  EXPECT_FALSE(decode_update("topk:0.5", hand_made(ref, 2, 2, bitmap, {1, 2}, false), ref).ok());
  if (n % 8 != 0) {
    bitmap.back() = static_cast<char>(0x80);
    EXPECT_FALSE(decode_update("topk:0.5", hand_made(ref, 2, 2, bitmap, {1, 2}, false), ref).ok());
  }
}

TEST(Codec, KernelTopKSendsWholeKernelsOfLargestNormWithOneIndexEach) {
  const Weights ref = zeros_like(make_weights(1));
  const Weights model = make_weights(4);
  ASSERT_EQ(model[0].name, "conv.weight");  // [16, 8, 3, 3]: 128 kernels of 9 values
  for (double fraction : {0.01, 0.1, 0.5}) {
    const std::string codec = "ktopk:" + std::to_string(fraction);
    const std::string bytes = encode_ok(codec, model, ref);
    auto got = decode_update(codec, bytes, ref);
    ASSERT_TRUE(got.ok()) << got.status().to_string();
    // The convolution: each kernel is sent whole (exactly, without a quantiser) or not at all,
    // the kept ones of largest norm.
    const std::vector<float>& x = (*got)[0].data;
    const std::vector<float>& want = model[0].data;
    int64_t kept = 0;
    double min_kept = INFINITY, max_dropped = 0;
    for (int64_t j = 0; j < 128; ++j) {
      double norm = 0;
      int sent = 0;
      for (int64_t i = 0; i < 9; ++i) {
        norm += static_cast<double>(want[j * 9 + i]) * want[j * 9 + i];
        if (x[j * 9 + i] != 0) {
          EXPECT_EQ(x[j * 9 + i], want[j * 9 + i]);
          ++sent;
        }
      }
      ASSERT_TRUE(sent == 0 || sent == 9) << codec << " kernel " << j;
      if (sent == 9) {
        ++kept;
        min_kept = std::min(min_kept, norm);
      } else {
        max_dropped = std::max(max_dropped, norm);
      }
    }
    const int64_t units = std::max<int64_t>(1, std::llround(fraction * 128));
    EXPECT_EQ(kept, units) << codec;
    EXPECT_GE(min_kept, max_dropped) << codec;
    // Small tensors whole; fc.weight (a matrix) value by value, as topk.
    EXPECT_EQ((*got)[1].data, model[1].data);
    EXPECT_EQ((*got)[3].data, model[3].data);
    size_t fc_kept = 0;
    for (float v : (*got)[2].data) fc_kept += v != 0;
    const double k = std::max(1.0, std::round(fraction * 2000));
    EXPECT_GE(fc_kept, 0.5 * k) << codec;
    EXPECT_LE(fc_kept, 1.5 * k + 16) << codec;
    // One coded index per kernel: the count after the coding byte is kernels + fc's values.
    uint64_t coded = 0;
    for (int i = 0; i < 8; ++i) coded |= static_cast<uint64_t>(static_cast<uint8_t>(bytes[25 + i])) << (8 * i);
    EXPECT_EQ(coded, static_cast<uint64_t>(units) + fc_kept) << codec;
  }
  // A unit index past the last unit (128 kernels + 2000 values of fc) is refused.
  const Weights big = large_only(ref);
  const uint64_t units = 128 + 2000;
  const std::string far = varint(units);
  auto r = decode_update("ktopk:0.5", hand_made(big, 1, 1, far, {1}), big);
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.status().message().find("out of range"), std::string::npos) << r.status().message();
  // The last unit is fc's last value: one value; a kernel unit carries nine.
  const std::string last = varint(units - 1);
  auto one = decode_update("ktopk:0.5", hand_made(big, 1, 1, last, {5}), big);
  ASSERT_TRUE(one.ok()) << one.status().to_string();
  EXPECT_EQ((*one)[1].data[1999], 5.0f);
  EXPECT_FALSE(decode_update("ktopk:0.5", hand_made(big, 1, 1, std::string("\x00", 1), {1}), big).ok());  // 9 values owed
  auto kernel = decode_update("ktopk:0.5", hand_made(big, 1, 1, std::string("\x01", 1), {1, 2, 3, 4, 5, 6, 7, 8, 9}), big);
  ASSERT_TRUE(kernel.ok()) << kernel.status().to_string();
  for (int i = 0; i < 9; ++i) EXPECT_EQ((*kernel)[0].data[9 + i], static_cast<float>(i + 1));
  // Secure aggregation cannot carry it (each site picks other kernels).
  EXPECT_FALSE(check_secure_aggregation_codec(spec_of("delta|ef|ktopk:0.1")).ok());
}

TEST(CodecDecode, ValidatesCodesAndScales) {
  const Weights ref = zeros_like(make_weights(1));
  const std::string good = encode_ok("q2", make_weights(2), ref);
  ASSERT_TRUE(decode_update("q2", good, ref).ok());
  const size_t n = num_values(ref);
  size_t num_scales = 0;
  for (const TensorRecord& t : ref) num_scales += (t.data.size() + 255) / 256;
  const size_t scales_at = 24, codes_at = 24 + 4 * num_scales;
  std::string bad = good;
  bad[codes_at] = static_cast<char>(0x03);  // code 3 is not a ternary level
  EXPECT_FALSE(decode_update("q2", bad, ref).ok());
  bad = good;
  const float nan = NAN;
  std::memcpy(&bad[scales_at], &nan, 4);
  EXPECT_FALSE(decode_update("q2", bad, ref).ok());
}

TEST(CodecDecode, RandomCorruptionNeverCrashes) {
  const Weights ref = make_weights(1);
  std::mt19937 rng(5);
  for (const std::string codec : {"delta|topk:0.01|q8|zstd", "delta|topk:0.3|q4", "delta|ktopk:0.1|q4|zstd", "randk:0.2|bf16"}) {
    const std::string bytes = encode_ok(codec, make_weights(2), ref);
    for (int trial = 0; trial < 300; ++trial) {
      std::string b = bytes;
      const int flips = 1 + static_cast<int>(rng() % 4);
      for (int f = 0; f < flips; ++f) b[rng() % b.size()] = static_cast<char>(rng());
      auto got = decode_update(codec, b, ref);
      if (got.ok()) {
        ASSERT_TRUE(check_compatible(ref, *got).ok());
        for (float v : flat(*got)) ASSERT_TRUE(std::isfinite(v));
      }
    }
  }
}

// ---- wire ------------------------------------------------------------------------------------

TEST(CodecWire, EncodedUpdatesTravelInFitAndEvalMessages) {
  wire::Message m;
  m.study = "s";
  wire::FitRes res;
  res.update.codec = "delta|topk:0.01|q8|zstd";
  res.update.bytes = std::string("\x01\x02\x00\x03", 4);
  m.body = res;
  for (Compression c : {Compression::kNone, Compression::kZstd}) {
    m.compression = c;
    auto enc = wire::encode(m);
    ASSERT_TRUE(enc.ok());
    auto dec = wire::decode(enc->bytes.data(), enc->bytes.size(), 1 << 20);
    ASSERT_TRUE(dec.ok()) << dec.status().to_string();
    const auto& got = std::get<wire::FitRes>(dec->message.body);
    EXPECT_EQ(got.update.codec, res.update.codec);
    EXPECT_EQ(got.update.bytes, res.update.bytes);
    EXPECT_TRUE(got.weights.empty());
    // Truncated anywhere: refused.
    if (c == Compression::kNone)
      for (size_t len = 0; len < enc->bytes.size(); ++len)
        ASSERT_FALSE(wire::decode(enc->bytes.data(), len, 1 << 20).ok());
  }
  wire::EvalIns ins;
  ins.update = {"fp16", "xy"};
  ins.weights = {TensorRecord{"w", {1}, {1}}};
  m.body = ins;
  EXPECT_EQ(wire::encode(m).status().code(), StatusCode::kInvalidArgument);  // both at once
}

// ---- a study over TCP ------------------------------------------------------------------------

using fedrad::testing::free_port;

// fit: global + a pseudo-random step; records every model it was given.
class RecordingLearner : public Learner {
 public:
  explicit RecordingLearner(int index) : index_(index) {}
  StatusOr<FitReport> fit(const Weights& global, const RoundSettings& settings) override {
    FitReport r;
    r.weights = global;
    std::mt19937_64 rng(settings.seed * 31 + index_);
    std::normal_distribution<float> step(0.0f, 0.01f);
    for (TensorRecord& t : r.weights)
      for (float& v : t.data) v += step(rng);
    r.num_examples = 10;
    return r;
  }
  StatusOr<EvalReport> evaluate(const Weights& global) override {
    std::lock_guard<std::mutex> lock(mu_);
    seen.push_back(global);
    EvalReport e;
    e.histogram.neg.assign(4, 1);
    e.histogram.pos.assign(4, 1);
    e.num_examples = 8;
    return e;
  }
  uint64_t num_train_examples() const override { return 10; }
  uint64_t num_val_examples() const override { return 8; }
  std::vector<Weights> seen;

 private:
  int index_;
  std::mutex mu_;
};

bool same_bits(const Weights& a, const Weights& b) {
  if (a.size() != b.size()) return false;
  for (size_t i = 0; i < a.size(); ++i) {
    if (a[i].data.size() != b[i].data.size()) return false;
    if (std::memcmp(a[i].data.data(), b[i].data.data(), 4 * a[i].data.size()) != 0) return false;
  }
  return true;
}

TEST(CodecStudy, LossyCodecsBothWaysKeepEverySiteOnTheCoordinatorsCopy) {
  CoordinatorOptions co;
  co.bind_address = "tcp://127.0.0.1:" + std::to_string(free_port());
  co.study = "codec";
  co.rounds = 4;
  co.join_timeout_s = 10;
  co.round_timeout_s = 10;
  co.upstream_codec = "delta|ef|topk:0.05|q8|zstd";
  co.downstream_codec = "delta|topk:0.2|q4|zstd";
  co.initial_weights = make_weights(1, 0.1f);
  std::vector<RoundLog> logs;
  std::vector<Weights> models;
  co.on_round_end = [&](const RoundLog& log, const Weights& w) {
    logs.push_back(log);
    models.push_back(w);
  };
  std::vector<SiteOptions> so(2);
  std::vector<std::unique_ptr<RecordingLearner>> learners;
  for (int i = 0; i < 2; ++i) {
    so[i].coordinator_address = co.bind_address;
    so[i].site_id = std::string("site-") + static_cast<char>('a' + i);
    so[i].study = co.study;
    so[i].idle_timeout_s = 20;
    so[i].upstream_codec = co.upstream_codec;
    so[i].downstream_codec = co.downstream_codec;
    co.expected_sites.push_back(so[i].site_id);
    learners.push_back(std::make_unique<RecordingLearner>(i));
  }
  auto coord = std::async(std::launch::async, [&] { return run_coordinator(co); });
  std::vector<std::future<Status>> sites;
  for (int i = 0; i < 2; ++i) sites.push_back(std::async(std::launch::async, [&, i] { return run_site(*learners[i], so[i]); }));
  auto final_weights = coord.get();
  for (auto& s : sites) EXPECT_TRUE(s.get().ok());
  ASSERT_TRUE(final_weights.ok()) << final_weights.status().to_string();

  // 4 fit rounds + the final evaluation: each site saw the same 5 models, bit for bit, and the
  // last is what the coordinator returned and reported.
  for (auto& l : learners) ASSERT_EQ(l->seen.size(), 5u);
  for (size_t r = 0; r < 5; ++r) EXPECT_TRUE(same_bits(learners[0]->seen[r], learners[1]->seen[r])) << r;
  EXPECT_TRUE(same_bits(learners[0]->seen[4], *final_weights));
  EXPECT_TRUE(same_bits(models.back(), *final_weights));
  EXPECT_TRUE(same_bits(learners[0]->seen[0], co.initial_weights));  // round 1: the full model

  const uint64_t plain = wire::plain_weights_bytes(co.initial_weights);
  ASSERT_EQ(logs.size(), 5u);
  for (size_t r = 0; r < logs.size(); ++r) {
    for (const SiteRoundLog& s : logs[r].sites) {
      EXPECT_TRUE(s.ok);
      EXPECT_GT(s.raw_bytes_down, plain);  // raw: as if the full model went as fp32
      if (r > 0) EXPECT_LT(s.bytes_down * 3, s.raw_bytes_down) << r;
      if (r < 4) {
        EXPECT_GT(s.raw_bytes_up, plain);
        EXPECT_LT(s.bytes_up * 10, s.raw_bytes_up) << r;
      }
    }
  }
}

TEST(CodecStudy, SitesAndCoordinatorRefuseUnknownCodecsAtStart) {
  SiteOptions so;
  so.site_id = "a";
  so.upstream_codec = "delta|lzma";
  RecordingLearner learner(0);
  Status st = run_site(learner, so);
  EXPECT_EQ(st.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(st.message().find("unknown codec stage 'lzma'"), std::string::npos) << st.message();
  CoordinatorOptions co;
  co.expected_sites = {"a"};
  co.initial_weights = make_weights(1);
  co.downstream_codec = "delta|q5";
  auto r = run_coordinator(co);
  EXPECT_EQ(r.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(r.status().message().find("unknown codec stage 'q5'"), std::string::npos) << r.status().message();
}

}  // namespace
}  // namespace fedrad::fed
