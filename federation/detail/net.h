// Socket plumbing shared by the coordinator and the site runner (private to federation/).
#pragma once

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <chrono>
#include <cstdint>
#include <limits>
#include <string>
#include <zmq.hpp>

#include "common/status.h"
#include "federation/wire.h"

namespace fedrad::fed::detail {

using Clock = std::chrono::steady_clock;

// Config values such as 1e12 s must not overflow the clock; a century is "forever" here.
inline Clock::time_point deadline_after(double seconds) {
  constexpr double kForever = 100.0 * 365 * 24 * 3600;
  const double s = std::clamp(seconds, 0.0, kForever);
  return Clock::now() + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(s));
}

inline double seconds_since(Clock::time_point start) {
  return std::chrono::duration<double>(Clock::now() - start).count();
}

// Options both ends need: linger 0 so a failed study never hangs in close, and the size limit
// enforced by libzmq before a frame is buffered.
inline void configure_socket(zmq::socket_t& socket, size_t max_message_bytes) {
  socket.set(zmq::sockopt::linger, 0);
  const uint64_t limit =
      std::min<uint64_t>(max_message_bytes, static_cast<uint64_t>(std::numeric_limits<int64_t>::max()));
  socket.set(zmq::sockopt::maxmsgsize, static_cast<int64_t>(limit));
}

// True when `socket` has a message before `deadline`, false when the deadline passed.
inline StatusOr<bool> wait_readable(zmq::socket_t& socket, Clock::time_point deadline) {
  for (;;) {
    const auto now = Clock::now();
    const auto left = std::chrono::ceil<std::chrono::milliseconds>(deadline - now);
    const long ms = left.count() <= 0 ? 0 : static_cast<long>(std::min<int64_t>(left.count(), 1 << 30));
    zmq::pollitem_t item{static_cast<void*>(socket), 0, ZMQ_POLLIN, 0};
    try {
      zmq::poll(&item, 1, std::chrono::milliseconds(ms));
    } catch (const zmq::error_t& e) {
      if (e.num() == EINTR) continue;
      return io_error(std::string("zmq poll: ") + e.what());
    }
    if (item.revents & ZMQ_POLLIN) return true;
    if (Clock::now() >= deadline) return false;
  }
}

// A routing id or other peer-chosen bytes, safe to print in a log line.
inline std::string printable(const std::string& bytes) {
  constexpr size_t kMaxShown = 64;
  std::string out;
  for (size_t i = 0; i < bytes.size() && i < kMaxShown; ++i) {
    const unsigned char c = static_cast<unsigned char>(bytes[i]);
    if (std::isprint(c) && c != '\\') {
      out.push_back(static_cast<char>(c));
    } else {
      static const char* kHex = "0123456789abcdef";
      out += "\\x";
      out.push_back(kHex[c >> 4]);
      out.push_back(kHex[c & 15]);
    }
  }
  if (bytes.size() > kMaxShown) out += "...";
  return out;
}

}  // namespace fedrad::fed::detail
