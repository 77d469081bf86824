// Models on disk and on the wire.
//
// A saved model is two files: `NAME.pt`, the state dict in PyTorch's own format (torch.load in
// Python returns a dict of tensors that loads into models/python/fedrad_models.py), and
// `NAME.json` beside it: the model options, the preprocessing it expects, the decision
// threshold chosen on validation data, the round, and the study config. Writes are atomic
// (temporary file, then rename), so a crash never leaves half a model.
#pragma once

#include <set>

#include <memory>
#include <string>

#include "common/config.h"
#include "common/status.h"
#include "federation/federation.h"
#include "models/classifier.h"
#include "models/unet.h"

namespace fedrad::training {

struct ModelMeta {
  std::string kind = "global";  // global | centralised | site:<name>
  int round = 0;                // federated round (0 for baselines)
  int epochs = 0;               // baseline epochs
  double threshold = 0.5;       // chosen on validation data (Youden's J)
  double val_auc = 0;           // on the validation data the threshold was chosen on
};

models::ClassifierOptions classifier_options(const StudyConfig& config);
models::UNetOptions unet_options(const StudyConfig& config);  // task: segmentation

// The study's network: the classifier (task: classification) or the U-Net (task: segmentation,
// training/segmentation.h unet_options), freshly initialised.
std::shared_ptr<torch::nn::Module> build_model(const StudyConfig& config);

// Parameters then buffers, by their module path ("blocks.0.conv1.weight"), as float32.
fed::Weights to_weights(torch::nn::Module& module);
// Copies `weights` into the module's parameters and buffers; names and shapes must match.
Status load_weights(torch::nn::Module& module, const fed::Weights& weights);

// Names (as in to_weights) of the parameters and buffers of the module's normalisation layers
// (batch, group, instance and layer norm): what FedBN keeps local at each site.
std::set<std::string> norm_tensor_names(torch::nn::Module& module);

// FedBN at a site: the normalisation tensors of `weights` (as named by norm_tensor_names), and
// `global` with the site's own copies of those tensors put back (global as is when `local` is
// empty; a tensor whose name or shape differs is left global).
fed::Weights norm_tensors_of(torch::nn::Module& module, const fed::Weights& weights);
fed::Weights with_local_tensors(const fed::Weights& global, const fed::Weights& local);

Status save_model(const std::string& pt_path, torch::nn::Module& model, const StudyConfig& config,
                  const ModelMeta& meta);

struct LoadedModel {
  models::Classifier model{nullptr};  // task: classification
  models::UNet unet{nullptr};         // task: segmentation (config.model.arch unet2d / unet3d)
  StudyConfig config;
  ModelMeta meta;
};
// Reads NAME.pt and NAME.json; errors name the file and what is wrong.
StatusOr<LoadedModel> load_model(const std::string& pt_path);

// NAME.pt -> NAME.json
std::string sidecar_path(const std::string& pt_path);

// Writes `bytes` to `path` atomically.
Status write_file_atomic(const std::string& path, const std::string& bytes);

}  // namespace fedrad::training
