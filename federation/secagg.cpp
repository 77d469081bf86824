#include "federation/secagg.h"

#include <sodium.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstring>
#include <random>

namespace fedrad::fed::secagg {
namespace {

struct GfTables {
  uint8_t exp[512];
  uint8_t log[256];
  GfTables() {
    // Generator 3 of GF(2^8) with the AES polynomial x^8 + x^4 + x^3 + x + 1.
    uint8_t x = 1;
    for (int i = 0; i < 255; ++i) {
      exp[i] = x;
      log[x] = static_cast<uint8_t>(i);
      uint8_t x2 = static_cast<uint8_t>((x << 1) ^ ((x & 0x80) ? 0x1b : 0));
      x = static_cast<uint8_t>(x2 ^ x);  // x * 3
    }
    for (int i = 255; i < 512; ++i) exp[i] = exp[i - 255];
    log[0] = 0;
  }
};
const GfTables& gf() {
  static const GfTables t;
  return t;
}
uint8_t gf_div(uint8_t a, uint8_t b) {  // b != 0
  if (a == 0) return 0;
  return gf().exp[(gf().log[a] + 255 - gf().log[b]) % 255];
}

bool init_sodium() { return sodium_init() >= 0; }

constexpr size_t kShareLen = kShareBytes;
constexpr size_t kPlainLen = 8 + 2 * kShareLen;
static_assert(kShareBoxBytes == crypto_secretbox_NONCEBYTES + crypto_secretbox_MACBYTES + kPlainLen);

void put_u32(std::vector<uint8_t>& out, uint32_t v) {
  for (int i = 0; i < 4; ++i) out.push_back(static_cast<uint8_t>(v >> (8 * i)));
}
uint32_t get_u32(const uint8_t* p) {
  return uint32_t(p[0]) | uint32_t(p[1]) << 8 | uint32_t(p[2]) << 16 | uint32_t(p[3]) << 24;
}

void add_into(std::vector<uint32_t>& acc, const std::vector<uint32_t>& v, bool subtract) {
  for (size_t i = 0; i < acc.size(); ++i) acc[i] = subtract ? acc[i] - v[i] : acc[i] + v[i];
}

}  // namespace

uint8_t gf256_mul(uint8_t a, uint8_t b) {
  if (a == 0 || b == 0) return 0;
  return gf().exp[gf().log[a] + gf().log[b]];
}

std::vector<Share> shamir_split(const std::vector<uint8_t>& secret, int n, int threshold,
                                const std::vector<uint8_t>& random) {
  init_sodium();
  const size_t degree = static_cast<size_t>(std::max(threshold, 1) - 1);
  std::vector<uint8_t> coef = random;
  if (coef.size() < degree * secret.size()) {
    coef.resize(degree * secret.size());
    randombytes_buf(coef.data(), coef.size());
  }
  std::vector<Share> shares(static_cast<size_t>(n));
  for (int i = 0; i < n; ++i) {
    const uint8_t x = static_cast<uint8_t>(i + 1);
    shares[i].x = x;
    shares[i].y.resize(secret.size());
    for (size_t b = 0; b < secret.size(); ++b) {
      // Horner: a_{d} x^d + ... + a_1 x + secret.
      uint8_t acc = 0;
      for (size_t k = degree; k >= 1; --k) acc = gf256_mul(static_cast<uint8_t>(acc ^ coef[b * degree + k - 1]), x);
      shares[i].y[b] = static_cast<uint8_t>(acc ^ secret[b]);
    }
  }
  sodium_memzero(coef.data(), coef.size());
  return shares;
}

StatusOr<std::vector<uint8_t>> shamir_combine(const std::vector<Share>& shares_in, int threshold) {
  std::vector<Share> shares;
  for (const auto& s : shares_in) {
    if (s.x == 0) continue;
    bool dup = false;
    for (const auto& t : shares) dup = dup || t.x == s.x;
    if (!dup) shares.push_back(s);
  }
  if (static_cast<int>(shares.size()) < threshold)
    return invalid_argument("secret sharing: " + std::to_string(shares.size()) + " distinct shares, " +
                            std::to_string(threshold) + " needed");
  shares.resize(static_cast<size_t>(threshold));
  const size_t len = shares[0].y.size();
  for (const auto& s : shares)
    if (s.y.size() != len) return corrupt("secret sharing: shares of different lengths");
  std::vector<uint8_t> out(len, 0);
  for (size_t i = 0; i < shares.size(); ++i) {
    uint8_t l = 1;  // Lagrange basis at 0: prod x_j / (x_j - x_i); minus is xor in GF(2^8)
    for (size_t j = 0; j < shares.size(); ++j)
      if (j != i) l = gf256_mul(l, gf_div(shares[j].x, static_cast<uint8_t>(shares[j].x ^ shares[i].x)));
    for (size_t b = 0; b < len; ++b) out[b] ^= gf256_mul(l, shares[i].y[b]);
  }
  return out;
}

FixedPoint FixedPoint::for_parties(int n, double clip) {
  FixedPoint fp;
  fp.clip = clip;
  const double limit = 2147483647.0 / (std::max(1, n) * clip);
  fp.scale = std::exp2(std::floor(std::log2(limit)));
  return fp;
}

std::vector<uint32_t> quantise(const std::vector<float>& v, const FixedPoint& fp) {
  std::vector<uint32_t> out(v.size());
  for (size_t i = 0; i < v.size(); ++i) {
    const double x = std::clamp(static_cast<double>(v[i]), -fp.clip, fp.clip);
    out[i] = static_cast<uint32_t>(static_cast<int32_t>(std::llround(x * fp.scale)));
  }
  return out;
}

std::vector<float> dequantise(const std::vector<uint32_t>& sum, const FixedPoint& fp) {
  std::vector<float> out(sum.size());
  for (size_t i = 0; i < sum.size(); ++i) out[i] = static_cast<float>(static_cast<int32_t>(sum[i]) / fp.scale);
  return out;
}

std::vector<uint32_t> shared_random_k(uint32_t dim, uint32_t k, uint64_t seed) {
  k = std::min(k, dim);
  std::mt19937_64 gen(seed);
  // Floyd's algorithm: k distinct of [0, dim) in O(k).
  std::vector<uint32_t> picked;
  picked.reserve(k);
  std::vector<bool> taken(dim, false);
  for (uint32_t j = dim - k; j < dim; ++j) {
    const uint32_t t = static_cast<uint32_t>(std::uniform_int_distribution<uint64_t>(0, j)(gen));
    const uint32_t v = taken[t] ? j : t;
    taken[v] = true;
    picked.push_back(v);
  }
  std::sort(picked.begin(), picked.end());
  return picked;
}

std::vector<uint32_t> prg(const Key& seed, uint64_t round, size_t n) {
  init_sodium();
  std::vector<uint32_t> out(n, 0);
  unsigned char nonce[crypto_stream_chacha20_NONCEBYTES] = {0};
  for (size_t i = 0; i < sizeof(nonce) && i < 8; ++i) nonce[i] = static_cast<unsigned char>(round >> (8 * i));
  crypto_stream_chacha20(reinterpret_cast<unsigned char*>(out.data()), n * sizeof(uint32_t), nonce, seed.data());
  // The keystream is bytes; read them as little-endian on any host.
  for (auto& v : out) {
    const auto* p = reinterpret_cast<const uint8_t*>(&v);
    v = get_u32(p);
  }
  return out;
}

StatusOr<Key> pair_seed(const Key& my_sk, const Key& my_pk, const Key& their_pk, const char* context) {
  init_sodium();
  unsigned char q[crypto_scalarmult_BYTES];
  if (crypto_scalarmult(q, my_sk.data(), their_pk.data()) != 0) return corrupt("secagg: degenerate public key");
  const Key& lo = std::min(my_pk, their_pk);
  const Key& hi = std::max(my_pk, their_pk);
  crypto_generichash_state st;
  crypto_generichash_init(&st, nullptr, 0, 32);
  crypto_generichash_update(&st, q, sizeof(q));
  crypto_generichash_update(&st, lo.data(), lo.size());
  crypto_generichash_update(&st, hi.data(), hi.size());
  crypto_generichash_update(&st, reinterpret_cast<const unsigned char*>(context), std::strlen(context));
  Key out;
  crypto_generichash_final(&st, out.data(), out.size());
  sodium_memzero(q, sizeof(q));
  return out;
}

// ---------------------------------------------------------------------------------------------
SecAggClient::SecAggClient(const Params& p, uint32_t index) : p_(p), index_(index) {
  init_sodium();
  if (p_.deterministic_seed != 0) {
    uint64_t material[2] = {p_.deterministic_seed, index_};
    crypto_generichash(sk_.data(), sk_.size(), reinterpret_cast<const unsigned char*>(material), sizeof(material),
                       reinterpret_cast<const unsigned char*>("sk-test-only-key"), 16);
    crypto_generichash(self_seed_.data(), self_seed_.size(), reinterpret_cast<const unsigned char*>(material),
                       sizeof(material), reinterpret_cast<const unsigned char*>("b-test-only-key!"), 16);
  } else {
    randombytes_buf(sk_.data(), sk_.size());
    randombytes_buf(self_seed_.data(), self_seed_.size());
  }
  crypto_scalarmult_base(pk_.data(), sk_.data());
}

Status SecAggClient::bind(const Params& p, uint32_t index) {
  if (!public_keys_.empty()) return invalid_argument("secagg: parameters bound after the keys were shared");
  if (p.parties < 1 || index >= p.parties) return invalid_argument("secagg: party index outside the party count");
  p_ = p;
  index_ = index;
  return ok_status();
}

StatusOr<std::vector<EncryptedShares>> SecAggClient::share_keys(const std::vector<Key>& public_keys) {
  if (public_keys.size() != p_.parties || public_keys[index_] != pk_)
    return invalid_argument("secagg: the key list does not hold this party's key at its index");
  const uint32_t t = p_.effective_threshold();
  if (t < 1 || t > p_.parties || p_.parties > 255) return invalid_argument("secagg: bad threshold or party count");
  public_keys_ = public_keys;
  auto sk_parts = shamir_split(std::vector<uint8_t>(sk_.begin(), sk_.end()), static_cast<int>(p_.parties), static_cast<int>(t));
  auto b_parts =
      shamir_split(std::vector<uint8_t>(self_seed_.begin(), self_seed_.end()), static_cast<int>(p_.parties), static_cast<int>(t));
  sk_shares_.assign(p_.parties, Share{});
  b_shares_.assign(p_.parties, Share{});
  sk_shares_[index_] = sk_parts[index_];  // this party's own shares stay here
  b_shares_[index_] = b_parts[index_];
  std::vector<EncryptedShares> out;
  for (uint32_t v = 0; v < p_.parties; ++v) {
    if (v == index_) continue;
    FEDRAD_ASSIGN_OR_RETURN(Key key, pair_seed(sk_, pk_, public_keys[v], "fedrad-secagg-share-box"));
    std::vector<uint8_t> plain;
    put_u32(plain, index_);
    put_u32(plain, v);
    plain.insert(plain.end(), sk_parts[v].y.begin(), sk_parts[v].y.end());
    plain.insert(plain.end(), b_parts[v].y.begin(), b_parts[v].y.end());
    EncryptedShares e;
    e.from = index_;
    e.to = v;
    e.nonce_and_box.resize(crypto_secretbox_NONCEBYTES + crypto_secretbox_MACBYTES + plain.size());
    randombytes_buf(e.nonce_and_box.data(), crypto_secretbox_NONCEBYTES);
    crypto_secretbox_easy(e.nonce_and_box.data() + crypto_secretbox_NONCEBYTES, plain.data(), plain.size(),
                          e.nonce_and_box.data(), key.data());
    sodium_memzero(plain.data(), plain.size());
    out.push_back(std::move(e));
  }
  return out;
}

StatusOr<std::vector<uint32_t>> SecAggClient::masked_input(const std::vector<uint32_t>& input,
                                                           const std::vector<EncryptedShares>& received,
                                                           const std::vector<bool>& shared_in) {
  if (public_keys_.empty()) return invalid_argument("secagg: masked_input before share_keys");
  if (masked_) return invalid_argument("secagg: a second masked input in one round");
  const std::vector<bool> shared = shared_in.empty() ? std::vector<bool>(p_.parties, true) : shared_in;
  if (shared.size() != p_.parties || !shared[index_])
    return invalid_argument("secagg: the sharing parties do not include this party");
  uint32_t num_shared = 0;
  for (bool b : shared) num_shared += b ? 1 : 0;
  if (num_shared < p_.effective_threshold())
    return invalid_argument("secagg: " + std::to_string(num_shared) + " parties shared their keys, " +
                            std::to_string(p_.effective_threshold()) + " needed");
  {
    std::vector<bool> got(p_.parties, false);
    for (const auto& e : received) {
      if (e.from >= p_.parties || got[e.from] || !shared[e.from]) return corrupt("secagg: shares from an unexpected party");
      got[e.from] = true;
    }
    for (uint32_t v = 0; v < p_.parties; ++v)
      if (v != index_ && shared[v] && !got[v])
        return corrupt("secagg: no shares from party " + std::to_string(v) + " although it is marked as sharing");
  }
  if (input.size() != p_.dim) return invalid_argument("secagg: input of " + std::to_string(input.size()) +
                                                      " values, expected " + std::to_string(p_.dim));
  for (const auto& e : received) {
    if (e.to != index_ || e.from >= p_.parties || e.from == index_) return corrupt("secagg: misrouted shares");
    if (e.nonce_and_box.size() != crypto_secretbox_NONCEBYTES + crypto_secretbox_MACBYTES + kPlainLen)
      return corrupt("secagg: shares of the wrong size");
    FEDRAD_ASSIGN_OR_RETURN(Key key, pair_seed(sk_, pk_, public_keys_[e.from], "fedrad-secagg-share-box"));
    std::vector<uint8_t> plain(kPlainLen);
    if (crypto_secretbox_open_easy(plain.data(), e.nonce_and_box.data() + crypto_secretbox_NONCEBYTES,
                                   e.nonce_and_box.size() - crypto_secretbox_NONCEBYTES, e.nonce_and_box.data(),
                                   key.data()) != 0)
      return corrupt("secagg: shares from party " + std::to_string(e.from) + " fail authentication");
    if (get_u32(plain.data()) != e.from || get_u32(plain.data() + 4) != index_)
      return corrupt("secagg: shares name other parties than their envelope");
    const uint8_t x = static_cast<uint8_t>(index_ + 1);
    sk_shares_[e.from] = Share{x, std::vector<uint8_t>(plain.begin() + 8, plain.begin() + 8 + kShareLen)};
    b_shares_[e.from] = Share{x, std::vector<uint8_t>(plain.begin() + 8 + kShareLen, plain.end())};
  }
  std::vector<uint32_t> y = input;
  add_into(y, prg(self_seed_, p_.round, p_.dim), false);
  masked_ = true;
  for (uint32_t v = 0; v < p_.parties; ++v) {
    if (v == index_ || !shared[v]) continue;
    FEDRAD_ASSIGN_OR_RETURN(Key s, pair_seed(sk_, pk_, public_keys_[v], "fedrad-secagg-mask"));
    add_into(y, prg(s, p_.round, p_.dim), /*subtract=*/v < index_);
  }
  return y;
}

StatusOr<UnmaskResponse> SecAggClient::unmask(const UnmaskRequest& request) {
  if (answered_) return invalid_argument("secagg: unmasking asked twice in one round");
  if (request.sent_input.size() != p_.parties) return invalid_argument("secagg: unmask request of the wrong size");
  uint32_t alive = 0;
  for (bool b : request.sent_input) alive += b ? 1 : 0;
  // Fewer survivors than the threshold: answering would help unmask a too-small sum.
  if (alive < p_.effective_threshold()) return invalid_argument("secagg: too few survivors to unmask");
  if (!request.sent_input[index_]) return invalid_argument("secagg: asked to unmask while marked as dropped");
  answered_ = true;
  UnmaskResponse r;
  r.from = index_;
  for (uint32_t u = 0; u < p_.parties; ++u) {
    // One kind of share per party: b for those whose input is in, sk for those dropped.
    if (request.sent_input[u]) {
      if (b_shares_[u].x == 0) continue;
      r.self_mask_of.push_back(u);
      r.self_mask_shares.push_back(b_shares_[u]);
    } else {
      if (sk_shares_[u].x == 0) continue;
      r.secret_key_of.push_back(u);
      r.secret_key_shares.push_back(sk_shares_[u]);
    }
  }
  return r;
}

// ---------------------------------------------------------------------------------------------
Status SecAggServer::add_masked_input(uint32_t from, std::vector<uint32_t> y) {
  if (from >= p_.parties) return invalid_argument("secagg: input from an unknown party");
  if (y.size() != p_.dim) return invalid_argument("secagg: masked input of the wrong size");
  if (inputs_.empty()) inputs_.resize(p_.parties);
  inputs_[from] = std::move(y);
  return ok_status();
}

std::vector<uint32_t> SecAggServer::survivors() const {
  std::vector<uint32_t> s;
  for (uint32_t u = 0; u < inputs_.size(); ++u)
    if (!inputs_[u].empty()) s.push_back(u);
  return s;
}

UnmaskRequest SecAggServer::unmask_request() const {
  UnmaskRequest r;
  r.sent_input.assign(p_.parties, false);
  for (uint32_t u : survivors()) r.sent_input[u] = true;
  return r;
}

Status SecAggServer::add_unmask_response(UnmaskResponse r) {
  if (r.from >= p_.parties || inputs_.empty() || inputs_[r.from].empty())
    return invalid_argument("secagg: unmask response from a party without an input");
  responses_.push_back(std::move(r));
  return ok_status();
}

StatusOr<std::vector<uint32_t>> SecAggServer::finish() {
  const uint32_t t = p_.effective_threshold();
  const auto alive = survivors();
  if (alive.size() < t) return unsupported("secagg: " + std::to_string(alive.size()) + " inputs, " + std::to_string(t) + " needed");
  if (responses_.size() < t)
    return unsupported("secagg: " + std::to_string(responses_.size()) + " unmask responses, " + std::to_string(t) + " needed");
  if (keys_.size() != p_.parties) return invalid_argument("secagg: public keys missing");
  std::vector<uint32_t> sum(p_.dim, 0);
  for (uint32_t u : alive) add_into(sum, inputs_[u], false);
  auto collect = [&](uint32_t u, bool self) {
    std::vector<Share> shares;
    for (const auto& r : responses_) {
      const auto& of = self ? r.self_mask_of : r.secret_key_of;
      const auto& sh = self ? r.self_mask_shares : r.secret_key_shares;
      for (size_t i = 0; i < of.size() && i < sh.size(); ++i)
        if (of[i] == u) shares.push_back(sh[i]);
    }
    return shares;
  };
  std::vector<bool> is_alive(p_.parties, false);
  for (uint32_t u : alive) is_alive[u] = true;
  const std::vector<bool> shared = shared_.empty() ? std::vector<bool>(p_.parties, true) : shared_;
  if (shared.size() != p_.parties) return invalid_argument("secagg: sharing flags of the wrong size");
  for (uint32_t u : alive)
    if (!shared[u]) return invalid_argument("secagg: an input from party " + std::to_string(u) + ", which shared no keys");
  for (uint32_t u = 0; u < p_.parties; ++u) {
    if (!is_alive[u] && !shared[u]) continue;  // never shared keys: no masks with it anywhere
    if (is_alive[u]) {
      FEDRAD_ASSIGN_OR_RETURN(auto b, shamir_combine(collect(u, true), static_cast<int>(t)));
      Key seed;
      std::copy(b.begin(), b.end(), seed.begin());
      add_into(sum, prg(seed, p_.round, p_.dim), /*subtract=*/true);
    } else {
      FEDRAD_ASSIGN_OR_RETURN(auto skb, shamir_combine(collect(u, false), static_cast<int>(t)));
      Key sk;
      std::copy(skb.begin(), skb.end(), sk.begin());
      Key pk;
      crypto_scalarmult_base(pk.data(), sk.data());
      if (pk != keys_[u]) return corrupt("secagg: reconstructed key of party " + std::to_string(u) + " is wrong");
      for (uint32_t v : alive) {
        FEDRAD_ASSIGN_OR_RETURN(Key s, pair_seed(sk, pk, keys_[v], "fedrad-secagg-mask"));
        // v added +PRG(s) when u > v and -PRG(s) when u < v; take it out.
        add_into(sum, prg(s, p_.round, p_.dim), /*subtract=*/u > v);
      }
      sodium_memzero(sk.data(), sk.size());
    }
  }
  return sum;
}

// ---------------------------------------------------------------------------------------------
StatusOr<std::vector<uint32_t>> run_secure_aggregation(const std::vector<std::vector<uint32_t>>& inputs,
                                                       const DriverOptions& options, DriverStats* stats,
                                                       std::vector<std::vector<uint32_t>>* masked) {
  using Clock = std::chrono::steady_clock;
  auto secs = [](Clock::time_point a) { return std::chrono::duration<double>(Clock::now() - a).count(); };
  Params p = options.params;
  if (p.parties == 0) p.parties = static_cast<uint32_t>(inputs.size());
  if (inputs.size() != p.parties) return invalid_argument("secagg: one input per party expected");
  DriverStats local;
  DriverStats& st = stats ? *stats : local;
  st = DriverStats{};
  auto in = [](const std::vector<uint32_t>& v, uint32_t u) { return std::find(v.begin(), v.end(), u) != v.end(); };

  auto t0 = Clock::now();
  std::vector<SecAggClient> clients;
  std::vector<Key> keys;
  for (uint32_t u = 0; u < p.parties; ++u) {
    clients.emplace_back(p, u);
    keys.push_back(clients.back().public_key());
  }
  st.client_seconds += secs(t0);
  st.bytes_up += 32ull * p.parties;
  st.bytes_down += 32ull * p.parties * p.parties;  // the key list to everyone
  SecAggServer server(p);
  server.set_public_keys(keys);

  std::vector<std::vector<EncryptedShares>> inbox(p.parties);
  t0 = Clock::now();
  for (auto& c : clients) {
    FEDRAD_ASSIGN_OR_RETURN(auto out, c.share_keys(keys));
    for (auto& e : out) {
      st.bytes_up += 8 + e.nonce_and_box.size();
      st.bytes_down += 8 + e.nonce_and_box.size();
      inbox[e.to].push_back(std::move(e));
    }
  }
  st.client_seconds += secs(t0);

  if (masked) masked->assign(p.parties, {});
  for (uint32_t u = 0; u < p.parties; ++u) {
    if (in(options.drop_before_input, u)) continue;
    t0 = Clock::now();
    FEDRAD_ASSIGN_OR_RETURN(auto y, clients[u].masked_input(inputs[u], inbox[u]));
    st.client_seconds += secs(t0);
    st.bytes_up += 4ull * y.size();
    if (masked) (*masked)[u] = y;
    t0 = Clock::now();
    FEDRAD_RETURN_IF_ERROR(server.add_masked_input(u, std::move(y)));
    st.server_seconds += secs(t0);
  }
  const UnmaskRequest request = server.unmask_request();
  for (uint32_t u : server.survivors()) {
    st.bytes_down += p.parties;  // the survivor bitmap
    if (in(options.drop_before_unmask, u)) continue;
    t0 = Clock::now();
    FEDRAD_ASSIGN_OR_RETURN(auto r, clients[u].unmask(request));
    st.client_seconds += secs(t0);
    st.bytes_up += 8 + (r.self_mask_of.size() + r.secret_key_of.size()) * (4 + 1 + kShareLen);
    FEDRAD_RETURN_IF_ERROR(server.add_unmask_response(std::move(r)));
  }
  t0 = Clock::now();
  auto sum = server.finish();
  st.server_seconds += secs(t0);
  st.survivors = server.survivors();
  return sum;
}

}  // namespace fedrad::fed::secagg
