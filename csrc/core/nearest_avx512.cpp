// AVX-512 nearest-code search: a bf16 screen with an exact fp32 rescoring.
//
// Why: on the AMD EPYC (Zen 4) dev machines one core peaks at 117 GFLOP/s in fp32 FMA (ymm or
// zmm alike: 512-bit ops are double-pumped) but at 232 GFLOP/s in vdpbf16ps (bf16 pairs into
// fp32), measured with a register-only loop. The fp32 peers (OpenBLAS SGEMM + argmin, faiss)
// already run near the fp32 peak, so beating them needs the bf16 rate, without giving up the
// fp32 answer. So:
//   1. screen: s~_j = n_j - 2 <bf16(r), bf16(c_j)> for every code (vdpbf16ps, fp32 accumulate),
//      with n_j = ||c_j||^2 in fp32;
//   2. every code whose fp32 score could still be the minimum, s~_j <= min_k s~_k + 2B (B below),
//      is kept as a candidate (typically 1-3 of thousands);
//   3. candidates are rescored in fp32, s_j = n_j - 2 <r, c_j>, ties to the lowest index.
// The bound B covers |s~_j - s_j| for every j: bf16 rounding (unit roundoff u = 2^-8) of both
// operands, |r_t c_t - bf16(r_t) bf16(c_t)| <= (2u + u^2)|r_t c_t|; fp32 accumulation of d terms
// in either dot, gamma_d = d 2^-24 / (1 - d 2^-24) of sum |r_t c_t| <= ||r|| ||c||; the final
// rounding of both scores; denormals flushed by vdpbf16ps. Summed with Cauchy-Schwarz and
// ||c_j|| <= max_j ||c_j||, then widened by 25%. A row whose bound is not finite, whose screen
// found no finite score (NaN/inf inputs), or that collects more than kMaxCandidates candidates
// (near-duplicate codes) is searched exhaustively in fp32 instead, so the result is always the
// fp32 argmin.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

#include "nearest_impl.h"

#if defined(__x86_64__)
#include <immintrin.h>
// GCC 12's own _mm512_reduce_* bodies trip -Wmaybe-uninitialized.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#define ONEREC_AVX512 __attribute__((target("avx512f,avx512bw,avx512dq,avx512vl,avx512bf16")))
#endif

