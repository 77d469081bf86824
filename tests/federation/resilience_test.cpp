// The federation over real TCP sockets under faults: CurveZMQ keys (a wrong key is refused and
// gets no model), hostile bytes (garbage, truncated, replayed, multi-frame), silent sites
// (heartbeats), models larger than the chunk size, and process-level kill -9 of a site and of the
// coordinator (tests/federation/helpers/fake_peer.cpp), all with deterministic fake learners.
// Timeouts are generous and nothing asserts on timing: the machine may be loaded.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <future>
#include <mutex>
#include <sstream>
#include <thread>
#include <zmq.hpp>
#include <zmq_addon.hpp>

#include "federation/federation.h"
#include "federation/keys.h"
#include "federation/wire.h"
#include "tests/federation/helpers/fake_learner.h"
#include "tests/test_data.h"
#include "tests/federation/helpers/study_runner.h"

namespace fedrad::fed {
namespace {

namespace fs = std::filesystem;
using testing::DeterministicLearner;
using testing::fake_model;

std::string site_name(int i) { return std::string("site-") + static_cast<char>('a' + i); }

// FedAvg step of the deterministic learners over the sites that took part: sum n_k (k+1) / sum n_k
// with n_k = k + 1.
double fedavg_step(const std::vector<int>& indices) {
  double num = 0, den = 0;
  for (int k : indices) num += (k + 1.0) * (k + 1.0), den += k + 1.0;
  return num / den;
}

// Refusals the coordinator reported, for assertions.
struct Refusals {
  std::mutex mu;
  std::vector<std::string> reasons;
  void add(const std::string& peer, const std::string& why) {
    std::lock_guard<std::mutex> lock(mu);
    reasons.push_back(peer + ": " + why);
  }
  int count(const std::string& needle) {
    std::lock_guard<std::mutex> lock(mu);
    int n = 0;
    for (const auto& r : reasons) n += r.find(needle) != std::string::npos ? 1 : 0;
    return n;
  }
  std::string all() {
    std::lock_guard<std::mutex> lock(mu);
    std::string s;
    for (const auto& r : reasons) s += r + "\n";
    return s;
  }
};

struct InProcessStudy {
  CoordinatorOptions coordinator;
  std::vector<SiteOptions> sites;
  std::vector<std::unique_ptr<DeterministicLearner>> learners;
  std::vector<RoundLog> logs;
  Refusals refusals;
  std::string keys_dir;

  InProcessStudy(int num_sites, int rounds, bool encrypted, const std::string& name) {
    coordinator.bind_address = "tcp://127.0.0.1:" + std::to_string(fedrad::testing::free_port());
    coordinator.study = "resilience";
    coordinator.rounds = rounds;
    coordinator.settings.seed = 3;
    coordinator.join_timeout_s = 30;
    coordinator.round_timeout_s = 60;
    coordinator.heartbeat_s = 0.2;
    coordinator.heartbeat_misses = 10;
    coordinator.initial_weights = {TensorRecord{"w", {2}, {0.0f, 1.0f}}};
    coordinator.on_round_end = [this](const RoundLog& log, const Weights&) { logs.push_back(log); };
    coordinator.on_refused = [this](const std::string& p, const std::string& w) { refusals.add(p, w); };
    std::vector<std::string> ids;
    for (int i = 0; i < num_sites; ++i) ids.push_back(site_name(i));
    coordinator.expected_sites = ids;
    if (encrypted) {
      keys_dir = fedrad::testing::temp_dir("keys-" + name);
      auto written = write_study_keys(keys_dir, ids);
      EXPECT_TRUE(written.ok()) << written.status().to_string();
      auto keys = load_coordinator_keys(keys_dir, ids);
      EXPECT_TRUE(keys.ok()) << keys.status().to_string();
      if (keys.ok()) coordinator.keys = *keys;
    }
    for (int i = 0; i < num_sites; ++i) {
      SiteOptions s;
      s.coordinator_address = coordinator.bind_address;
      s.site_id = ids[i];
      s.study = coordinator.study;
      s.idle_timeout_s = 60;
      s.heartbeat_s = 0.2;
      if (encrypted) {
        auto keys = load_site_keys(keys_dir, ids[i]);
        EXPECT_TRUE(keys.ok()) << keys.status().to_string();
        if (keys.ok()) s.keys = *keys;
      }
      sites.push_back(s);
      learners.push_back(std::make_unique<DeterministicLearner>(i));
    }
  }

