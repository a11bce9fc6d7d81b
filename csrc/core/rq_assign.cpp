#include "rq_assign.h"

#include <algorithm>
#include <limits>
#include <vector>

#include "parallel.h"

namespace onerec {

namespace {

// Register tile of the nearest-code search: kTileRows rows x kPanelCodes codes of fp32
// accumulators, 6 x 16 (the classic 6x16 SGEMM micro-kernel shape: with AVX2, 12 accumulators +
// 2 code vectors + 1 broadcast fill the 16 ymm registers). GCC vector extensions keep it free of
// intrinsics. Measured on the 2-core dev machine (AMD EPYC, one thread, d=256): 46.6 GFLOP/s for
// the AVX2+FMA body vs 1.2 GFLOP/s for 8-wide vectors compiled without AVX, hence the explicit
// 4-wide SSE body as the fallback and a runtime dispatch on CPU features (target_clones'
// "arch=haswell" tests the CPU model, not its features, and never fires on AMD).
constexpr int64_t kTileRows = 6;
// Rows per parallel task and per residual block (a multiple of kTileRows).
constexpr int64_t kRowBlock = 66;

typedef float v8sf __attribute__((vector_size(32)));
typedef float v4sf __attribute__((vector_size(16)));

// Dot products of kTileRows rows with the kPanelCodes codes of one panel ((d, 16) contiguous).
template <typename V>
__attribute__((always_inline)) inline void dot_tile_body(const float* const* rows,
                                                         const float* panel, int64_t d,
                                                         float (*acc)[kPanelCodes]) {
  constexpr int kVecs = kPanelCodes * sizeof(float) / sizeof(V);
  V s[kTileRows][kVecs];
  for (int64_t i = 0; i < kTileRows; ++i)
    for (int v = 0; v < kVecs; ++v) s[i][v] = V{};
  for (int64_t t = 0; t < d; ++t) {
    const float* c = panel + t * kPanelCodes;
    // One unaligned load per vector: a single memcpy of the whole 64-byte row compiles to four
    // 16-byte stores and 32-byte reloads through the stack (a store-forwarding stall that cost
    // 4-5x: 15 vs 69 GFLOP/s on one core of the dev machine).
    V cv[kVecs];
    for (int v = 0; v < kVecs; ++v)
      __builtin_memcpy(&cv[v], c + v * (sizeof(V) / sizeof(float)), sizeof(V));
    for (int64_t i = 0; i < kTileRows; ++i) {
      const float a = rows[i][t];
      for (int v = 0; v < kVecs; ++v) s[i][v] += a * cv[v];
    }
  }
  for (int64_t i = 0; i < kTileRows; ++i) __builtin_memcpy(acc[i], s[i], sizeof(s[i]));
}

#if defined(__x86_64__) || defined(__i386__)
__attribute__((target("avx2,fma"))) void dot_tile_avx2(const float* const* rows,
                                                        const float* panel, int64_t d,
                                                        float (*acc)[kPanelCodes]) {
  dot_tile_body<v8sf>(rows, panel, d, acc);
}
#endif

void dot_tile_sse(const float* const* rows, const float* panel, int64_t d,
                  float (*acc)[kPanelCodes]) {
  dot_tile_body<v4sf>(rows, panel, d, acc);
}

using DotTileFn = void (*)(const float* const*, const float*, int64_t, float (*)[kPanelCodes]);

DotTileFn pick_dot_tile() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return dot_tile_avx2;
#endif
  return dot_tile_sse;
}

const DotTileFn dot_tile = pick_dot_tile();

}  // namespace

void prepare_codebook(const float* cb, int64_t k, int64_t d, float* panels, float* norms) {
  std::fill(panels, panels + panel_floats(k, d), 0.f);
  for (int64_t j = 0; j < k; ++j) {
    float* dst = panels + (j / kPanelCodes) * d * kPanelCodes + (j % kPanelCodes);
    float s = 0.f;
    for (int64_t t = 0; t < d; ++t) {
      const float v = cb[j * d + t];
      dst[t * kPanelCodes] = v;
      s += v * v;
    }
    norms[j] = s;
  }
}

