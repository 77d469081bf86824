// Segmentation metrics: Dice and the 95th-percentile Hausdorff distance (HD95, in mm) per label
// and per BraTS region, over class maps (one class index per voxel, 0 = background). Plain
// functions, no torch, so that the coordinator pools what sites send without a model.
//
// Definitions (as MONAI's DiceMetric / compute_hausdorff_distance(percentile=95)):
// - Dice = 2|A n B| / (|A| + |B|); 1 when both masks are empty, 0 when exactly one is.
// - Surface voxels: voxels of the mask with a 6-neighbour outside it (the volume's border counts
//   as outside). HD95 = max(P95 of the distances from A's surface to B's surface, P95 of the
//   reverse), distances in mm through the voxel spacing (exact Euclidean distance transform),
//   percentiles with linear interpolation (numpy's default). 0 when both masks are empty; not
//   defined (NaN, left out of means and counted apart) when exactly one is.
// - BraTS regions (labels 1 necrosis, 2 oedema, 4 (or 3 in BraTS 2023) enhancing):
//   whole tumour WT = {1, 2, ET}, tumour core TC = {1, ET}, enhancing tumour ET.
#pragma once

#include <array>
#include <cstdint>
#include <string>
#include <vector>

namespace fedrad {

// A structure scored on its own: the union of some class indices (1..K).
struct SegStructure {
  std::string name;          // "label 1", "WT", ...
  std::vector<int> classes;  // class indices (not label values)
};

// One structure per label ("label <value>"), then, when `brats_regions`, WT, TC and ET.
// label_values[k-1] is the mask value of class k. brats_regions needs labels 1, 2 and 3 or 4.
std::vector<SegStructure> seg_structures(const std::vector<int>& label_values, bool brats_regions);
// True when the labels hold 1, 2 and an enhancing label (4, or 3 without 4).
bool has_brats_labels(const std::vector<int>& label_values);

double dice(const std::vector<uint8_t>& a, const std::vector<uint8_t>& b);  // binary masks (0/1)

// Exact squared Euclidean distance (mm^2) from each voxel to the nearest voxel with
// feature[i] != 0 (Felzenszwalb & Huttenlocher 2012, separable, with anisotropic spacing);
// +inf everywhere when there is no feature voxel. size: x, y, z; x fastest.
std::vector<double> squared_distance_transform(const std::vector<uint8_t>& feature, const std::array<int, 3>& size,
                                               const std::array<double, 3>& spacing);

std::vector<uint8_t> surface(const std::vector<uint8_t>& mask, const std::array<int, 3>& size);

// HD95 in mm of two binary masks; NaN when exactly one is empty.
double hd95(const std::vector<uint8_t>& a, const std::vector<uint8_t>& b, const std::array<int, 3>& size,
            const std::array<double, 3>& spacing);

// Linear-interpolation percentile (p in [0, 100]) of `values` (reordered).
double percentile(std::vector<double> values, double p);

struct SegCaseMetrics {
  std::vector<double> dice;  // per structure
  std::vector<double> hd95;  // per structure; NaN when not defined
};

// Scores one case: `pred` and `truth` are class maps of the same size.
SegCaseMetrics seg_case_metrics(const std::vector<uint8_t>& pred, const std::vector<uint8_t>& truth,
                                const std::array<int, 3>& size, const std::array<double, 3>& spacing,
                                const std::vector<SegStructure>& structures);

// Sums over cases, per structure: what a site sends (numbers only, no case ids) and what the
// coordinator pools across sites. Means are over cases.
struct SegScoreSums {
  uint64_t cases = 0;
  std::vector<double> dice_sum;      // per structure
  std::vector<double> hd95_sum;      // over the cases where HD95 is defined
  std::vector<uint64_t> hd95_cases;  // how many those are

  bool empty() const { return dice_sum.empty(); }
  void add(const SegCaseMetrics& m);
  // Adds another site's sums; false (and nothing added) when the structure counts differ.
  bool merge(const SegScoreSums& other);
  std::vector<double> mean_dice() const;
  std::vector<double> mean_hd95() const;  // NaN where no case had it defined
  double mean_dice_all() const;            // mean over structures of mean_dice(); 0 when empty
};

}  // namespace fedrad
