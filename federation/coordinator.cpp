#include <algorithm>
#include <atomic>
#include <cmath>
#include <map>
#include <optional>
#include <thread>
#include <string>
#include <vector>
#include <zmq.hpp>
#include <zmq_addon.hpp>

#include "common/log.h"
#include "federation/checkpoint.h"
#include "federation/codec.h"
#include "federation/detail/net.h"
#include "federation/federation.h"
#include "federation/wire.h"

namespace fedrad::fed {
namespace {

using detail::Clock;
using detail::printable;
using wire::MessageType;

constexpr const char* kSender = "coordinator";
// Long enough for SHUTDOWN to leave the host, short enough that a vanished site cannot hold up
// the end of a study.
constexpr int kShutdownLingerMs = 1000;

struct Peer {
  std::string site_id;
  std::string routing_id;
  uint64_t num_train = 0;
  uint64_t num_val = 0;
  bool synced = false;  // holds the coordinator's downstream copy (else it gets the full model)
  Clock::time_point last_seen = Clock::now();
  uint64_t session = 0;  // of the site process that joined (wire::Join::session)
};

// What goes down to the sites in one round: an encoded update for sites that hold the previous
// copy, the full model (plain) for those that do not; after it every site holds `next_copy`.
struct Downstream {
  wire::EncodedUpdate update;  // empty when the plain weights go to everybody
  Weights next_copy;
};

const wire::EncodedUpdate* update_of(const wire::Body& body) {
  if (auto* b = std::get_if<wire::FitIns>(&body)) return &b->update;
  if (auto* b = std::get_if<wire::FitRes>(&body)) return &b->update;
  if (auto* b = std::get_if<wire::EvalIns>(&body)) return &b->update;
  return nullptr;
}

struct Incoming {
  std::string routing_id;
  std::string identity;  // the site id: the CurveZMQ key's owner, or the header's sender in plain mode
  wire::Message message;
  uint64_t wire_size = 0;
  uint64_t raw_size = 0;
};

// What one instruction/reply exchange with every site produced. Replies are handed to the
// caller as they arrive (streaming) and not kept here.
struct Exchange {
  std::vector<SiteRoundLog> logs;  // per site: identity, bytes, outcome
  std::vector<EvalReport> evals;   // per site: its evaluation of the model it received
  std::vector<bool> answered;      // per site: a reply for this round came in time
  std::vector<bool> holds_copy;    // per site: it decoded the model it was sent (status 0)
};

int code_of(StatusCode c) { return static_cast<int>(c); }

const char* reject_reason_name(wire::RejectReason r) {
  switch (r) {
    case wire::RejectReason::kWrongStudy:
      return "wrong study";
    case wire::RejectReason::kUnknownSite:
      return "site not expected in this study";
    case wire::RejectReason::kUnexpected:
      return "study already started";
    case wire::RejectReason::kRejoin:
      return "not joined (coordinator restarted?): join again";
  }
  return "unknown";
}

// The ZAP handler (RFC 27) of a CurveZMQ coordinator: admits a client whose public key is on the
// allow-list and names it by its site id (the User-Id of its messages), refuses the rest.
// Runs on its own thread with its own socket in the coordinator's context.
class ZapHandler {
 public:
  ZapHandler(zmq::context_t& ctx, const CoordinatorKeys& keys, std::shared_ptr<spdlog::logger> log,
             std::function<void(const std::string&, const std::string&)> on_refused)
      : log_(std::move(log)), on_refused_(std::move(on_refused)) {
    for (const auto& [site, z85] : keys.sites) {
      std::string bin(32, '\0');
      if (zmq_z85_decode(reinterpret_cast<uint8_t*>(bin.data()), z85.c_str()) != nullptr) by_key_[bin] = site;
    }
    socket_ = zmq::socket_t(ctx, zmq::socket_type::rep);
    socket_.set(zmq::sockopt::linger, 0);
    socket_.bind("inproc://zeromq.zap.01");
    thread_ = std::thread([this] { serve(); });
  }
  ~ZapHandler() {
    stop_ = true;
    thread_.join();
  }

 private:
  void serve() {
    while (!stop_) {
      zmq::pollitem_t item{static_cast<void*>(socket_), 0, ZMQ_POLLIN, 0};
      try {
        zmq::poll(&item, 1, std::chrono::milliseconds(100));
        if (!(item.revents & ZMQ_POLLIN)) continue;
        std::vector<zmq::message_t> req;
        if (!zmq::recv_multipart(socket_, std::back_inserter(req))) continue;
        reply(req);
      } catch (const zmq::error_t& e) {
        if (e.num() == ETERM) break;
        log_->warn("ZAP handler: {}", e.what());
      }
    }
    socket_.close();
  }

  void reply(const std::vector<zmq::message_t>& req) {
    // version, request id, domain, address, identity, mechanism, credentials...
    std::string status = "400", text = "malformed ZAP request", user;
    const std::string request_id = req.size() > 1 ? req[1].to_string() : "";
    if (req.size() >= 7 && req[0].to_string() == "1.0" && req[5].to_string() == "CURVE" && req[6].size() == 32) {
      const std::string address = req[3].to_string();
      const std::string key = req[6].to_string();
      auto it = by_key_.find(key);
      if (it != by_key_.end()) {
        status = "200";
        text = "OK";
        user = it->second;
        log_->debug("CurveZMQ: admitted site '{}' from {}", user, address);
      } else {
        char z85[41] = {0};
        zmq_z85_encode(z85, reinterpret_cast<const uint8_t*>(key.data()), 32);
        text = "public key not on the allow-list";
        const std::string why = std::string("refused a connection: public key ") + z85 + " is not on the allow-list";
        log_->warn("{} {}", address, why);
        if (on_refused_) on_refused_(address, why);
      }
    } else {
      log_->warn("CurveZMQ: refused a malformed or non-CURVE authentication request");
      if (on_refused_) on_refused_("?", "malformed or non-CURVE authentication request");
    }
    std::vector<zmq::const_buffer> out = {zmq::str_buffer("1.0"), zmq::buffer(request_id), zmq::buffer(status),
                                          zmq::buffer(text), zmq::buffer(user), zmq::buffer(std::string())};
    zmq::send_multipart(socket_, out);
  }

