#include "federation/wire.h"

#include <zstd.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>

namespace fedrad::fed::wire {
namespace {

#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
constexpr bool kLittleEndianHost = true;
#else
constexpr bool kLittleEndianHost = false;
#endif

// ---- writing -------------------------------------------------------------------------------

class Writer {
 public:
  explicit Writer(std::string* out) : out_(out) {}

  void u8(uint8_t v) { out_->push_back(static_cast<char>(v)); }
  void u16(uint16_t v) { put_le(v); }
  void u32(uint32_t v) { put_le(v); }
  void u64(uint64_t v) { put_le(v); }
  void i64(int64_t v) { put_le(static_cast<uint64_t>(v)); }
  void f64(double v) {
    uint64_t bits;
    std::memcpy(&bits, &v, sizeof bits);
    put_le(bits);
  }
  void bytes(const void* p, size_t n) { out_->append(static_cast<const char*>(p), n); }
  void str(const std::string& s) {
    u32(static_cast<uint32_t>(s.size()));
    bytes(s.data(), s.size());
  }
  void f32_array(const std::vector<float>& v) {
    if constexpr (kLittleEndianHost) {
      bytes(v.data(), v.size() * sizeof(float));
    } else {
      for (float f : v) {
        uint32_t bits;
        std::memcpy(&bits, &f, sizeof bits);
        put_le(bits);
      }
    }
  }

 private:
  template <typename T>
  void put_le(T v) {
    for (size_t i = 0; i < sizeof(T); ++i) out_->push_back(static_cast<char>((v >> (8 * i)) & 0xff));
  }

  std::string* out_;
};

Status check_string(const std::string& s, const char* what) {
  if (s.size() > kMaxStringBytes)
    return invalid_argument(std::string(what) + " is longer than " + std::to_string(kMaxStringBytes) +
                            " bytes");
  return ok_status();
}

// Element count of a shape, or an error when a dim is negative or the product overflows.
StatusOr<uint64_t> shape_elements(const std::vector<int64_t>& shape) {
  uint64_t n = 1;
  for (int64_t d : shape) {
    if (d < 0) return corrupt("negative dimension " + std::to_string(d));
    if (d != 0 && n > std::numeric_limits<uint64_t>::max() / static_cast<uint64_t>(d))
      return corrupt("element count overflows");
    n *= static_cast<uint64_t>(d);
  }
  return n;
}

Status put_payload(Writer& w, const Weights& weights, const EncodedUpdate& update);

// A tensor's name and shape, after checking them against its value count.
Status put_tensor_head(Writer& w, const std::string& name, const std::vector<int64_t>& shape, uint64_t values) {
  FEDRAD_RETURN_IF_ERROR(check_string(name, "tensor name"));
  if (shape.size() > kMaxDims)
    return invalid_argument("tensor " + name + " has more than " + std::to_string(kMaxDims) + " dims");
  auto n = shape_elements(shape);
  if (!n.ok()) return invalid_argument("tensor " + name + ": " + n.status().message());
  if (*n != values)
    return invalid_argument("tensor " + name + " has " + std::to_string(values) + " values for " +
                            std::to_string(*n) + " elements of its shape");
  w.str(name);
  w.u32(static_cast<uint32_t>(shape.size()));
  for (int64_t d : shape) w.i64(d);
  return ok_status();
}

// Views (FitRes::view) are written exactly like the plain weights they stand for.
Status put_view(Writer& w, const WeightsView& view) {
  if (view.size() > kMaxTensors) return invalid_argument("more than " + std::to_string(kMaxTensors) + " tensors");
  w.u32(static_cast<uint32_t>(view.size()));
  for (const TensorView& t : view) {
    FEDRAD_RETURN_IF_ERROR(put_tensor_head(w, t.name, t.shape, t.size));
    w.bytes(t.data, static_cast<size_t>(t.size) * sizeof(float));  // already little-endian
  }
  return ok_status();
}

Status put_weights(Writer& w, const Weights& weights) {
  if (weights.size() > kMaxTensors)
    return invalid_argument("more than " + std::to_string(kMaxTensors) + " tensors");
  w.u32(static_cast<uint32_t>(weights.size()));
  for (const TensorRecord& t : weights) {
    FEDRAD_RETURN_IF_ERROR(put_tensor_head(w, t.name, t.shape, t.data.size()));
    w.f32_array(t.data);
  }
  return ok_status();
}

Status put_payload(Writer& w, const Weights& weights, const EncodedUpdate& update) {
  if (!update.present()) return put_weights(w, weights);
  if (!weights.empty()) return invalid_argument("a message carries both plain weights and an encoded update");
  FEDRAD_RETURN_IF_ERROR(check_string(update.codec, "codec"));
  w.u32(kEncodedUpdateMarker);
  w.str(update.codec);
  w.u64(update.bytes.size());
  w.bytes(update.bytes.data(), update.bytes.size());
  return ok_status();
}

void put_settings(Writer& w, const RoundSettings& s) {
  w.u32(s.round);
  w.u32(s.local_epochs);
  w.u32(s.batch_size);
  w.f64(s.lr);
  w.u64(s.seed);
  w.f64(s.prox_mu);
  w.u8((s.keep_local_norm ? 1 : 0) | (s.secure_aggregation ? 2 : 0));
}

// Segmentation scores: u32 structures | u64 cases | per structure f64 dice_sum | f64 hd95_sum |
// u64 hd95_cases (structures = 0 for classification).
Status put_seg(Writer& w, const SegScoreSums& g) {
  const size_t n = g.dice_sum.size();
  if (g.hd95_sum.size() != n || g.hd95_cases.size() != n)
    return invalid_argument("segmentation scores: per-structure arrays differ in length");
  if (n > kMaxSegStructures)
    return invalid_argument("segmentation scores: more than " + std::to_string(kMaxSegStructures) + " structures");
  w.u32(static_cast<uint32_t>(n));
  w.u64(g.cases);
  for (size_t i = 0; i < n; ++i) {
    w.f64(g.dice_sum[i]);
    w.f64(g.hd95_sum[i]);
    w.u64(g.hd95_cases[i]);
  }
  return ok_status();
}

Status put_eval(Writer& w, const EvalReport& e) {
  const ScoreHistogram& h = e.histogram;
  if (h.neg.size() != h.pos.size())
    return invalid_argument("histogram has " + std::to_string(h.neg.size()) + " negative and " +
                            std::to_string(h.pos.size()) + " positive bins");
  if (h.neg.size() > kMaxHistogramBins)
    return invalid_argument("histogram has more than " + std::to_string(kMaxHistogramBins) + " bins");
  // Sparse: a validation split of a few hundred images fills a few hundred of the 1000 bins.
  uint32_t entries = 0;
  for (size_t i = 0; i < h.neg.size(); ++i) {
    if (h.neg[i] > UINT32_MAX || h.pos[i] > UINT32_MAX)
      return invalid_argument("histogram bin " + std::to_string(i) + " counts more than 2^32 - 1 scores");
    entries += (h.neg[i] | h.pos[i]) != 0;
  }
  w.u64(e.num_examples);
  w.f64(e.loss);
  w.u32(static_cast<uint32_t>(h.neg.size()));
  w.u32(entries);
  for (size_t i = 0; i < h.neg.size(); ++i) {
    if ((h.neg[i] | h.pos[i]) == 0) continue;
    w.u32(static_cast<uint32_t>(i));
    w.u32(static_cast<uint32_t>(h.neg[i]));
    w.u32(static_cast<uint32_t>(h.pos[i]));
  }
  return put_seg(w, e.seg);
}

struct BodyWriter {
  Writer& w;
  const Weights* weights = nullptr;  // encode()'s `weights`: in place of an empty payload

