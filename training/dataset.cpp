#include "training/dataset.h"

#include <algorithm>
#include <atomic>
#include <thread>

#include <torch/torch.h>

#include "common/log.h"
#include "common/progress.h"
#include "cuda/preprocess.h"
#include "imaging/dicom.h"

namespace fedrad::training {

int64_t ImageSet::positives() const {
  return labels.defined() ? static_cast<int64_t>(labels.sum().item<float>()) : 0;
}

void preprocess_image(const std::vector<float>& pixels, int rows, int cols, const DataConfig& data, float* out) {
  const int s = data.input_size;
  std::vector<float> resized;
  const float* src = pixels.data();
  if (rows != s || cols != s) {
    resized.resize(static_cast<size_t>(s) * s);
    cuda::resize_bilinear_cpu(1, pixels.data(), resized.data(), {rows, cols, s, s});
    src = resized.data();
  }
  cuda::NormaliseParams np;
  np.pixels_per_image = static_cast<int64_t>(s) * s;
  np.mode = data.normalise == "zscore" ? cuda::NormaliseMode::kZScore : cuda::NormaliseMode::kMinMax;
  cuda::normalise_cpu(1, src, out, np);
}

namespace {

struct Decoded {
  bool ok = false;
  std::string error;
};

// Decodes files[i] into images[i]; failures are recorded per file, never thrown.
std::vector<Decoded> decode_all(const std::vector<std::string>& files, const DataConfig& data, int threads,
                                float* images, Progress* progress) {
  std::vector<Decoded> results(files.size());
  const int64_t plane = static_cast<int64_t>(data.input_size) * data.input_size;
  std::atomic<size_t> next{0};
  auto work = [&] {
    for (size_t i = next++; i < files.size(); i = next++) {
      imaging::ReadOptions ro;
      ro.frame = 0;
      auto px = imaging::read_dicom(files[i], ro);
      progress->advance();
      if (!px.ok()) {
        results[i].error = px.status().message();
        continue;
      }
      preprocess_image(px->pixels, px->rows, px->columns, data, images + i * plane);
      results[i].ok = true;
    }
  };
  int n = threads > 0 ? threads : static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  n = std::max(1, std::min<int>(n, static_cast<int>(files.size())));
  std::vector<std::thread> pool;
  for (int t = 1; t < n; ++t) pool.emplace_back(work);
  work();
  for (auto& t : pool) t.join();
  return results;
}

// Keeps the rows of `all` (N x plane) whose decode succeeded.
ImageSet assemble(const std::vector<std::string>& files, const std::vector<float>& labels,
                  const std::vector<Decoded>& decoded, const torch::Tensor& all, int size) {
  ImageSet set;
  std::vector<int64_t> keep;
  std::vector<float> kept_labels;
  for (size_t i = 0; i < files.size(); ++i) {
    if (decoded[i].ok) {
      keep.push_back(static_cast<int64_t>(i));
      kept_labels.push_back(labels[i]);
      set.files.push_back(files[i]);
    } else {
      set.unreadable.push_back({files[i], decoded[i].error});
    }
  }
  auto idx = torch::tensor(keep, torch::kLong);
  set.images = all.index_select(0, idx).view({-1, 1, size, size}).contiguous();
  set.labels = torch::tensor(kept_labels, torch::kFloat32);
  return set;
}

}  // namespace

StatusOr<ImageSet> load_image_set(const std::string& dir, const DataConfig& data, int threads) {
  FEDRAD_ASSIGN_OR_RETURN(auto index, imaging::index_site(dir));
  std::vector<std::string> files;
  std::vector<float> labels;
  for (const auto& f : index.files) {
    files.push_back(f.path);
    labels.push_back(static_cast<float>(f.label));
  }
  if (files.empty()) return not_found(dir + ": labels.csv lists no existing file");
  const int s = data.input_size;
  auto all = torch::empty({static_cast<int64_t>(files.size()), static_cast<int64_t>(s) * s});
  Progress progress("data", "decoding " + dir, files.size(), "images");
  auto decoded = decode_all(files, data, threads, all.data_ptr<float>(), &progress);
  ImageSet set = assemble(files, labels, decoded, all, s);
  progress.finish(std::to_string(set.size()) + " usable");
  set.index = std::move(index);
  auto log = logger("data");
  for (const auto& p : set.unreadable) log->warn("skipping unreadable file {}", p.reason);
  if (set.size() == 0) return corrupt(dir + ": none of the " + std::to_string(files.size()) + " labelled files could be read");
  return set;
}

StatusOr<ImageSet> load_unlabelled(const std::vector<std::string>& files, const DataConfig& data, int threads) {
  const int s = data.input_size;
  auto all = torch::empty({static_cast<int64_t>(files.size()), static_cast<int64_t>(s) * s});
  Progress progress("data", "decoding", files.size(), "images");
  auto decoded = decode_all(files, data, threads, all.data_ptr<float>(), &progress);
  progress.finish();
  std::vector<float> labels(files.size(), -1.0f);
  return assemble(files, labels, decoded, all, s);
}

ImageSet concat(const std::vector<const ImageSet*>& sets) {
  ImageSet out;
  std::vector<torch::Tensor> images, labels;
  for (const ImageSet* s : sets) {
    images.push_back(s->images);
    labels.push_back(s->labels);
    out.files.insert(out.files.end(), s->files.begin(), s->files.end());
    out.unreadable.insert(out.unreadable.end(), s->unreadable.begin(), s->unreadable.end());
  }
  out.images = torch::cat(images, 0);
  out.labels = torch::cat(labels, 0);
  return out;
}

}  // namespace fedrad::training