  testing::StudyOutcome run() { return testing::run_study_in_process(coordinator, sites, learners); }
};

TEST(Resilience, EncryptedStudyMatchesHandComputedFedAvg) {
  InProcessStudy study(3, 2, /*encrypted=*/true, "encrypted");
  const auto out = study.run();
  ASSERT_TRUE(out.weights.ok()) << out.weights.status().to_string() << study.refusals.all();
  for (const Status& s : out.sites) EXPECT_TRUE(s.ok()) << s.to_string();
  EXPECT_NEAR((*out.weights)[0].data[0], 2 * fedavg_step({0, 1, 2}), 1e-5);
  ASSERT_EQ(study.logs.size(), 3u);
  for (const auto& log : study.logs)
    for (const auto& s : log.sites) EXPECT_TRUE(s.ok) << s.site_id;
  EXPECT_EQ(study.refusals.count(""), 0) << study.refusals.all();
}

TEST(Resilience, KeyFilesAreCheckedAndSecretsArePrivate) {
  const std::string dir = fedrad::testing::temp_dir("keyfiles");
  ASSERT_TRUE(write_study_keys(dir, {"site-a"}).ok());
  EXPECT_EQ(fs::status(site_secret_key_path(dir, "site-a")).permissions() & fs::perms::all,
            fs::perms::owner_read | fs::perms::owner_write);
  EXPECT_EQ(fs::status(coordinator_secret_key_path(dir)).permissions() & fs::perms::all,
            fs::perms::owner_read | fs::perms::owner_write);
  auto before = read_secret_key(site_secret_key_path(dir, "site-a"));
  ASSERT_TRUE(before.ok());
  // Running it again keeps existing keys (adding a site does not invalidate the others).
  ASSERT_TRUE(write_study_keys(dir, {"site-a", "site-b"}).ok());
  EXPECT_EQ(read_secret_key(site_secret_key_path(dir, "site-a"))->secret_key, before->secret_key);
  EXPECT_TRUE(fs::exists(site_public_key_path(dir, "site-b")));
  // A secret readable by others is refused, naming the file.
  fs::permissions(site_secret_key_path(dir, "site-a"), fs::perms::group_read, fs::perm_options::add);
  auto loose = read_secret_key(site_secret_key_path(dir, "site-a"));
  ASSERT_FALSE(loose.ok());
  EXPECT_NE(loose.status().message().find("site-a.secret"), std::string::npos);
  // A missing allow-list entry names the file.
  auto missing = load_coordinator_keys(dir, {"site-a", "site-z"});
  ASSERT_FALSE(missing.ok());
  EXPECT_NE(missing.status().message().find("site-z.pub"), std::string::npos);
  // A public key that does not belong to the secret one is refused.
  {
    std::ofstream f(dir + "/bad.secret");
    auto other = generate_curve_key_pair();
    f << "public = " << other->public_key << "\nsecret = " << before->secret_key << "\n";
  }
  fs::permissions(dir + "/bad.secret", fs::perms::owner_read | fs::perms::owner_write,
                  fs::perm_options::replace);
  auto mismatch = read_secret_key(dir + "/bad.secret");
  ASSERT_FALSE(mismatch.ok());
  EXPECT_NE(mismatch.status().message().find("does not belong"), std::string::npos);
  auto garbage = read_public_key(site_public_key_path(dir, "nobody"));
  EXPECT_FALSE(garbage.ok());
}

// A site whose key is not on the allow-list, and one given the wrong coordinator key: both are
// refused, neither receives a model, and the study goes on with the others.
TEST(Resilience, SitesWithWrongKeysAreRefusedAndGetNoModel) {
  InProcessStudy study(4, 2, /*encrypted=*/true, "wrongkey");
  study.coordinator.min_sites = 2;
  study.coordinator.join_timeout_s = 4;
  // site-c: a fresh key pair the coordinator has never seen.
  auto stranger = generate_curve_key_pair();
  ASSERT_TRUE(stranger.ok());
  study.sites[2].keys.own = *stranger;
  // site-d: its own (allowed) key, but a coordinator key that is not the coordinator's.
  auto impostor = generate_curve_key_pair();
  ASSERT_TRUE(impostor.ok());
  study.sites[3].keys.coordinator_public_key = impostor->public_key;
  study.sites[3].idle_timeout_s = 20;
  const auto out = study.run();
  ASSERT_TRUE(out.weights.ok()) << out.weights.status().to_string();
  EXPECT_TRUE(out.sites[0].ok()) << out.sites[0].to_string();
  EXPECT_TRUE(out.sites[1].ok()) << out.sites[1].to_string();
  ASSERT_FALSE(out.sites[2].ok());
  EXPECT_NE(out.sites[2].message().find("allow-list"), std::string::npos) << out.sites[2].to_string();
  ASSERT_FALSE(out.sites[3].ok());
  std::printf("wrong coordinator key: %s\n", out.sites[3].to_string().c_str());
  EXPECT_EQ(study.learners[2]->fits(), 0);
  EXPECT_EQ(study.learners[3]->fits(), 0);
  EXPECT_GE(study.refusals.count("not on the allow-list"), 1) << study.refusals.all();
  EXPECT_NEAR((*out.weights)[0].data[0], 2 * fedavg_step({0, 1}), 1e-5);
  for (const auto& log : study.logs) EXPECT_EQ(log.sites.size(), 2u);
}

// An authenticated peer (site-c's key) that sends garbage, a truncated message, a replayed and a
// stale JOIN and a multi-frame message, then goes silent: every bad message is refused with a
// reason, it is admitted once, the rounds go on without it once it misses its heartbeats, and the
// result is the other two sites' FedAvg.
TEST(Resilience, GarbageTruncatedAndReplayedMessagesAreRejected) {
  InProcessStudy study(3, 2, /*encrypted=*/true, "hostile");
  study.coordinator.min_sites = 2;
  study.coordinator.heartbeat_misses = 5;  // 1 s of silence
  auto coord = std::async(std::launch::async, [&] { return run_coordinator(study.coordinator); });

  zmq::context_t ctx;
  zmq::socket_t rogue(ctx, zmq::socket_type::dealer);
  rogue.set(zmq::sockopt::linger, 0);
  rogue.set(zmq::sockopt::curve_serverkey, study.sites[2].keys.coordinator_public_key);
  rogue.set(zmq::sockopt::curve_publickey, study.sites[2].keys.own.public_key);
  rogue.set(zmq::sockopt::curve_secretkey, study.sites[2].keys.own.secret_key);
  rogue.connect(study.coordinator.bind_address);
  auto join = [&](uint64_t seq) {
    wire::Message m;
    m.study = study.coordinator.study;
    m.sender = "site-c";
    m.sequence = seq;
    m.body = wire::Join{1, 1};
    return wire::encode(m)->bytes;
  };
  const std::string good_join = join(10);
  rogue.send(zmq::str_buffer("complete nonsense, not a fedrad message"), zmq::send_flags::none);
  rogue.send(zmq::buffer(good_join.substr(0, good_join.size() - 3)), zmq::send_flags::none);  // truncated
  rogue.send(zmq::buffer(good_join), zmq::send_flags::none);                                  // admitted
  rogue.send(zmq::buffer(good_join), zmq::send_flags::none);                                  // replayed
  const std::string stale = join(5);
  rogue.send(zmq::buffer(stale), zmq::send_flags::none);  // older than what was taken
  rogue.send(zmq::str_buffer("two"), zmq::send_flags::sndmore);
  rogue.send(zmq::str_buffer("frames"), zmq::send_flags::none);
  {  // a JOIN that claims to be site-a over site-c's key
    wire::Message m;
    m.study = study.coordinator.study;
    m.sender = "site-a";
    m.sequence = 20;
    m.body = wire::Join{1, 1};
    rogue.send(zmq::buffer(wire::encode(m)->bytes), zmq::send_flags::none);
  }
  // The rogue is admitted exactly once.
  int acks = 0;
  auto drain = [&](double seconds) {
    const auto until = std::chrono::steady_clock::now() + std::chrono::duration<double>(seconds);
    while (std::chrono::steady_clock::now() < until) {
      zmq::pollitem_t item{static_cast<void*>(rogue), 0, ZMQ_POLLIN, 0};
      zmq::poll(&item, 1, std::chrono::milliseconds(100));
      if (!(item.revents & ZMQ_POLLIN)) continue;
      zmq::message_t msg;
      if (!rogue.recv(msg)) continue;
      auto d = wire::decode(msg.data(), msg.size(), 1 << 20);
      if (d.ok() && d->message.type() == wire::MessageType::kJoinAck) ++acks;
      if (acks > 0 && d.ok() && d->message.type() == wire::MessageType::kShutdown) return;
    }
  };
  drain(3);
  EXPECT_EQ(acks, 1);

  std::vector<std::future<Status>> sites;
  for (int i = 0; i < 2; ++i)
    sites.push_back(
        std::async(std::launch::async, [&, i] { return run_site(*study.learners[i], study.sites[i]); }));
  auto result = coord.get();
  for (auto& f : sites) EXPECT_TRUE(f.get().ok());
  drain(0.5);
  ASSERT_TRUE(result.ok()) << result.status().to_string();
  EXPECT_EQ(acks, 1);
  EXPECT_GE(study.refusals.count("malformed"), 2) << study.refusals.all();
  EXPECT_GE(study.refusals.count("replayed or stale"), 2) << study.refusals.all();
  EXPECT_GE(study.refusals.count("frames"), 1) << study.refusals.all();
  EXPECT_GE(study.refusals.count("belongs to 'site-c'"), 1) << study.refusals.all();
  ASSERT_EQ(study.logs.size(), 3u);
  for (const auto& log : study.logs) {
    ASSERT_EQ(log.sites.size(), 3u);
    EXPECT_TRUE(log.sites[0].ok);
    EXPECT_TRUE(log.sites[1].ok);
    EXPECT_FALSE(log.sites[2].ok);  // silent: dropped after its missed heartbeats
  }
  EXPECT_NEAR((*result)[0].data[0], 2 * fedavg_step({0, 1}), 1e-5);
}

// A site that trains for far longer than the heartbeat tolerance is kept, because its heartbeat
// thread keeps talking while the learner works.
TEST(Resilience, HeartbeatsKeepASlowSiteInTheRound) {
  InProcessStudy study(2, 1, /*encrypted=*/false, "slow");
  study.coordinator.heartbeat_s = 0.1;
  study.coordinator.heartbeat_misses = 5;  // 0.5 s of silence would drop it
  study.sites[1].heartbeat_s = 0.1;
  study.learners[1] = std::make_unique<DeterministicLearner>(1, /*fit_seconds=*/2.5);
  const auto out = study.run();
  ASSERT_TRUE(out.weights.ok()) << out.weights.status().to_string();
  ASSERT_EQ(study.logs.size(), 2u);
  EXPECT_TRUE(study.logs[0].sites[1].ok);
  EXPECT_NEAR((*out.weights)[0].data[0], fedavg_step({0, 1}), 1e-5);
}

// A model of 1.6 MB with 64 KiB chunks (both directions, uncompressed): the study's result is
// exact and each model message crossed as many CHUNK frames.
TEST(Resilience, ModelsLargerThanTheChunkSizeTravelInChunks) {
  InProcessStudy study(2, 2, /*encrypted=*/true, "chunks");
  const size_t values = 400000;
  study.coordinator.initial_weights = fake_model(values);
  study.coordinator.compression = Compression::kNone;
  study.coordinator.chunk_bytes = 64 << 10;
  for (auto& s : study.sites) {
    s.compression = Compression::kNone;
    s.chunk_bytes = 64 << 10;
  }
  const auto out = study.run();
  ASSERT_TRUE(out.weights.ok()) << out.weights.status().to_string() << study.refusals.all();
  const Weights initial = fake_model(values);
  const double step = fedavg_step({0, 1});
  for (size_t t = 0; t < initial.size(); ++t)
    for (size_t i = 0; i < initial[t].data.size(); i += 997)
      ASSERT_NEAR((*out.weights)[t].data[i], initial[t].data[i] + 2 * step, 1e-4);
  for (const auto& s : study.logs[0].sites) {
    EXPECT_GT(s.bytes_down, 4 * values - 1);
    EXPECT_GT(s.bytes_up, 4 * values - 1);
  }
  EXPECT_EQ(study.refusals.count(""), 0) << study.refusals.all();
}

// ---- process-level faults --------------------------------------------------------------------

#ifdef FEDRAD_FAKE_PEER
// A child process running fedrad_fake_peer; killed (SIGKILL) when the test ends.
class Child {
 public:
  Child(const std::vector<std::string>& args, const std::string& log) : log_(log) {
    std::vector<std::string> full = {FEDRAD_FAKE_PEER};
    full.insert(full.end(), args.begin(), args.end());
    pid_ = ::fork();
    if (pid_ == 0) {
      const int fd = ::open(log.c_str(), O_WRONLY | O_CREAT | O_APPEND, 0644);
      ::dup2(fd, 1);
      ::dup2(fd, 2);
      std::vector<char*> argv;
      for (auto& a : full) argv.push_back(const_cast<char*>(a.c_str()));
      argv.push_back(nullptr);
      ::execv(argv[0], argv.data());
      ::_exit(127);
    }
  }
  ~Child() { kill9(); }
  void kill9() {
    if (pid_ > 0) {
      ::kill(pid_, SIGKILL);
      ::waitpid(pid_, nullptr, 0);
      pid_ = -1;
    }
  }
  // Exit code, or -1 when it did not end within `seconds`.
  int wait(double seconds) {
    const auto until = std::chrono::steady_clock::now() + std::chrono::duration<double>(seconds);
    while (pid_ > 0 && std::chrono::steady_clock::now() < until) {
      int status = 0;
      if (::waitpid(pid_, &status, WNOHANG) == pid_) {
        pid_ = -1;
        return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
    return -1;
  }
  std::string output() const {
    std::ifstream f(log_);
    std::stringstream s;
    s << f.rdbuf();
    return s.str();
  }
  bool wait_for_output(const std::string& needle, double seconds) const {
    const auto until = std::chrono::steady_clock::now() + std::chrono::duration<double>(seconds);
    while (std::chrono::steady_clock::now() < until) {
      if (output().find(needle) != std::string::npos) return true;
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
    return false;
  }

 private:
  pid_t pid_ = -1;
  std::string log_;
};

std::vector<std::string> site_args(const std::string& address, const std::string& keys, int i,
                                   double fit_seconds) {
  return {"site",
          "--address",
          address,
          "--id",
          site_name(i),
          "--index",
          std::to_string(i),
          "--keys",
          keys,
          "--fit-seconds",
          std::to_string(fit_seconds),
          "--heartbeat",
          "0.2",
          "--idle-timeout",
          "120"};
}

std::string read_file(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  std::stringstream s;
  s << f.rdbuf();
  return s.str();
}

// kill -9 one of four sites mid-round: the round completes with the other three (the dead site
// is noticed by its missed heartbeats), the site is restarted, rejoins and is back in a later
// round with the current model (FedAvg over exactly the sites each round's log says were ok).
TEST(ResilienceProcess, KilledSiteDropsOutAndRejoins) {
  const std::string dir = fedrad::testing::temp_dir("killsite");
  std::vector<std::string> ids;
  for (int i = 0; i < 4; ++i) ids.push_back(site_name(i));
  ASSERT_TRUE(write_study_keys(dir + "/keys", ids).ok());
  CoordinatorOptions o;
  o.bind_address = "tcp://127.0.0.1:" + std::to_string(fedrad::testing::free_port());
  o.study = "fault-study";
  o.expected_sites = ids;
  o.min_sites = 3;
  o.rounds = 6;
  o.join_timeout_s = 60;
  o.round_timeout_s = 120;
  o.heartbeat_s = 0.2;
  o.heartbeat_misses = 10;  // 2 s of silence
  o.initial_weights = {TensorRecord{"w", {2}, {0.0f, 1.0f}}};
  o.keys = *load_coordinator_keys(dir + "/keys", ids);
  std::vector<RoundLog> logs;
  std::atomic<int> rounds_done{0};
  o.on_round_end = [&](const RoundLog& log, const Weights&) {
    logs.push_back(log);
    ++rounds_done;
  };
  auto coord = std::async(std::launch::async, [&] { return run_coordinator(o); });
  std::vector<std::unique_ptr<Child>> sites;
  for (int i = 0; i < 4; ++i)
    sites.push_back(std::make_unique<Child>(site_args(o.bind_address, dir + "/keys", i, 1.0),
                                            dir + "/" + ids[i] + ".log"));
  const auto until = std::chrono::steady_clock::now() + std::chrono::seconds(60);
  while (rounds_done < 1 && std::chrono::steady_clock::now() < until)
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  ASSERT_GE(rounds_done.load(), 1);
  std::this_thread::sleep_for(std::chrono::milliseconds(300));  // round 2 is under way: site-d is training
  sites[3]->kill9();
  while (rounds_done < 2 && std::chrono::steady_clock::now() < until + std::chrono::seconds(60))
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  sites[3] = std::make_unique<Child>(site_args(o.bind_address, dir + "/keys", 3, 1.0), dir + "/site-d.log");
  auto result = coord.get();
  ASSERT_TRUE(result.ok()) << result.status().to_string() << sites[3]->output();
  for (int i = 0; i < 4; ++i) EXPECT_EQ(sites[i]->wait(60), 0) << ids[i] << ": " << sites[i]->output();
  ASSERT_EQ(logs.size(), 7u);
  EXPECT_FALSE(logs[1].sites[3].ok);  // killed during round 2
  for (int i = 0; i < 3; ++i) EXPECT_TRUE(logs[1].sites[i].ok);
  bool back = false;
  double expected = 0;
  for (int r = 0; r < 6; ++r) {
    std::vector<int> ok;
    for (int i = 0; i < 4; ++i)
      if (logs[r].sites[i].ok) ok.push_back(i);
    EXPECT_GE(ok.size(), 3u) << "round " << r + 1;
    if (r >= 2 && logs[r].sites[3].ok) back = true;
    expected += fedavg_step(ok);
  }
  EXPECT_TRUE(back) << "site-d never took part again after its restart";
  EXPECT_TRUE(logs[6].sites[3].ok);  // the final evaluation reaches it
  EXPECT_NEAR((*result)[0].data[0], expected, 1e-4);
}

// kill -9 the coordinator mid-round, restart it with --resume: it continues after the last
// checkpointed round, the surviving site processes rejoin, and the final model has the same
// bytes as an undisturbed run's.
TEST(ResilienceProcess, KilledCoordinatorResumesWithTheSameFinalModel) {
  const std::string dir = fedrad::testing::temp_dir("killcoord");
  std::vector<std::string> ids;
  for (int i = 0; i < 4; ++i) ids.push_back(site_name(i));
  ASSERT_TRUE(write_study_keys(dir + "/keys", ids).ok());
  auto run = [&](const std::string& name, bool disturb) {
    const std::string address = "tcp://127.0.0.1:" + std::to_string(fedrad::testing::free_port());
    std::vector<std::string> args = {"coordinator",
                                     "--address",
                                     address,
                                     "--sites",
                                     "site-a,site-b,site-c,site-d",
                                     "--rounds",
                                     "5",
                                     "--keys",
                                     dir + "/keys",
                                     "--state",
                                     dir + "/" + name + "-state",
                                     "--values",
                                     "5000",
                                     "--heartbeat",
                                     "0.2",
                                     "--misses",
                                     "25",
                                     "--out",
                                     dir + "/" + name + ".bin"};
    auto coord = std::make_unique<Child>(args, dir + "/" + name + "-coordinator.log");
    std::vector<std::unique_ptr<Child>> sites;
    for (int i = 0; i < 4; ++i)
      sites.push_back(std::make_unique<Child>(site_args(address, dir + "/keys", i, 0.4),
                                              dir + "/" + name + "-" + ids[i] + ".log"));
    if (disturb) {
      EXPECT_TRUE(coord->wait_for_output("round 2 done", 90)) << coord->output();
      std::this_thread::sleep_for(std::chrono::milliseconds(200));  // round 3 under way
      coord->kill9();
      EXPECT_EQ(coord->output().find("study done"), std::string::npos);
      args.push_back("--resume");
      coord = std::make_unique<Child>(args, dir + "/" + name + "-coordinator.log");
      EXPECT_TRUE(coord->wait_for_output("resumed after round", 30)) << coord->output();
    }
    EXPECT_EQ(coord->wait(180), 0) << coord->output();
    for (int i = 0; i < 4; ++i) EXPECT_EQ(sites[i]->wait(60), 0) << sites[i]->output();
    return coord->output();
  };
  run("undisturbed", false);
  const std::string log = run("disturbed", true);
  const std::string a = read_file(dir + "/undisturbed.bin"), b = read_file(dir + "/disturbed.bin");
  ASSERT_EQ(a.size(), 5000u * 4);
  EXPECT_TRUE(a == b) << "the resumed study's final model differs from the undisturbed one\n" << log;
  // Nothing completed was lost: every round ran to completion exactly once after the resume.
  EXPECT_NE(log.find("round 5 done: 4/4"), std::string::npos) << log;
}
#endif

}  // namespace
}  // namespace fedrad::fed
