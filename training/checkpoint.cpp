#include "training/checkpoint.h"

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <sstream>

#include <nlohmann/json.hpp>
#include <torch/serialize.h>
#include <torch/torch.h>

namespace fedrad::training {
namespace fs = std::filesystem;

models::ClassifierOptions classifier_options(const StudyConfig& config) {
  models::ClassifierOptions o;
  o.width = config.model.width;
  o.stages = config.model.stages;
  o.norm = config.model.norm;
  o.dropout = config.model.dropout;
  return o;
}

models::UNetOptions unet_options(const StudyConfig& config) {
  models::UNetOptions o;
  o.dims = config.model.arch == "unet2d" ? 2 : 3;
  o.in_channels = static_cast<int>(config.segmentation.channels.size());
  o.out_channels = static_cast<int>(config.segmentation.labels.size()) + 1;
  o.width = config.model.width;
  o.depth = config.model.stages;
  o.norm = config.model.norm;
  return o;
}

std::shared_ptr<torch::nn::Module> build_model(const StudyConfig& config) {
  if (config.segmentation_task()) return models::UNet(unet_options(config)).ptr();
  return models::Classifier(classifier_options(config)).ptr();
}

fed::Weights to_weights(torch::nn::Module& module) {
  fed::Weights w;
  auto add = [&](const std::string& name, const torch::Tensor& t) {
    auto c = t.detach().to(torch::kCPU, torch::kFloat32).contiguous();
    fed::TensorRecord r;
    r.name = name;
    r.shape = c.sizes().vec();
    r.data.assign(c.data_ptr<float>(), c.data_ptr<float>() + c.numel());
    w.push_back(std::move(r));
  };
  for (const auto& p : module.named_parameters(/*recurse=*/true)) add(p.key(), p.value());
  for (const auto& b : module.named_buffers(/*recurse=*/true)) add(b.key(), b.value());
  return w;
}

Status load_weights(torch::nn::Module& module, const fed::Weights& weights) {
  torch::NoGradGuard no_grad;
  std::vector<std::pair<std::string, torch::Tensor>> targets;
  for (const auto& p : module.named_parameters(true)) targets.emplace_back(p.key(), p.value());
  for (const auto& b : module.named_buffers(true)) targets.emplace_back(b.key(), b.value());
  if (targets.size() != weights.size())
    return invalid_argument("model has " + std::to_string(targets.size()) + " tensors, weights have " +
                            std::to_string(weights.size()));
  for (size_t i = 0; i < targets.size(); ++i) {
    auto& [name, t] = targets[i];
    const auto& r = weights[i];
    if (r.name != name || r.shape != t.sizes().vec())
      return invalid_argument("tensor " + std::to_string(i) + ": model has '" + name + "', weights have '" + r.name +
                              "' or another shape");
    auto src = torch::from_blob(const_cast<float*>(r.data.data()), r.shape, torch::kFloat32);
    t.copy_(src.to(t.dtype()));
  }
  return ok_status();
}

std::set<std::string> norm_tensor_names(torch::nn::Module& module) {
  std::set<std::string> names;
  for (const auto& m : module.named_modules(/*name_prefix=*/"", /*include_self=*/true)) {
    // LibTorch's class names: BatchNorm2dImpl, GroupNormImpl, InstanceNorm3dImpl, LayerNormImpl...
    if (m.value()->name().find("Norm") == std::string::npos) continue;
    const std::string prefix = m.key().empty() ? "" : m.key() + ".";
    for (const auto& p : m.value()->named_parameters(/*recurse=*/false)) names.insert(prefix + p.key());
    for (const auto& b : m.value()->named_buffers(/*recurse=*/false)) names.insert(prefix + b.key());
  }
  return names;
}

fed::Weights norm_tensors_of(torch::nn::Module& module, const fed::Weights& weights) {
  const std::set<std::string> names = norm_tensor_names(module);
  fed::Weights out;
  for (const fed::TensorRecord& t : weights)
    if (names.count(t.name)) out.push_back(t);
  return out;
}

fed::Weights with_local_tensors(const fed::Weights& global, const fed::Weights& local) {
  if (local.empty()) return global;
  fed::Weights merged = global;
  size_t j = 0;  // both lists are in the model's order
  for (fed::TensorRecord& t : merged) {
    if (j < local.size() && t.name == local[j].name && t.shape == local[j].shape) {
      t.data = local[j].data;
      ++j;
    }
  }
  return merged;
}

std::string sidecar_path(const std::string& pt_path) {
  fs::path p(pt_path);
  return (p.parent_path() / (p.stem().string() + ".json")).string();
}

Status write_file_atomic(const std::string& path, const std::string& bytes) {
  const std::string tmp = path + ".tmp";
  {
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    if (!out) return io_error(tmp + ": cannot open for writing");
    out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
    out.flush();
    if (!out) return io_error(tmp + ": write failed");
  }
  std::error_code ec;
  fs::rename(tmp, path, ec);
  if (ec) return io_error(path + ": rename failed: " + ec.message());
  return ok_status();
}

Status save_model(const std::string& pt_path, torch::nn::Module& model, const StudyConfig& config,
                  const ModelMeta& meta) {
  try {
    c10::Dict<std::string, at::Tensor> state;
    for (const auto& p : model.named_parameters(true)) state.insert(p.key(), p.value().detach().cpu());
    for (const auto& b : model.named_buffers(true)) state.insert(b.key(), b.value().detach().cpu());
    const std::vector<char> bytes = torch::pickle_save(c10::IValue(state));
    FEDRAD_RETURN_IF_ERROR(write_file_atomic(pt_path, std::string(bytes.begin(), bytes.end())));
  } catch (const std::exception& e) {
    return internal_error(pt_path + ": cannot serialise the model: " + e.what());
  }
  const auto o = classifier_options(config);
  nlohmann::json model_json = {{"arch", config.model.arch}, {"in_channels", o.in_channels}, {"width", o.width},
                               {"stages", o.stages}, {"norm", o.norm}, {"dropout", o.dropout},
                               {"num_outputs", o.num_outputs}};
  if (config.segmentation_task()) {
    // What models/python/fedrad_models.py's UNet(**meta["model"]) takes, and how to feed it.
    const auto u = unet_options(config);
    model_json = {{"arch", config.model.arch}, {"dims", u.dims},       {"in_channels", u.in_channels},
                  {"out_channels", u.out_channels}, {"width", u.width}, {"depth", u.depth}, {"norm", u.norm}};
  }
  nlohmann::json j = {
      {"format", "fedrad-model-1"},
      {"kind", meta.kind},
      {"round", meta.round},
      {"epochs", meta.epochs},
      {"threshold", meta.threshold},
      {"val_auc", meta.val_auc},
      {"task", config.task},
      {"model", model_json},
      {"data", {{"input_size", config.data.input_size}, {"normalise", config.data.normalise}}},
      {"config_yaml", to_yaml(config)},
  };
  if (config.segmentation_task()) {
    const auto& g = config.segmentation;
    j["segmentation"] = {{"channels", g.channels}, {"labels", g.labels},       {"spacing", g.spacing},
                         {"patch_size", g.patch_size}, {"overlap", g.overlap}, {"brats_regions", g.brats_regions},
                         {"normalise", "z-score per channel over the non-zero foreground, background 0"}};
  }
  return write_file_atomic(sidecar_path(pt_path), j.dump(2) + "\n");
}

StatusOr<LoadedModel> load_model(const std::string& pt_path) {
  const std::string meta_path = sidecar_path(pt_path);
  std::ifstream meta_in(meta_path);
  if (!meta_in) return not_found(meta_path + ": model description missing (saved beside " + pt_path + ")");
  LoadedModel out;
  try {
    auto j = nlohmann::json::parse(meta_in);
    if (j.value("format", "") != "fedrad-model-1") return corrupt(meta_path + ": not a fedrad model description");
    FEDRAD_ASSIGN_OR_RETURN(out.config, parse_study_config(j.at("config_yaml").get<std::string>(), meta_path));
    out.meta.kind = j.value("kind", "global");
    out.meta.round = j.value("round", 0);
    out.meta.epochs = j.value("epochs", 0);
    out.meta.threshold = j.value("threshold", 0.5);
    out.meta.val_auc = j.value("val_auc", 0.0);
  } catch (const std::exception& e) {
    return corrupt(meta_path + ": " + e.what());
  }
  std::ifstream in(pt_path, std::ios::binary);
  if (!in) return not_found(pt_path + ": cannot open model file");
  std::vector<char> bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  try {
    auto ivalue = torch::pickle_load(bytes);
    auto dict = ivalue.toGenericDict();
    std::shared_ptr<torch::nn::Module> module;
    if (out.config.segmentation_task()) {
      out.unet = models::UNet(unet_options(out.config));
      module = out.unet.ptr();
    } else {
      out.model = models::Classifier(classifier_options(out.config));
      module = out.model.ptr();
    }
    torch::NoGradGuard no_grad;
    int matched = 0;
    auto copy_in = [&](const std::string& name, torch::Tensor& t) -> Status {
      auto it = dict.find(name);
      if (it == dict.end()) return corrupt(pt_path + ": tensor '" + name + "' missing");
      auto src = it->value().toTensor();
      if (src.sizes() != t.sizes()) return corrupt(pt_path + ": tensor '" + name + "' has another shape");
      t.copy_(src);
      ++matched;
      return ok_status();
    };
    for (auto& p : module->named_parameters(true)) FEDRAD_RETURN_IF_ERROR(copy_in(p.key(), p.value()));
    for (auto& b : module->named_buffers(true)) FEDRAD_RETURN_IF_ERROR(copy_in(b.key(), b.value()));
    if (matched != static_cast<int>(dict.size()))
      return corrupt(pt_path + ": holds " + std::to_string(dict.size()) + " tensors, the model has " +
                     std::to_string(matched));
  } catch (const std::exception& e) {
    return corrupt(pt_path + ": not a readable model file: " + e.what());
  }
  if (out.unet) out.unet->eval();
  else out.model->eval();
  return out;
}

}  // namespace fedrad::training