  Status payload(const Weights& own, const EncodedUpdate& update) {
    if (weights == nullptr) return put_payload(w, own, update);
    if (!own.empty() || update.present())
      return invalid_argument("weights given beside a message that carries its own model");
    return put_weights(w, *weights);
  }
  Status operator()(const Join& b) {
    w.u64(b.num_train);
    w.u64(b.num_val);
    w.u64(b.session);
    return ok_status();
  }
  Status operator()(const JoinAck&) { return ok_status(); }
  Status operator()(const Reject& b) {
    w.u32(b.reason);
    return ok_status();
  }
  Status operator()(const FitIns& b) {
    put_settings(w, b.settings);
    return payload(b.weights, b.update);
  }
  Status operator()(const FitRes& b) {
    w.u32(b.status);
    w.u64(b.num_examples);
    w.f64(b.train_loss);
    w.f64(b.train_seconds);
    FEDRAD_RETURN_IF_ERROR(put_eval(w, b.eval));
    if (!b.view.empty()) {
      if (weights != nullptr || !b.weights.empty() || b.update.present())
        return invalid_argument("a FIT_RES with views beside other weights");
      return put_view(w, b.view);
    }
    return payload(b.weights, b.update);
  }
  Status operator()(const EvalIns& b) { return payload(b.weights, b.update); }
  Status operator()(const EvalRes& b) {
    w.u32(b.status);
    return put_eval(w, b.eval);
  }
  Status operator()(const Shutdown& b) {
    w.u32(b.reason);
    return ok_status();
  }
  Status operator()(const Heartbeat& b) {
    w.u32(b.round);
    return ok_status();
  }
  Status operator()(const Chunk& b) {
    if (b.count == 0 || b.count > kMaxChunks || b.index >= b.count)
      return invalid_argument("chunk " + std::to_string(b.index) + " of " + std::to_string(b.count));
    if (b.bytes.size() > b.total) return invalid_argument("chunk larger than its message");
    w.u64(b.transfer);
    w.u32(b.index);
    w.u32(b.count);
    w.u64(b.total);
    w.u64(b.bytes.size());
    w.bytes(b.bytes.data(), b.bytes.size());
    return ok_status();
  }
  Status operator()(const SecAggKeys& b) {
    w.bytes(b.public_key.data(), b.public_key.size());
    return ok_status();
  }
  Status operator()(const SecAggKeyList& b) {
    if (b.keys.empty() || b.keys.size() > kMaxSecAggParties || b.party >= b.keys.size())
      return invalid_argument("secure aggregation key list of " + std::to_string(b.keys.size()) + " parties for party " +
                              std::to_string(b.party));
    w.u32(b.party);
    w.u32(b.threshold);
    w.u32(b.dim);
    w.f64(b.scale);
    w.f64(b.clip);
    w.u64(b.weight_cap);
    w.u32(static_cast<uint32_t>(b.keys.size()));
    for (const secagg::Key& k : b.keys) w.bytes(k.data(), k.size());
    return ok_status();
  }
  Status put_boxes(const std::vector<SecAggBox>& boxes) {
    if (boxes.size() > kMaxSecAggParties) return invalid_argument("more secure aggregation shares than parties");
    w.u32(static_cast<uint32_t>(boxes.size()));
    for (const SecAggBox& x : boxes) {
      if (x.box.size() != secagg::kShareBoxBytes)
        return invalid_argument("a secure aggregation share box of " + std::to_string(x.box.size()) + " bytes");
      w.u32(x.party);
      w.bytes(x.box.data(), x.box.size());
    }
    return ok_status();
  }
  Status put_flags(const std::vector<uint8_t>& flags) {
    if (flags.empty() || flags.size() > kMaxSecAggParties) return invalid_argument("secure aggregation party flags");
    w.u32(static_cast<uint32_t>(flags.size()));
    for (uint8_t f : flags) w.u8(f ? 1 : 0);
    return ok_status();
  }
  Status operator()(const SecAggShares& b) {
    w.u32(b.party);
    return put_boxes(b.boxes);
  }
  Status operator()(const SecAggRelay& b) {
    w.u32(b.party);
    FEDRAD_RETURN_IF_ERROR(put_flags(b.shared));
    return put_boxes(b.boxes);
  }
  Status operator()(const SecAggMasked& b) {
    w.u32(b.party);
    w.f64(b.train_loss);
    w.f64(b.train_seconds);
    FEDRAD_RETURN_IF_ERROR(put_eval(w, b.eval));
    w.u64(b.values.size());
    for (uint32_t v : b.values) w.u32(v);
    return ok_status();
  }
  Status operator()(const SecAggUnmask& b) {
    w.u32(b.party);
    return put_flags(b.sent_input);
  }
  Status put_shares(const std::vector<SecAggShareOf>& shares) {
    if (shares.size() > kMaxSecAggParties) return invalid_argument("more secure aggregation shares than parties");
    w.u32(static_cast<uint32_t>(shares.size()));
    for (const SecAggShareOf& s : shares) {
      if (s.share.y.size() != secagg::kShareBytes || s.share.x == 0)
        return invalid_argument("a secure aggregation share of " + std::to_string(s.share.y.size()) + " bytes at x " +
                                std::to_string(s.share.x));
      w.u32(s.of);
      w.u8(s.share.x);
      w.bytes(s.share.y.data(), s.share.y.size());
    }
    return ok_status();
  }
  Status operator()(const SecAggUnmaskRes& b) {
    w.u32(b.party);
    FEDRAD_RETURN_IF_ERROR(put_shares(b.self_mask));
    return put_shares(b.secret_key);
  }
};

// ---- reading -------------------------------------------------------------------------------

// A cursor over untrusted bytes. The first failure sticks: later reads return zeros and the
// caller checks status() once per structure, so a decoder cannot walk past a short buffer.
class Reader {
 public:
  Reader(const uint8_t* p, size_t n) : p_(p), left_(n) {}

