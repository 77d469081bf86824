#include "federation/keys.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zmq.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>

namespace fedrad::fed {
namespace {

namespace fs = std::filesystem;

bool valid_z85_key(const std::string& k) {
  if (k.size() != 40) return false;
  uint8_t bin[32];
  return zmq_z85_decode(bin, k.c_str()) != nullptr;
}

// Writes `text` to `path` through a temporary file with `mode`, then renames it into place.
Status write_key_file(const std::string& path, const std::string& text, mode_t mode) {
  std::error_code ec;
  const fs::path parent = fs::path(path).parent_path();
  if (!parent.empty()) fs::create_directories(parent, ec);
  if (ec) return io_error(parent.string() + ": cannot create folder: " + ec.message());
  const std::string tmp = path + ".tmp";
  ::unlink(tmp.c_str());
  const int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_EXCL, mode);
  if (fd < 0) return io_error(tmp + ": cannot create: " + std::strerror(errno));
  ::fchmod(fd, mode);  // whatever the umask
  const char* p = text.data();
  size_t left = text.size();
  while (left > 0) {
    const ssize_t n = ::write(fd, p, left);
    if (n < 0) {
      if (errno == EINTR) continue;
      ::close(fd);
      return io_error(tmp + ": write failed: " + std::strerror(errno));
    }
    p += n;
    left -= static_cast<size_t>(n);
  }
  if (::fsync(fd) != 0 || ::close(fd) != 0) return io_error(tmp + ": cannot flush: " + std::strerror(errno));
  if (::rename(tmp.c_str(), path.c_str()) != 0)
    return io_error(path + ": cannot rename into place: " + std::strerror(errno));
  return ok_status();
}

StatusOr<std::map<std::string, std::string>> read_key_fields(const std::string& path) {
  std::ifstream in(path);
  if (!in) return not_found(path + ": key file cannot be opened");
  std::map<std::string, std::string> fields;
  std::string line;
  int n = 0;
  while (std::getline(in, line)) {
    ++n;
    const size_t a = line.find_first_not_of(" \t\r");
    if (a == std::string::npos || line[a] == '#') continue;
    const size_t eq = line.find('=');
    if (eq == std::string::npos)
      return corrupt(path + ": line " + std::to_string(n) + ": expected 'public = KEY' or 'secret = KEY'");
    auto trim = [](std::string s) {
      const size_t b = s.find_first_not_of(" \t\r"), e = s.find_last_not_of(" \t\r");
      return b == std::string::npos ? std::string() : s.substr(b, e - b + 1);
    };
    const std::string key = trim(line.substr(0, eq)), value = trim(line.substr(eq + 1));
    if (key != "public" && key != "secret")
      return corrupt(path + ": line " + std::to_string(n) + ": unknown field '" + key + "'");
    if (!valid_z85_key(value))
      return corrupt(path + ": line " + std::to_string(n) + ": " + key +
                     " is not a 40-character Z85 CurveZMQ key");
    fields[key] = value;
  }
  return fields;
}

}  // namespace

Status require_curve() {
  if (zmq_has("curve")) return ok_status();
  int major = 0, minor = 0, patch = 0;
  zmq_version(&major, &minor, &patch);
  return unsupported(
      "this libzmq (" + std::to_string(major) + "." + std::to_string(minor) + "." + std::to_string(patch) +
      ") was built without CurveZMQ: install a libzmq with libsodium (Debian's libzmq5 has it) "
      "to encrypt and authenticate the federation");
}

StatusOr<CurveKeyPair> generate_curve_key_pair() {
  FEDRAD_RETURN_IF_ERROR(require_curve());
  char pub[41], sec[41];
  if (zmq_curve_keypair(pub, sec) != 0)
    return internal_error(std::string("zmq_curve_keypair: ") + zmq_strerror(zmq_errno()));
  return CurveKeyPair{pub, sec};
}

Status write_public_key(const std::string& path, const std::string& who, const std::string& public_key) {
  if (!valid_z85_key(public_key)) return invalid_argument(path + ": not a Z85 public key");
  return write_key_file(
      path, "# fedrad CurveZMQ public key of '" + who + "' (may be shared)\npublic = " + public_key + "\n",
      0644);
}

Status write_secret_key(const std::string& path, const std::string& who, const CurveKeyPair& pair) {
  if (!valid_z85_key(pair.public_key) || !valid_z85_key(pair.secret_key))
    return invalid_argument(path + ": not a Z85 key pair");
  return write_key_file(path,
                        "# fedrad CurveZMQ secret key of '" + who +
                            "': keep it on that machine only\npublic = " + pair.public_key +
                            "\nsecret = " + pair.secret_key + "\n",
                        0600);
}