  std::shared_ptr<spdlog::logger> log_;
  std::function<void(const std::string&, const std::string&)> on_refused_;
  std::map<std::string, std::string> by_key_;  // 32-byte public key -> site id
  zmq::socket_t socket_;
  std::atomic<bool> stop_{false};
  std::thread thread_;
};

double mb(uint64_t bytes) { return static_cast<double>(bytes) / (1024.0 * 1024.0); }

class Coordinator {
 public:
  explicit Coordinator(const CoordinatorOptions& options)
      : opt_(options), log_(logger("coordinator")), sequence_(detail::initial_sequence()) {}

  StatusOr<Weights> run() {
    FEDRAD_RETURN_IF_ERROR(validate_options());
    auto strategy = make_strategy(opt_.strategy);
    if (!strategy.ok()) return strategy.status().with_context("coordinator");
    strategy_ = std::move(strategy).value();
    std::unique_ptr<ZapHandler> zap;
    auto finish = [&](StatusOr<Weights> result) {
      if (!result.ok()) shutdown_sites(wire::ShutdownReason::kAborted);
      socket_.close();
      zap.reset();
      return result;
    };
    try {
      if (opt_.keys.enabled()) {
        FEDRAD_RETURN_IF_ERROR(require_curve());
        zap = std::make_unique<ZapHandler>(ctx_, opt_.keys, log_, opt_.on_refused);
      }
      Status opened = open_socket();
      if (!opened.ok()) return finish(opened);
      return finish(run_study());
    } catch (const zmq::error_t& e) {
      return finish(io_error("coordinator at " + opt_.bind_address + ": zmq: " + e.what()));
    } catch (const std::exception& e) {
      return finish(internal_error("coordinator at " + opt_.bind_address + ": " + e.what()));
    }
  }

 private:
  Status validate_options() const {
    if (opt_.expected_sites.empty()) return invalid_argument("coordinator: no expected sites");
    if (opt_.rounds < 0) return invalid_argument("coordinator: negative number of rounds");
    if (opt_.min_sites < 0 || opt_.min_sites > static_cast<int>(opt_.expected_sites.size()))
      return invalid_argument("coordinator: min_sites " + std::to_string(opt_.min_sites) + " is not in 0.." +
                              std::to_string(opt_.expected_sites.size()));
    if (opt_.initial_weights.empty()) return invalid_argument("coordinator: no initial weights");
    if (opt_.chunk_bytes < 1024) return invalid_argument("coordinator: chunk_bytes below 1024");
    if (!(opt_.heartbeat_s > 0) || opt_.heartbeat_misses < 1)
      return invalid_argument("coordinator: heartbeat_s must be > 0 and heartbeat_misses >= 1");
    if (opt_.resume && opt_.state_dir.empty()) return invalid_argument("coordinator: resume needs a state_dir");
    if (opt_.keys.enabled()) {
      for (const std::string& s : opt_.expected_sites)
        if (!opt_.keys.sites.count(s))
          return invalid_argument("coordinator: no public key for site '" + s + "' on the allow-list");
    }
    auto up = CodecSpec::parse(opt_.upstream_codec);
    if (!up.ok()) return invalid_argument("coordinator: upstream codec: " + up.status().message());
    auto down = CodecSpec::parse(opt_.downstream_codec);
    if (!down.ok()) return invalid_argument("coordinator: downstream codec: " + down.status().message());
    return ok_status();
  }

  Status open_socket() {
    socket_ = zmq::socket_t(ctx_, zmq::socket_type::router);
    detail::configure_socket(socket_, opt_.max_message_bytes, opt_.chunk_bytes);
    // A send to a site that vanished must fail loudly rather than be dropped silently.
    socket_.set(zmq::sockopt::router_mandatory, 1);
    if (opt_.keys.enabled()) detail::make_curve_server(socket_, opt_.keys.own);
    try {
      socket_.bind(opt_.bind_address);
    } catch (const zmq::error_t& e) {
      return io_error("coordinator cannot bind " + opt_.bind_address + ": " + e.what());
    }
    if (opt_.keys.enabled()) {
      log_->info("study '{}': listening on {} (CurveZMQ, {} site keys on the allow-list), waiting for {} sites",
                 opt_.study, opt_.bind_address, opt_.keys.sites.size(), opt_.expected_sites.size());
    } else {
      log_->warn("study '{}': listening on {} WITHOUT encryption or authentication (no keys); waiting for {} sites",
                 opt_.study, opt_.bind_address, opt_.expected_sites.size());
    }
    return ok_status();
  }

  size_t needed_sites() const {
    return opt_.min_sites > 0 ? static_cast<size_t>(opt_.min_sites) : sites_.size();
  }

  StatusOr<Weights> run_study() {
    down_spec_ = CodecSpec::parse(opt_.downstream_codec).value();
    plain_model_bytes_ = wire::plain_weights_bytes(opt_.initial_weights);
    log_->info("codecs: upstream '{}', downstream '{}'; strategy {}{}", CodecSpec::parse(opt_.upstream_codec)->to_string(),
               down_spec_.to_string(), strategy_->name(), strategy_->streaming() ? " (streaming)" : "");
    Weights global = opt_.initial_weights;
    uint32_t first_round = 1;
    if (!opt_.state_dir.empty()) {
      if (opt_.resume) {
        FEDRAD_ASSIGN_OR_RETURN(first_round, resume_from_checkpoint(&global));
      } else {
        FEDRAD_RETURN_IF_ERROR(clear_checkpoints(opt_.state_dir));
      }
    }
    FEDRAD_RETURN_IF_ERROR(join_phase());
    for (uint32_t r = first_round; r <= static_cast<uint32_t>(opt_.rounds); ++r) {
      FEDRAD_ASSIGN_OR_RETURN(global, run_round(r, std::move(global)));
    }
    FEDRAD_ASSIGN_OR_RETURN(Weights evaluated, run_final_evaluation(global));
    shutdown_sites(wire::ShutdownReason::kDone);
    log_->info("study '{}' done after {} rounds", opt_.study, opt_.rounds);
    return evaluated;
  }