void nearest_codes(const float* r, int64_t rows, const PreparedCodebook& cb, int64_t* best_idx,
                   float* best_score) {
  // Cache blocking: a block of kRowBlock rows (L2) meets each codebook panel (d x 16 floats, L1)
  // once, so the codebook streams from memory once per block instead of once per 6-row tile.
  float acc[kTileRows][kPanelCodes];
  float best_val[kRowBlock];
  int64_t best_j[kRowBlock];
  for (int64_t b0 = 0; b0 < rows; b0 += kRowBlock) {
    const int64_t nb = std::min(kRowBlock, rows - b0);
    std::fill(best_val, best_val + nb, std::numeric_limits<float>::infinity());
    std::fill(best_j, best_j + nb, int64_t{0});
    for (int64_t j0 = 0; j0 < cb.k; j0 += kPanelCodes) {
      const int64_t nc = std::min(kPanelCodes, cb.k - j0);
      const float* panel = cb.panels + (j0 / kPanelCodes) * cb.d * kPanelCodes;
      const float* norms = cb.norms + j0;
      for (int64_t i0 = 0; i0 < nb; i0 += kTileRows) {
        const int64_t nr = std::min(kTileRows, nb - i0);
        const float* row_ptr[kTileRows];
        for (int64_t i = 0; i < kTileRows; ++i)  // a ragged tile repeats its last row
          row_ptr[i] = r + (b0 + i0 + std::min(i, nr - 1)) * cb.d;
        dot_tile(row_ptr, panel, cb.d, acc);
        for (int64_t i = 0; i < nr; ++i) {
          // Branch-free scores and min over the panel (vectorizes); one compare per row tile.
          float sc[kPanelCodes];
          float tile_min = std::numeric_limits<float>::infinity();
          for (int64_t j = 0; j < kPanelCodes; ++j) {
            sc[j] = j < nc ? norms[j] - 2.f * acc[i][j] : std::numeric_limits<float>::infinity();
            tile_min = sc[j] < tile_min ? sc[j] : tile_min;  // NaN never becomes the min
          }
          if (tile_min < best_val[i0 + i]) {  // strict: earlier panels keep ties
            int64_t j = 0;
            while (!(sc[j] == tile_min)) ++j;  // lowest index among equal scores
            best_val[i0 + i] = tile_min;
            best_j[i0 + i] = j0 + j;
          }
        }
      }
    }
    std::copy(best_j, best_j + nb, best_idx + b0);
    if (best_score != nullptr) std::copy(best_val, best_val + nb, best_score + b0);
  }
}

void rq_assign_cpu(const float* x, const float* codebooks, int64_t n, int64_t d, int64_t levels,
                   int64_t k, int64_t* codes, float* residual, int num_threads) {
  if (n <= 0) return;
  // Packed codebooks and norms, once per call, shared read-only by all threads.
  const int64_t level_floats = panel_floats(k, d);
  std::vector<float> panels(static_cast<size_t>(levels * level_floats));
  std::vector<float> norms(static_cast<size_t>(levels * k));
  for (int64_t l = 0; l < levels; ++l)
    prepare_codebook(codebooks + l * k * d, k, d, panels.data() + l * level_floats,
                     norms.data() + l * k);

  parallel_for(n, kRowBlock, num_threads, [&](int64_t begin, int64_t end) {
    std::vector<float> r(static_cast<size_t>(kRowBlock * d));
    int64_t idx[kRowBlock];
    for (int64_t row0 = begin; row0 < end; row0 += kRowBlock) {
      const int64_t rows = std::min(kRowBlock, end - row0);
      std::copy(x + row0 * d, x + (row0 + rows) * d, r.begin());
      for (int64_t l = 0; l < levels; ++l) {
        const PreparedCodebook cb{panels.data() + l * level_floats, norms.data() + l * k, k, d};
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
