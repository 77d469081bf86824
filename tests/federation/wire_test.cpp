#include "federation/wire.h"

#include <gtest/gtest.h>
#include <zstd.h>

#include <cmath>
#include <cstring>
#include <limits>
#include <random>

namespace fedrad::fed::wire {
namespace {

constexpr size_t kMax = 64u << 20;

Weights sample_weights() {
  Weights w(3);
  w[0].name = "conv1.weight";
  w[0].shape = {2, 3};
  w[0].data = {1.5f, -2.25f, 0.0f, -0.0f, std::numeric_limits<float>::denorm_min(), 3e38f};
  w[1].name = "bn.running_mean";
  w[1].shape = {};  // a scalar
  w[1].data = {std::nanf("0x1234")};
  w[2].name = "empty";
  w[2].shape = {0, 4};
  return w;
}

EvalReport sample_eval() {
  EvalReport e;
  e.num_examples = 123456789012ull;
  e.loss = 0.1 + 0.2;
  e.histogram.neg = {1, 0, 7, std::numeric_limits<uint32_t>::max()};
  e.histogram.pos = {0, 3, 0, 42};
  return e;
}

std::vector<Message> sample_messages(Compression c) {
  std::vector<Message> out;
  auto add = [&](uint32_t round, Body body) {
    Message m;
    m.study = "pneumonia-2024";
    m.round = round;
    m.sender = "site-a";
    m.sequence = 1700000000000000000ull + out.size();
    m.compression = c;
    m.body = std::move(body);
    out.push_back(std::move(m));
  };
  add(0, Join{1000, 250, 0x0123456789abcdefull});
  add(0, JoinAck{});
  add(0, Reject{static_cast<uint32_t>(RejectReason::kWrongStudy)});
  RoundSettings s;
  s.round = 7;
  s.local_epochs = 2;
  s.batch_size = 32;
  s.lr = 1e-4 / 3;
  s.seed = 0xfedcba9876543210ull;
  add(7, FitIns{s, sample_weights()});
  FitRes fr;
  fr.status = 0;
  fr.num_examples = 999;
  fr.train_loss = std::numeric_limits<double>::infinity();
  fr.train_seconds = 12.75;
  fr.eval = sample_eval();
  fr.weights = sample_weights();
  add(7, fr);
  add(11, EvalIns{sample_weights()});
  add(11, EvalRes{3, sample_eval()});
  add(0, Shutdown{1});
  add(7, Heartbeat{7});
  Chunk chunk;
  chunk.transfer = 99;
  chunk.index = 1;
  chunk.count = 3;
  chunk.total = 10;
  chunk.bytes = "abcd";
  if (c == Compression::kNone) add(7, chunk);  // a CHUNK always travels uncompressed
  return out;
}

// Bitwise comparison: NaN payloads and -0.0 must survive.
bool same_bits(const Weights& a, const Weights& b) {
  if (a.size() != b.size()) return false;
  for (size_t i = 0; i < a.size(); ++i) {
    if (a[i].name != b[i].name || a[i].shape != b[i].shape) return false;
    if (a[i].data.size() != b[i].data.size()) return false;
    if (!a[i].data.empty() &&
        std::memcmp(a[i].data.data(), b[i].data.data(), a[i].data.size() * sizeof(float)) != 0)
      return false;
  }
  return true;
}

void expect_same_eval(const EvalReport& a, const EvalReport& b) {
  EXPECT_EQ(a.num_examples, b.num_examples);
  EXPECT_EQ(std::memcmp(&a.loss, &b.loss, sizeof(double)), 0);
  EXPECT_EQ(a.histogram.neg, b.histogram.neg);
  EXPECT_EQ(a.histogram.pos, b.histogram.pos);
}

void expect_same(const Message& a, const Message& b) {
  EXPECT_EQ(a.study, b.study);
  EXPECT_EQ(a.round, b.round);
  EXPECT_EQ(a.sender, b.sender);
  EXPECT_EQ(a.sequence, b.sequence);
  EXPECT_EQ(a.compression, b.compression);
  ASSERT_EQ(a.type(), b.type());
  switch (a.type()) {
    case MessageType::kJoin:
      EXPECT_EQ(std::get<Join>(a.body).num_train, std::get<Join>(b.body).num_train);
      EXPECT_EQ(std::get<Join>(a.body).num_val, std::get<Join>(b.body).num_val);
      EXPECT_EQ(std::get<Join>(a.body).session, std::get<Join>(b.body).session);
      break;
    case MessageType::kJoinAck:
      break;
    case MessageType::kReject:
      EXPECT_EQ(std::get<Reject>(a.body).reason, std::get<Reject>(b.body).reason);
      break;
    case MessageType::kFitIns: {
      const auto& x = std::get<FitIns>(a.body).settings;
      const auto& y = std::get<FitIns>(b.body).settings;
      EXPECT_EQ(x.round, y.round);
      EXPECT_EQ(x.local_epochs, y.local_epochs);
      EXPECT_EQ(x.batch_size, y.batch_size);
      EXPECT_EQ(std::memcmp(&x.lr, &y.lr, sizeof(double)), 0);
      EXPECT_EQ(x.seed, y.seed);
      EXPECT_TRUE(same_bits(std::get<FitIns>(a.body).weights, std::get<FitIns>(b.body).weights));
      break;
    }
    case MessageType::kFitRes: {
      const auto& x = std::get<FitRes>(a.body);
      const auto& y = std::get<FitRes>(b.body);
      EXPECT_EQ(x.status, y.status);
      EXPECT_EQ(x.num_examples, y.num_examples);
      EXPECT_EQ(std::memcmp(&x.train_loss, &y.train_loss, sizeof(double)), 0);
      EXPECT_EQ(x.train_seconds, y.train_seconds);
      expect_same_eval(x.eval, y.eval);
      EXPECT_TRUE(same_bits(x.weights, y.weights));
      break;
    }
    case MessageType::kEvalIns:
      EXPECT_TRUE(same_bits(std::get<EvalIns>(a.body).weights, std::get<EvalIns>(b.body).weights));
      break;
    case MessageType::kEvalRes:
      EXPECT_EQ(std::get<EvalRes>(a.body).status, std::get<EvalRes>(b.body).status);
      expect_same_eval(std::get<EvalRes>(a.body).eval, std::get<EvalRes>(b.body).eval);
      break;
    case MessageType::kShutdown:
      EXPECT_EQ(std::get<Shutdown>(a.body).reason, std::get<Shutdown>(b.body).reason);
      break;
    case MessageType::kHeartbeat:
      EXPECT_EQ(std::get<Heartbeat>(a.body).round, std::get<Heartbeat>(b.body).round);
      break;
    case MessageType::kChunk: {
      const auto& x = std::get<Chunk>(a.body);
      const auto& y = std::get<Chunk>(b.body);
      EXPECT_EQ(x.transfer, y.transfer);
      EXPECT_EQ(x.index, y.index);
      EXPECT_EQ(x.count, y.count);
      EXPECT_EQ(x.total, y.total);
      EXPECT_EQ(x.bytes, y.bytes);
      break;
    }
  }
}

std::string encode_ok(const Message& m) {
  auto enc = encode(m);
  EXPECT_TRUE(enc.ok()) << enc.status().to_string();
  return enc.ok() ? enc->bytes : std::string();
}

class WireRoundTrip : public ::testing::TestWithParam<Compression> {};

TEST_P(WireRoundTrip, EveryMessageTypeRoundTripsBitExactly) {
  const auto messages = sample_messages(GetParam());
  ASSERT_EQ(messages.size(), GetParam() == Compression::kNone ? 10u : 9u);  // CHUNK only uncompressed
  for (const Message& m : messages) {
    SCOPED_TRACE(message_type_name(m.type()));
    auto enc = encode(m, 5);
    ASSERT_TRUE(enc.ok()) << enc.status().to_string();
    auto dec = decode(enc->bytes.data(), enc->bytes.size(), kMax);
    ASSERT_TRUE(dec.ok()) << dec.status().to_string();
    expect_same(m, dec->message);
    EXPECT_EQ(dec->raw_size, enc->raw_size);
    if (GetParam() == Compression::kNone) EXPECT_EQ(enc->raw_size, enc->bytes.size());
    // Re-encoding the decoded message gives the same bytes.
    auto again = encode(dec->message, 5);
    ASSERT_TRUE(again.ok());
    EXPECT_EQ(again->bytes, enc->bytes);
  }
}

INSTANTIATE_TEST_SUITE_P(Compression, WireRoundTrip,
                         ::testing::Values(Compression::kNone, Compression::kZstd));

TEST(Wire, HeaderLayoutIsLittleEndian) {
  Message m;
  m.study = "s";
  m.round = 0x01020304;
  m.sender = "ab";
  m.sequence = 0x1122334455667788ull;
  m.body = Shutdown{0x0a0b0c0d};
  const std::string b = encode_ok(m);
  const std::string expected = std::string("FDRD") + std::string("\x03\x00", 2) + std::string("\x08\x00", 2) +
                               std::string("\x01\x00\x00\x00s", 5) + std::string("\x04\x03\x02\x01", 4) +
                               std::string(
                                   "\x02\x00\x00\x00"
                                   "ab",
                                   6) +
                               std::string("\x88\x77\x66\x55\x44\x33\x22\x11", 8) + std::string("\x00", 1) +
                               std::string("\x0d\x0c\x0b\x0a", 4);
  EXPECT_EQ(b, expected);
}

TEST(Wire, ZstdShrinksRepetitiveWeights) {
  Message m;
  TensorRecord t{"w", {1000}, std::vector<float>(1000, 0.5f)};
  m.body = EvalIns{{t}};
  m.compression = Compression::kZstd;
  auto enc = encode(m);
  ASSERT_TRUE(enc.ok());
  EXPECT_LT(enc->bytes.size(), enc->raw_size / 10);
}

TEST(Wire, RejectsWrongMagic) {
  std::string b = encode_ok(sample_messages(Compression::kNone)[0]);
  b[0] = 'X';
  auto dec = decode(b.data(), b.size(), kMax);
  ASSERT_FALSE(dec.ok());
  EXPECT_EQ(dec.status().code(), StatusCode::kCorrupt);
  EXPECT_NE(dec.status().message().find("magic"), std::string::npos);
}

TEST(Wire, RejectsUnsupportedVersion) {
  std::string b = encode_ok(sample_messages(Compression::kNone)[0]);
  b[4] = 1;  // version 1 had no sequence: refused, not misread
  auto dec = decode(b.data(), b.size(), kMax);
  ASSERT_FALSE(dec.ok());
  EXPECT_NE(dec.status().message().find("version 1"), std::string::npos);
}

TEST(Wire, RejectsUnknownTypeAndCompression) {
  std::string b = encode_ok(sample_messages(Compression::kNone)[7]);
  std::string bad_type = b;
  bad_type[6] = 11;
  EXPECT_FALSE(decode(bad_type.data(), bad_type.size(), kMax).ok());
  bad_type[6] = 0;
  EXPECT_FALSE(decode(bad_type.data(), bad_type.size(), kMax).ok());
  // Header: magic 4, version 2 bytes, type 2, study 4+14, round 4, sender 4+6, sequence 8, then
  // compression.
  std::string bad_comp = b;
  const size_t comp_at = 4 + 2 + 2 + 4 + 14 + 4 + 4 + 6 + 8;
  ASSERT_EQ(bad_comp[comp_at], 0);
  bad_comp[comp_at] = 7;
  auto dec = decode(bad_comp.data(), bad_comp.size(), kMax);
  ASSERT_FALSE(dec.ok());
  EXPECT_NE(dec.status().message().find("compression"), std::string::npos);
}

TEST(Wire, EveryTruncationIsAnError) {
  for (Compression c : {Compression::kNone, Compression::kZstd}) {
    for (const Message& m : sample_messages(c)) {
      const std::string b = encode_ok(m);
      for (size_t len = 0; len < b.size(); ++len) {
        // A fresh copy of exactly `len` bytes so that sanitizers catch any read past the end.
        std::vector<char> prefix(b.begin(), b.begin() + static_cast<ptrdiff_t>(len));
        auto dec = decode(prefix.data(), prefix.size(), kMax);
        EXPECT_FALSE(dec.ok()) << message_type_name(m.type()) << " prefix " << len;
        if (!dec.ok()) EXPECT_NE(dec.status().code(), StatusCode::kOk);
      }
    }
  }
}

TEST(Wire, RejectsTrailingBytes) {
  std::string b = encode_ok(sample_messages(Compression::kNone)[0]);
  b.push_back('\0');
  auto dec = decode(b.data(), b.size(), kMax);
  ASSERT_FALSE(dec.ok());
  EXPECT_NE(dec.status().message().find("trailing"), std::string::npos);
}

TEST(Wire, EncodeRefusesTensorWhoseDataDisagreesWithShape) {
  Message m;
  m.body = EvalIns{{TensorRecord{"w", {2, 2}, {1, 2, 3}}}};
  auto enc = encode(m);
  ASSERT_FALSE(enc.ok());
  EXPECT_EQ(enc.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(enc.status().message().find("w"), std::string::npos);
}

// Builds an uncompressed EVAL_INS by hand, for tensors the encoder would refuse.
std::string raw_eval_ins(const std::string& weights_bytes) {
  Message m;
  m.body = EvalIns{};
  std::string b = encode_ok(m);
  b.resize(b.size() - 4);  // drop the empty weights (u32 count 0)
  return b + weights_bytes;
}

std::string le32(uint32_t v) { return std::string(reinterpret_cast<const char*>(&v), 4); }
std::string le64(uint64_t v) { return std::string(reinterpret_cast<const char*>(&v), 8); }

TEST(Wire, RawHelperProducesValidMessages) {
  const std::string ok = raw_eval_ins(le32(1) + le32(1) + "w" + le32(1) + le64(2) + std::string(8, '\0'));
  auto dec = decode(ok.data(), ok.size(), kMax);
  ASSERT_TRUE(dec.ok()) << dec.status().to_string();
  EXPECT_EQ(std::get<EvalIns>(dec->message.body).weights[0].data.size(), 2u);
}

TEST(Wire, RejectsTensorWithLessDataThanItsDims) {
  // dims say 3 values, only 2 present.
  const std::string b = raw_eval_ins(le32(1) + le32(1) + "w" + le32(1) + le64(3) + std::string(8, '\0'));
  EXPECT_FALSE(decode(b.data(), b.size(), kMax).ok());
  // dims say 1 value, 2 present: the extra bytes are trailing garbage.
  const std::string c = raw_eval_ins(le32(1) + le32(1) + "w" + le32(1) + le64(1) + std::string(8, '\0'));
  EXPECT_FALSE(decode(c.data(), c.size(), kMax).ok());
}

TEST(Wire, RejectsNegativeAndOverflowingDims) {
  const std::string neg = raw_eval_ins(le32(1) + le32(1) + "w" + le32(1) + le64(static_cast<uint64_t>(-4)) +
                                       std::string(16, '\0'));
  auto dec = decode(neg.data(), neg.size(), kMax);
  ASSERT_FALSE(dec.ok());
  EXPECT_NE(dec.status().message().find("negative"), std::string::npos);
  const std::string big = raw_eval_ins(le32(1) + le32(1) + "w" + le32(2) + le64(1ull << 40) +
                                       le64(1ull << 40) + std::string(16, '\0'));
  dec = decode(big.data(), big.size(), kMax);
  ASSERT_FALSE(dec.ok());
  EXPECT_NE(dec.status().message().find("overflow"), std::string::npos);
  const std::string huge =
      raw_eval_ins(le32(1) + le32(1) + "w" + le32(1) + le64(1ull << 40) + std::string(16, '\0'));
  EXPECT_FALSE(decode(huge.data(), huge.size(), kMax).ok());
}

TEST(Wire, RejectsHugeDeclaredLengths) {
  // Each of these would allocate gigabytes if a length were trusted before being checked.
  const std::vector<std::string> cases = {
      raw_eval_ins(le32(0xffffffffu)),                            // tensor count
      raw_eval_ins(le32(60000)),                                  // count under the limit
      raw_eval_ins(le32(1) + le32(0xfffffff0u) + "w"),            // name length
      raw_eval_ins(le32(1) + le32(1) + "w" + le32(0xffffffffu)),  // ndim
      raw_eval_ins(le32(1) + le32(1) + "w" + le32(16)),           // ndim within limit, no dims
  };
  for (size_t i = 0; i < cases.size(); ++i) {
    auto dec = decode(cases[i].data(), cases[i].size(), kMax);
    EXPECT_FALSE(dec.ok()) << "case " << i;
    if (!dec.ok()) EXPECT_EQ(dec.status().code(), StatusCode::kCorrupt) << "case " << i;
  }
  // Histograms: 2^20 entries with no counts behind them, more entries than bins, bins out of
  // order or past the end, an empty entry.
  Message m;
  m.body = EvalRes{};
  std::string h = encode_ok(m);
  // The body ends with bins = 0, entries = 0 and the empty segmentation scores (u32 0 | u64 0).
  h.resize(h.size() - 8 - 12);
  const std::string seg = le32(0) + le64(0);
  auto entry = [](uint32_t bin, uint32_t neg, uint32_t pos) { return le32(bin) + le32(neg) + le32(pos); };
  const std::vector<std::pair<std::string, std::string>> bad = {
      {le32(1u << 20) + le32(1u << 20), "histogram"},
      {le32(2) + le32(3) + entry(0, 1, 0) + entry(1, 1, 0) + entry(1, 1, 0), "entries for 2 bins"},
      {le32(4) + le32(2) + entry(2, 1, 0) + entry(1, 1, 0), "bins must increase"},
      {le32(4) + le32(1) + entry(4, 1, 0), "bins must increase"},
      {le32(4) + le32(1) + entry(3, 0, 0), "is empty"},
  };
  for (const auto& [body, why] : bad) {
    const std::string b = h + body + seg;
    auto dec = decode(b.data(), b.size(), kMax);
    ASSERT_FALSE(dec.ok()) << why;
    EXPECT_NE(dec.status().message().find(why), std::string::npos) << dec.status().message();
  }
  const std::string good = h + le32(4) + le32(2) + entry(1, 2, 0) + entry(3, 0, 5) + seg;
  auto dec = decode(good.data(), good.size(), kMax);
  ASSERT_TRUE(dec.ok()) << dec.status().to_string();
  const auto& got = std::get<EvalRes>(dec->message.body).eval.histogram;
  EXPECT_EQ(got.neg, (std::vector<uint64_t>{0, 2, 0, 0}));
  EXPECT_EQ(got.pos, (std::vector<uint64_t>{0, 0, 0, 5}));
  // A study string longer than the limit.
  std::string s = encode_ok(m);
  std::memcpy(&s[8], le32(kMaxStringBytes + 1).data(), 4);
  EXPECT_FALSE(decode(s.data(), s.size(), kMax).ok());
}

TEST(Wire, HistogramsTravelSparseAndCountsAbove32BitsAreRefused) {
  Message m;
  EvalRes res;
  res.eval.histogram.neg.assign(1000, 0);
  res.eval.histogram.pos.assign(1000, 0);
  res.eval.histogram.neg[10] = 3;
  res.eval.histogram.pos[990] = 7;
  m.body = res;
  const std::string b = encode_ok(m);
  EXPECT_LT(b.size(), 200u);  // two entries of 12 bytes, not 2 x 1000 x 8 bytes of zeros
  auto dec = decode(b.data(), b.size(), kMax);
  ASSERT_TRUE(dec.ok()) << dec.status().to_string();
  EXPECT_EQ(std::get<EvalRes>(dec->message.body).eval.histogram.neg, res.eval.histogram.neg);
  EXPECT_EQ(std::get<EvalRes>(dec->message.body).eval.histogram.pos, res.eval.histogram.pos);
  res.eval.histogram.pos[5] = uint64_t{1} << 32;
  m.body = res;
  auto big = encode(m, 3);
  ASSERT_FALSE(big.ok());
  EXPECT_NE(big.status().message().find("bin 5"), std::string::npos) << big.status().message();
}

TEST(Wire, RejectsMessagesOverTheSizeLimit) {
  const Message m = sample_messages(Compression::kNone)[3];
  const std::string b = encode_ok(m);
  EXPECT_FALSE(decode(b.data(), b.size(), b.size() - 1).ok());
  EXPECT_TRUE(decode(b.data(), b.size(), b.size()).ok());
  // Compressed: the frame is small but declares more than the limit once inflated.
  Message big;
  big.compression = Compression::kZstd;
  big.body = EvalIns{{TensorRecord{"w", {100000}, std::vector<float>(100000, 0.f)}}};
  const std::string z = encode_ok(big);
  ASSERT_LT(z.size(), 10000u);
  auto dec = decode(z.data(), z.size(), 100000);
  ASSERT_FALSE(dec.ok());
  EXPECT_NE(dec.status().message().find("zstd"), std::string::npos);
}

TEST(Wire, RejectsCorruptedZstdFrames) {
  Message m = sample_messages(Compression::kZstd)[4];
  const std::string b = encode_ok(m);
  int rejected = 0;
  // Flip body bytes one at a time (the header of these messages is 41 bytes); without a checksum
  // some flips still inflate, but none may crash and many must be refused.
  for (size_t i = 41; i < b.size(); ++i) {
    std::string c = b;
    c[i] = static_cast<char>(c[i] ^ 0x5a);
    auto dec = decode(c.data(), c.size(), kMax);
    rejected += dec.ok() ? 0 : 1;
  }
  EXPECT_GT(rejected, 0);
  // Body that is not zstd at all.
  Message n = sample_messages(Compression::kNone)[0];
  std::string raw = encode_ok(n);
  raw[48] = 1;  // claim zstd: header is magic 4 + 2 + 2 + 18 + 4 + 10 + 8 = 48 bytes, then the flag
  auto dec = decode(raw.data(), raw.size(), kMax);
  ASSERT_FALSE(dec.ok());
  EXPECT_EQ(dec.status().code(), StatusCode::kCorrupt);
}

TEST(Wire, RejectsZstdFrameWithoutDeclaredSize) {
  // A streaming frame does not declare its content size.
  const std::string body = std::string(8, 'a') + std::string(8, 'b');
  ZSTD_CCtx* cctx = ZSTD_createCCtx();
  ZSTD_CCtx_setParameter(cctx, ZSTD_c_contentSizeFlag, 0);
  std::string frame(ZSTD_compressBound(body.size()), '\0');
  const size_t n = ZSTD_compress2(cctx, frame.data(), frame.size(), body.data(), body.size());
  ZSTD_freeCCtx(cctx);
  ASSERT_FALSE(ZSTD_isError(n));
  frame.resize(n);
  Message m;
  m.compression = Compression::kZstd;
  m.body = Join{};
  std::string b = encode_ok(m);
  b.resize(4 + 2 + 2 + 4 + 4 + 4 + 8 + 1);  // header with empty study and sender
  b += frame;
  auto dec = decode(b.data(), b.size(), kMax);
  ASSERT_FALSE(dec.ok());
  EXPECT_NE(dec.status().message().find("size"), std::string::npos);
}

TEST(Wire, RandomGarbageNeverCrashes) {
  std::mt19937 rng(12345);
  const std::string valid = encode_ok(sample_messages(Compression::kNone)[4]);
  const std::string valid_z = encode_ok(sample_messages(Compression::kZstd)[4]);
  int accepted = 0;
  for (int iter = 0; iter < 4000; ++iter) {
    std::string b;
    switch (iter % 3) {
      case 0: {  // pure noise, sometimes with a valid-looking start
        b.resize(rng() % 200);
        for (char& ch : b) ch = static_cast<char>(rng());
        if (iter % 2 && b.size() >= 8) b.replace(0, 8, valid.substr(0, 8));
        break;
      }
      case 1:
      case 2: {  // a valid message with a few random byte changes
        b = iter % 3 == 1 ? valid : valid_z;
        const int flips = 1 + static_cast<int>(rng() % 4);
        for (int f = 0; f < flips; ++f) b[rng() % b.size()] = static_cast<char>(rng());
        if (rng() % 4 == 0) b.resize(rng() % b.size());
        break;
      }
    }
    auto dec = decode(b.data(), b.size(), 1u << 20);
    accepted += dec.ok() ? 1 : 0;
  }
  // Flips inside float data still decode; flips in the structure do not. Both happen.
  EXPECT_GT(accepted, 0);
  EXPECT_LT(accepted, 4000);
}

TEST(Wire, CompressedChunkIsRefused) {
  Message m;
  Chunk c;
  c.count = 1;
  c.total = 1;
  c.bytes = "x";
  m.body = c;
  m.compression = Compression::kZstd;
  EXPECT_FALSE(encode(m).ok());
  m.compression = Compression::kNone;
  std::string b = encode_ok(m);
  const size_t comp_at = 4 + 2 + 2 + 4 + 0 + 4 + 4 + 0 + 8;
  b[comp_at] = 1;
  EXPECT_FALSE(decode(b.data(), b.size(), kMax).ok());
}

// A message cut into chunks comes back whole, in order; every deviation is refused.
TEST(Wire, ChunkerAndAssemblerRoundTrip) {
  Message m = sample_messages(Compression::kNone)[4];  // FIT_RES
  m.sequence = 500;
  const std::string whole = encode_ok(m);
  Chunker chunker(whole, m, /*transfer=*/m.sequence, /*chunk_bytes=*/17);
  ASSERT_EQ(chunker.count(), (whole.size() + 16) / 17);
  std::vector<Chunk> chunks;
  for (uint32_t i = 0; i < chunker.count(); ++i) {
    auto bytes = chunker.chunk(i, 1000 + i);
    ASSERT_TRUE(bytes.ok()) << bytes.status().to_string();
    EXPECT_LE(bytes->size(), 17u + 100u);
    auto dec = decode(bytes->data(), bytes->size(), kMax);
    ASSERT_TRUE(dec.ok()) << dec.status().to_string();
    EXPECT_EQ(dec->message.sequence, 1000u + i);
    EXPECT_EQ(dec->message.sender, m.sender);
    chunks.push_back(std::get<Chunk>(dec->message.body));
  }
  ChunkAssembler ok(kMax);
  std::string out;
  for (size_t i = 0; i < chunks.size(); ++i) {
    auto r = ok.add(chunks[i]);
    ASSERT_TRUE(r.ok()) << r.status().to_string();
    if (i + 1 < chunks.size()) EXPECT_TRUE(r->empty());
    else out = *r;
  }
  EXPECT_EQ(out, whole);
  EXPECT_EQ(ok.pending_bytes(), 0u);

  {  // out of order
    ChunkAssembler a(kMax);
    ASSERT_TRUE(a.add(chunks[0]).ok());
    EXPECT_FALSE(a.add(chunks[2]).ok());
  }
  {  // a repeated chunk (replay)
    ChunkAssembler a(kMax);
    ASSERT_TRUE(a.add(chunks[0]).ok());
    ASSERT_TRUE(a.add(chunks[1]).ok());
    EXPECT_FALSE(a.add(chunks[1]).ok());
  }
  {  // continuing without a first chunk
    ChunkAssembler a(kMax);
    EXPECT_FALSE(a.add(chunks[1]).ok());
  }
  {  // another transfer's chunk in the middle
    ChunkAssembler a(kMax);
    ASSERT_TRUE(a.add(chunks[0]).ok());
    Chunk other = chunks[1];
    other.transfer = 12345;
    EXPECT_FALSE(a.add(other).ok());
  }
  {  // a declared total above the limit is refused before anything is allocated
    ChunkAssembler a(100);
    Chunk big = chunks[0];
    big.total = 1ull << 40;
    auto r = a.add(big);
    ASSERT_FALSE(r.ok());
    EXPECT_NE(r.status().message().find("limit"), std::string::npos);
    EXPECT_EQ(a.pending_bytes(), 0u);
  }
  {  // chunks holding more than declared
    ChunkAssembler a(kMax);
    Chunk first = chunks[0];
    first.total = 20;
    first.count = 2;
    ASSERT_TRUE(a.add(first).ok());
    Chunk second = chunks[1];
    second.total = 20;
    second.count = 2;
    EXPECT_FALSE(a.add(second).ok());
  }
}

}  // namespace
}  // namespace fedrad::fed::wire
