#include "kmeans.h"

#include <algorithm>
#include <limits>
#include <vector>

#include "parallel.h"
#include "rq_assign.h"

namespace onerec {

namespace {

// Rows per CodebookSearch::nearest call: one register-tiled block, small enough that the block's rows
// are still in L1/L2 when they are added to the partial sums.
constexpr int64_t kRowBlock = 96;
// Budget for the per-worker (k, d) double partial sums.
constexpr int64_t kPartialBudgetBytes = int64_t{256} << 20;

}  // namespace

void kmeans_step_cpu(const float* x, const float* centroids, int64_t n, int64_t d, int64_t k,
                     int64_t* assignments, float* sums, int64_t* counts, double* inertia,
                     int num_threads) {
  std::fill(sums, sums + k * d, 0.f);
  std::fill(counts, counts + k, int64_t{0});
  *inertia = 0.0;
  if (n <= 0) return;
  if (num_threads <= 0) num_threads = default_num_threads();

  const CodebookSearch cb(centroids, k, d);

  // Workers: at most one per row block, one per thread, and within the partial-sum budget.
  const int64_t per_worker_bytes = k * d * static_cast<int64_t>(sizeof(double));
  int64_t workers = std::min<int64_t>(num_threads, (n + kRowBlock - 1) / kRowBlock);
  workers = std::min<int64_t>(workers, std::max<int64_t>(1, kPartialBudgetBytes / per_worker_bytes));
  workers = std::max<int64_t>(workers, 1);
  const int64_t step = (n + workers - 1) / workers;

  std::vector<std::vector<double>> part_sums(static_cast<size_t>(workers));
  std::vector<std::vector<int64_t>> part_counts(static_cast<size_t>(workers));
  std::vector<double> part_inertia(static_cast<size_t>(workers), 0.0);

  // Exactly `workers` tasks of one index each: worker w owns rows [w*step, (w+1)*step).
  parallel_for(workers, 1, static_cast<int>(workers), [&](int64_t wb, int64_t we) {
    for (int64_t w = wb; w < we; ++w) {
      std::vector<double>& ps = part_sums[w];
      std::vector<int64_t>& pc = part_counts[w];
      ps.assign(static_cast<size_t>(k * d), 0.0);
      pc.assign(static_cast<size_t>(k), 0);
      double pin = 0.0;
      const int64_t begin = w * step, end = std::min(n, begin + step);
      int64_t idx[kRowBlock];
      for (int64_t row0 = begin; row0 < end; row0 += kRowBlock) {
        const int64_t rows = std::min(kRowBlock, end - row0);
        const float* xb = x + row0 * d;
        cb.nearest(xb, rows, idx, nullptr);
        for (int64_t i = 0; i < rows; ++i) {
          const int64_t j = idx[i];
          assignments[row0 + i] = j;
          pc[j] += 1;
          const float* xi = xb + i * d;
          const float* c = centroids + j * d;
          double* s = ps.data() + j * d;
          double dist = 0.0;
          for (int64_t t = 0; t < d; ++t) {
            s[t] += xi[t];
            const double diff = static_cast<double>(xi[t]) - c[t];
            dist += diff * diff;
          }
          pin += dist;
        }
      }
      part_inertia[w] = pin;
    }
  });

  // Reduce in worker order (deterministic), parallel over centroids.
  parallel_for(k, 16, num_threads, [&](int64_t jb, int64_t je) {
    std::vector<double> acc(static_cast<size_t>(d));
    for (int64_t j = jb; j < je; ++j) {
      int64_t cnt = 0;
      std::fill(acc.begin(), acc.end(), 0.0);
      for (int64_t w = 0; w < workers; ++w) {
        cnt += part_counts[w][j];
        const double* ps = part_sums[w].data() + j * d;
        for (int64_t t = 0; t < d; ++t) acc[t] += ps[t];
      }
      counts[j] = cnt;
      for (int64_t t = 0; t < d; ++t) sums[j * d + t] = static_cast<float>(acc[t]);
    }
  });
  double total = 0.0;
  for (int64_t w = 0; w < workers; ++w) total += part_inertia[w];
  *inertia = total;
}

}  // namespace onerec