  // Loads the newest checkpoint; returns the first round still to run.
  StatusOr<uint32_t> resume_from_checkpoint(Weights* global) {
    std::vector<std::string> skipped;
    FEDRAD_ASSIGN_OR_RETURN(std::optional<Checkpoint> c, read_latest_checkpoint(opt_.state_dir, &skipped));
    for (const std::string& s : skipped) log_->warn("resume: skipped a damaged checkpoint: {}", s);
    if (!c) {
      log_->warn("resume: no checkpoint in {}: starting at round 1", opt_.state_dir);
      return 1u;
    }
    if (c->study != opt_.study)
      return invalid_argument(checkpoint_path(opt_.state_dir, c->round) + ": checkpoint of study '" + c->study +
                              "', not '" + opt_.study + "'");
    Status compatible = check_compatible(opt_.initial_weights, c->global);
    if (!compatible.ok())
      return invalid_argument(checkpoint_path(opt_.state_dir, c->round) +
                              ": its model does not match the configured one: " + compatible.message());
    if (c->round > static_cast<uint32_t>(opt_.rounds))
      return invalid_argument(checkpoint_path(opt_.state_dir, c->round) + ": round " + std::to_string(c->round) +
                              " is beyond the study's " + std::to_string(opt_.rounds) + " rounds");
    Status restored = strategy_->restore_state(c->strategy_state);
    if (!restored.ok()) return restored.with_context("resume: strategy state of round " + std::to_string(c->round));
    *global = std::move(c->global);
    log_->info("resumed study '{}' after round {} from {}", opt_.study, c->round,
               checkpoint_path(opt_.state_dir, c->round));
    if (opt_.on_resume) opt_.on_resume(c->log, *global);
    return c->round + 1;
  }

  Status save_checkpoint(uint32_t round, const Weights& global, const RoundLog& log) {
    if (opt_.state_dir.empty()) return ok_status();
    Checkpoint c;
    c.round = round;
    c.study = opt_.study;
    c.global = global;
    c.strategy_state = strategy_->state();
    c.log = log;
    Status st = write_checkpoint(opt_.state_dir, c);
    if (!st.ok()) return st.with_context("round " + std::to_string(round) + " checkpoint");
    return ok_status();
  }

  // ---- joining -------------------------------------------------------------------------------

  Status join_phase() {
    const auto deadline = detail::deadline_after(opt_.join_timeout_s);
    while (sites_.size() < opt_.expected_sites.size()) {
      FEDRAD_ASSIGN_OR_RETURN(std::optional<Incoming> in, receive(deadline));
      if (!in) break;
      if (in->message.type() == MessageType::kJoin) {
        handle_join(*in);
      } else {
        refuse(in->identity, std::string("dropped ") + wire::message_type_name(in->message.type()) +
                                 ": the study has not started");
      }
    }
    merge_late_joiners();
    const size_t needed = static_cast<size_t>(std::max(opt_.min_sites, 1));
    if (sites_.size() < needed)
      return timeout_error("study '" + opt_.study + "': " + std::to_string(sites_.size()) + " of " +
                           std::to_string(opt_.expected_sites.size()) + " sites joined within " +
                           std::to_string(opt_.join_timeout_s) + " s, need " + std::to_string(needed));
    if (sites_.size() < opt_.expected_sites.size())
      log_->warn("join timeout: going on with {} of {} sites", sites_.size(), opt_.expected_sites.size());
    return ok_status();
  }

  // Sites that joined during a round take part from the next one; expected order, not arrival
  // order, so that logs and results line up across runs.
  void merge_late_joiners() {
    for (Peer& p : late_) sites_.push_back(std::move(p));
    late_.clear();
    std::sort(sites_.begin(), sites_.end(), [&](const Peer& a, const Peer& b) {
      return expected_index(a.site_id) < expected_index(b.site_id);
    });
  }

  size_t expected_index(const std::string& site_id) const {
    return static_cast<size_t>(std::find(opt_.expected_sites.begin(), opt_.expected_sites.end(), site_id) -
                               opt_.expected_sites.begin());
  }
  bool expected(const std::string& site_id) const { return expected_index(site_id) < opt_.expected_sites.size(); }

  Peer* find_site(const std::string& site_id) {
    for (Peer& p : sites_)
      if (p.site_id == site_id) return &p;
    for (Peer& p : late_)
      if (p.site_id == site_id) return &p;
    return nullptr;
  }

