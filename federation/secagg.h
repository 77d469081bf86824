// Secure aggregation (after Bonawitz et al., CCS 2017): the coordinator learns the sum of the
// sites' updates and nothing else about any one of them, and the sum survives sites dropping out.
//
// Arithmetic is on uint32 modulo 2^32. A site's update is first quantised to fixed point (that
// step is the quantiser: FixedPoint), optionally restricted to coordinates every site selects
// from a shared seed (shared_random_k: random-k sparsification composes because all masks live on
// the same k coordinates). Each site u then sends
//     y_u = x_u + PRG(b_u) + sum_{v > u} PRG(s_uv) - sum_{v < u} PRG(s_uv)      (mod 2^32)
// where s_uv is the X25519 shared secret of u and v (crypto_scalarmult, hashed with both public
// keys), b_u is u's private self-mask seed and PRG is ChaCha20 (crypto_stream_chacha20) keyed by
// the seed with the round as nonce. Pairwise masks cancel in the sum. Before masking, each site
// splits its X25519 secret key and b_u with Shamir's scheme (byte-wise over GF(2^8), threshold t)
// and sends one share of each to every other site, encrypted (crypto_secretbox) under their pair
// key and relayed by the coordinator. After the masked inputs are in, each surviving site hands
// the coordinator, for every site that sent an input, its share of b_u, and for every site that
// dropped, its share of the secret key (never both for one site), so the coordinator removes the
// self-masks of survivors and the pairwise masks the survivors shared with the dropped sites.
// With t = n - floor(n/3) the sum is recovered when up to a third of the sites drop out.
//
// This file is the protocol's steps as plain classes (SecAggClient per site, SecAggServer at the
// coordinator) and an in-process driver (run_secure_aggregation). The live protocol carries them
// over the coordinator's sockets (privacy.secure_aggregation; wire.h SECAGG_* messages,
// coordinator.cpp and site.cpp). A party that never shares its keys is left out of the pairwise
// masks (`shared`), as in Bonawitz et al.'s U2. Honest-but-curious server model: no signatures
// on key advertisements, no consistency round.
//
// Neither class is thread-safe; one instance per party and round.
#pragma once

#include <array>
#include <cstdint>
#include <string>
#include <vector>

#include "common/status.h"

namespace fedrad::fed::secagg {

using Key = std::array<uint8_t, 32>;

// Bytes of one Shamir share of a 32-byte secret, and of the sealed box that carries a pair of
// them (sk share and b share) from one party to another: nonce (24) + MAC (16) + from, to (8) +
// two shares.
inline constexpr size_t kShareBytes = 32;
inline constexpr size_t kShareBoxBytes = 24 + 16 + 8 + 2 * kShareBytes;

// ---- Shamir secret sharing, byte-wise over GF(2^8) (x = party index + 1, so at most 255 parties).
struct Share {
  uint8_t x = 0;
  std::vector<uint8_t> y;  // one byte per secret byte
};
// `random` supplies coefficient bytes: (threshold - 1) * secret.size() of them; empty = libsodium.
std::vector<Share> shamir_split(const std::vector<uint8_t>& secret, int n, int threshold,
                                const std::vector<uint8_t>& random = {});
// Fails when fewer than `threshold` distinct shares or lengths differ. Any `threshold` shares give
// the secret; fewer reveal nothing about it.
StatusOr<std::vector<uint8_t>> shamir_combine(const std::vector<Share>& shares, int threshold);
uint8_t gf256_mul(uint8_t a, uint8_t b);

// ---- Fixed point (the quantiser before masking).
struct FixedPoint {
  double scale = 65536;  // value v travels as round(v * scale)
  double clip = 1;       // values are clipped to [-clip, clip] first
  // The largest power-of-two scale for which the sum of n clipped values fits in int32.
  static FixedPoint for_parties(int n, double clip);
};
std::vector<uint32_t> quantise(const std::vector<float>& v, const FixedPoint& fp);
std::vector<float> dequantise(const std::vector<uint32_t>& sum, const FixedPoint& fp);  // two's complement

// Shared-seed random-k: the same k sorted coordinates of [0, dim) at every site for one seed.
std::vector<uint32_t> shared_random_k(uint32_t dim, uint32_t k, uint64_t seed);

// ChaCha20 keystream as uint32 (little-endian), `n` values, nonce = round.
std::vector<uint32_t> prg(const Key& seed, uint64_t round, size_t n);

// ---- Protocol messages (what the coordinator relays or receives).
struct EncryptedShares {
  uint32_t from = 0, to = 0;
  std::vector<uint8_t> nonce_and_box;  // crypto_secretbox nonce + ciphertext of (from, to, sk share, b share)
};
struct UnmaskRequest {
  std::vector<bool> sent_input;  // per party: its masked input reached the coordinator
};
struct UnmaskResponse {
  uint32_t from = 0;
  std::vector<uint32_t> self_mask_of;  // parties whose b-share follows
  std::vector<Share> self_mask_shares;
  std::vector<uint32_t> secret_key_of;  // dropped parties whose sk-share follows
  std::vector<Share> secret_key_shares;
};

struct Params {
  uint32_t parties = 0;
  uint32_t threshold = 0;  // 0 = parties - parties / 3
  uint32_t dim = 0;        // values per masked vector
  uint64_t round = 0;
  // Tests only: derive each party's keys and self-mask seed from this (0 = libsodium's random
  // bytes, as a deployment must).
  uint64_t deterministic_seed = 0;
  uint32_t effective_threshold() const { return threshold ? threshold : parties - parties / 3; }
};

class SecAggClient {
 public:
  SecAggClient(const Params& p, uint32_t index);
  // Phase 1: the public key to advertise.
  const Key& public_key() const { return pk_; }
  // Live protocol: the keys are advertised before the parties are known; the coordinator's key
  // list then fixes the parameters and this party's index. Only before share_keys.
  Status bind(const Params& p, uint32_t index);
  // Phase 2: given every party's public key (index order), shares for every other party.
  StatusOr<std::vector<EncryptedShares>> share_keys(const std::vector<Key>& public_keys);
  // Phase 3: given the shares relayed to this party, the masked input (dim values). `shared`
  // (by party; empty = all) names the parties that shared their keys: pairwise masks are added
  // with those only, and `received` must hold exactly one box from each of them.
  StatusOr<std::vector<uint32_t>> masked_input(const std::vector<uint32_t>& input,
                                               const std::vector<EncryptedShares>& received,
                                               const std::vector<bool>& shared = {});
  // Phase 4: shares that let the coordinator unmask the sum (and nothing more).
  StatusOr<UnmaskResponse> unmask(const UnmaskRequest& request);

