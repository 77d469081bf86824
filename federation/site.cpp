#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstring>
#include <exception>
#include <functional>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <zmq.hpp>
#include <zmq_addon.hpp>

#include "common/log.h"
#include "federation/codec.h"
#include "federation/audit.h"
#include "federation/detail/net.h"
#include "federation/egress.h"
#include "federation/federation.h"
#include "federation/secagg.h"
#include "federation/wire.h"

namespace fedrad::fed {
namespace {

using detail::Clock;
using wire::MessageType;

uint32_t code_of(const Status& st) { return static_cast<uint32_t>(st.code()); }

// Learners wrap libraries that throw (LibTorch); an exception must become a status code on the
// wire, not a dead site.
template <typename F>
auto call_learner(F&& f) -> decltype(f()) {
  try {
    return f();
  } catch (const std::exception& e) {
    return internal_error(std::string("learner threw: ") + e.what());
  } catch (...) {
    return internal_error("learner threw a non-standard exception");
  }
}

class SiteRunner {
 public:
  SiteRunner(Learner& learner, const SiteOptions& options)
      : learner_(learner),
        opt_(options),
        log_(logger("site-" + options.site_id)),
        egress_(EgressPolicy{options.site_id, options.study, ""}) {}

  Status run() {
    if (opt_.site_id.empty()) return invalid_argument("site: empty site id");
    auto up = CodecSpec::parse(opt_.upstream_codec);
    if (!up.ok()) return invalid_argument("site '" + opt_.site_id + "': upstream codec: " + up.status().message());
    up_spec_ = *up;
    if (opt_.secure_aggregation) {
      if (Status composes = check_secure_aggregation_codec(up_spec_); !composes.ok())
        return invalid_argument("site '" + opt_.site_id + "': upstream codec: " + composes.message());
    }
    egress_ = EgressGuard(EgressPolicy{opt_.site_id, opt_.study, up_spec_.plain() ? "" : up_spec_.to_string()});
    FEDRAD_RETURN_IF_ERROR(egress_.check_policy());
    if (!opt_.audit_log.empty()) {
      auto audit = AuditLog::open(opt_.audit_log);
      if (!audit.ok()) return audit.status();
      audit_ = std::move(audit).value();
    }
    auto down = CodecSpec::parse(opt_.downstream_codec);
    if (!down.ok())
      return invalid_argument("site '" + opt_.site_id + "': downstream codec: " + down.status().message());
    try {
      return serve();
    } catch (const zmq::error_t& e) {
      return io_error("site '" + opt_.site_id + "' to coordinator at " + opt_.coordinator_address +
                      ": zmq: " + e.what());
    } catch (const std::exception& e) {
      return internal_error("site '" + opt_.site_id + "': " + e.what());
    }
  }

 private:
  // The socket is shared by this thread and the heartbeat thread; every use holds socket_mu_
  // (ZeroMQ sockets may change threads behind a full memory barrier, which the mutex gives).
  Status serve() {
    if (opt_.keys.enabled()) FEDRAD_RETURN_IF_ERROR(require_curve());
    socket_ = zmq::socket_t(ctx_, zmq::socket_type::dealer);
    detail::configure_socket(socket_, opt_.max_message_bytes, opt_.chunk_bytes);
    if (opt_.keys.enabled()) {
      detail::make_curve_client(socket_, opt_.keys);
      // Handshake outcomes (a refused key, a wrong coordinator key) come as monitor events.
      monitor_address_ = "inproc://site-monitor-" + std::to_string(reinterpret_cast<uintptr_t>(this));
      if (zmq_socket_monitor(socket_.handle(), monitor_address_.c_str(),
                             ZMQ_EVENT_HANDSHAKE_SUCCEEDED | ZMQ_EVENT_HANDSHAKE_FAILED_AUTH |
                                 ZMQ_EVENT_HANDSHAKE_FAILED_PROTOCOL | ZMQ_EVENT_HANDSHAKE_FAILED_NO_DETAIL |
                                 ZMQ_EVENT_DISCONNECTED) != 0)
        return io_error("site '" + opt_.site_id + "': cannot monitor its socket");
      monitor_ = zmq::socket_t(ctx_, zmq::socket_type::pair);
      monitor_.set(zmq::sockopt::linger, 0);
      monitor_.connect(monitor_address_);
    } else {
      log_->warn("talking to the coordinator WITHOUT encryption or authentication (no keys)");
    }
    try {
      socket_.connect(opt_.coordinator_address);
    } catch (const zmq::error_t& e) {
      return io_error("site '" + opt_.site_id + "' cannot connect to " + opt_.coordinator_address + ": " +
                      e.what());
    }
    FEDRAD_RETURN_IF_ERROR(send_join());
    log_->info("joining study '{}' at {}{}", opt_.study, opt_.coordinator_address,
               opt_.keys.enabled() ? " (CurveZMQ)" : "");
    heartbeat_ = std::thread([this] { heartbeat_loop(); });
    struct StopHeartbeat {  // also when serve_loop throws
      SiteRunner* r;
      ~StopHeartbeat() {
        {
          std::lock_guard<std::mutex> lock(r->hb_mu_);
          r->stop_ = true;
        }
        r->hb_cv_.notify_all();
        r->heartbeat_.join();
      }
    };
    Status st;
    {
      StopHeartbeat stop{this};
      st = serve_loop();
    }
    if (monitor_) {
      zmq_socket_monitor(socket_.handle(), nullptr, 0);
      monitor_.close();
    }
    return st;
  }

