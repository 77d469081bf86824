// A site's images in memory, decoded and preprocessed once: the pneumonia images are small
// (28..64 px), so a site's split fits in memory and epochs never touch the disk again.
#pragma once

#include <optional>
#include <string>
#include <vector>

#include <torch/types.h>

#include "common/config.h"
#include "common/status.h"
#include "imaging/site_index.h"

namespace fedrad::training {

struct ImageSet {
  torch::Tensor images;  // [N, 1, S, S] float32, normalised (DataConfig::normalise)
  torch::Tensor labels;  // [N] float32, 0 NORMAL / 1 PNEUMONIA
  std::vector<std::string> files;               // one per image, for predictions
  std::vector<imaging::FileProblem> unreadable; // files in labels.csv that could not be decoded
  imaging::SiteIndex index;

  int64_t size() const { return images.defined() ? images.size(0) : 0; }
  int64_t positives() const;
};

// Indexes `dir` (a folder with labels.csv), decodes every labelled file (in parallel on
// `threads` threads; 0 = all cores), resizes and normalises to the configured input size on the
// CPU path of cuda/preprocess.h. Unreadable files are listed, logged and left out; fails only if
// the folder cannot be indexed or no image at all could be read.
StatusOr<ImageSet> load_image_set(const std::string& dir, const DataConfig& data, int threads = 0);

// How a set is decoded and where it ends up (the GPU path of issue 4).
struct LoadOptions {
  int threads = 0;                      // decoding threads; 0 = all cores
  torch::Device device = torch::kCPU;   // where the images end up
  // Stored pixels go to `device` as they are and are converted there (rescale, MONOCHROME1,
  // resize, normalisation: cuda/torch_ops.h's fused kernels): worker threads decode the next
  // chunk of files into page-locked buffers while the device converts the previous one. Default:
  // on for a CUDA device. On a CPU device it runs the kernels' CPU references (the tests compare
  // it with the plain path).
  std::optional<bool> device_preprocess;
  int chunk = 256;                      // files per chunk
};

// As above, with the images on options.device.
StatusOr<ImageSet> load_image_set(const std::string& dir, const DataConfig& data, const LoadOptions& options);

// Decodes and preprocesses files with no labels (for `fedrad predict`); labels are -1.
StatusOr<ImageSet> load_unlabelled(const std::vector<std::string>& files, const DataConfig& data, int threads = 0);

// Moves the images and labels to `device` (a GPU site keeps its whole decoded set there: the
// pneumonia sets are a few hundred MB at 224 x 224). No-op when they are there already.
void to_device(ImageSet* set, const torch::Device& device);

// Concatenates sets (e.g. every site's train split for the centralised baseline).
ImageSet concat(const std::vector<const ImageSet*>& sets);

// Preprocesses one decoded image (rows x cols values) into `out` (size*size floats).
void preprocess_image(const std::vector<float>& pixels, int rows, int cols, const DataConfig& data, float* out);

}  // namespace fedrad::training
