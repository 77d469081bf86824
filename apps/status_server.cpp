#include "apps/status_server.h"

#include <cmath>
#include <cstdio>
#include <sstream>

#include <httplib.h>

#include "common/log.h"

namespace fedrad::app {
using nlohmann::json;

double eta_seconds(double sum_round_seconds, int rounds_done, int rounds_total) {
  if (rounds_done <= 0) return -1;
  const int left = std::max(0, rounds_total + 1 - rounds_done);  // + the final evaluation
  return sum_round_seconds / rounds_done * left;
}

namespace {

json metrics_of(const BinaryMetrics& m) {
  return {{"auc", m.auc}, {"accuracy", m.accuracy}, {"sensitivity", m.sensitivity},
          {"specificity", m.specificity}, {"threshold", m.threshold}, {"n", m.n}};
}

std::string structure_name(const std::vector<std::string>& names, size_t i) {
  return i < names.size() ? names[i] : "structure " + std::to_string(i);
}

// Segmentation scores: mean Dice over structures and cases, Dice per structure, cases.
json seg_json(const SegScoreSums& sums, const std::vector<std::string>& names) {
  json dice = json::object();
  const auto d = sums.mean_dice();
  for (size_t i = 0; i < d.size(); ++i) dice[structure_name(names, i)] = d[i];
  return {{"mean_dice", sums.mean_dice_all()}, {"dice", dice}, {"cases", sums.cases}};
}

// Prometheus label values: backslash, double quote and newline escaped.
std::string label(const std::string& v) {
  std::string out;
  for (char c : v) {
    if (c == '\\') out += "\\\\";
    else if (c == '"') out += "\\\"";
    else if (c == '\n') out += "\\n";
    else out += c;
  }
  return out;
}

std::string value(double v) {
  if (std::isnan(v)) return "NaN";
  char buf[40];
  std::snprintf(buf, sizeof(buf), "%.10g", v);
  return buf;
}

}  // namespace

StatusOr<HttpReply> http_get_local(int port, const std::string& path, double timeout_s) {
  httplib::Client client("127.0.0.1", port);
  const auto t = std::chrono::milliseconds(static_cast<int64_t>(timeout_s * 1000));
  client.set_connection_timeout(t);
  client.set_read_timeout(t);
  auto res = client.Get(path.c_str());
  if (!res)
    return io_error("GET http://127.0.0.1:" + std::to_string(port) + path + ": " + httplib::to_string(res.error()));
  return HttpReply{res->status, res->get_header_value("Content-Type"), res->body};
}

StatusServer::StatusServer(std::string study, int rounds, std::vector<std::string> sites)
    : study_(std::move(study)), rounds_(rounds), sites_(std::move(sites)), start_(std::chrono::steady_clock::now()) {}

StatusServer::~StatusServer() { stop(); }

StatusOr<int> StatusServer::start(int port) {
  if (server_) return port_;
  if (port < 0 || port > 65535) return invalid_argument("--status-port: expected 0..65535, got " + std::to_string(port));
  auto server = std::make_unique<httplib::Server>();
  server->new_task_queue = [] { return new httplib::ThreadPool(2); };
  // httplib's default sets SO_REUSEPORT, which lets a second study share a port unnoticed.
  server->set_socket_options([](socket_t sock) {
    int yes = 1;
    ::setsockopt(sock, SOL_SOCKET, SO_REUSEADDR, &yes, sizeof(yes));
  });
  server->Get("/status", [this](const httplib::Request&, httplib::Response& res) {
    res.set_content(status().dump(2) + "\n", "application/json");
  });
  server->Get("/metrics", [this](const httplib::Request&, httplib::Response& res) {
    res.set_content(prometheus(), "text/plain; version=0.0.4; charset=utf-8");
  });
  server->Get("/", [](const httplib::Request&, httplib::Response& res) {
    res.set_content("fedrad live status: GET /status (JSON) or /metrics (Prometheus)\n", "text/plain");
  });
  int bound = -1;
  if (port == 0) bound = server->bind_to_any_port("127.0.0.1");
  else if (server->bind_to_port("127.0.0.1", port)) bound = port;
  if (bound <= 0)
    return io_error("status endpoint: cannot listen on 127.0.0.1:" + std::to_string(port) + " (port in use?)");
  port_ = bound;
  server_ = std::move(server);
  thread_ = std::thread([s = server_.get()] { s->listen_after_bind(); });
  // httplib's stop() does nothing before the accept loop runs (and join would then wait forever):
  // wait until it does.
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
  while (!server_->is_running() && std::chrono::steady_clock::now() < deadline)
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  logger("status")->info("live status at http://127.0.0.1:{}/status (Prometheus: /metrics)", port_);
  return port_;
}

void StatusServer::stop() {
  if (!server_) return;
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);  // see start()
  while (!server_->is_running() && std::chrono::steady_clock::now() < deadline)
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  server_->stop();
  if (thread_.joinable()) thread_.join();
  server_.reset();
}

