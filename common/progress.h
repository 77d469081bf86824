// Progress of long steps (indexing, loading, local epochs, rounds), shown the way the output
// can take it: on a terminal one live status line at the bottom (log lines scroll above it),
// otherwise plain log lines at a modest rate (every 10% or 10 s), so that files and CI logs stay
// readable. One step is shown at a time per process; a nested step replaces its parent's line
// until it finishes.
//
//   Progress p("index", "reading headers", files.size(), "files");
//   for (...) { ...; p.advance(); }
//   p.finish("1,024 files, 3 unreadable");
//
// Thread-safe: advance() may be called from worker threads.
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>

namespace fedrad {

enum class ProgressMode {
  kAuto,   // live when stderr is a terminal (and TERM is not "dumb"), else plain
  kLive,
  kPlain,
  kOff,    // nothing but the final line of each step
};

// Process-wide; the CLI's --progress sets it, FEDRAD_PROGRESS (auto|live|plain|off) is the
// default, and `simulate` gives its site processes plain mode (they share the terminal).
void set_progress_mode(ProgressMode mode);
ProgressMode progress_mode();          // the mode as resolved (never kAuto)
bool parse_progress_mode(const std::string& text, ProgressMode* mode);

class Progress {
 public:
  // total = 0 when unknown (no percentage or ETA, only counts and rate).
  Progress(std::string component, std::string what, uint64_t total, std::string unit = "");
  ~Progress();  // finish() if not done
  Progress(const Progress&) = delete;
  Progress& operator=(const Progress&) = delete;

  void advance(uint64_t n = 1);
  void set(uint64_t done);
  void set_detail(std::string detail);  // shown after the counts (e.g. "loss 0.412")
  void set_total(uint64_t total);
  // Logs one info line: "<what>: done <done>/<total> <unit> in <s> s[, <summary>]".
  void finish(const std::string& summary = "");
  // Ends the step without a line (when the caller logs its own summary).
  void dismiss();

  uint64_t done() const;
  // The text of the live line as it would be drawn now (for tests).
  std::string line() const;

 private:
  void maybe_show(bool force);
  bool end();  // marks finished and clears the live line; false if it already was
  std::string line_locked(std::chrono::steady_clock::time_point now) const;

  std::string component_, what_, unit_, detail_;
  uint64_t total_ = 0, done_ = 0;
  std::chrono::steady_clock::time_point start_, last_shown_;
  int last_decile_ = -1;
  bool finished_ = false;
  mutable std::mutex mu_;
};

// "5s", "3m 20s", "1h 02m"; "?" when not finite or negative.
std::string format_duration(double seconds);

}  // namespace fedrad
