// The byte layout of fedrad's federation messages (private to federation/).
//
// A message is one ZeroMQ frame:
//   magic "FDRD" | u16 version (3) | u16 type | str study | u32 round | str sender |
//   u64 sequence | u8 compression | body
// `sequence` is the sender's message counter: it starts at the sender's start time in
// nanoseconds since the epoch (so a restarted peer continues above its previous life) and grows
// by one per frame sent. A receiver refuses a frame whose sequence is not above the last one it
// took from that sender (a replay or a stale copy). Version 1 had no sequence; version 2 sent
// score histograms dense and had no secure aggregation (and is refused, not misread).
// The body alone is a zstd frame when compression == kZstd, so a receiver can route and refuse a
// message (wrong study, wrong round) from the header without paying for the weights.
// Integers are little-endian, doubles and floats travel as IEEE-754 bit patterns, a str is a u32
// length and that many bytes (at most kMaxStringBytes).
//
// Bodies:
//   JOIN      u64 n_train | u64 n_val | u64 session
//   JOIN_ACK  (empty)
//   REJECT    u32 reason (RejectReason)
//   FIT_INS   settings | weights
//   FIT_RES   u32 status (a StatusCode; 0 = ok) | u64 num_examples | f64 train_loss |
//             f64 train_seconds | eval | weights
//   EVAL_INS  weights
//   EVAL_RES  u32 status | eval
//   SHUTDOWN  u32 reason (ShutdownReason)
//   HEARTBEAT u32 round (the round the sender is working on; 0 when idle)
//   CHUNK     u64 transfer | u32 index | u32 count | u64 total | u64 length | length bytes
//             (one piece of a larger encoded message; compression is always none)
// Secure aggregation (federation/secagg.h; privacy.secure_aggregation), the four phases of one
// round, after FIT_INS; `party` is the site's index among the round's parties:
//   SECAGG_KEYS        site -> coordinator, after local training, in place of FIT_RES:
//                      32 bytes X25519 public key
//   SECAGG_KEY_LIST    coordinator -> each party: u32 party | u32 threshold | u32 dim |
//                      f64 scale | f64 clip | u64 weight_cap | u32 parties | parties x 32 bytes
//   SECAGG_SHARES      party -> coordinator: u32 party | u32 count |
//                      count x (u32 to | kShareBoxBytes bytes sealed for `to`)
//   SECAGG_RELAY       coordinator -> party: u32 party | u32 parties | parties x u8 shared (0/1) |
//                      u32 count | count x (u32 from | kShareBoxBytes bytes)
//   SECAGG_MASKED      party -> coordinator: u32 party | f64 train_loss | f64 train_seconds |
//                      eval | u64 dim | dim x u32 (fixed point + masks, mod 2^32)
//   SECAGG_UNMASK      coordinator -> party: u32 party | u32 parties | parties x u8 sent_input
//   SECAGG_UNMASK_RES  party -> coordinator: u32 party | 2 x (u32 count | count x
//                      (u32 of | u8 x | 32 bytes y)): self-mask shares, then secret-key shares
// The decoder checks what one message can: party counts (<= kMaxSecAggParties), indices
// within them, flags 0/1, box and share sizes, no duplicates; the receiver checks the rest
// against the round (the party it assigned, the round's party count and vector size).
// settings:  u32 round | u32 local_epochs | u32 batch_size | f64 lr | u64 seed | f64 prox_mu |
//            u8 flags (bit 0 keep_local_norm, bit 1 secure_aggregation; a peer without secure
//            aggregation refuses bit 1 as corrupt rather than send its update in the clear)
// eval:      u64 num_examples | f64 loss | histogram | seg
// histogram: u32 bins | u32 entries | entries x (u32 bin | u32 neg | u32 pos), the non-empty
//            bins only, in increasing order
// seg:       u32 structures (0 for classification) | u64 cases |
//            structures x (f64 dice_sum | f64 hd95_sum | u64 hd95_cases)
// weights:   u32 count | count x (str name | u32 ndim | ndim x i64 dim | prod(dims) x f32)
//            or, for an encoded update (federation/codec.h) in FIT_INS, FIT_RES and EVAL_INS:
//            u32 0xFFFFFFFF | str codec | u64 length | length bytes
//            (the marker is above kMaxTensors, so a peer without codecs refuses it as corrupt)
//
// Chunks: a message whose encoding is larger than the sender's chunk size (64 MiB by default)
// travels as `count` CHUNK messages of at most that many bytes, each with its own header and
// sequence, so that no single ZeroMQ frame exceeds the chunk size; the receiver checks every
// chunk against the first (transfer id, count, total), appends it to one buffer preallocated at
// `total` (refused above its limit), and decodes the whole once complete (ChunkAssembler).
//
// Decoding treats every byte as hostile: lengths are checked against the bytes left and against
// the limits below before anything is allocated, and every failure is a Status, never a throw.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <variant>
#include <vector>

