// Liveness and large messages (issue 6): a site whose update is still arriving, chunk after chunk,
// is alive even when its heartbeats are not getting through; a site that says nothing is not.
// A hand-driven site over a real socket sends its FIT_RES in small chunks, slowly, and no
// heartbeats at all, to a coordinator with a liveness window much shorter than the transfer.
#include <gtest/gtest.h>

#include <chrono>
#include <future>
#include <string>
#include <thread>
#include <zmq.hpp>

#include "federation/federation.h"
#include "federation/wire.h"
#include "tests/test_data.h"

namespace fedrad::fed {
namespace {

using fedrad::testing::free_port;

constexpr size_t kChunk = 1024;  // the smallest chunk size a coordinator accepts

Weights model_of(size_t values) {
  Weights w(1);
  w[0].name = "w";
  w[0].shape = {static_cast<int64_t>(values)};
  w[0].data.assign(values, 0.5f);
  return w;
}

// A site speaking the wire protocol by hand (plain sockets, no keys).
class SlowSite {
 public:
  explicit SlowSite(const std::string& address) : socket_(ctx_, zmq::socket_type::dealer) {
    socket_.set(zmq::sockopt::linger, 0);
    socket_.connect(address);
  }

  void send_message(wire::Body body, uint32_t round) {
    wire::Message m = header(round);
    m.body = std::move(body);
    auto enc = wire::encode(m);
    ASSERT_TRUE(enc.ok());
    socket_.send(zmq::buffer(enc->bytes), zmq::send_flags::none);
  }

  // The message in chunks of kChunk bytes, `gap` apart (and nothing else in between).
  void send_chunked(wire::Body body, uint32_t round, std::chrono::milliseconds gap) {
    wire::Message m = header(round);
    m.body = std::move(body);
    auto enc = wire::encode(m);
    ASSERT_TRUE(enc.ok());
    wire::Chunker chunker(enc->bytes, m, m.sequence, kChunk);
    ASSERT_GT(chunker.count(), 10u);
    for (uint32_t i = 0; i < chunker.count(); ++i) {
      if (i > 0) std::this_thread::sleep_for(gap);
      auto c = chunker.chunk(i, ++sequence_);
      ASSERT_TRUE(c.ok());
      socket_.send(zmq::buffer(*c), zmq::send_flags::none);
    }
  }

  // The next whole message from the coordinator (chunks reassembled), or nullopt after 20 s.
  std::optional<wire::Message> receive() {
    socket_.set(zmq::sockopt::rcvtimeo, 20000);
    for (;;) {
      zmq::message_t frame;
      if (!socket_.recv(frame)) return std::nullopt;
      auto d = wire::decode(frame.data(), frame.size(), 1u << 30);
      if (!d.ok()) return std::nullopt;
      if (d->message.type() != wire::MessageType::kChunk) return d->message;
      auto whole = assembler_.add(std::get<wire::Chunk>(std::move(d->message.body)));
      if (!whole.ok()) return std::nullopt;
      if (whole->empty()) continue;
      auto inner = wire::decode(whole->data(), whole->size(), 1u << 30);
      if (!inner.ok()) return std::nullopt;
      return inner->message;
    }
  }

 private:
  wire::Message header(uint32_t round) {
    wire::Message m;
    m.study = "liveness";
    m.round = round;
    m.sender = "slow";
    m.sequence = ++sequence_;
    m.compression = Compression::kNone;
    return m;
  }

  zmq::context_t ctx_;
  zmq::socket_t socket_;
  uint64_t sequence_ = 1;
  wire::ChunkAssembler assembler_{1u << 30};
};

// Runs a 1-round study with the slow site; `chunk_gap` between its update's chunks, or, with
// chunk_gap 0, the whole update sent at once after `silence`.
StatusOr<Weights> run_with_slow_site(std::chrono::milliseconds chunk_gap, std::chrono::milliseconds silence,
                                     bool* site_ok) {
  const std::string address = "tcp://127.0.0.1:" + std::to_string(free_port());
  CoordinatorOptions o;
  o.bind_address = address;
  o.study = "liveness";
  o.expected_sites = {"slow"};
  o.rounds = 1;
  o.join_timeout_s = 30;
  o.round_timeout_s = 30;
  o.compression = Compression::kNone;
  o.upstream_codec = o.downstream_codec = "none";
  o.chunk_bytes = kChunk;
  o.heartbeat_s = 0.1;  // liveness window: 2 x 0.1 s, far shorter than the slow transfer
  o.heartbeat_misses = 2;
  o.initial_weights = model_of(8000);  // 32 KB: ~32 chunks
  auto coordinator = std::async(std::launch::async, [&] { return run_coordinator(o); });
  *site_ok = false;
  {
    SlowSite site(address);
    site.send_message(wire::Join{10, 2, 42}, 0);
    for (;;) {
      auto m = site.receive();
      if (!m) break;
      if (m->type() == wire::MessageType::kFitIns) {
        wire::FitRes res;
        res.num_examples = 10;
        res.weights = std::get<wire::FitIns>(m->body).weights;
        for (float& v : res.weights[0].data) v += 1;
        if (chunk_gap.count() > 0) {
          site.send_chunked(std::move(res), m->round, chunk_gap);
        } else {
          std::this_thread::sleep_for(silence);
          site.send_chunked(std::move(res), m->round, std::chrono::milliseconds(0));
        }
      } else if (m->type() == wire::MessageType::kEvalIns) {
        site.send_message(wire::EvalRes{0, {}}, m->round);
      } else if (m->type() == wire::MessageType::kShutdown) {
        *site_ok = std::get<wire::Shutdown>(m->body).reason == static_cast<uint32_t>(wire::ShutdownReason::kDone);
        break;
      }
    }
  }
  return coordinator.get();
}

TEST(Liveness, ChunksOfAnUpdateStillArrivingCountAsSignsOfLife) {
  // ~32 chunks 50 ms apart: the transfer takes ~1.6 s, eight times the 0.2 s window, and the
  // site sends no heartbeat; every chunk shows it is alive, so its update is taken.
  bool site_ok = false;
  auto result = run_with_slow_site(std::chrono::milliseconds(50), std::chrono::milliseconds(0), &site_ok);
  ASSERT_TRUE(result.ok()) << result.status().to_string();
  EXPECT_TRUE(site_ok);
  ASSERT_EQ(result->size(), 1u);
  EXPECT_EQ((*result)[0].data[0], 1.5f) << "the slow site's update was aggregated";
}

TEST(Liveness, ASiteThatSaysNothingForTheWindowIsDropped) {
  // The same site, silent for 1.5 s (no heartbeat, no chunk) before its update: taken for dead.
  bool site_ok = false;
  auto result = run_with_slow_site(std::chrono::milliseconds(0), std::chrono::milliseconds(1500), &site_ok);
  ASSERT_FALSE(result.ok());
  EXPECT_NE(result.status().message().find("0 of 1 sites succeeded"), std::string::npos) << result.status().to_string();
}

}  // namespace
}  // namespace fedrad::fed
