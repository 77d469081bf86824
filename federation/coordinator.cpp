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
#include "federation/secagg.h"
#include "federation/wire.h"

namespace fedrad::fed {
namespace {

using detail::Clock;
using detail::printable;
using wire::MessageType;

// A failing Status inside a function that returns something else: hand it to `on_error`.
#define FEDRAD_RETURN_IF_ERROR_AS(expr, on_error)  \
  do {                                             \
    Status _st = (expr);                           \
    if (!_st.ok()) return on_error(_st.message()); \
  } while (0)

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
  // Takes the initial model (run_coordinator(CoordinatorOptions&&)) instead of copying it.
  Coordinator(const CoordinatorOptions& options, Weights initial) : Coordinator(options) {
    owned_initial_ = std::move(initial);
    owns_initial_ = true;
  }

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
    if (opt_.next_step) FEDRAD_RETURN_IF_ERROR(validate_driven());
    if (opt_.rounds < 0) return invalid_argument("coordinator: negative number of rounds");
    if (opt_.min_sites < 0 || opt_.min_sites > static_cast<int>(opt_.expected_sites.size()))
      return invalid_argument("coordinator: min_sites " + std::to_string(opt_.min_sites) + " is not in 0.." +
                              std::to_string(opt_.expected_sites.size()));
    if (initial().empty() && !opt_.next_step) return invalid_argument("coordinator: no initial weights");
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
    if (opt_.secure_aggregation.enabled) FEDRAD_RETURN_IF_ERROR(validate_secure_aggregation(*up));
    return ok_status();
  }

  // A driven coordinator (a regional aggregator) has no study of its own to checkpoint, and its
  // strategy's result goes upstream as one site's update, so it must be the plain sample-weighted
  // mean; secure aggregation would end at the region, which would see every site's update.
  Status validate_driven() const {
    if (!opt_.state_dir.empty() || opt_.resume)
      return invalid_argument("coordinator (driven): no state_dir or resume; the upstream coordinator keeps the state");
    if (opt_.secure_aggregation.enabled)
      return invalid_argument("coordinator (driven): secure aggregation cannot pass through a regional aggregator "
                              "(it would see each of its sites' updates)");
    if (opt_.strategy.name != "fedavg" || opt_.strategy.max_update_norm > 0)
      return invalid_argument("coordinator (driven): strategy must be plain fedavg (without max_update_norm), not " +
                              opt_.strategy.name + ": its result goes upstream as the region's sample-weighted mean");
    return ok_status();
  }

  // What secure aggregation cannot do: the coordinator only ever learns the weighted sum.
  Status validate_secure_aggregation(const CodecSpec& up) const {
    const SecureAggregationOptions& sa = opt_.secure_aggregation;
    const std::string& s = opt_.strategy.name;
    if (s == "median" || s == "trimmed_mean")
      return invalid_argument("coordinator: strategy " + s +
                              " needs every site's update, which secure aggregation hides (only their sum is "
                              "recovered); use fedavg, fedprox, fedbn, fedavgm, fedadam, fedyogi or fedadagrad");
    if (opt_.strategy.max_update_norm > 0)
      return invalid_argument("coordinator: max_update_norm bounds each site's update, which secure aggregation "
                              "hides; bound updates at the sites (secure aggregation clip, client DP clip)");
    if (Status composes = check_secure_aggregation_codec(up); !composes.ok())
      return invalid_argument("coordinator: upstream codec: " + composes.message());
    if (opt_.expected_sites.size() < 2 || opt_.expected_sites.size() > wire::kMaxSecAggParties)
      return invalid_argument("coordinator: secure aggregation needs 2.." + std::to_string(wire::kMaxSecAggParties) +
                              " sites, not " + std::to_string(opt_.expected_sites.size()));
    if (!(sa.clip > 0) || !std::isfinite(sa.clip)) return invalid_argument("coordinator: secure aggregation clip must be > 0");
    if (sa.threshold == 1 || sa.threshold > opt_.expected_sites.size())
      return invalid_argument("coordinator: secure aggregation threshold " + std::to_string(sa.threshold) +
                              " is not in 2.." + std::to_string(opt_.expected_sites.size()) + " (0 = automatic)");
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
    up_spec_ = CodecSpec::parse(opt_.upstream_codec).value();
    plain_model_bytes_ = wire::plain_weights_bytes(initial());
    log_->info("codecs: upstream '{}', downstream '{}'; strategy {}{}", CodecSpec::parse(opt_.upstream_codec)->to_string(),
               down_spec_.to_string(), strategy_->name(), strategy_->streaming() ? " (streaming)" : "");
    Weights global = owns_initial_ ? std::move(owned_initial_) : opt_.initial_weights;
    uint32_t first_round = 1;
    if (!opt_.state_dir.empty()) {
      if (opt_.resume) {
        FEDRAD_ASSIGN_OR_RETURN(first_round, resume_from_checkpoint(&global));
      } else {
        FEDRAD_RETURN_IF_ERROR(clear_checkpoints(opt_.state_dir));
      }
    }
    if (opt_.next_step) return run_driven();
    FEDRAD_RETURN_IF_ERROR(join_phase());
    for (uint32_t r = first_round; r <= static_cast<uint32_t>(opt_.rounds); ++r) {
      FEDRAD_ASSIGN_OR_RETURN(global, run_round(r, std::move(global)));
    }
    FEDRAD_ASSIGN_OR_RETURN(Weights evaluated, run_final_evaluation(global));
    shutdown_sites(wire::ShutdownReason::kDone);
    log_->info("study '{}' done after {} rounds", opt_.study, opt_.rounds);
    return evaluated;
  }

