// Where tests find ../shared/data (real images; never copied into the repo).
#pragma once

#include <cstdlib>
#include <filesystem>
#include <string>

#include <unistd.h>

#include "test_paths.h"

namespace fedrad::testing {

// FEDRAD_DATA overrides; otherwise ../shared/data beside the project, as CI lays it out.
inline std::string shared_data() {
  if (const char* env = std::getenv("FEDRAD_DATA")) return env;
  return FEDRAD_SHARED_DATA;
}

inline std::string pneumonia_site(const std::string& site, const std::string& split) {
  return shared_data() + "/pneumonia/" + site + "/" + split;
}

// A fresh, empty folder under the build tree for one test's files.
inline std::string temp_dir(const std::string& name) {
  namespace fs = std::filesystem;
  fs::path p = fs::temp_directory_path() / ("fedrad-test-" + name + "-" + std::to_string(::getpid()));
  fs::remove_all(p);
  fs::create_directories(p);
  return p.string();
}

}  // namespace fedrad::testing