  // Returns the index in sites_ of a site that joined again (it restarted and lost what it was
  // doing), or -1.
  long handle_join(const Incoming& in) {
    const wire::Message& m = in.message;
    const auto& join = std::get<wire::Join>(m.body);
    if (m.study != opt_.study) {
      reject(in, wire::RejectReason::kWrongStudy);
      return -1;
    }
    if (!expected(in.identity)) {
      reject(in, wire::RejectReason::kUnknownSite);
      return -1;
    }
    long rejoined = -1;
    Peer* known = find_site(in.identity);
    if (known != nullptr && known->session == join.session) {
      // The same site process asking again (e.g. after several requests to rejoin): nothing lost.
      known->routing_id = in.routing_id;
      known->last_seen = Clock::now();
      send_best_effort(in.routing_id, make_message(m.study, 0, wire::JoinAck{}));
      return -1;
    }
    if (known != nullptr) {
      known->session = join.session;
      known->routing_id = in.routing_id;
      known->num_train = join.num_train;
      known->num_val = join.num_val;
      known->synced = false;  // a restarted site has lost its copy of the model
      known->last_seen = Clock::now();
      if (known >= sites_.data() && known < sites_.data() + sites_.size()) rejoined = known - sites_.data();
      log_->info("site '{}' joined again", in.identity);
    } else {
      Peer p{in.identity, in.routing_id, join.num_train, join.num_val};
      p.session = join.session;
      if (started_) {
        late_.push_back(std::move(p));
        log_->info("site '{}' joined late ({} train, {} val examples): it takes part from the next round",
                   in.identity, join.num_train, join.num_val);
      } else {
        sites_.push_back(std::move(p));
        log_->info("site '{}' joined ({} train, {} val examples), {}/{}", in.identity, join.num_train,
                   join.num_val, sites_.size(), opt_.expected_sites.size());
      }
    }
    send_best_effort(in.routing_id, make_message(m.study, 0, wire::JoinAck{}));
    return rejoined;
  }

  void reject(const Incoming& in, wire::RejectReason reason) {
    refuse(printable(in.identity), std::string("refused JOIN (study '") + printable(in.message.study) +
                                       "'): " + reject_reason_name(reason));
    // Addressed in the requester's study so that a site configured for another study reads it.
    send_best_effort(in.routing_id,
                     make_message(in.message.study, 0, wire::Reject{static_cast<uint32_t>(reason)}));
  }

  void refuse(const std::string& peer, const std::string& why) {
    log_->warn("from '{}': {}", printable(peer), why);
    if (opt_.on_refused) opt_.on_refused(printable(peer), why);
  }

  // ---- messaging -----------------------------------------------------------------------------

  wire::Message make_message(const std::string& study, uint32_t round, wire::Body body) {
    wire::Message m;
    m.study = study;
    m.round = round;
    m.sender = kSender;
    m.compression = opt_.compression;
    m.body = std::move(body);
    return m;
  }

  bool send_frame(const std::string& routing_id, const std::string& bytes) {
    try {
      socket_.send(zmq::buffer(routing_id), zmq::send_flags::sndmore);
      socket_.send(zmq::buffer(bytes), zmq::send_flags::none);
      return true;
    } catch (const zmq::error_t& e) {
      log_->warn("send to '{}' failed: {}", printable(routing_id), e.what());
      return false;
    }
  }

  // Sends an encoded message (sequence fields filled in here), in chunks when it is large;
  // false (logged) when the peer is gone.
  bool send_encoded(const std::string& routing_id, const wire::Message& header, const std::string& bytes) {
    Status st = detail::send_possibly_chunked(bytes, header, opt_.chunk_bytes, &sequence_,
                                              [&](const std::string& f) { return send_frame(routing_id, f); });
    return st.ok();
  }

  // Encodes `m` with the next sequence number.
  StatusOr<wire::Encoded> encode_next(wire::Message& m) {
    m.sequence = ++sequence_;
    return wire::encode(m, opt_.zstd_level);
  }

  void send_best_effort(const std::string& routing_id, wire::Message m) {
    auto enc = encode_next(m);
    if (!enc.ok()) {
      log_->error("cannot encode {}: {}", wire::message_type_name(m.type()), enc.status().to_string());
      return;
    }
    send_encoded(routing_id, m, enc->bytes);
  }

  // The next acceptable message before `deadline`, or nullopt. Refused input (malformed, from an
  // unknown key or site, replayed, a sender claiming another site's id) is logged and dropped
  // here so that no caller ever sees it; heartbeats are consumed here; chunks are reassembled.
  StatusOr<std::optional<Incoming>> receive(Clock::time_point deadline) {
    for (;;) {
      FEDRAD_ASSIGN_OR_RETURN(bool ready, detail::wait_readable(socket_, deadline));
      if (!ready) return std::optional<Incoming>();
      std::vector<zmq::message_t> frames;
      if (!zmq::recv_multipart(socket_, std::back_inserter(frames), zmq::recv_flags::dontwait)) continue;
      const std::string routing_id = frames.empty() ? std::string() : frames[0].to_string();
      if (frames.size() != 2) {
        refuse(routing_id, "dropped a message of " + std::to_string(frames.size()) + " frames (expected 2)");
        continue;
      }
      std::string key_owner;  // with CurveZMQ: the site whose key this connection authenticated
      if (opt_.keys.enabled()) {
        try {
          key_owner = frames[1].gets("User-Id");
        } catch (const zmq::error_t&) {
        }
        if (key_owner.empty()) {
          refuse(routing_id, "dropped a message without an authenticated key");
          continue;
        }
      }
      const std::string who = key_owner.empty() ? routing_id : key_owner;
      auto decoded = wire::decode(frames[1].data(), frames[1].size(), opt_.max_message_bytes);
      if (!decoded.ok()) {
        refuse(who, "dropped a malformed message: " + decoded.status().to_string());
        continue;
      }
      wire::Message& m = decoded->message;
      if (!key_owner.empty() && m.sender != key_owner) {
        refuse(who, "dropped " + std::string(wire::message_type_name(m.type())) + " claiming to be from '" +
                        printable(m.sender) + "': the connection's key belongs to '" + key_owner + "'");
        continue;
      }
      const std::string identity = key_owner.empty() ? m.sender : key_owner;
      if (!expected(identity)) {
        if (m.type() == MessageType::kJoin) {
          Incoming in{routing_id, identity, std::move(m), frames[1].size(), decoded->raw_size};
          reject(in, wire::RejectReason::kUnknownSite);
        } else {
          refuse(identity, std::string("dropped ") + wire::message_type_name(m.type()) + ": not a site of this study");
        }
        continue;
      }
      uint64_t& last = last_sequence_[identity];
      if (m.sequence <= last) {
        refuse(identity, std::string("dropped a replayed or stale ") + wire::message_type_name(m.type()) +
                             " (sequence " + std::to_string(m.sequence) + ", last taken " + std::to_string(last) + ")");
        continue;
      }
      last = m.sequence;
      uint64_t wire_size = frames[1].size();
      uint64_t raw_size = decoded->raw_size;
      if (m.type() == MessageType::kChunk) {
        auto it = assemblers_.try_emplace(identity, opt_.max_message_bytes).first;
        auto whole = it->second.add(std::move(std::get<wire::Chunk>(m.body)));
        if (!whole.ok()) {
          refuse(identity, "dropped a chunked message: " + whole.status().message());
          continue;
        }
        if (whole->empty()) {  // more chunks to come; a chunk is proof of life too
          if (Peer* p = find_site(identity)) p->last_seen = Clock::now();
          continue;
        }
        wire_size = whole->size();
        auto inner = wire::decode(whole->data(), whole->size(), opt_.max_message_bytes);
        if (!inner.ok()) {
          refuse(identity, "dropped a malformed chunked message: " + inner.status().to_string());
          continue;
        }
        if (inner->message.type() == MessageType::kChunk || inner->message.sender != m.sender ||
            inner->message.study != m.study) {
          refuse(identity, "dropped a chunked message whose header disagrees with its chunks");
          continue;
        }
        raw_size = inner->raw_size;
        m = std::move(inner->message);
      }
      Peer* peer = find_site(identity);
      if (peer != nullptr) {
        peer->last_seen = Clock::now();
        if (peer->routing_id != routing_id && m.type() != MessageType::kJoin) {
          log_->info("site '{}' reconnected", identity);
          peer->routing_id = routing_id;
        }
      }
      if (m.type() == MessageType::kHeartbeat) {
        // A site from before a restart of this coordinator: it must join again.
        if (peer == nullptr && m.study == opt_.study) ask_to_rejoin(identity, routing_id);
        continue;
      }
      if (peer == nullptr && m.type() != MessageType::kJoin) {
        refuse(identity, std::string("dropped ") + wire::message_type_name(m.type()) + ": site has not joined");
        if (m.study == opt_.study) ask_to_rejoin(identity, routing_id);
        continue;
      }
      Incoming in{routing_id, identity, std::move(m), wire_size, raw_size};
      return std::optional<Incoming>(std::move(in));
    }
  }

