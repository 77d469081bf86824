// A site's tamper-evident record of what crossed its network boundary.
//
// One line per message sent or received, appended and flushed before the site goes on:
//   fedrad-audit-v1 <seq> <utc time> <dir> <type> <round> <wire bytes> <raw bytes> <payload> <prev> <hash>
// dir is "out" (sent) or "in" (received); payload is the BLAKE2b-256 of the bytes as they were on
// the wire; prev is the previous record's hash (64 zeros for the first record of a file); hash is
// the BLAKE2b-256 of the line up to and including `prev` (the text before " <hash>"). Editing,
// dropping or reordering a record breaks the chain from that record on, which verify_audit_log
// names. (A chain alone cannot stop someone rewriting every later hash; giving the head hash that
// verify prints to a third party after a study pins the whole log.)
//
// AuditLog is not thread-safe; one per site runner.
#pragma once

#include <cstdint>
#include <fstream>
#include <map>
#include <string>
#include <vector>

#include "common/status.h"

namespace fedrad::fed {

// BLAKE2b-256 (libsodium crypto_generichash) as 64 lowercase hex digits.
std::string blake2b_hex(const void* data, size_t size);

struct AuditRecord {
  uint64_t seq = 0;
  std::string time;       // UTC, ISO 8601 with milliseconds
  std::string direction;  // "out" or "in"
  std::string type;       // wire::message_type_name
  uint32_t round = 0;
  uint64_t wire_bytes = 0;
  uint64_t raw_bytes = 0;
  std::string payload;    // hex digest of the wire bytes
  std::string prev;
  std::string hash;
};

class AuditLog {
 public:
  // Appends to `path` (creating it and its folder), continuing the chain of what is there.
  static StatusOr<AuditLog> open(const std::string& path);
  AuditLog() = default;
  AuditLog(AuditLog&&) = default;
  AuditLog& operator=(AuditLog&&) = default;

  bool is_open() const { return out_.is_open(); }
  const std::string& path() const { return path_; }

  // Records one message; `bytes` are the wire bytes. A no-op when not open.
  Status record(const std::string& direction, const std::string& type, uint32_t round, const void* bytes,
                size_t wire_size, uint64_t raw_size);

 private:
  std::string path_;
  std::ofstream out_;
  uint64_t seq_ = 0;
  std::string prev_;
};

struct AuditSummary {
  uint64_t records = 0;
  bool ok = false;
  uint64_t first_bad = 0;     // 1-based line of the first bad record when !ok
  std::string problem;        // why it is bad
  std::string head;           // hash of the last good record
  std::string first_time, last_time;
  struct Count {
    uint64_t messages = 0, wire_bytes = 0, raw_bytes = 0;
  };
  std::map<std::string, Count> sent, received;  // by message type
  uint32_t max_round = 0;
};

// Checks every record's form and hash and the chain. Fails (not_found/io_error) only when the file
// cannot be read; a broken log is an AuditSummary with ok = false.
StatusOr<AuditSummary> verify_audit_log(const std::string& path);

// A human-readable account of an AuditSummary for `fedrad audit verify`.
std::string describe(const AuditSummary& s, const std::string& path);

}  // namespace fedrad::fed
