// CurveZMQ keys for a study: who may talk to whom (private to federation/ and the app).
//
// `fedrad keys` writes one folder that every participant's copy follows (each machine keeps only
// the files it needs):
//   DIR/coordinator.pub          the coordinator's public key        (every site)
//   DIR/coordinator.secret       the coordinator's key pair, 0600    (the coordinator only)
//   DIR/sites/<site>.pub         each site's public key: the allow-list (the coordinator)
//   DIR/<site>.secret            a site's key pair, 0600             (that site only)
// A key file is text: '#' comments and `public = <Z85>` / `secret = <Z85>` lines (40 Z85
// characters each, the encoding of zmq_curve_keypair).
#pragma once

#include <map>
#include <string>
#include <vector>

#include "common/status.h"

namespace fedrad::fed {

struct CurveKeyPair {
  std::string public_key;  // Z85, 40 characters
  std::string secret_key;  // Z85, 40 characters; empty for a public key alone
};

// Whether this libzmq was built with CurveZMQ (libsodium); the error says how to get one.
Status require_curve();
StatusOr<CurveKeyPair> generate_curve_key_pair();

// Key files. Secret files are created with mode 0600 (and refused when group or others can read
// them); errors name the file.
Status write_public_key(const std::string& path, const std::string& who, const std::string& public_key);
Status write_secret_key(const std::string& path, const std::string& who, const CurveKeyPair& pair);
StatusOr<std::string> read_public_key(const std::string& path);
StatusOr<CurveKeyPair> read_secret_key(const std::string& path);

// Paths of the layout above.
std::string coordinator_public_key_path(const std::string& dir);
std::string coordinator_secret_key_path(const std::string& dir);
std::string site_public_key_path(const std::string& dir, const std::string& site);
std::string site_secret_key_path(const std::string& dir, const std::string& site);

// Creates the coordinator's pair (unless it exists) and one pair per site that has none yet.
// Existing keys are kept, so adding a site to a study does not invalidate the others'. Returns
// the files written.
StatusOr<std::vector<std::string>> write_study_keys(const std::string& dir,
                                                    const std::vector<std::string>& sites);

// What the coordinator needs: its own pair and the allow-list (site id -> public key).
struct CoordinatorKeys {
  CurveKeyPair own;
  std::map<std::string, std::string> sites;
  bool enabled() const { return !own.secret_key.empty(); }
};
// What a site needs: its own pair and the only coordinator key it will talk to.
struct SiteKeys {
  CurveKeyPair own;
  std::string coordinator_public_key;
  bool enabled() const { return !own.secret_key.empty(); }
};

StatusOr<CoordinatorKeys> load_coordinator_keys(const std::string& dir,
                                                const std::vector<std::string>& sites);
StatusOr<SiteKeys> load_site_keys(const std::string& dir, const std::string& site);

}  // namespace fedrad::fed
