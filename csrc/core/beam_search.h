// One step of trie-constrained beam search on the CPU (plain C++, threads over users). The
// per-candidate logic (keys, tie rule, radix select, decoding) lives in beam_step.h and is the
// same code the CUDA kernels run.
#pragma once
#include <cstdint>
#include <vector>

namespace onerec {

struct BeamStepInputs {
  const float* log_probs;      // (B, W_in, V) row-major: log-probs, or logits when from_logits
  const float* beam_scores;    // (B, W_in)
  const int64_t* beam_states;  // (B, W_in) depth-t nodes; -1 (or any id out of range) = dead
  const int64_t* offsets;      // (num_nodes + 1,) CSR of trie level t
  const int64_t* tokens;       // (num_children,)
  int64_t num_nodes;
  int64_t num_children;
  int64_t batch;        // B
  int64_t beams_in;     // W_in
  int64_t vocab;        // V; beams_in * vocab < 2^32 - 1 (the candidate index fits 32 bits)
  int64_t beams_out;    // W_out >= 1
  bool from_logits;     // fuse log_softmax over each (b, w) row of log_probs
};

struct BeamStepOutputs {
  float* scores;     // (B, W_out), best first
  int64_t* parents;  // (B, W_out)
  int64_t* tokens;   // (B, W_out)
  int64_t* states;   // (B, W_out) depth-(t+1) nodes
};

// num_splits > 1 selects like the CUDA two-stage path: each user's candidates are cut into
// num_splits ranges, each range's top W_out is taken, then the top W_out of those (the result is
// identical; the option exists so the CPU tests cover the GPU's two-stage logic).
void beam_step_cpu(const BeamStepInputs& in, const BeamStepOutputs& out, int num_threads,
                   int num_splits = 1);

// Top-k keys (best first, padded with 0 = invalid to k) of keys[0..n): the radix select of
// beam_step.h run sequentially. Exposed for the C++ tests.
void radix_topk_keys(const uint64_t* keys, int64_t n, int64_t k, std::vector<uint64_t>* out);

}  // namespace onerec