 private:
  Params p_;
  uint32_t index_;
  Key sk_{}, pk_{}, self_seed_{};
  std::vector<Key> public_keys_;
  std::vector<Share> sk_shares_, b_shares_;  // held for others, by party index (x = 0: none)
  bool answered_ = false;
  bool masked_ = false;
};

class SecAggServer {
 public:
  explicit SecAggServer(const Params& p) : p_(p) {}
  void set_public_keys(std::vector<Key> keys) { keys_ = std::move(keys); }
  // By party: which ones shared their keys (masked_input's `shared`); default: all.
  void set_shared(std::vector<bool> shared) { shared_ = std::move(shared); }
  // Records the masked input of `from` (dim values).
  Status add_masked_input(uint32_t from, std::vector<uint32_t> y);
  UnmaskRequest unmask_request() const;
  Status add_unmask_response(UnmaskResponse r);
  // The sum of the inputs of the parties that sent one (mod 2^32).
  StatusOr<std::vector<uint32_t>> finish();
  std::vector<uint32_t> survivors() const;

 private:
  Params p_;
  std::vector<Key> keys_;
  std::vector<bool> shared_;
  std::vector<std::vector<uint32_t>> inputs_;  // by party; empty = none
  std::vector<UnmaskResponse> responses_;
};

// Pair seed of two parties from one's secret key and the other's public key (same at both ends).
StatusOr<Key> pair_seed(const Key& my_sk, const Key& my_pk, const Key& their_pk, const char* context);

// ---- In-process driver.
struct DriverOptions {
  Params params;
  std::vector<uint32_t> drop_before_input;   // parties that vanish after sharing keys
  std::vector<uint32_t> drop_before_unmask;  // parties that send their input, then vanish
};
struct DriverStats {
  uint64_t bytes_up = 0, bytes_down = 0;  // through the coordinator, all parties together
  double client_seconds = 0, server_seconds = 0;  // CPU wall time, all parties together
  std::vector<uint32_t> survivors;
};
// Runs all four phases over `inputs` (one uint32 vector of dim values per party).
StatusOr<std::vector<uint32_t>> run_secure_aggregation(const std::vector<std::vector<uint32_t>>& inputs,
                                                       const DriverOptions& options, DriverStats* stats = nullptr,
                                                       std::vector<std::vector<uint32_t>>* masked = nullptr);

}  // namespace fedrad::fed::secagg
