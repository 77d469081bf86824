#include "imaging/seg_data.h"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <map>
#include <set>
#include <sstream>
#include <thread>

namespace fedrad::imaging {
namespace fs = std::filesystem;
namespace {

std::string trim(const std::string& s) {
  const size_t a = s.find_first_not_of(" \t\r\n"), b = s.find_last_not_of(" \t\r\n");
  return a == std::string::npos ? "" : s.substr(a, b - a + 1);
}

std::vector<std::string> split(const std::string& line) {
  std::vector<std::string> out;
  std::stringstream in(line);
  std::string cell;
  while (std::getline(in, cell, ',')) out.push_back(trim(cell));
  if (!line.empty() && line.back() == ',') out.push_back("");
  return out;
}

bool is_nifti(const std::string& p) {
  auto ends = [&](const char* suffix) {
    const size_t n = std::char_traits<char>::length(suffix);
    return p.size() >= n && p.compare(p.size() - n, n, suffix) == 0;
  };
  return ends(".nii") || ends(".nii.gz");
}

}  // namespace

StatusOr<std::vector<SegCaseRow>> read_cases_csv(const std::string& csv_path, const std::vector<std::string>& channels,
                                                 bool need_mask) {
  std::ifstream in(csv_path);
  if (!in) return not_found(csv_path + ": cannot open (a segmentation split needs a cases.csv)");
  const fs::path base = fs::path(csv_path).parent_path();
  std::string line;
  int line_no = 0;
  std::vector<std::string> header;
  while (std::getline(in, line)) {
    ++line_no;
    if (!trim(line).empty()) {
      header = split(line);
      break;
    }
  }
  if (header.empty()) return corrupt(csv_path + ": empty file (expected a header: case,<channels...>,mask)");
  std::map<std::string, size_t> col;
  for (size_t i = 0; i < header.size(); ++i) {
    if (col.count(header[i])) return corrupt(csv_path + ": line " + std::to_string(line_no) + ": column '" + header[i] + "' appears twice");
    col[header[i]] = i;
  }
  auto need = [&](const std::string& name, const char* why) -> Status {
    if (col.count(name)) return ok_status();
    std::string have;
    for (const auto& h : header) have += (have.empty() ? "" : ", ") + h;
    return corrupt(csv_path + ": no column '" + name + "' (" + why + "); the header has: " + have);
  };
  FEDRAD_RETURN_IF_ERROR(need("case", "the case id"));
  for (const auto& ch : channels) FEDRAD_RETURN_IF_ERROR(need(ch, "an input channel named in segmentation.channels"));
  if (need_mask) FEDRAD_RETURN_IF_ERROR(need("mask", "the label mask"));
  const bool has_mask = col.count("mask") > 0;

  std::vector<SegCaseRow> rows;
  std::set<std::string> ids;
  while (std::getline(in, line)) {
    ++line_no;
    if (trim(line).empty() || trim(line)[0] == '#') continue;
    const auto cells = split(line);
    const std::string where = csv_path + ": line " + std::to_string(line_no);
    if (cells.size() != header.size())
      return corrupt(where + ": " + std::to_string(cells.size()) + " cells, the header has " +
                     std::to_string(header.size()));
    SegCaseRow row;
    row.line = line_no;
    row.id = cells[col["case"]];
    if (row.id.empty()) return corrupt(where + ": column 'case' is empty");
    if (!ids.insert(row.id).second) return corrupt(where + ": case '" + row.id + "' is listed twice");
    auto resolve = [&](const std::string& column, std::string* out) -> Status {
      const std::string cell = cells[col[column]];
      if (cell.empty()) return corrupt(where + ": column '" + column + "' is empty");
      fs::path p(cell);
      if (p.is_relative()) p = base / p;
      std::error_code ec;
      if (!fs::exists(p, ec)) return not_found(where + ": column '" + column + "': " + p.string() + " does not exist");
      if (fs::is_regular_file(p, ec) && !is_nifti(p.string()))
        return unsupported(where + ": column '" + column + "': " + p.string() +
                           " is neither NIfTI (.nii, .nii.gz) nor a folder of DICOM files");
      *out = p.string();
      return ok_status();
    };
    for (const auto& ch : channels) {
      row.channels.emplace_back();
      FEDRAD_RETURN_IF_ERROR(resolve(ch, &row.channels.back()));
    }
    if (has_mask) {
      FEDRAD_RETURN_IF_ERROR(resolve("mask", &row.mask));
      if (!is_nifti(row.mask)) return unsupported(where + ": column 'mask': " + row.mask + " must be a NIfTI file");
    }
    rows.push_back(std::move(row));
  }
  if (rows.empty()) return corrupt(csv_path + ": lists no case");
  return rows;
}

StatusOr<Volume> read_channel(const std::string& path) {
  std::error_code ec;
  if (fs::is_directory(path, ec)) {
    FEDRAD_ASSIGN_OR_RETURN(auto series, load_series(path));
    if (series.size() != 1)
      return invalid_argument(path + ": holds " + std::to_string(series.size()) +
                              " DICOM series; a channel folder must hold exactly one");
    if (!series[0].has_volume) {
      std::string why = series[0].problems.empty() ? "no volume" : series[0].problems[0].detail;
      return corrupt(path + ": the DICOM series does not form a volume: " + why);
    }
    return std::move(series[0].volume);
  }
  return read_nifti(path);
}

void zscore_foreground(float* v, size_t n, const std::vector<uint8_t>& fg) {
  size_t count = 0;
  for (uint8_t f : fg) count += f;
  const bool all = fg.size() != n || count * 100 < n;
  double sum = 0, sq = 0, m = 0;
  for (size_t i = 0; i < n; ++i)
    if (all || fg[i]) {
      sum += v[i];
      sq += static_cast<double>(v[i]) * v[i];
      m += 1;
    }
  if (m == 0) return;
  const double mean = sum / m;
  const double sd = std::sqrt(std::max(0.0, sq / m - mean * mean));
  const double inv = sd > 1e-8 ? 1.0 / sd : 1.0;
  for (size_t i = 0; i < n; ++i) v[i] = (all || fg[i]) ? static_cast<float>((v[i] - mean) * inv) : 0.0f;
}

StatusOr<SegCase> make_seg_case(const std::string& id, std::vector<Volume> channels, const Volume* mask_in,
                                const SegLoadOptions& options, const std::string& where) {
  const std::string w = where.empty() ? "case '" + id + "'" : where;
  if (channels.empty()) return invalid_argument(w + ": no channel");
  SegCase c;
  c.id = id;
  c.channels = static_cast<int>(channels.size());
  c.reference = channels[0];
  c.reference.voxels.clear();
  for (size_t k = 1; k < channels.size(); ++k)
    if (channels[k].size != channels[0].size)
      return invalid_argument(w + ": channel " + std::to_string(k + 1) + " is " + std::to_string(channels[k].size[0]) +
                              "x" + std::to_string(channels[k].size[1]) + "x" + std::to_string(channels[k].size[2]) +
                              ", channel 1 is " + std::to_string(channels[0].size[0]) + "x" +
                              std::to_string(channels[0].size[1]) + "x" + std::to_string(channels[0].size[2]));
  Volume mask;
  if (mask_in) {
    mask = *mask_in;
    if (mask.size != channels[0].size)
      return invalid_argument(w + ": the mask's size differs from the images' (" + std::to_string(mask.size[0]) + "x" +
                              std::to_string(mask.size[1]) + "x" + std::to_string(mask.size[2]) + " vs " +
                              std::to_string(channels[0].size[0]) + "x" + std::to_string(channels[0].size[1]) + "x" +
                              std::to_string(channels[0].size[2]) + ")");
    // Label values -> class indices, refusing values the study does not know.
    std::array<int, 256> cls;
    cls.fill(-1);
    cls[0] = 0;
    for (size_t k = 0; k < options.labels.size(); ++k)
      if (options.labels[k] >= 0 && options.labels[k] < 256) cls[options.labels[k]] = static_cast<int>(k) + 1;
    for (float& f : mask.voxels) {
      const long v = std::lround(f);
      if (v < 0 || v > 255 || cls[v] < 0 || std::fabs(f - static_cast<float>(v)) > 1e-3f) {
        std::string known = "0";
        for (int l : options.labels) known += ", " + std::to_string(l);
        return invalid_argument(w + ": the mask holds the value " + std::to_string(f) +
                                ", not one of the study's labels (segmentation.labels; known: " + known + ")");
      }
      f = static_cast<float>(cls[v]);
    }
  }
  if (options.spacing.size() == 3) {
    const std::array<double, 3> sp{options.spacing[0], options.spacing[1], options.spacing[2]};
    for (auto& ch : channels) {
      auto r = resample(ch, sp, Interpolation::kLinear);
      if (!r.ok()) return r.status().with_context(w);
      ch = std::move(r).value();
    }
    if (mask_in) {
      auto r = resample(mask, sp, Interpolation::kNearest);
      if (!r.ok()) return r.status().with_context(w);
      mask = std::move(r).value();
    }
  }
  const auto gsize = channels[0].size;
  c.grid_size = gsize;
  c.spacing = channels[0].spacing;
  const size_t n = channels[0].count();
  std::vector<uint8_t> fg(n, 0);
  for (const auto& ch : channels)
    for (size_t i = 0; i < n; ++i) fg[i] |= ch.voxels[i] != 0.0f;
  // Bounding box of the foreground (the whole grid when there is none or cropping is off).
  std::array<int, 3> lo{0, 0, 0}, hi{gsize[0] - 1, gsize[1] - 1, gsize[2] - 1};
  if (options.crop) {
    std::array<int, 3> blo{gsize[0], gsize[1], gsize[2]}, bhi{-1, -1, -1};
    for (int z = 0; z < gsize[2]; ++z)
      for (int y = 0; y < gsize[1]; ++y)
        for (int x = 0; x < gsize[0]; ++x)
          if (fg[(static_cast<size_t>(z) * gsize[1] + y) * gsize[0] + x]) {
            const int p[3] = {x, y, z};
            for (int k = 0; k < 3; ++k) {
              blo[k] = std::min(blo[k], p[k]);
              bhi[k] = std::max(bhi[k], p[k]);
            }
          }
    if (bhi[0] >= 0)
      for (int k = 0; k < 3; ++k) {
        lo[k] = std::max(0, blo[k] - options.margin);
        hi[k] = std::min(gsize[k] - 1, bhi[k] + options.margin);
      }
  }
  c.crop_lo = lo;
  for (int k = 0; k < 3; ++k) c.size[k] = hi[k] - lo[k] + 1;
  const size_t m = c.voxels();
  auto crop = [&](const std::vector<float>& src, float* dst) {
    size_t o = 0;
    for (int z = lo[2]; z <= hi[2]; ++z)
      for (int y = lo[1]; y <= hi[1]; ++y) {
        const size_t row = (static_cast<size_t>(z) * gsize[1] + y) * gsize[0];
        for (int x = lo[0]; x <= hi[0]; ++x) dst[o++] = src[row + x];
      }
  };
  std::vector<float> fgf(fg.begin(), fg.end()), fgc(m);
  crop(fgf, fgc.data());
  std::vector<uint8_t> fg_crop(m);
  for (size_t i = 0; i < m; ++i) fg_crop[i] = fgc[i] != 0.0f;
  c.image.resize(m * channels.size());
  for (size_t k = 0; k < channels.size(); ++k) {
    float* dst = c.image.data() + k * m;
    crop(channels[k].voxels, dst);
    zscore_foreground(dst, m, fg_crop);
  }
  if (mask_in) {
    std::vector<float> mc(m);
    crop(mask.voxels, mc.data());
    c.classes.resize(m);
    for (size_t i = 0; i < m; ++i) c.classes[i] = static_cast<uint8_t>(std::lround(mc[i]));
  }
  return c;
}

StatusOr<SegCase> load_seg_case(const SegCaseRow& row, const SegLoadOptions& options) {
  std::vector<Volume> channels;
  for (const auto& p : row.channels) {
    auto v = read_channel(p);
    if (!v.ok()) return v.status().with_context("case '" + row.id + "'");
    channels.push_back(std::move(v).value());
  }
  Volume mask;
  if (!row.mask.empty()) {
    auto v = read_nifti(row.mask);
    if (!v.ok()) return v.status().with_context("case '" + row.id + "'");
    mask = std::move(v).value();
  }
  return make_seg_case(row.id, std::move(channels), row.mask.empty() ? nullptr : &mask, options,
                       "case '" + row.id + "' (line " + std::to_string(row.line) + ")");
}

StatusOr<std::vector<SegCase>> load_seg_cases(const std::string& csv_path, const std::vector<std::string>& channels,
                                              const SegLoadOptions& options, int threads) {
  FEDRAD_ASSIGN_OR_RETURN(auto rows, read_cases_csv(csv_path, channels, /*need_mask=*/true));
  const int n = threads > 0 ? threads : static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  std::vector<StatusOr<SegCase>> out(rows.size(), StatusOr<SegCase>(internal_error("not loaded")));
  std::atomic<size_t> next{0};
  auto work = [&] {
    for (size_t i; (i = next++) < rows.size();) out[i] = load_seg_case(rows[i], options);
  };
  std::vector<std::thread> pool;
  for (int t = 1; t < std::min<int>(n, static_cast<int>(rows.size())); ++t) pool.emplace_back(work);
  work();
  for (auto& t : pool) t.join();
  std::vector<SegCase> cases;
  for (auto& c : out) {
    if (!c.ok()) return c.status().with_context(csv_path);
    cases.push_back(std::move(c).value());
  }
  return cases;
}

Volume classes_to_reference(const SegCase& c, const std::vector<uint8_t>& classes, const std::vector<int>& labels) {
  Volume out = c.reference;
  out.voxels.assign(out.count(), 0.0f);
  // Same origin and direction: original voxel i sits at i * ref_spacing / grid_spacing in the grid.
  for (int z = 0; z < out.size[2]; ++z) {
    const int gz = static_cast<int>(std::lround(z * out.spacing[2] / c.spacing[2])) - c.crop_lo[2];
    if (gz < 0 || gz >= c.size[2]) continue;
    for (int y = 0; y < out.size[1]; ++y) {
      const int gy = static_cast<int>(std::lround(y * out.spacing[1] / c.spacing[1])) - c.crop_lo[1];
      if (gy < 0 || gy >= c.size[1]) continue;
      for (int x = 0; x < out.size[0]; ++x) {
        const int gx = static_cast<int>(std::lround(x * out.spacing[0] / c.spacing[0])) - c.crop_lo[0];
        if (gx < 0 || gx >= c.size[0]) continue;
        const uint8_t k = classes[(static_cast<size_t>(gz) * c.size[1] + gy) * c.size[0] + gx];
        out.voxels[out.index(x, y, z)] = k == 0 || k > labels.size() ? 0.0f : static_cast<float>(labels[k - 1]);
      }
    }
  }
  return out;
}

}  // namespace fedrad::imaging