namespace onerec {

namespace {

typedef float v8sf __attribute__((vector_size(32)));
typedef float v4sf __attribute__((vector_size(16)));

// Squared distances of one row to kJ consecutive centroids (rows of dp floats), each summed in
// the lane order of kmeans.h (V is one (v8sf) or half (v4sf) of the 8 lanes; no FMA: the
// targets below do not enable it, so every instruction set rounds alike): the kJ independent sums hide the add latency that a single
// sum is bound by, and the row is loaded once for all of them.
template <typename V, int kJ>
__attribute__((always_inline)) inline void sq_dist_block(const float* a, const float* c,
                                                         int64_t dp, float* out) {
  constexpr int kVecs = kDistLanes * sizeof(float) / sizeof(V);
  constexpr int kWidth = sizeof(V) / sizeof(float);
  V acc[kJ][kVecs];
  for (int j = 0; j < kJ; ++j)
    for (int v = 0; v < kVecs; ++v) acc[j][v] = V{};
  for (int64_t t = 0; t < dp; t += kDistLanes) {
    for (int v = 0; v < kVecs; ++v) {
      V va;
      __builtin_memcpy(&va, a + t + v * kWidth, sizeof(V));
      for (int j = 0; j < kJ; ++j) {
        V vb;
        __builtin_memcpy(&vb, c + j * dp + t + v * kWidth, sizeof(V));
        const V diff = va - vb;
        const V sq = diff * diff;
        acc[j][v] = acc[j][v] + sq;
      }
    }
  }
  for (int j = 0; j < kJ; ++j) {
    float s[kDistLanes];
    __builtin_memcpy(s, acc[j], sizeof(s));
    out[j] = ((s[0] + s[4]) + (s[2] + s[6])) + ((s[1] + s[5]) + (s[3] + s[7]));
  }
}

constexpr int64_t kCentroidBlock = 4;  // the cases of the switch below

// One group's Lloyd steps (see grouped_kmeans_cpu). xp: (n, dp) rows, cp: (k, dp) centroids,
// both zero-padded; assign: (n) local indices; sums, counts: scratch of k * d and k.
template <typename V>
__attribute__((always_inline)) inline void lloyd_group_body(const float* xp, int64_t n, int64_t d,
                                                            int64_t dp, float* cp, int64_t k,
                                                            int64_t iters, int64_t* assign,
                                                            double* sums, int64_t* counts) {
  for (int64_t it = 0; it < iters; ++it) {
    bool changed = it == 0;
    for (int64_t i = 0; i < n; ++i) {
      const float* xi = xp + i * dp;
      float best = std::numeric_limits<float>::infinity();
      int64_t arg = 0;
      float dist[kCentroidBlock];
      for (int64_t j0 = 0; j0 < k; j0 += kCentroidBlock) {
        const int64_t nj = std::min<int64_t>(kCentroidBlock, k - j0);
        const float* cj = cp + j0 * dp;
        switch (nj) {  // k is often 2 or 3: the tail is one block too
          case 4: sq_dist_block<V, 4>(xi, cj, dp, dist); break;
          case 3: sq_dist_block<V, 3>(xi, cj, dp, dist); break;
          case 2: sq_dist_block<V, 2>(xi, cj, dp, dist); break;
          default: sq_dist_block<V, 1>(xi, cj, dp, dist); break;
        }
        for (int64_t j = 0; j < nj; ++j) {
          if (dist[j] < best) {  // strict: ties keep the lower j; NaN never wins
            best = dist[j];
            arg = j0 + j;
          }
        }
      }
      changed |= assign[i] != arg;
      assign[i] = arg;
    }
    if (!changed) return;  // a fixed point: the update below would change nothing
    std::fill(sums, sums + k * d, 0.0);
    std::fill(counts, counts + k, int64_t{0});
    for (int64_t i = 0; i < n; ++i) {
      const float* xi = xp + i * dp;
      double* s = sums + assign[i] * d;
      counts[assign[i]] += 1;
      for (int64_t t = 0; t < d; ++t) s[t] += xi[t];
    }
    for (int64_t j = 0; j < k; ++j) {
      if (counts[j] == 0) continue;
      const double cnt = static_cast<double>(counts[j]);
      for (int64_t t = 0; t < d; ++t) cp[j * dp + t] = static_cast<float>(sums[j * d + t] / cnt);
    }
  }
}

using LloydGroupFn = void (*)(const float*, int64_t, int64_t, int64_t, float*, int64_t, int64_t,
                              int64_t*, double*, int64_t*);

void lloyd_group_sse(const float* xp, int64_t n, int64_t d, int64_t dp, float* cp, int64_t k,
                     int64_t iters, int64_t* assign, double* sums, int64_t* counts) {
  lloyd_group_body<v4sf>(xp, n, d, dp, cp, k, iters, assign, sums, counts);
}

#if defined(__x86_64__) || defined(__i386__)
__attribute__((target("avx2"))) void lloyd_group_avx2(const float* xp, int64_t n, int64_t d,
                                                      int64_t dp, float* cp, int64_t k,
                                                      int64_t iters, int64_t* assign,
                                                      double* sums, int64_t* counts) {
  lloyd_group_body<v8sf>(xp, n, d, dp, cp, k, iters, assign, sums, counts);
}
#endif

// The path of rq_assign.h's active_cpu_isa() (so ONEREC_CPU_ISA / cpu_isa() force it in tests);
// both round alike, so the choice changes the speed only.
LloydGroupFn lloyd_group_for_active_isa() {
#if defined(__x86_64__) || defined(__i386__)
  if (active_cpu_isa() != CpuIsa::kSse) return lloyd_group_avx2;
#endif
  return lloyd_group_sse;
}

}  // namespace

void grouped_kmeans_cpu(const float* x, int64_t d, const int64_t* x_offsets,
                        const int64_t* c_offsets, int64_t num_groups, int64_t iters,
                        float* centroids, int64_t* assignments, int num_threads) {
  if (num_groups <= 0 || iters <= 0) return;
  if (num_threads <= 0) num_threads = default_num_threads();
  const LloydGroupFn lloyd_group = lloyd_group_for_active_isa();
  const int64_t dp = (d + kDistLanes - 1) / kDistLanes * kDistLanes;
  // Groups are small and many (typically a few to a few hundred rows): chunks of whole groups,
  // each with its own scratch.
  parallel_for(num_groups, 1, num_threads, [&](int64_t gb, int64_t ge) {
    std::vector<float> xpad, cp;
    std::vector<double> sums;
    std::vector<int64_t> counts, local;
    for (int64_t g = gb; g < ge; ++g) {
      const int64_t r0 = x_offsets[g], n = x_offsets[g + 1] - r0;
      const int64_t c0 = c_offsets[g], k = c_offsets[g + 1] - c0;
      if (n <= 0 || k <= 0) continue;
      const float* xp = x + r0 * d;
      if (dp != d) {  // zero-pad the rows to whole lanes (padding adds exact zeros)
        xpad.assign(static_cast<size_t>(n * dp), 0.f);
        for (int64_t i = 0; i < n; ++i) std::copy(xp + i * d, xp + (i + 1) * d, &xpad[i * dp]);
        xp = xpad.data();
      }
      cp.assign(static_cast<size_t>(k * dp), 0.f);
      for (int64_t j = 0; j < k; ++j)
        std::copy(centroids + (c0 + j) * d, centroids + (c0 + j + 1) * d, &cp[j * dp]);
      sums.resize(static_cast<size_t>(k * d));
      counts.resize(static_cast<size_t>(k));
      local.assign(static_cast<size_t>(n), 0);
      lloyd_group(xp, n, d, dp, cp.data(), k, iters, local.data(), sums.data(), counts.data());
      for (int64_t i = 0; i < n; ++i) assignments[r0 + i] = c0 + local[i];
      for (int64_t j = 0; j < k; ++j)
        std::copy(&cp[j * dp], &cp[j * dp] + d, centroids + (c0 + j) * d);
    }
  });
}

}  // namespace onerec
