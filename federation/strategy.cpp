#include <cmath>
#include <string>

#include "federation/federation.h"

namespace fedrad::fed {
namespace {

// Names the first non-finite value, so a diverged site is found from the log alone.
Status check_finite(const SiteResult& r) {
  for (const TensorRecord& t : r.fit.weights) {
    for (size_t i = 0; i < t.data.size(); ++i) {
      if (!std::isfinite(t.data[i]))
        return invalid_argument("site " + r.site_id + " sent a non-finite value in tensor '" + t.name +
                                "' at index " + std::to_string(i));
    }
  }
  return ok_status();
}

class FedAvg : public Strategy {
 public:
  std::string name() const override { return "fedavg"; }

  StatusOr<Weights> aggregate(uint32_t round, const Weights& global,
                              const std::vector<SiteResult>& results) override {
    const std::string where = "fedavg round " + std::to_string(round);
    std::vector<const Weights*> models;
    std::vector<double> weights;
    for (const SiteResult& r : results) {
      if (!r.ok || r.fit.num_examples == 0) continue;
      // One poisoned update would spread to every site through the average, so refuse the round.
      FEDRAD_RETURN_IF_ERROR(check_finite(r).with_context(where));
      Status st = check_compatible(global, r.fit.weights);
      if (!st.ok()) return st.with_context(where + ": site " + r.site_id);
      models.push_back(&r.fit.weights);
      weights.push_back(static_cast<double>(r.fit.num_examples));
    }
    if (models.empty()) return invalid_argument(where + ": no successful site update");
    auto avg = weighted_average(models, weights);
    if (!avg.ok()) return avg.status().with_context(where);
    return avg;
  }
};

}  // namespace

std::unique_ptr<Strategy> make_fedavg() { return std::make_unique<FedAvg>(); }

StatusOr<std::unique_ptr<Strategy>> make_strategy(const std::string& name) {
  if (name == "fedavg") return make_fedavg();
  return invalid_argument("unknown strategy '" + name + "' (known: fedavg)");
}

}  // namespace fedrad::fed
