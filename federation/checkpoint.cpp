#include "federation/checkpoint.h"

#include <fcntl.h>
#include <sodium.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "federation/wire.h"

namespace fedrad::fed {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

constexpr char kMagic[4] = {'F', 'D', 'C', 'K'};
constexpr uint32_t kVersion = 1;
constexpr size_t kKeep = 2;

void put_u32(std::string* out, uint32_t v) {
  for (int i = 0; i < 4; ++i) out->push_back(static_cast<char>((v >> (8 * i)) & 0xff));
}
void put_u64(std::string* out, uint64_t v) {
  for (int i = 0; i < 8; ++i) out->push_back(static_cast<char>((v >> (8 * i)) & 0xff));
}
StatusOr<std::string> weights_bytes(const Weights& w) {
  wire::Message m;
  m.body = wire::EvalIns{};
  // Encoded from where the weights lie (no copy of the model into the message).
  FEDRAD_ASSIGN_OR_RETURN(wire::Encoded enc, wire::encode(m, 3, &w));
  return std::move(enc.bytes);
}

StatusOr<Weights> weights_from(const std::string& bytes) {
  FEDRAD_ASSIGN_OR_RETURN(wire::Decoded d, wire::decode(bytes.data(), bytes.size(), bytes.size()));
  auto* ins = std::get_if<wire::EvalIns>(&d.message.body);
  if (ins == nullptr || ins->update.present()) return corrupt("weights section is not plain weights");
  return std::move(ins->weights);
}

std::string digest(const char* p, size_t n) {
  std::string out(crypto_generichash_BYTES, '\0');
  crypto_generichash(reinterpret_cast<unsigned char*>(out.data()), out.size(),
                     reinterpret_cast<const unsigned char*>(p), n, nullptr, 0);
  return out;
}

Status fsync_path(const std::string& path, int flags) {
  const int fd = ::open(path.c_str(), flags);
  if (fd < 0) return io_error(path + ": cannot open to sync: " + std::strerror(errno));
  const int rc = ::fsync(fd);
  ::close(fd);
  if (rc != 0) return io_error(path + ": fsync failed: " + std::strerror(errno));
  return ok_status();
}

json metrics_json(const BinaryMetrics& m) {
  return {{"n", m.n},
          {"positives", m.positives},
          {"auc", m.auc},
          {"accuracy", m.accuracy},
          {"sensitivity", m.sensitivity},
          {"specificity", m.specificity},
          {"threshold", m.threshold}};
}
BinaryMetrics metrics_from(const json& j) {
  BinaryMetrics m;
  m.n = j.at("n");
  m.positives = j.at("positives");
  m.auc = j.at("auc");
  m.accuracy = j.at("accuracy");
  m.sensitivity = j.at("sensitivity");
  m.specificity = j.at("specificity");
  m.threshold = j.at("threshold");
  return m;
}

std::vector<uint32_t> checkpoint_rounds(const std::string& dir) {
  std::vector<uint32_t> rounds;
  std::error_code ec;
  for (const auto& e : fs::directory_iterator(dir, ec)) {
    const std::string name = e.path().filename().string();
    unsigned r = 0;
    char tail[8] = {0};
    if (std::sscanf(name.c_str(), "round-%u.%7s", &r, tail) == 2 && std::string(tail) == "ckpt" &&
        name == fs::path(checkpoint_path(dir, r)).filename().string())
      rounds.push_back(r);
  }
  std::sort(rounds.begin(), rounds.end());
  return rounds;
}

}  // namespace

std::string checkpoint_path(const std::string& dir, uint32_t round) {
  char name[32];
  std::snprintf(name, sizeof name, "round-%03u.ckpt", round);
  return (fs::path(dir) / name).string();
}

