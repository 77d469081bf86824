// DICOM ingest benchmark: decode + preprocess (bilinear to 28x28, per-image min-max to [-1, 1],
// the training pipeline's CPU path) for every labelled file of the given site folders.
//   dicom_ingest_bench [--threads N] [--repeat R] [--files F] DIR...
// --files F: the first F files of the list, cycling through it when F is larger (ingest time
// against the number of files; the files are read again, from the page cache).
// Prints one JSON line: images, bytes, seconds (best of R), images_per_s, mb_per_s, checksum.
// Built by bench/dicom_ingest.sh (target dicom_ingest_bench, not part of `all`).
#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <string>
#include <thread>
#include <vector>

#include "cuda/preprocess.h"
#include "imaging/dicom.h"
#include "imaging/site_index.h"

using namespace fedrad;

int main(int argc, char** argv) {
  int threads = 1, repeat = 3;
  long limit = 0;
  std::vector<std::string> dirs;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--threads" && i + 1 < argc) threads = std::max(1, std::atoi(argv[++i]));
    else if (a == "--repeat" && i + 1 < argc) repeat = std::max(1, std::atoi(argv[++i]));
    else if (a == "--files" && i + 1 < argc) limit = std::max(1L, std::atol(argv[++i]));
    else dirs.push_back(a);
  }
  std::vector<std::string> files;
  uint64_t bytes = 0;
  for (const auto& d : dirs) {
    auto index = imaging::index_site(d);
    if (!index.ok()) {
      std::fprintf(stderr, "%s\n", index.status().to_string().c_str());
      return 1;
    }
    for (const auto& f : index->files) {
      files.push_back(f.path);
      bytes += std::filesystem::file_size(f.path);
    }
  }
  if (limit > 0 && !files.empty()) {
    std::vector<std::string> picked;
    bytes = 0;
    for (long i = 0; i < limit; ++i) {
      picked.push_back(files[static_cast<size_t>(i) % files.size()]);
      bytes += std::filesystem::file_size(picked.back());
    }
    files = std::move(picked);
  }
  constexpr int kOut = 28;
  std::vector<float> out(files.size() * kOut * kOut);
  std::atomic<int> failures{0};
  double best = 1e30;
  for (int r = 0; r < repeat; ++r) {
    std::atomic<size_t> next{0};
    failures = 0;
    const auto t0 = std::chrono::steady_clock::now();
    auto work = [&] {
      std::vector<float> resized(kOut * kOut);
      for (size_t i; (i = next.fetch_add(1)) < files.size();) {
        auto px = imaging::read_dicom(files[i]);  // rescale + MONOCHROME1 inversion, as training reads
        if (!px.ok()) {
          ++failures;
          continue;
        }
        cuda::ResizeParams rp;
        rp.in_h = px->rows;
        rp.in_w = px->columns;
        rp.out_h = rp.out_w = kOut;
        cuda::resize_bilinear_cpu(1, px->pixels.data(), resized.data(), rp);
        cuda::NormaliseParams np;
        np.pixels_per_image = kOut * kOut;
        cuda::normalise_cpu(1, resized.data(), out.data() + i * kOut * kOut, np);
      }
    };
    std::vector<std::thread> pool;
    for (int t = 1; t < threads; ++t) pool.emplace_back(work);
    work();
    for (auto& t : pool) t.join();
    best = std::min(best, std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
  }
  double checksum = 0;
  for (float v : out) checksum += v;
  std::printf(
      "{\"tool\": \"fedrad\", \"threads\": %d, \"images\": %zu, \"failures\": %d, \"bytes\": %llu, \"seconds\": %.4f, "
      "\"images_per_s\": %.1f, \"mb_per_s\": %.2f, \"checksum\": %.4f}\n",
      threads, files.size(), failures.load(), static_cast<unsigned long long>(bytes), best, files.size() / best,
      bytes / 1e6 / best, checksum);
  return failures.load() == 0 ? 0 : 1;
}
