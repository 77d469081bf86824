// Cost of secure aggregation (federation/secagg.h): all four phases over in-process parties for
// a model of the pneumonia study's size, with and without dropouts. Prints a markdown table.
//   build/bench/secagg_bench [dim] [repeats]
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <vector>

#include "federation/secagg.h"

using namespace fedrad::fed::secagg;

int main(int argc, char** argv) {
  const uint32_t dim = argc > 1 ? static_cast<uint32_t>(std::atoi(argv[1])) : 80000;
  const int repeats = argc > 2 ? std::atoi(argv[2]) : 3;
  std::printf("| parties | dropped | values | masked input / party | protocol bytes up (all) | down (all) | "
              "overhead vs plain int32 up | client s / party | server s | sum exact |\n");
  std::printf("|---|---|---|---|---|---|---|---|---|---|\n");
  for (uint32_t n : {4u, 7u, 10u}) {
    for (uint32_t drops : {0u, n / 3}) {
      const auto fp = FixedPoint::for_parties(static_cast<int>(n), 1.0);
      std::mt19937_64 gen(n * 100 + drops);
      std::normal_distribution<float> normal(0, 0.01f);
      std::vector<std::vector<uint32_t>> inputs(n);
      for (auto& v : inputs) {
        std::vector<float> f(dim);
        for (auto& x : f) x = normal(gen);
        v = quantise(f, fp);
      }
      DriverOptions o;
      o.params.parties = n;
      o.params.dim = dim;
      for (uint32_t d = 0; d < drops; ++d) o.drop_before_input.push_back(d * 3 % n);
      double client = 0, server = 0;
      DriverStats st;
      bool exact = true;
      for (int r = 0; r < repeats; ++r) {
        o.params.round = static_cast<uint64_t>(r + 1);
        auto sum = run_secure_aggregation(inputs, o, &st);
        if (!sum.ok()) {
          std::fprintf(stderr, "failed: %s\n", sum.status().to_string().c_str());
          return 1;
        }
        std::vector<uint32_t> plain(dim, 0);
        for (uint32_t u : st.survivors)
          for (uint32_t i = 0; i < dim; ++i) plain[i] += inputs[u][i];
        exact = exact && plain == *sum;
        client += st.client_seconds;
        server += st.server_seconds;
      }
      const double plain_up = 4.0 * dim * (n - drops);
      std::printf("| %u | %u | %u | %.1f KB | %.1f KB | %.1f KB | %+.2f%% | %.3f | %.3f | %s |\n", n, drops, dim,
                  4.0 * dim / 1e3, st.bytes_up / 1e3, st.bytes_down / 1e3, 100.0 * (st.bytes_up - plain_up) / plain_up,
                  client / repeats / n, server / repeats, exact ? "yes" : "NO");
    }
  }
  return 0;
}