  Status send_join() {
    return send(0, wire::Join{learner_.num_train_examples(), learner_.num_val_examples(), session_});
  }

  // Liveness for the coordinator: a HEARTBEAT every heartbeat_s, also while the learner trains.
  void heartbeat_loop() {
    std::unique_lock<std::mutex> lock(hb_mu_);
    for (;;) {
      hb_cv_.wait_for(lock, std::chrono::duration<double>(opt_.heartbeat_s), [&] { return stop_; });
      if (stop_) return;
      lock.unlock();
      Status st = send(working_round_.load(), wire::Heartbeat{working_round_.load()});
      if (!st.ok()) log_->debug("heartbeat not sent: {}", st.to_string());
      lock.lock();
    }
  }

  // Handshake failures: the coordinator refusing this site's key ends the site; repeated
  // failures of other kinds mean the coordinator's key is not the one we were given.
  Status check_monitor() {
    if (!monitor_) return ok_status();
    for (;;) {
      std::vector<zmq::message_t> ev;
      if (!zmq::recv_multipart(monitor_, std::back_inserter(ev), zmq::recv_flags::dontwait)) return ok_status();
      if (ev.empty() || ev[0].size() < 6) continue;
      uint16_t event;
      uint32_t value;
      std::memcpy(&event, ev[0].data(), 2);
      std::memcpy(&value, static_cast<const char*>(ev[0].data()) + 2, 4);
      if (event == ZMQ_EVENT_HANDSHAKE_SUCCEEDED) {
        handshake_ok_ = true;
        handshake_failures_ = 0;
      } else if (event == ZMQ_EVENT_HANDSHAKE_FAILED_AUTH) {
        return invalid_argument("site '" + opt_.site_id + "': the coordinator at " + opt_.coordinator_address +
                                " refused this site's key (status " + std::to_string(value) +
                                "): its public key is not on the coordinator's allow-list");
      } else if (event == ZMQ_EVENT_HANDSHAKE_FAILED_PROTOCOL || event == ZMQ_EVENT_HANDSHAKE_FAILED_NO_DETAIL ||
                 (event == ZMQ_EVENT_DISCONNECTED && !handshake_ok_)) {
        ++handshake_failures_;
        log_->warn("CurveZMQ handshake with {} failed ({} time(s))", opt_.coordinator_address, handshake_failures_);
        if (handshake_failures_ >= kMaxHandshakeFailures)
          return invalid_argument("site '" + opt_.site_id + "': the CurveZMQ handshake with the coordinator at " +
                                  opt_.coordinator_address + " failed " + std::to_string(handshake_failures_) +
                                  " times: the coordinator's public key this site was given is probably wrong, "
                                  "or the coordinator refuses this site's key");
      } else if (event == ZMQ_EVENT_DISCONNECTED) {
        handshake_ok_ = false;  // the next connection must complete its own handshake
      }
    }
  }

