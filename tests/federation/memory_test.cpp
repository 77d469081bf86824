// Bounded memory for large models (issue 6): the paths that keep the coordinator and the sites at a
// few copies of the model, checked for what they compute (bit for bit the same as the copying
// paths) and for what they allocate (model-size allocations counted by a hook, not timed).
#include <gtest/gtest.h>

#include <atomic>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <new>
#include <optional>
#include <random>

#include <future>
#include <thread>

#include "federation/federation.h"
#include "federation/wire.h"
#include "tests/test_data.h"

// ---- allocation hook: while counting, allocations of at least kLarge bytes are added up (per
// thread, so other threads' work does not disturb a test).
namespace {
constexpr size_t kLarge = 256 * 1024;
thread_local bool g_counting = false;
thread_local size_t g_large_bytes = 0;
thread_local size_t g_large_count = 0;

void* counted_alloc(size_t n) {
  if (g_counting && n >= kLarge) {
    g_large_bytes += n;
    ++g_large_count;
  }
  void* p = std::malloc(n == 0 ? 1 : n);
  if (p == nullptr) throw std::bad_alloc();
  return p;
}
}  // namespace

void* operator new(size_t n) { return counted_alloc(n); }
void* operator new[](size_t n) { return counted_alloc(n); }
void* operator new(size_t n, const std::nothrow_t&) noexcept {
  try {
    return counted_alloc(n);
  } catch (...) {
    return nullptr;
  }
}
void* operator new[](size_t n, const std::nothrow_t&) noexcept {
  try {
    return counted_alloc(n);
  } catch (...) {
    return nullptr;
  }
}
void operator delete(void* p) noexcept { std::free(p); }
void operator delete[](void* p) noexcept { std::free(p); }
void operator delete(void* p, size_t) noexcept { std::free(p); }
void operator delete[](void* p, size_t) noexcept { std::free(p); }
void operator delete(void* p, const std::nothrow_t&) noexcept { std::free(p); }
void operator delete[](void* p, const std::nothrow_t&) noexcept { std::free(p); }

