// Runs a whole study in this process: the coordinator and one site runner per learner, each on
// its own thread, over real sockets. For the federation tests that compare what comes out.
#pragma once

#include <future>
#include <memory>
#include <vector>

#include "federation/federation.h"

namespace fedrad::fed::testing {

struct StudyOutcome {
  StatusOr<Weights> weights = internal_error("not run");  // the coordinator's result
  std::vector<Status> sites;                              // each site runner's, in order
};

// `learners[i]` is site `sites[i]`'s learner (any Learner subclass).
template <class LearnerPtr>
StudyOutcome run_study_in_process(const CoordinatorOptions& coordinator, const std::vector<SiteOptions>& sites,
                                  const std::vector<LearnerPtr>& learners) {
  auto coord = std::async(std::launch::async, [&] { return run_coordinator(coordinator); });
  std::vector<std::future<Status>> futures;
  for (size_t i = 0; i < sites.size(); ++i)
    futures.push_back(std::async(std::launch::async, [&, i] { return run_site(*learners[i], sites[i]); }));
  StudyOutcome out;
  out.weights = coord.get();
  for (auto& f : futures) out.sites.push_back(f.get());
  return out;
}

}  // namespace fedrad::fed::testing