  Status serve_loop() {
    auto last_heard = Clock::now();
    for (;;) {
      if (detail::seconds_since(last_heard) > opt_.idle_timeout_s)
        return timeout_error("site '" + opt_.site_id + "': no message from the coordinator at " +
                             opt_.coordinator_address + " for " + std::to_string(opt_.idle_timeout_s) + " s");
      zmq::message_t frame;
      {
        std::lock_guard<std::mutex> lock(socket_mu_);
        zmq::pollitem_t items[2] = {{static_cast<void*>(socket_), 0, ZMQ_POLLIN, 0},
                                    {monitor_ ? static_cast<void*>(monitor_) : nullptr, 0, ZMQ_POLLIN, 0}};
        const auto left = std::chrono::duration<double>(opt_.idle_timeout_s) - (Clock::now() - last_heard);
        const long ms = std::clamp<long>(static_cast<long>(std::chrono::duration<double, std::milli>(left).count()) + 1,
                                         0, 100);
        try {
          zmq::poll(items, monitor_ ? 2 : 1, std::chrono::milliseconds(ms));
        } catch (const zmq::error_t& e) {
          if (e.num() == EINTR) continue;
          throw;
        }
        if (monitor_ && (items[1].revents & ZMQ_POLLIN)) FEDRAD_RETURN_IF_ERROR(check_monitor());
        if (!(items[0].revents & ZMQ_POLLIN)) continue;
        if (!socket_.recv(frame, zmq::recv_flags::dontwait)) continue;
        if (frame.more()) {
          drain_multipart();
          log_->warn("skipped a multi-frame message");
          continue;
        }
      }
      auto decoded = wire::decode(frame.data(), frame.size(), opt_.max_message_bytes);
      if (!decoded.ok()) {
        log_->warn("skipped a malformed message: {}", decoded.status().to_string());
        continue;
      }
      wire::Message* m = &decoded->message;
      if (m->sequence <= last_coordinator_sequence_) {
        log_->warn("skipped a replayed or stale {} (sequence {})", wire::message_type_name(m->type()), m->sequence);
        continue;
      }
      last_coordinator_sequence_ = m->sequence;
      last_heard = Clock::now();
      uint64_t wire_size = frame.size();
      uint64_t raw_size = decoded->raw_size;
      std::optional<wire::Decoded> inner;
      std::string assembled;
      if (m->type() == MessageType::kChunk) {
        frame = zmq::message_t();  // decoded: the frame's bytes are in the chunk now (not held twice)
        auto whole = assembler_.add(std::move(std::get<wire::Chunk>(m->body)));
        if (!whole.ok()) {
          log_->warn("skipped a chunked message: {}", whole.status().to_string());
          continue;
        }
        if (whole->empty()) continue;
        auto d = wire::decode(whole->data(), whole->size(), opt_.max_message_bytes);
        if (!d.ok() || d->message.type() == MessageType::kChunk) {
          log_->warn("skipped a malformed chunked message: {}", d.ok() ? "nested chunk" : d.status().to_string());
          continue;
        }
        wire_size = whole->size();
        assembled = std::move(*whole);
        inner = std::move(d).value();
        raw_size = inner->raw_size;
        m = &inner->message;
      }
      if (assembled.empty()) {
        FEDRAD_RETURN_IF_ERROR(
            audit_.record("in", wire::message_type_name(m->type()), m->round, frame.data(), wire_size, raw_size));
      } else {
        FEDRAD_RETURN_IF_ERROR(audit_.record("in", wire::message_type_name(m->type()), m->round, assembled.data(),
                                             assembled.size(), raw_size));
        std::string().swap(assembled);
      }
      frame = zmq::message_t();
      if (m->study != opt_.study) {
        log_->warn("ignored {} for study '{}' (this site is in '{}')", wire::message_type_name(m->type()),
                   detail::printable(m->study), opt_.study);
        continue;
      }
      bool done = false;
      FEDRAD_RETURN_IF_ERROR(dispatch(*m, &done));
      if (done) return ok_status();
      if (vanished_) {
        // What was sent still leaves (a crash after the send returned), nothing more does.
        std::lock_guard<std::mutex> lock(socket_mu_);
        socket_.set(zmq::sockopt::linger, 2000);
        return io_error("site '" + opt_.site_id + "' stopped after sending " +
                        wire::message_type_name(static_cast<MessageType>(opt_.vanish_after)) + " (vanish_after, tests)");
      }
    }
  }

  void drain_multipart() {
    zmq::message_t part;
    while (socket_.get(zmq::sockopt::rcvmore)) {
      if (!socket_.recv(part, zmq::recv_flags::dontwait)) break;
    }
  }

