#include "common/metrics.h"

#include <algorithm>
#include <cmath>
#include <numeric>

namespace fedrad {

double roc_auc(const std::vector<float>& scores, const std::vector<int>& labels) {
  const size_t n = scores.size();
  std::vector<size_t> order(n);
  std::iota(order.begin(), order.end(), 0);
  std::sort(order.begin(), order.end(), [&](size_t a, size_t b) { return scores[a] < scores[b]; });
  // Sum of ranks of positives, with tied scores sharing their average rank.
  double rank_sum_pos = 0;
  int64_t n_pos = 0;
  for (size_t i = 0; i < n;) {
    size_t j = i;
    while (j < n && scores[order[j]] == scores[order[i]]) ++j;
    const double avg_rank = (static_cast<double>(i + 1) + static_cast<double>(j)) / 2.0;
    for (size_t k = i; k < j; ++k)
      if (labels[order[k]] == 1) rank_sum_pos += avg_rank, ++n_pos;
    i = j;
  }
  const int64_t n_neg = static_cast<int64_t>(n) - n_pos;
  if (n_pos == 0 || n_neg == 0) return 0.5;
  const double u = rank_sum_pos - static_cast<double>(n_pos) * (n_pos + 1) / 2.0;
  return u / (static_cast<double>(n_pos) * static_cast<double>(n_neg));
}

BinaryMetrics binary_metrics(const std::vector<float>& scores, const std::vector<int>& labels,
                             double threshold) {
  BinaryMetrics m;
  m.n = static_cast<int64_t>(scores.size());
  m.threshold = threshold;
  int64_t tp = 0, tn = 0, fp = 0, fn = 0;
  for (size_t i = 0; i < scores.size(); ++i) {
    const bool pred = scores[i] >= threshold;
    if (labels[i] == 1) (pred ? tp : fn)++;
    else (pred ? fp : tn)++;
  }
  m.positives = tp + fn;
  m.accuracy = m.n ? static_cast<double>(tp + tn) / m.n : 0;
  m.sensitivity = (tp + fn) ? static_cast<double>(tp) / (tp + fn) : 0;
  m.specificity = (tn + fp) ? static_cast<double>(tn) / (tn + fp) : 0;
  m.auc = roc_auc(scores, labels);
  return m;
}

double youden_threshold(const std::vector<float>& scores, const std::vector<int>& labels) {
  // Candidate thresholds: each distinct score (predict positive at and above it).
  std::vector<size_t> order(scores.size());
  std::iota(order.begin(), order.end(), 0);
  std::sort(order.begin(), order.end(), [&](size_t a, size_t b) { return scores[a] > scores[b]; });
  int64_t pos = 0, neg = 0;
  for (int l : labels) (l == 1 ? pos : neg)++;
  if (pos == 0 || neg == 0) return 0.5;
  double best_j = -1, best_t = 0.5;
  int64_t tp = 0, fp = 0;
  for (size_t i = 0; i < order.size();) {
    size_t j = i;
    const float t = scores[order[i]];
    while (j < order.size() && scores[order[j]] == t) (labels[order[j]] == 1 ? tp : fp)++, ++j;
    const double youden = static_cast<double>(tp) / pos - static_cast<double>(fp) / neg;
    if (youden > best_j + 1e-12 ||
        (std::abs(youden - best_j) <= 1e-12 && std::abs(t - 0.5) < std::abs(best_t - 0.5))) {
      best_j = youden;
      best_t = t;
    }
    i = j;
  }
  return best_t;
}

ScoreHistogram ScoreHistogram::of(const std::vector<float>& scores, const std::vector<int>& labels,
                                  int bins) {
  ScoreHistogram h;
  h.neg.assign(bins, 0);
  h.pos.assign(bins, 0);
  for (size_t i = 0; i < scores.size(); ++i) {
    const float s = std::isfinite(scores[i]) ? std::clamp(scores[i], 0.0f, 1.0f) : 0.0f;
    const int b = std::min(bins - 1, static_cast<int>(s * bins));
    (labels[i] == 1 ? h.pos : h.neg)[b]++;
  }
  return h;
}

void ScoreHistogram::merge(const ScoreHistogram& other) {
  if (neg.empty()) {
    *this = other;
    return;
  }
  for (size_t b = 0; b < neg.size() && b < other.neg.size(); ++b) {
    neg[b] += other.neg[b];
    pos[b] += other.pos[b];
  }
}

double roc_auc(const ScoreHistogram& h) {
  double n_pos = 0, n_neg = 0;
  for (int b = 0; b < h.bins(); ++b) n_pos += h.pos[b], n_neg += h.neg[b];
  if (n_pos == 0 || n_neg == 0) return 0.5;
  // P(score_pos > score_neg) + 0.5 P(same bin).
  double below_neg = 0, u = 0;
  for (int b = 0; b < h.bins(); ++b) {
    u += h.pos[b] * (below_neg + 0.5 * h.neg[b]);
    below_neg += h.neg[b];
  }
  return u / (n_pos * n_neg);
}

BinaryMetrics binary_metrics(const ScoreHistogram& h, double threshold) {
  BinaryMetrics m;
  m.threshold = threshold;
  int64_t tp = 0, tn = 0, fp = 0, fn = 0;
  for (int b = 0; b < h.bins(); ++b) {
    const double lower_edge = static_cast<double>(b) / h.bins();
    const bool pred = lower_edge >= threshold - 1e-12;
    tp += pred ? h.pos[b] : 0;
    fn += pred ? 0 : h.pos[b];
    fp += pred ? h.neg[b] : 0;
    tn += pred ? 0 : h.neg[b];
  }
  m.n = tp + tn + fp + fn;
  m.positives = tp + fn;
  m.accuracy = m.n ? static_cast<double>(tp + tn) / m.n : 0;
  m.sensitivity = (tp + fn) ? static_cast<double>(tp) / (tp + fn) : 0;
  m.specificity = (tn + fp) ? static_cast<double>(tn) / (tn + fp) : 0;
  m.auc = roc_auc(h);
  return m;
}

double youden_threshold(const ScoreHistogram& h) {
  double n_pos = 0, n_neg = 0;
  for (int b = 0; b < h.bins(); ++b) n_pos += h.pos[b], n_neg += h.neg[b];
  if (n_pos == 0 || n_neg == 0) return 0.5;
  double tp = 0, fp = 0, best_j = -1, best_t = 0.5;
  for (int b = h.bins() - 1; b >= 0; --b) {
    tp += h.pos[b];
    fp += h.neg[b];
    const double t = static_cast<double>(b) / h.bins();
    const double youden = tp / n_pos - fp / n_neg;
    if (youden > best_j + 1e-12 ||
        (std::abs(youden - best_j) <= 1e-12 && std::abs(t - 0.5) < std::abs(best_t - 0.5))) {
      best_j = youden;
      best_t = t;
    }
  }
  return best_t;
}

}  // namespace fedrad
