#include "training/dataset.h"

#include <algorithm>
#include <atomic>
#include <thread>

#include <torch/torch.h>

#include "common/log.h"
#include "common/progress.h"
#include "cuda/preprocess.h"
#include "cuda/torch_ops.h"
#include "imaging/dicom.h"
#include "training/loader.h"

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
  auto idx = torch::tensor(keep, torch::kLong).to(all.device());
  set.images = all.index_select(0, idx).view({-1, 1, size, size}).contiguous();
  set.labels = torch::tensor(kept_labels, torch::kFloat32);
  return set;
}

// The device path: files decoded to stored values on the host (worker threads, one chunk ahead),
// converted and resized on the device. Images of one size in a chunk go through one batched call.
torch::Tensor decode_on_device(const std::vector<std::string>& files, const DataConfig& data,
                               const LoadOptions& options, std::vector<Decoded>* results, Progress* progress) {
  const int64_t n = static_cast<int64_t>(files.size());
  const int s = data.input_size;
  const auto mode = data.normalise == "zscore" ? cuda::NormaliseMode::kZScore : cuda::NormaliseMode::kMinMax;
  const int64_t chunk = std::max(1, options.chunk);
  const int threads = options.threads > 0 ? options.threads
                                          : static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  auto all = torch::zeros({n, 1, s, s}, torch::TensorOptions(torch::kFloat32).device(options.device));
  // Each file's conversion, written by the worker that decodes it and read here once its chunk
  // has been handed over (the loader's lock orders the two).
  std::vector<cuda::PixelParams> params(files.size());
  BatchLoader::Options lo;
  lo.depth = 2;
  BatchLoader loader(
      (n + chunk - 1) / chunk,
      [&](int64_t c, bool pinned) {
        const int64_t first = c * chunk, last = std::min(n, first + chunk);
        std::vector<imaging::DicomPixels> px(static_cast<size_t>(last - first));
        std::atomic<int64_t> next{first};
        auto work = [&] {
          for (int64_t i = next++; i < last; i = next++) {
            const size_t k = static_cast<size_t>(i - first);
            const std::string& file = files[static_cast<size_t>(i)];
            imaging::ReadOptions ro;
            ro.frame = 0;
            ro.apply_rescale = false;       // stored values: the device applies slope/intercept
            ro.invert_monochrome1 = false;  // and MONOCHROME1, with the reader's semantics
            auto r = imaging::read_dicom(file, ro);
            if (r.ok() && (r->has_modality_lut || r->colour_converted)) {
              // Not expressible as slope/intercept: the reader converts, the device only resizes.
              imaging::ReadOptions full;
              full.frame = 0;
              r = imaging::read_dicom(file, full);
            } else if (r.ok()) {
              auto& p = params[static_cast<size_t>(i)];
              p.slope = static_cast<float>(r->rescale_slope);
              p.intercept = static_cast<float>(r->rescale_intercept);
              p.invert = r->photometric == "MONOCHROME1";
              p.is_signed = r->is_signed;
              p.bits = r->bits_stored;
            }
            progress->advance();
            if (!r.ok()) {
              (*results)[static_cast<size_t>(i)].error = r.status().message();
              continue;
            }
            px[k] = std::move(r).value();
            (*results)[static_cast<size_t>(i)].ok = true;
          }
        };
        std::vector<std::thread> pool;
        for (int64_t t = 1; t < std::min<int64_t>(threads, last - first); ++t) pool.emplace_back(work);
        work();
        for (auto& t : pool) t.join();
        // One [g, rows, cols] block per image size (copied to the device); host: its file indices.
        HostBatch hb;
        std::vector<bool> done(px.size(), false);
        for (size_t k = 0; k < px.size(); ++k) {
          if (done[k] || !(*results)[static_cast<size_t>(first) + k].ok) continue;
          const int rows = px[k].rows, cols = px[k].columns;
          std::vector<size_t> members;
          for (size_t m = k; m < px.size(); ++m) {
            if (!done[m] && (*results)[static_cast<size_t>(first) + m].ok && px[m].rows == rows &&
                px[m].columns == cols) {
              members.push_back(m);
              done[m] = true;
            }
          }
          const int64_t g = static_cast<int64_t>(members.size());
          const int64_t plane = static_cast<int64_t>(rows) * cols;
          auto raw = empty_host({g, rows, cols}, torch::kFloat32, pinned);
          auto idx = torch::empty({g}, torch::kLong);
          for (int64_t j = 0; j < g; ++j) {
            const size_t m = members[static_cast<size_t>(j)];
            std::copy(px[m].pixels.begin(), px[m].pixels.begin() + plane, raw.data_ptr<float>() + j * plane);
            idx.data_ptr<int64_t>()[j] = first + static_cast<int64_t>(m);
          }
          hb.tensors.push_back(raw);
          hb.host.push_back(idx);
        }
        return hb;
      },
      options.device, lo);
  std::vector<torch::Tensor> dev, host;
  while (loader.next(&dev, &host)) {
    for (size_t g = 0; g < dev.size(); ++g) {
      const auto& idx = host[g];
      std::vector<cuda::PixelParams> block(static_cast<size_t>(idx.size(0)));
      for (size_t j = 0; j < block.size(); ++j) block[j] = params[static_cast<size_t>(idx.data_ptr<int64_t>()[j])];
      auto out = cuda::preprocess_images(dev[g], block, s, mode);
      all.index_copy_(0, idx.to(options.device), out);
    }
  }
  return all;
}

