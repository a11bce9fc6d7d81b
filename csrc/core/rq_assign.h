// Greedy residual quantization (the RQ-KMeans assignment), plain C++ on float32, and the
// nearest-code search it shares with k-means.
#pragma once
#include <cstdint>
#include <vector>

namespace onerec {

// Instruction sets of the CPU nearest-code search, chosen at run time from the CPU's features:
//   kSse:    4-wide fp32 FMA-free body (any x86-64, and the portable path elsewhere);
//   kAvx2:   8-wide fp32 FMA register tile (AVX2 + FMA);
//   kAvx512: AVX-512 BF16 screen (vdpbf16ps, twice the fp32 FMA rate) with an exact fp32
//            rescoring of the few codes the screen cannot rule out (AVX-512 F/BW/DQ/VL + BF16).
// Every path returns the argmin of the fp32 score ||c||^2 - 2 r.c (ties: lowest index), so they
// differ only where two codes' scores lie within fp32 rounding of each other.
enum class CpuIsa : int { kSse = 0, kAvx2 = 1, kAvx512 = 2 };

const char* cpu_isa_name(CpuIsa isa);
// The best path this CPU supports.
CpuIsa best_cpu_isa();
// The path new searches use: best_cpu_isa(), or ONEREC_CPU_ISA=sse|avx2|avx512 when set (capped
// at what the CPU supports), or what set_cpu_isa chose last.
CpuIsa active_cpu_isa();
// Makes `isa` the active path; returns false (and changes nothing) if the CPU lacks it. For
// tests and benchmarks that force each path; not meant to race with running searches.
bool set_cpu_isa(CpuIsa isa);

// One codebook (k, d) row-major, packed once for the active path; then nearest() answers, for
// rows of r, the code with the smallest ||c||^2 - 2 r.c (ties: lowest index; NaN scores never
// win; a row with no finite score gets 0). Read-only after construction, so threads share it.
// The caller keeps `codebook` alive (the AVX-512 path rescores against it).
class CodebookSearch {
 public:
  CodebookSearch(const float* codebook, int64_t k, int64_t d);
  // r: (rows, d) row-major. best_score (optional) receives the winning score.
  void nearest(const float* r, int64_t rows, int64_t* best_idx, float* best_score) const;
  CpuIsa isa() const { return isa_; }
  int64_t k() const { return k_; }
  int64_t d() const { return d_; }

  // Internal layouts (nearest.cpp, nearest_avx512.cpp).
  const float* codebook_;
  int64_t k_, d_;
  CpuIsa isa_;
  std::vector<float> norms_;          // (k,) squared norms in fp32, padded to whole panels
  std::vector<float> panels_;         // fp32 paths: (ceil(k/16), d, 16), zero-padded
  std::vector<uint32_t> bf16_pairs_;  // AVX-512: (ceil(k/16), ceil(d/2), 16) bf16 pairs
  double max_norm_ = 0.0;             // max_j ||c_j|| (the screen's error bound)
};

// x: (n, d) row-major; codebooks: (levels, k, d) row-major.
// Writes codes (n, levels) and, when residual != nullptr, the final residual (n, d).
// Per level: c = argmin_j ||r - codebooks[l, j]||^2 (via the norm trick, as above), then
// r -= codebooks[l, c]. num_threads <= 0: all hardware threads.
void rq_assign_cpu(const float* x, const float* codebooks, int64_t n, int64_t d, int64_t levels,
                   int64_t k, int64_t* codes, float* residual, int num_threads);

}  // namespace onerec
