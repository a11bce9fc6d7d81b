#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <limits>

#include "nearest_impl.h"
#include "rq_assign.h"

namespace onerec {

namespace {

// fp32 register tile: kTileRows rows x kPanelCodes codes of accumulators, 6 x 16 (the classic
// 6x16 SGEMM micro-kernel shape: with AVX2, 12 accumulators + 2 code vectors + 1 broadcast fill
// the 16 ymm registers). GCC vector extensions keep it free of intrinsics. Measured on the
// 2-core dev machine (AMD EPYC, one thread, d=256): 46.6 GFLOP/s for the AVX2+FMA body vs 1.2
// GFLOP/s for 8-wide vectors compiled without AVX, hence the explicit 4-wide SSE body as the
// fallback and a runtime dispatch on CPU features (target_clones' "arch=haswell" tests the CPU
// model, not its features, and never fires on AMD).
constexpr int64_t kTileRows = 6;
// Rows per residual block of the fp32 paths (a multiple of kTileRows).
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

void nearest_fp32(const CodebookSearch& cb, DotTileFn dot_tile, const float* r, int64_t rows,
                  int64_t* best_idx, float* best_score) {
  // Cache blocking: a block of kRowBlock rows (L2) meets each codebook panel (d x 16 floats, L1)
  // once, so the codebook streams from memory once per block instead of once per 6-row tile.
  const int64_t k = cb.k_, d = cb.d_;
  float acc[kTileRows][kPanelCodes];
  float best_val[kRowBlock];
  int64_t best_j[kRowBlock];
  for (int64_t b0 = 0; b0 < rows; b0 += kRowBlock) {
    const int64_t nb = std::min(kRowBlock, rows - b0);
    std::fill(best_val, best_val + nb, std::numeric_limits<float>::infinity());
    std::fill(best_j, best_j + nb, int64_t{0});
    for (int64_t j0 = 0; j0 < k; j0 += kPanelCodes) {
      const int64_t nc = std::min(kPanelCodes, k - j0);
      const float* panel = cb.panels_.data() + (j0 / kPanelCodes) * d * kPanelCodes;
      const float* norms = cb.norms_.data() + j0;
      for (int64_t i0 = 0; i0 < nb; i0 += kTileRows) {
        const int64_t nr = std::min(kTileRows, nb - i0);
        const float* row_ptr[kTileRows];
        for (int64_t i = 0; i < kTileRows; ++i)  // a ragged tile repeats its last row
          row_ptr[i] = r + (b0 + i0 + std::min(i, nr - 1)) * d;
        dot_tile(row_ptr, panel, d, acc);
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

bool cpu_has_avx2_fma() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
#else
  return false;
#endif
}

CpuIsa detect_best() {
  if (avx512_bf16_supported()) return CpuIsa::kAvx512;
  if (cpu_has_avx2_fma()) return CpuIsa::kAvx2;
  return CpuIsa::kSse;
}

CpuIsa initial_isa() {
  CpuIsa isa = detect_best();
  if (const char* env = std::getenv("ONEREC_CPU_ISA")) {
    CpuIsa want = isa;
    if (std::strcmp(env, "sse") == 0) want = CpuIsa::kSse;
    if (std::strcmp(env, "avx2") == 0) want = CpuIsa::kAvx2;
    if (static_cast<int>(want) < static_cast<int>(isa)) isa = want;  // never above the CPU
  }
  return isa;
}

std::atomic<int>& active_isa_slot() {
  static std::atomic<int> slot{static_cast<int>(initial_isa())};
  return slot;
}

}  // namespace

const char* cpu_isa_name(CpuIsa isa) {
  switch (isa) {
    case CpuIsa::kAvx512: return "avx512";
    case CpuIsa::kAvx2: return "avx2";
    default: return "sse";
  }
}

CpuIsa best_cpu_isa() {
  static const CpuIsa best = detect_best();
  return best;
}

CpuIsa active_cpu_isa() { return static_cast<CpuIsa>(active_isa_slot().load()); }

bool set_cpu_isa(CpuIsa isa) {
  if (static_cast<int>(isa) > static_cast<int>(best_cpu_isa()) ||
      static_cast<int>(isa) < 0)
    return false;
  active_isa_slot().store(static_cast<int>(isa));
  return true;
}

CodebookSearch::CodebookSearch(const float* codebook, int64_t k, int64_t d)
    : codebook_(codebook), k_(k), d_(d), isa_(active_cpu_isa()) {
  // Norms padded to whole panels with +inf: a padded code never scores below a real one.
  norms_.assign(static_cast<size_t>(num_panels(k) * kPanelCodes),
                std::numeric_limits<float>::infinity());
  double max_sq = 0.0;
  for (int64_t j = 0; j < k; ++j) {
    float s = 0.f;
    double sd = 0.0;
    for (int64_t t = 0; t < d; ++t) {
      const float v = codebook[j * d + t];
      s += v * v;
      sd += static_cast<double>(v) * v;
    }
    norms_[j] = s;
    max_sq = std::max(max_sq, sd);  // NaN codes drop out here; their scores are NaN anyway
  }
  max_norm_ = std::sqrt(max_sq);
  if (isa_ == CpuIsa::kAvx512) {
    bf16_pairs_.resize(static_cast<size_t>(num_panels(k) * ((d + 1) / 2) * kPanelCodes));
    pack_bf16_pairs(codebook, k, d, bf16_pairs_.data());
    return;
  }
  // fp32 panels of kPanelCodes codes, each (d, kPanelCodes) contiguous, so the micro-kernel
  // streams them with unit stride (a plain (d, k) transpose strides by 4*k bytes, and k a
  // multiple of 1024 puts every row of a tile in the same L1 set). The last panel is zero-padded.
  panels_.assign(static_cast<size_t>(num_panels(k) * d * kPanelCodes), 0.f);
  for (int64_t j = 0; j < k; ++j) {
    float* dst = panels_.data() + (j / kPanelCodes) * d * kPanelCodes + (j % kPanelCodes);
    for (int64_t t = 0; t < d; ++t) dst[t * kPanelCodes] = codebook[j * d + t];
  }
}

void CodebookSearch::nearest(const float* r, int64_t rows, int64_t* best_idx,
                             float* best_score) const {
  if (rows <= 0) return;
  switch (isa_) {
    case CpuIsa::kAvx512:
      nearest_avx512(*this, r, rows, best_idx, best_score);
      return;
#if defined(__x86_64__) || defined(__i386__)
    case CpuIsa::kAvx2:
      nearest_fp32(*this, dot_tile_avx2, r, rows, best_idx, best_score);
      return;
#endif
    default:
      nearest_fp32(*this, dot_tile_sse, r, rows, best_idx, best_score);
  }
}

}  // namespace onerec
