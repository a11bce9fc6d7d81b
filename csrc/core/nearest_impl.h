// Internals shared by nearest.cpp (dispatch, fp32 paths) and nearest_avx512.cpp.
#pragma once
#include <cstdint>

#include "rq_assign.h"

namespace onerec {

// Codes handled side by side by every micro-kernel: one panel.
constexpr int64_t kPanelCodes = 16;

inline int64_t num_panels(int64_t k) { return (k + kPanelCodes - 1) / kPanelCodes; }

// AVX-512 path (nearest_avx512.cpp; compiled for AVX-512 with function target attributes and
// only ever called when the CPU has it).
bool avx512_bf16_supported();
void pack_bf16_pairs(const float* cb, int64_t k, int64_t d, uint32_t* pairs);
void nearest_avx512(const CodebookSearch& cb, const float* r, int64_t rows, int64_t* best_idx,
                    float* best_score);

}  // namespace onerec
