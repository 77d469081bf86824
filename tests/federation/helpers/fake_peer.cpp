// fedrad_fake_peer: a coordinator or a site with a fake learner, as a separate process, for the
// federation's process-level fault tests (kill -9) and for benchmarks that need many sites.
//
//   fedrad_fake_peer coordinator --address tcp://127.0.0.1:P --sites a,b,c --rounds N
//       [--keys DIR] [--state DIR [--resume]] [--min-sites K] [--values V] [--heartbeat S]
//       [--misses M] [--round-timeout S] [--join-timeout S] [--chunk-bytes B] [--out FILE]
//   fedrad_fake_peer site --address tcp://127.0.0.1:P --id a --index I [--keys DIR]
//       [--fit-seconds S] [--heartbeat S] [--idle-timeout S] [--chunk-bytes B]
//
// The coordinator prints "round N done" after each round's checkpoint and callback and writes
// the final weights (raw float32, tensor after tensor) to --out. Exit code 0 on success.
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <map>
#include <sstream>
#include <string>
#include <vector>

#include "common/log.h"
#include "federation/federation.h"
#include "federation/keys.h"
#include "tests/federation/helpers/fake_learner.h"

using namespace fedrad;
using namespace fedrad::fed;

namespace {

std::vector<std::string> split(const std::string& s) {
  std::vector<std::string> out;
  std::stringstream in(s);
  std::string item;
  while (std::getline(in, item, ',')) out.push_back(item);
  return out;
}

int fail(const Status& st) {
  std::fprintf(stderr, "fedrad_fake_peer: %s\n", st.to_string().c_str());
  return 1;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) return 2;
  const std::string role = argv[1];
  std::map<std::string, std::string> a;
  for (int i = 2; i < argc; ++i) {
    std::string k = argv[i];
    if (k.rfind("--", 0) != 0) return 2;
    if (k == "--resume") {
      a["resume"] = "1";
      continue;
    }
    if (i + 1 >= argc) return 2;
    a[k.substr(2)] = argv[++i];
  }
  auto get = [&](const char* k, const std::string& d) { return a.count(k) ? a[k] : d; };
  const std::string keys_dir = get("keys", "");
  if (role == "coordinator") {
    CoordinatorOptions o;
    o.bind_address = get("address", "tcp://127.0.0.1:5555");
    o.study = "fault-study";
    o.expected_sites = split(get("sites", "site-a"));
    o.rounds = std::stoi(get("rounds", "3"));
    o.min_sites = std::stoi(get("min-sites", "0"));
    o.settings.seed = 11;
    o.join_timeout_s = std::stod(get("join-timeout", "60"));
    o.round_timeout_s = std::stod(get("round-timeout", "120"));
    o.heartbeat_s = std::stod(get("heartbeat", "0.25"));
    o.heartbeat_misses = std::stoi(get("misses", "8"));
    o.chunk_bytes = std::stoull(get("chunk-bytes", std::to_string(size_t{64} << 20)));
    o.state_dir = get("state", "");
    o.resume = a.count("resume") > 0;
    o.initial_weights = testing::fake_model(std::stoull(get("values", "1000")));
    if (!keys_dir.empty()) {
      auto keys = load_coordinator_keys(keys_dir, o.expected_sites);
      if (!keys.ok()) return fail(keys.status());
      o.keys = *keys;
    }
    o.on_round_end = [](const RoundLog& log, const Weights&) {
      int ok = 0;
      for (const auto& s : log.sites) ok += s.ok ? 1 : 0;
      std::printf("round %u done: %d/%zu sites ok\n", log.round, ok, log.sites.size());
      std::fflush(stdout);
    };
    o.on_resume = [](const RoundLog& log, const Weights&) {
      std::printf("resumed after round %u\n", log.round);
      std::fflush(stdout);
    };
    auto result = run_coordinator(o);
    if (!result.ok()) return fail(result.status());
    if (a.count("out")) {
      std::ofstream out(a["out"], std::ios::binary);
      for (const auto& t : *result)
        out.write(reinterpret_cast<const char*>(t.data.data()), t.data.size() * sizeof(float));
    }
    std::printf("study done\n");
    return 0;
  }
  if (role == "site") {
    SiteOptions o;
    o.coordinator_address = get("address", "tcp://127.0.0.1:5555");
    o.site_id = get("id", "site-a");
    o.study = "fault-study";
    o.heartbeat_s = std::stod(get("heartbeat", "0.25"));
    o.idle_timeout_s = std::stod(get("idle-timeout", "120"));
    o.chunk_bytes = std::stoull(get("chunk-bytes", std::to_string(size_t{64} << 20)));
    if (!keys_dir.empty()) {
      auto keys = load_site_keys(keys_dir, o.site_id);
      if (!keys.ok()) return fail(keys.status());
      o.keys = *keys;
    }
    testing::DeterministicLearner learner(std::stoi(get("index", "0")), std::stod(get("fit-seconds", "0")));
    Status st = run_site(learner, o);
    if (!st.ok()) return fail(st);
    std::printf("site done after %d fits\n", learner.fits());
    return 0;
  }
  return 2;
}
