#include "apps/segmentation.h"

#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>

#include <torch/torch.h>

#include "common/log.h"
#include "imaging/overlay.h"
#include "imaging/seg_data.h"
#include "imaging/synthetic_volume.h"
#include "training/segmentation.h"

namespace fedrad::app {
namespace fs = std::filesystem;
using nlohmann::json;

namespace {

using Clock = std::chrono::steady_clock;
double since(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }

Status make_dir(const std::string& dir) {
  std::error_code ec;
  fs::create_directories(dir, ec);
  if (ec) return io_error(dir + ": cannot create folder: " + ec.message());
  return ok_status();
}

json per_case_json(const training::SegEvaluation& e, const std::vector<SegStructure>& structures) {
  json out = json::array();
  for (size_t i = 0; i < e.per_case.size(); ++i) {
    json dice = json::object(), hd = json::object();
    for (size_t s = 0; s < structures.size(); ++s) {
      dice[structures[s].name] = e.per_case[i].dice[s];
      const double h = e.per_case[i].hd95[s];
      hd[structures[s].name] = std::isfinite(h) ? json(h) : json(nullptr);
    }
    out.push_back({{"case", e.case_ids[i]}, {"dice", dice}, {"hd95", hd}});
  }
  return out;
}

std::string dice_line(const SegScoreSums& sums, const StudyConfig& config) {
  const auto structures = seg_structures(config.segmentation.labels, config.segmentation.brats_regions);
  const auto d = sums.mean_dice();
  std::string s;
  for (size_t i = 0; i < structures.size() && i < d.size(); ++i) {
    char buf[64];
    std::snprintf(buf, sizeof(buf), "%s%s %.4f", s.empty() ? "" : ", ", structures[i].name.c_str(), d[i]);
    s += buf;
  }
  return s;
}

}  // namespace

json seg_scores_json(const SegScoreSums& sums, const StudyConfig& config) {
  const auto structures = seg_structures(config.segmentation.labels, config.segmentation.brats_regions);
  const auto d = sums.mean_dice();
  const auto h = sums.mean_hd95();
  json dice = json::object(), hd = json::object();
  for (size_t i = 0; i < d.size(); ++i) {
    const std::string name = i < structures.size() ? structures[i].name : "structure " + std::to_string(i);
    dice[name] = d[i];
    hd[name] = std::isfinite(h[i]) ? json(h[i]) : json(nullptr);
  }
  return {{"cases", sums.cases}, {"mean_dice", sums.mean_dice_all()}, {"dice", dice}, {"hd95", hd}};
}

StatusOr<std::unique_ptr<fed::Learner>> make_seg_learner(const StudyConfig& config, const std::string& site_dir,
                                                         const std::string& site_id, int site_index, int threads) {
  auto log = logger(site_id);
  const auto t0 = Clock::now();
  auto train = training::load_seg_set(site_dir + "/train", config, threads);
  if (!train.ok()) return train.status().with_context("site " + site_id);
  auto val = training::load_seg_set(site_dir + "/val", config, threads);
  if (!val.ok()) return val.status().with_context("site " + site_id);
  log->info("loaded {} train and {} val segmentation cases in {:.1f} s", train->size(), val->size(), since(t0));
  return std::unique_ptr<fed::Learner>(
      new training::SegLearner(config, std::move(train).value(), std::move(val).value(), site_index));
}

Status train_segmentation(const StudyConfig& config, const std::string& data_root, const std::vector<std::string>& sites,
                          const std::string& out_dir) {
  if (sites.empty()) return invalid_argument("train: no sites given (config 'sites' or --site)");
  FEDRAD_RETURN_IF_ERROR(make_dir(out_dir));
  auto log = logger("train");
  FEDRAD_ASSIGN_OR_RETURN(const torch::Device device,
                          training::prepare_device(config.train, config.train.device, config.train.threads));
  log->info("training on {}", training::describe_device(device));
  std::vector<training::SegSet> trains, vals;
  for (const auto& s : sites) {
    const std::string dir = (fs::path(data_root) / s).string();
    auto tr = training::load_seg_set(dir + "/train", config, config.train.threads);
    if (!tr.ok()) return tr.status().with_context("site " + s);
    auto va = training::load_seg_set(dir + "/val", config, config.train.threads);
    if (!va.ok()) return va.status().with_context("site " + s);
    log->info("{}: {} train, {} val cases", s, tr->size(), va->size());
    trains.push_back(std::move(tr).value());
    vals.push_back(std::move(va).value());
  }
  std::vector<const training::SegSet*> tp, vp;
  for (auto& t : trains) tp.push_back(&t);
  for (auto& v : vals) vp.push_back(&v);
  const training::SegSet train_set = training::concat(tp), val_set = training::concat(vp);
  try {
    torch::manual_seed(config.seed);
    models::UNet net(training::unet_options(config));
    const int epochs = config.baseline_epochs();
    auto options = training::seg_fit_options_from(config, epochs, config.seed);
    std::ofstream jsonl(out_dir + "/metrics.jsonl", std::ios::trunc), csv(out_dir + "/metrics.csv", std::ios::trunc);
    if (!jsonl || !csv) return io_error(out_dir + ": cannot write metrics.jsonl / metrics.csv");
    csv << "epoch,loss,val_loss,val_mean_dice,seconds\n";
    const int val_every = std::max(1, epochs / 5);  // sliding-window inference is costly on a CPU
    const auto t_fit = Clock::now();
    options.fit.on_epoch = [&](int epoch, double loss) {
      const double secs = since(t_fit);
      json row = {{"epoch", epoch + 1}, {"loss", loss}, {"seconds", secs}};
      std::string val_text;
      if ((epoch + 1) % val_every == 0 || epoch + 1 == epochs) {
        auto e = training::evaluate_seg(net, val_set, config);
        net->train();
        row["val_loss"] = e.loss;
        row["val_mean_dice"] = e.sums.mean_dice_all();
        val_text = ", val Dice " + dice_line(e.sums, config);
      }
      jsonl << row.dump() << "\n" << std::flush;
      csv << epoch + 1 << "," << loss << "," << (row.contains("val_loss") ? std::to_string(row["val_loss"].get<double>()) : "")
          << "," << (row.contains("val_mean_dice") ? std::to_string(row["val_mean_dice"].get<double>()) : "") << ","
          << secs << "\n" << std::flush;
      log->info("epoch {}/{}: Dice+CE loss {:.4f}{}; elapsed {:.0f} s", epoch + 1, epochs, loss, val_text, secs);
    };
    const auto t0 = Clock::now();
    auto stats = training::fit_seg(net, train_set, options);
    auto e = training::evaluate_seg(net, val_set, config);
    training::ModelMeta meta;
    meta.kind = sites.size() == 1 ? "site:" + sites[0] : "centralised";
    meta.epochs = epochs;
    FEDRAD_RETURN_IF_ERROR(training::save_model(out_dir + "/model.pt", *net, config, meta));
    { std::ofstream cfg(out_dir + "/config.yaml"); cfg << to_yaml(config); }
    const auto structures = seg_structures(config.segmentation.labels, config.segmentation.brats_regions);
    json summary = {{"kind", meta.kind},
                    {"task", "segmentation"},
                    {"sites", sites},
                    {"epochs", epochs},
                    {"train_cases", train_set.size()},
                    {"train_seconds", stats.seconds},
                    {"wall_seconds", since(t0)},
                    {"val", seg_scores_json(e.sums, config)},
                    {"val_per_case", per_case_json(e, structures)},
                    {"inference_seconds_per_case", e.seconds_per_case},
                    {"model", "model.pt"}};
    FEDRAD_RETURN_IF_ERROR(training::write_file_atomic(out_dir + "/summary.json", summary.dump(2) + "\n"));
    std::printf("%s on %lld cases, %d epochs: val mean Dice %.4f (%s); model %s/model.pt\n", meta.kind.c_str(),
                static_cast<long long>(train_set.size()), epochs, e.sums.mean_dice_all(), dice_line(e.sums, config).c_str(),
                out_dir.c_str());
  } catch (const std::exception& e) {
    return internal_error(std::string("segmentation training failed: ") + e.what());
  }
  return ok_status();
}

StatusOr<json> evaluate_segmentation(const training::LoadedModel& loaded, const std::string& model_path,
                                     const std::vector<std::string>& data_dirs) {
  const StudyConfig& config = loaded.config;
  const auto structures = seg_structures(config.segmentation.labels, config.segmentation.brats_regions);
  models::UNet net = loaded.unet;
  SegScoreSums pooled;
  json per_folder = json::array();
  double seconds = 0;
  int64_t cases = 0;
  try {
    for (const auto& dir : data_dirs) {
      auto set = training::load_seg_set(dir, config, config.train.threads);
      if (!set.ok()) return set.status();
      auto e = training::evaluate_seg(net, *set, config);
      pooled.merge(e.sums);
      seconds += e.seconds_per_case * static_cast<double>(set->size());
      cases += set->size();
      json f = seg_scores_json(e.sums, config);
      f["data"] = dir;
      f["per_case"] = per_case_json(e, structures);
      per_folder.push_back(f);
    }
  } catch (const std::exception& e) {
    return internal_error(std::string("segmentation evaluation failed: ") + e.what());
  }
  json out = seg_scores_json(pooled, config);
  out["model"] = model_path;
  out["inference_seconds_per_case"] = cases > 0 ? seconds / static_cast<double>(cases) : 0.0;
  out["per_folder"] = per_folder;
  return out;
}

Status predict_segmentation(const training::LoadedModel& loaded, const std::vector<std::string>& channel_paths,
                            const std::string& mask_path, const std::string& overlay_path) {
  const StudyConfig& config = loaded.config;
  const auto& names = config.segmentation.channels;
  if (channel_paths.size() != names.size()) {
    std::string expected;
    for (const auto& n : names) expected += (expected.empty() ? "" : " ") + n;
    return invalid_argument("predict: the model takes " + std::to_string(names.size()) + " input channel(s) in this order: " +
                            expected + "; got " + std::to_string(channel_paths.size()) + " input(s)");
  }
  if (mask_path.empty() || mask_path == "-")
    return invalid_argument("predict: a segmentation model writes a NIfTI mask: give --out MASK.nii.gz");
  auto log = logger("predict");
  training::set_threads(config.train.threads);
  std::vector<imaging::Volume> channels;
  for (size_t i = 0; i < channel_paths.size(); ++i) {
    auto v = imaging::read_channel(channel_paths[i]);
    if (!v.ok()) return v.status().with_context("channel '" + names[i] + "'");
    channels.push_back(std::move(v).value());
  }
  const imaging::Volume first = channels[0];
  FEDRAD_ASSIGN_OR_RETURN(auto c, imaging::make_seg_case("input", std::move(channels), nullptr,
                                                         training::seg_load_options(config), "predict"));
  models::UNet net = loaded.unet;
  std::vector<uint8_t> classes;
  const auto t0 = Clock::now();
  try {
    auto probs = training::predict_probabilities(net, c, training::sliding_window_options_from(config));
    classes = training::argmax_classes(probs);
  } catch (const std::exception& e) {
    return internal_error(std::string("prediction failed: ") + e.what());
  }
  const double secs = since(t0);
  const imaging::Volume mask = imaging::classes_to_reference(c, classes, config.segmentation.labels);
  FEDRAD_RETURN_IF_ERROR(imaging::write_nifti(mask_path, mask, imaging::VoxelType::kUInt8));
  if (!overlay_path.empty()) FEDRAD_RETURN_IF_ERROR(imaging::write_overlay_png(overlay_path, first, mask));
  size_t labelled = 0;
  for (float v : mask.voxels) labelled += v != 0;
  log->info("{}x{}x{} volume segmented in {:.2f} s ({}x{}x{} voxels after resampling and cropping); {} labelled voxels",
            first.size[0], first.size[1], first.size[2], secs, c.size[0], c.size[1], c.size[2], labelled);
  std::printf("mask: %s%s%s\n", mask_path.c_str(), overlay_path.empty() ? "" : "   overlay: ", overlay_path.c_str());
  return ok_status();
}

Status write_synthetic_seg_sites(const std::string& out_dir, int num_train, int num_val, uint64_t seed) {
  FEDRAD_RETURN_IF_ERROR(make_dir(out_dir));
  auto specs = imaging::default_seg_sites();
  for (size_t i = 0; i < specs.size(); ++i) {
    specs[i].num_train = num_train;
    specs[i].num_val = num_val;
    FEDRAD_RETURN_IF_ERROR(imaging::write_synthetic_seg_site(out_dir, specs[i], seed + i));
    logger("synthetic")->info("{}: {} train + {} val cases, {:.1f} mm voxels, intensity scale {}, noise {}",
                              specs[i].name, num_train, num_val, specs[i].spacing, specs[i].scale, specs[i].noise);
  }
  return ok_status();
}

}  // namespace fedrad::app
