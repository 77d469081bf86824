#include "imaging/synthetic.h"

#include <algorithm>
#include <cctype>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <random>

namespace fedrad::imaging {
namespace {

namespace fs = std::filesystem;

// std's distributions are implementation-defined; these are not, so a seed gives the same image
// on every platform and compiler (federated runs compare sites built on different machines).
class Random {
 public:
  explicit Random(uint64_t seed) : engine_(seed) {}
  double uniform() { return static_cast<double>(engine_() >> 11) * 0x1.0p-53; }  // [0, 1)
  double uniform(double lo, double hi) { return lo + (hi - lo) * uniform(); }
  int integer(int lo, int hi) { return lo + static_cast<int>(uniform() * (hi - lo + 1)); }  // [lo, hi]
  double normal() {  // Box-Muller; one value per call keeps the stream position simple
    const double u1 = 1.0 - uniform();  // (0, 1]: log stays finite
    const double u2 = uniform();
    return std::sqrt(-2.0 * std::log(u1)) * std::cos(2.0 * M_PI * u2);
  }

 private:
  std::mt19937_64 engine_;
};

// splitmix64: decorrelates per-image seeds derived from (site seed, split, index).
uint64_t mix(uint64_t x) {
  x += 0x9E3779B97F4A7C15ull;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}

// std::hash is implementation-defined; FNV-1a keeps site seeds equal across standard libraries.
uint64_t fnv1a(const std::string& s) {
  uint64_t h = 0xcbf29ce484222325ull;
  for (unsigned char c : s) h = (h ^ c) * 0x100000001b3ull;
  return h;
}

double smoothstep(double edge0, double edge1, double x) {
  const double t = std::clamp((x - edge0) / (edge1 - edge0), 0.0, 1.0);
  return t * t * (3.0 - 2.0 * t);
}

// 1 inside the ellipse, 0 outside, with a soft rim so edges are not aliased at 48-64 px.
double soft_ellipse(double x, double y, double cx, double cy, double rx, double ry, double rim = 0.12) {
  const double d = std::sqrt(((x - cx) / rx) * ((x - cx) / rx) + ((y - cy) / ry) * ((y - cy) / ry));
  return 1.0 - smoothstep(1.0 - rim, 1.0 + rim, d);
}

struct Blob {
  double cx, cy, sigma, amplitude;
};

struct Anatomy {
  double body_cx, body_cy, body_rx, body_ry;
  double lung_cx[2], lung_cy, lung_rx, lung_ry;
  double lung_level;   // how dark the lungs are
  double exposure;     // per-image intensity factor
  double rib_phase, rib_spacing;
  std::vector<Blob> blobs;
};

// A point inside one lung, away from the rim so blobs sit in the lung field.
Blob random_blob(Random& rng, const Anatomy& a, double sigma_lo, double sigma_hi, double amp_lo, double amp_hi) {
  const int side = rng.integer(0, 1);
  const double angle = rng.uniform(0.0, 2.0 * M_PI);
  const double radius = 0.7 * std::sqrt(rng.uniform());
  Blob b;
  b.cx = a.lung_cx[side] + radius * a.lung_rx * std::cos(angle);
  b.cy = a.lung_cy + radius * a.lung_ry * std::sin(angle);
  b.sigma = rng.uniform(sigma_lo, sigma_hi);
  b.amplitude = rng.uniform(amp_lo, amp_hi);
  return b;
}

Anatomy random_anatomy(Random& rng, bool pneumonia) {
  Anatomy a;
  a.body_cx = 0.5 + rng.uniform(-0.03, 0.03);
  a.body_cy = 0.55 + rng.uniform(-0.03, 0.03);
  a.body_rx = rng.uniform(0.38, 0.46);
  a.body_ry = rng.uniform(0.44, 0.50);
  const double spread = rng.uniform(0.16, 0.20);
  a.lung_cx[0] = a.body_cx - spread;
  a.lung_cx[1] = a.body_cx + spread;
  a.lung_cy = a.body_cy - rng.uniform(0.04, 0.09);
  a.lung_rx = rng.uniform(0.11, 0.15);
  a.lung_ry = rng.uniform(0.26, 0.32);
  a.lung_level = rng.uniform(0.22, 0.34);
  a.exposure = rng.uniform(0.85, 1.15);
  a.rib_phase = rng.uniform(0.0, 1.0);
  a.rib_spacing = rng.uniform(0.075, 0.095);
  // Normal lungs carry vessel shadows and the odd nodule-like spot, so "any bright spot" is not a
  // perfect pneumonia detector; consolidations are larger and brighter on average, sometimes subtle.
  const int vessels = rng.integer(0, 2);
  for (int i = 0; i < vessels; ++i) a.blobs.push_back(random_blob(rng, a, 0.015, 0.04, 0.04, 0.14));
  if (pneumonia) {
    const int consolidations = rng.integer(1, 3);
    for (int i = 0; i < consolidations; ++i) a.blobs.push_back(random_blob(rng, a, 0.035, 0.10, 0.08, 0.34));
  }
  return a;
}

// Displayed intensity in about [0, 1] at (x, y) in unit coordinates, before noise.
double intensity(const Anatomy& a, double x, double y) {
  const double body = soft_ellipse(x, y, a.body_cx, a.body_cy, a.body_rx, a.body_ry, 0.08);
  double lungs = 0.0;
  for (double cx : a.lung_cx) lungs = std::max(lungs, soft_ellipse(x, y, cx, a.lung_cy, a.lung_rx, a.lung_ry, 0.2));
  double v = 0.06 + body * 0.62;
  v -= lungs * (0.68 - a.lung_level) * body;
  // Mediastinum and spine: a bright vertical band, widest at the heart.
  const double dx = std::abs(x - a.body_cx);
  const double half_width = 0.05 + 0.05 * std::exp(-((y - 0.65) * (y - 0.65)) / 0.02);
  v += 0.16 * body * (1.0 - smoothstep(half_width * 0.7, half_width * 1.3, dx));
  // Ribs: faint arcs sagging toward the sides, visible over the lungs.
  const double arc_y = y - 0.35 * (x - a.body_cx) * (x - a.body_cx) + a.rib_phase * a.rib_spacing;
  const double phase = arc_y / a.rib_spacing - std::floor(arc_y / a.rib_spacing);
  v += 0.05 * lungs * std::exp(-((phase - 0.5) * (phase - 0.5)) / 0.01);
  for (const Blob& b : a.blobs) {
    const double d2 = (x - b.cx) * (x - b.cx) + (y - b.cy) * (y - b.cy);
    v += b.amplitude * lungs * std::exp(-d2 / (2.0 * b.sigma * b.sigma));
  }
  return v * a.exposure;
}

std::string upper(std::string s) {
  std::transform(s.begin(), s.end(), s.begin(), [](unsigned char c) { return std::toupper(c); });
  return s;
}

std::string numbered(const char* prefix, int n) {
  char buf[32];
  std::snprintf(buf, sizeof(buf), "%s%05d", prefix, n);
  return buf;
}

// Labels with exactly round(n * share) pneumonia cases, shuffled (Fisher-Yates on our own RNG).
std::vector<int> make_labels(int n, double share, Random& rng) {
  const int positives = static_cast<int>(std::lround(n * std::clamp(share, 0.0, 1.0)));
  std::vector<int> labels(static_cast<size_t>(n), 0);
  std::fill(labels.begin(), labels.begin() + positives, 1);
  for (int i = n - 1; i > 0; --i) std::swap(labels[static_cast<size_t>(i)], labels[static_cast<size_t>(rng.integer(0, i))]);
  return labels;
}

Status write_split(const fs::path& site_dir, const std::string& split, int count, int first_patient,
                   const SyntheticSiteSpec& spec, uint64_t seed) {
  const fs::path dir = site_dir / split;
  std::error_code ec;
  fs::create_directories(dir, ec);
  if (ec) return io_error(dir.string() + ": cannot create folder (" + ec.message() + ")");
  Random rng(mix(seed ^ mix(split == "train" ? 1 : 2)));
  const std::vector<int> labels = make_labels(count, spec.pneumonia_share, rng);

  std::ofstream csv(dir / "labels.csv", std::ios::binary | std::ios::trunc);
  if (!csv) return io_error((dir / "labels.csv").string() + ": cannot create");
  csv << "file,label\n";
  WriteSpec ws;
  ws.rows = ws.columns = spec.size;
  ws.bits_stored = spec.bits_stored;
  ws.monochrome1 = spec.monochrome1;
  ws.modality = spec.bits_stored > 8 ? "DX" : "CR";
  ws.pixel_spacing = 0.14 * 2048.0 / spec.size;  // a detector's field of view at this matrix size
  ws.encoding = spec.encoding;
  ws.referring_physician = "CANARY^REFERRER^" + spec.name;
  for (int i = 0; i < count; ++i) {
    const int n = first_patient + i;
    const std::string relative = numbered("P", n) + "/" + numbered("IM", n) + (spec.with_extension ? ".dcm" : "");
    fs::create_directories(dir / numbered("P", n), ec);
    if (ec) return io_error((dir / numbered("P", n)).string() + ": cannot create folder (" + ec.message() + ")");
    ws.patient_name = "CANARY^" + upper(spec.name) + "^" + std::to_string(n);
    ws.patient_id = "PHI-" + spec.name + "-" + std::to_string(n);
    const int label = labels[static_cast<size_t>(i)];
    const auto pixels = synthetic_chest_xray(spec.size, label == 1, spec.bits_stored, spec.brightness, spec.noise,
                                             mix(seed + static_cast<uint64_t>(n) * 0x100000001B3ull));
    FEDRAD_RETURN_IF_ERROR(write_dicom((dir / relative).string(), pixels, ws));
    csv << relative << "," << (label == 1 ? "PNEUMONIA" : "NORMAL") << "\n";
  }
  csv.flush();
  if (!csv) return io_error((dir / "labels.csv").string() + ": write failed");
  return ok_status();
}

}  // namespace

std::vector<uint16_t> synthetic_chest_xray(int size, bool pneumonia, int bits_stored, double brightness,
                                           double noise, uint64_t seed) {
  if (size <= 0 || bits_stored < 1 || bits_stored > 16) return {};
  Random rng(mix(seed));
  const Anatomy anatomy = random_anatomy(rng, pneumonia);
  const double full_scale = std::ldexp(1.0, bits_stored) - 1.0;
  std::vector<uint16_t> out(static_cast<size_t>(size) * static_cast<size_t>(size));
  for (int r = 0; r < size; ++r) {
    for (int c = 0; c < size; ++c) {
      const double x = (c + 0.5) / size;
      const double y = (r + 0.5) / size;
      const double v = (intensity(anatomy, x, y) * brightness + noise * rng.normal()) * full_scale;
      out[static_cast<size_t>(r) * size + c] = static_cast<uint16_t>(std::lround(std::clamp(v, 0.0, full_scale)));
    }
  }
  return out;
}

std::vector<SyntheticSiteSpec> default_demo_sites() {
  SyntheticSiteSpec a;
  a.name = "site-1";
  a.num_train = 240;
  a.num_val = 80;
  a.pneumonia_share = 0.55;
  a.size = 64;
  a.bits_stored = 8;
  a.encoding = Encoding::kExplicitLittle;

  SyntheticSiteSpec b = a;
  b.name = "site-2";
  b.pneumonia_share = 0.70;
  b.bits_stored = 12;
  b.encoding = Encoding::kJpegLossless;
  b.brightness = 0.8;

  SyntheticSiteSpec c = a;
  c.name = "site-3";
  c.pneumonia_share = 0.35;
  c.size = 48;
  c.monochrome1 = true;
  c.encoding = Encoding::kRle;
  c.with_extension = false;
  c.noise = 0.08;
  return {a, b, c};
}

Status write_synthetic_site(const std::string& root, const SyntheticSiteSpec& spec, uint64_t seed) {
  if (spec.name.empty() || spec.num_train < 0 || spec.num_val < 0 || spec.size <= 0) {
    return invalid_argument("synthetic site '" + spec.name + "': bad spec");
  }
  const fs::path site_dir = fs::path(root) / spec.name;
  const uint64_t site_seed = mix(seed ^ fnv1a(spec.name));
  FEDRAD_RETURN_IF_ERROR(write_split(site_dir, "train", spec.num_train, 0, spec, site_seed));
  // Validation patients continue the numbering: one patient is never in both splits.
  FEDRAD_RETURN_IF_ERROR(write_split(site_dir, "val", spec.num_val, spec.num_train, spec, site_seed));
  return ok_status();
}

}  // namespace fedrad::imaging
