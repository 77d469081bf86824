#include "federation/codec.h"

#include <zstd.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>

#include "cuda/codec.h"

// Encoded update (after the codec text, which travels beside it in the message):
//   u64 layout fingerprint | u64 n (values in the model) | u64 seed | payload
// payload (a zstd frame of it with the zstd stage):
//   dense   values(n)
//   topk    u8 index coding (1 varint, 2 bitmap, 3 Rice) | u64 k | indices | values
//             the k indices chosen in the tensors top-k sparsifies; the small tensors that travel
//             whole (see sent_whole) are implied, and values follow for all of them, in order
//             varint: u64 bytes | LEB128 gaps (index - previous - 1, the first from -1)
//             bitmap: ceil(n / 8) bytes, bit i%8 of byte i/8 set when i is sent
//             Rice:   u8 r (0..31) | u64 bytes | the same gaps as Golomb-Rice codes with
//                     parameter 2^r: gap >> r in unary (that many 1 bits, then a 0), then the r
//                     low bits of the gap (least significant first); bits fill each byte from
//                     bit 0, the last byte padded with zeros
//   ktopk   the same index section, but over units instead of values: a unit is one kernel
//             (the kh x kw values of an output-input channel pair, contiguous in the tensor) of
//             each 4-d convolution weight with kernels of more than one value, and one value of
//             every other tensor top-k sparsifies; units are numbered in tensor order over those
//             tensors only (the small tensors that travel whole have none), and a chosen unit
//             sends all of its values, in order
//   randk   u64 k | values(k)     (the indices are recomputed from the seed)
// values(m):
//   fp32 m x f32 | fp16, bf16 m x u16 |
//   qB   one f32 scale per block | ceil(m B / 8) bytes of B-bit codes, low bits first; blocks never
//        span two tensors (a tensor's values, or its kept values, are cut into blocks of B), so a
//        counter or a variance is never quantised on the scale of another tensor
// All little-endian.

namespace fedrad::fed {
namespace {

static_assert(sizeof(float) == 4, "float32 expected");

constexpr uint8_t kIndexVarint = 1;
constexpr uint8_t kIndexBitmap = 2;
constexpr uint8_t kIndexRice = 3;
constexpr int kMaxRiceParameter = 31;
constexpr uint64_t kRandKSalt = 0x5bd1e9955bd1e995ull;
// Tensors this small (biases, normalisation scales and running statistics, and small weight
// tensors such as a stem convolution or a classifier head) are always sent in full by
// topk/randk: they are a few percent of a model, and running statistics are not additive, so
// error feedback on a sparsified running variance accumulates the same pull every round and then
// overshoots (negative variances, a broken model in evaluation mode). Sparsifying every tensor
// of two or more dimensions instead (the 144-value stem, the 512-value shortcut and the 64-value
// head of the pneumonia model) cost 0.005 AUC on the pneumonia study for 20% fewer bytes.
constexpr size_t kDenseTensorValues = 512;
bool sent_whole(const TensorRecord& t) { return t.data.size() <= kDenseTensorValues; }
// Values per unit of kernel top-k in a tensor it sparsifies: a kh x kw kernel of a 4-d
// convolution weight [out, in, kh, kw] (its values are contiguous), else one value.
int64_t unit_values(const TensorRecord& t) {
  if (t.shape.size() != 4 || t.shape[2] <= 0 || t.shape[3] <= 0) return 1;
  const int64_t u = t.shape[2] * t.shape[3];
  return u > 0 && static_cast<int64_t>(t.data.size()) % u == 0 ? u : 1;
}
// Units of kernel top-k over the tensors it sparsifies.
int64_t num_units(const Weights& layout) {
  int64_t n = 0;
  for (const TensorRecord& t : layout)
    if (!sent_whole(t)) n += static_cast<int64_t>(t.data.size()) / unit_values(t);
  return n;
}

// ---- bytes -------------------------------------------------------------------------------------

void put_u64(std::string* out, uint64_t v) {
  for (int i = 0; i < 8; ++i) out->push_back(static_cast<char>((v >> (8 * i)) & 0xff));
}
void put_u32(std::string* out, uint32_t v) {
  for (int i = 0; i < 4; ++i) out->push_back(static_cast<char>((v >> (8 * i)) & 0xff));
}
void put_f32(std::string* out, float f) {
  uint32_t bits;
  std::memcpy(&bits, &f, 4);
  put_u32(out, bits);
}
void put_u16(std::string* out, uint16_t v) {
  out->push_back(static_cast<char>(v & 0xff));
  out->push_back(static_cast<char>(v >> 8));
}

// A cursor over untrusted bytes: every read is bounds-checked, the first failure sticks.
class Cursor {
 public:
  Cursor(const uint8_t* p, size_t n) : p_(p), left_(n) {}
  bool ok() const { return error_.empty(); }
  const std::string& error() const { return error_; }
  size_t left() const { return left_; }

  bool need(uint64_t n, const char* what) {
    if (!ok()) return false;
    if (n > left_) {
      fail(std::string("truncated ") + what + ": need " + std::to_string(n) + " bytes, " + std::to_string(left_) +
           " left");
      return false;
    }
    return true;
  }
  const uint8_t* take(uint64_t n, const char* what) {
    if (!need(n, what)) return nullptr;
    const uint8_t* at = p_;
    p_ += n;
    left_ -= n;
    return at;
  }
  uint64_t u64(const char* what) {
    const uint8_t* b = take(8, what);
    if (!b) return 0;
    uint64_t v = 0;
    for (int i = 0; i < 8; ++i) v |= static_cast<uint64_t>(b[i]) << (8 * i);
    return v;
  }
  uint8_t u8(const char* what) {
    const uint8_t* b = take(1, what);
    return b ? *b : 0;
  }
  void fail(std::string why) {
    if (ok()) error_ = std::move(why);
    left_ = 0;
  }

