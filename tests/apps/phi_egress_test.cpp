// Issue 8: no PHI leaves a site. A full study on ../shared/data/pneumonia (all four sites, a tiny
// model, two rounds) runs over TCP through a relay that records every byte between the sites and
// the coordinator; none of the PHI canaries of the DICOM headers may appear in those bytes, in the
// coordinator's log output or in any file the coordinator wrote. The canaries are first found in
// the source files, so the test can fail.
#include <gtest/gtest.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <set>
#include <sstream>
#include <thread>

#include <spdlog/sinks/ostream_sink.h>

#include "apps/study.h"
#include "common/config.h"
#include "common/log.h"
#include "federation/audit.h"
#include "tests/test_data.h"

namespace fedrad::app {
namespace {
namespace fs = std::filesystem;

std::string slurp(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// Canary values (PatientName CANARY^..., ReferringPhysicianName CANARY^REFERRER^..., PatientID
// PHI-...) as they appear in the raw bytes of the DICOM files.
void collect_canaries(const std::string& bytes, std::set<std::string>* out) {
  for (const std::string prefix : {"CANARY^", "PHI-"}) {
    for (size_t at = bytes.find(prefix); at != std::string::npos; at = bytes.find(prefix, at + 1)) {
      size_t end = at;
      while (end < bytes.size() && bytes[end] > ' ' && bytes[end] < 127) ++end;
      out->insert(bytes.substr(at, end - at));
    }
  }
}

// The canaries found in `hay`: the prefix CANARY^ anywhere, and any full PatientID value.
std::vector<std::string> leaks(const std::string& hay, const std::set<std::string>& canaries) {
  std::vector<std::string> found;
  if (hay.find("CANARY^") != std::string::npos) found.push_back("CANARY^...");
  for (size_t at = hay.find("PHI-"); at != std::string::npos; at = hay.find("PHI-", at + 1)) {
    for (const auto& c : canaries)
      if (c.rfind("PHI-", 0) == 0 && hay.compare(at, c.size(), c) == 0) found.push_back(c);
  }
  return found;
}

int listen_on_free_port(int* port) {
  int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  int one = 1;
  ::setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof(a);
  ::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof(a));
  ::getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len);
  ::listen(fd, 16);
  *port = ntohs(a.sin_port);
  return fd;
}

int free_port() {
  int port = 0;
  ::close(listen_on_free_port(&port));
  return port;
}

// A TCP relay: each accepted connection is joined to the coordinator and every byte both ways
// is kept.
class Relay {
 public:
  Relay(int target_port) : target_(target_port) { listen_fd_ = listen_on_free_port(&port_); }
  ~Relay() { stop(); }
  int port() const { return port_; }
  void start() { acceptor_ = std::thread([this] { accept_loop(); }); }
  void stop() {
    stop_ = true;
    if (acceptor_.joinable()) acceptor_.join();
    for (auto& t : pumps_)
      if (t.joinable()) t.join();
    pumps_.clear();
    if (listen_fd_ >= 0) ::close(listen_fd_);
    listen_fd_ = -1;
  }
  std::string upstream() {
    std::lock_guard<std::mutex> l(mu_);
    return up_;
  }
  std::string downstream() {
    std::lock_guard<std::mutex> l(mu_);
    return down_;
  }