  Status dispatch(wire::Message& m, bool* done) {
    switch (m.type()) {
      case MessageType::kJoinAck:
        log_->info("joined study '{}'", opt_.study);
        return ok_status();
      case MessageType::kReject: {
        const uint32_t reason = std::get<wire::Reject>(m.body).reason;
        if (reason == static_cast<uint32_t>(wire::RejectReason::kRejoin)) {
          // The coordinator restarted (resumed from its checkpoint): join again; it sends the
          // full model next, so the copy of the old one is of no use. Several requests (one per
          // queued heartbeat) get one JOIN per heartbeat period.
          if (detail::seconds_since(last_join_) < opt_.heartbeat_s) return ok_status();
          log_->info("the coordinator asks this site to join again (it restarted?)");
          copy_.clear();
          last_join_ = Clock::now();
          return send_join();
        }
        return invalid_argument("site '" + opt_.site_id + "': the coordinator at " +
                                opt_.coordinator_address + " refused to admit it to study '" + opt_.study +
                                "' (reason code " + std::to_string(reason) + ")");
      }
      case MessageType::kFitIns: {
        auto& ins = std::get<wire::FitIns>(m.body);
        Status received = receive_model(ins.weights, ins.update);
        if (!received.ok()) return reply_fit_failure(m.round, "decoding the global model", received);
        return on_fit(m.round, ins);
      }
      case MessageType::kEvalIns: {
        auto& ins = std::get<wire::EvalIns>(m.body);
        Status received = receive_model(ins.weights, ins.update);
        if (!received.ok()) {
          log_->error("final evaluation: decoding the global model failed: {}", received.to_string());
          return send(m.round, wire::EvalRes{code_of(received), {}});
        }
        return on_eval(m.round, ins);
      }
      case MessageType::kShutdown:
        log_->info("coordinator ended the study (reason {})", std::get<wire::Shutdown>(m.body).reason);
        *done = true;
        return ok_status();
      case MessageType::kSecAggKeyList:
        return on_key_list(m.round, std::get<wire::SecAggKeyList>(m.body));
      case MessageType::kSecAggRelay:
        return on_relay(m.round, std::get<wire::SecAggRelay>(m.body));
      case MessageType::kSecAggUnmask:
        return on_unmask(m.round, std::get<wire::SecAggUnmask>(m.body));
      default:
        log_->warn("ignored unexpected {}", wire::message_type_name(m.type()));
        return ok_status();
    }
  }

  // The model the coordinator sent, into `weights`: plain weights as they are, an encoded update
  // applied to this site's copy of the last model (which becomes the new copy). On failure the
  // copy is dropped; the coordinator then sends the full model next time.
  // The learner is then given copy_ itself (no second copy of the model here).
  Status receive_model(Weights& weights, const wire::EncodedUpdate& update) {
    if (!update.present()) {
      copy_ = std::move(weights);
      return ok_status();
    }
    if (copy_.empty()) {
      return unsupported("received an encoded update (" + update.codec + ") but holds no model to apply it to");
    }
    auto decoded = decode_update(update.codec, update.bytes, copy_);
    if (!decoded.ok()) {
      copy_.clear();
      return decoded.status();
    }
    copy_ = std::move(decoded).value();
    return ok_status();
  }

