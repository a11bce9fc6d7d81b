#include "kmeans.h"

#include <algorithm>
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