 private:
  const uint8_t* p_;
  size_t left_;
  std::string error_;
};

uint32_t get_u32(const uint8_t* b) {
  return static_cast<uint32_t>(b[0]) | static_cast<uint32_t>(b[1]) << 8 | static_cast<uint32_t>(b[2]) << 16 |
         static_cast<uint32_t>(b[3]) << 24;
}
float get_f32(const uint8_t* b) {
  const uint32_t bits = get_u32(b);
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

// ---- parsing the codec text --------------------------------------------------------------------

std::string trim(const std::string& s) {
  const size_t a = s.find_first_not_of(" \t");
  if (a == std::string::npos) return "";
  const size_t b = s.find_last_not_of(" \t");
  return s.substr(a, b - a + 1);
}

bool parse_double(const std::string& s, double* out) {
  if (s.empty()) return false;
  char* end = nullptr;
  *out = std::strtod(s.c_str(), &end);
  return end == s.c_str() + s.size() && std::isfinite(*out);
}

bool parse_int(const std::string& s, int* out) {
  if (s.empty() || s.size() > 9) return false;
  for (char c : s)
    if (c < '0' || c > '9') return false;
  *out = std::stoi(s);
  return true;
}

std::string fmt_double(double v) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.9g", v);
  return buf;
}

int quant_bits(Quantize q) {
  switch (q) {
    case Quantize::kQ8:
      return 8;
    case Quantize::kQ4:
      return 4;
    case Quantize::kQ2:
      return 2;
    default:
      return 0;
  }
}

// ---- values sections ----------------------------------------------------------------------------

// Runs of the value array that belong to one tensor: (start, length).
using Segments = std::vector<std::pair<int64_t, int64_t>>;

Segments segments_of(const Weights& layout, const std::vector<int64_t>* idx) {
  Segments seg;
  int64_t begin = 0, pos = 0;
  for (const TensorRecord& t : layout) {
    const int64_t end = begin + static_cast<int64_t>(t.data.size());
    int64_t len;
    if (idx == nullptr) {
      len = end - begin;
    } else {
      int64_t j = pos;
      while (j < static_cast<int64_t>(idx->size()) && (*idx)[j] < end) ++j;
      len = j - pos;
    }
    if (len > 0) seg.emplace_back(pos, len);
    pos += len;
    begin = end;
  }
  return seg;
}

int64_t num_scales(const Segments& seg, int64_t block) {
  int64_t nb = 0;
  for (const auto& [start, len] : seg) nb += cuda::num_blocks(len, block);
  return nb;
}

cuda::QuantParams segment_params(const CodecSpec& spec, uint64_t seed, int64_t start) {
  cuda::QuantParams qp;
  qp.bits = quant_bits(spec.quantize);
  qp.block = spec.block;
  qp.seed = seed ^ (static_cast<uint64_t>(start) * 0xd6e8feb86659fd93ull);
  return qp;
}

// Appends the coded values and writes what the receiver will decode into `decoded`.
void put_values(const CodecSpec& spec, const std::vector<float>& v, const Segments& seg, uint64_t seed,
                std::string* out, std::vector<float>* decoded) {
  const int64_t m = static_cast<int64_t>(v.size());
  decoded->resize(v.size());
  switch (spec.quantize) {
    case Quantize::kFp32:
      out->reserve(out->size() + 4 * v.size());
      for (float f : v) put_f32(out, f);
      *decoded = v;
      return;
    case Quantize::kFp16:
      for (int64_t i = 0; i < m; ++i) {
        const uint16_t h = float_to_half(v[i]);
        put_u16(out, h);
        (*decoded)[i] = half_to_float(h);
      }
      return;
    case Quantize::kBf16:
      for (int64_t i = 0; i < m; ++i) {
        const uint16_t h = float_to_bf16(v[i]);
        put_u16(out, h);
        (*decoded)[i] = bf16_to_float(h);
      }
      return;
    default:
      break;
  }
  const int bits = quant_bits(spec.quantize);
  std::vector<float> scales(static_cast<size_t>(num_scales(seg, spec.block)));
  std::vector<uint8_t> codes(v.size());
  int64_t sb = 0;
  for (const auto& [start, len] : seg) {
    const cuda::QuantParams qp = segment_params(spec, seed, start);
    cuda::quantize_cpu(len, v.data() + start, codes.data() + start, scales.data() + sb, qp);
    cuda::dequantize_cpu(len, codes.data() + start, scales.data() + sb, decoded->data() + start, qp);
    sb += cuda::num_blocks(len, spec.block);
  }
  for (float s : scales) put_f32(out, s);
  const int per_byte = 8 / bits;
  const size_t packed = (v.size() + per_byte - 1) / per_byte;
  const size_t at = out->size();
  out->resize(at + packed, '\0');
  uint8_t* dst = reinterpret_cast<uint8_t*>(out->data() + at);
  for (int64_t i = 0; i < m; ++i) dst[i / per_byte] |= static_cast<uint8_t>(codes[i] << (bits * (i % per_byte)));
}

// Reads m coded values; every value must be finite and every code in range.
bool read_values(const CodecSpec& spec, Cursor& c, int64_t m, const Segments& seg, std::vector<float>* out) {
  out->resize(static_cast<size_t>(m));
  switch (spec.quantize) {
    case Quantize::kFp32: {
      const uint8_t* b = c.take(static_cast<uint64_t>(m) * 4, "fp32 values");
      if (!b) return false;
      for (int64_t i = 0; i < m; ++i) (*out)[i] = get_f32(b + 4 * i);
      break;
    }
    case Quantize::kFp16:
    case Quantize::kBf16: {
      const uint8_t* b = c.take(static_cast<uint64_t>(m) * 2, "16-bit values");
      if (!b) return false;
      const bool half = spec.quantize == Quantize::kFp16;
      for (int64_t i = 0; i < m; ++i) {
        const uint16_t h = static_cast<uint16_t>(b[2 * i] | (b[2 * i + 1] << 8));
        (*out)[i] = half ? half_to_float(h) : bf16_to_float(h);
      }
      break;
    }
    default: {
      cuda::QuantParams qp;
      qp.bits = quant_bits(spec.quantize);
      qp.block = spec.block;
      const int64_t nb = num_scales(seg, spec.block);
      const uint8_t* sb = c.take(static_cast<uint64_t>(nb) * 4, "block scales");
      if (!sb) return false;
      std::vector<float> scales(static_cast<size_t>(nb));
      for (int64_t b = 0; b < nb; ++b) {
        scales[b] = get_f32(sb + 4 * b);
        if (!std::isfinite(scales[b]) || scales[b] < 0) {
          c.fail("block scale " + std::to_string(b) + " is not a finite non-negative number");
          return false;
        }
      }
      const int per_byte = 8 / qp.bits;
      const uint64_t packed = (static_cast<uint64_t>(m) + per_byte - 1) / per_byte;
      const uint8_t* cb = c.take(packed, "codes");
      if (!cb) return false;
      const int levels = cuda::quant_levels(qp.bits);
      const uint8_t mask = static_cast<uint8_t>((1 << qp.bits) - 1);
      std::vector<uint8_t> codes(static_cast<size_t>(m));
      for (int64_t i = 0; i < m; ++i) {
        const uint8_t code = (cb[i / per_byte] >> (qp.bits * (i % per_byte))) & mask;
        if (code > 2 * levels) {
          c.fail("code " + std::to_string(code) + " of value " + std::to_string(i) + " is out of range");
          return false;
        }
        codes[i] = code;
      }
      // Padding bits after the last code must be zero: one encoding per update.
      if (m % per_byte != 0 && (cb[packed - 1] >> (qp.bits * (m % per_byte))) != 0) {
        c.fail("non-zero padding after the last code");
        return false;
      }
      int64_t first_scale = 0;
      for (const auto& [start, len] : seg) {
        const cuda::QuantParams sp = segment_params(spec, 0, start);
        cuda::dequantize_cpu(len, codes.data() + start, scales.data() + first_scale, out->data() + start, sp);
        first_scale += cuda::num_blocks(len, spec.block);
      }
      return true;
    }
  }
  for (int64_t i = 0; i < m; ++i) {
    if (!std::isfinite((*out)[i])) {
      c.fail("value " + std::to_string(i) + " is not finite");
      return false;
    }
  }
  return true;
}

// ---- index selection ------------------------------------------------------------------------


// Values of |x| at or above a threshold taken from a strided sample (cheap); when the sample
// misjudges badly, the exact k-th largest magnitude instead.
std::vector<int64_t> topk_indices(const std::vector<float>& x, double fraction) {
  const int64_t n = static_cast<int64_t>(x.size());
  std::vector<int64_t> idx;
  if (n == 0) return idx;
  const int64_t k = std::max<int64_t>(1, static_cast<int64_t>(std::llround(fraction * static_cast<double>(n))));
  if (k >= n) {
    idx.resize(static_cast<size_t>(n));
    for (int64_t i = 0; i < n; ++i) idx[i] = i;
    return idx;
  }
  const int64_t want = std::min<int64_t>(n, std::max<int64_t>(16384, static_cast<int64_t>(200.0 / fraction)));
  cuda::SampleParams sp;
  sp.stride = std::max<int64_t>(1, n / want);
  std::vector<float> sample(static_cast<size_t>((n + sp.stride - 1) / sp.stride));
  cuda::sample_abs_cpu(n, x.data(), sample.data(), sp);
  const size_t pos = std::min(sample.size() - 1, static_cast<size_t>((1.0 - fraction) * sample.size()));
  std::nth_element(sample.begin(), sample.begin() + pos, sample.end());
  float t = sample[pos];
  if (!(t > 0)) t = std::numeric_limits<float>::denorm_min();
  std::vector<uint8_t> mask(static_cast<size_t>(n));
  cuda::ThresholdParams tp;
  tp.threshold = t;
  cuda::mask_above_cpu(n, x.data(), mask.data(), tp);
  int64_t count = 0;
  for (uint8_t b : mask) count += b;
  if (count > k + k / 2 + 16 || count < k / 2) {
    std::vector<float> mags(x.size());
    for (int64_t i = 0; i < n; ++i) mags[i] = std::fabs(x[i]);
    std::nth_element(mags.begin(), mags.begin() + (n - k), mags.end());
    tp.threshold = mags[n - k] > 0 ? mags[n - k] : std::numeric_limits<float>::denorm_min();
    cuda::mask_above_cpu(n, x.data(), mask.data(), tp);
  }
  for (int64_t i = 0; i < n; ++i)
    if (mask[i]) idx.push_back(i);
  return idx;
}

// The k = max(1, round(fraction * units)) units of `x` (units of `u` consecutive values) of
// largest L2 norm, in increasing order; ties at the threshold go to the earlier units.
std::vector<int64_t> top_units(const std::vector<float>& x, int64_t u, double fraction) {
  const int64_t units = static_cast<int64_t>(x.size()) / u;
  std::vector<int64_t> chosen;
  if (units == 0) return chosen;
  const int64_t k =
      std::min(units, std::max<int64_t>(1, static_cast<int64_t>(std::llround(fraction * static_cast<double>(units)))));
  std::vector<double> norm(static_cast<size_t>(units), 0.0);
  for (int64_t j = 0; j < units; ++j) {
    double s = 0;
    for (int64_t i = 0; i < u; ++i) s += static_cast<double>(x[j * u + i]) * x[j * u + i];
    norm[j] = s;
  }
  std::vector<int64_t> order(static_cast<size_t>(units));
  for (int64_t j = 0; j < units; ++j) order[j] = j;
  std::nth_element(order.begin(), order.begin() + (k - 1), order.end(), [&](int64_t a, int64_t b) {
    return norm[a] > norm[b] || (norm[a] == norm[b] && a < b);
  });
  chosen.assign(order.begin(), order.begin() + k);
  std::sort(chosen.begin(), chosen.end());
  return chosen;
}

void put_varint(std::string* out, uint64_t v) {
  while (v >= 0x80) {
    out->push_back(static_cast<char>((v & 0x7f) | 0x80));
    v >>= 7;
  }
  out->push_back(static_cast<char>(v));
}

// Golomb-Rice codes of the gaps with the parameter that makes them shortest: about log2(mean gap)
// + 1.5 bits per index, within a few percent of the entropy of the geometric gaps top-k leaves
// (varints take a whole byte or two, and zstd does not recover the difference).
std::string rice_code(const std::vector<uint64_t>& gaps, int* parameter) {
  // The best parameter is near log2(mean gap): try the few around it.
  long double sum = 0;
  for (uint64_t g : gaps) sum += static_cast<long double>(g);
  const double mean = gaps.empty() ? 0.0 : static_cast<double>(sum / gaps.size());
  const int guess = mean < 1 ? 0 : static_cast<int>(std::floor(std::log2(mean)));
  int best = 0;
  uint64_t best_bits = std::numeric_limits<uint64_t>::max();
  for (int r = std::max(0, guess - 2); r <= std::min(kMaxRiceParameter, guess + 2); ++r) {
    uint64_t bits = 0;
    for (uint64_t g : gaps) bits += (g >> r) + 1 + static_cast<uint64_t>(r);
    if (bits < best_bits) best_bits = bits, best = r;
  }
  *parameter = best;
  std::string out(static_cast<size_t>((best_bits + 7) / 8), '\0');
  uint64_t at = 0;
  auto put_bit = [&](bool bit) {
    if (bit) out[at / 8] = static_cast<char>(static_cast<uint8_t>(out[at / 8]) | (1u << (at % 8)));
    ++at;
  };
  for (uint64_t g : gaps) {
    for (uint64_t q = g >> best; q > 0; --q) put_bit(true);
    put_bit(false);
    for (int b = 0; b < best; ++b) put_bit((g >> b) & 1u);
  }
  return out;
}

void put_indices(const std::vector<int64_t>& idx, int64_t n, std::string* out) {
  std::string varint;
  std::vector<uint64_t> gaps;
  gaps.reserve(idx.size());
  int64_t prev = -1;
  for (int64_t i : idx) {
    gaps.push_back(static_cast<uint64_t>(i - prev - 1));
    put_varint(&varint, gaps.back());
    prev = i;
  }
  int r = 0;
  const std::string rice = rice_code(gaps, &r);
  const uint64_t bitmap_bytes = (static_cast<uint64_t>(n) + 7) / 8;
  const uint64_t varint_size = 8 + varint.size(), rice_size = 9 + rice.size();
  if (std::min(varint_size, rice_size) <= bitmap_bytes) {
    const bool use_rice = rice_size < varint_size;
    out->push_back(static_cast<char>(use_rice ? kIndexRice : kIndexVarint));
    put_u64(out, idx.size());
    if (use_rice) out->push_back(static_cast<char>(r));
    put_u64(out, use_rice ? rice.size() : varint.size());
    *out += use_rice ? rice : varint;
  } else {
    out->push_back(static_cast<char>(kIndexBitmap));
    put_u64(out, idx.size());
    const size_t at = out->size();
    out->resize(at + bitmap_bytes, '\0');
    uint8_t* b = reinterpret_cast<uint8_t*>(out->data() + at);
    for (int64_t i : idx) b[i / 8] |= static_cast<uint8_t>(1u << (i % 8));
  }
}

// Indices strictly increasing and below n, exactly k of them, the section consumed exactly.
bool read_indices(Cursor& c, int64_t n, std::vector<int64_t>* idx) {
  const uint8_t kind = c.u8("index coding");
  const uint64_t k = c.u64("index count");
  if (!c.ok()) return false;
  if (k > static_cast<uint64_t>(n)) {
    c.fail("index count " + std::to_string(k) + " exceeds the " + std::to_string(n) + " values of the model");
    return false;
  }
  idx->clear();
  idx->reserve(static_cast<size_t>(k));
  if (kind == kIndexVarint) {
    const uint64_t bytes = c.u64("varint length");
    const uint8_t* b = c.take(bytes, "varint indices");
    if (!b) return false;
    uint64_t pos = 0;
    int64_t prev = -1;
    for (uint64_t j = 0; j < k; ++j) {
      uint64_t gap = 0;
      int shift = 0;
      for (;;) {
        if (pos >= bytes || shift > 56) {
          c.fail("malformed varint index " + std::to_string(j));
          return false;
        }
        const uint8_t byte = b[pos++];
        gap |= static_cast<uint64_t>(byte & 0x7f) << shift;
        shift += 7;
        if (!(byte & 0x80)) break;
      }
      if (gap >= static_cast<uint64_t>(n - prev - 1)) {
        c.fail("index " + std::to_string(j) + " is out of range");
        return false;
      }
      prev += static_cast<int64_t>(gap) + 1;
      idx->push_back(prev);
    }
    if (pos != bytes) {
      c.fail(std::to_string(bytes - pos) + " bytes left over after the varint indices");
      return false;
    }
    return true;
  }
  if (kind == kIndexRice) {
    const uint8_t r = c.u8("Rice parameter");
    const uint64_t bytes = c.u64("Rice length");
    if (!c.ok()) return false;
    if (r > kMaxRiceParameter) {
      c.fail("Rice parameter " + std::to_string(r) + " exceeds " + std::to_string(kMaxRiceParameter));
      return false;
    }
    const uint8_t* b = c.take(bytes, "Rice indices");
    if (!b) return false;
    const uint64_t total_bits = bytes * 8;
    uint64_t at = 0;
    int64_t prev = -1;
    for (uint64_t j = 0; j < k; ++j) {
      // The gap may not reach past the last value, so the quotient is bounded before it is read.
      const uint64_t max_gap = static_cast<uint64_t>(n - prev - 1);
      uint64_t q = 0;
      for (;;) {
        if (at >= total_bits) {
          c.fail("truncated Rice index " + std::to_string(j));
          return false;
        }
        const bool bit = (b[at / 8] >> (at % 8)) & 1u;
        ++at;
        if (!bit) break;
        if (++q > (max_gap >> r)) {
          c.fail("index " + std::to_string(j) + " is out of range");
          return false;
        }
      }
      if (at + r > total_bits) {
        c.fail("truncated Rice index " + std::to_string(j));
        return false;
      }
      uint64_t gap = q << r;
      for (int i = 0; i < r; ++i, ++at) gap |= static_cast<uint64_t>((b[at / 8] >> (at % 8)) & 1u) << i;
      if (gap >= max_gap) {
        c.fail("index " + std::to_string(j) + " is out of range");
        return false;
      }
      prev += static_cast<int64_t>(gap) + 1;
      idx->push_back(prev);
    }
    if ((at + 7) / 8 != bytes || (at % 8 != 0 && (b[bytes - 1] >> (at % 8)) != 0)) {
      c.fail("bytes or bits left over after the Rice indices");
      return false;
    }
    return true;
  }
  if (kind == kIndexBitmap) {
    const uint64_t bytes = (static_cast<uint64_t>(n) + 7) / 8;
    const uint8_t* b = c.take(bytes, "index bitmap");
    if (!b) return false;
    for (int64_t i = 0; i < n; ++i)
      if (b[i / 8] & (1u << (i % 8))) idx->push_back(i);
    if (n % 8 != 0 && (b[bytes - 1] >> (n % 8)) != 0) {
      c.fail("index bitmap has bits set past the last value");
      return false;
    }
    if (idx->size() != k) {
      c.fail("index bitmap has " + std::to_string(idx->size()) + " bits set, the count says " + std::to_string(k));
      return false;
    }
    return true;
  }
  c.fail("unknown index coding " + std::to_string(kind));
  return false;
}

std::vector<float> flatten(const Weights& w) {
  std::vector<float> out;
  out.reserve(num_values(w));
  for (const TensorRecord& t : w) out.insert(out.end(), t.data.begin(), t.data.end());
  return out;
}

}  // namespace

// ---- spec ------------------------------------------------------------------------------------

StatusOr<CodecSpec> CodecSpec::parse(const std::string& text) {
  CodecSpec spec;
  const std::string all = trim(text);
  if (all.empty()) return invalid_argument("empty codec (use 'none' or 'zstd' for lossless updates)");
  if (all == "none") return spec;
  int last_rank = -1;
  std::string last_name;
  size_t start = 0;
  for (;;) {
    const size_t bar = all.find('|', start);
    const std::string stage = trim(all.substr(start, bar == std::string::npos ? std::string::npos : bar - start));
    const size_t colon = stage.find(':');
    const std::string name = stage.substr(0, colon);
    const std::string arg = colon == std::string::npos ? "" : stage.substr(colon + 1);
    const bool has_arg = colon != std::string::npos;
    const std::string where = "codec '" + all + "': stage '" + stage + "'";
    int rank;
    if (name == "delta") {
      rank = 0;
      if (has_arg) return invalid_argument(where + " takes no parameter");
      spec.delta = true;
    } else if (name == "ef") {
      rank = 1;
      spec.error_feedback = true;
      if (has_arg && (!parse_double(arg, &spec.momentum) || spec.momentum < 0 || spec.momentum >= 1))
        return invalid_argument(where + ": momentum must be a number in [0, 1)");
    } else if (name == "topk" || name == "ktopk" || name == "randk") {
      rank = 2;
      spec.sparsify = name == "topk" ? Sparsify::kTopK : name == "ktopk" ? Sparsify::kKernelTopK : Sparsify::kRandK;
      if (!has_arg || !parse_double(arg, &spec.fraction) || !(spec.fraction > 0) || spec.fraction > 1)
        return invalid_argument(where + ": needs the kept fraction in (0, 1], e.g. " + name + ":0.01");
    } else if (name == "fp16" || name == "bf16") {
      rank = 3;
      if (has_arg) return invalid_argument(where + " takes no parameter");
      spec.quantize = name == "fp16" ? Quantize::kFp16 : Quantize::kBf16;
    } else if (name == "q8" || name == "q4" || name == "q2") {
      rank = 3;
      spec.quantize = name == "q8" ? Quantize::kQ8 : name == "q4" ? Quantize::kQ4 : Quantize::kQ2;
      if (has_arg && (!parse_int(arg, &spec.block) || spec.block < 1 || spec.block > (1 << 20)))
        return invalid_argument(where + ": block size must be an integer in 1..1048576");
    } else if (name == "zstd") {
      rank = 4;
      spec.zstd = true;
      if (has_arg && (!parse_int(arg, &spec.zstd_level) || spec.zstd_level < 1 || spec.zstd_level > 19))
        return invalid_argument(where + ": level must be in 1..19");
    } else {
      return invalid_argument("codec '" + all + "': unknown codec stage '" + name +
                              "' (known: delta, ef, topk, ktopk, randk, fp16, bf16, q8, q4, q2, zstd)");
    }
    if (rank <= last_rank)
      return invalid_argument("codec '" + all + "': stage '" + name + "' cannot follow '" + last_name +
                              "' (order: delta | ef | topk/ktopk/randk | fp16/bf16/q8/q4/q2 | zstd, each at most once)");
    last_rank = rank;
    last_name = name;
    if (bar == std::string::npos) break;
    start = bar + 1;
  }
  return spec;
}

std::string CodecSpec::to_string() const {
  std::vector<std::string> parts;
  if (delta) parts.push_back("delta");
  if (error_feedback) parts.push_back(momentum > 0 ? "ef:" + fmt_double(momentum) : "ef");
  if (sparsify != Sparsify::kNone)
    parts.push_back((sparsify == Sparsify::kTopK ? "topk:" : sparsify == Sparsify::kKernelTopK ? "ktopk:" : "randk:") +
                    fmt_double(fraction));
  switch (quantize) {
    case Quantize::kFp32:
      break;
    case Quantize::kFp16:
      parts.push_back("fp16");
      break;
    case Quantize::kBf16:
      parts.push_back("bf16");
      break;
    default: {
      std::string q = "q" + std::to_string(quant_bits(quantize));
      if (block != 256) q += ":" + std::to_string(block);
      parts.push_back(q);
    }
  }
  if (zstd) parts.push_back(zstd_level != 3 ? "zstd:" + std::to_string(zstd_level) : "zstd");
  if (parts.empty()) return "none";
  std::string s = parts[0];
  for (size_t i = 1; i < parts.size(); ++i) s += "|" + parts[i];
  return s;
}

// ---- helpers ---------------------------------------------------------------------------------

uint64_t layout_fingerprint(const Weights& w) {
  uint64_t h = 0xcbf29ce484222325ull;  // FNV-1a
  auto mix = [&](const void* p, size_t n) {
    const uint8_t* b = static_cast<const uint8_t*>(p);
    for (size_t i = 0; i < n; ++i) h = (h ^ b[i]) * 0x100000001b3ull;
  };
  for (const TensorRecord& t : w) {
    const uint64_t len = t.name.size(), nd = t.shape.size();
    mix(&len, 8);
    mix(t.name.data(), t.name.size());
    mix(&nd, 8);
    for (int64_t d : t.shape) mix(&d, 8);
  }
  return h;
}

uint16_t float_to_half(float f) {
  uint32_t x;
  std::memcpy(&x, &f, 4);
  const uint32_t sign = (x >> 16) & 0x8000u;
  uint32_t mant = x & 0x7fffffu;
  const int32_t exp = static_cast<int32_t>((x >> 23) & 0xff);
  if (exp == 255) return static_cast<uint16_t>(sign | 0x7c00u | (mant ? 0x200u | (mant >> 13) : 0u));
  const int32_t e = exp - 127 + 15;
  if (e >= 31) return static_cast<uint16_t>(sign | 0x7c00u);
  if (e <= 0) {
    if (e < -10) return static_cast<uint16_t>(sign);
    mant |= 0x800000u;
    const int shift = 14 - e;
    uint32_t h = mant >> shift;
    const uint32_t rem = mant & ((1u << shift) - 1);
    const uint32_t halfway = 1u << (shift - 1);
    if (rem > halfway || (rem == halfway && (h & 1u))) ++h;
    return static_cast<uint16_t>(sign | h);
  }
  uint32_t h = sign | (static_cast<uint32_t>(e) << 10) | (mant >> 13);
  const uint32_t rem = mant & 0x1fffu;
  if (rem > 0x1000u || (rem == 0x1000u && (h & 1u))) ++h;  // a carry rounds up into the exponent
  return static_cast<uint16_t>(h);
}

float half_to_float(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  const uint32_t exp = (h >> 10) & 0x1fu;
  const uint32_t mant = h & 0x3ffu;
  uint32_t x;
  if (exp == 0) {
    const float v = std::ldexp(static_cast<float>(mant), -24);
    return sign ? -v : v;
  } else if (exp == 31) {
    x = sign | 0x7f800000u | (mant << 13);
  } else {
    x = sign | ((exp - 15 + 127) << 23) | (mant << 13);
  }
  float f;
  std::memcpy(&f, &x, 4);
  return f;
}

uint16_t float_to_bf16(float f) {
  uint32_t x;
  std::memcpy(&x, &f, 4);
  if ((x & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((x >> 16) | 0x40u);  // quiet NaN
  x += 0x7fffu + ((x >> 16) & 1u);
  return static_cast<uint16_t>(x >> 16);
}

float bf16_to_float(uint16_t b) {
  const uint32_t x = static_cast<uint32_t>(b) << 16;
  float f;
  std::memcpy(&f, &x, 4);
  return f;
}

// ---- encode / decode -------------------------------------------------------------------------

StatusOr<std::string> encode_update(const CodecSpec& spec, const Weights& model, const Weights& reference,
                                    uint64_t seed, ErrorFeedback* feedback) {
  FEDRAD_RETURN_IF_ERROR(check_compatible(reference, model));
  if (spec.error_feedback && feedback == nullptr)
    return invalid_argument("codec " + spec.to_string() + " needs an error-feedback state");
  const int64_t n = static_cast<int64_t>(num_values(model));
  std::vector<float> x = flatten(model);
  if (spec.delta) {
    int64_t i = 0;
    for (const TensorRecord& t : reference)
      for (float r : t.data) x[i++] -= r;
  }
  if (spec.error_feedback) accumulate_feedback(spec, &x, feedback);

  std::string payload;
  std::vector<float> decoded;  // the values the receiver will decode (sparse: of idx)
  std::vector<int64_t> idx;
  const bool sparse = spec.sparsify != Sparsify::kNone;
  if (spec.sparsify == Sparsify::kTopK) {
    // Per tensor: magnitudes differ by orders between tensors (BatchNorm running variances move
    // by far more than conv weights), and a global top-k would send statistics and no weights.
    int64_t at = 0;
    for (const TensorRecord& t : reference) {
      const int64_t len = static_cast<int64_t>(t.data.size());
      if (sent_whole(t)) {
        for (int64_t i = 0; i < len; ++i) idx.push_back(at + i);
      } else {
        const std::vector<float> slice(x.begin() + at, x.begin() + at + len);
        for (int64_t i : topk_indices(slice, spec.fraction)) idx.push_back(at + i);
      }
      at += len;
    }
    // The small tensors' indices are implied (the receiver knows which tensors travel whole):
    // only the chosen ones of the sparsified tensors are coded.
    std::vector<int64_t> chosen;
    int64_t start = 0;
    size_t j = 0;
    for (const TensorRecord& t : reference) {
      const int64_t end = start + static_cast<int64_t>(t.data.size());
      for (; j < idx.size() && idx[j] < end; ++j)
        if (!sent_whole(t)) chosen.push_back(idx[j]);
      start = end;
    }
    put_indices(chosen, n, &payload);
  } else if (spec.sparsify == Sparsify::kKernelTopK) {
    // Units (kernels of convolution weights, single values elsewhere) by their L2 norm, per
    // tensor as topk; one index per unit is coded, over the units of the sparsified tensors.
    std::vector<int64_t> units;
    int64_t at = 0, unit_at = 0;
    for (const TensorRecord& t : reference) {
      const int64_t len = static_cast<int64_t>(t.data.size());
      if (sent_whole(t)) {
        for (int64_t i = 0; i < len; ++i) idx.push_back(at + i);
      } else {
        const int64_t u = unit_values(t);
        const std::vector<float> slice(x.begin() + at, x.begin() + at + len);
        const std::vector<int64_t> chosen = u == 1 ? topk_indices(slice, spec.fraction) : top_units(slice, u, spec.fraction);
        for (int64_t j : chosen) {
          units.push_back(unit_at + j);
          for (int64_t i = 0; i < u; ++i) idx.push_back(at + j * u + i);
        }
        unit_at += len / u;
      }
      at += len;
    }
    put_indices(units, unit_at, &payload);  // unit_at: now the number of units, num_units(reference)
  } else if (spec.sparsify == Sparsify::kRandK) {
    idx = randk_indices(reference, spec.fraction, seed);
    put_u64(&payload, idx.size());
  }
  if (sparse) {
    std::vector<float> v(idx.size());
    for (size_t j = 0; j < idx.size(); ++j) v[j] = x[idx[j]];
    put_values(spec, v, segments_of(reference, &idx), seed, &payload, &decoded);
  } else {
    put_values(spec, x, segments_of(reference, nullptr), seed, &payload, &decoded);
  }

  // residual = accumulated - decoded, exactly (one float subtraction per value).
  if (spec.error_feedback) settle_feedback(spec, x, sparse ? &idx : nullptr, decoded, feedback);

  std::string out;
  put_u64(&out, layout_fingerprint(reference));
  put_u64(&out, static_cast<uint64_t>(n));
  put_u64(&out, seed);
  if (!spec.zstd) return out + payload;
  const size_t head = out.size();
  out.resize(head + ZSTD_compressBound(payload.size()));
  const size_t z = ZSTD_compress(out.data() + head, out.size() - head, payload.data(), payload.size(), spec.zstd_level);
  if (ZSTD_isError(z)) return internal_error(std::string("zstd: ") + ZSTD_getErrorName(z));
  out.resize(head + z);
  return out;
}

StatusOr<Weights> decode_update(const std::string& codec, std::string_view bytes, const Weights& reference) {
  auto parsed = CodecSpec::parse(codec);
  if (!parsed.ok()) return unsupported("refused update: " + parsed.status().message());
  const CodecSpec& spec = *parsed;
  const int64_t n = static_cast<int64_t>(num_values(reference));
  Cursor head(reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size());
  const uint64_t fingerprint = head.u64("update header");
  const uint64_t declared_n = head.u64("update header");
  const uint64_t seed = head.u64("update header");
  if (!head.ok()) return corrupt("update (" + codec + "): " + head.error());
  if (fingerprint != layout_fingerprint(reference))
    return corrupt("update (" + codec + ") was made for another model (names or shapes differ)");
  if (declared_n != static_cast<uint64_t>(n))
    return corrupt("update (" + codec + ") declares " + std::to_string(declared_n) + " values, the model has " +
                   std::to_string(n));

  std::string inflated;
  Cursor c = head;
  if (spec.zstd) {
    const uint8_t* p = reinterpret_cast<const uint8_t*>(bytes.data()) + 24;
    const size_t len = bytes.size() - 24;
    // No honest payload exceeds: index coding + a varint (<= 10 bytes) and 4 bytes per value.
    const uint64_t limit = 64 + static_cast<uint64_t>(n) * 14 + static_cast<uint64_t>(n) / 8;
    const unsigned long long declared = ZSTD_getFrameContentSize(p, len);
    if (declared == ZSTD_CONTENTSIZE_ERROR) return corrupt("update (" + codec + "): payload is not a zstd frame");
    if (declared == ZSTD_CONTENTSIZE_UNKNOWN)
      return corrupt("update (" + codec + "): zstd frame does not declare its size");
    if (declared > limit)
      return corrupt("update (" + codec + "): zstd frame declares " + std::to_string(declared) +
                     " bytes, more than any update of this model");
    inflated.resize(static_cast<size_t>(declared));
    const size_t got = ZSTD_decompress(inflated.data(), inflated.size(), p, len);
    if (ZSTD_isError(got)) return corrupt("update (" + codec + "): zstd: " + ZSTD_getErrorName(got));
    if (got != declared) return corrupt("update (" + codec + "): zstd frame shorter than it declares");
    c = Cursor(reinterpret_cast<const uint8_t*>(inflated.data()), inflated.size());
  }

  std::vector<int64_t> idx;
  bool sparse = true;
  if (spec.sparsify == Sparsify::kTopK) {
    std::vector<int64_t> chosen;
    if (read_indices(c, n, &chosen)) {
      // Merge in the small tensors, which travel whole; a coded index inside one is refused.
      int64_t start = 0;
      size_t j = 0;
      idx.reserve(chosen.size());
      for (const TensorRecord& t : reference) {
        const int64_t end = start + static_cast<int64_t>(t.data.size());
        if (sent_whole(t)) {
          if (j < chosen.size() && chosen[j] < end) {
            c.fail("index " + std::to_string(chosen[j]) + " lies in tensor '" + t.name + "', which travels whole");
            break;
          }
          for (int64_t i = start; i < end; ++i) idx.push_back(i);
        } else {
          for (; j < chosen.size() && chosen[j] < end; ++j) idx.push_back(chosen[j]);
        }
        start = end;
      }
    }
  } else if (spec.sparsify == Sparsify::kKernelTopK) {
    std::vector<int64_t> units;
    if (read_indices(c, num_units(reference), &units)) {
      // Each unit stands for its values; the small tensors travel whole.
      int64_t start = 0, unit_at = 0;
      size_t j = 0;
      for (const TensorRecord& t : reference) {
        const int64_t len = static_cast<int64_t>(t.data.size());
        if (sent_whole(t)) {
          for (int64_t i = start; i < start + len; ++i) idx.push_back(i);
        } else {
          const int64_t u = unit_values(t), unit_end = unit_at + len / u;
          for (; j < units.size() && units[j] < unit_end; ++j)
            for (int64_t i = 0; i < u; ++i) idx.push_back(start + (units[j] - unit_at) * u + i);
          unit_at = unit_end;
        }
        start += len;
      }
    }
  } else if (spec.sparsify == Sparsify::kRandK) {
    const uint64_t k = c.u64("random-k count");
    if (c.ok()) {
      idx = randk_indices(reference, spec.fraction, seed);
      if (k != idx.size())
        c.fail("random-k count " + std::to_string(k) + " differs from the " + std::to_string(idx.size()) +
               " indices of its seed");
    }
  } else {
    sparse = false;
  }
  std::vector<float> values;
  if (c.ok())
    read_values(spec, c, sparse ? static_cast<int64_t>(idx.size()) : n,
                segments_of(reference, sparse ? &idx : nullptr), &values);
  if (c.ok() && c.left() != 0) c.fail(std::to_string(c.left()) + " trailing bytes");
  if (!c.ok()) return corrupt("update (" + codec + "): " + c.error());

  std::vector<float> flat = spec.delta ? flatten(reference) : std::vector<float>(static_cast<size_t>(n), 0.0f);
  if (sparse) {
    cuda::scatter_add_cpu(static_cast<int64_t>(idx.size()), idx.data(), values.data(), flat.data(), 1.0f);
  } else {
    for (int64_t i = 0; i < n; ++i) flat[i] += values[i];
  }
  Weights out;
  out.reserve(reference.size());
  int64_t at = 0;
  for (const TensorRecord& t : reference) {
    TensorRecord r{t.name, t.shape, {}};
    r.data.assign(flat.begin() + at, flat.begin() + at + static_cast<int64_t>(t.data.size()));
    at += static_cast<int64_t>(t.data.size());
    out.push_back(std::move(r));
  }
  return out;
}

std::vector<int64_t> randk_indices(const Weights& layout, double fraction, uint64_t seed) {
  std::vector<int64_t> idx;
  const float f = static_cast<float>(fraction);
  int64_t at = 0;
  for (const TensorRecord& t : layout) {
    const int64_t end = at + static_cast<int64_t>(t.data.size());
    const bool all = sent_whole(t);
    for (int64_t i = at; i < end; ++i)
      if (all || cuda::hash_uniform(seed ^ kRandKSalt, static_cast<uint64_t>(i)) < f) idx.push_back(i);
    at = end;
  }
  return idx;
}

Status check_secure_aggregation_codec(const CodecSpec& spec) {
  if (spec.sparsify == Sparsify::kTopK || spec.sparsify == Sparsify::kKernelTopK)
    return invalid_argument("codec '" + spec.to_string() +
                            "' cannot carry masked updates: top-k picks other coordinates at each site, so the masks "
                            "would not cancel (use randk:F, whose coordinates come from a seed shared by all sites)");
  if (spec.quantize != Quantize::kFp32)
    return invalid_argument("codec '" + spec.to_string() +
                            "' cannot carry masked updates: secure aggregation quantises to its own fixed point before "
                            "masking, and a value masked mod 2^32 takes 4 bytes whatever its precision (drop the "
                            "fp16/bf16/q8/q4/q2 stage)");
  return ok_status();
}

void accumulate_feedback(const CodecSpec& spec, std::vector<float>* x, ErrorFeedback* feedback) {
  const size_t n = x->size();
  if (feedback->residual.size() != n) feedback->residual.assign(n, 0.0f);
  if (spec.momentum > 0) {
    if (feedback->velocity.size() != n) feedback->velocity.assign(n, 0.0f);
    const float m = static_cast<float>(spec.momentum);
    for (size_t i = 0; i < n; ++i) {
      const float u = m * feedback->velocity[i];
      feedback->velocity[i] = u + (*x)[i];
    }
    for (size_t i = 0; i < n; ++i) (*x)[i] = feedback->residual[i] + feedback->velocity[i];
  } else {
    for (size_t i = 0; i < n; ++i) (*x)[i] = feedback->residual[i] + (*x)[i];
  }
}

void settle_feedback(const CodecSpec& spec, const std::vector<float>& accumulated, const std::vector<int64_t>* sent_at,
                     const std::vector<float>& sent, ErrorFeedback* feedback) {
  std::vector<float>& res = feedback->residual;
  if (sent_at == nullptr) {
    for (size_t i = 0; i < accumulated.size(); ++i) res[i] = accumulated[i] - sent[i];
    return;
  }
  res = accumulated;
  for (size_t j = 0; j < sent_at->size(); ++j) res[(*sent_at)[j]] = accumulated[(*sent_at)[j]] - sent[j];
  if (spec.momentum > 0)
    for (int64_t i : *sent_at) feedback->velocity[i] = 0;  // DGC momentum factor masking
}

}  // namespace fedrad::fed
