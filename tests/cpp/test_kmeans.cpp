// CTest executable for onerec::kmeans_step_cpu and onerec::grouped_kmeans_cpu (torch-free core):
// brute force in double is the oracle. Exits non-zero on the first failed check.
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <limits>
#include <random>
#include <vector>

#include "core/kmeans.h"
#include "check.h"
#include "core/rq_assign.h"


struct StepOut {
  std::vector<int64_t> assign;
  std::vector<float> sums;
  std::vector<int64_t> counts;
  double inertia = 0.0;
};

static StepOut run(const std::vector<float>& x, const std::vector<float>& c, int64_t n, int64_t d,
                   int64_t k, int threads) {
  StepOut o;
  o.assign.assign(n, -1);
  o.sums.assign(k * d, -1.f);
  o.counts.assign(k, -1);
  onerec::kmeans_step_cpu(x.data(), c.data(), n, d, k, o.assign.data(), o.sums.data(),
                          o.counts.data(), &o.inertia, threads);
  return o;
}

static void test_random(int64_t n, int64_t d, int64_t k, int threads, unsigned seed,
                        bool far_centroid) {
  std::mt19937 gen(seed);
  std::normal_distribution<float> dist;
  std::vector<float> x(n * d), c(k * d);
  for (auto& v : x) v = dist(gen);
  for (auto& v : c) v = dist(gen);
  if (far_centroid)  // the last centroid is far from every row: an empty cluster
    for (int64_t t = 0; t < d; ++t) c[(k - 1) * d + t] = 1000.f;
  StepOut o = run(x, c, n, d, k, threads);

  std::vector<double> want_sums(k * d, 0.0);
  std::vector<int64_t> want_counts(k, 0);
  double want_inertia = 0.0;
  for (int64_t i = 0; i < n; ++i) {
    std::vector<double> dd(k);
    const Nearest nn = brute_nearest(x.data() + i * d, c.data(), k, d, dd.data());
    const int64_t arg = nn.arg;
    const double best = nn.best, second = nn.second;
    const int64_t got = o.assign[i];
    CHECK(got >= 0 && got < k, "assignment out of range row %lld: %lld", (long long)i, (long long)got);
    if (got < 0 || got >= k) continue;
    if (got != arg)
      CHECK(second - best < 1e-3, "row %lld: got %lld want %lld (gap %g)", (long long)i,
            (long long)got, (long long)arg, second - best);
    // Sums, counts and inertia must follow the assignment the kernel made.
    want_counts[got] += 1;
    for (int64_t t = 0; t < d; ++t) want_sums[got * d + t] += x[i * d + t];
    want_inertia += dd[got];
  }
  for (int64_t j = 0; j < k; ++j) {
    CHECK(o.counts[j] == want_counts[j], "count %lld: %lld vs %lld", (long long)j,
          (long long)o.counts[j], (long long)want_counts[j]);
    for (int64_t t = 0; t < d; ++t)
      CHECK(std::fabs(o.sums[j * d + t] - want_sums[j * d + t]) < 1e-4 * (1 + std::fabs(want_sums[j * d + t])),
            "sum %lld,%lld: %g vs %g", (long long)j, (long long)t, o.sums[j * d + t],
            want_sums[j * d + t]);
  }
  CHECK(std::fabs(o.inertia - want_inertia) <= 1e-6 * (1 + want_inertia), "inertia %g vs %g",
        o.inertia, want_inertia);
  if (far_centroid) CHECK(o.counts[k - 1] == 0, "far centroid got %lld rows", (long long)o.counts[k - 1]);

  // Deterministic for a given thread count: a second run is bitwise identical.
  StepOut again = run(x, c, n, d, k, threads);
  CHECK(again.assign == o.assign && again.counts == o.counts, "assignments not deterministic");
  CHECK(std::memcmp(again.sums.data(), o.sums.data(), sizeof(float) * k * d) == 0,
        "sums not deterministic");
  CHECK(again.inertia == o.inertia, "inertia not deterministic");
}

static void test_empty_input() {
  std::vector<float> c(3 * 4, 1.f), sums(3 * 4, -1.f);
  std::vector<int64_t> counts(3, -1);
  double inertia = -1.0;
  onerec::kmeans_step_cpu(nullptr, c.data(), 0, 4, 3, nullptr, sums.data(), counts.data(),
                          &inertia, 2);
  for (float s : sums) CHECK(s == 0.f, "n == 0: sums not zeroed");
  for (int64_t v : counts) CHECK(v == 0, "n == 0: counts not zeroed");
  CHECK(inertia == 0.0, "n == 0: inertia %g", inertia);
}