  const Status& status() const { return status_; }
  bool ok() const { return status_.ok(); }
  size_t left() const { return left_; }
  const uint8_t* position() const { return p_; }

  uint8_t u8() { return get_le<uint8_t>("u8"); }
  uint16_t u16() { return get_le<uint16_t>("u16"); }
  uint32_t u32() { return get_le<uint32_t>("u32"); }
  uint64_t u64() { return get_le<uint64_t>("u64"); }
  int64_t i64() { return static_cast<int64_t>(get_le<uint64_t>("i64")); }
  double f64() {
    const uint64_t bits = u64();
    double v;
    std::memcpy(&v, &bits, sizeof v);
    return v;
  }

  std::string str(const char* what) {
    const uint32_t n = u32();
    if (!ok()) return {};
    if (n > kMaxStringBytes) {
      fail(std::string(what) + " length " + std::to_string(n) + " exceeds " +
           std::to_string(kMaxStringBytes));
      return {};
    }
    if (!take(n, what)) return {};
    return std::string(reinterpret_cast<const char*>(p_ - n), n);
  }

  // Checks that `count` items of `item_bytes` each are still there before anyone allocates them.
  bool fits(uint64_t count, size_t item_bytes, const char* what) {
    if (!ok()) return false;
    if (item_bytes != 0 && count > left_ / item_bytes) {
      fail(std::string(what) + ": " + std::to_string(count) + " items declared, only " +
           std::to_string(left_) + " bytes left");
      return false;
    }
    return true;
  }

  void f32_array(uint64_t count, std::vector<float>* out) {
    if (!fits(count, sizeof(float), "tensor data")) return;
    out->resize(count);
    if constexpr (kLittleEndianHost) {
      if (count != 0) std::memcpy(out->data(), p_, count * sizeof(float));
      take(count * sizeof(float), "tensor data");
    } else {
      for (uint64_t i = 0; i < count; ++i) {
        const uint32_t bits = u32();
        std::memcpy(&(*out)[i], &bits, sizeof bits);
      }
    }
  }

  void fail(std::string reason) {
    if (ok()) status_ = corrupt(std::move(reason));
    left_ = 0;
  }

  bool skip(uint64_t n, const char* what) { return fits(n, 1, what) && take(static_cast<size_t>(n), what); }

  std::string blob(uint64_t n, const char* what) {
    if (!fits(n, 1, what)) return {};
    if (!take(static_cast<size_t>(n), what)) return {};
    return std::string(reinterpret_cast<const char*>(p_ - n), static_cast<size_t>(n));
  }

 private:
  bool take(size_t n, const char* what) {
    if (!ok()) return false;
    if (n > left_) {
      fail(std::string("truncated ") + what + ": need " + std::to_string(n) + " bytes, " +
           std::to_string(left_) + " left");
      return false;
    }
    p_ += n;
    left_ -= n;
    return true;
  }

  template <typename T>
  T get_le(const char* what) {
    const uint8_t* start = p_;
    if (!take(sizeof(T), what)) return 0;
    uint64_t v = 0;
    for (size_t i = 0; i < sizeof(T); ++i) v |= static_cast<uint64_t>(start[i]) << (8 * i);
    return static_cast<T>(v);
  }

