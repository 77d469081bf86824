#include <algorithm>
#include <cmath>
#include <optional>
#include <string>
#include <vector>
#include <zmq.hpp>
#include <zmq_addon.hpp>

#include "common/log.h"
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
  wire::Message message;
  uint64_t wire_size = 0;
  uint64_t raw_size = 0;
};

// What one instruction/reply exchange with every site produced.
struct Exchange {
  std::vector<SiteRoundLog> logs;                     // per site: identity and bytes
  std::vector<std::optional<wire::Message>> replies;  // per site: nullopt when none came in time
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
  }
  return "unknown";
}

double mb(uint64_t bytes) { return static_cast<double>(bytes) / (1024.0 * 1024.0); }

class Coordinator {
 public:
  explicit Coordinator(const CoordinatorOptions& options) : opt_(options), log_(logger("coordinator")) {}

  StatusOr<Weights> run() {
    FEDRAD_RETURN_IF_ERROR(validate_options());
    try {
      FEDRAD_RETURN_IF_ERROR(open_socket());
      auto result = run_study();
      if (!result.ok()) shutdown_sites(wire::ShutdownReason::kAborted);
      return result;
    } catch (const zmq::error_t& e) {
      shutdown_sites(wire::ShutdownReason::kAborted);
      return io_error("coordinator at " + opt_.bind_address + ": zmq: " + e.what());
    } catch (const std::exception& e) {
      shutdown_sites(wire::ShutdownReason::kAborted);
      return internal_error("coordinator at " + opt_.bind_address + ": " + e.what());
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
    auto up = CodecSpec::parse(opt_.upstream_codec);
    if (!up.ok()) return invalid_argument("coordinator: upstream codec: " + up.status().message());
    auto down = CodecSpec::parse(opt_.downstream_codec);
    if (!down.ok()) return invalid_argument("coordinator: downstream codec: " + down.status().message());
    return ok_status();
  }

  Status open_socket() {
    socket_ = zmq::socket_t(ctx_, zmq::socket_type::router);
    detail::configure_socket(socket_, opt_.max_message_bytes);
    // A send to a site that vanished must fail loudly rather than be dropped silently.
    socket_.set(zmq::sockopt::router_mandatory, 1);
    // A restarted site reconnects with the same routing id; it replaces its stale connection.
    socket_.set(zmq::sockopt::router_handover, 1);
    try {
      socket_.bind(opt_.bind_address);
    } catch (const zmq::error_t& e) {
      return io_error("coordinator cannot bind " + opt_.bind_address + ": " + e.what());
    }
    log_->info("study '{}': listening on {}, waiting for {} sites", opt_.study, opt_.bind_address,
               opt_.expected_sites.size());
    return ok_status();
  }

  size_t needed_sites() const {
    return opt_.min_sites > 0 ? static_cast<size_t>(opt_.min_sites) : sites_.size();
  }

  StatusOr<Weights> run_study() {
    down_spec_ = CodecSpec::parse(opt_.downstream_codec).value();
    plain_model_bytes_ = wire::plain_weights_bytes(opt_.initial_weights);
    log_->info("codecs: upstream '{}', downstream '{}'", CodecSpec::parse(opt_.upstream_codec)->to_string(),
               down_spec_.to_string());
    FEDRAD_RETURN_IF_ERROR(join_phase());
    Weights global = opt_.initial_weights;
    for (int r = 1; r <= opt_.rounds; ++r) {
      FEDRAD_ASSIGN_OR_RETURN(global, run_round(static_cast<uint32_t>(r), std::move(global)));
    }
    FEDRAD_ASSIGN_OR_RETURN(Weights evaluated, run_final_evaluation(global));
    shutdown_sites(wire::ShutdownReason::kDone);
    log_->info("study '{}' done after {} rounds", opt_.study, opt_.rounds);
    return evaluated;
  }

  // ---- joining -------------------------------------------------------------------------------

  Status join_phase() {
    const auto deadline = detail::deadline_after(opt_.join_timeout_s);
    while (sites_.size() < opt_.expected_sites.size()) {
      FEDRAD_ASSIGN_OR_RETURN(std::optional<Incoming> in, receive(deadline));
      if (!in) break;
      if (in->message.type() == MessageType::kJoin) {
        handle_join(*in, /*started=*/false);
      } else {
        log_->warn("dropped {} from '{}': the study has not started",
                   wire::message_type_name(in->message.type()), printable(in->routing_id));
      }
    }
    const size_t needed = static_cast<size_t>(std::max(opt_.min_sites, 1));
    if (sites_.size() < needed)
      return timeout_error("study '" + opt_.study + "': " + std::to_string(sites_.size()) + " of " +
                           std::to_string(opt_.expected_sites.size()) + " sites joined within " +
                           std::to_string(opt_.join_timeout_s) + " s, need " + std::to_string(needed));
    if (sites_.size() < opt_.expected_sites.size())
      log_->warn("join timeout: going on with {} of {} sites", sites_.size(), opt_.expected_sites.size());
    // Expected order, not arrival order, so logs and results line up across runs.
    std::sort(sites_.begin(), sites_.end(), [&](const Peer& a, const Peer& b) {
      return expected_index(a.site_id) < expected_index(b.site_id);
    });
    return ok_status();
  }

  size_t expected_index(const std::string& site_id) const {
    return static_cast<size_t>(std::find(opt_.expected_sites.begin(), opt_.expected_sites.end(), site_id) -
                               opt_.expected_sites.begin());
  }

  Peer* find_site(const std::string& site_id) {
    for (Peer& p : sites_)
      if (p.site_id == site_id) return &p;
    return nullptr;
  }

  Peer* find_routing(const std::string& routing_id) {
    for (Peer& p : sites_)
      if (p.routing_id == routing_id) return &p;
    return nullptr;
  }

  void handle_join(const Incoming& in, bool started) {
    const wire::Message& m = in.message;
    const auto& join = std::get<wire::Join>(m.body);
    if (m.study != opt_.study) return reject(in, wire::RejectReason::kWrongStudy);
    if (expected_index(m.sender) == opt_.expected_sites.size())
      return reject(in, wire::RejectReason::kUnknownSite);
    if (Peer* known = find_site(m.sender)) {
      known->routing_id = in.routing_id;
      known->num_train = join.num_train;
      known->num_val = join.num_val;
      known->synced = false;  // a restarted site has lost its copy of the model
      log_->info("site '{}' joined again; routing updated", m.sender);
    } else if (started) {
      return reject(in, wire::RejectReason::kUnexpected);
    } else {
      sites_.push_back({m.sender, in.routing_id, join.num_train, join.num_val});
      log_->info("site '{}' joined ({} train, {} val examples), {}/{}", m.sender, join.num_train,
                 join.num_val, sites_.size(), opt_.expected_sites.size());
    }
    send_best_effort(in.routing_id, make_message(m.study, 0, wire::JoinAck{}));
  }

  void reject(const Incoming& in, wire::RejectReason reason) {
    log_->warn("refused JOIN from '{}' (study '{}'): {}", printable(in.message.sender),
               printable(in.message.study), reject_reason_name(reason));
    // Addressed in the requester's study so that a site configured for another study reads it.
    send_best_effort(in.routing_id,
                     make_message(in.message.study, 0, wire::Reject{static_cast<uint32_t>(reason)}));
  }

  // ---- messaging -----------------------------------------------------------------------------

  wire::Message make_message(const std::string& study, uint32_t round, wire::Body body) const {
    wire::Message m;
    m.study = study;
    m.round = round;
    m.sender = kSender;
    m.compression = opt_.compression;
    m.body = std::move(body);
    return m;
  }

  // Sends pre-encoded bytes; false (logged) when the peer is gone.
  bool send_bytes(const std::string& routing_id, const std::string& bytes) {
    try {
      socket_.send(zmq::buffer(routing_id), zmq::send_flags::sndmore);
      socket_.send(zmq::buffer(bytes), zmq::send_flags::none);
      return true;
    } catch (const zmq::error_t& e) {
      log_->warn("send to '{}' failed: {}", printable(routing_id), e.what());
      return false;
    }
  }

  void send_best_effort(const std::string& routing_id, const wire::Message& m) {
    auto enc = wire::encode(m, opt_.zstd_level);
    if (!enc.ok()) {
      log_->error("cannot encode {}: {}", wire::message_type_name(m.type()), enc.status().to_string());
      return;
    }
    send_bytes(routing_id, enc->bytes);
  }

  // The next well-formed message before `deadline`, or nullopt. Malformed input is logged and
  // dropped here so that no caller ever sees it.
  StatusOr<std::optional<Incoming>> receive(Clock::time_point deadline) {
    for (;;) {
      FEDRAD_ASSIGN_OR_RETURN(bool ready, detail::wait_readable(socket_, deadline));
      if (!ready) return std::optional<Incoming>();
      std::vector<zmq::message_t> frames;
      if (!zmq::recv_multipart(socket_, std::back_inserter(frames), zmq::recv_flags::dontwait)) continue;
      if (frames.size() != 2) {
        log_->warn("dropped a message of {} frames (expected 2)", frames.size());
        continue;
      }
      Incoming in;
      in.routing_id = frames[0].to_string();
      in.wire_size = frames[1].size();
      auto decoded = wire::decode(frames[1].data(), frames[1].size(), opt_.max_message_bytes);
      if (!decoded.ok()) {
        log_->warn("dropped a malformed message from '{}': {}", printable(in.routing_id),
                   decoded.status().to_string());
        continue;
      }
      in.message = std::move(decoded->message);
      in.raw_size = decoded->raw_size;
      return std::optional<Incoming>(std::move(in));
    }
  }

  // Sends `instruction` to every site and collects one `reply_type` per site for the same round
  // until all replied or the round deadline passes.
  // Raw size of a message as if its model travelled as plain float32 weights.
  uint64_t raw_as_plain(const wire::Message& m, uint64_t raw_size) const {
    const wire::EncodedUpdate* u = update_of(m.body);
    if (u == nullptr || !u->present()) return raw_size;
    return raw_size - wire::encoded_update_bytes(*u) + plain_model_bytes_;
  }

  StatusOr<wire::Encoded> encode_instruction(const wire::Message& m) const {
    FEDRAD_ASSIGN_OR_RETURN(wire::Encoded enc, wire::encode(m, opt_.zstd_level));
    if (enc.bytes.size() > opt_.max_message_bytes)
      return invalid_argument("round " + std::to_string(m.round) + ": " + wire::message_type_name(m.type()) +
                              " of " + std::to_string(enc.bytes.size()) + " bytes exceeds the limit of " +
                              std::to_string(opt_.max_message_bytes));
    enc.raw_size = raw_as_plain(m, enc.raw_size);
    return enc;
  }

  // Sends `instruction` to every site (`resync`, when given, to the sites that do not hold the
  // downstream copy) and collects one `reply_type` per site for the same round.
  StatusOr<Exchange> exchange(const wire::Message& instruction, MessageType reply_type,
                              const wire::Message* resync = nullptr) {
    const uint32_t round = instruction.round;
    Exchange ex;
    ex.logs.resize(sites_.size());
    ex.replies.resize(sites_.size());
    FEDRAD_ASSIGN_OR_RETURN(wire::Encoded enc, encode_instruction(instruction));
    std::optional<wire::Encoded> resync_enc;
    std::vector<bool> pending(sites_.size(), false);
    size_t num_pending = 0;
    for (size_t i = 0; i < sites_.size(); ++i) {
      ex.logs[i].site_id = sites_[i].site_id;
      ex.logs[i].error_code = code_of(StatusCode::kTimeout);
      const wire::Encoded* e = &enc;
      if (resync != nullptr && !sites_[i].synced) {
        if (!resync_enc) {
          FEDRAD_ASSIGN_OR_RETURN(wire::Encoded r, encode_instruction(*resync));
          resync_enc = std::move(r);
        }
        e = &*resync_enc;
      }
      sites_[i].synced = false;  // until it answers: then it holds what it was sent
      if (!send_bytes(sites_[i].routing_id, e->bytes)) {
        ex.logs[i].error_code = code_of(StatusCode::kIoError);
        continue;
      }
      ex.logs[i].bytes_down = e->bytes.size();
      ex.logs[i].raw_bytes_down = e->raw_size;
      pending[i] = true;
      ++num_pending;
    }

    const auto deadline = detail::deadline_after(opt_.round_timeout_s);
    while (num_pending > 0) {
      FEDRAD_ASSIGN_OR_RETURN(std::optional<Incoming> in, receive(deadline));
      if (!in) break;
      const wire::Message& m = in->message;
      if (m.type() == MessageType::kJoin) {
        handle_join(*in, /*started=*/true);
        continue;
      }
      const Peer* peer = find_routing(in->routing_id);
      std::string why;
      if (peer == nullptr) {
        why = "unknown peer";
      } else if (m.study != opt_.study) {
        why = "study '" + printable(m.study) + "'";
      } else if (m.sender != peer->site_id) {
        why = "sender '" + printable(m.sender) + "' does not match the connection";
      } else if (m.type() != reply_type) {
        why = std::string("unexpected ") + wire::message_type_name(m.type());
      } else if (m.round != round) {
        why = "round " + std::to_string(m.round);
      }
      const size_t i = peer ? static_cast<size_t>(peer - sites_.data()) : 0;
      if (why.empty() && !pending[i]) why = "already answered or not asked";
      if (!why.empty()) {
        log_->warn("round {}: dropped {} from '{}': {}", round, wire::message_type_name(m.type()),
                   printable(in->routing_id), why);
        continue;
      }
      ex.logs[i].bytes_up = in->wire_size;
      ex.logs[i].raw_bytes_up = raw_as_plain(in->message, in->raw_size);
      ex.logs[i].error_code = 0;
      ex.replies[i] = std::move(in->message);
      pending[i] = false;
      --num_pending;
    }
    for (size_t i = 0; i < sites_.size(); ++i) {
      if (pending[i]) log_->warn("round {}: site '{}' missed the deadline", round, sites_[i].site_id);
    }
    return ex;
  }

  // ---- rounds --------------------------------------------------------------------------------

  StatusOr<Weights> run_round(uint32_t round, Weights global) {
    const auto start = Clock::now();
    wire::FitIns ins;
    ins.settings = opt_.settings;
    ins.settings.round = round;
    ins.settings.seed = opt_.settings.seed * 1000003ull + round;
    FEDRAD_ASSIGN_OR_RETURN(Downstream down, prepare_downstream(global, ins.settings.seed));
    std::optional<wire::Message> resync;
    if (down.update.present()) {
      wire::FitIns full = ins;
      full.weights = down.next_copy;
      resync = make_message(opt_.study, round, std::move(full));
      ins.update = down.update;
    } else {
      ins.weights = down.next_copy;
    }
    FEDRAD_ASSIGN_OR_RETURN(Exchange ex, exchange(make_message(opt_.study, round, std::move(ins)),
                                                  MessageType::kFitRes, resync ? &*resync : nullptr));
    commit_downstream(std::move(down), ex, /*fit=*/true);

    std::vector<SiteResult> results(sites_.size());
    size_t num_ok = 0;
    for (size_t i = 0; i < sites_.size(); ++i) {
      results[i] = to_site_result(round, i, ex, global);
      num_ok += results[i].ok ? 1 : 0;
    }
    if (num_ok < needed_sites())
      return io_error("round " + std::to_string(round) + " failed: " + std::to_string(num_ok) + " of " +
                      std::to_string(sites_.size()) + " sites succeeded, need " +
                      std::to_string(needed_sites()));

    Weights next = global;
    auto aggregated = strategy_->aggregate(round, global, results);
    if (aggregated.ok()) {
      next = std::move(aggregated).value();
    } else {
      log_->error("round {}: aggregation refused, keeping the previous global model: {}", round,
                  aggregated.status().to_string());
    }

    std::vector<EvalReport> evals(sites_.size());
    for (size_t i = 0; i < sites_.size(); ++i) {
      SiteRoundLog& s = ex.logs[i];
      s.ok = results[i].ok;
      s.error_code = results[i].error_code;
      if (!s.ok) continue;
      s.num_examples = results[i].fit.num_examples;
      s.train_loss = results[i].fit.train_loss;
      s.train_seconds = results[i].fit.train_seconds;
      evals[i] = results[i].eval_before;
    }
    RoundLog log = build_log(round, false, std::move(ex.logs), evals, start);
    log_progress(log);
    if (opt_.on_round_end) opt_.on_round_end(log, next);
    return next;
  }

  // A reply as the strategy sees it; failures and unusable updates are data, not errors.
  SiteResult to_site_result(uint32_t round, size_t i, Exchange& ex, const Weights& global) {
    SiteResult r;
    r.site_id = sites_[i].site_id;
    r.error_code = ex.logs[i].error_code;
    if (!ex.replies[i]) return r;
    auto& res = std::get<wire::FitRes>(ex.replies[i]->body);
    if (res.status != 0) {
      r.error_code = static_cast<int>(res.status);
      log_->warn("round {}: site '{}' failed with {} ({})", round, r.site_id, res.status,
                 status_code_name(static_cast<StatusCode>(res.status)));
      return r;
    }
    if (res.update.present()) {
      // Deltas are against the model the site trained from; adding them to the exact global
      // model keeps what the downstream codec did not send yet (it is resent as part of later
      // deltas), so aggregation sees global + delta_k.
      auto decoded = decode_update(res.update.codec, res.update.bytes, global);
      if (!decoded.ok()) {
        r.error_code = code_of(decoded.status().code());
        log_->warn("round {}: site '{}' sent an update this coordinator refuses: {}", round, r.site_id,
                   decoded.status().message());
        return r;
      }
      res.weights = std::move(decoded).value();
    }
    Status compatible = check_compatible(global, res.weights);
    if (!compatible.ok()) {
      r.error_code = code_of(StatusCode::kCorrupt);
      log_->warn("round {}: site '{}' sent an unusable model: {}", round, r.site_id, compatible.message());
      return r;
    }
    r.ok = true;
    r.fit.weights = std::move(res.weights);
    r.fit.num_examples = res.num_examples;
    r.fit.train_loss = res.train_loss;
    r.fit.train_seconds = res.train_seconds;
    r.eval_before = std::move(res.eval);
    return r;
  }

  // Returns the model the sites evaluated: the final global model as the downstream codec
  // delivered it (the same model when the codec is lossless), which is what the app saves.
  StatusOr<Weights> run_final_evaluation(const Weights& final_global) {
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
    FEDRAD_ASSIGN_OR_RETURN(Exchange ex, exchange(make_message(opt_.study, round, std::move(ins)),
                                                  MessageType::kEvalRes, resync ? &*resync : nullptr));
    const Weights final_weights = down.next_copy;
    commit_downstream(std::move(down), ex, /*fit=*/false);
    std::vector<EvalReport> evals(sites_.size());
    for (size_t i = 0; i < sites_.size(); ++i) {
      SiteRoundLog& s = ex.logs[i];
      if (!ex.replies[i]) continue;
      auto& res = std::get<wire::EvalRes>(ex.replies[i]->body);
      if (res.status != 0) {
        s.error_code = static_cast<int>(res.status);
        log_->warn("final evaluation: site '{}' failed with {} ({})", s.site_id, res.status,
                   status_code_name(static_cast<StatusCode>(res.status)));
        continue;
      }
      s.ok = true;
      s.num_examples = res.eval.num_examples;
      evals[i] = std::move(res.eval);
    }
    RoundLog log = build_log(round, true, std::move(ex.logs), evals, start);
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

  // After an exchange, a site holds the new copy iff it answered (a site that could not decode
  // answers with an error status and is resynchronised with the full model next time).
  void commit_downstream(Downstream d, const Exchange& ex, bool fit) {
    for (size_t i = 0; i < sites_.size(); ++i) {
      bool ok = false;
      if (ex.replies[i]) {
        if (fit) ok = std::get<wire::FitRes>(ex.replies[i]->body).status == 0;
        else ok = std::get<wire::EvalRes>(ex.replies[i]->body).status == 0;
      }
      sites_[i].synced = ok;
    }
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
    for (const Peer& p : sites_)
      send_best_effort(p.routing_id,
                       make_message(opt_.study, 0, wire::Shutdown{static_cast<uint32_t>(reason)}));
    try {
      socket_.set(zmq::sockopt::linger, kShutdownLingerMs);
    } catch (const zmq::error_t&) {
      // Closing with linger 0 only risks a site waiting for its idle timeout.
    }
    sites_.clear();
  }

  const CoordinatorOptions& opt_;
  std::shared_ptr<spdlog::logger> log_;
  std::unique_ptr<Strategy> strategy_ = make_fedavg();
  zmq::context_t ctx_;
  zmq::socket_t socket_;
  std::vector<Peer> sites_;  // joined, in expected order once the study starts
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