 private:
  void accept_loop() {
    while (!stop_) {
      pollfd p{listen_fd_, POLLIN, 0};
      if (::poll(&p, 1, 100) <= 0) continue;
      int client = ::accept(listen_fd_, nullptr, nullptr);
      if (client < 0) continue;
      int server = ::socket(AF_INET, SOCK_STREAM, 0);
      sockaddr_in a{};
      a.sin_family = AF_INET;
      a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
      a.sin_port = htons(static_cast<uint16_t>(target_));
      if (::connect(server, reinterpret_cast<sockaddr*>(&a), sizeof(a)) != 0) {
        ::close(client);
        ::close(server);
        continue;
      }
      pumps_.emplace_back([this, client, server] { pump(client, server); });
    }
  }
  void pump(int client, int server) {
    char buf[65536];
    pollfd fds[2] = {{client, POLLIN, 0}, {server, POLLIN, 0}};
    bool open = true;
    while (open && !stop_) {
      if (::poll(fds, 2, 100) <= 0) continue;
      for (int i = 0; i < 2 && open; ++i) {
        if (!(fds[i].revents & (POLLIN | POLLHUP | POLLERR))) continue;
        const ssize_t n = ::recv(fds[i].fd, buf, sizeof(buf), 0);
        if (n <= 0) {
          open = false;
          break;
        }
        {
          std::lock_guard<std::mutex> l(mu_);
          (i == 0 ? up_ : down_).append(buf, static_cast<size_t>(n));
        }
        ssize_t sent = 0;
        while (sent < n) {
          const ssize_t k = ::send(fds[1 - i].fd, buf + sent, static_cast<size_t>(n - sent), MSG_NOSIGNAL);
          if (k <= 0) {
            open = false;
            break;
          }
          sent += k;
        }
      }
    }
    ::close(client);
    ::close(server);
  }