  // At most once per heartbeat period per site: its queued heartbeats must not each cost a reply.
  void ask_to_rejoin(const std::string& identity, const std::string& routing_id) {
    auto it = rejoin_asked_.find(identity);
    if (it != rejoin_asked_.end() && detail::seconds_since(it->second) < opt_.heartbeat_s) return;
    // Once at info; a site busy training answers only when its round is done, so repeats are debug.
    log_->log(it == rejoin_asked_.end() ? spdlog::level::info : spdlog::level::debug,
              "site '{}' is not joined (coordinator restarted?): asking it to join", identity);
    rejoin_asked_[identity] = Clock::now();
    send_best_effort(routing_id, make_message(opt_.study, 0, wire::Reject{static_cast<uint32_t>(wire::RejectReason::kRejoin)}));
  }

  // Raw size of a message as if its model travelled as plain float32 weights.
  uint64_t raw_as_plain(const wire::Message& m, uint64_t raw_size) const {
    const wire::EncodedUpdate* u = update_of(m.body);
    if (u == nullptr || !u->present()) return raw_size;
    return raw_size - wire::encoded_update_bytes(*u) + plain_model_bytes_;
  }

  StatusOr<wire::Encoded> encode_instruction(wire::Message& m) {
    FEDRAD_ASSIGN_OR_RETURN(wire::Encoded enc, encode_next(m));
    if (enc.bytes.size() > opt_.max_message_bytes)
      return invalid_argument("round " + std::to_string(m.round) + ": " + wire::message_type_name(m.type()) +
                              " of " + std::to_string(enc.bytes.size()) + " bytes exceeds the limit of " +
                              std::to_string(opt_.max_message_bytes));
    enc.raw_size = raw_as_plain(m, enc.raw_size);
    return enc;
  }

  // Handles one site's reply as it arrives: fills in its log and evaluation; returns whether the
  // site decoded the model it was sent.
  using ReplyHandler = std::function<bool(size_t site, wire::Message&& reply, SiteRoundLog& log, EvalReport& eval)>;

