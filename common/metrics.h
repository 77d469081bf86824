// Binary classification metrics (pneumonia vs normal). Plain functions over scores in [0, 1] and
// 0/1 labels, and over score histograms, which is what sites send to the coordinator: counts per
// score bin and class, numbers only, no per-image values.
#pragma once

#include <cstdint>
#include <vector>

namespace fedrad {

struct BinaryMetrics {
  int64_t n = 0;
  int64_t positives = 0;
  double auc = 0;          // area under the ROC curve; ties count one half
  double accuracy = 0;     // at `threshold`
  double sensitivity = 0;  // true positive rate at `threshold`
  double specificity = 0;  // true negative rate at `threshold`
  double threshold = 0.5;  // score >= threshold means positive
};

// Exact ROC AUC (Mann-Whitney U with ties averaged). 0.5 when one class is absent.
double roc_auc(const std::vector<float>& scores, const std::vector<int>& labels);

// The threshold that maximises Youden's J (sensitivity + specificity - 1); ties go to the
// threshold nearest 0.5. Used on validation data; the chosen value travels with the model.
double youden_threshold(const std::vector<float>& scores, const std::vector<int>& labels);

BinaryMetrics binary_metrics(const std::vector<float>& scores, const std::vector<int>& labels,
                             double threshold);

// Counts of scores per bin (uniform over [0, 1]) for negatives and positives.
struct ScoreHistogram {
  std::vector<uint64_t> neg;
  std::vector<uint64_t> pos;

  static constexpr int kDefaultBins = 1000;
  static ScoreHistogram of(const std::vector<float>& scores, const std::vector<int>& labels,
                           int bins = kDefaultBins);
  void merge(const ScoreHistogram& other);  // bins must match (checked by the caller)
  int bins() const { return static_cast<int>(neg.size()); }
};

// Metrics from a histogram: AUC treats scores in one bin as tied, so it is exact up to the bin
// width; thresholds are bin edges.
double roc_auc(const ScoreHistogram& h);
double youden_threshold(const ScoreHistogram& h);
BinaryMetrics binary_metrics(const ScoreHistogram& h, double threshold);

}  // namespace fedrad