// A site split's labelled files, in labels.csv order.
struct Listing {
  imaging::SiteIndex index;
  std::vector<std::string> files;
  std::vector<float> labels;
};

StatusOr<Listing> list_split(const std::string& dir) {
  Listing l;
  FEDRAD_ASSIGN_OR_RETURN(l.index, imaging::index_site(dir));
  for (const auto& f : l.index.files) {
    l.files.push_back(f.path);
    l.labels.push_back(static_cast<float>(f.label));
  }
  if (l.files.empty()) return not_found(dir + ": labels.csv lists no existing file");
  return l;
}

// Logs the unreadable files; fails when none could be read.
StatusOr<ImageSet> finish_set(ImageSet set, Listing listing, const std::string& dir, Progress* progress) {
  progress->finish(std::to_string(set.size()) + " usable");
  set.index = std::move(listing.index);
  auto log = logger("data");
  for (const auto& p : set.unreadable) log->warn("skipping unreadable file {}", p.reason);
  if (set.size() == 0)
    return corrupt(dir + ": none of the " + std::to_string(listing.files.size()) + " labelled files could be read");
  return set;
}

}  // namespace

StatusOr<ImageSet> load_image_set(const std::string& dir, const DataConfig& data, const LoadOptions& options) {
  const bool on_device = options.device_preprocess.value_or(options.device.is_cuda());
  if (!on_device) {
    FEDRAD_ASSIGN_OR_RETURN(auto set, load_image_set(dir, data, options.threads));
    to_device(&set, options.device);
    return set;
  }
  FEDRAD_ASSIGN_OR_RETURN(auto listing, list_split(dir));
  const auto& files = listing.files;
  Progress progress("data", "decoding " + dir + " (converting on " + options.device.str() + ")", files.size(),
                    "images");
  std::vector<Decoded> decoded(files.size());
  torch::Tensor all;
  try {
    all = decode_on_device(files, data, options, &decoded, &progress);
  } catch (const std::exception& e) {
    return internal_error(dir + ": preprocessing on " + options.device.str() + " failed: " + e.what());
  }
  ImageSet set = assemble(files, listing.labels, decoded, all.view({all.size(0), -1}), data.input_size);
  set.labels = set.labels.to(options.device);
  return finish_set(std::move(set), std::move(listing), dir, &progress);
}

StatusOr<ImageSet> load_image_set(const std::string& dir, const DataConfig& data, int threads) {
  FEDRAD_ASSIGN_OR_RETURN(auto listing, list_split(dir));
  const auto& files = listing.files;
  const int s = data.input_size;
  auto all = torch::empty({static_cast<int64_t>(files.size()), static_cast<int64_t>(s) * s});
  Progress progress("data", "decoding " + dir, files.size(), "images");
  auto decoded = decode_all(files, data, threads, all.data_ptr<float>(), &progress);
  ImageSet set = assemble(files, listing.labels, decoded, all, s);
  return finish_set(std::move(set), std::move(listing), dir, &progress);
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

void to_device(ImageSet* set, const torch::Device& device) {
  if (set->images.defined()) set->images = set->images.to(device);
  if (set->labels.defined()) set->labels = set->labels.to(device);
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
