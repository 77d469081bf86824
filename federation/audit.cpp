#include "federation/audit.h"

#include <sodium.h>

#include <chrono>
#include <cstdio>
#include <ctime>
#include <filesystem>
#include <sstream>

namespace fedrad::fed {
namespace {

constexpr const char* kTag = "fedrad-audit-v1";
const std::string kGenesis(64, '0');

std::string utc_now() {
  const auto now = std::chrono::system_clock::now();
  const std::time_t t = std::chrono::system_clock::to_time_t(now);
  const auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(now.time_since_epoch()).count() % 1000;
  std::tm tm{};
  gmtime_r(&t, &tm);
  char buf[40];
  std::snprintf(buf, sizeof(buf), "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ", tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday,
                tm.tm_hour, tm.tm_min, tm.tm_sec, static_cast<int>(ms));
  return buf;
}

std::string body_of(const AuditRecord& r) {
  return std::string(kTag) + " " + std::to_string(r.seq) + " " + r.time + " " + r.direction + " " + r.type + " " +
         std::to_string(r.round) + " " + std::to_string(r.wire_bytes) + " " + std::to_string(r.raw_bytes) + " " +
         r.payload + " " + r.prev;
}

bool is_hex64(const std::string& s) {
  if (s.size() != 64) return false;
  for (char c : s)
    if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'))) return false;
  return true;
}

bool is_token(const std::string& s) {
  if (s.empty() || s.size() > 64) return false;
  for (char c : s)
    if (c <= ' ' || c > '~') return false;
  return true;
}

// Parses one line; "" when well-formed, else the reason.
std::string parse(const std::string& line, AuditRecord* r) {
  std::istringstream in(line);
  std::string tag, seq, round, wire, raw, extra;
  if (!(in >> tag >> seq >> r->time >> r->direction >> r->type >> round >> wire >> raw >> r->payload >> r->prev >>
        r->hash))
    return "not a complete record";
  if (in >> extra) return "trailing fields";
  if (tag != kTag) return "unknown record tag";
  try {
    size_t used = 0;
    r->seq = std::stoull(seq, &used);
    if (used != seq.size()) return "bad sequence number";
    r->round = static_cast<uint32_t>(std::stoul(round, &used));
    if (used != round.size()) return "bad round";
    r->wire_bytes = std::stoull(wire, &used);
    if (used != wire.size()) return "bad wire size";
    r->raw_bytes = std::stoull(raw, &used);
    if (used != raw.size()) return "bad raw size";
  } catch (const std::exception&) {
    return "bad number";
  }
  if (r->direction != "in" && r->direction != "out") return "bad direction";
  if (!is_token(r->type) || !is_token(r->time)) return "bad type or time";
  if (!is_hex64(r->payload) || !is_hex64(r->prev) || !is_hex64(r->hash)) return "bad digest";
  return "";
}

}  // namespace

std::string blake2b_hex(const void* data, size_t size) {
  unsigned char h[32];
  crypto_generichash(h, sizeof(h), static_cast<const unsigned char*>(data), size, nullptr, 0);
  char hex[65];
  sodium_bin2hex(hex, sizeof(hex), h, sizeof(h));
  return hex;
}

StatusOr<AuditLog> AuditLog::open(const std::string& path) {
  if (sodium_init() < 0) return internal_error("libsodium failed to initialise");
  AuditLog log;
  log.path_ = path;
  log.prev_ = kGenesis;
  std::error_code ec;
  const auto parent = std::filesystem::path(path).parent_path();
  if (!parent.empty()) std::filesystem::create_directories(parent, ec);
  {
    // Continue the chain of an existing log from its last record.
    std::ifstream in(path);
    std::string line, last;
    while (std::getline(in, line))
      if (!line.empty()) last = line;
    if (!last.empty()) {
      AuditRecord r;
      const std::string why = parse(last, &r);
      if (!why.empty()) return corrupt(path + ": last audit record is unreadable (" + why + "); not appending to it");
      log.seq_ = r.seq + 1;
      log.prev_ = r.hash;
    }
  }
  log.out_.open(path, std::ios::app);
  if (!log.out_) return io_error(path + ": cannot open the audit log for appending");
  return log;
}

Status AuditLog::record(const std::string& direction, const std::string& type, uint32_t round, const void* bytes,
                        size_t wire_size, uint64_t raw_size) {
  if (!out_.is_open()) return ok_status();
  AuditRecord r;
  r.seq = seq_;
  r.time = utc_now();
  r.direction = direction;
  r.type = type;
  r.round = round;
  r.wire_bytes = wire_size;
  r.raw_bytes = raw_size;
  r.payload = blake2b_hex(bytes, wire_size);
  r.prev = prev_;
  const std::string body = body_of(r);
  r.hash = blake2b_hex(body.data(), body.size());
  out_ << body << " " << r.hash << "\n";
  out_.flush();
  if (!out_) return io_error(path_ + ": cannot append to the audit log");
  ++seq_;
  prev_ = r.hash;
  return ok_status();
}

StatusOr<AuditSummary> verify_audit_log(const std::string& path) {
  if (sodium_init() < 0) return internal_error("libsodium failed to initialise");
  std::ifstream in(path);
  if (!in) return not_found(path + ": cannot open the audit log");
  AuditSummary s;
  s.ok = true;
  s.head = kGenesis;
  std::string line;
  uint64_t lineno = 0;
  while (std::getline(in, line)) {
    ++lineno;
    if (line.empty()) continue;
    AuditRecord r;
    std::string why = parse(line, &r);
    if (why.empty() && r.seq != s.records) why = "sequence number " + std::to_string(r.seq) + " where " +
                                                  std::to_string(s.records) + " was expected (record dropped or moved)";
    if (why.empty() && r.prev != s.head) why = "does not chain to the previous record";
    if (why.empty()) {
      const std::string body = body_of(r);
      if (blake2b_hex(body.data(), body.size()) != r.hash) why = "hash does not match its contents (edited)";
    }
    if (!why.empty()) {
      s.ok = false;
      s.first_bad = lineno;
      s.problem = why;
      return s;
    }
    ++s.records;
    s.head = r.hash;
    if (s.first_time.empty()) s.first_time = r.time;
    s.last_time = r.time;
    s.max_round = std::max(s.max_round, r.round);
    auto& c = (r.direction == "out" ? s.sent : s.received)[r.type];
    ++c.messages;
    c.wire_bytes += r.wire_bytes;
    c.raw_bytes += r.raw_bytes;
  }
  if (in.bad()) return io_error(path + ": read error");
  return s;
}

std::string describe(const AuditSummary& s, const std::string& path) {
  std::ostringstream o;
  if (!s.ok) {
    o << path << ": TAMPERED or damaged: record at line " << s.first_bad << " fails: " << s.problem << "\n"
      << "  " << s.records << " records before it verify (chain head " << s.head << ")\n";
    return o.str();
  }
  o << path << ": OK, " << s.records << " records, hash chain intact\n";
  if (s.records) o << "  from " << s.first_time << " to " << s.last_time << ", rounds up to " << s.max_round << "\n";
  auto table = [&](const char* title, const std::map<std::string, AuditSummary::Count>& m) {
    uint64_t n = 0, w = 0, r = 0;
    o << "  " << title << ":\n";
    for (const auto& [type, c] : m) {
      o << "    " << type << ": " << c.messages << " messages, " << c.wire_bytes << " bytes on the wire ("
        << c.raw_bytes << " raw)\n";
      n += c.messages;
      w += c.wire_bytes;
      r += c.raw_bytes;
    }
    o << "    total: " << n << " messages, " << w << " bytes on the wire (" << r << " raw)\n";
  };
  table("left the site", s.sent);
  table("received", s.received);
  o << "  chain head: " << s.head << "\n";
  return o.str();
}

}  // namespace fedrad::fed
