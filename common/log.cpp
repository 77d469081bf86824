#include "common/log.h"

#include <mutex>

#include <spdlog/sinks/sink.h>

namespace fedrad {
namespace detail {
std::shared_ptr<spdlog::sinks::sink> stderr_sink();  // common/progress.cpp
}  // namespace detail
namespace {

std::mutex g_mu;
spdlog::level::level_enum g_level = spdlog::level::info;

}  // namespace

void set_verbosity(Verbosity v) {
  std::lock_guard<std::mutex> lock(g_mu);
  g_level = v == Verbosity::kQuiet     ? spdlog::level::warn
            : v == Verbosity::kVerbose ? spdlog::level::debug
                                       : spdlog::level::info;
  spdlog::apply_all([](const std::shared_ptr<spdlog::logger>& l) { l->set_level(g_level); });
}

std::shared_ptr<spdlog::logger> logger(const std::string& component) {
  std::lock_guard<std::mutex> lock(g_mu);
  if (auto existing = spdlog::get(component)) return existing;
  // One sink for all components: it keeps log lines and the live progress line apart.
  auto l = std::make_shared<spdlog::logger>(component, detail::stderr_sink());
  spdlog::register_logger(l);
  l->set_pattern("%Y-%m-%d %H:%M:%S.%e %^%-5l%$ [%n] %v");
  l->set_level(g_level);
  return l;
}

}  // namespace fedrad
