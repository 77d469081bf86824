// Where tests find ../shared/data (real images; never copied into the repo).
#pragma once

#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/wait.h>

#include <array>
#include <cstdio>
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

// A TCP port on 127.0.0.1 that was free a moment ago.
inline int free_port() {
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof(a);
  if (fd < 0 || ::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof(a)) != 0 ||
      ::getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len) != 0) {
    std::perror("free_port: no free TCP port on 127.0.0.1");
    std::abort();
  }
  const int port = ntohs(a.sin_port);
  ::close(fd);
  return port;
}

// Runs a shell command; returns its stdout and stderr together and sets its exit code.
inline std::string run_command(const std::string& cmd, int* exit_code) {
  std::array<char, 4096> buf{};
  std::string out;
  FILE* p = ::popen((cmd + " 2>&1").c_str(), "r");
  while (p && std::fgets(buf.data(), buf.size(), p)) out += buf.data();
  const int status = p ? ::pclose(p) : -1;
  *exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  return out;
}

}  // namespace fedrad::testing
