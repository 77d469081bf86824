// libFuzzer target for the federation message decoder (federation/wire.h): what a coordinator
// or a site does with bytes from the network. The input's first byte says into how many frames
// (1..4) the rest is cut; each frame is decoded, CHUNK frames go to one ChunkAssembler and a
// completed message is decoded too. A message that decodes must re-encode, and decoding that
// gives the same message (the encoding is canonical up to zstd's choices, so the check is on the
// second round trip). Built and run by scripts/fuzz_wire.sh (clang, ASan + UBSan); with
// -DFEDRAD_WIRE_SEEDS it is instead a program that writes a seed corpus of every message type.
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "federation/wire.h"

namespace w = fedrad::fed::wire;

namespace {

constexpr size_t kLimit = size_t{1} << 22;

void check_round_trip(const w::Message& m) {
  auto enc = w::encode(m);
  if (!enc.ok()) return;  // e.g. a decoded histogram the encoder refuses; never a crash
  auto again = w::decode(enc->bytes.data(), enc->bytes.size(), kLimit * 4);
  if (!again.ok()) {
    std::fprintf(stderr, "re-encoded message does not decode: %s\n", again.status().to_string().c_str());
    std::abort();
  }
  auto enc2 = w::encode(again->message);
  if (!enc2.ok() || enc2->bytes != enc->bytes) {
    std::fprintf(stderr, "encode(decode(encode(m))) differs from encode(m)\n");
    std::abort();
  }
}

void take(w::ChunkAssembler& assembler, const uint8_t* p, size_t n) {
  auto dec = w::decode(p, n, kLimit);
  if (!dec.ok()) return;
  check_round_trip(dec->message);
  if (auto* chunk = std::get_if<w::Chunk>(&dec->message.body)) {
    auto whole = assembler.add(std::move(*chunk));
    if (!whole.ok() || whole->empty()) return;
    auto inner = w::decode(whole->data(), whole->size(), kLimit);
    if (inner.ok()) check_round_trip(inner->message);
  }
}

}  // namespace

#ifndef FEDRAD_WIRE_SEEDS
extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  const size_t frames = 1 + data[0] % 4;
  const uint8_t* p = data + 1;
  size_t left = size - 1;
  w::ChunkAssembler assembler(kLimit);
  for (size_t i = 0; i < frames; ++i) {
    const size_t n = i + 1 == frames ? left : left / (frames - i);
    take(assembler, p, n);
    p += n;
    left -= n;
  }
  return 0;
}
#else
int main(int argc, char** argv) {
  if (argc != 2) return 2;
  using fedrad::fed::Compression;
  using fedrad::fed::TensorRecord;
  std::vector<w::Message> ms;
  auto add = [&](w::Body body, Compression c = Compression::kNone) {
    w::Message m;
    m.study = "pneumonia";
    m.round = 3;
    m.sender = "site-a";
    m.sequence = 1000 + ms.size();
    m.compression = c;
    m.body = std::move(body);
    ms.push_back(std::move(m));
  };
  fedrad::fed::EvalReport eval;
  eval.num_examples = 5;
  eval.loss = 0.5;
  eval.histogram.neg = {1, 2, 3};
  eval.histogram.pos = {0, 1, 4};
  const fedrad::fed::Weights weights = {TensorRecord{"conv.w", {2, 3}, {1, 2, 3, 4, 5, 6}},
                                        TensorRecord{"b", {1}, {0.5f}}};
  add(w::Join{10, 5});
  add(w::JoinAck{});
  add(w::Reject{4});
  w::FitIns fit_ins;
  fit_ins.settings.round = 3;
  fit_ins.weights = weights;
  add(fit_ins);
  add(fit_ins, Compression::kZstd);
  w::FitRes fit_res;
  fit_res.num_examples = 10;
  fit_res.eval = eval;
  fit_res.weights = weights;
  add(fit_res);
  add(fit_res, Compression::kZstd);
  w::FitRes encoded = fit_res;
  encoded.weights.clear();
  encoded.update.codec = "delta|q8|zstd";
  encoded.update.bytes = std::string("\x01\x02\x03\x04", 4);
  add(encoded);
  add(w::EvalIns{weights, {}});
  add(w::EvalRes{0, eval});
  add(w::Shutdown{0});
  add(w::Heartbeat{3});
  // Secure aggregation (after the others: ms[5] below is the FIT_RES that gets chunked).
  add(w::SecAggKeys{});
  w::SecAggKeyList list;
  list.party = 1;
  list.threshold = 2;
  list.dim = 7;
  list.scale = 65536;
  list.clip = 4;
  list.weight_cap = 30;
  list.keys.assign(3, fedrad::fed::secagg::Key{});
  add(list);
  const std::vector<uint8_t> box(fedrad::fed::secagg::kShareBoxBytes, 0x5a);
  add(w::SecAggShares{0, {w::SecAggBox{1, box}, w::SecAggBox{2, box}}});
  add(w::SecAggRelay{1, {1, 1, 0}, {w::SecAggBox{0, box}}});
  w::SecAggMasked masked;
  masked.party = 2;
  masked.eval = eval;
  masked.values = {1, 2, 3, 4, 5, 6, 7};
  add(masked, Compression::kZstd);
  add(w::SecAggUnmask{0, {1, 1, 0}});
  w::SecAggUnmaskRes res;
  res.self_mask.push_back({1, fedrad::fed::secagg::Share{1, std::vector<uint8_t>(32, 9)}});
  res.secret_key.push_back({2, fedrad::fed::secagg::Share{1, std::vector<uint8_t>(32, 8)}});
  add(res);
  // A FIT_RES in three chunks, as one input (first byte: 3 frames of equal length would cut it
  // elsewhere, so each chunk is its own seed and the trio is a fourth).
  auto whole = w::encode(ms[5]);
  std::vector<std::string> seeds;
  for (const auto& m : ms) seeds.push_back(std::string(1, '\0') + w::encode(m)->bytes);
  w::Chunker chunker(whole->bytes, ms[5], 77, (whole->bytes.size() + 2) / 3);
  std::string trio(1, '\2');
  for (uint32_t i = 0; i < chunker.count(); ++i) {
    const std::string c = *chunker.chunk(i, 2000 + i);
    seeds.push_back(std::string(1, '\0') + c);
    trio += c;
  }
  seeds.push_back(trio);
  for (size_t i = 0; i < seeds.size(); ++i) {
    const std::string path = std::string(argv[1]) + "/seed-" + std::to_string(i);
    FILE* f = std::fopen(path.c_str(), "wb");
    if (!f) return 1;
    std::fwrite(seeds[i].data(), 1, seeds[i].size(), f);
    std::fclose(f);
  }
  std::printf("%zu seeds\n", seeds.size());
  return 0;
}
#endif