#include "common/status.h"
#include "federation/federation.h"
#include "federation/secagg.h"

namespace fedrad::fed::wire {

inline constexpr char kMagic[4] = {'F', 'D', 'R', 'D'};
inline constexpr uint16_t kVersion = 3;
inline constexpr uint32_t kMaxStringBytes = 4096;
inline constexpr uint32_t kMaxTensors = 1u << 16;
inline constexpr uint32_t kMaxDims = 16;
inline constexpr uint32_t kMaxHistogramBins = 1u << 20;
inline constexpr uint32_t kMaxSegStructures = 64;  // segmentation scores: labels + regions
inline constexpr size_t kDefaultChunkBytes = size_t{64} << 20;
inline constexpr uint32_t kMaxChunks = 1u << 20;

enum class MessageType : uint16_t {
  kJoin = 1,
  kJoinAck = 2,
  kReject = 3,
  kFitIns = 4,
  kFitRes = 5,
  kEvalIns = 6,
  kEvalRes = 7,
  kShutdown = 8,
  kHeartbeat = 9,
  kChunk = 10,
  kSecAggKeys = 11,
  kSecAggKeyList = 12,
  kSecAggShares = 13,
  kSecAggRelay = 14,
  kSecAggMasked = 15,
  kSecAggUnmask = 16,
  kSecAggUnmaskRes = 17,
};
inline constexpr uint16_t kLastMessageType = 17;
inline constexpr uint32_t kMaxSecAggParties = 255;  // Shamir over GF(2^8): x = 1..255
const char* message_type_name(MessageType type);

// Numbers, not text, so that nothing a site was told about itself leaks into logs elsewhere.
enum class RejectReason : uint32_t {
  kWrongStudy = 1,
  kUnknownSite = 2,
  kUnexpected = 3,  // a message the coordinator cannot place (e.g. a result before joining)
  kRejoin = 4,      // the coordinator does not know this site (it restarted): send JOIN again
};
enum class ShutdownReason : uint32_t { kDone = 0, kAborted = 1 };

inline constexpr uint32_t kEncodedUpdateMarker = 0xFFFFFFFFu;

// An update made by federation/codec.h, travelling in place of plain weights. Present when
// `codec` is non-empty; the message's `weights` are then empty and the receiver rebuilds them.
struct EncodedUpdate {
  std::string codec;  // canonical codec text (CodecSpec::to_string)
  std::string bytes;
  bool present() const { return !codec.empty(); }
};

struct Join {
  uint64_t num_train = 0;
  uint64_t num_val = 0;
  // Random per site process: a JOIN with the session the coordinator knows is a repeat (answered
  // again), another session means the site restarted (it lost its model and its round).
  uint64_t session = 0;
};
struct JoinAck {};
struct Reject {
  uint32_t reason = 0;
};
struct FitIns {
  RoundSettings settings;
  Weights weights;
  EncodedUpdate update;  // in place of weights when present
};
struct FitRes {
  uint32_t status = 0;
  uint64_t num_examples = 0;
  double train_loss = 0;
  double train_seconds = 0;
  EvalReport eval;
  Weights weights;
  EncodedUpdate update;  // in place of weights when present
  // decode() with a keep-alive: the plain weights as views into the received bytes (`weights`
  // then empty), valid while `view_backing` lives; encode() writes them like `weights`.
  WeightsView view;
  std::shared_ptr<const void> view_backing;
};
struct EvalIns {
  Weights weights;
  EncodedUpdate update;  // in place of weights when present
};
struct EvalRes {
  uint32_t status = 0;
  EvalReport eval;
};
struct Shutdown {
  uint32_t reason = 0;
};
struct Heartbeat {
  uint32_t round = 0;
};
struct Chunk {
  uint64_t transfer = 0;  // sender-chosen id, the same in every piece of one message
  uint32_t index = 0;     // 0-based
  uint32_t count = 0;
  uint64_t total = 0;     // bytes of the whole encoded message
  std::string bytes;
};

// ---- secure aggregation (see the layout above)
struct SecAggKeys {
  secagg::Key public_key{};
};
struct SecAggKeyList {
  uint32_t party = 0;       // the recipient's index in `keys`
  uint32_t threshold = 0;   // shares needed to unmask (effective, never 0)
  uint32_t dim = 0;         // values in a masked vector
  double scale = 1;         // fixed point: a value v travels as round(v * scale)
  double clip = 1;          // each update coordinate is clipped to [-clip, clip] first
  uint64_t weight_cap = 1;  // a party's FedAvg weight (its example count) is capped at this
  std::vector<secagg::Key> keys;  // by party
};
struct SecAggBox {
  uint32_t party = 0;  // the recipient (SECAGG_SHARES) or the sender (SECAGG_RELAY)
  std::vector<uint8_t> box;  // secagg::kShareBoxBytes
};
struct SecAggShares {
  uint32_t party = 0;
  std::vector<SecAggBox> boxes;
};
struct SecAggRelay {
  uint32_t party = 0;
  std::vector<uint8_t> shared;  // by party: 1 = it shared its keys (its masks are in the inputs)
  std::vector<SecAggBox> boxes;
};
struct SecAggMasked {
  uint32_t party = 0;
  double train_loss = 0;
  double train_seconds = 0;
  EvalReport eval;               // of the global model the site received, as in FIT_RES
  std::vector<uint32_t> values;  // the masked vector
};
struct SecAggUnmask {
  uint32_t party = 0;
  std::vector<uint8_t> sent_input;  // by party: 1 = its masked input is in the sum
};
struct SecAggShareOf {
  uint32_t of = 0;  // the party whose secret this is a share of
  secagg::Share share;
};
struct SecAggUnmaskRes {
  uint32_t party = 0;
  std::vector<SecAggShareOf> self_mask;   // for parties whose input is in
  std::vector<SecAggShareOf> secret_key;  // for parties that shared keys but sent no input
};

// Alternatives in MessageType order: the type on the wire is the variant index + 1.
using Body = std::variant<Join, JoinAck, Reject, FitIns, FitRes, EvalIns, EvalRes, Shutdown, Heartbeat, Chunk,
                          SecAggKeys, SecAggKeyList, SecAggShares, SecAggRelay, SecAggMasked, SecAggUnmask,
                          SecAggUnmaskRes>;

struct Message {
  std::string study;
  uint32_t round = 0;
  std::string sender;
  uint64_t sequence = 0;
  Compression compression = Compression::kNone;
  Body body;

