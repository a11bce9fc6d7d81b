#include "rq_assign.h"

#include <algorithm>
#include <limits>
#include <vector>

#include "parallel.h"

namespace onerec {

namespace {
// Rows handled together so each code row loaded from memory is reused across kRowBlock rows.
constexpr int64_t kRowBlock = 8;

inline float sq_dist(const float* a, const float* b, int64_t d) {
  float acc = 0.f;
  for (int64_t i = 0; i < d; ++i) {
    float t = a[i] - b[i];
    acc += t * t;
  }
  return acc;
}
}  // namespace

void rq_assign_cpu(const float* x, const float* codebooks, int64_t n, int64_t d, int64_t levels,
                   int64_t k, int64_t* codes, float* residual, int num_threads) {
  if (n <= 0) return;
  parallel_for(n, kRowBlock * 4, num_threads, [&](int64_t begin, int64_t end) {
    std::vector<float> r(static_cast<size_t>(kRowBlock * d));
    float best_val[kRowBlock];
    int64_t best_idx[kRowBlock];
    for (int64_t row0 = begin; row0 < end; row0 += kRowBlock) {
      const int64_t rows = std::min(kRowBlock, end - row0);
      std::copy(x + row0 * d, x + (row0 + rows) * d, r.begin());
      for (int64_t l = 0; l < levels; ++l) {
        const float* cb = codebooks + l * k * d;
        for (int64_t i = 0; i < rows; ++i) {
          best_val[i] = std::numeric_limits<float>::infinity();
          best_idx[i] = 0;
        }
        for (int64_t j = 0; j < k; ++j) {
          const float* c = cb + j * d;
          for (int64_t i = 0; i < rows; ++i) {
            float v = sq_dist(r.data() + i * d, c, d);
            if (v < best_val[i]) {  // strict: the first (lowest) index wins ties; NaN never wins
              best_val[i] = v;
              best_idx[i] = j;
            }
          }
        }
        for (int64_t i = 0; i < rows; ++i) {
          codes[(row0 + i) * levels + l] = best_idx[i];
          const float* c = cb + best_idx[i] * d;
          float* ri = r.data() + i * d;
          for (int64_t t = 0; t < d; ++t) ri[t] -= c[t];
        }
      }
      if (residual != nullptr) std::copy(r.begin(), r.begin() + rows * d, residual + row0 * d);
    }
  });
}

}  // namespace onerec