  // Sends `instruction` to every site (`resync`, when given, to the sites that do not hold the
  // downstream copy) and hands each site's `reply_type` for the same round to `on_reply` as it
  // arrives, until every site answered, was found dead (missed heartbeats, or restarted), or the
  // round deadline passed.
  StatusOr<Exchange> exchange(wire::Message instruction, MessageType reply_type, wire::Message* resync,
                              const ReplyHandler& on_reply) {
    const uint32_t round = instruction.round;
    const size_t n = sites_.size();
    Exchange ex;
    ex.logs.resize(n);
    ex.evals.resize(n);
    ex.answered.assign(n, false);
    ex.holds_copy.assign(n, false);
    FEDRAD_ASSIGN_OR_RETURN(wire::Encoded enc, encode_instruction(instruction));
    instruction.body = wire::Heartbeat{};  // the header is all the chunker needs: free the model
    std::optional<wire::Encoded> resync_enc;
    std::vector<bool> pending(n, false);
    size_t num_pending = 0;
    for (size_t i = 0; i < n; ++i) {
      ex.logs[i].site_id = sites_[i].site_id;
      ex.logs[i].error_code = code_of(StatusCode::kTimeout);
      const wire::Encoded* e = &enc;
      const wire::Message* header = &instruction;
      if (resync != nullptr && !sites_[i].synced) {
        if (!resync_enc) {
          FEDRAD_ASSIGN_OR_RETURN(wire::Encoded r, encode_instruction(*resync));
          resync_enc = std::move(r);
          resync->body = wire::Heartbeat{};
        }
        e = &*resync_enc;
        header = resync;
      }
      sites_[i].synced = false;  // until it answers: then it holds what it was sent
      if (!send_encoded(sites_[i].routing_id, *header, e->bytes)) {
        ex.logs[i].error_code = code_of(StatusCode::kIoError);
        continue;
      }
      ex.logs[i].bytes_down = e->bytes.size();
      ex.logs[i].raw_bytes_down = e->raw_size;
      sites_[i].last_seen = Clock::now();
      pending[i] = true;
      ++num_pending;
    }
    resync_enc.reset();

    const auto deadline = detail::deadline_after(opt_.round_timeout_s);
    const double silence_s = opt_.heartbeat_s * opt_.heartbeat_misses;
    while (num_pending > 0) {
      // Wake up at least once per heartbeat period to notice sites that went silent.
      const auto slice = std::min(deadline, detail::deadline_after(opt_.heartbeat_s));
      FEDRAD_ASSIGN_OR_RETURN(std::optional<Incoming> in, receive(slice));
      for (size_t i = 0; i < n; ++i) {
        if (pending[i] && detail::seconds_since(sites_[i].last_seen) > silence_s) {
          log_->warn("round {}: site '{}' silent for {:.1f} s (missed heartbeats): going on without it", round,
                     sites_[i].site_id, detail::seconds_since(sites_[i].last_seen));
          pending[i] = false;
          --num_pending;
        }
      }
      if (!in) {
        if (Clock::now() >= deadline) break;
        continue;
      }
      const wire::Message& m = in->message;
      if (m.type() == MessageType::kJoin) {
        const long again = handle_join(*in);
        if (again >= 0 && pending[static_cast<size_t>(again)]) {
          log_->warn("round {}: site '{}' restarted during the round; it takes part again from the next one", round,
                     in->identity);
          ex.logs[static_cast<size_t>(again)].error_code = code_of(StatusCode::kIoError);
          pending[static_cast<size_t>(again)] = false;
          --num_pending;
        }
        continue;
      }
      const Peer* peer = find_site(in->identity);
      const bool in_round = peer >= sites_.data() && peer < sites_.data() + n;
      std::string why;
      if (!in_round) {
        why = "site joined after the round started";
      } else if (m.study != opt_.study) {
        why = "study '" + printable(m.study) + "'";
      } else if (m.type() != reply_type) {
        why = std::string("unexpected ") + wire::message_type_name(m.type());
      } else if (m.round != round) {
        why = "round " + std::to_string(m.round) + " (late or early)";
      }
      const size_t i = in_round ? static_cast<size_t>(peer - sites_.data()) : 0;
      if (why.empty() && !pending[i]) why = "already answered, or not waited for any more";
      if (!why.empty()) {
        refuse(in->identity, "round " + std::to_string(round) + ": dropped " + wire::message_type_name(m.type()) + ": " + why);
        continue;
      }
      pending[i] = false;
      --num_pending;
      ex.answered[i] = true;
      ex.logs[i].bytes_up = in->wire_size;
      ex.logs[i].raw_bytes_up = raw_as_plain(in->message, in->raw_size);
      ex.logs[i].error_code = 0;
      ex.holds_copy[i] = on_reply(i, std::move(in->message), ex.logs[i], ex.evals[i]);
    }
    for (size_t i = 0; i < n; ++i) {
      if (pending[i]) log_->warn("round {}: site '{}' missed the deadline", round, sites_[i].site_id);
    }
    return ex;
  }

  // ---- rounds --------------------------------------------------------------------------------

  StatusOr<Weights> run_round(uint32_t round, Weights global) {
    started_ = true;
    merge_late_joiners();
    const auto start = Clock::now();
    wire::FitIns ins;
    ins.settings = opt_.settings;
    ins.settings.round = round;
    ins.settings.seed = opt_.settings.seed * 1000003ull + round;
    strategy_->configure_round(&ins.settings);
    FEDRAD_ASSIGN_OR_RETURN(Downstream down, prepare_downstream(global, ins.settings.seed));
    std::optional<wire::Message> resync;
    if (down.update.present()) {
      wire::FitIns full = ins;
      full.weights = down.next_copy;
      resync = make_message(opt_.study, round, std::move(full));
      ins.update = down.update;
    } else {
      // Plain codec: the copy is not kept (commit_downstream), so it can go into the message.
      if (down_spec_.plain()) ins.weights = std::move(down.next_copy);
      else ins.weights = down.next_copy;
    }
    FEDRAD_RETURN_IF_ERROR(strategy_->begin_round(round, global));

    // Streaming: each update is decoded and handed to the strategy as it arrives, then dropped.
    size_t num_ok = 0;
    std::vector<bool> reported(sites_.size(), false);
    auto on_reply = [&](size_t i, wire::Message&& reply, SiteRoundLog& log, EvalReport& eval) -> bool {
      auto& res = std::get<wire::FitRes>(reply.body);
      reported[i] = true;
      SiteResult r;
      r.site_id = sites_[i].site_id;
      if (res.status != 0) {
        r.error_code = static_cast<int>(res.status);
        log.error_code = r.error_code;
        log_->warn("round {}: site '{}' failed with {} ({})", round, r.site_id, res.status,
                   status_code_name(static_cast<StatusCode>(res.status)));
        accumulate(round, std::move(r));
        return false;
      }
      eval = std::move(res.eval);
      if (!to_site_result(round, res, global, &r)) {
        log.error_code = r.error_code;
        accumulate(round, std::move(r));
        return true;  // it holds the model; its update was unusable
      }
      log.num_examples = r.fit.num_examples;
      log.train_loss = r.fit.train_loss;
      log.train_seconds = r.fit.train_seconds;
      if (accumulate(round, std::move(r))) {
        log.ok = true;
        ++num_ok;
      } else {
        log.error_code = code_of(StatusCode::kCorrupt);
      }
      return true;
    };
    wire::Message instruction = make_message(opt_.study, round, std::move(ins));
    FEDRAD_ASSIGN_OR_RETURN(Exchange ex, exchange(std::move(instruction), MessageType::kFitRes,
                                                  resync ? &*resync : nullptr, on_reply));
    resync.reset();
    commit_downstream(std::move(down), ex);
    // Sites that did not answer reach the strategy as failures too.
    for (size_t i = 0; i < sites_.size(); ++i) {
      if (reported[i]) continue;
      SiteResult r;
      r.site_id = sites_[i].site_id;
      r.error_code = ex.logs[i].error_code;
      accumulate(round, std::move(r));
    }

    if (num_ok < needed_sites())
      return io_error("round " + std::to_string(round) + " failed: " + std::to_string(num_ok) + " of " +
                      std::to_string(sites_.size()) + " sites succeeded, need " +
                      std::to_string(needed_sites()));

    Weights next;
    auto aggregated = strategy_->finish_round();
    if (aggregated.ok()) {
      next = std::move(aggregated).value();
    } else {
      log_->error("round {}: aggregation refused, keeping the previous global model: {}", round,
                  aggregated.status().to_string());
      next = global;
    }
    global.clear();
    RoundLog log = build_log(round, false, std::move(ex.logs), ex.evals, start);
    log_progress(log);
    // Durable before anyone is told: a coordinator killed after this resumes after this round.
    FEDRAD_RETURN_IF_ERROR(save_checkpoint(round, next, log));
    if (opt_.on_round_end) opt_.on_round_end(log, next);
    return next;
  }