void StatusServer::set_state(const std::string& state) {
  std::lock_guard<std::mutex> lock(mu_);
  state_ = state;
}

void StatusServer::set_seg_structures(std::vector<std::string> names) {
  std::lock_guard<std::mutex> lock(mu_);
  seg_structures_ = std::move(names);
}

void StatusServer::on_round(const fed::RoundLog& log) {
  std::lock_guard<std::mutex> lock(mu_);
  if (log.evaluation_only) final_done_ = true;
  else rounds_done_ = std::max(rounds_done_, static_cast<int>(log.round));
  sum_round_seconds_ += log.seconds;
  bytes_up_ += log.bytes_up;
  bytes_down_ += log.bytes_down;
  raw_up_ += log.raw_bytes_up;
  raw_down_ += log.raw_bytes_down;
  last_ = log;
  last_.pooled_histogram = {};  // not served
  have_last_ = true;
  state_ = log.evaluation_only ? "done" : "running";
}

json StatusServer::status() const {
  std::lock_guard<std::mutex> lock(mu_);
  const double elapsed = std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
  const int done = rounds_done_ + (final_done_ ? 1 : 0);
  const double eta = final_done_ ? 0 : eta_seconds(sum_round_seconds_, done, rounds_);
  json j = {{"study", study_},
            {"state", state_},
            {"round", rounds_done_},
            {"rounds", rounds_},
            {"final_evaluation_done", final_done_},
            {"sites", sites_},
            {"bytes_up_total", bytes_up_},
            {"bytes_down_total", bytes_down_},
            {"raw_bytes_up_total", raw_up_},
            {"raw_bytes_down_total", raw_down_},
            {"elapsed_s", elapsed},
            {"eta_s", eta >= 0 ? json(eta) : json(nullptr)},
            {"last_round", nullptr}};
  if (have_last_) {
    const bool seg = !last_.global_seg.empty();
    json sites = json::array();
    int reported = 0;
    for (const auto& s : last_.sites) {
      reported += s.ok ? 1 : 0;
      json site = {{"site", s.site_id}, {"ok", s.ok}, {"error_code", s.error_code}, {"n", s.num_examples},
                   {"train_loss", s.train_loss}, {"eval_loss", s.eval_loss},
                   {"bytes_up", s.bytes_up}, {"bytes_down", s.bytes_down}, {"train_seconds", s.train_seconds}};
      if (!seg) site["auc"] = s.eval.auc;
      else if (!s.seg.empty()) site["mean_dice"] = s.seg.mean_dice_all();
      sites.push_back(std::move(site));
    }
    j["last_round"] = {{"round", last_.round},
                       {"evaluation_only", last_.evaluation_only},
                       {"sites_reported", reported},
                       {"sites_expected", last_.sites.size()},
                       {"global", seg ? seg_json(last_.global_seg, seg_structures_) : metrics_of(last_.global_eval)},
                       {"global_loss", last_.global_eval_loss},
                       {"seconds", last_.seconds},
                       {"bytes_up", last_.bytes_up},
                       {"bytes_down", last_.bytes_down},
                       {"sites", sites}};
    if (last_.dp_epsilon >= 0) j["dp"] = {{"epsilon", last_.dp_epsilon}, {"delta", last_.dp_delta}};
  }
  return j;
}

