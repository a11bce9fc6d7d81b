// CTest executable for onerec::CodebookSearch on every CPU path this machine supports (sse,
// avx2, avx512), against the brute-force double oracle of check.h. The AVX-512 path screens in
// bf16 and rescores in fp32, so its edge cases get their own checks: exact ties beyond its
// candidate list (the exhaustive fallback), near-duplicate codes, odd d (a padded bf16 pair),
// NaN and inf inputs, and magnitudes near the fp32 range ends.
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <limits>
#include <random>
#include <vector>

#include "check.h"
#include "core/rq_assign.h"

using onerec::CodebookSearch;
using onerec::CpuIsa;

static std::vector<int64_t> search(const std::vector<float>& r, const std::vector<float>& cb,
                                   int64_t rows, int64_t d, int64_t k,
                                   std::vector<float>* scores = nullptr) {
  CodebookSearch s(cb.data(), k, d);
  std::vector<int64_t> idx(rows, -1);
  std::vector<float> sc(rows);
  s.nearest(r.data(), rows, idx.data(), sc.data());
  if (scores != nullptr) *scores = sc;
  return idx;
}

// Each row's code must be the nearest in double, or within rounding of it (a genuine near-tie).
static void check_against_oracle(const std::vector<float>& r, const std::vector<float>& cb,
                                 int64_t rows, int64_t d, int64_t k, const char* what) {
  std::vector<float> scores;
  const std::vector<int64_t> got = search(r, cb, rows, d, k, &scores);
  std::vector<double> dist(k);
  for (int64_t i = 0; i < rows; ++i) {
    const Nearest nn = brute_nearest(r.data() + i * d, cb.data(), k, d, dist.data());
    double rn = 0;
    for (int64_t t = 0; t < d; ++t) rn += double(r[i * d + t]) * r[i * d + t];
    CHECK(got[i] >= 0 && got[i] < k, "%s %s: row %lld code %lld out of range",
          onerec::cpu_isa_name(onerec::active_cpu_isa()), what, (long long)i, (long long)got[i]);
    if (got[i] < 0 || got[i] >= k) continue;
    const double tol = 1e-5 * (rn + nn.best) + 1e-30;
    CHECK(dist[got[i]] - nn.best <= tol, "%s %s: row %lld got %lld (%.9g) want %lld (%.9g)",
          onerec::cpu_isa_name(onerec::active_cpu_isa()), what, (long long)i,
          (long long)got[i], dist[got[i]], (long long)nn.arg, nn.best);
    // The reported score is that code's ||c||^2 - 2 r.c.
    const double want_score = dist[got[i]] - rn;
    CHECK(std::fabs(scores[i] - want_score) <= 1e-4 * (rn + dist[got[i]]) + 1e-30,
          "%s %s: row %lld score %.9g want %.9g", onerec::cpu_isa_name(onerec::active_cpu_isa()),
          what, (long long)i, scores[i], want_score);
  }
}

static void test_random_shapes(unsigned seed) {
  std::mt19937 gen(seed);
  std::normal_distribution<float> nd;
  const int64_t shapes[][3] = {{1, 1, 1},  {13, 2, 15},  {97, 3, 16},  {5, 17, 17},
                               {200, 64, 300}, {25, 100, 33}, {13, 513, 40}};
  for (const auto& s : shapes) {
    const int64_t rows = s[0], d = s[1], k = s[2];
    std::vector<float> r(rows * d), cb(k * d);
    for (auto& v : r) v = nd(gen);
    for (auto& v : cb) v = nd(gen);
    check_against_oracle(r, cb, rows, d, k, "random");
  }
}

static void test_many_exact_ties() {
  // 40 copies of the nearest code after 3 far ones: more ties than the AVX-512 candidate list
  // holds, so that path falls back to the exhaustive fp32 search; the lowest copy must win.
  const int64_t d = 24, k = 45;
  std::vector<float> r(d, 0.25f), cb(k * d, 3.f);
  for (int64_t j = 3; j < 43; ++j)
    for (int64_t t = 0; t < d; ++t) cb[j * d + t] = 0.2f;
  const std::vector<int64_t> got = search(r, cb, 1, d, k);
  CHECK(got[0] == 3, "%s: tie broke to %lld, want 3",
        onerec::cpu_isa_name(onerec::active_cpu_isa()), (long long)got[0]);
}