namespace onerec {

namespace {

// Register tile: kTile rows x 16 codes (12 zmm accumulators; vdpbf16ps has a latency of ~6
// cycles at one per cycle, so 12 independent chains keep it busy, and each row's pair is an
// embedded broadcast from memory, so a 64-byte code load feeds 12 instructions).
constexpr int64_t kTile = 12;
// Rows per block: kBlock rows of bf16 pairs (96 KB at d=512) stay in L2 while every 16-code
// panel (16 KB at d=512, in L1) meets all of them.
constexpr int64_t kBlock = 96;
constexpr int kMaxCandidates = 32;

// Round-to-nearest-even fp32 -> bf16 (NaN stays NaN). Scalar: rows and codes are converted
// once per level, O(N d) next to the O(N K d) screen.
inline uint32_t to_bf16(float v) {
  uint32_t u;
  std::memcpy(&u, &v, sizeof(u));
  if ((u & 0x7fffffffu) > 0x7f800000u) return 0x7fc0u;
  return (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;
}

inline uint32_t bf16_pair(const float* v, int64_t t, int64_t d) {
  return to_bf16(v[t]) | (t + 1 < d ? to_bf16(v[t + 1]) << 16 : 0u);
}

}  // namespace

void pack_bf16_pairs(const float* cb, int64_t k, int64_t d, uint32_t* pairs) {
  const int64_t d2 = (d + 1) / 2;
  std::fill(pairs, pairs + num_panels(k) * d2 * kPanelCodes, 0u);
  for (int64_t j = 0; j < k; ++j) {
    uint32_t* dst = pairs + (j / kPanelCodes) * d2 * kPanelCodes + (j % kPanelCodes);
    for (int64_t q = 0; q < d2; ++q) dst[q * kPanelCodes] = bf16_pair(cb + j * d, 2 * q, d);
  }
}

#if defined(__x86_64__)

bool avx512_bf16_supported() {
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
         __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl") &&
         __builtin_cpu_supports("avx512bf16");
}

namespace {

// fp32 <a, b> over d: the rescoring and the exhaustive fallback share it, so both see the same
// fp32 scores.
ONEREC_AVX512 inline float dot_f32(const float* a, const float* b, int64_t d) {
  __m512 acc0 = _mm512_setzero_ps(), acc1 = _mm512_setzero_ps();
  int64_t t = 0;
  for (; t + 32 <= d; t += 32) {
    acc0 = _mm512_fmadd_ps(_mm512_loadu_ps(a + t), _mm512_loadu_ps(b + t), acc0);
    acc1 = _mm512_fmadd_ps(_mm512_loadu_ps(a + t + 16), _mm512_loadu_ps(b + t + 16), acc1);
  }
  for (; t < d; t += 16) {
    const __mmask16 m = d - t >= 16 ? __mmask16(0xffff) : __mmask16((1u << (d - t)) - 1u);
    acc0 = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m, a + t), _mm512_maskz_loadu_ps(m, b + t), acc0);
  }
  return _mm512_reduce_add_ps(_mm512_add_ps(acc0, acc1));
}

struct RowState {
  float thr;       // screen threshold m + 2B: a score above it cannot win
  float best;      // m: smallest screened score so far
  float two_b;     // 2B
  bool exhaustive; // the screen cannot decide this row
  int count;
  int64_t cand[kMaxCandidates];
  float cand_score[kMaxCandidates];
};

// A panel in which some screened score of the row is <= its threshold: lower the running
// minimum and keep the codes still within 2B of it. Rare after the first panels.
ONEREC_AVX512 __attribute__((noinline)) void screen_hit(RowState& st, __m512 s, __mmask16 hit,
                                                        int64_t j0) {
  if (st.exhaustive) return;
  alignas(64) float sv[kPanelCodes];
  _mm512_store_ps(sv, s);
  float m = std::numeric_limits<float>::infinity();
  for (unsigned bits = hit; bits != 0; bits &= bits - 1) m = std::min(m, sv[__builtin_ctz(bits)]);
  if (m < st.best) {
    st.best = m;
    st.thr = m + st.two_b;
    if (!(st.thr < std::numeric_limits<float>::infinity())) {  // would admit padded codes
      st.exhaustive = true;
      return;
    }
  }
  hit &= _mm512_cmp_ps_mask(s, _mm512_set1_ps(st.thr), _CMP_LE_OQ);
  for (unsigned bits = hit; bits != 0; bits &= bits - 1) {
    const int lane = __builtin_ctz(bits);
    if (st.count == kMaxCandidates) {  // drop candidates the lowered threshold rules out
      int keep = 0;
      for (int c = 0; c < st.count; ++c) {
        if (st.cand_score[c] <= st.thr) {
          st.cand[keep] = st.cand[c];
          st.cand_score[keep++] = st.cand_score[c];
        }
      }
      st.count = keep;
      if (keep == kMaxCandidates) {
        st.exhaustive = true;
        return;
      }
    }
    st.cand[st.count] = j0 + lane;
    st.cand_score[st.count++] = sv[lane];
  }
}

ONEREC_AVX512 void screen_block(const CodebookSearch& cb, const uint32_t* row_pairs, int64_t nb,
                                RowState* states) {
  const int64_t k = cb.k_, d2 = (cb.d_ + 1) / 2;
  const int64_t ntiles = (nb + kTile - 1) / kTile;
  for (int64_t p = 0; p < num_panels(k); ++p) {
    const uint32_t* panel = cb.bf16_pairs_.data() + p * d2 * kPanelCodes;
    const __m512 norms = _mm512_loadu_ps(cb.norms_.data() + p * kPanelCodes);
    const int64_t j0 = p * kPanelCodes;
    for (int64_t tt = 0; tt < ntiles; ++tt) {
      const uint32_t* rt = row_pairs + tt * d2 * kTile;
      __m512 acc[kTile];
#pragma GCC unroll 12
      for (int i = 0; i < kTile; ++i) acc[i] = _mm512_setzero_ps();
      for (int64_t q = 0; q < d2; ++q) {
        const __m512bh c = (__m512bh)_mm512_loadu_si512(panel + q * kPanelCodes);
        const uint32_t* rq = rt + q * kTile;
#pragma GCC unroll 12
        for (int i = 0; i < kTile; ++i)
          acc[i] = _mm512_dpbf16_ps(acc[i], c, (__m512bh)_mm512_set1_epi32(int(rq[i])));
      }
      const int64_t nr = std::min(kTile, nb - tt * kTile);
#pragma GCC unroll 12
      for (int i = 0; i < kTile; ++i) {
        if (i >= nr) break;
        RowState& st = states[tt * kTile + i];
        const __m512 s = _mm512_fmadd_ps(acc[i], _mm512_set1_ps(-2.f), norms);
        // Ordered compare: NaN scores are never candidates; +inf only while thr is +inf.
        const __mmask16 hit = _mm512_cmp_ps_mask(s, _mm512_set1_ps(st.thr), _CMP_LE_OQ);
        if (__builtin_expect(hit != 0, 0)) screen_hit(st, s, hit, j0);
      }
    }
  }
}

}  // namespace