  MessageType type() const { return static_cast<MessageType>(body.index() + 1); }
};

struct Encoded {
  std::string bytes;      // what goes on the wire
  uint64_t raw_size = 0;  // header + uncompressed body
};

// Fails (invalid_argument) on what the decoder would refuse: over-long strings, a tensor whose
// data disagrees with its shape, a histogram whose classes differ in bins.
// `weights`, when given, are written as the plain weights of a FIT_INS, FIT_RES or EVAL_INS whose
// own weights and update are empty, so that a sender encodes a model it holds without copying it
// into the message. The output is allocated once at its final size (no growth copies).
StatusOr<Encoded> encode(const Message& message, int zstd_level = 3, const Weights* weights = nullptr);

struct Decoded {
  Message message;
  uint64_t raw_size = 0;  // header + uncompressed body
};

// Refuses (corrupt/unsupported) anything malformed, including inputs or decompressed bodies
// larger than max_message_bytes and trailing bytes after the body.
StatusOr<Decoded> decode(const void* data, size_t size, size_t max_message_bytes);
// The same, but the plain weights of a FIT_RES are not copied: they come as FitRes::view into
// `data` (or into the decompressed body, which the message then owns), and `keep_alive`, which
// must own `data`, travels with them as FitRes::view_backing. On a big-endian host the weights
// are copied as by the overload above.
StatusOr<Decoded> decode(const void* data, size_t size, size_t max_message_bytes, std::shared_ptr<const void> keep_alive);

// Overwrites the sequence number in the header of an encoded message (e.g. one encoded without
// holding the lock that orders a sender's frames); fails on bytes that are not a message header.
Status restamp_sequence(char* frame, size_t size, uint64_t sequence);

// An encoded message as the frames that go on the wire, in one buffer: the message itself when it
// fits in chunk_bytes, else its CHUNK messages one after another (transfer id: header.sequence;
// each takes the next value of *sequence). The one buffer can be sent to every recipient without
// a copy per recipient (zero-copy frames that share it), and `encoded` is released once it is
// framed, so a large message is held about once, not once per recipient.
struct Framed {
  std::string bytes;
  std::vector<std::pair<size_t, size_t>> frames;  // offset, size in `bytes`
  uint64_t message_bytes = 0;                     // of the encoded message before chunking
};
StatusOr<Framed> frame(std::string encoded, const Message& header, size_t chunk_bytes, uint64_t* sequence);

// Bytes of the `weights` layout above for plain weights, and for an encoded update: what a
// message's raw size is counted in (raw = as if the full model travelled as plain float32).
uint64_t plain_weights_bytes(const Weights& w);
uint64_t encoded_update_bytes(const EncodedUpdate& u);

// The CHUNK messages of `encoded` (a whole encoded message) with at most `chunk_bytes` payload
// each, built one at a time so that the sender holds one chunk besides the message. `header`
// gives study, round and sender; each chunk takes the next value of *sequence.
class Chunker {
 public:
  Chunker(const std::string& encoded, const Message& header, uint64_t transfer, size_t chunk_bytes);
  uint32_t count() const { return count_; }
  // The index-th chunk, encoded (uncompressed).
  StatusOr<std::string> chunk(uint32_t index, uint64_t sequence) const;

 private:
  const std::string& encoded_;
  Message header_;
  uint64_t transfer_;
  size_t chunk_bytes_;
  uint32_t count_;
};

// Reassembles one peer's chunked message. Not thread-safe; one per peer. A chunk out of order,
// from another transfer or inconsistent with the first is refused and the partial message
// dropped; a new transfer (index 0) replaces an unfinished one.
class ChunkAssembler {
 public:
  explicit ChunkAssembler(size_t max_total_bytes) : max_total_(max_total_bytes) {}
  // Adds a chunk; returns the whole message's bytes when this was its last chunk, "" otherwise
  // (a message is never empty), or an error (the partial message is then dropped).
  StatusOr<std::string> add(Chunk chunk);
  size_t pending_bytes() const { return active_ ? buffer_.capacity() : 0; }
  void reset();

 private:
  size_t max_total_;
  bool active_ = false;
  uint64_t transfer_ = 0;
  uint32_t next_ = 0, count_ = 0;
  uint64_t total_ = 0;
  std::string buffer_;
};

}  // namespace fedrad::fed::wire