std::string StatusServer::prometheus() const {
  const json s = status();
  std::lock_guard<std::mutex> lock(mu_);
  std::ostringstream o;
  const std::string study = "study=\"" + label(study_) + "\"";
  auto metric = [&](const char* name, const char* type, const char* help, double v) {
    o << "# HELP " << name << " " << help << "\n# TYPE " << name << " " << type << "\n"
      << name << "{" << study << "} " << value(v) << "\n";
  };
  metric("fedrad_round", "gauge", "Training rounds completed.", rounds_done_);
  metric("fedrad_rounds", "gauge", "Training rounds configured.", rounds_);
  metric("fedrad_finished", "gauge", "1 once the final evaluation is done.", final_done_ ? 1 : 0);
  metric("fedrad_sites", "gauge", "Sites in the study.", static_cast<double>(sites_.size()));
  metric("fedrad_elapsed_seconds", "gauge", "Seconds since the coordinator started.", s["elapsed_s"].get<double>());
  metric("fedrad_eta_seconds", "gauge", "Estimated seconds left (mean round time x rounds left; NaN before round 1).",
         s["eta_s"].is_null() ? NAN : s["eta_s"].get<double>());
  metric("fedrad_bytes_up_total", "counter", "Bytes received from sites, on the wire.", static_cast<double>(bytes_up_));
  metric("fedrad_bytes_down_total", "counter", "Bytes sent to sites, on the wire.", static_cast<double>(bytes_down_));
  if (have_last_) {
    int reported = 0;
    for (const auto& site : last_.sites) reported += site.ok ? 1 : 0;
    metric("fedrad_sites_reported", "gauge", "Sites that reported in the last round.", reported);
    const bool seg = !last_.global_seg.empty();
    if (seg) {
      metric("fedrad_global_mean_dice", "gauge",
             "Validation Dice of the last evaluated global model, mean over structures and the sites' cases.",
             last_.global_seg.mean_dice_all());
      o << "# HELP fedrad_global_dice Validation Dice of the last evaluated global model per structure.\n"
           "# TYPE fedrad_global_dice gauge\n";
      const auto d = last_.global_seg.mean_dice();
      for (size_t i = 0; i < d.size(); ++i)
        o << "fedrad_global_dice{" << study << ",structure=\"" << label(structure_name(seg_structures_, i)) << "\"} "
          << value(d[i]) << "\n";
    } else {
      metric("fedrad_global_auc", "gauge", "Pooled validation AUC of the last evaluated global model.",
             last_.global_eval.auc);
      metric("fedrad_global_accuracy", "gauge", "Pooled validation accuracy at the pooled threshold.",
             last_.global_eval.accuracy);
    }
    metric("fedrad_global_loss", "gauge", "Pooled validation loss of the last evaluated global model.",
           last_.global_eval_loss);
    metric("fedrad_round_seconds", "gauge", "Duration of the last round.", last_.seconds);
    if (last_.dp_epsilon >= 0)
      metric("fedrad_dp_epsilon", "gauge", "Differential privacy spent so far (epsilon at the study's delta).",
             last_.dp_epsilon);
    if (seg) {
      o << "# HELP fedrad_site_mean_dice Validation mean Dice of the global model at each site (last round).\n"
           "# TYPE fedrad_site_mean_dice gauge\n";
      for (const auto& site : last_.sites)
        if (site.ok && !site.seg.empty())
          o << "fedrad_site_mean_dice{" << study << ",site=\"" << label(site.site_id) << "\"} "
            << value(site.seg.mean_dice_all()) << "\n";
    } else {
      o << "# HELP fedrad_site_auc Validation AUC of the global model at each site (last round).\n"
           "# TYPE fedrad_site_auc gauge\n";
      for (const auto& site : last_.sites)
        if (site.ok) o << "fedrad_site_auc{" << study << ",site=\"" << label(site.site_id) << "\"} " << value(site.eval.auc) << "\n";
    }
    o << "# HELP fedrad_site_train_loss Local training loss of each site (last round).\n"
         "# TYPE fedrad_site_train_loss gauge\n";
    for (const auto& site : last_.sites)
      if (site.ok) o << "fedrad_site_train_loss{" << study << ",site=\"" << label(site.site_id) << "\"} "
                     << value(site.train_loss) << "\n";
  }
  return o.str();
}

}  // namespace fedrad::app
