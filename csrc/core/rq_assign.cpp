#include "rq_assign.h"

#include <algorithm>
#include <limits>
#include <vector>

#include "parallel.h"

namespace onerec {

namespace {

// Register tile of the nearest-code search: kTileRows rows x kTileCodes codes of fp32
// accumulators (4 x 16 = 64 floats: 8 AVX2 / 16 SSE registers).
constexpr int64_t kTileRows = 4;
constexpr int64_t kTileCodes = 16;
// Rows per parallel task and per residual block.
constexpr int64_t kRowBlock = 64;

// Dot products of `nr` (<= kTileRows) rows with codes [j0, j0 + nc) (nc <= kTileCodes).
// target_clones: an AVX2+FMA variant picked at load time where the CPU has it, SSE2 otherwise.
__attribute__((target_clones("avx2,fma", "default")))
void dot_tile(const float* const* rows, int64_t nr, const float* cb_t, int64_t k, int64_t d,
              int64_t j0, int64_t nc, float (*acc)[kTileCodes]) {
  for (int64_t i = 0; i < kTileRows; ++i)
    for (int64_t j = 0; j < kTileCodes; ++j) acc[i][j] = 0.f;
  if (nr == kTileRows && nc == kTileCodes) {
    for (int64_t t = 0; t < d; ++t) {
      const float* c = cb_t + t * k + j0;
      const float a0 = rows[0][t], a1 = rows[1][t], a2 = rows[2][t], a3 = rows[3][t];
      for (int64_t j = 0; j < kTileCodes; ++j) {
        acc[0][j] += a0 * c[j];
        acc[1][j] += a1 * c[j];
        acc[2][j] += a2 * c[j];
        acc[3][j] += a3 * c[j];
      }
    }
    return;
  }
  for (int64_t t = 0; t < d; ++t) {  // ragged edge tile
    const float* c = cb_t + t * k + j0;
    for (int64_t i = 0; i < nr; ++i) {
      const float a = rows[i][t];
      for (int64_t j = 0; j < nc; ++j) acc[i][j] += a * c[j];
    }
  }
}

}  // namespace

void prepare_codebook(const float* cb, int64_t k, int64_t d, float* cb_t, float* norms) {
  for (int64_t j = 0; j < k; ++j) {
    float s = 0.f;
    for (int64_t t = 0; t < d; ++t) {
      const float v = cb[j * d + t];
      cb_t[t * k + j] = v;
      s += v * v;
    }
    norms[j] = s;
  }
}

void nearest_codes(const float* r, int64_t rows, const PreparedCodebook& cb, int64_t* best_idx,
                   float* best_score) {
  float acc[kTileRows][kTileCodes];
  for (int64_t i0 = 0; i0 < rows; i0 += kTileRows) {
    const int64_t nr = std::min(kTileRows, rows - i0);
    const float* row_ptr[kTileRows];
    float best_val[kTileRows];
    int64_t best_j[kTileRows];
    for (int64_t i = 0; i < kTileRows; ++i) {
      row_ptr[i] = r + (i0 + std::min(i, nr - 1)) * cb.d;
      best_val[i] = std::numeric_limits<float>::infinity();
      best_j[i] = 0;
    }
    for (int64_t j0 = 0; j0 < cb.k; j0 += kTileCodes) {
      const int64_t nc = std::min(kTileCodes, cb.k - j0);
      dot_tile(row_ptr, nr, cb.cb_t, cb.k, cb.d, j0, nc, acc);
      for (int64_t i = 0; i < nr; ++i) {
        for (int64_t j = 0; j < nc; ++j) {
          const float s = cb.norms[j0 + j] - 2.f * acc[i][j];
          if (s < best_val[i]) {  // strict: the lowest index keeps ties; NaN never wins
            best_val[i] = s;
            best_j[i] = j0 + j;
          }
        }
      }
    }
    for (int64_t i = 0; i < nr; ++i) {
      best_idx[i0 + i] = best_j[i];
      if (best_score != nullptr) best_score[i0 + i] = best_val[i];
    }
  }
}

void rq_assign_cpu(const float* x, const float* codebooks, int64_t n, int64_t d, int64_t levels,
                   int64_t k, int64_t* codes, float* residual, int num_threads) {
  if (n <= 0) return;
  // Transposed codebooks and norms, once per call, shared read-only by all threads.
  std::vector<float> cb_t(static_cast<size_t>(levels * k * d));
  std::vector<float> norms(static_cast<size_t>(levels * k));
  for (int64_t l = 0; l < levels; ++l)
    prepare_codebook(codebooks + l * k * d, k, d, cb_t.data() + l * k * d, norms.data() + l * k);

  parallel_for(n, kRowBlock, num_threads, [&](int64_t begin, int64_t end) {
    std::vector<float> r(static_cast<size_t>(kRowBlock * d));
    int64_t idx[kRowBlock];
    for (int64_t row0 = begin; row0 < end; row0 += kRowBlock) {
      const int64_t rows = std::min(kRowBlock, end - row0);
      std::copy(x + row0 * d, x + (row0 + rows) * d, r.begin());
      for (int64_t l = 0; l < levels; ++l) {
        const PreparedCodebook cb{cb_t.data() + l * k * d, norms.data() + l * k, k, d};
        nearest_codes(r.data(), rows, cb, idx, nullptr);
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
