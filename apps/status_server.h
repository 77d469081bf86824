// A small read-only HTTP endpoint on 127.0.0.1 that shows a running study (`--status-port`):
//   GET /status   JSON: study, round, rounds, sites, the last round's metrics, bytes, elapsed, ETA
//   GET /metrics  the same numbers in Prometheus' text format (fedrad_round, fedrad_global_auc, ...)
// Classification studies report AUC and accuracy; segmentation studies (round logs carrying Dice
// sums) report mean Dice and Dice per structure instead (fedrad_global_mean_dice, ...).
// Fed by the coordinator's round callback; requests are served on a thread of its own.
#pragma once

#include <chrono>
#include <memory>
#include <mutex>
#include <string>

#include "common/progress.h"  // format_duration
#include <thread>
#include <vector>

#include <nlohmann/json.hpp>

#include "common/status.h"
#include "federation/federation.h"

namespace httplib {
class Server;
}

namespace fedrad::app {

// GET http://127.0.0.1:PORT/PATH (for tests and tools; the header keeps httplib out of callers).
struct HttpReply {
  int status = 0;
  std::string content_type, body;
};
StatusOr<HttpReply> http_get_local(int port, const std::string& path, double timeout_s = 5);

// Mean round time x rounds left (the final evaluation counts as a round); -1 before any round.
double eta_seconds(double sum_round_seconds, int rounds_done, int rounds_total);

class StatusServer {
 public:
  StatusServer(std::string study, int rounds, std::vector<std::string> sites);
  ~StatusServer();
  StatusServer(const StatusServer&) = delete;
  StatusServer& operator=(const StatusServer&) = delete;

  // Binds 127.0.0.1:port (0: any free port) and starts serving; returns the port.
  StatusOr<int> start(int port);
  void stop();
  int port() const { return port_; }

  // After each round (and the final evaluation, evaluation_only = true).
  void on_round(const fed::RoundLog& log);
  void set_state(const std::string& state);  // "waiting for sites", "running", "done", "failed"
  // Segmentation studies: the names of the scored structures (seg_structures), in the order of
  // the Dice sums; without them structures are reported by index.
  void set_seg_structures(std::vector<std::string> names);

  nlohmann::json status() const;
  std::string prometheus() const;

 private:
  mutable std::mutex mu_;
  std::string study_;
  int rounds_;
  std::vector<std::string> sites_;
  std::vector<std::string> seg_structures_;
  std::string state_ = "waiting for sites";
  std::chrono::steady_clock::time_point start_;
  int rounds_done_ = 0;
  bool final_done_ = false;
  double sum_round_seconds_ = 0;
  uint64_t bytes_up_ = 0, bytes_down_ = 0, raw_up_ = 0, raw_down_ = 0;
  fed::RoundLog last_;
  bool have_last_ = false;

  std::unique_ptr<httplib::Server> server_;
  std::thread thread_;
  int port_ = 0;
};

}  // namespace fedrad::app
