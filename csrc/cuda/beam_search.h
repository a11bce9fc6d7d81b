// CUDA kernels of one trie-constrained beam-search step, behind a plain C++ interface (no torch
// headers: this compiles with plain nvcc). The per-candidate logic is csrc/core/beam_step.h,
// the same code the CPU path runs. Bindings: csrc/torch_cuda/beam_cuda_ops.cpp.
//
// Pipeline (all on `stream`, no host synchronization, so a whole search can be graph-captured):
//   1. from_logits only: one block per (user, beam) row computes its log-sum-exp.
//   2. select: block (b, s) takes split s of user b's candidates (live beams' children,
//      flattened through a per-user prefix sum of child counts), finds the top beams_out keys
//      by radix select (8 bits a pass, usually 3-4 passes; the first pass computes each key
//      once into the workspace, later passes reread it; histograms aggregated per warp), then
//      bitonic-sorts them in shared memory.
//   3. num_splits > 1 (many candidates, and beams_out >= 512 or fewer users than 2 blocks per
//      SM): one block per user merges the splits' top lists the same way. Otherwise step 2
//      writes the outputs directly.
#pragma once
#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>

namespace onerec {
namespace cuda {

enum class ScoreDType : int { kFloat32 = 0, kFloat16 = 1, kBFloat16 = 2 };

// Largest beams_in / beams_out the kernels take (shared-memory tables per beam and per slot).
constexpr int64_t kMaxBeams = 4096;

struct BeamStepArgs {
  const void* log_probs;  // (B, W_in, V) of `dtype`, contiguous
  ScoreDType dtype;
  const float* beam_scores;    // (B, W_in)
  const int64_t* beam_states;  // (B, W_in)
  const int64_t* offsets;      // (num_nodes + 1,)
  const int64_t* tokens;       // (num_children,)
  int64_t num_nodes;
  int64_t num_children;
  int64_t batch;
  int64_t beams_in;       // <= kMaxBeams
  int64_t vocab;          // beams_in * vocab < 2^32 - 1
  int64_t beams_out;      // 1 .. kMaxBeams
  int64_t max_branching;  // of this trie level (host-known; sizes the split count)
  bool from_logits;
  float* scores;     // (B, W_out) outputs
  int64_t* parents;
  int64_t* tokens_out;
  int64_t* states;
};

// How many blocks share one user's candidates (1: single stage).
int beam_step_num_splits(const BeamStepArgs& args);

// Bytes of device scratch beam_step_cuda needs (log-sum-exps, the splits' top lists and the
// cached candidate keys, W_in * max_branching per user).
size_t beam_step_workspace_bytes(const BeamStepArgs& args);

// Enqueues the step on `stream`; `workspace` holds beam_step_workspace_bytes(args) bytes
// (8-byte aligned). Returns the launch error, if any.
cudaError_t beam_step_cuda(const BeamStepArgs& args, void* workspace, cudaStream_t stream);

}  // namespace cuda
}  // namespace onerec