  const uint8_t* p_;
  size_t left_;
  Status status_;
};

// With `view`, plain weights are not copied: each tensor's values are referred to where they lie.
// A tensor's name and shape and its element count; false (with the reader failed) when they are
// malformed or out of bounds.
bool read_tensor_head(Reader& r, std::string* name, std::vector<int64_t>* shape, uint64_t* n) {
  *name = r.str("tensor name");
  const uint32_t ndim = r.u32();
  if (!r.ok()) return false;
  if (ndim > kMaxDims) {
    r.fail("tensor " + *name + " has " + std::to_string(ndim) + " dims, more than " + std::to_string(kMaxDims));
    return false;
  }
  if (!r.fits(ndim, 8, "dims")) return false;
  shape->resize(ndim);
  for (int64_t& d : *shape) d = r.i64();
  if (!r.ok()) return false;
  auto count = shape_elements(*shape);
  if (!count.ok()) {
    r.fail("tensor " + *name + ": " + count.status().message());
    return false;
  }
  *n = *count;
  return true;
}

void read_weights(Reader& r, Weights* out, EncodedUpdate* update = nullptr, WeightsView* view = nullptr) {
  const uint32_t count = r.u32();
  if (!r.ok()) return;
  if (count == kEncodedUpdateMarker && update != nullptr) {
    update->codec = r.str("codec");
    if (!r.ok()) return;
    if (update->codec.empty()) return r.fail("encoded update without a codec");
    const uint64_t n = r.u64();
    update->bytes = r.blob(n, "encoded update");
    return;
  }
  if (count > kMaxTensors)
    return r.fail("tensor count " + std::to_string(count) + " exceeds " + std::to_string(kMaxTensors));
  // Each tensor needs at least a name length and a dim count.
  if (!r.fits(count, 8, "tensors")) return;
  if (view != nullptr) {
    view->resize(count);
    for (TensorView& t : *view) {
      uint64_t n = 0;
      if (!read_tensor_head(r, &t.name, &t.shape, &n)) return;
      if (!r.fits(n, sizeof(float), "tensor data")) return;
      t.data = r.position();
      t.size = n;
      if (!r.skip(n * sizeof(float), "tensor data")) return;
    }
    return;
  }
  out->resize(count);
  for (TensorRecord& t : *out) {
    uint64_t n = 0;
    if (!read_tensor_head(r, &t.name, &t.shape, &n)) return;
    r.f32_array(n, &t.data);
    if (!r.ok()) return;
  }
}

void read_settings(Reader& r, RoundSettings* s) {
  s->round = r.u32();
  s->local_epochs = r.u32();
  s->batch_size = r.u32();
  s->lr = r.f64();
  s->seed = r.u64();
  s->prox_mu = r.f64();
  const uint8_t flags = r.u8();
  if (flags > 3) return r.fail("round settings flags " + std::to_string(flags));
  s->keep_local_norm = (flags & 1) != 0;
  s->secure_aggregation = (flags & 2) != 0;
  if (!std::isfinite(s->prox_mu) || s->prox_mu < 0) return r.fail("prox_mu is not a finite value >= 0");
}

// Each Dice lies in [0, 1] and each HD95 is finite and >= 0, so the sums are bounded by the
// case counts; anything else is refused.
void read_seg(Reader& r, SegScoreSums* g) {
  const uint32_t n = r.u32();
  g->cases = r.u64();
  if (!r.ok()) return;
  if (n > kMaxSegStructures)
    return r.fail("segmentation structures " + std::to_string(n) + " exceed " + std::to_string(kMaxSegStructures));
  if (!r.fits(uint64_t{n} * 3, 8, "segmentation scores")) return;
  g->dice_sum.resize(n);
  g->hd95_sum.resize(n);
  g->hd95_cases.resize(n);
  for (uint32_t i = 0; i < n; ++i) {
    g->dice_sum[i] = r.f64();
    g->hd95_sum[i] = r.f64();
    g->hd95_cases[i] = r.u64();
    if (!r.ok()) return;
    const double cases = static_cast<double>(g->cases);
    if (!std::isfinite(g->dice_sum[i]) || g->dice_sum[i] < 0 || g->dice_sum[i] > cases * (1 + 1e-9))
      return r.fail("segmentation Dice sum " + std::to_string(i) + " is outside [0, cases]");
    if (g->hd95_cases[i] > g->cases || !std::isfinite(g->hd95_sum[i]) || g->hd95_sum[i] < 0)
      return r.fail("segmentation HD95 sum " + std::to_string(i) + " is not a finite value >= 0 over at most cases");
  }
}

void read_eval(Reader& r, EvalReport* e) {
  e->num_examples = r.u64();
  e->loss = r.f64();
  const uint32_t bins = r.u32();
  if (!r.ok()) return;
  if (bins > kMaxHistogramBins)
    return r.fail("histogram bins " + std::to_string(bins) + " exceed " + std::to_string(kMaxHistogramBins));
  const uint32_t entries = r.u32();
  if (!r.ok()) return;
  if (entries > bins)
    return r.fail("histogram has " + std::to_string(entries) + " entries for " + std::to_string(bins) + " bins");
  if (!r.fits(entries, 12, "histogram")) return;
  e->histogram.neg.assign(bins, 0);
  e->histogram.pos.assign(bins, 0);
  int64_t last = -1;
  for (uint32_t j = 0; j < entries; ++j) {
    const uint32_t bin = r.u32(), neg = r.u32(), pos = r.u32();
    if (!r.ok()) return;
    if (static_cast<int64_t>(bin) <= last || bin >= bins)
      return r.fail("histogram entry " + std::to_string(j) + " names bin " + std::to_string(bin) +
                    " (bins must increase and stay below " + std::to_string(bins) + ")");
    if (neg == 0 && pos == 0) return r.fail("histogram entry " + std::to_string(j) + " is empty");
    e->histogram.neg[bin] = neg;
    e->histogram.pos[bin] = pos;
    last = bin;
  }
  read_seg(r, &e->seg);
}

// ---- secure aggregation bodies: sizes and indices checked here, the round's context by the receiver.

void read_key(Reader& r, secagg::Key* k) {
  const std::string b = r.blob(k->size(), "public key");
  if (r.ok()) std::memcpy(k->data(), b.data(), k->size());
}

// u32 count | count x u8 (0/1); the count is a party count.
void read_flags(Reader& r, std::vector<uint8_t>* flags, const char* what) {
  const uint32_t n = r.u32();
  if (!r.ok()) return;
  if (n == 0 || n > kMaxSecAggParties)
    return r.fail(std::string(what) + ": " + std::to_string(n) + " parties (1.." + std::to_string(kMaxSecAggParties) +
                  ")");
  if (!r.fits(n, 1, what)) return;
  flags->resize(n);
  for (uint8_t& f : *flags) {
    f = r.u8();
    if (f > 1) return r.fail(std::string(what) + ": a flag other than 0 or 1");
  }
}

// Boxes addressed to (or from) distinct parties other than `party`, below `parties` when known.
void read_boxes(Reader& r, uint32_t party, uint32_t parties, std::vector<SecAggBox>* boxes) {
  const uint32_t n = r.u32();
  if (!r.ok()) return;
  if (n >= kMaxSecAggParties) return r.fail("secure aggregation: " + std::to_string(n) + " share boxes");
  if (!r.fits(n, 4 + secagg::kShareBoxBytes, "share boxes")) return;
  std::vector<bool> seen(kMaxSecAggParties, false);
  boxes->resize(n);
  for (SecAggBox& b : *boxes) {
    b.party = r.u32();
    const std::string bytes = r.blob(secagg::kShareBoxBytes, "share box");
    if (!r.ok()) return;
    if (b.party >= std::min(parties, kMaxSecAggParties) || b.party == party || seen[b.party])
      return r.fail("secure aggregation: a share box names party " + std::to_string(b.party) +
                    " (own index, out of range or repeated)");
    seen[b.party] = true;
    b.box.assign(bytes.begin(), bytes.end());
  }
}

void read_share_list(Reader& r, std::vector<SecAggShareOf>* shares) {
  const uint32_t n = r.u32();
  if (!r.ok()) return;
  if (n > kMaxSecAggParties) return r.fail("secure aggregation: " + std::to_string(n) + " shares");
  if (!r.fits(n, 5 + secagg::kShareBytes, "shares")) return;
  std::vector<bool> seen(kMaxSecAggParties, false);
  shares->resize(n);
  for (SecAggShareOf& s : *shares) {
    s.of = r.u32();
    s.share.x = r.u8();
    const std::string y = r.blob(secagg::kShareBytes, "share");
    if (!r.ok()) return;
    if (s.of >= kMaxSecAggParties || seen[s.of] || s.share.x == 0)
      return r.fail("secure aggregation: a share of party " + std::to_string(s.of) +
                    " (out of range or repeated, or x = 0)");
    seen[s.of] = true;
    s.share.y.assign(y.begin(), y.end());
  }
}

Body read_secagg_body(Reader& r, MessageType type) {
  switch (type) {
    case MessageType::kSecAggKeys: {
      SecAggKeys b;
      read_key(r, &b.public_key);
      return b;
    }
    case MessageType::kSecAggKeyList: {
      SecAggKeyList b;
      b.party = r.u32();
      b.threshold = r.u32();
      b.dim = r.u32();
      b.scale = r.f64();
      b.clip = r.f64();
      b.weight_cap = r.u64();
      const uint32_t n = r.u32();
      if (!r.ok()) return b;
      if (n < 2 || n > kMaxSecAggParties || b.party >= n || b.threshold < 2 || b.threshold > n)
        r.fail("secure aggregation key list: party " + std::to_string(b.party) + " of " + std::to_string(n) +
               ", threshold " + std::to_string(b.threshold));
      else if (!(std::isfinite(b.scale) && b.scale >= 1) || !(std::isfinite(b.clip) && b.clip > 0) || b.dim < 2 ||
               b.weight_cap == 0)
        r.fail("secure aggregation key list: scale, clip, dim or weight cap out of range");
      else if (r.fits(n, 32, "public keys")) {
        b.keys.resize(n);
        for (secagg::Key& k : b.keys) read_key(r, &k);
      }
      return b;
    }
    case MessageType::kSecAggShares: {
      SecAggShares b;
      b.party = r.u32();
      if (r.ok() && b.party >= kMaxSecAggParties) r.fail("secure aggregation: party index out of range");
      read_boxes(r, b.party, kMaxSecAggParties, &b.boxes);
      return b;
    }
    case MessageType::kSecAggRelay: {
      SecAggRelay b;
      b.party = r.u32();
      read_flags(r, &b.shared, "shared flags");
      if (!r.ok()) return b;
      const uint32_t n = static_cast<uint32_t>(b.shared.size());
      if (b.party >= n || !b.shared[b.party]) {
        r.fail("secure aggregation relay: party " + std::to_string(b.party) + " is not a sharing party");
        return b;
      }
      read_boxes(r, b.party, n, &b.boxes);
      for (const SecAggBox& x : b.boxes)
        if (r.ok() && !b.shared[x.party]) r.fail("secure aggregation relay: a box from a party marked as not sharing");
      return b;
    }
    case MessageType::kSecAggMasked: {
      SecAggMasked b;
      b.party = r.u32();
      b.train_loss = r.f64();
      b.train_seconds = r.f64();
      read_eval(r, &b.eval);
      const uint64_t n = r.u64();
      if (!r.ok()) return b;
      if (b.party >= kMaxSecAggParties) {
        r.fail("secure aggregation: party index out of range");
        return b;
      }
      if (n > std::numeric_limits<uint32_t>::max()) {
        r.fail("secure aggregation: a masked vector of " + std::to_string(n) + " values");
        return b;
      }
      if (!r.fits(n, 4, "masked values")) return b;
      b.values.resize(static_cast<size_t>(n));
      for (uint32_t& v : b.values) v = r.u32();
      return b;
    }
    case MessageType::kSecAggUnmask: {
      SecAggUnmask b;
      b.party = r.u32();
      read_flags(r, &b.sent_input, "input flags");
      if (r.ok() && (b.party >= b.sent_input.size() || !b.sent_input[b.party]))
        r.fail("secure aggregation unmask request: party " + std::to_string(b.party) + " not among those with input");
      return b;
    }
    case MessageType::kSecAggUnmaskRes: {
      SecAggUnmaskRes b;
      b.party = r.u32();
      if (r.ok() && b.party >= kMaxSecAggParties) r.fail("secure aggregation: party index out of range");
      read_share_list(r, &b.self_mask);
      read_share_list(r, &b.secret_key);
      if (!r.ok()) return b;
      for (const SecAggShareOf& a : b.self_mask)
        for (const SecAggShareOf& k : b.secret_key)
          if (a.of == k.of) {
            r.fail("secure aggregation: both shares of party " + std::to_string(a.of));
            return b;
          }
      return b;
    }
    default:
      break;
  }
  r.fail("unknown message type");
  return JoinAck{};
}

Body read_body(Reader& r, MessageType type, bool views = false) {
  switch (type) {
    case MessageType::kJoin: {
      Join b;
      b.num_train = r.u64();
      b.num_val = r.u64();
      b.session = r.u64();
      return b;
    }
    case MessageType::kJoinAck:
      return JoinAck{};
    case MessageType::kReject:
      return Reject{r.u32()};
    case MessageType::kFitIns: {
      FitIns b;
      read_settings(r, &b.settings);
      read_weights(r, &b.weights, &b.update);
      return b;
    }
    case MessageType::kFitRes: {
      FitRes b;
      b.status = r.u32();
      b.num_examples = r.u64();
      b.train_loss = r.f64();
      b.train_seconds = r.f64();
      read_eval(r, &b.eval);
      read_weights(r, &b.weights, &b.update, views ? &b.view : nullptr);
      return b;
    }
    case MessageType::kEvalIns: {
      EvalIns b;
      read_weights(r, &b.weights, &b.update);
      return b;
    }
    case MessageType::kEvalRes: {
      EvalRes b;
      b.status = r.u32();
      read_eval(r, &b.eval);
      return b;
    }
    case MessageType::kShutdown:
      return Shutdown{r.u32()};
    case MessageType::kHeartbeat:
      return Heartbeat{r.u32()};
    case MessageType::kChunk: {
      Chunk b;
      b.transfer = r.u64();
      b.index = r.u32();
      b.count = r.u32();
      b.total = r.u64();
      const uint64_t n = r.u64();
      if (!r.ok()) return b;
      if (b.count == 0 || b.count > kMaxChunks || b.index >= b.count) {
        r.fail("chunk " + std::to_string(b.index) + " of " + std::to_string(b.count));
        return b;
      }
      if (n > b.total) {
        r.fail("chunk of " + std::to_string(n) + " bytes in a message of " + std::to_string(b.total));
        return b;
      }
      b.bytes = r.blob(n, "chunk");
      return b;
    }
    default:
      return read_secagg_body(r, type);
  }
  r.fail("unknown message type");
  return JoinAck{};
}

StatusOr<std::string> decompress(const uint8_t* p, size_t n, size_t max_bytes) {
  const unsigned long long declared = ZSTD_getFrameContentSize(p, n);
  if (declared == ZSTD_CONTENTSIZE_ERROR) return corrupt("body is not a zstd frame");
  if (declared == ZSTD_CONTENTSIZE_UNKNOWN) return corrupt("zstd frame does not declare its size");
  if (declared > max_bytes)
    return corrupt("zstd frame declares " + std::to_string(declared) + " bytes, more than the limit of " +
                   std::to_string(max_bytes));
  std::string out(static_cast<size_t>(declared), '\0');
  const size_t got = ZSTD_decompress(out.data(), out.size(), p, n);
  if (ZSTD_isError(got)) return corrupt(std::string("zstd: ") + ZSTD_getErrorName(got));
  if (got != declared) return corrupt("zstd frame shorter than it declares");
  return out;
}

}  // namespace

const char* message_type_name(MessageType type) {
  switch (type) {
    case MessageType::kJoin:
      return "JOIN";
    case MessageType::kJoinAck:
      return "JOIN_ACK";
    case MessageType::kReject:
      return "REJECT";
    case MessageType::kFitIns:
      return "FIT_INS";
    case MessageType::kFitRes:
      return "FIT_RES";
    case MessageType::kEvalIns:
      return "EVAL_INS";
    case MessageType::kEvalRes:
      return "EVAL_RES";
    case MessageType::kShutdown:
      return "SHUTDOWN";
    case MessageType::kHeartbeat:
      return "HEARTBEAT";
    case MessageType::kChunk:
      return "CHUNK";
    case MessageType::kSecAggKeys:
      return "SECAGG_KEYS";
    case MessageType::kSecAggKeyList:
      return "SECAGG_KEY_LIST";
    case MessageType::kSecAggShares:
      return "SECAGG_SHARES";
    case MessageType::kSecAggRelay:
      return "SECAGG_RELAY";
    case MessageType::kSecAggMasked:
      return "SECAGG_MASKED";
    case MessageType::kSecAggUnmask:
      return "SECAGG_UNMASK";
    case MessageType::kSecAggUnmaskRes:
      return "SECAGG_UNMASK_RES";
  }
  return "UNKNOWN";
}

namespace {

// Room for a message's body, so that it is written into one allocation (a growing buffer would
// hold the old and the new copy of a large model at once while it moves).
uint64_t eval_bytes(const EvalReport& e) { return 64 + 12 * e.histogram.neg.size() + 24 * e.seg.dice_sum.size(); }

uint64_t body_hint(const Message& m, const Weights* weights) {
  auto payload = [&](const Weights& own, const EncodedUpdate& u) -> uint64_t {
    if (u.present()) return encoded_update_bytes(u);
    return plain_weights_bytes(weights != nullptr && own.empty() ? *weights : own);
  };
  uint64_t n = 1024;
  if (auto* b = std::get_if<FitIns>(&m.body)) {
    n += payload(b->weights, b->update);
  } else if (auto* b = std::get_if<FitRes>(&m.body)) {
    n += payload(b->weights, b->update) + eval_bytes(b->eval);
    for (const TensorView& t : b->view) n += 16 + t.name.size() + 8 * t.shape.size() + 4 * t.size;
  } else if (auto* b = std::get_if<EvalIns>(&m.body)) {
    n += payload(b->weights, b->update);
  } else if (auto* b = std::get_if<EvalRes>(&m.body)) {
    n += eval_bytes(b->eval);
  } else if (auto* b = std::get_if<Chunk>(&m.body)) {
    n += b->bytes.size();
  } else if (auto* b = std::get_if<SecAggMasked>(&m.body)) {
    n += 4 * b->values.size() + eval_bytes(b->eval);
  } else {
    n += 64 * 1024;
  }
  return n;
}

}  // namespace

StatusOr<Encoded> encode(const Message& message, int zstd_level, const Weights* weights) {
  FEDRAD_RETURN_IF_ERROR(check_string(message.study, "study"));
  FEDRAD_RETURN_IF_ERROR(check_string(message.sender, "sender"));
  if (message.compression != Compression::kNone && message.compression != Compression::kZstd)
    return invalid_argument("unknown compression");
  if (message.type() == MessageType::kChunk && message.compression != Compression::kNone)
    return invalid_argument("a CHUNK travels uncompressed");
  Encoded enc;
  const uint64_t hint = body_hint(message, weights);
  const size_t head_reserve = 64 + message.study.size() + message.sender.size();
  enc.bytes.reserve(head_reserve + (message.compression == Compression::kNone ? hint : 0));
  Writer head(&enc.bytes);
  head.bytes(kMagic, sizeof kMagic);
  head.u16(kVersion);
  head.u16(static_cast<uint16_t>(message.type()));
  head.str(message.study);
  head.u32(message.round);
  head.str(message.sender);
  head.u64(message.sequence);
  head.u8(static_cast<uint8_t>(message.compression));

  if (message.compression == Compression::kNone) {
    Writer bw(&enc.bytes);  // the body straight after the header: one buffer, no second copy
    FEDRAD_RETURN_IF_ERROR(std::visit(BodyWriter{bw, weights}, message.body));
    enc.raw_size = enc.bytes.size();
    return enc;
  }
  std::string body;
  body.reserve(hint);
  Writer bw(&body);
  FEDRAD_RETURN_IF_ERROR(std::visit(BodyWriter{bw, weights}, message.body));
  enc.raw_size = enc.bytes.size() + body.size();
  const size_t head_size = enc.bytes.size();
  enc.bytes.resize(head_size + ZSTD_compressBound(body.size()));
  const size_t n = ZSTD_compress(enc.bytes.data() + head_size, enc.bytes.size() - head_size, body.data(),
                                 body.size(), zstd_level);
  if (ZSTD_isError(n)) return internal_error(std::string("zstd: ") + ZSTD_getErrorName(n));
  enc.bytes.resize(head_size + n);
  return enc;
}

namespace {

StatusOr<Decoded> decode_impl(const void* data, size_t size, size_t max_message_bytes, bool views,
                              std::shared_ptr<const void> keep_alive) {
  if (size > max_message_bytes)
    return corrupt("message of " + std::to_string(size) + " bytes exceeds the limit of " +
                   std::to_string(max_message_bytes));
  Reader r(static_cast<const uint8_t*>(data), size);
  if (size < sizeof kMagic || std::memcmp(data, kMagic, sizeof kMagic) != 0)
    return corrupt("bad magic (not a fedrad message)");
  r.u32();  // the magic, checked above
  const uint16_t version = r.u16();
  const uint16_t type = r.u16();
  if (!r.ok()) return r.status();
  if (version != kVersion)
    return unsupported("protocol version " + std::to_string(version) + " (this build speaks " +
                       std::to_string(kVersion) + ")");
  if (type < static_cast<uint16_t>(MessageType::kJoin) ||
      type > kLastMessageType)
    return corrupt("unknown message type " + std::to_string(type));

  Decoded out;
  Message& m = out.message;
  m.study = r.str("study");
  m.round = r.u32();
  m.sender = r.str("sender");
  m.sequence = r.u64();
  const uint8_t compression = r.u8();
  if (!r.ok()) return r.status();
  if (compression > static_cast<uint8_t>(Compression::kZstd))
    return corrupt("unknown compression " + std::to_string(compression));
  m.compression = static_cast<Compression>(compression);
  if (type == static_cast<uint16_t>(MessageType::kChunk) && m.compression != Compression::kNone)
    return corrupt("a compressed CHUNK");
  const size_t head_size = size - r.left();

  std::shared_ptr<std::string> inflated;
  Reader body = r;
  if (m.compression == Compression::kZstd) {
    FEDRAD_ASSIGN_OR_RETURN(std::string plain, decompress(r.position(), r.left(), max_message_bytes));
    inflated = std::make_shared<std::string>(std::move(plain));
    body = Reader(reinterpret_cast<const uint8_t*>(inflated->data()), inflated->size());
  }
  const size_t body_size = body.left();
  m.body = read_body(body, static_cast<MessageType>(type), views && kLittleEndianHost);
  if (auto* res = std::get_if<FitRes>(&m.body); res != nullptr && !res->view.empty()) {
    // The views point into the decompressed body when there is one, else into `data`.
    if (inflated) res->view_backing = inflated;
    else res->view_backing = std::move(keep_alive);
  }
  if (!body.ok()) return body.status().with_context(message_type_name(static_cast<MessageType>(type)));
  if (body.left() != 0)
    return corrupt(std::to_string(body.left()) + " trailing bytes after the " +
                   message_type_name(static_cast<MessageType>(type)) + " body");
  out.raw_size = head_size + body_size;
  return out;
}

}  // namespace

StatusOr<Decoded> decode(const void* data, size_t size, size_t max_message_bytes) {
  return decode_impl(data, size, max_message_bytes, false, nullptr);
}

StatusOr<Decoded> decode(const void* data, size_t size, size_t max_message_bytes, std::shared_ptr<const void> keep_alive) {
  const bool views = keep_alive != nullptr;  // before keep_alive is moved from
  return decode_impl(data, size, max_message_bytes, views, std::move(keep_alive));
}

Status restamp_sequence(char* frame, size_t size, uint64_t sequence) {
  // magic | u16 version | u16 type | str study | u32 round | str sender | u64 sequence
  auto u32_at = [&](size_t at) {
    uint32_t v = 0;
    for (size_t i = 0; i < 4; ++i) v |= static_cast<uint32_t>(static_cast<uint8_t>(frame[at + i])) << (8 * i);
    return v;
  };
  if (size < 8 || std::memcmp(frame, kMagic, sizeof kMagic) != 0) return corrupt("not a fedrad message");
  size_t at = 8;
  if (size < at + 4) return corrupt("truncated header");
  at += 4 + static_cast<size_t>(u32_at(at)) + 4;  // study, round
  if (size < at + 4) return corrupt("truncated header");
  at += 4 + static_cast<size_t>(u32_at(at));  // sender
  if (size < at + 8) return corrupt("truncated header");
  for (size_t i = 0; i < 8; ++i) frame[at + i] = static_cast<char>((sequence >> (8 * i)) & 0xff);
  return ok_status();
}

StatusOr<Framed> frame(std::string encoded, const Message& header, size_t chunk_bytes, uint64_t* sequence) {
  Framed f;
  f.message_bytes = encoded.size();
  if (encoded.size() <= chunk_bytes) {
    f.frames.emplace_back(0, encoded.size());
    f.bytes = std::move(encoded);
    return f;
  }
  Chunker chunker(encoded, header, /*transfer=*/header.sequence, chunk_bytes);
  f.frames.reserve(chunker.count());
  for (uint32_t i = 0; i < chunker.count(); ++i) {
    FEDRAD_ASSIGN_OR_RETURN(std::string c, chunker.chunk(i, ++*sequence));
    if (i == 0) {
      // Every chunk's header has the same size (fixed-width fields, the same strings).
      const size_t header_bytes = c.size() - std::min(chunk_bytes, encoded.size());
      f.bytes.reserve(encoded.size() + static_cast<size_t>(chunker.count()) * header_bytes);
    }
    f.frames.emplace_back(f.bytes.size(), c.size());
    f.bytes.append(c);
  }
  return f;
}

uint64_t plain_weights_bytes(const Weights& w) {
  uint64_t n = 4;
  for (const TensorRecord& t : w) n += 4 + t.name.size() + 4 + 8 * t.shape.size() + 4 * t.data.size();
  return n;
}

uint64_t encoded_update_bytes(const EncodedUpdate& u) { return 4 + 4 + u.codec.size() + 8 + u.bytes.size(); }

Chunker::Chunker(const std::string& encoded, const Message& header, uint64_t transfer, size_t chunk_bytes)
    : encoded_(encoded),
      transfer_(transfer),
      chunk_bytes_(std::max<size_t>(chunk_bytes, 1)),
      count_(static_cast<uint32_t>(std::min<uint64_t>((encoded.size() + chunk_bytes_ - 1) / chunk_bytes_,
                                                       std::numeric_limits<uint32_t>::max()))) {
  header_.study = header.study;
  header_.round = header.round;
  header_.sender = header.sender;
  header_.compression = Compression::kNone;
}

StatusOr<std::string> Chunker::chunk(uint32_t index, uint64_t sequence) const {
  if (count_ > kMaxChunks)
    return invalid_argument("a message of " + std::to_string(encoded_.size()) + " bytes needs more than " +
                            std::to_string(kMaxChunks) + " chunks of " + std::to_string(chunk_bytes_) + " bytes");
  if (index >= count_) return invalid_argument("chunk index out of range");
  Message m = header_;
  m.sequence = sequence;
  Chunk c;
  c.transfer = transfer_;
  c.index = index;
  c.count = count_;
  c.total = encoded_.size();
  const size_t start = static_cast<size_t>(index) * chunk_bytes_;
  c.bytes = encoded_.substr(start, std::min(chunk_bytes_, encoded_.size() - start));
  m.body = std::move(c);
  FEDRAD_ASSIGN_OR_RETURN(Encoded enc, encode(m));
  return std::move(enc.bytes);
}

void ChunkAssembler::reset() {
  active_ = false;
  next_ = count_ = 0;
  total_ = 0;
  std::string().swap(buffer_);
}

StatusOr<std::string> ChunkAssembler::add(Chunk chunk) {
  if (chunk.index == 0) {
    reset();
    if (chunk.total == 0) return corrupt("chunked message of 0 bytes");
    if (chunk.total > max_total_)
      return corrupt("chunked message of " + std::to_string(chunk.total) + " bytes exceeds the limit of " +
                     std::to_string(max_total_));
    active_ = true;
    transfer_ = chunk.transfer;
    count_ = chunk.count;
    total_ = chunk.total;
    buffer_.reserve(static_cast<size_t>(total_));  // preallocated once, checked above
  } else if (!active_) {
    return corrupt("chunk " + std::to_string(chunk.index) + " without its first chunk");
  } else if (chunk.transfer != transfer_ || chunk.count != count_ || chunk.total != total_ || chunk.index != next_) {
    reset();
    return corrupt("chunk " + std::to_string(chunk.index) + " of " + std::to_string(chunk.count) +
                   " does not continue the transfer in progress");
  }
  if (chunk.index != next_) {
    reset();
    return corrupt("chunk out of order");
  }
  if (buffer_.size() + chunk.bytes.size() > total_) {
    reset();
    return corrupt("chunks exceed the declared " + std::to_string(total_) + " bytes");
  }
  buffer_.append(chunk.bytes);
  ++next_;
  if (next_ < count_) return std::string();
  if (buffer_.size() != total_) {
    reset();
    return corrupt("chunks hold fewer bytes than the declared total");
  }
  std::string out = std::move(buffer_);
  reset();
  return out;
}

}  // namespace fedrad::fed::wire