static void test_ties_pick_lowest_index() {
  const int64_t d = 3, k = 4;
  std::vector<float> x = {1, 2, 3, -1, 0, 5};
  std::vector<float> c(k * d, 0.25f);
  StepOut o = run(x, c, 2, d, k, 1);
  CHECK(o.assign[0] == 0 && o.assign[1] == 0, "ties broke to %lld/%lld", (long long)o.assign[0],
        (long long)o.assign[1]);
  CHECK(o.counts[0] == 2 && o.counts[1] == 0, "tie counts");
}

// grouped_kmeans_cpu, one step: each row at the double-precision nearest of its own group's
// centroids (up to fp32 rounding), each centroid the mean of its rows; then a converged run is
// the same for 1 and 3 threads, bit for bit.
static void test_grouped(unsigned seed) {
  std::mt19937 gen(seed);
  std::normal_distribution<float> dist;
  const int64_t d = 11;
  const std::vector<int64_t> rows = {0, 9, 1, 40, 3}, ks = {1, 3, 1, 5, 4};
  std::vector<int64_t> xo = {0}, co = {0};
  for (size_t g = 0; g < rows.size(); ++g) {
    xo.push_back(xo.back() + rows[g]);
    co.push_back(co.back() + ks[g]);
  }
  const int64_t n = xo.back(), k = co.back(), groups = static_cast<int64_t>(rows.size());
  std::vector<float> x(n * d), c(k * d);
  for (auto& v : x) v = dist(gen);
  for (auto& v : c) v = dist(gen);
  std::vector<float> cent = c;
  std::vector<int64_t> assign(n, -1);
  onerec::grouped_kmeans_cpu(x.data(), d, xo.data(), co.data(), groups, 1, cent.data(),
                             assign.data(), 2);
  std::vector<double> sums(k * d, 0.0);
  std::vector<int64_t> counts(k, 0);
  for (int64_t g = 0; g < groups; ++g) {
    for (int64_t i = xo[g]; i < xo[g + 1]; ++i) {
      const Nearest nn = brute_nearest(x.data() + i * d, c.data() + co[g] * d, ks[g], d);
      const int64_t got = assign[i] - co[g];
      CHECK(got >= 0 && got < ks[g], "row %lld left its group: %lld", (long long)i,
            (long long)assign[i]);
      if (got < 0 || got >= ks[g]) continue;
      if (got != nn.arg)
        CHECK(nn.second - nn.best < 1e-4, "row %lld: got %lld want %lld", (long long)i,
              (long long)got, (long long)nn.arg);
      counts[assign[i]] += 1;
      for (int64_t t = 0; t < d; ++t) sums[assign[i] * d + t] += x[i * d + t];
    }
  }
  for (int64_t j = 0; j < k; ++j)
    for (int64_t t = 0; t < d; ++t) {
      const float want = counts[j] ? static_cast<float>(sums[j * d + t] / counts[j]) : c[j * d + t];
      CHECK(cent[j * d + t] == want, "centroid %lld,%lld: %g vs %g", (long long)j, (long long)t,
            cent[j * d + t], want);
    }
  std::vector<float> c1 = c, c3 = c;
  std::vector<int64_t> a1(n), a3(n);
  onerec::grouped_kmeans_cpu(x.data(), d, xo.data(), co.data(), groups, 50, c1.data(), a1.data(), 1);
  onerec::grouped_kmeans_cpu(x.data(), d, xo.data(), co.data(), groups, 50, c3.data(), a3.data(), 3);
  CHECK(a1 == a3 && std::memcmp(c1.data(), c3.data(), sizeof(float) * k * d) == 0,
        "grouped_kmeans_cpu depends on the thread count");
}

int main() {
  // Every CPU path of the nearest-code search this machine supports.
  for (const onerec::CpuIsa isa :
       {onerec::CpuIsa::kSse, onerec::CpuIsa::kAvx2, onerec::CpuIsa::kAvx512}) {
    if (!onerec::set_cpu_isa(isa)) continue;
    test_empty_input();
    test_ties_pick_lowest_index();
    test_random(1, 3, 1, 1, 1, false);
    test_random(7, 64, 5, 2, 2, true);
    test_random(97, 100, 33, 2, 3, true);
    test_random(1025, 17, 300, 4, 4, false);  // K > rows per worker, several workers
    test_random(300, 9, 7, 8, 5, true);
    test_grouped(6);
  }
  if (g_failures) {
    std::fprintf(stderr, "%d check(s) failed\n", g_failures);
    return 1;
  }
  std::printf("all kmeans core tests passed\n");
  return 0;
}
