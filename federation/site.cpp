#include <exception>
#include <functional>
#include <string>
#include <zmq.hpp>

#include "common/log.h"
#include "federation/codec.h"
#include "federation/audit.h"
#include "federation/detail/net.h"
#include "federation/egress.h"
#include "federation/federation.h"
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
  Status serve() {
    socket_ = zmq::socket_t(ctx_, zmq::socket_type::dealer);
    detail::configure_socket(socket_, opt_.max_message_bytes);
    // The coordinator's ROUTER addresses us by this id, and a reconnect keeps it.
    socket_.set(zmq::sockopt::routing_id, opt_.site_id);
    try {
      socket_.connect(opt_.coordinator_address);
    } catch (const zmq::error_t& e) {
      return io_error("site '" + opt_.site_id + "' cannot connect to " + opt_.coordinator_address + ": " +
                      e.what());
    }
    FEDRAD_RETURN_IF_ERROR(send(0, wire::Join{learner_.num_train_examples(), learner_.num_val_examples()}));
    log_->info("joining study '{}' at {}", opt_.study, opt_.coordinator_address);

    for (;;) {
      const auto deadline = detail::deadline_after(opt_.idle_timeout_s);
      FEDRAD_ASSIGN_OR_RETURN(bool ready, detail::wait_readable(socket_, deadline));
      if (!ready)
        return timeout_error("site '" + opt_.site_id + "': no message from the coordinator at " +
                             opt_.coordinator_address + " for " + std::to_string(opt_.idle_timeout_s) + " s");
      zmq::message_t frame;
      if (!socket_.recv(frame, zmq::recv_flags::dontwait)) continue;
      if (frame.more()) {
        drain_multipart();
        log_->warn("skipped a multi-frame message");
        continue;
      }
      auto decoded = wire::decode(frame.data(), frame.size(), opt_.max_message_bytes);
      if (!decoded.ok()) {
        log_->warn("skipped a malformed message: {}", decoded.status().to_string());
        continue;
      }
      wire::Message& m = decoded->message;
      FEDRAD_RETURN_IF_ERROR(audit_.record("in", wire::message_type_name(m.type()), m.round, frame.data(),
                                           frame.size(), decoded->raw_size));
      if (m.study != opt_.study) {
        log_->warn("ignored {} for study '{}' (this site is in '{}')", wire::message_type_name(m.type()),
                   detail::printable(m.study), opt_.study);
        continue;
      }
      bool done = false;
      FEDRAD_RETURN_IF_ERROR(dispatch(m, &done));
      if (done) return ok_status();
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
      default:
        log_->warn("ignored unexpected {}", wire::message_type_name(m.type()));
        return ok_status();
    }
  }

  // The model the coordinator sent, into `weights`: plain weights as they are, an encoded update
  // applied to this site's copy of the last model (which becomes the new copy). On failure the
  // copy is dropped; the coordinator then sends the full model next time.
  Status receive_model(Weights& weights, const wire::EncodedUpdate& update) {
    if (!update.present()) {
      copy_ = weights;
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
    weights = copy_;
    return ok_status();
  }

  Status on_fit(uint32_t round, const wire::FitIns& ins) {
    const auto start = Clock::now();
    auto eval = call_learner([&] { return learner_.evaluate(ins.weights); });
    if (!eval.ok()) return reply_fit_failure(round, "evaluation", eval.status());
    auto fit = call_learner([&] { return learner_.fit(ins.weights, ins.settings); });
    if (!fit.ok()) return reply_fit_failure(round, "training", fit.status());

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
      if (!bytes.ok()) return reply_fit_failure(round, "encoding the update", bytes.status());
      res.update.codec = up_spec_.to_string();
      res.update.bytes = std::move(bytes).value();
    }
    Status sent = send(round, std::move(res));
    if (sent.code() == StatusCode::kInvalidArgument)
      return reply_fit_failure(round, "encoding the update", sent);
    FEDRAD_RETURN_IF_ERROR(sent);
    log_->info("round {}: trained on {} examples, loss {:.4f}, {:.1f} s", round, fit->num_examples,
               fit->train_loss, detail::seconds_since(start));
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
    auto eval = call_learner([&] { return learner_.evaluate(ins.weights); });
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
  // callers turn into a failure reply; other errors are transport failures.
  Status send(uint32_t round, wire::Body body) {
    wire::Message m;
    m.study = opt_.study;
    m.round = round;
    m.sender = opt_.site_id;
    m.compression = opt_.compression;
    m.body = std::move(body);
    // The only way out: the egress guard admits the message and encodes it.
    FEDRAD_ASSIGN_OR_RETURN(wire::Encoded enc, egress_.seal(m, &copy_, opt_.zstd_level));
    if (enc.bytes.size() > opt_.max_message_bytes)
      return invalid_argument(std::string(wire::message_type_name(m.type())) + " of " +
                              std::to_string(enc.bytes.size()) + " bytes exceeds the limit of " +
                              std::to_string(opt_.max_message_bytes));
    socket_.send(zmq::buffer(enc.bytes), zmq::send_flags::none);
    return audit_.record("out", wire::message_type_name(m.type()), round, enc.bytes.data(), enc.bytes.size(),
                         enc.raw_size);
  }

  Learner& learner_;
  const SiteOptions& opt_;
  std::shared_ptr<spdlog::logger> log_;
  zmq::context_t ctx_;
  zmq::socket_t socket_;
  CodecSpec up_spec_;
  Weights copy_;            // the global model as last received (reference of deltas both ways)
  ErrorFeedback feedback_;  // upstream residual, across rounds
  EgressGuard egress_;      // every outgoing message passes here
  AuditLog audit_;          // what crossed the boundary, hash-chained
};

}  // namespace

Status run_site(Learner& learner, const SiteOptions& options) {
  SiteRunner runner(learner, options);
  return runner.run();
}

}  // namespace fedrad::fed
