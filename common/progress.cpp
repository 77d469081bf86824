#include "common/progress.h"

#include <unistd.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>

#include <spdlog/sinks/stdout_color_sinks.h>

#include "common/log.h"

namespace fedrad {
namespace {

// The one live line of this process: what is drawn at the bottom of the terminal now.
struct StatusLine {
  std::mutex mu;
  std::string text;  // empty: nothing drawn
  const Progress* owner = nullptr;
};

StatusLine& status_line() {
  static StatusLine* s = new StatusLine;  // never destroyed: loggers may log during exit
  return *s;
}

std::mutex g_mode_mu;
ProgressMode g_mode = ProgressMode::kAuto;
bool g_mode_resolved = false;

ProgressMode resolve(ProgressMode m) {
  if (m != ProgressMode::kAuto) return m;
  const char* term = std::getenv("TERM");
  const bool tty = ::isatty(STDERR_FILENO) == 1 && !(term != nullptr && std::strcmp(term, "dumb") == 0);
  return tty ? ProgressMode::kLive : ProgressMode::kPlain;
}

void draw_locked(StatusLine& s) {
  if (s.text.empty()) return;
  std::fputs("\r\033[K", stderr);
  std::fputs(s.text.c_str(), stderr);
  std::fflush(stderr);
}

void clear_locked(StatusLine& s) {
  if (s.text.empty()) return;
  std::fputs("\r\033[K", stderr);
  std::fflush(stderr);
}

std::string with_unit(uint64_t n, const std::string& unit) {
  return unit.empty() ? std::to_string(n) : std::to_string(n) + " " + unit;
}

}  // namespace

namespace detail {

// The stderr sink of every logger: clears the live line before a log line and draws it again
// after, so that log output scrolls above the status line instead of through it.
class ProgressAwareSink : public spdlog::sinks::sink {
 public:
  ProgressAwareSink() : inner_(std::make_shared<spdlog::sinks::stderr_color_sink_mt>()) {}
  void log(const spdlog::details::log_msg& msg) override {
    StatusLine& s = status_line();
    std::lock_guard<std::mutex> lock(s.mu);
    clear_locked(s);
    inner_->log(msg);
    inner_->flush();
    draw_locked(s);
  }
  void flush() override { inner_->flush(); }
  void set_pattern(const std::string& pattern) override { inner_->set_pattern(pattern); }
  void set_formatter(std::unique_ptr<spdlog::formatter> f) override { inner_->set_formatter(std::move(f)); }

 private:
  std::shared_ptr<spdlog::sinks::stderr_color_sink_mt> inner_;
};

std::shared_ptr<spdlog::sinks::sink> stderr_sink() {
  static std::shared_ptr<spdlog::sinks::sink> sink = std::make_shared<ProgressAwareSink>();
  return sink;
}

}  // namespace detail

void set_progress_mode(ProgressMode mode) {
  std::lock_guard<std::mutex> lock(g_mode_mu);
  g_mode = resolve(mode);
  g_mode_resolved = true;
}

ProgressMode progress_mode() {
  std::lock_guard<std::mutex> lock(g_mode_mu);
  if (!g_mode_resolved) {
    ProgressMode from_env = ProgressMode::kAuto;
    if (const char* env = std::getenv("FEDRAD_PROGRESS")) parse_progress_mode(env, &from_env);
    g_mode = resolve(from_env);
    g_mode_resolved = true;
  }
  return g_mode;
}

bool parse_progress_mode(const std::string& text, ProgressMode* mode) {
  if (text == "auto") *mode = ProgressMode::kAuto;
  else if (text == "live") *mode = ProgressMode::kLive;
  else if (text == "plain") *mode = ProgressMode::kPlain;
  else if (text == "off") *mode = ProgressMode::kOff;
  else return false;
  return true;
}

std::string format_duration(double seconds) {
  if (!(seconds >= 0) || !std::isfinite(seconds)) return "?";
  const long t = std::lround(seconds);
  char buf[32];
  if (t >= 3600) std::snprintf(buf, sizeof(buf), "%ldh %02ldm", t / 3600, (t % 3600) / 60);
  else if (t >= 60) std::snprintf(buf, sizeof(buf), "%ldm %02lds", t / 60, t % 60);
  else std::snprintf(buf, sizeof(buf), "%lds", t);
  return buf;
}

Progress::Progress(std::string component, std::string what, uint64_t total, std::string unit)
    : component_(std::move(component)),
      what_(std::move(what)),
      unit_(std::move(unit)),
      total_(total),
      start_(std::chrono::steady_clock::now()),
      last_shown_(start_) {}

Progress::~Progress() {
  bool finished;
  {
    std::lock_guard<std::mutex> lock(mu_);
    finished = finished_;
  }
  if (!finished) finish();
}

void Progress::advance(uint64_t n) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    done_ += n;
  }
  maybe_show(false);
}

