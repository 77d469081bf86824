#include "common/seg_metrics.h"

#include <algorithm>
#include <cmath>
#include <limits>

namespace fedrad {
namespace {

constexpr double kInf = std::numeric_limits<double>::infinity();

// 1D squared distance transform of f (n values, sample k at position k * step), in place, with
// scratch buffers. Lower envelope of parabolas.
void dt_1d(double* f, int n, double step, std::vector<double>& d, std::vector<int>& v, std::vector<double>& z) {
  d.resize(n);
  v.resize(n);
  z.resize(n + 1);
  int k = -1;
  for (int q = 0; q < n; ++q) {
    if (!std::isfinite(f[q])) continue;
    const double pq = q * step;
    if (k < 0) {
      k = 0;
      v[0] = q;
      z[0] = -kInf;
      z[1] = kInf;
      continue;
    }
    double s;
    while (true) {
      const double pv = v[k] * step;
      s = ((f[q] + pq * pq) - (f[v[k]] + pv * pv)) / (2 * (pq - pv));
      if (s <= z[k] && k > 0) {
        --k;
        continue;
      }
      break;
    }
    if (s <= z[k]) {  // k == 0 and the new parabola hides the first one everywhere
      v[0] = q;
      z[0] = -kInf;
      z[1] = kInf;
      continue;
    }
    ++k;
    v[k] = q;
    z[k] = s;
    z[k + 1] = kInf;
  }
  if (k < 0) return;  // no finite sample: stays +inf
  int j = 0;
  for (int q = 0; q < n; ++q) {
    const double pq = q * step;
    while (z[j + 1] < pq) ++j;
    const double diff = pq - v[j] * step;
    d[q] = diff * diff + f[v[j]];
  }
  std::copy(d.begin(), d.begin() + n, f);
}

std::vector<uint8_t> union_mask(const std::vector<uint8_t>& classes, const std::vector<int>& members) {
  std::array<bool, 256> in{};
  for (int c : members)
    if (c >= 0 && c < 256) in[c] = true;
  std::vector<uint8_t> m(classes.size());
  for (size_t i = 0; i < classes.size(); ++i) m[i] = in[classes[i]] ? 1 : 0;
  return m;
}

}  // namespace

bool has_brats_labels(const std::vector<int>& labels) {
  auto has = [&](int v) { return std::find(labels.begin(), labels.end(), v) != labels.end(); };
  return has(1) && has(2) && (has(4) || has(3));
}

std::vector<SegStructure> seg_structures(const std::vector<int>& labels, bool brats_regions) {
  std::vector<SegStructure> out;
  for (size_t k = 0; k < labels.size(); ++k)
    out.push_back({"label " + std::to_string(labels[k]), {static_cast<int>(k) + 1}});
  if (brats_regions && has_brats_labels(labels)) {
    auto cls = [&](int v) {
      return static_cast<int>(std::find(labels.begin(), labels.end(), v) - labels.begin()) + 1;
    };
    const int et_value = std::find(labels.begin(), labels.end(), 4) != labels.end() ? 4 : 3;
    out.push_back({"WT", {cls(1), cls(2), cls(et_value)}});
    out.push_back({"TC", {cls(1), cls(et_value)}});
    out.push_back({"ET", {cls(et_value)}});
  }
  return out;
}

double dice(const std::vector<uint8_t>& a, const std::vector<uint8_t>& b) {
  uint64_t na = 0, nb = 0, both = 0;
  const size_t n = std::min(a.size(), b.size());
  for (size_t i = 0; i < n; ++i) {
    na += a[i] != 0;
    nb += b[i] != 0;
    both += a[i] != 0 && b[i] != 0;
  }
  if (na + nb == 0) return 1.0;
  return 2.0 * static_cast<double>(both) / static_cast<double>(na + nb);
}

std::vector<double> squared_distance_transform(const std::vector<uint8_t>& feature, const std::array<int, 3>& size,
                                               const std::array<double, 3>& spacing) {
  const int nx = size[0], ny = size[1], nz = size[2];
  std::vector<double> f(feature.size());
  for (size_t i = 0; i < feature.size(); ++i) f[i] = feature[i] ? 0.0 : kInf;
  std::vector<double> line, d, z;
  std::vector<int> v;
  // Along x (contiguous), then y, then z, each over lines gathered into a buffer.
  for (int axis = 0; axis < 3; ++axis) {
    const int n = size[axis];
    const size_t stride = axis == 0 ? 1 : axis == 1 ? static_cast<size_t>(nx) : static_cast<size_t>(nx) * ny;
    line.resize(n);
    const int o1 = axis == 0 ? ny : nx, o2 = axis == 2 ? ny : nz;
    for (int b = 0; b < o2; ++b)
      for (int a = 0; a < o1; ++a) {
        size_t base;
        if (axis == 0) base = (static_cast<size_t>(b) * ny + a) * nx;
        else if (axis == 1) base = static_cast<size_t>(b) * nx * ny + a;
        else base = static_cast<size_t>(b) * nx + a;
        for (int q = 0; q < n; ++q) line[q] = f[base + q * stride];
        dt_1d(line.data(), n, spacing[axis], d, v, z);
        for (int q = 0; q < n; ++q) f[base + q * stride] = line[q];
      }
  }
  return f;
}

std::vector<uint8_t> surface(const std::vector<uint8_t>& m, const std::array<int, 3>& size) {
  const int nx = size[0], ny = size[1], nz = size[2];
  std::vector<uint8_t> s(m.size(), 0);
  auto at = [&](int x, int y, int z) -> bool {
    if (x < 0 || y < 0 || z < 0 || x >= nx || y >= ny || z >= nz) return false;
    return m[(static_cast<size_t>(z) * ny + y) * nx + x] != 0;
  };
  for (int z = 0; z < nz; ++z)
    for (int y = 0; y < ny; ++y)
      for (int x = 0; x < nx; ++x) {
        if (!at(x, y, z)) continue;
        const bool inner = at(x - 1, y, z) && at(x + 1, y, z) && at(x, y - 1, z) && at(x, y + 1, z) &&
                           at(x, y, z - 1) && at(x, y, z + 1);
        if (!inner) s[(static_cast<size_t>(z) * ny + y) * nx + x] = 1;
      }
  return s;
}

double percentile(std::vector<double> values, double p) {
  if (values.empty()) return std::numeric_limits<double>::quiet_NaN();
  std::sort(values.begin(), values.end());
  const double pos = p / 100.0 * static_cast<double>(values.size() - 1);
  const size_t lo = static_cast<size_t>(std::floor(pos));
  const size_t hi = std::min(values.size() - 1, lo + 1);
  return values[lo] + (pos - static_cast<double>(lo)) * (values[hi] - values[lo]);
}

double hd95(const std::vector<uint8_t>& a, const std::vector<uint8_t>& b, const std::array<int, 3>& size,
            const std::array<double, 3>& spacing) {
  const bool ea = std::none_of(a.begin(), a.end(), [](uint8_t v) { return v != 0; });
  const bool eb = std::none_of(b.begin(), b.end(), [](uint8_t v) { return v != 0; });
  if (ea && eb) return 0.0;
  if (ea || eb) return std::numeric_limits<double>::quiet_NaN();
  const auto sa = surface(a, size), sb = surface(b, size);
  auto directed = [&](const std::vector<uint8_t>& from, const std::vector<uint8_t>& to) {
    const auto d2 = squared_distance_transform(to, size, spacing);
    std::vector<double> d;
    for (size_t i = 0; i < from.size(); ++i)
      if (from[i]) d.push_back(std::sqrt(d2[i]));
    return percentile(std::move(d), 95.0);
  };
  return std::max(directed(sa, sb), directed(sb, sa));
}

SegCaseMetrics seg_case_metrics(const std::vector<uint8_t>& pred, const std::vector<uint8_t>& truth,
                                const std::array<int, 3>& size, const std::array<double, 3>& spacing,
                                const std::vector<SegStructure>& structures) {
  SegCaseMetrics m;
  for (const auto& s : structures) {
    const auto p = union_mask(pred, s.classes), t = union_mask(truth, s.classes);
    m.dice.push_back(dice(p, t));
    m.hd95.push_back(hd95(p, t, size, spacing));
  }
  return m;
}

void SegScoreSums::add(const SegCaseMetrics& m) {
  if (dice_sum.empty()) {
    dice_sum.assign(m.dice.size(), 0.0);
    hd95_sum.assign(m.dice.size(), 0.0);
    hd95_cases.assign(m.dice.size(), 0);
  }
  for (size_t i = 0; i < dice_sum.size() && i < m.dice.size(); ++i) {
    dice_sum[i] += m.dice[i];
    if (i < m.hd95.size() && std::isfinite(m.hd95[i])) {
      hd95_sum[i] += m.hd95[i];
      ++hd95_cases[i];
    }
  }
  ++cases;
}

bool SegScoreSums::merge(const SegScoreSums& o) {
  if (o.empty()) return true;
  if (empty()) {
    *this = o;
    return true;
  }
  if (o.dice_sum.size() != dice_sum.size() || o.hd95_sum.size() != hd95_sum.size() ||
      o.hd95_cases.size() != hd95_cases.size())
    return false;
  for (size_t i = 0; i < dice_sum.size(); ++i) {
    dice_sum[i] += o.dice_sum[i];
    hd95_sum[i] += o.hd95_sum[i];
    hd95_cases[i] += o.hd95_cases[i];
  }
  cases += o.cases;
  return true;
}

std::vector<double> SegScoreSums::mean_dice() const {
  std::vector<double> out;
  for (double s : dice_sum) out.push_back(cases > 0 ? s / static_cast<double>(cases) : 0.0);
  return out;
}

std::vector<double> SegScoreSums::mean_hd95() const {
  std::vector<double> out;
  for (size_t i = 0; i < hd95_sum.size(); ++i)
    out.push_back(hd95_cases[i] > 0 ? hd95_sum[i] / static_cast<double>(hd95_cases[i])
                                    : std::numeric_limits<double>::quiet_NaN());
  return out;
}

double SegScoreSums::mean_dice_all() const {
  const auto d = mean_dice();
  if (d.empty()) return 0.0;
  double s = 0;
  for (double v : d) s += v;
  return s / static_cast<double>(d.size());
}

}  // namespace fedrad