  // True when the strategy took the result.
  bool accumulate(uint32_t round, SiteResult r) {
    const std::string site = r.site_id;
    const bool ok = r.ok;
    Status st = strategy_->accumulate(std::move(r));
    if (!st.ok() && ok) {
      refuse(site, "round " + std::to_string(round) + ": update refused by the strategy: " + st.message());
      return false;
    }
    return ok && st.ok();
  }

  // A reply as the strategy sees it; an unusable update is data (false, error_code set).
  bool to_site_result(uint32_t round, wire::FitRes& res, const Weights& global, SiteResult* r) {
    if (res.update.present()) {
      // Deltas are against the model the site trained from; adding them to the exact global
      // model keeps what the downstream codec did not send yet (it is resent as part of later
      // deltas), so aggregation sees global + delta_k.
      auto decoded = decode_update(res.update.codec, res.update.bytes, global);
      std::string().swap(res.update.bytes);
      if (!decoded.ok()) {
        r->error_code = code_of(decoded.status().code());
        refuse(r->site_id, "round " + std::to_string(round) + ": an update this coordinator refuses: " +
                               decoded.status().message());
        return false;
      }
      res.weights = std::move(decoded).value();
    }
    Status compatible = check_compatible(global, res.weights);
    if (!compatible.ok()) {
      r->error_code = code_of(StatusCode::kCorrupt);
      refuse(r->site_id, "round " + std::to_string(round) + ": an unusable model: " + compatible.message());
      return false;
    }
    r->ok = true;
    r->fit.weights = std::move(res.weights);
    r->fit.num_examples = res.num_examples;
    r->fit.train_loss = res.train_loss;
    r->fit.train_seconds = res.train_seconds;
    r->eval_before = res.eval;
    return true;
  }

  // Returns the model the sites evaluated: the final global model as the downstream codec
  // delivered it (the same model when the codec is lossless), which is what the app saves.
  StatusOr<Weights> run_final_evaluation(const Weights& final_global) {
    started_ = true;
    merge_late_joiners();
    const auto start = Clock::now();
    const uint32_t round = static_cast<uint32_t>(opt_.rounds) + 1;
    FEDRAD_ASSIGN_OR_RETURN(Downstream down,
                            prepare_downstream(final_global, opt_.settings.seed * 1000003ull + round));
    std::optional<wire::Message> resync;
    wire::EvalIns ins;
    if (down.update.present()) {
      resync = make_message(opt_.study, round, wire::EvalIns{down.next_copy, {}});
      ins.update = down.update;
    } else {
      ins.weights = down.next_copy;
    }
    auto on_reply = [&](size_t i, wire::Message&& reply, SiteRoundLog& log, EvalReport& eval) -> bool {
      auto& res = std::get<wire::EvalRes>(reply.body);
      if (res.status != 0) {
        log.error_code = static_cast<int>(res.status);
        log_->warn("final evaluation: site '{}' failed with {} ({})", sites_[i].site_id, res.status,
                   status_code_name(static_cast<StatusCode>(res.status)));
        return false;
      }
      log.ok = true;
      log.num_examples = res.eval.num_examples;
      eval = std::move(res.eval);
      return true;
    };
    FEDRAD_ASSIGN_OR_RETURN(Exchange ex, exchange(make_message(opt_.study, round, std::move(ins)),
                                                  MessageType::kEvalRes, resync ? &*resync : nullptr, on_reply));
    const Weights final_weights = down.next_copy;
    commit_downstream(std::move(down), ex);
    RoundLog log = build_log(round, true, std::move(ex.logs), ex.evals, start);
    log_progress(log);
    if (opt_.on_round_end) opt_.on_round_end(log, final_weights);
    return final_weights;
  }

  // ---- downstream codec ------------------------------------------------------------------------

  StatusOr<Downstream> prepare_downstream(const Weights& global, uint64_t seed) {
    Downstream d;
    if (down_spec_.plain() || !have_copy_) {
      d.next_copy = global;  // lossless, or nobody holds a copy yet: the full model
      return d;
    }
    auto bytes = encode_update(down_spec_, global, down_copy_, seed, &down_feedback_);
    if (!bytes.ok()) return bytes.status().with_context("downstream codec " + down_spec_.to_string());
    d.update.codec = down_spec_.to_string();
    d.update.bytes = std::move(bytes).value();
    // Decode our own bytes with the sites' function: both copies are then identical, bit for bit.
    FEDRAD_ASSIGN_OR_RETURN(d.next_copy, decode_update(d.update.codec, d.update.bytes, down_copy_));
    return d;
  }