std::string round_log_to_json(const RoundLog& log) {
  json sites = json::array();
  for (const SiteRoundLog& s : log.sites)
    sites.push_back({{"site", s.site_id},
                     {"ok", s.ok},
                     {"error_code", s.error_code},
                     {"num_examples", s.num_examples},
                     {"train_loss", s.train_loss},
                     {"train_seconds", s.train_seconds},
                     {"bytes_down", s.bytes_down},
                     {"bytes_up", s.bytes_up},
                     {"raw_bytes_down", s.raw_bytes_down},
                     {"raw_bytes_up", s.raw_bytes_up},
                     {"eval", metrics_json(s.eval)},
                     {"eval_loss", s.eval_loss}});
  json j = {{"round", log.round},
            {"evaluation_only", log.evaluation_only},
            {"sites", sites},
            {"global_eval", metrics_json(log.global_eval)},
            {"global_eval_loss", log.global_eval_loss},
            {"pooled_neg", log.pooled_histogram.neg},
            {"pooled_pos", log.pooled_histogram.pos},
            {"seconds", log.seconds},
            {"bytes_down", log.bytes_down},
            {"bytes_up", log.bytes_up},
            {"raw_bytes_down", log.raw_bytes_down},
            {"raw_bytes_up", log.raw_bytes_up},
            {"dp_epsilon", log.dp_epsilon},
            {"dp_delta", log.dp_delta}};
  return j.dump();
}

StatusOr<RoundLog> round_log_from_json(const std::string& text) {
  try {
    const json j = json::parse(text);
    RoundLog log;
    log.round = j.at("round");
    log.evaluation_only = j.at("evaluation_only");
    for (const json& s : j.at("sites")) {
      SiteRoundLog r;
      r.site_id = s.at("site");
      r.ok = s.at("ok");
      r.error_code = s.at("error_code");
      r.num_examples = s.at("num_examples");
      r.train_loss = s.at("train_loss");
      r.train_seconds = s.at("train_seconds");
      r.bytes_down = s.at("bytes_down");
      r.bytes_up = s.at("bytes_up");
      r.raw_bytes_down = s.at("raw_bytes_down");
      r.raw_bytes_up = s.at("raw_bytes_up");
      r.eval = metrics_from(s.at("eval"));
      r.eval_loss = s.at("eval_loss");
      log.sites.push_back(std::move(r));
    }
    log.global_eval = metrics_from(j.at("global_eval"));
    log.global_eval_loss = j.at("global_eval_loss");
    log.pooled_histogram.neg = j.at("pooled_neg").get<std::vector<uint64_t>>();
    log.pooled_histogram.pos = j.at("pooled_pos").get<std::vector<uint64_t>>();
    log.seconds = j.at("seconds");
    log.bytes_down = j.at("bytes_down");
    log.bytes_up = j.at("bytes_up");
    log.raw_bytes_down = j.at("raw_bytes_down");
    log.raw_bytes_up = j.at("raw_bytes_up");
    log.dp_epsilon = j.at("dp_epsilon");
    log.dp_delta = j.at("dp_delta");
    return log;
  } catch (const std::exception& e) {
    return corrupt(std::string("round log: ") + e.what());
  }
}

Status write_checkpoint(const std::string& dir, const Checkpoint& c) {
  std::error_code ec;
  fs::create_directories(dir, ec);
  if (ec) return io_error(dir + ": cannot create folder: " + ec.message());
  // Written section by section with the digest updated as it goes, so that the coordinator holds
  // one encoded model at a time besides the model itself.
  const std::string path = checkpoint_path(dir, c.round);
  const std::string tmp = path + ".tmp";
  const int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  if (fd < 0) return io_error(tmp + ": cannot create: " + std::strerror(errno));
  crypto_generichash_state hash;
  crypto_generichash_init(&hash, nullptr, 0, crypto_generichash_BYTES);
  Status st;
  auto put = [&](const std::string& bytes, bool hashed = true) {
    if (!st.ok()) return;
    if (hashed)
      crypto_generichash_update(&hash, reinterpret_cast<const unsigned char*>(bytes.data()), bytes.size());
    const char* p = bytes.data();
    size_t left = bytes.size();
    while (left > 0) {
      const ssize_t n = ::write(fd, p, std::min<size_t>(left, size_t{1} << 30));
      if (n < 0) {
        if (errno == EINTR) continue;
        st = io_error(tmp + ": write failed: " + std::strerror(errno));
        return;
      }
      p += n;
      left -= static_cast<size_t>(n);
    }
  };
  auto section = [&](const StatusOr<std::string>& bytes) {
    if (!bytes.ok()) {
      if (st.ok()) st = bytes.status();
      return;
    }
    std::string len;
    put_u64(&len, bytes->size());
    put(len);
    put(*bytes);
  };
  std::string head(kMagic, sizeof kMagic);
  put_u32(&head, kVersion);
  put_u32(&head, c.round);
  put_u32(&head, static_cast<uint32_t>(c.study.size()));
  head += c.study;
  put(head);
  section(weights_bytes(c.global));
  section(weights_bytes(c.strategy_state));
  section(round_log_to_json(c.log));
  std::string digest_bytes(crypto_generichash_BYTES, '\0');
  crypto_generichash_final(&hash, reinterpret_cast<unsigned char*>(digest_bytes.data()), digest_bytes.size());
  put(digest_bytes, /*hashed=*/false);
  if (st.ok() && ::fsync(fd) != 0) st = io_error(tmp + ": fsync failed: " + std::strerror(errno));
  ::close(fd);
  if (!st.ok()) {
    ::unlink(tmp.c_str());
    return st;
  }
  if (::rename(tmp.c_str(), path.c_str()) != 0)
    return io_error(path + ": rename failed: " + std::strerror(errno));
  // The rename itself is durable only once the folder is.
  FEDRAD_RETURN_IF_ERROR(fsync_path(dir, O_RDONLY | O_DIRECTORY));
  // Older checkpoints beyond the last kKeep go (the new one is durable by now).
  std::vector<uint32_t> rounds = checkpoint_rounds(dir);
  for (size_t i = 0; i + kKeep < rounds.size(); ++i) fs::remove(checkpoint_path(dir, rounds[i]), ec);
  return ok_status();
}

