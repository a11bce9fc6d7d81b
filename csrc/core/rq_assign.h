// Greedy residual quantization (the RQ-KMeans assignment), plain C++ on float32.
#pragma once
#include <cstdint>

namespace onerec {

// Width of a codebook panel: codes handled side by side by the CPU micro-kernel.
constexpr int64_t kPanelCodes = 16;

inline int64_t panel_floats(int64_t k, int64_t d) {
  return (k + kPanelCodes - 1) / kPanelCodes * d * kPanelCodes;
}

// Codebook of one level, laid out for the CPU nearest-code search: packed into panels of
// kPanelCodes codes, each panel (d, kPanelCodes) contiguous, so the micro-kernel streams it
// with unit stride (a plain (d, k) transpose strides by 4*k bytes, and k a multiple of 1024 puts
// every row of a tile in the same L1 set). The last panel is zero-padded. Plus squared norms (k).
struct PreparedCodebook {
  const float* panels;  // (ceil(k / kPanelCodes), d, kPanelCodes)
  const float* norms;   // (k,)
  int64_t k;
  int64_t d;
};

// Fills panels (panel_floats(k, d) floats) and norms (k floats) from a (k, d) row-major codebook.
void prepare_codebook(const float* cb, int64_t k, int64_t d, float* panels, float* norms);

// For each of `rows` rows of r (row-major, row stride d): the code with the smallest
// ||c||^2 - 2 r.c (ties: lowest index; NaN scores never win; an all-NaN row gets 0).
// best_score (optional) receives that score. Single-threaded; callers split rows.
void nearest_codes(const float* r, int64_t rows, const PreparedCodebook& cb, int64_t* best_idx,
                   float* best_score);

// x: (n, d) row-major; codebooks: (levels, k, d) row-major.
// Writes codes (n, levels) and, when residual != nullptr, the final residual (n, d).
// Per level: c = argmin_j ||r - codebooks[l, j]||^2 (via the norm trick, as above), then
// r -= codebooks[l, c]. num_threads <= 0: all hardware threads.
void rq_assign_cpu(const float* x, const float* codebooks, int64_t n, int64_t d, int64_t levels,
                   int64_t k, int64_t* codes, float* residual, int num_threads);

}  // namespace onerec
