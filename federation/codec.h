// Update codecs: how a model update is made small before it goes on the wire.
//
// A codec is a chain of stages, written as a string, in this order (each stage optional):
//
//   delta        send x - reference (the model the receiver already holds) instead of x
//   ef[:m]       error feedback: what was not sent is added to the next update; m > 0 adds
//                momentum correction as in Deep Gradient Compression (Lin et al. 2018):
//                u = m u + x, v = v + u, send C(v), v -= C(v), u = 0 where sent
//   topk:F       keep the fraction F of values largest in magnitude, per tensor (at least one
//                value each; the threshold comes from a sample); tensors of at most 512 values
//                (biases, normalisation parameters and running statistics) are always sent whole
//   ktopk:F      top-k by kernels: the fraction F of the kernels (the kh x kw values of one
//                output-input channel pair) of each convolution weight of largest L2 norm, all of
//                each chosen kernel's values sent, one index coded per kernel (a 3x3 kernel costs
//                about what one value's index costs under topk); other tensors as topk
//   randk:F      keep each value with probability F, chosen by a hash of a seed that travels in
//                the update, so the indices themselves are never sent (small tensors: as topk)
//   fp16 | bf16  16-bit floats (round to nearest even)
//   q8|q4|q2[:B] stochastic (unbiased) rounding to 8, 4 or 2 bits with one fp32 scale per block
//                of B values (default 256); blocks never span two tensors
//   zstd[:L]     entropy coding of everything above, level L (default 3)
//
// e.g. "delta|ef|topk:0.01|q8|zstd". "zstd" alone (the default) and "none" are lossless and send
// the model as plain float32 weights, exactly as before codecs existed. Sparse updates code their
// indices as Golomb-Rice codes or varints of the gaps, or as a bitmap, whichever is smallest.
//
// An encoded update names its codec (the canonical string travels in the message beside the
// bytes) and the layout it was made for (a fingerprint of the reference's names and shapes); a
// receiver refuses a codec it does not know and any update that is not exactly well-formed.
// Encoding and decoding are deterministic functions of their inputs and the seed, so a sender
// that decodes its own bytes gets bit for bit what the receiver gets.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "common/status.h"
#include "federation/federation.h"

namespace fedrad::fed {

enum class Sparsify { kNone = 0, kTopK = 1, kRandK = 2, kKernelTopK = 3 };
enum class Quantize { kFp32 = 0, kFp16 = 1, kBf16 = 2, kQ8 = 3, kQ4 = 4, kQ2 = 5 };

struct CodecSpec {
  bool delta = false;
  bool error_feedback = false;
  double momentum = 0;       // DGC momentum correction when error_feedback; 0 = plain feedback
  Sparsify sparsify = Sparsify::kNone;
  double fraction = 1;       // topk / randk: kept fraction in (0, 1]
  Quantize quantize = Quantize::kFp32;
  int block = 256;           // q8/q4/q2: values per scale
  bool zstd = false;
  int zstd_level = 3;

  // Fails (invalid_argument) naming the unknown stage, a bad parameter or a stage out of order.
  static StatusOr<CodecSpec> parse(const std::string& text);
  // The canonical text: parse(to_string()) gives the same spec.
  std::string to_string() const;
  // Lossless and without delta: the update is sent as plain float32 weights (the wire's own
  // compression applies), which is what the default "zstd" means.
  bool plain() const { return !delta && sparsify == Sparsify::kNone && quantize == Quantize::kFp32; }
  bool lossless() const { return sparsify == Sparsify::kNone && quantize == Quantize::kFp32; }
};

// The state of error feedback at one sender, across rounds (flattened over all tensors, in
// order). Owned by the sender; not thread-safe.
struct ErrorFeedback {
  std::vector<float> residual;  // what was not sent yet (v in DGC)
  std::vector<float> velocity;  // momentum-corrected accumulation (u in DGC); empty when m = 0
  void reset() {
    residual.clear();
    velocity.clear();
  }
};

// Error feedback's two steps, for senders that choose and send values themselves (secure
// aggregation's masked random-k) as encode_update does. accumulate_feedback turns this round's
// update x (flattened) into what may be sent: x plus the residual, and with momentum m DGC's
// velocity (u = m u + x; residual + u). settle_feedback then keeps what was not sent: at the
// indices `sent_at` (all values when null) the residual becomes accumulated - sent, elsewhere the
// accumulated value, and the velocity is zeroed where values were sent (momentum factor masking).
void accumulate_feedback(const CodecSpec& spec, std::vector<float>* x, ErrorFeedback* feedback);
void settle_feedback(const CodecSpec& spec, const std::vector<float>& accumulated, const std::vector<int64_t>* sent_at,
                     const std::vector<float>& sent, ErrorFeedback* feedback);

// Encodes `model` for a receiver that holds `reference` (same names and shapes: checked). With
// `delta` the update is model - reference; with `ef` the residual in `feedback` (required then) is
// added and updated so that, exactly, new residual = accumulated update - what the receiver will
// decode. `seed` drives random-k and stochastic rounding.
StatusOr<std::string> encode_update(const CodecSpec& spec, const Weights& model, const Weights& reference,
                                    uint64_t seed, ErrorFeedback* feedback = nullptr);

// The model the receiver reconstructs: reference + update with `delta`, the update alone
// otherwise (the reference then only gives names and shapes). `codec` is the text that travelled
// with the bytes: an unknown stage is refused (unsupported), malformed bytes too (corrupt).
StatusOr<Weights> decode_update(const std::string& codec, std::string_view bytes, const Weights& reference);

// The coordinates random-k keeps for `seed`, as flat indices over the model's values in order:
// every value of the small tensors that travel whole, and each other value with probability
// `fraction` (a hash of the seed and the position). The same at every party for the same seed, so
// secure aggregation's shared-seed random-k masks the same k values at every site.
std::vector<int64_t> randk_indices(const Weights& layout, double fraction, uint64_t seed);

// Secure aggregation's upstream codecs: plain ("zstd", "none"), or shared-seed random-k with
// optional delta and error feedback ("delta|ef|randk:0.1"). Fails naming the stage that cannot
// compose with masking: top-k (each site would pick other coordinates, so the masks would not
// cancel) and fp16/bf16/q8/q4/q2 (the fixed point before masking is the quantiser, and values
// masked mod 2^32 are 4 bytes whatever their precision).
Status check_secure_aggregation_codec(const CodecSpec& spec);

// The seed of secure aggregation's shared random-k in a round: the same at every site and at the
// coordinator (a function of the round's seed only, which FIT_INS carries).
inline uint64_t secure_randk_seed(uint64_t round_seed) { return round_seed * 0xd1342543de82ef95ull + 0x2545f4914f6cdd1dull; }

// A 64-bit fingerprint of names and shapes, so that an update is never applied to another model.
uint64_t layout_fingerprint(const Weights& w);

// float32 <-> 16-bit conversions used by fp16/bf16 (round to nearest even; NaN stays NaN).
uint16_t float_to_half(float f);
float half_to_float(uint16_t h);
uint16_t float_to_bf16(float f);
float bf16_to_float(uint16_t b);

}  // namespace fedrad::fed