  // After an exchange, a site holds the new copy iff it answered with status 0 (a site that
  // could not decode answers with an error status and is resynchronised with the full model).
  void commit_downstream(Downstream d, const Exchange& ex) {
    for (size_t i = 0; i < sites_.size(); ++i) sites_[i].synced = ex.answered[i] && ex.holds_copy[i];
    if (!down_spec_.plain()) {
      down_copy_ = std::move(d.next_copy);
      have_copy_ = true;
    }
  }

  // Pools the successful sites' histograms, picks the threshold there, and scores every site at
  // that one threshold so that per-site numbers are comparable.
  RoundLog build_log(uint32_t round, bool evaluation_only, std::vector<SiteRoundLog> sites,
                     const std::vector<EvalReport>& evals, Clock::time_point start) {
    RoundLog log;
    log.round = round;
    log.evaluation_only = evaluation_only;
    ScoreHistogram pooled;
    double loss_sum = 0, loss_n = 0;
    for (size_t i = 0; i < sites.size(); ++i) {
      if (!sites[i].ok) continue;
      const EvalReport& e = evals[i];
      if (e.histogram.bins() > 0) {
        if (pooled.bins() == 0 || pooled.bins() == e.histogram.bins()) {
          pooled.merge(e.histogram);
        } else {
          log_->warn("round {}: site '{}' sent {} histogram bins, expected {}; not pooled", round,
                     sites[i].site_id, e.histogram.bins(), pooled.bins());
        }
      }
      if (!log.global_seg.merge(e.seg))  // segmentation studies: Dice/HD95 sums
        log_->warn("round {}: site '{}' sent {} segmentation structures, expected {}; not pooled", round,
                   sites[i].site_id, e.seg.dice_sum.size(), log.global_seg.dice_sum.size());
      if (e.num_examples > 0 && std::isfinite(e.loss)) {
        loss_sum += static_cast<double>(e.num_examples) * e.loss;
        loss_n += static_cast<double>(e.num_examples);
      }
    }
    const double threshold = youden_threshold(pooled);
    log.global_eval = binary_metrics(pooled, threshold);
    log.global_eval_loss = loss_n > 0 ? loss_sum / loss_n : 0;
    log.pooled_histogram = pooled;
    for (size_t i = 0; i < sites.size(); ++i) {
      if (sites[i].ok) {
        sites[i].eval = binary_metrics(evals[i].histogram, threshold);
        sites[i].eval_loss = evals[i].loss;
        sites[i].seg = evals[i].seg;
      }
      log.bytes_down += sites[i].bytes_down;
      log.bytes_up += sites[i].bytes_up;
      log.raw_bytes_down += sites[i].raw_bytes_down;
      log.raw_bytes_up += sites[i].raw_bytes_up;
    }
    log.sites = std::move(sites);
    log.seconds = detail::seconds_since(start);
    return log;
  }

  void log_progress(const RoundLog& log) {
    size_t ok = 0;
    double loss = 0;
    for (const SiteRoundLog& s : log.sites) {
      if (!s.ok) continue;
      ++ok;
      loss += s.train_loss;
    }
    if (log.evaluation_only) {
      log_->info(
          "final evaluation: {}/{} sites ok, pooled AUC {:.4f}, eval loss {:.4f}, "
          "{:.2f} MB up / {:.2f} MB down, {:.1f} s",
          ok, log.sites.size(), log.global_eval.auc, log.global_eval_loss, mb(log.bytes_up),
          mb(log.bytes_down), log.seconds);
      return;
    }
    log_->info(
        "round {}/{}: {}/{} sites ok, mean train loss {:.4f}, pooled AUC {:.4f} "
        "(received model), {:.2f} MB up / {:.2f} MB down, {:.1f} s",
        log.round, opt_.rounds, ok, log.sites.size(), ok ? loss / ok : 0.0, log.global_eval.auc,
        mb(log.bytes_up), mb(log.bytes_down), log.seconds);
  }

  void shutdown_sites(wire::ShutdownReason reason) {
    if (!socket_) return;
    for (const std::vector<Peer>* list : {&sites_, &late_})
      for (const Peer& p : *list)
        send_best_effort(p.routing_id, make_message(opt_.study, 0, wire::Shutdown{static_cast<uint32_t>(reason)}));
    try {
      socket_.set(zmq::sockopt::linger, kShutdownLingerMs);
    } catch (const zmq::error_t&) {
      // Closing with linger 0 only risks a site waiting for its idle timeout.
    }
    sites_.clear();
    late_.clear();
  }

  const CoordinatorOptions& opt_;
  std::shared_ptr<spdlog::logger> log_;
  std::unique_ptr<Strategy> strategy_;
  zmq::context_t ctx_;
  zmq::socket_t socket_;
  std::vector<Peer> sites_;  // joined, in expected order once the study starts
  std::vector<Peer> late_;   // joined during a round; merged into sites_ before the next
  bool started_ = false;
  uint64_t sequence_;        // of the frames this coordinator sends (wire.h)
  std::map<std::string, uint64_t> last_sequence_;  // per site id: the last sequence taken
  std::map<std::string, wire::ChunkAssembler> assemblers_;  // per site id: a chunked message
  std::map<std::string, Clock::time_point> rejoin_asked_;   // per site id: when it was asked to rejoin
  CodecSpec down_spec_;
  Weights down_copy_;        // what the synced sites hold (lossy downstream codecs only)
  bool have_copy_ = false;
  ErrorFeedback down_feedback_;
  uint64_t plain_model_bytes_ = 0;
};

}  // namespace

StatusOr<Weights> run_coordinator(const CoordinatorOptions& options) {
  Coordinator coordinator(options);
  return coordinator.run();
}

}  // namespace fedrad::fed