void Progress::set(uint64_t done) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    done_ = done;
  }
  maybe_show(false);
}

void Progress::set_detail(std::string detail) {
  std::lock_guard<std::mutex> lock(mu_);
  detail_ = std::move(detail);
}

void Progress::set_total(uint64_t total) {
  std::lock_guard<std::mutex> lock(mu_);
  total_ = total;
}

uint64_t Progress::done() const {
  std::lock_guard<std::mutex> lock(mu_);
  return done_;
}

std::string Progress::line() const {
  std::lock_guard<std::mutex> lock(mu_);
  return line_locked(std::chrono::steady_clock::now());
}

std::string Progress::line_locked(std::chrono::steady_clock::time_point now) const {
  const double elapsed = std::chrono::duration<double>(now - start_).count();
  std::string out = what_ + ": ";
  if (total_ > 0) {
    const double frac = std::min(1.0, static_cast<double>(done_) / static_cast<double>(total_));
    const int width = 20;
    const int filled = static_cast<int>(frac * width);
    out += "[" + std::string(filled, '#') + std::string(width - filled, '.') + "] ";
    out += std::to_string(done_) + "/" + with_unit(total_, unit_);
    char pct[16];
    std::snprintf(pct, sizeof pct, " %3.0f%%", frac * 100);
    out += pct;
  } else {
    out += with_unit(done_, unit_);
  }
  if (elapsed > 0.5 && done_ > 0) {
    const double rate = static_cast<double>(done_) / elapsed;
    char buf[48];
    std::snprintf(buf, sizeof buf, rate >= 10 ? ", %.0f/s" : ", %.2f/s", rate);
    out += buf;
    if (total_ > done_) out += ", " + format_duration(static_cast<double>(total_ - done_) / rate) + " left";
  }
  if (!detail_.empty()) out += ", " + detail_;
  return out;
}

void Progress::maybe_show(bool force) {
  const ProgressMode mode = progress_mode();
  if (mode == ProgressMode::kOff) return;
  const auto now = std::chrono::steady_clock::now();
  std::string text;
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (finished_) return;
    const double since = std::chrono::duration<double>(now - last_shown_).count();
    if (mode == ProgressMode::kLive) {
      if (!force && since < 0.1 && done_ != total_) return;
    } else {
      // Plain: at each new tenth of the total, but not more than every 2 s; or every 10 s.
      const int decile = total_ > 0 ? static_cast<int>(10 * std::min(done_, total_) / total_) : -1;
      const bool new_decile = decile > last_decile_ && since >= 2.0;
      if (!force && !new_decile && since < 10.0) return;
      if (decile >= 0) last_decile_ = std::max(last_decile_, decile);
    }
    last_shown_ = now;
    text = line_locked(now);
  }
  if (mode == ProgressMode::kLive) {
    StatusLine& s = status_line();
    std::lock_guard<std::mutex> lock(s.mu);
    s.owner = this;
    s.text = text;
    draw_locked(s);
  } else {
    logger(component_)->info("{}", text);
  }
}

bool Progress::end() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (finished_) return false;
    finished_ = true;
  }
  StatusLine& s = status_line();
  std::lock_guard<std::mutex> lock(s.mu);
  if (s.owner == this) {
    clear_locked(s);
    s.text.clear();
    s.owner = nullptr;
  }
  return true;
}

void Progress::dismiss() { end(); }

void Progress::finish(const std::string& summary) {
  if (!end()) return;
  double elapsed;
  uint64_t done, total;
  {
    std::lock_guard<std::mutex> lock(mu_);
    elapsed = std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
    done = done_;
    total = total_;
  }
  std::string counts = total > 0 && done != total ? std::to_string(done) + "/" + with_unit(total, unit_)
                                                  : with_unit(done, unit_);
  char secs[32];
  std::snprintf(secs, sizeof secs, "%.1f s", elapsed);
  logger(component_)->info("{}: done, {} in {}{}", what_, counts, secs, summary.empty() ? "" : ", " + summary);
}

}  // namespace fedrad