  Status on_fit(uint32_t round, const wire::FitIns& ins) {
    const auto start = Clock::now();
    working_round_ = round;
    struct Idle {
      std::atomic<uint32_t>& r;
      ~Idle() { r = 0; }
    } idle{working_round_};
    secagg_.reset();
    if (opt_.secure_aggregation && !ins.settings.secure_aggregation)
      return reply_fit_failure(round, "sending the update",
                               invalid_argument("this site sends its update only under secure aggregation "
                                                "(privacy.secure_aggregation), and the coordinator did not ask for it"));
    // A learner that evaluates as part of fit (a regional aggregator) is not asked to evaluate first.
    const bool eval_in_fit = learner_.evaluates_in_fit();
    StatusOr<EvalReport> eval = EvalReport{};
    const auto eval_start = Clock::now();
    if (!eval_in_fit) eval = call_learner([&] { return learner_.evaluate(copy_); });
    if (!eval.ok()) return reply_fit_failure(round, "evaluation", eval.status());
    const double eval_seconds = detail::seconds_since(eval_start);
    auto fit = call_learner([&] { return learner_.fit(copy_, ins.settings); });
    if (!fit.ok()) return reply_fit_failure(round, "training", fit.status());
    if (eval_in_fit) eval = std::move(fit->eval_before);
    if (ins.settings.secure_aggregation)
      return begin_secagg(round, ins.settings.seed, std::move(fit).value(), std::move(eval).value());

    wire::FitRes res;
    res.num_examples = fit->num_examples;
    res.train_loss = fit->train_loss;
    res.train_seconds = fit->train_seconds;
    res.eval = std::move(eval).value();
    if (up_spec_.plain()) {
      res.weights = std::move(fit->weights);
    } else {
      // Against the model this site trained from; the residual stays here for the next round.
      const uint64_t seed = ins.settings.seed * 0x9e3779b97f4a7c15ull + std::hash<std::string>()(opt_.site_id);
      auto bytes = encode_update(up_spec_, fit->weights, copy_, seed, &feedback_);
      Weights().swap(fit->weights);  // encoded: not held beside the message
      if (!bytes.ok()) return reply_fit_failure(round, "encoding the update", bytes.status());
      res.update.codec = up_spec_.to_string();
      res.update.bytes = std::move(bytes).value();
    }
    Status sent = send(round, std::move(res));
    if (sent.code() == StatusCode::kInvalidArgument)
      return reply_fit_failure(round, "encoding the update", sent);
    FEDRAD_RETURN_IF_ERROR(sent);
    // The split of the round's time (bench/peers.sh reads it: evaluation + training are the site's
    // own work, the rest is decoding, encoding and sending).
    log_->info("round {}: trained on {} examples, loss {:.4f}; evaluated {} in {:.3f} s, trained in {:.3f} s, "
               "round handled in {:.3f} s",
               round, fit->num_examples, fit->train_loss, eval_in_fit ? "in training" : "the received model",
               eval_seconds, fit->train_seconds, detail::seconds_since(start));
    return ok_status();
  }

  // ---- secure aggregation (federation/secagg.h; the message flow is in wire.h) ------------------
  // The update stays here, unquantised, until the coordinator's key list fixes the fixed-point
  // scale; only the masked vector leaves.

  struct SecAggState {
    uint32_t round = 0;
    std::unique_ptr<secagg::SecAggClient> client;
    // The values to mask: the trained weights minus the model received, flattened, plus what error
    // feedback carried over; with shared-seed random-k only those at `chosen` (sorted flat indices).
    std::vector<float> delta;
    std::vector<int64_t> chosen;
    uint64_t num_examples = 0;
    double train_loss = 0, train_seconds = 0;
    EvalReport eval;
    wire::SecAggKeyList list;  // parameters, once the key list came (keys dropped)
    bool listed = false;
    size_t parties = 0;
  };

  // The update to mask, with the upstream codec's shared-seed random-k and error feedback: every
  // site keeps the same coordinates (a function of the round's seed, which the coordinator also
  // knows), and what was not sent waits in the residual for a later round (Deep Gradient
  // Compression's momentum correction too when ef:m).
  void select_secagg_values(uint64_t round_seed, const Weights& trained, SecAggState* st) {
    std::vector<float> x;
    x.reserve(static_cast<size_t>(num_values(copy_)));
    for (size_t t = 0; t < copy_.size(); ++t)
      for (size_t i = 0; i < copy_[t].data.size(); ++i)
        x.push_back(static_cast<float>(static_cast<double>(trained[t].data[i]) - copy_[t].data[i]));
    const bool sparse = up_spec_.sparsify == Sparsify::kRandK;
    const bool feedback = up_spec_.error_feedback;
    if (sparse) st->chosen = randk_indices(copy_, up_spec_.fraction, secure_randk_seed(round_seed));
    if (feedback) accumulate_feedback(up_spec_, &x, &feedback_);
    if (sparse) {
      st->delta.reserve(st->chosen.size());
      for (int64_t j : st->chosen) st->delta.push_back(x[static_cast<size_t>(j)]);
    } else {
      st->delta = feedback ? x : std::move(x);
    }
    if (!feedback) return;
    // The chosen values go out whole (clipping's loss is added back in on_relay).
    settle_feedback(up_spec_, x, sparse ? &st->chosen : nullptr, st->delta, &feedback_);
    // Every value goes out: momentum factor masking clears all of u (codec.h: u = 0 where sent).
    if (!sparse) std::fill(feedback_.velocity.begin(), feedback_.velocity.end(), 0.0f);
  }

