#include "federation/egress.h"

#include <variant>

namespace fedrad::fed {
namespace {

bool safe_char(char c) {
  return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '.' || c == '_' ||
         c == '-';
}

// Codec texts are stage names, numbers and the separators of federation/codec.h.
bool safe_codec_text(const std::string& s) {
  if (s.empty() || s.size() > 128) return false;
  for (char c : s)
    if (!safe_char(c) && c != ':' && c != '|') return false;
  return true;
}

Status refuse(const wire::Message& m, const std::string& why) {
  return invalid_argument(std::string("egress guard refused ") + wire::message_type_name(m.type()) + ": " + why);
}

Status check_weights(const wire::Message& m, const Weights& w, const Weights* reference) {
  if (w.empty()) return ok_status();
  if (reference == nullptr) return refuse(m, "plain weights without a received model to compare names with");
  if (w.size() != reference->size()) return refuse(m, "tensor count differs from the received model");
  for (size_t i = 0; i < w.size(); ++i) {
    // Names are strings; only the ones the coordinator itself sent may go back.
    if (w[i].name != (*reference)[i].name) return refuse(m, "tensor " + std::to_string(i) + " is not named as received");
    if (w[i].shape != (*reference)[i].shape) return refuse(m, "tensor " + std::to_string(i) + " has another shape");
  }
  return ok_status();
}

Status check_update(const wire::Message& m, const wire::EncodedUpdate& u, const EgressPolicy& p) {
  if (!u.present()) return u.bytes.empty() ? ok_status() : refuse(m, "update bytes without a codec");
  if (!safe_codec_text(u.codec)) return refuse(m, "codec text has characters outside [A-Za-z0-9._:|-]");
  if (u.codec != p.upstream_codec) return refuse(m, "codec is not the configured upstream codec");
  return ok_status();
}

}  // namespace

bool is_safe_id(const std::string& id) {
  if (id.empty() || id.size() > 64) return false;
  for (char c : id)
    if (!safe_char(c)) return false;
  return true;
}

Status EgressGuard::check_policy() const {
  if (!is_safe_id(policy_.site_id))
    return invalid_argument(std::string("site id must match ") + kSafeIdPattern + " to be sent to the coordinator");
  if (!is_safe_id(policy_.study))
    return invalid_argument(std::string("study name must match ") + kSafeIdPattern + " to be sent to the coordinator");
  if (!policy_.upstream_codec.empty() && !safe_codec_text(policy_.upstream_codec))
    return invalid_argument("upstream codec text has characters outside [A-Za-z0-9._:|-]");
  return ok_status();
}

Status EgressGuard::admit(const wire::Message& m, const Weights* reference) const {
  FEDRAD_RETURN_IF_ERROR(check_policy());
  if (m.sender != policy_.site_id) return refuse(m, "sender is not this site's configured id");
  if (m.study != policy_.study) return refuse(m, "study is not the configured study");
  if (m.compression != Compression::kNone && m.compression != Compression::kZstd)
    return refuse(m, "unknown compression");
  // A whitelist of what a site sends; everything else (instructions, rejections, shutdowns, and
  // any type added later) stays inside unless it is added here on purpose.
  return std::visit(
      [&](const auto& body) -> Status {
        using T = std::decay_t<decltype(body)>;
        if constexpr (std::is_same_v<T, wire::Join> || std::is_same_v<T, wire::EvalRes> ||
                      std::is_same_v<T, wire::Heartbeat>) {
          return ok_status();  // numbers only
        } else if constexpr (std::is_same_v<T, wire::SecAggKeys> || std::is_same_v<T, wire::SecAggShares> ||
                             std::is_same_v<T, wire::SecAggUnmaskRes>) {
          // Secure aggregation: a public key, sealed boxes of Shamir shares for other sites, shares
          // for the unmasking; fixed-size bytes and indices, no text.
          return ok_status();
        } else if constexpr (std::is_same_v<T, wire::SecAggMasked>) {
          // The masked fixed-point vector (uniform mod 2^32 without the other sites' masks) and the
          // same numbers as a FIT_RES: loss, seconds, evaluation histogram.
          return ok_status();
        } else if constexpr (std::is_same_v<T, wire::FitRes>) {
          if (!body.weights.empty() && body.update.present()) return refuse(m, "both weights and an update");
          FEDRAD_RETURN_IF_ERROR(check_weights(m, body.weights, reference));
          return check_update(m, body.update, policy_);
        } else {
          return refuse(m, "a site does not send this message type");
        }
      },
      m.body);
}

StatusOr<wire::Encoded> EgressGuard::seal(const wire::Message& m, const Weights* reference, int zstd_level) const {
  FEDRAD_RETURN_IF_ERROR(admit(m, reference));
  return wire::encode(m, zstd_level);
}

}  // namespace fedrad::fed