StatusOr<Checkpoint> read_checkpoint(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return not_found(path + ": cannot open");
  std::stringstream ss;
  ss << in.rdbuf();
  const std::string b = ss.str();
  const size_t hash = crypto_generichash_BYTES;
  if (b.size() < 4 + 4 + 4 + 4 + hash || std::memcmp(b.data(), kMagic, 4) != 0)
    return corrupt(path + ": not a fedrad checkpoint");
  if (digest(b.data(), b.size() - hash) != b.substr(b.size() - hash))
    return corrupt(path + ": checksum mismatch (damaged file)");
  size_t at = 4;
  const size_t end = b.size() - hash;
  auto u32 = [&]() -> uint64_t {
    uint64_t v = 0;
    for (int i = 0; i < 4; ++i) v |= static_cast<uint64_t>(static_cast<uint8_t>(b[at + i])) << (8 * i);
    at += 4;
    return v;
  };
  auto blob = [&](std::string* out) -> bool {
    if (end - at < 8) return false;
    uint64_t n = 0;
    for (int i = 0; i < 8; ++i) n |= static_cast<uint64_t>(static_cast<uint8_t>(b[at + i])) << (8 * i);
    at += 8;
    if (n > end - at) return false;
    *out = b.substr(at, n);
    at += n;
    return true;
  };
  if (u32() != kVersion) return unsupported(path + ": checkpoint version");
  Checkpoint c;
  c.round = static_cast<uint32_t>(u32());
  const uint64_t study_len = u32();
  if (study_len > end - at) return corrupt(path + ": truncated");
  c.study = b.substr(at, study_len);
  at += study_len;
  std::string global, state, log;
  if (!blob(&global) || !blob(&state) || !blob(&log) || at != end)
    return corrupt(path + ": truncated sections");
  auto g = weights_from(global);
  if (!g.ok()) return corrupt(path + ": global model: " + g.status().message());
  c.global = std::move(g).value();
  auto s = weights_from(state);
  if (!s.ok()) return corrupt(path + ": strategy state: " + s.status().message());
  c.strategy_state = std::move(s).value();
  auto l = round_log_from_json(log);
  if (!l.ok()) return corrupt(path + ": " + l.status().message());
  c.log = std::move(l).value();
  return c;
}

StatusOr<std::optional<Checkpoint>> read_latest_checkpoint(const std::string& dir,
                                                           std::vector<std::string>* skipped) {
  std::vector<uint32_t> rounds = checkpoint_rounds(dir);
  for (auto it = rounds.rbegin(); it != rounds.rend(); ++it) {
    auto c = read_checkpoint(checkpoint_path(dir, *it));
    if (c.ok()) return std::optional<Checkpoint>(std::move(c).value());
    if (skipped) skipped->push_back(c.status().message());
  }
  return std::optional<Checkpoint>();
}

Status clear_checkpoints(const std::string& dir) {
  std::error_code ec;
  for (uint32_t r : checkpoint_rounds(dir)) {
    fs::remove(checkpoint_path(dir, r), ec);
    if (ec) return io_error(checkpoint_path(dir, r) + ": cannot remove: " + ec.message());
  }
  return ok_status();
}

}  // namespace fedrad::fed