namespace fedrad::fed {
namespace {

struct LargeAllocations {
  LargeAllocations() {
    g_large_bytes = 0;
    g_large_count = 0;
    g_counting = true;
  }
  ~LargeAllocations() { g_counting = false; }
  size_t bytes() const { return g_large_bytes; }
  size_t count() const { return g_large_count; }
};

constexpr size_t kMax = size_t{1} << 30;

// A model of `values` floats in a few tensors (the first one large), values in [-1, 1).
Weights big_model(size_t values, uint32_t seed) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> u(-1, 1);
  Weights w(3);
  w[0].name = "conv.weight";
  w[0].shape = {static_cast<int64_t>(values - 40), 1};
  w[1].name = "bn.running_var";
  w[1].shape = {32};
  w[2].name = "fc.bias";
  w[2].shape = {8};
  for (auto& t : w) {
    size_t n = 1;
    for (int64_t d : t.shape) n *= static_cast<size_t>(d);
    t.data.resize(n);
    for (float& v : t.data) v = u(rng);
  }
  w[1].data[0] = -0.0f;
  w[1].data[1] = std::numeric_limits<float>::denorm_min();
  return w;
}

bool same_bits(const Weights& a, const Weights& b) {
  if (a.size() != b.size()) return false;
  for (size_t i = 0; i < a.size(); ++i) {
    if (a[i].name != b[i].name || a[i].shape != b[i].shape || a[i].data.size() != b[i].data.size()) return false;
    if (!a[i].data.empty() && std::memcmp(a[i].data.data(), b[i].data.data(), a[i].data.size() * sizeof(float)) != 0)
      return false;
  }
  return true;
}

wire::Message fit_res(Weights w, Compression c) {
  wire::Message m;
  m.study = "memory";
  m.round = 3;
  m.sender = "site-a";
  m.sequence = 77;
  m.compression = c;
  wire::FitRes r;
  r.num_examples = 12;
  r.train_loss = 0.25;
  r.eval.num_examples = 4;
  r.weights = std::move(w);
  m.body = std::move(r);
  return m;
}

// ---- wire ------------------------------------------------------------------------------------

TEST(Memory, EncodingAModelFromWhereItLiesGivesTheSameBytes) {
  const Weights w = big_model(1000, 1);
  for (Compression c : {Compression::kNone, Compression::kZstd}) {
    wire::Message with = fit_res(w, c), without = fit_res({}, c);
    auto a = wire::encode(with), b = wire::encode(without, 3, &w);
    ASSERT_TRUE(a.ok() && b.ok());
    EXPECT_EQ(a->bytes, b->bytes);
    EXPECT_EQ(a->raw_size, b->raw_size);
    // FIT_INS and EVAL_INS too; a message that carries a model of its own is refused.
    wire::Message ins = without;
    ins.body = wire::FitIns{RoundSettings{}, w, {}};
    wire::Message ins_empty = without;
    ins_empty.body = wire::FitIns{};
    EXPECT_EQ(wire::encode(ins)->bytes, wire::encode(ins_empty, 3, &w)->bytes);
    ins.body = wire::EvalIns{w, {}};
    ins_empty.body = wire::EvalIns{};
    EXPECT_EQ(wire::encode(ins)->bytes, wire::encode(ins_empty, 3, &w)->bytes);
    EXPECT_FALSE(wire::encode(ins, 3, &w).ok());
  }
}

TEST(Memory, EncodingAllocatesTheMessageOnce) {
  const Weights w = big_model(1 << 20, 2);  // 4 MiB
  wire::Message m = fit_res({}, Compression::kNone);
  LargeAllocations large;
  auto enc = wire::encode(m, 3, &w);
  ASSERT_TRUE(enc.ok());
  // One buffer of the message's size: no second copy of the body, no growth.
  EXPECT_EQ(large.count(), 1u);
  EXPECT_LE(large.bytes(), enc->bytes.size() + 64 * 1024);
}

TEST(Memory, FitResDecodedAsViewsEqualsTheCopyAndCopiesNothing) {
  const Weights w = big_model(1 << 18, 3);
  for (Compression c : {Compression::kNone, Compression::kZstd}) {
    auto enc = wire::encode(fit_res(w, c));
    ASSERT_TRUE(enc.ok());
    auto copied = wire::decode(enc->bytes.data(), enc->bytes.size(), kMax);
    ASSERT_TRUE(copied.ok());
    auto buffer = std::make_shared<const std::string>(enc->bytes);
    std::optional<StatusOr<wire::Decoded>> viewed;
    {
      LargeAllocations large;
      viewed = wire::decode(buffer->data(), buffer->size(), kMax, buffer);
      // Uncompressed: the weights are not copied at all. Compressed: one decompressed body.
      if (c == Compression::kNone) EXPECT_EQ(large.count(), 0u);
      else EXPECT_EQ(large.count(), 1u);
    }
    ASSERT_TRUE(viewed->ok()) << viewed->status().to_string();
    const auto& a = std::get<wire::FitRes>(copied->message.body);
    const auto& b = std::get<wire::FitRes>((*viewed)->message.body);
    EXPECT_TRUE(b.weights.empty());
    ASSERT_EQ(b.view.size(), w.size());
    EXPECT_TRUE(same_bits(to_weights(b.view), a.weights));
    EXPECT_TRUE(same_bits(a.weights, w));
    EXPECT_EQ(b.num_examples, 12u);
    EXPECT_EQ((*viewed)->raw_size, copied->raw_size);
    if (c == Compression::kNone) {
      EXPECT_EQ(b.view_backing, buffer);  // the views point into the received bytes
      const char* p = static_cast<const char*>(b.view[0].data);
      EXPECT_TRUE(p >= buffer->data() && p < buffer->data() + buffer->size());
    } else {
      EXPECT_NE(b.view_backing, nullptr);  // into the decompressed body, which they keep
      EXPECT_NE(b.view_backing, buffer);
    }
    // Views encode exactly like the weights they stand for.
    wire::Message again = (*viewed)->message;
    EXPECT_EQ(wire::encode(again)->bytes, enc->bytes);
    // Without a keep-alive: the copying decode.
    EXPECT_TRUE(std::get<wire::FitRes>(copied->message.body).view.empty());
  }
}

TEST(Memory, FramesShareOneBufferAndReassembleToTheMessage) {
  const Weights w = big_model(5000, 4);
  wire::Message m = fit_res({}, Compression::kNone);
  m.sequence = 1000;
  auto enc = wire::encode(m, 3, &w);
  ASSERT_TRUE(enc.ok());
  const std::string whole = enc->bytes;
  uint64_t sequence = 1000;
  auto framed = wire::frame(enc->bytes, m, /*chunk_bytes=*/1024, &sequence);
  ASSERT_TRUE(framed.ok());
  EXPECT_EQ(framed->message_bytes, whole.size());
  ASSERT_EQ(framed->frames.size(), (whole.size() + 1023) / 1024);
  EXPECT_EQ(sequence, 1000 + framed->frames.size());
  wire::ChunkAssembler assembler(kMax);
  size_t next_offset = 0;
  std::string out;
  for (size_t k = 0; k < framed->frames.size(); ++k) {
    const auto [offset, size] = framed->frames[k];
    EXPECT_EQ(offset, next_offset);  // back to back in the one buffer
    next_offset = offset + size;
    auto d = wire::decode(framed->bytes.data() + offset, size, kMax);
    ASSERT_TRUE(d.ok()) << d.status().to_string();
    EXPECT_EQ(d->message.sequence, 1001 + k);
    auto r = assembler.add(std::get<wire::Chunk>(std::move(d->message.body)));
    ASSERT_TRUE(r.ok());
    if (!r->empty()) out = *r;
  }
  EXPECT_EQ(next_offset, framed->bytes.size());
  EXPECT_EQ(out, whole);
  // A message that fits in one chunk is its own single frame, sequence unchanged.
  uint64_t s2 = 5;
  auto single = wire::frame(whole, m, whole.size(), &s2);
  ASSERT_TRUE(single.ok());
  EXPECT_EQ(single->frames.size(), 1u);
  EXPECT_EQ(single->bytes, whole);
  EXPECT_EQ(s2, 5u);
}

TEST(Memory, RestampChangesOnlyTheSequence) {
  wire::Message m = fit_res(big_model(100, 5), Compression::kZstd);
  auto enc = wire::encode(m);
  ASSERT_TRUE(enc.ok());
  std::string bytes = enc->bytes;
  ASSERT_TRUE(wire::restamp_sequence(bytes.data(), bytes.size(), 0x1122334455667788ull).ok());
  m.sequence = 0x1122334455667788ull;
  EXPECT_EQ(bytes, wire::encode(m)->bytes);
  std::string junk = "not a message at all";
  EXPECT_FALSE(wire::restamp_sequence(junk.data(), junk.size(), 1).ok());
  EXPECT_FALSE(wire::restamp_sequence(bytes.data(), 12, 1).ok());
}

// ---- strategies ------------------------------------------------------------------------------

SiteResult site_result(const std::string& id, Weights w, uint64_t n) {
  SiteResult r;
  r.site_id = id;
  r.ok = true;
  r.fit.weights = std::move(w);
  r.fit.num_examples = n;
  return r;
}

// Views into a buffer of its own (unaligned on purpose), as the coordinator gets them.
struct Viewed {
  std::string buffer;
  WeightsView view;
  explicit Viewed(const Weights& w) {
    size_t total = 1;
    for (const auto& t : w) total += t.data.size() * sizeof(float);
    buffer.assign(total, '\0');
    size_t at = 1;  // odd offset: the values are not 4-byte aligned
    for (const auto& t : w) {
      if (!t.data.empty()) std::memcpy(&buffer[at], t.data.data(), t.data.size() * sizeof(float));
      view.push_back(TensorView{t.name, t.shape, buffer.data() + at, t.data.size()});
      at += t.data.size() * sizeof(float);
    }
  }
};

TEST(Memory, AccumulatingViewsGivesBitForBitTheSameModelForEveryStrategy) {
  const Weights global = big_model(3000, 10);
  std::vector<Weights> updates;
  for (uint32_t k = 0; k < 4; ++k) updates.push_back(big_model(3000, 20 + k));
  updates[2][1].data[3] = std::nanf("");  // refused by every strategy, the same way
  std::vector<StrategyConfig> configs;
  for (const char* name : {"fedavg", "fedprox", "fedbn", "fedavgm", "fedadam", "fedyogi", "fedadagrad", "median",
                           "trimmed_mean"}) {
    StrategyConfig c;
    c.name = name;
    configs.push_back(c);
  }
  StrategyConfig bounded;
  bounded.max_update_norm = 0.5;
  configs.push_back(bounded);
  for (const StrategyConfig& c : configs) {
    auto a = make_strategy(c), b = make_strategy(c);
    ASSERT_TRUE(a.ok() && b.ok());
    for (uint32_t round = 1; round <= 2; ++round) {  // two rounds: server state carries over
      ASSERT_TRUE((*a)->begin_round(round, global).ok());
      ASSERT_TRUE((*b)->begin_round(round, global).ok());
      for (size_t k = 0; k < updates.size(); ++k) {
        Status sa = (*a)->accumulate(site_result("s" + std::to_string(k), updates[k], 10 + 7 * k));
        Viewed v(updates[k]);
        // Once the strategy says it is done with a tensor, its bytes are overwritten with NaN (as
        // if given back): a strategy that read them again would refuse or change the model.
        std::vector<int> done(v.view.size(), 0);
        auto poison = [&](size_t t) {
          ++done[t];
          std::memset(const_cast<void*>(v.view[t].data), 0xff, static_cast<size_t>(v.view[t].size) * sizeof(float));
        };
        Status sb = (*b)->accumulate_view(site_result("s" + std::to_string(k), {}, 10 + 7 * k), v.view, poison);
        EXPECT_EQ(sa.ok(), sb.ok()) << c.name << " update " << k << ": " << sa.to_string() << " / " << sb.to_string();
        EXPECT_EQ(sa.ok(), k != 2) << c.name;
        for (size_t t = 0; t < done.size(); ++t) {  // once at most; always for a taken update
          EXPECT_LE(done[t], 1) << c.name << " tensor " << t;
          if (sb.ok()) EXPECT_EQ(done[t], 1) << c.name << " tensor " << t;
        }
      }
      // A wrong shape and a zero sample count are refused through views as well.
      Weights narrow = big_model(2000, 99);
      Viewed vn(narrow);
      EXPECT_FALSE((*b)->accumulate_view(site_result("narrow", {}, 5), vn.view).ok());
      Viewed v0(updates[0]);
      EXPECT_FALSE((*b)->accumulate_view(site_result("zero", {}, 0), v0.view).ok());
      auto ra = (*a)->finish_round();
      auto rb = (*b)->finish_round();
      ASSERT_TRUE(ra.ok() && rb.ok()) << c.name;
      EXPECT_TRUE(same_bits(*ra, *rb)) << c.name << " round " << round;
    }
  }
}

TEST(Memory, StreamingAggregationAllocatesNothingPerUpdate) {
  const size_t n = 1 << 20;  // 4 MiB of float32
  const Weights global = big_model(n, 30);
  std::vector<Viewed> updates;
  for (uint32_t k = 0; k < 5; ++k) updates.emplace_back(big_model(n, 40 + k));
  auto s = make_strategy("fedavg");
  ASSERT_TRUE(s.ok());
  {
    LargeAllocations large;
    ASSERT_TRUE((*s)->begin_round(1, global).ok());
    EXPECT_EQ(large.count(), 0u) << "the global model was copied";
    // The first update allocates the running sums (double: two models' worth, tensor by tensor), nothing else.
    ASSERT_TRUE((*s)->accumulate_view(site_result("s0", {}, 10), updates[0].view).ok());
    EXPECT_LE(large.bytes(), 2 * n * sizeof(float) + 64 * 1024);
  }
  {
    LargeAllocations large;
    for (size_t k = 1; k < updates.size(); ++k)
      ASSERT_TRUE((*s)->accumulate_view(site_result("s" + std::to_string(k), {}, 10 + k), updates[k].view).ok());
    EXPECT_EQ(large.count(), 0u) << "an update was copied";
  }
  LargeAllocations large;
  auto next = (*s)->finish_round();
  ASSERT_TRUE(next.ok());
  // The new model, once: about one model of float32 whatever the number of updates.
  EXPECT_LE(large.bytes(), n * sizeof(float) + 64 * 1024);
}

// ---- end to end: the in-place paths give the model the copying paths give -------------------

class OffsetLearner : public Learner {
 public:
  explicit OffsetLearner(float offset, uint64_t n) : offset_(offset), n_(n) {}
  StatusOr<FitReport> fit(const Weights& global, const RoundSettings&) override {
    FitReport r;
    r.weights = global;
    for (auto& t : r.weights)
      for (float& v : t.data) v += offset_;
    r.num_examples = n_;
    return r;
  }
  StatusOr<EvalReport> evaluate(const Weights&) override {
    EvalReport e;
    e.num_examples = 1;
    return e;
  }
  uint64_t num_train_examples() const override { return n_; }
  uint64_t num_val_examples() const override { return 1; }