ONEREC_AVX512 void nearest_avx512(const CodebookSearch& cb, const float* r, int64_t rows,
                                  int64_t* best_idx, float* best_score) {
  const int64_t k = cb.k_, d = cb.d_, d2 = (d + 1) / 2;
  const float* codes = cb.codebook_;
  const float* norms = cb.norms_.data();
  // Error-bound factors (see the file comment).
  constexpr double u = 1.0 / 256.0, u32 = 1.0 / 16777216.0;
  const double gamma_d = d * u32 / (1.0 - d * u32);
  const double rel = 2.0 * (2.0 * u + u * u + 2.0 * gamma_d * (1.0 + u) * (1.0 + u));
  double max_n = 0.0;
  for (int64_t j = 0; j < k; ++j) max_n = std::max(max_n, static_cast<double>(norms[j]));
  thread_local std::vector<uint32_t> row_pairs;
  thread_local std::vector<RowState> states;
  row_pairs.resize(static_cast<size_t>(kBlock * d2));
  states.resize(static_cast<size_t>(kBlock));
  for (int64_t b0 = 0; b0 < rows; b0 += kBlock) {
    const int64_t nb = std::min(kBlock, rows - b0);
    // Rows as bf16 pairs, interleaved per tile ((d2, kTile) per tile) so the micro-kernel reads
    // each row's pair at a constant offset from one pointer; a ragged tile repeats its last row.
    for (int64_t i = 0; i < (nb + kTile - 1) / kTile * kTile; ++i) {
      const float* src = r + (b0 + std::min(i, nb - 1)) * d;
      uint32_t* dst = row_pairs.data() + (i / kTile) * d2 * kTile + (i % kTile);
      for (int64_t q = 0; q < d2; ++q) dst[q * kTile] = bf16_pair(src, 2 * q, d);
    }
    for (int64_t i = 0; i < nb; ++i) {
      const float* ri = r + (b0 + i) * d;
      double rn = 0.0;
      for (int64_t t = 0; t < d; ++t) rn += static_cast<double>(ri[t]) * ri[t];
      rn = std::sqrt(rn);
      const double bound =
          1.25 * (rel * rn * cb.max_norm_ + 4.0 * u32 * (max_n + 2.0 * rn * cb.max_norm_) +
                  4.0 * 1.2e-38 * (1.01 * std::sqrt(double(d)) * (rn + cb.max_norm_) + 3.0 * d));
      RowState& st = states[i];
      st.best = std::numeric_limits<float>::infinity();
      st.thr = std::numeric_limits<float>::max();  // first finite score opens the window
      st.two_b = static_cast<float>(2.0 * bound * (1.0 + 1e-6));
      st.exhaustive = !std::isfinite(st.two_b);
      st.count = 0;
    }
    screen_block(cb, row_pairs.data(), nb, states.data());
    for (int64_t i = 0; i < nb; ++i) {
      RowState& st = states[i];
      const float* ri = r + (b0 + i) * d;
      float best = std::numeric_limits<float>::infinity();
      int64_t arg = 0;
      if (st.exhaustive || !(st.best < std::numeric_limits<float>::infinity())) {
        for (int64_t j = 0; j < k; ++j) {
          const float s = norms[j] - 2.f * dot_f32(ri, codes + j * d, d);
          if (s < best) {  // strict: lowest index among ties; NaN never wins
            best = s;
            arg = j;
          }
        }
      } else {
        for (int c = 0; c < st.count; ++c) {  // candidates in ascending code order
          if (!(st.cand_score[c] <= st.thr)) continue;
          const int64_t j = st.cand[c];
          const float s = norms[j] - 2.f * dot_f32(ri, codes + j * d, d);
          if (s < best) {
            best = s;
            arg = j;
          }
        }
      }
      best_idx[b0 + i] = arg;
      if (best_score != nullptr) best_score[b0 + i] = best;
    }
  }
}

#else  // not x86-64: the AVX-512 path is never selected

bool avx512_bf16_supported() { return false; }
void nearest_avx512(const CodebookSearch&, const float*, int64_t, int64_t*, float*) {}

#endif

}  // namespace onerec