static void test_near_duplicates(unsigned seed) {
  // Codes that differ below bf16 resolution: the screen cannot order them, the rescoring must.
  std::mt19937 gen(seed);
  std::normal_distribution<float> nd;
  const int64_t rows = 50, d = 64, k = 48;
  std::vector<float> base(d), r(rows * d), cb(k * d);
  for (auto& v : base) v = nd(gen);
  for (int64_t j = 0; j < k; ++j)
    for (int64_t t = 0; t < d; ++t) cb[j * d + t] = base[t] + 1e-3f * nd(gen);
  for (int64_t i = 0; i < rows; ++i)
    for (int64_t t = 0; t < d; ++t) r[i * d + t] = base[t] + 2e-3f * nd(gen);
  check_against_oracle(r, cb, rows, d, k, "near-duplicates");
}

static void test_scales() {
  // Tiny (near the denormal range, flushed by vdpbf16ps) and large magnitudes.
  std::mt19937 gen(7);
  std::normal_distribution<float> nd;
  for (const float scale : {1e-18f, 1e-3f, 1e15f}) {
    const int64_t rows = 30, d = 33, k = 70;
    std::vector<float> r(rows * d), cb(k * d);
    for (auto& v : r) v = scale * nd(gen);
    for (auto& v : cb) v = scale * nd(gen);
    check_against_oracle(r, cb, rows, d, k, "scaled");
  }
}

static void test_nan_and_inf() {
  const int64_t d = 5, k = 20;
  std::mt19937 gen(3);
  std::normal_distribution<float> nd;
  std::vector<float> cb(k * d);
  for (auto& v : cb) v = nd(gen);
  const float nan = std::numeric_limits<float>::quiet_NaN();
  const float inf = std::numeric_limits<float>::infinity();
  // A NaN code never wins; a NaN row gets 0.
  std::vector<float> cb_nan = cb;
  for (int64_t t = 0; t < d; ++t) cb_nan[0 * d + t] = nan;
  std::vector<float> r(d);
  for (auto& v : r) v = nd(gen);
  const std::vector<int64_t> with_nan_code = search(r, cb_nan, 1, d, k);
  CHECK(with_nan_code[0] != 0, "%s: a NaN code won", onerec::cpu_isa_name(onerec::active_cpu_isa()));
  std::vector<float> r_nan(d, nan);
  CHECK(search(r_nan, cb, 1, d, k)[0] == 0, "%s: NaN row did not get 0",
        onerec::cpu_isa_name(onerec::active_cpu_isa()));
  // An inf entry: scores become -inf/+inf/NaN; every path must agree with the fp32 rule.
  std::vector<float> r_inf(r);
  r_inf[0] = inf;
  int64_t want = 0;
  for (int64_t j = 0; j < k; ++j)
    if (cb[j * d] > 0) {  // the first code with c_0 > 0 scores -inf
      want = j;
      break;
    }
  CHECK(search(r_inf, cb, 1, d, k)[0] == want, "%s: inf row got the wrong code",
        onerec::cpu_isa_name(onerec::active_cpu_isa()));
}

int main() {
  for (const CpuIsa isa : {CpuIsa::kSse, CpuIsa::kAvx2, CpuIsa::kAvx512}) {
    if (!onerec::set_cpu_isa(isa)) {
      std::printf("skipping %s: not supported by this CPU\n", onerec::cpu_isa_name(isa));
      continue;
    }
    test_random_shapes(11);
    test_many_exact_ties();
    test_near_duplicates(5);
    test_scales();
    test_nan_and_inf();
    std::printf("%s: checked\n", onerec::cpu_isa_name(isa));
  }
  if (g_failures) {
    std::fprintf(stderr, "%d check(s) failed\n", g_failures);
    return 1;
  }
  std::printf("all nearest-code tests passed\n");
  return 0;
}