  // Driven mode (CoordinatorOptions::next_step): the steps the driver asks for, until kStop. A
  // failed step is reported and the next one is awaited; only transport errors (thrown) end it.
  // Returns the model of the last completed step.
  StatusOr<Weights> run_driven() {
    Status joined = join_phase();
    uint64_t num_train = 0, num_val = 0;
    for (const Peer& p : sites_) {
      num_train += p.num_train;
      num_val += p.num_val;
    }
    if (opt_.on_joined) opt_.on_joined(joined, num_train, num_val);
    FEDRAD_RETURN_IF_ERROR(joined);
    Weights last;
    for (;;) {
      DrivenStep step = opt_.next_step();
      if (step.kind == DrivenStep::Kind::kStop) break;
      plain_model_bytes_ = wire::plain_weights_bytes(step.global);
      StatusOr<Weights> result = internal_error("no step");
      if (step.kind == DrivenStep::Kind::kFit) {
        driven_settings_ = step.settings;
        result = run_round(step.round, std::move(step.global));
        driven_settings_.reset();
      } else {
        result = run_final_evaluation(step.global, step.round);
      }
      if (!result.ok()) {
        log_->error("round {}: {}", step.round, result.status().to_string());
        if (opt_.on_step_failed) opt_.on_step_failed(result.status());
        continue;
      }
      last = std::move(result).value();
    }
    shutdown_sites(wire::ShutdownReason::kDone);
    return last;
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
    Status compatible = check_compatible(*global, c->global);  // *global: the configured initial model
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

  // `global` is lent to the checkpoint while it is written (not copied) and given back.
  Status save_checkpoint(uint32_t round, Weights& global, const RoundLog& log) {
    if (opt_.state_dir.empty()) return ok_status();
    Checkpoint c;
    c.round = round;
    c.study = opt_.study;
    c.global = std::move(global);
    c.strategy_state = strategy_->state();
    c.log = log;
    Status st = write_checkpoint(opt_.state_dir, c);
    global = std::move(c.global);
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
  StatusOr<wire::Encoded> encode_next(wire::Message& m, const Weights* weights = nullptr) {
    m.sequence = ++sequence_;
    return wire::encode(m, opt_.zstd_level, weights);
  }

  // An instruction encoded (with `weights` as its model when given) and framed for the wire,
  // once for every recipient; the message's body is dropped (the header stays).
  struct Outgoing {
    std::shared_ptr<const wire::Framed> frames;
    uint64_t raw_size = 0;
  };
  StatusOr<Outgoing> frame_instruction(wire::Message& m, const Weights* weights) {
    FEDRAD_ASSIGN_OR_RETURN(wire::Encoded enc, encode_instruction(m, weights));
    m.body = wire::Heartbeat{};  // the header is all the chunker needs: free the model
    Outgoing o;
    o.raw_size = enc.raw_size;
    FEDRAD_ASSIGN_OR_RETURN(wire::Framed f, wire::frame(std::move(enc.bytes), m, opt_.chunk_bytes, &sequence_));
    o.frames = std::make_shared<const wire::Framed>(std::move(f));
    return o;
  }

  // Sends the frames to one site without copying them (detail::shared_frame); false (logged)
  // when the site is gone.
  bool send_framed(const std::string& routing_id, const std::shared_ptr<const wire::Framed>& f) {
    try {
      for (size_t k = 0; k < f->frames.size(); ++k) {
        socket_.send(zmq::buffer(routing_id), zmq::send_flags::sndmore);
        socket_.send(detail::shared_frame(f, k), zmq::send_flags::none);
      }
      return true;
    } catch (const zmq::error_t& e) {
      log_->warn("send to '{}' failed: {}", printable(routing_id), e.what());
      return false;
    }
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
        frames.clear();  // decoded: the frame's bytes are in the chunk now (not held twice)
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
        // A FIT_RES's weights stay where they lie in the reassembled buffer (views, no copy of
        // the model); the buffer goes with them and is freed once the update is folded in.
        auto buffer = std::make_shared<std::string>(std::move(*whole));  // not const: pages are released
        auto inner = wire::decode(buffer->data(), buffer->size(), opt_.max_message_bytes, buffer);
        buffer.reset();
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

  StatusOr<wire::Encoded> encode_instruction(wire::Message& m, const Weights* weights = nullptr) {
    FEDRAD_ASSIGN_OR_RETURN(wire::Encoded enc, encode_next(m, weights));
    if (enc.bytes.size() > opt_.max_message_bytes)
      return invalid_argument("round " + std::to_string(m.round) + ": " + wire::message_type_name(m.type()) +
                              " of " + std::to_string(enc.bytes.size()) + " bytes exceeds the limit of " +
                              std::to_string(opt_.max_message_bytes));
    enc.raw_size = raw_as_plain(m, enc.raw_size);
    return enc;
  }


  // Called for each awaited reply; a non-ok Status refuses it (logged) and takes the site out of
  // what is being awaited (it sent something unusable for this step of the round).
  using Take = std::function<Status(size_t site, Incoming&& in)>;

  // Waits for the replies of the pending sites (one of `reply_types`, for `round`) and hands each
  // to `take`, until none is pending (answered, silent for heartbeat_misses periods, restarted: its
  // log gets kIoError) or `deadline` passed. Everything else that arrives is refused and logged.
  Status await_replies(uint32_t round, const std::vector<MessageType>& reply_types, Clock::time_point deadline,
                       std::vector<bool>& pending, size_t& num_pending, std::vector<SiteRoundLog>& logs,
                       const Take& take) {
    const size_t n = pending.size();
    const double silence_s = opt_.heartbeat_s * opt_.heartbeat_misses;
    while (num_pending > 0) {
      // Wake up at least once per heartbeat period to notice sites that went silent.
      const auto slice = std::min(deadline, detail::deadline_after(opt_.heartbeat_s));
      FEDRAD_ASSIGN_OR_RETURN(std::optional<Incoming> in, receive(slice));
      // Silence is judged on a drained queue only: what this coordinator has not read yet (a
      // site's heartbeats or chunks queued while it was busy with another site's large update)
      // is not silence. Every chunk read counts as a sign of life (receive).
      bool drained = !in;
      if (in) {
        FEDRAD_ASSIGN_OR_RETURN(const bool more, detail::wait_readable(socket_, Clock::now()));
        drained = !more;
      }
      for (size_t i = 0; drained && i < n; ++i) {
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
          logs[static_cast<size_t>(again)].error_code = code_of(StatusCode::kIoError);
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
      } else if (std::find(reply_types.begin(), reply_types.end(), m.type()) == reply_types.end()) {
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
      const std::string type = wire::message_type_name(m.type());
      Status taken = take(i, std::move(*in));
      if (!taken.ok()) {
        logs[i].error_code = code_of(taken.code());
        refuse(sites_[i].site_id, "round " + std::to_string(round) + ": refused " + type + ": " + taken.message());
      }
    }
    for (size_t i = 0; i < n; ++i) {
      if (pending[i]) log_->warn("round {}: site '{}' missed the deadline", round, sites_[i].site_id);
    }
    return ok_status();
  }

  // Handles one site's reply as it arrives: fills in its log and evaluation; returns whether the
  // site decoded the model it was sent.
  using ReplyHandler = std::function<bool(size_t site, wire::Message&& reply, SiteRoundLog& log, EvalReport& eval)>;

  // Sends `instruction` to every site (`resync`, when given, to the sites that do not hold the
  // downstream copy) and hands each site's `reply_type` for the same round to `on_reply` as it
  // arrives, until every site answered, was found dead (missed heartbeats, or restarted), or the
  // round deadline passed.
  // `weights` / `resync_weights`, when given, are the model the instruction / resync carries,
  // encoded from where they lie instead of being copied into the message.
  StatusOr<Exchange> exchange(wire::Message instruction, std::vector<MessageType> reply_types, wire::Message* resync,
                              const ReplyHandler& on_reply,
                              std::optional<Clock::time_point> round_deadline = std::nullopt,
                              const Weights* weights = nullptr, const Weights* resync_weights = nullptr) {
    const uint32_t round = instruction.round;
    const size_t n = sites_.size();
    Exchange ex;
    ex.logs.resize(n);
    ex.evals.resize(n);
    ex.answered.assign(n, false);
    ex.holds_copy.assign(n, false);
    // Encoded and framed once for every site; each site's frames refer to the one buffer.
    FEDRAD_ASSIGN_OR_RETURN(Outgoing out, frame_instruction(instruction, weights));
    std::optional<Outgoing> resync_out;
    std::vector<bool> pending(n, false);
    size_t num_pending = 0;
    for (size_t i = 0; i < n; ++i) {
      ex.logs[i].site_id = sites_[i].site_id;
      ex.logs[i].error_code = code_of(StatusCode::kTimeout);
      const Outgoing* o = &out;
      if (resync != nullptr && !sites_[i].synced) {
        if (!resync_out) {
          FEDRAD_ASSIGN_OR_RETURN(Outgoing r, frame_instruction(*resync, resync_weights));
          resync_out = std::move(r);
        }
        o = &*resync_out;
      }
      sites_[i].synced = false;  // until it answers: then it holds what it was sent
      if (!send_framed(sites_[i].routing_id, o->frames)) {
        ex.logs[i].error_code = code_of(StatusCode::kIoError);
        continue;
      }
      ex.logs[i].bytes_down = o->frames->message_bytes;
      ex.logs[i].raw_bytes_down = o->raw_size;
      sites_[i].last_seen = Clock::now();
      pending[i] = true;
      ++num_pending;
    }
    // ZeroMQ holds the frames until they have left; the buffer goes with the last of them.
    out.frames.reset();
    resync_out.reset();

    const Clock::time_point deadline = round_deadline ? *round_deadline : detail::deadline_after(opt_.round_timeout_s);
    FEDRAD_RETURN_IF_ERROR(await_replies(round, reply_types, deadline, pending, num_pending, ex.logs,
                                         [&](size_t i, Incoming&& in) -> Status {
                                           ex.answered[i] = true;
                                           ex.logs[i].bytes_up += in.wire_size;
                                           ex.logs[i].raw_bytes_up += raw_as_plain(in.message, in.raw_size);
                                           ex.logs[i].error_code = 0;
                                           ex.holds_copy[i] = on_reply(i, std::move(in.message), ex.logs[i], ex.evals[i]);
                                           return ok_status();
                                         }));
    return ex;
  }

  // ---- secure aggregation (federation/secagg.h; the message flow is in wire.h) ------------------

  bool send_to_site(size_t i, wire::Message m, SiteRoundLog& log) {
    auto enc = encode_next(m);
    if (!enc.ok()) {
      log_->error("cannot encode {} for '{}': {}", wire::message_type_name(m.type()), sites_[i].site_id,
                  enc.status().to_string());
      return false;
    }
    if (!send_encoded(sites_[i].routing_id, m, enc->bytes)) return false;
    log.bytes_down += enc->bytes.size();
    log.raw_bytes_down += enc->raw_size;
    return true;
  }

  // One step of secure aggregation: make(party) goes to each party still in; each one's reply of
  // `reply_type` goes to take(party, reply). A party that answers with a failure (FIT_RES with a
  // status), sends something take() refuses, goes silent or misses the deadline is out (in[p] false).
  Status secagg_step(uint32_t round, const std::vector<size_t>& site_of, std::vector<bool>& in,
                     MessageType reply_type, Clock::time_point deadline, Exchange& ex,
                     const std::function<wire::Body(uint32_t)>& make,
                     const std::function<Status(uint32_t, wire::Message&&)>& take) {
    const size_t n = sites_.size();
    std::vector<bool> pending(n, false);
    size_t num_pending = 0;
    std::vector<long> party_of(n, -1);
    std::vector<bool> answered(site_of.size(), false);
    for (uint32_t p = 0; p < site_of.size(); ++p) {
      party_of[site_of[p]] = p;
      if (!in[p]) continue;
      const size_t i = site_of[p];
      if (!send_to_site(i, make_message(opt_.study, round, make(p)), ex.logs[i])) {
        in[p] = false;
        ex.logs[i].error_code = code_of(StatusCode::kIoError);
        continue;
      }
      // Its silence counts from this request: while the previous step waited for a straggler
      // this site had nothing to say (it sends heartbeats only while it trains).
      sites_[i].last_seen = Clock::now();
      pending[i] = true;
      ++num_pending;
    }
    FEDRAD_RETURN_IF_ERROR(await_replies(
        round, {reply_type, MessageType::kFitRes}, deadline, pending, num_pending, ex.logs,
        [&](size_t i, Incoming&& inc) -> Status {
          ex.logs[i].bytes_up += inc.wire_size;
          ex.logs[i].raw_bytes_up += inc.raw_size;
          if (party_of[i] < 0) return invalid_argument("not a party of this round's secure aggregation");
          const uint32_t p = static_cast<uint32_t>(party_of[i]);
          if (auto* f = std::get_if<wire::FitRes>(&inc.message.body)) {
            if (f->status == 0) return invalid_argument("an update in the clear during secure aggregation (dropped unread)");
            log_->warn("round {}: site '{}' left secure aggregation with {} ({})", round, sites_[i].site_id, f->status,
                       status_code_name(static_cast<StatusCode>(f->status)));
            ex.logs[i].error_code = static_cast<int>(f->status);
            return ok_status();
          }
          Status st = take(p, std::move(inc.message));
          if (st.ok()) answered[p] = true;
          return st;
        }));
    for (uint32_t p = 0; p < site_of.size(); ++p) {
      if (!in[p] || answered[p]) continue;
      in[p] = false;
      SiteRoundLog& log = ex.logs[site_of[p]];
      if (log.error_code == 0) log.error_code = code_of(StatusCode::kTimeout);
    }
    return ok_status();
  }

  static size_t count(const std::vector<bool>& v) { return static_cast<size_t>(std::count(v.begin(), v.end(), true)); }
  static std::vector<uint8_t> flags(const std::vector<bool>& v) { return std::vector<uint8_t>(v.begin(), v.end()); }

  // Phases 2-4 after the sites that trained advertised their keys (keys[i]): key list, shares
  // relayed, masked inputs, unmasking. Returns the sample-weighted mean model (global + sum n_i
  // delta_i / sum n_i) as one result for the strategy, not ok when the sum cannot be recovered;
  // in_sum[i]: site i's input is in it. The coordinator never sees a site's update.
  // With a random-k upstream codec only the values at randk_indices(global, F, secure_randk_seed(
  // round_seed)) are masked, the same coordinates at every site; the others keep the global value.
  SiteResult secure_aggregate(uint32_t round, uint64_t round_seed, const Weights& global,
                              const std::vector<std::optional<secagg::Key>>& keys, Exchange& ex,
                              Clock::time_point deadline, std::vector<bool>* in_sum) {
    SiteResult out;
    out.site_id = "secure-aggregate";
    out.error_code = code_of(StatusCode::kUnsupported);
    in_sum->assign(sites_.size(), false);
    const SecureAggregationOptions& sa = opt_.secure_aggregation;
    auto fail = [&](const std::string& why) {
      log_->error("round {}: secure aggregation failed: {}", round, why);
      return out;
    };
    // Parties: the sites that trained and advertised a key, in site order.
    std::vector<size_t> site_of;
    secagg::Params params;
    std::vector<secagg::Key> party_keys;
    uint64_t weight_cap = 1;
    for (size_t i = 0; i < sites_.size(); ++i) {
      if (!keys[i]) continue;
      site_of.push_back(i);
      party_keys.push_back(*keys[i]);
      weight_cap = std::max<uint64_t>(weight_cap, sites_[i].num_train);
    }
    const uint32_t parties = static_cast<uint32_t>(site_of.size());
    if (parties < 2) return fail(std::to_string(parties) + " site(s) advertised keys; at least 2 are needed");
    const uint32_t threshold = std::max<uint32_t>(2, sa.threshold ? sa.threshold : parties - parties / 3);
    if (threshold > parties)
      return fail(std::to_string(parties) + " sites advertised keys, fewer than the threshold " + std::to_string(threshold));
    params.parties = parties;
    params.threshold = threshold;
    const bool sparse = up_spec_.sparsify == Sparsify::kRandK;
    std::vector<int64_t> chosen;  // shared-seed random-k: the masked coordinates
    if (sparse) chosen = randk_indices(global, up_spec_.fraction, secure_randk_seed(round_seed));
    const uint64_t values = sparse ? chosen.size() : num_values(global);
    params.dim = static_cast<uint32_t>(values + 1);  // the update, then the weight
    params.round = round;
    // The sum of every party's clipped, weighted values must fit in int32.
    const double bound = static_cast<double>(parties) * static_cast<double>(weight_cap);
    if (bound >= 2147483647.0) return fail("weight cap " + std::to_string(weight_cap) + " x parties overflows int32");
    const double scale = std::exp2(std::floor(std::log2(2147483647.0 / (bound * sa.clip))));
    if (!(scale >= 1)) return fail("clip " + std::to_string(sa.clip) + " x weight cap leaves no fixed-point precision");
    log_->info("round {}: secure aggregation over {} parties, threshold {}, {} values{}, scale 2^{}", round, parties,
               threshold, params.dim, !sparse ? "" : " (shared random-k of " + std::to_string(num_values(global)) + ")",
               static_cast<int>(std::log2(scale)));

    secagg::SecAggServer server(params);
    server.set_public_keys(party_keys);
    std::vector<bool> in(parties, true);

    // Key list -> encrypted shares for every other party.
    std::vector<std::vector<wire::SecAggBox>> sent(parties);  // by sender: boxes addressed to others
    FEDRAD_RETURN_IF_ERROR_AS(secagg_step(
        round, site_of, in, MessageType::kSecAggShares, deadline, ex,
        [&](uint32_t p) -> wire::Body {
          wire::SecAggKeyList list;
          list.party = p;
          list.threshold = threshold;
          list.dim = params.dim;
          list.scale = scale;
          list.clip = sa.clip;
          list.weight_cap = weight_cap;
          list.keys = party_keys;
          return list;
        },
        [&](uint32_t p, wire::Message&& m) -> Status {
          auto& b = std::get<wire::SecAggShares>(m.body);
          if (b.party != p) return invalid_argument("names party " + std::to_string(b.party) + ", it is party " + std::to_string(p));
          if (b.boxes.size() != parties - 1)
            return invalid_argument(std::to_string(b.boxes.size()) + " share boxes for " + std::to_string(parties - 1) +
                                    " other parties");
          for (const wire::SecAggBox& x : b.boxes)
            if (x.party >= parties) return invalid_argument("a share box for party " + std::to_string(x.party) + " of " + std::to_string(parties));
          sent[p] = std::move(b.boxes);
          return ok_status();
        }), fail);
    const std::vector<bool> shared = in;
    if (count(shared) < threshold)
      return fail(std::to_string(count(shared)) + " parties shared their keys, " + std::to_string(threshold) + " needed");
    server.set_shared(shared);

    // Relayed shares -> masked inputs.
    FEDRAD_RETURN_IF_ERROR_AS(secagg_step(
        round, site_of, in, MessageType::kSecAggMasked, deadline, ex,
        [&](uint32_t p) -> wire::Body {
          wire::SecAggRelay relay;
          relay.party = p;
          relay.shared = flags(shared);
          for (uint32_t v = 0; v < parties; ++v) {
            if (!shared[v] || v == p) continue;
            for (const wire::SecAggBox& x : sent[v])
              if (x.party == p) relay.boxes.push_back(wire::SecAggBox{v, x.box});
          }
          return relay;
        },
        [&](uint32_t p, wire::Message&& m) -> Status {
          auto& b = std::get<wire::SecAggMasked>(m.body);
          if (b.party != p) return invalid_argument("names party " + std::to_string(b.party) + ", it is party " + std::to_string(p));
          if (b.values.size() != params.dim)
            return invalid_argument("a masked vector of " + std::to_string(b.values.size()) + " values, expected " +
                                    std::to_string(params.dim));
          const size_t i = site_of[p];
          if (opt_.on_masked_input) opt_.on_masked_input(sites_[i].site_id, round, b.values);
          FEDRAD_RETURN_IF_ERROR(server.add_masked_input(p, std::move(b.values)));
          ex.logs[i].train_loss = b.train_loss;
          ex.logs[i].train_seconds = b.train_seconds;
          ex.evals[i] = std::move(b.eval);
          return ok_status();
        }), fail);
    sent.clear();
    const std::vector<bool> sent_input = in;
    if (count(sent_input) < threshold)
      return fail(std::to_string(count(sent_input)) + " masked inputs arrived, " + std::to_string(threshold) + " needed");

    // Unmasking: b-shares of the parties whose input is in, sk-shares of those that dropped.
    FEDRAD_RETURN_IF_ERROR_AS(secagg_step(
        round, site_of, in, MessageType::kSecAggUnmaskRes, deadline, ex,
        [&](uint32_t p) -> wire::Body { return wire::SecAggUnmask{p, flags(sent_input)}; },
        [&](uint32_t p, wire::Message&& m) -> Status {
          auto& b = std::get<wire::SecAggUnmaskRes>(m.body);
          if (b.party != p) return invalid_argument("names party " + std::to_string(b.party) + ", it is party " + std::to_string(p));
          secagg::UnmaskResponse r;
          r.from = p;
          for (wire::SecAggShareOf& x : b.self_mask) {
            if (x.of >= parties || !sent_input[x.of]) return invalid_argument("a self-mask share of party " + std::to_string(x.of) + ", whose input is not in");
            r.self_mask_of.push_back(x.of);
            r.self_mask_shares.push_back(std::move(x.share));
          }
          for (wire::SecAggShareOf& x : b.secret_key) {
            if (x.of >= parties || sent_input[x.of] || !shared[x.of])
              return invalid_argument("a key share of party " + std::to_string(x.of) + ", which did not drop out");
            r.secret_key_of.push_back(x.of);
            r.secret_key_shares.push_back(std::move(x.share));
          }
          return server.add_unmask_response(std::move(r));
        }), fail);
    auto sum = server.finish();
    if (!sum.ok()) return fail(sum.status().message());
    const uint32_t total = (*sum)[params.dim - 1];  // sum n_i: below parties x weight_cap < 2^31
    if (total == 0 || total > bound) return fail("the recovered weight " + std::to_string(total) + " is out of range");
    out.fit.weights = global;
    const double per = 1.0 / (scale * static_cast<double>(total));
    if (!sparse) {
      size_t k = 0;
      for (TensorRecord& t : out.fit.weights)
        for (float& v : t.data) v = static_cast<float>(static_cast<double>(v) + static_cast<int32_t>((*sum)[k++]) * per);
    } else {
      // chosen is sorted: walk the tensors once.
      size_t t = 0;
      int64_t at = 0;
      for (size_t k = 0; k < chosen.size(); ++k) {
        while (chosen[k] >= at + static_cast<int64_t>(out.fit.weights[t].data.size())) at += out.fit.weights[t++].data.size();
        float& v = out.fit.weights[t].data[static_cast<size_t>(chosen[k] - at)];
        v = static_cast<float>(static_cast<double>(v) + static_cast<int32_t>((*sum)[k]) * per);
      }
    }
    out.ok = true;
    out.error_code = 0;
    out.fit.num_examples = total;
    double loss = 0;
    for (uint32_t p = 0; p < parties; ++p) {
      if (!sent_input[p]) continue;
      (*in_sum)[site_of[p]] = true;
      loss += ex.logs[site_of[p]].train_loss;
    }
    out.fit.train_loss = loss / static_cast<double>(count(sent_input));
    log_->info("round {}: secure aggregation recovered the sum of {} of {} parties ({} examples)", round,
               count(sent_input), parties, total);
    return out;
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
    const uint64_t ins_seed = ins.settings.seed;
    strategy_->configure_round(&ins.settings);
    if (driven_settings_) ins.settings = *driven_settings_;  // driven: the upstream round's settings, as they are
    const bool secure = opt_.secure_aggregation.enabled;
    ins.settings.secure_aggregation = secure;
    const auto deadline = detail::deadline_after(opt_.round_timeout_s);
    FEDRAD_ASSIGN_OR_RETURN(Downstream down, prepare_downstream(global, ins.settings.seed));
    std::optional<wire::Message> resync;
    // The models are encoded from where they lie (exchange's weights), not copied into messages.
    const Weights* send_weights = nullptr;
    const Weights* resync_weights = nullptr;
    if (down.update.present()) {
      resync = make_message(opt_.study, round, ins);
      resync_weights = &down.next_copy;
      ins.update = down.update;
    } else {
      send_weights = down_spec_.plain() ? &global : &down.next_copy;
    }
    FEDRAD_RETURN_IF_ERROR(strategy_->begin_round(round, global));

    // Streaming: each update is decoded and handed to the strategy as it arrives, then dropped.
    size_t num_ok = 0;
    std::vector<bool> reported(sites_.size(), false);
    std::vector<std::optional<secagg::Key>> keys(sites_.size());  // secure aggregation: who takes part
    auto on_reply = [&](size_t i, wire::Message&& reply, SiteRoundLog& log, EvalReport& eval) -> bool {
      if (auto* k = std::get_if<wire::SecAggKeys>(&reply.body)) {
        keys[i] = k->public_key;  // trained; its update stays at the site until masked
        return true;
      }
      auto& res = std::get<wire::FitRes>(reply.body);
      reported[i] = true;
      SiteResult r;
      r.site_id = sites_[i].site_id;
      if (secure && res.status == 0) {
        // Never used, not even decoded into a model: this study aggregates masked inputs only.
        res = wire::FitRes{};
        r.error_code = code_of(StatusCode::kInvalidArgument);
        log.error_code = r.error_code;
        refuse(r.site_id, "round " + std::to_string(round) +
                              ": dropped a FIT_RES carrying an update: this study runs secure aggregation");
        accumulate(round, std::move(r));
        return true;
      }
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
    std::vector<MessageType> replies = {MessageType::kFitRes};
    if (secure) replies.push_back(MessageType::kSecAggKeys);
    FEDRAD_ASSIGN_OR_RETURN(Exchange ex, exchange(std::move(instruction), replies, resync ? &*resync : nullptr,
                                                  on_reply, deadline, send_weights, resync_weights));
    resync.reset();
    commit_downstream(std::move(down), ex);
    if (secure) {
      std::vector<bool> in_sum;
      SiteResult sum = secure_aggregate(round, ins_seed, global, keys, ex, deadline, &in_sum);
      for (size_t i = 0; i < sites_.size(); ++i) {
        if (!keys[i]) continue;
        reported[i] = true;
        if (sum.ok && in_sum[i]) {
          ex.logs[i].ok = true;
          ex.logs[i].error_code = 0;
          continue;
        }
        SiteResult r;
        r.site_id = sites_[i].site_id;
        r.error_code = ex.logs[i].error_code ? ex.logs[i].error_code : sum.error_code;
        ex.logs[i].error_code = r.error_code;
        accumulate(round, std::move(r));
      }
      if (sum.ok) {
        const size_t parties = static_cast<size_t>(std::count(in_sum.begin(), in_sum.end(), true));
        if (accumulate(round, std::move(sum))) {
          num_ok += parties;
        } else {
          for (size_t i = 0; i < sites_.size(); ++i) ex.logs[i].ok = false;
        }
      }
    }
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
    // An update that arrived as views (to_site_result) is folded in where it lies, then freed.
    wire::FitRes view = std::move(view_update_);
    view_update_ = wire::FitRes{};
    // Each tensor's bytes go back to the system as soon as the strategy is done with them, so
    // the running sums grow while the update's buffer shrinks.
    auto done_with = [&view](size_t t) {
      detail::release_pages(view.view[t].data, static_cast<size_t>(view.view[t].size) * sizeof(float));
    };
    Status st = ok && !view.view.empty() ? strategy_->accumulate_view(std::move(r), view.view, done_with)
                                         : strategy_->accumulate(std::move(r));
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
    Status compatible = res.view.empty() ? check_compatible(global, res.weights) : check_compatible(global, res.view);
    if (!compatible.ok()) {
      r->error_code = code_of(StatusCode::kCorrupt);
      refuse(r->site_id, "round " + std::to_string(round) + ": an unusable model: " + compatible.message());
      return false;
    }
    r->ok = true;
    r->fit.weights = std::move(res.weights);
    if (!res.view.empty()) {  // for the accumulate() that follows: no copy of the model
      view_update_.view = std::move(res.view);
      view_update_.view_backing = std::move(res.view_backing);
    }
    r->fit.num_examples = res.num_examples;
    r->fit.train_loss = res.train_loss;
    r->fit.train_seconds = res.train_seconds;
    r->eval_before = res.eval;
    return true;
  }

  // Returns the model the sites evaluated: the final global model as the downstream codec
  // delivered it (the same model when the codec is lossless), which is what the app saves.
  // driven_round: the round number in driven mode (0: the study's rounds + 1).
  StatusOr<Weights> run_final_evaluation(const Weights& final_global, uint32_t driven_round = 0) {
    started_ = true;
    merge_late_joiners();
    const auto start = Clock::now();
    const uint32_t round = driven_round ? driven_round : static_cast<uint32_t>(opt_.rounds) + 1;
    FEDRAD_ASSIGN_OR_RETURN(Downstream down,
                            prepare_downstream(final_global, opt_.settings.seed * 1000003ull + round));
    std::optional<wire::Message> resync;
    wire::EvalIns ins;
    const Weights* send_weights = nullptr;  // encoded from where they lie (exchange's weights)
    const Weights* resync_weights = nullptr;
    if (down.update.present()) {
      resync = make_message(opt_.study, round, wire::EvalIns{});
      resync_weights = &down.next_copy;
      ins.update = down.update;
    } else {
      send_weights = down_spec_.plain() ? &final_global : &down.next_copy;
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
                                                  {MessageType::kEvalRes}, resync ? &*resync : nullptr, on_reply,
                                                  std::nullopt, send_weights, resync_weights));
    const Weights final_weights = down_spec_.plain() ? final_global : down.next_copy;
    commit_downstream(std::move(down), ex);
    RoundLog log = build_log(round, true, std::move(ex.logs), ex.evals, start);
    log_progress(log);
    if (opt_.on_round_end) opt_.on_round_end(log, final_weights);
    return final_weights;
  }

  // ---- downstream codec ------------------------------------------------------------------------

  StatusOr<Downstream> prepare_downstream(const Weights& global, uint64_t seed) {
    Downstream d;
    if (down_spec_.plain()) return d;  // the global model itself goes out (no copy: exchange's weights)
    if (!have_copy_) {
      d.next_copy = global;  // nobody holds a copy yet: the full model
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
      log.global_eval_examples += e.num_examples;
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
  CodecSpec up_spec_;    // what the sites send: its random-k, under secure aggregation, picks the masked values
  CodecSpec down_spec_;
  Weights down_copy_;        // what the synced sites hold (lossy downstream codecs only)
  bool have_copy_ = false;
  ErrorFeedback down_feedback_;
  uint64_t plain_model_bytes_ = 0;
  wire::FitRes view_update_;  // to_site_result -> accumulate: an update as views and their buffer
  Weights owned_initial_;     // run_coordinator(CoordinatorOptions&&): the initial model, taken
  bool owns_initial_ = false;
  const Weights& initial() const { return owns_initial_ ? owned_initial_ : opt_.initial_weights; }
  std::optional<RoundSettings> driven_settings_;  // driven mode: the settings of the round under way
};

}  // namespace

StatusOr<Weights> run_coordinator(const CoordinatorOptions& options) {
  Coordinator coordinator(options);
  return coordinator.run();
}

StatusOr<Weights> run_coordinator(CoordinatorOptions&& options) {
  Weights initial = std::move(options.initial_weights);
  options.initial_weights.clear();
  Coordinator coordinator(options, std::move(initial));
  return coordinator.run();
}

}  // namespace fedrad::fed
