// CUDA kernel of onerec_C::trie_beam_step: checks, scratch from the caching allocator (so the
// step stays capturable in a CUDA graph), and a launch on the current stream. No host sync.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <limits>

#include "../cuda/beam_search.h"

namespace {

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> trie_beam_step_cuda(
    const at::Tensor& log_probs, const at::Tensor& beam_scores, const at::Tensor& beam_states,
    const at::Tensor& offsets, const at::Tensor& tokens, int64_t beam_width, int64_t max_branching,
    bool from_logits) {
  TORCH_CHECK_VALUE(log_probs.dim() == 3, "trie_beam_step: log_probs must be (B, W_in, V), got ",
                    log_probs.sizes());
  const int64_t B = log_probs.size(0), W = log_probs.size(1), V = log_probs.size(2);
  TORCH_CHECK_VALUE(beam_scores.sizes() == at::IntArrayRef({B, W}),
                    "trie_beam_step: beam_scores must be (B, W_in), got ", beam_scores.sizes());
  TORCH_CHECK_VALUE(beam_states.sizes() == at::IntArrayRef({B, W}),
                    "trie_beam_step: beam_states must be (B, W_in), got ", beam_states.sizes());
  TORCH_CHECK_VALUE(offsets.dim() == 1 && offsets.numel() >= 1 && tokens.dim() == 1,
                    "trie_beam_step: offsets must be (num_nodes + 1,) and tokens 1-D");
  for (const at::Tensor* t : {&log_probs, &beam_scores, &beam_states, &offsets, &tokens}) {
    TORCH_CHECK_VALUE(t->is_cuda() && t->device() == log_probs.device(),
                      "trie_beam_step (cuda): every tensor must be on ", log_probs.device());
  }
  TORCH_CHECK_TYPE(beam_scores.scalar_type() == at::kFloat,
                   "trie_beam_step: beam_scores must be float32");
  TORCH_CHECK_TYPE(beam_states.scalar_type() == at::kLong && offsets.scalar_type() == at::kLong &&
                       tokens.scalar_type() == at::kLong,
                   "trie_beam_step: beam_states, offsets and tokens must be int64");
  TORCH_CHECK_VALUE(beam_width >= 1 && beam_width <= onerec::cuda::kMaxBeams,
                    "trie_beam_step (cuda): beam_width must be in [1, ", onerec::cuda::kMaxBeams,
                    "], got ", beam_width);
  TORCH_CHECK_VALUE(W <= onerec::cuda::kMaxBeams, "trie_beam_step (cuda): W_in must be <= ",
                    onerec::cuda::kMaxBeams, ", got ", W);
  TORCH_CHECK_VALUE(V >= 1 && W * V < static_cast<int64_t>(std::numeric_limits<uint32_t>::max()),
                    "trie_beam_step: need V >= 1 and W_in * V < 2^32 - 1, got ", W, " * ", V);
  onerec::cuda::ScoreDType dtype;
  switch (log_probs.scalar_type()) {
    case at::kFloat: dtype = onerec::cuda::ScoreDType::kFloat32; break;
    case at::kHalf: dtype = onerec::cuda::ScoreDType::kFloat16; break;
    case at::kBFloat16: dtype = onerec::cuda::ScoreDType::kBFloat16; break;
    default: TORCH_CHECK_TYPE(false, "trie_beam_step (cuda): log_probs must be float32, float16 "
                                     "or bfloat16, got ", log_probs.scalar_type());
  }
  c10::cuda::CUDAGuard guard(log_probs.device());
  at::Tensor lp = log_probs.contiguous();
  at::Tensor bs = beam_scores.contiguous(), st = beam_states.contiguous();
  at::Tensor off = offsets.contiguous(), tok = tokens.contiguous();
  at::Tensor scores = at::empty({B, beam_width}, beam_scores.options());
  at::Tensor parents = at::empty({B, beam_width}, beam_states.options());
  at::Tensor out_tokens = at::empty({B, beam_width}, beam_states.options());
  at::Tensor states = at::empty({B, beam_width}, beam_states.options());
  if (B == 0) return {scores, parents, out_tokens, states};
  if (W == 0) {  // nothing to expand: all padding
    scores.fill_(-std::numeric_limits<float>::infinity());
    parents.zero_();
    out_tokens.fill_(-1);
    states.fill_(-1);
    return {scores, parents, out_tokens, states};
  }
  // max_branching (host-known from the trie) only sizes the split count; results do not
  // depend on it, so a wrong hint costs speed, never correctness.
  const int64_t max_branch = std::max<int64_t>(1, std::min<int64_t>(max_branching, V));
  onerec::cuda::BeamStepArgs args{lp.data_ptr(), dtype, bs.data_ptr<float>(),
                                  st.data_ptr<int64_t>(), off.data_ptr<int64_t>(),
                                  tok.data_ptr<int64_t>(), off.numel() - 1, tok.numel(), B, W, V,
                                  beam_width, max_branch, from_logits, scores.data_ptr<float>(),
                                  parents.data_ptr<int64_t>(), out_tokens.data_ptr<int64_t>(),
                                  states.data_ptr<int64_t>()};
  const size_t ws_bytes = onerec::cuda::beam_step_workspace_bytes(args);
  at::Tensor workspace = at::empty({static_cast<int64_t>((ws_bytes + 7) / 8) + 1},
                                   beam_states.options());
  cudaError_t err = onerec::cuda::beam_step_cuda(args, workspace.data_ptr(),
                                                 c10::cuda::getCurrentCUDAStream().stream());
  TORCH_CHECK(err == cudaSuccess, "trie_beam_step (cuda): launch failed: ",
              cudaGetErrorString(err));
  return {scores, parents, out_tokens, states};
}

}  // namespace

TORCH_LIBRARY_IMPL(onerec_C, CUDA, m) { m.impl("trie_beam_step", &trie_beam_step_cuda); }
