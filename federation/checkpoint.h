// The coordinator's durable state: one file per completed round (private to federation/).
//
// DIR/round-NNN.ckpt holds the global model after round NNN, the strategy's state (optimiser
// moments; empty for FedAvg) and the round's log, written to DIR/round-NNN.ckpt.tmp, fsynced,
// renamed into place and the folder fsynced, so that a coordinator killed at any moment leaves
// either the previous checkpoint or the new one, never half of one. The last two are kept.
//
// Layout: "FDCK" | u32 version (1) | u32 round | str study | u64 n | n bytes (EVAL_INS message
// with the global weights) | u64 n | n bytes (EVAL_INS with the strategy state) | u64 n | n bytes
// (the round log as JSON) | 32 bytes BLAKE2b-256 of everything before. A file that fails any
// check is refused with its path and the reason.
#pragma once

#include <optional>
#include <string>
#include <vector>

#include "common/status.h"
#include "federation/federation.h"

namespace fedrad::fed {

struct Checkpoint {
  uint32_t round = 0;  // last completed round
  std::string study;
  Weights global;
  Weights strategy_state;
  RoundLog log;
};

std::string checkpoint_path(const std::string& dir, uint32_t round);
Status write_checkpoint(const std::string& dir, const Checkpoint& checkpoint);
StatusOr<Checkpoint> read_checkpoint(const std::string& path);
// The newest readable checkpoint in `dir` (a damaged newest one is skipped with a warning in
// `skipped`), or nullopt when there is none.
StatusOr<std::optional<Checkpoint>> read_latest_checkpoint(const std::string& dir,
                                                           std::vector<std::string>* skipped);
// Removes every round-NNN.ckpt (a fresh study in the same folder).
Status clear_checkpoints(const std::string& dir);

// The round log as JSON and back (metrics, bytes, per-site outcomes, the pooled histogram).
std::string round_log_to_json(const RoundLog& log);
StatusOr<RoundLog> round_log_from_json(const std::string& text);

}  // namespace fedrad::fed
