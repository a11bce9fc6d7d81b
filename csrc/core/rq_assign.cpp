#include "rq_assign.h"

#include <algorithm>
#include <vector>

#include "parallel.h"

namespace onerec {

namespace {

// Rows per parallel task and per residual block: a multiple of every micro-kernel's row tile
// (6 for the fp32 paths, 12 for AVX-512), small enough that the block's residuals stay in L2.
constexpr int64_t kRowBlock = 96;

}  // namespace

void rq_assign_cpu(const float* x, const float* codebooks, int64_t n, int64_t d, int64_t levels,
                   int64_t k, int64_t* codes, float* residual, int num_threads) {
  if (n <= 0) return;
  // Packed codebooks and norms, once per call, shared read-only by all threads.
  std::vector<CodebookSearch> searches;
  searches.reserve(static_cast<size_t>(levels));
  for (int64_t l = 0; l < levels; ++l) searches.emplace_back(codebooks + l * k * d, k, d);

  parallel_for(n, kRowBlock, num_threads, [&](int64_t begin, int64_t end) {
    std::vector<float> r(static_cast<size_t>(kRowBlock * d));
    int64_t idx[kRowBlock];
    for (int64_t row0 = begin; row0 < end; row0 += kRowBlock) {
      const int64_t rows = std::min(kRowBlock, end - row0);
      std::copy(x + row0 * d, x + (row0 + rows) * d, r.begin());
      for (int64_t l = 0; l < levels; ++l) {
        searches[l].nearest(r.data(), rows, idx, nullptr);
        const float* level_cb = codebooks + l * k * d;
        for (int64_t i = 0; i < rows; ++i) {
          codes[(row0 + i) * levels + l] = idx[i];
          const float* c = level_cb + idx[i] * d;
          float* ri = r.data() + i * d;
          for (int64_t t = 0; t < d; ++t) ri[t] -= c[t];
        }
      }
      if (residual != nullptr) std::copy(r.begin(), r.begin() + rows * d, residual + row0 * d);
    }
  });
}

}  // namespace onerec