StatusOr<std::string> read_public_key(const std::string& path) {
  FEDRAD_ASSIGN_OR_RETURN(auto fields, read_key_fields(path));
  if (!fields.count("public")) return corrupt(path + ": no 'public = KEY' line");
  return fields["public"];
}

StatusOr<CurveKeyPair> read_secret_key(const std::string& path) {
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0) return not_found(path + ": secret key file cannot be opened");
  if (st.st_mode & 077)
    return invalid_argument(path + ": secret key file is readable by group or others (chmod 600 it)");
  FEDRAD_ASSIGN_OR_RETURN(auto fields, read_key_fields(path));
  if (!fields.count("public") || !fields.count("secret"))
    return corrupt(path + ": needs both 'public = KEY' and 'secret = KEY' lines");
  // The public half must belong to the secret half, or the peer would expect another key.
  char derived[41];
  if (zmq_curve_public(derived, fields["secret"].c_str()) != 0 || fields["public"] != derived)
    return corrupt(path + ": the public key does not belong to the secret key");
  return CurveKeyPair{fields["public"], fields["secret"]};
}

std::string coordinator_public_key_path(const std::string& dir) {
  return (fs::path(dir) / "coordinator.pub").string();
}
std::string coordinator_secret_key_path(const std::string& dir) {
  return (fs::path(dir) / "coordinator.secret").string();
}
std::string site_public_key_path(const std::string& dir, const std::string& site) {
  return (fs::path(dir) / "sites" / (site + ".pub")).string();
}
std::string site_secret_key_path(const std::string& dir, const std::string& site) {
  return (fs::path(dir) / (site + ".secret")).string();
}

StatusOr<std::vector<std::string>> write_study_keys(const std::string& dir,
                                                    const std::vector<std::string>& sites) {
  FEDRAD_RETURN_IF_ERROR(require_curve());
  std::vector<std::string> written;
  auto make = [&](const std::string& who, const std::string& pub_path,
                  const std::string& sec_path) -> Status {
    std::error_code ec;
    if (fs::exists(sec_path, ec)) {
      FEDRAD_ASSIGN_OR_RETURN(CurveKeyPair existing, read_secret_key(sec_path));
      if (!fs::exists(pub_path, ec)) {
        FEDRAD_RETURN_IF_ERROR(write_public_key(pub_path, who, existing.public_key));
        written.push_back(pub_path);
      }
      return ok_status();
    }
    FEDRAD_ASSIGN_OR_RETURN(CurveKeyPair pair, generate_curve_key_pair());
    FEDRAD_RETURN_IF_ERROR(write_secret_key(sec_path, who, pair));
    FEDRAD_RETURN_IF_ERROR(write_public_key(pub_path, who, pair.public_key));
    written.push_back(sec_path);
    written.push_back(pub_path);
    return ok_status();
  };
  FEDRAD_RETURN_IF_ERROR(
      make("coordinator", coordinator_public_key_path(dir), coordinator_secret_key_path(dir)));
  for (const std::string& s : sites) {
    if (s.empty() || s == "coordinator" || s.find('/') != std::string::npos)
      return invalid_argument("site id '" + s + "' cannot name a key file");
    FEDRAD_RETURN_IF_ERROR(make(s, site_public_key_path(dir, s), site_secret_key_path(dir, s)));
  }
  return written;
}

StatusOr<CoordinatorKeys> load_coordinator_keys(const std::string& dir,
                                                const std::vector<std::string>& sites) {
  FEDRAD_RETURN_IF_ERROR(require_curve());
  CoordinatorKeys keys;
  FEDRAD_ASSIGN_OR_RETURN(keys.own, read_secret_key(coordinator_secret_key_path(dir)));
  std::map<std::string, std::string> owner;  // public key -> site, to catch a key listed twice
  for (const std::string& s : sites) {
    FEDRAD_ASSIGN_OR_RETURN(std::string pub, read_public_key(site_public_key_path(dir, s)));
    if (owner.count(pub))
      return invalid_argument(site_public_key_path(dir, s) + ": the same public key as site '" + owner[pub] +
                              "'");
    if (pub == keys.own.public_key)
      return invalid_argument(site_public_key_path(dir, s) + ": the coordinator's own public key");
    owner[pub] = s;
    keys.sites[s] = pub;
  }
  return keys;
}

StatusOr<SiteKeys> load_site_keys(const std::string& dir, const std::string& site) {
  FEDRAD_RETURN_IF_ERROR(require_curve());
  SiteKeys keys;
  FEDRAD_ASSIGN_OR_RETURN(keys.own, read_secret_key(site_secret_key_path(dir, site)));
  FEDRAD_ASSIGN_OR_RETURN(keys.coordinator_public_key, read_public_key(coordinator_public_key_path(dir)));
  return keys;
}

}  // namespace fedrad::fed