  Status begin_secagg(uint32_t round, uint64_t round_seed, FitReport fit, EvalReport eval) {
    Status compatible = check_compatible(copy_, fit.weights);
    if (!compatible.ok()) return reply_fit_failure(round, "secure aggregation: the trained model", compatible);
    SecAggState st;
    st.round = round;
    select_secagg_values(round_seed, fit.weights, &st);
    st.num_examples = fit.num_examples;
    st.train_loss = fit.train_loss;
    st.train_seconds = fit.train_seconds;
    st.eval = std::move(eval);
    secagg::Params p;
    p.round = round;
    st.client = std::make_unique<secagg::SecAggClient>(p, 0);
    const secagg::Key pk = st.client->public_key();
    secagg_ = std::move(st);
    FEDRAD_RETURN_IF_ERROR(send(round, wire::SecAggKeys{pk}));
    log_->info("round {}: trained on {} examples, loss {:.4f}; update kept here for secure aggregation", round,
               fit.num_examples, fit.train_loss);
    return ok_status();
  }

  // A step that cannot go on: the coordinator gets the code (the site is out of this round's sum).
  Status secagg_failure(uint32_t round, const char* what, const Status& error) {
    secagg_.reset();
    return reply_fit_failure(round, what, error);
  }

  // Messages of another round or out of order are skipped (logged): the coordinator may have
  // moved on without this site.
  SecAggState* secagg_for(uint32_t round, const char* what) {
    if (!secagg_ || secagg_->round != round) {
      log_->warn("ignored {} for round {}: no secure aggregation under way for it", what, round);
      return nullptr;
    }
    return &*secagg_;
  }

  Status on_key_list(uint32_t round, wire::SecAggKeyList& list) {
    SecAggState* st = secagg_for(round, "SECAGG_KEY_LIST");
    if (st == nullptr) return ok_status();
    if (st->listed) return secagg_failure(round, "secure aggregation", invalid_argument("a second key list"));
    if (list.dim != st->delta.size() + 1)
      return secagg_failure(round, "secure aggregation",
                            invalid_argument("the key list asks for " + std::to_string(list.dim) + " values, this site masks " +
                                             std::to_string(st->delta.size()) + " + 1 (upstream codec '" +
                                             up_spec_.to_string() + "': the coordinator's must match)"));
    secagg::Params p;
    p.parties = static_cast<uint32_t>(list.keys.size());
    p.threshold = list.threshold;
    p.dim = list.dim;
    p.round = round;
    Status bound = st->client->bind(p, list.party);
    if (!bound.ok()) return secagg_failure(round, "secure aggregation", bound);
    auto boxes = st->client->share_keys(list.keys);
    if (!boxes.ok()) return secagg_failure(round, "secure aggregation: sharing keys", boxes.status());
    wire::SecAggShares out;
    out.party = list.party;
    for (secagg::EncryptedShares& e : *boxes) out.boxes.push_back(wire::SecAggBox{e.to, std::move(e.nonce_and_box)});
    st->parties = list.keys.size();
    list.keys.clear();
    st->list = std::move(list);
    st->listed = true;
    return send(round, std::move(out));
  }

  Status on_relay(uint32_t round, const wire::SecAggRelay& relay) {
    SecAggState* st = secagg_for(round, "SECAGG_RELAY");
    if (st == nullptr) return ok_status();
    const wire::SecAggKeyList& l = st->list;
    if (!st->listed || relay.party != l.party || relay.shared.size() != st->parties)
      return secagg_failure(round, "secure aggregation", invalid_argument("a relay that does not match the key list"));
    std::vector<secagg::EncryptedShares> received;
    for (const wire::SecAggBox& b : relay.boxes) received.push_back(secagg::EncryptedShares{b.party, l.party, b.box});
    const std::vector<bool> shared(relay.shared.begin(), relay.shared.end());
    // [n * clip(delta), n] in fixed point; n as an integer (its own scale), capped as announced.
    const uint64_t n = std::min<uint64_t>(st->num_examples, l.weight_cap);
    if (n < st->num_examples)
      log_->warn("round {}: weight {} capped at {} (the largest training count announced)", round, st->num_examples, n);
    std::vector<uint32_t> input(l.dim);
    size_t clipped = 0;
    for (size_t j = 0; j < st->delta.size(); ++j) {
      const double d = st->delta[j];
      const double c = std::clamp(d, -l.clip, l.clip);
      if (c != d) {
        ++clipped;
        // Error feedback keeps what the clip cut off (the rounding to the fixed point is below 1/scale).
        if (up_spec_.error_feedback) feedback_.residual[st->chosen.empty() ? j : static_cast<size_t>(st->chosen[j])] += static_cast<float>(d - c);
      }
      input[j] = static_cast<uint32_t>(static_cast<int32_t>(std::llround(c * static_cast<double>(n) * l.scale)));
    }
    input[l.dim - 1] = static_cast<uint32_t>(n);
    if (clipped > 0)
      log_->warn("round {}: {} of {} update values clipped to +-{} for secure aggregation", round, clipped,
                 st->delta.size(), l.clip);
    std::vector<float>().swap(st->delta);
    auto masked = st->client->masked_input(input, received, shared);
    if (!masked.ok()) return secagg_failure(round, "secure aggregation: masking", masked.status());
    wire::SecAggMasked out;
    out.party = l.party;
    out.train_loss = st->train_loss;
    out.train_seconds = st->train_seconds;
    out.eval = st->eval;
    out.values = std::move(masked).value();
    return send(round, std::move(out));
  }

