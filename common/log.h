// Levelled, timestamped, per-component logging on spdlog. Components ask for their logger once
// (`auto log = fedrad::logger("site");`) and keep it; loggers are thread-safe.
#pragma once

#include <memory>
#include <string>

#include <spdlog/spdlog.h>

namespace fedrad {

enum class Verbosity { kQuiet, kNormal, kVerbose };

// Sets the level of every logger, now and later: quiet = warnings and errors, normal = info,
// verbose = debug. Output goes to stderr so that stdout stays machine-readable (JSON, CSV).
void set_verbosity(Verbosity v);

// Returns (creating on first use) the logger of a component, e.g. "coordinator", "site-a".
std::shared_ptr<spdlog::logger> logger(const std::string& component);

}  // namespace fedrad