 private:
  float offset_;
  uint64_t n_;
};

// Two rounds, two sites, plain weights both ways: with `chunk_bytes` small every model message
// travels in chunks (updates folded in from their reassembly buffers, instructions framed once for
// both sites); with it large, in one frame each (the copying decode).
StatusOr<Weights> two_site_study(Compression c, size_t chunk_bytes) {
  const std::string address = "tcp://127.0.0.1:" + std::to_string(fedrad::testing::free_port());
  CoordinatorOptions o;
  o.bind_address = address;
  o.study = "memory";
  o.expected_sites = {"a", "b"};
  o.rounds = 2;
  o.join_timeout_s = 30;
  o.round_timeout_s = 60;
  o.compression = c;
  o.chunk_bytes = chunk_bytes;
  o.initial_weights = big_model(20000, 50);
  OffsetLearner la(0.25f, 3), lb(-0.5f, 5);
  std::vector<SiteOptions> so(2);
  for (int k = 0; k < 2; ++k) {
    so[k].coordinator_address = address;
    so[k].site_id = k == 0 ? "a" : "b";
    so[k].study = "memory";
    so[k].idle_timeout_s = 60;
    so[k].compression = c;
    so[k].chunk_bytes = chunk_bytes;
    so[k].heartbeat_s = 0.5;
  }
  auto coordinator = std::async(std::launch::async, [&] { return run_coordinator(std::move(o)); });
  auto a = std::async(std::launch::async, [&] { return run_site(la, so[0]); });
  auto b = std::async(std::launch::async, [&] { return run_site(lb, so[1]); });
  auto result = coordinator.get();
  EXPECT_TRUE(a.get().ok());
  EXPECT_TRUE(b.get().ok());
  return result;
}

TEST(Memory, ChunkedFramedAndInPlaceGiveTheSameModelAsSingleFrames) {
  auto reference = two_site_study(Compression::kNone, size_t{64} << 20);
  ASSERT_TRUE(reference.ok()) << reference.status().to_string();
  for (Compression c : {Compression::kNone, Compression::kZstd}) {
    auto chunked = two_site_study(c, 4096);
    ASSERT_TRUE(chunked.ok()) << chunked.status().to_string();
    EXPECT_TRUE(same_bits(*chunked, *reference)) << "compression " << static_cast<int>(c);
  }
  // And it is FedAvg: each round moves every value by (3 x 0.25 + 5 x -0.5) / 8.
  const Weights initial = big_model(20000, 50);
  const float expected = static_cast<float>(static_cast<double>(static_cast<float>(
                                                static_cast<double>(initial[0].data[7]) + (3 * 0.25 - 5 * 0.5) / 8)) +
                                            (3 * 0.25 - 5 * 0.5) / 8);
  EXPECT_NEAR((*reference)[0].data[7], expected, 1e-6);
}

}  // namespace
}  // namespace fedrad::fed