  Status on_unmask(uint32_t round, const wire::SecAggUnmask& req) {
    SecAggState* st = secagg_for(round, "SECAGG_UNMASK");
    if (st == nullptr) return ok_status();
    if (!st->listed || req.party != st->list.party || req.sent_input.size() != st->parties)
      return secagg_failure(round, "secure aggregation", invalid_argument("an unmask request that does not match the key list"));
    secagg::UnmaskRequest r;
    r.sent_input.assign(req.sent_input.begin(), req.sent_input.end());
    auto res = st->client->unmask(r);
    if (!res.ok()) return secagg_failure(round, "secure aggregation: unmasking", res.status());
    wire::SecAggUnmaskRes out;
    out.party = st->list.party;
    for (size_t k = 0; k < res->self_mask_of.size(); ++k)
      out.self_mask.push_back(wire::SecAggShareOf{res->self_mask_of[k], res->self_mask_shares[k]});
    for (size_t k = 0; k < res->secret_key_of.size(); ++k)
      out.secret_key.push_back(wire::SecAggShareOf{res->secret_key_of[k], res->secret_key_shares[k]});
    secagg_.reset();
    FEDRAD_RETURN_IF_ERROR(send(round, std::move(out)));
    log_->info("round {}: secure aggregation done (unmasking shares sent)", round);
    return ok_status();
  }

  // The full error stays in this site's log; only its code crosses the network.
  Status reply_fit_failure(uint32_t round, const char* what, const Status& error) {
    log_->error("round {}: {} failed: {}", round, what, error.to_string());
    wire::FitRes res;
    res.status = code_of(error);
    return send(round, std::move(res));
  }

  Status on_eval(uint32_t round, const wire::EvalIns& ins) {
    auto eval = call_learner([&] { return learner_.evaluate(copy_); });
    wire::EvalRes res;
    if (eval.ok()) {
      res.eval = std::move(eval).value();
    } else {
      log_->error("final evaluation failed: {}", eval.status().to_string());
      res.status = code_of(eval.status());
    }
    Status sent = send(round, res);
    if (sent.code() == StatusCode::kInvalidArgument) {
      log_->error("final evaluation: cannot encode the report: {}", sent.to_string());
      return send(round, wire::EvalRes{code_of(sent), {}});
    }
    return sent;
  }