  int target_, port_ = 0, listen_fd_ = -1;
  std::atomic<bool> stop_{false};
  std::thread acceptor_;
  std::vector<std::thread> pumps_;
  std::mutex mu_;
  std::string up_, down_;
};

TEST(PhiEgress, NoCanaryLeavesAnySiteInAFullStudy) {
  const std::vector<std::string> sites = {"site-a", "site-b", "site-c", "site-d"};
  // 1. The canaries are in the source DICOM files.
  std::set<std::string> canaries;
  std::map<std::string, int> per_site;
  for (const auto& s : sites) {
    for (const char* split : {"train", "val"}) {
      int files = 0;
      for (const auto& e : fs::recursive_directory_iterator(testing::pneumonia_site(s, split))) {
        if (!e.is_regular_file() || e.path().filename() == "labels.csv") continue;
        if (++files > 40) break;  // a sample of each split is enough to know what to look for
        std::set<std::string> here;
        collect_canaries(slurp(e.path()), &here);
        per_site[s] += static_cast<int>(here.size());
        canaries.insert(here.begin(), here.end());
      }
    }
    EXPECT_GT(per_site[s], 0) << s << ": no PHI canary found in its DICOM files; the test would prove nothing";
  }
  bool name = false, id = false, referrer = false;
  for (const auto& c : canaries) {
    referrer = referrer || c.rfind("CANARY^REFERRER^", 0) == 0;
    name = name || (c.rfind("CANARY^", 0) == 0 && c.rfind("CANARY^REFERRER^", 0) != 0);
    id = id || c.rfind("PHI-", 0) == 0;
  }
  ASSERT_TRUE(name && id && referrer) << "expected PatientName, PatientID and ReferringPhysicianName canaries";

  // 2. The study, over TCP through the relay, with uncompressed messages.
  const std::string root = testing::temp_dir("phi");
  auto c = parse_study_config(
      "name: phi\nseed: 5\nrounds: 2\nsites: [site-a, site-b, site-c, site-d]\n"
      "model: {width: 4, stages: 1, norm: group}\ndata: {augment: false}\n"
      "train: {local_epochs: 1, batch_size: 128, lr: 0.01, threads: 1}\n"
      "federation: {compression: none, join_timeout_s: 60, round_timeout_s: 120}\n"
      "privacy: {client_clip: 5.0, client_noise_multiplier: 0.01}\n",
      "phi.yaml");
  ASSERT_TRUE(c.ok()) << c.status().to_string();
  StudyConfig config = *c;
  const int coord_port = free_port();
  config.federation.address = "tcp://127.0.0.1:" + std::to_string(coord_port);
  Relay relay(coord_port);
  relay.start();
  const std::string via_relay = "tcp://127.0.0.1:" + std::to_string(relay.port());

  // The coordinator's log output (everything it and the progress reporter print).
  std::ostringstream coord_log;
  auto sink = std::make_shared<spdlog::sinks::ostream_sink_mt>(coord_log);
  for (const char* name : {"coordinator", "progress"}) logger(name)->sinks().push_back(sink);

  Status coord_status;
  std::vector<Status> site_status(sites.size());
  std::thread coord([&] { coord_status = coordinator(config, root + "/out"); });
  std::vector<std::thread> threads;
  for (size_t i = 0; i < sites.size(); ++i)
    threads.emplace_back([&, i] {
      site_status[i] = site(config, fs::path(testing::pneumonia_site(sites[i], "train")).parent_path().string(),
                            sites[i], via_relay, 1, root + "/audit/audit-" + sites[i] + ".log");
    });
  coord.join();
  for (auto& t : threads) t.join();
  relay.stop();
  for (const char* name : {"coordinator", "progress"}) {
    auto& sinks = logger(name)->sinks();
    sinks.erase(std::remove(sinks.begin(), sinks.end(), sink), sinks.end());
  }
  ASSERT_TRUE(coord_status.ok()) << coord_status.to_string();
  for (size_t i = 0; i < sites.size(); ++i) ASSERT_TRUE(site_status[i].ok()) << sites[i] << ": " << site_status[i].to_string();

  // 3. Nothing of it in the bytes on the wire, the coordinator's logs or its files.
  const std::string up = relay.upstream(), down = relay.downstream();
  ASSERT_GT(up.size(), 2000u) << "the relay saw the model updates";
  ASSERT_NE(up.find("site-a"), std::string::npos) << "uncompressed: the headers are readable";
  EXPECT_TRUE(leaks(up, canaries).empty()) << "site -> coordinator: " << leaks(up, canaries)[0];
  EXPECT_TRUE(leaks(down, canaries).empty()) << "coordinator -> site";
  ASSERT_NE(coord_log.str().find("round 1"), std::string::npos) << "the log sink captured the coordinator";
  EXPECT_TRUE(leaks(coord_log.str(), canaries).empty()) << coord_log.str();
  int files = 0;
  for (const auto& e : fs::recursive_directory_iterator(root + "/out")) {
    if (!e.is_regular_file()) continue;
    ++files;
    const auto found = leaks(slurp(e.path()), canaries);
    EXPECT_TRUE(found.empty()) << e.path() << ": " << found[0];
  }
  EXPECT_GE(files, 5);

  // 4. Each site's audit log verifies and accounts for what it sent.
  uint64_t audited_up = 0;
  for (const auto& s : sites) {
    auto summary = fed::verify_audit_log(root + "/audit/audit-" + s + ".log");
    ASSERT_TRUE(summary.ok()) << summary.status().to_string();
    EXPECT_TRUE(summary->ok) << s << ": " << summary->problem;
    EXPECT_EQ(summary->sent["FIT_RES"].messages, 2u) << s;
    EXPECT_EQ(summary->sent["JOIN"].messages, 1u) << s;
    EXPECT_EQ(summary->sent["EVAL_RES"].messages, 1u) << s;
    for (const auto& [type, count] : summary->sent) audited_up += count.wire_bytes;
  }
  // ZeroMQ's framing adds a few bytes per message; the payloads are all accounted for.
  EXPECT_LE(audited_up, up.size());
  EXPECT_GE(audited_up + 4096, up.size());

  // 5. The metrics carry the privacy spent.
  std::ifstream metrics(root + "/out/metrics.jsonl");
  std::string line, last_global;
  while (std::getline(metrics, line))
    if (line.find("\"scope\":\"global\"") != std::string::npos) last_global = line;
  EXPECT_NE(last_global.find("dp_epsilon"), std::string::npos) << last_global;
}

}  // namespace
}  // namespace fedrad::app
