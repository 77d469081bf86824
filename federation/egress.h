// The one door out of a site: every message a site sends passes EgressGuard before it is encoded
// and handed to the socket (federation/site.cpp calls nothing else to send).
//
// What may leave is decided by a whitelist, not by looking for PHI: only the message types a site
// sends in the protocol (JOIN, HEARTBEAT, FIT_RES, EVAL_RES, and with secure aggregation
// SECAGG_KEYS, SECAGG_SHARES, SECAGG_MASKED, SECAGG_UNMASK_RES), whose bodies are numbers (counts, losses,
// histograms, status codes, float weights or an encoded update's bytes). The only strings on the
// wire are the header's study and sender, which must equal the ids the guard was configured with
// and match kSafeIdPattern, tensor names, which must equal those of the model the site received
// from the coordinator, and an update's codec, which must be the configured codec text. So free
// text from DICOM headers (names, IDs, dates, institution, descriptions) or from error messages
// has no field to travel in: a failure crosses the network as a StatusCode only. A message larger
// than the chunk size leaves as CHUNK pieces of the bytes seal() produced, nothing else.
//
// Not thread-safe; one per site runner.
#pragma once

#include <string>

#include "common/status.h"
#include "federation/federation.h"
#include "federation/wire.h"

namespace fedrad::fed {

// Study and site ids allowed on the wire: [A-Za-z0-9._-]{1,64}.
inline constexpr const char* kSafeIdPattern = "[A-Za-z0-9._-]{1,64}";
bool is_safe_id(const std::string& id);

struct EgressPolicy {
  std::string site_id;
  std::string study;
  std::string upstream_codec;  // canonical codec text allowed in FIT_RES updates ("" = plain only)
};

class EgressGuard {
 public:
  explicit EgressGuard(EgressPolicy policy) : policy_(std::move(policy)) {}

  // Fails (invalid_argument) when the policy's own ids are unsafe; call once before sending.
  Status check_policy() const;

  // Ok when `m` may leave the site. `reference`: the model the site last received; the tensor
  // names and shapes of plain weights in `m` must equal its (nullptr: no plain weights allowed).
  // The error names the field, never the offending text.
  Status admit(const wire::Message& m, const Weights* reference) const;

  // admit() then wire::encode(): the only way site.cpp turns a message into bytes to send.
  StatusOr<wire::Encoded> seal(const wire::Message& m, const Weights* reference, int zstd_level) const;

  const EgressPolicy& policy() const { return policy_; }

 private:
  EgressPolicy policy_;
};

}  // namespace fedrad::fed