  // invalid_argument means the message itself is unusable (too big, inconsistent shapes), which
  // callers turn into a failure reply; other errors are transport failures. Thread-safe (the
  // heartbeat thread sends too).
  Status send(uint32_t round, wire::Body body) {
    wire::Message m;
    m.study = opt_.study;
    m.round = round;
    m.sender = opt_.site_id;
    m.compression = opt_.compression;
    m.body = std::move(body);
    const MessageType type = m.type();
    const bool heartbeat = type == MessageType::kHeartbeat;
    auto too_big = [&](const wire::Encoded& enc) {
      return invalid_argument(std::string(wire::message_type_name(type)) + " of " + std::to_string(enc.bytes.size()) +
                              " bytes exceeds the limit of " + std::to_string(opt_.max_message_bytes));
    };
    if (heartbeat) {
      std::lock_guard<std::mutex> lock(socket_mu_);
      m.sequence = ++sequence_;
      FEDRAD_ASSIGN_OR_RETURN(wire::Encoded enc, egress_.seal(m, &copy_, opt_.zstd_level));
      if (enc.bytes.size() > opt_.max_message_bytes) return too_big(enc);
      // Never blocks: while the coordinator is away, a full queue drops heartbeats rather than
      // stalling this site. Liveness only: not an audited exchange.
      if (!socket_.send(zmq::buffer(enc.bytes), zmq::send_flags::dontwait)) return io_error("heartbeat queue full");
      return ok_status();
    }
    // Encoded and sent without holding the socket's lock for long, so that the heartbeat thread
    // keeps sending while a large update is encoded and goes out (its heartbeats travel between
    // the chunks). The order of the frames is kept by stamping each one's sequence number under
    // the lock just before it is sent; the message's own number is the transfer id of its chunks.
    {
      std::lock_guard<std::mutex> lock(socket_mu_);
      m.sequence = ++sequence_;
    }
    // The only way out: the egress guard admits the message and encodes it (chunks below are
    // pieces of these sealed bytes).
    FEDRAD_ASSIGN_OR_RETURN(wire::Encoded enc, egress_.seal(m, &copy_, opt_.zstd_level));
    m.body = wire::Heartbeat{};  // encoded: the model in the message is not needed any more
    if (enc.bytes.size() > opt_.max_message_bytes) return too_big(enc);
    if (enc.bytes.size() <= opt_.chunk_bytes) {
      std::lock_guard<std::mutex> lock(socket_mu_);
      FEDRAD_RETURN_IF_ERROR(wire::restamp_sequence(enc.bytes.data(), enc.bytes.size(), ++sequence_));
      socket_.send(zmq::buffer(enc.bytes), zmq::send_flags::none);
    } else {
      wire::Chunker chunker(enc.bytes, m, /*transfer=*/m.sequence, opt_.chunk_bytes);
      for (uint32_t i = 0; i < chunker.count(); ++i) {
        FEDRAD_ASSIGN_OR_RETURN(std::string chunk, chunker.chunk(i, 0));  // its sequence is stamped below
        // Handed to ZeroMQ without another copy; freed once it has left.
        auto* owned = new std::string(std::move(chunk));
        zmq::message_t frame(owned->data(), owned->size(),
                             [](void*, void* hint) { delete static_cast<std::string*>(hint); }, owned);
        std::lock_guard<std::mutex> lock(socket_mu_);
        FEDRAD_RETURN_IF_ERROR(wire::restamp_sequence(static_cast<char*>(frame.data()), frame.size(), ++sequence_));
        socket_.send(frame, zmq::send_flags::none);
      }
    }
    FEDRAD_RETURN_IF_ERROR(audit_.record("out", wire::message_type_name(type), round, enc.bytes.data(),
                                         enc.bytes.size(), enc.raw_size));
    if (opt_.vanish_after != 0 && static_cast<uint16_t>(type) == opt_.vanish_after) vanished_ = true;
    return ok_status();
  }

  Learner& learner_;
  const SiteOptions& opt_;
  std::shared_ptr<spdlog::logger> log_;
  static constexpr int kMaxHandshakeFailures = 3;

  zmq::context_t ctx_;
  zmq::socket_t socket_;
  std::mutex socket_mu_;       // every use of socket_, and sequence_
  uint64_t sequence_ = detail::initial_sequence();
  const uint64_t session_ = sequence_ ^ (static_cast<uint64_t>(::getpid()) << 32);
  uint64_t last_coordinator_sequence_ = 0;
  wire::ChunkAssembler assembler_{opt_.max_message_bytes};
  std::string monitor_address_;
  zmq::socket_t monitor_;      // handshake events (CurveZMQ only)
  bool handshake_ok_ = false;
  int handshake_failures_ = 0;
  std::thread heartbeat_;
  std::mutex hb_mu_;
  std::condition_variable hb_cv_;
  bool stop_ = false;
  std::atomic<uint32_t> working_round_{0};
  Clock::time_point last_join_ = Clock::now();
  CodecSpec up_spec_;
  Weights copy_;            // the global model as last received (reference of deltas both ways)
  ErrorFeedback feedback_;  // upstream residual, across rounds
  EgressGuard egress_;      // every outgoing message passes here
  std::optional<SecAggState> secagg_;  // this round's secure aggregation, while under way
  bool vanished_ = false;   // SiteOptions::vanish_after (tests)
  AuditLog audit_;          // what crossed the boundary, hash-chained
};

}  // namespace

Status run_site(Learner& learner, const SiteOptions& options) {
  SiteRunner runner(learner, options);
  return runner.run();
}

}  // namespace fedrad::fed
