// CTest executable for the torch-free C++ core: built by CMakeLists.txt, run by ctest (and by
// tests/test_native_build.py in CI). Exits non-zero on the first failed check.
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <limits>
#include <random>
#include <vector>

#include "core/rq_assign.h"
#include "check.h"


// Brute force in double, one row at a time: the oracle for the threaded float core.
static void rq_brute(const std::vector<float>& x, const std::vector<float>& cb, int64_t n,
                     int64_t d, int64_t levels, int64_t k, std::vector<int64_t>& codes,
                     std::vector<double>& gap) {
  codes.assign(n * levels, -1);
  gap.assign(n * levels, 0.0);
  for (int64_t i = 0; i < n; ++i) {
    std::vector<double> r(x.begin() + i * d, x.begin() + (i + 1) * d);
    for (int64_t l = 0; l < levels; ++l) {
      const Nearest nn = brute_nearest(r.data(), cb.data() + l * k * d, k, d);
      const int64_t arg = nn.arg;
      codes[i * levels + l] = arg;
      gap[i * levels + l] = nn.second - nn.best;
      for (int64_t t = 0; t < d; ++t) r[t] -= cb[(l * k + arg) * d + t];
    }
  }
}

static void test_rq_random(int64_t n, int64_t d, int64_t levels, int64_t k, int threads,
                           unsigned seed) {
  std::mt19937 gen(seed);
  std::normal_distribution<float> dist;
  std::vector<float> x(n * d), cb(levels * k * d);
  for (auto& v : x) v = dist(gen);
  for (auto& v : cb) v = dist(gen);
  std::vector<int64_t> codes(n * levels), want;
  std::vector<float> residual(n * d);
  std::vector<double> gap;
  onerec::rq_assign_cpu(x.data(), cb.data(), n, d, levels, k, codes.data(), residual.data(), threads);
  rq_brute(x, cb, n, d, levels, k, want, gap);
  for (int64_t i = 0; i < n; ++i) {
    bool diverged = false;
    for (int64_t l = 0; l < levels && !diverged; ++l) {
      int64_t got = codes[i * levels + l], exp = want[i * levels + l];
      CHECK(got >= 0 && got < k, "code out of range n=%lld l=%lld: %lld", (long long)i, (long long)l,
            (long long)got);
      if (got != exp) {
        // Only a genuine near-tie may flip the choice; later levels then legitimately differ.
        CHECK(gap[i * levels + l] < 1e-3, "row %lld level %lld: got %lld want %lld (gap %g)",
              (long long)i, (long long)l, (long long)got, (long long)exp, gap[i * levels + l]);
        diverged = true;
      }
    }
    if (!diverged) {
      for (int64_t t = 0; t < d; ++t) {
        double r = x[i * d + t];
        for (int64_t l = 0; l < levels; ++l) r -= cb[(l * k + want[i * levels + l]) * d + t];
        CHECK(std::fabs(r - residual[i * d + t]) < 1e-4, "residual row %lld", (long long)i);
      }
    }
  }
}

static void test_ties_pick_lowest_index() {
  // Three identical codes: the lowest index must win at every level.
  const int64_t d = 4, k = 3;
  std::vector<float> x = {1, 2, 3, 4};
  std::vector<float> cb(k * d, 0.5f);
  std::vector<int64_t> codes(1);
  onerec::rq_assign_cpu(x.data(), cb.data(), 1, d, 1, k, codes.data(), nullptr, 1);
  CHECK(codes[0] == 0, "tie broke to %lld, want 0", (long long)codes[0]);
}

int main() {
  // Every CPU path of the nearest-code search this machine supports.
  for (const onerec::CpuIsa isa :
       {onerec::CpuIsa::kSse, onerec::CpuIsa::kAvx2, onerec::CpuIsa::kAvx512}) {
    if (!onerec::set_cpu_isa(isa)) continue;
    test_ties_pick_lowest_index();
    test_rq_random(1, 3, 1, 1, 1, 1);
    test_rq_random(7, 64, 2, 5, 2, 2);
    test_rq_random(97, 100, 3, 33, 2, 3);
    test_rq_random(300, 17, 3, 300, 4, 4);
    onerec::rq_assign_cpu(nullptr, nullptr, 0, 8, 2, 4, nullptr, nullptr, 2);  // n == 0: no-op
  }
  if (g_failures) {
    std::fprintf(stderr, "%d check(s) failed\n", g_failures);
    return 1;
  }
  std::printf("all C++ core tests passed\n");
  return 0;
}
