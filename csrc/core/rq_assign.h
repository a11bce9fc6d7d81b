// Greedy residual quantization (the RQ-KMeans assignment), plain C++ on float32.
#pragma once
#include <cstdint>

namespace onerec {

// x: (n, d) row-major; codebooks: (levels, k, d) row-major.
// Writes codes (n, levels) and, when residual != nullptr, the final residual (n, d).
// Per level: c = argmin_j ||r - codebooks[l, j]||^2 (ties: lowest j; NaN distances never win),
// then r -= codebooks[l, c]. Distances are the direct sum of squared differences (no norm trick),
// so the CPU path is the most exact one we have.
void rq_assign_cpu(const float* x, const float* codebooks, int64_t n, int64_t d, int64_t levels,
                   int64_t k, int64_t* codes, float* residual, int num_threads);

}  // namespace onerec
