#include "imaging/synthetic_volume.h"

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <random>

namespace fedrad::imaging {
namespace fs = std::filesystem;
namespace {

constexpr double kPi = 3.14159265358979323846;

// Tissue classes of the generator (not label values).
enum Tissue { kBackground = 0, kWhite, kGrey, kCsf, kOedema, kEnhancing, kNecrosis, kTissues };

// Mean intensity per tissue and channel (t1, t1c, t2, flair), white matter's t1 = 1.
constexpr double kIntensity[kTissues][4] = {
    {0, 0, 0, 0},           {1.0, 1.0, 0.55, 0.7},  {0.72, 0.74, 0.8, 0.85}, {0.25, 0.25, 1.3, 0.2},
    {0.78, 0.8, 1.35, 1.45}, {0.7, 1.75, 1.05, 1.1}, {0.35, 0.4, 1.5, 0.55},
};

}  // namespace

std::vector<SyntheticSegSiteSpec> default_seg_sites() {
  SyntheticSegSiteSpec a;
  a.name = "site-1";
  SyntheticSegSiteSpec b = a;
  b.name = "site-2";
  b.spacing = 2.4;
  b.scale = 400;
  b.noise = 0.08;
  b.bias = 0.2;
  SyntheticSegSiteSpec c = a;
  c.name = "site-3";
  c.spacing = 1.7;
  c.scale = 1800;
  c.noise = 0.03;
  c.bias = 0.05;
  return {a, b, c};
}

const std::vector<std::string>& synthetic_seg_channels() {
  static const std::vector<std::string> names = {"t1", "t1c", "t2", "flair"};
  return names;
}

SyntheticSegCase synthetic_brain_case(int n, double spacing, double scale, double noise, double bias, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::uniform_real_distribution<double> U(0.0, 1.0);
  std::normal_distribution<double> N(0.0, 1.0);
  auto u = [&](double lo, double hi) { return lo + (hi - lo) * U(rng); };
  const double half = n * spacing / 2;  // mm from the centre to the edge
  // Brain: ellipsoid radii (mm) and a slight offset.
  const double bx = half * u(0.72, 0.82), by = half * u(0.8, 0.9), bz = half * u(0.66, 0.76);
  const double cx = u(-2, 2), cy = u(-2, 2), cz = u(-2, 2);
  // Tumour: centre inside the brain, whole-tumour radius, axes, lumps, core fraction.
  const double tr = u(7, 20);
  double tx, ty, tz;
  do {
    tx = u(-0.6, 0.6) * bx;
    ty = u(-0.6, 0.6) * by;
    tz = u(-0.6, 0.6) * bz;
  } while ((tx * tx) / (bx * bx) + (ty * ty) / (by * by) + (tz * tz) / (bz * bz) > 0.36);
  const double ax = u(0.75, 1.25), ay = u(0.75, 1.25), az = u(0.75, 1.25);
  const double lump_a = u(0.05, 0.2), lump_b = u(0.0, 0.12);
  const int lump_k = 2 + static_cast<int>(U(rng) * 3), lump_l = 1 + static_cast<int>(U(rng) * 3);
  const double phase1 = u(0, 2 * kPi), phase2 = u(0, 2 * kPi);
  const double core = u(0.4, 0.65);               // tumour core radius / whole-tumour radius
  const double necrosis = tr < 10 ? 0.0 : u(0.45, 0.7);  // necrosis radius / core radius
  const double contrast = u(0.7, 1.3);            // per-case tumour contrast
  // Bias field: a smooth product of cosines.
  const double fx = u(0.5, 1.5), fy = u(0.5, 1.5), fz = u(0.5, 1.5), pb = u(0, 2 * kPi);

  SyntheticSegCase out;
  Volume geometry;
  geometry.size = {n, n, n};
  geometry.spacing = {spacing, spacing, spacing};
  geometry.origin = {-half + spacing / 2, -half + spacing / 2, -half + spacing / 2};
  geometry.voxels.assign(geometry.count(), 0.0f);
  for (int c = 0; c < 4; ++c) out.channels.push_back(geometry);
  out.mask = geometry;
  std::vector<uint8_t> tissue(geometry.count(), kBackground);
  for (int z = 0; z < n; ++z)
    for (int y = 0; y < n; ++y)
      for (int x = 0; x < n; ++x) {
        const double px = geometry.origin[0] + x * spacing, py = geometry.origin[1] + y * spacing,
                     pz = geometry.origin[2] + z * spacing;
        const double ex = (px - cx) / bx, ey = (py - cy) / by, ez = (pz - cz) / bz;
        const double r_brain = std::sqrt(ex * ex + ey * ey + ez * ez);
        if (r_brain > 1.0) continue;
        Tissue t = r_brain > 0.82 ? kGrey : kWhite;
        // Ventricles: two small ellipsoids beside the midline.
        for (double side : {-1.0, 1.0}) {
          const double vx = (px - cx - side * 0.12 * bx) / (0.07 * bx), vy = (py - cy) / (0.28 * by),
                       vz = (pz - cz - 0.05 * bz) / (0.12 * bz);
          if (vx * vx + vy * vy + vz * vz <= 1.0) t = kCsf;
        }
        // Tumour: distance in the scaled frame, modulated by lumps over the direction.
        const double dx = (px - cx - tx) / ax, dy = (py - cy - ty) / ay, dz = (pz - cz - tz) / az;
        const double d = std::sqrt(dx * dx + dy * dy + dz * dz);
        if (d < tr * 1.5) {
          const double theta = std::atan2(dy, dx), phi = d > 0 ? std::acos(std::clamp(dz / d, -1.0, 1.0)) : 0.0;
          const double lump = 1.0 + lump_a * std::sin(lump_k * theta + phase1) * std::sin(phi) +
                              lump_b * std::cos(lump_l * phi * 2 + phase2);
          const double rel = d / (tr * lump);
          if (rel <= 1.0 && r_brain <= 0.97) {
            if (rel <= core * necrosis) t = kNecrosis;
            else if (rel <= core) t = kEnhancing;
            else t = kOedema;
          }
        }
        tissue[geometry.index(x, y, z)] = static_cast<uint8_t>(t);
      }
  for (size_t i = 0; i < tissue.size(); ++i) {
    const int t = tissue[i];
    out.mask.voxels[i] = t == kOedema ? 2.0f : t == kEnhancing ? 4.0f : t == kNecrosis ? 1.0f : 0.0f;
  }
  // Intensities: tissue means (tumour deviations from white matter scaled by the case's contrast),
  // a 3x3x3 box blur for partial volume, bias field, noise inside the brain, site scale.
  for (int c = 0; c < 4; ++c) {
    std::vector<float> raw(geometry.count(), 0.0f);
    for (size_t i = 0; i < raw.size(); ++i) {
      const int t = tissue[i];
      double v = kIntensity[t][c];
      if (t >= kOedema) v = kIntensity[kWhite][c] + contrast * (v - kIntensity[kWhite][c]);
      raw[i] = static_cast<float>(v);
    }
    Volume& ch = out.channels[c];
    for (int z = 0; z < n; ++z)
      for (int y = 0; y < n; ++y)
        for (int x = 0; x < n; ++x) {
          const size_t i = geometry.index(x, y, z);
          if (tissue[i] == kBackground) continue;
          double s = 0;
          int k = 0;
          for (int dz = -1; dz <= 1; ++dz)
            for (int dy = -1; dy <= 1; ++dy)
              for (int dx = -1; dx <= 1; ++dx) {
                const int xx = x + dx, yy = y + dy, zz = z + dz;
                if (xx < 0 || yy < 0 || zz < 0 || xx >= n || yy >= n || zz >= n) continue;
                const size_t j = geometry.index(xx, yy, zz);
                if (tissue[j] == kBackground) continue;
                s += raw[j];
                ++k;
              }
          const double px = (x + 0.5) / n, py = (y + 0.5) / n, pz = (z + 0.5) / n;
          const double field = 1.0 + bias * std::cos(2 * kPi * fx * px + pb) * std::cos(kPi * fy * py) *
                                         std::cos(kPi * fz * pz + pb);
          const double v = (s / k) * field + noise * N(rng);
          // Skull-stripped: the brain stays non-zero, the background is exactly 0.
          ch.voxels[i] = static_cast<float>(std::max(1e-3, v) * scale);
        }
  }
  return out;
}

Status write_synthetic_seg_site(const std::string& root, const SyntheticSegSiteSpec& spec, uint64_t seed) {
  const int n = std::max(8, static_cast<int>(std::lround(spec.extent_mm / spec.spacing)));
  const auto& names = synthetic_seg_channels();
  uint64_t case_seed = seed * 1000003ull;
  int case_no = 0;
  for (const char* split : {"train", "val"}) {
    const fs::path dir = fs::path(root) / spec.name / split;
    std::error_code ec;
    fs::create_directories(dir, ec);
    if (ec) return io_error(dir.string() + ": cannot create folder: " + ec.message());
    std::ofstream csv(dir / "cases.csv");
    if (!csv) return io_error((dir / "cases.csv").string() + ": cannot write");
    csv << "case";
    for (const auto& c : names) csv << "," << c;
    csv << ",mask\n";
    const int count = std::string(split) == "train" ? spec.num_train : spec.num_val;
    for (int i = 0; i < count; ++i, ++case_no) {
      char id[64];
      std::snprintf(id, sizeof(id), "%s-%03d", spec.name.c_str(), case_no);
      auto c = synthetic_brain_case(n, spec.spacing, spec.scale, spec.noise, spec.bias, case_seed + case_no);
      fs::create_directories(dir / id, ec);
      csv << id;
      for (size_t k = 0; k < names.size(); ++k) {
        const std::string rel = std::string(id) + "/" + names[k] + ".nii.gz";
        FEDRAD_RETURN_IF_ERROR(write_nifti((dir / rel).string(), c.channels[k], VoxelType::kFloat32));
        csv << "," << rel;
      }
      const std::string mask_rel = std::string(id) + "/seg.nii.gz";
      FEDRAD_RETURN_IF_ERROR(write_nifti((dir / mask_rel).string(), c.mask, VoxelType::kUInt8));
      csv << "," << mask_rel << "\n";
    }
    if (!csv) return io_error((dir / "cases.csv").string() + ": write failed");
  }
  return ok_status();
}

}  // namespace fedrad::imaging
