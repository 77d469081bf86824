// Socket plumbing shared by the coordinator and the site runner (private to federation/).
#pragma once

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <chrono>
#include <cstdint>
#include <limits>
#include <memory>
#include <string>
#include <zmq.hpp>

#ifdef __linux__
#include <sys/mman.h>
#include <unistd.h>
#endif

#include "common/status.h"
#include "federation/keys.h"
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

// Room for a CHUNK's header around its payload.
inline constexpr size_t kChunkHeaderSlack = 64 * 1024;

// Options both ends need: linger 0 so a failed study never hangs in close, and the size limit
// enforced by libzmq before a frame is buffered: one chunk (larger messages travel in chunks).
inline void configure_socket(zmq::socket_t& socket, size_t max_message_bytes, size_t chunk_bytes) {
  socket.set(zmq::sockopt::linger, 0);
  uint64_t limit = std::min<uint64_t>(max_message_bytes, static_cast<uint64_t>(std::numeric_limits<int64_t>::max()));
  limit = std::min<uint64_t>(limit, static_cast<uint64_t>(chunk_bytes) + kChunkHeaderSlack);
  socket.set(zmq::sockopt::maxmsgsize, static_cast<int64_t>(limit));
  // Transport-level keepalive: a dead TCP peer is noticed even when nobody sends.
  socket.set(zmq::sockopt::heartbeat_ivl, 2000);
  socket.set(zmq::sockopt::heartbeat_timeout, 10000);
}

// CurveZMQ server side: the coordinator's key pair; clients are checked by the ZAP handler.
inline void make_curve_server(zmq::socket_t& socket, const CurveKeyPair& own) {
  socket.set(zmq::sockopt::curve_server, true);
  socket.set(zmq::sockopt::curve_secretkey, own.secret_key);
  socket.set(zmq::sockopt::zap_domain, "fedrad");
}

// CurveZMQ client side: talks only to a server holding the secret half of coordinator_public_key.
inline void make_curve_client(zmq::socket_t& socket, const SiteKeys& keys) {
  socket.set(zmq::sockopt::curve_serverkey, keys.coordinator_public_key);
  socket.set(zmq::sockopt::curve_publickey, keys.own.public_key);
  socket.set(zmq::sockopt::curve_secretkey, keys.own.secret_key);
}

// A sender's first sequence number: its start time in ns since the epoch, so that a restarted
// peer continues above what it sent before (wire.h).
inline uint64_t initial_sequence() {
  return static_cast<uint64_t>(
      std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::system_clock::now().time_since_epoch())
          .count());
}

// Sends an encoded message (its header's sequence already taken from *sequence) as one frame,
// or as CHUNK frames of at most chunk_bytes when it is larger, each with the next sequence.
// `send_frame` sends one frame and returns false when the peer is gone.
template <typename SendFrame>
Status send_possibly_chunked(const std::string& encoded, const wire::Message& header, size_t chunk_bytes,
                             uint64_t* sequence, SendFrame&& send_frame) {
  if (encoded.size() <= chunk_bytes) {
    if (!send_frame(encoded)) return io_error("peer unreachable");
    return ok_status();
  }
  wire::Chunker chunker(encoded, header, /*transfer=*/header.sequence, chunk_bytes);
  for (uint32_t i = 0; i < chunker.count(); ++i) {
    FEDRAD_ASSIGN_OR_RETURN(std::string frame, chunker.chunk(i, ++*sequence));
    if (!send_frame(frame)) return io_error("peer unreachable");
  }
  return ok_status();
}

// Frame k of `framed` as a ZeroMQ message that refers to the shared buffer instead of copying it:
// the buffer lives until the last message made from it has left (libzmq frees each one, on its
// I/O thread, after sending it). So one encoded model goes to every site without a copy per site.
inline zmq::message_t shared_frame(const std::shared_ptr<const wire::Framed>& framed, size_t k) {
  auto* hold = new std::shared_ptr<const wire::Framed>(framed);
  const auto [offset, size] = framed->frames[k];
  try {
    return zmq::message_t(const_cast<char*>(framed->bytes.data()) + offset, size,
                          [](void*, void* hint) { delete static_cast<std::shared_ptr<const wire::Framed>*>(hint); },
                          hold);
  } catch (...) {
    delete hold;
    throw;
  }
}

// Gives back the memory of the whole pages inside [data, data + size) at once (they read as
// zeros afterwards): for a buffer whose contents have been consumed and that is freed soon, e.g.
// a large update's reassembly buffer, tensor by tensor as the update is folded in. Linux only
// (elsewhere a no-op).
inline void release_pages(const void* data, size_t size) {
#ifdef __linux__
  static const uintptr_t page = static_cast<uintptr_t>(::sysconf(_SC_PAGESIZE));
  const uintptr_t begin = reinterpret_cast<uintptr_t>(data);
  const uintptr_t first = (begin + page - 1) / page * page;
  const uintptr_t last = (begin + size) / page * page;
  if (last > first) ::madvise(reinterpret_cast<void*>(first), last - first, MADV_DONTNEED);
#else
  (void)data;
  (void)size;
#endif
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
